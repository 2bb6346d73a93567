/*
 * TURN client state machine (RFC 8656 over RFC 8489 long-term credentials).
 *
 * Every request is a transaction with its own retransmission timer; the
 * allocation has one (Allocate, then Refresh, then the deallocating
 * Refresh), and each permission and channel has its own, so a slow
 * ChannelBind never delays a Refresh. Requests are re-encoded on every
 * retransmission from the same state and transaction ID, which gives the
 * same bytes without keeping a copy of each.
 */
#include "turn/turn.h"
#include "util/bytes.h"
#include "util/clock.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

/* RFC 8489 §6.2.1: RTO 500 ms, Rc = 7 sends, the last waited for Rm = 16
 * RTOs. */
#define RTO_MS 500
#define MAX_SENDS 7
#define LAST_WAIT_RTOS 16
/* Deallocation is a courtesy: the allocation expires anyway. */
#define CLOSE_SENDS 3
/* Stale-nonce retries in a row before giving up, so a server that answers
 * every request with a fresh 438 cannot keep us looping. */
#define MAX_STALE 3
/* RFC 8656 §3.1: REQUESTED-TRANSPORT's protocol number 17 (UDP) in the
 * first byte, three bytes RFFU. */
#define TRANSPORT_UDP (17u << 24)
#define MAX_CRED 513
#define MAX_TEXT 763

enum txn_kind { KIND_ALLOC, KIND_PERM, KIND_CHAN };

typedef struct txn {
  bool active;
  enum txn_kind kind;
  unsigned index; /* into perms or chans */
  uint8_t txid[NP_STUN_TXID_LEN];
  int64_t next_at; /* next (re)send, or the deadline after the last */
  unsigned sends;
  unsigned max_sends;
  int64_t rto;
  unsigned stale; /* 438s answered in a row */
} txn;

enum slot_state { SLOT_FREE, SLOT_PENDING, SLOT_LIVE };

typedef struct perm {
  enum slot_state st;
  np_addr ip;         /* port 0 */
  int64_t refresh_at; /* LIVE: when to refresh */
  int64_t expires_at; /* LIVE: when the server drops it */
  txn tx;
} perm;

typedef struct chan {
  enum slot_state st;
  np_addr peer;
  uint16_t number;
  int64_t refresh_at;
  int64_t expires_at;
  txn tx;
} chan;

struct np__turn {
  np_addr server;
  char username[MAX_CRED + 1];
  char password[MAX_CRED + 1];
  uint32_t lifetime;
  np_random_fn random;
  void *random_user;
  np_logger log;

  enum np__turn_state state;
  int error;
  int error_code;
  char error_reason[128];

  /* Long-term credentials learnt from the 401. */
  bool authed;
  uint8_t realm[MAX_TEXT];
  size_t realm_len;
  uint8_t nonce[MAX_TEXT];
  size_t nonce_len;
  uint8_t key[16];

  txn alloc_tx; /* Allocate, Refresh or deallocation, per state */
  int64_t refresh_at;
  np_addr relayed, mapped;
  bool have_mapped;

  perm perms[NP_TURN_MAX_PERMISSIONS];
  chan chans[NP_TURN_MAX_CHANNELS];
  uint16_t next_channel;
};

static void default_random(void *user, uint8_t *buf, size_t len) {
  (void)user;
  if (np__random_bytes(buf, len) != 0) {
    /* Only before the kernel pool is initialised; transaction IDs need to
     * be unpredictable to off-path attackers, not secret. */
    static uint32_t x = 0x9E3779B9u;
    for (size_t i = 0; i < len; i++) {
      x = x * 1103515245u + 12345u;
      buf[i] = (uint8_t)(x >> 24);
    }
  }
}

const char *np__turn_state_name(enum np__turn_state s) {
  switch (s) {
  case NP_TURN_ALLOCATING:
    return "allocating";
  case NP_TURN_READY:
    return "ready";
  case NP_TURN_CLOSING:
    return "closing";
  case NP_TURN_CLOSED:
    return "closed";
  case NP_TURN_FAILED:
    return "failed";
  }
  return "?";
}

