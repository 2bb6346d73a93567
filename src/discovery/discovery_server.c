/*
 * STUN discovery server: RFC 8489 Binding, RFC 5780 NAT behaviour discovery
 * (OTHER-ADDRESS, RESPONSE-ORIGIN, CHANGE-REQUEST, RESPONSE-PORT) and RFC 3489
 * compatibility (MAPPED-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS).
 *
 * Shape: stateless. Each worker thread owns one SO_REUSEPORT socket per
 * server address (up to four: IP1:P1, IP2:P1, IP1:P2, IP2:P2), waits on them
 * in its own event loop (net/loop.h), which np_discovery_server_stop() stops
 * (each worker's, async-signal-safe), reads datagrams in batches with recvmmsg(), answers each one into
 * a preallocated buffer and sends the answers in batches with sendmmsg(). No
 * memory is allocated after np_discovery_server_new(), and no state is kept
 * between datagrams, so a flood costs CPU but never memory.
 *
 * Policy decisions (each also explained where it is implemented):
 *  - Only Binding requests are answered; responses, indications and other
 *    methods are dropped and counted as ignored (a discovery server has no
 *    business with TURN or ICE methods, and answering them would only make
 *    us a reflector).
 *  - MESSAGE-INTEGRITY(-SHA256) in a request is accepted and ignored: this
 *    server has no credentials (the Binding usage of RFC 8489 §13 needs
 *    none), so it answers as an unauthenticated server, without integrity.
 *  - A response is never padded: PADDING in a request (RFC 5780 §7.6, a
 *    SHOULD) is not echoed, so a request cannot buy a bigger answer. SOFTWARE
 *    is off unless configured.
 *  - Only the request's source IP is ever a destination. RESPONSE-PORT may
 *    change the port (RFC 5780 §7.5) but ports below 1024 are refused
 *    (counted as dropped_policy), so the server cannot be aimed at the
 *    client host's well-known services. RESPONSE-ADDRESS (RFC 3489) is not
 *    supported: it is comprehension-required, so it gets a 420.
 *  - CHANGE-REQUEST asking for a change the server cannot make (no alternate
 *    IP *and* port) gets 420 listing CHANGE-REQUEST, as RFC 5780 §6.1 expects
 *    from a server that does not implement it. A CHANGE-REQUEST with no flag
 *    set asks for nothing and is answered normally.
 */
#include "natpunch.h"

#include "net/addr.h"
#include "net/loop.h"
#include "net/udp.h"
#include "stun/stun.h"
#include "util/log.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Datagrams read (and answers sent) per system call. 32 amortises the
 * syscall cost well while keeping a worker's buffers within ~90 KiB. */
#define DS_BATCH 32
/* Batches read from one socket before going back to epoll, so one busy
 * socket cannot starve the others (or the stop event) for long. */
#define DS_BATCHES_PER_WAKEUP 8
/* Socket index bits: which of the two IPs and two ports a socket has. */
#define DS_ALT_IP 1
#define DS_ALT_PORT 2
#define DS_NSOCK 4
/* Most worker threads; far above any sensible core count. */
#define DS_MAX_THREADS 256
/* RESPONSE-PORT values below this are refused (see the header comment). */
#define DS_MIN_RESPONSE_PORT 1024
/* Room for one IP_PKTINFO or IPV6_PKTINFO control message. */
#define DS_CTL_LEN CMSG_SPACE(sizeof(struct in6_pktinfo))

/* Counters of one worker. Only that worker writes them (once per batch);
 * np_discovery_server_stats() reads them from any thread, hence atomics. */
struct ds_counters {
  _Atomic uint64_t received, answered, errors_sent, dropped_malformed, dropped_ignored,
      dropped_policy, send_failures;
};

/* Plain counters for one batch, added to the atomics in one go. */
struct ds_tally {
  uint64_t received, answered, errors_sent, dropped_malformed, dropped_ignored,
      dropped_policy, send_failures;
};

/* Control-message buffer with the alignment cmsg(3) needs. */
union ds_ctl {
  char buf[DS_CTL_LEN];
  struct cmsghdr align;
};

/* One answer waiting to be sent. */
struct ds_out {
  int sock;                     /* index into worker.fds */
  bool is_error;                /* an error response (counted apart) */
  struct sockaddr_storage dest; /* the request's source IP, maybe another port */
  socklen_t dest_len;
  /* Source address to put in a PKTINFO control message: only for wildcard
   * sockets, whose replies must leave from the address the request hit. */
  bool use_pktinfo;
  np_addr src;
  int ifindex;
  size_t len;
  uint8_t buf[NP_STUN_MAX_MESSAGE];
};

