/* Session lifetime and the two queues between the service thread and a
 * session's SSH worker. The session outlives its WebSocket when the worker
 * still has to clean up (remove a partial upload), and is freed by the last
 * reference, always dropped on the service thread. */
#include "session.h"
#include "clock.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "access.h"
#include "config.h"
#include "log.h"
#include "metrics.h"

/* A frame larger than SESSION_OUT_HIGH_WATER (a legacy `read`) still goes
 * when the queue is empty. */
#define OUT_HIGH_WATER SESSION_OUT_HIGH_WATER

/* The derived memory budget: this share of the machine's (or the
 * cgroup's) memory, at least BUDGET_MIN_BYTES. The rest is for what the
 * budget does not count: one message being assembled per session, worker
 * stacks, libssh2 and TLS state, and the page cache. */
#define BUDGET_SHARE_DIV 4
#define BUDGET_MIN_BYTES (64ull * 1024 * 1024)

/* Worker thread stack: libssh2 and OpenSSL need little; many sessions
 * should not reserve 8 MiB of address space each. The relay maps it itself
 * (session_start) and unmaps it after the join: glibc keeps the stacks of
 * threads it allocated in a cache for reuse, with the pages their last
 * frames and thread descriptor touched still resident (24 KiB each, 1.2
 * MiB after a 50-session burst, for good). */
#define WORKER_STACK_BYTES (512u * 1024)

_Static_assert(PH_CONNECTING == 0 && PH_WAIT_HOSTKEY == 1 && PH_WAIT_AUTH == 2 &&
               PH_READY == 3 && PH_CLOSING == 4 && METRICS_N_PHASES == 5,
               "metrics.c labels the phases in this order");

void job_free(struct job *j)
{
    if (!j)
        return;
    proto_auth_wipe(&j->auth);
    proto_request_free(&j->req);
    free(j->data);
    free(j);
}

int64_t session_now_ms(void)
{
    return clock_now_ms();
}

/* One number from a file such as /proc/meminfo's line or cgroup's
 * memory.max; 0 when absent, unreadable or "max". */
static uint64_t read_limit(const char *path, const char *key, uint64_t unit)
{
    char line[256];
    uint64_t v = 0;
    FILE *f = fopen(path, "r");
    size_t klen = key ? strlen(key) : 0;

    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long long x;
        if (key && strncmp(line, key, klen) != 0)
            continue;
        if (sscanf(line + klen, " %llu", &x) == 1 && x <= UINT64_MAX / unit)
            v = (uint64_t)x * unit;
        break;
    }
    fclose(f);
    return v;
}

/* Our cgroup (v2) memory limit: the memory.max of the group named in
 * /proc/self/cgroup ("0::/system.slice/wattcloud-relay.service"). */
static uint64_t cgroup_limit(void)
{
    char line[512], path[640];
    uint64_t v = 0;
    FILE *f = fopen("/proc/self/cgroup", "r");

    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "0::", 3) != 0)
            continue;
        line[strcspn(line, "\n")] = '\0';
        snprintf(path, sizeof(path), "/sys/fs/cgroup%s/memory.max", line + 3);
        v = read_limit(path, NULL, 1);
        break;
    }
    fclose(f);
    return v;
}

static size_t derive_budget(void)
{
    uint64_t mem = read_limit("/proc/meminfo", "MemTotal:", 1024), cg = cgroup_limit();
    uint64_t b;

    if (cg && (!mem || cg < mem))
        mem = cg;
    b = mem / BUDGET_SHARE_DIV;
    if (b < BUDGET_MIN_BYTES)
        b = BUDGET_MIN_BYTES;
    if (b > SIZE_MAX / 2)
        b = SIZE_MAX / 2;
    return (size_t)b;
}

void session_hub_init(struct session_hub *h, const struct config *cfg, struct access *access)
{
    memset(h, 0, sizeof(*h));
    pthread_mutex_init(&h->mu, NULL);
    h->cfg = cfg;
    h->access = access;
    if (cfg && cfg->memory_budget_mib > 0)
        h->budget = (size_t)cfg->memory_budget_mib * 1024 * 1024;
    else
        h->budget = derive_budget();
    atomic_init(&h->buffered, 0);
    atomic_init(&h->spare_bytes, 0);
    if (access)  /* not in unit tests */
        log_info("memory budget for buffered bytes: %zu MiB%s", h->budget >> 20,
                 cfg && cfg->memory_budget_mib > 0 ? "" : " (derived from the machine)");
}

