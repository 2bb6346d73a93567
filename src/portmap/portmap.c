/*
 * Port mapping: PCP (our codec, pcp.h), NAT-PMP (libnatpmp) and UPnP IGD
 * (miniupnpc), tried in that order within one time budget.
 *
 * Everything lives in the handle (no globals), and miniupnpc and libnatpmp
 * keep their state in caller-owned structs, so separate handles can work on
 * separate threads at once.
 */
#include "portmap/portmap.h"

#include "net/addr.h"
#include "portmap/pcp.h"
#include "util/clock.h"
#include "util/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <natpmp.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <miniupnpc/miniupnpc.h>
#include <miniupnpc/upnpcommands.h>
#include <miniupnpc/upnperrors.h>

#define DEFAULT_LIFETIME_S 3600
#define DEFAULT_TIMEOUT_MS 2000
/* PCP retransmission (RFC 6887 §8.1.1 says IRT 3 s, far beyond our whole
 * budget; a gateway on the LAN answers within milliseconds, so we start at
 * 250 ms and double, like libnatpmp does for NAT-PMP). */
#define PCP_FIRST_RTO_MS 250
/* Bounds on loops that wait for a datagram: stray or forged replies cannot
 * keep us reading forever even if the clock misbehaves. */
#define MAX_DATAGRAMS 64
/* SSDP answers come after a random delay of up to MX seconds (MX >= 1),
 * so a discovery window shorter than this often misses the gateway. */
#define UPNP_MIN_DISCOVERY_MS 1000
/* miniupnpc listens for the whole delay, even after the gateway answered,
 * and the MX it sends is delay/1000 s: past 1.5 s we only wait longer for
 * an answer that, if any, came within the first second. */
#define UPNP_MAX_DISCOVERY_MS 1500
/* Time kept back from discovery for the HTTP/SOAP exchanges that follow. */
#define UPNP_HTTP_RESERVE_MS 500
#define UPNP_PORT_ATTEMPTS 4

struct np_portmap {
  np_portmap_config cfg;
  char description[64];
  np_logger log;
  enum np_portmap_proto proto; /* what made the current mapping */
  np_addr external;
  np_addr gateway; /* NAT-PMP/PCP gateway actually used */
  uint32_t granted_s; /* lifetime of the current mapping, as granted */
  /* PCP: the request that made the mapping, replayed with lifetime 0. */
  np_pcp_map_request pcp_req;
  /* UPnP: enough to delete the mapping without discovering again. */
  char *upnp_control_url;
  char upnp_service_type[MINIUPNPC_URL_MAXSIZE];
  char upnp_ext_port[8];
  char upnp_client[64];
};

const char *np__portmap_proto_name(enum np_portmap_proto p) {
  switch (p) {
  case NP_PORTMAP_UPNP:
    return "upnp";
  case NP_PORTMAP_NATPMP:
    return "natpmp";
  case NP_PORTMAP_PCP:
    return "pcp";
  case NP_PORTMAP_NONE:
    break;
  }
  return "none";
}

int np__portmap_new(const np_portmap_config *cfg, np_portmap **out) {
  if (!cfg || !out || cfg->internal_port == 0 || cfg->lifetime_s < 0 || cfg->timeout_ms < 0)
    return NP_ERR_INVAL;
  *out = NULL;
  np_portmap *pm = calloc(1, sizeof *pm);
  if (!pm)
    return NP_ERR_NOMEM;
  pm->cfg = *cfg;
  if (pm->cfg.lifetime_s == 0)
    pm->cfg.lifetime_s = DEFAULT_LIFETIME_S;
  if (pm->cfg.timeout_ms == 0)
    pm->cfg.timeout_ms = DEFAULT_TIMEOUT_MS;
  /* Copied: the caller's string need not outlive this call. */
  snprintf(pm->description, sizeof pm->description, "%s",
           cfg->description ? cfg->description : "natpunch");
  pm->cfg.description = pm->description;
  pm->log = (np_logger){cfg->log, cfg->log_user, cfg->log_level};
  *out = pm;
  return 0;
}

enum np_portmap_proto np__portmap_protocol(const np_portmap *pm) {
  return pm ? pm->proto : NP_PORTMAP_NONE;
}

/* ---- helpers ----------------------------------------------------------- */

