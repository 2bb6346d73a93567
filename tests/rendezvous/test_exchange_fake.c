/*
 * The rendezvous client against a fake server written with the codec in
 * this test: it checks what a real server cannot make the client do. The
 * client must drop offers and answers that a (misbehaving) server forwards
 * with a bad signature, to another peer, or (offers) from a caller outside
 * the allow list; it must notice a silent server within two keepalive
 * intervals, back off exponentially with jitter, yield after a 409, and
 * survive malformed and split frames. And, with a calling agent (the
 * public API) behind the fake as a man in the middle: a forged answer ends
 * the call at once with an authentication error and no session, and a
 * redirection to a third agent by someone who can sign as the callee gets
 * through the signaling and the punch but stops at the QUIC handshake with
 * a key mismatch. Loopback only; every wait is a poll loop with a
 * deadline.
 */
#include "rdv_test_util.h"

#include "net/addr.h"

#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

/* ---- the fake server ----------------------------------------------------- */

typedef struct fake {
  int lfd;
  np_addr addr;
  rdv_raw conn; /* the current client connection */
  uint8_t nonce[NP_SIG_NONCE_LEN];
  int accepted;
  /* Channel key agreed with the client's KX, and the MAC counter. */
  bool has_key;
  uint8_t key[NP_SIG_CHANNEL_KEY_LEN];
  uint64_t seq;
} fake;

static void fake_listen(fake *f) {
  memset(f, 0, sizeof *f);
  f->conn.fd = -1;
  np_addr a = rdv_addr("127.0.0.1");
  np_addr_set_port(&a, 0);
  f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  assert_true(f->lfd >= 0);
  assert_int_equal(bind(f->lfd, &a.u.sa, np_addr_len(&a)), 0);
  assert_int_equal(listen(f->lfd, 16), 0);
  f->addr = rdv_local_addr(f->lfd);
}

static void fake_close(fake *f) {
  rdv_raw_close(&f->conn);
  if (f->lfd >= 0)
    close(f->lfd);
  f->lfd = -1;
}

