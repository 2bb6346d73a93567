/*
 * PCP (Port Control Protocol, RFC 6887) codec for the MAP opcode: pure
 * functions over byte buffers, no sockets, no clock, so the unit tests and
 * the fuzzer drive them directly. portmap.c does the UDP exchange with the
 * gateway (port 5351).
 *
 * Wire layout (RFC 6887 §7.1, §7.2, §11.1), all integers big-endian:
 *
 *   request header (24)        response header (24)
 *   0  version = 2             0  version = 2
 *   1  R=0 | opcode            1  R=1 | opcode
 *   2  reserved (16)           2  reserved (8), 3 result code
 *   4  requested lifetime      4  lifetime
 *   8  client IP (128)         8  epoch time, 12..23 reserved
 *
 *   MAP body (36), request and response
 *   24 mapping nonce (96)
 *   36 protocol, 37..39 reserved
 *   40 internal port
 *   42 suggested (request) / assigned (response) external port
 *   44 suggested / assigned external IP (128)
 *
 * then options (code, reserved, length, data padded to 4 bytes). IPv4
 * addresses travel as IPv4-mapped IPv6 (::ffff:a.b.c.d).
 */
#ifndef NP_PCP_H
#define NP_PCP_H

#include "natpunch.h"

#include <stddef.h>
#include <stdint.h>

#define NP_PCP_PORT 5351
#define NP_PCP_VERSION 2
#define NP_PCP_OP_MAP 1
#define NP_PCP_HEADER_LEN 24
#define NP_PCP_MAP_LEN 60 /* header + MAP body, no options */
#define NP_PCP_MAX_MSG 1100
#define NP_PCP_NONCE_LEN 12
#define NP_PCP_PROTO_UDP 17

/* Result codes (RFC 6887 §7.4). */
enum np_pcp_result {
  NP_PCP_SUCCESS = 0,
  NP_PCP_UNSUPP_VERSION = 1,
  NP_PCP_NOT_AUTHORIZED = 2,
  NP_PCP_MALFORMED_REQUEST = 3,
  NP_PCP_UNSUPP_OPCODE = 4,
  NP_PCP_UNSUPP_OPTION = 5,
  NP_PCP_MALFORMED_OPTION = 6,
  NP_PCP_NETWORK_FAILURE = 7,
  NP_PCP_NO_RESOURCES = 8,
  NP_PCP_UNSUPP_PROTOCOL = 9,
  NP_PCP_USER_EX_QUOTA = 10,
  NP_PCP_CANNOT_PROVIDE_EXTERNAL = 11,
  NP_PCP_ADDRESS_MISMATCH = 12,
  NP_PCP_EXCESSIVE_REMOTE_PEERS = 13,
};

typedef struct np_pcp_map_request {
  np_addr client;    /* our address as the gateway sees it (port ignored) */
  uint32_t lifetime; /* seconds; 0 deletes the mapping */
  uint8_t nonce[NP_PCP_NONCE_LEN];
  uint8_t protocol;       /* IANA number: 17 = UDP */
  uint16_t internal_port; /* host byte order */
  /* Suggested external address and port; AF_UNSPEC = no preference (sent
   * as the all-zero address of the client's family), port 0 = any. */
  np_addr suggested;
  uint16_t suggested_port;
} np_pcp_map_request;

typedef struct np_pcp_map_response {
  uint8_t opcode;
  uint8_t result; /* enum np_pcp_result (or an unknown code) */
  uint32_t lifetime;
  uint32_t epoch;
  /* False for a short error response that carries only the header (a
   * server that could not parse the request need not echo the MAP body). */
  bool has_map;
  uint8_t nonce[NP_PCP_NONCE_LEN];
  uint8_t protocol;
  uint16_t internal_port;
  np_addr external; /* assigned address, with the assigned port */
} np_pcp_map_response;

/* Encodes a MAP request (60 bytes, no options) into buf. The client address
 * must be IPv4 or IPv6; IPv4 is written IPv4-mapped. Returns the length, or
 * NP_ERR_INVAL for a missing client address or a suggested address of
 * another family, NP_ERR_NOSPACE when cap < NP_PCP_MAP_LEN. */
int np__pcp_encode_map(const np_pcp_map_request *req, uint8_t *buf, size_t cap);

/* Decodes a PCP response to a MAP request. Strict: the length must be a
 * multiple of 4 between 24 and 1100, the R bit set, the opcode MAP, and
 * every option must fit exactly (reserved fields are ignored, as RFC 6887
 * asks of receivers). A success response must carry the MAP body. When
 * expect is not NULL, a response carrying the MAP body must echo its nonce,
 * protocol and internal port (otherwise it answers someone else's request).
 * Returns 0 (then out->result says what the server decided), NP_ERR_UNSUPPORTED
 * when the version is not 2 (e.g. a NAT-PMP-only gateway's "unsupported
 * version" reply, version 0), NP_ERR_PROTO for anything malformed or not
 * matching. */
int np__pcp_decode_map(const uint8_t *buf, size_t len, const np_pcp_map_request *expect,
                      np_pcp_map_response *out);

/* Short text for a result code ("SUCCESS", "NOT_AUTHORIZED", ...), or
 * "UNKNOWN" for codes outside RFC 6887. Never NULL. */
const char *np__pcp_result_name(int result);

#endif
