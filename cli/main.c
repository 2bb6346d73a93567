/* natpunch: one binary, a table of subcommands (wireguard-tools style). */
#include "cli.h"

#include <stdio.h>
#include <string.h>

struct command {
  const char *name;
  int (*main)(int argc, char **argv);
  const char *summary;
};

static const struct command commands[] = {
    {"discovery-server", cli_discovery_server, "run a STUN discovery server (RFC 8489/5780)"},
    {"probe", cli_probe, "ask discovery servers what this host's NAT does"},
    {"keygen", cli_keygen, "write a new identity key (Ed25519)"},
    {"id", cli_id, "print this peer's ID (the text form of its public key)"},
    {"rendezvous-server", cli_rendezvous_server, "run a rendezvous (signaling) server"},
    {"listen", cli_listen, "wait for a peer's call and open a direct path to it"},
    {"connect", cli_connect, "call a peer and open a direct path to it"},
    {"send", cli_send, "send files to a peer (which runs receive)"},
    {"receive", cli_receive, "wait for a peer's files and save them"},
};

static void usage(FILE *out) {
  fprintf(out, "Usage: natpunch COMMAND [OPTIONS]\n"
               "       natpunch COMMAND --help\n\n"
               "Direct UDP paths between peers behind NATs.\n\nCommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(out, "  %-18s %s\n", commands[i].name, commands[i].summary);
  fprintf(out,
          "\nConfig file: listen, connect, send, receive and probe take the settings that\n"
          "no option gives from $XDG_CONFIG_HOME/natpunch/config (default\n"
          "~/.config/natpunch/config), then from /etc/natpunch/config (per setting, the\n"
          "first file that has it wins; their aliases are merged, the user's first);\n"
          "--config FILE reads FILE instead of both.\n"
          "One setting a line, '#' starts a comment (at the start or after a blank):\n"
          "  rendezvous = IP[:PORT]      the rendezvous server (port defaults to 7000)\n"
          "  discovery = IP[:PORT]       a discovery server; give two (port 3478)\n"
          "  key = PATH                  identity key, absolute or ~/PATH\n"
          "  allow = PEER                listen: who may call (repeatable; options win)\n"
          "  alias NAME = PEERID         a local name for a peer (repeatable)\n"
          "A PEER, wherever one is asked for, is a peer ID or an alias NAME. A NAME has 1\n"
          "to 32 characters of A-Z a-z 0-9 . _ - (not first: - or .), matches in any\n"
          "case (ssh lowercases a ProxyCommand's %%h) and cannot be a peer ID. An error\n"
          "in a config file quotes its file, line and text, and fails the command\n"
          "(exit 2), as does a file that group or others may write (chmod go-w), or\n"
          "that another user owns. Limits: 1024 bytes a line, 256 aliases.\n"
          "Example:\n"
          "  rendezvous = 198.51.100.10:7000\n"
          "  discovery = 198.51.100.10:3478\n"
          "  discovery = 198.51.100.11:3478\n"
          "  alias laptop = <the laptop's 52-character peer ID, from 'natpunch id'>\n"
          "then: natpunch connect laptop\n"
          "\nExit status: 0 success, 1 the operation failed, 2 bad command line.\n"
          "natpunch %s\n",
          NP_VERSION_STRING);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return CLI_EXIT_USAGE;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return CLI_EXIT_OK;
  }
  if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
    printf("natpunch %s\n", NP_VERSION_STRING);
    return CLI_EXIT_OK;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(argv[1], commands[i].name))
      return commands[i].main(argc - 1, argv + 1);
  fprintf(stderr, "natpunch: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return CLI_EXIT_USAGE;
}
