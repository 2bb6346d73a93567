/*
 * natpunch listen / connect / send / receive: a direct path to a peer, an
 * encrypted QUIC session on it, and the work that session carries: a byte
 * pipe (stdin/stdout), forwarded TCP connections (--forward / --local), or
 * files (send / receive).
 *
 * All are thin shells over the public agent API (np_agent_*): the agent
 * gathers candidates, exchanges the signed offer and answer through the
 * rendezvous server, punches the path and runs the authenticated session;
 * this file turns its events into JSON lines or sentences on stderr and
 * moves bytes between streams and file descriptors (pump.c) or the file
 * transfer (transfer.c). stdout carries only the peer's data.
 *
 * The caller opens every stream, and its first byte names the service
 * (SVC_*): a listener that serves something else (a pipe asked of a
 * --forward listener, files of a pipe) resets the stream and says so,
 * rather than feeding one protocol to another.
 */
#include "cli.h"
#include "config.h"
#include "progress.h"
#include "pump.h"
#include "transfer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_STUN_PORT 3478
#define DEFAULT_RDV_PORT 7000
#define DEFAULT_TIMEOUT_MS 30000
#define MAX_CONNS 256 /* streams at once (the session allows the peer 256 too) */
#define MAX_FILES 1024
#define CLOSE_DRAIN_MS 10000 /* after the peer's close, for stdout to take what arrived */
/* A stream's first byte: what the caller wants of it. */
#define SVC_PIPE 'p'
#define SVC_FORWARD 'f'
#define SVC_FILES 'x'

enum peer_mode { MODE_PIPE = 0, MODE_FORWARD, MODE_LOCAL, MODE_SEND, MODE_RECEIVE };

enum { OPT_FORCE = 1000 };

