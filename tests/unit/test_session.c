/*
 * The QUIC session (session/session.h) between two in-memory endpoints: a
 * client and a server np__session joined by a model link that the test
 * drives with a fake clock (1 ms resolution). The link has a one-way delay,
 * an optional bottleneck rate, seeded loss and reordering (a reordered
 * datagram gets extra delay, so later ones overtake it), and a model NAT in
 * front of the client whose public port can change (NAT rebinding). No
 * sockets, no sleeping; every random draw of the link is seeded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "session/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- deterministic randomness -------------------------------------------------- */

static uint64_t mix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* The byte at offset i of test stream `tag`: checkable without storing it. */
static uint8_t pattern(uint32_t tag, uint64_t i) {
  uint64_t s = ((uint64_t)tag << 40) ^ (i / 8);
  return (uint8_t)(mix(&s) >> (8 * (i % 8)));
}

static void fill(uint32_t tag, uint64_t off, uint8_t *buf, size_t n) {
  for (size_t i = 0; i < n; i++)
    buf[i] = pattern(tag, off + i);
}

static bool check(uint32_t tag, uint64_t off, const uint8_t *buf, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (buf[i] != pattern(tag, off + i))
      return false;
  return true;
}

/* ---- the model link ---------------------------------------------------------------- */

#define MAX_DGRAM 1500
#define C 0 /* the client */
#define S 1 /* the server */

typedef struct pkt {
  int64_t due;
  uint64_t seq; /* ties broken by sending order */
  int to;
  np_addr src, dst;
  size_t len;
  uint8_t data[MAX_DGRAM];
} pkt;

typedef struct net {
  int64_t now;
  int delay_ms;
  int loss_pct, reorder_pct;
  int rate; /* datagrams per ms per direction; 0 = no bottleneck */
  int64_t link_free[2];
  int sent_in_ms[2];
  uint64_t rng, seq;
  pkt **heap;
  size_t n, cap;
  np__session *ep[2];
  np_identity *id[2];
  /* Client side: its sockets, and the NAT in front of it (inner -> public). */
  np_addr c_local, c_local2, s_addr;
  bool nat;
  np_addr nat_inner, nat_public;
  bool server_gone; /* drop everything to and from the server */
  bool local2_dead; /* the client's second address reaches nobody */
  uint64_t delivered, dropped;
  int64_t established_at[2];
} net;

static bool before(const pkt *a, const pkt *b) {
  return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_push(net *n, pkt *p) {
  if (n->n == n->cap) {
    n->cap = n->cap ? 2 * n->cap : 256;
    n->heap = realloc(n->heap, n->cap * sizeof *n->heap);
    assert_non_null(n->heap);
  }
  size_t i = n->n++;
  n->heap[i] = p;
  while (i > 0 && before(n->heap[i], n->heap[(i - 1) / 2])) {
    pkt *t = n->heap[i];
    n->heap[i] = n->heap[(i - 1) / 2];
    n->heap[(i - 1) / 2] = t;
    i = (i - 1) / 2;
  }
}

static pkt *heap_pop(net *n) {
  pkt *top = n->heap[0];
  n->heap[0] = n->heap[--n->n];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < n->n && before(n->heap[l], n->heap[m]))
      m = l;
    if (r < n->n && before(n->heap[r], n->heap[m]))
      m = r;
    if (m == i)
      break;
    pkt *t = n->heap[i];
    n->heap[i] = n->heap[m];
    n->heap[m] = t;
    i = m;
  }
  return top;
}

static np_addr addr(const char *text) {
  np_addr a;
  assert_int_equal(np_addr_parse(text, 0, &a), 0);
  return a;
}

static void log_sink(void *user, enum np_log_level level, const char *msg) {
  (void)level;
  if (getenv("NP_TEST_VERBOSE"))
    fprintf(stderr, "[%s] %s\n", (const char *)user, msg);
}

typedef struct opts {
  int delay_ms, loss_pct, reorder_pct, rate;
  int idle_ms, keepalive_ms;
  size_t stream_buffer;
  bool forge_server_expect; /* the server expects a key the client lacks */
  bool forge_client_expect; /* the client expects a key the server lacks */
} opts;

static np__session *make(net *n, int side, const opts *o, np_identity *wrong) {
  np__session_config cfg = {0};
  cfg.client = side == C;
  cfg.identity = n->id[side];
  np_identity_public_key(n->id[1 - side], cfg.peer);
  if ((side == S && o->forge_server_expect) || (side == C && o->forge_client_expect))
    np_identity_public_key(wrong, cfg.peer);
  cfg.local = side == C ? n->c_local : n->s_addr;
  cfg.remote = side == C ? n->s_addr : n->c_local;
  cfg.idle_timeout_ms = o->idle_ms;
  cfg.keepalive_ms = o->keepalive_ms;
  cfg.stream_buffer = o->stream_buffer;
  cfg.log = log_sink;
  cfg.log_user = (void *)(side == C ? "client" : "server");
  cfg.log_level = NP_LOG_DEBUG;
  cfg.quic_trace = getenv("NP_TEST_QUIC_TRACE") != NULL;
  np__session *s = NULL;
  assert_int_equal(np__session_new(&cfg, n->now, &s), 0);
  return s;
}

