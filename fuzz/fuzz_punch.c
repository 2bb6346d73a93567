/*
 * libFuzzer harness for the hole-punching machine (traversal/punch.h).
 *
 * One input drives one np_punch through a script. The first two bytes pick
 * the machine: a pair of candidate sets (cone/cone, cone/sequential,
 * sequential/sequential, cone/random, random/cone, open/cone), the role
 * (caller or callee) and how far it has gone before the script starts
 * (fresh, into the prediction rounds, or connected through a real exchange
 * with a second machine). With bit 0x40 of the first byte, the peer's
 * candidate set is the fuzzer's instead (a hostile offer or answer), read
 * from the bytes after the second:
 *   flags   bits 0-1 private count (0..3), bits 2-3 mapped count (0..2),
 *           bit 4 a port mapping, bit 5 no OBSERVED address for the peer,
 *           bit 6 both sides behind one NAT (the same OBSERVED IP), bit 7
 *           our own OBSERVED unknown
 *   delta   i8, and have_delta when not 0
 *   then per address: an IP from a table of the interesting ones (the
 *           peer's, ours, a third host's, loopback, broadcast, multicast,
 *           link-local, private, IPv6...) and a port byte
 * so zero candidates, or none usable, are inputs like any other. Then
 * records, each starting with an op byte:
 *
 *   0 raw       sock, from, u16 length, bytes: an arbitrary datagram
 *   1 forged    class, username, truncation, sock, from, attributes: a
 *               STUN message the harness signs with the session key, so
 *               the fuzzer's attributes get past the integrity check
 *   2 time      u8: advance the clock by that many * 8 ms, then drain
 *   3 answer    flags: a signed success response to the machine's last
 *               request (its transaction, from where it went), optionally
 *               with NOMINATE and a VIA, so nominations complete
 *   4 ready     the caller's READY arrived (np__punch_peer_ready), at any
 *               point of the script, more than once, on either role
 *
 * After every record the harness drains np__punch_next() (bounded) and
 * checks the invariants: every datagram fits, names a valid socket, decodes
 * as STUN and verifies with the key, and goes only where the peer can be
 * (its OBSERVED IP, or private space behind a NAT both share: no third
 * party, whatever the candidates or the inputs say); the result is consistent with the
 * state; the wakeup is not in the past after a drain (but once, see
 * below). Time and randomness are fixed, so a crash replays exactly.
 */
#include "fuzz_check.h"
#include "net/addr.h"
#include "stun/stun.h"
#include "traversal/punch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Same values as punch.c's private attributes (the wire format). */
#define ATTR_NOMINATE 0xC001
#define ATTR_VIA 0xC002

#define MAX_RECORDS 256    /* per input: keeps one run short */
#define MAX_DRAIN 4096     /* datagrams per drain; pacing keeps it far lower */
#define MAX_FORGED_ATTRS 8 /* attributes the fuzzer adds to a forged message */

static const uint8_t fuzz_key[NP_PUNCH_KEY_LEN] = "natpunch fuzz key, 32 bytes.....";
static const uint8_t fuzz_session[NP_SIG_SESSION_LEN] = "fuzz session 16B";

/* ---- deterministic world ---------------------------------------------------- */

/* Counter-based bytes: each machine draws the same sequence every run. */
struct rng {
  uint64_t s;
};

static void rng_fill(void *user, uint8_t *buf, size_t len) {
  struct rng *r = user;
  for (size_t i = 0; i < len; i++) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    buf[i] = (uint8_t)(z ^ (z >> 31));
  }
}

static np_addr addr(const char *s) {
  np_addr a;
  CHECK(np_addr_parse(s, 0, &a) == 0);
  return a;
}

/* One side's signalled candidates: host address, two discovery views. */
static np_sig_candidates cands(const char *host, const char *m0, const char *m1, int32_t delta) {
  np_sig_candidates c;
  memset(&c, 0, sizeof c);
  c.private_addrs[0] = addr(host);
  c.n_private = 1;
  c.mapped[0] = addr(m0);
  c.mapped[1] = addr(m1);
  c.n_mapped = 2;
  c.have_delta = true;
  c.delta = delta;
  return c;
}

