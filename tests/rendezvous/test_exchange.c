/*
 * The rendezvous client against the real rendezvous server on loopback:
 * registration with the OBSERVED address, an offer/answer exchange with
 * every candidate field, impersonation attempts crafted with the codec over
 * raw sockets, allow lists, unknown peers, a server restart on the same
 * port, and one ID registered from two clients. Each test runs its own
 * server in a thread; every wait is the shared poll loop with a deadline.
 */
#include "rdv_test_util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static bool offers_at_least(void *arg) {
  void **a = arg;
  return ((rdv_peer *)a[0])->n_offers >= *(int *)a[1];
}

static bool answers_at_least(void *arg) {
  void **a = arg;
  return ((rdv_peer *)a[0])->n_answers >= *(int *)a[1];
}

static bool readies_at_least(void *arg) {
  void **a = arg;
  return ((rdv_peer *)a[0])->n_readies >= *(int *)a[1];
}

static bool errors_at_least(void *arg) {
  void **a = arg;
  return ((rdv_peer *)a[0])->n_errors >= *(int *)a[1];
}

static bool wait_offers(rdv_peer **peers, int n, rdv_peer *p, int count) {
  void *arg[] = {p, &count};
  return rdv_run(peers, n, RDV_WAIT_MS, offers_at_least, arg);
}

static bool wait_answers(rdv_peer **peers, int n, rdv_peer *p, int count) {
  void *arg[] = {p, &count};
  return rdv_run(peers, n, RDV_WAIT_MS, answers_at_least, arg);
}

static bool wait_errors(rdv_peer **peers, int n, rdv_peer *p, int count) {
  void *arg[] = {p, &count};
  return rdv_run(peers, n, RDV_WAIT_MS, errors_at_least, arg);
}

static void wait_registered(rdv_peer **peers, int n) {
  rdv_peer *list[17];
  for (int i = 0; i < n; i++)
    list[i] = peers[i];
  list[n] = NULL;
  assert_true(rdv_run(peers, n, RDV_WAIT_MS, rdv_all_registered, list));
}

/* A server and two registered peers A and B; peers[] gets {A, B}. */
static void start_two(rdv_srv *s, rdv_peer *peers[2]) {
  assert_int_equal(rdv_srv_start(s, 0), 0);
  peers[0] = rdv_peer_new("A", NULL);
  peers[1] = rdv_peer_new("B", NULL);
  rdv_peer_start(peers[0], &s->addr);
  rdv_peer_start(peers[1], &s->addr);
  wait_registered(peers, 2);
}

/* OBSERVED in REGISTERED is our TCP address as the server saw it: on
 * loopback exactly our socket's local address. */
static void assert_observed_is_local(const rdv_peer *p) {
  char x[NP_ADDRSTRLEN], y[NP_ADDRSTRLEN];
  if (!np_addr_equal(&p->observed, &p->local_at_registered))
    fail_msg("%s: OBSERVED %s, local %s", p->name, np_addr_format(&p->observed, x, sizeof x),
             np_addr_format(&p->local_at_registered, y, sizeof y));
}

/* Offer A -> B, answer B -> A and READY A -> B through the server; checks
 * every field on the way. Returns nothing; fails the test on any
 * difference. */
