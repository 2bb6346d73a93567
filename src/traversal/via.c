/* Names of the ways a path was found (enum np_via), shared by the punch log and the public API. */
#include "natpunch.h"

/* Lives with the traversal, which decides the via and logs it, rather than
 * in the agent: punch.c calls it, and a method must not call up into the
 * face of the library. */
NP_EXPORT const char *np_via_name(enum np_via via) {
  switch (via) {
  case NP_VIA_HOST:
    return "host";
  case NP_VIA_REFLEXIVE:
    return "reflexive";
  case NP_VIA_PORTMAP:
    return "portmap";
  case NP_VIA_PREDICTED:
    return "predicted";
  case NP_VIA_BIRTHDAY:
    return "birthday";
  default:
    return "none";
  }
}
