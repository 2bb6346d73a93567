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

/* What the rendezvous server saw of both sides (ports ignored). */
static np_checklist_seen seen(const char *self, const char *peer) {
  np_checklist_seen v;
  memset(&v, 0, sizeof v);
  if (self)
    v.self = addr(self);
  if (peer)
    v.peer = addr(peer);
  return v;
}

static int build(const np_sig_candidates *self, const np_sig_candidates *peer,
                 const np_checklist_seen *v, np_check *out, int cap, int *mappings) {
  return np__checklist_build(self, peer, v, out, cap, mappings, NULL, NULL);
}

static void same_nat_hosts_first(void **state) {
  (void)state;
  np_sig_candidates self =
      cands("192.168.1.10:4000", NULL, "203.0.113.5:40000", "203.0.113.5:40001", NULL);
  np_sig_candidates peer = cands("192.168.1.11:5000", "10.0.0.11:5000", "203.0.113.5:40100",
                                 "203.0.113.5:40101", "203.0.113.5:6000");
  np_checklist_seen v = seen("203.0.113.5:7001", "203.0.113.5:7002");
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1;
  assert_true(np__checklist_same_nat(&v));
  int n = build(&self, &peer, &v, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 5);
  expect(out, 0, "192.168.1.11:5000", NP_CAND_HOST);
  expect(out, 1, "10.0.0.11:5000", NP_CAND_HOST);
  expect(out, 2, "203.0.113.5:40100", NP_CAND_MAPPED);
  expect(out, 3, "203.0.113.5:40101", NP_CAND_MAPPED);
  expect(out, 4, "203.0.113.5:6000", NP_CAND_PORTMAP);
  assert_int_equal(mappings, 3);
  /* cap keeps the head of the list and counts only what was written */
  n = build(&self, &peer, &v, out, 3, &mappings);
  assert_int_equal(n, 3);
  assert_int_equal(mappings, 1);
  expect(out, 2, "203.0.113.5:40100", NP_CAND_MAPPED);
  /* Our own public IP unknown: the same-NAT test cannot be made. */
  np_checklist_seen half = seen(NULL, "203.0.113.5:7002");
  assert_false(np__checklist_same_nat(&half));
  n = build(&self, &peer, &half, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 3);
  expect(out, 0, "203.0.113.5:40100", NP_CAND_MAPPED);
}

static void different_nats_skip_hosts(void **state) {
  (void)state;
  np_sig_candidates self =
      cands("192.168.1.10:4000", NULL, "203.0.113.5:40000", "203.0.113.5:40001", NULL);
  np_sig_candidates peer = cands("192.168.1.11:5000", NULL, "198.51.100.9:30000",
                                 "198.51.100.9:30002", "198.51.100.9:6000");
  np_checklist_seen v = seen("203.0.113.5:7001", "198.51.100.9:7002");
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1;
  assert_false(np__checklist_same_nat(&v));
  int n = build(&self, &peer, &v, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 3);
  expect(out, 0, "198.51.100.9:30000", NP_CAND_MAPPED);
  expect(out, 1, "198.51.100.9:30002", NP_CAND_MAPPED);
  expect(out, 2, "198.51.100.9:6000", NP_CAND_PORTMAP);
  assert_int_equal(mappings, 3);
  /* NULL mappings is allowed */
  assert_int_equal(build(&self, &peer, &v, out, NP_CHECKLIST_MAX, NULL), 3);
}

/* A flat network (no NAT, e.g. one LAN with the rendezvous server on it):
 * each side's host address is what the server saw, so it counts as the
 * peer's public address; another host address does not. */
