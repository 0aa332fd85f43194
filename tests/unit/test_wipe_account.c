/* The libssh2 allocation accounts (wipe_alloc.c): the per-session limit,
 * the share of the process budget that spares sessions holding little, and
 * the budget as a hard cap, also with threads racing for its last bytes. */
#include "check.h"
#include "wipe_alloc.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define KIB 1024u
#define MIB (1024u * 1024)
#define BLOCK (64 * KIB)
#define MAX_BLOCKS 4096

/* One session as libssh2 sees it: the account and what it allocated. */
struct fake {
    struct wipe_account acct;   /* first member, as in struct ssh_conn */
    void *blocks[MAX_BLOCKS];
    int n;
};

static void *fake_alloc(struct fake *f, size_t n)
{
    void *abstract = f;
    void *p = wipe_ssh_alloc(n, &abstract);

    if (p && f->n < MAX_BLOCKS)
        f->blocks[f->n++] = p;
    return p;
}

/* Allocate BLOCKs until one is refused (or `limit` are held). */
static int fill(struct fake *f, int limit)
{
    int got = 0;

    while (got < limit && fake_alloc(f, BLOCK))
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

static void test_session_limit(void)
{
    struct fake f = {.acct.max = 1 * MIB};

    wipe_ssh_set_budget(0);
    CHECK(fill(&f, MAX_BLOCKS) <= (int)(1 * MIB / BLOCK));
    CHECK(f.acct.refused == WIPE_REFUSED_SESSION);
    CHECK(f.acct.held <= 1 * MIB);
    CHECK(f.acct.peak == f.acct.held);
    fake_free(&f);
    CHECK(wipe_ssh_total() == 0);
}

/* A session that swelled to half the budget on its own is refused; one
 * holding little still gets memory past that half. */
static void test_share(void)
{
    static struct fake hostile, honest;
    void *abstract = &hostile, *p;
    size_t half = 4 * MIB;

    wipe_ssh_set_budget(2 * half);
    fill(&hostile, MAX_BLOCKS);
    CHECK(hostile.acct.refused == WIPE_REFUSED_SHARE);
    CHECK(hostile.acct.held <= half);
    CHECK(hostile.acct.held > half - 2 * BLOCK);  /* malloc rounds each block up a little */

    CHECK(fill(&honest, 8) == 8);
    CHECK(honest.acct.refused == WIPE_REFUSED_NONE);
    CHECK(wipe_ssh_total() > half);

    /* Shrinking is never refused; growing past the share is. */
    p = wipe_ssh_realloc(hostile.blocks[0], BLOCK / 2, &abstract);
    CHECK(p != NULL);
    if (p)
        hostile.blocks[0] = p;
    hostile.acct.refused = WIPE_REFUSED_NONE;
    p = wipe_ssh_realloc(hostile.blocks[0], 2 * MIB, &abstract);
    CHECK(p == NULL);
    CHECK(hostile.acct.refused == WIPE_REFUSED_SHARE);

    fake_free(&hostile);
    fake_free(&honest);
    CHECK(wipe_ssh_total() == 0);
}

/* Sessions that arrive one after another each get their share of the
 * half while holding less than it, and the shares shrink as they come
 * (half/2 + half/3 + half/4 ... passes the other half by the fourth): the
 * whole budget is a hard cap. */
static void test_hard_cap(void)
{
    static struct fake many[16];
    size_t budget = 8 * MIB;
    int capped = 0;

    wipe_ssh_set_budget(budget);
    for (int i = 0; i < 16; i++) {
        fill(&many[i], MAX_BLOCKS);
        capped += many[i].acct.refused == WIPE_REFUSED_BUDGET;
        CHECK(wipe_ssh_total() <= budget);
    }
    CHECK(capped > 0);
    CHECK(wipe_ssh_peak() <= budget);
    CHECK(wipe_ssh_total() > budget - 2 * BLOCK);
    for (int i = 0; i < 16; i++)
        fake_free(&many[i]);
    CHECK(wipe_ssh_total() == 0);
}

#define RACERS 8

static void *racer(void *arg)
{
    struct fake *f = arg;

    while (fake_alloc(f, 4 * KIB))
        ;
    return NULL;
}

/* Threads allocating at once keep the counts exact: each is refused at
 * its share, and everything is given back. */
static void test_race(void)
{
    static struct fake f[RACERS];
    pthread_t t[RACERS];
    size_t budget = 16 * MIB;

    wipe_ssh_set_budget(budget);
    for (int i = 0; i < RACERS; i++)
        pthread_create(&t[i], NULL, racer, &f[i]);
    for (int i = 0; i < RACERS; i++)
        pthread_join(t[i], NULL);
    CHECK(wipe_ssh_peak() <= budget);
    for (int i = 0; i < RACERS; i++) {
        CHECK(f[i].acct.refused != WIPE_REFUSED_NONE);
        fake_free(&f[i]);
    }
    CHECK(wipe_ssh_total() == 0);
}

/* A request no allocation could satisfy is refused before it is counted. */
static void test_huge_request(void)
{
    struct fake f = {.acct.max = 0};

    wipe_ssh_set_budget(0);
    CHECK(fake_alloc(&f, SIZE_MAX - 16) == NULL);
    CHECK(f.acct.refused == WIPE_REFUSED_BUDGET);
    CHECK(wipe_ssh_total() == 0);
}

int main(void)
{
    test_session_limit();
    test_share();
    test_hard_cap();
    test_race();
    test_huge_request();
    CHECK_DONE();
}