static void txn_start(np__turn *t, txn *x, int64_t now, unsigned max_sends) {
  x->active = true;
  t->random(t->random_user, x->txid, sizeof x->txid);
  x->next_at = now;
  x->sends = 0;
  x->max_sends = max_sends;
  x->rto = RTO_MS;
  /* x->stale survives a restart after a 438: it counts them in a row. */
}

static void txn_stop(txn *x) {
  x->active = false;
  x->stale = 0;
}

static void fail(np__turn *t, int err, const char *why) {
  if (t->state == NP_TURN_FAILED || t->state == NP_TURN_CLOSED)
    return;
  NP_LOGW(&t->log, "turn: allocation failed: %s (%s)", why, np_strerror(err));
  t->state = NP_TURN_FAILED;
  t->error = err;
  txn_stop(&t->alloc_tx);
  for (size_t i = 0; i < NP_TURN_MAX_PERMISSIONS; i++)
    txn_stop(&t->perms[i].tx);
  for (size_t i = 0; i < NP_TURN_MAX_CHANNELS; i++)
    txn_stop(&t->chans[i].tx);
}

np__turn *np__turn_new(const np__turn_config *cfg, int64_t now) {
  if (!cfg || !cfg->username || !cfg->password ||
      (cfg->server.u.sa.sa_family != AF_INET && cfg->server.u.sa.sa_family != AF_INET6))
    return NULL;
  size_t ul = strlen(cfg->username), pl = strlen(cfg->password);
  if (ul == 0 || ul > MAX_CRED || pl > MAX_CRED)
    return NULL;
  np__turn *t = calloc(1, sizeof *t);
  if (!t)
    return NULL;
  t->server = cfg->server;
  memcpy(t->username, cfg->username, ul + 1);
  memcpy(t->password, cfg->password, pl + 1);
  t->lifetime = cfg->lifetime ? cfg->lifetime : NP_TURN_DEFAULT_LIFETIME;
  t->random = cfg->random ? cfg->random : default_random;
  t->random_user = cfg->random_user;
  t->log = cfg->log;
  t->state = NP_TURN_ALLOCATING;
  t->next_channel = NP_TURN_CHANNEL_MIN;
  txn_start(t, &t->alloc_tx, now, MAX_SENDS);
  return t;
}

void np__turn_free(np__turn *t) {
  if (!t)
    return;
  /* The key and password are credentials: do not leave them in freed heap. */
  volatile uint8_t *p = (volatile uint8_t *)t;
  for (size_t i = 0; i < sizeof *t; i++)
    p[i] = 0;
  free(t);
}

/* ---- encoding ----------------------------------------------------------- */

static void put_auth(const np__turn *t, np_stun_writer *w) {
  if (!t->authed)
    return;
  np__stun_put_bytes(w, NP_STUN_ATTR_USERNAME, t->username, strlen(t->username));
  np__stun_put_bytes(w, NP_STUN_ATTR_REALM, t->realm, t->realm_len);
  np__stun_put_bytes(w, NP_STUN_ATTR_NONCE, t->nonce, t->nonce_len);
  np__stun_put_integrity(w, t->key, sizeof t->key);
}

static np_addr ip_only(const np_addr *a) {
  np_addr r = *a;
  if (r.u.sa.sa_family == AF_INET)
    r.u.in4.sin_port = 0;
  else if (r.u.sa.sa_family == AF_INET6)
    r.u.in6.sin6_port = 0;
  return r;
}

static bool same_ip(const np_addr *a, const np_addr *b) {
  np_addr x = ip_only(a), y = ip_only(b);
  return np_addr_equal(&x, &y);
}

static bool addr_ok(const np_addr *a) {
  return a && (a->u.sa.sa_family == AF_INET || a->u.sa.sa_family == AF_INET6);
}

/* The method of the request x stands for. */
static uint16_t txn_method(const np__turn *t, const txn *x) {
  switch (x->kind) {
  case KIND_PERM:
    return NP_TURN_CREATE_PERMISSION;
  case KIND_CHAN:
    return NP_TURN_CHANNEL_BIND;
  default:
    return t->state == NP_TURN_ALLOCATING ? NP_TURN_ALLOCATE : NP_TURN_REFRESH;
  }
}

