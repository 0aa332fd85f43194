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

/* Challenges are answered within this time, once: a challenge issued at
 * t is refused from t + AUTH_CHALLENGE_TTL_MS on (CLOCK_MONOTONIC). */
#define AUTH_CHALLENGE_TTL_MS    60000
/* Challenges remembered at once. With AUTH_CHALLENGE_PER_MIN = 10 per
 * client this is 1000 clients asking at full rate; past that the oldest
 * challenge is forgotten (its answer gets 400 and the browser asks again). */
#define AUTH_CHALLENGE_CAPACITY  10000
/* Cookie ids remembered at once by default (RELAY_COOKIE_STORE_SIZE;
 * ~62 bytes each, 4 MiB). Every cookie takes its slot when it is issued
 * and keeps it until its exp, so an issued cookie can always be used once;
 * when the store is full, POST /relay/auth refuses to issue (503) instead.
 *
 * What filling it costs an attacker, with the defaults: every slot is one
 * cookie, i.e. one challenge answered with POW_DIFFICULTY_BITS = 18 bits of
 * work, 2^18 SHA-256 on average. Slots free up after RELAY_COOKIE_TTL_SECS
 * (600 s), so keeping the store full takes 65,536 cookies per 600 s:
 *   - work: 65,536 x 2^18 = 2^34 SHA-256 per 600 s, ~29 M hashes/s, i.e.
 *     3-6 CPU cores running native SHA-256 without pause;
 *   - addresses: AUTH_CHALLENGE_PER_MIN = 10 challenges per client IP (IPv6
 *     per /64) per minute gives 100 cookies per address per 600 s, so 656
 *     IPv4 addresses or /64s (a single IPv6 /56 holds 256 /64s).
 * The effect is bounded too: while it lasts, new cookies answer 503 and
 * cookies already issued keep working. Raise the setting (or the PoW bits)
 * on a relay that sees such a flood. */
#define AUTH_JTI_CAPACITY        65536
/* The setting's range: at least one cookie, at most 64 MiB of store. */
#define AUTH_JTI_CAPACITY_MIN    1
#define AUTH_JTI_CAPACITY_MAX    1048576

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

/* A fresh random (version 4) UUID in lowercase, for a cookie's jti.
 * Returns 0 or -EIO (no random bytes). */
int auth_uuid_new(char out[AUTH_UUID_LEN + 1]);

/* Sign {"jti", "purpose", "iat": now, "exp": now + ttl} under header
 * {"alg":"HS256","typ":"JWT"}, base64url without padding, into `out`
 * (AUTH_JWT_MAX always suffices). `now` is wall-clock seconds: other
 * instances and the browser read iat/exp. `jti` comes from auth_uuid_new()
 * and was reserved with auth_jti_reserve(). Returns 0, -EINVAL (empty key,
 * jti not a lowercase UUID, invalid purpose, ttl <= 0), -ENOSPC (`out` too
 * small), -EIO (OpenSSL). */
int auth_jwt_sign(const uint8_t *key, size_t keylen, const char *jti,
                  const char *purpose, time_t now, int ttl, char *out,
                  size_t outlen);

/* Verify `token` and fill `out`. Nothing odd is tolerated: exactly three
 * base64url parts (no padding, canonical), a JSON header whose "alg" is
 * "HS256" ("typ" absent or "JWT", no "crit"), an HMAC compared in constant
 * time, then claims of the right types (jti a UUID, purpose valid, iat and
 * exp integers; other claims ignored). Returns 0, -EBADMSG (malformed),
 * -EPERM (bad signature, or alg not HS256: "none", HS512, ...), or
 * -ETIMEDOUT (now >= exp). */
int auth_jwt_verify(const uint8_t *key, size_t keylen, const char *token,
                    time_t now, struct jwt_claims *out);

/* Challenge store. Service thread only: no locking. Its times are
 * CLOCK_MONOTONIC milliseconds: no wall-clock step can revive or kill a
 * challenge. */

struct auth_challenge {
    char nonce_id[AUTH_UUID_LEN + 1];
    uint8_t nonce[AUTH_NONCE_BYTES];
    char purpose[AUTH_PURPOSE_BUF];
    char client_ip[AUTH_IP_MAX];   /* exact client IP, not its /64 key */
    int64_t expires_ms;            /* CLOCK_MONOTONIC ms at issue + TTL */
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
                         const char *client_ip, int64_t now_ms,
                         struct auth_challenge *out);

/* A fresh challenge (random nonce_id and nonce, expiry now_ms +
 * AUTH_CHALLENGE_TTL_MS) for `purpose` and `client_ip` into `out`, not
 * remembered anywhere: auth_challenge_put() or a shared store does that.
 * Returns 0, -EINVAL, -EIO (no random bytes). */
int auth_challenge_make(const char *purpose, const char *client_ip, int64_t now_ms,
                        struct auth_challenge *out);

/* Remember the challenge `c` (made by auth_challenge_make()) in the ring,
 * as auth_challenge_issue() does. Returns 0 or -EEXIST (its nonce_id is
 * taken). */
int auth_challenge_put(struct auth_challenges *s, const struct auth_challenge *c);

/* Find the challenge `nonce_id`, remove it (single use) and copy it to
 * `out`. Returns 0, -ENOENT (unknown, already taken, or forgotten), or
 * -ETIMEDOUT (expired: now_ms >= expires_ms; removed all the same). */
int auth_challenge_take(struct auth_challenges *s, const char *nonce_id,
                        int64_t now_ms, struct auth_challenge *out);

/* Cookie ids (single use, PROTOCOL §1.2 check 7). Each id is remembered
 * from the moment its cookie is issued (reserved) through its use (used)
 * until its exp, after which the cookie fails verification anyway. Times
 * are wall-clock seconds, like the JWT's exp. Service thread only: no
 * locking. */

struct auth_jtis;

/* A store of `capacity` ids (AUTH_JTI_CAPACITY_MIN..MAX, the setting
 * RELAY_COOKIE_STORE_SIZE), owned by the caller: release with
 * auth_jtis_free() (NULL is fine). NULL when out of memory or `capacity`
 * is out of range. */
struct auth_jtis *auth_jtis_new(size_t capacity);
void auth_jtis_free(struct auth_jtis *s);

/* Reserve a slot for the cookie id `jti` about to be issued, until `exp`.
 * Returns 0, -EINVAL (not a lowercase UUID), -EEXIST (already known), or
 * -ENOSPC when every slot holds an unexpired id: then do not issue. */
int auth_jti_reserve(struct auth_jtis *s, const char *jti, time_t exp, time_t now);

/* Give back a reservation whose cookie was never handed out (signing
 * failed). Only a reserved, unused id is dropped; anything else is kept. */
void auth_jti_unreserve(struct auth_jtis *s, const char *jti);

/* Use the cookie id `jti` (valid until `exp`) once. Returns 0 (first use:
 * a reserved id is marked used, in its own slot, so this never fails for a
 * cookie this store issued), -EEXIST (used before: a replay), -EINVAL, or
 * -ENOSPC: a cookie this process did not issue (another instance sharing
 * RELAY_SIGNING_KEY, or before a restart) needs a free slot to be
 * remembered, and a full store refuses rather than forgets, since an
 * evicted unexpired id could be replayed. */
int auth_jti_use(struct auth_jtis *s, const char *jti, time_t exp, time_t now);

/* Ids currently remembered, reserved or used (for tests and metrics). */
size_t auth_jtis_count(const struct auth_jtis *s);

#endif
