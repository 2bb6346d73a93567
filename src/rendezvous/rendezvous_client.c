/*
 * Rendezvous client: one non-blocking TCP connection to the rendezvous
 * server, driven entirely by the caller's loop.
 *
 * Shape: a small state machine (DISCONNECTED -> CONNECTING ->
 * AUTHENTICATING -> REGISTERED) plus three timers folded into one wakeup
 * time: the reconnect backoff, the handshake deadline, and the keepalive
 * (send PING every ping_ms, give up on a server that sent no frame for two
 * intervals). Every failure funnels into conn_lost(), which closes the
 * socket, drops both buffers and schedules the next attempt, so there is one
 * way back from any error and no half-open state to reason about.
 *
 * Trust: the server is a relay, not an authority. Offers and answers are
 * accepted only with a valid signature by their FROM key, addressed to our
 * key, and (offers) from a caller on our allow list, whatever the server
 * claims to have checked. Only OBSERVED is taken on the server's word, and
 * it is documented as such.
 *
 * Server errors: the TCP connection is plain, so anyone who can inject into
 * it could send an ERROR. The client sends an ephemeral X25519 key in HELLO
 * and derives a per-connection key from the server's in CHALLENGE (see
 * signaling.h); ERROR and REGISTERED are acted on only with a valid MAC
 * under it. Without one, an ERROR during the handshake only ends that
 * attempt (the normal short backoff), and once registered it is logged and
 * ignored: it cannot end a call, impose a backoff or take our ID.
 *
 * Memory: everything is allocated in np__rdv_client_new(); the input buffer
 * holds exactly one maximum frame and the output queue has a fixed size, so
 * neither a hostile server nor a caller sending too fast can grow it.
 */
#include "rendezvous/rendezvous_client.h"

#include "net/addr.h"
#include "util/clock.h"
#include "util/log.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#define RDV_BACKOFF_MIN_MS 250
#define RDV_BACKOFF_MAX_MS 30000
#define RDV_PING_MS 25000
/* A server silent for this many ping intervals is taken as dead: one lost
 * PONG is not enough (the server may be busy), two are. */
#define RDV_DEAD_PINGS 2
/* Upper bound for connect + HELLO..REGISTERED. Also bounded by the dead
 * rule above, so tests with a short ping_ms find a black-holed server fast. */
#define RDV_HANDSHAKE_MS 10000
/* Input: exactly one maximum frame. The server never needs to send more
 * than one frame ahead of our reading, and the codec rejects larger ones. */
#define RDV_IN_CAP (NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME)
/* Output: a few maximum frames. Offers and answers are a few hundred bytes,
 * so this is hundreds of queued messages; beyond that the caller is told
 * NP_ERR_NOSPACE rather than the queue growing without bound. */
#define RDV_OUT_CAP (4 * (NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME))
/* recv() calls per process() call, so a flood from the server cannot keep
 * the caller's loop from its other work (poll is level-triggered: the rest
 * is read on the next round). */
#define RDV_READS_PER_PROCESS 16

/* Accepted OFFER/ANSWERs remembered for replay detection (see is_fresh()). */
#define RDV_REPLAY_RING 256
struct rdv_seen {
  uint8_t type;
  uint8_t from[NP_PUBKEY_LEN];
  uint8_t session[NP_SIG_SESSION_LEN];
  /* With the timestamp, a verbatim copy is a replay, while the sender's
   * fresh signing of the same session (an offer sent again after a lost
   * connection) gets through. */
  uint64_t timestamp_ms;
};

struct np_rdv_client {
  np_rdv_client_config cfg; /* allow points at our own copy below */
  np_logger lg;
  uint8_t pubkey[NP_PUBKEY_LEN];
  char peer_id[NP_PEER_ID_LEN + 1];
  uint8_t allow[NP_SIG_MAX_ALLOW][NP_PUBKEY_LEN];
  int n_allow;

  struct rdv_seen seen[RDV_REPLAY_RING];
  int seen_next;

  enum np_rdv_state state;
  int fd;
  /* Set when a send() failed for good outside process() (e.g. from
   * send_offer() called by the application): the teardown waits for the
   * next process() so a callback never sees the connection vanish under it. */
  bool broken;
  /* Bumped by conn_lost(); the frame loop checks it to stop parsing the
   * buffer of a connection that a callback or a handler just closed. */
  uint64_t generation;

  int64_t next_attempt; /* DISCONNECTED: when to connect again */
  int64_t deadline;     /* CONNECTING/AUTHENTICATING: handshake must be done */
  int64_t last_rx;      /* REGISTERED: last frame from the server */
  int64_t next_ping;    /* REGISTERED: when to send the next PING */
  int backoff_ms;       /* delay before the next attempt, before jitter */
  uint64_t rng;         /* xorshift state for the jitter */

