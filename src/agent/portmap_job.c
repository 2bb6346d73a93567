/* The port-mapping worker: a thread that maps the agent's port at the gateway and renews it. */
#include "agent/portmap_job.h"

#include "util/clock.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#define PORTMAP_TIMEOUT_MS 2000

/* The port-mapping worker's state lives apart from the agent and is freed
 * by whichever of the two lets go last: freeing an agent must not wait for
 * a UPnP discovery that can take seconds, so the agent may abandon a
 * running worker, which then deletes whatever it mapped and frees itself.
 *
 * Once mapped, the worker stays to renew the mapping at half its granted
 * lifetime (RFC 6887 11.2.1 says between 1/2 and 5/8; RFC 6886 3.3 half),
 * retrying a failed renewal at a quarter of what is left, and marks the
 * mapping dead when its lifetime runs out unrenewed, so that a long-running
 * listener never offers it; it keeps trying (the same request recreates the
 * mapping after a gateway restart), every PM_RETRY_MAX_MS at most. */
#define PM_MIN_RENEW_MS 1000
#define PM_RETRY_MAX_MS 60000

enum pm_phase { PM_OPENING, PM_SLEEPING, PM_RENEWING, PM_EXITED };

struct np_pm_job {
  pthread_mutex_t lock;
  pthread_cond_t cond; /* signalled when the agent lets go */
  pthread_t thread;
  int refs;           /* agent + worker */
  enum pm_phase phase;
  bool done;
  bool slow;          /* the unicast protocols failed; UPnP discovery runs */
  bool abandoned;     /* the agent is gone */
  int rc;
  np_addr external;
  int64_t expires;    /* monotonic ms when the mapping ends unless renewed; INT64_MAX: never */
  void (*wake)(void *user); /* tells the agent's loop (async-signal-safe) */
  void *wake_user;
  np_portmap *fast;   /* PCP and NAT-PMP: one round trip to the gateway */
  np_portmap *upnp;   /* UPnP IGD: multicast discovery, then HTTP */
  np_portmap *used;   /* the one that mapped */
};

static void pm_job_release(struct np_pm_job *j) {
  pthread_mutex_lock(&j->lock);
  bool last = --j->refs == 0;
  pthread_mutex_unlock(&j->lock);
  if (!last)
    return;
  if (j->used)
    (void)np__portmap_close(j->used); /* mappings do not outlive the agent */
  np__portmap_free(j->fast);
  np__portmap_free(j->upnp);
  pthread_cond_destroy(&j->cond);
  pthread_mutex_destroy(&j->lock);
  free(j);
}

/* Tells the agent's loop (under the lock). */
static void pm_wake_agent(struct np_pm_job *j) {
  if (!j->abandoned)
    j->wake(j->wake_user);
}

static int64_t pm_expiry(int64_t now, uint32_t lifetime_s) {
  return lifetime_s ? now + (int64_t)lifetime_s * 1000 : INT64_MAX;
}

/* Sleeps until 'until' (monotonic ms) or the agent lets go; under the lock.
 * Returns false when abandoned. */
