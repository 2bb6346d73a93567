/*
 * The TURN client's state machine against an in-process fake TURN server
 * built from the real STUN codec: long-term credentials (401, 438, wrong
 * password), the allocation's, permissions' and channels' refreshes at the
 * fake times they are due, Send/Data indications, ChannelData both ways,
 * deallocation on close, retransmission timing and garbage input. No
 * sockets, no sleeping: time is a variable the test advances.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "stun/stun.h"
#include "turn/turn.h"
#include "util/bytes.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

/* ---- the fake server --------------------------------------------------- */

#define MAX_SEEN 64

struct fake {
  const char *user, *password, *realm;
  char nonce[32];
  unsigned nonce_gen;
  bool stale_next;     /* answer the next authenticated request with 438 */
  bool always_stale;   /* answer every authenticated request with 438 */
  uint32_t max_life;   /* lifetime the server grants at most */
  bool silent;         /* drop everything */
  bool refuse_perm;    /* 403 to CreatePermission */
  bool refuse_refresh; /* 437 to Refresh */
  np_addr relayed, mapped;
  bool allocated;
  /* What came in, per method. */
  unsigned n_alloc, n_refresh, n_perm, n_bind, n_unauth;
  uint32_t last_refresh_life;
  int64_t last_refresh_at, last_perm_at, last_bind_at;
  uint16_t last_channel;
  np_addr last_bind_peer;
  char last_nonce[64];
  /* Send indications and ChannelData received. */
  np_addr sent_peer;
  uint8_t sent_data[256];
  size_t sent_len;
  unsigned n_send_ind, n_chandata;
  uint16_t chandata_number;
};

static np_addr v4(const char *ip, uint16_t port) {
  np_addr a;
  memset(&a, 0, sizeof a);
  a.u.in4.sin_family = AF_INET;
  a.u.in4.sin_port = htons(port);
  inet_pton(AF_INET, ip, &a.u.in4.sin_addr);
  return a;
}

static void fake_init(struct fake *f) {
  memset(f, 0, sizeof *f);
  f->user = "alice";
  f->password = "secret";
  f->realm = "natpunch";
  snprintf(f->nonce, sizeof f->nonce, "nonce-%u", f->nonce_gen);
  f->max_life = 3600;
  f->relayed = v4("198.51.100.1", 50000);
  f->mapped = v4("203.0.113.7", 40000);
}

static void fake_new_nonce(struct fake *f) {
  f->nonce_gen++;
  snprintf(f->nonce, sizeof f->nonce, "nonce-%u", f->nonce_gen);
}

static void key_of(const struct fake *f, uint8_t key[16]) {
  assert_int_equal(np__stun_long_term_key(f->user, f->realm, f->password, key), 0);
}

static size_t fake_error(struct fake *f, const np_stun_msg *m, uint16_t code, bool challenge,
                         bool sign, uint8_t *out) {
  np_stun_writer w;
  np__stun_writer_init(&w, out, NP_TURN_MAX_DATAGRAM, (uint16_t)(m->method | NP_STUN_ERROR),
                       NP_STUN_MAGIC_COOKIE, m->txid);
  np__stun_put_error(&w, code, code == 401 ? "Unauthorized" : code == 438 ? "Stale Nonce" : "No");
  if (challenge) {
    np__stun_put_bytes(&w, NP_STUN_ATTR_REALM, f->realm, strlen(f->realm));
    np__stun_put_bytes(&w, NP_STUN_ATTR_NONCE, f->nonce, strlen(f->nonce));
  }
  if (sign) {
    uint8_t key[16];
    key_of(f, key);
    np__stun_put_integrity(&w, key, sizeof key);
  }
  int n = np__stun_writer_finish(&w);
  assert_true(n > 0);
  return (size_t)n;
}

static uint32_t attr_u32(const uint8_t *buf, size_t len, uint16_t type, uint32_t dflt) {
  const uint8_t *v;
  size_t vl;
  if (np__stun_find_attr(buf, len, type, &v, &vl) && vl == 4)
    return rd32(v);
  return dflt;
}

/* Handles one datagram from the client at 'now'; returns the response's
 * length in out, or 0. */
