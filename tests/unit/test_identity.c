/*
 * Identity tests: key generation, key files (format, permissions, no
 * silent overwrite), peer IDs (RFC 4648 base32, one ID per key), signatures
 * and the default key path. Each test works in its own mkdtemp directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "natpunch.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* RFC 8032 §7.1, TEST 1. */
static const char rfc8032_seed_hex[] =
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
static const uint8_t rfc8032_pk[NP_PUBKEY_LEN] = {
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a};
/* Signature of the empty message by that key. */
static const uint8_t rfc8032_sig[NP_SIGNATURE_LEN] = {
    0xe5, 0x56, 0x43, 0x00, 0xc3, 0x60, 0xac, 0x72, 0x90, 0x86, 0xe2, 0xcc, 0x80, 0x6e, 0x82, 0x8a,
    0x84, 0x87, 0x7f, 0x1e, 0xb8, 0xe5, 0xd9, 0x74, 0xd8, 0x73, 0xe0, 0x65, 0x22, 0x49, 0x01, 0x55,
    0x5f, 0xb8, 0x82, 0x15, 0x90, 0xa3, 0x3b, 0xac, 0xc6, 0x1e, 0x39, 0x70, 0x1c, 0xf9, 0xb4, 0x6b,
    0xd2, 0x5b, 0xf5, 0xf0, 0x59, 0x5b, 0xbe, 0x24, 0x65, 0x51, 0x41, 0x43, 0x8e, 0x7a, 0x10, 0x0b};
/* python3: base64.b32encode(pk).decode().rstrip('=').lower() */
static const char rfc8032_peer_id[] = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena";

typedef struct fixture {
  char dir[64];
  char path[128];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (!f)
    return -1;
  snprintf(f->dir, sizeof f->dir, "/tmp/np-test-identity-XXXXXX");
  if (!mkdtemp(f->dir)) {
    free(f);
    return -1;
  }
  snprintf(f->path, sizeof f->path, "%s/sub/dir/key", f->dir);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
  int rc = system(cmd);
  free(f);
  return rc == 0 ? 0 : -1;
}

/* Writes text to path with the given mode (exactly, umask aside). */
static void write_file(const char *path, const char *text, size_t len, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, len), (ssize_t)len);
  assert_int_equal(fchmod(fd, mode), 0);
  close(fd);
}

static void write_text(const char *path, const char *text) {
  write_file(path, text, strlen(text), 0600);
}

static mode_t file_mode(const char *path) {
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  return st.st_mode & 07777;
}

static void test_generate_save_load_round_trip(void **state) {
  fixture *f = *state;
  np_identity *a = NULL, *b = NULL;
  assert_int_equal(np_identity_generate(&a), 0);
  assert_int_equal(np_identity_save(a, f->path, false), 0);
  assert_int_equal(np_identity_load(f->path, &b), 0);
  char ida[NP_PEER_ID_LEN + 1], idb[NP_PEER_ID_LEN + 1];
  np_identity_peer_id(a, ida);
  np_identity_peer_id(b, idb);
  assert_string_equal(ida, idb);
  assert_int_equal(strlen(ida), NP_PEER_ID_LEN);
  /* The loaded key signs like the original (same secret, not only same
   * public half). */
  uint8_t pk[NP_PUBKEY_LEN], sig[NP_SIGNATURE_LEN];
  np_identity_public_key(a, pk);
  np_identity_sign(b, (const uint8_t *)"x", 1, sig);
  assert_int_equal(np_signature_verify(pk, (const uint8_t *)"x", 1, sig), 0);
  np_identity_free(a);
  np_identity_free(b);
  np_identity_free(NULL);
}

static void test_two_keys_differ(void **state) {
  (void)state;
  np_identity *a = NULL, *b = NULL;
  assert_int_equal(np_identity_generate(&a), 0);
  assert_int_equal(np_identity_generate(&b), 0);
  char ida[NP_PEER_ID_LEN + 1], idb[NP_PEER_ID_LEN + 1];
  np_identity_peer_id(a, ida);
  np_identity_peer_id(b, idb);
  assert_string_not_equal(ida, idb);
  np_identity_free(a);
  np_identity_free(b);
}

