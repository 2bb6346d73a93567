/* The send/receive protocol (cli/transfer.c) with a sender and a receiver
 * connected in memory, and the progress display (cli/progress.c) on a
 * memory FILE. Files live in temporary directories under /tmp, removed at
 * the end of each test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "progress.h"
#include "transfer.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- fixtures --------------------------------------------------------------- */

typedef struct dirs {
  char src[64];
  char dst[64];
} dirs;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state) {
  dirs *d = calloc(1, sizeof *d);
  if (!d)
    return -1;
  snprintf(d->src, sizeof d->src, "/tmp/np_xfer_src.XXXXXX");
  snprintf(d->dst, sizeof d->dst, "/tmp/np_xfer_dst.XXXXXX");
  if (!mkdtemp(d->src) || !mkdtemp(d->dst))
    return -1;
  *state = d;
  return 0;
}

static int teardown(void **state) {
  dirs *d = *state;
  nftw(d->src, rm_one, 8, FTW_DEPTH | FTW_PHYS);
  nftw(d->dst, rm_one, 8, FTW_DEPTH | FTW_PHYS);
  free(d);
  return 0;
}

static uint32_t xorshift(uint32_t *s) {
  uint32_t x = *s;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return *s = x;
}

/* Writes size pseudo-random bytes (from seed) to dir/name with mode. */
static void make_file(char *path, size_t plen, const char *dir, const char *name, size_t size,
                      uint32_t seed, mode_t mode) {
  snprintf(path, plen, "%s/%s", dir, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
  assert_true(fd >= 0);
  uint8_t buf[65536];
  uint32_t s = seed | 1;
  size_t left = size;
  while (left) {
    size_t n = left < sizeof buf ? left : sizeof buf;
    for (size_t i = 0; i < n; i++)
      buf[i] = (uint8_t)xorshift(&s);
    assert_int_equal(write(fd, buf, n), (ssize_t)n);
    left -= n;
  }
  assert_int_equal(fchmod(fd, mode), 0);
  close(fd);
}

static bool same_content(const char *a, const char *b) {
  FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
  bool same = fa && fb;
  while (same) {
    uint8_t x[65536], y[65536];
    size_t na = fread(x, 1, sizeof x, fa), nb = fread(y, 1, sizeof y, fb);
    if (na != nb || memcmp(x, y, na) != 0)
      same = false;
    if (na == 0)
      break;
  }
  if (fa)
    fclose(fa);
  if (fb)
    fclose(fb);
  return same;
}

static bool exists_in(const char *dir, const char *name) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  struct stat st;
  return lstat(p, &st) == 0;
}

static size_t dir_entries(const char *dir) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
      n++;
  closedir(d);
  return n;
}

static off_t size_of(const char *dir, const char *name) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  struct stat st;
  return stat(p, &st) == 0 ? st.st_size : -1;
}

/* What the event callbacks saw. */
typedef struct seen {
  int offers, starts, ends;
  uint64_t progress_events;
  np_progress *progress; /* optional */
  int64_t now;
} seen;

static void on_event(void *user, const np_xfer_event *ev) {
  seen *s = user;
  if (ev->kind == NP_XFER_EV_OFFER)
    s->offers++;
  if (ev->kind == NP_XFER_EV_START)
    s->starts++;
  if (ev->kind == NP_XFER_EV_END)
    s->ends++;
  if (ev->kind == NP_XFER_EV_PROGRESS)
    s->progress_events++;
  if (s->progress)
    np_progress_xfer_event(s->progress, ev, s->now);
}

typedef struct pump_opts {
  size_t max_chunk;    /* 0: whole frames' worth (64 KiB + header); else 1..max_chunk random */
  uint64_t stop_after; /* 0: no limit; else stop once this many bytes went sender->receiver */
  uint64_t corrupt_at; /* 0: none; else flip the byte at this sender->receiver position */
  uint32_t seed;
} pump_opts;

/* Moves bytes both ways until neither side has anything to say (done,
 * failed, waiting for a decision, or the stop point). Bounded in rounds.
 * Returns the bytes moved sender->receiver. */
static uint64_t pump(np_xfer *s, np_xfer *r, const pump_opts *o) {
  static uint8_t buf[NP_XFER_HDR_LEN + NP_XFER_MAX_BODY];
  uint32_t rng = o->seed | 1;
  uint64_t s2r = 0;
  bool s_eof = false, r_eof = false;
  for (long round = 0; round < 10 * 1000 * 1000; round++) {
    bool moved = false;
    size_t cap = o->max_chunk ? 1 + xorshift(&rng) % o->max_chunk : sizeof buf;
    if (cap > sizeof buf)
      cap = sizeof buf;
    if (o->stop_after) {
      if (s2r >= o->stop_after)
        break;
      if (cap > o->stop_after - s2r)
        cap = (size_t)(o->stop_after - s2r);
    }
    bool fin = false;
    size_t n = np_xfer_output(s, buf, cap, &fin);
    if (n) {
      if (o->corrupt_at && o->corrupt_at > s2r && o->corrupt_at <= s2r + n)
        buf[o->corrupt_at - s2r - 1] ^= 0x40;
      np_xfer_input(r, buf, n);
      s2r += n;
      moved = true;
    }
    if (fin && !s_eof) {
      np_xfer_input_eof(r);
      s_eof = moved = true;
    }
    cap = o->max_chunk ? 1 + xorshift(&rng) % o->max_chunk : sizeof buf;
    if (cap > sizeof buf)
      cap = sizeof buf;
    n = np_xfer_output(r, buf, cap, &fin);
    if (n) {
      np_xfer_input(s, buf, n);
      moved = true;
    }
    if (fin && !r_eof) {
      np_xfer_input_eof(s);
      r_eof = moved = true;
    }
    if (!moved)
      break;
  }
  return s2r;
}

