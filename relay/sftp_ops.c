/* SFTP verbs with libssh2 in blocking mode. Each handler starts from a
 * failure, fills the reply once, and maps SFTP status codes through one
 * function so every verb speaks the same error strings and codes. */
#include "sftp_ops.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <openssl/rand.h>

#include "clock.h"
#include "config.h"
#include "metrics.h"
#include "proto.h"

#define FILE_MODE (LIBSSH2_SFTP_S_IRUSR | LIBSSH2_SFTP_S_IWUSR | \
                   LIBSSH2_SFTP_S_IRGRP | LIBSSH2_SFTP_S_IROTH)
#define DIR_MODE (FILE_MODE | LIBSSH2_SFTP_S_IXUSR | LIBSSH2_SFTP_S_IXGRP | \
                  LIBSSH2_SFTP_S_IXOTH)
#define HANDLE_CHARS 36   /* "wh-" + 32 hex + NUL */
#define NAME_MAX_BYTES 1024
/* Upload bytes in flight per handle: what one libssh2_sftp_write call may
 * turn into packets beyond those already acknowledged (see write_full).
 * The window covers the path's bandwidth-delay product for
 * WRITE_TARGET_BYTES_PER_USEC (100 MB/s) at the TCP round trip the kernel
 * measured, within these bounds. */
#define WRITE_WINDOW_MIN (512u * 1024)
#define WRITE_WINDOW_MAX (4u * 1024 * 1024)
#define WRITE_TARGET_BYTES_PER_USEC 100u
/* An upload must get this much acknowledged within each operation
 * timeout (write_full): the pace a read_chunk must keep, so both
 * directions fail a server below the same rate (4.3 KiB/s at 60 s). */
#define WRITE_STEP_BYTES PROTO_READ_CHUNK_BYTES
/* A listing is built as JSON text and sent once this much is ready: a
 * directory whose listing fits is answered in one frame (and a failure
 * while reading it is an ordinary error answer); a larger one is streamed
 * as fragments of one text message of this size each, so a listing holds
 * about this much whatever the directory holds. */
#define LIST_FRAGMENT_BYTES (256u * 1024)
/* Write handles that failed, remembered (without their slot) so later
 * requests on them answer the failure; the oldest is forgotten first. */
#define FAILED_WRITES_KEPT SFTP_MAX_WRITE_HANDLES

struct whandle {
    char id[HANDLE_CHARS];
    char *path;
    LIBSSH2_SFTP_HANDLE *h;
    /* Opened with "resume": the browser means to continue this upload if
     * the connection drops, so a session end keeps the partial file. */
    int resumable;
};

/* An upload ended by a write error: what later requests on it answer. */
struct failed_write {
    char id[HANDLE_CHARS];
    char msg[sizeof(((struct op_reply *)0)->errbuf)];
    const char *code;
};

/* A read handle keeps at most one chunk read ahead: the app asks for the
 * next chunk only after it received this one, so reading it meanwhile hides
 * the SFTP round trip. A read-ahead failure is kept for the next ask. */
struct rhandle {
    char id[HANDLE_CHARS];
    LIBSSH2_SFTP_HANDLE *h;
    struct frame *ahead;
    int ahead_rc;
    unsigned long ahead_status;
};

struct sftp_ops {
    struct ssh_conn *c;
    const struct sftp_sink *sink;
    long max_list_entries;
    int op_secs;          /* SFTP_OP_TIMEOUT_SECS */
    struct whandle writes[SFTP_MAX_WRITE_HANDLES];
    struct rhandle reads[PROTO_MAX_READ_HANDLES];
    struct failed_write failed[FAILED_WRITES_KEPT];
    unsigned n_failed;   /* next slot of `failed` to reuse, mod its size */
    int side_rc;         /* the last connection failure of a side request (aside) */
};

/* SFTP status codes (draft-ietf-secsh-filexfer; OpenSSH sends 0-8). */
static const struct {
    unsigned long status;
    const char *msg;
    const char *code;
} sftp_status[] = {
    {LIBSSH2_FX_EOF, "end of file", "io"},
    {LIBSSH2_FX_NO_SUCH_FILE, "no such file or directory", "not_found"},
    {LIBSSH2_FX_PERMISSION_DENIED, "permission denied", "permission_denied"},
    {LIBSSH2_FX_FAILURE, "the server reported a failure", "io"},
    {LIBSSH2_FX_BAD_MESSAGE, "the server rejected the request", "bad_request"},
    {LIBSSH2_FX_OP_UNSUPPORTED, "operation not supported by the server", "unsupported"},
    {LIBSSH2_FX_INVALID_HANDLE, "invalid handle", "io"},
    {LIBSSH2_FX_NO_SUCH_PATH, "no such file or directory", "not_found"},
    {LIBSSH2_FX_FILE_ALREADY_EXISTS, "already exists", "exists"},
    {LIBSSH2_FX_WRITE_PROTECT, "write protected", "permission_denied"},
    {LIBSSH2_FX_NO_SPACE_ON_FILESYSTEM, "no space left on the server", "no_space"},
    {LIBSSH2_FX_QUOTA_EXCEEDED, "quota exceeded", "no_space"},
    {LIBSSH2_FX_DIR_NOT_EMPTY, "directory not empty", "not_empty"},
    {LIBSSH2_FX_NOT_A_DIRECTORY, "not a directory", "not_a_directory"},
    {LIBSSH2_FX_INVALID_FILENAME, "invalid file name", "bad_request"},
    {LIBSSH2_FX_LINK_LOOP, "too many symbolic links", "io"},
};

/* What every handler of the verb table receives: the request and, for the
 * verbs that take one, the binary frame that followed it (borrowed from the
 * worker's job; data is NULL and len 0 for the others). */
struct op_call {
    const struct proto_request *req;
    const uint8_t *data;
    size_t len;
};

void op_reply_clear(struct op_reply *r)
{
    json_decref(r->result);
    frame_free(r->data);
    memset(r, 0, sizeof(*r));
}

static void reply_error(struct op_reply *r, const char *msg, const char *code)
{
    json_decref(r->result);
    r->result = NULL;
    if (msg != r->errbuf)
        snprintf(r->errbuf, sizeof(r->errbuf), "%s", msg);
    r->error = r->errbuf;
    r->code = code;
}

static unsigned long last_status(struct sftp_ops *o, int rc)
{
    return rc == LIBSSH2_ERROR_SFTP_PROTOCOL ? libssh2_sftp_last_error(o->c->sftp) : 0;
}

/* The one place libssh2 and SFTP failures become our messages. Anything but
 * an SFTP status reply means the connection itself failed: fatal. */
