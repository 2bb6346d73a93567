/*
 * Identity: a long-term Ed25519 keypair (libsodium), its text form (the peer
 * ID) and its key file.
 *
 * libsodium initialisation: sodium_init() is the one library-wide
 * initialisation natpunch performs. It is idempotent and thread-safe, so
 * every entry point that needs it (key generation, loading, verification)
 * simply calls it; applications never have to.
 *
 * Key file format (text, so it survives copy and paste and is easy to
 * inspect, and versioned so a later format can be told apart):
 *
 *   natpunch-key-v1\n
 *   <64 hex digits: the 32-byte Ed25519 seed>\n
 *
 * Exactly these two lines (the final newline may be missing, hex digits may
 * be upper or lower case); anything else is NP_ERR_PROTO. The seed, not the
 * 64-byte libsodium secret key, is stored because the latter embeds the
 * public key: a file whose two halves disagree could not exist this way.
 */
#include "natpunch.h"
#include "identity/identity_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_HEADER "natpunch-key-v1"
#define SEED_LEN crypto_sign_SEEDBYTES
#define SEED_HEX_LEN (2 * SEED_LEN)
/* A key file is 16 + 65 bytes; reading a little more than that lets us tell
 * "too long" from "exactly right" without trusting st_size. */
#define KEY_FILE_MAX 128
/* RFC 4648 §6 alphabet, lowercase: peer IDs are shown and typed in
 * lowercase, and parsing accepts either case. */
static const char b32_alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";

struct np_identity {
  uint8_t pk[crypto_sign_PUBLICKEYBYTES];
  uint8_t sk[crypto_sign_SECRETKEYBYTES]; /* seed || public key */
};

_Static_assert(crypto_sign_PUBLICKEYBYTES == NP_PUBKEY_LEN, "Ed25519 public key size");
_Static_assert(crypto_sign_BYTES == NP_SIGNATURE_LEN, "Ed25519 signature size");
_Static_assert((NP_PUBKEY_LEN * 8 + 4) / 5 == NP_PEER_ID_LEN, "base32 length of a key");

static int sodium_ready(void) {
  /* 0 first time, 1 when already done, -1 on failure. */
  return sodium_init() < 0 ? NP_ERR_SYS : 0;
}

static np_identity *identity_alloc(void) {
  return calloc(1, sizeof(np_identity));
}

NP_EXPORT void np_identity_free(np_identity *id) {
  if (!id)
    return;
  sodium_memzero(id, sizeof *id);
  free(id);
}

static int identity_from_seed(const uint8_t seed[SEED_LEN], np_identity **out) {
  np_identity *id = identity_alloc();
  if (!id)
    return NP_ERR_NOMEM;
  if (crypto_sign_seed_keypair(id->pk, id->sk, seed) != 0) {
    np_identity_free(id);
    return NP_ERR_SYS;
  }
  *out = id;
  return 0;
}

NP_EXPORT int np_identity_generate(np_identity **out) {
  if (!out)
    return NP_ERR_INVAL;
  *out = NULL;
  int rc = sodium_ready();
  if (rc)
    return rc;
  np_identity *id = identity_alloc();
  if (!id)
    return NP_ERR_NOMEM;
  if (crypto_sign_keypair(id->pk, id->sk) != 0) {
    np_identity_free(id);
    return NP_ERR_SYS;
  }
  *out = id;
  return 0;
}

NP_EXPORT void np_identity_public_key(const np_identity *id, uint8_t out[NP_PUBKEY_LEN]) {
  memcpy(out, id->pk, NP_PUBKEY_LEN);
}

NP_EXPORT void np_identity_peer_id(const np_identity *id, char buf[NP_PEER_ID_LEN + 1]) {
  np_peer_id_format(id->pk, buf);
}

NP_EXPORT void np_identity_sign(const np_identity *id, const uint8_t *msg, size_t len,
                                uint8_t sig[NP_SIGNATURE_LEN]) {
  /* Ed25519 signing cannot fail for a valid key; the identity exists only
   * after sodium_init() succeeded in generate/load. */
  crypto_sign_detached(sig, NULL, msg, len, id->sk);
}

NP_EXPORT int np_signature_verify(const uint8_t pubkey[NP_PUBKEY_LEN], const uint8_t *msg,
                                  size_t len, const uint8_t sig[NP_SIGNATURE_LEN]) {
  if (!pubkey || !sig || (!msg && len))
    return NP_ERR_AUTH;
  /* Fail closed: a library that cannot initialise verifies nothing. */
  if (sodium_ready() != 0)
    return NP_ERR_AUTH;
  return crypto_sign_verify_detached(sig, msg, len, pubkey) == 0 ? 0 : NP_ERR_AUTH;
}

/* ------------------------------------------------------------------------ */
/* Peer IDs: RFC 4648 base32, lowercase, no padding                          */
/* ------------------------------------------------------------------------ */

