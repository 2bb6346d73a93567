/* A session's UDP sockets: send, batched receive, and the first-byte demultiplexer. */
#ifndef NP_PATH_H
#define NP_PATH_H

#include "natpunch.h"
#include "net/loop.h"
#include "net/udp.h"
#include "util/log.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* First bytes of the datagrams that share the path's sockets (RFC 9443,
 * which updates RFC 7983's table for QUIC):
 *   0..3     STUN (the traversal's probes, the discovery queries)
 *   64..127  QUIC short headers (the fixed bit set, RFC 9000 17.3)
 *   192..255 QUIC long headers: both for the session
 * Anything else is dropped here, so a higher layer never sees a datagram
 * it does not speak. */

enum np_path_class {
  NP_PATH_STUN,  /* 0..3 */
  NP_PATH_QUIC,  /* 64..127, 192..255: the session */
  NP_PATH_OTHER, /* dropped */
};

/* Classifies a datagram by its first byte (RFC 9443 section 3). An empty
 * datagram is NP_PATH_OTHER. */
enum np_path_class np__path_classify(const uint8_t *buf, size_t len);

typedef struct np_path np_path;

typedef struct np_path_config {
  int family;  /* AF_INET or AF_INET6: every socket is of this family */
  np_addr bind; /* socket 0's address; unset: any address, an ephemeral port */
  np_loop *loop; /* every socket is watched there, for reading */
  np_logger log;
  /* A datagram of class STUN or QUIC arrived on socket 'sock' (index). The
   * callback may close sockets (np__path_keep_only) but not open any. */
  void (*on_datagram)(void *user, enum np_path_class cls, int sock, const np_addr *from,
                      const uint8_t *buf, size_t len, int64_t now);
  /* An entry of a socket's ICMP error queue (a refused probe, a hop
   * probe's "time exceeded"), read while receiving or sending. */
  void (*on_icmp)(void *user, int sock, const np_udp_error *e);
  void *user;
} np_path_config;

/* Creates a path with no sockets yet; cfg is copied. When a socket is
 * ready the path reads its ICMP error queue, then a bounded batch of
 * datagrams (one busy socket cannot starve the rest of the loop:
 * level-triggered readiness calls again for what is left), each classified
 * and handed to on_datagram with the loop's time. Sockets take UDP GRO
 * where the kernel has it (Linux 5.0): a train of equal datagrams from one
 * sender arrives in one read and is split here, datagram by datagram.
 * Returns 0 or NP_ERR_NOMEM. */
int np__path_new(const np_path_config *cfg, np_path **out);

/* Closes every socket and frees the path. NULL is accepted. */
void np__path_free(np_path *p);

/* Makes sure sockets 0..n-1 exist (bound to an ephemeral port of the
 * family, non-blocking, with the ICMP error queue on), so that the birthday
 * method can ask for more sockets as it goes. Returns 0 or a negative
 * NP_ERR_*; the sockets opened before a failure stay. */
int np__path_ensure(np_path *p, int n);

/* How many socket slots exist (closed ones included): indexes run 0..n-1. */
int np__path_count(const np_path *p);

/* The fd of socket 'sock', or -1 when it is closed or out of range. */
int np__path_fd(const np_path *p, int sock);

/* Closes every socket but 0 and 'keep' (their slots read -1 from then on):
 * once a path is chosen, the other birthday sockets go, and socket 0 (the
 * gathered one) stays for the next session. */
void np__path_keep_only(np_path *p, int keep);

/* Closes every socket but 0 and forgets their slots. */
void np__path_close_extra(np_path *p);

/* Sends one datagram on socket 'sock' to 'to', with IP TTL (hop limit)
 * 'ttl' when ttl > 0 (the socket's own TTL is put back after). An ICMP
 * error left by an earlier datagram makes the kernel fail this send and
 * drop it: the error is reported to on_icmp and the send tried once more.
 * Returns 0, NP_ERR_INVAL (no such socket), NP_ERR_AGAIN (buffer full) or
 * NP_ERR_SYS. */
int np__path_send(np_path *p, int sock, const np_addr *to, int ttl, const void *buf,
                 size_t len);

/* Most datagrams in one np__path_send_train call: the kernel's limit for
 * one UDP GSO send (UDP_MAX_SEGMENTS). */
#define NP_PATH_TRAIN_MAX 64
/* Most bytes in one train: below the largest UDP payload of IPv4 (65507)
 * and of IPv6 (65527). */
#define NP_PATH_TRAIN_BYTES 65000

/* Sends a train of datagrams to 'to' on socket 'sock': they lie back to
 * back in buf (len bytes), each 'seg' bytes but the last, which may be
 * shorter; at most NP_PATH_TRAIN_MAX of them and NP_PATH_TRAIN_BYTES in
 * all. Where the kernel and the socket's device take it, this is one UDP
 * GSO send (UDP_SEGMENT, Linux 4.18): the stack, and every router and NAT
 * in the host, handles the train as one packet, and only the wire (or the
 * receiving socket, unless it takes GRO) sees datagrams; else one
 * sendmmsg. A GSO send the kernel refuses (EIO: a device without checksum
 * offload; EINVAL, ENOPROTOOPT: no UDP GSO) switches the path to sendmmsg
 * for good, and the train goes that way. ICMP errors are handled as
 * np__path_send does. Returns how many datagrams the kernel took (a prefix
 * of the train, at least 1), NP_ERR_AGAIN when it took none for a full
 * buffer, NP_ERR_INVAL (no such socket, a malformed train) or NP_ERR_SYS. */
int np__path_send_train(np_path *p, int sock, const np_addr *to, const uint8_t *buf, size_t len,
                        size_t seg);

/* Reads socket 'sock''s ICMP error queue to the end (bounded), reporting
 * each entry to on_icmp. */
void np__path_drain_errors(np_path *p, int sock);

#endif
