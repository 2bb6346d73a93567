/*
 * The QUIC session over a punched path (RFC 9000, ngtcp2 0.12): one
 * connection, client (the caller) or server (the callee), with reliable
 * streams, RFC 9221 datagrams, idle timeout and PING keep-alive, close with
 * a reason, stats and path migration, authenticated to the peer IDs
 * (session/tls.h).
 *
 * Sans-IO: the session never touches a socket or a clock. The owner feeds it
 * each received datagram (np__session_recv), drains what it wants to send
 * (np__session_send until it returns 0), and calls np__session_on_timer when
 * np__session_timeout says so; every call takes the current time in
 * milliseconds from the owner's monotonic clock (never going backwards).
 * After any call that may have changed something (recv, timer, stream or
 * datagram writes, close, migrate), drain np__session_send again.
 *
 * Addresses are the path as the owner sees it: `local` is the socket the
 * datagram came in on (or must leave from), `remote` the peer's address.
 */
#ifndef NP_SESSION_SESSION_H
#define NP_SESSION_SESSION_H

#include "natpunch.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct np__session np__session;

typedef struct np__session_config {
  /* The caller is the QUIC client; the callee is the server. */
  bool client;
  /* Our identity (the key shown in the TLS handshake); borrowed for the
   * duration of np__session_new only. */
  const np_identity *identity;
  /* The peer's Ed25519 public key: the peer ID it called or accepted. The
   * handshake fails unless the peer proves this key. */
  uint8_t peer[NP_PUBKEY_LEN];
  /* The initial path. A server's remote is a hint only: it follows the
   * address its client's first packet comes from. */
  np_addr local, remote;
  /* QUIC idle timeout, ms; 0 = 20000. The handshake must finish within it. */
  int idle_timeout_ms;
  /* PING after this much quiet, ms; 0 = 5000; negative = off. Keeps NAT
   * mappings open and detects a vanished peer before the idle timeout. */
  int keepalive_ms;
  /* Largest UDP payload sent, bytes; 0 = 1200 (always safe on the
   * Internet), raised by path MTU discovery up to 1452 where the path
   * carries it (datagrams stay within 1200). Values below 1200 are raised
   * to 1200 (RFC 9000 §14); a value set turns discovery off. */
  size_t max_udp_payload;
  /* Per-stream cap on data written but not yet acknowledged, bytes;
   * 0 = 2 MiB. np__session_stream_write returns NP_ERR_AGAIN beyond it. */
  size_t stream_buffer;
  np_log_fn log;
  void *log_user;
  enum np_log_level log_level;
  /* With log_level DEBUG, also pass on ngtcp2's per-packet trace. */
  bool quic_trace;
} np__session_config;

/* Where a datagram must go: send it from the socket bound to `local` to
 * `remote`. */
typedef struct np__session_path {
  np_addr local, remote;
} np__session_path;

enum np__session_state {
  NP__SESSION_HANDSHAKE = 0, /* not yet authenticated */
  NP__SESSION_ESTABLISHED,   /* handshake complete, peer key verified */
  NP__SESSION_CLOSING,       /* we closed (or failed); repeating our CONNECTION_CLOSE */
  NP__SESSION_DRAINING,      /* the peer closed; waiting out 3 PTO in silence */
  NP__SESSION_CLOSED,        /* over; only np__session_free is useful */
};

/* Why a session ended, from np__session_close_info. */
struct np__session_close_info {
  /* 0 for an orderly close (either side's np__session_close with
   * app_error 0); NP_ERR_AUTH for a peer key mismatch (either way) or
   * another TLS failure; NP_ERR_TIMEOUT for the idle or handshake timeout;
   * NP_ERR_REFUSED when the peer closed with a non-zero application error;
   * NP_ERR_PROTO for a QUIC transport error; NP_ERR_CANCELLED when we closed
   * with a non-zero application error. */
  int err;
  /* True when the CONNECTION_CLOSE came from the peer. */
  bool by_peer;
  /* True when the handshake failed because a key was not the expected one:
   * we rejected the peer's (by_peer false) or the peer rejected ours
   * (by_peer true, learnt from its CONNECTION_CLOSE). */
  bool key_mismatch;
  /* True when `code` is an application error (np__session_close), false
   * for a QUIC transport error code (RFC 9000 §20.1). */
  bool app;
  uint64_t code;
  /* The reason phrase, ours or the peer's (NUL-terminated, truncated). */
  char reason[128];
};

struct np__session_stats {
  int64_t rtt_smoothed_ms, rtt_min_ms; /* -1 before the first sample */
  uint64_t bytes_sent, bytes_received; /* UDP payload bytes */
  uint64_t packets_sent, packets_received;
  /* Packets carrying stream data that ngtcp2 declared lost (0.12 has no
   * connection-wide loss counter; spurious losses included). */
  uint64_t packets_lost;
  uint64_t cwnd, bytes_in_flight;
  /* Probe timeouts in a row with nothing acknowledged (RFC 9002 6.2):
   * reset by any ACK, so a count that climbs means the path is dead. */
  uint64_t pto_count;
  /* When a packet of the peer's was last decrypted and processed (ms, the
   * owner's clock; 0 before any): junk or replays from others do not count. */
  int64_t last_heard_ms;
  np__session_path path;   /* the path currently in use */
  uint64_t migrations;     /* path changes (ours or the peer's) */
  uint64_t path_failures;  /* path validations that failed */
  uint64_t dgrams_dropped; /* received datagrams dropped on a full queue */
};