static void exchange(rdv_peer **peers, int n, rdv_peer *a, rdv_peer *b, int salt) {
  int offers = b->n_offers, answers = a->n_answers;
  uint8_t session[NP_SIG_SESSION_LEN];
  rdv_random(session, sizeof session);
  np_sig_candidates ca = rdv_candidates(salt), cb = rdv_candidates(salt + 100);
  cb.n_private = 1; /* a different shape, so answers are not offers echoed */
  cb.have_delta = false;
  memset(&cb.portmap, 0, sizeof cb.portmap);

  assert_int_equal(np__rdv_client_send_offer(a->c, b->pk, session, &ca), 0);
  assert_true(wait_offers(peers, n, b, offers + 1));
  assert_int_equal(b->n_offers, offers + 1);
  const np_sig_msg *o = &b->offer;
  assert_memory_equal(o->from, a->pk, NP_PUBKEY_LEN);
  assert_memory_equal(o->to, b->pk, NP_PUBKEY_LEN);
  assert_memory_equal(o->session, session, NP_SIG_SESSION_LEN);
  rdv_assert_candidates_equal(&o->cand, &ca);
  /* The server stamped the caller's TCP address. */
  short ev;
  np_addr a_local = rdv_local_addr(np__rdv_client_fd(a->c, &ev));
  assert_true(np_addr_equal(&o->observed, &a_local));

  np_addr peer_seen = o->observed;
  assert_int_equal(np__rdv_client_send_answer(b->c, a->pk, session, &cb, &peer_seen), 0);
  assert_true(wait_answers(peers, n, a, answers + 1));
  assert_int_equal(a->n_answers, answers + 1);
  const np_sig_msg *r = &a->answer;
  assert_memory_equal(r->from, b->pk, NP_PUBKEY_LEN);
  assert_memory_equal(r->to, a->pk, NP_PUBKEY_LEN);
  assert_memory_equal(r->session, session, NP_SIG_SESSION_LEN);
  rdv_assert_candidates_equal(&r->cand, &cb);
  assert_true(np_addr_equal(&r->peer_seen, &peer_seen));
  np_addr b_local = rdv_local_addr(np__rdv_client_fd(b->c, &ev));
  assert_true(np_addr_equal(&r->observed, &b_local));

  int readies = b->n_readies;
  assert_int_equal(np__rdv_client_send_ready(a->c, b->pk, session), 0);
  void *arg[] = {b, &(int){readies + 1}};
  assert_true(rdv_run(peers, n, RDV_WAIT_MS, readies_at_least, arg));
  assert_int_equal(b->n_readies, readies + 1);
  const np_sig_msg *y = &b->ready;
  assert_memory_equal(y->from, a->pk, NP_PUBKEY_LEN);
  assert_memory_equal(y->to, b->pk, NP_PUBKEY_LEN);
  assert_memory_equal(y->session, session, NP_SIG_SESSION_LEN);
  /* The caller's READY of the same session signed again (what its agent
   * sends after a lost rendezvous connection) gets through; a verbatim
   * copy would not (test_fake_replay). A few ms later, as a re-send is:
   * the timestamp has millisecond resolution. */
  rdv_run(peers, n, 5, NULL, NULL);
  assert_int_equal(np__rdv_client_send_ready(a->c, b->pk, session), 0);
  assert_true(rdv_run(peers, n, RDV_WAIT_MS, readies_at_least, (void *[]){b, &(int){readies + 2}}));
  assert_int_equal(b->n_readies, readies + 2);
}

static bool counted_2_2(void *arg) {
  np_rendezvous_stats st;
  np_rendezvous_server_stats(arg, &st);
  return st.offers >= 2 && st.answers >= 2;
}

/* 1. Two peers register and complete an offer/answer exchange. */
static void test_exchange_offer_answer(void **state) {
  (void)state;
  rdv_srv s;
  rdv_peer *peers[2];
  start_two(&s, peers);
  rdv_peer *a = peers[0], *b = peers[1];
  for (int i = 0; i < 2; i++) {
    assert_int_equal(peers[i]->n_state[NP_RDV_CONNECTING], 1);
    assert_int_equal(peers[i]->n_state[NP_RDV_AUTHENTICATING], 1);
    assert_int_equal(peers[i]->n_state[NP_RDV_REGISTERED], 1);
    assert_true(peers[i]->observed_null_ok);
    assert_observed_is_local(peers[i]);
  }

  exchange(peers, 2, a, b, 0);
  /* And the other way round, on the same connections. */
  exchange(peers, 2, b, a, 7);
  assert_int_equal(a->n_errors + b->n_errors, 0);
  assert_int_equal(a->n_state[NP_RDV_DISCONNECTED] + b->n_state[NP_RDV_DISCONNECTED], 0);

  /* The server counts a forward after writing it, so the counter may trail
   * the delivery by a moment: wait for it rather than read it once. */
  assert_true(rdv_run(peers, 2, RDV_WAIT_MS, counted_2_2, s.srv));
  np_rendezvous_stats st;
  np_rendezvous_server_stats(s.srv, &st);
  assert_int_equal(st.registered, 2);
  assert_int_equal(st.offers, 2);
  assert_int_equal(st.answers, 2);

  rdv_peer_free(a);
  rdv_peer_free(b);
  rdv_srv_stop(&s);
}