enum kind { K_CONE, K_SEQ, K_RANDOM, K_OPEN, K_NKINDS };

static np_sig_candidates side_cands(enum kind k, bool caller) {
  const char *host = caller ? "10.1.0.2:5000" : "10.2.0.2:5000";
  switch (k) {
  case K_SEQ:
    return caller ? cands(host, "203.0.113.11:31000", "203.0.113.11:31001", 1)
                  : cands(host, "203.0.113.12:42000", "203.0.113.12:42002", 2);
  case K_RANDOM:
    return caller ? cands(host, "203.0.113.11:17000", "203.0.113.11:51234", 34234)
                  : cands(host, "203.0.113.12:61000", "203.0.113.12:2345", -58655);
  case K_OPEN:
    return caller ? cands("203.0.113.11:5000", "203.0.113.11:5000", "203.0.113.11:5000", 0)
                  : cands("203.0.113.12:5000", "203.0.113.12:5000", "203.0.113.12:5000", 0);
  default:
    return caller ? cands(host, "203.0.113.11:31000", "203.0.113.11:31000", 0)
                  : cands(host, "203.0.113.12:42000", "203.0.113.12:42000", 0);
  }
}

/* Pairs (caller kind, callee kind) covering every strategy. */
static const enum kind pairs[][2] = {
    {K_CONE, K_CONE},   {K_CONE, K_SEQ},    {K_SEQ, K_CONE},  {K_SEQ, K_SEQ},
    {K_CONE, K_RANDOM}, {K_RANDOM, K_CONE}, {K_OPEN, K_CONE}, {K_SEQ, K_RANDOM},
};
#define NPAIRS (sizeof pairs / sizeof pairs[0])

/* Public IPs of the two sides (side_cands), what a rendezvous server sees. */
static np_addr public_ip(bool caller) {
  return addr(caller ? "203.0.113.11:7000" : "203.0.113.12:7000");
}

static np_punch_config config(unsigned pair, bool callee, struct rng *r) {
  np_punch_config c;
  memset(&c, 0, sizeof c);
  c.callee = callee;
  memcpy(c.key, fuzz_key, sizeof c.key);
  memcpy(c.session, fuzz_session, sizeof c.session);
  np_sig_candidates caller_c = side_cands(pairs[pair][0], true);
  np_sig_candidates callee_c = side_cands(pairs[pair][1], false);
  c.self = callee ? callee_c : caller_c;
  c.peer = callee ? caller_c : callee_c;
  /* Small birthday numbers: the same code paths at a fraction of the cost. */
  c.birthday_sockets = 8;
  c.birthday_ports = 16;
  c.max_probes = 400;
  c.prime_ttl = pairs[pair][callee ? 1 : 0] == K_OPEN ? 0 : 2;
  c.random = rng_fill;
  c.random_user = r;
  c.self_observed = public_ip(!callee);
  c.peer_observed = public_ip(callee);
  return c;
}

/* Addresses a hostile candidate set may name. */
static np_addr table_addr(uint8_t sel, bool callee) {
  static const char *const ips[] = {
      NULL, /* the peer's own public IP */
      NULL, /* ours */
      "198.51.100.77:1", "127.0.0.1:1",   "0.0.0.0:1",   "255.255.255.255:1", "224.0.0.1:1",
      "169.254.1.1:1",   "10.1.0.3:1",    "10.2.0.3:1",  "192.168.1.1:1",     "100.64.0.9:1",
      "[2001:db8::1]:1", "[fe80::1]:1",   "[::1]:1",     "[::ffff:198.51.100.77]:1",
  };
  uint8_t i = (uint8_t)(sel % (sizeof ips / sizeof ips[0]));
  if (i == 0)
    return public_ip(callee);
  if (i == 1)
    return public_ip(!callee);
  return addr(ips[i]);
}


/* ---- invariants ------------------------------------------------------------- */

