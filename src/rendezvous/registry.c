/*
 * The in-memory registry: an open-addressing hash table (linear probing)
 * from a 32-byte public key to an opaque value, grown at 50% load and
 * compacted with backward-shift deletion, so there are no tombstones and a
 * table that sees many registrations and departures never degrades.
 *
 * Hashing: public keys look uniformly random, but a client chooses its own
 * key and can grind key pairs until many land in one bucket (a keypair costs
 * microseconds), which would turn every lookup into a long probe. So the
 * bucket comes from SipHash-2-4 (libsodium's crypto_shorthash) under a
 * random per-registry key: without that key, colliding keys cannot be
 * chosen in advance.
 */
#include "rendezvous/registry.h"

#include "util/clock.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* Smallest table (slots); a power of two so the bucket is a mask. */
#define REG_MIN_SLOTS 64

struct reg_slot {
  uint8_t key[NP_PUBKEY_LEN];
  void *value; /* NULL: the slot is free */
};

struct reg_memory {
  np_registry base; /* first: the np_registry header */
  struct reg_slot *slots;
  size_t mask; /* slots - 1 */
  size_t count;
  uint8_t hash_key[crypto_shorthash_KEYBYTES];
};

static size_t bucket(const struct reg_memory *m, const uint8_t key[NP_PUBKEY_LEN]) {
  uint8_t h[crypto_shorthash_BYTES];
  crypto_shorthash(h, key, NP_PUBKEY_LEN, m->hash_key);
  uint64_t v;
  memcpy(&v, h, sizeof v);
  return (size_t)v & m->mask;
}

/* The slot holding key, or the free slot where it would go. The table is
 * never full (load stays at most 50%), so the probe ends. */
static size_t find(const struct reg_memory *m, const uint8_t key[NP_PUBKEY_LEN]) {
  size_t i = bucket(m, key);
  while (m->slots[i].value && memcmp(m->slots[i].key, key, NP_PUBKEY_LEN) != 0)
    i = (i + 1) & m->mask;
  return i;
}

static int grow(struct reg_memory *m) {
  size_t old_n = m->mask + 1;
  size_t n = old_n * 2;
  struct reg_slot *slots = calloc(n, sizeof *slots);
  if (!slots)
    return NP_ERR_NOMEM;
  struct reg_slot *old = m->slots;
  m->slots = slots;
  m->mask = n - 1;
  for (size_t i = 0; i < old_n; i++)
    if (old[i].value)
      m->slots[find(m, old[i].key)] = old[i];
  free(old);
  return 0;
}

static int mem_put(np_registry *r, const uint8_t key[NP_PUBKEY_LEN], void *value, void **previous) {
  struct reg_memory *m = (struct reg_memory *)r;
  if (previous)
    *previous = NULL;
  if (!value)
    return NP_ERR_INVAL; /* NULL marks free slots and means "absent" for get */
  size_t i = find(m, key);
  if (m->slots[i].value) {
    if (previous)
      *previous = m->slots[i].value;
    m->slots[i].value = value;
    return 0;
  }
  /* Grow before the insert would pass 50% load. */
  if ((m->count + 1) * 2 > m->mask + 1) {
    int rc = grow(m);
    if (rc != 0)
      return rc;
    i = find(m, key);
  }
  memcpy(m->slots[i].key, key, NP_PUBKEY_LEN);
  m->slots[i].value = value;
  m->count++;
  return 0;
}

static void *mem_get(np_registry *r, const uint8_t key[NP_PUBKEY_LEN]) {
  struct reg_memory *m = (struct reg_memory *)r;
  return m->slots[find(m, key)].value;
}

/* Backward-shift deletion (Knuth 6.4, algorithm R): after emptying slot i,
 * move later entries of the same cluster back into the hole when their home
 * bucket allows it, so every remaining key stays reachable from its bucket
 * without tombstones. */
static bool mem_remove(np_registry *r, const uint8_t key[NP_PUBKEY_LEN], void *value) {
  struct reg_memory *m = (struct reg_memory *)r;
  size_t i = find(m, key);
  if (!m->slots[i].value || m->slots[i].value != value)
    return false;
  m->slots[i].value = NULL;
  m->count--;
  size_t hole = i;
  for (size_t j = (i + 1) & m->mask; m->slots[j].value; j = (j + 1) & m->mask) {
    size_t home = bucket(m, m->slots[j].key);
    /* Entry j may move to the hole unless its home lies cyclically in
     * (hole, j]: then the hole is before its home and it must stay. */
    bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (stays)
      continue;
    m->slots[hole] = m->slots[j];
    m->slots[j].value = NULL;
    hole = j;
  }
  return true;
}

static size_t mem_count(const np_registry *r) {
  return ((const struct reg_memory *)r)->count;
}

static void mem_free(np_registry *r) {
  struct reg_memory *m = (struct reg_memory *)r;
  if (!m)
    return;
  free(m->slots);
  sodium_memzero(m->hash_key, sizeof m->hash_key);
  free(m);
}

static const np_registry_ops mem_ops = {
    .put = mem_put,
    .get = mem_get,
    .remove = mem_remove,
    .count = mem_count,
    .free = mem_free,
};

np_registry *np__registry_memory_new(void) {
  struct reg_memory *m = calloc(1, sizeof *m);
  if (!m)
    return NULL;
  m->base.ops = &mem_ops;
  m->slots = calloc(REG_MIN_SLOTS, sizeof *m->slots);
  if (!m->slots || np__random_bytes(m->hash_key, sizeof m->hash_key) != 0) {
    free(m->slots);
    free(m);
    return NULL;
  }
  m->mask = REG_MIN_SLOTS - 1;
  return &m->base;
}

size_t np__registry_memory_bytes(const np_registry *r) {
  const struct reg_memory *m = (const struct reg_memory *)r;
  size_t total = sizeof *m + (m->mask + 1) * sizeof *m->slots;
  return m->count ? total / m->count : total;
}
