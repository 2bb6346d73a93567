/* Port prediction: both peers must derive the same probe schedule from the
 * same data, so the exact order of the targets is part of the contract. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "traversal/predict.h"

#include <string.h>

#define W NP_PREDICT_LOCKSTEP_WINDOW
#define S NP_PREDICT_LOCKSTEP_SPACERS

static np_nat_model model(bool known, uint16_t base, int32_t delta, int sent) {
  np_nat_model m = {.known = known, .base = base, .stride = delta, .sent = sent};
  return m;
}

static void kind_classifies_delta(void **state) {
  (void)state;
  np_nat_model m = model(false, 1000, 5, 0);
  assert_int_equal(np__predict_kind(&m), 0); /* unknown counts as cone */
  m = model(true, 1000, 0, 0);
  assert_int_equal(np__predict_kind(&m), 0);
  m = model(true, 1000, 1, 0);
  assert_int_equal(np__predict_kind(&m), 1);
  m = model(true, 1000, -NP_PREDICT_MAX_SEQ_DELTA, 0);
  assert_int_equal(np__predict_kind(&m), 1);
  m = model(true, 1000, NP_PREDICT_MAX_SEQ_DELTA + 1, 0);
  assert_int_equal(np__predict_kind(&m), 2);
  m = model(true, 1000, INT32_MIN, 0);
  assert_int_equal(np__predict_kind(&m), 2);
}

static void plan_table_and_symmetry(void **state) {
  (void)state;
  np_nat_model by_kind[3] = {model(true, 1000, 0, 0), model(true, 1000, 2, 0),
                             model(true, 1000, 3000, 0)};
  static const enum np_predict_strategy want[3][3] = {
      {NP_PREDICT_NONE, NP_PREDICT_SWEEP, NP_PREDICT_SPRAY},
      {NP_PREDICT_HOLD, NP_PREDICT_LOCKSTEP, NP_PREDICT_IMPOSSIBLE},
      {NP_PREDICT_SOCKETS, NP_PREDICT_IMPOSSIBLE, NP_PREDICT_IMPOSSIBLE},
  };
  for (int s = 0; s < 3; s++) {
    for (int p = 0; p < 3; p++) {
      enum np_predict_strategy ab = np__predict_plan(&by_kind[s], &by_kind[p]);
      enum np_predict_strategy ba = np__predict_plan(&by_kind[p], &by_kind[s]);
      assert_int_equal(ab, want[s][p]);
      assert_int_equal(ab == NP_PREDICT_SWEEP, ba == NP_PREDICT_HOLD);
      assert_int_equal(ab == NP_PREDICT_SPRAY, ba == NP_PREDICT_SOCKETS);
      assert_int_equal(ab == NP_PREDICT_LOCKSTEP, ba == NP_PREDICT_LOCKSTEP);
      assert_int_equal(ab == NP_PREDICT_IMPOSSIBLE, ba == NP_PREDICT_IMPOSSIBLE);
    }
  }
  assert_string_equal(np__predict_strategy_name(NP_PREDICT_NONE), "none");
  assert_string_equal(np__predict_strategy_name(NP_PREDICT_SWEEP), "sweep");
  assert_string_equal(np__predict_strategy_name(NP_PREDICT_HOLD), "hold");
  assert_string_equal(np__predict_strategy_name(NP_PREDICT_LOCKSTEP), "lockstep");
  assert_string_equal(np__predict_strategy_name(NP_PREDICT_SPRAY), "spray");
  assert_string_equal(np__predict_strategy_name(NP_PREDICT_SOCKETS), "sockets");
  assert_string_equal(np__predict_strategy_name(NP_PREDICT_IMPOSSIBLE), "impossible");
}