static np_xfer *sender_for(const char *const *paths, size_t n, seen *sn) {
  np_xfer_send_config c = {.paths = paths, .count = n, .on_event = on_event, .user = sn};
  np_xfer *x = NULL;
  char err[256] = "";
  int rc = np_xfer_sender_new(&c, &x, err, sizeof err);
  if (rc != 0)
    print_error("sender_new: %s\n", err);
  assert_int_equal(rc, 0);
  return x;
}

static np_xfer *receiver_for(const char *dir, bool force, bool auto_accept, seen *sn) {
  np_xfer_recv_config c = {
      .dir = dir, .force = force, .auto_accept = auto_accept, .on_event = on_event, .user = sn};
  np_xfer *x = NULL;
  assert_int_equal(np_xfer_receiver_new(&c, &x, NULL, 0), 0);
  return x;
}

/* True when x has nothing more to write and would half-close now: a side
 * that never says so leaves the peer waiting for the stream's end. */
static bool finished(np_xfer *x) {
  uint8_t b[1];
  bool fin = false;
  assert_int_equal(np_xfer_output(x, b, 0, &fin), 0);
  return fin;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- transfers ---------------------------------------------------------------- */

static void one_file(void **state) {
  dirs *d = *state;
  char src[256], dst[256];
  make_file(src, sizeof src, d->src, "photo.jpg", 1000 * 1000 + 7, 1, 0640);
  const char *paths[] = {src};
  seen ss = {0}, rs = {0};
  np_xfer *s = sender_for(paths, 1, &ss);
  np_xfer *r = receiver_for(d->dst, false, true, &rs);
  pump(s, r, &(pump_opts){.seed = 1});
  assert_int_equal(np_xfer_get_state(s), NP_XFER_DONE);
  assert_int_equal(np_xfer_get_state(r), NP_XFER_DONE);
  assert_int_equal(np_xfer_file_at(s, 0)->status, NP_XFER_FILE_OK);
  assert_int_equal(np_xfer_file_at(r, 0)->status, NP_XFER_FILE_OK);
  assert_int_equal(np_xfer_file_at(r, 0)->offset, 0);
  assert_true(finished(s));
  assert_true(finished(r));
  snprintf(dst, sizeof dst, "%s/photo.jpg", d->dst);
  assert_true(same_content(src, dst));
  struct stat st;
  assert_int_equal(stat(dst, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0640);
  /* Nothing but the file is left: no .part, no sidecar. */
  assert_int_equal(dir_entries(d->dst), 1);
  assert_int_equal(rs.offers, 1);
  assert_int_equal(rs.starts, 1);
  assert_int_equal(rs.ends, 1);
  assert_int_equal(ss.ends, 1);
  assert_true(rs.progress_events >= 16); /* 1 MB in 64 KiB frames */
  np_xfer_free(s);
  np_xfer_free(r);
}

static void several_files(void **state) {
  dirs *d = *state;
  static const struct {
    const char *name;
    size_t size;
  } spec[] = {{"empty", 0},
              {"one", 1},
              {"frame", NP_XFER_MAX_DATA},
              {"frame+1", NP_XFER_MAX_DATA + 1},
              {"notes with spaces.txt", 200 * 1000},
              {"日本語.bin", 4321}};
  enum { N = sizeof spec / sizeof *spec };
  char src[N][256];
  const char *paths[N];
  for (size_t i = 0; i < N; i++) {
    make_file(src[i], sizeof src[i], d->src, spec[i].name, spec[i].size, (uint32_t)i + 10, 0644);
    paths[i] = src[i];
  }
  seen ss = {0}, rs = {0};
  np_xfer *s = sender_for(paths, N, &ss);
  np_xfer *r = receiver_for(d->dst, false, true, &rs);
  /* Small random chunks split every frame header somewhere. */
  pump(s, r, &(pump_opts){.max_chunk = 700, .seed = 2});
  assert_int_equal(np_xfer_get_state(s), NP_XFER_DONE);
  assert_int_equal(np_xfer_get_state(r), NP_XFER_DONE);
  assert_int_equal(np_xfer_count(r), N);
  for (size_t i = 0; i < N; i++) {
    char dst[256];
    snprintf(dst, sizeof dst, "%s/%s", d->dst, spec[i].name);
    assert_true(same_content(src[i], dst));
    assert_int_equal(np_xfer_file_at(s, i)->status, NP_XFER_FILE_OK);
    assert_string_equal(np_xfer_file_at(r, i)->name, spec[i].name);
    assert_int_equal(np_xfer_file_at(r, i)->size, spec[i].size);
  }
  assert_int_equal(dir_entries(d->dst), N);
  assert_int_equal(ss.ends, N);
  np_xfer_free(s);
  np_xfer_free(r);
}

static void fifty_mb_random_chunks(void **state) {
  dirs *d = *state;
  char src[256], dst[256];
  make_file(src, sizeof src, d->src, "big.bin", 50u * 1000 * 1000, 3, 0600);
  const char *paths[] = {src};
  seen ss = {0}, rs = {0};
  double t0 = now_s();
  np_xfer *s = sender_for(paths, 1, &ss); /* includes hashing the source */
  np_xfer *r = receiver_for(d->dst, false, true, &rs);
  uint64_t moved = pump(s, r, &(pump_opts){.max_chunk = 100 * 1000, .seed = 3});
  double t1 = now_s();
  assert_int_equal(np_xfer_get_state(s), NP_XFER_DONE);
  assert_int_equal(np_xfer_get_state(r), NP_XFER_DONE);
  assert_true(moved > 50u * 1000 * 1000);
  snprintf(dst, sizeof dst, "%s/big.bin", d->dst);
  assert_true(same_content(src, dst));
  print_message(
      "50 MB in random chunks of 1..100000 bytes: %.2f s (%.0f MB/s), %llu stream bytes\n", t1 - t0,
      50.0 / (t1 - t0), (unsigned long long)moved);
  np_xfer_free(s);
  np_xfer_free(r);
}

/* Interrupted mid-file (stop feeding, free both), then a new pair resumes
 * from the .part and the result is the whole file, verified. */
static void interrupt_and_resume(void **state) {
  dirs *d = *state;
  char src[256], dst[256];
  make_file(src, sizeof src, d->src, "movie.mkv", 8u * 1000 * 1000, 4, 0644);
  const char *paths[] = {src};
  seen ss = {0}, rs = {0};
  np_xfer *s = sender_for(paths, 1, &ss);
  np_xfer *r = receiver_for(d->dst, false, true, &rs);
  pump(s, r, &(pump_opts){.max_chunk = 30000, .stop_after = 3u * 1000 * 1000, .seed = 4});
  assert_int_equal(np_xfer_get_state(r), NP_XFER_RUNNING);
  uint64_t had = np_xfer_file_at(r, 0)->done;
  assert_true(had > 2u * 1000 * 1000 && had < 3u * 1000 * 1000);
  /* The session goes away: the file in flight ends FAILED with the reason
   * given, no ABORT is queued, the .part stays. */
  int ends = rs.ends;
  np_xfer_interrupt(r, "the peer vanished");
  assert_int_equal(np_xfer_get_state(r), NP_XFER_FAILED);
  assert_int_equal(np_xfer_file_at(r, 0)->status, NP_XFER_FILE_FAILED);
  assert_int_equal(rs.ends, ends + 1);
  const char *why = NULL;
  assert_int_equal(np_xfer_error(r, &why), NP_ERR_CANCELLED);
  assert_string_equal(why, "the peer vanished");
  bool fin = false;
  uint8_t junk[64];
  assert_int_equal(np_xfer_output(r, junk, sizeof junk, &fin), 0);
  assert_true(fin);
  np_xfer_interrupt(r, "again"); /* once only */
  assert_int_equal(rs.ends, ends + 1);
  np_xfer_free(s);
  np_xfer_free(r);
  assert_false(exists_in(d->dst, "movie.mkv"));
  assert_int_equal(size_of(d->dst, ".movie.mkv.natpunch-part"), (off_t)had);
  assert_true(exists_in(d->dst, ".movie.mkv.natpunch-meta"));

  /* The second run reports "resumed" in its JSON events. */
  char *log = NULL;
  size_t loglen = 0;
  FILE *mem = open_memstream(&log, &loglen);
  assert_non_null(mem);
  seen ss2 = {0}, rs2 = {.progress = np_progress_new(mem, NP_PROGRESS_JSON)};
  s = sender_for(paths, 1, &ss2);
  r = receiver_for(d->dst, false, true, &rs2);
  uint64_t moved = pump(s, r, &(pump_opts){.max_chunk = 50000, .seed = 5});
  assert_int_equal(np_xfer_get_state(s), NP_XFER_DONE);
  assert_int_equal(np_xfer_get_state(r), NP_XFER_DONE);
  assert_int_equal(np_xfer_file_at(r, 0)->offset, had);
  assert_int_equal(np_xfer_file_at(s, 0)->offset, had);
  assert_true(had > 0);
  assert_int_equal(np_xfer_file_at(s, 0)->status, NP_XFER_FILE_OK);
  /* Only the rest crossed the stream the second time. */
  assert_true(moved < 8u * 1000 * 1000 - had + 10000);
  snprintf(dst, sizeof dst, "%s/movie.mkv", d->dst);
  assert_true(same_content(src, dst));
  assert_int_equal(dir_entries(d->dst), 1);
  np_progress_free(rs2.progress);
  fclose(mem);
  assert_non_null(strstr(log, "\"status\":\"resumed\""));
  free(log);
  np_xfer_free(s);
  np_xfer_free(r);
}

/* A resumed prefix is part of the checksum: a .part whose kept bytes were
 * altered (same size and sidecar) ends in a mismatch, not a bad file. */
static void resumed_prefix_is_verified(void **state) {
  dirs *d = *state;
  char src[256];
  make_file(src, sizeof src, d->src, "doc.pdf", 500 * 1000, 6, 0644);
  const char *paths[] = {src};
  seen ss = {0}, rs = {0};
  np_xfer *s = sender_for(paths, 1, &ss);
  np_xfer *r = receiver_for(d->dst, false, true, &rs);
  pump(s, r, &(pump_opts){.max_chunk = 10000, .stop_after = 200 * 1000, .seed = 6});
  np_xfer_free(s);
  np_xfer_free(r);
  char part[256];
  snprintf(part, sizeof part, "%s/.doc.pdf.natpunch-part", d->dst);
  int fd = open(part, O_RDWR);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, "X", 1, 1000), 1);
  close(fd);
  s = sender_for(paths, 1, &ss);
  r = receiver_for(d->dst, false, true, &rs);
  pump(s, r, &(pump_opts){.seed = 7});
  assert_true(np_xfer_file_at(r, 0)->offset > 0);
  assert_int_equal(np_xfer_file_at(r, 0)->status, NP_XFER_FILE_MISMATCH);
  assert_int_equal(np_xfer_file_at(s, 0)->status, NP_XFER_FILE_MISMATCH);
  assert_int_equal(dir_entries(d->dst), 0);
  np_xfer_free(s);
  np_xfer_free(r);
}

