/* store_redis: the shared store against a real Redis or Valkey that this
 * test starts itself on a loopback port, with its own config and no
 * persistence: challenge rate and single use, cookie ids, live-session
 * leases across two stores (two relays), the auth budget, spray, the TTL
 * and names of every key, the bounded queue in front of a store that
 * stopped answering, and the store going away and coming back.
 * Usage: test_store_redis SERVER-BINARY [EXPECTED-SERVER-NAME]; CMake runs
 * it once per engine (redis-server, valkey-server), and a missing engine
 * fails that run. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <netinet/in.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <pthread.h>

#include "auth_cookie.h"
#include "check.h"
#include "clock.h"
#include "config.h"
#include "ratelimit.h"
#include "store.h"

static struct config cfg;
static char dir[] = "/tmp/wc-store-test-XXXXXX";
static int port;
static pid_t server_pid = -1;
/* The engine's binary and the name it gives in INFO server (argv). */
static const char *server_bin;
static const char *server_name;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int woken;

static void wake_cb(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    woken++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), p = -1;

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        p = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return p;
}

static redisContext *raw(void)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);

    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

static int server_start(void)
{
    char conf[256], log[256];
    FILE *f;
    const char *bin = server_bin;

    snprintf(conf, sizeof(conf), "%s/store.conf", dir);
    snprintf(log, sizeof(log), "%s/store.log", dir);
    f = fopen(conf, "w");
    if (!f)
        return -1;
    fprintf(f, "bind 127.0.0.1\nport %d\nsave \"\"\nappendonly no\ndir %s\nlogfile %s\n"
               "daemonize no\n", port, dir, log);
    fclose(f);
    server_pid = fork();
    if (server_pid == 0) {
        execl(bin, bin, conf, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        redisContext *c = raw();
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            redisFree(c);
            if (ok)
                return 0;
        }
        usleep(25 * 1000);
    }
    return -1;
}

static void server_stop(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGTERM);
        waitpid(server_pid, NULL, 0);
        server_pid = -1;
    }
}

/* Submit and wait for the answer (the test plays the service thread). */
static struct store_req *ask(struct store *st, struct store_req *r)
{
    int64_t deadline = clock_now_ms() + 5000;

    if (store_submit(st, r) == STORE_DONE)
        return r;
    for (;;) {
        struct store_req *got = store_take_done(st);
        if (got) {
            CHECK(got == r && got->next == NULL);
            return got;
        }
        if (clock_now_ms() > deadline) {
            CHECK(!"store answered within 5 s");
            return r;
        }
        pthread_mutex_lock(&mu);
        if (!woken) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&cv, &mu, &ts);
        }
        woken = 0;
        pthread_mutex_unlock(&mu);
    }
}

static int wait_ready(struct store *st, int want, int ms)
{
    int64_t deadline = clock_now_ms() + ms;

    while (store_ready(st) != want && clock_now_ms() < deadline)
        usleep(20 * 1000);
    return store_ready(st) == want;
}

static const char *purpose(void)
{
    static char p[AUTH_PURPOSE_BUF];
    auth_purpose_for("example.com", 22, p);
    return p;
}

static void req(struct store_req *r, enum store_op op, const char *ip)
{
    memset(r, 0, sizeof(r[0]));
    r->op = op;
    snprintf(r->key, sizeof(r->key), "%s", ip);
    snprintf(r->client_ip, sizeof(r->client_ip), "%s", ip);
    r->now_ms = clock_now_ms();
    r->wall = time(NULL);
}

static int challenge(struct store *st, const char *ip, int valid, struct auth_challenge *out)
{
    struct store_req r;

    req(&r, STORE_CHALLENGE, ip);
    r.valid = valid;
    if (valid)
        auth_challenge_make(purpose(), ip, r.now_ms, &r.ch);
    ask(st, &r);
    if (out)
        *out = r.ch;
    return r.status;
}

static int upgrade(struct store *st, const char *ip, const char *host, int refused,
                   char *lease_out)
{
    struct store_req r;

    req(&r, STORE_UPGRADE, ip);
    auth_uuid_new(r.jti);
    r.exp = (int64_t)time(NULL) + 600;
    snprintf(r.host, sizeof(r.host), "%s", host);
    r.target_refused = refused;
    ask(st, &r);
    if (lease_out)
        snprintf(lease_out, STORE_LEASE_ID_MAX, "%s", r.lease);
    return r.status;
}

