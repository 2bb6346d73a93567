/* A session's UDP sockets: send, batched receive, and the first-byte demultiplexer. */
#include "path/path.h"

#include "net/addr.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RECV_BATCH 64 /* datagrams read per socket per readiness */
#define ERRQUEUE_BATCH 64

struct np_path {
  np_path_config cfg;
  int *socks; /* fds; -1 for a closed slot */
  int n;
};

enum np_path_class np__path_classify(const uint8_t *buf, size_t len) {
  if (len == 0)
    return NP_PATH_OTHER;
  uint8_t b = buf[0];
  if (b <= 3)
    return NP_PATH_STUN;
  if ((b >= 64 && b <= 127) || b >= 192)
    return NP_PATH_QUIC;
  return NP_PATH_OTHER;
}

int np__path_new(const np_path_config *cfg, np_path **out) {
  *out = NULL;
  np_path *p = calloc(1, sizeof *p);
  if (!p)
    return NP_ERR_NOMEM;
  p->cfg = *cfg;
  *out = p;
  return 0;
}

void np__path_free(np_path *p) {
  if (!p)
    return;
  for (int i = 0; i < p->n; i++)
    if (p->socks[i] >= 0) {
      np__loop_del_fd(p->cfg.loop, p->socks[i]);
      close(p->socks[i]);
    }
  free(p->socks);
  free(p);
}

static void on_ready(np_loop *loop, int fd, unsigned events, void *user);

static int open_udp(np_path *p) {
  np_addr any = {0};
  any.u.sa.sa_family = (sa_family_t)p->cfg.family;
  /* Socket 0, the one that is gathered and offered, may be asked for
   * (--bind); the birthday sockets take ephemeral ports. */
  if (p->n == 0 && np__addr_is_set(&p->cfg.bind))
    any = p->cfg.bind;
  char err[NP_UDP_ERRLEN];
  int fd = np__udp_bind(&any, NP_UDP_NONBLOCK, err);
  if (fd < 0) {
    NP_LOGW(&p->cfg.log, "agent: %s", err);
    return fd;
  }
  np__udp_recverr(fd, p->cfg.family);
  int rc = np__loop_add_fd(p->cfg.loop, fd, NP_LOOP_READ, on_ready, p);
  if (rc != 0) {
    close(fd);
    return rc;
  }
  return fd;
}

int np__path_ensure(np_path *p, int n) {
  if (n <= p->n)
    return 0;
  int *grown = realloc(p->socks, (size_t)n * sizeof *grown);
  if (!grown)
    return NP_ERR_NOMEM;
  p->socks = grown;
  while (p->n < n) {
    int fd = open_udp(p);
    if (fd < 0)
      return fd;
    p->socks[p->n++] = fd;
  }
  return 0;
}

int np__path_count(const np_path *p) {
  return p->n;
}

int np__path_fd(const np_path *p, int sock) {
  return sock >= 0 && sock < p->n ? p->socks[sock] : -1;
}

void np__path_keep_only(np_path *p, int keep) {
  for (int i = 1; i < p->n; i++) {
    if (i == keep || p->socks[i] < 0)
      continue;
    np__loop_del_fd(p->cfg.loop, p->socks[i]);
    close(p->socks[i]);
    p->socks[i] = -1;
  }
}

void np__path_close_extra(np_path *p) {
  np__path_keep_only(p, 0);
  p->n = p->n > 0 ? 1 : 0;
}

void np__path_drain_errors(np_path *p, int sock) {
  int fd = np__path_fd(p, sock);
  if (fd < 0)
    return;
  np_udp_error e;
  for (int guard = 0; guard < ERRQUEUE_BATCH && np__udp_read_error(fd, &e); guard++)
    if (p->cfg.on_icmp)
      p->cfg.on_icmp(p->cfg.user, sock, &e);
}

int np__path_send(np_path *p, int sock, const np_addr *to, int ttl, const void *buf,
                 size_t len) {
  int fd = np__path_fd(p, sock);
  if (fd < 0)
    return NP_ERR_INVAL;
  int level = p->cfg.family == AF_INET6 ? IPPROTO_IPV6 : IPPROTO_IP;
  int opt = p->cfg.family == AF_INET6 ? IPV6_UNICAST_HOPS : IP_TTL;
  int old = 64;
  socklen_t ol = sizeof old;
  if (ttl > 0) {
    (void)getsockopt(fd, level, opt, &old, &ol);
    (void)setsockopt(fd, level, opt, &ttl, sizeof ttl);
  }
  ssize_t n = sendto(fd, buf, len, 0, &to->u.sa, np_addr_len(to));
  int e = errno;
  if (n < 0 && (e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == EHOSTDOWN)) {
    /* An ICMP error about an earlier datagram (a probe refused by a
     * peer's gateway, a hop probe's "time exceeded") is reported by the
     * next send on the socket, which the kernel then drops. Reporting
     * clears it; send again. */
    np__path_drain_errors(p, sock);
    n = sendto(fd, buf, len, 0, &to->u.sa, np_addr_len(to));
    e = errno;
  }
  if (ttl > 0)
    (void)setsockopt(fd, level, opt, &old, sizeof old);
  if (n < 0)
    return e == EAGAIN || e == EWOULDBLOCK ? NP_ERR_AGAIN : NP_ERR_SYS;
  return 0;
}

static void read_batch(np_path *p, int sock, int64_t now) {
  for (int i = 0; i < RECV_BATCH; i++) {
    int fd = np__path_fd(p, sock);
    if (fd < 0)
      return; /* closed while delivering (connected on another socket) */
    uint8_t buf[2048];
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&ss, &sl);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return;
      /* An ICMP error (refused, unreachable) surfaces here once: drain it
       * and go on, the socket stays usable. */
      np__path_drain_errors(p, sock);
      continue;
    }
    np_addr from;
    if (np__addr_from_sockaddr((struct sockaddr *)&ss, sl, &from) != 0)
      continue;
    enum np_path_class cls = np__path_classify(buf, (size_t)n);
    if ((cls == NP_PATH_STUN || cls == NP_PATH_QUIC) && p->cfg.on_datagram)
      p->cfg.on_datagram(p->cfg.user, cls, sock, &from, buf, (size_t)n, now);
  }
}

static void on_ready(np_loop *loop, int fd, unsigned events, void *user) {
  np_path *p = user;
  int sock = 0;
  /* A scan: one socket most of the time, NP_PUNCH_MAX_SOCKETS ints at
   * worst while a birthday attempt runs. */
  while (sock < p->n && p->socks[sock] != fd)
    sock++;
  if (sock == p->n)
    return;
  if (events & NP_LOOP_ERROR)
    np__path_drain_errors(p, sock);
  if (events & NP_LOOP_READ)
    read_batch(p, sock, np__loop_now(loop));
}
