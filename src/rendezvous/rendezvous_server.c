/*
 * Rendezvous server: peers register their public key over TCP (proving they
 * hold it by signing a fresh challenge), then exchange signed OFFER and
 * ANSWER frames through the server, which checks who sends them and stamps
 * the sender's address as it sees it (OBSERVED).
 *
 * Shape: one thread, one event loop (net/loop.h: epoll, level-triggered),
 * non-blocking sockets.
 * A connection costs a small struct plus a registry slot while it is idle:
 *  - Input is read into one server-wide scratch buffer and whole frames are
 *    handled straight from it; only a partial frame left at the end of a
 *    read is copied to the connection (exactly its size, at most max_frame +
 *    4 bytes, freed when the frame completes).
 *  - Output is written at once; only what the kernel does not take is
 *    queued, up to a bound (RS_OUT_FRAMES frames), and a peer that lets its
 *    queue pass the bound is closed: it cannot make the server buffer for it.
 *  - Timers are two lists kept in deadline order for free: connections that
 *    have not registered yet, in accept order (each has the same auth
 *    timeout), and registered ones, moved to the tail on every frame (each
 *    has the same idle timeout). The loop only looks at the heads.
 *
 * Policy decisions (each also explained where it is implemented):
 *  - Any protocol violation (malformed frame, wrong order, unexpected type)
 *    gets an ERROR and the connection is closed: a well-behaved client never
 *    does it, and keeping state for a confused peer helps nobody. Errors
 *    about another peer (404 unknown, 403 refused) leave the sender
 *    connected: they are normal events of a rendezvous.
 *  - REGISTER must carry the key announced in HELLO; the signature covers the
 *    challenge nonce, so a captured REGISTER cannot be replayed.
 *  - OFFER, ANSWER and READY obey one rule: the receiver's allow list must
 *    name the sender, unless the receiver itself offered this session to the
 *    sender (a caller with an allow list for its own callers still hears
 *    the answer of the peer it called). So an allow list cannot be bypassed
 *    by sending an unsolicited ANSWER or READY.
 *  - Per source address (IPv4 /32, IPv6 /64: one host or one NAT) there are
 *    limits on open and on unregistered connections and on REGISTER
 *    attempts per minute, so one host cannot fill the server's slots that
 *    other hosts need; the global limits stay as the last line.
 *  - Connection-level logs (why a connection was closed) are at INFO, at most
 *    RS_LOG_PER_SEC lines a second; the rest is counted and reported as
 *    "suppressed" once the window passes, so a flood cannot flood the log.
 */
#include "natpunch.h"

#include "net/addr.h"
#include "rendezvous/registry.h"
#include "signaling/signaling.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/bytes.h"
#include "net/loop.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#define RS_DEFAULT_MAX_CONN 20000
#define RS_DEFAULT_MAX_UNAUTH 1024
#define RS_DEFAULT_AUTH_MS 10000
#define RS_DEFAULT_IDLE_MS 90000
#define RS_DEFAULT_RATE 20
/* Per source address (see the file comment). Generous for a NAT shared by
 * an office, small against the global limits. */
#define RS_DEFAULT_CONN_PER_IP 256
#define RS_DEFAULT_UNAUTH_PER_IP 16
#define RS_DEFAULT_REGISTER_PER_IP 120 /* per minute */
#define RS_REGISTER_WINDOW_MS 60000
/* Buckets of the per-address table; chains stay short at max_conn. */
#define RS_IP_BUCKETS 4096
/* Calls remembered per connection, for ANSWER/READY to a caller. */
#define RS_CALLS 4
/* Token bucket depth, in seconds of the sustained rate. */
#define RS_BURST_FACTOR 2
/* Descriptors beyond the connections: listener, epoll, eventfd, reserve fd,
 * stdio, and whatever the embedding application has open. */
#define RS_FD_SLACK 64
/* Bytes read per readiness event beyond a pending partial frame. */
#define RS_READ_CHUNK 65536
/* Output queue bound, in maximum-size frames. */
#define RS_OUT_FRAMES 4
/* Room OBSERVED may add to a forwarded frame: TLV header + IPv6 address. */
#define RS_STAMP_ROOM 64
/* Connections accepted per listener wakeup. */
#define RS_ACCEPT_BATCH 64
/* Rate of connection-level log lines (closes, refusals). */
#define RS_LOG_PER_SEC 20
/* Longest sleep of the loop, so log suppression summaries come out. */
#define RS_MAX_WAIT_MS 1000

enum rs_state {
  RS_NEW = 0,    /* waiting for HELLO */
  RS_CHALLENGED, /* CHALLENGE sent, waiting for REGISTER */
  RS_REGISTERED, /* in the registry */
  RS_DEAD,       /* closed; freed at the end of the loop iteration */
};

/* Which counter a close is charged to. */
enum rs_why {
  RS_WHY_NONE = 0, /* peer left, replaced, I/O error: no close counter */
  RS_WHY_BAD_FRAME,
  RS_WHY_IDLE,
  RS_WHY_AUTH,
  RS_WHY_RATE,
};

/* What one source address holds (see the file comment). Kept while it has
 * connections or its registration window is still running. */
struct rs_ip {
  struct rs_ip *next;
  uint8_t key[17]; /* family byte + /32 or /64 */
  int n_open, n_unauth;
  int n_register;       /* REGISTER attempts in the window */
  int64_t window_start; /* of the registration window (ms) */
};

/* An OFFER this connection sent: lets the answer and READY back through. */
struct rs_call {
  uint8_t to[NP_PUBKEY_LEN];
  uint8_t session[NP_SIG_SESSION_LEN];
};

struct rs_conn {
  struct rs_conn *prev, *next; /* in srv->unauth or srv->reg (timer order) */
  np_rendezvous_server *srv;   /* for the loop's callback */
  struct rs_ip *ip;            /* its source address's counters */
  struct rs_call calls[RS_CALLS];
  uint8_t n_calls, next_call;
  struct rs_conn *dead_next;
  int fd;
  uint8_t state;    /* enum rs_state */
  bool want_out;    /* EPOLLOUT armed */
  int32_t tokens;   /* token bucket, in thousandths of a message */
  int64_t refilled; /* when tokens were last refilled (ms) */
  int64_t deadline; /* auth deadline, or idle deadline once registered */
  np_addr peer;     /* TCP address as seen: what OBSERVED says */
  uint8_t key[NP_PUBKEY_LEN];
  uint8_t nonce[NP_SIG_NONCE_LEN];
  uint8_t (*allow)[NP_PUBKEY_LEN]; /* callers let through; NULL = everyone */
  int n_allow;
  uint8_t *in; /* pending partial frame */
  uint32_t in_len;
  uint8_t *out; /* queued output, out_off..out_len still to send */
  uint32_t out_len, out_off;
  /* Channel key (the client sent KX in HELLO): ERROR and REGISTERED to it
   * carry a MAC, so nobody else on the TCP path can forge them. */
  bool has_key;
  uint32_t mac_seq; /* MAC'd frames sent so far */
  uint8_t chan_key[NP_SIG_CHANNEL_KEY_LEN];
};