/* Encodes the request txn x stands for into out. */
static bool encode(const np__turn *t, const txn *x, np__turn_datagram *out) {
  np_stun_writer w;
  const perm *p = NULL;
  const chan *c = NULL;
  uint16_t method = txn_method(t, x);
  if (x->kind == KIND_PERM)
    p = &t->perms[x->index];
  else if (x->kind == KIND_CHAN)
    c = &t->chans[x->index];
  np__stun_writer_init(&w, out->buf, sizeof out->buf, (uint16_t)(method | NP_STUN_REQUEST),
                       NP_STUN_MAGIC_COOKIE, x->txid);
  switch (method) {
  case NP_TURN_ALLOCATE:
    np__stun_put_u32(&w, NP_TURN_ATTR_REQUESTED_TRANSPORT, TRANSPORT_UDP);
    np__stun_put_u32(&w, NP_TURN_ATTR_LIFETIME, t->lifetime);
    break;
  case NP_TURN_REFRESH:
    np__stun_put_u32(&w, NP_TURN_ATTR_LIFETIME, t->state == NP_TURN_CLOSING ? 0 : t->lifetime);
    break;
  case NP_TURN_CREATE_PERMISSION:
    np__stun_put_xor_addr(&w, NP_TURN_ATTR_XOR_PEER_ADDRESS, &p->ip);
    break;
  default:
    /* RFC 8656 §18.1: the channel number, then 16 bits RFFU. */
    np__stun_put_u32(&w, NP_TURN_ATTR_CHANNEL_NUMBER, (uint32_t)c->number << 16);
    np__stun_put_xor_addr(&w, NP_TURN_ATTR_XOR_PEER_ADDRESS, &c->peer);
    break;
  }
  put_auth(t, &w);
  np__stun_put_fingerprint(&w);
  int n = np__stun_writer_finish(&w);
  if (n <= 0)
    return false;
  out->len = (size_t)n;
  out->to = t->server;
  return true;
}

/* ---- timers ------------------------------------------------------------- */

/* Forgets the permission or channel x was for (the application may ask
 * again). */
static void drop_slot(np__turn *t, const txn *x) {
  if (x->kind == KIND_PERM)
    memset(&t->perms[x->index], 0, sizeof t->perms[0]);
  else if (x->kind == KIND_CHAN)
    memset(&t->chans[x->index], 0, sizeof t->chans[0]);
}

/* What to do when x runs out of retransmissions. */
static void txn_timed_out(np__turn *t, txn *x) {
  txn_stop(x);
  if (x == &t->alloc_tx) {
    if (t->state == NP_TURN_CLOSING) {
      t->state = NP_TURN_CLOSED;
      return;
    }
    fail(t, NP_ERR_TIMEOUT, "no answer from the TURN server");
    return;
  }
  NP_LOGW(&t->log, "turn: %s unanswered, dropped",
          x->kind == KIND_PERM ? "CreatePermission" : "ChannelBind");
  drop_slot(t, x);
}

/* Sends or times out x if due; true when *out was filled. */
static bool txn_poll(np__turn *t, txn *x, int64_t now, np__turn_datagram *out) {
  if (!x->active || now < x->next_at)
    return false;
  if (x->sends >= x->max_sends) {
    txn_timed_out(t, x);
    return false;
  }
  if (!encode(t, x, out)) {
    txn_timed_out(t, x);
    return false;
  }
  x->sends++;
  x->next_at = now + (x->sends >= x->max_sends ? RTO_MS * LAST_WAIT_RTOS : x->rto);
  x->rto *= 2;
  return true;
}

