/*
 * natpunch listen / natpunch connect: the signaling stage.
 *
 * Both gather their candidates on one UDP socket (interface addresses, and
 * the mappings the discovery servers report for that socket), register with
 * the rendezvous server, and exchange a signed offer and answer. The
 * traversal that turns these into a direct path is the next stage; until
 * its public agent API exists these commands drive the internal rendezvous
 * client directly (which is why the CLI links the static library).
 *
 * Events are JSON lines (--json) or sentences on stderr: stdout is kept for
 * the data the peers will exchange once the path is up.
 */
#include "cli.h"

#include "rendezvous/rendezvous_client.h"
#include "signaling/signaling.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <ifaddrs.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_STUN_PORT 3478
#define DEFAULT_RDV_PORT 7000

struct peer_opts {
  const char *cmd;
  bool listen;
  np_addr rendezvous;
  bool have_rendezvous;
  np_addr discovery[NP_PROBE_MAX_SERVERS];
  int n_discovery;
  const char *key_path;
  uint8_t allow[NP_SIG_MAX_ALLOW][NP_PUBKEY_LEN];
  int n_allow;
  uint8_t peer[NP_PUBKEY_LEN];
  bool have_peer;
  int timeout_ms;
  bool json;
  bool verbose;
};

/* What the run loop needs from the callbacks. */
struct peer_run {
  struct peer_opts *o;
  np_rdv_client *client;
  np_sig_candidates cand;
  char id[NP_PEER_ID_LEN + 1];
  uint8_t session[NP_SIG_SESSION_LEN];
  bool offered;
  bool done;     /* connect: answer or refusal received */
  int exit_code; /* CLI_EXIT_* once done */
};

static void listen_usage(FILE *out) {
  fprintf(out,
          "Usage: natpunch listen --rendezvous IP:PORT [--discovery IP:PORT]... [OPTIONS]\n\n"
          "Registers this peer's ID with the rendezvous server and answers every offer\n"
          "from an allowed caller with this host's candidates (interface addresses and,\n"
          "with --discovery, the public mappings of its UDP socket). This release stops\n"
          "at the exchange of offer and answer; the direct path comes with the traversal\n"
          "engine. Runs until SIGINT or SIGTERM.\n\n"
          "Options:\n"
          "  -r, --rendezvous IP[:PORT]  rendezvous server (port defaults to %d)\n"
          "  -d, --discovery IP[:PORT]   discovery server, up to twice (port defaults to %d)\n"
          "  -k, --key FILE              identity key (default ~/.config/natpunch/key,\n"
          "                              created on first use)\n"
          "  -a, --allow PEERID          accept calls only from this peer; repeatable\n"
          "  -A, --allow-file FILE       accept calls only from the peer IDs in FILE, one\n"
          "                              per line ('#' starts a comment)\n"
          "                              (without --allow/--allow-file anyone may call;\n"
          "                              refused callers get error 403 from the server and\n"
          "                              never reach this process)\n"
          "  -j, --json                  events as JSON lines on stderr\n"
          "  -v, --verbose               log protocol steps\n"
          "  -h, --help                  show this help\n\n"
          "JSON events: {\"event\":\"listening\",\"id\":...,\"observed\":...} on each\n"
          "registration, {\"event\":\"offer\",\"from\":...,\"session\":...,\"candidates\":...}\n"
          "per offer answered, {\"event\":\"failed\",\"reason\":...}.\n\n"
          "Exit status: 0 stopped by SIGINT/SIGTERM; 1 failure (bad key, no UDP\n"
          "socket); 2 bad command line.\n",
          DEFAULT_RDV_PORT, DEFAULT_STUN_PORT);
}

