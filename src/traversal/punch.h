/*
 * Hole punching: the traversal state machine of one session, from the
 * exchanged candidates to a nominated pair.
 *
 * Sans-IO, like the NAT probe: the caller (the agent) feeds it the time and
 * the datagrams that arrive, and sends the datagrams it asks for, on the
 * socket it names (0 is the gathered socket; 1.. are extra sockets of the
 * birthday method, which the agent opens when first asked to send on
 * them). Time and randomness come from outside, so tests can run a whole
 * session between two simulated NATs without a network.
 *
 * Discovery packets are STUN Binding requests with
 *   USERNAME  "natpunch:<session hex>:<c|a>" (c from the caller, a from
 *             the answerer), so a request reflected back at its sender is
 *             refused;
 *   MESSAGE-INTEGRITY-SHA256 keyed by the session key (both sides derive it
 *             from the X25519 keys in the signed offer and answer);
 *   FINGERPRINT.
 * Anything that fails these checks is ignored: spoofed and stale probes
 * (an earlier session has another key) cannot steer the session.
 *
 * Replays. Integrity only proves that a sender once knew the key, so a
 * probe captured on the wire and replayed later, from anywhere, would pass
 * it. So every request we send has a transaction id of its own (the target
 * index and 8 fresh bytes); a target remembers its last few, and a success
 * response counts only once, for an outstanding transaction, arriving on
 * the socket and from the address the request went to. The callee takes a
 * nominated pair (to set up the path, or later to move it) only when it
 * has itself validated that exact pair by such a round trip: a nomination
 * on a pair not yet valid is remembered and honoured when the triggered
 * check on it succeeds. On the normal path the triggered check and the
 * nomination cross, so this costs no round trip; a replayed nomination
 * from another address gets a check its sender cannot answer. Requests
 * from an address the aiming rules of checklist.h refuse (a third host)
 * are not answered at all.
 *
 * Ordering against "rude" gateways. A Linux NAT without an input firewall
 * keeps conntrack state for an unsolicited inbound packet, and a later
 * outbound packet to that same remote address:port then gets another public
 * port: a probe that arrives before the receiver's own outbound packet
 * closes the hole it was meant to use. So every probe target is first
 * *primed*: a copy with a TTL just large enough to leave our own NAT(s) (it
 * makes our mapping and opens our filter, and dies in the core before it
 * reaches the peer's gateway). A full-TTL probe is sent only when the peer
 * has primed toward our exact public port:
 *   - our port is known to the peer (our mapping is endpoint-independent or
 *     the peer predicted it in this round), and the peer has primed already:
 *     the callee primes before it answers, so the caller probes at once,
 *     and the callee answers: it sends a full-TTL probe of its own on a
 *     direct pair only after the caller's READY (np__punch_peer_ready: it
 *     came through the rendezvous server after the caller primed, so the
 *     order is causal, whatever the signaling's delay), or as a fallback
 *     hold_ms + 5 s after its start when no READY comes; on a lockstep
 *     pair never (the caller's probe works whenever the pair does); a
 *     callee that does not prime (prime_ttl 0: quiet NATs) waits hold_ms;
 *   - or the target cannot hold such state (the peer has no NAT, or it is
 *     the peer's port-mapped address, or a host address on our LAN);
 *   - or a probe from that address has already arrived (the peer's NAT has
 *     the mapping: we answer and check that pair at once).
 * When our port is unknown to the peer (our NAT is symmetric against an
 * endpoint-independent peer) we only prime and wait for the peer's sweep
 * to land.
 *
 * Flat segment. Priming relies on a router between the two gateways: where
 * they share one segment with none between them (two home routers on a
 * building's network, NAT boxes on one VLAN), a primer reaches the peer's
 * gateway with TTL 1 and, on a rude NAT, leaves the very state it was
 * meant to avoid. Both sides learn this from their hop measurement (the
 * hop probe with the priming TTL is answered by the discovery server, not
 * expired in a router) and say it in their candidates (NP_SIG_CAND_FLAT);
 * when both do, on a pair with no prediction (both mappings endpoint-
 * independent), different public IPs and a NAT on each side:
 *   - the callee opens: full-TTL probes for 350 ms from its start (before
 *     its answer leaves), which make its mapping toward the caller's port
 *     (and reach a full-cone caller outright); after that no full-TTL
 *     packet toward a target no probe came from, only a TTL = depth copy
 *     every 5 s, which dies in its own outermost NAT after renewing the
 *     mapping there (conntrack runs before the TTL check), so the mapping
 *     outlives the wait while the caller's gateway sees nothing that would
 *     renew the state the burst left there;
 *   - the caller probes as usual for 600 ms (an address-dependent or
 *     full-cone callee lets those in: connected at once), then sends
 *     nothing toward the callee until 31.2 s after its start: the rude
 *     entry the burst left on its gateway, and the one its own early probes
 *     made there, have expired by then (an unreplied UDP entry lives 30 s
 *     on Linux); its probes then keep its port and match the callee's
 *     mapping: connected about 31 s after the answer;
 *   - no primes on either side (they would reach the peer's gateway like a
 *     full probe, and unlike one would not be delivered through a full-cone
 *     NAT); the session lasts at least 10 s beyond the wait, whatever its
 *     configured timeout (logged).
 *
 * Phases: phase 0 probes the direct candidates (checklist.h); after
 * predict_after_ms without success, rounds of prediction (predict.h) start,
 * one every round_ms, until a pair works, the probe budget is spent or the
 * session times out. The caller nominates the first pair that answered it
 * (a Binding request with a NOMINATE attribute); the callee takes the pair
 * on which a nomination arrives. Then all probing stops and keepalives
 * (authenticated Binding indications) hold the mapping.
 */
