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

struct session {
    /* Fixed at creation. */
    char id[17];
    char client_ip[64];
    char host[256];
    int port;
    struct sockaddr_storage addr;   /* pinned target when `pinned` */
    socklen_t addrlen;
    int pinned;
    struct session_hub *hub;
    time_t started;

    pthread_mutex_t mu;
    pthread_cond_t cv;              /* worker waits here: jobs, out space */
    enum session_phase phase;
    time_t phase_since;
    struct job *jobs, **jobs_tail;
    int n_jobs;
    size_t in_bytes;                /* payload accepted, not yet written */
    struct frame *out, **out_tail;
    size_t out_bytes;
    /* The worker has queued the start of a fragmented message but not its
     * end yet (frame.h): frames posted by the service thread wait in `held`
     * until it has, since only control frames may come between fragments. */
    int out_open;
    struct frame *held, **held_tail;
    int ws_gone;                    /* the browser side is closed */
    int worker_done;                /* the worker thread has finished */
    int refs;
    int notified;                   /* on the hub's notify list */
    struct session *notify_next;
    struct session *hub_next, *hub_prev;
    int busy;                       /* the worker is running a job */
    int sock;                       /* worker's TCP socket, -1 when none */
    pthread_t thread;
    int thread_started;

    void *wsi;                      /* service thread only; NULL once closed */

    /* Statistics, updated by the side that moves the bytes. */
    uint64_t bytes_up, bytes_down;
    char close_reason[48];
};

/* Every live session, and the list of those with news for the service
 * thread. `wake` is called (from any thread) after a session is put on the
 * notify list; the lws side sets it to lws_cancel_service. */
struct session_hub {
    pthread_mutex_t mu;
    struct session *live;
    struct session *notify;
    int n_live;
    const struct config *cfg;
    struct access *access;
    void (*wake)(void *arg);
    void *wake_arg;
};

void hub_init(struct session_hub *h, const struct config *cfg, struct access *access);
void hub_destroy(struct session_hub *h);
int hub_count(struct session_hub *h);
void hub_set_wake(struct session_hub *h, void (*wake)(void *), void *arg);

/* Pop the notified sessions as a list. Walk it with hub_notified_next(),
 * called for each session before looking at it (never read notify_next
 * directly: it re-arms the session's notification). Each carries a
 * reference the caller drops with session_unref() when done with it. */
struct session *hub_take_notified(struct session_hub *h);
struct session *hub_notified_next(struct session_hub *h, struct session *s);

/* Call `fn` for each live session under the hub lock (fn must not lock the
 * hub). Used for shutdown. */
void hub_for_each(struct session_hub *h, void (*fn)(struct session *, void *), void *arg);

/* A new session with one reference (the WebSocket side's), registered in
 * the hub. NULL when out of memory. */
struct session *session_new(struct session_hub *h, const char *client_ip,
                            const char *host, int port);
void session_ref(struct session *s);
/* Drop a reference; the last one frees the session and anything queued. */
void session_unref(struct session *s);

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
/* Payload bytes accepted and not yet written, and queued jobs. */
void session_backlog(struct session *s, size_t *bytes, int *jobs);
/* Queue one frame from the service thread, which must never block: it
 * bypasses the output limit and is only used for small error frames. */
void session_post_nowait(struct session *s, struct frame *f);
/* The frame to send next, or NULL. It stays queued until popped. */
struct frame *session_peek_frame(struct session *s);
/* Remove the head frame (after it was sent) and free it. */
void session_pop_frame(struct session *s);
/* The browser is gone: tell the worker to wind down. */
void session_ws_gone(struct session *s, const char *reason);

enum session_phase session_phase(struct session *s, time_t *since);
/* Nothing queued, running or waiting to be sent: safe to close in a drain. */
int session_idle(struct session *s);
int session_worker_finished(struct session *s);
/* Cut the SSH connection so a worker stuck in a blocking call returns. */
void session_cut(struct session *s);
void session_set_phase(struct session *s, enum session_phase p);

/* --- Worker side --- */

/* Wait up to `timeout_ms` for a job. Returns the job (caller owns it), or
 * NULL on timeout or when the browser is gone (*gone set). */
struct job *session_next_job(struct session *s, int timeout_ms, int *gone);
/* The worker finished a job: its payload no longer counts as backlog. */
void session_job_done(struct session *s, struct job *j);
/* Queue frames for the browser (either may be NULL; both go out back to
 * back). Blocks while too much output is queued, so a browser that does
 * not read cannot make us buffer a whole file. Takes ownership; returns 0,
 * or -1 when the browser is gone (frames freed). */
int session_post(struct session *s, struct frame *a, struct frame *b);
int session_is_gone(struct session *s);
void session_set_sock(struct session *s, int fd);
/* Mark the worker finished and notify; the last thing a worker does. */
void session_worker_exit(struct session *s, const char *reason);

#endif