/* True when a datagram's first byte is in QUIC's RFC 9443 ranges (64-127,
 * 192-255: the fixed bit set, which this module never greases), so the
 * owner of a shared socket can tell it from STUN (0-3) before handing it
 * to np__session_recv. */
bool np__session_is_quic(const uint8_t *pkt, size_t len);

/* Creates a session. A client builds its first flight at once (drain
 * np__session_send); a server waits for its client's first Initial packet.
 * now_ms anchors the idle and handshake timers. Returns 0, NP_ERR_INVAL (no
 * identity, no local/remote address for a client, out-of-range values),
 * NP_ERR_NOMEM or NP_ERR_SYS (GnuTLS or ngtcp2 setup failed; logged). */
int np__session_new(const np__session_config *cfg, int64_t now_ms, np__session **out);

/* Frees the session and every stream buffer. It sends nothing: to close
 * politely, call np__session_close and drain np__session_send first. NULL
 * is fine. */
void np__session_free(np__session *s);

/* Processes one received UDP datagram that arrived on `local` from `from`.
 * Returns 0 when it was used or harmlessly dropped (garbage, duplicates,
 * packets for another connection, a forged Initial before the real one), or
 * a negative NP_ERR_* when it ended the session with an error (an orderly
 * close by the peer returns 0, so check np__session_closed; close info says
 * why; drain np__session_send to emit our CONNECTION_CLOSE). A datagram
 * from a new address goes through QUIC path validation: the server follows
 * a client whose NAT rebound. */
int np__session_recv(np__session *s, const np_addr *local, const np_addr *from, const uint8_t *pkt,
                     size_t len, int64_t now_ms);

/* Writes the next datagram to send into buf (cap at least 1200, better
 * max_udp_payload, or 1452 when it is 0 and path MTU discovery may grow
 * packets) and the path it must take into *path (NULL to ignore).
 * Returns its length, 0 when there is nothing to send now (congestion,
 * pacing or idle: ask np__session_timeout), NP_ERR_NOSPACE for cap < 1200.
 * A session that fails while writing returns its CONNECTION_CLOSE instead.
 * Call it in a loop until it returns 0: a burst ends after one pacing
 * quantum (at least what the pacing rate allows in one millisecond, the
 * clock's tick), and the next one is due when np__session_timeout says. */
int np__session_send(np__session *s, uint8_t *buf, size_t cap, np__session_path *path,
                     int64_t now_ms);

/* Milliseconds from now_ms until np__session_on_timer must be called (0 =
 * now), or -1 when no timer is armed (closed). */
int64_t np__session_timeout(const np__session *s, int64_t now_ms);

/* Runs the expired timers: retransmission (PTO), delayed ACKs, pacing,
 * keep-alive, idle and handshake timeouts, the end of the closing or
 * draining period. Returns 0, or a negative NP_ERR_* when it ended the
 * session (NP_ERR_TIMEOUT for the idle or handshake timeout). Then drain
 * np__session_send. */
int np__session_on_timer(np__session *s, int64_t now_ms);

/* The session's state (see enum np__session_state). */
enum np__session_state np__session_state(const np__session *s);

/* True once the handshake completed with the peer's key verified: streams
 * and datagrams flow. A client reaches it after one round trip; the server
 * one half round trip later, when it has the client's certificate. A client
 * has checked the server's key by then, but the server may still reject
 * the client's: then the session closes half a round trip later with
 * key_mismatch and by_peer set, and the server has delivered nothing. */
bool np__session_established(const np__session *s);

/* True when the session is over or ending (CLOSING, DRAINING or CLOSED):
 * no more data will flow; np__session_close_info says why. */
bool np__session_closed(const np__session *s);

/* Fills *info with why the session ended. Returns 0, or NP_ERR_AGAIN while
 * it has not ended. */
int np__session_close_info(const np__session *s, struct np__session_close_info *info);

/* Opens a bidirectional stream and stores its id in *id. Returns 0,
 * NP_ERR_AGAIN when the peer's stream limit is reached or the handshake is
 * not complete (try again after the next np__session_recv), or
 * NP_ERR_CANCELLED when the session is closed. */
int np__session_stream_open(np__session *s, int64_t *id);

/* Returns 1 and the id of a stream the peer opened that has not been
 * accepted yet, or 0 when there is none. Data can be read from a peer
 * stream only after it was accepted (it is buffered until then, within the
 * flow-control window). */
int np__session_stream_accept(np__session *s, int64_t *id);