/* 1b. A busy callee declines: its signed ANSWER carries 486 and no
 * candidates, and reaches the caller like any answer. */
static void test_exchange_decline(void **state) {
  (void)state;
  rdv_srv s;
  rdv_peer *peers[2];
  start_two(&s, peers);
  rdv_peer *a = peers[0], *b = peers[1];

  uint8_t session[NP_SIG_SESSION_LEN];
  rdv_random(session, sizeof session);
  np_sig_candidates ca = rdv_candidates(1);
  assert_int_equal(np__rdv_client_send_offer(a->c, b->pk, session, &ca), 0);
  assert_true(wait_offers(peers, 2, b, 1));
  /* Code 0 would be an empty accepting answer; codes are three digits. */
  assert_int_equal(np__rdv_client_send_decline(b->c, a->pk, session, 0, "x"), NP_ERR_INVAL);
  assert_int_equal(np__rdv_client_send_decline(b->c, a->pk, session, 1000, "x"), NP_ERR_INVAL);
  assert_int_equal(
      np__rdv_client_send_decline(b->c, a->pk, session, NP_SIG_E_BUSY, "busy in another session"),
      0);
  assert_true(wait_answers(peers, 2, a, 1));
  assert_int_equal(a->n_answers, 1);
  const np_sig_msg *r = &a->answer;
  assert_int_equal(r->type, NP_SIG_ANSWER);
  assert_memory_equal(r->from, b->pk, NP_PUBKEY_LEN);
  assert_memory_equal(r->session, session, NP_SIG_SESSION_LEN);
  assert_int_equal(r->error_code, NP_SIG_E_BUSY);
  assert_string_equal(r->error_text, "busy in another session");
  assert_int_equal(r->cand.n_private + r->cand.n_mapped, 0);
  assert_false(r->cand.has_kx);
  assert_int_equal(a->n_errors + b->n_errors, 0);

  rdv_peer_free(a);
  rdv_peer_free(b);
  rdv_srv_stop(&s);
}

/* An OFFER from C's registered raw connection; returns the frame. */
static int forged_offer(const rdv_peer *signer, const rdv_peer *claimed_from, const rdv_peer *to,
                        const uint8_t session[NP_SIG_SESSION_LEN], uint8_t *buf, size_t cap) {
  static np_sig_msg m;
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_OFFER;
  m.has_from = m.has_to = m.has_session = m.has_timestamp = true;
  memcpy(m.from, signer->pk, NP_PUBKEY_LEN);
  memcpy(m.to, to->pk, NP_PUBKEY_LEN);
  memcpy(m.session, session, NP_SIG_SESSION_LEN);
  m.timestamp_ms = rdv_unix_ms();
  m.cand = rdv_candidates(3);
  int len = np__sig_encode(&m, signer->id, buf, cap);
  assert_true(len > 0);
  if (claimed_from != signer)
    assert_true(rdv_patch(buf, (size_t)len, signer->pk, claimed_from->pk, NP_PUBKEY_LEN));
  return len;
}

/* Registers C on a fresh raw connection (the server may close one after an
 * error, so each attempt gets its own). */