/* A .part left by another file of the same name (other size or hash) is
 * started over, not continued. */
static void foreign_part_not_resumed(void **state) {
  dirs *d = *state;
  char src[256], junk[256], dst[256];
  make_file(src, sizeof src, d->src, "data.csv", 300 * 1000, 8, 0644);
  make_file(junk, sizeof junk, d->dst, ".data.csv.natpunch-part", 100 * 1000, 9, 0600);
  /* A sidecar of a file of another size... */
  FILE *m = fopen(strcat(strcpy(dst, d->dst), "/.data.csv.natpunch-meta"), "w");
  assert_non_null(m);
  fprintf(m, "natpunch-part 1 400000 %064d\n", 0);
  fclose(m);
  const char *paths[] = {src};
  seen ss = {0}, rs = {0};
  np_xfer *s = sender_for(paths, 1, &ss);
  np_xfer *r = receiver_for(d->dst, false, true, &rs);
  pump(s, r, &(pump_opts){.seed = 8});
  assert_int_equal(np_xfer_file_at(r, 0)->offset, 0);
  assert_int_equal(np_xfer_file_at(r, 0)->status, NP_XFER_FILE_OK);
  snprintf(dst, sizeof dst, "%s/data.csv", d->dst);
  assert_true(same_content(src, dst));
  assert_int_equal(dir_entries(d->dst), 1);
  np_xfer_free(s);
  np_xfer_free(r);

  /* ... and one of the same size but another hash. */
  assert_int_equal(unlink(dst), 0);
  make_file(junk, sizeof junk, d->dst, ".data.csv.natpunch-part", 100 * 1000, 9, 0600);
  snprintf(dst, sizeof dst, "%s/.data.csv.natpunch-meta", d->dst);
  m = fopen(dst, "w");
  assert_non_null(m);
  fprintf(m, "natpunch-part 1 300000 %064d\n", 0);
  fclose(m);
  s = sender_for(paths, 1, &ss);
  r = receiver_for(d->dst, false, true, &rs);
  pump(s, r, &(pump_opts){.seed = 9});
  assert_int_equal(np_xfer_file_at(r, 0)->offset, 0);
  assert_int_equal(np_xfer_file_at(r, 0)->status, NP_XFER_FILE_OK);
  snprintf(dst, sizeof dst, "%s/data.csv", d->dst);
  assert_true(same_content(src, dst));
  np_xfer_free(s);
  np_xfer_free(r);
}

