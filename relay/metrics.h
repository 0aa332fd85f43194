/* Process-wide counters, gauges and histograms for GET /metrics, in the
 * Prometheus text exposition format 0.0.4. Every update is one relaxed
 * atomic operation where the event happens (no lock, no allocation), from
 * any thread; formatting reads each value once and takes no lock. Every
 * label comes from a fixed table here: no client IP, user, host or path
 * ever becomes a label, so the number of series never grows. */
#ifndef WC_METRICS_H
#define WC_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* The largest exposition metrics_format() writes; its buffer needs this
 * much (a test checks that a scrape with every series fits). */
#define METRICS_BODY_MAX (256u * 1024)
/* The Content-Type of the text exposition format, version 0.0.4. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* The versions shown by wattcloud_relay_build_info. Call once at start,
 * before any scrape; the strings are static (the libraries' own). The web
 * side gives the libwebsockets version, main.c the libssh2 one. */
void metrics_set_libssh2_version(const char *version);
void metrics_set_lws_version(const char *version);

/* The buffer budget of the sessions' hub (session.h): `held` is its
 * counter of reserved and buffered bytes, read at each scrape, `budget`
 * its size. Call once at start, before any scrape; `held` must outlive
 * every scrape. Without the call both gauges read 0. */
void metrics_set_buffer_budget(const _Atomic size_t *held, size_t budget);
/* A binary message began (+1) or stopped (-1) waiting for room in that
 * budget (ws.c's queue). */
void metrics_budget_waiting(int delta);

/* Phases of enum session_phase, labelled in its order. */
#define METRICS_N_PHASES 5

/* A session moved from phase `from` to `to` (enum session_phase values);
 * -1 for "none": a new session has from = -1, a freed one to = -1. */
void metrics_session_phase(int from, int to);
/* A session ended; `reason` is its close reason as logged, mapped to a
 * fixed label here (unknown reasons count as "other"). */
void metrics_session_ended(const char *reason);

/* An upgrade to /relay/ws refused with HTTP `status`. */
void metrics_upgrade_refused(int status);

/* GET /relay/auth/challenge answered 200, POST /relay/auth answered 204. */
void metrics_challenge_issued(void);
void metrics_cookie_issued(void);

/* Why POST /relay/auth issued no cookie. */
enum metrics_redeem_refusal {
    MR_REDEEM_MALFORMED,        /* body not {"nonce_id","answer"}, framing */
    MR_REDEEM_UNKNOWN,          /* challenge unknown, used or expired */
    MR_REDEEM_WRONG_CLIENT,     /* redeemed from another address */
    MR_REDEEM_WORK,             /* not enough proof of work */
    MR_REDEEM_TOO_LARGE,        /* body over AUTH_MAX_BODY_BYTES */
    MR_REDEEM_STORE_FULL,       /* RELAY_COOKIE_STORE_SIZE reached */
    MR_REDEEM_INTERNAL,
    MR_REDEEM_COUNT
};
void metrics_redeem_refused(enum metrics_redeem_refusal why);

/* Why the upgrade gate refused the cookie presented with an upgrade. */
enum metrics_cookie_refusal {
    MR_COOKIE_INVALID,          /* missing, bad signature or expired */
    MR_COOKIE_WRONG_TARGET,     /* made for another host:port */
    MR_COOKIE_REUSED,           /* its single use is spent */
    MR_COOKIE_STORE_FULL,       /* another instance's cookie, store full */
    MR_COOKIE_COUNT
};
void metrics_cookie_refused(enum metrics_cookie_refusal why);

/* One SSH authentication: `method` an enum proto_auth_type value, `result`
 * "ok" or the session's error code ("auth_failed", "bad_key",
 * "sftp_unavailable", "io", "blocked"). */
void metrics_ssh_auth(int method, const char *result);

/* WebSocket payload bytes received from / sent to browsers. */
void metrics_bytes_from_browser(size_t n);
void metrics_bytes_to_browser(size_t n);

/* Upload bytes accepted from browsers and not yet written to SFTP servers
 * (the sum of every session's in_bytes). */
void metrics_unwritten_add(size_t n);
void metrics_unwritten_sub(size_t n);

/* One SFTP operation: `method` an enum proto_method value, `code` NULL for
 * success or its error code, `usecs` how long it took. */
void metrics_sftp_op(int method, const char *code, int64_t usecs);

/* TCP connect, banner and key exchange of one session took `usecs`. */
void metrics_ssh_connect(int64_t usecs);

/* Write the whole exposition into `buf` (METRICS_BODY_MAX bytes suffice).
 * Returns its length, or -1 when it does not fit. Any thread; allocates
 * only to read /proc/self. */
long metrics_format(char *buf, size_t len);

/* The label a close reason counts under (for tests). */
const char *metrics_close_label(const char *reason);

#endif
