/* The send/receive file-transfer protocol as a sans-IO state machine: the
 * wire format and the grammar are described in transfer.h. */
#include "transfer.h"

#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* The output queue holds whole frames; the largest it needs is the
 * sender's offer (HELLO + NP_XFER_MAX_FILES FILE frames, ~320 KB). */
#define OUT_MAX (1u << 20)
/* Bytes read at a time when hashing a file (sender) or a resumed prefix. */
#define HASH_CHUNK (1u << 16)
/* A stem longer than this would make ".stem.natpunch-part" exceed NAME_MAX;
 * such names get a hashed stem instead. */
#define PART_STEM_MAX (NP_XFER_MAX_NAME - 15)
#define PART_NAME_MAX (NP_XFER_MAX_NAME + 1)

typedef struct xfile {
  np_xfer_file pub;
  int fd;                   /* sender: the source; receiver: the .part while ACTIVE */
  bool answered;            /* sender: ACCEPT/REFUSE seen */
  bool started;             /* START reported */
  bool hashing;             /* receiver: h is live */
  gnutls_hash_hd_t h;       /* receiver: SHA-256 of the .part so far */
  char part[PART_NAME_MAX]; /* receiver: the .part and sidecar names */
  char meta[PART_NAME_MAX];
} xfile;

struct np_xfer {
  bool sender;
  np_xfer_state state;
  int err;
  char errmsg[256];
  np_xfer_event_cb on_event;
  void *user;

  /* receiver */
  int dirfd;
  bool force, auto_accept;
  bool got_hello;
  size_t seen;    /* FILE frames received */
  uint64_t total; /* HELLO's total */
  size_t rcur;    /* the file whose DATA comes next */

  xfile *files;
  size_t count;

  /* sender */
  size_t next_reply; /* index of the ACCEPT/REFUSE awaited next */
  size_t scur;       /* the file being sent */
  uint64_t spos;     /* its next byte */

  /* one frame being assembled from input */
  uint8_t in[NP_XFER_HDR_LEN + NP_XFER_MAX_BODY];
  size_t in_len;

  /* whole frames waiting to be handed out by np_xfer_output */
  uint8_t *out;
  size_t out_len, out_off, out_cap;
  bool out_done; /* nothing will be queued any more */
};

/* ---- small helpers -------------------------------------------------------- */

static void wr16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static void wr32(uint8_t *p, uint32_t v) {
  wr16(p, (uint16_t)(v >> 16));
  wr16(p + 2, (uint16_t)v);
}
static void wr64(uint8_t *p, uint64_t v) {
  wr32(p, (uint32_t)(v >> 32));
  wr32(p + 4, (uint32_t)v);
}
static uint16_t rd16(const uint8_t *p) {
  return (uint16_t)((p[0] << 8) | p[1]);
}
static uint32_t rd32(const uint8_t *p) {
  return ((uint32_t)rd16(p) << 16) | rd16(p + 2);
}
static uint64_t rd64(const uint8_t *p) {
  return ((uint64_t)rd32(p) << 32) | rd32(p + 4);
}

static void set_err(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *buf, size_t len, const char *fmt, ...) {
  if (!buf || !len)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, len, fmt, ap);
  va_end(ap);
}

void np_xfer_hex(const uint8_t sha256[NP_XFER_SHA256_LEN], char out[2 * NP_XFER_SHA256_LEN + 1]) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < NP_XFER_SHA256_LEN; i++) {
    out[2 * i] = digits[sha256[i] >> 4];
    out[2 * i + 1] = digits[sha256[i] & 15];
  }
  out[2 * NP_XFER_SHA256_LEN] = '\0';
}

bool np_xfer_name_ok(const uint8_t *name, size_t len) {
  if (len == 0 || len > NP_XFER_MAX_NAME || name[0] == '.')
    return false;
  for (size_t i = 0; i < len; i++) {
    if (name[i] == '/' || name[i] < 0x20 || name[i] == 0x7f)
      return false;
    if (name[i] == '.' && i + 1 < len && name[i + 1] == '.')
      return false;
  }
  return true;
}

const char *np_xfer_refusal_str(np_xfer_refusal r) {
  switch (r) {
  case NP_XFER_REFUSE_NONE:
    return "not refused";
  case NP_XFER_REFUSE_EXISTS:
    return "the file exists at the receiver (it can use --force)";
  case NP_XFER_REFUSE_DECLINED:
    return "declined by the receiver";
  case NP_XFER_REFUSE_BAD_NAME:
    return "the name is not acceptable as a file name";
  case NP_XFER_REFUSE_NO_SPACE:
    return "not enough free space at the receiver";
  case NP_XFER_REFUSE_IO:
    return "the receiver could not create the file";
  }
  return "unknown reason";
}