static void reply_status(int rc, unsigned long st, struct op_reply *r)
{
    if (rc != LIBSSH2_ERROR_SFTP_PROTOCOL) {
        r->fatal = 1;
        if (rc == LIBSSH2_ERROR_TIMEOUT)
            reply_error(r, "the SFTP server did not answer in time", "timeout");
        else
            reply_error(r, "connection to the SFTP server lost", "io");
        return;
    }
    /* libssh2 reports the server's protocol violations (a reply too long,
     * too short, of the wrong type or at the wrong offset) as an SFTP
     * failure with status OK: no server said "OK, failed". */
    if (st == LIBSSH2_FX_OK) {
        reply_error(r, "the SFTP server sent an invalid reply", "io");
        return;
    }
    for (size_t i = 0; i < sizeof(sftp_status) / sizeof(sftp_status[0]); i++) {
        if (sftp_status[i].status == st) {
            reply_error(r, sftp_status[i].msg, sftp_status[i].code);
            return;
        }
    }
    snprintf(r->errbuf, sizeof(r->errbuf), "SFTP error %lu", st);
    reply_error(r, r->errbuf, "io");
}

/* The connection failed (timeout, reset): the session ends after this
 * answer. Cutting the socket now makes the handle closes that follow fail
 * at once instead of each waiting out another operation timeout. */
static void cut_if_fatal(struct sftp_ops *o, const struct op_reply *r)
{
    if (r->fatal)
        ssh_cut(o->c);
}

/* `st`: the SFTP status of a LIBSSH2_ERROR_SFTP_PROTOCOL failure. */
static void reply_sftp_status(struct sftp_ops *o, int rc, unsigned long st, struct op_reply *r)
{
    /* A connection cut by the relay's memory limits is not "lost": the
     * browser is told whose limit ended it. */
    const char *mem = rc == LIBSSH2_ERROR_SFTP_PROTOCOL ? NULL : ssh_memory_refusal(o->c);

    if (mem) {
        r->fatal = 1;
        reply_error(r, mem, "limit");
    } else {
        reply_status(rc, st, r);
    }
    cut_if_fatal(o, r);
}

static void reply_sftp_error(struct sftp_ops *o, int rc, struct op_reply *r)
{
    reply_sftp_status(o, rc, last_status(o, rc), r);
}

/* A call whose answer the operation can do without: the stat that words
 * an error, a close, removing what a failed upload left. It may still fail
 * for the connection (a timeout, a reset), and after a timeout libssh2
 * keeps its request as sent: the next call of its kind would wait for that
 * old answer and take it for its own (a delete answered by an earlier
 * remove). Such a failure ends the session as any other does: it is
 * answered in `r` (fatal; the connection is cut), or with no `r` only the
 * connection is cut; either way it is kept in o->side_rc. Returns rc. */
static int aside(struct sftp_ops *o, int rc, struct op_reply *r)
{
    if (rc >= 0 || rc == LIBSSH2_ERROR_SFTP_PROTOCOL)
        return rc;
    o->side_rc = rc;
    if (r && !r->streamed) {
        reply_sftp_error(o, rc, r);
        return rc;
    }
    /* An answer streamed whole stays as it is; the session ends after it
     * (and the requests queued behind it are told why: worker.c). */
    ssh_cut(o->c);
    if (r) {
        r->fatal = 1;
        r->code = rc == LIBSSH2_ERROR_TIMEOUT ? "timeout" : "io";
    }
    return rc;
}

/* A handle is closed even when the connection failed: only the close frees
 * it in libssh2, and on a cut connection it fails at once. Its failure is
 * answered in `r` unless something already failed for the connection. */
static void close_handle(struct sftp_ops *o, LIBSSH2_SFTP_HANDLE *h, struct op_reply *r)
{
    aside(o, libssh2_sftp_close_handle(h), r && !r->fatal ? r : NULL);
}

static void reply_ok(struct op_reply *r, json_t *result)
{
    r->result = result ? result : json_object();
}

/* A handle id is the only thing that keeps one session's handles apart:
 * without random bytes there is no id. Returns 0 or -1. */
static int new_handle_id(char *out, const char *prefix)
{
    unsigned char rnd[16];

    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        return -1;
    strcpy(out, prefix);
    for (int i = 0; i < 16; i++)
        snprintf(out + 3 + 2 * i, 3, "%02x", rnd[i]);
    return 0;
}

int64_t sftp_ops_bytes(uint64_t blocks, uint64_t size)
{
    uint64_t product;

    if (__builtin_mul_overflow(blocks, size, &product) || product > INT64_MAX)
        return INT64_MAX;
    return (int64_t)product;
}

/* Post through the sink; -1 when the browser is gone. */
static int emit(struct sftp_ops *o, struct frame *a, struct frame *b)
{
    return o->sink->post(o->sink->arg, a, b);
}

/* End a message that has begun but cannot be finished (frame.h). */
static void emit_abort(struct sftp_ops *o, int binary)
{
    struct frame *f = frame_new(binary, 0);

    if (f) {
        f->cont = 1;
        f->abort = 1;
    }
    /* Even without memory for the marker the message never completes: the
     * worker ends the session after a cut-short answer. */
    emit(o, f, NULL);
}

/* libssh2's timeout bounds one libssh2 call, but a read chunk or a list
 * fragment takes many calls, each of which returns as soon as anything
 * came: a server answering a little just before each timeout would make
 * one operation last for ever. So each such step gets a deadline, and
 * every call within it only what is left of it. Returns 0, or
 * LIBSSH2_ERROR_TIMEOUT when the deadline has passed. */
static int time_left(struct sftp_ops *o, int64_t deadline_ms)
{
    int64_t left = deadline_ms - clock_now_ms();

    if (left <= 0)
        return LIBSSH2_ERROR_TIMEOUT;
    ssh_set_timeout(o->c, (int)((left + 999) / 1000));
    return 0;
}

static int64_t deadline_from_now(const struct sftp_ops *o)
{
    return clock_now_ms() + (int64_t)o->op_secs * 1000;
}

/* Back to the whole operation timeout for the calls that follow. */
static void time_reset(struct sftp_ops *o)
{
    ssh_set_timeout(o->c, o->op_secs);
}

static int sstat(struct sftp_ops *o, const char *path, int how, LIBSSH2_SFTP_ATTRIBUTES *a)
{
    return libssh2_sftp_stat_ex(o->c->sftp, path, (unsigned)strlen(path), how, a);
}

static int is_dir(const LIBSSH2_SFTP_ATTRIBUTES *a)
{
    return (a->flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) && LIBSSH2_SFTP_S_ISDIR(a->permissions);
}

/* SFTP sizes are unsigned 64-bit, JSON's (jansson's) integers signed: no
 * file is larger than INT64_MAX bytes, and a server that says one is must
 * not show the app a negative size. A size not reported at all reads 0. */
static int size_shown(const LIBSSH2_SFTP_ATTRIBUTES *a)
{
    return !(a->flags & LIBSSH2_SFTP_ATTR_SIZE) || a->filesize <= INT64_MAX;
}

#define BAD_SIZE "the SFTP server did not report a valid file size"

static json_t *attrs_json(const LIBSSH2_SFTP_ATTRIBUTES *a)
{
    return json_pack("{s:I,s:I,s:b}", "mtime", (json_int_t)a->mtime, "size",
                     (json_int_t)a->filesize, "isDir", is_dir(a));
}

