/*
 * The agent: the public API (natpunch.h) and the session state machine.
 * It owns the path (sockets, path/path.h), the rendezvous client, the
 * gathering (gather.h) and the port-mapping worker (portmap_job.h), and
 * drives the sans-IO punch machine of the current session, then the QUIC
 * session (session/session.h) on the path it punched: streams, datagrams,
 * the close and the peer's disappearance are the session's.
 *
 * One event loop (net/loop.h) holds every descriptor, so the application
 * sees a single fd (the loop's epoll set); timers are reported through
 * np_agent_timeout(). Nothing here blocks except np_agent_wait() (asked
 * for) and np_agent_free() (deleting a port mapping is a round trip to the
 * gateway). Time is the loop's clock.
 */
#include "natpunch.h"

#include "agent/agent_internal.h"
#include "agent/gather.h"
#include "agent/portmap_job.h"
#include "discovery/nat_probe.h"
#include "net/addr.h"
#include "net/loop.h"
#include "net/udp.h"
#include "path/path.h"
#include "portmap/portmap.h"
#include "rendezvous/rendezvous_client.h"
#include "session/session.h"
#include "signaling/signaling.h"
#include "traversal/budget.h"
#include "traversal/punch.h"
#include "util/clock.h"
#include "util/log.h"

#include <errno.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 32
#define MAX_PAYLOAD 1200      /* np_agent_send()'s documented limit */
#define QUIC_MAX_PKT 1500     /* largest datagram the session may be handed */
/* Datagrams the session may write per flush: bounded so that one busy
 * session cannot starve the loop (congestion control bounds it anyway). */
#define FLUSH_MAX 512
/* Sockets of the session: large buffers so that a window of packets is not
 * dropped by the kernel between two turns of the loop. */
#define SESSION_SOCKBUF (4 * 1024 * 1024)
#define CLOSE_SENDS 3
/* A dead path: this many probe timeouts in a row with nothing
 * acknowledged (about seven PTO periods: a second or two) and the caller
 * punches a new one through the rendezvous server, for the same session. */
#define REPUNCH_PTOS 3
#define REPUNCH_SILENCE_MS 3000 /* or nothing heard for this long (beyond the PINGs' period) */
#define REPUNCH_TIMEOUT_MS 3500 /* one re-punch attempt: an answer takes a round trip and a gathering */
#define REPUNCH_RETRY_MS 1000   /* between attempts, until the idle timeout ends it */
#define DEFAULT_TIMEOUT_MS 20000
#define DEFAULT_MAX_PROBES 6000 /* punch.h's default max_probes */
/* How long the callee's gathering waits for a port mapping still in
 * progress: enough for PCP and NAT-PMP, which answer in one round trip on
 * the LAN (UPnP's multicast discovery takes longer and only helps later
 * sessions). A listener has usually had its mapping for long; the caller
 * does not wait at all: a gateway that neither speaks PCP nor answers with
 * ICMP (most do one or the other, but rate-limited ICMP is common) would
 * add the wait to every call, and the callee's mapping is the one that
 * matters most. */
#define PORTMAP_WAIT_MS 100
/* A vanished peer: nothing authenticated on the path for this long ends the
 * session. Keepalives (authenticated STUN indications from punch.c) come
 * every DEFAULT_KEEPALIVE_MS, so four in a row must be lost first. */
#define DEFAULT_PEER_TIMEOUT_MS 20000
#define DEFAULT_KEEPALIVE_MS 5000
#define HOLD_MIN_MS 400
#define HOLD_MAX_MS 3000

enum session_state {
  S_NONE = 0,
  S_GATHERING, /* quick discovery query before offer (caller) or answer (callee) */
  S_OFFERED,   /* caller: offer sent, waiting for the answer */
  S_PUNCHING,
  S_SECURING,  /* punched: the QUIC handshake proves the peer's key */
  S_CONNECTED, /* the session is up (CONNECTED reported) */
  S_DONE,      /* failed or closed; a listener goes back to S_NONE */
};

/* QUIC packets that arrive while we are still punching: the peer is
 * punched a round trip before us (the callee on the nomination, the caller
 * on its answer) and its client starts the handshake at once. Kept until
 * we know the pair, then given to the session if they came on it. */
#define MAX_EARLY 16
struct early_dgram {
  int sock;
  np_addr from;
  size_t len;
  uint8_t buf[QUIC_MAX_PKT];
};

struct np_agent {
  np_agent_config cfg;
  uint8_t (*allow)[NP_PUBKEY_LEN]; /* our copy of cfg.allow */
  np_logger log;
  uint8_t self_pk[NP_PUBKEY_LEN];

  np_loop *loop;
  np_rdv_client *rdv;
  int rdv_fd;
  unsigned rdv_mask;
  short rdv_revents; /* from the loop's callback, for np__rdv_client_process */
  bool registered;

  np_path *path;  /* socket 0 is the gathered socket; 1.. birthday sockets */
  np_addr local;  /* socket 0 as bound, with a concrete IP where known */
  int family;

  np_gather gather; /* the hop measurement (agent-long) and a session's query */

  struct np_pm_job *pm; /* port-mapping worker, NULL when none */
  bool pm_offered;   /* the worker's last word was a live mapping */

  /* Session. */
  enum session_state st;
  bool callee;
  uint8_t peer[NP_PUBKEY_LEN];
  uint8_t session[NP_SIG_SESSION_LEN];
  uint8_t kx_sk[32], kx_pk[32];
  np_sig_candidates cand, peer_cand;
  np_addr peer_seen; /* the peer's OBSERVED (its offer's or answer's) */
  np_addr self_seen; /* ours, from our registration */
  /* Callee: probes on strangers' calls over time (budget.h), and this
   * session's allowance, given back in part when it ends. */
  np_budget budget;
  int budget_granted;
  int hold_ms; /* callee: the answer's expected travel time (punch.h's hold_ms) */
  int64_t session_start, session_deadline;
  np_punch *punch;
  np_session_stats stats;
  np__session *qs;    /* the QUIC session on the punched path */
  bool up;            /* it is established and not over (CONNECTED reported) */
  bool repunch;       /* a new path for it is being punched (st cycles again) */
  int64_t repunch_next;
  uint32_t qlabel_gen; /* see path_label() */
  bool rdv_renewed;   /* this dead path's rendezvous reconnect is done */
  int64_t heard_last, heard_gap; /* the peer last heard, and the gap before that */
  int qsock;          /* the path's socket it runs on */
  np_addr qlocal;     /* that socket's address, the session's "local" */
  int64_t punched_at;
  bool activity;      /* stream or datagram news since np_agent_wait() last returned */
  bool stream_announced; /* NP_AGENT_STREAM is out for the streams waiting now */

  np_agent_event ev[MAX_EVENTS];
  int ev_head, ev_n;
  struct early_dgram *early;
  int n_early;
};

static void on_path_datagram(void *user, enum np_path_class cls, int sock, const np_addr *from,
                             const uint8_t *buf, size_t len, int64_t now);
static void on_path_icmp(void *user, int sock, const np_udp_error *e);

/* ---- small helpers ------------------------------------------------------------ */

static void push_event(np_agent *a, const np_agent_event *ev) {
  if (a->cfg.on_event)
    a->cfg.on_event(a->cfg.user, ev);
  if (a->ev_n == MAX_EVENTS) { /* the oldest goes: the application is not reading */
    a->ev_head = (a->ev_head + 1) % MAX_EVENTS;
    a->ev_n--;
  }
  a->ev[(a->ev_head + a->ev_n) % MAX_EVENTS] = *ev;
  a->ev_n++;
}

static void session_event(np_agent *a, enum np_agent_event_type type, int err,
                          const char *reason) {
  np_agent_event ev = {.type = type, .error = err};
  memcpy(ev.peer, a->peer, NP_PUBKEY_LEN);
  if (reason)
    snprintf(ev.reason, sizeof ev.reason, "%s", reason);
  push_event(a, &ev);
}

/* ---- session --------------------------------------------------------------------- */

