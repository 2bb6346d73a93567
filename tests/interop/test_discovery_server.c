/*
 * The discovery server on loopback: a real server (two worker threads, four
 * sockets on 127.0.0.1/127.0.0.2) answering requests crafted with the codec.
 * Every wait is a poll() with a timeout and every loop is bounded, so a
 * broken server fails the test instead of hanging it.
 */
#include "natpunch.h"
#include "net/addr.h"
#include "net/udp.h"
#include "stun/stun.h"

#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

/* How long we wait for an answer that must come, and for one that must not.
 * The second is only a bound on the test's patience: drops are confirmed
 * through the counters, not through this silence alone. */
#define ANSWER_MS 2000
#define SILENCE_MS 150

struct server {
  np_discovery_server *srv;
  pthread_t thread;
  int run_rc;
  np_addr a11, a21, a12, a22; /* IP1:P1, IP2:P1, IP1:P2, IP2:P2 */
};

static struct server g_main;   /* RFC 5780 server, alt IP and port */
static struct server g_plain;  /* no alternate at all */

static void *run_server(void *arg) {
  struct server *s = arg;
  s->run_rc = np_discovery_server_run(s->srv);
  return NULL;
}

static np_addr addr(const char *text) {
  np_addr a;
  assert_int_equal(np_addr_parse(text, 1, &a), 0);
  return a;
}

/* A port free on both 127.0.0.1 and 127.0.0.2 right now, from the kernel. */
static uint16_t free_port_pair(void) {
  char err[NP_UDP_ERRLEN];
  for (int i = 0; i < 32; i++) {
    np_addr a = addr("127.0.0.1"), b = addr("127.0.0.2"), bound;
    np_addr_set_port(&a, 0);
    int fa = np__udp_bind(&a, 0, err);
    assert_true(fa >= 0);
    assert_int_equal(np__udp_local(fa, &bound), 0);
    np_addr_set_port(&b, np_addr_port(&bound));
    int fb = np__udp_bind(&b, 0, err);
    close(fa);
    if (fb >= 0) {
      close(fb);
      return np_addr_port(&bound);
    }
  }
  fail_msg("no free port pair");
  return 0;
}

static int start(struct server *s, const np_discovery_server_config *cfg) {
  memset(s, 0, sizeof *s);
  int rc = np_discovery_server_new(cfg, &s->srv);
  if (rc != 0)
    return rc;
  s->a11 = *np_discovery_server_local(s->srv);
  if (pthread_create(&s->thread, NULL, run_server, s) != 0)
    return NP_ERR_SYS;
  return 0;
}

static void stop(struct server *s) {
  if (!s->srv)
    return;
  np_discovery_server_stop(s->srv);
  pthread_join(s->thread, NULL);
  assert_int_equal(s->run_rc, 0);
  np_discovery_server_free(s->srv);
  s->srv = NULL;
}

static int group_setup(void **state) {
  (void)state;
  uint16_t p2 = free_port_pair();
  np_discovery_server_config cfg = {0};
  cfg.listen = addr("127.0.0.1");
  np_addr_set_port(&cfg.listen, 0);
  cfg.alt_ip = addr("127.0.0.2");
  cfg.alt_port = p2;
  cfg.threads = 2;
  if (start(&g_main, &cfg) != 0)
    return -1;
  uint16_t p1 = np_addr_port(&g_main.a11);
  g_main.a21 = addr("127.0.0.2");
  np_addr_set_port(&g_main.a21, p1);
  g_main.a12 = addr("127.0.0.1");
  np_addr_set_port(&g_main.a12, p2);
  g_main.a22 = addr("127.0.0.2");
  np_addr_set_port(&g_main.a22, p2);

  np_discovery_server_config plain = {0};
  plain.listen = addr("127.0.0.1");
  np_addr_set_port(&plain.listen, 0);
  plain.threads = 1;
  return start(&g_plain, &plain) == 0 ? 0 : -1;
}

