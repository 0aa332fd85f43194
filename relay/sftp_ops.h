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
};

/* Per-session state over `c` (borrowed; must outlive it). NULL when out of
 * memory. Free with sftp_ops_free(), which closes every handle and removes
 * the files of uploads still open (they were never completed; uploads
 * opened with "resume" keep theirs for the next session to continue). */
struct sftp_ops *sftp_ops_new(struct ssh_conn *c);
void sftp_ops_free(struct sftp_ops *o);

/* Run one request; `data`/`len` is the binary payload of write verbs. */
void sftp_ops_run(struct sftp_ops *o, const struct proto_request *req,
                  const uint8_t *data, size_t len, struct op_reply *r);

/* Complete a write_chunk answered early: write the payload. A failure is
 * remembered on the handle and reported by the next write_chunk or
 * write_close. Returns 0, or -1 when the connection is unusable. */
int sftp_ops_flush(struct sftp_ops *o, const struct proto_request *req,
                   const uint8_t *data, size_t len);

/* Read the next chunk of a read handle in advance (at most one per
 * handle, so at most WC_MAX_READ_HANDLES chunks per session). */
void sftp_ops_read_ahead(struct sftp_ops *o, const char *handle);

void op_reply_clear(struct op_reply *r);

#endif
