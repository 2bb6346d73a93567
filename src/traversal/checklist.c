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
    if (np_addr_is_set(&c->mapped[i]))
      return c->mapped[i].u.sa.sa_family;
  int np = clamp_count(c->n_private, NP_SIG_MAX_PRIVATE);
  for (int i = 0; i < np; i++)
    if (np_addr_is_set(&c->private_addrs[i]))
      return c->private_addrs[i].u.sa.sa_family;
  return AF_UNSPEC;
}

static bool has_mapped(const np_sig_candidates *c) {
  return clamp_count(c->n_mapped, NP_SIG_MAX_MAPPED) > 0 && np_addr_is_set(&c->mapped[0]);
}

static bool is_multicast(const np_addr *a) {
  if (a->u.sa.sa_family == AF_INET)
    return IN_MULTICAST(ntohl(a->u.in4.sin_addr.s_addr));
  return IN6_IS_ADDR_MULTICAST(&a->u.in6.sin6_addr);
}

static bool usable(const np_addr *a, sa_family_t family) {
  if (!np_addr_is_set(a) || np_addr_port(a) == 0 || np_addr_is_any(a) || is_multicast(a))
    return false;
  return family == AF_UNSPEC || a->u.sa.sa_family == family;
}

static int add(np_check *out, int n, int cap, const np_addr *a, enum np_cand_type type,
               sa_family_t family) {
  if (n >= cap || !usable(a, family))
    return n;
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

bool np_checklist_same_nat(const np_sig_candidates *self, const np_sig_candidates *peer) {
  return self && peer && has_mapped(self) && has_mapped(peer) &&
         np_addr_same_ip(&self->mapped[0], &peer->mapped[0]);
}

int np_checklist_build(const np_sig_candidates *self, const np_sig_candidates *peer, np_check *out,
                       int cap, int *mappings) {
  int n = 0;
  if (mappings)
    *mappings = 0;
  if (!self || !peer || !out || cap <= 0)
    return 0;
  sa_family_t family = side_family(self);
  if (np_checklist_same_nat(self, peer) || !has_mapped(self) || !has_mapped(peer)) {
    int np = clamp_count(peer->n_private, NP_SIG_MAX_PRIVATE);
    for (int i = 0; i < np; i++)
      n = add(out, n, cap, &peer->private_addrs[i], NP_CAND_HOST, family);
  }
  int nm = clamp_count(peer->n_mapped, NP_SIG_MAX_MAPPED);
  for (int i = 0; i < nm; i++)
    n = add(out, n, cap, &peer->mapped[i], NP_CAND_MAPPED, family);
  n = add(out, n, cap, &peer->portmap, NP_CAND_PORTMAP, family);
  if (mappings)
    for (int i = 0; i < n; i++)
      *mappings += out[i].type != NP_CAND_HOST;
  return n;
}

void np_checklist_model(const np_sig_candidates *c, struct np_nat_model *out) {
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

const char *np_cand_type_via(enum np_cand_type t) {
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
