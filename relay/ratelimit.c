/* Per-client abuse state (PROTOCOL §4 and the §1.1 challenge rate): one
 * fixed-size table of entries keyed by client_ip_key(), hashed, guarded by
 * one mutex, with stale-first then oldest-first eviction when full. */
#include "ratelimit.h"
#include "wipe.h"

#include <ctype.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#define NBUCKETS 8192u  /* power of two, twice the capacity */
#define NONE     (-1)

struct spray_host {
    uint64_t hash;   /* keyed hash of the lowercased host */
    time_t seen;     /* last time it was targeted */
};

struct entry {
    char key[RATELIMIT_KEY_MAX];
    int in_use;
    int32_t next;          /* hash chain, or free list when not in use */
    time_t last_seen;      /* last counted activity, for eviction order */

    int sessions;          /* live SFTP sessions */

    time_t auth[RATELIMIT_AUTH_MAX_FAILURES];  /* unrefunded attempts */
    int n_auth;
    time_t auth_block_until;

    struct spray_host spray[RATELIMIT_SPRAY_MAX_HOSTS + 1];
    int n_spray;
    time_t spray_block_until;

    /* Challenges per second over the last window; chal_sec is the second
     * of the newest count. Whole seconds make the window exact. */
    uint32_t chal[RATELIMIT_CHALLENGE_WINDOW_SECS];
    time_t chal_sec;
};

struct ratelimit {
    pthread_mutex_t lock;
    int max_sessions;          /* SFTP_MAX_CONCURRENT_PER_IP */
    int challenges_per_min;    /* AUTH_CHALLENGE_PER_MIN */
    uint8_t salt[16];          /* keys the hashes: no precomputed collisions */
    uint64_t hash_seed;
    time_t clock;              /* latest `now` given */
    size_t used;
    int32_t free_head;
    int32_t buckets[NBUCKETS];
    struct entry *entries;     /* RATELIMIT_CAPACITY */
};

