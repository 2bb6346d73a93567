/* The path (path/path.h): the RFC 9443 first-byte classes, datagrams on
 * loopback reaching on_datagram through the event loop by class, with the
 * socket they came on, and trains (GSO/sendmmsg out, GRO in) arriving as
 * their datagrams. Loopback only; every wait is bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "natpunch.h"
#include "net/addr.h"
#include "net/loop.h"
#include "net/udp.h"
#include "path/path.h"

#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void classify(void **state) {
  (void)state;
  uint8_t b[1];
  for (int v = 0; v < 256; v++) {
    b[0] = (uint8_t)v;
    enum np_path_class want = v <= 3                              ? NP_PATH_STUN
                                                            : (v >= 64 && v <= 127) || v >= 192 ? NP_PATH_QUIC
                                                                  : NP_PATH_OTHER;
    assert_int_equal(np__path_classify(b, 1), want);
  }
  assert_int_equal(np__path_classify(b, 0), NP_PATH_OTHER);
}

struct seen {
  int n;
  enum np_path_class cls[8];
  int sock[8];
  uint8_t first[8];
  size_t len[8];
  uint8_t second[8];
};

static void on_dgram(void *user, enum np_path_class cls, int sock, const np_addr *from,
                     const uint8_t *buf, size_t len, int64_t now) {
  (void)from;
  (void)now;
  struct seen *s = user;
  assert_true(len > 0);
  if (s->n < 8) {
    s->cls[s->n] = cls;
    s->sock[s->n] = sock;
    s->first[s->n] = buf[0];
    s->len[s->n] = len;
    s->second[s->n] = len > 1 ? buf[1] : 0;
  }
  s->n++;
}

static void demux_over_loopback(void **state) {
  (void)state;
  np_loop *loop = NULL;
  assert_int_equal(np__loop_new(NULL, &loop), 0);
  struct seen s = {0};
  np_path_config cfg = {.family = AF_INET, .loop = loop, .on_datagram = on_dgram, .user = &s};
  np_path *p = NULL;
  assert_int_equal(np__path_new(&cfg, &p), 0);
  assert_int_equal(np__path_ensure(p, 2), 0);
  assert_int_equal(np__path_count(p), 2);
  np_addr to;
  assert_int_equal(np__udp_local(np__path_fd(p, 1), &to), 0);
  assert_int_equal(np_addr_parse("127.0.0.1", np_addr_port(&to), &to), 0);
  /* From socket 0 to socket 1: one of each class; only STUN and QUIC are
   * handed over (4 and 5 were the old plain data path's, now nobody's). */
  const uint8_t firsts[] = {0x01, 0x04, 0x40, 0xc3, 0x10, 0x05};
  for (size_t i = 0; i < sizeof firsts; i++) {
    uint8_t d[24] = {firsts[i]};
    assert_int_equal(np__path_send(p, 0, &to, 0, d, sizeof d), 0);
  }
  for (int turn = 0; turn < 50 && s.n < 3; turn++)
    assert_true(np__loop_process(loop, 100) >= 0); /* bounded: 5 s at worst */
  assert_int_equal(s.n, 3);
  assert_int_equal(s.cls[0], NP_PATH_STUN);
  assert_int_equal(s.cls[1], NP_PATH_QUIC);
  assert_int_equal(s.first[1], 0x40);
  assert_int_equal(s.cls[2], NP_PATH_QUIC);
  assert_int_equal(s.first[2], 0xc3);
  for (int i = 0; i < 3; i++)
    assert_int_equal(s.sock[i], 1);
  /* Socket 1 closed: its slot reads -1, socket 0 stays. */
  np__path_keep_only(p, 0);
  assert_int_equal(np__path_fd(p, 1), -1);
  assert_true(np__path_fd(p, 0) >= 0);
  assert_int_equal(np__path_send(p, 1, &to, 0, "x", 1), NP_ERR_INVAL);
  np__path_close_extra(p);
  assert_int_equal(np__path_count(p), 1);
  np__path_free(p);
  np__loop_free(loop);
}

/* A train (GSO or sendmmsg, whichever this kernel does) arrives as its
 * datagrams, each whole and in order, whether the receiving socket got
 * them one by one or as one GRO train; malformed trains are refused. */
static void train_over_loopback(void **state) {
  (void)state;
  np_loop *loop = NULL;
  assert_int_equal(np__loop_new(NULL, &loop), 0);
  struct seen s = {0};
  np_path_config cfg = {.family = AF_INET, .loop = loop, .on_datagram = on_dgram, .user = &s};
  np_path *p = NULL;
  assert_int_equal(np__path_new(&cfg, &p), 0);
  assert_int_equal(np__path_ensure(p, 2), 0);
  np_addr to;
  assert_int_equal(np__udp_local(np__path_fd(p, 1), &to), 0);
  assert_int_equal(np_addr_parse("127.0.0.1", np_addr_port(&to), &to), 0);
  enum { SEG = 1000, N = 5, LAST = 300 };
  static uint8_t train[(N - 1) * SEG + LAST];
  for (int i = 0; i < N; i++) {
    size_t off = (size_t)i * SEG;
    size_t l = i == N - 1 ? LAST : SEG;
    memset(train + off, 0x40 + i, l); /* QUIC short-header class */
    train[off + 1] = (uint8_t)i;      /* its place in the train */
  }
  assert_int_equal(np__path_send_train(p, 0, &to, train, sizeof train, SEG), N);
  for (int turn = 0; turn < 50 && s.n < N; turn++)
    assert_true(np__loop_process(loop, 100) >= 0); /* bounded: 5 s at worst */
  assert_int_equal(s.n, N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(s.cls[i], NP_PATH_QUIC);
    assert_int_equal(s.sock[i], 1);
    assert_int_equal(s.first[i], 0x40 + i);
    assert_int_equal(s.second[i], i);
    assert_int_equal(s.len[i], i == N - 1 ? LAST : SEG);
  }
  /* One datagram is a train too. */
  assert_int_equal(np__path_send_train(p, 0, &to, train, 100, SEG), 1);
  /* Too many datagrams, too many bytes, no segment size, no socket. */
  static uint8_t big[NP_PATH_TRAIN_BYTES + 1];
  assert_int_equal(np__path_send_train(p, 0, &to, big, (NP_PATH_TRAIN_MAX + 1) * 10, 10),
                   NP_ERR_INVAL);
  assert_int_equal(np__path_send_train(p, 0, &to, big, sizeof big, 1200), NP_ERR_INVAL);
  assert_int_equal(np__path_send_train(p, 0, &to, train, sizeof train, 0), NP_ERR_INVAL);
  assert_int_equal(np__path_send_train(p, 7, &to, train, sizeof train, SEG), NP_ERR_INVAL);
  np__path_free(p);
  np__loop_free(loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(classify),
      cmocka_unit_test(demux_over_loopback),
      cmocka_unit_test(train_over_loopback),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