struct np_discovery_server;

struct ds_worker {
  struct np_discovery_server *srv;
  int id;
  int fds[DS_NSOCK]; /* -1 where the server has no such address */
  np_loop *loop;
  pthread_t thread;
  struct ds_counters count;

  /* Receive side. */
  struct mmsghdr rx_msg[DS_BATCH];
  struct iovec rx_iov[DS_BATCH];
  struct sockaddr_storage rx_name[DS_BATCH];
  union ds_ctl rx_ctl[DS_BATCH];
  uint8_t rx_buf[DS_BATCH][NP_STUN_MAX_MESSAGE]; /* longer datagrams arrive truncated and fail to decode */

  /* Send side: answers, then a per-socket view for sendmmsg(). */
  struct ds_out out[DS_BATCH];
  size_t n_out;
  struct mmsghdr tx_msg[DS_BATCH];
  unsigned tx_src[DS_BATCH]; /* tx_msg[k] sends out[tx_src[k]] */
  struct iovec tx_iov[DS_BATCH];
  union ds_ctl tx_ctl[DS_BATCH];
};

struct np_discovery_server {
  np_logger log;
  /* Server addresses by socket index; family AF_UNSPEC where absent. For a
   * wildcard listen address these hold the wildcard and the real local IP
   * comes from PKTINFO per datagram. */
  np_addr addrs[DS_NSOCK];
  bool wildcard; /* listen address is 0.0.0.0 or :: */
  /* RFC 5780 mode: alternate IP and port both present, so all four
   * sockets exist and CHANGE-REQUEST / OTHER-ADDRESS work. */
  bool rfc5780;
  char software[NP_STUN_MAX_REASON + 1];
  size_t software_len;
  int n_workers;
  struct ds_worker **workers;
  atomic_bool running;
};

/* ------------------------------------------------------------------------ */
/* Request handling (pure: buffers in, buffer out)                           */
/* ------------------------------------------------------------------------ */

/* The address a socket's answers appear to come from. */
static const np_addr *local_of(const struct np_discovery_server *srv, int sock,
                               const np_addr *dst_ip) {
  return srv->wildcard ? dst_ip : &srv->addrs[sock];
}

/* Puts SOFTWARE (when configured) and FINGERPRINT (when the request had one:
 * RFC 8489 §7.3 lets a usage decide, and echoing the client's choice keeps
 * the reply demultiplexable exactly when the client needs that). */
static void put_trailer(const struct np_discovery_server *srv, np_stun_writer *w,
                        const np_stun_msg *req) {
  if (srv->software_len)
    np__stun_put_bytes(w, NP_STUN_ATTR_SOFTWARE, srv->software, srv->software_len);
  if (req->present & NP_STUN_HAS_FINGERPRINT)
    np__stun_put_fingerprint(w);
}

/* Writes a 420 listing the unknown comprehension-required attributes of req
 * (plus CHANGE-REQUEST when that is what we cannot honour). Returns the
 * length or 0. */
static size_t build_420(const struct np_discovery_server *srv, const np_stun_msg *req,
                        bool change_unsupported, uint8_t *buf, size_t cap) {
  uint16_t types[NP_STUN_MAX_UNKNOWN];
  size_t n = req->n_unknown_required < NP_STUN_MAX_UNKNOWN ? req->n_unknown_required
                                                           : NP_STUN_MAX_UNKNOWN;
  memcpy(types, req->unknown_required, n * sizeof types[0]);
  if (change_unsupported && n < NP_STUN_MAX_UNKNOWN)
    types[n++] = NP_STUN_ATTR_CHANGE_REQUEST;
  np_stun_writer w;
  np__stun_writer_init(&w, buf, cap, NP_STUN_BINDING | NP_STUN_ERROR, req->cookie, req->txid);
  np__stun_put_error(&w, 420, "Unknown Attribute");
  np__stun_put_unknown(&w, types, n);
  put_trailer(srv, &w, req);
  int len = np__stun_writer_finish(&w);
  return len > 0 ? (size_t)len : 0;
}

/* What to do with one datagram. */
enum ds_verdict { DS_DROP_MALFORMED, DS_DROP_IGNORED, DS_DROP_POLICY, DS_ANSWER, DS_ERROR };

/*
 * Handles one datagram that arrived on socket 'sock' from 'from', whose
 * destination IP was 'dst_ip' (only used for wildcard sockets). On
 * DS_ANSWER/DS_ERROR, o->buf/len/sock/dest hold the reply.
 */
