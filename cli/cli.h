/* Shared pieces of the natpunch command-line tool. The tool uses the public
 * API, except listen/connect, which drive the internal rendezvous client
 * until the traversal engine's public agent API exists; these helpers are
 * CLI-only. */
#ifndef NP_CLI_H
#define NP_CLI_H

#include "natpunch.h"

/* Exit codes shared by every subcommand (documented in --help). */
enum {
  CLI_EXIT_OK = 0,
  CLI_EXIT_FAIL = 1,  /* the operation failed (timeout, unreachable, ...) */
  CLI_EXIT_USAGE = 2, /* bad command line */
};

/* Subcommand entry points; argv[0] is the subcommand name. */
int cli_discovery_server(int argc, char **argv);
int cli_probe(int argc, char **argv);
int cli_keygen(int argc, char **argv);
int cli_id(int argc, char **argv);
int cli_rendezvous_server(int argc, char **argv);
int cli_listen(int argc, char **argv);
int cli_connect(int argc, char **argv);
int cli_send(int argc, char **argv);
int cli_receive(int argc, char **argv);

/* What cli_serve() needs from a server object (discovery, rendezvous). */
typedef struct cli_server_ops {
  int (*run)(void *srv);                      /* blocks until stopped */
  void (*stop)(void *srv);                    /* async-safe stop request */
  void (*stats)(void *srv, const char *when); /* logs the counters */
} cli_server_ops;

/* Runs a server made (not yet running) by the caller in a thread, in the
 * foreground: SIGUSR1 logs its counters, SIGINT/SIGTERM stop it; counters are
 * logged at exit. Signals are taken through a signalfd in this thread, so the
 * counters are printed from ordinary code rather than a handler; they are
 * blocked before the server thread exists, so every server thread inherits
 * the mask (the servers start no thread before run). Returns CLI_EXIT_OK
 * after a signal-requested stop, CLI_EXIT_FAIL when the server failed or
 * stopped on its own. Does not free srv. */
int cli_serve(const char *cmd, void *srv, const cli_server_ops *ops);

/* Log sink writing "natpunch: LEVEL: msg" lines to stderr; user is unused.
 * Thread-safe (one fprintf per line). */
void cli_log_stderr(void *user, enum np_log_level level, const char *msg);

/* Prints "natpunch CMD: " + message to stderr (no trailing newline needed)
 * and returns CLI_EXIT_USAGE, for one-line usage errors. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reports what getopt_long() returned c ('?' unknown option, ':' option
 * without its value) complained about, naming the option as the user typed
 * it (also inside bundled short options such as -jx), and returns
 * CLI_EXIT_USAGE. Call with opterr = 0 and an optstring starting with ':'. */
int cli_option_error(const char *cmd, int c, char **argv);

/* Parses a whole decimal integer in [min, max]; returns 0 or -1. Unlike
 * atoi it rejects empty strings, signs where min >= 0, and trailing junk. */
int cli_parse_long(const char *s, long min, long max, long *out);

/* Parses "IP:PORT" (or a bare IP when default_port != 0) for option opt of
 * subcommand cmd; on failure prints an error quoting the input and returns
 * -1. */
int cli_parse_addr(const char *cmd, const char *opt, const char *s, uint16_t default_port,
                   np_addr *out);

/* Explains in a sentence (no "natpunch CMD:" prefix, no newline) why the key
 * file at path could not be loaded, from np_identity_load()'s rc and the
 * errno it left: a directory, a missing or unreadable file, a file others
 * may read (with the chmod that fixes it), a file that is not a key. Shared
 * by id, listen and connect so that they say the same. */
void cli_key_error(char *buf, size_t size, const char *path, int rc, int err);

#endif