static void op_stat(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    LIBSSH2_SFTP_ATTRIBUTES a;
    int rc = sstat(o, q->path, LIBSSH2_SFTP_STAT, &a);

    if (rc < 0)
        reply_sftp_error(o, rc, r);
    else if (!size_shown(&a))
        reply_error(r, BAD_SIZE, "io");
    else
        reply_ok(r, attrs_json(&a));
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF),
 * so that a name jansson refuses is told apart from jansson running out of
 * memory: the first is left out of a listing, the second fails it. */
static int utf8_valid(const unsigned char *p, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned c = p[i], need, min;
        uint32_t cp;

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1, min = 0x80, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2, min = 0x800, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i - 1 < need)
            return 0;
        for (unsigned k = 1; k <= need; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += need + 1;
    }
    return 1;
}

/* One directory entry as the app wants it in *e, or none when its size
 * cannot be shown (size_shown: like a name that is not UTF-8, it cannot
 * have come from the app), or when the connection failed (then answered in
 * `r`). Returns 0, or -1 when out of memory. */
static int entry_json(struct sftp_ops *o, const char *dir, size_t dirlen, const char *name,
                      size_t namelen, LIBSSH2_SFTP_ATTRIBUTES *a, json_t **e,
                      struct op_reply *r)
{
    char *full = malloc(dirlen + namelen + 2);
    int rc = -1;

    *e = NULL;
    if (!full)
        goto out;
    memcpy(full, dir, dirlen);
    full[dirlen] = '/';
    memcpy(full + dirlen + 1, name, namelen);
    full[dirlen + 1 + namelen] = '\0';
    /* readdir reports a symlink itself; the app wants what it points to. */
    if ((a->flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) && LIBSSH2_SFTP_S_ISLNK(a->permissions))
        aside(o, sstat(o, full, LIBSSH2_SFTP_STAT, a), r);
    if (r->fatal || !size_shown(a)) {
        rc = 0;
        goto out;
    }
    *e = json_pack("{s:s%,s:s,s:I,s:I,s:b}", "name", name, namelen, "path", full, "size",
                   (json_int_t)a->filesize, "mtime", (json_int_t)a->mtime, "isDir", is_dir(a));
    if (*e)
        rc = 0;
out:
    free(full);
    return rc;
}

/* A listing under construction: JSON text of the answer, sent in pieces of
 * LIST_FRAGMENT_BYTES once it outgrows one (see LIST_FRAGMENT_BYTES). */
struct listing {
    char *buf;
    size_t len, cap;
    long entries;
    int started;   /* a first fragment is out: errors can only cut it short */
};

/* Make room for `more` bytes. The buffer never grows much past one
 * fragment: it is flushed as soon as it holds a fragment's worth. */
static int list_reserve(struct listing *l, size_t more)
{
    size_t want, cap;
    char *grown;

    if (more > SIZE_MAX - l->len)
        return -1;
    want = l->len + more;
    if (want <= l->cap)
        return 0;
    cap = l->cap ? l->cap : 4096;
    while (cap < want)
        cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    grown = realloc(l->buf, cap);
    if (!grown)
        return -1;
    l->buf = grown;
    l->cap = cap;
    return 0;
}

static int list_put(struct listing *l, const char *text, size_t n)
{
    if (list_reserve(l, n) < 0)
        return -1;
    memcpy(l->buf + l->len, text, n);
    l->len += n;
    return 0;
}

static int list_put_entry(struct listing *l, json_t *e)
{
    size_t n = json_dumpb(e, NULL, 0, JSON_COMPACT);

    if (n == 0 || list_reserve(l, n + 1) < 0)
        return -1;
    if (l->entries > 0)
        l->buf[l->len++] = ',';
    if (json_dumpb(e, l->buf + l->len, n, JSON_COMPACT) != n)
        return -1;
    l->len += n;
    l->entries++;
    return 0;
}

/* Why list_flush() could not send. */
#define LIST_E_GONE  (-1)  /* the browser is gone */
#define LIST_E_NOMEM (-2)

/* Send what is buffered as the next fragment; `last` ends the message.
 * Returns 0, LIST_E_GONE or LIST_E_NOMEM. */
static int list_flush(struct sftp_ops *o, struct listing *l, int last)
{
    struct frame *f = frame_new(0, l->len);

    if (!f)
        return LIST_E_NOMEM;
    memcpy(frame_data(f), l->buf, l->len);
    f->cont = l->started;
    f->more = !last;
    l->started = 1;
    l->len = 0;
    return emit(o, f, NULL) < 0 ? LIST_E_GONE : 0;
}

/* The listing is streamed while the directory is read, so its memory is
 * bounded by LIST_FRAGMENT_BYTES and the output queue whatever the
 * directory holds, and the browser still receives one text message. A
 * failure before the first fragment went out is an ordinary error answer;
 * after it, the message cannot become an error any more, and a truncated
 * listing must never pass for a complete one: the message is cut short and
 * the WebSocket closes (the app sees the connection drop). The same holds
 * when the directory exceeds SFTP_LIST_MAX_ENTRIES, which bounds the time
 * and traffic a server that answers directory reads for ever can cost. */
static void op_list(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    LIBSSH2_SFTP_HANDLE *dh = libssh2_sftp_opendir(o->c->sftp, q->path);
    LIBSSH2_SFTP_ATTRIBUTES a;
    struct listing l = {0};
    size_t dirlen = strlen(q->path);
    char name[NAME_MAX_BYTES], head[64];
    int64_t deadline = deadline_from_now(o);
    int rc, n, sent;

    if (!dh) {
        reply_sftp_error(o, libssh2_session_last_errno(o->c->ssh), r);
        return;
    }
    while (dirlen > 0 && q->path[dirlen - 1] == '/')
        dirlen--;
    n = snprintf(head, sizeof(head), "{\"id\":%lu,\"result\":{\"entries\":[",
                 (unsigned long)q->id);
    if (list_put(&l, head, (size_t)n) < 0)
        goto nomem;
    while ((rc = time_left(o, deadline)) == 0 &&
           (rc = libssh2_sftp_readdir(dh, name, sizeof(name), &a)) > 0) {
        json_t *e;
        if ((rc == 1 && name[0] == '.') || (rc == 2 && name[0] == '.' && name[1] == '.'))
            continue;
        /* Names that are not UTF-8 cannot travel in JSON and cannot have
         * come from the app: they are left out, and so are names holding a
         * NUL, which no path can carry (the entry's path would end there). */
        if (!utf8_valid((const unsigned char *)name, (size_t)rc) || memchr(name, 0, (size_t)rc))
            continue;
        if (l.entries >= o->max_list_entries) {
            reply_error(r, "directory too large", "limit");
            goto failed;
        }
        if (entry_json(o, q->path, dirlen, name, (size_t)rc, &a, &e, r) < 0)
            goto nomem;
        if (r->fatal)
            goto failed;
        if (!e)
            continue;
        n = list_put_entry(&l, e);
        json_decref(e);
        if (n < 0)
            goto nomem;
        sent = 0;
        if (l.len >= LIST_FRAGMENT_BYTES) {
            sent = list_flush(o, &l, 0);
            deadline = deadline_from_now(o);
        }
        if (sent == LIST_E_NOMEM)
            goto nomem;
        if (sent < 0) {
            r->unfinished = 1;
            goto gone;
        }
    }
    if (rc == LIBSSH2_ERROR_BUFFER_TOO_SMALL) {
        reply_error(r, "a name in the directory is too long", "io");
        goto failed;
    }
    if (rc < 0) {
        reply_sftp_error(o, rc, r);
        goto failed;
    }
    if (list_put(&l, "]}}", 3) < 0 || (sent = list_flush(o, &l, 1)) == LIST_E_NOMEM)
        goto nomem;
    r->unfinished = sent < 0;
    goto gone;
nomem:
    reply_error(r, "out of memory", "io");
failed:
    if (l.started) {
        emit_abort(o, 0);
        r->streamed = 1;
    }
    goto out;
gone:
    /* Answered in full, or the browser left: either way nothing to add. */
    r->streamed = 1;
out:
    time_reset(o);
    free(l.buf);
    close_handle(o, dh, r);
}