  np_addr observed; /* from CHALLENGE, then REGISTERED */

  /* Channel key of the current connection (see the file comment). */
  uint8_t kx_pk[NP_SIG_KX_LEN], kx_sk[NP_SIG_KX_LEN];
  bool got_challenge;
  bool has_key;
  uint64_t mac_seq; /* MAC'd frames accepted on this connection */
  uint8_t chan_key[NP_SIG_CHANNEL_KEY_LEN];
  /* An authenticated 409: another registration holds our ID. The client
   * stops: it does not take the ID back (see on_error_msg()). */
  bool replaced;

  uint8_t in[RDV_IN_CAP];
  size_t in_len;
  uint8_t out[RDV_OUT_CAP];
  size_t out_off, out_len; /* queued bytes are out[out_off..out_len) */

  np_sig_msg rx; /* decoded incoming frame, handed to callbacks */
  np_sig_msg tx; /* scratch for encoding; separate from rx because a
                    callback looking at rx may send an answer */
};

static const char *state_name(enum np_rdv_state s) {
  switch (s) {
  case NP_RDV_DISCONNECTED:
    return "disconnected";
  case NP_RDV_CONNECTING:
    return "connecting";
  case NP_RDV_AUTHENTICATING:
    return "authenticating";
  case NP_RDV_REGISTERED:
    return "registered";
  }
  return "?";
}

/* xorshift64*: the jitter only has to differ between clients, not resist
 * prediction, and keeping the state per client keeps the library free of
 * global state. */
static uint32_t rng_next(np_rdv_client *c) {
  c->rng ^= c->rng >> 12;
  c->rng ^= c->rng << 25;
  c->rng ^= c->rng >> 27;
  return (uint32_t)((c->rng * 0x2545F4914F6CDD1DULL) >> 32);
}

static int rng_below(np_rdv_client *c, int n) {
  return n > 0 ? (int)(rng_next(c) % (uint32_t)n) : 0;
}

static void set_state(np_rdv_client *c, enum np_rdv_state s) {
  if (c->state == s)
    return;
  NP_LOGD(&c->lg, "rdv %.8s: %s -> %s", c->peer_id, state_name(c->state), state_name(s));
  c->state = s;
  if (c->cfg.on_state)
    c->cfg.on_state(c->cfg.user, s, s == NP_RDV_REGISTERED ? &c->observed : NULL);
}

/* How long to wait before the next attempt. The delay grows from
 * backoff_min to backoff_max, doubling per failure, and is spread by up to
 * half its value so that the clients of a restarted server do not all come
 * back in the same millisecond. The jitter never leaves the configured
 * range: near the maximum it is taken off instead of added. */
static int next_delay(np_rdv_client *c) {
  int b = c->backoff_ms;
  int max = c->cfg.backoff_max_ms;
  int64_t d = (int64_t)b + rng_below(c, b / 2 + 1);
  if (d > max)
    d = max - rng_below(c, max / 4 + 1);
  if (d < c->cfg.backoff_min_ms)
    d = c->cfg.backoff_min_ms;
  c->backoff_ms = b > max / 2 ? max : b * 2;
  return (int)d;
}

enum lost_kind {
  LOST_NORMAL,   /* exponential backoff from where it is */
  LOST_REPLACED, /* authenticated 409: someone else holds our ID; stop */
};

/* The one way out of a connection: close, forget everything that belonged
 * to it (queued offers were for this connection's registration; a caller
 * retries on its own session timer), and schedule the next attempt. */
static void conn_lost(np_rdv_client *c, int64_t now, enum lost_kind kind, const char *why) {
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  c->broken = false;
  c->generation++;
  c->in_len = 0;
  c->out_off = c->out_len = 0;
  memset(&c->observed, 0, sizeof c->observed);
  c->got_challenge = c->has_key = false;
  c->mac_seq = 0;
  sodium_memzero(c->chan_key, sizeof c->chan_key);
  sodium_memzero(c->kx_sk, sizeof c->kx_sk);
  if (kind == LOST_REPLACED) {
    /* Taking the ID back would make the two registrations replace each
     * other for ever, and each would lose its calls; the application is
     * told (on_error 409) and decides. */
    c->replaced = true;
    c->next_attempt = INT64_MAX;
    NP_LOGW(&c->lg, "rdv %.8s: %s; not reconnecting", c->peer_id, why);
    set_state(c, NP_RDV_DISCONNECTED);
    return;
  }
  /* The first failure of a streak is a warning, so a user without
   * --verbose learns that the server is unreachable; the retries are not. */
  bool first = c->backoff_ms <= c->cfg.backoff_min_ms;
  int delay = next_delay(c);
  c->next_attempt = now + delay;
  np__log(&c->lg, first ? NP_LOG_WARN : NP_LOG_INFO,
         "rdv %.8s: %s; reconnecting in %d ms", c->peer_id, why, delay);
  set_state(c, NP_RDV_DISCONNECTED);
}

