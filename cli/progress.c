/* Progress display for send/receive: see progress.h. */
#include "progress.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BAR_WIDTH 24
/* A rate sample spans at least this long, so that chunks arriving in
 * bursts do not make the rate jump. */
#define SAMPLE_MS 100

struct np_progress {
  FILE *out;
  np_progress_mode mode;
  char name[NP_XFER_MAX_NAME + 1];
  bool active;
  uint64_t total, offset, bytes;
  int64_t start_ms;
  int64_t sample_ms; /* when the last rate sample was taken */
  uint64_t sample_bytes;
  double rate;      /* bytes/s, smoothed; 0 until the first sample */
  int64_t drawn_ms; /* when the bar (or a JSON line) was last written */
  int last_tenth;   /* plain mode: the last 10 % step printed */
  bool drawn;       /* tty: a bar is on the line */
};

np_progress_mode np_progress_pick(FILE *out, bool json) {
  if (json)
    return NP_PROGRESS_JSON;
  return isatty(fileno(out)) ? NP_PROGRESS_TTY : NP_PROGRESS_PLAIN;
}

np_progress *np_progress_new(FILE *out, np_progress_mode mode) {
  np_progress *p = calloc(1, sizeof *p);
  if (!p)
    return NULL;
  p->out = out;
  p->mode = mode;
  return p;
}

void np_progress_free(np_progress *p) {
  free(p);
}

double np_progress_rate(const np_progress *p) {
  return p->rate;
}

int64_t np_progress_eta_ms(const np_progress *p) {
  if (p->rate <= 0 || p->bytes > p->total)
    return -1;
  return (int64_t)((double)(p->total - p->bytes) * 1000.0 / p->rate);
}

/* "12.3 MiB": binary units with one decimal, bytes as they are. */
static void human(char *buf, size_t len, double v) {
  static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  size_t u = 0;
  while (v >= 1024 && u + 1 < sizeof units / sizeof *units) {
    v /= 1024;
    u++;
  }
  if (u == 0)
    snprintf(buf, len, "%.0f B", v);
  else
    snprintf(buf, len, "%.1f %s", v, units[u]);
}

static void duration(char *buf, size_t len, int64_t ms) {
  if (ms < 0) {
    snprintf(buf, len, "--:--");
    return;
  }
  int64_t s = (ms + 999) / 1000;
  if (s >= 3600)
    snprintf(buf, len, "%lld:%02lld:%02lld", (long long)(s / 3600), (long long)(s / 60 % 60),
             (long long)(s % 60));
  else
    snprintf(buf, len, "%lld:%02lld", (long long)(s / 60), (long long)(s % 60));
}

/* Writes s as a JSON string (quotes included). */
static void json_str(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if (*c == '"' || *c == '\\')
      fprintf(out, "\\%c", *c);
    else if (*c < 0x20 || *c == 0x7f)
      fprintf(out, "\\u%04x", *c);
    else
      fputc(*c, out);
  }
  fputc('"', out);
}

static int percent(const np_progress *p) {
  if (p->total == 0)
    return 100;
  return (int)((double)p->bytes * 100.0 / (double)p->total);
}

static void draw_bar(np_progress *p) {
  char done[32], total[32], rate[32], eta[32], bar[BAR_WIDTH + 1];
  int fill = p->total ? (int)((double)p->bytes * BAR_WIDTH / (double)p->total) : BAR_WIDTH;
  for (int i = 0; i < BAR_WIDTH; i++)
    bar[i] = i < fill ? '#' : '.';
  bar[BAR_WIDTH] = '\0';
  human(done, sizeof done, (double)p->bytes);
  human(total, sizeof total, (double)p->total);
  human(rate, sizeof rate, p->rate);
  duration(eta, sizeof eta, np_progress_eta_ms(p));
  fprintf(p->out, "\r%-24.24s %3d%% [%s] %s / %s  %s/s  ETA %s\033[K", p->name, percent(p), bar,
          done, total, rate, eta);
  fflush(p->out);
  p->drawn = true;
}

