/*
 * np_agent_new() refuses a bad config at once (NP_ERR_INVAL), rather than
 * failing each call later when the traversal starts, and accepts the
 * limits themselves. Nothing leaves loopback: no discovery servers, no
 * port mapping, and the rendezvous address is a closed local port.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "natpunch.h"

#include <string.h>

static np_identity *id;

static int setup(void **state) {
  (void)state;
  return np_identity_generate(&id) == 0 ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  np_identity_free(id);
  return 0;
}

static np_agent_config good(void) {
  np_agent_config c;
  memset(&c, 0, sizeof c);
  c.identity = id;
  /* Port 9 (discard) on loopback: nothing listens in a test machine, and
   * the agent only tries to connect in the background. */
  if (np_addr_parse("127.0.0.1:9", 0, &c.rendezvous) != 0)
    fail_msg("np_addr_parse");
  c.no_portmap = true;
  c.log_level = NP_LOG_ERROR;
  return c;
}

static void expect(const np_agent_config *c, int want, const char *what) {
  np_agent *a = (np_agent *)1;
  int rc = np_agent_new(c, &a);
  if (rc != want)
    fail_msg("%s: np_agent_new returned %s, want %s", what, np_err_name(rc),
             np_err_name(want));
  if (rc == 0)
    assert_non_null(a);
  else
    assert_null(a);
  np_agent_free(a);
}

static void test_limits_accepted(void **state) {
  (void)state;
  np_agent_config c = good();
  expect(&c, 0, "defaults");
  c.prime_ttl = 255;
  c.birthday_sockets = 1023;
  c.predict_after_ms = 50;
  c.session_timeout_ms = 1;
  c.keepalive_ms = 1;
  c.max_probes = 1;
  expect(&c, 0, "every field at its limit");
}

static void test_bad_numbers_refused(void **state) {
  (void)state;
  np_agent_config c;
#define BAD(field, value)                                                                          \
  do {                                                                                             \
    c = good();                                                                                    \
    c.field = (value);                                                                             \
    expect(&c, NP_ERR_INVAL, #field " = " #value);                                                 \
  } while (0)
  BAD(prime_ttl, 256);
  BAD(prime_ttl, -1);
  BAD(birthday_sockets, 1024);
  BAD(birthday_sockets, -1);
  BAD(predict_after_ms, -1);
  BAD(session_timeout_ms, -1);
  BAD(keepalive_ms, -1);
  BAD(peer_timeout_ms, -1);
  BAD(max_probes, -1);
  BAD(n_discovery, 3);
  BAD(n_allow, 1); /* no list */
  BAD(identity, NULL);
#undef BAD
  c = good();
  memset(&c.rendezvous, 0, sizeof c.rendezvous);
  expect(&c, NP_ERR_INVAL, "no rendezvous server");
  assert_int_equal(np_agent_new(NULL, &(np_agent *){NULL}), NP_ERR_INVAL);
  c = good();
  assert_int_equal(np_agent_new(&c, NULL), NP_ERR_INVAL);
}

/* The vanish timeout and the keepalive: keepalives must come more often
 * than the peer is declared gone, or every session would end by itself. */
static void test_peer_timeout(void **state) {
  (void)state;
  np_agent_config c = good();
  c.peer_timeout_ms = 1000;
  expect(&c, 0, "peer_timeout_ms 1000 (keepalive defaults to 250)");
  c.keepalive_ms = 999;
  expect(&c, 0, "keepalive just below the timeout");
  c.keepalive_ms = 1000;
  expect(&c, NP_ERR_INVAL, "keepalive equal to the timeout");
  c.keepalive_ms = 5000;
  expect(&c, NP_ERR_INVAL, "keepalive above the timeout");
  c = good();
  c.keepalive_ms = 25000; /* the old default: above the default timeout of 20 s */
  expect(&c, NP_ERR_INVAL, "keepalive 25 s with the default 20 s timeout");
  c.keepalive_ms = 19999;
  expect(&c, 0, "keepalive just below the default timeout");
  c.peer_timeout_ms = 60000;
  c.keepalive_ms = 25000;
  expect(&c, 0, "keepalive 25 s with a 60 s timeout");
}

/* Close and abort are safe in any state, NULL included. */
static void test_close_abort_idle(void **state) {
  (void)state;
  np_agent_close(NULL);
  np_agent_abort(NULL);
  np_agent_config c = good();
  np_agent *a = NULL;
  assert_int_equal(np_agent_new(&c, &a), 0);
  np_agent_abort(a);
  np_agent_close(a);
  np_session_stats st;
  np_agent_stats(a, &st);
  assert_false(st.connected);
  assert_int_equal(st.datagrams_dropped, 0);
  np_agent_free(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_limits_accepted),
      cmocka_unit_test(test_bad_numbers_refused),
      cmocka_unit_test(test_peer_timeout),
      cmocka_unit_test(test_close_abort_idle),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
