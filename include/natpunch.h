/*
 * natpunch: direct UDP paths between peers behind NATs.
 *
 * This is the only public header of libnatpunch. Everything here carries the
 * np_/NP_ prefix; nothing else is exported from the shared library.
 *
 * Conventions (libuv/curl style):
 *  - Functions that can fail return 0 on success or a negative NP_ERR_* code;
 *    np_strerror() turns a code into text.
 *  - Objects are opaque handles made by np_xxx_new() from a zero-initialisable
 *    config struct, released by np_xxx_free(), which accepts NULL.
 *  - The library keeps no global state. A handle may be used from one thread
 *    at a time unless its functions say otherwise.
 */
#ifndef NATPUNCH_H
#define NATPUNCH_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(NP_BUILDING_LIBRARY) && defined(__GNUC__)
#define NP_EXPORT __attribute__((visibility("default")))
#else
#define NP_EXPORT
#endif

#define NP_VERSION_STRING "0.1.0"

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

/* Fixed numbers: they are part of the ABI and may be logged or compared. */
#define NP_ERRORS(X)                                                           \
  X(NP_OK, 0, "success")                                                       \
  X(NP_ERR_INVAL, -1, "invalid argument")                                      \
  X(NP_ERR_NOMEM, -2, "out of memory")                                         \
  X(NP_ERR_SYS, -3, "system call failed")                                      \
  X(NP_ERR_TIMEOUT, -4, "timed out")                                           \
  X(NP_ERR_PROTO, -5, "malformed or unexpected message")                       \
  X(NP_ERR_NOSPACE, -6, "buffer too small")                                    \
  X(NP_ERR_AUTH, -7, "authentication failed")                                  \
  X(NP_ERR_UNREACHABLE, -8, "peer or server unreachable")                      \
  X(NP_ERR_CANCELLED, -9, "cancelled")                                         \
  X(NP_ERR_UNSUPPORTED, -10, "not supported")                                 \
  X(NP_ERR_AGAIN, -11, "nothing available now; try again later")              \
  X(NP_ERR_REFUSED, -12, "refused by the peer or the server")

enum np_error {
#define NP_ERROR_ENUM_(name, value, text) name = value,
  NP_ERRORS(NP_ERROR_ENUM_)
#undef NP_ERROR_ENUM_
};

/* Returns a static, human-readable sentence for an NP_ERR_* code (or
 * "unknown error" for anything else). Never returns NULL. */
NP_EXPORT const char *np_strerror(int err);

/* Returns the symbolic name of an NP_ERR_* code ("NP_ERR_TIMEOUT"), or
 * "NP_ERR_UNKNOWN"; useful in logs and machine-readable output. */
NP_EXPORT const char *np_err_name(int err);

/* ------------------------------------------------------------------------ */
/* Logging                                                                   */
/* ------------------------------------------------------------------------ */

enum np_log_level { NP_LOG_ERROR = 0, NP_LOG_WARN, NP_LOG_INFO, NP_LOG_DEBUG };

/* A log sink supplied by the application in each config struct. The message
 * has no trailing newline. Called from whichever thread logs; must be
 * thread-safe if the object runs threads (the discovery server does). */
typedef void (*np_log_fn)(void *user, enum np_log_level level, const char *msg);

/* ------------------------------------------------------------------------ */
/* Addresses                                                                 */
/* ------------------------------------------------------------------------ */

/* An IPv4 or IPv6 transport address. family AF_UNSPEC means "not set". */
typedef struct np_addr {
  union {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
  } u;
} np_addr;

/* Room for "[ffff:...:ffff%ifname]:65535" plus NUL. */
#define NP_ADDRSTRLEN 72

/* Parses "IPv4:PORT", "[IPv6]:PORT", or a bare IP when default_port is
 * non-zero. Only numeric addresses are accepted: the library never resolves
 * names, so parsing never blocks. Returns NP_ERR_INVAL on any malformed input
 * (including ports outside 1..65535). */
NP_EXPORT int np_addr_parse(const char *text, uint16_t default_port, np_addr *out);

/* Formats addr as "ip:port" ("[ip]:port" for IPv6, "-" when unset) into buf
 * and returns buf. Output is truncated, still NUL-terminated, if size is too
 * small; NP_ADDRSTRLEN always suffices. */
NP_EXPORT char *np_addr_format(const np_addr *addr, char *buf, size_t size);

