/* Settings: one table of name, default, parser and meaning. The same table
 * validates the environment at start, prints --help, and logs the
 * effective values with secrets masked. A bad value is never replaced by a
 * default: the daemon refuses to start, naming the variable. */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "log.h"
#include "netguard.h"
#include "wipe.h"

struct setting;
typedef int (*parse_fn)(struct config *, const struct setting *, const char *, char *, size_t);

struct setting {
    const char *name;
    const char *def;      /* NULL: unset by default */
    parse_fn parse;
    size_t off;           /* field in struct config */
    long min, max;        /* for numbers */
    int secret;           /* mask in logs */
    const char *help;
};

#define FIELD(f) offsetof(struct config, f)
#define AT(cfg, s, type) ((type *)((char *)(cfg) + (s)->off))

static int bad(char *err, size_t errlen, const struct setting *s, const char *why)
{
    snprintf(err, errlen, "invalid %s: %s", s->name, why);
    return -1;
}

static int parse_long(const char *v, long *out)
{
    char *end;

    if (!*v || isspace((unsigned char)*v))
        return -1;
    errno = 0;
    *out = strtol(v, &end, 10);
    return (errno || *end) ? -1 : 0;
}

/* A number within the setting's range, or an error naming the range. */
static int parse_range(const struct setting *s, const char *v, const char *what, long *x,
                       char *err, size_t n)
{
    char why[96];

    if (parse_long(v, x) == 0 && *x >= s->min && *x <= s->max)
        return 0;
    snprintf(why, sizeof(why), "expected %s from %ld to %ld", what, s->min, s->max);
    return bad(err, n, s, why);
}

static int p_int(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    long x;

    if (parse_range(s, v, "an integer", &x, err, n) < 0)
        return -1;
    *AT(c, s, int) = (int)x;
    return 0;
}

static int p_size(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    long x;

    if (parse_range(s, v, "a byte count", &x, err, n) < 0)
        return -1;
    *AT(c, s, size_t) = (size_t)x;
    return 0;
}

static int p_bool(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    if (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0)
        *AT(c, s, int) = 1;
    else if (strcmp(v, "0") == 0 || strcasecmp(v, "false") == 0 || strcasecmp(v, "no") == 0)
        *AT(c, s, int) = 0;
    else
        return bad(err, n, s, "expected 1 or 0");
    return 0;
}

static int p_str(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    char **field = AT(c, s, char *);

    if (!*v)
        return bad(err, n, s, "empty");
    free(*field);
    *field = strdup(v);
    return *field ? 0 : bad(err, n, s, "out of memory");
}

static void lowercase(char *p)
{
    for (; *p; p++)
        *p = (char)tolower((unsigned char)*p);
}

static int p_domain(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    for (const char *p = v; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != ':' &&
            *p != '[' && *p != ']')
            return bad(err, n, s, "expected a host name such as app.example.com");
    if (p_str(c, s, v, err, n) < 0)
        return -1;
    lowercase(c->byo_domain);
    return 0;
}

/* "ip:port", "[v6]:port" */
static int p_bind(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    const char *colon = strrchr(v, ':');
    unsigned char tmp[16];
    size_t hlen;
    long port;

    if (!colon || parse_long(colon + 1, &port) < 0 || port < 1 || port > 65535)
        return bad(err, n, s, "expected ip:port, e.g. 127.0.0.1:8443 or [::]:8443");
    hlen = (size_t)(colon - v);
    if (hlen >= 2 && v[0] == '[' && v[hlen - 1] == ']') {
        v++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= sizeof(c->bind_host))
        return bad(err, n, s, "expected ip:port");
    memcpy(c->bind_host, v, hlen);
    c->bind_host[hlen] = '\0';
    if (inet_pton(AF_INET, c->bind_host, tmp) != 1 && inet_pton(AF_INET6, c->bind_host, tmp) != 1)
        return bad(err, n, s, "the host part must be an IP address");
    c->bind_port = (int)port;
    return 0;
}

/* Split a comma-separated list, calling `fn` for each trimmed, non-empty
 * item. Returns -1 at the first item `fn` refuses. */
static int each_item(const char *v, int (*fn)(struct config *, const char *, void *),
                     struct config *c, void *arg)
{
    char *copy = strdup(v), *save = NULL, *tok;
    int rc = copy ? 0 : -1;

    for (tok = copy ? strtok_r(copy, ",", &save) : NULL; tok && rc == 0;
         tok = strtok_r(NULL, ",", &save)) {
        char *end;
        while (isspace((unsigned char)*tok))
            tok++;
        end = tok + strlen(tok);
        while (end > tok && isspace((unsigned char)end[-1]))
            *--end = '\0';
        if (*tok)
            rc = fn(c, tok, arg);
    }
    free(copy);
    return rc;
}