static int remaining_ms(int64_t deadline) {
  int64_t left = deadline - np__now_ms();
  if (left <= 0)
    return 0;
  return left > INT32_MAX ? INT32_MAX : (int)left;
}

/* The default route's IPv4 gateway from /proc/net/route (the kernel prints
 * addresses as the raw 32-bit value, i.e. already in network byte order
 * once parsed back). Picks the default route with the lowest metric. */
static int default_gateway(np_addr *out) {
  FILE *f = fopen("/proc/net/route", "r");
  if (!f)
    return NP_ERR_SYS;
  char line[256];
  unsigned best_metric = UINT32_MAX;
  bool found = false;
  /* The table has a header line and one line per route; bounded anyway. */
  for (int n = 0; n < 4096 && fgets(line, sizeof line, f); n++) {
    char ifname[32];
    unsigned dest, gw, flags, refcnt, use, metric, mask;
    if (sscanf(line, "%31s %x %x %x %u %u %u %x", ifname, &dest, &gw, &flags, &refcnt, &use,
               &metric, &mask) != 8)
      continue;
    /* 0x1 = RTF_UP, 0x2 = RTF_GATEWAY. */
    if (dest != 0 || mask != 0 || (flags & 0x3) != 0x3 || gw == 0)
      continue;
    if (!found || metric < best_metric) {
      memset(out, 0, sizeof *out);
      out->u.in4.sin_family = AF_INET;
      out->u.in4.sin_addr.s_addr = (in_addr_t)gw;
      best_metric = metric;
      found = true;
    }
  }
  fclose(f);
  return found ? 0 : NP_ERR_UNREACHABLE;
}

static int resolve_gateway(np_portmap *pm) {
  if (np__addr_is_set(&pm->cfg.gateway)) {
    pm->gateway = pm->cfg.gateway;
    return 0;
  }
  int rc = default_gateway(&pm->gateway);
  if (rc != 0)
    NP_LOGD(&pm->log, "portmap: no default IPv4 gateway in /proc/net/route");
  return rc;
}

/* ---- PCP --------------------------------------------------------------- */

/* A UDP socket connected to gateway:5351 (connect() makes the kernel drop
 * datagrams from anyone else and report ICMP errors as ECONNREFUSED), bound
 * to cfg->internal's IP when given: the PCP client address in the request
 * must be the packet's source address or the server answers
 * ADDRESS_MISMATCH. Fills *local with the source address in use. */
static int pcp_socket(np_portmap *pm, np_addr *local) {
  np_addr gw = pm->gateway;
  np_addr_set_port(&gw, NP_PCP_PORT);
  int fd = socket(gw.u.sa.sa_family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return NP_ERR_SYS;
  if (np__addr_is_set(&pm->cfg.internal) && pm->cfg.internal.u.sa.sa_family == gw.u.sa.sa_family) {
    np_addr b = pm->cfg.internal;
    np_addr_set_port(&b, 0);
    if (bind(fd, &b.u.sa, np_addr_len(&b)) != 0)
      goto fail;
  }
  if (connect(fd, &gw.u.sa, np_addr_len(&gw)) != 0)
    goto fail;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0 ||
      np__addr_from_sockaddr((struct sockaddr *)&ss, sl, local) != 0)
    goto fail;
  return fd;
fail:
  close(fd);
  return NP_ERR_SYS;
}

/* One PCP exchange: sends req, retransmits (250 ms, doubling) until a
 * matching response or the deadline. Returns 0 with *resp filled (any
 * result code), NP_ERR_TIMEOUT, NP_ERR_UNREACHABLE (ICMP: nobody listens
 * on 5351), NP_ERR_UNSUPPORTED (a NAT-PMP-only gateway), NP_ERR_SYS. */
