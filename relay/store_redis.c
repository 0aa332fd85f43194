/* The shared store (STATE_URL): every piece of per-client state lives in
 * Redis or Valkey, so that several relays behind one load balancer decide
 * as one. Each decision is one Lua script run atomically by the server
 * (EVALSHA), so parallel requests on any number of relays cannot slip
 * between a read and a write, and time comes from the server (TIME), so
 * the relays' clocks need not agree.
 *
 * Threading: one dedicated thread owns the hiredis connection and does all
 * the I/O, with blocking calls bounded by STORE_CMD_TIMEOUT_MS. The lws
 * service thread only queues requests (a bounded queue, STORE_QUEUE_MAX)
 * and is woken through lws_cancel_service() when answers are ready. We chose
 * a thread over hiredis's asynchronous API on the lws loop because lws 4.1
 * gives no way to add a foreign descriptor to its poll set without handing
 * the descriptor to lws itself, and because the session workers (SSH
 * authentication budget) must wait for the store too, which a thread with
 * a condition variable gives for free. The thread pipelines what is queued
 * (up to STORE_BATCH_MAX requests per round trip).
 *
 * The store is a peer like any other, and may be broken or hostile: the
 * thread does its own socket I/O (non-blocking, poll() with one deadline
 * per round trip, so a store that drips its answer a byte at a time cannot
 * hold it longer than STORE_CMD_TIMEOUT_MS), reads into a buffer of
 * STORE_REPLY_MAX bytes, and gives hiredis's parser only an answer it has
 * checked to be complete, short and of a type we can use (no arrays: no
 * command of ours answers one). Every answer's type and value is checked
 * again against what its command can answer. Anything else drops the
 * connection as if the store had gone away.
 *
 * Keys (all under KEY_PREFIX, all with a TTL):
 *   chal:<nonce_id>  challenge "purpose ip nonce"     AUTH_CHALLENGE_TTL_MS
 *   jti:<jti>        a used cookie id                 until the cookie's exp
 *   rate:<ipkey>     challenges per second (hash)     61 s
 *   live:<ipkey>     live-session leases (zset)       2 x STATE_LEASE_SECS
 *   auth:<ipkey>     unrefunded auth attempts (zset)  the auth window
 *   authblock:<ipkey>, sprayblock:<ipkey>             the block
 *   spray:<ipkey>    targets (zset of keyed hashes)   the spray window
 * Targets are HMAC-SHA256 of the host under RELAY_SIGNING_KEY (shared by
 * the relays, so they hash alike); no credential, file or host name is
 * ever written. */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "clock.h"
#include "log.h"
#include "ratelimit.h"
#include "wipe.h"

/* Requests of the store itself, beside the public ones (store.h). */
enum {
    OP_AUTH_ATTEMPT = 100,
    OP_AUTH_REFUND,
    OP_RELEASE,
};

/* Who waits for a request: the service thread (done list), a worker
 * thread (condition variable), or nobody (freed by the store thread). */
enum { WAIT_ASYNC = 0, WAIT_SYNC, WAIT_NONE };

/* ---- Lua scripts --------------------------------------------------------- */

#define LUA_NOW "local t = redis.call('TIME') " \
                "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "

/* KEYS: rate, chal. ARGV: limit, valid, value, ttl_ms, window_s. Every
 * request counts, in per-second buckets, so the window is exact to the
 * second and the hash never holds more than a window of fields. */
static const char lua_challenge[] =
    "local sec = tonumber(redis.call('TIME')[1]) "
    "local window = tonumber(ARGV[5]) "
    "redis.call('HINCRBY', KEYS[1], sec, 1) "
    "local all = redis.call('HGETALL', KEYS[1]) "
    "local sum = 0 "
    "for i = 1, #all, 2 do "
    "  if tonumber(all[i]) <= sec - window then redis.call('HDEL', KEYS[1], all[i]) "
    "  else sum = sum + tonumber(all[i + 1]) end "
    "end "
    "redis.call('EXPIRE', KEYS[1], window + 1) "
    "if ARGV[2] ~= '1' then return 400 end "
    "if sum > tonumber(ARGV[1]) then return 429 end "
    "redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) "
    "return 200";

/* KEYS: chal. Single use: whoever reads it deletes it. */
static const char lua_take[] =
    "local v = redis.call('GET', KEYS[1]) "
    "if v then redis.call('DEL', KEYS[1]) end "
    "return v";

/* KEYS: jti, authblock, sprayblock, live, spray. ARGV: jti_ttl_s,
 * max_sessions, host_hash, target_refused, lease, lease_ms, spray_max,
 * spray_window_ms, block_ms. PROTOCOL §1.2 checks 7, 8, 9 and spray, in
 * the order access.c always made them, then the lease. */
static const char lua_upgrade[] =
    LUA_NOW
    "if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 403 end "
    "if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then "
    "  return 429 end "
    "redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now) "
    "if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[2]) then return 429 end "
    "local smax = tonumber(ARGV[7]) "
    "local win = tonumber(ARGV[8]) "
    "redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - win) "
    "local known = redis.call('ZSCORE', KEYS[5], ARGV[3]) "
    "redis.call('ZADD', KEYS[5], now, ARGV[3]) "
    "redis.call('PEXPIRE', KEYS[5], win) "
    "if not known then "
    "  local n = redis.call('ZCARD', KEYS[5]) "
    "  if n > smax + 1 then redis.call('ZREMRANGEBYRANK', KEYS[5], 0, n - smax - 2) end "
    "  if n > smax then "
    "    redis.call('SET', KEYS[3], '1', 'PX', ARGV[9]) "
    "    return 429 "
    "  end "
    "end "
    "if ARGV[4] == '1' then return 403 end "
    "redis.call('ZADD', KEYS[4], now + tonumber(ARGV[6]), ARGV[5]) "
    "redis.call('PEXPIRE', KEYS[4], 2 * tonumber(ARGV[6])) "
    "return 0";

/* KEYS: auth, authblock, sprayblock. ARGV: max, window_ms, block_ms,
 * member. Counted before authenticating (§4): at most `max` unrefunded
 * attempts, the one that reaches it sets the block. */
static const char lua_auth_attempt[] =
    "if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then "
    "  return 1 end "
    LUA_NOW
    "local max = tonumber(ARGV[1]) "
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2])) "
    "redis.call('ZADD', KEYS[1], now, ARGV[4]) "
    "local n = redis.call('ZCARD', KEYS[1]) "
    "if n > max then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max - 1) n = max end "
    "if n >= max then redis.call('SET', KEYS[2], '1', 'PX', ARGV[3]) end "
    "redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
    "return 0";

