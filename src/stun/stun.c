/*
 * STUN message codec: RFC 8489 (and RFC 5389 before it), the RFC 5780
 * behaviour-discovery attributes, and enough RFC 3489 to talk to old
 * servers and clients.
 *
 * Pure: no sockets, clocks or allocation. Fields are read byte by byte
 * (util/bytes.h), never through casts to packed structs, so alignment and
 * strict aliasing never matter and every read is bounds-checked first.
 */
#include "stun/stun.h"
#include "util/bytes.h"

#include <arpa/inet.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <string.h>
#include <zlib.h>

/* RFC 8489 §14.7: "the CRC-32 ... XOR'ed with the 32-bit value 0x5354554e". */
#define FINGERPRINT_XOR 0x5354554eu
#define ATTR_HEADER_LEN 4
#define SHA1_LEN 20
#define SHA256_LEN 32
#define SHA256_MIN_TRUNC 16
#define FINGERPRINT_LEN 4
#define MD5_LEN 16
/* Bound on username ":" realm ":" password for the long-term key; the first
 * two have RFC maxima (513 and 763 bytes), which leaves ample room for any
 * sane password. */
#define LONG_TERM_INPUT_MAX 2048
/* ERROR-CODE value: 2 reserved bytes, class, number, then the reason. */
#define ERROR_CODE_FIXED_LEN 4
/* RFC 8489 §14.9/§14.10/§14.2: REALM, NONCE and SOFTWARE are "less than 128
 * characters (which can be as long as 763 bytes)". */
#define MAX_TEXT_LEN 763
/* Address values: reserved byte, family byte, port, then 4 or 16 bytes. */
#define ADDR_V4_LEN 8
#define ADDR_V6_LEN 20
#define FAMILY_IPV4 0x01
#define FAMILY_IPV6 0x02

static size_t pad4(size_t n) { return (n + 3u) & ~(size_t)3u; }

/* Compares without an early exit, so a forger learns nothing from timing
 * about how many leading MAC bytes were right. */
static bool equal_ct(const uint8_t *a, const uint8_t *b, size_t n) {
  uint8_t diff = 0;
  for (size_t i = 0; i < n; i++)
    diff |= (uint8_t)(a[i] ^ b[i]);
  return diff == 0;
}

/* The first four bytes of the transaction field, as the XOR mask for
 * ports and IPv4 addresses. RFC 8489 messages carry the magic cookie there;
 * for RFC 3489 messages we use whatever bytes are there, which is what the
 * pre-standard XOR-MAPPED-ADDRESS of RFC 3489bis drafts did and keeps
 * encoding and decoding symmetric. */
static void xor_mask(const uint8_t *msg_start, uint8_t mask[16]) {
  /* RFC 8489 §14.2: for IPv6, X-Address is the address XORed with "the
   * concatenation of the magic cookie and the 96-bit transaction ID". */
  memcpy(mask, msg_start + 4, 16);
}

/* ------------------------------------------------------------------------ */
/* Decoder                                                                   */
/* ------------------------------------------------------------------------ */

bool np__stun_is_stun(const uint8_t *buf, size_t len) {
  if (!buf || len < NP_STUN_HEADER_LEN)
    return false;
  /* RFC 7983 §7: "If the value of the first byte is in the range 0 to 3
   * (inclusive), then the packet is STUN." 4..63 is not: checking only
   * RFC 8489's two zero bits took application payloads starting 0x04..0x3f
   * for STUN and swallowed them. */
  if (buf[0] > 3)
    return false;
  size_t body = rd16(buf + 2);
  return body % 4 == 0 && body == len - NP_STUN_HEADER_LEN;
}

/*
 * Address attributes (RFC 8489 §14.1):
 *
 *   0                   1                   2                   3
 *   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |0 0 0 0 0 0 0 0|    Family     |           Port                |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  |                 Address (32 bits or 128 bits)                 |
 *  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * mask is NULL for plain addresses, else the 16-byte cookie+txid mask.
 */
static int read_addr(const uint8_t *v, size_t vlen, const uint8_t *mask,
                     np_addr *out) {
  if (vlen < 4)
    return NP_ERR_PROTO;
  uint8_t family = v[1];
  uint16_t port = rd16(v + 2);
  if (mask)
    port ^= rd16(mask);
  memset(out, 0, sizeof *out);
  if (family == FAMILY_IPV4) {
    if (vlen != ADDR_V4_LEN)
      return NP_ERR_PROTO;
    uint8_t ip[4];
    for (size_t i = 0; i < sizeof ip; i++)
      ip[i] = (uint8_t)(v[4 + i] ^ (mask ? mask[i] : 0));
    out->u.in4.sin_family = AF_INET;
    out->u.in4.sin_port = htons(port);
    memcpy(&out->u.in4.sin_addr, ip, sizeof ip);
    return 0;
  }
  if (family == FAMILY_IPV6) {
    if (vlen != ADDR_V6_LEN)
      return NP_ERR_PROTO;
    uint8_t ip[16];
    for (size_t i = 0; i < sizeof ip; i++)
      ip[i] = (uint8_t)(v[4 + i] ^ (mask ? mask[i] : 0));
    out->u.in6.sin6_family = AF_INET6;
    out->u.in6.sin6_port = htons(port);
    memcpy(&out->u.in6.sin6_addr, ip, sizeof ip);
    return 0;
  }
  /* RFC 8489 §14.1: "The address family can take on the following values:
   * 0x01:IPv4 0x02:IPv6"; nothing else is defined. */
  memset(out, 0, sizeof *out);
  return NP_ERR_PROTO;
}

