/* Access control for the HTTP surface (PROTOCOL §1.1, §1.2, §4): the cookie
 * endpoints and the WebSocket upgrade gate, as plain functions that take
 * strings and return HTTP statuses, so the lws layer stays thin. */
#ifndef WC_ACCESS_H
#define WC_ACCESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "config.h"
#include "ratelimit.h"

#define ACCESS_COOKIE_NAME        "relay_auth_sftp"
#define ACCESS_HOST_MAX           256   /* a target host with its NUL */
/* Buffers that always suffice for the challenge JSON and the Set-Cookie
 * value. */
#define ACCESS_CHALLENGE_BODY_MAX 160
#define ACCESS_SET_COOKIE_MAX     1200
/* The text POST /relay/auth answers with its 503 when the cookie store is
 * full (see AUTH_JTI_CAPACITY). */
#define ACCESS_STORE_FULL_TEXT    "too many cookies issued; try again in a few minutes"

/* The two clocks access decisions read. `wall` is time(NULL), for the
 * cookie's iat and exp only (the browser and other instances read them);
 * `mono_ms` is CLOCK_MONOTONIC in milliseconds, for everything the relay
 * times by itself (challenge expiry, rate windows, blocks), so that no
 * wall-clock step shortens or stretches them. Tests pass their own. */
struct access_time {
    time_t wall;
    int64_t mono_ms;
};

/* Both clocks, now. */
struct access_time access_time_now(void);

/*
 * Threads: everything here runs on the lws service thread, except
 * access_auth_attempt() and access_auth_refund(), which session workers
 * call (they only touch the thread-safe limits table). The challenge and
 * cookie-id stores are not locked.
 *
 * `client_ip` is always the exact client address from client_ip_resolve();
 * the limits count it under its client_ip_key() (IPv6 per /64), challenges
 * are bound to the exact address.
 */
struct access;
struct store;
struct store_req;

/* Owns the limits table and the challenge and cookie-id stores. `cfg` is
 * borrowed and must outlive the result. Returns NULL when out of memory,
 * when random bytes are unavailable, or when cfg->signing_key_len < 32
 * (PROTOCOL §6: the key has at least 32 bytes). Release with access_free(). */
struct access *access_new(const struct config *cfg);

/* Release everything access_new() made; NULL is fine. */
void access_free(struct access *a);

/* GET /relay/auth/challenge?purpose=P. `purpose_query` is the URL-decoded
 * value of `purpose` (NULL when absent). Every request counts towards the
 * client's AUTH_CHALLENGE_PER_MIN, whatever its answer. Returns the HTTP
 * status: 200 with `body` set to {"nonce_id":..,"nonce":..,"difficulty":D}
 * (ACCESS_CHALLENGE_BODY_MAX bytes suffice), 400 (purpose invalid), 429
 * (over the rate), 500 (no random bytes, `body` too small). */
int access_http_challenge(struct access *a, const char *purpose_query,
                          const char *client_ip, struct access_time now,
                          char *body, size_t bodylen);

/* POST /relay/auth with the body `body` of `len` bytes (not necessarily
 * NUL-terminated; the lws layer should stop reading past
 * cfg->auth_max_body_bytes and pass what it has: any len above answers
 * 413). Returns the HTTP status: 204 with `set_cookie` set to the full
 * Set-Cookie header value (ACCESS_SET_COOKIE_MAX bytes suffice), 400
 * (malformed body — "answer" must be a JSON integer 0..2^64-1 —, unknown
 * or expired nonce_id), 403 (another client IP than the challenged one, or
 * not enough work: the challenge is used up either way), 413, 503 (the
 * cookie store is full: answer ACCESS_STORE_FULL_TEXT), 500 (signing
 * failed, `set_cookie` too small). Neither the cookie nor the body is
 * logged here. */
int access_http_redeem(struct access *a, const char *body, size_t len,
                       const char *client_ip, struct access_time now,
                       char *set_cookie, size_t n);

/* The upgrade request, as raw header values and URL-decoded query values;
 * NULL when absent. */
struct upgrade_req {
    const char *origin;         /* Origin header */
    const char *cookie_header;  /* Cookie header (all of it) */
    const char *host;           /* ?host= */
    const char *port;           /* ?port= */
    const char *client_ip;      /* client_ip_resolve() */
};

/* Where an allowed upgrade may connect. */
struct upgrade_target {
    char host[ACCESS_HOST_MAX];    /* the host as asked, lowercased */
    int port;
    int pinned;                    /* 1: an IP literal, `addr` is the target */
    struct sockaddr_storage addr;  /* with `port` set, when pinned */
    socklen_t addrlen;
};