static uint64_t key_hash(const struct ratelimit *l, const char *key)
{
    uint64_t h = 0xcbf29ce484222325ull ^ l->hash_seed;  /* FNV-1a, seeded */

    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

static uint32_t bucket_of(const struct ratelimit *l, const char *key)
{
    return (uint32_t)(key_hash(l, key) & (NBUCKETS - 1));
}

static void tick(struct ratelimit *l, time_t now)
{
    if (now > l->clock)
        l->clock = now;
}

static int is_blocked(const struct entry *e, time_t now)
{
    return now < e->auth_block_until || now < e->spray_block_until;
}

static time_t block_end(const struct entry *e)
{
    return e->auth_block_until > e->spray_block_until ? e->auth_block_until
                                                      : e->spray_block_until;
}

static int is_stale(const struct entry *e, time_t now)
{
    return e->sessions == 0 && !is_blocked(e, now) &&
           now - e->last_seen >= RATELIMIT_STALE_SECS;
}

static struct entry *find(struct ratelimit *l, const char *key)
{
    for (int32_t i = l->buckets[bucket_of(l, key)]; i != NONE;
         i = l->entries[i].next)
        if (strcmp(l->entries[i].key, key) == 0)
            return &l->entries[i];
    return NULL;
}

static void release(struct ratelimit *l, int32_t idx)
{
    struct entry *e = &l->entries[idx];
    int32_t *pp = &l->buckets[bucket_of(l, e->key)];

    while (*pp != NONE && *pp != idx)
        pp = &l->entries[*pp].next;
    if (*pp == idx)
        *pp = e->next;
    memset(e, 0, sizeof(*e));
    e->next = l->free_head;
    l->free_head = idx;
    l->used--;
}

/* Make room for one entry; see ratelimit.h for the order. 0 or -1. */
static int reclaim(struct ratelimit *l, time_t now)
{
    int32_t idle = NONE, blocked = NONE;

    for (int32_t i = 0; i < RATELIMIT_CAPACITY; i++)
        if (l->entries[i].in_use && is_stale(&l->entries[i], now))
            release(l, i);
    if (l->free_head != NONE)
        return 0;

    for (int32_t i = 0; i < RATELIMIT_CAPACITY; i++) {
        const struct entry *e = &l->entries[i];
        if (!e->in_use || e->sessions > 0)
            continue;
        if (!is_blocked(e, now)) {
            if (idle == NONE || e->last_seen < l->entries[idle].last_seen)
                idle = i;
        } else if (blocked == NONE ||
                   block_end(e) < block_end(&l->entries[blocked])) {
            blocked = i;
        }
    }
    if (idle != NONE)
        release(l, idle);
    else if (blocked != NONE)
        release(l, blocked);
    else
        return -1;  /* every entry holds a live session */
    return 0;
}

/* The entry of `key`, created when missing; NULL when the table is full of
 * live-session entries. */
static struct entry *get(struct ratelimit *l, const char *key)
{
    struct entry *e = find(l, key);
    uint32_t b;
    int32_t idx;

    if (e)
        return e;
    if (l->free_head == NONE && reclaim(l, l->clock) != 0)
        return NULL;
    idx = l->free_head;
    e = &l->entries[idx];
    l->free_head = e->next;
    memset(e, 0, sizeof(*e));
    /* Keys longer than the slot cannot come from client_ip_key(); cut. */
    strncpy(e->key, key, sizeof(e->key) - 1);
    e->in_use = 1;
    e->last_seen = l->clock;
    b = bucket_of(l, e->key);
    e->next = l->buckets[b];
    l->buckets[b] = idx;
    l->used++;
    return e;
}

/* Keys are cut to the slot size when stored: cut them the same way when
 * looking up, so an overlong key still finds its entry. */
static const char *clip(const char *key, char buf[RATELIMIT_KEY_MAX])
{
    if (strlen(key) < RATELIMIT_KEY_MAX)
        return key;
    memcpy(buf, key, RATELIMIT_KEY_MAX - 1);
    buf[RATELIMIT_KEY_MAX - 1] = '\0';
    return buf;
}

struct ratelimit *ratelimit_new(const struct config *cfg)
{
    struct ratelimit *l;

    if (!cfg)
        return NULL;
    l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->entries = calloc(RATELIMIT_CAPACITY, sizeof(*l->entries));
    /* Touched at start, so the table's memory does not creep into the RSS
     * as it fills (see auth_cookie.c table_new). */
    if (l->entries)
        wipe_mem(l->entries, RATELIMIT_CAPACITY * sizeof(*l->entries));
    if (!l->entries || RAND_bytes(l->salt, sizeof(l->salt)) != 1 ||
        pthread_mutex_init(&l->lock, NULL) != 0) {
        free(l->entries);
        free(l);
        return NULL;
    }
    memcpy(&l->hash_seed, l->salt, sizeof(l->hash_seed));
    l->max_sessions = cfg->max_concurrent_per_ip;
    l->challenges_per_min = cfg->auth_challenge_per_min;
    for (uint32_t i = 0; i < NBUCKETS; i++)
        l->buckets[i] = NONE;
    for (int32_t i = 0; i < RATELIMIT_CAPACITY; i++)
        l->entries[i].next = i + 1 < RATELIMIT_CAPACITY ? i + 1 : NONE;
    l->free_head = 0;
    return l;
}

void ratelimit_free(struct ratelimit *l)
{
    if (!l)
        return;
    pthread_mutex_destroy(&l->lock);
    free(l->entries);
    free(l);
}

int ratelimit_session_can_open(struct ratelimit *l, const char *key)
{
    char buf[RATELIMIT_KEY_MAX];
    int ok;

    if (!l || !key)
        return 0;
    pthread_mutex_lock(&l->lock);
    struct entry *e = find(l, clip(key, buf));
    ok = (e ? e->sessions : 0) < l->max_sessions;
    pthread_mutex_unlock(&l->lock);
    return ok;
}

int ratelimit_session_open(struct ratelimit *l, const char *key)
{
    char buf[RATELIMIT_KEY_MAX];
    int rc = -1;

    if (!l || !key)
        return -1;
    pthread_mutex_lock(&l->lock);
    struct entry *e = get(l, clip(key, buf));
    if (e && e->sessions < l->max_sessions) {
        e->sessions++;
        e->last_seen = l->clock;
        rc = 0;
    }
    pthread_mutex_unlock(&l->lock);
    return rc;
}

void ratelimit_session_close(struct ratelimit *l, const char *key)
{
    char buf[RATELIMIT_KEY_MAX];

    if (!l || !key)
        return;
    pthread_mutex_lock(&l->lock);
    struct entry *e = find(l, clip(key, buf));
    if (e && e->sessions > 0) {
        e->sessions--;
        e->last_seen = l->clock;
    }
    pthread_mutex_unlock(&l->lock);
}

int ratelimit_sessions(struct ratelimit *l, const char *key)
{
    char buf[RATELIMIT_KEY_MAX];
    int n;

    if (!l || !key)
        return 0;
    pthread_mutex_lock(&l->lock);
    struct entry *e = find(l, clip(key, buf));
    n = e ? e->sessions : 0;
    pthread_mutex_unlock(&l->lock);
    return n;
}

/* Drop auth attempts that left the window. Stamps in the future (a clock
 * that stepped back) are kept. */
static void auth_prune(struct entry *e, time_t now)
{
    int k = 0;

    for (int i = 0; i < e->n_auth; i++)
        if (now - e->auth[i] < RATELIMIT_AUTH_WINDOW_SECS)
            e->auth[k++] = e->auth[i];
    e->n_auth = k;
}

int ratelimit_auth_attempt(struct ratelimit *l, const char *key, time_t now)
{
    char buf[RATELIMIT_KEY_MAX];
    int rc = 1;

    if (!l || !key)
        return 1;
    pthread_mutex_lock(&l->lock);
    tick(l, now);
    struct entry *e = get(l, clip(key, buf));
    if (e && !is_blocked(e, now)) {
        auth_prune(e, now);
        if (e->n_auth == RATELIMIT_AUTH_MAX_FAILURES) {
            /* Only after a clock step: the block outlives the window. */
            memmove(e->auth, e->auth + 1, sizeof(e->auth[0]) * (size_t)(e->n_auth - 1));
            e->n_auth--;
        }
        e->auth[e->n_auth++] = now;
        if (e->n_auth >= RATELIMIT_AUTH_MAX_FAILURES)
            e->auth_block_until = now + RATELIMIT_BLOCK_SECS;
        if (now > e->last_seen)
            e->last_seen = now;
        rc = 0;
    }
    pthread_mutex_unlock(&l->lock);
    return rc;
}

void ratelimit_auth_refund(struct ratelimit *l, const char *key, time_t now)
{
    char buf[RATELIMIT_KEY_MAX];

    if (!l || !key)
        return;
    pthread_mutex_lock(&l->lock);
    tick(l, now);
    struct entry *e = find(l, clip(key, buf));
    if (e) {
        auth_prune(e, now);
        if (e->n_auth > 0) {
            /* The newest stamp is the one closest to this attempt's. */
            int newest = 0;
            for (int i = 1; i < e->n_auth; i++)
                if (e->auth[i] >= e->auth[newest])
                    newest = i;
            e->auth[newest] = e->auth[--e->n_auth];
            if (e->n_auth < RATELIMIT_AUTH_MAX_FAILURES)
                e->auth_block_until = 0;
        }
        if (now > e->last_seen)
            e->last_seen = now;
    }
    pthread_mutex_unlock(&l->lock);
}

/* Keyed hash of the lowercased host: the first 8 bytes of
 * SHA-256(salt || host). Hosts are never stored as strings. */
static uint64_t host_hash(const struct ratelimit *l, const char *host)
{
    unsigned char md[EVP_MAX_MD_SIZE], c;
    unsigned int mdlen = 0;
    uint64_t h = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    if (ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
        EVP_DigestUpdate(ctx, l->salt, sizeof(l->salt)) == 1) {
        int ok = 1;
        for (const char *p = host; *p && ok; p++) {
            c = (unsigned char)tolower((unsigned char)*p);
            ok = EVP_DigestUpdate(ctx, &c, 1) == 1;
        }
        if (ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen >= 8)
            memcpy(&h, md, sizeof(h));
    }
    EVP_MD_CTX_free(ctx);
    return h;
}

/* Count `h` among the entry's recent targets; 1 when it trips the block. */
static int spray_add(struct entry *e, uint64_t h, time_t now)
{
    int k = 0, oldest = 0;

    for (int i = 0; i < e->n_spray; i++)
        if (now - e->spray[i].seen < RATELIMIT_SPRAY_WINDOW_SECS)
            e->spray[k++] = e->spray[i];
    e->n_spray = k;
    for (int i = 0; i < e->n_spray; i++) {
        if (e->spray[i].hash == h) {
            if (now > e->spray[i].seen)
                e->spray[i].seen = now;
            return 0;
        }
        if (e->spray[i].seen < e->spray[oldest].seen)
            oldest = i;
    }
    if (e->n_spray == RATELIMIT_SPRAY_MAX_HOSTS + 1)
        e->spray[oldest] = (struct spray_host){ h, now };  /* already over */
    else
        e->spray[e->n_spray++] = (struct spray_host){ h, now };
    if (e->n_spray <= RATELIMIT_SPRAY_MAX_HOSTS)
        return 0;
    e->spray_block_until = now + RATELIMIT_BLOCK_SECS;
    return 1;
}

int ratelimit_record_target(struct ratelimit *l, const char *key, const char *host,
                         time_t now)
{
    char buf[RATELIMIT_KEY_MAX];
    int tripped;

    if (!l || !key || !host)
        return 1;
    uint64_t h = host_hash(l, host);
    pthread_mutex_lock(&l->lock);
    tick(l, now);
    struct entry *e = get(l, clip(key, buf));
    if (e) {
        if (now > e->last_seen)
            e->last_seen = now;
        tripped = spray_add(e, h, now);
    } else {
        tripped = 1;  /* cannot count it: refuse rather than forget */
    }
    pthread_mutex_unlock(&l->lock);
    return tripped;
}

int ratelimit_blocked(struct ratelimit *l, const char *key, time_t now)
{
    char buf[RATELIMIT_KEY_MAX];
    int blocked;

    if (!l || !key)
        return 0;
    pthread_mutex_lock(&l->lock);
    tick(l, now);
    struct entry *e = find(l, clip(key, buf));
    blocked = e ? is_blocked(e, now) : 0;
    pthread_mutex_unlock(&l->lock);
    return blocked;
}

static size_t chal_slot(time_t t)
{
    return (size_t)(((t % RATELIMIT_CHALLENGE_WINDOW_SECS) +
                     RATELIMIT_CHALLENGE_WINDOW_SECS) %
                    RATELIMIT_CHALLENGE_WINDOW_SECS);
}

int ratelimit_challenge(struct ratelimit *l, const char *key, time_t now)
{
    char buf[RATELIMIT_KEY_MAX];
    uint64_t sum = 0;
    int over = 1;

    if (!l || !key)
        return 1;
    pthread_mutex_lock(&l->lock);
    tick(l, now);
    struct entry *e = get(l, clip(key, buf));
    if (!e)
        goto out;  /* cannot count it: refuse */
    if (now > e->last_seen)
        e->last_seen = now;

    if (now > e->chal_sec) {
        /* Clear the seconds that passed since the newest count. */
        if (now - e->chal_sec >= RATELIMIT_CHALLENGE_WINDOW_SECS)
            memset(e->chal, 0, sizeof(e->chal));
        else
            for (time_t t = e->chal_sec + 1; t <= now; t++)
                e->chal[chal_slot(t)] = 0;
        e->chal_sec = now;
    }
    /* A clock that stepped back counts in the newest second. */
    if (e->chal[chal_slot(e->chal_sec)] < UINT32_MAX)
        e->chal[chal_slot(e->chal_sec)]++;
    for (size_t i = 0; i < RATELIMIT_CHALLENGE_WINDOW_SECS; i++)
        sum += e->chal[i];
    over = sum > (uint64_t)(l->challenges_per_min > 0 ? l->challenges_per_min : 0);
out:
    pthread_mutex_unlock(&l->lock);
    return over;
}

size_t ratelimit_entries(struct ratelimit *l)
{
    size_t n;

    if (!l)
        return 0;
    pthread_mutex_lock(&l->lock);
    n = l->used;
    pthread_mutex_unlock(&l->lock);
    return n;
}
