/* The config file and aliases: a pure parser over a buffer (fuzzed by
 * fuzz/fuzz_config.c) and thin loaders around it. See config.h for the
 * format. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(char *err, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t size, const char *fmt, ...) {
  if (err && size) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static bool blank(char c) {
  return c == ' ' || c == '\t';
}

static char *trim(char *s) {
  while (blank(*s))
    s++;
  size_t n = strlen(s);
  while (n > 0 && blank(s[n - 1]))
    s[--n] = '\0';
  return s;
}

const char *cli_config_name_error(const char *name) {
  uint8_t key[NP_PUBKEY_LEN];
  size_t n = strlen(name);
  /* The first check a user who pasted the ID on the wrong side needs. */
  if (np_peer_id_parse(name, key) == 0)
    return "is a peer ID, not a name (write: alias NAME = PEERID)";
  if (n == 0)
    return "is empty";
  if (n > CLI_CFG_MAX_NAME)
    return "is too long (at most 32 characters)";
  if (strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != n)
    return "has a character outside A-Z a-z 0-9 . _ -";
  /* A leading '-' reads as an option on a command line, a leading '.' as
   * a hidden file in completion. */
  if (name[0] == '-' || name[0] == '.')
    return "starts with '-' or '.'";
  return NULL;
}

static const cli_alias *find_alias(const cli_config *cfg, const char *name) {
  for (int i = 0; i < cfg->n_aliases; i++)
    /* ASCII case folded: ssh lowercases the %h of a ProxyCommand, so
     * `ssh MyLaptop` asks for "mylaptop". */
    if (strcasecmp(cfg->aliases[i].name, name) == 0)
      return &cfg->aliases[i];
  return NULL;
}

/* Per-file bookkeeping that only the parser needs: where each once-only
 * setting was first given, so that a second one can point at it. */
struct seen {
  int rendezvous, key;
  int alias_line[CLI_CFG_MAX_ALIASES];
};

static int parse_line(cli_config *cfg, struct seen *seen, char *line, const char *file, int lineno,
                      char *err, size_t es) {
  /* A '#' begins a comment at the start or after a blank, so that a
   * value such as a path may still hold one. */
  for (char *p = line; *p; p++)
    if (*p == '#' && (p == line || blank(p[-1]))) {
      *p = '\0';
      break;
    }
  char *s = trim(line);
  if (*s == '\0')
    return 0;
  char *eq = strchr(s, '=');
  if (!eq)
    return fail(err, es, "%s line %d: expected KEY = VALUE: '%s'", file, lineno, s);
  *eq = '\0';
  char *lhs = trim(s), *val = trim(eq + 1);
  if (*val == '\0')
    return fail(err, es, "%s line %d: no value after '%s ='", file, lineno, lhs);

  if (strncmp(lhs, "alias", 5) == 0 && blank(lhs[5])) {
    char *name = trim(lhs + 5);
    const char *why = cli_config_name_error(name);
    if (why)
      return fail(err, es, "%s line %d: alias name '%s' %s", file, lineno, name, why);
    const cli_alias *dup = find_alias(cfg, name);
    if (dup)
      return fail(err, es, "%s line %d: alias '%s' is already defined on line %d", file, lineno,
                  name, seen->alias_line[dup - cfg->aliases]);
    if (cfg->n_aliases == CLI_CFG_MAX_ALIASES)
      return fail(err, es, "%s line %d: more than %d aliases", file, lineno, CLI_CFG_MAX_ALIASES);
    cli_alias *a = &cfg->aliases[cfg->n_aliases];
    if (np_peer_id_parse(val, a->key) != 0)
      return fail(err, es, "%s line %d: alias '%s': '%s' is not a peer ID (52 base32 characters)",
                  file, lineno, name, val);
    memcpy(a->name, name, strlen(name) + 1);
    seen->alias_line[cfg->n_aliases++] = lineno;
    return 0;
  }
  if (strcmp(lhs, "rendezvous") == 0) {
    if (seen->rendezvous)
      return fail(err, es, "%s line %d: rendezvous is already set on line %d", file, lineno,
                  seen->rendezvous);
    if (np_addr_parse(val, CLI_CFG_DEFAULT_RDV_PORT, &cfg->rendezvous) != 0)
      return fail(
          err, es,
          "%s line %d: rendezvous: '%s' is not a numeric IP[:PORT] (e.g. 198.51.100.10:7000)", file,
          lineno, val);
    cfg->have_rendezvous = true;
    seen->rendezvous = lineno;
    return 0;
  }
  if (strcmp(lhs, "discovery") == 0) {
    if (cfg->n_discovery == NP_PROBE_MAX_SERVERS)
      return fail(err, es, "%s line %d: more than %d discovery servers: '%s'", file, lineno,
                  NP_PROBE_MAX_SERVERS, val);
    np_addr *d = &cfg->discovery[cfg->n_discovery];
    if (np_addr_parse(val, CLI_CFG_DEFAULT_STUN_PORT, d) != 0)
      return fail(
          err, es,
          "%s line %d: discovery: '%s' is not a numeric IP[:PORT] (e.g. 198.51.100.10:3478)", file,
          lineno, val);
    if (cfg->n_discovery == 1 && d->u.sa.sa_family != cfg->discovery[0].u.sa.sa_family)
      return fail(err, es, "%s line %d: discovery: '%s': both servers must be IPv4, or both IPv6",
                  file, lineno, val);
    cfg->n_discovery++;
    return 0;
  }
  if (strcmp(lhs, "key") == 0) {
    if (seen->key)
      return fail(err, es, "%s line %d: key is already set on line %d", file, lineno, seen->key);
    /* A relative path would depend on the directory a command runs in. */
    if (val[0] != '/' && strncmp(val, "~/", 2) != 0)
      return fail(err, es, "%s line %d: key: '%s' is not an absolute path (or ~/PATH)", file,
                  lineno, val);
    if (strlen(val) >= sizeof cfg->key)
      return fail(err, es, "%s line %d: key: the path is too long", file, lineno);
    memcpy(cfg->key, val, strlen(val) + 1);
    seen->key = lineno;
    return 0;
  }
  if (strcmp(lhs, "allow") == 0) {
    uint8_t k[NP_PUBKEY_LEN];
    if (np_peer_id_parse(val, k) != 0 && cli_config_name_error(val) != NULL)
      return fail(err, es, "%s line %d: allow: '%s' is neither a peer ID nor an alias name", file,
                  lineno, val);
    if (cfg->n_allow == CLI_CFG_MAX_ALLOW)
      return fail(err, es, "%s line %d: more than %d allow lines", file, lineno, CLI_CFG_MAX_ALLOW);
    memcpy(cfg->allow[cfg->n_allow++], val, strlen(val) + 1);
    return 0;
  }
  return fail(
      err, es,
      "%s line %d: unknown setting '%s' (known: rendezvous, discovery, key, allow, alias NAME)",
      file, lineno, lhs);
}

