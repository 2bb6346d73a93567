/*
 * Hole punching state machine; see punch.h for the method and the rules on
 * priming. Everything here is driven by np__punch_next() / np__punch_input()
 * with the time passed in.
 */
#include "traversal/punch.h"

#include "net/addr.h"
#include "stun/stun.h"
#include "util/clock.h"
#include "util/log.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Our own comprehension-optional attributes (0x8000-0xFFFF: a STUN agent
 * that does not know them ignores them). */
#define ATTR_NOMINATE 0xC001 /* empty: "use this pair" (caller -> callee) */
#define ATTR_VIA 0xC002      /* u32 enum np_via: how the sender sees the pair */

#define DEFAULT_PREDICT_AFTER_MS 1000
#define DEFAULT_ROUND_MS 800
#define DEFAULT_HOLD_MS 400
#define DEFAULT_TIMEOUT_MS 20000
#define DEFAULT_KEEPALIVE_MS 25000
#define DEFAULT_MAX_PROBES 6000
#define DEFAULT_BIRTHDAY_SOCKETS 256
#define DEFAULT_BIRTHDAY_PORTS 512
#define RTO_MIN_MS 100
#define RTO_MAX_MS 1000
#define PACE_US 1000          /* one probe per millisecond at most... */
#define PACE_BURST 16         /* ...after a burst of this many */
#define ROUND_SENDS 2         /* full sends of a predicted target per round */
#define TRIGGERED_SENDS 6     /* checks of a pair a probe arrived on */
#define NOMINATE_SENDS 7
#define MAX_TARGETS 16384
#define MAX_RESPONSES 64
/* Outstanding transactions a target remembers: more than the sends that
 * can be in flight at once (the RTO doubles from 100 ms, so within a
 * second's round trip at most four). */
#define TX_KEEP 4
#define TX_RAND_LEN 8
#define NEVER INT64_MAX
/* A priming callee that gets no READY (the rendezvous connection broke
 * after the answer) goes ahead this long after its hold: on direct pairs,
 * and with the first round of a sweep or spray. */
#define FALLBACK_MS 5000
/* Flat segment (punch.h): Linux's nf_conntrack_udp_timeout, the life of an
 * unreplied UDP entry, which only packets that reach the gateway renew. */
#define FLAT_CT_TIMEOUT_MS 30000
#define FLAT_EARLY_MS 600   /* caller: it probes as usual this long first */
#define FLAT_BURST_MS 350   /* callee: full-TTL probes this long (3 sends) */
#define FLAT_MARGIN_MS 600  /* after the entries' expiry: clocks, scheduling */
#define FLAT_KEEP_MS 5000   /* callee: TTL = depth refreshes of its mapping */
#define FLAT_AFTER_MS 10000 /* the session lasts at least this after the wait */

struct target {
  np_addr to;
  int sock;
  enum np_cand_type type;
  int round;           /* activation round; 0 = phase 0 */
  int64_t activated;   /* when the current activation began */
  int64_t next;        /* next send (NEVER: only an event re-arms it) */
  int rto;
  int sends;           /* full sends in this activation */
  int max_sends;       /* 0 = no limit (phase 0 targets keep trying) */
  bool active;
  bool primed;
  bool inbound;        /* an authenticated request came from it */
  bool valid;          /* it answered one of our requests */
  bool spacer;         /* LOCKSTEP spacer: only a mapping on our NAT, never a probe */
  bool nominated;      /* callee: a nomination came on it before it was valid */
  uint32_t nom_via;    /* ...and the view it carried */
  uint8_t tx[TX_KEEP][TX_RAND_LEN]; /* outstanding transactions (random part) */
  uint8_t tx_live;     /* bit i: tx[i] awaits its answer */
  uint8_t tx_next;     /* ring position of the next send */
};

struct response {
  int sock;
  np_addr to;
  uint8_t txid[NP_STUN_TXID_LEN];
  bool nominate;
};

struct np_punch {
  np_punch_config cfg;
  np_logger log;
  int64_t start, predict_at, next_round_at, deadline;
  int64_t ready_at; /* callee: when the caller's READY came (-1: not yet) */
  bool round_gated; /* callee: our first round waits for READY (or the fallback) */
  int predict_after, round_ms, hold, keepalive, max_probes, bd_sockets, bd_ports;

  np_nat_model self_m, peer_m;
  enum np_predict_strategy strategy;
  int round;
  bool peer_open; /* the peer has no NAT: nothing to prime against */

  struct target *t;
  int nt, cap;

  struct response resp[MAX_RESPONSES];
  int nresp;

  int64_t pace_next_us; /* in microseconds, for sub-ms pacing */
  int pace_tokens;

  uint8_t salt[8]; /* drawn once: with the key, it seeds the transaction ids */
  uint8_t txkey[crypto_shorthash_KEYBYTES];
  uint64_t txctr;
  np_checklist_seen seen;
  np_addr peer_ip;   /* where predicted and sprayed ports go: the peer's OBSERVED IP */
  int pending_moves; /* callee, connected: nominations of other pairs awaiting a check */
  char user_tx[64], user_rx[64];
  size_t user_len;

  int nominating; /* target index, -1 */
  int nom_sends, nom_rto;
  int64_t nom_next;

  enum np_punch_state state;
  int sel;        /* selected target index */
  enum np_via via;
  int64_t connected_at, next_keepalive;
  int error;
  char reason[160];

  uint16_t *sprayed;
  int nsprayed;
  int max_sock;
  uint32_t probes_sent, probes_received;

  /* Flat segment (punch.h): on when both sides' candidates say so. The
   * callee opens (full-TTL burst until flat_burst_end, then TTL = depth
   * refreshes every FLAT_KEEP_MS); the caller is silent toward the peer
   * from flat_quiet_from to flat_quiet_until. */
  bool flat;
  int64_t flat_burst_end, flat_quiet_from, flat_quiet_until, flat_keep_at;
  int flat_keep_i;
};

/* ---- helpers ---------------------------------------------------------------- */

static void fail(np_punch *p, int err, const char *reason);

static void default_random(void *user, uint8_t *buf, size_t len) {
  (void)user;
  if (np__random_bytes(buf, len) != 0)
    randombytes_buf(buf, len);
}

static void rnd(np_punch *p, void *buf, size_t len) {
  p->cfg.random(p->cfg.random_user, buf, len);
}

static void hex(const uint8_t *b, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[b[i] >> 4];
    out[2 * i + 1] = digits[b[i] & 15];
  }
  out[2 * n] = '\0';
}

static int find_target(const np_punch *p, int sock, const np_addr *to) {
  for (int i = 0; i < p->nt; i++)
    if (p->t[i].sock == sock && np_addr_equal(&p->t[i].to, to))
      return i;
  return -1;
}