static void session_reset(np_agent *a) {
  if (a->budget_granted > 0) {
    np_punch_result r = {0};
    if (a->punch)
      np__punch_result_get(a->punch, &r);
    int used = r.probes_sent > (uint32_t)a->budget_granted ? a->budget_granted : (int)r.probes_sent;
    np__budget_refund(&a->budget, a->peer, a->budget_granted - used, np__loop_now(a->loop));
    a->budget_granted = 0;
  }
  np__gather_stop(&a->gather);
  np__punch_free(a->punch);
  a->punch = NULL;
  np__session_free(a->qs);
  a->qs = NULL;
  a->up = a->repunch = false;
  np__path_close_extra(a->path);
  sodium_memzero(a->kx_sk, sizeof a->kx_sk);
  a->n_early = 0;
  a->st = S_NONE;
}

static void session_fail(np_agent *a, int err, const char *reason) {
  if (a->up) {
    /* A re-punch failed, not the session: it goes on (its idle timeout
     * ends it if no path comes back), and the caller tries again. */
    NP_LOGW(&a->log, "agent: re-punch failed: %s; the session waits for its path", reason);
    np__gather_stop(&a->gather);
    a->st = S_CONNECTED;
    a->repunch = false;
    a->repunch_next = np__loop_now(a->loop) + REPUNCH_RETRY_MS;
    return;
  }
  NP_LOGI(&a->log, "agent: session failed: %s", reason);
  a->st = S_DONE;
  session_event(a, NP_AGENT_FAILED, err, reason);
}

/* Sends on one of the path's sockets; a send that fails is a lost datagram
 * to the machines, which retransmit. */
static int send_on(np_agent *a, int sock, const np_addr *to, int ttl, const void *buf,
                   size_t len) {
  return np__path_send(a->path, sock, to, ttl, buf, len);
}

/* Makes sure sockets 0..n-1 exist (the birthday method asks for more). */
static int ensure_sockets(np_agent *a, int n) {
  int rc = np__path_ensure(a->path, n);
  if (np__path_count(a->path) > a->stats.sockets)
    a->stats.sockets = np__path_count(a->path);
  return rc;
}

static int gather_start(np_agent *a, int64_t now) {
  int rc = np__gather_start(&a->gather, now, &a->cand);
  crypto_box_keypair(a->kx_pk, a->kx_sk); /* X25519 */
  a->cand.has_kx = true;
  memcpy(a->cand.kx, a->kx_pk, sizeof a->kx_pk);
  return rc;
}

static void gather_finish(np_agent *a, int64_t now) {
  np_addr pm;
  bool have_pm = np__pm_job_get(a->pm, &pm, NULL);
  np__gather_finish(&a->gather, now, have_pm ? &pm : NULL, &a->cand);
}

static void punch_start(np_agent *a, int64_t now) {
  np_punch_config pc = {
      .callee = a->callee,
      .self = a->cand,
      .peer = a->peer_cand,
      .predict_after_ms = a->cfg.predict_after_ms,
      .session_timeout_ms = (int)(a->session_deadline - now > 0 ? a->session_deadline - now : 1),
      .keepalive_ms = a->cfg.keepalive_ms,
      .max_probes = a->callee && a->budget_granted > 0 ? a->budget_granted : a->cfg.max_probes,
      .peer_observed = a->peer_seen,
      .self_observed = a->self_seen,
      .birthday_sockets = a->cfg.birthday_sockets,
      .prime_ttl = np__gather_prime_ttl(&a->gather),
      .hold_ms = a->callee ? a->hold_ms : 0,
      .log = a->cfg.log,
      .log_user = a->cfg.log_user,
      .log_level = a->cfg.log_level,
  };
  memcpy(pc.session, a->session, sizeof pc.session);
  if (!a->peer_cand.has_kx ||
      np__punch_derive_key(a->kx_sk, a->kx_pk, a->peer_cand.kx, a->callee, a->session, pc.key) !=
          0) {
    session_fail(a, NP_ERR_AUTH, "the peer sent no usable session key");
    return;
  }
  int rc = np__punch_new(&pc, now, &a->punch);
  sodium_memzero(pc.key, sizeof pc.key);
  if (rc != 0) {
    session_fail(a, rc, "cannot start the traversal");
    return;
  }
  np_punch_result r;
  np__punch_result_get(a->punch, &r);
  if (r.state == NP_PUNCH_FAILED) {
    /* Nothing of the peer's we may probe: say so to a caller rather than
     * answer and wait. */
    if (a->callee)
      (void)np__rdv_client_send_decline(a->rdv, a->peer, a->session, NP_SIG_E_BAD_REQUEST,
                                       "no usable candidate in the offer");
    session_fail(a, r.error, r.reason);
    return;
  }
  a->st = S_PUNCHING;
}

/* Sends what the punch machine has due now (a bounded batch). */
static void punch_flush(np_agent *a, int64_t now) {
  np_punch_datagram dg;
  for (int guard = 0; guard < 256 && np__punch_next(a->punch, now, &dg); guard++) {
    if (ensure_sockets(a, dg.sock + 1) != 0) {
      NP_LOGW(&a->log, "agent: cannot open more sockets (%d); birthday attempt is smaller",
              np__path_count(a->path));
      continue;
    }
    (void)send_on(a, dg.sock, &dg.to, dg.ttl, dg.buf, dg.len);
  }
}

/* Gathering is over: the caller offers, the callee answers and punches. */
static void on_gathered(np_agent *a, int64_t now) {
  gather_finish(a, now);
  if (a->repunch)
    a->cand.flags |= NP_SIG_CAND_RESUME;
  if (!a->callee) {
    if (!a->registered)
      return; /* offered from on_state once registered */
    int rc = np__rdv_client_send_offer(a->rdv, a->peer, a->session, &a->cand);
    if (rc != 0) {
      session_fail(a, rc, "cannot send the offer to the rendezvous server");
      return;
    }
    a->st = S_OFFERED;
    return;
  }
  /* The callee primes first and answers after: the caller probes at full
   * TTL as soon as the answer arrives, and those probes must find our NAT
   * already open toward it. (Answering first lost that race on a loaded
   * machine: the process was descheduled between the two.) */
  punch_start(a, now);
  if (a->st != S_PUNCHING)
    return;
  punch_flush(a, now);
  if (!a->registered)
    return; /* answered from on_rdv_state once registered again */
  const np_addr *seen = np__addr_is_set(&a->peer_seen) ? &a->peer_seen : NULL;
  int rc = np__rdv_client_send_answer(a->rdv, a->peer, a->session, &a->cand, seen);
  if (rc != 0)
    session_fail(a, rc, "cannot send the answer to the rendezvous server");
}

/* ---- rendezvous callbacks ------------------------------------------------------- */

static void on_rdv_state(void *user, enum np_rdv_state state, const np_addr *observed) {
  np_agent *a = user;
  bool was = a->registered;
  a->registered = state == NP_RDV_REGISTERED;
  if (!a->registered) {
    if (was && a->st != S_NONE && a->st != S_DONE)
      NP_LOGW(&a->log, "agent: rendezvous connection lost during a call; what it still has to "
                       "send goes out again once registered");
    return;
  }
  if (observed)
    a->self_seen = *observed; /* the same-NAT test of checklist.h */
  np_agent_event ev = {.type = NP_AGENT_REGISTERED};
  if (observed)
    ev.observed = *observed;
  push_event(a, &ev);
  /* A connection lost mid-call took the queued offer, answer or READY
   * with it (or the server restarted and never forwarded them): send the
   * one this side still waits on again, freshly signed, so the call goes
   * on instead of waiting for its timeout. A copy the peer did get is
   * harmless: the caller's re-offer is answered again, the rest is
   * ignored by the state checks. */
  int rc = 0;
  const char *what = NULL;
  if (!a->callee && a->st == S_OFFERED) {
    what = "offer";
    rc = np__rdv_client_send_offer(a->rdv, a->peer, a->session, &a->cand);
  } else if (!a->callee && a->st == S_PUNCHING) {
    what = "READY";
    rc = np__rdv_client_send_ready(a->rdv, a->peer, a->session);
  } else if (a->callee && a->st == S_PUNCHING) {
    what = "answer";
    const np_addr *seen = np__addr_is_set(&a->peer_seen) ? &a->peer_seen : NULL;
    rc = np__rdv_client_send_answer(a->rdv, a->peer, a->session, &a->cand, seen);
  }
  if (what && rc != 0)
    session_fail(a, rc, "cannot send again after the rendezvous connection was lost");
  else if (what)
    NP_LOGI(&a->log, "agent: sent the %s again after re-registering", what);
  if (!a->callee && a->st == S_GATHERING && !np__gather_active(&a->gather)) {
    /* Gathering finished before registration: offer now, with what the
     * hop probes have found by now. */
    np__gather_update_flat(&a->gather, &a->cand);
    rc = np__rdv_client_send_offer(a->rdv, a->peer, a->session, &a->cand);
    if (rc == 0)
      a->st = S_OFFERED;
    else
      session_fail(a, rc, "cannot send the offer to the rendezvous server");
  }
}

