/* Gathering candidates: interfaces, discovery-server views, hop/TTL measurement. */
#ifndef NP_GATHER_H
#define NP_GATHER_H

#include "discovery/nat_probe.h"
#include "natpunch.h"
#include "net/udp.h"
#include "path/path.h"
#include "signaling/signaling.h"
#include "stun/stun.h"
#include "util/log.h"

#include <stdbool.h>
#include <stdint.h>

#define NP_GATHER_HOP_MAX_TTL 4 /* NAT depth we can measure: 3 stacked NATs */

typedef struct np_gather_config {
  int family;
  np_addr local; /* the path's socket 0 as bound, with a concrete IP where known */
  np_addr discovery[NP_PROBE_MAX_SERVERS];
  int n_discovery;
  int prime_ttl; /* set by hand (> 0): no hop probes, this TTL */
  bool no_prime;
  np_logger log;
} np_gather_config;

/* The gathering state of one agent: the hop measurement lives as long as
 * the agent (NAT depth does not change between sessions), the discovery
 * query only during a session's gathering. Plain data, embedded in the
 * agent; every socket it uses is the path's socket 0. */
typedef struct np_gather {
  np_gather_config cfg;
  uint8_t hop_txid[NP_GATHER_HOP_MAX_TTL + 1][NP_STUN_TXID_LEN];
  bool hop_private[NP_GATHER_HOP_MAX_TTL + 1];
  bool hop_answered[NP_GATHER_HOP_MAX_TTL + 1];
  bool hop_reached[NP_GATHER_HOP_MAX_TTL + 1]; /* the server itself answered this TTL */
  int hop_rounds;                              /* hop probe rounds sent */
  int64_t hop_next;                            /* next round (INT64_MAX: none) */
  int prime_ttl;                               /* as measured by the last np__gather_finish */
  np_nat_probe *probe;                         /* the discovery query, while gathering */
  int64_t started;                             /* when the last gathering started */
} np_gather;

/* Sets g up from cfg (copied); nothing is sent yet. */
void np__gather_init(np_gather *g, const np_gather_config *cfg);

/* Ends a discovery query still running (NULL-safe for a zeroed g). */
void np__gather_stop(np_gather *g);

/* Sends the next round of hop probes (TTL 2..HOP_MAX_TTL toward discovery
 * server 1) on the path's socket 0, if one is due: rounds repeat every
 * HOP_RTO_MS for the TTLs still unanswered, a few times in all, because one
 * lost probe on a lossy link would otherwise miss a flat segment for the
 * agent's lifetime. No probes when there is no discovery server or the TTL
 * is set by hand. */
void np__gather_hop_send(np_gather *g, np_path *path, int64_t now);

/* Starts a session's gathering: clears *cand, fills its private (interface)
 * addresses, and starts the quick discovery query when there are servers.
 * Returns 0 or the query's NP_ERR_*. */
int np__gather_start(np_gather *g, int64_t now, np_sig_candidates *cand);

/* True while the discovery query runs (np__gather_finish not called yet). */
bool np__gather_active(const np_gather *g);

/* True once the running query has its answers or gave up. */
bool np__gather_done(const np_gather *g);

/* Sends the query's due requests on the path's socket 0 (a bounded batch). */
void np__gather_flush(np_gather *g, np_path *path, int64_t now);

/* When the discovery query next needs the clock (INT64_MAX: never, or no
 * query running). */
int64_t np__gather_wakeup(const np_gather *g);

/* When the next hop probe round is due (INT64_MAX: none). */
int64_t np__gather_hop_next(const np_gather *g);

/* Ends the gathering: the query's views, NAT verdict and stride go into
 * *cand with 'portmap' (the gateway's mapping, or NULL), the priming TTL is
 * measured, and cand's flat-segment flag set from the hop probes. Logs what
 * was gathered and which servers did not answer. */
void np__gather_finish(np_gather *g, int64_t now, const np_addr *portmap, np_sig_candidates *cand);

/* The priming TTL measured by the last np__gather_finish (0: no priming). */
int np__gather_prime_ttl(const np_gather *g);

/* Sets or clears NP_SIG_CAND_FLAT in *cand from what the hop probes found
 * so far (a late answer to a resent hop probe counts). */
void np__gather_update_flat(np_gather *g, np_sig_candidates *cand);

/* A STUN datagram on socket 'sock': an answer to a hop probe (the probe
 * reached the server: its TTL was enough), or to the discovery query. */
void np__gather_stun_input(np_gather *g, int sock, const np_addr *from, const uint8_t *buf,
                          size_t len, int64_t now);

/* An ICMP error from the path: "time exceeded" for a hop probe tells the
 * NAT depth; a port unreachable from a discovery server that is down on
 * socket 0 ends that server's wait without its timeout. */
void np__gather_icmp(np_gather *g, int sock, const np_udp_error *e, int64_t now);

#endif