static int pcp_exchange(np_portmap *pm, int fd, const np_pcp_map_request *req, int64_t deadline,
                        np_pcp_map_response *resp) {
  uint8_t out[NP_PCP_MAP_LEN];
  int len = np__pcp_encode_map(req, out, sizeof out);
  if (len < 0)
    return len;
  int rto = PCP_FIRST_RTO_MS;
  int64_t next_send = np__now_ms();
  int datagrams = 0;
  /* Every pass either sends, reads a datagram or waits until the next send
   * or the deadline; the deadline ends it. */
  for (;;) {
    int64_t now = np__now_ms();
    if (now >= deadline)
      return NP_ERR_TIMEOUT;
    if (now >= next_send) {
      if (send(fd, out, (size_t)len, 0) < 0 && errno != EAGAIN)
        return errno == ECONNREFUSED ? NP_ERR_UNREACHABLE : NP_ERR_SYS;
      next_send = now + rto;
      rto *= 2;
    }
    int64_t wake = next_send < deadline ? next_send : deadline;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int wait = (int)(wake - np__now_ms());
    int pr = poll(&p, 1, wait > 0 ? wait : 0);
    if (pr < 0 && errno != EINTR)
      return NP_ERR_SYS;
    if (pr <= 0)
      continue;
    uint8_t in[NP_PCP_MAX_MSG + 4];
    ssize_t n = recv(fd, in, sizeof in, 0);
    if (n < 0) {
      if (errno == ECONNREFUSED)
        return NP_ERR_UNREACHABLE;
      if (errno == EAGAIN || errno == EINTR)
        continue;
      return NP_ERR_SYS;
    }
    if (++datagrams > MAX_DATAGRAMS)
      return NP_ERR_PROTO;
    int rc = np__pcp_decode_map(in, (size_t)n, req, resp);
    if (rc == NP_ERR_UNSUPPORTED)
      return rc;
    if (rc != 0) {
      NP_LOGD(&pm->log, "portmap: pcp: ignoring a %zd-byte datagram (%s)", n, np_err_name(rc));
      continue;
    }
    return 0;
  }
}

/* One MAP request: a new one (renew false), or the current mapping's again
 * with its nonce and the assigned port suggested (renew true). */
static int pcp_map(np_portmap *pm, int64_t deadline, bool renew, np_addr *external) {
  np_addr local;
  int fd = pcp_socket(pm, &local);
  if (fd < 0)
    return fd;
  np_pcp_map_request req;
  int rc = 0;
  if (renew) {
    req = pm->pcp_req;
    req.client = local;
    req.lifetime = (uint32_t)pm->cfg.lifetime_s;
    req.suggested_port = np_addr_port(&pm->external);
    req.suggested = pm->external;
    np_addr_set_port(&req.suggested, 0);
  } else {
    memset(&req, 0, sizeof req);
    req.client = local;
    req.lifetime = (uint32_t)pm->cfg.lifetime_s;
    req.protocol = NP_PCP_PROTO_UDP;
    req.internal_port = pm->cfg.internal_port;
    /* Ask for the same port outside: peers and logs are simpler that way,
     * and the server picks another when it is taken. */
    req.suggested_port = pm->cfg.internal_port;
    rc = np__random_bytes(req.nonce, sizeof req.nonce);
  }
  if (rc == 0) {
    np_pcp_map_response resp;
    rc = pcp_exchange(pm, fd, &req, deadline, &resp);
    if (rc == 0 && resp.result != NP_PCP_SUCCESS) {
      NP_LOGI(&pm->log, "portmap: pcp: gateway refused the mapping: %s (%u)",
              np__pcp_result_name(resp.result), resp.result);
      rc = NP_ERR_REFUSED;
    } else if (rc == 0 && (resp.lifetime == 0 || np_addr_port(&resp.external) == 0 ||
                           np__addr_is_any(&resp.external))) {
      /* Success with nothing usable: treat as a malformed answer. */
      rc = NP_ERR_PROTO;
    } else if (rc == 0) {
      *external = resp.external;
      pm->pcp_req = req;
      pm->granted_s = resp.lifetime;
      char a[NP_ADDRSTRLEN];
      NP_LOGI(&pm->log, "portmap: pcp: %s udp %u -> %s for %" PRIu32 " s",
              renew ? "renewed" : "mapped", pm->cfg.internal_port,
              np_addr_format(external, a, sizeof a), resp.lifetime);
    }
  }
  close(fd);
  return rc;
}

static int try_pcp(np_portmap *pm, int64_t deadline, np_addr *external) {
  return pcp_map(pm, deadline, false, external);
}