/* Never an error: the app skips its quota check when unsupported. */
static void op_fs_info(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    LIBSSH2_SFTP_STATVFS st;
    int rc = libssh2_sftp_statvfs(o->c->sftp, q->path, strlen(q->path), &st);

    if (rc < 0) {
        if (rc != LIBSSH2_ERROR_SFTP_PROTOCOL && rc != LIBSSH2_ERROR_METHOD_NOT_SUPPORTED)
            r->fatal = rc == LIBSSH2_ERROR_TIMEOUT || rc == LIBSSH2_ERROR_SOCKET_RECV ||
                       rc == LIBSSH2_ERROR_SOCKET_SEND || rc == LIBSSH2_ERROR_SOCKET_DISCONNECT;
        cut_if_fatal(o, r);
        reply_ok(r, json_pack("{s:b}", "supported", 0));
        return;
    }
    reply_ok(r, json_pack("{s:b,s:I,s:I}", "supported", 1, "freeBytes",
                          (json_int_t)sftp_ops_bytes(st.f_bavail, st.f_frsize), "totalBytes",
                          (json_int_t)sftp_ops_bytes(st.f_blocks, st.f_frsize)));
}

/* OpenSSH answers a bare "Failure" for an existing directory; the app needs
 * "already exists" to treat it as success, so look before reporting. */
static void op_mkdir(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    LIBSSH2_SFTP_ATTRIBUTES a;
    int rc = libssh2_sftp_mkdir_ex(o->c->sftp, q->path, (unsigned)strlen(q->path), DIR_MODE);

    if (rc == 0) {
        reply_ok(r, NULL);
        return;
    }
    reply_sftp_error(o, rc, r);
    if (r->fatal || aside(o, sstat(o, q->path, LIBSSH2_SFTP_STAT, &a), r) < 0)
        return;
    if (is_dir(&a))
        reply_error(r, "directory already exists", "exists");
    else
        reply_error(r, "path exists and is not a directory", "exists");
}

static void op_delete(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    LIBSSH2_SFTP_ATTRIBUTES a;
    unsigned len = (unsigned)strlen(q->path);
    int rc = libssh2_sftp_unlink_ex(o->c->sftp, q->path, len);

    if (rc == 0) {
        reply_ok(r, NULL);
        return;
    }
    reply_sftp_error(o, rc, r);
    if (r->fatal || aside(o, sstat(o, q->path, LIBSSH2_SFTP_LSTAT, &a), r) < 0 ||
        !is_dir(&a))
        return;
    rc = libssh2_sftp_rmdir_ex(o->c->sftp, q->path, len);
    if (rc == 0) {
        r->error = NULL;
        r->code = NULL;
        reply_ok(r, NULL);
        return;
    }
    reply_sftp_error(o, rc, r);
    if (!r->fatal && last_status(o, rc) == LIBSSH2_FX_FAILURE)
        reply_error(r, "directory not empty", "not_empty");
}

/* posix-rename@openssh.com replaces `to` atomically. A server that did not
 * offer it gets no request: libssh2 returns LIBSSH2_FX_OP_UNSUPPORTED
 * itself, a positive number where every other failure is negative; one
 * that offered it may still answer that status. */
static int posix_rename_unsupported(struct sftp_ops *o, int rc)
{
    return rc == LIBSSH2_FX_OP_UNSUPPORTED ||
           (rc < 0 && last_status(o, rc) == LIBSSH2_FX_OP_UNSUPPORTED);
}

static int plain_rename(struct sftp_ops *o, const char *from, const char *to)
{
    return libssh2_sftp_rename_ex(o->c->sftp, from, (unsigned)strlen(from), to,
                                  (unsigned)strlen(to),
                                  LIBSSH2_SFTP_RENAME_OVERWRITE | LIBSSH2_SFTP_RENAME_ATOMIC |
                                      LIBSSH2_SFTP_RENAME_NATIVE);
}

/* rename_replacing()'s status when `from` took `to`'s place but the
 * replaced file could neither be removed nor put back: outside the SFTP
 * statuses, answered as what happened (op_rename). */
#define RENAME_HALF_DONE 0xffffffffUL

/* What rename_replacing() may move aside or move onto it: a file or a
 * symbolic link, as the server says. A directory may not be replaced
 * (rename(2) and posix-rename refuse), and a type not reported may be one. */
static int replaceable(const LIBSSH2_SFTP_ATTRIBUTES *a)
{
    return (a->flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) &&
           (LIBSSH2_SFTP_S_ISREG(a->permissions) || LIBSSH2_SFTP_S_ISLNK(a->permissions));
}

/* Whether paths `a` and `b` name the same entry as written: equal once
 * runs of '/' and "." segments are taken out ("//up" and "/./up" are
 * "/up"). ".." and symbolic links are the server's to resolve. */
static int same_path(const char *a, const char *b)
{
    for (;;) {
        while (*a == '/' && (a[1] == '/' || (a[1] == '.' && (a[2] == '/' || !a[2]))))
            a += a[1] == '/' ? 1 : 2;
        while (*b == '/' && (b[1] == '/' || (b[1] == '.' && (b[2] == '/' || !b[2]))))
            b += b[1] == '/' ? 1 : 2;
        if (*a != *b)
            return (*a == '/' && !a[1] && !*b) || (*b == '/' && !b[1] && !*a);
        if (!*a)
            return 1;
        a++;
        b++;
    }
}