static void emit(np_xfer *x, np_xfer_event_kind kind, size_t i) {
  if (!x->on_event)
    return;
  np_xfer_event ev = {.kind = kind, .index = i, .file = i < x->count ? &x->files[i].pub : NULL};
  if (kind == NP_XFER_EV_END && ev.file && ev.file->status == NP_XFER_FILE_FAILED)
    ev.reason = x->state == NP_XFER_FAILED ? x->errmsg
                : x->sender ? "the receiver could not write the file"
                            : "writing the file failed";
  x->on_event(x->user, &ev);
}

static bool terminal(np_xfer_file_status s) {
  return s == NP_XFER_FILE_OK || s == NP_XFER_FILE_REFUSED || s == NP_XFER_FILE_MISMATCH ||
         s == NP_XFER_FILE_FAILED;
}

/* Makes room for len more bytes at the end of the output queue (emptied
 * queues restart at the front); false past OUT_MAX or out of memory. */
static bool reserve(np_xfer *x, size_t len) {
  if (x->out_off == x->out_len)
    x->out_off = x->out_len = 0;
  size_t need = x->out_len + len;
  if (need > OUT_MAX)
    return false;
  if (need > x->out_cap) {
    size_t cap = x->out_cap ? x->out_cap : 4096;
    while (cap < need)
      cap *= 2;
    uint8_t *p = realloc(x->out, cap);
    if (!p)
      return false;
    x->out = p;
    x->out_cap = cap;
  }
  return true;
}

/* Appends one frame to the output queue; false when it would pass OUT_MAX,
 * which the callers' sizes rule out, or memory ran out. */
static bool queue_frame(np_xfer *x, uint8_t type, const uint8_t *body, size_t len) {
  if (x->out_done || !reserve(x, NP_XFER_HDR_LEN + len))
    return false;
  uint8_t *p = x->out + x->out_len;
  p[0] = type;
  wr32(p + 1, (uint32_t)len);
  if (len)
    memcpy(p + NP_XFER_HDR_LEN, body, len);
  x->out_len += NP_XFER_HDR_LEN + len;
  return true;
}

static void close_file(xfile *f) {
  if (f->fd >= 0)
    close(f->fd);
  f->fd = -1;
  if (f->hashing)
    gnutls_hash_deinit(f->h, NULL);
  f->hashing = false;
}

/* The one way into FAILED: records why, tells the peer with an ABORT (unless
 * the peer's ABORT is the reason), and marks the file in flight FAILED. A
 * receiver's .part stays on disk for a resume. */
static int fail(np_xfer *x, int err, int abort_code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(np_xfer *x, int err, int abort_code, const char *fmt, ...) {
  if (x->state == NP_XFER_FAILED)
    return x->err;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(x->errmsg, sizeof x->errmsg, fmt, ap);
  va_end(ap);
  x->err = err;
  x->state = NP_XFER_FAILED;
  if (abort_code) {
    uint8_t body[1 + NP_XFER_MAX_TEXT];
    size_t n = strlen(x->errmsg);
    if (n > NP_XFER_MAX_TEXT)
      n = NP_XFER_MAX_TEXT;
    body[0] = (uint8_t)abort_code;
    memcpy(body + 1, x->errmsg, n);
    queue_frame(x, NP_XFER_ABORT, body, 1 + n);
  }
  x->out_done = true;
  for (size_t i = 0; i < x->count; i++) {
    xfile *f = &x->files[i];
    if (f->pub.status == NP_XFER_FILE_ACTIVE || f->pub.status == NP_XFER_FILE_SENT) {
      f->pub.status = NP_XFER_FILE_FAILED;
      emit(x, NP_XFER_EV_END, i);
    }
    if (!x->sender)
      close_file(f);
  }
  return err;
}

static void check_done(np_xfer *x) {
  if (x->state != NP_XFER_RUNNING)
    return;
  for (size_t i = 0; i < x->count; i++)
    if (!terminal(x->files[i].pub.status))
      return;
  x->state = NP_XFER_DONE;
  /* Every file resolved: the sender's END frames were all queued before
   * their verdicts, and a refused file has nothing to send, so neither side
   * has more to say. (A sender whose files were all refused never reaches
   * sender_pump's end, and without this never half-closed.) */
  x->out_done = true;
}

/* Copies a received name into a printable, NUL-terminated form. */
static void show_name(char *dst, const uint8_t *name, size_t len) {
  for (size_t i = 0; i < len; i++)
    dst[i] = (name[i] < 0x20 || name[i] == 0x7f) ? '?' : (char)name[i];
  dst[len] = '\0';
}

/* ---- creation ------------------------------------------------------------- */

static np_xfer *xfer_alloc(void) {
  np_xfer *x = calloc(1, sizeof *x);
  if (x)
    x->dirfd = -1;
  return x;
}

void np_xfer_free(np_xfer *x) {
  if (!x)
    return;
  for (size_t i = 0; i < x->count; i++)
    close_file(&x->files[i]);
  free(x->files);
  if (x->dirfd >= 0)
    close(x->dirfd);
  free(x->out);
  free(x);
}

/* SHA-256 of fd's bytes [0, len) into out; 0 or -1 (errno set; EIO when
 * the file is shorter than len). */
static int hash_prefix(int fd, uint64_t len, gnutls_hash_hd_t h) {
  uint8_t *buf = malloc(HASH_CHUNK);
  if (!buf) {
    errno = ENOMEM;
    return -1;
  }
  uint64_t pos = 0;
  while (pos < len) {
    size_t want = len - pos < HASH_CHUNK ? (size_t)(len - pos) : HASH_CHUNK;
    ssize_t n = pread(fd, buf, want, (off_t)pos);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      if (n == 0)
        errno = EIO;
      free(buf);
      return -1;
    }
    gnutls_hash(h, buf, (size_t)n);
    pos += (uint64_t)n;
  }
  free(buf);
  return 0;
}