static void flat_network_host_is_observed(void **state) {
  (void)state;
  np_sig_candidates self = cands("10.1.0.1:4000", NULL, NULL, NULL, NULL);
  np_sig_candidates peer = cands("10.1.0.2:5000", "10.9.0.2:5000", NULL, NULL, NULL);
  np_checklist_seen v = seen("10.1.0.1:7001", "10.1.0.2:7002");
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1;
  assert_false(np__checklist_same_nat(&v));
  int n = build(&self, &peer, &v, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 1);
  expect(out, 0, "10.1.0.2:5000", NP_CAND_HOST);
  assert_int_equal(mappings, 1); /* a public target: a new mapping */
  /* And a peer with no NAT but mapped views: kept once, as reflexive. */
  peer = cands("198.51.100.9:5000", NULL, "198.51.100.9:5000", "198.51.100.9:5000", NULL);
  v = seen("203.0.113.5:7001", "198.51.100.9:7002");
  n = build(&self, &peer, &v, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 1);
  expect(out, 0, "198.51.100.9:5000", NP_CAND_MAPPED);
}

/* An offer that names third parties, aimed at a listener (self): the
 * third host's public address, a private address behind another NAT,
 * the listener's own addresses, loopback and friends. Nothing is left,
 * and the log hears of each drop. Without the peer's OBSERVED address,
 * nothing public counts. */
static void count_drop(void *user, const np_addr *a, const char *why) {
  (void)a;
  assert_non_null(why);
  (*(int *)user)++;
}

static void hostile_offer_left_empty(void **state) {
  (void)state;
  np_sig_candidates self =
      cands("10.2.0.2:5000", NULL, "203.0.113.12:42000", "203.0.113.12:42000", NULL);
  np_sig_candidates peer =
      cands("10.2.0.3:22", "127.0.0.1:5000", "198.51.100.77:3478", "203.0.113.12:9", NULL);
  peer.private_addrs[peer.n_private++] = addr("169.254.0.1:5000");
  peer.private_addrs[peer.n_private++] = addr("255.255.255.255:5000");
  peer.portmap = addr("10.2.0.1:80");
  np_checklist_seen v = seen("203.0.113.12:7001", "203.0.113.11:7002");
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1, dropped = 0;
  int n = np__checklist_build(&self, &peer, &v, out, NP_CHECKLIST_MAX, &mappings, count_drop,
                             &dropped);
  assert_int_equal(n, 0);
  assert_int_equal(mappings, 0);
  assert_int_equal(dropped, 7);
  /* One real candidate among them is kept. */
  peer.mapped[1] = addr("203.0.113.11:31000");
  n = build(&self, &peer, &v, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 1);
  expect(out, 0, "203.0.113.11:31000", NP_CAND_MAPPED);
  /* ...but not without the server's view of the peer. */
  np_checklist_seen blind = seen("203.0.113.12:7001", NULL);
  assert_int_equal(build(&self, &peer, &blind, out, NP_CHECKLIST_MAX, &mappings), 0);
  assert_int_equal(build(&self, &peer, NULL, out, NP_CHECKLIST_MAX, &mappings), 0);
}

