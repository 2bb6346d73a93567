/*
 * The CLI's config file (cli/config.c): good files parse to what they say;
 * every error path is refused with the file, line and bad text quoted;
 * the user file wins over /etc per setting and --config replaces both;
 * aliases resolve, and a name that looks like a peer ID is refused.
 * Files live in a temporary directory made by the test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ID_A "AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQTCQKRMFYYDENBWHA5DYPQ"
#define ID_B "AEBAGBAFAYDQQCIKBMGA2DQPCAIREEYUCULBOGAZDINRYHI6D4QA"

static cli_config cfg; /* large: not on the stack */
static char err[600];

static int parse(const char *text) {
  memset(&cfg, 0, sizeof cfg);
  err[0] = '\0';
  return cli_config_parse(&cfg, text, strlen(text), "test.conf", err, sizeof err);
}

static void addr_is(const np_addr *a, const char *want) {
  char buf[NP_ADDRSTRLEN];
  assert_string_equal(np_addr_format(a, buf, sizeof buf), want);
}

static void test_good_file(void **state) {
  (void)state;
  assert_int_equal(parse("# natpunch\n"
                         "rendezvous = 198.51.100.10:7000\n"
                         "discovery=198.51.100.10:3478   # first\n"
                         "\tdiscovery = 198.51.100.11\r\n"
                         "key = ~/keys/natpunch#1\n"
                         "alias laptop = " ID_A "\n"
                         "alias nas.home_2-x = " ID_B " # the NAS\n"
                         "allow = laptop\n"
                         "allow = " ID_B "\n"
                         "\n   # trailing comment\n"),
                   0);
  assert_true(cfg.have_rendezvous);
  addr_is(&cfg.rendezvous, "198.51.100.10:7000");
  assert_int_equal(cfg.n_discovery, 2);
  addr_is(&cfg.discovery[0], "198.51.100.10:3478");
  addr_is(&cfg.discovery[1], "198.51.100.11:3478");  /* default port */
  assert_string_equal(cfg.key, "~/keys/natpunch#1"); /* '#' not after a blank */
  assert_int_equal(cfg.n_aliases, 2);
  assert_string_equal(cfg.aliases[1].name, "nas.home_2-x");
  assert_int_equal(cfg.n_allow, 2);
  assert_string_equal(cfg.allow[0], "laptop");

  uint8_t k[NP_PUBKEY_LEN], want[NP_PUBKEY_LEN];
  assert_int_equal(cli_config_resolve(&cfg, "laptop", k), 0);
  assert_int_equal(np_peer_id_parse(ID_A, want), 0);
  assert_memory_equal(k, want, NP_PUBKEY_LEN);
  /* A peer ID is itself, whatever the aliases; lower case too. */
  assert_int_equal(
      cli_config_resolve(&cfg, "aebagbafaydqqcikbmga2dqpcaireeyuculbogazdinryhi6d4qa", k), 0);
  assert_int_equal(np_peer_id_parse(ID_B, want), 0);
  assert_memory_equal(k, want, NP_PUBKEY_LEN);
  /* Names match in any case (ssh hands a ProxyCommand a lowercased %h);
   * unknown names fail. */
  assert_int_equal(cli_config_resolve(&cfg, "LapTop", k), 0);
  assert_int_equal(np_peer_id_parse(ID_A, want), 0);
  assert_memory_equal(k, want, NP_PUBKEY_LEN);
  assert_int_equal(cli_config_resolve(&cfg, "NAS.HOME_2-X", k), 0);
  assert_int_equal(cli_config_resolve(&cfg, "desktop", k), -1);
  assert_int_equal(cli_config_resolve(NULL, "laptop", k), -1);

  char path[64];
  assert_int_equal(cli_config_key_path(&cfg, "/home/u", path, sizeof path), 0);
  assert_string_equal(path, "/home/u/keys/natpunch#1");
  assert_int_equal(cli_config_key_path(&cfg, NULL, path, sizeof path), -1);
  assert_int_equal(cli_config_key_path(&cfg, "/home/u", path, 10), -1);
}

