/* session: the `sign` extension's one request in flight (session.h). The
 * answer to exactly the awaited request is handed to the worker; any other
 * (unknown, late, second) is dropped; the wait ends at its timeout, or at
 * once when the browser leaves; after the wait, the request is closed. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "clock.h"
#include "config.h"
#include "session.h"

static void no_wake(void *arg)
{
    (void)arg;
}

struct waiter {
    struct session *s;
    uint32_t request;
    int timeout_ms;
    int rc;
    char *answer;
    int64_t waited_ms;
};

static void *wait_cb(void *arg)
{
    struct waiter *w = arg;
    int64_t t0 = clock_now_ms();

    w->rc = session_sign_wait(w->s, w->request, w->timeout_ms, &w->answer);
    w->waited_ms = clock_now_ms() - t0;
    return NULL;
}

/* A worker thread waiting for the answer; the test thread plays the
 * service thread. Whether the answer comes before or during the wait, it
 * must be taken. */
static void start_waiter(struct waiter *w, pthread_t *t)
{
    CHECK(pthread_create(t, NULL, wait_cb, w) == 0);
}

int main(void)
{
    struct config cfg;
    struct session_hub hub;
    struct session *s;
    struct waiter w;
    pthread_t t;
    uint32_t id, id2;
    char *answer = NULL;

    memset(&cfg, 0, sizeof(cfg));
    cfg.memory_budget_mib = 16;
    session_hub_init(&hub, &cfg, NULL);
    session_hub_set_wake(&hub, no_wake, NULL);
    s = session_new(&hub, "192.0.2.1", "a.example", 22);
    CHECK(s != NULL);

    /* Nothing awaited: every answer is dropped. */
    CHECK(session_sign_answer(s, 1, strdup("AAAA")) == -1);
    CHECK(session_sign_answer(s, 0, NULL) == -1);

    /* Awaited: a wrong id is dropped, the right one taken once. The answer
     * may come before the worker waits (the frame goes out after open). */
    id = session_sign_open(s);
    CHECK(id == 1);
    CHECK(session_sign_answer(s, id + 1, strdup("BBBB")) == -1);
    CHECK(session_sign_answer(s, id, strdup("CCCC")) == 0);
    CHECK(session_sign_answer(s, id, strdup("DDDD")) == -1);  /* a second answer */
    CHECK(session_sign_wait(s, id, 1000, &answer) == 0);
    CHECK_STR(answer, "CCCC");
    free(answer);
    /* Finished: a late answer is dropped. */
    CHECK(session_sign_answer(s, id, strdup("EEEE")) == -1);

    /* An answer without a signature is an answer (the login reports it). */
    id = session_sign_open(s);
    CHECK(id == 2);
    CHECK(session_sign_answer(s, id, NULL) == 0);
    answer = (char *)"x";
    CHECK(session_sign_wait(s, id, 1000, &answer) == 0);
    CHECK(answer == NULL);

    /* The answer arriving while the worker waits wakes it. */
    id = session_sign_open(s);
    w = (struct waiter){.s = s, .request = id, .timeout_ms = 10000};
    start_waiter(&w, &t);
    CHECK(session_sign_answer(s, id, strdup("FFFF")) == 0);
    pthread_join(t, NULL);
    CHECK(w.rc == 0);
    CHECK_STR(w.answer, "FFFF");
    CHECK(w.waited_ms < 5000);
    free(w.answer);

    /* No answer: the wait ends at its timeout; a later answer is dropped. */
    id = session_sign_open(s);
    answer = (char *)"x";
    int64_t t0 = clock_now_ms();
    CHECK(session_sign_wait(s, id, 200, &answer) == SESSION_SIGN_TIMEOUT);
    CHECK(clock_now_ms() - t0 >= 190);
    CHECK(answer == NULL);
    CHECK(session_sign_answer(s, id, strdup("GGGG")) == -1);

    /* A new request does not take an answer meant for the old one. */
    id = session_sign_open(s);
    id2 = id - 1;
    CHECK(session_sign_answer(s, id2, strdup("HHHH")) == -1);
    CHECK(session_sign_wait(s, id, 50, &answer) == SESSION_SIGN_TIMEOUT);

    /* The browser leaves: the waiting worker wakes at once, and a request
     * opened after that ends at once too. */
    id = session_sign_open(s);
    w = (struct waiter){.s = s, .request = id, .timeout_ms = 30000};
    start_waiter(&w, &t);
    session_ws_gone(s, "test");
    pthread_join(t, NULL);
    CHECK(w.rc == SESSION_SIGN_GONE);
    CHECK(w.answer == NULL);
    CHECK(w.waited_ms < 5000);
    id = session_sign_open(s);
    CHECK(session_sign_wait(s, id, 30000, &answer) == SESSION_SIGN_GONE);

    /* An answer held when the session goes is freed with it (ASan). */
    id = session_sign_open(s);
    CHECK(session_sign_answer(s, id, strdup("IIII")) == 0);
    session_unref(s);
    session_hub_destroy(&hub);
    CHECK_DONE();
}
