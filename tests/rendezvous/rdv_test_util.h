/*
 * Shared helpers for the rendezvous client tests: a real server in a thread,
 * clients that record every callback, raw signaling connections crafted with
 * the codec, and one poll loop that drives all of them until a condition
 * holds or a deadline passes. Nothing sleeps: every wait is that loop.
 */
#ifndef RDV_TEST_UTIL_H
#define RDV_TEST_UTIL_H

#include "natpunch.h"
#include "rendezvous/rendezvous_client.h"
#include "signaling/signaling.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* How long a test waits for something that must happen on loopback. */
#define RDV_WAIT_MS 3000

/* ---- the real server ----------------------------------------------------- */

typedef struct rdv_srv {
  np_rendezvous_server *srv;
  pthread_t thread;
  int run_rc;
  bool running;
  np_addr addr;
} rdv_srv;

/* Starts a server on 127.0.0.1:port (0: ephemeral) in a thread. Returns the
 * np_rendezvous_server_new() result. */
int rdv_srv_start(rdv_srv *s, uint16_t port);
/* Stops, joins and frees; safe on a stopped one. */
void rdv_srv_stop(rdv_srv *s);

/* ---- recording clients ----------------------------------------------------- */

#define RDV_MAX_CONNECTS 64

typedef struct rdv_peer {
  const char *name;
  np_identity *id; /* owned unless shared_id */
  bool shared_id;
  uint8_t pk[NP_PUBKEY_LEN];
  uint8_t allow[8][NP_PUBKEY_LEN];
  np_rdv_client_config cfg;
  np_rdv_client *c;

  int n_state[4]; /* times each state was entered */
  enum np_rdv_state last_state;
  bool observed_null_ok;                /* on_state gave NULL outside REGISTERED */
  np_addr observed;                     /* given with the last REGISTERED */
  np_addr local_at_registered;          /* our socket's local address then */
  int64_t connect_at[RDV_MAX_CONNECTS]; /* when CONNECTING was entered */
  int n_connects;

  int n_offers, n_answers, n_readies, n_errors;
  np_sig_msg offer, answer, ready; /* the last ones */
  uint16_t err_code;
  char err_text[NP_SIG_MAX_TEXT + 1];
  bool err_has_session;
  uint8_t err_session[NP_SIG_SESSION_LEN];
  int64_t err_at;
} rdv_peer;

/* A peer with a new key (or sharing 'same_as''s key when not NULL),
 * backoff 20..400 ms, default ping. The client is not created yet so the
 * test can adjust cfg; rdv_peer_start() creates it. */
rdv_peer *rdv_peer_new(const char *name, const rdv_peer *same_as);
void rdv_peer_allow(rdv_peer *p, const rdv_peer *who);
void rdv_peer_start(rdv_peer *p, const np_addr *server);
void rdv_peer_free(rdv_peer *p);

/* ---- the loop -------------------------------------------------------------- */

typedef bool (*rdv_cond)(void *arg);

/* Drives the clients (and whatever cond does) until cond(arg) is true or
 * timeout_ms pass; returns the last value of cond. cond NULL runs for the
 * whole timeout. */
bool rdv_run(rdv_peer **peers, int n, int timeout_ms, rdv_cond cond, void *arg);

/* Common conditions. */
bool rdv_all_registered(void *peers_null_terminated);

/* ---- raw connections ------------------------------------------------------- */

typedef struct rdv_raw {
  int fd;
  bool closed;
  uint8_t buf[NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME];
  size_t len;
  np_sig_msg msg; /* the last frame taken by rdv_raw_take() */
  uint8_t body[NP_SIG_MAX_FRAME];
  size_t body_len;
} rdv_raw;

/* Connects (loopback, so it does not wait) and makes the socket
 * non-blocking. */
void rdv_raw_connect(rdv_raw *r, const np_addr *to);
/* Wraps an accepted socket. */
void rdv_raw_from_fd(rdv_raw *r, int fd);
void rdv_raw_close(rdv_raw *r);
/* Non-blocking: reads what is there and decodes one whole frame into msg.
 * Returns true when it got one. */
bool rdv_raw_take(rdv_raw *r);
/* Runs the loop until a frame arrives on r (or it closes): true on a frame. */
bool rdv_raw_wait(rdv_raw *r, rdv_peer **peers, int n, int timeout_ms);
/* Writes a whole frame (small, so the socket takes it at once). */
void rdv_raw_send(rdv_raw *r, const uint8_t *frame, int len);
/* Encodes msg with id and sends it. */
void rdv_raw_send_msg(rdv_raw *r, const np_sig_msg *msg, const np_identity *id);
/* HELLO(pubkey of id) .. REGISTERED. Returns the final message type
 * (NP_SIG_REGISTERED or NP_SIG_ERROR, 0 on close/timeout). */
int rdv_raw_register(rdv_raw *r, const np_identity *id, rdv_peer **peers, int n);

/* Replaces the first occurrence of 'from' (len bytes) in buf by 'to'.
 * Returns false when not found. */
bool rdv_patch(uint8_t *buf, size_t buf_len, const uint8_t *from, const uint8_t *to, size_t len);

/* ---- misc ----------------------------------------------------------------- */

np_addr rdv_addr(const char *text);
void rdv_random(void *buf, size_t len);
/* Candidates with every field set (private v4+v6, two mapped, delta, NAT
 * behaviour, portmap); 'salt' changes the ports. */
np_sig_candidates rdv_candidates(int salt);
/* Asserts two candidate sets are identical, field by field. */
void rdv_assert_candidates_equal(const np_sig_candidates *a, const np_sig_candidates *b);
/* The local address of a connected socket. */
np_addr rdv_local_addr(int fd);
int64_t rdv_now(void);

/* Wall-clock milliseconds since the Unix epoch: what a peer puts in the
 * TIMESTAMP of a signed OFFER/ANSWER (the client drops stale ones). */
uint64_t rdv_unix_ms(void);

#endif