static void overwrite_needs_force(void **state) {
  dirs *d = *state;
  char src[256], old[256];
  make_file(src, sizeof src, d->src, "report.txt", 5000, 10, 0644);
  make_file(old, sizeof old, d->dst, "report.txt", 77, 11, 0644);
  const char *paths[] = {src};
  seen ss = {0}, rs = {0};
  np_xfer *s = sender_for(paths, 1, &ss);
  np_xfer *r = receiver_for(d->dst, false, true, &rs);
  pump(s, r, &(pump_opts){.seed = 10});
  assert_int_equal(np_xfer_get_state(s), NP_XFER_DONE);
  assert_int_equal(np_xfer_get_state(r), NP_XFER_DONE);
  assert_int_equal(np_xfer_file_at(s, 0)->status, NP_XFER_FILE_REFUSED);
  assert_int_equal(np_xfer_file_at(s, 0)->refusal, NP_XFER_REFUSE_EXISTS);
  /* Both half-close: a sender whose only file was refused once never did. */
  assert_true(finished(s));
  assert_true(finished(r));
  assert_int_equal(size_of(d->dst, "report.txt"), 77);
  assert_int_equal(dir_entries(d->dst), 1);
  np_xfer_free(s);
  np_xfer_free(r);

  s = sender_for(paths, 1, &ss);
  r = receiver_for(d->dst, true, true, &rs);
  pump(s, r, &(pump_opts){.seed = 11});
  assert_int_equal(np_xfer_file_at(s, 0)->status, NP_XFER_FILE_OK);
  assert_true(same_content(src, old));
  assert_int_equal(dir_entries(d->dst), 1);
  np_xfer_free(s);
  np_xfer_free(r);
}

/* The receiver asks first: nothing moves until the caller decides. */
static void offer_waits_for_decision(void **state) {
  dirs *d = *state;
  char a[256], b[256];
  make_file(a, sizeof a, d->src, "a.txt", 10, 12, 0644);
  make_file(b, sizeof b, d->src, "b.txt", 20, 13, 0644);
  const char *paths[] = {a, b};
  seen ss = {0}, rs = {0};
  np_xfer *s = sender_for(paths, 2, &ss);
  np_xfer *r = receiver_for(d->dst, false, false, &rs);
  pump(s, r, &(pump_opts){.seed = 12});
  assert_int_equal(np_xfer_get_state(r), NP_XFER_OFFERED);
  assert_int_equal(rs.offers, 1);
  assert_int_equal(np_xfer_count(r), 2);
  assert_string_equal(np_xfer_file_at(r, 0)->name, "a.txt");
  assert_int_equal(np_xfer_file_at(r, 1)->size, 20);
  assert_int_equal(np_xfer_get_state(s), NP_XFER_RUNNING);
  assert_int_equal(dir_entries(d->dst), 0);
  /* What the user is shown before deciding. */
  char *shown = NULL;
  size_t shown_len = 0;
  FILE *mem = open_memstream(&shown, &shown_len);
  assert_non_null(mem);
  np_progress *p = np_progress_new(mem, NP_PROGRESS_PLAIN);
  np_progress_offer(p, "PEERID", r);
  np_progress_free(p);
  p = np_progress_new(mem, NP_PROGRESS_JSON);
  np_progress_offer(p, "PEERID", r);
  np_progress_free(p);
  fclose(mem);
  const char *json = strstr(shown, "{\"event\":\"offer\"");
  assert_non_null(json);
  assert_memory_equal(shown, "PEERID offers 2 files, 30 B:\n  a.txt (10 B)\n  b.txt (20 B)\n",
                      json - shown);
  cJSON *j = cJSON_Parse(json);
  assert_non_null(j);
  assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "from")), "PEERID");
  cJSON *files = cJSON_GetObjectItem(j, "files");
  assert_int_equal(cJSON_GetArraySize(files), 2);
  assert_string_equal(
      cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(files, 1), "name")), "b.txt");
  assert_int_equal(
      strlen(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(files, 0), "sha256"))),
      64);
  cJSON_Delete(j);
  free(shown);
  assert_int_equal(np_xfer_refuse(r), 0);
  assert_int_equal(np_xfer_refuse(r), NP_ERR_INVAL); /* only once */
  pump(s, r, &(pump_opts){.seed = 12});
  assert_int_equal(np_xfer_get_state(s), NP_XFER_DONE);
  assert_int_equal(np_xfer_get_state(r), NP_XFER_DONE);
  for (size_t i = 0; i < 2; i++) {
    assert_int_equal(np_xfer_file_at(s, i)->status, NP_XFER_FILE_REFUSED);
    assert_int_equal(np_xfer_file_at(s, i)->refusal, NP_XFER_REFUSE_DECLINED);
  }
  assert_true(finished(s));
  assert_true(finished(r));
  assert_int_equal(dir_entries(d->dst), 0);
  np_xfer_free(s);
  np_xfer_free(r);

  /* Accepting after the offer. */
  s = sender_for(paths, 2, &ss);
  r = receiver_for(d->dst, false, false, &rs);
  pump(s, r, &(pump_opts){.seed = 13});
  assert_int_equal(np_xfer_accept_all(r), 0);
  pump(s, r, &(pump_opts){.seed = 13});
  assert_int_equal(np_xfer_get_state(s), NP_XFER_DONE);
  assert_int_equal(dir_entries(d->dst), 2);
  np_xfer_free(s);
  np_xfer_free(r);
}