/* Rename replacing `to` without posix-rename. A plain SFTP rename fails
 * when `to` exists, and PROTOCOL says remove `to`, then rename; but `to`
 * removed before the rename is known to work is lost whenever it then
 * fails (`from` is gone: a retried rename whose first answer was lost).
 * So the plain rename comes first; only when it fails while `from` exists
 * is `to` moved aside under a name of its own, `from` renamed, and `to`
 * moved back if that fails, or removed once it worked (both steps undone
 * when it cannot be). Only a file replaces a file (replaceable()): with a
 * directory, or a type not reported, in either place the first failure is
 * answered. Returns 0 or the libssh2 failure to answer, with the SFTP
 * status to answer in *st. */
static int rename_replacing(struct sftp_ops *o, const char *from, const char *to,
                            unsigned long *st)
{
    LIBSSH2_SFTP_ATTRIBUTES a;
    char *moved = NULL, id[HANDLE_CHARS];
    const char *slash;
    size_t n;
    int rc = plain_rename(o, from, to), rc2;

    *st = last_status(o, rc);
    if (rc == 0 || rc != LIBSSH2_ERROR_SFTP_PROTOCOL ||
        (*st != LIBSSH2_FX_FAILURE && *st != LIBSSH2_FX_FILE_ALREADY_EXISTS))
        goto out;
    rc2 = sstat(o, from, LIBSSH2_SFTP_LSTAT, &a);
    if (rc2 < 0) {
        /* `from` is not there (or the connection failed): say why. */
        rc = rc2;
        *st = last_status(o, rc2);
        goto out;
    }
    if (same_path(from, to)) {
        rc = 0;
        goto out;
    }
    if (!replaceable(&a))
        goto out;
    rc2 = sstat(o, to, LIBSSH2_SFTP_LSTAT, &a);
    if (rc2 < 0 || !replaceable(&a)) {
        if (rc2 < 0 && rc2 != LIBSSH2_ERROR_SFTP_PROTOCOL)
            rc = rc2;
        goto out;
    }
    /* In `to`'s directory under a name of its own length, so a `to` whose
     * name is near the server's limit can be moved aside too. */
    slash = strrchr(to, '/');
    n = (slash ? (size_t)(slash - to) + 1 : 0) + 1 + sizeof(id);
    moved = malloc(n);
    if (!moved || new_handle_id(id, "rn-") < 0)
        goto out;
    snprintf(moved, n, "%.*s.%s", slash ? (int)(slash - to) + 1 : 0, to, id);
    rc2 = plain_rename(o, to, moved);
    if (rc2 < 0) {
        if (rc2 != LIBSSH2_ERROR_SFTP_PROTOCOL)
            rc = rc2;
        goto out;
    }
    rc = plain_rename(o, from, to);
    *st = last_status(o, rc);
    rc2 = 0;    /* after a connection failure nothing more can be asked */
    if (rc == LIBSSH2_ERROR_SFTP_PROTOCOL) {
        rc2 = plain_rename(o, moved, to);
        /* `from` went with `to`: they were one entry under two spellings
         * ("/a/../b", a case-insensitive server). Back under `to`'s name,
         * it is where it was asked to be. */
        if (rc2 == 0 && *st == LIBSSH2_FX_NO_SUCH_FILE &&
            sstat(o, from, LIBSSH2_SFTP_LSTAT, &a) == 0)
            rc = 0;
    } else if (rc == 0) {
        rc2 = libssh2_sftp_unlink_ex(o->c->sftp, moved, (unsigned)strlen(moved));
        if (rc2 == LIBSSH2_ERROR_SFTP_PROTOCOL &&
            last_status(o, rc2) == LIBSSH2_FX_NO_SUCH_FILE)
            rc2 = 0;    /* someone else removed it */
        if (rc2 == LIBSSH2_ERROR_SFTP_PROTOCOL) {
            /* The replaced file cannot go (a server that allows renaming
             * but not removing): both steps are undone, and the answer is
             * why, as removing `to` first would have answered. */
            rc = rc2;
            *st = last_status(o, rc2);
            rc2 = plain_rename(o, to, from);
            if (rc2 == 0)
                rc2 = plain_rename(o, moved, to);
            if (rc2 == LIBSSH2_ERROR_SFTP_PROTOCOL)
                *st = RENAME_HALF_DONE;
        }
    }
    if (rc2 < 0 && rc2 != LIBSSH2_ERROR_SFTP_PROTOCOL)
        rc = rc2;
    else if (rc2 < 0)
        log_warn("rename: a step could not be undone; a file was left in the directory "
                 "of its place under \".rn-\" and 32 hex digits");
out:
    free(moved);
    return rc;
}

static void op_rename(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    int rc = libssh2_sftp_posix_rename_ex(o->c->sftp, q->from, (unsigned)strlen(q->from),
                                          q->to, (unsigned)strlen(q->to));
    unsigned long st = last_status(o, rc);

    if (posix_rename_unsupported(o, rc))
        rc = rename_replacing(o, q->from, q->to, &st);
    if (rc == LIBSSH2_ERROR_SFTP_PROTOCOL && st == RENAME_HALF_DONE)
        reply_error(r, "renamed, but the file it replaced could not be removed or put back: "
                       "it was kept in the same directory under \".rn-\" and 32 hex digits",
                    "io");
    else if (rc < 0)
        reply_sftp_status(o, rc, st, r);
    else
        reply_ok(r, NULL);
}

static void count_moved(struct sftp_ops *o, size_t n)
{
    if (o->sink->moved)
        atomic_fetch_add(o->sink->moved, n);
}

/* Read until `want` bytes or end of file, within one operation timeout;
 * libssh2 returns as soon as some data is there. Returns bytes read or a
 * negative libssh2 code. */
static ssize_t read_full(struct sftp_ops *o, LIBSSH2_SFTP_HANDLE *h, unsigned char *buf,
                         size_t want)
{
    int64_t deadline = deadline_from_now(o);
    ssize_t rc = 0;
    size_t n = 0;

    while (n < want) {
        rc = time_left(o, deadline);
        if (rc < 0)
            break;
        rc = libssh2_sftp_read(h, (char *)buf + n, want - n);
        if (rc <= 0)
            break;
        n += (size_t)rc;
        count_moved(o, (size_t)rc);
    }
    time_reset(o);
    return rc < 0 ? rc : (ssize_t)n;
}

/* How much upload to keep in flight on this connection. libssh2 turns
 * everything it is given into packets and sends them as fast as the SSH
 * window allows. OpenSSH's sshd queues what it has not yet handed to
 * sftp-server in a buffer that grows one packet at a time, each step a
 * fresh allocation, copy and wipe of the whole buffer: on a fresh
 * connection a 2 MiB burst over loopback costs sshd 1-2 s of CPU before it
 * answers, 512 KiB about 0.05 s. 512 KiB keeps a LAN or loopback server as
 * busy as 2 MiB does; a distant server needs a window of its round trip
 * times the rate we aim for, or one upload is capped at window / RTT
 * (512 KiB at 20 ms: 25 MB/s). Over a WAN the burst reaches sshd at the
 * link's pace, so its buffer does not pile up the same way. */