static void test_saved_file_mode_and_dirs(void **state) {
  fixture *f = *state;
  np_identity *a = NULL;
  assert_int_equal(np_identity_generate(&a), 0);
  /* A permissive umask must not leak into the key or its new dirs. */
  mode_t old = umask(0);
  int rc = np_identity_save(a, f->path, false);
  umask(old);
  assert_int_equal(rc, 0);
  assert_int_equal(file_mode(f->path), 0600);
  char dir[160];
  snprintf(dir, sizeof dir, "%s/sub/dir", f->dir);
  assert_int_equal(file_mode(dir), 0700);
  snprintf(dir, sizeof dir, "%s/sub", f->dir);
  assert_int_equal(file_mode(dir), 0700);
  /* The file is exactly the documented format. */
  FILE *fp = fopen(f->path, "r");
  assert_non_null(fp);
  char line1[64], line2[128];
  assert_non_null(fgets(line1, sizeof line1, fp));
  assert_non_null(fgets(line2, sizeof line2, fp));
  assert_int_equal(fgetc(fp), EOF);
  fclose(fp);
  assert_string_equal(line1, "natpunch-key-v1\n");
  assert_int_equal(strlen(line2), 65);
  assert_int_equal(strspn(line2, "0123456789abcdef"), 64);
  /* No temporary files left next to it. */
  snprintf(dir, sizeof dir, "ls -A '%s/sub/dir' | wc -l | grep -qx 1", f->dir);
  assert_int_equal(system(dir), 0);
  np_identity_free(a);
}

static void test_refuses_overwrite(void **state) {
  fixture *f = *state;
  np_identity *a = NULL, *b = NULL, *c = NULL;
  assert_int_equal(np_identity_generate(&a), 0);
  assert_int_equal(np_identity_generate(&b), 0);
  assert_int_equal(np_identity_save(a, f->path, false), 0);
  errno = 0;
  assert_int_equal(np_identity_save(b, f->path, false), NP_ERR_INVAL);
  assert_int_equal(errno, EEXIST);
  /* Still a's key. */
  char ida[NP_PEER_ID_LEN + 1], idb[NP_PEER_ID_LEN + 1], idc[NP_PEER_ID_LEN + 1];
  np_identity_peer_id(a, ida);
  np_identity_peer_id(b, idb);
  assert_int_equal(np_identity_load(f->path, &c), 0);
  np_identity_peer_id(c, idc);
  assert_string_equal(idc, ida);
  np_identity_free(c);
  /* With overwrite: b's key, still 0600. */
  assert_int_equal(np_identity_save(b, f->path, true), 0);
  assert_int_equal(np_identity_load(f->path, &c), 0);
  np_identity_peer_id(c, idc);
  assert_string_equal(idc, idb);
  assert_int_equal(file_mode(f->path), 0600);
  np_identity_free(a);
  np_identity_free(b);
  np_identity_free(c);
}

static void test_refuses_group_or_other_access(void **state) {
  fixture *f = *state;
  np_identity *a = NULL, *b = NULL;
  assert_int_equal(np_identity_generate(&a), 0);
  assert_int_equal(np_identity_save(a, f->path, false), 0);
  static const mode_t bad[] = {0640, 0604, 0644, 0620, 0602, 0610};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(chmod(f->path, bad[i]), 0);
    b = (np_identity *)1;
    assert_int_equal(np_identity_load(f->path, &b), NP_ERR_AUTH);
    assert_null(b);
  }
  assert_int_equal(chmod(f->path, 0400), 0);
  assert_int_equal(np_identity_load(f->path, &b), 0);
  np_identity_free(b);
  np_identity_free(a);
}

static void test_missing_file(void **state) {
  fixture *f = *state;
  np_identity *b = NULL;
  errno = 0;
  assert_int_equal(np_identity_load(f->path, &b), NP_ERR_SYS);
  assert_int_equal(errno, ENOENT);
  assert_null(b);
}