static size_t fake_handle(struct fake *f, int64_t now, const uint8_t *in, size_t len,
                          uint8_t *out) {
  if (f->silent)
    return 0;
  if (len >= 4 && in[0] >= 0x40 && in[0] <= 0x4F) {
    f->n_chandata++;
    f->chandata_number = rd16(in);
    size_t dl = rd16(in + 2);
    assert_true(dl + 4 <= len);
    assert_true(dl <= sizeof f->sent_data);
    memcpy(f->sent_data, in + 4, dl);
    f->sent_len = dl;
    return 0;
  }
  np_stun_msg m;
  assert_int_equal(np__stun_read(in, len, &m), 0);
  /* Every request and indication of the client carries a FINGERPRINT
   * (requests) or is a Send indication. */
  if (m.cls == NP_STUN_INDICATION) {
    assert_int_equal(m.method, NP_TURN_SEND);
    const uint8_t *v;
    size_t vl;
    assert_true(np__stun_find_attr(in, len, NP_TURN_ATTR_XOR_PEER_ADDRESS, &v, &vl));
    assert_int_equal(np__stun_read_xor_addr(in, v, vl, &f->sent_peer), 0);
    assert_true(np__stun_find_attr(in, len, NP_TURN_ATTR_DATA, &v, &vl));
    assert_true(vl <= sizeof f->sent_data);
    memcpy(f->sent_data, v, vl);
    f->sent_len = vl;
    f->n_send_ind++;
    return 0;
  }
  assert_int_equal(m.cls, NP_STUN_REQUEST);
  assert_true(m.present & NP_STUN_HAS_FINGERPRINT);
  switch (m.method) {
  case NP_TURN_ALLOCATE:
    f->n_alloc++;
    break;
  case NP_TURN_REFRESH:
    f->n_refresh++;
    break;
  case NP_TURN_CREATE_PERMISSION:
    f->n_perm++;
    break;
  case NP_TURN_CHANNEL_BIND:
    f->n_bind++;
    break;
  default:
    fail_msg("unexpected method %u", m.method);
  }
  /* RFC 8489 §9.2.4: no MESSAGE-INTEGRITY: 401 with REALM and NONCE. */
  if (!(m.present & NP_STUN_HAS_INTEGRITY)) {
    f->n_unauth++;
    assert_false(m.present & NP_STUN_HAS_USERNAME);
    return fake_error(f, &m, 401, true, false, out);
  }
  assert_true(m.present & NP_STUN_HAS_USERNAME);
  assert_true(m.present & NP_STUN_HAS_REALM);
  assert_true(m.present & NP_STUN_HAS_NONCE);
  assert_true(m.nonce_len < sizeof f->last_nonce);
  memcpy(f->last_nonce, m.nonce, m.nonce_len);
  f->last_nonce[m.nonce_len] = '\0';
  uint8_t key[16];
  key_of(f, key);
  if (m.username_len != strlen(f->user) || memcmp(m.username, f->user, m.username_len) != 0 ||
      np__stun_check_integrity(in, len, &m, key, sizeof key) != 0)
    return fake_error(f, &m, 401, true, false, out);
  if (strcmp(f->last_nonce, f->nonce) != 0 || f->stale_next || f->always_stale) {
    if (f->stale_next || f->always_stale) {
      f->stale_next = false;
      fake_new_nonce(f);
    }
    return fake_error(f, &m, 438, true, false, out);
  }

  np_stun_writer w;
  np__stun_writer_init(&w, out, NP_TURN_MAX_DATAGRAM, (uint16_t)(m.method | NP_STUN_SUCCESS),
                       NP_STUN_MAGIC_COOKIE, m.txid);
  switch (m.method) {
  case NP_TURN_ALLOCATE: {
    assert_int_equal(attr_u32(in, len, NP_TURN_ATTR_REQUESTED_TRANSPORT, 0), 17u << 24);
    uint32_t life = attr_u32(in, len, NP_TURN_ATTR_LIFETIME, 600);
    if (life > f->max_life)
      life = f->max_life;
    f->allocated = true;
    np__stun_put_xor_addr(&w, NP_TURN_ATTR_XOR_RELAYED_ADDRESS, &f->relayed);
    np__stun_put_u32(&w, NP_TURN_ATTR_LIFETIME, life);
    np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &f->mapped);
    break;
  }
  case NP_TURN_REFRESH: {
    if (f->refuse_refresh)
      return fake_error(f, &m, 437, false, true, out);
    uint32_t life = attr_u32(in, len, NP_TURN_ATTR_LIFETIME, 600);
    if (life > f->max_life)
      life = f->max_life;
    f->last_refresh_life = life;
    f->last_refresh_at = now;
    if (life == 0)
      f->allocated = false;
    np__stun_put_u32(&w, NP_TURN_ATTR_LIFETIME, life);
    break;
  }
  case NP_TURN_CREATE_PERMISSION:
    f->last_perm_at = now;
    if (f->refuse_perm)
      return fake_error(f, &m, 403, false, true, out);
    break;
  case NP_TURN_CHANNEL_BIND: {
    uint32_t ch = attr_u32(in, len, NP_TURN_ATTR_CHANNEL_NUMBER, 0);
    f->last_channel = (uint16_t)(ch >> 16);
    assert_int_equal(ch & 0xFFFF, 0);
    const uint8_t *v;
    size_t vl;
    assert_true(np__stun_find_attr(in, len, NP_TURN_ATTR_XOR_PEER_ADDRESS, &v, &vl));
    assert_int_equal(np__stun_read_xor_addr(in, v, vl, &f->last_bind_peer), 0);
    f->last_bind_at = now;
    break;
  }
  }
  np__stun_put_integrity(&w, key, sizeof key);
  np__stun_put_fingerprint(&w);
  int n = np__stun_writer_finish(&w);
  assert_true(n > 0);
  return (size_t)n;
}

