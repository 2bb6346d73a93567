/*
 * The hole-punching machine (traversal/punch.h) end to end: a caller and a
 * callee np_punch, each behind a model NAT, joined by a model core. No
 * sockets and no sleeping: the test owns the clock (1 ms steps) and every
 * random number (seeded), so each scenario replays exactly.
 *
 * The NAT model keeps one table of sessions (LAN port, remote address:port,
 * public port):
 *  - open:     no NAT; the host's address is public.
 *  - cone:     endpoint-independent mapping (one public port per LAN port),
 *              address-and-port-dependent filtering (only remotes the host
 *              sent to get in), like a Linux masquerade.
 *  - fullcone: endpoint-independent mapping and filtering.
 *  - seq:      a new public port per new remote address:port, base + delta*n,
 *              address-and-port-dependent filtering.
 *  - random:   a new random public port per remote (seeded), same filter.
 * Any of them may also forward one public port to the host's socket 0 for
 * every remote (a UPnP/NAT-PMP/PCP mapping), offered as the portmap
 * candidate; a reply to a remote that came in that way leaves from it.
 * A "rude" NAT keeps state for an unsolicited inbound packet, so a later
 * outbound packet from the host to that same remote address:port cannot use
 * the public port the packet came in on and gets another one: the Linux
 * conntrack behaviour punch.h primes against.
 *
 * The core: a datagram sent with a TTL (a priming packet) passes the sender's
 * NAT, which makes its mapping and opens its filter, and dies before the
 * peer's NAT; a datagram with the default TTL is delivered after a fixed
 * one-way latency, unless a seeded per-direction loss drops it.
 *
 * The discovery views each side signals are made by sending through its own
 * model NAT to two servers, so they are exactly what an agent would gather.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "stun/stun.h"
#include "traversal/punch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- deterministic randomness ------------------------------------------------ */

struct prng {
  uint64_t s;
};

/* splitmix64: tiny, seedable, good enough to draw ports and keys. */
static uint64_t prng_next(struct prng *r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void prng_fill(void *user, uint8_t *buf, size_t len) {
  struct prng *r = user;
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)prng_next(r);
}

/* ---- the NAT model -------------------------------------------------------------- */

enum nat_kind { NAT_OPEN, NAT_CONE, NAT_FULLCONE, NAT_SEQ, NAT_RANDOM };

#define LOCAL_PORT 5000    /* socket s of a host is LAN port LOCAL_PORT + s */
#define FOREIGN_PORT 60000 /* "another host" on the same NAT, for noise */
#define MAX_SESSIONS 32768
#define MAX_RUDE 32768

struct session {
  uint16_t lport, pub;
  np_addr remote;
};

struct rude_entry {
  uint16_t pub;
  np_addr remote;
};

struct nat {
  enum nat_kind kind;
  bool rude;
  uint16_t next; /* sequential allocator (also the cone's port pool) */
  int delta;
  struct prng rng; /* random allocator */
  struct session *sess;
  int nsess;
  struct rude_entry *rude_e;
  int nrude;
  uint16_t fwd;    /* public port forwarded to LOCAL_PORT (0: none) */
  int unsolicited; /* inbound packets that matched nothing */
  int collisions;  /* outbound mappings moved off a port by rude state */
};

static bool port_in_use(const struct nat *n, uint16_t port) {
  for (int i = 0; i < n->nsess; i++)
    if (n->sess[i].pub == port)
      return true;
  return false;
}

static uint16_t alloc_port(struct nat *n) {
  if (n->kind == NAT_RANDOM) {
    /* Bounded: the table holds far fewer ports than the range. */
    for (int i = 0; i < 1000; i++) {
      uint16_t p = (uint16_t)(1024 + prng_next(&n->rng) % (65536 - 1024));
      if (!port_in_use(n, p))
        return p;
    }
    fail_msg("random NAT: no free port");
  }
  uint16_t p = n->next;
  n->next = (uint16_t)(n->next + n->delta);
  return p;
}

static bool rude_has(const struct nat *n, uint16_t pub, const np_addr *remote) {
  for (int i = 0; i < n->nrude; i++)
    if (n->rude_e[i].pub == pub && np_addr_equal(&n->rude_e[i].remote, remote))
      return true;
  return false;
}

static const struct session *find_session(const struct nat *n, uint16_t lport,
                                          const np_addr *remote) {
  for (int i = 0; i < n->nsess; i++)
    if (n->sess[i].lport == lport && np_addr_equal(&n->sess[i].remote, remote))
      return &n->sess[i];
  return NULL;
}

/* The endpoint-independent port of a LAN port, 0 if it has none yet. */
static uint16_t eim_port(const struct nat *n, uint16_t lport) {
  for (int i = 0; i < n->nsess; i++)
    if (n->sess[i].lport == lport)
      return n->sess[i].pub; /* the first session of the LAN port set it */
  return 0;
}

/* Outbound translation: the public port a datagram from lport to remote
 * leaves with; records the session (mapping + filter entry). */
static uint16_t nat_out(struct nat *n, uint16_t lport, const np_addr *remote) {
  if (n->kind == NAT_OPEN)
    return lport;
  const struct session *s = find_session(n, lport, remote);
  if (s)
    return s->pub;
  uint16_t pub = 0;
  if (n->kind == NAT_CONE || n->kind == NAT_FULLCONE)
    pub = eim_port(n, lport);
  if (pub == 0)
    pub = alloc_port(n);
  /* Conntrack already holds remote -> pub (an unsolicited packet): the
   * reply tuple is taken, so this flow gets another port. */
  for (int i = 0; i < 64 && rude_has(n, pub, remote); i++) {
    pub = alloc_port(n);
    n->collisions++;
  }
  assert_true(n->nsess < MAX_SESSIONS);
  n->sess[n->nsess++] = (struct session){lport, pub, *remote};
  return pub;
}

/* Inbound: the LAN port a datagram from 'from' to public port 'pub' reaches,
 * or false when the NAT drops it. */
static bool nat_in(struct nat *n, uint16_t pub, const np_addr *from, uint16_t *lport) {
  if (n->kind == NAT_OPEN) {
    *lport = pub;
    return true;
  }
  for (int i = 0; i < n->nsess; i++) {
    const struct session *s = &n->sess[i];
    if (s->pub == pub && (n->kind == NAT_FULLCONE || np_addr_equal(&s->remote, from))) {
      *lport = s->lport;
      return true;
    }
  }
  if (n->fwd && pub == n->fwd) {
    /* Like a DNAT rule: the flow gets a session, so replies go out from
     * the forwarded port. */
    assert_true(n->nsess < MAX_SESSIONS);
    n->sess[n->nsess++] = (struct session){LOCAL_PORT, pub, *from};
    *lport = LOCAL_PORT;
    return true;
  }
  n->unsolicited++;
  if (n->rude && !rude_has(n, pub, from)) {
    assert_true(n->nrude < MAX_RUDE);
    n->rude_e[n->nrude++] = (struct rude_entry){pub, *from};
  }
  return false;
}

/* ---- the world -------------------------------------------------------------- */

struct nat_spec {
  enum nat_kind kind;
  bool rude;
  int delta; /* seq: port step (0 = 1) */
  int noise; /* ports a foreign connection takes right after gathering */
  bool portmap; /* the gateway forwards a port to socket 0 */
};

struct scenario {
  struct nat_spec nat[2]; /* [0] caller, [1] callee */
  int signaling_ms;       /* the caller starts this much after the callee */
  int ready_ms;           /* its READY reaches the callee this much later
                             (0: signaling_ms; -1: never) */
  int latency_ms;         /* one way, through the core */
  int loss_pct;           /* per direction, full-TTL datagrams */
  int prime_ttl;          /* -1: 2 behind a NAT, 0 when open */
  int hold_ms;            /* 0: the engine's default */
  int keepalive_ms;       /* 0: the engine's default */
  int linger_ms;          /* keep running this long after both connected */
  int64_t limit_ms;       /* 0: 25 s */
  uint64_t seed;
  /* An attacker who sees the caller's first NOMINATE on the wire and
   * replays it to the callee from 'hijack_from', past the callee's NAT:
   * 1 at once (racing the genuine one), 2 'replay_ms' after both
   * connected. */
  int hijack;
  const char *hijack_from;
  int replay_ms;
};

#define CALLER 0
#define CALLEE 1
#define QCAP 16384

struct side {
  struct nat nat;
  np_addr priv, pub; /* host IP (port LOCAL_PORT), NAT public IP */
  np_sig_candidates cand;
  struct prng rng;
  np_punch *p;
  int64_t start;
  np_punch_result res, at_connect;
  bool connected;
  uint32_t full_at_connect;
  /* what the machine sent */
  uint32_t primes, full, keepalives; /* full: full-TTL requests */
  int64_t keepalive_at[8];
  np_addr keepalive_to;
  int keepalive_sock;
};

struct pkt {
  int64_t at;
  int to_side;
  np_addr from;
  uint16_t to_port;
  size_t len;
  uint8_t buf[NP_PUNCH_MAX_DATAGRAM];
};

struct sim {
  struct scenario sc;
  struct side side[2];
  struct pkt *q;
  size_t qhead, qlen;
  struct prng loss;
  int64_t now;
  int64_t done_at; /* both settled (-1: ran to the limit) */
  uint32_t delivered, lost, primes_dropped;
  uint32_t stale_wakeups; /* wakeups <= now after np__punch_next() gave 0 */
  /* the hijack attempt (scenario.hijack) */
  np_addr attacker;
  bool have_nom, replayed;
  struct pkt nom;         /* the caller's first nomination, as on the wire */
  uint32_t to_attacker;   /* datagrams either machine sent to the attacker */
  bool have_resp;
  struct pkt resp;        /* the first success response the caller took */
};

static np_addr A(const char *s) {
  np_addr a;
  assert_int_equal(np_addr_parse(s, 0, &a), 0);
  return a;
}

