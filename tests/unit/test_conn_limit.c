/* conn_limit: per-network counts (IPv4, mapped IPv4, IPv6 per /64), the
 * per-network cap and who is exempt from it, the table capacity, the
 * victim when it is full, and removal under churn (backward shift must
 * keep every remaining owner reachable). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "conn_limit.h"

static struct sockaddr_storage addr(const char *text)
{
    struct sockaddr_storage ss;

    memset(&ss, 0, sizeof(ss));
    if (strchr(text, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        inet_pton(AF_INET6, text, &s6->sin6_addr);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        inet_pton(AF_INET, text, &s4->sin_addr);
    }
    return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

static void test_cap_and_keys(void)
{
    struct conn_limit *cl = conn_limit_new(100, 3);
    struct sockaddr_storage a = addr("192.0.2.1"), m = addr("::ffff:192.0.2.1");
    struct sockaddr_storage v6a = addr("2001:db8:1:2::1"), v6b = addr("2001:db8:1:2::ffff");
    struct sockaddr_storage v6c = addr("2001:db8:1:3::1");
    static char owners[16];

    CHECK(cl != NULL);
    CHECK(conn_limit_add(cl, &owners[0], SA(a), 1) == 0);
    CHECK(conn_limit_add(cl, &owners[1], SA(m), 1) == 0);  /* mapped: same client */
    CHECK(conn_limit_count(cl, SA(a)) == 2);
    CHECK(conn_limit_add(cl, &owners[2], SA(a), 1) == 0);
    CHECK(conn_limit_add(cl, &owners[3], SA(a), 1) == -1);  /* the cap */
    CHECK(conn_limit_add(cl, &owners[4], SA(v6a), 1) == 0);
    CHECK(conn_limit_add(cl, &owners[5], SA(v6b), 1) == 0);  /* same /64 */
    CHECK(conn_limit_count(cl, SA(v6a)) == 2);
    CHECK(conn_limit_count(cl, SA(v6c)) == 0);
    CHECK(conn_limit_add(cl, &owners[4], SA(v6c), 1) == -1);  /* counted already */
    conn_limit_remove(cl, &owners[1]);
    conn_limit_remove(cl, &owners[1]);  /* twice: ignored */
    CHECK(conn_limit_count(cl, SA(a)) == 2);
    CHECK(conn_limit_add(cl, &owners[3], SA(a), 1) == 0);
    CHECK(conn_limit_total(cl) == 5);
    conn_limit_free(cl);
}

static void test_capacity_and_churn(void)
{
    enum { N = 500 };
    struct conn_limit *cl = conn_limit_new(N, 2);
    static char owners[N + 1];
    struct sockaddr_storage ss[N];
    char text[32];

    for (int i = 0; i < N; i++) {
        snprintf(text, sizeof(text), "10.%d.%d.1", i / 200, i % 200);
        ss[i] = addr(text);
        CHECK(conn_limit_add(cl, &owners[i], SA(ss[i]), 1) == 0);
    }
    CHECK(conn_limit_add(cl, &owners[N], SA(ss[0]), 1) == -1);  /* table full */
    /* Remove every other one; the rest must still be found. */
    for (int i = 0; i < N; i += 2)
        conn_limit_remove(cl, &owners[i]);
    for (int i = 0; i < N; i++)
        CHECK(conn_limit_count(cl, SA(ss[i])) == (i % 2));
    for (int i = 1; i < N; i += 2)
        conn_limit_remove(cl, &owners[i]);
    CHECK(conn_limit_total(cl) == 0);
    conn_limit_free(cl);
}

/* A trusted proxy (not capped) stands for many clients; the table still
 * bounds it. */
static void test_uncapped(void)
{
    struct conn_limit *cl = conn_limit_new(10, 3);
    struct sockaddr_storage p = addr("192.0.2.9");
    static char owners[11];

    for (int i = 0; i < 10; i++)
        CHECK(conn_limit_add(cl, &owners[i], SA(p), 0) == 0);
    CHECK(conn_limit_count(cl, SA(p)) == 10);
    CHECK(conn_limit_full(cl));
    CHECK(conn_limit_add(cl, &owners[10], SA(p), 0) == -1);
    conn_limit_free(cl);
}

/* Full: the oldest connection of the network holding the most goes, never
 * one of a network holding fewer. */
static void test_victim(void)
{
    struct conn_limit *cl = conn_limit_new(8, 5);
    struct sockaddr_storage honest = addr("198.51.100.1"), a = addr("203.0.113.1");
    struct sockaddr_storage b = addr("203.0.113.2");
    static char owners[9];

    CHECK(conn_limit_victim(cl) == NULL);
    CHECK(conn_limit_add(cl, &owners[0], SA(honest), 1) == 0);
    CHECK(conn_limit_add(cl, &owners[1], SA(honest), 1) == 0);
    CHECK(conn_limit_add(cl, &owners[2], SA(b), 1) == 0);
    for (int i = 3; i < 7; i++)
        CHECK(conn_limit_add(cl, &owners[i], SA(a), 1) == 0);
    CHECK(conn_limit_add(cl, &owners[7], SA(b), 1) == 0);
    CHECK(conn_limit_full(cl));
    CHECK(conn_limit_victim(cl) == &owners[3]);   /* a holds 4: its oldest */
    conn_limit_remove(cl, &owners[3]);
    conn_limit_remove(cl, &owners[4]);
    CHECK(!conn_limit_full(cl));
    /* a, b and honest hold two each now: the victim is one of the ties'
     * oldest, and b's newest and a's newest are never chosen. */
    const void *v = conn_limit_victim(cl);
    CHECK(v == &owners[0] || v == &owners[2] || v == &owners[5]);
    conn_limit_free(cl);
}

int main(void)
{
    test_cap_and_keys();
    test_uncapped();
    test_victim();
    test_capacity_and_churn();
    conn_limit_free(NULL);
    CHECK_DONE();
}
