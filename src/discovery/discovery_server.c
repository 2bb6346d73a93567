/* PLACEHOLDER: being written (discovery server). */
#include "natpunch.h"
#include <string.h>
NP_EXPORT int np_discovery_server_new(const np_discovery_server_config *c, np_discovery_server **o) { (void)c; *o = NULL; return NP_ERR_UNSUPPORTED; }
NP_EXPORT int np_discovery_server_run(np_discovery_server *s) { (void)s; return NP_ERR_UNSUPPORTED; }
NP_EXPORT void np_discovery_server_stop(np_discovery_server *s) { (void)s; }
NP_EXPORT void np_discovery_server_stats(const np_discovery_server *s, np_discovery_stats *o) { (void)s; memset(o, 0, sizeof *o); }
NP_EXPORT const np_addr *np_discovery_server_local(const np_discovery_server *s) { (void)s; return NULL; }
NP_EXPORT void np_discovery_server_free(np_discovery_server *s) { (void)s; }
