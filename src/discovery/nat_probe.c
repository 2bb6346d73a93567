/*
 * NAT probe: RFC 5780 behaviour discovery plus the two-server port delta.
 *
 * The state machine (np_nat_probe_*) is pure; np_probe_run() at the bottom
 * is the blocking I/O shell around it.
 */
#include "discovery/nat_probe.h"

#include "net/addr.h"
#include "net/udp.h"
#include "util/clock.h"
#include "util/log.h"
#include "traversal/predict.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_RTO_MS 250
#define DEFAULT_TIMEOUT_MS 3000
/* RFC 8489 §6.2.1 suggests Rc = 7 transmissions over ~40 s; we stop after
 * this many (0, RTO, 3 RTO, 7 RTO, ...) because a probe must answer within a
 * few seconds, and then wait LAST_WAIT_RTOS more RTOs for a late answer. */
#define MAX_SENDS 4
#define LAST_WAIT_RTOS 4
/* The quick mode (gathering for a session) resends every RTO, without
 * doubling, until its short timeout: with 10 % loss each way a doubling
 * schedule leaves ~3 useful tries in 1.5 s and loses one view in ~1 %
 * of transactions, and a missing view costs the session its delta. It is
 * two small requests, to our own servers, for at most a few seconds. */
#define QUICK_MAX_SENDS 16
/* The quick mode's third view (servers[0]'s alternate address and port) is
 * a bonus: once both servers have answered it gets this many RTOs from its
 * first request, not the whole timeout, so an alternate port that a
 * firewall drops costs the session little. */
#define ALT_GRACE_RTOS 4

/* The transactions of one probe, in the order their first datagrams go out. */
enum txn_id {
  TX_SERVER1, /* Binding to servers[0]: mapping M1, OTHER-ADDRESS */
  TX_SERVER2, /* Binding to servers[1]: second view, for the delta */
  TX_MAP2,    /* RFC 5780 §4.3 test II: to alternate IP, primary port */
  TX_MAP3,    /* §4.3 test III: to alternate IP and port */
  TX_HAIRPIN, /* §4.5: a request to our own mapped address */
  TX_FILT2,   /* §4.4 test II: CHANGE-REQUEST ip+port, on the FILTER socket */
  TX_FILT3,   /* §4.4 test III: CHANGE-REQUEST port */
  TX_COUNT
};

enum txn_state { TS_IDLE = 0, TS_PENDING, TS_DONE, TS_FAILED, TS_SKIPPED };

struct txn {
  enum txn_state state;
  int sock;
  np_addr to;
  uint32_t change; /* CHANGE-REQUEST flags, 0 for none */
  uint8_t txid[NP_STUN_TXID_LEN];
  int sends;
  int64_t first_sent;
  int order; /* 1 + how many first requests went before ours; 0 unsent */
  int64_t next_send;
  int64_t rto;
  int err;        /* why it failed: NP_ERR_TIMEOUT / _UNREACHABLE / _PROTO */
  int error_code; /* STUN ERROR-CODE of an error response */
  int rtt_ms;
  np_addr mapped; /* XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS) */
  np_addr source; /* where the response really came from */
  np_addr other;  /* OTHER-ADDRESS, if any */
};

struct np_nat_probe {
  np_probe_config cfg;
  np_logger log;
  np_addr local_main;
  np_random_fn random;
  void *random_user;
  int64_t started;
  int64_t deadline;
  int rto;
  int first_sends; /* new (socket, destination) pairs sent to: mappings made */
  struct txn tx[TX_COUNT];
};

static const char *const txn_names[TX_COUNT] = {
    "server 1",         "server 2",          "mapping test II",   "mapping test III",
    "hairpinning test", "filtering test II", "filtering test III"};

static void default_random(void *user, uint8_t *buf, size_t len) {
  (void)user;
  if (np__random_bytes(buf, len) != 0) {
    /* getrandom cannot fail once the pool is up; this is only a fallback
     * to keep IDs distinct, they need not be secret for a probe. */
    static const uint8_t pattern[] = "natpunch-probe!";
    for (size_t i = 0; i < len; i++)
      buf[i] ^= pattern[i % (sizeof pattern - 1)] + (uint8_t)i;
  }
}

