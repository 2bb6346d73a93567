/*
 * A hostile caller for tests/lab/test_hostile.sh: it registers with a
 * rendezvous server under its own key and sends a listener an offer whose
 * candidates it chooses freely (a third host's addresses, the listener's
 * LAN...), with a genuine session key so the listener would punch. It never
 * answers a probe: it only sits there, so what the listener sends is its own
 * decision. Test-only: built against the internal static library, not part
 * of the CLI.
 *
 * Usage: hostile_peer RDV_ADDR KEY_FILE PEER_ID WAIT_MS CANDIDATE...
 *   m=IP:PORT  a mapped (discovery) candidate; IP "self" is our public IP
 *              as the server saw it at registration
 *   h=IP:PORT  a private (host) candidate
 *   p=IP:PORT  the port-mapping candidate
 *   d=N        the port delta of our "NAT" (N != 0: a sequential one)
 * Prints "registered IP:PORT", then "answer ..." (the listener's answer or
 * decline; an answer gets a READY, so the listener probes and sweeps at
 * once), and exits 0 after WAIT_MS, 1 on errors.
 */
#include "natpunch.h"
#include "net/addr.h"
#include "rendezvous/rendezvous_client.h"
#include "util/clock.h"

#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct state {
  np_rdv_client *rdv;
  uint8_t peer[NP_PUBKEY_LEN], session[NP_SIG_SESSION_LEN];
  np_sig_candidates cand;
  char **args;
  int nargs;
  bool offered, answered;
};

static int parse_cands(struct state *s, const np_addr *observed) {
  memset(&s->cand, 0, sizeof s->cand);
  for (int i = 0; i < s->nargs; i++) {
    const char *a = s->args[i];
    if (strlen(a) < 3 || a[1] != '=') {
      fprintf(stderr, "bad candidate '%s'\n", a);
      return -1;
    }
    if (a[0] == 'd') {
      s->cand.have_delta = true;
      s->cand.delta = (int32_t)strtol(a + 2, NULL, 10);
      continue;
    }
    np_addr x;
    if (strncmp(a + 2, "self:", 5) == 0) {
      x = *observed;
      np_addr_set_port(&x, (uint16_t)strtoul(a + 7, NULL, 10));
    } else if (np_addr_parse(a + 2, 0, &x) != 0) {
      fprintf(stderr, "bad address in '%s'\n", a);
      return -1;
    }
    if (a[0] == 'm' && s->cand.n_mapped < NP_SIG_MAX_MAPPED)
      s->cand.mapped[s->cand.n_mapped++] = x;
    else if (a[0] == 'h' && s->cand.n_private < NP_SIG_MAX_PRIVATE)
      s->cand.private_addrs[s->cand.n_private++] = x;
    else if (a[0] == 'p')
      s->cand.portmap = x;
    else {
      fprintf(stderr, "bad or too many candidate(s) '%s'\n", a);
      return -1;
    }
  }
  /* A real X25519 key: the listener derives the session key and punches. */
  uint8_t sk[32];
  crypto_box_keypair(s->cand.kx, sk);
  s->cand.has_kx = true;
  sodium_memzero(sk, sizeof sk);
  return 0;
}

static void on_state(void *user, enum np_rdv_state st, const np_addr *observed) {
  struct state *s = user;
  if (st != NP_RDV_REGISTERED || s->offered || !observed)
    return;
  char t[NP_ADDRSTRLEN];
  printf("registered %s\n", np_addr_format(observed, t, sizeof t));
  if (parse_cands(s, observed) != 0)
    exit(1);
  randombytes_buf(s->session, sizeof s->session);
  if (np__rdv_client_send_offer(s->rdv, s->peer, s->session, &s->cand) != 0) {
    fprintf(stderr, "cannot send the offer\n");
    exit(1);
  }
  s->offered = true;
  fflush(stdout);
}

static void on_answer(void *user, const np_sig_msg *m) {
  struct state *s = user;
  if (memcmp(m->session, s->session, sizeof s->session) != 0)
    return;
  s->answered = true;
  if (m->error_code)
    printf("answer error %u %s\n", m->error_code, m->error_text);
  else {
    printf("answer candidates %d mapped %d private\n", m->cand.n_mapped, m->cand.n_private);
    /* READY, as a real caller sends once primed: the listener's full-TTL
     * probes and its sweep wait for it. */
    if (np__rdv_client_send_ready(s->rdv, m->from, s->session) != 0)
      printf("cannot send READY\n");
  }
  fflush(stdout);
}

static void on_error(void *user, uint16_t code, const char *text, const uint8_t *session) {
  (void)user;
  (void)session;
  printf("server error %u %s\n", code, text);
  fflush(stdout);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s RDV_ADDR KEY_FILE PEER_ID WAIT_MS CANDIDATE...\n", argv[0]);
    return 1;
  }
  if (sodium_init() < 0)
    return 1;
  struct state s;
  memset(&s, 0, sizeof s);
  s.args = argv + 5;
  s.nargs = argc - 5;
  np_addr server;
  np_identity *id = NULL;
  if (np_addr_parse(argv[1], 7000, &server) != 0 || np_identity_load(argv[2], &id) != 0 ||
      np_peer_id_parse(argv[3], s.peer) != 0) {
    fprintf(stderr, "bad server address, key file or peer ID\n");
    return 1;
  }
  long wait_ms = strtol(argv[4], NULL, 10);
  np_rdv_client_config rc = {.server = server,
                             .identity = id,
                             .on_state = on_state,
                             .on_answer = on_answer,
                             .on_error = on_error,
                             .user = &s};
  int64_t start = np__now_ms();
  if (np__rdv_client_new(&rc, start, &s.rdv) != 0)
    return 1;
  for (int64_t now = start; now - start < wait_ms; now = np__now_ms()) {
    short ev = 0;
    int fd = np__rdv_client_fd(s.rdv, &ev);
    struct pollfd pfd = {.fd = fd, .events = ev};
    int64_t w = np__rdv_client_wakeup(s.rdv) - now;
    int timeout = w < 0 ? 0 : w > 50 ? 50 : (int)w;
    int n = poll(&pfd, fd >= 0 ? 1 : 0, timeout);
    np__rdv_client_process(s.rdv, np__now_ms(), n > 0 ? pfd.revents : 0);
  }
  if (!s.answered)
    printf("no answer\n");
  np__rdv_client_free(s.rdv);
  np_identity_free(id);
  return 0;
}
