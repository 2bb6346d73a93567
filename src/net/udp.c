#include "net/udp.h"

#include "net/addr.h"

#include <errno.h>
#include <linux/errqueue.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int np__udp_bind(const np_addr *addr, unsigned flags, char err[NP_UDP_ERRLEN]) {
  char text[NP_ADDRSTRLEN];
  if (!np__addr_is_set(addr)) {
    snprintf(err, NP_UDP_ERRLEN, "no address to bind");
    return NP_ERR_INVAL;
  }
  int type = SOCK_DGRAM | SOCK_CLOEXEC | ((flags & NP_UDP_NONBLOCK) ? SOCK_NONBLOCK : 0);
  int fd = socket(addr->u.sa.sa_family, type, 0);
  if (fd < 0) {
    snprintf(err, NP_UDP_ERRLEN, "socket: %s", strerror(errno));
    return NP_ERR_SYS;
  }
  int one = 1;
  if ((flags & NP_UDP_REUSEPORT) &&
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
    snprintf(err, NP_UDP_ERRLEN, "setsockopt(SO_REUSEPORT): %s", strerror(errno));
    close(fd);
    return NP_ERR_SYS;
  }
  if (addr->u.sa.sa_family == AF_INET6) {
    int v6only = (flags & NP_UDP_V6ONLY) ? 1 : 0;
    (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
  }
  if (bind(fd, &addr->u.sa, np_addr_len(addr)) < 0) {
    snprintf(err, NP_UDP_ERRLEN, "bind %s: %s", np_addr_format(addr, text, sizeof text),
             strerror(errno));
    close(fd);
    return NP_ERR_SYS;
  }
  return fd;
}

int np__udp_local(int fd, np_addr *out) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
    return NP_ERR_SYS;
  return np__addr_from_sockaddr((struct sockaddr *)&ss, len, out);
}

int np__udp_route_source(const np_addr *to, np_addr *out) {
  int fd = socket(to->u.sa.sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return NP_ERR_SYS;
  int rc = NP_ERR_UNREACHABLE;
  if (connect(fd, &to->u.sa, np_addr_len(to)) == 0 && np__udp_local(fd, out) == 0)
    rc = 0;
  close(fd);
  return rc;
}

void np__udp_recverr(int fd, int family) {
  int one = 1;
  if (family == AF_INET6)
    (void)setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &one, sizeof one);
  else
    (void)setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof one);
}

int np__udp_read_error(int fd, np_udp_error *out) {
  struct sockaddr_storage dst;
  char control[512];
  memset(out, 0, sizeof *out);
  struct iovec iov = {out->data, sizeof out->data};
  struct msghdr mh = {.msg_name = &dst,
                      .msg_namelen = sizeof dst,
                      .msg_iov = &iov,
                      .msg_iovlen = 1,
                      .msg_control = control,
                      .msg_controllen = sizeof control};
  ssize_t n = recvmsg(fd, &mh, MSG_ERRQUEUE | MSG_DONTWAIT);
  if (n < 0)
    return 0;
  out->len = (size_t)n;
  (void)np__addr_from_sockaddr((struct sockaddr *)&dst, mh.msg_namelen, &out->dest);
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    bool v4 = c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR;
    bool v6 = c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_RECVERR;
    if (!v4 && !v6)
      continue;
    struct sock_extended_err ee;
    memcpy(&ee, CMSG_DATA(c), sizeof ee);
    out->icmp = (v4 && ee.ee_origin == SO_EE_ORIGIN_ICMP) ||
                (v6 && ee.ee_origin == SO_EE_ORIGIN_ICMP6);
    out->time_exceeded = out->icmp && ((v4 && ee.ee_type == 11) || (v6 && ee.ee_type == 3));
    /* The offender follows the extended error in the control message. */
    struct sockaddr_storage off;
    size_t off_len = v4 ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    memset(&off, 0, sizeof off);
    memcpy(&off, (const uint8_t *)CMSG_DATA(c) + sizeof ee, off_len);
    (void)np__addr_from_sockaddr((struct sockaddr *)&off, (socklen_t)off_len, &out->offender);
  }
  return 1;
}