static void txn_start(np_nat_probe *p, enum txn_id id, int sock, const np_addr *to, uint32_t change,
                      int64_t now) {
  struct txn *t = &p->tx[id];
  t->state = TS_PENDING;
  t->sock = sock;
  t->to = *to;
  t->change = change;
  t->sends = 0;
  t->order = 0;
  t->next_send = now;
  t->rto = p->rto;
  t->rtt_ms = -1;
  p->random(p->random_user, t->txid, sizeof t->txid);
}

static void txn_fail(np_nat_probe *p, enum txn_id id, int err) {
  struct txn *t = &p->tx[id];
  if (t->state != TS_PENDING)
    return;
  t->state = TS_FAILED;
  t->err = err;
  NP_LOGD(&p->log, "probe: %s failed: %s", txn_names[id], np_strerror(err));
}

int np__nat_probe_new(const np_probe_config *cfg, const np_addr *local_main,
                     np_random_fn random, void *random_user, int64_t now,
                     np_nat_probe **out) {
  *out = NULL;
  if (!cfg || cfg->n_servers < 1 || cfg->n_servers > NP_PROBE_MAX_SERVERS)
    return NP_ERR_INVAL;
  for (int i = 0; i < cfg->n_servers; i++)
    if (!np__addr_is_set(&cfg->servers[i]) || np_addr_port(&cfg->servers[i]) == 0)
      return NP_ERR_INVAL;
  if (cfg->rto_ms < 0 || cfg->timeout_ms < 0)
    return NP_ERR_INVAL;
  np_nat_probe *p = calloc(1, sizeof *p);
  if (!p)
    return NP_ERR_NOMEM;
  p->cfg = *cfg;
  p->log = (np_logger){cfg->log, cfg->log_user, cfg->log_level};
  if (local_main)
    p->local_main = *local_main;
  p->random = random ? random : default_random;
  p->random_user = random_user;
  p->rto = cfg->rto_ms ? cfg->rto_ms : DEFAULT_RTO_MS;
  p->started = now;
  p->deadline = now + (cfg->timeout_ms ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS);

  txn_start(p, TX_SERVER1, NP_PROBE_SOCK_MAIN, &cfg->servers[0], 0, now);
  if (cfg->n_servers > 1)
    txn_start(p, TX_SERVER2, NP_PROBE_SOCK_MAIN, &cfg->servers[1], 0, now);
  if (cfg->quick) {
    /* Only the views: the two servers now, servers[0]'s alternate address
     * and port when its answer names it (on_server1_answer). Any other
     * destination would be one more mapping on a symmetric NAT, and the
     * traversal engine counts on the last view being the last mapping. */
    for (int i = TX_MAP2; i < TX_COUNT; i++)
      if (i != TX_MAP3)
        p->tx[i].state = TS_SKIPPED;
    *out = p;
    return 0;
  }
  /* Filtering tests need nothing from the first answer, so they start at
   * once, on their own socket; if the server lacks RFC 5780 they come back
   * as errors or from the wrong origin and the verdict stays unknown. */
  txn_start(p, TX_FILT2, NP_PROBE_SOCK_FILTER, &cfg->servers[0],
            NP_STUN_CHANGE_IP | NP_STUN_CHANGE_PORT, now);
  txn_start(p, TX_FILT3, NP_PROBE_SOCK_FILTER, &cfg->servers[0], NP_STUN_CHANGE_PORT, now);
  *out = p;
  return 0;
}

void np__nat_probe_free(np_nat_probe *p) {
  free(p);
}

/* Starts what the first server's answer makes possible: the mapping tests
 * (they need OTHER-ADDRESS) and the hairpinning test (it needs M1). */