static void json_progress(np_progress *p) {
  fputs("{\"event\":\"progress\",\"file\":", p->out);
  json_str(p->out, p->name);
  fprintf(p->out, ",\"bytes\":%llu,\"total\":%llu,\"rate\":%.0f}\n", (unsigned long long)p->bytes,
          (unsigned long long)p->total, p->rate);
  fflush(p->out);
}

void np_progress_start(np_progress *p, const char *name, uint64_t total, uint64_t offset,
                       int64_t now_ms) {
  snprintf(p->name, sizeof p->name, "%s", name);
  p->active = true;
  p->total = total;
  p->offset = p->bytes = p->sample_bytes = offset;
  p->start_ms = p->sample_ms = now_ms;
  p->rate = 0;
  p->drawn_ms = now_ms;
  p->last_tenth = total ? (int)(offset * 10 / total) : 10;
  p->drawn = false;
  char t[32], o[32];
  human(t, sizeof t, (double)total);
  switch (p->mode) {
  case NP_PROGRESS_TTY:
    draw_bar(p);
    break;
  case NP_PROGRESS_PLAIN:
    if (offset) {
      human(o, sizeof o, (double)offset);
      fprintf(p->out, "%s: %s, resuming at %s\n", p->name, t, o);
    } else {
      fprintf(p->out, "%s: %s, starting\n", p->name, t);
    }
    fflush(p->out);
    break;
  case NP_PROGRESS_JSON:
    json_progress(p);
    break;
  }
}

/* Folds the bytes since the last sample into the smoothed rate once a
 * sample's worth of time has passed. */
static void sample(np_progress *p, int64_t now_ms) {
  int64_t dt = now_ms - p->sample_ms;
  if (dt < SAMPLE_MS)
    return;
  double inst = (double)(p->bytes - p->sample_bytes) * 1000.0 / (double)dt;
  if (p->rate <= 0) {
    p->rate = inst;
  } else {
    /* dt/(dt+T) approximates 1-exp(-dt/T) without libm. */
    double a = (double)dt / (double)(dt + NP_PROGRESS_SMOOTH_MS);
    p->rate += a * (inst - p->rate);
  }
  p->sample_ms = now_ms;
  p->sample_bytes = p->bytes;
}

void np_progress_update(np_progress *p, uint64_t bytes, int64_t now_ms) {
  if (!p->active || bytes < p->bytes)
    return;
  p->bytes = bytes > p->total ? p->total : bytes;
  sample(p, now_ms);
  switch (p->mode) {
  case NP_PROGRESS_TTY:
    if (now_ms - p->drawn_ms >= NP_PROGRESS_TTY_MS) {
      p->drawn_ms = now_ms;
      draw_bar(p);
    }
    break;
  case NP_PROGRESS_PLAIN: {
    int tenth = p->total ? (int)(p->bytes * 10 / p->total) : 10;
    /* 100 % is left to the end line. */
    if (tenth > p->last_tenth && tenth < 10) {
      p->last_tenth = tenth;
      char d[32], t[32], r[32];
      human(d, sizeof d, (double)p->bytes);
      human(t, sizeof t, (double)p->total);
      human(r, sizeof r, p->rate);
      fprintf(p->out, "%s: %d%% (%s of %s, %s/s)\n", p->name, tenth * 10, d, t, r);
      fflush(p->out);
    }
    break;
  }
  case NP_PROGRESS_JSON:
    if (now_ms - p->drawn_ms >= NP_PROGRESS_JSON_MS) {
      p->drawn_ms = now_ms;
      json_progress(p);
    }
    break;
  }
}

