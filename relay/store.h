/* The state behind the abuse limits and the cookie of PROTOCOL §1.1, §1.2
 * and §4 — challenges, used cookie ids, live sessions, auth failures,
 * spray, challenge rate — as one interface with two implementations:
 * embedded (this process only, the default; store_embedded.c) and Redis or
 * Valkey shared by several relays (STATE_URL; store_redis.c). access.c
 * asks; nothing here knows about HTTP or lws. */
#ifndef WC_STORE_H
#define WC_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "auth_cookie.h"
#include "client_ip.h"
#include "config.h"

/* A live session's slot in a shared store is a lease: a lease not renewed
 * for STATE_LEASE_SECS expires by itself, so a relay that dies (kill -9, a
 * crash, a lost host) frees its clients' slots within that time. The relay
 * that holds the session renews it STORE_LEASE_RENEWALS times per lease, so
 * a renewal or two may be late (a store slow to answer, a reconnect) before
 * a live session's slot lapses. */
#define STORE_LEASE_RENEWALS     3
/* Requests waiting for the store thread at most; past it a request is
 * refused at once (503) rather than queued without bound. */
#define STORE_QUEUE_MAX          1024
/* The longest answer the store may send to one command, and so the most
 * the relay ever holds of the store's bytes at once. Nothing we ask for
 * answers more than about 200 bytes: a 40-character script hash, a
 * challenge ("purpose ip nonce"), integers, PONG and OK, and error lines
 * Redis keeps to a few hundred bytes. hiredis 0.14 has no cap of its own
 * and would allocate whatever a broken or hostile store announces (a
 * 1 GiB string, an array of ten million elements), so store_redis.c reads
 * the socket itself into a buffer of this size and hands hiredis only
 * complete answers it has checked; a longer answer is a broken store
 * (dropped, reconnected with backoff, 503s meanwhile). */
#define STORE_REPLY_MAX          4096
/* Requests the store thread sends in one pipeline. */
#define STORE_BATCH_MAX          64
/* One round trip to the store (sending the commands and reading every
 * answer, however slowly the bytes come) may take this long before the
 * connection is declared broken (and the requests on it answered 503). */
#define STORE_CMD_TIMEOUT_MS     2000
#define STORE_CONNECT_TIMEOUT_MS 1000
/* Reconnection backoff: the first retry after this, doubling up to the max. */
#define STORE_BACKOFF_MIN_MS     100
#define STORE_BACKOFF_MAX_MS     5000
/* An idle connection is checked (PING) this often, so /ready follows the
 * store within about a second even without traffic. */
#define STORE_PING_MS            1000
/* A lease id: "<relay id>:<counter>". */
#define STORE_LEASE_ID_MAX       48
/* The longest store name in logs ("redis://host:port/db"). */
#define STORE_NAME_MAX           320

/* What a request asks. Results are HTTP statuses where the request decides
 * one, so that both implementations are read the same way. */
enum store_op {
    /* §1.1 GET /relay/auth/challenge: count the request towards the
     * client's AUTH_CHALLENGE_PER_MIN (always), then remember `ch` for
     * AUTH_CHALLENGE_TTL_MS when `valid` and under the rate.
     * status: 200, 400 (!valid), 429 (over the rate), 503, 500. */
    STORE_CHALLENGE,
    /* §1.1 POST /relay/auth: take the challenge `nonce_id` (single use)
     * into `ch`. status: 200, 400 (unknown, used or expired), 503. */
    STORE_TAKE,
    /* §1.2 checks 7-9 and the spray count, in that order, for the cookie
     * `jti` (valid until `exp`, wall clock) and the target `host`. A
     * `target_refused` request (check 10 refused an IP literal) is counted
     * for spray and then answers 403. A shared store also takes the live
     * session's lease (`lease`) when it answers 0.
     * status: 0, 403 (cookie used, or target refused), 429 (blocked, at the
     * session limit, or spray), 503 (store unavailable or the embedded
     * cookie store full), 500. */
    STORE_UPGRADE,
};

/*
 * One request. The caller fills the inputs, owns the memory, and must not
 * touch it between store_submit() answering STORE_PENDING and getting it
 * back from store_take_done(). `key` is client_ip_key() of the client (IPv6
 * per /64); `client_ip` the exact address.
 */
struct store_req {
    enum store_op op;
    char key[CLIENT_IP_MAX];
    char client_ip[CLIENT_IP_MAX];
    int64_t now_ms;                    /* CLOCK_MONOTONIC (embedded windows) */
    time_t wall;                       /* time(NULL) (cookie exp) */
    /* STORE_CHALLENGE, STORE_TAKE */
    int valid;
    struct auth_challenge ch;          /* in for CHALLENGE, out for TAKE */
    char nonce_id[AUTH_UUID_LEN + 2];
    /* STORE_UPGRADE */
    char jti[AUTH_UUID_LEN + 1];
    int64_t exp;
    char host[256];                    /* lowercased target host */
    int target_refused;
    /* Results. */
    int status;
    char lease[STORE_LEASE_ID_MAX];    /* "" when none (embedded) */
    /* The caller's: which wait this request belongs to (gate.c, http.c). */
    void *owner;
    int owner_kind;
    /* The store's: who waits for the answer, and its queue link. */
    int wait_kind;
    void *waiter;
    struct store_req *next;
};

