/* natpunch probe: "what does my NAT do?" */
#include "cli.h"
#include "config.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD "probe"
#define DEFAULT_STUN_PORT 3478

static void usage(FILE *out) {
  fprintf(out,
          "Usage: natpunch probe [--discovery IP:PORT [--discovery IP:PORT]] [OPTIONS]\n\n"
          "Asks one or two discovery (STUN) servers, from one local UDP socket, how this\n"
          "host's traffic appears on the internet: the public address each server sees,\n"
          "the port delta between the two views, and (when the first server supports\n"
          "RFC 5780, i.e. has an alternate address) the NAT's mapping and filtering\n"
          "behaviour, port preservation and hairpinning. Without --discovery the\n"
          "servers come from the config file's discovery = lines (see 'natpunch --help').\n\n"
          "Options:\n"
          "  -d, --discovery IP[:PORT]  discovery server, given once or twice, in query\n"
          "                             order (port defaults to %d; IPv6 as [addr]:port)\n"
          "  -c, --config FILE          read the discovery servers from FILE only\n"
          "                             (default: ~/.config/natpunch/config, then\n"
          "                             /etc/natpunch/config)\n"
          "  -b, --bind IP[:PORT]       local address for the main socket (default: any)\n"
          "  -t, --timeout SEC          give up after SEC seconds (default 3, max 60)\n"
          "      --no-hairpin           skip the hairpinning test\n"
          "  -j, --json                 print one JSON object on stdout\n"
          "  -v, --verbose              log the protocol steps on stderr\n"
          "  -h, --help                 show this help\n\n"
          "JSON fields: local, mapped (array, query order), delta (second mapped port\n"
          "minus first, null with one server), mapping and filtering\n"
          "(endpoint-independent | address-dependent | address-and-port-dependent |\n"
          "unknown), port_preserving, nat, hairpinning (true/false/null), rfc5780,\n"
          "other_address, servers (per server: address, mapped, rtt_ms, error),\n"
          "port_allocation (cone | sequential | random | unknown: how the NAT picks a\n"
          "new mapping's port), stride (step between successive mappings, null when\n"
          "unknown or random), evidence (views: every mapping of the main socket in\n"
          "the order it was made, each {to, mapped}; deltas between them on the port\n"
          "ring 1024..65535; verdict, a sentence; guessed: true when judged from one\n"
          "delta only), warning (a server that did not answer while another did).\n\n"
          "Exit status: 0 at least one server answered (a server that did not is\n"
          "named in a warning on stderr); 1 no server answered, or another failure\n"
          "(with --json an object with an \"error\" field is still printed);\n"
          "2 bad command line.\n",
          DEFAULT_STUN_PORT);
}

static const char *addr_text(const np_addr *a, char *buf) {
  return np_addr_format(a, buf, NP_ADDRSTRLEN);
}

/* Why server i gave no mapping, as a sentence fragment. */
static void server_error_text(const np_probe_result *r, int i, int timeout_ms, char *buf,
                              size_t size) {
  switch (r->server_err[i]) {
  case NP_ERR_TIMEOUT:
    snprintf(buf, size, "no answer within %.1f s", timeout_ms / 1000.0);
    break;
  case NP_ERR_UNREACHABLE:
    snprintf(buf, size, "unreachable (ICMP error: nothing listening, or no route)");
    break;
  case NP_ERR_PROTO:
    snprintf(buf, size, "answered with STUN error %d", r->server_error_code[i]);
    break;
  default:
    snprintf(buf, size, "%s", np_strerror(r->server_err[i]));
  }
}

/* The classic names, for the summary line; the RFC 4787 terms stay the
 * authoritative fields. */
static const char *nat_summary(const np_probe_result *r) {
  if (!r->nat)
    return r->filtering == NP_BEHAVIOR_ENDPOINT_INDEPENDENT ? "no NAT, no filtering firewall"
           : r->filtering == NP_BEHAVIOR_UNKNOWN            ? "no NAT"
                                                            : "no NAT, but a filtering firewall";
  if (r->mapping == NP_BEHAVIOR_ENDPOINT_INDEPENDENT) {
    switch (r->filtering) {
    case NP_BEHAVIOR_ENDPOINT_INDEPENDENT:
      return "full-cone NAT";
    case NP_BEHAVIOR_ADDRESS_DEPENDENT:
      return "restricted-cone NAT";
    case NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT:
      return "port-restricted-cone NAT";
    default:
      return "cone NAT (filtering unknown)";
    }
  }
  if (r->mapping == NP_BEHAVIOR_ADDRESS_DEPENDENT ||
      r->mapping == NP_BEHAVIOR_ADDRESS_AND_PORT_DEPENDENT)
    return "symmetric NAT";
  return "NAT of unknown kind";
}