static int delete_pcp(np_portmap *pm, int64_t deadline) {
  np_addr local;
  int fd = pcp_socket(pm, &local);
  if (fd < 0)
    return fd;
  /* RFC 6887 §15: the same nonce, protocol and internal port, lifetime 0. */
  np_pcp_map_request req = pm->pcp_req;
  req.lifetime = 0;
  np_pcp_map_response resp;
  int rc = pcp_exchange(pm, fd, &req, deadline, &resp);
  close(fd);
  if (rc == 0 && resp.result != NP_PCP_SUCCESS) {
    NP_LOGW(&pm->log, "portmap: pcp: delete refused: %s", np__pcp_result_name(resp.result));
    rc = NP_ERR_REFUSED;
  }
  return rc;
}

/* ---- NAT-PMP ----------------------------------------------------------- */

/* Waits for the answer to libnatpmp's pending request, letting it
 * retransmit on its own schedule but never past the deadline. */
static int natpmp_wait(natpmp_t *n, int64_t deadline, natpmpresp_t *resp) {
  /* libnatpmp gives up by itself after 9 tries (~128 s); the deadline
   * comes much sooner. Each pass waits at least 1 ms or reads. */
  for (int pass = 0; pass < 100000; pass++) {
    int left = remaining_ms(deadline);
    if (left == 0)
      return NP_ERR_TIMEOUT;
    struct timeval tv;
    if (getnatpmprequesttimeout(n, &tv) != 0)
      return NP_ERR_SYS;
    int64_t lib_ms = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
    if (lib_ms < 0)
      lib_ms = 0;
    int wait = lib_ms < left ? (int)lib_ms : left;
    struct pollfd p = {.fd = n->s, .events = POLLIN};
    int pr = poll(&p, 1, wait);
    if (pr < 0 && errno != EINTR)
      return NP_ERR_SYS;
    int r = readnatpmpresponseorretry(n, resp);
    if (r == 0)
      return 0;
    if (r == NATPMP_TRYAGAIN || r == NATPMP_ERR_WRONGPACKETSOURCE)
      continue;
    if (r == NATPMP_ERR_NOTAUTHORIZED || r == NATPMP_ERR_OUTOFRESOURCES ||
        r == NATPMP_ERR_NETWORKFAILURE || r == NATPMP_ERR_UNDEFINEDERROR)
      return NP_ERR_REFUSED;
    if (r == NATPMP_ERR_UNSUPPORTEDVERSION || r == NATPMP_ERR_UNSUPPORTEDOPCODE)
      return NP_ERR_UNSUPPORTED;
    /* RECVFROM with ECONNREFUSED: the gateway's ICMP port unreachable. */
    if (r == NATPMP_ERR_RECVFROM && errno == ECONNREFUSED)
      return NP_ERR_UNREACHABLE;
    if (r == NATPMP_ERR_NOGATEWAYSUPPORT)
      return NP_ERR_TIMEOUT;
    return NP_ERR_SYS;
  }
  return NP_ERR_TIMEOUT;
}

static int natpmp_open_handle(np_portmap *pm, natpmp_t *n) {
  if (pm->gateway.u.sa.sa_family != AF_INET)
    return NP_ERR_UNSUPPORTED; /* NAT-PMP is IPv4 only */
  int r = initnatpmp(n, 1, pm->gateway.u.in4.sin_addr.s_addr);
  if (r != 0) {
    NP_LOGD(&pm->log, "portmap: natpmp: initnatpmp failed (%d)", r);
    return NP_ERR_SYS;
  }
  return 0;
}

/* A mapping request asking for public_port outside (the internal port for a
 * new mapping, the assigned one for a renewal). */
