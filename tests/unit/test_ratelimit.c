/* limits: live sessions, auth failures with refunds, spray, challenge rate,
 * window expiry driven by `now`, bounded memory under address rotation,
 * eviction order, a table full of live sessions, and threads. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "ratelimit.h"

static struct config cfg;

static struct ratelimit *fresh(void)
{
    memset(&cfg, 0, sizeof(cfg));
    cfg.max_concurrent_per_ip = 3;
    cfg.auth_challenge_per_min = 10;
    return ratelimit_new(&cfg);
}

static const char *ipn(int i)
{
    static char buf[32];

    snprintf(buf, sizeof(buf), "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255,
             i & 255);
    return buf;
}

static void test_sessions(void)
{
    struct ratelimit *l = fresh();
    const char *k = "198.51.100.1";

    CHECK(l != NULL);
    CHECK(ratelimit_session_can_open(l, k) == 1);
    CHECK(ratelimit_entries(l) == 0);  /* asking creates nothing */
    CHECK(ratelimit_session_open(l, k) == 0);
    CHECK(ratelimit_session_open(l, k) == 0);
    CHECK(ratelimit_session_can_open(l, k) == 1);
    CHECK(ratelimit_session_open(l, k) == 0);
    CHECK(ratelimit_sessions(l, k) == 3);
    CHECK(ratelimit_session_can_open(l, k) == 0);
    CHECK(ratelimit_session_open(l, k) == -1);  /* atomic re-check */
    CHECK(ratelimit_sessions(l, k) == 3);
    /* Another client is not affected. */
    CHECK(ratelimit_session_can_open(l, "198.51.100.2") == 1);
    /* A closed session frees its slot at once. */
    ratelimit_session_close(l, k);
    CHECK(ratelimit_session_can_open(l, k) == 1);
    CHECK(ratelimit_sessions(l, k) == 2);
    ratelimit_session_close(l, k);
    ratelimit_session_close(l, k);
    ratelimit_session_close(l, k);  /* one too many: no underflow */
    ratelimit_session_close(l, "never.seen");
    CHECK(ratelimit_sessions(l, k) == 0);
    CHECK(ratelimit_session_open(l, k) == 0);
    CHECK(ratelimit_sessions(l, k) == 1);
    CHECK(ratelimit_sessions(l, "never.seen") == 0);

    /* NULLs are refused, not crashed on. */
    CHECK(ratelimit_session_can_open(NULL, k) == 0);
    CHECK(ratelimit_session_open(l, NULL) == -1);
    ratelimit_session_close(NULL, k);
    ratelimit_free(l);
    ratelimit_free(NULL);
}

static void test_auth(void)
{
    struct ratelimit *l = fresh();
    const char *k = "203.0.113.5";
    time_t t = 1000000;

    /* Four failures: not blocked yet. */
    for (int i = 0; i < 4; i++)
        CHECK(ratelimit_auth_attempt(l, k, t + i) == 0);
    CHECK(ratelimit_blocked(l, k, t + 4) == 0);
    /* The fifth attempt may go ahead, and blocks while it is pending. */
    CHECK(ratelimit_auth_attempt(l, k, t + 5) == 0);
    CHECK(ratelimit_blocked(l, k, t + 5) == 1);
    /* A sixth parallel guess is refused. */
    CHECK(ratelimit_auth_attempt(l, k, t + 6) == 1);
    /* The fifth succeeded: refunded, the block lifts. */
    ratelimit_auth_refund(l, k, t + 7);
    CHECK(ratelimit_blocked(l, k, t + 7) == 0);
    /* The next failure is the fifth: blocked for an hour. */
    CHECK(ratelimit_auth_attempt(l, k, t + 8) == 0);
    CHECK(ratelimit_blocked(l, k, t + 8) == 1);
    CHECK(ratelimit_blocked(l, k, t + 8 + RATELIMIT_BLOCK_SECS - 1) == 1);
    CHECK(ratelimit_auth_attempt(l, k, t + 8 + RATELIMIT_BLOCK_SECS - 1) == 1);
    CHECK(ratelimit_blocked(l, k, t + 8 + RATELIMIT_BLOCK_SECS) == 0);
    CHECK(ratelimit_auth_attempt(l, k, t + 8 + RATELIMIT_BLOCK_SECS) == 0);
    CHECK(ratelimit_blocked(l, "203.0.113.6", t + 8) == 0);

    /* Failures leave the window after 10 minutes. */
    const char *k2 = "203.0.113.7";
    for (int i = 0; i < 4; i++)
        CHECK(ratelimit_auth_attempt(l, k2, t) == 0);
    CHECK(ratelimit_auth_attempt(l, k2, t + RATELIMIT_AUTH_WINDOW_SECS - 1) == 0);
    CHECK(ratelimit_blocked(l, k2, t + RATELIMIT_AUTH_WINDOW_SECS - 1) == 1);
    const char *k3 = "203.0.113.8";
    for (int i = 0; i < 4; i++)
        CHECK(ratelimit_auth_attempt(l, k3, t) == 0);
    CHECK(ratelimit_auth_attempt(l, k3, t + RATELIMIT_AUTH_WINDOW_SECS) == 0);
    CHECK(ratelimit_blocked(l, k3, t + RATELIMIT_AUTH_WINDOW_SECS) == 0);

    /* Successes never add up: attempt + refund, many times. */
    const char *k4 = "203.0.113.9";
    for (int i = 0; i < 50; i++) {
        CHECK(ratelimit_auth_attempt(l, k4, t + i) == 0);
        ratelimit_auth_refund(l, k4, t + i);
    }
    CHECK(ratelimit_blocked(l, k4, t + 50) == 0);

    /* A refund with nothing left in the window lifts nothing. */
    const char *k5 = "203.0.113.10";
    for (int i = 0; i < 5; i++)
        CHECK(ratelimit_auth_attempt(l, k5, t) == 0);
    CHECK(ratelimit_blocked(l, k5, t) == 1);
    ratelimit_auth_refund(l, k5, t + RATELIMIT_AUTH_WINDOW_SECS + 100);
    CHECK(ratelimit_blocked(l, k5, t + RATELIMIT_AUTH_WINDOW_SECS + 100) == 1);
    /* A refund for a client never seen is harmless. */
    ratelimit_auth_refund(l, "never.seen", t);
    CHECK(ratelimit_entries(l) == 5);
    ratelimit_free(l);
}

