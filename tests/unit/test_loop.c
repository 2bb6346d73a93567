/* The event loop (net/loop.h) with a fake clock: timer order, cancel, fd
 * readiness on a pipe and an eventfd, the wakeup, run and stop. Nothing
 * sleeps: every wait is 0 ms or ends on a due timer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "natpunch.h"
#include "net/loop.h"

#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct fake {
  int64_t now;
  int log[32]; /* what fired, in order */
  int n;
};

static int64_t fake_clock(void *user) {
  return ((struct fake *)user)->now;
}

static np_loop *new_loop(struct fake *f, np_loop_hook_fn on_wake) {
  np_loop_config cfg = {.clock = fake_clock, .clock_user = f, .on_wake = on_wake, .wake_user = f};
  np_loop *l = NULL;
  assert_int_equal(np__loop_new(&cfg, &l), 0);
  assert_non_null(l);
  return l;
}

/* Timer user data: which fake to log into, and the tag to log. */
struct tag {
  struct fake *f;
  int tag;
};

static void on_timer(np_loop *l, uint64_t id, void *user) {
  (void)l;
  (void)id;
  struct tag *t = user;
  t->f->log[t->f->n++] = t->tag;
}

static void timer_order(void **state) {
  (void)state;
  struct fake f = {.now = 1000};
  np_loop *l = new_loop(&f, NULL);
  assert_int_equal(np__loop_timeout(l), -1);
  struct tag t30 = {&f, 30}, t10a = {&f, 10}, t20 = {&f, 20}, t10b = {&f, 11}, t5 = {&f, 5};
  assert_true(np__loop_add_timer(l, 1030, on_timer, &t30) != 0);
  assert_true(np__loop_add_timer(l, 1010, on_timer, &t10a) != 0);
  assert_true(np__loop_add_timer(l, 1020, on_timer, &t20) != 0);
  assert_true(np__loop_add_timer(l, 1010, on_timer, &t10b) != 0); /* same deadline: after 10a */
  assert_int_equal(np__loop_timeout(l), 10);
  assert_int_equal(np__loop_process(l, 0), 0); /* nothing due yet */
  assert_int_equal(f.n, 0);
  f.now = 1015;
  assert_int_equal(np__loop_timeout(l), 0);
  assert_int_equal(np__loop_process(l, 0), 2);
  assert_int_equal(f.n, 2);
  assert_int_equal(f.log[0], 10);
  assert_int_equal(f.log[1], 11);
  assert_int_equal(np__loop_timeout(l), 5);
  /* Overdue timers fire in deadline order, an earlier one added late first. */
  assert_true(np__loop_add_timer(l, 1005, on_timer, &t5) != 0);
  f.now = 5000;
  assert_int_equal(np__loop_process(l, 0), 3);
  assert_int_equal(f.n, 5);
  assert_int_equal(f.log[2], 5);
  assert_int_equal(f.log[3], 20);
  assert_int_equal(f.log[4], 30);
  assert_int_equal(np__loop_timeout(l), -1);
  np__loop_free(l);
}

static void timer_cancel(void **state) {
  (void)state;
  struct fake f = {.now = 0};
  np_loop *l = new_loop(&f, NULL);
  struct tag a = {&f, 1}, b = {&f, 2};
  uint64_t ia = np__loop_add_timer(l, 10, on_timer, &a);
  uint64_t ib = np__loop_add_timer(l, 20, on_timer, &b);
  assert_true(ia != 0 && ib != 0 && ia != ib);
  assert_true(np__loop_cancel_timer(l, ia));
  assert_false(np__loop_cancel_timer(l, ia)); /* already gone */
  assert_false(np__loop_cancel_timer(l, 0));
  assert_int_equal(np__loop_timeout(l), 20); /* the cancelled one no longer counts */
  f.now = 100;
  assert_int_equal(np__loop_process(l, 0), 1);
  assert_int_equal(f.n, 1);
  assert_int_equal(f.log[0], 2);
  assert_false(np__loop_cancel_timer(l, ib)); /* fired */
  /* Freed with timers still armed: nothing leaks (ASan checks). */
  assert_true(np__loop_add_timer(l, 500, on_timer, &a) != 0);
  np__loop_free(l);
}

/* A timer that re-arms itself at 'now' fires once per turn, not forever. */
struct rearm {
  struct fake *f;
  int fired;
};

static void on_rearm(np_loop *l, uint64_t id, void *user) {
  (void)id;
  struct rearm *r = user;
  r->fired++;
  assert_true(np__loop_add_timer(l, r->f->now, on_rearm, r) != 0);
}

static void timer_rearm_waits_a_turn(void **state) {
  (void)state;
  struct fake f = {.now = 0};
  np_loop *l = new_loop(&f, NULL);
  struct rearm r = {&f, 0};
  assert_true(np__loop_add_timer(l, 0, on_rearm, &r) != 0);
  assert_int_equal(np__loop_process(l, 0), 1);
  assert_int_equal(r.fired, 1);
  assert_int_equal(np__loop_process(l, 0), 1);
  assert_int_equal(r.fired, 2);
  np__loop_free(l);
}

struct fdlog {
  int calls;
  unsigned events;
  int fd;
  np_loop *remove_too; /* remove this fd's partner from the callback */
  int partner;
};

static void on_fd(np_loop *l, int fd, unsigned events, void *user) {
  struct fdlog *g = user;
  g->calls++;
  g->events |= events;
  g->fd = fd;
  if (g->remove_too)
    np__loop_del_fd(l, g->partner);
  (void)l;
}