static int add_target(np_punch *p, int sock, const np_addr *to, enum np_cand_type type) {
  int i = find_target(p, sock, to);
  if (i >= 0)
    return i;
  if (p->nt == p->cap) {
    if (p->cap >= MAX_TARGETS)
      return -1;
    int ncap = p->cap ? p->cap * 2 : 64;
    struct target *n = realloc(p->t, (size_t)ncap * sizeof *n);
    if (!n)
      return -1;
    p->t = n;
    p->cap = ncap;
  }
  struct target *t = &p->t[p->nt];
  memset(t, 0, sizeof *t);
  t->to = *to;
  t->sock = sock;
  t->type = type;
  t->next = NEVER;
  if (sock + 1 > p->max_sock)
    p->max_sock = sock + 1;
  return p->nt++;
}

/* (Re)starts probing a target in the current round. */
static void activate(np_punch *p, int i, int64_t now, int max_sends) {
  struct target *t = &p->t[i];
  t->active = true;
  t->round = p->round;
  t->activated = now;
  t->next = now;
  t->rto = RTO_MIN_MS;
  t->sends = 0;
  t->max_sends = max_sends;
}

/* When the two views differ the higher rank names the pair. A side that
 * probed the peer's port mapping knows the pair is that mapping, while the
 * mapped side sees a peer-reflexive address and would name its own
 * strategy; so portmap ranks first. */
static int via_rank(enum np_via v) {
  switch (v) {
  case NP_VIA_PORTMAP:
    return 6;
  case NP_VIA_BIRTHDAY:
    return 5;
  case NP_VIA_PREDICTED:
    return 4;
  case NP_VIA_HOST:
    return 2;
  case NP_VIA_REFLEXIVE:
    return 1;
  default:
    return 0;
  }
}

/* The peer has no NAT when the address the servers saw is one of its own
 * interface addresses. */
static bool has_no_nat(const np_sig_candidates *c) {
  if (c->n_mapped == 0)
    return false;
  for (int i = 0; i < c->n_private; i++)
    if (np_addr_equal(&c->private_addrs[i], &c->mapped[0]))
      return true;
  return false;
}

/* How this side sees the way a pair was found. The two sides may see it
 * differently (the side that held fire sees only a peer-reflexive address);
 * they exchange their views in the nomination and keep the stronger. */
static enum np_via target_via(const np_punch *p, const struct target *t) {
  if (t->sock > 0 || t->type == NP_CAND_BIRTHDAY)
    return NP_VIA_BIRTHDAY;
  if (t->type == NP_CAND_PREDICTED)
    return NP_VIA_PREDICTED;
  /* With a strategy other than NONE, a pair on a public address can only
   * work through prediction (one side's port was unknown to the other):
   * the side that holds fire answers on a pair it knew from the start (the
   * peer's mapped port) or learned from the probe that landed, possibly
   * before its own rounds began. */
  bool public = (t->type == NP_CAND_PRFLX || t->type == NP_CAND_MAPPED) && !p->peer_open &&
                !has_no_nat(&p->cfg.self);
  {
    switch (p->strategy) {
    case NP_PREDICT_SWEEP:
    case NP_PREDICT_HOLD:
    case NP_PREDICT_LOCKSTEP:
      if (public)
        return NP_VIA_PREDICTED;
      break;
    case NP_PREDICT_SPRAY:
    case NP_PREDICT_SOCKETS:
      if (public)
        return NP_VIA_BIRTHDAY;
      break;
    default:
      break;
    }
  }
  if (t->type == NP_CAND_HOST)
    return NP_VIA_HOST;
  if (t->type == NP_CAND_PORTMAP)
    return NP_VIA_PORTMAP;
  return NP_VIA_REFLEXIVE;
}

static enum np_via merge_via(enum np_via a, enum np_via b) {
  return via_rank(a) >= via_rank(b) ? a : b;
}

/* The flat-segment mode (punch.h); defined with the send rules. */
static void flat_start(np_punch *p, int64_t now);
static bool pace(np_punch *p, int64_t now);

/* ---- creation --------------------------------------------------------------- */

int np__punch_derive_key(const uint8_t our_secret[32], const uint8_t our_public[32],
                        const uint8_t peer_public[32], bool callee,
                        const uint8_t session[NP_SIG_SESSION_LEN],
                        uint8_t key[NP_PUNCH_KEY_LEN]) {
  uint8_t shared[crypto_scalarmult_BYTES];
  if (crypto_scalarmult(shared, our_secret, peer_public) != 0)
    return NP_ERR_AUTH;
  static const char ctx[] = "natpunch probe key v1";
  crypto_generichash_state st;
  crypto_generichash_init(&st, shared, sizeof shared, NP_PUNCH_KEY_LEN);
  crypto_generichash_update(&st, (const uint8_t *)ctx, sizeof ctx - 1);
  crypto_generichash_update(&st, session, NP_SIG_SESSION_LEN);
  crypto_generichash_update(&st, callee ? peer_public : our_public, 32);
  crypto_generichash_update(&st, callee ? our_public : peer_public, 32);
  crypto_generichash_final(&st, key, NP_PUNCH_KEY_LEN);
  sodium_memzero(shared, sizeof shared);
  return 0;
}


static void log_dropped(void *user, const np_addr *a, const char *why) {
  np_punch *p = user;
  char t[NP_ADDRSTRLEN];
  NP_LOGD(&p->log, "punch: not probing the peer's candidate %s: %s",
          np_addr_format(a, t, sizeof t), why);
}