static void test_empty_and_ipv6(void **state) {
  (void)state;
  assert_int_equal(parse(""), 0);
  assert_false(cfg.have_rendezvous);
  assert_int_equal(cfg.n_discovery + cfg.n_aliases + cfg.n_allow, 0);
  char path[8];
  assert_int_equal(cli_config_key_path(&cfg, "/h", path, sizeof path), 1);
  assert_int_equal(parse("rendezvous = [2001:db8::1]\ndiscovery = [2001:db8::2]:9\n"
                         "key = /etc/natpunch/key"),
                   0); /* no final newline */
  addr_is(&cfg.rendezvous, "[2001:db8::1]:7000");
  addr_is(&cfg.discovery[0], "[2001:db8::2]:9");
  assert_string_equal(cfg.key, "/etc/natpunch/key");
}

/* text must fail, and the message must hold each of the fragments. */
static void refused(const char *text, const char *frag1, const char *frag2) {
  assert_int_equal(parse(text), -1);
  if (!strstr(err, frag1) || (frag2 && !strstr(err, frag2)))
    fail_msg("for %s: message '%s' lacks '%s' / '%s'", text, err, frag1, frag2 ? frag2 : "");
  assert_non_null(strstr(err, "test.conf"));
}

static void test_errors(void **state) {
  (void)state;
  refused("# ok\nrendezvous 1.2.3.4\n", "line 2", "expected KEY = VALUE: 'rendezvous 1.2.3.4'");
  refused("rendezvous =\n", "line 1", "no value after 'rendezvous ='");
  refused("rendezvous = example.com\n", "line 1", "'example.com' is not a numeric IP[:PORT]");
  refused("rendezvous = 1.2.3.4:70000\n", "line 1", "'1.2.3.4:70000'");
  refused("rendezvous = 1.2.3.4\n\nrendezvous = 1.2.3.5\n", "line 3", "already set on line 1");
  refused("discovery = 1.2.3.4\ndiscovery = 1.2.3.5\ndiscovery = 1.2.3.6\n", "line 3",
          "more than 2 discovery servers: '1.2.3.6'");
  refused("discovery = nope\n", "line 1", "discovery: 'nope'");
  refused("discovery = 1.2.3.4\ndiscovery = [2001:db8::1]\n", "line 2",
          "must be IPv4, or both IPv6");
  refused("key = relative/key\n", "line 1", "'relative/key' is not an absolute path");
  refused("key = /a\nkey = /b\n", "line 2", "key is already set on line 1");
  refused("colour = blue\n", "line 1", "unknown setting 'colour'");
  refused("aliaslaptop = " ID_A "\n", "line 1", "unknown setting 'aliaslaptop'");
  refused("alias laptop = not-an-id\n", "line 1", "'not-an-id' is not a peer ID");
  refused("alias lap top = " ID_A "\n", "line 1", "'lap top'");
  refused("alias l@ptop = " ID_A "\n", "line 1", "character outside");
  refused("alias -x = " ID_A "\n", "line 1", "starts with '-'");
  refused("alias .x = " ID_A "\n", "line 1", "starts with '-' or '.'");
  refused("alias abcdefghijklmnopqrstuvwxyz0123456 = " ID_A "\n", "line 1", "too long");
  refused("alias a = " ID_A "\n#\nalias a = " ID_B "\n", "line 3", "already defined on line 1");
  refused("alias Laptop = " ID_A "\nalias laptop = " ID_B "\n", "line 2",
          "alias 'laptop' is already defined on line 1");
  refused("allow = bad name!\n", "line 1", "'bad name!' is neither a peer ID nor an alias name");
  refused("rendezvous = 1.2.3.4\x01\n", "line 1", "control character 0x01 at column 21");
  refused("ok = 1\n", "line 1", "unknown setting 'ok'");

  /* A NUL byte (not seen by strlen: parse the buffer with its length). */
  static const char nul[] = "# x\nkey = /a\0b\n";
  memset(&cfg, 0, sizeof cfg);
  assert_int_equal(cli_config_parse(&cfg, nul, sizeof nul - 1, "n.conf", err, sizeof err), -1);
  assert_non_null(strstr(err, "n.conf line 2: control character 0x00"));

  /* Line length: the limit itself is fine, one byte more is not. */
  static char text[CLI_CFG_MAX_LINE + 64];
  int n = snprintf(text, sizeof text, "key = /");
  memset(text + n, 'a', CLI_CFG_MAX_LINE - (size_t)n);
  text[CLI_CFG_MAX_LINE] = '\n';
  text[CLI_CFG_MAX_LINE + 1] = '\0';
  assert_int_equal(parse(text), 0);
  assert_int_equal(strlen(cfg.key), CLI_CFG_MAX_LINE - 6);
  text[CLI_CFG_MAX_LINE] = 'a';
  text[CLI_CFG_MAX_LINE + 1] = '\n';
  text[CLI_CFG_MAX_LINE + 2] = '\0';
  refused(text, "line 1", "longer than 1024 bytes");

  /* Too big a file is refused before any line is read. */
  memset(&cfg, 0, sizeof cfg);
  assert_int_equal(cli_config_parse(&cfg, "", CLI_CFG_MAX_FILE + 1, "big", err, sizeof err), -1);
  assert_non_null(strstr(err, "big: larger than"));
}