/* Returns true when both addresses have the same family, IP and port. */
NP_EXPORT bool np_addr_equal(const np_addr *a, const np_addr *b);

/* Returns true when both addresses have the same family and IP (ports ignored). */
NP_EXPORT bool np_addr_same_ip(const np_addr *a, const np_addr *b);

/* Returns the port in host byte order (0 when unset). */
NP_EXPORT uint16_t np_addr_port(const np_addr *addr);

/* Sets the port (host byte order) of an IPv4 or IPv6 address. */
NP_EXPORT void np_addr_set_port(np_addr *addr, uint16_t port);

/* Returns the sockaddr length for addr's family, 0 when unset; what bind()
 * and sendto() want. */
NP_EXPORT socklen_t np_addr_len(const np_addr *addr);

/* ------------------------------------------------------------------------ */
/* Discovery server (STUN, RFC 8489 + RFC 5780)                              */
/* ------------------------------------------------------------------------ */

typedef struct np_discovery_server np_discovery_server;

typedef struct np_discovery_server_config {
  /* Primary address (IP1:P1). Required. Port 0 picks an ephemeral port
   * (np_discovery_server_local() tells which), handy for tests. */
  np_addr listen;
  /* Alternate IP (IP2) for RFC 5780; family AF_UNSPEC when absent. Its port
   * is ignored. */
  np_addr alt_ip;
  /* Alternate port (P2) for RFC 5780; 0 when absent. RFC 5780 behaviour
   * discovery (OTHER-ADDRESS, CHANGE-REQUEST) needs both alt_ip and alt_port:
   * with only one of them the server still answers Binding requests on all
   * its sockets but does not advertise OTHER-ADDRESS. */
  uint16_t alt_port;
  /* Worker threads, each with its own SO_REUSEPORT sockets. 0 means one per
   * online CPU. */
  int threads;
  /* SOFTWARE attribute value; NULL for none (the default, which keeps
   * responses small). */
  const char *software;
  np_log_fn log;
  void *log_user;
  enum np_log_level log_level;
} np_discovery_server_config;

/* Counters, summed over all worker threads. */
typedef struct np_discovery_stats {
  uint64_t received;        /* datagrams read */
  uint64_t answered;        /* success responses sent */
  uint64_t errors_sent;     /* error responses sent (e.g. 400, 420) */
  uint64_t dropped_malformed; /* not STUN, bad length, bad FINGERPRINT */
  uint64_t dropped_ignored; /* valid STUN we do not answer (responses,
                               indications, unknown methods) */
  uint64_t dropped_policy;  /* refused redirection (e.g. RESPONSE-PORT to a
                               privileged port) */
  uint64_t send_failures;
} np_discovery_stats;

/* Creates the server and binds all its sockets (so bind errors surface here,
 * with a log line naming the address), but starts no thread. */
NP_EXPORT int np_discovery_server_new(const np_discovery_server_config *cfg,
                                      np_discovery_server **out);

/* Runs the worker threads and blocks the calling thread until
 * np_discovery_server_stop() is called. Returns 0 after a clean stop. */
NP_EXPORT int np_discovery_server_run(np_discovery_server *srv);

/* Asks a running server to stop. Async-signal-safe and thread-safe: it only
 * writes to an eventfd, so it may be called from a signal handler. */
NP_EXPORT void np_discovery_server_stop(np_discovery_server *srv);

/* Copies the current counters. Thread-safe; may be called while running. */
NP_EXPORT void np_discovery_server_stats(const np_discovery_server *srv,
                                         np_discovery_stats *out);

/* Returns the bound primary address (useful after binding port 0). */
NP_EXPORT const np_addr *np_discovery_server_local(const np_discovery_server *srv);

/* Frees the server; it must not be running. NULL is fine. */
NP_EXPORT void np_discovery_server_free(np_discovery_server *srv);

/* ------------------------------------------------------------------------ */
/* NAT probe: what does my NAT do?                                           */
/* ------------------------------------------------------------------------ */

/* RFC 4787 / RFC 5780 behaviour classes, used for mapping and filtering. */
enum np_nat_behavior {
  NP_BEHAVIOR_UNKNOWN = 0,
  NP_BEHAVIOR_ENDPOINT_INDEPENDENT,
  NP_BEHAVIOR_ADDRESS_DEPENDENT,
  NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT,
};

/* "endpoint-independent", "address-dependent", "address-and-port-dependent"
 * or "unknown". */
NP_EXPORT const char *np_nat_behavior_name(enum np_nat_behavior b);

