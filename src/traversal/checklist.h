/*
 * Candidate pairing for phase 0 (the direct candidates): which remote
 * addresses a peer probes first, in which order, and how many new NAT
 * mappings that costs (np_nat_model.sent, for the predictor). Pure: both
 * peers compute the same list from the offer and the answer.
 *
 * Rules, and why:
 *  - The peer's private (host) addresses are probed only when both sides
 *    show the same public IP (same NAT: they share a LAN or a hairpinning
 *    gateway) or when either side has no public mapping at all (a lab or a
 *    flat network). Across two NATs a private address is someone else's
 *    LAN; probing it would waste a mapping on a symmetric NAT (it leaves by
 *    the default route) and break the count the predictor relies on.
 *  - Then the peer's public candidates, deduplicated, in this order: the
 *    first discovery server's view, the second's, the port mapping
 *    (UPnP/NAT-PMP/PCP); a mapped address equal to the port mapping is
 *    kept once, as PORTMAP (it is a forwarded port). The first view comes first so that, on a
 *    sequential NAT, the mapping toward an endpoint-independent peer is
 *    the first new one (np_predict_round() SWEEP).
 *  - Only addresses of the local socket's family; never port 0, never a
 *    wildcard or multicast address.
 *  - At most NP_CHECKLIST_MAX entries.
 */
#ifndef NP_CHECKLIST_H
#define NP_CHECKLIST_H

#include "natpunch.h"
#include "signaling/signaling.h"
#include "traversal/predict.h"

#define NP_CHECKLIST_MAX (NP_SIG_MAX_PRIVATE + NP_SIG_MAX_MAPPED + 1)

/* Where a remote candidate came from; also what "via" reports when the
 * winning pair used it (see np_cand_type_via()). */
enum np_cand_type {
  NP_CAND_HOST = 0,  /* peer's interface address */
  NP_CAND_MAPPED,    /* peer's public address as a discovery server saw it */
  NP_CAND_PORTMAP,   /* address the peer's gateway opened (UPnP/NAT-PMP/PCP) */
  NP_CAND_PRFLX,     /* learned from an authenticated probe that arrived */
  NP_CAND_PREDICTED, /* port from np_predict_round() */
  NP_CAND_BIRTHDAY,  /* random port (SPRAY) or extra socket (SOCKETS) */
};

typedef struct np_check {
  np_addr remote;
  enum np_cand_type type;
} np_check;

/* Builds the phase-0 list of remote candidates 'self' probes, from its own
 * candidates and the peer's, following the rules above. Returns the number
 * of entries written to out (at most cap). *mappings (may be NULL) is set
 * to how many of them leave through self's NAT as new mappings: every entry
 * that is not a HOST entry (host entries are on self's own network when
 * they are used at all). */
int np_checklist_build(const np_sig_candidates *self, const np_sig_candidates *peer, np_check *out,
                       int cap, int *mappings);

/* True when self and peer show the same public IP (first mapped address of
 * each), i.e. they sit behind the same NAT. */
bool np_checklist_same_nat(const np_sig_candidates *self, const np_sig_candidates *peer);

/* The model of a side's NAT (predict.h) from its candidates. With a STRIDE
 * (have_stride, at least one mapped address, a valid kind and base): known,
 * kind, stride and base as the side classified them. Otherwise the two-view
 * model: base = port of the last mapped address, stride from have_delta (0
 * without it), kind FROM_DELTA, known when there are two mapped addresses
 * (or one plus a delta). 'sent' is left 0 for
 * the caller to fill with the mapping count of the modelled side's own
 * checklist, np_checklist_build(c, <the other side>, ...). */
void np_checklist_model(const np_sig_candidates *c, struct np_nat_model *out);

/* "host", "reflexive", "portmap", "reflexive" (PRFLX), "predicted",
 * "birthday": the JSON 'via' word for a candidate type. */
const char *np_cand_type_via(enum np_cand_type t);

#endif
