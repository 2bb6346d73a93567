/*
 * The NAT probe's state machine against a simulated world: a model NAT
 * (configurable mapping, filtering, port allocation, hairpinning) and model
 * RFC 5780 servers built with the real STUN codec. No sockets, no sleeping:
 * time is a variable the test advances.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "discovery/nat_probe.h"
#include "stun/stun.h"

#include <string.h>

/* ---- the simulated world ------------------------------------------------ */

#define MAX_MAPS 64

struct mapping {
  np_addr local, remote, mapped;
};

struct world {
  /* NAT model */
  bool nat;
  enum np_nat_behavior mapping, filtering;
  bool preserve_port; /* first mapping of a local port keeps it */
  bool hairpin;
  bool hairpin_silent; /* drop instead of ICMP port unreachable (Linux sends one) */
  uint16_t next_port;
  int32_t stride;    /* step of next_port per new mapping (0: 1), on 1024..65535 */
  bool random_ports; /* new mappings get LCG ports instead */
  uint32_t lcg;
  np_addr public_ip;
  struct mapping maps[MAX_MAPS];
  int n_maps;
  /* servers */
  np_addr s1, s1_alt; /* primary and OTHER-ADDRESS of server 1 */
  np_addr s2;
  bool s1_rfc5780;
  bool s1_ignores_change; /* answers CHANGE-REQUEST from the primary address */
  bool s1_down, s2_down;
  bool s2_icmp;     /* a down server 2 answers with port unreachable */
  bool s1_alt_down; /* server 1's alternate address and port drop everything */
  int s1_error;   /* answer Binding with this STUN error code */
  int drop_first; /* lose this many of the probe's first datagrams */
  /* the probe's sockets */
  np_addr local[NP_PROBE_NSOCK];
  /* what happened */
  int sent;
  int64_t s1_send_times[8];
  int n_s1_sends;
};

static np_addr A(const char *s) {
  np_addr a;
  assert_int_equal(np_addr_parse(s, 0, &a), 0);
  return a;
}

static void world_init(struct world *w) {
  memset(w, 0, sizeof *w);
  w->nat = true;
  w->mapping = NP_BEHAVIOR_ENDPOINT_INDEPENDENT;
  w->filtering = NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT;
  w->next_port = 40000;
  w->public_ip = A("203.0.113.50:1");
  w->s1 = A("203.0.113.1:3478");
  w->s1_alt = A("203.0.113.2:3479");
  w->s2 = A("203.0.113.3:3478");
  w->s1_rfc5780 = true;
  w->local[NP_PROBE_SOCK_MAIN] = A("10.0.0.2:5000");
  w->local[NP_PROBE_SOCK_FILTER] = A("10.0.0.2:5001");
}

static bool mapping_matches(const struct world *w, const struct mapping *m, const np_addr *local,
                            const np_addr *remote) {
  if (!np_addr_equal(&m->local, local))
    return false;
  switch (w->mapping) {
  case NP_BEHAVIOR_ENDPOINT_INDEPENDENT:
    return true;
  case NP_BEHAVIOR_ADDRESS_DEPENDENT:
    return np_addr_same_ip(&m->remote, remote);
  default:
    return np_addr_equal(&m->remote, remote);
  }
}

/* Outbound translation; records the remote for filtering either way. */
static np_addr nat_out(struct world *w, const np_addr *local, const np_addr *remote) {
  if (!w->nat)
    return *local;
  np_addr mapped;
  bool found = false;
  bool port_used = false;
  for (int i = 0; i < w->n_maps; i++) {
    if (mapping_matches(w, &w->maps[i], local, remote)) {
      mapped = w->maps[i].mapped;
      found = true;
    }
    if (np_addr_port(&w->maps[i].mapped) == np_addr_port(local))
      port_used = true;
  }
  if (!found) {
    mapped = w->public_ip;
    uint16_t port;
    if (w->preserve_port && !port_used) {
      port = np_addr_port(local);
    } else if (w->random_ports) {
      w->lcg = w->lcg * 1103515245u + 12345u;
      port = (uint16_t)(1024 + (w->lcg >> 8) % 64512);
    } else {
      port = w->next_port;
      int32_t step = w->stride ? w->stride : 1;
      int32_t r = ((int32_t)w->next_port - 1024 + step) % 64512;
      w->next_port = (uint16_t)(1024 + (r < 0 ? r + 64512 : r));
    }
    np_addr_set_port(&mapped, port);
  }
  assert_true(w->n_maps < MAX_MAPS);
  w->maps[w->n_maps++] = (struct mapping){*local, *remote, mapped};
  return mapped;
}

