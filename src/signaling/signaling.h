/*
 * Signaling protocol codec: the frames peers and the rendezvous server
 * exchange over TCP. Pure: no sockets, no clocks, no allocation.
 *
 * Framing: each frame is a 4-byte big-endian body length followed by the
 * body; bodies larger than the configured maximum (NP_SIG_MAX_FRAME at most)
 * are a protocol error, so a peer cannot make the other side buffer more.
 * A length prefix (rather than delimiters) lets the reader know the frame
 * size up front, reject it before reading it, and carry binary keys as is.
 *
 *   body    = version(1) type(1) reserved(2, zero) tlv*
 *   tlv     = type(2) length(2) value(length) pad-to-4(zero)
 *
 * Unknown TLV types are skipped, so later versions can add fields without
 * breaking older peers (room for extension). A message whose version byte
 * differs from NP_SIG_VERSION is rejected with NP_ERR_UNSUPPORTED so the
 * server can answer "505 version not supported".
 *
 * Signatures: OFFER and ANSWER carry a SIGNATURE TLV by the sender's key
 * (FROM) over every body byte before it; REGISTER carries one over the
 * challenge (see np__sig_register_payload()). After SIGNATURE only
 * server-stamped TLVs may follow (OBSERVED): the server adds the sender's
 * address as it saw it without breaking the signature, and the receiver
 * knows that part is the server's word, not the peer's.
 */
#ifndef NP_SIGNALING_H
#define NP_SIGNALING_H

#include "natpunch.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NP_SIG_VERSION 1
#define NP_SIG_LEN_PREFIX 4
#define NP_SIG_HEADER_LEN 4      /* version, type, reserved */
#define NP_SIG_MAX_FRAME 16384   /* body bytes */
#define NP_SIG_NONCE_LEN 32      /* registration challenge */
#define NP_SIG_SESSION_LEN 16    /* offer/answer session nonce */
#define NP_SIG_MAX_PRIVATE 8     /* private (host) addresses per message */
#define NP_SIG_MAX_MAPPED 2      /* one per discovery server */
#define NP_SIG_MAX_ALLOW 128     /* allowed callers sent with REGISTER */
#define NP_SIG_MAX_TEXT 200      /* error text bytes */
#define NP_SIG_KX_LEN 32         /* X25519 public key */
#define NP_SIG_MAC_LEN 32        /* keyed BLAKE2b-256 of a server frame */
#define NP_SIG_CHANNEL_KEY_LEN 32
/* Peers' clocks may differ by this much: a signed OFFER/ANSWER/READY whose
 * TIMESTAMP is further from the receiver's clock is dropped (replay bound),
 * and the server tells a sender whose clock is further from its own. */
#define NP_SIG_CLOCK_WINDOW_MS 120000

enum np_sig_type {
  NP_SIG_HELLO = 1,      /* peer -> server: "I want to register PUBKEY" */
  NP_SIG_CHALLENGE = 2,  /* server -> peer: NONCE to sign, OBSERVED */
  NP_SIG_REGISTER = 3,   /* peer -> server: PUBKEY, SIGNATURE over the challenge, ALLOW* */
  NP_SIG_REGISTERED = 4, /* server -> peer: OBSERVED */
  NP_SIG_OFFER = 5,      /* caller -> server -> callee (signed, then OBSERVED stamped) */
  /* callee -> server -> caller (signed, then OBSERVED stamped). With an
   * ERROR (e.g. NP_SIG_E_BUSY) and no candidates it declines the call;
   * the error is signed, so the server cannot fake a refusal. */
  NP_SIG_ANSWER = 6,
  NP_SIG_ERROR = 7,      /* server -> peer: ERROR (code, text), SESSION/TO when about one */
  NP_SIG_PING = 8,       /* either way: keepalive */
  NP_SIG_PONG = 9,
  /* caller -> server -> callee, signed like OFFER, no candidates: "I have
   * primed toward your candidates". The callee's own probes and its
   * sweep or spray wait for it, so their order against the caller's
   * priming does not depend on how fast the answer travelled. */
  NP_SIG_READY = 10,
};

/* Error codes carried by NP_SIG_ERROR, or by a declining ANSWER (HTTP- and
 * SIP-like, so they read naturally). */