int session_hub_over_budget(struct session_hub *h)
{
    return atomic_load(&h->buffered) >= h->budget;
}

int session_hub_reserve(struct session_hub *h, size_t n)
{
    size_t cur = atomic_load(&h->buffered);

    do {
        /* With nothing buffered a message is always admitted, so a budget
         * smaller than one message can never stop every session. */
        if (cur != 0 && (cur >= h->budget || n > h->budget - cur))
            return -1;
    } while (!atomic_compare_exchange_weak(&h->buffered, &cur, cur + n));
    return 0;
}

void session_hub_release(struct session_hub *h, size_t n)
{
    atomic_fetch_sub(&h->buffered, n);
}

static void budget_add(struct session *s, size_t n)
{
    atomic_fetch_add(&s->hub->buffered, n);
}

static void budget_sub(struct session *s, size_t n)
{
    atomic_fetch_sub(&s->hub->buffered, n);
}

/* Keep `j`'s payload as the spare when the slot is free and the hub's
 * spares stay under their cap (session mutex held). With glibc's mmap
 * threshold (main.c) every multi-MiB buffer is a fresh mapping, and
 * filling one costs a page fault per 4 KiB: recycling the buffer is what
 * keeps an upload from faulting in all of its bytes. */
static void keep_spare(struct session *s, struct job *j)
{
    struct session_hub *h = s->hub;
    size_t cap = h->budget / SESSION_SPARE_BUDGET_DIV;

    if (!j->data || !j->len || s->spare || s->ws_gone)
        return;
    if (atomic_fetch_add(&h->spare_bytes, j->len) + j->len > cap) {
        atomic_fetch_sub(&h->spare_bytes, j->len);
        return;
    }
    s->spare = j->data;
    s->spare_len = j->len;
    s->spare_ms = session_now_ms();
    j->data = NULL;
}

/* Take the spare out of `s` (session mutex held); the caller frees or
 * uses it. */
static uint8_t *unlink_spare(struct session *s, size_t *len)
{
    uint8_t *p = s->spare;

    *len = s->spare_len;
    if (p)
        atomic_fetch_sub(&s->hub->spare_bytes, s->spare_len);
    s->spare = NULL;
    s->spare_len = 0;
    return p;
}

void session_hub_destroy(struct session_hub *h)
{
    pthread_mutex_destroy(&h->mu);
}

void session_hub_set_wake(struct session_hub *h, void (*wake)(void *), void *arg)
{
    pthread_mutex_lock(&h->mu);
    h->wake = wake;
    h->wake_arg = arg;
    pthread_mutex_unlock(&h->mu);
}

int session_hub_count(struct session_hub *h)
{
    int n;

    pthread_mutex_lock(&h->mu);
    n = h->n_live;
    pthread_mutex_unlock(&h->mu);
    return n;
}

/* The sessions of the taken list keep notified = 1 until the caller
 * reaches each one (session_hub_notified_next): a worker that notifies again
 * meanwhile must not relink notify_next of a session still on the taken
 * list. Were the flags cleared here, a re-notify could splice the hub's new
 * list into the one being walked, and a session would be processed (and
 * its list reference dropped) twice. */
struct session *session_hub_take_notified(struct session_hub *h)
{
    struct session *list;

    pthread_mutex_lock(&h->mu);
    list = h->notify;
    h->notify = NULL;
    pthread_mutex_unlock(&h->mu);
    return list;
}

struct session *session_hub_notified_next(struct session_hub *h, struct session *s)
{
    struct session *next;

    pthread_mutex_lock(&h->mu);
    next = s->notify_next;
    s->notify_next = NULL;
    s->notified = 0;
    pthread_mutex_unlock(&h->mu);
    return next;
}

void session_hub_for_each(struct session_hub *h, void (*fn)(struct session *, void *), void *arg)
{
    pthread_mutex_lock(&h->mu);
    for (struct session *s = h->live; s; s = s->hub_next)
        fn(s, arg);
    pthread_mutex_unlock(&h->mu);
}