void np_progress_end(np_progress *p, const char *name, uint64_t size,
                     const uint8_t sha256[NP_XFER_SHA256_LEN], const char *status,
                     const char *detail, int64_t now_ms) {
  char hex[2 * NP_XFER_SHA256_LEN + 1] = "";
  if (sha256)
    np_xfer_hex(sha256, hex);
  bool was_active = p->active && strcmp(p->name, name) == 0;
  if (was_active)
    np_progress_update(p, p->bytes, now_ms);
  p->active = false;
  if (p->mode == NP_PROGRESS_JSON) {
    fputs("{\"event\":\"file\",\"name\":", p->out);
    json_str(p->out, name);
    fprintf(p->out, ",\"size\":%llu,", (unsigned long long)size);
    /* Where the data started (> 0: resumed) and how long it took. */
    if (was_active)
      fprintf(p->out, "\"offset\":%llu,\"elapsed_ms\":%lld,", (unsigned long long)p->offset,
              (long long)(now_ms - p->start_ms));
    fputs("\"sha256\":", p->out);
    if (sha256)
      json_str(p->out, hex);
    else
      fputs("null", p->out);
    fputs(",\"status\":", p->out);
    json_str(p->out, status);
    if (detail) {
      fputs(",\"reason\":", p->out);
      json_str(p->out, detail);
    }
    fputs("}\n", p->out);
    fflush(p->out);
    return;
  }
  if (p->mode == NP_PROGRESS_TTY && p->drawn) {
    /* The result replaces the bar on its line. */
    fputs("\r\033[K", p->out);
    p->drawn = false;
  }
  char s[32];
  human(s, sizeof s, (double)size);
  fprintf(p->out, "%s: %s, %s", name, status, s);
  if (was_active && now_ms > p->start_ms) {
    char r[32], d[32];
    int64_t ms = now_ms - p->start_ms;
    human(r, sizeof r, (double)(p->bytes - p->offset) * 1000.0 / (double)ms);
    duration(d, sizeof d, ms);
    fprintf(p->out, " in %s (%s/s)", d, r);
  }
  if (sha256)
    fprintf(p->out, ", sha256 %s", hex);
  if (detail)
    fprintf(p->out, ": %s", detail);
  fputc('\n', p->out);
  fflush(p->out);
}

void np_progress_xfer_event(np_progress *p, const np_xfer_event *ev, int64_t now_ms) {
  const np_xfer_file *f = ev->file;
  if (!f)
    return;
  switch (ev->kind) {
  case NP_XFER_EV_START:
    np_progress_start(p, f->name, f->size, f->offset, now_ms);
    break;
  case NP_XFER_EV_PROGRESS:
    np_progress_update(p, f->done, now_ms);
    break;
  case NP_XFER_EV_END: {
    const char *status = "failed";
    const char *detail = NULL;
    switch (f->status) {
    case NP_XFER_FILE_OK:
      status = f->offset ? "resumed" : "ok";
      break;
    case NP_XFER_FILE_REFUSED:
      status = "refused";
      detail = np_xfer_refusal_str(f->refusal);
      break;
    case NP_XFER_FILE_MISMATCH:
      status = "mismatch";
      detail = "the checksum differs; nothing was kept";
      break;
    default:
      detail = ev->reason;
      break;
    }
    np_progress_end(p, f->name, f->size, f->sha256, status, detail, now_ms);
    break;
  }
  case NP_XFER_EV_OFFER:
    break;
  }
}

void np_progress_offer(np_progress *p, const char *peer, const np_xfer *x) {
  size_t n = np_xfer_count(x);
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++)
    total += np_xfer_file_at(x, i)->size;
  char hex[2 * NP_XFER_SHA256_LEN + 1], sz[32];
  if (p->mode == NP_PROGRESS_JSON) {
    fputs("{\"event\":\"offer\",\"from\":", p->out);
    json_str(p->out, peer);
    fputs(",\"files\":[", p->out);
    for (size_t i = 0; i < n; i++) {
      const np_xfer_file *f = np_xfer_file_at(x, i);
      np_xfer_hex(f->sha256, hex);
      fputs(i ? ",{\"name\":" : "{\"name\":", p->out);
      json_str(p->out, f->name);
      fprintf(p->out, ",\"size\":%llu,\"sha256\":\"%s\"}", (unsigned long long)f->size, hex);
    }
    fputs("]}\n", p->out);
    fflush(p->out);
    return;
  }
  human(sz, sizeof sz, (double)total);
  fprintf(p->out, "%s offers %zu file%s, %s:\n", peer, n, n == 1 ? "" : "s", sz);
  for (size_t i = 0; i < n; i++) {
    const np_xfer_file *f = np_xfer_file_at(x, i);
    human(sz, sizeof sz, (double)f->size);
    fprintf(p->out, "  %s (%s)%s\n", f->name, sz,
            f->refusal == NP_XFER_REFUSE_BAD_NAME ? " - bad name, will be refused" : "");
  }
  fflush(p->out);
}