struct peer_opts {
  const char *cmd;
  bool listen;
  enum peer_mode mode;
  np_addr forward, local, bind;
  const char *files[MAX_FILES];
  int n_files;
  const char *dir;
  bool force;
  const char *accept_text[NP_AGENT_MAX_ALLOW];
  int n_accept_text;
  uint8_t accept_from[NP_AGENT_MAX_ALLOW][NP_PUBKEY_LEN];
  int n_accept_from;
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

/* The options every peer command shares (listen, connect, send, receive). */
static void common_options(FILE *out) {
  fprintf(out,
          "  -r, --rendezvous IP[:PORT]  rendezvous server (port defaults to %d; default:\n"
          "                              rendezvous = in the config file; required)\n"
          "  -d, --discovery IP[:PORT]   discovery server; give two (port defaults to %d;\n"
          "                              default: the config file's discovery = lines)\n"
          "  -k, --key FILE              identity key (default: key = in the config file,\n"
          "                              else ~/.config/natpunch/key, created on first use)\n"
          "  -c, --config FILE           read settings and aliases from FILE only (default:\n"
          "                              ~/.config/natpunch/config, then\n"
          "                              /etc/natpunch/config)\n"
          "  -b, --bind IP:PORT          the local UDP address and port (default: any\n"
          "                              address, an ephemeral port)\n"
          "  -P, --predict-after MS      start port prediction after MS without a direct\n"
          "                              answer (default 1000)\n"
          "  -T, --prime-ttl N           TTL of priming packets, 1 to 255 (default:\n"
          "                              measured, hops to the outermost NAT + 1)\n"
          "  -W, --peer-timeout SEC      once connected, end the session when nothing\n"
          "                              came from the peer for SEC seconds (it vanished;\n"
          "                              default 20, 1 to 3600; a QUIC PING goes every\n"
          "                              5 s of quiet, or SEC/4 if shorter)\n"
          "  -N, --no-portmap            do not ask the gateway for a port mapping\n"
          "  -j, --json                  events as JSON lines on stderr\n"
          "  -v, --verbose               log protocol steps\n"
          "  -h, --help                  show this help\n\n",
          DEFAULT_RDV_PORT, DEFAULT_STUN_PORT);
}

static void session_text(FILE *out) {
  fputs("The session: once the path is punched, it carries one QUIC connection (RFC\n"
        "9000) whose TLS 1.3 handshake proves both peers' identity keys, so only the\n"
        "peer ID called or accepted can read or send data (not the rendezvous server,\n"
        "not anyone on the path). Streams are reliable and in order; loss is repaired.\n"
        "Addresses are numeric (IPv4, or [IPv6]); host names are not resolved.\n"
        "Servers, key and allow list not given as options come from the config file\n"
        "(see 'natpunch --help'); a PEER is a peer ID or an alias defined there.\n\n",
        out);
}

static void events_text(FILE *out) {
  fputs("JSON events (stderr): {\"event\":\"listening\",\"id\":...} on registration\n"
        "(listen, receive), {\"event\":\"call\",\"from\":...}, {\"event\":\"connected\",\n"
        "\"path\":\"direct\",\"via\":\"host|reflexive|predicted|birthday|portmap\",\n"
        "\"remote\":\"IP:PORT\",\"elapsed_ms\":N,\"probes\":N}, {\"event\":\"path_changed\",\n"
        "\"remote\":...} when the NAT rebinds, {\"event\":\"failed\",\"reason\":...},\n"
        "{\"event\":\"closed\",\"cause\":\"normal|abort|vanished|interrupted\",\n"
        "\"reason\":...}, {\"event\":\"summary\",\"bytes_sent\":N,\"bytes_received\":N,\n"
        "\"duration_ms\":N,\"path\":\"direct\",\"via\":...,\"remote\":...,\"rtt_ms\":N} at the\n"
        "end of each session, and {\"event\":\"log\",\"time_ms\":...,\"level\":...,\n"
        "\"message\":...} for warnings (and --verbose steps). \"abort\": the peer was\n"
        "interrupted; \"vanished\": see --peer-timeout; \"interrupted\": we were.\n"
        "Without --json the same events are sentences.\n\n",
        out);
}

static void listen_usage(FILE *out) {
  fputs("Usage: natpunch listen [--rendezvous IP:PORT] [--discovery IP:PORT]...\n"
        "                       [--key FILE] [--allow PEER]... [--forward IP:PORT]\n"
        "                       [--config FILE] [OPTIONS]\n\n"
        "Registers this peer's ID with the rendezvous server and waits for a call. When\n"
        "an allowed peer calls, both sides punch a direct UDP path through their NATs\n"
        "(discovery servers, port prediction, the birthday method, UPnP/NAT-PMP/PCP).\n"
        "Then, as a pipe: the caller's bytes go to stdout and stdin goes to the caller;\n"
        "or, with --forward, each connection the caller carries (connect --local, or\n"
        "ssh's ProxyCommand) is connected to that TCP service. The listener serves one\n"
        "session (unless --keep). A failed call is reported and the listener waits for\n"
        "the next one; a call that comes during a session is declined (busy, 486).\n\n",
        out);
  session_text(out);
  fputs("Options:\n", out);
  common_options(out);
  fputs("  -a, --allow PEER            accept calls only from this peer (a peer ID or an\n"
        "                              alias); repeatable\n"
        "  -A, --allow-file FILE       accept calls only from the peers in FILE, one\n"
        "                              peer ID or alias per line ('#' starts a comment);\n"
        "                              a file that names no peer is an error, never\n"
        "                              \"anyone\" (without --allow/--allow-file the config\n"
        "                              file's allow = lines apply; with none, anyone may\n"
        "                              call; refused callers get error 403 from the\n"
        "                              server)\n"
        "  -f, --forward IP:PORT       connect each of the caller's streams to this TCP\n"
        "                              service (e.g. 127.0.0.1:22 for ssh) instead of\n"
        "                              stdin/stdout\n"
        "  -K, --keep                  after a session, wait for the next call (stdin\n"
        "                              goes to the first session only)\n\n",
        out);
  events_text(out);
  fputs("Exit status: 0 the session ended normally (both directions of the pipe done,\n"
        "or the peer closed after its work), or SIGINT/SIGTERM stopped the listener (a\n"
        "session in progress is aborted, and the peer told so); 1 failure (bad key, no\n"
        "UDP socket, the peer aborted or vanished, or another `listen` with the same\n"
        "key took the ID: a \"replaced\" event); 2 bad command line or config file.\n"
        "With --keep, only SIGINT/SIGTERM (exit 0) or a replacement (exit 1) end it.\n",
        out);
}

static void connect_usage(FILE *out) {
  fputs("Usage: natpunch connect [--rendezvous IP:PORT] [--discovery IP:PORT]...\n"
        "                        [--key FILE] [--local IP:PORT] [--config FILE]\n"
        "                        [OPTIONS] PEER\n"
        "       natpunch connect [OPTIONS] --peer PEER\n\n"
        "Calls PEER through the rendezvous server and punches a direct UDP path to it\n"
        "through both NATs. Then, as a pipe: stdin goes to the peer and the peer's bytes\n"
        "to stdout; the end of stdin half-closes, and the command exits when both\n"
        "directions are done. That makes it an ssh ProxyCommand:\n"
        "    Host laptop\n"
        "        ProxyCommand natpunch connect %h\n"
        "(with `natpunch listen --forward 127.0.0.1:22` on the laptop). With --local,\n"
        "it accepts TCP connections on IP:PORT instead and carries each over its own\n"
        "stream to the listener's --forward service, many at once, until interrupted.\n\n",
        out);
  session_text(out);
  fputs("Options:\n", out);
  common_options(out);
  fputs("  -p, --peer PEER             the peer to call: a peer ID or an alias (the\n"
        "                              same as the PEER argument)\n"
        "  -l, --local IP:PORT         accept TCP connections here and forward each to\n"
        "                              the peer (it must listen with --forward)\n"
        "  -t, --timeout SEC           give up if no path is up after SEC seconds\n"
        "                              (default 30, 0.1 to 3600)\n\n",
        out);
  events_text(out);
  fputs("Exit status: 0 connected and the session ended normally (both directions\n"
        "done, or the peer closed after its work); 1 no path (peer unknown, offline,\n"
        "busy or refusing us, no answer, no direct path before the timeout, a peer\n"
        "that could not prove its key, bad key), the peer aborted or vanished, or\n"
        "interrupted by SIGINT/SIGTERM (the peer is told the session was aborted;\n"
        "with --local this is how it ends); 2 bad command line or config file.\n",
        out);
}

static void send_usage(FILE *out) {
  fputs("Usage: natpunch send [OPTIONS] --peer PEER FILE...\n\n"
        "Calls PEER (which runs `natpunch receive`) and offers it the FILEs: each\n"
        "one's name (without its directories), size, permission bits and SHA-256.\n"
        "The receiver decides; each accepted file is sent, resumed where an earlier\n"
        "transfer of the same file stopped, and checked against its SHA-256 there.\n"
        "The files are read (hashed) before the call. A FILE whose name the\n"
        "receiver would refuse (a leading dot, control characters, over 255 bytes)\n"
        "or two FILEs with the same name are a usage error.\n"
        "Progress: a bar on a terminal (bytes, rate, time left), plain lines without\n"
        "one, JSON events with --json.\n\n",
        out);
  session_text(out);
  fputs("Options:\n", out);
  common_options(out);
  fputs("  -p, --peer PEER             the peer to send to: a peer ID or an alias\n"
        "  -t, --timeout SEC           give up if no path is up after SEC seconds\n"
        "                              (default 30, 0.1 to 3600)\n\n",
        out);
  events_text(out);
  fputs("File events (--json): {\"event\":\"progress\",\"file\":...,\"bytes\":N,\"total\":N,\n"
        "\"rate\":N} about once a second, and at each file's end {\"event\":\"file\",\n"
        "\"name\":...,\"size\":N,\"offset\":N,\"elapsed_ms\":N,\"sha256\":...,\"status\":\n"
        "\"ok|resumed|refused|mismatch|failed\",\"reason\":...} (offset: where the data\n"
        "began, > 0 for a resume; offset and elapsed_ms only for a file that started;\n"
        "reason for refused, mismatch and failed). The summary's bytes_sent counts\n"
        "what this run sent: a resumed file's data from its offset, and the framing.\n\n"
        "Exit status: 0 every file arrived with its checksum verified; 1 a file was\n"
        "refused, failed or did not match, no path, the peer takes no files (it runs\n"
        "`listen`), the peer aborted or vanished, or interrupted by SIGINT/SIGTERM\n"
        "(what arrived is kept for a resume); 2 bad command line, config file, or a\n"
        "FILE that cannot be read or sent.\n",
        out);
}

static void receive_usage(FILE *out) {
  fputs("Usage: natpunch receive [OPTIONS] [--accept-from PEER]... [--force] [DIR]\n\n"
        "Registers with the rendezvous server and waits for a peer's `natpunch send`.\n"
        "It shows who offers which files, then takes them at once if the sender is\n"
        "named by --accept-from, else asks \"Accept? [y/N]\" on the terminal; with\n"
        "no terminal to ask, an offer from anyone else is refused. Files go to DIR\n"
        "(default: the current directory) as .NAME.natpunch-part and are renamed to\n"
        "NAME, with the sender's permission bits, only once their SHA-256 matches;\n"
        "an interrupted transfer is kept and resumed when the same file (same size\n"
        "and SHA-256) is sent again. An existing file is never overwritten without\n"
        "--force; names with '/', '..', a leading dot or control characters are\n"
        "refused.\n\n",
        out);
  session_text(out);
  fputs("Options:\n", out);
  common_options(out);
  fputs("  -a, --allow PEER            accept calls only from this peer; repeatable\n"
        "  -A, --allow-file FILE       accept calls only from the peers in FILE\n"
        "  -y, --accept-from PEER      take this peer's files without asking (and allow\n"
        "                              its calls); repeatable\n"
        "      --force                 overwrite existing files\n"
        "  -K, --keep                  after a transfer, wait for the next one\n\n",
        out);
  events_text(out);
  fputs("File events (--json): {\"event\":\"offer\",\"from\":...,\"files\":[{\"name\":...,\n"
        "\"size\":N,\"sha256\":...},...]} before anything is written,\n"
        "{\"event\":\"refused\",\"reason\":...} when the offer is refused for want of a\n"
        "terminal, and {\"event\":\"progress\",...} and {\"event\":\"file\",...} as for\n"
        "`natpunch send` (\"status\":\"resumed\" with the offset it resumed at).\n\n"
        "Exit status: 0 every file offered arrived with its checksum verified, or\n"
        "SIGINT/SIGTERM stopped the receiver (a transfer in progress is aborted;\n"
        "what arrived is kept for a resume); 1 a file was refused (declined, no\n"
        "terminal to ask, it exists, no space, a bad name), failed or did not\n"
        "match, or the peer aborted or vanished (what arrived is kept); 2 bad\n"
        "command line or config file, or DIR is not a directory this user may\n"
        "write to. With --keep, only SIGINT/SIGTERM (exit 0) or a replacement (exit\n"
        "1) end it.\n",
        out);
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
  cJSON_AddNumberToObject(o, "secure_ms", (double)st->secure_ms);
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
  for (int i = 0; i < o->n_accept_text; i++) {
    if (cli_config_resolve(c, o->accept_text[i], o->accept_from[o->n_accept_from]) != 0)
      return not_a_peer(o, "--accept-from", o->accept_text[i]);
    o->n_accept_from++;
  }
  if (o->listen && o->n_allow_text == 0)
    for (int i = 0; i < c->n_allow; i++) {
      char where[2 * CLI_CFG_MAX_PATH + 40], src[2 * CLI_CFG_MAX_PATH + 16];
      snprintf(where, sizeof where, "allow = in %s", cli_config_sources(c, src, sizeof src));
      if ((rc = add_allow(o, c->allow[i], where)) != 0)
        return rc;
    }
  /* A peer whose files are taken unasked may call, when a list says who
   * may. */
  for (int i = 0; i < o->n_accept_from && o->n_allow > 0; i++) {
    bool have = false;
    for (int k = 0; k < o->n_allow; k++)
      have |= memcmp(o->allow[k], o->accept_from[i], NP_PUBKEY_LEN) == 0;
    if (!have && o->n_allow < NP_AGENT_MAX_ALLOW)
      memcpy(o->allow[o->n_allow++], o->accept_from[i], NP_PUBKEY_LEN);
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
                                       {"forward", required_argument, NULL, 'f'},
                                       {"local", required_argument, NULL, 'l'},
                                       {"bind", required_argument, NULL, 'b'},
                                       {"accept-from", required_argument, NULL, 'y'},
                                       {"force", no_argument, NULL, OPT_FORCE},
                                       {"json", no_argument, NULL, 'j'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  int c, rc;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":r:c:d:k:a:A:p:t:P:T:W:f:l:b:y:NKjvh", opts, NULL)) != -1) {
    bool listen_only = c == 'a' || c == 'A' || c == 'K', connect_only = c == 'p' || c == 't';
    bool wrong = (listen_only && !o->listen) || (connect_only && o->listen) ||
                 (c == 'f' && strcmp(o->cmd, "listen") != 0) ||
                 (c == 'l' && strcmp(o->cmd, "connect") != 0) ||
                 ((c == 'y' || c == OPT_FORCE) && o->mode != MODE_RECEIVE);
    if (wrong)
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
    case 'f':
      if (cli_parse_addr(o->cmd, "--forward", optarg, 0, &o->forward) != 0)
        return CLI_EXIT_USAGE;
      o->mode = MODE_FORWARD;
      break;
    case 'l':
      if (cli_parse_addr(o->cmd, "--local", optarg, 0, &o->local) != 0)
        return CLI_EXIT_USAGE;
      o->mode = MODE_LOCAL;
      break;
    case 'b':
      if (cli_parse_addr(o->cmd, "--bind", optarg, 0, &o->bind) != 0)
        return CLI_EXIT_USAGE;
      break;
    case 'y':
      if (o->n_accept_text == NP_AGENT_MAX_ALLOW)
        return cli_usage_error(o->cmd, "more than %d --accept-from peers", NP_AGENT_MAX_ALLOW);
      o->accept_text[o->n_accept_text++] = optarg;
      break;
    case OPT_FORCE:
      o->force = true;
      break;
    case 'j':
      o->json = true;
      break;
    case 'v':
      o->verbose = true;
      break;
    case 'h':
      (o->mode == MODE_SEND      ? send_usage
       : o->mode == MODE_RECEIVE ? receive_usage
       : o->listen               ? listen_usage
                                 : connect_usage)(stdout);
      return -1;
    default:
      return cli_option_error(o->cmd, c, argv);
    }
  }
  if (o->mode == MODE_SEND) {
    for (; optind < argc; optind++) {
      if (o->n_files == MAX_FILES)
        return cli_usage_error(o->cmd, "more than %d files", MAX_FILES);
      struct stat stf;
      errno = 0;
      if (stat(argv[optind], &stf) != 0 || !S_ISREG(stf.st_mode) || access(argv[optind], R_OK) != 0)
        return cli_usage_error(o->cmd, "'%s' is not a readable file%s%s", argv[optind],
                               errno ? ": " : "", errno ? strerror(errno) : "");
      o->files[o->n_files++] = argv[optind];
    }
    if (o->n_files == 0)
      return cli_usage_error(o->cmd, "no FILE to send");
  }
  if (o->mode == MODE_RECEIVE) {
    o->dir = optind < argc ? argv[optind++] : ".";
    struct stat std_;
    if (stat(o->dir, &std_) != 0 || !S_ISDIR(std_.st_mode) || access(o->dir, W_OK) != 0)
      return cli_usage_error(o->cmd, "'%s' is not a directory this user may write to", o->dir);
  }
  /* `connect laptop` is `connect --peer laptop`. */
  if (!o->listen && o->mode != MODE_SEND && optind < argc) {
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
  int fam = (o->n_discovery ? o->discovery[0] : o->rendezvous).u.sa.sa_family;
  if (o->bind.u.sa.sa_family != 0 && o->bind.u.sa.sa_family != fam)
    return cli_usage_error(o->cmd, "--bind is %s but the servers are %s: give an address of their "
                                   "family",
                           o->bind.u.sa.sa_family == AF_INET6 ? "IPv6" : "IPv4",
                           fam == AF_INET6 ? "IPv6" : "IPv4");
  return 0;
}