static enum ds_verdict handle(const struct np_discovery_server *srv, int sock,
                              const np_addr *from, const np_addr *dst_ip, const uint8_t *req_buf,
                              size_t req_len, struct ds_out *o, const char **why) {
  np_stun_msg req;
  /* The decoder checks everything RFC 8489 §6.3 asks before a server acts:
   * header bits, lengths, attribute bounds, FINGERPRINT. A failure is not a
   * STUN message we can trust, so it is discarded silently (§6.3: "the
   * message is discarded"). */
  if (np__stun_read(req_buf, req_len, &req) != 0) {
    *why = "not a valid STUN message";
    return DS_DROP_MALFORMED;
  }
  if (req.cls != NP_STUN_REQUEST) {
    *why = "not a request";
    return DS_DROP_IGNORED;
  }
  if (req.method != NP_STUN_BINDING) {
    *why = "not a Binding request";
    return DS_DROP_IGNORED;
  }

  o->sock = sock;
  enum ds_verdict verdict = DS_ANSWER;
  np_addr dest = *from;
  /* RFC 5780 §7.5: the response goes to the port given in RESPONSE-PORT, at
   * the source IP; the IP never changes. Error responses too: a client
   * using RESPONSE-PORT listens there (coturn's stunclient closes the
   * sending socket), and the destination is just as harmless. */
  if (req.present & NP_STUN_HAS_RESPONSE_PORT) {
    if (req.response_port < DS_MIN_RESPONSE_PORT) {
      *why = "RESPONSE-PORT below 1024";
      return DS_DROP_POLICY;
    }
    np_addr_set_port(&dest, req.response_port);
  }
  /* RFC 8489 §6.3.1.1: unknown comprehension-required attributes -> 420. */
  bool change_flags = (req.present & NP_STUN_HAS_CHANGE_REQUEST) &&
                      (req.change_request & (NP_STUN_CHANGE_IP | NP_STUN_CHANGE_PORT));
  bool change_unsupported = change_flags && !srv->rfc5780;
  if (req.n_unknown_required > 0 || change_unsupported) {
    o->len = build_420(srv, &req, change_unsupported, o->buf, sizeof o->buf);
    if (o->len == 0) {
      *why = "could not encode 420";
      return DS_DROP_MALFORMED;
    }
    *why = change_unsupported ? "CHANGE-REQUEST without alternate address"
                              : "unknown comprehension-required attribute";
    verdict = DS_ERROR;
    goto reply;
  }

  /* RFC 5780 §7.2/§6.1: answer from the address that differs from the one
   * the request reached in IP, port or both, as asked. With the socket
   * index bits that is an XOR. */
  int out_sock = sock;
  if (change_flags) {
    if (req.change_request & NP_STUN_CHANGE_IP)
      out_sock ^= DS_ALT_IP;
    if (req.change_request & NP_STUN_CHANGE_PORT)
      out_sock ^= DS_ALT_PORT;
  }
  o->sock = out_sock;
  const np_addr *origin = local_of(srv, out_sock, dst_ip);
  /* OTHER-ADDRESS / CHANGED-ADDRESS: where "change IP and port" answers
   * would come from, relative to the address the request reached. */
  const np_addr *other = srv->rfc5780 ? &srv->addrs[sock ^ (DS_ALT_IP | DS_ALT_PORT)] : NULL;

  np_stun_writer w;
  np__stun_writer_init(&w, o->buf, sizeof o->buf, NP_STUN_BINDING | NP_STUN_SUCCESS, req.cookie,
                      req.txid);
  if (req.rfc3489) {
    /* RFC 8489 §12 (and RFC 5389 §12.2): a request without the magic cookie
     * comes from an RFC 3489 client, which knows MAPPED-ADDRESS but not the
     * XOR form; the 16-byte transaction ID is echoed through 'cookie'. */
    np__stun_put_addr(&w, NP_STUN_ATTR_MAPPED_ADDRESS, from);
    if (np__addr_is_set(origin))
      np__stun_put_addr(&w, NP_STUN_ATTR_SOURCE_ADDRESS, origin);
    if (other)
      np__stun_put_addr(&w, NP_STUN_ATTR_CHANGED_ADDRESS, other);
  } else {
    np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, from);
    /* RFC 5780 §7.3: RESPONSE-ORIGIN is the address the response is sent
     * from; always included so clients can detect hairpinning or an
     * address-rewriting middlebox. */
    if (np__addr_is_set(origin))
      np__stun_put_addr(&w, NP_STUN_ATTR_RESPONSE_ORIGIN, origin);
    if (other)
      np__stun_put_addr(&w, NP_STUN_ATTR_OTHER_ADDRESS, other);
  }
  put_trailer(srv, &w, &req);
  int len = np__stun_writer_finish(&w);
  if (len <= 0) {
    *why = "could not encode response";
    return DS_DROP_MALFORMED;
  }
  o->len = (size_t)len;
  *why = NULL;