struct rs_list {
  struct rs_conn *head, *tail;
};

struct rs_counters {
  _Atomic uint64_t connections, open, registered, registrations, offers, answers, errors_sent,
      closed_bad_frame, closed_idle, closed_auth, closed_rate, refused_full, refused_per_ip;
};

struct np_rendezvous_server {
  np_logger log;
  np_addr local;
  int max_conn, max_unauth, auth_ms, idle_ms, rate;
  int conn_per_ip, unauth_per_ip, register_per_ip;
  struct rs_ip *ips[RS_IP_BUCKETS];
  int64_t ip_swept; /* last sweep of expired registration windows */
  uint32_t ip_salt;
  size_t max_frame;
  size_t out_max;

  int listen_fd;
  np_loop *loop;
  uint64_t sweep_timer; /* the next connection deadline (expire) */
  int reserve_fd; /* spare descriptor, given up to shed connections at EMFILE */
  np_registry *reg;

  struct rs_list unauth, regd;
  int n_open, n_unauth;
  struct rs_conn *dead;
  atomic_bool running;
  int64_t now;

  /* Log rate limit. */
  int64_t log_window;
  int log_lines;
  uint64_t log_suppressed;

  struct rs_counters count;

  uint8_t *scratch; /* pending partial frame + RS_READ_CHUNK */
  size_t scratch_cap;
  uint8_t stamp[NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME + RS_STAMP_ROOM];
  uint8_t small[1024]; /* server-made frames: ERROR, CHALLENGE, ... */
  np_sig_msg msg;      /* decoded input */
  np_sig_msg reply;    /* what we encode */
};

#define RS_INC(srv, f) atomic_fetch_add_explicit(&(srv)->count.f, 1, memory_order_relaxed)
#define RS_DEC(srv, f) atomic_fetch_sub_explicit(&(srv)->count.f, 1, memory_order_relaxed)

/* ------------------------------------------------------------------------ */
/* Logging                                                                   */
/* ------------------------------------------------------------------------ */

