/*
 * Port mapping: ask the local gateway to open a public UDP port for one of
 * our sockets, with whichever protocol it speaks: UPnP IGD (miniupnpc),
 * NAT-PMP (libnatpmp) or PCP (RFC 6887, our codec in pcp.h). The opened
 * address becomes a PORTMAP candidate: the gateway forwards anything sent to
 * it, from anyone, so it connects even where hole punching cannot.
 *
 * These calls block (UPnP discovery is SSDP multicast plus HTTP/SOAP), each
 * bounded by the timeout given; the agent runs them on a worker thread so
 * its own loop never waits. A handle is used by one thread at a time.
 */
#ifndef NP_PORTMAP_H
#define NP_PORTMAP_H

#include "natpunch.h"

enum np_portmap_proto {
  NP_PORTMAP_NONE = 0,
  NP_PORTMAP_UPNP,   /* UPnP IGD WANIPConnection/WANPPPConnection */
  NP_PORTMAP_NATPMP, /* RFC 6886 */
  NP_PORTMAP_PCP,    /* RFC 6887 MAP opcode */
};

typedef struct np_portmap np_portmap;

typedef struct np_portmap_config {
  /* Internal port to map (the port of the socket that will receive). */
  uint16_t internal_port;
  /* Our LAN address to map to; AF_UNSPEC = let the protocol find it (UPnP
   * reports it, NAT-PMP/PCP use the address the gateway is reached from).
   * PCP sends from this address; NAT-PMP cannot name one and always maps
   * the address its request leaves from. */
  np_addr internal;
  /* Gateway for NAT-PMP/PCP; AF_UNSPEC = the default route's gateway (read
   * from /proc/net/route). UPnP finds its gateway by SSDP. */
  np_addr gateway;
  int lifetime_s; /* requested lease; 0 = 3600 */
  /* Total budget for np__portmap_open() (and for np__portmap_close()); 0 =
   * 2000. UPnP needs about 1 s of it for SSDP discovery (gateways answer
   * after a random delay of up to 1 s); its HTTP/SOAP calls use miniupnpc's
   * own socket timeouts, so a gateway that stalls mid-exchange can overrun
   * the budget. */
  int timeout_ms;
  bool no_upnp, no_natpmp, no_pcp;
  const char *description; /* UPnP mapping description; NULL = "natpunch" */
  np_log_fn log;
  void *log_user;
  enum np_log_level log_level;
} np_portmap_config;

/* Creates a handle (no I/O yet). Returns 0, NP_ERR_INVAL, NP_ERR_NOMEM. */
int np__portmap_new(const np_portmap_config *cfg, np_portmap **out);

/* Tries PCP, then NAT-PMP, then UPnP IGD (the cheap unicast protocols
 * first; UPnP's multicast discovery is the slowest), skipping disabled ones,
 * within the configured timeout, and stops at the first that maps the port
 * (asking for the internal port outside too). On success fills *external
 * with the public address and port and returns 0; NP_ERR_TIMEOUT when no
 * gateway answered, NP_ERR_UNSUPPORTED when one answered but none mapped
 * (or every protocol is disabled), NP_ERR_INVAL when a mapping is already
 * open on this handle. Blocks. */
int np__portmap_open(np_portmap *pm, np_addr *external);

/* The lifetime the gateway granted for the current mapping, in seconds, as
 * of the last np__portmap_open() or np__portmap_renew(): what PCP and NAT-PMP
 * answered (a gateway may grant less than was asked), for UPnP the lease
 * the gateway reports for the entry (GetSpecificPortMappingEntry), else the
 * one asked for. 0 when there is no mapping, or for a UPnP lease the
 * gateway made permanent (it needs no renewal). */
uint32_t np__portmap_lifetime(const np_portmap *pm);

/* Refreshes the current mapping with the protocol that made it, before its
 * lifetime ends (RFC 6887 11.2.1, RFC 6886 3.3): PCP sends the same MAP
 * request (same nonce, the assigned port suggested), NAT-PMP the same
 * mapping request, UPnP AddPortMapping for the same external port again.
 * Sent after the mapping was lost (a gateway restart) it makes it anew.
 * Fills *external (it may change) and updates np__portmap_lifetime().
 * Returns 0, NP_ERR_INVAL when there is no mapping, or an NP_ERR_* for
 * the failure (the old mapping still lives until its lifetime ends).
 * Blocks, bounded by the configured timeout. */
int np__portmap_renew(np_portmap *pm, np_addr *external);

/* The protocol that succeeded (NONE before or after failure). */
enum np_portmap_proto np__portmap_protocol(const np_portmap *pm);

/* "upnp", "natpmp", "pcp", "none". */
const char *np__portmap_proto_name(enum np_portmap_proto p);

/* Deletes the mapping made by np__portmap_open() (if any), bounded by the
 * configured timeout. Blocks. Returns 0 or an NP_ERR_* (the lease expires
 * on its own anyway). */
int np__portmap_close(np_portmap *pm);

/* Frees the handle. Does not delete the mapping: call np__portmap_close()
 * first. NULL is fine. */
void np__portmap_free(np_portmap *pm);

#endif
