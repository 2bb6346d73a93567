/* One event loop for the agent and the servers: fds, ordered timers, a wakeup, a clock. */
#ifndef NP_LOOP_H
#define NP_LOOP_H

#include <stdbool.h>
#include <stdint.h>

/*
 * In the manner of redis ae.c: an epoll set (level-triggered) whose fds each
 * carry a callback and a user pointer, a list of one-shot timers kept in
 * deadline order, and an eventfd that another thread or a signal handler
 * makes readable to interrupt a wait. Time is read through a clock function
 * (default: CLOCK_MONOTONIC in ms), so a test drives the timers by hand.
 *
 * Two ways to drive it:
 *  - blocking, for a server thread: np__loop_run() until np__loop_stop();
 *  - embedded, for the agent inside an application's own loop: watch
 *    np__loop_fd() (readable when one of our fds or the wakeup is ready),
 *    sleep at most np__loop_timeout() ms, then np__loop_process(loop, 0).
 *
 * Not thread-safe, except np__loop_wake() and np__loop_stop(), which may be
 * called from any thread and from a signal handler. Callbacks may add,
 * modify and remove fds and timers (their own included) and free the user
 * data of a removed fd: an fd removed during a batch gets no later event of
 * that batch.
 */

typedef struct np_loop np_loop;

enum np_loop_mask {
  NP_LOOP_READ = 1u << 0,
  NP_LOOP_WRITE = 1u << 1,
  /* Reported only (never asked for): error or hang-up on the fd, which
   * epoll reports whatever the mask. */
  NP_LOOP_ERROR = 1u << 2,
};

/* Milliseconds on a clock that never goes backwards. */
typedef int64_t (*np_loop_clock_fn)(void *user);

/* 'events' is what is ready (np_loop_mask bits). */
typedef void (*np_loop_fd_fn)(np_loop *loop, int fd, unsigned events, void *user);
typedef void (*np_loop_timer_fn)(np_loop *loop, uint64_t id, void *user);
typedef void (*np_loop_hook_fn)(np_loop *loop, void *user);

typedef struct np_loop_config {
  np_loop_clock_fn clock; /* NULL: CLOCK_MONOTONIC (np__now_ms) */
  void *clock_user;
  /* Called (in the loop's thread, from np__loop_process) after
   * np__loop_wake() made the wakeup readable; several wakes may fold into
   * one call. NULL: the wakeup only ends a wait. */
  np_loop_hook_fn on_wake;
  void *wake_user;
} np_loop_config;

/* Creates a loop (cfg may be NULL: all defaults; copied). Returns 0,
 * NP_ERR_NOMEM or NP_ERR_SYS (epoll or eventfd refused). */
int np__loop_new(const np_loop_config *cfg, np_loop **out);

/* Frees the loop, its timers and its epoll and eventfd. The fds still
 * registered are not closed: they belong to the caller. NULL accepted. */
void np__loop_free(np_loop *loop);

/* The loop's clock, read now. */
int64_t np__loop_now(const np_loop *loop);

/* Watches fd for 'mask' (READ and/or WRITE; 0 watches errors only) and
 * calls fn(loop, fd, events, user) while it is ready. An fd already
 * registered gets the new mask, callback and user. Returns 0, NP_ERR_INVAL
 * (fd < 0), NP_ERR_NOMEM or NP_ERR_SYS. */
int np__loop_add_fd(np_loop *loop, int fd, unsigned mask, np_loop_fd_fn fn, void *user);

/* Changes what a registered fd is watched for. Returns 0, NP_ERR_INVAL (not
 * registered) or NP_ERR_SYS. An fd closed and reopened under the same
 * number (the kernel dropped it from epoll) is re-added. */
int np__loop_mod_fd(np_loop *loop, int fd, unsigned mask);

/* Stops watching fd (call before closing it: epoll forgets a closed fd, but
 * the loop would still hold its callback). Unknown fds are ignored. */
void np__loop_del_fd(np_loop *loop, int fd);

/* Arms a one-shot timer that calls fn(loop, id, user) once the clock reads
 * 'at' or later. Timers due together fire in deadline order, and those
 * with the same deadline in the order they were added. Returns the timer's
 * id (never 0), or 0 when out of memory. */
uint64_t np__loop_add_timer(np_loop *loop, int64_t at, np_loop_timer_fn fn, void *user);

/* Disarms a timer that has not fired. Returns true if it was armed; false
 * for a fired, cancelled or unknown id (and for 0), so callers may cancel
 * whatever id they hold. */
bool np__loop_cancel_timer(np_loop *loop, uint64_t id);

/* Milliseconds until the earliest timer is due: 0 if one is due now, -1
 * when there is none (capped at INT32_MAX). What np__loop_process will wait
 * at most, and what an application should sleep at most before calling it
 * again. */
int np__loop_timeout(const np_loop *loop);

/* One turn of the loop: waits up to timeout_ms (0: not at all, -1: no
 * bound) but never past the earliest timer, for an fd or the wakeup to be
 * ready; dispatches the ready fds, the wakeup, then the timers due by then.
 * A timer armed by a callback of this turn waits for the next turn even if
 * already due, so that a timer re-arming itself at 'now' cannot spin here.
 * Returns how many callbacks ran, or NP_ERR_SYS (EINTR counts as an empty
 * turn, not an error). */
int np__loop_process(np_loop *loop, int timeout_ms);

/* Runs turns until np__loop_stop(), calling 'before_wait' (if set) before
 * each wait. Returns 0 once stopped (the stop is then consumed, so the loop
 * may run again) or NP_ERR_SYS. A stop requested before the call makes it
 * return at once. */
int np__loop_run(np_loop *loop);

/* Sets the hook np__loop_run calls before each wait (a server's expiry
 * sweep and the re-arming of its timer). NULL removes it. */
void np__loop_set_before_wait(np_loop *loop, np_loop_hook_fn fn, void *user);

/* Makes np__loop_run return. Async-signal-safe and thread-safe (an atomic
 * flag and a write(2) to the eventfd; errno preserved). */
void np__loop_stop(np_loop *loop);

/* Ends a wait in progress (or the next one) and has on_wake called.
 * Async-signal-safe and thread-safe, like np__loop_stop. */
void np__loop_wake(np_loop *loop);

/* The epoll fd: readable when a registered fd or the wakeup is ready (not
 * when a timer is due: see np__loop_timeout). For embedding the loop in an
 * application's poll/epoll loop; never read or close it. */
int np__loop_fd(const np_loop *loop);

#endif