/* Starts the refreshes (and first requests) that are due. */
static void start_due(np__turn *t, int64_t now) {
  if (t->state != NP_TURN_READY)
    return;
  if (!t->alloc_tx.active && now >= t->refresh_at)
    txn_start(t, &t->alloc_tx, now, MAX_SENDS);
  for (size_t i = 0; i < NP_TURN_MAX_PERMISSIONS; i++) {
    perm *p = &t->perms[i];
    if (p->st == SLOT_LIVE && now >= p->expires_at && !p->tx.active)
      p->st = SLOT_PENDING; /* lapsed: ask again from scratch */
    if (p->tx.active)
      continue;
    if (p->st == SLOT_PENDING || (p->st == SLOT_LIVE && now >= p->refresh_at))
      txn_start(t, &p->tx, now, MAX_SENDS);
  }
  for (size_t i = 0; i < NP_TURN_MAX_CHANNELS; i++) {
    chan *c = &t->chans[i];
    if (c->st == SLOT_LIVE && now >= c->expires_at && !c->tx.active)
      c->st = SLOT_PENDING;
    if (c->tx.active)
      continue;
    if (c->st == SLOT_PENDING || (c->st == SLOT_LIVE && now >= c->refresh_at))
      txn_start(t, &c->tx, now, MAX_SENDS);
  }
}

bool np__turn_next(np__turn *t, int64_t now, np__turn_datagram *out) {
  if (!t || !out)
    return false;
  start_due(t, now);
  if (txn_poll(t, &t->alloc_tx, now, out))
    return true;
  if (t->state != NP_TURN_READY)
    return false;
  for (size_t i = 0; i < NP_TURN_MAX_PERMISSIONS; i++)
    if (txn_poll(t, &t->perms[i].tx, now, out))
      return true;
  for (size_t i = 0; i < NP_TURN_MAX_CHANNELS; i++)
    if (txn_poll(t, &t->chans[i].tx, now, out))
      return true;
  return false;
}

static int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

int64_t np__turn_timeout(const np__turn *t) {
  if (!t)
    return INT64_MAX;
  int64_t w = INT64_MAX;
  if (t->alloc_tx.active)
    w = min64(w, t->alloc_tx.next_at);
  if (t->state != NP_TURN_READY)
    return w;
  if (!t->alloc_tx.active)
    w = min64(w, t->refresh_at);
  for (size_t i = 0; i < NP_TURN_MAX_PERMISSIONS; i++) {
    const perm *p = &t->perms[i];
    if (p->tx.active)
      w = min64(w, p->tx.next_at);
    else if (p->st == SLOT_LIVE)
      w = min64(w, p->refresh_at);
  }
  for (size_t i = 0; i < NP_TURN_MAX_CHANNELS; i++) {
    const chan *c = &t->chans[i];
    if (c->tx.active)
      w = min64(w, c->tx.next_at);
    else if (c->st == SLOT_LIVE)
      w = min64(w, c->refresh_at);
  }
  return w;
}

/* ---- responses ---------------------------------------------------------- */

static txn *find_txn(np__turn *t, const uint8_t txid[NP_STUN_TXID_LEN]) {
  if (t->alloc_tx.active && memcmp(t->alloc_tx.txid, txid, NP_STUN_TXID_LEN) == 0)
    return &t->alloc_tx;
  for (size_t i = 0; i < NP_TURN_MAX_PERMISSIONS; i++)
    if (t->perms[i].tx.active && memcmp(t->perms[i].tx.txid, txid, NP_STUN_TXID_LEN) == 0)
      return &t->perms[i].tx;
  for (size_t i = 0; i < NP_TURN_MAX_CHANNELS; i++)
    if (t->chans[i].tx.active && memcmp(t->chans[i].tx.txid, txid, NP_STUN_TXID_LEN) == 0)
      return &t->chans[i].tx;
  return NULL;
}

/* Takes REALM and NONCE from a 401/438 and derives the key. */
static bool learn_auth(np__turn *t, const np_stun_msg *m) {
  if (!(m->present & NP_STUN_HAS_NONCE) || m->nonce_len == 0 || m->nonce_len > MAX_TEXT)
    return false;
  if (m->present & NP_STUN_HAS_REALM) {
    if (m->realm_len == 0 || m->realm_len > MAX_TEXT)
      return false;
    char realm[MAX_TEXT + 1];
    memcpy(realm, m->realm, m->realm_len);
    realm[m->realm_len] = '\0';
    /* A NUL inside the realm would make the key differ from the wire's. */
    if (strlen(realm) != m->realm_len)
      return false;
    if (np__stun_long_term_key(t->username, realm, t->password, t->key) != 0)
      return false;
    memcpy(t->realm, m->realm, m->realm_len);
    t->realm_len = m->realm_len;
  } else if (!t->authed) {
    return false; /* a 401 must carry REALM (RFC 8489 §9.2.4) */
  }
  memcpy(t->nonce, m->nonce, m->nonce_len);
  t->nonce_len = m->nonce_len;
  t->authed = true;
  return true;
}