reply:
  o->dest_len = np_addr_len(&dest);
  memcpy(&o->dest, &dest.u, o->dest_len);
  o->use_pktinfo = srv->wildcard && np__addr_is_set(dst_ip);
  if (o->use_pktinfo)
    o->src = *dst_ip;
  return verdict;
}

/* ------------------------------------------------------------------------ */
/* Worker I/O                                                                */
/* ------------------------------------------------------------------------ */

/* Reads the destination IP (and interface) of a datagram from its PKTINFO
 * control message; false if there is none. Port is left 0. */
static bool read_pktinfo(struct msghdr *mh, int family, np_addr *ip, int *ifindex) {
  memset(ip, 0, sizeof *ip);
  for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
    if (family == AF_INET && c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      struct in_pktinfo pi;
      memcpy(&pi, CMSG_DATA(c), sizeof pi);
      ip->u.in4.sin_family = AF_INET;
      ip->u.in4.sin_addr = pi.ipi_addr;
      *ifindex = pi.ipi_ifindex;
      return true;
    }
    if (family == AF_INET6 && c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
      struct in6_pktinfo pi;
      memcpy(&pi, CMSG_DATA(c), sizeof pi);
      ip->u.in6.sin6_family = AF_INET6;
      ip->u.in6.sin6_addr = pi.ipi6_addr;
      *ifindex = (int)pi.ipi6_ifindex;
      return true;
    }
  }
  return false;
}

/* Fills a PKTINFO control message asking the kernel to send from o->src. */
static size_t write_pktinfo(const struct ds_out *o, union ds_ctl *ctl) {
  memset(ctl, 0, sizeof *ctl);
  struct msghdr mh = {.msg_control = ctl->buf, .msg_controllen = sizeof ctl->buf};
  struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
  if (o->src.u.sa.sa_family == AF_INET) {
    struct in_pktinfo pi = {0};
    pi.ipi_spec_dst = o->src.u.in4.sin_addr;
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof pi);
    memcpy(CMSG_DATA(c), &pi, sizeof pi);
    return CMSG_SPACE(sizeof pi);
  }
  struct in6_pktinfo pi = {0};
  pi.ipi6_addr = o->src.u.in6.sin6_addr;
  pi.ipi6_ifindex = (unsigned)o->ifindex;
  c->cmsg_level = IPPROTO_IPV6;
  c->cmsg_type = IPV6_PKTINFO;
  c->cmsg_len = CMSG_LEN(sizeof pi);
  memcpy(CMSG_DATA(c), &pi, sizeof pi);
  return CMSG_SPACE(sizeof pi);
}

/* Sends the queued answers, grouped per socket, with as few sendmmsg()
 * calls as the kernel allows, and counts what was sent. A datagram the
 * kernel refuses is counted as a send failure and skipped: UDP is lossy and
 * the client will retransmit. */
static void flush_out(struct ds_worker *wk, struct ds_tally *t) {
  for (int s = 0; s < DS_NSOCK; s++) {
    unsigned n = 0;
    for (size_t i = 0; i < wk->n_out; i++) {
      struct ds_out *o = &wk->out[i];
      if (o->sock != s)
        continue;
      wk->tx_iov[n] = (struct iovec){.iov_base = o->buf, .iov_len = o->len};
      struct msghdr *mh = &wk->tx_msg[n].msg_hdr;
      memset(mh, 0, sizeof *mh);
      mh->msg_name = &o->dest;
      mh->msg_namelen = o->dest_len;
      mh->msg_iov = &wk->tx_iov[n];
      mh->msg_iovlen = 1;
      if (o->use_pktinfo) {
        mh->msg_control = wk->tx_ctl[n].buf;
        mh->msg_controllen = write_pktinfo(o, &wk->tx_ctl[n]);
      }
      wk->tx_src[n] = (unsigned)i;
      n++;
    }
    unsigned off = 0;
    while (off < n) {
      int r = sendmmsg(wk->fds[s], wk->tx_msg + off, n - off, 0);
      if (r < 0) {
        if (errno == EINTR)
          continue;
        if (np_log_enabled(&wk->srv->log, NP_LOG_DEBUG)) {
          char a[NP_ADDRSTRLEN];
          np_addr d;
          np__addr_from_sockaddr(wk->tx_msg[off].msg_hdr.msg_name,
                                wk->tx_msg[off].msg_hdr.msg_namelen, &d);
          NP_LOGD(&wk->srv->log, "send to %s: %s", np_addr_format(&d, a, sizeof a),
                  strerror(errno));
        }
        t->send_failures++;
        off++;
        continue;
      }
      for (unsigned k = off; k < off + (unsigned)r; k++) {
        if (wk->out[wk->tx_src[k]].is_error)
          t->errors_sent++;
        else
          t->answered++;
      }
      off += (unsigned)r;
    }
  }
  wk->n_out = 0;
}