static void connect_usage(FILE *out) {
  fprintf(out,
          "Usage: natpunch connect --rendezvous IP:PORT --peer PEERID [--discovery IP:PORT]...\n"
          "                        [OPTIONS]\n\n"
          "Sends a signed offer with this host's candidates to PEERID through the\n"
          "rendezvous server and waits for the peer's signed answer. This release stops\n"
          "at the exchange of offer and answer; the direct path comes with the traversal\n"
          "engine.\n\n"
          "Options:\n"
          "  -r, --rendezvous IP[:PORT]  rendezvous server (port defaults to %d)\n"
          "  -p, --peer PEERID           the peer to call\n"
          "  -d, --discovery IP[:PORT]   discovery server, up to twice (port defaults to %d)\n"
          "  -k, --key FILE              identity key (default ~/.config/natpunch/key,\n"
          "                              created on first use)\n"
          "  -t, --timeout SEC           give up after SEC seconds (default 10, max 3600)\n"
          "  -j, --json                  events as JSON lines on stderr\n"
          "  -v, --verbose               log protocol steps\n"
          "  -h, --help                  show this help\n\n"
          "JSON events: {\"event\":\"answer\",\"from\":...,\"session\":...,\"candidates\":...,\n"
          "\"peer_seen\":...} or {\"event\":\"failed\",\"reason\":...}.\n\n"
          "Exit status: 0 the peer answered; 1 no answer (unknown or offline peer,\n"
          "refused by the peer's allow list, timeout, bad key); 2 bad command line.\n",
          DEFAULT_RDV_PORT, DEFAULT_STUN_PORT);
}

/* ---- output ------------------------------------------------------------- */

static void hex(const uint8_t *b, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[b[i] >> 4];
    out[2 * i + 1] = digits[b[i] & 15];
  }
  out[2 * n] = '\0';
}

static cJSON *json_addr(const np_addr *a) {
  char buf[NP_ADDRSTRLEN];
  return np_addr_port(a) ? cJSON_CreateString(np_addr_format(a, buf, sizeof buf))
                         : cJSON_CreateNull();
}

static cJSON *json_candidates(const np_sig_candidates *c) {
  cJSON *o = cJSON_CreateObject();
  cJSON *priv = cJSON_AddArrayToObject(o, "private");
  for (int i = 0; i < c->n_private; i++)
    cJSON_AddItemToArray(priv, json_addr(&c->private_addrs[i]));
  cJSON *mapped = cJSON_AddArrayToObject(o, "mapped");
  for (int i = 0; i < c->n_mapped; i++)
    cJSON_AddItemToArray(mapped, json_addr(&c->mapped[i]));
  if (c->have_delta)
    cJSON_AddNumberToObject(o, "delta", c->delta);
  else
    cJSON_AddNullToObject(o, "delta");
  cJSON_AddStringToObject(o, "mapping",
                          np_nat_behavior_name(c->have_nat ? c->mapping : NP_BEHAVIOR_UNKNOWN));
  cJSON_AddStringToObject(o, "filtering",
                          np_nat_behavior_name(c->have_nat ? c->filtering : NP_BEHAVIOR_UNKNOWN));
  cJSON_AddItemToObject(o, "portmap", json_addr(&c->portmap));
  return o;
}

/* One event: a JSON line with --json, else the sentence. Takes o. */
static void emit(const struct peer_opts *opts, cJSON *o, const char *sentence) {
  if (opts->json) {
    char *text = cJSON_PrintUnformatted(o);
    if (text)
      fprintf(stderr, "%s\n", text);
    free(text);
  } else {
    fprintf(stderr, "natpunch %s: %s\n", opts->cmd, sentence);
  }
  cJSON_Delete(o);
}

static void emit_failed(const struct peer_opts *opts, const char *reason) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "event", "failed");
  cJSON_AddStringToObject(o, "reason", reason);
  emit(opts, o, reason);
}