static void test_spray(void)
{
    struct ratelimit *l = fresh();
    const char *k = "192.0.2.200";
    time_t t = 5000000;
    char host[32];

    for (int i = 0; i < RATELIMIT_SPRAY_MAX_HOSTS; i++) {
        snprintf(host, sizeof(host), "h%d.example.com", i);
        CHECK(ratelimit_record_target(l, k, host, t + i) == 0);
    }
    /* The same hosts again, in any case: still five. */
    CHECK(ratelimit_record_target(l, k, "h0.example.com", t + 10) == 0);
    CHECK(ratelimit_record_target(l, k, "H1.EXAMPLE.COM", t + 11) == 0);
    for (int i = 0; i < 20; i++)
        CHECK(ratelimit_record_target(l, k, "h2.example.com", t + 12) == 0);
    CHECK(ratelimit_blocked(l, k, t + 12) == 0);
    /* The sixth distinct host trips the block. */
    CHECK(ratelimit_record_target(l, k, "h5.example.com", t + 13) == 1);
    CHECK(ratelimit_blocked(l, k, t + 13) == 1);
    CHECK(ratelimit_blocked(l, k, t + 13 + RATELIMIT_BLOCK_SECS - 1) == 1);
    CHECK(ratelimit_blocked(l, k, t + 13 + RATELIMIT_BLOCK_SECS) == 0);
    /* Blocked keys also get no SSH attempts. */
    CHECK(ratelimit_auth_attempt(l, k, t + 14) == 1);

    /* Hosts leave the window after an hour. */
    const char *k2 = "192.0.2.201";
    CHECK(ratelimit_record_target(l, k2, "a", t) == 0);
    for (int i = 0; i < 4; i++) {
        snprintf(host, sizeof(host), "b%d", i);
        CHECK(ratelimit_record_target(l, k2, host, t + 1000) == 0);
    }
    /* "a" is an hour old now: f makes five, g six. */
    CHECK(ratelimit_record_target(l, k2, "f", t + RATELIMIT_SPRAY_WINDOW_SECS) == 0);
    CHECK(ratelimit_blocked(l, k2, t + RATELIMIT_SPRAY_WINDOW_SECS) == 0);
    CHECK(ratelimit_record_target(l, k2, "g", t + RATELIMIT_SPRAY_WINDOW_SECS) == 1);

    /* Targeting a host again keeps it in the window. */
    const char *k3 = "192.0.2.202";
    CHECK(ratelimit_record_target(l, k3, "a", t) == 0);
    CHECK(ratelimit_record_target(l, k3, "a", t + 3000) == 0);
    for (int i = 0; i < 4; i++) {
        snprintf(host, sizeof(host), "c%d", i);
        CHECK(ratelimit_record_target(l, k3, host, t + 3100) == 0);
    }
    CHECK(ratelimit_record_target(l, k3, "z", t + RATELIMIT_SPRAY_WINDOW_SECS + 10) == 1);

    /* Many hosts after the block: memory stays put, still blocked. */
    for (int i = 0; i < 100; i++) {
        snprintf(host, sizeof(host), "x%d", i);
        ratelimit_record_target(l, k, host, t + 20);
    }
    CHECK(ratelimit_blocked(l, k, t + 20) == 1);
    ratelimit_free(l);
}

