/* Port prediction (see predict.h for the model and the strategies). */
#include "traversal/predict.h"

#include <limits.h>
#include <string.h>

#define SWEEP_FIRST_WINDOW 8
#define SWEEP_MAX_WINDOW 1024
#define SPRAY_LOW 1024
#define SPRAY_RANGE (65536 - SPRAY_LOW)
/* Draws per port before falling back to the next free port: with a nearly
 * exhausted range, rejection sampling alone might never terminate. */
#define SPRAY_ATTEMPTS 64

int np__predict_kind(const np_nat_model *m) {
  if (!m || !m->known)
    return 0;
  switch (m->kind) {
  case NP_NAT_KIND_CONE:
    return 0;
  case NP_NAT_KIND_SEQUENTIAL:
    return m->stride == 0 ? 0 : 1;
  case NP_NAT_KIND_RANDOM:
    return 2;
  default:
    break;
  }
  if (m->stride == 0)
    return 0;
  /* int64 so that INT32_MIN has an absolute value */
  int64_t d = m->stride < 0 ? -(int64_t)m->stride : (int64_t)m->stride;
  return d <= NP_PREDICT_MAX_SEQ_DELTA ? 1 : 2;
}

static bool in_ring(int64_t port) {
  return port >= NP_PREDICT_RING_LOW && port <= 65535;
}

int32_t np__predict_ring_diff(uint16_t a, uint16_t b) {
  int32_t d = (int32_t)b - (int32_t)a;
  if (!in_ring(a) || !in_ring(b))
    return d;
  /* into (-RING/2, RING/2] */
  if (d > NP_PREDICT_RING / 2)
    d -= NP_PREDICT_RING;
  else if (d <= -NP_PREDICT_RING / 2)
    d += NP_PREDICT_RING;
  return d;
}

/* x into (-RING/2, RING/2]: one step on the ring, its shortest form. */
static int32_t fold(int64_t x) {
  int64_t r = x % NP_PREDICT_RING;
  if (r > NP_PREDICT_RING / 2)
    r -= NP_PREDICT_RING;
  else if (r <= -NP_PREDICT_RING / 2)
    r += NP_PREDICT_RING;
  return (int32_t)r;
}

/* The least k, gap <= k < gap + NOISE_MAX_STEPS, with d = k strides s on
 * the ring; 0 when there is none. */
static int whole_strides(int32_t d, int32_t s, int gap) {
  for (int k = gap; k < gap + NP_PREDICT_NOISE_MAX_STEPS; k++)
    if (fold((int64_t)k * s - d) == 0)
      return k;
  return 0;
}

enum np_nat_kind np__predict_classify(const uint16_t *ports, int n, int32_t *stride) {
  return np__predict_classify_at(ports, NULL, n, stride);
}

enum np_nat_kind np__predict_classify_at(const uint16_t *ports, const int *at, int n,
                                        int32_t *stride) {
  int32_t dummy;
  if (!stride)
    stride = &dummy;
  *stride = 0;
  if (!ports || n < 2)
    return NP_NAT_KIND_FROM_DELTA;
  if (n > NP_PREDICT_MAX_VIEWS)
    n = NP_PREDICT_MAX_VIEWS;
  int32_t d[NP_PREDICT_MAX_VIEWS - 1];
  int gap[NP_PREDICT_MAX_VIEWS - 1];
  int nd = n - 1, zeros = 0;
  for (int i = 0; i < nd; i++) {
    d[i] = np__predict_ring_diff(ports[i], ports[i + 1]);
    gap[i] = at ? at[i + 1] - at[i] : 1;
    if (gap[i] < 1 || gap[i] > NP_PREDICT_RING)
      return NP_NAT_KIND_FROM_DELTA; /* not in mapping order: no verdict */
    zeros += d[i] == 0;
  }
  *stride = d[nd - 1];
  if (zeros == nd) {
    *stride = 0;
    return NP_NAT_KIND_CONE;
  }
  if (nd == 1) {
    if (gap[0] > 1 && d[0] % gap[0] == 0)
      *stride = d[0] / gap[0];
    return NP_NAT_KIND_FROM_DELTA;
  }
  /* A mapping that stayed put next to one that moved: no stride explains
   * that. */
  if (zeros > 0)
    return NP_NAT_KIND_RANDOM;
  /* The stride s explains the views when every delta is k*s on the ring
   * with gap <= k < gap + NOISE_MAX_STEPS (noise only moves a NAT
   * forward). Some delta is k*s, so s is one of the deltas divided by k,
   * taken with any multiple of the ring (k*s may have wrapped up to k/2
   * times). Of the strides that explain every delta, the one that needs the
   * least noise (the least sum of k - gap): deltas 2 and 4 are stride 2,
   * not stride 1 with noise, and 1, 1 is stride 1, not 5 * 25805 around
   * the ring. */
  int32_t best = 0;
  int best_cost = INT32_MAX;
  for (int i = 0; i < nd; i++) {
    for (int k = gap[i]; k < gap[i] + NP_PREDICT_NOISE_MAX_STEPS; k++) {
      int wraps = k / 2 + 1;
      for (int m = -wraps; m <= wraps; m++) {
        int64_t full = (int64_t)d[i] + (int64_t)m * NP_PREDICT_RING;
        if (full % k != 0)
          continue;
        int32_t s = fold(full / k);
        if (s == 0)
          continue;
        int cost = 0;
        for (int j = 0; j < nd && cost >= 0; j++) {
          int kj = whole_strides(d[j], s, gap[j]);
          cost = kj ? cost + (kj - gap[j]) : -1;
        }
        int32_t abs_s = s < 0 ? -s : s, abs_best = best < 0 ? -best : best;
        if (cost >= 0 && (cost < best_cost || (cost == best_cost && abs_s < abs_best))) {
          best = s;
          best_cost = cost;
        }
      }
    }
  }
  if (best == 0)
    return NP_NAT_KIND_RANDOM;
  *stride = best;
  return NP_NAT_KIND_SEQUENTIAL;
}

