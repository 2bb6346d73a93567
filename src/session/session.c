/*
 * The QUIC session: an ngtcp2 0.12 connection driven sans-IO, with the
 * stream and datagram buffers ngtcp2 leaves to the application.
 *
 * ngtcp2 does the protocol (loss recovery, congestion and flow control,
 * path validation); this file owns the bytes: what a stream has been given
 * but the peer has not acknowledged (ngtcp2 keeps pointers into it until
 * then, so it lives in fixed chunks that never move), what arrived but the
 * application has not read (flow-control credit is returned only when it
 * is read, so a stalled stream stalls only itself), and the datagram
 * queues. It also turns ngtcp2's error codes and CONNECTION_CLOSE frames
 * into one close reason the owner can show.
 */
#include "session/session.h"

#include "session/tls.h"
#include "util/log.h"

#include <gnutls/crypto.h>
#include <stdarg.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Chunks waiting in the pool are poisoned under ASan, so that a pointer
 * ngtcp2 (or we) kept into freed stream data still faults as it would
 * after free(). */
#if defined(__SANITIZE_ADDRESS__)
#define NP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NP_ASAN 1
#endif
#endif
#ifdef NP_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* ---- limits ------------------------------------------------------------ */

#define DEFAULT_IDLE_MS 20000
#define DEFAULT_KEEPALIVE_MS 5000
#define MIN_UDP_PAYLOAD 1200 /* RFC 9000 §14: the smallest allowed maximum */
#define MAX_UDP_PAYLOAD 65527
/* Path MTU discovery's ceiling when the owner chose no size: the UDP
 * payload of a 1500-byte IPv6 packet (IPv4's would be 1472), so that it
 * holds on Ethernet-sized paths of either family. */
#define PMTUD_CEILING 1452
#define DEFAULT_STREAM_BUFFER (2u << 20)
/* Receive windows: large enough for bulk on a long fat path (4 MiB in
 * flight per stream is 40 MB/s at 100 ms RTT), bounded so that a peer can
 * make us buffer at most MAX_DATA of unread data in all. No auto-tuning:
 * the windows are the memory bound. */
#define STREAM_WINDOW (4u << 20)
#define MAX_DATA (16u << 20)
#define MAX_STREAMS_BIDI 100
/* Connection IDs the peer may keep for us: spares are what migration and
 * NAT rebinding consume. */
#define ACTIVE_CID_LIMIT 4
#define SCID_LEN 16
#define DGRAM_QUEUE 64
/* Short header (1) + DCID (up to 20) + packet number (up to 4) + AEAD tag
 * (16) + DATAGRAM frame type and length (3), rounded up. */
#define DGRAM_OVERHEAD 48
#define CHUNK_SIZE 16384
#define SEND_VECS 4
/* Spare chunks a session keeps for reuse: 1 MiB. */
#define CHUNK_POOL 64
/* Closing and draining last 3 PTO (RFC 9000 §10.2). */
#define CLOSE_PTO_FACTOR 3

#define NS_PER_MS 1000000ull
/* The most one burst may hold (burst_limit): 4 MB per ms is 4 GB/s. */
#define BURST_MAX (4u << 20)

/* ---- byte queues ------------------------------------------------------- */

/* A FIFO of bytes in fixed chunks: appending never moves stored bytes, which
 * ngtcp2 requires of stream data until it is acknowledged. */
typedef struct chunk {
  struct chunk *next;
  size_t len; /* bytes used in data */
  uint8_t data[CHUNK_SIZE];
} chunk;

/* Chunks given back by the session's queues, reused before malloc: a bulk
 * stream fills and drains megabytes a second, and malloc/free of 16 KiB
 * blocks hands pages back to the kernel and faults them in again (10 % of
 * a receiver's time). Bounded so that an idle session keeps little. */
typedef struct chunk_pool {
  chunk *free;
  size_t n;
} chunk_pool;

static chunk *pool_get(chunk_pool *p) {
  chunk *c = p->free;
  if (c) {
    UNPOISON(c->data, sizeof c->data);
    p->free = c->next;
    p->n--;
  } else if (!(c = malloc(sizeof *c))) {
    return NULL;
  }
  c->next = NULL;
  c->len = 0;
  return c;
}

static void pool_put(chunk_pool *p, chunk *c) {
  if (p->n >= CHUNK_POOL) {
    free(c);
    return;
  }
  c->next = p->free;
  p->free = c;
  p->n++;
  POISON(c->data, sizeof c->data);
}

static void pool_drain(chunk_pool *p) {
  for (chunk *c = p->free, *next; c; c = next) {
    next = c->next;
    UNPOISON(c->data, sizeof c->data);
    free(c);
  }
  p->free = NULL;
  p->n = 0;
}

typedef struct byteq {
  chunk *head, *tail;
  size_t head_off; /* bytes of head already consumed */
  size_t len;      /* bytes held */
  /* Where q_vecs last stopped, so that sending (which asks for the bytes
   * after what was sent, packet after packet) does not walk megabytes of
   * unacknowledged chunks from the head each time: the chunk holding the
   * byte `cur_skip` bytes past the front, at cur_off in it. NULL when
   * unknown; q_consume keeps cur_skip relative to the new front and drops
   * the cursor with its chunk. */
  chunk *cur;
  size_t cur_off, cur_skip;
} byteq;

static size_t q_append(byteq *q, chunk_pool *p, const uint8_t *buf, size_t n) {
  size_t done = 0;
  while (done < n) {
    if (!q->tail || q->tail->len == CHUNK_SIZE) {
      chunk *c = pool_get(p);
      if (!c)
        break;
      if (q->tail)
        q->tail->next = c;
      else
        q->head = c;
      q->tail = c;
    }
    size_t k = CHUNK_SIZE - q->tail->len;
    if (k > n - done)
      k = n - done;
    memcpy(q->tail->data + q->tail->len, buf + done, k);
    q->tail->len += k;
    done += k;
  }
  q->len += done;
  return done;
}

static void q_consume(byteq *q, chunk_pool *p, size_t n) {
  if (n > q->len)
    n = q->len;
  q->len -= n;
  if (q->cur) {
    if (q->cur_skip >= n)
      q->cur_skip -= n;
    else
      q->cur = NULL;
  }
  while (n > 0 && q->head) {
    size_t avail = q->head->len - q->head_off;
    if (n < avail) {
      q->head_off += n;
      return;
    }
    /* The head chunk is used up, even if it is the tail: a later append
     * starts a new chunk rather than reusing memory ngtcp2 may have seen. */
    n -= avail;
    chunk *c = q->head;
    q->head = c->next;
    q->head_off = 0;
    if (q->cur == c)
      q->cur = NULL;
    pool_put(p, c);
    if (!q->head)
      q->tail = NULL;
  }
}

/* Vectors over the bytes from `skip` past the front, at most max of them.
 * Starts from the cursor when it is at or before skip, and leaves it at
 * skip. */
static size_t q_vecs(byteq *q, size_t skip, ngtcp2_vec *v, size_t max) {
  chunk *c = q->head;
  size_t off = q->head_off, pos = 0;
  if (q->cur && q->cur_skip <= skip) {
    c = q->cur;
    off = q->cur_off;
    pos = q->cur_skip;
  }
  if (!c)
    return 0;
  size_t r = skip - pos;
  /* A position at the end of the last chunk stays there: more may be
   * appended to it, or a new chunk follows, which the next walk reaches. */
  while (r >= c->len - off && c->next) {
    r -= c->len - off;
    c = c->next;
    off = 0;
  }
  if (r > c->len - off)
    return 0; /* beyond what is queued */
  off += r;
  q->cur = c;
  q->cur_off = off;
  q->cur_skip = skip;
  size_t n = 0;
  for (; c && n < max; c = c->next, off = 0) {
    if (off == c->len)
      continue;
    v[n].base = c->data + off;
    v[n].len = c->len - off;
    n++;
  }
  return n;
}

static size_t q_read(byteq *q, chunk_pool *p, uint8_t *buf, size_t cap) {
  size_t done = 0;
  while (done < cap && q->len > 0) {
    chunk *c = q->head;
    size_t k = c->len - q->head_off;
    if (k > cap - done)
      k = cap - done;
    memcpy(buf + done, c->data + q->head_off, k);
    done += k;
    q_consume(q, p, k);
  }
  return done;
}

