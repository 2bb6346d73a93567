/* One event loop for the agent and the servers: fds, ordered timers, a wakeup, a clock. */
#include "net/loop.h"

#include "natpunch.h"
#include "util/clock.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define LOOP_EVENTS 256 /* epoll events per turn (the rendezvous server's figure); the rest wait */

struct fd_reg {
  unsigned mask; /* asked for; 0 with fn == NULL: not registered */
  np_loop_fd_fn fn;
  void *user;
};

/* Timers in one list sorted by (at, id): there are few (a server has one,
 * the agent a handful), so insertion by walking beats a heap's code. */
struct timer {
  struct timer *next;
  uint64_t id;
  int64_t at;
  np_loop_timer_fn fn;
  void *user;
};

struct np_loop {
  np_loop_config cfg;
  int epfd, wakefd;
  struct fd_reg *fds; /* indexed by fd */
  int nfds;
  struct timer *timers;
  uint64_t next_id;
  atomic_bool stop;
  np_loop_hook_fn before_wait;
  void *before_wait_user;
};

static int64_t default_clock(void *user) {
  (void)user;
  return np__now_ms();
}

int np__loop_new(const np_loop_config *cfg, np_loop **out) {
  *out = NULL;
  np_loop *l = calloc(1, sizeof *l);
  if (!l)
    return NP_ERR_NOMEM;
  if (cfg)
    l->cfg = *cfg;
  if (!l->cfg.clock)
    l->cfg.clock = default_clock;
  l->next_id = 1;
  atomic_init(&l->stop, false);
  l->epfd = epoll_create1(EPOLL_CLOEXEC);
  l->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  /* The wakeup is tagged -1, which no registered fd can be. */
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = -1};
  if (l->epfd < 0 || l->wakefd < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) != 0) {
    np__loop_free(l);
    return NP_ERR_SYS;
  }
  *out = l;
  return 0;
}

void np__loop_free(np_loop *loop) {
  if (!loop)
    return;
  while (loop->timers) {
    struct timer *t = loop->timers;
    loop->timers = t->next;
    free(t);
  }
  free(loop->fds);
  if (loop->epfd >= 0)
    close(loop->epfd);
  if (loop->wakefd >= 0)
    close(loop->wakefd);
  free(loop);
}

int64_t np__loop_now(const np_loop *loop) {
  return loop->cfg.clock(loop->cfg.clock_user);
}

static uint32_t to_epoll(unsigned mask) {
  return (mask & NP_LOOP_READ ? EPOLLIN : 0) | (mask & NP_LOOP_WRITE ? EPOLLOUT : 0);
}

static bool registered(const np_loop *loop, int fd) {
  return fd >= 0 && fd < loop->nfds && loop->fds[fd].fn;
}

/* ADD, or MOD when the kernel already has it (and the other way round): the
 * caller's view and epoll's may differ for an fd closed and reopened under
 * the same number. */
static int ctl(np_loop *loop, int op, int fd, unsigned mask) {
  struct epoll_event ev = {.events = to_epoll(mask), .data.fd = fd};
  if (epoll_ctl(loop->epfd, op, fd, &ev) == 0)
    return 0;
  if (op == EPOLL_CTL_ADD && errno == EEXIST)
    return epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev) == 0 ? 0 : NP_ERR_SYS;
  if (op == EPOLL_CTL_MOD && errno == ENOENT)
    return epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : NP_ERR_SYS;
  return NP_ERR_SYS;
}

int np__loop_add_fd(np_loop *loop, int fd, unsigned mask, np_loop_fd_fn fn, void *user) {
  if (fd < 0 || !fn)
    return NP_ERR_INVAL;
  if (fd >= loop->nfds) {
    int n = loop->nfds ? loop->nfds : 16;
    while (n <= fd)
      n *= 2;
    struct fd_reg *grown = realloc(loop->fds, (size_t)n * sizeof *grown);
    if (!grown)
      return NP_ERR_NOMEM;
    memset(grown + loop->nfds, 0, (size_t)(n - loop->nfds) * sizeof *grown);
    loop->fds = grown;
    loop->nfds = n;
  }
  int rc = ctl(loop, registered(loop, fd) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, mask);
  if (rc != 0)
    return rc;
  loop->fds[fd] = (struct fd_reg){.mask = mask, .fn = fn, .user = user};
  return 0;
}

int np__loop_mod_fd(np_loop *loop, int fd, unsigned mask) {
  if (!registered(loop, fd))
    return NP_ERR_INVAL;
  int rc = ctl(loop, EPOLL_CTL_MOD, fd, mask);
  if (rc == 0)
    loop->fds[fd].mask = mask;
  return rc;
}

void np__loop_del_fd(np_loop *loop, int fd) {
  if (!registered(loop, fd))
    return;
  (void)epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL); /* fails if already closed */
  loop->fds[fd] = (struct fd_reg){0};
}