static bool accept_cond(void *arg) {
  fake *f = arg;
  int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
  if (fd < 0) {
    assert_true(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
    return false;
  }
  rdv_raw_close(&f->conn);
  rdv_raw_from_fd(&f->conn, fd);
  f->accepted++;
  return true;
}

static bool fake_accept(fake *f, rdv_peer **peers, int n, int timeout_ms) {
  return rdv_run(peers, n, timeout_ms, accept_cond, f);
}

static void send_msg(fake *f, np_sig_msg *m) {
  rdv_raw_send_msg(&f->conn, m, NULL);
}

/* Sends m with a MAC under the connection's key, as the real server sends
 * ERROR and REGISTERED; the frame is kept in last_mac for replays. */
static uint8_t last_mac[1024];
static int last_mac_len;
static void send_mac(fake *f, np_sig_msg *m) {
  assert_true(f->has_key);
  int n = np__sig_encode(m, NULL, last_mac, sizeof last_mac);
  assert_true(n > 0);
  n = np__sig_append_mac(last_mac, (size_t)n, sizeof last_mac, f->key, f->seq++);
  assert_true(n > 0);
  last_mac_len = n;
  rdv_raw_send(&f->conn, last_mac, n);
}

/* Accepts the client and runs the server side of the handshake, checking
 * what the client sends; REGISTERED carries 'observed'. */
static void fake_register(fake *f, rdv_peer *p, rdv_peer **peers, int n, const np_addr *observed) {
  assert_true(fake_accept(f, peers, n, RDV_WAIT_MS));
  assert_true(rdv_raw_wait(&f->conn, peers, n, RDV_WAIT_MS));
  assert_int_equal(f->conn.msg.type, NP_SIG_HELLO);
  assert_memory_equal(f->conn.msg.pubkey, p->pk, NP_PUBKEY_LEN);

  static np_sig_msg m;
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_CHALLENGE;
  m.has_nonce = true;
  rdv_random(f->nonce, sizeof f->nonce);
  memcpy(m.nonce, f->nonce, sizeof f->nonce);
  /* The client offers KX in HELLO; the fake keys the channel like the
   * real server. */
  assert_true(f->conn.msg.cand.has_kx);
  uint8_t sk[NP_SIG_KX_LEN];
  assert_int_equal(np__sig_kx_keypair(m.cand.kx, sk), 0);
  assert_int_equal(np__sig_channel_key(true, m.cand.kx, sk, f->conn.msg.cand.kx, f->nonce, f->key),
                   0);
  m.cand.has_kx = true;
  f->has_key = true;
  f->seq = 0;
  /* A different address than REGISTERED's, so the test sees which one the
   * client reports (REGISTERED's: the server's final word). */
  m.observed = *observed;
  np_addr_set_port(&m.observed, (uint16_t)(np_addr_port(observed) ^ 1));
  send_msg(f, &m);

  assert_true(rdv_raw_wait(&f->conn, peers, n, RDV_WAIT_MS));
  assert_int_equal(f->conn.msg.type, NP_SIG_REGISTER);
  assert_memory_equal(f->conn.msg.pubkey, p->pk, NP_PUBKEY_LEN);
  assert_int_equal(np__sig_verify_register(&f->conn.msg, f->nonce), 0);
  assert_int_equal(f->conn.msg.n_allow, p->cfg.n_allow);
  for (int i = 0; i < p->cfg.n_allow; i++)
    assert_memory_equal(f->conn.msg.allow[i], p->allow[i], NP_PUBKEY_LEN);

  memset(&m, 0, sizeof m);
  m.type = NP_SIG_REGISTERED;
  m.observed = *observed;
  send_mac(f, &m);
  assert_true(rdv_run(peers, n, RDV_WAIT_MS, rdv_all_registered, (rdv_peer *[]){p, NULL}));
}

/* TIMESTAMP for signed_frame(): 0 means now (wall clock, as a peer sends). */
static uint64_t frame_timestamp_ms;

/* A signed OFFER/ANSWER as a peer would send it, stamped by the server. */
static int signed_frame(uint8_t type, const rdv_peer *from, const uint8_t to[NP_PUBKEY_LEN],
                        const uint8_t session[NP_SIG_SESSION_LEN], const np_addr *observed,
                        uint8_t *buf, size_t cap) {
  static np_sig_msg m;
  memset(&m, 0, sizeof m);
  m.type = type;
  m.has_from = m.has_to = m.has_session = m.has_timestamp = true;
  memcpy(m.from, from->pk, NP_PUBKEY_LEN);
  memcpy(m.to, to, NP_PUBKEY_LEN);
  memcpy(m.session, session, NP_SIG_SESSION_LEN);
  m.timestamp_ms = frame_timestamp_ms ? frame_timestamp_ms : rdv_unix_ms();
  m.cand = rdv_candidates(1);
  int len = np__sig_encode(&m, from->id, buf, cap);
  assert_true(len > 0);
  len = np__sig_stamp_observed(buf, (size_t)len, cap, observed);
  assert_true(len > 0);
  return len;
}

/* PING from the fake, wait for the PONG: every frame sent before it has
 * been handled by the client (one TCP stream, handled in order). */
static void barrier(fake *f, rdv_peer **peers, int n) {
  static np_sig_msg m;
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_PING;
  send_msg(f, &m);
  for (;;) {
    assert_true(rdv_raw_wait(&f->conn, peers, n, RDV_WAIT_MS));
    if (f->conn.msg.type == NP_SIG_PONG)
      return;
  }
}

/* ---- tests ------------------------------------------------------------------ */

/* The handshake as the server sees it: HELLO with our key, REGISTER
 * signed over the server's nonce with the allow list, and the state
 * sequence with the OBSERVED address the server reported. */
static void test_fake_handshake(void **state) {
  (void)state;
  fake f;
  fake_listen(&f);
  rdv_peer *a = rdv_peer_new("A", NULL), *b = rdv_peer_new("B", NULL), *c = rdv_peer_new("C", NULL);
  rdv_peer_allow(a, b);
  rdv_peer_allow(a, c);
  rdv_peer_start(a, &f.addr);
  rdv_peer *peers[] = {a};

  /* Nothing may be sent before registration. */
  uint8_t session[NP_SIG_SESSION_LEN] = {1};
  np_sig_candidates cand = rdv_candidates(0);
  assert_int_equal(np__rdv_client_send_offer(a->c, b->pk, session, &cand), NP_ERR_INVAL);

  np_addr observed = rdv_addr("198.51.100.9:4242");
  fake_register(&f, a, peers, 1, &observed);
  assert_int_equal(a->n_state[NP_RDV_CONNECTING], 1);
  assert_int_equal(a->n_state[NP_RDV_AUTHENTICATING], 1);
  assert_int_equal(a->n_state[NP_RDV_REGISTERED], 1);
  assert_int_equal(a->n_state[NP_RDV_DISCONNECTED], 0);
  assert_true(np_addr_equal(&a->observed, &observed));
  assert_true(a->observed_null_ok);

  /* An offer goes out signed by A, with our candidates. */
  assert_int_equal(np__rdv_client_send_offer(a->c, b->pk, session, &cand), 0);
  assert_true(rdv_raw_wait(&f.conn, peers, 1, RDV_WAIT_MS));
  assert_int_equal(f.conn.msg.type, NP_SIG_OFFER);
  assert_int_equal(np__sig_verify(f.conn.body, f.conn.body_len, &f.conn.msg), 0);
  assert_memory_equal(f.conn.msg.from, a->pk, NP_PUBKEY_LEN);
  assert_memory_equal(f.conn.msg.to, b->pk, NP_PUBKEY_LEN);
  assert_memory_equal(f.conn.msg.session, session, NP_SIG_SESSION_LEN);
  rdv_assert_candidates_equal(&f.conn.msg.cand, &cand);

  fake_close(&f);
  rdv_peer_free(a);
  rdv_peer_free(b);
  rdv_peer_free(c);
}

/* What a misbehaving server forwards must not reach the callbacks. */
static void test_fake_drops_bad_messages(void **state) {
  (void)state;
  fake f;
  fake_listen(&f);
  rdv_peer *a = rdv_peer_new("A", NULL), *b = rdv_peer_new("B", NULL), *c = rdv_peer_new("C", NULL),
           *d = rdv_peer_new("D", NULL);
  rdv_peer_allow(a, b);
  rdv_peer_start(a, &f.addr);
  rdv_peer *peers[] = {a};
  np_addr observed = rdv_addr("127.0.0.1:4000");
  fake_register(&f, a, peers, 1, &observed);

  static uint8_t buf[4096];
  uint8_t s[6][NP_SIG_SESSION_LEN];
  for (int i = 0; i < 6; i++)
    rdv_random(s[i], sizeof s[i]);
  np_addr seen_b = rdv_addr("192.0.2.1:1111");

  /* 1. A valid offer from C, who is not on A's allow list. */
  rdv_raw_send(&f.conn, buf, signed_frame(NP_SIG_OFFER, c, a->pk, s[0], &seen_b, buf, sizeof buf));
  /* 2. An offer claiming to be from B whose signed part was altered. */
  int len = signed_frame(NP_SIG_OFFER, b, a->pk, s[1], &seen_b, buf, sizeof buf);
  uint8_t other[NP_SIG_SESSION_LEN];
  memcpy(other, s[1], sizeof other);
  other[0] ^= 1;
  assert_true(rdv_patch(buf, (size_t)len, s[1], other, sizeof other));
  rdv_raw_send(&f.conn, buf, len);
  /* 3. B's valid offer to D, replayed to A. */
  rdv_raw_send(&f.conn, buf, signed_frame(NP_SIG_OFFER, b, d->pk, s[2], &seen_b, buf, sizeof buf));
  /* 4. An answer claiming to be from B, signed by C (FROM rewritten). */
  len = signed_frame(NP_SIG_ANSWER, c, a->pk, s[3], &seen_b, buf, sizeof buf);
  assert_true(rdv_patch(buf, (size_t)len, c->pk, b->pk, NP_PUBKEY_LEN));
  rdv_raw_send(&f.conn, buf, len);
  /* 5. A valid offer from B: delivered, with the server's OBSERVED. */
  rdv_raw_send(&f.conn, buf, signed_frame(NP_SIG_OFFER, b, a->pk, s[4], &seen_b, buf, sizeof buf));
  /* 6. A valid answer from C: answers are not subject to the allow list
   * (they answer our own offers). */
  rdv_raw_send(&f.conn, buf, signed_frame(NP_SIG_ANSWER, c, a->pk, s[5], &seen_b, buf, sizeof buf));

  barrier(&f, peers, 1);
  assert_int_equal(a->n_offers, 1);
  assert_memory_equal(a->offer.session, s[4], NP_SIG_SESSION_LEN);
  assert_memory_equal(a->offer.from, b->pk, NP_PUBKEY_LEN);
  assert_true(np_addr_equal(&a->offer.observed, &seen_b));
  np_sig_candidates want = rdv_candidates(1);
  rdv_assert_candidates_equal(&a->offer.cand, &want);
  assert_int_equal(a->n_answers, 1);
  assert_memory_equal(a->answer.session, s[5], NP_SIG_SESSION_LEN);
  assert_memory_equal(a->answer.from, c->pk, NP_PUBKEY_LEN);
  /* None of this cost the registration. */
  assert_int_equal(np__rdv_client_state(a->c), NP_RDV_REGISTERED);
  assert_int_equal(a->n_state[NP_RDV_DISCONNECTED], 0);

  fake_close(&f);
  rdv_peer_free(a);
  rdv_peer_free(b);
  rdv_peer_free(c);
  rdv_peer_free(d);
}

/* A relay that delivers a signed offer twice, or an old one, must not start
 * sessions: the first copy is delivered, repeats and stale or far-future
 * TIMESTAMPs are dropped, and a fresh session from the same caller still
 * gets through. */
static void test_fake_replay(void **state) {
  (void)state;
  fake f;
  fake_listen(&f);
  rdv_peer *a = rdv_peer_new("A", NULL), *b = rdv_peer_new("B", NULL);
  rdv_peer_start(a, &f.addr);
  rdv_peer *peers[] = {a};
  np_addr observed = rdv_addr("127.0.0.1:4000");
  fake_register(&f, a, peers, 1, &observed);

  static uint8_t buf[4096];
  uint8_t s[4][NP_SIG_SESSION_LEN];
  for (int i = 0; i < 4; i++)
    rdv_random(s[i], sizeof s[i]);
  int len = signed_frame(NP_SIG_OFFER, b, a->pk, s[0], &observed, buf, sizeof buf);
  rdv_raw_send(&f.conn, buf, len);
  rdv_raw_send(&f.conn, buf, len);                     /* the same bytes again */
  frame_timestamp_ms = rdv_unix_ms() - 10 * 60 * 1000; /* ten minutes old */
  rdv_raw_send(&f.conn, buf,
               signed_frame(NP_SIG_OFFER, b, a->pk, s[1], &observed, buf, sizeof buf));
  frame_timestamp_ms = rdv_unix_ms() + 10 * 60 * 1000; /* ten minutes ahead */
  rdv_raw_send(&f.conn, buf,
               signed_frame(NP_SIG_OFFER, b, a->pk, s[2], &observed, buf, sizeof buf));
  frame_timestamp_ms = 0;
  barrier(&f, peers, 1);
  assert_int_equal(a->n_offers, 1);
  assert_memory_equal(a->offer.session, s[0], NP_SIG_SESSION_LEN);

  rdv_raw_send(&f.conn, buf,
               signed_frame(NP_SIG_OFFER, b, a->pk, s[3], &observed, buf, sizeof buf));
  barrier(&f, peers, 1);
  assert_int_equal(a->n_offers, 2);
  assert_memory_equal(a->offer.session, s[3], NP_SIG_SESSION_LEN);
  assert_int_equal(np__rdv_client_state(a->c), NP_RDV_REGISTERED);

  fake_close(&f);
  rdv_peer_free(a);
  rdv_peer_free(b);
}

struct ping_ctx {
  fake *f;
  int pings;
  bool answer;
  int64_t last_tx; /* last frame the fake sent */
};

/* Plays a server that answers (or ignores) PINGs. */
static bool ping_cond(void *arg) {
  struct ping_ctx *x = arg;
  while (rdv_raw_take(&x->f->conn)) {
    assert_int_equal(x->f->conn.msg.type, NP_SIG_PING);
    x->pings++;
    if (x->answer) {
      np_sig_msg m;
      memset(&m, 0, sizeof m);
      m.type = NP_SIG_PONG;
      send_msg(x->f, &m);
      x->last_tx = rdv_now();
    }
  }
  return false;
}

static bool ping_until_down(void *arg) {
  struct ping_ctx *x = arg;
  ping_cond(arg);
  return x->f->conn.closed;
}

/* Keepalive: a PING every ping_ms while the server answers; a server that
 * stops answering (connection still open) is given up after two intervals,
 * and the client comes back and registers again on its own. */
static void test_fake_keepalive(void **state) {
  (void)state;
  fake f;
  fake_listen(&f);
  rdv_peer *a = rdv_peer_new("A", NULL);
  a->cfg.ping_ms = 100;
  rdv_peer_start(a, &f.addr);
  rdv_peer *peers[] = {a};
  np_addr observed = rdv_addr("127.0.0.1:4000");
  fake_register(&f, a, peers, 1, &observed);

  /* The server may ping too, and gets a PONG. */
  barrier(&f, peers, 1);

  struct ping_ctx x = {.f = &f, .answer = true, .last_tx = rdv_now()};
  int64_t t0 = rdv_now();
  rdv_run(peers, 1, 650, ping_cond, &x);
  int64_t span = rdv_now() - t0;
  assert_int_equal(a->n_state[NP_RDV_DISCONNECTED], 0);
  /* One per 100 ms, give or take the loop's granularity. */
  assert_in_range(x.pings, span / 100 - 1, span / 100 + 1);

  /* Now the server goes silent. */
  x.answer = false;
  int64_t silent_since = x.last_tx;
  assert_true(rdv_run(peers, 1, 2000, ping_until_down, &x));
  int64_t dead_after = rdv_now() - silent_since;
  assert_int_equal(a->n_state[NP_RDV_DISCONNECTED], 1);
  /* Two intervals (200 ms) after the last frame, not one, not ten. */
  assert_in_range(dead_after, 150, 450);

  /* It reconnects (backoff 20..30 ms) and registers again by itself. */
  fake_register(&f, a, peers, 1, &observed);
  assert_int_equal(a->n_state[NP_RDV_REGISTERED], 2);

  fake_close(&f);
  rdv_peer_free(a);
}

/* A server that accepts but never sends CHALLENGE does not hold the
 * client forever. */
static void test_fake_handshake_timeout(void **state) {
  (void)state;
  fake f;
  fake_listen(&f);
  rdv_peer *a = rdv_peer_new("A", NULL);
  a->cfg.ping_ms = 100; /* handshake bound: two intervals */
  rdv_peer_start(a, &f.addr);
  rdv_peer *peers[] = {a};
  assert_true(fake_accept(&f, peers, 1, RDV_WAIT_MS));
  int64_t t0 = rdv_now();
  /* The client gives up and comes back: the second accept. */
  assert_true(fake_accept(&f, peers, 1, RDV_WAIT_MS));
  int64_t took = rdv_now() - t0;
  assert_int_equal(a->n_state[NP_RDV_DISCONNECTED], 1);
  assert_in_range(took, 150, 600);
  fake_close(&f);
  rdv_peer_free(a);
}

static bool got_error(void *arg) {
  return ((rdv_peer *)arg)->n_errors > 0;
}

/* An authenticated 409: someone else holds our ID. The client stops for
 * good (no attempt to take the ID back), while a plain connection loss is
 * retried after the shortest backoff. */
static void test_fake_replaced_stops(void **state) {
  (void)state;
  fake f;
  fake_listen(&f);
  rdv_peer *a = rdv_peer_new("A", NULL);
  a->cfg.backoff_min_ms = 20;
  a->cfg.backoff_max_ms = 2000;
  rdv_peer_start(a, &f.addr);
  rdv_peer *peers[] = {a};
  np_addr observed = rdv_addr("127.0.0.1:4000");
  fake_register(&f, a, peers, 1, &observed);

  /* A plain loss: back within a few tens of ms. */
  int64_t t0 = rdv_now();
  rdv_raw_close(&f.conn);
  fake_register(&f, a, peers, 1, &observed);
  assert_in_range(rdv_now() - t0, 0, 500);
  assert_int_equal(a->n_connects, 2);
  assert_false(np__rdv_client_replaced(a->c));

  static np_sig_msg m;
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_ERROR;
  m.error_code = NP_SIG_E_REPLACED;
  snprintf(m.error_text, sizeof m.error_text, "registered elsewhere");
  send_mac(&f, &m);
  assert_true(rdv_run(peers, 1, RDV_WAIT_MS, got_error, a));
  assert_int_equal(a->n_errors, 1);
  assert_int_equal(a->err_code, NP_SIG_E_REPLACED);
  assert_false(a->err_has_session);
  assert_string_equal(a->err_text, "registered elsewhere");
  assert_int_equal(np__rdv_client_state(a->c), NP_RDV_DISCONNECTED);
  assert_true(np__rdv_client_replaced(a->c));
  assert_true(np__rdv_client_wakeup(a->c) == INT64_MAX);
  /* ... and it really stays away (its backoff maximum is 2 s). */
  assert_false(fake_accept(&f, peers, 1, 2500));
  assert_int_equal(a->n_connects, 2);

  fake_close(&f);
  rdv_peer_free(a);
}

/* Forged server errors: a third party injecting into the plain TCP
 * connection can send ERROR frames but cannot MAC them. Unauthenticated
 * 403/404/409/429/503 are ignored while registered (no callback, no
 * reconnection, no backoff), and so is a replayed authenticated one; the
 * server's own authenticated error still arrives at once with its reason. */
static void test_fake_forged_errors(void **state) {
  (void)state;
  fake f;
  fake_listen(&f);
  rdv_peer *a = rdv_peer_new("A", NULL), *b = rdv_peer_new("B", NULL);
  rdv_peer_start(a, &f.addr);
  rdv_peer *peers[] = {a};
  np_addr observed = rdv_addr("127.0.0.1:4000");
  fake_register(&f, a, peers, 1, &observed);
  uint8_t session[NP_SIG_SESSION_LEN] = {7};

  static np_sig_msg m;
  const uint16_t codes[] = {NP_SIG_E_REFUSED, NP_SIG_E_UNKNOWN_PEER, NP_SIG_E_REPLACED,
                            NP_SIG_E_RATE, NP_SIG_E_UNAVAILABLE, NP_SIG_E_CLOCK};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    memset(&m, 0, sizeof m);
    m.type = NP_SIG_ERROR;
    m.error_code = codes[i];
    snprintf(m.error_text, sizeof m.error_text, "forged");
    m.has_session = true;
    memcpy(m.session, session, sizeof session);
    m.has_to = true;
    memcpy(m.to, b->pk, NP_PUBKEY_LEN);
    send_msg(&f, &m); /* no MAC */
    /* With a MAC under another key: as good as none. */
    int n = np__sig_encode(&m, NULL, last_mac, sizeof last_mac);
    assert_true(n > 0);
    uint8_t other[NP_SIG_CHANNEL_KEY_LEN];
    rdv_random(other, sizeof other);
    n = np__sig_append_mac(last_mac, (size_t)n, sizeof last_mac, other, f.seq);
    rdv_raw_send(&f.conn, last_mac, n);
  }
  /* A forged REGISTERED is no handshake either. */
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_REGISTERED;
  send_msg(&f, &m);
  barrier(&f, peers, 1);
  assert_int_equal(a->n_errors, 0);
  assert_int_equal(np__rdv_client_state(a->c), NP_RDV_REGISTERED);
  assert_int_equal(a->n_connects, 1);
  assert_false(np__rdv_client_replaced(a->c));

  /* The server's own 404 about the session: reported at once. */
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_ERROR;
  m.error_code = NP_SIG_E_UNKNOWN_PEER;
  snprintf(m.error_text, sizeof m.error_text, "no such peer registered");
  m.has_session = true;
  memcpy(m.session, session, sizeof session);
  send_mac(&f, &m);
  assert_true(rdv_run(peers, 1, RDV_WAIT_MS, got_error, a));
  assert_int_equal(a->n_errors, 1);
  assert_int_equal(a->err_code, NP_SIG_E_UNKNOWN_PEER);
  assert_true(a->err_has_session);
  assert_memory_equal(a->err_session, session, sizeof session);
  assert_string_equal(a->err_text, "no such peer registered");

  /* The same authenticated frame again (captured and replayed): its MAC
   * counter is spent. */
  rdv_raw_send(&f.conn, last_mac, last_mac_len);
  barrier(&f, peers, 1);
  assert_int_equal(a->n_errors, 1);
  assert_int_equal(np__rdv_client_state(a->c), NP_RDV_REGISTERED);

  /* An unauthenticated error during the handshake ends that attempt like
   * any failed connection: normal short backoff, no "replaced". */
  rdv_raw_close(&f.conn);
  assert_true(fake_accept(&f, peers, 1, RDV_WAIT_MS));
  assert_true(rdv_raw_wait(&f.conn, peers, 1, RDV_WAIT_MS));
  assert_int_equal(f.conn.msg.type, NP_SIG_HELLO);
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_ERROR;
  m.error_code = NP_SIG_E_REPLACED;
  snprintf(m.error_text, sizeof m.error_text, "forged");
  send_msg(&f, &m);
  int64_t t0 = rdv_now();
  fake_register(&f, a, peers, 1, &observed);
  assert_in_range(rdv_now() - t0, 0, 1500);
  assert_false(np__rdv_client_replaced(a->c));
  assert_int_equal(a->n_errors, 1);

  fake_close(&f);
  rdv_peer_free(a);
  rdv_peer_free(b);
}