static const char *allocation_name(int kind) {
  static const char *const names[] = {"unknown", "cone", "sequential", "random"};
  return kind >= 0 && kind <= 3 ? names[kind] : "unknown";
}

/* The deltas between successive views, on the port ring 1024..65535 (a
 * sequence that wraps past 65535 is still one stride per step). */
static int view_delta(const np_probe_result *r, int i) {
  int d = (int)np_addr_port(&r->view_mapped[i + 1]) - (int)np_addr_port(&r->view_mapped[i]);
  const int ring = 65536 - 1024;
  if (np_addr_port(&r->view_mapped[i]) >= 1024 && np_addr_port(&r->view_mapped[i + 1]) >= 1024) {
    if (d > ring / 2)
      d -= ring;
    else if (d <= -ring / 2)
      d += ring;
  }
  return d;
}

/* The verdict on the port allocation, with its evidence, as a sentence. */
static void allocation_text(const np_probe_result *r, char *buf, size_t size) {
  switch (r->port_kind) {
  case 1:
    snprintf(buf, size, "cone: %d views, all on one port", r->n_views);
    break;
  case 2:
    snprintf(buf, size, "sequential, stride %+d (%d views%s)", r->stride, r->n_views,
             r->port_kind_guessed ? ": one delta only, taken as sequential as it is small" : "");
    break;
  case 3:
    snprintf(buf, size, "random (%d views%s)", r->n_views,
             r->port_kind_guessed ? ": one delta only, taken as random as it is large"
                                  : ": the deltas disagree");
    break;
  default:
    snprintf(buf, size, "unknown (%d view%s: needs two)", r->n_views, r->n_views == 1 ? "" : "s");
  }
}

static void print_human(const np_probe_config *cfg, const np_probe_result *r) {
  char a[NP_ADDRSTRLEN], b[NP_ADDRSTRLEN], err[128];
  printf("Local address     %s\n", addr_text(&r->local, a));
  for (int i = 0; i < cfg->n_servers; i++) {
    if (np_addr_port(&r->mapped[i])) {
      printf("Server %d          %s sees %s", i + 1, addr_text(&cfg->servers[i], a),
             addr_text(&r->mapped[i], b));
      if (r->rtt_ms[i] >= 0)
        printf(" (rtt %d ms)", r->rtt_ms[i]);
      printf("\n");
    } else {
      server_error_text(r, i, cfg->timeout_ms, err, sizeof err);
      printf("Server %d          %s: %s\n", i + 1, addr_text(&cfg->servers[i], a), err);
    }
  }
  if (r->have_delta)
    printf("Port delta        %+d\n", r->delta);
  else
    printf("Port delta        unknown (needs two servers)\n");
  char verdict[160];
  allocation_text(r, verdict, sizeof verdict);
  printf("Port allocation   %s\n", verdict);
  printf("Behind NAT        %s\n", r->nat ? "yes" : "no");
  if (!r->rfc5780)
    printf("RFC 5780          first server has no alternate address: behaviour unknown\n");
  printf("Mapping           %s\n", np_nat_behavior_name(r->mapping));
  printf("Filtering         %s\n", np_nat_behavior_name(r->filtering));
  printf("Port preserving   %s\n", r->port_preserving ? "yes" : "no");
  printf("Hairpinning       %s\n", r->hairpinning == NP_YES  ? "yes"
                                   : r->hairpinning == NP_NO ? "no"
                                                             : "unknown");
  printf("Summary           %s", nat_summary(r));
  if (r->nat && r->mapping != NP_BEHAVIOR_ENDPOINT_INDEPENDENT && r->have_delta)
    printf(", new mapping per destination (delta %+d)", r->delta);
  printf("\n");
}

static cJSON *json_addr(const np_addr *a) {
  char buf[NP_ADDRSTRLEN];
  return np_addr_port(a) ? cJSON_CreateString(np_addr_format(a, buf, sizeof buf))
                         : cJSON_CreateNull();
}