enum { STORE_DONE = 0, STORE_PENDING = 1 };

struct store;

/* Submit `r`. Returns STORE_DONE when r->status is set already (the
 * embedded store always answers at once; a shared store refuses at once
 * with 503 when it is down or its queue is full), or STORE_PENDING: the
 * answer comes later through store_take_done() on the service thread,
 * after the wake function given at creation ran. Service thread only. */
int store_submit(struct store *st, struct store_req *r);

/* Requests answered since the last call, as a list through `next`, oldest
 * first; NULL when none. Service thread only. */
struct store_req *store_take_done(struct store *st);

/* SSH authentication budget (§4), from session worker threads; may wait
 * for the store. attempt: 0 go ahead, -1 refused (blocked, or the store is
 * unavailable: never guess). refund: the attempt succeeded; give it back. */
int store_auth_attempt(struct store *st, const char *key, int64_t now_ms);
void store_auth_refund(struct store *st, const char *key, int64_t now_ms);

/* Live sessions. open: the WebSocket is up; `lease` is what STORE_UPGRADE
 * gave (a shared store keeps renewing it from now on), "" for the embedded
 * store, which takes the slot here. Returns 0, or -1 when the slot is gone
 * (then do not call close). close: the session is over; frees the slot at
 * once. Any thread. */
int store_session_open(struct store *st, const char *key, const char *lease);
void store_session_close(struct store *st, const char *key, const char *lease);

/* A lease STORE_UPGRADE took for an upgrade that then did not happen. */
void store_lease_drop(struct store *st, const char *key, const char *lease);

/* Embedded only (a shared store answers 0 and does nothing): the cookie id
 * store of auth_cookie.h, whose slots are reserved when a cookie is issued. */
int store_jti_reserve(struct store *st, const char *jti, time_t exp, time_t now);
void store_jti_unreserve(struct store *st, const char *jti);

/* 1 while the store can answer (always for the embedded one). Any thread. */
int store_ready(struct store *st);

/* 1 for a shared store (requests may answer STORE_PENDING). */
int store_shared(const struct store *st);

/* "embedded" or the URL without its password, for log lines. */
const char *store_name(const struct store *st);

/* The embedded store's limits table (NULL for a shared store), for tests
 * and metrics. */
struct ratelimit *store_ratelimit(struct store *st);

/* The embedded store: owns a limits table, a challenge store and a cookie
 * id store sized by cfg (borrowed; must outlive it). NULL when out of
 * memory. */
struct store *store_embedded_new(const struct config *cfg);

/* The shared store of cfg->state: starts its thread, which connects in the
 * background (store_ready() says when). `wake(arg)` is called from that
 * thread whenever store_take_done() has something (lws_cancel_service);
 * it may be set later with store_set_wake(). NULL when out of memory or
 * no thread. */
struct store *store_redis_new(const struct config *cfg);
void store_set_wake(struct store *st, void (*wake)(void *), void *arg);

/* Stop answering: joins a shared store's thread; requests still queued
 * are answered 503 and can be collected with store_take_done(). Call once
 * before store_free() when async requests may be in flight. */
void store_stop(struct store *st);

/* Stop and free; NULL is fine. Answered requests nobody collected belong
 * to their callers. */
void store_free(struct store *st);

/* How the store's answer at the start of buf[0, len) stands (store_redis.c
 * reads the socket itself and hands hiredis only what this took): 1
 * complete and one we take, its length in *used (at most STORE_REPLY_MAX);
 * 0 more bytes needed; -1 refused, *bad saying why (a static string).
 * Exported for tests/fuzz/fuzz_store_reply.c. */
int store_redis_scan(const char *buf, size_t len, size_t *used, const char **bad);

/* The implementations behind the functions above. */
struct store_vt {
    int (*submit)(struct store *, struct store_req *);
    struct store_req *(*take_done)(struct store *);
    int (*auth_attempt)(struct store *, const char *, int64_t);
    void (*auth_refund)(struct store *, const char *, int64_t);
    int (*session_open)(struct store *, const char *, const char *);
    void (*session_close)(struct store *, const char *, const char *);
    int (*jti_reserve)(struct store *, const char *, time_t, time_t);
    void (*jti_unreserve)(struct store *, const char *);
    int (*ready)(struct store *);
    struct ratelimit *(*ratelimit)(struct store *);
    void (*set_wake)(struct store *, void (*)(void *), void *);
    void (*stop)(struct store *);
    void (*free)(struct store *);
};

/* Every implementation's struct starts with this. */
struct store {
    const struct store_vt *vt;
    int shared;
    char name[STORE_NAME_MAX];
};

#endif
