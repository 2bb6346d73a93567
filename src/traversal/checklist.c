/* Phase-0 candidate pairing (see checklist.h for the rules). */
#include "traversal/checklist.h"

#include <string.h>

#include "net/addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>

static int clamp_count(int n, int max) {
  return n < 0 ? 0 : n > max ? max : n;
}

/* First usable address of c's, mapped before private: the family the
 * local socket has (AF_UNSPEC when c says nothing). */
static sa_family_t side_family(const np_sig_candidates *c) {
  int nm = clamp_count(c->n_mapped, NP_SIG_MAX_MAPPED);
  for (int i = 0; i < nm; i++)
    if (np__addr_is_set(&c->mapped[i]))
      return c->mapped[i].u.sa.sa_family;
  int np = clamp_count(c->n_private, NP_SIG_MAX_PRIVATE);
  for (int i = 0; i < np; i++)
    if (np__addr_is_set(&c->private_addrs[i]))
      return c->private_addrs[i].u.sa.sa_family;
  return AF_UNSPEC;
}

/* Addresses no peer can be reached at from outside our host or link:
 * probing them would reach our own machine, our link's neighbours, or
 * everyone at once. */
static const char *special(const np_addr *a) {
  if (a->u.sa.sa_family == AF_INET) {
    uint32_t ip = ntohl(a->u.in4.sin_addr.s_addr);
    if ((ip >> 24) == 127)
      return "loopback";
    if ((ip >> 24) == 0)
      return "unspecified (0.0.0.0/8)";
    if (ip == 0xFFFFFFFFu)
      return "broadcast";
    if (IN_MULTICAST(ip))
      return "multicast";
    if ((ip >> 16) == (169u << 8 | 254))
      return "link-local";
    return NULL;
  }
  const struct in6_addr *x = &a->u.in6.sin6_addr;
  if (IN6_IS_ADDR_LOOPBACK(x))
    return "loopback";
  if (IN6_IS_ADDR_UNSPECIFIED(x))
    return "unspecified";
  if (IN6_IS_ADDR_MULTICAST(x))
    return "multicast";
  if (IN6_IS_ADDR_LINKLOCAL(x))
    return "link-local";
  if (IN6_IS_ADDR_V4MAPPED(x))
    return "IPv4-mapped"; /* np__addr_from_sockaddr() unmaps real ones */
  return NULL;
}

static bool is_own(const np_sig_candidates *self, const np_checklist_seen *seen, const np_addr *a) {
  if (seen && np_addr_same_ip(&seen->self, a))
    return true;
  if (!self)
    return false;
  int np = clamp_count(self->n_private, NP_SIG_MAX_PRIVATE);
  for (int i = 0; i < np; i++)
    if (np_addr_same_ip(&self->private_addrs[i], a))
      return true;
  int nm = clamp_count(self->n_mapped, NP_SIG_MAX_MAPPED);
  for (int i = 0; i < nm; i++)
    if (np_addr_same_ip(&self->mapped[i], a))
      return true;
  return np_addr_same_ip(&self->portmap, a);
}

bool np__checklist_same_nat(const np_checklist_seen *seen) {
  return seen && np__addr_is_set(&seen->self) && np__addr_is_set(&seen->peer) &&
         np_addr_same_ip(&seen->self, &seen->peer);
}

const char *np__checklist_aim(const np_sig_candidates *self, const np_checklist_seen *seen,
                             const np_addr *a, enum np_cand_type type) {
  if (!a || !np__addr_is_set(a) || np_addr_port(a) == 0 || np__addr_is_any(a))
    return "unset, port 0 or a wildcard";
  /* The peer's own public IP, as the server saw it: whatever it is (even
   * 127.0.0.1 for two peers on one machine), the peer is there. */
  if (seen && np_addr_same_ip(a, &seen->peer))
    return NULL;
  if (!seen || !np__addr_is_set(&seen->peer))
    return "the peer's public IP (the server's view) is unknown";
  const char *why = special(a);
  if (why)
    return why;
  if (is_own(self, seen, a))
    return "one of our own addresses";
  if (type == NP_CAND_HOST || type == NP_CAND_PRFLX) {
    /* Behind one NAT the peer's LAN is ours, and a LAN behind a NAT is
     * private space: a public address here would be a third party. */
    if (!np__checklist_same_nat(seen))
      return "a private address behind another NAT";
    return np__addr_is_private(a) ? NULL : "a public address that is not the peer's";
  }
  return "not the peer's public IP (the server's view)";
}

