/*
 * libFuzzer harness for the send/receive protocol (cli/transfer.c).
 *
 * Input: byte 0 picks the side and the receiver's decision, byte 1 seeds
 * the chunk sizes, the rest is what the peer sends. As a receiver (writing
 * into a scratch directory) or as a sender of a fixed small file, the
 * machine is fed the bytes in chunks of varying size, its output drained
 * after each; then the stream ends. Checked: no crash or sanitizer report;
 * every error leaves the machine FAILED with the same code; its output is a
 * well-formed sequence of frames of its own side's types with exact
 * lengths, ending with ABORT when it failed; nothing is created outside the
 * receiver's directory, and inside only valid names or the hidden
 * .natpunch-part/-meta files; a file reported OK exists.
 */
#include "fuzz_check.h"
#include "transfer.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SRC_SIZE 3000

static char sandbox[64];
static char recv_dir[96];
static char src_path[96];

static void clean_dir(const char *dir) {
  DIR *d = opendir(dir);
  CHECK(d != NULL);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    CHECK(unlinkat(dirfd(d), e->d_name, 0) == 0);
  }
  closedir(d);
}

static void remove_sandbox(void) {
  clean_dir(recv_dir);
  rmdir(recv_dir);
  unlink(src_path);
  rmdir(sandbox);
}

/* The scratch tree: SANDBOX/recv (the receiver's DIR) and SANDBOX/src.bin
 * (the sender's file: bytes i*7, so seeds can carry its real hash). */
static void init_once(void) {
  if (sandbox[0])
    return;
  snprintf(sandbox, sizeof sandbox, "/tmp/np_fuzz_transfer.XXXXXX");
  CHECK(mkdtemp(sandbox) != NULL);
  snprintf(recv_dir, sizeof recv_dir, "%s/recv", sandbox);
  snprintf(src_path, sizeof src_path, "%s/src.bin", sandbox);
  CHECK(mkdir(recv_dir, 0700) == 0);
  int fd = open(src_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CHECK(fd >= 0);
  uint8_t buf[SRC_SIZE];
  for (size_t i = 0; i < SRC_SIZE; i++)
    buf[i] = (uint8_t)(i * 7);
  CHECK(write(fd, buf, SRC_SIZE) == SRC_SIZE);
  close(fd);
  atexit(remove_sandbox);
}

static bool ends_with(const char *s, const char *tail) {
  size_t n = strlen(s), m = strlen(tail);
  return n >= m && strcmp(s + n - m, tail) == 0;
}

static void check_tree(np_xfer *r) {
  DIR *d = opendir(sandbox);
  CHECK(d != NULL);
  struct dirent *e;
  size_t n = 0;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    CHECK(strcmp(e->d_name, "recv") == 0 || strcmp(e->d_name, "src.bin") == 0);
    n++;
  }
  closedir(d);
  CHECK(n == 2);
  d = opendir(recv_dir);
  CHECK(d != NULL);
  while ((e = readdir(d)) != NULL) {
    const char *s = e->d_name;
    if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
      continue;
    bool hidden = s[0] == '.' && (ends_with(s, ".natpunch-part") || ends_with(s, ".natpunch-meta"));
    CHECK(hidden || np_xfer_name_ok((const uint8_t *)s, strlen(s)));
  }
  closedir(d);
  if (!r)
    return;
  for (size_t i = 0; i < np_xfer_count(r); i++) {
    const np_xfer_file *f = np_xfer_file_at(r, i);
    if (f->status == NP_XFER_FILE_OK) {
      char p[512];
      struct stat st;
      snprintf(p, sizeof p, "%s/%s", recv_dir, f->name);
      CHECK(stat(p, &st) == 0 && (uint64_t)st.st_size == f->size);
    }
  }
}

/* A frame parser over everything one side wrote. */
typedef struct outcheck {
  uint8_t hdr[NP_XFER_HDR_LEN];
  size_t hdr_len;
  uint64_t body_left;
  uint8_t last_type;
  bool sender;
  size_t frames;
} outcheck;

static void check_frame_start(outcheck *o) {
  uint8_t t = o->hdr[0];
  uint32_t len = ((uint32_t)o->hdr[1] << 24) | ((uint32_t)o->hdr[2] << 16) |
                 ((uint32_t)o->hdr[3] << 8) | o->hdr[4];
  CHECK(len <= NP_XFER_MAX_BODY);
  if (o->sender) {
    CHECK(t == NP_XFER_HELLO || t == NP_XFER_FILE || t == NP_XFER_DATA || t == NP_XFER_END ||
          t == NP_XFER_ABORT);
    if (t == NP_XFER_HELLO)
      CHECK(len == 15 && o->frames == 0);
    if (t == NP_XFER_END)
      CHECK(len == 2);
    if (t == NP_XFER_DATA)
      CHECK(len >= 1 && len <= NP_XFER_MAX_DATA);
  } else {
    CHECK(t == NP_XFER_ACCEPT || t == NP_XFER_REFUSE || t == NP_XFER_VERDICT || t == NP_XFER_ABORT);
    if (t == NP_XFER_ACCEPT)
      CHECK(len == 10);
    if (t == NP_XFER_REFUSE || t == NP_XFER_VERDICT)
      CHECK(len == 3);
  }
  if (t == NP_XFER_ABORT)
    CHECK(len >= 1 && len <= 1 + NP_XFER_MAX_TEXT);
  o->last_type = t;
  o->body_left = len;
  o->frames++;
}

