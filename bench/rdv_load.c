/*
 * rdv_load: load generator for the rendezvous server (bench/rendezvous).
 *
 * One process, one epoll loop, N peers each with its own key and TCP
 * connection:
 *  1. registers all N (HELLO, CHALLENGE, signed REGISTER, REGISTERED), at
 *     most --window registrations in flight, and reports registrations/s;
 *  2. with --rss-pid, reads the server's VmRSS before and after (the
 *     difference over N is the server's memory per registered peer);
 *  3. for --seconds, keeps --inflight offer/answer exchanges going between
 *     random pairs of registered peers: A sends a signed OFFER to B, B
 *     answers with a signed ANSWER when the offer arrives, and the time from
 *     A's send to the answer's arrival is one latency sample.
 * Prints "key value" lines for the script. Every phase is bounded in time.
 */
#include "natpunch.h"
#include "signaling/signaling.h"

#include <time.h>

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IN_CAP 4096
#define MAX_INFLIGHT 4096
#define REGISTER_DEADLINE_S 120

enum pstate { P_IDLE, P_CONNECTING, P_HELLO_SENT, P_REGISTER_SENT, P_REGISTERED, P_FAILED };

struct lpeer {
  int fd;
  uint8_t state;
  np_identity *id;
  uint8_t pk[NP_PUBKEY_LEN];
  size_t in_len;
  uint8_t *in; /* IN_CAP bytes */
};

struct slot {
  uint64_t seq;
  int from, to;
  int64_t sent_us;
  bool busy;
};

static struct lpeer *g_peers;
static int g_n;
static int g_epfd;
static np_sig_msg g_msg, g_out;
static uint8_t g_buf[NP_SIG_LEN_PREFIX + NP_SIG_MAX_FRAME];
static struct slot g_slots[MAX_INFLIGHT];
static uint64_t g_seq;
static int64_t *g_lat;
static size_t g_n_lat, g_cap_lat;
static uint64_t g_errors, g_send_fail, g_unexpected;
static uint64_t g_rng = 88172645463325252ull;

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t rnd(void) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}

static long rss_kb(int pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
      break;
  fclose(f);
  return kb;
}

/* Sends a whole frame; loopback with tiny frames never leaves a remainder
 * in practice, and if it does the exchange is counted as failed rather than
 * queued (the bench measures the server, not our buffering). */
static bool send_all(struct lpeer *p, const uint8_t *b, size_t len) {
  size_t done = 0;
  int spins = 0;
  while (done < len) {
    ssize_t n = send(p->fd, b + done, len - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += (size_t)n;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR) && spins++ < 1000)
      continue;
    g_send_fail++;
    return false;
  }
  return true;
}

static bool send_msg(struct lpeer *p, const np_sig_msg *m, const np_identity *id) {
  int n = np__sig_encode(m, id, g_buf, sizeof g_buf);
  if (n <= 0) {
    fprintf(stderr, "rdv_load: encode %s: %s\n", np__sig_type_name(m->type), np_strerror(n));
    exit(1);
  }
  return send_all(p, g_buf, (size_t)n);
}

static void start_connect(int i, const np_addr *server) {
  struct lpeer *p = &g_peers[i];
  p->fd = socket(server->u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (p->fd < 0) {
    fprintf(stderr, "rdv_load: socket: %s\n", strerror(errno));
    exit(1);
  }
  int one = 1;
  setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(p->fd, &server->u.sa, np_addr_len(server)) != 0 && errno != EINPROGRESS) {
    fprintf(stderr, "rdv_load: connect: %s\n", strerror(errno));
    exit(1);
  }
  p->state = P_CONNECTING;
  struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
  epoll_ctl(g_epfd, EPOLL_CTL_ADD, p->fd, &ev);
}

static void fail_peer(struct lpeer *p, const char *why) {
  if (p->state == P_FAILED)
    return;
  fprintf(stderr, "rdv_load: peer %d: %s\n", (int)(p - g_peers), why);
  p->state = P_FAILED;
  if (p->fd >= 0)
    close(p->fd);
  p->fd = -1;
}

static void start_offer(int k);