static void record_error(np__turn *t, const np_stun_msg *m) {
  t->error_code = m->error_code;
  size_t n =
      m->reason_len < sizeof t->error_reason - 1 ? m->reason_len : sizeof t->error_reason - 1;
  if (n)
    memcpy(t->error_reason, m->reason, n);
  t->error_reason[n] = '\0';
}

static uint32_t read_lifetime(const uint8_t *buf, size_t len, uint32_t dflt) {
  const uint8_t *v;
  size_t vl;
  if (np__stun_find_attr(buf, len, NP_TURN_ATTR_LIFETIME, &v, &vl) && vl == 4)
    return rd32(v);
  return dflt;
}

/* When to refresh an allocation granted for 'life' seconds: a minute
 * before it ends (RFC 8656 §8 leaves it to the client), or halfway for
 * short ones, so one lost Refresh still leaves time for retransmissions. */
static int64_t refresh_delay_ms(uint32_t life) {
  if (life > 120)
    return ((int64_t)life - 60) * 1000;
  return (int64_t)life * 500;
}

static void on_alloc_success(np__turn *t, int64_t now, const uint8_t *buf, size_t len,
                             const np_stun_msg *m) {
  if (t->state == NP_TURN_CLOSING) {
    t->state = NP_TURN_CLOSED;
    return;
  }
  uint32_t life = read_lifetime(buf, len, t->lifetime);
  if (t->state == NP_TURN_ALLOCATING) {
    const uint8_t *v;
    size_t vl;
    np_addr relayed;
    if (!np__stun_find_attr(buf, len, NP_TURN_ATTR_XOR_RELAYED_ADDRESS, &v, &vl) ||
        np__stun_read_xor_addr(buf, v, vl, &relayed) != 0) {
      fail(t, NP_ERR_PROTO, "Allocate success without a valid XOR-RELAYED-ADDRESS");
      return;
    }
    t->relayed = relayed;
    if (m->present & NP_STUN_HAS_XOR_MAPPED) {
      t->mapped = m->xor_mapped;
      t->have_mapped = true;
    }
    t->state = NP_TURN_READY;
    char a[NP_ADDRSTRLEN];
    NP_LOGI(&t->log, "turn: allocated %s for %u s", np_addr_format(&t->relayed, a, sizeof a),
            (unsigned)life);
  }
  if (life == 0) {
    /* A server granting nothing has in effect deallocated. */
    fail(t, NP_ERR_REFUSED, "server granted a zero lifetime");
    return;
  }
  t->refresh_at = now + refresh_delay_ms(life);
}

static void on_success(np__turn *t, int64_t now, txn *x, const uint8_t *buf, size_t len,
                       const np_stun_msg *m) {
  txn_stop(x);
  if (x == &t->alloc_tx) {
    on_alloc_success(t, now, buf, len, m);
    return;
  }
  if (x->kind == KIND_PERM) {
    perm *p = &t->perms[x->index];
    p->st = SLOT_LIVE;
    p->refresh_at = now + NP_TURN_PERMISSION_REFRESH_MS;
    p->expires_at = now + NP_TURN_PERMISSION_LIFETIME_MS;
    return;
  }
  {
    chan *c = &t->chans[x->index];
    c->st = SLOT_LIVE;
    c->refresh_at = now + NP_TURN_CHANNEL_REFRESH_MS;
    c->expires_at = now + NP_TURN_CHANNEL_LIFETIME_MS;
    /* RFC 8656 §12.2: a ChannelBind also installs or refreshes the
     * permission for the peer's IP. */
    for (size_t j = 0; j < NP_TURN_MAX_PERMISSIONS; j++) {
      perm *p = &t->perms[j];
      if (p->st == SLOT_LIVE && same_ip(&p->ip, &c->peer) && !p->tx.active) {
        p->refresh_at = now + NP_TURN_PERMISSION_REFRESH_MS;
        p->expires_at = now + NP_TURN_PERMISSION_LIFETIME_MS;
      }
    }
    return;
  }
}