enum np_tristate { NP_NO = 0, NP_YES = 1, NP_UNKNOWN = -1 };

#define NP_PROBE_MAX_SERVERS 2
/* Views of one socket a probe reports: two servers and two alternates. */
#define NP_PROBE_MAX_VIEWS 4

typedef struct np_probe_config {
  /* Discovery servers, in query order. servers[0] should support RFC 5780
   * (OTHER-ADDRESS) for mapping/filtering classification. */
  np_addr servers[NP_PROBE_MAX_SERVERS];
  int n_servers;
  /* Local address to bind; AF_UNSPEC means the wildcard of the first
   * server's family, ephemeral port. */
  np_addr bind;
  /* Existing UDP socket to use instead of creating one (-1 or 0 for none:
   * set use_fd to true to use it). The probe never closes it. */
  int fd;
  bool use_fd;
  /* Initial retransmission timeout (RFC 8489 RTO), ms; 0 means 250. */
  int rto_ms;
  /* Upper bound for the whole probe, ms; 0 means 3000. Individual tests
   * run concurrently, so this is also roughly the worst-case runtime. */
  int timeout_ms;
  /* Skip the hairpinning test. */
  bool no_hairpin;
  /* Only ask for the views the port prediction needs: the two servers,
   * then servers[0]'s alternate address and port (its OTHER-ADDRESS), a
   * third mapping in about two round trips; no filtering tests, no
   * hairpinning, no other mapping on the socket (what the traversal engine
   * gathers). */
  bool quick;
  np_log_fn log;
  void *log_user;
  enum np_log_level log_level;
} np_probe_config;

typedef struct np_probe_result {
  np_addr local;                          /* the socket's local address */
  /* As each server saw us, index = server index; family AF_UNSPEC where
   * that server did not answer. */
  np_addr mapped[NP_PROBE_MAX_SERVERS];
  int n_mapped;                           /* how many servers answered */
  /* Per server: 0, or why it gave no mapping (NP_ERR_TIMEOUT,
   * NP_ERR_UNREACHABLE, NP_ERR_PROTO for an error response whose code is in
   * server_error_code). */
  int server_err[NP_PROBE_MAX_SERVERS];
  int server_error_code[NP_PROBE_MAX_SERVERS];
  int rtt_ms[NP_PROBE_MAX_SERVERS];       /* first answer's round trip, -1 if none */
  bool have_delta;                        /* both servers answered */
  int delta;                              /* mapped[1].port - mapped[0].port */
  np_addr other_address;                  /* servers[0]'s OTHER-ADDRESS */
  bool rfc5780;                           /* servers[0] offered RFC 5780 */
  enum np_nat_behavior mapping;
  enum np_nat_behavior filtering;
  bool port_preserving;                   /* mapped port == local port */
  bool nat;                               /* mapped differs from local */
  enum np_tristate hairpinning;
  /* Every mapping of the socket a server answered with, in the order the
   * mappings were made (the order of the first requests: a NAT maps on the
   * first packet): server 1, server 2, server 1's alternate address(es).
   * A view that an address-dependent NAT could only have answered from a
   * mapping already listed (same server IP, same mapped address) is left
   * out: it is no new mapping. */
  int n_views;
  np_addr view_to[NP_PROBE_MAX_VIEWS];     /* where the request went */
  np_addr view_mapped[NP_PROBE_MAX_VIEWS]; /* as that server saw us */
  /* Port allocation judged from the views: 0 unknown (fewer than two), 1
   * cone (no view moved), 2 sequential (one stride apart, noise allowed:
   * whole strides), 3 random (the deltas disagree). port_kind_guessed:
   * from two views only, one delta with nothing to check it against, so
   * the old rule (sequential when |delta| <= 64). */
  int port_kind;
  bool port_kind_guessed;
  int stride;         /* step between successive mappings (port ring 1024..65535) */
  uint16_t base_port; /* port of the last mapping made */
} np_probe_result;

/* Runs the probe synchronously: this call blocks the calling thread for up
 * to cfg->timeout_ms (that is what it is asked to do). Queries every server
 * from one local socket, then runs the RFC 5780 mapping and filtering tests
 * against servers[0] when it advertises OTHER-ADDRESS. Returns 0 when at
 * least the first server answered (fields it could not determine are
 * UNKNOWN), NP_ERR_TIMEOUT when no server answered, NP_ERR_INVAL/NP_ERR_SYS
 * on bad configuration or socket errors. */
