/* np_delay: the NAT lab's latency emulator (the kernel here has no netem).
 *
 * Every packet that nftables sends to NFQUEUE queue N (`queue num N bypass`)
 * is held for a fixed time, then accepted, in order of arrival. Verdicts go
 * by packet id: only the packet's metadata is copied to this program, never
 * its payload. At most --max-packets are held; one more is dropped (a router
 * with a full buffer). Fail-open: the queue is configured so that the kernel
 * accepts packets it cannot hand to this program (socket buffer full), and
 * the nft rule's `bypass` lets traffic through undelayed while no program is
 * bound to the queue, e.g. after this one died. On SIGTERM/SIGINT/SIGHUP it
 * accepts what it holds (early), prints its counters and exits 0.
 *
 * Usage: np_delay --queue N --delay-ms MS [--max-packets N] [--quiet]
 * Exit status: 0 stopped by a signal, 1 runtime error, 2 bad command line.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <linux/netlink.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

#include <libnetfilter_queue/libnetfilter_queue.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

struct held {
  uint32_t id;
  uint64_t due_ns; /* CLOCK_MONOTONIC */
};

struct delay_state {
  struct nfq_q_handle *qh;
  struct held *ring;
  size_t cap, head, count;
  uint64_t delay_ns;
  unsigned long long delayed, dropped, verdict_errors, lost;
};

static const char usage_text[] =
    "Usage: np_delay --queue N --delay-ms MS [--max-packets N] [--quiet]\n"
    "\n"
    "Hold every packet of NFQUEUE queue N for MS milliseconds, then accept it\n"
    "(in order of arrival). For the natpunch NAT lab, which has no netem.\n"
    "\n"
    "  --queue N          NFQUEUE queue number, 0..65535 (required)\n"
    "  --delay-ms MS      how long to hold each packet, 0..60000 (required)\n"
    "  --max-packets N    hold at most N packets, drop beyond (default 10000)\n"
    "  --quiet            no start and exit lines on stderr\n"
    "  --help             this text\n"
    "\n"
    "Send packets to it with an nft rule such as\n"
    "  queue num 0 bypass\n"
    "(bypass: packets pass undelayed while no np_delay is bound to the queue).\n"
    "The queue is also fail-open: what the kernel cannot hand over is accepted.\n"
    "Prints \"np_delay: queue N ready\" on stderr once bound. SIGTERM, SIGINT\n"
    "or SIGHUP: accept the held packets at once, print counters, exit 0.\n"
    "\n"
    "Exit status: 0 stopped by a signal, 1 runtime error, 2 bad command line.\n";

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static bool parse_uint(const char *s, unsigned long max, unsigned long *out) {
  char *end;
  unsigned long v;
  if (s == NULL || *s < '0' || *s > '9') return false;
  errno = 0;
  v = strtoul(s, &end, 10);
  if (errno != 0 || *end != '\0' || v > max) return false;
  *out = v;
  return true;
}

static void verdict(struct delay_state *st, uint32_t id, uint32_t v) {
  if (nfq_set_verdict(st->qh, id, v, 0, NULL) < 0) st->verdict_errors++;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                     void *data) {
  struct delay_state *st = data;
  struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
  uint32_t id;
  (void)qh;
  (void)msg;
  if (ph == NULL) return 0;
  id = ntohl(ph->packet_id);
  if (st->delay_ns == 0) {
    verdict(st, id, NF_ACCEPT);
    st->delayed++;
    return 0;
  }
  if (st->count == st->cap) {
    verdict(st, id, NF_DROP);
    st->dropped++;
    return 0;
  }
  st->ring[(st->head + st->count) % st->cap] = (struct held){id, now_ns() + st->delay_ns};
  st->count++;
  return 0;
}

/* Accept every held packet due by NOW (all of them with NOW = UINT64_MAX). */
static void release_due(struct delay_state *st, uint64_t now) {
  while (st->count > 0 && st->ring[st->head].due_ns <= now) {
    verdict(st, st->ring[st->head].id, NF_ACCEPT);
    st->delayed++;
    st->head = (st->head + 1) % st->cap;
    st->count--;
  }
}

