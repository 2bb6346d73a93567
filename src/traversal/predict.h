/*
 * Port prediction: which public ports of the peer to probe once the direct
 * candidates have failed. Pure arithmetic, no sockets, no clock, randomness
 * injected: both peers run the same functions on the same data (the offer
 * and the answer) and so agree on who sends where without talking.
 *
 * The model of a NAT is what the discovery servers saw of one socket: up
 * to three (or more) mappings, in the order they were made (server 1,
 * server 2, server 1's alternate address and port; see nat_probe.h):
 *
 *   base    the port of the *last* mapping made;
 *   stride  the step between successive mappings: 0 for an
 *           endpoint-independent mapping (cone), the constant step of a
 *           symmetric NAT that hands out ports in sequence (each new remote
 *           address:port gets base + stride, then base + 2*stride, ...,
 *           whatever the stride: 1, 7, 300, negative), meaningless for one
 *           that picks them at random;
 *   kind    cone, sequential or random, from np__predict_classify().
 *
 * Port arithmetic is done on the ring of ports 1024..65535 (NP_PREDICT_RING
 * ports), where NATs allocate: a sequence that wraps past 65535 to 1024 is
 * still one stride per step.
 *
 * After gathering, a peer's NAT makes one new mapping for each new remote
 * address:port the peer sends to. The engine sends in a fixed order (phase 0:
 * the other side's public candidates, see checklist.h; then the rounds
 * below), so each side can count how far the other's allocation has moved:
 * that count is 'sent' below. Traffic from other hosts behind the same NAT
 * ("noise") moves it further, always forward, in steps of stride; the growing
 * windows below absorb it.
 *
 * Strategies (np__predict_plan()):
 *  - NONE       both sides endpoint-independent (or unknown): the direct
 *               candidates are all there is to try.
 *  - SWEEP      we are endpoint-independent, the peer is sequential: its
 *               mapping toward our single public port is about
 *               base + stride * sent; we probe that and its neighbours in
 *               windows that double each round (one dimension: our own
 *               mapping does not move, whatever we send to).
 *  - HOLD       we are sequential, the peer is endpoint-independent: our
 *               probes to its one port all leave through one mapping, and
 *               the peer sweeps for it; we keep probing the peer's port.
 *  - LOCKSTEP   both sequential: in round r each side sends to W new ports
 *               and S spacers, so both allocations advance W + S per round; the k-th packet of
 *               one side goes to the peer's predicted k-th new port, which
 *               the peer is at that moment mapping toward our k-th. A wrong
 *               estimate of either start (noise, an unforeseen mapping)
 *               shifts the two sequences against each other; the callee
 *               applies a shift that changes each round (0, +1, -1, +2,
 *               -2, ...), which realigns them when the sum of the two
 *               errors is that shift.
 *  - SPRAY      the peer picks random ports and we are endpoint-independent:
 *               we send to many random ports of the peer's IP while it
 *               opens many sockets toward our one port (birthday paradox).
 *  - SOCKETS    we pick random ports, the peer is endpoint-independent: we
 *               open many sockets, each sending to the peer's one port.
 *  - IMPOSSIBLE random against sequential or random: no direct path this way
 *               (the relay, later, covers it).
 */
#ifndef NP_PREDICT_H
#define NP_PREDICT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/random.h"

/* With only two views (one discovery server down, or an offer from an
 * older peer) there is a single delta and nothing to check it against: a
 * delta larger than this (in absolute value) is then taken as random ports,
 * as the seed did. With three views or more, np__predict_classify() decides
 * from the agreement of the deltas instead, whatever the stride. */
#define NP_PREDICT_MAX_SEQ_DELTA 64

/* Noise tolerance of np__predict_classify(): other hosts behind a sequential
 * NAT move it forward by whole strides between two of our mappings, so a
 * delta may be k strides, 1 <= k <= this. */
#define NP_PREDICT_NOISE_MAX_STEPS 16

/* The ports NATs hand out, as a ring: 1024..65535. */
#define NP_PREDICT_RING_LOW 1024
#define NP_PREDICT_RING (65536 - NP_PREDICT_RING_LOW)