static void sweep_first_round_order(void **state) {
  (void)state;
  np_nat_model self = model(true, 5000, 0, 0), peer = model(true, 20001, 1, 3);
  uint16_t out[64];
  /* k = 1, 2, 0, 3, -1, 4, 5, 6, 7, 8: 'sent' does not matter to SWEEP */
  static const uint16_t want[] = {20002, 20003, 20001, 20004, 20000,
                                  20005, 20006, 20007, 20008, 20009};
  int n = np__predict_round(NP_PREDICT_SWEEP, &self, &peer, false, 1, out, 64);
  assert_int_equal(n, 10);
  assert_memory_equal(out, want, sizeof want);
  /* the callee flag changes nothing outside LOCKSTEP */
  n = np__predict_round(NP_PREDICT_SWEEP, &self, &peer, true, 1, out, 64);
  assert_int_equal(n, 10);
  assert_memory_equal(out, want, sizeof want);
  /* cap truncates, keeping the most likely first */
  n = np__predict_round(NP_PREDICT_SWEEP, &self, &peer, false, 1, out, 3);
  assert_int_equal(n, 3);
  assert_memory_equal(out, want, 3 * sizeof want[0]);
}

static void sweep_windows_double_and_cap(void **state) {
  (void)state;
  np_nat_model self = model(true, 5000, 0, 0), peer = model(true, 30000, 1, 0);
  static uint16_t out[2048];
  /* w + w/4 ports per round: k in [1 - w/4, w] */
  static const struct {
    int round, n;
  } want[] = {{1, 10}, {2, 20}, {3, 40}, {7, 512 + 128}, {8, 1024 + 256}, {9, 1280}, {40, 1280}};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    int n = np__predict_round(NP_PREDICT_SWEEP, &self, &peer, false, want[i].round, out, 2048);
    assert_int_equal(n, want[i].n);
    assert_int_equal(out[0], 30001);
    for (int a = 0; a < n; a++) {
      assert_true(out[a] >= 30000 - (n / 5 - 1) && out[a] <= 30000 + n * 4 / 5);
      for (int b = 0; b < a; b++)
        assert_int_not_equal(out[a], out[b]);
    }
  }
  /* round 2: the tail is the forward side beyond the backward reach */
  int n = np__predict_round(NP_PREDICT_SWEEP, &self, &peer, false, 2, out, 2048);
  assert_int_equal(out[n - 1], 30016);
  assert_int_equal(out[6], 29998); /* k = -2, after k = 4 */
  assert_int_equal(out[7], 30005); /* k = 5 before k = -3 */
  assert_int_equal(out[8], 29997);
  assert_int_equal(np__predict_round(NP_PREDICT_SWEEP, &self, &peer, false, 0, out, 2048), 0);
}

static void sweep_negative_delta(void **state) {
  (void)state;
  np_nat_model self = model(true, 5000, 0, 0), peer = model(true, 30000, -2, 0);
  uint16_t out[16];
  static const uint16_t want[] = {29998, 29996, 30000, 29994, 30002,
                                  29992, 29990, 29988, 29986, 29984};
  int n = np__predict_round(NP_PREDICT_SWEEP, &self, &peer, false, 1, out, 16);
  assert_int_equal(n, 10);
  assert_memory_equal(out, want, sizeof want);
}

/* NATs allocate on the ring 1024..65535: a sequence that passes 65535
 * goes on at 1024 (and one counting down past 1024 at 65535), so the sweep
 * follows it around instead of stopping at the edge. (The seed skipped
 * those ports and lost the NAT's next mappings.) Bases below the ring keep
 * plain arithmetic: port 0 and negatives never appear. */
static void sweep_wraps_around_the_ring(void **state) {
  (void)state;
  np_nat_model self = model(true, 5000, 0, 0), high = model(true, 65530, 1, 0);
  uint16_t out[16];
  static const uint16_t want_high[] = {65531, 65532, 65530, 65533, 65529,
                                       65534, 65535, 1024, 1025, 1026};
  int n = np__predict_round(NP_PREDICT_SWEEP, &self, &high, false, 1, out, 16);
  assert_int_equal(n, 10);
  assert_memory_equal(out, want_high, sizeof want_high);
  np_nat_model down = model(true, 1026, -1, 0);
  static const uint16_t want_down[] = {1025, 1024, 1026, 65535, 1027,
                                       65534, 65533, 65532, 65531, 65530};
  n = np__predict_round(NP_PREDICT_SWEEP, &self, &down, false, 1, out, 16);
  assert_int_equal(n, 10);
  assert_memory_equal(out, want_down, sizeof want_down);
  np_nat_model low = model(true, 2, -1, 0);
  static const uint16_t want_low[] = {1, 2, 3};
  n = np__predict_round(NP_PREDICT_SWEEP, &self, &low, false, 1, out, 16);
  assert_int_equal(n, 3);
  assert_memory_equal(out, want_low, sizeof want_low);
}