int cli_config_parse(cli_config *cfg, const char *buf, size_t len, const char *file, char *err,
                     size_t err_size) {
  if (len > CLI_CFG_MAX_FILE)
    return fail(err, err_size, "%s: larger than %d bytes", file, CLI_CFG_MAX_FILE);
  static const struct seen none;
  struct seen seen = none;
  char line[CLI_CFG_MAX_LINE + 1];
  size_t pos = 0;
  for (int lineno = 1; pos < len; lineno++) {
    const char *nl = memchr(buf + pos, '\n', len - pos);
    size_t n = nl ? (size_t)(nl - (buf + pos)) : len - pos;
    const char *start = buf + pos;
    pos += n + (nl ? 1 : 0);
    if (n > 0 && start[n - 1] == '\r')
      n--; /* a file written on Windows */
    if (n > CLI_CFG_MAX_LINE)
      return fail(err, err_size, "%s line %d: longer than %d bytes", file, lineno,
                  CLI_CFG_MAX_LINE);
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)start[i];
      if ((c < 0x20 && c != '\t') || c == 0x7F)
        return fail(err, err_size, "%s line %d: control character 0x%02x at column %zu", file,
                    lineno, c, i + 1);
    }
    memcpy(line, start, n);
    line[n] = '\0';
    if (parse_line(cfg, &seen, line, file, lineno, err, err_size) != 0)
      return -1;
  }
  return 0;
}

int cli_config_merge(cli_config *hi, const cli_config *lo, char *err, size_t err_size) {
  if (!hi->have_rendezvous && lo->have_rendezvous) {
    hi->have_rendezvous = true;
    hi->rendezvous = lo->rendezvous;
  }
  /* The two discovery servers are a pair (the delta): taken whole. */
  if (hi->n_discovery == 0) {
    hi->n_discovery = lo->n_discovery;
    memcpy(hi->discovery, lo->discovery, sizeof hi->discovery);
  }
  if (hi->key[0] == '\0')
    memcpy(hi->key, lo->key, sizeof hi->key);
  if (hi->n_allow == 0) {
    hi->n_allow = lo->n_allow;
    memcpy(hi->allow, lo->allow, sizeof hi->allow);
  }
  for (int i = 0; i < lo->n_aliases; i++) {
    if (find_alias(hi, lo->aliases[i].name))
      continue;
    if (hi->n_aliases == CLI_CFG_MAX_ALIASES)
      return fail(err, err_size, "more than %d aliases in %s and %s together", CLI_CFG_MAX_ALIASES,
                  hi->n_files ? hi->files[0] : "the user config",
                  lo->n_files ? lo->files[0] : "the system config");
    hi->aliases[hi->n_aliases++] = lo->aliases[i];
  }
  for (int i = 0; i < lo->n_files && hi->n_files < 2; i++)
    memcpy(hi->files[hi->n_files++], lo->files[i], sizeof hi->files[0]);
  return 0;
}

