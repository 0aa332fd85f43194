/* The WebSocket side of a session (service thread only): feeds fragments to
 * the message assembler (wsframe.c), enforces the handshake order and the
 * framing rules of PROTOCOL §2-§3, hands jobs to the worker, and writes the
 * worker's frames out. Reading is paused while the worker has too much
 * backlog, the browser has too much unread output, or the process is over
 * its memory budget, so neither a fast browser nor a slow server can grow
 * our memory. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "config.h"
#include "gate.h"
#include "log.h"
#include "metrics.h"
#include "proto.h"
#include "server_ctx.h"
#include "store.h"
#include "tcpstat.h"
#include "wipe.h"
#include "wipe_alloc.h"
#include "ws.h"
#include "wsframe.h"

/* Stop reading from the browser beyond this much unwritten upload (or this
 * many queued requests); resume below half of it. Well under the 200 MiB
 * protocol cap, so a normal upload never meets that cap. */
#define RX_PAUSE_BYTES (24u * 1024 * 1024)
#define RX_PAUSE_JOBS 64
/* Largest piece of a frame handed to lws at once. */
#define TX_FRAGMENT_BYTES PROTO_READ_CHUNK_BYTES
#define TICK_USECS LWS_USEC_PER_SEC
#define MS_PER_SEC 1000
/* A session holding part of the budget (a reservation for the message it
 * is receiving, upload bytes not yet written, answers not yet sent) while
 * a message waits for the budget must keep moving data: at least
 * MESSAGE_MIN_BYTES_PER_SEC over each MESSAGE_STALL_WINDOW_SECS, counting
 * bytes from and to its browser and file bytes to and from its SFTP
 * server, or it is closed and what it held goes to those waiting.
 * Otherwise a frame header alone (a 16 MiB declared length, one byte a
 * half hour against the idle timeout) holds 16 MiB of the budget for as
 * long as its sender likes, and a few such sessions stop every other
 * user's uploads; answers a browser does not read, or uploads stuck at an
 * SFTP server of the sender's own that answers nothing, would do the
 * same, and since the queue is first come first served (admit_waiters)
 * a waiting frame that can never fit would stop every upload behind it.
 * Every direction counts, and no pause of reading exempts a holder,
 * because each pause can be the holder's own doing; an honest session
 * paused by a slow link still moves data over that link.
 * 64 KiB/s is 512 kbit/s: any uplink a browser uploads files over does
 * more, and a holder pays for what it holds in bandwidth (a GiB of budget
 * costs about 32 Mbit/s, sustained). Nobody is closed while nobody waits. */
#define MESSAGE_STALL_WINDOW_SECS 10
#define MESSAGE_MIN_BYTES_PER_SEC (64u * 1024)
/* A session that is closing sends what it has queued first; when less
 * than CLOSE_FLUSH_MIN_BYTES of it goes out in CLOSE_FLUSH_SECS (the
 * browser reads nothing, or next to nothing) it is closed without it, or
 * its output would hold memory (and its slots) for ever. Going out is what
 * the browser's TCP acknowledges (tcpstat.c), not lws taking a piece: a
 * piece is 256 KiB, and once the kernel's buffers are full a browser
 * reading at 16 KiB/s takes 16 s for one. The minimum keeps a browser that
 * acknowledges a few bytes at a time from holding the flush open for ever:
 * at 1.6 KB/s what a session can hold (its output, the kernel's buffers)
 * is out within the hour. */
#define CLOSE_FLUSH_SECS 10
#define CLOSE_FLUSH_MIN_BYTES (16u * 1024)

_Static_assert(LWS_PRE <= FRAME_HEADROOM, "frame headroom must fit LWS_PRE");

/* The request waiting for its binary frame: a job to fill, or an error to
 * answer once the frame has been consumed. */
struct pending_bin {
    int active;
    uint32_t id;
    struct job *job;
    const char *error;
    const char *code;
};