static int group_teardown(void **state) {
  (void)state;
  stop(&g_main);
  stop(&g_plain);
  return 0;
}

/* ---- client helpers ---------------------------------------------------- */

static int client(const char *ip, np_addr *local) {
  char err[NP_UDP_ERRLEN];
  np_addr a = addr(ip);
  np_addr_set_port(&a, 0);
  int fd = np__udp_bind(&a, NP_UDP_NONBLOCK, err);
  assert_true(fd >= 0);
  assert_int_equal(np__udp_local(fd, local), 0);
  return fd;
}

static void send_to(int fd, const np_addr *to, const void *buf, size_t len) {
  ssize_t n = sendto(fd, buf, len, 0, &to->u.sa, np_addr_len(to));
  assert_int_equal(n, (ssize_t)len);
}

/* Waits up to ms for one datagram; returns its length or -1. */
static ssize_t recv_from(int fd, int ms, uint8_t *buf, size_t cap, np_addr *from) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  if (poll(&p, 1, ms) != 1)
    return -1;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  ssize_t n = recvfrom(fd, buf, cap, 0, (struct sockaddr *)&ss, &sl);
  if (n >= 0 && from)
    assert_int_equal(np__addr_from_sockaddr((struct sockaddr *)&ss, sl, from), 0);
  return n;
}