static void on_rdv_offer(void *user, const np_sig_msg *offer) {
  np_agent *a = user;
  if (!a->cfg.listen)
    return;
  if (a->st != S_NONE && memcmp(offer->from, a->peer, NP_PUBKEY_LEN) == 0 &&
      memcmp(offer->session, a->session, NP_SIG_SESSION_LEN) == 0) {
    /* Our caller's offer again: it lost our answer (its rendezvous
     * connection dropped, or the server restarted). Answer again. */
    if (a->callee && (a->st == S_PUNCHING || a->st == S_SECURING || a->st == S_CONNECTED)) {
      const np_addr *seen = np__addr_is_set(&a->peer_seen) ? &a->peer_seen : NULL;
      int rc = np__rdv_client_send_answer(a->rdv, a->peer, a->session, &a->cand, seen);
      if (rc != 0)
        NP_LOGW(&a->log, "agent: cannot answer the repeated offer: %s", np_strerror(rc));
    }
    return;
  }
  /* Our peer's session lost its path and it punches a new one: the
   * session stays, a new traversal runs under it. */
  bool resume = a->up && a->callee && (offer->cand.flags & NP_SIG_CAND_RESUME) &&
                memcmp(offer->from, a->peer, NP_PUBKEY_LEN) == 0 && a->st == S_CONNECTED;
  if (a->st == S_DONE)
    session_reset(a); /* the last session is over: what it left unread goes */
  if (a->st != S_NONE && !resume) {
    /* One session per agent. A signed "busy" lets the caller fail now,
     * with a reason, rather than at its timeout. */
    char id[NP_PEER_ID_LEN + 1];
    np_peer_id_format(offer->from, id);
    NP_LOGI(&a->log, "agent: busy; declining a call from %s", id);
    int rc = np__rdv_client_send_decline(a->rdv, offer->from, offer->session, NP_SIG_E_BUSY,
                                        "busy in another session");
    if (rc != 0)
      NP_LOGW(&a->log, "agent: cannot decline the call from %s: %s", id, np_strerror(rc));
    return;
  }
  int64_t now = np__loop_now(a->loop);
  /* The probes this call may cost us, against this caller's and
   * everyone's use of the last minute: a session runs smaller, or the
   * call is declined. */
  int want = a->cfg.max_probes > 0 ? a->cfg.max_probes : DEFAULT_MAX_PROBES;
  int granted = np__budget_take(&a->budget, offer->from, want, now);
  if (granted == 0) {
    char id[NP_PEER_ID_LEN + 1], text[96];
    np_peer_id_format(offer->from, id);
    long long wait_s = (np__budget_retry_ms(&a->budget, offer->from, now) + 999) / 1000;
    snprintf(text, sizeof text, "probe budget spent; try again in %lld s", wait_s);
    NP_LOGI(&a->log, "agent: declining a call from %s: %s", id, text);
    (void)np__rdv_client_send_decline(a->rdv, offer->from, offer->session, NP_SIG_E_RATE, text);
    return;
  }
  if (granted < want)
    NP_LOGI(&a->log, "agent: probe budget: this session may send %d probes (of %d)", granted,
            want);
  a->budget_granted = granted;
  if (resume) {
    NP_LOGI(&a->log, "agent: the caller re-punches our session's path");
    np__punch_free(a->punch);
    a->punch = NULL;
    a->repunch = true;
  }
  a->callee = true;
  memcpy(a->peer, offer->from, NP_PUBKEY_LEN);
  memcpy(a->session, offer->session, NP_SIG_SESSION_LEN);
  a->peer_cand = offer->cand;
  a->peer_seen = offer->observed;
  /* The answer takes about as long to reach the caller as the offer took
   * to reach us; the caller primes when it arrives, and our full-TTL
   * probes must not get there first. The offer's age (wall clocks, so
   * only a hint) sets the wait, within bounds. */
  struct timespec wall;
  clock_gettime(CLOCK_REALTIME, &wall);
  int64_t age = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000 - (int64_t)offer->timestamp_ms;
  a->hold_ms = age > 0 && age < HOLD_MAX_MS / 2 ? (int)(2 * age) + HOLD_MIN_MS : HOLD_MIN_MS;
  if (!resume) {
    memset(&a->stats, 0, sizeof a->stats);
    memcpy(a->stats.peer, a->peer, NP_PUBKEY_LEN);
  }
  a->session_start = now;
  a->session_deadline =
      now + (resume                       ? REPUNCH_TIMEOUT_MS
             : a->cfg.session_timeout_ms > 0 ? a->cfg.session_timeout_ms
                                             : DEFAULT_TIMEOUT_MS);
  a->st = S_GATHERING;
  if (!resume)
    session_event(a, NP_AGENT_CALL, 0, NULL);
  int rc = gather_start(a, now);
  if (rc != 0) {
    session_fail(a, rc, "cannot gather candidates");
    return;
  }
  if (!np__gather_active(&a->gather))
    on_gathered(a, now);
}

static void on_rdv_answer(void *user, const np_sig_msg *answer) {
  np_agent *a = user;
  if (a->callee || a->st != S_OFFERED ||
      memcmp(answer->session, a->session, NP_SIG_SESSION_LEN) != 0)
    return;
  if (memcmp(answer->from, a->peer, NP_PUBKEY_LEN) != 0) {
    /* Our session number went only to the peer called, through the server:
     * an answer to it signed by anyone else is the server (or its path)
     * playing man in the middle. Waiting on would only end in a timeout
     * that hides this; the call cannot be trusted any more. */
    char who[NP_PEER_ID_LEN + 1], reason[160];
    np_peer_id_format(answer->from, who);
    snprintf(reason, sizeof reason,
             "forged answer: signed by another key (%.8s...), not by the peer called; the "
             "rendezvous server or its path is tampering; call abandoned",
             who);
    NP_LOGW(&a->log, "agent: %s", reason);
    session_fail(a, NP_ERR_AUTH, reason);
    return;
  }
  if (answer->error_code != 0) {
    char reason[NP_SIG_MAX_TEXT + 40];
    /* The peer's own words are cut short: the event's reason holds 160. */
    snprintf(reason, sizeof reason, "the peer declined: %.100s (%u)",
             answer->error_code == NP_SIG_E_BUSY ? "busy" : answer->error_text,
             answer->error_code);
    session_fail(a, NP_ERR_REFUSED, reason);
    return;
  }
  a->peer_cand = answer->cand;
  a->peer_seen = answer->observed; /* where the callee can be (checklist.h) */
  int64_t now = np__loop_now(a->loop);
  punch_start(a, now);
  if (a->st != S_PUNCHING)
    return;
  /* Our primes leave first; READY, behind them through the server, lets
   * the callee send toward us without racing them. */
  punch_flush(a, now);
  int rc = np__rdv_client_send_ready(a->rdv, a->peer, a->session);
  if (rc != 0)
    NP_LOGW(&a->log, "agent: cannot send READY (%s); the callee falls back on its timer",
            np_strerror(rc));
}