/* A Data indication from peer, as the server sends it. */
static size_t fake_data_indication(const np_addr *peer, const char *text, uint8_t *out) {
  uint8_t txid[NP_STUN_TXID_LEN] = {9, 9, 9};
  np_stun_writer w;
  np__stun_writer_init(&w, out, NP_TURN_MAX_DATAGRAM, NP_TURN_DATA | NP_STUN_INDICATION,
                       NP_STUN_MAGIC_COOKIE, txid);
  np__stun_put_xor_addr(&w, NP_TURN_ATTR_XOR_PEER_ADDRESS, peer);
  np__stun_put_bytes(&w, NP_TURN_ATTR_DATA, text, strlen(text));
  int n = np__stun_writer_finish(&w);
  assert_true(n > 0);
  return (size_t)n;
}

/* ---- the client side --------------------------------------------------- */

static void counter_random(void *user, uint8_t *buf, size_t len) {
  uint32_t *c = user;
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)((*c)++ * 131u + 7u);
}

struct rig {
  struct fake f;
  np__turn *t;
  uint32_t rng;
  int64_t now;
  unsigned n_sent; /* datagrams the client sent */
};

static void rig_start(struct rig *r, const char *password, uint32_t lifetime) {
  fake_init(&r->f);
  r->rng = 1;
  r->now = 1000;
  r->n_sent = 0;
  np__turn_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.server = v4("192.0.2.1", 3478);
  cfg.username = "alice";
  cfg.password = password;
  cfg.lifetime = lifetime;
  cfg.random = counter_random;
  cfg.random_user = &r->rng;
  r->t = np__turn_new(&cfg, r->now);
  assert_non_null(r->t);
}

/* Drains the client at r->now, hands each datagram to the fake and each
 * answer back; bounded. Returns how many datagrams the client sent. */
static unsigned pump(struct rig *r) {
  unsigned sent = 0;
  np__turn_datagram d;
  uint8_t resp[NP_TURN_MAX_DATAGRAM];
  for (int i = 0; i < 64 && np__turn_next(r->t, r->now, &d); i++) {
    sent++;
    np_addr server = v4("192.0.2.1", 3478);
    assert_true(np_addr_equal(&d.to, &server));
    size_t n = fake_handle(&r->f, r->now, d.buf, d.len, resp);
    if (n) {
      np__turn_recv rv;
      assert_true(np__turn_input(r->t, r->now, resp, n, &rv));
      assert_false(rv.has_data);
    }
  }
  r->n_sent += sent;
  return sent;
}

static void rig_ready(struct rig *r) {
  rig_start(r, "secret", 0);
  pump(r);
  assert_int_equal(np__turn_get_state(r->t), NP_TURN_READY);
}

static void rig_end(struct rig *r) {
  np__turn_free(r->t);
}

/* ---- tests --------------------------------------------------------------- */

static void test_allocate_401_then_success(void **state) {
  (void)state;
  struct rig r;
  rig_start(&r, "secret", 0);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_ALLOCATING);
  assert_null(np__turn_relayed(r.t));
  assert_int_equal(np__turn_timeout(r.t), r.now);
  assert_int_equal(pump(&r), 2);
  assert_int_equal(r.f.n_alloc, 2);
  assert_int_equal(r.f.n_unauth, 1);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_READY);
  assert_true(np_addr_equal(np__turn_relayed(r.t), &r.f.relayed));
  assert_non_null(np__turn_mapped(r.t));
  assert_true(np_addr_equal(np__turn_mapped(r.t), &r.f.mapped));
  assert_int_equal(np__turn_error(r.t), 0);
  /* The 401 was recorded but is no failure. */
  assert_int_equal(np__turn_error_code(r.t), 401);
  assert_string_equal(r.f.last_nonce, "nonce-0");
  rig_end(&r);
}

static void test_stale_nonce(void **state) {
  (void)state;
  struct rig r;
  rig_start(&r, "secret", 0);
  r.f.stale_next = true;
  assert_int_equal(pump(&r), 3);
  assert_int_equal(r.f.n_alloc, 3);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_READY);
  assert_int_equal(np__turn_error_code(r.t), 438);
  assert_string_equal(r.f.last_nonce, "nonce-1");
  /* A later refresh hit by a stale nonce retries too, and keeps the
   * allocation. */
  r.f.stale_next = true;
  r.now += 540000;
  assert_int_equal(pump(&r), 2);
  assert_int_equal(r.f.n_refresh, 2);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_READY);
  assert_string_equal(r.f.last_nonce, "nonce-2");
  rig_end(&r);
}