static void test_challenges(void)
{
    struct ratelimit *l = fresh();
    const char *k = "198.51.100.77";
    time_t t = 100;

    for (int i = 0; i < 10; i++)
        CHECK(ratelimit_challenge(l, k, t) == 0);
    CHECK(ratelimit_challenge(l, k, t) == 1);  /* the 11th in 60 s */
    CHECK(ratelimit_challenge(l, "198.51.100.78", t) == 0);
    CHECK(ratelimit_challenge(l, k, t + 59) == 1);  /* t is still in the window */
    /* At t + 60 the burst at t has left; t+59 and t+60 remain. */
    CHECK(ratelimit_challenge(l, k, t + 60) == 0);

    /* One every 6 s is exactly 10 a minute: never over. */
    const char *k2 = "198.51.100.79";
    int over = 0;
    for (time_t s = 1000; s < 2000; s += 6)
        over |= ratelimit_challenge(l, k2, s);
    CHECK(over == 0);
    /* One every 5 s is 12 a minute: over. */
    const char *k3 = "198.51.100.80";
    over = 0;
    for (time_t s = 1000; s < 2000; s += 5)
        over |= ratelimit_challenge(l, k3, s);
    CHECK(over == 1);

    /* Refused requests count too: hammering keeps the client out. */
    const char *k4 = "198.51.100.81";
    for (time_t s = 3000; s < 3100; s++)
        ratelimit_challenge(l, k4, s);
    CHECK(ratelimit_challenge(l, k4, 3100) == 1);
    /* After a quiet minute it is welcome again. */
    CHECK(ratelimit_challenge(l, k4, 3160) == 0);

    /* A long pause clears the whole window. */
    for (int i = 0; i < 10; i++)
        ratelimit_challenge(l, k4, 10000);
    CHECK(ratelimit_challenge(l, k4, 10000) == 1);
    CHECK(ratelimit_challenge(l, k4, 20000) == 0);

    /* A clock that steps back counts in the newest second. */
    const char *k5 = "198.51.100.82";
    for (int i = 0; i < 10; i++)
        CHECK(ratelimit_challenge(l, k5, 50000) == 0);
    CHECK(ratelimit_challenge(l, k5, 49990) == 1);
    ratelimit_free(l);

    /* AUTH_CHALLENGE_PER_MIN is honoured as configured. */
    memset(&cfg, 0, sizeof(cfg));
    cfg.max_concurrent_per_ip = 3;
    cfg.auth_challenge_per_min = 1;
    l = ratelimit_new(&cfg);
    CHECK(ratelimit_challenge(l, k, 0) == 0);
    CHECK(ratelimit_challenge(l, k, 1) == 1);
    ratelimit_free(l);
}

static void test_rotation(void)
{
    struct ratelimit *l = fresh();
    time_t t = 1000000;
    const char *live = "203.0.113.1", *blocked = "203.0.113.2";

    CHECK(ratelimit_session_open(l, live) == 0);
    for (int i = 0; i < 5; i++)
        ratelimit_auth_attempt(l, blocked, t);
    CHECK(ratelimit_blocked(l, blocked, t) == 1);

    /* 20000 addresses, each asking once: the table never grows past its
     * capacity, and neither the live session nor the block is forgotten
     * while idle entries can go instead. */
    for (int i = 0; i < 20000; i++) {
        ratelimit_challenge(l, ipn(i), t + i / 100);
        CHECK(ratelimit_entries(l) <= RATELIMIT_CAPACITY);
    }
    CHECK(ratelimit_entries(l) == RATELIMIT_CAPACITY);
    CHECK(ratelimit_sessions(l, live) == 1);
    CHECK(ratelimit_blocked(l, blocked, t + 200) == 1);
    /* The oldest idle entries went first: the newest are still there. */
    for (int i = 0; i < 9; i++)
        CHECK(ratelimit_challenge(l, ipn(19999), t + 200) == 0);
    CHECK(ratelimit_challenge(l, ipn(19999), t + 200) == 1);
    ratelimit_session_close(l, live);

    /* Once every entry is stale, a new key sweeps them all. */
    ratelimit_challenge(l, "198.51.100.1", t + 200 + RATELIMIT_BLOCK_SECS + 1);
    CHECK(ratelimit_entries(l) == 1);
    ratelimit_free(l);
}

