/* Per-client abuse limits of PROTOCOL §4 (live sessions, SSH auth failures,
 * target spray) and §1.1 (challenge rate), in a fixed-size table so that an
 * attacker rotating addresses cannot grow memory. Thread-safe. */
#ifndef WC_RATELIMIT_H
#define WC_RATELIMIT_H

#include <stddef.h>
#include <time.h>

#include "config.h"

/* Table capacity: clients tracked at once. ~0.5 KiB each. */
#define RATELIMIT_CAPACITY             4096
/* Longest key stored (client_ip_key() output), NUL included. */
#define RATELIMIT_KEY_MAX              64

/* SSH authentication failures: this many within the window block. */
#define RATELIMIT_AUTH_MAX_FAILURES    5
#define RATELIMIT_AUTH_WINDOW_SECS     600
/* Spray: more than this many distinct target hosts within the window block. */
#define RATELIMIT_SPRAY_MAX_HOSTS      5
#define RATELIMIT_SPRAY_WINDOW_SECS    3600
/* How long an auth-failure or spray block lasts. */
#define RATELIMIT_BLOCK_SECS           3600
/* Challenge rate window (AUTH_CHALLENGE_PER_MIN counts within it). */
#define RATELIMIT_CHALLENGE_WINDOW_SECS 60
/* An entry with no live session, no block and no activity for this long
 * holds no information any more (it outlives every window). */
#define RATELIMIT_STALE_SECS           RATELIMIT_SPRAY_WINDOW_SECS

/*
 * Keys are client_ip_key() strings. Time is whatever the caller passes as
 * `now`: whole seconds of CLOCK_MONOTONIC (access.c; tests drive it), so a
 * wall-clock step neither lifts a block nor resets a window; functions
 * without `now` use the latest `now` the table was given.
 *
 * Memory is bounded: when a new key finds the table full, entries that hold
 * nothing any more (stale) are freed; if none is stale, the entry idle the
 * longest among those with no live session and no block is evicted, and
 * failing that the blocked one whose block ends first. Eviction may thus
 * forget a counter or, under a flood of thousands of addresses, a block —
 * an attacker who owns that many addresses is not slowed by per-address
 * blocks anyway — but never a live session count: entries with live
 * sessions are never evicted. When every entry has a live session, a new
 * key is refused: challenges answer "over the limit", auth attempts are
 * refused, a session cannot open.
 *
 * All functions take the table's internal mutex: they may be called from
 * the lws service thread and from session worker threads at once.
 */
struct ratelimit;

/* A new table with the limits of `cfg` (max_concurrent_per_ip,
 * auth_challenge_per_min; copied, `cfg` need not outlive it). Owned by the
 * caller: release with ratelimit_free(). NULL when out of memory or random
 * bytes are unavailable. */
struct ratelimit *ratelimit_new(const struct config *cfg);

/* Release the table; NULL is fine. No call may be in flight. */
void ratelimit_free(struct ratelimit *l);

/* Live sessions (§4). */

/* 1 when `key` has fewer than SFTP_MAX_CONCURRENT_PER_IP live sessions. */
int ratelimit_session_can_open(struct ratelimit *l, const char *key);

/* Take a live-session slot for `key`: 0, or -1 when the key already has the
 * maximum (re-checked here, atomically, since another upgrade may have won
 * the slot since ratelimit_session_can_open()) or the table is full of entries
 * with live sessions. Each 0 must be paired with one ratelimit_session_close();
 * a -1 must not be. */
int ratelimit_session_open(struct ratelimit *l, const char *key);

/* Free a slot taken by ratelimit_session_open(), at once. */
void ratelimit_session_close(struct ratelimit *l, const char *key);

/* Live sessions of `key` (0 when unknown). */
int ratelimit_sessions(struct ratelimit *l, const char *key);

/* SSH authentication failures (§4). */

/* Count one failure BEFORE authenticating, so parallel guesses cannot
 * exceed the budget. Returns 0 when the attempt may go ahead, 1 when the
 * key is blocked (then nothing is counted: do not authenticate). The
 * attempt that brings the count to RATELIMIT_AUTH_MAX_FAILURES within
 * RATELIMIT_AUTH_WINDOW_SECS may go ahead, but blocks the key for
 * RATELIMIT_BLOCK_SECS unless it is refunded. */
int ratelimit_auth_attempt(struct ratelimit *l, const char *key, time_t now);

/* The attempt succeeded: take its count back, and lift the block it set
 * when the failures left are under the threshold. */
void ratelimit_auth_refund(struct ratelimit *l, const char *key, time_t now);

/* Spray (§4). */

/* Record that `key` targets `host` (compared case-insensitively, stored as
 * a keyed 64-bit hash: at most RATELIMIT_SPRAY_MAX_HOSTS + 1 per key). Returns
 * 1 when this made the key exceed RATELIMIT_SPRAY_MAX_HOSTS distinct hosts
 * within RATELIMIT_SPRAY_WINDOW_SECS, which blocks it for RATELIMIT_BLOCK_SECS
 * (also when the table is full of live sessions), else 0. */
int ratelimit_record_target(struct ratelimit *l, const char *key, const char *host,
                         time_t now);

/* 1 when `key` is in an auth-failure or spray block at `now`. */
int ratelimit_blocked(struct ratelimit *l, const char *key, time_t now);

/* Challenges (§1.1). */

/* Count one challenge request of `key`; 1 when the key made more than
 * AUTH_CHALLENGE_PER_MIN within the last RATELIMIT_CHALLENGE_WINDOW_SECS
 * (this one and refused ones included), else 0. Exact to the second. */
int ratelimit_challenge(struct ratelimit *l, const char *key, time_t now);

/* Entries in use (for tests and metrics); never above RATELIMIT_CAPACITY. */
size_t ratelimit_entries(struct ratelimit *l);

#endif
