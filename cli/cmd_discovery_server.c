/* natpunch discovery-server: a STUN server (RFC 8489 Binding, RFC 5780 NAT
 * behaviour discovery) in the foreground. */
#include "cli.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define CMD "discovery-server"
#define DEFAULT_STUN_PORT 3478

static void usage(FILE *out) {
  fprintf(out,
          "Usage: natpunch discovery-server --listen IP[:PORT] [OPTIONS]\n\n"
          "Runs a STUN server in the foreground: it answers Binding requests with the\n"
          "address it sees (XOR-MAPPED-ADDRESS; MAPPED-ADDRESS for RFC 3489 clients) and\n"
          "where it answered from (RESPONSE-ORIGIN). With both --alt-ip and --alt-port it\n"
          "listens on four addresses (IP1:P1, IP1:P2, IP2:P1, IP2:P2), advertises\n"
          "OTHER-ADDRESS and honours CHANGE-REQUEST, so clients can classify their NAT\n"
          "(RFC 5780). RESPONSE-PORT is honoured for ports >= 1024 of the client's own IP.\n"
          "Requests are answered without MESSAGE-INTEGRITY (the server has no\n"
          "credentials); only Binding requests are answered.\n\n"
          "Options:\n"
          "  -l, --listen IP[:PORT]  primary address IP1:P1 (port defaults to %d; IPv6 as\n"
          "                          [addr]:port). 0.0.0.0 (all IPv4 addresses) or [::]\n"
          "                          (all IPv6 addresses) answer from the address each\n"
          "                          request reached, and exclude --alt-ip\n"
          "  -a, --alt-ip IP         alternate IP (IP2), same family as --listen\n"
          "  -p, --alt-port PORT     alternate port (P2). With only one of --alt-ip and\n"
          "                          --alt-port the extra sockets answer plain Binding\n"
          "                          requests, and CHANGE-REQUEST gets a 420 error\n"
          "  -t, --threads N         worker threads, 1..256 (default: one per online CPU)\n"
          "  -s, --software TEXT     add a SOFTWARE attribute to every response (default:\n"
          "                          none, which keeps responses small)\n"
          "  -v, --verbose           log every dropped packet and error response\n"
          "  -h, --help              show this help\n\n"
          "Logs go to stderr. SIGINT or SIGTERM stop the server and print its counters;\n"
          "SIGUSR1 prints the counters and keeps running.\n\n"
          "Exit status: 0 stopped by SIGINT/SIGTERM; 1 the server could not start (e.g. an\n"
          "address cannot be bound) or failed while running; 2 bad command line.\n",
          DEFAULT_STUN_PORT);
}

static void log_stats(const np_discovery_server *srv, const char *when) {
  np_discovery_stats st;
  np_discovery_server_stats(srv, &st);
  char msg[400];
  snprintf(msg, sizeof msg,
           "%s: received=%" PRIu64 " answered=%" PRIu64 " errors_sent=%" PRIu64
           " dropped_malformed=%" PRIu64 " dropped_ignored=%" PRIu64 " dropped_policy=%" PRIu64
           " send_failures=%" PRIu64,
           when, st.received, st.answered, st.errors_sent, st.dropped_malformed, st.dropped_ignored,
           st.dropped_policy, st.send_failures);
  cli_log_stderr(NULL, NP_LOG_INFO, msg);
}

/* The server as cli_serve() drives it. */
static int serve_run(void *srv) {
  return np_discovery_server_run(srv);
}
static void serve_stop(void *srv) {
  np_discovery_server_stop(srv);
}
static void serve_stats(void *srv, const char *when) {
  log_stats(srv, when);
}

/* Parses a bare IP for --alt-ip: a port there would be ignored, so it is
 * refused rather than silently dropped. */
static int parse_alt_ip(const char *s, np_addr *out) {
  np_addr with_port;
  if (np_addr_parse(s, 0, &with_port) == 0 || np_addr_parse(s, 1, out) != 0) {
    cli_usage_error(CMD,
                    "--alt-ip: '%s' is not a numeric IP address without a port "
                    "(expected e.g. 203.0.113.2 or 2001:db8::2)",
                    s);
    return -1;
  }
  return 0;
}

int cli_discovery_server(int argc, char **argv) {
  static const struct option opts[] = {
      {"listen", required_argument, NULL, 'l'},   {"alt-ip", required_argument, NULL, 'a'},
      {"alt-port", required_argument, NULL, 'p'}, {"threads", required_argument, NULL, 't'},
      {"software", required_argument, NULL, 's'}, {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
  np_discovery_server_config cfg = {0};
  cfg.log = cli_log_stderr;
  cfg.log_level = NP_LOG_INFO;
  bool have_listen = false;
  const char *listen_text = NULL, *alt_ip_text = NULL; /* as typed, for errors */
  long v;
  int c;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":l:a:p:t:s:vh", opts, NULL)) != -1) {
    switch (c) {
    case 'l':
      if (cli_parse_addr(CMD, "--listen", optarg, DEFAULT_STUN_PORT, &cfg.listen) != 0)
        return CLI_EXIT_USAGE;
      have_listen = true;
      listen_text = optarg;
      break;
    case 'a':
      if (parse_alt_ip(optarg, &cfg.alt_ip) != 0)
        return CLI_EXIT_USAGE;
      alt_ip_text = optarg;
      break;
    case 'p':
      if (cli_parse_long(optarg, 1, 65535, &v) != 0)
        return cli_usage_error(CMD, "--alt-port: '%s' is not a port number (1..65535)", optarg);
      cfg.alt_port = (uint16_t)v;
      break;
    case 't':
      if (cli_parse_long(optarg, 1, 256, &v) != 0)
        return cli_usage_error(CMD, "--threads: '%s' is not a number of threads (1..256)", optarg);
      cfg.threads = (int)v;
      break;
    case 's':
      if (strlen(optarg) > 763)
        return cli_usage_error(CMD, "--software: text longer than 763 bytes");
      cfg.software = optarg;
      break;
    case 'v':
      cfg.log_level = NP_LOG_DEBUG;
      break;
    case 'h':
      usage(stdout);
      return CLI_EXIT_OK;
    default:
      return cli_option_error(CMD, c, argv);
    }
  }
  if (optind < argc)
    return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
  if (!have_listen)
    return cli_usage_error(CMD, "--listen IP[:PORT] is required");
  if (alt_ip_text) {
    if (cfg.alt_ip.u.sa.sa_family != cfg.listen.u.sa.sa_family)
      return cli_usage_error(CMD,
                             "--alt-ip '%s' is not of the same address family as --listen '%s'",
                             alt_ip_text, listen_text);
    if (np_addr_same_ip(&cfg.alt_ip, &cfg.listen))
      return cli_usage_error(CMD, "--alt-ip '%s' must differ from the --listen IP", alt_ip_text);
  }
  if (cfg.alt_port && cfg.alt_port == np_addr_port(&cfg.listen))
    return cli_usage_error(CMD, "--alt-port %u must differ from the --listen port",
                           (unsigned)cfg.alt_port);

  np_discovery_server *srv = NULL;
  int rc = np_discovery_server_new(&cfg, &srv);
  if (rc != 0) {
    fprintf(stderr, "natpunch %s: cannot start (%s, see above)\n", CMD, np_strerror(rc));
    return CLI_EXIT_FAIL;
  }
  static const cli_server_ops ops = {serve_run, serve_stop, serve_stats};
  int exit_code = cli_serve(CMD, srv, &ops);
  np_discovery_server_free(srv);
  return exit_code;
}
