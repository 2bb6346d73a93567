/* The listener's probe budget over time (traversal/budget.h): per peer ID
 * and in total per minute, with an injected clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "traversal/budget.h"

#include <string.h>

static void id_of(uint8_t id[NP_BUDGET_ID_LEN], int n) {
  memset(id, 0, NP_BUDGET_ID_LEN);
  id[0] = (uint8_t)n;
  id[1] = (uint8_t)(n >> 8);
  id[31] = 0xAA;
}

/* One caller calling again and again: two full sessions a minute, then
 * nothing until its bucket refills (linearly: half of it in 30 s). */
static void per_peer(void **state) {
  (void)state;
  static np_budget b;
  np__budget_init(&b, 0, 0, 1000);
  uint8_t x[NP_BUDGET_ID_LEN];
  id_of(x, 1);
  assert_int_equal(np__budget_take(&b, x, 6000, 1000), 6000);
  assert_int_equal(np__budget_take(&b, x, 6000, 1000), 6000);
  assert_int_equal(np__budget_take(&b, x, 6000, 1000), 0);  /* declined */
  assert_int_equal(np__budget_retry_ms(&b, x, 1000), 1500); /* 300 probes at 200/s */
  assert_int_equal(np__budget_take(&b, x, 6000, 1000 + 1499), 0);
  /* Shrunk: what refilled, once it is at least the minimum. */
  assert_int_equal(np__budget_take(&b, x, 6000, 1000 + 1500), 300);
  assert_int_equal(np__budget_take(&b, x, 6000, 1000 + 1500 + 30000), 6000);
  /* Another peer is not affected. */
  uint8_t y[NP_BUDGET_ID_LEN];
  id_of(y, 2);
  assert_int_equal(np__budget_retry_ms(&b, y, 40000), 0);
  assert_int_equal(np__budget_take(&b, y, 6000, 40000), 6000);
  /* A small wish below the minimum is granted in full when available. */
  assert_int_equal(np__budget_take(&b, y, 10, 40000), 10);
  assert_int_equal(np__budget_take(&b, y, 0, 40000), 0);
}

/* What a session did not send comes back. */
static void refund(void **state) {
  (void)state;
  static np_budget b;
  np__budget_init(&b, 0, 0, 0);
  uint8_t x[NP_BUDGET_ID_LEN];
  id_of(x, 7);
  for (int i = 0; i < 100; i++) {
    /* A cone pair's session sends a handful of probes: a caller may
     * connect again and again. */
    assert_int_equal(np__budget_take(&b, x, 6000, 0), 6000);
    np__budget_refund(&b, x, 6000 - 8, 0);
  }
  assert_int_equal(np__budget_take(&b, x, 6000, 0), 6000);
  /* Refunds never fill a bucket above full. */
  np__budget_refund(&b, x, 1000000, 0);
  assert_int_equal(np__budget_take(&b, x, 20000, 0), NP_BUDGET_PER_PEER);
}

/* Many IDs (a key costs nothing): the total bounds them, and the table
 * stays bounded however many come. */
static void total_and_many_ids(void **state) {
  (void)state;
  static np_budget b;
  np__budget_init(&b, 0, 0, 0);
  uint8_t x[NP_BUDGET_ID_LEN];
  int granted = 0;
  for (int i = 0; i < 1000; i++) {
    id_of(x, i);
    granted += np__budget_take(&b, x, 6000, 0);
  }
  assert_int_equal(granted, NP_BUDGET_TOTAL);
  /* A minute later the total is full again, and a known peer keeps its
   * own (refilled) bucket. */
  id_of(x, 1000 + NP_BUDGET_PEERS);
  assert_int_equal(np__budget_take(&b, x, 6000, 60000), 6000);
  granted = 0;
  for (int i = 0; i < 1000; i++) {
    id_of(x, 5000 + i);
    granted += np__budget_take(&b, x, 6000, 60000);
  }
  assert_int_equal(granted, NP_BUDGET_TOTAL - 6000);
  /* Custom figures */
  np__budget_init(&b, 1000, 1500, 0);
  id_of(x, 1);
  assert_int_equal(np__budget_take(&b, x, 6000, 0), 1000);
  id_of(x, 2);
  assert_int_equal(np__budget_take(&b, x, 6000, 0), 500);
  id_of(x, 3);
  assert_int_equal(np__budget_take(&b, x, 6000, 0), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(per_peer),
      cmocka_unit_test(refund),
      cmocka_unit_test(total_and_many_ids),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