/* A name that looks like a peer ID would make `connect NAME` ambiguous:
 * refused, whichever way round it is written. */
static void test_name_like_peer_id(void **state) {
  (void)state;
  refused("alias " ID_A " = " ID_B "\n", "line 1", "is a peer ID, not a name");
  refused("alias aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq = " ID_B "\n", "line 1",
          "is a peer ID, not a name");
  /* 52 base32 characters that are not a valid ID (bits left over) are
   * still no name: longer than any name may be. */
  refused("alias AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQTCQKRMFYYDENBWHA5DYPZ = " ID_B "\n", "line 1",
          "too long");
  assert_string_equal(cli_config_name_error(ID_A),
                      "is a peer ID, not a name (write: alias NAME = PEERID)");
  assert_null(cli_config_name_error("a"));
  assert_null(cli_config_name_error("abcdefghijklmnopqrstuvwxyz012345")); /* 32 */
  assert_non_null(cli_config_name_error(""));
}

static void test_alias_limit(void **state) {
  (void)state;
  static char text[CLI_CFG_MAX_ALIASES * 80 + 100];
  size_t n = 0;
  for (int i = 0; i <= CLI_CFG_MAX_ALIASES; i++)
    n += (size_t)snprintf(text + n, sizeof text - n, "alias p%d = %s\n", i, ID_A);
  refused(text, "line 257", "more than 256 aliases");
  /* Exactly the limit is fine, and every one resolves. */
  *strstr(text, "alias p256") = '\0';
  assert_int_equal(parse(text), 0);
  assert_int_equal(cfg.n_aliases, CLI_CFG_MAX_ALIASES);
  uint8_t k[NP_PUBKEY_LEN];
  assert_int_equal(cli_config_resolve(&cfg, "p255", k), 0);
}

/* ---- files and precedence ------------------------------------------------ */