static void test_endless_stale_nonce_fails(void **state) {
  (void)state;
  struct rig r;
  rig_start(&r, "secret", 0);
  r.f.always_stale = true;
  unsigned total = pump(&r);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_FAILED);
  assert_int_equal(np__turn_error(r.t), NP_ERR_AUTH);
  /* The 401, then the first 438 and MAX_STALE (3) more. */
  assert_int_equal(total, 5);
  rig_end(&r);
}

static void test_wrong_password_fails(void **state) {
  (void)state;
  struct rig r;
  rig_start(&r, "not-the-password", 0);
  assert_int_equal(pump(&r), 2);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_FAILED);
  assert_int_equal(np__turn_error(r.t), NP_ERR_AUTH);
  assert_int_equal(np__turn_error_code(r.t), 401);
  assert_string_equal(np__turn_error_reason(r.t), "Unauthorized");
  assert_null(np__turn_relayed(r.t));
  assert_int_equal(np__turn_timeout(r.t), INT64_MAX);
  r.now += 100000;
  assert_int_equal(pump(&r), 0);
  /* A failed client takes no more work. */
  np_addr peer = v4("192.0.2.50", 9000);
  assert_int_equal(np__turn_permit(r.t, &peer), NP_ERR_INVAL);
  uint8_t buf[64];
  assert_int_equal(np__turn_send(r.t, &peer, (const uint8_t *)"x", 1, buf, sizeof buf),
                   NP_ERR_AGAIN);
  rig_end(&r);
}

static void test_refresh_timing(void **state) {
  (void)state;
  struct rig r;
  rig_start(&r, "secret", 600);
  pump(&r);
  int64_t granted = r.now;
  /* Granted 600 s: refreshed a minute before it ends. */
  assert_int_equal(np__turn_timeout(r.t), granted + 540000);
  r.now = granted + 539999;
  assert_int_equal(pump(&r), 0);
  assert_int_equal(r.f.n_refresh, 0);
  r.now = granted + 540000;
  assert_int_equal(pump(&r), 1);
  assert_int_equal(r.f.n_refresh, 1);
  assert_int_equal(r.f.last_refresh_life, 600);
  assert_int_equal(np__turn_timeout(r.t), r.now + 540000);

  /* A server that grants less than asked is refreshed by what it granted. */
  struct rig s;
  rig_start(&s, "secret", 3600);
  s.f.max_life = 100;
  pump(&s);
  assert_int_equal(np__turn_timeout(s.t), s.now + 50000);
  rig_end(&s);
  rig_end(&r);
}

static void test_retransmission_and_timeout(void **state) {
  (void)state;
  struct rig r;
  rig_start(&r, "secret", 0);
  r.f.silent = true;
  /* RFC 8489 §6.2.1: sends at 0, 500, 1500, 3500, 7500, 15500, 31500 ms,
   * then fails 16 RTOs (8 s) after the last. */
  const int64_t at[] = {0, 500, 1500, 3500, 7500, 15500, 31500};
  int64_t t0 = r.now;
  for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
    r.now = t0 + at[i] - 1;
    assert_int_equal(pump(&r), 0);
    r.now = t0 + at[i];
    assert_int_equal(np__turn_timeout(r.t), r.now);
    assert_int_equal(pump(&r), 1);
  }
  assert_int_equal(np__turn_timeout(r.t), t0 + 39500);
  r.now = t0 + 39499;
  pump(&r);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_ALLOCATING);
  r.now = t0 + 39500;
  assert_int_equal(pump(&r), 0);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_FAILED);
  assert_int_equal(np__turn_error(r.t), NP_ERR_TIMEOUT);
  rig_end(&r);
}

static void test_permission_and_refresh(void **state) {
  (void)state;
  struct rig r;
  rig_ready(&r);
  np_addr peer = v4("192.0.2.50", 9000);
  assert_int_equal(np__turn_permit(r.t, &peer), 0);
  assert_int_equal(np__turn_permit(r.t, &peer), 0); /* idempotent */
  assert_false(np__turn_permitted(r.t, &peer));
  assert_int_equal(pump(&r), 1);
  assert_int_equal(r.f.n_perm, 1);
  assert_true(np__turn_permitted(r.t, &peer));
  /* Any port of that IP. */
  np_addr other_port = v4("192.0.2.50", 1);
  assert_true(np__turn_permitted(r.t, &other_port));
  int64_t installed = r.now;
  r.now = installed + 239999;
  assert_int_equal(pump(&r), 0);
  r.now = installed + 240000;
  assert_int_equal(pump(&r), 1);
  assert_int_equal(r.f.n_perm, 2);
  assert_int_equal(r.f.last_perm_at, installed + 240000);
  /* Refused: dropped, and the client carries on. */
  np_addr peer2 = v4("192.0.2.51", 9000);
  r.f.refuse_perm = true;
  assert_int_equal(np__turn_permit(r.t, &peer2), 0);
  assert_int_equal(pump(&r), 1);
  assert_false(np__turn_permitted(r.t, &peer2));
  assert_int_equal(np__turn_error_code(r.t), 403);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_READY);
  /* The table is bounded. */
  r.f.refuse_perm = false;
  int rc = 0;
  for (int i = 0; i < NP_TURN_MAX_PERMISSIONS + 2 && rc == 0; i++) {
    char ip[32];
    snprintf(ip, sizeof ip, "10.0.0.%d", i + 1);
    np_addr a = v4(ip, 1);
    rc = np__turn_permit(r.t, &a);
  }
  assert_int_equal(rc, NP_ERR_NOSPACE);
  rig_end(&r);
}

