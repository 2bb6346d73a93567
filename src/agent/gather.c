/* Gathering candidates: interfaces, discovery-server views, hop/TTL measurement. */
#include "agent/gather.h"

#include "net/addr.h"
#include "traversal/predict.h"
#include "util/clock.h"

#include <ifaddrs.h>
#include <netinet/in.h>
#include <string.h>

#define GATHER_TIMEOUT_MS 1500
#define GATHER_RTO_MS 200
#define HOP_MAX_TTL NP_GATHER_HOP_MAX_TTL
/* Hop probes go HOP_COPIES at a time, and the unanswered ones again every
 * HOP_RTO_MS, HOP_ROUNDS times in all: on a lossy link one lost probe (or
 * answer) would otherwise miss a flat segment for the agent's lifetime,
 * and the flat flag is what both sides' roles depend on. */
#define HOP_COPIES 2
#define HOP_ROUNDS 5
#define HOP_RTO_MS 200

/* A hop address in private space (a stacked NAT's inner side), link-local
 * included. */
static bool is_private_ip(const np_addr *ad) {
  if (ad->u.sa.sa_family == AF_INET)
    return np__addr_is_private(ad) || (ntohl(ad->u.in4.sin_addr.s_addr) >> 16) == (169u << 8 | 254);
  return np__addr_is_private(ad) ||
         (ad->u.sa.sa_family == AF_INET6 && IN6_IS_ADDR_LINKLOCAL(&ad->u.in6.sin6_addr));
}

void np__gather_init(np_gather *g, const np_gather_config *cfg) {
  memset(g, 0, sizeof *g);
  g->cfg = *cfg;
}

void np__gather_stop(np_gather *g) {
  np__nat_probe_free(g->probe);
  g->probe = NULL;
}

/* Interface addresses of our family with the socket's port. Loopback only
 * when there is nothing else (a lone host). */
static void gather_private(np_gather *g, np_sig_candidates *c) {
  struct ifaddrs *ifs = NULL;
  if (getifaddrs(&ifs) != 0)
    return;
  int family = g->cfg.family;
  uint16_t port = np_addr_port(&g->cfg.local);
  for (int pass = 0; pass < 2 && c->n_private == 0; pass++) {
    for (struct ifaddrs *i = ifs; i && c->n_private < NP_SIG_MAX_PRIVATE; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != family)
        continue;
      np_addr ad;
      if (np__addr_from_sockaddr(i->ifa_addr,
                                family == AF_INET ? sizeof(struct sockaddr_in)
                                                  : sizeof(struct sockaddr_in6),
                                &ad) != 0)
        continue;
      bool loop = family == AF_INET ? (ntohl(ad.u.in4.sin_addr.s_addr) >> 24) == 127
                                    : IN6_IS_ADDR_LOOPBACK(&ad.u.in6.sin6_addr);
      bool link_local = family == AF_INET6 && IN6_IS_ADDR_LINKLOCAL(&ad.u.in6.sin6_addr);
      if (link_local || (loop && pass == 0))
        continue;
      np_addr_set_port(&ad, port);
      c->private_addrs[c->n_private++] = ad;
    }
  }
  freeifaddrs(ifs);
}

/* Hop probes from TTL 2: behind a NAT the first hop is our router anyway,
 * and routers rate-limit the ICMP they send to one host, so a "time
 * exceeded" from it would use up the port unreachable that tells the
 * port-mapping worker at once that the router speaks no PCP. */
void np__gather_hop_send(np_gather *g, np_path *path, int64_t now) {
  g->hop_next = INT64_MAX;
  if (g->cfg.n_discovery == 0 || g->cfg.prime_ttl > 0 || g->cfg.no_prime ||
      g->hop_rounds >= HOP_ROUNDS)
    return;
  bool first = g->hop_rounds++ == 0;
  g->hop_next = now + HOP_RTO_MS;
  for (int ttl = 2; ttl <= HOP_MAX_TTL; ttl++) {
    /* Resent (same transaction) only while neither the server nor a
     * router has answered that TTL. */
    if (!first && (g->hop_answered[ttl] || g->hop_reached[ttl]))
      continue;
    uint8_t buf[64];
    if (first)
      np__random_bytes(g->hop_txid[ttl], NP_STUN_TXID_LEN);
    np_stun_writer w;
    np__stun_writer_init(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_REQUEST,
                        NP_STUN_MAGIC_COOKIE, g->hop_txid[ttl]);
    np__stun_put_fingerprint(&w);
    int n = np__stun_writer_finish(&w);
    for (int c = 0; c < (first ? HOP_COPIES : 1) && n > 0; c++)
      (void)np__path_send(path, 0, &g->cfg.discovery[0], ttl, buf, (size_t)n);
  }
}