/* A signed message to us failed its signature check (rendezvous_client.h:
 * nothing in it is authenticated). An answer for our call claiming to be
 * from the peer called ends the call with that reason, rather than a
 * timeout that says nothing. Its session number is taken on trust only to
 * pick the call: whoever knows it could equally stop the call by cutting
 * the server's TCP connection. */
static void on_rdv_forged(void *user, const np_sig_msg *m) {
  np_agent *a = user;
  if (m->type != NP_SIG_ANSWER || a->callee || a->st != S_OFFERED ||
      memcmp(m->session, a->session, NP_SIG_SESSION_LEN) != 0)
    return;
  session_fail(a, NP_ERR_AUTH,
               "forged answer: its signature is not the called peer's (the rendezvous server or "
               "its path altered it); call abandoned");
}

static void on_rdv_ready(void *user, const np_sig_msg *ready) {
  np_agent *a = user;
  if (!a->callee || !a->punch || a->st != S_PUNCHING ||
      memcmp(ready->session, a->session, NP_SIG_SESSION_LEN) != 0 ||
      memcmp(ready->from, a->peer, NP_PUBKEY_LEN) != 0)
    return;
  np__punch_peer_ready(a->punch, np__loop_now(a->loop));
}

static void on_rdv_error(void *user, uint16_t code, const char *text, const uint8_t *session) {
  np_agent *a = user;
  /* Only authenticated errors get here (the client checks the MAC). */
  if (code == NP_SIG_E_REPLACED) {
    if (a->st != S_NONE && a->st != S_DONE)
      session_fail(a, NP_ERR_REFUSED, "our ID was registered by another process");
    np_agent_event ev = {.type = NP_AGENT_REPLACED};
    snprintf(ev.reason, sizeof ev.reason,
             "another process registered our key with the rendezvous server and holds our ID "
             "now; this one stops");
    push_event(a, &ev);
    return;
  }
  if (code == NP_SIG_E_CLOCK && session && memcmp(session, a->session, NP_SIG_SESSION_LEN) == 0 &&
      a->st != S_NONE && a->st != S_DONE && a->st != S_SECURING && a->st != S_CONNECTED) {
    /* The peer drops what we sign as too old or too new: the call cannot
     * work, and the reason is the clock, not the network. */
    char reason[200];
    snprintf(reason, sizeof reason, "rendezvous server: %.150s (%u)", text, code);
    NP_LOGW(&a->log, "agent: %s", reason);
    session_fail(a, NP_ERR_REFUSED, reason);
    return;
  }
  if (a->callee || !session || memcmp(session, a->session, NP_SIG_SESSION_LEN) != 0 ||
      (a->st != S_OFFERED && a->st != S_GATHERING)) {
    NP_LOGW(&a->log, "agent: rendezvous server: %s (%u)", text, code);
    return;
  }
  char reason[200];
  const char *what = code == NP_SIG_E_UNKNOWN_PEER ? "peer unknown or offline"
                     : code == NP_SIG_E_REFUSED    ? "the peer does not accept calls from us"
                                                   : text;
  snprintf(reason, sizeof reason, "rendezvous server: %s (%u)", what, code);
  session_fail(a, code == NP_SIG_E_REFUSED ? NP_ERR_REFUSED : NP_ERR_UNREACHABLE, reason);
}

/* The port-mapping worker's news: from its thread, so only the loop's
 * wakeup (thread-safe); on_loop_wake reads the news in the loop's thread. */
static void wake_agent(void *user) {
  np_agent *a = user;
  np__loop_wake(a->loop);
}

static void on_loop_wake(np_loop *loop, void *user) {
  (void)loop;
  np_agent *a = user;
  np_addr pm;
  enum np_portmap_proto proto;
  bool have = np__pm_job_get(a->pm, &pm, &proto);
  if (have) {
    char t[NP_ADDRSTRLEN];
    NP_LOGI(&a->log, "agent: gateway mapped %s (%s)", np_addr_format(&pm, t, sizeof t),
            np__portmap_proto_name(proto));
  } else if (a->pm_offered) {
    NP_LOGW(&a->log, "agent: the gateway's port mapping ran out unrenewed; no longer offered "
                     "(renewal goes on trying)");
  }
  a->pm_offered = have;
}

/* ---- creation ---------------------------------------------------------------------- */

static void agent_free_parts(np_agent *a) {
  np__pm_job_stop(a->pm);
  np__gather_stop(&a->gather);
  np__punch_free(a->punch);
  np__rdv_client_free(a->rdv);
  np__path_free(a->path);
  np__loop_free(a->loop); /* last: the path and the rendezvous fd leave it first */
  free(a->allow);
  np__session_free(a->qs);
  free(a->early);
  sodium_memzero(a->kx_sk, sizeof a->kx_sk);
  free(a);
}