static void test_permit_before_ready_waits(void **state) {
  (void)state;
  struct rig r;
  rig_start(&r, "secret", 0);
  np_addr peer = v4("192.0.2.50", 9000);
  assert_int_equal(np__turn_permit(r.t, &peer), 0);
  assert_int_equal(np__turn_bind(r.t, &peer), 0);
  /* Allocate (twice) first, then the permission and the channel. */
  assert_int_equal(pump(&r), 4);
  assert_int_equal(r.f.n_alloc, 2);
  assert_int_equal(r.f.n_perm, 1);
  assert_int_equal(r.f.n_bind, 1);
  assert_true(np__turn_permitted(r.t, &peer));
  assert_int_equal(np__turn_channel(r.t, &peer), NP_TURN_CHANNEL_MIN);
  rig_end(&r);
}

static void test_channel_bind_and_refresh(void **state) {
  (void)state;
  struct rig r;
  rig_ready(&r);
  np_addr peer = v4("192.0.2.50", 9000);
  np_addr peer2 = v4("192.0.2.50", 9001);
  assert_int_equal(np__turn_channel(r.t, &peer), 0);
  assert_int_equal(np__turn_bind(r.t, &peer), 0);
  assert_int_equal(np__turn_bind(r.t, &peer2), 0);
  /* Two ChannelBinds and one CreatePermission for their common IP. */
  assert_int_equal(pump(&r), 3);
  assert_int_equal(r.f.n_perm, 1);
  uint16_t c1 = np__turn_channel(r.t, &peer), c2 = np__turn_channel(r.t, &peer2);
  assert_true(c1 >= NP_TURN_CHANNEL_MIN && c1 <= NP_TURN_CHANNEL_MAX);
  assert_true(c2 >= NP_TURN_CHANNEL_MIN && c2 <= NP_TURN_CHANNEL_MAX);
  assert_int_not_equal(c1, c2);
  assert_int_equal(r.f.last_channel, c2);
  assert_true(np_addr_equal(&r.f.last_bind_peer, &peer2));
  /* The binding installs the permission for the IP. */
  assert_true(np__turn_permitted(r.t, &peer));
  int64_t bound = r.now;
  unsigned before = r.f.n_bind;
  /* The permission the binding installed lasts 300 s on the server, the
   * channel 600 s: the permission is refreshed on its own at 240 s. */
  r.now = bound + 239999;
  assert_int_equal(pump(&r), 0);
  r.now = bound + 240000;
  assert_int_equal(pump(&r), 1);
  assert_int_equal(r.f.n_perm, 2);
  assert_int_equal(r.f.n_bind, before);
  r.now = bound + 480000;
  assert_int_equal(pump(&r), 1);
  assert_int_equal(r.f.n_perm, 3);
  r.now = bound + 539999;
  /* The allocation refresh (at 540 s too) is not due yet either. */
  assert_int_equal(pump(&r), 0);
  r.now = bound + 540000;
  pump(&r);
  assert_int_equal(r.f.n_bind, before + 2);
  assert_int_equal(r.f.last_bind_at, bound + 540000);
  assert_int_equal(np__turn_channel(r.t, &peer), c1); /* same number */
  rig_end(&r);
}

