/* A browser session: the meeting point of the WebSocket side (service
 * thread, ws.c) and the SSH side (one worker thread, worker.c). Neither
 * side includes the other's library; they trade jobs and frames through
 * two bounded queues here, under one mutex. */
#ifndef WC_SESSION_H
#define WC_SESSION_H

#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "frame.h"
#include "proto.h"

struct config;
struct access;

/* Where the handshake of PROTOCOL §2 stands. Set by whichever side moves it
 * forward; read by both under the session mutex. */
enum session_phase {
    PH_CONNECTING,    /* worker connecting / key exchange */
    PH_WAIT_HOSTKEY,  /* host_key sent, waiting for host_key_accepted */
    PH_WAIT_AUTH,     /* accepted, waiting for the auth request */
    PH_READY,         /* auth request taken; requests flow */
    PH_CLOSING,
};

enum job_kind { JOB_HOSTKEY_ACCEPTED, JOB_AUTH, JOB_REQUEST };

/* One unit of work for the worker. Owns its request, credentials and
 * payload; released by job_free(), which wipes credentials. */
struct job {
    struct job *next;
    enum job_kind kind;
    struct proto_request req;
    struct proto_auth auth;    /* JOB_AUTH */
    uint8_t *data;             /* binary payload of write / write_chunk */
    size_t len;
};

void job_free(struct job *j);

struct session_hub;

/* Who may touch what. Each field says which lock guards it:
 *   mu        the session's own mutex, s->mu;
 *   hub mutex the hub's mutex, h->mu;
 *   service   the lws service thread only, no lock;
 *   worker    the worker thread only once session_start() has run (the
 *             service thread may set it before);
 *   fixed     written before session_start(), read-only after that.
 * Lock order: the hub mutex before a session mutex (session_notify takes a
 * reference under the hub lock). Never take the hub mutex while holding a
 * session's. */
struct session {
    char id[17];                    /* fixed */
    char client_ip[64];             /* fixed */
    char host[256];                 /* fixed */
    int port;                       /* fixed */
    /* The pinned target: set by the service thread at the upgrade when the
     * host was an IP literal, else by the worker after resolving, before
     * it connects; only the worker reads it. */
    struct sockaddr_storage addr;   /* worker */
    socklen_t addrlen;              /* worker */
    int pinned;                     /* worker */
    struct session_hub *hub;        /* fixed */
    int64_t started_ms;             /* fixed; CLOCK_MONOTONIC */
    int ip_counted;                 /* fixed: holds a per-IP slot until freed */
    char ip_lease[48];              /* fixed once set: a shared store's lease
                                     * (STORE_LEASE_ID_MAX), "" for none */

    pthread_mutex_t mu;             /* guards the fields marked mu */
    pthread_cond_t cv;              /* mu; CLOCK_MONOTONIC; worker waits: jobs, out space */
    enum session_phase phase;       /* mu */
    int64_t phase_since_ms;         /* mu */
    struct job *jobs, **jobs_tail;  /* mu */
    int n_jobs;                     /* mu */
    size_t in_bytes;                /* mu: payload accepted, not yet written */
    struct frame *out, **out_tail;  /* mu */
    size_t out_bytes;               /* mu */
    /* The worker has queued the start of a fragmented message but not its
     * end yet (frame.h): frames posted by the service thread wait in `held`
     * until it has, since only control frames may come between fragments. */
    int out_open;                   /* mu */
    struct frame *held, **held_tail; /* mu */
    int ws_gone;                    /* mu: the browser side is closed */
    int evicted;                    /* mu: to end, its libssh2 memory is needed (session_evict) */
    int64_t gone_ms;                /* mu: when ws_gone was set */
    int worker_done;                /* mu: the worker thread has finished */
    int refs;                       /* mu */
    int busy;                       /* mu: the worker is running a job */
    int sock;                       /* mu: worker's TCP socket, -1 when none */
    uint64_t bytes_up, bytes_down;  /* mu */
    /* Bytes the worker has read from or written to the SFTP server, as
     * libssh2 returns them (a fraction of a chunk at a time): ws.c's stall
     * rule counts them as the session's progress. */
    _Atomic uint64_t sftp_moved;    /* atomic, no lock */
    /* ws.c's queue of sessions whose binary message waits at its start for
     * room in the budget (struct session_hub's wait_head). */
    struct session *wait_next, *wait_prev;  /* service */
    /* The payload buffer of the last upload job the worker finished, kept
     * for the next binary message instead of freed and mapped afresh
     * (session_job_done, session_take_spare). One at most; not kept when
     * the hub's spares are at their cap, freed after SESSION_SPARE_IDLE_MS
     * unused and when the upload is closed or aborted. File data is
     * ciphertext: it is not wiped. */
    uint8_t *spare;                 /* mu */
    size_t spare_len;               /* mu: its usable size */
    int64_t spare_ms;               /* mu: when it was kept */
    char close_reason[48];          /* mu */
    /* The one sign_request in flight (`sign` extension, worker.c): its id
     * while the worker waits for the browser, 0 otherwise, and the answer
     * once it came. An answer for any other id is dropped. */
    uint32_t sign_request;          /* mu */
    int sign_answered;              /* mu */
    char *sign_answer;              /* mu: the base64 signature, malloc'd, or NULL */
    uint32_t sign_last;             /* worker: the last id handed out */