/* Empties the queue; its chunks go back to the pool (only once nothing
 * points into them: callers free a stream's tx queue when ngtcp2 is done
 * with the stream). */
static void q_free(byteq *q, chunk_pool *p) {
  for (chunk *c = q->head, *next; c; c = next) {
    next = c->next;
    pool_put(p, c);
  }
  memset(q, 0, sizeof *q);
}

/* ---- streams and datagrams ------------------------------------------------ */

typedef struct stream {
  int64_t id;
  bool accepted;  /* ours, or handed out by stream_accept */
  bool live;      /* ngtcp2 still has it (stream_close not yet called) */
  bool app_reset; /* we reset it: forget it as soon as ngtcp2 lets go */
  /* Sending: tx holds [tx_acked, tx_acked + tx.len); [tx_acked, tx_sent)
   * is with ngtcp2 (in flight or to be retransmitted). */
  byteq tx;
  uint64_t tx_acked, tx_sent;
  bool fin_wanted, fin_sent;
  bool blocked;   /* stream flow control; cleared when the peer extends it */
  bool stopped;   /* the peer sent STOP_SENDING (or reset by us) */
  unsigned tried; /* generation of the send call that last tried it */
  /* Receiving. */
  byteq rx;
  bool rx_fin, rx_fin_read, rx_reset;
} stream;

typedef struct dgram {
  size_t len;
  uint8_t data[];
} dgram;

typedef struct dgram_ring {
  dgram *v[DGRAM_QUEUE];
  size_t head, n;
} dgram_ring;

static bool ring_push(dgram_ring *r, dgram *d) {
  if (r->n == DGRAM_QUEUE)
    return false;
  r->v[(r->head + r->n) % DGRAM_QUEUE] = d;
  r->n++;
  return true;
}

static dgram *ring_peek(const dgram_ring *r) {
  return r->n ? r->v[r->head] : NULL;
}

static void ring_pop(dgram_ring *r) {
  if (!r->n)
    return;
  free(r->v[r->head]);
  r->v[r->head] = NULL;
  r->head = (r->head + 1) % DGRAM_QUEUE;
  r->n--;
}

/* ---- the session ---------------------------------------------------------- */

struct np__session {
  np_logger log;
  bool client;
  enum np__session_state state;
  np__tls *tls;
  ngtcp2_conn *conn;
  /* Kept for a server, which makes its ngtcp2_conn at the first Initial. */
  ngtcp2_settings settings;
  ngtcp2_transport_params params;
  np_addr local, remote;
  int64_t last_ms;
  int64_t deadline_ms; /* closing/draining end, or a server's wait for its client */
  uint64_t idle_ns, keepalive_ns;
  size_t max_udp, stream_buffer;
  size_t max_tx; /* largest packet ever written: max_udp, or PMTUD's ceiling */
  bool hs_done;
  bool got_crypto; /* a server's conn has decrypted CRYPTO data: it is real */
  bool creating;   /* inside ngtcp2_conn_*_new (see cb_rand) */
  bool was_up;     /* reached ESTABLISHED once: peer data may be handed out */
  /* A client's path before its last migration, to fall back to when the
   * new one fails validation (ngtcp2 0.12 does not for immediate
   * migration: it stays on the dead path). */
  bool has_prev, fallback_pending;
  np_addr prev_local, prev_remote;

  stream **streams;
  size_t n_streams, cap_streams;
  size_t rr;
  unsigned gen;
  size_t burst;     /* bytes written since the last pacing update */
  size_t burst_cap; /* burst_limit at the start of this burst */

  chunk_pool pool; /* spare stream chunks */
  dgram_ring dtx, drx;
  uint64_t dgram_id;

  /* Close: what we will send (pending) or have sent (close_pkt), and why. */
  bool close_pending, close_resend;
  ngtcp2_connection_close_error ccerr;
  uint8_t *close_pkt;
  size_t close_pkt_len;
  bool ended; /* info is final */
  struct np__session_close_info info;

  struct np__session_stats st;
  uint64_t lost_closed; /* loss counts of streams ngtcp2 already freed */
};

static ngtcp2_tstamp ts_of(np__session *s, int64_t now_ms) {
  /* ngtcp2 wants a clock that never goes backwards. */
  if (now_ms < s->last_ms)
    now_ms = s->last_ms;
  s->last_ms = now_ms;
  return (ngtcp2_tstamp)now_ms * NS_PER_MS;
}

static ngtcp2_addr addr_of(const np_addr *a) {
  ngtcp2_addr na = {(ngtcp2_sockaddr *)&a->u.sa, (ngtcp2_socklen)np_addr_len(a)};
  return na;
}

static void addr_from(np_addr *out, const ngtcp2_addr *a) {
  memset(out, 0, sizeof *out);
  if (a->addr && a->addrlen > 0 && (size_t)a->addrlen <= sizeof out->u)
    memcpy(&out->u, a->addr, (size_t)a->addrlen);
}

static void rand_bytes(uint8_t *p, size_t n) {
  /* gnutls_rnd fails only if the library is unusable; the values are then
   * still unique enough not to be a memory-safety issue. */
  if (gnutls_rnd(GNUTLS_RND_RANDOM, p, n) != 0)
    memset(p, 0x5a, n);
}

/* ---- stream table ---------------------------------------------------------- */

static stream *find_stream(const np__session *s, int64_t id) {
  for (size_t i = 0; i < s->n_streams; i++)
    if (s->streams[i]->id == id)
      return s->streams[i];
  return NULL;
}

static stream *add_stream(np__session *s, int64_t id, bool accepted) {
  if (s->n_streams == s->cap_streams) {
    size_t cap = s->cap_streams ? 2 * s->cap_streams : 8;
    stream **v = realloc(s->streams, cap * sizeof *v);
    if (!v)
      return NULL;
    s->streams = v;
    s->cap_streams = cap;
  }
  stream *st = calloc(1, sizeof *st);
  if (!st)
    return NULL;
  st->id = id;
  st->accepted = accepted;
  st->live = true;
  s->streams[s->n_streams++] = st;
  return st;
}

static void remove_stream(np__session *s, stream *st) {
  for (size_t i = 0; i < s->n_streams; i++) {
    if (s->streams[i] == st) {
      memmove(&s->streams[i], &s->streams[i + 1], (s->n_streams - i - 1) * sizeof st);
      s->n_streams--;
      break;
    }
  }
  q_free(&st->tx, &s->pool);
  q_free(&st->rx, &s->pool);
  free(st);
}

/* Forgets a stream once ngtcp2 is done with it and nothing is left for the
 * application to read. */
static void maybe_forget(np__session *s, stream *st) {
  if (st->live)
    return;
  if (st->app_reset || (st->accepted && st->rx.len == 0 && (st->rx_fin_read || st->rx_reset)))
    remove_stream(s, st);
}

/* Hands unread-but-discarded bytes' flow-control credit back to the peer. */
static void discard_rx(np__session *s, stream *st) {
  if (st->rx.len && s->conn)
    ngtcp2_conn_extend_max_offset(s->conn, st->rx.len);
  q_free(&st->rx, &s->pool);
}

/* ---- close bookkeeping ------------------------------------------------------ */

/* reason = text followed by arg (when not NULL), truncated. */
static void set_reason(np__session *s, const char *text, const char *arg) {
  snprintf(s->info.reason, sizeof s->info.reason, "%s%s", text, arg ? arg : "");
}

static void end_now(np__session *s, enum np__session_state state) {
  s->state = state;
  s->ended = true;
}

/* Queues our CONNECTION_CLOSE; info must already say why. */
static void queue_close(np__session *s) {
  if (!s->conn) {
    end_now(s, NP__SESSION_CLOSED);
    return;
  }
  s->close_pending = true;
  s->ended = true;
  s->state = NP__SESSION_CLOSING;
}

