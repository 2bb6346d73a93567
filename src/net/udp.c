#include "net/udp.h"

#include "net/addr.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int np_udp_bind(const np_addr *addr, unsigned flags, char err[NP_UDP_ERRLEN]) {
  char text[NP_ADDRSTRLEN];
  if (!np_addr_is_set(addr)) {
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

int np_udp_local(int fd, np_addr *out) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
    return NP_ERR_SYS;
  return np_addr_from_sockaddr((struct sockaddr *)&ss, len, out);
}