/* Writes as much of the queue as the socket takes. Returns 0, or -1 when
 * the connection is broken (the caller decides when to tear it down). */
static int flush_out(np_rdv_client *c) {
  while (c->fd >= 0 && c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
      NP_LOGD(&c->lg, "rdv %.8s: send: %s", c->peer_id, strerror(errno));
      return -1;
    }
    c->out_off += (size_t)n;
  }
  if (c->out_off == c->out_len)
    c->out_off = c->out_len = 0;
  return 0;
}

/* Encodes tx straight into the queue's free tail (no temporary frame).
 * Returns 0, NP_ERR_NOSPACE when the queue is full, or the codec's error. */
static int queue_tx(np_rdv_client *c, const np_identity *id) {
  if (c->out_off > 0 && c->out_off == c->out_len)
    c->out_off = c->out_len = 0;
  /* Compact only when the tail is short: most frames go out at once and the
   * queue is empty, so this move is rare. */
  if (c->out_off > 0 && RDV_OUT_CAP - c->out_len < NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME) {
    memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
    c->out_len -= c->out_off;
    c->out_off = 0;
  }
  int n = np__sig_encode(&c->tx, id, c->out + c->out_len, RDV_OUT_CAP - c->out_len);
  if (n < 0)
    return n;
  c->out_len += (size_t)n;
  if (flush_out(c) < 0)
    c->broken = true;
  return 0;
}

static void tx_reset(np_rdv_client *c, uint8_t type) {
  memset(&c->tx, 0, sizeof c->tx);
  c->tx.type = type;
}

static int send_simple(np_rdv_client *c, uint8_t type) {
  tx_reset(c, type);
  return queue_tx(c, NULL);
}

/* The reason names the server and the error, since it is what a user
 * without --verbose sees when the server is down or unreachable. */
static void connect_failed(np_rdv_client *c, int64_t now, int err) {
  char a[NP_ADDRSTRLEN], why[NP_ADDRSTRLEN + 80];
  snprintf(why, sizeof why, "cannot connect to %s: %s",
           np_addr_format(&c->cfg.server, a, sizeof a), strerror(err));
  conn_lost(c, now, LOST_NORMAL, why);
}

static void start_connect(np_rdv_client *c, int64_t now) {
  const np_addr *srv = &c->cfg.server;
  int fd = socket(srv->u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    /* Out of descriptors or similar: nothing to close, but still a failed
     * attempt that must back off rather than spin. */
    NP_LOGW(&c->lg, "rdv %.8s: socket: %s", c->peer_id, strerror(errno));
    set_state(c, NP_RDV_CONNECTING);
    conn_lost(c, now, LOST_NORMAL, "cannot create socket");
    return;
  }
  /* Offers are small and latency matters more than segment count. */
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->fd = fd;
  c->in_len = 0;
  c->out_off = c->out_len = 0;
  c->deadline = now + RDV_HANDSHAKE_MS;
  if (c->deadline > now + (int64_t)RDV_DEAD_PINGS * c->cfg.ping_ms)
    c->deadline = now + (int64_t)RDV_DEAD_PINGS * c->cfg.ping_ms;
  set_state(c, NP_RDV_CONNECTING);

  int rc;
  do
    rc = connect(fd, &srv->u.sa, np_addr_len(srv));
  while (rc < 0 && errno == EINTR);
  if (rc < 0 && errno != EINPROGRESS) {
    connect_failed(c, now, errno);
    return;
  }
  /* Even an immediate success (possible on loopback) goes through the
   * POLLOUT path, so there is one place that starts the handshake. */
}

/* The socket became writable (or failed) while connecting. */
static void finish_connect(np_rdv_client *c, int64_t now) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    err = errno;
  if (err != 0) {
    connect_failed(c, now, err);
    return;
  }
  set_state(c, NP_RDV_AUTHENTICATING);
  tx_reset(c, NP_SIG_HELLO);
  c->tx.has_pubkey = true;
  memcpy(c->tx.pubkey, c->pubkey, NP_PUBKEY_LEN);
  if (np__sig_kx_keypair(c->kx_pk, c->kx_sk) != 0) {
    conn_lost(c, now, LOST_NORMAL, "cannot make a key pair");
    return;
  }
  c->tx.cand.has_kx = true;
  memcpy(c->tx.cand.kx, c->kx_pk, NP_SIG_KX_LEN);
  int rc = queue_tx(c, NULL);
  if (rc < 0)
    conn_lost(c, now, LOST_NORMAL, "cannot encode HELLO");
}