static void fail_local(np__session *s, int liberr) {
  s->info.by_peer = false;
  s->info.app = false;
  const char *txt = ngtcp2_strerror(liberr);
  if (liberr == NGTCP2_ERR_CRYPTO) {
    uint8_t alert = ngtcp2_conn_get_tls_alert(s->conn);
    s->info.err = NP_ERR_AUTH;
    s->info.code = NGTCP2_CRYPTO_ERROR | alert;
    enum np__tls_verdict v = np__tls_verdict(s->tls);
    if (v == NP__TLS_PEER_MISMATCH) {
      s->info.key_mismatch = true;
      set_reason(s, "peer key mismatch", NULL);
    } else if (v == NP__TLS_PEER_BAD) {
      set_reason(s, "peer presented no Ed25519 certificate", NULL);
    } else {
      char buf[48];
      snprintf(buf, sizeof buf, "TLS handshake failed (alert %u)", alert);
      set_reason(s, buf, NULL);
    }
    ngtcp2_connection_close_error_set_transport_error_tls_alert(
        &s->ccerr, alert, (const uint8_t *)s->info.reason, strlen(s->info.reason));
  } else {
    s->info.err = NP_ERR_PROTO;
    s->info.code = ngtcp2_err_infer_quic_transport_error_code(liberr);
    set_reason(s, "QUIC error: ", txt);
    ngtcp2_connection_close_error_set_transport_error_liberr(
        &s->ccerr, liberr, (const uint8_t *)s->info.reason, strlen(s->info.reason));
  }
  NP_LOGW(&s->log, "session: closing: %s", s->info.reason);
  queue_close(s);
}

/* The peer's CONNECTION_CLOSE, as ngtcp2 recorded it. */
static void peer_closed(np__session *s) {
  ngtcp2_connection_close_error ce;
  ngtcp2_conn_get_connection_close_error(s->conn, &ce);
  s->info.by_peer = true;
  s->info.code = ce.error_code;
  size_t n = ce.reasonlen < sizeof s->info.reason - 1 ? ce.reasonlen : sizeof s->info.reason - 1;
  if (ce.reason && n)
    memcpy(s->info.reason, ce.reason, n);
  s->info.reason[n] = '\0';
  /* The reason is the peer's text: keep it printable. */
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s->info.reason[i] < 0x20 || (unsigned char)s->info.reason[i] == 0x7f)
      s->info.reason[i] = '?';
  if (ce.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_APPLICATION) {
    s->info.app = true;
    s->info.err = ce.error_code == 0 ? 0 : NP_ERR_REFUSED;
  } else if ((ce.error_code & ~(uint64_t)0xff) == NGTCP2_CRYPTO_ERROR) {
    s->info.err = NP_ERR_AUTH;
    s->info.key_mismatch = strncmp(s->info.reason, "peer key mismatch", 17) == 0;
  } else {
    s->info.err = ce.error_code == NGTCP2_NO_ERROR ? 0 : NP_ERR_PROTO;
  }
  NP_LOGI(&s->log, "session: peer closed (%s 0x%llx): %s", s->info.app ? "app" : "transport",
          (unsigned long long)ce.error_code, s->info.reason);
}

static int64_t close_period_ms(np__session *s) {
  ngtcp2_duration pto = s->conn ? ngtcp2_conn_get_pto(s->conn) : 0;
  int64_t ms = (int64_t)((CLOSE_PTO_FACTOR * pto + NS_PER_MS - 1) / NS_PER_MS);
  return ms > 0 ? ms : 1;
}

/* ---- ngtcp2 callbacks ------------------------------------------------------- */

/* ngtcp2's own trace (every packet and frame), at DEBUG, when asked for. */
__attribute__((format(printf, 2, 3))) static void quic_trace(void *user, const char *fmt, ...) {
  np__session *s = user;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  NP_LOGD(&s->log, "ngtcp2: %s", buf);
}

static ngtcp2_conn *get_conn(ngtcp2_crypto_conn_ref *ref) {
  np__session *s = ref->user_data;
  return s->conn;
}

static void cb_rand(uint8_t *dest, size_t len, const ngtcp2_rand_ctx *ctx) {
  rand_bytes(dest, len);
  /* ngtcp2 0.12 always advertises grease_quic_bit (RFC 9287) and, when a
   * random byte drawn while the connection is made is odd, clears the QUIC
   * fixed bit on every packet it sends. That breaks RFC 9443 first-byte
   * demultiplexing on our shared socket (a short header could start with
   * 0x00-0x03, STUN's range), so during creation the one-byte draws are
   * made even. (BBR's one-byte draw at creation loses one bit of
   * randomness; nothing else is drawn then.) */
  const np__session *s = ctx ? ctx->native_handle : NULL;
  if (s && s->creating && len == 1)
    dest[0] &= 0xfe;
}

static int cb_new_cid(ngtcp2_conn *conn, ngtcp2_cid *cid, uint8_t *token, size_t cidlen,
                      void *user) {
  (void)conn;
  (void)user;
  rand_bytes(cid->data, cidlen);
  cid->datalen = cidlen;
  rand_bytes(token, NGTCP2_STATELESS_RESET_TOKENLEN);
  return 0;
}

/* Wraps the helper to learn that a decryptable handshake packet arrived. */
static int cb_recv_crypto_data(ngtcp2_conn *conn, ngtcp2_crypto_level level, uint64_t offset,
                               const uint8_t *data, size_t len, void *user) {
  np__session *s = user;
  s->got_crypto = true;
  return ngtcp2_crypto_recv_crypto_data_cb(conn, level, offset, data, len, user);
}

static int cb_handshake_completed(ngtcp2_conn *conn, void *user) {
  (void)conn;
  np__session *s = user;
  s->hs_done = true;
  return 0;
}