/* A connection-level message at INFO, rate-limited (see the file comment). */
static void conn_log(np_rendezvous_server *srv, const struct rs_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Starts a new one-second log window once the current one has passed,
 * first reporting how many lines the last one suppressed. */
static void log_window_roll(np_rendezvous_server *srv) {
  if (srv->now - srv->log_window < 1000)
    return;
  if (srv->log_suppressed)
    NP_LOGI(&srv->log, "%llu connection log lines suppressed (more than %d a second)",
            (unsigned long long)srv->log_suppressed, RS_LOG_PER_SEC);
  srv->log_window = srv->now;
  srv->log_lines = 0;
  srv->log_suppressed = 0;
}

static void conn_log(np_rendezvous_server *srv, const struct rs_conn *c, const char *fmt, ...) {
  if (!np_log_enabled(&srv->log, NP_LOG_INFO))
    return;
  log_window_roll(srv);
  if (srv->log_lines >= RS_LOG_PER_SEC) {
    srv->log_suppressed++;
    return;
  }
  srv->log_lines++;
  char text[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  char a[NP_ADDRSTRLEN];
  if (c && c->state == RS_REGISTERED) {
    char id[NP_PEER_ID_LEN + 1];
    np_peer_id_format(c->key, id);
    NP_LOGI(&srv->log, "%s (%s): %s", np_addr_format(&c->peer, a, sizeof a), id, text);
  } else if (c) {
    NP_LOGI(&srv->log, "%s: %s", np_addr_format(&c->peer, a, sizeof a), text);
  } else {
    NP_LOGI(&srv->log, "%s", text);
  }
}

/* ------------------------------------------------------------------------ */
/* Timer lists                                                               */
/* ------------------------------------------------------------------------ */

static void list_unlink(struct rs_list *l, struct rs_conn *c) {
  if (c->prev)
    c->prev->next = c->next;
  else
    l->head = c->next;
  if (c->next)
    c->next->prev = c->prev;
  else
    l->tail = c->prev;
  c->prev = c->next = NULL;
}

static void list_append(struct rs_list *l, struct rs_conn *c) {
  c->prev = l->tail;
  c->next = NULL;
  if (l->tail)
    l->tail->next = c;
  else
    l->head = c;
  l->tail = c;
}

static struct rs_list *list_of(np_rendezvous_server *srv, const struct rs_conn *c) {
  return c->state == RS_REGISTERED ? &srv->regd : &srv->unauth;
}

/* ------------------------------------------------------------------------ */
/* Per source address                                                        */
/* ------------------------------------------------------------------------ */

/* The table key of an address: IPv4 whole, IPv6 by its /64 (a host gets a
 * whole /64, so counting /128s would let one host be thousands). */
static void ip_key(const np_addr *a, uint8_t key[17]) {
  memset(key, 0, 17);
  if (a->u.sa.sa_family == AF_INET6) {
    const uint8_t *b = a->u.in6.sin6_addr.s6_addr;
    /* A v4-mapped address is an IPv4 host. */
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(b, mapped, 12) == 0) {
      key[0] = 4;
      memcpy(key + 1, b + 12, 4);
    } else {
      key[0] = 6;
      memcpy(key + 1, b, 8);
    }
  } else {
    key[0] = 4;
    memcpy(key + 1, &a->u.in4.sin_addr, 4);
  }
}

static unsigned ip_hash(const np_rendezvous_server *srv, const uint8_t key[17]) {
  /* FNV-1a, salted per server so a remote host cannot aim at one chain. */
  uint32_t h = 2166136261u ^ srv->ip_salt;
  for (int i = 0; i < 17; i++)
    h = (h ^ key[i]) * 16777619u;
  return h % RS_IP_BUCKETS;
}

/* The entry of a's address, made if missing (NULL only when out of
 * memory). */
static struct rs_ip *ip_get(np_rendezvous_server *srv, const np_addr *a) {
  uint8_t key[17];
  ip_key(a, key);
  unsigned h = ip_hash(srv, key);
  for (struct rs_ip *e = srv->ips[h]; e; e = e->next)
    if (memcmp(e->key, key, sizeof key) == 0)
      return e;
  struct rs_ip *e = calloc(1, sizeof *e);
  if (!e)
    return NULL;
  memcpy(e->key, key, sizeof key);
  e->next = srv->ips[h];
  srv->ips[h] = e;
  return e;
}

static bool ip_idle(const np_rendezvous_server *srv, const struct rs_ip *e) {
  return e->n_open == 0 &&
         (e->n_register == 0 || srv->now - e->window_start >= RS_REGISTER_WINDOW_MS);
}

/* Frees e if it holds nothing any more. */
static void ip_release(np_rendezvous_server *srv, struct rs_ip *e) {
  if (!ip_idle(srv, e))
    return;
  struct rs_ip **pp = &srv->ips[ip_hash(srv, e->key)];
  while (*pp != e)
    pp = &(*pp)->next;
  *pp = e->next;
  free(e);
}

/* Frees entries kept only for a registration window that has passed; at
 * most every few seconds (a walk of the buckets). */
static void ip_sweep(np_rendezvous_server *srv) {
  if (srv->now - srv->ip_swept < 5000)
    return;
  srv->ip_swept = srv->now;
  for (int i = 0; i < RS_IP_BUCKETS; i++) {
    struct rs_ip **pp = &srv->ips[i];
    while (*pp) {
      struct rs_ip *e = *pp;
      if (ip_idle(srv, e)) {
        *pp = e->next;
        free(e);
      } else {
        pp = &e->next;
      }
    }
  }
}

/* Counts one REGISTER attempt from e; false once over the limit. */
static bool ip_take_register(np_rendezvous_server *srv, struct rs_ip *e) {
  if (srv->now - e->window_start >= RS_REGISTER_WINDOW_MS) {
    e->window_start = srv->now;
    e->n_register = 0;
  }
  if (e->n_register >= srv->register_per_ip)
    return false;
  e->n_register++;
  return true;
}

static void ip_free_all(np_rendezvous_server *srv) {
  for (int i = 0; i < RS_IP_BUCKETS; i++)
    while (srv->ips[i]) {
      struct rs_ip *e = srv->ips[i];
      srv->ips[i] = e->next;
      free(e);
    }
}

/* ------------------------------------------------------------------------ */
/* Closing                                                                   */
/* ------------------------------------------------------------------------ */

/* Reads and drops what the peer already sent, so close() sends FIN rather
 * than RST (an RST can make the peer lose the ERROR we just wrote).
 * Bounded: a peer still streaming gets its RST. */
static void drain_input(int fd) {
  uint8_t sink[4096];
  for (int i = 0; i < 16; i++) {
    ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
    if (n <= 0)
      break;
  }
}

/* Closes a connection now: out of the registry, the timer lists and the
 * loop, counted. The struct lives until the end of the loop turn, because a
 * callback of the current batch may still hold it. */
static void conn_close(np_rendezvous_server *srv, struct rs_conn *c, enum rs_why why) {
  if (c->state == RS_DEAD)
    return;
  list_unlink(list_of(srv, c), c);
  if (c->state == RS_REGISTERED) {
    if (srv->reg->ops->remove(srv->reg, c->key, c))
      RS_DEC(srv, registered);
  } else {
    srv->n_unauth--;
    c->ip->n_unauth--;
  }
  c->ip->n_open--;
  ip_release(srv, c->ip);
  c->ip = NULL;
  switch (why) {
  case RS_WHY_NONE:
    break;
  case RS_WHY_BAD_FRAME:
    RS_INC(srv, closed_bad_frame);
    break;
  case RS_WHY_IDLE:
    RS_INC(srv, closed_idle);
    break;
  case RS_WHY_AUTH:
    RS_INC(srv, closed_auth);
    break;
  case RS_WHY_RATE:
    RS_INC(srv, closed_rate);
    break;
  }
  drain_input(c->fd);
  np__loop_del_fd(srv->loop, c->fd);
  close(c->fd);
  c->fd = -1;
  c->state = RS_DEAD;
  free(c->in);
  free(c->out);
  free(c->allow);
  c->in = c->out = NULL;
  c->allow = NULL;
  c->dead_next = srv->dead;
  srv->dead = c;
  srv->n_open--;
  RS_DEC(srv, open);
}

static void reap_dead(np_rendezvous_server *srv) {
  while (srv->dead) {
    struct rs_conn *c = srv->dead;
    srv->dead = c->dead_next;
    free(c);
  }
}

/* ------------------------------------------------------------------------ */
/* Output                                                                    */
/* ------------------------------------------------------------------------ */

static void set_want_out(np_rendezvous_server *srv, struct rs_conn *c, bool on) {
  if (c->want_out == on)
    return;
  if (np__loop_mod_fd(srv->loop, c->fd, NP_LOOP_READ | (on ? NP_LOOP_WRITE : 0)) == 0)
    c->want_out = on;
}

/* Writes queued output. Returns false if the connection was closed. */
static bool flush_out(np_rendezvous_server *srv, struct rs_conn *c) {
  while (c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      conn_log(srv, c, "closed: send: %s", strerror(errno));
      conn_close(srv, c, RS_WHY_NONE);
      return false;
    }
    c->out_off += (uint32_t)n;
  }
  if (c->out_off == c->out_len) {
    free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = 0;
    set_want_out(srv, c, false);
  } else {
    set_want_out(srv, c, true);
  }
  return true;
}

/* Sends one frame: straight to the socket when nothing is queued, the rest
 * queued. A peer whose queue would pass out_max does not read: closed.
 * Returns false if the connection is (now) closed. */
static bool send_frame(np_rendezvous_server *srv, struct rs_conn *c, const uint8_t *buf,
                       size_t len) {
  if (c->state == RS_DEAD)
    return false;
  size_t done = 0;
  if (c->out_len == 0) {
    while (done < len) {
      ssize_t n = send(c->fd, buf + done, len - done, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR)
          continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
          break;
        conn_log(srv, c, "closed: send: %s", strerror(errno));
        conn_close(srv, c, RS_WHY_NONE);
        return false;
      }
      done += (size_t)n;
    }
    if (done == len)
      return true;
  }
  size_t pending = c->out_len - c->out_off;
  size_t need = pending + (len - done);
  if (need > srv->out_max) {
    conn_log(srv, c, "closed: output queue over %zu bytes (the peer does not read)", srv->out_max);
    conn_close(srv, c, RS_WHY_RATE);
    return false;
  }
  uint8_t *q = malloc(need);
  if (!q) {
    conn_log(srv, c, "closed: out of memory for its output queue");
    conn_close(srv, c, RS_WHY_NONE);
    return false;
  }
  if (pending)
    memcpy(q, c->out + c->out_off, pending);
  memcpy(q + pending, buf + done, len - done);
  free(c->out);
  c->out = q;
  c->out_off = 0;
  c->out_len = (uint32_t)need;
  set_want_out(srv, c, true);
  return true;
}

/* Encodes srv->reply (unsigned, server-made) and sends it; ERROR and
 * REGISTERED get a MAC when the connection has a key: they are the frames
 * that end a call or a registration (see signaling.h). */
