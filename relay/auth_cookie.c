/* The relay cookie of PROTOCOL §1.1: purpose derivation, proof-of-work check,
 * HS256 JWT signing and strict verification, and the two bounded stores that
 * make challenges and cookies single use. */
#include "auth_cookie.h"
#include "wipe.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#define NONE (-1)

static const char hexdig[] = "0123456789abcdef";

/* ---- Purpose and proof of work ---------------------------------------- */

static void hex_encode(const uint8_t *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexdig[in[i] >> 4];
        out[2 * i + 1] = hexdig[in[i] & 15];
    }
    out[2 * n] = '\0';
}

int auth_purpose_for(const char *host, int port, char out[AUTH_PURPOSE_BUF])
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char tail[16];
    int ok;
    EVP_MD_CTX *ctx;

    if (!host || !*host || port < 1 || port > 65535 || !out)
        return -EINVAL;
    ctx = EVP_MD_CTX_new();
    ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
    for (const char *p = host; ok && *p; p++) {
        char c = (*p >= 'A' && *p <= 'Z') ? (char)(*p - 'A' + 'a') : *p;
        ok = EVP_DigestUpdate(ctx, &c, 1) == 1;
    }
    snprintf(tail, sizeof(tail), ":%d", port);
    ok = ok && EVP_DigestUpdate(ctx, tail, strlen(tail)) == 1 &&
         EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen >= 16;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return -EIO;
    memcpy(out, "sftp:", 5);
    hex_encode(md, 16, out + 5);
    return 0;
}

int auth_purpose_valid(const char *p)
{
    if (!p || strncmp(p, "sftp:", 5) != 0)
        return 0;
    for (int i = 5; i < AUTH_PURPOSE_LEN; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return 0;
    return p[AUTH_PURPOSE_LEN] == '\0';
}

int auth_pow_ok(const uint8_t nonce[AUTH_NONCE_BYTES], const char *purpose,
                uint64_t answer, int bits)
{
    uint8_t md[EVP_MAX_MD_SIZE], le[8];
    unsigned int mdlen = 0;
    int ok;
    EVP_MD_CTX *ctx;

    if (!nonce || !purpose || bits > 256)
        return 0;
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(answer >> (8 * i));
    ctx = EVP_MD_CTX_new();
    ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
         EVP_DigestUpdate(ctx, nonce, AUTH_NONCE_BYTES) == 1 &&
         EVP_DigestUpdate(ctx, purpose, strlen(purpose)) == 1 &&
         EVP_DigestUpdate(ctx, le, sizeof(le)) == 1 &&
         EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return 0;
    for (int i = 0; i < bits; i++)
        if (md[i / 8] & (0x80 >> (i % 8)))
            return 0;
    return 1;
}

/* ---- base64url, UUID ---------------------------------------------------- */

static const char b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Unpadded base64url of `in` into `out`; -1 when `outlen` is too small. */
static int b64url_encode(const uint8_t *in, size_t n, char *out, size_t outlen)
{
    size_t o = 0, i = 0;

    if (outlen < (n * 4 + 2) / 3 + 1)
        return -1;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
        out[o++] = b64url[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
    }
    out[o] = '\0';
    return 0;
}

static int b64url_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Strict unpadded base64url decode of [s, s+n) into `out`: rejects
 * characters outside the alphabet, a length of 1 mod 4, and non-zero
 * trailing bits (so each byte string has exactly one encoding).
 * Returns the decoded length or -1. */
static long b64url_decode(const char *s, size_t n, uint8_t *out, size_t outlen)
{
    uint32_t acc = 0;
    int nbits = 0;
    size_t o = 0;

    if (n % 4 == 1 || (n / 4) * 3 + (n % 4 ? n % 4 - 1 : 0) > outlen)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value(s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        nbits += 6;
        if (nbits >= 8) {
            nbits -= 8;
            out[o++] = (uint8_t)(acc >> nbits);
            acc &= (1u << nbits) - 1;
        }
    }
    if (acc != 0)
        return -1;  /* leftover bits must be zero */
    return (long)o;
}

int auth_uuid_new(char out[AUTH_UUID_LEN + 1])
{
    uint8_t b[16];
    size_t o = 0;

    if (RAND_bytes(b, sizeof(b)) != 1)
        return -EIO;
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hexdig[b[i] >> 4];
        out[o++] = hexdig[b[i] & 15];
    }
    out[o] = '\0';
    return 0;
}

