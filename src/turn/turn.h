/*
 * TURN client (RFC 8656) for one allocation over UDP, as a sans-IO state
 * machine over the STUN codec (stun/stun.h).
 *
 * No sockets, no clocks: the caller passes 'now' (milliseconds, monotonic)
 * to every call, drains np__turn_next() for the datagrams to send to the
 * server, feeds what the server sent to np__turn_input(), and sleeps until
 * np__turn_timeout(). Randomness (transaction IDs) comes from an injected
 * np_random_fn, so a test replays a run exactly.
 *
 * What it does: Allocate with long-term credentials (RFC 8489 §9.2: the
 * first request goes unauthenticated, the 401 gives REALM and NONCE, the
 * retry carries USERNAME, REALM, NONCE and MESSAGE-INTEGRITY; a 438 stale
 * nonce is retried with the new nonce), Refresh before the allocation
 * expires, CreatePermission and ChannelBind with their refreshes (300 s and
 * 600 s lifetimes, refreshed at 240 s and 540 s), Send/Data indications
 * and ChannelData (RFC 8656 §12), and deallocation (Refresh with LIFETIME 0)
 * on close. Requests are retransmitted as RFC 8489 §6.2.1 says for UDP
 * (RTO 500 ms doubling, 7 sends, then 16 RTO).
 */
#ifndef NP_TURN_H
#define NP_TURN_H

#include "natpunch.h"
#include "stun/stun.h"
#include "util/log.h"
#include "util/random.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* TURN methods (RFC 8656 §18); all below 0x10, so type = method | class. */
#define NP_TURN_ALLOCATE 0x003
#define NP_TURN_REFRESH 0x004
#define NP_TURN_SEND 0x006
#define NP_TURN_DATA 0x007
#define NP_TURN_CREATE_PERMISSION 0x008
#define NP_TURN_CHANNEL_BIND 0x009

/* TURN attributes (RFC 8656 §18). */
#define NP_TURN_ATTR_CHANNEL_NUMBER 0x000C
#define NP_TURN_ATTR_LIFETIME 0x000D
#define NP_TURN_ATTR_XOR_PEER_ADDRESS 0x0012
#define NP_TURN_ATTR_DATA 0x0013
#define NP_TURN_ATTR_XOR_RELAYED_ADDRESS 0x0016
#define NP_TURN_ATTR_REQUESTED_TRANSPORT 0x0019

/* RFC 8656 §12: channel numbers 0x4000 through 0x4FFF. */
#define NP_TURN_CHANNEL_MIN 0x4000
#define NP_TURN_CHANNEL_MAX 0x4FFF
#define NP_TURN_CHANNEL_HEADER 4

/* Largest datagram exchanged with the server (the STUN codec's limit). */
#define NP_TURN_MAX_DATAGRAM NP_STUN_MAX_MESSAGE
/* Largest application payload np__turn_send() wraps: what is left of a
 * datagram after a Send indication's header, XOR-PEER-ADDRESS (IPv6) and
 * DATA attribute header. */
#define NP_TURN_MAX_PAYLOAD (NP_TURN_MAX_DATAGRAM - NP_STUN_HEADER_LEN - 24 - 4)
/* Peers one allocation keeps permissions and channels for. */
#define NP_TURN_MAX_PERMISSIONS 8
#define NP_TURN_MAX_CHANNELS 8

/* Default and bounds of the requested allocation lifetime (RFC 8656 §7.2:
 * the server's default is 600 s, and a client asking for less gets that). */
#define NP_TURN_DEFAULT_LIFETIME 600
/* RFC 8656 §9: permissions last 300 s; §12: channel bindings 600 s. */
#define NP_TURN_PERMISSION_LIFETIME_MS 300000
#define NP_TURN_PERMISSION_REFRESH_MS 240000
#define NP_TURN_CHANNEL_LIFETIME_MS 600000
#define NP_TURN_CHANNEL_REFRESH_MS 540000

enum np__turn_state {
  NP_TURN_ALLOCATING, /* Allocate in flight (possibly after a 401/438) */
  NP_TURN_READY,      /* allocation granted: relayed address known */
  NP_TURN_CLOSING,    /* deallocation (Refresh LIFETIME 0) in flight */
  NP_TURN_CLOSED,     /* deallocated, or closed before it was granted */
  NP_TURN_FAILED,     /* see np__turn_error() */
};

typedef struct np__turn_config {
  np_addr server;       /* where datagrams from np__turn_next() go */
  const char *username; /* long-term credentials (copied) */
  const char *password;
  uint32_t lifetime;   /* requested, seconds; 0: NP_TURN_DEFAULT_LIFETIME */
  np_random_fn random; /* NULL: the kernel's CSPRNG */
  void *random_user;
  np_logger log;
} np__turn_config;

/* One datagram to send to the server (np__turn_next fills it). */
typedef struct np__turn_datagram {
  np_addr to;
  size_t len;
  uint8_t buf[NP_TURN_MAX_DATAGRAM];
} np__turn_datagram;

/* What np__turn_input() hands out: an application payload relayed from a
 * peer (Data indication or ChannelData), pointing into the input buffer. */