int64_t np__gather_hop_next(const np_gather *g) {
  return g->hop_next;
}

/* TTL of priming packets: one more than the NAT depth, i.e. the first hop
 * (our router, since we are behind a NAT) plus the consecutive hops from
 * the second on that answered "time exceeded" from private addresses
 * (stacked NATs), so the packet leaves the outermost NAT and dies in the
 * first public router. */
static int measured_prime_ttl(const np_gather *g, const np_sig_candidates *cand) {
  if (g->cfg.no_prime)
    return 0;
  if (g->cfg.prime_ttl > 0)
    return g->cfg.prime_ttl;
  bool behind_nat = cand->n_mapped > 0;
  for (int i = 0; i < cand->n_private; i++)
    if (cand->n_mapped && np_addr_equal(&cand->private_addrs[i], &cand->mapped[0]))
      behind_nat = false;
  if (!behind_nat)
    return 0;
  int depth = 1;
  while (depth < HOP_MAX_TTL && g->hop_private[depth + 1])
    depth++;
  return depth + 1;
}

/* Whether a primer would reach the discovery server itself: the hop probe
 * with the priming TTL was answered by the server instead of expiring in
 * the first public router. Then our gateway and the server share a segment
 * with no router between them, and a peer's gateway on it would get our
 * primers too (punch.h, "Flat segment"). Only measured TTLs count: a
 * --prime-ttl set by hand sends no hop probes. */
static bool primes_reach_server(const np_gather *g) {
  return g->prime_ttl >= 2 && g->prime_ttl <= HOP_MAX_TTL && g->hop_reached[g->prime_ttl];
}

void np__gather_update_flat(np_gather *g, np_sig_candidates *cand) {
  bool flat = primes_reach_server(g);
  if (flat && !(cand->flags & NP_SIG_CAND_FLAT))
    NP_LOGI(&g->cfg.log,
            "agent: a priming packet (TTL %d) reaches the discovery server: no router between our "
            "NAT and its segment (flat segment; a peer there may need the flat-segment wait)",
            g->prime_ttl);
  cand->flags = flat ? cand->flags | NP_SIG_CAND_FLAT : cand->flags & ~(uint32_t)NP_SIG_CAND_FLAT;
}

int np__gather_prime_ttl(const np_gather *g) {
  return g->prime_ttl;
}

void np__gather_icmp(np_gather *g, int sock, const np_udp_error *e, int64_t now) {
  /* A discovery server that is down answers its query with port
   * unreachable: the gathering need not wait for its timeout. */
  if (g->probe && sock == 0 && e->icmp && !e->time_exceeded && np__addr_is_set(&e->dest))
    np__nat_probe_unreachable(g->probe, now, NP_PROBE_SOCK_MAIN, &e->dest);
  if (!e->time_exceeded || e->len < NP_STUN_HEADER_LEN)
    return;
  for (int ttl = 1; ttl <= HOP_MAX_TTL; ttl++)
    if (memcmp(e->data + 8, g->hop_txid[ttl], NP_STUN_TXID_LEN) == 0) {
      g->hop_answered[ttl] = true;
      g->hop_private[ttl] = is_private_ip(&e->offender);
      char t[NP_ADDRSTRLEN];
      NP_LOGD(&g->cfg.log, "agent: TTL %d expired at %s", ttl,
              np_addr_format(&e->offender, t, sizeof t));
    }
}

void np__gather_stun_input(np_gather *g, int sock, const np_addr *from, const uint8_t *buf,
                          size_t len, int64_t now) {
  if (sock != 0)
    return;
  if (np__stun_is_stun(buf, len)) {
    /* A hop probe's answer (it reached the server: the TTL was enough). */
    np_stun_msg m;
    if (np__stun_read(buf, len, &m) == 0)
      for (int t = 1; t <= HOP_MAX_TTL; t++)
        if (memcmp(m.txid, g->hop_txid[t], NP_STUN_TXID_LEN) == 0)
          g->hop_answered[t] = g->hop_reached[t] = true;
  }
  if (g->probe)
    np__nat_probe_input(g->probe, now, NP_PROBE_SOCK_MAIN, from, buf, len);
}