/* Inbound: which local address (if any) gets a datagram from 'from' to 'to'. */
static bool nat_in(const struct world *w, const np_addr *from, const np_addr *to, np_addr *local) {
  if (!w->nat) {
    *local = *to;
    return true;
  }
  for (int i = 0; i < w->n_maps; i++) {
    const struct mapping *m = &w->maps[i];
    if (!np_addr_equal(&m->mapped, to))
      continue;
    bool ok =
        w->filtering == NP_BEHAVIOR_ENDPOINT_INDEPENDENT ||
        (w->filtering == NP_BEHAVIOR_ADDRESS_DEPENDENT && np_addr_same_ip(&m->remote, from)) ||
        np_addr_equal(&m->remote, from);
    if (ok) {
      *local = m->local;
      return true;
    }
  }
  return false;
}

static int sock_of(const struct world *w, const np_addr *local) {
  for (int s = 0; s < NP_PROBE_NSOCK; s++)
    if (np_addr_equal(&w->local[s], local))
      return s;
  return -1;
}

/* Server behaviour: answer a Binding request that arrived at 'at' from
 * 'src' (already translated), choosing the reply's source per RFC 5780. */
static void server_answer(struct world *w, np_nat_probe *p, int64_t now, const np_addr *at,
                          const np_addr *src, const uint8_t *req, size_t len, bool rfc5780) {
  np_stun_msg m;
  assert_int_equal(np__stun_read(req, len, &m), 0);
  assert_int_equal(m.cls, NP_STUN_REQUEST);
  np_addr from = *at;
  if (rfc5780 && !w->s1_ignores_change && (m.present & NP_STUN_HAS_CHANGE_REQUEST)) {
    bool at_primary_ip = np_addr_same_ip(at, &w->s1);
    bool at_primary_port = np_addr_port(at) == np_addr_port(&w->s1);
    bool ip = m.change_request & NP_STUN_CHANGE_IP, port = m.change_request & NP_STUN_CHANGE_PORT;
    from = (at_primary_ip != ip) ? w->s1 : w->s1_alt;
    np_addr_set_port(&from,
                     (at_primary_port != port) ? np_addr_port(&w->s1) : np_addr_port(&w->s1_alt));
  }
  uint8_t buf[256];
  np_stun_writer wr;
  if (w->s1_error && rfc5780) {
    np__stun_writer_init(&wr, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_ERROR,
                         NP_STUN_MAGIC_COOKIE, m.txid);
    np__stun_put_error(&wr, (uint16_t)w->s1_error, "Nope");
  } else {
    np__stun_writer_init(&wr, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_SUCCESS,
                        NP_STUN_MAGIC_COOKIE, m.txid);
    np__stun_put_xor_addr(&wr, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, src);
    if (rfc5780)
      np__stun_put_addr(&wr, NP_STUN_ATTR_OTHER_ADDRESS, &w->s1_alt);
  }
  int n = np__stun_writer_finish(&wr);
  assert_true(n > 0);
  np_addr local;
  if (nat_in(w, &from, src, &local)) {
    int s = sock_of(w, &local);
    assert_true(s >= 0);
    np__nat_probe_input(p, now, s, &from, buf, (size_t)n);
  }
}