static int add_port(struct config *c, const char *item, void *arg)
{
    long port;

    (void)arg;
    if (parse_long(item, &port) < 0 || port < 1 || port > 65535 ||
        c->n_allowed_ports >= WC_MAX_PORTS)
        return -1;
    c->allowed_ports[c->n_allowed_ports++] = (int)port;
    return 0;
}

static int p_ports(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    c->n_allowed_ports = 0;
    if (each_item(v, add_port, c, NULL) < 0 || c->n_allowed_ports == 0)
        return bad(err, n, s, "expected a comma-separated list of ports 1-65535");
    return 0;
}

static int add_host(struct config *c, const char *item, void *arg)
{
    char **grown, *h;
    const char *p = item;

    (void)arg;
    if (strncmp(p, "*.", 2) == 0)
        p += 2;
    for (; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-')
            return -1;
    grown = realloc(c->host_allowlist, sizeof(char *) * (size_t)(c->n_host_allowlist + 1));
    if (!grown)
        return -1;
    c->host_allowlist = grown;
    h = strdup(item);
    if (!h)
        return -1;
    lowercase(h);
    c->host_allowlist[c->n_host_allowlist++] = h;
    return 0;
}

static int p_hosts(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    if (each_item(v, add_host, c, NULL) < 0)
        return bad(err, n, s, "expected host names or *.domain entries, comma-separated");
    return 0;
}

struct cidr_list {
    struct cidr **items;
    int *count;
};

static int add_cidr(struct config *c, const char *item, void *arg)
{
    struct cidr_list *l = arg;
    struct cidr *grown = realloc(*l->items, sizeof(struct cidr) * (size_t)(*l->count + 1));

    (void)c;
    if (!grown)
        return -1;
    *l->items = grown;
    if (netguard_parse_cidr(item, &grown[*l->count]) < 0)
        return -1;
    (*l->count)++;
    return 0;
}

static int p_cidrs(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    struct cidr_list l;

    if (s->off == FIELD(allow_private))
        l = (struct cidr_list){&c->allow_private, &c->n_allow_private};
    else
        l = (struct cidr_list){&c->trusted_proxies, &c->n_trusted_proxies};
    if (each_item(v, add_cidr, c, &l) < 0)
        return bad(err, n, s, "expected IP addresses or CIDR ranges, comma-separated");
    return 0;
}

static int p_level(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};

    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, names[i]) == 0) {
            c->log_level = (enum log_level)i;
            return 0;
        }
    }
    return bad(err, n, s, "expected error, warn, info or debug");
}