/* KEYS: auth, authblock. ARGV: max, window_ms. The newest attempt is the
 * one that succeeded; the block goes when the failures left are under it. */
static const char lua_auth_refund[] =
    LUA_NOW
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2])) "
    "if redis.call('ZCARD', KEYS[1]) == 0 then return 0 end "
    "redis.call('ZPOPMAX', KEYS[1]) "
    "if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then redis.call('DEL', KEYS[2]) end "
    "return 0";

/* KEYS: live keys. ARGV: lease_ms, then one lease per key. Also re-adds a
 * lease the store lost (restarted empty, or down past the lease). */
static const char lua_renew[] =
    LUA_NOW
    "local ms = tonumber(ARGV[1]) "
    "for i = 1, #KEYS do "
    "  redis.call('ZADD', KEYS[i], now + ms, ARGV[i + 1]) "
    "  redis.call('PEXPIRE', KEYS[i], 2 * ms) "
    "end "
    "return #KEYS";

enum { S_CHALLENGE, S_TAKE, S_UPGRADE, S_AUTH_ATTEMPT, S_AUTH_REFUND, S_RENEW, N_SCRIPTS };

static const char *const scripts[N_SCRIPTS] = {
    lua_challenge, lua_take, lua_upgrade, lua_auth_attempt, lua_auth_refund, lua_renew,
};

/* Leases renewed per script call: bounds one round trip's size. */
#define RENEW_CHUNK 256
/* Most arguments of one command we build (the renew chunk's). */
#define ARGS_MAX (3 + 2 * RENEW_CHUNK)
#define ARG_BYTES 320
/* Error replies are logged at most this often (an OOM store answers every
 * request with one). */
#define ERR_LOG_MS 1000

/* ---- The store ------------------------------------------------------------ */

struct lease {
    char key[CLIENT_IP_MAX];
    char id[STORE_LEASE_ID_MAX];
    struct lease *next;
};

/*
 * Lock order: `mu` is the only lock, and is never held during I/O.
 */
struct store_redis {
    struct store base;
    const struct config *cfg;               /* fixed after start */
    uint8_t host_key[32];                   /* fixed: HMAC key of targets */
    char relay_id[17];                      /* fixed: random, names leases */

    pthread_mutex_t mu;
    pthread_cond_t work;                    /* mu: something for the thread */
    pthread_cond_t answered;                /* mu: a sync request is done */
    struct store_req *q_head, *q_tail;      /* mu */
    int q_len;                              /* mu */
    struct store_req *done_head, *done_tail; /* mu */
    struct lease *leases;                   /* mu */
    int stop;                               /* mu */
    void (*wake)(void *);                   /* mu */
    void *wake_arg;                         /* mu */
    uint64_t counter;                       /* mu: lease and attempt ids */

    atomic_int ready;                       /* any thread */

    /* Store thread only. */
    pthread_t thread;
    int started;
    redisContext *c;
    char sha[N_SCRIPTS][41];
    int64_t next_connect_ms, backoff_ms, last_ping_ms, last_renew_ms, down_since_ms;
    int64_t last_err_log_ms;
    int down_logged;
    char *argbuf;                           /* ARGS_MAX x ARG_BYTES */
    const char *argv[ARGS_MAX];
    size_t argl[ARGS_MAX];
    /* Bytes read from the store and not parsed yet: at most one answer. */
    char in[STORE_REPLY_MAX];
    size_t in_len;
};

static struct store_redis *rs(struct store *st)
{
    return (struct store_redis *)st;
}

/* A lease's lifetime, and how often the leases are renewed (store.h). */
static int lease_ms(const struct store_redis *r)
{
    return r->cfg->state_lease_secs * 1000;
}

static int64_t renew_ms(const struct store_redis *r)
{
    return lease_ms(r) / STORE_LEASE_RENEWALS;
}

/* ---- Building commands ---------------------------------------------------- */

struct cmd {
    struct store_redis *r;
    int argc;
};

