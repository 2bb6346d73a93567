/* The agent on an injected clock (agent_internal.h): a call whose rendezvous
 * server cannot be reached fails exactly at its session deadline, as the
 * fake clock says, with no sleeping. Nothing leaves loopback: no discovery
 * servers, no port mapping, the rendezvous address a closed local port. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "agent/agent_internal.h"
#include "natpunch.h"
#include "util/clock.h"

#include <string.h>

static int64_t fake_now;

static int64_t fake_clock(void *user) {
  (void)user;
  return fake_now;
}

/* Drains the agent's events; returns how many were FAILED, the last in *out. */
static int failures(np_agent *a, np_agent_event *out) {
  np_agent_event ev;
  int n = 0;
  while (np_agent_next_event(a, &ev))
    if (ev.type == NP_AGENT_FAILED) {
      *out = ev;
      n++;
    }
  return n;
}

static void deadline_on_fake_clock(void **state) {
  (void)state;
  np_identity *self = NULL, *peer = NULL;
  assert_int_equal(np_identity_generate(&self), 0);
  assert_int_equal(np_identity_generate(&peer), 0);
  np_agent_config c;
  memset(&c, 0, sizeof c);
  c.identity = self;
  assert_int_equal(np_addr_parse("127.0.0.1:9", 0, &c.rendezvous), 0);
  c.no_portmap = true;
  c.session_timeout_ms = 5000;
  c.log_level = NP_LOG_ERROR;
  fake_now = 1000000;
  int64_t real_start = np__now_ms();
  np_agent *a = NULL;
  assert_int_equal(np__agent_new_clocked(&c, fake_clock, NULL, &a), 0);
  uint8_t pk[NP_PUBKEY_LEN];
  np_identity_public_key(peer, pk);
  assert_int_equal(np_agent_connect(a, pk), 0);
  np_agent_event ev;
  assert_int_equal(np_agent_process(a), 0);
  assert_int_equal(failures(a, &ev), 0);
  int t = np_agent_timeout(a);
  assert_true(t >= 0 && t <= 5000); /* the deadline (or the client's retry) bounds the sleep */
  /* One millisecond before the deadline: still trying. */
  fake_now += 4999;
  assert_int_equal(np_agent_process(a), 0);
  assert_int_equal(failures(a, &ev), 0);
  fake_now += 1;
  assert_int_equal(np_agent_process(a), 0);
  assert_int_equal(failures(a, &ev), 1);
  assert_int_equal(ev.error, NP_ERR_TIMEOUT);
  assert_non_null(strstr(ev.reason, "rendezvous server"));
  /* A fresh call may start at once. */
  assert_int_equal(np_agent_connect(a, pk), 0);
  np_agent_free(a);
  np_identity_free(self);
  np_identity_free(peer);
  /* Five seconds of session went by on the fake clock, none on the real one. */
  assert_true(np__now_ms() - real_start < 2000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(deadline_on_fake_clock),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
