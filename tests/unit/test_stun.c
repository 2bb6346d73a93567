/*
 * STUN codec tests: the RFC 5769 sample messages byte for byte, round trips
 * of every attribute, and the malformed inputs the decoder must refuse.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "stun/stun.h"

/* ------------------------------------------------------------------------ */
/* RFC 5769 sample messages                                                  */
/* ------------------------------------------------------------------------ */

static const char rfc5769_password[] = "VOkJxbRl1RmTxUk/WvJxBt";

static const uint8_t rfc5769_txid[NP_STUN_TXID_LEN] = {
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae};

/* §2.1 Sample Request. */
static const uint8_t rfc5769_request[] = {
    0x00, 0x01, 0x00, 0x58, /* Request type and message length */
    0x21, 0x12, 0xa4, 0x42, /* Magic cookie */
    0xb7, 0xe7, 0xa7, 0x01, /* } */
    0xbc, 0x34, 0xd6, 0x86, /* }  Transaction ID */
    0xfa, 0x87, 0xdf, 0xae, /* } */
    0x80, 0x22, 0x00, 0x10, /* SOFTWARE attribute header */
    0x53, 0x54, 0x55, 0x4e, /* } */
    0x20, 0x74, 0x65, 0x73, /* }  User-agent... */
    0x74, 0x20, 0x63, 0x6c, /* }  ...name */
    0x69, 0x65, 0x6e, 0x74, /* } */
    0x00, 0x24, 0x00, 0x04, /* PRIORITY attribute header */
    0x6e, 0x00, 0x01, 0xff, /* }  ICE priority value */
    0x80, 0x29, 0x00, 0x08, /* ICE-CONTROLLED attribute header */
    0x93, 0x2f, 0xf9, 0xb1, /* }  Pseudo-random tie breaker... */
    0x51, 0x26, 0x3b, 0x36, /* }   ...for ICE control */
    0x00, 0x06, 0x00, 0x09, /* USERNAME attribute header */
    0x65, 0x76, 0x74, 0x6a, /* } */
    0x3a, 0x68, 0x36, 0x76, /* }  Username (9 bytes) and padding (3 bytes) */
    0x59, 0x20, 0x20, 0x20, /* } */
    0x00, 0x08, 0x00, 0x14, /* MESSAGE-INTEGRITY attribute header */
    0x9a, 0xea, 0xa7, 0x0c, /* } */
    0xbf, 0xd8, 0xcb, 0x56, /* } */
    0x78, 0x1e, 0xf2, 0xb5, /* }  HMAC-SHA1 fingerprint */
    0xb2, 0xd3, 0xf2, 0x49, /* } */
    0xc1, 0xb5, 0x71, 0xa2, /* } */
    0x80, 0x28, 0x00, 0x04, /* FINGERPRINT attribute header */
    0xe5, 0x7a, 0x3b, 0xcf, /* }  CRC32 fingerprint */
};

/* §2.2 Sample IPv4 Response. */
static const uint8_t rfc5769_response_v4[] = {
    0x01, 0x01, 0x00, 0x3c, /* Response type and message length */
    0x21, 0x12, 0xa4, 0x42, /* Magic cookie */
    0xb7, 0xe7, 0xa7, 0x01, /* } */
    0xbc, 0x34, 0xd6, 0x86, /* }  Transaction ID */
    0xfa, 0x87, 0xdf, 0xae, /* } */
    0x80, 0x22, 0x00, 0x0b, /* SOFTWARE attribute header */
    0x74, 0x65, 0x73, 0x74, /* } */
    0x20, 0x76, 0x65, 0x63, /* }  UTF-8 server name */
    0x74, 0x6f, 0x72, 0x20, /* } */
    0x00, 0x20, 0x00, 0x08, /* XOR-MAPPED-ADDRESS attribute header */
    0x00, 0x01, 0xa1, 0x47, /* Address family (IPv4) and xor'd mapped port */
    0xe1, 0x12, 0xa6, 0x43, /* Xor'd mapped IPv4 address */
    0x00, 0x08, 0x00, 0x14, /* MESSAGE-INTEGRITY attribute header */
    0x2b, 0x91, 0xf5, 0x99, /* } */
    0xfd, 0x9e, 0x90, 0xc3, /* } */
    0x8c, 0x74, 0x89, 0xf9, /* }  HMAC-SHA1 fingerprint */
    0x2a, 0xf9, 0xba, 0x53, /* } */
    0xf0, 0x6b, 0xe7, 0xd7, /* } */
    0x80, 0x28, 0x00, 0x04, /* FINGERPRINT attribute header */
    0xc0, 0x7d, 0x4c, 0x96, /* }  CRC32 fingerprint */
};

/* §2.3 Sample IPv6 Response. */
static const uint8_t rfc5769_response_v6[] = {
    0x01, 0x01, 0x00, 0x48, /* Response type and message length */
    0x21, 0x12, 0xa4, 0x42, /* Magic cookie */
    0xb7, 0xe7, 0xa7, 0x01, /* } */
    0xbc, 0x34, 0xd6, 0x86, /* }  Transaction ID */
    0xfa, 0x87, 0xdf, 0xae, /* } */
    0x80, 0x22, 0x00, 0x0b, /* SOFTWARE attribute header */
    0x74, 0x65, 0x73, 0x74, /* } */
    0x20, 0x76, 0x65, 0x63, /* }  UTF-8 server name */
    0x74, 0x6f, 0x72, 0x20, /* } */
    0x00, 0x20, 0x00, 0x14, /* XOR-MAPPED-ADDRESS attribute header */
    0x00, 0x02, 0xa1, 0x47, /* Address family (IPv6) and xor'd mapped port */
    0x01, 0x13, 0xa9, 0xfa, /* } */
    0xa5, 0xd3, 0xf1, 0x79, /* }  Xor'd mapped IPv6 address */
    0xbc, 0x25, 0xf4, 0xb5, /* } */
    0xbe, 0xd2, 0xb9, 0xd9, /* } */
    0x00, 0x08, 0x00, 0x14, /* MESSAGE-INTEGRITY attribute header */
    0xa3, 0x82, 0x95, 0x4e, /* } */
    0x4b, 0xe6, 0x7b, 0xf1, /* } */
    0x17, 0x84, 0xc9, 0x7c, /* }  HMAC-SHA1 fingerprint */
    0x82, 0x92, 0xc2, 0x75, /* } */
    0xbf, 0xe3, 0xed, 0x41, /* } */
    0x80, 0x28, 0x00, 0x04, /* FINGERPRINT attribute header */
    0xc8, 0xfb, 0x0b, 0x4c, /* }  CRC32 fingerprint */
};

/* §2.4 Sample Request with Long-Term Authentication. */
static const uint8_t rfc5769_long_term[] = {
    0x00, 0x01, 0x00, 0x60, /* Request type and message length */
    0x21, 0x12, 0xa4, 0x42, /* Magic cookie */
    0x78, 0xad, 0x34, 0x33, /* } */
    0xc6, 0xad, 0x72, 0xc0, /* }  Transaction ID */
    0x29, 0xda, 0x41, 0x2e, /* } */
    0x00, 0x06, 0x00, 0x12, /* USERNAME attribute header */
    0xe3, 0x83, 0x9e, 0xe3, /* } */
    0x83, 0x88, 0xe3, 0x83, /* } */
    0xaa, 0xe3, 0x83, 0x83, /* }  Username value (18 bytes) and padding */
    0xe3, 0x82, 0xaf, 0xe3, /* } */
    0x82, 0xb9, 0x00, 0x00, /* } */
    0x00, 0x15, 0x00, 0x1c, /* NONCE attribute header */
    0x66, 0x2f, 0x2f, 0x34, /* } */
    0x39, 0x39, 0x6b, 0x39, /* } */
    0x35, 0x34, 0x64, 0x36, /* } */
    0x4f, 0x4c, 0x33, 0x34, /* }  Nonce value */
    0x6f, 0x4c, 0x39, 0x46, /* } */
    0x53, 0x54, 0x76, 0x79, /* } */
    0x36, 0x34, 0x73, 0x41, /* } */
    0x00, 0x14, 0x00, 0x0b, /* REALM attribute header */
    0x65, 0x78, 0x61, 0x6d, /* } */
    0x70, 0x6c, 0x65, 0x2e, /* }  Realm value (11 bytes) and padding (1) */
    0x6f, 0x72, 0x67, 0x00, /* } */
    0x00, 0x08, 0x00, 0x14, /* MESSAGE-INTEGRITY attribute header */
    0xf6, 0x70, 0x24, 0x65, /* } */
    0x6d, 0xd6, 0x4a, 0x3e, /* } */
    0x02, 0xb8, 0xe0, 0x71, /* }  HMAC-SHA1 fingerprint */
    0x2e, 0x85, 0xc9, 0xa2, /* } */
    0x8c, 0xa8, 0x96, 0x66, /* } */
};

