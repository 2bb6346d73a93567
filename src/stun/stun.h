/*
 * STUN message codec (RFC 8489, RFC 5780 attributes, RFC 3489 compatibility).
 *
 * Pure: no sockets, no clocks, no allocation. The decoder reads a datagram
 * into an np_stun_msg whose pointer fields point into the caller's buffer,
 * so the buffer must outlive the message. The encoder appends attributes to
 * a caller-supplied buffer and never writes past its capacity.
 *
 * Internal module: not part of the public API (names are np_stun_*, but
 * only natpunch.h is installed).
 */
#ifndef NP_STUN_H
#define NP_STUN_H

#include "natpunch.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NP_STUN_HEADER_LEN 20
#define NP_STUN_MAGIC_COOKIE 0x2112A442u
#define NP_STUN_TXID_LEN 12
/* Largest message decoded or encoded. RFC 8489 §6.1 wants ordinary messages
 * to fit the path MTU, but RFC 5780 §7.6 PADDING exists to push requests past
 * it (coturn's client pads to ~1540 bytes), so the limit is above an
 * Ethernet MTU; larger datagrams are rejected. */
#define NP_STUN_MAX_MESSAGE 2048
/* Most UNKNOWN-ATTRIBUTES entries we record or emit. */
#define NP_STUN_MAX_UNKNOWN 16
/* RFC 8489 §14.3: USERNAME is at most 513 bytes. */
#define NP_STUN_MAX_USERNAME 513
/* RFC 8489 §14.8: reason phrase at most 763 bytes; SOFTWARE likewise. */
#define NP_STUN_MAX_REASON 763

/* Message classes (already shifted into the type field's C1/C0 bits). */
enum np_stun_class {
  NP_STUN_REQUEST = 0x0000,
  NP_STUN_INDICATION = 0x0010,
  NP_STUN_SUCCESS = 0x0100,
  NP_STUN_ERROR = 0x0110,
};

enum np_stun_method { NP_STUN_BINDING = 0x001 };

enum np_stun_attr_type {
  NP_STUN_ATTR_MAPPED_ADDRESS = 0x0001,
  NP_STUN_ATTR_RESPONSE_ADDRESS = 0x0002, /* RFC 3489, obsolete */
  NP_STUN_ATTR_CHANGE_REQUEST = 0x0003,   /* RFC 5780 */
  NP_STUN_ATTR_SOURCE_ADDRESS = 0x0004,   /* RFC 3489, obsolete */
  NP_STUN_ATTR_CHANGED_ADDRESS = 0x0005,  /* RFC 3489, obsolete */
  NP_STUN_ATTR_USERNAME = 0x0006,
  NP_STUN_ATTR_MESSAGE_INTEGRITY = 0x0008,
  NP_STUN_ATTR_ERROR_CODE = 0x0009,
  NP_STUN_ATTR_UNKNOWN_ATTRIBUTES = 0x000A,
  NP_STUN_ATTR_REALM = 0x0014,
  NP_STUN_ATTR_NONCE = 0x0015,
  NP_STUN_ATTR_MESSAGE_INTEGRITY_SHA256 = 0x001C,
  NP_STUN_ATTR_PASSWORD_ALGORITHM = 0x001D,
  NP_STUN_ATTR_USERHASH = 0x001E,
  NP_STUN_ATTR_XOR_MAPPED_ADDRESS = 0x0020,
  NP_STUN_ATTR_PADDING = 0x0026,       /* RFC 5780 */
  NP_STUN_ATTR_RESPONSE_PORT = 0x0027, /* RFC 5780 */
  NP_STUN_ATTR_PASSWORD_ALGORITHMS = 0x8002,
  NP_STUN_ATTR_ALTERNATE_DOMAIN = 0x8003,
  NP_STUN_ATTR_SOFTWARE = 0x8022,
  NP_STUN_ATTR_ALTERNATE_SERVER = 0x8023,
  NP_STUN_ATTR_FINGERPRINT = 0x8028,
  NP_STUN_ATTR_RESPONSE_ORIGIN = 0x802B, /* RFC 5780 */
  NP_STUN_ATTR_OTHER_ADDRESS = 0x802C,   /* RFC 5780 */
};

/* CHANGE-REQUEST flags (RFC 5780 §7.2). */
#define NP_STUN_CHANGE_IP 0x4u
#define NP_STUN_CHANGE_PORT 0x2u

/* Bits of np_stun_msg.present, one per known attribute the decoder saw. */
enum np_stun_present {
  NP_STUN_HAS_MAPPED = 1u << 0,
  NP_STUN_HAS_XOR_MAPPED = 1u << 1,
  NP_STUN_HAS_USERNAME = 1u << 2,
  NP_STUN_HAS_INTEGRITY = 1u << 3,
  NP_STUN_HAS_INTEGRITY_SHA256 = 1u << 4,
  NP_STUN_HAS_FINGERPRINT = 1u << 5,
  NP_STUN_HAS_ERROR_CODE = 1u << 6,
  NP_STUN_HAS_SOFTWARE = 1u << 7,
  NP_STUN_HAS_UNKNOWN_ATTRS = 1u << 8,
  NP_STUN_HAS_CHANGE_REQUEST = 1u << 9,
  NP_STUN_HAS_OTHER_ADDRESS = 1u << 10,
  NP_STUN_HAS_RESPONSE_ORIGIN = 1u << 11,
  NP_STUN_HAS_RESPONSE_PORT = 1u << 12,
  NP_STUN_HAS_PADDING = 1u << 13,
  NP_STUN_HAS_CHANGED_ADDRESS = 1u << 14,
  NP_STUN_HAS_SOURCE_ADDRESS = 1u << 15,
  NP_STUN_HAS_REALM = 1u << 16,
  NP_STUN_HAS_NONCE = 1u << 17,
};