#ifndef NP_PUNCH_H
#define NP_PUNCH_H

#include "natpunch.h"
#include "signaling/signaling.h"
#include "traversal/checklist.h"
#include "traversal/predict.h"

#define NP_PUNCH_KEY_LEN 32
/* A probe is a small STUN message: header, USERNAME (~44), XOR-MAPPED-
 * ADDRESS, our attributes, MI-SHA256 (36), FINGERPRINT. */
#define NP_PUNCH_MAX_DATAGRAM 192
/* Most sockets a session uses (socket 0 plus the birthday sockets). */
#define NP_PUNCH_MAX_SOCKETS 1024

typedef struct np_punch np_punch;

typedef struct np_punch_config {
  bool callee;
  uint8_t key[NP_PUNCH_KEY_LEN];
  uint8_t session[NP_SIG_SESSION_LEN];
  np_sig_candidates self; /* what we sent */
  np_sig_candidates peer; /* what the peer sent */
  /* The peer's address as the rendezvous server saw it (the OBSERVED
   * stamped on its offer or answer; the port is ignored): the only IP that
   * public candidates count on and that predicted or sprayed ports are
   * sent to (checklist.h). Unset: nothing public is probed. */
  np_addr peer_observed;
  /* Ours, from our registration: the same-NAT test for private
   * candidates. Unset: no private candidate is probed. */
  np_addr self_observed;
  int predict_after_ms;   /* 0 = 1000 */
  int round_ms;           /* 0 = 800 */
  int hold_ms;            /* callee: the answer's travel time (see above); 0 = 400 */
  int session_timeout_ms; /* 0 = 20000 */
  int keepalive_ms;       /* 0 = 25000 */
  int max_probes;         /* 0 = 6000 */
  int birthday_sockets;   /* 0 = 256, at most NP_PUNCH_MAX_SOCKETS - 1 */
  int birthday_ports;     /* random ports per SPRAY round; 0 = 512 */
  int prime_ttl;          /* 0: do not prime */
  np_random_fn random; /* NULL: kernel CSPRNG */
  void *random_user;
  np_log_fn log;
  void *log_user;
  enum np_log_level log_level;
} np_punch_config;