static void test_challenges(struct store *a, struct store *b)
{
    struct auth_challenge c, again;
    struct store_req r;

    /* AUTH_CHALLENGE_PER_MIN = 5 over both relays, invalid ones counted. */
    CHECK(challenge(a, "198.51.100.1", 1, &c) == 200);
    CHECK(challenge(b, "198.51.100.1", 0, NULL) == 400);
    CHECK(challenge(a, "198.51.100.1", 1, NULL) == 200);
    CHECK(challenge(b, "198.51.100.1", 1, NULL) == 200);
    CHECK(challenge(a, "198.51.100.1", 1, NULL) == 200);
    CHECK(challenge(b, "198.51.100.1", 1, NULL) == 429);
    CHECK(challenge(a, "198.51.100.1", 0, NULL) == 400);  /* invalid answers 400 first */
    CHECK(challenge(a, "198.51.100.2", 1, NULL) == 200);  /* per client */

    /* Issued by one relay, taken at the other, once. */
    req(&r, STORE_TAKE, "198.51.100.1");
    memcpy(r.nonce_id, c.nonce_id, sizeof(c.nonce_id));
    ask(b, &r);
    CHECK(r.status == 200);
    again = r.ch;
    CHECK_STR(again.purpose, purpose());
    CHECK_STR(again.client_ip, "198.51.100.1");
    CHECK(memcmp(again.nonce, c.nonce, AUTH_NONCE_BYTES) == 0);
    req(&r, STORE_TAKE, "198.51.100.1");
    memcpy(r.nonce_id, c.nonce_id, sizeof(c.nonce_id));
    ask(a, &r);
    CHECK(r.status == 400);
    req(&r, STORE_TAKE, "198.51.100.1");
    snprintf(r.nonce_id, sizeof(r.nonce_id), "00000000-0000-4000-8000-000000000000");
    ask(a, &r);
    CHECK(r.status == 400);
}

static void test_upgrades_and_leases(struct store *a, struct store *b)
{
    struct store_req r, r2;
    char lease[3][STORE_LEASE_ID_MAX], extra[STORE_LEASE_ID_MAX];

    /* One cookie id, once, across relays. */
    req(&r, STORE_UPGRADE, "198.51.100.10");
    auth_uuid_new(r.jti);
    r.exp = (int64_t)time(NULL) + 600;
    snprintf(r.host, sizeof(r.host), "example.com");
    r2 = r;
    ask(a, &r);
    CHECK(r.status == 0 && r.lease[0] != '\0');
    ask(b, &r2);
    CHECK(r2.status == 403 && r2.lease[0] == '\0');
    CHECK(store_session_open(a, r.key, r.lease) == 0);
    store_session_close(a, r.key, r.lease);

    /* SFTP_MAX_CONCURRENT_PER_IP = 3 across relays; a closed one frees at once. */
    for (int i = 0; i < 3; i++) {
        struct store *st = i % 2 ? b : a;
        CHECK(upgrade(st, "198.51.100.11", "example.com", 0, lease[i]) == 0);
        CHECK(store_session_open(st, "198.51.100.11", lease[i]) == 0);
    }
    CHECK(upgrade(a, "198.51.100.11", "example.com", 0, extra) == 429);
    CHECK(upgrade(b, "198.51.100.11", "example.com", 0, extra) == 429);
    CHECK(extra[0] == '\0');
    store_session_close(b, "198.51.100.11", lease[1]);
    {
        int ok = 0;
        for (int i = 0; i < 50 && !ok; i++) {
            ok = upgrade(a, "198.51.100.11", "example.com", 0, extra) == 0;
            if (!ok)
                usleep(20 * 1000);  /* the release is on its way */
        }
        CHECK(ok);
    }
    store_lease_drop(a, "198.51.100.11", extra);
    store_session_close(a, "198.51.100.11", lease[0]);
    store_session_close(a, "198.51.100.11", lease[2]);

    /* A refused target answers 403 and takes no slot. */
    CHECK(upgrade(a, "198.51.100.12", "10.0.0.1", 1, extra) == 403);
    CHECK(extra[0] == '\0');
}

