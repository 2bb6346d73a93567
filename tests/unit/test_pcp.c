/* PCP MAP codec (RFC 6887): the request checked byte by byte against the
 * RFC's layout, responses of every kind decoded, and hostile input (short,
 * long, misaligned, lying option lengths, someone else's nonce) rejected.
 * Plus the np_portmap API edges that need no gateway. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "natpunch.h"
#include "portmap/pcp.h"
#include "portmap/portmap.h"
#include "util/clock.h"

#include <arpa/inet.h>
#include <string.h>

static const uint8_t nonce[NP_PCP_NONCE_LEN] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
                                                0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c};

static np_pcp_map_request sample_request(void) {
  np_pcp_map_request req;
  memset(&req, 0, sizeof req);
  assert_int_equal(np_addr_parse("10.1.0.2", 1, &req.client), 0);
  req.lifetime = 3600;
  memcpy(req.nonce, nonce, sizeof nonce);
  req.protocol = NP_PCP_PROTO_UDP;
  req.internal_port = 40000;
  req.suggested_port = 40000;
  return req;
}

static void encode_map_ipv4_layout(void **state) {
  (void)state;
  np_pcp_map_request req = sample_request();
  uint8_t buf[128];
  memset(buf, 0xAA, sizeof buf);
  assert_int_equal(np__pcp_encode_map(&req, buf, sizeof buf), NP_PCP_MAP_LEN);
  /* RFC 6887 §7.1 header, §11.1 MAP body; IPv4 as ::ffff:a.b.c.d (§5),
   * "no preference" for an IPv4 external address is ::ffff:0.0.0.0. */
  static const uint8_t want[NP_PCP_MAP_LEN] = {
      0x02, 0x01, 0x00, 0x00,                         /* version 2, R=0 MAP, reserved */
      0x00, 0x00, 0x0e, 0x10,                         /* lifetime 3600 */
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* client IP ... */
      0x00, 0x00, 0xff, 0xff, 10,   1,    0,    2,    /* ::ffff:10.1.0.2 */
      0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, /* nonce */
      0x09, 0x0a, 0x0b, 0x0c,                         /* */
      17,   0x00, 0x00, 0x00,                         /* UDP, reserved */
      0x9c, 0x40, 0x9c, 0x40,                         /* internal, suggested port 40000 */
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* suggested IP ... */
      0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, /* ::ffff:0.0.0.0 */
  };
  assert_memory_equal(buf, want, sizeof want);
  assert_int_equal(buf[NP_PCP_MAP_LEN], 0xAA); /* nothing written past the end */
}

static void encode_map_ipv6_and_suggested(void **state) {
  (void)state;
  np_pcp_map_request req = sample_request();
  assert_int_equal(np_addr_parse("[2001:db8::5]:1", 0, &req.client), 0);
  uint8_t buf[NP_PCP_MAP_LEN];
  assert_int_equal(np__pcp_encode_map(&req, buf, sizeof buf), NP_PCP_MAP_LEN);
  uint8_t ip6[16];
  inet_pton(AF_INET6, "2001:db8::5", ip6);
  assert_memory_equal(buf + 8, ip6, 16);
  static const uint8_t zero[16] = {0};
  assert_memory_equal(buf + 44, zero, 16); /* IPv6 "no preference" is :: */

  req = sample_request();
  assert_int_equal(np_addr_parse("11.0.113.11", 1, &req.suggested), 0);
  req.suggested_port = 0;
  req.lifetime = 0; /* a delete */
  assert_int_equal(np__pcp_encode_map(&req, buf, sizeof buf), NP_PCP_MAP_LEN);
  static const uint8_t sugg[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 11, 0, 113, 11};
  assert_memory_equal(buf + 44, sugg, 16);
  assert_int_equal(buf[42], 0);
  assert_int_equal(buf[43], 0);
  static const uint8_t zero4[4] = {0};
  assert_memory_equal(buf + 4, zero4, 4);
}

static void encode_rejects(void **state) {
  (void)state;
  np_pcp_map_request req = sample_request();
  uint8_t buf[NP_PCP_MAP_LEN];
  assert_int_equal(np__pcp_encode_map(&req, buf, NP_PCP_MAP_LEN - 1), NP_ERR_NOSPACE);
  assert_int_equal(np__pcp_encode_map(NULL, buf, sizeof buf), NP_ERR_INVAL);
  assert_int_equal(np__pcp_encode_map(&req, NULL, sizeof buf), NP_ERR_INVAL);
  np_pcp_map_request bad = req;
  memset(&bad.client, 0, sizeof bad.client);
  assert_int_equal(np__pcp_encode_map(&bad, buf, sizeof buf), NP_ERR_INVAL);
  bad = req;
  assert_int_equal(np_addr_parse("[2001:db8::1]:1", 0, &bad.suggested), 0);
  assert_int_equal(np__pcp_encode_map(&bad, buf, sizeof buf), NP_ERR_INVAL);
}

