/* The file-transfer protocol of `natpunch send` / `natpunch receive`: a
 * sans-IO state machine over one reliable, ordered, bidirectional byte stream
 * with half-close (a QUIC stream).
 *
 * The machine owns no socket and no clock. The caller feeds it what arrived
 * on the stream (np_xfer_input, np_xfer_input_eof), writes out what it asks
 * for (np_xfer_output) and half-closes the stream when np_xfer_output says
 * this side is finished. File I/O is real (open/pread/pwrite/fsync/rename on
 * the paths given at creation): this is the CLI's module, not the
 * library's.
 *
 * Wire format (all integers big-endian). Every frame is
 *
 *    0        1                 5
 *   +--------+-----------------+--------------------------+
 *   | type:8 |   length:32     |  body (length bytes)     |
 *   +--------+-----------------+--------------------------+
 *
 * with length <= NP_XFER_MAX_BODY. Types and bodies:
 *
 *   0x01 HELLO   S->R  "NPXF" version:8 (=1) count:16 (1..NP_XFER_MAX_FILES)
 *                      total:64 (sum of the sizes)                     15 bytes
 *   0x02 FILE    S->R  index:16 size:64 mode:32 (permission bits, <= 0777)
 *                      sha256:256 name (1..NP_XFER_MAX_NAME bytes)  46+n bytes
 *   0x03 ACCEPT  R->S  index:16 offset:64 (resume from; <= size)       10 bytes
 *   0x04 REFUSE  R->S  index:16 reason:8 (np_xfer_refusal)              3 bytes
 *   0x05 DATA    S->R  the next 1..NP_XFER_MAX_DATA bytes of the current file
 *   0x06 END     S->R  index:16 (all of the file's bytes have been sent)  2 bytes
 *   0x07 VERDICT R->S  index:16 status:8 (0 ok, 1 mismatch, 2 write error) 3 bytes
 *   0x08 ABORT   both  code:8 (np_xfer_abort) text (0..NP_XFER_MAX_TEXT bytes)
 *
 * Order: the sender writes HELLO and all FILE frames (index 0..count-1) at
 * once; the receiver, once the offer is accepted or refused, answers ACCEPT
 * or REFUSE for every file in index order; for each accepted file in order
 * the sender writes DATA from the accepted offset up to the size, then END;
 * the receiver checks the SHA-256 of the whole file (a resumed prefix
 * included) and answers VERDICT. A side half-closes when it has nothing more
 * to say: the sender after its last END (or after the last REFUSE), the
 * receiver after its last VERDICT or REFUSE. Any violation of this grammar
 * or of a field's range is fatal: the side that sees it writes ABORT and
 * half-closes. */
#ifndef NP_CLI_TRANSFER_H
#define NP_CLI_TRANSFER_H

#include "natpunch.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NP_XFER_VERSION 1
#define NP_XFER_HDR_LEN 5      /* type + length */
#define NP_XFER_MAX_DATA 65536 /* a DATA frame's largest body */
#define NP_XFER_MAX_BODY 65536 /* no frame body is larger */
#define NP_XFER_MAX_FILES 1024 /* files in one offer */
#define NP_XFER_MAX_NAME 255   /* bytes of a file name (NAME_MAX) */
#define NP_XFER_MAX_TEXT 200   /* bytes of an ABORT text */
#define NP_XFER_SHA256_LEN 32

enum np_xfer_frame_type {
  NP_XFER_HELLO = 0x01,
  NP_XFER_FILE = 0x02,
  NP_XFER_ACCEPT = 0x03,
  NP_XFER_REFUSE = 0x04,
  NP_XFER_DATA = 0x05,
  NP_XFER_END = 0x06,
  NP_XFER_VERDICT = 0x07,
  NP_XFER_ABORT = 0x08,
};

/* Why the receiver refused a file (the REFUSE frame's reason byte). */
typedef enum np_xfer_refusal {
  NP_XFER_REFUSE_NONE = 0,
  NP_XFER_REFUSE_EXISTS = 1,   /* DIR/name exists and --force was not given */
  NP_XFER_REFUSE_DECLINED = 2, /* the user (or policy) said no */
  NP_XFER_REFUSE_BAD_NAME = 3, /* '/', "..", NUL, control bytes, leading dot, too long, duplicate */
  NP_XFER_REFUSE_NO_SPACE = 4, /* not enough free space in DIR */
  NP_XFER_REFUSE_IO = 5,       /* the receiver could not create the file */
} np_xfer_refusal;