static void record_unknown_required(np_stun_msg *msg, uint16_t type) {
  /* A type repeated in one message is one unknown attribute: listing it
   * twice in a 420 would only waste space. */
  size_t recorded = msg->n_unknown_required < NP_STUN_MAX_UNKNOWN
                        ? msg->n_unknown_required
                        : NP_STUN_MAX_UNKNOWN;
  for (size_t i = 0; i < recorded; i++)
    if (msg->unknown_required[i] == type)
      return;
  if (msg->n_unknown_required < NP_STUN_MAX_UNKNOWN)
    msg->unknown_required[msg->n_unknown_required] = type;
  msg->n_unknown_required++;
}

/* Decodes a text-like attribute (USERNAME, SOFTWARE, REALM, NONCE) whose
 * length is bounded by max. */
static int read_text(const uint8_t *v, size_t vlen, size_t max,
                     const uint8_t **out, size_t *out_len) {
  if (vlen > max)
    return NP_ERR_PROTO;
  *out = v;
  *out_len = vlen;
  return 0;
}

/* Interprets one attribute whose header and value lie inside the message.
 * pos is the offset of the attribute header from the message start. */
static int read_attr(const uint8_t *buf, size_t pos, uint16_t type,
                     const uint8_t *v, size_t vlen, np_stun_msg *msg) {
  uint8_t mask[16];
  switch (type) {
  case NP_STUN_ATTR_MAPPED_ADDRESS:
    if (msg->present & NP_STUN_HAS_MAPPED)
      return 0;
    msg->present |= NP_STUN_HAS_MAPPED;
    return read_addr(v, vlen, NULL, &msg->mapped);
  case NP_STUN_ATTR_XOR_MAPPED_ADDRESS:
    if (msg->present & NP_STUN_HAS_XOR_MAPPED)
      return 0;
    msg->present |= NP_STUN_HAS_XOR_MAPPED;
    xor_mask(buf, mask);
    return read_addr(v, vlen, mask, &msg->xor_mapped);
  case NP_STUN_ATTR_OTHER_ADDRESS:
    if (msg->present & NP_STUN_HAS_OTHER_ADDRESS)
      return 0;
    msg->present |= NP_STUN_HAS_OTHER_ADDRESS;
    return read_addr(v, vlen, NULL, &msg->other_address);
  case NP_STUN_ATTR_RESPONSE_ORIGIN:
    if (msg->present & NP_STUN_HAS_RESPONSE_ORIGIN)
      return 0;
    msg->present |= NP_STUN_HAS_RESPONSE_ORIGIN;
    return read_addr(v, vlen, NULL, &msg->response_origin);
  case NP_STUN_ATTR_CHANGED_ADDRESS:
    if (msg->present & NP_STUN_HAS_CHANGED_ADDRESS)
      return 0;
    msg->present |= NP_STUN_HAS_CHANGED_ADDRESS;
    return read_addr(v, vlen, NULL, &msg->changed_address);
  case NP_STUN_ATTR_SOURCE_ADDRESS:
    if (msg->present & NP_STUN_HAS_SOURCE_ADDRESS)
      return 0;
    msg->present |= NP_STUN_HAS_SOURCE_ADDRESS;
    return read_addr(v, vlen, NULL, &msg->source_address);

  case NP_STUN_ATTR_USERNAME:
    if (msg->present & NP_STUN_HAS_USERNAME)
      return 0;
    msg->present |= NP_STUN_HAS_USERNAME;
    /* RFC 5389 §15.3: "It MUST contain a UTF-8 [RFC3629] encoded sequence
     * of less than 513 bytes"; RFC 8489 tightened it to 509 for senders, and
     * we accept the older, larger bound. */
    return read_text(v, vlen, NP_STUN_MAX_USERNAME, &msg->username,
                     &msg->username_len);
  case NP_STUN_ATTR_SOFTWARE:
    if (msg->present & NP_STUN_HAS_SOFTWARE)
      return 0;
    msg->present |= NP_STUN_HAS_SOFTWARE;
    return read_text(v, vlen, MAX_TEXT_LEN, &msg->software,
                     &msg->software_len);
  case NP_STUN_ATTR_REALM:
    if (msg->present & NP_STUN_HAS_REALM)
      return 0;
    msg->present |= NP_STUN_HAS_REALM;
    return read_text(v, vlen, MAX_TEXT_LEN, &msg->realm, &msg->realm_len);
  case NP_STUN_ATTR_NONCE:
    if (msg->present & NP_STUN_HAS_NONCE)
      return 0;
    msg->present |= NP_STUN_HAS_NONCE;
    return read_text(v, vlen, MAX_TEXT_LEN, &msg->nonce, &msg->nonce_len);
  case NP_STUN_ATTR_PADDING:
    if (msg->present & NP_STUN_HAS_PADDING)
      return 0;
    msg->present |= NP_STUN_HAS_PADDING;
    msg->padding_len = vlen;
    return 0;

  case NP_STUN_ATTR_ERROR_CODE: {
    if (msg->present & NP_STUN_HAS_ERROR_CODE)
      return 0;
    msg->present |= NP_STUN_HAS_ERROR_CODE;
    /*
     *  0                   1                   2                   3
     *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
     * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
     * |           Reserved, should be 0         |Class|     Number    |
     * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
     * |      Reason Phrase (variable)                                ..
     */
    if (vlen < ERROR_CODE_FIXED_LEN)
      return NP_ERR_PROTO;
    unsigned cls = v[2] & 0x07u;
    unsigned number = v[3];
    /* "The Class represents the hundreds digit of the error code. The value
     * MUST be between 3 and 6. The Number represents the binary encoding of
     * the error code modulo 100, and its value MUST be between 0 and 99." */
    if (cls < 3 || cls > 6 || number > 99)
      return NP_ERR_PROTO;
    /* "The reason phrase MUST be a UTF-8-encoded sequence of fewer than 128
     * characters (which can be as long as 509 bytes when encoding them or
     * 763 bytes when decoding them)." */
    if (vlen - ERROR_CODE_FIXED_LEN > NP_STUN_MAX_REASON)
      return NP_ERR_PROTO;
    msg->error_code = (uint16_t)(cls * 100 + number);
    msg->reason = v + ERROR_CODE_FIXED_LEN;
    msg->reason_len = vlen - ERROR_CODE_FIXED_LEN;
    return 0;
  }

  case NP_STUN_ATTR_UNKNOWN_ATTRIBUTES:
    if (msg->present & NP_STUN_HAS_UNKNOWN_ATTRS)
      return 0;
    msg->present |= NP_STUN_HAS_UNKNOWN_ATTRS;
    /* A list of 16-bit types: an odd length cannot be one. We keep the
     * first NP_STUN_MAX_UNKNOWN entries; n_unknown_listed counts those kept,
     * so it is always safe as a loop bound. */
    if (vlen % 2 != 0)
      return NP_ERR_PROTO;
    for (size_t i = 0; i < vlen / 2 && i < NP_STUN_MAX_UNKNOWN; i++)
      msg->unknown_listed[msg->n_unknown_listed++] = rd16(v + 2 * i);
    return 0;

  case NP_STUN_ATTR_CHANGE_REQUEST:
    if (msg->present & NP_STUN_HAS_CHANGE_REQUEST)
      return 0;
    msg->present |= NP_STUN_HAS_CHANGE_REQUEST;
    /* RFC 5780 §7.2: a 32-bit value, of which only the A and B flags are
     * defined; the rest "MUST be set to zero on transmission and ignored
     * on reception". */
    if (vlen != 4)
      return NP_ERR_PROTO;
    msg->change_request = rd32(v) & (NP_STUN_CHANGE_IP | NP_STUN_CHANGE_PORT);
    return 0;

  case NP_STUN_ATTR_RESPONSE_PORT:
    if (msg->present & NP_STUN_HAS_RESPONSE_PORT)
      return 0;
    msg->present |= NP_STUN_HAS_RESPONSE_PORT;
    /* RFC 5780 §7.5: "a 16-bit port followed by 16 bits of padding". */
    if (vlen != 4)
      return NP_ERR_PROTO;
    msg->response_port = rd16(v);
    return 0;

  case NP_STUN_ATTR_MESSAGE_INTEGRITY:
    /* RFC 8489 §14.5: "the HMAC will be 20 bytes". */
    if (vlen != SHA1_LEN)
      return NP_ERR_PROTO;
    msg->present |= NP_STUN_HAS_INTEGRITY;
    msg->integrity_offset = pos;
    return 0;

  case NP_STUN_ATTR_MESSAGE_INTEGRITY_SHA256:
    /* RFC 8489 §14.6: "The value will be at most 32 bytes, but it MUST be at
     * least 16 bytes and MUST be a multiple of 4 bytes." */
    if (vlen < SHA256_MIN_TRUNC || vlen > SHA256_LEN || vlen % 4 != 0)
      return NP_ERR_PROTO;
    msg->present |= NP_STUN_HAS_INTEGRITY_SHA256;
    msg->integrity_sha256_offset = pos;
    msg->integrity_sha256_len = vlen;
    return 0;

  default:
    /* RFC 8489 §14: "Attributes with type values between 0x0000 and 0x7FFF
     * are comprehension-required attributes ... Attributes with type values
     * between 0x8000 and 0xFFFF are comprehension-optional attributes, which
     * means that those attributes can be ignored by the STUN agent if it
     * does not understand them." Whether an unknown required attribute is
     * an error depends on the message class (§6.3), so the caller decides. */
    if (type < 0x8000)
      record_unknown_required(msg, type);
    return 0;
  }
}