int np_xfer_sender_new(const np_xfer_send_config *cfg, np_xfer **out, char *errbuf, size_t errlen) {
  *out = NULL;
  if (!cfg || cfg->count == 0 || cfg->count > NP_XFER_MAX_FILES || !cfg->paths) {
    set_err(errbuf, errlen, "give 1 to %d files", NP_XFER_MAX_FILES);
    return NP_ERR_INVAL;
  }
  np_xfer *x = xfer_alloc();
  if (!x)
    return NP_ERR_NOMEM;
  x->sender = true;
  x->on_event = cfg->on_event;
  x->user = cfg->user;
  x->files = calloc(cfg->count, sizeof *x->files);
  if (!x->files) {
    free(x);
    return NP_ERR_NOMEM;
  }
  int rc = 0;
  uint64_t total = 0;
  for (size_t i = 0; i < cfg->count; i++) {
    xfile *f = &x->files[i];
    f->fd = -1;
    x->count = i + 1;
    const char *path = cfg->paths[i];
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    size_t nlen = strlen(name);
    if (!np_xfer_name_ok((const uint8_t *)name, nlen)) {
      set_err(errbuf, errlen,
              "%s: the name \"%s\" cannot be sent (empty, over %d bytes, a leading dot, \"..\" or "
              "control characters)",
              path, name, NP_XFER_MAX_NAME);
      rc = NP_ERR_INVAL;
      goto fail;
    }
    for (size_t j = 0; j < i; j++)
      if (strcmp(x->files[j].pub.name, name) == 0) {
        set_err(errbuf, errlen, "%s: another file is also named \"%s\"", path, name);
        rc = NP_ERR_INVAL;
        goto fail;
      }
    memcpy(f->pub.name, name, nlen + 1);
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (f->fd < 0 || fstat(f->fd, &st) != 0) {
      set_err(errbuf, errlen, "%s: %s", path, strerror(errno));
      rc = NP_ERR_SYS;
      goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
      set_err(errbuf, errlen, "%s: not a regular file", path);
      rc = NP_ERR_INVAL;
      goto fail;
    }
    f->pub.size = (uint64_t)st.st_size;
    f->pub.mode = st.st_mode & 0777;
    total += f->pub.size;
    gnutls_hash_hd_t h;
    if (gnutls_hash_init(&h, GNUTLS_DIG_SHA256) < 0) {
      rc = NP_ERR_NOMEM;
      goto fail;
    }
    int hr = hash_prefix(f->fd, f->pub.size, h);
    int e = errno;
    gnutls_hash_deinit(h, f->pub.sha256);
    if (hr != 0) {
      set_err(errbuf, errlen, "%s: reading it failed: %s", path, strerror(e));
      rc = NP_ERR_SYS;
      goto fail;
    }
  }
  uint8_t hello[15];
  memcpy(hello, "NPXF", 4);
  hello[4] = NP_XFER_VERSION;
  wr16(hello + 5, (uint16_t)x->count);
  wr64(hello + 7, total);
  if (!queue_frame(x, NP_XFER_HELLO, hello, sizeof hello)) {
    rc = NP_ERR_NOMEM;
    goto fail;
  }
  for (size_t i = 0; i < x->count; i++) {
    const np_xfer_file *p = &x->files[i].pub;
    uint8_t body[46 + NP_XFER_MAX_NAME];
    size_t nlen = strlen(p->name);
    wr16(body, (uint16_t)i);
    wr64(body + 2, p->size);
    wr32(body + 10, p->mode);
    memcpy(body + 14, p->sha256, NP_XFER_SHA256_LEN);
    memcpy(body + 46, p->name, nlen);
    if (!queue_frame(x, NP_XFER_FILE, body, 46 + nlen)) {
      rc = NP_ERR_NOMEM;
      goto fail;
    }
  }
  *out = x;
  return 0;
fail:
  np_xfer_free(x);
  return rc;
}

