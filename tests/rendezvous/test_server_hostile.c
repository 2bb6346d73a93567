/*
 * The rendezvous server under hostile and broken clients: a real server in
 * a thread on 127.0.0.1 (port 0), driven over raw TCP sockets with frames
 * made by the signaling codec. After every attack, two properly registered
 * peers (A and B) must still be served: PING/PONG, and an offer from A to B
 * answered by B, with the server's OBSERVED stamp on both. Counters are
 * checked as deltas. Every wait is a poll() with a deadline, so a broken
 * server fails the test instead of hanging it.
 */
#include "natpunch.h"
#include "net/addr.h"
#include "signaling/signaling.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define WAIT_MS 3000   /* for what must happen on loopback */
#define SILENCE_MS 200 /* for what must not (confirmed by counters too) */
#define AUTH_MS 400    /* the test server's auth timeout */
#define MAX_UNAUTH 64  /* the test server's unauthenticated limit */
#define FLOOD 2000     /* connections opened at once by the flood test */

/* ---- the server ------------------------------------------------------------ */

struct server {
  np_rendezvous_server *srv;
  pthread_t thread;
  int run_rc;
  np_addr addr;
};

static atomic_int g_log_lines;

static void test_log(void *user, enum np_log_level level, const char *msg) {
  (void)user;
  atomic_fetch_add(&g_log_lines, 1);
  if (level <= NP_LOG_WARN || getenv("NP_TEST_VERBOSE"))
    fprintf(stderr, "server: %s\n", msg);
}

static void *run_server(void *arg) {
  struct server *s = arg;
  s->run_rc = np_rendezvous_server_run(s->srv);
  return NULL;
}

/* Starts a server on ip (port 0) in a thread. */
static void server_start_on(struct server *s, np_rendezvous_server_config cfg, const char *ip) {
  memset(s, 0, sizeof *s);
  assert_int_equal(np_addr_parse(ip, 1, &cfg.listen), 0);
  np_addr_set_port(&cfg.listen, 0);
  cfg.log = test_log;
  cfg.log_level = NP_LOG_INFO;
  assert_int_equal(np_rendezvous_server_new(&cfg, &s->srv), 0);
  s->addr = *np_rendezvous_server_local(s->srv);
  assert_int_not_equal(np_addr_port(&s->addr), 0);
  assert_int_equal(pthread_create(&s->thread, NULL, run_server, s), 0);
}

static void server_start(struct server *s, np_rendezvous_server_config cfg) {
  server_start_on(s, cfg, "127.0.0.1");
}

static void server_stop(struct server *s) {
  if (!s->srv)
    return;
  np_rendezvous_server_stop(s->srv);
  pthread_join(s->thread, NULL);
  assert_int_equal(s->run_rc, 0);
  np_rendezvous_server_free(s->srv);
  s->srv = NULL;
}