/* One datagram to send. */
typedef struct np_punch_datagram {
  int sock;  /* 0 = the gathered socket, 1.. = birthday sockets */
  np_addr to;
  int ttl;   /* 0: the socket's default; else this TTL for this datagram */
  size_t len;
  uint8_t buf[NP_PUNCH_MAX_DATAGRAM];
} np_punch_datagram;

enum np_punch_state { NP_PUNCH_RUNNING = 0, NP_PUNCH_CONNECTED, NP_PUNCH_FAILED };

typedef struct np_punch_result {
  enum np_punch_state state;
  int sock;         /* CONNECTED: socket of the nominated pair */
  np_addr remote;   /* CONNECTED: the peer's address on it */
  enum np_via via;
  enum np_predict_strategy strategy;
  uint32_t probes_sent, probes_received;
  uint32_t rounds;
  int sockets;      /* sockets used (1 + birthday sockets) */
  int64_t elapsed_ms; /* from np__punch_new() to the nomination */
  int error;        /* FAILED: NP_ERR_TIMEOUT, NP_ERR_UNREACHABLE... */
  char reason[160]; /* FAILED: why, for humans */
} np_punch_result;

/* Creates the session at 'now' (ms, monotonic). The key and both candidate
 * sets must be those of the exchange. Returns 0, NP_ERR_INVAL, NP_ERR_NOMEM.
 * A peer whose candidates leave nothing to probe (none, or none the rules
 * of checklist.h allow) gives a machine that is FAILED at once
 * (NP_ERR_UNREACHABLE, "the peer offered no usable candidate"). */
int np__punch_new(const np_punch_config *cfg, int64_t now, np_punch **out);

/* Frees; NULL is fine. */
void np__punch_free(np_punch *p);

/* Returns 1 and fills *dg with the next datagram due at 'now', or 0 when
 * nothing is due (then wait until np__punch_wakeup()). Probes are paced;
 * call in a loop until 0. */
int np__punch_next(np_punch *p, int64_t now, np_punch_datagram *dg);

/* Callee: the caller's READY arrived (it has primed toward our candidates).
 * A priming callee sends its own full-TTL probes on direct pairs, and
 * starts a sweep or spray, only after it (or a fallback, hold_ms + 5 s
 * after the start, when none comes), so that nothing of ours reaches the
 * caller's NAT first. No effect on a caller or after the first call. */
void np__punch_peer_ready(np_punch *p, int64_t now);

/* Feeds a datagram that arrived on socket 'sock' from 'from'. Returns true
 * when it was an authenticated discovery packet of this session (consumed),
 * false otherwise (not STUN, another session, failed integrity...). */
bool np__punch_input(np_punch *p, int64_t now, int sock, const np_addr *from, const uint8_t *buf,
                    size_t len);

/* When np__punch_next() must run again (a send, a phase change, a timeout or
 * a keepalive). */
int64_t np__punch_wakeup(const np_punch *p);

/* Current state and statistics. */
void np__punch_result_get(const np_punch *p, np_punch_result *out);

/* The nominated pair (socket index and the peer's address) once CONNECTED:
 * returns true and fills both; false before. Cheap: for the data path. */
bool np__punch_path(const np_punch *p, int *sock, np_addr *remote);

/* Highest socket index the session has asked to send on, plus one. */
int np__punch_sockets(const np_punch *p);

/* Derives the session key both sides share: BLAKE2b-256 keyed with the
 * X25519 shared secret of our secret key and the peer's public key, over
 * the session nonce and both public keys in caller, callee order. Returns
 * 0 or NP_ERR_AUTH (the peer's key is a low-order point). */
int np__punch_derive_key(const uint8_t our_secret[32], const uint8_t our_public[32],
                        const uint8_t peer_public[32], bool callee,
                        const uint8_t session[NP_SIG_SESSION_LEN],
                        uint8_t key[NP_PUNCH_KEY_LEN]);

#endif