int np_xfer_receiver_new(const np_xfer_recv_config *cfg, np_xfer **out, char *errbuf,
                         size_t errlen) {
  *out = NULL;
  if (!cfg || !cfg->dir) {
    set_err(errbuf, errlen, "no directory given");
    return NP_ERR_INVAL;
  }
  np_xfer *x = xfer_alloc();
  if (!x)
    return NP_ERR_NOMEM;
  x->dirfd = open(cfg->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (x->dirfd < 0) {
    set_err(errbuf, errlen, "%s: %s", cfg->dir,
            errno == ENOTDIR ? "not a directory" : strerror(errno));
    np_xfer_free(x);
    return NP_ERR_INVAL;
  }
  x->force = cfg->force;
  x->auto_accept = cfg->auto_accept;
  x->on_event = cfg->on_event;
  x->user = cfg->user;
  *out = x;
  return 0;
}

/* ---- receiver ------------------------------------------------------------- */

/* The .part and sidecar names of a file: ".NAME.natpunch-part" and
 * ".NAME.natpunch-meta", or with a hashed stem when NAME is too long for
 * that to fit in NAME_MAX. Both are hidden, so np_xfer_name_ok never lets
 * a sender name one of them directly. */
static void part_names(xfile *f) {
  const char *stem = f->pub.name;
  char hashed[2 * NP_XFER_SHA256_LEN + 1];
  if (strlen(stem) > PART_STEM_MAX) {
    uint8_t d[NP_XFER_SHA256_LEN];
    gnutls_hash_fast(GNUTLS_DIG_SHA256, stem, strlen(stem), d);
    np_xfer_hex(d, hashed);
    hashed[32] = '\0';
    stem = hashed;
  }
  snprintf(f->part, sizeof f->part, ".%.*s.natpunch-part", PART_STEM_MAX, stem);
  snprintf(f->meta, sizeof f->meta, ".%.*s.natpunch-meta", PART_STEM_MAX, stem);
}

/* The sidecar's whole content: what a .part must be part of to be resumed. */
static int meta_text(const xfile *f, char *buf, size_t len) {
  char hex[2 * NP_XFER_SHA256_LEN + 1];
  np_xfer_hex(f->pub.sha256, hex);
  return snprintf(buf, len, "natpunch-part 1 %llu %s\n", (unsigned long long)f->pub.size, hex);
}

/* Length of a .part that may be resumed (its sidecar records this very
 * size and hash, and it is a regular file no longer than size), else 0. */
static uint64_t resumable(np_xfer *x, const xfile *f) {
  char want[128], got[128];
  int wn = meta_text(f, want, sizeof want);
  int fd = openat(x->dirfd, f->meta, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return 0;
  ssize_t n = read(fd, got, sizeof got);
  close(fd);
  if (n != wn || memcmp(want, got, (size_t)wn) != 0)
    return 0;
  struct stat st;
  if (fstatat(x->dirfd, f->part, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
      (uint64_t)st.st_size > f->pub.size)
    return 0;
  return (uint64_t)st.st_size;
}

static bool write_all(int fd, const void *buf, size_t len, uint64_t off) {
  const uint8_t *p = buf;
  while (len) {
    ssize_t n = pwrite(fd, p, len, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    p += n;
    len -= (size_t)n;
    off += (uint64_t)n;
  }
  return true;
}

/* Opens (or reopens, for a resume) the .part of an accepted file and primes
 * its running hash with the kept prefix. Returns a refusal reason or NONE. */
static np_xfer_refusal open_part(np_xfer *x, xfile *f, uint64_t offset) {
  int flags = O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (offset ? 0 : O_TRUNC);
  f->fd = openat(x->dirfd, f->part, flags, 0600);
  if (f->fd < 0)
    return NP_XFER_REFUSE_IO;
  if (gnutls_hash_init(&f->h, GNUTLS_DIG_SHA256) < 0) {
    close_file(f);
    return NP_XFER_REFUSE_IO;
  }
  f->hashing = true;
  if (offset) {
    if (hash_prefix(f->fd, offset, f->h) != 0) {
      close_file(f);
      return NP_XFER_REFUSE_IO;
    }
    return NP_XFER_REFUSE_NONE;
  }
  char text[128];
  int n = meta_text(f, text, sizeof text);
  int mfd = openat(x->dirfd, f->meta, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  bool ok = mfd >= 0 && write_all(mfd, text, (size_t)n, 0);
  if (mfd >= 0)
    close(mfd);
  if (!ok) {
    close_file(f);
    unlinkat(x->dirfd, f->part, 0);
    unlinkat(x->dirfd, f->meta, 0);
    return NP_XFER_REFUSE_IO;
  }
  return NP_XFER_REFUSE_NONE;
}

/* Decides one file of an accepted offer. need_sum counts the bytes the
 * files accepted before this one still need. */
static np_xfer_refusal decide(np_xfer *x, xfile *f, bool name_ok, uint64_t *need_sum,
                              uint64_t avail) {
  if (!name_ok)
    return NP_XFER_REFUSE_BAD_NAME;
  part_names(f);
  struct stat st;
  if (fstatat(x->dirfd, f->pub.name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (!x->force || S_ISDIR(st.st_mode))
      return NP_XFER_REFUSE_EXISTS;
  } else if (errno != ENOENT) {
    return NP_XFER_REFUSE_IO;
  }
  uint64_t offset = resumable(x, f);
  uint64_t need = f->pub.size - offset;
  if (need > avail || *need_sum > avail - need)
    return NP_XFER_REFUSE_NO_SPACE;
  np_xfer_refusal r = open_part(x, f, offset);
  if (r != NP_XFER_REFUSE_NONE)
    return r;
  *need_sum += need;
  f->pub.offset = f->pub.done = offset;
  return NP_XFER_REFUSE_NONE;
}

static void advance_rcur(np_xfer *x) {
  while (x->rcur < x->count && x->files[x->rcur].pub.status != NP_XFER_FILE_ACTIVE)
    x->rcur++;
}

/* Answers the whole offer in index order: accept_all true accepts what can
 * be taken, false declines everything. */
static int answer_offer(np_xfer *x, bool accept_all) {
  if (x->sender || x->state != NP_XFER_OFFERED)
    return NP_ERR_INVAL;
  x->state = NP_XFER_RUNNING;
  uint64_t avail = UINT64_MAX, need_sum = 0;
  struct statvfs vfs;
  if (fstatvfs(x->dirfd, &vfs) == 0)
    avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
  for (size_t i = 0; i < x->count; i++) {
    xfile *f = &x->files[i];
    /* The receiver marked a bad name REFUSED while reading the offer. */
    bool name_ok = f->pub.refusal != NP_XFER_REFUSE_BAD_NAME;
    np_xfer_refusal r =
        accept_all ? decide(x, f, name_ok, &need_sum, avail) : NP_XFER_REFUSE_DECLINED;
    uint8_t body[10];
    wr16(body, (uint16_t)i);
    bool queued;
    if (r == NP_XFER_REFUSE_NONE) {
      f->pub.status = NP_XFER_FILE_ACTIVE;
      wr64(body + 2, f->pub.offset);
      queued = queue_frame(x, NP_XFER_ACCEPT, body, 10);
    } else {
      f->pub.status = NP_XFER_FILE_REFUSED;
      f->pub.refusal = r;
      body[2] = (uint8_t)r;
      queued = queue_frame(x, NP_XFER_REFUSE, body, 3);
      emit(x, NP_XFER_EV_END, i);
    }
    if (!queued)
      return fail(x, NP_ERR_NOMEM, NP_XFER_ABORT_IO, "out of memory");
  }
  x->rcur = 0;
  advance_rcur(x);
  check_done(x);
  return 0;
}

int np_xfer_accept_all(np_xfer *x) {
  return answer_offer(x, true);
}

int np_xfer_refuse(np_xfer *x) {
  return answer_offer(x, false);
}

static int recv_hello(np_xfer *x, const uint8_t *b, size_t len) {
  if (x->got_hello)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "a second HELLO frame");
  if (len != 15 || memcmp(b, "NPXF", 4) != 0)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO,
                "the first frame is not a natpunch transfer HELLO");
  if (b[4] != NP_XFER_VERSION)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO,
                "the sender speaks transfer version %u, this side %u", b[4], NP_XFER_VERSION);
  uint16_t count = rd16(b + 5);
  if (count == 0 || count > NP_XFER_MAX_FILES)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "HELLO offers %u files (1..%d allowed)",
                count, NP_XFER_MAX_FILES);
  x->files = calloc(count, sizeof *x->files);
  if (!x->files)
    return fail(x, NP_ERR_NOMEM, NP_XFER_ABORT_IO, "out of memory");
  for (size_t i = 0; i < count; i++)
    x->files[i].fd = -1;
  x->count = count;
  x->total = rd64(b + 7);
  x->got_hello = true;
  return 0;
}

static int recv_file(np_xfer *x, const uint8_t *b, size_t len) {
  if (len < 47 || len > 46 + NP_XFER_MAX_NAME)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "a FILE frame of %zu bytes (47..%d allowed)",
                len, 46 + NP_XFER_MAX_NAME);
  uint16_t index = rd16(b);
  if (index != x->seen)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "FILE frame %u where %zu was due", index,
                x->seen);
  xfile *f = &x->files[index];
  f->pub.size = rd64(b + 2);
  f->pub.mode = rd32(b + 10);
  if (f->pub.size > INT64_MAX)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "file %u has a size over 2^63", index);
  if (f->pub.mode > 0777)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "file %u has mode %#o (only 0777 bits)",
                index, (unsigned)f->pub.mode);
  memcpy(f->pub.sha256, b + 14, NP_XFER_SHA256_LEN);
  const uint8_t *name = b + 46;
  size_t nlen = len - 46;
  show_name(f->pub.name, name, nlen);
  bool ok = np_xfer_name_ok(name, nlen);
  /* Only valid names are compared: a bad one is shown with '?' in place of
   * its control bytes, which must not make a later valid name a duplicate. */
  for (size_t j = 0; ok && j < index; j++)
    if (x->files[j].pub.refusal != NP_XFER_REFUSE_BAD_NAME &&
        strcmp(x->files[j].pub.name, f->pub.name) == 0)
      ok = false; /* a duplicate would share the .part */
  if (!ok)
    f->pub.refusal = NP_XFER_REFUSE_BAD_NAME;
  x->seen++;
  if (x->seen < x->count)
    return 0;
  uint64_t sum = 0;
  for (size_t i = 0; i < x->count; i++) {
    if (x->files[i].pub.size > UINT64_MAX - sum)
      return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "the file sizes overflow");
    sum += x->files[i].pub.size;
  }
  if (sum != x->total)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO,
                "HELLO announced %llu bytes, the files add up to %llu",
                (unsigned long long)x->total, (unsigned long long)sum);
  x->state = NP_XFER_OFFERED;
  emit(x, NP_XFER_EV_OFFER, 0);
  if (x->state == NP_XFER_OFFERED && x->auto_accept)
    return np_xfer_accept_all(x);
  return 0;
}