enum np_predict_strategy np__predict_plan(const np_nat_model *self, const np_nat_model *peer) {
  int s = np__predict_kind(self), p = np__predict_kind(peer);
  if (s == 0 && p == 0)
    return NP_PREDICT_NONE;
  if (s == 0 && p == 1)
    return NP_PREDICT_SWEEP;
  if (s == 1 && p == 0)
    return NP_PREDICT_HOLD;
  if (s == 1 && p == 1)
    return NP_PREDICT_LOCKSTEP;
  if (s == 0 && p == 2)
    return NP_PREDICT_SPRAY;
  if (s == 2 && p == 0)
    return NP_PREDICT_SOCKETS;
  return NP_PREDICT_IMPOSSIBLE;
}

const char *np__predict_strategy_name(enum np_predict_strategy s) {
  switch (s) {
  case NP_PREDICT_NONE:
    return "none";
  case NP_PREDICT_SWEEP:
    return "sweep";
  case NP_PREDICT_HOLD:
    return "hold";
  case NP_PREDICT_LOCKSTEP:
    return "lockstep";
  case NP_PREDICT_SPRAY:
    return "spray";
  case NP_PREDICT_SOCKETS:
    return "sockets";
  case NP_PREDICT_IMPOSSIBLE:
    return "impossible";
  }
  return "?";
}

int np__predict_lockstep_shift(int round) {
  if (round <= 1)
    return 0;
  int i = (round - 1) % (2 * NP_PREDICT_LOCKSTEP_MAX_SHIFT + 1); /* 0, 1, 2, ... */
  return (i % 2 == 1) ? (i + 1) / 2 : -(i / 2);
}

int32_t np__predict_port_at(uint16_t base, int32_t stride, int64_t steps) {
  if (stride == 0)
    return base ? base : -1;
  /* Steps far beyond the port range are rejected first so the product
   * cannot overflow. */
  if (steps > 65535 || steps < -65535)
    return -1;
  int64_t off = (int64_t)stride * steps;
  if (in_ring(base)) {
    int64_t r = ((int64_t)base - NP_PREDICT_RING_LOW + off) % NP_PREDICT_RING;
    if (r < 0)
      r += NP_PREDICT_RING;
    return (int32_t)(r + NP_PREDICT_RING_LOW);
  }
  int64_t p = (int64_t)base + off;
  if (p < 1 || p > 65535)
    return -1;
  return (int32_t)p;
}

static int32_t port_at(uint16_t base, int32_t stride, int64_t steps) {
  return np__predict_port_at(base, stride, steps);
}

/* Appends port unless it is unusable, already present or out is full. */
static int push_unique(uint16_t *out, int n, int cap, int32_t port) {
  if (port < 1 || n >= cap)
    return n;
  for (int i = 0; i < n; i++)
    if (out[i] == (uint16_t)port)
      return n;
  out[n] = (uint16_t)port;
  return n + 1;
}

static int sweep(const np_nat_model *peer, int round, uint16_t *out, int cap) {
  /* 8 << 7 is the cap already; checking first keeps the shift defined */
  int w = round > 7 ? SWEEP_MAX_WINDOW : SWEEP_FIRST_WINDOW << (round - 1);
  int lo = 1 - w / 4;
  int n = 0;
  /* distance d from k = 1: forward (1 + d) before backward (1 - d) */
  for (int d = 0; n < cap && (1 + d <= w || 1 - d >= lo); d++) {
    if (1 + d <= w)
      n = push_unique(out, n, cap, port_at(peer->base, peer->stride, 1 + d));
    if (d > 0 && 1 - d >= lo)
      n = push_unique(out, n, cap, port_at(peer->base, peer->stride, 1 - d));
  }
  return n;
}

static int64_t lockstep_start(const np_nat_model *peer, int round) {
  return (int64_t)peer->sent +
         (int64_t)(NP_PREDICT_LOCKSTEP_WINDOW + NP_PREDICT_LOCKSTEP_SPACERS) * (round - 1);
}