static bool caller_allowed(const np_rdv_client *c, const uint8_t from[NP_PUBKEY_LEN]) {
  if (c->n_allow == 0)
    return true;
  for (int i = 0; i < c->n_allow; i++)
    if (memcmp(c->allow[i], from, NP_PUBKEY_LEN) == 0)
      return true;
  return false;
}

static void on_challenge(np_rdv_client *c, int64_t now) {
  /* One per connection: a second one is injected (or the server is
   * broken); answering it would key the channel to whoever sent it. */
  if (c->state != NP_RDV_AUTHENTICATING || !c->rx.has_nonce || c->got_challenge) {
    conn_lost(c, now, LOST_NORMAL, "unexpected CHALLENGE");
    return;
  }
  c->got_challenge = true;
  if (c->rx.cand.has_kx) {
    if (np__sig_channel_key(false, c->kx_pk, c->kx_sk, c->rx.cand.kx, c->rx.nonce, c->chan_key) !=
        0) {
      conn_lost(c, now, LOST_NORMAL, "unusable KX key in CHALLENGE");
      return;
    }
    c->has_key = true;
  } else {
    /* A server without KX (an older one): its errors stay unauthenticated
     * and are never acted on beyond ending a handshake attempt. */
    NP_LOGW(&c->lg, "rdv %.8s: the server does not authenticate its errors (older version?)",
            c->peer_id);
  }
  sodium_memzero(c->kx_sk, sizeof c->kx_sk);
  if (c->rx.observed.u.sa.sa_family != AF_UNSPEC)
    c->observed = c->rx.observed;
  tx_reset(c, NP_SIG_REGISTER);
  c->tx.has_nonce = true;
  memcpy(c->tx.nonce, c->rx.nonce, NP_SIG_NONCE_LEN);
  c->tx.has_pubkey = true;
  memcpy(c->tx.pubkey, c->pubkey, NP_PUBKEY_LEN);
  memcpy(c->tx.allow, c->allow, sizeof c->allow[0] * (size_t)c->n_allow);
  c->tx.n_allow = c->n_allow;
  int rc = queue_tx(c, c->cfg.identity);
  if (rc < 0) {
    NP_LOGE(&c->lg, "rdv %.8s: cannot encode REGISTER: %s", c->peer_id, np_strerror(rc));
    conn_lost(c, now, LOST_NORMAL, "cannot encode REGISTER");
  }
}

/* Whether the frame in rx carries a valid MAC under this connection's key
 * (and counts it: the next one must carry the next number). */
static bool mac_ok(np_rdv_client *c, const uint8_t *body, size_t len) {
  if (!c->has_key || np__sig_verify_mac(body, len, &c->rx, c->chan_key, c->mac_seq) != 0)
    return false;
  c->mac_seq++;
  return true;
}

static void on_registered(np_rdv_client *c, int64_t now, const uint8_t *body, size_t len) {
  if (c->has_key && !mac_ok(c, body, len)) {
    NP_LOGW(&c->lg, "rdv %.8s: ignored a REGISTERED without a valid MAC (injected?)", c->peer_id);
    return;
  }
  if (c->state != NP_RDV_AUTHENTICATING) {
    conn_lost(c, now, LOST_NORMAL, "unexpected REGISTERED");
    return;
  }
  if (c->rx.observed.u.sa.sa_family != AF_UNSPEC)
    c->observed = c->rx.observed;
  /* Only a completed registration proves the server healthy; a connection
   * that is accepted and then dropped keeps backing off. */
  c->backoff_ms = c->cfg.backoff_min_ms;
  c->last_rx = now;
  c->next_ping = now + c->cfg.ping_ms;
  char a[NP_ADDRSTRLEN];
  NP_LOGI(&c->lg, "rdv %.8s: registered, seen as %s", c->peer_id,
          np_addr_format(&c->observed, a, sizeof a));
  set_state(c, NP_RDV_REGISTERED);
}

/* Unix time for the TIMESTAMP TLV: it lets the receiver judge the age of a
 * signed offer, which the monotonic clock cannot express across hosts. */
static uint64_t unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Replay protection. A signed OFFER/ANSWER stays valid forever, so whoever
 * relays it (the server, or anyone on the TCP path) could deliver it again.
 * The signed TIMESTAMP bounds how old it may be; within that window a ring
 * of recently accepted (type, sender, session) triples catches verbatim
 * repeats. The window allows for clock skew between the peers. */
