/* Library-internal access to an identity's secret key, for modules that must
 * hand the key to another library (the QUIC session's TLS certificate). */
#ifndef NP_IDENTITY_INTERNAL_H
#define NP_IDENTITY_INTERNAL_H

#include "natpunch.h"

#include <stdint.h>

/* Copies the 32-byte Ed25519 seed of id into seed. The seed is the secret
 * (the libsodium 64-byte secret key is seed || public key), and it is what
 * GnuTLS's raw Ed25519 import takes. Callers must wipe their copy
 * (sodium_memzero) as soon as it has been handed on. */
void np__identity_secret(const np_identity *id, uint8_t seed[32]);

#endif
