/* bench/throughput's byte sink: reads stdin to its end and prints one JSON
 * line with the byte count, the wall-clock times (CLOCK_REALTIME, ms, like
 * the CLI's time_ms) of the first and the last byte, and whether every byte
 * was zero (the bench sends /dev/zero, so a corrupted or misplaced byte shows
 * even though the count is right). A separate process so that the receiver's
 * stdout is a real pipe, as it is for a user's `natpunch listen | tar x`.
 *
 * Usage: sink [--out FILE]   (the JSON line goes to FILE, default stdout)
 *        sink --stamp         copies stdin's lines to stdout, each after the
 *                             time it arrived ("TIME_MS LINE"): the CLI's
 *                             events carry no clock of their own */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static int stamp(void) {
  char line[8192];
  while (fgets(line, sizeof line, stdin)) {
    printf("%.3f %s", now_ms(), line);
    fflush(stdout);
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *out = NULL;
  if (argc == 2 && strcmp(argv[1], "--stamp") == 0)
    return stamp();
  if (argc == 3 && strcmp(argv[1], "--out") == 0)
    out = argv[2];
  else if (argc != 1) {
    fprintf(stderr, "usage: sink [--out FILE] | --stamp\n");
    return 2;
  }
  static uint8_t buf[CHUNK];
  uint64_t total = 0;
  double first = 0, last = 0;
  bool zero = true;
  for (;;) {
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      perror("sink: read");
      return 1;
    }
    if (n == 0)
      break;
    double t = now_ms();
    if (total == 0)
      first = t;
    last = t;
    total += (uint64_t)n;
    /* A word at a time: the check must cost far less than the transfer. */
    const uint64_t *w = (const uint64_t *)buf;
    uint64_t acc = 0;
    size_t words = (size_t)n / 8;
    for (size_t i = 0; i < words; i++)
      acc |= w[i];
    for (size_t i = words * 8; i < (size_t)n; i++)
      acc |= buf[i];
    if (acc)
      zero = false;
  }
  FILE *f = out ? fopen(out, "w") : stdout;
  if (!f) {
    perror("sink: --out");
    return 1;
  }
  fprintf(f, "{\"bytes\":%llu,\"first_ms\":%.3f,\"last_ms\":%.3f,\"all_zero\":%s}\n",
          (unsigned long long)total, first, last, zero ? "true" : "false");
  if (out)
    fclose(f);
  return 0;
}