static void on_error(np__turn *t, int64_t now, txn *x, const np_stun_msg *m) {
  record_error(t, m);
  uint16_t code = m->error_code;
  bool was_authed = t->authed;
  if (code == 401 || code == 438) {
    /* 401 to a request that already carried credentials means they are
     * wrong (RFC 8489 §9.2.5); only a 438 says the nonce went stale. */
    if (code == 401 && was_authed) {
      fail(t, NP_ERR_AUTH, "credentials refused (401)");
      return;
    }
    if (x->stale >= MAX_STALE) {
      fail(t, NP_ERR_AUTH, "stale nonce again and again (438)");
      return;
    }
    if (!learn_auth(t, m)) {
      fail(t, NP_ERR_PROTO, "401/438 without a usable REALM and NONCE");
      return;
    }
    unsigned stale = code == 438 ? x->stale + 1 : 0;
    txn_start(t, x, now, x->max_sends);
    x->stale = stale;
    return;
  }
  txn_stop(x);
  if (x == &t->alloc_tx) {
    if (t->state == NP_TURN_CLOSING) {
      t->state = NP_TURN_CLOSED; /* 437: already gone, which is what we wanted */
      return;
    }
    fail(t, NP_ERR_REFUSED, "error response to Allocate/Refresh");
    return;
  }
  NP_LOGW(&t->log, "turn: %s refused (%u)",
          x->kind == KIND_PERM ? "CreatePermission" : "ChannelBind", code);
  drop_slot(t, x);
}

static bool permitted_ip(const np__turn *t, const np_addr *ip) {
  for (size_t i = 0; i < NP_TURN_MAX_PERMISSIONS; i++)
    if (t->perms[i].st == SLOT_LIVE && same_ip(&t->perms[i].ip, ip))
      return true;
  for (size_t i = 0; i < NP_TURN_MAX_CHANNELS; i++)
    if (t->chans[i].st == SLOT_LIVE && same_ip(&t->chans[i].peer, ip))
      return true;
  return false;
}

static bool input_channel_data(np__turn *t, const uint8_t *buf, size_t len, np__turn_recv *out) {
  /*
   *  0                   1                   2                   3
   *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   * |         Channel Number        |            Length             |
   * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   * /                       Application Data                        /
   */
  if (len < NP_TURN_CHANNEL_HEADER)
    return false;
  uint16_t number = rd16(buf);
  size_t dlen = rd16(buf + 2);
  /* RFC 8656 §12.5: over UDP the padding "is not required"; a datagram
   * may still carry up to 3 bytes of it, which we accept and ignore. */
  if (dlen > len - NP_TURN_CHANNEL_HEADER || len - NP_TURN_CHANNEL_HEADER - dlen > 3)
    return true;
  for (size_t i = 0; i < NP_TURN_MAX_CHANNELS; i++) {
    const chan *c = &t->chans[i];
    /* A refresh in flight keeps the channel usable; a PENDING one is not
     * confirmed, yet the server may use it as soon as it bound it. */
    if (c->st != SLOT_FREE && c->number == number) {
      if (out) {
        out->has_data = true;
        out->peer = c->peer;
        out->data = buf + NP_TURN_CHANNEL_HEADER;
        out->len = dlen;
      }
      return true;
    }
  }
  return true;
}

static void input_data_indication(np__turn *t, const uint8_t *buf, size_t len, np__turn_recv *out) {
  const uint8_t *v, *d;
  size_t vl, dl;
  np_addr peer;
  if (!np__stun_find_attr(buf, len, NP_TURN_ATTR_XOR_PEER_ADDRESS, &v, &vl) ||
      np__stun_read_xor_addr(buf, v, vl, &peer) != 0 ||
      !np__stun_find_attr(buf, len, NP_TURN_ATTR_DATA, &d, &dl))
    return;
  /* The server only relays from permitted IPs; checking again costs
   * nothing and keeps a forged indication from a third party out. */
  if (!permitted_ip(t, &peer))
    return;
  if (out) {
    out->has_data = true;
    out->peer = peer;
    out->data = d;
    out->len = dl;
  }
}