/* One decoded frame for peer i. */
static void on_msg(int i) {
  struct lpeer *p = &g_peers[i];
  const np_sig_msg *m = &g_msg;
  switch (m->type) {
  case NP_SIG_CHALLENGE:
    if (p->state != P_HELLO_SENT)
      break;
    memset(&g_out, 0, sizeof g_out);
    g_out.type = NP_SIG_REGISTER;
    g_out.has_nonce = true;
    memcpy(g_out.nonce, m->nonce, NP_SIG_NONCE_LEN);
    if (send_msg(p, &g_out, p->id))
      p->state = P_REGISTER_SENT;
    return;
  case NP_SIG_REGISTERED:
    if (p->state != P_REGISTER_SENT)
      break;
    p->state = P_REGISTERED;
    return;
  case NP_SIG_OFFER:
    /* Answer at once, to the caller, echoing the session. */
    memset(&g_out, 0, sizeof g_out);
    g_out.type = NP_SIG_ANSWER;
    g_out.has_from = g_out.has_to = g_out.has_session = g_out.has_timestamp = true;
    memcpy(g_out.from, p->pk, NP_PUBKEY_LEN);
    memcpy(g_out.to, m->from, NP_PUBKEY_LEN);
    memcpy(g_out.session, m->session, NP_SIG_SESSION_LEN);
    g_out.timestamp_ms = wall_ms(); /* the server tells a sender off by more than 120 s */
    g_out.peer_seen = m->observed;
    g_out.cand.private_addrs[0] = m->observed;
    g_out.cand.n_private = 1;
    send_msg(p, &g_out, p->id);
    return;
  case NP_SIG_ANSWER:
  case NP_SIG_ERROR: {
    if (m->type == NP_SIG_ERROR) {
      g_errors++;
      if (!m->has_session) {
        fprintf(stderr, "rdv_load: peer %d: ERROR %u %s\n", i, (unsigned)m->error_code,
                m->error_text);
        return;
      }
    }
    uint32_t k;
    uint64_t seq;
    memcpy(&k, m->session, sizeof k);
    memcpy(&seq, m->session + 4, sizeof seq);
    if (k >= MAX_INFLIGHT || !g_slots[k].busy || g_slots[k].seq != seq) {
      g_unexpected++;
      return;
    }
    if (m->type == NP_SIG_ANSWER && g_n_lat < g_cap_lat)
      g_lat[g_n_lat++] = now_us() - g_slots[k].sent_us;
    g_slots[k].busy = false;
    start_offer((int)k);
    return;
  }
  default:
    break;
  }
  g_unexpected++;
}

static bool g_offering;

static void start_offer(int k) {
  if (!g_offering || g_n < 2)
    return;
  for (int tries = 0; tries < 8; tries++) {
    int a = (int)(rnd() % (uint64_t)g_n), b = (int)(rnd() % (uint64_t)g_n);
    if (a == b || g_peers[a].state != P_REGISTERED || g_peers[b].state != P_REGISTERED)
      continue;
    struct slot *s = &g_slots[k];
    s->seq = ++g_seq;
    s->from = a;
    s->to = b;
    s->busy = true;
    memset(&g_out, 0, sizeof g_out);
    g_out.type = NP_SIG_OFFER;
    g_out.has_from = g_out.has_to = g_out.has_session = g_out.has_timestamp = true;
    memcpy(g_out.from, g_peers[a].pk, NP_PUBKEY_LEN);
    memcpy(g_out.to, g_peers[b].pk, NP_PUBKEY_LEN);
    uint32_t k32 = (uint32_t)k;
    memcpy(g_out.session, &k32, sizeof k32);
    memcpy(g_out.session + 4, &s->seq, sizeof s->seq);
    g_out.timestamp_ms = wall_ms(); /* the server tells a sender off by more than 120 s */
    np_addr_parse("192.168.1.10:40000", 0, &g_out.cand.private_addrs[0]);
    g_out.cand.n_private = 1;
    np_addr_parse("198.51.100.7:51000", 0, &g_out.cand.mapped[0]);
    g_out.cand.n_mapped = 1;
    s->sent_us = now_us();
    if (send_msg(&g_peers[a], &g_out, g_peers[a].id))
      return;
    s->busy = false;
  }
}