/* The target named by an upgrade's `host` and `port` query arguments:
 * well-formed (check 3), lowercased, and pinned when the host is an IP
 * literal. Pure parsing, no checks against settings. Returns 0, or -1 with
 * `t` zeroed. The gate and the WebSocket side both read the target here. */
int access_target(const char *host, const char *port, struct upgrade_target *t);

/* Checks 4 and 5 of the gate for a target `t` from access_target(),
 * outside any request (the probe command): NULL when its port and host are
 * allowed, else the name of the setting that refuses them
 * ("SFTP_ALLOWED_PORTS", "SFTP_HOST_ALLOWLIST"). */
const char *access_target_refused_by(const struct config *cfg,
                                     const struct upgrade_target *t);

/* The upgrade gate, PROTOCOL §1.2 checks 1-10 in order; the first failure
 * answers. Returns 0 (upgrade, `t` filled) or the HTTP status:
 *   1  Origin                                    403
 *   2  cookie present, signature valid, unexpired 401
 *   3  host a valid name or IP literal (<= 253 chars, letters, digits,
 *      '-', '_', '.', labels <= 63, last label not all digits — "127.1"
 *      and "2130706433" are refused, not guessed at); port 1-65535,
 *      digits only, no leading zero                 400
 *   4  port in SFTP_ALLOWED_PORTS                  403
 *   5  host in SFTP_HOST_ALLOWLIST                 403
 *   6  cookie purpose matches host and port        403
 *   7  cookie id not used before; it is recorded
 *      as used here                                403 (503 only for a
 *      cookie another instance issued, when the store is full of
 *      unexpired ids: see auth_jti_use())
 *   8  client not blocked (auth failures, spray)   429
 *   9  client under SFTP_MAX_CONCURRENT_PER_IP     429
 *      spray: the target host is recorded for the client here, once
 *      checks 1-9 passed, whether or not check 10 then refuses it (probing
 *      private targets is spraying too); the request that makes it exceed
 *      the limit is refused                        429
 *  10  an IP literal must pass the SSRF guard      403
 *      (a name: t->pinned = 0; the worker calls netguard_resolve() before
 *      connecting and refuses with "blocked_target")
 * 500 for internal errors (no client_ip). The cookie value is never
 * logged or kept. The live-session slot is taken only by
 * access_session_open() once the WebSocket is established. */
int access_check_upgrade(struct access *a, const struct upgrade_req *r,
                         struct access_time now, struct upgrade_target *t);

/* Live sessions. open: 0, or -1 when the client already has its maximum
 * (another upgrade won the slot since the gate) or the limits table is
 * full of live sessions; then close the WebSocket and do not call
 * access_session_close(). Every 0 is paired with one close. */
int access_session_open(struct access *a, const char *client_ip);
void access_session_close(struct access *a, const char *client_ip);

/* SSH authentication budget (worker threads): call attempt before
 * authenticating — 0 go ahead, -1 the client is blocked (do not try,
 * answer "authentication failed") — and refund after a success. */
int access_auth_attempt(struct access *a, const char *client_ip,
                        struct access_time now);
void access_auth_refund(struct access *a, const char *client_ip,
                        struct access_time now);

/* The limits table (owned by `a`'s embedded store; NULL with a shared
 * store), for metrics and tests. */
struct ratelimit *access_ratelimit(struct access *a);

/* The state store (owned by `a`): embedded, or shared when STATE_URL is
 * set (store.h). */
struct store *access_store(struct access *a);

/*
 * The three decisions above, split around their store request, for a
 * store that answers later (store.h: STORE_PENDING). Each begin returns 0
 * with `r` ready for store_submit(), or the HTTP status that answers now
 * (then `r` is not submitted). Each end reads the answered `r` and returns
 * the status exactly as the one-call function does. access_http_challenge,
 * access_http_redeem and access_check_upgrade are begin, submit, end.
 */
int access_challenge_begin(struct access *a, const char *purpose_query,
                           const char *client_ip, struct access_time now,
                           struct store_req *r);
int access_challenge_end(struct access *a, struct store_req *r, char *body, size_t bodylen);
int access_redeem_begin(struct access *a, const char *body, size_t len,
                        const char *client_ip, struct access_time now, struct store_req *r);
int access_redeem_end(struct access *a, struct store_req *r, char *set_cookie, size_t n);
int access_upgrade_begin(struct access *a, const struct upgrade_req *req,
                         struct access_time now, struct upgrade_target *t,
                         struct store_req *r);
int access_upgrade_end(struct access *a, const struct store_req *r, struct upgrade_target *t);

/* Live sessions with a shared store's lease (the one STORE_UPGRADE took;
 * "" for the embedded store): as access_session_open/close. */
int access_session_open_lease(struct access *a, const char *client_ip, const char *lease);
void access_session_close_lease(struct access *a, const char *client_ip, const char *lease);

#endif