static int natpmp_map(np_portmap *pm, int64_t deadline, uint16_t public_port, bool renew,
                      np_addr *external) {
  natpmp_t n;
  int rc = natpmp_open_handle(pm, &n);
  if (rc != 0)
    return rc;
  natpmpresp_t resp;
  /* The public address first: a gateway that cannot tell it (no WAN
   * address yet) answers with an error, and a mapping would be useless. */
  if (sendpublicaddressrequest(&n) < 0) {
    rc = errno == ECONNREFUSED ? NP_ERR_UNREACHABLE : NP_ERR_SYS;
    goto out;
  }
  rc = natpmp_wait(&n, deadline, &resp);
  if (rc != 0)
    goto out;
  if (resp.type != NATPMP_RESPTYPE_PUBLICADDRESS) {
    rc = NP_ERR_PROTO;
    goto out;
  }
  struct in_addr pub = resp.pnu.publicaddress.addr;
  if (sendnewportmappingrequest(&n, NATPMP_PROTOCOL_UDP, pm->cfg.internal_port, public_port,
                                (uint32_t)pm->cfg.lifetime_s) < 0) {
    rc = NP_ERR_SYS;
    goto out;
  }
  rc = natpmp_wait(&n, deadline, &resp);
  if (rc != 0)
    goto out;
  if (resp.type != NATPMP_RESPTYPE_UDPPORTMAPPING ||
      resp.pnu.newportmapping.privateport != pm->cfg.internal_port ||
      resp.pnu.newportmapping.mappedpublicport == 0 || pub.s_addr == 0) {
    rc = NP_ERR_PROTO;
    goto out;
  }
  memset(external, 0, sizeof *external);
  external->u.in4.sin_family = AF_INET;
  external->u.in4.sin_addr = pub;
  external->u.in4.sin_port = htons(resp.pnu.newportmapping.mappedpublicport);
  pm->granted_s = resp.pnu.newportmapping.lifetime;
  char a[NP_ADDRSTRLEN];
  NP_LOGI(&pm->log, "portmap: natpmp: %s udp %u -> %s for %" PRIu32 " s",
          renew ? "renewed" : "mapped", pm->cfg.internal_port,
          np_addr_format(external, a, sizeof a), resp.pnu.newportmapping.lifetime);
out:
  closenatpmp(&n);
  return rc;
}

static int try_natpmp(np_portmap *pm, int64_t deadline, np_addr *external) {
  return natpmp_map(pm, deadline, pm->cfg.internal_port, false, external);
}

static int delete_natpmp(np_portmap *pm, int64_t deadline) {
  natpmp_t n;
  int rc = natpmp_open_handle(pm, &n);
  if (rc != 0)
    return rc;
  /* RFC 6886 §3.4: lifetime 0 deletes; the suggested external port must
   * be 0 too. */
  if (sendnewportmappingrequest(&n, NATPMP_PROTOCOL_UDP, pm->cfg.internal_port, 0, 0) < 0) {
    rc = NP_ERR_SYS;
  } else {
    natpmpresp_t resp;
    rc = natpmp_wait(&n, deadline, &resp);
  }
  closenatpmp(&n);
  return rc;
}

/* ---- UPnP IGD ---------------------------------------------------------- */

/* The lease the gateway holds for our entry (IGD's PortMappingLeaseDuration,
 * seconds left), which may be less than we asked: IGDv2 caps leases at a
 * week, and gateways have their own limits. Falls back on 'asked' when the
 * gateway does not say. */
static uint32_t upnp_lease(np_portmap *pm, const char *control_url, const char *service,
                           const char *ext_port, uint32_t asked) {
  char client[64] = "", in_port[8] = "", desc[80] = "", enabled[4] = "", lease[16] = "";
  int r = UPNP_GetSpecificPortMappingEntry(control_url, service, ext_port, "UDP", NULL, client,
                                           in_port, desc, enabled, lease);
  long v;
  char *end = NULL;
  if (r != 0 || lease[0] == '\0')
    return asked;
  v = strtol(lease, &end, 10);
  if (*end != '\0' || v < 0 || v > (long)UINT32_MAX)
    return asked;
  if (v != (long)asked)
    NP_LOGD(&pm->log, "portmap: upnp: the gateway holds the lease for %ld s (asked %" PRIu32 ")",
            v, asked);
  return (uint32_t)v;
}

