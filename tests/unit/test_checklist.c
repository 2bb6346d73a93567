/* Phase-0 candidate pairing: the order and the mapping count feed the
 * predictor on both peers, so they are checked exactly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "natpunch.h"
#include "traversal/checklist.h"

#include <string.h>

static np_addr addr(const char *text) {
  np_addr a;
  assert_int_equal(np_addr_parse(text, 0, &a), 0);
  return a;
}

/* Candidates from up to 2 private and 2 mapped addresses (NULL ends). */
static np_sig_candidates cands(const char *priv0, const char *priv1, const char *mapped0,
                               const char *mapped1, const char *portmap) {
  np_sig_candidates c;
  memset(&c, 0, sizeof c);
  const char *priv[] = {priv0, priv1};
  for (int i = 0; i < 2 && priv[i]; i++)
    c.private_addrs[c.n_private++] = addr(priv[i]);
  if (mapped0)
    c.mapped[c.n_mapped++] = addr(mapped0);
  if (mapped0 && mapped1)
    c.mapped[c.n_mapped++] = addr(mapped1);
  if (portmap)
    c.portmap = addr(portmap);
  return c;
}

static void expect(const np_check *got, int i, const char *text, enum np_cand_type type) {
  np_addr want = addr(text);
  assert_true(np_addr_equal(&got[i].remote, &want));
  assert_int_equal(got[i].type, type);
}

static void same_nat_hosts_first(void **state) {
  (void)state;
  np_sig_candidates self =
      cands("192.168.1.10:4000", NULL, "203.0.113.5:40000", "203.0.113.5:40001", NULL);
  np_sig_candidates peer = cands("192.168.1.11:5000", "10.0.0.11:5000", "203.0.113.5:40100",
                                 "203.0.113.5:40101", "203.0.113.5:6000");
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1;
  assert_true(np_checklist_same_nat(&self, &peer));
  int n = np_checklist_build(&self, &peer, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 5);
  expect(out, 0, "192.168.1.11:5000", NP_CAND_HOST);
  expect(out, 1, "10.0.0.11:5000", NP_CAND_HOST);
  expect(out, 2, "203.0.113.5:40100", NP_CAND_MAPPED);
  expect(out, 3, "203.0.113.5:40101", NP_CAND_MAPPED);
  expect(out, 4, "203.0.113.5:6000", NP_CAND_PORTMAP);
  assert_int_equal(mappings, 3);
  /* cap keeps the head of the list and counts only what was written */
  n = np_checklist_build(&self, &peer, out, 3, &mappings);
  assert_int_equal(n, 3);
  assert_int_equal(mappings, 1);
  expect(out, 2, "203.0.113.5:40100", NP_CAND_MAPPED);
}

static void different_nats_skip_hosts(void **state) {
  (void)state;
  np_sig_candidates self =
      cands("192.168.1.10:4000", NULL, "203.0.113.5:40000", "203.0.113.5:40001", NULL);
  np_sig_candidates peer = cands("192.168.1.11:5000", NULL, "198.51.100.9:30000",
                                 "198.51.100.9:30002", "198.51.100.9:6000");
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1;
  assert_false(np_checklist_same_nat(&self, &peer));
  int n = np_checklist_build(&self, &peer, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 3);
  expect(out, 0, "198.51.100.9:30000", NP_CAND_MAPPED);
  expect(out, 1, "198.51.100.9:30002", NP_CAND_MAPPED);
  expect(out, 2, "198.51.100.9:6000", NP_CAND_PORTMAP);
  assert_int_equal(mappings, 3);
  /* NULL mappings is allowed */
  assert_int_equal(np_checklist_build(&self, &peer, out, NP_CHECKLIST_MAX, NULL), 3);
}

static void no_mapping_includes_hosts(void **state) {
  (void)state;
  /* self found no public address: a flat network, hosts are worth a try */
  np_sig_candidates self = cands("10.1.0.1:4000", NULL, NULL, NULL, NULL);
  np_sig_candidates peer = cands("10.1.0.2:5000", NULL, "198.51.100.9:30000", NULL, NULL);
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1;
  assert_false(np_checklist_same_nat(&self, &peer));
  int n = np_checklist_build(&self, &peer, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 2);
  expect(out, 0, "10.1.0.2:5000", NP_CAND_HOST);
  expect(out, 1, "198.51.100.9:30000", NP_CAND_MAPPED);
  assert_int_equal(mappings, 1);
  /* and the other way round: the peer has none */
  n = np_checklist_build(&peer, &self, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 1);
  expect(out, 0, "10.1.0.1:4000", NP_CAND_HOST);
  assert_int_equal(mappings, 0);
}

