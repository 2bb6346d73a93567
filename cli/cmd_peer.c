/*
 * natpunch listen / natpunch connect: a direct UDP path to a peer, then
 * netcat-style data over it.
 *
 * Both are thin shells over the public agent API (np_agent_*): the agent
 * gathers candidates, exchanges the signed offer and answer through the
 * rendezvous server and punches the path; this file turns its events into
 * JSON lines or sentences on stderr and moves data between stdin/stdout and
 * the peer. stdout carries only the peer's data.
 *
 * Data protocol on top of the agent's datagrams: the first byte says what
 * follows, numbers are 32-bit big-endian:
 *   'D' seq data     data, numbered from 0 in each direction
 *   'E' total        end of our input after 'total' data datagrams
 *                    (half-close, like TCP's FIN: the other direction goes on)
 *   'A' count high flags
 *                    acknowledgement: 'count' data datagrams received so far,
 *                    the highest number seen + 1, flags bit 0 = "I have your E"
 * There is no retransmission (the session layer with QUIC comes next), but
 * loss is never silent: the sender keeps at most WINDOW datagrams
 * unacknowledged (pacing, so that a fast sender does not overflow the
 * receiver's socket buffer or its agent's queue), a datagram the socket
 * refuses (EAGAIN) is kept and sent again, and at the end each side compares
 * what was sent with what arrived and reports any difference as a failure
 * (exit 1). A side exits once its input has ended and the peer's has too
 * (and the peer confirmed ours), or when the peer closes; 'E' is repeated
 * for a while, since a datagram may be lost, and answered by the peer's
 * own 'E' and an 'A'.
 */
#include "cli.h"
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_STUN_PORT 3478
#define DEFAULT_RDV_PORT 7000
#define DEFAULT_TIMEOUT_MS 30000
#define CHUNK_MAX 1200          /* an agent datagram */
#define CHUNK (CHUNK_MAX - 5)   /* data per 'D': type and number first */
#define WINDOW 64               /* data datagrams in flight; ~77 KB, which a
                                 * default socket buffer (208 KB) holds */
/* Until the peer's first acknowledgement: the caller is connected a round
 * trip before the callee, which keeps only 16 early datagrams (the agent's
 * MAX_EARLY) until it is. */
#define FIRST_WINDOW 8
#define ACK_EVERY 16
#define ACK_DELAY_MS 10
#define STALL_MS 500            /* no acknowledgement for so long: send one */
#define FINAL_ACKS 3
#define EOF_REORDER_MS 500      /* after the peer's 'E', late data gets this long */
#define EOF_RESEND_MS 200
/* After our 'E', how long we repeat it; the peer answers an 'E' with its
 * own once its input has ended, so a late one still gets through. */
#define EOF_LINGER_MS 3000

struct peer_opts {
  const char *cmd;
  bool listen;
  np_addr rendezvous;
  bool have_rendezvous;
  np_addr discovery[NP_PROBE_MAX_SERVERS];
  int n_discovery;
  const char *key_path;
  uint8_t allow[NP_AGENT_MAX_ALLOW][NP_PUBKEY_LEN];
  int n_allow;
  uint8_t peer[NP_PUBKEY_LEN];
  bool have_peer;
  int timeout_ms;
  int predict_after_ms;
  int prime_ttl;
  int peer_timeout_ms;
  bool no_portmap;
  bool keep;
  bool json;
  bool verbose;
  /* Taken from the command line first, resolved once the config file
   * (which may hold aliases, or be named by --config) is read. */
  const char *config_path;
  const char *peer_text;
  const char *allow_text[NP_AGENT_MAX_ALLOW];
  bool allow_is_file[NP_AGENT_MAX_ALLOW];
  int n_allow_text;
  cli_config cfg;
  char user_config[CLI_CFG_MAX_PATH]; /* where settings are documented to go */
  char cfg_key[CLI_CFG_MAX_PATH];
};