bool np__turn_input(np__turn *t, int64_t now, const uint8_t *buf, size_t len, np__turn_recv *out) {
  if (out)
    memset(out, 0, sizeof *out);
  if (!t || !buf || len == 0)
    return false;
  /* RFC 8656 §12: ChannelData starts with 0b01 (RFC 7983: 64..79). */
  if (buf[0] >= 0x40 && buf[0] <= 0x4F)
    return input_channel_data(t, buf, len, out);
  np_stun_msg m;
  if (np__stun_read(buf, len, &m) != 0 || m.rfc3489)
    return false;
  if (m.cls == NP_STUN_INDICATION) {
    if (m.method == NP_TURN_DATA && t->state == NP_TURN_READY)
      input_data_indication(t, buf, len, out);
    return true;
  }
  if (m.cls != NP_STUN_SUCCESS && m.cls != NP_STUN_ERROR)
    return true;
  txn *x = find_txn(t, m.txid);
  if (!x)
    return true;
  if (m.method != txn_method(t, x))
    return true;
  bool challenge = m.cls == NP_STUN_ERROR && (m.error_code == 401 || m.error_code == 438);
  if (m.cls == NP_STUN_ERROR && !(m.present & NP_STUN_HAS_ERROR_CODE))
    return true;
  /* RFC 8489 §9.2.5: except for 401 and 438, a response to a request sent
   * with credentials must carry a MESSAGE-INTEGRITY that verifies with the
   * key; anything else is discarded (an off-path forgery). */
  if (t->authed && !challenge) {
    if (!(m.present & NP_STUN_HAS_INTEGRITY) ||
        np__stun_check_integrity(buf, len, &m, t->key, sizeof t->key) != 0) {
      NP_LOGD(&t->log, "turn: response failed MESSAGE-INTEGRITY, ignored");
      return true;
    }
  }
  if (m.cls == NP_STUN_SUCCESS)
    on_success(t, now, x, buf, len, &m);
  else
    on_error(t, now, x, &m);
  return true;
}

/* ---- the application's side ---------------------------------------------- */

enum np__turn_state np__turn_get_state(const np__turn *t) {
  return t ? t->state : NP_TURN_FAILED;
}

const np_addr *np__turn_relayed(const np__turn *t) {
  return t && t->state == NP_TURN_READY ? &t->relayed : NULL;
}

const np_addr *np__turn_mapped(const np__turn *t) {
  return t && t->have_mapped ? &t->mapped : NULL;
}

int np__turn_error(const np__turn *t) {
  return t ? t->error : NP_ERR_INVAL;
}

int np__turn_error_code(const np__turn *t) {
  return t ? t->error_code : 0;
}

const char *np__turn_error_reason(const np__turn *t) {
  return t ? t->error_reason : "";
}

static bool usable(const np__turn *t) {
  return t->state == NP_TURN_ALLOCATING || t->state == NP_TURN_READY;
}

int np__turn_permit(np__turn *t, const np_addr *peer) {
  if (!t || !addr_ok(peer) || !usable(t))
    return NP_ERR_INVAL;
  np_addr ip = ip_only(peer);
  perm *free_slot = NULL;
  for (size_t i = 0; i < NP_TURN_MAX_PERMISSIONS; i++) {
    perm *p = &t->perms[i];
    if (p->st != SLOT_FREE && np_addr_equal(&p->ip, &ip))
      return 0;
    if (p->st == SLOT_FREE && !free_slot)
      free_slot = p;
  }
  if (!free_slot)
    return NP_ERR_NOSPACE;
  memset(free_slot, 0, sizeof *free_slot);
  free_slot->st = SLOT_PENDING;
  free_slot->ip = ip;
  free_slot->tx.kind = KIND_PERM;
  free_slot->tx.index = (unsigned)(free_slot - t->perms);
  return 0;
}

bool np__turn_permitted(const np__turn *t, const np_addr *peer) {
  return t && addr_ok(peer) && permitted_ip(t, peer);
}