static void test_send_indication_then_channel_data(void **state) {
  (void)state;
  struct rig r;
  rig_ready(&r);
  np_addr peer = v4("192.0.2.50", 9000);
  uint8_t buf[NP_TURN_MAX_DATAGRAM];
  const uint8_t msg[] = "hello peer";
  /* No permission yet: the server would drop it. */
  assert_int_equal(np__turn_send(r.t, &peer, msg, sizeof msg, buf, sizeof buf), NP_ERR_AGAIN);
  np__turn_permit(r.t, &peer);
  pump(&r);
  int n = np__turn_send(r.t, &peer, msg, sizeof msg, buf, sizeof buf);
  assert_true(n > 0);
  uint8_t resp[NP_TURN_MAX_DATAGRAM];
  assert_int_equal(fake_handle(&r.f, r.now, buf, (size_t)n, resp), 0);
  assert_int_equal(r.f.n_send_ind, 1);
  assert_true(np_addr_equal(&r.f.sent_peer, &peer));
  assert_int_equal(r.f.sent_len, sizeof msg);
  assert_memory_equal(r.f.sent_data, msg, sizeof msg);

  np__turn_bind(r.t, &peer);
  /* Until the server confirms, still a Send indication. */
  n = np__turn_send(r.t, &peer, msg, sizeof msg, buf, sizeof buf);
  assert_true(n > 0 && buf[0] < 0x40);
  pump(&r);
  n = np__turn_send(r.t, &peer, msg, sizeof msg, buf, sizeof buf);
  assert_int_equal(n, 4 + (int)sizeof msg);
  fake_handle(&r.f, r.now, buf, (size_t)n, resp);
  assert_int_equal(r.f.n_chandata, 1);
  assert_int_equal(r.f.chandata_number, np__turn_channel(r.t, &peer));
  assert_memory_equal(r.f.sent_data, msg, sizeof msg);
  /* Limits. */
  assert_int_equal(np__turn_send(r.t, &peer, msg, sizeof msg, buf, 8), NP_ERR_NOSPACE);
  static uint8_t big[NP_TURN_MAX_PAYLOAD + 1];
  assert_int_equal(np__turn_send(r.t, &peer, big, sizeof big, buf, sizeof buf), NP_ERR_NOSPACE);
  /* The largest payload fits a Send indication to an IPv6 peer. */
  np_addr p6;
  memset(&p6, 0, sizeof p6);
  p6.u.in6.sin6_family = AF_INET6;
  p6.u.in6.sin6_port = htons(7);
  inet_pton(AF_INET6, "2001:db8::1", &p6.u.in6.sin6_addr);
  np__turn_permit(r.t, &p6);
  pump(&r);
  assert_true(np__turn_permitted(r.t, &p6));
  n = np__turn_send(r.t, &p6, big, NP_TURN_MAX_PAYLOAD, buf, sizeof buf);
  assert_true(n > 0);
  rig_end(&r);
}

static void test_receive_data_and_channel_data(void **state) {
  (void)state;
  struct rig r;
  rig_ready(&r);
  np_addr peer = v4("192.0.2.50", 9000);
  np_addr stranger = v4("192.0.2.99", 9000);
  uint8_t buf[NP_TURN_MAX_DATAGRAM];
  np__turn_recv rv;

  /* Before any permission: a Data indication is TURN but not delivered. */
  size_t n = fake_data_indication(&peer, "early", buf);
  assert_true(np__turn_input(r.t, r.now, buf, n, &rv));
  assert_false(rv.has_data);

  np__turn_permit(r.t, &peer);
  pump(&r);
  n = fake_data_indication(&peer, "via data indication", buf);
  assert_true(np__turn_input(r.t, r.now, buf, n, &rv));
  assert_true(rv.has_data);
  assert_true(np_addr_equal(&rv.peer, &peer));
  assert_int_equal(rv.len, strlen("via data indication"));
  assert_memory_equal(rv.data, "via data indication", rv.len);
  /* From an IP without a permission: dropped. */
  n = fake_data_indication(&stranger, "forged", buf);
  assert_true(np__turn_input(r.t, r.now, buf, n, &rv));
  assert_false(rv.has_data);

  np__turn_bind(r.t, &peer);
  pump(&r);
  uint16_t ch = np__turn_channel(r.t, &peer);
  assert_int_not_equal(ch, 0);
  /* ChannelData, 5 bytes with 3 bytes of padding (accepted). */
  wr16(buf, ch);
  wr16(buf + 2, 5);
  memcpy(buf + 4, "chan!\0\0\0", 8);
  assert_true(np__turn_input(r.t, r.now, buf, 12, &rv));
  assert_true(rv.has_data);
  assert_true(np_addr_equal(&rv.peer, &peer));
  assert_int_equal(rv.len, 5);
  assert_memory_equal(rv.data, "chan!", 5);
  /* Unpadded. */
  assert_true(np__turn_input(r.t, r.now, buf, 9, &rv));
  assert_true(rv.has_data);
  assert_int_equal(rv.len, 5);
  /* Length beyond the datagram, or more than 3 bytes of trailer: dropped. */
  assert_true(np__turn_input(r.t, r.now, buf, 8, &rv));
  assert_false(rv.has_data);
  assert_true(np__turn_input(r.t, r.now, buf, 13, &rv));
  assert_false(rv.has_data);
  /* An unbound channel number. */
  wr16(buf, (uint16_t)(ch + 1));
  assert_true(np__turn_input(r.t, r.now, buf, 9, &rv));
  assert_false(rv.has_data);
  rig_end(&r);
}