static void on_event(int i, uint32_t events) {
  struct lpeer *p = &g_peers[i];
  if (p->state == P_FAILED)
    return;
  if (p->state == P_CONNECTING) {
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err || (events & (EPOLLERR | EPOLLHUP))) {
      fail_peer(p, err ? strerror(err) : "connect failed");
      return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(g_epfd, EPOLL_CTL_MOD, p->fd, &ev);
    memset(&g_out, 0, sizeof g_out);
    g_out.type = NP_SIG_HELLO;
    g_out.has_pubkey = true;
    memcpy(g_out.pubkey, p->pk, NP_PUBKEY_LEN);
    /* A KX key as real clients send, so the server's side of the channel
     * key (a key pair and an X25519 per registration) is in the figures;
     * the load does not check the MACs it gets back. */
    {
      uint8_t sk[NP_SIG_KX_LEN];
      if (np__sig_kx_keypair(g_out.cand.kx, sk) == 0)
        g_out.cand.has_kx = true;
    }
    if (send_msg(p, &g_out, NULL))
      p->state = P_HELLO_SENT;
    return;
  }
  ssize_t n = recv(p->fd, p->in + p->in_len, IN_CAP - p->in_len, 0);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
    fail_peer(p, n == 0 ? "closed by the server" : strerror(errno));
    return;
  }
  if (n < 0)
    return;
  p->in_len += (size_t)n;
  size_t off = 0;
  for (;;) {
    size_t body;
    int rc = np__sig_frame_check(p->in + off, p->in_len - off, IN_CAP, &body);
    if (rc == NP_ERR_NOSPACE)
      break;
    if (rc != 0 || np__sig_decode(p->in + off + NP_SIG_LEN_PREFIX, body, &g_msg) != 0) {
      fail_peer(p, "bad frame from the server");
      return;
    }
    off += NP_SIG_LEN_PREFIX + body;
    on_msg(i);
    if (p->state == P_FAILED)
      return;
  }
  memmove(p->in, p->in + off, p->in_len - off);
  p->in_len -= off;
}