/* ---- hostile input ------------------------------------------------------------ */

static size_t frame(uint8_t *out, uint8_t type, const void *body, size_t len) {
  out[0] = type;
  out[1] = (uint8_t)(len >> 24);
  out[2] = (uint8_t)(len >> 16);
  out[3] = (uint8_t)(len >> 8);
  out[4] = (uint8_t)len;
  memcpy(out + 5, body, len);
  return 5 + len;
}

static size_t hello(uint8_t *out, uint16_t count, uint64_t total) {
  uint8_t b[15] = {'N', 'P', 'X', 'F', NP_XFER_VERSION, (uint8_t)(count >> 8), (uint8_t)count};
  for (int i = 0; i < 8; i++)
    b[7 + i] = (uint8_t)(total >> (56 - 8 * i));
  return frame(out, NP_XFER_HELLO, b, sizeof b);
}

static size_t file_frame(uint8_t *out, uint16_t index, uint64_t size, const void *name,
                         size_t nlen) {
  uint8_t b[46 + 300] = {(uint8_t)(index >> 8), (uint8_t)index};
  for (int i = 0; i < 8; i++)
    b[2 + i] = (uint8_t)(size >> (56 - 8 * i));
  b[12] = 0x01;
  b[13] = 0xa4; /* 0644 */
  memcpy(b + 46, name, nlen);
  return frame(out, NP_XFER_FILE, b, 46 + nlen);
}

static void hostile_names(void **state) {
  dirs *d = *state;
  static const struct {
    const char *name;
    size_t len;
  } bad[] = {
      {"../evil", 7},
      {"a/b", 3},
      {".hidden", 7},
      {"x\0y", 3},
      {"\x01"
       "ctl",
       4},
      {"..", 2},
      {"a..b", 4},
      {"tab\there", 8},
      {"del\x7f", 4},
      {"/etc/passwd", 11},
      {"x?y", 3} /* valid, though "x\0y" is shown so */,
      {"ok.txt", 6} /* duplicated below */,
  };
  enum { NB = sizeof bad / sizeof *bad };
  static uint8_t in[NB * 400 + 2000];
  char longname[NP_XFER_MAX_NAME + 2];
  memset(longname, 'n', sizeof longname);
  size_t n = hello(in, NB + 2, 0);
  for (size_t i = 0; i < NB; i++)
    n += file_frame(in + n, (uint16_t)i, 0, bad[i].name, bad[i].len);
  /* A duplicate of "ok.txt" and a name over NAME_MAX (which cannot even be
   * framed: the FILE frame is then too long, a protocol error). */
  n += file_frame(in + n, NB, 0, "ok.txt", 6);
  /* Valid at 250 bytes, its .part gets a hashed stem to stay in NAME_MAX. */
  n += file_frame(in + n, NB + 1, 0, longname, 250);
  seen rs = {0};
  np_xfer *r = receiver_for(d->dst, false, true, &rs);
  assert_int_equal(np_xfer_input(r, in, n), 0);
  assert_int_equal(np_xfer_count(r), NB + 2);
  /* Every name is printable as received. */
  assert_string_equal(np_xfer_file_at(r, 3)->name, "x?y");
  uint8_t out[4096];
  bool fin = false;
  size_t m = np_xfer_output(r, out, sizeof out, &fin);
  /* The replies: REFUSE(bad name) for all but ok.txt (first) and the long one. */
  size_t pos = 0, i = 0;
  while (pos < m) {
    uint8_t type = out[pos];
    size_t len = ((size_t)out[pos + 3] << 8) | out[pos + 4];
    const uint8_t *b = out + pos + 5;
    assert_int_equal((b[0] << 8) | b[1], i);
    if (i == NB - 2 || i == NB - 1 || i == NB + 1) {
      assert_int_equal(type, NP_XFER_ACCEPT);
    } else {
      assert_int_equal(type, NP_XFER_REFUSE);
      assert_int_equal(len, 3);
      assert_int_equal(b[2], NP_XFER_REFUSE_BAD_NAME);
    }
    pos += 5 + len;
    i++;
  }
  assert_int_equal(i, NB + 2);
  assert_false(fin);
  /* The three accepted (empty) files complete with END. */
  uint8_t end[16];
  uint8_t idx[2] = {0, NB - 2};
  n = frame(end, NP_XFER_END, idx, 2);
  assert_int_equal(np_xfer_input(r, end, n), 0);
  idx[1] = NB - 1;
  n = frame(end, NP_XFER_END, idx, 2);
  assert_int_equal(np_xfer_input(r, end, n), 0);
  idx[1] = NB + 1;
  n = frame(end, NP_XFER_END, idx, 2);
  assert_int_equal(np_xfer_input(r, end, n), 0);
  /* The second file announced a hash of zeros: an empty file's SHA-256 is not. */
  assert_int_equal(np_xfer_get_state(r), NP_XFER_DONE);
  assert_int_equal(np_xfer_file_at(r, NB - 1)->status, NP_XFER_FILE_MISMATCH);
  assert_int_equal(dir_entries(d->dst), 0);
  np_xfer_free(r);

  /* A 256-byte name makes the FILE frame itself invalid. */
  r = receiver_for(d->dst, false, true, &rs);
  n = hello(in, 1, 0);
  n += file_frame(in + n, 0, 0, longname, NP_XFER_MAX_NAME + 1);
  assert_int_equal(np_xfer_input(r, in, n), NP_ERR_PROTO);
  np_xfer_free(r);

  /* The sender side refuses such names before anything is sent. */
  char p[256];
  make_file(p, sizeof p, d->src, ".secret", 1, 14, 0600);
  const char *paths[] = {p};
  np_xfer_send_config c = {.paths = paths, .count = 1};
  np_xfer *s = NULL;
  char err[256];
  assert_int_equal(np_xfer_sender_new(&c, &s, err, sizeof err), NP_ERR_INVAL);
  assert_null(s);
  assert_non_null(strstr(err, ".secret"));
  const char *dirpath[] = {d->src};
  c.paths = dirpath;
  assert_int_equal(np_xfer_sender_new(&c, &s, err, sizeof err), NP_ERR_INVAL);
  assert_true(np_xfer_name_ok((const uint8_t *)"a.b-c_d e", 9));
  assert_false(np_xfer_name_ok((const uint8_t *)"", 0));
}