/* ---- the loop ------------------------------------------------------------ */

/* One stream's work: a byte pump (pipe, forwarded connection) or a file
 * transfer. */
struct conn {
  bool used;
  int index; /* in peer_run.conns */
  bool awaiting_svc; /* listener: the stream's service byte is not read yet */
  bool is_xfer;
  pump p;
  /* transfer */
  np_xfer *x;
  int64_t stream;
  uint8_t out[PUMP_BUF];
  size_t out_len, out_off;
  bool out_fin, fin_sent, peer_eof;
  bool reported; /* the transfer's failure was said */
};

struct peer_run {
  struct peer_opts *o;
  np_agent *agent;
  const np_identity *identity;
  char id[NP_PEER_ID_LEN + 1];
  bool connected, done;
  int exit_code;
  bool stdin_used; /* the pipe's stdin belongs to the first session */
  int listen_fd;   /* connect --local */
  /* Allocated as streams come (each holds its buffers); a slot whose
   * conn is no longer used is freed by conns_sweep(). */
  struct conn *conns[MAX_CONNS];
  int64_t connected_at;
  uint8_t peer[NP_PUBKEY_LEN];
  bool session_ok;   /* this session's work finished as it should */
  bool summarized;   /* the summary of this session is out */
  int files_ok, files_bad;
  /* Service bytes (SVC_*) this session sent and read: the transport counts
   * them, the summary reports the user's bytes. */
  uint64_t svc_sent, svc_read;
  np_progress *progress;
  bool asking;       /* receive: waiting for the user's y/N */
  int ask_conn;
  /* send: the offer, made (files opened and hashed) before the call, so a
   * bad FILE is a usage error and hashing a large file does not stall a
   * live session */
  np_xfer *outgoing;
  bool closing; /* the session is closed: reads fail for that, not a reset */
};

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fmt_bytes(uint64_t n, char *buf, size_t size) {
  if (n < 10000)
    snprintf(buf, size, "%llu B", (unsigned long long)n);
  else if (n < 10000000)
    snprintf(buf, size, "%.1f kB", (double)n / 1e3);
  else if (n < 10000000000ull)
    snprintf(buf, size, "%.1f MB", (double)n / 1e6);
  else
    snprintf(buf, size, "%.2f GB", (double)n / 1e9);
}