static int add(np_check *out, int n, int cap, const np_addr *a, enum np_cand_type type,
               sa_family_t family, const np_sig_candidates *self, const np_checklist_seen *seen,
               void (*log)(void *, const np_addr *, const char *), void *log_user) {
  if (n >= cap || !np__addr_is_set(a))
    return n;
  if (family != AF_UNSPEC && a->u.sa.sa_family != family)
    return n; /* not ours to reach from this socket: no harm, no log */
  const char *why = np__checklist_aim(self, seen, a, type);
  if (why) {
    if (log)
      log(log_user, a, why);
    return n;
  }
  for (int i = 0; i < n; i++)
    if (np_addr_equal(&out[i].remote, a)) {
      /* A gateway that preserves ports maps our socket to the same public
       * address the servers saw; it is still a forwarded port, open to
       * anyone, and the engine treats it as such. */
      if (type == NP_CAND_PORTMAP && out[i].type == NP_CAND_MAPPED)
        out[i].type = NP_CAND_PORTMAP;
      return n;
    }
  out[n].remote = *a;
  out[n].type = type;
  return n + 1;
}

int np__checklist_build(const np_sig_candidates *self, const np_sig_candidates *peer,
                       const np_checklist_seen *seen, np_check *out, int cap, int *mappings,
                       void (*log)(void *user, const np_addr *a, const char *why), void *log_user) {
  int n = 0;
  if (mappings)
    *mappings = 0;
  if (!self || !peer || !out || cap <= 0)
    return 0;
  sa_family_t family = side_family(self);
  bool same = np__checklist_same_nat(seen);
  int np = clamp_count(peer->n_private, NP_SIG_MAX_PRIVATE);
  if (same)
    for (int i = 0; i < np; i++)
      n = add(out, n, cap, &peer->private_addrs[i], NP_CAND_HOST, family, self, seen, log,
              log_user);
  int nm = clamp_count(peer->n_mapped, NP_SIG_MAX_MAPPED);
  for (int i = 0; i < nm; i++)
    n = add(out, n, cap, &peer->mapped[i], NP_CAND_MAPPED, family, self, seen, log, log_user);
  n = add(out, n, cap, &peer->portmap, NP_CAND_PORTMAP, family, self, seen, log, log_user);
  if (!same)
    for (int i = 0; i < np; i++)
      /* Across NATs, a host address passes only as the peer's public one
       * (no NAT; usually a duplicate of its mapped address, kept once as
       * that): after the mapped ones, so the order of new mappings is the
       * one the predictor counts on. */
      n = add(out, n, cap, &peer->private_addrs[i], NP_CAND_HOST, family, self, seen, log,
              log_user);
  /* Host entries are on our own LAN only behind a shared NAT; a peer's
   * public host address takes a new mapping like any public target. */
  if (mappings)
    for (int i = 0; i < n; i++)
      *mappings += out[i].type != NP_CAND_HOST || !same;
  return n;
}

void np__checklist_model(const np_sig_candidates *c, struct np_nat_model *out) {
  memset(out, 0, sizeof *out);
  if (!c)
    return;
  int nm = clamp_count(c->n_mapped, NP_SIG_MAX_MAPPED);
  if (c->have_stride && nm >= 1 && c->nat_kind >= NP_NAT_KIND_CONE &&
      c->nat_kind <= NP_NAT_KIND_RANDOM && c->stride_base != 0) {
    /* Classified from all the views by the side that made them. */
    out->known = true;
    out->kind = c->nat_kind;
    out->base = c->stride_base;
    out->stride = c->stride;
    return;
  }
  out->known = nm == NP_SIG_MAX_MAPPED || (nm >= 1 && c->have_delta);
  if (nm > 0)
    out->base = np_addr_port(&c->mapped[nm - 1]);
  out->stride = c->have_delta ? c->delta : 0;
}

const char *np__cand_type_via(enum np_cand_type t) {
  switch (t) {
  case NP_CAND_HOST:
    return "host";
  case NP_CAND_MAPPED:
    return "reflexive";
  case NP_CAND_PORTMAP:
    return "portmap";
  case NP_CAND_PRFLX:
    return "reflexive";
  case NP_CAND_PREDICTED:
    return "predicted";
  case NP_CAND_BIRTHDAY:
    return "birthday";
  }
  return "?";
}
