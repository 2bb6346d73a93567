/*
 * Drives the TURN client (src/turn) against a real TURN server over UDP on
 * loopback, for tests/interop/test_turn_coturn.sh.
 *
 * Usage: turn_driver SERVER_IP:PORT USERNAME PASSWORD
 *
 * Allocates, then plays the peer itself on a second socket: a permission
 * and a payload through a Send indication (the peer must see it come from
 * the relayed address, and its echo comes back as a Data indication), then
 * a channel and a payload through ChannelData (echoed back as ChannelData),
 * then deallocates. Prints one "key=value" line per fact for the script to
 * check, and exits 0 when everything arrived intact. Every wait is bounded.
 */
#include "natpunch.h"
#include "net/addr.h"
#include "turn/turn.h"
#include "util/clock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define STEP_MS 5000

static int udp_socket(void) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) {
    perror("socket");
    exit(1);
  }
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    perror("bind");
    exit(1);
  }
  return fd;
}

static socklen_t sa_len(const np_addr *a) {
  return a->u.sa.sa_family == AF_INET6 ? sizeof a->u.in6 : sizeof a->u.in4;
}

static void flush(np__turn *t, int fd) {
  np__turn_datagram d;
  for (int i = 0; i < 64 && np__turn_next(t, np__now_ms(), &d); i++)
    if (sendto(fd, d.buf, d.len, 0, &d.to.u.sa, sa_len(&d.to)) < 0)
      perror("sendto server");
}

/* Runs the client until done(t) or STEP_MS pass; a datagram for the peer
 * socket is echoed back to where it came from (after checking it came from
 * the relay), and the first application payload is copied to *got. */
struct peer_seen {
  unsigned n;
  bool from_relay;
};

static bool run_until(np__turn *t, int cs, int ps, bool (*done)(np__turn *, void *), void *arg,
                      struct peer_seen *seen, uint8_t *got, size_t *got_len) {
  int64_t end = np__now_ms() + STEP_MS;
  while (!done(t, arg)) {
    int64_t now = np__now_ms();
    if (now >= end)
      return false;
    flush(t, cs);
    int64_t wake = np__turn_timeout(t);
    int64_t until = wake < end ? wake : end;
    int ms = until > now ? (int)(until - now) : 0;
    if (ms > 100)
      ms = 100;
    struct pollfd p[2] = {{.fd = cs, .events = POLLIN}, {.fd = ps, .events = POLLIN}};
    if (poll(p, 2, ms) < 0 && errno != EINTR)
      return false;
    uint8_t buf[NP_TURN_MAX_DATAGRAM];
    if (p[0].revents & POLLIN) {
      ssize_t n = recv(cs, buf, sizeof buf, 0);
      if (n > 0) {
        np__turn_recv rv;
        np__turn_input(t, np__now_ms(), buf, (size_t)n, &rv);
        if (rv.has_data && got && got_len) {
          memcpy(got, rv.data, rv.len);
          *got_len = rv.len;
        }
      }
    }
    if (p[1].revents & POLLIN) {
      np_addr from;
      struct sockaddr_storage ss;
      socklen_t sl = sizeof ss;
      ssize_t n = recvfrom(ps, buf, sizeof buf, 0, (struct sockaddr *)&ss, &sl);
      if (n > 0 && np__addr_from_sockaddr((struct sockaddr *)&ss, sl, &from) == 0) {
        seen->n++;
        const np_addr *relayed = np__turn_relayed(t);
        seen->from_relay = relayed && np_addr_equal(&from, relayed);
        /* The echo: "echo:" + what arrived, back to the relay. */
        uint8_t out[NP_TURN_MAX_DATAGRAM];
        memcpy(out, "echo:", 5);
        memcpy(out + 5, buf, (size_t)n);
        sendto(ps, out, (size_t)n + 5, 0, (struct sockaddr *)&ss, sl);
      }
    }
  }
  flush(t, cs);
  return true;
}