/* ---- an agent behind a man-in-the-middle server ---------------------------- */

/* A calling agent (the public API) whose rendezvous server is the fake, and
 * what it reported. */
typedef struct mitm {
  np_agent *agent;
  np_identity *id;
  uint8_t pk[NP_PUBKEY_LEN];
  fake *f;
  int connected, failed;
  int error;
  char reason[160];
} mitm;

/* One turn of the agents' loops (and of nothing else: the fakes are read
 * by the callers with rdv_raw_take). */
static void mitm_step_all(mitm **xs, int n) {
  struct pollfd pfd[4];
  nfds_t np = 0;
  int t = 10;
  assert_true(n <= 2);
  for (int i = 0; i < n; i++) {
    pfd[np++] = (struct pollfd){np_agent_fd(xs[i]->agent), POLLIN, 0};
    if (xs[i]->f->conn.fd >= 0)
      pfd[np++] = (struct pollfd){xs[i]->f->conn.fd, POLLIN, 0};
    int ti = np_agent_timeout(xs[i]->agent);
    if (ti >= 0 && ti < t)
      t = ti;
  }
  int rc = poll(pfd, np, t);
  assert_true(rc >= 0 || errno == EINTR);
  for (int i = 0; i < n; i++) {
    mitm *x = xs[i];
    assert_int_equal(np_agent_process(x->agent), 0);
    np_agent_event ev;
    while (np_agent_next_event(x->agent, &ev)) {
      if (ev.type == NP_AGENT_CONNECTED)
        x->connected++;
      if (ev.type == NP_AGENT_FAILED) {
        x->failed++;
        x->error = ev.error;
        snprintf(x->reason, sizeof x->reason, "%s", ev.reason);
      }
    }
  }
}

