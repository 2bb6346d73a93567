/* Byte pumps between file descriptors and the session's streams: what makes
 * `connect`/`listen` a pipe (stdin/stdout on one stream) and a port
 * forwarder (one TCP connection per stream). CLI-only, over the public API. */
#ifndef NP_CLI_PUMP_H
#define NP_CLI_PUMP_H

#include "natpunch.h"

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>

/* Per direction, what the pump holds in memory: the stream's own flow
 * control (the transport's windows) bounds the rest, so a stalled
 * connection holds at most this much and stalls only itself. */
#define PUMP_BUF (64 * 1024)

typedef struct pump {
  int64_t stream;
  int in_fd, out_fd; /* may be equal (a socket); -1 once done with */
  bool in_socket, out_socket;
  bool connecting;   /* out_fd is a TCP connect still in progress */
  /* fd -> stream */
  uint8_t up[PUMP_BUF];
  size_t up_len, up_off;
  bool in_eof, fin_sent;
  /* stream -> fd */
  uint8_t down[PUMP_BUF];
  size_t down_len, down_off;
  bool stream_eof, out_closed;
  bool failed; /* reset, or an fd error: drop it */
  uint64_t bytes_up, bytes_down;
} pump;

/* Starts a pump; in_fd and out_fd are made non-blocking (the caller keeps
 * them open until pump_done(); pump_close() closes sockets, not stdio). */
void pump_init(pump *p, int64_t stream, int in_fd, int out_fd, bool sockets);

/* Adds the pump's fds to pfd (at most 2) with what it waits for now;
 * returns how many it added. A pump waiting only on the stream adds none. */
int pump_poll(const pump *p, struct pollfd *pfd);

/* Moves what can move now, both ways, without blocking. Returns true when
 * something moved (so the caller loops again before sleeping). */
bool pump_run(pump *p, np_agent *a);

/* After the session closed: writes out what the stream still holds (it
 * stays readable after a close) to out_fd, waiting for out_fd to take it
 * (poll, at most timeout_ms in all), where pump_run would stop at the
 * first EAGAIN of a full pipe and lose the rest: a sender's FIN is
 * acknowledged by the peer's QUIC stack, not its reader, so the sender
 * may close while the last megabytes still sit in our buffers. Returns
 * true when the stream's end was written out (or there was no output). */
bool pump_drain(pump *p, np_agent *a, int timeout_ms);

/* Both directions finished: our FIN sent (and, when require_acked, the
 * peer has it), the peer's EOF written out; or the pump failed. */
bool pump_done(const pump *p, const np_agent *a);

/* Closes the pump's sockets (not stdin/stdout) and resets its stream if it
 * did not finish. */
void pump_close(pump *p, np_agent *a);

#endif