int np__punch_new(const np_punch_config *cfg, int64_t now, np_punch **out) {
  *out = NULL;
  if (!cfg || cfg->birthday_sockets < 0 || cfg->birthday_sockets >= NP_PUNCH_MAX_SOCKETS ||
      cfg->prime_ttl < 0 || cfg->prime_ttl > 255)
    return NP_ERR_INVAL;
  np_punch *p = calloc(1, sizeof *p);
  if (!p)
    return NP_ERR_NOMEM;
  p->cfg = *cfg;
  if (!p->cfg.random)
    p->cfg.random = default_random;
  p->log = (np_logger){cfg->log, cfg->log_user, cfg->log_level};
  p->predict_after = cfg->predict_after_ms > 0 ? cfg->predict_after_ms : DEFAULT_PREDICT_AFTER_MS;
  p->round_ms = cfg->round_ms > 0 ? cfg->round_ms : DEFAULT_ROUND_MS;
  p->hold = cfg->hold_ms > 0 ? cfg->hold_ms : DEFAULT_HOLD_MS;
  int timeout = cfg->session_timeout_ms > 0 ? cfg->session_timeout_ms : DEFAULT_TIMEOUT_MS;
  p->keepalive = cfg->keepalive_ms > 0 ? cfg->keepalive_ms : DEFAULT_KEEPALIVE_MS;
  p->max_probes = cfg->max_probes > 0 ? cfg->max_probes : DEFAULT_MAX_PROBES;
  p->bd_sockets = cfg->birthday_sockets > 0 ? cfg->birthday_sockets : DEFAULT_BIRTHDAY_SOCKETS;
  p->bd_ports = cfg->birthday_ports > 0 ? cfg->birthday_ports : DEFAULT_BIRTHDAY_PORTS;
  p->start = now;
  p->deadline = now + timeout;
  p->nominating = -1;
  p->sel = -1;
  p->max_sock = 1;
  p->pace_tokens = PACE_BURST;
  rnd(p, p->salt, sizeof p->salt);
  /* The transaction ids' random part: SipHash of a counter under a key
   * only the two peers can derive (the session key and our salt), so ids
   * never repeat within a session and an onlooker cannot predict them. */
  {
    static const char ctx[] = "natpunch txid v1";
    crypto_generichash_state st;
    crypto_generichash_init(&st, cfg->key, NP_PUNCH_KEY_LEN, sizeof p->txkey);
    crypto_generichash_update(&st, (const uint8_t *)ctx, sizeof ctx - 1);
    crypto_generichash_update(&st, p->salt, sizeof p->salt);
    crypto_generichash_final(&st, p->txkey, sizeof p->txkey);
  }
  p->seen.self = cfg->self_observed;
  p->seen.peer = cfg->peer_observed;

  char sess[2 * NP_SIG_SESSION_LEN + 1];
  hex(cfg->session, NP_SIG_SESSION_LEN, sess);
  snprintf(p->user_tx, sizeof p->user_tx, "natpunch:%s:%c", sess, cfg->callee ? 'a' : 'c');
  snprintf(p->user_rx, sizeof p->user_rx, "natpunch:%s:%c", sess, cfg->callee ? 'c' : 'a');
  p->user_len = strlen(p->user_tx);

  /* Who sends where in phase 0, and how many mappings that costs each side
   * (the predictor's 'sent'): both sides compute both lists. */
  np_check self_list[NP_CHECKLIST_MAX], peer_list[NP_CHECKLIST_MAX];
  int self_maps = 0, peer_maps = 0;
  int n = np__checklist_build(&cfg->self, &cfg->peer, &p->seen, self_list, NP_CHECKLIST_MAX,
                             &self_maps, log_dropped, p);
  /* The peer's list by the peer's rules: the same two views, swapped. */
  np_checklist_seen theirs = {.self = p->seen.peer, .peer = p->seen.self};
  (void)np__checklist_build(&cfg->peer, &cfg->self, &theirs, peer_list, NP_CHECKLIST_MAX,
                           &peer_maps, NULL, NULL);
  np__checklist_model(&cfg->self, &p->self_m);
  np__checklist_model(&cfg->peer, &p->peer_m);
  p->self_m.sent = self_maps;
  p->peer_m.sent = peer_maps;
  p->strategy = np__predict_plan(&p->self_m, &p->peer_m);
  p->peer_open = has_no_nat(&cfg->peer);
  /* A callee that sweeps or sprays sends full-TTL probes first in its
   * rounds; the peer must have primed toward them, and it starts a
   * signaling delay after us: so our rounds start a hold later. (In
   * LOCKSTEP the callee must be the earlier one: it primes, the caller
   * probes.) */
  /* When offer and answer already say that the pair needs prediction
   * (both NATs classified, a strategy other than NONE), waiting for the
   * direct candidates first only costs time: the rounds start with phase 0
   * (its targets are added first, so they still go first and the counts in
   * 'sent' hold). The callee's hold and READY gating below still order the
   * two sides. Where a NAT's kind is unknown, or a direct candidate should
   * work anyway (an open side, a port mapping, one LAN), the old delay
   * stays: prediction would only add probes there. */
  bool direct_likely = p->peer_open || has_no_nat(&cfg->self) ||
                       np__addr_is_set(&cfg->self.portmap) || np__addr_is_set(&cfg->peer.portmap) ||
                       np__checklist_same_nat(&p->seen);
  if (p->strategy != NP_PREDICT_NONE && p->strategy != NP_PREDICT_IMPOSSIBLE &&
      p->self_m.known && p->peer_m.known && !direct_likely)
    p->predict_after = 0;
  p->predict_at = now + p->predict_after;
  bool gated = cfg->callee && cfg->prime_ttl > 0 &&
               (p->strategy == NP_PREDICT_SWEEP || p->strategy == NP_PREDICT_SPRAY);
  /* (A gated callee's READY already says the caller has primed: when the
   * plan was known at once the hold would only add to it.) */
  if (cfg->callee && (p->strategy == NP_PREDICT_SWEEP || p->strategy == NP_PREDICT_SPRAY) &&
      !(gated && p->predict_after == 0))
    p->predict_at += p->hold;
  p->next_round_at = p->predict_at;
  /* And a priming callee's sweep or spray must not overtake the caller,
   * however late our answer reached it: sweep packets at ports its
   * sequential NAT has not given out yet would take them (rude state), and
   * a spray before its sockets are primed is wasted. So the first round
   * waits for the caller's READY (np__punch_peer_ready), or for the
   * fallback when none comes. */
  p->ready_at = -1;
  p->round_gated = gated;
  if (p->round_gated)
    p->next_round_at += FALLBACK_MS;
  for (int i = 0; i < n; i++) {
    int k = add_target(p, 0, &self_list[i].remote, self_list[i].type);
    if (k >= 0)
      activate(p, k, now, 0);
  }
  /* Predicted and sprayed ports go to the peer's OBSERVED IP only, and the
   * birthday sockets to its first mapped port there. */
  if (np__addr_is_set(&p->seen.peer)) {
    p->peer_ip = p->seen.peer;
    np_addr_set_port(&p->peer_ip, cfg->peer.n_mapped > 0 ? np_addr_port(&cfg->peer.mapped[0])
                                  : p->nt > 0           ? np_addr_port(&p->t[0].to)
                                                        : 0);
  }
  if (p->nt == 0)
    fail(p, NP_ERR_UNREACHABLE,
         "the peer offered no usable candidate (none on its public IP as the rendezvous "
         "server saw it)");
  flat_start(p, now);
  NP_LOGI(&p->log,
          "punch: %s, %d direct candidate(s); our NAT stride %d%s, peer's %d%s; strategy %s "
          "after %d ms; prime TTL %d",
          cfg->callee ? "callee" : "caller", n, p->self_m.stride,
          p->self_m.known ? "" : " (unknown)", p->peer_m.stride,
          p->peer_m.known ? "" : " (unknown)", np__predict_strategy_name(p->strategy),
          (int)(p->predict_at - now), cfg->prime_ttl);
  *out = p;
  return 0;
}

void np__punch_peer_ready(np_punch *p, int64_t now) {
  if (!p || !p->cfg.callee || p->ready_at >= 0 || p->state != NP_PUNCH_RUNNING)
    return;
  p->ready_at = now;
  NP_LOGD(&p->log, "punch: the caller is ready (%lld ms after our start)",
          (long long)(now - p->start));
  /* Direct pairs waiting for their fallback may go now. */
  for (int i = 0; i < p->nt; i++)
    if (p->t[i].active && p->t[i].round == 0 && p->t[i].next > now)
      p->t[i].next = now;
  if (p->round_gated && p->round == 0) {
    /* A spraying callee also waits for the caller's first round, which
     * primes its sockets a predict_after after its start (at once when
     * the plan was known at once: they are primed, paced, while our spray
     * goes out, and a probe that comes too early only misses). */
    int64_t at = now + (p->strategy == NP_PREDICT_SPRAY ? p->predict_after : 0);
    p->next_round_at = at > p->predict_at ? at : p->predict_at;
  }
}