static void raw_register(rdv_raw *r, const np_addr *srv, const rdv_peer *who, rdv_peer **peers,
                         int n) {
  rdv_raw_close(r);
  rdv_raw_connect(r, srv);
  assert_int_equal(rdv_raw_register(r, who->id, peers, n), NP_SIG_REGISTERED);
}

/* Waits for C's ERROR about 'session' and checks its code. */
static void expect_error(rdv_raw *r, rdv_peer **peers, int n, uint16_t code,
                         const uint8_t session[NP_SIG_SESSION_LEN]) {
  assert_true(rdv_raw_wait(r, peers, n, RDV_WAIT_MS));
  assert_int_equal(r->msg.type, NP_SIG_ERROR);
  assert_int_equal(r->msg.error_code, code);
  if (session && r->msg.has_session)
    assert_memory_equal(r->msg.session, session, NP_SIG_SESSION_LEN);
}

/* 2. Impersonation: C, registered as itself, sends offers claiming to be A;
 * and someone without A's key tries to register A's ID. The server answers
 * 401 every time, forwards nothing, and A stays registered and reachable. */
static void test_exchange_impersonation(void **state) {
  (void)state;
  rdv_srv s;
  assert_int_equal(rdv_srv_start(&s, 0), 0);
  rdv_peer *a = rdv_peer_new("A", NULL), *b = rdv_peer_new("B", NULL), *c = rdv_peer_new("C", NULL);
  rdv_peer_start(a, &s.addr);
  rdv_peer *peers[] = {a};
  wait_registered(peers, 1);
  /* B is a raw connection, so we see whatever the server forwards, not
   * what B's client would accept. */
  rdv_raw rb = {.fd = -1}, rc = {.fd = -1};
  raw_register(&rb, &s.addr, b, peers, 1);

  static uint8_t buf[4096];
  uint8_t sess[3][NP_SIG_SESSION_LEN];
  for (int i = 0; i < 3; i++)
    rdv_random(sess[i], sizeof sess[i]);

  /* (a) FROM = A, signed by C. */
  raw_register(&rc, &s.addr, c, peers, 1);
  rdv_raw_send(&rc, buf, forged_offer(c, a, b, sess[0], buf, sizeof buf));
  expect_error(&rc, peers, 1, NP_SIG_E_AUTH, sess[0]);
  /* (b) FROM = A, signed by A, signature broken. */
  raw_register(&rc, &s.addr, c, peers, 1);
  int len = forged_offer(a, a, b, sess[1], buf, sizeof buf);
  buf[len - 1] ^= 0x55; /* SIGNATURE is the last TLV before any OBSERVED */
  rdv_raw_send(&rc, buf, len);
  expect_error(&rc, peers, 1, NP_SIG_E_AUTH, sess[1]);
  /* (c) A's genuine offer replayed over C's connection: the signature is
   * fine, but FROM is not the key this connection registered. */
  raw_register(&rc, &s.addr, c, peers, 1);
  rdv_raw_send(&rc, buf, forged_offer(a, a, b, sess[2], buf, sizeof buf));
  expect_error(&rc, peers, 1, NP_SIG_E_AUTH, sess[2]);

  /* Registering A's ID without A's key: (d) REGISTER signed by C after a
   * HELLO for A; (e) PUBKEY rewritten to A; (f) A's real signature over a
   * nonce from another connection (a replayed registration). */
  static np_sig_msg m;
  rdv_raw rd = {.fd = -1}, re = {.fd = -1};
  for (int variant = 0; variant < 3; variant++) {
    rdv_raw_connect(&rd, &s.addr);
    memset(&m, 0, sizeof m);
    m.type = NP_SIG_HELLO;
    m.has_pubkey = true;
    memcpy(m.pubkey, a->pk, NP_PUBKEY_LEN);
    rdv_raw_send_msg(&rd, &m, NULL);
    assert_true(rdv_raw_wait(&rd, peers, 1, RDV_WAIT_MS));
    assert_int_equal(rd.msg.type, NP_SIG_CHALLENGE);
    uint8_t nonce[NP_SIG_NONCE_LEN];
    memcpy(nonce, rd.msg.nonce, sizeof nonce);
    memset(&m, 0, sizeof m);
    m.type = NP_SIG_REGISTER;
    m.has_nonce = true;
    if (variant == 0) {
      memcpy(m.nonce, nonce, sizeof nonce);
      rdv_raw_send_msg(&rd, &m, c->id);
    } else if (variant == 1) {
      memcpy(m.nonce, nonce, sizeof nonce);
      len = np__sig_encode(&m, c->id, buf, sizeof buf);
      assert_true(len > 0);
      assert_true(rdv_patch(buf, (size_t)len, c->pk, a->pk, NP_PUBKEY_LEN));
      rdv_raw_send(&rd, buf, len);
    } else {
      rdv_raw_connect(&re, &s.addr);
      np_sig_msg h;
      memset(&h, 0, sizeof h);
      h.type = NP_SIG_HELLO;
      h.has_pubkey = true;
      memcpy(h.pubkey, a->pk, NP_PUBKEY_LEN);
      rdv_raw_send_msg(&re, &h, NULL);
      assert_true(rdv_raw_wait(&re, peers, 1, RDV_WAIT_MS));
      assert_int_equal(re.msg.type, NP_SIG_CHALLENGE);
      memcpy(m.nonce, re.msg.nonce, NP_SIG_NONCE_LEN); /* the other nonce */
      rdv_raw_send_msg(&rd, &m, a->id);
      rdv_raw_close(&re);
    }
    expect_error(&rd, peers, 1, NP_SIG_E_AUTH, NULL);
    rdv_raw_close(&rd);
  }

  /* Barrier: A's genuine offer to B. TCP keeps the server's writes to B in
   * order, so if any forged offer had been forwarded, B would see it first. */
  uint8_t real[NP_SIG_SESSION_LEN];
  rdv_random(real, sizeof real);
  np_sig_candidates cand = rdv_candidates(9);
  assert_int_equal(np__rdv_client_send_offer(a->c, b->pk, real, &cand), 0);
  assert_true(rdv_raw_wait(&rb, peers, 1, RDV_WAIT_MS));
  assert_int_equal(rb.msg.type, NP_SIG_OFFER);
  assert_memory_equal(rb.msg.session, real, NP_SIG_SESSION_LEN);
  assert_memory_equal(rb.msg.from, a->pk, NP_PUBKEY_LEN);

  /* A never noticed anything and is still reachable: B offers to A. */
  assert_int_equal(a->n_state[NP_RDV_REGISTERED], 1);
  assert_int_equal(a->n_state[NP_RDV_DISCONNECTED], 0);
  assert_int_equal(a->n_errors, 0);
  rdv_random(real, sizeof real);
  memset(&m, 0, sizeof m);
  m.type = NP_SIG_OFFER;
  m.has_from = m.has_to = m.has_session = m.has_timestamp = true;
  memcpy(m.from, b->pk, NP_PUBKEY_LEN);
  memcpy(m.to, a->pk, NP_PUBKEY_LEN);
  memcpy(m.session, real, NP_SIG_SESSION_LEN);
  m.timestamp_ms = rdv_unix_ms();
  rdv_raw_send_msg(&rb, &m, b->id);
  assert_true(wait_offers(peers, 1, a, 1));
  assert_int_equal(a->n_offers, 1);
  assert_memory_equal(a->offer.session, real, NP_SIG_SESSION_LEN);
  assert_memory_equal(a->offer.from, b->pk, NP_PUBKEY_LEN);

  rdv_raw_close(&rb);
  rdv_raw_close(&rc);
  rdv_peer_free(a);
  rdv_peer_free(b);
  rdv_peer_free(c);
  rdv_srv_stop(&s);
}