static np_addr with_port(np_addr a, uint16_t port) {
  np_addr_set_port(&a, port);
  return a;
}

static void log_stderr(void *user, enum np_log_level level, const char *msg) {
  (void)level;
  fprintf(stderr, "[%s] %s\n", (const char *)user, msg);
}

/* Gathering as the agent does it: socket 0 asks two discovery servers, in
 * order, through the NAT; then the foreign connections of the noise. */
static void gather(struct side *sd, const struct nat_spec *spec) {
  const np_addr s1 = A("198.51.100.1:3478"), s2 = A("198.51.100.2:3478");
  memset(&sd->cand, 0, sizeof sd->cand);
  sd->cand.private_addrs[0] = sd->priv;
  sd->cand.n_private = 1;
  uint16_t p1 = nat_out(&sd->nat, LOCAL_PORT, &s1);
  uint16_t p2 = nat_out(&sd->nat, LOCAL_PORT, &s2);
  sd->cand.mapped[0] = with_port(sd->pub, p1);
  sd->cand.mapped[1] = with_port(sd->pub, p2);
  sd->cand.n_mapped = 2;
  sd->cand.have_delta = true;
  sd->cand.delta = (int32_t)p2 - (int32_t)p1;
  if (sd->nat.fwd)
    sd->cand.portmap = with_port(sd->pub, sd->nat.fwd);
  const np_addr web = A("192.0.2.99:443");
  for (int i = 0; i < spec->noise; i++)
    (void)nat_out(&sd->nat, (uint16_t)(FOREIGN_PORT + i), &web);
}

static void side_init(struct side *sd, int which, const struct nat_spec *spec, uint64_t seed) {
  memset(sd, 0, sizeof *sd);
  struct nat *n = &sd->nat;
  n->kind = spec->kind;
  n->rude = spec->rude;
  n->delta = spec->delta ? spec->delta : 1;
  n->next = which == CALLER ? 31000 : 42000;
  n->fwd = spec->portmap ? (which == CALLER ? 7777 : 8888) : 0;
  n->rng.s = seed ^ (which ? 0xC0FFEEull : 0xBEEFull);
  n->sess = calloc(MAX_SESSIONS, sizeof *n->sess);
  n->rude_e = calloc(MAX_RUDE, sizeof *n->rude_e);
  assert_non_null(n->sess);
  assert_non_null(n->rude_e);
  sd->pub = A(which == CALLER ? "203.0.113.11:1" : "203.0.113.12:1");
  sd->priv = spec->kind == NAT_OPEN ? with_port(sd->pub, LOCAL_PORT)
                                    : A(which == CALLER ? "10.1.0.2:5000" : "10.2.0.2:5000");
  sd->rng.s = seed * 31 + (uint64_t)which + 1;
  gather(sd, spec);
}

static void side_free(struct side *sd) {
  np__punch_free(sd->p);
  free(sd->nat.sess);
  free(sd->nat.rude_e);
}

static void sim_free(struct sim *s) {
  if (!s)
    return;
  side_free(&s->side[0]);
  side_free(&s->side[1]);
  free(s->q);
  free(s);
}

static np_punch_config make_config(struct sim *s, int which, const uint8_t *key,
                                   const uint8_t *session) {
  struct side *sd = &s->side[which];
  np_punch_config c;
  memset(&c, 0, sizeof c);
  c.callee = which == CALLEE;
  memcpy(c.key, key, NP_PUNCH_KEY_LEN);
  memcpy(c.session, session, NP_SIG_SESSION_LEN);
  c.self = sd->cand;
  c.peer = s->side[!which].cand;
  c.hold_ms = s->sc.hold_ms;
  c.keepalive_ms = s->sc.keepalive_ms;
  c.prime_ttl = s->sc.prime_ttl >= 0 ? s->sc.prime_ttl : sd->nat.kind == NAT_OPEN ? 0 : 2;
  c.random = prng_fill;
  c.random_user = &sd->rng;
  /* What a rendezvous server would stamp: each side's public IP (with a
   * TCP port, which the machine ignores). */
  c.self_observed = with_port(sd->pub, 40000);
  c.peer_observed = with_port(s->side[!which].pub, 40001);
  if (getenv("PUNCH_TEST_LOG")) {
    c.log = log_stderr;
    c.log_user = which == CALLER ? "caller" : "callee";
    c.log_level = NP_LOG_DEBUG;
  }
  return c;
}

static int stun_class(const np_punch_datagram *dg) {
  assert_true(dg->len >= NP_STUN_HEADER_LEN);
  return (dg->buf[0] << 8 | dg->buf[1]) & 0x0110;
}

/* A request carrying our NOMINATE attribute (0xC001, punch.c's wire
 * format). */
static bool is_nomination(const np_punch_datagram *dg) {
  if (stun_class(dg) != NP_STUN_REQUEST)
    return false;
  for (size_t off = NP_STUN_HEADER_LEN; off + 4 <= dg->len;) {
    uint16_t type = (uint16_t)(dg->buf[off] << 8 | dg->buf[off + 1]);
    size_t alen = (size_t)(dg->buf[off + 2] << 8 | dg->buf[off + 3]);
    if (type == 0xC001)
      return true;
    off += 4 + ((alen + 3) & ~(size_t)3);
  }
  return false;
}

/* The attacker's copy of the caller's nomination reaches the callee's
 * machine from its own address (past the NAT: a full-cone gateway, or an
 * attacker on the callee's LAN). */
static void replay_nomination(struct sim *s) {
  if (!s->have_nom || !s->side[CALLEE].p)
    return;
  s->replayed = true;
  (void)np__punch_input(s->side[CALLEE].p, s->now, 0, &s->attacker, s->nom.buf, s->nom.len);
}

/* A datagram leaves 'from' side: its NAT translates it, the core routes it. */
static void transmit(struct sim *s, int which, const np_punch_datagram *dg) {
  struct side *sd = &s->side[which];
  assert_true(dg->sock >= 0 && dg->sock < NP_PUNCH_MAX_SOCKETS);
  assert_true(dg->len > 0 && dg->len <= NP_PUNCH_MAX_DATAGRAM);
  if (dg->ttl > 0)
    sd->primes++;
  else if (stun_class(dg) == NP_STUN_INDICATION) {
    if (sd->keepalives < 8)
      sd->keepalive_at[sd->keepalives] = s->now;
    sd->keepalives++;
    sd->keepalive_to = dg->to;
    sd->keepalive_sock = dg->sock;
  } else if (stun_class(dg) == NP_STUN_REQUEST)
    sd->full++;
  if (s->sc.hijack && np_addr_equal(&dg->to, &s->attacker))
    s->to_attacker++;
  uint16_t pub = nat_out(&sd->nat, (uint16_t)(LOCAL_PORT + dg->sock), &dg->to);
  if (dg->ttl > 0) {
    s->primes_dropped++; /* it made our mapping; it dies in the core */
    return;
  }
  int to = !which;
  if (!np_addr_same_ip(&dg->to, &s->side[to].pub))
    return; /* someone else's LAN, or nowhere */
  if (s->sc.loss_pct > 0 && (int)(prng_next(&s->loss) % 100) < s->sc.loss_pct) {
    s->lost++;
    return;
  }
  assert_true(s->qlen < QCAP);
  struct pkt *k = &s->q[(s->qhead + s->qlen++) % QCAP];
  k->at = s->now + s->sc.latency_ms;
  k->to_side = to;
  k->from = with_port(sd->pub, pub);
  k->to_port = np_addr_port(&dg->to);
  k->len = dg->len;
  memcpy(k->buf, dg->buf, dg->len);
  if (s->sc.hijack && which == CALLER && !s->have_nom && is_nomination(dg)) {
    s->nom = *k;
    s->have_nom = true;
    if (s->sc.hijack == 1)
      replay_nomination(s); /* the attacker is closer: it gets there first */
  }
}

/* Delivers what is due; a packet reaching a host whose machine has not
 * started yet is lost (after its NAT saw it: that is what rude NATs keep). */
static void deliver_due(struct sim *s) {
  while (s->qlen > 0 && s->q[s->qhead].at <= s->now) {
    struct pkt *k = &s->q[s->qhead];
    s->qhead = (s->qhead + 1) % QCAP;
    s->qlen--;
    struct side *sd = &s->side[k->to_side];
    uint16_t lport;
    if (!nat_in(&sd->nat, k->to_port, &k->from, &lport) || !sd->p)
      continue;
    int sock = (int)lport - LOCAL_PORT;
    if (sock < 0 || sock >= NP_PUNCH_MAX_SOCKETS)
      continue;
    s->delivered++;
    bool took = np__punch_input(sd->p, s->now, sock, &k->from, k->buf, k->len);
    if (took && k->to_side == CALLER && !s->have_resp && (k->buf[0] << 8 | k->buf[1]) ==
                                                             (NP_STUN_BINDING | NP_STUN_SUCCESS)) {
      s->resp = *k;
      s->resp.to_port = (uint16_t)sock; /* here: the socket it arrived on */
      s->have_resp = true;
    }
  }
}

static bool running(const struct side *sd) {
  if (!sd->p)
    return true;
  np_punch_result r;
  np__punch_result_get(sd->p, &r);
  return r.state == NP_PUNCH_RUNNING;
}