void np__punch_free(np_punch *p) {
  if (!p)
    return;
  free(p->t);
  free(p->sprayed);
  sodium_memzero(p->cfg.key, sizeof p->cfg.key);
  free(p);
}

/* ---- the send rules ------------------------------------------------------------ */

static bool hold_applies(const np_punch *p, const struct target *t) {
  if (!p->cfg.callee)
    return false;
  /* The peer primes these at the start of its own phase or round, which
   * begins after ours (it learns of the session later). */
  return t->round == 0 || p->strategy == NP_PREDICT_LOCKSTEP;
}

/* Does the peer know the public port our probe to t will come from? */
static bool our_port_known(const np_punch *p, const struct target *t) {
  if (t->sock > 0)
    return false; /* birthday sockets: random ports nobody predicted */
  if (t->round == 0)
    return np__predict_kind(&p->self_m) == 0;
  switch (p->strategy) {
  case NP_PREDICT_HOLD:
  case NP_PREDICT_SOCKETS:
    return false;
  default:
    return true;
  }
}

static bool needs_prime(const np_punch *p, const struct target *t) {
  if (t->spacer)
    return p->cfg.prime_ttl > 0;
  if (p->cfg.prime_ttl <= 0 || t->type == NP_CAND_HOST || t->type == NP_CAND_PORTMAP)
    return false;
  /* A sweep or a spray is answered, never raced: the other side holds
   * fire until one of these lands, so they need no separate priming. */
  if (t->round > 0 && t->sock == 0 &&
      (p->strategy == NP_PREDICT_SWEEP || p->strategy == NP_PREDICT_SPRAY))
    return false;
  return true;
}

/* The earliest time a full-TTL probe to t may go (NEVER: only an inbound
 * probe from it will allow one). */
static int64_t full_allowed_at(const np_punch *p, const struct target *t) {
  if (t->spacer)
    return p->cfg.prime_ttl > 0 ? NEVER : 0;
  if (t->inbound || t->type == NP_CAND_HOST || t->type == NP_CAND_PORTMAP || p->peer_open)
    return 0;
  if (!our_port_known(p, t))
    return NEVER;
  if (!hold_applies(p, t))
    return 0;
  if (p->cfg.prime_ttl <= 0)
    return t->activated + p->hold; /* quiet NATs: no race to lose */
  /* We primed these before the caller could probe them, so the caller's
   * probes open the pair and we answer them. Our own full-TTL probe is only
   * a fallback (for a prime that did not open our NAT), and it must not
   * arrive before the caller has primed: on a rude NAT that closes the pair
   * for good, and we cannot know when our answer arrived (a lost TCP
   * segment of the signaling alone costs hundreds of ms). In LOCKSTEP a
   * pair works only when both ports were predicted right, and then the
   * caller's probe suffices: there we never go first. */
  if (t->round > 0)
    return NEVER;
  return p->ready_at >= 0 ? p->ready_at : t->activated + p->hold + FALLBACK_MS;
}

/* ---- flat segment (punch.h) ------------------------------------------------ */

/* A direct public target, the kind a rude gateway on our segment keeps
 * state for: the flat rules apply to it. A host address is on our LAN, a
 * port mapping is forwarded, and a target a probe came from has a mapping
 * toward us on the peer's NAT already. */
static bool flat_gated(const struct target *t) {
  return !t->inbound && t->sock == 0 && t->type != NP_CAND_HOST && t->type != NP_CAND_PORTMAP;
}

/* Both sides compute this from the same two candidate sets, so they agree
 * on the mode and (by role) on who opens and who waits. Only pairs whose
 * ports are known to each other (strategy none: both mappings
 * endpoint-independent) and that go through two NATs on different public
 * IPs; only when both sides' primers reach the discovery server (a
 * primer that dies in a router is the normal case). */
static void flat_start(np_punch *p, int64_t now) {
  bool flat = (p->cfg.self.flags & p->cfg.peer.flags & NP_SIG_CAND_FLAT) != 0 &&
              p->strategy == NP_PREDICT_NONE && p->cfg.prime_ttl > 1 && !p->peer_open &&
              !has_no_nat(&p->cfg.self) && p->cfg.self.n_mapped > 0 && p->cfg.peer.n_mapped > 0 &&
              !np_addr_same_ip(&p->cfg.self.mapped[0], &p->cfg.peer.mapped[0]);
  if (!flat)
    return;
  p->flat = true;
  p->flat_burst_end = now + FLAT_BURST_MS;
  p->flat_quiet_from = now + FLAT_EARLY_MS;
  p->flat_quiet_until = p->flat_quiet_from + FLAT_CT_TIMEOUT_MS + FLAT_MARGIN_MS;
  p->flat_keep_at = now + FLAT_KEEP_MS;
  /* On this segment a primer reaches the peer's gateway like a full probe
   * (and, unlike one, is not delivered through a full-cone NAT): none. */
  for (int i = 0; i < p->nt; i++)
    p->t[i].primed = true;
  /* The caller's probes resume at flat_quiet_until (its start is after the
   * callee's, which sent its answer behind its burst); both need the
   * session to last beyond that. */
  int64_t need = now + FLAT_EARLY_MS + FLAT_CT_TIMEOUT_MS + FLAT_MARGIN_MS + FLAT_AFTER_MS;
  if (p->deadline < need) {
    NP_LOGI(&p->log,
            "punch: flat segment: session deadline extended from %lld to %lld ms to "
            "cover the wait",
            (long long)(p->deadline - now), (long long)(need - now));
    p->deadline = need;
  }
  if (p->cfg.callee)
    NP_LOGI(&p->log,
            "punch: flat segment (our primers and the peer's reach the discovery server, so they "
            "would reach each other's gateways): we open with a %d ms full-TTL burst, then "
            "only refresh our mapping with TTL %d every %d ms; the caller waits about %d ms "
            "for the state our burst left on its gateway to expire",
            FLAT_BURST_MS, p->cfg.prime_ttl - 1, FLAT_KEEP_MS,
            FLAT_EARLY_MS + FLAT_CT_TIMEOUT_MS + FLAT_MARGIN_MS);
  else
    NP_LOGI(&p->log,
            "punch: flat segment (our primers and the peer's reach the discovery server, so they "
            "would reach each other's gateways): we probe for %d ms, then send nothing toward "
            "the peer for %d ms, until the state the callee's burst left on our gateway has "
            "expired (conntrack's %d s UDP timeout), then probe again",
            FLAT_EARLY_MS, FLAT_CT_TIMEOUT_MS + FLAT_MARGIN_MS, FLAT_CT_TIMEOUT_MS / 1000);
}

/* The send rule of the flat mode, on top of the usual one ('allowed'). */
static int64_t flat_allowed_at(np_punch *p, struct target *t, int64_t now, int64_t allowed) {
  if (!flat_gated(t))
    return allowed;
  if (p->cfg.callee)
    return now < p->flat_burst_end ? 0 : NEVER; /* then only inbound re-arms it */
  if (now >= p->flat_quiet_from && now < p->flat_quiet_until) {
    t->rto = RTO_MIN_MS; /* resume at the quick pace */
    return p->flat_quiet_until;
  }
  return allowed;
}