static void net_init(net *n, const opts *o, uint64_t seed) {
  memset(n, 0, sizeof *n);
  n->now = 1000;
  n->delay_ms = o->delay_ms;
  n->loss_pct = o->loss_pct;
  n->reorder_pct = o->reorder_pct;
  n->rate = o->rate;
  n->rng = seed;
  n->c_local = addr("10.0.0.1:4000");
  n->c_local2 = addr("10.0.0.3:4000");
  n->s_addr = addr("10.0.0.2:5000");
  n->established_at[0] = n->established_at[1] = -1;
  assert_int_equal(np_identity_generate(&n->id[C]), 0);
  assert_int_equal(np_identity_generate(&n->id[S]), 0);
  np_identity *wrong = NULL;
  assert_int_equal(np_identity_generate(&wrong), 0);
  n->ep[C] = make(n, C, o, wrong);
  n->ep[S] = make(n, S, o, wrong);
  np_identity_free(wrong);
}

static void net_free(net *n) {
  np__session_free(n->ep[C]);
  np__session_free(n->ep[S]);
  while (n->n)
    free(heap_pop(n));
  free(n->heap);
  np_identity_free(n->id[C]);
  np_identity_free(n->id[S]);
}

/* Puts one datagram on the link, through the client's NAT if it is the
 * client's. */
static void transmit(net *n, int from, const np__session_path *path, const uint8_t *buf,
                     size_t len) {
  /* RFC 9443 demultiplexing (STUN 0-3, QUIC 64-127 and 192-255) needs the
   * QUIC fixed bit on every packet: it must never be greased. */
  assert_true(np__session_is_quic(buf, len));
  if (n->server_gone || (int)(mix(&n->rng) % 100) < n->loss_pct ||
      (n->local2_dead && from == C && np_addr_equal(&path->local, &n->c_local2))) {
    n->dropped++;
    return;
  }
  pkt *p = malloc(sizeof *p);
  assert_non_null(p);
  p->to = 1 - from;
  p->src = path->local;
  p->dst = path->remote;
  if (from == C && n->nat && np_addr_equal(&p->src, &n->nat_inner))
    p->src = n->nat_public;
  int64_t depart = n->now;
  if (n->rate) {
    /* A bottleneck: `rate` datagrams leave per ms, the rest queue. */
    if (n->link_free[from] < n->now) {
      n->link_free[from] = n->now;
      n->sent_in_ms[from] = 0;
    }
    if (n->sent_in_ms[from] >= n->rate) {
      n->link_free[from]++;
      n->sent_in_ms[from] = 0;
    }
    n->sent_in_ms[from]++;
    depart = n->link_free[from];
  }
  p->due = depart + n->delay_ms;
  if ((int)(mix(&n->rng) % 100) < n->reorder_pct)
    p->due += 1 + (int64_t)(mix(&n->rng) % (uint64_t)(n->delay_ms > 1 ? n->delay_ms : 2));
  p->seq = n->seq++;
  p->len = len;
  memcpy(p->data, buf, len);
  heap_push(n, p);
}

static void flush(net *n, int side) {
  uint8_t buf[MAX_DGRAM];
  np__session_path path;
  for (int i = 0; i < 100000; i++) {
    int len = np__session_send(n->ep[side], buf, sizeof buf, &path, n->now);
    if (len <= 0)
      return;
    transmit(n, side, &path, buf, (size_t)len);
  }
  fail_msg("np__session_send never returned 0");
}

static void deliver(net *n, pkt *p) {
  np_addr local = p->dst;
  if (p->to == C) {
    if (n->nat) {
      if (!np_addr_equal(&p->dst, &n->nat_public)) {
        n->dropped++; /* the NAT forgot the old mapping */
        return;
      }
      local = n->nat_inner;
    } else if (!np_addr_equal(&p->dst, &n->c_local) && !np_addr_equal(&p->dst, &n->c_local2)) {
      n->dropped++;
      return;
    }
  } else if (n->server_gone || !np_addr_equal(&p->dst, &n->s_addr)) {
    n->dropped++;
    return;
  }
  n->delivered++;
  np__session_recv(n->ep[p->to], &local, &p->src, p->data, p->len, n->now);
}

typedef bool (*step_fn)(net *n, void *user); /* true when the scenario is done */

/* Runs the link until step says done or max_ms of fake time passed; returns
 * true when done. Each tick delivers what is due, fires due timers, lets the
 * scenario act, and drains both senders. */
static bool run(net *n, step_fn step, void *user, int64_t max_ms) {
  int64_t end = n->now + max_ms;
  while (n->now <= end) {
    while (n->n && n->heap[0]->due <= n->now) {
      pkt *p = heap_pop(n);
      deliver(n, p);
      free(p);
    }
    for (int side = 0; side < 2; side++) {
      if (np__session_timeout(n->ep[side], n->now) == 0)
        np__session_on_timer(n->ep[side], n->now);
      if (n->established_at[side] < 0 && np__session_established(n->ep[side]))
        n->established_at[side] = n->now;
    }
    bool done = step && step(n, user);
    flush(n, C);
    if (!n->server_gone)
      flush(n, S);
    if (done)
      return true;
    int64_t next = end + 1;
    if (n->n && n->heap[0]->due < next)
      next = n->heap[0]->due;
    for (int side = 0; side < 2; side++) {
      int64_t t = np__session_timeout(n->ep[side], n->now);
      if (t >= 0 && n->now + t < next)
        next = n->now + t;
    }
    n->now = next > n->now ? next : n->now + 1;
  }
  return false;
}