static int lockstep(const np_nat_model *peer, bool callee, int round, uint16_t *out, int cap) {
  int64_t start = lockstep_start(peer, round);
  int64_t shift = callee ? np__predict_lockstep_shift(round) : 0;
  int n = 0;
  for (int k = 1; k <= NP_PREDICT_LOCKSTEP_WINDOW && n < cap; k++)
    n = push_unique(out, n, cap, port_at(peer->base, peer->stride, start + k + shift));
  return n;
}

/* Is port one of the peer's LOCKSTEP targets in rounds 1..last, for any
 * shift? Those are its lattice points base + stride * k for k in
 * [sent + 1 - MAX_SHIFT, start(last) + W + MAX_SHIFT]. */
static bool lockstep_uses(const np_nat_model *peer, int last, int32_t port) {
  int64_t hi = lockstep_start(peer, last) + NP_PREDICT_LOCKSTEP_WINDOW +
               NP_PREDICT_LOCKSTEP_MAX_SHIFT;
  for (int64_t k = (int64_t)peer->sent + 1 - NP_PREDICT_LOCKSTEP_MAX_SHIFT; k <= hi; k++)
    if (port_at(peer->base, peer->stride, k) == port)
      return true;
  return false;
}

int np__predict_spacers(const np_nat_model *peer, int round, uint16_t *out, int n) {
  if (!peer || !out || n <= 0 || round < 1)
    return 0;
  /* Half the ring away from the round's window, so that a small stride
   * never comes near; with a large one the lattice covers the ring, so
   * every candidate is checked against the windows up to two rounds on
   * and passed over when one uses it. Bounded: a few windows hold at most
   * a few hundred ports of the ring. */
  int64_t start = (int64_t)peer->base + NP_PREDICT_RING / 2 +
                  (int64_t)round * NP_PREDICT_LOCKSTEP_SPACERS;
  int got = 0;
  for (int64_t c = 0; got < n && c < NP_PREDICT_RING; c++) {
    int32_t port = (int32_t)(NP_PREDICT_RING_LOW + (start + c) % NP_PREDICT_RING);
    if (port == peer->base || lockstep_uses(peer, round + 2, port))
      continue;
    bool dup = false;
    for (int i = 0; i < got; i++)
      dup = dup || out[i] == (uint16_t)port;
    if (!dup)
      out[got++] = (uint16_t)port;
  }
  return got;
}

int np__predict_round(enum np_predict_strategy s, const np_nat_model *self,
                      const np_nat_model *peer, bool callee, int round, uint16_t *out, int cap) {
  (void)self; /* our own NAT only decides the strategy, not the targets */
  if (!peer || !out || cap <= 0 || round < 1)
    return 0;
  switch (s) {
  case NP_PREDICT_SWEEP:
    return sweep(peer, round, out, cap);
  case NP_PREDICT_HOLD:
    return push_unique(out, 0, cap, peer->base);
  case NP_PREDICT_LOCKSTEP:
    return lockstep(peer, callee, round, out, cap);
  default:
    return 0;
  }
}

static bool bit_get(const uint8_t *bits, uint16_t port) {
  return bits[port >> 3] & (1u << (port & 7));
}

static void bit_set(uint8_t *bits, uint16_t port) {
  bits[port >> 3] |= (uint8_t)(1u << (port & 7));
}

int np__predict_spray(np_random_fn random, void *user, const uint16_t *avoid, int n_avoid,
                     uint16_t *out, int n) {
  if (!random || !out || n <= 0)
    return 0;
  /* one bit per port: O(1) membership whatever the size of avoid */
  uint8_t used[65536 / 8];
  memset(used, 0, sizeof used);
  int free_ports = SPRAY_RANGE;
  for (int i = 0; avoid && i < n_avoid; i++) {
    if (avoid[i] >= SPRAY_LOW && !bit_get(used, avoid[i])) {
      bit_set(used, avoid[i]);
      free_ports--;
    }
  }
  int got = 0;
  while (got < n && free_ports > 0) {
    uint16_t port = 0;
    bool found = false;
    for (int a = 0; a < SPRAY_ATTEMPTS && !found; a++) {
      uint8_t b[2];
      random(user, b, sizeof b);
      port = (uint16_t)((b[0] << 8) | b[1]);
      /* rejecting (rather than folding) the low ports keeps the draw uniform */
      found = port >= SPRAY_LOW && !bit_get(used, port);
    }
    if (!found) {
      if (port < SPRAY_LOW)
        port = SPRAY_LOW;
      while (bit_get(used, port))
        port = port == 65535 ? SPRAY_LOW : (uint16_t)(port + 1);
    }
    bit_set(used, port);
    free_ports--;
    out[got++] = port;
  }
  return got;
}

double np__predict_birthday_odds(int sockets, int ports, int range) {
  if (sockets <= 0 || ports <= 0 || range <= 0)
    return 0.0;
  double miss = 1.0;
  for (int i = 0; i < ports && i < range; i++) {
    double left = (double)(range - i);
    if (sockets >= left)
      return 1.0;
    miss *= 1.0 - (double)sockets / left;
  }
  return 1.0 - miss;
}