static int encode_request(np_punch *p, int idx, bool nominate, np_punch_datagram *dg);

/* Callee: the next TTL = depth refresh of our mapping toward a gated
 * target. Such a packet dies in our outermost NAT, which renews its entry
 * on the way in (conntrack runs before the TTL check), so the mapping
 * outlives the caller's wait while the peer's gateway sees nothing that
 * would renew its own entry. Returns 1 with *dg filled, 0 when the round
 * is done (the next one is scheduled). */
static int flat_keep_next(np_punch *p, int64_t now, np_punch_datagram *dg) {
  for (; p->flat_keep_i < p->nt; p->flat_keep_i++) {
    int i = p->flat_keep_i;
    if (!flat_gated(&p->t[i]) || p->t[i].round != 0)
      continue;
    if (!pace(p, now))
      return 0; /* wakeup covers the pace; flat_keep_at stays due */
    if (encode_request(p, i, false, dg) != 0)
      continue;
    dg->ttl = p->cfg.prime_ttl - 1;
    p->probes_sent++;
    p->flat_keep_i++;
    return 1;
  }
  p->flat_keep_i = 0;
  p->flat_keep_at = now + FLAT_KEEP_MS;
  return 0;
}

/* ---- encoding --------------------------------------------------------------- */

/* Signs with the session key, seals with FINGERPRINT and addresses the
 * datagram: the common end of every message we send. */
static int seal(np_punch *p, np_stun_writer *w, int sock, const np_addr *to,
                np_punch_datagram *dg) {
  np__stun_put_integrity_sha256(w, p->cfg.key, NP_PUNCH_KEY_LEN, 32);
  np__stun_put_fingerprint(w);
  int n = np__stun_writer_finish(w);
  if (n < 0)
    return n;
  dg->len = (size_t)n;
  dg->sock = sock;
  dg->to = *to;
  dg->ttl = 0;
  return 0;
}

static int encode_request(np_punch *p, int idx, bool nominate, np_punch_datagram *dg) {
  uint8_t txid[NP_STUN_TXID_LEN];
  uint32_t u = (uint32_t)idx;
  txid[0] = (uint8_t)(u >> 24);
  txid[1] = (uint8_t)(u >> 16);
  txid[2] = (uint8_t)(u >> 8);
  txid[3] = (uint8_t)u;
  uint8_t ctr[8];
  for (int i = 0; i < 8; i++)
    ctr[i] = (uint8_t)(p->txctr >> (8 * i));
  p->txctr++;
  crypto_shorthash(txid + 4, ctr, sizeof ctr, p->txkey);
  /* Remembered as outstanding: its answer counts once (on_success). */
  struct target *t = &p->t[idx];
  memcpy(t->tx[t->tx_next], txid + 4, TX_RAND_LEN);
  t->tx_live |= (uint8_t)(1u << t->tx_next);
  t->tx_next = (uint8_t)((t->tx_next + 1) % TX_KEEP);
  np_stun_writer w;
  np__stun_writer_init(&w, dg->buf, sizeof dg->buf, NP_STUN_BINDING | NP_STUN_REQUEST,
                      NP_STUN_MAGIC_COOKIE, txid);
  np__stun_put_bytes(&w, NP_STUN_ATTR_USERNAME, p->user_tx, p->user_len);
  if (nominate) {
    np__stun_put_bytes(&w, ATTR_NOMINATE, NULL, 0);
    np__stun_put_u32(&w, ATTR_VIA, (uint32_t)target_via(p, &p->t[idx]));
  }
  return seal(p, &w, p->t[idx].sock, &p->t[idx].to, dg);
}

static int encode_response(np_punch *p, const struct response *r, np_punch_datagram *dg) {
  np_stun_writer w;
  np__stun_writer_init(&w, dg->buf, sizeof dg->buf, NP_STUN_BINDING | NP_STUN_SUCCESS,
                      NP_STUN_MAGIC_COOKIE, r->txid);
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &r->to);
  if (r->nominate) {
    np__stun_put_bytes(&w, ATTR_NOMINATE, NULL, 0);
    np__stun_put_u32(&w, ATTR_VIA, (uint32_t)p->via);
  }
  return seal(p, &w, r->sock, &r->to, dg);
}

static int encode_keepalive(np_punch *p, np_punch_datagram *dg) {
  uint8_t txid[NP_STUN_TXID_LEN];
  rnd(p, txid, sizeof txid);
  np_stun_writer w;
  np__stun_writer_init(&w, dg->buf, sizeof dg->buf, NP_STUN_BINDING | NP_STUN_INDICATION,
                      NP_STUN_MAGIC_COOKIE, txid);
  np__stun_put_bytes(&w, NP_STUN_ATTR_USERNAME, p->user_tx, p->user_len);
  return seal(p, &w, p->t[p->sel].sock, &p->t[p->sel].to, dg);
}

/* ---- phases ----------------------------------------------------------------- */

static void fail(np_punch *p, int err, const char *reason) {
  if (p->state != NP_PUNCH_RUNNING)
    return;
  p->state = NP_PUNCH_FAILED;
  p->error = err;
  snprintf(p->reason, sizeof p->reason, "%s", reason);
  NP_LOGI(&p->log, "punch: failed: %s", p->reason);
}