static void print_json(const np_probe_config *cfg, const np_probe_result *r, int rc) {
  cJSON *o = cJSON_CreateObject();
  char err[128];
  cJSON_AddItemToObject(o, "local", json_addr(&r->local));
  cJSON *mapped = cJSON_AddArrayToObject(o, "mapped");
  cJSON *servers = cJSON_AddArrayToObject(o, "servers");
  for (int i = 0; i < cfg->n_servers; i++) {
    if (np_addr_port(&r->mapped[i]))
      cJSON_AddItemToArray(mapped, json_addr(&r->mapped[i]));
    cJSON *s = cJSON_CreateObject();
    cJSON_AddItemToObject(s, "address", json_addr(&cfg->servers[i]));
    cJSON_AddItemToObject(s, "mapped", json_addr(&r->mapped[i]));
    if (r->rtt_ms[i] >= 0)
      cJSON_AddNumberToObject(s, "rtt_ms", r->rtt_ms[i]);
    else
      cJSON_AddNullToObject(s, "rtt_ms");
    if (r->server_err[i]) {
      server_error_text(r, i, cfg->timeout_ms, err, sizeof err);
      cJSON_AddStringToObject(s, "error", err);
    } else {
      cJSON_AddNullToObject(s, "error");
    }
    cJSON_AddItemToArray(servers, s);
  }
  if (r->have_delta)
    cJSON_AddNumberToObject(o, "delta", r->delta);
  else
    cJSON_AddNullToObject(o, "delta");
  cJSON_AddStringToObject(o, "mapping", np_nat_behavior_name(r->mapping));
  cJSON_AddStringToObject(o, "filtering", np_nat_behavior_name(r->filtering));
  cJSON_AddBoolToObject(o, "port_preserving", r->port_preserving);
  cJSON_AddBoolToObject(o, "nat", r->nat);
  if (r->hairpinning == NP_UNKNOWN)
    cJSON_AddNullToObject(o, "hairpinning");
  else
    cJSON_AddBoolToObject(o, "hairpinning", r->hairpinning == NP_YES);
  cJSON_AddBoolToObject(o, "rfc5780", r->rfc5780);
  cJSON_AddItemToObject(o, "other_address", json_addr(&r->other_address));
  cJSON_AddStringToObject(o, "port_allocation", allocation_name(r->port_kind));
  if (r->port_kind == 1 || r->port_kind == 2)
    cJSON_AddNumberToObject(o, "stride", r->stride);
  else
    cJSON_AddNullToObject(o, "stride");
  cJSON *ev = cJSON_AddObjectToObject(o, "evidence");
  cJSON *views = cJSON_AddArrayToObject(ev, "views");
  cJSON *deltas = cJSON_AddArrayToObject(ev, "deltas");
  for (int i = 0; i < r->n_views; i++) {
    cJSON *v = cJSON_CreateObject();
    cJSON_AddItemToObject(v, "to", json_addr(&r->view_to[i]));
    cJSON_AddItemToObject(v, "mapped", json_addr(&r->view_mapped[i]));
    cJSON_AddItemToArray(views, v);
    if (i + 1 < r->n_views)
      cJSON_AddItemToArray(deltas, cJSON_CreateNumber(view_delta(r, i)));
  }
  char verdict[160];
  allocation_text(r, verdict, sizeof verdict);
  cJSON_AddStringToObject(ev, "verdict", verdict);
  cJSON_AddBoolToObject(ev, "guessed", r->port_kind_guessed);
  if (r->n_views > 0)
    cJSON_AddNumberToObject(ev, "base_port", r->base_port);
  else
    cJSON_AddNullToObject(ev, "base_port");
  if (r->n_mapped < cfg->n_servers || (rc != 0 && r->n_mapped == 0)) {
    int bad = r->server_err[0] ? 0 : 1;
    server_error_text(r, bad, cfg->timeout_ms, err, sizeof err);
    char msg[NP_ADDRSTRLEN + 200], a[NP_ADDRSTRLEN];
    if (r->n_mapped > 0)
      snprintf(msg, sizeof msg, "discovery server %d (%s): %s; going on with %d view(s)", bad + 1,
               addr_text(&cfg->servers[bad], a), err, r->n_views);
    else
      snprintf(msg, sizeof msg, "discovery server %s: %s", addr_text(&cfg->servers[bad], a), err);
    cJSON_AddStringToObject(o, r->n_mapped > 0 ? "warning" : "error", msg);
  }
  char *text = cJSON_PrintUnformatted(o);
  if (text)
    printf("%s\n", text);
  free(text);
  cJSON_Delete(o);
}