static bool send_reply(np_rendezvous_server *srv, struct rs_conn *c) {
  int n = np__sig_encode(&srv->reply, NULL, srv->small, sizeof srv->small);
  if (n > 0 && c->has_key &&
      (srv->reply.type == NP_SIG_ERROR || srv->reply.type == NP_SIG_REGISTERED)) {
    n = np__sig_append_mac(srv->small, (size_t)n, sizeof srv->small, c->chan_key, c->mac_seq);
    if (n > 0)
      c->mac_seq++;
  }
  if (n <= 0) {
    NP_LOGE(&srv->log, "cannot encode %s: %s", np__sig_type_name(srv->reply.type), np_strerror(n));
    return c->state != RS_DEAD;
  }
  return send_frame(srv, c, srv->small, (size_t)n);
}

static void reply_init(np_rendezvous_server *srv, uint8_t type) {
  memset(&srv->reply, 0, sizeof srv->reply);
  srv->reply.type = type;
}

/* Sends ERROR code with text, echoing the session and peer it is about
 * (either may be NULL). Returns false if the connection closed meanwhile. */
static bool send_error(np_rendezvous_server *srv, struct rs_conn *c, uint16_t code,
                       const char *text, const uint8_t *session, const uint8_t *to) {
  reply_init(srv, NP_SIG_ERROR);
  srv->reply.error_code = code;
  snprintf(srv->reply.error_text, sizeof srv->reply.error_text, "%s", text);
  if (session) {
    srv->reply.has_session = true;
    memcpy(srv->reply.session, session, NP_SIG_SESSION_LEN);
  }
  if (to) {
    srv->reply.has_to = true;
    memcpy(srv->reply.to, to, NP_PUBKEY_LEN);
  }
  RS_INC(srv, errors_sent);
  return send_reply(srv, c);
}

/* ERROR, then close: for violations that end the connection. */
static void fail_conn(np_rendezvous_server *srv, struct rs_conn *c, enum rs_why why, uint16_t code,
                      const char *text) {
  conn_log(srv, c, "closed: %u %s", (unsigned)code, text);
  if (send_error(srv, c, code, text, NULL, NULL))
    conn_close(srv, c, why);
}

/* ------------------------------------------------------------------------ */
/* Protocol                                                                  */
/* ------------------------------------------------------------------------ */

/* Takes one message from the connection's token bucket. */
static bool take_token(np_rendezvous_server *srv, struct rs_conn *c) {
  int64_t cap = (int64_t)srv->rate * 1000 * RS_BURST_FACTOR;
  int64_t t = c->tokens + (srv->now - c->refilled) * srv->rate;
  c->tokens = (int32_t)(t > cap ? cap : t);
  c->refilled = srv->now;
  if (c->tokens < 1000)
    return false;
  c->tokens -= 1000;
  return true;
}

static void on_hello(np_rendezvous_server *srv, struct rs_conn *c) {
  if (c->state != RS_NEW) {
    fail_conn(srv, c, RS_WHY_BAD_FRAME, NP_SIG_E_BAD_REQUEST, "HELLO out of order");
    return;
  }
  memcpy(c->key, srv->msg.pubkey, NP_PUBKEY_LEN);
  if (np__random_bytes(c->nonce, sizeof c->nonce) != 0) {
    NP_LOGE(&srv->log, "getrandom failed: cannot issue a challenge");
    conn_close(srv, c, RS_WHY_NONE);
    return;
  }
  reply_init(srv, NP_SIG_CHALLENGE);
  srv->reply.has_nonce = true;
  memcpy(srv->reply.nonce, c->nonce, NP_SIG_NONCE_LEN);
  srv->reply.observed = c->peer;
  if (srv->msg.cand.has_kx) {
    /* Our half of the channel key goes in CHALLENGE, itself sent before
     * the key exists: a forged CHALLENGE only makes the attempt fail. */
    uint8_t sk[NP_SIG_KX_LEN];
    int krc = np__sig_kx_keypair(srv->reply.cand.kx, sk);
    if (krc == 0)
      krc = np__sig_channel_key(true, srv->reply.cand.kx, sk, srv->msg.cand.kx, c->nonce,
                               c->chan_key);
    sodium_memzero(sk, sizeof sk);
    if (krc != 0) {
      fail_conn(srv, c, RS_WHY_AUTH, NP_SIG_E_AUTH, "unusable KX key");
      return;
    }
    srv->reply.cand.has_kx = true;
    c->has_key = true;
  }
  if (send_reply(srv, c))
    c->state = RS_CHALLENGED;
}

static void on_register(np_rendezvous_server *srv, struct rs_conn *c) {
  const np_sig_msg *m = &srv->msg;
  if (c->state != RS_CHALLENGED) {
    fail_conn(srv, c, RS_WHY_BAD_FRAME, NP_SIG_E_BAD_REQUEST, "REGISTER out of order");
    return;
  }
  if (memcmp(m->pubkey, c->key, NP_PUBKEY_LEN) != 0) {
    fail_conn(srv, c, RS_WHY_AUTH, NP_SIG_E_AUTH, "REGISTER key differs from HELLO");
    return;
  }
  if (!ip_take_register(srv, c->ip)) {
    fail_conn(srv, c, RS_WHY_RATE, NP_SIG_E_RATE, "too many registrations from your address");
    return;
  }
  if (np__sig_verify_register(m, c->nonce) != 0) {
    fail_conn(srv, c, RS_WHY_AUTH, NP_SIG_E_AUTH, "bad REGISTER signature");
    return;
  }
  uint8_t(*allow)[NP_PUBKEY_LEN] = NULL;
  if (m->n_allow > 0) {
    allow = malloc((size_t)m->n_allow * NP_PUBKEY_LEN);
    if (!allow) {
      conn_log(srv, c, "closed: out of memory for its allow list");
      conn_close(srv, c, RS_WHY_NONE);
      return;
    }
    memcpy(allow, m->allow, (size_t)m->n_allow * NP_PUBKEY_LEN);
  }
  void *prev = NULL;
  if (srv->reg->ops->put(srv->reg, c->key, c, &prev) != 0) {
    free(allow);
    conn_log(srv, c, "closed: registry out of memory");
    conn_close(srv, c, RS_WHY_NONE);
    return;
  }
  /* Now registered: out of the auth list, into the idle list. */
  list_unlink(&srv->unauth, c);
  srv->n_unauth--;
  c->ip->n_unauth--;
  c->state = RS_REGISTERED;
  c->allow = allow;
  c->n_allow = m->n_allow;
  c->deadline = srv->now + srv->idle_ms;
  list_append(&srv->regd, c);
  RS_INC(srv, registered);
  RS_INC(srv, registrations);
  if (prev) {
    /* The same key from a new connection: the newest proof of the key wins
     * (a peer that lost its connection comes back before the old one times
     * out). The old connection is told why and closed; the registry already
     * maps the key to c, so its close unregisters nothing. */
    struct rs_conn *old = prev;
    RS_DEC(srv, registered);
    conn_log(srv, old, "closed: 409 registered again from another connection");
    if (send_error(srv, old, NP_SIG_E_REPLACED, "registered again from another connection", NULL,
                   NULL))
      conn_close(srv, old, RS_WHY_NONE);
  }
  if (np_log_enabled(&srv->log, NP_LOG_DEBUG)) {
    char a[NP_ADDRSTRLEN], id[NP_PEER_ID_LEN + 1];
    np_peer_id_format(c->key, id);
    NP_LOGD(&srv->log, "registered %s from %s (%d allowed callers)", id,
            np_addr_format(&c->peer, a, sizeof a), c->n_allow);
  }
  reply_init(srv, NP_SIG_REGISTERED);
  srv->reply.observed = c->peer;
  send_reply(srv, c);
}

