/* UDP socket helpers. Errors are returned as NP_ERR_* and explained in a
 * caller-supplied buffer (redis anet style), so callers can log context. */
#ifndef NP_UDP_H
#define NP_UDP_H

#include "natpunch.h"

#include <stdbool.h>

#define NP_UDP_ERRLEN 160

enum np_udp_flags {
  NP_UDP_NONBLOCK = 1u << 0,
  NP_UDP_REUSEPORT = 1u << 1, /* SO_REUSEPORT: several sockets share a port */
  NP_UDP_V6ONLY = 1u << 2,    /* IPv6 sockets: no IPv4-mapped traffic */
};

/* Creates a UDP socket of addr's family, applies flags, and binds it to
 * addr (port 0 = ephemeral). Returns the fd (>= 0) or a negative NP_ERR_*
 * with the reason in err ("bind 203.0.113.1:3478: Address in use"). */
int np__udp_bind(const np_addr *addr, unsigned flags, char err[NP_UDP_ERRLEN]);

/* Reads the socket's bound address into out. Returns 0 or NP_ERR_SYS. */
int np__udp_local(int fd, np_addr *out);

/* The local address the kernel would use to reach 'to' (a connected UDP
 * socket is routed without sending anything). Returns 0, NP_ERR_SYS or
 * NP_ERR_UNREACHABLE (no route). */
int np__udp_route_source(const np_addr *to, np_addr *out);

/* Asks for ICMP errors on fd's error queue (IP_RECVERR / IPV6_RECVERR), so
 * an unreachable or expired datagram is reported with its destination. */
void np__udp_recverr(int fd, int family);

/* One entry of a socket's error queue. */
typedef struct np_udp_error {
  np_addr dest;     /* where the failed datagram was going */
  np_addr offender; /* the router that reported it (AF_UNSPEC if unknown) */
  bool icmp;        /* it came from an ICMP / ICMPv6 message */
  bool time_exceeded; /* ICMP time exceeded (the TTL ran out) */
  size_t len;       /* bytes of the original payload in data */
  uint8_t data[256];
} np_udp_error;

/* Reads one entry of fd's error queue without blocking. Returns 1 and fills
 * *out, or 0 when the queue is empty. */
int np__udp_read_error(int fd, np_udp_error *out);

#endif