static bool pm_sleep(struct np_pm_job *j, int64_t until) {
  j->phase = PM_SLEEPING;
  while (!j->abandoned) {
    int64_t now = np__now_ms();
    if (until != INT64_MAX && now >= until)
      break;
    if (until == INT64_MAX) {
      pthread_cond_wait(&j->cond, &j->lock);
      continue;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + (until - now) * 1000000;
    ts.tv_sec += (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    (void)pthread_cond_timedwait(&j->cond, &j->lock, &ts);
  }
  return !j->abandoned;
}

/* Renews j->used until the agent lets go. */
static void pm_keep(struct np_pm_job *j) {
  pthread_mutex_lock(&j->lock);
  int64_t granted_at = np__now_ms();
  uint32_t life = np__portmap_lifetime(j->used);
  int64_t next = life ? granted_at + (int64_t)life * 500 : INT64_MAX;
  if (next != INT64_MAX && next < granted_at + PM_MIN_RENEW_MS)
    next = granted_at + PM_MIN_RENEW_MS;
  int64_t retry = 0;
  while (pm_sleep(j, next)) {
    j->phase = PM_RENEWING;
    pthread_mutex_unlock(&j->lock);
    np_addr ext;
    int rc = np__portmap_renew(j->used, &ext);
    int64_t now = np__now_ms();
    pthread_mutex_lock(&j->lock);
    if (rc == 0) {
      bool changed = j->rc != 0 || !np_addr_equal(&ext, &j->external);
      life = np__portmap_lifetime(j->used);
      j->rc = 0;
      j->external = ext;
      j->expires = pm_expiry(now, life);
      retry = 0;
      next = life ? now + (int64_t)life * 500 : INT64_MAX;
      if (next != INT64_MAX && next < now + PM_MIN_RENEW_MS)
        next = now + PM_MIN_RENEW_MS;
      if (changed)
        pm_wake_agent(j);
      continue;
    }
    if (j->rc == 0 && now >= j->expires) {
      j->rc = NP_ERR_TIMEOUT; /* dead: no longer offered */
      pm_wake_agent(j);
    }
    /* Before expiry, a quarter of what is left (at least a second); after,
     * backing off to PM_RETRY_MAX_MS. */
    if (j->rc == 0) {
      int64_t left = j->expires - now;
      next = now + (left / 4 > PM_MIN_RENEW_MS ? left / 4 : PM_MIN_RENEW_MS);
    } else {
      retry = retry ? retry * 2 : 2000;
      if (retry > PM_RETRY_MAX_MS)
        retry = PM_RETRY_MAX_MS;
      next = now + retry;
    }
  }
  pthread_mutex_unlock(&j->lock);
}

static void *portmap_worker(void *arg) {
  struct np_pm_job *j = arg;
  np_addr ext = {0};
  np_portmap *used = j->fast;
  int rc = np__portmap_open(j->fast, &ext);
  if (rc != 0) {
    pthread_mutex_lock(&j->lock);
    j->slow = true;
    bool stop = j->abandoned;
    pthread_mutex_unlock(&j->lock);
    used = j->upnp;
    rc = stop ? NP_ERR_CANCELLED : np__portmap_open(j->upnp, &ext);
  }
  pthread_mutex_lock(&j->lock);
  j->done = true;
  j->rc = rc;
  j->external = ext;
  j->used = rc == 0 ? used : NULL;
  if (rc == 0)
    j->expires = pm_expiry(np__now_ms(), np__portmap_lifetime(used));
  pm_wake_agent(j);
  bool keep = rc == 0 && !j->abandoned;
  pthread_mutex_unlock(&j->lock);
  if (keep)
    pm_keep(j);
  pthread_mutex_lock(&j->lock);
  j->phase = PM_EXITED;
  pthread_mutex_unlock(&j->lock);
  pm_job_release(j);
  return NULL;
}

struct np_pm_job *np__pm_job_start(const np_pm_job_config *cfg) {
  struct np_pm_job *j = calloc(1, sizeof *j);
  if (!j)
    return NULL;
  pthread_mutex_init(&j->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* np__now_ms()'s clock */
  pthread_cond_init(&j->cond, &ca);
  pthread_condattr_destroy(&ca);
  j->wake = cfg->wake;
  j->wake_user = cfg->wake_user;
  j->refs = 2;
  np_portmap_config pc = {
      .internal_port = cfg->internal_port,
      .timeout_ms = PORTMAP_TIMEOUT_MS,
      .description = "natpunch",
      .log = cfg->log.fn,
      .log_user = cfg->log.user,
      .log_level = cfg->log.level,
  };
  np_portmap_config fast = pc, slow = pc;
  fast.no_upnp = true;
  slow.no_pcp = slow.no_natpmp = true;
  if (np__portmap_new(&fast, &j->fast) != 0 || np__portmap_new(&slow, &j->upnp) != 0 ||
      pthread_create(&j->thread, NULL, portmap_worker, j) != 0) {
    j->refs = 1;
    pm_job_release(j);
    return NULL;
  }
  return j;
}

/* Lets go of the worker. A worker that is between renewals (or finished)
 * is woken and joined, and the mapping is deleted now, before this
 * returns (a round trip to the gateway): a process that exits right after
 * must not leave it behind. One still in a blocking exchange (UPnP
 * discovery takes seconds) is left to finish on its own: it deletes
 * whatever it mapped. The log callback may be called by such a worker
 * until it ends, so applications keep their log sink alive (the CLI's is
 * static). */
void np__pm_job_stop(struct np_pm_job *j) {
  if (!j)
    return;
  pthread_mutex_lock(&j->lock);
  j->abandoned = true;
  pthread_cond_broadcast(&j->cond);
  bool join = j->phase == PM_SLEEPING || j->phase == PM_EXITED;
  /* Kept alive across the join: the worker's release is then not the
   * last, and ours deletes the mapping here. */
  pthread_mutex_unlock(&j->lock);
  if (join)
    pthread_join(j->thread, NULL);
  else
    pthread_detach(j->thread);
  pm_job_release(j);
}

/* The mapped address, if the worker has one by now and it has not expired. */
bool np__pm_job_get(struct np_pm_job *j, np_addr *out, enum np_portmap_proto *proto) {
  bool ok = false;
  if (!j)
    return false;
  pthread_mutex_lock(&j->lock);
  if (j->done && j->rc == 0 && np__now_ms() < j->expires) {
    *out = j->external;
    if (proto)
      *proto = np__portmap_protocol(j->used);
    ok = true;
  }
  pthread_mutex_unlock(&j->lock);
  return ok;
}

bool np__pm_job_pending(struct np_pm_job *j) {
  if (!j)
    return false;
  pthread_mutex_lock(&j->lock);
  bool pending = !j->done && !j->slow;
  pthread_mutex_unlock(&j->lock);
  return pending;
}

