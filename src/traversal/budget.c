/* Probe budget over time (see budget.h). */
#include "traversal/budget.h"

#include <string.h>

static void refill(struct np_budget_bucket *k, int cap, int64_t now) {
  int64_t full = (int64_t)cap * 1000;
  if (now > k->at) {
    /* cap probes per window, in thousandths: cap * 1000 * dt / window */
    int64_t dt = now - k->at;
    if (dt > NP_BUDGET_WINDOW_MS)
      dt = NP_BUDGET_WINDOW_MS; /* avoids overflow; a window refills all */
    k->tokens_milli += (int64_t)cap * 1000 * dt / NP_BUDGET_WINDOW_MS;
    k->at = now;
  }
  if (k->tokens_milli > full)
    k->tokens_milli = full;
}

void np__budget_init(np_budget *b, int per_peer, int total, int64_t now) {
  memset(b, 0, sizeof *b);
  b->per_peer = per_peer > 0 ? per_peer : NP_BUDGET_PER_PEER;
  b->total = total > 0 ? total : NP_BUDGET_TOTAL;
  b->all.tokens_milli = (int64_t)b->total * 1000;
  b->all.at = now;
}

/* The entry of id, made (full) when new; NULL only for a NULL id. */
static struct np_budget_peer *peer_of(np_budget *b, const uint8_t *id, int64_t now) {
  struct np_budget_peer *free_e = NULL, *fullest = NULL;
  for (int i = 0; i < NP_BUDGET_PEERS; i++) {
    struct np_budget_peer *e = &b->peers[i];
    if (!e->used) {
      if (!free_e)
        free_e = e;
      continue;
    }
    if (memcmp(e->id, id, NP_BUDGET_ID_LEN) == 0) {
      refill(&e->b, b->per_peer, now);
      return e;
    }
    refill(&e->b, b->per_peer, now);
    if (!fullest || e->b.tokens_milli > fullest->b.tokens_milli)
      fullest = e;
  }
  struct np_budget_peer *e = free_e ? free_e : fullest;
  memcpy(e->id, id, NP_BUDGET_ID_LEN);
  e->used = true;
  e->b.tokens_milli = (int64_t)b->per_peer * 1000;
  e->b.at = now;
  return e;
}

int np__budget_take(np_budget *b, const uint8_t id[NP_BUDGET_ID_LEN], int want, int64_t now) {
  if (!b || !id || want <= 0)
    return 0;
  struct np_budget_peer *e = peer_of(b, id, now);
  refill(&b->all, b->total, now);
  int64_t left = e->b.tokens_milli < b->all.tokens_milli ? e->b.tokens_milli : b->all.tokens_milli;
  int64_t grant = left / 1000 < want ? left / 1000 : want;
  int min = want < NP_BUDGET_MIN_SESSION ? want : NP_BUDGET_MIN_SESSION;
  if (grant < min)
    return 0;
  e->b.tokens_milli -= grant * 1000;
  b->all.tokens_milli -= grant * 1000;
  return (int)grant;
}

void np__budget_refund(np_budget *b, const uint8_t id[NP_BUDGET_ID_LEN], int unused, int64_t now) {
  if (!b || !id || unused <= 0)
    return;
  struct np_budget_peer *e = peer_of(b, id, now);
  e->b.tokens_milli += (int64_t)unused * 1000;
  refill(&e->b, b->per_peer, now);
  b->all.tokens_milli += (int64_t)unused * 1000;
  refill(&b->all, b->total, now);
}

int64_t np__budget_retry_ms(np_budget *b, const uint8_t id[NP_BUDGET_ID_LEN], int64_t now) {
  if (!b || !id)
    return 0;
  struct np_budget_peer *e = peer_of(b, id, now);
  refill(&b->all, b->total, now);
  int64_t need = (int64_t)NP_BUDGET_MIN_SESSION * 1000;
  int64_t worst = 0;
  const struct np_budget_bucket *ks[2] = {&e->b, &b->all};
  const int caps[2] = {b->per_peer, b->total};
  for (int i = 0; i < 2; i++)
    if (ks[i]->tokens_milli < need) {
      /* refill rate: cap * 1000 per window */
      int64_t ms =
          ((need - ks[i]->tokens_milli) * NP_BUDGET_WINDOW_MS + (int64_t)caps[i] * 1000 - 1) /
          ((int64_t)caps[i] * 1000);
      if (ms > worst)
        worst = ms;
    }
  return worst;
}
