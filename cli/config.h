/* The natpunch config file and peer aliases (CLI only).
 *
 * Format, one setting a line:
 *   # a comment (a '#' at the start of a line or after a blank)
 *   rendezvous = IP[:PORT]          at most once (port defaults to 7000)
 *   discovery  = IP[:PORT]          at most twice (port defaults to 3478)
 *   key        = /abs/path | ~/path at most once: the identity key
 *   allow      = PEERID | NAME      repeatable: who may call `listen`
 *   alias NAME = PEERID             repeatable: a local name for a peer
 * NAME: 1 to 32 characters of [A-Za-z0-9._-], not starting with '-' or
 * '.', and never 52 characters long, so it can never be mistaken for a
 * peer ID. Names match whatever their case (ssh lowercases the %h of a
 * ProxyCommand), so two that differ only in case are duplicates. Unknown
 * keys, a key given too often, a duplicate alias, a line over
 * CLI_CFG_MAX_LINE bytes and a control character (NUL included) are errors
 * that quote the file, line number and text. Like ssh's config, a file
 * that group or others may write, or that another user (not root) owns, is
 * refused: it says who may call and whom a name reaches.
 *
 * Files, per setting the first that has it wins: command-line flags, then
 * `--config FILE` (which replaces the next two entirely), else
 * $XDG_CONFIG_HOME/natpunch/config (or ~/.config/natpunch/config), then
 * /etc/natpunch/config. Aliases of both files are merged (the user's win).
 */
#ifndef NP_CLI_CONFIG_H
#define NP_CLI_CONFIG_H

#include "natpunch.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLI_CFG_MAX_LINE 1024         /* bytes, without the newline */
#define CLI_CFG_MAX_FILE (256 * 1024) /* a bigger file is refused, not truncated */
#define CLI_CFG_MAX_ALIASES 256       /* in all files together */
#define CLI_CFG_MAX_NAME 32
#define CLI_CFG_MAX_ALLOW NP_AGENT_MAX_ALLOW
#define CLI_CFG_MAX_PATH 1024
#define CLI_CFG_SYSTEM_PATH "/etc/natpunch/config"
#define CLI_CFG_DEFAULT_RDV_PORT 7000
#define CLI_CFG_DEFAULT_STUN_PORT 3478

typedef struct cli_alias {
  char name[CLI_CFG_MAX_NAME + 1];
  uint8_t key[NP_PUBKEY_LEN];
} cli_alias;

/* What the config files say; zero-initialise, then parse or load. Large
 * (aliases): keep it off small stacks. */
typedef struct cli_config {
  bool have_rendezvous;
  np_addr rendezvous;
  int n_discovery;
  np_addr discovery[NP_PROBE_MAX_SERVERS];
  char key[CLI_CFG_MAX_PATH]; /* as written ("~/..." kept); "" when unset */
  int n_allow;
  char allow[CLI_CFG_MAX_ALLOW][NP_PEER_ID_LEN + 1]; /* peer IDs or names */
  int n_aliases;
  cli_alias aliases[CLI_CFG_MAX_ALIASES];
  /* The files that were read, highest precedence first, for messages. */
  int n_files;
  char files[2][CLI_CFG_MAX_PATH];
} cli_config;

/* Parses one file's text (len bytes, need not be NUL-terminated) into cfg,
 * which should be zeroed; file names the source in messages. Pure: no I/O,
 * no environment. Returns 0, or -1 with err holding "FILE line N: what is
 * wrong: 'the text'" (nothing else of cfg may be relied on then). */
int cli_config_parse(cli_config *cfg, const char *buf, size_t len, const char *file, char *err,
                     size_t err_size);

/* Fills what hi lacks from lo (the lower-precedence file): each setting
 * that hi does not set, and lo's aliases whose name hi does not define.
 * Returns 0, or -1 with err filled when the aliases together exceed
 * CLI_CFG_MAX_ALIASES. */
int cli_config_merge(cli_config *hi, const cli_config *lo, char *err, size_t err_size);

/* Reads and parses the file at path into a zeroed cfg. Returns 0, 1 when
 * the file does not exist and !must_exist (cfg left empty), or -1 with err
 * filled (missing but required, a directory, unreadable, too big, or a
 * parse error). */
int cli_config_load_file(cli_config *cfg, const char *path, bool must_exist, char *err,
                         size_t err_size);

/* The user's config file path from the environment values given (either
 * may be NULL): xdg/natpunch/config when xdg is absolute (the XDG spec
 * ignores a relative one), else home/.config/natpunch/config. Returns 0,
 * or -1 when neither gives one or it does not fit. */
int cli_config_user_path(const char *xdg, const char *home, char *buf, size_t size);

/* Loads the configuration in precedence order into a zeroed cfg: only
 * override when it is not NULL (it must exist), else the user file (from
 * xdg/home as above) merged over system_path; missing files are skipped.
 * Environment values are parameters so that tests choose them. Returns 0
 * or -1 with err filled. */
int cli_config_load(cli_config *cfg, const char *override, const char *xdg, const char *home,
                    const char *system_path, char *err, size_t err_size);

/* Checks an alias name against the rules above; returns NULL when it is
 * good, else a short reason ("too long", ...). */
const char *cli_config_name_error(const char *name);

/* The peer named by text: a peer ID, else an alias of cfg. Returns 0 with
 * key filled, or -1 when it is neither. */
int cli_config_resolve(const cli_config *cfg, const char *text, uint8_t key[NP_PUBKEY_LEN]);

/* The key path of cfg with a leading "~/" replaced by home. Returns 0 with
 * buf filled, 1 when cfg sets no key, -1 when it cannot be expanded (no
 * home, too long). */
int cli_config_key_path(const cli_config *cfg, const char *home, char *buf, size_t size);

/* Writes into buf which files were read ("'A' and 'B'", or "no config file
 * (looked for 'A')" style text is the caller's), for messages such as "not
 * an alias in ...". Returns buf. */
char *cli_config_sources(const cli_config *cfg, char *buf, size_t size);

#endif
