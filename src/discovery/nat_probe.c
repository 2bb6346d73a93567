/* PLACEHOLDER: being written (NAT probe). */
#include "natpunch.h"
NP_EXPORT const char *np_nat_behavior_name(enum np_nat_behavior b) { (void)b; return "unknown"; }
NP_EXPORT int np_probe_run(const np_probe_config *c, np_probe_result *o) { (void)c; (void)o; return NP_ERR_UNSUPPORTED; }
