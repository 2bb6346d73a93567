/* A session's UDP sockets: send, batched receive, and the first-byte demultiplexer. */
#include "path/path.h"

#include "net/addr.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define RECV_BATCH 64 /* reads per socket per readiness (each a datagram or a GRO train) */
#define RECV_BUF 65536 /* one GRO train: at most a full UDP payload */
#define ERRQUEUE_BATCH 64

struct np_path {
  np_path_config cfg;
  int *socks; /* fds; -1 for a closed slot */
  int n;
  /* UDP GSO: unknown until the first socket says whether the kernel has
   * it (a kernel without it would ignore the cmsg and send the train as
   * one oversized datagram), then off for good once a send is refused. */
  bool gso_known, gso;
  uint8_t *rbuf; /* RECV_BUF bytes */
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
  p->rbuf = malloc(RECV_BUF);
  if (!p->rbuf) {
    free(p);
    return NP_ERR_NOMEM;
  }
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
  free(p->rbuf);
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
  int on = 1;
#ifdef UDP_GRO
  /* Trains of equal datagrams arrive whole (read_batch splits them): one
   * read instead of one per datagram. */
  (void)setsockopt(fd, IPPROTO_UDP, UDP_GRO, &on, sizeof on);
#endif
#ifdef UDP_SEGMENT
  if (!p->gso_known) {
    int seg = 0;
    socklen_t sl = sizeof seg;
    p->gso = getsockopt(fd, IPPROTO_UDP, UDP_SEGMENT, &seg, &sl) == 0;
    p->gso_known = true;
  }
#endif
  (void)on;
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

/* The errors by which the kernel reports an ICMP error about an earlier
 * datagram on the next send (and drops that send). */
static bool icmp_report(int e) {
  return e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == EHOSTDOWN;
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
  if (n < 0 && icmp_report(e)) {
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

/* One GSO send of the train: the datagram count, or -errno. */
static int send_gso(int fd, const np_addr *to, const uint8_t *buf, size_t len, size_t seg,
                    int count) {
#ifdef UDP_SEGMENT
  struct iovec iov = {(void *)buf, len};
  union {
    char b[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
  } c;
  memset(&c, 0, sizeof c);
  struct msghdr m = {
      .msg_name = (void *)&to->u.sa,
      .msg_namelen = np_addr_len(to),
      .msg_iov = &iov,
      .msg_iovlen = 1,
      .msg_control = c.b,
      .msg_controllen = sizeof c.b,
  };
  struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
  cm->cmsg_level = IPPROTO_UDP;
  cm->cmsg_type = UDP_SEGMENT;
  cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
  uint16_t s16 = (uint16_t)seg;
  memcpy(CMSG_DATA(cm), &s16, sizeof s16);
  return sendmsg(fd, &m, 0) < 0 ? -errno : count;
#else
  (void)fd, (void)to, (void)buf, (void)len, (void)seg, (void)count;
  return -ENOPROTOOPT;
#endif
}

/* The train as separate datagrams in one sendmmsg: how many went, or
 * -errno when none did. */
static int send_mmsg(int fd, const np_addr *to, const uint8_t *buf, size_t len, size_t seg,
                     int count) {
  struct mmsghdr mm[NP_PATH_TRAIN_MAX];
  struct iovec iov[NP_PATH_TRAIN_MAX];
  memset(mm, 0, sizeof mm[0] * (size_t)count);
  for (int i = 0; i < count; i++) {
    size_t off = (size_t)i * seg;
    iov[i] = (struct iovec){(void *)(buf + off), len - off < seg ? len - off : seg};
    mm[i].msg_hdr.msg_name = (void *)&to->u.sa;
    mm[i].msg_hdr.msg_namelen = np_addr_len(to);
    mm[i].msg_hdr.msg_iov = &iov[i];
    mm[i].msg_hdr.msg_iovlen = 1;
  }
  int n = sendmmsg(fd, mm, (unsigned)count, 0);
  return n < 0 ? -errno : n;
}

static int send_train_once(np_path *p, int fd, const np_addr *to, const uint8_t *buf,
                           size_t len, size_t seg, int count) {
  if (p->gso) {
    int n = send_gso(fd, to, buf, len, seg, count);
    /* EINVAL, EMSGSIZE: this train (a segment larger than the route's
     * MTU, which GSO will not fragment); the others: this socket's device
     * or kernel cannot segment, and the next ones would fail alike. */
    bool never = n == -EIO || n == -ENOPROTOOPT || n == -EOPNOTSUPP;
    if (!never && n != -EINVAL && n != -EMSGSIZE)
      return n;
    int m = send_mmsg(fd, to, buf, len, seg, count);
    if (never && m > 0) {
      p->gso = false;
      NP_LOGI(&p->cfg.log, "path: UDP GSO refused (%s); sending datagram by datagram",
              strerror(-n));
    }
    return m;
  }
  return send_mmsg(fd, to, buf, len, seg, count);
}

int np__path_send_train(np_path *p, int sock, const np_addr *to, const uint8_t *buf, size_t len,
                        size_t seg) {
  int fd = np__path_fd(p, sock);
  if (fd < 0 || !buf || seg == 0 || len == 0 || len > NP_PATH_TRAIN_BYTES)
    return NP_ERR_INVAL;
  size_t count = (len + seg - 1) / seg;
  if (count > NP_PATH_TRAIN_MAX)
    return NP_ERR_INVAL;
  if (count == 1) {
    int rc = np__path_send(p, sock, to, 0, buf, len);
    return rc == 0 ? 1 : rc;
  }
  int n = send_train_once(p, fd, to, buf, len, seg, (int)count);
  if (n < 0 && icmp_report(-n)) {
    np__path_drain_errors(p, sock);
    n = send_train_once(p, fd, to, buf, len, seg, (int)count);
  }
  if (n > 0)
    return n;
  return n == -EAGAIN || n == -EWOULDBLOCK ? NP_ERR_AGAIN : NP_ERR_SYS;
}

/* The segment size of a GRO train that recvmsg returned, or 0 for a
 * single datagram. */
static size_t gro_segment(struct msghdr *m) {
#ifdef UDP_GRO
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm; cm = CMSG_NXTHDR(m, cm))
    if (cm->cmsg_level == IPPROTO_UDP && cm->cmsg_type == UDP_GRO &&
        cm->cmsg_len >= CMSG_LEN(sizeof(int))) {
      int g;
      memcpy(&g, CMSG_DATA(cm), sizeof g);
      return g > 0 ? (size_t)g : 0;
    }
#else
  (void)m;
#endif
  return 0;
}

static void read_batch(np_path *p, int sock, int64_t now) {
  for (int i = 0; i < RECV_BATCH; i++) {
    int fd = np__path_fd(p, sock);
    if (fd < 0)
      return; /* closed while delivering (connected on another socket) */
    struct sockaddr_storage ss;
    struct iovec iov = {p->rbuf, RECV_BUF};
    union {
      char b[CMSG_SPACE(sizeof(int))];
      struct cmsghdr align;
    } c;
    struct msghdr m = {
        .msg_name = &ss,
        .msg_namelen = sizeof ss,
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = c.b,
        .msg_controllen = sizeof c.b,
    };
    ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return;
      /* An ICMP error (refused, unreachable) surfaces here once: drain it
       * and go on, the socket stays usable. */
      np__path_drain_errors(p, sock);
      continue;
    }
    np_addr from;
    if ((m.msg_flags & MSG_TRUNC) ||
        np__addr_from_sockaddr((struct sockaddr *)&ss, m.msg_namelen, &from) != 0)
      continue;
    size_t seg = gro_segment(&m);
    if (seg == 0)
      seg = (size_t)n;
    for (size_t off = 0; off < (size_t)n; off += seg) {
      if (np__path_fd(p, sock) != fd)
        return; /* the callback closed this socket */
      size_t len = (size_t)n - off < seg ? (size_t)n - off : seg;
      const uint8_t *d = p->rbuf + off;
      enum np_path_class cls = np__path_classify(d, len);
      if ((cls == NP_PATH_STUN || cls == NP_PATH_QUIC) && p->cfg.on_datagram)
        p->cfg.on_datagram(p->cfg.user, cls, sock, &from, d, len, now);
    }
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