int np__stun_read(const uint8_t *buf, size_t len, np_stun_msg *msg) {
  if (!msg)
    return NP_ERR_PROTO;
  memset(msg, 0, sizeof *msg);
  if (!buf || len < NP_STUN_HEADER_LEN || len > NP_STUN_MAX_MESSAGE)
    return NP_ERR_PROTO;

  /*
   *  0                   1                   2                   3
   *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   * |0 0|     STUN Message Type     |         Message Length        |
   * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   * |                         Magic Cookie                          |
   * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   * |                     Transaction ID (96 bits)                  |
   * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   */
  uint16_t type = rd16(buf);
  /* "The most significant 2 bits of every STUN message MUST be zeroes."
   * Stricter, as np__stun_is_stun(): a first byte above 3 belongs to another
   * protocol on a shared socket (RFC 7983), and no STUN or TURN method
   * needs one (all are below 0x100), so the reader and the demultiplexer
   * agree on what is STUN. */
  if (type & 0xC000 || buf[0] > 3)
    return NP_ERR_PROTO;
  uint16_t body = rd16(buf + 2);
  /* "The message length MUST contain the size of the message in bytes, not
   * including the 20-byte STUN header. Since all STUN attributes are padded
   * to a multiple of 4 bytes, the last 2 bits of this field are always
   * zero." A datagram carries exactly one message, so the two must agree. */
  if (body % 4 != 0 || (size_t)body != len - NP_STUN_HEADER_LEN)
    return NP_ERR_PROTO;

  msg->type = type;
  /*
   *  0                 1
   *  2  3  4 5 6 7 8 9 0 1 2 3 4 5
   * +--+--+-+-+-+-+-+-+-+-+-+-+-+-+
   * |M |M |M|M|M|C|M|M|M|C|M|M|M|M|
   * |11|10|9|8|7|1|6|5|4|0|3|2|1|0|
   * +--+--+-+-+-+-+-+-+-+-+-+-+-+-+
   */
  msg->cls = type & 0x0110;
  msg->method = (uint16_t)((type & 0x000F) | ((type >> 1) & 0x0070) |
                           ((type >> 2) & 0x0F80));
  msg->length = body;
  msg->cookie = rd32(buf + 4);
  msg->rfc3489 = msg->cookie != NP_STUN_MAGIC_COOKIE;
  memcpy(msg->txid, buf + 8, NP_STUN_TXID_LEN);

  bool after_integrity = false;        /* MESSAGE-INTEGRITY seen */
  bool after_integrity_sha256 = false; /* MESSAGE-INTEGRITY-SHA256 seen */
  size_t pos = NP_STUN_HEADER_LEN;
  while (pos < len) {
    /*
     *  0                   1                   2                   3
     *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
     * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
     * |         Type                  |            Length             |
     * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
     * |                         Value (variable)                ....
     * +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
     */
    if (len - pos < ATTR_HEADER_LEN)
      goto fail;
    uint16_t atype = rd16(buf + pos);
    size_t alen = rd16(buf + pos + 2);
    size_t room = len - pos - ATTR_HEADER_LEN;
    /* room is a multiple of 4, as the message length and every attribute
     * offset are, so a value that fits has its padding inside too. */
    if (alen > room)
      goto fail;
    const uint8_t *value = buf + pos + ATTR_HEADER_LEN;

    if (atype == NP_STUN_ATTR_FINGERPRINT) {
      /* RFC 8489 §14.7: "When present, the FINGERPRINT attribute MUST be the
       * last attribute in the message". */
      if (alen != FINGERPRINT_LEN || pos + ATTR_HEADER_LEN + alen != len)
        goto fail;
      /* Being last, the header length already ends at this attribute, as
       * the CRC computation requires. */
      uint32_t crc = (uint32_t)crc32(0L, buf, (uInt)pos) ^ FINGERPRINT_XOR;
      if (crc != rd32(value))
        goto fail;
      msg->present |= NP_STUN_HAS_FINGERPRINT;
      return 0;
    }

    /* RFC 8489 §14.5: "With the exception of the MESSAGE-INTEGRITY-SHA256
     * and FINGERPRINT attributes, agents MUST ignore all other attributes
     * that follow MESSAGE-INTEGRITY." §14.6: "Agents MUST ignore all other
     * attributes that follow MESSAGE-INTEGRITY-SHA256, with the exception of
     * the FINGERPRINT attribute." Ignored ones are still bounds-checked
     * above, so a FINGERPRINT after them is found where it really is. */
    bool ignore = after_integrity_sha256 ||
                  (after_integrity &&
                   atype != NP_STUN_ATTR_MESSAGE_INTEGRITY_SHA256);
    if (!ignore) {
      if (read_attr(buf, pos, atype, value, alen, msg) != 0)
        goto fail;
      if (atype == NP_STUN_ATTR_MESSAGE_INTEGRITY)
        after_integrity = true;
      else if (atype == NP_STUN_ATTR_MESSAGE_INTEGRITY_SHA256)
        after_integrity_sha256 = true;
    }
    pos += ATTR_HEADER_LEN + pad4(alen);
  }
  return 0;

fail:
  /* Half-decoded fields must not be mistaken for a valid message. */
  memset(msg, 0, sizeof *msg);
  return NP_ERR_PROTO;
}