#define RDV_REPLAY_WINDOW_MS NP_SIG_CLOCK_WINDOW_MS
static_assert(RDV_REPLAY_RING >= 64, "ring must cover a window's worth of sessions");

/* A signed message outside the window is either old (a replay) or from a
 * peer whose clock is off: say which figure, so a user with a wrong clock
 * reads that, not a timeout. */
static bool in_window(np_rdv_client *c, const np_sig_msg *m, const char *from) {
  uint64_t now = unix_ms();
  uint64_t age = now > m->timestamp_ms ? now - m->timestamp_ms : m->timestamp_ms - now;
  if (age <= RDV_REPLAY_WINDOW_MS)
    return true;
  NP_LOGW(&c->lg,
          "rdv %.8s: dropped %s from %.8s: its clock is %llu s %s ours (more than %d s); "
          "check the clocks (NTP) on both sides",
          c->peer_id, np__sig_type_name(m->type), from, (unsigned long long)(age / 1000),
          m->timestamp_ms > now ? "ahead of" : "behind", RDV_REPLAY_WINDOW_MS / 1000);
  return false;
}

static bool is_fresh(np_rdv_client *c, const np_sig_msg *m) {
  struct rdv_seen key = {.type = m->type, .timestamp_ms = m->timestamp_ms};
  memcpy(key.from, m->from, sizeof key.from);
  memcpy(key.session, m->session, sizeof key.session);
  for (int i = 0; i < RDV_REPLAY_RING; i++)
    if (memcmp(&c->seen[i], &key, sizeof key) == 0)
      return false;
  c->seen[c->seen_next] = key;
  c->seen_next = (c->seen_next + 1) % RDV_REPLAY_RING;
  return true;
}

/* OFFER/ANSWER/READY: checked here whatever the server says it checked. */
static void on_signed(np_rdv_client *c, const uint8_t *body, size_t len) {
  const np_sig_msg *m = &c->rx;
  const char *what = np__sig_type_name(m->type);
  if (c->state != NP_RDV_REGISTERED) {
    NP_LOGW(&c->lg, "rdv %.8s: dropped %s before registration", c->peer_id, what);
    return;
  }
  if (!m->has_from || !m->has_to || !m->has_session) {
    NP_LOGW(&c->lg, "rdv %.8s: dropped %s without FROM/TO/SESSION", c->peer_id, what);
    return;
  }
  char from[NP_PEER_ID_LEN + 1];
  np_peer_id_format(m->from, from);
  if (np__sig_verify(body, len, m) != 0) {
    NP_LOGW(&c->lg, "rdv %.8s: dropped %s claiming to be from %.8s: bad signature", c->peer_id,
            what, from);
    if (c->cfg.on_forged && memcmp(m->to, c->pubkey, NP_PUBKEY_LEN) == 0)
      c->cfg.on_forged(c->cfg.user, m);
    return;
  }
  /* A signed message for someone else, replayed to us by the server or a
   * peer, must not start a session here. */
  if (memcmp(m->to, c->pubkey, NP_PUBKEY_LEN) != 0) {
    NP_LOGW(&c->lg, "rdv %.8s: dropped %s from %.8s addressed to another peer", c->peer_id, what,
            from);
    return;
  }
  if (!in_window(c, m, from))
    return;
  if (!is_fresh(c, m)) {
    NP_LOGW(&c->lg, "rdv %.8s: dropped %s from %.8s: replayed", c->peer_id, what, from);
    return;
  }
  if (m->type == NP_SIG_OFFER) {
    if (!caller_allowed(c, m->from)) {
      NP_LOGW(&c->lg, "rdv %.8s: dropped OFFER from %.8s: not on the allow list", c->peer_id, from);
      return;
    }
    if (c->cfg.on_offer)
      c->cfg.on_offer(c->cfg.user, m);
  } else if (m->type == NP_SIG_ANSWER) {
    if (c->cfg.on_answer)
      c->cfg.on_answer(c->cfg.user, m);
  } else if (c->cfg.on_ready) {
    c->cfg.on_ready(c->cfg.user, m);
  }
}

