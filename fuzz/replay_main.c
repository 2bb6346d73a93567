/*
 * Replays fuzz inputs without libFuzzer: every regular file in each
 * directory argument (or each file argument) is fed once to
 * LLVMFuzzerTestOneInput. The harness aborts on a broken invariant, so
 * reaching the end means every input passed.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Inputs larger than this are not datagrams; refuse rather than guess. */
#define REPLAY_MAX_INPUT (1u << 20)

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return -1;
  }
  uint8_t *buf = malloc(REPLAY_MAX_INPUT);
  if (!buf) {
    fclose(f);
    return -1;
  }
  size_t n = fread(buf, 1, REPLAY_MAX_INPUT, f);
  int err = ferror(f) || !feof(f);
  fclose(f);
  if (err) {
    fprintf(stderr, "%s: read error or larger than %u bytes\n", path,
            REPLAY_MAX_INPUT);
    free(buf);
    return -1;
  }
  /* An exact-size copy lets ASan catch a read one past the input. */
  uint8_t *exact = malloc(n ? n : 1);
  if (!exact) {
    free(buf);
    return -1;
  }
  memcpy(exact, buf, n);
  free(buf);
  LLVMFuzzerTestOneInput(exact, n);
  free(exact);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s DIR|FILE...\n", argv[0]);
    return 2;
  }
  size_t count = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) {
      perror(argv[i]);
      return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
      if (replay_file(argv[i]) != 0)
        return 1;
      count++;
      continue;
    }
    DIR *d = opendir(argv[i]);
    if (!d) {
      perror(argv[i]);
      return 1;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      char path[4096];
      if (snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name) >= (int)sizeof path)
        continue;
      if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        continue;
      if (replay_file(path) != 0) {
        closedir(d);
        return 1;
      }
      count++;
    }
    closedir(d);
  }
  printf("replayed %zu input(s)\n", count);
  /* An empty corpus would make this test pass vacuously. */
  return count > 0 ? 0 : 1;
}