static void arg(struct cmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void arg(struct cmd *c, const char *fmt, ...)
{
    char *slot;
    va_list ap;
    int n;

    if (c->argc >= ARGS_MAX)
        return;
    slot = c->r->argbuf + (size_t)c->argc * ARG_BYTES;
    va_start(ap, fmt);
    n = vsnprintf(slot, ARG_BYTES, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= ARG_BYTES)
        n = n < 0 ? 0 : ARG_BYTES - 1;
    c->r->argv[c->argc] = slot;
    c->r->argl[c->argc] = (size_t)n;
    c->argc++;
}

/* EVALSHA <script> <numkeys>: the keys and arguments follow. */
static void evalsha(struct cmd *c, int script, int numkeys)
{
    c->argc = 0;
    arg(c, "EVALSHA");
    arg(c, "%s", c->r->sha[script]);
    arg(c, "%d", numkeys);
}

static void key(struct cmd *c, const char *kind, const char *id)
{
    arg(c, "%s%s:%s", c->r->cfg->key_prefix, kind, id);
}

/* The keyed hash that stands for a target host: the first 16 bytes of
 * HMAC-SHA256(RELAY_SIGNING_KEY-derived key, lowercased host), in hex. */
static void host_hash(const struct store_redis *r, const char *host, char out[33])
{
    uint8_t mac[32];
    unsigned int len = 0;
    char low[256];
    size_t i;

    for (i = 0; host[i] && i + 1 < sizeof(low); i++)
        low[i] = (host[i] >= 'A' && host[i] <= 'Z') ? (char)(host[i] - 'A' + 'a') : host[i];
    low[i] = '\0';
    memset(mac, 0, sizeof(mac));
    HMAC(EVP_sha256(), r->host_key, sizeof(r->host_key), (const unsigned char *)low, i, mac,
         &len);
    for (int k = 0; k < 16; k++)
        snprintf(out + 2 * k, 3, "%02x", mac[k]);
}

/* The command of `q` into r->argv; 0, or -1 when it has none. */
static int build(struct store_redis *r, struct store_req *q)
{
    const struct config *cfg = r->cfg;
    struct cmd c = {r, 0};
    char hex[2 * AUTH_NONCE_BYTES + 1], hh[33];
    int64_t ttl;

    switch ((int)q->op) {
    case STORE_CHALLENGE:
        evalsha(&c, S_CHALLENGE, 2);
        key(&c, "rate", q->key);
        key(&c, "chal", q->valid ? q->ch.nonce_id : "-");
        arg(&c, "%d", cfg->auth_challenge_per_min);
        arg(&c, "%d", q->valid ? 1 : 0);
        for (int i = 0; i < AUTH_NONCE_BYTES; i++)
            snprintf(hex + 2 * i, 3, "%02x", q->ch.nonce[i]);
        arg(&c, "%s %s %s", q->ch.purpose, q->ch.client_ip, hex);
        arg(&c, "%d", AUTH_CHALLENGE_TTL_MS);
        arg(&c, "%d", RATELIMIT_CHALLENGE_WINDOW_SECS);
        wipe_mem(hex, sizeof(hex));
        break;
    case STORE_TAKE:
        evalsha(&c, S_TAKE, 1);
        key(&c, "chal", q->nonce_id);
        break;
    case STORE_UPGRADE:
        /* Remembered until the cookie expires, after which it fails
         * verification anyway. */
        ttl = q->exp - (int64_t)q->wall;
        if (ttl < 1)
            ttl = 1;
        host_hash(r, q->host, hh);
        evalsha(&c, S_UPGRADE, 5);
        key(&c, "jti", q->jti);
        key(&c, "authblock", q->key);
        key(&c, "sprayblock", q->key);
        key(&c, "live", q->key);
        key(&c, "spray", q->key);
        arg(&c, "%" PRId64, ttl);
        arg(&c, "%d", cfg->max_concurrent_per_ip);
        arg(&c, "%s", hh);
        arg(&c, "%d", q->target_refused ? 1 : 0);
        arg(&c, "%s", q->lease);
        arg(&c, "%d", lease_ms(r));
        arg(&c, "%d", RATELIMIT_SPRAY_MAX_HOSTS);
        arg(&c, "%d", RATELIMIT_SPRAY_WINDOW_SECS * 1000);
        arg(&c, "%d", RATELIMIT_BLOCK_SECS * 1000);
        break;
    case OP_AUTH_ATTEMPT:
        evalsha(&c, S_AUTH_ATTEMPT, 3);
        key(&c, "auth", q->key);
        key(&c, "authblock", q->key);
        key(&c, "sprayblock", q->key);
        arg(&c, "%d", RATELIMIT_AUTH_MAX_FAILURES);
        arg(&c, "%d", RATELIMIT_AUTH_WINDOW_SECS * 1000);
        arg(&c, "%d", RATELIMIT_BLOCK_SECS * 1000);
        arg(&c, "%s", q->lease);  /* a unique member */
        break;
    case OP_AUTH_REFUND:
        evalsha(&c, S_AUTH_REFUND, 2);
        key(&c, "auth", q->key);
        key(&c, "authblock", q->key);
        arg(&c, "%d", RATELIMIT_AUTH_MAX_FAILURES);
        arg(&c, "%d", RATELIMIT_AUTH_WINDOW_SECS * 1000);
        break;
    case OP_RELEASE:
        arg(&c, "ZREM");
        key(&c, "live", q->key);
        arg(&c, "%s", q->lease);
        break;
    default:
        return -1;
    }
    return c.argc;
}

/* Names for log lines about answers. */
static const char *type_name(int type)
{
    switch (type) {
    case REDIS_REPLY_STRING:
        return "a string";
    case REDIS_REPLY_ARRAY:
        return "an array";
    case REDIS_REPLY_INTEGER:
        return "an integer";
    case REDIS_REPLY_NIL:
        return "nil";
    case REDIS_REPLY_STATUS:
        return "a status";
    case REDIS_REPLY_ERROR:
        return "an error";
    default:
        return "an unknown type";
    }
}

static const char *op_name(int op)
{
    switch (op) {
    case STORE_CHALLENGE:
        return "a challenge";
    case STORE_TAKE:
        return "a challenge take";
    case STORE_UPGRADE:
        return "an upgrade";
    case OP_AUTH_ATTEMPT:
        return "an auth attempt";
    case OP_AUTH_REFUND:
        return "an auth refund";
    case OP_RELEASE:
        return "a lease release";
    default:
        return "a request";
    }
}

/* "unexpected answer to <what>: <type> [<value>]", for `why`. */
static void unexpected(char *why, size_t whylen, const char *what, const redisReply *reply)
{
    if (reply->type == REDIS_REPLY_INTEGER)
        snprintf(why, whylen, "unexpected answer to %s: the integer %lld", what,
                 (long long)reply->integer);
    else if (reply->type == REDIS_REPLY_ERROR)
        snprintf(why, whylen, "unexpected answer to %s: the error %.120s", what, reply->str);
    else
        snprintf(why, whylen, "unexpected answer to %s: %s", what, type_name(reply->type));
}

/* Whether `reply` is an integer among the `n` values of `allowed`. */
static int integer_in(const redisReply *reply, const long long *allowed, int n)
{
    if (reply->type != REDIS_REPLY_INTEGER)
        return 0;
    for (int i = 0; i < n; i++)
        if ((long long)reply->integer == allowed[i])
            return 1;
    return 0;
}

/* The challenge a take answered ("purpose ip nonce", as lua_challenge
 * stored it) into q->ch: 200, or 500 when it is not that. */
static int read_challenge(struct store_req *q, const redisReply *reply)
{
    char buf[200], *save = NULL, *purpose, *ip, *nonce;
    int status = 500;

    if (reply->len >= sizeof(buf))
        return 500;
    memcpy(buf, reply->str, reply->len);
    buf[reply->len] = '\0';
    purpose = strtok_r(buf, " ", &save);
    ip = strtok_r(NULL, " ", &save);
    nonce = strtok_r(NULL, " ", &save);
    if (purpose && ip && nonce && auth_purpose_valid(purpose) &&
        strlen(ip) < sizeof(q->ch.client_ip) && strlen(nonce) == 2 * AUTH_NONCE_BYTES) {
        int ok = 1;
        for (int i = 0; i < AUTH_NONCE_BYTES && ok; i++) {
            unsigned b;
            ok = sscanf(nonce + 2 * i, "%2x", &b) == 1;
            q->ch.nonce[i] = (uint8_t)b;
        }
        memcpy(q->ch.purpose, purpose, AUTH_PURPOSE_LEN + 1);
        memcpy(q->ch.client_ip, ip, strlen(ip) + 1);
        memcpy(q->ch.nonce_id, q->nonce_id, AUTH_UUID_LEN + 1);
        /* Expiry is the store's (PX): taken means alive. */
        q->ch.expires_ms = 0;
        status = ok ? 200 : 500;
    }
    wipe_mem(buf, sizeof(buf));
    return status;
}

/* The answer `reply` to `q` into q->status (and q->ch for a take).
 * Returns -1, with `why`, when the answer is of a type or value the
 * command cannot give: the store is broken (or not a store), and the
 * caller drops the connection. An error answer is the store's refusal of
 * this one request (503), logged at most every ERR_LOG_MS. */
static int read_reply(struct store_redis *r, struct store_req *q, const redisReply *reply,
                      char *why, size_t whylen)
{
    static const long long challenge_ok[] = {200, 400, 429}, upgrade_ok[] = {0, 403, 429},
                           attempt_ok[] = {0, 1}, refund_ok[] = {0}, release_ok[] = {0, 1};
    int op = (int)q->op, ok = 0;

    if (reply->type == REDIS_REPLY_ERROR) {
        int64_t now = clock_now_ms();
        q->status = op == OP_AUTH_ATTEMPT ? -1 : 503;
        if (op == STORE_UPGRADE)
            q->lease[0] = '\0';
        if (now - r->last_err_log_ms >= ERR_LOG_MS) {
            r->last_err_log_ms = now;
            log_error("state store %s answered an error: %.200s", r->base.name, reply->str);
        }
        return 0;
    }
    switch (op) {
    case STORE_CHALLENGE:
        if ((ok = integer_in(reply, challenge_ok, 3)))
            q->status = (int)reply->integer;
        break;
    case STORE_TAKE:
        memset(&q->ch, 0, sizeof(q->ch));
        if (reply->type == REDIS_REPLY_NIL) {
            ok = 1;
            q->status = 400;  /* unknown, used or expired */
        } else if (reply->type == REDIS_REPLY_STRING) {
            ok = 1;
            q->status = read_challenge(q, reply);
        }
        break;
    case STORE_UPGRADE:
        if ((ok = integer_in(reply, upgrade_ok, 3)))
            q->status = (int)reply->integer;
        break;
    case OP_AUTH_ATTEMPT:
        if ((ok = integer_in(reply, attempt_ok, 2)))
            q->status = reply->integer == 0 ? 0 : -1;
        break;
    case OP_AUTH_REFUND:
        ok = integer_in(reply, refund_ok, 1);
        q->status = 0;
        break;
    case OP_RELEASE:
        ok = integer_in(reply, release_ok, 2);
        q->status = 0;
        break;
    default:
        break;
    }
    if (!ok) {
        unexpected(why, whylen, op_name(op), reply);
        q->status = op == OP_AUTH_ATTEMPT ? -1 : 503;
    }
    if (op == STORE_UPGRADE && q->status != 0)
        q->lease[0] = '\0';
    return ok ? 0 : -1;
}

/* ---- Connection ----------------------------------------------------------- */

static void set_ready(struct store_redis *r, int ready)
{
    atomic_store(&r->ready, ready);
}

static void disconnect(struct store_redis *r, const char *why)
{
    int64_t now = clock_now_ms();

    if (r->c) {
        redisFree(r->c);
        r->c = NULL;
    }
    wipe_mem(r->in, sizeof(r->in));
    r->in_len = 0;
    set_ready(r, 0);
    if (!r->down_logged) {
        r->down_logged = 1;
        r->down_since_ms = now;
        log_error("state store %s unavailable: %s; new sessions and cookies answer 503 "
                  "and /ready 503 until it is back (running sessions carry on)",
                  r->base.name, why ? why : "connection lost");
    }
    r->next_connect_ms = now + r->backoff_ms;
    r->backoff_ms = r->backoff_ms * 2 > STORE_BACKOFF_MAX_MS ? STORE_BACKOFF_MAX_MS
                                                             : r->backoff_ms * 2;
}

/* Wait until the store's socket is ready for `events` or `deadline`
 * passes. 1 ready, 0 not yet (call again), -1 with `why` at the deadline
 * or on an error. */
static int wait_io(struct store_redis *r, short events, int64_t deadline, char *why,
                   size_t whylen)
{
    struct pollfd pfd = {r->c->fd, events, 0};
    int64_t left = deadline - clock_now_ms();
    int n;

    if (left <= 0) {
        snprintf(why, whylen, "no complete answer within %d ms", STORE_CMD_TIMEOUT_MS);
        return -1;
    }
    n = poll(&pfd, 1, (int)left);
    if (n < 0 && errno != EINTR) {
        snprintf(why, whylen, "poll: %s", strerror(errno));
        return -1;
    }
    return n > 0;
}

/* Send what hiredis has formatted (redisAppendCommandArgv) before
 * `deadline`. 0, or -1 with `why`. */
static int flush_out(struct store_redis *r, int64_t deadline, char *why, size_t whylen)
{
    int done = 0;

    while (!done) {
        int rc = wait_io(r, POLLOUT, deadline, why, whylen);
        if (rc < 0)
            return -1;
        if (rc > 0 && redisBufferWrite(r->c, &done) != REDIS_OK) {
            snprintf(why, whylen, "%s", r->c->errstr[0] ? r->c->errstr : "write failed");
            return -1;
        }
    }
    return 0;
}

/* Send `len` bytes of our own before `deadline`. 0, or -1 with `why`. */
static int send_all(struct store_redis *r, const char *buf, size_t len, int64_t deadline,
                    char *why, size_t whylen)
{
    size_t off = 0;

    while (off < len) {
        int rc = wait_io(r, POLLOUT, deadline, why, whylen);
        ssize_t n;
        if (rc < 0)
            return -1;
        if (rc == 0)
            continue;
        n = send(r->c->fd, buf + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            snprintf(why, whylen, "write: %s", strerror(errno));
            return -1;
        }
        if (n > 0)
            off += (size_t)n;
    }
    return 0;
}

/* A RESP number of `n` bytes at `p`: an optional '-' (when `neg`) and 1
 * to 18 digits, so that it fits an int64_t, written as Redis writes it
 * (no leading zero, no "-0": hiredis refuses those). 0, or -1. */
static int resp_number(const char *p, size_t n, int neg, long long *out)
{
    long long v = 0;
    size_t i = 0;
    int minus = 0;

    if (neg && n > 0 && p[0] == '-') {
        minus = 1;
        i = 1;
    }
    if (n - i < 1 || n - i > 18 || (p[i] == '0' && (n - i > 1 || minus)))
        return -1;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    *out = minus ? -v : v;
    return 0;
}

/* Taken: a status (+) or an error (-) without a CR or LF inside (RESP's
 * simple strings cannot hold them, and hiredis 1.1 and later refuse them
 * where 0.14 took them), an integer (:) of at most 18 digits, a bulk
 * string ($) that fits STORE_REPLY_MAX with its header, or nil.
 * Refused: arrays (*; none of our commands answers one) and whatever else
 * a store could send. Decided from the first line, so a string announced
 * too long is refused before any of it is read. */
int store_redis_scan(const char *buf, size_t len, size_t *used, const char **bad)
{
    const char *cr = NULL;
    size_t line;
    long long v;

    for (size_t i = 0; i + 1 < len; i++) {
        if (buf[i] == '\r' && buf[i + 1] == '\n') {
            cr = buf + i;
            break;
        }
    }
    if (len > 0 && buf[0] != '+' && buf[0] != '-' && buf[0] != ':' && buf[0] != '$') {
        *bad = buf[0] == '*' ? "an array, which no command of ours answers"
                             : "bytes that are no RESP2 answer";
        return -1;
    }
    if (!cr)
        return 0;
    line = (size_t)(cr - buf);
    switch (buf[0]) {
    case '+':
    case '-':
        if (memchr(buf, '\r', line) || memchr(buf, '\n', line)) {
            *bad = "a status or error line holding a CR or LF";
            return -1;
        }
        *used = line + 2;
        return 1;
    case ':':
        if (resp_number(buf + 1, line - 1, 1, &v) < 0) {
            *bad = "an integer that is malformed or over 18 digits";
            return -1;
        }
        *used = line + 2;
        return 1;
    default: /* '$' */
        if (line == 3 && memcmp(buf + 1, "-1", 2) == 0) {
            *used = line + 2;
            return 1;
        }
        if (resp_number(buf + 1, line - 1, 0, &v) < 0) {
            *bad = "a string of a malformed length";
            return -1;
        }
        if (line + 4 > STORE_REPLY_MAX || v > (long long)(STORE_REPLY_MAX - line - 4)) {
            *bad = "a string longer than STORE_REPLY_MAX";
            return -1;
        }
        if (len < line + 2 + (size_t)v + 2)
            return 0;
        if (buf[line + 2 + v] != '\r' || buf[line + 3 + v] != '\n') {
            *bad = "a string not ended by CRLF";
            return -1;
        }
        *used = line + 2 + (size_t)v + 2;
        return 1;
    }
}

/* The next answer, read before `deadline` into r->in (never more than
 * STORE_REPLY_MAX bytes) and parsed by hiredis once it is complete and
 * checked. NULL with `why` on the deadline, a closed or failed
 * connection, or an answer we do not take. Free it with freeReplyObject. */
static redisReply *get_reply(struct store_redis *r, int64_t deadline, char *why, size_t whylen)
{
    for (;;) {
        size_t used = 0;
        const char *bad = NULL;
        int rc = store_redis_scan(r->in, r->in_len, &used, &bad);
        ssize_t n;

        if (rc < 0) {
            snprintf(why, whylen, "it sent %s", bad);
            return NULL;
        }
        if (rc > 0) {
            void *reply = NULL;
            if (redisReaderFeed(r->c->reader, r->in, used) != REDIS_OK ||
                redisGetReplyFromReader(r->c, &reply) != REDIS_OK || !reply) {
                snprintf(why, whylen, "unreadable answer: %s",
                         r->c->errstr[0] ? r->c->errstr : "incomplete");
                if (reply)
                    freeReplyObject(reply);
                return NULL;
            }
            memmove(r->in, r->in + used, r->in_len - used);
            r->in_len -= used;
            wipe_mem(r->in + r->in_len, used);
            return reply;
        }
        if (r->in_len == sizeof(r->in)) {
            snprintf(why, whylen, "it sent an answer longer than STORE_REPLY_MAX (%d bytes)",
                     STORE_REPLY_MAX);
            return NULL;
        }
        if ((rc = wait_io(r, POLLIN, deadline, why, whylen)) < 0)
            return NULL;
        if (rc == 0)
            continue;
        n = read(r->c->fd, r->in + r->in_len, sizeof(r->in) - r->in_len);
        if (n == 0) {
            snprintf(why, whylen, "the store closed the connection");
            return NULL;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            snprintf(why, whylen, "read: %s", strerror(errno));
            return NULL;
        }
        if (n > 0)
            r->in_len += (size_t)n;
    }
}

/* One command and its answer within STORE_CMD_TIMEOUT_MS (store thread).
 * NULL and the connection dropped on any failure. */
static redisReply *command(struct store_redis *r, int argc)
{
    int64_t deadline = clock_now_ms() + STORE_CMD_TIMEOUT_MS;
    redisReply *reply = NULL;
    char why[200];

    if (redisAppendCommandArgv(r->c, argc, r->argv, r->argl) != REDIS_OK)
        snprintf(why, sizeof(why), "out of memory");
    else if (flush_out(r, deadline, why, sizeof(why)) == 0)
        reply = get_reply(r, deadline, why, sizeof(why));
    if (!reply)
        disconnect(r, why);
    return reply;
}

/* AUTH [user] password, formatted and sent by us, and its answer.
 * hiredis would format it into its output buffer and free that without
 * wiping, leaving the password in freed memory; our copy on this stack is
 * wiped once sent. 0, or -1 with the connection dropped. */
static int authenticate(struct store_redis *r)
{
    const struct state_url *u = &r->cfg->state;
    char buf[sizeof(u->user) + sizeof(u->password) + 64], why[200];
    size_t ul = strlen(u->user), pl = strlen(u->password), o;
    int64_t deadline = clock_now_ms() + STORE_CMD_TIMEOUT_MS;
    redisReply *reply = NULL;
    int rc;

    o = (size_t)snprintf(buf, sizeof(buf), "*%d\r\n$4\r\nAUTH\r\n", ul ? 3 : 2);
    if (ul) {
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, "$%zu\r\n", ul);
        memcpy(buf + o, u->user, ul);
        memcpy(buf + o + ul, "\r\n", 2);
        o += ul + 2;
    }
    o += (size_t)snprintf(buf + o, sizeof(buf) - o, "$%zu\r\n", pl);
    memcpy(buf + o, u->password, pl);
    memcpy(buf + o + pl, "\r\n", 2);
    o += pl + 2;
    rc = send_all(r, buf, o, deadline, why, sizeof(why));
    wipe_mem(buf, sizeof(buf));
    if (rc == 0)
        reply = get_reply(r, deadline, why, sizeof(why));
    if (!reply) {
        disconnect(r, why);
        return -1;
    }
    if (reply->type == REDIS_REPLY_ERROR)
        snprintf(why, sizeof(why), "AUTH refused: %.120s", reply->str);
    else if (reply->type != REDIS_REPLY_STATUS)
        unexpected(why, sizeof(why), "AUTH", reply);
    rc = reply->type == REDIS_REPLY_STATUS ? 0 : -1;
    freeReplyObject(reply);
    if (rc < 0)
        disconnect(r, why);
    return rc;
}

