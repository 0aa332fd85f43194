/* The relay's Prometheus metrics: relaxed atomics bumped where things
 * happen, and the text exposition (format 0.0.4) written from them on
 * demand. The counters are process-wide state by nature, like the process
 * they describe, so they live in one static table here instead of being
 * passed through every layer: each update is a single atomic add on the
 * hot path, a scrape reads each value once, and no lock is ever taken, so
 * a scrape never waits for a session nor a session for a scrape. */
#include "metrics.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "proto.h"
#include "wipe_alloc.h"

/* CMake defines the version; a build outside it (the fuzz targets) says so. */
#ifndef WC_VERSION
#define WC_VERSION "unknown"
#endif

typedef _Atomic uint64_t counter_t;
typedef _Atomic int64_t gauge_t;

static void add(counter_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static uint64_t get(counter_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static void gauge_add(gauge_t *g, int64_t n)
{
    atomic_fetch_add_explicit(g, n, memory_order_relaxed);
}

/* ---- label tables: every label value there can be --------------------- */

/* In enum session_phase order (session.c checks the order: this file does
 * not include session.h, which would make the two units include each
 * other). */
static const char *const phase_labels[METRICS_N_PHASES] = {
    "connecting", "wait_host_key", "wait_auth", "ready", "closing",
};
#define N_PHASES METRICS_N_PHASES

/* Close reasons are the texts of the session's end log line; each maps to
 * one of a few labels. The last label, "other", takes any text not listed. */
static const char *const close_labels[] = {
    "closed", "browser_closed", "host_key_rejected", "host_key_timeout", "auth_timeout",
    "idle_timeout", "shutdown", "blocked_target", "resolve_failed", "connect_failed",
    "connect_timeout", "not_ssh", "closed_before_banner", "banner_timeout", "kex_failed",
    "auth_failed", "auth_blocked", "bad_key", "sftp_unavailable", "sftp_timeout",
    "ssh_lost", "ssh_keepalive_timeout", "answer_cut_short", "protocol_violation",
    "payload_too_large", "out_of_memory", "budget_stall", "io", "other",
};
#define N_CLOSE (sizeof(close_labels) / sizeof(close_labels[0]))

static const struct {
    const char *reason;
    const char *label;
} close_map[] = {
    {"closed", "closed"},
    {"browser closed", "browser_closed"},
    {"browser gone while reading was paused", "browser_closed"},
    {"browser closed: host key not accepted", "host_key_rejected"},
    {"host key not accepted", "host_key_rejected"},
    {"host key not accepted in time", "host_key_timeout"},
    {"no auth request in time", "auth_timeout"},
    {"idle timeout", "idle_timeout"},
    {"server shutting down", "shutdown"},
    {"blocked_target", "blocked_target"},
    {"resolve_failed", "resolve_failed"},
    {"connect_failed", "connect_failed"},
    {"connect_timeout", "connect_timeout"},
    {"not_ssh", "not_ssh"},
    {"closed_before_banner", "closed_before_banner"},
    {"banner_timeout", "banner_timeout"},
    {"kex_failed", "kex_failed"},
    {"auth_failed", "auth_failed"},
    {"auth blocked", "auth_blocked"},
    {"bad_key", "bad_key"},
    {"sftp_unavailable", "sftp_unavailable"},
    {"sftp operation timeout", "sftp_timeout"},
    {"ssh connection lost", "ssh_lost"},
    {"ssh keepalive timeout", "ssh_keepalive_timeout"},
    {"answer cut short", "answer_cut_short"},
    {"expected the auth request", "protocol_violation"},
    {"bad auth request", "protocol_violation"},
    {"frame before host key", "protocol_violation"},
    {"binary frame before host key", "protocol_violation"},
    {"message inside an unfinished message", "protocol_violation"},
    {"payload too large", "payload_too_large"},
    {"out of memory", "out_of_memory"},
    {"stalled holding the memory budget", "budget_stall"},
    {"io", "io"},
};

/* The statuses the upgrade gate answers with; the last counts any other. */
static const int upgrade_statuses[] = {400, 401, 403, 404, 429, 431, 500, 503, 0};
#define N_UPGRADE (sizeof(upgrade_statuses) / sizeof(upgrade_statuses[0]))

static const char *const redeem_labels[MR_REDEEM_COUNT] = {
    [MR_REDEEM_MALFORMED] = "malformed",
    [MR_REDEEM_UNKNOWN] = "unknown_challenge",
    [MR_REDEEM_WRONG_CLIENT] = "wrong_client",
    [MR_REDEEM_WORK] = "insufficient_work",
    [MR_REDEEM_TOO_LARGE] = "too_large",
    [MR_REDEEM_STORE_FULL] = "store_full",
    [MR_REDEEM_INTERNAL] = "internal",
};

static const char *const cookie_labels[MR_COOKIE_COUNT] = {
    [MR_COOKIE_INVALID] = "invalid_or_expired",
    [MR_COOKIE_WRONG_TARGET] = "wrong_target",
    [MR_COOKIE_REUSED] = "reused",
    [MR_COOKIE_STORE_FULL] = "store_full",
};

/* Authentication methods: the request's auth type; the last is "other". */
static const char *const auth_methods[] = {
    [AUTH_PASSWORD] = "password",
    [AUTH_PUBLICKEY] = "publickey",
    [AUTH_PUBLICKEY_SIGN] = "publickey-sign",
    [AUTH_PUBLICKEY_SIGN + 1] = "other",
};
#define N_AUTH_METHODS (sizeof(auth_methods) / sizeof(auth_methods[0]))

static const char *const auth_results[] = {
    "ok", "auth_failed", "bad_key", "sftp_unavailable", "blocked", "io", "other",
};
#define N_AUTH_RESULTS (sizeof(auth_results) / sizeof(auth_results[0]))

/* SFTP outcomes: "ok" or the error codes of PROTOCOL §3 the verbs answer
 * with; the last is "other". */
static const char *const op_outcomes[] = {
    "ok", "not_found", "permission_denied", "exists", "no_space", "not_empty",
    "not_a_directory", "bad_request", "unsupported", "limit", "timeout", "io", "other",
};
#define N_OUTCOMES (sizeof(op_outcomes) / sizeof(op_outcomes[0]))

/* Verb names, in enum proto_method order, from the one verb table. */
#define VERB_NAME(wire, e, param, binary, handler) [e] = wire,
static const char *const verb_names[M_COUNT] = {
    PROTO_VERBS(VERB_NAME)
};
#undef VERB_NAME

/* ---- histograms ---------------------------------------------------------- */

#define HIST_MAX_BOUNDS 16

/* Upper bounds in seconds. An SFTP operation runs from a LAN stat
 * (sub-millisecond) to SFTP_OP_TIMEOUT_SECS; a connection from a LAN
 * handshake to SSH_CONNECT_TIMEOUT_SECS. */
static const double op_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                   0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double connect_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                        1, 2.5, 5, 10, 30};
#define N_OP_BOUNDS (sizeof(op_bounds) / sizeof(op_bounds[0]))
#define N_CONNECT_BOUNDS (sizeof(connect_bounds) / sizeof(connect_bounds[0]))
_Static_assert(N_OP_BOUNDS <= HIST_MAX_BOUNDS && N_CONNECT_BOUNDS <= HIST_MAX_BOUNDS,
               "histogram bounds");

/* Per-bucket counts, not cumulative (the exposition sums them), so an
 * observation is one add; the last bucket is +Inf. */
struct histogram {
    counter_t bucket[HIST_MAX_BOUNDS + 1];
    counter_t sum_us;
};

static void observe(struct histogram *h, const double *bounds, size_t n, int64_t usecs)
{
    size_t i = 0;

    if (usecs < 0)
        usecs = 0;
    while (i < n && (double)usecs > bounds[i] * 1e6)
        i++;
    add(&h->bucket[i], 1);
    add(&h->sum_us, (uint64_t)usecs);
}

/* ---- the state ------------------------------------------------------------ */

static struct {
    gauge_t sessions[N_PHASES];
    counter_t ended[N_CLOSE];
    counter_t upgrades_refused[N_UPGRADE];
    counter_t challenges;
    counter_t cookies;
    counter_t redeem_refused[MR_REDEEM_COUNT];
    counter_t cookie_refused[MR_COOKIE_COUNT];
    counter_t auth[N_AUTH_METHODS][N_AUTH_RESULTS];
    counter_t from_browser, to_browser;
    gauge_t unwritten;
    gauge_t budget_waiting;
    counter_t ops[M_COUNT][N_OUTCOMES];
    struct histogram op_time[M_COUNT];
    struct histogram connect_time;
} m;

/* Fixed after start (set before the service loop runs). */
static const char *libssh2_version = "unknown";
static const char *lws_version = "unknown";
static const _Atomic size_t *buffer_held;
static size_t buffer_budget;

void metrics_set_libssh2_version(const char *v)
{
    if (v)
        libssh2_version = v;
}

void metrics_set_buffer_budget(const _Atomic size_t *held, size_t budget)
{
    buffer_held = held;
    buffer_budget = budget;
}

void metrics_set_lws_version(const char *v)
{
    if (v)
        lws_version = v;
}

/* ---- updates ---------------------------------------------------------------- */

void metrics_session_phase(int from, int to)
{
    if (from >= 0 && from < (int)N_PHASES)
        gauge_add(&m.sessions[from], -1);
    if (to >= 0 && to < (int)N_PHASES)
        gauge_add(&m.sessions[to], 1);
}

static size_t label_index(const char *const *labels, size_t n, const char *label)
{
    for (size_t i = 0; i + 1 < n; i++)
        if (label && strcmp(labels[i], label) == 0)
            return i;
    return n - 1;  /* "other" */
}

const char *metrics_close_label(const char *reason)
{
    for (size_t i = 0; reason && i < sizeof(close_map) / sizeof(close_map[0]); i++)
        if (strcmp(close_map[i].reason, reason) == 0)
            return close_map[i].label;
    return "other";
}

void metrics_session_ended(const char *reason)
{
    add(&m.ended[label_index(close_labels, N_CLOSE, metrics_close_label(reason))], 1);
}

void metrics_upgrade_refused(int status)
{
    size_t i = 0;

    while (i + 1 < N_UPGRADE && upgrade_statuses[i] != status)
        i++;
    add(&m.upgrades_refused[i], 1);
}

void metrics_challenge_issued(void)
{
    add(&m.challenges, 1);
}

void metrics_cookie_issued(void)
{
    add(&m.cookies, 1);
}

void metrics_redeem_refused(enum metrics_redeem_refusal why)
{
    if ((unsigned)why < MR_REDEEM_COUNT)
        add(&m.redeem_refused[why], 1);
}

void metrics_cookie_refused(enum metrics_cookie_refusal why)
{
    if ((unsigned)why < MR_COOKIE_COUNT)
        add(&m.cookie_refused[why], 1);
}

void metrics_ssh_auth(int method, const char *result)
{
    size_t mi = method >= 0 && method < (int)N_AUTH_METHODS - 1 ? (size_t)method
                                                                 : N_AUTH_METHODS - 1;

    add(&m.auth[mi][label_index(auth_results, N_AUTH_RESULTS, result)], 1);
}

void metrics_bytes_from_browser(size_t n)
{
    add(&m.from_browser, n);
}

void metrics_bytes_to_browser(size_t n)
{
    add(&m.to_browser, n);
}

void metrics_unwritten_add(size_t n)
{
    gauge_add(&m.unwritten, (int64_t)n);
}

void metrics_unwritten_sub(size_t n)
{
    gauge_add(&m.unwritten, -(int64_t)n);
}

void metrics_budget_waiting(int delta)
{
    gauge_add(&m.budget_waiting, delta);
}

void metrics_sftp_op(int method, const char *code, int64_t usecs)
{
    if (method <= M_UNKNOWN || method >= M_COUNT)
        return;
    add(&m.ops[method][code ? label_index(op_outcomes, N_OUTCOMES, code) : 0], 1);
    observe(&m.op_time[method], op_bounds, N_OP_BOUNDS, usecs);
}

void metrics_ssh_connect(int64_t usecs)
{
    observe(&m.connect_time, connect_bounds, N_CONNECT_BOUNDS, usecs);
}

/* ---- the exposition ---------------------------------------------------------- */

struct out {
    char *buf;
    size_t len, used;
    int full;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct out *o, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (o->full)
        return;
    va_start(ap, fmt);
    n = vsnprintf(o->buf + o->used, o->len - o->used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= o->len - o->used)
        o->full = 1;
    else
        o->used += (size_t)n;
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A counter family with one `reason` label, one sample per label. */
static void by_reason(struct out *o, const char *name, const char *help,
                      const char *const *labels, counter_t *c, size_t n)
{
    family(o, name, "counter", help);
    for (size_t i = 0; i < n; i++)
        put(o, "%s{reason=\"%s\"} %llu\n", name, labels[i], (unsigned long long)get(&c[i]));
}

/* A label value as the format wants it: backslash, quote and newline
 * escaped. Versions come from libraries; nothing else here is free text. */
static void put_escaped(struct out *o, const char *v)
{
    for (; *v && !o->full; v++) {
        if (*v == '\\' || *v == '"')
            put(o, "\\%c", *v);
        else if (*v == '\n')
            put(o, "\\n");
        else
            put(o, "%c", *v);
    }
}

/* One histogram's series; `labels` is "" or `name="value",`. */
static void put_histogram(struct out *o, const char *name, const char *labels,
                          struct histogram *h, const double *bounds, size_t n)
{
    uint64_t cum = 0;

    for (size_t i = 0; i < n; i++) {
        cum += get(&h->bucket[i]);
        put(o, "%s_bucket{%sle=\"%g\"} %llu\n", name, labels, bounds[i],
            (unsigned long long)cum);
    }
    cum += get(&h->bucket[n]);
    put(o, "%s_bucket{%sle=\"+Inf\"} %llu\n", name, labels, (unsigned long long)cum);
    if (labels[0]) {
        /* "verb=\"stat\"," without its trailing comma. */
        int l = (int)strlen(labels) - 1;
        put(o, "%s_sum{%.*s} %.6f\n%s_count{%.*s} %llu\n", name, l, labels,
            (double)get(&h->sum_us) / 1e6, name, l, labels, (unsigned long long)cum);
    } else {
        put(o, "%s_sum %.6f\n%s_count %llu\n", name, (double)get(&h->sum_us) / 1e6, name,
            (unsigned long long)cum);
    }
}

/* Fields of /proc/self/stat after the command name, which may itself hold
 * spaces and parentheses: the last ')' ends it. */
struct proc_stat {
    unsigned long long starttime;   /* clock ticks after boot */
    unsigned long long vsize;       /* bytes */
    long long rss;                  /* pages */
};

static int read_proc_stat(struct proc_stat *ps)
{
    char line[1024], *p;
    FILE *f = fopen("/proc/self/stat", "r");
    size_t n;

    if (!f)
        return -1;
    n = fread(line, 1, sizeof(line) - 1, f);
    fclose(f);
    line[n] = '\0';
    p = strrchr(line, ')');
    /* After ") ": state (field 3) ... starttime (22), vsize (23), rss (24). */
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d "
                            "%*d %*d %*d %*d %llu %llu %lld",
                     &ps->starttime, &ps->vsize, &ps->rss) != 3)
        return -1;
    return 0;
}