/* 3. B accepts calls only from A: C's offer is refused (403) and never
 * reaches B; A's offer does. */
static void test_exchange_not_allowed(void **state) {
  (void)state;
  rdv_srv s;
  assert_int_equal(rdv_srv_start(&s, 0), 0);
  rdv_peer *a = rdv_peer_new("A", NULL), *b = rdv_peer_new("B", NULL), *c = rdv_peer_new("C", NULL);
  rdv_peer_allow(b, a);
  rdv_peer_start(a, &s.addr);
  rdv_peer_start(b, &s.addr);
  rdv_peer_start(c, &s.addr);
  rdv_peer *peers[] = {a, b, c};
  wait_registered(peers, 3);

  uint8_t sc[NP_SIG_SESSION_LEN], sa[NP_SIG_SESSION_LEN];
  rdv_random(sc, sizeof sc);
  rdv_random(sa, sizeof sa);
  np_sig_candidates cand = rdv_candidates(2);
  assert_int_equal(np__rdv_client_send_offer(c->c, b->pk, sc, &cand), 0);
  assert_true(wait_errors(peers, 3, c, 1));
  assert_int_equal(c->err_code, NP_SIG_E_REFUSED);
  assert_true(c->err_has_session);
  assert_memory_equal(c->err_session, sc, NP_SIG_SESSION_LEN);
  /* C keeps its registration: a refusal is about one call. */
  assert_int_equal(np__rdv_client_state(c->c), NP_RDV_REGISTERED);

  assert_int_equal(np__rdv_client_send_offer(a->c, b->pk, sa, &cand), 0);
  assert_true(wait_offers(peers, 3, b, 1));
  assert_int_equal(b->n_offers, 1);
  assert_memory_equal(b->offer.from, a->pk, NP_PUBKEY_LEN);
  assert_memory_equal(b->offer.session, sa, NP_SIG_SESSION_LEN);
  assert_int_equal(a->n_errors + b->n_errors, 0);

  rdv_peer_free(a);
  rdv_peer_free(b);
  rdv_peer_free(c);
  rdv_srv_stop(&s);
}