struct session *session_new(struct session_hub *h, const char *client_ip,
                            const char *host, int port)
{
    struct session *s = calloc(1, sizeof(*s));
    pthread_condattr_t ca;
    unsigned char rnd[8];

    if (!s)
        return NULL;
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        memset(rnd, 0, sizeof(rnd));
    for (int i = 0; i < 8; i++)
        snprintf(s->id + 2 * i, 3, "%02x", rnd[i]);
    snprintf(s->client_ip, sizeof(s->client_ip), "%s", client_ip);
    snprintf(s->host, sizeof(s->host), "%s", host);
    s->port = port;
    s->hub = h;
    s->started_ms = session_now_ms();
    pthread_mutex_init(&s->mu, NULL);
    /* Timed waits measure intervals: a wall-clock step must not stretch or
     * cut them. */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    s->phase = PH_CONNECTING;
    s->phase_since_ms = s->started_ms;
    s->jobs_tail = &s->jobs;
    s->out_tail = &s->out;
    s->held_tail = &s->held;
    atomic_init(&s->sftp_moved, 0);
    s->refs = 1;
    s->sock = -1;

    pthread_mutex_lock(&h->mu);
    s->hub_next = h->live;
    if (h->live)
        h->live->hub_prev = s;
    h->live = s;
    h->n_live++;
    pthread_mutex_unlock(&h->mu);
    metrics_session_phase(-1, PH_CONNECTING);
    return s;
}

void session_ref(struct session *s)
{
    pthread_mutex_lock(&s->mu);
    s->refs++;
    pthread_mutex_unlock(&s->mu);
}

static void session_free(struct session *s)
{
    struct session_hub *h = s->hub;
    int idle;

    log_info("session %s end: client=%s target=%s:%d up=%llu down=%llu duration=%lds "
             "reason=\"%s\"", s->id, s->client_ip, s->host, s->port,
             (unsigned long long)s->bytes_up, (unsigned long long)s->bytes_down,
             (long)((session_now_ms() - s->started_ms) / 1000),
             s->close_reason[0] ? s->close_reason : "closed");
    metrics_session_ended(s->close_reason[0] ? s->close_reason : "closed");
    metrics_session_phase((int)s->phase, -1);
    metrics_unwritten_sub(s->in_bytes);
    if (s->ip_counted && h->access)
        access_session_close_lease(h->access, s->client_ip, s->ip_lease);

    pthread_mutex_lock(&h->mu);
    if (s->hub_prev)
        s->hub_prev->hub_next = s->hub_next;
    else
        h->live = s->hub_next;
    if (s->hub_next)
        s->hub_next->hub_prev = s->hub_prev;
    h->n_live--;
    idle = h->n_live == 0;
    pthread_mutex_unlock(&h->mu);

    budget_sub(s, s->in_bytes + s->out_bytes);
    {
        size_t n;
        free(unlink_spare(s, &n));
    }
    while (s->jobs) {
        struct job *j = s->jobs;
        s->jobs = j->next;
        job_free(j);
    }
    while (s->out) {
        struct frame *f = s->out;
        s->out = f->next;
        frame_free(f);
    }
    while (s->held) {
        struct frame *f = s->held;
        s->held = f->next;
        frame_free(f);
    }
    free(s->sign_answer);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
    /* The last session is gone: hand the memory glibc keeps free in its
     * per-thread arenas back to the kernel, so the RSS after a burst of
     * sessions falls back to its idle level instead of holding the burst's
     * free memory. Cheap next to a session's SSH handshake, and only when
     * idle. */
    if (idle)
        malloc_trim(0);
}

void session_unref(struct session *s)
{
    int left;

    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    left = --s->refs;
    pthread_mutex_unlock(&s->mu);
    if (left == 0)
        session_free(s);
}

void session_hold_ip_slot(struct session *s)
{
    s->ip_counted = 1;
}

void session_hold_ip_lease(struct session *s, const char *lease)
{
    snprintf(s->ip_lease, sizeof(s->ip_lease), "%s", lease ? lease : "");
    s->ip_counted = 1;
}