/* Base64 when the value decodes cleanly, else the raw bytes. */
static int p_key(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    size_t len = strlen(v), i;
    unsigned char dec[sizeof(c->signing_key) + 4];
    int declen = -1;

    if (len % 4 == 0 && len / 4 * 3 <= sizeof(dec) && strspn(v,
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") == len) {
        declen = EVP_DecodeBlock(dec, (const unsigned char *)v, (int)len);
        /* EVP_DecodeBlock counts padding as zero bytes. */
        for (i = len; declen > 0 && i > 0 && v[i - 1] == '='; i--)
            declen--;
    }
    /* Base64 of 257 or 258 bytes decodes past the 256-byte key buffer. */
    if (declen >= 32 && (size_t)declen <= sizeof(c->signing_key)) {
        memcpy(c->signing_key, dec, (size_t)declen);
        c->signing_key_len = (size_t)declen;
    } else if (len >= 32 && len <= sizeof(c->signing_key)) {
        memcpy(c->signing_key, v, len);
        c->signing_key_len = len;
    } else {
        wipe_mem(dec, sizeof(dec));
        return bad(err, n, s, "must be 32 to 256 bytes, raw or base64-encoded");
    }
    wipe_mem(dec, sizeof(dec));
    for (i = 1; i < c->signing_key_len && c->signing_key[i] == c->signing_key[0]; i++)
        ;
    if (i == c->signing_key_len)
        return bad(err, n, s, "all bytes are equal; generate one with: openssl rand -base64 32");
    return 0;
}

#define MIB (1024L * 1024)

static const struct setting settings[] = {
    {"BIND_ADDR", "127.0.0.1:8443", p_bind, 0, 0, 0, 0,
     "listen address ip:port ([::]:8443 for IPv6)"},
    {"TLS_CERT", NULL, p_str, FIELD(tls_cert), 0, 0, 0,
     "PEM certificate chain; with TLS_KEY the relay terminates TLS itself"},
    {"TLS_KEY", NULL, p_str, FIELD(tls_key), 0, 0, 0, "PEM private key for TLS_CERT"},
    {"ALLOW_PLAINTEXT", "0", p_bool, FIELD(allow_plaintext), 0, 0, 0,
     "1 allows plain HTTP on a non-loopback address (only behind a TLS proxy)"},
    {"BYO_DOMAIN", "localhost", p_domain, FIELD(byo_domain), 0, 0, 0,
     "public host name the app is served from (WebSocket Origin check)"},
    {"SPA_DIR", NULL, p_str, FIELD(spa_dir), 0, 0, 0,
     "directory of static files to serve (index.html fallback)"},
    {"RELAY_SIGNING_KEY", NULL, p_key, 0, 0, 0, 1,
     "HS256 cookie key, base64 or raw, >= 32 bytes; random per process when unset"},
    {"RELAY_COOKIE_TTL_SECS", "600", p_int, FIELD(cookie_ttl_secs), 10, 86400, 0,
     "relay cookie lifetime in seconds"},
    {"POW_DIFFICULTY_BITS", "18", p_int, FIELD(pow_difficulty_bits), 12, 32, 0,
     "proof-of-work difficulty in leading zero bits (>= 12)"},
    {"AUTH_CHALLENGE_PER_MIN", "10", p_int, FIELD(auth_challenge_per_min), 1, 1000000, 0,
     "challenges per client IP per minute"},
    {"AUTH_MAX_BODY_BYTES", "16384", p_size, FIELD(auth_max_body_bytes), 64, 1 * MIB, 0,
     "largest POST /relay/auth body"},
    {"RELAY_COOKIE_STORE_SIZE", "65536", p_int, FIELD(cookie_store_size), 1, 1048576, 0,
     "cookies issued and not yet expired, at most (POST /relay/auth answers 503 when full)"},
    {"SFTP_ALLOWED_PORTS", "22,2022,2222", p_ports, 0, 0, 0, 0,
     "target SSH ports, comma-separated"},
    {"SFTP_HOST_ALLOWLIST", "", p_hosts, 0, 0, 0, 0,
     "allowed target hosts (exact or *.domain); empty allows all"},
    {"SFTP_ALLOW_PRIVATE_CIDRS", "", p_cidrs, FIELD(allow_private), 0, 0, 0,
     "ranges exempt from the private-address guard, e.g. 192.168.1.0/24,100.64.0.0/10"},
    {"SFTP_MAX_CONCURRENT_PER_IP", "3", p_int, FIELD(max_concurrent_per_ip), 1, 1000, 0,
     "live SFTP sessions per client IP (IPv6 per /64)"},
    {"TRUSTED_PROXY_IPS", "", p_cidrs, FIELD(trusted_proxies), 0, 0, 0,
     "reverse proxies whose X-Forwarded-For is believed (IPs or CIDRs)"},
    {"LOG_LEVEL", "info", p_level, 0, 0, 0, 0, "error, warn, info or debug"},
    {"MAX_SESSIONS", "512", p_int, FIELD(max_sessions), 1, 100000, 0,
     "live SFTP sessions in the whole process"},
    {"SFTP_UPLOAD_BUFFER_BYTES", "209715200", p_size, FIELD(upload_buffer_bytes), 1024,
     4096 * MIB, 0, "upload bytes accepted but not yet written, per session (200 MiB)"},
    {"SFTP_IDLE_TIMEOUT_SECS", "1800", p_int, FIELD(idle_timeout_secs), 1, 86400, 0,
     "close a session after this long without a frame from the browser"},
    {"HOST_KEY_TIMEOUT_SECS", "30", p_int, FIELD(host_key_timeout_secs), 1, 600, 0,
     "wait for host_key_accepted, then for the auth request"},
    {"WS_PING_INTERVAL_SECS", "10", p_int, FIELD(ws_ping_interval_secs), 1, 600, 0,
     "WebSocket ping interval"},
    {"SSH_CONNECT_TIMEOUT_SECS", "10", p_int, FIELD(connect_timeout_secs), 1, 120, 0,
     "TCP connect and SSH key exchange timeout"},
    {"SSH_BANNER_TIMEOUT_SECS", "3", p_int, FIELD(banner_timeout_secs), 1, 60, 0,
     "wait for the server's SSH banner"},
    {"SSH_KEEPALIVE_SECS", "15", p_int, FIELD(keepalive_secs), 1, 3600, 0,
     "SSH keepalive interval"},
    {"SSH_KEEPALIVE_COUNT", "4", p_int, FIELD(keepalive_count), 1, 100, 0,
     "unanswered keepalives before the SSH connection is declared dead"},
    {"SFTP_OP_TIMEOUT_SECS", "60", p_int, FIELD(op_timeout_secs), 1, 3600, 0,
     "longest time one SFTP operation may take"},
    {"RELAY_MEMORY_BUDGET_MIB", "0", p_int, FIELD(memory_budget_mib), 0, 1048576, 0,
     "bytes held for browsers, all sessions together, before reading pauses (MiB); "
     "0 = a quarter of RAM or of the cgroup's MemoryMax, at least 64"},
    {"SHUTDOWN_GRACE_SECS", "30", p_int, FIELD(shutdown_grace_secs), 0, 3600, 0,
     "on SIGTERM, time live sessions get to finish their current operation"},
    {"SFTP_LIST_MAX_ENTRIES", "10000000", p_int, FIELD(list_max_entries), 1, 1000000000,
     0, "entries of one `list` before it fails as `directory too large`"},
};

#define N_SETTINGS (sizeof(settings) / sizeof(settings[0]))

static int loopback_bind(const struct config *c)
{
    return strncmp(c->bind_host, "127.", 4) == 0 || strcmp(c->bind_host, "::1") == 0;
}

static int check_combination(struct config *c, char *err, size_t n)
{
    if (!c->tls_cert != !c->tls_key) {
        snprintf(err, n, "invalid TLS_CERT/TLS_KEY: set both or neither");
        return -1;
    }
    if (!c->tls_cert && !loopback_bind(c) && !c->allow_plaintext) {
        snprintf(err, n, "invalid BIND_ADDR: %s is not a loopback address and TLS is off; "
                 "set TLS_CERT/TLS_KEY, or ALLOW_PLAINTEXT=1 behind a TLS reverse proxy",
                 c->bind_host);
        return -1;
    }
    if (c->signing_key_len == 0) {
        if (RAND_bytes(c->signing_key, 32) != 1) {
            snprintf(err, n, "cannot generate a random RELAY_SIGNING_KEY");
            return -1;
        }
        c->signing_key_len = 32;
        c->signing_key_random = 1;
    }
    return 0;
}

int cfg_load(struct config *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const struct setting *s = &settings[i];
        const char *v = getenv(s->name);

        /* An empty value (KEY= in an env file) means unset: the default
         * applies, never a zeroed field (POW_DIFFICULTY_BITS= gave 0 bits). */
        if (!v || !*v)
            v = s->def;
        if (!v || (!*v && s->parse != p_hosts && s->parse != p_cidrs))
            continue;
        if (s->parse(c, s, v, err, errlen) < 0)
            return -1;
    }
    return check_combination(c, err, errlen);
}