NP_EXPORT void np_peer_id_format(const uint8_t pubkey[NP_PUBKEY_LEN],
                                 char buf[NP_PEER_ID_LEN + 1]) {
  uint32_t acc = 0; /* never holds more than 4 + 8 bits */
  int bits = 0;
  size_t o = 0;
  for (size_t i = 0; i < NP_PUBKEY_LEN; i++) {
    acc = (acc << 8) | pubkey[i];
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      buf[o++] = b32_alphabet[(acc >> bits) & 31u];
    }
    acc &= (1u << bits) - 1u;
  }
  /* 256 bits = 51 full groups + 1 bit: the last character carries that bit
   * followed by four zero bits (RFC 4648 §6 pads the final quantum with
   * zeros). */
  if (bits > 0)
    buf[o++] = b32_alphabet[(acc << (5 - bits)) & 31u];
  buf[o] = '\0';
}

static int b32_value(char c) {
  if (c >= 'a' && c <= 'z')
    return c - 'a';
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= '2' && c <= '7')
    return c - '2' + 26;
  return -1;
}

NP_EXPORT int np_peer_id_parse(const char *text, uint8_t pubkey[NP_PUBKEY_LEN]) {
  if (!text || !pubkey)
    return NP_ERR_INVAL;
  if (strnlen(text, NP_PEER_ID_LEN + 1) != NP_PEER_ID_LEN)
    return NP_ERR_INVAL;
  uint8_t key[NP_PUBKEY_LEN];
  uint32_t acc = 0;
  int bits = 0;
  size_t o = 0;
  for (size_t i = 0; i < NP_PEER_ID_LEN; i++) {
    int v = b32_value(text[i]);
    if (v < 0)
      return NP_ERR_INVAL;
    acc = (acc << 5) | (uint32_t)v;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      key[o++] = (uint8_t)(acc >> bits);
      acc &= (1u << bits) - 1u;
    }
  }
  /* Four bits are left over; they must be zero, or two different IDs would
   * name the same key and comparing IDs as text would be wrong. */
  if (o != NP_PUBKEY_LEN || acc != 0)
    return NP_ERR_INVAL;
  memcpy(pubkey, key, NP_PUBKEY_LEN);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Key files                                                                 */
/* ------------------------------------------------------------------------ */

NP_EXPORT int np_identity_default_path(char *buf, size_t size) {
  if (!buf)
    return NP_ERR_INVAL;
  /* XDG Base Directory spec: "If an implementation encounters a relative
   * path in any of these variables it should consider the path invalid and
   * ignore it." */
  const char *xdg = getenv("XDG_CONFIG_HOME");
  const char *home = getenv("HOME");
  int n;
  if (xdg && xdg[0] == '/')
    n = snprintf(buf, size, "%s/natpunch/key", xdg);
  else if (home && home[0] != '\0')
    n = snprintf(buf, size, "%s/.config/natpunch/key", home);
  else
    return NP_ERR_INVAL;
  if (n < 0)
    return NP_ERR_SYS;
  if ((size_t)n >= size)
    return NP_ERR_NOSPACE;
  return 0;
}

/* Creates every missing directory above path (not path itself) with mode
 * 0700: they will hold a secret, and existing directories are left as the
 * user made them. */
static int make_parents(const char *path) {
  char dir[PATH_MAX];
  size_t len = strlen(path);
  if (len >= sizeof dir) {
    errno = ENAMETOOLONG;
    return NP_ERR_SYS;
  }
  memcpy(dir, path, len + 1);
  for (size_t i = 1; i < len; i++) {
    if (dir[i] != '/')
      continue;
    dir[i] = '\0';
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
      return NP_ERR_SYS;
    dir[i] = '/';
  }
  return 0;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* fsync the directory holding path, so the rename itself survives a crash. */
static void sync_parent(const char *path) {
  char dir[PATH_MAX];
  const char *slash = strrchr(path, '/');
  if (!slash) {
    dir[0] = '.';
    dir[1] = '\0';
  } else {
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    if (n >= sizeof dir)
      return;
    memcpy(dir, path, n);
    dir[n] = '\0';
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)fsync(fd);
    close(fd);
  }
}