/* 1 when `s` has the shape of a UUID in lowercase hex. */
static int uuid_shape(const char *s)
{
    for (int i = 0; i < AUTH_UUID_LEN; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-'
                 : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    }
    return s[AUTH_UUID_LEN] == '\0';
}

/* ---- JWT ---------------------------------------------------------------- */

/* base64url('{"alg":"HS256","typ":"JWT"}') */
#define JWT_HEADER_B64 "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"

static int hmac256(const uint8_t *key, size_t keylen, const char *data,
                   size_t n, uint8_t mac[32])
{
    unsigned int maclen = 0;

    if (keylen == 0 || keylen > INT32_MAX)
        return -1;
    if (!HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)data, n,
              mac, &maclen) || maclen != 32)
        return -1;
    return 0;
}

int auth_jwt_sign(const uint8_t *key, size_t keylen, const char *jti,
                  const char *purpose, time_t now, int ttl, char *out,
                  size_t outlen)
{
    char payload[256], b64[400];
    uint8_t mac[32];
    size_t n;

    if (!key || keylen == 0 || !jti || !uuid_shape(jti) ||
        !auth_purpose_valid(purpose) || ttl <= 0 || !out)
        return -EINVAL;
    snprintf(payload, sizeof(payload),
             "{\"jti\":\"%s\",\"purpose\":\"%s\",\"iat\":%" PRId64
             ",\"exp\":%" PRId64 "}",
             jti, purpose, (int64_t)now, (int64_t)now + ttl);
    if (b64url_encode((const uint8_t *)payload, strlen(payload), b64,
                      sizeof(b64)) != 0)
        return -EIO;

    n = (size_t)snprintf(out, outlen, "%s.%s", JWT_HEADER_B64, b64);
    if (n >= outlen)
        return -ENOSPC;
    if (hmac256(key, keylen, out, n, mac) != 0)
        return -EIO;
    if (outlen - n < 2)
        return -ENOSPC;
    out[n] = '.';
    if (b64url_encode(mac, sizeof(mac), out + n + 1, outlen - n - 1) != 0) {
        out[0] = '\0';
        return -ENOSPC;
    }
    return 0;
}

