/*
 * The in-memory registry through its ops table only (the way the server
 * uses it): put/get/remove/replace semantics, removal guarded by the value,
 * growth to 100k keys with every key still found, and deletions that keep
 * probe chains intact (checked against a shadow array).
 */
#include "rendezvous/registry.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define BIG 100000

/* Distinct, deterministic keys: i in the first four bytes, the rest a
 * simple mix so keys do not share long prefixes. */
static void key_of(uint32_t i, uint8_t key[NP_PUBKEY_LEN]) {
  uint32_t x = i * 2654435761u + 1;
  for (int b = 0; b < NP_PUBKEY_LEN; b++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    key[b] = (uint8_t)x;
  }
  memcpy(key, &i, sizeof i);
}

/* A distinct non-NULL value per index without allocating. */
static void *val_of(uint32_t i) {
  return (void *)(uintptr_t)(0x1000u + (uintptr_t)i * 16u);
}

static void test_basic(void **state) {
  (void)state;
  np_registry *r = np__registry_memory_new();
  assert_non_null(r);
  const np_registry_ops *ops = r->ops;
  uint8_t a[NP_PUBKEY_LEN], b[NP_PUBKEY_LEN];
  key_of(1, a);
  key_of(2, b);
  int x, y, z;
  void *prev = &x;

  assert_int_equal(ops->count(r), 0);
  assert_null(ops->get(r, a));
  assert_false(ops->remove(r, a, &x));

  assert_int_equal(ops->put(r, a, &x, &prev), 0);
  assert_null(prev);
  assert_int_equal(ops->count(r), 1);
  assert_ptr_equal(ops->get(r, a), &x);
  assert_null(ops->get(r, b));

  /* Replace: the old value comes back, count unchanged. */
  assert_int_equal(ops->put(r, a, &y, &prev), 0);
  assert_ptr_equal(prev, &x);
  assert_int_equal(ops->count(r), 1);
  assert_ptr_equal(ops->get(r, a), &y);

  /* The replaced value cannot unregister its successor. */
  assert_false(ops->remove(r, a, &x));
  assert_ptr_equal(ops->get(r, a), &y);
  assert_false(ops->remove(r, a, &z));

  assert_int_equal(ops->put(r, b, &z, NULL), 0);
  assert_int_equal(ops->count(r), 2);
  assert_true(ops->remove(r, a, &y));
  assert_null(ops->get(r, a));
  assert_ptr_equal(ops->get(r, b), &z);
  assert_int_equal(ops->count(r), 1);
  assert_false(ops->remove(r, a, &y)); /* already gone */

  /* A NULL value would read as "absent": refused. */
  assert_int_equal(ops->put(r, a, NULL, &prev), NP_ERR_INVAL);
  assert_null(ops->get(r, a));
  ops->free(r);
}

static void test_growth_100k(void **state) {
  (void)state;
  np_registry *r = np__registry_memory_new();
  assert_non_null(r);
  const np_registry_ops *ops = r->ops;
  uint8_t k[NP_PUBKEY_LEN];
  size_t small_bytes = np__registry_memory_bytes(r);
  for (uint32_t i = 0; i < BIG; i++) {
    key_of(i, k);
    void *prev = val_of(1);
    assert_int_equal(ops->put(r, k, val_of(i), &prev), 0);
    assert_null(prev);
  }
  assert_int_equal(ops->count(r), BIG);
  for (uint32_t i = 0; i < BIG; i++) {
    key_of(i, k);
    assert_ptr_equal(ops->get(r, k), val_of(i));
  }
  key_of(BIG + 7, k);
  assert_null(ops->get(r, k));
  /* At most 50% load plus the 40-byte slot: under 200 bytes per key. */
  size_t per_key = np__registry_memory_bytes(r);
  assert_true(per_key > 0 && per_key < 200);
  assert_true(small_bytes > 0);
  ops->free(r);
}

/* Random puts and removes against a shadow array: every deletion must keep
 * all other keys reachable (backward-shift deletion done wrong loses keys
 * in wrapped clusters). */
static void test_churn(void **state) {
  (void)state;
  enum { N = 5000, STEPS = 200000 };
  np_registry *r = np__registry_memory_new();
  assert_non_null(r);
  const np_registry_ops *ops = r->ops;
  static void *shadow[N];
  memset(shadow, 0, sizeof shadow);
  size_t live = 0;
  uint32_t rng = 12345;
  uint8_t k[NP_PUBKEY_LEN];
  for (int s = 0; s < STEPS; s++) {
    rng = rng * 1103515245u + 12345u;
    uint32_t i = (rng >> 8) % N;
    key_of(i, k);
    if (shadow[i] && (rng & 1)) {
      assert_true(ops->remove(r, k, shadow[i]));
      shadow[i] = NULL;
      live--;
    } else {
      void *v = val_of(i + (uint32_t)s);
      void *prev = NULL;
      assert_int_equal(ops->put(r, k, v, &prev), 0);
      assert_ptr_equal(prev, shadow[i]);
      if (!shadow[i])
        live++;
      shadow[i] = v;
    }
    if (s % 20000 == 0 || s == STEPS - 1) {
      assert_int_equal(ops->count(r), live);
      for (uint32_t j = 0; j < N; j++) {
        key_of(j, k);
        assert_ptr_equal(ops->get(r, k), shadow[j]);
      }
    }
  }
  ops->free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_basic),
      cmocka_unit_test(test_growth_100k),
      cmocka_unit_test(test_churn),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
