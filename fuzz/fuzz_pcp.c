/*
 * libFuzzer harness for the PCP MAP codec (src/portmap/pcp.c).
 *
 * Decodes the input as a response, without and with an expected request;
 * checks the outcome is one of the documented ones and consistent with the
 * input (lengths, the R bit, the version, fields copied from the right
 * offsets). When a MAP body was decoded, it is rebuilt with the encoder (a
 * request echoing the nonce, protocol, ports and address, turned into a
 * response), decoded again and required to give the same values back.
 */
#include "fuzz_check.h"
#include "portmap/pcp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t get32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void check_decoded(const uint8_t *data, size_t size, const np_pcp_map_response *r) {
  CHECK(size >= NP_PCP_HEADER_LEN && size <= NP_PCP_MAX_MSG && size % 4 == 0);
  CHECK(data[0] == NP_PCP_VERSION);
  CHECK(data[1] == (0x80 | NP_PCP_OP_MAP));
  CHECK(r->opcode == NP_PCP_OP_MAP);
  CHECK(r->result == data[3]);
  CHECK(r->lifetime == get32(data + 4));
  CHECK(r->epoch == get32(data + 8));
  CHECK(r->has_map == (size >= NP_PCP_MAP_LEN));
  if (!r->has_map) {
    CHECK(size == NP_PCP_HEADER_LEN && r->result != NP_PCP_SUCCESS);
    return;
  }
  CHECK(memcmp(r->nonce, data + 24, NP_PCP_NONCE_LEN) == 0);
  CHECK(r->protocol == data[36]);
  CHECK(r->internal_port == ((data[40] << 8) | data[41]));
  CHECK(np_addr_port(&r->external) == ((data[42] << 8) | data[43]));
  int fam = r->external.u.sa.sa_family;
  CHECK(fam == AF_INET || fam == AF_INET6);
}

/* decode(encode(x)) == x for everything a MAP body carries. */
static void round_trip(const np_pcp_map_response *r) {
  np_pcp_map_request req;
  memset(&req, 0, sizeof req);
  req.client = r->external;
  req.suggested = r->external;
  req.suggested_port = np_addr_port(&r->external);
  req.lifetime = r->lifetime;
  memcpy(req.nonce, r->nonce, NP_PCP_NONCE_LEN);
  req.protocol = r->protocol;
  req.internal_port = r->internal_port;
  uint8_t buf[NP_PCP_MAP_LEN];
  CHECK(np__pcp_encode_map(&req, buf, sizeof buf) == NP_PCP_MAP_LEN);
  CHECK(np__pcp_encode_map(&req, buf, sizeof buf - 1) == NP_ERR_NOSPACE);
  /* The same bytes as a response: R bit, result, epoch in the header. */
  buf[1] |= 0x80;
  buf[3] = r->result;
  buf[8] = (uint8_t)(r->epoch >> 24);
  buf[9] = (uint8_t)(r->epoch >> 16);
  buf[10] = (uint8_t)(r->epoch >> 8);
  buf[11] = (uint8_t)r->epoch;
  memset(buf + 12, 0, 12);
  np_pcp_map_response back;
  CHECK(np__pcp_decode_map(buf, sizeof buf, &req, &back) == 0);
  CHECK(back.result == r->result && back.lifetime == r->lifetime && back.epoch == r->epoch);
  CHECK(back.has_map && back.protocol == r->protocol && back.internal_port == r->internal_port);
  CHECK(memcmp(back.nonce, r->nonce, NP_PCP_NONCE_LEN) == 0);
  CHECK(np_addr_equal(&back.external, &r->external));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  np_pcp_map_response r;
  int rc = np__pcp_decode_map(data, size, NULL, &r);
  if (rc != 0) {
    CHECK(rc == NP_ERR_PROTO || rc == NP_ERR_UNSUPPORTED);
    CHECK(rc != NP_ERR_UNSUPPORTED || (size >= 2 && data[0] != NP_PCP_VERSION));
    CHECK(!r.has_map && r.result == 0 && r.lifetime == 0);
  } else {
    check_decoded(data, size, &r);
    if (r.has_map)
      round_trip(&r);
  }

  /* With an expectation taken from the input itself, a decodable MAP body
   * must still be accepted; with any other nonce it must be refused. */
  if (rc == 0 && r.has_map) {
    np_pcp_map_request expect;
    memset(&expect, 0, sizeof expect);
    memcpy(expect.nonce, r.nonce, NP_PCP_NONCE_LEN);
    expect.protocol = r.protocol;
    expect.internal_port = r.internal_port;
    np_pcp_map_response again;
    CHECK(np__pcp_decode_map(data, size, &expect, &again) == 0);
    expect.nonce[0] ^= 1;
    CHECK(np__pcp_decode_map(data, size, &expect, &again) == NP_ERR_PROTO);
  }
  return 0;
}