/* Decode a base64url JSON object; NULL when anything is off. */
static json_t *decode_json_part(const char *s, size_t n)
{
    uint8_t buf[AUTH_JWT_MAX];
    long len = b64url_decode(s, n, buf, sizeof(buf));
    json_t *j;

    if (len <= 0)
        return NULL;
    j = json_loadb((const char *)buf, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static int check_header(const char *s, size_t n)
{
    json_t *h = decode_json_part(s, n), *alg, *typ;
    int rc = 0;

    if (!h)
        return -EBADMSG;
    alg = json_object_get(h, "alg");
    typ = json_object_get(h, "typ");
    if (!json_is_string(alg) || strcmp(json_string_value(alg), "HS256") != 0)
        rc = -EPERM;  /* "none", HS512, RS256, missing: never accepted */
    else if (json_object_get(h, "crit"))
        rc = -EPERM;  /* extensions we would have to understand */
    else if (typ && (!json_is_string(typ) || strcmp(json_string_value(typ), "JWT") != 0))
        rc = -EBADMSG;
    json_decref(h);
    return rc;
}

static int read_claims(const char *s, size_t n, struct jwt_claims *c)
{
    json_t *p = decode_json_part(s, n), *jti, *purpose, *iat, *exp;
    int rc = -EBADMSG;

    if (!p)
        return -EBADMSG;
    jti = json_object_get(p, "jti");
    purpose = json_object_get(p, "purpose");
    iat = json_object_get(p, "iat");
    exp = json_object_get(p, "exp");
    if (json_is_string(jti) && uuid_shape(json_string_value(jti)) &&
        json_is_string(purpose) && auth_purpose_valid(json_string_value(purpose)) &&
        json_is_integer(iat) && json_is_integer(exp)) {
        memcpy(c->jti, json_string_value(jti), AUTH_UUID_LEN + 1);
        memcpy(c->purpose, json_string_value(purpose), AUTH_PURPOSE_LEN + 1);
        c->iat = (int64_t)json_integer_value(iat);
        c->exp = (int64_t)json_integer_value(exp);
        rc = 0;
    }
    json_decref(p);
    return rc;
}

int auth_jwt_verify(const uint8_t *key, size_t keylen, const char *token,
                    time_t now, struct jwt_claims *out)
{
    const char *dot1, *dot2;
    uint8_t mac[32], sig[AUTH_JWT_MAX];
    struct jwt_claims c;
    size_t len;
    long siglen;
    int rc;

    if (!token || !out)
        return -EBADMSG;
    len = strnlen(token, AUTH_JWT_MAX + 1);
    if (len > AUTH_JWT_MAX)
        return -EBADMSG;
    dot1 = strchr(token, '.');
    dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot1 || !dot2 || strchr(dot2 + 1, '.'))
        return -EBADMSG;  /* not exactly three parts */
    if (dot1 == token || dot2 == dot1 + 1)
        return -EBADMSG;  /* empty header or payload */
    for (const char *p = token; *p; p++)
        if (*p != '.' && b64url_value(*p) < 0)
            return -EBADMSG;

    if ((rc = check_header(token, (size_t)(dot1 - token))) != 0)
        return rc;

    /* An empty or wrongly sized signature is a bad signature. */
    siglen = b64url_decode(dot2 + 1, strlen(dot2 + 1), sig, sizeof(sig));
    if (siglen < 0)
        return -EBADMSG;
    if (!key || hmac256(key, keylen, token, (size_t)(dot2 - token), mac) != 0)
        return -EPERM;
    if (siglen != 32 || CRYPTO_memcmp(mac, sig, sizeof(mac)) != 0)
        return -EPERM;

    /* Claims are parsed only once they are known to be ours. */
    if ((rc = read_claims(dot1 + 1, (size_t)(dot2 - dot1 - 1), &c)) != 0)
        return rc;
    if ((int64_t)now >= c.exp)
        return -ETIMEDOUT;
    *out = c;
    return 0;
}

/* ---- A hash index of UUID strings over slot numbers ---------------------- */

struct uuid_index {
    uint32_t mask;                        /* buckets - 1, a power of two */
    int32_t *head;                        /* per bucket, NONE when empty */
    int32_t *next;                        /* per slot */
    char (*key)[AUTH_UUID_LEN + 1];       /* per slot, "" when free */
};

static uint32_t uuid_hash(const char *s)
{
    uint32_t h = 2166136261u;  /* FNV-1a: the keys are random already */

    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 16777619u;
    }
    return h;
}

/* Fixed-capacity tables are touched once at start: calloc'd pages would
 * otherwise join the RSS one by one as the table fills over hours, which
 * looks like a leak to anyone watching memory (and to the soak test). */
static void *table_new(size_t n, size_t size)
{
    void *p = calloc(n, size);

    if (p)
        wipe_mem(p, n * size);
    return p;
}

static int ix_init(struct uuid_index *ix, size_t cap)
{
    size_t nb = 1;

    while (nb < 2 * cap)
        nb <<= 1;
    ix->mask = (uint32_t)(nb - 1);
    ix->head = malloc(nb * sizeof(*ix->head));
    ix->next = table_new(cap, sizeof(*ix->next));
    ix->key = table_new(cap, sizeof(*ix->key));
    if (!ix->head || !ix->next || !ix->key)
        return -1;
    for (size_t i = 0; i < nb; i++)
        ix->head[i] = NONE;
    return 0;
}

static void ix_free(struct uuid_index *ix)
{
    free(ix->head);
    free(ix->next);
    free(ix->key);
}

static int32_t ix_find(const struct uuid_index *ix, const char *key)
{
    if (strnlen(key, AUTH_UUID_LEN + 1) != AUTH_UUID_LEN)
        return NONE;
    for (int32_t i = ix->head[uuid_hash(key) & ix->mask]; i != NONE; i = ix->next[i])
        if (strcmp(ix->key[i], key) == 0)
            return i;
    return NONE;
}

static void ix_add(struct uuid_index *ix, int32_t slot, const char *key)
{
    uint32_t b = uuid_hash(key) & ix->mask;

    memcpy(ix->key[slot], key, AUTH_UUID_LEN + 1);
    ix->next[slot] = ix->head[b];
    ix->head[b] = slot;
}