bool np__stun_find_attr(const uint8_t *buf, size_t len, uint16_t type,
                        const uint8_t **value, size_t *value_len) {
  if (!buf || len < NP_STUN_HEADER_LEN || !value || !value_len)
    return false;
  bool after_integrity = false, after_sha256 = false;
  size_t pos = NP_STUN_HEADER_LEN;
  while (len - pos >= ATTR_HEADER_LEN) {
    uint16_t atype = rd16(buf + pos);
    size_t alen = rd16(buf + pos + 2);
    if (alen > len - pos - ATTR_HEADER_LEN)
      return false;
    bool ignore = after_sha256 ||
                  (after_integrity && atype != NP_STUN_ATTR_MESSAGE_INTEGRITY_SHA256 &&
                   atype != NP_STUN_ATTR_FINGERPRINT);
    if (!ignore && atype == type) {
      *value = buf + pos + ATTR_HEADER_LEN;
      *value_len = alen;
      return true;
    }
    if (!ignore && atype == NP_STUN_ATTR_MESSAGE_INTEGRITY)
      after_integrity = true;
    else if (!ignore && atype == NP_STUN_ATTR_MESSAGE_INTEGRITY_SHA256)
      after_sha256 = true;
    size_t step = ATTR_HEADER_LEN + pad4(alen);
    if (step > len - pos)
      return false;
    pos += step;
  }
  return false;
}