static void listen_usage(FILE *out) {
  fprintf(out,
          "Usage: natpunch listen [--rendezvous IP:PORT] [--discovery IP:PORT]...\n"
          "                       [--key FILE] [--allow PEER]... [--config FILE] [OPTIONS]\n\n"
          "Registers this peer's ID with the rendezvous server and waits for a call. When\n"
          "an allowed peer calls, both sides punch a direct UDP path through their NATs\n"
          "(discovery servers, port prediction, the birthday method, UPnP/NAT-PMP/PCP).\n"
          "Once the path is up, stdin goes to the peer and the peer's data to stdout, as\n"
          "datagrams (no retransmission, no encryption yet). The listener serves one\n"
          "session (unless --keep): it exits when both sides' input has ended or the peer\n"
          "closes. A failed call is reported and the listener waits for the next one.\n"
          "A call that comes during a session is declined at once (busy, 486).\n"
          "Addresses are numeric (IPv4, or [IPv6]); host names are not resolved.\n"
          "Servers, key and allow list not given as options come from the config file\n"
          "(see 'natpunch --help'); a PEER is a peer ID or an alias defined there.\n\n"
          "Options:\n"
          "  -r, --rendezvous IP[:PORT]  rendezvous server (port defaults to %d; default:\n"
          "                              rendezvous = in the config file; required)\n"
          "  -d, --discovery IP[:PORT]   discovery server; give two (port defaults to %d;\n"
          "                              default: the config file's discovery = lines)\n"
          "  -k, --key FILE              identity key (default: key = in the config file,\n"
          "                              else ~/.config/natpunch/key, created on first use)\n"
          "  -c, --config FILE           read settings and aliases from FILE only (default:\n"
          "                              ~/.config/natpunch/config, then\n"
          "                              /etc/natpunch/config)\n"
          "  -a, --allow PEER            accept calls only from this peer (a peer ID or an\n"
          "                              alias); repeatable\n"
          "  -A, --allow-file FILE       accept calls only from the peers in FILE, one\n"
          "                              peer ID or alias per line ('#' starts a comment);\n"
          "                              a file that names no peer is an error, never\n"
          "                              \"anyone\" (without --allow/--allow-file the config\n"
          "                              file's allow = lines apply; with none, anyone may\n"
          "                              call; refused callers get error 403 from the\n"
          "                              server)\n"
          "  -P, --predict-after MS      start port prediction after MS without a direct\n"
          "                              answer (default 1000)\n"
          "  -T, --prime-ttl N           TTL of priming packets, 1 to 255 (default:\n"
          "                              measured, hops to the outermost NAT + 1)\n"
          "  -W, --peer-timeout SEC      once connected, end the session when nothing\n"
          "                              authenticated came from the peer for SEC\n"
          "                              seconds (it vanished; default 20, 1 to 3600;\n"
          "                              keepalives go every 5 s, or SEC/4 if shorter)\n"
          "  -N, --no-portmap            do not ask the gateway for a port mapping\n"
          "  -K, --keep                  after a session, wait for the next call (stdin\n"
          "                              goes to the first session only)\n"
          "  -j, --json                  events as JSON lines on stderr\n"
          "  -v, --verbose               log protocol steps\n"
          "  -h, --help                  show this help\n\n"
          "JSON events (stderr): {\"event\":\"listening\",\"id\":...} on registration,\n"
          "{\"event\":\"call\",\"from\":...}, {\"event\":\"connected\",\"path\":\"direct\",\n"
          "\"via\":\"host|reflexive|predicted|birthday|portmap\",\"remote\":\"IP:PORT\",\n"
          "\"elapsed_ms\":N,\"probes\":N}, {\"event\":\"failed\",\"reason\":...},\n"
          "{\"event\":\"closed\",\"cause\":\"normal|abort|vanished|interrupted\",\n"
          "\"reason\":...}, and {\"event\":\"log\",\"time_ms\":...,\"level\":...,\n"
          "\"message\":...} for warnings (and --verbose steps). \"abort\": the peer was\n"
          "interrupted; \"vanished\": see --peer-timeout; \"interrupted\": we were.\n\n"
          "Data: datagrams, paced (at most 64 unacknowledged), never retransmitted; a\n"
          "datagram lost either way is counted and reported as a failure at the end.\n\n"
          "Exit status: 0 the session ended normally (both inputs ended, or the peer\n"
          "closed), or SIGINT/SIGTERM stopped the listener (a session in progress is\n"
          "aborted, and the peer told so); 1 failure (bad key, no UDP socket, the peer\n"
          "aborted or vanished, data lost, or another `listen` with the same key took\n"
          "the ID: a \"replaced\" event); 2 bad command line or config file. With\n"
          "--keep, only SIGINT/SIGTERM (exit 0) or a replacement (exit 1) end it.\n",
          DEFAULT_RDV_PORT, DEFAULT_STUN_PORT);
}

static void connect_usage(FILE *out) {
  fprintf(out,
          "Usage: natpunch connect [--rendezvous IP:PORT] [--discovery IP:PORT]...\n"
          "                        [--key FILE] [--config FILE] [OPTIONS] PEER\n"
          "       natpunch connect [OPTIONS] --peer PEER\n\n"
          "Calls PEER (a peer ID, or an alias from the config file) through the rendezvous\n"
          "server and punches a direct UDP path to it through both NATs. Once the path\n"
          "is up, stdin goes to the peer and the peer's data to stdout, as datagrams (no\n"
          "retransmission, no encryption yet); the command exits when both sides' input\n"
          "has ended or the peer closes.\n"
          "Addresses are numeric (IPv4, or [IPv6]); host names are not resolved.\n"
          "Servers and key not given as options come from the config file (see\n"
          "'natpunch --help'), so with one a call is: natpunch connect laptop\n\n"
          "Options:\n"
          "  -r, --rendezvous IP[:PORT]  rendezvous server (port defaults to %d; default:\n"
          "                              rendezvous = in the config file; required)\n"
          "  -d, --discovery IP[:PORT]   discovery server; give two (port defaults to %d;\n"
          "                              default: the config file's discovery = lines)\n"
          "  -p, --peer PEER             the peer to call: a peer ID or an alias (the\n"
          "                              same as the PEER argument)\n"
          "  -k, --key FILE              identity key (default: key = in the config file,\n"
          "                              else ~/.config/natpunch/key, created on first use)\n"
          "  -c, --config FILE           read settings and aliases from FILE only (default:\n"
          "                              ~/.config/natpunch/config, then\n"
          "                              /etc/natpunch/config)\n"
          "  -t, --timeout SEC           give up if no path is up after SEC seconds\n"
          "                              (default 30, 0.1 to 3600)\n"
          "  -W, --peer-timeout SEC      once connected, end the session when nothing\n"
          "                              authenticated came from the peer for SEC\n"
          "                              seconds (it vanished; default 20, 1 to 3600;\n"
          "                              keepalives go every 5 s, or SEC/4 if shorter)\n"
          "  -P, --predict-after MS      start port prediction after MS without a direct\n"
          "                              answer (default 1000)\n"
          "  -T, --prime-ttl N           TTL of priming packets, 1 to 255 (default:\n"
          "                              measured, hops to the outermost NAT + 1)\n"
          "  -N, --no-portmap            do not ask the gateway for a port mapping\n"
          "  -j, --json                  events as JSON lines on stderr\n"
          "  -v, --verbose               log protocol steps\n"
          "  -h, --help                  show this help\n\n"
          "JSON events (stderr): {\"event\":\"connected\",\"path\":\"direct\",\n"
          "\"via\":\"host|reflexive|predicted|birthday|portmap\",\"remote\":\"IP:PORT\",\n"
          "\"elapsed_ms\":N,\"probes\":N}, {\"event\":\"failed\",\"reason\":...},\n"
          "{\"event\":\"closed\",\"cause\":\"normal|abort|vanished|interrupted\",\n"
          "\"reason\":...}, and {\"event\":\"log\",\"time_ms\":...,\"level\":...,\n"
          "\"message\":...} for warnings (and --verbose steps). \"abort\": the peer was\n"
          "interrupted; \"vanished\": see --peer-timeout; \"interrupted\": we were.\n\n"
          "Data: datagrams, paced (at most 64 unacknowledged), never retransmitted; a\n"
          "datagram lost either way is counted and reported as a failure at the end.\n\n"
          "Exit status: 0 connected and the session ended normally (both inputs ended,\n"
          "or the peer closed); 1 no path (peer unknown, offline, busy or refusing us, no\n"
          "answer, no direct path before the timeout, bad key), the peer aborted or\n"
          "vanished, data lost, or interrupted by SIGINT/SIGTERM (the peer is told the\n"
          "session was aborted); 2 bad command line or config file.\n",
          DEFAULT_RDV_PORT, DEFAULT_STUN_PORT);
}