/* A response to sample_request(): what miniupnpd sends for a granted MAP. */
static size_t make_response(uint8_t *buf, uint8_t result, uint32_t lifetime) {
  np_pcp_map_request req = sample_request();
  assert_int_equal(np__pcp_encode_map(&req, buf, NP_PCP_MAP_LEN), NP_PCP_MAP_LEN);
  buf[1] = 0x80 | NP_PCP_OP_MAP;
  buf[2] = 0;
  buf[3] = result;
  buf[4] = (uint8_t)(lifetime >> 24);
  buf[5] = (uint8_t)(lifetime >> 16);
  buf[6] = (uint8_t)(lifetime >> 8);
  buf[7] = (uint8_t)lifetime;
  /* epoch 0x00012345, then 96 reserved bits */
  memset(buf + 8, 0, 16);
  buf[9] = 0x01;
  buf[10] = 0x23;
  buf[11] = 0x45;
  /* assigned 11.0.113.11:40001 */
  buf[42] = 0x9c;
  buf[43] = 0x41;
  static const uint8_t ext[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 11, 0, 113, 11};
  memcpy(buf + 44, ext, 16);
  return NP_PCP_MAP_LEN;
}

static void decode_success(void **state) {
  (void)state;
  np_pcp_map_request req = sample_request();
  uint8_t buf[NP_PCP_MAX_MSG];
  size_t n = make_response(buf, NP_PCP_SUCCESS, 7200);
  np_pcp_map_response r;
  assert_int_equal(np__pcp_decode_map(buf, n, &req, &r), 0);
  assert_int_equal(r.result, NP_PCP_SUCCESS);
  assert_int_equal(r.opcode, NP_PCP_OP_MAP);
  assert_int_equal(r.lifetime, 7200);
  assert_int_equal(r.epoch, 0x12345);
  assert_true(r.has_map);
  assert_int_equal(r.protocol, 17);
  assert_int_equal(r.internal_port, 40000);
  char a[NP_ADDRSTRLEN];
  assert_string_equal(np_addr_format(&r.external, a, sizeof a), "11.0.113.11:40001");
  assert_memory_equal(r.nonce, nonce, sizeof nonce);

  /* With options after the body (a THIRD_PARTY-like option, 16 bytes of
   * data; and one with 1 byte of data padded to 4). */
  uint8_t *o = buf + n;
  memset(o, 0, 28);
  o[0] = 1;
  o[3] = 16;
  o[20] = 0x80;
  o[23] = 1;
  assert_int_equal(np__pcp_decode_map(buf, n + 28, &req, &r), 0);
  assert_int_equal(r.result, NP_PCP_SUCCESS);

  /* An IPv6 assigned address stays IPv6. */
  n = make_response(buf, NP_PCP_SUCCESS, 60);
  inet_pton(AF_INET6, "2001:db8::9", buf + 44);
  assert_int_equal(np__pcp_decode_map(buf, n, NULL, &r), 0);
  assert_string_equal(np_addr_format(&r.external, a, sizeof a), "[2001:db8::9]:40001");
}

static void decode_errors(void **state) {
  (void)state;
  np_pcp_map_request req = sample_request();
  uint8_t buf[NP_PCP_MAX_MSG];
  np_pcp_map_response r;
  /* A full-length error response echoes the request and says why. */
  size_t n = make_response(buf, NP_PCP_NOT_AUTHORIZED, 1800);
  assert_int_equal(np__pcp_decode_map(buf, n, &req, &r), 0);
  assert_int_equal(r.result, NP_PCP_NOT_AUTHORIZED);
  assert_int_equal(r.lifetime, 1800);
  assert_true(r.has_map);
  assert_string_equal(np__pcp_result_name(r.result), "NOT_AUTHORIZED");
  /* A header-only error (the server could not parse our request). */
  assert_int_equal(np__pcp_decode_map(buf, NP_PCP_HEADER_LEN, &req, &r), 0);
  assert_int_equal(r.result, NP_PCP_NOT_AUTHORIZED);
  assert_false(r.has_map);
  /* ... but never a header-only success. */
  buf[3] = NP_PCP_SUCCESS;
  assert_int_equal(np__pcp_decode_map(buf, NP_PCP_HEADER_LEN, &req, &r), NP_ERR_PROTO);
  /* A NAT-PMP-only gateway's answer to a version-2 request: version 0,
   * opcode 128 + 1, result 1 (unsupported version). */
  static const uint8_t natpmp[8] = {0, 0x81, 0, 1, 0, 0, 0, 0};
  assert_int_equal(np__pcp_decode_map(natpmp, sizeof natpmp, &req, &r), NP_ERR_UNSUPPORTED);
  assert_string_equal(np__pcp_result_name(NP_PCP_EXCESSIVE_REMOTE_PEERS), "EXCESSIVE_REMOTE_PEERS");
  assert_string_equal(np__pcp_result_name(14), "UNKNOWN");
  assert_string_equal(np__pcp_result_name(-1), "UNKNOWN");
}

