/* The libssh2 allocation accounts (wipe_alloc.c): the per-session limit,
 * the largest session over its share refused, sessions that parked their
 * memory evicted so honest ones get room, the budget as a hard cap, and
 * exact counts with threads allocating at once. */
#include "check.h"
#include "wipe_alloc.h"

#include <pthread.h>
#include <stdint.h>
#include <sched.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <time.h>

#define KIB 1024u
#define MIB (1024u * 1024)
#define BLOCK (64 * KIB)
#define MAX_BLOCKS 4096
/* How long an allocation waits for room in these tests. */
#define WAIT_MS 200

/* One session as libssh2 sees it: the account and what it allocated. An
 * evictable one frees everything on its own thread once evicted, as a
 * worker does when its session is cut. */
struct fake {
    struct wipe_account acct;   /* first member, as in struct ssh_conn */
    void *blocks[MAX_BLOCKS];
    int n;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int evicted;                /* mu */
    pthread_t victim;
};

static void *fake_alloc(struct fake *f, size_t n)
{
    void *abstract = f;
    void *p = wipe_ssh_alloc(n, &abstract);

    if (p && f->n < MAX_BLOCKS)
        f->blocks[f->n++] = p;
    return p;
}

/* Allocate BLOCKs until one is refused or `bytes` are held. */
static int fill(struct fake *f, size_t bytes)
{
    int got = 0;

    while ((size_t)got * BLOCK < bytes && fake_alloc(f, BLOCK))
        got++;
    return got;
}

static void fake_free(struct fake *f)
{
    void *abstract = f;

    while (f->n > 0)
        wipe_ssh_free(f->blocks[--f->n], &abstract);
    wipe_account_close(&f->acct);
}