/* ---- output ------------------------------------------------------------- */

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

static void emit_simple(const struct peer_opts *opts, const char *event, const char *reason) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "event", event);
  cJSON_AddStringToObject(o, "reason", reason);
  emit(opts, o, reason);
}

/* With --json every stderr line must parse, so library log lines become
 * {"event":"log","level":...,"message":...} there. The port-mapping worker
 * may call this from its thread; each line is one fprintf. */
static void log_json(void *user, enum np_log_level level, const char *msg) {
  (void)user;
  static const char *names[] = {"error", "warning", "info", "debug"};
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "event", "log");
  /* Milliseconds since the epoch: the two peers' lines can be merged. */
  cJSON_AddNumberToObject(o, "time_ms", (double)ts.tv_sec * 1000 + (double)(ts.tv_nsec / 1000000));
  cJSON_AddStringToObject(o, "level", (unsigned)level < 4 ? names[level] : "log");
  cJSON_AddStringToObject(o, "message", msg);
  char *text = cJSON_PrintUnformatted(o);
  if (text)
    fprintf(stderr, "%s\n", text);
  free(text);
  cJSON_Delete(o);
}

/* A warning or notice of the command itself, in the same form as events. */
static void say(const struct peer_opts *opts, enum np_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(const struct peer_opts *opts, enum np_log_level level, const char *fmt, ...) {
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (opts->json)
    log_json(NULL, level, msg);
  else
    fprintf(stderr, "natpunch %s: %s%s\n", opts->cmd, level == NP_LOG_WARN ? "warning: " : "",
            msg);
}

static void emit_connected(const struct peer_opts *opts, const np_session_stats *st) {
  char remote[NP_ADDRSTRLEN], local[NP_ADDRSTRLEN], id[NP_PEER_ID_LEN + 1], sentence[400];
  np_addr_format(&st->remote, remote, sizeof remote);
  np_addr_format(&st->local, local, sizeof local);
  np_peer_id_format(st->peer, id);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "event", "connected");
  cJSON_AddStringToObject(o, "path", "direct");
  cJSON_AddStringToObject(o, "via", np_via_name(st->via));
  cJSON_AddStringToObject(o, "remote", remote);
  cJSON_AddNumberToObject(o, "elapsed_ms", (double)st->elapsed_ms);
  cJSON_AddNumberToObject(o, "probes", st->probes_sent);
  cJSON_AddStringToObject(o, "peer", id);
  cJSON_AddNumberToObject(o, "rounds", st->rounds);
  cJSON_AddNumberToObject(o, "sockets", st->sockets);
  snprintf(sentence, sizeof sentence,
           "connected to %s at %s (direct, via %s) in %lld ms after %u probes", id, remote,
           np_via_name(st->via), (long long)st->elapsed_ms, st->probes_sent);
  emit(opts, o, sentence);
}

/* ---- options and the loop ------------------------------------------------ */

/* "not a peer ID (...) nor an alias in FILE", for --peer and --allow. */
static int not_a_peer(struct peer_opts *o, const char *where, const char *text) {
  char src[2 * CLI_CFG_MAX_PATH + 16];
  if (o->cfg.n_files)
    return cli_usage_error(o->cmd,
                           "%s: '%s' is not a peer ID (52 base32 characters) nor an alias in %s",
                           where, text, cli_config_sources(&o->cfg, src, sizeof src));
  return cli_usage_error(o->cmd,
                         "%s: '%s' is not a peer ID (52 base32 characters), and there is no config "
                         "file with aliases (write 'alias NAME = PEERID' in %s)",
                         where, text,
                         o->user_config[0] ? o->user_config : "~/.config/natpunch/config");
}