/* RFC 1918, 100.64/10, fc00::/7: where a shared LAN can be. */
static bool private_space(const np_addr *a) {
  if (a->u.sa.sa_family == AF_INET) {
    const uint8_t *b = (const uint8_t *)&a->u.in4.sin_addr.s_addr;
    return b[0] == 10 || (b[0] == 172 && (b[1] & 0xF0) == 16) || (b[0] == 192 && b[1] == 168) ||
           (b[0] == 100 && (b[1] & 0xC0) == 64);
  }
  return (a->u.in6.sin6_addr.s6_addr[0] & 0xFE) == 0xFC;
}

/* The aiming rule, from outside the machine: only the peer's OBSERVED IP,
 * or private space when both sides showed the server the same IP. */
static void check_aim(const np_punch_config *c, const np_addr *to) {
  if (np__addr_is_set(&c->peer_observed) && np_addr_same_ip(to, &c->peer_observed))
    return;
  bool same = np__addr_is_set(&c->peer_observed) && np__addr_is_set(&c->self_observed) &&
              np_addr_same_ip(&c->peer_observed, &c->self_observed);
  if (!same || !private_space(to)) {
    char t[NP_ADDRSTRLEN];
    fprintf(stderr, "datagram to %s, not where the peer can be\n",
            np_addr_format(to, t, sizeof t));
    CHECK(0);
  }
}

static void check_datagram(const np_punch_datagram *dg) {
  CHECK(dg->sock >= 0 && dg->sock < NP_PUNCH_MAX_SOCKETS);
  CHECK(dg->len >= NP_STUN_HEADER_LEN && dg->len <= NP_PUNCH_MAX_DATAGRAM);
  CHECK(dg->ttl >= 0 && dg->ttl <= 255);
  CHECK(np__addr_is_set(&dg->to));
  np_stun_msg m;
  CHECK(np__stun_read(dg->buf, dg->len, &m) == 0);
  CHECK(m.method == NP_STUN_BINDING && !m.rfc3489);
  CHECK(m.present & NP_STUN_HAS_FINGERPRINT);
  CHECK(np__stun_check_integrity_sha256(dg->buf, dg->len, &m, fuzz_key, NP_PUNCH_KEY_LEN) == 0);
}

static void check_result(const np_punch *p) {
  np_punch_result r;
  np__punch_result_get(p, &r);
  CHECK(r.state == NP_PUNCH_RUNNING || r.state == NP_PUNCH_CONNECTED || r.state == NP_PUNCH_FAILED);
  CHECK(r.sockets >= 1 && r.sockets <= NP_PUNCH_MAX_SOCKETS);
  CHECK(np__punch_sockets(p) == r.sockets);
  CHECK(r.probes_sent <= 400 + 64); /* the budget, plus a nomination in flight */
  CHECK(memchr(r.reason, '\0', sizeof r.reason) != NULL);
  if (r.state == NP_PUNCH_CONNECTED) {
    CHECK(r.sock >= 0 && r.sock < r.sockets);
    CHECK(np__addr_is_set(&r.remote));
    CHECK(r.via >= NP_VIA_NONE && r.via <= NP_VIA_BIRTHDAY);
    CHECK(r.elapsed_ms >= 0);
  } else if (r.state == NP_PUNCH_FAILED) {
    CHECK(r.error < 0 && r.reason[0] != '\0');
  }
}

/* ---- the machine under test --------------------------------------------------- */

struct harness {
  np_punch *p;
  np_punch_config cfg; /* as the machine was made, for check_aim() */
  struct rng rng;
  int64_t now;
  bool have_last; /* the last request the machine sent, for "answer" */
  np_punch_datagram last;
  np_addr peer_addrs[4]; /* where datagrams "come from" */
};

static void drain(struct harness *h) {
  np_punch_datagram dg;
  int stale = 0;
  for (int i = 0; i < MAX_DRAIN; i++) {
    if (np__punch_next(h->p, h->now, &dg)) {
      check_datagram(&dg);
      check_aim(&h->cfg, &dg.to);
      if (((dg.buf[0] << 8 | dg.buf[1]) & 0x0110) == NP_STUN_REQUEST) {
        h->last = dg;
        h->have_last = true;
      }
      continue;
    }
    np_punch_result r;
    np__punch_result_get(h->p, &r);
    if (r.state != NP_PUNCH_RUNNING || np__punch_wakeup(h->p) > h->now)
      break;
    /* Nothing due, yet a wakeup not in the future: tolerated once (a round
     * held back by a nomination that just gave up starts on the next call),
     * never twice, which would make an agent spin. */
    CHECK(++stale <= 1);
  }
  check_result(h->p);
}