/* Ports of n mappings made one stride apart (plus extra strides of noise
 * before mapping i), on the ring 1024..65535. */
static void seq_ports(uint16_t start, int32_t stride, const int *noise, int n, uint16_t *out) {
  int64_t steps = 0;
  for (int i = 0; i < n; i++) {
    if (i > 0)
      steps += 1 + (noise ? noise[i] : 0);
    out[i] = (uint16_t)np__predict_port_at(start, stride, steps);
  }
}

/* Three views one constant stride apart are sequential with that stride,
 * whatever it is: small, above the seed's limit of 64, negative, and one
 * that wraps past 65535. (The seed took every delta beyond 64 as random.) */
static void classify_any_stride(void **state) {
  (void)state;
  static const struct {
    uint16_t start;
    int32_t stride;
  } cases[] = {{20000, 1}, {20000, 2}, {20000, 7}, {20000, 300}, {60000, -5},
               {50000, 20011}, {65000, 400}, {1100, -300}, {3000, -20011}, {40000, 32255}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint16_t v[3];
    seq_ports(cases[i].start, cases[i].stride, NULL, 3, v);
    int32_t stride = 0;
    assert_int_equal(np__predict_classify(v, 3, &stride), NP_NAT_KIND_SEQUENTIAL);
    assert_int_equal(stride, cases[i].stride);
    np_nat_model m = {.known = true, .kind = NP_NAT_KIND_SEQUENTIAL, .base = v[2],
                      .stride = stride};
    assert_int_equal(np__predict_kind(&m), 1);
    /* the model's next mapping is the NAT's next one */
    uint16_t next[4];
    seq_ports(cases[i].start, cases[i].stride, NULL, 4, next);
    assert_int_equal(np__predict_port_at(m.base, m.stride, 1), next[3]);
  }
  /* the wrap is one stride on the ring: 65000 -> 65400 -> 264 + 1024 */
  uint16_t w[3] = {65000, 65400, 1288};
  int32_t stride = 0;
  assert_int_equal(np__predict_classify(w, 3, &stride), NP_NAT_KIND_SEQUENTIAL);
  assert_int_equal(stride, 400);
}

/* Noise from other hosts moves a sequential NAT forward by whole strides
 * between two of our mappings: deltas d and k*d (or k*d and d, or two
 * multiples) are still that NAT, with stride d. */
static void classify_tolerates_noise(void **state) {
  (void)state;
  static const struct {
    int32_t stride;
    int noise[4];
    int n;
    int32_t want;
  } cases[] = {
      {1, {0, 2, 0}, 3, 1},     {1, {0, 0, 3}, 3, 1},      {7, {0, 1, 0}, 3, 7},
      {300, {0, 0, 4}, 3, 300}, {-5, {0, 3, 0}, 3, -5},    {20011, {0, 1, 0}, 3, 20011},
      {1, {0, 1, 2}, 3, 1},     {2, {0, 0, 0, 5}, 4, 2},   {300, {0, 15, 0}, 3, 300},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint16_t v[4];
    seq_ports(20000, cases[i].stride, cases[i].noise, cases[i].n, v);
    int32_t stride = 0;
    assert_int_equal(np__predict_classify(v, cases[i].n, &stride), NP_NAT_KIND_SEQUENTIAL);
    assert_int_equal(stride, cases[i].want);
  }
}

/* Random only when the deltas disagree; cone when nothing moved; two views
 * leave the verdict to the two-view rule; one view is unknown. */