struct ws_pss {
    struct session *s;
    char client_ip[64];
    /* Receive state. */
    struct wsframe rx;
    struct pending_bin pend;
    int rx_paused;
    /* Budget reservations of the binary message being assembled (service
     * thread only): each frame's declared length is reserved when the frame
     * starts, so what a browser has announced is counted before it is
     * buffered. `frame_left` is what the current frame still declares. */
    uint64_t frame_left;
    size_t rx_reserved;     /* held for the message in progress */
    /* Paused at a message's start, in the hub's queue (wait_head), until
     * this fits. Never held: it moves to rx_reserved when admit_waiters()
     * reserves it. */
    size_t wait_reserve;
    /* The current window of the stall rule (MESSAGE_STALL_WINDOW_SECS):
     * when it started (0: not watched), the bytes from and to the browser
     * since, and the session's sftp_moved when it started. */
    int64_t stall_from_ms;
    uint64_t stall_bytes;
    uint64_t stall_sftp_from;
    /* Timers (monotonic ms) and closing. */
    int64_t last_rx_ms, last_ping_ms;
    int ping_due;
    int closing;            /* close once queued frames are out */
    /* When closing began, or later the browser last acknowledged another
     * CLOSE_FLUSH_MIN_BYTES: what CLOSE_FLUSH_SECS counts from; and the
     * browser's acknowledged bytes then (service thread only). */
    int64_t flush_ms;
    uint64_t flush_acked;
    const char *close_reason;
};

size_t ws_pss_size(void)
{
    return sizeof(struct ws_pss);
}

static void post_now(struct ws_pss *pss, char *text, int close_after)
{
    struct frame *f = frame_from_text(text);

    if (f) {
        f->close_after = close_after;
        session_post_nowait(pss->s, f);
    }
}

/* End the session once what is queued has been sent. */
static void close_soon(struct lws *wsi, struct ws_pss *pss, const char *reason)
{
    if (!pss->closing) {
        pss->closing = 1;
        pss->flush_ms = session_now_ms();
        tcpstat_bytes_acked(lws_get_socket_fd(wsi), &pss->flush_acked);
        pss->close_reason = reason;
        if (pss->s)
            session_set_phase(pss->s, PH_CLOSING);
    }
    lws_callback_on_writable(wsi);
}

/* A message of this session waits at its start for `n` bytes of the
 * budget (0: no longer): the session joins the end of the hub's queue, or
 * leaves it wherever it is. */
static void set_wait(struct ws_pss *pss, size_t n)
{
    struct session *s = pss->s;
    struct session_hub *h;

    if (!s || !pss->wait_reserve == !n) {
        pss->wait_reserve = n;
        return;
    }
    h = s->hub;
    if (n) {
        s->wait_next = NULL;
        s->wait_prev = h->wait_tail;
        if (h->wait_tail)
            h->wait_tail->wait_next = s;
        else
            h->wait_head = s;
        h->wait_tail = s;
        metrics_budget_waiting(1);
    } else {
        if (s->wait_prev)
            s->wait_prev->wait_next = s->wait_next;
        else
            h->wait_head = s->wait_next;
        if (s->wait_next)
            s->wait_next->wait_prev = s->wait_prev;
        else
            h->wait_tail = s->wait_prev;
        s->wait_next = s->wait_prev = NULL;
        metrics_budget_waiting(-1);
    }
    pss->wait_reserve = n;
}

/* Reading pauses on any of: the worker's backlog (upload bytes or queued
 * requests), output the browser has not read yet (error answers are
 * queued here without a worker, and must not grow without bound either),
 * or the process-wide budget. It resumes below half of the session's own
 * limits and under the budget. The budget pause is only taken between
 * messages: a message half-read can only be finished by reading on, and
 * pausing every session mid-message could hold the budget for ever. */
static void flow_check(struct lws *wsi, struct ws_pss *pss)
{
    struct session_backlog b;
    int between = !wsframe_receiving(&pss->rx), budget_block;

    session_backlog(pss->s, &b);
    /* Over the budget, a session that holds buffered bytes waits for them
     * to go; one that holds none may still send requests (a binary message
     * waits for its reservation instead), so logging in or a stat never
     * waits on other users' uploads. */
    budget_block = b.over_budget && between && (b.in_bytes > 0 || b.out_bytes > 0 || b.jobs > 0);
    if (!pss->rx_paused && (b.in_bytes >= RX_PAUSE_BYTES || b.jobs >= RX_PAUSE_JOBS ||
                            b.out_full || budget_block || pss->wait_reserve)) {
        pss->rx_paused = 1;
        lws_rx_flow_control(wsi, 0);
    } else if (pss->rx_paused && b.in_bytes < RX_PAUSE_BYTES / 2 && b.jobs < RX_PAUSE_JOBS / 2 &&
               b.out_bytes < SESSION_OUT_HIGH_WATER / 2 && !pss->wait_reserve && !budget_block) {
        pss->rx_paused = 0;
        lws_rx_flow_control(wsi, 1 | LWS_RXFLOW_REASON_FLAG_PROCESS_NOW);
    }
}

