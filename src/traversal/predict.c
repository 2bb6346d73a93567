/* Port prediction (see predict.h for the model and the strategies). */
#include "traversal/predict.h"

#include <string.h>

#define SWEEP_FIRST_WINDOW 8
#define SWEEP_MAX_WINDOW 1024
#define SPRAY_LOW 1024
#define SPRAY_RANGE (65536 - SPRAY_LOW)
/* Draws per port before falling back to the next free port: with a nearly
 * exhausted range, rejection sampling alone might never terminate. */
#define SPRAY_ATTEMPTS 64

int np_predict_kind(const np_nat_model *m) {
  if (!m || !m->known || m->delta == 0)
    return 0;
  /* int64 so that INT32_MIN has an absolute value */
  int64_t d = m->delta < 0 ? -(int64_t)m->delta : (int64_t)m->delta;
  return d <= NP_PREDICT_MAX_SEQ_DELTA ? 1 : 2;
}

enum np_predict_strategy np_predict_plan(const np_nat_model *self, const np_nat_model *peer) {
  int s = np_predict_kind(self), p = np_predict_kind(peer);
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

const char *np_predict_strategy_name(enum np_predict_strategy s) {
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

int np_predict_lockstep_shift(int round) {
  if (round <= 1)
    return 0;
  int i = (round - 1) % (2 * NP_PREDICT_LOCKSTEP_MAX_SHIFT + 1); /* 0, 1, 2, ... */
  return (i % 2 == 1) ? (i + 1) / 2 : -(i / 2);
}

/* base + delta * steps, or -1 when that is not a usable port. Steps far
 * beyond the port range are rejected first so the product cannot overflow. */
static int32_t port_at(uint16_t base, int32_t delta, int64_t steps) {
  if (delta != 0 && (steps > 65535 || steps < -65535))
    return -1;
  if (delta == 0)
    return base ? base : -1;
  int64_t p = (int64_t)base + (int64_t)delta * steps;
  if (p < 1 || p > 65535)
    return -1;
  return (int32_t)p;
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
      n = push_unique(out, n, cap, port_at(peer->base, peer->delta, 1 + d));
    if (d > 0 && 1 - d >= lo)
      n = push_unique(out, n, cap, port_at(peer->base, peer->delta, 1 - d));
  }
  return n;
}

static int lockstep(const np_nat_model *peer, bool callee, int round, uint16_t *out, int cap) {
  int64_t start = (int64_t)peer->sent +
                  (int64_t)(NP_PREDICT_LOCKSTEP_WINDOW + NP_PREDICT_LOCKSTEP_SPACERS) * (round - 1);
  int64_t shift = callee ? np_predict_lockstep_shift(round) : 0;
  int n = 0;
  for (int k = 1; k <= NP_PREDICT_LOCKSTEP_WINDOW && n < cap; k++)
    n = push_unique(out, n, cap, port_at(peer->base, peer->delta, start + k + shift));
  return n;
}

int np_predict_round(enum np_predict_strategy s, const np_nat_model *self, const np_nat_model *peer,
                     bool callee, int round, uint16_t *out, int cap) {
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

int np_predict_spray(np_predict_random_fn random, void *user, const uint16_t *avoid, int n_avoid,
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

double np_predict_birthday_odds(int sockets, int ports, int range) {
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