static void classify_random_cone_and_few_views(void **state) {
  (void)state;
  int32_t stride = 99;
  static const uint16_t disagree[][3] = {
      {20000, 20300, 20301}, /* 300 then 1: 300 is not a few strides of 1... */
      {31000, 47123, 2211},  /* random ports */
      {20000, 20005, 19995}, /* forward then back */
      {20000, 20000, 20007}, /* stayed, then moved */
      {20000, 20007, 20007}, /* moved, then stayed */
      {40000, 40100, 40350}, /* 100 and 250: gcd 50, but no constant stride... */
  };
  /* ...except that 100 = 2*50 and 250 = 5*50 are whole strides of 50; and
   * 300 and 1 are 300 strides of 1, beyond the noise tolerance. */
  static const int want[] = {NP_NAT_KIND_RANDOM, NP_NAT_KIND_RANDOM, NP_NAT_KIND_RANDOM,
                             NP_NAT_KIND_RANDOM, NP_NAT_KIND_RANDOM, NP_NAT_KIND_SEQUENTIAL};
  for (size_t i = 0; i < sizeof disagree / sizeof disagree[0]; i++)
    assert_int_equal(np__predict_classify(disagree[i], 3, &stride), want[i]);
  assert_int_equal(stride, 50);
  uint16_t cone[3] = {40000, 40000, 40000};
  assert_int_equal(np__predict_classify(cone, 3, &stride), NP_NAT_KIND_CONE);
  assert_int_equal(stride, 0);
  uint16_t two[2] = {20000, 20300};
  assert_int_equal(np__predict_classify(two, 2, &stride), NP_NAT_KIND_FROM_DELTA);
  assert_int_equal(stride, 300);
  np_nat_model m = {.known = true, .base = 20300, .stride = stride};
  assert_int_equal(np__predict_kind(&m), 2); /* the seed's rule for one delta */
  assert_int_equal(np__predict_classify(two, 1, &stride), NP_NAT_KIND_FROM_DELTA);
  assert_int_equal(stride, 0);
  assert_int_equal(np__predict_classify(NULL, 3, &stride), NP_NAT_KIND_FROM_DELTA);
  /* a random verdict is random whatever the stride */
  m = (np_nat_model){.known = true, .kind = NP_NAT_KIND_RANDOM, .base = 20000, .stride = 1};
  assert_int_equal(np__predict_kind(&m), 2);
  m.kind = NP_NAT_KIND_CONE;
  assert_int_equal(np__predict_kind(&m), 0);
  m.known = false;
  m.kind = NP_NAT_KIND_SEQUENTIAL;
  assert_int_equal(np__predict_kind(&m), 0);
}

/* SWEEP and LOCKSTEP follow a large or wrapping stride around the ring. */
static void rounds_follow_large_strides(void **state) {
  (void)state;
  np_nat_model self = model(true, 5000, 0, 0);
  np_nat_model peer = {.known = true, .kind = NP_NAT_KIND_SEQUENTIAL, .base = 50000,
                       .stride = 20011, .sent = 2};
  uint16_t out[64];
  int n = np__predict_round(NP_PREDICT_SWEEP, &self, &peer, false, 1, out, 64);
  assert_int_equal(n, 10);
  assert_int_equal(out[0], np__predict_port_at(50000, 20011, 1)); /* 70011 -> 5499 */
  assert_int_equal(out[0], 5499);
  self = model(true, 5000, 1, 0);
  n = np__predict_round(NP_PREDICT_LOCKSTEP, &self, &peer, false, 1, out, 64);
  assert_int_equal(n, W);
  for (int k = 1; k <= W; k++)
    assert_int_equal(out[k - 1], np__predict_port_at(50000, 20011, 2 + k));
}

/* Spacers are new destinations: never a window target of rounds up to two
 * ahead, for any shift, even when the stride's lattice covers the ring. */
