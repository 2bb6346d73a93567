/*
 * libFuzzer harness for the CLI's config parser (cli/config.c).
 *
 * The input is a config file's text. Parsing either fails with a message
 * that names the file, or gives a config whose every field keeps the
 * format's rules: counts within their limits, alias names that pass the
 * name check and are unique (in any case) and resolve to their key, a key path that is
 * absolute or ~/, allow entries that are peer IDs or names. The config is
 * then written back as text, which must parse to the same config, and
 * merged with itself, which must change nothing.
 */
#include "config.h"
#include "fuzz_check.h"

#include <stdarg.h>
#include <string.h>
#include <strings.h>

#define FILE_NAME "fuzz.conf"

static void check_fields(const cli_config *c) {
  CHECK(c->n_discovery >= 0 && c->n_discovery <= NP_PROBE_MAX_SERVERS);
  CHECK(c->n_allow >= 0 && c->n_allow <= CLI_CFG_MAX_ALLOW);
  CHECK(c->n_aliases >= 0 && c->n_aliases <= CLI_CFG_MAX_ALIASES);
  CHECK(c->key[0] == '\0' || c->key[0] == '/' || strncmp(c->key, "~/", 2) == 0);
  for (int i = 0; i < c->n_aliases; i++) {
    CHECK(cli_config_name_error(c->aliases[i].name) == NULL);
    for (int j = 0; j < i; j++)
      CHECK(strcasecmp(c->aliases[i].name, c->aliases[j].name) != 0);
    uint8_t k[NP_PUBKEY_LEN];
    CHECK(cli_config_resolve(c, c->aliases[i].name, k) == 0);
    CHECK(memcmp(k, c->aliases[i].key, NP_PUBKEY_LEN) == 0);
  }
  for (int i = 0; i < c->n_allow; i++) {
    uint8_t k[NP_PUBKEY_LEN];
    CHECK(np_peer_id_parse(c->allow[i], k) == 0 || cli_config_name_error(c->allow[i]) == NULL);
  }
  if (c->n_discovery == 2)
    CHECK(c->discovery[0].u.sa.sa_family == c->discovery[1].u.sa.sa_family);
}

static void put(char *out, size_t cap, size_t *n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void put(char *out, size_t cap, size_t *n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(out + *n, cap - *n, fmt, ap);
  va_end(ap);
  CHECK(k >= 0 && (size_t)k < cap - *n);
  *n += (size_t)k;
}

/* The config as a file in the documented format. */
static size_t write_back(const cli_config *c, char *out, size_t cap) {
  size_t n = 0;
  char a[NP_ADDRSTRLEN], id[NP_PEER_ID_LEN + 1];
#define PUT(...) put(out, cap, &n, __VA_ARGS__)
  if (c->have_rendezvous)
    PUT("rendezvous = %s\n", np_addr_format(&c->rendezvous, a, sizeof a));
  for (int i = 0; i < c->n_discovery; i++)
    PUT("discovery=%s  # server %d\n", np_addr_format(&c->discovery[i], a, sizeof a), i);
  if (c->key[0])
    PUT("key=%s\n", c->key); /* no blanks: the value may fill a line */
  for (int i = 0; i < c->n_allow; i++)
    PUT("allow = %s\n", c->allow[i]);
  for (int i = 0; i < c->n_aliases; i++) {
    np_peer_id_format(c->aliases[i].key, id);
    PUT("alias %s = %s\r\n", c->aliases[i].name, id);
  }
#undef PUT
  return n;
}

static void check_same(const cli_config *x, const cli_config *y) {
  CHECK(x->have_rendezvous == y->have_rendezvous);
  if (x->have_rendezvous)
    CHECK(np_addr_equal(&x->rendezvous, &y->rendezvous));
  CHECK(x->n_discovery == y->n_discovery);
  for (int i = 0; i < x->n_discovery; i++)
    CHECK(np_addr_equal(&x->discovery[i], &y->discovery[i]));
  CHECK(strcmp(x->key, y->key) == 0);
  CHECK(x->n_allow == y->n_allow);
  for (int i = 0; i < x->n_allow; i++)
    CHECK(strcmp(x->allow[i], y->allow[i]) == 0);
  CHECK(x->n_aliases == y->n_aliases);
  for (int i = 0; i < x->n_aliases; i++)
    CHECK(strcmp(x->aliases[i].name, y->aliases[i].name) == 0 &&
          memcmp(x->aliases[i].key, y->aliases[i].key, NP_PUBKEY_LEN) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static cli_config c, again, merged;
  static char text[CLI_CFG_MAX_FILE];
  char err[512];
  memset(&c, 0, sizeof c);
  err[0] = '\0';
  int rc = cli_config_parse(&c, (const char *)data, size, FILE_NAME, err, sizeof err);
  CHECK(rc == 0 || rc == -1);
  if (rc != 0) {
    CHECK(strncmp(err, FILE_NAME, strlen(FILE_NAME)) == 0);
    CHECK(memchr(err, '\0', sizeof err) != NULL);
    return 0;
  }
  check_fields(&c);
  size_t n = write_back(&c, text, sizeof text);
  memset(&again, 0, sizeof again);
  rc = cli_config_parse(&again, text, n, FILE_NAME, err, sizeof err);
  if (rc != 0)
    fprintf(stderr, "re-parse: %s\n", err);
  CHECK(rc == 0);
  check_same(&c, &again);
  merged = c;
  CHECK(cli_config_merge(&merged, &again, err, sizeof err) == 0);
  check_same(&merged, &c);
  return 0;
}