static void start_round(np_punch *p, int64_t now) {
  p->round++;
  p->next_round_at = now + p->round_ms;
  /* A spray started at once goes on back to back (a round takes its
   * paced sends): the odds grow with every probe, and idle time between
   * rounds only delays the hit. */
  if (p->strategy == NP_PREDICT_SPRAY && p->predict_after == 0)
    p->next_round_at = now + (int64_t)p->bd_ports * PACE_US / 1000;
  np_addr peer_ip = p->peer_ip;
  if (!np__addr_is_set(&peer_ip) || np_addr_port(&peer_ip) == 0) {
    fail(p, NP_ERR_UNREACHABLE,
         "nothing to predict toward: the peer's public IP (the rendezvous server's view) or "
         "its mapped port is unknown");
    return;
  }
  int added = 0;
  switch (p->strategy) {
  case NP_PREDICT_SWEEP:
  case NP_PREDICT_LOCKSTEP: {
    uint16_t ports[2048];
    int n = np__predict_round(p->strategy, &p->self_m, &p->peer_m, p->cfg.callee, p->round, ports,
                             (int)(sizeof ports / sizeof ports[0]));
    for (int i = 0; i < n; i++) {
      np_addr a = peer_ip;
      np_addr_set_port(&a, ports[i]);
      int k = add_target(p, 0, &a, NP_CAND_PREDICTED);
      if (k >= 0 && !p->t[k].valid) {
        activate(p, k, now, ROUND_SENDS);
        added++;
      }
    }
    if (p->strategy == NP_PREDICT_LOCKSTEP) {
      /* Spacers: new mappings after the window, toward ports half the
       * range away from any window, so both NATs advance by exactly
       * W + S per round (predict.h); TTL-limited, they reach no one. */
      uint16_t sp[NP_PREDICT_LOCKSTEP_SPACERS];
      int nsp = np__predict_spacers(&p->peer_m, p->round, sp, NP_PREDICT_LOCKSTEP_SPACERS);
      for (int i = 0; i < nsp; i++) {
        np_addr a = peer_ip;
        np_addr_set_port(&a, sp[i]);
        int k = add_target(p, 0, &a, NP_CAND_PREDICTED);
        if (k >= 0) {
          p->t[k].spacer = true;
          activate(p, k, now, 1);
        }
      }
    }
    break;
  }
  case NP_PREDICT_SPRAY: {
    uint16_t *ports = malloc((size_t)p->bd_ports * sizeof *ports);
    uint16_t *grown = realloc(p->sprayed, (size_t)(p->nsprayed + p->bd_ports) * sizeof *grown);
    if (!ports || !grown) {
      free(ports);
      if (grown)
        p->sprayed = grown;
      break;
    }
    p->sprayed = grown;
    int n = np__predict_spray(p->cfg.random, p->cfg.random_user, p->sprayed, p->nsprayed, ports,
                             p->bd_ports);
    for (int i = 0; i < n; i++) {
      np_addr a = peer_ip;
      np_addr_set_port(&a, ports[i]);
      p->sprayed[p->nsprayed++] = ports[i];
      int k = add_target(p, 0, &a, NP_CAND_BIRTHDAY);
      if (k >= 0) {
        activate(p, k, now, 1);
        added++;
      }
    }
    free(ports);
    break;
  }
  case NP_PREDICT_SOCKETS:
    /* Many sockets, each with its own random mapping, all toward the
     * peer's one port; primed again every round to keep them open. */
    for (int s = 1; s <= p->bd_sockets; s++) {
      int k = add_target(p, s, &peer_ip, NP_CAND_BIRTHDAY);
      if (k >= 0) {
        activate(p, k, now, 1);
        p->t[k].primed = false;
        added++;
      }
    }
    break;
  case NP_PREDICT_IMPOSSIBLE:
    fail(p, NP_ERR_UNREACHABLE,
         "no direct path: one NAT assigns random ports and the other is not "
         "endpoint-independent, so neither side can predict the other (a relay is needed)");
    return;
  default:
    break;
  }
  /* The direct candidates keep going in every round, their backoff reset;
   * a side that holds fire primes them again, in case a prime was lost
   * before its NAT or refused there (a rude NAT whose state for that
   * remote came first). */
  for (int i = 0; i < p->nt; i++)
    if (p->t[i].round == 0 && p->t[i].sock == 0 && p->t[i].type != NP_CAND_PRFLX) {
      p->t[i].next = now;
      p->t[i].rto = RTO_MIN_MS;
      if (p->strategy == NP_PREDICT_HOLD && !p->t[i].inbound)
        p->t[i].primed = false;
    }
  NP_LOGD(&p->log, "punch: round %d (%s): %d target(s)", p->round,
          np__predict_strategy_name(p->strategy), added);
}

static void connect_on(np_punch *p, int idx, enum np_via peer_via, int64_t now) {
  p->state = NP_PUNCH_CONNECTED;
  p->sel = idx;
  p->via = merge_via(target_via(p, &p->t[idx]), peer_via);
  p->connected_at = now;
  p->next_keepalive = now + p->keepalive;
  char a[NP_ADDRSTRLEN];
  NP_LOGI(&p->log, "punch: connected to %s on socket %d via %s after %lld ms, %u probes",
          np_addr_format(&p->t[idx].to, a, sizeof a), p->t[idx].sock, np_via_name(p->via),
          (long long)(now - p->start), p->probes_sent);
}

/* ---- np__punch_next ------------------------------------------------------------- */

/* Token bucket: PACE_BURST probes at once, then one per PACE_US. Loops are
 * bounded by PACE_BURST. */
static bool pace(np_punch *p, int64_t now) {
  int64_t us = now * 1000;
  if (p->pace_next_us == 0)
    p->pace_next_us = us;
  for (int i = 0; i < PACE_BURST && p->pace_tokens < PACE_BURST && p->pace_next_us <= us; i++) {
    p->pace_tokens++;
    p->pace_next_us += PACE_US;
  }
  if (p->pace_tokens == PACE_BURST && p->pace_next_us < us)
    p->pace_next_us = us; /* an idle bucket does not bank more than a burst */
  if (p->pace_tokens == 0)
    return false;
  p->pace_tokens--;
  return true;
}

int np__punch_next(np_punch *p, int64_t now, np_punch_datagram *dg) {
  /* Responses go first, unpaced: they complete a check the peer is
   * timing. */
  while (p->nresp > 0) {
    struct response r = p->resp[0];
    memmove(p->resp, p->resp + 1, (size_t)(--p->nresp) * sizeof p->resp[0]);
    if (encode_response(p, &r, dg) == 0)
      return 1;
  }
  if (p->state == NP_PUNCH_CONNECTED) {
    /* The caller is connected as soon as a check succeeds; its nomination
     * goes on until the callee confirms it. */
    if (p->nominating >= 0 && now >= p->nom_next && p->nom_sends < NOMINATE_SENDS &&
        pace(p, now) && encode_request(p, p->nominating, true, dg) == 0) {
      p->nom_sends++;
      p->nom_next = now + p->nom_rto;
      p->nom_rto = p->nom_rto * 2 > RTO_MAX_MS ? RTO_MAX_MS : p->nom_rto * 2;
      p->probes_sent++;
      return 1;
    }
    /* Callee: fresh checks of pairs the caller nominated since. */
    for (int i = 0; p->pending_moves > 0 && i < p->nt; i++) {
      struct target *t = &p->t[i];
      if (!t->nominated || !t->active || t->next > now)
        continue;
      if (!pace(p, now) || encode_request(p, i, false, dg) != 0)
        break;
      p->probes_sent++;
      t->sends++;
      t->next = now + t->rto;
      t->rto = t->rto * 2 > RTO_MAX_MS ? RTO_MAX_MS : t->rto * 2;
      if (t->sends >= t->max_sends) {
        t->active = false; /* unanswered: the path stays where it is */
        t->nominated = false;
        p->pending_moves--;
      }
      return 1;
    }
    if (now >= p->next_keepalive) {
      p->next_keepalive = now + p->keepalive;
      if (encode_keepalive(p, dg) == 0)
        return 1;
    }
    return 0;
  }
  if (p->state != NP_PUNCH_RUNNING)
    return 0;
  if (now >= p->deadline) {
    char d[160];
    snprintf(d, sizeof d,
             "no direct path before the timeout (%s, %d round(s), %u probes sent, %u received)",
             np__predict_strategy_name(p->strategy), p->round, p->probes_sent, p->probes_received);
    fail(p, NP_ERR_TIMEOUT, d);
    return 0;
  }
  if (p->probes_sent >= (uint32_t)p->max_probes) {
    char d[80];
    snprintf(d, sizeof d, "probe budget (%d) spent without a path", p->max_probes);
    fail(p, NP_ERR_TIMEOUT, d);
    return 0;
  }
  if (p->nominating >= 0 && now >= p->nom_next && p->nom_sends >= NOMINATE_SENDS) {
    NP_LOGD(&p->log, "punch: nomination unanswered; back to probing");
    p->t[p->nominating].valid = false;
    p->nominating = -1;
  }
  if (now >= p->next_round_at && p->nominating < 0) {
    start_round(p, now);
    if (p->state != NP_PUNCH_RUNNING)
      return 0;
  }
  /* Nomination retransmits. */
  if (p->nominating >= 0 && now >= p->nom_next) {
    if (pace(p, now) && encode_request(p, p->nominating, true, dg) == 0) {
      p->nom_sends++;
      p->nom_next = now + p->nom_rto;
      p->nom_rto = p->nom_rto * 2 > RTO_MAX_MS ? RTO_MAX_MS : p->nom_rto * 2;
      p->probes_sent++;
      return 1;
    } else {
      return 0;
    }
  }
  if (p->flat && p->cfg.callee && now >= p->flat_keep_at && flat_keep_next(p, now, dg))
    return 1;
  for (int i = 0; i < p->nt; i++) {
    struct target *t = &p->t[i];
    if (!t->active || t->next > now)
      continue;
    bool prime = needs_prime(p, t) && !t->primed;
    int64_t allowed = prime ? 0 : full_allowed_at(p, t);
    if (p->flat)
      allowed = flat_allowed_at(p, t, now, allowed);
    if (allowed > now) {
      t->next = allowed; /* NEVER until an inbound probe re-arms it */
      continue;
    }
    if (!pace(p, now))
      return 0;
    if (encode_request(p, i, false, dg) != 0) {
      t->active = false;
      continue;
    }
    p->probes_sent++;
    if (prime) {
      t->primed = true;
      dg->ttl = p->cfg.prime_ttl;
      t->next = now; /* the full probe, when allowed, right behind it */
      return 1;
    }
    t->sends++;
    t->next = now + t->rto;
    t->rto = t->rto * 2 > RTO_MAX_MS ? RTO_MAX_MS : t->rto * 2;
    if (t->max_sends && t->sends >= t->max_sends)
      t->active = false;
    return 1;
  }
  return 0;
}