static int add_allow(struct peer_opts *o, const char *text, const char *where) {
  if (o->n_allow == NP_AGENT_MAX_ALLOW)
    return cli_usage_error(o->cmd, "more than %d allowed peers", NP_AGENT_MAX_ALLOW);
  if (cli_config_resolve(&o->cfg, text, o->allow[o->n_allow]) != 0)
    return not_a_peer(o, where, text);
  o->n_allow++;
  return 0;
}

/* An allow file that names nobody is refused: the agent reads an empty
 * allow list as "anyone may call", the opposite of what such a file says. */
static int read_allow_file(struct peer_opts *o, const char *path) {
  struct stat sb;
  if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
    return cli_usage_error(o->cmd, "--allow-file: '%s' is a directory, not a file of peer IDs",
                           path);
  FILE *f = fopen(path, "r");
  if (!f)
    return cli_usage_error(o->cmd, "--allow-file: cannot open '%s': %s", path, strerror(errno));
  char line[256];
  int lineno = 0, rc = 0, before = o->n_allow;
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
  bool read_error = ferror(f);
  fclose(f);
  if (rc == 0 && read_error)
    return cli_usage_error(o->cmd, "--allow-file: cannot read '%s'", path);
  if (rc == 0 && o->n_allow == before)
    return cli_usage_error(o->cmd,
                           "--allow-file: '%s' names no peer (one peer ID per line); an empty "
                           "allow list would let anyone call",
                           path);
  return rc;
}

/* Reads the config files and fills in what the command line left out:
 * servers, key and allow list come from the config only when no flag
 * gave them; names given as --peer/--allow resolve through its aliases. */
static int apply_config(struct peer_opts *o) {
  char err[2 * CLI_CFG_MAX_PATH + 200];
  const char *home = getenv("HOME");
  if (cli_config_user_path(getenv("XDG_CONFIG_HOME"), home, o->user_config,
                           sizeof o->user_config) != 0)
    snprintf(o->user_config, sizeof o->user_config, "~/.config/natpunch/config");
  if (cli_config_load(&o->cfg, o->config_path, getenv("XDG_CONFIG_HOME"), home, CLI_CFG_SYSTEM_PATH,
                      err, sizeof err) != 0)
    return cli_usage_error(o->cmd, "%s", err);
  const cli_config *c = &o->cfg;
  if (!o->have_rendezvous && c->have_rendezvous) {
    o->rendezvous = c->rendezvous;
    o->have_rendezvous = true;
  }
  if (o->n_discovery == 0) {
    o->n_discovery = c->n_discovery;
    memcpy(o->discovery, c->discovery, sizeof o->discovery);
  }
  if (!o->key_path) {
    int k = cli_config_key_path(c, home, o->cfg_key, sizeof o->cfg_key);
    if (k < 0)
      return cli_usage_error(o->cmd, "key = %s: cannot expand '~' (HOME unset) or too long",
                             c->key);
    if (k == 0)
      o->key_path = o->cfg_key;
  }
  int rc;
  if (o->peer_text) {
    if (cli_config_resolve(c, o->peer_text, o->peer) != 0)
      return not_a_peer(o, "--peer", o->peer_text);
    o->have_peer = true;
  }
  for (int i = 0; i < o->n_allow_text; i++) {
    rc = o->allow_is_file[i] ? read_allow_file(o, o->allow_text[i])
                             : add_allow(o, o->allow_text[i], "--allow");
    if (rc != 0)
      return rc;
  }
  if (o->listen && o->n_allow_text == 0)
    for (int i = 0; i < c->n_allow; i++) {
      char where[2 * CLI_CFG_MAX_PATH + 40], src[2 * CLI_CFG_MAX_PATH + 16];
      snprintf(where, sizeof where, "allow = in %s", cli_config_sources(c, src, sizeof src));
      if ((rc = add_allow(o, c->allow[i], where)) != 0)
        return rc;
    }
  return 0;
}