static xfile *current_rfile(np_xfer *x, const char *what) {
  if (x->state != NP_XFER_RUNNING || x->rcur >= x->count) {
    fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "a %s frame when no file was accepted", what);
    return NULL;
  }
  xfile *f = &x->files[x->rcur];
  if (!f->started) {
    f->started = true;
    emit(x, NP_XFER_EV_START, x->rcur);
  }
  return f;
}

static int recv_data(np_xfer *x, const uint8_t *b, size_t len) {
  xfile *f = current_rfile(x, "DATA");
  if (!f)
    return x->err;
  if (len == 0 || len > f->pub.size - f->pub.done)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO,
                "%zu bytes of DATA for \"%s\", which has %llu left", len, f->pub.name,
                (unsigned long long)(f->pub.size - f->pub.done));
  if (!write_all(f->fd, b, len, f->pub.done))
    return fail(x, NP_ERR_SYS, NP_XFER_ABORT_IO, "writing %s: %s", f->part, strerror(errno));
  gnutls_hash(f->h, b, len);
  f->pub.done += len;
  emit(x, NP_XFER_EV_PROGRESS, x->rcur);
  return 0;
}

/* Puts a verified .part in place: permissions, data on disk, then the name
 * (without replacing a file that appeared meanwhile, unless force). */