static void add_tally(struct ds_counters *c, const struct ds_tally *t) {
#define DS_ADD_(f) \
  if (t->f)        \
    atomic_fetch_add_explicit(&c->f, t->f, memory_order_relaxed);
  DS_ADD_(received)
  DS_ADD_(answered)
  DS_ADD_(errors_sent)
  DS_ADD_(dropped_malformed)
  DS_ADD_(dropped_ignored)
  DS_ADD_(dropped_policy)
  DS_ADD_(send_failures)
#undef DS_ADD_
}

/* Reads and answers up to one batch from socket s. Returns the number of
 * datagrams read (0 when the socket is drained). */
static int serve_batch(struct ds_worker *wk, int s) {
  const struct np_discovery_server *srv = wk->srv;
  for (int i = 0; i < DS_BATCH; i++) {
    struct msghdr *mh = &wk->rx_msg[i].msg_hdr;
    mh->msg_name = &wk->rx_name[i];
    mh->msg_namelen = sizeof wk->rx_name[i];
    mh->msg_iov = &wk->rx_iov[i];
    mh->msg_iovlen = 1;
    mh->msg_control = srv->wildcard ? wk->rx_ctl[i].buf : NULL;
    mh->msg_controllen = srv->wildcard ? sizeof wk->rx_ctl[i].buf : 0;
    mh->msg_flags = 0;
    wk->rx_iov[i] = (struct iovec){.iov_base = wk->rx_buf[i], .iov_len = sizeof wk->rx_buf[i]};
  }
  int n = recvmmsg(wk->fds[s], wk->rx_msg, DS_BATCH, MSG_DONTWAIT, NULL);
  if (n <= 0) {
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
      NP_LOGD(&srv->log, "recvmmsg: %s", strerror(errno));
    return 0;
  }
  struct ds_tally t = {0};
  t.received = (uint64_t)n;
  wk->n_out = 0;
  for (int i = 0; i < n; i++) {
    struct msghdr *mh = &wk->rx_msg[i].msg_hdr;
    np_addr from, dst_ip;
    int ifindex = 0;
    const char *why = NULL;
    enum ds_verdict v;
    if (np__addr_from_sockaddr(mh->msg_name, mh->msg_namelen, &from) != 0 ||
        np_addr_port(&from) == 0) {
      /* Port 0 cannot be answered (and only a forged packet has it). */
      why = "unusable source address";
      v = DS_DROP_POLICY;
    } else if (wk->rx_msg[i].msg_hdr.msg_flags & MSG_TRUNC) {
      why = "datagram larger than any STUN message we accept";
      v = DS_DROP_MALFORMED;
    } else {
      memset(&dst_ip, 0, sizeof dst_ip);
      if (srv->wildcard && read_pktinfo(mh, srv->addrs[0].u.sa.sa_family, &dst_ip, &ifindex))
        np_addr_set_port(&dst_ip, np_addr_port(&srv->addrs[s]));
      struct ds_out *o = &wk->out[wk->n_out];
      v = handle(srv, s, &from, &dst_ip, wk->rx_buf[i], wk->rx_msg[i].msg_len, o, &why);
      if (v == DS_ANSWER || v == DS_ERROR) {
        o->ifindex = ifindex;
        o->is_error = v == DS_ERROR;
        wk->n_out++;
      }
    }
    /* Answers are counted when sent, in flush_out(). */
    switch (v) {
    case DS_ANSWER: break;
    case DS_ERROR: break;
    case DS_DROP_MALFORMED: t.dropped_malformed++; break;
    case DS_DROP_IGNORED: t.dropped_ignored++; break;
    case DS_DROP_POLICY: t.dropped_policy++; break;
    }
    if (why && np_log_enabled(&srv->log, NP_LOG_DEBUG)) {
      char a[NP_ADDRSTRLEN];
      np__addr_from_sockaddr(mh->msg_name, mh->msg_namelen, &from);
      NP_LOGD(&srv->log, "%s from %s (%u bytes): %s",
              v == DS_ERROR ? "error response" : "dropped datagram",
              np_addr_format(&from, a, sizeof a), wk->rx_msg[i].msg_len, why);
    }
  }
  flush_out(wk, &t);
  add_tally(&wk->count, &t);
  return n;
}