static void on_error_msg(np_rdv_client *c, int64_t now, const uint8_t *body, size_t len) {
  const np_sig_msg *m = &c->rx;
  enum np_rdv_state st = c->state;
  if (!mac_ok(c, body, len)) {
    if (st != NP_RDV_REGISTERED) {
      /* Before (or without) a key nothing is known about who sent it: this
       * attempt is over, as for any failed connection, and nothing more
       * (a 409 or 503 here imposes no special backoff). */
      NP_LOGW(&c->lg, "rdv %.8s: registration failed: unauthenticated error %u %s", c->peer_id,
              m->error_code, m->error_text);
      conn_lost(c, now, LOST_NORMAL, "registration refused (unauthenticated error)");
    } else {
      NP_LOGW(&c->lg, "rdv %.8s: ignored an ERROR %u without a valid MAC (not the server's)",
              c->peer_id, m->error_code);
    }
    return;
  }
  NP_LOGD(&c->lg, "rdv %.8s: server error %u %s", c->peer_id, m->error_code, m->error_text);
  if (c->cfg.on_error)
    c->cfg.on_error(c->cfg.user, m->error_code, m->error_text, m->has_session ? m->session : NULL);
  if (m->error_code == NP_SIG_E_REPLACED && c->fd >= 0) {
    /* Another client registered our ID (the same key running twice, or a
     * stale process), and the server said so itself. */
    NP_LOGW(&c->lg, "rdv %.8s: our ID was registered from another connection", c->peer_id);
    conn_lost(c, now, LOST_REPLACED, "replaced by another registration");
    return;
  }
  if (st != NP_RDV_REGISTERED && c->state == st && c->fd >= 0) {
    /* Any error during the handshake (bad signature, server full, version)
     * means this attempt is over; the backoff keeps retries polite. */
    NP_LOGW(&c->lg, "rdv %.8s: registration refused: %u %s", c->peer_id, m->error_code,
            m->error_text);
    conn_lost(c, now, LOST_NORMAL, "registration refused");
  }
}

static void handle_frame(np_rdv_client *c, int64_t now, const uint8_t *body, size_t len) {
  int rc = np__sig_decode(body, len, &c->rx);
  if (rc == NP_ERR_UNSUPPORTED) {
    conn_lost(c, now, LOST_NORMAL, "server speaks another protocol version");
    return;
  }
  if (rc < 0) {
    /* The framing is intact, so one bad message need not cost the
     * registration; a server that keeps sending them still fails the
     * keepalive eventually if nothing else gets through. */
    NP_LOGW(&c->lg, "rdv %.8s: dropped a malformed frame (%u bytes)", c->peer_id, (unsigned)len);
    return;
  }
  c->last_rx = now;
  switch (c->rx.type) {
  case NP_SIG_CHALLENGE:
    on_challenge(c, now);
    break;
  case NP_SIG_REGISTERED:
    on_registered(c, now, body, len);
    break;
  case NP_SIG_OFFER:
  case NP_SIG_ANSWER:
  case NP_SIG_READY:
    on_signed(c, body, len);
    break;
  case NP_SIG_ERROR:
    on_error_msg(c, now, body, len);
    break;
  case NP_SIG_PING:
    if (send_simple(c, NP_SIG_PONG) < 0)
      NP_LOGD(&c->lg, "rdv %.8s: no room for PONG", c->peer_id);
    break;
  case NP_SIG_PONG:
    break;
  default:
    NP_LOGD(&c->lg, "rdv %.8s: ignored %s from the server", c->peer_id,
            np__sig_type_name(c->rx.type));
    break;
  }
}

/* Reads what is there and handles every whole frame in it. */
static void read_in(np_rdv_client *c, int64_t now) {
  uint64_t gen = c->generation;
  for (int i = 0; i < RDV_READS_PER_PROCESS; i++) {
    if (c->in_len == RDV_IN_CAP) {
      /* Cannot happen (the buffer holds any frame the codec accepts), but a
       * zero-length recv() would read as end of stream. */
      conn_lost(c, now, LOST_NORMAL, "input buffer full");
      return;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, RDV_IN_CAP - c->in_len, 0);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return;
      conn_lost(c, now, LOST_NORMAL, "connection error");
      return;
    }
    if (n == 0) {
      conn_lost(c, now, LOST_NORMAL, "server closed the connection");
      return;
    }
    c->in_len += (size_t)n;

    size_t off = 0;
    for (;;) {
      size_t body_len;
      int rc = np__sig_frame_check(c->in + off, c->in_len - off, NP_SIG_MAX_FRAME, &body_len);
      if (rc == NP_ERR_NOSPACE)
        break;
      if (rc < 0) {
        conn_lost(c, now, LOST_NORMAL, "bad frame from the server");
        return;
      }
      handle_frame(c, now, c->in + off + NP_SIG_LEN_PREFIX, body_len);
      if (c->generation != gen)
        return; /* the connection is gone, and its buffer with it */
      off += NP_SIG_LEN_PREFIX + body_len;
    }
    if (off > 0) {
      memmove(c->in, c->in + off, c->in_len - off);
      c->in_len -= off;
    }
  }
}