/* The event for a received offer or answer. */
static void emit_exchange(const struct peer_opts *opts, const char *event, const np_sig_msg *m) {
  char from[NP_PEER_ID_LEN + 1], session[2 * NP_SIG_SESSION_LEN + 1], seen[NP_ADDRSTRLEN];
  np_peer_id_format(m->from, from);
  hex(m->session, sizeof m->session, session);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "event", event);
  cJSON_AddStringToObject(o, "from", from);
  cJSON_AddStringToObject(o, "session", session);
  cJSON_AddItemToObject(o, "candidates", json_candidates(&m->cand));
  cJSON_AddItemToObject(o, "observed", json_addr(&m->observed));
  if (m->type == NP_SIG_ANSWER)
    cJSON_AddItemToObject(o, "peer_seen", json_addr(&m->peer_seen));
  char sentence[512], first[NP_ADDRSTRLEN];
  snprintf(sentence, sizeof sentence,
           "%s from %s: %d private, %d public address(es)%s%s; server saw it at %s", event, from,
           m->cand.n_private, m->cand.n_mapped, m->cand.n_mapped ? ", first " : "",
           m->cand.n_mapped ? np_addr_format(&m->cand.mapped[0], first, sizeof first) : "",
           np_addr_format(&m->observed, seen, sizeof seen));
  emit(opts, o, sentence);
}

/* ---- candidates --------------------------------------------------------- */

/* Interface addresses of the socket's family with the socket's port.
 * Loopback is left out unless there is nothing else (a lone host). */
static void gather_private(int fd, np_sig_candidates *c) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
    return;
  uint16_t port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  struct ifaddrs *ifs = NULL;
  if (getifaddrs(&ifs) != 0)
    return;
  for (int pass = 0; pass < 2 && c->n_private == 0; pass++) {
    for (struct ifaddrs *i = ifs; i && c->n_private < NP_SIG_MAX_PRIVATE; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != ss.ss_family)
        continue;
      np_addr a = {0};
      memcpy(&a.u, i->ifa_addr,
             ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
      bool loop = ss.ss_family == AF_INET ? (ntohl(a.u.in4.sin_addr.s_addr) >> 24) == 127
                                          : IN6_IS_ADDR_LOOPBACK(&a.u.in6.sin6_addr);
      bool link_local = ss.ss_family == AF_INET6 && IN6_IS_ADDR_LINKLOCAL(&a.u.in6.sin6_addr);
      if (link_local || (loop && pass == 0))
        continue;
      np_addr_set_port(&a, port);
      c->private_addrs[c->n_private++] = a;
    }
  }
  freeifaddrs(ifs);
}

/* Opens the UDP socket the candidates describe, and queries the discovery
 * servers from it. */
static int gather(const struct peer_opts *o, int *fd_out, np_sig_candidates *c) {
  memset(c, 0, sizeof *c);
  int family = o->n_discovery ? o->discovery[0].u.sa.sa_family : AF_INET;
  int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  np_addr any = {0};
  any.u.sa.sa_family = (sa_family_t)family;
  if (fd < 0 || bind(fd, &any.u.sa, np_addr_len(&any)) != 0) {
    fprintf(stderr, "natpunch %s: UDP socket: %s\n", o->cmd, strerror(errno));
    if (fd >= 0)
      close(fd);
    return -1;
  }
  gather_private(fd, c);
  if (o->n_discovery) {
    np_probe_config pc = {0};
    memcpy(pc.servers, o->discovery, sizeof pc.servers);
    pc.n_servers = o->n_discovery;
    pc.fd = fd;
    pc.use_fd = true;
    pc.log = cli_log_stderr;
    pc.log_level = o->verbose ? NP_LOG_DEBUG : NP_LOG_WARN;
    np_probe_result r;
    int rc = np_probe_run(&pc, &r);
    if (rc != 0 && r.n_mapped == 0)
      fprintf(stderr,
              "natpunch %s: warning: no discovery server answered (%s); offering "
              "private addresses only\n",
              o->cmd, np_strerror(rc));
    for (int i = 0; i < NP_PROBE_MAX_SERVERS; i++)
      if (np_addr_port(&r.mapped[i]))
        c->mapped[c->n_mapped++] = r.mapped[i];
    c->have_delta = r.have_delta;
    c->delta = r.delta;
    c->have_nat = r.n_mapped > 0;
    c->mapping = (uint8_t)r.mapping;
    c->filtering = (uint8_t)r.filtering;
  }
  *fd_out = fd;
  return 0;
}