/* Runs a whole session; the caller frees the result with sim_free(). */
static struct sim *run(const struct scenario *sc) {
  struct sim *s = calloc(1, sizeof *s);
  assert_non_null(s);
  s->sc = *sc;
  if (s->sc.limit_ms == 0)
    s->sc.limit_ms = 25000;
  s->q = calloc(QCAP, sizeof *s->q);
  assert_non_null(s->q);
  s->loss.s = sc->seed ^ 0x10551055ull;
  if (sc->hijack)
    s->attacker = A(sc->hijack_from);
  for (int w = 0; w < 2; w++)
    side_init(&s->side[w], w, &sc->nat[w], sc->seed);
  struct prng kr = {sc->seed ^ 0x5EC2E7ull};
  uint8_t key[NP_PUNCH_KEY_LEN], session[NP_SIG_SESSION_LEN];
  prng_fill(&kr, key, sizeof key);
  prng_fill(&kr, session, sizeof session);
  s->side[CALLEE].start = 0;
  s->side[CALLER].start = sc->signaling_ms;
  s->done_at = -1;
  int64_t settle_until = -1;
  for (s->now = 0; s->now <= s->sc.limit_ms; s->now++) {
    for (int w = CALLEE; w >= CALLER; w--) {
      struct side *sd = &s->side[w];
      if (!sd->p && s->now >= sd->start) {
        np_punch_config c = make_config(s, w, key, session);
        assert_int_equal(np__punch_new(&c, s->now, &sd->p), 0);
      }
    }
    int ready = sc->ready_ms ? sc->ready_ms : sc->signaling_ms;
    if (sc->ready_ms >= 0 && s->now == s->side[CALLER].start + ready && s->side[CALLEE].p)
      np__punch_peer_ready(s->side[CALLEE].p, s->now);
    if (sc->hijack == 2 && s->side[CALLEE].connected && s->side[CALLER].connected &&
        !s->replayed && s->now >= s->side[CALLEE].start + s->side[CALLEE].at_connect.elapsed_ms +
                                       sc->replay_ms)
      replay_nomination(s);
    deliver_due(s);
    for (int w = CALLEE; w >= CALLER; w--) {
      struct side *sd = &s->side[w];
      if (!sd->p)
        continue;
      np_punch_datagram dg;
      int sent = 0, stale = 0;
      for (;;) {
        if (np__punch_next(sd->p, s->now, &dg)) {
          transmit(s, w, &dg);
          assert_true(++sent < 4096); /* pacing keeps bursts small */
          continue;
        }
        if (!running(sd) || np__punch_wakeup(sd->p) > s->now)
          break;
        /* np__punch_next() said nothing is due, yet the wakeup is not in the
         * future. Tolerated once (a round deferred by a nomination that
         * just gave up starts on the next call), but the machine must make
         * progress when called again, or an agent would spin. */
        s->stale_wakeups++;
        assert_true(++stale <= 1);
      }
      if (!sd->connected) {
        np__punch_result_get(sd->p, &sd->at_connect);
        if (sd->at_connect.state == NP_PUNCH_CONNECTED) {
          sd->connected = true;
          sd->full_at_connect = sd->full;
        }
      }
    }
    if (s->done_at < 0 && !running(&s->side[0]) && !running(&s->side[1])) {
      s->done_at = s->now;
      settle_until = s->now + sc->linger_ms;
    }
    if (s->done_at >= 0 && s->now >= settle_until)
      break;
  }
  for (int w = 0; w < 2; w++)
    np__punch_result_get(s->side[w].p, &s->side[w].res);
  if (getenv("PUNCH_TEST_LOG"))
    for (int w = 0; w < 2; w++) {
      const np_punch_result *r = &s->side[w].res;
      fprintf(stderr,
              "%s: state %d via %s err %d rounds %u sent %u (primes %u) recv %u sockets %d "
              "elapsed %lld unsolicited %d collisions %d%s%s\n",
              w ? "callee" : "caller", r->state, np_via_name(r->via), r->error, r->rounds,
              r->probes_sent, s->side[w].primes, r->probes_received, r->sockets,
              (long long)r->elapsed_ms, s->side[w].nat.unsolicited, s->side[w].nat.collisions,
              r->reason[0] ? " reason: " : "", r->reason);
    }
  return s;
}

/* The public address side 'w' shows on its socket 'sock' toward 'remote'
 * (the session its NAT made), or an unset address. */
static np_addr public_toward(const struct sim *s, int w, int sock, const np_addr *remote) {
  const struct side *sd = &s->side[w];
  if (sd->nat.kind == NAT_OPEN)
    return with_port(sd->pub, (uint16_t)(LOCAL_PORT + sock));
  const struct session *x = find_session(&sd->nat, (uint16_t)(LOCAL_PORT + sock), remote);
  np_addr none;
  memset(&none, 0, sizeof none);
  return x ? with_port(sd->pub, x->pub) : none;
}

/* Both sides connected on one pair, seen the same way from both ends, and
 * a datagram on it gets through the NATs both ways. */
static void assert_agreed(struct sim *s, enum np_via via) {
  const np_punch_result *rc = &s->side[CALLER].res, *re = &s->side[CALLEE].res;
  assert_int_equal(rc->state, NP_PUNCH_CONNECTED);
  assert_int_equal(re->state, NP_PUNCH_CONNECTED);
  assert_int_equal(rc->via, via);
  assert_int_equal(re->via, via);
  np_addr callee_pub = public_toward(s, CALLEE, re->sock, &re->remote);
  np_addr caller_pub = public_toward(s, CALLER, rc->sock, &rc->remote);
  assert_true(np_addr_equal(&rc->remote, &callee_pub));
  assert_true(np_addr_equal(&re->remote, &caller_pub));
  /* And the path works: each NAT lets the other's datagram in to the
   * nominated socket. */
  uint16_t lport;
  assert_true(nat_in(&s->side[CALLEE].nat, np_addr_port(&rc->remote), &re->remote, &lport));
  assert_int_equal(lport, LOCAL_PORT + re->sock);
  assert_true(nat_in(&s->side[CALLER].nat, np_addr_port(&re->remote), &rc->remote, &lport));
  assert_int_equal(lport, LOCAL_PORT + rc->sock);
}

static void assert_budget(const struct sim *s) {
  for (int w = 0; w < 2; w++)
    assert_true(s->side[w].res.probes_sent <= 6000); /* the default max_probes */
}

static struct scenario pair(enum nat_kind caller, enum nat_kind callee, bool rude) {
  struct scenario sc;
  memset(&sc, 0, sizeof sc);
  sc.nat[CALLER] = (struct nat_spec){caller, rude, 1, 0, false};
  sc.nat[CALLEE] = (struct nat_spec){callee, rude, 1, 0, false};
  sc.signaling_ms = 5;
  sc.latency_ms = 20;
  sc.prime_ttl = -1;
  sc.seed = 1;
  return sc;
}

/* ---- tests ------------------------------------------------------------------- */

/* Two cones, quiet or rude, a short or a long signaling delay: phase 0 wins.
 * The caller primes and probes at once; the callee primed at its start, so
 * the probe gets in; the answer and the triggered check come back; the
 * nomination and its answer take a second round trip. So the caller is
 * connected 2 RTTs (4 one-way latencies) after it starts, the callee one
 * latency earlier (plus the signaling delay, counted from its own start). */
static void cone_cone_phase0(void **state) {
  (void)state;
  const int delays[] = {5, 50};
  for (int rude = 0; rude < 2; rude++) {
    for (int d = 0; d < 2; d++) {
      for (int full = 0; full < 2; full++) {
        enum nat_kind k = full ? NAT_FULLCONE : NAT_CONE;
        struct scenario sc = pair(k, k, rude);
        sc.signaling_ms = delays[d];
        struct sim *s = run(&sc);
        assert_agreed(s, NP_VIA_REFLEXIVE);
        const np_punch_result *rc = &s->side[CALLER].res, *re = &s->side[CALLEE].res;
        assert_int_equal(rc->rounds, 0);
        assert_int_equal(re->rounds, 0);
        assert_int_equal(rc->strategy, NP_PREDICT_NONE);
        /* The caller: one round trip from its first probe (it connects on
         * the first answer and nominates). The callee: when the
         * nomination arrives, half a round trip later. */
        assert_int_equal(rc->elapsed_ms, 2 * sc.latency_ms);
        assert_int_equal(re->elapsed_ms, sc.signaling_ms + 3 * sc.latency_ms);
        assert_int_equal(rc->sockets, 1);
        /* Priming kept the rude NATs from ever dropping a probe of ours on
         * the pair: nothing collided. */
        assert_int_equal(s->side[CALLER].nat.collisions, 0);
        assert_int_equal(s->side[CALLEE].nat.collisions, 0);
        assert_true(s->side[CALLER].primes >= 1 && s->side[CALLEE].primes >= 1);
        /* A handful of probes, not a flood. */
        assert_true(rc->probes_sent <= 8);
        assert_true(re->probes_sent <= 8);
        sim_free(s);
      }
    }
  }
}

/* Priming is what makes a rude pair work. Without it (prime_ttl 0):
 *  - signaling 50 ms: the caller probes at once and its probe reaches the
 *    callee's NAT before the callee (holding hold_ms) sent anything;
 *  - signaling 600 ms (> hold_ms): the callee's probes reach the caller's
 *    NAT before the caller has started.
 * Either way the first probe to arrive makes conntrack state on the
 * receiving NAT, that side's own probes then leave from another port which
 * the peer's filter refuses, and the pair never opens: the session times
 * out. The same rude pair with priming connects in phase 0 (50 ms), and a
 * quiet pair without priming connects too, only after the callee's hold. */
static void rude_needs_priming(void **state) {
  (void)state;
  const int delays[] = {50, 600};
  for (int d = 0; d < 2; d++) {
    struct scenario sc = pair(NAT_CONE, NAT_CONE, true);
    sc.signaling_ms = delays[d];
    sc.prime_ttl = 0;
    struct sim *s = run(&sc);
    for (int w = 0; w < 2; w++) {
      assert_int_equal(s->side[w].res.state, NP_PUNCH_FAILED);
      assert_int_equal(s->side[w].res.error, NP_ERR_TIMEOUT);
      assert_int_equal(s->side[w].primes, 0);
    }
    /* The race was lost where predicted: the side probed first holds the
     * unsolicited-packet state and moved its own mapping. */
    int first = d == 0 ? CALLEE : CALLER;
    assert_true(s->side[first].nat.collisions >= 1);
    sim_free(s);
  }
  /* Quiet NATs forgive the race: the dropped probe leaves no state, and the
   * callee's probe after its hold gets through the caller's open filter. */
  struct scenario sc = pair(NAT_CONE, NAT_CONE, false);
  sc.signaling_ms = 50;
  sc.prime_ttl = 0;
  struct sim *s = run(&sc);
  assert_agreed(s, NP_VIA_REFLEXIVE);
  assert_int_equal(s->side[CALLER].res.rounds, 0);
  assert_true(s->side[CALLEE].res.elapsed_ms >= 400); /* the default hold */
  sim_free(s);
}