NP_EXPORT int np_probe_run(const np_probe_config *cfg, np_probe_result *out);


/* ------------------------------------------------------------------------ */
/* Identity: long-term Ed25519 keys and peer IDs                             */
/* ------------------------------------------------------------------------ */

/* A peer ID is the lowercase RFC 4648 base32 form (no padding) of the 32-byte
 * Ed25519 public key: 52 characters. It is what users share. */
#define NP_PEER_ID_LEN 52
#define NP_PUBKEY_LEN 32
#define NP_SIGNATURE_LEN 64

typedef struct np_identity np_identity;

/* Makes a new random keypair (libsodium). Returns 0 or NP_ERR_NOMEM /
 * NP_ERR_SYS. */
NP_EXPORT int np_identity_generate(np_identity **out);

/* Writes the secret key to path with mode 0600, creating parent directories
 * (mode 0700) as needed. Refuses to replace an existing file unless
 * overwrite is true (NP_ERR_INVAL, errno EEXIST). The file is written to a
 * temporary name and renamed, so a crash never leaves half a key. */
NP_EXPORT int np_identity_save(const np_identity *id, const char *path, bool overwrite);

/* Reads a key file written by np_identity_save(). Fails with NP_ERR_PROTO
 * for a malformed file and NP_ERR_AUTH when the file is readable by group or
 * others (like ssh, a leaked key is refused rather than used). */
NP_EXPORT int np_identity_load(const char *path, np_identity **out);

/* Loads path, or when it does not exist generates a key and saves it there
 * (*created set to true). path NULL means the default,
 * $XDG_CONFIG_HOME/natpunch/key or ~/.config/natpunch/key. */
NP_EXPORT int np_identity_load_or_create(const char *path, np_identity **out, bool *created);

/* The default key path (see above) into buf; NP_ERR_NOSPACE if too small,
 * NP_ERR_INVAL when neither XDG_CONFIG_HOME nor HOME is set. */
NP_EXPORT int np_identity_default_path(char *buf, size_t size);

/* The public key. */
NP_EXPORT void np_identity_public_key(const np_identity *id, uint8_t out[NP_PUBKEY_LEN]);

/* The peer ID, NUL-terminated (buf of at least NP_PEER_ID_LEN + 1). */
NP_EXPORT void np_identity_peer_id(const np_identity *id, char buf[NP_PEER_ID_LEN + 1]);

/* Signs len bytes (Ed25519, detached). */
NP_EXPORT void np_identity_sign(const np_identity *id, const uint8_t *msg, size_t len,
                                uint8_t sig[NP_SIGNATURE_LEN]);

/* Verifies a detached signature by pubkey. Returns 0 or NP_ERR_AUTH. */
NP_EXPORT int np_signature_verify(const uint8_t pubkey[NP_PUBKEY_LEN], const uint8_t *msg,
                                  size_t len, const uint8_t sig[NP_SIGNATURE_LEN]);

/* Parses a peer ID (case-insensitive, surrounding whitespace not allowed)
 * into a public key. Returns 0 or NP_ERR_INVAL. */
NP_EXPORT int np_peer_id_parse(const char *text, uint8_t pubkey[NP_PUBKEY_LEN]);

/* Formats a public key as a peer ID. */
NP_EXPORT void np_peer_id_format(const uint8_t pubkey[NP_PUBKEY_LEN],
                                 char buf[NP_PEER_ID_LEN + 1]);

/* Wipes and frees the key. NULL is fine. */
NP_EXPORT void np_identity_free(np_identity *id);

/* ------------------------------------------------------------------------ */
/* Rendezvous server                                                         */
/* ------------------------------------------------------------------------ */

typedef struct np_rendezvous_server np_rendezvous_server;

typedef struct np_rendezvous_server_config {
  np_addr listen;               /* TCP address; port 0 = ephemeral */
  int max_connections;          /* 0 = 20000 (raises RLIMIT_NOFILE as needed) */
  int max_unauthenticated;      /* 0 = 1024 connections not yet registered */
  int auth_timeout_ms;          /* 0 = 10000: hello..registered must fit */
  int idle_timeout_ms;          /* 0 = 90000 without any frame from a peer */
  int max_frame;                /* 0 = NP_SIG_MAX_FRAME (16384) */
  int msgs_per_sec;             /* 0 = 20 per connection, burst twice that */
  /* Per source address (IPv4 /32, IPv6 /64), so one host cannot take the
   * slots other hosts need: */
  int max_conn_per_ip;     /* 0 = 256 open connections (503 beyond) */
  int max_unauth_per_ip;   /* 0 = 16 not yet registered (closed beyond) */
  int max_register_per_ip; /* 0 = 120 REGISTER attempts a minute (429, close) */
  np_log_fn log;
  void *log_user;
  enum np_log_level log_level;
} np_rendezvous_server_config;