/* Most views np__predict_classify() looks at. */
#define NP_PREDICT_MAX_VIEWS 8

/* Ports probed per LOCKSTEP round. */
#define NP_PREDICT_LOCKSTEP_WINDOW 16
/* Largest LOCKSTEP shift; the callee's shifts cycle 0, +1, -1, ... up to
 * +-this. */
#define NP_PREDICT_LOCKSTEP_MAX_SHIFT 2
/* Extra mappings each side makes after its window in every LOCKSTEP round
 * (TTL-limited packets to destinations no window uses), so that each round
 * advances both allocations by W + 2 * MAX_SHIFT: then the callee's shifted
 * window never reaches back into the previous round's, every target is a
 * new destination, and the k-th target really gets the k-th new mapping. */
#define NP_PREDICT_LOCKSTEP_SPACERS (2 * NP_PREDICT_LOCKSTEP_MAX_SHIFT)

/* How a NAT allocates public ports. FROM_DELTA: not classified (a model
 * from two views, or built by hand), np__predict_kind() applies the
 * two-view rule to the stride (NP_PREDICT_MAX_SEQ_DELTA). */
enum np_nat_kind {
  NP_NAT_KIND_FROM_DELTA = 0,
  NP_NAT_KIND_CONE,
  NP_NAT_KIND_SEQUENTIAL,
  NP_NAT_KIND_RANDOM,
};

/* What one side's NAT looks like, from the discovery views. */
typedef struct np_nat_model {
  bool known;      /* false: no (or one) discovery answer; treated as cone */
  uint8_t kind;    /* enum np_nat_kind */
  uint16_t base;   /* port of the last mapping made */
  int32_t stride;  /* step between successive mappings (ring arithmetic) */
  /* Distinct remote address:ports this side sends to in phase 0, i.e. how
   * many new mappings its NAT makes before round 1 (np_checklist_*). */
  int sent;
} np_nat_model;

enum np_predict_strategy {
  NP_PREDICT_NONE = 0,
  NP_PREDICT_SWEEP,
  NP_PREDICT_HOLD,
  NP_PREDICT_LOCKSTEP,
  NP_PREDICT_SPRAY,
  NP_PREDICT_SOCKETS,
  NP_PREDICT_IMPOSSIBLE,
};

/* Classification of a model: 0 endpoint-independent (unknown, kind CONE,
 * or FROM_DELTA with stride 0), 1 sequential (kind SEQUENTIAL with a
 * non-zero stride, or FROM_DELTA with 0 < |stride| <=
 * NP_PREDICT_MAX_SEQ_DELTA), 2 random. */
int np__predict_kind(const np_nat_model *m);

/* Classifies a NAT from the public ports of n successive mappings of one
 * socket, in the order the mappings were made (n <= NP_PREDICT_MAX_VIEWS;
 * more are ignored). The deltas are taken on the port ring
 * (np__predict_ring_diff()). Returns the kind and sets *stride:
 *  - n < 2: FROM_DELTA, stride 0 (nothing to compare: unknown);
 *  - every delta 0: CONE, stride 0;
 *  - n == 2: FROM_DELTA with the one delta as stride (np__predict_kind()
 *    applies the two-view rule);
 *  - n >= 3: SEQUENTIAL when every delta is non-zero, of one sign, and a
 *    whole multiple k (1 <= k <= NP_PREDICT_NOISE_MAX_STEPS) of their
 *    greatest common divisor g, which is the stride (noise from other hosts
 *    moves a sequential NAT by whole strides, only forward); RANDOM
 *    otherwise (the deltas disagree), stride the last delta. */
enum np_nat_kind np__predict_classify(const uint16_t *ports, int n, int32_t *stride);

/* As np__predict_classify(), for views that are not all successive
 * mappings: at[i] is the index of view i among the mappings the socket
 * made (increasing; a destination that never answered still took a
 * mapping, e.g. a discovery server that is down), so between views i and
 * i + 1 the NAT moved gap = at[i+1] - at[i] strides plus noise: k strides
 * with gap <= k < gap + NP_PREDICT_NOISE_MAX_STEPS. With two views the
 * one delta is divided by its gap when it can be (FROM_DELTA all the
 * same). at NULL means 0, 1, 2, ... */