/* A signaling path slower than the callee's hold (lost TCP segments of the
 * answer): the callee does not race the caller, whose probe opens the pair
 * whenever it comes. The callee's own probes wait for the caller's READY,
 * or, when none comes, for the fallback (hold + 5 s); a caller later than
 * that without a READY is the limit: the callee's fallback probe reaches
 * the rude caller NAT before the caller has primed and closes the pair. */
static void rude_slow_signaling(void **state) {
  (void)state;
  const int delays[] = {600, 1500, 2300, 4000};
  for (int d = 0; d < 4; d++) {
    for (int ready = 0; ready < 2; ready++) {
      struct scenario sc = pair(NAT_CONE, NAT_CONE, true);
      sc.signaling_ms = delays[d];
      sc.ready_ms = ready ? 0 : -1;
      struct sim *s = run(&sc);
      assert_agreed(s, NP_VIA_REFLEXIVE);
      assert_int_equal(s->side[CALLER].res.elapsed_ms, 2 * sc.latency_ms);
      assert_int_equal(s->side[CALLER].nat.collisions, 0);
      assert_int_equal(s->side[CALLEE].nat.collisions, 0);
      sim_free(s);
    }
  }
  struct scenario sc = pair(NAT_CONE, NAT_CONE, true);
  sc.signaling_ms = 6000;
  sc.ready_ms = -1;
  sc.limit_ms = 30000;
  struct sim *s = run(&sc);
  assert_int_equal(s->side[CALLER].res.state, NP_PUNCH_FAILED);
  assert_int_equal(s->side[CALLEE].res.state, NP_PUNCH_FAILED);
  assert_true(s->side[CALLER].nat.collisions >= 1);
  sim_free(s);
}

/* A sweeping or spraying callee whose answer reached the caller late (2 s,
 * more than predict_after + hold): its first round waits for the caller's
 * READY. Had it swept at predict_after + hold, its packets would have
 * reached the sequential caller's rude NAT before the caller's own packet
 * toward us and taken the ports the NAT was about to give it, round after
 * round; a spray would have hit sockets not yet opened. Without a READY
 * the fallback (5 s; hold + 5 s before prediction started at once) gets
 * there too, later. */
static void prediction_waits_for_ready(void **state) {
  (void)state;
  const enum nat_kind callers[] = {NAT_SEQ, NAT_RANDOM};
  for (int k = 0; k < 2; k++) {
    for (int ready = 0; ready < 2; ready++) {
      struct scenario sc = pair(callers[k], NAT_CONE, true);
      sc.signaling_ms = 2000;
      sc.ready_ms = ready ? 50 : -1;
      struct sim *s = run(&sc);
      assert_agreed(s, callers[k] == NAT_SEQ ? NP_VIA_PREDICTED : NP_VIA_BIRTHDAY);
      if (callers[k] == NAT_SEQ) /* (a spray lands on unrelated ports too) */
        assert_int_equal(s->side[CALLER].nat.collisions, 0);
      const np_punch_result *re = &s->side[CALLEE].res;
      if (ready)
        assert_true(re->elapsed_ms < 2000 + 50 + (callers[k] == NAT_SEQ ? 500 : 1500));
      else
        assert_true(re->elapsed_ms >= 5000);
      assert_budget(s);
      sim_free(s);
    }
  }
}

/* Sequential against endpoint-independent, both directions: the cone side
 * sweeps the sequential side's predicted port, the sequential side holds
 * its one mapping toward the cone's port open. */
static void symmetric_cone(void **state) {
  (void)state;
  for (int dir = 0; dir < 2; dir++) {
    for (int rude = 0; rude < 2; rude++) {
      struct scenario sc = dir == 0 ? pair(NAT_SEQ, NAT_CONE, rude) : pair(NAT_CONE, NAT_SEQ, rude);
      sc.nat[dir == 0 ? CALLER : CALLEE].delta = 2;
      struct sim *s = run(&sc);
      assert_agreed(s, NP_VIA_PREDICTED);
      int seq = dir == 0 ? CALLER : CALLEE;
      assert_int_equal(s->side[seq].res.strategy, NP_PREDICT_HOLD);
      assert_int_equal(s->side[!seq].res.strategy, NP_PREDICT_SWEEP);
      /* The first prediction round found it, and it started at once: offer
       * and answer already said the pair needs prediction, so nothing
       * waits predict_after (1000 ms) for the direct candidates. */
      assert_int_equal(s->side[!seq].res.rounds, 1);
      assert_true(s->side[CALLER].res.elapsed_ms < 300); /* was >= 1000 */
      assert_budget(s);
      sim_free(s);
    }
  }
}

/* Both sequential: LOCKSTEP. Exact estimates meet in round 1; one extra
 * port taken on either side right before the session shifts the two
 * sequences by one, which the callee's round-2 shift (+1) realigns. */
static void symmetric_symmetric(void **state) {
  (void)state;
  struct {
    int noise_caller, noise_callee;
    uint32_t rounds;
  } cases[] = {{0, 0, 1}, {1, 0, 2}, {0, 1, 2}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    for (int rude = 0; rude < 2; rude++) {
      struct scenario sc = pair(NAT_SEQ, NAT_SEQ, rude);
      sc.nat[CALLER].delta = 1;
      sc.nat[CALLEE].delta = 3;
      sc.nat[CALLER].noise = cases[i].noise_caller;
      sc.nat[CALLEE].noise = cases[i].noise_callee;
      struct sim *s = run(&sc);
      assert_agreed(s, NP_VIA_PREDICTED);
      assert_int_equal(s->side[CALLER].res.strategy, NP_PREDICT_LOCKSTEP);
      assert_int_equal(s->side[CALLEE].res.strategy, NP_PREDICT_LOCKSTEP);
      assert_int_equal(s->side[CALLER].res.rounds, cases[i].rounds);
      assert_int_equal(s->side[CALLEE].res.rounds, cases[i].rounds);
      assert_budget(s);
      sim_free(s);
    }
  }
}

/* Lockstep between rude NATs when the answer is slow to reach the caller
 * (600 ms, 1.5 s: a lost segment or two of the signaling): the callee's
 * rounds run that much ahead of the caller's. Had the callee sent full-TTL
 * probes after its hold, they would reach the caller's NAT before the
 * caller's own packets of the round, each first one moving the caller's
 * sequence by a port, round after round, beyond what the shifts realign.
 * The callee only primes and answers, so round 1 still lands. */
static void lockstep_slow_signaling(void **state) {
  (void)state;
  const int delays[] = {600, 1500};
  for (int d = 0; d < 2; d++) {
    struct scenario sc = pair(NAT_SEQ, NAT_SEQ, true);
    sc.signaling_ms = delays[d];
    struct sim *s = run(&sc);
    assert_agreed(s, NP_VIA_PREDICTED);
    assert_int_equal(s->side[CALLER].res.rounds, 1);
    assert_int_equal(s->side[CALLER].nat.collisions, 0);
    sim_free(s);
  }
}

/* Two ports of noise on either NAT: the rounds' shifts (0, +1, -1, +2) must
 * realign the two sequences in round 4. This failed before LOCKSTEP rounds
 * had spacers: a callee window reaching back into the previous round reused
 * mappings, so the effective shifts were 0, 1, 1, 4... and never 2. */
static void lockstep_noise_two(void **state) {
  (void)state;
  for (int side = 0; side < 2; side++) {
    struct scenario sc = pair(NAT_SEQ, NAT_SEQ, false);
    sc.nat[side].noise = 2;
    struct sim *s = run(&sc);
    /* predict.h: the shift of round 4 is +2. */
    assert_agreed(s, NP_VIA_PREDICTED);
    assert_int_equal(s->side[CALLER].res.rounds, 4);
    sim_free(s);
  }
}

/* Random ports against a cone, both directions: the birthday method (many
 * sockets on the random side, many random ports from the cone side). */
static void random_cone(void **state) {
  (void)state;
  for (int dir = 0; dir < 2; dir++) {
    for (int rude = 0; rude < 2; rude++) {
      struct scenario sc =
          dir == 0 ? pair(NAT_RANDOM, NAT_CONE, rude) : pair(NAT_CONE, NAT_RANDOM, rude);
      struct sim *s = run(&sc);
      assert_agreed(s, NP_VIA_BIRTHDAY);
      int rnd = dir == 0 ? CALLER : CALLEE;
      assert_int_equal(s->side[rnd].res.strategy, NP_PREDICT_SOCKETS);
      assert_int_equal(s->side[!rnd].res.strategy, NP_PREDICT_SPRAY);
      assert_true(s->side[rnd].res.sock > 0); /* one of the birthday sockets */
      assert_true(s->side[rnd].res.sockets > 1);
      assert_int_equal(s->side[!rnd].res.sock, 0);
      assert_budget(s);
      sim_free(s);
    }
  }
}

/* A port mapping on a cone connects it to a symmetric NAT in phase 0, even
 * a random one (which nothing else connects to a cone this fast): the
 * symmetric side probes the mapping at once, and both ends call the pair
 * "portmap", although the mapped side only sees a peer-reflexive address
 * and its strategy (sweep, spray) would otherwise name it. (Against a cone
 * the mapped reflexive port works as well and may win.) */
