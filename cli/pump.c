/* Byte pumps between file descriptors and session streams (pump.h). Each
 * pump tries every move without blocking and is told nothing by poll(): the
 * poll only wakes the loop, so one slow fd never holds another pump. */
#include "pump.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PUMP_ROUNDS 16 /* moves per call: enough for bulk, bounded for fairness */
/* What a pipe on stdin or stdout is grown to: with the default 64 KB, a
 * bulk transfer wakes the process at the other end for every 64 KB (and
 * is woken as often), which cost more CPU than the session's own work. */
#define PIPE_SIZE (1 << 20)

void pump_init(pump *p, int64_t stream, int in_fd, int out_fd, bool sockets) {
  memset(p, 0, sizeof *p);
  p->stream = stream;
  p->in_fd = in_fd;
  p->out_fd = out_fd;
  p->in_socket = p->out_socket = sockets;
  int fds[2] = {in_fd, out_fd};
  for (int i = 0; i < 2; i++) {
    if (fds[i] < 0)
      continue;
    int fl = fcntl(fds[i], F_GETFL);
    if (fl >= 0)
      (void)fcntl(fds[i], F_SETFL, fl | O_NONBLOCK);
#ifdef F_SETPIPE_SZ
    /* Fails on what is not a pipe, and above /proc/sys/fs/pipe-max-size
     * for an unprivileged user: then the pipe stays as it was. */
    if (!sockets)
      (void)fcntl(fds[i], F_SETPIPE_SZ, PIPE_SIZE);
#endif
  }
}

int pump_poll(const pump *p, struct pollfd *pfd) {
  if (p->failed)
    return 0;
  short in = 0, out = 0;
  if (p->in_fd >= 0 && !p->in_eof && !p->connecting && p->up_len - p->up_off < PUMP_BUF)
    in = POLLIN;
  if (p->out_fd >= 0 && (p->connecting || (p->down_len > p->down_off && !p->out_closed)))
    out = POLLOUT;
  int n = 0;
  if (p->in_fd >= 0 && p->in_fd == p->out_fd) {
    if (in | out)
      pfd[n++] = (struct pollfd){p->in_fd, (short)(in | out), 0};
    return n;
  }
  if (in)
    pfd[n++] = (struct pollfd){p->in_fd, in, 0};
  if (out)
    pfd[n++] = (struct pollfd){p->out_fd, out, 0};
  return n;
}

static void fail(pump *p, np_agent *a) {
  if (!p->failed)
    (void)np_agent_stream_reset(a, p->stream);
  p->failed = true;
}

/* A non-blocking connect finished (or not yet). */
static void check_connect(pump *p, np_agent *a) {
  struct pollfd pf = {p->out_fd, POLLOUT, 0};
  if (poll(&pf, 1, 0) <= 0)
    return;
  int err = 0;
  socklen_t l = sizeof err;
  if (getsockopt(p->out_fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0 || err != 0) {
    fail(p, a);
    return;
  }
  p->connecting = false;
}

static bool move_up(pump *p, np_agent *a) {
  bool moved = false;
  if (!p->in_eof && p->up_len - p->up_off < PUMP_BUF) {
    if (p->up_off > 0) {
      memmove(p->up, p->up + p->up_off, p->up_len - p->up_off);
      p->up_len -= p->up_off;
      p->up_off = 0;
    }
    ssize_t n = read(p->in_fd, p->up + p->up_len, PUMP_BUF - p->up_len);
    if (n > 0) {
      p->up_len += (size_t)n;
      moved = true;
    } else if (n == 0) {
      p->in_eof = moved = true;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      /* A reset TCP connection: the peer's side must not take a truncated
       * stream for a whole one. stdin failing is an end of input. */
      if (p->in_socket) {
        fail(p, a);
        return true;
      }
      p->in_eof = moved = true;
    }
  }
  if (p->up_len > p->up_off) {
    long w = np_agent_stream_write(a, p->stream, p->up + p->up_off, p->up_len - p->up_off);
    if (w > 0) {
      p->up_off += (size_t)w;
      p->bytes_up += (uint64_t)w;
      moved = true;
    } else if (w != NP_ERR_AGAIN) {
      fail(p, a);
      return true;
    }
  }
  if (p->in_eof && p->up_off == p->up_len && !p->fin_sent) {
    if (np_agent_stream_shutdown(a, p->stream) == 0) {
      p->fin_sent = moved = true;
      if (p->in_socket && p->in_fd != p->out_fd)
        (void)shutdown(p->in_fd, SHUT_RD);
    }
  }
  return moved;
}

static bool move_down(pump *p, np_agent *a) {
  bool moved = false;
  if (p->down_off == p->down_len && !p->stream_eof) {
    p->down_off = p->down_len = 0;
    long r = np_agent_stream_read(a, p->stream, p->down, sizeof p->down);
    if (r > 0) {
      p->down_len = (size_t)r;
      moved = true;
    } else if (r == 0) {
      p->stream_eof = moved = true;
    } else if (r != NP_ERR_AGAIN) {
      fail(p, a); /* the peer reset the stream */
      return true;
    }
  }
  if (p->down_len > p->down_off && !p->out_closed) {
    ssize_t n = write(p->out_fd, p->down + p->down_off, p->down_len - p->down_off);
    if (n > 0) {
      p->down_off += (size_t)n;
      p->bytes_down += (uint64_t)n;
      moved = true;
    } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      fail(p, a); /* nobody reads any more (EPIPE): the peer should stop */
      return true;
    }
  }
  if (p->stream_eof && p->down_off == p->down_len && !p->out_closed) {
    p->out_closed = moved = true;
    if (p->out_socket)
      (void)shutdown(p->out_fd, SHUT_WR);
    else
      (void)close(p->out_fd); /* the reader of our stdout sees its end */
  }
  return moved;
}

bool pump_run(pump *p, np_agent *a) {
  bool any = false;
  if (p->connecting)
    check_connect(p, a);
  for (int i = 0; i < PUMP_ROUNDS && !p->failed && !p->connecting; i++) {
    bool moved = move_up(p, a);
    if (!p->failed)
      moved |= move_down(p, a);
    if (!moved)
      break;
    any = true;
  }
  return any;
}

bool pump_drain(pump *p, np_agent *a, int timeout_ms) {
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  /* Bounded in time, and in rounds should the clock stall. */
  for (int round = 0; round < 100000; round++) {
    while (!p->failed && move_down(p, a))
      ;
    if (p->failed || p->out_fd < 0 || p->out_closed)
      return !p->failed;
    if (p->down_len == p->down_off)
      return false; /* the stream has no more, and no end: cut short */
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    long left = timeout_ms - ((t.tv_sec - t0.tv_sec) * 1000L + (t.tv_nsec - t0.tv_nsec) / 1000000L);
    if (left <= 0)
      return false;
    struct pollfd pf = {p->out_fd, POLLOUT, 0};
    if (poll(&pf, 1, (int)left) < 0 && errno != EINTR)
      return false;
  }
  return false;
}

bool pump_done(const pump *p, const np_agent *a) {
  if (p->failed)
    return true;
  if (!p->fin_sent || !p->out_closed)
    return false;
  int st = np_agent_stream_state(a, p->stream);
  return st < 0 || (st & NP_STREAM_WRITE_ACKED);
}

void pump_close(pump *p, np_agent *a) {
  if (!pump_done(p, a))
    fail(p, a);
  if (p->in_socket && p->in_fd >= 0)
    close(p->in_fd);
  if (p->out_socket && p->out_fd >= 0 && p->out_fd != p->in_fd)
    close(p->out_fd);
  p->in_fd = p->out_fd = -1;
}