static int is_sha(const redisReply *reply)
{
    if (reply->type != REDIS_REPLY_STRING || reply->len != 40)
        return 0;
    for (int i = 0; i < 40; i++)
        if (!reply->str[i] || !strchr("0123456789abcdef", reply->str[i]))
            return 0;
    return 1;
}

static int connect_store(struct store_redis *r)
{
    const struct state_url *u = &r->cfg->state;
    struct timeval tv = {STORE_CONNECT_TIMEOUT_MS / 1000, (STORE_CONNECT_TIMEOUT_MS % 1000) * 1000};
    struct cmd c = {r, 0};
    redisReply *reply;
    char why[200];
    int fl;

    r->c = u->kind == STATE_REDIS_UNIX ? redisConnectUnixWithTimeout(u->path, tv)
                                       : redisConnectWithTimeout(u->host, u->port, tv);
    if (!r->c || r->c->err) {
        snprintf(why, sizeof(why), "%s", r->c ? r->c->errstr : "out of memory");
        disconnect(r, why);
        return -1;
    }
    /* From here we do the I/O (see the top of the file): a non-blocking
     * socket that hiredis, told it is not blocking, leaves to us. */
    fl = fcntl(r->c->fd, F_GETFL);
    if (fl < 0 || fcntl(r->c->fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        snprintf(why, sizeof(why), "fcntl: %s", strerror(errno));
        disconnect(r, why);
        return -1;
    }
    r->c->flags &= ~REDIS_BLOCK;
    wipe_mem(r->in, sizeof(r->in));
    r->in_len = 0;
    if (u->kind == STATE_REDIS_TCP)
        redisEnableKeepAlive(r->c);
    if (u->password[0] && authenticate(r) < 0)
        return -1;
    if (u->db) {
        c.argc = 0;
        arg(&c, "SELECT");
        arg(&c, "%d", u->db);
        if (!(reply = command(r, c.argc)))
            return -1;
        if (reply->type != REDIS_REPLY_STATUS) {
            if (reply->type == REDIS_REPLY_ERROR)
                snprintf(why, sizeof(why), "SELECT %d refused: %.120s", u->db, reply->str);
            else
                unexpected(why, sizeof(why), "SELECT", reply);
            freeReplyObject(reply);
            disconnect(r, why);
            return -1;
        }
        freeReplyObject(reply);
    }
    /* Scripts are loaded on every connection: a restarted store has
     * forgotten them. */
    for (int i = 0; i < N_SCRIPTS; i++) {
        r->argv[0] = "SCRIPT";
        r->argl[0] = 6;
        r->argv[1] = "LOAD";
        r->argl[1] = 4;
        r->argv[2] = scripts[i];
        r->argl[2] = strlen(scripts[i]);
        if (!(reply = command(r, 3)))
            return -1;
        if (!is_sha(reply)) {
            if (reply->type == REDIS_REPLY_ERROR)
                snprintf(why, sizeof(why), "SCRIPT LOAD refused: %.120s", reply->str);
            else
                unexpected(why, sizeof(why), "SCRIPT LOAD", reply);
            freeReplyObject(reply);
            disconnect(r, why);
            return -1;
        }
        memcpy(r->sha[i], reply->str, 40);
        r->sha[i][40] = '\0';
        freeReplyObject(reply);
    }
    if (r->down_logged)
        log_info("state store %s is back after %" PRId64 " ms", r->base.name,
                 clock_now_ms() - r->down_since_ms);
    else
        log_info("state store %s connected", r->base.name);
    r->down_logged = 0;
    r->backoff_ms = STORE_BACKOFF_MIN_MS;
    r->last_ping_ms = clock_now_ms();
    r->last_renew_ms = 0;  /* re-register the leases at once */
    set_ready(r, 1);
    return 0;
}

/* ---- The thread ----------------------------------------------------------- */

/* Send the batch as one pipeline and read every answer, all within
 * STORE_CMD_TIMEOUT_MS. On an I/O error or an answer the store cannot
 * have meant, the requests not answered yet get 503 (refusals, never
 * guesses) and the connection is dropped. */
static void run_batch(struct store_redis *r, struct store_req **b, int n)
{
    int sent = 0, got = 0;
    int64_t deadline;
    char why[200];

    for (int i = 0; i < n; i++)
        b[i]->status = (int)b[i]->op == OP_AUTH_ATTEMPT ? -1 : 503;
    if (!r->c)
        return;
    for (; sent < n; sent++) {
        int argc = build(r, b[sent]);
        if (argc <= 0 || redisAppendCommandArgv(r->c, argc, r->argv, r->argl) != REDIS_OK)
            break;
    }
    wipe_mem(r->argbuf, ARGS_MAX * ARG_BYTES);
    deadline = clock_now_ms() + STORE_CMD_TIMEOUT_MS;
    if (sent > 0 && flush_out(r, deadline, why, sizeof(why)) < 0) {
        disconnect(r, why);
        sent = 0;
    }
    for (; got < sent; got++) {
        redisReply *reply = get_reply(r, deadline, why, sizeof(why));
        int rc;
        if (!reply) {
            disconnect(r, why);
            break;
        }
        /* A store that lost its scripts (SCRIPT FLUSH) without closing
         * the connection: reconnect, which loads them again. */
        if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0) {
            freeReplyObject(reply);
            disconnect(r, "the store lost its scripts (NOSCRIPT)");
            break;
        }
        rc = read_reply(r, b[got], reply, why, sizeof(why));
        freeReplyObject(reply);
        if (rc < 0) {
            disconnect(r, why);
            break;
        }
    }
    for (int i = got; i < n; i++)
        if (b[i]->op == STORE_UPGRADE)
            b[i]->lease[0] = '\0';
}