/* The one-line account of a session: bytes each way, duration, path. */
static void emit_summary(struct peer_run *r) {
  if (r->summarized || !r->connected)
    return;
  r->summarized = true;
  np_session_stats st;
  np_agent_stats(r->agent, &st);
  char remote[NP_ADDRSTRLEN], up[32], down[32], sentence[400];
  np_addr_format(&st.remote, remote, sizeof remote);
  uint64_t sent = st.stream_bytes_sent - (r->svc_sent <= st.stream_bytes_sent ? r->svc_sent : 0);
  uint64_t got =
      st.stream_bytes_received - (r->svc_read <= st.stream_bytes_received ? r->svc_read : 0);
  fmt_bytes(sent, up, sizeof up);
  fmt_bytes(got, down, sizeof down);
  int64_t dur = mono_ms() - r->connected_at;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "event", "summary");
  cJSON_AddNumberToObject(o, "bytes_sent", (double)sent);
  cJSON_AddNumberToObject(o, "bytes_received", (double)got);
  cJSON_AddNumberToObject(o, "duration_ms", (double)dur);
  cJSON_AddStringToObject(o, "path", "direct");
  cJSON_AddStringToObject(o, "via", np_via_name(st.via));
  cJSON_AddStringToObject(o, "remote", remote);
  cJSON_AddNumberToObject(o, "rtt_ms", (double)st.rtt_ms);
  cJSON_AddNumberToObject(o, "packets_lost", (double)st.packets_lost);
  cJSON_AddNumberToObject(o, "path_changes", st.path_changes);
  snprintf(sentence, sizeof sentence,
           "session: sent %s, received %s in %.1f s, direct path via %s to %s (rtt %lld ms, "
           "%llu packets lost%s)",
           up, down, (double)dur / 1000, np_via_name(st.via), remote, (long long)st.rtt_ms,
           (unsigned long long)st.packets_lost, st.path_changes ? ", path changed" : "");
  emit(r->o, o, sentence);
}

static struct conn *conn_new(struct peer_run *r) {
  for (int i = 0; i < MAX_CONNS; i++)
    if (!r->conns[i]) {
      struct conn *c = calloc(1, sizeof *c);
      if (!c)
        return NULL;
      c->used = true;
      c->index = i;
      c->p.in_fd = c->p.out_fd = -1;
      r->conns[i] = c;
      return c;
    }
  return NULL;
}