static bool both_established(net *n, void *user) {
  (void)user;
  return np__session_established(n->ep[C]) && np__session_established(n->ep[S]);
}

static bool both_closed(net *n, void *user) {
  (void)user;
  return np__session_state(n->ep[C]) == NP__SESSION_CLOSED &&
         np__session_state(n->ep[S]) == NP__SESSION_CLOSED;
}

/* ---- a bulk transfer -------------------------------------------------------------------- */

typedef struct xfer {
  uint32_t tag;
  uint64_t total;
  int64_t cid, sid; /* the stream at the client and at the server */
  uint64_t written, received;
  bool fin_seen, corrupt;
  bool server_reads; /* false: the server does not read (stalled) */
  int again;         /* NP_ERR_AGAIN count at the writer */
  /* A one-off action once `at` bytes have arrived. */
  uint64_t at;
  void (*action)(net *n);
  bool acted;
} xfer;

static void xfer_write(net *n, xfer *x) {
  uint8_t buf[32768];
  while (x->written < x->total) {
    size_t k = x->total - x->written < sizeof buf ? (size_t)(x->total - x->written) : sizeof buf;
    fill(x->tag, x->written, buf, k);
    int64_t w = np__session_stream_write(n->ep[C], x->cid, buf, k, x->written + k == x->total);
    if (w == NP_ERR_AGAIN) {
      x->again++;
      return;
    }
    assert_true(w > 0);
    x->written += (uint64_t)w;
  }
}

static void xfer_read(net *n, xfer *x) {
  uint8_t buf[32768];
  for (;;) {
    bool fin = false;
    int64_t r = np__session_stream_read(n->ep[S], x->sid, buf, sizeof buf, &fin);
    if (r == NP_ERR_AGAIN)
      return;
    assert_true(r >= 0);
    if (r > 0 && !check(x->tag, x->received, buf, (size_t)r))
      x->corrupt = true;
    x->received += (uint64_t)r;
    if (fin) {
      x->fin_seen = true;
      return;
    }
  }
}

static bool bulk_step(net *n, void *user) {
  xfer *x = user;
  if (!np__session_established(n->ep[C]))
    return false;
  if (x->cid < 0)
    assert_int_equal(np__session_stream_open(n->ep[C], &x->cid), 0);
  xfer_write(n, x);
  if (x->sid < 0) {
    int64_t id;
    if (np__session_stream_accept(n->ep[S], &id) == 1)
      x->sid = id;
  }
  if (x->sid >= 0 && x->server_reads)
    xfer_read(n, x);
  if (x->action && !x->acted && x->received >= x->at) {
    x->acted = true;
    x->action(n);
  }
  return x->fin_seen;
}

static xfer xfer_new(uint32_t tag, uint64_t total) {
  xfer x = {.tag = tag, .total = total, .cid = -1, .sid = -1, .server_reads = true};
  return x;
}

/* ---- tests -------------------------------------------------------------------------------- */

static void handshake_rtt(void **state) {
  (void)state;
  opts o = {.delay_ms = 25};
  net n;
  net_init(&n, &o, 1);
  int64_t t0 = n.now;
  assert_int_equal(np__session_state(n.ep[C]), NP__SESSION_HANDSHAKE);
  int64_t id;
  assert_int_equal(np__session_stream_open(n.ep[C], &id), NP_ERR_AGAIN);
  assert_true(run(&n, both_established, NULL, 5000));
  int64_t rtt = 2 * o.delay_ms;
  int64_t tc = n.established_at[C] - t0, ts = n.established_at[S] - t0;
  print_message("handshake: client established after %lld ms, server after %lld ms (RTT %lld ms)"
                " = %.1f / %.1f RTT\n",
                (long long)tc, (long long)ts, (long long)rtt, (double)tc / (double)rtt,
                (double)ts / (double)rtt);
  assert_true(tc <= 2 * rtt);
  assert_true(ts <= 2 * rtt);
  struct np__session_stats st;
  np__session_stats(n.ep[C], &st);
  assert_true(st.rtt_smoothed_ms >= rtt - 1 && st.rtt_smoothed_ms <= rtt + 30);
  assert_true(np_addr_equal(&st.path.remote, &n.s_addr));
  np__session_stats(n.ep[S], &st);
  assert_true(np_addr_equal(&st.path.remote, &n.c_local));
  net_free(&n);
}

