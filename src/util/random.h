/* The injectable random source that state machines draw from (tests pass a deterministic one). */
#ifndef NP_RANDOM_H
#define NP_RANDOM_H

#include <stddef.h>
#include <stdint.h>

/* Fills buf with len random bytes, drawing on whatever state 'user' points
 * at. The state machines (the NAT probe's transaction IDs, the predictor's
 * port spray, the punch machine) take one of these with its user pointer,
 * and NULL means the kernel's CSPRNG (np__random_bytes in util/clock.h), so
 * that a test can replay the same run. It cannot fail: an implementation
 * that might must fall back on something rather than leave buf unfilled. */
typedef void (*np_random_fn)(void *user, uint8_t *buf, size_t len);

#endif