NP_EXPORT int np_identity_save(const np_identity *id, const char *path, bool overwrite) {
  if (!id || !path || !path[0])
    return NP_ERR_INVAL;
  if (!overwrite && access(path, F_OK) == 0) {
    errno = EEXIST;
    return NP_ERR_INVAL;
  }
  int rc = make_parents(path);
  if (rc)
    return rc;

  char tmp[PATH_MAX];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp) {
    errno = ENAMETOOLONG;
    return NP_ERR_SYS;
  }
  /* mkstemp creates the file 0600 with O_EXCL, so no other user can open it
   * between creation and the write; fchmod guards against an odd umask-less
   * libc. */
  int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0)
    return NP_ERR_SYS;

  /* header, newline, hex seed, newline, NUL */
  char text[sizeof KEY_HEADER + SEED_HEX_LEN + 2];
  char hex[SEED_HEX_LEN + 1];
  sodium_bin2hex(hex, sizeof hex, id->sk, SEED_LEN);
  int n = snprintf(text, sizeof text, "%s\n%s\n", KEY_HEADER, hex);
  sodium_memzero(hex, sizeof hex);

  int saved_errno = 0;
  if (fchmod(fd, 0600) != 0 || write_all(fd, text, (size_t)n) != 0 || fsync(fd) != 0)
    saved_errno = errno;
  sodium_memzero(text, sizeof text);
  if (close(fd) != 0 && !saved_errno)
    saved_errno = errno;
  if (saved_errno)
    goto fail;

  if (overwrite) {
    if (rename(tmp, path) != 0) {
      saved_errno = errno;
      goto fail;
    }
  } else {
    /* link() fails with EEXIST instead of replacing: the no-overwrite check
     * above could have raced with another process creating the file. */
    if (link(tmp, path) != 0) {
      saved_errno = errno;
      goto fail;
    }
    unlink(tmp);
  }
  sync_parent(path);
  return 0;

fail:
  unlink(tmp);
  errno = saved_errno;
  return saved_errno == EEXIST ? NP_ERR_INVAL : NP_ERR_SYS;
}

/* Parses the key file text (see the top of this file) into a seed. */
static int parse_key_text(const char *text, size_t len, uint8_t seed[SEED_LEN]) {
  const size_t hlen = sizeof KEY_HEADER - 1;
  if (len < hlen + 1 || memcmp(text, KEY_HEADER, hlen) != 0 || text[hlen] != '\n')
    return NP_ERR_PROTO;
  const char *hex = text + hlen + 1;
  size_t rest = len - hlen - 1;
  if (rest == SEED_HEX_LEN + 1 && hex[SEED_HEX_LEN] == '\n')
    rest--;
  if (rest != SEED_HEX_LEN)
    return NP_ERR_PROTO;
  size_t bin_len = 0;
  const char *end = NULL;
  /* No ignore set: spaces or other junk inside the seed are malformed. */
  if (sodium_hex2bin(seed, SEED_LEN, hex, SEED_HEX_LEN, NULL, &bin_len, &end) != 0 ||
      bin_len != SEED_LEN || end != hex + SEED_HEX_LEN)
    return NP_ERR_PROTO;
  return 0;
}

NP_EXPORT int np_identity_load(const char *path, np_identity **out) {
  if (!out)
    return NP_ERR_INVAL;
  *out = NULL;
  if (!path)
    return NP_ERR_INVAL;
  int rc = sodium_ready();
  if (rc)
    return rc;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return NP_ERR_SYS;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return NP_ERR_SYS;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return NP_ERR_PROTO;
  }
  /* Like ssh: any access for group or others means the key may have leaked
   * (or may be replaced by someone else), so refuse rather than use it. */
  if (st.st_mode & 077) {
    close(fd);
    return NP_ERR_AUTH;
  }
  char text[KEY_FILE_MAX];
  size_t len = 0;
  for (;;) {
    ssize_t r = read(fd, text + len, sizeof text - len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      int e = errno;
      sodium_memzero(text, sizeof text);
      close(fd);
      errno = e;
      return NP_ERR_SYS;
    }
    if (r == 0)
      break;
    len += (size_t)r;
    if (len == sizeof text)
      break;
  }
  close(fd);
  uint8_t seed[SEED_LEN];
  rc = len < sizeof text ? parse_key_text(text, len, seed) : NP_ERR_PROTO;
  sodium_memzero(text, sizeof text);
  if (rc == 0)
    rc = identity_from_seed(seed, out);
  sodium_memzero(seed, sizeof seed);
  return rc;
}

NP_EXPORT int np_identity_load_or_create(const char *path, np_identity **out, bool *created) {
  if (!out)
    return NP_ERR_INVAL;
  *out = NULL;
  if (created)
    *created = false;
  char def[PATH_MAX];
  if (!path) {
    int rc = np_identity_default_path(def, sizeof def);
    if (rc)
      return rc;
    path = def;
  }
  int rc = np_identity_load(path, out);
  if (rc != NP_ERR_SYS || errno != ENOENT)
    return rc;
  np_identity *id = NULL;
  rc = np_identity_generate(&id);
  if (rc)
    return rc;
  rc = np_identity_save(id, path, false);
  if (rc == NP_ERR_INVAL && errno == EEXIST) {
    /* Another process created it first: use theirs, so both agree. */
    np_identity_free(id);
    return np_identity_load(path, out);
  }
  if (rc) {
    np_identity_free(id);
    return rc;
  }
  *out = id;
  if (created)
    *created = true;
  return 0;
}

/* Declared in identity_internal.h; not exported (no NP_EXPORT). */
void np__identity_secret(const np_identity *id, uint8_t seed[32]) {
  _Static_assert(SEED_LEN == 32, "Ed25519 seed size");
  memcpy(seed, id->sk, SEED_LEN);
}