static double wall_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void bulk_lossy(void **state) {
  (void)state;
  opts o = {.delay_ms = 20, .loss_pct = 10, .reorder_pct = 10, .rate = 10};
  net n;
  net_init(&n, &o, 2);
  xfer x = xfer_new(7, 5u << 20);
  double w0 = wall_ms();
  int64_t t0 = n.now;
  assert_true(run(&n, bulk_step, &x, 600000));
  double w1 = wall_ms();
  struct np__session_stats st;
  np__session_stats(n.ep[C], &st);
  print_message("5 MiB at 10%% loss + 10%% reordering: %.0f ms wall, %lld ms fake, %llu pkts "
                "sent, %llu stream pkts lost, link dropped %llu\n",
                w1 - w0, (long long)(n.now - t0), (unsigned long long)st.packets_sent,
                (unsigned long long)st.packets_lost, (unsigned long long)n.dropped);
  assert_false(x.corrupt);
  assert_int_equal(x.received, x.total);
  assert_true(st.packets_lost > 0);
  net_free(&n);
}

typedef struct halfclose {
  int64_t cid, sid;
  char c_got[16], s_got[16];
  size_t c_len, s_len;
  bool c_fin, s_fin, s_replied;
} halfclose;

static bool halfclose_step(net *n, void *user) {
  halfclose *h = user;
  if (!both_established(n, NULL))
    return false;
  if (h->cid < 0) {
    assert_int_equal(np__session_stream_open(n->ep[C], &h->cid), 0);
    assert_int_equal(np__session_stream_write(n->ep[C], h->cid, (const uint8_t *)"ping", 4, false),
                     4);
    assert_int_equal(np__session_stream_shutdown(n->ep[C], h->cid), 0);
    /* Half-closed: no more writing, reading continues. */
    assert_int_equal(np__session_stream_write(n->ep[C], h->cid, (const uint8_t *)"x", 1, false),
                     NP_ERR_INVAL);
  }
  if (h->sid < 0 && np__session_stream_accept(n->ep[S], &h->sid) != 1)
    return false;
  if (h->sid < 0)
    return false;
  bool fin = false;
  int64_t r;
  while (!h->s_fin && (r = np__session_stream_read(n->ep[S], h->sid, (uint8_t *)h->s_got + h->s_len,
                                                   sizeof h->s_got - h->s_len - 1, &fin)) >= 0) {
    h->s_len += (size_t)r;
    if (fin)
      h->s_fin = true;
  }
  if (h->s_fin && !h->s_replied) {
    /* The client's FIN closed only its direction: the server still writes. */
    assert_int_equal(np__session_stream_write(n->ep[S], h->sid, (const uint8_t *)"pong", 4, true),
                     4);
    h->s_replied = true;
  }
  while (!h->c_fin && (r = np__session_stream_read(n->ep[C], h->cid, (uint8_t *)h->c_got + h->c_len,
                                                   sizeof h->c_got - h->c_len - 1, &fin)) >= 0) {
    h->c_len += (size_t)r;
    if (fin)
      h->c_fin = true;
  }
  return h->c_fin && h->s_fin;
}

static void half_close(void **state) {
  (void)state;
  opts o = {.delay_ms = 10};
  net n;
  net_init(&n, &o, 3);
  halfclose h = {.cid = -1, .sid = -1};
  assert_true(run(&n, halfclose_step, &h, 10000));
  assert_string_equal(h.s_got, "ping");
  assert_string_equal(h.c_got, "pong");
  /* Let the last ACKs through; then both ends have forgotten the stream. */
  run(&n, NULL, NULL, 200);
  bool fin;
  uint8_t b[4];
  assert_int_equal(np__session_stream_read(n.ep[C], h.cid, b, sizeof b, &fin), NP_ERR_INVAL);
  assert_int_equal(np__session_stream_read(n.ep[S], h.sid, b, sizeof b, &fin), NP_ERR_INVAL);
  net_free(&n);
}

#define NSTREAMS 8
#define STALLED 3

typedef struct multi {
  int64_t cid[NSTREAMS], sid[NSTREAMS];
  int srv_index[NSTREAMS]; /* server stream slot -> client index, by first byte tag */
  uint64_t total[NSTREAMS], written[NSTREAMS], received[NSTREAMS];
  bool fin[NSTREAMS], corrupt;
  bool opened, read_stalled;
  int n_accepted;
  int64_t first_done_at, all_others_done_at;
} multi;