static void advance(struct harness *h, int64_t ms) {
  /* Step through the wakeups, as an agent would, but never past the target. */
  int64_t until = h->now + ms;
  for (int i = 0; i < 100000 && h->now < until; i++) {
    drain(h);
    int64_t w = np__punch_wakeup(h->p);
    h->now = w > h->now && w < until ? w : until;
  }
  drain(h);
}

/* Plays a whole exchange between the machine and a second one (the other
 * role, same pair) with no NAT in between, until both are connected: a
 * machine in its connected state, reached honestly. Addresses are the
 * signalled ones, so every datagram is delivered as-is. */
static void connect_through_peer(struct harness *h, unsigned pair, bool callee) {
  struct rng prng = {0x5EED0000ull + pair};
  np_punch_config pc = config(pair, !callee, &prng);
  np_punch *peer;
  CHECK(np__punch_new(&pc, h->now, &peer) == 0);
  np_sig_candidates self =
      callee ? side_cands(pairs[pair][1], false) : side_cands(pairs[pair][0], true);
  np_sig_candidates other =
      callee ? side_cands(pairs[pair][0], true) : side_cands(pairs[pair][1], false);
  for (int step = 0; step < 3000; step++) {
    np_punch_datagram dg;
    for (int i = 0; i < MAX_DRAIN && np__punch_next(h->p, h->now, &dg); i++) {
      check_datagram(&dg);
      check_aim(&h->cfg, &dg.to);
      if (dg.ttl == 0)
        (void)np__punch_input(peer, h->now, dg.sock, &self.mapped[0], dg.buf, dg.len);
    }
    for (int i = 0; i < MAX_DRAIN && np__punch_next(peer, h->now, &dg); i++)
      if (dg.ttl == 0 && dg.sock == 0)
        (void)np__punch_input(h->p, h->now, 0, &other.mapped[0], dg.buf, dg.len);
    np_punch_result a, b;
    np__punch_result_get(h->p, &a);
    np__punch_result_get(peer, &b);
    if (a.state != NP_PUNCH_RUNNING && b.state != NP_PUNCH_RUNNING)
      break;
    h->now += 5;
  }
  np__punch_free(peer);
  check_result(h->p);
}

/* ---- records ---------------------------------------------------------------- */

struct reader {
  const uint8_t *d;
  size_t n, off;
};

static uint8_t u8(struct reader *r) {
  return r->off < r->n ? r->d[r->off++] : 0;
}

static size_t take(struct reader *r, size_t want, const uint8_t **p) {
  size_t left = r->n - r->off;
  size_t got = want < left ? want : left;
  *p = r->d + r->off;
  r->off += got;
  return got;
}

/* The peer's candidates and the OBSERVED addresses, from the input. */
static void fuzzed_config(np_punch_config *c, bool callee, struct reader *r) {
  uint8_t flags = u8(r);
  int8_t delta = (int8_t)u8(r);
  memset(&c->peer, 0, sizeof c->peer);
  c->peer.have_delta = delta != 0;
  c->peer.delta = delta;
  int np = flags & 3, nm = (flags >> 2) & 3;
  if (nm > NP_SIG_MAX_MAPPED)
    nm = NP_SIG_MAX_MAPPED;
  for (int i = 0; i < np; i++) {
    c->peer.private_addrs[i] = table_addr(u8(r), callee);
    np_addr_set_port(&c->peer.private_addrs[i], (uint16_t)(u8(r) * 257u));
  }
  c->peer.n_private = np;
  for (int i = 0; i < nm; i++) {
    c->peer.mapped[i] = table_addr(u8(r), callee);
    np_addr_set_port(&c->peer.mapped[i], (uint16_t)(u8(r) * 257u));
  }
  c->peer.n_mapped = nm;
  if (flags & 0x10) {
    c->peer.portmap = table_addr(u8(r), callee);
    np_addr_set_port(&c->peer.portmap, (uint16_t)(u8(r) * 257u));
  }
  if (flags & 0x20)
    memset(&c->peer_observed, 0, sizeof c->peer_observed);
  if (flags & 0x40)
    c->self_observed = c->peer_observed;
  if (flags & 0x80)
    memset(&c->self_observed, 0, sizeof c->self_observed);
}