/* Frees the slots of conns that are no longer used. */
static void conns_sweep(struct peer_run *r) {
  for (int i = 0; i < MAX_CONNS; i++)
    if (r->conns[i] && !r->conns[i]->used) {
      free(r->conns[i]);
      r->conns[i] = NULL;
    }
}

/* The session under a transfer ended (why: the agent's reason): files in
 * flight are reported failed, and where what arrived is. */
static void xfer_interrupted(struct peer_run *r, struct conn *c, const char *why) {
  if (!c->is_xfer || !c->x)
    return;
  np_xfer_state s = np_xfer_get_state(c->x);
  if (s == NP_XFER_DONE || s == NP_XFER_FAILED)
    return;
  char text[300];
  /* The advice first: the agent's reason may be long enough to be cut. */
  snprintf(text, sizeof text, "interrupted; %s: %s",
           r->o->listen ? "what arrived is kept, and resumed when the file is sent again"
                        : "what the receiver got is kept there, and resumed when the file is "
                          "sent again",
           why);
  np_xfer_interrupt(c->x, text);
  c->reported = true;
}

static void conn_free(struct peer_run *r, struct conn *c) {
  if (!c->used)
    return;
  if (c->is_xfer) {
    xfer_interrupted(r, c, "interrupted");
    np_xfer_free(c->x);
    c->x = NULL;
  } else if (!c->awaiting_svc) {
    pump_close(&c->p, r->agent);
  }
  c->used = false;
}

static int n_conns(const struct peer_run *r) {
  int n = 0;
  for (int i = 0; i < MAX_CONNS; i++)
    n += r->conns[i] && r->conns[i]->used;
  return n;
}

static void xfer_event(void *user, const np_xfer_event *ev) {
  struct peer_run *r = user;
  if (ev->kind == NP_XFER_EV_OFFER) {
    /* Who sends what is shown before anything is written, also when the
     * sender is trusted (--accept-from) and the offer is taken at once. */
    for (int i = 0; i < MAX_CONNS; i++) {
      struct conn *c = r->conns[i];
      if (c && c->used && c->is_xfer && c->x && np_xfer_get_state(c->x) == NP_XFER_OFFERED) {
        char id[NP_PEER_ID_LEN + 1];
        np_peer_id_format(r->peer, id);
        np_progress_offer(r->progress, id, c->x);
        break;
      }
    }
    return;
  }
  np_progress_xfer_event(r->progress, ev, mono_ms());
  if (ev->kind == NP_XFER_EV_END) {
    if (ev->file->status == NP_XFER_FILE_OK)
      r->files_ok++;
    else
      r->files_bad++;
  }
}

/* A transfer on stream id: sender (send) or receiver (receive). */
static int start_xfer(struct peer_run *r, struct conn *c, int64_t id, bool first_svc_byte) {
  char err[300];
  c->is_xfer = true;
  c->stream = id;
  int rc;
  if (!r->o->listen) {
    /* One offer per run: a caller has one session. */
    c->x = r->outgoing;
    r->outgoing = NULL;
    rc = c->x ? 0 : NP_ERR_INVAL;
    snprintf(err, sizeof err, "the files were offered already");
  } else {
    bool trusted = false;
    for (int i = 0; i < r->o->n_accept_from; i++)
      trusted |= memcmp(r->o->accept_from[i], r->peer, NP_PUBKEY_LEN) == 0;
    np_xfer_recv_config rc_ = {.dir = r->o->dir,
                               .force = r->o->force,
                               .auto_accept = trusted,
                               .on_event = xfer_event,
                               .user = r};
    rc = np_xfer_receiver_new(&rc_, &c->x, err, sizeof err);
  }
  if (rc != 0) {
    emit_simple(r->o, "failed", err);
    (void)np_agent_stream_reset(r->agent, id);
    c->used = false;
    return -1;
  }
  if (first_svc_byte) {
    c->out[0] = SVC_FILES;
    c->out_len = 1;
    r->svc_sent++;
  }
  return 0;
}

/* The user's answer to "Accept?" (receive without --accept-from). */
static void ask_user(struct peer_run *r, struct conn *c) {
  if (!isatty(STDIN_FILENO)) {
    emit_simple(r->o, "refused",
                "no terminal to ask, and the sender is not in --accept-from: offer refused");
    (void)np_xfer_refuse(c->x);
    return;
  }
  fprintf(stderr, "Accept? [y/N] ");
  fflush(stderr);
  r->asking = true;
  r->ask_conn = c->index;
}

static void answer_user(struct peer_run *r) {
  char line[64] = "";
  ssize_t n = read(STDIN_FILENO, line, sizeof line - 1);
  struct conn *c = r->conns[r->ask_conn];
  r->asking = false;
  /* The terminal echoed the answer's newline; a log file did not. */
  if (!isatty(STDERR_FILENO))
    fputc('\n', stderr);
  if (!c || !c->used || !c->is_xfer)
    return;
  bool yes = n > 0 && (line[0] == 'y' || line[0] == 'Y');
  if (yes)
    (void)np_xfer_accept_all(c->x);
  else
    (void)np_xfer_refuse(c->x);
}

/* Moves a transfer's bytes; true when something moved. */
static bool run_xfer(struct peer_run *r, struct conn *c) {
  bool moved = false;
  for (int round = 0; round < 16; round++) {
    bool any = false;
    uint8_t buf[PUMP_BUF];
    if (!c->peer_eof) {
      long n = np_agent_stream_read(r->agent, c->stream, buf, sizeof buf);
      if (n > 0) {
        (void)np_xfer_input(c->x, buf, (size_t)n);
        any = true;
      } else if (n == 0) {
        (void)np_xfer_input_eof(c->x);
        c->peer_eof = any = true;
      } else if (n != NP_ERR_AGAIN && r->closing) {
        c->peer_eof = true; /* xfer_interrupted says why, with the session's reason */
      } else if (n != NP_ERR_AGAIN) {
        if (np_xfer_get_state(c->x) != NP_XFER_FAILED && !c->reported) {
          /* A listener that serves no files resets the stream at once. */
          emit_simple(r->o, "failed",
                      np_xfer_get_state(c->x) == NP_XFER_DONE
                          ? "the peer reset the transfer stream after the transfer"
                          : "the peer reset the transfer stream (is it running `natpunch "
                            "receive`? a `listen` takes no files)");
          c->reported = true;
        }
        if (np_xfer_get_state(c->x) != NP_XFER_DONE) /* a finished transfer stays so */
          np_xfer_cancel(c->x);
        c->peer_eof = any = true;
      }
    }
    const char *why;
    if (np_xfer_error(c->x, &why) != 0 && !c->reported) {
      emit_simple(r->o, "failed", why);
      c->reported = true;
    }
    if (np_xfer_get_state(c->x) == NP_XFER_OFFERED && !r->asking && r->o->listen)
      ask_user(r, c);
    if (c->out_off == c->out_len && !c->out_fin) {
      bool fin = false;
      c->out_off = 0;
      c->out_len = np_xfer_output(c->x, c->out, sizeof c->out, &fin);
      c->out_fin = fin;
    }
    if (c->out_len > c->out_off) {
      long w = np_agent_stream_write(r->agent, c->stream, c->out + c->out_off,
                                     c->out_len - c->out_off);
      if (w > 0) {
        c->out_off += (size_t)w;
        any = true;
      }
    }
    if (c->out_fin && c->out_off == c->out_len && !c->fin_sent &&
        np_agent_stream_shutdown(r->agent, c->stream) == 0)
      c->fin_sent = any = true;
    if (!any)
      break;
    moved = true;
  }
  return moved;
}