static void portmap_symmetric(void **state) {
  (void)state;
  const enum nat_kind kinds[] = {NAT_SEQ, NAT_RANDOM};
  for (int mapped = 0; mapped < 2; mapped++) {
    for (int k = 0; k < 2; k++) {
      for (int rude = 0; rude < 2; rude++) {
        struct scenario sc = pair(NAT_CONE, kinds[k], rude);
        if (mapped == CALLEE) {
          sc.nat[CALLEE] = (struct nat_spec){NAT_CONE, rude, 1, 0, true};
          sc.nat[CALLER] = (struct nat_spec){kinds[k], rude, 1, 0, false};
        } else {
          sc.nat[CALLER].portmap = true;
        }
        struct sim *s = run(&sc);
        assert_agreed(s, NP_VIA_PORTMAP);
        for (int w = 0; w < 2; w++) {
          assert_int_equal(s->side[w].res.rounds, 0);
          assert_true(s->side[w].res.elapsed_ms < 1000); /* before predict_after */
        }
        /* The pair is the mapped port itself. */
        const np_punch_result *facing = &s->side[!mapped].res;
        assert_true(np_addr_equal(&facing->remote, &s->side[mapped].cand.portmap));
        sim_free(s);
      }
    }
  }
}

/* Random against sequential: nobody can predict anybody; both sides give up
 * cleanly when prediction would start, with the unreachable error. */
static void random_symmetric(void **state) {
  (void)state;
  for (int dir = 0; dir < 2; dir++) {
    struct scenario sc =
        dir == 0 ? pair(NAT_RANDOM, NAT_SEQ, true) : pair(NAT_SEQ, NAT_RANDOM, true);
    struct sim *s = run(&sc);
    for (int w = 0; w < 2; w++) {
      const np_punch_result *r = &s->side[w].res;
      assert_int_equal(r->state, NP_PUNCH_FAILED);
      assert_int_equal(r->error, NP_ERR_UNREACHABLE);
      assert_int_equal(r->strategy, NP_PREDICT_IMPOSSIBLE);
      assert_true(r->reason[0] != '\0');
    }
    /* Right at predict_after (1000 ms after each start). */
    assert_int_equal(s->done_at, sc.signaling_ms + 1000);
    sim_free(s);
  }
}

/* A host with no NAT against every kind, both directions: the NATed side's
 * probe goes straight to the open host, whose answer comes back through the
 * NATed side's fresh mapping. */
static void open_anything(void **state) {
  (void)state;
  const enum nat_kind kinds[] = {NAT_OPEN, NAT_CONE, NAT_FULLCONE, NAT_SEQ, NAT_RANDOM};
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    for (int dir = 0; dir < 2; dir++) {
      struct scenario sc =
          dir == 0 ? pair(NAT_OPEN, kinds[k], true) : pair(kinds[k], NAT_OPEN, true);
      struct sim *s = run(&sc);
      assert_agreed(s, NP_VIA_REFLEXIVE);
      assert_int_equal(s->side[CALLER].res.rounds, 0);
      assert_int_equal(s->side[CALLEE].res.rounds, 0);
      /* One round trip from the first probe that got through; when the
       * open side is the caller, that may be the callee's, sent at its
       * start, before the caller started. */
      assert_true(s->side[CALLER].res.elapsed_ms <= 3 * sc.latency_ms);
      sim_free(s);
    }
  }
}

/* 10% loss each way: retransmissions carry cone-cone and symmetric-cone
 * through, over several loss patterns. */
static void lossy(void **state) {
  (void)state;
  long lost = 0;
  for (uint64_t seed = 1; seed <= 8; seed++) {
    struct scenario sc = pair(NAT_CONE, NAT_CONE, true);
    sc.loss_pct = 10;
    sc.seed = seed;
    struct sim *s = run(&sc);
    lost += s->lost;
    assert_agreed(s, NP_VIA_REFLEXIVE);
    sim_free(s);

    sc = pair(NAT_SEQ, NAT_CONE, true);
    sc.loss_pct = 10;
    sc.seed = seed;
    s = run(&sc);
    assert_agreed(s, NP_VIA_PREDICTED);
    sim_free(s);

    sc = pair(NAT_CONE, NAT_SEQ, true);
    sc.loss_pct = 10;
    sc.seed = seed;
    s = run(&sc);
    assert_agreed(s, NP_VIA_PREDICTED);
    sim_free(s);
  }
  assert_true(lost > 0); /* the loss really happened */
}

/* Once connected, probing stops and authenticated indications keep the
 * mapping: one every keepalive_ms on the nominated pair, from both sides. */
static void keepalives(void **state) {
  (void)state;
  struct scenario sc = pair(NAT_SEQ, NAT_CONE, true);
  sc.keepalive_ms = 2000;
  sc.linger_ms = 4500;
  struct sim *s = run(&sc);
  assert_agreed(s, NP_VIA_PREDICTED);
  for (int w = 0; w < 2; w++) {
    const struct side *sd = &s->side[w];
    int64_t connected = sd->start + sd->res.elapsed_ms;
    assert_int_equal(sd->keepalives, 2);
    assert_int_equal(sd->keepalive_at[0], connected + 2000);
    assert_int_equal(sd->keepalive_at[1], connected + 4000);
    assert_true(np_addr_equal(&sd->keepalive_to, &sd->res.remote));
    assert_int_equal(sd->keepalive_sock, sd->res.sock);
    /* Probing stopped: no probe after the connection (answers to the
     * peer's last checks are not probes). */
    assert_int_equal(sd->res.state, NP_PUNCH_CONNECTED);
    assert_int_equal(sd->res.probes_sent, sd->at_connect.probes_sent);
    assert_int_equal(sd->full, sd->full_at_connect);
  }
  sim_free(s);
}

/* Input that must not steer a session: a probe under another key (a stale
 * session, a forger), our own probe reflected back, a truncated probe,
 * and a non-STUN datagram. The genuine probe is taken. */
static void refused_input(void **state) {
  (void)state;
  struct scenario sc = pair(NAT_CONE, NAT_CONE, false);
  struct sim *s = run(&sc); /* only for the candidates */
  uint8_t key[NP_PUNCH_KEY_LEN], session[NP_SIG_SESSION_LEN];
  memset(key, 0x42, sizeof key);
  memset(session, 0x17, sizeof session);
  np_punch_config cc = make_config(s, CALLER, key, session);
  np_punch_config ce = make_config(s, CALLEE, key, session);
  np_punch_config forged = cc;
  forged.key[0] ^= 1;
  np_punch *caller, *callee, *forger;
  assert_int_equal(np__punch_new(&cc, 0, &caller), 0);
  assert_int_equal(np__punch_new(&ce, 0, &callee), 0);
  assert_int_equal(np__punch_new(&forged, 0, &forger), 0);
  np_punch_datagram dg, bad;
  /* The caller's first datagram is its prime; it is a complete probe. */
  assert_int_equal(np__punch_next(caller, 0, &dg), 1);
  assert_int_equal(np__punch_next(forger, 0, &bad), 1);
  np_addr from = s->side[CALLER].cand.mapped[0];
  np_addr self = s->side[CALLEE].cand.mapped[0];
  assert_false(np__punch_input(callee, 1, 0, &from, bad.buf, bad.len));
  assert_false(np__punch_input(caller, 1, 0, &self, dg.buf, dg.len)); /* reflected */
  assert_false(np__punch_input(callee, 1, 0, &from, dg.buf, dg.len - 4));
  static const uint8_t junk[] = "hello, not STUN at all..";
  assert_false(np__punch_input(callee, 1, 0, &from, junk, sizeof junk - 1));
  np_punch_result r;
  np__punch_result_get(callee, &r);
  assert_int_equal(r.probes_received, 0);
  /* A flipped bit anywhere the integrity covers (everything but the 8-byte
   * FINGERPRINT) is refused too. (Flipping the FINGERPRINT's type makes it
   * an unknown optional attribute after the integrity, which RFC 8489 says
   * to ignore: harmless, the covered bytes are intact.) */
  for (size_t i = 0; i + 8 < dg.len; i++) {
    uint8_t copy[NP_PUNCH_MAX_DATAGRAM];
    memcpy(copy, dg.buf, dg.len);
    copy[i] ^= 0x20;
    if (np__punch_input(callee, 1, 0, &from, copy, dg.len))
      fail_msg("flipped byte %zu of %zu accepted", i, dg.len);
  }
  assert_true(np__punch_input(callee, 1, 0, &from, dg.buf, dg.len));
  np__punch_result_get(callee, &r);
  assert_int_equal(r.probes_received, 1);
  np__punch_free(caller);
  np__punch_free(callee);
  np__punch_free(forger);
  sim_free(s);
}

/* ==== flat segment (punch.h "Flat segment") ====================================
 * A world of its own, so that the model above stays as it is: two NATs on
 * one segment with no router between them, and Linux conntrack's timing.
 *  - Every entry expires FLAT_CT_MS after the last packet that matched it
 *    (an unreplied UDP entry's 30 s; a replied one lives longer, which the
 *    test does not need).
 *  - A packet sent with TTL t leaves our NAT when t >= 2 and then reaches
 *    the peer's NAT with t - 1 >= 1: nothing dies in between. With t = 1 it
 *    dies in our own NAT, which renews a matching entry first (conntrack
 *    runs before the TTL check) but creates none.
 *  - Inbound: a packet matching a mapping gets in (to be forwarded it needs
 *    TTL >= 2 on arrival; the entry is renewed either way); a full-cone NAT
 *    lets in anything to a mapped port, an address-dependent one anything
 *    from an IP the mapping has sent to (a forwarded packet makes a mapping
 *    of its own, one that dies in forwarding makes none); anything else is
 *    rude state (remote -> public port) for FLAT_CT_MS, renewed by every
 *    later packet from that remote, and a mapping toward that remote cannot
 *    take that port (it gets another one). */