static void mitm_step(mitm *x) {
  mitm_step_all(&x, 1);
}

/* Runs the agent until the fake got a frame from it (true) or timeout_ms
 * passed. */
static bool mitm_frame(mitm *x, int timeout_ms) {
  int64_t deadline = rdv_now() + timeout_ms;
  memset(&x->f->conn.msg, 0, sizeof x->f->conn.msg);
  while (rdv_now() < deadline) {
    if (x->f->conn.fd >= 0 && !x->f->conn.closed && rdv_raw_take(&x->f->conn))
      return true;
    mitm_step(x);
  }
  return false;
}

/* Runs the agent until it failed (true) or timeout_ms passed. */
static bool mitm_until_failed(mitm *x, int timeout_ms) {
  int64_t deadline = rdv_now() + timeout_ms;
  while (rdv_now() < deadline && x->failed == 0)
    mitm_step(x);
  return x->failed > 0;
}

/* The agent on loopback only (its socket on 127.0.0.1, no discovery, no
 * port mapping), registered with the fake; the traversal gives up after
 * 10 s, far longer than any check below waits. */
/* The agents' warnings (and with NP_TEST_VERBOSE set, every step) on
 * stderr, named by role. */
static void mitm_log(void *user, enum np_log_level level, const char *msg) {
  fprintf(stderr, "  [%s %s] %s\n", (const char *)user, level == NP_LOG_DEBUG ? "D" : "W", msg);
}