static long open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    long n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;  /* the directory's own descriptor */
}

/* The start time as Unix seconds: the boot-relative start of /proc/self/stat
 * placed on the wall clock through CLOCK_BOOTTIME, which needs no /proc/stat
 * (hidden from the service by ProcSubset=pid). Computed once. */
static double start_time(const struct proc_stat *ps)
{
    static _Atomic int64_t cached_ms;
    int64_t ms = atomic_load_explicit(&cached_ms, memory_order_relaxed);
    struct timespec real, boot;
    long ticks = sysconf(_SC_CLK_TCK);

    if (ms == 0 && ticks > 0 && clock_gettime(CLOCK_REALTIME, &real) == 0 &&
        clock_gettime(CLOCK_BOOTTIME, &boot) == 0) {
        int64_t real_ms = (int64_t)real.tv_sec * 1000 + real.tv_nsec / 1000000;
        int64_t boot_ms = (int64_t)boot.tv_sec * 1000 + boot.tv_nsec / 1000000;
        ms = real_ms - boot_ms + (int64_t)(ps->starttime * 1000 / (unsigned long long)ticks);
        atomic_store_explicit(&cached_ms, ms, memory_order_relaxed);
    }
    return (double)ms / 1000.0;
}

static void put_process(struct out *o)
{
    struct rusage ru;
    struct rlimit rl;
    struct proc_stat ps;
    long page = sysconf(_SC_PAGESIZE), fds = open_fds();

    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        family(o, "process_cpu_seconds_total", "counter",
               "Total user and system CPU time spent in seconds.");
        put(o, "process_cpu_seconds_total %.6f\n",
            (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
            ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6);
    }
    if (read_proc_stat(&ps) == 0) {
        family(o, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        put(o, "process_resident_memory_bytes %lld\n", ps.rss * (long long)page);
        family(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
        put(o, "process_virtual_memory_bytes %llu\n", ps.vsize);
        family(o, "process_start_time_seconds", "gauge",
               "Start time of the process since unix epoch in seconds.");
        put(o, "process_start_time_seconds %.2f\n", start_time(&ps));
    }
    if (fds >= 0) {
        family(o, "process_open_fds", "gauge", "Number of open file descriptors.");
        put(o, "process_open_fds %ld\n", fds);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        family(o, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        put(o, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    }
}

#define P "wattcloud_relay_"

long metrics_format(char *buf, size_t len)
{
    struct out o = {buf, len, 0, 0};

    family(&o, P "build_info", "gauge",
           "Version of the relay and of the libraries it runs with (always 1).");
    put(&o, P "build_info{version=\"%s\",libssh2=\"", WC_VERSION);
    put_escaped(&o, libssh2_version);
    put(&o, "\",libwebsockets=\"");
    put_escaped(&o, lws_version);
    put(&o, "\",openssl=\"");
    put_escaped(&o, OpenSSL_version(OPENSSL_VERSION));
    put(&o, "\"} 1\n");

    family(&o, P "sessions", "gauge", "Live sessions by handshake phase.");
    for (size_t i = 0; i < N_PHASES; i++)
        put(&o, P "sessions{phase=\"%s\"} %lld\n", phase_labels[i],
            (long long)atomic_load_explicit(&m.sessions[i], memory_order_relaxed));

    family(&o, P "sessions_ended_total", "counter", "Sessions ended, by close reason.");
    for (size_t i = 0; i < N_CLOSE; i++)
        put(&o, P "sessions_ended_total{reason=\"%s\"} %llu\n", close_labels[i],
            (unsigned long long)get(&m.ended[i]));

    family(&o, P "upgrades_refused_total", "counter",
           "WebSocket upgrades refused, by HTTP status (\"other\": any status not listed).");
    for (size_t i = 0; i < N_UPGRADE; i++) {
        if (upgrade_statuses[i])
            put(&o, P "upgrades_refused_total{status=\"%d\"} %llu\n", upgrade_statuses[i],
                (unsigned long long)get(&m.upgrades_refused[i]));
        else
            put(&o, P "upgrades_refused_total{status=\"other\"} %llu\n",
                (unsigned long long)get(&m.upgrades_refused[i]));
    }

    family(&o, P "challenges_issued_total", "counter",
           "Proof-of-work challenges issued (GET /relay/auth/challenge answered 200).");
    put(&o, P "challenges_issued_total %llu\n", (unsigned long long)get(&m.challenges));
    family(&o, P "cookies_issued_total", "counter",
           "Relay cookies issued (POST /relay/auth answered 204).");
    put(&o, P "cookies_issued_total %llu\n", (unsigned long long)get(&m.cookies));
    by_reason(&o, P "cookie_requests_refused_total",
              "POST /relay/auth requests that issued no cookie, by reason.", redeem_labels,
              m.redeem_refused, MR_REDEEM_COUNT);
    by_reason(&o, P "cookies_refused_total", "Cookies refused by the upgrade gate, by reason.",
              cookie_labels, m.cookie_refused, MR_COOKIE_COUNT);

    family(&o, P "ssh_auth_total", "counter",
           "SSH authentications by method (password includes keyboard-interactive) "
           "and result.");
    for (size_t i = 0; i < N_AUTH_METHODS; i++)
        for (size_t j = 0; j < N_AUTH_RESULTS; j++)
            put(&o, P "ssh_auth_total{method=\"%s\",result=\"%s\"} %llu\n", auth_methods[i],
                auth_results[j], (unsigned long long)get(&m.auth[i][j]));

    family(&o, P "bytes_from_browser_total", "counter",
           "WebSocket payload bytes received from browsers.");
    put(&o, P "bytes_from_browser_total %llu\n", (unsigned long long)get(&m.from_browser));
    family(&o, P "bytes_to_browser_total", "counter",
           "WebSocket payload bytes sent to browsers.");
    put(&o, P "bytes_to_browser_total %llu\n", (unsigned long long)get(&m.to_browser));
    family(&o, P "unwritten_upload_bytes", "gauge",
           "Upload bytes accepted from browsers and not yet written to SFTP servers.");
    put(&o, P "unwritten_upload_bytes %lld\n",
        (long long)atomic_load_explicit(&m.unwritten, memory_order_relaxed));
    family(&o, P "buffered_bytes", "gauge",
           "Bytes reserved or buffered for browsers' messages and answers, all sessions "
           "(RELAY_MEMORY_BUDGET_MIB).");
    put(&o, P "buffered_bytes %zu\n", buffer_held ? atomic_load(buffer_held) : 0);
    family(&o, P "budget_waiting_messages", "gauge",
           "Binary messages waiting at their start for room in the memory budget, "
           "admitted first come first served.");
    put(&o, P "budget_waiting_messages %lld\n",
        (long long)atomic_load_explicit(&m.budget_waiting, memory_order_relaxed));
    family(&o, P "memory_budget_bytes", "gauge",
           "The budget of buffered bytes (RELAY_MEMORY_BUDGET_MIB, or derived).");
    put(&o, P "memory_budget_bytes %zu\n", buffer_budget);
    family(&o, P "ssh_memory_bytes", "gauge",
           "Memory libssh2 holds for all SSH connections (SSH_SESSION_MEMORY_MIB each at most).");
    put(&o, P "ssh_memory_bytes %zu\n", wipe_ssh_total());
    family(&o, P "ssh_memory_peak_bytes", "gauge",
           "The most libssh2 has held for all SSH connections together since start-up.");
    put(&o, P "ssh_memory_peak_bytes %zu\n", wipe_ssh_peak());
    family(&o, P "ssh_memory_budget_bytes", "gauge",
           "What libssh2 may hold for all SSH connections together (SSH_MEMORY_BUDGET_MIB).");
    put(&o, P "ssh_memory_budget_bytes %zu\n", wipe_ssh_budget());

    family(&o, P "sftp_ops_total", "counter", "SFTP operations by verb and outcome.");
    for (int v = M_UNKNOWN + 1; v < M_COUNT; v++)
        for (size_t j = 0; j < N_OUTCOMES; j++)
            put(&o, P "sftp_ops_total{verb=\"%s\",outcome=\"%s\"} %llu\n", verb_names[v],
                op_outcomes[j], (unsigned long long)get(&m.ops[v][j]));
    family(&o, P "sftp_op_duration_seconds", "histogram",
           "Time the relay spent on one SFTP operation, by verb.");
    for (int v = M_UNKNOWN + 1; v < M_COUNT; v++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "verb=\"%s\",", verb_names[v]);
        put_histogram(&o, P "sftp_op_duration_seconds", labels, &m.op_time[v], op_bounds,
                      N_OP_BOUNDS);
    }
    family(&o, P "ssh_connect_duration_seconds", "histogram",
           "TCP connect, SSH banner and key exchange of sessions that got a host key.");
    put_histogram(&o, P "ssh_connect_duration_seconds", "", &m.connect_time, connect_bounds,
                  N_CONNECT_BOUNDS);

    put_process(&o);
    return o.full ? -1 : (long)o.used;
}