static void test_spray(struct store *a, struct store *b)
{
    char host[32];

    for (int i = 1; i <= RATELIMIT_SPRAY_MAX_HOSTS; i++) {
        snprintf(host, sizeof(host), "h%d.example.com", i);
        CHECK(upgrade(i % 2 ? a : b, "198.51.100.20", host, 1, NULL) == 403);
    }
    /* The same host again is no new target. */
    CHECK(upgrade(a, "198.51.100.20", "H1.example.com", 1, NULL) == 403);
    CHECK(upgrade(b, "198.51.100.20", "h6.example.com", 0, NULL) == 429);
    CHECK(upgrade(a, "198.51.100.20", "h1.example.com", 0, NULL) == 429);  /* blocked */
    CHECK(store_auth_attempt(b, "198.51.100.20", clock_now_ms()) == -1);
}

static void test_auth_budget(struct store *a, struct store *b)
{
    /* Four failures and a success (refunded): still not blocked. */
    for (int i = 0; i < RATELIMIT_AUTH_MAX_FAILURES - 1; i++)
        CHECK(store_auth_attempt(i % 2 ? a : b, "198.51.100.30", clock_now_ms()) == 0);
    CHECK(store_auth_attempt(a, "198.51.100.30", clock_now_ms()) == 0);
    store_auth_refund(a, "198.51.100.30", clock_now_ms());
    CHECK(upgrade(b, "198.51.100.30", "example.com", 1, NULL) == 403);  /* not 429 */
    /* The fifth failure blocks, on every relay. */
    CHECK(store_auth_attempt(b, "198.51.100.30", clock_now_ms()) == 0);
    CHECK(store_auth_attempt(a, "198.51.100.30", clock_now_ms()) == -1);
    CHECK(store_auth_attempt(b, "198.51.100.30", clock_now_ms()) == -1);
    CHECK(upgrade(a, "198.51.100.30", "example.com", 0, NULL) == 429);
}

/* Every key under the prefix, each with a TTL, none holding a target's
 * name. */
static void test_keys(void)
{
    redisContext *c = raw();
    redisReply *keys;
    int n = 0;

    CHECK(c != NULL);
    if (!c)
        return;
    keys = redisCommand(c, "KEYS *");
    CHECK(keys && keys->type == REDIS_REPLY_ARRAY && keys->elements > 5);
    for (size_t i = 0; keys && i < keys->elements; i++) {
        const char *k = keys->element[i]->str;
        redisReply *ttl = redisCommand(c, "PTTL %s", k);
        CHECK(strncmp(k, cfg.key_prefix, strlen(cfg.key_prefix)) == 0);
        CHECK(ttl && ttl->type == REDIS_REPLY_INTEGER && ttl->integer > 0);
        if (ttl && ttl->integer <= 0)
            fprintf(stderr, "key without TTL: %s\n", k);
        CHECK(strstr(k, "example.com") == NULL);
        freeReplyObject(ttl);
        n++;
    }
    {
        redisReply *z = redisCommand(c, "ZRANGE %sspray:198.51.100.20 0 -1", cfg.key_prefix);
        CHECK(z && z->type == REDIS_REPLY_ARRAY && z->elements == RATELIMIT_SPRAY_MAX_HOSTS + 1);
        for (size_t i = 0; z && i < z->elements; i++)
            CHECK(strlen(z->element[i]->str) == 32 && !strstr(z->element[i]->str, "example"));
        freeReplyObject(z);
    }
    freeReplyObject(keys);
    redisFree(c);
    CHECK(n > 0);
}

/* STORE_QUEUE_MAX: a store that is connected but answers nothing (the
 * real server stopped with SIGSTOP) holds at most one batch in flight and
 * STORE_QUEUE_MAX requests queued; every request past that is refused at
 * once with 503, the queued ones are answered 503 when the round trip
 * times out, and the store is used again once the server runs. */
