/* natpunch keygen / natpunch id: make an identity key, show its peer ID. */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void keygen_usage(FILE *out) {
  fprintf(out, "Usage: natpunch keygen [FILE] [--force]\n\n"
               "Writes a new identity key (Ed25519) to FILE and prints its peer ID, the\n"
               "52-character name other peers use to reach this one, on stdout.\n\n"
               "FILE defaults to $XDG_CONFIG_HOME/natpunch/key, or ~/.config/natpunch/key\n"
               "when XDG_CONFIG_HOME is unset. The file is written with mode 0600 (missing\n"
               "directories are created with mode 0700) to a temporary name and renamed, so\n"
               "it is never seen half-written. Its format is two lines: \"natpunch-key-v1\"\n"
               "and the 32-byte secret seed in hex.\n\n"
               "Options:\n"
               "  -f, --force   replace an existing FILE (its old peer ID is lost for good)\n"
               "  -h, --help    show this help\n\n"
               "Exit status: 0 key written; 1 FILE exists (without --force) or could not be\n"
               "written; 2 bad command line.\n");
}

static void id_usage(FILE *out) {
  fprintf(out, "Usage: natpunch id [--key FILE]\n\n"
               "Prints this peer's ID: the lowercase base32 form of the public half of its\n"
               "identity key (52 characters), which other peers use to reach it.\n\n"
               "Without --key the default key is used ($XDG_CONFIG_HOME/natpunch/key, or\n"
               "~/.config/natpunch/key); when it does not exist yet it is created (mode 0600)\n"
               "and a line on stderr says so. A key given with --key is never created.\n"
               "A key file that group or others may access is refused, like ssh does.\n\n"
               "Options:\n"
               "  -k, --key FILE   read the key from FILE\n"
               "  -h, --help       show this help\n\n"
               "Exit status: 0 ID printed; 1 the key is missing, unreadable, malformed or\n"
               "accessible by others; 2 bad command line.\n");
}

/* Explains why a key file could not be loaded; returns CLI_EXIT_FAIL. */
static int load_error(const char *cmd, const char *path, int rc, int err) {
  char msg[PATH_MAX * 2 + 200];
  cli_key_error(msg, sizeof msg, path, rc, err);
  fprintf(stderr, "natpunch %s: %s\n", cmd, msg);
  return CLI_EXIT_FAIL;
}

/* The default key path, or an error message and -1. */
static int default_path(const char *cmd, char *buf, size_t size) {
  int rc = np_identity_default_path(buf, size);
  if (rc == 0)
    return 0;
  if (rc == NP_ERR_INVAL)
    fprintf(stderr,
            "natpunch %s: no default key location: neither XDG_CONFIG_HOME nor HOME is set "
            "(give a key file instead)\n",
            cmd);
  else
    fprintf(stderr, "natpunch %s: default key path too long\n", cmd);
  return -1;
}

int cli_keygen(int argc, char **argv) {
  static const struct option opts[] = {
      {"force", no_argument, NULL, 'f'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  bool force = false;
  opterr = 0;
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, ":fh", opts, NULL)) != -1) {
    switch (c) {
    case 'f':
      force = true;
      break;
    case 'h':
      keygen_usage(stdout);
      return CLI_EXIT_OK;
    default:
      return cli_option_error("keygen", c, argv);
    }
  }
  if (argc - optind > 1)
    return cli_usage_error("keygen", "one FILE at most, got '%s' and '%s'", argv[optind],
                           argv[optind + 1]);
  char def[PATH_MAX];
  const char *path = optind < argc ? argv[optind] : NULL;
  if (path && path[0] == '\0')
    return cli_usage_error("keygen", "FILE is empty");
  if (!path) {
    if (default_path("keygen", def, sizeof def) != 0)
      return CLI_EXIT_FAIL;
    path = def;
  }

  struct stat sb;
  if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
    /* Even with --force: replacing a directory is never what was meant. */
    fprintf(stderr,
            "natpunch keygen: '%s' is a directory; give the key file's path (e.g. '%s/key')\n",
            path, path);
    return CLI_EXIT_FAIL;
  }
  np_identity *id = NULL;
  int rc = np_identity_generate(&id);
  if (rc) {
    fprintf(stderr, "natpunch keygen: cannot generate a key: %s\n", np_strerror(rc));
    return CLI_EXIT_FAIL;
  }
  rc = np_identity_save(id, path, force);
  int err = errno;
  if (rc) {
    np_identity_free(id);
    if (rc == NP_ERR_INVAL && err == EEXIST)
      fprintf(stderr,
              "natpunch keygen: '%s' already exists; not replacing it (use --force to replace "
              "it, which loses its peer ID for good)\n",
              path);
    else
      fprintf(stderr, "natpunch keygen: cannot write '%s': %s\n", path,
              rc == NP_ERR_SYS ? strerror(err) : np_strerror(rc));
    return CLI_EXIT_FAIL;
  }
  char pid[NP_PEER_ID_LEN + 1];
  np_identity_peer_id(id, pid);
  np_identity_free(id);
  printf("%s\n", pid);
  fprintf(stderr, "natpunch keygen: wrote a new key to %s\n", path);
  return CLI_EXIT_OK;
}

int cli_id(int argc, char **argv) {
  static const struct option opts[] = {
      {"key", required_argument, NULL, 'k'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *key = NULL;
  opterr = 0;
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, ":k:h", opts, NULL)) != -1) {
    switch (c) {
    case 'k':
      key = optarg;
      break;
    case 'h':
      id_usage(stdout);
      return CLI_EXIT_OK;
    default:
      return cli_option_error("id", c, argv);
    }
  }
  if (optind < argc)
    return cli_usage_error("id", "unexpected argument '%s' (the key file goes after --key)",
                           argv[optind]);
  if (key && key[0] == '\0')
    return cli_usage_error("id", "--key: the file name is empty");

  np_identity *id = NULL;
  int rc;
  if (key) {
    rc = np_identity_load(key, &id);
    if (rc)
      return load_error("id", key, rc, errno);
  } else {
    char def[PATH_MAX];
    if (default_path("id", def, sizeof def) != 0)
      return CLI_EXIT_FAIL;
    bool created = false;
    rc = np_identity_load_or_create(def, &id, &created);
    if (rc) {
      int err = errno;
      if (rc == NP_ERR_SYS && err != ENOENT) {
        fprintf(stderr, "natpunch id: cannot read or create key file '%s': %s\n", def,
                strerror(err));
        return CLI_EXIT_FAIL;
      }
      return load_error("id", def, rc, err);
    }
    if (created)
      fprintf(stderr, "natpunch id: no key yet; created a new one at %s\n", def);
  }
  char pid[NP_PEER_ID_LEN + 1];
  np_identity_peer_id(id, pid);
  np_identity_free(id);
  printf("%s\n", pid);
  return CLI_EXIT_OK;
}