static bool allowed(const struct rs_conn *callee, const uint8_t caller[NP_PUBKEY_LEN]) {
  if (callee->n_allow == 0)
    return true;
  for (int i = 0; i < callee->n_allow; i++)
    if (memcmp(callee->allow[i], caller, NP_PUBKEY_LEN) == 0)
      return true;
  return false;
}

/* Whether c offered session to peer (its answer and READY may come back
 * whatever c's allow list says). */
static bool called(const struct rs_conn *c, const uint8_t peer[NP_PUBKEY_LEN],
                   const uint8_t session[NP_SIG_SESSION_LEN]) {
  for (int i = 0; i < c->n_calls; i++)
    if (memcmp(c->calls[i].to, peer, NP_PUBKEY_LEN) == 0 &&
        memcmp(c->calls[i].session, session, NP_SIG_SESSION_LEN) == 0)
      return true;
  return false;
}

/* Records an offer c sent; the oldest of RS_CALLS is forgotten (an agent
 * has one call at a time; a few cover retries). */
static void remember_call(struct rs_conn *c, const uint8_t to[NP_PUBKEY_LEN],
                          const uint8_t session[NP_SIG_SESSION_LEN]) {
  if (called(c, to, session))
    return;
  struct rs_call *k = &c->calls[c->next_call];
  memcpy(k->to, to, NP_PUBKEY_LEN);
  memcpy(k->session, session, NP_SIG_SESSION_LEN);
  c->next_call = (uint8_t)((c->next_call + 1) % RS_CALLS);
  if (c->n_calls < RS_CALLS)
    c->n_calls++;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A receiver drops a signed message whose TIMESTAMP is further than the
 * window from its own clock, and says so only in its own log. The sender
 * learns it here, with the figure, instead of waiting for its timeout. The
 * message is still forwarded: the receiver's clock, not ours, decides. */
static void check_clock(np_rendezvous_server *srv, struct rs_conn *c, const np_sig_msg *m) {
  int64_t ts = m->timestamp_ms > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)m->timestamp_ms;
  int64_t skew = ts - wall_ms(); /* > 0: the sender's clock is ahead */
  if (skew >= -NP_SIG_CLOCK_WINDOW_MS && skew <= NP_SIG_CLOCK_WINDOW_MS)
    return;
  long long secs = (long long)((skew < 0 ? -(skew / 1000) : skew / 1000));
  char text[NP_SIG_MAX_TEXT];
  snprintf(text, sizeof text,
           "your clock is %lld s %s the server's (more than %d s): peers will drop your %s",
           secs, skew > 0 ? "ahead of" : "behind", NP_SIG_CLOCK_WINDOW_MS / 1000,
           np__sig_type_name(m->type));
  conn_log(srv, c, "%s with a clock %lld s %s ours", np__sig_type_name(m->type), secs,
           skew > 0 ? "ahead of" : "behind");
  send_error(srv, c, NP_SIG_E_CLOCK, text, m->session, m->to);
}

/* OFFER, ANSWER or READY from a registered peer: frame/len is the whole
 * frame as received (prefix + body). */
static void on_forward(np_rendezvous_server *srv, struct rs_conn *c, const uint8_t *frame,
                       size_t len) {
  const np_sig_msg *m = &srv->msg;
  bool offer = m->type == NP_SIG_OFFER;
  if (c->state != RS_REGISTERED) {
    char why[64];
    snprintf(why, sizeof why, "%s before registration", np__sig_type_name(m->type));
    fail_conn(srv, c, RS_WHY_BAD_FRAME, NP_SIG_E_BAD_REQUEST, why);
    return;
  }
  /* Speaking for another key is impersonation, not a mistake: close. */
  if (memcmp(m->from, c->key, NP_PUBKEY_LEN) != 0) {
    fail_conn(srv, c, RS_WHY_AUTH, NP_SIG_E_AUTH, "FROM is not the registered key");
    return;
  }
  if (np__sig_verify(frame + NP_SIG_LEN_PREFIX, len - NP_SIG_LEN_PREFIX, m) != 0) {
    fail_conn(srv, c, RS_WHY_AUTH, NP_SIG_E_AUTH, "bad signature");
    return;
  }
  check_clock(srv, c, m);
  if (c->state == RS_DEAD)
    return;
  struct rs_conn *to = srv->reg->ops->get(srv->reg, m->to);
  if (!to) {
    send_error(srv, c, NP_SIG_E_UNKNOWN_PEER, "no such peer registered", m->session, m->to);
    return;
  }
  /* One rule for all three (see the file comment); the receiver never
   * learns of a refused sender. */
  if (!allowed(to, m->from) && !called(to, m->from, m->session)) {
    send_error(srv, c, NP_SIG_E_REFUSED, "the peer does not accept calls from you", m->session,
               m->to);
    return;
  }
  memcpy(srv->stamp, frame, len);
  int n = np__sig_stamp_observed(srv->stamp, len, sizeof srv->stamp, &c->peer);
  if (n < 0 || (size_t)n - NP_SIG_LEN_PREFIX > NP_SIG_MAX_FRAME) {
    /* Too big for a receiver once stamped: the sender must send less. */
    send_error(srv, c, NP_SIG_E_TOO_LARGE, "frame too large to forward", m->session, m->to);
    return;
  }
  if (send_frame(srv, to, srv->stamp, (size_t)n)) {
    if (offer) {
      remember_call(c, m->to, m->session);
      RS_INC(srv, offers);
    }
    if (m->type == NP_SIG_ANSWER)
      RS_INC(srv, answers);
  }
}