static void dedup_and_portmap_last(void **state) {
  (void)state;
  np_sig_candidates self = cands(NULL, NULL, "203.0.113.5:40000", "203.0.113.5:40000", NULL);
  /* a cone NAT: both servers saw the same port; the port mapping is it too */
  np_sig_candidates peer = cands("192.168.1.11:5000", NULL, "198.51.100.9:30000",
                                 "198.51.100.9:30000", "198.51.100.9:30000");
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1;
  int n = np_checklist_build(&self, &peer, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 1);
  /* kept once, as the forwarded port it is (open to anyone) */
  expect(out, 0, "198.51.100.9:30000", NP_CAND_PORTMAP);
  assert_int_equal(mappings, 1);
  /* a distinct port mapping comes after both views */
  peer.portmap = addr("198.51.100.9:6000");
  peer.mapped[1] = addr("198.51.100.9:30001");
  n = np_checklist_build(&self, &peer, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 3);
  expect(out, 0, "198.51.100.9:30000", NP_CAND_MAPPED);
  expect(out, 1, "198.51.100.9:30001", NP_CAND_MAPPED);
  expect(out, 2, "198.51.100.9:6000", NP_CAND_PORTMAP);
  assert_int_equal(mappings, 3);
}

static void family_filter(void **state) {
  (void)state;
  np_sig_candidates self = cands("10.1.0.1:4000", NULL, NULL, NULL, NULL);
  np_sig_candidates peer =
      cands("[fd00::2]:5000", "10.1.0.2:5000", "198.51.100.9:30000", NULL, "[2001:db8::9]:6000");
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1;
  int n = np_checklist_build(&self, &peer, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 2);
  expect(out, 0, "10.1.0.2:5000", NP_CAND_HOST);
  expect(out, 1, "198.51.100.9:30000", NP_CAND_MAPPED);
  assert_int_equal(mappings, 1);
  /* an IPv6 self keeps only the IPv6 ones; its mapped address decides */
  np_sig_candidates self6 = cands("10.1.0.1:4000", NULL, "[2001:db8::1]:4000", NULL, NULL);
  n = np_checklist_build(&self6, &peer, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 1);
  expect(out, 0, "[2001:db8::9]:6000", NP_CAND_PORTMAP);
  assert_int_equal(mappings, 1);
  /* a self with no address at all accepts both families */
  np_sig_candidates none;
  memset(&none, 0, sizeof none);
  n = np_checklist_build(&none, &peer, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 4);
  expect(out, 0, "[fd00::2]:5000", NP_CAND_HOST);
  expect(out, 3, "[2001:db8::9]:6000", NP_CAND_PORTMAP);
  assert_int_equal(mappings, 2);
}

static void skips_unusable_addresses(void **state) {
  (void)state;
  np_sig_candidates self = cands("10.1.0.1:4000", NULL, NULL, NULL, NULL);
  np_sig_candidates peer =
      cands("0.0.0.0:5000", "224.0.0.251:5353", "198.51.100.9:30000", "198.51.100.9:1", NULL);
  np_addr_set_port(&peer.mapped[1], 0);
  peer.private_addrs[peer.n_private++] = addr("[ff02::1]:5000");
  peer.private_addrs[peer.n_private++] = addr("10.1.0.2:5000");
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1;
  int n = np_checklist_build(&self, &peer, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 2);
  expect(out, 0, "10.1.0.2:5000", NP_CAND_HOST);
  expect(out, 1, "198.51.100.9:30000", NP_CAND_MAPPED);
  assert_int_equal(mappings, 1);
}

static void model_from_candidates(void **state) {
  (void)state;
  np_nat_model m;
  np_sig_candidates c = cands(NULL, NULL, "198.51.100.9:30000", "198.51.100.9:30002", NULL);
  c.have_delta = true;
  c.delta = 2;
  np_checklist_model(&c, &m);
  assert_true(m.known);
  assert_int_equal(m.base, 30002); /* the second server's view */
  assert_int_equal(m.stride, 2);
  assert_int_equal(m.sent, 0);
  assert_int_equal(np_predict_kind(&m), 1);
  /* two views without a delta: known, taken as cone */
  c.have_delta = false;
  np_checklist_model(&c, &m);
  assert_true(m.known);
  assert_int_equal(m.stride, 0);
  /* one view: unknown unless a delta came with it */
  c = cands(NULL, NULL, "198.51.100.9:30000", NULL, NULL);
  np_checklist_model(&c, &m);
  assert_false(m.known);
  assert_int_equal(m.base, 30000);
  c.have_delta = true;
  c.delta = -1;
  np_checklist_model(&c, &m);
  assert_true(m.known);
  assert_int_equal(m.stride, -1);
  /* nothing */
  memset(&c, 0, sizeof c);
  np_checklist_model(&c, &m);
  assert_false(m.known);
  assert_int_equal(m.base, 0);
}

static void via_names(void **state) {
  (void)state;
  assert_string_equal(np_cand_type_via(NP_CAND_HOST), "host");
  assert_string_equal(np_cand_type_via(NP_CAND_MAPPED), "reflexive");
  assert_string_equal(np_cand_type_via(NP_CAND_PORTMAP), "portmap");
  assert_string_equal(np_cand_type_via(NP_CAND_PRFLX), "reflexive");
  assert_string_equal(np_cand_type_via(NP_CAND_PREDICTED), "predicted");
  assert_string_equal(np_cand_type_via(NP_CAND_BIRTHDAY), "birthday");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(same_nat_hosts_first),
      cmocka_unit_test(different_nats_skip_hosts),
      cmocka_unit_test(no_mapping_includes_hosts),
      cmocka_unit_test(dedup_and_portmap_last),
      cmocka_unit_test(family_filter),
      cmocka_unit_test(skips_unusable_addresses),
      cmocka_unit_test(model_from_candidates),
      cmocka_unit_test(via_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