static void run_timers(np_rdv_client *c, int64_t now) {
  switch (c->state) {
  case NP_RDV_DISCONNECTED:
    if (now >= c->next_attempt)
      start_connect(c, now);
    break;
  case NP_RDV_CONNECTING:
  case NP_RDV_AUTHENTICATING:
    if (now >= c->deadline)
      conn_lost(c, now, LOST_NORMAL, "handshake timed out");
    break;
  case NP_RDV_REGISTERED:
    if (now - c->last_rx >= (int64_t)RDV_DEAD_PINGS * c->cfg.ping_ms) {
      conn_lost(c, now, LOST_NORMAL, "server silent for two keepalive intervals");
      break;
    }
    if (now >= c->next_ping) {
      c->next_ping = now + c->cfg.ping_ms;
      if (send_simple(c, NP_SIG_PING) < 0)
        NP_LOGD(&c->lg, "rdv %.8s: no room for PING", c->peer_id);
    }
    break;
  }
}

int np__rdv_client_new(const np_rdv_client_config *cfg, int64_t now, np_rdv_client **out) {
  if (!cfg || !out || !cfg->identity || !np__addr_is_set(&cfg->server) ||
      np_addr_port(&cfg->server) == 0 || cfg->n_allow < 0 || cfg->n_allow > NP_SIG_MAX_ALLOW ||
      (cfg->n_allow > 0 && !cfg->allow) || cfg->backoff_min_ms < 0 || cfg->backoff_max_ms < 0 ||
      cfg->ping_ms < 0)
    return NP_ERR_INVAL;
  np_rdv_client_config k = *cfg;
  if (k.backoff_min_ms == 0)
    k.backoff_min_ms = RDV_BACKOFF_MIN_MS;
  if (k.backoff_max_ms == 0)
    k.backoff_max_ms = RDV_BACKOFF_MAX_MS;
  if (k.ping_ms == 0)
    k.ping_ms = RDV_PING_MS;
  if (k.backoff_min_ms > k.backoff_max_ms || k.backoff_max_ms > 24 * 3600 * 1000)
    return NP_ERR_INVAL;

  np_rdv_client *c = calloc(1, sizeof *c);
  if (!c)
    return NP_ERR_NOMEM;
  c->cfg = k;
  c->n_allow = cfg->n_allow;
  if (c->n_allow > 0)
    memcpy(c->allow, cfg->allow, sizeof c->allow[0] * (size_t)c->n_allow);
  c->cfg.allow = (const uint8_t(*)[NP_PUBKEY_LEN])c->allow;
  c->lg = (np_logger){.fn = cfg->log, .user = cfg->log_user, .level = cfg->log_level};
  np_identity_public_key(cfg->identity, c->pubkey);
  np_identity_peer_id(cfg->identity, c->peer_id);
  c->fd = -1;
  c->state = NP_RDV_DISCONNECTED;
  c->backoff_ms = k.backoff_min_ms;
  if (np__random_bytes(&c->rng, sizeof c->rng) < 0 || c->rng == 0)
    c->rng = (uint64_t)(uintptr_t)c ^ (uint64_t)now ^ 0x9E3779B97F4A7C15ULL;
  /* The first attempt runs from the first process() call rather than from
   * here, so every state change, this one included, reaches on_state. */
  c->next_attempt = now;
  *out = c;
  return 0;
}

int np__rdv_client_fd(const np_rdv_client *c, short *events) {
  if (!c || c->fd < 0) {
    if (events)
      *events = 0;
    return -1;
  }
  if (events) {
    short ev = POLLIN;
    if (c->state == NP_RDV_CONNECTING || c->out_off < c->out_len)
      ev |= POLLOUT;
    *events = ev;
  }
  return c->fd;
}

int64_t np__rdv_client_wakeup(const np_rdv_client *c) {
  if (c->broken)
    return 0; /* torn down on the next process(), as soon as possible */
  if (c->replaced)
    return INT64_MAX;
  switch (c->state) {
  case NP_RDV_DISCONNECTED:
    return c->next_attempt;
  case NP_RDV_CONNECTING:
  case NP_RDV_AUTHENTICATING:
    return c->deadline;
  case NP_RDV_REGISTERED: {
    int64_t dead = c->last_rx + (int64_t)RDV_DEAD_PINGS * c->cfg.ping_ms;
    return c->next_ping < dead ? c->next_ping : dead;
  }
  }
  return 0;
}