#define FLAT_CT_MS 30000
#define FLAT_MAX_E 256
#define FLAT_LAT_MS 5

enum flat_kind { FLAT_CONE, FLAT_ADDR, FLAT_FULL };

struct flat_entry {
  bool rude;
  uint16_t lport, pub;
  np_addr remote;
  int64_t expires;
};

struct flat_nat {
  enum flat_kind kind;
  struct flat_entry e[FLAT_MAX_E];
  int n;
  uint16_t next_port; /* for a mapping that must move */
  int clashes;
};

struct flat_side {
  struct flat_nat nat;
  np_addr pub;
  np_sig_candidates cand;
  struct prng rng;
  np_punch *p;
  int64_t start;
  np_punch_result res;
  /* what the machine sent, in order */
  int64_t first_rx;                       /* first datagram delivered to it (-1: none) */
  int64_t last_full_req;                  /* last full-TTL request before first_rx */
  int64_t waiter_gap_from, waiter_gap_to; /* caller: longest silence toward the peer */
  int64_t last_tx;
  int short_ttl[8];  /* counts of TTL-limited datagrams by TTL */
  uint16_t path_pub; /* caller: the public port its probes left with at the end */
};

struct flat_world {
  struct flat_side s[2];
  struct {
    int64_t at;
    int to;
    np_addr from;
    uint16_t port;
    int ttl;
    size_t len;
    uint8_t buf[NP_PUNCH_MAX_DATAGRAM];
  } q[512];
  int nq;
  int64_t now;
};

static struct flat_entry *flat_live(struct flat_nat *n, bool rude, uint16_t pub,
                                    const np_addr *remote, bool by_ip, int64_t now) {
  for (int i = 0; i < n->n; i++) {
    struct flat_entry *e = &n->e[i];
    if (e->expires <= now || e->rude != rude || (pub && e->pub != pub))
      continue;
    if (!remote ||
        (by_ip ? np_addr_same_ip(&e->remote, remote) : np_addr_equal(&e->remote, remote)))
      return e;
  }
  return NULL;
}

static struct flat_entry *flat_add(struct flat_nat *n, bool rude, uint16_t lport, uint16_t pub,
                                   const np_addr *remote, int64_t now) {
  for (int i = 0; i < n->n; i++)
    if (n->e[i].expires <= now) { /* reuse a dead slot */
      n->e[i] = (struct flat_entry){rude, lport, pub, *remote, now + FLAT_CT_MS};
      return &n->e[i];
    }
  assert_true(n->n < FLAT_MAX_E);
  n->e[n->n] = (struct flat_entry){rude, lport, pub, *remote, now + FLAT_CT_MS};
  return &n->e[n->n++];
}

/* Outbound: returns the public port, or 0 when the packet dies in our NAT. */
static uint16_t flat_out(struct flat_nat *n, uint16_t lport, const np_addr *remote, int ttl,
                         int64_t now) {
  for (int i = 0; i < n->n; i++) {
    struct flat_entry *e = &n->e[i];
    if (!e->rude && e->expires > now && e->lport == lport && np_addr_equal(&e->remote, remote)) {
      e->expires = now + FLAT_CT_MS;
      return ttl == 1 ? 0 : e->pub;
    }
  }
  if (ttl == 1)
    return 0;           /* an unconfirmed entry: gone with the packet */
  uint16_t pub = lport; /* port-preserving */
  if (flat_live(n, true, pub, remote, false, now)) {
    pub = n->next_port++;
    n->clashes++;
  }
  flat_add(n, false, lport, pub, remote, now);
  return pub;
}

/* Inbound: true and *lport when the packet reaches the host. */
static bool flat_in(struct flat_nat *n, uint16_t pub, const np_addr *from, int ttl, int64_t now,
                    uint16_t *lport) {
  struct flat_entry *e = flat_live(n, false, pub, from, false, now);
  if (e) {
    e->expires = now + FLAT_CT_MS;
    *lport = e->lport;
    return ttl >= 2;
  }
  if (n->kind != FLAT_CONE) {
    e = flat_live(n, false, pub, n->kind == FLAT_ADDR ? from : NULL, true, now);
    if (e) {
      if (ttl < 2)
        return false; /* dies in forwarding, before the entry is confirmed */
      *lport = e->lport;
      flat_add(n, false, e->lport, pub, from, now);
      return true;
    }
  }
  e = flat_live(n, true, pub, from, false, now);
  if (e)
    e->expires = now + FLAT_CT_MS;
  else
    flat_add(n, true, 0, pub, from, now);
  return false;
}

static void flat_side_init(struct flat_side *sd, int which, enum flat_kind kind, bool flag) {
  memset(sd, 0, sizeof *sd);
  sd->nat.kind = kind;
  sd->nat.next_port = 40000;
  sd->pub = A(which == CALLER ? "203.0.113.11:5000" : "203.0.113.12:5000");
  sd->cand.private_addrs[0] = A(which == CALLER ? "10.1.0.2:5000" : "10.2.0.2:5000");
  sd->cand.n_private = 1;
  sd->cand.mapped[0] = sd->cand.mapped[1] = sd->pub;
  sd->cand.n_mapped = 2;
  sd->cand.have_delta = true;
  sd->cand.flags = flag ? NP_SIG_CAND_FLAT : 0;
  /* Gathering's mappings toward the two servers (answered: long-lived). */
  const np_addr s1 = A("203.0.113.1:3478"), s2 = A("203.0.113.3:3478");
  flat_add(&sd->nat, false, 5000, 5000, &s1, 0)->expires = INT64_MAX;
  flat_add(&sd->nat, false, 5000, 5000, &s2, 0)->expires = INT64_MAX;
  sd->rng.s = 77 + (uint64_t)which;
  sd->first_rx = -1;
  sd->last_full_req = -1;
  sd->last_tx = -1;
}

/* Runs a flat session: the callee starts at 0, the caller signaling_ms
 * later (its answer's travel), until both are settled or limit_ms. */
static void flat_run(struct flat_world *w, enum flat_kind caller, enum flat_kind callee, bool flags,
                     int signaling_ms, int64_t limit_ms) {
  memset(w, 0, sizeof *w);
  flat_side_init(&w->s[CALLER], CALLER, caller, flags);
  flat_side_init(&w->s[CALLEE], CALLEE, callee, flags);
  w->s[CALLER].start = signaling_ms;
  uint8_t key[NP_PUNCH_KEY_LEN], session[NP_SIG_SESSION_LEN];
  memset(key, 0x5a, sizeof key);
  memset(session, 0x3c, sizeof session);
  for (w->now = 0; w->now <= limit_ms; w->now++) {
    for (int k = CALLEE; k >= CALLER; k--) {
      struct flat_side *sd = &w->s[k];
      if (sd->p || w->now < sd->start)
        continue;
      np_punch_config c;
      memset(&c, 0, sizeof c);
      c.callee = k == CALLEE;
      memcpy(c.key, key, sizeof key);
      memcpy(c.session, session, sizeof session);
      c.self = sd->cand;
      c.peer = w->s[!k].cand;
      /* What the rendezvous server saw (the public IPs): the aiming rules
       * hold every target to the peer's. */
      c.self_observed = sd->pub;
      c.peer_observed = w->s[!k].pub;
      c.prime_ttl = 2;
      c.random = prng_fill;
      c.random_user = &sd->rng;
      if (getenv("PUNCH_TEST_LOG")) {
        c.log = log_stderr;
        c.log_user = k == CALLER ? "flat caller" : "flat callee";
        c.log_level = NP_LOG_DEBUG;
      }
      assert_int_equal(np__punch_new(&c, w->now, &sd->p), 0);
      if (k == CALLER) /* READY: right behind the caller's start */
        np__punch_peer_ready(w->s[CALLEE].p, w->now + signaling_ms);
    }
    /* Deliveries due now. */
    for (int i = 0; i < w->nq;) {
      if (w->q[i].at > w->now) {
        i++;
        continue;
      }
      struct flat_side *sd = &w->s[w->q[i].to];
      uint16_t lport;
      if (flat_in(&sd->nat, w->q[i].port, &w->q[i].from, w->q[i].ttl, w->now, &lport) && sd->p &&
          lport == 5000) {
        if (sd->first_rx < 0)
          sd->first_rx = w->now;
        (void)np__punch_input(sd->p, w->now, 0, &w->q[i].from, w->q[i].buf, w->q[i].len);
      }
      w->q[i] = w->q[--w->nq];
    }
    for (int k = CALLEE; k >= CALLER; k--) {
      struct flat_side *sd = &w->s[k];
      if (!sd->p)
        continue;
      np_punch_datagram dg;
      for (int guard = 0; guard < 64 && np__punch_next(sd->p, w->now, &dg); guard++) {
        int ttl = dg.ttl > 0 ? dg.ttl : 64;
        bool request = stun_class(&dg) == NP_STUN_REQUEST;
        bool to_peer = np_addr_same_ip(&dg.to, &w->s[!k].pub);
        if (ttl < 8)
          sd->short_ttl[ttl]++;
        if (to_peer && ttl >= 2) {
          if (request && ttl == 64 && sd->first_rx < 0)
            sd->last_full_req = w->now;
          if (sd->last_tx >= 0 && w->now - sd->last_tx > sd->waiter_gap_to - sd->waiter_gap_from) {
            sd->waiter_gap_from = sd->last_tx;
            sd->waiter_gap_to = w->now;
          }
          sd->last_tx = w->now;
        }
        uint16_t pub = flat_out(&sd->nat, 5000, &dg.to, ttl, w->now);
        if (pub == 0 || !to_peer)
          continue;
        if (k == CALLER)
          sd->path_pub = pub;
        assert_true(w->nq < 512);
        w->q[w->nq].at = w->now + FLAT_LAT_MS;
        w->q[w->nq].to = !k;
        w->q[w->nq].from = with_port(sd->pub, pub);
        w->q[w->nq].port = np_addr_port(&dg.to);
        w->q[w->nq].ttl = ttl - 1;
        w->q[w->nq].len = dg.len;
        memcpy(w->q[w->nq].buf, dg.buf, dg.len);
        w->nq++;
      }
    }
    bool settled = true;
    for (int k = 0; k < 2; k++) {
      if (!w->s[k].p) {
        settled = false;
        continue;
      }
      np__punch_result_get(w->s[k].p, &w->s[k].res);
      if (w->s[k].res.state == NP_PUNCH_RUNNING)
        settled = false;
    }
    if (settled)
      break;
  }
  for (int k = 0; k < 2; k++)
    if (w->s[k].p)
      np__punch_result_get(w->s[k].p, &w->s[k].res);
}