size_t sftp_ops_write_window(uint32_t rtt_usecs)
{
    if (rtt_usecs > WRITE_WINDOW_MAX / WRITE_TARGET_BYTES_PER_USEC)
        return WRITE_WINDOW_MAX;
    if ((size_t)rtt_usecs * WRITE_TARGET_BYTES_PER_USEC < WRITE_WINDOW_MIN)
        return WRITE_WINDOW_MIN;
    return (size_t)rtt_usecs * WRITE_TARGET_BYTES_PER_USEC;
}

static size_t write_window(const struct ssh_conn *c)
{
    struct tcp_info ti;
    socklen_t tlen = sizeof(ti);

    if (getsockopt(c->sock, IPPROTO_TCP, TCP_INFO, &ti, &tlen) < 0)
        return WRITE_WINDOW_MIN;
    return sftp_ops_write_window(ti.tcpi_rtt);
}

/* Write all of `len` with at most write_window() bytes in flight; libssh2
 * returns after the first acknowledged packet of a pipelined batch, so
 * call again from where it got to. Each call has a fresh libssh2 timeout,
 * so a server acknowledging one packet just inside each would make a 16
 * MiB chunk last for hours: as a read_chunk must (read_full), every
 * WRITE_STEP_BYTES written must be acknowledged within one operation
 * timeout. A whole chunk within one would fail honest slow links. */
static int write_full(struct sftp_ops *o, LIBSSH2_SFTP_HANDLE *h, const uint8_t *data,
                      size_t len)
{
    size_t window = write_window(o->c), off = 0, step_end = WRITE_STEP_BYTES;
    int64_t deadline = deadline_from_now(o);
    int rc = 0;

    while (off < len) {
        size_t n = len - off < window ? len - off : window;
        ssize_t done;

        rc = time_left(o, deadline);
        if (rc < 0)
            break;
        done = libssh2_sftp_write(h, (const char *)data + off, n);
        if (done < 0) {
            rc = (int)done;
            break;
        }
        off += (size_t)done;
        count_moved(o, (size_t)done);
        if (off >= step_end) {
            step_end = off + WRITE_STEP_BYTES;
            deadline = deadline_from_now(o);
        }
    }
    time_reset(o);
    return rc;
}

static LIBSSH2_SFTP_HANDLE *open_file(struct sftp_ops *o, const char *path, unsigned long flags)
{
    return libssh2_sftp_open_ex(o->c->sftp, path, (unsigned)strlen(path), flags, FILE_MODE,
                                LIBSSH2_SFTP_OPENFILE);
}

static int last_err(struct sftp_ops *o)
{
    return libssh2_session_last_errno(o->c->ssh);
}

/* Legacy whole-file read, with no size cap: the size first, then the file
 * as one binary message, streamed in fragments of PROTO_READ_CHUNK_BYTES as
 * they are read, so memory stays bounded whatever the size. The message
 * has exactly the size announced: a failure before the first fragment is
 * an ordinary error answer; after it (the file shrank, the server failed),
 * the message is cut short and the WebSocket closes, never a short file
 * passed off as whole. A file that grew is sent up to the announced size. */
static void op_read(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    LIBSSH2_SFTP_HANDLE *h = open_file(o, q->path, LIBSSH2_FXF_READ);
    LIBSSH2_SFTP_ATTRIBUTES a;
    struct frame *head = NULL, *f = NULL;
    uint64_t size, done = 0;
    int rc;

    if (!h) {
        reply_sftp_error(o, last_err(o), r);
        return;
    }
    rc = libssh2_sftp_fstat_ex(h, &a, 0);
    if (rc < 0) {
        reply_sftp_error(o, rc, r);
        goto out;
    }
    if (!(a.flags & LIBSSH2_SFTP_ATTR_SIZE) || a.filesize > INT64_MAX) {
        reply_error(r, BAD_SIZE, "io");
        goto out;
    }
    size = a.filesize;
    head = frame_from_text(proto_result(q->id, json_pack("{s:I}", "size", (json_int_t)size)));
    if (!head) {
        reply_error(r, "out of memory", "io");
        goto out;
    }
    do {
        size_t want = size - done < PROTO_READ_CHUNK_BYTES ? (size_t)(size - done)
                                                        : PROTO_READ_CHUNK_BYTES;
        ssize_t n;

        f = frame_new(1, want);
        if (!f) {
            reply_error(r, "out of memory", "io");
            goto failed;
        }
        n = read_full(o, h, frame_data(f), want);
        if (n < 0) {
            reply_sftp_error(o, (int)n, r);
            goto failed;
        }
        if ((size_t)n < want) {
            reply_error(r, "the file shrank while it was read", "io");
            goto failed;
        }
        done += want;
        f->cont = head == NULL;
        f->more = done < size;
        rc = emit(o, head, f);
        head = f = NULL;
        r->streamed = 1;
        if (rc < 0) {
            r->unfinished = 1;  /* the browser left, or an eviction */
            goto out;
        }
    } while (done < size);
    goto out;
failed:
    if (r->streamed)
        emit_abort(o, 1);
out:
    frame_free(head);
    frame_free(f);
    close_handle(o, h, r);
}

/* What a failed or abandoned upload left; see aside() for `r`. */
static void remove_file(struct sftp_ops *o, const char *path, struct op_reply *r)
{
    aside(o, libssh2_sftp_unlink_ex(o->c->sftp, path, (unsigned)strlen(path)), r);
}

/* fsync@openssh.com makes an acknowledged upload survive a server crash;
 * a server without it answers "unsupported", which is not a failure (our
 * libssh2 does not even ask one that did not offer it). Answers a failure
 * in `r` and returns it, negative. */
static int sync_and_close(struct sftp_ops *o, LIBSSH2_SFTP_HANDLE *h, struct op_reply *r)
{
    int rc = libssh2_sftp_fsync(h), rc2;

    if (rc < 0 && last_status(o, rc) == LIBSSH2_FX_OP_UNSUPPORTED)
        rc = 0;
    /* Answered before the close, whose own status replaces the fsync's
     * (an EIO would read "invalid reply"). */
    if (rc < 0)
        reply_sftp_error(o, rc, r);
    rc2 = libssh2_sftp_close_handle(h);
    if (!r->fatal && rc2 < 0 && (rc == 0 || rc2 != LIBSSH2_ERROR_SFTP_PROTOCOL)) {
        reply_sftp_error(o, rc2, r);
        rc = rc2;
    }
    return rc;
}

/* Legacy whole-file write. A failed write leaves no half file behind. */
static void op_write(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    LIBSSH2_SFTP_HANDLE *h =
        open_file(o, q->path, LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC);
    int rc;

    if (!h) {
        reply_sftp_error(o, last_err(o), r);
        return;
    }
    rc = write_full(o, h, in->data, in->len);
    if (rc < 0) {
        reply_sftp_error(o, rc, r);
        close_handle(o, h, r);
        if (!r->fatal)
            remove_file(o, q->path, r);
        return;
    }
    if (sync_and_close(o, h, r) < 0) {
        if (!r->fatal)
            remove_file(o, q->path, r);
        return;
    }
    reply_ok(r, NULL);
}

