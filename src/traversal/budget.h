/*
 * A listener's probe budget over time. Every call a stranger makes costs
 * the listener probes (up to a session's max_probes, 6000 by default), so
 * a caller that calls again and again, or many callers at once, would make
 * it a steady sender. This bounds what all sessions together may send in a
 * sliding minute, per peer ID and in total: two token buckets, refilled
 * continuously (the full amount per 60 s). A session takes its allowance
 * when the call arrives (np__budget_take: it may get less than it wants,
 * then it runs smaller, or nothing, then the call is declined) and gives
 * back what it did not send when it ends (np__budget_refund).
 *
 * Pure: no clock of its own, no allocation; time is passed in (ms, any
 * monotonic origin). A table of NP_BUDGET_PEERS peers: when it is full the
 * entry with the fullest bucket (the least recent spender) is reused, so
 * a flood of fresh IDs is bounded by the total, not by the table.
 */
#ifndef NP_BUDGET_H
#define NP_BUDGET_H

#include <stdbool.h>
#include <stdint.h>

#define NP_BUDGET_PER_PEER 12000  /* probes per peer ID per minute: two full sessions */
#define NP_BUDGET_TOTAL 60000     /* probes per minute for all peers together */
#define NP_BUDGET_MIN_SESSION 300 /* an allowance below this is refused: too small to connect */
#define NP_BUDGET_PEERS 256
#define NP_BUDGET_WINDOW_MS 60000
#define NP_BUDGET_ID_LEN 32

struct np_budget_bucket {
  int64_t tokens_milli; /* thousandths of a probe, so slow refills are not lost */
  int64_t at;           /* last refill */
};

struct np_budget_peer {
  uint8_t id[NP_BUDGET_ID_LEN];
  bool used;
  struct np_budget_bucket b;
};

typedef struct np_budget {
  int per_peer, total; /* probes per NP_BUDGET_WINDOW_MS */
  struct np_budget_bucket all;
  struct np_budget_peer peers[NP_BUDGET_PEERS];
} np_budget;

/* Starts full at 'now'. per_peer and total <= 0 take the defaults above. */
void np__budget_init(np_budget *b, int per_peer, int total, int64_t now);

/* A call from 'id' wants up to 'want' probes: returns the allowance
 * granted (taken from both buckets), at most want; 0 when fewer than
 * NP_BUDGET_MIN_SESSION (and want) are left, and then nothing is taken. */
int np__budget_take(np_budget *b, const uint8_t id[NP_BUDGET_ID_LEN], int want, int64_t now);

/* The session of 'id' ended having left 'unused' probes of its allowance
 * unsent: they go back to both buckets (never above full). */
void np__budget_refund(np_budget *b, const uint8_t id[NP_BUDGET_ID_LEN], int unused, int64_t now);

/* Milliseconds until 'id' could be granted NP_BUDGET_MIN_SESSION probes
 * (0: now): for the message of a declined call. */
int64_t np__budget_retry_ms(np_budget *b, const uint8_t id[NP_BUDGET_ID_LEN], int64_t now);

#endif