static void flat_free(struct flat_world *w) {
  for (int k = 0; k < 2; k++)
    np__punch_free(w->s[k].p);
}

/* Two rude cone NATs on one segment. Without the mode (neither side says
 * its primers reach the server) the callee's primes leave rude state on
 * the caller's gateway, the caller's probes move to another port, the
 * callee's filter refuses them, and the session times out: the defect.
 * With it, the order the mode promises:
 *  - the callee (opener) sends full-TTL requests only in its first 350 ms
 *    burst, then only TTL 1 refreshes (dying in its own NAT), until a probe
 *    of the caller's arrives;
 *  - the caller (waiter) probes for 600 ms, then sends nothing toward the
 *    callee for the 30.6 s that the rude state takes to expire;
 *  - then its probe leaves from its own port (the state has expired: no
 *    clash) and matches the callee's mapping, kept alive all along: both
 *    connect about 31 s after the caller's start. */
static void flat_cone_cone(void **state) {
  (void)state;
  struct flat_world *w = calloc(1, sizeof *w);
  assert_non_null(w);
  flat_run(w, FLAT_CONE, FLAT_CONE, false, 20, 45000);
  assert_int_equal(w->s[CALLER].res.state, NP_PUNCH_FAILED);
  assert_true(w->s[CALLER].nat.clashes >= 1);
  flat_free(w);

  const int delays[] = {20, 300};
  for (int d = 0; d < 2; d++) {
    flat_run(w, FLAT_CONE, FLAT_CONE, true, delays[d], 45000);
    struct flat_side *cr = &w->s[CALLER], *ce = &w->s[CALLEE];
    assert_int_equal(cr->res.state, NP_PUNCH_CONNECTED);
    assert_int_equal(ce->res.state, NP_PUNCH_CONNECTED);
    assert_true(np_addr_equal(&cr->res.remote, &ce->pub)); /* the callee's own port */
    assert_int_equal(cr->path_pub, 5000);                  /* and the caller's */
    /* Opener: its last full-TTL request (before anything came in) was in
     * the burst; its refreshes had TTL 1 and nothing had TTL 2 (a primer:
     * here it would be one more packet to the peer's gateway). */
    assert_true(ce->last_full_req >= 0 && ce->last_full_req < 350);
    assert_true(ce->short_ttl[1] >= 5); /* every 5 s over the wait */
    assert_int_equal(ce->short_ttl[2], 0);
    /* Waiter: silent toward the callee from its 600 ms to 31.2 s. */
    assert_true(cr->waiter_gap_from < cr->start + 600);
    assert_true(cr->waiter_gap_to >= cr->start + 31200);
    assert_int_equal(cr->short_ttl[2], 0);
    /* Connected after the wait, a round trip or two later. */
    assert_true(cr->res.elapsed_ms >= 31200 && cr->res.elapsed_ms <= 31300);
    assert_true(ce->res.elapsed_ms >= cr->start + 31200);
    flat_free(w);
  }
  free(w);
}

/* Where a gateway lets the other side's probe in anyway, the mode costs
 * nothing: a full-cone caller takes the callee's burst, an address-
 * dependent or full-cone callee takes the caller's first probes (which the
 * waiter sends before its wait for that reason). A cone callee with an
 * address-dependent caller has to wait like cone-cone. */
static void flat_fast_pairs(void **state) {
  (void)state;
  static const struct {
    enum flat_kind caller, callee;
    bool fast;
  } pairs[] = {
      {FLAT_FULL, FLAT_CONE, true}, {FLAT_CONE, FLAT_FULL, true}, {FLAT_CONE, FLAT_ADDR, true},
      {FLAT_ADDR, FLAT_ADDR, true}, {FLAT_FULL, FLAT_FULL, true}, {FLAT_ADDR, FLAT_CONE, false},
  };
  struct flat_world *w = calloc(1, sizeof *w);
  assert_non_null(w);
  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    flat_run(w, pairs[i].caller, pairs[i].callee, true, 20, 45000);
    for (int k = 0; k < 2; k++)
      if (w->s[k].res.state != NP_PUNCH_CONNECTED)
        fail_msg("pair %zu: side %d state %d (%s)", i, k, w->s[k].res.state, w->s[k].res.reason);
    int64_t ms = w->s[CALLER].res.elapsed_ms;
    if (pairs[i].fast ? ms > 100 : ms < 31200)
      fail_msg("pair %zu: the caller connected after %lld ms", i, (long long)ms);
    flat_free(w);
  }
  free(w);
}

/* The mode needs both sides' word: one side alone (or a pair that shares a
 * public IP, or one whose ports must be predicted) goes the usual way,
 * without the wait and the extended deadline. */
static void flat_needs_both_flags(void **state) {
  (void)state;
  struct flat_world *w = calloc(1, sizeof *w);
  assert_non_null(w);
  flat_side_init(&w->s[CALLER], CALLER, FLAT_CONE, true);
  flat_side_init(&w->s[CALLEE], CALLEE, FLAT_CONE, false);
  np_punch_config c;
  memset(&c, 0, sizeof c);
  c.self = w->s[CALLER].cand;
  c.peer = w->s[CALLEE].cand;
  c.self_observed = w->s[CALLER].pub;
  c.peer_observed = w->s[CALLEE].pub;
  c.prime_ttl = 2;
  c.session_timeout_ms = 20000;
  np_punch *p;
  /* One flag: the caller's probes go at once and keep going (no 30 s
   * silence): its second send is the usual 100 ms retransmission. */
  assert_int_equal(np__punch_new(&c, 0, &p), 0);
  np_punch_datagram dg;
  int64_t sends[4];
  int n = 0;
  for (int64_t t = 0; t < 2000 && n < 4; t++)
    while (n < 4 && np__punch_next(p, t, &dg))
      if (dg.ttl == 0)
        sends[n++] = t;
  assert_int_equal(n, 4);
  assert_true(sends[3] < 1000);
  np__punch_free(p);
  /* Both flags: the mode is on, the same caller falls silent after 600 ms. */
  c.peer.flags = NP_SIG_CAND_FLAT;
  assert_int_equal(np__punch_new(&c, 0, &p), 0);
  n = 0;
  for (int64_t t = 0; t < 31000; t++)
    while (np__punch_next(p, t, &dg))
      if (dg.ttl == 0 && t >= 600)
        n++;
  assert_int_equal(n, 0);
  /* and its deadline covers the wait */
  assert_true(np__punch_wakeup(p) <= 31200);
  np_punch_result r;
  np__punch_result_get(p, &r);
  assert_int_equal(r.state, NP_PUNCH_RUNNING);
  np__punch_free(p);
  /* Same public IP: the usual way (the LAN addresses are tried). */
  c.peer.mapped[0] = c.peer.mapped[1] = A("203.0.113.11:6000");
  c.peer_observed = A("203.0.113.11:7001"); /* the server saw one IP too */
  assert_int_equal(np__punch_new(&c, 0, &p), 0);
  n = 0;
  for (int64_t t = 600; t < 3000; t++)
    while (np__punch_next(p, t, &dg))
      if (dg.ttl == 0 && np_addr_same_ip(&dg.to, &c.peer.mapped[0]))
        n++;
  assert_true(n > 0);
  np__punch_free(p);
  free(w);
}
/* ==== end of flat segment ===================================================== */
/* A captured nomination replayed from another address, racing the genuine
 * one or long after the connection, from a third host or from another
 * port of the caller's own public IP (an attacker behind the same NAT):
 * the callee's path is the genuine pair, found as fast as without the
 * attacker; the third host gets nothing, the spoofed port at most the
 * callee's few checks, which it cannot answer. */
static void hijack_replayed_nomination(void **state) {
  (void)state;
  const char *froms[] = {"198.51.100.66:5000", "203.0.113.11:31999"};
  for (int mode = 1; mode <= 2; mode++)
    for (int f = 0; f < 2; f++) {
      struct scenario sc = pair(NAT_CONE, NAT_CONE, false);
      sc.hijack = mode;
      sc.hijack_from = froms[f];
      sc.replay_ms = 500;
      sc.linger_ms = 3000;
      struct sim *s = run(&sc);
      assert_true(s->replayed);
      assert_agreed(s, NP_VIA_REFLEXIVE); /* the genuine pair, both ends */
      const np_punch_result *re = &s->side[CALLEE].res;
      assert_false(np_addr_equal(&re->remote, &s->attacker));
      /* ...and it never was: the first pair it took was the genuine one. */
      assert_true(np_addr_equal(&s->side[CALLEE].at_connect.remote, &re->remote));
      /* No round trip lost: as fast as cone_cone_phase0. */
      assert_int_equal(s->side[CALLER].res.elapsed_ms, 2 * sc.latency_ms);
      assert_int_equal(re->elapsed_ms, sc.signaling_ms + 3 * sc.latency_ms);
      if (f == 0)
        assert_int_equal(s->to_attacker, 0); /* a third IP: not even answered */
      else
        assert_true(s->to_attacker <= 8); /* a response and a few checks */
      sim_free(s);
    }
}