/* The evict callback: only signals, as the real one must. */
static void on_evict(void *arg)
{
    struct fake *f = arg;

    pthread_mutex_lock(&f->mu);
    f->evicted = 1;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void *victim_main(void *arg)
{
    struct fake *f = arg;

    pthread_mutex_lock(&f->mu);
    while (!f->evicted)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    fake_free(f);
    return NULL;
}

static void make_evictable(struct fake *f)
{
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->acct.evict = on_evict;
    f->acct.evict_arg = f;
    pthread_create(&f->victim, NULL, victim_main, f);
}

/* Ends an evictable fake that was never evicted. */
static void end_evictable(struct fake *f)
{
    on_evict(f);
    pthread_join(f->victim, NULL);
}

static void test_session_limit(void)
{
    struct fake f = {.acct.max = 1 * MIB};

    wipe_ssh_set_budget(0, WAIT_MS);
    CHECK(fill(&f, 64 * MIB) <= (int)(1 * MIB / BLOCK));
    CHECK(f.acct.refused == WIPE_REFUSED_SESSION);
    CHECK(f.acct.held <= 1 * MIB);
    CHECK(f.acct.peak >= f.acct.held);
    fake_free(&f);
    CHECK(wipe_ssh_total() == 0);
}

/* A session that swells alone until the budget is full holds the most
 * and more than its share: it is refused. Shrinking is never refused. */
static void test_largest_over_share_is_refused(void)
{
    static struct fake hostile, honest;
    void *abstract = &hostile, *p;
    size_t budget = 8 * MIB;

    wipe_ssh_set_budget(budget, WAIT_MS);
    fill(&hostile, 64 * MIB);
    CHECK(hostile.acct.refused == WIPE_REFUSED_SHARE);
    CHECK(hostile.acct.held <= budget);
    CHECK(hostile.acct.held > budget - 2 * BLOCK);  /* each block reserves a page more */

    p = wipe_ssh_realloc(hostile.blocks[0], BLOCK / 2, &abstract);
    CHECK(p != NULL);
    if (p)
        hostile.blocks[0] = p;
    hostile.acct.refused = WIPE_REFUSED_NONE;
    p = wipe_ssh_realloc(hostile.blocks[0], 2 * MIB, &abstract);
    CHECK(p == NULL);
    CHECK(hostile.acct.refused == WIPE_REFUSED_SHARE);

    fake_free(&hostile);
    CHECK(fill(&honest, 8 * BLOCK) == 8);
    CHECK(honest.acct.refused == WIPE_REFUSED_NONE);
    fake_free(&honest);
    CHECK(wipe_ssh_total() == 0);
    CHECK(wipe_ssh_peak() <= budget);
}

/* Sessions arrive one after another; each parks up to what would have been
 * its share of half the budget when it came (8 + 4 + 2.7 + 2 MiB of a 16
 * MiB budget, more than the budget together) and allocates nothing more.
 * Whoever finds the budget full evicts the largest parked session over its
 * share, waits for its room, and is not refused; neither are honest
 * sessions that come last. */
static void test_parked_sessions_are_evicted(void)
{
    static struct fake parked[4], honest[3];
    size_t budget = 16 * MIB, half = budget / 2, held;

    wipe_ssh_set_budget(budget, WAIT_MS);
    for (int i = 0; i < 4; i++) {
        make_evictable(&parked[i]);
        fill(&parked[i], half / (i + 1) - 3 * BLOCK);
        CHECK(parked[i].acct.refused == WIPE_REFUSED_NONE);
    }
    for (int i = 0; i < 3; i++) {
        fill(&honest[i], 448 * KIB);
        CHECK(honest[i].acct.refused == WIPE_REFUSED_NONE);
    }
    pthread_mutex_lock(&parked[0].mu);
    CHECK(parked[0].evicted);  /* the largest went first */
    pthread_mutex_unlock(&parked[0].mu);
    /* What it held when evicted, for the log (its memory may be gone by now). */
    CHECK(wipe_account_evicted(&parked[0].acct, &held));
    CHECK(held > half - 4 * BLOCK && held <= half);
    CHECK(!wipe_account_evicted(&parked[3].acct, &held));
    pthread_mutex_lock(&parked[3].mu);
    CHECK(!parked[3].evicted);  /* the smallest was never needed */
    pthread_mutex_unlock(&parked[3].mu);
    CHECK(wipe_ssh_peak() <= budget);
    for (int i = 0; i < 4; i++)
        end_evictable(&parked[i]);
    for (int i = 0; i < 3; i++)
        fake_free(&honest[i]);
    CHECK(wipe_ssh_total() == 0);
}

/* A session that cannot be evicted (no callback) swells until the budget
 * is full and is refused; the next one waits WAIT_MS for room that never
 * comes, then is refused too. The budget is a hard cap. */
static void test_hard_cap(void)
{
    static struct fake hog, next;
    size_t budget = 8 * MIB;

    wipe_ssh_set_budget(budget, WAIT_MS);
    fill(&hog, 64 * MIB);
    CHECK(hog.acct.refused == WIPE_REFUSED_SHARE);
    CHECK(fill(&next, 64 * MIB) <= 1);
    CHECK(next.acct.refused == WIPE_REFUSED_BUDGET);
    CHECK(wipe_ssh_total() <= budget);
    CHECK(wipe_ssh_peak() <= budget);
    fake_free(&hog);
    fake_free(&next);
    CHECK(wipe_ssh_total() == 0);
}

/* An evicted session that is itself waiting for room stops waiting at
 * once: its memory is what the others wait for. `waiter` (evictable,
 * about 3 MiB, under its share) waits for room behind a hog that cannot be
 * evicted (5 MiB); `small` then finds the budget full and evicts `waiter`
 * (now over its share), which must be refused long before its wait ends. */
struct waiting {
    struct fake *f;
    int64_t ms;
};

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *waiter_main(void *arg)
{
    struct waiting *w = arg;
    int64_t t0 = now_ms();

    fill(w->f, 64 * MIB);
    w->ms = now_ms() - t0;
    return NULL;
}

static void test_evicted_waiter_stops_waiting(void)
{
    static struct fake hog, waiter, small;
    struct waiting w = {.f = &waiter};
    pthread_t t;
    size_t budget = 8 * MIB;

    wipe_ssh_set_budget(budget, 10 * WAIT_MS);
    fill(&hog, 5 * MIB);
    fill(&waiter, 2 * MIB);
    /* Only flagged, as a real worker that is the one waiting: nothing else
     * frees its memory. */
    pthread_mutex_init(&waiter.mu, NULL);
    pthread_cond_init(&waiter.cv, NULL);
    waiter.acct.evict = on_evict;
    waiter.acct.evict_arg = &waiter;
    pthread_create(&t, NULL, waiter_main, &w);
    /* The waiter fills the budget, then waits: wait for the budget to be
     * full (the event), then allocate as the small session. */
    while (wipe_ssh_total() + BLOCK + 4096 <= budget)
        sched_yield();
    fill(&small, BLOCK);
    pthread_join(t, NULL);
    CHECK(waiter.acct.refused == WIPE_REFUSED_SHARE);
    CHECK(waiter.evicted);
    CHECK(w.ms < 5 * WAIT_MS);
    fake_free(&waiter);
    fake_free(&hog);
    fake_free(&small);
    CHECK(wipe_ssh_total() == 0);
}

/* Sessions waiting for room that no eviction can make wait quietly: they
 * are woken by memory coming back, not by one another (which kept four
 * waiters busy for most of their wait, 2 CPU-seconds in 2 s). */
static double cpu_seconds(void)
{
    struct rusage u;

    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec +
           u.ru_stime.tv_usec / 1e6;
}

static void *quiet_waiter(void *arg)
{
    fill(arg, BLOCK);
    return NULL;
}

static void test_waiters_wait_quietly(void)
{
    static struct fake hog, waiters[4];
    pthread_t t[4];
    size_t budget = 8 * MIB;
    double cpu;

    wipe_ssh_set_budget(budget, 5 * WAIT_MS);
    fill(&hog, 64 * MIB);
    cpu = cpu_seconds();
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, quiet_waiter, &waiters[i]);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    cpu = cpu_seconds() - cpu;
    for (int i = 0; i < 4; i++)
        CHECK(waiters[i].acct.refused == WIPE_REFUSED_BUDGET);
    CHECK(cpu < 0.25);
    for (int i = 0; i < 4; i++)
        fake_free(&waiters[i]);
    fake_free(&hog);
    CHECK(wipe_ssh_total() == 0);
}