typedef struct np_rendezvous_stats {
  uint64_t connections;   /* accepted so far */
  uint64_t open;          /* open now */
  uint64_t registered;    /* registered peers now */
  uint64_t registrations; /* successful registrations so far */
  uint64_t offers, answers, errors_sent;
  uint64_t closed_bad_frame, closed_idle, closed_auth, closed_rate, refused_full;
  uint64_t refused_per_ip; /* of refused_full: over a per-address limit */
} np_rendezvous_stats;

/* Creates the server and binds/listens (so errors surface here). Starts no
 * thread. */
NP_EXPORT int np_rendezvous_server_new(const np_rendezvous_server_config *cfg,
                                       np_rendezvous_server **out);

/* Runs the epoll loop on the calling thread until np_rendezvous_server_stop(). */
NP_EXPORT int np_rendezvous_server_run(np_rendezvous_server *srv);

/* Asks a running server to stop; async-signal-safe (eventfd write). */
NP_EXPORT void np_rendezvous_server_stop(np_rendezvous_server *srv);

/* Copies the counters. Safe from any thread while running. */
NP_EXPORT void np_rendezvous_server_stats(const np_rendezvous_server *srv,
                                          np_rendezvous_stats *out);

/* The bound TCP address (after port 0). */
NP_EXPORT const np_addr *np_rendezvous_server_local(const np_rendezvous_server *srv);

/* Frees a stopped server, closing every connection. NULL is fine. */
NP_EXPORT void np_rendezvous_server_free(np_rendezvous_server *srv);


/* ------------------------------------------------------------------------ */
/* Agent: connect to a peer, or accept its call, across NATs                 */
/* ------------------------------------------------------------------------ */

/* An agent owns one identity's presence on a rendezvous server and at most
 * one traversal session at a time (a caller's connect, or an accepted
 * call). It gathers candidates on one UDP socket (interface addresses, the
 * mappings two discovery servers report and their port delta, a UPnP /
 * NAT-PMP / PCP port mapping), exchanges signed offer and answer, then
 * punches: authenticated STUN probes to the peer's candidates, TTL-limited
 * priming so that a gateway never sees the peer's probe before our own
 * outbound packet, port prediction from the peer's delta, and the birthday
 * method for random-port NATs. The first pair that works both ways is
 * nominated; the rest is closed; keepalives hold the mapping.
 *
 * Driving it. The agent never blocks unless asked (np_agent_wait()). Put
 * np_agent_fd() in your poll/epoll set (readable when there is work) and
 * call np_agent_process() when it is readable or when np_agent_timeout()
 * expires; then drain np_agent_next_event() and, once connected,
 * np_agent_recv(). Or call np_agent_wait() in a loop of your own thread.
 *
 * Threads: an agent is not internally locked. Use each agent from one thread
 * at a time (the callbacks, if any, run inside np_agent_process() on that
 * thread). Distinct agents are independent: the library has no global
 * state. A port-mapping worker thread may run inside the agent during
 * gathering; it touches only its own state.
 */
typedef struct np_agent np_agent;

/* Most peers an agent's allow list may hold. */
#define NP_AGENT_MAX_ALLOW 128

enum np_agent_event_type {
  NP_AGENT_REGISTERED = 1, /* registered with the rendezvous server (again) */
  NP_AGENT_CALL,           /* an allowed caller's offer arrived: traversal starts */
  NP_AGENT_CONNECTED,      /* the direct path is up and the peer proved its key in the
                            * session's handshake: streams and datagrams flow;
                            * np_agent_stats() has the path */
  NP_AGENT_FAILED,         /* the session failed; 'error' and 'reason' say why */
  NP_AGENT_CLOSED,         /* the session ended; 'error' and 'reason' say how: 0 the
                            * peer closed it normally (np_agent_close()),
                            * NP_ERR_CANCELLED the peer aborted it (np_agent_abort()),
                            * NP_ERR_TIMEOUT the peer vanished (nothing
                            * authenticated from it for peer_timeout_ms) */
  /* The rendezvous server said (authenticated) that another process
   * registered our key: it holds our ID now. The agent does not take the ID
   * back (the two would take it from each other for ever): it can no
   * longer be called or call, and should be closed. 'reason' says so. */
  NP_AGENT_REPLACED,
  /* The peer opened a stream: np_agent_stream_accept() takes it. */
  NP_AGENT_STREAM,
  /* The session moved to another path (the NAT rebound, or a new path
   * after the old one died): 'observed' is the peer's new address, and
   * np_agent_stats() has the rest. No stream byte is lost. */
  NP_AGENT_PATH_CHANGED,
};