static void on_server1_answer(np_nat_probe *p, int64_t now) {
  const struct txn *s1 = &p->tx[TX_SERVER1];
  if (p->cfg.quick) {
    /* A third view for the stride. Not when the alternate is one of the
     * servers we already asked (a deployment may put server 2 on server
     * 1's alternate IP): the same destination makes no new mapping. */
    const np_addr *o = &s1->other;
    bool usable = np__addr_is_set(o) && o->u.sa.sa_family == s1->mapped.u.sa.sa_family &&
                  np_addr_port(o) != 0;
    for (int i = 0; usable && i < p->cfg.n_servers; i++)
      usable = !np_addr_equal(o, &p->cfg.servers[i]);
    if (usable)
      txn_start(p, TX_MAP3, NP_PROBE_SOCK_MAIN, o, 0, now);
    else
      p->tx[TX_MAP3].state = TS_SKIPPED;
    return;
  }
  const np_addr *m1 = &s1->mapped;
  bool behind_nat = !np_addr_equal(m1, &p->local_main);
  if (np__addr_is_set(&s1->other) && s1->other.u.sa.sa_family == m1->u.sa.sa_family &&
      !np_addr_same_ip(&s1->other, &p->cfg.servers[0])) {
    np_addr alt_ip_primary_port = s1->other;
    np_addr_set_port(&alt_ip_primary_port, np_addr_port(&p->cfg.servers[0]));
    txn_start(p, TX_MAP2, NP_PROBE_SOCK_MAIN, &alt_ip_primary_port, 0, now);
    txn_start(p, TX_MAP3, NP_PROBE_SOCK_MAIN, &s1->other, 0, now);
  } else {
    NP_LOGI(&p->log, "probe: first server offers no usable OTHER-ADDRESS; "
                     "mapping and filtering stay unknown");
    p->tx[TX_FILT2].state = TS_SKIPPED;
    p->tx[TX_FILT3].state = TS_SKIPPED;
  }
  /* Hairpinning is a property of a NAT; without one the request would just
   * loop back through the host and prove nothing. */
  if (!p->cfg.no_hairpin && behind_nat)
    txn_start(p, TX_HAIRPIN, NP_PROBE_SOCK_MAIN, m1, 0, now);
}

static int max_sends(const np_nat_probe *p) {
  return p->cfg.quick ? QUICK_MAX_SENDS : MAX_SENDS;
}

static void expire(np_nat_probe *p, int64_t now) {
  for (int i = 0; i < TX_COUNT; i++) {
    struct txn *t = &p->tx[i];
    if (t->state != TS_PENDING)
      continue;
    if (now >= p->deadline || (t->sends >= max_sends(p) && now >= t->next_send))
      txn_fail(p, (enum txn_id)i, NP_ERR_TIMEOUT);
  }
  if (p->cfg.quick && p->tx[TX_MAP3].state == TS_PENDING && p->tx[TX_MAP3].sends > 0 &&
      p->tx[TX_SERVER2].state != TS_PENDING &&
      now >= p->tx[TX_MAP3].first_sent + (int64_t)p->rto * ALT_GRACE_RTOS)
    txn_fail(p, TX_MAP3, NP_ERR_TIMEOUT);
  if (p->tx[TX_SERVER1].state == TS_FAILED) {
    /* Without the first server's answer no RFC 5780 test can be judged. */
    for (int i = TX_MAP2; i < TX_COUNT; i++)
      if (p->tx[i].state == TS_PENDING || p->tx[i].state == TS_IDLE)
        p->tx[i].state = TS_SKIPPED;
  }
}

static size_t encode_request(const struct txn *t, uint8_t *buf, size_t cap) {
  np_stun_writer w;
  np__stun_writer_init(&w, buf, cap, NP_STUN_BINDING | NP_STUN_REQUEST, NP_STUN_MAGIC_COOKIE,
                      t->txid);
  if (t->change)
    np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, t->change);
  np__stun_put_fingerprint(&w);
  int n = np__stun_writer_finish(&w);
  return n > 0 ? (size_t)n : 0;
}