static void renew(struct store_redis *r)
{
    struct lease *copy = NULL;
    int n = 0;

    pthread_mutex_lock(&r->mu);
    for (struct lease *l = r->leases; l; l = l->next)
        n++;
    if (n > 0)
        copy = malloc(sizeof(*copy) * (size_t)n);
    n = 0;
    if (copy)
        for (struct lease *l = r->leases; l; l = l->next)
            copy[n++] = *l;
    pthread_mutex_unlock(&r->mu);
    r->last_renew_ms = clock_now_ms();
    for (int start = 0; start < n && r->c; start += RENEW_CHUNK) {
        int m = n - start > RENEW_CHUNK ? RENEW_CHUNK : n - start;
        struct cmd c = {r, 0};
        redisReply *reply;

        evalsha(&c, S_RENEW, m);
        for (int i = 0; i < m; i++)
            key(&c, "live", copy[start + i].key);
        arg(&c, "%d", lease_ms(r));
        for (int i = 0; i < m; i++)
            arg(&c, "%s", copy[start + i].id);
        reply = command(r, c.argc);
        if (!reply)
            break;
        if (reply->type == REDIS_REPLY_ERROR) {
            log_error("state store %s: lease renewal refused: %.200s", r->base.name,
                      reply->str);
        } else if (reply->type != REDIS_REPLY_INTEGER || reply->integer != m) {
            char why[200];
            unexpected(why, sizeof(why), "a lease renewal", reply);
            freeReplyObject(reply);
            disconnect(r, why);
            break;
        }
        freeReplyObject(reply);
    }
    free(copy);
}