/* How the winning pair was found. */
enum np_via {
  NP_VIA_NONE = 0,
  NP_VIA_HOST,      /* private address: same LAN / same NAT */
  NP_VIA_REFLEXIVE, /* public mapping from the discovery servers (or learned from a probe) */
  NP_VIA_PORTMAP,   /* port opened on a gateway by UPnP IGD, NAT-PMP or PCP */
  NP_VIA_PREDICTED, /* port predicted from the peer's delta */
  NP_VIA_BIRTHDAY,  /* many sockets / many random ports */
};

/* "host", "reflexive", "portmap", "predicted", "birthday", "none". */
NP_EXPORT const char *np_via_name(enum np_via via);

typedef struct np_agent_event {
  enum np_agent_event_type type;
  uint8_t peer[NP_PUBKEY_LEN]; /* CALL, CONNECTED, FAILED, CLOSED */
  int error;                   /* FAILED, CLOSED: an NP_ERR_* code (CLOSED: see above) */
  char reason[160];            /* FAILED, CLOSED: a sentence for humans */
  np_addr observed;            /* REGISTERED: our address as the server saw it;
                                * PATH_CHANGED: the peer's new address */
} np_agent_event;

typedef struct np_session_stats {
  bool connected;
  uint8_t peer[NP_PUBKEY_LEN];
  enum np_via via;       /* how the winning pair was found */
  np_addr local;         /* our socket's address (as bound) */
  np_addr remote;        /* the peer's address on the path */
  int64_t elapsed_ms;    /* connect(): from the call; callee: from the offer */
  uint32_t probes_sent;  /* discovery packets sent (priming included) */
  uint32_t probes_received; /* authenticated discovery packets received */
  uint32_t rounds;       /* prediction rounds run (0: direct candidates sufficed) */
  int sockets;           /* UDP sockets open at the peak (birthday method) */
  uint64_t bytes_sent, bytes_received, datagrams_sent, datagrams_received;
  /* Datagrams from the peer dropped because np_agent_recv()'s queue was
   * full: the application did not read fast enough. Loss on the way is not
   * seen here (datagrams are never retransmitted). */
  uint64_t datagrams_dropped;
  /* The QUIC session on the path (0 or -1 before it is up): */
  int64_t rtt_ms, rtt_min_ms;      /* smoothed and lowest round-trip time */
  uint64_t packets_sent, packets_received, packets_lost;
  uint64_t stream_bytes_sent, stream_bytes_received; /* application bytes on streams */
  uint64_t cwnd;                   /* congestion window, bytes */
  uint32_t path_changes;           /* NP_AGENT_PATH_CHANGED so far */
  int64_t secure_ms;               /* from the punched path to the verified handshake */
} np_session_stats;