static void spacers_avoid_windows(void **state) {
  (void)state;
  static const int32_t strides[] = {1, -1, 7, 300, -5, 20011, 32256 - 1};
  for (size_t i = 0; i < sizeof strides / sizeof strides[0]; i++) {
    np_nat_model self = model(true, 5000, 1, 0);
    np_nat_model peer = {.known = true, .kind = NP_NAT_KIND_SEQUENTIAL, .base = 30000,
                         .stride = strides[i], .sent = 3};
    for (int r = 1; r <= 12; r++) {
      uint16_t sp[S];
      assert_int_equal(np__predict_spacers(&peer, r, sp, S), S);
      for (int q = r; q <= r + 2; q++) {
        for (int callee = 0; callee < 2; callee++) {
          uint16_t win[W];
          int n = np__predict_round(NP_PREDICT_LOCKSTEP, &self, &peer, callee, q, win, W);
          for (int a = 0; a < S; a++)
            for (int b = 0; b < n; b++)
              assert_int_not_equal(sp[a], win[b]);
        }
      }
      for (int a = 0; a < S; a++)
        for (int b = 0; b < a; b++)
          assert_int_not_equal(sp[a], sp[b]);
    }
  }
}

static void hold_targets_peer_port(void **state) {
  (void)state;
  np_nat_model self = model(true, 5000, 1, 0), peer = model(true, 41000, 0, 4);
  uint16_t out[8];
  for (int r = 1; r <= 5; r++) {
    assert_int_equal(np__predict_round(NP_PREDICT_HOLD, &self, &peer, r % 2, r, out, 8), 1);
    assert_int_equal(out[0], 41000);
  }
  peer.base = 0;
  assert_int_equal(np__predict_round(NP_PREDICT_HOLD, &self, &peer, false, 1, out, 8), 0);
  peer.base = 41000;
  assert_int_equal(np__predict_round(NP_PREDICT_NONE, &self, &peer, false, 1, out, 8), 0);
  assert_int_equal(np__predict_round(NP_PREDICT_SPRAY, &self, &peer, false, 1, out, 8), 0);
  assert_int_equal(np__predict_round(NP_PREDICT_IMPOSSIBLE, &self, &peer, false, 1, out, 8), 0);
}

static void lockstep_shift_sequence(void **state) {
  (void)state;
  static const int want[] = {0, 1, -1, 2, -2, 0, 1, -1, 2, -2, 0};
  for (int r = 1; r <= 11; r++)
    assert_int_equal(np__predict_lockstep_shift(r), want[r - 1]);
}

static void lockstep_caller_and_callee(void **state) {
  (void)state;
  np_nat_model self = model(true, 5000, 1, 0), peer = model(true, 40000, 3, 2);
  uint16_t out[W];
  for (int r = 1; r <= 5; r++) {
    int base = 40000 + 3 * (2 + (W + S) * (r - 1));
    int n = np__predict_round(NP_PREDICT_LOCKSTEP, &self, &peer, false, r, out, W);
    assert_int_equal(n, W);
    for (int k = 1; k <= W; k++)
      assert_int_equal(out[k - 1], base + 3 * k);
    n = np__predict_round(NP_PREDICT_LOCKSTEP, &self, &peer, true, r, out, W);
    assert_int_equal(n, W);
    int shift = np__predict_lockstep_shift(r);
    for (int k = 1; k <= W; k++)
      assert_int_equal(out[k - 1], base + 3 * (k + shift));
  }
  /* near the top of the range the ports go on at 1024, in order (the seed
   * dropped them: a wrapping NAT's next mappings were never probed) */
  peer = model(true, 65505, 1, 0);
  int n = np__predict_round(NP_PREDICT_LOCKSTEP, &self, &peer, true, 2, out, W);
  assert_int_equal(n, W); /* 65505 + 20 + (k + 1) for k = 1..16 */
  assert_int_equal(out[0], 65527);
  assert_int_equal(out[8], 65535);
  assert_int_equal(out[9], 1024);
  assert_int_equal(out[n - 1], 1030);
}

/* One side of the simulation: a sequential NAT whose true allocations run
 * err steps ahead of what the other side estimates. */
typedef struct sim_side {
  uint16_t base;
  int32_t delta;
  int sent;
  int err;
} sim_side;

static int sim_alloc(const sim_side *s, int round, int k) {
  return s->base + s->delta * (s->sent + s->err + (W + S) * (round - 1) + k);
}

/* Does round 'round' open a pair: the caller's k-th packet reaches the
 * callee's mapping j while the callee's j-th reaches the caller's mapping k? */