/* A decoded message. Pointer fields point into the decoded buffer. */
typedef struct np_stun_msg {
  uint16_t type;   /* method | class, as on the wire (14 bits) */
  uint16_t method; /* e.g. NP_STUN_BINDING */
  uint16_t cls;    /* enum np_stun_class */
  uint16_t length; /* body length from the header */
  /* Transaction: RFC 8489 clients send the magic cookie then 12 bytes;
   * RFC 3489 clients send 16 arbitrary bytes. 'cookie' holds the first four
   * bytes as read, so a server can echo an RFC 3489 transaction verbatim. */
  uint32_t cookie;
  bool rfc3489; /* cookie != NP_STUN_MAGIC_COOKIE */
  uint8_t txid[NP_STUN_TXID_LEN];

  uint32_t present; /* enum np_stun_present bits */

  np_addr mapped;          /* MAPPED-ADDRESS */
  np_addr xor_mapped;      /* XOR-MAPPED-ADDRESS, already un-XORed */
  np_addr other_address;   /* OTHER-ADDRESS */
  np_addr response_origin; /* RESPONSE-ORIGIN */
  np_addr changed_address; /* CHANGED-ADDRESS (RFC 3489 servers) */
  np_addr source_address;  /* SOURCE-ADDRESS (RFC 3489 servers) */
  uint32_t change_request; /* NP_STUN_CHANGE_* bits */
  uint16_t response_port;  /* RESPONSE-PORT, host order */

  const uint8_t *username;
  size_t username_len;
  const uint8_t *software;
  size_t software_len;
  const uint8_t *realm;
  size_t realm_len;
  const uint8_t *nonce;
  size_t nonce_len;
  size_t padding_len; /* PADDING value length */

  uint16_t error_code;  /* 300..699 */
  const uint8_t *reason;
  size_t reason_len;

  /* From an UNKNOWN-ATTRIBUTES attribute in the message. */
  uint16_t unknown_listed[NP_STUN_MAX_UNKNOWN];
  size_t n_unknown_listed;

  /* Comprehension-required (type < 0x8000) attributes this decoder does not
   * understand, found in the message. A server answers a request that has
   * any with a 420 error listing them (RFC 8489 §6.3.1.1). At most
   * NP_STUN_MAX_UNKNOWN are recorded; n_unknown_required counts all. */
  uint16_t unknown_required[NP_STUN_MAX_UNKNOWN];
  size_t n_unknown_required;

  /* Byte offsets (from the start of the message) of integrity attributes'
   * headers, for np__stun_check_integrity*(); valid when present says so. */
  size_t integrity_offset;
  size_t integrity_sha256_offset;
  size_t integrity_sha256_len; /* 16..32, multiple of 4 */
} np_stun_msg;

/* Quick test whether a datagram may be STUN (RFC 7983 demultiplexing: first
 * byte 0..3, length a multiple of 4 matching the datagram). Does not check
 * the cookie so RFC 3489 messages pass. */
bool np__stun_is_stun(const uint8_t *buf, size_t len);

/* Decodes one STUN message occupying exactly buf[0..len). Checks: header
 * bits, length (multiple of 4, equals len - 20, len <= NP_STUN_MAX_MESSAGE),
 * every attribute bounded by the message, known attributes well-formed,
 * FINGERPRINT (if present) correct and last, nothing but FINGERPRINT after
 * MESSAGE-INTEGRITY(-SHA256) (later attributes are ignored as RFC 8489
 * requires). Unknown comprehension-optional attributes are skipped; unknown
 * comprehension-required ones are recorded, not an error. Returns 0 or
 * NP_ERR_PROTO. Never reads outside buf. */
int np__stun_read(const uint8_t *buf, size_t len, np_stun_msg *msg);

/* Finds the first attribute of the given type in a message that
 * np__stun_read() accepted from buf[0..len), for attributes the decoder does
 * not interpret (TURN's XOR-RELAYED-ADDRESS, DATA, LIFETIME...). Applies the
 * same rule as the decoder: attributes after MESSAGE-INTEGRITY(-SHA256) are
 * ignored, except FINGERPRINT. Sets *value (into buf) and *value_len and
 * returns true, or returns false when absent. Never reads outside buf. */
bool np__stun_find_attr(const uint8_t *buf, size_t len, uint16_t type,
                        const uint8_t **value, size_t *value_len);