static bool multi_step(net *n, void *user) {
  multi *m = user;
  if (!both_established(n, NULL))
    return false;
  if (!m->opened) {
    for (int i = 0; i < NSTREAMS; i++)
      assert_int_equal(np__session_stream_open(n->ep[C], &m->cid[i]), 0);
    m->opened = true;
  }
  uint8_t buf[16384];
  for (int i = 0; i < NSTREAMS; i++) {
    while (m->written[i] < m->total[i]) {
      size_t k = m->total[i] - m->written[i] < sizeof buf ? (size_t)(m->total[i] - m->written[i])
                                                          : sizeof buf;
      fill(100 + (uint32_t)i, m->written[i], buf, k);
      int64_t w =
          np__session_stream_write(n->ep[C], m->cid[i], buf, k, m->written[i] + k == m->total[i]);
      if (w == NP_ERR_AGAIN)
        break;
      assert_true(w > 0);
      m->written[i] += (uint64_t)w;
    }
  }
  int64_t id;
  while (np__session_stream_accept(n->ep[S], &id) == 1) {
    /* Streams are matched by id: the client's i-th stream has id 4*i. */
    int i = (int)(id / 4);
    assert_true(i >= 0 && i < NSTREAMS);
    m->sid[i] = id;
    m->n_accepted++;
  }
  bool others_done = true;
  for (int i = 0; i < NSTREAMS; i++) {
    if (m->sid[i] < 0 || m->fin[i] || (i == STALLED && !m->read_stalled)) {
      if (i != STALLED && !m->fin[i])
        others_done = false;
      continue;
    }
    for (;;) {
      bool fin = false;
      int64_t r = np__session_stream_read(n->ep[S], m->sid[i], buf, sizeof buf, &fin);
      if (r == NP_ERR_AGAIN)
        break;
      assert_true(r >= 0);
      if (!check(100 + (uint32_t)i, m->received[i], buf, (size_t)r))
        m->corrupt = true;
      m->received[i] += (uint64_t)r;
      if (fin) {
        m->fin[i] = true;
        break;
      }
    }
    if (i != STALLED && !m->fin[i])
      others_done = false;
  }
  if (others_done && m->all_others_done_at < 0)
    m->all_others_done_at = n->now;
  return others_done && (!m->read_stalled || m->fin[STALLED]);
}

/* Keeps the scenario going without ever declaring it done. */
static bool multi_keep_going(net *n, void *user) {
  multi_step(n, user);
  return false;
}

static void many_streams_one_stalled(void **state) {
  (void)state;
  opts o = {.delay_ms = 10, .loss_pct = 2, .rate = 20, .stream_buffer = 1u << 20};
  net n;
  net_init(&n, &o, 4);
  multi m;
  memset(&m, 0, sizeof m);
  m.first_done_at = m.all_others_done_at = -1;
  for (int i = 0; i < NSTREAMS; i++) {
    m.sid[i] = -1;
    /* The stalled stream carries more than its 4 MiB window. */
    m.total[i] = i == STALLED ? (6u << 20) : (1u << 20) + 1000u * (unsigned)i;
  }
  assert_true(run(&n, multi_step, &m, 120000));
  assert_false(m.corrupt);
  for (int i = 0; i < NSTREAMS; i++)
    if (i != STALLED)
      assert_int_equal(m.received[i], m.total[i]);
  /* The unread stream is held by flow control, not buffered without end:
   * its writer fills the server's 4 MiB window plus its own 1 MiB send
   * buffer, and stops there. */
  run(&n, multi_keep_going, &m, 3000);
  assert_int_equal(m.received[STALLED], 0);
  assert_true(m.written[STALLED] >= (4u << 20));
  assert_true(m.written[STALLED] <= (5u << 20));
  print_message("8 streams, stream %d unread: others done at +%lld ms; the stalled writer is "
                "held at %llu of %llu bytes\n",
                STALLED, (long long)(m.all_others_done_at - 1000),
                (unsigned long long)m.written[STALLED], (unsigned long long)m.total[STALLED]);
  /* Reading it now lets it finish too. */
  m.read_stalled = true;
  assert_true(run(&n, multi_step, &m, 120000));
  assert_int_equal(m.received[STALLED], m.total[STALLED]);
  assert_false(m.corrupt);
  net_free(&n);
}

static void stream_limit(void **state) {
  (void)state;
  opts o = {.delay_ms = 5};
  net n;
  net_init(&n, &o, 5);
  assert_true(run(&n, both_established, NULL, 5000));
  int64_t id;
  int opened = 0;
  while (opened < 1000 && np__session_stream_open(n.ep[C], &id) == 0)
    opened++;
  assert_int_equal(opened, 100); /* the server's initial_max_streams_bidi */
  assert_int_equal(np__session_stream_open(n.ep[C], &id), NP_ERR_AGAIN);
  net_free(&n);
}

static bool dgram_step(net *n, void *user) {
  int *got = user;
  uint8_t buf[2048];
  int r;
  while ((r = np__session_dgram_recv(n->ep[S], buf, sizeof buf)) >= 0) {
    assert_int_equal(r, 100 + *got);
    assert_true(check(200, (uint64_t)*got * 1000, buf, (size_t)r));
    (*got)++;
  }
  return *got == 10;
}

static void datagrams(void **state) {
  (void)state;
  opts o = {.delay_ms = 10};
  net n;
  net_init(&n, &o, 6);
  uint8_t buf[2048];
  assert_int_equal(np__session_dgram_send(n.ep[C], buf, 10), NP_ERR_INVAL);
  assert_true(run(&n, both_established, NULL, 5000));
  size_t max = np__session_dgram_max(n.ep[C]);
  assert_true(max >= 1000 && max < 1200);
  assert_int_equal(np__session_dgram_send(n.ep[C], buf, max + 1), NP_ERR_NOSPACE);
  for (int i = 0; i < 10; i++) {
    fill(200, (uint64_t)i * 1000, buf, 100 + (size_t)i);
    assert_int_equal(np__session_dgram_send(n.ep[C], buf, 100 + (size_t)i), 0);
  }
  int got = 0;
  assert_true(run(&n, dgram_step, &got, 2000));
  assert_int_equal(np__session_dgram_recv(n.ep[S], buf, sizeof buf), NP_ERR_AGAIN);
  /* The way back, and the bounded send queue. */
  fill(201, 0, buf, max);
  assert_int_equal(np__session_dgram_send(n.ep[S], buf, max), 0);
  run(&n, NULL, NULL, 100);
  assert_int_equal(np__session_dgram_recv(n.ep[C], buf, sizeof buf), (int)max);
  assert_true(check(201, 0, buf, max));
  int queued = 0;
  while (queued < 1000 && np__session_dgram_send(n.ep[C], buf, 10) == 0)
    queued++;
  assert_true(queued >= 16 && queued < 1000);
  assert_int_equal(np__session_dgram_send(n.ep[C], buf, 10), NP_ERR_AGAIN);
  net_free(&n);
}

