/* session: the notify list between workers and the service thread.
 * Regression for the double free tests/soak/soak.py found: a worker that
 * notified again while the service thread walked the list it had taken
 * relinked notify_next of a session still on that list, splicing the hub's
 * new list into the walk, so a session was processed (and its list
 * reference dropped) twice. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "log.h"
#include "session.h"

static int wakes;

static void count_wake(void *arg)
{
    (void)arg;
    wakes++;
}

/* Walk a taken list the way ws.c notified() does, calling `during` after
 * the first step (a worker racing with the walk). Returns the sessions
 * visited, in order, in `seen`. */
static int walk(struct session_hub *h, struct session *list, struct session **seen, int max,
                void (*during)(void *), void *arg)
{
    int n = 0;

    for (struct session *s = list, *next; s; s = next) {
        next = session_hub_notified_next(h, s);
        if (n < max)
            seen[n] = s;
        n++;
        if (n == 1 && during)
            during(arg);
    }
    return n;
}

struct trio {
    struct session *a, *b, *c;
};

/* While the first session of the taken list is being processed, the
 * workers of c (new) and of the one still waiting on the list notify. */
static void renotify(void *arg)
{
    struct trio *t = arg;

    session_notify(t->c);
    session_notify(t->a);
}

int main(void)
{
    struct config cfg;
    struct session_hub hub;
    struct session *seen[8];
    struct trio t;
    struct session *list;
    int n;

    log_init(LOG_ERROR);
    memset(&cfg, 0, sizeof(cfg));
    session_hub_init(&hub, &cfg, NULL);
    session_hub_set_wake(&hub, count_wake, NULL);

    t.a = session_new(&hub, "192.0.2.1", "a.example", 22);
    t.b = session_new(&hub, "192.0.2.2", "b.example", 22);
    t.c = session_new(&hub, "192.0.2.3", "c.example", 22);
    CHECK(t.a && t.b && t.c);

    /* Notifying twice queues once, with one reference. */
    session_notify(t.a);
    session_notify(t.b);
    session_notify(t.b);
    CHECK(t.a->refs == 2 && t.b->refs == 2);
    CHECK(wakes == 2);

    /* The list is newest first: b, then a. While b is processed, c and a
     * notify again. a is still on the taken list: it must not be queued a
     * second time, and the walk must end at a, not run on into c. */
    list = session_hub_take_notified(&hub);
    n = walk(&hub, list, seen, 8, renotify, &t);
    CHECK(n == 2);
    CHECK(n >= 2 && seen[0] == t.b && seen[1] == t.a);
    CHECK(t.a->refs == 2);   /* no second list reference for a */
    CHECK(t.c->refs == 2);   /* c's list reference, not yet dropped */
    session_unref(t.a);
    session_unref(t.b);

    /* The next take has c alone; a notification after a session was
     * reached queues it again (the event is not lost). */
    list = session_hub_take_notified(&hub);
    CHECK(list == t.c);
    n = walk(&hub, list, seen, 8, NULL, NULL);
    CHECK(n == 1 && seen[0] == t.c);
    session_unref(t.c);
    session_notify(t.a);
    list = session_hub_take_notified(&hub);
    CHECK(list == t.a);
    CHECK(walk(&hub, list, seen, 8, NULL, NULL) == 1);
    session_unref(t.a);

    CHECK(t.a->refs == 1 && t.b->refs == 1 && t.c->refs == 1);
    CHECK(session_hub_count(&hub) == 3);
    session_unref(t.a);
    session_unref(t.b);
    session_unref(t.c);
    CHECK(session_hub_count(&hub) == 0);
    session_hub_destroy(&hub);
    CHECK_DONE();
}
