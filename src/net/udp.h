/* UDP socket helpers. Errors are returned as NP_ERR_* and explained in a
 * caller-supplied buffer (redis anet style), so callers can log context. */
#ifndef NP_UDP_H
#define NP_UDP_H

#include "natpunch.h"

#define NP_UDP_ERRLEN 160

enum np_udp_flags {
  NP_UDP_NONBLOCK = 1u << 0,
  NP_UDP_REUSEPORT = 1u << 1, /* SO_REUSEPORT: several sockets share a port */
  NP_UDP_V6ONLY = 1u << 2,    /* IPv6 sockets: no IPv4-mapped traffic */
};

/* Creates a UDP socket of addr's family, applies flags, and binds it to
 * addr (port 0 = ephemeral). Returns the fd (>= 0) or a negative NP_ERR_*
 * with the reason in err ("bind 203.0.113.1:3478: Address in use"). */
int np_udp_bind(const np_addr *addr, unsigned flags, char err[NP_UDP_ERRLEN]);

/* Reads the socket's bound address into out. Returns 0 or NP_ERR_SYS. */
int np_udp_local(int fd, np_addr *out);

#endif
