/* PLACEHOLDER: being written. */
#include "cli.h"
int cli_rendezvous_server(int argc, char **argv) { (void)argc; (void)argv; return CLI_EXIT_FAIL; }