/* systemd EnvironmentFile syntax, the common subset: KEY=VALUE lines,
 * comments, optional surrounding quotes. */
int cfg_load_env_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int lineno = 0, rc = 0;

    if (!f) {
        snprintf(err, errlen, "cannot read env file %s: %s", path, strerror(errno));
        return -1;
    }
    while (rc == 0 && fgets(line, sizeof(line), f)) {
        char *p = line, *eq, *val, *end;

        lineno++;
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '#' || *p == ';' || *p == '\0')
            continue;
        eq = strchr(p, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%d: expected KEY=VALUE", path, lineno);
            rc = -1;
            break;
        }
        *eq = '\0';
        for (end = eq; end > p && isspace((unsigned char)end[-1]);)
            *--end = '\0';
        val = eq + 1;
        end = val + strlen(val);
        while (end > val && isspace((unsigned char)end[-1]))
            *--end = '\0';
        while (isspace((unsigned char)*val))
            val++;
        if (end - val >= 2 && (*val == '"' || *val == '\'') && end[-1] == *val) {
            end[-1] = '\0';
            val++;
        }
        setenv(p, val, 0);
    }
    wipe_mem(line, sizeof(line));
    fclose(f);
    return rc;
}

void cfg_print_help(void)
{
    printf("Settings (environment variables, or KEY=VALUE lines in --env-file):\n");
    for (size_t i = 0; i < N_SETTINGS; i++)
        printf("  %-28s %s\n  %-28s default: %s\n", settings[i].name, settings[i].help, "",
               settings[i].def ? (*settings[i].def ? settings[i].def : "(empty)") : "(unset)");
}

void cfg_log(const struct config *c)
{
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const struct setting *s = &settings[i];
        const char *v = getenv(s->name);

        if (s->secret)
            log_info("setting %s=%s", s->name,
                     c->signing_key_random ? "(random per process)" : "(set, hidden)");
        else
            log_info("setting %s=%s", s->name, v && *v ? v : (s->def ? s->def : "(unset)"));
    }
}

void cfg_free(struct config *c)
{
    free(c->tls_cert);
    free(c->tls_key);
    free(c->byo_domain);
    free(c->spa_dir);
    for (int i = 0; i < c->n_host_allowlist; i++)
        free(c->host_allowlist[i]);
    free(c->host_allowlist);
    free(c->allow_private);
    free(c->trusted_proxies);
    wipe_mem(c->signing_key, sizeof(c->signing_key));
    memset(c, 0, sizeof(*c));
}