int np__agent_new_clocked(const np_agent_config *cfg, np_loop_clock_fn clock, void *clock_user,
                          np_agent **out) {
  if (!out)
    return NP_ERR_INVAL;
  *out = NULL;
  if (!cfg || !cfg->identity || !np__addr_is_set(&cfg->rendezvous) || cfg->n_discovery < 0 ||
      cfg->n_discovery > NP_PROBE_MAX_SERVERS || cfg->n_allow < 0 ||
      cfg->n_allow > NP_SIG_MAX_ALLOW || (cfg->n_allow > 0 && !cfg->allow))
    return NP_ERR_INVAL;
  if (cfg->n_discovery == 2 &&
      cfg->discovery[0].u.sa.sa_family != cfg->discovery[1].u.sa.sa_family)
    return NP_ERR_INVAL;
  /* Checked now rather than when a session starts: a TTL over 255, say,
   * would otherwise fail every call, long after the mistake was made. */
  if (cfg->predict_after_ms < 0 || cfg->session_timeout_ms < 0 || cfg->keepalive_ms < 0 ||
      cfg->peer_timeout_ms < 0 ||
      (cfg->keepalive_ms > 0 && cfg->peer_timeout_ms > 0 &&
       cfg->keepalive_ms >= cfg->peer_timeout_ms) ||
      (cfg->keepalive_ms >= DEFAULT_PEER_TIMEOUT_MS && cfg->peer_timeout_ms == 0) ||
      cfg->max_probes < 0 || cfg->birthday_sockets < 0 ||
      cfg->birthday_sockets >= NP_PUNCH_MAX_SOCKETS || cfg->prime_ttl < 0 || cfg->prime_ttl > 255)
    return NP_ERR_INVAL;
  if (np__addr_is_set(&cfg->bind) &&
      cfg->bind.u.sa.sa_family !=
          (cfg->n_discovery ? cfg->discovery[0] : cfg->rendezvous).u.sa.sa_family)
    return NP_ERR_INVAL;
  if (sodium_init() < 0)
    return NP_ERR_SYS;
  np_agent *a = calloc(1, sizeof *a);
  if (!a)
    return NP_ERR_NOMEM;
  a->cfg = *cfg;
  if (a->cfg.peer_timeout_ms == 0)
    a->cfg.peer_timeout_ms = DEFAULT_PEER_TIMEOUT_MS;
  if (a->cfg.keepalive_ms == 0) {
    /* Frequent enough that a few lost ones do not end the session. */
    a->cfg.keepalive_ms = a->cfg.peer_timeout_ms / 4 < DEFAULT_KEEPALIVE_MS
                              ? a->cfg.peer_timeout_ms / 4
                              : DEFAULT_KEEPALIVE_MS;
    if (a->cfg.keepalive_ms < 1)
      a->cfg.keepalive_ms = 1;
  }
  a->rdv_fd = -1;
  np_loop_config lcfg = {
      .clock = clock, .clock_user = clock_user, .on_wake = on_loop_wake, .wake_user = a};
  int rc = np__loop_new(&lcfg, &a->loop);
  if (rc != 0) {
    free(a);
    return rc;
  }
  np__budget_init(&a->budget, 0, 0, np__loop_now(a->loop));
  a->log = (np_logger){cfg->log, cfg->log_user, cfg->log_level};
  np_identity_public_key(cfg->identity, a->self_pk);
  rc = NP_ERR_NOMEM;
  a->early = calloc(MAX_EARLY, sizeof *a->early);
  if (!a->early)
    goto fail;
  if (cfg->n_allow) {
    a->allow = malloc((size_t)cfg->n_allow * NP_PUBKEY_LEN);
    if (!a->allow)
      goto fail;
    memcpy(a->allow, cfg->allow, (size_t)cfg->n_allow * NP_PUBKEY_LEN);
    a->cfg.allow = (const uint8_t(*)[NP_PUBKEY_LEN])a->allow;
  }
  a->family = cfg->n_discovery ? cfg->discovery[0].u.sa.sa_family : cfg->rendezvous.u.sa.sa_family;
  np_path_config pcfg = {.family = a->family,
                         .bind = cfg->bind,
                         .loop = a->loop,
                         .log = a->log,
                         .on_datagram = on_path_datagram,
                         .on_icmp = on_path_icmp,
                         .user = a};
  if ((rc = np__path_new(&pcfg, &a->path)) != 0 || (rc = ensure_sockets(a, 1)) != 0)
    goto fail;
  (void)np__udp_local(np__path_fd(a->path, 0), &a->local);
  {
    /* A concrete local IP, for the NAT verdicts and the portmap. */
    np_addr via = {0};
    (void)np__udp_route_source(cfg->n_discovery ? &cfg->discovery[0] : &cfg->rendezvous, &via);
    if (np__addr_is_set(&via)) {
      np_addr_set_port(&via, np_addr_port(&a->local));
      a->local = via;
    }
  }
  int64_t now = np__loop_now(a->loop);
  np_rdv_client_config rc_cfg = {
      .server = cfg->rendezvous,
      .identity = cfg->identity,
      .allow = a->cfg.allow,
      .n_allow = cfg->n_allow,
      .on_state = on_rdv_state,
      .on_offer = on_rdv_offer,
      .on_answer = on_rdv_answer,
      .on_ready = on_rdv_ready,
      .on_forged = on_rdv_forged,
      .on_error = on_rdv_error,
      .user = a,
      .log = cfg->log,
      .log_user = cfg->log_user,
      .log_level = cfg->log_level,
  };
  if ((rc = np__rdv_client_new(&rc_cfg, now, &a->rdv)) != 0)
    goto fail;
  np_gather_config gcfg = {.family = a->family,
                           .local = a->local,
                           .n_discovery = cfg->n_discovery,
                           .prime_ttl = cfg->prime_ttl,
                           .no_prime = cfg->no_prime,
                           .log = a->log};
  memcpy(gcfg.discovery, cfg->discovery, sizeof gcfg.discovery);
  np__gather_init(&a->gather, &gcfg);
  np__gather_hop_send(&a->gather, a->path, now);
  if (!cfg->no_portmap) {
    np_pm_job_config pmc = {.internal_port = np_addr_port(&a->local),
                            .wake = wake_agent,
                            .wake_user = a,
                            .log = a->log};
    a->pm = np__pm_job_start(&pmc);
  }
  *out = a;
  return 0;
fail:
  agent_free_parts(a);
  return rc;
}

NP_EXPORT int np_agent_new(const np_agent_config *cfg, np_agent **out) {
  return np__agent_new_clocked(cfg, NULL, NULL, out);
}

NP_EXPORT void np_agent_free(np_agent *a) {
  if (!a)
    return;
  if (a->st == S_SECURING || a->up)
    np_agent_close(a);
  agent_free_parts(a);
}

NP_EXPORT int np_agent_connect(np_agent *a, const uint8_t peer[NP_PUBKEY_LEN]) {
  if (!a || !peer || memcmp(peer, a->self_pk, NP_PUBKEY_LEN) == 0)
    return NP_ERR_INVAL;
  if (a->st != S_NONE && a->st != S_DONE)
    return NP_ERR_AGAIN;
  session_reset(a);
  int64_t now = np__loop_now(a->loop);
  a->callee = false;
  memcpy(a->peer, peer, NP_PUBKEY_LEN);
  if (np__random_bytes(a->session, sizeof a->session) != 0)
    return NP_ERR_SYS;
  memset(&a->stats, 0, sizeof a->stats);
  memcpy(a->stats.peer, peer, NP_PUBKEY_LEN);
  memset(&a->peer_seen, 0, sizeof a->peer_seen);
  a->session_start = now;
  a->session_deadline =
      now + (a->cfg.session_timeout_ms > 0 ? a->cfg.session_timeout_ms : DEFAULT_TIMEOUT_MS);
  a->st = S_GATHERING;
  int rc = gather_start(a, now);
  if (rc != 0) {
    a->st = S_NONE;
    return rc;
  }
  if (!np__gather_active(&a->gather))
    on_gathered(a, now);
  return 0;
}

/* ---- I/O ---------------------------------------------------------------------------- */

/* Hands the session what it has to send, on its socket (a bounded batch:
 * congestion control and pacing stop it sooner; a full socket buffer is a
 * loss the session repairs). Consecutive packets to one address go out as
 * one train (np__path_send_train: UDP GSO, else sendmmsg) while they have
 * the first one's size, the last one possibly shorter: one system call
 * and one trip through the host's stack for up to NP_PATH_TRAIN_MAX of
 * them, where a send per packet made the kernel's per-packet work the
 * limit of a bulk transfer. */
static void session_flush(np_agent *a, int64_t now) {
  if (!a->qs)
    return;
  uint8_t train[NP_PATH_TRAIN_BYTES];
  size_t len = 0, seg = 0;
  np_addr to = {0};
  for (int i = 0; i < FLUSH_MAX; i++) {
    np__session_path path;
    int n = np__session_send(a->qs, train + len, QUIC_MAX_PKT, &path, now);
    if (n <= 0)
      break;
    if (len > 0 && ((size_t)n > seg || !np_addr_equal(&path.remote, &to))) {
      /* It does not belong to the train: the train goes, it starts the next. */
      (void)np__path_send_train(a->path, a->qsock, &to, train, len, seg);
      memmove(train, train + len, (size_t)n);
      len = 0;
    }
    if (len == 0) {
      seg = (size_t)n;
      to = path.remote;
    }
    len += (size_t)n;
    /* A short packet ends a train (GSO's rule), and so does a full one. */
    if ((size_t)n < seg || len / seg >= NP_PATH_TRAIN_MAX ||
        NP_PATH_TRAIN_BYTES - len < QUIC_MAX_PKT) {
      (void)np__path_send_train(a->path, a->qsock, &to, train, len, seg);
      len = 0;
    }
  }
  if (len > 0)
    (void)np__path_send_train(a->path, a->qsock, &to, train, len, seg);
}

static void on_established(np_agent *a, int64_t now) {
  a->st = S_CONNECTED;
  a->up = true;
  a->heard_last = a->heard_gap = 0;
  a->rdv_renewed = false;
  a->stats.connected = true;
  a->stats.secure_ms = now - a->punched_at;
  a->stats.elapsed_ms = now - a->session_start;
  NP_LOGI(&a->log, "agent: session up: the peer proved its key %lld ms after the punch",
          (long long)a->stats.secure_ms);
  session_event(a, NP_AGENT_CONNECTED, 0, NULL);
}

/* The session ended (or never came up): say why, in the words of the
 * events' contract. */
