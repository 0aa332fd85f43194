/* The relay cookie of PROTOCOL §1.1: purpose strings, proof of work, the
 * HS256 JWT, the store of issued challenges and the store of used cookie
 * ids. No I/O, no HTTP: access.c puts these together for the lws layer. */
#ifndef WC_AUTH_COOKIE_H
#define WC_AUTH_COOKIE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define AUTH_UUID_LEN            36    /* "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx" */
#define AUTH_PURPOSE_LEN         37    /* "sftp:" + 32 lowercase hex */
#define AUTH_PURPOSE_BUF         40    /* a purpose with its NUL, rounded */
#define AUTH_NONCE_BYTES         16
#define AUTH_IP_MAX              64    /* a client IP with its NUL */
#define AUTH_JWT_MAX             1024  /* longest token accepted or made */

/* Challenges are answered within this time, once. */
#define AUTH_CHALLENGE_TTL_SECS  60
/* Challenges remembered at once. With AUTH_CHALLENGE_PER_MIN = 10 per
 * client this is 1000 clients asking at full rate; past that the oldest
 * challenge is forgotten (its answer gets 400 and the browser asks again). */
#define AUTH_CHALLENGE_CAPACITY  10000
/* Used cookie ids remembered at once (~3 MiB). See auth_jti_use(). */
#define AUTH_JTI_CAPACITY        65536

/* Purpose and proof of work. */

/* "sftp:" + the first 16 bytes of SHA-256(lowercase(host) ":" port) in
 * lowercase hex, into `out`. Only ASCII letters are lowercased (as the
 * SPA's toLowerCase() does for the host names it can send). Returns 0, or
 * -EINVAL for a NULL/empty host or a port outside 1-65535, -EIO when
 * OpenSSL fails. */
int auth_purpose_for(const char *host, int port, char out[AUTH_PURPOSE_BUF]);

/* 1 when `p` is "sftp:" followed by exactly 32 lowercase hex digits. */
int auth_purpose_valid(const char *p);

/* 1 when SHA-256(nonce || purpose || answer as 8 bytes little-endian)
 * starts with at least `bits` zero bits, else 0. */
int auth_pow_ok(const uint8_t nonce[AUTH_NONCE_BYTES], const char *purpose,
                uint64_t answer, int bits);

/* The cookie: a JWT, HS256. */

struct jwt_claims {
    char jti[AUTH_UUID_LEN + 1];
    char purpose[AUTH_PURPOSE_BUF];
    int64_t iat;
    int64_t exp;
};

/* Sign {"jti": <fresh UUIDv4>, "purpose", "iat": now, "exp": now + ttl}
 * under header {"alg":"HS256","typ":"JWT"}, base64url without padding,
 * into `out` (AUTH_JWT_MAX always suffices). Returns 0, -EINVAL (empty key,
 * invalid purpose, ttl <= 0), -ENOSPC (`out` too small), -EIO (OpenSSL). */
int auth_jwt_sign(const uint8_t *key, size_t keylen, const char *purpose,
                  time_t now, int ttl, char *out, size_t outlen);

/* Verify `token` and fill `out`. Nothing odd is tolerated: exactly three
 * base64url parts (no padding, canonical), a JSON header whose "alg" is
 * "HS256" ("typ" absent or "JWT", no "crit"), an HMAC compared in constant
 * time, then claims of the right types (jti a UUID, purpose valid, iat and
 * exp integers; other claims ignored). Returns 0, -EBADMSG (malformed),
 * -EPERM (bad signature, or alg not HS256: "none", HS512, ...), or
 * -ETIMEDOUT (now >= exp). */
int auth_jwt_verify(const uint8_t *key, size_t keylen, const char *token,
                    time_t now, struct jwt_claims *out);

/* Challenge store. Service thread only: no locking. */

struct auth_challenge {
    char nonce_id[AUTH_UUID_LEN + 1];
    uint8_t nonce[AUTH_NONCE_BYTES];
    char purpose[AUTH_PURPOSE_BUF];
    char client_ip[AUTH_IP_MAX];   /* exact client IP, not its /64 key */
    time_t expires;                /* issue time + AUTH_CHALLENGE_TTL_SECS */
};

struct auth_challenges;

/* A store of AUTH_CHALLENGE_CAPACITY challenges, owned by the caller:
 * release with auth_challenges_free() (NULL is fine). NULL when out of
 * memory. */
struct auth_challenges *auth_challenges_new(void);
void auth_challenges_free(struct auth_challenges *s);

/* Issue a challenge (fresh nonce_id, 16 random bytes) for `purpose` and
 * `client_ip`, remember it, and copy it to `out`. The store is a ring:
 * when full, the oldest challenge makes room — with one TTL for all, that
 * is an expired one first whenever any has expired. Returns 0, -EINVAL
 * (invalid purpose, IP too long), -EIO (no random bytes). */
int auth_challenge_issue(struct auth_challenges *s, const char *purpose,
                         const char *client_ip, time_t now,
                         struct auth_challenge *out);

/* Find the challenge `nonce_id`, remove it (single use) and copy it to
 * `out`. Returns 0, -ENOENT (unknown, already taken, or forgotten), or
 * -ETIMEDOUT (expired: now > expires; removed all the same). */
int auth_challenge_take(struct auth_challenges *s, const char *nonce_id,
                        time_t now, struct auth_challenge *out);

/* Used cookie ids (single use, PROTOCOL §1.2 check 7). Service thread
 * only: no locking. */

struct auth_jtis;

/* A store of AUTH_JTI_CAPACITY ids, owned by the caller: release with
 * auth_jtis_free() (NULL is fine). NULL when out of memory. */
struct auth_jtis *auth_jtis_new(void);
void auth_jtis_free(struct auth_jtis *s);

/* Record the first use of cookie id `jti`, remembered until `exp` (after
 * which the cookie fails verification anyway). Returns 0 (first use,
 * recorded), -EEXIST (seen before: a replay), or -ENOSPC when the store is
 * full of unexpired ids. A full store refuses rather than forgets: evicting
 * an unexpired id would let its cookie be replayed. The capacity is sized
 * far above honest use (cookies cost a proof of work and
 * AUTH_CHALLENGE_PER_MIN bounds them per client). */
int auth_jti_use(struct auth_jtis *s, const char *jti, time_t exp, time_t now);

/* Ids currently remembered (for tests and metrics). */
size_t auth_jtis_count(const struct auth_jtis *s);

#endif