/* Admit waiting messages in the order they began waiting, for as long as
 * the first fits. The first that does not fit keeps its place and every
 * message behind it waits too, new ones included (reserve_frame): room
 * that frees goes to those waiting, never to whoever asks first, so
 * neither a stream of small messages nor sessions that start a new frame
 * the moment room frees can starve a waiting chunk. Called wherever the
 * budget may have freed; a tick calls it too, as a backstop. */
static void admit_waiters(struct session_hub *h)
{
    struct session *s;

    while ((s = h->wait_head) != NULL) {
        struct ws_pss *pss = lws_wsi_user(s->wsi);

        if (session_hub_reserve(h, pss->wait_reserve) < 0)
            return;
        pss->rx_reserved += pss->wait_reserve;
        set_wait(pss, 0);
        flow_check(s->wsi, pss);
    }
}

static void answer_error(struct lws *wsi, struct ws_pss *pss, uint32_t id, const char *msg,
                         const char *code)
{
    post_now(pss, proto_error(id, msg, code), 0);
    lws_callback_on_writable(wsi);
    flow_check(wsi, pss);
}

static struct job *job_new(enum job_kind kind)
{
    struct job *j = calloc(1, sizeof(*j));

    if (j)
        j->kind = kind;
    return j;
}

static void push(struct lws *wsi, struct ws_pss *pss, struct job *j)
{
    session_push_job(pss->s, j);
    flow_check(wsi, pss);
}

static void clear_pending(struct ws_pss *pss)
{
    job_free(pss->pend.job);
    memset(&pss->pend, 0, sizeof(pss->pend));
}

/* --- text frames, by handshake phase --- */

static void on_host_key_reply(struct lws *wsi, struct ws_pss *pss, const char *text, size_t len)
{
    struct job *j;

    if (!proto_is_host_key_accepted(text, len)) {
        close_soon(wsi, pss, "host key not accepted");
        return;
    }
    j = job_new(JOB_HOSTKEY_ACCEPTED);
    if (!j) {
        close_soon(wsi, pss, "out of memory");
        return;
    }
    session_set_phase(pss->s, PH_WAIT_AUTH);
    push(wsi, pss, j);
}

static void on_auth(struct lws *wsi, struct ws_pss *pss, const char *text, size_t len)
{
    struct job *j = job_new(JOB_AUTH);
    const char *err = NULL;

    if (!j || proto_parse_request(text, len, &j->req) < 0) {
        job_free(j);
        close_soon(wsi, pss, "expected the auth request");
        return;
    }
    if (j->req.method != M_AUTH)
        err = "expected auth";
    else if (proto_auth_take(&j->req, &j->auth, &err) == 0)
        err = NULL;
    if (err) {
        post_now(pss, proto_error(j->req.id, err, "bad_request"), 0);
        job_free(j);
        close_soon(wsi, pss, "bad auth request");
        return;
    }
    session_set_phase(pss->s, PH_READY);
    push(wsi, pss, j);
}

/* The browser's answer to a sign_request (`sign` extension) goes to the
 * worker waiting for it; an answer nobody waits for (unknown, late, or a
 * second one) is dropped. */
static void on_sign_answer(struct ws_pss *pss, const char *text, size_t len)
{
    uint32_t request;
    char *signature;

    if (proto_parse_sign(text, len, &request, &signature) < 0)
        return;
    if (session_sign_answer(pss->s, request, signature) < 0)
        log_debug("session %s: answer to sign_request %u ignored: not awaited", pss->s->id,
                  request);
}

