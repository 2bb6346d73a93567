/* natpunch rendezvous-server: the signaling server peers register with and
 * exchange offers and answers through, in the foreground. */
#include "cli.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define CMD "rendezvous-server"
/* The port the clients' --rendezvous IP defaults to. */
#define DEFAULT_PORT 7000

static void usage(FILE *out) {
  fprintf(out, "Usage: natpunch rendezvous-server --listen IP[:PORT] [OPTIONS]\n\n"
               "Runs the rendezvous (signaling) server in the foreground, on TCP. A peer\n"
               "registers its peer ID by signing a fresh challenge with its key, so nobody can\n"
               "register an ID whose key it lacks; registering the same ID again moves it to the\n"
               "new connection (the old one gets error 409 and is closed). Registered peers send\n"
               "each other signed offers and answers through the server, which checks that the\n"
               "sender is who it claims, honours the receiver's list of allowed callers for\n"
               "offers, answers and READY alike (403; an answer to the receiver's own offer\n"
               "passes), and "
               "adds the sender's address as it sees it. One thread, one epoll loop.\n\n"
               "Options:\n"
               "  -l, --listen IP[:PORT]       TCP address, numeric (IPv6 as [addr]:port);\n"
               "                               the port defaults to 7000, as the clients'\n"
               "  -c, --max-connections N      connections at once, 1..1000000 (default 20000);\n"
               "                               beyond it new ones get error 503 and are closed.\n"
               "                               The open-file limit is raised to fit (the hard\n"
               "                               limit too, with CAP_SYS_RESOURCE); a warning\n"
               "                               says when it cannot be\n"
               "  -u, --max-unauthenticated N  connections not yet registered, 1..1000000\n"
               "                               (default 1024); beyond it new ones are closed at\n"
               "                               once\n"
               "  -P, --max-conn-per-ip N      connections at once from one source address (IPv4,\n"
               "                               or an IPv6 /64), 1..1000000 (default 256); beyond\n"
               "                               it error 503 and a close\n"
               "  -U, --max-unauth-per-ip N    of them not yet registered, 1..1000000 (default\n"
               "                               16); beyond it new ones are closed at once\n"
               "  -R, --max-register-per-ip N  REGISTER attempts a minute from one source\n"
               "                               address, 1..1000000 (default 120); beyond it\n"
               "                               error 429 and a close\n"
               "  -a, --auth-timeout MS        time from connect to registration (default 10000)\n"
               "  -i, --idle-timeout MS        time without any message from a registered peer\n"
               "                               (default 90000; clients ping every 25 s)\n"
               "  -f, --max-frame BYTES        largest message body, 256..16384 (default 16384);\n"
               "                               a larger one gets error 413 and a close\n"
               "  -r, --rate N                 messages per second per connection, burst twice\n"
               "                               that (default 20); over it, error 429 and a close\n"
               "  -v, --verbose                also log every registration (debug level)\n"
               "  -h, --help                   show this help\n\n"
               "Logs go to stderr; lines about single connections (why one was closed or\n"
               "refused) are limited to 20 a second, the rest counted as suppressed. SIGINT or\n"
               "SIGTERM stop the server and print its counters; SIGUSR1 prints the counters and\n"
               "keeps running.\n\n"
               "Exit status: 0 stopped by SIGINT/SIGTERM; 1 the server could not start (e.g. the\n"
               "address cannot be bound) or failed while running; 2 bad command line.\n");
}

static void log_stats(const np_rendezvous_server *srv, const char *when) {
  np_rendezvous_stats st;
  np_rendezvous_server_stats(srv, &st);
  char msg[512];
  snprintf(msg, sizeof msg,
           "%s: connections=%" PRIu64 " open=%" PRIu64 " registered=%" PRIu64
           " registrations=%" PRIu64 " offers=%" PRIu64 " answers=%" PRIu64 " errors_sent=%" PRIu64
           " closed_bad_frame=%" PRIu64 " closed_idle=%" PRIu64 " closed_auth=%" PRIu64
           " closed_rate=%" PRIu64 " refused_full=%" PRIu64 " refused_per_ip=%" PRIu64,
           when, st.connections, st.open, st.registered, st.registrations, st.offers, st.answers,
           st.errors_sent, st.closed_bad_frame, st.closed_idle, st.closed_auth, st.closed_rate,
           st.refused_full, st.refused_per_ip);
  cli_log_stderr(NULL, NP_LOG_INFO, msg);
}