/* U+30DE U+30C8 U+30EA U+30C3 U+30AF U+30B9 in UTF-8. */
static const char rfc5769_lt_username[] =
    "\xe3\x83\x9e\xe3\x83\x88\xe3\x83\xaa\xe3\x83\x83\xe3\x82\xaf\xe3\x82\xb9";
static const char rfc5769_lt_nonce[] = "f//499k954d6OL34oL9FSTvy64sA";
static const char rfc5769_lt_realm[] = "example.org";
static const char rfc5769_lt_password[] = "TheMatrIX";

static const uint8_t ice_tie_breaker[8] = {0x93, 0x2f, 0xf9, 0xb1,
                                           0x51, 0x26, 0x3b, 0x36};
#define ATTR_PRIORITY 0x0024
#define ATTR_ICE_CONTROLLED 0x8029

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

static const uint8_t test_txid[NP_STUN_TXID_LEN] = {1, 2, 3, 4,  5,  6,
                                                    7, 8, 9, 10, 11, 12};

static np_addr addr(const char *text) {
  np_addr a;
  assert_int_equal(np_addr_parse(text, 0, &a), 0);
  return a;
}

static void assert_addr(const np_addr *got, const char *want) {
  np_addr w = addr(want);
  char g[NP_ADDRSTRLEN];
  if (!np_addr_equal(got, &w))
    fail_msg("address %s, expected %s", np_addr_format(got, g, sizeof g), want);
}

static void assert_text(const uint8_t *p, size_t n, const char *want) {
  assert_non_null(p);
  assert_int_equal(n, strlen(want));
  assert_memory_equal(p, want, n);
}

static const uint8_t *pw(void) { return (const uint8_t *)rfc5769_password; }
static size_t pw_len(void) { return strlen(rfc5769_password); }

/* Decodes from an exact-size heap copy, so that ASan flags any read past
 * the end (a static array would usually have neighbours to read). */
static int read_exact(const uint8_t *buf, size_t len, np_stun_msg *msg) {
  uint8_t *copy = malloc(len ? len : 1);
  assert_non_null(copy);
  if (len)
    memcpy(copy, buf, len);
  int rc = np__stun_read(copy, len, msg);
  free(copy);
  return rc;
}

/* Starts a Binding request in buf with the test transaction ID. */
static void start(np_stun_writer *w, uint8_t *buf, size_t cap, uint16_t type) {
  np__stun_writer_init(w, buf, cap, type, NP_STUN_MAGIC_COOKIE, test_txid);
}

static size_t finish(np_stun_writer *w) {
  int n = np__stun_writer_finish(w);
  assert_true(n >= NP_STUN_HEADER_LEN);
  return (size_t)n;
}

/* ------------------------------------------------------------------------ */
/* RFC 5769                                                                  */
/* ------------------------------------------------------------------------ */

static void test_rfc5769_request(void **state) {
  (void)state;
  np_stun_msg m;
  const uint8_t *b = rfc5769_request;
  size_t n = sizeof rfc5769_request;
  assert_int_equal(read_exact(b, n, &m), 0);
  assert_int_equal(np__stun_read(b, n, &m), 0);
  assert_int_equal(m.type, 0x0001);
  assert_int_equal(m.method, NP_STUN_BINDING);
  assert_int_equal(m.cls, NP_STUN_REQUEST);
  assert_int_equal(m.length, 0x58);
  assert_int_equal(m.cookie, NP_STUN_MAGIC_COOKIE);
  assert_false(m.rfc3489);
  assert_memory_equal(m.txid, rfc5769_txid, NP_STUN_TXID_LEN);
  assert_int_equal(m.present, NP_STUN_HAS_SOFTWARE | NP_STUN_HAS_USERNAME |
                                  NP_STUN_HAS_INTEGRITY | NP_STUN_HAS_FINGERPRINT);
  assert_text(m.software, m.software_len, "STUN test client");
  assert_text(m.username, m.username_len, "evtj:h6vY");
  /* PRIORITY (0x0024) is comprehension-required and not ours to know. */
  assert_int_equal(m.n_unknown_required, 1);
  assert_int_equal(m.unknown_required[0], ATTR_PRIORITY);
  assert_int_equal(m.integrity_offset, 76);

  assert_int_equal(np__stun_check_integrity(b, n, &m, pw(), pw_len()), 0);
  assert_int_equal(np__stun_check_integrity(b, n, &m, pw(), pw_len() - 1),
                   NP_ERR_AUTH);
  assert_int_equal(np__stun_check_integrity_sha256(b, n, &m, pw(), pw_len()),
                   NP_ERR_PROTO);

  /* Re-encode: the RFC pads with spaces. */
  uint8_t out[256];
  np_stun_writer w;
  np__stun_writer_init(&w, out, sizeof out, NP_STUN_BINDING | NP_STUN_REQUEST,
                      NP_STUN_MAGIC_COOKIE, rfc5769_txid);
  w.pad_byte = 0x20;
  np__stun_put_bytes(&w, NP_STUN_ATTR_SOFTWARE, "STUN test client", 16);
  np__stun_put_u32(&w, ATTR_PRIORITY, 0x6e0001ff);
  np__stun_put_bytes(&w, ATTR_ICE_CONTROLLED, ice_tie_breaker, sizeof ice_tie_breaker);
  np__stun_put_bytes(&w, NP_STUN_ATTR_USERNAME, "evtj:h6vY", 9);
  np__stun_put_integrity(&w, pw(), pw_len());
  np__stun_put_fingerprint(&w);
  assert_int_equal(np__stun_writer_finish(&w), (int)n);
  assert_memory_equal(out, b, n);
}

static void check_response(const uint8_t *b, size_t n, const char *mapped,
                           const uint8_t *raw_addr_value, size_t raw_len) {
  np_stun_msg m;
  assert_int_equal(read_exact(b, n, &m), 0);
  assert_int_equal(np__stun_read(b, n, &m), 0);
  assert_int_equal(m.method, NP_STUN_BINDING);
  assert_int_equal(m.cls, NP_STUN_SUCCESS);
  assert_false(m.rfc3489);
  assert_memory_equal(m.txid, rfc5769_txid, NP_STUN_TXID_LEN);
  assert_int_equal(m.present, NP_STUN_HAS_SOFTWARE | NP_STUN_HAS_XOR_MAPPED |
                                  NP_STUN_HAS_INTEGRITY | NP_STUN_HAS_FINGERPRINT);
  assert_text(m.software, m.software_len, "test vector");
  assert_addr(&m.xor_mapped, mapped);
  assert_int_equal(m.n_unknown_required, 0);
  assert_int_equal(np__stun_check_integrity(b, n, &m, pw(), pw_len()), 0);
  assert_int_equal(np__stun_check_integrity(b, n, &m, (const uint8_t *)"x", 1),
                   NP_ERR_AUTH);
  /* The value on the wire really is XORed, not plain. */
  assert_memory_not_equal(b + 36 + 4, raw_addr_value, raw_len);

  uint8_t out[256];
  np_stun_writer w;
  np__stun_writer_init(&w, out, sizeof out, NP_STUN_BINDING | NP_STUN_SUCCESS,
                      NP_STUN_MAGIC_COOKIE, rfc5769_txid);
  w.pad_byte = 0x20;
  np__stun_put_bytes(&w, NP_STUN_ATTR_SOFTWARE, "test vector", 11);
  np_addr a = addr(mapped);
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &a);
  np__stun_put_integrity(&w, pw(), pw_len());
  np__stun_put_fingerprint(&w);
  assert_int_equal(np__stun_writer_finish(&w), (int)n);
  assert_memory_equal(out, b, n);
}

static void test_rfc5769_response_v4(void **state) {
  (void)state;
  const uint8_t plain[] = {0x00, 0x01, 0x80, 0x55, 192, 0, 2, 1};
  check_response(rfc5769_response_v4, sizeof rfc5769_response_v4,
                 "192.0.2.1:32853", plain, sizeof plain);
}

static void test_rfc5769_response_v6(void **state) {
  (void)state;
  const uint8_t plain[] = {0x00, 0x02, 0x80, 0x55, 0x20, 0x01, 0x0d, 0xb8,
                           0x12, 0x34, 0x56, 0x78, 0x00, 0x11, 0x22, 0x33,
                           0x44, 0x55, 0x66, 0x77};
  check_response(rfc5769_response_v6, sizeof rfc5769_response_v6,
                 "[2001:db8:1234:5678:11:2233:4455:6677]:32853", plain,
                 sizeof plain);
}