static bool install(np_xfer *x, xfile *f) {
  if (fchmod(f->fd, f->pub.mode) != 0 || fsync(f->fd) != 0)
    return false;
  close(f->fd);
  f->fd = -1;
  unsigned flags = x->force ? 0 : RENAME_NOREPLACE;
  if (renameat2(x->dirfd, f->part, x->dirfd, f->pub.name, flags) != 0)
    return false;
  unlinkat(x->dirfd, f->meta, 0);
  fsync(x->dirfd);
  return true;
}

static int recv_end(np_xfer *x, const uint8_t *b, size_t len) {
  xfile *f = current_rfile(x, "END");
  if (!f)
    return x->err;
  if (len != 2 || rd16(b) != x->rcur)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "an END frame not for file %zu", x->rcur);
  if (f->pub.done != f->pub.size)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "\"%s\" ended after %llu of its %llu bytes",
                f->pub.name, (unsigned long long)f->pub.done, (unsigned long long)f->pub.size);
  uint8_t digest[NP_XFER_SHA256_LEN];
  gnutls_hash_deinit(f->h, digest);
  f->hashing = false;
  uint8_t verdict;
  if (memcmp(digest, f->pub.sha256, NP_XFER_SHA256_LEN) != 0) {
    /* Bad bytes are not worth resuming from. */
    close_file(f);
    unlinkat(x->dirfd, f->part, 0);
    unlinkat(x->dirfd, f->meta, 0);
    f->pub.status = NP_XFER_FILE_MISMATCH;
    verdict = 1;
  } else if (install(x, f)) {
    f->pub.status = NP_XFER_FILE_OK;
    verdict = 0;
  } else {
    close_file(f);
    f->pub.status = NP_XFER_FILE_FAILED;
    verdict = 2;
  }
  uint8_t body[3];
  wr16(body, (uint16_t)x->rcur);
  body[2] = verdict;
  if (!queue_frame(x, NP_XFER_VERDICT, body, 3))
    return fail(x, NP_ERR_NOMEM, NP_XFER_ABORT_IO, "out of memory");
  emit(x, NP_XFER_EV_END, x->rcur);
  x->rcur++;
  advance_rcur(x);
  check_done(x);
  return 0;
}

/* ---- sender --------------------------------------------------------------- */