static void corrupted_byte_gives_mismatch(void **state) {
  dirs *d = *state;
  char src[256];
  make_file(src, sizeof src, d->src, "a.bin", 300 * 1000, 15, 0644);
  const char *paths[] = {src};
  seen ss = {0}, rs = {0};
  np_xfer *s = sender_for(paths, 1, &ss);
  np_xfer *r = receiver_for(d->dst, false, true, &rs);
  /* The offer is HELLO (20) + FILE (5 + 46 + 5); byte 200000 is file data. */
  pump(s, r, &(pump_opts){.max_chunk = 9000, .corrupt_at = 200000, .seed = 15});
  assert_int_equal(np_xfer_get_state(s), NP_XFER_DONE);
  assert_int_equal(np_xfer_get_state(r), NP_XFER_DONE);
  assert_int_equal(np_xfer_file_at(r, 0)->status, NP_XFER_FILE_MISMATCH);
  assert_int_equal(np_xfer_file_at(s, 0)->status, NP_XFER_FILE_MISMATCH);
  assert_int_equal(dir_entries(d->dst), 0); /* no file, no .part to resume from */
  np_xfer_free(s);
  np_xfer_free(r);
}

static void expect_abort(np_xfer *x, const char *words) {
  const char *msg;
  assert_int_equal(np_xfer_get_state(x), NP_XFER_FAILED);
  assert_int_equal(np_xfer_error(x, &msg), NP_ERR_PROTO);
  if (!strstr(msg, words))
    print_error("message \"%s\" lacks \"%s\"\n", msg, words);
  assert_non_null(strstr(msg, words));
  uint8_t out[512];
  bool fin = false;
  size_t n = np_xfer_output(x, out, sizeof out, &fin);
  assert_true(fin);
  /* The last frame written is the ABORT that tells the peer why. */
  assert_true(n >= 6);
  size_t pos = 0, last = 0;
  while (pos + 5 <= n) {
    last = pos;
    pos += 5 + (((size_t)out[pos + 3] << 8) | out[pos + 4]);
  }
  assert_int_equal(pos, n);
  assert_int_equal(out[last], NP_XFER_ABORT);
  assert_int_equal(out[last + 5], NP_XFER_ABORT_PROTO);
}