enum np_nat_kind np__predict_classify_at(const uint16_t *ports, const int *at, int n,
                                        int32_t *stride);

/* b - a on the port ring, in (-NP_PREDICT_RING/2, NP_PREDICT_RING/2]: the
 * shortest step from a to b. Ports below the ring are taken as they are
 * (plain difference). */
int32_t np__predict_ring_diff(uint16_t a, uint16_t b);

/* base + stride * steps on the port ring (base in the ring), or plain
 * arithmetic when base is below it; -1 when that is no usable port. */
int32_t np__predict_port_at(uint16_t base, int32_t stride, int64_t steps);

/* LOCKSTEP spacers of round 'round' for 'self' probing 'peer': n ports of
 * the peer's IP that no LOCKSTEP window of either side uses up to round
 * + 2 (for any shift), so each is a new destination and so a new mapping of
 * our NAT. Returns how many were written (n unless the ring runs out). */
int np__predict_spacers(const np_nat_model *peer, int round, uint16_t *out, int n);

/* Which strategy 'self' uses against 'peer' (see the top of this file).
 * Symmetric in the sense that np__predict_plan(a, b) == SWEEP exactly when
 * np__predict_plan(b, a) == HOLD, and SPRAY pairs with SOCKETS. */
enum np_predict_strategy np__predict_plan(const np_nat_model *self, const np_nat_model *peer);

/* Name for logs: "none", "sweep", "hold", "lockstep", "spray", "sockets",
 * "impossible". */
const char *np__predict_strategy_name(enum np_predict_strategy s);

/* Shift the callee applies in LOCKSTEP round r (1-based): 0, +1, -1, +2,
 * -2, then the same again (period 2 * MAX_SHIFT + 1); the caller always
 * uses 0. */
int np__predict_lockstep_shift(int round);

/* Target ports of round 'round' (1-based) for 'self' probing 'peer' with
 * strategy SWEEP, HOLD or LOCKSTEP; callee says which side of the
 * exchange self is (it matters for the LOCKSTEP shift). Writes at most cap
 * ports to out, most likely first, without duplicates and without port 0;
 * returns how many.
 *
 * All port arithmetic is on the ring (np__predict_port_at()).
 *  SWEEP:    the peer's first new mapping (our mapped address comes first
 *            in its phase 0) is expected at peer.base + peer.stride. Round
 *            r probes peer.base + peer.stride * k for k in [1 - w/4, w],
 *            w = 8 << (r - 1) (w at most 1024), ordered by distance from
 *            k = 1 with the forward side first at equal distance (noise only
 *            moves a sequential NAT forward, but an estimate can be high).
 *  HOLD:     the peer's base port (its one public port): one target.
 *  LOCKSTEP: round base B = peer.base + peer.stride * (peer.sent +
 *            (W + S) * (round - 1)), W = NP_PREDICT_LOCKSTEP_WINDOW,
 *            S = NP_PREDICT_LOCKSTEP_SPACERS; targets
 *            B + peer.stride * (k + shift) for k = 1..W in that order (order
 *            matters: the k-th new destination gets our k-th new mapping),
 *            shift = callee ? np__predict_lockstep_shift(round) : 0.
 * Other strategies return 0. */
int np__predict_round(enum np_predict_strategy s, const np_nat_model *self,
                     const np_nat_model *peer, bool callee, int round, uint16_t *out, int cap);

/* SPRAY: n distinct random ports in [1024, 65535] drawn with random(user,
 * buf, len) (the engine passes its injected RNG), excluding the ports in
 * 'avoid' (already sprayed). Returns how many were written (n unless the
 * range runs out). */
int np__predict_spray(np_random_fn random, void *user, const uint16_t *avoid,
                     int n_avoid, uint16_t *out, int n);

/* Probability (0..1) that a birthday attempt with 'sockets' random mappings
 * on one side and 'ports' distinct random probes from the other, over a
 * range of 'range' ports, finds at least one match:
 * 1 - prod_{i<ports} (1 - sockets / (range - i)). For sizing and logs. */
double np__predict_birthday_odds(int sockets, int ports, int range);

#endif
