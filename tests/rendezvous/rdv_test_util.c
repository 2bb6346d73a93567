#include "rdv_test_util.h"

#include "net/addr.h"
#include "util/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

uint64_t rdv_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int64_t rdv_now(void) {
  return np__now_ms();
}

np_addr rdv_addr(const char *text) {
  np_addr a;
  assert_int_equal(np_addr_parse(text, 1, &a), 0);
  return a;
}

void rdv_random(void *buf, size_t len) {
  assert_int_equal(np__random_bytes(buf, len), 0);
}

np_addr rdv_local_addr(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  np_addr a;
  assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
  assert_int_equal(np__addr_from_sockaddr((struct sockaddr *)&ss, len, &a), 0);
  return a;
}

/* Logs go to stderr, prefixed with the peer, so a failing run explains
 * itself; RDV_DEBUG=1 in the environment turns on debug lines. */
static void log_stderr(void *user, enum np_log_level level, const char *msg) {
  static const char *names[] = {"E", "W", "I", "D"};
  fprintf(stderr, "  [%s %s] %s\n", user ? (const char *)user : "server", names[level], msg);
}

static enum np_log_level test_log_level(void) {
  const char *v = getenv("RDV_DEBUG");
  return v && *v && *v != '0' ? NP_LOG_DEBUG : NP_LOG_WARN;
}

/* ---- server ---------------------------------------------------------------- */

static void *srv_thread(void *arg) {
  rdv_srv *s = arg;
  s->run_rc = np_rendezvous_server_run(s->srv);
  return NULL;
}

int rdv_srv_start(rdv_srv *s, uint16_t port) {
  memset(s, 0, sizeof *s);
  np_rendezvous_server_config cfg = {0};
  cfg.listen = rdv_addr("127.0.0.1");
  np_addr_set_port(&cfg.listen, port);
  cfg.max_connections = 256; /* tests need few; the default would warn about RLIMIT_NOFILE */
  cfg.log = log_stderr;
  cfg.log_level = test_log_level();
  int rc = np_rendezvous_server_new(&cfg, &s->srv);
  if (rc != 0)
    return rc;
  s->addr = *np_rendezvous_server_local(s->srv);
  assert_int_equal(pthread_create(&s->thread, NULL, srv_thread, s), 0);
  s->running = true;
  return 0;
}

void rdv_srv_stop(rdv_srv *s) {
  if (s->running) {
    np_rendezvous_server_stop(s->srv);
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    assert_int_equal(s->run_rc, 0);
    s->running = false;
  }
  np_rendezvous_server_free(s->srv);
  s->srv = NULL;
}

/* ---- recording clients ------------------------------------------------------ */

static void on_state(void *user, enum np_rdv_state state, const np_addr *observed) {
  rdv_peer *p = user;
  assert_true(state >= NP_RDV_DISCONNECTED && state <= NP_RDV_REGISTERED);
  assert_int_not_equal(state, p->last_state); /* a change, not a repeat */
  p->n_state[state]++;
  p->last_state = state;
  if (state == NP_RDV_CONNECTING && p->n_connects < RDV_MAX_CONNECTS)
    p->connect_at[p->n_connects++] = rdv_now();
  if (state == NP_RDV_REGISTERED) {
    assert_non_null(observed);
    p->observed = *observed;
    short ev;
    int fd = np__rdv_client_fd(p->c, &ev);
    assert_true(fd >= 0);
    p->local_at_registered = rdv_local_addr(fd);
  } else if (observed != NULL) {
    p->observed_null_ok = false;
  }
}

static void on_offer(void *user, const np_sig_msg *m) {
  rdv_peer *p = user;
  assert_int_equal(m->type, NP_SIG_OFFER);
  p->n_offers++;
  p->offer = *m;
}

static void on_answer(void *user, const np_sig_msg *m) {
  rdv_peer *p = user;
  assert_int_equal(m->type, NP_SIG_ANSWER);
  p->n_answers++;
  p->answer = *m;
}

static void on_ready(void *user, const np_sig_msg *m) {
  rdv_peer *p = user;
  assert_int_equal(m->type, NP_SIG_READY);
  p->n_readies++;
  p->ready = *m;
}

static void on_error(void *user, uint16_t code, const char *text, const uint8_t *session) {
  rdv_peer *p = user;
  p->n_errors++;
  p->err_code = code;
  snprintf(p->err_text, sizeof p->err_text, "%s", text ? text : "");
  p->err_has_session = session != NULL;
  if (session)
    memcpy(p->err_session, session, NP_SIG_SESSION_LEN);
  p->err_at = rdv_now();
}

