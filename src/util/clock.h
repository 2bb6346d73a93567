/* Monotonic time in milliseconds. State machines take 'now' as a parameter
 * (so tests drive time by hand); only the I/O shells call np__now_ms(). */
#ifndef NP_CLOCK_H
#define NP_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/* Milliseconds from CLOCK_MONOTONIC; never goes backwards. */
int64_t np__now_ms(void);

/* Fills buf with len bytes from the kernel's CSPRNG (getrandom). Returns 0,
 * or NP_ERR_SYS if the kernel refused (it blocks only before the pool is
 * initialised at early boot). */
int np__random_bytes(void *buf, size_t len);

#endif
