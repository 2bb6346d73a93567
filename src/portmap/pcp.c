/*
 * PCP MAP codec (RFC 6887). See pcp.h for the layout; this file only moves
 * bytes and never trusts a length it has not checked against the buffer.
 */
#include "portmap/pcp.h"
#include "util/bytes.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

/* Offsets inside a MAP message (RFC 6887 §7.1, §7.2, §11.1). */
enum {
  OFF_VERSION = 0,
  OFF_OPCODE = 1,
  OFF_RESULT = 3,
  OFF_LIFETIME = 4,
  OFF_CLIENT_IP = 8, /* request */
  OFF_EPOCH = 8,     /* response */
  OFF_NONCE = 24,
  OFF_PROTOCOL = 36,
  OFF_INTERNAL_PORT = 40,
  OFF_EXTERNAL_PORT = 42,
  OFF_EXTERNAL_IP = 44,
  OPTION_HEADER_LEN = 4,
  R_BIT = 0x80,
};

/* PCP carries every address in 16 bytes; IPv4 goes IPv4-mapped (§5). */
static void put_ip(uint8_t *p, const np_addr *a) {
  memset(p, 0, 16);
  if (a->u.sa.sa_family == AF_INET) {
    p[10] = 0xff;
    p[11] = 0xff;
    memcpy(p + 12, &a->u.in4.sin_addr, 4);
  } else if (a->u.sa.sa_family == AF_INET6) {
    memcpy(p, &a->u.in6.sin6_addr, 16);
  }
}

/* The inverse: IPv4-mapped becomes AF_INET, so callers compare it with the
 * IPv4 addresses they know. */
static void get_ip(const uint8_t *p, uint16_t port, np_addr *out) {
  static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  memset(out, 0, sizeof *out);
  if (memcmp(p, v4mapped, sizeof v4mapped) == 0) {
    out->u.in4.sin_family = AF_INET;
    memcpy(&out->u.in4.sin_addr, p + 12, 4);
    out->u.in4.sin_port = htons(port);
  } else {
    out->u.in6.sin6_family = AF_INET6;
    memcpy(&out->u.in6.sin6_addr, p, 16);
    out->u.in6.sin6_port = htons(port);
  }
}

int np__pcp_encode_map(const np_pcp_map_request *req, uint8_t *buf, size_t cap) {
  if (!req || !buf)
    return NP_ERR_INVAL;
  int fam = req->client.u.sa.sa_family;
  if (fam != AF_INET && fam != AF_INET6)
    return NP_ERR_INVAL;
  int sfam = req->suggested.u.sa.sa_family;
  /* A suggestion of the other family cannot be honoured by a NAT44/NAT66
   * MAP and would make the server answer ADDRESS_MISMATCH or worse. */
  if (sfam != AF_UNSPEC && sfam != fam)
    return NP_ERR_INVAL;
  if (cap < NP_PCP_MAP_LEN)
    return NP_ERR_NOSPACE;
  memset(buf, 0, NP_PCP_MAP_LEN);
  buf[OFF_VERSION] = NP_PCP_VERSION;
  buf[OFF_OPCODE] = NP_PCP_OP_MAP; /* R = 0: a request */
  wr32(buf + OFF_LIFETIME, req->lifetime);
  put_ip(buf + OFF_CLIENT_IP, &req->client);
  memcpy(buf + OFF_NONCE, req->nonce, NP_PCP_NONCE_LEN);
  buf[OFF_PROTOCOL] = req->protocol;
  wr16(buf + OFF_INTERNAL_PORT, req->internal_port);
  wr16(buf + OFF_EXTERNAL_PORT, req->suggested_port);
  if (sfam != AF_UNSPEC) {
    put_ip(buf + OFF_EXTERNAL_IP, &req->suggested);
  } else if (fam == AF_INET) {
    /* "No preference" for IPv4 is ::ffff:0.0.0.0, not :: (§11.1). */
    buf[OFF_EXTERNAL_IP + 10] = 0xff;
    buf[OFF_EXTERNAL_IP + 11] = 0xff;
  }
  return NP_PCP_MAP_LEN;
}