/* The timer fires when the oldest held packet is due (or never). */
static int arm_timer(int tfd, const struct delay_state *st) {
  struct itimerspec it;
  memset(&it, 0, sizeof it);
  if (st->count > 0) {
    uint64_t due = st->ring[st->head].due_ns;
    it.it_value.tv_sec = (time_t)(due / 1000000000u);
    it.it_value.tv_nsec = (long)(due % 1000000000u);
    if (it.it_value.tv_sec == 0 && it.it_value.tv_nsec == 0) it.it_value.tv_nsec = 1;
  }
  return timerfd_settime(tfd, TFD_TIMER_ABSTIME, &it, NULL);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"queue", required_argument, NULL, 'q'},     {"delay-ms", required_argument, NULL, 'd'},
      {"max-packets", required_argument, NULL, 'm'}, {"quiet", no_argument, NULL, 'Q'},
      {"help", no_argument, NULL, 'h'},            {NULL, 0, NULL, 0}};
  unsigned long queue = 0, delay_ms = 0, max_packets = 10000;
  bool have_queue = false, have_delay = false, quiet = false;
  int c, rc = 1;
  struct delay_state st;
  struct nfq_handle *h = NULL;
  int fd, tfd = -1, sfd = -1, one = 1;
  sigset_t sigs;
  static char buf[65536] __attribute__((aligned(8)));

  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
      case 'q':
        if (!parse_uint(optarg, 65535, &queue)) {
          fprintf(stderr, "np_delay: --queue: '%s' is not a number in 0..65535\n", optarg);
          return 2;
        }
        have_queue = true;
        break;
      case 'd':
        if (!parse_uint(optarg, 60000, &delay_ms)) {
          fprintf(stderr, "np_delay: --delay-ms: '%s' is not a number in 0..60000\n", optarg);
          return 2;
        }
        have_delay = true;
        break;
      case 'm':
        if (!parse_uint(optarg, 1000000, &max_packets) || max_packets == 0) {
          fprintf(stderr, "np_delay: --max-packets: '%s' is not a number in 1..1000000\n", optarg);
          return 2;
        }
        break;
      case 'Q':
        quiet = true;
        break;
      case 'h':
        fputs(usage_text, stdout);
        return 0;
      default:
        fputs("np_delay: see np_delay --help\n", stderr);
        return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "np_delay: unexpected argument '%s' (see --help)\n", argv[optind]);
    return 2;
  }
  if (!have_queue || !have_delay) {
    fputs("np_delay: --queue and --delay-ms are required (see --help)\n", stderr);
    return 2;
  }

  memset(&st, 0, sizeof st);
  st.cap = max_packets;
  st.delay_ns = (uint64_t)delay_ms * 1000000u;
  st.ring = calloc(st.cap, sizeof *st.ring);
  if (st.ring == NULL) {
    fputs("np_delay: out of memory\n", stderr);
    return 1;
  }

  /* Signals arrive through a descriptor, so the loop ends cleanly. */
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  if (sigprocmask(SIG_BLOCK, &sigs, NULL) < 0 ||
      (sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
    perror("np_delay: signalfd");
    goto out;
  }
  tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (tfd < 0) {
    perror("np_delay: timerfd_create");
    goto out;
  }

  h = nfq_open();
  if (h == NULL) {
    perror("np_delay: nfq_open (root or CAP_NET_ADMIN needed)");
    goto out;
  }
  st.qh = nfq_create_queue(h, (uint16_t)queue, on_packet, &st);
  if (st.qh == NULL) {
    fprintf(stderr, "np_delay: cannot bind queue %lu (another program has it?): %s\n", queue,
            strerror(errno));
    goto out;
  }
  if (nfq_set_mode(st.qh, NFQNL_COPY_META, 0) < 0) {
    perror("np_delay: nfq_set_mode");
    goto out;
  }
  /* Room in the kernel for what we may hold plus a burst in flight. */
  if (nfq_set_queue_maxlen(st.qh, (uint32_t)(st.cap + 1024)) < 0) {
    perror("np_delay: nfq_set_queue_maxlen");
    goto out;
  }
  /* Fail-open; GSO packets whole (the payload is never looked at). Older
   * kernels without these flags still work, just without them. */
  if (nfq_set_queue_flags(st.qh, NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO,
                          NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO) < 0 && !quiet)
    fputs("np_delay: warning: queue flags (fail-open, GSO) not supported\n", stderr);
  fd = nfq_fd(h);
  nfnl_rcvbufsiz(nfq_nfnlh(h), 8u << 20);
  /* A full socket buffer means the kernel accepted those packets itself
   * (fail-open); it is no reason to fail the next recv. */
  (void)setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);

  if (!quiet) fprintf(stderr, "np_delay: queue %lu ready, delay %lu ms, at most %zu held\n", queue,
                      delay_ms, st.cap);

  for (;;) {
    struct pollfd p[3] = {{fd, POLLIN, 0}, {tfd, POLLIN, 0}, {sfd, POLLIN, 0}};
    if (poll(p, 3, -1) < 0) {
      if (errno == EINTR) continue;
      perror("np_delay: poll");
      goto out;
    }
    if (p[2].revents & POLLIN) {
      struct signalfd_siginfo si;
      if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si && !quiet)
        fprintf(stderr, "np_delay: signal %u, stopping\n", si.ssi_signo);
      rc = 0;
      break;
    }
    if (p[0].revents & (POLLIN | POLLERR)) {
      /* A bounded batch per wakeup, so the timer is never starved. */
      for (int n = 0; n < 256; n++) {
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
          if (errno == ENOBUFS) {
            st.lost++;
            continue;
          }
          perror("np_delay: recv");
          goto out;
        }
        nfq_handle_packet(h, buf, (int)r);
      }
    }
    if (p[1].revents & POLLIN) {
      uint64_t expirations;
      if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) {
        perror("np_delay: timerfd read");
        goto out;
      }
    }
    release_due(&st, now_ns());
    if (arm_timer(tfd, &st) < 0) {
      perror("np_delay: timerfd_settime");
      goto out;
    }
  }

out:
  if (st.qh != NULL) {
    release_due(&st, UINT64_MAX); /* nothing held is dropped on the way out */
    nfq_destroy_queue(st.qh);
  }
  if (h != NULL) nfq_close(h);
  if (!quiet && st.qh != NULL)
    fprintf(stderr,
            "np_delay: queue %lu: %llu packets passed, %llu dropped (over %zu held), "
            "%llu verdict errors, %llu lost notifications\n",
            queue, st.delayed, st.dropped, st.cap, st.verdict_errors, st.lost);
  if (tfd >= 0) close(tfd);
  if (sfd >= 0) close(sfd);
  free(st.ring);
  return rc;
}