static void on_session_closed(np_agent *a) {
  struct np__session_close_info ci;
  if (np__session_close_info(a->qs, &ci) != 0)
    return;
  char reason[160];
  if (a->st == S_SECURING) {
    /* The event's reason holds 160 bytes: the peer's words are cut. */
    snprintf(reason, sizeof reason, "%s: %.50s",
             ci.key_mismatch ? "the peer did not prove the key of the peer ID (a man in the "
                               "middle, or the wrong peer): handshake refused"
                             : "the secure handshake failed",
             ci.reason[0] ? ci.reason : np_strerror(ci.err));
    session_fail(a, ci.err == NP_ERR_TIMEOUT ? NP_ERR_TIMEOUT : NP_ERR_AUTH, reason);
    return;
  }
  int err;
  if (ci.err == NP_ERR_TIMEOUT) {
    err = NP_ERR_TIMEOUT;
    snprintf(reason, sizeof reason, "the peer vanished: nothing from it for %d s",
             (a->cfg.peer_timeout_ms + 500) / 1000);
  } else if (ci.by_peer && ci.app && ci.code == 0) {
    err = 0;
    snprintf(reason, sizeof reason, "the peer closed the session");
  } else if (ci.by_peer && ci.app && ci.code == 1) {
    err = NP_ERR_CANCELLED;
    snprintf(reason, sizeof reason, "the peer aborted the session");
  } else {
    err = ci.err ? ci.err : NP_ERR_PROTO;
    snprintf(reason, sizeof reason, "the session failed: %.120s",
             ci.reason[0] ? ci.reason : np_strerror(err));
  }
  NP_LOGI(&a->log, "agent: %s", reason);
  np__gather_stop(&a->gather);
  a->st = S_DONE;
  a->up = a->repunch = false;
  session_event(a, NP_AGENT_CLOSED, err, reason);
}

/* After anything that may have moved the session: news for the
 * application, and its state. */
static void session_check(np_agent *a, int64_t now) {
  if (!a->qs)
    return;
  if (a->st == S_SECURING && np__session_established(a->qs))
    on_established(a, now);
  if ((a->st == S_SECURING || a->up) && np__session_closed(a->qs)) {
    on_session_closed(a);
    return;
  }
  if (!a->up)
    return;
  /* New peer streams: one event, then the application accepts them all. */
  if (!a->stream_announced && np__session_stream_pending(a->qs)) {
    a->stream_announced = true;
    session_event(a, NP_AGENT_STREAM, 0, NULL);
  }
  struct np__session_stats qs;
  np__session_stats(a->qs, &qs);
  if (!np_addr_equal(&qs.path.remote, &a->stats.remote)) {
    char t[NP_ADDRSTRLEN];
    NP_LOGI(&a->log, "agent: the path moved: the peer is at %s now",
            np_addr_format(&qs.path.remote, t, sizeof t));
    a->stats.remote = qs.path.remote;
    a->stats.path_changes++;
    np_agent_event ev = {.type = NP_AGENT_PATH_CHANGED, .observed = qs.path.remote};
    memcpy(ev.peer, a->peer, NP_PUBKEY_LEN);
    push_event(a, &ev);
  }
}

/* The punch machine nominated a pair: the winner's socket stays, and the
 * QUIC session starts on it (the caller is its client). */
/* The session's name for the local end of a path on socket sock. ngtcp2
 * tells paths apart by their addresses and migrates only to a new local
 * address, but a re-punch often keeps the socket and changes only what the
 * NATs do with it: then the path gets a new name (the bound address with
 * a generation number in place of the wildcard IP; nothing is sent to or
 * from it, it only names the path). */
static np_addr path_label(np_agent *a, int sock, bool fresh) {
  np_addr l;
  (void)np__udp_local(np__path_fd(a->path, sock), &l);
  if (!fresh)
    return l;
  a->qlabel_gen++;
  if (l.u.sa.sa_family == AF_INET)
    l.u.in4.sin_addr.s_addr = htonl(a->qlabel_gen);
  else
    memcpy(&l.u.in6.sin6_addr.s6_addr[12], &(uint32_t){htonl(a->qlabel_gen)}, 4);
  return l;
}

static void set_session_socket(np_agent *a, int sock) {
  int fd = np__path_fd(a->path, sock);
  int big = SESSION_SOCKBUF;
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  a->qsock = sock;
}

/* A re-punch found a new pair: the session moves to it (the caller's QUIC
 * client migrates, and validates the path; the server follows the first
 * packet that comes on it). Streams go on where they were. */
static void on_repunched(np_agent *a, const np_punch_result *r, int64_t now) {
  char t[NP_ADDRSTRLEN];
  NP_LOGI(&a->log, "agent: re-punched: the peer is at %s (via %s) after %lld ms",
          np_addr_format(&r->remote, t, sizeof t), np_via_name(r->via),
          (long long)(now - a->session_start));
  int old = a->qsock;
  np__path_keep_only(a->path, r->sock);
  set_session_socket(a, r->sock);
  if (!a->callee) {
    np_addr label = path_label(a, r->sock, r->sock == old);
    int rc = np__session_migrate(a->qs, &label, &r->remote, now);
    if (rc != 0)
      NP_LOGW(&a->log, "agent: cannot move the session to the new path: %s", np_strerror(rc));
    else
      a->qlocal = label;
  } else if (r->sock != old) {
    a->qlocal = path_label(a, r->sock, false);
  }
  a->stats.via = r->via;
  a->st = S_CONNECTED;
  a->repunch = false;
  a->repunch_next = now + REPUNCH_RETRY_MS;
  session_flush(a, now);
}

static void on_punched(np_agent *a, int64_t now) {
  np_punch_result r;
  np__punch_result_get(a->punch, &r);
  if (a->up) {
    on_repunched(a, &r, now);
    return;
  }
  a->st = S_SECURING;
  a->punched_at = now;
  a->stats.via = r.via;
  a->stats.remote = r.remote;
  a->stats.local = a->local;
  if (r.sock > 0)
    (void)np__udp_local(np__path_fd(a->path, r.sock), &a->stats.local);
  a->stats.elapsed_ms = now - a->session_start;
  a->stats.probes_sent = r.probes_sent;
  a->stats.probes_received = r.probes_received;
  a->stats.rounds = r.rounds;
  a->stats.sockets = r.sockets;
  /* The winner stays; every other birthday socket goes. */
  np__path_keep_only(a->path, r.sock);
  set_session_socket(a, r.sock);
  a->qlocal = path_label(a, r.sock, false);
  np__session_config sc = {
      .client = !a->callee,
      .identity = a->cfg.identity,
      .local = a->qlocal,
      .remote = r.remote,
      .idle_timeout_ms = a->cfg.peer_timeout_ms,
      .keepalive_ms = a->cfg.keepalive_ms,
      .log = a->cfg.log,
      .log_user = a->cfg.log_user,
      .log_level = a->cfg.log_level,
  };
  memcpy(sc.peer, a->peer, NP_PUBKEY_LEN);
  int rc = np__session_new(&sc, now, &a->qs);
  if (rc != 0) {
    session_fail(a, rc, "cannot start the secure session");
    return;
  }
  for (int i = 0; i < a->n_early && a->qs; i++)
    if (a->early[i].sock == r.sock && np_addr_equal(&a->early[i].from, &r.remote))
      (void)np__session_recv(a->qs, &a->qlocal, &a->early[i].from, a->early[i].buf,
                             a->early[i].len, now);
  a->n_early = 0;
  session_flush(a, now);
  session_check(a, now);
}

/* STUN on the path: the gathering's answers, the punch machine's probes. */
static void deliver_stun(np_agent *a, int sock, const np_addr *from, const uint8_t *buf,
                         size_t len, int64_t now) {
  np__gather_stun_input(&a->gather, sock, from, buf, len, now);
  if (a->punch)
    (void)np__punch_input(a->punch, now, sock, from, buf, len);
}

/* QUIC on the path: to the session, from any address on its socket (QUIC
 * authenticates every packet and validates a new address before it uses
 * it, which is how a NAT that rebinds is followed). */
static void deliver_quic(np_agent *a, int sock, const np_addr *from, const uint8_t *buf,
                         size_t len, int64_t now) {
  if (a->st == S_PUNCHING && a->n_early < MAX_EARLY && len <= QUIC_MAX_PKT) {
    struct early_dgram *e = &a->early[a->n_early++];
    e->sock = sock;
    e->from = *from;
    e->len = len;
    memcpy(e->buf, buf, len);
    return;
  }
  if (!a->qs || sock != a->qsock)
    return;
  (void)np__session_recv(a->qs, &a->qlocal, from, buf, len, now);
  a->activity = true;
}