/* The ABORT frame's code. */
typedef enum np_xfer_abort {
  NP_XFER_ABORT_PROTO = 1,     /* the peer broke the protocol */
  NP_XFER_ABORT_IO = 2,        /* a local read/write failed */
  NP_XFER_ABORT_CANCELLED = 3, /* the user stopped */
} np_xfer_abort;

/* Where one file of the transfer stands. */
typedef enum np_xfer_file_status {
  NP_XFER_FILE_PENDING = 0,  /* offered, not answered yet */
  NP_XFER_FILE_ACTIVE = 1,   /* accepted, bytes flowing */
  NP_XFER_FILE_SENT = 2,     /* sender: END written, verdict awaited */
  NP_XFER_FILE_OK = 3,       /* checksum verified; receiver: renamed into place */
  NP_XFER_FILE_REFUSED = 4,  /* see refusal */
  NP_XFER_FILE_MISMATCH = 5, /* the checksum differed; receiver: nothing kept */
  NP_XFER_FILE_FAILED = 6,   /* a write error or the transfer stopped mid-file */
} np_xfer_file_status;

/* A file as both sides see it. name is the bare name, NUL-terminated and
 * safe to print: in a hostile name, NUL and control bytes (< 0x20, 0x7f) are
 * shown as '?' (other bytes are kept as sent; UTF-8 is not checked). */
typedef struct np_xfer_file {
  char name[NP_XFER_MAX_NAME + 1];
  uint64_t size;
  uint32_t mode;
  uint8_t sha256[NP_XFER_SHA256_LEN];
  np_xfer_file_status status;
  np_xfer_refusal refusal; /* REFUSED: why */
  uint64_t offset;         /* accepted: where the data started (> 0: resumed) */
  uint64_t done;           /* bytes handled so far, offset included */
} np_xfer_file;

typedef enum np_xfer_event_kind {
  NP_XFER_EV_OFFER = 1,    /* receiver: the whole offer is known; decide (unless auto_accept) */
  NP_XFER_EV_START = 2,    /* a file's data begins (file->offset: where) */
  NP_XFER_EV_PROGRESS = 3, /* file->done grew */
  NP_XFER_EV_END = 4,      /* a file reached OK, REFUSED, MISMATCH or FAILED */
} np_xfer_event_kind;

typedef struct np_xfer_event {
  np_xfer_event_kind kind;
  size_t index;             /* START/PROGRESS/END: the file; OFFER: 0 */
  const np_xfer_file *file; /* START/PROGRESS/END: the file; valid during the call */
  /* END of a FAILED file: why (the transfer's error, or the receiver's
   * write error), else NULL; valid during the call */
  const char *reason;
} np_xfer_event;

/* Called from inside np_xfer_input/np_xfer_output/np_xfer_accept_all when
 * something a user may want to see happens. It must not call back into the
 * machine except np_xfer_accept_all/np_xfer_refuse from an OFFER event. */
typedef void (*np_xfer_event_cb)(void *user, const np_xfer_event *ev);

typedef struct np_xfer_recv_config {
  const char *dir;  /* where files go; must exist */
  bool force;       /* overwrite an existing DIR/name */
  bool auto_accept; /* accept the offer at once (the caller checked the peer ID) */
  np_xfer_event_cb on_event;
  void *user;
} np_xfer_recv_config;

typedef struct np_xfer_send_config {
  const char *const *paths; /* regular files; each is sent under its last path component */
  size_t count;             /* 1..NP_XFER_MAX_FILES */
  np_xfer_event_cb on_event;
  void *user;
} np_xfer_send_config;

typedef enum np_xfer_state {
  NP_XFER_RUNNING = 0,
  NP_XFER_OFFERED = 1, /* receiver: waiting for np_xfer_accept_all or np_xfer_refuse */
  NP_XFER_DONE = 2,    /* every file resolved (each may still be refused or mismatched) */
  NP_XFER_FAILED = 3,  /* a fatal error: see np_xfer_error */
} np_xfer_state;

typedef struct np_xfer np_xfer;

/* Makes the sending side for cfg->paths: opens each file, checks it is a
 * regular file whose last path component is a valid name (np_xfer_name_ok),
 * and reads it once for its SHA-256 (so this blocks for as long as reading
 * the files takes). The offer is queued for np_xfer_output at once. Returns
 * 0, NP_ERR_INVAL (no files, too many, not a regular file, a bad or
 * duplicate name: errbuf says which), NP_ERR_SYS (open/read failed, errno
 * kept) or NP_ERR_NOMEM. errbuf (may be NULL) gets a sentence on failure. */