static void garbage_and_truncation(void **state) {
  dirs *d = *state;
  seen rs = {0};
  np_xfer *r = receiver_for(d->dst, false, true, &rs);
  const char *http = "GET / HTTP/1.1\r\n\r\n";
  assert_int_equal(np_xfer_input(r, (const uint8_t *)http, strlen(http)), NP_ERR_PROTO);
  expect_abort(r, "unknown type 71");
  /* Later input is ignored, with the same error. */
  assert_int_equal(np_xfer_input(r, (const uint8_t *)"x", 1), NP_ERR_PROTO);
  np_xfer_free(r);

  uint8_t in[600];
  r = receiver_for(d->dst, false, true, &rs);
  size_t n = hello(in, 1, 10);
  assert_int_equal(np_xfer_input(r, in, n - 3), 0);
  assert_int_equal(np_xfer_input_eof(r), NP_ERR_PROTO);
  expect_abort(r, "middle of a frame");
  np_xfer_free(r);

  r = receiver_for(d->dst, false, true, &rs);
  n = hello(in, 1, 10);
  assert_int_equal(np_xfer_input(r, in, n), 0);
  assert_int_equal(np_xfer_input_eof(r), NP_ERR_PROTO);
  expect_abort(r, "before the transfer was complete");
  np_xfer_free(r);

  /* A length over the maximum is refused from the header alone. */
  r = receiver_for(d->dst, false, true, &rs);
  uint8_t big[5] = {NP_XFER_DATA, 0x7f, 0xff, 0xff, 0xff};
  assert_int_equal(np_xfer_input(r, big, 5), NP_ERR_PROTO);
  expect_abort(r, "at most 65536");
  np_xfer_free(r);

  /* HELLO and FILE totals that disagree; DATA past a file's size. */
  r = receiver_for(d->dst, false, true, &rs);
  n = hello(in, 1, 10);
  n += file_frame(in + n, 0, 11, "f", 1);
  assert_int_equal(np_xfer_input(r, in, n), NP_ERR_PROTO);
  expect_abort(r, "announced 10 bytes");
  np_xfer_free(r);
  r = receiver_for(d->dst, false, true, &rs);
  n = hello(in, 1, 4);
  n += file_frame(in + n, 0, 4, "f", 1);
  n += frame(in + n, NP_XFER_DATA, "12345", 5);
  assert_int_equal(np_xfer_input(r, in, n), NP_ERR_PROTO);
  expect_abort(r, "5 bytes of DATA");
  np_xfer_free(r);
  /* The interrupted .part stays (for a resume); nothing else was written. */
  assert_int_equal(dir_entries(d->dst), 2);

  /* A sender fed garbage replies. */
  char src[256];
  make_file(src, sizeof src, d->src, "s.bin", 100, 16, 0644);
  const char *paths[] = {src};
  seen ss = {0};
  np_xfer *s = sender_for(paths, 1, &ss);
  uint8_t rep[10] = {0, 1}; /* ACCEPT for file 1, not 0 */
  n = frame(in, NP_XFER_ACCEPT, rep, 10);
  assert_int_equal(np_xfer_input(s, in, n), NP_ERR_PROTO);
  assert_int_equal(np_xfer_get_state(s), NP_XFER_FAILED);
  np_xfer_free(s);
  s = sender_for(paths, 1, &ss);
  uint8_t off[10] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 101}; /* resume past the end */
  n = frame(in, NP_XFER_ACCEPT, off, 10);
  assert_int_equal(np_xfer_input(s, in, n), NP_ERR_PROTO);
  const char *msg;
  np_xfer_error(s, &msg);
  assert_non_null(strstr(msg, "past its 100 bytes"));
  np_xfer_free(s);
  /* The peer's ABORT text is reported. */
  s = sender_for(paths, 1, &ss);
  n = frame(in, NP_XFER_ABORT, "\x03user pressed ^C", 16);
  assert_int_equal(np_xfer_input(s, in, n), NP_ERR_CANCELLED);
  np_xfer_error(s, &msg);
  assert_string_equal(msg, "the peer aborted: user pressed ^C");
  np_xfer_free(s);
}

/* More than the disk can take is refused up front (NO_SPACE), by size. */
static void no_space_refused(void **state) {
  dirs *d = *state;
  uint8_t in[400];
  size_t n = hello(in, 1, 1ull << 60);
  n += file_frame(in + n, 0, 1ull << 60, "huge.iso", 8);
  seen rs = {0};
  np_xfer *r = receiver_for(d->dst, false, true, &rs);
  assert_int_equal(np_xfer_input(r, in, n), 0);
  assert_int_equal(np_xfer_get_state(r), NP_XFER_DONE);
  assert_int_equal(np_xfer_file_at(r, 0)->refusal, NP_XFER_REFUSE_NO_SPACE);
  uint8_t out[64];
  bool fin = false;
  assert_int_equal(np_xfer_output(r, out, sizeof out, &fin), 8);
  assert_true(fin);
  assert_int_equal(out[0], NP_XFER_REFUSE);
  assert_int_equal(out[7], NP_XFER_REFUSE_NO_SPACE);
  assert_int_equal(dir_entries(d->dst), 0);
  np_xfer_free(r);
}

/* The user stops the receiver mid-file: the sender learns why, the .part
 * stays for a resume. A source that shrinks while sent fails the sender. */
static void cancel_and_shrink(void **state) {
  dirs *d = *state;
  char src[256];
  make_file(src, sizeof src, d->src, "log.txt", 1000 * 1000, 17, 0644);
  const char *paths[] = {src};
  seen ss = {0}, rs = {0};
  np_xfer *s = sender_for(paths, 1, &ss);
  np_xfer *r = receiver_for(d->dst, false, true, &rs);
  pump(s, r, &(pump_opts){.stop_after = 300 * 1000, .seed = 17});
  np_xfer_cancel(r);
  assert_int_equal(np_xfer_get_state(r), NP_XFER_FAILED);
  assert_int_equal(np_xfer_file_at(r, 0)->status, NP_XFER_FILE_FAILED);
  pump(s, r, &(pump_opts){.seed = 17});
  const char *msg;
  assert_int_equal(np_xfer_error(s, &msg), NP_ERR_CANCELLED);
  assert_string_equal(msg, "the peer aborted: cancelled");
  assert_int_equal(np_xfer_file_at(s, 0)->status, NP_XFER_FILE_FAILED);
  assert_true(size_of(d->dst, ".log.txt.natpunch-part") > 0);
  np_xfer_free(s);
  np_xfer_free(r);

  s = sender_for(paths, 1, &ss);
  r = receiver_for(d->dst, false, true, &rs);
  assert_int_equal(truncate(src, 500 * 1000), 0);
  pump(s, r, &(pump_opts){.seed = 18});
  assert_int_equal(np_xfer_error(s, &msg), NP_ERR_SYS);
  assert_non_null(strstr(msg, "shrank"));
  assert_int_equal(np_xfer_get_state(r), NP_XFER_FAILED);
  assert_false(exists_in(d->dst, "log.txt"));
  np_xfer_free(s);
  np_xfer_free(r);
}

/* ---- progress ----------------------------------------------------------------- */