/* Handles one whole frame (prefix + body) from c. */
static void on_frame(np_rendezvous_server *srv, struct rs_conn *c, const uint8_t *frame,
                     size_t len) {
  if (!take_token(srv, c)) {
    fail_conn(srv, c, RS_WHY_RATE, NP_SIG_E_RATE, "too many messages");
    return;
  }
  if (c->state == RS_REGISTERED) {
    c->deadline = srv->now + srv->idle_ms;
    list_unlink(&srv->regd, c);
    list_append(&srv->regd, c);
  }
  int rc = np__sig_decode(frame + NP_SIG_LEN_PREFIX, len - NP_SIG_LEN_PREFIX, &srv->msg);
  if (rc == NP_ERR_UNSUPPORTED) {
    fail_conn(srv, c, RS_WHY_BAD_FRAME, NP_SIG_E_VERSION, "protocol version not supported");
    return;
  }
  if (rc != 0) {
    fail_conn(srv, c, RS_WHY_BAD_FRAME, NP_SIG_E_BAD_REQUEST, "malformed message");
    return;
  }
  switch (srv->msg.type) {
  case NP_SIG_HELLO:
    on_hello(srv, c);
    break;
  case NP_SIG_REGISTER:
    on_register(srv, c);
    break;
  case NP_SIG_OFFER:
  case NP_SIG_ANSWER:
  case NP_SIG_READY:
    on_forward(srv, c, frame, len);
    break;
  case NP_SIG_PING:
    reply_init(srv, NP_SIG_PONG);
    send_reply(srv, c);
    break;
  case NP_SIG_PONG:
    break; /* an answer to nothing we sent; harmless */
  default:
    fail_conn(srv, c, RS_WHY_BAD_FRAME, NP_SIG_E_BAD_REQUEST, "unexpected message type");
    break;
  }
}

/* ------------------------------------------------------------------------ */
/* Input                                                                     */
/* ------------------------------------------------------------------------ */

/* Reads what is there (one chunk: level-triggered epoll calls again if more
 * is waiting, which keeps one busy peer from starving the others), handles
 * every whole frame and keeps the partial one. */
static void on_readable(np_rendezvous_server *srv, struct rs_conn *c) {
  size_t have = c->in_len;
  if (have)
    memcpy(srv->scratch, c->in, have);
  ssize_t n;
  do
    n = recv(c->fd, srv->scratch + have, srv->scratch_cap - have, 0);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return;
    conn_log(srv, c, "closed: recv: %s", strerror(errno));
    conn_close(srv, c, RS_WHY_NONE);
    return;
  }
  if (n == 0) {
    if (have)
      conn_log(srv, c, "closed by the peer in the middle of a frame");
    conn_close(srv, c, RS_WHY_NONE);
    return;
  }
  size_t total = have + (size_t)n, off = 0;
  while (c->state != RS_DEAD && total - off >= NP_SIG_LEN_PREFIX) {
    /* The length prefix is checked as soon as it is here, before any of the
     * body is kept: an oversized frame is refused, not buffered. */
    uint32_t body = rd32(srv->scratch + off);
    if (body > srv->max_frame) {
      fail_conn(srv, c, RS_WHY_BAD_FRAME, NP_SIG_E_TOO_LARGE, "frame larger than the limit");
      return;
    }
    if (body < NP_SIG_HEADER_LEN) {
      fail_conn(srv, c, RS_WHY_BAD_FRAME, NP_SIG_E_BAD_REQUEST, "frame shorter than a header");
      return;
    }
    size_t flen = NP_SIG_LEN_PREFIX + (size_t)body;
    if (total - off < flen)
      break;
    on_frame(srv, c, srv->scratch + off, flen);
    off += flen;
  }
  if (c->state == RS_DEAD)
    return;
  size_t left = total - off;
  free(c->in);
  c->in = NULL;
  c->in_len = 0;
  if (left) {
    c->in = malloc(left);
    if (!c->in) {
      conn_log(srv, c, "closed: out of memory for its input");
      conn_close(srv, c, RS_WHY_NONE);
      return;
    }
    memcpy(c->in, srv->scratch + off, left);
    c->in_len = (uint32_t)left;
  }
}

/* ------------------------------------------------------------------------ */
/* Accepting                                                                 */
/* ------------------------------------------------------------------------ */

/* Refuses a fresh socket: 503 when the server is full (the peer may retry
 * elsewhere or later), silence when too many have not registered yet (a
 * flood gets nothing but a closed socket). */
static void refuse(np_rendezvous_server *srv, int fd, const np_addr *peer, bool full,
                   const char *why) {
  if (full) {
    reply_init(srv, NP_SIG_ERROR);
    srv->reply.error_code = NP_SIG_E_UNAVAILABLE;
    snprintf(srv->reply.error_text, sizeof srv->reply.error_text, "%s", why);
    int n = np__sig_encode(&srv->reply, NULL, srv->small, sizeof srv->small);
    if (n > 0 && send(fd, srv->small, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) == n)
      RS_INC(srv, errors_sent);
  }
  RS_INC(srv, refused_full);
  close(fd);
  char a[NP_ADDRSTRLEN];
  np_addr_format(peer, a, sizeof a);
  conn_log(srv, NULL, "%s: refused: %s%s", a, full ? "503 " : "", why);
}

static void on_conn_fd(np_loop *loop, int fd, unsigned events, void *user) {
  (void)fd;
  struct rs_conn *c = user;
  np_rendezvous_server *srv = c->srv;
  srv->now = np__loop_now(loop);
  if (c->state == RS_DEAD)
    return; /* closed earlier in this batch */
  if (events & NP_LOOP_WRITE)
    if (!flush_out(srv, c))
      return;
  if (events & (NP_LOOP_READ | NP_LOOP_ERROR))
    on_readable(srv, c);
}

static void accept_one(np_rendezvous_server *srv, int fd, const np_addr *peer) {
  if (srv->n_open >= srv->max_conn) {
    refuse(srv, fd, peer, true, "server full");
    return;
  }
  if (srv->n_unauth >= srv->max_unauth) {
    refuse(srv, fd, peer, false, "too many unregistered connections");
    return;
  }
  struct rs_ip *ip = ip_get(srv, peer);
  if (!ip) {
    close(fd);
    return;
  }
  if (ip->n_open >= srv->conn_per_ip || ip->n_unauth >= srv->unauth_per_ip) {
    /* Counted apart from refused_full: the server is not full, this host
     * is. Silence for unregistered ones, as for the global limit. */
    bool total = ip->n_open >= srv->conn_per_ip;
    RS_INC(srv, refused_per_ip);
    refuse(srv, fd, peer, total,
           total ? "too many connections from your address"
                 : "too many unregistered connections from its address");
    ip_release(srv, ip);
    return;
  }
  struct rs_conn *c = calloc(1, sizeof *c);
  if (!c) {
    close(fd);
    ip_release(srv, ip);
    return;
  }
  c->srv = srv;
  c->ip = ip;
  c->fd = fd;
  c->peer = *peer;
  c->state = RS_NEW;
  c->tokens = srv->rate * 1000 * RS_BURST_FACTOR;
  c->refilled = srv->now;
  c->deadline = srv->now + srv->auth_ms;
  if (np__loop_add_fd(srv->loop, fd, NP_LOOP_READ, on_conn_fd, c) != 0) {
    NP_LOGW(&srv->log, "epoll_ctl(ADD): %s", strerror(errno));
    close(fd);
    free(c);
    ip_release(srv, ip);
    return;
  }
  /* Small frames, each written whole: no reason to wait for Nagle. */
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  list_append(&srv->unauth, c);
  srv->n_unauth++;
  srv->n_open++;
  ip->n_open++;
  ip->n_unauth++;
  RS_INC(srv, open);
  RS_INC(srv, connections);
}