static void loop_once(int timeout_ms) {
  struct epoll_event ev[512];
  int n = epoll_wait(g_epfd, ev, 512, timeout_ms);
  for (int k = 0; k < n; k++)
    on_event((int)ev[k].data.u32, ev[k].events);
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static void usage(void) {
  fprintf(stderr, "Usage: rdv_load --server IP:PORT [--peers N] [--seconds S] [--window W]\n"
                  "                [--inflight K] [--rss-pid PID]\n");
  exit(2);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {{"server", required_argument, NULL, 's'},
                                       {"peers", required_argument, NULL, 'n'},
                                       {"seconds", required_argument, NULL, 't'},
                                       {"window", required_argument, NULL, 'w'},
                                       {"inflight", required_argument, NULL, 'k'},
                                       {"rss-pid", required_argument, NULL, 'p'},
                                       {NULL, 0, NULL, 0}};
  np_addr server;
  bool have_server = false;
  int peers = 10000, window = 256, inflight = 64, rss_pid = 0;
  double seconds = 5;
  int c;
  while ((c = getopt_long(argc, argv, "s:n:t:w:k:p:", opts, NULL)) != -1) {
    switch (c) {
    case 's':
      if (np_addr_parse(optarg, 0, &server) != 0)
        usage();
      have_server = true;
      break;
    case 'n':
      peers = (int)strtol(optarg, NULL, 10);
      break;
    case 't':
      seconds = strtod(optarg, NULL);
      break;
    case 'w':
      window = (int)strtol(optarg, NULL, 10);
      break;
    case 'k':
      inflight = (int)strtol(optarg, NULL, 10);
      break;
    case 'p':
      rss_pid = (int)strtol(optarg, NULL, 10);
      break;
    default:
      usage();
    }
  }
  if (!have_server || peers < 2 || peers > 1000000 || seconds <= 0 || seconds > 3600 ||
      window < 1 || inflight < 1 || inflight > MAX_INFLIGHT)
    usage();

  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)peers + 32) {
      fprintf(stderr, "rdv_load: RLIMIT_NOFILE %llu is too small for %d peers\n",
              (unsigned long long)rl.rlim_cur, peers);
      return 1;
    }
  }
  g_n = peers;
  g_peers = calloc((size_t)peers, sizeof *g_peers);
  g_epfd = epoll_create1(EPOLL_CLOEXEC);
  if (!g_peers || g_epfd < 0)
    return 1;
  for (int i = 0; i < peers; i++) {
    g_peers[i].fd = -1;
    g_peers[i].in = malloc(IN_CAP);
    if (!g_peers[i].in || np_identity_generate(&g_peers[i].id) != 0)
      return 1;
    np_identity_public_key(g_peers[i].id, g_peers[i].pk);
  }

  long rss0 = rss_pid ? rss_kb(rss_pid) : -1;

  /* Phase 1: registrations, at most 'window' in flight. */
  int64_t t0 = now_us();
  int started = 0, done = 0, failed = 0;
  while (done + failed < peers) {
    if ((now_us() - t0) / 1000000 > REGISTER_DEADLINE_S) {
      fprintf(stderr, "rdv_load: registration phase timed out\n");
      return 1;
    }
    int in_flight = started - done - failed;
    while (started < peers && in_flight < window) {
      start_connect(started++, &server);
      in_flight++;
    }
    loop_once(100);
    done = failed = 0;
    for (int i = 0; i < started; i++) {
      done += g_peers[i].state == P_REGISTERED;
      failed += g_peers[i].state == P_FAILED;
    }
  }
  double reg_s = (double)(now_us() - t0) / 1e6;
  printf("peers %d\nregistered %d\nregistration_failures %d\n", peers, done, failed);
  printf("registration_seconds %.3f\nregistrations_per_sec %.0f\n", reg_s, done / reg_s);

  if (rss_pid) {
    /* Let the server finish what it was doing before reading its RSS. */
    int64_t settle = now_us() + 300000;
    while (now_us() < settle)
      loop_once(50);
    long rss1 = rss_kb(rss_pid);
    printf("server_rss_kb_0 %ld\nserver_rss_kb_n %ld\n", rss0, rss1);
    if (rss0 > 0 && rss1 > 0 && done > 0)
      printf("server_bytes_per_peer %.0f\n", (double)(rss1 - rss0) * 1024.0 / done);
  }
  fflush(stdout);

  /* Phase 2: offer/answer exchanges. */
  g_cap_lat = 20000000;
  g_lat = malloc(g_cap_lat * sizeof *g_lat);
  if (!g_lat)
    return 1;
  g_offering = true;
  int64_t t1 = now_us(), end = t1 + (int64_t)(seconds * 1e6);
  for (int k = 0; k < inflight; k++)
    start_offer(k);
  while (now_us() < end)
    loop_once(10);
  double off_s = (double)(now_us() - t1) / 1e6;
  g_offering = false;
  qsort(g_lat, g_n_lat, sizeof *g_lat, cmp_i64);
  printf("exchange_seconds %.3f\nexchanges %zu\noffers_per_sec %.0f\n", off_s, g_n_lat,
         g_n_lat / off_s);
  if (g_n_lat) {
    printf("latency_p50_us %lld\nlatency_p99_us %lld\nlatency_max_us %lld\n",
           (long long)g_lat[g_n_lat / 2], (long long)g_lat[g_n_lat * 99 / 100],
           (long long)g_lat[g_n_lat - 1]);
  }
  int lost = 0;
  for (int i = 0; i < peers; i++)
    lost += g_peers[i].state == P_FAILED;
  printf("errors %llu\nsend_failures %llu\nunexpected %llu\npeers_lost %d\n",
         (unsigned long long)g_errors, (unsigned long long)g_send_fail,
         (unsigned long long)g_unexpected, lost);
  for (int i = 0; i < peers; i++) {
    if (g_peers[i].fd >= 0)
      close(g_peers[i].fd);
    free(g_peers[i].in);
    np_identity_free(g_peers[i].id);
  }
  free(g_peers);
  free(g_lat);
  close(g_epfd);
  return 0;
}