int np_xfer_sender_new(const np_xfer_send_config *cfg, np_xfer **out, char *errbuf, size_t errlen);

/* Makes the receiving side writing into cfg->dir (which must be a
 * directory). Nothing is written before the offer is accepted. Returns 0,
 * NP_ERR_INVAL (not a directory, errbuf says so) or NP_ERR_NOMEM. */
int np_xfer_receiver_new(const np_xfer_recv_config *cfg, np_xfer **out, char *errbuf,
                         size_t errlen);

/* Releases x and closes its files; NULL is fine. A receiver's unfinished
 * DIR/.name.natpunch-part files and their sidecars are kept, so that a new
 * transfer of the same file resumes from them. */
void np_xfer_free(np_xfer *x);

/* Feeds len bytes read from the stream. All of them are consumed (a frame
 * may be split anywhere; DATA is written to disk at once). Returns 0, or
 * NP_ERR_PROTO when the peer broke the protocol or sent ABORT (for a user's
 * cancel: NP_ERR_CANCELLED), NP_ERR_SYS when a local write failed; after an
 * error the machine is FAILED, has queued an ABORT for np_xfer_output
 * (unless the peer's ABORT was the cause) and ignores further input. */
int np_xfer_input(np_xfer *x, const uint8_t *buf, size_t len);

/* Tells the machine the peer half-closed its direction. Returns 0 when
 * nothing more was expected from the peer, NP_ERR_PROTO (state FAILED, "the
 * peer closed the stream before the transfer was complete", or "in the
 * middle of a frame") otherwise. */
int np_xfer_input_eof(np_xfer *x);

/* Copies up to cap bytes the stream should carry next into buf and returns
 * how many (0: nothing now). *fin becomes true once this side will never
 * have more to write and every byte has been handed out: the caller writes
 * what it got and half-closes. The sender reads file data here, so a read
 * error makes the machine FAILED (an ABORT is then what comes out). */
size_t np_xfer_output(np_xfer *x, uint8_t *buf, size_t cap, bool *fin);

/* Receiver, state OFFERED: accepts every file of the offer that can be
 * taken. Each file is decided on its own: a bad name, an existing DIR/name
 * without force, too little space or a file that cannot be created is
 * refused with that reason; a DIR/.name.natpunch-part whose sidecar records
 * the same size and SHA-256 is resumed from its length. Returns 0,
 * NP_ERR_INVAL in another state. */
int np_xfer_accept_all(np_xfer *x);

/* Receiver, state OFFERED: refuses every file (reason DECLINED). Returns
 * 0, NP_ERR_INVAL in another state. */
int np_xfer_refuse(np_xfer *x);

/* Stops the transfer on this side: queues ABORT (CANCELLED) and becomes
 * FAILED. A receiver keeps its .part files for a later resume. */
void np_xfer_cancel(np_xfer *x);

/* Stops the transfer because its stream or session ended under it (no
 * ABORT is queued: nobody would read it): the machine becomes FAILED with
 * why (NUL-terminated, cut to fit) as its error (NP_ERR_CANCELLED), and
 * the files in flight end FAILED with that reason. A receiver keeps its
 * .part files for a later resume. Nothing happens after DONE or FAILED. */
void np_xfer_interrupt(np_xfer *x, const char *why);

/* The machine's state (see np_xfer_state). */
np_xfer_state np_xfer_get_state(const np_xfer *x);

/* After FAILED: the NP_ERR_* code and a sentence saying what went wrong
 * (quoting the field or the system error); "" and 0 otherwise. */
int np_xfer_error(const np_xfer *x, const char **msg);

/* The number of files in the offer (receiver: 0 before the offer is
 * complete) and the file at index i (NULL when out of range). */
size_t np_xfer_count(const np_xfer *x);
const np_xfer_file *np_xfer_file_at(const np_xfer *x, size_t i);

/* True when name may be created inside a directory as is: 1..255 bytes, no
 * '/', no NUL or other control byte (< 0x20, 0x7f), no leading dot (which
 * also rules out "." and ".."), and not containing "..". */
bool np_xfer_name_ok(const uint8_t *name, size_t len);

/* A static sentence for a refusal reason ("the file exists at the receiver
 * (it can use --force)", ...). */
const char *np_xfer_refusal_str(np_xfer_refusal r);

/* Lower-case hex of a SHA-256 into out (65 bytes with the NUL). */
void np_xfer_hex(const uint8_t sha256[NP_XFER_SHA256_LEN], char out[2 * NP_XFER_SHA256_LEN + 1]);

#endif