/* Decodes an XOR-MAPPED-ADDRESS style value (XOR-PEER-ADDRESS,
 * XOR-RELAYED-ADDRESS of RFC 8656) found by np__stun_find_attr() in the
 * message starting at msg_start (whose cookie and transaction ID are the
 * XOR mask). Returns 0 or NP_ERR_PROTO for a bad length or family. */
int np__stun_read_xor_addr(const uint8_t *msg_start, const uint8_t *value,
                           size_t value_len, np_addr *out);

/* Verifies MESSAGE-INTEGRITY (HMAC-SHA1) of a message decoded from buf
 * with np__stun_read(). key is the short-term password, or for long-term
 * credentials the key from np__stun_long_term_key(). Returns 0, NP_ERR_AUTH on
 * mismatch, NP_ERR_PROTO if the attribute is absent. Constant-time compare. */
int np__stun_check_integrity(const uint8_t *buf, size_t len, const np_stun_msg *msg,
                            const uint8_t *key, size_t key_len);

/* Same for MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, possibly truncated). */
int np__stun_check_integrity_sha256(const uint8_t *buf, size_t len,
                                   const np_stun_msg *msg, const uint8_t *key,
                                   size_t key_len);

/* Long-term credential key, RFC 8489 §9.2.2, MD5 algorithm:
 * MD5(username ":" realm ":" password) (strings already SASLprep'd by the
 * caller). Writes 16 bytes to out. Returns 0 or NP_ERR_INVAL. */
int np__stun_long_term_key(const char *username, const char *realm,
                          const char *password, uint8_t out[16]);

/* Incremental encoder. All np_stun_put_* calls are no-ops once an error has
 * occurred; np__stun_writer_finish() reports it. */
typedef struct np_stun_writer {
  uint8_t *buf;
  size_t cap;
  size_t len;
  int err; /* 0 or NP_ERR_NOSPACE / NP_ERR_INVAL */
  /* Value of the bytes that pad attributes to a multiple of 4. 0 after
   * np__stun_writer_init(); RFC 8489 lets senders pick any value, and the
   * RFC 5769 sample messages use 0x20, so tests set it to reproduce them. */
  uint8_t pad_byte;
} np_stun_writer;

/* Starts a message of the given type (method | class) with the magic cookie
 * 'cookie' (pass NP_STUN_MAGIC_COOKIE except when echoing an RFC 3489
 * transaction) and 12-byte txid. */
void np__stun_writer_init(np_stun_writer *w, uint8_t *buf, size_t cap,
                         uint16_t type, uint32_t cookie,
                         const uint8_t txid[NP_STUN_TXID_LEN]);

/* MAPPED-ADDRESS style attribute (plain address): MAPPED-ADDRESS,
 * OTHER-ADDRESS, RESPONSE-ORIGIN, CHANGED-ADDRESS, SOURCE-ADDRESS. */
void np__stun_put_addr(np_stun_writer *w, uint16_t type, const np_addr *addr);

/* XOR-MAPPED-ADDRESS (XORed with cookie and, for IPv6, the txid). */
void np__stun_put_xor_addr(np_stun_writer *w, uint16_t type, const np_addr *addr);

/* A 32-bit attribute value in network order (CHANGE-REQUEST). */
void np__stun_put_u32(np_stun_writer *w, uint16_t type, uint32_t value);

/* RESPONSE-PORT: 16-bit port plus two bytes of RFFU. */
void np__stun_put_response_port(np_stun_writer *w, uint16_t port);

/* An opaque value (USERNAME, SOFTWARE, REALM, NONCE, PADDING...), zero-padded
 * to a multiple of 4. */
void np__stun_put_bytes(np_stun_writer *w, uint16_t type, const void *data, size_t len);

/* ERROR-CODE with a numeric code 300..699 and a UTF-8 reason phrase. */
void np__stun_put_error(np_stun_writer *w, uint16_t code, const char *reason);

/* UNKNOWN-ATTRIBUTES listing n types. */
void np__stun_put_unknown(np_stun_writer *w, const uint16_t *types, size_t n);

/* MESSAGE-INTEGRITY over everything so far (HMAC-SHA1, RFC 8489 §14.5). */
void np__stun_put_integrity(np_stun_writer *w, const uint8_t *key, size_t key_len);

/* MESSAGE-INTEGRITY-SHA256, truncated to trunc_len bytes (16..32, multiple
 * of 4; 32 for the full HMAC). */
void np__stun_put_integrity_sha256(np_stun_writer *w, const uint8_t *key,
                                  size_t key_len, size_t trunc_len);

/* FINGERPRINT (CRC-32 XOR 0x5354554e). Must be the last attribute. */
void np__stun_put_fingerprint(np_stun_writer *w);

/* Finishes the message (the header length is kept current by every put).
 * Returns the message length (> 0) or a negative NP_ERR_* code. */
int np__stun_writer_finish(np_stun_writer *w);

/* Human-readable attribute name, for logs ("XOR-MAPPED-ADDRESS", or
 * "0x1234" style text is not produced: returns NULL for unknown types). */
const char *np__stun_attr_name(uint16_t type);

#endif /* NP_STUN_H */