int session_start(struct session *s, void *(*fn)(void *))
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = WORKER_STACK_BYTES + page;
    pthread_attr_t attr;
    uint8_t *stack;
    int rc = -1;

    /* The lowest page stays inaccessible: an overflow faults instead of
     * writing over whatever is mapped below (glibc's own guard page is not
     * there for a stack the caller gives). */
    stack = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                 -1, 0);
    if (stack == MAP_FAILED)
        return -1;
    if (mprotect(stack, page, PROT_NONE) != 0)
        goto out;
    session_ref(s);
    pthread_attr_init(&attr);
    pthread_attr_setstack(&attr, stack + page, WORKER_STACK_BYTES);
    rc = pthread_create(&s->thread, &attr, fn, s);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        session_unref(s);
        rc = -1;
        goto out;
    }
    s->stack = stack;
    s->stack_len = len;
    s->thread_started = 1;
    stack = NULL;
out:
    if (stack)
        munmap(stack, len);
    return rc;
}

void session_join(struct session *s)
{
    if (!s->thread_started)
        return;
    pthread_join(s->thread, NULL);
    s->thread_started = 0;
    munmap(s->stack, s->stack_len);
    s->stack = NULL;
    session_unref(s);
}

void session_notify(struct session *s)
{
    struct session_hub *h = s->hub;
    int queued = 0;

    pthread_mutex_lock(&h->mu);
    if (!s->notified) {
        s->notified = 1;
        s->notify_next = h->notify;
        h->notify = s;
        queued = 1;
        /* The list's reference; taken under the hub lock so the service
         * thread cannot pop and drop it first. */
        session_ref(s);
    }
    /* Under the lock: session_hub_set_wake(NULL) at shutdown then guarantees no
     * worker touches the lws context being destroyed. */
    if (queued && h->wake)
        h->wake(h->wake_arg);
    pthread_mutex_unlock(&h->mu);
}