static void ix_del(struct uuid_index *ix, int32_t slot)
{
    int32_t *pp = &ix->head[uuid_hash(ix->key[slot]) & ix->mask];

    while (*pp != NONE && *pp != slot)
        pp = &ix->next[*pp];
    if (*pp == slot)
        *pp = ix->next[slot];
    ix->key[slot][0] = '\0';
    ix->next[slot] = NONE;
}

static int ix_used(const struct uuid_index *ix, int32_t slot)
{
    return ix->key[slot][0] != '\0';
}

/* ---- Challenge store ---------------------------------------------------- */

struct auth_challenges {
    struct uuid_index ix;
    struct auth_challenge *slot;  /* AUTH_CHALLENGE_CAPACITY, a ring */
    int32_t head;                 /* next slot to fill */
};

struct auth_challenges *auth_challenges_new(void)
{
    struct auth_challenges *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->slot = table_new(AUTH_CHALLENGE_CAPACITY, sizeof(*s->slot));
    if (!s->slot || ix_init(&s->ix, AUTH_CHALLENGE_CAPACITY) != 0) {
        auth_challenges_free(s);
        return NULL;
    }
    return s;
}

void auth_challenges_free(struct auth_challenges *s)
{
    if (!s)
        return;
    if (s->slot)
        wipe_mem(s->slot, AUTH_CHALLENGE_CAPACITY * sizeof(*s->slot));
    free(s->slot);
    ix_free(&s->ix);
    free(s);
}

int auth_challenge_make(const char *purpose, const char *client_ip, int64_t now_ms,
                        struct auth_challenge *out)
{
    struct auth_challenge c;
    int rc;

    if (!out || !auth_purpose_valid(purpose) || !client_ip ||
        strlen(client_ip) >= sizeof(c.client_ip))
        return -EINVAL;
    memset(&c, 0, sizeof(c));
    if ((rc = auth_uuid_new(c.nonce_id)) != 0)
        return rc;
    if (RAND_bytes(c.nonce, sizeof(c.nonce)) != 1)
        return -EIO;
    memcpy(c.purpose, purpose, AUTH_PURPOSE_LEN + 1);
    memcpy(c.client_ip, client_ip, strlen(client_ip) + 1);
    c.expires_ms = now_ms + AUTH_CHALLENGE_TTL_MS;
    *out = c;
    wipe_mem(&c, sizeof(c));
    return 0;
}

int auth_challenge_put(struct auth_challenges *s, const struct auth_challenge *c)
{
    int32_t i;

    if (!s || !c || ix_find(&s->ix, c->nonce_id) != NONE)
        return -EEXIST;
    /* The slot at the head is the oldest one issued: reuse it. */
    i = s->head;
    s->head = (s->head + 1) % AUTH_CHALLENGE_CAPACITY;
    if (ix_used(&s->ix, i))
        ix_del(&s->ix, i);
    s->slot[i] = *c;
    ix_add(&s->ix, i, c->nonce_id);
    return 0;
}

int auth_challenge_issue(struct auth_challenges *s, const char *purpose,
                         const char *client_ip, int64_t now_ms,
                         struct auth_challenge *out)
{
    struct auth_challenge c;
    int rc;

    if (!s)
        return -EINVAL;
    do {
        if ((rc = auth_challenge_make(purpose, client_ip, now_ms, &c)) != 0)
            return rc;
        rc = auth_challenge_put(s, &c);
    } while (rc == -EEXIST);  /* a random id that is taken: draw again */
    if (out)
        *out = c;
    wipe_mem(&c, sizeof(c));
    return 0;
}

int auth_challenge_take(struct auth_challenges *s, const char *nonce_id,
                        int64_t now_ms, struct auth_challenge *out)
{
    struct auth_challenge c;
    int32_t i;

    if (!s || !nonce_id)
        return -ENOENT;
    i = ix_find(&s->ix, nonce_id);
    if (i == NONE)
        return -ENOENT;
    c = s->slot[i];
    ix_del(&s->ix, i);
    wipe_mem(&s->slot[i], sizeof(s->slot[i]));
    if (out)
        *out = c;
    /* The TTL is how long it lives: at exactly TTL it is gone. */
    return now_ms >= c.expires_ms ? -ETIMEDOUT : 0;
}