enum np_sig_error {
  NP_SIG_E_BAD_REQUEST = 400,  /* malformed or out-of-order message */
  NP_SIG_E_AUTH = 401,         /* signature or identity check failed */
  NP_SIG_E_REFUSED = 403,      /* callee does not accept calls from you */
  NP_SIG_E_UNKNOWN_PEER = 404, /* no such peer registered (unknown or offline) */
  NP_SIG_E_REPLACED = 409,     /* same ID registered from another connection */
  NP_SIG_E_TOO_LARGE = 413,    /* frame over the limit */
  NP_SIG_E_CLOCK = 425,        /* TIMESTAMP too far from the server's clock */
  NP_SIG_E_RATE = 429,         /* too many messages (or connections from one address) */
  NP_SIG_E_BUSY = 486,         /* callee: in another session (SIP's Busy Here) */
  NP_SIG_E_UNAVAILABLE = 503,  /* server full */
  NP_SIG_E_VERSION = 505,      /* protocol version not supported */
};

enum np_sig_tlv {
  NP_SIG_T_PUBKEY = 0x0001,    /* 32 bytes */
  NP_SIG_T_NONCE = 0x0002,     /* 32 bytes */
  NP_SIG_T_SIGNATURE = 0x0003, /* 64 bytes */
  NP_SIG_T_FROM = 0x0004,      /* 32-byte public key of the sender */
  NP_SIG_T_TO = 0x0005,        /* 32-byte public key of the receiver */
  NP_SIG_T_SESSION = 0x0006,   /* 16 bytes */
  NP_SIG_T_TIMESTAMP = 0x0007, /* u64 ms since the Unix epoch (replay window) */
  NP_SIG_T_PRIVATE = 0x0008,   /* address; repeatable, up to NP_SIG_MAX_PRIVATE */
  NP_SIG_T_MAPPED = 0x0009,    /* address; repeatable in discovery-server order */
  NP_SIG_T_DELTA = 0x000A,     /* i32 port delta */
  NP_SIG_T_NAT = 0x000B,       /* u8 mapping, u8 filtering (enum np_nat_behavior) */
  NP_SIG_T_PORTMAP = 0x000C,   /* address opened by UPnP / NAT-PMP / PCP */
  NP_SIG_T_PEER_SEEN = 0x000D, /* answer: the caller's public address, corrected */
  NP_SIG_T_OBSERVED = 0x000E,  /* server-stamped: sender's TCP address as seen */
  NP_SIG_T_ERROR = 0x000F,     /* u16 code + UTF-8 text */
  NP_SIG_T_ALLOW = 0x0010,     /* 32-byte public key; repeatable */
  /* 32-byte X25519 key: in OFFER/ANSWER for the session's probe key, in
   * HELLO/CHALLENGE for the connection's channel key (see below). */
  NP_SIG_T_KX = 0x0011,
  /* i32 stride, u8 kind (enum np_nat_kind: 1 cone, 2 sequential, 3
   * random), u8 number of views it was judged from (2..8), u16 port of the
   * last mapping made (the predictor's base) */
  NP_SIG_T_STRIDE = 0x0012,
  /* 32-byte keyed BLAKE2b over a server frame's body before it, always the
   * last TLV; see np__sig_append_mac(). */
  NP_SIG_T_MAC = 0x0013,
  NP_SIG_T_FLAGS = 0x0014,     /* u32 NP_SIG_CAND_* bits; absent = 0 */
};

/* Bits of np_sig_candidates.flags (NP_SIG_T_FLAGS). Unknown bits are
 * carried and ignored, so later versions can add some. */
enum np_sig_cand_flag {
  /* The sender's priming packets (TTL = NAT depth + 1) reach the first
   * discovery server: no router between its outermost NAT and that
   * server's segment, so its primers would also reach a peer's gateway
   * there (see punch.h, "Flat segment"). */
  NP_SIG_CAND_FLAT = 1u << 0,
  /* A re-punch: the session between these two peers is alive but its path
   * died (a NAT flushed or changed its mapping); the callee punches a new
   * path for it instead of taking a new call (or declining it as busy). */
  NP_SIG_CAND_RESUME = 1u << 1,
};
/* Addresses in TLVs: family(1: 4 or 6) reserved(1) port(2) ip(4 or 16). */