static np_rendezvous_stats stats_of(const struct server *s) {
  np_rendezvous_stats st;
  np_rendezvous_server_stats(s->srv, &st);
  return st;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Polls the server's counters until cond holds or WAIT_MS pass. */
#define WAIT_FOR(s, st, cond)                                                                      \
  do {                                                                                             \
    int64_t until_ = now_ms() + WAIT_MS;                                                           \
    for (;;) {                                                                                     \
      st = stats_of(s);                                                                            \
      if (cond)                                                                                    \
        break;                                                                                     \
      if (now_ms() > until_)                                                                       \
        fail_msg("timed out waiting for: %s", #cond);                                              \
      usleep(2000);                                                                                \
    }                                                                                              \
  } while (0)

/* ---- raw client connections ---------------------------------------------------- */

typedef struct tconn {
  int fd;
  np_addr local;
  size_t len;
  uint8_t buf[2 * (NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME)];
  np_sig_msg msg; /* the last frame tc_read() returned */
} tconn;

/* A TCP socket bound to src (an IPv4 literal, port 0): loopback answers
 * every 127.0.0.x, so each x looks like another host to the server. */
static int socket_from(const char *src, int flags) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sa = {.sin_family = AF_INET};
  assert_int_equal(inet_pton(AF_INET, src, &sa.sin_addr), 1);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  return fd;
}

static tconn *tc_connect_from(const struct server *s, const char *src) {
  tconn *c = calloc(1, sizeof *c);
  assert_non_null(c);
  c->fd = src ? socket_from(src, 0) : socket(s->addr.u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(c->fd >= 0);
  assert_int_equal(connect(c->fd, &s->addr.u.sa, np_addr_len(&s->addr)), 0);
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  assert_int_equal(getsockname(c->fd, (struct sockaddr *)&ss, &sl), 0);
  assert_int_equal(np__addr_from_sockaddr((struct sockaddr *)&ss, sl, &c->local), 0);
  return c;
}

static tconn *tc_connect(const struct server *s) {
  return tc_connect_from(s, NULL);
}

static void tc_free(tconn *c) {
  if (!c)
    return;
  if (c->fd >= 0)
    close(c->fd);
  free(c);
}

static void tc_send(tconn *c, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
    assert_true(n > 0);
    p += n;
    len -= (size_t)n;
  }
}

static int encode(const np_sig_msg *m, const np_identity *id, uint8_t *buf, size_t cap) {
  int n = np__sig_encode(m, id, buf, cap);
  assert_true(n > 0);
  return n;
}

static void tc_send_msg(tconn *c, const np_sig_msg *m, const np_identity *id) {
  uint8_t buf[NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME];
  tc_send(c, buf, (size_t)encode(m, id, buf, sizeof buf));
}

/* The next frame's type (c->msg holds it), 0 when the server closed the
 * connection, -1 after timeout_ms without a whole frame. */
static int tc_read(tconn *c, int timeout_ms) {
  int64_t until = now_ms() + timeout_ms;
  for (;;) {
    size_t body = 0;
    int fc = np__sig_frame_check(c->buf, c->len, NP_SIG_MAX_FRAME, &body);
    assert_true(fc == 0 || fc == NP_ERR_NOSPACE);
    if (fc == 0) {
      assert_int_equal(np__sig_decode(c->buf + NP_SIG_LEN_PREFIX, body, &c->msg), 0);
      size_t used = NP_SIG_LEN_PREFIX + body;
      memmove(c->buf, c->buf + used, c->len - used);
      c->len -= used;
      return c->msg.type;
    }
    int left = (int)(until - now_ms());
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    if (poll(&p, 1, left > 0 ? left : 0) <= 0) {
      if (now_ms() >= until)
        return -1;
      continue;
    }
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
      return 0;
    if (n > 0)
      c->len += (size_t)n;
  }
}

/* Expects an ERROR with this code next. */
static void tc_expect_error(tconn *c, uint16_t code) {
  int t = tc_read(c, WAIT_MS);
  if (t != NP_SIG_ERROR)
    fail_msg("expected ERROR %u, got %s", (unsigned)code,
             t == 0  ? "a close"
             : t < 0 ? "nothing"
                     : np__sig_type_name((uint8_t)t));
  assert_int_equal(c->msg.error_code, code);
}

/* Expects the server to close the connection (frames before it ignored). */
static void tc_expect_close(tconn *c) {
  int64_t until = now_ms() + WAIT_MS;
  for (;;) {
    int t = tc_read(c, (int)(until - now_ms()));
    if (t == 0)
      return;
    if (t < 0)
      fail_msg("the server did not close the connection");
  }
}

/* Expects nothing to arrive for SILENCE_MS. */
static void tc_expect_silence(tconn *c) {
  int t = tc_read(c, SILENCE_MS);
  if (t >= 0)
    fail_msg("expected silence, got %s", t == 0 ? "a close" : np__sig_type_name((uint8_t)t));
}

static void pubkey_of(const np_identity *id, uint8_t pk[NP_PUBKEY_LEN]) {
  np_identity_public_key(id, pk);
}

/* HELLO .. CHALLENGE; returns the nonce through c->msg. */
static void tc_hello(tconn *c, const np_identity *id) {
  np_sig_msg m = {0};
  m.type = NP_SIG_HELLO;
  m.has_pubkey = true;
  pubkey_of(id, m.pubkey);
  tc_send_msg(c, &m, NULL);
  assert_int_equal(tc_read(c, WAIT_MS), NP_SIG_CHALLENGE);
  assert_true(c->msg.has_nonce);
  /* OBSERVED: our address as the server sees it. */
  assert_true(np_addr_equal(&c->msg.observed, &c->local));
}

static void make_register(np_sig_msg *m, const uint8_t nonce[NP_SIG_NONCE_LEN],
                          const uint8_t (*allow)[NP_PUBKEY_LEN], int n_allow) {
  memset(m, 0, sizeof *m);
  m->type = NP_SIG_REGISTER;
  m->has_nonce = true;
  memcpy(m->nonce, nonce, NP_SIG_NONCE_LEN);
  for (int i = 0; i < n_allow; i++)
    memcpy(m->allow[i], allow[i], NP_PUBKEY_LEN);
  m->n_allow = n_allow;
}

/* Registers id on c; returns the type of the server's answer. */
static int tc_register(tconn *c, const np_identity *id, const uint8_t (*allow)[NP_PUBKEY_LEN],
                       int n_allow) {
  tc_hello(c, id);
  np_sig_msg m;
  make_register(&m, c->msg.nonce, allow, n_allow);
  tc_send_msg(c, &m, id);
  int t = tc_read(c, WAIT_MS);
  if (t == NP_SIG_REGISTERED)
    assert_true(np_addr_equal(&c->msg.observed, &c->local));
  return t;
}

/* Wall clock: what a peer puts in TIMESTAMP (the server checks it). */
static uint64_t wall_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void make_fwd(np_sig_msg *m, uint8_t type, const np_identity *from,
                     const uint8_t to[NP_PUBKEY_LEN], uint8_t session_byte) {
  memset(m, 0, sizeof *m);
  m->type = type;
  m->has_from = m->has_to = m->has_session = m->has_timestamp = true;
  pubkey_of(from, m->from);
  memcpy(m->to, to, NP_PUBKEY_LEN);
  memset(m->session, session_byte, NP_SIG_SESSION_LEN);
  m->timestamp_ms = wall_now_ms();
  assert_int_equal(np_addr_parse("10.0.0.7:40000", 0, &m->cand.private_addrs[0]), 0);
  m->cand.n_private = 1;
}

/* ---- the shared server and its two good peers ---------------------------------- */

struct peer {
  np_identity *id;
  uint8_t pk[NP_PUBKEY_LEN];
  tconn *c;
};

static struct server g_srv;
static struct peer g_a, g_b;

static void peer_init(struct peer *p) {
  assert_int_equal(np_identity_generate(&p->id), 0);
  pubkey_of(p->id, p->pk);
  p->c = NULL;
}

static void peer_free(struct peer *p) {
  tc_free(p->c);
  np_identity_free(p->id);
  memset(p, 0, sizeof *p);
}

static void peer_register(struct peer *p, const struct server *s) {
  p->c = tc_connect(s);
  assert_int_equal(tc_register(p->c, p->id, NULL, 0), NP_SIG_REGISTERED);
}

/* The good peers are still served: PING/PONG both, an offer from A reaches
 * B with A's address stamped, B's answer reaches A. */
static void check_alive(void) {
  static uint8_t session = 1;
  np_rendezvous_stats before = stats_of(&g_srv);
  np_sig_msg m = {0};
  m.type = NP_SIG_PING;
  tc_send_msg(g_a.c, &m, NULL);
  tc_send_msg(g_b.c, &m, NULL);
  assert_int_equal(tc_read(g_a.c, WAIT_MS), NP_SIG_PONG);
  assert_int_equal(tc_read(g_b.c, WAIT_MS), NP_SIG_PONG);

  session++;
  make_fwd(&m, NP_SIG_OFFER, g_a.id, g_b.pk, session);
  tc_send_msg(g_a.c, &m, g_a.id);
  assert_int_equal(tc_read(g_b.c, WAIT_MS), NP_SIG_OFFER);
  assert_memory_equal(g_b.c->msg.from, g_a.pk, NP_PUBKEY_LEN);
  assert_int_equal(g_b.c->msg.session[0], session);
  assert_true(np_addr_equal(&g_b.c->msg.observed, &g_a.c->local));

  make_fwd(&m, NP_SIG_ANSWER, g_b.id, g_a.pk, session);
  tc_send_msg(g_b.c, &m, g_b.id);
  assert_int_equal(tc_read(g_a.c, WAIT_MS), NP_SIG_ANSWER);
  assert_memory_equal(g_a.c->msg.from, g_b.pk, NP_PUBKEY_LEN);
  assert_true(np_addr_equal(&g_a.c->msg.observed, &g_b.c->local));

  /* The server counts after it wrote, so the counter may lag the bytes. */
  np_rendezvous_stats after;
  WAIT_FOR(&g_srv, after, after.offers == before.offers + 1 && after.answers == before.answers + 1);
}

static int group_setup(void **state) {
  (void)state;
  np_rendezvous_server_config cfg = {0};
  cfg.auth_timeout_ms = AUTH_MS;
  cfg.max_unauthenticated = MAX_UNAUTH;
  cfg.max_connections = 4000;
  /* These tests aim at the global limits from one address: the per-address
   * ones (test_per_ip_*) out of their way. */
  cfg.max_conn_per_ip = 100000;
  cfg.max_unauth_per_ip = 100000;
  cfg.max_register_per_ip = 100000;
  server_start(&g_srv, cfg);
  peer_init(&g_a);
  peer_init(&g_b);
  peer_register(&g_a, &g_srv);
  peer_register(&g_b, &g_srv);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  server_stop(&g_srv);
  peer_free(&g_a);
  peer_free(&g_b);
  return 0;
}

/* ---- tests ------------------------------------------------------------------ */

static void test_baseline(void **state) {
  (void)state;
  np_rendezvous_stats st = stats_of(&g_srv);
  assert_true(st.registered >= 2);
  assert_true(st.registrations >= 2);
  check_alive();
}

/* Frames whose body is not a message: 400, closed, counted. */
static void test_garbage_body(void **state) {
  (void)state;
  np_rendezvous_stats before = stats_of(&g_srv);
  /* Version 1 but an unknown type and junk TLVs. */
  uint8_t f1[] = {0, 0, 0, 12, 1, 0xEE, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0, 1, 0xff, 0xff};
  /* A TLV running past the end of the body. */
  uint8_t f2[] = {0, 0, 0, 8, 1, NP_SIG_HELLO, 0, 0, 0, 1, 0x40, 0};
  /* Shorter than a header. */
  uint8_t f3[] = {0, 0, 0, 2, 1, 1};
  const uint8_t *frames[] = {f1, f2, f3};
  size_t lens[] = {sizeof f1, sizeof f2, sizeof f3};
  for (int i = 0; i < 3; i++) {
    tconn *c = tc_connect(&g_srv);
    tc_send(c, frames[i], lens[i]);
    tc_expect_error(c, NP_SIG_E_BAD_REQUEST);
    tc_expect_close(c);
    tc_free(c);
  }
  np_rendezvous_stats st;
  WAIT_FOR(&g_srv, st, st.closed_bad_frame == before.closed_bad_frame + 3);
  assert_true(st.errors_sent >= before.errors_sent + 3);
  check_alive();
}

static void test_bad_version(void **state) {
  (void)state;
  np_rendezvous_stats before = stats_of(&g_srv);
  tconn *c = tc_connect(&g_srv);
  uint8_t f[] = {0, 0, 0, 4, 2, NP_SIG_PING, 0, 0};
  tc_send(c, f, sizeof f);
  tc_expect_error(c, NP_SIG_E_VERSION);
  tc_expect_close(c);
  tc_free(c);
  np_rendezvous_stats st;
  WAIT_FOR(&g_srv, st, st.closed_bad_frame == before.closed_bad_frame + 1);
  check_alive();
}

/* An oversized length prefix is refused as soon as the prefix is in, before
 * any body: 413 and close, even though the body never comes. */
static void test_oversized_prefix(void **state) {
  (void)state;
  np_rendezvous_stats before = stats_of(&g_srv);
  uint32_t sizes[] = {NP_SIG_MAX_FRAME + 1, 0x7fffffff, 0xffffffff};
  for (int i = 0; i < 3; i++) {
    tconn *c = tc_connect(&g_srv);
    uint8_t p[4] = {(uint8_t)(sizes[i] >> 24), (uint8_t)(sizes[i] >> 16), (uint8_t)(sizes[i] >> 8),
                    (uint8_t)sizes[i]};
    tc_send(c, p, sizeof p);
    tc_expect_error(c, NP_SIG_E_TOO_LARGE);
    tc_expect_close(c);
    tc_free(c);
  }
  /* The same after registering: a registered peer is not trusted more. */
  struct peer p;
  peer_init(&p);
  peer_register(&p, &g_srv);
  uint8_t big[4] = {0, 1, 0, 0};
  tc_send(p.c, big, sizeof big);
  tc_expect_error(p.c, NP_SIG_E_TOO_LARGE);
  tc_expect_close(p.c);
  peer_free(&p);
  np_rendezvous_stats st;
  WAIT_FOR(&g_srv, st,
           st.closed_bad_frame == before.closed_bad_frame + 4 &&
               st.registered == before.registered);
  check_alive();
}

/* Every frame of a registration and an offer, one byte per send. */
static void send_bytewise(tconn *c, const np_sig_msg *m, const np_identity *id) {
  uint8_t buf[NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME];
  int n = encode(m, id, buf, sizeof buf);
  for (int i = 0; i < n; i++) {
    tc_send(c, buf + i, 1);
    if (i % 7 == 0)
      usleep(200); /* let some bytes arrive alone */
  }
}

static void test_split_byte_by_byte(void **state) {
  (void)state;
  struct peer p;
  peer_init(&p);
  p.c = tc_connect(&g_srv);
  np_sig_msg m = {0};
  m.type = NP_SIG_HELLO;
  m.has_pubkey = true;
  memcpy(m.pubkey, p.pk, NP_PUBKEY_LEN);
  send_bytewise(p.c, &m, NULL);
  assert_int_equal(tc_read(p.c, WAIT_MS), NP_SIG_CHALLENGE);
  make_register(&m, p.c->msg.nonce, NULL, 0);
  send_bytewise(p.c, &m, p.id);
  assert_int_equal(tc_read(p.c, WAIT_MS), NP_SIG_REGISTERED);

  make_fwd(&m, NP_SIG_OFFER, p.id, g_b.pk, 0x55);
  send_bytewise(p.c, &m, p.id);
  assert_int_equal(tc_read(g_b.c, WAIT_MS), NP_SIG_OFFER);
  assert_memory_equal(g_b.c->msg.from, p.pk, NP_PUBKEY_LEN);
  assert_true(np_addr_equal(&g_b.c->msg.observed, &p.c->local));

  /* Two frames in one send, then a frame split across sends. */
  uint8_t two[64];
  np_sig_msg ping = {0};
  ping.type = NP_SIG_PING;
  int n1 = encode(&ping, NULL, two, sizeof two);
  int n2 = encode(&ping, NULL, two + n1, sizeof two - (size_t)n1);
  tc_send(p.c, two, (size_t)(n1 + n2 - 3));
  assert_int_equal(tc_read(p.c, WAIT_MS), NP_SIG_PONG);
  tc_expect_silence(p.c);
  tc_send(p.c, two + n1 + n2 - 3, 3);
  assert_int_equal(tc_read(p.c, WAIT_MS), NP_SIG_PONG);
  peer_free(&p);
  check_alive();
}

/* Connections that never register: silent, half a frame, HELLO only. Each
 * is closed once the auth timeout passes, not before. */
static void test_slowloris(void **state) {
  (void)state;
  np_rendezvous_stats before = stats_of(&g_srv);
  struct peer p;
  peer_init(&p);
  tconn *silent = tc_connect(&g_srv);
  tconn *half = tc_connect(&g_srv);
  tconn *hello = tc_connect(&g_srv);
  int64_t t0 = now_ms();
  uint8_t buf[256];
  np_sig_msg m = {0};
  m.type = NP_SIG_HELLO;
  m.has_pubkey = true;
  memcpy(m.pubkey, p.pk, NP_PUBKEY_LEN);
  int n = encode(&m, NULL, buf, sizeof buf);
  tc_send(half, buf, (size_t)n / 2);
  tc_hello(hello, p.id);

  /* The good peers are served while these hang. */
  check_alive();

  tconn *all[] = {silent, half, hello};
  for (int i = 0; i < 3; i++) {
    tc_expect_close(all[i]);
    int64_t waited = now_ms() - t0;
    if (waited < AUTH_MS - 50)
      fail_msg("connection %d closed after %lld ms, before the %d ms auth timeout", i,
               (long long)waited, AUTH_MS);
    tc_free(all[i]);
  }
  np_rendezvous_stats st;
  WAIT_FOR(&g_srv, st, st.closed_auth == before.closed_auth + 3);
  assert_int_equal(st.registrations, before.registrations);
  peer_free(&p);
  check_alive();
}

/* More connections at once than max_unauthenticated: the excess is closed at
 * once, the rest times out, the log stays bounded, the good peers are
 * served throughout, and a new peer can register afterwards. */
static void test_connection_flood(void **state) {
  (void)state;
  np_rendezvous_stats before = stats_of(&g_srv);
  int lines_before = atomic_load(&g_log_lines);
  static int fds[FLOOD];
  int64_t t0 = now_ms();
  for (int i = 0; i < FLOOD; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(fds[i] >= 0);
    int rc = connect(fds[i], &g_srv.addr.u.sa, np_addr_len(&g_srv.addr));
    assert_true(rc == 0 || errno == EINPROGRESS);
  }
  check_alive();
  np_rendezvous_stats st;
  WAIT_FOR(&g_srv, st,
           st.connections + st.refused_full >= before.connections + before.refused_full + FLOOD);
  /* At most MAX_UNAUTH got in (minus none: the good peers are registered). */
  assert_true(st.connections - before.connections <= MAX_UNAUTH);
  assert_true(st.refused_full - before.refused_full >= FLOOD - MAX_UNAUTH);
  check_alive();
  /* The admitted ones time out. */
  WAIT_FOR(&g_srv, st, st.open == before.open);
  assert_int_equal(st.closed_auth - before.closed_auth, st.connections - before.connections);
  int64_t elapsed = now_ms() - t0;
  for (int i = 0; i < FLOOD; i++)
    close(fds[i]);
  /* ~2000 closes, but the connection log is rate-limited (20 lines a second
   * plus a suppression summary per second). */
  int lines = atomic_load(&g_log_lines) - lines_before;
  int bound = (int)(elapsed / 1000 + 2) * 21 + 2;
  if (lines > bound)
    fail_msg("%d log lines in %lld ms during the flood (bound %d)", lines, (long long)elapsed,
             bound);
  /* A newcomer can register after the storm. */
  struct peer p;
  peer_init(&p);
  peer_register(&p, &g_srv);
  peer_free(&p);
  check_alive();
}

static void test_register_wrong_signature(void **state) {
  (void)state;
  np_rendezvous_stats before = stats_of(&g_srv);
  struct peer p, other;
  peer_init(&p);
  peer_init(&other);

  /* Signed over a nonce the server never issued. */
  tconn *c = tc_connect(&g_srv);
  tc_hello(c, p.id);
  uint8_t wrong[NP_SIG_NONCE_LEN];
  memcpy(wrong, c->msg.nonce, sizeof wrong);
  wrong[0] ^= 1;
  np_sig_msg m;
  make_register(&m, wrong, NULL, 0);
  tc_send_msg(c, &m, p.id);
  tc_expect_error(c, NP_SIG_E_AUTH);
  tc_expect_close(c);
  tc_free(c);

  /* Someone else's key in PUBKEY (HELLO announced it), signed by ours. */
  c = tc_connect(&g_srv);
  tc_hello(c, g_a.id);
  make_register(&m, c->msg.nonce, NULL, 0);
  uint8_t buf[512];
  int n = encode(&m, p.id, buf, sizeof buf);
  /* Swap our PUBKEY value for A's: the signature no longer matches. */
  uint8_t *at = memmem(buf, (size_t)n, p.pk, NP_PUBKEY_LEN);
  assert_non_null(at);
  memcpy(at, g_a.pk, NP_PUBKEY_LEN);
  tc_send(c, buf, (size_t)n);
  tc_expect_error(c, NP_SIG_E_AUTH);
  tc_expect_close(c);
  tc_free(c);

  /* A REGISTER for a key other than the HELLO's. */
  c = tc_connect(&g_srv);
  tc_hello(c, other.id);
  make_register(&m, c->msg.nonce, NULL, 0);
  tc_send_msg(c, &m, p.id);
  tc_expect_error(c, NP_SIG_E_AUTH);
  tc_expect_close(c);
  tc_free(c);

  /* The allow list is signed too: adding one after signing fails. */
  c = tc_connect(&g_srv);
  tc_hello(c, p.id);
  uint8_t allow[1][NP_PUBKEY_LEN];
  memcpy(allow[0], other.pk, NP_PUBKEY_LEN);
  make_register(&m, c->msg.nonce, (const uint8_t(*)[NP_PUBKEY_LEN])allow, 1);
  n = encode(&m, p.id, buf, sizeof buf);
  at = memmem(buf, (size_t)n, other.pk, NP_PUBKEY_LEN);
  assert_non_null(at);
  at[5] ^= 0x20;
  tc_send(c, buf, (size_t)n);
  tc_expect_error(c, NP_SIG_E_AUTH);
  tc_expect_close(c);
  tc_free(c);

  np_rendezvous_stats st;
  WAIT_FOR(&g_srv, st, st.closed_auth == before.closed_auth + 4);
  assert_int_equal(st.registrations, before.registrations);
  /* A is still A's: an offer to A still reaches the real A. */
  check_alive();
  peer_free(&p);
  peer_free(&other);
}

/* A registered peer speaking as A (FROM = A, validly signed by A's key,
 * which the attacker somehow has) is still refused: FROM must be the key
 * this connection registered. And a FROM that matches with a broken
 * signature is refused as well. */
static void test_offer_impersonation(void **state) {
  (void)state;
  np_rendezvous_stats before = stats_of(&g_srv);
  struct peer p;
  peer_init(&p);
  peer_register(&p, &g_srv);
  np_sig_msg m;
  make_fwd(&m, NP_SIG_OFFER, g_a.id, g_b.pk, 0x66);
  tc_send_msg(p.c, &m, g_a.id);
  tc_expect_error(p.c, NP_SIG_E_AUTH);
  tc_expect_close(p.c);
  tc_free(p.c);
  tc_expect_silence(g_b.c); /* B never saw it */

  p.c = tc_connect(&g_srv);
  assert_int_equal(tc_register(p.c, p.id, NULL, 0), NP_SIG_REGISTERED);
  make_fwd(&m, NP_SIG_OFFER, p.id, g_b.pk, 0x67);
  uint8_t buf[1024];
  int n = encode(&m, p.id, buf, sizeof buf);
  uint8_t session[NP_SIG_SESSION_LEN];
  memset(session, 0x67, sizeof session);
  uint8_t *at = memmem(buf, (size_t)n, session, sizeof session);
  assert_non_null(at);
  at[0] ^= 1; /* signed bytes changed */
  tc_send(p.c, buf, (size_t)n);
  tc_expect_error(p.c, NP_SIG_E_AUTH);
  tc_expect_close(p.c);
  tc_expect_silence(g_b.c);

  np_rendezvous_stats st;
  WAIT_FOR(&g_srv, st,
           st.closed_auth == before.closed_auth + 2 && st.registered == before.registered);
  assert_int_equal(st.offers, before.offers);
  peer_free(&p);
  check_alive();
}

/* The same key registered twice: the first connection gets 409 and is
 * closed; offers go to the second. */
static void test_register_twice(void **state) {
  (void)state;
  np_rendezvous_stats before = stats_of(&g_srv);
  struct peer p;
  peer_init(&p);
  peer_register(&p, &g_srv);
  tconn *second = tc_connect(&g_srv);
  assert_int_equal(tc_register(second, p.id, NULL, 0), NP_SIG_REGISTERED);
  tc_expect_error(p.c, NP_SIG_E_REPLACED);
  tc_expect_close(p.c);

  np_rendezvous_stats st = stats_of(&g_srv);
  assert_int_equal(st.registered, before.registered + 1);
  assert_int_equal(st.registrations, before.registrations + 2);

  np_sig_msg m;
  make_fwd(&m, NP_SIG_OFFER, g_a.id, p.pk, 0x77);
  tc_send_msg(g_a.c, &m, g_a.id);
  assert_int_equal(tc_read(second, WAIT_MS), NP_SIG_OFFER);
  assert_memory_equal(second->msg.from, g_a.pk, NP_PUBKEY_LEN);

  /* Closing the replaced connection did not unregister the new one; closing
   * the new one does. */
  tc_free(second);
  WAIT_FOR(&g_srv, st, st.registered == before.registered);
  make_fwd(&m, NP_SIG_OFFER, g_a.id, p.pk, 0x78);
  tc_send_msg(g_a.c, &m, g_a.id);
  tc_expect_error(g_a.c, NP_SIG_E_UNKNOWN_PEER);
  peer_free(&p);
  check_alive();
}

/* An offer to nobody: 404 with the session echoed, sender stays. */
static void test_unknown_peer(void **state) {
  (void)state;
  struct peer nobody;
  peer_init(&nobody);
  np_sig_msg m;
  make_fwd(&m, NP_SIG_OFFER, g_a.id, nobody.pk, 0x88);
  tc_send_msg(g_a.c, &m, g_a.id);
  tc_expect_error(g_a.c, NP_SIG_E_UNKNOWN_PEER);
  assert_true(g_a.c->msg.has_session);
  assert_int_equal(g_a.c->msg.session[0], 0x88);
  make_fwd(&m, NP_SIG_ANSWER, g_a.id, nobody.pk, 0x89);
  tc_send_msg(g_a.c, &m, g_a.id);
  tc_expect_error(g_a.c, NP_SIG_E_UNKNOWN_PEER);
  assert_int_equal(g_a.c->msg.session[0], 0x89);
  peer_free(&nobody);
  check_alive();
}

/* A callee with an allow list: callers not on it get 403 and the callee
 * never hears of them; listed callers get through. */
static void test_allow_list(void **state) {
  (void)state;
  np_rendezvous_stats before = stats_of(&g_srv);
  struct peer callee;
  peer_init(&callee);
  callee.c = tc_connect(&g_srv);
  uint8_t allow[1][NP_PUBKEY_LEN];
  memcpy(allow[0], g_a.pk, NP_PUBKEY_LEN);
  assert_int_equal(tc_register(callee.c, callee.id, (const uint8_t(*)[NP_PUBKEY_LEN])allow, 1),
                   NP_SIG_REGISTERED);
  np_sig_msg m;
  make_fwd(&m, NP_SIG_OFFER, g_b.id, callee.pk, 0x91);
  tc_send_msg(g_b.c, &m, g_b.id);
  tc_expect_error(g_b.c, NP_SIG_E_REFUSED);
  assert_int_equal(g_b.c->msg.session[0], 0x91);
  tc_expect_silence(callee.c);

  make_fwd(&m, NP_SIG_OFFER, g_a.id, callee.pk, 0x92);
  tc_send_msg(g_a.c, &m, g_a.id);
  assert_int_equal(tc_read(callee.c, WAIT_MS), NP_SIG_OFFER);
  assert_int_equal(callee.c->msg.session[0], 0x92);
  /* ANSWER and READY obey the receiver's allow list as OFFER does: B is not
   * on the callee's list, and the callee never called B. */
  make_fwd(&m, NP_SIG_ANSWER, g_b.id, callee.pk, 0x93);
  tc_send_msg(g_b.c, &m, g_b.id);
  tc_expect_error(g_b.c, NP_SIG_E_REFUSED);
  make_fwd(&m, NP_SIG_READY, g_b.id, callee.pk, 0x93);
  tc_send_msg(g_b.c, &m, g_b.id);
  tc_expect_error(g_b.c, NP_SIG_E_REFUSED);
  tc_expect_silence(callee.c);
  /* The callee calls B itself: B's answer and READY to that session pass
   * (the list says who may call the callee, not whom it may call)... */
  make_fwd(&m, NP_SIG_OFFER, callee.id, g_b.pk, 0x94);
  tc_send_msg(callee.c, &m, callee.id);
  assert_int_equal(tc_read(g_b.c, WAIT_MS), NP_SIG_OFFER);
  make_fwd(&m, NP_SIG_ANSWER, g_b.id, callee.pk, 0x94);
  tc_send_msg(g_b.c, &m, g_b.id);
  assert_int_equal(tc_read(callee.c, WAIT_MS), NP_SIG_ANSWER);
  assert_int_equal(callee.c->msg.session[0], 0x94);
  make_fwd(&m, NP_SIG_READY, g_b.id, callee.pk, 0x94);
  tc_send_msg(g_b.c, &m, g_b.id);
  assert_int_equal(tc_read(callee.c, WAIT_MS), NP_SIG_READY);
  /* ...but not to another session. */
  make_fwd(&m, NP_SIG_ANSWER, g_b.id, callee.pk, 0x95);
  tc_send_msg(g_b.c, &m, g_b.id);
  tc_expect_error(g_b.c, NP_SIG_E_REFUSED);
  tc_expect_silence(callee.c);
  np_rendezvous_stats st;
  WAIT_FOR(&g_srv, st, st.offers == before.offers + 2 && st.answers == before.answers + 1);
  peer_free(&callee);
  check_alive();
}

/* A sender whose clock is more than 2 minutes off (a hand-made TIMESTAMP,
 * 300 s behind, then 200 s ahead) is told so at once (425, naming the
 * skew and the session); the message still goes on (the receiver's clock
 * decides), and a sender within the window hears nothing. */
static void test_clock_skew(void **state) {
  (void)state;
  np_sig_msg m;
  make_fwd(&m, NP_SIG_OFFER, g_a.id, g_b.pk, 0xA1);
  m.timestamp_ms = wall_now_ms() - 300000;
  tc_send_msg(g_a.c, &m, g_a.id);
  tc_expect_error(g_a.c, NP_SIG_E_CLOCK);
  assert_true(g_a.c->msg.has_session);
  assert_int_equal(g_a.c->msg.session[0], 0xA1);
  assert_non_null(strstr(g_a.c->msg.error_text, "300 s behind"));
  assert_int_equal(tc_read(g_b.c, WAIT_MS), NP_SIG_OFFER);
  assert_int_equal(g_b.c->msg.session[0], 0xA1);

  make_fwd(&m, NP_SIG_OFFER, g_a.id, g_b.pk, 0xA2);
  m.timestamp_ms = wall_now_ms() + 200000;
  tc_send_msg(g_a.c, &m, g_a.id);
  tc_expect_error(g_a.c, NP_SIG_E_CLOCK);
  assert_non_null(strstr(g_a.c->msg.error_text, "ahead of"));
  assert_int_equal(tc_read(g_b.c, WAIT_MS), NP_SIG_OFFER);

  make_fwd(&m, NP_SIG_OFFER, g_a.id, g_b.pk, 0xA3);
  m.timestamp_ms = wall_now_ms() - 60000; /* within the window */
  tc_send_msg(g_a.c, &m, g_a.id);
  assert_int_equal(tc_read(g_b.c, WAIT_MS), NP_SIG_OFFER);
  tc_expect_silence(g_a.c);
  check_alive();
}

/* Messages out of order or of types a peer must not send: 400, close. */
static void test_out_of_order(void **state) {
  (void)state;
  np_rendezvous_stats before = stats_of(&g_srv);
  struct peer p;
  peer_init(&p);
  np_sig_msg m;

  /* OFFER before registering. */
  tconn *c = tc_connect(&g_srv);
  make_fwd(&m, NP_SIG_OFFER, p.id, g_b.pk, 1);
  tc_send_msg(c, &m, p.id);
  tc_expect_error(c, NP_SIG_E_BAD_REQUEST);
  tc_expect_close(c);
  tc_free(c);

  /* REGISTER without HELLO. */
  c = tc_connect(&g_srv);
  uint8_t nonce[NP_SIG_NONCE_LEN] = {0};
  make_register(&m, nonce, NULL, 0);
  tc_send_msg(c, &m, p.id);
  tc_expect_error(c, NP_SIG_E_BAD_REQUEST);
  tc_expect_close(c);
  tc_free(c);

  /* A registered peer sending a server message (CHALLENGE), then HELLO. */
  uint8_t types[] = {NP_SIG_CHALLENGE, NP_SIG_HELLO, NP_SIG_ERROR};
  for (int i = 0; i < 3; i++) {
    peer_register(&p, &g_srv);
    memset(&m, 0, sizeof m);
    m.type = types[i];
    m.has_nonce = m.has_pubkey = true;
    memcpy(m.pubkey, p.pk, NP_PUBKEY_LEN);
    m.error_code = 400;
    tc_send_msg(p.c, &m, NULL);
    tc_expect_error(p.c, NP_SIG_E_BAD_REQUEST);
    tc_expect_close(p.c);
    tc_free(p.c);
    p.c = NULL;
  }
  np_rendezvous_stats st;
  WAIT_FOR(&g_srv, st,
           st.closed_bad_frame == before.closed_bad_frame + 5 &&
               st.registered == before.registered);
  peer_free(&p);
  check_alive();
}

/* Over the per-connection rate: some PONGs (the burst), then 429, close. */
static void test_rate_limit(void **state) {
  (void)state;
  np_rendezvous_stats before = stats_of(&g_srv);
  struct peer p;
  peer_init(&p);
  peer_register(&p, &g_srv);
  uint8_t buf[200 * 16];
  np_sig_msg ping = {0};
  ping.type = NP_SIG_PING;
  size_t len = 0;
  for (int i = 0; i < 200; i++)
    len += (size_t)encode(&ping, NULL, buf + len, sizeof buf - len);
  tc_send(p.c, buf, len);
  int pongs = 0, t;
  while ((t = tc_read(p.c, WAIT_MS)) == NP_SIG_PONG)
    pongs++;
  assert_int_equal(t, NP_SIG_ERROR);
  assert_int_equal(p.c->msg.error_code, NP_SIG_E_RATE);
  /* The default rate is 20/s with a burst of 40 (registering took 2). */
  assert_true(pongs >= 30 && pongs <= 45);
  tc_expect_close(p.c);
  np_rendezvous_stats st;
  WAIT_FOR(&g_srv, st,
           st.closed_rate == before.closed_rate + 1 && st.registered == before.registered);
  peer_free(&p);
  check_alive();
}

/* Random frames (well-framed, mostly version 1, any type, junk TLVs) from
 * many connections: each is answered or closed, the server survives, the
 * good peers are served. Rounds of 60 stay under max_unauthenticated. */
static void test_random_frames(void **state) {
  (void)state;
  np_rendezvous_stats before = stats_of(&g_srv);
  uint32_t rng = 0x9e3779b9u;
  enum { ROUNDS = 5, CONNS = 60 };
  for (int round = 0; round < ROUNDS; round++) {
    tconn *cs[CONNS];
    for (int i = 0; i < CONNS; i++) {
      cs[i] = tc_connect(&g_srv);
      int frames = 1 + (int)(rng % 4);
      for (int f = 0; f < frames; f++) {
        uint8_t buf[4 + 256];
        rng = rng * 1103515245u + 12345u;
        size_t body = 4 + (rng >> 8) % 252;
        buf[0] = buf[1] = buf[2] = 0;
        buf[3] = (uint8_t)body;
        for (size_t k = 0; k < body; k++) {
          rng = rng * 1103515245u + 12345u;
          buf[4 + k] = (uint8_t)(rng >> 16);
        }
        if (rng & 0x300) {
          buf[4] = NP_SIG_VERSION;
          buf[5] = (uint8_t)(1 + (rng >> 24) % 10);
          buf[6] = buf[7] = 0;
        }
        /* The server may have closed already: errors are expected. */
        if (send(cs[i]->fd, buf, 4 + body, MSG_NOSIGNAL) < 0)
          break;
      }
    }
    for (int i = 0; i < CONNS; i++) {
      /* Frames never decode into anything that registers: each connection
       * ends with a close (ERROR first) or sits unregistered until we
       * close it. */
      int t;
      while ((t = tc_read(cs[i], 20)) > 0)
        assert_true(t == NP_SIG_ERROR || t == NP_SIG_PONG || t == NP_SIG_CHALLENGE);
      tc_free(cs[i]);
    }
  }
  np_rendezvous_stats st;
  WAIT_FOR(&g_srv, st, st.open == before.open);
  assert_true(st.closed_bad_frame > before.closed_bad_frame);
  assert_int_equal(st.registrations, before.registrations);
  check_alive();
}

/* The same server code over IPv6 (skipped when ::1 is not configured). */
static void test_ipv6(void **state) {
  (void)state;
  int probe = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 lo = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  bool have = probe >= 0 && bind(probe, (struct sockaddr *)&lo, sizeof lo) == 0;
  if (probe >= 0)
    close(probe);
  if (!have)
    skip();
  struct server s;
  np_rendezvous_server_config cfg = {0};
  server_start_on(&s, cfg, "::1");
  assert_int_equal(s.addr.u.sa.sa_family, AF_INET6);
  struct peer p1, p2;
  peer_init(&p1);
  peer_init(&p2);
  peer_register(&p1, &s); /* checks OBSERVED = our [::1]:port */
  peer_register(&p2, &s);
  np_sig_msg m;
  make_fwd(&m, NP_SIG_OFFER, p1.id, p2.pk, 6);
  tc_send_msg(p1.c, &m, p1.id);
  assert_int_equal(tc_read(p2.c, WAIT_MS), NP_SIG_OFFER);
  assert_true(np_addr_equal(&p2.c->msg.observed, &p1.c->local));
  peer_free(&p1);
  peer_free(&p2);
  server_stop(&s);
}

/* ---- separate servers for the global limits ---------------------------------- */

/* At max_connections a newcomer gets 503 and is closed. */
static void test_max_connections(void **state) {
  (void)state;
  struct server s;
  np_rendezvous_server_config cfg = {0};
  cfg.max_connections = 2;
  server_start(&s, cfg);
  struct peer p1, p2;
  peer_init(&p1);
  peer_init(&p2);
  peer_register(&p1, &s);
  peer_register(&p2, &s);
  tconn *c = tc_connect(&s);
  tc_expect_error(c, NP_SIG_E_UNAVAILABLE);
  tc_expect_close(c);
  tc_free(c);
  np_rendezvous_stats st;
  WAIT_FOR(&s, st, st.refused_full == 1);
  assert_int_equal(st.open, 2);
  /* The registered ones keep working. */
  np_sig_msg m;
  make_fwd(&m, NP_SIG_OFFER, p1.id, p2.pk, 3);
  tc_send_msg(p1.c, &m, p1.id);
  assert_int_equal(tc_read(p2.c, WAIT_MS), NP_SIG_OFFER);
  /* A slot that frees up can be taken again. */
  tc_free(p2.c);
  p2.c = NULL;
  WAIT_FOR(&s, st, st.open == 1);
  peer_register(&p2, &s);
  peer_free(&p1);
  peer_free(&p2);
  server_stop(&s);
}

/* A registered peer that sends nothing is closed after the idle timeout;
 * one that pings more often than that stays. Own server: short timeout. */
static void test_idle_timeout(void **state) {
  (void)state;
  struct server s;
  np_rendezvous_server_config cfg = {0};
  cfg.idle_timeout_ms = 300;
  server_start(&s, cfg);
  struct peer quiet, chatty;
  peer_init(&quiet);
  peer_init(&chatty);
  peer_register(&quiet, &s);
  peer_register(&chatty, &s);
  int64_t t0 = now_ms();
  np_sig_msg ping = {0};
  ping.type = NP_SIG_PING;
  np_rendezvous_stats st;
  for (int i = 0; i < 8; i++) {
    tc_send_msg(chatty.c, &ping, NULL);
    assert_int_equal(tc_read(chatty.c, WAIT_MS), NP_SIG_PONG);
    usleep(100000);
  }
  tc_expect_close(quiet.c);
  assert_true(now_ms() - t0 >= 250);
  WAIT_FOR(&s, st, st.closed_idle == 1 && st.registered == 1);
  /* The chatty one outlived three idle timeouts and is still registered. */
  tc_send_msg(chatty.c, &ping, NULL);
  assert_int_equal(tc_read(chatty.c, WAIT_MS), NP_SIG_PONG);
  peer_free(&quiet);
  peer_free(&chatty);
  server_stop(&s);
}

/* A registered peer that never reads while offers pour in is closed once its
 * output queue passes the bound; the server's memory for it stays bounded
 * and the sender is unaffected. Needs a high message rate, so its own
 * server. */
static void test_slow_reader(void **state) {
  (void)state;
  struct server s;
  np_rendezvous_server_config cfg = {0};
  cfg.msgs_per_sec = 1000000;
  server_start(&s, cfg);
  struct peer sender, sink;
  peer_init(&sender);
  peer_init(&sink);
  peer_register(&sender, &s);
  sink.c = tc_connect(&s);
  int small = 4096;
  setsockopt(sink.c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  assert_int_equal(tc_register(sink.c, sink.id, NULL, 0), NP_SIG_REGISTERED);

  /* Big offers (every candidate field) to fill the pipes quickly. */
  np_sig_msg m;
  make_fwd(&m, NP_SIG_OFFER, sender.id, sink.pk, 9);
  for (int i = 0; i < NP_SIG_MAX_PRIVATE; i++) {
    char a[64];
    snprintf(a, sizeof a, "[2001:db8::%d]:%d", i + 1, 1000 + i);
    assert_int_equal(np_addr_parse(a, 0, &m.cand.private_addrs[i]), 0);
  }
  m.cand.n_private = NP_SIG_MAX_PRIVATE;
  uint8_t frame[1024];
  int n = encode(&m, sender.id, frame, sizeof frame);
  np_rendezvous_stats st;
  int sent = 0;
  int64_t until = now_ms() + 20000;
  for (;;) {
    st = stats_of(&s);
    if (st.closed_rate >= 1)
      break;
    if (now_ms() > until)
      fail_msg("the non-reading peer was never closed (%d offers sent)", sent);
    for (int i = 0; i < 64; i++)
      tc_send(sender.c, frame, (size_t)n);
    sent += 64;
    /* Errors (404 once the sink is gone) are fine; keep our input drained. */
    while (tc_read(sender.c, 0) > 0) {
    }
  }
  WAIT_FOR(&s, st, st.registered == 1);
  /* The sender is still served. */
  np_sig_msg ping = {0};
  ping.type = NP_SIG_PING;
  tc_send_msg(sender.c, &ping, NULL);
  int t;
  while ((t = tc_read(sender.c, WAIT_MS)) == NP_SIG_ERROR) {
  }
  assert_int_equal(t, NP_SIG_PONG);
  peer_free(&sender);
  peer_free(&sink);
  server_stop(&s);
}

/* Stop and free with connections in every state (ASan checks for leaks):
 * registered, challenged, half a frame buffered, output queued. */
static void test_free_with_connections(void **state) {
  (void)state;
  struct server s;
  np_rendezvous_server_config cfg = {0};
  server_start(&s, cfg);
  struct peer p, q;
  peer_init(&p);
  peer_init(&q);
  peer_register(&p, &s);
  uint8_t allow[1][NP_PUBKEY_LEN];
  memcpy(allow[0], p.pk, NP_PUBKEY_LEN);
  q.c = tc_connect(&s);
  assert_int_equal(tc_register(q.c, q.id, (const uint8_t(*)[NP_PUBKEY_LEN])allow, 1),
                   NP_SIG_REGISTERED);
  tconn *challenged = tc_connect(&s);
  tc_hello(challenged, q.id);
  tconn *half = tc_connect(&s);
  uint8_t part[6] = {0, 0, 0, 40, 1, 1};
  tc_send(half, part, sizeof part);
  np_rendezvous_stats st;
  WAIT_FOR(&s, st, st.open == 4);
  usleep(50000); /* let the half frame arrive */
  server_stop(&s);
  tc_free(challenged);
  tc_free(half);
  peer_free(&p);
  peer_free(&q);
}

/* ---- per source address -------------------------------------------------------- */

#define IP_FLOOD 600 /* connections one host opens at once */
#define IP_PEERS 16  /* good peers, each from its own 127.0.0.x */

/* One host (127.0.0.2) opens IP_FLOOD connections and holds them, more than
 * the server's whole unregistered allowance (64); meanwhile IP_PEERS peers
 * from other addresses register and call each other (offer, answer). Per
 * address only max_unauth_per_ip of the flood get in, so the others are
 * served. Without per-address limits the flood takes every unregistered
 * slot and the good peers are refused. */
static void test_per_ip_flood(void **state) {
  (void)state;
  struct server s;
  np_rendezvous_server_config cfg = {0};
  cfg.max_unauthenticated = 64;
  cfg.max_connections = 4000;
  cfg.auth_timeout_ms = 5000; /* the flood holds its slots through the test */
  cfg.max_unauth_per_ip = 8;
  cfg.max_conn_per_ip = 32;
  server_start(&s, cfg);
  static int fds[IP_FLOOD];
  int64_t t0 = now_ms();
  for (int i = 0; i < IP_FLOOD; i++) {
    fds[i] = socket_from("127.0.0.2", SOCK_NONBLOCK);
    int rc = connect(fds[i], &s.addr.u.sa, np_addr_len(&s.addr));
    assert_true(rc == 0 || errno == EINPROGRESS);
  }
  np_rendezvous_stats st;
  WAIT_FOR(&s, st, st.connections + st.refused_full >= IP_FLOOD);
  int64_t t_flood = now_ms() - t0;
  assert_true(st.connections <= 8);
  assert_true(st.refused_per_ip >= IP_FLOOD - 8);

  static struct peer p[IP_PEERS];
  int64_t worst_reg = 0, worst_call = 0;
  t0 = now_ms();
  for (int i = 0; i < IP_PEERS; i++) {
    char ip[32];
    snprintf(ip, sizeof ip, "127.0.0.%d", 10 + i);
    peer_init(&p[i]);
    int64_t t = now_ms();
    p[i].c = tc_connect_from(&s, ip);
    assert_int_equal(tc_register(p[i].c, p[i].id, NULL, 0), NP_SIG_REGISTERED);
    if (now_ms() - t > worst_reg)
      worst_reg = now_ms() - t;
  }
  int64_t t_reg = now_ms() - t0;
  t0 = now_ms();
  for (int i = 0; i < IP_PEERS; i++) {
    struct peer *a = &p[i], *b = &p[(i + 1) % IP_PEERS];
    int64_t t = now_ms();
    np_sig_msg m;
    make_fwd(&m, NP_SIG_OFFER, a->id, b->pk, (uint8_t)(0x40 + i));
    tc_send_msg(a->c, &m, a->id);
    assert_int_equal(tc_read(b->c, WAIT_MS), NP_SIG_OFFER);
    make_fwd(&m, NP_SIG_ANSWER, b->id, a->pk, (uint8_t)(0x40 + i));
    tc_send_msg(b->c, &m, b->id);
    assert_int_equal(tc_read(a->c, WAIT_MS), NP_SIG_ANSWER);
    if (now_ms() - t > worst_call)
      worst_call = now_ms() - t;
  }
  int64_t t_call = now_ms() - t0;
  fprintf(stderr,
          "per-ip flood: %d connections from one host settled in %lld ms (%llu admitted, %llu "
          "refused per address); %d peers registered in %lld ms (worst %lld ms), %d calls "
          "(offer+answer) in %lld ms (worst %lld ms)\n",
          IP_FLOOD, (long long)t_flood, (unsigned long long)st.connections,
          (unsigned long long)st.refused_per_ip, IP_PEERS, (long long)t_reg, (long long)worst_reg,
          IP_PEERS, (long long)t_call, (long long)worst_call);
  /* Still the flooder's own quota only: its next connection is refused. */
  np_rendezvous_stats before = stats_of(&s);
  int extra = socket_from("127.0.0.2", 0);
  assert_int_equal(connect(extra, &s.addr.u.sa, np_addr_len(&s.addr)), 0);
  WAIT_FOR(&s, st, st.refused_per_ip == before.refused_per_ip + 1);
  close(extra);
  for (int i = 0; i < IP_FLOOD; i++)
    close(fds[i]);
  for (int i = 0; i < IP_PEERS; i++)
    peer_free(&p[i]);
  server_stop(&s);
}

/* A host that registers and drops keys over and over: max_register_per_ip a
 * minute, then 429 and a close; another address still registers; and a host
 * holding many registered connections stops at max_conn_per_ip (503). */
static void test_per_ip_registrations(void **state) {
  (void)state;
  struct server s;
  np_rendezvous_server_config cfg = {0};
  cfg.max_register_per_ip = 5;
  cfg.max_conn_per_ip = 3;
  server_start(&s, cfg);
  for (int i = 0; i < 5; i++) {
    struct peer p;
    peer_init(&p);
    p.c = tc_connect_from(&s, "127.0.0.2");
    assert_int_equal(tc_register(p.c, p.id, NULL, 0), NP_SIG_REGISTERED);
    peer_free(&p);
  }
  struct peer p, q;
  peer_init(&p);
  np_rendezvous_stats st;
  WAIT_FOR(&s, st, st.open == 0);
  p.c = tc_connect_from(&s, "127.0.0.2");
  tc_hello(p.c, p.id);
  np_sig_msg m;
  make_register(&m, p.c->msg.nonce, NULL, 0);
  tc_send_msg(p.c, &m, p.id);
  tc_expect_error(p.c, NP_SIG_E_RATE);
  tc_expect_close(p.c);
  peer_free(&p);
  peer_init(&q);
  q.c = tc_connect_from(&s, "127.0.0.3");
  assert_int_equal(tc_register(q.c, q.id, NULL, 0), NP_SIG_REGISTERED);
  /* 127.0.0.3 holds q; two more fit, the fourth connection gets 503. */
  tconn *c1 = tc_connect_from(&s, "127.0.0.3");
  tconn *c2 = tc_connect_from(&s, "127.0.0.3");
  tconn *c3 = tc_connect_from(&s, "127.0.0.3");
  tc_expect_error(c3, NP_SIG_E_UNAVAILABLE);
  tc_free(c1);
  tc_free(c2);
  tc_free(c3);
  peer_free(&q);
  server_stop(&s);
}

static void test_config_errors(void **state) {
  (void)state;
  np_rendezvous_server *srv = NULL;
  np_rendezvous_server_config cfg = {0};
  assert_int_equal(np_rendezvous_server_new(&cfg, &srv), NP_ERR_INVAL); /* no address */
  assert_null(srv);
  assert_int_equal(np_addr_parse("127.0.0.1:1", 0, &cfg.listen), 0);
  np_addr_set_port(&cfg.listen, 0);
  cfg.max_frame = NP_SIG_MAX_FRAME + 1;
  assert_int_equal(np_rendezvous_server_new(&cfg, &srv), NP_ERR_INVAL);
  cfg.max_frame = 0;
  cfg.max_connections = -1;
  assert_int_equal(np_rendezvous_server_new(&cfg, &srv), NP_ERR_INVAL);
  /* A port someone holds. */
  cfg.max_connections = 0;
  cfg.listen = g_srv.addr;
  assert_int_equal(np_rendezvous_server_new(&cfg, &srv), NP_ERR_SYS);
  assert_null(srv);
  np_rendezvous_server_free(NULL);
}

int main(void) {
  /* The flood needs FLOOD client descriptors in this process besides the
   * server's. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_baseline),
      cmocka_unit_test(test_garbage_body),
      cmocka_unit_test(test_bad_version),
      cmocka_unit_test(test_oversized_prefix),
      cmocka_unit_test(test_split_byte_by_byte),
      cmocka_unit_test(test_slowloris),
      cmocka_unit_test(test_connection_flood),
      cmocka_unit_test(test_register_wrong_signature),
      cmocka_unit_test(test_offer_impersonation),
      cmocka_unit_test(test_register_twice),
      cmocka_unit_test(test_unknown_peer),
      cmocka_unit_test(test_allow_list),
      cmocka_unit_test(test_clock_skew),
      cmocka_unit_test(test_out_of_order),
      cmocka_unit_test(test_rate_limit),
      cmocka_unit_test(test_random_frames),
      cmocka_unit_test(test_ipv6),
      cmocka_unit_test(test_max_connections),
      cmocka_unit_test(test_idle_timeout),
      cmocka_unit_test(test_slow_reader),
      cmocka_unit_test(test_free_with_connections),
      cmocka_unit_test(test_per_ip_flood),
      cmocka_unit_test(test_per_ip_registrations),
      cmocka_unit_test(test_config_errors),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