static void on_request(struct lws *wsi, struct ws_pss *pss, const char *text, size_t len)
{
    struct job *j = job_new(JOB_REQUEST);

    if (!j)
        return;
    if (proto_parse_request(text, len, &j->req) < 0) {
        job_free(j);
        /* Not a request: a sign answer, or else ignored (PROTOCOL §3). */
        on_sign_answer(pss, text, len);
        return;
    }
    if (!proto_method_takes_binary(j->req.method)) {
        push(wsi, pss, j);
        return;
    }
    /* A second binary request before the first got its frame: the first
     * can no longer be served, answer it rather than leave it hanging. */
    if (pss->pend.active) {
        answer_error(wsi, pss, pss->pend.id, "binary frame missing", "bad_request");
        clear_pending(pss);
    }
    /* An invalid request still owns the next binary frame (PROTOCOL §3);
     * its error strings live in the request, kept until answered. */
    pss->pend.active = 1;
    pss->pend.id = j->req.id;
    pss->pend.error = j->req.error;
    pss->pend.code = j->req.code;
    pss->pend.job = j;
}

static void on_text(struct lws *wsi, struct ws_pss *pss, const char *text, size_t len)
{
    switch (session_phase(pss->s, NULL)) {
    case PH_WAIT_HOSTKEY:
        on_host_key_reply(wsi, pss, text, len);
        break;
    case PH_WAIT_AUTH:
        on_auth(wsi, pss, text, len);
        break;
    case PH_READY:
        on_request(wsi, pss, text, len);
        break;
    case PH_CONNECTING:
        /* Nothing may come before the host key: above all no credentials. */
        close_soon(wsi, pss, "frame before host key");
        break;
    case PH_CLOSING:
        break;
    }
}

/* --- binary frames --- */

static void oversize(struct lws *wsi, struct ws_pss *pss)
{
    uint32_t id = pss->pend.active ? pss->pend.id : 0;

    post_now(pss, proto_error(id, "payload too large", "limit"), 1);
    clear_pending(pss);
    close_soon(wsi, pss, "payload too large");
}

/* A whole binary message arrived: hand it to the request waiting for it,
 * answer that request's error, or drop it when nothing waits. */
static void bin_complete(struct lws *wsi, struct ws_pss *pss)
{
    struct server *srv = server_of(wsi);
    struct job *j = pss->pend.job;
    struct session_backlog b;
    size_t len;
    uint8_t *data = wsframe_take_binary(&pss->rx, &len);

    if (!pss->pend.active)
        goto out;  /* nothing pending: dropped */
    if (pss->pend.error) {
        answer_error(wsi, pss, pss->pend.id, pss->pend.error, pss->pend.code);
        goto out;
    }
    session_backlog(pss->s, &b);
    if (b.in_bytes + len > srv->cfg->upload_buffer_bytes) {
        answer_error(wsi, pss, pss->pend.id, "stream buffer limit exceeded", "limit");
        goto out;
    }
    j->data = data;
    j->len = len;
    data = NULL;
    pss->pend.job = NULL;
    push(wsi, pss, j);
out:
    clear_pending(pss);
    free(data);
}

/* Give back what the message in progress reserved (it was completed,
 * dropped or the session is closing), and stop waiting for what it did
 * not get. */
static void release_reserved(struct ws_pss *pss)
{
    if (pss->s)
        session_hub_release(pss->s->hub, pss->rx_reserved);
    pss->rx_reserved = 0;
    set_wait(pss, 0);
}

/* Reserve the process budget for a binary frame that starts with this
 * fragment and whose bytes will be stored. A frame that opens its message
 * and does not fit, or finds others waiting, pauses reading (this
 * fragment, at most one receive buffer, is already taken) in the hub's
 * queue until admit_waiters() admits it; the message's own reservation is
 * never waited for, so admitted messages always complete. A later frame
 * of a fragmented message belongs to a message already admitted: it is
 * reserved when it fits, waiting or not (the message is at most
 * PROTO_MAX_FRAME_BYTES, and its session is held to the stall rule), and
 * when it does not fit the message is dropped with the over-cap answer,
 * since pausing mid-message could hold the budget for ever. Browsers send
 * a write_chunk as one frame. */