static void check_output(outcheck *o, const uint8_t *p, size_t n) {
  while (n) {
    if (o->hdr_len < NP_XFER_HDR_LEN) {
      o->hdr[o->hdr_len++] = *p++;
      n--;
      if (o->hdr_len == NP_XFER_HDR_LEN)
        check_frame_start(o);
      if (o->hdr_len == NP_XFER_HDR_LEN && o->body_left == 0)
        o->hdr_len = 0;
      continue;
    }
    size_t take = n < o->body_left ? n : (size_t)o->body_left;
    p += take;
    n -= take;
    o->body_left -= take;
    if (o->body_left == 0)
      o->hdr_len = 0;
  }
}

static void drain(np_xfer *x, outcheck *o, bool *fin) {
  uint8_t buf[8192];
  for (int i = 0; i < 1000; i++) {
    size_t n = np_xfer_output(x, buf, sizeof buf, fin);
    check_output(o, buf, n);
    if (n == 0)
      return;
  }
}

/* The receiver's decision, taken from inside the OFFER event as a CLI
 * with --accept-from would (the sender sends no data before the answer, so
 * deciding between chunks would be too late for inputs that go on). */
typedef struct decider {
  np_xfer *x;
  int decision; /* 0 auto_accept, 1 accept, 2 refuse, 3 never decide */
} decider;

static void on_offer(void *user, const np_xfer_event *ev) {
  decider *d = user;
  if (ev->kind != NP_XFER_EV_OFFER)
    return;
  CHECK(np_xfer_get_state(d->x) == NP_XFER_OFFERED && np_xfer_count(d->x) > 0);
  if (d->decision == 1)
    CHECK(np_xfer_accept_all(d->x) == 0);
  else if (d->decision == 2)
    CHECK(np_xfer_refuse(d->x) == 0);
}

static void feed(np_xfer *x, outcheck *o, const uint8_t *data, size_t size, uint8_t seed) {
  bool fin = false;
  uint32_t rng = seed | 1u;
  drain(x, o, &fin);
  while (size) {
    rng = rng * 1103515245u + 12345u;
    /* A sender is fed byte by byte: a reply may only follow the data it
     * answers, which the drain after each byte lets it write. */
    size_t chunk = o->sender ? 1 : 1 + (rng >> 16) % 97;
    if (chunk > size)
      chunk = size;
    int rc = np_xfer_input(x, data, chunk);
    data += chunk;
    size -= chunk;
    const char *msg;
    if (rc != 0) {
      CHECK(np_xfer_get_state(x) == NP_XFER_FAILED);
      CHECK(np_xfer_error(x, &msg) == rc);
      CHECK(msg[0] != '\0');
    }
    drain(x, o, &fin);
  }
  int rc = np_xfer_input_eof(x);
  CHECK((rc == 0) == (np_xfer_get_state(x) == NP_XFER_DONE));
  drain(x, o, &fin);
  /* A failed side has said its last (an ABORT unless the peer aborted). */
  if (np_xfer_get_state(x) == NP_XFER_FAILED)
    CHECK(fin);
  if (fin)
    CHECK(o->hdr_len == 0 && o->body_left == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  init_once();
  uint8_t mode = data[0], seed = data[1];
  data += 2;
  size -= 2;
  outcheck o = {0};
  if (mode & 1) {
    const char *paths[] = {src_path};
    np_xfer_send_config c = {.paths = paths, .count = 1};
    np_xfer *s = NULL;
    CHECK(np_xfer_sender_new(&c, &s, NULL, 0) == 0);
    o.sender = true;
    feed(s, &o, data, size, seed);
    np_xfer_free(s);
    check_tree(NULL);
  } else {
    decider dec = {.decision = (mode >> 1) & 3};
    np_xfer_recv_config c = {.dir = recv_dir,
                             .force = (mode & 8) != 0,
                             .auto_accept = dec.decision == 0,
                             .on_event = on_offer,
                             .user = &dec};
    np_xfer *r = NULL;
    CHECK(np_xfer_receiver_new(&c, &r, NULL, 0) == 0);
    dec.x = r;
    feed(r, &o, data, size, seed);
    check_tree(r);
    np_xfer_free(r);
    check_tree(NULL);
    clean_dir(recv_dir);
  }
  return 0;
}
