/* PLACEHOLDER */
#include "cli.h"
int cli_discovery_server(int argc, char **argv) { (void)argc; (void)argv; return CLI_EXIT_FAIL; }