static void back_pressure(void **state) {
  (void)state;
  opts o = {.delay_ms = 10, .rate = 20, .stream_buffer = 64 * 1024};
  net n;
  net_init(&n, &o, 7);
  xfer x = xfer_new(9, 6u << 20);
  x.server_reads = false;
  /* The server reads nothing: the writer is stopped by the send buffer
   * and, once the server's 4 MiB window is full, for good. */
  run(&n, bulk_step, &x, 5000);
  assert_true(x.again > 0);
  uint64_t stuck = x.written;
  run(&n, bulk_step, &x, 2000);
  assert_int_equal(x.written, stuck);
  assert_true(stuck >= (4u << 20) && stuck <= (4u << 20) + 64 * 1024);
  print_message("back-pressure: %d AGAIN, writer stuck at %llu bytes until the reader reads\n",
                x.again, (unsigned long long)stuck);
  x.server_reads = true;
  assert_true(run(&n, bulk_step, &x, 60000));
  assert_false(x.corrupt);
  assert_int_equal(x.received, x.total);
  net_free(&n);
}

static void do_migrate(net *n) {
  assert_int_equal(np__session_migrate(n->ep[C], &n->c_local2, NULL, n->now), 0);
}

static void client_migration(void **state) {
  (void)state;
  opts o = {.delay_ms = 10, .loss_pct = 1, .rate = 20};
  net n;
  net_init(&n, &o, 8);
  xfer x = xfer_new(11, 3u << 20);
  x.at = 1u << 20;
  x.action = do_migrate;
  assert_true(run(&n, bulk_step, &x, 120000));
  assert_true(x.acted);
  assert_false(x.corrupt);
  assert_int_equal(x.received, x.total);
  struct np__session_stats st;
  np__session_stats(n.ep[S], &st);
  assert_true(np_addr_equal(&st.path.remote, &n.c_local2));
  assert_true(st.migrations >= 1);
  np__session_stats(n.ep[C], &st);
  assert_true(np_addr_equal(&st.path.local, &n.c_local2));
  net_free(&n);
}

static void migration_to_dead_path(void **state) {
  (void)state;
  opts o = {.delay_ms = 10, .rate = 20};
  net n;
  net_init(&n, &o, 19);
  n.local2_dead = true;
  xfer x = xfer_new(14, 3u << 20);
  x.at = 1u << 20;
  x.action = do_migrate;
  assert_true(run(&n, bulk_step, &x, 120000));
  assert_true(x.acted);
  assert_false(x.corrupt);
  assert_int_equal(x.received, x.total);
  struct np__session_stats st;
  np__session_stats(n.ep[C], &st);
  assert_true(st.path_failures >= 1);
  assert_true(np_addr_equal(&st.path.local, &n.c_local));
  np__session_stats(n.ep[S], &st);
  assert_true(np_addr_equal(&st.path.remote, &n.c_local));
  net_free(&n);
}

static void do_rebind(net *n) {
  n->nat_public = addr("198.51.100.7:61001");
}

static void nat_rebinding(void **state) {
  (void)state;
  opts o = {.delay_ms = 10, .loss_pct = 1, .rate = 20};
  net n;
  net_init(&n, &o, 9);
  /* The client sits behind a NAT from the start; mid-transfer its mapping
   * changes port and the old one is gone. */
  n.nat = true;
  n.nat_inner = n.c_local;
  n.nat_public = addr("198.51.100.7:61000");
  xfer x = xfer_new(12, 3u << 20);
  x.at = 1u << 20;
  x.action = do_rebind;
  assert_true(run(&n, bulk_step, &x, 120000));
  assert_true(x.acted);
  assert_false(x.corrupt);
  assert_int_equal(x.received, x.total);
  struct np__session_stats st;
  np__session_stats(n.ep[S], &st);
  assert_true(np_addr_equal(&st.path.remote, &n.nat_public));
  assert_true(st.migrations >= 1);
  net_free(&n);
}

typedef struct resetx {
  int64_t cid, sid;
  int write_rc, read_rc;
} resetx;

