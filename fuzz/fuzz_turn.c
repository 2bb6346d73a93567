/*
 * libFuzzer harness for the TURN client (turn/turn.h).
 *
 * One input drives one np__turn through a script of records, each starting
 * with an op byte (taken modulo the number of ops):
 *
 *   0 raw       u16 length, bytes: an arbitrary datagram from the server
 *   1 time      u8 t: advance the clock by t * 50 ms, or with bit 7 by
 *               (t & 0x7f) * 10 s (so refreshes and expiries are reached)
 *   2 answer    class, code, flags, n, then n attributes (u16 type, u8
 *               length, bytes): a response to the client's last request
 *               (its transaction and method), with REALM/NONCE when flags
 *               bit 0 says so and signed with the right key when bit 1
 *               does, so the fuzzer's attributes get past the integrity
 *               check
 *   3 api       u8 what, u8 peer: permit, bind, send, close on a peer from
 *               a small table (v4, v6, same IP other port)
 *   4 chandata  u16 channel, u8 length, bytes: ChannelData
 *
 * After every record the harness drains np__turn_next() (bounded) and
 * checks invariants: every datagram goes to the server, fits, decodes as a
 * STUN request of a TURN method with a FINGERPRINT, and carries
 * MESSAGE-INTEGRITY that verifies whenever it carries USERNAME; after a
 * drain the wakeup is not in the past; the relayed address exists exactly
 * when READY; payloads handed out lie inside the input; np__turn_send()
 * output is ChannelData of a confirmed channel or a Send indication that
 * decodes. Time and randomness are fixed, so a crash replays exactly.
 */
#include "fuzz_check.h"
#include "stun/stun.h"
#include "turn/turn.h"
#include "util/bytes.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RECORDS 256
#define MAX_DRAIN 256
#define USER "u"
#define PASS "p"
#define REALM "natpunch"

struct cursor {
  const uint8_t *p;
  size_t n;
};

static bool take(struct cursor *c, void *out, size_t n) {
  if (c->n < n)
    return false;
  memcpy(out, c->p, n);
  c->p += n;
  c->n -= n;
  return true;
}

static uint8_t u8(struct cursor *c) {
  uint8_t v = 0;
  take(c, &v, 1);
  return v;
}

static void fixed_random(void *user, uint8_t *buf, size_t len) {
  uint32_t *s = user;
  for (size_t i = 0; i < len; i++) {
    *s = *s * 1664525u + 1013904223u;
    buf[i] = (uint8_t)(*s >> 24);
  }
}

static np_addr v4(const char *ip, uint16_t port) {
  np_addr a;
  memset(&a, 0, sizeof a);
  a.u.in4.sin_family = AF_INET;
  a.u.in4.sin_port = htons(port);
  inet_pton(AF_INET, ip, &a.u.in4.sin_addr);
  return a;
}

static np_addr v6(const char *ip, uint16_t port) {
  np_addr a;
  memset(&a, 0, sizeof a);
  a.u.in6.sin6_family = AF_INET6;
  a.u.in6.sin6_port = htons(port);
  inet_pton(AF_INET6, ip, &a.u.in6.sin6_addr);
  return a;
}

static bool inside(const uint8_t *buf, size_t len, const uint8_t *p, size_t n) {
  if (n == 0)
    return true;
  return p >= buf && n <= len && (size_t)(p - buf) <= len - n;
}

struct run {
  np__turn *t;
  np_addr server;
  int64_t now;
  uint8_t key[16];
  /* The client's last request: answers are built for it. */
  uint8_t last_txid[NP_STUN_TXID_LEN];
  uint16_t last_method;
  bool have_last;
};

static void check_datagram(struct run *r, const np__turn_datagram *d) {
  CHECK(np_addr_equal(&d->to, &r->server));
  CHECK(d->len >= NP_STUN_HEADER_LEN && d->len <= sizeof d->buf);
  np_stun_msg m;
  CHECK(np__stun_read(d->buf, d->len, &m) == 0);
  CHECK(m.cls == NP_STUN_REQUEST);
  CHECK(m.method == NP_TURN_ALLOCATE || m.method == NP_TURN_REFRESH ||
        m.method == NP_TURN_CREATE_PERMISSION || m.method == NP_TURN_CHANNEL_BIND);
  CHECK(m.present & NP_STUN_HAS_FINGERPRINT);
  if (m.present & NP_STUN_HAS_USERNAME) {
    CHECK(m.username_len == 1 && m.username[0] == 'u');
    CHECK(m.present & NP_STUN_HAS_INTEGRITY);
    /* The fuzzer may have supplied any realm; the key follows it. */
    char realm[800];
    CHECK(m.present & NP_STUN_HAS_REALM);
    CHECK(m.realm_len < sizeof realm);
    memcpy(realm, m.realm, m.realm_len);
    realm[m.realm_len] = '\0';
    uint8_t key[16];
    CHECK(np__stun_long_term_key(USER, realm, PASS, key) == 0);
    CHECK(np__stun_check_integrity(d->buf, d->len, &m, key, sizeof key) == 0);
  }
  memcpy(r->last_txid, m.txid, sizeof r->last_txid);
  r->last_method = m.method;
  r->have_last = true;
}

static void drain(struct run *r) {
  np__turn_datagram d;
  int i = 0;
  for (; i < MAX_DRAIN && np__turn_next(r->t, r->now, &d); i++)
    check_datagram(r, &d);
  CHECK(i < MAX_DRAIN);
  int64_t w = np__turn_timeout(r->t);
  CHECK(w == INT64_MAX || w > r->now);
  enum np__turn_state st = np__turn_get_state(r->t);
  CHECK((np__turn_relayed(r->t) != NULL) == (st == NP_TURN_READY));
  if (st == NP_TURN_FAILED)
    CHECK(np__turn_error(r->t) != 0);
}