#define RACERS 8

static void *racer(void *arg)
{
    struct fake *f = arg;
    void *abstract = f;

    for (int round = 0; round < 20; round++) {
        while (fake_alloc(f, 4 * KIB + (size_t)round))
            ;
        /* Some back, some bigger: reallocs and frees racing the others. */
        for (int i = 0; i < f->n; i += 2) {
            void *q = wipe_ssh_realloc(f->blocks[i], 12 * KIB, &abstract);
            if (q)
                f->blocks[i] = q;
        }
        while (f->n > 8)
            wipe_ssh_free(f->blocks[--f->n], &abstract);
        f->acct.refused = WIPE_REFUSED_NONE;
    }
    return NULL;
}

/* Threads allocating, growing and freeing at once keep the counts exact
 * and the total within the budget. */
static void test_race(void)
{
    static struct fake f[RACERS];
    pthread_t t[RACERS];
    size_t budget = 4 * MIB;

    wipe_ssh_set_budget(budget, WAIT_MS);
    for (int i = 0; i < RACERS; i++)
        pthread_create(&t[i], NULL, racer, &f[i]);
    for (int i = 0; i < RACERS; i++)
        pthread_join(t[i], NULL);
    CHECK(wipe_ssh_peak() <= budget);
    for (int i = 0; i < RACERS; i++)
        fake_free(&f[i]);
    CHECK(wipe_ssh_total() == 0);
}

/* A request no allocation could satisfy is refused before it is counted. */
static void test_huge_request(void)
{
    struct fake f = {.acct.max = 0};

    wipe_ssh_set_budget(0, WAIT_MS);
    CHECK(fake_alloc(&f, SIZE_MAX - 16) == NULL);
    CHECK(f.acct.refused == WIPE_REFUSED_BUDGET);
    CHECK(wipe_ssh_total() == 0);
}

int main(void)
{
    test_session_limit();
    test_largest_over_share_is_refused();
    test_parked_sessions_are_evicted();
    test_hard_cap();
    test_evicted_waiter_stops_waiting();
    test_waiters_wait_quietly();
    test_race();
    test_huge_request();
    CHECK_DONE();
}
