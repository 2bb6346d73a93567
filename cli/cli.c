#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void cli_log_stderr(void *user, enum np_log_level level, const char *msg) {
  (void)user;
  static const char *names[] = {"error", "warning", "info", "debug"};
  const char *name = (unsigned)level < 4 ? names[level] : "log";
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  fprintf(stderr, "%02d:%02d:%02d.%03ld natpunch: %s: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
          ts.tv_nsec / 1000000, name, msg);
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "natpunch %s: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nTry 'natpunch %s --help'.\n", cmd);
  return CLI_EXIT_USAGE;
}

int cli_option_error(const char *cmd, int c, char **argv) {
  if (c == ':')
    return cli_usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
  if (optopt)
    return cli_usage_error(cmd, "unknown option '-%c'", optopt);
  return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
}

int cli_parse_long(const char *s, long min, long max, long *out) {
  if (!s || *s == '\0')
    return -1;
  if (min >= 0 && (*s == '-' || *s == '+'))
    return -1;
  errno = 0;
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (errno != 0 || *end != '\0' || end == s || v < min || v > max)
    return -1;
  *out = v;
  return 0;
}

int cli_parse_addr(const char *cmd, const char *opt, const char *s, uint16_t default_port,
                   np_addr *out) {
  if (np_addr_parse(s, default_port, out) == 0)
    return 0;
  cli_usage_error(
      cmd, "%s: '%s' is not a numeric address%s (expected e.g. 203.0.113.1%s or [2001:db8::1]%s)",
      opt, s, default_port ? "" : " with a port", default_port ? "" : ":3478",
      default_port ? "" : ":3478");
  return -1;
}