rdv_peer *rdv_peer_new(const char *name, const rdv_peer *same_as) {
  rdv_peer *p = calloc(1, sizeof *p);
  assert_non_null(p);
  p->name = name;
  if (same_as) {
    p->id = same_as->id;
    p->shared_id = true;
  } else {
    assert_int_equal(np_identity_generate(&p->id), 0);
  }
  np_identity_public_key(p->id, p->pk);
  p->observed_null_ok = true;
  p->last_state = NP_RDV_DISCONNECTED;
  p->cfg.identity = p->id;
  p->cfg.backoff_min_ms = 20;
  p->cfg.backoff_max_ms = 400;
  p->cfg.on_state = on_state;
  p->cfg.on_offer = on_offer;
  p->cfg.on_answer = on_answer;
  p->cfg.on_ready = on_ready;
  p->cfg.on_error = on_error;
  p->cfg.user = p;
  p->cfg.log = log_stderr;
  p->cfg.log_user = (void *)name;
  p->cfg.log_level = test_log_level();
  return p;
}

void rdv_peer_allow(rdv_peer *p, const rdv_peer *who) {
  assert_true(p->cfg.n_allow < 8);
  memcpy(p->allow[p->cfg.n_allow++], who->pk, NP_PUBKEY_LEN);
  p->cfg.allow = (const uint8_t(*)[NP_PUBKEY_LEN])p->allow;
}

void rdv_peer_start(rdv_peer *p, const np_addr *server) {
  p->cfg.server = *server;
  assert_int_equal(np__rdv_client_new(&p->cfg, rdv_now(), &p->c), 0);
  assert_int_equal(np__rdv_client_state(p->c), NP_RDV_DISCONNECTED);
}

void rdv_peer_free(rdv_peer *p) {
  if (!p)
    return;
  np__rdv_client_free(p->c);
  if (!p->shared_id)
    np_identity_free(p->id);
  free(p);
}

/* ---- the loop ---------------------------------------------------------------- */

/* Longest single poll: conditions may depend on things outside the
 * clients (a raw socket, the server thread), so look again this often. */
#define RDV_POLL_SLICE_MS 10

bool rdv_run(rdv_peer **peers, int n, int timeout_ms, rdv_cond cond, void *arg) {
  int64_t deadline = rdv_now() + timeout_ms;
  for (;;) {
    if (cond && cond(arg))
      return true;
    int64_t now = rdv_now();
    if (now >= deadline)
      return cond ? cond(arg) : true;
    struct pollfd pfd[16];
    assert_true(n <= 16);
    int64_t wake = deadline;
    if (wake > now + RDV_POLL_SLICE_MS)
      wake = now + RDV_POLL_SLICE_MS;
    for (int i = 0; i < n; i++) {
      pfd[i].fd = np__rdv_client_fd(peers[i]->c, &pfd[i].events);
      pfd[i].revents = 0;
      int64_t w = np__rdv_client_wakeup(peers[i]->c);
      if (w < wake)
        wake = w;
    }
    int t = wake > now ? (int)(wake - now) : 0;
    int rc = poll(pfd, (nfds_t)n, t);
    assert_true(rc >= 0 || errno == EINTR);
    now = rdv_now();
    for (int i = 0; i < n; i++)
      assert_int_equal(np__rdv_client_process(peers[i]->c, now, rc > 0 ? pfd[i].revents : 0), 0);
  }
}

bool rdv_all_registered(void *arg) {
  rdv_peer **p = arg;
  for (; *p; p++)
    if (np__rdv_client_state((*p)->c) != NP_RDV_REGISTERED)
      return false;
  return true;
}

/* ---- raw connections ----------------------------------------------------------- */