int np__nat_probe_next_datagram(np_nat_probe *p, int64_t now, np_probe_datagram *dg) {
  expire(p, now);
  for (int i = 0; i < TX_COUNT; i++) {
    struct txn *t = &p->tx[i];
    int most = max_sends(p);
    if (t->state != TS_PENDING || now < t->next_send || t->sends >= most)
      continue;
    size_t n = encode_request(t, dg->buf, sizeof dg->buf);
    if (n == 0) {
      txn_fail(p, (enum txn_id)i, NP_ERR_NOSPACE);
      continue;
    }
    dg->len = n;
    dg->sock = t->sock;
    dg->to = t->to;
    if (t->sends == 0) {
      t->first_sent = now;
      /* Each first request from a socket to a destination it has not
       * sent to is a mapping on a symmetric NAT, answered or not (the
       * FILTER socket's too: a sequential NAT has one counter): the views'
       * places among them. */
      bool seen = false;
      for (int j = 0; j < TX_COUNT && !seen; j++)
        seen = j != i && p->tx[j].order > 0 && p->tx[j].sock == t->sock &&
               np_addr_equal(&p->tx[j].to, &t->to);
      if (!seen)
        t->order = ++p->first_sends;
    }
    t->sends++;
    /* After the last transmission, wait a few RTOs for a late answer. */
    t->next_send = now + (t->sends < most ? t->rto : (int64_t)p->rto * LAST_WAIT_RTOS);
    if (!p->cfg.quick)
      t->rto *= 2;
    return 1;
  }
  return 0;
}

static int find_txn(const np_nat_probe *p, const uint8_t txid[NP_STUN_TXID_LEN]) {
  for (int i = 0; i < TX_COUNT; i++)
    if (p->tx[i].state != TS_IDLE && memcmp(p->tx[i].txid, txid, NP_STUN_TXID_LEN) == 0)
      return i;
  return -1;
}

void np__nat_probe_input(np_nat_probe *p, int64_t now, int sock, const np_addr *from,
                        const uint8_t *buf, size_t len) {
  np_stun_msg msg;
  if (np__stun_read(buf, len, &msg) != 0 || msg.method != NP_STUN_BINDING || msg.rfc3489)
    return;
  int id = find_txn(p, msg.txid);
  if (id < 0 || p->tx[id].state != TS_PENDING || p->tx[id].sock != sock)
    return;
  struct txn *t = &p->tx[id];

  if (id == TX_HAIRPIN) {
    /* Success is our own request coming back to us through the NAT. */
    if (msg.cls == NP_STUN_REQUEST) {
      t->state = TS_DONE;
      t->source = *from;
    }
    return;
  }
  if (msg.cls == NP_STUN_ERROR) {
    t->error_code = (msg.present & NP_STUN_HAS_ERROR_CODE) ? msg.error_code : 0;
    txn_fail(p, (enum txn_id)id, NP_ERR_PROTO);
    return;
  }
  if (msg.cls != NP_STUN_SUCCESS)
    return;
  if (msg.present & NP_STUN_HAS_XOR_MAPPED)
    t->mapped = msg.xor_mapped;
  else if (msg.present & NP_STUN_HAS_MAPPED)
    t->mapped = msg.mapped;
  else {
    txn_fail(p, (enum txn_id)id, NP_ERR_PROTO);
    return;
  }
  if (msg.present & NP_STUN_HAS_OTHER_ADDRESS)
    t->other = msg.other_address;
  t->source = *from;
  t->rtt_ms = t->sends == 1 ? (int)(now - t->first_sent) : -1;
  t->state = TS_DONE;
  if (id == TX_SERVER1)
    on_server1_answer(p, now);
}

void np__nat_probe_unreachable(np_nat_probe *p, int64_t now, int sock, const np_addr *to) {
  (void)now;
  for (int i = 0; i < TX_COUNT; i++) {
    struct txn *t = &p->tx[i];
    if (t->state == TS_PENDING && t->sock == sock && np_addr_equal(&t->to, to))
      txn_fail(p, (enum txn_id)i, NP_ERR_UNREACHABLE);
  }
  expire(p, now);
}