static int try_upnp(np_portmap *pm, int64_t deadline, np_addr *external) {
  int left = remaining_ms(deadline);
  if (left == 0)
    return NP_ERR_TIMEOUT;
  /* upnpDiscover() waits its whole delay for SSDP answers; keep some of
   * the budget for fetching the description and the SOAP calls (which
   * miniupnpc bounds with its own socket timeouts, not ours). */
  int delay = left - UPNP_HTTP_RESERVE_MS;
  if (delay > UPNP_MAX_DISCOVERY_MS)
    delay = UPNP_MAX_DISCOVERY_MS;
  if (delay < UPNP_MIN_DISCOVERY_MS)
    delay = left < UPNP_MIN_DISCOVERY_MS ? left : UPNP_MIN_DISCOVERY_MS;
  int err = 0;
  struct UPNPDev *devs = upnpDiscover(delay, NULL, NULL, UPNP_LOCAL_PORT_ANY, 0, 2, &err);
  if (!devs) {
    NP_LOGD(&pm->log, "portmap: upnp: no device answered SSDP in %d ms (error %d)", delay, err);
    return NP_ERR_TIMEOUT;
  }
  struct UPNPUrls urls;
  struct IGDdatas data;
  char lanaddr[64] = "";
  memset(&urls, 0, sizeof urls);
  memset(&data, 0, sizeof data);
  int igd = UPNP_GetValidIGD(devs, &urls, &data, lanaddr, sizeof lanaddr);
  freeUPNPDevlist(devs);
  int rc = 0;
  /* 1 = connected IGD; 2 = an IGD that says it is not connected, which
   * some routers report wrongly, so we still try it. */
  if (igd != 1 && igd != 2) {
    NP_LOGD(&pm->log, "portmap: upnp: no internet gateway device (%d)", igd);
    rc = igd == 0 ? NP_ERR_TIMEOUT : NP_ERR_UNSUPPORTED;
    goto out;
  }
  char client[64]; /* lanaddr fits; INET6_ADDRSTRLEN too */
  if (np__addr_is_set(&pm->cfg.internal)) {
    if (!inet_ntop(pm->cfg.internal.u.sa.sa_family,
                   pm->cfg.internal.u.sa.sa_family == AF_INET
                       ? (const void *)&pm->cfg.internal.u.in4.sin_addr
                       : (const void *)&pm->cfg.internal.u.in6.sin6_addr,
                   client, sizeof client)) {
      rc = NP_ERR_INVAL;
      goto out;
    }
  } else {
    snprintf(client, sizeof client, "%s", lanaddr);
  }
  char in_port[8], ext_port[8], lease[16];
  snprintf(in_port, sizeof in_port, "%u", pm->cfg.internal_port);
  snprintf(lease, sizeof lease, "%d", pm->cfg.lifetime_s);
  int r = -1;
  uint32_t asked = (uint32_t)pm->cfg.lifetime_s;
  uint16_t eport = pm->cfg.internal_port;
  /* The same port outside first; on a conflict a few random ones. */
  for (int attempt = 0; attempt < UPNP_PORT_ATTEMPTS; attempt++) {
    snprintf(ext_port, sizeof ext_port, "%u", eport);
    r = UPNP_AddPortMapping(urls.controlURL, data.first.servicetype, ext_port, in_port, client,
                            pm->description, "UDP", NULL, lease);
    if (r == 725) { /* OnlyPermanentLeasesSupported: we delete it on close */
      r = UPNP_AddPortMapping(urls.controlURL, data.first.servicetype, ext_port, in_port, client,
                              pm->description, "UDP", NULL, "0");
      asked = 0;
    }
    if (r != 718) /* ConflictInMappingEntry */
      break;
    uint16_t rnd = 0;
    if (np__random_bytes(&rnd, sizeof rnd) != 0)
      break;
    eport = (uint16_t)(1024 + rnd % (65536 - 1024));
  }
  if (r != 0) {
    NP_LOGI(&pm->log, "portmap: upnp: AddPortMapping failed: %d %s", r, strupnperror(r));
    rc = NP_ERR_REFUSED;
    goto out;
  }
  char ext_ip[40] = "";
  r = UPNP_GetExternalIPAddress(urls.controlURL, data.first.servicetype, ext_ip);
  np_addr ext;
  if (r != 0 || np_addr_parse(ext_ip, eport, &ext) != 0 || np__addr_is_any(&ext)) {
    NP_LOGI(&pm->log, "portmap: upnp: no usable external address ('%s', %d)", ext_ip, r);
    UPNP_DeletePortMapping(urls.controlURL, data.first.servicetype, ext_port, "UDP", NULL);
    rc = NP_ERR_PROTO;
    goto out;
  }
  pm->upnp_control_url = strdup(urls.controlURL);
  if (!pm->upnp_control_url) {
    UPNP_DeletePortMapping(urls.controlURL, data.first.servicetype, ext_port, "UDP", NULL);
    rc = NP_ERR_NOMEM;
    goto out;
  }
  snprintf(pm->upnp_service_type, sizeof pm->upnp_service_type, "%s", data.first.servicetype);
  snprintf(pm->upnp_ext_port, sizeof pm->upnp_ext_port, "%s", ext_port);
  snprintf(pm->upnp_client, sizeof pm->upnp_client, "%s", client);
  pm->granted_s = upnp_lease(pm, urls.controlURL, data.first.servicetype, ext_port, asked);
  *external = ext;
  char a[NP_ADDRSTRLEN];
  NP_LOGI(&pm->log, "portmap: upnp: mapped udp %s:%u -> %s", client, pm->cfg.internal_port,
          np_addr_format(external, a, sizeof a));
out:
  FreeUPNPUrls(&urls);
  return rc;
}

