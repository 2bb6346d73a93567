/*
 * libFuzzer harness for the STUN codec.
 *
 * Decodes the input; when it is accepted, checks the decoded fields stay
 * inside the input, runs both integrity checks with a fixed key, then
 * re-encodes everything the message carried with the writer, decodes that
 * and requires the same values back (decode(encode(x)) == x), with a
 * MESSAGE-INTEGRITY and FINGERPRINT that verify. Any broken invariant
 * aborts, which libFuzzer (or the replay main) reports as a crash.
 */
#include "fuzz_check.h"
#include "stun/stun.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t fuzz_key[] = "VOkJxbRl1RmTxUk/WvJxBt";
#define FUZZ_KEY_LEN (sizeof fuzz_key - 1)

/* p[0..n) lies inside data[0..size) (or is empty). */
static bool inside(const uint8_t *data, size_t size, const uint8_t *p, size_t n) {
  if (n == 0)
    return true;
  return p != NULL && p >= data && n <= size && (size_t)(p - data) <= size - n;
}

static bool same_bytes(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) {
  return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

static void check_fields(const uint8_t *data, size_t size, const np_stun_msg *m) {
  CHECK(size >= NP_STUN_HEADER_LEN && size <= NP_STUN_MAX_MESSAGE);
  CHECK(np__stun_is_stun(data, size));
  CHECK((size_t)m->length + NP_STUN_HEADER_LEN == size);
  CHECK((m->type & 0xC000) == 0);
  CHECK(m->rfc3489 == (m->cookie != NP_STUN_MAGIC_COOKIE));
  CHECK(inside(data, size, m->username, m->username_len));
  CHECK(inside(data, size, m->software, m->software_len));
  CHECK(inside(data, size, m->realm, m->realm_len));
  CHECK(inside(data, size, m->nonce, m->nonce_len));
  CHECK(inside(data, size, m->reason, m->reason_len));
  CHECK(m->username_len <= NP_STUN_MAX_USERNAME);
  CHECK(m->reason_len <= NP_STUN_MAX_REASON);
  CHECK(m->n_unknown_listed <= NP_STUN_MAX_UNKNOWN);
  if (m->present & NP_STUN_HAS_ERROR_CODE)
    CHECK(m->error_code >= 300 && m->error_code <= 699);
  if (m->present & NP_STUN_HAS_INTEGRITY)
    CHECK(m->integrity_offset >= NP_STUN_HEADER_LEN &&
          m->integrity_offset + 24 <= size);
  if (m->present & NP_STUN_HAS_INTEGRITY_SHA256)
    CHECK(m->integrity_sha256_len >= 16 && m->integrity_sha256_len <= 32 &&
          m->integrity_sha256_len % 4 == 0 &&
          m->integrity_sha256_offset + 4 + m->integrity_sha256_len <= size);
}

static void check_integrity(const uint8_t *data, size_t size, const np_stun_msg *m) {
  int rc = np__stun_check_integrity(data, size, m, fuzz_key, FUZZ_KEY_LEN);
  if (m->present & NP_STUN_HAS_INTEGRITY)
    CHECK(rc == 0 || rc == NP_ERR_AUTH);
  else
    CHECK(rc == NP_ERR_PROTO);
  rc = np__stun_check_integrity_sha256(data, size, m, fuzz_key, FUZZ_KEY_LEN);
  if (m->present & NP_STUN_HAS_INTEGRITY_SHA256)
    CHECK(rc == 0 || rc == NP_ERR_AUTH);
  else
    CHECK(rc == NP_ERR_PROTO);
}

static const struct {
  uint16_t type;
  uint32_t bit;
  size_t offset;
} addr_attrs[] = {
    {NP_STUN_ATTR_MAPPED_ADDRESS, NP_STUN_HAS_MAPPED, offsetof(np_stun_msg, mapped)},
    {NP_STUN_ATTR_XOR_MAPPED_ADDRESS, NP_STUN_HAS_XOR_MAPPED,
     offsetof(np_stun_msg, xor_mapped)},
    {NP_STUN_ATTR_OTHER_ADDRESS, NP_STUN_HAS_OTHER_ADDRESS,
     offsetof(np_stun_msg, other_address)},
    {NP_STUN_ATTR_RESPONSE_ORIGIN, NP_STUN_HAS_RESPONSE_ORIGIN,
     offsetof(np_stun_msg, response_origin)},
    {NP_STUN_ATTR_CHANGED_ADDRESS, NP_STUN_HAS_CHANGED_ADDRESS,
     offsetof(np_stun_msg, changed_address)},
    {NP_STUN_ATTR_SOURCE_ADDRESS, NP_STUN_HAS_SOURCE_ADDRESS,
     offsetof(np_stun_msg, source_address)},
};

static const np_addr *addr_of(const np_stun_msg *m, size_t i) {
  return (const np_addr *)((const char *)m + addr_attrs[i].offset);
}

static const struct {
  uint16_t type;
  uint32_t bit;
  size_t ptr, len;
} text_attrs[] = {
    {NP_STUN_ATTR_USERNAME, NP_STUN_HAS_USERNAME, offsetof(np_stun_msg, username),
     offsetof(np_stun_msg, username_len)},
    {NP_STUN_ATTR_SOFTWARE, NP_STUN_HAS_SOFTWARE, offsetof(np_stun_msg, software),
     offsetof(np_stun_msg, software_len)},
    {NP_STUN_ATTR_REALM, NP_STUN_HAS_REALM, offsetof(np_stun_msg, realm),
     offsetof(np_stun_msg, realm_len)},
    {NP_STUN_ATTR_NONCE, NP_STUN_HAS_NONCE, offsetof(np_stun_msg, nonce),
     offsetof(np_stun_msg, nonce_len)},
};

static const uint8_t *text_of(const np_stun_msg *m, size_t i, size_t *len) {
  const uint8_t *p;
  memcpy(&p, (const char *)m + text_attrs[i].ptr, sizeof p);
  memcpy(len, (const char *)m + text_attrs[i].len, sizeof *len);
  return p;
}

static void re_encode(const np_stun_msg *m) {
  uint8_t out[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  np__stun_writer_init(&w, out, sizeof out, m->type, m->cookie, m->txid);
  CHECK(w.err == 0 && w.pad_byte == 0);

  for (size_t i = 0; i < sizeof addr_attrs / sizeof addr_attrs[0]; i++) {
    if (!(m->present & addr_attrs[i].bit))
      continue;
    if (addr_attrs[i].type == NP_STUN_ATTR_XOR_MAPPED_ADDRESS)
      np__stun_put_xor_addr(&w, addr_attrs[i].type, addr_of(m, i));
    else
      np__stun_put_addr(&w, addr_attrs[i].type, addr_of(m, i));
  }
  for (size_t i = 0; i < sizeof text_attrs / sizeof text_attrs[0]; i++) {
    if (!(m->present & text_attrs[i].bit))
      continue;
    size_t len;
    const uint8_t *p = text_of(m, i, &len);
    np__stun_put_bytes(&w, text_attrs[i].type, p, len);
  }
  if (m->present & NP_STUN_HAS_ERROR_CODE) {
    /* put_error takes a C string; a reason with a NUL byte is cut there. */
    char reason[NP_STUN_MAX_REASON + 1];
    memcpy(reason, m->reason, m->reason_len);
    reason[m->reason_len] = '\0';
    np__stun_put_error(&w, m->error_code, reason);
  }
  if (m->present & NP_STUN_HAS_UNKNOWN_ATTRS)
    np__stun_put_unknown(&w, m->unknown_listed, m->n_unknown_listed);
  if (m->present & NP_STUN_HAS_CHANGE_REQUEST)
    np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, m->change_request);
  if (m->present & NP_STUN_HAS_RESPONSE_PORT)
    np__stun_put_response_port(&w, m->response_port);
  if (m->present & NP_STUN_HAS_PADDING) {
    static const uint8_t zeros[NP_STUN_MAX_MESSAGE];
    np__stun_put_bytes(&w, NP_STUN_ATTR_PADDING, zeros, m->padding_len);
  }
  np__stun_put_integrity(&w, fuzz_key, FUZZ_KEY_LEN);
  np__stun_put_fingerprint(&w);
  int n = np__stun_writer_finish(&w);
  /* Each attribute re-encodes to the size it had, but the integrity and
   * FINGERPRINT we append may not fit in a message that was already full. */
  if (n == NP_ERR_NOSPACE)
    return;
  CHECK(n >= NP_STUN_HEADER_LEN);

  np_stun_msg r;
  CHECK(np__stun_read(out, (size_t)n, &r) == 0);
  CHECK(np__stun_check_integrity(out, (size_t)n, &r, fuzz_key, FUZZ_KEY_LEN) == 0);
  CHECK(np__stun_check_integrity(out, (size_t)n, &r, fuzz_key, FUZZ_KEY_LEN - 1) ==
        NP_ERR_AUTH);
  CHECK(r.type == m->type && r.method == m->method && r.cls == m->cls);
  CHECK(r.cookie == m->cookie && r.rfc3489 == m->rfc3489);
  CHECK(memcmp(r.txid, m->txid, NP_STUN_TXID_LEN) == 0);
  uint32_t carried = m->present & ~(uint32_t)(NP_STUN_HAS_INTEGRITY |
                                               NP_STUN_HAS_INTEGRITY_SHA256 |
                                               NP_STUN_HAS_FINGERPRINT);
  CHECK(r.present == (carried | NP_STUN_HAS_INTEGRITY | NP_STUN_HAS_FINGERPRINT));
  for (size_t i = 0; i < sizeof addr_attrs / sizeof addr_attrs[0]; i++)
    if (m->present & addr_attrs[i].bit)
      CHECK(np_addr_equal(addr_of(&r, i), addr_of(m, i)));
  for (size_t i = 0; i < sizeof text_attrs / sizeof text_attrs[0]; i++) {
    if (!(m->present & text_attrs[i].bit))
      continue;
    size_t a_len, b_len;
    const uint8_t *a = text_of(m, i, &a_len), *b = text_of(&r, i, &b_len);
    CHECK(same_bytes(a, a_len, b, b_len));
  }
  if (m->present & NP_STUN_HAS_ERROR_CODE) {
    CHECK(r.error_code == m->error_code);
    size_t cut = strnlen((const char *)m->reason, m->reason_len);
    CHECK(same_bytes(r.reason, r.reason_len, m->reason, cut));
  }
  CHECK(r.n_unknown_listed == m->n_unknown_listed);
  CHECK(m->n_unknown_listed == 0 ||
        memcmp(r.unknown_listed, m->unknown_listed,
               m->n_unknown_listed * sizeof m->unknown_listed[0]) == 0);
  CHECK(r.change_request == m->change_request);
  CHECK(r.response_port == m->response_port);
  CHECK(r.padding_len == m->padding_len);
  CHECK(r.n_unknown_required == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  np_stun_msg m;
  bool looks_stun = np__stun_is_stun(data, size);
  int rc = np__stun_read(data, size, &m);
  if (rc != 0) {
    CHECK(rc == NP_ERR_PROTO);
    CHECK(m.present == 0);
    return 0;
  }
  CHECK(looks_stun);
  check_fields(data, size, &m);
  check_integrity(data, size, &m);
  re_encode(&m);
  return 0;
}
