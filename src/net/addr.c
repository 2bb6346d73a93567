#include "net/addr.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Strict decimal port: digits only, 1..65535. strtol alone would accept
 * leading spaces, signs and trailing junk. */
static int parse_port(const char *s, uint16_t *out) {
  if (*s == '\0' || strlen(s) > 5)
    return NP_ERR_INVAL;
  unsigned long v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9')
      return NP_ERR_INVAL;
    v = v * 10 + (unsigned long)(*p - '0');
  }
  if (v == 0 || v > 65535)
    return NP_ERR_INVAL;
  *out = (uint16_t)v;
  return 0;
}

static int parse_ip(const char *ip, np_addr *out) {
  memset(out, 0, sizeof *out);
  if (inet_pton(AF_INET, ip, &out->u.in4.sin_addr) == 1) {
    out->u.in4.sin_family = AF_INET;
    return 0;
  }
  if (inet_pton(AF_INET6, ip, &out->u.in6.sin6_addr) == 1) {
    out->u.in6.sin6_family = AF_INET6;
    return 0;
  }
  memset(out, 0, sizeof *out);
  return NP_ERR_INVAL;
}

NP_EXPORT int np_addr_parse(const char *text, uint16_t default_port, np_addr *out) {
  if (!text || !out)
    return NP_ERR_INVAL;
  char buf[NP_ADDRSTRLEN];
  size_t n = strlen(text);
  if (n == 0 || n >= sizeof buf)
    return NP_ERR_INVAL;
  memcpy(buf, text, n + 1);

  const char *ip = buf;
  const char *port = NULL;
  if (buf[0] == '[') {
    char *close = strchr(buf, ']');
    if (!close)
      return NP_ERR_INVAL;
    *close = '\0';
    ip = buf + 1;
    if (close[1] == ':')
      port = close + 2;
    else if (close[1] != '\0')
      return NP_ERR_INVAL;
  } else {
    char *colon = strchr(buf, ':');
    if (colon && strchr(colon + 1, ':') == NULL) {
      /* exactly one colon: IPv4 (or name) with port */
      *colon = '\0';
      port = colon + 1;
    }
    /* otherwise: bare IPv4, or bare IPv6 without brackets */
  }

  np_addr a;
  if (parse_ip(ip, &a) != 0)
    return NP_ERR_INVAL;
  if (buf[0] == '[' && a.u.sa.sa_family != AF_INET6)
    return NP_ERR_INVAL;
  uint16_t p = default_port;
  if (port) {
    if (parse_port(port, &p) != 0)
      return NP_ERR_INVAL;
  } else if (default_port == 0) {
    return NP_ERR_INVAL;
  }
  np_addr_set_port(&a, p);
  *out = a;
  return 0;
}

NP_EXPORT char *np_addr_format(const np_addr *addr, char *buf, size_t size) {
  if (!buf || size == 0)
    return buf;
  char ip[INET6_ADDRSTRLEN];
  if (!addr || !np__addr_is_set(addr)) {
    snprintf(buf, size, "-");
  } else if (addr->u.sa.sa_family == AF_INET) {
    inet_ntop(AF_INET, &addr->u.in4.sin_addr, ip, sizeof ip);
    snprintf(buf, size, "%s:%u", ip, (unsigned)ntohs(addr->u.in4.sin_port));
  } else {
    inet_ntop(AF_INET6, &addr->u.in6.sin6_addr, ip, sizeof ip);
    snprintf(buf, size, "[%s]:%u", ip, (unsigned)ntohs(addr->u.in6.sin6_port));
  }
  return buf;
}

NP_EXPORT bool np_addr_same_ip(const np_addr *a, const np_addr *b) {
  if (!a || !b || a->u.sa.sa_family != b->u.sa.sa_family)
    return false;
  if (a->u.sa.sa_family == AF_INET)
    return a->u.in4.sin_addr.s_addr == b->u.in4.sin_addr.s_addr;
  if (a->u.sa.sa_family == AF_INET6)
    return memcmp(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr, 16) == 0;
  return false;
}

NP_EXPORT bool np_addr_equal(const np_addr *a, const np_addr *b) {
  return np_addr_same_ip(a, b) && np_addr_port(a) == np_addr_port(b);
}

NP_EXPORT uint16_t np_addr_port(const np_addr *addr) {
  if (!addr)
    return 0;
  if (addr->u.sa.sa_family == AF_INET)
    return ntohs(addr->u.in4.sin_port);
  if (addr->u.sa.sa_family == AF_INET6)
    return ntohs(addr->u.in6.sin6_port);
  return 0;
}

NP_EXPORT void np_addr_set_port(np_addr *addr, uint16_t port) {
  if (!addr)
    return;
  if (addr->u.sa.sa_family == AF_INET)
    addr->u.in4.sin_port = htons(port);
  else if (addr->u.sa.sa_family == AF_INET6)
    addr->u.in6.sin6_port = htons(port);
}

NP_EXPORT socklen_t np_addr_len(const np_addr *addr) {
  if (!addr)
    return 0;
  if (addr->u.sa.sa_family == AF_INET)
    return sizeof(struct sockaddr_in);
  if (addr->u.sa.sa_family == AF_INET6)
    return sizeof(struct sockaddr_in6);
  return 0;
}

bool np__addr_is_set(const np_addr *addr) {
  return addr && (addr->u.sa.sa_family == AF_INET || addr->u.sa.sa_family == AF_INET6);
}

bool np__addr_is_any(const np_addr *addr) {
  if (!np__addr_is_set(addr))
    return false;
  if (addr->u.sa.sa_family == AF_INET)
    return addr->u.in4.sin_addr.s_addr == htonl(INADDR_ANY);
  return IN6_IS_ADDR_UNSPECIFIED(&addr->u.in6.sin6_addr);
}

bool np__addr_is_private(const np_addr *addr) {
  if (!addr)
    return false;
  if (addr->u.sa.sa_family == AF_INET) {
    uint32_t ip = ntohl(addr->u.in4.sin_addr.s_addr);
    return (ip >> 24) == 10 || (ip >> 20) == (172u << 4 | 1) || (ip >> 16) == (192u << 8 | 168) ||
           (ip >> 22) == (100u << 2 | 1);
  }
  if (addr->u.sa.sa_family == AF_INET6)
    return (addr->u.in6.sin6_addr.s6_addr[0] & 0xfe) == 0xfc;
  return false;
}

int np__addr_from_sockaddr(const struct sockaddr *sa, socklen_t len, np_addr *out) {
  memset(out, 0, sizeof *out);
  if (!sa)
    return NP_ERR_INVAL;
  if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    memcpy(&out->u.in4, sa, sizeof(struct sockaddr_in));
    return 0;
  }
  if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
    if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
      out->u.in4.sin_family = AF_INET;
      out->u.in4.sin_port = s6->sin6_port;
      memcpy(&out->u.in4.sin_addr, &s6->sin6_addr.s6_addr[12], 4);
    } else {
      memcpy(&out->u.in6, s6, sizeof *s6);
    }
    return 0;
  }
  return NP_ERR_INVAL;
}