static bool sim_round_matches(const sim_side *a, const sim_side *b, int round) {
  np_nat_model est_a = model(true, a->base, a->delta, a->sent);
  np_nat_model est_b = model(true, b->base, b->delta, b->sent);
  uint16_t ta[W], tb[W];
  assert_int_equal(np__predict_round(NP_PREDICT_LOCKSTEP, &est_a, &est_b, false, round, ta, W), W);
  assert_int_equal(np__predict_round(NP_PREDICT_LOCKSTEP, &est_b, &est_a, true, round, tb, W), W);
  for (int k = 1; k <= W; k++)
    for (int j = 1; j <= W; j++)
      if (ta[k - 1] == sim_alloc(b, round, j) && tb[j - 1] == sim_alloc(a, round, k))
        return true;
  return false;
}

/* The property the spacers buy: however the callee's shift changes from one
 * round to the next, its window never reaches back into an earlier round's
 * ports, so every target is a new destination and takes the next mapping. */
static void lockstep_windows_never_overlap(void **state) {
  (void)state;
  np_nat_model self = model(true, 5000, 1, 0), peer = model(true, 30000, 1, 3);
  uint16_t prev[W], cur[W];
  int np = np__predict_round(NP_PREDICT_LOCKSTEP, &self, &peer, true, 1, prev, W);
  for (int r = 2; r <= 25; r++) {
    int nc = np__predict_round(NP_PREDICT_LOCKSTEP, &self, &peer, true, r, cur, W);
    assert_int_equal(nc, W);
    for (int i = 0; i < nc; i++)
      for (int j = 0; j < np; j++)
        assert_true(cur[i] > prev[j]);
    memcpy(prev, cur, sizeof cur);
    np = nc;
  }
}

static void lockstep_simulation(void **state) {
  (void)state;
  static const sim_side cfg[][2] = {
      {{40000, 1, 3, 0}, {50000, 2, 2, 0}},
      {{20000, -1, 2, 0}, {30000, 1, 3, 0}},
      {{61000, 4, 1, 0}, {10000, -3, 4, 0}},
  };
  for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
    sim_side a = cfg[c][0], b = cfg[c][1];
    /* exact estimates: round 1 pairs every k with the same k */
    np_nat_model est_a = model(true, a.base, a.delta, a.sent);
    np_nat_model est_b = model(true, b.base, b.delta, b.sent);
    uint16_t ta[W], tb[W];
    np__predict_round(NP_PREDICT_LOCKSTEP, &est_a, &est_b, false, 1, ta, W);
    np__predict_round(NP_PREDICT_LOCKSTEP, &est_b, &est_a, true, 1, tb, W);
    for (int k = 1; k <= W; k++) {
      assert_int_equal(ta[k - 1], sim_alloc(&b, 1, k));
      assert_int_equal(tb[k - 1], sim_alloc(&a, 1, k));
    }
    /* errors summing to e are caught in exactly the round whose shift is e */
    for (int ea = -2; ea <= 2; ea++) {
      for (int eb = -2; eb <= 2; eb++) {
        int e = ea + eb;
        if (e < -2 || e > 2)
          continue;
        a.err = ea;
        b.err = eb;
        for (int r = 1; r <= 5; r++)
          assert_int_equal(sim_round_matches(&a, &b, r), np__predict_lockstep_shift(r) == e);
      }
    }
  }
}

/* Deterministic byte source: an LCG, optionally forced into low ports. */
typedef struct fake_rng {
  uint32_t state;
  bool zeros;
  int calls;
} fake_rng;

static void fake_random(void *user, uint8_t *buf, size_t len) {
  fake_rng *r = user;
  r->calls++;
  for (size_t i = 0; i < len; i++) {
    r->state = r->state * 1103515245u + 12345u;
    buf[i] = r->zeros ? 0 : (uint8_t)(r->state >> 16);
  }
}