static void test_close_deallocates(void **state) {
  (void)state;
  struct rig r;
  rig_ready(&r);
  assert_true(r.f.allocated);
  np__turn_close(r.t, r.now);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_CLOSING);
  assert_int_equal(pump(&r), 1);
  assert_int_equal(r.f.n_refresh, 1);
  assert_int_equal(r.f.last_refresh_life, 0);
  assert_false(r.f.allocated);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_CLOSED);
  assert_int_equal(np__turn_timeout(r.t), INT64_MAX);
  rig_end(&r);

  /* A silent server: given up after 3 sends, CLOSED anyway. */
  rig_ready(&r);
  r.f.silent = true;
  np__turn_close(r.t, r.now);
  for (int i = 0; i < 10 && np__turn_get_state(r.t) == NP_TURN_CLOSING; i++) {
    pump(&r);
    r.now = np__turn_timeout(r.t);
  }
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_CLOSED);
  assert_int_equal(r.f.n_refresh, 0);
  assert_int_equal(r.n_sent, 2 + 3);
  rig_end(&r);

  /* Closed before the allocation: nothing to send. */
  rig_start(&r, "secret", 0);
  np__turn_close(r.t, r.now);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_CLOSED);
  assert_int_equal(pump(&r), 0);
  rig_end(&r);
}

static void test_garbage_and_forgeries_ignored(void **state) {
  (void)state;
  struct rig r;
  rig_start(&r, "secret", 0);
  np__turn_datagram d;
  assert_true(np__turn_next(r.t, r.now, &d));
  uint8_t txid[NP_STUN_TXID_LEN];
  memcpy(txid, d.buf + 8, sizeof txid);
  np__turn_recv rv;
  /* Not TURN at all. */
  uint8_t junk[64];
  for (size_t i = 0; i < sizeof junk; i++)
    junk[i] = (uint8_t)(0x80 + i * 37);
  assert_false(np__turn_input(r.t, r.now, junk, sizeof junk, &rv));
  assert_false(np__turn_input(r.t, r.now, junk, 0, &rv));
  assert_false(np__turn_input(r.t, r.now, d.buf, 7, &rv)); /* truncated */
  /* A success for someone else's transaction. */
  uint8_t buf[NP_TURN_MAX_DATAGRAM];
  np_stun_writer w;
  uint8_t other[NP_STUN_TXID_LEN] = {1, 2, 3};
  np_addr relay = v4("6.6.6.6", 6);
  np__stun_writer_init(&w, buf, sizeof buf, NP_TURN_ALLOCATE | NP_STUN_SUCCESS,
                       NP_STUN_MAGIC_COOKIE, other);
  np__stun_put_xor_addr(&w, NP_TURN_ATTR_XOR_RELAYED_ADDRESS, &relay);
  int n = np__stun_writer_finish(&w);
  assert_true(np__turn_input(r.t, r.now, buf, (size_t)n, &rv));
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_ALLOCATING);
  /* Get the 401 through, then forge an unsigned success for the real
   * transaction of the authenticated retry. */
  uint8_t resp[NP_TURN_MAX_DATAGRAM];
  size_t rn = fake_handle(&r.f, r.now, d.buf, d.len, resp);
  assert_true(np__turn_input(r.t, r.now, resp, rn, &rv));
  assert_true(np__turn_next(r.t, r.now, &d));
  np__stun_writer_init(&w, buf, sizeof buf, NP_TURN_ALLOCATE | NP_STUN_SUCCESS,
                       NP_STUN_MAGIC_COOKIE, d.buf + 8);
  np__stun_put_xor_addr(&w, NP_TURN_ATTR_XOR_RELAYED_ADDRESS, &relay);
  n = np__stun_writer_finish(&w);
  assert_true(np__turn_input(r.t, r.now, buf, (size_t)n, &rv));
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_ALLOCATING);
  /* Signed with a wrong key. */
  np__stun_writer_init(&w, buf, sizeof buf, NP_TURN_ALLOCATE | NP_STUN_SUCCESS,
                       NP_STUN_MAGIC_COOKIE, d.buf + 8);
  np__stun_put_xor_addr(&w, NP_TURN_ATTR_XOR_RELAYED_ADDRESS, &relay);
  np__stun_put_integrity(&w, (const uint8_t *)"0123456789abcdef", 16);
  n = np__stun_writer_finish(&w);
  assert_true(np__turn_input(r.t, r.now, buf, (size_t)n, &rv));
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_ALLOCATING);
  /* Every one-bit corruption of the genuine answer is ignored, except in
   * the FINGERPRINT's type (0x8028 -> 0x8128 or 0x8029 makes it an unknown optional
   * attribute after MESSAGE-INTEGRITY, which RFC 8489 says to ignore: the
   * message is still the server's, signed). */
  rn = fake_handle(&r.f, r.now, d.buf, d.len, resp);
  size_t fp_type = rn - 8;
  for (size_t i = 0; i < rn; i++) {
    if (i == fp_type || i == fp_type + 1)
      continue;
    uint8_t c[NP_TURN_MAX_DATAGRAM];
    memcpy(c, resp, rn);
    c[i] ^= 0x01;
    np__turn_input(r.t, r.now, c, rn, &rv);
    assert_false(rv.has_data);
    if (np__turn_get_state(r.t) != NP_TURN_ALLOCATING)
      fail_msg("byte %zu of %zu flipped was accepted", i, rn);
  }
  /* The genuine one still works. */
  assert_true(np__turn_input(r.t, r.now, resp, rn, &rv));
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_READY);
  assert_true(np_addr_equal(np__turn_relayed(r.t), &r.f.relayed));
  /* A replay of it changes nothing (its transaction is over). */
  assert_true(np__turn_input(r.t, r.now, resp, rn, &rv));
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_READY);
  rig_end(&r);
}