static void test_rfc5769_long_term(void **state) {
  (void)state;
  np_stun_msg m;
  const uint8_t *b = rfc5769_long_term;
  size_t n = sizeof rfc5769_long_term;
  assert_int_equal(read_exact(b, n, &m), 0);
  assert_int_equal(np__stun_read(b, n, &m), 0);
  assert_int_equal(m.cls, NP_STUN_REQUEST);
  assert_int_equal(m.present, NP_STUN_HAS_USERNAME | NP_STUN_HAS_NONCE |
                                  NP_STUN_HAS_REALM | NP_STUN_HAS_INTEGRITY);
  assert_text(m.username, m.username_len, rfc5769_lt_username);
  assert_text(m.nonce, m.nonce_len, rfc5769_lt_nonce);
  assert_text(m.realm, m.realm_len, rfc5769_lt_realm);

  uint8_t key[16];
  assert_int_equal(np__stun_long_term_key(rfc5769_lt_username, rfc5769_lt_realm,
                                         rfc5769_lt_password, key),
                   0);
  assert_int_equal(np__stun_check_integrity(b, n, &m, key, sizeof key), 0);
  /* The password itself is not the key for long-term credentials. */
  assert_int_equal(np__stun_check_integrity(b, n, &m,
                                           (const uint8_t *)rfc5769_lt_password,
                                           strlen(rfc5769_lt_password)),
                   NP_ERR_AUTH);
  uint8_t other[16];
  assert_int_equal(np__stun_long_term_key(rfc5769_lt_username, "example.com",
                                         rfc5769_lt_password, other),
                   0);
  assert_int_equal(np__stun_check_integrity(b, n, &m, other, sizeof other),
                   NP_ERR_AUTH);
  assert_int_equal(np__stun_long_term_key(NULL, "r", "p", key), NP_ERR_INVAL);

  /* This sample pads with zeros, the writer's default. */
  uint8_t out[256];
  np_stun_writer w;
  np__stun_writer_init(&w, out, sizeof out, NP_STUN_BINDING | NP_STUN_REQUEST,
                      NP_STUN_MAGIC_COOKIE, b + 8);
  np__stun_put_bytes(&w, NP_STUN_ATTR_USERNAME, rfc5769_lt_username,
                    strlen(rfc5769_lt_username));
  np__stun_put_bytes(&w, NP_STUN_ATTR_NONCE, rfc5769_lt_nonce, strlen(rfc5769_lt_nonce));
  np__stun_put_bytes(&w, NP_STUN_ATTR_REALM, rfc5769_lt_realm, strlen(rfc5769_lt_realm));
  np__stun_put_integrity(&w, key, sizeof key);
  assert_int_equal(np__stun_writer_finish(&w), (int)n);
  assert_memory_equal(out, b, n);
}

/* ------------------------------------------------------------------------ */
/* Round trips                                                               */
/* ------------------------------------------------------------------------ */

static const np_addr *addr_field(const np_stun_msg *m, uint16_t type) {
  switch (type) {
  case NP_STUN_ATTR_MAPPED_ADDRESS: return &m->mapped;
  case NP_STUN_ATTR_XOR_MAPPED_ADDRESS: return &m->xor_mapped;
  case NP_STUN_ATTR_OTHER_ADDRESS: return &m->other_address;
  case NP_STUN_ATTR_RESPONSE_ORIGIN: return &m->response_origin;
  case NP_STUN_ATTR_CHANGED_ADDRESS: return &m->changed_address;
  case NP_STUN_ATTR_SOURCE_ADDRESS: return &m->source_address;
  default: fail_msg("no address field for 0x%04x", type); return NULL;
  }
}

static void test_addr_round_trip(void **state) {
  (void)state;
  static const struct {
    uint16_t type;
    uint32_t bit;
  } types[] = {
      {NP_STUN_ATTR_MAPPED_ADDRESS, NP_STUN_HAS_MAPPED},
      {NP_STUN_ATTR_XOR_MAPPED_ADDRESS, NP_STUN_HAS_XOR_MAPPED},
      {NP_STUN_ATTR_OTHER_ADDRESS, NP_STUN_HAS_OTHER_ADDRESS},
      {NP_STUN_ATTR_RESPONSE_ORIGIN, NP_STUN_HAS_RESPONSE_ORIGIN},
      {NP_STUN_ATTR_CHANGED_ADDRESS, NP_STUN_HAS_CHANGED_ADDRESS},
      {NP_STUN_ATTR_SOURCE_ADDRESS, NP_STUN_HAS_SOURCE_ADDRESS},
  };
  static const char *const addrs[] = {
      "203.0.113.7:3478", "0.0.0.0:1", "255.255.255.255:65535",
      "[2001:db8::1]:3479", "[::1]:40000", "[ffff:ffff::ffff]:65535",
  };
  for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
    for (size_t i = 0; i < sizeof addrs / sizeof addrs[0]; i++) {
      uint8_t buf[128];
      np_stun_writer w;
      start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_SUCCESS);
      np_addr a = addr(addrs[i]);
      if (types[t].type == NP_STUN_ATTR_XOR_MAPPED_ADDRESS)
        np__stun_put_xor_addr(&w, types[t].type, &a);
      else
        np__stun_put_addr(&w, types[t].type, &a);
      size_t n = finish(&w);
      bool v6 = a.u.sa.sa_family == AF_INET6;
      assert_int_equal(n, NP_STUN_HEADER_LEN + 4 + (v6 ? 20 : 8));
      assert_int_equal(buf[NP_STUN_HEADER_LEN + 5], v6 ? 0x02 : 0x01);
      np_stun_msg m;
      assert_int_equal(read_exact(buf, n, &m), 0);
      assert_int_equal(np__stun_read(buf, n, &m), 0);
      assert_int_equal(m.present, types[t].bit);
      assert_addr(addr_field(&m, types[t].type), addrs[i]);
    }
  }
}

/* A plain MAPPED-ADDRESS is written as is, an XOR one is not. */
static void test_addr_wire_format(void **state) {
  (void)state;
  uint8_t buf[128];
  np_stun_writer w;
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_SUCCESS);
  np_addr a = addr("192.0.2.1:32853");
  np__stun_put_addr(&w, NP_STUN_ATTR_MAPPED_ADDRESS, &a);
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &a);
  assert_int_equal(finish(&w), 20 + 12 + 12);
  const uint8_t want[] = {0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x80, 0x55,
                          192,  0,    2,    1,    0x00, 0x20, 0x00, 0x08,
                          0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43};
  assert_memory_equal(buf + 20, want, sizeof want);
}