static int parse(struct peer_opts *o, int argc, char **argv) {
  static const struct option opts[] = {{"rendezvous", required_argument, NULL, 'r'},
                                       {"config", required_argument, NULL, 'c'},
                                       {"discovery", required_argument, NULL, 'd'},
                                       {"key", required_argument, NULL, 'k'},
                                       {"allow", required_argument, NULL, 'a'},
                                       {"allow-file", required_argument, NULL, 'A'},
                                       {"peer", required_argument, NULL, 'p'},
                                       {"timeout", required_argument, NULL, 't'},
                                       {"predict-after", required_argument, NULL, 'P'},
                                       {"prime-ttl", required_argument, NULL, 'T'},
                                       {"peer-timeout", required_argument, NULL, 'W'},
                                       {"no-portmap", no_argument, NULL, 'N'},
                                       {"keep", no_argument, NULL, 'K'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  int c, rc;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":r:c:d:k:a:A:p:t:P:T:W:NKjvh", opts, NULL)) != -1) {
    bool listen_only = c == 'a' || c == 'A' || c == 'K', connect_only = c == 'p' || c == 't';
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
    case 'c':
      o->config_path = optarg;
      break;
    case 'a':
    case 'A':
      if (o->n_allow_text == NP_AGENT_MAX_ALLOW)
        return cli_usage_error(o->cmd, "more than %d allowed peers", NP_AGENT_MAX_ALLOW);
      o->allow_is_file[o->n_allow_text] = c == 'A';
      o->allow_text[o->n_allow_text++] = optarg;
      break;
    case 'p':
      if (o->peer_text)
        return cli_usage_error(o->cmd, "give one peer (--peer given twice)");
      o->peer_text = optarg;
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
    case 'P': {
      long ms;
      if (cli_parse_long(optarg, 50, 60000, &ms) != 0)
        return cli_usage_error(o->cmd, "--predict-after: '%s' is not a number of ms (50 to 60000)",
                               optarg);
      o->predict_after_ms = (int)ms;
      break;
    }
    case 'T': {
      long ttl;
      if (cli_parse_long(optarg, 1, 255, &ttl) != 0)
        return cli_usage_error(o->cmd, "--prime-ttl: '%s' is not a TTL (1 to 255)", optarg);
      o->prime_ttl = (int)ttl;
      break;
    }
    case 'W': {
      long sec;
      if (cli_parse_long(optarg, 1, 3600, &sec) != 0)
        return cli_usage_error(o->cmd, "--peer-timeout: '%s' is not a number of seconds (1 to 3600)",
                               optarg);
      o->peer_timeout_ms = (int)sec * 1000;
      break;
    }
    case 'N':
      o->no_portmap = true;
      break;
    case 'K':
      o->keep = true;
      break;
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
  /* `connect laptop` is `connect --peer laptop`. */
  if (!o->listen && optind < argc) {
    if (o->peer_text)
      return cli_usage_error(o->cmd, "give the peer once: '%s' and --peer %s", argv[optind],
                             o->peer_text);
    o->peer_text = argv[optind++];
  }
  if (optind < argc)
    return cli_usage_error(o->cmd, "unexpected argument '%s'", argv[optind]);
  if ((rc = apply_config(o)) != 0)
    return rc;
  if (!o->have_rendezvous)
    return cli_usage_error(o->cmd,
                           "no rendezvous server: give --rendezvous IP:PORT or set rendezvous = "
                           "in %s",
                           o->config_path ? o->config_path : o->user_config);
  if (!o->listen && !o->have_peer)
    return cli_usage_error(o->cmd, "no peer to call: give PEER or --peer PEER (a peer ID or an "
                                   "alias)");
  if (o->n_discovery == 2 && o->discovery[0].u.sa.sa_family != o->discovery[1].u.sa.sa_family)
    return cli_usage_error(o->cmd, "both --discovery servers must be IPv4, or both IPv6");
  return 0;
}


/* ---- the loop ------------------------------------------------------------ */

/* One direction's bookkeeping of the data protocol (see the top of the
 * file). */
struct peer_run {
  struct peer_opts *o;
  np_agent *agent;
  char id[NP_PEER_ID_LEN + 1];
  bool connected, stdin_eof, peer_eof, done;
  int64_t eof_next, eof_until, peer_eof_at;
  int exit_code;
  /* What we send. */
  uint32_t sent;         /* 'D' datagrams sent (the next one's number) */
  uint32_t acked_high;   /* the peer has seen up to this number (exclusive) */
  uint32_t peer_count;   /* how many of ours the peer says it received */
  bool peer_saw_eof;     /* the peer's 'A' says it has our 'E' */
  bool send_warned;
  bool peer_acked;       /* an 'A' came: the peer is connected and reading */
  int64_t progress_at;   /* when acked_high last moved (or the window opened) */
  uint8_t pending[CHUNK_MAX];
  size_t pending_len;    /* a datagram the socket refused (EAGAIN), kept */
  /* What we receive. */
  uint32_t rx_count, rx_high, peer_total, acked_count;
  int64_t ack_at;
};

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void send_eof(struct peer_run *r, int64_t now) {
  uint8_t e[5] = {'E'};
  put32(e + 1, r->sent);
  (void)np_agent_send(r->agent, e, sizeof e);
  r->eof_next = now + EOF_RESEND_MS;
}

static void send_ack(struct peer_run *r, int64_t now) {
  uint8_t a[10] = {'A'};
  put32(a + 1, r->rx_count);
  put32(a + 5, r->rx_high);
  a[9] = r->peer_eof ? 1 : 0;
  if (np_agent_send(r->agent, a, sizeof a) == 0) {
    r->acked_count = r->rx_count;
    r->ack_at = now;
  }
}

static void reset_counters(struct peer_run *r) {
  r->sent = r->acked_high = r->peer_count = 0;
  r->rx_count = r->rx_high = r->peer_total = r->acked_count = 0;
  r->peer_saw_eof = false;
  r->send_warned = false;
  r->peer_acked = false;
  r->pending_len = 0;
  r->peer_eof_at = 0;
  r->progress_at = mono_ms();
}

static void drain_data(struct peer_run *r, int64_t now);

/* Loss in either direction, as counted by the data protocol, is a failure
 * of the session: reported, exit 1. Returns true when there was some. */
static bool report_loss(struct peer_run *r) {
  char reason[200];
  bool lost = false;
  if (r->peer_eof && r->peer_total > r->rx_count) {
    snprintf(reason, sizeof reason,
             "lost %u of %u datagrams from the peer (no retransmission yet: "
             "the receiver or the network dropped them)",
             r->peer_total - r->rx_count, r->peer_total);
    emit_simple(r->o, "failed", reason);
    lost = true;
  }
  if (r->sent > 0 && r->peer_saw_eof && r->peer_count < r->sent) {
    snprintf(reason, sizeof reason, "the peer lost %u of %u datagrams we sent",
             r->sent - r->peer_count, r->sent);
    emit_simple(r->o, "failed", reason);
    lost = true;
  } else if (r->sent > 0 && !r->peer_saw_eof) {
    snprintf(reason, sizeof reason,
             "the peer did not confirm our %u datagrams; some may be lost", r->sent);
    emit_simple(r->o, "failed", reason);
    lost = true;
  }
  return lost;
}