void rdv_raw_from_fd(rdv_raw *r, int fd) {
  memset(r, 0, sizeof *r);
  r->fd = fd;
  int fl = fcntl(fd, F_GETFL);
  assert_true(fl >= 0);
  assert_int_equal(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

void rdv_raw_connect(rdv_raw *r, const np_addr *to) {
  int fd = socket(to->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  assert_int_equal(connect(fd, &to->u.sa, np_addr_len(to)), 0);
  rdv_raw_from_fd(r, fd);
}

void rdv_raw_close(rdv_raw *r) {
  if (r->fd >= 0)
    close(r->fd);
  r->fd = -1;
}

bool rdv_raw_take(rdv_raw *r) {
  for (;;) {
    size_t body_len;
    int rc = np__sig_frame_check(r->buf, r->len, NP_SIG_MAX_FRAME, &body_len);
    assert_true(rc == 0 || rc == NP_ERR_NOSPACE);
    if (rc == 0) {
      memcpy(r->body, r->buf + NP_SIG_LEN_PREFIX, body_len);
      r->body_len = body_len;
      size_t used = NP_SIG_LEN_PREFIX + body_len;
      memmove(r->buf, r->buf + used, r->len - used);
      r->len -= used;
      assert_int_equal(np__sig_decode(r->body, r->body_len, &r->msg), 0);
      return true;
    }
    if (r->closed || r->fd < 0)
      return false;
    ssize_t n = recv(r->fd, r->buf + r->len, sizeof r->buf - r->len, 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return false;
      r->closed = true; /* e.g. ECONNRESET from a server closing with data unread */
      return false;
    }
    if (n == 0) {
      r->closed = true;
      return false;
    }
    r->len += (size_t)n;
  }
}

static bool raw_cond(void *arg) {
  rdv_raw *r = arg;
  return rdv_raw_take(r) || r->closed;
}

bool rdv_raw_wait(rdv_raw *r, rdv_peer **peers, int n, int timeout_ms) {
  memset(&r->msg, 0, sizeof r->msg);
  rdv_run(peers, n, timeout_ms, raw_cond, r);
  return r->msg.type != 0;
}

void rdv_raw_send(rdv_raw *r, const uint8_t *frame, int len) {
  assert_true(len > 0);
  ssize_t n = send(r->fd, frame, (size_t)len, MSG_NOSIGNAL);
  assert_int_equal(n, len);
}

void rdv_raw_send_msg(rdv_raw *r, const np_sig_msg *msg, const np_identity *id) {
  static uint8_t frame[NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME];
  int len = np__sig_encode(msg, id, frame, sizeof frame);
  assert_true(len > 0);
  rdv_raw_send(r, frame, len);
}

int rdv_raw_register(rdv_raw *r, const np_identity *id, rdv_peer **peers, int n) {
  static np_sig_msg m;
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_HELLO;
  m.has_pubkey = true;
  np_identity_public_key(id, m.pubkey);
  rdv_raw_send_msg(r, &m, NULL);
  if (!rdv_raw_wait(r, peers, n, RDV_WAIT_MS))
    return 0;
  if (r->msg.type != NP_SIG_CHALLENGE)
    return r->msg.type;
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_REGISTER;
  m.has_nonce = true;
  memcpy(m.nonce, r->msg.nonce, NP_SIG_NONCE_LEN);
  rdv_raw_send_msg(r, &m, id);
  if (!rdv_raw_wait(r, peers, n, RDV_WAIT_MS))
    return 0;
  return r->msg.type;
}

bool rdv_patch(uint8_t *buf, size_t buf_len, const uint8_t *from, const uint8_t *to, size_t len) {
  for (size_t i = 0; i + len <= buf_len; i++) {
    if (memcmp(buf + i, from, len) == 0) {
      memcpy(buf + i, to, len);
      return true;
    }
  }
  return false;
}

/* ---- candidates ------------------------------------------------------------------ */

np_sig_candidates rdv_candidates(int salt) {
  np_sig_candidates c;
  memset(&c, 0, sizeof c);
  c.private_addrs[0] = rdv_addr("192.168.1.20");
  np_addr_set_port(&c.private_addrs[0], (uint16_t)(40000 + salt));
  c.private_addrs[1] = rdv_addr("fd00::20");
  np_addr_set_port(&c.private_addrs[1], (uint16_t)(40001 + salt));
  c.private_addrs[2] = rdv_addr("10.1.2.3");
  np_addr_set_port(&c.private_addrs[2], (uint16_t)(40002 + salt));
  c.n_private = 3;
  c.mapped[0] = rdv_addr("203.0.113.7");
  np_addr_set_port(&c.mapped[0], (uint16_t)(62000 + salt));
  c.mapped[1] = rdv_addr("203.0.113.7");
  np_addr_set_port(&c.mapped[1], (uint16_t)(62003 + salt));
  c.n_mapped = 2;
  c.have_delta = true;
  c.delta = -3 - salt;
  c.have_nat = true;
  c.mapping = NP_BEHAVIOR_ADDRESS_DEPENDENT;
  c.filtering = NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT;
  c.portmap = rdv_addr("203.0.113.7");
  np_addr_set_port(&c.portmap, (uint16_t)(5000 + salt));
  return c;
}

static void assert_addr_equal(const np_addr *a, const np_addr *b) {
  char x[NP_ADDRSTRLEN], y[NP_ADDRSTRLEN];
  if (a->u.sa.sa_family == AF_UNSPEC && b->u.sa.sa_family == AF_UNSPEC)
    return;
  if (!np_addr_equal(a, b))
    fail_msg("address %s != %s", np_addr_format(a, x, sizeof x), np_addr_format(b, y, sizeof y));
}

void rdv_assert_candidates_equal(const np_sig_candidates *a, const np_sig_candidates *b) {
  assert_int_equal(a->n_private, b->n_private);
  for (int i = 0; i < a->n_private; i++)
    assert_addr_equal(&a->private_addrs[i], &b->private_addrs[i]);
  assert_int_equal(a->n_mapped, b->n_mapped);
  for (int i = 0; i < a->n_mapped; i++)
    assert_addr_equal(&a->mapped[i], &b->mapped[i]);
  assert_int_equal(a->have_delta, b->have_delta);
  if (a->have_delta)
    assert_int_equal(a->delta, b->delta);
  assert_int_equal(a->have_nat, b->have_nat);
  if (a->have_nat) {
    assert_int_equal(a->mapping, b->mapping);
    assert_int_equal(a->filtering, b->filtering);
  }
  assert_int_equal(a->portmap.u.sa.sa_family, b->portmap.u.sa.sa_family);
  assert_addr_equal(&a->portmap, &b->portmap);
}