void session_push_job(struct session *s, struct job *j)
{
    pthread_mutex_lock(&s->mu);
    j->next = NULL;
    *s->jobs_tail = j;
    s->jobs_tail = &j->next;
    s->n_jobs++;
    s->in_bytes += j->len;
    budget_add(s, j->len);
    metrics_unwritten_add(j->len);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void session_backlog(struct session *s, struct session_backlog *b)
{
    pthread_mutex_lock(&s->mu);
    b->in_bytes = s->in_bytes;
    b->jobs = s->n_jobs;
    b->out_bytes = s->out_bytes;
    pthread_mutex_unlock(&s->mu);
    b->out_full = b->out_bytes >= OUT_HIGH_WATER;
    b->over_budget = session_hub_over_budget(s->hub);
}

struct frame *session_peek_frame(struct session *s)
{
    struct frame *f;

    pthread_mutex_lock(&s->mu);
    f = s->out;
    pthread_mutex_unlock(&s->mu);
    return f;
}

void session_pop_frame(struct session *s)
{
    struct frame *f;

    pthread_mutex_lock(&s->mu);
    f = s->out;
    if (f) {
        s->out = f->next;
        if (!s->out)
            s->out_tail = &s->out;
        s->out_bytes -= f->len;
        budget_sub(s, f->len);
        s->bytes_down += f->len;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    frame_free(f);
}

void session_ws_gone(struct session *s, const char *reason)
{
    pthread_mutex_lock(&s->mu);
    if (!s->ws_gone) {
        s->ws_gone = 1;
        s->gone_ms = session_now_ms();
        if (!s->close_reason[0] && reason)
            snprintf(s->close_reason, sizeof(s->close_reason), "%s", reason);
    }
    metrics_session_phase((int)s->phase, PH_CLOSING);
    s->phase = PH_CLOSING;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

enum session_phase session_phase(struct session *s, int64_t *since_ms)
{
    enum session_phase p;

    pthread_mutex_lock(&s->mu);
    p = s->phase;
    if (since_ms)
        *since_ms = s->phase_since_ms;
    pthread_mutex_unlock(&s->mu);
    return p;
}

void session_set_phase(struct session *s, enum session_phase p)
{
    pthread_mutex_lock(&s->mu);
    if (s->phase != PH_CLOSING) {
        metrics_session_phase((int)s->phase, (int)p);
        s->phase = p;
        s->phase_since_ms = session_now_ms();
    }
    pthread_mutex_unlock(&s->mu);
}

int session_idle(struct session *s)
{
    int idle;

    pthread_mutex_lock(&s->mu);
    idle = !s->busy && !s->jobs && !s->out;
    pthread_mutex_unlock(&s->mu);
    return idle;
}

int session_worker_finished(struct session *s)
{
    int done;

    pthread_mutex_lock(&s->mu);
    done = s->worker_done;
    pthread_mutex_unlock(&s->mu);
    return done;
}

void session_cut(struct session *s)
{
    pthread_mutex_lock(&s->mu);
    if (s->sock >= 0)
        shutdown(s->sock, SHUT_RDWR);
    pthread_mutex_unlock(&s->mu);
}

void session_evict(void *session)
{
    struct session *s = session;

    pthread_mutex_lock(&s->mu);
    s->evicted = 1;
    if (s->sock >= 0)
        shutdown(s->sock, SHUT_RDWR);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

struct job *session_next_job(struct session *s, int timeout_ms, int *gone)
{
    struct timespec until = clock_deadline(timeout_ms);  /* the cv's clock */
    struct job *j = NULL;
    int rc = 0;

    pthread_mutex_lock(&s->mu);
    while (!s->jobs && !s->ws_gone && !s->evicted && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&s->cv, &s->mu, &until);
    *gone = s->ws_gone ? SESSION_WS_GONE : s->evicted ? SESSION_EVICTED : 0;
    if (!s->ws_gone && s->jobs) {
        j = s->jobs;
        s->jobs = j->next;
        if (!s->jobs)
            s->jobs_tail = &s->jobs;
        s->n_jobs--;
        s->busy = 1;
        j->next = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    return j;
}

uint8_t *session_take_spare(struct session *s, size_t *len)
{
    uint8_t *p;

    pthread_mutex_lock(&s->mu);
    p = unlink_spare(s, len);
    pthread_mutex_unlock(&s->mu);
    return p;
}

void session_job_done(struct session *s, struct job *j)
{
    uint8_t *done_spare = NULL;
    size_t n;

    pthread_mutex_lock(&s->mu);
    s->in_bytes -= j->len;
    budget_sub(s, j->len);
    metrics_unwritten_sub(j->len);
    s->bytes_up += j->len;
    s->busy = 0;
    /* The spare only serves the chunks of an upload in progress: once an
     * upload is closed or aborted it would only be memory held. */
    if (j->kind == JOB_REQUEST &&
        (j->req.method == M_WRITE_CLOSE || j->req.method == M_WRITE_ABORT))
        done_spare = unlink_spare(s, &n);
    else
        keep_spare(s, j);
    pthread_mutex_unlock(&s->mu);
    free(done_spare);
    /* The service thread may have paused reading for backlog: let it look. */
    session_notify(s);
}

/* Link a frame at the end of the send queue; its bytes are counted by
 * the caller (count_frame), once, whether it waits in `held` first or not. */
static void link_frame(struct session *s, struct frame *f)
{
    f->next = NULL;
    *s->out_tail = f;
    s->out_tail = &f->next;
}

/* Every queued frame, held back or not, counts against the session's
 * output cap and the process budget: a browser that provokes error frames
 * during a long streamed answer must still meet the read pause. */
static void count_frame(struct session *s, struct frame *f)
{
    s->out_bytes += f->len;
    budget_add(s, f->len);
}

static void append_frame(struct session *s, struct frame *f)
{
    if (!f)
        return;
    count_frame(s, f);
    link_frame(s, f);
}

/* A worker frame may open or close a fragmented message; once it is
 * closed, the frames held back meanwhile follow it. */
static void append_worker_frame(struct session *s, struct frame *f)
{
    if (!f)
        return;
    append_frame(s, f);
    s->out_open = f->more;
    if (!s->out_open) {
        while (s->held) {
            struct frame *h = s->held;
            s->held = h->next;
            link_frame(s, h);
        }
        s->held_tail = &s->held;
    }
}

void session_post_nowait(struct session *s, struct frame *f)
{
    pthread_mutex_lock(&s->mu);
    if (s->out_open && f) {
        count_frame(s, f);
        f->next = NULL;
        *s->held_tail = f;
        s->held_tail = &f->next;
    } else {
        append_frame(s, f);
    }
    pthread_mutex_unlock(&s->mu);
}

int session_post(struct session *s, struct frame *a, struct frame *b)
{
    int gone;

    pthread_mutex_lock(&s->mu);
    while (!s->ws_gone && !s->evicted && s->out && s->out_bytes >= OUT_HIGH_WATER)
        pthread_cond_wait(&s->cv, &s->mu);
    /* An evicted session must not wait for a browser that does not read:
     * its worker has memory to give back. What it posts is dropped; the
     * session ends with its next call into libssh2. */
    gone = s->ws_gone || (s->evicted && s->out && s->out_bytes >= OUT_HIGH_WATER);
    if (!gone) {
        append_worker_frame(s, a);
        append_worker_frame(s, b);
    }
    pthread_mutex_unlock(&s->mu);
    if (gone) {
        frame_free(a);
        frame_free(b);
        return -1;
    }
    session_notify(s);
    return 0;
}

int session_is_gone(struct session *s)
{
    int gone;

    pthread_mutex_lock(&s->mu);
    gone = s->ws_gone;
    pthread_mutex_unlock(&s->mu);
    return gone;
}

void session_set_sock(struct session *s, int fd)
{
    pthread_mutex_lock(&s->mu);
    s->sock = fd;
    pthread_mutex_unlock(&s->mu);
}

uint32_t session_sign_open(struct session *s)
{
    uint32_t id = ++s->sign_last;

    if (id == 0)
        id = s->sign_last = 1;
    pthread_mutex_lock(&s->mu);
    s->sign_request = id;
    s->sign_answered = 0;
    free(s->sign_answer);
    s->sign_answer = NULL;
    pthread_mutex_unlock(&s->mu);
    return id;
}

int session_sign_wait(struct session *s, uint32_t request, int timeout_ms, char **answer)
{
    struct timespec until = clock_deadline(timeout_ms);
    int rc = 0, out;

    *answer = NULL;
    pthread_mutex_lock(&s->mu);
    while (!s->sign_answered && !s->ws_gone && !s->evicted && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&s->cv, &s->mu, &until);
    if (s->sign_answered && s->sign_request == request) {
        *answer = s->sign_answer;
        s->sign_answer = NULL;
        out = 0;
    } else {
        out = s->ws_gone ? SESSION_SIGN_GONE : SESSION_SIGN_TIMEOUT;
    }
    s->sign_request = 0;
    s->sign_answered = 0;
    free(s->sign_answer);
    s->sign_answer = NULL;
    pthread_mutex_unlock(&s->mu);
    return out;
}

int session_sign_answer(struct session *s, uint32_t request, char *signature)
{
    int taken = 0;

    pthread_mutex_lock(&s->mu);
    if (request != 0 && s->sign_request == request && !s->sign_answered) {
        s->sign_answered = 1;
        s->sign_answer = signature;
        signature = NULL;
        taken = 1;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    free(signature);
    return taken ? 0 : -1;
}

void session_worker_exit(struct session *s, const char *reason)
{
    pthread_mutex_lock(&s->mu);
    s->worker_done = 1;
    if (!s->close_reason[0] && reason)
        snprintf(s->close_reason, sizeof(s->close_reason), "%s", reason);
    pthread_mutex_unlock(&s->mu);
    session_notify(s);
}

/* The release deadline of one session, and its spare upload buffer's
 * idle limit (hub lock held). */
static void release_check(struct session *s, int64_t now)
{
    uint8_t *idle_spare = NULL;
    size_t n;
    int cut = 0;

    pthread_mutex_lock(&s->mu);
    if (s->spare && now - s->spare_ms >= SESSION_SPARE_IDLE_MS)
        idle_spare = unlink_spare(s, &n);
    if (s->ws_gone && !s->worker_done && now - s->gone_ms >= SESSION_RELEASE_MS &&
        s->sock >= 0) {
        shutdown(s->sock, SHUT_RDWR);
        cut = 1;
    }
    pthread_mutex_unlock(&s->mu);
    free(idle_spare);
    if (cut && !s->release_logged) {
        s->release_logged = 1;
        log_info("session %s: clean-up after the browser left took over %d s; "
                 "cutting the SSH connection", s->id, SESSION_RELEASE_MS / 1000);
    }
}

void session_hub_tick(struct session_hub *h)
{
    int64_t now = session_now_ms();

    if (now - h->last_tick_ms < 1000)
        return;
    h->last_tick_ms = now;
    pthread_mutex_lock(&h->mu);
    for (struct session *s = h->live; s; s = s->hub_next)
        release_check(s, now);
    pthread_mutex_unlock(&h->mu);
}