/* Options after the MAP body: each header plus its data padded to 4 bytes
 * must fit exactly; we act on none of them (MAP needs none to succeed), so
 * this only validates. Bounded: every option consumes at least 4 bytes. */
static int check_options(const uint8_t *p, size_t len) {
  size_t off = 0;
  while (off < len) {
    if (len - off < OPTION_HEADER_LEN)
      return NP_ERR_PROTO;
    size_t olen = rd16(p + off + 2);
    size_t padded = (olen + 3u) & ~(size_t)3u;
    off += OPTION_HEADER_LEN;
    if (padded > len - off)
      return NP_ERR_PROTO;
    off += padded;
  }
  return 0;
}

int np__pcp_decode_map(const uint8_t *buf, size_t len, const np_pcp_map_request *expect,
                      np_pcp_map_response *out) {
  if (!out)
    return NP_ERR_INVAL;
  memset(out, 0, sizeof *out);
  if (!buf || len < 2)
    return NP_ERR_PROTO;
  /* Version first: a NAT-PMP-only gateway answers a PCP request with its
   * own 8-byte "unsupported version" reply (version 0), which is a clear
   * "no" rather than garbage (RFC 6887 §9). */
  if (buf[OFF_VERSION] != NP_PCP_VERSION)
    return NP_ERR_UNSUPPORTED;
  if (len < NP_PCP_HEADER_LEN || len > NP_PCP_MAX_MSG || len % 4 != 0)
    return NP_ERR_PROTO;
  if (!(buf[OFF_OPCODE] & R_BIT) || (buf[OFF_OPCODE] & ~R_BIT) != NP_PCP_OP_MAP)
    return NP_ERR_PROTO;
  np_pcp_map_response r;
  memset(&r, 0, sizeof r);
  r.opcode = (uint8_t)(buf[OFF_OPCODE] & ~R_BIT);
  r.result = buf[OFF_RESULT];
  r.lifetime = rd32(buf + OFF_LIFETIME);
  r.epoch = rd32(buf + OFF_EPOCH);
  if (len == NP_PCP_HEADER_LEN) {
    /* Header only: acceptable for an error, never for a granted mapping. */
    if (r.result == NP_PCP_SUCCESS)
      return NP_ERR_PROTO;
    *out = r;
    return 0;
  }
  if (len < NP_PCP_MAP_LEN)
    return NP_ERR_PROTO;
  if (check_options(buf + NP_PCP_MAP_LEN, len - NP_PCP_MAP_LEN) != 0)
    return NP_ERR_PROTO;
  r.has_map = true;
  memcpy(r.nonce, buf + OFF_NONCE, NP_PCP_NONCE_LEN);
  r.protocol = buf[OFF_PROTOCOL];
  r.internal_port = rd16(buf + OFF_INTERNAL_PORT);
  get_ip(buf + OFF_EXTERNAL_IP, rd16(buf + OFF_EXTERNAL_PORT), &r.external);
  if (expect) {
    /* RFC 6887 §11.5: the client matches a response to its request by
     * nonce, protocol and internal port; anything else is stale or forged. */
    if (memcmp(r.nonce, expect->nonce, NP_PCP_NONCE_LEN) != 0 || r.protocol != expect->protocol ||
        r.internal_port != expect->internal_port)
      return NP_ERR_PROTO;
  }
  *out = r;
  return 0;
}

const char *np__pcp_result_name(int result) {
  static const char *const names[] = {
      "SUCCESS",          "UNSUPP_VERSION",         "NOT_AUTHORIZED",   "MALFORMED_REQUEST",
      "UNSUPP_OPCODE",    "UNSUPP_OPTION",          "MALFORMED_OPTION", "NETWORK_FAILURE",
      "NO_RESOURCES",     "UNSUPP_PROTOCOL",        "USER_EX_QUOTA",    "CANNOT_PROVIDE_EXTERNAL",
      "ADDRESS_MISMATCH", "EXCESSIVE_REMOTE_PEERS",
  };
  if (result < 0 || (size_t)result >= sizeof names / sizeof names[0])
    return "UNKNOWN";
  return names[result];
}