static bool reset_step(net *n, void *user) {
  resetx *r = user;
  if (!both_established(n, NULL))
    return false;
  uint8_t buf[4096];
  memset(buf, 'r', sizeof buf);
  if (r->cid < 0) {
    assert_int_equal(np__session_stream_open(n->ep[C], &r->cid), 0);
    assert_int_equal(np__session_stream_write(n->ep[C], r->cid, buf, sizeof buf, false),
                     (int64_t)sizeof buf);
  }
  if (r->sid < 0) {
    if (np__session_stream_accept(n->ep[S], &r->sid) != 1)
      return false;
    /* The server wants none of it: both directions go. */
    assert_int_equal(np__session_stream_reset(n->ep[S], r->sid, 42), 0);
    assert_int_equal(np__session_stream_write(n->ep[S], r->sid, buf, 1, false), NP_ERR_INVAL);
  }
  if (r->write_rc >= 0) {
    int64_t w = np__session_stream_write(n->ep[C], r->cid, buf, sizeof buf, false);
    if (w < 0 && w != NP_ERR_AGAIN)
      r->write_rc = (int)w;
  }
  bool fin;
  if (r->read_rc >= 0 || r->read_rc == NP_ERR_AGAIN) {
    int64_t rd = np__session_stream_read(n->ep[C], r->cid, buf, sizeof buf, &fin);
    r->read_rc = (int)rd;
  }
  return r->write_rc == NP_ERR_CANCELLED && r->read_rc == NP_ERR_CANCELLED;
}

static void stream_reset_both_ways(void **state) {
  (void)state;
  opts o = {.delay_ms = 10};
  net n;
  net_init(&n, &o, 15);
  resetx r = {.cid = -1, .sid = -1};
  assert_true(run(&n, reset_step, &r, 5000));
  /* The session itself is unharmed: a new stream works. */
  xfer x = xfer_new(13, 100000);
  assert_true(run(&n, bulk_step, &x, 10000));
  assert_int_equal(x.received, x.total);
  assert_false(x.corrupt);
  net_free(&n);
}

static void expect_mismatch(np__session *s, bool by_peer) {
  struct np__session_close_info ci;
  assert_int_equal(np__session_close_info(s, &ci), 0);
  assert_int_equal(ci.err, NP_ERR_AUTH);
  assert_true(ci.key_mismatch);
  assert_int_equal(ci.by_peer, by_peer);
  assert_string_equal(ci.reason, "peer key mismatch");
  /* A CRYPTO_ERROR: 0x100 + the TLS alert (bad_certificate, 42). */
  assert_int_equal(ci.code & ~0xffull, 0x100);
  if (!by_peer)
    print_message("key mismatch detected locally: CONNECTION_CLOSE 0x%llx\n",
                  (unsigned long long)ci.code);
}

static void forged_key(bool server_expects_wrong) {
  opts o = {.delay_ms = 10};
  if (server_expects_wrong)
    o.forge_server_expect = true;
  else
    o.forge_client_expect = true;
  net n;
  net_init(&n, &o, 10);
  assert_true(run(&n, both_closed, NULL, 10000));
  /* The side that checked the key rejected it; the other learnt why. */
  expect_mismatch(n.ep[server_expects_wrong ? S : C], false);
  expect_mismatch(n.ep[server_expects_wrong ? C : S], true);
  /* The rejecting side never let the session up. */
  assert_int_equal(n.established_at[server_expects_wrong ? S : C], -1);
  if (!server_expects_wrong)
    assert_int_equal(n.established_at[S], -1);
  net_free(&n);
}

static void forged_server_side(void **state) {
  (void)state;
  forged_key(true);
}

static void forged_client_side(void **state) {
  (void)state;
  forged_key(false);
}

static void idle_timeout(void **state) {
  (void)state;
  opts o = {.delay_ms = 10, .idle_ms = 3000};
  net n;
  net_init(&n, &o, 11);
  assert_true(run(&n, both_established, NULL, 5000));
  int64_t gone = n.now;
  n.server_gone = true;
  assert_false(run(&n, NULL, NULL, 2500)); /* keep-alive or not: still up */
  assert_false(np__session_closed(n.ep[C]));
  bool closed = false;
  for (int i = 0; i < 100 && !closed; i++) {
    run(&n, NULL, NULL, 100);
    closed = np__session_state(n.ep[C]) == NP__SESSION_CLOSED;
  }
  assert_true(closed);
  struct np__session_close_info ci;
  assert_int_equal(np__session_close_info(n.ep[C], &ci), 0);
  assert_int_equal(ci.err, NP_ERR_TIMEOUT);
  print_message("idle timeout: the client gave up %lld ms after the server vanished (idle %d "
                "ms): %s\n",
                (long long)(n.now - gone), o.idle_ms, ci.reason);
  assert_true(n.now - gone >= 3000 && n.now - gone <= 4500);
  net_free(&n);
}

static void keepalive_holds(void **state) {
  (void)state;
  /* Quiet for ten idle timeouts: the PINGs keep both ends up. */
  opts o = {.delay_ms = 10, .idle_ms = 1000, .keepalive_ms = 300};
  net n;
  net_init(&n, &o, 16);
  assert_true(run(&n, both_established, NULL, 5000));
  assert_false(run(&n, NULL, NULL, 10000));
  assert_true(np__session_established(n.ep[C]));
  assert_true(np__session_established(n.ep[S]));
  net_free(&n);

  /* Without keep-alive the same quiet ends both sessions. */
  o.keepalive_ms = -1;
  net_init(&n, &o, 17);
  assert_true(run(&n, both_established, NULL, 5000));
  assert_true(run(&n, both_closed, NULL, 10000));
  struct np__session_close_info ci;
  assert_int_equal(np__session_close_info(n.ep[S], &ci), 0);
  assert_int_equal(ci.err, NP_ERR_TIMEOUT);
  net_free(&n);
}