/* The rules one by one (np__checklist_aim). */
static void aim_rules(void **state) {
  (void)state;
  np_sig_candidates self = cands("10.2.0.2:5000", NULL, "203.0.113.12:42000", NULL, NULL);
  np_checklist_seen v = seen("203.0.113.12:7001", "203.0.113.11:7002");
  const struct {
    const char *a;
    enum np_cand_type type;
    bool ok;
  } cases[] = {
      {"203.0.113.11:31000", NP_CAND_MAPPED, true},
      {"203.0.113.11:1", NP_CAND_PREDICTED, true},
      {"203.0.113.11:5000", NP_CAND_HOST, true}, /* its public IP: no NAT */
      {"203.0.113.11:5000", NP_CAND_PRFLX, true},
      {"198.51.100.77:3478", NP_CAND_MAPPED, false},
      {"198.51.100.77:3478", NP_CAND_PORTMAP, false},
      {"198.51.100.77:3478", NP_CAND_BIRTHDAY, false},
      {"198.51.100.77:3478", NP_CAND_PRFLX, false},
      {"10.1.0.2:5000", NP_CAND_HOST, false}, /* behind another NAT */
      {"127.0.0.1:5000", NP_CAND_MAPPED, false},
      {"127.0.0.2:5000", NP_CAND_HOST, false},
      {"0.1.2.3:5000", NP_CAND_MAPPED, false},
      {"0.0.0.0:5000", NP_CAND_MAPPED, false},
      {"255.255.255.255:5000", NP_CAND_HOST, false},
      {"239.1.1.1:5000", NP_CAND_MAPPED, false},
      {"169.254.3.4:5000", NP_CAND_HOST, false},
      {"[fe80::1]:5000", NP_CAND_HOST, false},
      {"[::1]:5000", NP_CAND_HOST, false},
      {"[ff02::1]:5000", NP_CAND_HOST, false},
      {"[::ffff:198.51.100.77]:5000", NP_CAND_HOST, false},
      {"203.0.113.12:6000", NP_CAND_MAPPED, false}, /* our own public IP */
      {"10.2.0.2:6000", NP_CAND_HOST, false},       /* our own host */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    np_addr a = addr(cases[i].a);
    const char *why = np__checklist_aim(&self, &v, &a, cases[i].type);
    if ((why == NULL) != cases[i].ok)
      fail_msg("%s (type %d): %s", cases[i].a, cases[i].type, why ? why : "allowed");
  }
  np_addr port0 = addr("203.0.113.11:1");
  np_addr_set_port(&port0, 0);
  assert_non_null(np__checklist_aim(&self, &v, &port0, NP_CAND_MAPPED));
  /* Behind one NAT: the peer's LAN is ours, private space only. */
  np_checklist_seen one = seen("203.0.113.12:7001", "203.0.113.12:7002");
  np_addr lan = addr("10.2.0.3:5000"), pub = addr("198.51.100.77:5000");
  assert_null(np__checklist_aim(&self, &one, &lan, NP_CAND_HOST));
  assert_null(np__checklist_aim(&self, &one, &lan, NP_CAND_PRFLX));
  assert_non_null(np__checklist_aim(&self, &one, &pub, NP_CAND_HOST));
  assert_non_null(np__checklist_aim(&self, &one, &lan, NP_CAND_MAPPED));
  /* Two peers on one machine through a rendezvous server on loopback:
   * 127.0.0.1 is the peer's OBSERVED IP, so it may be probed, as may our
   * own IP there; another loopback address may not. */
  np_checklist_seen lo = seen("127.0.0.1:7001", "127.0.0.1:7002");
  np_addr l1 = addr("127.0.0.1:5001"), l2 = addr("127.0.0.2:5001");
  assert_null(np__checklist_aim(&self, &lo, &l1, NP_CAND_MAPPED));
  assert_null(np__checklist_aim(&self, &lo, &l1, NP_CAND_PREDICTED));
  assert_non_null(np__checklist_aim(&self, &lo, &l2, NP_CAND_HOST));
}

static void dedup_and_portmap_last(void **state) {
  (void)state;
  np_sig_candidates self = cands(NULL, NULL, "203.0.113.5:40000", "203.0.113.5:40000", NULL);
  /* a cone NAT: both servers saw the same port; the port mapping is it too */
  np_sig_candidates peer = cands("192.168.1.11:5000", NULL, "198.51.100.9:30000",
                                 "198.51.100.9:30000", "198.51.100.9:30000");
  np_checklist_seen v = seen("203.0.113.5:7001", "198.51.100.9:7002");
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1;
  int n = build(&self, &peer, &v, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 1);
  /* kept once, as the forwarded port it is (open to anyone) */
  expect(out, 0, "198.51.100.9:30000", NP_CAND_PORTMAP);
  assert_int_equal(mappings, 1);
  /* a distinct port mapping comes after both views */
  peer.portmap = addr("198.51.100.9:6000");
  peer.mapped[1] = addr("198.51.100.9:30001");
  n = build(&self, &peer, &v, out, NP_CHECKLIST_MAX, &mappings);
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
  /* Same NAT (the server saw one IP): hosts count; v6 ones are not ours. */
  np_checklist_seen v = seen("198.51.100.9:7001", "198.51.100.9:7002");
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1;
  int n = build(&self, &peer, &v, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 2);
  expect(out, 0, "10.1.0.2:5000", NP_CAND_HOST);
  expect(out, 1, "198.51.100.9:30000", NP_CAND_MAPPED);
  assert_int_equal(mappings, 1);
  /* an IPv6 self keeps only the IPv6 ones; its mapped address decides */
  np_sig_candidates self6 = cands("10.1.0.1:4000", NULL, "[2001:db8::1]:4000", NULL, NULL);
  np_checklist_seen v6 = seen("[2001:db8::1]:7001", "[2001:db8::9]:7002");
  n = build(&self6, &peer, &v6, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 1);
  expect(out, 0, "[2001:db8::9]:6000", NP_CAND_PORTMAP);
  assert_int_equal(mappings, 1);
  /* a self with no address at all accepts both families */
  np_sig_candidates none;
  memset(&none, 0, sizeof none);
  n = build(&none, &peer, &v, out, NP_CHECKLIST_MAX, &mappings);
  assert_int_equal(n, 3);
  expect(out, 0, "[fd00::2]:5000", NP_CAND_HOST);
  expect(out, 2, "198.51.100.9:30000", NP_CAND_MAPPED);
  assert_int_equal(mappings, 1);
}

