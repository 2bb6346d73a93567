/* The port-mapping worker: a thread that maps the agent's port at the gateway and renews it. */
#ifndef NP_PORTMAP_JOB_H
#define NP_PORTMAP_JOB_H

#include "natpunch.h"
#include "portmap/portmap.h"
#include "util/log.h"

#include <stdbool.h>
#include <stdint.h>

struct np_pm_job;

typedef struct np_pm_job_config {
  uint16_t internal_port; /* the agent's gathered socket */
  /* Called from the worker thread when the mapping appears, changes or
   * dies, so the agent's loop looks again (np__pm_job_get). Must be safe to call
   * from another thread; never called once np__pm_job_stop has returned. */
  void (*wake)(void *user);
  void *wake_user;
  np_logger log; /* used from the worker thread: the sink must be thread-safe */
} np_pm_job_config;

/* Starts the worker: the unicast protocols first (PCP, NAT-PMP: one round
 * trip to the gateway), then UPnP IGD discovery if they fail, then renewals
 * of whatever mapped for as long as the job lives. Returns NULL when it
 * cannot start (no memory, no thread): the agent then offers no mapping. */
struct np_pm_job *np__pm_job_start(const np_pm_job_config *cfg);

/* Lets go of the worker (NULL accepted). One between renewals is joined
 * and its mapping deleted before this returns (a round trip to the
 * gateway); one still in a blocking exchange is detached and deletes what
 * it maps itself when it ends, calling the log sink until then. */
void np__pm_job_stop(struct np_pm_job *j);

/* The mapped external address (and by which protocol, if proto is not
 * NULL), if the worker has one and its lifetime has not run out unrenewed.
 * False with a NULL job. */
bool np__pm_job_get(struct np_pm_job *j, np_addr *out, enum np_portmap_proto *proto);

/* True while the unicast protocols have not answered yet (the callee's
 * gathering waits a little for them); false once they have, once UPnP
 * discovery took over, and with a NULL job. */
bool np__pm_job_pending(struct np_pm_job *j);

#endif