static bool is_ready(np__turn *t, void *arg) {
  (void)arg;
  return np__turn_get_state(t) != NP_TURN_ALLOCATING;
}
static bool is_permitted(np__turn *t, void *arg) {
  return np__turn_permitted(t, arg);
}
static bool is_bound(np__turn *t, void *arg) {
  return np__turn_channel(t, arg) != 0;
}
static bool is_closed(np__turn *t, void *arg) {
  (void)arg;
  return np__turn_get_state(t) == NP_TURN_CLOSED || np__turn_get_state(t) == NP_TURN_FAILED;
}
struct want {
  size_t *len;
};
static bool got_data(np__turn *t, void *arg) {
  (void)t;
  return *((struct want *)arg)->len != 0;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s SERVER_IP:PORT USERNAME PASSWORD\n", argv[0]);
    return 2;
  }
  np__turn_config cfg;
  memset(&cfg, 0, sizeof cfg);
  if (np_addr_parse(argv[1], 3478, &cfg.server) != 0) {
    fprintf(stderr, "bad server address '%s'\n", argv[1]);
    return 2;
  }
  cfg.username = argv[2];
  cfg.password = argv[3];
  cfg.lifetime = 600;
  np__turn *t = np__turn_new(&cfg, np__now_ms());
  if (!t)
    return 2;
  int cs = udp_socket(), ps = udp_socket();
  if (connect(cs, &cfg.server.u.sa, sa_len(&cfg.server)) != 0) {
    perror("connect");
    return 1;
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  np_addr peer;
  getsockname(ps, (struct sockaddr *)&ss, &sl);
  np__addr_from_sockaddr((struct sockaddr *)&ss, sl, &peer);
  char a[NP_ADDRSTRLEN];
  struct peer_seen seen = {0};
  int rc = 1;

  int64_t t0 = np__now_ms();
  if (!run_until(t, cs, ps, is_ready, NULL, &seen, NULL, NULL) ||
      np__turn_get_state(t) != NP_TURN_READY) {
    printf("allocate=failed state=%s error=%s code=%d reason=%s\n",
           np__turn_state_name(np__turn_get_state(t)), np_strerror(np__turn_error(t)),
           np__turn_error_code(t), np__turn_error_reason(t));
    goto out;
  }
  printf("allocate_ms=%lld\n", (long long)(np__now_ms() - t0));
  printf("relayed=%s\n", np_addr_format(np__turn_relayed(t), a, sizeof a));
  if (np__turn_mapped(t))
    printf("mapped=%s\n", np_addr_format(np__turn_mapped(t), a, sizeof a));
  printf("peer=%s\n", np_addr_format(&peer, a, sizeof a));

  np__turn_permit(t, &peer);
  if (!run_until(t, cs, ps, is_permitted, &peer, &seen, NULL, NULL)) {
    printf("permit=failed code=%d\n", np__turn_error_code(t));
    goto out;
  }
  printf("permit=ok\n");

  for (int phase = 0; phase < 2; phase++) {
    const char *label = phase == 0 ? "indication" : "channel";
    if (phase == 1) {
      np__turn_bind(t, &peer);
      if (!run_until(t, cs, ps, is_bound, &peer, &seen, NULL, NULL)) {
        printf("bind=failed code=%d\n", np__turn_error_code(t));
        goto out;
      }
      printf("channel=0x%04x\n", np__turn_channel(t, &peer));
    }
    char payload[64];
    snprintf(payload, sizeof payload, "natpunch turn %s payload", label);
    uint8_t out[NP_TURN_MAX_DATAGRAM];
    int n = np__turn_send(t, &peer, (const uint8_t *)payload, strlen(payload), out, sizeof out);
    if (n <= 0) {
      printf("%s_send=%s\n", label, np_strerror(n));
      goto out;
    }
    printf("%s_wire=%s\n", label, out[0] >= 0x40 ? "channeldata" : "send-indication");
    int64_t s0 = np__now_ms();
    unsigned before = seen.n;
    send(cs, out, (size_t)n, 0);
    uint8_t got[NP_TURN_MAX_DATAGRAM];
    size_t got_len = 0;
    struct want w = {&got_len};
    if (!run_until(t, cs, ps, got_data, &w, &seen, got, &got_len)) {
      printf("%s_echo=timeout peer_got=%u\n", label, seen.n - before);
      goto out;
    }
    char expect[80];
    snprintf(expect, sizeof expect, "echo:%s", payload);
    bool same = got_len == strlen(expect) && memcmp(got, expect, got_len) == 0;
    printf("%s_peer_from_relay=%s\n", label, seen.from_relay ? "yes" : "no");
    printf("%s_echo=%s rtt_ms=%lld\n", label, same ? "ok" : "mismatch",
           (long long)(np__now_ms() - s0));
    if (!same || !seen.from_relay || seen.n != before + 1)
      goto out;
  }

  np__turn_close(t, np__now_ms());
  if (!run_until(t, cs, ps, is_closed, NULL, &seen, NULL, NULL) ||
      np__turn_get_state(t) != NP_TURN_CLOSED) {
    printf("close=failed state=%s\n", np__turn_state_name(np__turn_get_state(t)));
    goto out;
  }
  printf("close=ok\n");
  rc = 0;
out:
  np__turn_free(t);
  close(cs);
  close(ps);
  return rc;
}