static void reserve_frame(struct lws *wsi, struct ws_pss *pss, size_t len, uint64_t remaining,
                          int first)
{
    struct session_hub *h = pss->s->hub;
    uint64_t declared = remaining > PROTO_MAX_FRAME_BYTES ? PROTO_MAX_FRAME_BYTES + 1
                                                           : remaining + len;

    if (declared > PROTO_MAX_FRAME_BYTES)
        return;  /* the assembler refuses it: nothing to reserve */
    if ((!first || !h->wait_head) && session_hub_reserve(h, (size_t)declared) == 0) {
        pss->rx_reserved += (size_t)declared;
    } else if (first) {
        set_wait(pss, (size_t)declared);
        flow_check(wsi, pss);
    } else {
        wsframe_drop(&pss->rx);
        pss->pend.error = "stream buffer limit exceeded";
        pss->pend.code = "limit";
    }
}

/* One fragment as lws delivers it. Before the host key is accepted a
 * binary frame ends the session; after that a stray one is dropped (§3).
 * Its bytes are kept only when a valid request waits for them. */
static void on_receive(struct lws *wsi, struct ws_pss *pss, void *in, size_t len)
{
    int binary = lws_frame_is_binary(wsi);
    int keep = pss->pend.active && !pss->pend.error;
    int rc;

    metrics_bytes_from_browser(len);
    if (pss->closing)
        return;
    pss->last_rx_ms = session_now_ms();
    pss->stall_bytes += len;
    if (binary) {
        enum session_phase ph = session_phase(pss->s, NULL);
        if (ph == PH_CONNECTING || ph == PH_WAIT_HOSTKEY) {
            close_soon(wsi, pss, "binary frame before host key");
            return;
        }
    }
    if (binary && keep && !wsframe_receiving(&pss->rx)) {
        /* A kept binary message starts: assemble it in the buffer of the
         * last chunk the worker finished, if the session kept one. */
        size_t cap;
        uint8_t *spare = session_take_spare(pss->s, &cap);
        wsframe_offer_binary(&pss->rx, spare, cap);
    }
    if (binary && pss->frame_left == 0 && len > 0 &&
        (lws_is_first_fragment(wsi) ? keep : pss->rx.keep))
        reserve_frame(wsi, pss, len, lws_remaining_packet_payload(wsi),
                      lws_is_first_fragment(wsi));
    pss->frame_left = binary ? lws_remaining_packet_payload(wsi) : 0;
    rc = wsframe_feed(&pss->rx, in, len, lws_is_first_fragment(wsi),
                      lws_is_final_fragment(wsi), binary, lws_remaining_packet_payload(wsi),
                      keep);
    if (rc != WSF_MORE)
        release_reserved(pss);  /* a whole message now counts as a job, or was dropped */
    /* lws's receive buffer holds the unmasked frame, credentials included. */
    if (!binary)
        wipe_mem(in, len);
    switch (rc) {
    case WSF_MORE:
        return;
    case WSF_BINARY:
        bin_complete(wsi, pss);
        /* Its reservation now counts as the job's bytes, or was freed. */
        admit_waiters(pss->s->hub);
        return;
    case WSF_TEXT:
        on_text(wsi, pss, pss->rx.text, pss->rx.len);
        /* The frame may have carried credentials. */
        wsframe_text_done(&pss->rx);
        /* So may the dead stack below us: parsing it left key text there
         * (wipe_alloc.h says how). Any text frame may be an auth frame, and
         * 64 KiB of zeroing is cheap next to a JSON parse. */
        wipe_thread_residue();
        return;
    case WSF_E_TOO_LARGE:
        oversize(wsi, pss);
        return;
    case WSF_E_PROTOCOL:
        close_soon(wsi, pss, "message inside an unfinished message");
        return;
    default:
        close_soon(wsi, pss, "out of memory");
        return;
    }
}

/* --- sending --- */