int64_t np__nat_probe_wakeup(const np_nat_probe *p) {
  int64_t w = INT64_MAX;
  for (int i = 0; i < TX_COUNT; i++)
    if (p->tx[i].state == TS_PENDING && p->tx[i].next_send < w)
      w = p->tx[i].next_send;
  const struct txn *alt = &p->tx[TX_MAP3];
  if (p->cfg.quick && alt->state == TS_PENDING && alt->sends > 0 &&
      alt->first_sent + (int64_t)p->rto * ALT_GRACE_RTOS < w)
    w = alt->first_sent + (int64_t)p->rto * ALT_GRACE_RTOS;
  return w < p->deadline ? w : p->deadline;
}

/* Filtering test II can be cut short: once it is answered, test III cannot
 * change the verdict (endpoint-independent). */
static bool filtering_settled(const np_nat_probe *p) {
  if (p->tx[TX_FILT2].state == TS_DONE)
    return true;
  return p->tx[TX_FILT2].state != TS_PENDING && p->tx[TX_FILT3].state != TS_PENDING;
}

bool np__nat_probe_done(const np_nat_probe *p) {
  for (int i = 0; i < TX_COUNT; i++) {
    if ((i == TX_FILT2 || i == TX_FILT3) && filtering_settled(p))
      continue;
    if (p->tx[i].state == TS_PENDING)
      return false;
  }
  return true;
}

/* A CHANGE-REQUEST answer counts only if it really came from where RFC 5780
 * says it must; a server that ignored the flag would otherwise make every
 * NAT look endpoint-independent. */
static bool came_from_changed(const struct txn *t, const np_addr *server, bool ip, bool port) {
  if (t->state != TS_DONE)
    return false;
  bool ip_changed = !np_addr_same_ip(&t->source, server);
  bool port_changed = np_addr_port(&t->source) != np_addr_port(server);
  return ip_changed == ip && port_changed == port;
}

static enum np_nat_behavior classify_mapping(const np_nat_probe *p) {
  const struct txn *s1 = &p->tx[TX_SERVER1], *m2 = &p->tx[TX_MAP2], *m3 = &p->tx[TX_MAP3];
  if (s1->state != TS_DONE)
    return NP_BEHAVIOR_UNKNOWN;
  if (np_addr_equal(&s1->mapped, &p->local_main))
    return NP_BEHAVIOR_ENDPOINT_INDEPENDENT; /* no translation at all */
  if (m2->state != TS_DONE)
    return NP_BEHAVIOR_UNKNOWN;
  if (np_addr_equal(&m2->mapped, &s1->mapped))
    return NP_BEHAVIOR_ENDPOINT_INDEPENDENT;
  if (m3->state != TS_DONE)
    return NP_BEHAVIOR_UNKNOWN;
  return np_addr_equal(&m3->mapped, &m2->mapped) ? NP_BEHAVIOR_ADDRESS_DEPENDENT
                                                 : NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT;
}

static enum np_nat_behavior classify_filtering(const np_nat_probe *p) {
  const np_addr *server = &p->cfg.servers[0];
  const struct txn *f2 = &p->tx[TX_FILT2], *f3 = &p->tx[TX_FILT3];
  if (p->tx[TX_SERVER1].state != TS_DONE || !np__addr_is_set(&p->tx[TX_SERVER1].other))
    return NP_BEHAVIOR_UNKNOWN;
  if (came_from_changed(f2, server, true, true))
    return NP_BEHAVIOR_ENDPOINT_INDEPENDENT;
  if (f2->state == TS_DONE || (f2->state == TS_FAILED && f2->err != NP_ERR_TIMEOUT))
    return NP_BEHAVIOR_UNKNOWN; /* answered from the wrong place, or refused */
  if (f2->state != TS_FAILED)
    return NP_BEHAVIOR_UNKNOWN;
  if (came_from_changed(f3, server, false, true))
    return NP_BEHAVIOR_ADDRESS_DEPENDENT;
  if (f3->state == TS_FAILED && f3->err == NP_ERR_TIMEOUT)
    return NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT;
  return NP_BEHAVIOR_UNKNOWN;
}

