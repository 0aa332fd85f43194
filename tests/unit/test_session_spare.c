/* session: the spare upload buffer a worker hands back for the next chunk
 * (session.h), and wsframe taking it. The pool is bounded: one buffer per
 * session, all sessions' spares under budget / SESSION_SPARE_BUDGET_DIV,
 * freed after SESSION_SPARE_IDLE_MS unused, at write_close and with the
 * session. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "log.h"
#include "session.h"
#include "wsframe.h"

#define MIB (1024u * 1024)

static void no_wake(void *arg)
{
    (void)arg;
}

/* A write_chunk job with `len` bytes, queued and taken as the worker
 * would, then finished. Returns what is left of the job's payload
 * (NULL when the session kept it as its spare); the job is freed. */
static uint8_t *run_upload_job(struct session *s, size_t len, uint8_t **data_out,
                               int leave_first)
{
    struct job *j = calloc(1, sizeof(*j)), *got;
    uint8_t *left;
    int gone;

    j->kind = JOB_REQUEST;
    j->data = malloc(len);
    j->len = len;
    memset(j->data, 0x5a, len);
    *data_out = j->data;
    session_push_job(s, j);
    got = session_next_job(s, 0, &gone);
    CHECK(got == j && !gone);
    if (leave_first)
        session_ws_gone(s, "test");
    session_job_done(s, j);
    left = j->data;
    j->data = NULL;
    job_free(j);
    return left;
}

static void spare_bounds(void)
{
    struct config cfg;
    struct session_hub hub;
    struct session *a, *b;
    uint8_t *data, *data2, *left, *p;
    size_t len = 0;

    memset(&cfg, 0, sizeof(cfg));
    cfg.memory_budget_mib = 16;  /* spares of all sessions: at most 4 MiB */
    session_hub_init(&hub, &cfg, NULL);
    session_hub_set_wake(&hub, no_wake, NULL);
    a = session_new(&hub, "192.0.2.1", "a.example", 22);
    b = session_new(&hub, "192.0.2.2", "b.example", 22);
    CHECK(a && b);

    /* The first finished chunk is kept, counted in the hub. */
    left = run_upload_job(a, 2 * MIB, &data, 0);
    CHECK(left == NULL);
    CHECK(a->spare == data && a->spare_len == 2 * MIB);
    CHECK(atomic_load(&hub.spare_bytes) == 2 * MIB);
    CHECK(atomic_load(&hub.buffered) == 0);

    /* One spare per session: the next one is not kept (the hub's cap
     * would allow it). */
    left = run_upload_job(a, 1 * MIB, &data2, 0);
    CHECK(left == data2);
    free(left);
    CHECK(a->spare == data);

    /* The hub's cap: b's buffer would take the spares over 4 MiB. */
    left = run_upload_job(b, 3 * MIB, &data2, 0);
    CHECK(left == data2);
    free(left);
    CHECK(b->spare == NULL && atomic_load(&hub.spare_bytes) == 2 * MIB);

    /* Taking a's spare frees room for b's. */
    p = session_take_spare(a, &len);
    CHECK(p == data && len == 2 * MIB && a->spare == NULL);
    CHECK(atomic_load(&hub.spare_bytes) == 0);
    free(p);
    CHECK(session_take_spare(a, &len) == NULL);
    left = run_upload_job(b, 1 * MIB, &data2, 0);
    CHECK(left == NULL && b->spare == data2);

    /* Unused for SESSION_SPARE_IDLE_MS, it is freed by the hub tick. */
    b->spare_ms -= SESSION_SPARE_IDLE_MS;
    hub.last_tick_ms = 0;
    session_hub_tick(&hub);
    CHECK(b->spare == NULL && atomic_load(&hub.spare_bytes) == 0);

    /* write_close ends the upload: the spare goes with it. */
    {
        struct job *j = calloc(1, sizeof(*j));
        int gone;
        j->kind = JOB_REQUEST;
        j->req.method = M_WRITE_CLOSE;
        left = run_upload_job(a, 1 * MIB, &data2, 0);
        CHECK(left == NULL && a->spare == data2);
        session_push_job(a, j);
        CHECK(session_next_job(a, 0, &gone) == j);
        session_job_done(a, j);
        job_free(j);
        CHECK(a->spare == NULL && atomic_load(&hub.spare_bytes) == 0);
    }

    /* A job finished after the browser left is not kept; a spare still
     * held when the session ends is freed with it (LeakSanitizer). */
    left = run_upload_job(a, 1 * MIB, &data2, 0);
    CHECK(left == NULL && a->spare == data2);
    left = run_upload_job(b, 1 * MIB, &data2, 1);
    CHECK(left == data2 && b->spare == NULL);
    free(left);
    /* Drop the references the workers' notifications hold. */
    for (struct session *s = session_hub_take_notified(&hub), *next; s; s = next) {
        next = session_hub_notified_next(&hub, s);
        session_unref(s);
    }
    session_unref(a);
    session_unref(b);
    CHECK(session_hub_count(&hub) == 0);
    CHECK(atomic_load(&hub.spare_bytes) == 0);
    session_hub_destroy(&hub);
}

static void wsframe_reuse(void)
{
    struct wsframe w;
    uint8_t msg[100], *buf, *got;
    size_t len;

    memset(msg, 7, sizeof(msg));
    wsframe_init(&w, 1024, 4096);

    /* An offered buffer is what the next binary message is assembled in. */
    buf = malloc(4096);
    wsframe_offer_binary(&w, buf, 4096);
    CHECK(wsframe_feed(&w, msg, sizeof(msg), 1, 1, 1, 0, 1) == WSF_BINARY);
    got = wsframe_take_binary(&w, &len);
    CHECK(got == buf && len == sizeof(msg) && memcmp(got, msg, len) == 0);

    /* Offered while one is held, or over the message cap: freed, not
     * kept (LeakSanitizer would see a leak, the cap check a second one). */
    wsframe_offer_binary(&w, got, 4096);
    wsframe_offer_binary(&w, malloc(64), 64);
    CHECK(w.bin == got && w.bin_cap == 4096);
    wsframe_free(&w);
    wsframe_init(&w, 1024, 4096);
    wsframe_offer_binary(&w, malloc(8192), 8192);
    CHECK(w.bin == NULL);
    wsframe_offer_binary(&w, NULL, 0);
    CHECK(w.bin == NULL);
    wsframe_free(&w);
}

int main(void)
{
    log_init(LOG_ERROR);
    spare_bounds();
    wsframe_reuse();
    CHECK_DONE();
}