/* A success response the caller took, replayed to it (from where it came,
 * on the socket it came on) is refused: each transaction counts once. */
static void replayed_response_refused(void **state) {
  (void)state;
  struct scenario sc = pair(NAT_CONE, NAT_CONE, false);
  sc.hijack = 2; /* only to record the traffic */
  sc.hijack_from = "198.51.100.66:5000";
  sc.replay_ms = 100000; /* never */
  struct sim *s = run(&sc);
  assert_agreed(s, NP_VIA_REFLEXIVE);
  assert_true(s->have_resp);
  np_punch_result before, after;
  np__punch_result_get(s->side[CALLER].p, &before);
  assert_false(np__punch_input(s->side[CALLER].p, s->now, s->resp.to_port, &s->resp.from,
                              s->resp.buf, s->resp.len));
  np__punch_result_get(s->side[CALLER].p, &after);
  assert_int_equal(after.probes_received, before.probes_received);
  sim_free(s);
}

/* Builds a machine of the given role whose peer offered 'peer' (its
 * OBSERVED address 'observed'), against the cone side of a sim. */
static np_punch *hostile_machine(struct sim *s, bool callee, const np_sig_candidates *peer,
                                 const char *observed) {
  uint8_t key[NP_PUNCH_KEY_LEN], session[NP_SIG_SESSION_LEN];
  memset(key, 0x42, sizeof key);
  memset(session, 0x17, sizeof session);
  np_punch_config c = make_config(s, callee ? CALLEE : CALLER, key, session);
  c.peer = *peer;
  c.peer_observed = A(observed);
  np_punch *p = NULL;
  assert_int_equal(np__punch_new(&c, 0, &p), 0);
  return p;
}

/* Steps a machine for 'ms' (READY at once), calling 'check' on every
 * datagram it sends; returns how many it sent. */
static int drive(np_punch *p, int64_t ms, void (*check)(const np_punch_datagram *, void *),
                 void *user) {
  np__punch_peer_ready(p, 0);
  int sent = 0;
  for (int64_t now = 0; now <= ms; now++) {
    np_punch_datagram dg;
    for (int i = 0; i < 4096 && np__punch_next(p, now, &dg); i++) {
      check(&dg, user);
      sent++;
    }
  }
  return sent;
}

static void never(const np_punch_datagram *dg, void *user) {
  (void)dg;
  (void)user;
  fail_msg("a machine with nothing to probe sent a datagram");
}

/* An offer or answer with no candidate, or only ones the rules refuse:
 * the session ends at once with a reason, sends nothing, never crashes. */
static void no_usable_candidates(void **state) {
  (void)state;
  struct scenario sc = pair(NAT_CONE, NAT_CONE, false);
  struct sim *s = run(&sc); /* only for our own candidates */
  np_sig_candidates sets[4];
  memset(sets, 0, sizeof sets); /* [0]: nothing at all */
  /* [1]: a third host's public address, loopback, link-local, broadcast,
   * multicast, a private address behind another NAT, our own addresses */
  sets[1].mapped[0] = A("198.51.100.77:3478");
  sets[1].mapped[1] = A("127.0.0.1:22");
  sets[1].n_mapped = 2;
  sets[1].private_addrs[0] = A("10.1.0.9:53");
  sets[1].private_addrs[1] = A("169.254.1.1:5000");
  sets[1].private_addrs[2] = A("255.255.255.255:5000");
  sets[1].private_addrs[3] = A("224.0.0.251:5353");
  sets[1].n_private = 4;
  sets[1].portmap = A("198.51.100.78:80");
  /* [2]: our own public address and LAN address (set per role below) */
  /* [3]: addresses with port 0, wildcards, counts beyond the arrays */
  sets[3].mapped[0] = A("203.0.113.11:1");
  np_addr_set_port(&sets[3].mapped[0], 0);
  sets[3].mapped[1] = A("0.0.0.0:5000");
  sets[3].n_mapped = 99;
  sets[3].n_private = -3;
  for (int k = 0; k < 4; k++)
    for (int callee = 0; callee < 2; callee++) {
      const struct side *own = &s->side[callee ? CALLEE : CALLER];
      sets[2].mapped[0] = own->cand.mapped[0];
      sets[2].n_mapped = 1;
      sets[2].private_addrs[0] = own->cand.private_addrs[0];
      sets[2].n_private = 1;
      /* The peer's OBSERVED IP is the other side's (203.0.113.11 for the
       * caller, .12 for the callee): none of the candidates is on it. */
      np_punch *p =
          hostile_machine(s, callee, &sets[k], callee ? "203.0.113.11:40001" : "203.0.113.12:4");
      np_punch_result r;
      np__punch_result_get(p, &r);
      assert_int_equal(r.state, NP_PUNCH_FAILED);
      assert_int_equal(r.error, NP_ERR_UNREACHABLE);
      assert_non_null(strstr(r.reason, "no usable candidate"));
      assert_int_equal(drive(p, 3000, never, NULL), 0);
      np__punch_free(p);
    }
  sim_free(s);
}

struct aim_check {
  np_addr observed;
  int sent;
};

static void only_observed(const np_punch_datagram *dg, void *user) {
  struct aim_check *a = user;
  char t[NP_ADDRSTRLEN];
  if (!np_addr_same_ip(&dg->to, &a->observed))
    fail_msg("probe to %s, not the peer's observed IP", np_addr_format(&dg->to, t, sizeof t));
  a->sent++;
}

/* A hostile offer mixing third parties with its own sequential-NAT
 * candidates: the listener's probes, phase 0 and the whole sweep, go to
 * the caller's observed IP only. And a caller whose "public" candidates
 * are somebody else's sweeps nobody but the OBSERVED IP either. */
static void aims_only_at_observed(void **state) {
  (void)state;
  struct scenario sc = pair(NAT_CONE, NAT_CONE, false);
  struct sim *s = run(&sc);
  for (int callee = 0; callee < 2; callee++) {
    const char *ip = callee ? "203.0.113.11" : "203.0.113.12"; /* the peer's */
    char m0[32], obs[32];
    snprintf(m0, sizeof m0, "%s:31000", ip);
    snprintf(obs, sizeof obs, "%s:40001", ip);
    np_sig_candidates peer;
    memset(&peer, 0, sizeof peer);
    peer.mapped[0] = A(m0);                    /* its own, sequential */
    peer.mapped[1] = A("198.51.100.77:31001"); /* a third host */
    peer.n_mapped = 2;
    peer.have_delta = true;
    peer.delta = 1;
    peer.private_addrs[0] = A(callee ? "10.2.0.3:5000" : "10.1.0.3:5000"); /* on our LAN */
    peer.private_addrs[1] = A("203.0.113.99:5000");
    peer.n_private = 2;
    peer.portmap = A(callee ? "10.2.0.1:80" : "10.1.0.1:80"); /* our own gateway */
    np_punch *p = hostile_machine(s, callee, &peer, obs);
    struct aim_check a = {A(obs), 0};
    np_punch_result r;
    np__punch_result_get(p, &r);
    assert_int_equal(r.state, NP_PUNCH_RUNNING);
    assert_true(drive(p, 4000, only_observed, &a) > 0);
    np__punch_result_get(p, &r);
    assert_true(r.rounds >= 1); /* the sweep ran, on the observed IP */
    np__punch_free(p);
  }
  sim_free(s);
}

/* An authenticated request from a third host (a spoofed source, a
 * replay) is not answered and leaves no target to check. */
static void third_party_request_ignored(void **state) {
  (void)state;
  struct scenario sc = pair(NAT_CONE, NAT_CONE, false);
  struct sim *s = run(&sc);
  uint8_t key[NP_PUNCH_KEY_LEN], session[NP_SIG_SESSION_LEN];
  memset(key, 0x42, sizeof key);
  memset(session, 0x17, sizeof session);
  np_punch_config cc = make_config(s, CALLER, key, session);
  np_punch_config ce = make_config(s, CALLEE, key, session);
  np_punch *caller, *callee;
  assert_int_equal(np__punch_new(&cc, 0, &caller), 0);
  assert_int_equal(np__punch_new(&ce, 0, &callee), 0);
  np_punch_datagram dg, out;
  assert_int_equal(np__punch_next(caller, 0, &dg), 1);
  while (np__punch_next(callee, 0, &out)) /* its own primes */
    ;
  np_addr third = A("198.51.100.66:5000");
  assert_true(np__punch_input(callee, 1, 0, &third, dg.buf, dg.len));
  for (int64_t now = 1; now < 2000; now++)
    while (np__punch_next(callee, now, &out))
      assert_false(np_addr_same_ip(&out.to, &third));
  np__punch_free(caller);
  np__punch_free(callee);
  sim_free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(cone_cone_phase0),    cmocka_unit_test(rude_needs_priming),
      cmocka_unit_test(rude_slow_signaling), cmocka_unit_test(symmetric_cone),
      cmocka_unit_test(symmetric_symmetric), cmocka_unit_test(lockstep_noise_two),
      cmocka_unit_test(lockstep_slow_signaling),
      cmocka_unit_test(prediction_waits_for_ready),
      cmocka_unit_test(random_cone),         cmocka_unit_test(random_symmetric),
      cmocka_unit_test(portmap_symmetric),
      cmocka_unit_test(open_anything),       cmocka_unit_test(lossy),
      cmocka_unit_test(keepalives),          cmocka_unit_test(refused_input),
      /* flat segment */
      cmocka_unit_test(flat_cone_cone),
      cmocka_unit_test(flat_fast_pairs),
      cmocka_unit_test(flat_needs_both_flags),
      cmocka_unit_test(hijack_replayed_nomination),
      cmocka_unit_test(replayed_response_refused),
      cmocka_unit_test(no_usable_candidates),
      cmocka_unit_test(aims_only_at_observed),
      cmocka_unit_test(third_party_request_ignored),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