static void decode_rejects_mismatch(void **state) {
  (void)state;
  np_pcp_map_request req = sample_request();
  uint8_t buf[NP_PCP_MAX_MSG];
  np_pcp_map_response r;
  size_t n = make_response(buf, NP_PCP_SUCCESS, 3600);
  buf[24 + 11] ^= 1; /* another request's nonce */
  assert_int_equal(np__pcp_decode_map(buf, n, &req, &r), NP_ERR_PROTO);
  assert_int_equal(np__pcp_decode_map(buf, n, NULL, &r), 0); /* no expectation: fine */
  n = make_response(buf, NP_PCP_SUCCESS, 3600);
  buf[36] = 6; /* TCP */
  assert_int_equal(np__pcp_decode_map(buf, n, &req, &r), NP_ERR_PROTO);
  n = make_response(buf, NP_PCP_SUCCESS, 3600);
  buf[41] ^= 1; /* internal port */
  assert_int_equal(np__pcp_decode_map(buf, n, &req, &r), NP_ERR_PROTO);
  /* An error response with the body must match too (it is someone's). */
  n = make_response(buf, NP_PCP_NO_RESOURCES, 0);
  buf[24] ^= 0xff;
  assert_int_equal(np__pcp_decode_map(buf, n, &req, &r), NP_ERR_PROTO);
}

static void decode_rejects_hostile(void **state) {
  (void)state;
  np_pcp_map_request req = sample_request();
  uint8_t buf[NP_PCP_MAX_MSG + 8];
  np_pcp_map_response r;
  size_t n = make_response(buf, NP_PCP_SUCCESS, 3600);
  /* Every truncation of a valid response is refused (or, at 24 bytes, a
   * header-only success, which is refused as well). */
  for (size_t len = 0; len < n; len++)
    assert_int_not_equal(np__pcp_decode_map(buf, len, &req, &r), 0);
  assert_int_equal(np__pcp_decode_map(NULL, n, &req, &r), NP_ERR_PROTO);
  assert_int_equal(np__pcp_decode_map(buf, n, &req, NULL), NP_ERR_INVAL);
  /* Not a response (R bit clear: our own request looped back). */
  n = make_response(buf, NP_PCP_SUCCESS, 3600);
  buf[1] = NP_PCP_OP_MAP;
  assert_int_equal(np__pcp_decode_map(buf, n, &req, &r), NP_ERR_PROTO);
  /* Another opcode (PEER = 2, ANNOUNCE = 0). */
  buf[1] = 0x82;
  assert_int_equal(np__pcp_decode_map(buf, n, &req, &r), NP_ERR_PROTO);
  buf[1] = 0x80;
  assert_int_equal(np__pcp_decode_map(buf, n, &req, &r), NP_ERR_PROTO);
  /* Oversized: past the 1100-byte PCP maximum, even if well formed. */
  n = make_response(buf, NP_PCP_SUCCESS, 3600);
  memset(buf + n, 0, sizeof buf - n);
  size_t big = NP_PCP_MAX_MSG + 4;
  uint16_t olen = (uint16_t)(big - n - 4);
  buf[n] = 0x80;
  buf[n + 2] = (uint8_t)(olen >> 8);
  buf[n + 3] = (uint8_t)olen;
  assert_int_equal(np__pcp_decode_map(buf, big, &req, &r), NP_ERR_PROTO);
  /* The same option filling exactly up to 1100 bytes is fine. */
  olen = (uint16_t)(NP_PCP_MAX_MSG - n - 4);
  buf[n + 2] = (uint8_t)(olen >> 8);
  buf[n + 3] = (uint8_t)olen;
  assert_int_equal(np__pcp_decode_map(buf, NP_PCP_MAX_MSG, &req, &r), 0);
  /* Not a multiple of 4. */
  assert_int_equal(np__pcp_decode_map(buf, n + 2, &req, &r), NP_ERR_PROTO);
  /* Between header and body. */
  assert_int_equal(np__pcp_decode_map(buf, 40, &req, &r), NP_ERR_PROTO);
  /* An option claiming more data than there is. */
  buf[n + 2] = 0;
  buf[n + 3] = 9; /* 9 bytes, padded to 12, only 8 follow */
  assert_int_equal(np__pcp_decode_map(buf, n + 4 + 8, &req, &r), NP_ERR_PROTO);
  buf[n + 2] = 0xff;
  buf[n + 3] = 0xff; /* 65535: would wrap a careless 16-bit sum */
  assert_int_equal(np__pcp_decode_map(buf, n + 8, &req, &r), NP_ERR_PROTO);
  /* An option with no data is fine. */
  memset(buf + n, 0, 8);
  buf[n + 2] = 0;
  buf[n + 3] = 0;
  assert_int_equal(np__pcp_decode_map(buf, n + 4, &req, &r), 0);
  /* Failure leaves no half-filled result behind. */
  buf[1] = 0x01;
  memset(&r, 0x5a, sizeof r);
  assert_int_equal(np__pcp_decode_map(buf, n, &req, &r), NP_ERR_PROTO);
  assert_int_equal(r.has_map, false);
  assert_int_equal(r.result, 0);
}