/* The server as cli_serve() drives it. */
static int serve_run(void *srv) {
  return np_rendezvous_server_run(srv);
}
static void serve_stop(void *srv) {
  np_rendezvous_server_stop(srv);
}
static void serve_stats(void *srv, const char *when) {
  log_stats(srv, when);
}

/* Parses a numeric option into *out, or prints what was expected. */
static int int_option(const char *opt, const char *s, long min, long max, const char *what,
                      int *out) {
  long v;
  if (cli_parse_long(s, min, max, &v) != 0) {
    cli_usage_error(CMD, "%s: '%s' is not %s (%ld..%ld)", opt, s, what, min, max);
    return -1;
  }
  *out = (int)v;
  return 0;
}

int cli_rendezvous_server(int argc, char **argv) {
  static const struct option opts[] = {{"listen", required_argument, NULL, 'l'},
                                       {"max-connections", required_argument, NULL, 'c'},
                                       {"max-unauthenticated", required_argument, NULL, 'u'},
                                       {"auth-timeout", required_argument, NULL, 'a'},
                                       {"idle-timeout", required_argument, NULL, 'i'},
                                       {"max-frame", required_argument, NULL, 'f'},
                                       {"rate", required_argument, NULL, 'r'},
                                       {"max-conn-per-ip", required_argument, NULL, 'P'},
                                       {"max-unauth-per-ip", required_argument, NULL, 'U'},
                                       {"max-register-per-ip", required_argument, NULL, 'R'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  np_rendezvous_server_config cfg = {0};
  cfg.log = cli_log_stderr;
  cfg.log_level = NP_LOG_INFO;
  bool have_listen = false;
  int c;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":l:c:u:a:i:f:r:P:U:R:vh", opts, NULL)) != -1) {
    int bad = 0;
    switch (c) {
    case 'l':
      if (cli_parse_addr(CMD, "--listen", optarg, DEFAULT_PORT, &cfg.listen) != 0)
        return CLI_EXIT_USAGE;
      have_listen = true;
      break;
    case 'c':
      bad = int_option("--max-connections", optarg, 1, 1000000, "a number of connections",
                       &cfg.max_connections);
      break;
    case 'u':
      bad = int_option("--max-unauthenticated", optarg, 1, 1000000, "a number of connections",
                       &cfg.max_unauthenticated);
      break;
    case 'a':
      bad = int_option("--auth-timeout", optarg, 1, 3600000, "milliseconds", &cfg.auth_timeout_ms);
      break;
    case 'i':
      bad = int_option("--idle-timeout", optarg, 1, 86400000, "milliseconds", &cfg.idle_timeout_ms);
      break;
    case 'f':
      bad = int_option("--max-frame", optarg, 256, 16384, "a frame size in bytes", &cfg.max_frame);
      break;
    case 'r':
      bad = int_option("--rate", optarg, 1, 1000000, "messages per second", &cfg.msgs_per_sec);
      break;
    case 'P':
      bad = int_option("--max-conn-per-ip", optarg, 1, 1000000, "a number of connections",
                       &cfg.max_conn_per_ip);
      break;
    case 'U':
      bad = int_option("--max-unauth-per-ip", optarg, 1, 1000000, "a number of connections",
                       &cfg.max_unauth_per_ip);
      break;
    case 'R':
      bad = int_option("--max-register-per-ip", optarg, 1, 1000000, "registrations a minute",
                       &cfg.max_register_per_ip);
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
    if (bad)
      return CLI_EXIT_USAGE;
  }
  if (optind < argc)
    return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
  if (!have_listen)
    return cli_usage_error(CMD, "--listen IP[:PORT] is required");

  np_rendezvous_server *srv = NULL;
  int rc = np_rendezvous_server_new(&cfg, &srv);
  if (rc != 0) {
    fprintf(stderr, "natpunch %s: cannot start (%s, see above)\n", CMD, np_strerror(rc));
    return CLI_EXIT_FAIL;
  }
  static const cli_server_ops ops = {serve_run, serve_stop, serve_stats};
  int exit_code = cli_serve(CMD, srv, &ops);
  np_rendezvous_server_free(srv);
  return exit_code;
}