static void handshake_timeout(void **state) {
  (void)state;
  /* A client whose server never answers, and a server nobody calls. */
  opts o = {.delay_ms = 10, .idle_ms = 2000};
  net n;
  net_init(&n, &o, 18);
  n.server_gone = true;
  int64_t t0 = n.now;
  assert_true(run(&n, both_closed, NULL, 10000));
  for (int side = 0; side < 2; side++) {
    struct np__session_close_info ci;
    assert_int_equal(np__session_close_info(n.ep[side], &ci), 0);
    assert_int_equal(ci.err, NP_ERR_TIMEOUT);
    assert_false(ci.by_peer);
  }
  assert_true(n.now - t0 >= 2000 && n.now - t0 <= 2100);
  net_free(&n);
}

static void close_reason(void **state) {
  (void)state;
  opts o = {.delay_ms = 10};
  net n;
  net_init(&n, &o, 12);
  assert_true(run(&n, both_established, NULL, 5000));
  assert_int_equal(np__session_close(n.ep[C], 7, "bye for now"), 0);
  assert_int_equal(np__session_close(n.ep[C], 7, "twice"), NP_ERR_INVAL);
  assert_true(np__session_closed(n.ep[C]));
  int64_t id;
  assert_int_equal(np__session_stream_open(n.ep[C], &id), NP_ERR_CANCELLED);
  assert_true(run(&n, both_closed, NULL, 5000));
  struct np__session_close_info ci;
  assert_int_equal(np__session_close_info(n.ep[S], &ci), 0);
  assert_true(ci.by_peer);
  assert_true(ci.app);
  assert_int_equal(ci.code, 7);
  assert_int_equal(ci.err, NP_ERR_REFUSED);
  assert_string_equal(ci.reason, "bye for now");
  assert_int_equal(np__session_close_info(n.ep[C], &ci), 0);
  assert_false(ci.by_peer);
  assert_int_equal(ci.err, NP_ERR_CANCELLED);
  net_free(&n);

  /* An orderly close (code 0) is no error on either side. */
  net_init(&n, &o, 13);
  assert_true(run(&n, both_established, NULL, 5000));
  assert_int_equal(np__session_close(n.ep[S], 0, "done"), 0);
  assert_true(run(&n, both_closed, NULL, 5000));
  assert_int_equal(np__session_close_info(n.ep[C], &ci), 0);
  assert_int_equal(ci.err, 0);
  assert_string_equal(ci.reason, "done");
  net_free(&n);
}

static void demux_ranges(void **state) {
  (void)state;
  /* RFC 9443: STUN 0-3 (and everything else below 64) is not QUIC. */
  for (int b = 0; b < 256; b++) {
    uint8_t byte = (uint8_t)b;
    assert_int_equal(np__session_is_quic(&byte, 1), (b >= 64 && b <= 127) || b >= 192);
  }
  assert_false(np__session_is_quic(NULL, 0));
}

static void server_ignores_garbage(void **state) {
  (void)state;
  opts o = {.delay_ms = 10};
  net n;
  net_init(&n, &o, 14);
  uint8_t junk[1300];
  for (int i = 0; i < 50; i++) {
    for (size_t k = 0; k < sizeof junk; k++)
      junk[k] = (uint8_t)mix(&n.rng);
    if (i % 2) {
      /* A QUIC v1 Initial header with an 8-byte DCID: it passes
       * ngtcp2_accept and must still not capture the server. */
      static const uint8_t hdr[] = {0xc0, 0, 0, 0, 1, 8};
      memcpy(junk, hdr, sizeof hdr);
    }
    assert_int_equal(np__session_recv(n.ep[S], &n.s_addr, &n.c_local, junk,
                                      i % 2 ? sizeof junk : (size_t)(i * 26) % sizeof junk, n.now),
                     0);
  }
  assert_false(np__session_closed(n.ep[S]));
  /* A real client still gets through afterwards. */
  assert_true(run(&n, both_established, NULL, 5000));
  net_free(&n);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(handshake_rtt),      cmocka_unit_test(bulk_lossy),
      cmocka_unit_test(half_close),         cmocka_unit_test(many_streams_one_stalled),
      cmocka_unit_test(stream_limit),       cmocka_unit_test(stream_reset_both_ways),
      cmocka_unit_test(datagrams),          cmocka_unit_test(back_pressure),
      cmocka_unit_test(client_migration),   cmocka_unit_test(migration_to_dead_path),
      cmocka_unit_test(nat_rebinding),      cmocka_unit_test(forged_server_side),
      cmocka_unit_test(forged_client_side), cmocka_unit_test(idle_timeout),
      cmocka_unit_test(keepalive_holds),    cmocka_unit_test(handshake_timeout),
      cmocka_unit_test(close_reason),       cmocka_unit_test(server_ignores_garbage),
      cmocka_unit_test(demux_ranges),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
