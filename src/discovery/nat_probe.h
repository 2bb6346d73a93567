/*
 * NAT probe: the state machine behind np_probe_run().
 *
 * Sans-IO: the machine never touches a socket or a clock. The caller feeds
 * it the current time and the datagrams that arrive, and sends the datagrams
 * it asks for. That keeps the RFC 5780 logic testable without a network and
 * lets the traversal engine run the same probe on its own socket later.
 *
 * Two local sockets are used:
 *  - MAIN: queries the first and second discovery servers (the mapped
 *    addresses and the port delta describe *this* socket) and runs the
 *    RFC 5780 mapping tests (to the server's alternate IP and port);
 *  - FILTER: runs the RFC 5780 filtering tests (CHANGE-REQUEST) on a mapping
 *    of its own. Keeping them apart matters on real gateways: a filtered
 *    inbound response leaves connection state on a Linux NAT, and a later
 *    outbound packet to that same server address would then be given a
 *    different public port, which would make a cone NAT look symmetric.
 */
#ifndef NP_NAT_PROBE_H
#define NP_NAT_PROBE_H

#include "natpunch.h"
#include "stun/stun.h"
#include "util/random.h"

enum { NP_PROBE_SOCK_MAIN = 0, NP_PROBE_SOCK_FILTER = 1, NP_PROBE_NSOCK = 2 };

/* One datagram the machine wants sent. */
typedef struct np_probe_datagram {
  int sock; /* NP_PROBE_SOCK_* */
  np_addr to;
  size_t len;
  uint8_t buf[128]; /* our requests are small: header + CHANGE-REQUEST + FINGERPRINT */
} np_probe_datagram;

typedef struct np_nat_probe np_nat_probe;

/* Creates a probe for cfg (servers, rto_ms, timeout_ms, no_hairpin and log
 * are used; socket fields are the runner's business). local_main is the
 * MAIN socket's address as seen locally (a concrete IP, not the wildcard),
 * used for the nat/port_preserving verdicts. random may be NULL for the
 * kernel CSPRNG. Returns 0, NP_ERR_INVAL for a bad config, NP_ERR_NOMEM. */
int np__nat_probe_new(const np_probe_config *cfg, const np_addr *local_main,
                     np_random_fn random, void *random_user, int64_t now, np_nat_probe **out);

/* Frees the probe; NULL is fine. */
void np__nat_probe_free(np_nat_probe *p);

/* Returns 1 and fills *dg with the next datagram due at 'now', or 0 when
 * nothing is due. Call repeatedly until it returns 0. Datagrams come out in
 * a fixed order (first server, second server, then the tests: the first
 * server's alternate address and port), and the result lists the views in
 * the order of their first requests, which is the order a NAT made the
 * mappings; so on a NAT with sequential port allocation the stride is not
 * inflated by the probe's own other mappings. In quick mode the only test
 * is the alternate address and port (a third view, for the stride), which
 * gets a few RTOs once both servers are settled, not the whole timeout. */
int np__nat_probe_next_datagram(np_nat_probe *p, int64_t now, np_probe_datagram *dg);

/* Feeds a datagram that arrived on socket 'sock' from 'from'. Anything that
 * is not a response to one of our transactions (or our own hairpinned
 * request) is ignored. */
void np__nat_probe_input(np_nat_probe *p, int64_t now, int sock, const np_addr *from,
                        const uint8_t *buf, size_t len);

/* Tells the machine that datagrams from 'sock' to 'to' were reported
 * unreachable (an ICMP port or host unreachable from the socket's error
 * queue, or EHOSTUNREACH from a send): pending transactions to it fail at
 * once with NP_ERR_UNREACHABLE instead of waiting for the deadline, so a
 * discovery server that is down costs one round trip, not the timeout.
 * Not for "time exceeded" (a TTL-limited packet of the caller's own). */
void np__nat_probe_unreachable(np_nat_probe *p, int64_t now, int sock, const np_addr *to);

/* The time by which np__nat_probe_next_datagram() must be called again
 * (a retransmission or a transaction's deadline). */
int64_t np__nat_probe_wakeup(const np_nat_probe *p);

/* True when every transaction has an answer or has given up. */
bool np__nat_probe_done(const np_nat_probe *p);

/* Fills *out with what is known so far (everything undetermined stays
 * UNKNOWN). Returns 0 if the first server answered, otherwise that
 * server's error (NP_ERR_TIMEOUT, NP_ERR_UNREACHABLE, NP_ERR_PROTO for an
 * error response). */
int np__nat_probe_result(const np_nat_probe *p, np_probe_result *out);

#endif