    int notified;                   /* hub mutex: on the hub's notify list */
    struct session *notify_next;    /* hub mutex */
    struct session *hub_next, *hub_prev;  /* hub mutex */

    pthread_t thread;               /* service */
    int thread_started;             /* service */
    void *stack;                    /* service: the worker's stack mapping */
    size_t stack_len;               /* service */
    int release_logged;             /* service: the release cut was logged */
    void *wsi;                      /* service; NULL once the WebSocket closed */
};

/* A session whose browser has gone is released (its SSH connection cut,
 * so the worker's clean-up fails fast and the thread ends) when clean-up
 * takes longer than this. Until then it keeps its MAX_SESSIONS slot and
 * its per-IP slot. */
#define SESSION_RELEASE_MS (10 * 1000)

/* Every live session, and the list of those with news for the service
 * thread. `wake` is called (from any thread) after a session is put on the
 * notify list; the lws side sets it to lws_cancel_service. `buffered` is
 * the process-wide count of bytes held for browsers (upload accepted, not
 * yet written, plus output queued), which `budget` bounds: past it the
 * service thread pauses reading from browsers. */
struct session_hub {
    pthread_mutex_t mu;             /* the hub mutex */
    struct session *live;           /* hub mutex */
    struct session *notify;         /* hub mutex */
    int n_live;                     /* hub mutex */
    const struct config *cfg;       /* fixed */
    struct access *access;          /* fixed; NULL in unit tests */
    void (*wake)(void *arg);        /* hub mutex */
    void *wake_arg;                 /* hub mutex */
    size_t budget;                  /* fixed: RELAY_MEMORY_BUDGET_MIB, or derived */
    _Atomic size_t buffered;        /* atomic, no lock */
    /* Bytes of all sessions' spare upload buffers, at most
     * budget / SESSION_SPARE_BUDGET_DIV. */
    _Atomic size_t spare_bytes;     /* atomic, no lock */
    int64_t last_tick_ms;           /* service */
    /* Sessions whose binary message waits at its start for room in the
     * budget, in the order they began waiting: ws.c admits them first come
     * first served, and no new message goes ahead of them. */
    struct session *wait_head, *wait_tail;  /* service */
};

/* A spare upload buffer (see struct session) unused this long is freed:
 * it only pays off while an upload goes on, chunk after chunk. */
#define SESSION_SPARE_IDLE_MS 2000
/* All sessions' spares together stay under this share of the budget. */
#define SESSION_SPARE_BUDGET_DIV 4

/* Monotonic milliseconds, the clock of every timer in the relay. */
int64_t session_now_ms(void);

void session_hub_init(struct session_hub *h, const struct config *cfg, struct access *access);
void session_hub_destroy(struct session_hub *h);
int session_hub_count(struct session_hub *h);
void session_hub_set_wake(struct session_hub *h, void (*wake)(void *), void *arg);

/* Pop the notified sessions as a list. Walk it with session_hub_notified_next(),
 * called for each session before looking at it (never read notify_next
 * directly: it re-arms the session's notification). Each carries a
 * reference the caller drops with session_unref() when done with it. */
struct session *session_hub_take_notified(struct session_hub *h);
struct session *session_hub_notified_next(struct session_hub *h, struct session *s);

/* Call `fn` for each live session under the hub lock (fn must not lock the
 * hub). Used for shutdown. */
void session_hub_for_each(struct session_hub *h, void (*fn)(struct session *, void *), void *arg);

/* Once a second from the service loop (it rate-limits itself, so calling
 * it more often is harmless): cut the SSH connection of every session
 * whose browser left more than SESSION_RELEASE_MS ago and whose worker is
 * still cleaning up. Service thread only. */
void session_hub_tick(struct session_hub *h);

/* The process-wide budget is used up (reading from browsers should pause). */
int session_hub_over_budget(struct session_hub *h);
/* Reserve `n` bytes of the budget for a message about to arrive (ws.c
 * reserves each binary frame's declared length at its start, so a message
 * being assembled is counted before its bytes are buffered). Returns 0, or
 * -1 when that would exceed the budget; any thread. */
int session_hub_reserve(struct session_hub *h, size_t n);
void session_hub_release(struct session_hub *h, size_t n);

/* A new session with one reference (the WebSocket side's), registered in
 * the hub. NULL when out of memory. */
struct session *session_new(struct session_hub *h, const char *client_ip,
                            const char *host, int port);
void session_ref(struct session *s);
/* Drop a reference; the last one frees the session and anything queued. */
void session_unref(struct session *s);

/* The session holds a per-IP slot (access_session_open succeeded); it is
 * given back with access_session_close() when the session is freed, not
 * when its WebSocket closes, so a session still cleaning up counts against
 * its IP. Service thread, before session_start(). */
void session_hold_ip_slot(struct session *s);

/* The same, for a slot held as a shared store's lease (store.h), released
 * with it. */