int np__stun_read_xor_addr(const uint8_t *msg_start, const uint8_t *value,
                           size_t value_len, np_addr *out) {
  if (!msg_start || !value || !out)
    return NP_ERR_PROTO;
  uint8_t mask[16];
  xor_mask(msg_start, mask);
  return read_addr(value, value_len, mask, out);
}

/* ------------------------------------------------------------------------ */
/* Integrity                                                                 */
/* ------------------------------------------------------------------------ */

/* gnutls wants a non-NULL key even when it is empty. */
static const uint8_t empty_key[1];

/* HMAC over buf[0..off) with the header length rewritten to end after an
 * attribute of value length mac_len at off, as RFC 8489 §14.5 asks: "the
 * length field of the STUN message header is adjusted to point to the end
 * of the MESSAGE-INTEGRITY attribute". Copies into a bounded local buffer
 * because the caller's buffer is const. out receives the full digest. */
static int compute_hmac(gnutls_mac_algorithm_t alg, const uint8_t *buf,
                        size_t off, size_t mac_len, const uint8_t *key,
                        size_t key_len, uint8_t out[SHA256_LEN]) {
  uint8_t copy[NP_STUN_MAX_MESSAGE];
  if (off < NP_STUN_HEADER_LEN || off > sizeof copy)
    return NP_ERR_INVAL;
  memcpy(copy, buf, off);
  wr16(copy + 2, (uint16_t)(off + ATTR_HEADER_LEN + mac_len - NP_STUN_HEADER_LEN));
  if (!key)
    key = empty_key;
  if (gnutls_hmac_fast(alg, key, key_len, copy, off, out) != 0)
    return NP_ERR_INVAL;
  return 0;
}

static int check_mac(gnutls_mac_algorithm_t alg, const uint8_t *buf, size_t len,
                     size_t off, size_t mac_len, const uint8_t *key,
                     size_t key_len) {
  if (!buf || (!key && key_len != 0))
    return NP_ERR_INVAL;
  /* The msg may not belong to this buffer; never trust its offsets. */
  if (len > NP_STUN_MAX_MESSAGE || off < NP_STUN_HEADER_LEN ||
      off > len || len - off < ATTR_HEADER_LEN + mac_len)
    return NP_ERR_PROTO;
  uint8_t mac[SHA256_LEN];
  if (compute_hmac(alg, buf, off, mac_len, key, key_len, mac) != 0)
    return NP_ERR_AUTH;
  return equal_ct(mac, buf + off + ATTR_HEADER_LEN, mac_len) ? 0 : NP_ERR_AUTH;
}

