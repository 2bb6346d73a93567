/* Progress display for `natpunch send` / `receive`: a redrawn one-line bar
 * on a terminal, plain lines otherwise, JSON event lines with --json. The
 * output FILE and the time are passed in, so it is tested without a
 * terminal or a clock. */
#ifndef NP_CLI_PROGRESS_H
#define NP_CLI_PROGRESS_H

#include "transfer.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef enum np_progress_mode {
  NP_PROGRESS_TTY = 0,   /* "\r" + bar + "\033[K", redrawn at most every NP_PROGRESS_TTY_MS */
  NP_PROGRESS_PLAIN = 1, /* a line at each file start and end and at every 10 % */
  /* {"event":"progress",...} at most every NP_PROGRESS_JSON_MS; {"event":"file",...} at the end */
  NP_PROGRESS_JSON = 2,
} np_progress_mode;

#define NP_PROGRESS_TTY_MS 100
#define NP_PROGRESS_JSON_MS 1000
/* The rate is smoothed over about this long (an exponential average). */
#define NP_PROGRESS_SMOOTH_MS 2000

typedef struct np_progress np_progress;

/* The mode for out: JSON when json, a bar when out is a terminal, plain
 * lines otherwise. */
np_progress_mode np_progress_pick(FILE *out, bool json);

/* A display writing to out (not closed by np_progress_free). Returns NULL
 * when out of memory. */
np_progress *np_progress_new(FILE *out, np_progress_mode mode);

/* Releases p; NULL is fine. */
void np_progress_free(np_progress *p);

/* A file's bytes begin to flow: total is its size, offset where a resume
 * starts (0 for a fresh transfer; it is not counted in the rate). */
void np_progress_start(np_progress *p, const char *name, uint64_t total, uint64_t offset,
                       int64_t now_ms);

/* bytes (offset included) of the current file are done. Draws only when
 * the mode's interval has passed (or, in plain mode, a 10 % step was
 * crossed), so it may be called for every chunk. */
void np_progress_update(np_progress *p, uint64_t bytes, int64_t now_ms);

/* A file is finished: status is "ok", "resumed", "refused", "mismatch" or
 * "failed"; sha256 may be NULL; detail (may be NULL) is a sentence such as
 * a refusal's reason (JSON: "reason"). Also for a file that never started
 * (refused). In JSON, a file that started also gets "offset" (where its
 * data began: > 0 for a resume) and "elapsed_ms" (since its start). */
void np_progress_end(np_progress *p, const char *name, uint64_t size,
                     const uint8_t sha256[NP_XFER_SHA256_LEN], const char *status,
                     const char *detail, int64_t now_ms);

/* Feeds a transfer event (see np_xfer_event_cb) to p: START, PROGRESS and
 * END map onto the three calls above; OFFER is the caller's to show. */
void np_progress_xfer_event(np_progress *p, const np_xfer_event *ev, int64_t now_ms);

/* Shows what a peer offers before the user decides: in text modes a line
 * "PEER offers N file(s), SIZE:" and one indented "name (size)" line each
 * (a refused-by-name file marked "bad name"); in JSON one line
 * {"event":"offer","from":PEER,"files":[{"name":..,"size":..,"sha256":..},..]}.
 * A tty bar in progress is not expected here (offers come before data). */
void np_progress_offer(np_progress *p, const char *peer, const np_xfer *x);

/* The rate (bytes/s, smoothed) and the ETA (ms, -1 when unknown) of the
 * current file as the display last computed them. */
double np_progress_rate(const np_progress *p);
int64_t np_progress_eta_ms(const np_progress *p);

#endif