/* Candidate information a peer sends in OFFER/ANSWER. */
typedef struct np_sig_candidates {
  np_addr private_addrs[NP_SIG_MAX_PRIVATE];
  int n_private;
  np_addr mapped[NP_SIG_MAX_MAPPED];
  int n_mapped;
  bool have_delta;
  int32_t delta;
  /* The NAT's allocation as the probe classified it (np__predict_classify()
   * over all the views, in the order the mappings were made); without it a
   * peer falls back to the two-view delta. */
  bool have_stride;
  int32_t stride;
  uint8_t nat_kind;     /* enum np_nat_kind (traversal/predict.h) */
  uint8_t n_views;
  uint16_t stride_base; /* port of the last mapping made */
  bool have_nat;
  uint8_t mapping, filtering; /* enum np_nat_behavior */
  np_addr portmap;            /* AF_UNSPEC when none */
  /* Ephemeral X25519 public key. Offer and answer each carry one; the
   * shared secret keys the session's probes (MESSAGE-INTEGRITY-SHA256), so
   * neither an on-path observer nor the rendezvous server (which sees these
   * signed messages but holds neither private key) can forge a probe. */
  bool has_kx;
  uint8_t kx[NP_SIG_KX_LEN];
  uint32_t flags; /* NP_SIG_CAND_* bits; written only when non-zero */
} np_sig_candidates;

/* A decoded message. Only fields relevant to the type are meaningful; the
 * has_* flags say which optional TLVs were present. */
typedef struct np_sig_msg {
  uint8_t type; /* enum np_sig_type */

  bool has_pubkey, has_nonce, has_signature, has_from, has_to, has_session, has_timestamp;
  uint8_t pubkey[NP_PUBKEY_LEN];
  uint8_t nonce[NP_SIG_NONCE_LEN];
  uint8_t signature[NP_SIGNATURE_LEN];
  uint8_t from[NP_PUBKEY_LEN];
  uint8_t to[NP_PUBKEY_LEN];
  uint8_t session[NP_SIG_SESSION_LEN];
  uint64_t timestamp_ms;

  np_sig_candidates cand;
  np_addr peer_seen; /* AF_UNSPEC when absent */
  np_addr observed;  /* AF_UNSPEC when absent (server-stamped) */

  uint16_t error_code;
  char error_text[NP_SIG_MAX_TEXT + 1]; /* NUL-terminated; control chars replaced */

  uint8_t allow[NP_SIG_MAX_ALLOW][NP_PUBKEY_LEN];
  int n_allow;

  /* Body bytes covered by SIGNATURE (0 when unsigned): verify with
   * np__sig_verify(). */
  size_t signed_len;

  /* MAC (server frames): the body bytes it covers; verify with
   * np__sig_verify_mac(). */
  bool has_mac;
  uint8_t mac[NP_SIG_MAC_LEN];
  size_t mac_len;
} np_sig_msg;

/* Framing: looks at the first avail bytes of a stream buffer. Returns 0 and
 * sets *body_len when a whole frame (prefix + body) is present, NP_ERR_NOSPACE
 * (not an error: read more) when it is not yet, NP_ERR_PROTO when the
 * announced body is larger than max_frame (close the connection) or smaller
 * than a header. */
int np__sig_frame_check(const uint8_t *buf, size_t avail, size_t max_frame, size_t *body_len);

/* Decodes one body (without the length prefix). Checks version, reserved
 * bits, every TLV bounded, fixed-size TLVs of the right size, repeat limits,
 * addresses well-formed, nothing but OBSERVED after SIGNATURE, and the
 * fields each type requires (e.g. OFFER: FROM, TO, SESSION, SIGNATURE).
 * Returns 0, NP_ERR_UNSUPPORTED for another version, NP_ERR_PROTO otherwise.
 * Never reads outside body. */
int np__sig_decode(const uint8_t *body, size_t len, np_sig_msg *msg);

/* Encodes msg as a whole frame (length prefix + body) into buf. For OFFER
 * and ANSWER (which need FROM, TO, SESSION and TIMESTAMP set), signs with id
 * (whose public key must equal msg->from) and appends SIGNATURE; for
 * REGISTER (which needs has_nonce: the challenge), signs
 * np__sig_register_payload() and takes PUBKEY from id; id may be NULL for
 * unsigned types. OBSERVED is written (after the
 * signature) only when set, which only the server does. Returns the frame
 * length (> 0) or NP_ERR_NOSPACE / NP_ERR_INVAL. */
int np__sig_encode(const np_sig_msg *msg, const np_identity *id, uint8_t *buf, size_t cap);

/* Verifies a decoded OFFER/ANSWER's SIGNATURE against its FROM key over the
 * first msg->signed_len bytes of body. Returns 0 or NP_ERR_AUTH. */
