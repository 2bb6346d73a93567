/* PLACEHOLDER: being written (keygen, id). */
#include "cli.h"
int cli_keygen(int argc, char **argv) { (void)argc; (void)argv; return CLI_EXIT_FAIL; }
int cli_id(int argc, char **argv) { (void)argc; (void)argv; return CLI_EXIT_FAIL; }