static int recv_reply(np_xfer *x, uint8_t type, const uint8_t *b, size_t len) {
  size_t want = type == NP_XFER_ACCEPT ? 10 : 3;
  const char *what = type == NP_XFER_ACCEPT ? "ACCEPT" : "REFUSE";
  if (len != want)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "a %s frame of %zu bytes (%zu expected)",
                what, len, want);
  uint16_t index = rd16(b);
  if (x->next_reply >= x->count || index != x->next_reply)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "%s for file %u where %zu was due", what,
                index, x->next_reply);
  xfile *f = &x->files[index];
  if (type == NP_XFER_ACCEPT) {
    uint64_t off = rd64(b + 2);
    if (off > f->pub.size)
      return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO,
                  "the receiver resumes \"%s\" at %llu, past its %llu bytes", f->pub.name,
                  (unsigned long long)off, (unsigned long long)f->pub.size);
    f->pub.offset = f->pub.done = off;
  } else {
    uint8_t r = b[2];
    if (r < NP_XFER_REFUSE_EXISTS || r > NP_XFER_REFUSE_IO)
      return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "REFUSE with unknown reason %u", r);
    f->pub.status = NP_XFER_FILE_REFUSED;
    f->pub.refusal = (np_xfer_refusal)r;
    emit(x, NP_XFER_EV_END, index);
  }
  f->answered = true;
  x->next_reply++;
  check_done(x);
  return 0;
}

static int recv_verdict(np_xfer *x, const uint8_t *b, size_t len) {
  if (len != 3)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "a VERDICT frame of %zu bytes", len);
  uint16_t index = rd16(b);
  if (index >= x->count || x->files[index].pub.status != NP_XFER_FILE_SENT)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "VERDICT for file %u, which was not sent",
                index);
  if (b[2] > 2)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "VERDICT with unknown status %u", b[2]);
  static const np_xfer_file_status st[] = {NP_XFER_FILE_OK, NP_XFER_FILE_MISMATCH,
                                           NP_XFER_FILE_FAILED};
  x->files[index].pub.status = st[b[2]];
  emit(x, NP_XFER_EV_END, index);
  check_done(x);
  return 0;
}

/* Queues the sender's next frame when the queue is empty: DATA or END of
 * the current file, once its reply allows. */
static void sender_pump(np_xfer *x) {
  while (x->out_off == x->out_len && !x->out_done && x->state == NP_XFER_RUNNING) {
    if (x->scur >= x->count) {
      x->out_done = true;
      return;
    }
    xfile *f = &x->files[x->scur];
    if (!f->answered)
      return;
    if (f->pub.status == NP_XFER_FILE_REFUSED) {
      x->scur++;
      continue;
    }
    if (!f->started) {
      f->started = true;
      f->pub.status = NP_XFER_FILE_ACTIVE;
      x->spos = f->pub.offset;
      emit(x, NP_XFER_EV_START, x->scur);
    }
    if (x->spos < f->pub.size) {
      uint64_t left = f->pub.size - x->spos;
      size_t want = left < NP_XFER_MAX_DATA ? (size_t)left : NP_XFER_MAX_DATA;
      /* Read straight into the queue, behind its header. */
      if (!reserve(x, NP_XFER_HDR_LEN + want)) {
        fail(x, NP_ERR_NOMEM, NP_XFER_ABORT_IO, "out of memory");
        return;
      }
      uint8_t *h = x->out + x->out_len;
      ssize_t n;
      do
        n = pread(f->fd, h + NP_XFER_HDR_LEN, want, (off_t)x->spos);
      while (n < 0 && errno == EINTR);
      if (n <= 0) {
        fail(x, NP_ERR_SYS, NP_XFER_ABORT_IO, "reading \"%s\": %s", f->pub.name,
             n == 0 ? "the file shrank while being sent" : strerror(errno));
        return;
      }
      h[0] = NP_XFER_DATA;
      wr32(h + 1, (uint32_t)n);
      x->out_len += NP_XFER_HDR_LEN + (size_t)n;
      x->spos += (uint64_t)n;
      f->pub.done = x->spos;
      emit(x, NP_XFER_EV_PROGRESS, x->scur);
      return;
    }
    uint8_t body[2];
    wr16(body, (uint16_t)x->scur);
    queue_frame(x, NP_XFER_END, body, 2);
    f->pub.status = NP_XFER_FILE_SENT;
    x->scur++;
  }
}

/* ---- both ----------------------------------------------------------------- */

static int recv_abort(np_xfer *x, const uint8_t *b, size_t len) {
  if (len < 1 || len > 1 + NP_XFER_MAX_TEXT)
    return fail(x, NP_ERR_PROTO, 0, "the peer aborted (with a malformed ABORT frame)");
  char text[NP_XFER_MAX_TEXT + 1];
  show_name(text, b + 1, len - 1);
  int err = b[0] == NP_XFER_ABORT_CANCELLED ? NP_ERR_CANCELLED : NP_ERR_PROTO;
  return fail(x, err, 0, "the peer aborted: %s", len > 1 ? text : "(no reason given)");
}