/* A session ended: leave, or with --keep take the next call. ok says
 * whether it ended normally (both inputs, or the peer's normal close). */
static void end_session(struct peer_run *r, bool ok) {
  /* Our last word on what arrived, in a few copies: the peer may still be
   * waiting for it (its 'E' answered) when ours came after its own. */
  if (r->connected && r->peer_eof)
    for (int i = 0; i < FINAL_ACKS; i++)
      send_ack(r, mono_ms());
  if (report_loss(r))
    ok = false;
  r->exit_code = ok ? CLI_EXIT_OK : CLI_EXIT_FAIL;
  if (!r->o->listen || !r->o->keep) {
    r->done = true;
    return;
  }
  np_agent_close(r->agent);
  r->connected = false;
  r->peer_eof = false;
  reset_counters(r);
  if (!r->stdin_eof) {
    r->stdin_eof = true; /* stdin belonged to the first session */
    r->eof_until = 0;
  }
}

static void on_event(struct peer_run *r, const np_agent_event *ev) {
  char id[NP_PEER_ID_LEN + 1], sentence[300];
  switch (ev->type) {
  case NP_AGENT_REGISTERED:
    if (r->o->listen) {
      char seen[NP_ADDRSTRLEN];
      cJSON *o = cJSON_CreateObject();
      cJSON_AddStringToObject(o, "event", "listening");
      cJSON_AddStringToObject(o, "id", r->id);
      cJSON_AddStringToObject(o, "observed", np_addr_format(&ev->observed, seen, sizeof seen));
      snprintf(sentence, sizeof sentence, "listening as %s (the server sees us at %s)", r->id,
               seen);
      emit(r->o, o, sentence);
    }
    break;
  case NP_AGENT_CALL: {
    np_peer_id_format(ev->peer, id);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "call");
    cJSON_AddStringToObject(o, "from", id);
    snprintf(sentence, sizeof sentence, "call from %s", id);
    emit(r->o, o, sentence);
    break;
  }
  case NP_AGENT_CONNECTED: {
    np_session_stats st;
    np_agent_stats(r->agent, &st);
    emit_connected(r->o, &st);
    r->connected = true;
    reset_counters(r);
    if (r->stdin_eof) {
      r->eof_until = mono_ms() + EOF_LINGER_MS;
      send_eof(r, mono_ms());
    }
    break;
  }
  case NP_AGENT_FAILED:
    emit_simple(r->o, "failed", ev->reason);
    if (!r->o->listen) {
      r->done = true;
      r->exit_code = CLI_EXIT_FAIL;
    }
    break;
  case NP_AGENT_REPLACED:
    /* Another process with our key took the ID: this one steps down. */
    emit_simple(r->o, "replaced", ev->reason);
    r->done = true;
    r->exit_code = CLI_EXIT_FAIL;
    break;
  case NP_AGENT_CLOSED: {
    /* The last data can arrive together with the goodbye: deliver it. */
    drain_data(r, mono_ms());
    const char *cause = ev->error == NP_ERR_CANCELLED ? "abort"
                        : ev->error == NP_ERR_TIMEOUT ? "vanished"
                                                      : "normal";
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "closed");
    cJSON_AddStringToObject(o, "cause", cause);
    cJSON_AddStringToObject(o, "reason", ev->reason);
    emit(r->o, o, ev->reason);
    end_session(r, ev->error == 0);
    break;
  }
  }
}

/* Peer data to stdout; 'E' ends the peer's direction, 'A' acknowledges
 * ours. */
static void drain_data(struct peer_run *r, int64_t now) {
  uint8_t buf[1300];
  for (int guard = 0; guard < 1024; guard++) {
    int n = np_agent_recv(r->agent, buf, sizeof buf);
    if (n < 0)
      break;
    if (n == 0)
      continue;
    if (buf[0] == 'D' && n >= 5) {
      uint32_t seq = get32(buf + 1);
      r->rx_count++;
      if (seq + 1 > r->rx_high)
        r->rx_high = seq + 1;
      if (fwrite(buf + 5, 1, (size_t)n - 5, stdout) != (size_t)n - 5) {
        r->done = true; /* stdout closed: nothing more to deliver */
        r->exit_code = CLI_EXIT_FAIL;
      }
    } else if (buf[0] == 'E' && n >= 5) {
      r->peer_total = get32(buf + 1);
      if (!r->peer_eof) {
        r->peer_eof_at = now;
        if (r->stdin_eof)
          send_eof(r, now); /* answer at once, so the peer can leave too */
      }
      r->peer_eof = true;
      send_ack(r, now); /* says we have its 'E', and how much came */
    } else if (buf[0] == 'A' && n >= 10) {
      uint32_t count = get32(buf + 1), high = get32(buf + 5);
      r->peer_acked = true;
      if (high > r->acked_high && high <= r->sent) {
        r->acked_high = high;
        r->progress_at = now;
      }
      if (count <= r->sent && count >= r->peer_count)
        r->peer_count = count;
      if (buf[9] & 1)
        r->peer_saw_eof = true;
    }
  }
  fflush(stdout);
  /* Acknowledge every ACK_EVERY datagrams, or soon after the last: the
   * sender's window moves with it. */
  if (r->rx_count != r->acked_count &&
      (r->rx_count - r->acked_count >= ACK_EVERY || now >= r->ack_at + ACK_DELAY_MS))
    send_ack(r, now);
}