/* The views in the order their mappings were made, without the ones an
 * address-dependent NAT answered from a mapping already listed; then the
 * verdict on them (np__predict_classify()). */
static void collect_views(const np_nat_probe *p, np_probe_result *out) {
  static const enum txn_id ids[] = {TX_SERVER1, TX_SERVER2, TX_MAP2, TX_MAP3};
  const struct txn *v[NP_PROBE_MAX_VIEWS];
  int n = 0;
  for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
    if (p->tx[ids[i]].state == TS_DONE && p->tx[ids[i]].order > 0 && n < NP_PROBE_MAX_VIEWS)
      v[n++] = &p->tx[ids[i]];
  for (int i = 1; i < n; i++) /* insertion sort by order: at most four */
    for (int j = i; j > 0 && v[j]->order < v[j - 1]->order; j--) {
      const struct txn *t = v[j];
      v[j] = v[j - 1];
      v[j - 1] = t;
    }
  uint16_t ports[NP_PROBE_MAX_VIEWS];
  int at[NP_PROBE_MAX_VIEWS];
  out->n_views = 0;
  for (int i = 0; i < n; i++) {
    bool reused = false;
    for (int j = 0; j < out->n_views && !reused; j++)
      reused = np_addr_same_ip(&out->view_to[j], &v[i]->to) &&
               np_addr_equal(&out->view_mapped[j], &v[i]->mapped);
    if (reused)
      continue;
    out->view_to[out->n_views] = v[i]->to;
    out->view_mapped[out->n_views] = v[i]->mapped;
    at[out->n_views] = v[i]->order;
    ports[out->n_views++] = np_addr_port(&v[i]->mapped);
  }
  if (out->n_views == 0)
    return;
  out->base_port = ports[out->n_views - 1];
  int32_t stride = 0;
  enum np_nat_kind k = np__predict_classify_at(ports, at, out->n_views, &stride);
  out->stride = stride;
  /* Requests that went out after the last answered one (unanswered) still
   * took mappings: the NAT's last mapping is that many strides on. */
  int after = p->first_sends - at[out->n_views - 1];
  if (after > 0 && k != NP_NAT_KIND_RANDOM && stride != 0) {
    int32_t b = np__predict_port_at(out->base_port, stride, after);
    if (b > 0)
      out->base_port = (uint16_t)b;
  }
  if (out->n_views < 2) {
    out->port_kind = 0;
    return;
  }
  if (k == NP_NAT_KIND_FROM_DELTA) {
    /* one delta: the two-view rule of the predictor */
    np_nat_model m = {.known = true, .base = out->base_port, .stride = stride};
    static const int from_rule[] = {NP_NAT_KIND_CONE, NP_NAT_KIND_SEQUENTIAL, NP_NAT_KIND_RANDOM};
    k = (enum np_nat_kind)from_rule[np__predict_kind(&m)];
    out->port_kind_guessed = k != NP_NAT_KIND_CONE;
  }
  out->port_kind = (int)k;
}

