/* The store interface of store.h: each call goes to the implementation the
 * store was made with (store_embedded.c or store_redis.c). */
#include "store.h"

#include <stddef.h>

int store_submit(struct store *st, struct store_req *r)
{
    return st->vt->submit(st, r);
}

struct store_req *store_take_done(struct store *st)
{
    return st->vt->take_done(st);
}

int store_auth_attempt(struct store *st, const char *key, int64_t now_ms)
{
    return st->vt->auth_attempt(st, key, now_ms);
}

void store_auth_refund(struct store *st, const char *key, int64_t now_ms)
{
    st->vt->auth_refund(st, key, now_ms);
}

int store_session_open(struct store *st, const char *key, const char *lease)
{
    return st->vt->session_open(st, key, lease ? lease : "");
}

void store_session_close(struct store *st, const char *key, const char *lease)
{
    st->vt->session_close(st, key, lease ? lease : "");
}

void store_lease_drop(struct store *st, const char *key, const char *lease)
{
    /* A lease that was never opened is released like a closed one. */
    if (st->shared && lease && lease[0])
        st->vt->session_close(st, key, lease);
}

int store_jti_reserve(struct store *st, const char *jti, time_t exp, time_t now)
{
    return st->vt->jti_reserve(st, jti, exp, now);
}

void store_jti_unreserve(struct store *st, const char *jti)
{
    st->vt->jti_unreserve(st, jti);
}

int store_ready(struct store *st)
{
    return st->vt->ready(st);
}

int store_shared(const struct store *st)
{
    return st->shared;
}

const char *store_name(const struct store *st)
{
    return st->name;
}

struct ratelimit *store_ratelimit(struct store *st)
{
    return st ? st->vt->ratelimit(st) : NULL;
}

void store_set_wake(struct store *st, void (*wake)(void *), void *arg)
{
    if (st->vt->set_wake)
        st->vt->set_wake(st, wake, arg);
}

void store_stop(struct store *st)
{
    if (st && st->vt->stop)
        st->vt->stop(st);
}

void store_free(struct store *st)
{
    if (st)
        st->vt->free(st);
}