static char *run_progress(np_progress_mode mode, size_t *len) {
  char *buf = NULL;
  FILE *f = open_memstream(&buf, len);
  assert_non_null(f);
  np_progress *p = np_progress_new(f, mode);
  assert_non_null(p);
  /* 10 MB at 1 MB/s, a chunk every 1 ms. */
  const uint64_t total = 10u * 1000 * 1000;
  np_progress_start(p, "film.mkv", total, 0, 0);
  for (int64_t t = 1; t <= 10000; t++) {
    np_progress_update(p, (uint64_t)t * 1000, t);
    if (t == 5000) {
      assert_true(np_progress_rate(p) > 0.95e6 && np_progress_rate(p) < 1.05e6);
      int64_t eta = np_progress_eta_ms(p);
      assert_true(eta > 4800 && eta < 5200);
    }
  }
  uint8_t sha[NP_XFER_SHA256_LEN] = {0xab};
  np_progress_end(p, "film.mkv", total, sha, "ok", NULL, 10000);
  np_progress_start(p, "we\"ird\\", 5, 0, 10000);
  np_progress_end(p, "we\"ird\\", 5, NULL, "refused", "exists", 10000);
  np_progress_free(p);
  fclose(f);
  return buf;
}

static size_t count_of(const char *s, const char *what) {
  size_t n = 0;
  for (const char *p = strstr(s, what); p; p = strstr(p + 1, what))
    n++;
  return n;
}

static void progress_tty(void **state) {
  (void)state;
  size_t len;
  char *out = run_progress(NP_PROGRESS_TTY, &len);
  /* 10 s at most 10 redraws a second, plus the start and the two ends. */
  size_t redraws = count_of(out, "\r");
  assert_true(redraws >= 95 && redraws <= 105);
  assert_non_null(strstr(out, " 50% [############............] 4.8 MiB / 9.5 MiB"));
  assert_non_null(strstr(out, "ETA 0:05"));
  assert_non_null(strstr(out, "976.6 KiB/s"));
  assert_non_null(strstr(out, "\r\033[Kfilm.mkv: ok, 9.5 MiB in 0:10 (976.6 KiB/s), sha256 ab00"));
  assert_int_equal(count_of(out, "\n"), 2);
  free(out);
}

static void progress_plain(void **state) {
  (void)state;
  size_t len;
  char *out = run_progress(NP_PROGRESS_PLAIN, &len);
  assert_int_equal(count_of(out, "\r"), 0);
  assert_int_equal(count_of(out, "\033"), 0);
  /* Start, 10 % .. 90 %, end; then the second file's start and end. */
  assert_int_equal(count_of(out, "\n"), 1 + 9 + 1 + 2);
  assert_non_null(strstr(out, "film.mkv: 9.5 MiB, starting\n"));
  assert_non_null(strstr(out, "film.mkv: 30% (2.9 MiB of 9.5 MiB, 976.6 KiB/s)\n"));
  assert_null(strstr(out, "100%"));
  assert_non_null(strstr(out, "we\"ird\\: refused, 5 B: exists\n"));
  free(out);
}

static void progress_json(void **state) {
  (void)state;
  size_t len;
  char *out = run_progress(NP_PROGRESS_JSON, &len);
  size_t lines = 0, progress = 0, files = 0;
  for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
    lines++;
    cJSON *j = cJSON_Parse(line);
    if (!j)
      print_error("not JSON: %s\n", line);
    assert_non_null(j);
    const char *ev = cJSON_GetStringValue(cJSON_GetObjectItem(j, "event"));
    assert_non_null(ev);
    if (strcmp(ev, "progress") == 0) {
      progress++;
      assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "bytes")));
      assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "total")));
      assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "rate")));
      assert_non_null(cJSON_GetStringValue(cJSON_GetObjectItem(j, "file")));
    } else {
      assert_string_equal(ev, "file");
      files++;
      const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(j, "name"));
      const char *status = cJSON_GetStringValue(cJSON_GetObjectItem(j, "status"));
      if (files == 1) {
        assert_string_equal(name, "film.mkv");
        assert_string_equal(status, "ok");
        assert_int_equal(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "size")), 10000000);
        assert_int_equal(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "offset")), 0);
        assert_int_equal(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "elapsed_ms")), 10000);
        const char *sha = cJSON_GetStringValue(cJSON_GetObjectItem(j, "sha256"));
        assert_non_null(sha);
        assert_int_equal(strlen(sha), 64);
      } else {
        assert_string_equal(name, "we\"ird\\");
        assert_string_equal(status, "refused");
        assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "sha256")));
      }
    }
    cJSON_Delete(j);
  }
  /* One progress line a second over 10 s, plus one at each start. */
  assert_true(progress >= 10 && progress <= 13);
  assert_int_equal(files, 2);
  assert_int_equal(lines, progress + files);
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(one_file, setup, teardown),
      cmocka_unit_test_setup_teardown(several_files, setup, teardown),
      cmocka_unit_test_setup_teardown(fifty_mb_random_chunks, setup, teardown),
      cmocka_unit_test_setup_teardown(interrupt_and_resume, setup, teardown),
      cmocka_unit_test_setup_teardown(resumed_prefix_is_verified, setup, teardown),
      cmocka_unit_test_setup_teardown(foreign_part_not_resumed, setup, teardown),
      cmocka_unit_test_setup_teardown(overwrite_needs_force, setup, teardown),
      cmocka_unit_test_setup_teardown(offer_waits_for_decision, setup, teardown),
      cmocka_unit_test_setup_teardown(hostile_names, setup, teardown),
      cmocka_unit_test_setup_teardown(corrupted_byte_gives_mismatch, setup, teardown),
      cmocka_unit_test_setup_teardown(garbage_and_truncation, setup, teardown),
      cmocka_unit_test_setup_teardown(no_space_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(cancel_and_shrink, setup, teardown),
      cmocka_unit_test(progress_tty),
      cmocka_unit_test(progress_plain),
      cmocka_unit_test(progress_json),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