uint64_t np__loop_add_timer(np_loop *loop, int64_t at, np_loop_timer_fn fn, void *user) {
  struct timer *t = malloc(sizeof *t);
  if (!t || !fn) {
    free(t);
    return 0;
  }
  *t = (struct timer){.id = loop->next_id++, .at = at, .fn = fn, .user = user};
  struct timer **pp = &loop->timers;
  while (*pp && (*pp)->at <= at) /* after those with the same deadline */
    pp = &(*pp)->next;
  t->next = *pp;
  *pp = t;
  return t->id;
}

bool np__loop_cancel_timer(np_loop *loop, uint64_t id) {
  for (struct timer **pp = &loop->timers; *pp; pp = &(*pp)->next)
    if ((*pp)->id == id) {
      struct timer *t = *pp;
      *pp = t->next;
      free(t);
      return true;
    }
  return false;
}

int np__loop_timeout(const np_loop *loop) {
  if (!loop->timers)
    return -1;
  int64_t d = loop->timers->at - np__loop_now(loop);
  return d <= 0 ? 0 : d > INT32_MAX ? INT32_MAX : (int)d;
}

static void drain_wakeup(np_loop *loop) {
  uint64_t v;
  while (read(loop->wakefd, &v, sizeof v) < 0 && errno == EINTR) {
  }
}

/* Fires the timers due at 'now' that existed before this turn's callbacks
 * (ids below 'limit'): one re-armed from its own callback waits a turn. */
static int fire_timers(np_loop *loop, uint64_t limit) {
  int ran = 0;
  int64_t now = np__loop_now(loop);
  for (;;) {
    struct timer **pp = &loop->timers;
    while (*pp && (*pp)->at <= now && (*pp)->id >= limit)
      pp = &(*pp)->next;
    struct timer *t = *pp;
    if (!t || t->at > now)
      return ran;
    *pp = t->next;
    np_loop_timer_fn fn = t->fn;
    void *user = t->user;
    uint64_t id = t->id;
    free(t); /* before the call: the callback may cancel its own id (a no-op) */
    fn(loop, id, user);
    ran++;
  }
}

int np__loop_process(np_loop *loop, int timeout_ms) {
  uint64_t limit = loop->next_id;
  int wait = np__loop_timeout(loop);
  if (timeout_ms >= 0 && (wait < 0 || timeout_ms < wait))
    wait = timeout_ms;
  struct epoll_event evs[LOOP_EVENTS];
  int n = epoll_wait(loop->epfd, evs, LOOP_EVENTS, wait);
  if (n < 0) {
    if (errno != EINTR)
      return NP_ERR_SYS;
    n = 0;
  }
  int ran = 0;
  for (int i = 0; i < n; i++) {
    int fd = evs[i].data.fd;
    if (fd == -1) {
      drain_wakeup(loop);
      if (loop->cfg.on_wake) {
        loop->cfg.on_wake(loop, loop->cfg.wake_user);
        ran++;
      }
      continue;
    }
    /* Removed (or removed and re-added as another fd's owner) by an
     * earlier callback of this batch: what it asks for now decides. */
    if (!registered(loop, fd))
      continue;
    struct fd_reg r = loop->fds[fd];
    uint32_t e = evs[i].events;
    unsigned ready = (e & EPOLLIN && r.mask & NP_LOOP_READ ? NP_LOOP_READ : 0) |
                     (e & EPOLLOUT && r.mask & NP_LOOP_WRITE ? NP_LOOP_WRITE : 0) |
                     (e & (EPOLLERR | EPOLLHUP) ? NP_LOOP_ERROR : 0);
    if (!ready)
      continue;
    r.fn(loop, fd, ready, r.user);
    ran++;
  }
  return ran + fire_timers(loop, limit);
}

void np__loop_set_before_wait(np_loop *loop, np_loop_hook_fn fn, void *user) {
  loop->before_wait = fn;
  loop->before_wait_user = user;
}

int np__loop_run(np_loop *loop) {
  int rc = 0;
  while (!atomic_load(&loop->stop)) {
    if (loop->before_wait)
      loop->before_wait(loop, loop->before_wait_user);
    if (atomic_load(&loop->stop))
      break;
    int n = np__loop_process(loop, -1);
    if (n < 0) {
      rc = n;
      break;
    }
  }
  atomic_store(&loop->stop, false); /* consumed: the loop may run again */
  return rc;
}

void np__loop_wake(np_loop *loop) {
  /* Only write(2): async-signal-safe; errno preserved for the interrupted
   * code. */
  int saved = errno;
  uint64_t one = 1;
  ssize_t r = write(loop->wakefd, &one, sizeof one);
  (void)r;
  errno = saved;
}

void np__loop_stop(np_loop *loop) {
  atomic_store(&loop->stop, true);
  np__loop_wake(loop);
}

int np__loop_fd(const np_loop *loop) {
  return loop->epfd;
}
