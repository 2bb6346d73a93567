/*
 * Rendezvous client: keeps a peer registered with a rendezvous server and
 * carries its offers and answers.
 *
 * It never blocks: it owns one non-blocking TCP socket and is driven by the
 * caller's loop (np__rdv_client_fd() / np__rdv_client_wakeup() /
 * np__rdv_client_process()), the same way the traversal engine will drive
 * it. On a lost connection (server restart, network change) it reconnects
 * with exponential backoff and registers again on its own.
 */
#ifndef NP_RENDEZVOUS_CLIENT_H
#define NP_RENDEZVOUS_CLIENT_H

#include "natpunch.h"
#include "signaling/signaling.h"

typedef struct np_rdv_client np_rdv_client;

enum np_rdv_state {
  NP_RDV_DISCONNECTED = 0, /* waiting for the backoff timer */
  NP_RDV_CONNECTING,       /* TCP connect in progress */
  NP_RDV_AUTHENTICATING,   /* HELLO sent, CHALLENGE/REGISTER in flight */
  NP_RDV_REGISTERED,
};

typedef struct np_rdv_client_config {
  np_addr server;
  const np_identity *identity; /* borrowed: must outlive the client */
  /* Callers the server should let through (empty: everyone). Also checked
   * again by the client, so a misbehaving server cannot force a call on it. */
  const uint8_t (*allow)[NP_PUBKEY_LEN];
  int n_allow;
  int backoff_min_ms; /* 0 = 250 */
  int backoff_max_ms; /* 0 = 30000 */
  int ping_ms;        /* 0 = 25000: keepalive, below the server's idle limit */

  /* Callbacks, called from np__rdv_client_process(). msg points into the
   * client's buffer and is valid only during the call. */
  void (*on_state)(void *user, enum np_rdv_state state, const np_addr *observed);
  void (*on_offer)(void *user, const np_sig_msg *offer);   /* signature verified */
  void (*on_answer)(void *user, const np_sig_msg *answer); /* signature verified */
  void (*on_ready)(void *user, const np_sig_msg *ready);   /* signature verified */
  /* A signed OFFER/ANSWER/READY addressed to us that was dropped because
   * its signature does not verify under the key its FROM names: forged or
   * altered on the way (the server relays; it cannot sign for a peer).
   * None of m's fields is authenticated: it is for telling the user why a
   * call cannot go on, never for acting on its content. May be NULL. */
  void (*on_forged)(void *user, const np_sig_msg *m);
  /* A server ERROR (e.g. 404 for an offer to an unknown peer, 403 refused,
   * 409 our ID taken, 425 our clock off), only when authenticated by the
   * connection's MAC; session is NULL when it is not about a session. */
  void (*on_error)(void *user, uint16_t code, const char *text, const uint8_t *session);
  void *user;

  np_log_fn log;
  void *log_user;
  enum np_log_level log_level;
} np_rdv_client_config;

/* Creates the client and starts connecting at 'now' (ms, monotonic).
 * Returns 0, NP_ERR_INVAL, NP_ERR_NOMEM. */
int np__rdv_client_new(const np_rdv_client_config *cfg, int64_t now, np_rdv_client **out);

/* The socket to poll (-1 while waiting to reconnect) and the events it
 * wants (POLLIN, plus POLLOUT while connecting or with output queued). */
int np__rdv_client_fd(const np_rdv_client *c, short *events);

/* When np__rdv_client_process() must next run even without I/O. */
int64_t np__rdv_client_wakeup(const np_rdv_client *c);

/* Handles readiness (revents from poll, 0 for a timer wakeup) and timers.
 * Returns 0; errors are handled internally by reconnecting. */
int np__rdv_client_process(np_rdv_client *c, int64_t now, short revents);

/* Current state. */
enum np_rdv_state np__rdv_client_state(const np_rdv_client *c);

/* True once the server said, authenticated, that another connection
 * registered our key (409): the client then stays DISCONNECTED and does not
 * try again, so two processes with one key do not take the ID from each
 * other for ever. */
bool np__rdv_client_replaced(const np_rdv_client *c);

/* Queues a signed OFFER to peer 'to' with these candidates; session is the
 * caller-chosen session nonce. Returns 0, NP_ERR_INVAL when not registered,
 * NP_ERR_NOSPACE when the output queue is full. */
int np__rdv_client_send_offer(np_rdv_client *c, const uint8_t to[NP_PUBKEY_LEN],
                             const uint8_t session[NP_SIG_SESSION_LEN],
                             const np_sig_candidates *cand);

/* Queues a signed ANSWER to the caller of session; peer_seen (may be NULL)
 * is the caller's public address as the callee corrects it (e.g. the
 * OBSERVED address the server stamped on the offer). */
int np__rdv_client_send_answer(np_rdv_client *c, const uint8_t to[NP_PUBKEY_LEN],
                              const uint8_t session[NP_SIG_SESSION_LEN],
                              const np_sig_candidates *cand, const np_addr *peer_seen);

/* Queues a signed ANSWER that declines the call of session: it carries the
 * ERROR code (100..999, e.g. NP_SIG_E_BUSY) and text (may be NULL) and no
 * candidates, so the caller fails at once with a reason instead of timing
 * out. Same errors as np__rdv_client_send_offer(), and NP_ERR_INVAL for a
 * code out of range. */
int np__rdv_client_send_decline(np_rdv_client *c, const uint8_t to[NP_PUBKEY_LEN],
                               const uint8_t session[NP_SIG_SESSION_LEN], uint16_t code,
                               const char *text);

/* Queues a signed READY to the callee of session: the caller has primed
 * toward the callee's candidates (its first packets have left), so the
 * callee may now send toward it without racing them. Same errors as
 * np__rdv_client_send_offer(). */
int np__rdv_client_send_ready(np_rdv_client *c, const uint8_t to[NP_PUBKEY_LEN],
                             const uint8_t session[NP_SIG_SESSION_LEN]);

/* Drops the connection and registers again after the shortest backoff,
 * for when the owner has reason to think it is dead although TCP has not
 * said so yet: a NAT that lost its state (the punched path died with it)
 * silently drops this connection too, and a server that already saw it
 * reset would leave us unreachable until the next keepalive fails. What
 * was queued is resent by the owner on re-registration, as after any loss.
 * Nothing happens while not connected. */
void np__rdv_client_reconnect(np_rdv_client *c, int64_t now, const char *why);

/* Closes the connection and frees. NULL is fine. */
void np__rdv_client_free(np_rdv_client *c);

#endif