static void fd_readiness(void **state) {
  (void)state;
  struct fake f = {.now = 0};
  np_loop *l = new_loop(&f, NULL);
  int p[2];
  assert_int_equal(pipe(p), 0);
  struct fdlog r = {0}, w = {0};
  assert_int_equal(np__loop_add_fd(l, p[0], NP_LOOP_READ, on_fd, &r), 0);
  assert_int_equal(np__loop_process(l, 0), 0); /* empty pipe: not readable */
  assert_int_equal(r.calls, 0);
  assert_int_equal(write(p[1], "x", 1), 1);
  assert_int_equal(np__loop_process(l, 0), 1);
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.fd, p[0]);
  assert_int_equal(r.events, NP_LOOP_READ);
  /* Level-triggered: still readable until read. */
  assert_int_equal(np__loop_process(l, 0), 1);
  char c;
  assert_int_equal(read(p[0], &c, 1), 1);
  assert_int_equal(np__loop_process(l, 0), 0);
  assert_int_equal(r.calls, 2);
  /* The write end: writable at once; then watched for nothing. */
  assert_int_equal(np__loop_add_fd(l, p[1], NP_LOOP_WRITE, on_fd, &w), 0);
  assert_int_equal(np__loop_process(l, 0), 1);
  assert_int_equal(w.events, NP_LOOP_WRITE);
  assert_int_equal(np__loop_mod_fd(l, p[1], 0), 0);
  assert_int_equal(np__loop_process(l, 0), 0);
  assert_int_equal(w.calls, 1);
  /* Removed: no more calls though readable. */
  assert_int_equal(write(p[1], "y", 1), 1);
  np__loop_del_fd(l, p[0]);
  assert_int_equal(np__loop_process(l, 0), 0);
  assert_int_equal(r.calls, 2);
  assert_int_equal(np__loop_mod_fd(l, p[0], NP_LOOP_READ), NP_ERR_INVAL);
  assert_int_equal(np__loop_add_fd(l, -1, NP_LOOP_READ, on_fd, &r), NP_ERR_INVAL);
  np__loop_del_fd(l, p[1]);
  close(p[0]);
  close(p[1]);
  np__loop_free(l);
}

/* Two ready eventfds; whichever callback runs first removes the other,
 * which then gets no event from the same batch. */
static void fd_removed_in_batch(void **state) {
  (void)state;
  struct fake f = {.now = 0};
  np_loop *l = new_loop(&f, NULL);
  int a = eventfd(1, EFD_NONBLOCK), b = eventfd(1, EFD_NONBLOCK);
  assert_true(a >= 0 && b >= 0);
  struct fdlog ga = {.remove_too = l, .partner = b}, gb = {.remove_too = l, .partner = a};
  assert_int_equal(np__loop_add_fd(l, a, NP_LOOP_READ, on_fd, &ga), 0);
  assert_int_equal(np__loop_add_fd(l, b, NP_LOOP_READ, on_fd, &gb), 0);
  assert_int_equal(np__loop_process(l, 0), 1);
  assert_int_equal(ga.calls + gb.calls, 1);
  close(a);
  close(b);
  np__loop_free(l);
}

static void on_wake(np_loop *l, void *user) {
  (void)l;
  ((struct fake *)user)->n++;
}

static void wakeup(void **state) {
  (void)state;
  struct fake f = {.now = 0};
  np_loop *l = new_loop(&f, on_wake);
  struct pollfd pfd = {np__loop_fd(l), POLLIN, 0};
  assert_int_equal(poll(&pfd, 1, 0), 0);
  np__loop_wake(l);
  np__loop_wake(l); /* folds into one call */
  assert_int_equal(poll(&pfd, 1, 0), 1); /* the application's poll sees it */
  assert_int_equal(np__loop_process(l, 0), 1);
  assert_int_equal(f.n, 1);
  assert_int_equal(poll(&pfd, 1, 0), 0); /* consumed */
  assert_int_equal(np__loop_process(l, 0), 0);
  assert_int_equal(f.n, 1);
  np__loop_free(l);
}

struct runner {
  struct fake *f;
  int turns;
  int fired;
};

static void before_wait(np_loop *l, void *user) {
  (void)l;
  ((struct runner *)user)->turns++;
}

static void stop_timer(np_loop *l, uint64_t id, void *user) {
  (void)id;
  struct runner *r = user;
  r->fired++;
  if (r->fired == 3)
    np__loop_stop(l);
  else
    assert_true(np__loop_add_timer(l, r->f->now + 10, stop_timer, r) != 0);
  r->f->now += 10; /* time moves only when the test says so */
}

static void run_and_stop(void **state) {
  (void)state;
  struct fake f = {.now = 0};
  np_loop *l = new_loop(&f, NULL);
  struct runner r = {&f, 0, 0};
  np__loop_set_before_wait(l, before_wait, &r);
  /* Stopped before running: returns at once, and the stop is consumed. */
  np__loop_stop(l);
  assert_int_equal(np__loop_run(l), 0);
  assert_int_equal(r.turns, 0);
  /* A timer chain that stops the loop on its third firing. */
  assert_true(np__loop_add_timer(l, 0, stop_timer, &r) != 0);
  assert_int_equal(np__loop_run(l), 0);
  assert_int_equal(r.fired, 3);
  assert_true(r.turns >= 3);
  assert_int_equal(f.now, 30);
  np__loop_free(l);
  np__loop_free(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(timer_order),
      cmocka_unit_test(timer_cancel),
      cmocka_unit_test(timer_rearm_waits_a_turn),
      cmocka_unit_test(fd_readiness),
      cmocka_unit_test(fd_removed_in_batch),
      cmocka_unit_test(wakeup),
      cmocka_unit_test(run_and_stop),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