static int send_next(struct lws *wsi, struct ws_pss *pss)
{
    struct frame *f = session_peek_frame(pss->s);
    size_t chunk;
    int flags, close_after;

    /* No ping for a session being closed: its pong could cross our Close
     * and meet a socket already shut, and the browser would see the
     * connection reset instead of the close. */
    if (pss->ping_due && !pss->closing && (!f || f->sent == 0)) {
        unsigned char ping[LWS_PRE + 1];
        pss->ping_due = 0;
        if (lws_write(wsi, ping + LWS_PRE, 0, LWS_WRITE_PING) < 0)
            return -1;
        /* One write per turn: come back for whatever else is due, a close
         * included (the tick that finds a session idle may make a ping due
         * too, and its one writable turn went to the ping). */
        lws_callback_on_writable(wsi);
        return 0;
    }
    if (!f) {
        if (pss->closing || session_worker_finished(pss->s))
            goto close;
        return 0;
    }
    if (f->abort) {
        /* A message cut short: closing is the only way not to pass it off
         * as complete (a Close is a control frame, legal mid-message). */
        pss->close_reason = "answer cut short";
        lws_close_reason(wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, NULL, 0);
        return -1;
    }
    chunk = f->len - f->sent;
    if (chunk > TX_FRAGMENT_BYTES)
        chunk = TX_FRAGMENT_BYTES;
    /* A queued frame may itself be a fragment of a larger message (frame.h):
     * only its first piece of a first fragment starts the message, only the
     * last piece of a last fragment ends it. */
    flags = lws_write_ws_flags(f->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT,
                               !f->cont && f->sent == 0,
                               !f->more && f->sent + chunk == f->len);
    /* lws writes the frame header into the LWS_PRE bytes before the data:
     * the headroom for the first piece, already-sent payload after that. */
    if (lws_write(wsi, frame_data(f) + f->sent, chunk, (enum lws_write_protocol)flags) <
        (int)chunk)
        return -1;
    metrics_bytes_to_browser(chunk);
    pss->stall_bytes += chunk;
    f->sent += chunk;
    if (f->sent < f->len) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    close_after = f->close_after;
    session_pop_frame(pss->s);
    if (close_after)
        goto close;
    lws_callback_on_writable(wsi);
    return 0;
close:
    lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, NULL, 0);
    return -1;
}

/* --- lifecycle --- */

/* The gate accepted this upgrade; read the target again (lws still has the
 * headers during ESTABLISHED) and start the session's worker. */
static int established(struct lws *wsi, struct ws_pss *pss)
{
    struct server *srv = server_of(wsi);
    char host[512], port[512], lease[sizeof(srv->lease_id)] = "";
    const char *h = lws_get_urlarg_by_name(wsi, "host=", host, sizeof(host));
    const char *p = lws_get_urlarg_by_name(wsi, "port=", port, sizeof(port));
    struct upgrade_target t;
    struct session *s;

    /* A shared store took the per-IP slot, as a lease, when it said yes
     * (gate.c); from here it is this session's to renew or give back. */
    if (srv->lease_wsi == wsi) {
        memcpy(lease, srv->lease_id, sizeof(lease));
        srv->lease_wsi = NULL;
    }
    memset(pss, 0, sizeof(*pss));
    wsframe_init(&pss->rx, PROTO_MAX_TEXT_BYTES, PROTO_MAX_FRAME_BYTES);
    if (!h || !p || access_target(h, p, &t) < 0 ||
        gate_client_ip(wsi, pss->client_ip, sizeof(pss->client_ip)) < 0)
        goto refuse;
    s = session_new(&srv->hub, pss->client_ip, t.host, t.port);
    if (!s)
        goto refuse;
    pss->s = s;
    s->wsi = wsi;
    if (t.pinned) {
        s->addr = t.addr;
        s->addrlen = t.addrlen;
        s->pinned = 1;
    }
    /* The gate checked the per-IP limit; this takes the slot (and refuses
     * should another upgrade have taken the last one meanwhile). */
    if (access_session_open_lease(srv->access, pss->client_ip, lease) != 0)
        goto refuse;
    if (lease[0])
        session_hold_ip_lease(s, lease);
    else
        session_hold_ip_slot(s);
    pss->last_rx_ms = pss->last_ping_ms = session_now_ms();
    log_info("session %s start: client=%s target=%s:%d", s->id, s->client_ip, s->host,
             s->port);
    if (session_start(s, srv->worker) < 0) {
        log_error("session %s: cannot start a worker thread", s->id);
        return -1;
    }
    lws_set_timer_usecs(wsi, TICK_USECS);
    return 0;
refuse:
    if (lease[0] && pss->client_ip[0])
        access_session_close_lease(srv->access, pss->client_ip, lease);
    else if (lease[0])
        store_lease_drop(access_store(srv->access), srv->lease_key, lease);
    return -1;
}

/* The per-IP slot is not given back here: the session keeps it until it
 * is freed (session.c), however long its worker takes to clean up. */