static void test_refresh_refused_and_timeouts(void **state) {
  (void)state;
  struct rig r;
  /* 437 to the Refresh: the allocation is gone, and the client says so. */
  rig_ready(&r);
  r.f.refuse_refresh = true;
  r.now += 540000;
  assert_int_equal(pump(&r), 1);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_FAILED);
  assert_int_equal(np__turn_error(r.t), NP_ERR_REFUSED);
  assert_int_equal(np__turn_error_code(r.t), 437);
  rig_end(&r);

  /* A Refresh never answered: FAILED with a timeout 39.5 s later. */
  rig_ready(&r);
  r.f.silent = true;
  r.now += 540000;
  int64_t t0 = r.now;
  for (int i = 0; i < 20 && np__turn_get_state(r.t) == NP_TURN_READY; i++) {
    pump(&r);
    if (np__turn_get_state(r.t) == NP_TURN_READY)
      r.now = np__turn_timeout(r.t);
  }
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_FAILED);
  assert_int_equal(np__turn_error(r.t), NP_ERR_TIMEOUT);
  assert_int_equal(r.now, t0 + 39500);
  rig_end(&r);

  /* A ChannelBind never answered: the channel is dropped, the permission
   * (answered before the server went silent) stays and data goes by Send
   * indication; the allocation lives on. */
  rig_ready(&r);
  np_addr peer = v4("192.0.2.50", 9000);
  np__turn_permit(r.t, &peer);
  pump(&r);
  r.f.silent = true;
  np__turn_bind(r.t, &peer);
  int64_t b0 = r.now;
  for (int i = 0; i < 20 && r.now < b0 + 39500; i++) {
    pump(&r);
    r.now = np__turn_timeout(r.t);
  }
  pump(&r);
  assert_int_equal(np__turn_get_state(r.t), NP_TURN_READY);
  assert_int_equal(np__turn_channel(r.t, &peer), 0);
  assert_true(np__turn_permitted(r.t, &peer));
  uint8_t buf[64];
  int n = np__turn_send(r.t, &peer, (const uint8_t *)"x", 1, buf, sizeof buf);
  assert_true(n > 0 && buf[0] < 0x40);
  /* Binding again is allowed, with the next number. */
  r.f.silent = false;
  assert_int_equal(np__turn_bind(r.t, &peer), 0);
  pump(&r);
  assert_int_equal(np__turn_channel(r.t, &peer), NP_TURN_CHANNEL_MIN + 1);
  rig_end(&r);
}

static void test_bad_config(void **state) {
  (void)state;
  np__turn_config cfg;
  memset(&cfg, 0, sizeof cfg);
  assert_null(np__turn_new(&cfg, 0));
  cfg.server = v4("192.0.2.1", 3478);
  assert_null(np__turn_new(&cfg, 0));
  cfg.username = "";
  cfg.password = "p";
  assert_null(np__turn_new(&cfg, 0));
  cfg.username = "u";
  np__turn *t = np__turn_new(&cfg, 0);
  assert_non_null(t);
  np__turn_free(t);
  np__turn_free(NULL);
  assert_null(np__turn_new(NULL, 0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_allocate_401_then_success),
      cmocka_unit_test(test_stale_nonce),
      cmocka_unit_test(test_endless_stale_nonce_fails),
      cmocka_unit_test(test_wrong_password_fails),
      cmocka_unit_test(test_refresh_timing),
      cmocka_unit_test(test_retransmission_and_timeout),
      cmocka_unit_test(test_permission_and_refresh),
      cmocka_unit_test(test_permit_before_ready_waits),
      cmocka_unit_test(test_channel_bind_and_refresh),
      cmocka_unit_test(test_send_indication_then_channel_data),
      cmocka_unit_test(test_receive_data_and_channel_data),
      cmocka_unit_test(test_close_deallocates),
      cmocka_unit_test(test_garbage_and_forgeries_ignored),
      cmocka_unit_test(test_refresh_refused_and_timeouts),
      cmocka_unit_test(test_bad_config),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
