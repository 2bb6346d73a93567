/*
 * A direct path to a peer across NATs with libnatpunch's agent: one side
 * listens, the other calls it by peer ID; once the encrypted session is up
 * (the peer proved its key), the caller opens a stream, both send "hello
 * from <id>" on it and half-close, and each prints what the other sent.
 *
 *   cc connect.c $(pkg-config --cflags --libs natpunch) -o connect_example
 *   ./connect_example 203.0.113.4:7000 203.0.113.1:3478 203.0.113.3:3478 alice.key
 *   ./connect_example 203.0.113.4:7000 203.0.113.1:3478 203.0.113.3:3478 bob.key PEERID
 *
 * The key file is created on first use. The agent never blocks on its own:
 * this program gives it the main thread and calls np_agent_wait(), which
 * processes I/O and timers until an event or stream data is ready. (In an
 * event loop, poll np_agent_fd() with np_agent_timeout() instead and call
 * np_agent_process() when it is readable or the timeout expires.)
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <natpunch.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: %s RENDEZVOUS DISC1 DISC2 KEYFILE [PEERID]\n", argv[0]);
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  np_agent_config cfg = {.n_discovery = 2, .listen = argc == 5}; /* zeros: defaults */
  uint8_t peer[NP_PUBKEY_LEN];
  if (np_addr_parse(argv[1], 7000, &cfg.rendezvous) != 0 ||
      np_addr_parse(argv[2], 3478, &cfg.discovery[0]) != 0 ||
      np_addr_parse(argv[3], 3478, &cfg.discovery[1]) != 0) {
    fprintf(stderr, "addresses are numeric IP:PORT\n");
    return 2;
  }
  if (argc == 6 && np_peer_id_parse(argv[5], peer) != 0) {
    fprintf(stderr, "not a peer ID: %s\n", argv[5]);
    return 2;
  }
  np_identity *me = NULL;
  bool created = false;
  int rc = np_identity_load_or_create(argv[4], &me, &created);
  if (rc != 0) {
    fprintf(stderr, "key %s: %s\n", argv[4], np_strerror(rc));
    return 1;
  }
  char id[NP_PEER_ID_LEN + 1], hello[100];
  np_identity_peer_id(me, id);
  snprintf(hello, sizeof hello, "hello from %s", id);
  printf("I am %s%s\n", id, created ? " (new key)" : "");
  cfg.identity = me;

  np_agent *agent = NULL;
  if ((rc = np_agent_new(&cfg, &agent)) != 0 ||
      (argc == 6 && (rc = np_agent_connect(agent, peer)) != 0)) {
    fprintf(stderr, "agent: %s\n", np_strerror(rc));
    np_agent_free(agent);
    np_identity_free(me);
    return 1;
  }
  if (argc == 6)
    printf("calling %s\n", argv[5]);

  /* One session, 60 s at most: until the peer's hello has ended (its
   * half-close) and ours is acknowledged, or the session ends. */
  bool connected = false, ended = false, sent = false, got_all = false;
  int64_t stream = -1;
  char got[1200];
  size_t got_len = 0;
  long long deadline = now_ms() + 60000;
  while (!ended && now_ms() < deadline) {
    rc = np_agent_wait(agent, 100); /* 0: an event or stream news is ready */
    if (rc != 0 && rc != NP_ERR_TIMEOUT) {
      fprintf(stderr, "agent: %s\n", np_strerror(rc));
      break;
    }
    np_agent_event ev;
    while (np_agent_next_event(agent, &ev)) {
      char text[NP_ADDRSTRLEN], who[NP_PEER_ID_LEN + 1];
      np_peer_id_format(ev.peer, who);
      switch (ev.type) {
      case NP_AGENT_REGISTERED:
        printf("registered (the server sees us at %s)\n",
               np_addr_format(&ev.observed, text, sizeof text));
        break;
      case NP_AGENT_CALL:
        printf("call from %s\n", who);
        break;
      case NP_AGENT_CONNECTED:
        printf("connected to %s\n", who);
        connected = true;
        if (argc == 6 && np_agent_stream_open(agent, &stream) != 0)
          ended = true; /* the caller opens the stream */
        break;
      case NP_AGENT_STREAM:
        if (stream < 0)
          (void)np_agent_stream_accept(agent, &stream);
        break;
      case NP_AGENT_FAILED:
        printf("failed: %s\n", ev.reason);
        ended = argc == 6; /* a listener waits for the next call */
        break;
      case NP_AGENT_CLOSED:
        printf("closed: %s\n", ev.reason);
        ended = true;
        break;
      case NP_AGENT_REPLACED:
        printf("%s\n", ev.reason);
        ended = true;
        break;
      case NP_AGENT_PATH_CHANGED:
        printf("the path moved to %s\n", np_addr_format(&ev.observed, text, sizeof text));
        break;
      }
    }
    if (!connected || stream < 0)
      continue;
    if (!sent && np_agent_stream_write(agent, stream, hello, strlen(hello)) ==
                     (long)strlen(hello)) {
      (void)np_agent_stream_shutdown(agent, stream); /* our end: the peer reads 0 after it */
      sent = true;
    }
    /* Whatever arrived, also after CLOSED (it stays readable). */
    long n;
    while (!got_all && (n = np_agent_stream_read(agent, stream, got + got_len,
                                                 sizeof got - 1 - got_len)) >= 0) {
      if (n == 0 || got_len + (size_t)n == sizeof got - 1) {
        got[got_len += (size_t)n] = '\0';
        printf("received: %s\n", got);
        got_all = true;
      } else {
        got_len += (size_t)n;
      }
    }
    /* Done when we have all of the peer's hello and it has all of ours. */
    int st = np_agent_stream_state(agent, stream);
    if (got_all && sent && (st < 0 || (st & NP_STREAM_WRITE_ACKED)))
      ended = true;
  }

  np_session_stats st;
  np_agent_stats(agent, &st);
  if (connected) {
    char remote[NP_ADDRSTRLEN];
    printf("path: via %s, remote %s, elapsed %lld ms, %u probes sent, %u received\n",
           np_via_name(st.via), np_addr_format(&st.remote, remote, sizeof remote),
           (long long)st.elapsed_ms, st.probes_sent, st.probes_received);
  }
  np_agent_free(agent); /* closes the session: the peer's CLOSED says normal */
  np_identity_free(me);
  return got_all ? 0 : 1;
}