int cli_config_load_file(cli_config *cfg, const char *path, bool must_exist, char *err,
                         size_t err_size) {
  if (strlen(path) >= sizeof cfg->files[0])
    return fail(err, err_size, "config file path too long: '%s'", path);
  FILE *f = fopen(path, "r");
  if (!f) {
    if (errno == ENOENT && !must_exist)
      return 1;
    return fail(err, err_size, "cannot open config file '%s': %s", path, strerror(errno));
  }
  struct stat sb;
  if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
    fclose(f);
    return fail(err, err_size, "config file '%s' is a directory", path);
  }
  /* ssh's rule for its config: the file says who may call (allow) and
   * whom a name reaches (alias), so nobody else may have written it. */
  if (S_ISREG(sb.st_mode) && ((sb.st_uid != 0 && sb.st_uid != geteuid()) || (sb.st_mode & 022))) {
    fclose(f);
    return fail(err, err_size,
                "config file '%s' is writable by others or owned by another user; refusing it "
                "(it names who may call and whom an alias reaches; fix with: chmod go-w '%s')",
                path, path);
  }
  char *buf = malloc(CLI_CFG_MAX_FILE + 1);
  if (!buf) {
    fclose(f);
    return fail(err, err_size, "out of memory reading '%s'", path);
  }
  size_t n = fread(buf, 1, CLI_CFG_MAX_FILE + 1, f);
  bool bad = ferror(f);
  fclose(f);
  int rc;
  if (bad)
    rc = fail(err, err_size, "cannot read config file '%s'", path);
  else
    rc = cli_config_parse(cfg, buf, n, path, err, err_size);
  free(buf);
  if (rc == 0) {
    memcpy(cfg->files[0], path, strlen(path) + 1);
    cfg->n_files = 1;
  }
  return rc;
}

int cli_config_user_path(const char *xdg, const char *home, char *buf, size_t size) {
  int n;
  if (xdg && xdg[0] == '/')
    n = snprintf(buf, size, "%s/natpunch/config", xdg);
  else if (home && home[0] != '\0')
    n = snprintf(buf, size, "%s/.config/natpunch/config", home);
  else
    return -1;
  return n < 0 || (size_t)n >= size ? -1 : 0;
}

int cli_config_load(cli_config *cfg, const char *override, const char *xdg, const char *home,
                    const char *system_path, char *err, size_t err_size) {
  if (override)
    return cli_config_load_file(cfg, override, true, err, err_size) < 0 ? -1 : 0;
  char user[CLI_CFG_MAX_PATH];
  if (cli_config_user_path(xdg, home, user, sizeof user) == 0 &&
      cli_config_load_file(cfg, user, false, err, err_size) < 0)
    return -1;
  if (!system_path)
    return 0;
  cli_config *sys = calloc(1, sizeof *sys);
  if (!sys)
    return fail(err, err_size, "out of memory");
  int rc = cli_config_load_file(sys, system_path, false, err, err_size);
  if (rc == 0)
    rc = cli_config_merge(cfg, sys, err, err_size);
  free(sys);
  return rc < 0 ? -1 : 0;
}

int cli_config_resolve(const cli_config *cfg, const char *text, uint8_t key[NP_PUBKEY_LEN]) {
  if (np_peer_id_parse(text, key) == 0)
    return 0;
  const cli_alias *a = cfg ? find_alias(cfg, text) : NULL;
  if (!a)
    return -1;
  memcpy(key, a->key, NP_PUBKEY_LEN);
  return 0;
}

int cli_config_key_path(const cli_config *cfg, const char *home, char *buf, size_t size) {
  if (cfg->key[0] == '\0')
    return 1;
  int n;
  if (strncmp(cfg->key, "~/", 2) == 0) {
    if (!home || home[0] == '\0')
      return -1;
    n = snprintf(buf, size, "%s/%s", home, cfg->key + 2);
  } else {
    n = snprintf(buf, size, "%s", cfg->key);
  }
  return n < 0 || (size_t)n >= size ? -1 : 0;
}

char *cli_config_sources(const cli_config *cfg, char *buf, size_t size) {
  if (cfg->n_files == 0)
    snprintf(buf, size, "no config file");
  else if (cfg->n_files == 1)
    snprintf(buf, size, "'%s'", cfg->files[0]);
  else
    snprintf(buf, size, "'%s' and '%s'", cfg->files[0], cfg->files[1]);
  return buf;
}
