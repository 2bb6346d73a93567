/* Shared by the fuzz targets: the libFuzzer entry point's prototype and an
 * invariant check that survives NDEBUG (the replay build defines it). */
#ifndef NP_FUZZ_CHECK_H
#define NP_FUZZ_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Not assert(): the replay build is compiled with NDEBUG. */
#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);                 \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

#endif