/* 4. An offer to a key nobody registered: 404 with the session, fast. */
static void test_exchange_unknown_peer(void **state) {
  (void)state;
  rdv_srv s;
  assert_int_equal(rdv_srv_start(&s, 0), 0);
  rdv_peer *a = rdv_peer_new("A", NULL), *ghost = rdv_peer_new("ghost", NULL);
  rdv_peer_start(a, &s.addr);
  rdv_peer *peers[] = {a};
  wait_registered(peers, 1);

  uint8_t session[NP_SIG_SESSION_LEN];
  rdv_random(session, sizeof session);
  np_sig_candidates cand = rdv_candidates(4);
  int64_t t0 = rdv_now();
  assert_int_equal(np__rdv_client_send_offer(a->c, ghost->pk, session, &cand), 0);
  assert_true(wait_errors(peers, 1, a, 1));
  assert_int_equal(a->err_code, NP_SIG_E_UNKNOWN_PEER);
  assert_true(a->err_has_session);
  assert_memory_equal(a->err_session, session, NP_SIG_SESSION_LEN);
  assert_in_range(a->err_at - t0, 0, 250);
  assert_int_equal(np__rdv_client_state(a->c), NP_RDV_REGISTERED);

  rdv_peer_free(a);
  rdv_peer_free(ghost);
  rdv_srv_stop(&s);
}

static bool all_disconnected(void *arg) {
  rdv_peer **p = arg;
  for (; *p; p++)
    if ((*p)->n_state[NP_RDV_DISCONNECTED] == 0)
      return false;
  return true;
}

static bool all_registered_twice(void *arg) {
  rdv_peer **p = arg;
  for (; *p; p++)
    if ((*p)->n_state[NP_RDV_REGISTERED] < 2 || np__rdv_client_state((*p)->c) != NP_RDV_REGISTERED)
      return false;
  return true;
}

/* 5. The server restarts on the same port: both clients notice, come back
 * on their own and register again; offers work as before. */