static void test_queue_bound(struct store *a)
{
    const int total = STORE_QUEUE_MAX + STORE_BATCH_MAX + 200;
    struct store_req *rq = calloc((size_t)total, sizeof(*rq));
    int pending = 0, refused = 0, answered = 0, all_503 = 1;
    int64_t deadline;

    CHECK(rq != NULL);
    if (!rq)
        return;
    CHECK(kill(server_pid, SIGSTOP) == 0);
    for (int i = 0; i < total; i++) {
        req(&rq[i], STORE_CHALLENGE, "198.51.100.50");
        if (store_submit(a, &rq[i]) == STORE_PENDING) {
            pending++;
        } else {
            refused++;
            all_503 &= rq[i].status == 503;
        }
    }
    /* One batch may have left the queue for the wire before it filled. */
    CHECK(pending >= STORE_QUEUE_MAX && pending <= STORE_QUEUE_MAX + STORE_BATCH_MAX);
    CHECK(refused == total - pending && refused >= total - STORE_QUEUE_MAX - STORE_BATCH_MAX);
    CHECK(all_503);
    if (pending > STORE_QUEUE_MAX + STORE_BATCH_MAX)
        fprintf(stderr, "%d requests queued for a stopped store\n", pending);
    deadline = clock_now_ms() + STORE_CMD_TIMEOUT_MS + 3000;
    while (answered < pending && clock_now_ms() < deadline) {
        struct store_req *got = store_take_done(a);
        if (!got)
            usleep(10 * 1000);
        for (; got; got = got->next) {
            answered++;
            all_503 &= got->status == 503;
        }
    }
    CHECK(answered == pending);
    CHECK(all_503);
    CHECK(!store_ready(a));
    CHECK(kill(server_pid, SIGCONT) == 0);
    CHECK(wait_ready(a, 1, STORE_BACKOFF_MAX_MS + 2 * STORE_CMD_TIMEOUT_MS + 3000));
    CHECK(challenge(a, "198.51.100.51", 1, NULL) == 200);
    free(rq);
}

static void test_store_away(struct store *a)
{
    struct store_req r;
    char lease[STORE_LEASE_ID_MAX];

    CHECK(upgrade(a, "198.51.100.40", "example.com", 0, lease) == 0);
    CHECK(store_session_open(a, "198.51.100.40", lease) == 0);
    server_stop();
    CHECK(wait_ready(a, 0, 5000));
    /* Refused at once, never guessed. */
    req(&r, STORE_CHALLENGE, "198.51.100.41");
    r.valid = 1;
    auth_challenge_make(purpose(), "198.51.100.41", r.now_ms, &r.ch);
    CHECK(store_submit(a, &r) == STORE_DONE && r.status == 503);
    CHECK(upgrade(a, "198.51.100.41", "example.com", 0, NULL) == 503);
    CHECK(store_auth_attempt(a, "198.51.100.41", clock_now_ms()) == -1);

    /* Back (empty, as a restarted store without persistence is): the
     * relay reconnects by itself and registers its live lease again. */
    CHECK(server_start() == 0);
    CHECK(wait_ready(a, 1, STORE_BACKOFF_MAX_MS + 3000));
    CHECK(challenge(a, "198.51.100.41", 1, NULL) == 200);
    {
        int ok = 0;
        for (int i = 0; i < 100 && !ok; i++) {
            redisContext *c = raw();
            redisReply *z = c ? redisCommand(c, "ZCARD %slive:198.51.100.40", cfg.key_prefix)
                              : NULL;
            ok = z && z->type == REDIS_REPLY_INTEGER && z->integer == 1;
            freeReplyObject(z);
            if (c)
                redisFree(c);
            if (!ok)
                usleep(50 * 1000);
        }
        CHECK(ok);
    }
    store_session_close(a, "198.51.100.40", lease);
}

/* The value of `field` in an INFO reply ("field:value\r\n"), copied into
 * out; 0 when found. */