/* ---- rendezvous callbacks ----------------------------------------------- */

static void on_state(void *user, enum np_rdv_state state, const np_addr *observed) {
  struct peer_run *run = user;
  if (state != NP_RDV_REGISTERED)
    return;
  char seen[NP_ADDRSTRLEN], sentence[256];
  np_addr_format(observed, seen, sizeof seen);
  if (run->o->listen) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "listening");
    cJSON_AddStringToObject(o, "id", run->id);
    cJSON_AddItemToObject(o, "observed", json_addr(observed));
    snprintf(sentence, sizeof sentence, "listening as %s (the server sees us at %s)", run->id,
             seen);
    emit(run->o, o, sentence);
  } else if (!run->offered) {
    if (np_rdv_client_send_offer(run->client, run->o->peer, run->session, &run->cand) == 0)
      run->offered = true;
  }
}

static void on_offer(void *user, const np_sig_msg *offer) {
  struct peer_run *run = user;
  if (!run->o->listen)
    return; /* a connecting peer takes no calls */
  emit_exchange(run->o, "offer", offer);
  /* The caller's public address as the server saw it is the best
   * correction we can offer until probes run. */
  const np_addr *seen = np_addr_port(&offer->observed) ? &offer->observed : NULL;
  if (np_rdv_client_send_answer(run->client, offer->from, offer->session, &run->cand, seen) != 0)
    fprintf(stderr, "natpunch listen: could not queue the answer (output full)\n");
}

static void on_answer(void *user, const np_sig_msg *answer) {
  struct peer_run *run = user;
  if (run->o->listen || memcmp(answer->session, run->session, NP_SIG_SESSION_LEN) != 0 ||
      memcmp(answer->from, run->o->peer, NP_PUBKEY_LEN) != 0)
    return;
  emit_exchange(run->o, "answer", answer);
  run->done = true;
  run->exit_code = CLI_EXIT_OK;
}

static void on_error(void *user, uint16_t code, const char *text, const uint8_t *session) {
  struct peer_run *run = user;
  char reason[300];
  const char *what = code == NP_SIG_E_UNKNOWN_PEER ? "peer unknown or offline"
                     : code == NP_SIG_E_REFUSED    ? "the peer does not accept calls from us"
                                                   : text;
  snprintf(reason, sizeof reason, "rendezvous server: %s (%u)", what, code);
  if (!run->o->listen && session && memcmp(session, run->session, NP_SIG_SESSION_LEN) == 0) {
    emit_failed(run->o, reason);
    run->done = true;
    run->exit_code = CLI_EXIT_FAIL;
  } else {
    fprintf(stderr, "natpunch %s: %s\n", run->o->cmd, reason);
  }
}

/* ---- options and the loop ------------------------------------------------ */

static int add_allow(struct peer_opts *o, const char *text, const char *where) {
  if (o->n_allow == NP_SIG_MAX_ALLOW)
    return cli_usage_error(o->cmd, "more than %d allowed peers", NP_SIG_MAX_ALLOW);
  if (np_peer_id_parse(text, o->allow[o->n_allow]) != 0)
    return cli_usage_error(o->cmd, "%s: '%s' is not a peer ID (52 base32 characters)", where, text);
  o->n_allow++;
  return 0;
}

static int read_allow_file(struct peer_opts *o, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f)
    return cli_usage_error(o->cmd, "--allow-file: cannot open '%s': %s", path, strerror(errno));
  char line[256];
  int lineno = 0, rc = 0;
  while (rc == 0 && fgets(line, sizeof line, f)) {
    lineno++;
    char *hash = strchr(line, '#');
    if (hash)
      *hash = '\0';
    char *start = line + strspn(line, " \t\r\n");
    char *end = start + strcspn(start, " \t\r\n");
    char *rest = end + strspn(end, " \t\r\n");
    if (start == end)
      continue;
    *end = '\0';
    char where[300];
    snprintf(where, sizeof where, "%s line %d", path, lineno);
    if (*rest)
      rc = cli_usage_error(o->cmd, "%s: one peer ID per line", where);
    else
      rc = add_allow(o, start, where);
  }
  fclose(f);
  return rc;
}

