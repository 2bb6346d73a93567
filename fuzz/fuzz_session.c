/*
 * libFuzzer harness for the QUIC session (session/session.h).
 *
 * Input: one mode byte, then datagrams, each a 2-byte big-endian length
 * and that many bytes, each followed by a byte of time advance (ms).
 *  - mode even: a fresh server session is fed the datagrams as if from a
 *    client (the pre-handshake parsing: ngtcp2_accept, Initial packets,
 *    the guard that drops attempts without decryptable CRYPTO data).
 *  - mode odd: a client and a server first complete a real handshake in
 *    process, then the client is fed the datagrams as if from its server,
 *    from the server's address and from a stranger's (an established
 *    connection's parsing and its path logic).
 * After every datagram the harness drains np__session_send, runs due
 * timers and checks the API's invariants; any broken one aborts. It must
 * never crash, leak or hang.
 */
#include "fuzz_check.h"
#include "session/session.h"

#include <string.h>

#define CAP 1500

static np_identity *ids[2];
static np_addr c_addr, s_addr, stranger;

static void setup(void) {
  if (ids[0])
    return;
  CHECK(np_identity_generate(&ids[0]) == 0);
  CHECK(np_identity_generate(&ids[1]) == 0);
  CHECK(np_addr_parse("10.0.0.1:4000", 0, &c_addr) == 0);
  CHECK(np_addr_parse("10.0.0.2:5000", 0, &s_addr) == 0);
  CHECK(np_addr_parse("[2001:db8::9]:6000", 0, &stranger) == 0);
}

static np__session *make(bool client, int64_t now) {
  np__session_config cfg = {0};
  cfg.client = client;
  cfg.identity = ids[client ? 0 : 1];
  np_identity_public_key(ids[client ? 1 : 0], cfg.peer);
  cfg.local = client ? c_addr : s_addr;
  cfg.remote = client ? s_addr : c_addr;
  cfg.idle_timeout_ms = 2000;
  np__session *s = NULL;
  CHECK(np__session_new(&cfg, now, &s) == 0);
  return s;
}

static void check_state(np__session *s, int64_t now) {
  int64_t t = np__session_timeout(s, now);
  CHECK(t >= -1);
  enum np__session_state st = np__session_state(s);
  CHECK(st >= NP__SESSION_HANDSHAKE && st <= NP__SESSION_CLOSED);
  struct np__session_close_info ci;
  int rc = np__session_close_info(s, &ci);
  if (np__session_closed(s)) {
    CHECK(rc == 0);
    CHECK(memchr(ci.reason, '\0', sizeof ci.reason) != NULL);
  }
  struct np__session_stats stats;
  np__session_stats(s, &stats);
  CHECK(stats.bytes_sent >= stats.packets_sent || stats.packets_sent == 0);
}

/* Drains s; with `to` delivers what it sends there (immediately). */
static void pump(np__session *s, np__session *to, int64_t now) {
  uint8_t buf[CAP];
  np__session_path path;
  for (int i = 0; i < 256; i++) {
    int n = np__session_send(s, buf, sizeof buf, &path, now);
    CHECK(n <= CAP);
    if (n <= 0)
      return;
    /* Never a greased fixed bit: the shared socket demultiplexes on it. */
    CHECK(buf[0] & 0x40);
    if (to)
      np__session_recv(to, &path.remote, &path.local, buf, (size_t)n, now);
  }
}

static void tick(np__session *s, int64_t now) {
  if (np__session_timeout(s, now) == 0)
    np__session_on_timer(s, now);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  setup();
  if (size < 1)
    return 0;
  bool established_client = data[0] & 1;
  data++;
  size--;
  int64_t now = 1000;
  np__session *srv = NULL, *cli = NULL, *target;
  if (established_client) {
    cli = make(true, now);
    srv = make(false, now);
    for (int i = 0; i < 64 && !(np__session_established(cli) && np__session_established(srv));
         i++) {
      pump(cli, srv, now);
      pump(srv, cli, now);
      now++;
      tick(cli, now);
      tick(srv, now);
    }
    CHECK(np__session_established(cli));
    target = cli;
  } else {
    srv = make(false, now);
    target = srv;
  }
  size_t off = 0;
  int count = 0;
  while (off + 2 <= size && count++ < 64) {
    size_t len = (size_t)data[off] << 8 | data[off + 1];
    off += 2;
    if (len > size - off)
      len = size - off;
    const np_addr *from = target == cli ? ((count & 1) ? &s_addr : &stranger) : &c_addr;
    const np_addr *local = target == cli ? &c_addr : &s_addr;
    int rc = np__session_recv(target, local, from, data + off, len, now);
    CHECK(rc <= 0);
    off += len;
    if (off < size)
      now += data[off++];
    tick(target, now);
    pump(target, NULL, now);
    check_state(target, now);
  }
  /* Whatever state it is in, the session must still close and free. */
  if (!np__session_closed(target))
    CHECK(np__session_close(target, 0, "fuzz done") == 0);
  pump(target, NULL, now);
  check_state(target, now);
  np__session_free(cli);
  np__session_free(srv);
  return 0;
}