int np__nat_probe_result(const np_nat_probe *p, np_probe_result *out) {
  memset(out, 0, sizeof *out);
  out->local = p->local_main;
  out->hairpinning = NP_UNKNOWN;
  for (int i = 0; i < p->cfg.n_servers; i++) {
    const struct txn *t = &p->tx[i == 0 ? TX_SERVER1 : TX_SERVER2];
    out->rtt_ms[i] = t->rtt_ms;
    if (t->state == TS_DONE) {
      out->mapped[i] = t->mapped;
      out->n_mapped++;
    } else {
      out->server_err[i] = t->state == TS_FAILED ? t->err : NP_ERR_TIMEOUT;
      out->server_error_code[i] = t->error_code;
    }
  }
  collect_views(p, out); /* also with server 1 down: server 2's view counts */
  const struct txn *s1 = &p->tx[TX_SERVER1];
  if (s1->state != TS_DONE)
    return out->server_err[0];

  if (p->cfg.n_servers > 1 && p->tx[TX_SERVER2].state == TS_DONE) {
    out->have_delta = true;
    out->delta = (int)np_addr_port(&out->mapped[1]) - (int)np_addr_port(&out->mapped[0]);
  }
  out->other_address = s1->other;
  out->rfc5780 = np__addr_is_set(&s1->other);
  out->nat = !np_addr_equal(&s1->mapped, &p->local_main);
  out->port_preserving = np_addr_port(&s1->mapped) == np_addr_port(&p->local_main);
  out->mapping = classify_mapping(p);
  out->filtering = classify_filtering(p);
  const struct txn *h = &p->tx[TX_HAIRPIN];
  if (h->state == TS_DONE)
    out->hairpinning = NP_YES;
  else if (h->state == TS_FAILED)
    out->hairpinning = NP_NO;
  return 0;
}

NP_EXPORT const char *np_nat_behavior_name(enum np_nat_behavior b) {
  switch (b) {
  case NP_BEHAVIOR_ENDPOINT_INDEPENDENT:
    return "endpoint-independent";
  case NP_BEHAVIOR_ADDRESS_DEPENDENT:
    return "address-dependent";
  case NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT:
    return "address-and-port-dependent";
  default:
    return "unknown";
  }
}

/* ------------------------------------------------------------------------ */
/* Blocking runner                                                           */
/* ------------------------------------------------------------------------ */

/* Reads one ICMP error from the socket's error queue and tells the probe
 * which destination it concerns (IP_RECVERR). Returns false when the queue
 * is empty. */
static bool drain_error(np_nat_probe *p, int fd, int sock, int64_t now) {
  np_udp_error e;
  if (!np__udp_read_error(fd, &e))
    return false;
  if (e.icmp && !e.time_exceeded && np__addr_is_set(&e.dest))
    np__nat_probe_unreachable(p, now, sock, &e.dest);
  return true;
}

/* Binds a UDP socket on cfg->bind (the wildcard of the servers' family when
 * unset); keep_port false asks for an ephemeral port on the same IP, which
 * is what the FILTER socket needs. */
static int open_socket(const np_probe_config *cfg, bool keep_port, np_logger *log, int *fd_out) {
  np_addr bind_to = cfg->bind;
  if (!np__addr_is_set(&bind_to)) {
    memset(&bind_to, 0, sizeof bind_to);
    bind_to.u.sa.sa_family = cfg->servers[0].u.sa.sa_family;
  } else if (!keep_port) {
    np_addr_set_port(&bind_to, 0);
  }
  char err[NP_UDP_ERRLEN];
  int fd = np__udp_bind(&bind_to, NP_UDP_NONBLOCK, err);
  if (fd < 0) {
    NP_LOGE(log, "probe: %s", err);
    return fd;
  }
  *fd_out = fd;
  return 0;
}