static char dir[64];

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static int make_dir(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/np_test_config.XXXXXX");
  return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void test_precedence(void **state) {
  (void)state;
  char xdg[128], user[160], sys[160], other[160], home[128];
  snprintf(xdg, sizeof xdg, "%s/xdg", dir);
  snprintf(home, sizeof home, "%s/home", dir);
  snprintf(user, sizeof user, "%s/natpunch", xdg);
  assert_int_equal(mkdir(xdg, 0700), 0);
  assert_int_equal(mkdir(user, 0700), 0);
  snprintf(user, sizeof user, "%s/natpunch/config", xdg);
  snprintf(sys, sizeof sys, "%s/etc.conf", dir);
  snprintf(other, sizeof other, "%s/other.conf", dir);
  write_file(user, "rendezvous = 10.0.0.1\nalias laptop = " ID_A "\n");
  write_file(sys, "rendezvous = 10.0.0.9\ndiscovery = 10.0.0.2\ndiscovery = 10.0.0.3\n"
                  "key = /etc/natpunch/key\nalias laptop = " ID_B "\nalias nas = " ID_B "\n");
  write_file(other, "discovery = 10.0.0.7\n");

  /* The user file wins per setting; the rest comes from the system file. */
  memset(&cfg, 0, sizeof cfg);
  assert_int_equal(cli_config_user_path(xdg, "/nonexistent", other + 100, 60), 0);
  assert_int_equal(cli_config_load(&cfg, NULL, xdg, "/nonexistent", sys, err, sizeof err), 0);
  addr_is(&cfg.rendezvous, "10.0.0.1:7000");
  assert_int_equal(cfg.n_discovery, 2);
  addr_is(&cfg.discovery[1], "10.0.0.3:3478");
  assert_string_equal(cfg.key, "/etc/natpunch/key");
  assert_int_equal(cfg.n_aliases, 2);
  uint8_t k[NP_PUBKEY_LEN], a[NP_PUBKEY_LEN], b[NP_PUBKEY_LEN];
  np_peer_id_parse(ID_A, a);
  np_peer_id_parse(ID_B, b);
  assert_int_equal(cli_config_resolve(&cfg, "laptop", k), 0);
  assert_memory_equal(k, a, NP_PUBKEY_LEN); /* the user's laptop, not /etc's */
  assert_int_equal(cli_config_resolve(&cfg, "nas", k), 0);
  assert_memory_equal(k, b, NP_PUBKEY_LEN);
  assert_int_equal(cfg.n_files, 2);
  char src[400];
  cli_config_sources(&cfg, src, sizeof src);
  assert_non_null(strstr(src, user));
  assert_non_null(strstr(src, sys));

  /* --config replaces both. */
  memset(&cfg, 0, sizeof cfg);
  assert_int_equal(cli_config_load(&cfg, other, xdg, NULL, sys, err, sizeof err), 0);
  assert_false(cfg.have_rendezvous);
  assert_int_equal(cfg.n_discovery, 1);
  assert_int_equal(cfg.n_aliases, 0);
  assert_int_equal(cfg.n_files, 1);

  /* Without XDG_CONFIG_HOME (or with a relative one) ~/.config is read:
   * here it does not exist, so only the system file counts. */
  memset(&cfg, 0, sizeof cfg);
  assert_int_equal(cli_config_load(&cfg, NULL, "relative/xdg", home, sys, err, sizeof err), 0);
  addr_is(&cfg.rendezvous, "10.0.0.9:7000");
  assert_int_equal(cfg.n_files, 1);
  /* No file at all: an empty config, not an error. */
  memset(&cfg, 0, sizeof cfg);
  assert_int_equal(cli_config_load(&cfg, NULL, NULL, home, "/nonexistent/config", err, sizeof err),
                   0);
  assert_int_equal(cfg.n_files, 0);
  assert_string_equal(cli_config_sources(&cfg, src, sizeof src), "no config file");
  char p[64];
  assert_int_equal(cli_config_user_path(NULL, NULL, p, sizeof p), -1);
  assert_int_equal(cli_config_user_path(NULL, "/h", p, sizeof p), 0);
  assert_string_equal(p, "/h/.config/natpunch/config");
  assert_int_equal(cli_config_user_path("/x", "/h", p, sizeof p), 0);
  assert_string_equal(p, "/x/natpunch/config");
  assert_int_equal(cli_config_user_path("/x", "/h", p, 8), -1);
}

static void test_load_errors(void **state) {
  (void)state;
  char path[160], sys[160];
  /* A missing --config file is an error; a missing default one is not. */
  snprintf(path, sizeof path, "%s/missing", dir);
  memset(&cfg, 0, sizeof cfg);
  assert_int_equal(cli_config_load(&cfg, path, NULL, NULL, NULL, err, sizeof err), -1);
  assert_non_null(strstr(err, "cannot open config file"));
  assert_non_null(strstr(err, "No such file"));
  assert_int_equal(cli_config_load_file(&cfg, path, false, err, sizeof err), 1);
  /* A directory. */
  memset(&cfg, 0, sizeof cfg);
  assert_int_equal(cli_config_load(&cfg, dir, NULL, NULL, NULL, err, sizeof err), -1);
  assert_non_null(strstr(err, "is a directory"));
  /* A bad line in the system file fails the load and names that file. */
  snprintf(sys, sizeof sys, "%s/bad-etc.conf", dir);
  write_file(sys, "# fine\n\nrendezvous = 1.2.3.4\nrendevous = 1.2.3.4\n");
  memset(&cfg, 0, sizeof cfg);
  assert_int_equal(cli_config_load(&cfg, NULL, NULL, NULL, sys, err, sizeof err), -1);
  assert_non_null(strstr(err, sys));
  assert_non_null(strstr(err, "line 4: unknown setting 'rendevous'"));
  /* Writable by group or others: refused like ssh refuses such a config;
   * /dev/null (not a regular file) is fine as an empty --config. */
  snprintf(path, sizeof path, "%s/open.conf", dir);
  write_file(path, "rendezvous = 1.2.3.4\n");
  chmod(path, 0664);
  memset(&cfg, 0, sizeof cfg);
  assert_int_equal(cli_config_load_file(&cfg, path, false, err, sizeof err), -1);
  assert_non_null(strstr(err, "writable by others"));
  assert_non_null(strstr(err, "chmod go-w"));
  chmod(path, 0646);
  assert_int_equal(cli_config_load_file(&cfg, path, false, err, sizeof err), -1);
  chmod(path, 0644);
  assert_int_equal(cli_config_load_file(&cfg, path, false, err, sizeof err), 0);
  memset(&cfg, 0, sizeof cfg);
  assert_int_equal(cli_config_load(&cfg, "/dev/null", NULL, NULL, NULL, err, sizeof err), 0);
  assert_int_equal(cfg.n_files, 1);
  /* An unreadable file (skipped as root, who reads anything). */
  if (geteuid() != 0) {
    snprintf(path, sizeof path, "%s/unreadable", dir);
    write_file(path, "rendezvous = 1.2.3.4\n");
    chmod(path, 0);
    memset(&cfg, 0, sizeof cfg);
    assert_int_equal(cli_config_load_file(&cfg, path, false, err, sizeof err), -1);
    assert_non_null(strstr(err, "Permission denied"));
  }
}

static void test_merge_alias_limit(void **state) {
  (void)state;
  static cli_config hi, lo;
  memset(&hi, 0, sizeof hi);
  memset(&lo, 0, sizeof lo);
  for (int i = 0; i < CLI_CFG_MAX_ALIASES; i++) {
    snprintf(hi.aliases[i].name, sizeof hi.aliases[i].name, "h%d", i);
    snprintf(lo.aliases[i].name, sizeof lo.aliases[i].name, i == 0 ? "h0" : "l%d", i);
  }
  hi.n_aliases = lo.n_aliases = CLI_CFG_MAX_ALIASES;
  assert_int_equal(cli_config_merge(&hi, &lo, err, sizeof err), -1);
  assert_non_null(strstr(err, "more than 256 aliases"));
  /* The same name in both is no new alias. */
  lo.n_aliases = 1;
  hi.n_aliases = CLI_CFG_MAX_ALIASES;
  assert_int_equal(cli_config_merge(&hi, &lo, err, sizeof err), 0);
  assert_int_equal(hi.n_aliases, CLI_CFG_MAX_ALIASES);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_good_file),   cmocka_unit_test(test_empty_and_ipv6),
      cmocka_unit_test(test_errors),      cmocka_unit_test(test_name_like_peer_id),
      cmocka_unit_test(test_alias_limit), cmocka_unit_test(test_precedence),
      cmocka_unit_test(test_load_errors), cmocka_unit_test(test_merge_alias_limit),
  };
  return cmocka_run_group_tests(tests, make_dir, remove_dir);
}
