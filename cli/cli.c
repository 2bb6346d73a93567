#include "cli.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>
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

/* Says what is wrong with an address the user typed: a port out of range
 * and a host name deserve their own sentence, not "not a numeric address". */
int cli_parse_addr(const char *cmd, const char *opt, const char *s, uint16_t default_port,
                   np_addr *out) {
  if (np_addr_parse(s, default_port, out) == 0)
    return 0;
  const char *colon = strrchr(s, ':');
  const char *bracket = strrchr(s, ']');
  bool has_port = colon && (s[0] != '[' || (bracket && colon > bracket)) &&
                  (s[0] == '[' || strchr(s, ':') == colon);
  if (has_port) {
    char host[NP_ADDRSTRLEN];
    size_t hl = (size_t)(colon - s);
    np_addr probe;
    const char *p = colon + 1;
    bool digits = *p != '\0' && strspn(p, "0123456789") == strlen(p);
    if (hl < sizeof host) {
      memcpy(host, s, hl);
      host[hl] = '\0';
      /* The address is fine, so the port is what is wrong. */
      if (digits && np_addr_parse(host, 1, &probe) == 0) {
        cli_usage_error(cmd, "%s: '%s': port %s is out of range (1 to 65535)", opt, s, p);
        return -1;
      }
    }
  }
  cli_usage_error(
      cmd,
      "%s: '%s' is not a numeric address%s (expected e.g. 203.0.113.1%s or [2001:db8::1]%s; "
      "host names are not resolved)",
      opt, s, default_port ? "" : " with a port", default_port ? "" : ":3478",
      default_port ? "" : ":3478");
  return -1;
}

void cli_key_error(char *buf, size_t size, const char *path, int rc, int err) {
  struct stat sb;
  if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
    snprintf(buf, size, "'%s' is a directory, not a key file (give the key file's path, e.g. '%s/key')",
             path, path);
  else if (rc == NP_ERR_SYS && err == ENOENT)
    snprintf(buf, size, "no key file '%s' (make one with: natpunch keygen '%s')", path, path);
  else if (rc == NP_ERR_SYS)
    snprintf(buf, size, "cannot read key file '%s': %s", path, strerror(err));
  else if (rc == NP_ERR_AUTH)
    snprintf(buf, size,
             "key file '%s' is accessible by group or others; refusing to use a key that may "
             "have leaked (if it has not, run: chmod 600 '%s')",
             path, path);
  else if (rc == NP_ERR_PROTO)
    snprintf(buf, size,
             "'%s' is not a natpunch key file (expected \"natpunch-key-v1\" and 64 hex digits)",
             path);
  else
    snprintf(buf, size, "cannot load key file '%s': %s", path, np_strerror(rc));
}

struct serve_thread {
  void *srv;
  const cli_server_ops *ops;
  int done_fd; /* eventfd written when run returns */
  int rc;
};

static void *serve_thread_main(void *arg) {
  struct serve_thread *t = arg;
  t->rc = t->ops->run(t->srv);
  uint64_t one = 1;
  ssize_t w = write(t->done_fd, &one, sizeof one);
  (void)w;
  return NULL;
}

int cli_serve(const char *cmd, void *srv, const cli_server_ops *ops) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC);
  if (sfd < 0) {
    fprintf(stderr, "natpunch %s: signalfd: %s\n", cmd, strerror(errno));
    return CLI_EXIT_FAIL;
  }
  struct serve_thread t = {.srv = srv, .ops = ops, .done_fd = eventfd(0, EFD_CLOEXEC)};
  pthread_t th;
  if (t.done_fd < 0 || pthread_create(&th, NULL, serve_thread_main, &t) != 0) {
    fprintf(stderr, "natpunch %s: cannot start the server thread\n", cmd);
    if (t.done_fd >= 0)
      close(t.done_fd);
    close(sfd);
    return CLI_EXIT_FAIL;
  }

  int exit_code = CLI_EXIT_OK;
  for (;;) {
    struct pollfd p[2] = {{.fd = sfd, .events = POLLIN}, {.fd = t.done_fd, .events = POLLIN}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR)
        continue;
      fprintf(stderr, "natpunch %s: poll: %s\n", cmd, strerror(errno));
      exit_code = CLI_EXIT_FAIL;
      ops->stop(srv);
      break;
    }
    if (p[1].revents) {
      /* The server stopped on its own: only an internal failure does that. */
      exit_code = CLI_EXIT_FAIL;
      break;
    }
    if (!(p[0].revents & POLLIN))
      continue;
    struct signalfd_siginfo si;
    if (read(sfd, &si, sizeof si) != (ssize_t)sizeof si)
      continue;
    if (si.ssi_signo == SIGUSR1) {
      ops->stats(srv, "counters");
      continue;
    }
    cli_log_stderr(NULL, NP_LOG_INFO,
                   si.ssi_signo == SIGINT ? "SIGINT: stopping" : "SIGTERM: stopping");
    ops->stop(srv);
    break;
  }
  pthread_join(th, NULL);
  if (t.rc != 0) {
    fprintf(stderr, "natpunch %s: server failed: %s\n", cmd, np_strerror(t.rc));
    exit_code = CLI_EXIT_FAIL;
  }
  ops->stats(srv, "stopped; counters");
  close(t.done_fd);
  close(sfd);
  return exit_code;
}