/* Queues up to len bytes for the stream and returns how many it took
 * (possibly fewer than len), NP_ERR_AGAIN when the stream's buffer is full
 * (back-pressure: retry after the peer acknowledged more, i.e. after
 * np__session_recv), NP_ERR_INVAL for an unknown stream or after
 * shutdown, NP_ERR_CANCELLED when the peer stopped the stream or the
 * session is closed. With fin, the stream is half-closed once every byte
 * taken has been sent (fin applies only when all len bytes were taken).
 * The data is kept until the peer acknowledges it, for retransmission. */
int64_t np__session_stream_write(np__session *s, int64_t id, const uint8_t *buf, size_t len,
                                 bool fin);

/* Copies up to cap received bytes into buf and returns how many; *fin is
 * set true when these bytes (possibly none) reach the peer's FIN, and the
 * stream is forgotten once our side is done too (later calls:
 * NP_ERR_INVAL). Returns NP_ERR_AGAIN
 * when no data is waiting, NP_ERR_CANCELLED when the peer reset the stream,
 * NP_ERR_INVAL for an unknown stream. Reading returns flow-control credit
 * to the peer: a stream that is not read stalls only itself. */
int64_t np__session_stream_read(np__session *s, int64_t id, uint8_t *buf, size_t cap, bool *fin);

/* Half-closes the stream: a FIN follows the data already written. Returns
 * 0 or NP_ERR_INVAL (unknown stream). Reading continues. */
int np__session_stream_shutdown(np__session *s, int64_t id);

/* Abandons the stream both ways (RESET_STREAM and STOP_SENDING with
 * app_error) and forgets it. Returns 0 or NP_ERR_INVAL. */
int np__session_stream_reset(np__session *s, int64_t id, uint64_t app_error);

/* Bytes of a datagram payload the peer will take on the current path (0
 * before the handshake or when the peer disabled datagrams). */
size_t np__session_dgram_max(const np__session *s);

/* Queues an unreliable datagram (RFC 9221). Returns 0, NP_ERR_AGAIN when
 * the send queue is full, NP_ERR_NOSPACE when len exceeds
 * np__session_dgram_max, NP_ERR_INVAL before the handshake completed,
 * NP_ERR_CANCELLED after close. Queued datagrams may still be lost. */
int np__session_dgram_send(np__session *s, const uint8_t *buf, size_t len);

/* Takes the oldest received datagram: returns its length (copied into buf,
 * truncated to cap) or NP_ERR_AGAIN when none is waiting. The receive queue
 * is bounded; overflow drops the newest (counted in stats). */
int np__session_dgram_recv(np__session *s, uint8_t *buf, size_t cap);

/* Closes the session with an application error code (0 = normal) and a
 * reason the peer will see; the next np__session_send emits the
 * CONNECTION_CLOSE. Unsent stream data is abandoned. Returns 0, or
 * NP_ERR_INVAL when already closed. */
int np__session_close(np__session *s, uint64_t app_error, const char *reason);

/* Copies counters and the current path. (A struct tag, not a typedef, so
 * that the function can carry the plain name.) */
void np__session_stats(const np__session *s, struct np__session_stats *st);

/* The client moves to a new path (after its local address changed, or onto
 * a new socket after a re-punch): sending switches at once and QUIC
 * validates the path; if validation fails (3 PTO without an answer) the
 * session moves back to the old path by itself (stats count it in
 * path_failures), so keep the old socket open until then. new_local must
 * differ from the current local address: ngtcp2 0.12 migrates the local
 * side only, so a new remote with the same local is NP_ERR_UNSUPPORTED
 * (open a new socket for it). Returns 0, NP_ERR_INVAL (a server, not
 * established, no address), NP_ERR_AGAIN (handshake not yet confirmed, or
 * the peer has not issued a spare connection ID yet: retry after the next
 * np__session_recv) or NP_ERR_UNSUPPORTED. */
int np__session_migrate(np__session *s, const np_addr *new_local, const np_addr *new_remote,
                        int64_t now_ms);

/* Stream state bits from np__session_stream_state. */
#define NP__STREAM_KNOWN 0x100      /* the session knows the stream */
#define NP__STREAM_READABLE 0x01    /* data, the FIN or a reset waits to be read */
#define NP__STREAM_WRITABLE 0x02    /* a write would take at least one byte */
#define NP__STREAM_READ_EOF 0x04    /* the peer's FIN was read */
#define NP__STREAM_WRITE_ACKED 0x08 /* our data and FIN are acknowledged (the
                                     * transport closed the stream) */
#define NP__STREAM_RESET 0x10       /* the peer reset it or asked us to stop */

/* What the stream is doing: the NP__STREAM_* bits, 0 for a stream the
 * session does not know (never opened or accepted, or forgotten once both
 * directions ended and everything was read). The agent's public
 * np_agent_stream_state() is this minus NP__STREAM_KNOWN. */
unsigned np__session_stream_state(const np__session *s, int64_t id);

/* True when a stream the peer opened waits for np__session_stream_accept
 * (without taking it). */
bool np__session_stream_pending(const np__session *s);

#endif