static void portmap_api_edges(void **state) {
  (void)state;
  np_portmap_config cfg;
  memset(&cfg, 0, sizeof cfg);
  np_portmap *pm = NULL;
  assert_int_equal(np__portmap_new(&cfg, &pm), NP_ERR_INVAL); /* no internal port */
  assert_int_equal(np__portmap_new(NULL, &pm), NP_ERR_INVAL);
  cfg.internal_port = 40000;
  cfg.lifetime_s = -1;
  assert_int_equal(np__portmap_new(&cfg, &pm), NP_ERR_INVAL);
  cfg.lifetime_s = 0;
  cfg.no_pcp = cfg.no_natpmp = cfg.no_upnp = true;
  assert_int_equal(np__portmap_new(&cfg, &pm), 0);
  assert_int_equal(np__portmap_protocol(pm), NP_PORTMAP_NONE);
  np_addr ext;
  assert_int_equal(np__portmap_open(pm, &ext), NP_ERR_UNSUPPORTED); /* all disabled */
  assert_int_equal(np__portmap_open(pm, NULL), NP_ERR_INVAL);
  assert_int_equal(np__portmap_close(pm), 0); /* nothing to delete */
  np__portmap_free(pm);
  np__portmap_free(NULL);
  assert_string_equal(np__portmap_proto_name(NP_PORTMAP_PCP), "pcp");
  assert_string_equal(np__portmap_proto_name(NP_PORTMAP_NATPMP), "natpmp");
  assert_string_equal(np__portmap_proto_name(NP_PORTMAP_UPNP), "upnp");
  assert_string_equal(np__portmap_proto_name(NP_PORTMAP_NONE), "none");
  assert_string_equal(np__portmap_proto_name((enum np_portmap_proto)42), "none");
}

/* Nobody listens on 127.0.0.1:5351: PCP and NAT-PMP learn that from the
 * ICMP port unreachable at once, long before the budget runs out. */
static void portmap_fails_fast_without_gateway(void **state) {
  (void)state;
  np_portmap_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.internal_port = 40000;
  cfg.no_upnp = true;
  cfg.timeout_ms = 3000;
  assert_int_equal(np_addr_parse("127.0.0.1", 1, &cfg.gateway), 0);
  np_portmap *pm = NULL;
  assert_int_equal(np__portmap_new(&cfg, &pm), 0);
  np_addr ext;
  int64_t t0 = np__now_ms();
  assert_int_equal(np__portmap_open(pm, &ext), NP_ERR_TIMEOUT);
  assert_true(np__now_ms() - t0 < 1500);
  assert_int_equal(np__portmap_protocol(pm), NP_PORTMAP_NONE);
  np__portmap_free(pm);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(encode_map_ipv4_layout),
      cmocka_unit_test(encode_map_ipv6_and_suggested),
      cmocka_unit_test(encode_rejects),
      cmocka_unit_test(decode_success),
      cmocka_unit_test(decode_errors),
      cmocka_unit_test(decode_rejects_mismatch),
      cmocka_unit_test(decode_rejects_hostile),
      cmocka_unit_test(portmap_api_edges),
      cmocka_unit_test(portmap_fails_fast_without_gateway),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