static int parse(struct peer_opts *o, int argc, char **argv) {
  static const struct option opts[] = {{"rendezvous", required_argument, NULL, 'r'},
                                       {"discovery", required_argument, NULL, 'd'},
                                       {"key", required_argument, NULL, 'k'},
                                       {"allow", required_argument, NULL, 'a'},
                                       {"allow-file", required_argument, NULL, 'A'},
                                       {"peer", required_argument, NULL, 'p'},
                                       {"timeout", required_argument, NULL, 't'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  int c, rc;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":r:d:k:a:A:p:t:jvh", opts, NULL)) != -1) {
    bool listen_only = c == 'a' || c == 'A', connect_only = c == 'p' || c == 't';
    if ((listen_only && !o->listen) || (connect_only && o->listen))
      return cli_usage_error(o->cmd, "option '%s' is not for %s", argv[optind - 1], o->cmd);
    switch (c) {
    case 'r':
      if (cli_parse_addr(o->cmd, "--rendezvous", optarg, DEFAULT_RDV_PORT, &o->rendezvous) != 0)
        return CLI_EXIT_USAGE;
      o->have_rendezvous = true;
      break;
    case 'd':
      if (o->n_discovery == NP_PROBE_MAX_SERVERS)
        return cli_usage_error(o->cmd, "--discovery given more than %d times",
                               NP_PROBE_MAX_SERVERS);
      if (cli_parse_addr(o->cmd, "--discovery", optarg, DEFAULT_STUN_PORT,
                         &o->discovery[o->n_discovery]) != 0)
        return CLI_EXIT_USAGE;
      o->n_discovery++;
      break;
    case 'k':
      o->key_path = optarg;
      break;
    case 'a':
      if ((rc = add_allow(o, optarg, "--allow")) != 0)
        return rc;
      break;
    case 'A':
      if ((rc = read_allow_file(o, optarg)) != 0)
        return rc;
      break;
    case 'p':
      if (np_peer_id_parse(optarg, o->peer) != 0)
        return cli_usage_error(o->cmd, "--peer: '%s' is not a peer ID (52 base32 characters)",
                               optarg);
      o->have_peer = true;
      break;
    case 't': {
      char *end = NULL;
      double sec = strtod(optarg, &end);
      if (end == optarg || *end != '\0' || !(sec >= 0.1 && sec <= 3600))
        return cli_usage_error(o->cmd, "--timeout: '%s' is not a number of seconds (0.1 to 3600)",
                               optarg);
      o->timeout_ms = (int)(sec * 1000 + 0.5);
      break;
    }
    case 'j':
      o->json = true;
      break;
    case 'v':
      o->verbose = true;
      break;
    case 'h':
      (o->listen ? listen_usage : connect_usage)(stdout);
      return -1;
    default:
      return cli_option_error(o->cmd, c, argv);
    }
  }
  if (optind < argc)
    return cli_usage_error(o->cmd, "unexpected argument '%s'", argv[optind]);
  if (!o->have_rendezvous)
    return cli_usage_error(o->cmd, "--rendezvous IP[:PORT] is required");
  if (!o->listen && !o->have_peer)
    return cli_usage_error(o->cmd, "--peer PEERID is required");
  if (o->n_discovery == 2 && o->discovery[0].u.sa.sa_family != o->discovery[1].u.sa.sa_family)
    return cli_usage_error(o->cmd, "both --discovery servers must be IPv4, or both IPv6");
  return 0;
}

