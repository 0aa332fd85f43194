/* The file verbs of PROTOCOL §3 against one SFTP connection, and the
 * session's open read/write handles. Runs on the session's worker thread;
 * knows nothing of WebSockets: it produces a reply the worker posts. */
#ifndef WC_SFTP_OPS_H
#define WC_SFTP_OPS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "frame.h"
#include "proto.h"
#include "ssh_conn.h"

/* Open write handles per session. PROTOCOL.md sets no number; each holds a
 * remote file handle, so we bound them like read handles. */
#define SFTP_MAX_WRITE_HANDLES 16

struct sftp_ops;

/* Where answers too large to hold go (a legacy `read`, a long `list`): the
 * op posts them itself, in pieces, as it produces them. `post` queues
 * frames for the browser in order and blocks while too much is queued, so
 * memory stays bounded whatever the size; it takes ownership and returns
 * 0, or -1 when the browser is gone (the frames are freed). */
struct sftp_sink {
    int (*post)(void *arg, struct frame *a, struct frame *b);
    void *arg;
    /* Where to count the file bytes read from or written to the server, as
     * they move (the session's progress, for ws.c's stall rule); NULL: not
     * counted. */
    _Atomic uint64_t *moved;
};

/* The answer to one request: `result` (owned) or `error` (+ `code`), and for
 * read verbs the binary frame that follows the result. `fatal` means the
 * SSH connection is unusable: answer, then end the session. */
struct op_reply {
    json_t *result;
    const char *error;
    const char *code;
    char errbuf[256];
    struct frame *data;
    int fatal;
    /* write_chunk answers before writing (the bytes are then "accepted but
     * not yet written"), so the browser can send the next chunk while this
     * one goes to the server. sftp_ops_flush() does the write. */
    int write_pending;
    /* read_chunk served a full chunk: sftp_ops_read_ahead() may fetch the
     * next one while the browser receives this one. */
    int read_ahead;
    /* The answer was already posted through the sink: nothing to send.
     * With `error` set as well, the message was cut short after it had
     * begun (the WebSocket closes); `error` says why, for the log. */
    int streamed;
    /* Streamed, and the session took no more of it (the browser left, an
     * eviction): unfinished, so nothing may be posted after it. */
    int unfinished;
};

/* Per-session state over `c` and `sink` (borrowed; must outlive it);
 * `max_list_entries` bounds one `list` (SFTP_LIST_MAX_ENTRIES), `op_secs`
 * the time one operation, one 256 KiB read chunk or one list fragment may
 * take (SFTP_OP_TIMEOUT_SECS, also set on `c`). NULL when
 * out of memory. Free with sftp_ops_free(), which closes every handle and removes
 * the files of uploads still open (they were never completed; uploads
 * opened with "resume" keep theirs for the next session to continue). */
struct sftp_ops *sftp_ops_new(struct ssh_conn *c, const struct sftp_sink *sink,
                              long max_list_entries, int op_secs);
void sftp_ops_free(struct sftp_ops *o);

/* Run one request; `data`/`len` is the binary payload of write verbs. */
void sftp_ops_run(struct sftp_ops *o, const struct proto_request *req,
                  const uint8_t *data, size_t len, struct op_reply *r);

/* Complete a write_chunk answered early: write the payload. A failure ends
 * the upload at once (the handle is closed, the partial file removed, the
 * slot freed: the app abandons a failed upload without write_close or
 * write_abort); the next write_chunk or write_close on it answers the
 * failure. Returns 0, or the (negative) libssh2 error when the connection
 * is unusable. */
int sftp_ops_flush(struct sftp_ops *o, const struct proto_request *req,
                   const uint8_t *data, size_t len);

/* Read the next chunk of a read handle in advance (at most one per
 * handle, so at most PROTO_MAX_READ_HANDLES chunks per session). */
void sftp_ops_read_ahead(struct sftp_ops *o, const char *handle);

void op_reply_clear(struct op_reply *r);

/* blocks × size as bytes for JSON: saturates at INT64_MAX instead of
 * wrapping (a server may report any 64-bit values). */
int64_t sftp_ops_bytes(uint64_t blocks, uint64_t size);
/* Upload bytes kept in flight per write for a TCP round trip of
 * `rtt_usecs` (sftp_ops.c says why): 512 KiB up to 4 MiB. */
size_t sftp_ops_write_window(uint32_t rtt_usecs);

#endif