static void mitm_start(mitm *x, fake *f, bool listen) {
  memset(x, 0, sizeof *x);
  x->f = f;
  assert_int_equal(np_identity_generate(&x->id), 0);
  np_identity_public_key(x->id, x->pk);
  np_agent_config cfg = {
      .identity = x->id,
      .rendezvous = f->addr,
      .session_timeout_ms = 10000,
      .listen = listen,
      .no_portmap = true,
      .bind = rdv_addr("127.0.0.1"),
      .log = mitm_log,
      .log_user = listen ? "callee" : "caller",
      .log_level = getenv("NP_TEST_VERBOSE") ? NP_LOG_DEBUG : NP_LOG_WARN,
  };
  np_addr_set_port(&cfg.bind, 0); /* an ephemeral port */
  assert_int_equal(np_agent_new(&cfg, &x->agent), 0);
  int64_t deadline = rdv_now() + RDV_WAIT_MS;
  while (rdv_now() < deadline && !accept_cond(f))
    mitm_step(x);
  assert_true(f->conn.fd >= 0);
  /* The server's side of the handshake, as fake_register plays it. */
  assert_true(mitm_frame(x, RDV_WAIT_MS));
  assert_int_equal(f->conn.msg.type, NP_SIG_HELLO);
  assert_memory_equal(f->conn.msg.pubkey, x->pk, NP_PUBKEY_LEN);
  static np_sig_msg m;
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_CHALLENGE;
  m.has_nonce = true;
  rdv_random(f->nonce, sizeof f->nonce);
  memcpy(m.nonce, f->nonce, sizeof f->nonce);
  assert_true(f->conn.msg.cand.has_kx);
  uint8_t sk[NP_SIG_KX_LEN];
  assert_int_equal(np__sig_kx_keypair(m.cand.kx, sk), 0);
  assert_int_equal(np__sig_channel_key(true, m.cand.kx, sk, f->conn.msg.cand.kx, f->nonce, f->key),
                   0);
  m.cand.has_kx = true;
  f->has_key = true;
  f->seq = 0;
  m.observed = rdv_addr("127.0.0.1:4000");
  send_msg(f, &m);
  assert_true(mitm_frame(x, RDV_WAIT_MS));
  assert_int_equal(f->conn.msg.type, NP_SIG_REGISTER);
  assert_int_equal(np__sig_verify_register(&f->conn.msg, f->nonce), 0);
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_REGISTERED;
  m.observed = rdv_addr("127.0.0.1:4000");
  send_mac(f, &m);
}

static void mitm_stop(mitm *x) {
  np_agent_free(x->agent);
  np_identity_free(x->id);
}

/* Calls callee and returns the OFFER as the fake received it (the session
 * number the answer must carry). */