static bool xfer_done(const struct peer_run *r, const struct conn *c) {
  np_xfer_state s = np_xfer_get_state(c->x);
  if (s != NP_XFER_DONE && s != NP_XFER_FAILED)
    return false;
  int st = np_agent_stream_state(r->agent, c->stream);
  return !c->fin_sent ? s == NP_XFER_FAILED && c->peer_eof
                      : st < 0 || (st & (NP_STREAM_WRITE_ACKED | NP_STREAM_RESET));
}

/* The caller's stream for the pipe, the transfer, or one local TCP
 * connection: its first byte names the service. */
static int open_stream(struct peer_run *r, int in_fd, int out_fd, bool sockets) {
  int64_t id;
  int rc = np_agent_stream_open(r->agent, &id);
  if (rc != 0)
    return rc;
  struct conn *c = conn_new(r);
  if (!c) {
    (void)np_agent_stream_reset(r->agent, id);
    return NP_ERR_NOSPACE;
  }
  if (r->o->mode == MODE_SEND)
    return start_xfer(r, c, id, true) == 0 ? 0 : NP_ERR_INVAL;
  pump_init(&c->p, id, in_fd, out_fd, sockets);
  c->p.up[0] = r->o->mode == MODE_PIPE ? SVC_PIPE : SVC_FORWARD;
  c->p.up_len = 1;
  c->p.bytes_up = (uint64_t)-1; /* the service byte is not the user's */
  r->svc_sent++;
  return 0;
}

static void on_connected(struct peer_run *r) {
  r->connected = true;
  r->closing = false;
  r->summarized = false;
  r->session_ok = false;
  r->svc_sent = r->svc_read = 0;
  r->files_ok = r->files_bad = 0;
  r->connected_at = mono_ms();
  np_session_stats st;
  np_agent_stats(r->agent, &st);
  memcpy(r->peer, st.peer, NP_PUBKEY_LEN);
  emit_connected(r->o, &st);
  if (r->o->listen)
    return; /* the caller opens the streams */
  if (r->o->mode == MODE_PIPE || r->o->mode == MODE_SEND) {
    int rc = open_stream(r, STDIN_FILENO, STDOUT_FILENO, false);
    if (rc != 0) {
      emit_simple(r->o, "failed", "cannot open a stream to the peer");
      np_agent_abort(r->agent);
      r->done = true;
      r->exit_code = CLI_EXIT_FAIL;
    }
    r->stdin_used = true;
  }
}