static void test_all_attributes_round_trip(void **state) {
  (void)state;
  uint8_t buf[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_ERROR);
  assert_int_equal(w.pad_byte, 0);
  const uint16_t unknown[] = {0x0024, 0x7777, 0x0003};
  np_addr m4 = addr("198.51.100.1:1000"), x6 = addr("[2001:db8::2]:2000");
  np_addr o4 = addr("198.51.100.2:3479"), r6 = addr("[2001:db8::3]:3478");
  np_addr c4 = addr("198.51.100.4:4000"), s6 = addr("[2001:db8::5]:5000");
  np__stun_put_addr(&w, NP_STUN_ATTR_MAPPED_ADDRESS, &m4);
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &x6);
  np__stun_put_addr(&w, NP_STUN_ATTR_OTHER_ADDRESS, &o4);
  np__stun_put_addr(&w, NP_STUN_ATTR_RESPONSE_ORIGIN, &r6);
  np__stun_put_addr(&w, NP_STUN_ATTR_CHANGED_ADDRESS, &c4);
  np__stun_put_addr(&w, NP_STUN_ATTR_SOURCE_ADDRESS, &s6);
  np__stun_put_error(&w, 420, "Unknown Attribute");
  np__stun_put_unknown(&w, unknown, 3);
  np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, NP_STUN_CHANGE_IP | NP_STUN_CHANGE_PORT);
  np__stun_put_response_port(&w, 54321);
  np__stun_put_bytes(&w, NP_STUN_ATTR_USERNAME, "alice", 5);
  np__stun_put_bytes(&w, NP_STUN_ATTR_SOFTWARE, "natpunch", 8);
  np__stun_put_bytes(&w, NP_STUN_ATTR_REALM, "realm.example", 13);
  np__stun_put_bytes(&w, NP_STUN_ATTR_NONCE, "nonce-123", 9);
  np__stun_put_bytes(&w, NP_STUN_ATTR_PADDING, NULL, 0);
  np__stun_put_integrity(&w, (const uint8_t *)"k", 1);
  np__stun_put_integrity_sha256(&w, (const uint8_t *)"k2", 2, 32);
  np__stun_put_fingerprint(&w);
  size_t n = finish(&w);
  assert_int_equal(n % 4, 0);
  /* Zero padding by default: "alice" is followed by three zero bytes. */
  const uint8_t *alice = memmem(buf, n, "alice", 5);
  assert_non_null(alice);
  assert_memory_equal(alice + 5, "\0\0\0", 3);

  np_stun_msg m;
  assert_int_equal(read_exact(buf, n, &m), 0);
  assert_int_equal(np__stun_read(buf, n, &m), 0);
  assert_int_equal(m.cls, NP_STUN_ERROR);
  assert_int_equal(m.method, NP_STUN_BINDING);
  assert_int_equal(m.type, 0x0111);
  assert_int_equal(m.present,
                   NP_STUN_HAS_MAPPED | NP_STUN_HAS_XOR_MAPPED | NP_STUN_HAS_USERNAME |
                       NP_STUN_HAS_INTEGRITY | NP_STUN_HAS_INTEGRITY_SHA256 |
                       NP_STUN_HAS_FINGERPRINT | NP_STUN_HAS_ERROR_CODE |
                       NP_STUN_HAS_SOFTWARE | NP_STUN_HAS_UNKNOWN_ATTRS |
                       NP_STUN_HAS_CHANGE_REQUEST | NP_STUN_HAS_OTHER_ADDRESS |
                       NP_STUN_HAS_RESPONSE_ORIGIN | NP_STUN_HAS_RESPONSE_PORT |
                       NP_STUN_HAS_PADDING | NP_STUN_HAS_CHANGED_ADDRESS |
                       NP_STUN_HAS_SOURCE_ADDRESS | NP_STUN_HAS_REALM |
                       NP_STUN_HAS_NONCE);
  assert_true(np_addr_equal(&m.mapped, &m4));
  assert_true(np_addr_equal(&m.xor_mapped, &x6));
  assert_true(np_addr_equal(&m.other_address, &o4));
  assert_true(np_addr_equal(&m.response_origin, &r6));
  assert_true(np_addr_equal(&m.changed_address, &c4));
  assert_true(np_addr_equal(&m.source_address, &s6));
  assert_int_equal(m.error_code, 420);
  assert_text(m.reason, m.reason_len, "Unknown Attribute");
  assert_int_equal(m.n_unknown_listed, 3);
  assert_memory_equal(m.unknown_listed, unknown, sizeof unknown);
  assert_int_equal(m.change_request, NP_STUN_CHANGE_IP | NP_STUN_CHANGE_PORT);
  assert_int_equal(m.response_port, 54321);
  assert_text(m.username, m.username_len, "alice");
  assert_text(m.software, m.software_len, "natpunch");
  assert_text(m.realm, m.realm_len, "realm.example");
  assert_text(m.nonce, m.nonce_len, "nonce-123");
  assert_int_equal(m.padding_len, 0);
  assert_int_equal(m.n_unknown_required, 0);
  assert_int_equal(np__stun_check_integrity(buf, n, &m, (const uint8_t *)"k", 1), 0);
  assert_int_equal(np__stun_check_integrity_sha256(buf, n, &m, (const uint8_t *)"k2", 2), 0);
  assert_int_equal(np__stun_check_integrity_sha256(buf, n, &m, (const uint8_t *)"k", 1),
                   NP_ERR_AUTH);
}

static void test_error_code_range(void **state) {
  (void)state;
  const uint16_t codes[] = {300, 399, 400, 401, 420, 487, 500, 699};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    uint8_t buf[64];
    np_stun_writer w;
    start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_ERROR);
    np__stun_put_error(&w, codes[i], NULL);
    size_t n = finish(&w);
    np_stun_msg m;
    assert_int_equal(np__stun_read(buf, n, &m), 0);
    assert_int_equal(m.error_code, codes[i]);
    assert_int_equal(m.reason_len, 0);
  }
}

static void test_padding_attribute(void **state) {
  (void)state;
  uint8_t buf[NP_STUN_MAX_MESSAGE], pad[700];
  memset(pad, 0, sizeof pad);
  np_stun_writer w;
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
  np__stun_put_bytes(&w, NP_STUN_ATTR_PADDING, pad, 501);
  size_t n = finish(&w);
  assert_int_equal(n, 20 + 4 + 504);
  np_stun_msg m;
  assert_int_equal(np__stun_read(buf, n, &m), 0);
  assert_int_equal(m.padding_len, 501);
  assert_true(m.present & NP_STUN_HAS_PADDING);
}

/* ------------------------------------------------------------------------ */
/* Integrity and FINGERPRINT                                                 */
/* ------------------------------------------------------------------------ */

static void test_integrity_sha256(void **state) {
  (void)state;
  const uint8_t key[] = "a long-term or short-term key";
  for (size_t trunc = 16; trunc <= 32; trunc += 4) {
    uint8_t buf[128];
    np_stun_writer w;
    start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
    np__stun_put_bytes(&w, NP_STUN_ATTR_USERNAME, "bob", 3);
    np__stun_put_integrity_sha256(&w, key, sizeof key - 1, trunc);
    np__stun_put_fingerprint(&w);
    size_t n = finish(&w);
    assert_int_equal(n, 20 + 8 + 4 + trunc + 8);
    np_stun_msg m;
    assert_int_equal(read_exact(buf, n, &m), 0);
    assert_int_equal(np__stun_read(buf, n, &m), 0);
    assert_true(m.present & NP_STUN_HAS_INTEGRITY_SHA256);
    assert_false(m.present & NP_STUN_HAS_INTEGRITY);
    assert_int_equal(m.integrity_sha256_len, trunc);
    assert_int_equal(m.integrity_sha256_offset, 28);
    assert_int_equal(np__stun_check_integrity_sha256(buf, n, &m, key, sizeof key - 1), 0);
    assert_int_equal(np__stun_check_integrity_sha256(buf, n, &m, key, sizeof key - 2),
                     NP_ERR_AUTH);
    assert_int_equal(np__stun_check_integrity(buf, n, &m, key, sizeof key - 1),
                     NP_ERR_PROTO);
    /* A flipped bit in the MAC itself (the FINGERPRINT is checked only by
     * np__stun_read, so the MAC check alone sees this). */
    buf[28 + 4 + trunc - 1] ^= 1;
    assert_int_equal(np__stun_check_integrity_sha256(buf, n, &m, key, sizeof key - 1),
                     NP_ERR_AUTH);
  }
  /* Lengths the RFC forbids. */
  const size_t bad[] = {0, 12, 18, 30, 36};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint8_t buf[128];
    np_stun_writer w;
    start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
    np__stun_put_integrity_sha256(&w, key, sizeof key - 1, bad[i]);
    assert_int_equal(np__stun_writer_finish(&w), NP_ERR_INVAL);
    /* And the decoder refuses them when forged with a raw attribute. */
    uint8_t junk[36] = {0};
    start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
    np__stun_put_bytes(&w, NP_STUN_ATTR_MESSAGE_INTEGRITY_SHA256, junk, bad[i]);
    size_t n = finish(&w);
    np_stun_msg m;
    assert_int_equal(np__stun_read(buf, n, &m), NP_ERR_PROTO);
  }
}

static void test_integrity_sha1_bad_length(void **state) {
  (void)state;
  const size_t lens[] = {0, 16, 19, 21, 32};
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    uint8_t buf[128], junk[32] = {0};
    np_stun_writer w;
    start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
    np__stun_put_bytes(&w, NP_STUN_ATTR_MESSAGE_INTEGRITY, junk, lens[i]);
    size_t n = finish(&w);
    np_stun_msg m;
    assert_int_equal(np__stun_read(buf, n, &m), NP_ERR_PROTO);
  }
}

/* MESSAGE-INTEGRITY then MESSAGE-INTEGRITY-SHA256: each covers what
 * precedes it, both verify. */
static void test_both_integrities(void **state) {
  (void)state;
  uint8_t buf[128];
  np_stun_writer w;
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_SUCCESS);
  np_addr a = addr("192.0.2.9:9");
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &a);
  np__stun_put_integrity(&w, (const uint8_t *)"one", 3);
  np__stun_put_integrity_sha256(&w, (const uint8_t *)"two", 3, 24);
  np__stun_put_fingerprint(&w);
  size_t n = finish(&w);
  np_stun_msg m;
  assert_int_equal(np__stun_read(buf, n, &m), 0);
  assert_int_equal(np__stun_check_integrity(buf, n, &m, (const uint8_t *)"one", 3), 0);
  assert_int_equal(np__stun_check_integrity_sha256(buf, n, &m, (const uint8_t *)"two", 3), 0);
  assert_int_equal(np__stun_check_integrity(buf, n, &m, (const uint8_t *)"two", 3),
                   NP_ERR_AUTH);
}