/* AddPortMapping again for the same entry: it refreshes the lease (and
 * recreates the entry if the gateway lost it). */
static int renew_upnp(np_portmap *pm, np_addr *external) {
  if (!pm->upnp_control_url)
    return NP_ERR_INVAL;
  char in_port[8], lease[16];
  snprintf(in_port, sizeof in_port, "%u", pm->cfg.internal_port);
  snprintf(lease, sizeof lease, "%d", pm->cfg.lifetime_s);
  int r = UPNP_AddPortMapping(pm->upnp_control_url, pm->upnp_service_type, pm->upnp_ext_port,
                              in_port, pm->upnp_client, pm->description, "UDP", NULL, lease);
  if (r != 0) {
    NP_LOGI(&pm->log, "portmap: upnp: renewing: AddPortMapping failed: %d %s", r, strupnperror(r));
    return r < 0 ? NP_ERR_TIMEOUT : NP_ERR_REFUSED;
  }
  pm->granted_s = upnp_lease(pm, pm->upnp_control_url, pm->upnp_service_type, pm->upnp_ext_port,
                             (uint32_t)pm->cfg.lifetime_s);
  *external = pm->external;
  char a[NP_ADDRSTRLEN];
  NP_LOGI(&pm->log, "portmap: upnp: renewed udp %u -> %s for %" PRIu32 " s",
          pm->cfg.internal_port, np_addr_format(external, a, sizeof a), pm->granted_s);
  return 0;
}

static int delete_upnp(np_portmap *pm) {
  if (!pm->upnp_control_url)
    return NP_ERR_INVAL;
  int r = UPNP_DeletePortMapping(pm->upnp_control_url, pm->upnp_service_type, pm->upnp_ext_port,
                                 "UDP", NULL);
  free(pm->upnp_control_url);
  pm->upnp_control_url = NULL;
  if (r != 0) {
    NP_LOGW(&pm->log, "portmap: upnp: DeletePortMapping failed: %d %s", r, strupnperror(r));
    return NP_ERR_REFUSED;
  }
  return 0;
}

/* ---- the API ----------------------------------------------------------- */

/* A share of what is left for one protocol, so that a silent gateway on
 * one protocol leaves time for the next ones. */
static int64_t share(int64_t deadline, int parts) {
  int left = remaining_ms(deadline);
  return np__now_ms() + left / parts;
}