void session_hold_ip_lease(struct session *s, const char *lease);

/* Start the worker thread running `fn(s)`; it holds a reference that the
 * service thread drops after session_join(). Returns 0 or -1. */
int session_start(struct session *s, void *(*fn)(void *));
/* Join a finished worker and drop its reference. Service thread only. */
void session_join(struct session *s);

/* Put `s` on the hub's notify list (if not already) and wake the service
 * thread. Any thread. */
void session_notify(struct session *s);

/* --- WebSocket side (service thread) --- */

/* Queue a job for the worker; takes ownership. */
void session_push_job(struct session *s, struct job *j);

/* The spare upload buffer, for the next binary message to be assembled
 * in (the caller owns it and frees it with free()), with its usable size
 * in *len; NULL when there is none. */
uint8_t *session_take_spare(struct session *s, size_t *len);

/* What a session holds for its browser, and whether reading from that
 * browser should pause: over its own limits or over the process budget. */
struct session_backlog {
    size_t in_bytes;     /* payload accepted and not yet written */
    int jobs;            /* queued jobs */
    size_t out_bytes;    /* output queued for the browser */
    int out_full;        /* out_bytes at or over SESSION_OUT_HIGH_WATER */
    int over_budget;     /* the process-wide budget is used up */
};
void session_backlog(struct session *s, struct session_backlog *b);

/* Output queued for one browser beyond which the worker waits in
 * session_post() and the service thread pauses reading from the browser. */
#define SESSION_OUT_HIGH_WATER (1u * 1024 * 1024)

/* Queue one frame from the service thread, which must never block: it is
 * counted like any output, and the caller pauses reading (flow_check in
 * ws.c) once the output is over SESSION_OUT_HIGH_WATER. */
void session_post_nowait(struct session *s, struct frame *f);
/* The frame to send next, or NULL. It stays queued until popped. */
struct frame *session_peek_frame(struct session *s);
/* Remove the head frame (after it was sent) and free it. */
void session_pop_frame(struct session *s);
/* The browser is gone: tell the worker to wind down. */
void session_ws_gone(struct session *s, const char *reason);

/* The phase, and since when (monotonic ms) when `since_ms` is not NULL. */
enum session_phase session_phase(struct session *s, int64_t *since_ms);
/* Nothing queued, running or waiting to be sent: safe to close in a drain. */
int session_idle(struct session *s);
int session_worker_finished(struct session *s);
/* Cut the SSH connection so a worker stuck in a blocking call returns. */
void session_cut(struct session *s);
/* End the session because others need the memory its libssh2 holds
 * (wipe_alloc.h, SSH_MEMORY_BUDGET_MIB): cut its SSH connection and wake
 * its worker, busy or idle. Any thread; takes only the session's lock. */
void session_evict(void *session);
void session_set_phase(struct session *s, enum session_phase p);

/* --- Worker side --- */

/* Wait up to `timeout_ms` for a job. Returns the job (caller owns it), or
 * NULL on timeout or when the browser is gone. *gone is SESSION_WS_GONE
 * when the browser is gone (no job is returned then), SESSION_EVICTED
 * once the session was evicted (queued jobs are still returned, to be
 * answered), 0 otherwise. */
#define SESSION_WS_GONE 1
#define SESSION_EVICTED 2
struct job *session_next_job(struct session *s, int timeout_ms, int *gone);
/* The worker finished a job: its payload no longer counts as backlog.
 * The payload buffer may be kept as the session's spare (j->data is then
 * NULL), to be filled with the next upload chunk. */
void session_job_done(struct session *s, struct job *j);
/* Queue frames for the browser (either may be NULL; both go out back to
 * back). Blocks while too much output is queued, so a browser that does
 * not read cannot make us buffer a whole file. Takes ownership; returns 0,
 * or -1 when the browser is gone (frames freed). */
int session_post(struct session *s, struct frame *a, struct frame *b);
int session_is_gone(struct session *s);
void session_set_sock(struct session *s, int fd);
/* --- The `sign` extension: a signature the browser makes --- */

/* Worker: a new signature request id (never 0), now awaited. */
uint32_t session_sign_open(struct session *s);

#define SESSION_SIGN_TIMEOUT (-1)
#define SESSION_SIGN_GONE (-2)
/* Worker: wait up to `timeout_ms` for the browser's answer to `request`.
 * Returns 0 with *answer (the caller frees it; NULL when the answer had no
 * signature), SESSION_SIGN_TIMEOUT, or SESSION_SIGN_GONE when the browser
 * left. Either way the request is closed: a later answer is ignored, so no
 * request outlives the wait, nor the session. */
int session_sign_wait(struct session *s, uint32_t request, int timeout_ms, char **answer);

/* Service thread: the browser answered `request`; takes `signature`
 * (malloc'd or NULL). Returns 0 when the worker waits for exactly that
 * request and had no answer yet, else -1 (the answer is dropped). */
int session_sign_answer(struct session *s, uint32_t request, char *signature);

/* Mark the worker finished and notify; the last thing a worker does. */
void session_worker_exit(struct session *s, const char *reason);

#endif