static void test_integrity_empty_key_and_absent(void **state) {
  (void)state;
  uint8_t buf[64];
  np_stun_writer w;
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
  np__stun_put_integrity(&w, NULL, 0);
  size_t n = finish(&w);
  np_stun_msg m;
  assert_int_equal(np__stun_read(buf, n, &m), 0);
  assert_int_equal(np__stun_check_integrity(buf, n, &m, NULL, 0), 0);
  assert_int_equal(np__stun_check_integrity(buf, n, &m, (const uint8_t *)"x", 1),
                   NP_ERR_AUTH);
  /* Absent attribute. */
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
  n = finish(&w);
  assert_int_equal(np__stun_read(buf, n, &m), 0);
  assert_int_equal(np__stun_check_integrity(buf, n, &m, NULL, 0), NP_ERR_PROTO);
  assert_int_equal(np__stun_check_integrity_sha256(buf, n, &m, NULL, 0), NP_ERR_PROTO);
  /* A msg whose offsets do not fit the buffer given is refused, not read. */
  np_stun_msg forged = m;
  forged.present |= NP_STUN_HAS_INTEGRITY;
  forged.integrity_offset = 60;
  assert_int_equal(np__stun_check_integrity(buf, n, &forged, NULL, 0), NP_ERR_PROTO);
}

/* Every single-byte change covered by the CRC is caught. */
static void test_fingerprint_tamper(void **state) {
  (void)state;
  const uint8_t *orig = rfc5769_response_v4;
  size_t n = sizeof rfc5769_response_v4;
  uint8_t buf[sizeof rfc5769_response_v4];
  np_stun_msg m;
  for (size_t i = 0; i < n; i++) {
    if (i >= n - 8 && i < n - 4)
      continue; /* the FINGERPRINT header: changes its type or length */
    memcpy(buf, orig, n);
    buf[i] ^= 0x01;
    assert_int_equal(np__stun_read(buf, n, &m), NP_ERR_PROTO);
  }
  /* The same SOFTWARE-byte change without a FINGERPRINT decodes fine, so
   * the rejection above really was the CRC (and the MAC catches it). */
  memcpy(buf, orig, n);
  buf[24] ^= 0x01;
  buf[3] = (uint8_t)(n - 8 - 20);
  assert_int_equal(np__stun_read(buf, n - 8, &m), 0);
  assert_int_equal(np__stun_check_integrity(buf, n - 8, &m, pw(), pw_len()), NP_ERR_AUTH);
  memcpy(buf, orig, n);
  buf[3] = (uint8_t)(n - 8 - 20);
  assert_int_equal(np__stun_read(buf, n - 8, &m), 0);
  assert_int_equal(np__stun_check_integrity(buf, n - 8, &m, pw(), pw_len()), 0);
  /* Every byte of the MAC counts, the last one included. */
  for (size_t i = n - 8 - 20; i < n - 8; i++) {
    buf[i] ^= 0x80;
    assert_int_equal(np__stun_check_integrity(buf, n - 8, &m, pw(), pw_len()),
                     NP_ERR_AUTH);
    buf[i] ^= 0x80;
  }
}

static void test_fingerprint_must_be_last(void **state) {
  (void)state;
  uint8_t buf[128];
  np_stun_writer w;
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
  np__stun_put_fingerprint(&w);
  np__stun_put_bytes(&w, NP_STUN_ATTR_SOFTWARE, "x", 1);
  size_t n = finish(&w);
  np_stun_msg m;
  assert_int_equal(np__stun_read(buf, n, &m), NP_ERR_PROTO);
  /* Wrong FINGERPRINT length. */
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
  np__stun_put_bytes(&w, NP_STUN_ATTR_FINGERPRINT, "12345678", 8);
  n = finish(&w);
  assert_int_equal(np__stun_read(buf, n, &m), NP_ERR_PROTO);
  /* A lone correct FINGERPRINT is fine. */
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_INDICATION);
  np__stun_put_fingerprint(&w);
  n = finish(&w);
  assert_int_equal(np__stun_read(buf, n, &m), 0);
  assert_int_equal(m.present, NP_STUN_HAS_FINGERPRINT);
  assert_int_equal(m.cls, NP_STUN_INDICATION);
}

/* RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY are ignored, except
 * MESSAGE-INTEGRITY-SHA256 and FINGERPRINT. */
static void test_after_integrity_ignored(void **state) {
  (void)state;
  uint8_t buf[256];
  np_stun_writer w;
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_SUCCESS);
  np_addr a = addr("192.0.2.1:1"), b = addr("192.0.2.2:2");
  np__stun_put_addr(&w, NP_STUN_ATTR_MAPPED_ADDRESS, &a);
  np__stun_put_integrity(&w, (const uint8_t *)"k", 1);
  np__stun_put_bytes(&w, NP_STUN_ATTR_SOFTWARE, "late", 4);
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &b);
  np__stun_put_u32(&w, 0x0077, 0);                       /* unknown, required */
  np__stun_put_bytes(&w, NP_STUN_ATTR_ERROR_CODE, "", 0); /* malformed */
  np__stun_put_integrity_sha256(&w, (const uint8_t *)"k", 1, 32);
  np__stun_put_bytes(&w, NP_STUN_ATTR_USERNAME, "late", 4);
  np__stun_put_fingerprint(&w);
  size_t n = finish(&w);
  np_stun_msg m;
  assert_int_equal(read_exact(buf, n, &m), 0);
  assert_int_equal(np__stun_read(buf, n, &m), 0);
  assert_int_equal(m.present, NP_STUN_HAS_MAPPED | NP_STUN_HAS_INTEGRITY |
                                  NP_STUN_HAS_INTEGRITY_SHA256 |
                                  NP_STUN_HAS_FINGERPRINT);
  assert_int_equal(m.n_unknown_required, 0);
  assert_int_equal(np__stun_check_integrity(buf, n, &m, (const uint8_t *)"k", 1), 0);
  /* The SHA-256 MAC covers the ignored attributes, as written. */
  assert_int_equal(np__stun_check_integrity_sha256(buf, n, &m, (const uint8_t *)"k", 1), 0);
  /* Even ignored, an attribute overrunning the message is still an error. */
  buf[n - 16 + 3] = 0x40; /* USERNAME length, low byte */
  assert_int_equal(np__stun_read(buf, n, &m), NP_ERR_PROTO);
}

/* ------------------------------------------------------------------------ */
/* Malformed input                                                           */
/* ------------------------------------------------------------------------ */

/* Offsets at which an attribute starts, plus the end, for a valid message. */
static bool is_boundary(const uint8_t *b, size_t n, size_t at) {
  size_t pos = NP_STUN_HEADER_LEN;
  while (pos < n) {
    if (pos == at)
      return true;
    size_t alen = (size_t)(b[pos + 2] << 8 | b[pos + 3]);
    pos += 4 + ((alen + 3) & ~(size_t)3);
  }
  return pos == at;
}

static void truncate_all(const uint8_t *orig, size_t n) {
  np_stun_msg m;
  uint8_t *buf = malloc(n);
  assert_non_null(buf);
  for (size_t cut = 0; cut < n; cut++) {
    /* As is: the header length no longer matches. */
    assert_int_equal(read_exact(orig, cut, &m), NP_ERR_PROTO);
    if (cut < NP_STUN_HEADER_LEN)
      continue;
    /* With the header length fixed up, so attribute parsing is reached:
     * only cuts at attribute boundaries can leave a valid message, and
     * then only before the FINGERPRINT (whose CRC covers the length). */
    memcpy(buf, orig, cut);
    buf[2] = (uint8_t)((cut - 20) >> 8);
    buf[3] = (uint8_t)(cut - 20);
    int rc = read_exact(buf, cut, &m);
    if (cut % 4 == 0 && is_boundary(orig, n, cut))
      assert_int_equal(rc, 0);
    else
      assert_int_equal(rc, NP_ERR_PROTO);
  }
  free(buf);
  assert_int_equal(read_exact(orig, n, &m), 0);
}

static void test_truncated(void **state) {
  (void)state;
  truncate_all(rfc5769_request, sizeof rfc5769_request);
  truncate_all(rfc5769_response_v4, sizeof rfc5769_response_v4);
  truncate_all(rfc5769_response_v6, sizeof rfc5769_response_v6);
  truncate_all(rfc5769_long_term, sizeof rfc5769_long_term);
  np_stun_msg m;
  assert_int_equal(np__stun_read(NULL, 0, &m), NP_ERR_PROTO);
}