/* Listener: a stream's service byte arrived, or not yet. */
static void take_service(struct peer_run *r, struct conn *c) {
  uint8_t svc;
  long n = np_agent_stream_read(r->agent, c->p.stream, &svc, 1);
  if (n == NP_ERR_AGAIN)
    return;
  int64_t id = c->p.stream;
  c->awaiting_svc = false;
  if (n == 1)
    r->svc_read++;
  /* Bytes (a pipe, or one forwarded connection: the same to a listener,
   * so `connect` as ssh's ProxyCommand reaches a --forward listener) or
   * files. A pipe listener has one stdin and one stdout: one pipe at a
   * time. */
  bool files = n == 1 && svc == SVC_FILES;
  bool bytes = n == 1 && (svc == SVC_PIPE || svc == SVC_FORWARD);
  int want = r->o->mode == MODE_RECEIVE ? SVC_FILES
             : r->o->mode == MODE_FORWARD ? SVC_FORWARD
                                          : SVC_PIPE;
  bool busy = false;
  for (int i = 0; want == SVC_PIPE && i < MAX_CONNS; i++)
    busy |= r->conns[i] && r->conns[i] != c && r->conns[i]->used && !r->conns[i]->awaiting_svc;
  if ((want == SVC_FILES ? !files : !bytes) || busy) {
    char reason[200];
    if (busy)
      snprintf(reason, sizeof reason, "refused a second stream: this %s serves one pipe",
               r->o->cmd);
    else
      snprintf(reason, sizeof reason, "refused a stream: the peer asked for %s, and this %s %s",
               files ? "files (send)" : bytes ? "a byte stream (connect)" : "nothing",
               r->o->cmd, want == SVC_FILES ? "takes files only" : "carries bytes, not files");
    say(r->o, NP_LOG_WARN, "%s", reason);
    (void)np_agent_stream_reset(r->agent, id);
    c->used = false;
    return;
  }
  if (want == SVC_FILES) {
    (void)start_xfer(r, c, id, false);
    return;
  }
  if (want == SVC_PIPE) {
    if (r->stdin_used) {
      /* stdin belonged to the first session; this one gets no input. */
      pump_init(&c->p, id, -1, STDOUT_FILENO, false);
      c->p.in_eof = true;
    } else {
      pump_init(&c->p, id, STDIN_FILENO, STDOUT_FILENO, false);
      r->stdin_used = true;
    }
    return;
  }
  int fd = socket(r->o->forward.u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  socklen_t len = r->o->forward.u.sa.sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                            : sizeof(struct sockaddr_in);
  if (fd < 0 || (connect(fd, &r->o->forward.u.sa, len) != 0 && errno != EINPROGRESS)) {
    char t[NP_ADDRSTRLEN];
    say(r->o, NP_LOG_WARN, "--forward %s: %s", np_addr_format(&r->o->forward, t, sizeof t),
        strerror(errno));
    if (fd >= 0)
      close(fd);
    (void)np_agent_stream_reset(r->agent, id);
    c->used = false;
    return;
  }
  pump_init(&c->p, id, fd, fd, true);
  c->p.connecting = true;
}

static void accept_streams(struct peer_run *r) {
  int64_t id;
  while (np_agent_stream_accept(r->agent, &id) == 1) {
    struct conn *c = r->o->listen ? conn_new(r) : NULL;
    if (!c) {
      (void)np_agent_stream_reset(r->agent, id); /* callers open, listeners accept */
      continue;
    }
    c->awaiting_svc = true;
    c->p.stream = id;
  }
}

/* Everything this session's work needs is done (pipe both ways, transfer
 * finished)? Forwarding never is: it lasts until closed. */
static bool work_done(struct peer_run *r) {
  if (r->o->mode == MODE_FORWARD || r->o->mode == MODE_LOCAL || n_conns(r) == 0)
    return false;
  for (int i = 0; i < MAX_CONNS; i++) {
    struct conn *c = r->conns[i];
    if (!c || !c->used)
      continue;
    if (c->awaiting_svc)
      return false;
    if (c->is_xfer ? !xfer_done(r, c) : !pump_done(&c->p, r->agent))
      return false;
  }
  return true;
}

/* How this session's work ended, once it has. */
static bool work_ok(struct peer_run *r) {
  bool ok = true;
  int n = 0;
  for (int i = 0; i < MAX_CONNS; i++) {
    struct conn *c = r->conns[i];
    if (!c || !c->used)
      continue;
    n++;
    if (c->is_xfer)
      ok &= np_xfer_get_state(c->x) == NP_XFER_DONE && r->files_bad == 0;
    else
      ok &= !c->p.failed && c->p.out_closed;
  }
  return ok && (n > 0 || r->o->mode == MODE_FORWARD || r->o->mode == MODE_LOCAL);
}

/* A session ended: leave, or with --keep take the next call. */
static void end_session(struct peer_run *r, bool ok) {
  emit_summary(r);
  for (int i = 0; i < MAX_CONNS; i++)
    if (r->conns[i])
      conn_free(r, r->conns[i]);
  conns_sweep(r);
  r->connected = false;
  r->asking = false;
  r->exit_code = ok ? CLI_EXIT_OK : CLI_EXIT_FAIL;
  if (!r->o->listen || !r->o->keep)
    r->done = true;
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
  case NP_AGENT_CONNECTED:
    on_connected(r);
    break;
  case NP_AGENT_STREAM:
    accept_streams(r);
    break;
  case NP_AGENT_PATH_CHANGED: {
    char t[NP_ADDRSTRLEN];
    np_addr_format(&ev->observed, t, sizeof t);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "path_changed");
    cJSON_AddStringToObject(o, "remote", t);
    snprintf(sentence, sizeof sentence, "the path changed: the peer is at %s now", t);
    emit(r->o, o, sentence);
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
    /* What arrived before the close is still readable: deliver it. */
    r->closing = true;
    for (int i = 0; i < MAX_CONNS; i++) {
      struct conn *c = r->conns[i];
      if (!c || !c->used || c->awaiting_svc)
        continue;
      /* The peer may close as soon as its end is acknowledged, before all
       * of it was written out here: a reader slow to take our stdout must
       * not lose the tail (bounded: the session is over anyway). */
      if (c->is_xfer)
        for (int k = 0; k < 64 && run_xfer(r, c); k++)
          ;
      else
        (void)pump_drain(&c->p, r->agent, CLOSE_DRAIN_MS);
      xfer_interrupted(r, c, ev->reason);
    }
    const char *cause = ev->error == NP_ERR_CANCELLED ? "abort"
                        : ev->error == NP_ERR_TIMEOUT ? "vanished"
                                                      : "normal";
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "closed");
    cJSON_AddStringToObject(o, "cause", cause);
    cJSON_AddStringToObject(o, "reason", ev->reason);
    emit(r->o, o, ev->reason);
    bool ok = ev->error == 0 && (work_ok(r) || r->session_ok);
    if (ev->error == 0 && !ok && r->o->mode != MODE_FORWARD && r->o->mode != MODE_LOCAL)
      say(r->o, NP_LOG_WARN, "the peer closed before this side's work was done");
    end_session(r, ok);
    break;
  }
  }
}

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

static int open_local(struct peer_opts *o) {
  int fd = socket(o->local.u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  socklen_t len = o->local.u.sa.sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                      : sizeof(struct sockaddr_in);
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      bind(fd, &o->local.u.sa, len) != 0 || listen(fd, 64) != 0) {
    char t[NP_ADDRSTRLEN], reason[200];
    snprintf(reason, sizeof reason, "--local %s: %s", np_addr_format(&o->local, t, sizeof t),
             strerror(errno));
    emit_simple(o, "failed", reason);
    if (fd >= 0)
      close(fd);
    return -1;
  }
  return fd;
}

/* connect --local: a local TCP connection becomes a stream. One the peer's
 * stream limit cannot take yet waits in the listen backlog. */