static int info_field(const char *info, const char *field, char *out, size_t outlen)
{
    size_t n = strlen(field);
    const char *p = info;

    while (p && *p) {
        if (strncmp(p, field, n) == 0 && p[n] == ':') {
            size_t len = strcspn(p + n + 1, "\r\n");
            if (len >= outlen)
                return -1;
            memcpy(out, p + n + 1, len);
            out[len] = '\0';
            return 0;
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return -1;
}

/* The running server is the engine asked for: Valkey answers server_name
 * "valkey" (and keeps redis_version for old clients), Redis 7 has no
 * server_name. A binary of one name that is really the other engine would
 * otherwise test one engine twice. */
/* What the reader takes of a store's answer before hiredis sees it: what
 * it takes, hiredis must parse (tests/fuzz/fuzz_store_reply.c holds every
 * input to that). A status line with a bare CR or LF inside, which hiredis
 * 1.2 (Debian 13) refuses and 0.14 (Debian 12) took, was taken: found by
 * the fuzzer on Debian 13. */
static void test_scan(void)
{
    static const struct {
        const char *in;
        int rc;
        size_t used;
    } cases[] = {
        {"+OK\r\n", 1, 5},
        {"-ERR no\r\n", 1, 9},
        {"+PO67108864N\nG\rx\r\n", -1, 0},
        {"+a\rb\r\n", -1, 0},
        {"-a\nb\r\n", -1, 0},
        {":12\r\n", 1, 5},
        {"$2\r\nab\r\n", 1, 8},
        {"$-1\r\n", 1, 5},
        {"*1\r\n", -1, 0},
        {"+OK\r", 0, 0},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t used = 0;
        const char *bad = NULL;
        int rc = store_redis_scan(cases[i].in, strlen(cases[i].in), &used, &bad);
        CHECK(rc == cases[i].rc);
        if (rc == 1)
            CHECK(used == cases[i].used);
        if (rc < 0)
            CHECK(bad && bad[0]);
    }
}

static void check_engine(void)
{
    redisContext *c = raw();
    redisReply *r = c ? redisCommand(c, "INFO server") : NULL;
    char name[32] = "redis", field[48], version[32] = "";

    CHECK(r && r->type == REDIS_REPLY_STRING);
    if (r && r->str) {
        if (info_field(r->str, "server_name", name, sizeof(name)) != 0)
            snprintf(name, sizeof(name), "redis");
        snprintf(field, sizeof(field), "%s_version", name);
        CHECK(info_field(r->str, field, version, sizeof(version)) == 0);
    }
    CHECK_STR(name, server_name);
    printf("store engine: %s %s (%s)\n", name, version, server_bin);
    freeReplyObject(r);
    if (c)
        redisFree(c);
}

int main(int argc, char **argv)
{
    struct store *a, *b;
    char prefix[64];

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s SERVER-BINARY [EXPECTED-SERVER-NAME]\n", argv[0]);
        return 2;
    }
    server_bin = argv[1];
    server_name = argc == 3 ? argv[2] : "redis";
    if (access(server_bin, X_OK) != 0) {
        fprintf(stderr, "%s is not installed (scripts/deps.sh --test installs it)\n",
                server_bin);
        return 1;
    }
    if (!mkdtemp(dir) || (port = free_port()) < 0) {
        fprintf(stderr, "no temp dir or port\n");
        return 1;
    }
    test_scan();
    CHECK(server_start() == 0);
    check_engine();
    memset(&cfg, 0, sizeof(cfg));
    memcpy(cfg.signing_key, "0123456789abcdef0123456789abcdef", 32);
    cfg.signing_key_len = 32;
    cfg.auth_challenge_per_min = 5;
    cfg.max_concurrent_per_ip = 3;
    cfg.cookie_ttl_secs = 600;
    cfg.state.kind = STATE_REDIS_TCP;
    snprintf(cfg.state.host, sizeof(cfg.state.host), "127.0.0.1");
    cfg.state.port = port;
    snprintf(prefix, sizeof(prefix), "wcunit:%d:", (int)getpid());
    cfg.key_prefix = prefix;
    cfg.state_lease_secs = 30;

    a = store_redis_new(&cfg);
    b = store_redis_new(&cfg);
    CHECK(a && b);
    if (!a || !b) {
        server_stop();
        CHECK_DONE();
    }
    store_set_wake(a, wake_cb, NULL);
    store_set_wake(b, wake_cb, NULL);
    CHECK(store_shared(a) && store_ratelimit(a) == NULL);
    CHECK(wait_ready(a, 1, 5000) && wait_ready(b, 1, 5000));

    test_challenges(a, b);
    test_upgrades_and_leases(a, b);
    test_spray(a, b);
    test_auth_budget(a, b);
    test_keys();
    test_queue_bound(a);
    test_store_away(a);

    store_free(b);
    store_free(a);
    server_stop();
    {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", dir);
    }
    CHECK_DONE();
}
