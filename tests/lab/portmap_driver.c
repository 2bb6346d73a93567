/*
 * Port-mapping test driver for the NAT lab (test_portmap.sh).
 *
 *   portmap_driver --port P [--no-pcp] [--no-natpmp] [--no-upnp]
 *                  [--timeout MS] [--gateway IP] [--wait MS] [--after MS] [-v]
 *
 * Binds UDP port P, maps it with np__portmap_open() and prints one line per
 * step, "key=value" fields, flushed at once so the script can follow along:
 *
 *   mapped proto=pcp external=11.0.113.11:40000 ms=12   (or "failed err=...")
 *   received from=203.0.113.1:5000 bytes=9 count=3       (or "received none")
 *   closed rc=0 ms=3
 *   after_close received=0
 *
 * It waits up to --wait MS for a datagram while the mapping exists (and
 * 300 ms more for the sender's other copies), then
 * deletes the mapping and counts what arrives in the next --after MS (the
 * script sends from the server in between). Exit 0 when the mapping was made
 * (the checks are the script's), 1 otherwise.
 */
#include "net/addr.h"
#include "portmap/portmap.h"
#include "util/clock.h"

#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void log_stderr(void *user, enum np_log_level level, const char *msg) {
  (void)user;
  static const char *const names[] = {"error", "warn", "info", "debug"};
  fprintf(stderr, "%s: %s\n", names[level <= NP_LOG_DEBUG ? level : NP_LOG_DEBUG], msg);
}

/* Waits up to ms for datagrams on fd; returns how many arrived and the
 * first sender. With settle_ms >= 0 it stops settle_ms after the first one
 * (the sender's later copies are counted then, not after the close). */
static int wait_datagrams(int fd, int ms, int settle_ms, np_addr *from, ssize_t *bytes) {
  int64_t end = np__now_ms() + ms;
  int count = 0;
  /* At most 1000 datagrams: bounded even if someone floods the port. */
  while (count < 1000) {
    int64_t left = end - np__now_ms();
    if (left <= 0)
      break;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)left) <= 0)
      continue;
    uint8_t buf[2048];
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&ss, &sl);
    if (n < 0)
      continue;
    if (count == 0) {
      np__addr_from_sockaddr((struct sockaddr *)&ss, sl, from);
      *bytes = n;
    }
    count++;
    if (count == 1 && settle_ms >= 0 && end > np__now_ms() + settle_ms)
      end = np__now_ms() + settle_ms;
  }
  return count;
}

int main(int argc, char **argv) {
  np_portmap_config cfg;
  memset(&cfg, 0, sizeof cfg);
  int port = 0, wait_ms = 5000, after_ms = 2000;
  static const struct option opts[] = {
      {"port", required_argument, NULL, 'p'},    {"no-pcp", no_argument, NULL, 'P'},
      {"no-natpmp", no_argument, NULL, 'N'},     {"no-upnp", no_argument, NULL, 'U'},
      {"timeout", required_argument, NULL, 't'}, {"gateway", required_argument, NULL, 'g'},
      {"wait", required_argument, NULL, 'w'},    {"after", required_argument, NULL, 'a'},
      {"verbose", no_argument, NULL, 'v'},       {NULL, 0, NULL, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "p:t:g:w:a:v", opts, NULL)) != -1) {
    switch (c) {
    case 'p':
      port = atoi(optarg);
      break;
    case 'P':
      cfg.no_pcp = true;
      break;
    case 'N':
      cfg.no_natpmp = true;
      break;
    case 'U':
      cfg.no_upnp = true;
      break;
    case 't':
      cfg.timeout_ms = atoi(optarg);
      break;
    case 'g':
      if (np_addr_parse(optarg, 0, &cfg.gateway) != 0) {
        fprintf(stderr, "bad gateway %s\n", optarg);
        return 2;
      }
      break;
    case 'w':
      wait_ms = atoi(optarg);
      break;
    case 'a':
      after_ms = atoi(optarg);
      break;
    case 'v':
      cfg.log = log_stderr;
      cfg.log_level = NP_LOG_DEBUG;
      break;
    default:
      fprintf(stderr,
              "usage: %s --port P [--no-pcp] [--no-natpmp] [--no-upnp] [--timeout MS] "
              "[--gateway IP] [--wait MS] [--after MS] [-v]\n",
              argv[0]);
      return 2;
    }
  }
  if (port <= 0 || port > 65535 || wait_ms < 0 || after_ms < 0) {
    fprintf(stderr, "--port 1..65535 required\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);

  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0) {
    perror("bind");
    return 1;
  }
  cfg.internal_port = (uint16_t)port;
  cfg.description = "natpunch lab test";
  np_portmap *pm = NULL;
  int rc = np__portmap_new(&cfg, &pm);
  if (rc != 0) {
    printf("failed err=%s\n", np_err_name(rc));
    return 1;
  }
  np_addr ext;
  int64_t t0 = np__now_ms();
  rc = np__portmap_open(pm, &ext);
  int64_t took = np__now_ms() - t0;
  if (rc != 0) {
    printf("failed err=%s ms=%lld\n", np_err_name(rc), (long long)took);
    np__portmap_free(pm);
    close(fd);
    return 1;
  }
  char a[NP_ADDRSTRLEN];
  printf("mapped proto=%s external=%s ms=%lld\n", np__portmap_proto_name(np__portmap_protocol(pm)),
         np_addr_format(&ext, a, sizeof a), (long long)took);

  np_addr from;
  memset(&from, 0, sizeof from);
  ssize_t bytes = 0;
  int got = wait_datagrams(fd, wait_ms, 300, &from, &bytes);
  if (got > 0)
    printf("received from=%s bytes=%zd count=%d\n", np_addr_format(&from, a, sizeof a), bytes, got);
  else
    printf("received none\n");

  t0 = np__now_ms();
  rc = np__portmap_close(pm);
  printf("closed rc=%s ms=%lld\n", np_err_name(rc), (long long)(np__now_ms() - t0));
  int late = wait_datagrams(fd, after_ms, -1, &from, &bytes);
  printf("after_close received=%d\n", late);
  np__portmap_free(pm);
  close(fd);
  return 0;
}