static bool is_s1_address(const struct world *w, const np_addr *a) {
  np_addr x = w->s1, y = w->s1_alt;
  if (np_addr_equal(a, &x) || np_addr_equal(a, &y))
    return true;
  np_addr_set_port(&x, np_addr_port(&w->s1_alt));
  np_addr_set_port(&y, np_addr_port(&w->s1));
  return np_addr_equal(a, &x) || np_addr_equal(a, &y);
}

static void deliver(struct world *w, np_nat_probe *p, int64_t now, const np_probe_datagram *dg) {
  w->sent++;
  if (np_addr_equal(&dg->to, &w->s1) && dg->sock == NP_PROBE_SOCK_MAIN && w->n_s1_sends < 8)
    w->s1_send_times[w->n_s1_sends++] = now;
  if (w->drop_first > 0) {
    w->drop_first--;
    return;
  }
  np_addr src = nat_out(w, &w->local[dg->sock], &dg->to);
  if (is_s1_address(w, &dg->to)) {
    if (w->s1_alt_down && np_addr_equal(&dg->to, &w->s1_alt))
      return;
    if (!w->s1_down)
      server_answer(w, p, now, &dg->to, &src, dg->buf, dg->len, w->s1_rfc5780);
  } else if (np_addr_equal(&dg->to, &w->s2)) {
    if (!w->s2_down)
      server_answer(w, p, now, &dg->to, &src, dg->buf, dg->len, false);
    else if (w->s2_icmp)
      np__nat_probe_unreachable(p, now, dg->sock, &dg->to);
  } else if (w->nat && np_addr_same_ip(&dg->to, &w->public_ip)) {
    /* Hairpinning: the NAT loops it back, translating the source. */
    np_addr local;
    if (w->hairpin && nat_in(w, &src, &dg->to, &local))
      np__nat_probe_input(p, now, sock_of(w, &local), &src, dg->buf, dg->len);
    else if (!w->hairpin && !w->hairpin_silent)
      np__nat_probe_unreachable(p, now, dg->sock, &dg->to);
  }
}

static int64_t run(struct world *w, const np_probe_config *cfg, np_probe_result *r, int *rc) {
  np_nat_probe *p = NULL;
  assert_int_equal(np__nat_probe_new(cfg, &w->local[NP_PROBE_SOCK_MAIN], NULL, NULL, 0, &p), 0);
  int64_t now = 0;
  for (int iter = 0; iter < 1000; iter++) {
    np_probe_datagram dg;
    while (np__nat_probe_next_datagram(p, now, &dg))
      deliver(w, p, now, &dg);
    if (np__nat_probe_done(p))
      break;
    int64_t wake = np__nat_probe_wakeup(p);
    assert_true(wake > now);
    now = wake;
  }
  assert_true(np__nat_probe_done(p));
  *rc = np__nat_probe_result(p, r);
  np__nat_probe_free(p);
  return now;
}

static np_probe_config config(const struct world *w, int n_servers) {
  np_probe_config c = {0};
  c.servers[0] = w->s1;
  c.servers[1] = w->s2;
  c.n_servers = n_servers;
  return c;
}

/* Runs a default-configured probe against the world; *took (if wanted)
 * gets the simulated time it needed. Returns np__nat_probe_result()'s code. */
static int probe(struct world *w, int n_servers, np_probe_result *r, int64_t *took) {
  np_probe_config c = config(w, n_servers);
  int rc;
  int64_t t = run(w, &c, r, &rc);
  if (took)
    *took = t;
  return rc;
}

/* ---- tests ------------------------------------------------------------- */

