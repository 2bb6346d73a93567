/*
 * stun_load: a closed-loop STUN Binding load generator for benchmarks.
 *
 * Each thread owns --sockets UDP sockets; each socket keeps at most
 * --inflight requests outstanding, sending a new one for every valid
 * answer (so the load adapts to the server instead of flooding a queue).
 * A response is valid when the codec decodes it as a Binding success whose
 * transaction ID is one we sent from that socket and whose
 * XOR-MAPPED-ADDRESS is that socket's own address (true on loopback). A
 * socket that hears nothing for --rto-ms refills its window: those requests
 * count as lost. Runs for a fixed time after a short warm-up and prints
 * valid responses per second.
 *
 * Usage: stun_load --server IP:PORT [--seconds N] [--threads N] [--sockets N]
 *                  [--inflight N] [--rto-ms N]
 * Output (stdout): one line "rate=<valid/s> valid=.. sent=.. invalid=.. lost=.. seconds=.."
 */
#include "natpunch.h"
#include "net/addr.h"
#include "net/udp.h"
#include "stun/stun.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define BATCH 32
#define MAX_SOCKETS 64
#define MAX_THREADS 16
#define MAX_INFLIGHT 1024

struct sock {
  int fd;
  np_addr local;
  uint32_t next_seq;  /* transaction counter: txid = sock id, seq */
  int inflight;
  int64_t last_rx_ns;
};

struct loader {
  pthread_t thread;
  int id;
  struct sock socks[MAX_SOCKETS];
  int n_socks;
  int epfd;
  /* Counted only inside the measured interval. */
  uint64_t valid, sent, invalid, lost;
};

static np_addr g_server;
static int g_sockets = 8, g_inflight = 32, g_threads = 1, g_rto_ms = 200;
static double g_seconds = 5, g_warmup = 0.5;
static int64_t g_start_ns, g_measure_ns, g_end_ns;
static atomic_bool g_failed;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void make_txid(uint8_t txid[NP_STUN_TXID_LEN], int loader, int sock, uint32_t seq) {
  memset(txid, 0, NP_STUN_TXID_LEN);
  txid[0] = (uint8_t)loader;
  txid[1] = (uint8_t)sock;
  memcpy(txid + 4, &seq, sizeof seq);
}

/* Sends n fresh requests on socket s with one sendmmsg() per batch. */
static void send_requests(struct loader *ld, int s, int n, bool count) {
  struct sock *sk = &ld->socks[s];
  uint8_t bufs[BATCH][NP_STUN_HEADER_LEN];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  while (n > 0) {
    int k = n < BATCH ? n : BATCH;
    for (int i = 0; i < k; i++) {
      uint8_t txid[NP_STUN_TXID_LEN];
      make_txid(txid, ld->id, s, sk->next_seq++);
      np_stun_writer w;
      np__stun_writer_init(&w, bufs[i], sizeof bufs[i], NP_STUN_BINDING | NP_STUN_REQUEST,
                          NP_STUN_MAGIC_COOKIE, txid);
      int len = np__stun_writer_finish(&w);
      iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = (size_t)len};
      memset(&msgs[i], 0, sizeof msgs[i]);
      msgs[i].msg_hdr.msg_name = &g_server.u.sa;
      msgs[i].msg_hdr.msg_namelen = np_addr_len(&g_server);
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int off = 0;
    while (off < k) {
      int r = sendmmsg(sk->fd, msgs + off, (unsigned)(k - off), 0);
      if (r < 0) {
        if (errno == EINTR)
          continue;
        /* A refused send simply is not in flight. */
        sk->inflight -= k - off;
        break;
      }
      off += r;
    }
    sk->inflight += k;
    if (count)
      ld->sent += (uint64_t)off;
    n -= k;
  }
}

static bool valid_reply(const struct loader *ld, int s, const uint8_t *buf, size_t len) {
  const struct sock *sk = &ld->socks[s];
  np_stun_msg m;
  if (np__stun_read(buf, len, &m) != 0 || m.cls != NP_STUN_SUCCESS || m.method != NP_STUN_BINDING)
    return false;
  uint32_t seq;
  memcpy(&seq, m.txid + 4, sizeof seq);
  if (m.txid[0] != (uint8_t)ld->id || m.txid[1] != (uint8_t)s || seq >= sk->next_seq)
    return false;
  return (m.present & NP_STUN_HAS_XOR_MAPPED) && np_addr_equal(&m.xor_mapped, &sk->local);
}