static void mitm_call(mitm *x, const rdv_peer *callee, uint8_t session[NP_SIG_SESSION_LEN]) {
  x->failed = x->connected = 0;
  x->reason[0] = '\0';
  assert_int_equal(np_agent_connect(x->agent, callee->pk), 0);
  for (;;) {
    assert_true(mitm_frame(x, 5000));
    if (x->f->conn.msg.type == NP_SIG_OFFER)
      break;
    assert_int_equal(x->f->conn.msg.type, NP_SIG_PONG); /* nothing else is due */
  }
  const np_sig_msg *o = &x->f->conn.msg;
  assert_memory_equal(o->from, x->pk, NP_PUBKEY_LEN);
  assert_memory_equal(o->to, callee->pk, NP_PUBKEY_LEN);
  memcpy(session, o->session, NP_SIG_SESSION_LEN);
}

/* An ANSWER signed by 'by' (FROM = its key), to the caller, for session,
 * with a session key and candidates on loopback only (nothing listens
 * there: were the answer taken, probes would stay on this host). */
static int answer_frame(const rdv_peer *by, const uint8_t to[NP_PUBKEY_LEN],
                        const uint8_t session[NP_SIG_SESSION_LEN], uint8_t *buf, size_t cap) {
  static np_sig_msg m;
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_ANSWER;
  m.has_from = m.has_to = m.has_session = m.has_timestamp = true;
  memcpy(m.from, by->pk, NP_PUBKEY_LEN);
  memcpy(m.to, to, NP_PUBKEY_LEN);
  memcpy(m.session, session, NP_SIG_SESSION_LEN);
  m.timestamp_ms = rdv_unix_ms();
  m.cand.private_addrs[0] = rdv_addr("127.0.0.1:9");
  m.cand.n_private = 1;
  uint8_t sk[NP_SIG_KX_LEN];
  assert_int_equal(np__sig_kx_keypair(m.cand.kx, sk), 0);
  m.cand.has_kx = true;
  int len = np__sig_encode(&m, by->id, buf, cap);
  assert_true(len > 0);
  np_addr seen = rdv_addr("127.0.0.1:9");
  len = np__sig_stamp_observed(buf, (size_t)len, cap, &seen);
  assert_true(len > 0);
  return len;
}

/* The server as man in the middle: alice calls bob, and the server hands
 * her an answer that mallory made and signed, (1) relabelled as bob's
 * (FROM rewritten) and (2) under mallory's own ID. Either way the call
 * fails at once (well before the 10 s traversal timeout) with an
 * authentication error that says the answer was forged, nothing is
 * punched (no READY goes back to the server) and no session comes up.
 * (3) Bob's own answer, as a control, is taken: READY follows. */
static void test_fake_forged_answer(void **state) {
  (void)state;
  fake f;
  fake_listen(&f);
  rdv_peer *bob = rdv_peer_new("B", NULL), *mallory = rdv_peer_new("M", NULL);
  mitm alice;
  mitm_start(&alice, &f, false);
  static uint8_t buf[4096];
  uint8_t session[NP_SIG_SESSION_LEN];

  for (int round = 0; round < 2; round++) {
    mitm_call(&alice, bob, session);
    int len = answer_frame(mallory, alice.pk, session, buf, sizeof buf);
    if (round == 0)
      assert_true(rdv_patch(buf, (size_t)len, mallory->pk, bob->pk, NP_PUBKEY_LEN));
    int64_t t0 = rdv_now();
    rdv_raw_send(&f.conn, buf, len);
    assert_true(mitm_until_failed(&alice, 2000));
    print_message("forged answer (%s): failed after %lld ms: %s\n",
                  round == 0 ? "relabelled as bob's" : "under mallory's ID",
                  (long long)(rdv_now() - t0), alice.reason);
    assert_int_equal(alice.error, NP_ERR_AUTH);
    assert_non_null(strstr(alice.reason, "forged answer"));
    if (round == 0) {
      assert_non_null(strstr(alice.reason, "signature"));
    } else {
      char m_id[NP_PEER_ID_LEN + 1];
      np_peer_id_format(mallory->pk, m_id);
      m_id[8] = '\0';
      assert_non_null(strstr(alice.reason, m_id)); /* names the key that signed */
    }
    assert_int_equal(alice.connected, 0);
    /* No READY (nor anything else but keepalives) went to the server. */
    int64_t until = rdv_now() + 300;
    while (rdv_now() < until) {
      if (rdv_raw_take(&f.conn))
        assert_int_equal(f.conn.msg.type, NP_SIG_PONG);
      mitm_step(&alice);
    }
    assert_int_equal(alice.connected, 0);
    assert_int_equal(alice.failed, 1);
  }

  /* Control: the genuine answer is acted upon (so the two above failed for
   * the forgery, not for the frame's shape). */
  mitm_call(&alice, bob, session);
  rdv_raw_send(&f.conn, buf, answer_frame(bob, alice.pk, session, buf, sizeof buf));
  assert_true(mitm_frame(&alice, RDV_WAIT_MS));
  assert_int_equal(f.conn.msg.type, NP_SIG_READY);
  assert_memory_equal(f.conn.msg.to, bob->pk, NP_PUBKEY_LEN);
  assert_memory_equal(f.conn.msg.session, session, NP_SIG_SESSION_LEN);
  assert_int_equal(alice.failed, 0);

  mitm_stop(&alice);
  fake_close(&f);
  rdv_peer_free(bob);
  rdv_peer_free(mallory);
}

/* Runs both agents until the fake 'on' got a frame (true) or timeout_ms
 * passed. */
static bool mitm2_frame(mitm **xs, fake *on, int timeout_ms) {
  int64_t deadline = rdv_now() + timeout_ms;
  memset(&on->conn.msg, 0, sizeof on->conn.msg);
  while (rdv_now() < deadline) {
    if (!on->conn.closed && rdv_raw_take(&on->conn))
      return true;
    mitm_step_all(xs, 2);
  }
  return false;
}

/* msg (as decoded from one peer) re-addressed FROM by, TO to, signed by
 * by's key, with the server's OBSERVED stamp 'observed'. */
static int relabel_frame(const np_sig_msg *msg, const rdv_peer *by, const uint8_t to[NP_PUBKEY_LEN],
                         const np_addr *observed, uint8_t *buf, size_t cap) {
  static np_sig_msg m;
  m = *msg;
  memcpy(m.from, by->pk, NP_PUBKEY_LEN);
  memcpy(m.to, to, NP_PUBKEY_LEN);
  memset(&m.observed, 0, sizeof m.observed);
  m.has_signature = false;
  /* Both agents' sockets are bound to 127.0.0.1, but they offer the
   * host's interface address with that port: the relay offers 127.0.0.1
   * instead, as host and as mapped address (no NAT), which is where the
   * punch then probes (nothing leaves loopback). */
  if (m.cand.n_private > 0) {
    np_addr lo = rdv_addr("127.0.0.1");
    np_addr_set_port(&lo, np_addr_port(&m.cand.private_addrs[0]));
    m.cand.private_addrs[0] = lo;
    m.cand.n_private = 1;
    m.cand.mapped[0] = lo;
    m.cand.n_mapped = 1;
  }
  int len = np__sig_encode(&m, by->id, buf, cap);
  assert_true(len > 0);
  len = np__sig_stamp_observed(buf, (size_t)len, cap, observed);
  assert_true(len > 0);
  return len;
}