static void no_nat(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  w.nat = false;
  np_probe_result r;
  int64_t took;
  int rc = probe(&w, 2, &r, &took);
  assert_int_equal(rc, 0);
  assert_false(r.nat);
  assert_true(r.port_preserving);
  assert_true(r.have_delta);
  assert_int_equal(r.delta, 0);
  assert_int_equal(r.n_mapped, 2);
  assert_true(np_addr_equal(&r.mapped[0], &w.local[0]));
  assert_int_equal(r.mapping, NP_BEHAVIOR_ENDPOINT_INDEPENDENT);
  assert_int_equal(r.filtering, NP_BEHAVIOR_ENDPOINT_INDEPENDENT);
  assert_int_equal(r.hairpinning, NP_UNKNOWN); /* meaningless without a NAT */
  assert_true(r.rfc5780);
  assert_true(np_addr_equal(&r.other_address, &w.s1_alt));
  /* Everything answered at once: no waiting for a deadline. */
  assert_int_equal(took, 0);
}

/* Every RFC 4787 mapping x filtering combination is told apart. */
static void all_behaviours(void **state) {
  (void)state;
  const enum np_nat_behavior kinds[] = {NP_BEHAVIOR_ENDPOINT_INDEPENDENT,
                                        NP_BEHAVIOR_ADDRESS_DEPENDENT,
                                        NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT};
  for (int mi = 0; mi < 3; mi++) {
    for (int fi = 0; fi < 3; fi++) {
      struct world w;
      world_init(&w);
      w.mapping = kinds[mi];
      w.filtering = kinds[fi];
      np_probe_result r;
      int64_t took;
      int rc = probe(&w, 2, &r, &took);
      assert_int_equal(rc, 0);
      assert_true(r.nat);
      assert_false(r.port_preserving);
      assert_int_equal(r.mapping, kinds[mi]);
      assert_int_equal(r.filtering, kinds[fi]);
      assert_true(np_addr_same_ip(&r.mapped[0], &w.public_ip));
      /* Sequential allocator: the second server's mapping is the very next
       * port when mappings depend on the destination, the same otherwise. */
      assert_true(r.have_delta);
      assert_int_equal(r.delta, kinds[mi] == NP_BEHAVIOR_ENDPOINT_INDEPENDENT ? 0 : 1);
      assert_true(took <= 3000);
      /* An endpoint-independent filter answers at once; the others are
       * judged by silence, which takes the retransmission schedule. */
      if (kinds[fi] == NP_BEHAVIOR_ENDPOINT_INDEPENDENT)
        assert_int_equal(took, 0);
      else
        assert_true(took >= 1000);
    }
  }
}

/* A Linux masquerade: port kept, EIM, APDF. */
static void port_preserving_cone(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  w.preserve_port = true;
  np_probe_result r;
  int rc = probe(&w, 2, &r, NULL);
  assert_int_equal(rc, 0);
  assert_true(r.nat);
  assert_true(r.port_preserving);
  assert_int_equal(np_addr_port(&r.mapped[0]), 5000);
  assert_int_equal(r.delta, 0);
}