static void skips_unusable_addresses(void **state) {
  (void)state;
  np_sig_candidates self = cands("10.1.0.1:4000", NULL, NULL, NULL, NULL);
  np_sig_candidates peer =
      cands("0.0.0.0:5000", "224.0.0.251:5353", "198.51.100.9:30000", "198.51.100.9:1", NULL);
  np_addr_set_port(&peer.mapped[1], 0);
  peer.private_addrs[peer.n_private++] = addr("[ff02::1]:5000");
  peer.private_addrs[peer.n_private++] = addr("10.1.0.2:5000");
  np_checklist_seen v = seen("198.51.100.9:7001", "198.51.100.9:7002");
  np_check out[NP_CHECKLIST_MAX];
  int mappings = -1;
  int n = build(&self, &peer, &v, out, NP_CHECKLIST_MAX, &mappings);
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
  np__checklist_model(&c, &m);
  assert_true(m.known);
  assert_int_equal(m.base, 30002); /* the second server's view */
  assert_int_equal(m.stride, 2);
  assert_int_equal(m.sent, 0);
  assert_int_equal(np__predict_kind(&m), 1);
  /* two views without a delta: known, taken as cone */
  c.have_delta = false;
  np__checklist_model(&c, &m);
  assert_true(m.known);
  assert_int_equal(m.stride, 0);
  /* one view: unknown unless a delta came with it */
  c = cands(NULL, NULL, "198.51.100.9:30000", NULL, NULL);
  np__checklist_model(&c, &m);
  assert_false(m.known);
  assert_int_equal(m.base, 30000);
  c.have_delta = true;
  c.delta = -1;
  np__checklist_model(&c, &m);
  assert_true(m.known);
  assert_int_equal(m.stride, -1);
  /* nothing */
  memset(&c, 0, sizeof c);
  np__checklist_model(&c, &m);
  assert_false(m.known);
  assert_int_equal(m.base, 0);
}

static void via_names(void **state) {
  (void)state;
  assert_string_equal(np__cand_type_via(NP_CAND_HOST), "host");
  assert_string_equal(np__cand_type_via(NP_CAND_MAPPED), "reflexive");
  assert_string_equal(np__cand_type_via(NP_CAND_PORTMAP), "portmap");
  assert_string_equal(np__cand_type_via(NP_CAND_PRFLX), "reflexive");
  assert_string_equal(np__cand_type_via(NP_CAND_PREDICTED), "predicted");
  assert_string_equal(np__cand_type_via(NP_CAND_BIRTHDAY), "birthday");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(same_nat_hosts_first),
      cmocka_unit_test(different_nats_skip_hosts),
      cmocka_unit_test(flat_network_host_is_observed),
      cmocka_unit_test(hostile_offer_left_empty),
      cmocka_unit_test(aim_rules),
      cmocka_unit_test(dedup_and_portmap_last),
      cmocka_unit_test(family_filter),
      cmocka_unit_test(skips_unusable_addresses),
      cmocka_unit_test(model_from_candidates),
      cmocka_unit_test(via_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