int64_t np__punch_wakeup(const np_punch *p) {
  if (p->nresp > 0)
    return 0;
  if (p->state == NP_PUNCH_CONNECTED) {
    int64_t w = p->next_keepalive;
    if (p->nominating >= 0 && p->nom_sends < NOMINATE_SENDS && p->nom_next < w)
      w = p->nom_next;
    for (int i = 0; p->pending_moves > 0 && i < p->nt; i++)
      if (p->t[i].nominated && p->t[i].active && p->t[i].next < w)
        w = p->t[i].next;
    if (p->pending_moves > 0 && p->pace_tokens == 0 && w < p->pace_next_us / 1000 + 1)
      w = p->pace_next_us / 1000 + 1;
    return w;
  }
  if (p->state != NP_PUNCH_RUNNING)
    return NEVER;
  int64_t w = p->deadline;
  if (p->nominating < 0 && p->next_round_at < w)
    w = p->next_round_at;
  if (p->nominating >= 0 && p->nom_next < w)
    w = p->nom_next;
  for (int i = 0; i < p->nt; i++)
    if (p->t[i].active && p->t[i].next < w)
      w = p->t[i].next;
  if (p->flat && p->cfg.callee && p->flat_keep_at < w)
    w = p->flat_keep_at;
  if (p->pace_tokens == 0 && w < p->pace_next_us / 1000 + 1)
    w = p->pace_next_us / 1000 + 1;
  return w;
}

/* ---- input ------------------------------------------------------------------ */

/* Our attributes, which np__stun_read() skips as unknown
 * comprehension-optional ones: a bounded walk over a message it accepted,
 * stopping at the integrity attribute (what follows is not covered). */
static void read_ours(const uint8_t *buf, size_t len, bool *nominate, uint32_t *via) {
  size_t off = NP_STUN_HEADER_LEN;
  while (off + 4 <= len) {
    uint16_t type = (uint16_t)(buf[off] << 8 | buf[off + 1]);
    size_t alen = (size_t)(buf[off + 2] << 8 | buf[off + 3]);
    if (off + 4 + alen > len || type == NP_STUN_ATTR_MESSAGE_INTEGRITY_SHA256 ||
        type == NP_STUN_ATTR_MESSAGE_INTEGRITY)
      return;
    if (type == ATTR_NOMINATE)
      *nominate = true;
    if (type == ATTR_VIA && alen == 4)
      *via = (uint32_t)buf[off + 4] << 24 | (uint32_t)buf[off + 5] << 16 |
             (uint32_t)buf[off + 6] << 8 | buf[off + 7];
    off += 4 + ((alen + 3) & ~(size_t)3);
  }
}

static void queue_response(np_punch *p, int sock, const np_addr *to,
                           const uint8_t txid[NP_STUN_TXID_LEN], bool nominate) {
  if (p->nresp == MAX_RESPONSES)
    return; /* the peer retransmits */
  struct response *r = &p->resp[p->nresp++];
  r->sock = sock;
  r->to = *to;
  memcpy(r->txid, txid, NP_STUN_TXID_LEN);
  r->nominate = nominate;
}

/* Callee: takes (or moves to) the nominated pair i, which it has validated. */
static void take_nomination(np_punch *p, int i, uint32_t via, int64_t now) {
  enum np_via v = via <= NP_VIA_BIRTHDAY ? (enum np_via)via : NP_VIA_NONE;
  if (p->state == NP_PUNCH_RUNNING) {
    connect_on(p, i, v, now);
  } else if (p->state == NP_PUNCH_CONNECTED && i != p->sel) {
    /* The caller lost our answer to its nomination and nominated again,
     * another pair: follow it, since that is the pair it uses, now that
     * a fresh round trip showed the peer is there. */
    char a[NP_ADDRSTRLEN];
    NP_LOGI(&p->log, "punch: the caller moved the path to %s (socket %d)",
            np_addr_format(&p->t[i].to, a, sizeof a), p->t[i].sock);
    p->sel = i;
  }
}