typedef struct np_agent_config {
  const np_identity *identity; /* borrowed: must outlive the agent */
  np_addr rendezvous;          /* TCP address of the rendezvous server */
  np_addr discovery[NP_PROBE_MAX_SERVERS]; /* two, for the delta */
  int n_discovery;
  /* listen: register and accept calls from the allowed peers (all when
   * n_allow is 0); a call that comes during a session is declined (the
   * caller fails at once, "busy", 486). Without it the agent only places
   * calls. */
  bool listen;
  const uint8_t (*allow)[NP_PUBKEY_LEN];
  int n_allow;
  int predict_after_ms; /* no direct success by then: predict. 0 = 1000 */
  int session_timeout_ms; /* give up a traversal after this. 0 = 20000 */
  /* A QUIC PING after this much quiet on the established path (it also
   * holds the NATs' mappings open). 0 = 5000, or a quarter of
   * peer_timeout_ms when that is shorter. Must be below peer_timeout_ms. */
  int keepalive_ms;
  /* A connected session ends (CLOSED, NP_ERR_TIMEOUT, "the peer vanished")
   * when nothing authenticated came from the peer for this long (the QUIC
   * idle timeout). 0 = 20000. */
  int peer_timeout_ms;
  /* The local address of the agent's UDP socket (IP and port); unset (the
   * zeroed struct) = any address, an ephemeral port. Its family must match
   * the discovery servers'. */
  np_addr bind;
  int max_probes;       /* discovery packets per session. 0 = 6000 */
  int birthday_sockets; /* sockets for the birthday method. 0 = 256, at most 1023 */
  int prime_ttl;        /* TTL of priming packets, at most 255. 0 = measured (hops to our
                         * outermost NAT + 1) */
  /* Skip UPnP / NAT-PMP / PCP. Without it, a mapping the gateway grants is
   * renewed at half its granted lifetime, and one that runs out unrenewed
   * is no longer offered. */
  bool no_portmap;
  bool no_prime;        /* never send TTL-limited priming packets */
  /* Optional: called from np_agent_process() for each event, in addition
   * to the np_agent_next_event() queue. */
  void (*on_event)(void *user, const np_agent_event *ev);
  void *user;
  np_log_fn log;
  void *log_user;
  enum np_log_level log_level;
} np_agent_config;

/* Creates an agent: copies the config, opens its UDP socket, starts
 * connecting to the rendezvous server (and, with listen, registering) and
 * gathering in the background. Returns 0, NP_ERR_INVAL for a bad config
 * (no identity, no rendezvous server, discovery servers of two families,
 * a negative number, a count or TTL over its limit), NP_ERR_SYS,
 * NP_ERR_NOMEM. */
NP_EXPORT int np_agent_new(const np_agent_config *cfg, np_agent **out);

/* Starts a call to peer (a 32-byte public key; np_peer_id_parse() turns a
 * peer ID into one). Progress arrives as events. Returns 0, NP_ERR_INVAL
 * for our own key, NP_ERR_AGAIN when a session is already running. */
NP_EXPORT int np_agent_connect(np_agent *a, const uint8_t peer[NP_PUBKEY_LEN]);

/* A descriptor that becomes readable when np_agent_process() has work
 * (it is an epoll set of the agent's sockets and timers). Never closed by
 * the caller. */
NP_EXPORT int np_agent_fd(const np_agent *a);

/* Milliseconds until np_agent_process() must run even without I/O; -1 when
 * only I/O can make progress. */
NP_EXPORT int np_agent_timeout(const np_agent *a);

/* Does all pending I/O and timers without blocking. Returns 0, or an
 * NP_ERR_* for a fault of the agent itself (not of a session: those are
 * FAILED events). */
NP_EXPORT int np_agent_process(np_agent *a);

/* Blocks up to timeout_ms (-1: until something happens) processing I/O and
 * timers, and returns as soon as an event, a datagram or stream news (data
 * to read, room to write) is available
 * (0) or the time is up (NP_ERR_TIMEOUT). The loop for applications that
 * give the agent a thread. */
NP_EXPORT int np_agent_wait(np_agent *a, int timeout_ms);

/* Pops the next event into *ev: returns 1, or 0 when there is none. */
NP_EXPORT int np_agent_next_event(np_agent *a, np_agent_event *ev);

/* The session. Once the path is punched, it carries one QUIC connection
 * (RFC 9000; the caller is its client), whose TLS 1.3 handshake proves each
 * side's identity key: CONNECTED comes only when the peer has shown the key
 * of the peer ID called or accepted, so a man in the middle (the rendezvous
 * server included) gets neither data nor a completed handshake. Everything
 * below is encrypted and authenticated; streams are reliable, ordered and
 * flow-controlled, datagrams (RFC 9221) are not retransmitted. A QUIC PING
 * every keepalive_ms holds the NATs open; nothing from the peer for
 * peer_timeout_ms ends the session (CLOSED, NP_ERR_TIMEOUT). */

/* Stream state bits, from np_agent_stream_state(). */
#define NP_STREAM_READABLE 0x01    /* data (or the end) waits to be read */
#define NP_STREAM_WRITABLE 0x02    /* a write would take at least one byte */
#define NP_STREAM_READ_EOF 0x04    /* the peer's end was read: it will send no more */
#define NP_STREAM_WRITE_ACKED 0x08 /* after np_agent_stream_shutdown(): the peer has
                                    * every byte we wrote, and the end */
#define NP_STREAM_RESET 0x10       /* the stream was reset (by either side) */