static struct whandle *find_write(struct sftp_ops *o, const char *id)
{
    for (int i = 0; i < SFTP_MAX_WRITE_HANDLES; i++)
        if (o->writes[i].h && strcmp(o->writes[i].id, id) == 0)
            return &o->writes[i];
    return NULL;
}

static struct rhandle *find_read(struct sftp_ops *o, const char *id)
{
    for (int i = 0; i < PROTO_MAX_READ_HANDLES; i++)
        if (o->reads[i].h && strcmp(o->reads[i].id, id) == 0)
            return &o->reads[i];
    return NULL;
}

static void drop_write(struct whandle *w)
{
    free(w->path);
    memset(w, 0, sizeof(*w));
}

/* A failed upload whose handle is gone: its error, or NULL. */
static const struct failed_write *find_failed(struct sftp_ops *o, const char *id)
{
    for (int i = 0; i < FAILED_WRITES_KEPT; i++)
        if (o->failed[i].id[0] && strcmp(o->failed[i].id, id) == 0)
            return &o->failed[i];
    return NULL;
}

/* "unknown write handle", or the error that ended this upload. */
static void reply_no_write(struct sftp_ops *o, const char *id, struct op_reply *r)
{
    const struct failed_write *fw = find_failed(o, id);

    if (fw)
        reply_error(r, fw->msg, fw->code);
    else
        reply_error(r, "unknown write handle", "not_found");
}

static void op_write_open(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    unsigned long flags = LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT;
    LIBSSH2_SFTP_ATTRIBUTES a = {0};
    struct whandle *w;
    int i;

    for (i = 0; i < SFTP_MAX_WRITE_HANDLES && o->writes[i].h; i++)
        ;
    if (i == SFTP_MAX_WRITE_HANDLES) {
        reply_error(r, "too many open write sessions", "limit");
        return;
    }
    w = &o->writes[i];
    w->path = strdup(q->path);
    if (!w->path || new_handle_id(w->id, "wh-") < 0) {
        reply_error(r, !w->path ? "out of memory" : "no random bytes for a handle", "io");
        drop_write(w);
        return;
    }
    if (!q->resume)
        flags |= LIBSSH2_FXF_TRUNC;
    w->h = open_file(o, q->path, flags);
    if (!w->h) {
        reply_sftp_error(o, last_err(o), r);
        drop_write(w);
        return;
    }
    if (q->resume) {
        int rc = libssh2_sftp_fstat_ex(w->h, &a, 0);
        if (rc < 0 || !(a.flags & LIBSSH2_SFTP_ATTR_SIZE) || a.filesize > INT64_MAX) {
            /* Without the size there is no offset to resume from. */
            if (rc < 0)
                reply_sftp_error(o, rc, r);
            else
                reply_error(r, BAD_SIZE, "io");
            close_handle(o, w->h, r);
            drop_write(w);
            return;
        }
        libssh2_sftp_seek64(w->h, a.filesize);
    }
    w->resumable = q->resume;
    if (q->resume)
        reply_ok(r, json_pack("{s:s,s:I}", "handle", w->id, "offset", (json_int_t)a.filesize));
    else
        reply_ok(r, json_pack("{s:s}", "handle", w->id));
}

/* A write error ends the upload at once: the app abandons a failed upload
 * without write_close or write_abort, so waiting for either would leave the
 * remote handle open, the partial file on the server and the slot taken.
 * The error is kept under the handle's id for the requests still coming.
 * This holds for an upload opened with "resume" too (PROTOCOL §3): it keeps
 * its partial file only when the connection drops, not after a write the
 * server refused, since the browser abandons that upload. */
static const char *fail_write(struct sftp_ops *o, struct whandle *w, int rc, int *fatal)
{
    struct failed_write *fw = &o->failed[o->n_failed++ % FAILED_WRITES_KEPT];
    struct op_reply tmp = {0};

    reply_sftp_error(o, rc, &tmp);
    snprintf(fw->id, sizeof(fw->id), "%s", w->id);
    snprintf(fw->msg, sizeof(fw->msg), "%s", tmp.error);
    fw->code = tmp.code;
    close_handle(o, w->h, &tmp);
    if (!tmp.fatal)
        remove_file(o, w->path, &tmp);
    *fatal = tmp.fatal;
    drop_write(w);
    return fw->code;
}

static void op_write_chunk(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;

    if (!find_write(o, q->handle)) {
        reply_no_write(o, q->handle, r);
        return;
    }
    reply_ok(r, NULL);
    r->write_pending = 1;
}

int sftp_ops_flush(struct sftp_ops *o, const struct proto_request *q, const uint8_t *data,
                   size_t len)
{
    struct whandle *w = find_write(o, q->handle);
    int64_t t0 = clock_now_us();
    int rc;

    if (!w)
        return 0;
    rc = write_full(o, w->h, data, len);
    if (rc < 0) {
        int fatal;
        metrics_sftp_op(M_WRITE_CHUNK, fail_write(o, w, rc, &fatal), clock_now_us() - t0);
        /* A refused write ends its upload only; the connection failing
         * while the upload was being cleared ends the session, with that
         * failure's code (a timeout is told as one). */
        if (!fatal)
            return 0;
        if (rc != LIBSSH2_ERROR_SFTP_PROTOCOL)
            return rc;
        return o->side_rc ? o->side_rc : LIBSSH2_ERROR_SOCKET_DISCONNECT;
    }
    metrics_sftp_op(M_WRITE_CHUNK, NULL, clock_now_us() - t0);
    return 0;
}

static void op_write_close(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    struct whandle *w = find_write(o, q->handle);

    if (!w) {
        reply_no_write(o, q->handle, r);
        return;
    }
    if (sync_and_close(o, w->h, r) < 0) {
        if (!r->fatal)
            remove_file(o, w->path, r);
    } else {
        reply_ok(r, NULL);
    }
    drop_write(w);
}

/* Also {} for a handle that failed or is unknown: the upload is gone. */
static void op_write_abort(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    struct whandle *w = find_write(o, q->handle);

    if (w) {
        close_handle(o, w->h, r);
        if (!r->fatal)
            remove_file(o, w->path, r);
        drop_write(w);
    }
    if (!r->fatal)
        reply_ok(r, NULL);
}

static void op_read_open(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    int i;

    for (i = 0; i < PROTO_MAX_READ_HANDLES && o->reads[i].h; i++)
        ;
    if (i == PROTO_MAX_READ_HANDLES) {
        reply_error(r, "too many open read sessions", "limit");
        return;
    }
    if (new_handle_id(o->reads[i].id, "rh-") < 0) {
        reply_error(r, "no random bytes for a handle", "io");
        return;
    }
    o->reads[i].h = open_file(o, q->path, LIBSSH2_FXF_READ);
    if (!o->reads[i].h) {
        reply_sftp_error(o, last_err(o), r);
        memset(&o->reads[i], 0, sizeof(o->reads[i]));
        return;
    }
    reply_ok(r, json_pack("{s:s}", "handle", o->reads[i].id));
}