static int cb_recv_stream_data(ngtcp2_conn *conn, uint32_t flags, int64_t id, uint64_t offset,
                               const uint8_t *data, size_t len, void *user, void *suser) {
  (void)conn;
  (void)offset;
  (void)suser;
  np__session *s = user;
  stream *st = find_stream(s, id);
  if (!st) {
    /* Peers' streams opened implicitly (a higher id arrived first) get no
     * stream_open callback in 0.12; ours always exist. */
    if (ngtcp2_conn_is_local_stream(s->conn, id))
      return 0;
    if (!(st = add_stream(s, id, false)))
      return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  if (st->app_reset || st->rx_reset) {
    /* Nobody will read it: return the credit at once. */
    ngtcp2_conn_extend_max_offset(s->conn, len);
    ngtcp2_conn_extend_max_stream_offset(s->conn, id, len);
    return 0;
  }
  /* Flow control bounds what can arrive to the window we granted, which
   * is what we allocate for. */
  if (len && q_append(&st->rx, &s->pool, data, len) != len)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  if (flags & NGTCP2_STREAM_DATA_FLAG_FIN)
    st->rx_fin = true;
  return 0;
}

static int cb_stream_open(ngtcp2_conn *conn, int64_t id, void *user) {
  (void)conn;
  np__session *s = user;
  if (!find_stream(s, id) && !add_stream(s, id, false))
    return NGTCP2_ERR_CALLBACK_FAILURE;
  return 0;
}

static int cb_acked(ngtcp2_conn *conn, int64_t id, uint64_t offset, uint64_t len, void *user,
                    void *suser) {
  (void)conn;
  (void)suser;
  np__session *s = user;
  stream *st = find_stream(s, id);
  if (!st)
    return 0;
  uint64_t end = offset + len;
  if (end > st->tx_acked) {
    q_consume(&st->tx, &s->pool, (size_t)(end - st->tx_acked));
    st->tx_acked = end;
  }
  return 0;
}

static int cb_stream_close(ngtcp2_conn *conn, uint32_t flags, int64_t id, uint64_t app_error,
                           void *user, void *suser) {
  (void)flags;
  (void)app_error;
  (void)suser;
  np__session *s = user;
  s->lost_closed += ngtcp2_conn_get_stream_loss_count(conn, id);
  /* 0.12 leaves raising the peer's stream limit to the application. */
  if (!ngtcp2_conn_is_local_stream(conn, id))
    ngtcp2_conn_extend_max_streams_bidi(conn, 1);
  stream *st = find_stream(s, id);
  if (!st)
    return 0;
  st->live = false;
  /* Whatever was not acknowledged will never be. */
  q_free(&st->tx, &s->pool);
  st->tx_acked = st->tx_sent;
  maybe_forget(s, st);
  return 0;
}

static int cb_stream_reset(ngtcp2_conn *conn, int64_t id, uint64_t final_size, uint64_t app_error,
                           void *user, void *suser) {
  (void)conn;
  (void)final_size;
  (void)app_error;
  (void)suser;
  np__session *s = user;
  stream *st = find_stream(s, id);
  if (!st)
    return 0;
  st->rx_reset = true;
  discard_rx(s, st);
  return 0;
}

static int cb_stop_sending(ngtcp2_conn *conn, int64_t id, uint64_t app_error, void *user,
                           void *suser) {
  (void)app_error;
  (void)suser;
  (void)conn;
  /* ngtcp2 answers with RESET_STREAM itself (RFC 9000 §3.5); we only stop
   * offering data. What was sent stays until stream_close: frames still in
   * ngtcp2's retransmission buffer point into it. */
  stream *st = find_stream(user, id);
  if (st)
    st->stopped = true;
  return 0;
}

static int cb_extend_stream_data(ngtcp2_conn *conn, int64_t id, uint64_t max_data, void *user,
                                 void *suser) {
  (void)conn;
  (void)max_data;
  (void)suser;
  stream *st = find_stream(user, id);
  if (st)
    st->blocked = false;
  return 0;
}

static int cb_recv_datagram(ngtcp2_conn *conn, uint32_t flags, const uint8_t *data, size_t len,
                            void *user) {
  (void)conn;
  (void)flags;
  np__session *s = user;
  dgram *d = malloc(sizeof *d + len);
  if (!d)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  d->len = len;
  if (len)
    memcpy(d->data, data, len);
  if (!ring_push(&s->drx, d)) {
    free(d);
    s->st.dgrams_dropped++;
  }
  return 0;
}

static int cb_path_validation(ngtcp2_conn *conn, uint32_t flags, const ngtcp2_path *path,
                              ngtcp2_path_validation_result res, void *user) {
  (void)flags;
  np__session *s = user;
  if (res != NGTCP2_PATH_VALIDATION_RESULT_SUCCESS) {
    s->st.path_failures++;
    const ngtcp2_path *cur = ngtcp2_conn_get_path(conn);
    if (s->client && s->has_prev && ngtcp2_path_eq(cur, path))
      s->fallback_pending = true; /* acted on outside the callback */
  } else if (s->client && s->has_prev && ngtcp2_path_eq(ngtcp2_conn_get_path(conn), path)) {
    s->has_prev = false; /* the new path works: no way back needed */
  }
  if (np_log_enabled(&s->log, NP_LOG_INFO)) {
    np_addr a;
    char buf[NP_ADDRSTRLEN];
    addr_from(&a, &path->remote);
    NP_LOGI(&s->log, "session: path to %s %s", np_addr_format(&a, buf, sizeof buf),
            res == NGTCP2_PATH_VALIDATION_RESULT_SUCCESS ? "validated" : "failed validation");
  }
  return 0;
}

static const ngtcp2_callbacks client_callbacks = {
    .client_initial = ngtcp2_crypto_client_initial_cb,
    .recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb,
    .handshake_completed = cb_handshake_completed,
    .encrypt = ngtcp2_crypto_encrypt_cb,
    .decrypt = ngtcp2_crypto_decrypt_cb,
    .hp_mask = ngtcp2_crypto_hp_mask_cb,
    .recv_stream_data = cb_recv_stream_data,
    .acked_stream_data_offset = cb_acked,
    .stream_open = cb_stream_open,
    .stream_close = cb_stream_close,
    .recv_retry = ngtcp2_crypto_recv_retry_cb,
    .rand = cb_rand,
    .get_new_connection_id = cb_new_cid,
    .update_key = ngtcp2_crypto_update_key_cb,
    .path_validation = cb_path_validation,
    .stream_reset = cb_stream_reset,
    .extend_max_stream_data = cb_extend_stream_data,
    .delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb,
    .delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb,
    .recv_datagram = cb_recv_datagram,
    .get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb,
    .stream_stop_sending = cb_stop_sending,
    .version_negotiation = ngtcp2_crypto_version_negotiation_cb,
};

static const ngtcp2_callbacks server_callbacks = {
    .recv_client_initial = ngtcp2_crypto_recv_client_initial_cb,
    .recv_crypto_data = cb_recv_crypto_data,
    .handshake_completed = cb_handshake_completed,
    .encrypt = ngtcp2_crypto_encrypt_cb,
    .decrypt = ngtcp2_crypto_decrypt_cb,
    .hp_mask = ngtcp2_crypto_hp_mask_cb,
    .recv_stream_data = cb_recv_stream_data,
    .acked_stream_data_offset = cb_acked,
    .stream_open = cb_stream_open,
    .stream_close = cb_stream_close,
    .rand = cb_rand,
    .get_new_connection_id = cb_new_cid,
    .update_key = ngtcp2_crypto_update_key_cb,
    .path_validation = cb_path_validation,
    .stream_reset = cb_stream_reset,
    .extend_max_stream_data = cb_extend_stream_data,
    .delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb,
    .delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb,
    .recv_datagram = cb_recv_datagram,
    .get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb,
    .stream_stop_sending = cb_stop_sending,
    .version_negotiation = ngtcp2_crypto_version_negotiation_cb,
};

bool np__session_is_quic(const uint8_t *pkt, size_t len) {
  return pkt && len > 0 && (pkt[0] & 0x40);
}

/* ---- creation ----------------------------------------------------------------- */

static void after_conn(np__session *s) {
  ngtcp2_conn_set_tls_native_handle(s->conn, np__tls_session(s->tls));
  if (s->keepalive_ns)
    ngtcp2_conn_set_keep_alive_timeout(s->conn, s->keepalive_ns);
}

int np__session_new(const np__session_config *cfg, int64_t now_ms, np__session **out) {
  if (!out)
    return NP_ERR_INVAL;
  *out = NULL;
  if (!cfg || !cfg->identity || cfg->idle_timeout_ms < 0 || np_addr_len(&cfg->local) == 0 ||
      (cfg->client && np_addr_len(&cfg->remote) == 0) || cfg->max_udp_payload > MAX_UDP_PAYLOAD)
    return NP_ERR_INVAL;
  np__session *s = calloc(1, sizeof *s);
  if (!s)
    return NP_ERR_NOMEM;
  s->log.fn = cfg->log;
  s->log.user = cfg->log_user;
  s->log.level = cfg->log_level;
  s->client = cfg->client;
  s->local = cfg->local;
  s->remote = cfg->remote;
  s->last_ms = now_ms;
  int idle_ms = cfg->idle_timeout_ms ? cfg->idle_timeout_ms : DEFAULT_IDLE_MS;
  s->idle_ns = (uint64_t)idle_ms * NS_PER_MS;
  int ka = cfg->keepalive_ms ? cfg->keepalive_ms : DEFAULT_KEEPALIVE_MS;
  s->keepalive_ns = ka > 0 ? (uint64_t)ka * NS_PER_MS : 0;
  s->max_udp = cfg->max_udp_payload ? cfg->max_udp_payload : MIN_UDP_PAYLOAD;
  if (s->max_udp < MIN_UDP_PAYLOAD)
    s->max_udp = MIN_UDP_PAYLOAD;
  s->max_tx = cfg->max_udp_payload ? s->max_udp : PMTUD_CEILING;
  s->stream_buffer = cfg->stream_buffer ? cfg->stream_buffer : DEFAULT_STREAM_BUFFER;
  s->deadline_ms = now_ms + idle_ms;
  s->st.rtt_min_ms = s->st.rtt_smoothed_ms = -1;
  ngtcp2_connection_close_error_default(&s->ccerr);

  np__tls_config tc = {
      .client = cfg->client,
      .identity = cfg->identity,
      .get_conn = get_conn,
      .get_conn_user = s,
      .log = &s->log,
  };
  memcpy(tc.peer, cfg->peer, NP_PUBKEY_LEN);
  int err = np__tls_new(&tc, &s->tls);
  if (err)
    goto fail;

  ngtcp2_settings_default(&s->settings);
  s->settings.initial_ts = (ngtcp2_tstamp)now_ms * NS_PER_MS;
  /* BBR, not CUBIC: punched paths are often lossy for reasons that are not
   * congestion (wifi, CGNAT), and a loss-based controller collapses there.
   * On the unit tests' model link (100 ms RTT, 10 % random loss, 12 MB/s
   * bottleneck) 20 MiB took 5.5 s of fake time with BBR, 438 s with CUBIC. */
  s->settings.cc_algo = NGTCP2_CC_ALGO_BBR;
  /* Packets start at 1200 bytes, safe on any path. When the owner chose
   * no size, DPLPMTUD (RFC 8899, ngtcp2's) probes for larger ones up to
   * PMTUD_CEILING: a probe is a padded PING that no data depends on, so a
   * tunnel or NAT that drops it costs nothing but the probe, and each
   * 1200-byte packet that becomes a 1452-byte one is a sixth fewer packets
   * to encrypt, send and acknowledge (bench/throughput: CPU per byte is
   * what limits a bulk transfer). A size the owner chose is kept as is. */
  s->settings.max_tx_udp_payload_size = s->max_tx;
  s->settings.no_pmtud = cfg->max_udp_payload ? 1 : 0;
  s->settings.handshake_timeout = s->idle_ns;
  s->settings.initial_rtt = NGTCP2_DEFAULT_INITIAL_RTT;
  s->settings.rand_ctx.native_handle = s;
  if (cfg->quic_trace && cfg->log && cfg->log_level >= NP_LOG_DEBUG)
    s->settings.log_printf = quic_trace;

  ngtcp2_transport_params_default(&s->params);
  s->params.initial_max_stream_data_bidi_local = STREAM_WINDOW;
  s->params.initial_max_stream_data_bidi_remote = STREAM_WINDOW;
  s->params.initial_max_stream_data_uni = 0;
  s->params.initial_max_data = MAX_DATA;
  s->params.initial_max_streams_bidi = MAX_STREAMS_BIDI;
  s->params.initial_max_streams_uni = 0;
  s->params.max_idle_timeout = s->idle_ns;
  s->params.active_connection_id_limit = ACTIVE_CID_LIMIT;
  /* A DATAGRAM frame never exceeds a packet, and packets are max_udp here:
   * this also bounds the receive queue to DGRAM_QUEUE * max_udp bytes. */
  s->params.max_datagram_frame_size = s->max_udp;

  if (cfg->client) {
    ngtcp2_cid dcid, scid;
    dcid.datalen = SCID_LEN;
    rand_bytes(dcid.data, dcid.datalen);
    scid.datalen = SCID_LEN;
    rand_bytes(scid.data, scid.datalen);
    ngtcp2_path path = {addr_of(&s->local), addr_of(&s->remote), NULL};
    s->creating = true;
    int rv = ngtcp2_conn_client_new(&s->conn, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1,
                                    &client_callbacks, &s->settings, &s->params, NULL, s);
    s->creating = false;
    if (rv != 0) {
      NP_LOGE(&s->log, "session: ngtcp2_conn_client_new: %s", ngtcp2_strerror(rv));
      err = rv == NGTCP2_ERR_NOMEM ? NP_ERR_NOMEM : NP_ERR_SYS;
      goto fail;
    }
    after_conn(s);
  }
  *out = s;
  return 0;
fail:
  np__session_free(s);
  return err;
}

/* A server's connection starts with its client's first Initial packet,
 * whose connection IDs it must echo. */
static int server_accept(np__session *s, const np_addr *local, const np_addr *from,
                         const uint8_t *pkt, size_t len) {
  ngtcp2_pkt_hd hd;
  if (ngtcp2_accept(&hd, pkt, len) != 0)
    return NP_ERR_PROTO;
  ngtcp2_cid scid;
  scid.datalen = SCID_LEN;
  rand_bytes(scid.data, scid.datalen);
  ngtcp2_transport_params params = s->params;
  params.original_dcid = hd.dcid;
  params.stateless_reset_token_present = 1;
  rand_bytes(params.stateless_reset_token, sizeof params.stateless_reset_token);
  s->local = *local;
  s->remote = *from;
  ngtcp2_path path = {addr_of(&s->local), addr_of(&s->remote), NULL};
  s->creating = true;
  int rv = ngtcp2_conn_server_new(&s->conn, &hd.scid, &scid, &path, hd.version, &server_callbacks,
                                  &s->settings, &params, NULL, s);
  s->creating = false;
  if (rv != 0) {
    NP_LOGE(&s->log, "session: ngtcp2_conn_server_new: %s", ngtcp2_strerror(rv));
    s->conn = NULL;
    return rv == NGTCP2_ERR_NOMEM ? NP_ERR_NOMEM : NP_ERR_SYS;
  }
  after_conn(s);
  return 0;
}

void np__session_free(np__session *s) {
  if (!s)
    return;
  for (size_t i = 0; i < s->n_streams; i++) {
    q_free(&s->streams[i]->tx, &s->pool);
    q_free(&s->streams[i]->rx, &s->pool);
    free(s->streams[i]);
  }
  free(s->streams);
  while (s->dtx.n)
    ring_pop(&s->dtx);
  while (s->drx.n)
    ring_pop(&s->drx);
  /* The connection first: deleting it frees crypto contexts through
   * callbacks that do not touch the TLS session. */
  if (s->conn)
    ngtcp2_conn_del(s->conn);
  np__tls_free(s->tls);
  pool_drain(&s->pool);
  free(s->close_pkt);
  free(s);
}

/* ---- receiving ------------------------------------------------------------------ */

/* True when a is b byte for byte (what note_path stored from ngtcp2). */
static bool addr_is(const ngtcp2_addr *a, const np_addr *b) {
  size_t n = np_addr_len(b);
  return n > 0 && (size_t)a->addrlen == n && memcmp(a->addr, &b->u, n) == 0;
}

static void note_path(np__session *s) {
  const ngtcp2_path *p = ngtcp2_conn_get_path(s->conn);
  /* Called for every packet received: the unchanged path is the case to
   * make cheap. */
  if (addr_is(&p->local, &s->local) && addr_is(&p->remote, &s->remote))
    return;
  np_addr l, r;
  addr_from(&l, &p->local);
  addr_from(&r, &p->remote);
  if (!np_addr_equal(&l, &s->local) || !np_addr_equal(&r, &s->remote)) {
    char a[NP_ADDRSTRLEN], b[NP_ADDRSTRLEN];
    NP_LOGI(&s->log, "session: path now %s -> %s", np_addr_format(&l, a, sizeof a),
            np_addr_format(&r, b, sizeof b));
    s->local = l;
    s->remote = r;
    s->st.migrations++;
  }
  /* The same addresses in other bytes (a configured sockaddr's padding):
   * keep ngtcp2's copy so that the check above matches next time. */
  s->local = l;
  s->remote = r;
}

static void check_established(np__session *s) {
  if (s->state == NP__SESSION_HANDSHAKE && s->hs_done &&
      np__tls_verdict(s->tls) == NP__TLS_PEER_OK) {
    s->state = NP__SESSION_ESTABLISHED;
    s->was_up = true;
    NP_LOGI(&s->log, "session: established (%s)", s->client ? "client" : "server");
  }
}

int np__session_recv(np__session *s, const np_addr *local, const np_addr *from, const uint8_t *pkt,
                     size_t len, int64_t now_ms) {
  if (!s || !local || !from || (!pkt && len))
    return NP_ERR_INVAL;
  ngtcp2_tstamp ts = ts_of(s, now_ms);
  s->st.packets_received++;
  s->st.bytes_received += len;
  switch (s->state) {
  case NP__SESSION_CLOSED:
  case NP__SESSION_DRAINING:
    return 0;
  case NP__SESSION_CLOSING:
    /* RFC 9000 §10.2.1: answer packets in the closing state with the close. */
    s->close_resend = s->close_pkt != NULL;
    return 0;
  default:
    break;
  }
  bool fresh = false;
  if (!s->conn) {
    if (server_accept(s, local, from, pkt, len) != 0)
      return 0; /* not an Initial for us: ignore */
    fresh = true;
  }
  np_addr l = *local, r = *from;
  ngtcp2_path path = {addr_of(&l), addr_of(&r), NULL};
  ngtcp2_pkt_info pi = {0};
  /* Was the peer heard, or only someone who can send us a datagram? A
   * packet that fails to decrypt changes nothing in the connection; one
   * of the peer's moves its timers (the idle timer restarts, RFC 9000
   * 10.1; an ACK timer starts) or its ACKs change the flight. ngtcp2 0.12
   * has no direct "last received" to ask. */
  /* The check costs two stats copies and two expiry computations per
   * packet; once heard in this millisecond, another packet cannot change
   * the answer. */
  bool ask = s->st.last_heard_ms != now_ms;
  ngtcp2_conn_stat c0;
  ngtcp2_tstamp e0 = 0;
  if (ask) {
    ngtcp2_conn_get_conn_stat(s->conn, &c0);
    e0 = ngtcp2_conn_get_expiry(s->conn);
  }
  int rv = ngtcp2_conn_read_pkt(s->conn, &path, &pi, pkt, len, ts);
  if (rv == 0 && s->conn && ask) {
    ngtcp2_conn_stat c1;
    ngtcp2_conn_get_conn_stat(s->conn, &c1);
    if (ngtcp2_conn_get_expiry(s->conn) != e0 || c1.latest_rtt != c0.latest_rtt ||
        c1.bytes_in_flight != c0.bytes_in_flight || c1.pto_count != c0.pto_count)
      s->st.last_heard_ms = now_ms;
  }
  if (fresh && (rv != 0 || !s->got_crypto)) {
    /* Something shaped like an Initial but not a client's: forget it, or
     * one forged packet would bind us to connection IDs nobody uses. */
    ngtcp2_conn_del(s->conn);
    s->conn = NULL;
    s->got_crypto = false;
    if (np__tls_reset(s->tls) != 0) {
      s->info.err = NP_ERR_SYS;
      set_reason(s, "TLS reset failed", NULL);
      end_now(s, NP__SESSION_CLOSED);
      return NP_ERR_SYS;
    }
    return 0;
  }
  for (size_t i = 0; i < s->n_streams; i++)
    s->streams[i]->blocked = false;
  if (rv == 0) {
    check_established(s);
    note_path(s);
    return 0;
  }
  switch (rv) {
  case NGTCP2_ERR_DRAINING:
    peer_closed(s);
    s->state = NP__SESSION_DRAINING;
    s->ended = true;
    s->deadline_ms = s->last_ms + close_period_ms(s);
    return s->info.err;
  case NGTCP2_ERR_DROP_CONN:
    s->info.err = NP_ERR_PROTO;
    set_reason(s, "connection dropped", NULL);
    end_now(s, NP__SESSION_CLOSED);
    return NP_ERR_PROTO;
  case NGTCP2_ERR_RETRY:
    /* We never send Retry; a server conn cannot ask for it. */
    return 0;
  default:
    fail_local(s, rv);
    return s->info.err;
  }
}

/* ---- sending ---------------------------------------------------------------------- */

static bool stream_has_tx(const stream *st) {
  if (!st->live || st->stopped || st->app_reset)
    return false;
  if (st->tx_sent < st->tx_acked + st->tx.len)
    return !st->blocked;
  return st->fin_wanted && !st->fin_sent;
}

static stream *next_tx_stream(np__session *s) {
  for (size_t k = 0; k < s->n_streams; k++) {
    size_t i = (s->rr + k) % s->n_streams;
    stream *st = s->streams[i];
    if (st->tried != s->gen && stream_has_tx(st)) {
      st->tried = s->gen;
      s->rr = i + 1;
      return st;
    }
  }
  return NULL;
}

static int finish_pkt(np__session *s, ngtcp2_path_storage *ps, np__session_path *path,
                      ngtcp2_ssize n) {
  if (path) {
    addr_from(&path->local, &ps->path.local);
    addr_from(&path->remote, &ps->path.remote);
  }
  s->st.packets_sent++;
  s->st.bytes_sent += (uint64_t)n;
  s->burst += (size_t)n;
  return (int)n;
}

static int write_close(np__session *s, uint8_t *buf, size_t cap, np__session_path *path,
                       ngtcp2_tstamp ts) {
  s->close_pending = false;
  ngtcp2_path_storage ps;
  ngtcp2_path_storage_zero(&ps);
  ngtcp2_pkt_info pi;
  ngtcp2_ssize n =
      ngtcp2_conn_write_connection_close(s->conn, &ps.path, &pi, buf, cap, &s->ccerr, ts);
  s->deadline_ms = s->last_ms + close_period_ms(s);
  if (n <= 0) {
    s->state = NP__SESSION_CLOSED;
    return 0;
  }
  free(s->close_pkt);
  s->close_pkt = malloc((size_t)n);
  if (s->close_pkt) {
    memcpy(s->close_pkt, buf, (size_t)n);
    s->close_pkt_len = (size_t)n;
  }
  return finish_pkt(s, &ps, path, n);
}

/* Moves a client back to the path it left when the new one failed
 * validation; retried on later sends while no spare connection ID is
 * available. */
static void fall_back(np__session *s, ngtcp2_tstamp ts) {
  if (!s->has_prev || s->state != NP__SESSION_ESTABLISHED) {
    s->fallback_pending = false;
    return;
  }
  np_addr l = s->prev_local, r = s->prev_remote;
  ngtcp2_path p = {addr_of(&l), addr_of(&r), NULL};
  int rv = ngtcp2_conn_initiate_immediate_migration(s->conn, &p, ts);
  if (rv == NGTCP2_ERR_CONN_ID_BLOCKED)
    return;
  s->fallback_pending = false;
  s->has_prev = false;
  if (rv == 0) {
    NP_LOGW(&s->log, "session: new path failed validation; back on the previous one");
    note_path(s);
  }
}

/* The bytes one burst may hold. ngtcp2's send quantum is what fits in 1 ms
 * at the pacing rate, capped at 64 KB; but our clock ticks in whole
 * milliseconds, so the next burst cannot come sooner than the next tick:
 * with the quantum alone, the rate would stop at 64 KB per ms whatever the
 * path can carry. A burst therefore covers one tick at the pacing rate
 * (and at least a quantum). */
static size_t burst_limit(np__session *s) {
  size_t q = ngtcp2_conn_get_send_quantum(s->conn);
  ngtcp2_conn_stat cs;
  ngtcp2_conn_get_conn_stat(s->conn, &cs);
  double tick = cs.pacing_rate * (double)NS_PER_MS; /* bytes per ns -> per ms */
  if (tick > (double)BURST_MAX)
    tick = (double)BURST_MAX;
  return tick > (double)q ? (size_t)tick : q;
}

int np__session_send(np__session *s, uint8_t *buf, size_t cap, np__session_path *path,
                     int64_t now_ms) {
  if (!s || !buf)
    return NP_ERR_INVAL;
  if (cap < MIN_UDP_PAYLOAD)
    return NP_ERR_NOSPACE; /* Initial packets are padded to 1200 bytes */
  ngtcp2_tstamp ts = ts_of(s, now_ms);
  if (!s->conn || s->state == NP__SESSION_CLOSED || s->state == NP__SESSION_DRAINING)
    return 0;
  if (s->close_pending)
    return write_close(s, buf, cap, path, ts);
  if (s->state == NP__SESSION_CLOSING) {
    if (!s->close_resend || !s->close_pkt || s->close_pkt_len > cap)
      return 0;
    s->close_resend = false;
    memcpy(buf, s->close_pkt, s->close_pkt_len);
    if (path) {
      path->local = s->local;
      path->remote = s->remote;
    }
    s->st.packets_sent++;
    s->st.bytes_sent += s->close_pkt_len;
    return (int)s->close_pkt_len;
  }
  if (cap > s->max_tx)
    cap = s->max_tx;
  if (s->fallback_pending)
    fall_back(s, ts);
  /* Pacing: a burst is at most one send quantum, then ngtcp2 schedules the
   * next (its time shows in np__session_timeout). */
  /* The limit is taken once per burst: asking ngtcp2 for every packet
   * showed in profiles, and within one burst nothing changes it much. */
  if (s->burst == 0)
    s->burst_cap = burst_limit(s);
  if (s->burst >= s->burst_cap) {
    ngtcp2_conn_update_pkt_tx_time(s->conn, ts);
    s->burst = 0;
    return 0;
  }
  ngtcp2_path_storage ps;
  ngtcp2_path_storage_zero(&ps);
  ngtcp2_pkt_info pi;
  s->gen++;
  ngtcp2_ssize n = 0;
  /* Each round either completes the packet or adds a frame to it (or drops
   * a datagram / skips a blocked stream), so the bound is never reached in
   * practice; it only guards against a library surprise. */
  for (int round = 0; round < 4 * DGRAM_QUEUE + 4 * MAX_STREAMS_BIDI + 16; round++) {
    dgram *d = ring_peek(&s->dtx);
    if (d) {
      int accepted = 0;
      ngtcp2_vec v = {d->data, d->len};
      n = ngtcp2_conn_writev_datagram(s->conn, &ps.path, &pi, buf, cap, &accepted,
                                      NGTCP2_WRITE_DATAGRAM_FLAG_MORE, s->dgram_id++, &v, 1, ts);
      if (n == NGTCP2_ERR_WRITE_MORE) {
        ring_pop(&s->dtx);
        continue;
      }
      if (n == NGTCP2_ERR_INVALID_ARGUMENT || n == NGTCP2_ERR_INVALID_STATE) {
        /* Too big for the peer, or it takes none: drop it. */
        ring_pop(&s->dtx);
        continue;
      }
      if (n < 0)
        goto fatal;
      if (accepted)
        ring_pop(&s->dtx);
      if (n == 0)
        goto idle;
      return finish_pkt(s, &ps, path, n);
    }
    stream *st = next_tx_stream(s);
    if (st) {
      ngtcp2_vec v[SEND_VECS];
      size_t nv = q_vecs(&st->tx, (size_t)(st->tx_sent - st->tx_acked), v, SEND_VECS);
      uint64_t queued_end = st->tx_acked + st->tx.len;
      uint64_t offered = 0;
      for (size_t i = 0; i < nv; i++)
        offered += v[i].len;
      uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_MORE;
      if (st->fin_wanted && st->tx_sent + offered == queued_end)
        flags |= NGTCP2_WRITE_STREAM_FLAG_FIN;
      ngtcp2_ssize taken = -1;
      n = ngtcp2_conn_writev_stream(s->conn, &ps.path, &pi, buf, cap, &taken, flags, st->id, v, nv,
                                    ts);
      if (taken >= 0) {
        st->tx_sent += (uint64_t)taken;
        if ((flags & NGTCP2_WRITE_STREAM_FLAG_FIN) && st->tx_sent == queued_end)
          st->fin_sent = true;
      }
      if (n == NGTCP2_ERR_WRITE_MORE)
        continue;
      if (n == NGTCP2_ERR_STREAM_DATA_BLOCKED) {
        st->blocked = true;
        continue;
      }
      if (n == NGTCP2_ERR_STREAM_SHUT_WR || n == NGTCP2_ERR_STREAM_NOT_FOUND) {
        st->stopped = true;
        continue;
      }
      if (n < 0)
        goto fatal;
      if (n == 0)
        goto idle;
      return finish_pkt(s, &ps, path, n);
    }
    n = ngtcp2_conn_writev_stream(s->conn, &ps.path, &pi, buf, cap, NULL,
                                  NGTCP2_WRITE_STREAM_FLAG_NONE, -1, NULL, 0, ts);
    if (n < 0)
      goto fatal;
    if (n == 0)
      goto idle;
    return finish_pkt(s, &ps, path, n);
  }
idle:
  ngtcp2_conn_update_pkt_tx_time(s->conn, ts);
  s->burst = 0;
  return 0;
fatal:
  fail_local(s, (int)n);
  return write_close(s, buf, cap, path, ts);
}

/* ---- timers ------------------------------------------------------------------------ */

int64_t np__session_timeout(const np__session *s, int64_t now_ms) {
  if (!s || s->state == NP__SESSION_CLOSED)
    return -1;
  if (s->close_pending || s->close_resend)
    return 0;
  if (!s->conn || s->state == NP__SESSION_CLOSING || s->state == NP__SESSION_DRAINING) {
    int64_t d = s->deadline_ms - now_ms;
    return d > 0 ? d : 0;
  }
  ngtcp2_tstamp exp = ngtcp2_conn_get_expiry(s->conn);
  if (exp == UINT64_MAX)
    return -1;
  ngtcp2_tstamp now = (ngtcp2_tstamp)(now_ms > 0 ? now_ms : 0) * NS_PER_MS;
  if (exp <= now)
    return 0;
  return (int64_t)((exp - now + NS_PER_MS - 1) / NS_PER_MS);
}

int np__session_on_timer(np__session *s, int64_t now_ms) {
  if (!s)
    return NP_ERR_INVAL;
  ngtcp2_tstamp ts = ts_of(s, now_ms);
  if (s->state == NP__SESSION_CLOSED)
    return 0;
  if (!s->conn || s->state == NP__SESSION_CLOSING || s->state == NP__SESSION_DRAINING) {
    if (s->last_ms < s->deadline_ms)
      return 0;
    if (!s->conn) {
      s->info.err = NP_ERR_TIMEOUT;
      set_reason(s, "handshake timeout (no packet from the client)", NULL);
    }
    end_now(s, NP__SESSION_CLOSED);
    return s->info.err;
  }
  int rv = ngtcp2_conn_handle_expiry(s->conn, ts);
  if (rv == 0)
    return 0;
  if (rv == NGTCP2_ERR_IDLE_CLOSE || rv == NGTCP2_ERR_HANDSHAKE_TIMEOUT) {
    s->info.err = NP_ERR_TIMEOUT;
    set_reason(s, rv == NGTCP2_ERR_IDLE_CLOSE ? "idle timeout (peer silent)" : "handshake timeout",
               NULL);
    NP_LOGI(&s->log, "session: %s", s->info.reason);
    end_now(s, NP__SESSION_CLOSED);
    return NP_ERR_TIMEOUT;
  }
  fail_local(s, rv);
  return s->info.err;
}

/* ---- state -------------------------------------------------------------------------- */

enum np__session_state np__session_state(const np__session *s) {
  return s ? s->state : NP__SESSION_CLOSED;
}

bool np__session_established(const np__session *s) {
  return s && s->state == NP__SESSION_ESTABLISHED;
}

bool np__session_closed(const np__session *s) {
  return !s || s->state >= NP__SESSION_CLOSING;
}

int np__session_close_info(const np__session *s, struct np__session_close_info *info) {
  if (!s || !info)
    return NP_ERR_INVAL;
  if (!s->ended)
    return NP_ERR_AGAIN;
  *info = s->info;
  return 0;
}

/* ---- streams ---------------------------------------------------------------------------- */

int np__session_stream_open(np__session *s, int64_t *id) {
  if (!s || !id)
    return NP_ERR_INVAL;
  if (np__session_closed(s))
    return NP_ERR_CANCELLED;
  if (s->state != NP__SESSION_ESTABLISHED)
    return NP_ERR_AGAIN;
  int64_t sid;
  int rv = ngtcp2_conn_open_bidi_stream(s->conn, &sid, NULL);
  if (rv == NGTCP2_ERR_STREAM_ID_BLOCKED)
    return NP_ERR_AGAIN;
  if (rv != 0)
    return rv == NGTCP2_ERR_NOMEM ? NP_ERR_NOMEM : NP_ERR_PROTO;
  if (!add_stream(s, sid, true)) {
    ngtcp2_conn_shutdown_stream(s->conn, sid, 0);
    return NP_ERR_NOMEM;
  }
  *id = sid;
  return 0;
}

int np__session_stream_accept(np__session *s, int64_t *id) {
  /* Defence in depth: nothing from a peer whose key was never verified
   * (ngtcp2 cannot decrypt 1-RTT data before that anyway). */
  if (!s || !id || !s->was_up)
    return 0;
  for (size_t i = 0; i < s->n_streams; i++) {
    stream *st = s->streams[i];
    if (!st->accepted) {
      st->accepted = true;
      *id = st->id;
      return 1;
    }
  }
  return 0;
}

static stream *app_stream(np__session *s, int64_t id) {
  stream *st = find_stream(s, id);
  return st && st->accepted && !st->app_reset ? st : NULL;
}

int64_t np__session_stream_write(np__session *s, int64_t id, const uint8_t *buf, size_t len,
                                 bool fin) {
  if (!s || (!buf && len))
    return NP_ERR_INVAL;
  if (np__session_closed(s))
    return NP_ERR_CANCELLED;
  stream *st = app_stream(s, id);
  if (!st || st->fin_wanted)
    return NP_ERR_INVAL;
  if (st->stopped || !st->live)
    return NP_ERR_CANCELLED;
  size_t room = st->tx.len < s->stream_buffer ? s->stream_buffer - st->tx.len : 0;
  if (room == 0 && len > 0)
    return NP_ERR_AGAIN;
  size_t n = len < room ? len : room;
  size_t took = q_append(&st->tx, &s->pool, buf, n);
  if (took == 0 && n > 0)
    return NP_ERR_NOMEM;
  if (fin && took == len)
    st->fin_wanted = true;
  return (int64_t)took;
}

int64_t np__session_stream_read(np__session *s, int64_t id, uint8_t *buf, size_t cap, bool *fin) {
  if (fin)
    *fin = false;
  if (!s || (!buf && cap))
    return NP_ERR_INVAL;
  stream *st = app_stream(s, id);
  if (!st)
    return NP_ERR_INVAL;
  if (st->rx_reset) {
    maybe_forget(s, st);
    return NP_ERR_CANCELLED;
  }
  if (st->rx.len == 0) {
    if (st->rx_fin) {
      st->rx_fin_read = true;
      if (fin)
        *fin = true;
      maybe_forget(s, st);
      return 0;
    }
    return np__session_closed(s) ? NP_ERR_CANCELLED : NP_ERR_AGAIN;
  }
  size_t n = q_read(&st->rx, &s->pool, buf, cap);
  if (s->conn && !np__session_closed(s)) {
    /* Credit returns as the application consumes: this is the
     * back-pressure that keeps a slow reader's buffer bounded. */
    if (st->live)
      ngtcp2_conn_extend_max_stream_offset(s->conn, id, n);
    ngtcp2_conn_extend_max_offset(s->conn, n);
  }
  if (st->rx.len == 0 && st->rx_fin && fin) {
    *fin = true;
    st->rx_fin_read = true;
    maybe_forget(s, st);
  }
  return (int64_t)n;
}

int np__session_stream_shutdown(np__session *s, int64_t id) {
  if (!s)
    return NP_ERR_INVAL;
  stream *st = app_stream(s, id);
  if (!st)
    return NP_ERR_INVAL;
  st->fin_wanted = true;
  return 0;
}

int np__session_stream_reset(np__session *s, int64_t id, uint64_t app_error) {
  if (!s)
    return NP_ERR_INVAL;
  stream *st = app_stream(s, id);
  if (!st)
    return NP_ERR_INVAL;
  st->app_reset = true;
  discard_rx(s, st);
  if (st->live && s->conn && !np__session_closed(s))
    ngtcp2_conn_shutdown_stream(s->conn, id, app_error);
  maybe_forget(s, st);
  return 0;
}

/* ---- datagrams ----------------------------------------------------------------------------- */

size_t np__session_dgram_max(const np__session *s) {
  if (!s || !s->conn || s->state != NP__SESSION_ESTABLISHED)
    return 0;
  const ngtcp2_transport_params *rp = ngtcp2_conn_get_remote_transport_params(s->conn);
  if (!rp || rp->max_datagram_frame_size == 0)
    return 0;
  size_t frame_max =
      rp->max_datagram_frame_size > s->max_udp ? s->max_udp : (size_t)rp->max_datagram_frame_size;
  size_t pkt_max = s->max_udp - DGRAM_OVERHEAD;
  size_t m = frame_max < pkt_max ? frame_max : pkt_max;
  return m > 3 ? m - 3 : 0;
}

int np__session_dgram_send(np__session *s, const uint8_t *buf, size_t len) {
  if (!s || (!buf && len))
    return NP_ERR_INVAL;
  if (np__session_closed(s))
    return NP_ERR_CANCELLED;
  if (s->state != NP__SESSION_ESTABLISHED)
    return NP_ERR_INVAL;
  if (len > np__session_dgram_max(s))
    return NP_ERR_NOSPACE;
  if (s->dtx.n == DGRAM_QUEUE)
    return NP_ERR_AGAIN;
  dgram *d = malloc(sizeof *d + len);
  if (!d)
    return NP_ERR_NOMEM;
  d->len = len;
  if (len)
    memcpy(d->data, buf, len);
  ring_push(&s->dtx, d);
  return 0;
}

int np__session_dgram_recv(np__session *s, uint8_t *buf, size_t cap) {
  if (!s || (!buf && cap))
    return NP_ERR_INVAL;
  dgram *d = ring_peek(&s->drx);
  if (!d)
    return NP_ERR_AGAIN;
  size_t n = d->len < cap ? d->len : cap;
  if (n)
    memcpy(buf, d->data, n);
  ring_pop(&s->drx);
  return (int)n;
}

/* ---- close, stats, migration ------------------------------------------------------------------
 */

int np__session_close(np__session *s, uint64_t app_error, const char *reason) {
  if (!s || np__session_closed(s))
    return NP_ERR_INVAL;
  s->info.err = app_error == 0 ? 0 : NP_ERR_CANCELLED;
  s->info.by_peer = false;
  s->info.app = true;
  s->info.code = app_error;
  set_reason(s, reason ? reason : "", NULL);
  ngtcp2_connection_close_error_set_application_error(
      &s->ccerr, app_error, (const uint8_t *)s->info.reason, strlen(s->info.reason));
  queue_close(s);
  return 0;
}

void np__session_stats(const np__session *s, struct np__session_stats *st) {
  if (!st)
    return;
  memset(st, 0, sizeof *st);
  if (!s)
    return;
  *st = s->st;
  st->path.local = s->local;
  st->path.remote = s->remote;
  st->packets_lost = s->lost_closed;
  if (!s->conn)
    return;
  ngtcp2_conn_stat cs;
  ngtcp2_conn_get_conn_stat(s->conn, &cs);
  if (cs.first_rtt_sample_ts != UINT64_MAX) {
    st->rtt_smoothed_ms = (int64_t)(cs.smoothed_rtt / NS_PER_MS);
    st->rtt_min_ms = (int64_t)(cs.min_rtt / NS_PER_MS);
  }
  st->cwnd = cs.cwnd;
  st->bytes_in_flight = cs.bytes_in_flight;
  st->pto_count = cs.pto_count;
  for (size_t i = 0; i < s->n_streams; i++)
    if (s->streams[i]->live)
      st->packets_lost += ngtcp2_conn_get_stream_loss_count(s->conn, s->streams[i]->id);
}

int np__session_migrate(np__session *s, const np_addr *new_local, const np_addr *new_remote,
                        int64_t now_ms) {
  if (!s || !new_local || np_addr_len(new_local) == 0)
    return NP_ERR_INVAL;
  if (!s->client || s->state != NP__SESSION_ESTABLISHED)
    return NP_ERR_INVAL;
  const np_addr *remote = new_remote && np_addr_len(new_remote) ? new_remote : &s->remote;
  if (np_addr_equal(new_local, &s->local))
    return np_addr_equal(remote, &s->remote) ? 0 : NP_ERR_UNSUPPORTED;
  ngtcp2_tstamp ts = ts_of(s, now_ms);
  np_addr l = *new_local, r = *remote;
  ngtcp2_path path = {addr_of(&l), addr_of(&r), NULL};
  np_addr old_local = s->local, old_remote = s->remote;
  int rv = ngtcp2_conn_initiate_immediate_migration(s->conn, &path, ts);
  switch (rv) {
  case 0:
    s->has_prev = true;
    s->fallback_pending = false;
    s->prev_local = old_local;
    s->prev_remote = old_remote;
    note_path(s);
    return 0;
  case NGTCP2_ERR_CONN_ID_BLOCKED:
    return NP_ERR_AGAIN;
  case NGTCP2_ERR_INVALID_STATE:
    /* Not yet confirmed (HANDSHAKE_DONE in flight) or the peer disabled
     * migration. */
    return NP_ERR_AGAIN;
  case NGTCP2_ERR_NOMEM:
    return NP_ERR_NOMEM;
  default:
    return NP_ERR_INVAL;
  }
}

unsigned np__session_stream_state(const np__session *s, int64_t id) {
  if (!s)
    return 0;
  const stream *st = find_stream((np__session *)s, id);
  if (!st || !st->accepted || st->app_reset)
    return 0;
  unsigned f = NP__STREAM_KNOWN;
  if (st->rx.len > 0 || st->rx_fin || st->rx_reset)
    f |= NP__STREAM_READABLE;
  if (st->rx_fin_read)
    f |= NP__STREAM_READ_EOF;
  if (!st->fin_wanted && !st->stopped && st->tx.len < s->stream_buffer && !np__session_closed(s))
    f |= NP__STREAM_WRITABLE;
  /* ngtcp2 lets a stream go once both ends are closed and our data and
   * FIN are acknowledged: the one sure sign that the peer has it all. */
  if (st->fin_wanted && st->fin_sent && !st->live && st->tx.len == 0)
    f |= NP__STREAM_WRITE_ACKED;
  if (st->rx_reset || st->stopped)
    f |= NP__STREAM_RESET;
  return f;
}

bool np__session_stream_pending(const np__session *s) {
  if (!s || !s->was_up)
    return false;
  for (size_t i = 0; i < s->n_streams; i++)
    if (!s->streams[i]->accepted)
      return true;
  return false;
}