static void on_socket(np_loop *loop, int fd, unsigned events, void *user) {
  (void)loop;
  (void)events;
  struct ds_worker *wk = user;
  int s = 0;
  while (s < DS_NSOCK && wk->fds[s] != fd)
    s++;
  if (s == DS_NSOCK)
    return;
  for (int b = 0; b < DS_BATCHES_PER_WAKEUP; b++)
    if (serve_batch(wk, s) < DS_BATCH)
      break;
}

static void *worker_main(void *arg) {
  struct ds_worker *wk = arg;
  if (np__loop_run(wk->loop) != 0)
    NP_LOGE(&wk->srv->log, "worker %d: epoll_wait: %s", wk->id, strerror(errno));
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Life cycle                                                                */
/* ------------------------------------------------------------------------ */

static void worker_free(struct ds_worker *wk) {
  if (!wk)
    return;
  for (int s = 0; s < DS_NSOCK; s++)
    if (wk->fds[s] >= 0)
      close(wk->fds[s]);
  np__loop_free(wk->loop);
  free(wk);
}

NP_EXPORT void np_discovery_server_free(np_discovery_server *srv) {
  if (!srv)
    return;
  if (srv->workers)
    for (int i = 0; i < srv->n_workers; i++)
      worker_free(srv->workers[i]);
  free(srv->workers);
  free(srv);
}

/* When the primary port is 0, picks one port that is free on every server
 * IP. Binding port 0 with SO_REUSEPORT set is not enough: the kernel may
 * then hand out a port another SO_REUSEPORT socket of the same user already
 * has, and we would silently share its traffic. So probe with plain
 * sockets, then release them; the window before the real bind is tiny and a
 * loss shows up as a clear bind error. */
static int pick_port(np_discovery_server *srv, uint16_t *port) {
  char err[NP_UDP_ERRLEN];
  for (int attempt = 0; attempt < 16; attempt++) {
    int fd0 = np__udp_bind(&srv->addrs[0], NP_UDP_V6ONLY, err);
    if (fd0 < 0) {
      NP_LOGE(&srv->log, "%s", err);
      return fd0;
    }
    np_addr bound;
    int rc = np__udp_local(fd0, &bound);
    int fd1 = -1;
    if (rc == 0 && np__addr_is_set(&srv->addrs[DS_ALT_IP])) {
      np_addr a = srv->addrs[DS_ALT_IP];
      np_addr_set_port(&a, np_addr_port(&bound));
      fd1 = np__udp_bind(&a, NP_UDP_V6ONLY, err);
    }
    close(fd0);
    if (fd1 >= 0)
      close(fd1);
    if (rc != 0) {
      NP_LOGE(&srv->log, "getsockname: %s", strerror(errno));
      return NP_ERR_SYS;
    }
    if (fd1 >= 0 || !np__addr_is_set(&srv->addrs[DS_ALT_IP])) {
      *port = np_addr_port(&bound);
      return 0;
    }
  }
  NP_LOGE(&srv->log, "no ephemeral port free on both server IPs");
  return NP_ERR_SYS;
}

/* Refuses addresses someone else already holds. SO_REUSEPORT would let a
 * second server of the same user join the first one's port group and
 * silently take a share of its traffic; a plain bind first turns that into
 * the usual "Address already in use". */
static int check_free(np_discovery_server *srv) {
  char err[NP_UDP_ERRLEN];
  int fds[DS_NSOCK] = {-1, -1, -1, -1};
  int rc = 0;
  for (int s = 0; s < DS_NSOCK && rc == 0; s++) {
    if (!np__addr_is_set(&srv->addrs[s]))
      continue;
    fds[s] = np__udp_bind(&srv->addrs[s], NP_UDP_V6ONLY, err);
    if (fds[s] < 0) {
      NP_LOGE(&srv->log, "%s", err);
      rc = fds[s];
    }
  }
  for (int s = 0; s < DS_NSOCK; s++)
    if (fds[s] >= 0)
      close(fds[s]);
  return rc;
}

static int worker_new(np_discovery_server *srv, int id, struct ds_worker **out) {
  char err[NP_UDP_ERRLEN];
  struct ds_worker *wk = calloc(1, sizeof *wk);
  if (!wk)
    return NP_ERR_NOMEM;
  wk->srv = srv;
  wk->id = id;
  for (int s = 0; s < DS_NSOCK; s++)
    wk->fds[s] = -1;
  int rc = NP_ERR_SYS;
  if (np__loop_new(NULL, &wk->loop) != 0) {
    NP_LOGE(&srv->log, "epoll_create1/eventfd: %s", strerror(errno));
    goto fail;
  }
  for (int s = 0; s < DS_NSOCK; s++) {
    if (!np__addr_is_set(&srv->addrs[s]))
      continue;
    /* Blocking sockets (reads use MSG_DONTWAIT): a full send buffer then
     * briefly holds the worker back instead of dropping answers. */
    int fd = np__udp_bind(&srv->addrs[s], NP_UDP_REUSEPORT | NP_UDP_V6ONLY, err);
    if (fd < 0) {
      NP_LOGE(&srv->log, "%s", err);
      rc = fd;
      goto fail;
    }
    wk->fds[s] = fd;
    if (srv->wildcard) {
      int one = 1;
      int r = srv->addrs[s].u.sa.sa_family == AF_INET
                  ? setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one)
                  : setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
      if (r < 0) {
        NP_LOGE(&srv->log, "setsockopt(PKTINFO): %s", strerror(errno));
        goto fail;
      }
    }
    if (np__loop_add_fd(wk->loop, fd, NP_LOOP_READ, on_socket, wk) != 0) {
      NP_LOGE(&srv->log, "epoll_ctl: %s", strerror(errno));
      goto fail;
    }
  }
  *out = wk;
  return 0;
fail:
  worker_free(wk);
  return rc;
}