static const uint8_t TXID[NP_STUN_TXID_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

static void request(np_stun_writer *w, uint8_t *buf, size_t cap) {
  np__stun_writer_init(w, buf, cap, NP_STUN_BINDING | NP_STUN_REQUEST, NP_STUN_MAGIC_COOKIE,
                      TXID);
}

static size_t finish(np_stun_writer *w) {
  int n = np__stun_writer_finish(w);
  assert_true(n > 0);
  return (size_t)n;
}

/* Sends req to 'to' and decodes the answer, which must come from 'expect_from'. */
static size_t exchange(int fd, const np_addr *to, const uint8_t *req, size_t len,
                       const np_addr *expect_from, uint8_t *resp, np_stun_msg *msg) {
  send_to(fd, to, req, len);
  np_addr from;
  ssize_t n = recv_from(fd, ANSWER_MS, resp, NP_STUN_MAX_MESSAGE, &from);
  assert_true(n > 0);
  assert_true(np_addr_equal(&from, expect_from));
  assert_int_equal(np__stun_read(resp, (size_t)n, msg), 0);
  assert_memory_equal(msg->txid, req + 8, NP_STUN_TXID_LEN);
  return (size_t)n;
}

static void stats(const struct server *s, np_discovery_stats *st) {
  np_discovery_server_stats(s->srv, st);
}

/* Counters are published once per batch, just after the batch's answers
 * are sent, so poll them (bounded) rather than read them once. */
#define WAIT_COUNTER(s, field, want)                                         \
  do {                                                                       \
    np_discovery_stats st_;                                                  \
    for (int i_ = 0; i_ < 200; i_++) {                                       \
      stats((s), &st_);                                                      \
      if (st_.field >= (want))                                               \
        break;                                                               \
      poll(NULL, 0, 10);                                                     \
    }                                                                        \
    assert_true(st_.field >= (want));                                        \
  } while (0)

/* ---- tests ------------------------------------------------------------- */

static void test_binding(void **state) {
  (void)state;
  np_addr me;
  int fd = client("127.0.0.1", &me);
  uint8_t req[64], resp[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  request(&w, req, sizeof req);
  size_t len = finish(&w);
  np_stun_msg m;
  size_t n = exchange(fd, &g_main.a11, req, len, &g_main.a11, resp, &m);
  assert_int_equal(m.cls, NP_STUN_SUCCESS);
  assert_int_equal(m.method, NP_STUN_BINDING);
  assert_false(m.rfc3489);
  assert_true(m.present & NP_STUN_HAS_XOR_MAPPED);
  assert_true(np_addr_equal(&m.xor_mapped, &me));
  assert_true(np_addr_equal(&m.response_origin, &g_main.a11));
  assert_true(np_addr_equal(&m.other_address, &g_main.a22));
  /* Nothing more than needed: header + three IPv4 address attributes; no
   * SOFTWARE, no FINGERPRINT (the request had none), no MAPPED-ADDRESS. */
  assert_int_equal(n, 20 + 3 * 12);
  assert_false(m.present & (NP_STUN_HAS_SOFTWARE | NP_STUN_HAS_FINGERPRINT | NP_STUN_HAS_MAPPED));
  close(fd);
}

static void test_fingerprint_echoed(void **state) {
  (void)state;
  np_addr me;
  int fd = client("127.0.0.1", &me);
  uint8_t req[64], resp[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  request(&w, req, sizeof req);
  np__stun_put_fingerprint(&w);
  size_t len = finish(&w);
  np_stun_msg m;
  size_t n = exchange(fd, &g_main.a11, req, len, &g_main.a11, resp, &m);
  assert_true(m.present & NP_STUN_HAS_FINGERPRINT);
  assert_int_equal(n, 20 + 3 * 12 + 8);
  close(fd);
}

/* RFC 5780 §7.2: the answer leaves from the address with the requested
 * parts changed, relative to where the request arrived. */
static void check_change(const np_addr *to, uint32_t flags, const np_addr *want_from,
                         const np_addr *want_other) {
  np_addr me;
  int fd = client("127.0.0.1", &me);
  uint8_t req[64], resp[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  request(&w, req, sizeof req);
  np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, flags);
  size_t len = finish(&w);
  np_stun_msg m;
  exchange(fd, to, req, len, want_from, resp, &m);
  assert_int_equal(m.cls, NP_STUN_SUCCESS);
  assert_true(np_addr_equal(&m.xor_mapped, &me));
  assert_true(np_addr_equal(&m.response_origin, want_from));
  assert_true(np_addr_equal(&m.other_address, want_other));
  close(fd);
}

static void test_change_request(void **state) {
  (void)state;
  const struct server *s = &g_main;
  check_change(&s->a11, 0, &s->a11, &s->a22);
  check_change(&s->a11, NP_STUN_CHANGE_IP, &s->a21, &s->a22);
  check_change(&s->a11, NP_STUN_CHANGE_PORT, &s->a12, &s->a22);
  check_change(&s->a11, NP_STUN_CHANGE_IP | NP_STUN_CHANGE_PORT, &s->a22, &s->a22);
  /* From the other sockets, OTHER-ADDRESS and the changes are relative. */
  check_change(&s->a22, NP_STUN_CHANGE_IP | NP_STUN_CHANGE_PORT, &s->a11, &s->a11);
  check_change(&s->a21, NP_STUN_CHANGE_PORT, &s->a22, &s->a12);
  check_change(&s->a12, NP_STUN_CHANGE_IP, &s->a22, &s->a21);
  check_change(&s->a22, 0, &s->a22, &s->a11);
}

static void test_response_port(void **state) {
  (void)state;
  np_addr me, other;
  int fd = client("127.0.0.1", &me);
  int fd2 = client("127.0.0.1", &other);
  uint8_t req[64], resp[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  request(&w, req, sizeof req);
  np__stun_put_response_port(&w, np_addr_port(&other));
  np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, NP_STUN_CHANGE_IP);
  size_t len = finish(&w);
  send_to(fd, &g_main.a11, req, len);
  np_addr from;
  ssize_t n = recv_from(fd2, ANSWER_MS, resp, sizeof resp, &from);
  assert_true(n > 0);
  assert_true(np_addr_equal(&from, &g_main.a21));
  np_stun_msg m;
  assert_int_equal(np__stun_read(resp, (size_t)n, &m), 0);
  /* The mapping is still the sender's. */
  assert_true(np_addr_equal(&m.xor_mapped, &me));
  assert_int_equal(recv_from(fd, 0, resp, sizeof resp, NULL), -1);

  /* A privileged port is refused, and counted. */
  np_discovery_stats before;
  stats(&g_main, &before);
  request(&w, req, sizeof req);
  np__stun_put_response_port(&w, 53);
  len = finish(&w);
  send_to(fd, &g_main.a11, req, len);
  WAIT_COUNTER(&g_main, dropped_policy, before.dropped_policy + 1);
  assert_int_equal(recv_from(fd, SILENCE_MS, resp, sizeof resp, NULL), -1);
  close(fd);
  close(fd2);
}

static void test_rfc3489(void **state) {
  (void)state;
  np_addr me;
  int fd = client("127.0.0.1", &me);
  uint8_t req[64], resp[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  /* No magic cookie: a 16-byte RFC 3489 transaction ID. */
  np__stun_writer_init(&w, req, sizeof req, NP_STUN_BINDING | NP_STUN_REQUEST, 0xA1B2C3D4u, TXID);
  size_t len = finish(&w);
  np_stun_msg m;
  size_t n = exchange(fd, &g_main.a11, req, len, &g_main.a11, resp, &m);
  assert_true(m.rfc3489);
  assert_memory_equal(resp + 4, req + 4, 16);
  assert_true(m.present & NP_STUN_HAS_MAPPED);
  assert_true(np_addr_equal(&m.mapped, &me));
  assert_false(m.present & NP_STUN_HAS_XOR_MAPPED);
  assert_true(np_addr_equal(&m.source_address, &g_main.a11));
  assert_true(np_addr_equal(&m.changed_address, &g_main.a22));
  assert_int_equal(n, 20 + 3 * 12);

  /* Classic RFC 3489 CHANGE-REQUEST works the same way. */
  np__stun_writer_init(&w, req, sizeof req, NP_STUN_BINDING | NP_STUN_REQUEST, 0xA1B2C3D4u, TXID);
  np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, NP_STUN_CHANGE_IP | NP_STUN_CHANGE_PORT);
  len = finish(&w);
  exchange(fd, &g_main.a11, req, len, &g_main.a22, resp, &m);
  assert_true(np_addr_equal(&m.source_address, &g_main.a22));
  close(fd);
}

static void test_unknown_attribute(void **state) {
  (void)state;
  np_addr me;
  int fd = client("127.0.0.1", &me);
  uint8_t req[64], resp[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  request(&w, req, sizeof req);
  np__stun_put_bytes(&w, 0x7F01, "abcd", 4);
  np__stun_put_bytes(&w, 0xC001, "optional", 8); /* ignored: comprehension-optional */
  size_t len = finish(&w);
  np_stun_msg m;
  exchange(fd, &g_main.a11, req, len, &g_main.a11, resp, &m);
  assert_int_equal(m.cls, NP_STUN_ERROR);
  assert_int_equal(m.error_code, 420);
  assert_int_equal(m.n_unknown_listed, 1);
  assert_int_equal(m.unknown_listed[0], 0x7F01);
  close(fd);
}

/* A server without alternate address cannot change anything: 420 naming
 * CHANGE-REQUEST, as from a server that does not implement it. A
 * CHANGE-REQUEST asking for no change is answered normally. */
static void test_change_without_alternate(void **state) {
  (void)state;
  np_addr me;
  int fd = client("127.0.0.1", &me);
  uint8_t req[64], resp[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  request(&w, req, sizeof req);
  np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, NP_STUN_CHANGE_PORT);
  size_t len = finish(&w);
  np_stun_msg m;
  exchange(fd, &g_plain.a11, req, len, &g_plain.a11, resp, &m);
  assert_int_equal(m.error_code, 420);
  assert_int_equal(m.n_unknown_listed, 1);
  assert_int_equal(m.unknown_listed[0], NP_STUN_ATTR_CHANGE_REQUEST);

  /* The error goes to RESPONSE-PORT too (the client may listen only there). */
  np_addr other;
  int fd2 = client("127.0.0.1", &other);
  request(&w, req, sizeof req);
  np__stun_put_response_port(&w, np_addr_port(&other));
  np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, NP_STUN_CHANGE_IP);
  len = finish(&w);
  send_to(fd, &g_plain.a11, req, len);
  np_addr from;
  ssize_t got = recv_from(fd2, ANSWER_MS, resp, sizeof resp, &from);
  assert_true(got > 0);
  assert_true(np_addr_equal(&from, &g_plain.a11));
  assert_int_equal(np__stun_read(resp, (size_t)got, &m), 0);
  assert_int_equal(m.error_code, 420);
  close(fd2);

  request(&w, req, sizeof req);
  np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, 0);
  len = finish(&w);
  size_t n = exchange(fd, &g_plain.a11, req, len, &g_plain.a11, resp, &m);
  assert_int_equal(m.cls, NP_STUN_SUCCESS);
  assert_true(np_addr_equal(&m.xor_mapped, &me));
  assert_true(np_addr_equal(&m.response_origin, &g_plain.a11));
  assert_false(m.present & NP_STUN_HAS_OTHER_ADDRESS);
  assert_int_equal(n, 20 + 2 * 12);
  close(fd);
}

/* Requests with MESSAGE-INTEGRITY get an unauthenticated answer: this
 * server has no credentials to check or sign with. */
static void test_integrity_ignored(void **state) {
  (void)state;
  np_addr me;
  int fd = client("127.0.0.1", &me);
  uint8_t req[128], resp[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  request(&w, req, sizeof req);
  np__stun_put_bytes(&w, NP_STUN_ATTR_USERNAME, "user", 4);
  np__stun_put_integrity(&w, (const uint8_t *)"pass", 4);
  size_t len = finish(&w);
  np_stun_msg m;
  exchange(fd, &g_main.a11, req, len, &g_main.a11, resp, &m);
  assert_int_equal(m.cls, NP_STUN_SUCCESS);
  assert_false(m.present & NP_STUN_HAS_INTEGRITY);
  assert_true(np_addr_equal(&m.xor_mapped, &me));
  close(fd);
}

/* PADDING never makes an answer bigger, including coturn-style 1500-byte
 * padding beyond the codec's message limit. */
static void test_padding_no_amplification(void **state) {
  (void)state;
  np_addr me;
  int fd = client("127.0.0.1", &me);
  static uint8_t req[2048], pad[1500];
  uint8_t resp[NP_STUN_MAX_MESSAGE];
  size_t sizes[] = {100, 1500};
  for (size_t i = 0; i < 2; i++) {
    /* Built by hand: the writer keeps messages within NP_STUN_MAX_MESSAGE. */
    memset(req, 0, sizeof req);
    np_stun_writer w;
    request(&w, req, sizeof req);
    size_t len = finish(&w);
    req[len] = 0x00;
    req[len + 1] = 0x26;
    req[len + 2] = (uint8_t)(sizes[i] >> 8);
    req[len + 3] = (uint8_t)sizes[i];
    memcpy(req + len + 4, pad, sizes[i]);
    len += 4 + sizes[i];
    req[2] = (uint8_t)((len - 20) >> 8);
    req[3] = (uint8_t)(len - 20);
    np_stun_msg m;
    size_t n = exchange(fd, &g_main.a11, req, len, &g_main.a11, resp, &m);
    assert_int_equal(m.cls, NP_STUN_SUCCESS);
    assert_true(np_addr_equal(&m.xor_mapped, &me));
    assert_int_equal(n, 20 + 3 * 12);
    assert_true(n < len);
  }
  close(fd);
}

static void test_drops(void **state) {
  (void)state;
  np_addr me;
  int fd = client("127.0.0.1", &me);
  np_discovery_stats before;
  stats(&g_main, &before);
  uint8_t buf[64], resp[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;

  /* Malformed: garbage, a header announcing more than was sent, an
   * attribute overrunning the message, a short datagram. */
  const char garbage[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  send_to(fd, &g_main.a11, garbage, sizeof garbage - 1);
  request(&w, buf, sizeof buf);
  np__stun_put_u32(&w, NP_STUN_ATTR_CHANGE_REQUEST, 0);
  size_t len = finish(&w);
  send_to(fd, &g_main.a11, buf, len - 4); /* truncated */
  buf[22] = 0x00, buf[23] = 0x40;          /* attribute length beyond the end */
  send_to(fd, &g_main.a11, buf, len);
  send_to(fd, &g_main.a11, buf, 7);

  /* Ignored: a success response, an indication, a non-Binding request. */
  np__stun_writer_init(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_SUCCESS,
                      NP_STUN_MAGIC_COOKIE, TXID);
  np__stun_put_xor_addr(&w, NP_STUN_ATTR_XOR_MAPPED_ADDRESS, &me);
  send_to(fd, &g_main.a11, buf, finish(&w));
  np__stun_writer_init(&w, buf, sizeof buf, NP_STUN_BINDING | NP_STUN_INDICATION,
                      NP_STUN_MAGIC_COOKIE, TXID);
  send_to(fd, &g_main.a11, buf, finish(&w));
  np__stun_writer_init(&w, buf, sizeof buf, 0x003 /* TURN Allocate */ | NP_STUN_REQUEST,
                      NP_STUN_MAGIC_COOKIE, TXID);
  send_to(fd, &g_main.a11, buf, finish(&w));

  WAIT_COUNTER(&g_main, dropped_malformed, before.dropped_malformed + 4);
  WAIT_COUNTER(&g_main, dropped_ignored, before.dropped_ignored + 3);
  WAIT_COUNTER(&g_main, received, before.received + 7);
  assert_int_equal(recv_from(fd, SILENCE_MS, resp, sizeof resp, NULL), -1);

  /* Still alive and answering. */
  request(&w, buf, sizeof buf);
  len = finish(&w);
  np_stun_msg m;
  exchange(fd, &g_main.a11, buf, len, &g_main.a11, resp, &m);
  close(fd);
}

/* IPv6, with the opt-in SOFTWARE attribute. */
static void test_ipv6(void **state) {
  (void)state;
  np_discovery_server_config cfg = {0};
  cfg.listen = addr("::1");
  np_addr_set_port(&cfg.listen, 0);
  cfg.threads = 1;
  cfg.software = "natpunch-test"; /* opt-in SOFTWARE attribute */
  struct server s;
  int rc = start(&s, &cfg);
  if (rc != 0)
    skip(); /* no IPv6 loopback on this host */
  char err[NP_UDP_ERRLEN];
  np_addr me, a = addr("::1");
  np_addr_set_port(&a, 0);
  int fd = np__udp_bind(&a, NP_UDP_NONBLOCK | NP_UDP_V6ONLY, err);
  assert_true(fd >= 0);
  assert_int_equal(np__udp_local(fd, &me), 0);
  uint8_t req[64], resp[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  request(&w, req, sizeof req);
  size_t len = finish(&w);
  np_stun_msg m;
  size_t n = exchange(fd, &s.a11, req, len, &s.a11, resp, &m);
  assert_true(np_addr_equal(&m.xor_mapped, &me));
  assert_true(np_addr_equal(&m.response_origin, &s.a11));
  assert_true(m.present & NP_STUN_HAS_SOFTWARE);
  assert_int_equal(m.software_len, strlen("natpunch-test"));
  assert_memory_equal(m.software, "natpunch-test", m.software_len);
  assert_int_equal(n, 20 + 2 * 24 + 4 + 16);
  close(fd);
  stop(&s);
}

/* A wildcard listener answers from the address the request reached. */
static void test_wildcard(void **state) {
  (void)state;
  np_discovery_server_config cfg = {0};
  cfg.listen = addr("0.0.0.0");
  np_addr_set_port(&cfg.listen, 0);
  cfg.threads = 1;
  struct server s;
  assert_int_equal(start(&s, &cfg), 0);
  np_addr me;
  int fd = client("127.0.0.1", &me);
  np_addr to = addr("127.0.0.3");
  np_addr_set_port(&to, np_addr_port(&s.a11));
  uint8_t req[64], resp[NP_STUN_MAX_MESSAGE];
  np_stun_writer w;
  request(&w, req, sizeof req);
  size_t len = finish(&w);
  np_stun_msg m;
  exchange(fd, &to, req, len, &to, resp, &m);
  assert_true(np_addr_equal(&m.xor_mapped, &me));
  assert_true(np_addr_equal(&m.response_origin, &to));
  close(fd);
  stop(&s);
}

static char g_log[512];
static void capture_log(void *user, enum np_log_level level, const char *msg) {
  (void)user;
  if (level == NP_LOG_ERROR)
    snprintf(g_log, sizeof g_log, "%s", msg);
}

static void test_bad_config(void **state) {
  (void)state;
  np_discovery_server *srv = NULL;
  np_discovery_server_config cfg = {0};
  cfg.log = capture_log;
  cfg.log_level = NP_LOG_ERROR;
  /* Bind failure names the address (no packet is sent: bind is local). */
  cfg.listen = addr("198.51.100.77:3478");
  assert_int_equal(np_discovery_server_new(&cfg, &srv), NP_ERR_SYS);
  assert_null(srv);
  assert_string_equal(g_log, "bind 198.51.100.77:3478: Cannot assign requested address");
  /* Families must match; the alternate must differ. */
  cfg.listen = addr("127.0.0.1:3478");
  cfg.alt_ip = addr("::1");
  assert_int_equal(np_discovery_server_new(&cfg, &srv), NP_ERR_INVAL);
  cfg.alt_ip = addr("127.0.0.1");
  assert_int_equal(np_discovery_server_new(&cfg, &srv), NP_ERR_INVAL);
  memset(&cfg.alt_ip, 0, sizeof cfg.alt_ip);
  cfg.alt_port = 3478;
  assert_int_equal(np_discovery_server_new(&cfg, &srv), NP_ERR_INVAL);
  assert_null(srv);
  np_discovery_server_free(NULL);
}

/* stop() before run() makes run() return at once; the server can run again. */
static void test_stop_before_run(void **state) {
  (void)state;
  np_discovery_server_config cfg = {0};
  cfg.listen = addr("127.0.0.1");
  np_addr_set_port(&cfg.listen, 0);
  cfg.threads = 3;
  np_discovery_server *srv = NULL;
  assert_int_equal(np_discovery_server_new(&cfg, &srv), 0);
  np_discovery_server_stop(srv);
  assert_int_equal(np_discovery_server_run(srv), 0);
  np_discovery_server_stop(srv);
  assert_int_equal(np_discovery_server_run(srv), 0);
  np_discovery_server_free(srv);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_binding),
      cmocka_unit_test(test_fingerprint_echoed),
      cmocka_unit_test(test_change_request),
      cmocka_unit_test(test_response_port),
      cmocka_unit_test(test_rfc3489),
      cmocka_unit_test(test_unknown_attribute),
      cmocka_unit_test(test_change_without_alternate),
      cmocka_unit_test(test_integrity_ignored),
      cmocka_unit_test(test_padding_no_amplification),
      cmocka_unit_test(test_drops),
      cmocka_unit_test(test_ipv6),
      cmocka_unit_test(test_wildcard),
      cmocka_unit_test(test_bad_config),
      cmocka_unit_test(test_stop_before_run),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