NP_EXPORT int np_probe_run(const np_probe_config *cfg, np_probe_result *out) {
  if (!cfg || !out || cfg->n_servers < 1 || cfg->n_servers > NP_PROBE_MAX_SERVERS)
    return NP_ERR_INVAL;
  memset(out, 0, sizeof *out);
  np_logger log = {cfg->log, cfg->log_user, cfg->log_level};
  int family = cfg->servers[0].u.sa.sa_family;
  for (int i = 0; i < cfg->n_servers; i++)
    if (cfg->servers[i].u.sa.sa_family != family) {
      NP_LOGE(&log, "probe: all discovery servers must be of one address family");
      return NP_ERR_INVAL;
    }

  int fds[NP_PROBE_NSOCK] = {-1, -1};
  bool own_main = !cfg->use_fd;
  np_nat_probe *p = NULL;
  int rc;
  if (cfg->use_fd) {
    fds[NP_PROBE_SOCK_MAIN] = cfg->fd;
  } else if ((rc = open_socket(cfg, true, &log, &fds[NP_PROBE_SOCK_MAIN])) != 0) {
    goto out;
  }
  np_probe_config filter_cfg = *cfg;
  if (cfg->use_fd)
    np__udp_local(cfg->fd, &filter_cfg.bind); /* same local IP as the caller's socket */
  if ((rc = open_socket(&filter_cfg, false, &log, &fds[NP_PROBE_SOCK_FILTER])) != 0)
    goto out;
  for (int s = 0; s < NP_PROBE_NSOCK; s++)
    np__udp_recverr(fds[s], family);

  np_addr local;
  if (np__udp_local(fds[NP_PROBE_SOCK_MAIN], &local) != 0) {
    rc = NP_ERR_SYS;
    goto out;
  }
  if (np__addr_is_any(&local)) {
    np_addr src;
    if (np__udp_route_source(&cfg->servers[0], &src) != 0) {
      char text[NP_ADDRSTRLEN];
      NP_LOGE(&log, "probe: no route to %s", np_addr_format(&cfg->servers[0], text, sizeof text));
      rc = NP_ERR_UNREACHABLE;
      goto out;
    }
    np_addr_set_port(&src, np_addr_port(&local));
    local = src;
  }

  if ((rc = np__nat_probe_new(cfg, &local, NULL, NULL, np__now_ms(), &p)) != 0)
    goto out;

  /* Bounded: the machine's deadline ends every transaction, and each pass
   * either sends, receives, or sleeps until the next wakeup. */
  for (;;) {
    int64_t now = np__now_ms();
    np_probe_datagram dg;
    while (np__nat_probe_next_datagram(p, now, &dg)) {
      if (sendto(fds[dg.sock], dg.buf, dg.len, 0, &dg.to.u.sa, np_addr_len(&dg.to)) < 0 &&
          errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        np__nat_probe_unreachable(p, now, dg.sock, &dg.to);
    }
    if (np__nat_probe_done(p))
      break;
    int64_t wait = np__nat_probe_wakeup(p) - now;
    struct pollfd pfd[NP_PROBE_NSOCK] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};
    int n = poll(pfd, NP_PROBE_NSOCK, wait < 0 ? 0 : (int)(wait > INT_MAX ? INT_MAX : wait));
    if (n < 0 && errno != EINTR) {
      rc = NP_ERR_SYS;
      goto out;
    }
    now = np__now_ms();
    for (int s = 0; s < NP_PROBE_NSOCK && n > 0; s++) {
      if (pfd[s].revents & POLLERR)
        for (int k = 0; k < 16 && drain_error(p, fds[s], s, now); k++)
          ;
      if (!(pfd[s].revents & POLLIN))
        continue;
      for (int k = 0; k < 64; k++) { /* bounded drain per wakeup */
        uint8_t buf[NP_STUN_MAX_MESSAGE];
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        ssize_t got = recvfrom(fds[s], buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&ss, &sl);
        if (got < 0) {
          if (errno == ECONNREFUSED || errno == EHOSTUNREACH)
            continue; /* a pending ICMP error surfaced here; the error queue has the details */
          break;
        }
        np_addr from;
        if (np__addr_from_sockaddr((struct sockaddr *)&ss, sl, &from) == 0)
          np__nat_probe_input(p, now, s, &from, buf, (size_t)got);
      }
    }
  }
  rc = np__nat_probe_result(p, out);

out:
  np__nat_probe_free(p);
  if (own_main && fds[NP_PROBE_SOCK_MAIN] >= 0)
    close(fds[NP_PROBE_SOCK_MAIN]);
  if (fds[NP_PROBE_SOCK_FILTER] >= 0)
    close(fds[NP_PROBE_SOCK_FILTER]);
  return rc;
}