/* May we send another datagram? At most WINDOW unacknowledged ones (and
 * FIRST_WINDOW before the peer's first acknowledgement), so that
 * neither the peer's socket buffer nor its agent's queue overflows; when
 * the acknowledgements stop for STALL_MS (lost, or the peer is slow), one
 * more goes, and the vanish timeout ends a dead session. */
static bool window_open(struct peer_run *r, int64_t now) {
  uint32_t window = r->peer_acked ? WINDOW : FIRST_WINDOW;
  if (r->sent - r->acked_high < window)
    return true;
  if (now >= r->progress_at + STALL_MS) {
    r->acked_high = r->sent - window + 1;
    r->progress_at = now;
    return true;
  }
  return false;
}

/* Sends the kept datagram; true when it went (or there was none). */
static bool flush_pending(struct peer_run *r) {
  if (r->pending_len == 0)
    return true;
  int rc = np_agent_send(r->agent, r->pending, r->pending_len);
  if (rc == NP_ERR_AGAIN)
    return false; /* the socket buffer is full: keep it, try again soon */
  /* Any other failure (a firewall's EPERM, an ICMP error) loses this
   * datagram like the network would: it keeps its number, so the count at
   * the end shows it. */
  if (rc != 0 && !r->send_warned) {
    say(r->o, NP_LOG_WARN, "send: %s (the datagram is lost; more such are not logged)",
        np_strerror(rc));
    r->send_warned = true;
  }
  r->sent++;
  r->pending_len = 0;
  return true;
}

static void read_stdin(struct peer_run *r, int64_t now) {
  uint8_t *buf = r->pending;
  ssize_t n = read(STDIN_FILENO, buf + 5, CHUNK);
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    return;
  if (n <= 0) {
    r->stdin_eof = true;
    r->eof_until = now + EOF_LINGER_MS;
    send_eof(r, now);
    return;
  }
  buf[0] = 'D';
  put32(buf + 1, r->sent);
  r->pending_len = (size_t)n + 5;
  (void)flush_pending(r);
}

/* stdin's file status flags as we found them: O_NONBLOCK is set on the
 * open file description, which the shell and other processes share. */
static int stdin_flags = -1;

static void restore_stdin(void) {
  if (stdin_flags >= 0)
    (void)fcntl(STDIN_FILENO, F_SETFL, stdin_flags);
  stdin_flags = -1;
}

/* Key errors in the words of 'natpunch id' (cli_key_error). */
static int load_key(struct peer_opts *o, np_identity **id, bool *created) {
  char def[PATH_MAX];
  const char *path = o->key_path;
  if (!path) {
    if (np_identity_default_path(def, sizeof def) != 0) {
      emit_simple(o, "failed", "no default key location: neither XDG_CONFIG_HOME nor HOME is "
                               "set (give --key FILE)");
      return CLI_EXIT_FAIL;
    }
    path = def;
  }
  int rc = o->key_path ? np_identity_load(path, id) : np_identity_load_or_create(path, id, created);
  if (rc == 0)
    return 0;
  char reason[PATH_MAX + 300];
  cli_key_error(reason, sizeof reason, path, rc, errno);
  emit_simple(o, "failed", reason);
  return CLI_EXIT_FAIL;
}