/* The path's demultiplexer hands over STUN and QUIC (RFC 9443). */
static void on_path_datagram(void *user, enum np_path_class cls, int sock, const np_addr *from,
                             const uint8_t *buf, size_t len, int64_t now) {
  if (cls == NP_PATH_STUN)
    deliver_stun(user, sock, from, buf, len, now);
  else if (cls == NP_PATH_QUIC)
    deliver_quic(user, sock, from, buf, len, now);
}

static void on_path_icmp(void *user, int sock, const np_udp_error *e) {
  np_agent *a = user;
  np__gather_icmp(&a->gather, sock, e, np__loop_now(a->loop));
}

static void on_rdv_fd(np_loop *loop, int fd, unsigned events, void *user) {
  (void)loop;
  (void)fd;
  np_agent *a = user;
  a->rdv_revents |= (short)((events & NP_LOOP_READ ? POLLIN : 0) |
                            (events & NP_LOOP_WRITE ? POLLOUT : 0) |
                            (events & NP_LOOP_ERROR ? POLLERR : 0));
}

/* The rendezvous client may reconnect (a new fd) and wants POLLOUT only
 * while it has output queued. */
static void sync_rdv_fd(np_agent *a) {
  short want = 0;
  int fd = np__rdv_client_fd(a->rdv, &want);
  unsigned mask = (want & POLLIN ? NP_LOOP_READ : 0) | (want & POLLOUT ? NP_LOOP_WRITE : 0);
  if (fd == a->rdv_fd && mask == a->rdv_mask)
    return;
  if (a->rdv_fd >= 0 && fd != a->rdv_fd)
    np__loop_del_fd(a->loop, a->rdv_fd);
  if (fd >= 0)
    (void)np__loop_add_fd(a->loop, fd, mask, on_rdv_fd, a);
  a->rdv_fd = fd;
  a->rdv_mask = mask;
}

/* The caller's answer to a dead path: the same traversal as a call (fresh
 * gathering, since the NATs' mappings may be new; a signed offer, marked
 * RESUME; punching), under the session that stays up meanwhile. */
static void repunch_start(np_agent *a, int64_t now, uint64_t ptos) {
  NP_LOGI(&a->log,
          "agent: the path is dead (%llu probe timeouts in a row, or silence): punching a new one",
          (unsigned long long)ptos);
  np__punch_free(a->punch);
  a->punch = NULL;
  if (np__random_bytes(a->session, sizeof a->session) != 0)
    return;
  a->repunch = true;
  a->repunch_next = now + REPUNCH_RETRY_MS;
  memset(&a->peer_seen, 0, sizeof a->peer_seen);
  a->session_start = now;
  a->session_deadline = now + REPUNCH_TIMEOUT_MS;
  a->st = S_GATHERING;
  if (gather_start(a, now) != 0) {
    session_fail(a, NP_ERR_SYS, "cannot gather candidates");
    return;
  }
  if (!np__gather_active(&a->gather))
    on_gathered(a, now);
}

static void run_machines(np_agent *a, int64_t now) {
  if (now >= np__gather_hop_next(&a->gather))
    np__gather_hop_send(&a->gather, a->path, now);
  if (np__gather_active(&a->gather)) {
    np__gather_flush(&a->gather, a->path, now);
    if (np__gather_done(&a->gather) && a->st == S_GATHERING &&
        (!a->callee || now >= a->gather.started + PORTMAP_WAIT_MS || !np__pm_job_pending(a->pm)))
      on_gathered(a, now);
  }
  if ((a->st == S_GATHERING || a->st == S_OFFERED) && now >= a->session_deadline) {
    session_fail(a, NP_ERR_TIMEOUT,
                 a->st == S_OFFERED ? "no answer from the peer before the timeout"
                                    : "could not reach the rendezvous server before the timeout");
    np__gather_stop(&a->gather);
  }
  /* The punch machine runs until the session is up: while the handshake
   * goes on it still answers the peer's probes (its nomination may need a
   * second answer). After that the session's PINGs hold the path. */
  if (a->punch && (a->st == S_PUNCHING || a->st == S_SECURING)) {
    punch_flush(a, now);
    np_punch_result r;
    np__punch_result_get(a->punch, &r);
    a->stats.probes_sent = r.probes_sent;
    a->stats.probes_received = r.probes_received;
    a->stats.rounds = r.rounds;
    if (a->st == S_PUNCHING && r.state == NP_PUNCH_CONNECTED)
      on_punched(a, now);
    else if (a->st == S_PUNCHING && r.state == NP_PUNCH_FAILED)
      session_fail(a, r.error, r.reason);
  }
  if (a->qs && (a->st == S_SECURING || a->up)) {
    int64_t t = np__session_timeout(a->qs, now);
    if (t == 0)
      (void)np__session_on_timer(a->qs, now);
    session_flush(a, now);
    session_check(a, now);
  }
  if (a->up && a->st == S_CONNECTED) {
    struct np__session_stats q;
    np__session_stats(a->qs, &q);
    /* Dead: probes unanswered, or silence longer than the peer's PINGs
     * allow (a side that only receives sends nothing ack-eliciting, so
     * its probe count never climbs). */
    if (q.last_heard_ms != a->heard_last) {
      a->heard_gap = q.last_heard_ms - a->heard_last;
      a->heard_last = q.last_heard_ms;
    }
    /* Traffic was flowing (ours in flight, or the peer's packets close
     * together): a few seconds of silence is a dead path. An idle session
     * hears only PINGs, one per keepalive period. */
    bool flowing = q.bytes_in_flight > 0 || (a->heard_gap > 0 && a->heard_gap < 1000);
    int64_t quiet = flowing ? REPUNCH_SILENCE_MS : a->cfg.keepalive_ms + REPUNCH_SILENCE_MS;
    bool dead = q.pto_count >= REPUNCH_PTOS || (q.last_heard_ms > 0 && now - q.last_heard_ms > quiet);
    if (dead) {
      /* What killed the path (a NAT that lost its state) killed our
       * rendezvous connection too, likely without a word: both sides
       * register again at once, so the re-punch can be signalled. */
      if (!a->rdv_renewed) {
        a->rdv_renewed = true;
        np__rdv_client_reconnect(a->rdv, now, "the session's path died; renewing this connection");
      }
      if (!a->callee && !a->repunch && now >= a->repunch_next)
        repunch_start(a, now, q.pto_count);
    } else if (q.pto_count == 0 && now - q.last_heard_ms < REPUNCH_SILENCE_MS) {
      a->rdv_renewed = false;
    }
  }
}

NP_EXPORT int np_agent_process(np_agent *a) {
  if (!a)
    return NP_ERR_INVAL;
  a->rdv_revents = 0;
  /* What is ready now (never waits): the path's sockets, the rendezvous
   * fd (noted for the client below), the worker's wakeup. */
  if (np__loop_process(a->loop, 0) < 0)
    return NP_ERR_SYS;
  int64_t now = np__loop_now(a->loop);
  np__rdv_client_process(a->rdv, now, a->rdv_revents);
  a->rdv_revents = 0;
  run_machines(a, now);
  sync_rdv_fd(a);
  return 0;
}

NP_EXPORT int np_agent_fd(const np_agent *a) {
  return a ? np__loop_fd(a->loop) : -1;
}