static void feed(struct harness *h, uint8_t sock_sel, uint8_t from_sel, const uint8_t *buf,
                 size_t len) {
  int sock = sock_sel % 4 == 3 ? sock_sel % 10 : 0; /* mostly socket 0, some birthday ones */
  np_addr from = h->peer_addrs[from_sel % 4];
  if (from_sel & 0x80)
    np_addr_set_port(&from, (uint16_t)(from_sel * 257u)); /* a sprayed or predicted port */
  (void)np__punch_input(h->p, h->now, sock, &from, buf, len);
  drain(h);
}

static void op_raw(struct harness *h, struct reader *r) {
  uint8_t sock = u8(r), from = u8(r);
  size_t want = (size_t)u8(r) << 8;
  want |= u8(r);
  const uint8_t *p;
  size_t got = take(r, want, &p);
  /* An exact-size copy, so a read past the datagram is caught. */
  uint8_t *copy = malloc(got ? got : 1);
  CHECK(copy != NULL);
  if (got)
    memcpy(copy, p, got);
  feed(h, sock, from, copy, got);
  free(copy);
}

/* A message signed with the session key around fuzzer-chosen content. */
static void op_forged(struct harness *h, struct reader *r) {
  static const uint16_t classes[] = {NP_STUN_REQUEST, NP_STUN_INDICATION, NP_STUN_SUCCESS,
                                     NP_STUN_ERROR};
  uint8_t cls = u8(r), user = u8(r), trunc = u8(r), sock = u8(r), from = u8(r);
  uint8_t txid[NP_STUN_TXID_LEN];
  for (size_t i = 0; i < sizeof txid; i++)
    txid[i] = u8(r);
  /* Half the time, the transaction of the machine's last request: a
   * response to it is then matched against a real target. */
  if ((cls & 0x10) && h->have_last)
    memcpy(txid, h->last.buf + 8, NP_STUN_TXID_LEN);
  uint8_t buf[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  np__stun_writer_init(&w, buf, sizeof buf, (uint16_t)(NP_STUN_BINDING | classes[cls % 4]),
                      NP_STUN_MAGIC_COOKIE, txid);
  /* The caller's ('c') or the callee's ('a') name; the machine takes only
   * its peer's, so the other one is a reflection. */
  char name[64] = "natpunch:";
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < NP_SIG_SESSION_LEN; i++) {
    name[9 + 2 * i] = digits[fuzz_session[i] >> 4];
    name[10 + 2 * i] = digits[fuzz_session[i] & 15];
  }
  snprintf(name + 9 + 2 * NP_SIG_SESSION_LEN, sizeof name - 9 - 2 * NP_SIG_SESSION_LEN, ":%c",
           user % 3 == 0 ? 'a' : 'c');
  if (user % 3 != 2)
    np__stun_put_bytes(&w, NP_STUN_ATTR_USERNAME, name, strlen(name));
  int nattrs = u8(r) % (MAX_FORGED_ATTRS + 1);
  for (int i = 0; i < nattrs; i++) {
    uint16_t type = (uint16_t)(u8(r) << 8);
    type |= u8(r);
    const uint8_t *v;
    size_t len = take(r, u8(r), &v);
    if ((type & 0x00FF) == 0xFE)
      type = (type & 0x100) ? ATTR_NOMINATE : ATTR_VIA; /* easy to reach */
    np__stun_put_bytes(&w, type, v, len);
  }
  if (!(user & 0x40))
    np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &h->peer_addrs[0]);
  np__stun_put_integrity_sha256(&w, fuzz_key, NP_PUNCH_KEY_LEN, 16 + 4 * (size_t)(trunc % 5));
  if (!(user & 0x80))
    np__stun_put_fingerprint(&w);
  int n = np__stun_writer_finish(&w);
  if (n < 0)
    return; /* the fuzzer's attributes did not fit */
  feed(h, sock, from, buf, (size_t)n);
}