static void test_bad_header(void **state) {
  (void)state;
  uint8_t buf[NP_STUN_MAX_MESSAGE + 8];
  size_t n = sizeof rfc5769_response_v4;
  np_stun_msg m;
  /* Length field one word too long, too short, not a multiple of 4. */
  const int deltas[] = {4, -4, 1, -1, 2, 0x100};
  for (size_t i = 0; i < sizeof deltas / sizeof deltas[0]; i++) {
    memcpy(buf, rfc5769_response_v4, n);
    uint16_t len = (uint16_t)((n - 20) + (size_t)(long)deltas[i]);
    buf[2] = (uint8_t)(len >> 8);
    buf[3] = (uint8_t)len;
    assert_int_equal(np__stun_read(buf, n, &m), NP_ERR_PROTO);
    assert_false(np__stun_is_stun(buf, n));
  }
  /* Top two bits. */
  memcpy(buf, rfc5769_response_v4, n);
  buf[0] |= 0x40;
  assert_int_equal(np__stun_read(buf, n, &m), NP_ERR_PROTO);
  assert_false(np__stun_is_stun(buf, n));
  buf[0] = (uint8_t)((buf[0] & 0x3f) | 0x80);
  assert_int_equal(np__stun_read(buf, n, &m), NP_ERR_PROTO);
  /* Trailing garbage after a correct message. */
  memcpy(buf, rfc5769_response_v4, n);
  memset(buf + n, 0, 4);
  assert_int_equal(np__stun_read(buf, n + 4, &m), NP_ERR_PROTO);
  assert_true(np__stun_is_stun(buf, n));
  assert_false(np__stun_is_stun(buf, 19));

  /* Exactly NP_STUN_MAX_MESSAGE is accepted, one word more is not. */
  static uint8_t big[NP_STUN_MAX_MESSAGE + 4];
  for (size_t total = NP_STUN_MAX_MESSAGE; total <= NP_STUN_MAX_MESSAGE + 4; total += 4) {
    memset(big, 0, sizeof big);
    size_t body = total - 20;
    big[2] = (uint8_t)(body >> 8);
    big[3] = (uint8_t)body;
    memcpy(big + 4, "\x21\x12\xa4\x42", 4);
    big[20] = 0x00;
    big[21] = 0x26; /* PADDING */
    big[22] = (uint8_t)((body - 4) >> 8);
    big[23] = (uint8_t)(body - 4);
    assert_int_equal(read_exact(big, total, &m),
                     total == NP_STUN_MAX_MESSAGE ? 0 : NP_ERR_PROTO);
  }
}

static void test_attr_overrun(void **state) {
  (void)state;
  uint8_t buf[64];
  np_stun_msg m;
  np_stun_writer w;
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
  np__stun_put_bytes(&w, NP_STUN_ATTR_SOFTWARE, "abcdefgh", 8);
  size_t n = finish(&w);
  assert_int_equal(np__stun_read(buf, n, &m), 0);
  /* Value length one past the end, the padding past the end, huge. */
  const uint16_t lens[] = {9, 12, 0xffff};
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    buf[22] = (uint8_t)(lens[i] >> 8);
    buf[23] = (uint8_t)lens[i];
    assert_int_equal(read_exact(buf, n, &m), NP_ERR_PROTO);
  }
  /* A second attribute header whose value runs out. */
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
  np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, 0);
  np__stun_put_bytes(&w, 0x8070, NULL, 0);
  n = finish(&w);
  assert_int_equal(np__stun_read(buf, n, &m), 0);
  buf[n - 1] = 4;
  assert_int_equal(read_exact(buf, n, &m), NP_ERR_PROTO);
  /* Failure leaves nothing half-decoded. */
  assert_int_equal(m.present, 0);
}

/* Builds a message with one raw attribute by hand (the writer refuses
 * values the RFCs forbid) and returns np__stun_read()'s verdict. */
static int read_one(uint16_t type, const void *value, size_t len, np_stun_msg *m) {
  uint8_t buf[NP_STUN_MAX_MESSAGE];
  size_t padded = (len + 3) & ~(size_t)3;
  size_t n = NP_STUN_HEADER_LEN + 4 + padded;
  assert_true(n <= sizeof buf);
  memset(buf, 0, n);
  buf[0] = 0x01; /* Binding success response */
  buf[1] = 0x01;
  buf[2] = (uint8_t)((n - 20) >> 8);
  buf[3] = (uint8_t)(n - 20);
  memcpy(buf + 4, "\x21\x12\xa4\x42", 4);
  memcpy(buf + 8, test_txid, NP_STUN_TXID_LEN);
  buf[20] = (uint8_t)(type >> 8);
  buf[21] = (uint8_t)type;
  buf[22] = (uint8_t)(len >> 8);
  buf[23] = (uint8_t)len;
  if (len)
    memcpy(buf + 24, value, len);
  return read_exact(buf, n, m);
}

static void test_malformed_attributes(void **state) {
  (void)state;
  np_stun_msg m;
  static uint8_t big[1000];
  memset(big, 'a', sizeof big);
  const uint8_t v4[8] = {0, 1, 0, 80, 10, 0, 0, 1};
  const uint8_t v6[20] = {0, 2, 0, 80, 0x20, 0x01, 0x0d, 0xb8};
  uint8_t v4_as_v6[20], fam3[8];
  memcpy(v4_as_v6, v4, 8);
  memset(v4_as_v6 + 8, 0, 12);
  memcpy(fam3, v4, 8);
  fam3[1] = 3;
  const uint16_t addr_types[] = {
      NP_STUN_ATTR_MAPPED_ADDRESS,  NP_STUN_ATTR_XOR_MAPPED_ADDRESS,
      NP_STUN_ATTR_OTHER_ADDRESS,   NP_STUN_ATTR_RESPONSE_ORIGIN,
      NP_STUN_ATTR_CHANGED_ADDRESS, NP_STUN_ATTR_SOURCE_ADDRESS};
  for (size_t i = 0; i < sizeof addr_types / sizeof addr_types[0]; i++) {
    uint16_t t = addr_types[i];
    assert_int_equal(read_one(t, v4, 8, &m), 0);
    assert_int_equal(read_one(t, v6, 20, &m), 0);
    assert_int_equal(read_one(t, v4, 7, &m), NP_ERR_PROTO);
    assert_int_equal(read_one(t, v4_as_v6, 20, &m), NP_ERR_PROTO); /* v4, len 20 */
    assert_int_equal(read_one(t, v6, 8, &m), NP_ERR_PROTO);        /* v6, len 8 */
    assert_int_equal(read_one(t, v6, 16, &m), NP_ERR_PROTO);
    assert_int_equal(read_one(t, fam3, 8, &m), NP_ERR_PROTO);
    assert_int_equal(read_one(t, NULL, 0, &m), NP_ERR_PROTO);
  }

  /* ERROR-CODE: class 3..6, number 0..99, reason <= 763 bytes. */
  uint8_t ec[4 + 764];
  memset(ec, 'r', sizeof ec);
  const struct {
    uint8_t cls, num;
    size_t len;
    int rc;
  } errs[] = {
      {4, 20, 4, 0},   {3, 0, 4, 0},    {6, 99, 4, 0}, {2, 0, 4, NP_ERR_PROTO},
      {7, 0, 4, NP_ERR_PROTO}, {4, 100, 4, NP_ERR_PROTO}, {4, 0, 3, NP_ERR_PROTO},
      {4, 0, 4 + 763, 0}, {4, 0, 4 + 764, NP_ERR_PROTO},
  };
  for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
    ec[0] = ec[1] = 0;
    ec[2] = errs[i].cls;
    ec[3] = errs[i].num;
    assert_int_equal(read_one(NP_STUN_ATTR_ERROR_CODE, ec, errs[i].len, &m), errs[i].rc);
  }
  /* Reserved bits above the class are ignored. */
  ec[2] = 0xf8 | 4;
  ec[3] = 1;
  assert_int_equal(read_one(NP_STUN_ATTR_ERROR_CODE, ec, 4, &m), 0);
  assert_int_equal(m.error_code, 401);

  /* Text maxima. */
  assert_int_equal(read_one(NP_STUN_ATTR_USERNAME, big, 513, &m), 0);
  assert_int_equal(read_one(NP_STUN_ATTR_USERNAME, big, 514, &m), NP_ERR_PROTO);
  const uint16_t texts[] = {NP_STUN_ATTR_SOFTWARE, NP_STUN_ATTR_REALM, NP_STUN_ATTR_NONCE};
  for (size_t i = 0; i < 3; i++) {
    assert_int_equal(read_one(texts[i], big, 763, &m), 0);
    assert_int_equal(read_one(texts[i], big, 764, &m), NP_ERR_PROTO);
  }

  /* UNKNOWN-ATTRIBUTES: pairs of bytes; more than we keep is fine. */
  assert_int_equal(read_one(NP_STUN_ATTR_UNKNOWN_ATTRIBUTES, big, 3, &m), NP_ERR_PROTO);
  assert_int_equal(read_one(NP_STUN_ATTR_UNKNOWN_ATTRIBUTES, big, 2 * 40, &m), 0);
  assert_int_equal(m.n_unknown_listed, NP_STUN_MAX_UNKNOWN);
  assert_int_equal(m.unknown_listed[0], 0x6161);

  /* CHANGE-REQUEST and RESPONSE-PORT are exactly 4 bytes. */
  assert_int_equal(read_one(NP_STUN_ATTR_CHANGE_REQUEST, big, 8, &m), NP_ERR_PROTO);
  assert_int_equal(read_one(NP_STUN_ATTR_CHANGE_REQUEST, big, 2, &m), NP_ERR_PROTO);
  assert_int_equal(read_one(NP_STUN_ATTR_RESPONSE_PORT, big, 2, &m), NP_ERR_PROTO);
  assert_int_equal(read_one(NP_STUN_ATTR_RESPONSE_PORT, big, 8, &m), NP_ERR_PROTO);
  const uint8_t cr[4] = {0xff, 0xff, 0xff, 0xff};
  assert_int_equal(read_one(NP_STUN_ATTR_CHANGE_REQUEST, cr, 4, &m), 0);
  assert_int_equal(m.change_request, NP_STUN_CHANGE_IP | NP_STUN_CHANGE_PORT);
}