static void on_listen(np_rendezvous_server *srv) {
  for (int i = 0; i < RS_ACCEPT_BATCH; i++) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = accept4(srv->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno == EMFILE || errno == ENFILE) {
        /* Out of descriptors: the pending connection would make a
         * level-triggered listener spin. Give up the spare descriptor,
         * accept and close the connection, take the spare back. */
        conn_log(srv, NULL, "out of file descriptors (%s): shedding a connection", strerror(errno));
        if (srv->reserve_fd >= 0) {
          close(srv->reserve_fd);
          int shed = accept4(srv->listen_fd, NULL, NULL, SOCK_CLOEXEC);
          if (shed >= 0) {
            close(shed);
            RS_INC(srv, refused_full);
          }
          srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
      } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        conn_log(srv, NULL, "accept: %s", strerror(errno));
      }
      return;
    }
    np_addr peer;
    if (np__addr_from_sockaddr((struct sockaddr *)&ss, sl, &peer) != 0) {
      close(fd);
      continue;
    }
    accept_one(srv, fd, &peer);
  }
}

static void on_listen_fd(np_loop *loop, int fd, unsigned events, void *user) {
  (void)fd;
  (void)events;
  np_rendezvous_server *srv = user;
  srv->now = np__loop_now(loop);
  on_listen(srv);
}

/* ------------------------------------------------------------------------ */
/* Loop                                                                      */
/* ------------------------------------------------------------------------ */

/* Closes connections whose timer ran out and returns the wait until the
 * next deadline (capped at RS_MAX_WAIT_MS). */
static int expire(np_rendezvous_server *srv) {
  while (srv->unauth.head && srv->unauth.head->deadline <= srv->now) {
    struct rs_conn *c = srv->unauth.head;
    conn_log(srv, c, "closed: not registered within %d ms", srv->auth_ms);
    conn_close(srv, c, RS_WHY_AUTH);
  }
  while (srv->regd.head && srv->regd.head->deadline <= srv->now) {
    struct rs_conn *c = srv->regd.head;
    conn_log(srv, c, "closed: idle for %d ms", srv->idle_ms);
    conn_close(srv, c, RS_WHY_IDLE);
  }
  ip_sweep(srv);
  /* A flood that stopped still gets its "suppressed" line. */
  if (srv->log_suppressed)
    log_window_roll(srv);
  int64_t next = srv->now + RS_MAX_WAIT_MS;
  if (srv->unauth.head && srv->unauth.head->deadline < next)
    next = srv->unauth.head->deadline;
  if (srv->regd.head && srv->regd.head->deadline < next)
    next = srv->regd.head->deadline;
  return (int)(next - srv->now);
}

static void on_sweep(np_loop *loop, uint64_t id, void *user) {
  (void)loop;
  (void)id;
  (void)user; /* the wait ends; before_wait does the sweep */
}

/* Before each wait: close what timed out, free what closed in the last
 * turn (no callback holds it any more), and arm the timer for the next
 * deadline. */
static void before_wait(np_loop *loop, void *user) {
  np_rendezvous_server *srv = user;
  srv->now = np__loop_now(loop);
  int wait = expire(srv);
  reap_dead(srv);
  np__loop_cancel_timer(loop, srv->sweep_timer);
  srv->sweep_timer = np__loop_add_timer(loop, srv->now + wait, on_sweep, srv);
}

NP_EXPORT int np_rendezvous_server_run(np_rendezvous_server *srv) {
  if (!srv)
    return NP_ERR_INVAL;
  bool expected = false;
  if (!atomic_compare_exchange_strong(&srv->running, &expected, true))
    return NP_ERR_INVAL;
  np__loop_set_before_wait(srv->loop, before_wait, srv);
  int rc = np__loop_run(srv->loop); /* consumes the stop request: may run again */
  if (rc != 0)
    NP_LOGE(&srv->log, "epoll_wait: %s", strerror(errno));
  reap_dead(srv);
  atomic_store(&srv->running, false);
  return rc;
}

NP_EXPORT void np_rendezvous_server_stop(np_rendezvous_server *srv) {
  if (!srv)
    return;
  np__loop_stop(srv->loop); /* async-signal-safe */
}

NP_EXPORT void np_rendezvous_server_stats(const np_rendezvous_server *srv,
                                          np_rendezvous_stats *out) {
  if (!out)
    return;
  memset(out, 0, sizeof *out);
  if (!srv)
    return;
  const struct rs_counters *c = &srv->count;
#define RS_LOAD_(f) out->f = atomic_load_explicit(&c->f, memory_order_relaxed);
  RS_LOAD_(connections)
  RS_LOAD_(open)
  RS_LOAD_(registered)
  RS_LOAD_(registrations)
  RS_LOAD_(offers)
  RS_LOAD_(answers)
  RS_LOAD_(errors_sent)
  RS_LOAD_(closed_bad_frame)
  RS_LOAD_(closed_idle)
  RS_LOAD_(closed_auth)
  RS_LOAD_(closed_rate)
  RS_LOAD_(refused_full)
  RS_LOAD_(refused_per_ip)
#undef RS_LOAD_
}

NP_EXPORT const np_addr *np_rendezvous_server_local(const np_rendezvous_server *srv) {
  return srv ? &srv->local : NULL;
}

/* ------------------------------------------------------------------------ */
/* Life cycle                                                                */
/* ------------------------------------------------------------------------ */

static void free_list(struct rs_list *l) {
  while (l->head) {
    struct rs_conn *c = l->head;
    l->head = c->next;
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c->allow);
    free(c);
  }
  l->tail = NULL;
}

NP_EXPORT void np_rendezvous_server_free(np_rendezvous_server *srv) {
  if (!srv)
    return;
  reap_dead(srv);
  free_list(&srv->unauth);
  free_list(&srv->regd);
  ip_free_all(srv);
  if (srv->reg)
    srv->reg->ops->free(srv->reg);
  if (srv->listen_fd >= 0)
    close(srv->listen_fd);
  np__loop_free(srv->loop);
  if (srv->reserve_fd >= 0)
    close(srv->reserve_fd);
  free(srv->scratch);
  free(srv);
}

/* Raises the descriptor limit to what max_conn needs (the hard limit too
 * when privileged); logs when even that is not enough (the server then sheds
 * connections at EMFILE instead of spinning). */
