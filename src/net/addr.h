/* Internal address helpers beyond the public np_addr_* functions. */
#ifndef NP_ADDR_H
#define NP_ADDR_H

#include "natpunch.h"

/* Copies a sockaddr of length len (as filled by recvfrom/getsockname) into
 * out; IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) become plain IPv4 so that
 * comparisons across dual-stack sockets work. Returns 0 or NP_ERR_INVAL for
 * families other than AF_INET/AF_INET6. */
int np__addr_from_sockaddr(const struct sockaddr *sa, socklen_t len, np_addr *out);

/* True when the address family is AF_INET or AF_INET6. */
bool np__addr_is_set(const np_addr *addr);

/* True for the IPv4/IPv6 wildcard address (0.0.0.0 or ::). */
bool np__addr_is_any(const np_addr *addr);

/* True for the space a LAN behind a NAT lives in: RFC 1918 (10/8,
 * 172.16/12, 192.168/16), RFC 6598 (100.64/10, carrier-grade NAT) and RFC
 * 4193 (fc00::/7). Link-local is not included: callers that count it as
 * private (a router's hop address) test it themselves. */
bool np__addr_is_private(const np_addr *addr);

#endif