static void accept_local(struct peer_run *r) {
  for (int guard = 0; guard < 16 && n_conns(r) < MAX_CONNS; guard++) {
    int fd = accept4(r->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
      return;
    if (open_stream(r, fd, fd, true) != 0) {
      say(r->o, NP_LOG_WARN, "a local connection was refused: the peer takes no more streams now");
      close(fd);
      return;
    }
  }
}

static void on_signal(struct peer_run *r, int sfd) {
  struct signalfd_siginfo si;
  int sig = read(sfd, &si, sizeof si) == (ssize_t)sizeof si ? (int)si.ssi_signo : SIGINT;
  const char *name = sig == SIGTERM ? "SIGTERM" : "SIGINT";
  char reason[100];
  if (r->connected) {
    /* The peer learns that this was an abort, not the end of our data. */
    snprintf(reason, sizeof reason, "interrupted by %s; the peer is told the session was aborted",
             name);
    cJSON *ev = cJSON_CreateObject();
    cJSON_AddStringToObject(ev, "event", "closed");
    cJSON_AddStringToObject(ev, "cause", "interrupted");
    cJSON_AddStringToObject(ev, "reason", reason);
    emit(r->o, ev, reason);
    emit_summary(r);
    np_agent_abort(r->agent);
  } else if (!r->o->listen) {
    snprintf(reason, sizeof reason, "interrupted by %s", name);
    emit_simple(r->o, "failed", reason);
    np_agent_abort(r->agent);
  }
  /* As --help says: a listener stopped by a signal exits 0, a caller 1. */
  r->exit_code = r->o->listen ? CLI_EXIT_OK : CLI_EXIT_FAIL;
  r->done = true;
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
  static struct peer_run run; /* large (buffers): off the stack */
  memset(&run, 0, sizeof run);
  run.o = o;
  run.exit_code = CLI_EXIT_FAIL;
  run.listen_fd = -1;
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
  if (o->mode == MODE_LOCAL && (run.listen_fd = open_local(o)) < 0) {
    np_identity_free(id);
    close(sfd);
    return CLI_EXIT_FAIL;
  }
  if (o->mode == MODE_SEND || o->mode == MODE_RECEIVE)
    run.progress = np_progress_new(stderr, np_progress_pick(stderr, o->json));
  if (o->mode == MODE_SEND) {
    /* Before the call: a FILE that cannot be sent is the command line's
     * fault (exit 2), and the session does not idle while files are read. */
    char err[PATH_MAX + 300];
    np_xfer_send_config sc = {.paths = (const char *const *)o->files,
                              .count = (size_t)o->n_files,
                              .on_event = xfer_event,
                              .user = &run};
    rc = np_xfer_sender_new(&sc, &run.outgoing, err, sizeof err);
    if (rc != 0) {
      np_identity_free(id);
      np_progress_free(run.progress);
      close(sfd);
      if (rc == NP_ERR_NOMEM) {
        emit_simple(o, "failed", "out of memory");
        return CLI_EXIT_FAIL;
      }
      return cli_usage_error(o->cmd, "%s", err);
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
      .bind = o->bind,
      .log = o->json ? log_json : cli_log_stderr,
      .log_level = o->verbose ? NP_LOG_DEBUG : NP_LOG_WARN,
  };
  memcpy(cfg.discovery, o->discovery, sizeof cfg.discovery);
  if ((rc = np_agent_new(&cfg, &run.agent)) != 0) {
    char reason[200];
    snprintf(reason, sizeof reason, "cannot start: %s", np_strerror(rc));
    emit_simple(o, "failed", reason);
    np_identity_free(id);
    np_xfer_free(run.outgoing);
    np_progress_free(run.progress);
    if (run.listen_fd >= 0)
      close(run.listen_fd);
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

  while (!run.done) {
    conns_sweep(&run);
    /* Move what can move before sleeping, so that a wakeup is never
     * needed for work already possible. */
    bool busy = false;
    for (int i = 0; i < MAX_CONNS; i++) {
      struct conn *c = run.conns[i];
      if (!c || !c->used)
        continue;
      if (c->awaiting_svc)
        take_service(&run, c);
      else if (c->is_xfer)
        busy |= run_xfer(&run, c);
      else
        busy |= pump_run(&c->p, run.agent);
      /* A forwarded connection that finished both ways (or failed) goes;
       * the pipe and the transfer wait for the session's end. */
      if (c->used && !c->is_xfer && !c->awaiting_svc &&
          (o->mode == MODE_FORWARD || o->mode == MODE_LOCAL) && pump_done(&c->p, run.agent))
        conn_free(&run, c);
    }
    if (run.connected && work_done(&run)) {
      run.session_ok = work_ok(&run);
      emit_summary(&run);
      np_agent_close(run.agent);
      end_session(&run, run.session_ok);
      continue;
    }
    struct pollfd pfd[2 * MAX_CONNS + 4];
    nfds_t n = 0;
    pfd[n++] = (struct pollfd){sfd, POLLIN, 0};
    pfd[n++] = (struct pollfd){np_agent_fd(run.agent), POLLIN, 0};
    if (run.listen_fd >= 0 && run.connected)
      pfd[n++] = (struct pollfd){run.listen_fd, POLLIN, 0};
    if (run.asking)
      pfd[n++] = (struct pollfd){STDIN_FILENO, POLLIN, 0};
    for (int i = 0; i < MAX_CONNS; i++)
      if (run.conns[i] && run.conns[i]->used && !run.conns[i]->is_xfer &&
          !run.conns[i]->awaiting_svc)
        n += (nfds_t)pump_poll(&run.conns[i]->p, pfd + n);
    int wait = busy ? 0 : np_agent_timeout(run.agent);
    if (poll(pfd, n, wait) < 0 && errno != EINTR) {
      say(o, NP_LOG_ERROR, "poll: %s", strerror(errno));
      break;
    }
    if (pfd[0].revents & POLLIN) {
      on_signal(&run, sfd);
      break;
    }
    for (nfds_t i = 2; i < n; i++) {
      if (pfd[i].fd == run.listen_fd && (pfd[i].revents & POLLIN))
        accept_local(&run);
      else if (run.asking && pfd[i].fd == STDIN_FILENO && pfd[i].revents)
        answer_user(&run);
    }
    np_agent_process(run.agent);
    np_agent_event ev;
    while (!run.done && np_agent_next_event(run.agent, &ev))
      on_event(&run, &ev);
    if (run.connected)
      accept_streams(&run);
  }
  for (int i = 0; i < MAX_CONNS; i++)
    if (run.conns[i])
      conn_free(&run, run.conns[i]);
  conns_sweep(&run);
  restore_stdin();
  np_agent_free(run.agent); /* says goodbye to the peer, deletes the port mapping */
  np_xfer_free(run.outgoing);
  np_progress_free(run.progress);
  if (run.listen_fd >= 0)
    close(run.listen_fd);
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

int cli_send(int argc, char **argv) {
  static struct peer_opts o;
  memset(&o, 0, sizeof o);
  o.cmd = "send";
  o.mode = MODE_SEND;
  return run_peer(&o, argc, argv);
}

int cli_receive(int argc, char **argv) {
  static struct peer_opts o;
  memset(&o, 0, sizeof o);
  o.cmd = "receive";
  o.listen = true;
  o.mode = MODE_RECEIVE;
  return run_peer(&o, argc, argv);
}
