/* The embedded store (STATE_URL unset): the state of one relay in this
 * process — the limits table of ratelimit.c and the challenge and cookie id
 * stores of auth_cookie.c — answering every request at once. This is the
 * behaviour the relay always had; a shared store must match it. */
#include "store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ratelimit.h"
#include "wipe.h"

struct store_embedded {
    struct store base;
    const struct config *cfg;          /* borrowed */
    struct ratelimit *limits;          /* thread-safe */
    struct auth_challenges *challenges; /* service thread only */
    struct auth_jtis *jtis;            /* service thread only */
};

static struct store_embedded *emb(struct store *st)
{
    return (struct store_embedded *)st;
}

/* The limits table counts whole seconds of the monotonic clock: its
 * windows are a minute and longer. */
static time_t secs(int64_t now_ms)
{
    return (time_t)(now_ms / 1000);
}

static int challenge(struct store_embedded *e, struct store_req *r)
{
    int over = ratelimit_challenge(e->limits, r->key, secs(r->now_ms));  /* every request counts */

    if (!r->valid)
        return 400;
    if (over)
        return 429;
    /* A nonce_id already in the ring (a collision of 122 random bits)
     * is refused rather than overwritten. */
    return auth_challenge_put(e->challenges, &r->ch) == 0 ? 200 : 500;
}

static int take(struct store_embedded *e, struct store_req *r)
{
    return auth_challenge_take(e->challenges, r->nonce_id, r->now_ms, &r->ch) == 0 ? 200 : 400;
}

/* §1.2 checks 7-9 and spray, exactly as access.c always made them. */
static int upgrade(struct store_embedded *e, struct store_req *r)
{
    int rc = auth_jti_use(e->jtis, r->jti, (time_t)r->exp, r->wall);

    if (rc != 0)
        return rc == -ENOSPC ? 503 : 403;
    if (ratelimit_blocked(e->limits, r->key, secs(r->now_ms)))
        return 429;
    if (!ratelimit_session_can_open(e->limits, r->key))
        return 429;
    /* Spray: every target that got this far counts, allowed or not. */
    if (ratelimit_record_target(e->limits, r->key, r->host, secs(r->now_ms)))
        return 429;
    return r->target_refused ? 403 : 0;
}

static int e_submit(struct store *st, struct store_req *r)
{
    struct store_embedded *e = emb(st);

    r->lease[0] = '\0';
    switch (r->op) {
    case STORE_CHALLENGE:
        r->status = challenge(e, r);
        break;
    case STORE_TAKE:
        r->status = take(e, r);
        break;
    case STORE_UPGRADE:
        r->status = upgrade(e, r);
        break;
    default:
        r->status = 500;
        break;
    }
    return STORE_DONE;
}

static struct store_req *e_take_done(struct store *st)
{
    (void)st;
    return NULL;
}

static int e_auth_attempt(struct store *st, const char *key, int64_t now_ms)
{
    return ratelimit_auth_attempt(emb(st)->limits, key, secs(now_ms)) == 0 ? 0 : -1;
}

static void e_auth_refund(struct store *st, const char *key, int64_t now_ms)
{
    ratelimit_auth_refund(emb(st)->limits, key, secs(now_ms));
}

static int e_session_open(struct store *st, const char *key, const char *lease)
{
    (void)lease;
    return ratelimit_session_open(emb(st)->limits, key);
}

static void e_session_close(struct store *st, const char *key, const char *lease)
{
    (void)lease;
    ratelimit_session_close(emb(st)->limits, key);
}

static int e_jti_reserve(struct store *st, const char *jti, time_t exp, time_t now)
{
    return auth_jti_reserve(emb(st)->jtis, jti, exp, now);
}

static void e_jti_unreserve(struct store *st, const char *jti)
{
    auth_jti_unreserve(emb(st)->jtis, jti);
}

static int e_ready(struct store *st)
{
    (void)st;
    return 1;
}

static struct ratelimit *e_ratelimit(struct store *st)
{
    return emb(st)->limits;
}

static void e_free(struct store *st)
{
    struct store_embedded *e = emb(st);

    auth_jtis_free(e->jtis);
    auth_challenges_free(e->challenges);
    ratelimit_free(e->limits);
    free(e);
}

static const struct store_vt embedded_vt = {
    .submit = e_submit,
    .take_done = e_take_done,
    .auth_attempt = e_auth_attempt,
    .auth_refund = e_auth_refund,
    .session_open = e_session_open,
    .session_close = e_session_close,
    .jti_reserve = e_jti_reserve,
    .jti_unreserve = e_jti_unreserve,
    .ready = e_ready,
    .ratelimit = e_ratelimit,
    .set_wake = NULL,
    .stop = NULL,
    .free = e_free,
};

struct store *store_embedded_new(const struct config *cfg)
{
    struct store_embedded *e;

    if (!cfg)
        return NULL;
    e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->base.vt = &embedded_vt;
    strcpy(e->base.name, "embedded");
    e->cfg = cfg;
    e->limits = ratelimit_new(cfg);
    e->challenges = auth_challenges_new();
    e->jtis = auth_jtis_new(cfg->cookie_store_size > 0 ? (size_t)cfg->cookie_store_size
                                                       : AUTH_JTI_CAPACITY);
    if (!e->limits || !e->challenges || !e->jtis) {
        e_free(&e->base);
        return NULL;
    }
    return &e->base;
}
