/*
 * Registry of registered peers: public key -> where to reach it.
 *
 * A small interface so the rendezvous server's protocol code never knows
 * how the registry is stored: the embedded default is an in-memory hash
 * table (np__registry_memory_new()); a shared registry for several
 * rendezvous nodes can implement the same four operations later.
 */
#ifndef NP_REGISTRY_H
#define NP_REGISTRY_H

#include "natpunch.h"

typedef struct np_registry np_registry;

typedef struct np_registry_ops {
  /* Maps key to value (an opaque pointer, for the server a connection).
   * If the key was registered already, the old value is returned through
   * *previous (NULL otherwise) and replaced. Returns 0 or NP_ERR_NOMEM. */
  int (*put)(np_registry *r, const uint8_t key[NP_PUBKEY_LEN], void *value, void **previous);
  /* The value for key, or NULL. */
  void *(*get)(np_registry *r, const uint8_t key[NP_PUBKEY_LEN]);
  /* Removes key, but only while it still maps to value (a connection that
   * was replaced must not unregister its successor). Returns true if it
   * removed the key. */
  bool (*remove)(np_registry *r, const uint8_t key[NP_PUBKEY_LEN], void *value);
  /* Number of keys. */
  size_t (*count)(const np_registry *r);
  /* Frees the registry (not the values). */
  void (*free)(np_registry *r);
} np_registry_ops;

/* Every implementation starts with this header. */
struct np_registry {
  const np_registry_ops *ops;
};

/* The in-memory registry: open addressing, grown at 50% load. Slots are
 * chosen by SipHash of the key under a random per-registry secret, not by
 * the key's own bytes: anyone can grind Ed25519 keys until many share a
 * prefix, which would turn lookups linear.
 * Returns NULL when out of memory. */
np_registry *np__registry_memory_new(void);

/* Bytes the in-memory registry uses per registered key at its current size
 * (for the README's memory figure). */
size_t np__registry_memory_bytes(const np_registry *r);

#endif