static int run_peer(struct peer_opts *o, int argc, char **argv) {
  int rc = parse(o, argc, argv);
  if (rc != 0)
    return rc < 0 ? CLI_EXIT_OK : rc;

  np_identity *id = NULL;
  bool created = false;
  if ((rc = o->key_path ? np_identity_load(o->key_path, &id)
                        : np_identity_load_or_create(NULL, &id, &created)) != 0) {
    char reason[200];
    snprintf(reason, sizeof reason, "cannot use key %s: %s (see natpunch id --help)",
             o->key_path ? o->key_path : "(default)", np_strerror(rc));
    emit_failed(o, reason);
    return CLI_EXIT_FAIL;
  }
  struct peer_run run = {.o = o, .exit_code = CLI_EXIT_FAIL};
  np_identity_peer_id(id, run.id);
  if (created)
    fprintf(stderr, "natpunch %s: created a new key; this peer's ID is %s\n", o->cmd, run.id);
  if (!o->listen) {
    uint8_t pk[NP_PUBKEY_LEN];
    np_identity_public_key(id, pk);
    if (memcmp(pk, o->peer, NP_PUBKEY_LEN) == 0) {
      np_identity_free(id);
      return cli_usage_error(o->cmd, "--peer is this peer's own ID");
    }
    /* The session nonce ties the answer to this offer; it must not repeat. */
    FILE *ur = fopen("/dev/urandom", "rb");
    if (!ur || fread(run.session, 1, sizeof run.session, ur) != sizeof run.session) {
      if (ur)
        fclose(ur);
      np_identity_free(id);
      emit_failed(o, "cannot read /dev/urandom");
      return CLI_EXIT_FAIL;
    }
    fclose(ur);
  }

  int udp = -1;
  if (gather(o, &udp, &run.cand) != 0) {
    np_identity_free(id);
    return CLI_EXIT_FAIL;
  }

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC);

  np_rdv_client_config cfg = {
      .server = o->rendezvous,
      .identity = id,
      .allow = (const uint8_t(*)[NP_PUBKEY_LEN])o->allow,
      .n_allow = o->n_allow,
      .on_state = on_state,
      .on_offer = on_offer,
      .on_answer = on_answer,
      .on_error = on_error,
      .user = &run,
      .log = cli_log_stderr,
      .log_level = o->verbose ? NP_LOG_DEBUG : NP_LOG_WARN,
  };
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t start = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  int64_t deadline = o->listen ? INT64_MAX : start + (o->timeout_ms ? o->timeout_ms : 10000);
  if ((rc = np_rdv_client_new(&cfg, start, &run.client)) != 0) {
    emit_failed(o, np_strerror(rc));
    run.done = true;
  }
  bool stopped = false;
  while (!run.done && !stopped) {
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (now >= deadline) {
      emit_failed(o, run.offered ? "no answer before the timeout"
                                 : "could not register with the rendezvous server before the "
                                   "timeout");
      break;
    }
    short events = 0;
    int cfd = np_rdv_client_fd(run.client, &events);
    int64_t wake = np_rdv_client_wakeup(run.client);
    if (deadline < wake)
      wake = deadline;
    struct pollfd pfd[2] = {{sfd, POLLIN, 0}, {cfd, events, 0}};
    int64_t wait = wake - now;
    int n = poll(pfd, cfd >= 0 ? 2 : 1, wait < 0 ? 0 : wait > 60000 ? 60000 : (int)wait);
    if (n < 0 && errno != EINTR)
      break;
    if (sfd >= 0 && (pfd[0].revents & POLLIN)) {
      stopped = true;
      run.exit_code = o->listen ? CLI_EXIT_OK : CLI_EXIT_FAIL;
      if (!o->listen)
        emit_failed(o, "interrupted");
    }
    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    np_rdv_client_process(run.client, now, cfd >= 0 ? pfd[1].revents : 0);
  }
  np_rdv_client_free(run.client);
  if (sfd >= 0)
    close(sfd);
  close(udp);
  np_identity_free(id);
  return run.exit_code;
}

int cli_listen(int argc, char **argv) {
  static struct peer_opts o; /* large (allow list): keep it off the stack */
  memset(&o, 0, sizeof o);
  o.cmd = "listen";
  o.listen = true;
  return run_peer(&o, argc, argv);
}

int cli_connect(int argc, char **argv) {
  static struct peer_opts o;
  memset(&o, 0, sizeof o);
  o.cmd = "connect";
  return run_peer(&o, argc, argv);
}