/* ---- Cookie ids --------------------------------------------------------- */

enum { JTI_RESERVED = 1, JTI_USED = 2 };

struct auth_jtis {
    struct uuid_index ix;
    int32_t capacity;
    time_t *exp;          /* per slot */
    uint8_t *state;       /* per slot: JTI_RESERVED or JTI_USED when in use */
    int32_t *free_next;   /* free list through unused slots */
    int32_t free_head;
    size_t used;
    time_t min_exp;       /* no id expires before this: skip useless sweeps */
};

struct auth_jtis *auth_jtis_new(size_t capacity)
{
    struct auth_jtis *s;

    if (capacity < AUTH_JTI_CAPACITY_MIN || capacity > AUTH_JTI_CAPACITY_MAX)
        return NULL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->capacity = (int32_t)capacity;
    s->exp = table_new(capacity, sizeof(*s->exp));
    s->state = table_new(capacity, sizeof(*s->state));
    s->free_next = table_new(capacity, sizeof(*s->free_next));
    if (!s->exp || !s->state || !s->free_next || ix_init(&s->ix, capacity) != 0) {
        auth_jtis_free(s);
        return NULL;
    }
    for (int32_t i = 0; i < s->capacity; i++)
        s->free_next[i] = i + 1 < s->capacity ? i + 1 : NONE;
    s->free_head = 0;
    return s;
}

void auth_jtis_free(struct auth_jtis *s)
{
    if (!s)
        return;
    free(s->exp);
    free(s->state);
    free(s->free_next);
    ix_free(&s->ix);
    free(s);
}

static void jtis_release(struct auth_jtis *s, int32_t i)
{
    ix_del(&s->ix, i);
    s->state[i] = 0;
    s->free_next[i] = s->free_head;
    s->free_head = i;
    s->used--;
}

/* Forget every id whose cookie has expired (now >= exp). */
static void jtis_sweep(struct auth_jtis *s, time_t now)
{
    time_t min = 0;
    int any = 0;

    for (int32_t i = 0; i < s->capacity; i++) {
        if (!ix_used(&s->ix, i))
            continue;
        if (now >= s->exp[i]) {
            jtis_release(s, i);
        } else if (!any || s->exp[i] < min) {
            min = s->exp[i];
            any = 1;
        }
    }
    s->min_exp = min;
}

/* Take a free slot for `jti`, sweeping expired ids when there is none.
 * 0 or -ENOSPC. */
static int jtis_add(struct auth_jtis *s, const char *jti, time_t exp,
                    time_t now, int state)
{
    int32_t i;

    if (s->free_head == NONE && now >= s->min_exp)
        jtis_sweep(s, now);
    if (s->free_head == NONE)
        return -ENOSPC;
    i = s->free_head;
    s->free_head = s->free_next[i];
    s->exp[i] = exp;
    s->state[i] = (uint8_t)state;
    ix_add(&s->ix, i, jti);
    if (s->used == 0 || exp < s->min_exp)
        s->min_exp = exp;
    s->used++;
    return 0;
}

int auth_jti_reserve(struct auth_jtis *s, const char *jti, time_t exp, time_t now)
{
    if (!s || !jti || !uuid_shape(jti))
        return -EINVAL;
    if (ix_find(&s->ix, jti) != NONE)
        return -EEXIST;
    return jtis_add(s, jti, exp, now, JTI_RESERVED);
}

void auth_jti_unreserve(struct auth_jtis *s, const char *jti)
{
    int32_t i;

    if (!s || !jti)
        return;
    i = ix_find(&s->ix, jti);
    if (i != NONE && s->state[i] == JTI_RESERVED)
        jtis_release(s, i);
}

int auth_jti_use(struct auth_jtis *s, const char *jti, time_t exp, time_t now)
{
    int32_t i;

    if (!s || !jti || !uuid_shape(jti))
        return -EINVAL;
    i = ix_find(&s->ix, jti);
    if (i != NONE) {
        if (s->state[i] != JTI_RESERVED)
            return -EEXIST;
        /* Issued here: its slot has waited for this use since. */
        s->state[i] = JTI_USED;
        return 0;
    }
    return jtis_add(s, jti, exp, now, JTI_USED);
}

size_t auth_jtis_count(const struct auth_jtis *s)
{
    return s ? s->used : 0;
}