static void test_unknown_attributes(void **state) {
  (void)state;
  uint8_t buf[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
  np__stun_put_u32(&w, 0x7f00, 1);  /* unknown, comprehension-required */
  np__stun_put_u32(&w, 0x8f00, 1);  /* unknown, optional: skipped */
  np__stun_put_u32(&w, 0x7f00, 2);  /* same type again: listed once */
  np__stun_put_bytes(&w, NP_STUN_ATTR_RESPONSE_ADDRESS, "\0\1\0\1\1\2\3\4", 8);
  for (uint16_t t = 0x7000; t < 0x7000 + 20; t++)
    np__stun_put_bytes(&w, t, NULL, 0);
  size_t n = finish(&w);
  np_stun_msg m;
  assert_int_equal(np__stun_read(buf, n, &m), 0);
  assert_int_equal(m.present, 0);
  /* 0x7f00, RESPONSE-ADDRESS (RFC 3489 only), then 20 more. */
  assert_int_equal(m.n_unknown_required, 22);
  assert_int_equal(m.unknown_required[0], 0x7f00);
  assert_int_equal(m.unknown_required[1], NP_STUN_ATTR_RESPONSE_ADDRESS);
  assert_int_equal(m.unknown_required[2], 0x7000);
  assert_int_equal(m.unknown_required[NP_STUN_MAX_UNKNOWN - 1],
                   0x7000 + NP_STUN_MAX_UNKNOWN - 3);
}

static void test_duplicates_first_wins(void **state) {
  (void)state;
  uint8_t buf[512];
  np_stun_writer w;
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_SUCCESS);
  np_addr a = addr("192.0.2.1:1"), b = addr("[2001:db8::1]:2");
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &a);
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &b);
  np__stun_put_bytes(&w, NP_STUN_ATTR_SOFTWARE, "first", 5);
  np__stun_put_bytes(&w, NP_STUN_ATTR_SOFTWARE, "second", 6);
  np__stun_put_error(&w, 400, "one");
  np__stun_put_error(&w, 500, "two");
  const uint16_t addr_types[] = {NP_STUN_ATTR_MAPPED_ADDRESS, NP_STUN_ATTR_OTHER_ADDRESS,
                                 NP_STUN_ATTR_RESPONSE_ORIGIN, NP_STUN_ATTR_CHANGED_ADDRESS,
                                 NP_STUN_ATTR_SOURCE_ADDRESS};
  for (size_t i = 0; i < 5; i++) {
    np__stun_put_addr(&w, addr_types[i], &a);
    np__stun_put_addr(&w, addr_types[i], &b);
  }
  const uint16_t text_types[] = {NP_STUN_ATTR_USERNAME, NP_STUN_ATTR_REALM,
                                 NP_STUN_ATTR_NONCE};
  for (size_t i = 0; i < 3; i++) {
    np__stun_put_bytes(&w, text_types[i], "first", 5);
    np__stun_put_bytes(&w, text_types[i], "second", 6);
  }
  const uint16_t u1[] = {1}, u2[] = {2, 3};
  np__stun_put_unknown(&w, u1, 1);
  np__stun_put_unknown(&w, u2, 2);
  np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, NP_STUN_CHANGE_IP);
  np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, NP_STUN_CHANGE_PORT);
  np__stun_put_response_port(&w, 1);
  np__stun_put_response_port(&w, 2);
  np__stun_put_bytes(&w, NP_STUN_ATTR_PADDING, "pp", 2);
  np__stun_put_bytes(&w, NP_STUN_ATTR_PADDING, "ppp", 3);
  size_t n = finish(&w);
  np_stun_msg m;
  assert_int_equal(np__stun_read(buf, n, &m), 0);
  assert_true(np_addr_equal(&m.xor_mapped, &a));
  assert_true(np_addr_equal(&m.mapped, &a));
  assert_true(np_addr_equal(&m.other_address, &a));
  assert_true(np_addr_equal(&m.response_origin, &a));
  assert_true(np_addr_equal(&m.changed_address, &a));
  assert_true(np_addr_equal(&m.source_address, &a));
  assert_text(m.software, m.software_len, "first");
  assert_text(m.username, m.username_len, "first");
  assert_text(m.realm, m.realm_len, "first");
  assert_text(m.nonce, m.nonce_len, "first");
  assert_int_equal(m.error_code, 400);
  assert_text(m.reason, m.reason_len, "one");
  assert_int_equal(m.n_unknown_listed, 1);
  assert_int_equal(m.unknown_listed[0], 1);
  assert_int_equal(m.change_request, NP_STUN_CHANGE_IP);
  assert_int_equal(m.response_port, 1);
  assert_int_equal(m.padding_len, 2);
}

/* RFC 3489: no magic cookie, 128-bit transaction ID, plain addresses. */
static void test_rfc3489(void **state) {
  (void)state;
  const uint8_t request[] = {
      0x00, 0x01, 0x00, 0x08, /* Binding Request, length 8 */
      0x5a, 0x6b, 0x7c, 0x8d, /* transaction ID (16 bytes)... */
      0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
      0x09, 0x0a, 0x0b, 0x0c, 0x00, 0x03, 0x00, 0x04, /* CHANGE-REQUEST */
      0x00, 0x00, 0x00, 0x06,                         /* change IP and port */
  };
  np_stun_msg m;
  assert_int_equal(read_exact(request, sizeof request, &m), 0);
  assert_true(m.rfc3489);
  assert_int_equal(m.cookie, 0x5a6b7c8d);
  assert_int_equal(m.txid[0], 0x01);
  assert_int_equal(m.txid[11], 0x0c);
  assert_int_equal(m.present, NP_STUN_HAS_CHANGE_REQUEST);
  assert_int_equal(m.change_request, NP_STUN_CHANGE_IP | NP_STUN_CHANGE_PORT);
  assert_true(np__stun_is_stun(request, sizeof request));

  /* A server echoes the 16-byte transaction and answers the RFC 3489 way. */
  uint8_t buf[128];
  np_stun_writer w;
  np__stun_writer_init(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_SUCCESS,
                      m.cookie, m.txid);
  np_addr mapped = addr("192.0.2.50:6000"), src = addr("192.0.2.1:3478"),
          chg = addr("192.0.2.2:3479");
  np__stun_put_addr(&w, NP_STUN_ATTR_MAPPED_ADDRESS, &mapped);
  np__stun_put_addr(&w, NP_STUN_ATTR_SOURCE_ADDRESS, &src);
  np__stun_put_addr(&w, NP_STUN_ATTR_CHANGED_ADDRESS, &chg);
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &mapped);
  size_t n = finish(&w);
  assert_memory_equal(buf + 4, request + 4, 16);
  np_stun_msg r;
  assert_int_equal(read_exact(buf, n, &r), 0);
  assert_true(r.rfc3489);
  assert_int_equal(r.cls, NP_STUN_SUCCESS);
  assert_true(np_addr_equal(&r.mapped, &mapped));
  assert_true(np_addr_equal(&r.source_address, &src));
  assert_true(np_addr_equal(&r.changed_address, &chg));
  assert_true(np_addr_equal(&r.xor_mapped, &mapped));
}

static void test_method_and_class(void **state) {
  (void)state;
  /* Method 0x0BC with each class: bits interleave as in RFC 8489 §5 (every
   * field of the interleave is non-zero; methods from 0x100 on would make
   * the first byte exceed 3, which is not STUN on a shared socket: RFC 7983,
   * refused below). */
  const uint16_t classes[] = {NP_STUN_REQUEST, NP_STUN_INDICATION, NP_STUN_SUCCESS,
                              NP_STUN_ERROR};
  for (size_t i = 0; i < 4; i++) {
    uint16_t method = 0x0BC;
    uint16_t type = (uint16_t)((method & 0x000F) | ((method & 0x0070) << 1) |
                               ((method & 0x0F80) << 2) | classes[i]);
    uint8_t buf[32];
    np_stun_writer w;
    start(&w, buf, sizeof buf, type);
    size_t n = finish(&w);
    np_stun_msg m;
    assert_int_equal(np__stun_read(buf, n, &m), 0);
    assert_int_equal(m.type, type);
    assert_int_equal(m.method, method);
    assert_int_equal(m.cls, classes[i]);
    /* The same with method 0xABC: first byte 0x2B, another protocol. */
    uint16_t high = (uint16_t)(type | ((0xA00 & 0x0F80) << 2));
    buf[0] = (uint8_t)(high >> 8);
    assert_true(buf[0] > 3);
    assert_int_equal(np__stun_read(buf, n, &m), NP_ERR_PROTO);
  }
}