static void test_exchange_server_restart(void **state) {
  (void)state;
  rdv_srv s;
  rdv_peer *peers[2];
  start_two(&s, peers);
  np_addr where = s.addr;
  rdv_peer *a = peers[0], *b = peers[1];
  rdv_peer *list[] = {a, b, NULL};
  exchange(peers, 2, a, b, 11);

  rdv_srv_stop(&s);
  assert_true(rdv_run(peers, 2, RDV_WAIT_MS, all_disconnected, list));
  /* Let them fail a few reconnects against the closed port. */
  rdv_run(peers, 2, 100, NULL, NULL);
  assert_true(a->n_connects >= 2 && b->n_connects >= 2);

  /* The same port again: the listener must not be refused because of the
   * old server's connections lingering in TIME_WAIT (SO_REUSEADDR). */
  int rc = rdv_srv_start(&s, np_addr_port(&where));
  if (rc != 0)
    fail_msg("restart on port %u failed: %s (does the server set SO_REUSEADDR?)",
             np_addr_port(&where), np_strerror(rc));
  assert_true(rdv_run(peers, 2, RDV_WAIT_MS, all_registered_twice, list));
  assert_observed_is_local(a);
  assert_observed_is_local(b);
  exchange(peers, 2, a, b, 12);
  exchange(peers, 2, b, a, 13);

  rdv_peer_free(a);
  rdv_peer_free(b);
  rdv_srv_stop(&s);
}

/* a[0] was told 409 and let go; a[1] holds the ID (the server may write
 * the 409 before the REGISTERED, so wait for both). */
static bool replaced(void *arg) {
  rdv_peer **a = arg;
  return a[0]->n_errors > 0 && np__rdv_client_state(a[0]->c) == NP_RDV_DISCONNECTED &&
         np__rdv_client_state(a[1]->c) == NP_RDV_REGISTERED;
}

/* 6. The same ID from two clients: the first is told 409 (authenticated)
 * and stops for good: it does not take the ID back, so the newer one keeps
 * it and the two do not replace each other for ever. */
static void test_exchange_same_id(void **state) {
  (void)state;
  rdv_srv s;
  assert_int_equal(rdv_srv_start(&s, 0), 0);
  rdv_peer *a1 = rdv_peer_new("A1", NULL), *a2 = rdv_peer_new("A2", a1);
  a1->cfg.backoff_max_ms = a2->cfg.backoff_max_ms = 1200;
  rdv_peer_start(a1, &s.addr);
  rdv_peer *one[] = {a1};
  wait_registered(one, 1);

  rdv_peer_start(a2, &s.addr);
  rdv_peer *peers[] = {a1, a2};
  assert_true(rdv_run(peers, 2, RDV_WAIT_MS, replaced, peers));
  assert_int_equal(a1->err_code, NP_SIG_E_REPLACED);
  assert_true(np__rdv_client_replaced(a1->c));
  assert_false(np__rdv_client_replaced(a2->c));
  assert_int_equal(np__rdv_client_state(a2->c), NP_RDV_REGISTERED);
  int connects = a1->n_connects;
  /* Over twice its longest backoff, A1 never comes back. */
  rdv_run(peers, 2, 2500, NULL, NULL);
  assert_int_equal(a1->n_connects, connects);
  assert_int_equal(np__rdv_client_state(a1->c), NP_RDV_DISCONNECTED);
  assert_int_equal(np__rdv_client_state(a2->c), NP_RDV_REGISTERED);
  assert_int_equal(a2->n_state[NP_RDV_DISCONNECTED], 0);

  rdv_peer_free(a1);
  rdv_peer_free(a2);
  rdv_srv_stop(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exchange_offer_answer),   cmocka_unit_test(test_exchange_decline),   cmocka_unit_test(test_exchange_impersonation),
      cmocka_unit_test(test_exchange_not_allowed),    cmocka_unit_test(test_exchange_unknown_peer),
      cmocka_unit_test(test_exchange_server_restart), cmocka_unit_test(test_exchange_same_id),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