typedef struct np__turn_recv {
  bool has_data;
  np_addr peer;
  const uint8_t *data;
  size_t len;
} np__turn_recv;

typedef struct np__turn np__turn;

/* Makes a client for one allocation on cfg->server; the first
 * np__turn_next() at or after 'now' sends the Allocate. Copies the
 * credentials. Returns NULL when cfg is invalid (no server address, no or
 * over-long username or password) or memory is short. */
np__turn *np__turn_new(const np__turn_config *cfg, int64_t now);

/* Frees the client (NULL is fine). Sends nothing: call np__turn_close()
 * and drain np__turn_next() first to deallocate on the server. */
void np__turn_free(np__turn *t);

/* Fills *out with the next datagram for the server that is due at 'now'
 * (a request, a retransmission, a refresh) and returns true, or returns
 * false when nothing is due. Call until it returns false. Also where
 * timeouts take effect: a request unanswered after its last retransmission
 * fails the allocation (Allocate, Refresh), or drops the permission or
 * channel it was for. */
bool np__turn_next(np__turn *t, int64_t now, np__turn_datagram *out);

/* Feeds a datagram that came from the server. Returns true when it was
 * TURN (a STUN message or ChannelData, whether or not it matched anything
 * of ours), false otherwise (not ours: the caller may try other protocols).
 * A relayed application payload is returned through *out (out->has_data),
 * pointing into buf; out may be NULL to discard payloads. Responses that do
 * not match a transaction in flight, or fail MESSAGE-INTEGRITY, are ignored. */
bool np__turn_input(np__turn *t, int64_t now, const uint8_t *buf, size_t len, np__turn_recv *out);

/* Earliest time at which np__turn_next() may have something to send or a
 * timeout to apply; INT64_MAX when nothing is pending (CLOSED, FAILED). */
int64_t np__turn_timeout(const np__turn *t);

/* The client's state. */
enum np__turn_state np__turn_get_state(const np__turn *t);

/* The relayed transport address (XOR-RELAYED-ADDRESS) once READY, else
 * NULL. */
const np_addr *np__turn_relayed(const np__turn *t);

/* Our address as the server saw it (XOR-MAPPED-ADDRESS of the Allocate
 * success), or NULL when unknown. */
const np_addr *np__turn_mapped(const np__turn *t);

/* Why the client FAILED: NP_ERR_AUTH (credentials refused), NP_ERR_TIMEOUT
 * (server silent), NP_ERR_REFUSED (an error response, see
 * np__turn_error_code), NP_ERR_PROTO (a malformed success); 0 otherwise. */
int np__turn_error(const np__turn *t);

/* The STUN error code of the last error response received (e.g. 401, 437,
 * 486), 0 if none, and its reason phrase ("" if none). For logs and tests. */
int np__turn_error_code(const np__turn *t);
const char *np__turn_error_reason(const np__turn *t);

/* Asks for a permission for peer's IP address (the port is ignored, as
 * RFC 8656 §9 says) and keeps it refreshed. Sent once READY. Idempotent.
 * Returns 0, NP_ERR_INVAL (no address, or the client is closing/failed) or
 * NP_ERR_NOSPACE (NP_TURN_MAX_PERMISSIONS reached). */
int np__turn_permit(np__turn *t, const np_addr *peer);

/* True when the server confirmed a permission for peer's IP. */
bool np__turn_permitted(const np__turn *t, const np_addr *peer);

/* Binds a channel to peer (IP and port) and keeps it refreshed; also asks
 * for a permission for its IP (np__turn_permit), since the one a
 * ChannelBind installs on the server outlives neither 300 s nor the
 * channel. Sent once READY. Idempotent. Returns 0, NP_ERR_INVAL or
 * NP_ERR_NOSPACE (NP_TURN_MAX_CHANNELS or NP_TURN_MAX_PERMISSIONS
 * reached). */
int np__turn_bind(np__turn *t, const np_addr *peer);

/* The channel number bound to peer and confirmed by the server, or 0. */
uint16_t np__turn_channel(const np__turn *t, const np_addr *peer);

/* Wraps len bytes of payload for peer into out (cap bytes) for the server:
 * ChannelData when a channel to peer is bound, else a Send indication.
 * Returns the datagram's length, NP_ERR_AGAIN when the client is not READY
 * or the server has not confirmed a permission or channel for the peer yet
 * (it would drop the data), NP_ERR_INVAL or NP_ERR_NOSPACE (payload over
 * NP_TURN_MAX_PAYLOAD or cap too small). */
int np__turn_send(np__turn *t, const np_addr *peer, const uint8_t *payload, size_t len,
                  uint8_t *out, size_t cap);

/* Ends the allocation: when one is granted, the next np__turn_next() sends
 * a Refresh with LIFETIME 0 (deallocation) and the client is CLOSED when it
 * is answered (or after a few unanswered sends); otherwise CLOSED at once. */
void np__turn_close(np__turn *t, int64_t now);

/* Human-readable state name, for logs. */
const char *np__turn_state_name(enum np__turn_state s);

#endif /* NP_TURN_H */
