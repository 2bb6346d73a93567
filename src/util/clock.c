#include "util/clock.h"

#include "natpunch.h"

#include <errno.h>
#include <sys/random.h>
#include <time.h>

int64_t np__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int np__random_bytes(void *buf, size_t len) {
  unsigned char *p = buf;
  while (len > 0) {
    ssize_t n = getrandom(p, len, 0);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return NP_ERR_SYS;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}