static void on_request(np_punch *p, int64_t now, int sock, const np_addr *from,
                       const np_stun_msg *m, bool nominate, uint32_t via) {
  int i = find_target(p, sock, from);
  if (i < 0) {
    /* Not one of our targets: a peer-reflexive address. It gets answers
     * and checks only if it is where the peer can be; anything else is a
     * request spoofed or replayed from a third host, which must not make
     * us send there. */
    const char *why = np__checklist_aim(&p->cfg.self, &p->seen, from, NP_CAND_PRFLX);
    if (why) {
      char a[NP_ADDRSTRLEN];
      NP_LOGD(&p->log, "punch: request from %s not answered: %s",
              np_addr_format(from, a, sizeof a), why);
      return;
    }
    i = add_target(p, sock, from, NP_CAND_PRFLX);
    if (i >= 0)
      p->t[i].round = p->round;
  }
  if (i < 0)
    return;
  struct target *t = &p->t[i];
  bool callee_nom = nominate && p->cfg.callee;
  if (p->state == NP_PUNCH_RUNNING) {
    if (!t->inbound || !t->active) {
      /* Triggered check: the peer's NAT now holds a mapping toward us on
       * this pair, so a full probe back is safe and fast. */
      t->inbound = true;
      int keep_round = t->round;
      activate(p, i, now, t->round == 0 && t->type != NP_CAND_PRFLX ? 0 : TRIGGERED_SENDS);
      t->round = keep_round;
      t->primed = true;
    }
    if (callee_nom) {
      if (t->valid) {
        take_nomination(p, i, via, now);
      } else {
        /* Not validated by a round trip of ours yet: honoured when the
         * triggered check succeeds (on_success). */
        t->nominated = true;
        t->nom_via = via;
      }
    }
  } else if (p->state == NP_PUNCH_CONNECTED && callee_nom && i != p->sel && !t->nominated &&
             p->probes_sent + TRIGGERED_SENDS <= (uint32_t)p->max_probes) {
    /* (Within the session's probe budget: a peer that nominates pair
     * after pair once connected gets no more than any session.) */
    /* A nomination of another pair once connected: a fresh check of that
     * pair first, whatever it proved before (a replay from an address
     * the peer has left must not take the path there). */
    t->nominated = true;
    t->nom_via = via;
    t->valid = false;
    t->inbound = true;
    activate(p, i, now, TRIGGERED_SENDS);
    t->primed = true;
    p->pending_moves++;
  }
  /* The answer says NOMINATE only for the pair we have taken: the caller
   * retransmits its nomination until it sees one. */
  queue_response(p, sock, from, m->txid,
                 callee_nom && p->state == NP_PUNCH_CONNECTED && i == p->sel);
}

/* Consumes the outstanding transaction of t that txid answers; false when
 * there is none (a replayed or stale answer). */
static bool consume_tx(struct target *t, const uint8_t txid[NP_STUN_TXID_LEN]) {
  for (int k = 0; k < TX_KEEP; k++)
    if ((t->tx_live & (1u << k)) &&
        sodium_memcmp(t->tx[k], txid + 4, TX_RAND_LEN) == 0) {
      t->tx_live = (uint8_t)(t->tx_live & ~(1u << k));
      return true;
    }
  return false;
}

static bool on_success(np_punch *p, int64_t now, int sock, const np_addr *from,
                       const np_stun_msg *m, bool nominate, uint32_t via) {
  uint32_t idx = (uint32_t)m->txid[0] << 24 | (uint32_t)m->txid[1] << 16 |
                 (uint32_t)m->txid[2] << 8 | m->txid[3];
  if (idx >= (uint32_t)p->nt)
    return false;
  struct target *t = &p->t[idx];
  /* A check is valid only if the answer came back on the same pair, for a
   * transaction still outstanding: each counts once. */
  if (t->sock != sock || !np_addr_equal(&t->to, from) || !consume_tx(t, m->txid))
    return false;
  t->valid = true;
  if (p->cfg.callee) {
    if (t->nominated) {
      t->nominated = false;
      if (p->state == NP_PUNCH_CONNECTED && p->pending_moves > 0)
        p->pending_moves--;
      take_nomination(p, (int)idx, t->nom_via, now);
    }
    return true;
  }
  if (nominate && p->nominating == (int)idx) {
    /* The callee took the pair: nothing more to send; adopt its view of
     * how the pair was found if it is the stronger one. */
    p->nominating = -1;
    if (p->state == NP_PUNCH_CONNECTED && via <= NP_VIA_BIRTHDAY)
      p->via = merge_via(p->via, (enum np_via)via);
    return true;
  }
  if (p->state != NP_PUNCH_RUNNING || p->nominating >= 0)
    return true;
  /* This pair works both ways: use it now (data may flow at once; the
   * callee keeps early data until the nomination reaches it) and nominate
   * it. Connecting here rather than on the nomination's answer saves the
   * caller a round trip. */
  p->nominating = (int)idx;
  p->nom_sends = 0;
  p->nom_rto = RTO_MIN_MS;
  p->nom_next = now;
  /* The peer saw us at our port mapping: the path enters through the
   * gateway's forwarded port (the peer's view, which reaches us only with
   * the nomination's answer). */
  enum np_via hint = NP_VIA_NONE;
  if ((m->present & NP_STUN_HAS_XOR_MAPPED) && np__addr_is_set(&p->cfg.self.portmap) &&
      np_addr_equal(&m->xor_mapped, &p->cfg.self.portmap))
    hint = NP_VIA_PORTMAP;
  connect_on(p, (int)idx, hint, now);
  return true;
}

bool np__punch_input(np_punch *p, int64_t now, int sock, const np_addr *from, const uint8_t *buf,
                    size_t len) {
  if (!np__stun_is_stun(buf, len))
    return false;
  np_stun_msg m;
  if (np__stun_read(buf, len, &m) != 0 || m.method != NP_STUN_BINDING || m.rfc3489 ||
      !(m.present & NP_STUN_HAS_INTEGRITY_SHA256))
    return false;
  if (m.cls == NP_STUN_REQUEST || m.cls == NP_STUN_INDICATION) {
    /* Requests carry the sender's role: our own reflected back is refused. */
    if (!(m.present & NP_STUN_HAS_USERNAME) || m.username_len != p->user_len ||
        memcmp(m.username, p->user_rx, p->user_len) != 0)
      return false;
  } else if (m.cls != NP_STUN_SUCCESS) {
    return false;
  }
  if (np__stun_check_integrity_sha256(buf, len, &m, p->cfg.key, NP_PUNCH_KEY_LEN) != 0) {
    NP_LOGD(&p->log, "punch: probe with a bad integrity check ignored");
    return false;
  }
  bool nominate = false;
  uint32_t via = 0;
  read_ours(buf, len, &nominate, &via);
  if (m.cls == NP_STUN_REQUEST) {
    p->probes_received++;
    on_request(p, now, sock, from, &m, nominate, via);
  } else if (m.cls == NP_STUN_SUCCESS) {
    if (!on_success(p, now, sock, from, &m, nominate, via))
      return false; /* not an answer to anything outstanding: a replay */
    p->probes_received++;
  }
  return true;
}

void np__punch_result_get(const np_punch *p, np_punch_result *out) {
  memset(out, 0, sizeof *out);
  out->state = p->state;
  out->strategy = p->strategy;
  out->probes_sent = p->probes_sent;
  out->probes_received = p->probes_received;
  out->rounds = (uint32_t)p->round;
  out->sockets = p->max_sock;
  if (p->state == NP_PUNCH_CONNECTED) {
    out->sock = p->t[p->sel].sock;
    out->remote = p->t[p->sel].to;
    out->via = p->via;
    out->elapsed_ms = p->connected_at - p->start;
  }
  out->error = p->error;
  memcpy(out->reason, p->reason, sizeof out->reason);
}

bool np__punch_path(const np_punch *p, int *sock, np_addr *remote) {
  if (p->state != NP_PUNCH_CONNECTED)
    return false;
  *sock = p->t[p->sel].sock;
  *remote = p->t[p->sel].to;
  return true;
}

int np__punch_sockets(const np_punch *p) {
  return p->max_sock;
}