/* Opens a bidirectional stream to the peer and stores its number in *id.
 * Returns 0, NP_ERR_AGAIN when the peer's limit of open streams is reached
 * (try again once one has ended), NP_ERR_INVAL when not connected. The peer
 * sees the stream (NP_AGENT_STREAM) with its first byte or its end. */
NP_EXPORT int np_agent_stream_open(np_agent *a, int64_t *id);

/* Takes the next stream the peer opened: returns 1 and its number in *id,
 * or 0 when there is none. Data the peer sent on it is buffered until it is
 * accepted and read (within the stream's flow-control window). */
NP_EXPORT int np_agent_stream_accept(np_agent *a, int64_t *id);

/* Queues up to len bytes for the stream and returns how many it took
 * (fewer under back-pressure: the peer has not acknowledged or read enough
 * yet), NP_ERR_AGAIN when it could take none (retry after
 * np_agent_process(); NP_STREAM_WRITABLE tells), NP_ERR_INVAL for an
 * unknown stream or after np_agent_stream_shutdown(), NP_ERR_CANCELLED when
 * the peer stopped the stream or the session ended. Bytes taken are
 * delivered in order or the session fails: none is lost silently. */
NP_EXPORT long np_agent_stream_write(np_agent *a, int64_t id, const void *buf, size_t len);

/* Copies up to cap received bytes into buf: returns how many (> 0), 0 at
 * the end of the stream (the peer half-closed it and everything was read),
 * NP_ERR_AGAIN when nothing waits yet, NP_ERR_CANCELLED when the peer reset
 * the stream, NP_ERR_INVAL for an unknown stream. Data already received
 * stays readable after the session closed, until np_agent_close(). */
NP_EXPORT long np_agent_stream_read(np_agent *a, int64_t id, void *buf, size_t cap);

/* Half-closes the stream: the end follows the bytes already written, and
 * reading goes on. Returns 0 or NP_ERR_INVAL. */
NP_EXPORT int np_agent_stream_shutdown(np_agent *a, int64_t id);

/* Abandons the stream both ways (the peer's reads and writes on it fail
 * with NP_ERR_CANCELLED). Returns 0 or NP_ERR_INVAL. */
NP_EXPORT int np_agent_stream_reset(np_agent *a, int64_t id);

/* The stream's NP_STREAM_* bits, or NP_ERR_INVAL for a stream the agent no
 * longer knows (never opened, or ended both ways and fully read). */
NP_EXPORT int np_agent_stream_state(const np_agent *a, int64_t id);

/* Sends one unreliable datagram (RFC 9221) in the session. Returns 0,
 * NP_ERR_INVAL when not connected or len > 1200, NP_ERR_AGAIN when the
 * send queue is full (keep it and retry shortly). A datagram sent may still
 * be lost on the way; it is never delivered twice or altered. */
NP_EXPORT int np_agent_send(np_agent *a, const void *buf, size_t len);

/* Copies the next datagram received from the peer into buf (at most cap
 * bytes, the rest is cut). Returns its length (0 is a valid empty
 * datagram), NP_ERR_AGAIN when none is queued, NP_ERR_INVAL when not
 * connected. */
NP_EXPORT int np_agent_recv(np_agent *a, void *buf, size_t cap);

/* Ends the session: closes the QUIC connection with a normal reason (the
 * peer's CLOSED event has error 0; best effort: if the close is lost, the
 * peer ends on its peer timeout) and releases the path and the extra
 * sockets. A listening agent then accepts the next call. Safe in any
 * state. */
NP_EXPORT void np_agent_close(np_agent *a);

/* Like np_agent_close(), but tells the peer that the session was aborted
 * (interrupted, not finished): its CLOSED event has NP_ERR_CANCELLED. */
NP_EXPORT void np_agent_abort(np_agent *a);

/* Copies the session's statistics. */
NP_EXPORT void np_agent_stats(const np_agent *a, np_session_stats *out);

/* Closes everything and frees. NULL is fine. A port mapping the agent made
 * is deleted (a round trip to the gateway); a port-mapping attempt still
 * running (UPnP discovery takes seconds) is abandoned without waiting: it
 * finishes on its own thread, deletes whatever it mapped, and may call the
 * log callback until then, so keep that callback valid (a static function
 * with a NULL user is the simple way). */
NP_EXPORT void np_agent_free(np_agent *a);

#ifdef __cplusplus
}
#endif

#endif /* NATPUNCH_H */