static long online_cpus(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? n : 1;
}

NP_EXPORT int np_discovery_server_new(const np_discovery_server_config *cfg,
                                      np_discovery_server **out) {
  if (!out)
    return NP_ERR_INVAL;
  *out = NULL;
  if (!cfg)
    return NP_ERR_INVAL;
  np_discovery_server *srv = calloc(1, sizeof *srv);
  if (!srv)
    return NP_ERR_NOMEM;
  srv->log = (np_logger){cfg->log, cfg->log_user, cfg->log_level};
  char a[NP_ADDRSTRLEN], b[NP_ADDRSTRLEN];
  int rc = NP_ERR_INVAL;

  if (!np__addr_is_set(&cfg->listen)) {
    NP_LOGE(&srv->log, "no listen address");
    goto fail;
  }
  srv->addrs[0] = cfg->listen;
  srv->wildcard = np__addr_is_any(&cfg->listen);
  bool have_alt_ip = np__addr_is_set(&cfg->alt_ip);
  if (have_alt_ip) {
    if (cfg->alt_ip.u.sa.sa_family != cfg->listen.u.sa.sa_family) {
      NP_LOGE(&srv->log, "alternate IP %s is not of the listen address's family",
              np_addr_format(&cfg->alt_ip, a, sizeof a));
      goto fail;
    }
    /* OTHER-ADDRESS must name a real address, and PKTINFO cannot tell two
     * wildcard sockets on one port apart. */
    if (srv->wildcard || np__addr_is_any(&cfg->alt_ip)) {
      NP_LOGE(&srv->log, "an alternate IP needs specific addresses, not a wildcard");
      goto fail;
    }
    if (np_addr_same_ip(&cfg->alt_ip, &cfg->listen)) {
      NP_LOGE(&srv->log, "alternate IP %s equals the listen IP",
              np_addr_format(&cfg->alt_ip, a, sizeof a));
      goto fail;
    }
  }
  if (cfg->alt_port != 0 && cfg->alt_port == np_addr_port(&cfg->listen)) {
    NP_LOGE(&srv->log, "alternate port %u equals the listen port", (unsigned)cfg->alt_port);
    goto fail;
  }
  if (cfg->threads < 0 || cfg->threads > DS_MAX_THREADS) {
    NP_LOGE(&srv->log, "threads must be 0..%d, not %d", DS_MAX_THREADS, cfg->threads);
    goto fail;
  }
  if (cfg->software) {
    size_t n = strlen(cfg->software);
    if (n > NP_STUN_MAX_REASON) {
      NP_LOGE(&srv->log, "SOFTWARE text longer than %d bytes", NP_STUN_MAX_REASON);
      goto fail;
    }
    memcpy(srv->software, cfg->software, n + 1);
    srv->software_len = n;
  }
  if (have_alt_ip) {
    srv->addrs[DS_ALT_IP] = cfg->alt_ip;
    np_addr_set_port(&srv->addrs[DS_ALT_IP], np_addr_port(&cfg->listen));
  }
  srv->rfc5780 = have_alt_ip && cfg->alt_port != 0;

  if (np_addr_port(&cfg->listen) == 0) {
    uint16_t port = 0;
    rc = pick_port(srv, &port);
    if (rc != 0)
      goto fail;
    np_addr_set_port(&srv->addrs[0], port);
    if (have_alt_ip)
      np_addr_set_port(&srv->addrs[DS_ALT_IP], port);
    if (port == cfg->alt_port) {
      NP_LOGE(&srv->log, "ephemeral port %u equals the alternate port", (unsigned)port);
      rc = NP_ERR_SYS;
      goto fail;
    }
  }
  if (cfg->alt_port != 0) {
    srv->addrs[DS_ALT_PORT] = srv->addrs[0];
    np_addr_set_port(&srv->addrs[DS_ALT_PORT], cfg->alt_port);
    if (have_alt_ip) {
      srv->addrs[DS_ALT_IP | DS_ALT_PORT] = srv->addrs[DS_ALT_IP];
      np_addr_set_port(&srv->addrs[DS_ALT_IP | DS_ALT_PORT], cfg->alt_port);
    }
  }

  rc = check_free(srv);
  if (rc != 0)
    goto fail;

  srv->n_workers = cfg->threads ? cfg->threads : (int)(online_cpus() < DS_MAX_THREADS
                                                           ? online_cpus()
                                                           : DS_MAX_THREADS);
  srv->workers = calloc((size_t)srv->n_workers, sizeof *srv->workers);
  if (!srv->workers) {
    rc = NP_ERR_NOMEM;
    goto fail;
  }
  for (int i = 0; i < srv->n_workers; i++) {
    rc = worker_new(srv, i, &srv->workers[i]);
    if (rc != 0)
      goto fail;
  }
  if (np_log_enabled(&srv->log, NP_LOG_INFO)) {
    char list[4 * NP_ADDRSTRLEN + 8] = "";
    size_t used = 0;
    for (int s = 0; s < DS_NSOCK; s++) {
      if (!np__addr_is_set(&srv->addrs[s]))
        continue;
      int w = snprintf(list + used, sizeof list - used, "%s%s", used ? ", " : "",
                       np_addr_format(&srv->addrs[s], b, sizeof b));
      if (w > 0 && (size_t)w < sizeof list - used)
        used += (size_t)w;
    }
    NP_LOGI(&srv->log, "listening on %s (%d thread%s, RFC 5780 %s)", list, srv->n_workers,
            srv->n_workers == 1 ? "" : "s",
            srv->rfc5780 ? "on" : "off: needs both an alternate IP and port");
  }
  *out = srv;
  return 0;
fail:
  np_discovery_server_free(srv);
  return rc;
}