static void spray_distinct_in_range_avoiding(void **state) {
  (void)state;
  fake_rng rng = {.state = 7};
  uint16_t first[200], second[200];
  assert_int_equal(np__predict_spray(fake_random, &rng, NULL, 0, first, 200), 200);
  assert_int_equal(np__predict_spray(fake_random, &rng, first, 200, second, 200), 200);
  for (int i = 0; i < 200; i++) {
    assert_true(first[i] >= 1024 && second[i] >= 1024);
    for (int j = 0; j < 200; j++) {
      assert_int_not_equal(second[i], first[j]);
      if (j < i) {
        assert_int_not_equal(first[i], first[j]);
        assert_int_not_equal(second[i], second[j]);
      }
    }
  }
  /* same seed, same ports: both runs of the engine are reproducible */
  fake_rng again = {.state = 7};
  uint16_t third[200];
  assert_int_equal(np__predict_spray(fake_random, &again, NULL, 0, third, 200), 200);
  assert_memory_equal(first, third, sizeof first);
}

static void spray_terminates_when_range_runs_out(void **state) {
  (void)state;
  static uint16_t avoid[65536 - 1024];
  int n_avoid = 0;
  for (int p = 1024; p <= 65535; p++)
    if (p != 2000 && p != 40000 && p != 65535)
      avoid[n_avoid++] = (uint16_t)p;
  fake_rng rng = {.state = 1};
  uint16_t out[10];
  int n = np__predict_spray(fake_random, &rng, avoid, n_avoid, out, 10);
  assert_int_equal(n, 3);
  bool seen2000 = false, seen40000 = false, seen65535 = false;
  for (int i = 0; i < n; i++) {
    seen2000 |= out[i] == 2000;
    seen40000 |= out[i] == 40000;
    seen65535 |= out[i] == 65535;
  }
  assert_true(seen2000 && seen40000 && seen65535);
  /* an RNG stuck on low ports still yields distinct valid ports */
  fake_rng stuck = {.zeros = true};
  n = np__predict_spray(fake_random, &stuck, NULL, 0, out, 10);
  assert_int_equal(n, 10);
  for (int i = 0; i < n; i++) {
    assert_true(out[i] >= 1024);
    for (int j = 0; j < i; j++)
      assert_int_not_equal(out[i], out[j]);
  }
}

static void birthday_odds_sane(void **state) {
  (void)state;
  assert_true(np__predict_birthday_odds(256, 512, 64512) > 0.85);
  assert_true(np__predict_birthday_odds(256, 512, 64512) < 0.9);
  assert_true(np__predict_birthday_odds(16, 16, 64512) < 0.01);
  assert_true(np__predict_birthday_odds(0, 512, 64512) == 0.0);
  assert_true(np__predict_birthday_odds(256, 0, 64512) == 0.0);
  assert_true(np__predict_birthday_odds(10, 10, 10) == 1.0);
  /* one socket, one probe: exactly 1/range */
  double p = np__predict_birthday_odds(1, 1, 1000);
  assert_true(p > 0.000999 && p < 0.001001);
  assert_true(np__predict_birthday_odds(256, 1024, 64512) >
              np__predict_birthday_odds(256, 512, 64512));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(kind_classifies_delta),
      cmocka_unit_test(plan_table_and_symmetry),
      cmocka_unit_test(sweep_first_round_order),
      cmocka_unit_test(sweep_windows_double_and_cap),
      cmocka_unit_test(sweep_negative_delta),
      cmocka_unit_test(sweep_wraps_around_the_ring),
      cmocka_unit_test(classify_any_stride),
      cmocka_unit_test(classify_tolerates_noise),
      cmocka_unit_test(classify_random_cone_and_few_views),
      cmocka_unit_test(rounds_follow_large_strides),
      cmocka_unit_test(spacers_avoid_windows),
      cmocka_unit_test(hold_targets_peer_port),
      cmocka_unit_test(lockstep_shift_sequence),
      cmocka_unit_test(lockstep_windows_never_overlap),
      cmocka_unit_test(lockstep_caller_and_callee),
      cmocka_unit_test(lockstep_simulation),
      cmocka_unit_test(spray_distinct_in_range_avoiding),
      cmocka_unit_test(spray_terminates_when_range_runs_out),
      cmocka_unit_test(birthday_odds_sane),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