/* Past the signaling, the session layer's own check, through the public
 * agent API: a party that can sign as the callee P (P's key stolen, or P
 * itself redirecting the call) sends alice's call on to a third agent,
 * mallory, who holds her own key. The server plays both ends: to mallory it
 * offers alice's candidates and session key under an identity X it holds,
 * to alice it answers with mallory's candidates and session key, signed as
 * P. The punch succeeds (both derived the same probe key), and the QUIC
 * handshake is where it stops: alice expected P's key and got mallory's,
 * mallory expected X's and got alice's. Both fail with the key mismatch
 * named, and neither reports CONNECTED. */
static void test_fake_wrong_key_handshake(void **state) {
  (void)state;
  fake fa, fm; /* the one server, as alice and as mallory see it */
  fake_listen(&fa);
  fake_listen(&fm);
  rdv_peer *p = rdv_peer_new("P", NULL), *x = rdv_peer_new("X", NULL);
  mitm alice, mallory;
  mitm_start(&alice, &fa, false);
  mitm_start(&mallory, &fm, true);
  mitm *both[] = {&alice, &mallory};
  static uint8_t buf[4096];

  uint8_t session[NP_SIG_SESSION_LEN];
  mitm_call(&alice, p, session);
  static np_sig_msg offer;
  offer = fa.conn.msg;
  assert_true(offer.cand.has_kx && offer.cand.n_private > 0);
  np_addr alice_at = rdv_addr("127.0.0.1");
  np_addr_set_port(&alice_at, np_addr_port(&offer.cand.private_addrs[0]));
  rdv_raw_send(&fm.conn, buf, relabel_frame(&offer, x, mallory.pk, &alice_at, buf, sizeof buf));

  for (;;) {
    assert_true(mitm2_frame(both, &fm, 5000));
    if (fm.conn.msg.type == NP_SIG_ANSWER)
      break;
    assert_int_equal(fm.conn.msg.type, NP_SIG_PONG);
  }
  static np_sig_msg answer;
  answer = fm.conn.msg;
  assert_memory_equal(answer.from, mallory.pk, NP_PUBKEY_LEN);
  assert_memory_equal(answer.to, x->pk, NP_PUBKEY_LEN);
  assert_int_equal(answer.error_code, 0);
  assert_true(answer.cand.has_kx && answer.cand.n_private > 0);
  np_addr mallory_at = rdv_addr("127.0.0.1");
  np_addr_set_port(&mallory_at, np_addr_port(&answer.cand.private_addrs[0]));
  rdv_raw_send(&fa.conn, buf, relabel_frame(&answer, p, alice.pk, &mallory_at, buf, sizeof buf));

  /* alice's READY goes on to mallory, as X's. */
  for (;;) {
    assert_true(mitm2_frame(both, &fa, RDV_WAIT_MS));
    if (fa.conn.msg.type == NP_SIG_READY)
      break;
    assert_int_equal(fa.conn.msg.type, NP_SIG_PONG);
  }
  static np_sig_msg ready;
  ready = fa.conn.msg;
  rdv_raw_send(&fm.conn, buf, relabel_frame(&ready, x, mallory.pk, &alice_at, buf, sizeof buf));

  int64_t t0 = rdv_now(), deadline = t0 + 8000;
  while (rdv_now() < deadline && (alice.failed == 0 || mallory.failed == 0)) {
    while (rdv_raw_take(&fa.conn) || rdv_raw_take(&fm.conn))
      ; /* keepalives only */
    mitm_step_all(both, 2);
  }
  print_message("alice: %s\nmallory: %s\n", alice.reason, mallory.reason);
  assert_int_equal(alice.connected, 0);
  assert_int_equal(mallory.connected, 0);
  assert_int_equal(alice.failed, 1);
  assert_int_equal(mallory.failed, 1);
  assert_int_equal(alice.error, NP_ERR_AUTH);
  assert_int_equal(mallory.error, NP_ERR_AUTH);
  /* alice's reason names the key mismatch (found by her, or by mallory
   * and sent back in CONNECTION_CLOSE). */
  assert_non_null(strstr(alice.reason, "did not prove the key of the peer ID"));
  assert_non_null(strstr(alice.reason, "key mismatch"));
  assert_non_null(strstr(mallory.reason, "key mismatch"));

  mitm_stop(&alice);
  mitm_stop(&mallory);
  fake_close(&fa);
  fake_close(&fm);
  rdv_peer_free(p);
  rdv_peer_free(x);
}

static bool connects_at_least(void *arg) {
  rdv_peer *p = arg;
  return p->n_connects >= 9;
}

/* Nobody listening: attempts space out exponentially up to backoff_max,
 * with jitter, and never faster than backoff_min. */
static void test_fake_backoff_growth(void **state) {
  (void)state;
  fake f;
  fake_listen(&f);
  np_addr dead = f.addr;
  fake_close(&f); /* the port now refuses connections */
  rdv_peer *a = rdv_peer_new("A", NULL);
  a->cfg.backoff_min_ms = 20;
  a->cfg.backoff_max_ms = 320;
  rdv_peer_start(a, &dead);
  rdv_peer *peers[] = {a};
  assert_true(rdv_run(peers, 1, 5000, connects_at_least, a));
  assert_int_equal(a->n_state[NP_RDV_REGISTERED], 0);
  /* Gap i is drawn from [b, 1.5 b] with b = 20, 40, 80, 160, 320 (at the
   * maximum from [240, 320]); allow the loop some milliseconds. */
  int lo[] = {20, 40, 80, 160, 240, 240, 240, 240};
  int hi[] = {30, 60, 120, 240, 320, 320, 320, 320};
  for (int i = 0; i < 8; i++) {
    int64_t gap = a->connect_at[i + 1] - a->connect_at[i];
    if (gap < lo[i] - 2 || gap > hi[i] + 25)
      fail_msg("gap %d: %lld ms, want %d..%d", i, (long long)gap, lo[i], hi[i]);
  }
  rdv_peer_free(a);
}