static void test_full_of_sessions(void)
{
    struct ratelimit *l = fresh();
    time_t t = 2000000;

    for (int i = 0; i < RATELIMIT_CAPACITY; i++)
        CHECK(ratelimit_session_open(l, ipn(i)) == 0);
    CHECK(ratelimit_entries(l) == RATELIMIT_CAPACITY);

    /* No entry can go: new clients are refused everything. */
    const char *newcomer = "198.51.100.9";
    CHECK(ratelimit_session_open(l, newcomer) == -1);
    CHECK(ratelimit_challenge(l, newcomer, t) == 1);
    CHECK(ratelimit_auth_attempt(l, newcomer, t) == 1);
    CHECK(ratelimit_record_target(l, newcomer, "example.com", t) == 1);
    CHECK(ratelimit_session_can_open(l, newcomer) == 1);  /* open decides */
    CHECK(ratelimit_blocked(l, newcomer, t) == 0);
    /* Known clients carry on. */
    CHECK(ratelimit_session_open(l, ipn(7)) == 0);
    CHECK(ratelimit_challenge(l, ipn(7), t) == 0);
    CHECK(ratelimit_auth_attempt(l, ipn(7), t) == 0);
    for (int i = 0; i < RATELIMIT_CAPACITY; i++)
        CHECK(ratelimit_sessions(l, ipn(i)) == (i == 7 ? 2 : 1));

    /* One session ends: its entry can make room. */
    ratelimit_session_close(l, ipn(100));
    CHECK(ratelimit_session_open(l, newcomer) == 0);
    CHECK(ratelimit_sessions(l, ipn(100)) == 0);
    CHECK(ratelimit_entries(l) == RATELIMIT_CAPACITY);
    ratelimit_free(l);
}

static void test_full_of_blocks(void)
{
    struct ratelimit *l = fresh();
    time_t t = 3000000, later = t + 2000;
    char host[16];

    /* Every entry blocked for spray; the first one's block ends first. */
    for (int i = 0; i < RATELIMIT_CAPACITY; i++)
        for (int h = 0; h <= RATELIMIT_SPRAY_MAX_HOSTS; h++) {
            snprintf(host, sizeof(host), "h%d", h);
            ratelimit_record_target(l, ipn(i), host, i == 0 ? t : t + 1000 + i / 8);
        }
    CHECK(ratelimit_entries(l) == RATELIMIT_CAPACITY);
    CHECK(ratelimit_blocked(l, ipn(0), later) == 1);
    CHECK(ratelimit_blocked(l, ipn(1), later) == 1);
    CHECK(ratelimit_blocked(l, ipn(RATELIMIT_CAPACITY - 1), later) == 1);

    /* A new client is served: the block ending first is forgotten. */
    CHECK(ratelimit_challenge(l, "198.51.100.9", later) == 0);
    CHECK(ratelimit_entries(l) == RATELIMIT_CAPACITY);
    CHECK(ratelimit_blocked(l, ipn(0), later) == 0);
    CHECK(ratelimit_blocked(l, ipn(1), later) == 1);
    CHECK(ratelimit_blocked(l, ipn(RATELIMIT_CAPACITY - 1), later) == 1);
    ratelimit_free(l);
}

static void test_long_key(void)
{
    struct ratelimit *l = fresh();
    char key[200];

    memset(key, 'k', sizeof(key) - 1);
    key[sizeof(key) - 1] = '\0';
    CHECK(ratelimit_session_open(l, key) == 0);
    CHECK(ratelimit_sessions(l, key) == 1);
    ratelimit_session_close(l, key);
    CHECK(ratelimit_sessions(l, key) == 0);
    ratelimit_free(l);
}

struct worker {
    struct ratelimit *l;
    int id;
};

static void *worker_cb(void *arg)
{
    struct worker *w = arg;
    char own[32];

    snprintf(own, sizeof(own), "192.0.2.%d", w->id);
    for (int i = 0; i < 20000; i++) {
        if (ratelimit_session_open(w->l, "198.51.100.1") == 0)
            ratelimit_session_close(w->l, "198.51.100.1");
        if (ratelimit_auth_attempt(w->l, own, 1000 + i / 1000) == 0)
            ratelimit_auth_refund(w->l, own, 1000 + i / 1000);
        ratelimit_challenge(w->l, "198.51.100.2", 1000 + i / 1000);
        ratelimit_blocked(w->l, own, 1000 + i / 1000);
    }
    return NULL;
}

static void test_threads(void)
{
    struct ratelimit *l = fresh();
    pthread_t th[4];
    struct worker w[4];

    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){ l, i + 1 };
        CHECK(pthread_create(&th[i], NULL, worker_cb, &w[i]) == 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    CHECK(ratelimit_sessions(l, "198.51.100.1") == 0);
    for (int i = 0; i < 4; i++) {
        char own[32];
        snprintf(own, sizeof(own), "192.0.2.%d", i + 1);
        CHECK(ratelimit_blocked(l, own, 2000) == 0);
    }
    ratelimit_free(l);
}

int main(void)
{
    test_sessions();
    test_auth();
    test_spray();
    test_challenges();
    test_rotation();
    test_full_of_sessions();
    test_full_of_blocks();
    test_long_key();
    test_threads();
    CHECK_DONE();
}