int np__gather_start(np_gather *g, int64_t now, np_sig_candidates *cand) {
  g->started = now;
  memset(cand, 0, sizeof *cand);
  gather_private(g, cand);
  if (g->cfg.n_discovery == 0)
    return 0;
  np_probe_config pc = {.n_servers = g->cfg.n_discovery,
                        .rto_ms = GATHER_RTO_MS,
                        .timeout_ms = GATHER_TIMEOUT_MS,
                        .no_hairpin = true,
                        .quick = true,
                        .log = g->cfg.log.fn,
                        .log_user = g->cfg.log.user,
                        .log_level = g->cfg.log.level};
  memcpy(pc.servers, g->cfg.discovery, sizeof pc.servers);
  return np__nat_probe_new(&pc, &g->cfg.local, NULL, NULL, now, &g->probe);
}

bool np__gather_active(const np_gather *g) {
  return g->probe != NULL;
}

bool np__gather_done(const np_gather *g) {
  return g->probe && np__nat_probe_done(g->probe);
}

void np__gather_flush(np_gather *g, np_path *path, int64_t now) {
  if (!g->probe)
    return;
  np_probe_datagram dg;
  for (int guard = 0; guard < 16 && np__nat_probe_next_datagram(g->probe, now, &dg); guard++)
    (void)np__path_send(path, 0, &dg.to, 0, dg.buf, dg.len);
}

int64_t np__gather_wakeup(const np_gather *g) {
  return g->probe ? np__nat_probe_wakeup(g->probe) : INT64_MAX;
}

void np__gather_finish(np_gather *g, int64_t now, const np_addr *portmap, np_sig_candidates *cand) {
  if (g->probe) {
    np_probe_result r;
    (void)np__nat_probe_result(g->probe, &r);
    for (int i = 0; i < NP_PROBE_MAX_SERVERS; i++)
      if (np_addr_port(&r.mapped[i]) && cand->n_mapped < NP_SIG_MAX_MAPPED)
        cand->mapped[cand->n_mapped++] = r.mapped[i];
    cand->have_delta = r.have_delta;
    cand->delta = r.delta;
    /* The verdict on all the views (three with server 1's alternate), so
     * the peer predicts with the stride the NAT really has. */
    cand->have_stride = r.n_views >= 2 && r.port_kind >= NP_NAT_KIND_CONE && r.base_port != 0;
    if (cand->have_stride) {
      cand->stride = r.stride;
      cand->nat_kind = (uint8_t)r.port_kind;
      cand->n_views = (uint8_t)r.n_views;
      cand->stride_base = r.base_port;
    }
    int64_t took = now - g->started;
    np__gather_stop(g);
    for (int i = 0; i < g->cfg.n_discovery && cand->n_mapped > 0; i++) {
      if (np_addr_port(&r.mapped[i]))
        continue;
      char t[NP_ADDRSTRLEN];
      NP_LOGW(&g->cfg.log,
              "agent: discovery server %d (%s) did not answer (%s, after %lld ms); going on with "
              "%d view(s)%s",
              i + 1, np_addr_format(&g->cfg.discovery[i], t, sizeof t),
              np_strerror(r.server_err[i]), (long long)took, r.n_views,
              r.n_views < 2 ? ": no stride, a pair that needs prediction may fail" : "");
    }
    if (cand->n_mapped == 0)
      NP_LOGW(&g->cfg.log, "agent: no discovery server answered; offering private addresses only");
  }
  if (portmap)
    cand->portmap = *portmap;
  g->prime_ttl = measured_prime_ttl(g, cand);
  np__gather_update_flat(g, cand);
  char m0[NP_ADDRSTRLEN] = "-", m1[NP_ADDRSTRLEN] = "-", pmt[NP_ADDRSTRLEN] = "-";
  if (cand->n_mapped > 0)
    np_addr_format(&cand->mapped[0], m0, sizeof m0);
  if (cand->n_mapped > 1)
    np_addr_format(&cand->mapped[1], m1, sizeof m1);
  if (np__addr_is_set(&cand->portmap))
    np_addr_format(&cand->portmap, pmt, sizeof pmt);
  static const char *const kinds[] = {"unknown", "cone", "sequential", "random"};
  NP_LOGI(&g->cfg.log,
          "agent: gathered: %d private, mapped %s %s (delta %s%d; %s, stride %d, base %u, %d "
          "views), portmap %s, prime TTL %d",
          cand->n_private, m0, m1, cand->have_delta ? "" : "unknown ", cand->delta,
          kinds[cand->have_stride && cand->nat_kind <= 3 ? cand->nat_kind : 0], cand->stride,
          (unsigned)cand->stride_base, cand->n_views, pmt, g->prime_ttl);
}