static void ping(struct store_redis *r)
{
    redisReply *reply;

    r->argv[0] = "PING";
    r->argl[0] = 4;
    r->last_ping_ms = clock_now_ms();
    reply = command(r, 1);
    if (!reply)
        return;
    if (reply->type != REDIS_REPLY_STATUS || reply->len != 4 || memcmp(reply->str, "PONG", 4)) {
        char why[200];
        unexpected(why, sizeof(why), "PING", reply);
        freeReplyObject(reply);
        disconnect(r, why);
        return;
    }
    freeReplyObject(reply);
}

/* Hand answered requests to whoever waits for them. */
static void complete(struct store_redis *r, struct store_req **b, int n)
{
    void (*wake)(void *) = NULL;
    void *wake_arg = NULL;
    int any_async = 0;

    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < n; i++) {
        struct store_req *q = b[i];
        q->next = NULL;
        if (q->wait_kind == WAIT_SYNC) {
            *(int *)q->waiter = 1;
        } else if (q->wait_kind == WAIT_NONE) {
            free(q);
        } else {
            if (r->done_tail)
                r->done_tail->next = q;
            else
                r->done_head = q;
            r->done_tail = q;
            any_async = 1;
        }
    }
    pthread_cond_broadcast(&r->answered);
    wake = r->wake;
    wake_arg = r->wake_arg;
    pthread_mutex_unlock(&r->mu);
    if (any_async && wake)
        wake(wake_arg);
}