static void feed(struct run *r, const uint8_t *buf, size_t len) {
  np__turn_recv rv;
  np__turn_input(r->t, r->now, buf, len, &rv);
  if (rv.has_data)
    CHECK(inside(buf, len, rv.data, rv.len));
}

static void op_answer(struct run *r, struct cursor *c) {
  uint8_t cls = u8(c), code = u8(c), flags = u8(c), n = u8(c);
  if (!r->have_last)
    return;
  static const uint16_t codes[] = {401, 438, 437, 403, 486, 508, 400, 300};
  uint8_t buf[NP_TURN_MAX_DATAGRAM];
  np_stun_writer w;
  bool error = cls & 1;
  np__stun_writer_init(&w, buf, sizeof buf,
                       (uint16_t)(r->last_method | (error ? NP_STUN_ERROR : NP_STUN_SUCCESS)),
                       NP_STUN_MAGIC_COOKIE, r->last_txid);
  if (error)
    np__stun_put_error(&w, codes[code % 8], "fuzz");
  if (flags & 1) {
    np__stun_put_bytes(&w, NP_STUN_ATTR_REALM, REALM, strlen(REALM));
    np__stun_put_bytes(&w, NP_STUN_ATTR_NONCE, &code, 1);
  }
  for (unsigned i = 0; i < (n & 7u); i++) {
    uint8_t th[2];
    if (!take(c, th, 2))
      break;
    uint8_t vl = u8(c);
    uint8_t v[255];
    size_t got = vl < c->n ? vl : c->n;
    take(c, v, got);
    np__stun_put_bytes(&w, rd16(th), v, got);
  }
  if (flags & 2)
    np__stun_put_integrity(&w, r->key, sizeof r->key);
  if (flags & 4)
    np__stun_put_fingerprint(&w);
  int len = np__stun_writer_finish(&w);
  if (len > 0)
    feed(r, buf, (size_t)len);
}

static void op_api(struct run *r, struct cursor *c) {
  uint8_t what = u8(c), which = u8(c);
  const np_addr peers[] = {v4("192.0.2.50", 9000), v4("192.0.2.50", 9001), v4("198.51.100.9", 53),
                           v6("2001:db8::5", 443)};
  const np_addr *peer = &peers[which % 4];
  uint8_t out[NP_TURN_MAX_DATAGRAM];
  uint8_t payload[64];
  memset(payload, which, sizeof payload);
  switch (what % 4) {
  case 0:
    np__turn_permit(r->t, peer);
    break;
  case 1:
    np__turn_bind(r->t, peer);
    break;
  case 2: {
    int n = np__turn_send(r->t, peer, payload, which % sizeof payload, out, sizeof out);
    if (n > 0) {
      uint16_t ch = np__turn_channel(r->t, peer);
      if (ch) {
        CHECK((size_t)n == NP_TURN_CHANNEL_HEADER + which % sizeof payload);
        CHECK(rd16(out) == ch && ch >= NP_TURN_CHANNEL_MIN && ch <= NP_TURN_CHANNEL_MAX);
      } else {
        np_stun_msg m;
        CHECK(np__stun_read(out, (size_t)n, &m) == 0);
        CHECK(m.method == NP_TURN_SEND && m.cls == NP_STUN_INDICATION);
        CHECK(np__turn_permitted(r->t, peer));
      }
    } else {
      CHECK(n == NP_ERR_AGAIN);
    }
    break;
  }
  default:
    np__turn_close(r->t, r->now);
    break;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct run r;
  memset(&r, 0, sizeof r);
  uint32_t seed = 42;
  r.server = v4("192.0.2.1", 3478);
  r.now = 1000;
  CHECK(np__stun_long_term_key(USER, REALM, PASS, r.key) == 0);
  np__turn_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.server = r.server;
  cfg.username = USER;
  cfg.password = PASS;
  cfg.random = fixed_random;
  cfg.random_user = &seed;
  r.t = np__turn_new(&cfg, r.now);
  CHECK(r.t != NULL);
  drain(&r);

  struct cursor c = {data, size};
  for (int rec = 0; rec < MAX_RECORDS && c.n > 0; rec++) {
    switch (u8(&c) % 5) {
    case 0: {
      uint8_t lh[2] = {0, 0};
      take(&c, lh, 2);
      size_t len = rd16(lh);
      if (len > c.n)
        len = c.n;
      /* A heap copy of exactly len bytes, so ASan sees any overread. */
      uint8_t *buf = malloc(len ? len : 1);
      CHECK(buf != NULL);
      take(&c, buf, len);
      feed(&r, buf, len);
      free(buf);
      break;
    }
    case 1: {
      uint8_t t = u8(&c);
      r.now += (t & 0x80) ? (int64_t)(t & 0x7f) * 10000 : (int64_t)t * 50;
      break;
    }
    case 2:
      op_answer(&r, &c);
      break;
    case 3:
      op_api(&r, &c);
      break;
    default: {
      uint8_t h[3] = {0, 0, 0};
      take(&c, h, 3);
      uint8_t buf[4 + 255];
      size_t got = h[2] < c.n ? h[2] : c.n;
      wr16(buf, rd16(h));
      wr16(buf + 2, h[2]);
      take(&c, buf + 4, got);
      feed(&r, buf, 4 + got);
      break;
    }
    }
    drain(&r);
  }
  np__turn_free(r.t);
  return 0;
}