int np__sig_verify(const uint8_t *body, size_t len, const np_sig_msg *msg);

/* The bytes a REGISTER signature covers: a fixed context string, the
 * challenge nonce, the public key and the allow list, so a signature can be
 * used for nothing else. Writes up to cap bytes; returns the length or
 * NP_ERR_NOSPACE. */
int np__sig_register_payload(const uint8_t nonce[NP_SIG_NONCE_LEN],
                            const uint8_t pubkey[NP_PUBKEY_LEN],
                            const uint8_t (*allow)[NP_PUBKEY_LEN], int n_allow, uint8_t *out,
                            size_t cap);

/* Verifies a decoded REGISTER (signature over the payload above by PUBKEY)
 * against the nonce the server issued. Returns 0 or NP_ERR_AUTH. */
int np__sig_verify_register(const np_sig_msg *msg, const uint8_t nonce[NP_SIG_NONCE_LEN]);

/* Server side: appends (or replaces) OBSERVED in an already-encoded frame of
 * length len in buf (capacity cap), fixing the length prefix; the signature
 * stays valid because it does not cover OBSERVED. Returns the new frame
 * length or NP_ERR_NOSPACE / NP_ERR_PROTO. */
int np__sig_stamp_observed(uint8_t *buf, size_t len, size_t cap, const np_addr *observed);

/* Channel authentication. The plain TCP connection to the server can carry
 * frames injected by a third party (a blind attacker who guesses sequence
 * numbers, or one who watches the path); the frames that end a call or the
 * registration (ERROR, REGISTERED) must not be taken on such a party's
 * word. So HELLO carries the client's ephemeral X25519 key (KX), CHALLENGE
 * the server's, and both derive a per-connection key (crypto_kx, then
 * BLAKE2b keyed with it over a context string and the challenge nonce).
 * The server appends a MAC to ERROR and REGISTERED; the client acts on
 * them only when it verifies. Each MAC also covers a counter of MAC'd
 * frames on the connection, so a captured one cannot be played again.
 * There is no server identity key: an active man in the middle present
 * when the connection is made can still run its own exchange with each
 * side (TLS with a pinned server key would be needed for that). */

/* A fresh X25519 key pair for one connection. Returns 0 or NP_ERR_SYS. */
int np__sig_kx_keypair(uint8_t pk[NP_SIG_KX_LEN], uint8_t sk[NP_SIG_KX_LEN]);

/* Derives the key that authenticates server -> client frames of one
 * connection. server: true on the server's side. my_pk/my_sk: our key pair;
 * peer_pk: the other side's KX; nonce: the CHALLENGE nonce. Returns 0, or
 * NP_ERR_AUTH for an unusable peer key (a low-order point). */
int np__sig_channel_key(bool server, const uint8_t my_pk[NP_SIG_KX_LEN],
                       const uint8_t my_sk[NP_SIG_KX_LEN], const uint8_t peer_pk[NP_SIG_KX_LEN],
                       const uint8_t nonce[NP_SIG_NONCE_LEN],
                       uint8_t key[NP_SIG_CHANNEL_KEY_LEN]);

/* Appends a MAC TLV to an encoded frame (buf, len; capacity cap) of a type
 * that is not peer-signed: BLAKE2b-256 keyed with key over seq (u64 big
 * endian: the number of MAC'd frames sent on this connection before) and
 * the whole body; fixes the length prefix. Returns the new frame length or
 * NP_ERR_NOSPACE / NP_ERR_PROTO / NP_ERR_INVAL. */
int np__sig_append_mac(uint8_t *buf, size_t len, size_t cap,
                      const uint8_t key[NP_SIG_CHANNEL_KEY_LEN], uint64_t seq);

/* Verifies a decoded frame's MAC (see above) over the first msg->mac_len
 * bytes of body. Returns 0, or NP_ERR_AUTH when it is absent or wrong. */
int np__sig_verify_mac(const uint8_t *body, size_t len, const np_sig_msg *msg,
                      const uint8_t key[NP_SIG_CHANNEL_KEY_LEN], uint64_t seq);

/* "OFFER", "ANSWER"...; "?" for unknown types. */
const char *np__sig_type_name(uint8_t type);

/* True for the messages one peer signs for another and the server forwards
 * (OFFER, ANSWER, READY): FROM, TO, SESSION, TIMESTAMP and a signature over
 * the body are required. */
bool np__sig_is_peer_type(uint8_t type);

#endif