/* Always close the libssh2 handle, even on a dead connection: that is what
 * frees its memory and its pending read-ahead packets (libssh2 1.11 frees a
 * handle even when the close fails; without the close, a session whose
 * server died mid-download leaks about 7 KiB). With a dead server
 * sftp_ops_free() makes the close fail fast. */
static void close_read(struct sftp_ops *o, struct rhandle *rh, struct op_reply *r)
{
    close_handle(o, rh->h, r);
    frame_free(rh->ahead);
    memset(rh, 0, sizeof(*rh));
}

/* read_chunk()'s code when the relay itself has no memory for the frame.
 * Outside libssh2's codes on purpose: this failure leaves the connection
 * as it was, so the session goes on, where a LIBSSH2_ERROR_ALLOC means
 * libssh2 stopped somewhere inside a packet and the connection is done. */
#define READ_NO_FRAME (-1000)

/* Read the next chunk of `rh` into a new frame; on failure NULL with the
 * libssh2 code (or READ_NO_FRAME) and SFTP status in *rc / *status. */
static struct frame *read_chunk(struct sftp_ops *o, struct rhandle *rh, int *rc,
                                unsigned long *status)
{
    struct frame *f = frame_new(1, PROTO_READ_CHUNK_BYTES);
    ssize_t n;

    if (!f) {
        *rc = READ_NO_FRAME;
        *status = 0;
        return NULL;
    }
    n = read_full(o, rh->h, frame_data(f), PROTO_READ_CHUNK_BYTES);
    if (n < 0) {
        frame_free(f);
        *rc = (int)n;
        *status = last_status(o, *rc);
        return NULL;
    }
    f->len = (size_t)n;
    return f;
}

static void op_read_chunk(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    struct rhandle *rh = find_read(o, q->handle);
    struct frame *f;
    unsigned long status = 0;
    int rc = 0;

    if (!rh) {
        reply_error(r, "unknown read handle", "not_found");
        return;
    }
    if (rh->ahead || rh->ahead_rc) {
        f = rh->ahead;
        rc = rh->ahead_rc;
        status = rh->ahead_status;
        rh->ahead = NULL;
        rh->ahead_rc = 0;
    } else {
        f = read_chunk(o, rh, &rc, &status);
    }
    if (!f) {
        if (rc == READ_NO_FRAME)
            reply_error(r, "out of memory", "io");
        else
            reply_status(rc, status, r);
        cut_if_fatal(o, r);
        close_read(o, rh, r);
        return;
    }
    reply_ok(r, json_pack("{s:I}", "size", (json_int_t)f->len));
    r->data = f;
    r->read_ahead = f->len == PROTO_READ_CHUNK_BYTES;
}

void sftp_ops_read_ahead(struct sftp_ops *o, const char *handle)
{
    struct rhandle *rh = find_read(o, handle);

    if (rh && !rh->ahead && !rh->ahead_rc)
        rh->ahead = read_chunk(o, rh, &rh->ahead_rc, &rh->ahead_status);
}

static void op_read_close(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    const struct proto_request *q = in->req;
    struct rhandle *rh = find_read(o, q->handle);

    if (rh)
        close_read(o, rh, r);
    if (!r->fatal)
        reply_ok(r, NULL);
}

/* A second auth on an authenticated session: the verb exists, the
 * session is past it. */
static void op_auth(struct sftp_ops *o, const struct op_call *in, struct op_reply *r)
{
    (void)o;
    (void)in;
    reply_error(r, "already authenticated", "bad_request");
}

typedef void (*op_fn)(struct sftp_ops *o, const struct op_call *in, struct op_reply *r);

#define OP_HANDLER(wire, e, param, binary, handler) [e] = handler,
static const op_fn ops[M_COUNT] = {
    PROTO_VERBS(OP_HANDLER)
};
#undef OP_HANDLER

/* libssh2 was refused an allocation (SSH_SESSION_MEMORY_MIB). A call that
 * reports it is already fatal (reply_status); this catches the rest: a
 * refusal in a read-ahead whose chunk was answered before, or one libssh2
 * swallowed (a dropped packet) while the call itself succeeded. libssh2
 * may have stopped in the middle of a packet, so its connection is not
 * used again, whatever the call answered: the answer becomes "connection
 * lost" and the session ends. An answer already streamed stays as it is;
 * the session ends after it. */
static void refused_is_fatal(struct sftp_ops *o, struct op_reply *r)
{
    if (!o->c->acct.refused || r->fatal)
        return;
    frame_free(r->data);
    r->data = NULL;
    r->write_pending = 0;
    r->read_ahead = 0;
    if (!r->streamed)
        reply_status(LIBSSH2_ERROR_ALLOC, 0, r);
    r->fatal = 1;
    cut_if_fatal(o, r);
}

void sftp_ops_run(struct sftp_ops *o, const struct proto_request *req, const uint8_t *data,
                  size_t len, struct op_reply *r)
{
    const struct op_call in = {req, data, len};
    int64_t t0 = clock_now_us();

    memset(r, 0, sizeof(*r));
    if (req->error) {
        reply_error(r, req->error, req->code);
        metrics_sftp_op(req->method, r->code ? r->code : "bad_request", 0);
        return;
    }
    if (req->method <= M_UNKNOWN || req->method >= M_COUNT || !ops[req->method]) {
        reply_error(r, "unknown method", "unknown_method");
        return;
    }
    ops[req->method](o, &in, r);
    if (!r->result && !r->error && !r->streamed)
        reply_error(r, "out of memory", "io");
    refused_is_fatal(o, r);
    /* A write_chunk answered early is counted when its bytes are written
     * (sftp_ops_flush), with the time the write took. */
    if (!r->write_pending)
        metrics_sftp_op(req->method, r->error ? (r->code ? r->code : "io") : NULL,
                        clock_now_us() - t0);
}

struct sftp_ops *sftp_ops_new(struct ssh_conn *c, const struct sftp_sink *sink,
                              long max_list_entries, int op_secs)
{
    struct sftp_ops *o = calloc(1, sizeof(*o));

    if (o) {
        o->c = c;
        o->sink = sink;
        o->max_list_entries = max_list_entries;
        o->op_secs = op_secs;
    }
    return o;
}

/* Handles are closed even on a dead connection: only that frees them in
 * libssh2. A dead connection has been cut (ssh_cut), so each close and
 * unlink fails at once. */
void sftp_ops_free(struct sftp_ops *o)
{
    if (!o)
        return;
    for (int i = 0; i < SFTP_MAX_WRITE_HANDLES; i++) {
        if (!o->writes[i].h)
            continue;
        close_handle(o, o->writes[i].h, NULL);
        if (!o->writes[i].resumable)
            remove_file(o, o->writes[i].path, NULL);
        drop_write(&o->writes[i]);
    }
    for (int i = 0; i < PROTO_MAX_READ_HANDLES; i++)
        if (o->reads[i].h)
            close_read(o, &o->reads[i], NULL);
    free(o);
}