static void test_known_vector_from_file(void **state) {
  fixture *f = *state;
  char text[128];
  snprintf(text, sizeof text, "natpunch-key-v1\n%s\n", rfc8032_seed_hex);
  snprintf(f->path, sizeof f->path, "%s/key", f->dir);
  write_text(f->path, text);
  np_identity *id = NULL;
  assert_int_equal(np_identity_load(f->path, &id), 0);
  uint8_t pk[NP_PUBKEY_LEN];
  np_identity_public_key(id, pk);
  assert_memory_equal(pk, rfc8032_pk, NP_PUBKEY_LEN);
  char pid[NP_PEER_ID_LEN + 1];
  np_identity_peer_id(id, pid);
  assert_string_equal(pid, rfc8032_peer_id);
  uint8_t sig[NP_SIGNATURE_LEN];
  np_identity_sign(id, NULL, 0, sig);
  assert_memory_equal(sig, rfc8032_sig, NP_SIGNATURE_LEN);
  np_identity_free(id);

  /* Upper-case hex and a missing final newline are accepted too. */
  char upper[128];
  snprintf(upper, sizeof upper, "natpunch-key-v1\n%s", rfc8032_seed_hex);
  for (char *p = upper + 16; *p; p++)
    if (*p >= 'a' && *p <= 'f')
      *p = (char)(*p - 'a' + 'A');
  write_text(f->path, upper);
  assert_int_equal(np_identity_load(f->path, &id), 0);
  np_identity_peer_id(id, pid);
  assert_string_equal(pid, rfc8032_peer_id);
  np_identity_free(id);
}

static void test_malformed_files(void **state) {
  fixture *f = *state;
  snprintf(f->path, sizeof f->path, "%s/key", f->dir);
  const char *seed = rfc8032_seed_hex;
  char bad[16][160];
  int n = 0;
  snprintf(bad[n++], sizeof bad[0], "natpunch-key-v2\n%s\n", seed);         /* header */
  snprintf(bad[n++], sizeof bad[0], "natpunch-key-v1 \n%s\n", seed);        /* header */
  snprintf(bad[n++], sizeof bad[0], "%s\n", seed);                          /* no header */
  snprintf(bad[n++], sizeof bad[0], "natpunch-key-v1\n%.62s\n", seed);      /* short */
  snprintf(bad[n++], sizeof bad[0], "natpunch-key-v1\n%s00\n", seed);       /* long */
  snprintf(bad[n++], sizeof bad[0], "natpunch-key-v1\n%.63sg\n", seed);     /* not hex */
  snprintf(bad[n++], sizeof bad[0], "natpunch-key-v1\n%.32s %.32s\n", seed, /* space */
           seed + 32);
  snprintf(bad[n++], sizeof bad[0], "natpunch-key-v1\n%s\n\n", seed);     /* extra line */
  snprintf(bad[n++], sizeof bad[0], "natpunch-key-v1\n%s\nmore\n", seed); /* trailing */
  snprintf(bad[n++], sizeof bad[0], "natpunch-key-v1\r\n%s\r\n", seed);   /* CRLF */
  snprintf(bad[n++], sizeof bad[0], "natpunch-key-v1\n");                 /* no seed */
  snprintf(bad[n++], sizeof bad[0], "%s", "");                            /* empty */
  snprintf(bad[n++], sizeof bad[0], "\x01\x02garbage\xff\xfe");           /* garbage */
  for (int i = 0; i < n; i++) {
    write_text(f->path, bad[i]);
    np_identity *id = (np_identity *)1;
    int rc = np_identity_load(f->path, &id);
    if (rc != NP_ERR_PROTO)
      fail_msg("case %d (%s) gave %d, expected NP_ERR_PROTO", i, bad[i], rc);
    assert_null(id);
  }
  /* Binary junk with a NUL inside, and a large file. */
  static const char junk[] = "natpunch-key-v1\n\0\0\0\0";
  write_file(f->path, junk, sizeof junk, 0600);
  np_identity *id = NULL;
  assert_int_equal(np_identity_load(f->path, &id), NP_ERR_PROTO);
  char big[4096];
  memset(big, 'a', sizeof big);
  memcpy(big, "natpunch-key-v1\n", 16);
  write_file(f->path, big, sizeof big, 0600);
  assert_int_equal(np_identity_load(f->path, &id), NP_ERR_PROTO);
  /* A directory is not a key file. */
  assert_int_equal(np_identity_load(f->dir, &id), NP_ERR_PROTO);
}