static bool herd_done(void *arg) {
  rdv_peer **p = arg;
  for (; *p; p++)
    if ((*p)->n_connects < 9)
      return false;
  return true;
}

/* Jitter: clients that lose the server at the same moment do not all come
 * back at the same moments. Without jitter their ninth attempts would fall
 * within a millisecond or two of each other. */
static void test_fake_backoff_jitter(void **state) {
  (void)state;
  fake f;
  fake_listen(&f);
  np_addr dead = f.addr;
  fake_close(&f);
  enum { N = 8 };
  rdv_peer *p[N + 1] = {0};
  for (int i = 0; i < N; i++) {
    p[i] = rdv_peer_new("herd", NULL);
    p[i]->cfg.backoff_min_ms = 20;
    p[i]->cfg.backoff_max_ms = 320;
    rdv_peer_start(p[i], &dead);
  }
  assert_true(rdv_run(p, N, 5000, herd_done, p));
  int64_t lo = INT64_MAX, hi = INT64_MIN;
  for (int i = 0; i < N; i++) {
    int64_t t = p[i]->connect_at[8] - p[i]->connect_at[0];
    lo = t < lo ? t : lo;
    hi = t > hi ? t : hi;
  }
  if (hi - lo < 15)
    fail_msg("ninth attempts spread over only %lld ms", (long long)(hi - lo));
  for (int i = 0; i < N; i++)
    rdv_peer_free(p[i]);
}

/* Framing: a frame split byte by byte is reassembled, a malformed body is
 * dropped without losing the connection, an oversize length prefix ends
 * the connection (and the client comes back). */
static void test_fake_framing(void **state) {
  (void)state;
  fake f;
  fake_listen(&f);
  rdv_peer *a = rdv_peer_new("A", NULL), *b = rdv_peer_new("B", NULL);
  rdv_peer_start(a, &f.addr);
  rdv_peer *peers[] = {a};
  np_addr observed = rdv_addr("127.0.0.1:4000");
  fake_register(&f, a, peers, 1, &observed);

  static uint8_t buf[4096];
  uint8_t s[NP_SIG_SESSION_LEN];
  rdv_random(s, sizeof s);
  int len = signed_frame(NP_SIG_OFFER, b, a->pk, s, &observed, buf, sizeof buf);
  for (int i = 0; i < len; i++) {
    rdv_raw_send(&f.conn, buf + i, 1);
    rdv_run(peers, 1, 2, NULL, NULL);
  }
  barrier(&f, peers, 1);
  assert_int_equal(a->n_offers, 1);
  assert_memory_equal(a->offer.session, s, NP_SIG_SESSION_LEN);

  /* A well-framed body with a bad reserved field. */
  uint8_t bad[] = {0, 0, 0, 4, NP_SIG_VERSION, NP_SIG_PING, 0xff, 0xff};
  rdv_raw_send(&f.conn, bad, sizeof bad);
  barrier(&f, peers, 1);
  assert_int_equal(np__rdv_client_state(a->c), NP_RDV_REGISTERED);

  /* A length prefix over the limit. */
  uint8_t huge[] = {0, 1, 0, 0, NP_SIG_VERSION, NP_SIG_PING, 0, 0};
  rdv_raw_send(&f.conn, huge, sizeof huge);
  fake_register(&f, a, peers, 1, &observed);
  assert_int_equal(a->n_state[NP_RDV_DISCONNECTED], 1);
  assert_int_equal(a->n_state[NP_RDV_REGISTERED], 2);

  fake_close(&f);
  rdv_peer_free(a);
  rdv_peer_free(b);
}

/* The output queue is bounded: a server that stops reading makes
 * send_offer() fail with NP_ERR_NOSPACE instead of growing memory. Bad
 * configurations are refused. */
static void test_fake_limits(void **state) {
  (void)state;
  fake f;
  fake_listen(&f);
  rdv_peer *a = rdv_peer_new("A", NULL), *b = rdv_peer_new("B", NULL);
  rdv_peer_start(a, &f.addr);
  rdv_peer *peers[] = {a};
  np_addr observed = rdv_addr("127.0.0.1:4000");
  fake_register(&f, a, peers, 1, &observed);

  uint8_t s[NP_SIG_SESSION_LEN] = {0};
  np_sig_candidates cand = rdv_candidates(0);
  int rc = 0, sent = 0;
  for (; sent < 200000; sent++) {
    rc = np__rdv_client_send_offer(a->c, b->pk, s, &cand);
    if (rc != 0)
      break;
  }
  assert_int_equal(rc, NP_ERR_NOSPACE);
  assert_true(sent > 10);
  cand.n_private = NP_SIG_MAX_PRIVATE + 1;
  assert_int_equal(np__rdv_client_send_offer(a->c, b->pk, s, &cand), NP_ERR_INVAL);

  np_rdv_client *c = NULL;
  np_rdv_client_config cfg = a->cfg;
  cfg.identity = NULL;
  assert_int_equal(np__rdv_client_new(&cfg, 0, &c), NP_ERR_INVAL);
  cfg = a->cfg;
  memset(&cfg.server, 0, sizeof cfg.server);
  assert_int_equal(np__rdv_client_new(&cfg, 0, &c), NP_ERR_INVAL);
  cfg = a->cfg;
  cfg.backoff_min_ms = 500;
  cfg.backoff_max_ms = 100;
  assert_int_equal(np__rdv_client_new(&cfg, 0, &c), NP_ERR_INVAL);
  cfg = a->cfg;
  cfg.n_allow = NP_SIG_MAX_ALLOW + 1;
  assert_int_equal(np__rdv_client_new(&cfg, 0, &c), NP_ERR_INVAL);
  assert_null(c);
  np__rdv_client_free(NULL);

  fake_close(&f);
  rdv_peer_free(a);
  rdv_peer_free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fake_handshake),
      cmocka_unit_test(test_fake_drops_bad_messages),
      cmocka_unit_test(test_fake_replay),
      cmocka_unit_test(test_fake_keepalive),
      cmocka_unit_test(test_fake_handshake_timeout),
      cmocka_unit_test(test_fake_replaced_stops),
      cmocka_unit_test(test_fake_forged_errors),
      cmocka_unit_test(test_fake_forged_answer),
      cmocka_unit_test(test_fake_wrong_key_handshake),
      cmocka_unit_test(test_fake_backoff_growth),
      cmocka_unit_test(test_fake_backoff_jitter),
      cmocka_unit_test(test_fake_framing),
      cmocka_unit_test(test_fake_limits),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