int np__portmap_open(np_portmap *pm, np_addr *external) {
  if (!pm || !external)
    return NP_ERR_INVAL;
  if (pm->proto != NP_PORTMAP_NONE)
    return NP_ERR_INVAL; /* close the current mapping first */
  int64_t start = np__now_ms();
  int64_t deadline = start + pm->cfg.timeout_ms;
  np_addr ext;
  int rc = NP_ERR_UNSUPPORTED, last = NP_ERR_UNSUPPORTED;
  bool have_gw = (!pm->cfg.no_pcp || !pm->cfg.no_natpmp) && resolve_gateway(pm) == 0;
  /* Budget: PCP a quarter, NAT-PMP a third of the rest, UPnP the rest
   * (the unicast protocols answer in milliseconds or fail fast with ICMP;
   * only a silent gateway uses up their share). */
  if (have_gw && !pm->cfg.no_pcp) {
    int64_t t = np__now_ms();
    rc = try_pcp(pm, pm->cfg.no_natpmp && pm->cfg.no_upnp ? deadline : share(deadline, 4), &ext);
    NP_LOGD(&pm->log, "portmap: pcp: %s after %" PRId64 " ms", np_err_name(rc), np__now_ms() - t);
    if (rc == 0) {
      pm->proto = NP_PORTMAP_PCP;
      goto done;
    }
    last = rc;
  }
  if (have_gw && !pm->cfg.no_natpmp) {
    int64_t t = np__now_ms();
    rc = try_natpmp(pm, pm->cfg.no_upnp ? deadline : share(deadline, 3), &ext);
    NP_LOGD(&pm->log, "portmap: natpmp: %s after %" PRId64 " ms", np_err_name(rc),
            np__now_ms() - t);
    if (rc == 0) {
      pm->proto = NP_PORTMAP_NATPMP;
      goto done;
    }
    last = rc;
  }
  if (!pm->cfg.no_upnp) {
    int64_t t = np__now_ms();
    rc = try_upnp(pm, deadline, &ext);
    NP_LOGD(&pm->log, "portmap: upnp: %s after %" PRId64 " ms", np_err_name(rc), np__now_ms() - t);
    if (rc == 0) {
      pm->proto = NP_PORTMAP_UPNP;
      goto done;
    }
    last = rc;
  }
  /* The contract promises TIMEOUT (nobody answered) or UNSUPPORTED (some
   * gateway answered but none mapped); REFUSED and PROTO count as the
   * latter, local errors as the former only when they are timeouts. */
  NP_LOGI(&pm->log, "portmap: no protocol mapped udp %u (%s, %" PRId64 " ms)",
          pm->cfg.internal_port, np_err_name(last), np__now_ms() - start);
  return last == NP_ERR_TIMEOUT || last == NP_ERR_UNREACHABLE ? NP_ERR_TIMEOUT : NP_ERR_UNSUPPORTED;
done:
  pm->external = ext;
  *external = ext;
  return 0;
}

uint32_t np__portmap_lifetime(const np_portmap *pm) {
  return pm && pm->proto != NP_PORTMAP_NONE ? pm->granted_s : 0;
}

int np__portmap_renew(np_portmap *pm, np_addr *external) {
  if (!pm || !external || pm->proto == NP_PORTMAP_NONE)
    return NP_ERR_INVAL;
  int64_t deadline = np__now_ms() + pm->cfg.timeout_ms;
  np_addr ext;
  int rc;
  switch (pm->proto) {
  case NP_PORTMAP_PCP:
    rc = pcp_map(pm, deadline, true, &ext);
    break;
  case NP_PORTMAP_NATPMP:
    rc = natpmp_map(pm, deadline, np_addr_port(&pm->external), true, &ext);
    break;
  case NP_PORTMAP_UPNP:
    rc = renew_upnp(pm, &ext);
    break;
  default:
    return NP_ERR_INVAL;
  }
  if (rc != 0) {
    NP_LOGI(&pm->log, "portmap: %s: renewing udp %u failed: %s", np__portmap_proto_name(pm->proto),
            pm->cfg.internal_port, np_err_name(rc));
    return rc;
  }
  pm->external = ext;
  *external = ext;
  return 0;
}

int np__portmap_close(np_portmap *pm) {
  if (!pm)
    return NP_ERR_INVAL;
  int64_t deadline = np__now_ms() + pm->cfg.timeout_ms;
  int rc = 0;
  switch (pm->proto) {
  case NP_PORTMAP_PCP:
    rc = delete_pcp(pm, deadline);
    break;
  case NP_PORTMAP_NATPMP:
    rc = delete_natpmp(pm, deadline);
    break;
  case NP_PORTMAP_UPNP:
    rc = delete_upnp(pm);
    break;
  case NP_PORTMAP_NONE:
    return 0;
  }
  NP_LOGI(&pm->log, "portmap: %s: mapping for udp %u deleted: %s",
          np__portmap_proto_name(pm->proto), pm->cfg.internal_port, np_err_name(rc));
  /* Forgotten even when the gateway did not confirm: the lease runs out
   * on its own, and the handle can open a new mapping. */
  pm->proto = NP_PORTMAP_NONE;
  pm->granted_s = 0;
  memset(&pm->external, 0, sizeof pm->external);
  return rc;
}

void np__portmap_free(np_portmap *pm) {
  if (!pm)
    return;
  free(pm->upnp_control_url);
  free(pm);
}