int np__rdv_client_process(np_rdv_client *c, int64_t now, short revents) {
  if (!c)
    return NP_ERR_INVAL;
  if (c->broken)
    conn_lost(c, now, LOST_NORMAL, "connection error");
  if (c->fd >= 0 && revents) {
    if (c->state == NP_RDV_CONNECTING) {
      if (revents & (POLLOUT | POLLERR | POLLHUP))
        finish_connect(c, now);
    } else {
      if (revents & (POLLIN | POLLERR | POLLHUP))
        read_in(c, now);
      if (c->fd >= 0 && (revents & POLLOUT) && flush_out(c) < 0)
        conn_lost(c, now, LOST_NORMAL, "connection error");
    }
  }
  if (c->broken)
    conn_lost(c, now, LOST_NORMAL, "connection error");
  run_timers(c, now);
  if (c->broken)
    conn_lost(c, now, LOST_NORMAL, "connection error");
  return 0;
}

enum np_rdv_state np__rdv_client_state(const np_rdv_client *c) {
  return c->state;
}

bool np__rdv_client_replaced(const np_rdv_client *c) {
  return c && c->replaced;
}

static int send_signed(np_rdv_client *c, uint8_t type, const uint8_t to[NP_PUBKEY_LEN],
                       const uint8_t session[NP_SIG_SESSION_LEN], const np_sig_candidates *cand,
                       const np_addr *peer_seen, uint16_t error_code, const char *error_text) {
  if (!c || !to || !session)
    return NP_ERR_INVAL;
  if (c->state != NP_RDV_REGISTERED || c->broken)
    return NP_ERR_INVAL;
  if (cand && (cand->n_private < 0 || cand->n_private > NP_SIG_MAX_PRIVATE || cand->n_mapped < 0 ||
               cand->n_mapped > NP_SIG_MAX_MAPPED))
    return NP_ERR_INVAL;
  tx_reset(c, type);
  c->tx.has_from = c->tx.has_to = c->tx.has_session = c->tx.has_timestamp = true;
  memcpy(c->tx.from, c->pubkey, NP_PUBKEY_LEN);
  memcpy(c->tx.to, to, NP_PUBKEY_LEN);
  memcpy(c->tx.session, session, NP_SIG_SESSION_LEN);
  c->tx.timestamp_ms = unix_ms();
  if (cand)
    c->tx.cand = *cand;
  if (peer_seen)
    c->tx.peer_seen = *peer_seen;
  c->tx.error_code = error_code;
  if (error_text)
    snprintf(c->tx.error_text, sizeof c->tx.error_text, "%s", error_text);
  int rc = queue_tx(c, c->cfg.identity);
  if (rc < 0)
    NP_LOGD(&c->lg, "rdv %.8s: %s not queued: %s", c->peer_id, np__sig_type_name(type),
            np_strerror(rc));
  return rc;
}

int np__rdv_client_send_offer(np_rdv_client *c, const uint8_t to[NP_PUBKEY_LEN],
                             const uint8_t session[NP_SIG_SESSION_LEN],
                             const np_sig_candidates *cand) {
  return send_signed(c, NP_SIG_OFFER, to, session, cand, NULL, 0, NULL);
}

int np__rdv_client_send_answer(np_rdv_client *c, const uint8_t to[NP_PUBKEY_LEN],
                              const uint8_t session[NP_SIG_SESSION_LEN],
                              const np_sig_candidates *cand, const np_addr *peer_seen) {
  return send_signed(c, NP_SIG_ANSWER, to, session, cand, peer_seen, 0, NULL);
}

int np__rdv_client_send_decline(np_rdv_client *c, const uint8_t to[NP_PUBKEY_LEN],
                               const uint8_t session[NP_SIG_SESSION_LEN], uint16_t code,
                               const char *text) {
  /* Code 0 would send an empty answer that accepts the call. */
  if (code < 100 || code > 999)
    return NP_ERR_INVAL;
  return send_signed(c, NP_SIG_ANSWER, to, session, NULL, NULL, code, text);
}

int np__rdv_client_send_ready(np_rdv_client *c, const uint8_t to[NP_PUBKEY_LEN],
                             const uint8_t session[NP_SIG_SESSION_LEN]) {
  return send_signed(c, NP_SIG_READY, to, session, NULL, NULL, 0, NULL);
}

void np__rdv_client_reconnect(np_rdv_client *c, int64_t now, const char *why) {
  if (!c || c->replaced || c->fd < 0)
    return;
  c->backoff_ms = c->cfg.backoff_min_ms;
  conn_lost(c, now, LOST_NORMAL, why);
}

void np__rdv_client_free(np_rdv_client *c) {
  if (!c)
    return;
  if (c->fd >= 0)
    close(c->fd);
  sodium_memzero(c, sizeof *c);
  free(c);
}