NP_EXPORT int np_discovery_server_run(np_discovery_server *srv) {
  if (!srv)
    return NP_ERR_INVAL;
  bool expected = false;
  if (!atomic_compare_exchange_strong(&srv->running, &expected, true))
    return NP_ERR_INVAL;
  /* Workers block every signal, so process-directed signals go to the
   * application's own threads and never interrupt a batch. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = 0;
  int started = 0;
  for (; started < srv->n_workers; started++) {
    int e = pthread_create(&srv->workers[started]->thread, NULL, worker_main,
                           srv->workers[started]);
    if (e != 0) {
      NP_LOGE(&srv->log, "pthread_create: %s", strerror(e));
      rc = NP_ERR_SYS;
      /* Only the running ones: a stop requested of a loop that never
       * runs would stay armed and end the next run at once. */
      for (int i = 0; i < started; i++)
        np__loop_stop(srv->workers[i]->loop);
      break;
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  for (int i = 0; i < started; i++)
    pthread_join(srv->workers[i]->thread, NULL); /* each run consumed its stop */
  atomic_store(&srv->running, false);
  return rc;
}

NP_EXPORT void np_discovery_server_stop(np_discovery_server *srv) {
  if (!srv)
    return;
  /* Async-signal-safe: each loop's stop is an atomic store and a write(2),
   * errno preserved. */
  for (int i = 0; i < srv->n_workers; i++)
    np__loop_stop(srv->workers[i]->loop);
}

NP_EXPORT void np_discovery_server_stats(const np_discovery_server *srv,
                                         np_discovery_stats *out) {
  if (!out)
    return;
  memset(out, 0, sizeof *out);
  if (!srv)
    return;
  for (int i = 0; i < srv->n_workers; i++) {
    const struct ds_counters *c = &srv->workers[i]->count;
#define DS_SUM_(f) out->f += atomic_load_explicit(&c->f, memory_order_relaxed);
    DS_SUM_(received)
    DS_SUM_(answered)
    DS_SUM_(errors_sent)
    DS_SUM_(dropped_malformed)
    DS_SUM_(dropped_ignored)
    DS_SUM_(dropped_policy)
    DS_SUM_(send_failures)
#undef DS_SUM_
  }
}

NP_EXPORT const np_addr *np_discovery_server_local(const np_discovery_server *srv) {
  return srv ? &srv->addrs[0] : NULL;
}