static void test_peer_id_round_trip(void **state) {
  (void)state;
  uint8_t pk[NP_PUBKEY_LEN], back[NP_PUBKEY_LEN];
  char id[NP_PEER_ID_LEN + 1];
  /* Patterned keys exercise every bit position of the 5-bit groups. */
  for (int k = 0; k < 256; k++) {
    for (int i = 0; i < NP_PUBKEY_LEN; i++)
      pk[i] = (uint8_t)(k * 37 + i * 11 + (k >> 3) * i);
    if (k == 0)
      memset(pk, 0, sizeof pk);
    if (k == 1)
      memset(pk, 0xff, sizeof pk);
    np_peer_id_format(pk, id);
    assert_int_equal(strlen(id), NP_PEER_ID_LEN);
    assert_int_equal(strspn(id, "abcdefghijklmnopqrstuvwxyz234567"), NP_PEER_ID_LEN);
    assert_int_equal(np_peer_id_parse(id, back), 0);
    assert_memory_equal(pk, back, NP_PUBKEY_LEN);
  }
  memset(pk, 0, sizeof pk);
  np_peer_id_format(pk, id);
  assert_string_equal(id, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
  memset(pk, 0xff, sizeof pk);
  np_peer_id_format(pk, id);
  /* 256 one bits: 51 '7's, then the last bit followed by four zeros. */
  assert_string_equal(id, "777777777777777777777777777777777777777777777777777q");
  np_peer_id_format(rfc8032_pk, id);
  assert_string_equal(id, rfc8032_peer_id);
}

static void test_peer_id_parse_rejects(void **state) {
  (void)state;
  uint8_t pk[NP_PUBKEY_LEN], orig[NP_PUBKEY_LEN];
  char buf[80];
  assert_int_equal(np_peer_id_parse(rfc8032_peer_id, pk), 0);
  assert_memory_equal(pk, rfc8032_pk, NP_PUBKEY_LEN);
  memcpy(orig, pk, sizeof pk);

  /* Upper and mixed case name the same key. */
  snprintf(buf, sizeof buf, "%s", rfc8032_peer_id);
  for (size_t i = 0; buf[i]; i += 2)
    if (buf[i] >= 'a' && buf[i] <= 'z')
      buf[i] = (char)(buf[i] - 'a' + 'A');
  assert_int_equal(np_peer_id_parse(buf, pk), 0);
  assert_memory_equal(pk, orig, NP_PUBKEY_LEN);

  /* Lengths: one short, one long, empty. */
  memset(pk, 0x55, sizeof pk);
  snprintf(buf, sizeof buf, "%.51s", rfc8032_peer_id);
  assert_int_equal(np_peer_id_parse(buf, pk), NP_ERR_INVAL);
  snprintf(buf, sizeof buf, "%sa", rfc8032_peer_id);
  assert_int_equal(np_peer_id_parse(buf, pk), NP_ERR_INVAL);
  assert_int_equal(np_peer_id_parse("", pk), NP_ERR_INVAL);
  assert_int_equal(np_peer_id_parse(NULL, pk), NP_ERR_INVAL);
  /* Padding and whitespace are not part of a peer ID. */
  snprintf(buf, sizeof buf, "%s====", rfc8032_peer_id);
  assert_int_equal(np_peer_id_parse(buf, pk), NP_ERR_INVAL);
  snprintf(buf, sizeof buf, " %.51s", rfc8032_peer_id);
  assert_int_equal(np_peer_id_parse(buf, pk), NP_ERR_INVAL);
  snprintf(buf, sizeof buf, "%.51s\n", rfc8032_peer_id);
  assert_int_equal(np_peer_id_parse(buf, pk), NP_ERR_INVAL);
  /* Characters outside the alphabet, at every position. */
  static const char bad_chars[] = "0189=-_.+/ \x80";
  for (size_t c = 0; c < sizeof bad_chars - 1; c++) {
    for (int pos = 0; pos < NP_PEER_ID_LEN; pos++) {
      snprintf(buf, sizeof buf, "%s", rfc8032_peer_id);
      buf[pos] = bad_chars[c];
      assert_int_equal(np_peer_id_parse(buf, pk), NP_ERR_INVAL);
    }
  }
  /* Non-zero trailing bits: the last character ('a' = 0) carries one key
   * bit and four bits that must be zero; 'b'..'p' set some of those. */
  snprintf(buf, sizeof buf, "%s", rfc8032_peer_id);
  assert_int_equal(buf[NP_PEER_ID_LEN - 1], 'a');
  for (char c = 'b'; c <= 'p'; c++) {
    buf[NP_PEER_ID_LEN - 1] = c;
    assert_int_equal(np_peer_id_parse(buf, pk), NP_ERR_INVAL);
  }
  buf[NP_PEER_ID_LEN - 1] = 'q'; /* only the key bit: another valid key */
  assert_int_equal(np_peer_id_parse(buf, pk), 0);
  assert_int_equal(pk[31], orig[31] | 1);
  /* Failures left the output untouched. */
  memset(pk, 0x55, sizeof pk);
  assert_int_equal(np_peer_id_parse("bad", pk), NP_ERR_INVAL);
  for (int i = 0; i < NP_PUBKEY_LEN; i++)
    assert_int_equal(pk[i], 0x55);
}

static void test_sign_verify(void **state) {
  (void)state;
  np_identity *a = NULL, *b = NULL;
  assert_int_equal(np_identity_generate(&a), 0);
  assert_int_equal(np_identity_generate(&b), 0);
  uint8_t pka[NP_PUBKEY_LEN], pkb[NP_PUBKEY_LEN], sig[NP_SIGNATURE_LEN];
  np_identity_public_key(a, pka);
  np_identity_public_key(b, pkb);
  uint8_t msg[100];
  for (size_t i = 0; i < sizeof msg; i++)
    msg[i] = (uint8_t)i;
  np_identity_sign(a, msg, sizeof msg, sig);
  assert_int_equal(np_signature_verify(pka, msg, sizeof msg, sig), 0);
  assert_int_equal(np_signature_verify(pkb, msg, sizeof msg, sig), NP_ERR_AUTH);
  assert_int_equal(np_signature_verify(pka, msg, sizeof msg - 1, sig), NP_ERR_AUTH);
  /* Every bit of the message and of the signature counts. */
  for (size_t i = 0; i < sizeof msg * 8; i += 7) {
    msg[i / 8] ^= (uint8_t)(1u << (i % 8));
    assert_int_equal(np_signature_verify(pka, msg, sizeof msg, sig), NP_ERR_AUTH);
    msg[i / 8] ^= (uint8_t)(1u << (i % 8));
  }
  for (size_t i = 0; i < NP_SIGNATURE_LEN * 8; i++) {
    sig[i / 8] ^= (uint8_t)(1u << (i % 8));
    assert_int_equal(np_signature_verify(pka, msg, sizeof msg, sig), NP_ERR_AUTH);
    sig[i / 8] ^= (uint8_t)(1u << (i % 8));
  }
  assert_int_equal(np_signature_verify(pka, msg, sizeof msg, sig), 0);
  np_identity_free(a);
  np_identity_free(b);
}

static void test_default_path(void **state) {
  (void)state;
  char *old_xdg = getenv("XDG_CONFIG_HOME") ? strdup(getenv("XDG_CONFIG_HOME")) : NULL;
  char *old_home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
  char buf[256];

  setenv("XDG_CONFIG_HOME", "/x/conf", 1);
  setenv("HOME", "/home/u", 1);
  assert_int_equal(np_identity_default_path(buf, sizeof buf), 0);
  assert_string_equal(buf, "/x/conf/natpunch/key");
  /* Exactly big enough, then one byte short. */
  assert_int_equal(np_identity_default_path(buf, strlen("/x/conf/natpunch/key") + 1), 0);
  assert_int_equal(np_identity_default_path(buf, strlen("/x/conf/natpunch/key")), NP_ERR_NOSPACE);

  /* Relative or empty XDG_CONFIG_HOME is ignored (XDG spec). */
  setenv("XDG_CONFIG_HOME", "relative", 1);
  assert_int_equal(np_identity_default_path(buf, sizeof buf), 0);
  assert_string_equal(buf, "/home/u/.config/natpunch/key");
  setenv("XDG_CONFIG_HOME", "", 1);
  assert_int_equal(np_identity_default_path(buf, sizeof buf), 0);
  assert_string_equal(buf, "/home/u/.config/natpunch/key");
  unsetenv("XDG_CONFIG_HOME");
  assert_int_equal(np_identity_default_path(buf, sizeof buf), 0);
  assert_string_equal(buf, "/home/u/.config/natpunch/key");
  unsetenv("HOME");
  assert_int_equal(np_identity_default_path(buf, sizeof buf), NP_ERR_INVAL);

  if (old_xdg)
    setenv("XDG_CONFIG_HOME", old_xdg, 1);
  if (old_home)
    setenv("HOME", old_home, 1);
  free(old_xdg);
  free(old_home);
}

static void test_load_or_create(void **state) {
  fixture *f = *state;
  np_identity *a = NULL, *b = NULL;
  bool created = false;
  assert_int_equal(np_identity_load_or_create(f->path, &a, &created), 0);
  assert_true(created);
  assert_int_equal(file_mode(f->path), 0600);
  assert_int_equal(np_identity_load_or_create(f->path, &b, &created), 0);
  assert_false(created);
  char ida[NP_PEER_ID_LEN + 1], idb[NP_PEER_ID_LEN + 1];
  np_identity_peer_id(a, ida);
  np_identity_peer_id(b, idb);
  assert_string_equal(ida, idb);
  np_identity_free(a);
  np_identity_free(b);

  /* NULL path: the default under XDG_CONFIG_HOME. */
  char *old_xdg = getenv("XDG_CONFIG_HOME") ? strdup(getenv("XDG_CONFIG_HOME")) : NULL;
  char conf[128], expect[160];
  snprintf(conf, sizeof conf, "%s/conf", f->dir);
  setenv("XDG_CONFIG_HOME", conf, 1);
  assert_int_equal(np_identity_load_or_create(NULL, &a, &created), 0);
  assert_true(created);
  snprintf(expect, sizeof expect, "%s/natpunch/key", conf);
  assert_int_equal(file_mode(expect), 0600);
  assert_int_equal(np_identity_load(expect, &b), 0);
  np_identity_peer_id(a, ida);
  np_identity_peer_id(b, idb);
  assert_string_equal(ida, idb);
  np_identity_free(b);
  assert_int_equal(np_identity_load_or_create(NULL, &b, &created), 0);
  assert_false(created);
  np_identity_peer_id(b, idb);
  assert_string_equal(ida, idb);
  np_identity_free(a);
  np_identity_free(b);

  /* A bad existing file is reported, never silently replaced. */
  write_text(expect, "junk\n");
  assert_int_equal(np_identity_load_or_create(NULL, &a, &created), NP_ERR_PROTO);
  assert_false(created);
  assert_null(a);
  if (old_xdg)
    setenv("XDG_CONFIG_HOME", old_xdg, 1);
  else
    unsetenv("XDG_CONFIG_HOME");
  free(old_xdg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_generate_save_load_round_trip, setup, teardown),
      cmocka_unit_test(test_two_keys_differ),
      cmocka_unit_test_setup_teardown(test_saved_file_mode_and_dirs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refuses_overwrite, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refuses_group_or_other_access, setup, teardown),
      cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_known_vector_from_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_malformed_files, setup, teardown),
      cmocka_unit_test(test_peer_id_round_trip),
      cmocka_unit_test(test_peer_id_parse_rejects),
      cmocka_unit_test(test_sign_verify),
      cmocka_unit_test(test_default_path),
      cmocka_unit_test_setup_teardown(test_load_or_create, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