/* A correct answer to the machine's last request, from where it went. */
static void op_answer(struct harness *h, struct reader *r) {
  uint8_t flags = u8(r), via = u8(r);
  if (!h->have_last)
    return;
  np_stun_msg m;
  CHECK(np__stun_read(h->last.buf, h->last.len, &m) == 0);
  uint8_t buf[NP_PUNCH_MAX_DATAGRAM];
  np_stun_writer w;
  np__stun_writer_init(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_SUCCESS, NP_STUN_MAGIC_COOKIE,
                      m.txid);
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &h->peer_addrs[0]);
  if (flags & 1) {
    np__stun_put_bytes(&w, ATTR_NOMINATE, NULL, 0);
    np__stun_put_u32(&w, ATTR_VIA, flags & 2 ? via : via % 6);
  }
  np__stun_put_integrity_sha256(&w, fuzz_key, NP_PUNCH_KEY_LEN, 32);
  np__stun_put_fingerprint(&w);
  int n = np__stun_writer_finish(&w);
  CHECK(n > 0);
  np_addr from = h->last.to;
  if (flags & 4)
    np_addr_set_port(&from, (uint16_t)(np_addr_port(&from) + 1)); /* the wrong pair */
  (void)np__punch_input(h->p, h->now, flags & 8 ? h->last.sock + 1 : h->last.sock, &from, buf,
                       (size_t)n);
  drain(h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct reader r = {data, size, 0};
  uint8_t sel = u8(&r), stage = u8(&r);
  unsigned pair = (unsigned)(sel % NPAIRS);
  bool callee = sel & 0x80;
  struct harness h;
  memset(&h, 0, sizeof h);
  h.rng.s = 0xF022ull + sel;
  h.now = 1000;
  np_punch_config c = config(pair, callee, &h.rng);
  if (sel & 0x40)
    fuzzed_config(&c, callee, &r);
  h.cfg = c;
  CHECK(np__punch_new(&c, h.now, &h.p) == 0);
  check_result(h.p);
  np_sig_candidates peer =
      callee ? side_cands(pairs[pair][0], true) : side_cands(pairs[pair][1], false);
  h.peer_addrs[0] = peer.mapped[0];
  h.peer_addrs[1] = peer.mapped[1];
  h.peer_addrs[2] = peer.private_addrs[0];
  h.peer_addrs[3] = addr("[2001:db8::1]:5000");
  switch (stage % 4) {
  case 1:
    advance(&h, 1200); /* the first prediction round has started */
    break;
  case 2:
    advance(&h, 2500);
    break;
  case 3:
    connect_through_peer(&h, pair, callee);
    break;
  default:
    drain(&h);
    break;
  }
  for (int rec = 0; rec < MAX_RECORDS && r.off < r.n; rec++) {
    switch (u8(&r) % 5) {
    case 0:
      op_raw(&h, &r);
      break;
    case 1:
      op_forged(&h, &r);
      break;
    case 2:
      advance(&h, (int64_t)u8(&r) * 8);
      break;
    case 3:
      op_answer(&h, &r);
      break;
    default:
      np__punch_peer_ready(h.p, h.now);
      drain(&h);
      break;
    }
  }
  if (getenv("FUZZ_PUNCH_DEBUG")) { /* what a reproducer did, for humans */
    np_punch_result res;
    np__punch_result_get(h.p, &res);
    fprintf(stderr, "pair %u %s: state %d via %d rounds %u sent %u received %u sockets %d %s\n",
            pair, callee ? "callee" : "caller", res.state, res.via, res.rounds, res.probes_sent,
            res.probes_received, res.sockets, res.reason);
  }
  np__punch_free(h.p);
  return 0;
}