static void hairpinning(void **state) {
  (void)state;
  for (int hp = 0; hp < 3; hp++) {
    struct world w;
    world_init(&w);
    w.hairpin = hp == 1;
    w.hairpin_silent = hp == 2;                     /* judged by silence instead of an ICMP error */
    w.filtering = NP_BEHAVIOR_ENDPOINT_INDEPENDENT; /* so the loop-back passes the filter */
    np_probe_result r;
    int rc = probe(&w, 2, &r, NULL);
    assert_int_equal(rc, 0);
    assert_int_equal(r.hairpinning, hp == 1 ? NP_YES : NP_NO);
    np_probe_config c = config(&w, 2);
    c.no_hairpin = true;
    world_init(&w);
    w.hairpin = hp == 1;
    run(&w, &c, &r, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(r.hairpinning, NP_UNKNOWN);
  }
}

static void no_rfc5780(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  w.s1_rfc5780 = false;
  np_probe_result r;
  int rc = probe(&w, 2, &r, NULL);
  assert_int_equal(rc, 0);
  assert_false(r.rfc5780);
  assert_int_equal(r.mapping, NP_BEHAVIOR_UNKNOWN);
  assert_int_equal(r.filtering, NP_BEHAVIOR_UNKNOWN);
  assert_int_equal(r.n_mapped, 2);
  assert_int_equal(r.delta, 0);
}

/* A server that ignores CHANGE-REQUEST must not make the filter look open. */
static void server_ignoring_change_request(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  w.s1_ignores_change = true;
  np_probe_result r;
  int rc = probe(&w, 2, &r, NULL);
  assert_int_equal(rc, 0);
  assert_int_equal(r.filtering, NP_BEHAVIOR_UNKNOWN);
  assert_int_equal(r.mapping, NP_BEHAVIOR_ENDPOINT_INDEPENDENT);
}

static void first_server_down(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  w.s1_down = true;
  np_probe_config c = config(&w, 2);
  c.timeout_ms = 2000;
  np_probe_result r;
  int rc;
  int64_t took = run(&w, &c, &r, &rc);
  assert_int_equal(rc, NP_ERR_TIMEOUT);
  assert_int_equal(r.server_err[0], NP_ERR_TIMEOUT);
  assert_int_equal(r.server_err[1], 0);
  assert_int_equal(r.n_mapped, 1); /* the second view is still reported */
  assert_true(took <= 2000);
  /* RFC 8489 retransmissions: 0, RTO, 3 RTO, 7 RTO with RTO = 250 ms. */
  assert_int_equal(w.n_s1_sends, 4);
  assert_int_equal(w.s1_send_times[1], 250);
  assert_int_equal(w.s1_send_times[2], 750);
  assert_int_equal(w.s1_send_times[3], 1750);
}

static void second_server_down(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  w.s2_down = true;
  np_probe_result r;
  int rc = probe(&w, 2, &r, NULL);
  assert_int_equal(rc, 0);
  assert_int_equal(r.n_mapped, 1);
  assert_false(r.have_delta);
  assert_int_equal(r.server_err[1], NP_ERR_TIMEOUT);
  assert_int_equal(r.mapping, NP_BEHAVIOR_ENDPOINT_INDEPENDENT);
}

static void single_server(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  np_probe_result r;
  int rc = probe(&w, 1, &r, NULL);
  assert_int_equal(rc, 0);
  assert_int_equal(r.n_mapped, 1);
  assert_false(r.have_delta);
  assert_int_equal(r.server_err[1], 0);
}

/* Quick mode (what the traversal engine gathers): the two servers, then
 * server 1's alternate address and port (its OTHER-ADDRESS) as a third
 * view, and not one datagram to any other destination, since on a
 * symmetric NAT each would be a mapping after the last view. */
static void quick_mode(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  w.mapping = NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT;
  np_probe_config c = config(&w, 2);
  c.quick = true;
  np_probe_result r;
  int rc;
  int64_t took = run(&w, &c, &r, &rc);
  assert_int_equal(rc, 0);
  assert_int_equal(w.sent, 3);
  assert_int_equal(r.n_mapped, 2);
  assert_true(r.have_delta);
  assert_int_not_equal(r.delta, 0);
  assert_int_equal(r.n_views, 3);
  assert_true(np_addr_equal(&r.view_to[0], &w.s1));
  assert_true(np_addr_equal(&r.view_to[1], &w.s2));
  assert_true(np_addr_equal(&r.view_to[2], &w.s1_alt));
  assert_int_equal(r.port_kind, 2);
  assert_false(r.port_kind_guessed);
  assert_int_equal(r.stride, 1);
  assert_int_equal(r.base_port, 40002);
  assert_int_equal(r.mapping, NP_BEHAVIOR_UNKNOWN);
  assert_int_equal(r.filtering, NP_BEHAVIOR_UNKNOWN);
  assert_int_equal(took, 0); /* done as soon as all three answered */
}

/* The stride the NAT really has, from the three views: any stride, above
 * the seed's limit of 64, negative, wrapping past 65535 (where the seed
 * had one delta and called everything beyond 64 random). */
static void quick_mode_stride(void **state) {
  (void)state;
  static const struct {
    uint16_t start;
    int32_t stride;
  } cases[] = {{20000, 1}, {20000, 2}, {20000, 7}, {20000, 300}, {60000, -5}, {50000, 20011},
               {65400, 300}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct world w;
    world_init(&w);
    w.mapping = NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT;
    w.next_port = cases[i].start;
    w.stride = cases[i].stride;
    np_probe_config c = config(&w, 2);
    c.quick = true;
    np_probe_result r;
    int rc;
    run(&w, &c, &r, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(r.n_views, 3);
    assert_int_equal(r.port_kind, 2);
    assert_false(r.port_kind_guessed);
    assert_int_equal(r.stride, cases[i].stride);
    /* the base is the last mapping made: the NAT's next one is base + stride */
    assert_int_equal(r.base_port, np_addr_port(&r.view_mapped[2]));
    int32_t next = ((int32_t)r.base_port - 1024 + cases[i].stride) % 64512;
    assert_int_equal((w.next_port - 1024), next < 0 ? next + 64512 : next);
  }
  /* cone: nothing moves */
  struct world w;
  world_init(&w);
  np_probe_config c = config(&w, 2);
  c.quick = true;
  np_probe_result r;
  int rc;
  run(&w, &c, &r, &rc);
  assert_int_equal(r.port_kind, 1);
  assert_int_equal(r.stride, 0);
  /* random ports: the deltas disagree */
  world_init(&w);
  w.mapping = NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT;
  w.random_ports = true;
  w.lcg = 7;
  c = config(&w, 2);
  c.quick = true;
  run(&w, &c, &r, &rc);
  assert_int_equal(r.n_views, 3);
  assert_int_equal(r.port_kind, 3);
  /* an address-dependent NAT reuses the mapping toward server 2's IP when
   * server 1's alternate is on it: that view is no new mapping */
  world_init(&w);
  w.mapping = NP_BEHAVIOR_ADDRESS_DEPENDENT;
  w.s1_alt = A("203.0.113.3:3479");
  c = config(&w, 2);
  c.quick = true;
  run(&w, &c, &r, &rc);
  assert_int_equal(r.n_views, 2);
  assert_int_equal(r.port_kind, 2);
  assert_true(r.port_kind_guessed);
}

/* One discovery server down. Server 2 answering with port unreachable ends
 * its query at once, and server 1 with its alternate still gives two views
 * (a delta); without the ICMP it costs the whole timeout. Server 1 down:
 * one view (no alternate is known), no stride. */
static void quick_mode_one_server_down(void **state) {
  (void)state;
  for (int icmp = 0; icmp < 2; icmp++) {
    struct world w;
    world_init(&w);
    w.mapping = NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT;
    w.stride = 7;
    w.s2_down = true;
    w.s2_icmp = icmp;
    np_probe_config c = config(&w, 2);
    c.quick = true;
    c.rto_ms = 200;
    c.timeout_ms = 1500;
    np_probe_result r;
    int rc;
    int64_t took = run(&w, &c, &r, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(r.server_err[1], icmp ? NP_ERR_UNREACHABLE : NP_ERR_TIMEOUT);
    assert_int_equal(r.n_views, 2);
    assert_true(np_addr_equal(&r.view_to[1], &w.s1_alt));
    assert_int_equal(r.stride, 7);
    assert_int_equal(r.port_kind, 2);
    assert_true(r.port_kind_guessed);
    if (icmp)
      assert_int_equal(took, 0);
    else
      assert_int_equal(took, 1500);
  }
  struct world w;
  world_init(&w);
  w.s1_down = true;
  np_probe_config c = config(&w, 2);
  c.quick = true;
  np_probe_result r;
  int rc;
  run(&w, &c, &r, &rc);
  assert_int_equal(r.n_views, 1);
  assert_int_equal(r.port_kind, 0);
  assert_int_equal(r.n_mapped, 1);
  /* an alternate port that drops everything costs a few RTOs, not the
   * timeout */
  world_init(&w);
  w.mapping = NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT;
  w.s1_alt_down = true;
  c = config(&w, 2);
  c.quick = true;
  c.rto_ms = 200;
  c.timeout_ms = 1500;
  int64_t took = run(&w, &c, &r, &rc);
  assert_int_equal(rc, 0);
  assert_int_equal(r.n_views, 2);
  assert_int_equal(took, 800);
  /* the unanswered request still took a mapping (40002): that is the base */
  assert_int_equal(w.next_port, 40003);
  assert_int_equal(r.base_port, 40002);
}

/* Quick mode under loss: a fixed resend interval (no doubling) until the
 * short timeout, so a lossy path gets many tries at the delta. */
static void quick_mode_resends(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  w.s1_down = true;
  np_probe_config c = config(&w, 2);
  c.quick = true;
  c.rto_ms = 200;
  c.timeout_ms = 1500;
  np_probe_result r;
  int rc;
  int64_t took = run(&w, &c, &r, &rc);
  assert_int_equal(rc, NP_ERR_TIMEOUT);
  assert_int_equal(r.n_mapped, 1);
  assert_true(took <= 1500);
  assert_true(w.n_s1_sends >= 7);
  for (int i = 1; i < 7; i++)
    assert_int_equal(w.s1_send_times[i], 200 * i);
}

static void lossy_start(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  w.drop_first = 6; /* the first transmission of every initial request */
  np_probe_result r;
  int rc = probe(&w, 2, &r, NULL);
  assert_int_equal(rc, 0);
  assert_int_equal(r.mapping, NP_BEHAVIOR_ENDPOINT_INDEPENDENT);
  assert_int_equal(r.filtering, NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT);
  assert_int_equal(r.rtt_ms[0], -1); /* retransmitted: Karn, no RTT sample */
}

static void error_response(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  w.s1_error = 400;
  np_probe_result r;
  int64_t took;
  int rc = probe(&w, 2, &r, &took);
  assert_int_equal(rc, NP_ERR_PROTO);
  assert_int_equal(r.server_error_code[0], 400);
  assert_int_equal(took, 0); /* an error answer ends it at once */
}

static void unreachable_server(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  np_probe_config c = config(&w, 1);
  np_nat_probe *p;
  assert_int_equal(np__nat_probe_new(&c, &w.local[0], NULL, NULL, 0, &p), 0);
  np_probe_datagram dg;
  while (np__nat_probe_next_datagram(p, 0, &dg))
    ;
  np__nat_probe_unreachable(p, 5, NP_PROBE_SOCK_MAIN, &w.s1);
  assert_true(np__nat_probe_done(p));
  np_probe_result r;
  assert_int_equal(np__nat_probe_result(p, &r), NP_ERR_UNREACHABLE);
  np__nat_probe_free(p);
}

/* Answers that are not ours (wrong transaction, wrong socket, garbage) are
 * ignored. */
static void foreign_input_ignored(void **state) {
  (void)state;
  struct world w;
  world_init(&w);
  np_probe_config c = config(&w, 1);
  np_nat_probe *p;
  assert_int_equal(np__nat_probe_new(&c, &w.local[0], NULL, NULL, 0, &p), 0);
  np_probe_datagram dg;
  assert_int_equal(np__nat_probe_next_datagram(p, 0, &dg), 1);
  assert_int_equal(dg.sock, NP_PROBE_SOCK_MAIN);
  np_stun_msg req;
  assert_int_equal(np__stun_read(dg.buf, dg.len, &req), 0);

  uint8_t buf[128];
  np_stun_writer wr;
  uint8_t other_txid[NP_STUN_TXID_LEN] = {1, 2, 3};
  np__stun_writer_init(&wr, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_SUCCESS,
                       NP_STUN_MAGIC_COOKIE, other_txid);
  np_addr fake = A("198.51.100.9:9");
  np__stun_put_xor_addr(&wr, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &fake);
  int n = np__stun_writer_finish(&wr);
  np__nat_probe_input(p, 1, NP_PROBE_SOCK_MAIN, &w.s1, buf, (size_t)n);
  /* right transaction, wrong socket */
  np__stun_writer_init(&wr, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_SUCCESS,
                       NP_STUN_MAGIC_COOKIE, req.txid);
  np__stun_put_xor_addr(&wr, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &fake);
  n = np__stun_writer_finish(&wr);
  np__nat_probe_input(p, 1, NP_PROBE_SOCK_FILTER, &w.s1, buf, (size_t)n);
  uint8_t junk[40] = {0xff, 0x00, 0x13};
  np__nat_probe_input(p, 1, NP_PROBE_SOCK_MAIN, &w.s1, junk, sizeof junk);
  np__nat_probe_input(p, 1, NP_PROBE_SOCK_MAIN, &w.s1, buf, 10); /* truncated */
  np_probe_result r;
  assert_int_equal(np__nat_probe_result(p, &r), NP_ERR_TIMEOUT);
  assert_int_equal(r.n_mapped, 0);
  /* and the genuine answer is still accepted afterwards */
  np__nat_probe_input(p, 2, NP_PROBE_SOCK_MAIN, &w.s1, buf, (size_t)n);
  assert_int_equal(np__nat_probe_result(p, &r), 0);
  assert_true(np_addr_equal(&r.mapped[0], &fake));
  np__nat_probe_free(p);
}

static void bad_config(void **state) {
  (void)state;
  np_probe_config c = {0};
  np_nat_probe *p = (np_nat_probe *)&c; /* must be reset to NULL on failure */
  assert_int_equal(np__nat_probe_new(&c, NULL, NULL, NULL, 0, &p), NP_ERR_INVAL);
  assert_null(p);
  c.n_servers = 3;
  assert_int_equal(np__nat_probe_new(&c, NULL, NULL, NULL, 0, &p), NP_ERR_INVAL);
  c.n_servers = 1; /* server address unset */
  assert_int_equal(np__nat_probe_new(&c, NULL, NULL, NULL, 0, &p), NP_ERR_INVAL);
  np_probe_result r;
  assert_int_equal(np_probe_run(&c, &r), NP_ERR_INVAL);
  assert_int_equal(np_probe_run(NULL, &r), NP_ERR_INVAL);
}

/* The blocking runner against a port where nothing listens on loopback:
 * the ICMP error ends it long before the timeout. */
static void runner_reports_unreachable(void **state) {
  (void)state;
  np_probe_config c = {0};
  c.n_servers = 1;
  c.servers[0] = A("127.0.0.1:9"); /* discard port: nothing listens in a test box */
  c.timeout_ms = 2500;
  np_probe_result r;
  int rc = np_probe_run(&c, &r);
  assert_int_equal(rc, NP_ERR_UNREACHABLE);
  assert_int_equal(r.server_err[0], NP_ERR_UNREACHABLE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(no_nat),
      cmocka_unit_test(all_behaviours),
      cmocka_unit_test(port_preserving_cone),
      cmocka_unit_test(hairpinning),
      cmocka_unit_test(no_rfc5780),
      cmocka_unit_test(server_ignoring_change_request),
      cmocka_unit_test(first_server_down),
      cmocka_unit_test(second_server_down),
      cmocka_unit_test(single_server),
      cmocka_unit_test(quick_mode),
      cmocka_unit_test(quick_mode_stride),
      cmocka_unit_test(quick_mode_one_server_down),
      cmocka_unit_test(quick_mode_resends),
      cmocka_unit_test(lossy_start),
      cmocka_unit_test(error_response),
      cmocka_unit_test(unreachable_server),
      cmocka_unit_test(foreign_input_ignored),
      cmocka_unit_test(bad_config),
      cmocka_unit_test(runner_reports_unreachable),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
