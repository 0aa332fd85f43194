/* Settings of the daemon: read once at start from the environment (and
 * optionally an env file), validated, then read-only for the process life.
 * Every limit of PROTOCOL.md that an operator may tune lives here. */
#ifndef WC_CONFIG_H
#define WC_CONFIG_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "log.h"

/* Most entries of SFTP_ALLOWED_PORTS. */
#define WC_MAX_PORTS             64

/* An address range, parsed and defined by netguard (netguard.h); the
 * settings only hold lists of them. */
struct cidr;

/* Where the shared state lives (STATE_URL). */
enum state_kind {
    STATE_EMBEDDED = 0,            /* unset: in this process (one relay) */
    STATE_REDIS_TCP,               /* redis://[user:password@]host:port/db */
    STATE_REDIS_UNIX,              /* unix:///path/to/redis.sock */
};

/* STATE_URL as parsed. The password (from the URL or STATE_PASSWORD_FILE)
 * is a secret: never logged, wiped by cfg_free(). */
struct state_url {
    enum state_kind kind;
    char host[256];                /* TCP: name or IP literal, no brackets */
    int port;                      /* TCP: 1-65535, default 6379 */
    int db;                        /* SELECT db, default 0 */
    char path[108];                /* UNIX: the socket path */
    char user[128];                /* ACL user, "" for none */
    char password[256];            /* "" for none */
};

struct config {
    /* Listener. */
    char bind_host[64];            /* BIND_ADDR host part, no brackets */
    int bind_port;                 /* BIND_ADDR port */
    char *tls_cert;                /* TLS_CERT, NULL when unset */
    char *tls_key;                 /* TLS_KEY, NULL when unset */
    int allow_plaintext;           /* ALLOW_PLAINTEXT */
    char *byo_domain;              /* BYO_DOMAIN, lowercased */
    char *spa_dir;                 /* SPA_DIR, NULL when unset */

    /* Relay cookie (PROTOCOL §1.1). */
    uint8_t signing_key[256];      /* RELAY_SIGNING_KEY, decoded */
    size_t signing_key_len;
    int signing_key_random;        /* 1 when generated at start */
    int cookie_ttl_secs;           /* RELAY_COOKIE_TTL_SECS */
    int pow_difficulty_bits;       /* POW_DIFFICULTY_BITS, >= 12 */
    int auth_challenge_per_min;    /* AUTH_CHALLENGE_PER_MIN */
    size_t auth_max_body_bytes;    /* AUTH_MAX_BODY_BYTES */
    int cookie_store_size;         /* RELAY_COOKIE_STORE_SIZE (AUTH_JTI_CAPACITY) */

    /* Targets (PROTOCOL §1.2). */
    int allowed_ports[WC_MAX_PORTS];   /* SFTP_ALLOWED_PORTS */
    int n_allowed_ports;
    char **host_allowlist;         /* SFTP_HOST_ALLOWLIST, lowercased */
    int n_host_allowlist;
    struct cidr *allow_private;    /* SFTP_ALLOW_PRIVATE_CIDRS */
    int n_allow_private;
    struct cidr *trusted_proxies;  /* TRUSTED_PROXY_IPS (single IPs or CIDRs) */
    int n_trusted_proxies;
    struct cidr *metrics_allow;    /* METRICS_ALLOW: clients that may read /metrics */
    int n_metrics_allow;

    /* Sessions and timeouts (PROTOCOL §3, §4). */
    int max_concurrent_per_ip;     /* SFTP_MAX_CONCURRENT_PER_IP */
    int max_sessions;              /* MAX_SESSIONS, whole process */
    size_t upload_buffer_bytes;    /* SFTP_UPLOAD_BUFFER_BYTES (200 MiB) */
    int idle_timeout_secs;         /* SFTP_IDLE_TIMEOUT_SECS (1800) */
    int host_key_timeout_secs;     /* HOST_KEY_TIMEOUT_SECS (30) */
    int sign_timeout_secs;         /* SIGN_TIMEOUT_SECS (30): browser's sign answer */
    int ws_ping_interval_secs;     /* WS_PING_INTERVAL_SECS (10) */
    int connect_timeout_secs;      /* SSH_CONNECT_TIMEOUT_SECS (10) */
    int banner_timeout_secs;       /* SSH_BANNER_TIMEOUT_SECS (3) */
    int keepalive_secs;            /* SSH_KEEPALIVE_SECS (15) */
    int keepalive_count;           /* SSH_KEEPALIVE_COUNT (4) */
    int op_timeout_secs;           /* SFTP_OP_TIMEOUT_SECS (60) */
    int list_max_entries;          /* SFTP_LIST_MAX_ENTRIES (10,000,000) */
    int shutdown_grace_secs;       /* SHUTDOWN_GRACE_SECS (30) */
    int memory_budget_mib;         /* RELAY_MEMORY_BUDGET_MIB, 0 = derived */
    int ssh_session_memory_mib;    /* SSH_SESSION_MEMORY_MIB (64) */
    int ssh_memory_budget_mib;     /* SSH_MEMORY_BUDGET_MIB, 0 = RELAY_MEMORY_BUDGET_MIB's */

    enum log_level log_level;      /* LOG_LEVEL */

    /* Shared state of several relays (README "Several relays"). */
    struct state_url state;        /* STATE_URL */
    char *state_password_file;     /* STATE_PASSWORD_FILE, NULL when unset */
    char *key_prefix;              /* KEY_PREFIX, "wattcloud:" */
    int state_lease_secs;          /* STATE_LEASE_SECS (30) */
};

/* Fill `cfg` from the environment. On error writes a message naming the
 * variable into `err` and returns -1; the caller exits with status 2.
 * Strings in `cfg` are owned by it: release with cfg_free(). */
int cfg_load(struct config *cfg, char *err, size_t errlen);

/* Read KEY=VALUE lines from `path` into the environment (existing variables
 * win, as with systemd's EnvironmentFile plus an explicit override).
 * Returns 0 or -1 with `err` filled. */
int cfg_load_env_file(const char *path, char *err, size_t errlen);

/* Print the settings table (name, default, meaning) for --help. */
void cfg_print_help(void);

/* Print the same table as the body of the man page's SETTINGS section
 * (roff, one .TP entry per setting), so the two cannot differ. */
void cfg_print_man(FILE *out);

/* Write the effective value of setting `name` into `out`: the value as
 * parsed (a lowercased domain, "[::1]:8443", ranges as network/prefix),
 * not the environment's text; secrets masked, "(unset)" or "(empty)" when
 * there is none, cut short with "..." when longer than `outlen`. Returns
 * 0, or -1 when no setting has that name. */
int cfg_effective(const struct config *cfg, const char *name, char *out, size_t outlen);

/* Log the effective settings (cfg_effective), one line each. */
void cfg_log(const struct config *cfg);

void cfg_free(struct config *cfg);

#endif