int np__turn_bind(np__turn *t, const np_addr *peer) {
  if (!t || !addr_ok(peer) || !usable(t))
    return NP_ERR_INVAL;
  chan *free_slot = NULL;
  for (size_t i = 0; i < NP_TURN_MAX_CHANNELS; i++) {
    chan *c = &t->chans[i];
    if (c->st != SLOT_FREE && np_addr_equal(&c->peer, peer))
      return 0;
    if (c->st == SLOT_FREE && !free_slot)
      free_slot = c;
  }
  if (!free_slot)
    return NP_ERR_NOSPACE;
  /* The permission a ChannelBind installs lasts 300 s, the channel 600 s
   * (RFC 8656 §12: "permissions need to be refreshed independently of
   * channel bindings"), so the IP also gets a permission of its own, which
   * CreatePermission keeps alive every 240 s. */
  int rc = np__turn_permit(t, peer);
  if (rc != 0)
    return rc;
  memset(free_slot, 0, sizeof *free_slot);
  free_slot->st = SLOT_PENDING;
  free_slot->peer = *peer;
  free_slot->tx.kind = KIND_CHAN;
  free_slot->tx.index = (unsigned)(free_slot - t->chans);
  /* RFC 8656 §12: a number must not be rebound to another peer while its
   * binding may live on the server (10 minutes after its last refresh), so
   * numbers are handed out in order and wrap only after 4096 of them. */
  free_slot->number = t->next_channel;
  t->next_channel = t->next_channel == NP_TURN_CHANNEL_MAX ? NP_TURN_CHANNEL_MIN
                                                           : (uint16_t)(t->next_channel + 1);
  return 0;
}

uint16_t np__turn_channel(const np__turn *t, const np_addr *peer) {
  if (!t || !addr_ok(peer))
    return 0;
  for (size_t i = 0; i < NP_TURN_MAX_CHANNELS; i++)
    if (t->chans[i].st == SLOT_LIVE && np_addr_equal(&t->chans[i].peer, peer))
      return t->chans[i].number;
  return 0;
}

int np__turn_send(np__turn *t, const np_addr *peer, const uint8_t *payload, size_t len,
                  uint8_t *out, size_t cap) {
  if (!t || !addr_ok(peer) || !out || (!payload && len))
    return NP_ERR_INVAL;
  if (len > NP_TURN_MAX_PAYLOAD)
    return NP_ERR_NOSPACE;
  if (t->state != NP_TURN_READY)
    return NP_ERR_AGAIN;
  uint16_t number = np__turn_channel(t, peer);
  if (number) {
    if (cap < NP_TURN_CHANNEL_HEADER + len)
      return NP_ERR_NOSPACE;
    wr16(out, number);
    wr16(out + 2, (uint16_t)len);
    if (len)
      memcpy(out + NP_TURN_CHANNEL_HEADER, payload, len);
    return (int)(NP_TURN_CHANNEL_HEADER + len);
  }
  if (!permitted_ip(t, peer))
    return NP_ERR_AGAIN;
  /* Indications need no credentials (RFC 8656 §10.1) and their ID is
   * random so a middlebox cannot take two for retransmissions. */
  uint8_t txid[NP_STUN_TXID_LEN];
  t->random(t->random_user, txid, sizeof txid);
  np_stun_writer w;
  np__stun_writer_init(&w, out, cap, NP_TURN_SEND | NP_STUN_INDICATION, NP_STUN_MAGIC_COOKIE, txid);
  np__stun_put_xor_addr(&w, NP_TURN_ATTR_XOR_PEER_ADDRESS, peer);
  np__stun_put_bytes(&w, NP_TURN_ATTR_DATA, payload, len);
  return np__stun_writer_finish(&w);
}

void np__turn_close(np__turn *t, int64_t now) {
  if (!t)
    return;
  if (t->state == NP_TURN_READY) {
    t->state = NP_TURN_CLOSING;
    for (size_t i = 0; i < NP_TURN_MAX_PERMISSIONS; i++)
      txn_stop(&t->perms[i].tx);
    for (size_t i = 0; i < NP_TURN_MAX_CHANNELS; i++)
      txn_stop(&t->chans[i].tx);
    txn_stop(&t->alloc_tx);
    txn_start(t, &t->alloc_tx, now, CLOSE_SENDS);
  } else if (t->state == NP_TURN_ALLOCATING) {
    txn_stop(&t->alloc_tx);
    t->state = NP_TURN_CLOSED;
  }
}