static void *loader_main(void *arg) {
  struct loader *ld = arg;
  static _Thread_local uint8_t rx[BATCH][NP_STUN_MAX_MESSAGE];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  struct epoll_event ev[MAX_SOCKETS];

  for (int s = 0; s < ld->n_socks; s++) {
    ld->socks[s].last_rx_ns = now_ns();
    send_requests(ld, s, g_inflight, false);
  }
  for (;;) {
    int64_t now = now_ns();
    if (now >= g_end_ns)
      break;
    bool measuring = now >= g_measure_ns;
    int n = epoll_wait(ld->epfd, ev, MAX_SOCKETS, 10);
    if (n < 0 && errno != EINTR) {
      perror("epoll_wait");
      atomic_store(&g_failed, true);
      break;
    }
    for (int e = 0; e < n; e++) {
      int s = (int)ev[e].data.u32;
      struct sock *sk = &ld->socks[s];
      for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){.iov_base = rx[i], .iov_len = sizeof rx[i]};
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
      }
      int r = recvmmsg(sk->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
      if (r <= 0)
        continue;
      int good = 0;
      for (int i = 0; i < r; i++) {
        if (valid_reply(ld, s, rx[i], msgs[i].msg_len))
          good++;
        else if (measuring)
          ld->invalid++;
      }
      if (measuring)
        ld->valid += (uint64_t)good;
      sk->inflight -= good;
      if (sk->inflight < 0)
        sk->inflight = 0;
      sk->last_rx_ns = now;
      int room = g_inflight - sk->inflight;
      if (room > 0)
        send_requests(ld, s, room, measuring);
    }
    /* Lost requests would shrink the window for ever: refill a socket that
     * has been silent for a retransmission timeout. */
    for (int s = 0; s < ld->n_socks; s++) {
      struct sock *sk = &ld->socks[s];
      if (now - sk->last_rx_ns > (int64_t)g_rto_ms * 1000000) {
        if (measuring)
          ld->lost += (uint64_t)sk->inflight;
        sk->inflight = 0;
        sk->last_rx_ns = now;
        send_requests(ld, s, g_inflight, measuring);
      }
    }
  }
  return NULL;
}

static int parse_int(const char *opt, const char *s, int min, int max) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *s == '\0' || *end != '\0' || v < min || v > max) {
    fprintf(stderr, "stun_load: %s: '%s' is not a number in %d..%d\n", opt, s, min, max);
    exit(2);
  }
  return (int)v;
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"server", required_argument, NULL, 'S'},  {"seconds", required_argument, NULL, 's'},
      {"threads", required_argument, NULL, 't'}, {"sockets", required_argument, NULL, 'k'},
      {"inflight", required_argument, NULL, 'i'}, {"rto-ms", required_argument, NULL, 'r'},
      {NULL, 0, NULL, 0}};
  bool have_server = false;
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'S':
      if (np_addr_parse(optarg, 0, &g_server) != 0) {
        fprintf(stderr, "stun_load: --server: '%s' is not IP:PORT\n", optarg);
        return 2;
      }
      have_server = true;
      break;
    case 's': g_seconds = parse_int("--seconds", optarg, 1, 3600); break;
    case 't': g_threads = parse_int("--threads", optarg, 1, MAX_THREADS); break;
    case 'k': g_sockets = parse_int("--sockets", optarg, 1, MAX_SOCKETS); break;
    case 'i': g_inflight = parse_int("--inflight", optarg, 1, MAX_INFLIGHT); break;
    case 'r': g_rto_ms = parse_int("--rto-ms", optarg, 10, 10000); break;
    default:
      fprintf(stderr, "usage: stun_load --server IP:PORT [--seconds N] [--threads N] "
                      "[--sockets N] [--inflight N] [--rto-ms N]\n");
      return 2;
    }
  }
  if (!have_server) {
    fprintf(stderr, "stun_load: --server IP:PORT is required\n");
    return 2;
  }

  static struct loader loaders[MAX_THREADS];
  np_addr bind_addr = g_server;
  np_addr_set_port(&bind_addr, 0);
  char err[NP_UDP_ERRLEN];
  for (int t = 0; t < g_threads; t++) {
    struct loader *ld = &loaders[t];
    ld->id = t;
    ld->n_socks = g_sockets;
    ld->epfd = epoll_create1(EPOLL_CLOEXEC);
    for (int s = 0; s < g_sockets; s++) {
      int fd = np__udp_bind(&bind_addr, NP_UDP_NONBLOCK | NP_UDP_V6ONLY, err);
      if (fd < 0 || ld->epfd < 0) {
        fprintf(stderr, "stun_load: %s\n", err);
        return 1;
      }
      int big = 4 << 20;
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
      ld->socks[s].fd = fd;
      np__udp_local(fd, &ld->socks[s].local);
      struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)s};
      epoll_ctl(ld->epfd, EPOLL_CTL_ADD, fd, &ev);
    }
  }
  g_start_ns = now_ns();
  g_measure_ns = g_start_ns + (int64_t)(g_warmup * 1e9);
  g_end_ns = g_measure_ns + (int64_t)(g_seconds * 1e9);
  for (int t = 0; t < g_threads; t++)
    if (pthread_create(&loaders[t].thread, NULL, loader_main, &loaders[t]) != 0) {
      fprintf(stderr, "stun_load: pthread_create failed\n");
      return 1;
    }
  uint64_t valid = 0, sent = 0, invalid = 0, lost = 0;
  for (int t = 0; t < g_threads; t++) {
    pthread_join(loaders[t].thread, NULL);
    valid += loaders[t].valid;
    sent += loaders[t].sent;
    invalid += loaders[t].invalid;
    lost += loaders[t].lost;
    for (int s = 0; s < loaders[t].n_socks; s++)
      close(loaders[t].socks[s].fd);
    close(loaders[t].epfd);
  }
  if (atomic_load(&g_failed))
    return 1;
  printf("rate=%.0f valid=%" PRIu64 " sent=%" PRIu64 " invalid=%" PRIu64 " lost=%" PRIu64
         " seconds=%.1f\n",
         (double)valid / g_seconds, valid, sent, invalid, lost, g_seconds);
  return valid > 0 ? 0 : 1;
}
