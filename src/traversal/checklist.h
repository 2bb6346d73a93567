/*
 * Candidate pairing for phase 0 (the direct candidates): which remote
 * addresses a peer probes first, in which order, and how many new NAT
 * mappings that costs (np_nat_model.sent, for the predictor). Pure: both
 * peers compute the same list from the offer and the answer.
 *
 * Rules, and why. A listener probes on a stranger's word, so what it probes
 * must be what the peer can plausibly be, never a third party named in an
 * offer (np__checklist_aim(), for every target a session may probe):
 *  - The anchor is the peer's public IP as the rendezvous server saw it on
 *    its TCP connection (the OBSERVED stamped on the offer or answer): the
 *    one address a peer cannot choose. Public candidates (discovery views,
 *    the port mapping) count only on that IP; so does every predicted or
 *    sprayed port (punch.h). Without it, nothing public is probed.
 *  - The peer's private (host) addresses are probed only when both sides
 *    show the same OBSERVED IP (same NAT: they share a LAN or a hairpinning
 *    gateway). Across two NATs a private address is someone else's LAN, and
 *    probing it wastes a mapping on a symmetric NAT. Behind a shared NAT
 *    they must be private space (RFC 1918, 100.64/10, fc00::/7), and so
 *    must a peer-reflexive source that is not the OBSERVED IP. A host address equal
 *    to the peer's OBSERVED IP is its public address (no NAT, a flat
 *    network) and counts as such.
 *  - Never loopback, unspecified, broadcast, multicast, link-local or one
 *    of our own addresses (our interfaces, our public IP) - unless it is
 *    exactly the peer's OBSERVED IP: two peers on one machine meet through
 *    a rendezvous server on loopback and are each other's 127.0.0.1.
 *  - Then the peer's public candidates, deduplicated, in this order: the
 *    first discovery server's view, the second's, the port mapping
 *    (UPnP/NAT-PMP/PCP); a mapped address equal to the port mapping is
 *    kept once, as PORTMAP (it is a forwarded port). The first view comes first so that, on a
 *    sequential NAT, the mapping toward an endpoint-independent peer is
 *    the first new one (np__predict_round() SWEEP).
 *  - Only addresses of the local socket's family; never port 0.
 *  - At most NP_CHECKLIST_MAX entries.
 * Both peers apply the same rules to both lists (with the two OBSERVED
 * addresses swapped), so both count the same mappings.
 */
#ifndef NP_CHECKLIST_H
#define NP_CHECKLIST_H

#include "natpunch.h"
#include "signaling/signaling.h"
#include "traversal/predict.h"

#define NP_CHECKLIST_MAX (NP_SIG_MAX_PRIVATE + NP_SIG_MAX_MAPPED + 1)

/* Where a remote candidate came from; also what "via" reports when the
 * winning pair used it (see np__cand_type_via()). */
enum np_cand_type {
  NP_CAND_HOST = 0,  /* peer's interface address */
  NP_CAND_MAPPED,    /* peer's public address as a discovery server saw it */
  NP_CAND_PORTMAP,   /* address the peer's gateway opened (UPnP/NAT-PMP/PCP) */
  NP_CAND_PRFLX,     /* learned from an authenticated probe that arrived */
  NP_CAND_PREDICTED, /* port from np__predict_round() */
  NP_CAND_BIRTHDAY,  /* random port (SPRAY) or extra socket (SOCKETS) */
};

typedef struct np_check {
  np_addr remote;
  enum np_cand_type type;
} np_check;

/* What the rendezvous server saw of each side (its OBSERVED stamps: the
 * TCP source address, so the port is ignored). Unset (AF_UNSPEC) is
 * unknown: with no 'peer', nothing public may be probed; with no 'self',
 * no private address is (the same-NAT test cannot be made). */
typedef struct np_checklist_seen {
  np_addr self; /* our address, from our registration */
  np_addr peer; /* the peer's, from its offer (callee) or answer (caller) */
} np_checklist_seen;

/* May 'self' send probes to 'a', a remote address of the given type (HOST
 * and PRFLX are held to the private-address rule, every other type must be
 * on the peer's OBSERVED IP)? Returns NULL when it may, else a short reason
 * for a debug log ("not the peer's public IP", "loopback"...). Port 0 and
 * wildcards are refused too. */
const char *np__checklist_aim(const np_sig_candidates *self, const np_checklist_seen *seen,
                             const np_addr *a, enum np_cand_type type);

/* Builds the phase-0 list of remote candidates 'self' probes, from its own
 * candidates, the peer's and what the server saw of both, following the
 * rules above. Returns the number of entries written to out (at most cap):
 * 0 when the peer offered nothing usable. *mappings (may be NULL) is set
 * to how many of them leave through self's NAT as new mappings: every entry
 * that is not a HOST entry (host entries are on self's own network when
 * they are used at all). 'log' (may be NULL) is told of each candidate
 * dropped and why. */
int np__checklist_build(const np_sig_candidates *self, const np_sig_candidates *peer,
                       const np_checklist_seen *seen, np_check *out, int cap, int *mappings,
                       void (*log)(void *user, const np_addr *a, const char *why), void *log_user);

/* True when both sides show the same public IP to the rendezvous server
 * (seen->self and seen->peer both set and equal), i.e. they sit behind the
 * same NAT. */
bool np__checklist_same_nat(const np_checklist_seen *seen);

/* The model of a side's NAT (predict.h) from its candidates. With a STRIDE
 * (have_stride, at least one mapped address, a valid kind and base): known,
 * kind, stride and base as the side classified them. Otherwise the two-view
 * model: base = port of the last mapped address, stride from have_delta (0
 * without it), kind FROM_DELTA, known when there are two mapped addresses
 * (or one plus a delta). 'sent' is left 0 for
 * the caller to fill with the mapping count of the modelled side's own
 * checklist, np__checklist_build(c, <the other side>, ...). */
void np__checklist_model(const np_sig_candidates *c, struct np_nat_model *out);

/* "host", "reflexive", "portmap", "reflexive" (PRFLX), "predicted",
 * "birthday": the JSON 'via' word for a candidate type. */
const char *np__cand_type_via(enum np_cand_type t);

#endif