static void raise_nofile(np_rendezvous_server *srv) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  rlim_t want = (rlim_t)srv->max_conn + RS_FD_SLACK;
  if (rl.rlim_cur >= want)
    return;
  /* With CAP_SYS_RESOURCE (root, or a unit that grants it) the hard limit
   * can rise too, up to fs.nr_open; try that before settling for less. */
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
    struct rlimit hard = {.rlim_cur = want, .rlim_max = want};
    if (setrlimit(RLIMIT_NOFILE, &hard) == 0)
      return;
  }
  rlim_t target = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want ? rl.rlim_max : want;
  if (target > rl.rlim_cur) {
    struct rlimit nl = {.rlim_cur = target, .rlim_max = rl.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &nl) == 0)
      rl.rlim_cur = target;
  }
  if (rl.rlim_cur < want)
    NP_LOGW(&srv->log,
            "RLIMIT_NOFILE is %llu (hard limit %llu): fewer than the %d connections asked "
            "for fit; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower "
            "max_connections",
            (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max, srv->max_conn);
}

static int open_listener(np_rendezvous_server *srv, const np_addr *addr) {
  char a[NP_ADDRSTRLEN];
  np_addr_format(addr, a, sizeof a);
  int fd = socket(addr->u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    NP_LOGE(&srv->log, "socket: %s", strerror(errno));
    return NP_ERR_SYS;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (addr->u.sa.sa_family == AF_INET6)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind(fd, &addr->u.sa, np_addr_len(addr)) != 0) {
    NP_LOGE(&srv->log, "bind %s: %s", a, strerror(errno));
    close(fd);
    return NP_ERR_SYS;
  }
  /* The kernel caps the backlog at net.core.somaxconn. */
  if (listen(fd, 4096) != 0) {
    NP_LOGE(&srv->log, "listen %s: %s", a, strerror(errno));
    close(fd);
    return NP_ERR_SYS;
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0 ||
      np__addr_from_sockaddr((struct sockaddr *)&ss, sl, &srv->local) != 0) {
    NP_LOGE(&srv->log, "getsockname: %s", strerror(errno));
    close(fd);
    return NP_ERR_SYS;
  }
  srv->listen_fd = fd;
  return 0;
}

NP_EXPORT int np_rendezvous_server_new(const np_rendezvous_server_config *cfg,
                                       np_rendezvous_server **out) {
  if (!out)
    return NP_ERR_INVAL;
  *out = NULL;
  if (!cfg)
    return NP_ERR_INVAL;
  np_rendezvous_server *srv = calloc(1, sizeof *srv);
  if (!srv)
    return NP_ERR_NOMEM;
  srv->listen_fd = srv->reserve_fd = -1;
  srv->log = (np_logger){cfg->log, cfg->log_user, cfg->log_level};
  int rc = NP_ERR_INVAL;

  if (!np__addr_is_set(&cfg->listen)) {
    NP_LOGE(&srv->log, "no listen address");
    goto fail;
  }
  if (cfg->max_connections < 0 || cfg->max_unauthenticated < 0 || cfg->auth_timeout_ms < 0 ||
      cfg->idle_timeout_ms < 0 || cfg->max_frame < 0 || cfg->msgs_per_sec < 0 ||
      cfg->max_conn_per_ip < 0 || cfg->max_unauth_per_ip < 0 || cfg->max_register_per_ip < 0) {
    NP_LOGE(&srv->log, "negative limit in the configuration");
    goto fail;
  }
  if (cfg->max_frame && (cfg->max_frame < 256 || cfg->max_frame > NP_SIG_MAX_FRAME)) {
    /* Below 256 a REGISTER with a few allowed callers would not fit. */
    NP_LOGE(&srv->log, "max_frame must be 256..%d, not %d", NP_SIG_MAX_FRAME, cfg->max_frame);
    goto fail;
  }
  if (cfg->msgs_per_sec > 1000000) {
    NP_LOGE(&srv->log, "msgs_per_sec must be at most 1000000, not %d", cfg->msgs_per_sec);
    goto fail;
  }
  srv->max_conn = cfg->max_connections ? cfg->max_connections : RS_DEFAULT_MAX_CONN;
  srv->max_unauth = cfg->max_unauthenticated ? cfg->max_unauthenticated : RS_DEFAULT_MAX_UNAUTH;
  srv->auth_ms = cfg->auth_timeout_ms ? cfg->auth_timeout_ms : RS_DEFAULT_AUTH_MS;
  srv->idle_ms = cfg->idle_timeout_ms ? cfg->idle_timeout_ms : RS_DEFAULT_IDLE_MS;
  srv->max_frame = cfg->max_frame ? (size_t)cfg->max_frame : NP_SIG_MAX_FRAME;
  srv->rate = cfg->msgs_per_sec ? cfg->msgs_per_sec : RS_DEFAULT_RATE;
  srv->conn_per_ip = cfg->max_conn_per_ip ? cfg->max_conn_per_ip : RS_DEFAULT_CONN_PER_IP;
  srv->unauth_per_ip = cfg->max_unauth_per_ip ? cfg->max_unauth_per_ip : RS_DEFAULT_UNAUTH_PER_IP;
  srv->register_per_ip =
      cfg->max_register_per_ip ? cfg->max_register_per_ip : RS_DEFAULT_REGISTER_PER_IP;
  if (np__random_bytes((uint8_t *)&srv->ip_salt, sizeof srv->ip_salt) != 0)
    srv->ip_salt = (uint32_t)np__now_ms();
  srv->out_max = RS_OUT_FRAMES * (NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME + RS_STAMP_ROOM);
  srv->scratch_cap = NP_SIG_LEN_PREFIX + srv->max_frame + RS_READ_CHUNK;
  srv->scratch = malloc(srv->scratch_cap);
  srv->reg = np__registry_memory_new();
  if (!srv->scratch || !srv->reg) {
    rc = NP_ERR_NOMEM;
    goto fail;
  }
  raise_nofile(srv);
  rc = open_listener(srv, &cfg->listen);
  if (rc != 0)
    goto fail;
  rc = NP_ERR_SYS;
  srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (np__loop_new(NULL, &srv->loop) != 0 || srv->reserve_fd < 0) {
    NP_LOGE(&srv->log, "epoll/eventfd/open: %s", strerror(errno));
    goto fail;
  }
  if (np__loop_add_fd(srv->loop, srv->listen_fd, NP_LOOP_READ, on_listen_fd, srv) != 0) {
    NP_LOGE(&srv->log, "epoll_ctl: %s", strerror(errno));
    goto fail;
  }
  srv->log_window = np__now_ms();
  if (np_log_enabled(&srv->log, NP_LOG_INFO)) {
    char a[NP_ADDRSTRLEN];
    NP_LOGI(&srv->log,
            "listening on %s (max %d connections, %d unregistered; per address %d, %d "
            "unregistered, %d registrations a minute; auth %d ms, idle %d ms; "
            "frames up to %zu bytes; %d messages/s per peer)",
            np_addr_format(&srv->local, a, sizeof a), srv->max_conn, srv->max_unauth,
            srv->conn_per_ip, srv->unauth_per_ip, srv->register_per_ip, srv->auth_ms,
            srv->idle_ms, srv->max_frame, srv->rate);
  }
  *out = srv;
  return 0;
fail:
  np_rendezvous_server_free(srv);
  return rc;
}