int cli_probe(int argc, char **argv) {
  static const struct option opts[] = {{"discovery", required_argument, NULL, 'd'},
                                       {"bind", required_argument, NULL, 'b'},
                                       {"config", required_argument, NULL, 'c'},
                                       {"timeout", required_argument, NULL, 't'},
                                       {"no-hairpin", no_argument, NULL, 'H'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  np_probe_config cfg = {0};
  cfg.timeout_ms = 3000;
  cfg.log = cli_log_stderr;
  cfg.log_level = NP_LOG_WARN;
  bool json = false;
  const char *config_path = NULL;
  int c;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":d:b:c:t:jvh", opts, NULL)) != -1) {
    switch (c) {
    case 'd':
      if (cfg.n_servers == NP_PROBE_MAX_SERVERS)
        return cli_usage_error(CMD, "--discovery given more than %d times", NP_PROBE_MAX_SERVERS);
      if (cli_parse_addr(CMD, "--discovery", optarg, DEFAULT_STUN_PORT,
                         &cfg.servers[cfg.n_servers]) != 0)
        return CLI_EXIT_USAGE;
      cfg.n_servers++;
      break;
    case 'b':
      if (np_addr_parse(optarg, 0, &cfg.bind) != 0) {
        /* A bare IP: parse with a dummy port, then ask for an ephemeral one. */
        if (np_addr_parse(optarg, 1, &cfg.bind) != 0)
          return cli_usage_error(CMD, "--bind: '%s' is not a numeric IP[:PORT]", optarg);
        np_addr_set_port(&cfg.bind, 0);
      }
      break;
    case 't': {
      char *end = NULL;
      double sec = strtod(optarg, &end);
      if (end == optarg || *end != '\0' || !(sec >= 0.1 && sec <= 60))
        return cli_usage_error(CMD, "--timeout: '%s' is not a number of seconds from 0.1 to 60",
                               optarg);
      cfg.timeout_ms = (int)(sec * 1000 + 0.5);
      break;
    }
    case 'c':
      config_path = optarg;
      break;
    case 'H':
      cfg.no_hairpin = true;
      break;
    case 'j':
      json = true;
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
  /* The config file is read even when flags give the servers: a broken
   * one is reported the same way by every command. */
  static cli_config file_cfg;
  char cfg_err[2 * CLI_CFG_MAX_PATH + 200], user[CLI_CFG_MAX_PATH];
  if (cli_config_load(&file_cfg, config_path, getenv("XDG_CONFIG_HOME"), getenv("HOME"),
                      CLI_CFG_SYSTEM_PATH, cfg_err, sizeof cfg_err) != 0)
    return cli_usage_error(CMD, "%s", cfg_err);
  if (cfg.n_servers == 0) {
    cfg.n_servers = file_cfg.n_discovery;
    memcpy(cfg.servers, file_cfg.discovery, sizeof cfg.servers);
  }
  if (cli_config_user_path(getenv("XDG_CONFIG_HOME"), getenv("HOME"), user, sizeof user) != 0)
    snprintf(user, sizeof user, "~/.config/natpunch/config");
  if (cfg.n_servers == 0)
    return cli_usage_error(CMD,
                           "no discovery server: give --discovery IP:PORT or set discovery = in %s",
                           config_path ? config_path : user);
  if (cfg.n_servers == 2 && cfg.servers[0].u.sa.sa_family != cfg.servers[1].u.sa.sa_family)
    return cli_usage_error(CMD, "both --discovery servers must be IPv4, or both IPv6");
  if (cfg.bind.u.sa.sa_family != AF_UNSPEC &&
      cfg.bind.u.sa.sa_family != cfg.servers[0].u.sa.sa_family)
    return cli_usage_error(CMD, "--bind address family differs from the servers'");

  np_probe_result r;
  int rc = np_probe_run(&cfg, &r);
  if (rc == NP_ERR_INVAL || rc == NP_ERR_SYS) {
    fprintf(stderr, "natpunch probe: %s\n", np_strerror(rc));
    if (json)
      printf("{\"error\":\"%s\"}\n", np_strerror(rc));
    return CLI_EXIT_FAIL;
  }
  if (json)
    print_json(&cfg, &r, rc);
  else if (r.n_mapped > 0)
    print_human(&cfg, &r);

  /* One server down still gives a view (two with the first server's
   * alternate): say which one, and go on. */
  char a[NP_ADDRSTRLEN], err[128];
  for (int i = 0; i < cfg.n_servers; i++) {
    if (r.server_err[i]) {
      server_error_text(&r, i, cfg.timeout_ms, err, sizeof err);
      if (r.n_mapped > 0)
        fprintf(stderr,
                "natpunch probe: warning: discovery server %d (%s): %s; going on with %d "
                "view(s)\n",
                i + 1, addr_text(&cfg.servers[i], a), err, r.n_views);
      else
        fprintf(stderr, "natpunch probe: discovery server %s: %s\n",
                addr_text(&cfg.servers[i], a), err);
    }
  }
  return r.n_mapped > 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}