static int64_t next_due(const struct store_redis *r)
{
    int64_t due;

    if (!r->c)
        return r->next_connect_ms;
    due = r->last_ping_ms + STORE_PING_MS;
    if (r->last_renew_ms + renew_ms(r) < due)
        due = r->last_renew_ms + renew_ms(r);
    return due;
}

static void *thread_main(void *arg)
{
    struct store_redis *r = arg;
    struct store_req *batch[STORE_BATCH_MAX];

    for (;;) {
        int n = 0;
        int64_t now;

        pthread_mutex_lock(&r->mu);
        while (!r->stop && !r->q_head) {
            int64_t wait = next_due(r) - clock_now_ms();
            struct timespec ts;
            if (wait <= 0)
                break;
            ts = clock_deadline(wait);
            pthread_cond_timedwait(&r->work, &r->mu, &ts);
        }
        if (r->stop) {
            pthread_mutex_unlock(&r->mu);
            break;
        }
        while (r->q_head && n < STORE_BATCH_MAX) {
            batch[n++] = r->q_head;
            r->q_head = r->q_head->next;
            r->q_len--;
        }
        if (!r->q_head)
            r->q_tail = NULL;
        pthread_mutex_unlock(&r->mu);

        now = clock_now_ms();
        if (!r->c && now >= r->next_connect_ms)
            connect_store(r);
        if (n)
            run_batch(r, batch, n);
        if (r->c && clock_now_ms() - r->last_renew_ms >= renew_ms(r))
            renew(r);
        if (r->c && n == 0 && clock_now_ms() - r->last_ping_ms >= STORE_PING_MS)
            ping(r);
        if (n)
            complete(r, batch, n);
    }
    /* Stopping: whatever is still queued is answered "unavailable". */
    for (;;) {
        int n = 0;
        pthread_mutex_lock(&r->mu);
        while (r->q_head && n < STORE_BATCH_MAX) {
            batch[n] = r->q_head;
            batch[n]->status = (int)batch[n]->op == OP_AUTH_ATTEMPT ? -1 : 503;
            n++;
            r->q_head = r->q_head->next;
            r->q_len--;
        }
        if (!r->q_head)
            r->q_tail = NULL;
        pthread_mutex_unlock(&r->mu);
        if (!n)
            break;
        complete(r, batch, n);
    }
    return NULL;
}

/* ---- The interface --------------------------------------------------------- */

/* Queue `q` (mu held). 0, or -1 when the queue is full. */
static int enqueue_locked(struct store_redis *r, struct store_req *q)
{
    if (r->q_len >= STORE_QUEUE_MAX || r->stop)
        return -1;
    q->next = NULL;
    if (r->q_tail)
        r->q_tail->next = q;
    else
        r->q_head = q;
    r->q_tail = q;
    r->q_len++;
    pthread_cond_signal(&r->work);
    return 0;
}

/* A unique id for a lease or an attempt (mu held). */
static void new_id_locked(struct store_redis *r, char out[STORE_LEASE_ID_MAX])
{
    snprintf(out, STORE_LEASE_ID_MAX, "%s:%" PRIu64, r->relay_id, ++r->counter);
}

static int r_submit(struct store *st, struct store_req *q)
{
    struct store_redis *r = rs(st);
    int rc;

    q->lease[0] = '\0';
    q->wait_kind = WAIT_ASYNC;
    if (!atomic_load(&r->ready)) {
        q->status = 503;
        return STORE_DONE;
    }
    pthread_mutex_lock(&r->mu);
    if (q->op == STORE_UPGRADE)
        new_id_locked(r, q->lease);
    rc = enqueue_locked(r, q);
    pthread_mutex_unlock(&r->mu);
    if (rc < 0) {
        q->lease[0] = '\0';
        q->status = 503;
        return STORE_DONE;
    }
    return STORE_PENDING;
}

static struct store_req *r_take_done(struct store *st)
{
    struct store_redis *r = rs(st);
    struct store_req *list;

    pthread_mutex_lock(&r->mu);
    list = r->done_head;
    r->done_head = r->done_tail = NULL;
    pthread_mutex_unlock(&r->mu);
    return list;
}

/* Run `q` and wait for its answer (worker threads). -1 when it could not
 * be queued. */