static void closed(struct lws *wsi, struct ws_pss *pss)
{
    (void)wsi;
    clear_pending(pss);
    release_reserved(pss);
    wsframe_free(&pss->rx);
    if (pss->s) {
        const char *reason = pss->close_reason;
        /* What it held, or reserved, is free: those waiting may go. */
        admit_waiters(pss->s->hub);
        if (!reason)
            reason = session_phase(pss->s, NULL) == PH_WAIT_HOSTKEY
                         ? "browser closed: host key not accepted" : "browser closed";
        session_ws_gone(pss->s, reason);
        pss->s->wsi = NULL;
        session_unref(pss->s);
        pss->s = NULL;
    }
}

/* While reading is paused lws cannot notice the browser leaving, and a
 * worker waiting to send to it would wait for ever: ask the kernel. */
static int peer_gone(struct lws *wsi)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);

    if (getsockopt(lws_get_socket_fd(wsi), IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return 1;
    return ti.tcpi_state == TCP_CLOSE_WAIT || ti.tcpi_state == TCP_CLOSE;
}

/* CLOSE_FLUSH_SECS: 1 when a closing session's output has not moved
 * CLOSE_FLUSH_MIN_BYTES for that long. */
static int flush_stalled(struct lws *wsi, struct ws_pss *pss, int64_t now)
{
    uint64_t acked;

    if (tcpstat_bytes_acked(lws_get_socket_fd(wsi), &acked) == 0 &&
        acked - pss->flush_acked >= CLOSE_FLUSH_MIN_BYTES) {
        pss->flush_acked = acked;
        pss->flush_ms = now;
    }
    return now - pss->flush_ms >= (int64_t)CLOSE_FLUSH_SECS * MS_PER_SEC;
}

/* The bytes of the budget this session holds (MESSAGE_MIN_BYTES_PER_SEC). */
static size_t budget_held(struct ws_pss *pss)
{
    struct session_backlog b;

    session_backlog(pss->s, &b);
    return pss->rx_reserved + b.in_bytes + b.out_bytes;
}

/* The stall rule (MESSAGE_MIN_BYTES_PER_SEC): 1 when this session held
 * part of the budget and moved too little over a whole window while a
 * message waited for the budget. A window only runs while all of that
 * holds. */
static int stalled_holder(struct ws_pss *pss, int64_t now, size_t *held)
{
    int watched = 0;
    uint64_t sftp = atomic_load(&pss->s->sftp_moved);

    if (pss->s->hub->wait_head) {
        *held = budget_held(pss);
        watched = *held > 0;
    }
    if (watched && pss->stall_from_ms != 0) {
        if (now - pss->stall_from_ms < (int64_t)MESSAGE_STALL_WINDOW_SECS * MS_PER_SEC)
            return 0;
        if (pss->stall_bytes + (sftp - pss->stall_sftp_from) <
            (uint64_t)MESSAGE_MIN_BYTES_PER_SEC * MESSAGE_STALL_WINDOW_SECS)
            return 1;
    }
    /* Not watched, its first tick watched, or a window passed: start over. */
    pss->stall_from_ms = watched ? now : 0;
    pss->stall_bytes = 0;
    pss->stall_sftp_from = sftp;
    return 0;
}

static int tick(struct lws *wsi, struct ws_pss *pss)
{
    const struct config *cfg = server_of(wsi)->cfg;
    int64_t now = session_now_ms(), since;
    enum session_phase ph = session_phase(pss->s, &since);
    size_t held = 0;

    if (pss->rx_paused && peer_gone(wsi)) {
        pss->close_reason = "browser gone while reading was paused";
        return -1;
    }
    /* Closed at once, not after its output: a holder that does not read
     * would keep the reservation while its answers wait. */
    if (stalled_holder(pss, now, &held)) {
        log_info("session %s: held %zu KiB of the memory budget and moved less than "
                 "%u KiB/s for %d s while others waited (MESSAGE_MIN_BYTES_PER_SEC)",
                 pss->s->id, held / 1024, MESSAGE_MIN_BYTES_PER_SEC / 1024,
                 MESSAGE_STALL_WINDOW_SECS);
        pss->close_reason = "stalled holding the memory budget";
        return -1;
    }
    if (pss->closing && flush_stalled(wsi, pss, now)) {
        log_info("session %s: closing (%s), and nothing of its last answers went out for "
                 "%d s (CLOSE_FLUSH_SECS)", pss->s->id, pss->close_reason, CLOSE_FLUSH_SECS);
        return -1;
    }
    /* A browser the relay keeps waiting for the budget is not idle. */
    if (pss->wait_reserve)
        pss->last_rx_ms = now;
    if ((ph == PH_WAIT_HOSTKEY || ph == PH_WAIT_AUTH) &&
        now - since >= (int64_t)cfg->host_key_timeout_secs * MS_PER_SEC)
        close_soon(wsi, pss, ph == PH_WAIT_HOSTKEY ? "host key not accepted in time"
                                                   : "no auth request in time");
    else if (ph == PH_READY && now - pss->last_rx_ms >= (int64_t)cfg->idle_timeout_secs * MS_PER_SEC)
        close_soon(wsi, pss, "idle timeout");
    if (now - pss->last_ping_ms >= (int64_t)cfg->ws_ping_interval_secs * MS_PER_SEC) {
        pss->last_ping_ms = now;
        pss->ping_due = 1;
        lws_callback_on_writable(wsi);
    }
    /* Waiting messages are admitted wherever the budget frees; this is the
     * backstop for frees nothing here hears of (a session freed after its
     * worker ended, say). */
    admit_waiters(pss->s->hub);
    if (pss->rx_paused)
        flow_check(wsi, pss);
    lws_set_timer_usecs(wsi, TICK_USECS);
    return 0;
}

/* Sessions with news from their worker: output to send, backlog drained,
 * or the worker finished (join it; close the WebSocket when flushed). */
static void notified(struct server *srv)
{
    struct session *s = session_hub_take_notified(&srv->hub), *next;

    for (; s; s = next) {
        struct lws *wsi = s->wsi;

        next = session_hub_notified_next(&srv->hub, s);
        if (session_worker_finished(s))
            session_join(s);
        if (wsi) {
            struct ws_pss *pss = lws_wsi_user(wsi);
            if (pss->rx_paused)
                flow_check(wsi, pss);
            lws_callback_on_writable(wsi);
        }
        session_unref(s);
    }
    /* A worker that wrote a job's bytes freed that much of the budget. */
    admit_waiters(&srv->hub);
}

static void drain_one(struct session *s, void *arg)
{
    int force = *(int *)arg;

    if (force)
        session_cut(s);
    if (s->wsi) {
        struct ws_pss *pss = lws_wsi_user(s->wsi);
        /* A binary frame still arriving is an operation in progress too,
         * and so is a session still being set up: a browser that got its
         * upgrade just before the signal finishes logging in (a rolling
         * restart then fails no new session), bounded by the deadline. */
        enum session_phase ph = session_phase(s, NULL);
        int receiving = pss->pend.active || wsframe_receiving(&pss->rx) ||
                        ph == PH_CONNECTING || ph == PH_WAIT_HOSTKEY || ph == PH_WAIT_AUTH;
        if (force || (session_idle(s) && !receiving))
            close_soon(s->wsi, pss, "server shutting down");
    }
}

void ws_drain_tick(struct server *srv, int force)
{
    session_hub_for_each(&srv->hub, drain_one, &force);
}

int ws_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct ws_pss *pss = user;

    switch (reason) {
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return gate_confirm_upgrade(wsi, in);
    case LWS_CALLBACK_ESTABLISHED:
        return established(wsi, pss);
    case LWS_CALLBACK_RECEIVE:
        if (pss->s)
            on_receive(wsi, pss, in, len);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (!pss->s || send_next(wsi, pss) < 0)
            return -1;
        /* Output went out: reading paused for it may resume, and a frame
         * sent whole gave its bytes back to the budget. */
        admit_waiters(pss->s->hub);
        if (pss->rx_paused)
            flow_check(wsi, pss);
        return 0;
    case LWS_CALLBACK_TIMER:
        return pss->s ? tick(wsi, pss) : 0;
    case LWS_CALLBACK_CLOSED:
        closed(wsi, pss);
        return 0;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        notified(lws_context_user(lws_get_context(wsi)));
        gate_store_answers(lws_context_user(lws_get_context(wsi)));
        return 0;
    default:
        return 0;
    }
}