NP_EXPORT int np_agent_timeout(const np_agent *a) {
  if (!a)
    return -1;
  int64_t now = np__loop_now(a->loop);
  int64_t w = np__rdv_client_wakeup(a->rdv);
  if (np__gather_hop_next(&a->gather) < w)
    w = np__gather_hop_next(&a->gather);
  if (np__gather_active(&a->gather)) {
    int64_t p = np__gather_wakeup(&a->gather);
    if (np__gather_done(&a->gather) && a->callee)
      p = a->gather.started + PORTMAP_WAIT_MS; /* or the worker's wakeup */
    w = p < w ? p : w;
  }
  if (a->punch && (a->st == S_PUNCHING || a->st == S_SECURING)) {
    int64_t p = np__punch_wakeup(a->punch);
    w = p < w ? p : w;
  }
  if (a->qs && (a->st == S_SECURING || a->up)) {
    int64_t t = np__session_timeout(a->qs, now);
    if (t >= 0 && now + t < w)
      w = now + t;
  }
  if ((a->st == S_GATHERING || a->st == S_OFFERED) && a->session_deadline < w)
    w = a->session_deadline;
  if (w == INT64_MAX)
    return -1;
  int64_t d = w - now;
  return d < 0 ? 0 : d > 60000 ? 60000 : (int)d;
}

NP_EXPORT int np_agent_wait(np_agent *a, int timeout_ms) {
  if (!a)
    return NP_ERR_INVAL;
  int64_t end = timeout_ms < 0 ? INT64_MAX : np__loop_now(a->loop) + timeout_ms;
  for (;;) {
    int rc = np_agent_process(a);
    if (rc != 0)
      return rc;
    if (a->ev_n > 0 || a->activity) {
      a->activity = false;
      return 0;
    }
    int64_t now = np__loop_now(a->loop);
    if (now >= end)
      return NP_ERR_TIMEOUT;
    int t = np_agent_timeout(a);
    int64_t left = end - now;
    if (t < 0 || t > left)
      t = left > 60000 ? 60000 : (int)left;
    struct pollfd pfd = {np__loop_fd(a->loop), POLLIN, 0};
    if (poll(&pfd, 1, t) < 0 && errno != EINTR)
      return NP_ERR_SYS;
  }
}

NP_EXPORT int np_agent_next_event(np_agent *a, np_agent_event *ev) {
  if (!a || !ev || a->ev_n == 0)
    return 0;
  *ev = a->ev[a->ev_head];
  a->ev_head = (a->ev_head + 1) % MAX_EVENTS;
  a->ev_n--;
  return 1;
}

/* ---- the session's streams and datagrams ------------------------------------------ */

/* The session, for an application call: once up, and after it closed
 * (what arrived stays readable until np_agent_close()). */
static np__session *app_session(const np_agent *a) {
  if (!a || !a->qs || (!a->up && a->st != S_DONE))
    return NULL;
  return a->qs;
}

/* Sends at once what an application call queued: nothing waits for the
 * next turn of the loop. */
static void after_app_call(np_agent *a) {
  int64_t now = np__loop_now(a->loop);
  session_flush(a, now);
  session_check(a, now);
}

NP_EXPORT int np_agent_stream_open(np_agent *a, int64_t *id) {
  if (!id || !a || !a->up)
    return NP_ERR_INVAL;
  return np__session_stream_open(a->qs, id);
}

NP_EXPORT int np_agent_stream_accept(np_agent *a, int64_t *id) {
  np__session *qs = app_session(a);
  if (!qs || !id)
    return 0;
  int rc = np__session_stream_accept(qs, id);
  if (rc != 1)
    a->stream_announced = false; /* the next new stream gets its event */
  return rc == 1 ? 1 : 0;
}

NP_EXPORT long np_agent_stream_write(np_agent *a, int64_t id, const void *buf, size_t len) {
  if (!a || (len && !buf))
    return NP_ERR_INVAL;
  if (a->st == S_DONE && a->qs)
    return NP_ERR_CANCELLED;
  if (!a->up)
    return NP_ERR_INVAL;
  int64_t n = np__session_stream_write(a->qs, id, buf, len, false);
  if (n > 0) {
    a->stats.stream_bytes_sent += (uint64_t)n;
    after_app_call(a);
  }
  return (long)n;
}

NP_EXPORT long np_agent_stream_read(np_agent *a, int64_t id, void *buf, size_t cap) {
  np__session *qs = app_session(a);
  if (!qs || (cap && !buf))
    return NP_ERR_INVAL;
  /* fin NULL: the end is reported by a read that returns 0, after the
   * last byte, and the stream is forgotten only then. */
  int64_t n = np__session_stream_read(qs, id, buf, cap, NULL);
  if (n > 0) {
    a->stats.stream_bytes_received += (uint64_t)n;
    if (a->up)
      after_app_call(a); /* the credit returned may open the peer's window */
  }
  return (long)n;
}

NP_EXPORT int np_agent_stream_shutdown(np_agent *a, int64_t id) {
  if (!a || !a->up)
    return NP_ERR_INVAL;
  int rc = np__session_stream_shutdown(a->qs, id);
  if (rc == 0)
    after_app_call(a);
  return rc;
}

NP_EXPORT int np_agent_stream_reset(np_agent *a, int64_t id) {
  np__session *qs = app_session(a);
  if (!qs)
    return NP_ERR_INVAL;
  int rc = np__session_stream_reset(qs, id, 1);
  if (rc == 0 && a->up)
    after_app_call(a);
  return rc;
}

NP_EXPORT int np_agent_stream_state(const np_agent *a, int64_t id) {
  np__session *qs = app_session(a);
  if (!qs)
    return NP_ERR_INVAL;
  unsigned f = np__session_stream_state(qs, id);
  if (!(f & NP__STREAM_KNOWN))
    return NP_ERR_INVAL;
  if (!a->up)
    f &= ~(unsigned)NP__STREAM_WRITABLE;
  return (int)(f & ~(unsigned)NP__STREAM_KNOWN);
}

NP_EXPORT int np_agent_send(np_agent *a, const void *buf, size_t len) {
  if (!a || !a->up || len > MAX_PAYLOAD || (len && !buf))
    return NP_ERR_INVAL;
  int rc = np__session_dgram_send(a->qs, buf, len);
  if (rc == 0) {
    a->stats.datagrams_sent++;
    a->stats.bytes_sent += len;
    after_app_call(a);
  }
  return rc;
}

NP_EXPORT int np_agent_recv(np_agent *a, void *buf, size_t cap) {
  np__session *qs = app_session(a);
  if (!qs || (cap && !buf))
    return NP_ERR_INVAL;
  int n = np__session_dgram_recv(qs, buf, cap);
  if (n >= 0) {
    a->stats.datagrams_received++;
    a->stats.bytes_received += (uint64_t)n;
  }
  return n;
}

static void agent_end(np_agent *a, uint64_t why) {
  if (!a)
    return;
  if (a->qs && (a->st == S_SECURING || a->up)) {
    int64_t now = np__loop_now(a->loop);
    (void)np__session_close(a->qs, why, why ? "aborted" : "done");
    /* The CONNECTION_CLOSE, in a few copies: a lost one would leave the
     * peer to its idle timeout. */
    uint8_t buf[QUIC_MAX_PKT];
    np__session_path path;
    int n = np__session_send(a->qs, buf, sizeof buf, &path, now);
    for (int i = 0; n > 0 && i < CLOSE_SENDS; i++)
      (void)send_on(a, a->qsock, &path.remote, 0, buf, (size_t)n);
  }
  session_reset(a);
}

NP_EXPORT void np_agent_close(np_agent *a) {
  agent_end(a, 0);
}

NP_EXPORT void np_agent_abort(np_agent *a) {
  agent_end(a, 1);
}

NP_EXPORT void np_agent_stats(const np_agent *a, np_session_stats *out) {
  if (!a || !out)
    return;
  *out = a->stats;
  if (a->qs) {
    struct np__session_stats q;
    np__session_stats(a->qs, &q);
    out->rtt_ms = q.rtt_smoothed_ms;
    out->rtt_min_ms = q.rtt_min_ms;
    out->packets_sent = q.packets_sent;
    out->packets_received = q.packets_received;
    out->packets_lost = q.packets_lost;
    out->cwnd = q.cwnd;
    out->datagrams_dropped = q.dgrams_dropped;
  } else if (!a->stats.connected) {
    out->rtt_ms = out->rtt_min_ms = -1;
  }
}