int np__stun_check_integrity(const uint8_t *buf, size_t len, const np_stun_msg *msg,
                            const uint8_t *key, size_t key_len) {
  if (!msg)
    return NP_ERR_INVAL;
  if (!(msg->present & NP_STUN_HAS_INTEGRITY))
    return NP_ERR_PROTO;
  return check_mac(GNUTLS_MAC_SHA1, buf, len, msg->integrity_offset, SHA1_LEN,
                   key, key_len);
}

int np__stun_check_integrity_sha256(const uint8_t *buf, size_t len,
                                   const np_stun_msg *msg, const uint8_t *key,
                                   size_t key_len) {
  if (!msg)
    return NP_ERR_INVAL;
  if (!(msg->present & NP_STUN_HAS_INTEGRITY_SHA256))
    return NP_ERR_PROTO;
  size_t n = msg->integrity_sha256_len;
  if (n < SHA256_MIN_TRUNC || n > SHA256_LEN || n % 4 != 0)
    return NP_ERR_PROTO;
  return check_mac(GNUTLS_MAC_SHA256, buf, len, msg->integrity_sha256_offset,
                   n, key, key_len);
}

int np__stun_long_term_key(const char *username, const char *realm,
                          const char *password, uint8_t out[16]) {
  if (!username || !realm || !password || !out)
    return NP_ERR_INVAL;
  /* RFC 8489 §9.2.2: key = MD5(username ":" OpaqueString(realm) ":"
   * OpaqueString(password)). */
  uint8_t input[LONG_TERM_INPUT_MAX];
  size_t ul = strlen(username), rl = strlen(realm), pl = strlen(password);
  if (ul > NP_STUN_MAX_USERNAME || rl > MAX_TEXT_LEN ||
      pl > sizeof input - ul - rl - 2)
    return NP_ERR_INVAL;
  size_t n = 0;
  memcpy(input + n, username, ul);
  n += ul;
  input[n++] = ':';
  memcpy(input + n, realm, rl);
  n += rl;
  input[n++] = ':';
  memcpy(input + n, password, pl);
  n += pl;
  uint8_t digest[MD5_LEN];
  if (gnutls_hash_fast(GNUTLS_DIG_MD5, input, n, digest) != 0)
    return NP_ERR_INVAL;
  memcpy(out, digest, MD5_LEN);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Encoder                                                                   */
/* ------------------------------------------------------------------------ */

void np__stun_writer_init(np_stun_writer *w, uint8_t *buf, size_t cap,
                         uint16_t type, uint32_t cookie,
                         const uint8_t txid[NP_STUN_TXID_LEN]) {
  if (!w)
    return;
  memset(w, 0, sizeof *w);
  w->buf = buf;
  w->cap = cap;
  if (!buf || !txid || (type & 0xC000)) {
    w->err = NP_ERR_INVAL;
    return;
  }
  if (cap < NP_STUN_HEADER_LEN) {
    w->err = NP_ERR_NOSPACE;
    return;
  }
  wr16(buf, type);
  wr16(buf + 2, 0);
  wr32(buf + 4, cookie);
  memcpy(buf + 8, txid, NP_STUN_TXID_LEN);
  w->len = NP_STUN_HEADER_LEN;
}

/* Appends an attribute header plus a padded value area and returns the value
 * pointer, or NULL after recording why not. The header length is updated
 * here, so it is current even when the caller fills the value later (the
 * integrity attributes need exactly that). Messages are also kept within
 * NP_STUN_MAX_MESSAGE, since a peer using this decoder would drop more. */
static uint8_t *reserve(np_stun_writer *w, uint16_t type, size_t vlen) {
  if (!w || w->err)
    return NULL;
  if (vlen > 0xFFFF) {
    w->err = NP_ERR_INVAL;
    return NULL;
  }
  size_t limit = w->cap < NP_STUN_MAX_MESSAGE ? w->cap : NP_STUN_MAX_MESSAGE;
  size_t need = ATTR_HEADER_LEN + pad4(vlen);
  if (w->len > limit || limit - w->len < need) {
    w->err = NP_ERR_NOSPACE;
    return NULL;
  }
  uint8_t *p = w->buf + w->len;
  wr16(p, type);
  wr16(p + 2, (uint16_t)vlen);
  memset(p + ATTR_HEADER_LEN + vlen, w->pad_byte, pad4(vlen) - vlen);
  w->len += need;
  wr16(w->buf + 2, (uint16_t)(w->len - NP_STUN_HEADER_LEN));
  return p + ATTR_HEADER_LEN;
}

static void put_addr_common(np_stun_writer *w, uint16_t type, const np_addr *addr,
                            bool xored) {
  if (!w || w->err)
    return;
  if (!addr || (addr->u.sa.sa_family != AF_INET &&
                addr->u.sa.sa_family != AF_INET6)) {
    w->err = NP_ERR_INVAL;
    return;
  }
  bool v6 = addr->u.sa.sa_family == AF_INET6;
  uint8_t *v = reserve(w, type, v6 ? ADDR_V6_LEN : ADDR_V4_LEN);
  if (!v)
    return;
  uint8_t mask[16] = {0};
  if (xored)
    xor_mask(w->buf, mask);
  const uint8_t *ip = v6 ? (const uint8_t *)&addr->u.in6.sin6_addr
                         : (const uint8_t *)&addr->u.in4.sin_addr;
  size_t ip_len = v6 ? 16 : 4;
  v[0] = 0;
  v[1] = v6 ? FAMILY_IPV6 : FAMILY_IPV4;
  uint16_t port = ntohs(v6 ? addr->u.in6.sin6_port : addr->u.in4.sin_port);
  wr16(v + 2, (uint16_t)(port ^ rd16(mask)));
  for (size_t i = 0; i < ip_len; i++)
    v[4 + i] = (uint8_t)(ip[i] ^ mask[i]);
}

void np__stun_put_addr(np_stun_writer *w, uint16_t type, const np_addr *addr) {
  put_addr_common(w, type, addr, false);
}

void np__stun_put_xor_addr(np_stun_writer *w, uint16_t type, const np_addr *addr) {
  put_addr_common(w, type, addr, true);
}

void np__stun_put_u32(np_stun_writer *w, uint16_t type, uint32_t value) {
  uint8_t *v = reserve(w, type, 4);
  if (v)
    wr32(v, value);
}

void np__stun_put_response_port(np_stun_writer *w, uint16_t port) {
  uint8_t *v = reserve(w, NP_STUN_ATTR_RESPONSE_PORT, 4);
  if (!v)
    return;
  wr16(v, port);
  wr16(v + 2, 0);
}

/* The RFC maxima the decoder enforces, so we never emit what we would
 * refuse to read. 0 means no limit beyond the message size. */
static size_t max_value_len(uint16_t type) {
  switch (type) {
  case NP_STUN_ATTR_USERNAME:
    return NP_STUN_MAX_USERNAME;
  case NP_STUN_ATTR_SOFTWARE:
  case NP_STUN_ATTR_REALM:
  case NP_STUN_ATTR_NONCE:
    return MAX_TEXT_LEN;
  default:
    return 0;
  }
}

void np__stun_put_bytes(np_stun_writer *w, uint16_t type, const void *data, size_t len) {
  if (!w || w->err)
    return;
  size_t max = max_value_len(type);
  if ((!data && len != 0) || (max != 0 && len > max)) {
    w->err = NP_ERR_INVAL;
    return;
  }
  uint8_t *v = reserve(w, type, len);
  if (v && len)
    memcpy(v, data, len);
}

void np__stun_put_error(np_stun_writer *w, uint16_t code, const char *reason) {
  if (!w || w->err)
    return;
  size_t rlen = reason ? strlen(reason) : 0;
  /* RFC 8489 §14.8: class 3..6 and number 0..99, i.e. codes 300..699. */
  if (code < 300 || code > 699 || rlen > NP_STUN_MAX_REASON) {
    w->err = NP_ERR_INVAL;
    return;
  }
  uint8_t *v = reserve(w, NP_STUN_ATTR_ERROR_CODE, ERROR_CODE_FIXED_LEN + rlen);
  if (!v)
    return;
  v[0] = 0;
  v[1] = 0;
  v[2] = (uint8_t)(code / 100);
  v[3] = (uint8_t)(code % 100);
  if (rlen)
    memcpy(v + ERROR_CODE_FIXED_LEN, reason, rlen);
}

void np__stun_put_unknown(np_stun_writer *w, const uint16_t *types, size_t n) {
  if (!w || w->err)
    return;
  if ((!types && n != 0) || n > NP_STUN_MAX_UNKNOWN) {
    w->err = NP_ERR_INVAL;
    return;
  }
  uint8_t *v = reserve(w, NP_STUN_ATTR_UNKNOWN_ATTRIBUTES, 2 * n);
  if (!v)
    return;
  for (size_t i = 0; i < n; i++)
    wr16(v + 2 * i, types[i]);
}

static void put_mac(np_stun_writer *w, uint16_t type, gnutls_mac_algorithm_t alg,
                    const uint8_t *key, size_t key_len, size_t mac_len) {
  if (!w || w->err)
    return;
  if (!key && key_len != 0) {
    w->err = NP_ERR_INVAL;
    return;
  }
  size_t off = w->len;
  /* reserve() sets the header length to include this attribute, which is
   * the adjustment the MAC computation wants. */
  uint8_t *v = reserve(w, type, mac_len);
  if (!v)
    return;
  uint8_t mac[SHA256_LEN];
  if (compute_hmac(alg, w->buf, off, mac_len, key, key_len, mac) != 0) {
    w->err = NP_ERR_INVAL;
    return;
  }
  memcpy(v, mac, mac_len);
}

void np__stun_put_integrity(np_stun_writer *w, const uint8_t *key, size_t key_len) {
  put_mac(w, NP_STUN_ATTR_MESSAGE_INTEGRITY, GNUTLS_MAC_SHA1, key, key_len,
          SHA1_LEN);
}

void np__stun_put_integrity_sha256(np_stun_writer *w, const uint8_t *key,
                                  size_t key_len, size_t trunc_len) {
  if (!w || w->err)
    return;
  if (trunc_len < SHA256_MIN_TRUNC || trunc_len > SHA256_LEN || trunc_len % 4 != 0) {
    w->err = NP_ERR_INVAL;
    return;
  }
  put_mac(w, NP_STUN_ATTR_MESSAGE_INTEGRITY_SHA256, GNUTLS_MAC_SHA256, key,
          key_len, trunc_len);
}

void np__stun_put_fingerprint(np_stun_writer *w) {
  if (!w || w->err)
    return;
  size_t off = w->len;
  uint8_t *v = reserve(w, NP_STUN_ATTR_FINGERPRINT, FINGERPRINT_LEN);
  if (!v)
    return;
  /* RFC 8489 §14.7: "The value of the attribute is computed as the CRC-32 of
   * the STUN message up to (but excluding) the FINGERPRINT attribute itself,
   * XOR'ed with the 32-bit value 0x5354554e", the header length already
   * counting the FINGERPRINT. */
  wr32(v, (uint32_t)crc32(0L, w->buf, (uInt)off) ^ FINGERPRINT_XOR);
}

int np__stun_writer_finish(np_stun_writer *w) {
  if (!w)
    return NP_ERR_INVAL;
  if (w->err)
    return w->err;
  return (int)w->len;
}

const char *np__stun_attr_name(uint16_t type) {
  switch (type) {
  case NP_STUN_ATTR_MAPPED_ADDRESS: return "MAPPED-ADDRESS";
  case NP_STUN_ATTR_RESPONSE_ADDRESS: return "RESPONSE-ADDRESS";
  case NP_STUN_ATTR_CHANGE_REQUEST: return "CHANGE-REQUEST";
  case NP_STUN_ATTR_SOURCE_ADDRESS: return "SOURCE-ADDRESS";
  case NP_STUN_ATTR_CHANGED_ADDRESS: return "CHANGED-ADDRESS";
  case NP_STUN_ATTR_USERNAME: return "USERNAME";
  case NP_STUN_ATTR_MESSAGE_INTEGRITY: return "MESSAGE-INTEGRITY";
  case NP_STUN_ATTR_ERROR_CODE: return "ERROR-CODE";
  case NP_STUN_ATTR_UNKNOWN_ATTRIBUTES: return "UNKNOWN-ATTRIBUTES";
  case NP_STUN_ATTR_REALM: return "REALM";
  case NP_STUN_ATTR_NONCE: return "NONCE";
  case NP_STUN_ATTR_MESSAGE_INTEGRITY_SHA256: return "MESSAGE-INTEGRITY-SHA256";
  case NP_STUN_ATTR_PASSWORD_ALGORITHM: return "PASSWORD-ALGORITHM";
  case NP_STUN_ATTR_USERHASH: return "USERHASH";
  case NP_STUN_ATTR_XOR_MAPPED_ADDRESS: return "XOR-MAPPED-ADDRESS";
  case NP_STUN_ATTR_PADDING: return "PADDING";
  case NP_STUN_ATTR_RESPONSE_PORT: return "RESPONSE-PORT";
  case NP_STUN_ATTR_PASSWORD_ALGORITHMS: return "PASSWORD-ALGORITHMS";
  case NP_STUN_ATTR_ALTERNATE_DOMAIN: return "ALTERNATE-DOMAIN";
  case NP_STUN_ATTR_SOFTWARE: return "SOFTWARE";
  case NP_STUN_ATTR_ALTERNATE_SERVER: return "ALTERNATE-SERVER";
  case NP_STUN_ATTR_FINGERPRINT: return "FINGERPRINT";
  case NP_STUN_ATTR_RESPONSE_ORIGIN: return "RESPONSE-ORIGIN";
  case NP_STUN_ATTR_OTHER_ADDRESS: return "OTHER-ADDRESS";
  default: return NULL;
  }
}