static int run_peer(struct peer_opts *o, int argc, char **argv) {
  int rc = parse(o, argc, argv);
  if (rc != 0)
    return rc < 0 ? CLI_EXIT_OK : rc;
  if (o->n_discovery < 2)
    say(o, NP_LOG_WARN,
        "%s discovery server; two are needed to see the NAT's port delta (port prediction)",
        o->n_discovery ? "only one" : "no");

  /* Signals first: without the signalfd, SIGINT could not end a session
   * cleanly (abort, exit code), so its failure is an error. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  sigdelset(&set, SIGPIPE);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC);
  if (sfd < 0) {
    char reason[200];
    snprintf(reason, sizeof reason, "signalfd: %s", strerror(errno));
    emit_simple(o, "failed", reason);
    return CLI_EXIT_FAIL;
  }

  np_identity *id = NULL;
  bool created = false;
  if ((rc = load_key(o, &id, &created)) != 0) {
    close(sfd);
    return rc;
  }
  struct peer_run run = {.o = o, .exit_code = CLI_EXIT_FAIL};
  np_identity_peer_id(id, run.id);
  if (created)
    say(o, NP_LOG_INFO, "created a new key; this peer's ID is %s", run.id);
  if (!o->listen) {
    uint8_t pk[NP_PUBKEY_LEN];
    np_identity_public_key(id, pk);
    if (memcmp(pk, o->peer, NP_PUBKEY_LEN) == 0) {
      np_identity_free(id);
      close(sfd);
      return cli_usage_error(o->cmd, "--peer is this peer's own ID");
    }
  }

  np_agent_config cfg = {
      .identity = id,
      .rendezvous = o->rendezvous,
      .n_discovery = o->n_discovery,
      .listen = o->listen,
      .allow = (const uint8_t(*)[NP_PUBKEY_LEN])o->allow,
      .n_allow = o->n_allow,
      .predict_after_ms = o->predict_after_ms,
      .prime_ttl = o->prime_ttl,
      .peer_timeout_ms = o->peer_timeout_ms,
      .session_timeout_ms = o->listen ? 0 : (o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS),
      .no_portmap = o->no_portmap,
      .log = o->json ? log_json : cli_log_stderr,
      .log_level = o->verbose ? NP_LOG_DEBUG : NP_LOG_WARN,
  };
  memcpy(cfg.discovery, o->discovery, sizeof cfg.discovery);
  if ((rc = np_agent_new(&cfg, &run.agent)) != 0) {
    char reason[200];
    snprintf(reason, sizeof reason, "cannot start: %s", np_strerror(rc));
    emit_simple(o, "failed", reason);
    np_identity_free(id);
    close(sfd);
    return CLI_EXIT_FAIL;
  }
  if (!o->listen && (rc = np_agent_connect(run.agent, o->peer)) != 0) {
    char reason[200];
    snprintf(reason, sizeof reason, "cannot call: %s", np_strerror(rc));
    emit_simple(o, "failed", reason);
    run.done = true;
  }

  stdin_flags = fcntl(STDIN_FILENO, F_GETFL);
  if (stdin_flags >= 0)
    (void)fcntl(STDIN_FILENO, F_SETFL, stdin_flags | O_NONBLOCK);
  run.progress_at = mono_ms();

  while (!run.done) {
    int64_t now = mono_ms();
    bool resending = run.connected && run.stdin_eof && now < run.eof_until;
    if (run.connected && run.stdin_eof) {
      /* Leave once the peer's input has ended too (and its data is in,
       * or late datagrams had their chance), and the peer has confirmed
       * ours (or we stop waiting for it). */
      bool rx_done = run.peer_eof && (run.rx_count >= run.peer_total ||
                                      now >= run.peer_eof_at + EOF_REORDER_MS);
      bool tx_done = run.sent == 0 || run.peer_saw_eof || !resending;
      if (rx_done && tx_done) {
        end_session(&run, true);
        continue;
      }
      if (resending && now >= run.eof_next)
        send_eof(&run, now);
    }
    int wait = np_agent_timeout(run.agent);
    int64_t next = INT64_MAX;
    if (resending)
      next = run.eof_next;
    if (run.connected && run.peer_eof && run.peer_eof_at + EOF_REORDER_MS < next)
      next = run.peer_eof_at + EOF_REORDER_MS;
    if (run.connected && run.rx_count != run.acked_count && run.ack_at + ACK_DELAY_MS < next)
      next = run.ack_at + ACK_DELAY_MS;
    bool want_stdin = run.connected && !run.stdin_eof;
    bool can_send = want_stdin && run.pending_len == 0 && window_open(&run, now);
    if (want_stdin && run.pending_len > 0)
      next = now + 1; /* the socket buffer was full a moment ago */
    else if (want_stdin && !can_send && run.progress_at + STALL_MS < next)
      next = run.progress_at + STALL_MS;
    if (next != INT64_MAX) {
      int64_t d = next - now;
      if (wait < 0 || d < wait)
        wait = d < 0 ? 0 : (int)d;
    }
    struct pollfd pfd[3] = {{sfd, POLLIN, 0},
                            {np_agent_fd(run.agent), POLLIN, 0},
                            {STDIN_FILENO, POLLIN, 0}};
    int nfds = can_send ? 3 : 2;
    if (poll(pfd, (nfds_t)nfds, wait) < 0 && errno != EINTR) {
      say(o, NP_LOG_ERROR, "poll: %s", strerror(errno));
      break;
    }
    if (pfd[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      int sig = read(sfd, &si, sizeof si) == (ssize_t)sizeof si ? (int)si.ssi_signo : SIGINT;
      const char *name = sig == SIGTERM ? "SIGTERM" : "SIGINT";
      char reason[100];
      if (run.connected) {
        /* The peer learns that this was an abort, not the end of our data. */
        snprintf(reason, sizeof reason, "interrupted by %s; the peer is told the session was aborted",
                 name);
        cJSON *ev = cJSON_CreateObject();
        cJSON_AddStringToObject(ev, "event", "closed");
        cJSON_AddStringToObject(ev, "cause", "interrupted");
        cJSON_AddStringToObject(ev, "reason", reason);
        emit(o, ev, reason);
        np_agent_abort(run.agent);
      } else if (!o->listen) {
        snprintf(reason, sizeof reason, "interrupted by %s", name);
        emit_simple(o, "failed", reason);
        np_agent_abort(run.agent);
      }
      /* As --help says: a listener stopped by a signal exits 0, a caller 1. */
      run.exit_code = o->listen ? CLI_EXIT_OK : CLI_EXIT_FAIL;
      break;
    }
    now = mono_ms();
    if (run.connected && !run.stdin_eof && run.pending_len > 0)
      (void)flush_pending(&run);
    else if (nfds == 3 && (pfd[2].revents & (POLLIN | POLLHUP | POLLERR)))
      read_stdin(&run, now);
    np_agent_process(run.agent);
    np_agent_event ev;
    while (np_agent_next_event(run.agent, &ev))
      on_event(&run, &ev);
    if (run.connected)
      drain_data(&run, mono_ms());
  }
  restore_stdin();
  np_agent_free(run.agent); /* says goodbye to the peer, deletes the port mapping */
  close(sfd);
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