static int call_sync(struct store_redis *r, struct store_req *q)
{
    int done = 0;

    q->waiter = &done;
    q->wait_kind = WAIT_SYNC;
    if (!atomic_load(&r->ready))
        return -1;
    pthread_mutex_lock(&r->mu);
    if (q->op == (enum store_op)OP_AUTH_ATTEMPT)
        new_id_locked(r, q->lease);
    if (enqueue_locked(r, q) < 0) {
        pthread_mutex_unlock(&r->mu);
        return -1;
    }
    while (!done)
        pthread_cond_wait(&r->answered, &r->mu);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static int r_auth_attempt(struct store *st, const char *key, int64_t now_ms)
{
    struct store_req q;

    memset(&q, 0, sizeof(q));
    q.op = (enum store_op)OP_AUTH_ATTEMPT;
    q.now_ms = now_ms;
    snprintf(q.key, sizeof(q.key), "%s", key);
    if (call_sync(rs(st), &q) < 0) {
        log_error("state store %s unavailable: authentication refused", st->name);
        return -1;
    }
    return q.status == 0 ? 0 : -1;
}

static void r_auth_refund(struct store *st, const char *key, int64_t now_ms)
{
    struct store_req q;

    memset(&q, 0, sizeof(q));
    q.op = (enum store_op)OP_AUTH_REFUND;
    q.now_ms = now_ms;
    snprintf(q.key, sizeof(q.key), "%s", key);
    /* A refund that cannot reach the store leaves a failure counted: the
     * stricter way to be wrong. */
    call_sync(rs(st), &q);
}

static int r_session_open(struct store *st, const char *key, const char *lease)
{
    struct store_redis *r = rs(st);
    struct lease *l;

    if (!lease || !lease[0])
        return -1;
    l = calloc(1, sizeof(*l));
    if (!l)
        return -1;
    snprintf(l->key, sizeof(l->key), "%s", key);
    snprintf(l->id, sizeof(l->id), "%s", lease);
    pthread_mutex_lock(&r->mu);
    l->next = r->leases;
    r->leases = l;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static void r_session_close(struct store *st, const char *key, const char *lease)
{
    struct store_redis *r = rs(st);
    struct store_req *q;

    if (!lease || !lease[0])
        return;
    q = calloc(1, sizeof(*q));
    pthread_mutex_lock(&r->mu);
    for (struct lease **pp = &r->leases; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->id, lease) == 0) {
            struct lease *l = *pp;
            *pp = l->next;
            free(l);
            break;
        }
    }
    /* Freed at once when it can be said; otherwise (no memory, queue full,
     * store down) the lease is no longer renewed and expires by itself. */
    if (q) {
        q->op = (enum store_op)OP_RELEASE;
        q->wait_kind = WAIT_NONE;
        snprintf(q->key, sizeof(q->key), "%s", key);
        snprintf(q->lease, sizeof(q->lease), "%s", lease);
        if (!atomic_load(&r->ready) || enqueue_locked(r, q) < 0) {
            free(q);
            q = NULL;
        }
    }
    pthread_mutex_unlock(&r->mu);
}

static int r_jti_reserve(struct store *st, const char *jti, time_t exp, time_t now)
{
    /* Nothing to reserve: a shared store has no fixed capacity, and the
     * one use is recorded at the upgrade (SET NX). */
    (void)st, (void)jti, (void)exp, (void)now;
    return 0;
}

static void r_jti_unreserve(struct store *st, const char *jti)
{
    (void)st, (void)jti;
}

static int r_ready(struct store *st)
{
    return atomic_load(&rs(st)->ready);
}

static struct ratelimit *r_ratelimit(struct store *st)
{
    (void)st;
    return NULL;
}

static void r_set_wake(struct store *st, void (*wake)(void *), void *arg)
{
    struct store_redis *r = rs(st);

    pthread_mutex_lock(&r->mu);
    r->wake = wake;
    r->wake_arg = arg;
    pthread_mutex_unlock(&r->mu);
}

static void r_stop(struct store *st)
{
    struct store_redis *r = rs(st);

    if (!r->started)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_signal(&r->work);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    r->started = 0;
    set_ready(r, 0);
}

static void r_free(struct store *st)
{
    struct store_redis *r = rs(st);

    r_stop(st);
    if (r->c)
        redisFree(r->c);
    while (r->leases) {
        struct lease *l = r->leases;
        r->leases = l->next;
        free(l);
    }
    /* Answered requests nobody collected belong to their callers. */
    pthread_cond_destroy(&r->work);
    pthread_cond_destroy(&r->answered);
    pthread_mutex_destroy(&r->mu);
    if (r->argbuf)
        wipe_mem(r->argbuf, ARGS_MAX * ARG_BYTES);
    free(r->argbuf);
    wipe_mem(r->host_key, sizeof(r->host_key));
    free(r);
}

static const struct store_vt redis_vt = {
    .submit = r_submit,
    .take_done = r_take_done,
    .auth_attempt = r_auth_attempt,
    .auth_refund = r_auth_refund,
    .session_open = r_session_open,
    .session_close = r_session_close,
    .jti_reserve = r_jti_reserve,
    .jti_unreserve = r_jti_unreserve,
    .ready = r_ready,
    .ratelimit = r_ratelimit,
    .set_wake = r_set_wake,
    .stop = r_stop,
    .free = r_free,
};

struct store *store_redis_new(const struct config *cfg)
{
    struct store_redis *r;
    pthread_condattr_t ca;
    uint8_t id[8];
    unsigned int len = 0;
    static const char label[] = "wattcloud spray target hash";

    /* A lease of 0 would lapse as it is made (config.c holds it to 3 s
     * and more). */
    if (!cfg || cfg->state.kind == STATE_EMBEDDED || !cfg->key_prefix ||
        cfg->state_lease_secs <= 0)
        return NULL;
    r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->base.vt = &redis_vt;
    r->base.shared = 1;
    r->cfg = cfg;
    cfg_effective(cfg, "STATE_URL", r->base.name, sizeof(r->base.name));
    r->argbuf = calloc(ARGS_MAX, ARG_BYTES);
    /* Every relay derives the same key from the shared signing key, so a
     * target hashes alike everywhere; the signing key itself never leaves
     * the process. */
    if (!r->argbuf || RAND_bytes(id, sizeof(id)) != 1 ||
        !HMAC(EVP_sha256(), cfg->signing_key, (int)cfg->signing_key_len,
              (const unsigned char *)label, sizeof(label) - 1, r->host_key, &len) ||
        len != sizeof(r->host_key)) {
        free(r->argbuf);
        free(r);
        return NULL;
    }
    for (int i = 0; i < 8; i++)
        snprintf(r->relay_id + 2 * i, 3, "%02x", id[i]);
    r->backoff_ms = STORE_BACKOFF_MIN_MS;
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->work, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&r->answered, NULL);
    if (pthread_create(&r->thread, NULL, thread_main, r) != 0) {
        r_free(&r->base);
        return NULL;
    }
    r->started = 1;
    return &r->base;
}