static int handle_frame(np_xfer *x, uint8_t type, const uint8_t *b, size_t len) {
  if (type == NP_XFER_ABORT)
    return recv_abort(x, b, len);
  if (x->state == NP_XFER_DONE)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "a frame (type %u) after the end", type);
  if (x->sender) {
    switch (type) {
    case NP_XFER_ACCEPT:
    case NP_XFER_REFUSE:
      return recv_reply(x, type, b, len);
    case NP_XFER_VERDICT:
      return recv_verdict(x, b, len);
    default:
      return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO,
                  "the receiver sent a frame of type %u, which only a sender sends", type);
    }
  }
  if (!x->got_hello && type != NP_XFER_HELLO)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "the first frame (type %u) is not HELLO",
                type);
  if (x->state == NP_XFER_OFFERED)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO,
                "the sender sent a frame (type %u) before the offer was answered", type);
  switch (type) {
  case NP_XFER_HELLO:
    return recv_hello(x, b, len);
  case NP_XFER_FILE:
    if (x->seen >= x->count)
      return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "more FILE frames than HELLO announced");
    return recv_file(x, b, len);
  case NP_XFER_DATA:
  case NP_XFER_END:
    if (x->seen < x->count)
      return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO, "file data before the whole offer");
    return type == NP_XFER_DATA ? recv_data(x, b, len) : recv_end(x, b, len);
  default:
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO,
                "the sender sent a frame of type %u, which only a receiver sends", type);
  }
}

int np_xfer_input(np_xfer *x, const uint8_t *buf, size_t len) {
  while (len > 0) {
    if (x->state == NP_XFER_FAILED)
      return x->err;
    size_t need;
    if (x->in_len < NP_XFER_HDR_LEN) {
      need = NP_XFER_HDR_LEN - x->in_len;
    } else {
      need = NP_XFER_HDR_LEN + rd32(x->in + 1) - x->in_len;
    }
    size_t take = len < need ? len : need;
    memcpy(x->in + x->in_len, buf, take);
    x->in_len += take;
    buf += take;
    len -= take;
    if (x->in_len == NP_XFER_HDR_LEN) {
      uint8_t type = x->in[0];
      uint32_t blen = rd32(x->in + 1);
      if (type < NP_XFER_HELLO || type > NP_XFER_ABORT)
        return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO,
                    "a frame of unknown type %u (is the peer a natpunch transfer?)", type);
      if (blen > NP_XFER_MAX_BODY)
        return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO,
                    "a frame of %u bytes (at most %d allowed)", blen, NP_XFER_MAX_BODY);
    }
    if (x->in_len >= NP_XFER_HDR_LEN && x->in_len == NP_XFER_HDR_LEN + rd32(x->in + 1)) {
      x->in_len = 0;
      int rc = handle_frame(x, x->in[0], x->in + NP_XFER_HDR_LEN, rd32(x->in + 1));
      if (rc != 0)
        return rc;
    }
  }
  return x->state == NP_XFER_FAILED ? x->err : 0;
}

int np_xfer_input_eof(np_xfer *x) {
  if (x->state == NP_XFER_FAILED)
    return x->err;
  if (x->state == NP_XFER_DONE && x->in_len == 0)
    return 0;
  if (x->in_len)
    return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO,
                "the peer closed the stream in the middle of a frame");
  return fail(x, NP_ERR_PROTO, NP_XFER_ABORT_PROTO,
              "the peer closed the stream before the transfer was complete");
}

size_t np_xfer_output(np_xfer *x, uint8_t *buf, size_t cap, bool *fin) {
  size_t n = 0;
  while (n < cap) {
    if (x->out_off == x->out_len && x->sender)
      sender_pump(x);
    if (x->out_off == x->out_len)
      break;
    size_t take = x->out_len - x->out_off;
    if (take > cap - n)
      take = cap - n;
    memcpy(buf + n, x->out + x->out_off, take);
    x->out_off += take;
    n += take;
  }
  if (fin)
    *fin = x->out_done && x->out_off == x->out_len;
  return n;
}

void np_xfer_cancel(np_xfer *x) {
  fail(x, NP_ERR_CANCELLED, NP_XFER_ABORT_CANCELLED, "cancelled");
}

void np_xfer_interrupt(np_xfer *x, const char *why) {
  if (x->state == NP_XFER_DONE || x->state == NP_XFER_FAILED)
    return;
  fail(x, NP_ERR_CANCELLED, 0, "%s", why);
}

np_xfer_state np_xfer_get_state(const np_xfer *x) {
  return x->state;
}

int np_xfer_error(const np_xfer *x, const char **msg) {
  if (msg)
    *msg = x->state == NP_XFER_FAILED ? x->errmsg : "";
  return x->state == NP_XFER_FAILED ? x->err : 0;
}

size_t np_xfer_count(const np_xfer *x) {
  return x->sender || x->seen == x->count ? x->count : 0;
}

const np_xfer_file *np_xfer_file_at(const np_xfer *x, size_t i) {
  return i < np_xfer_count(x) ? &x->files[i].pub : NULL;
}
