/* What the library's tests may reach of the agent beyond natpunch.h: creation with a given clock. */
#ifndef NP_AGENT_INTERNAL_H
#define NP_AGENT_INTERNAL_H

#include "natpunch.h"
#include "net/loop.h"

/* np_agent_new with the agent's loop reading time from clock(clock_user)
 * instead of CLOCK_MONOTONIC, so a test drives the session's timers (the
 * session deadline, the peer timeout, the punch machine's schedule) by
 * hand, without sleeping. The port-mapping worker, a thread of its own,
 * keeps the real clock: tests set no_portmap. A NULL clock is the default. */
int np__agent_new_clocked(const np_agent_config *cfg, np_loop_clock_fn clock, void *clock_user,
                          np_agent **out);

#endif