/* ------------------------------------------------------------------------ */
/* Writer limits                                                             */
/* ------------------------------------------------------------------------ */

/* Writes a message using every put function; returns finish()'s result. */
static int write_everything(uint8_t *buf, size_t cap) {
  np_stun_writer w;
  start(&w, buf, cap, NP_STUN_BINDING | NP_STUN_ERROR);
  np_addr a4 = addr("192.0.2.1:1"), a6 = addr("[2001:db8::1]:2");
  const uint16_t unk[] = {0x0024};
  np__stun_put_addr(&w, NP_STUN_ATTR_MAPPED_ADDRESS, &a4);
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &a6);
  np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, NP_STUN_CHANGE_PORT);
  np__stun_put_response_port(&w, 1234);
  np__stun_put_bytes(&w, NP_STUN_ATTR_SOFTWARE, "odd", 3);
  np__stun_put_error(&w, 420, "Unknown");
  np__stun_put_unknown(&w, unk, 1);
  np__stun_put_integrity(&w, (const uint8_t *)"k", 1);
  np__stun_put_integrity_sha256(&w, (const uint8_t *)"k", 1, 16);
  np__stun_put_fingerprint(&w);
  return np__stun_writer_finish(&w);
}

static void test_writer_overflow(void **state) {
  (void)state;
  uint8_t full[512];
  int need = write_everything(full, sizeof full);
  assert_true(need > NP_STUN_HEADER_LEN);
  np_stun_msg m;
  assert_int_equal(np__stun_read(full, (size_t)need, &m), 0);
  uint8_t buf[512 + 16];
  for (size_t cap = 0; cap < (size_t)need; cap++) {
    memset(buf, 0xA5, sizeof buf);
    assert_int_equal(write_everything(buf, cap), NP_ERR_NOSPACE);
    for (size_t i = cap; i < sizeof buf; i++)
      if (buf[i] != 0xA5)
        fail_msg("capacity %zu: byte %zu written", cap, i);
  }
  assert_int_equal(write_everything(buf, (size_t)need), need);
  assert_memory_equal(buf, full, (size_t)need);
}

static void test_writer_invalid(void **state) {
  (void)state;
  uint8_t buf[128];
  np_stun_writer w;
  np_addr unset;
  memset(&unset, 0, sizeof unset);
  np_addr a = addr("192.0.2.1:1");

  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_ERROR);
  np__stun_put_error(&w, 299, "x");
  assert_int_equal(np__stun_writer_finish(&w), NP_ERR_INVAL);
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_ERROR);
  np__stun_put_error(&w, 700, "x");
  assert_int_equal(np__stun_writer_finish(&w), NP_ERR_INVAL);
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_ERROR);
  np__stun_put_addr(&w, NP_STUN_ATTR_MAPPED_ADDRESS, &unset);
  assert_int_equal(np__stun_writer_finish(&w), NP_ERR_INVAL);
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_ERROR);
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, NULL);
  assert_int_equal(np__stun_writer_finish(&w), NP_ERR_INVAL);
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_ERROR);
  np__stun_put_bytes(&w, NP_STUN_ATTR_SOFTWARE, NULL, 3);
  assert_int_equal(np__stun_writer_finish(&w), NP_ERR_INVAL);
  static const uint16_t many[NP_STUN_MAX_UNKNOWN + 1];
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_ERROR);
  np__stun_put_unknown(&w, many, NP_STUN_MAX_UNKNOWN + 1);
  assert_int_equal(np__stun_writer_finish(&w), NP_ERR_INVAL);
  static const char long_name[NP_STUN_MAX_USERNAME + 1];
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_ERROR);
  np__stun_put_bytes(&w, NP_STUN_ATTR_USERNAME, long_name, sizeof long_name);
  assert_int_equal(np__stun_writer_finish(&w), NP_ERR_INVAL);
  /* Top two type bits, NULL buffer. */
  start(&w, buf, sizeof buf, 0xC001);
  assert_int_equal(np__stun_writer_finish(&w), NP_ERR_INVAL);
  np__stun_writer_init(&w, NULL, 100, NP_STUN_BINDING, NP_STUN_MAGIC_COOKIE, test_txid);
  assert_int_equal(np__stun_writer_finish(&w), NP_ERR_INVAL);

  /* After an error, later puts are no-ops: the length stays put. */
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_SUCCESS);
  np__stun_put_addr(&w, NP_STUN_ATTR_MAPPED_ADDRESS, &unset);
  size_t len = w.len;
  np__stun_put_addr(&w, NP_STUN_ATTR_MAPPED_ADDRESS, &a);
  np__stun_put_fingerprint(&w);
  assert_int_equal(w.len, len);
  assert_int_equal(np__stun_writer_finish(&w), NP_ERR_INVAL);
}

/* The header length is current after every put, so a message can be sent
 * at any point. */
static void test_writer_length_current(void **state) {
  (void)state;
  uint8_t buf[128];
  np_stun_writer w;
  start(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST);
  assert_int_equal(w.len, 20);
  assert_int_equal(buf[2] << 8 | buf[3], 0);
  np__stun_put_bytes(&w, NP_STUN_ATTR_USERNAME, "u", 1);
  assert_int_equal(buf[2] << 8 | buf[3], 8);
  np_stun_msg m;
  assert_int_equal(np__stun_read(buf, w.len, &m), 0);
  np__stun_put_response_port(&w, 7);
  assert_int_equal(buf[2] << 8 | buf[3], 16);
  assert_int_equal(np__stun_read(buf, w.len, &m), 0);
  assert_int_equal(m.response_port, 7);
  assert_memory_equal(buf + 4, "\x21\x12\xa4\x42", 4);
  assert_memory_equal(buf + 8, test_txid, 12);
}

static void test_attr_name(void **state) {
  (void)state;
  assert_string_equal(np__stun_attr_name(NP_STUN_ATTR_XOR_MAPPED_ADDRESS),
                      "XOR-MAPPED-ADDRESS");
  assert_string_equal(np__stun_attr_name(NP_STUN_ATTR_FINGERPRINT), "FINGERPRINT");
  assert_string_equal(np__stun_attr_name(NP_STUN_ATTR_OTHER_ADDRESS), "OTHER-ADDRESS");
  assert_null(np__stun_attr_name(0x7f7f));
}

/* RFC 7983 §7 demultiplexing: a first byte 0..3 is STUN; 4..63 is not,
 * even when the rest looks like a STUN header (length matching the
 * datagram, cookie in place): an application payload that starts 0x04
 * or 0x3f must reach the application. */
static void test_is_stun_rfc7983(void **state) {
  (void)state;
  uint8_t buf[sizeof rfc5769_response_v4];
  for (int first = 0; first < 256; first++) {
    memcpy(buf, rfc5769_response_v4, sizeof buf);
    buf[0] = (uint8_t)first;
    bool want = first <= 3;
    if (np__stun_is_stun(buf, sizeof buf) != want)
      fail_msg("first byte 0x%02x: is_stun %d, want %d", first, !want, want);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rfc5769_request),
      cmocka_unit_test(test_rfc5769_response_v4),
      cmocka_unit_test(test_rfc5769_response_v6),
      cmocka_unit_test(test_rfc5769_long_term),
      cmocka_unit_test(test_addr_round_trip),
      cmocka_unit_test(test_addr_wire_format),
      cmocka_unit_test(test_all_attributes_round_trip),
      cmocka_unit_test(test_error_code_range),
      cmocka_unit_test(test_padding_attribute),
      cmocka_unit_test(test_integrity_sha256),
      cmocka_unit_test(test_integrity_sha1_bad_length),
      cmocka_unit_test(test_both_integrities),
      cmocka_unit_test(test_integrity_empty_key_and_absent),
      cmocka_unit_test(test_fingerprint_tamper),
      cmocka_unit_test(test_fingerprint_must_be_last),
      cmocka_unit_test(test_after_integrity_ignored),
      cmocka_unit_test(test_truncated),
      cmocka_unit_test(test_bad_header),
      cmocka_unit_test(test_is_stun_rfc7983),
      cmocka_unit_test(test_attr_overrun),
      cmocka_unit_test(test_malformed_attributes),
      cmocka_unit_test(test_unknown_attributes),
      cmocka_unit_test(test_duplicates_first_wins),
      cmocka_unit_test(test_rfc3489),
      cmocka_unit_test(test_method_and_class),
      cmocka_unit_test(test_writer_overflow),
      cmocka_unit_test(test_writer_invalid),
      cmocka_unit_test(test_writer_length_current),
      cmocka_unit_test(test_attr_name),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
