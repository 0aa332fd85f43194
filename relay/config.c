/* Settings: one table of name, default, parser and meaning. The same table
 * validates the environment at start, prints --help, and logs the
 * effective values with secrets masked. A bad value is never replaced by a
 * default: the daemon refuses to start, naming the variable. */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
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
typedef void (*show_fn)(const struct config *, const struct setting *, char *, size_t);

/* One kind of value: how it is read from the environment into the row's
 * field, and written back, as parsed, for the start-up log. */
struct kind {
    parse_fn parse;
    show_fn show;
    int empty_ok;         /* "" is a value (an empty list), not "unset" */
};

/* Every parser reaches its field through the row: `off` (and `size` for a
 * fixed buffer or array), `off2` for the field that completes it (a list's
 * count, BIND_ADDR's port, the signing key's length). */
struct setting {
    const char *name;
    const char *def;      /* NULL: unset by default */
    const struct kind *kind;
    size_t off;
    size_t size;
    size_t off2;
    long min, max;        /* for numbers */
    int secret;           /* mask in logs */
    const char *help;
};

#define OFF(f) offsetof(struct config, f)
#define SIZE(f) sizeof(((struct config *)0)->f)
#define AT(cfg, s, type) ((type *)((char *)(cfg) + (s)->off))
#define AT2(cfg, s, type) ((type *)((char *)(cfg) + (s)->off2))
#define CAT(cfg, s, type) ((type const *)((const char *)(cfg) + (s)->off))
#define CAT2(cfg, s, type) ((type const *)((const char *)(cfg) + (s)->off2))

static const char *const level_names[] = {"error", "warn", "info", "debug"};

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

/* Appends to a log value; a value too long for the line ends in "...". */
static void show_add(char *out, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void show_add(char *out, size_t n, const char *fmt, ...)
{
    size_t used = strlen(out);
    va_list ap;
    int w;

    if (used + 1 >= n)
        return;
    va_start(ap, fmt);
    w = vsnprintf(out + used, n - used, fmt, ap);
    va_end(ap);
    if (w >= 0 && (size_t)w >= n - used && n >= 4)
        memcpy(out + n - 4, "...", 4);
}

static int p_int(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    long x;

    if (parse_range(s, v, "an integer", &x, err, n) < 0)
        return -1;
    *AT(c, s, int) = (int)x;
    return 0;
}

static void s_int(const struct config *c, const struct setting *s, char *out, size_t n)
{
    snprintf(out, n, "%d", *CAT(c, s, int));
}

static int p_size(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    long x;

    if (parse_range(s, v, "a byte count", &x, err, n) < 0)
        return -1;
    *AT(c, s, size_t) = (size_t)x;
    return 0;
}

static void s_size(const struct config *c, const struct setting *s, char *out, size_t n)
{
    snprintf(out, n, "%zu", *CAT(c, s, size_t));
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

static void s_bool(const struct config *c, const struct setting *s, char *out, size_t n)
{
    snprintf(out, n, "%d", *CAT(c, s, int) ? 1 : 0);
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

static void s_str(const struct config *c, const struct setting *s, char *out, size_t n)
{
    const char *v = *CAT(c, s, char *);

    snprintf(out, n, "%s", v ? v : "(unset)");
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
    lowercase(*AT(c, s, char *));
    return 0;
}

/* "ip:port", "[v6]:port": the host into the buffer at `off`, the port
 * into the int at `off2`. */
static int p_bind(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    const char *colon = strrchr(v, ':');
    char *host = AT(c, s, char);
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
    if (hlen == 0 || hlen >= s->size)
        return bad(err, n, s, "expected ip:port");
    memcpy(host, v, hlen);
    host[hlen] = '\0';
    if (inet_pton(AF_INET, host, tmp) != 1 && inet_pton(AF_INET6, host, tmp) != 1)
        return bad(err, n, s, "the host part must be an IP address");
    *AT2(c, s, int) = (int)port;
    return 0;
}

static void s_bind(const struct config *c, const struct setting *s, char *out, size_t n)
{
    const char *host = CAT(c, s, char);

    snprintf(out, n, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, *CAT2(c, s, int));
}

/* Split a comma-separated list, calling `fn` for each trimmed, non-empty
 * item. Returns -1 at the first item `fn` refuses. */
static int each_item(const char *v, int (*fn)(const char *, void *), void *arg)
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
            rc = fn(tok, arg);
    }
    free(copy);
    return rc;
}

/* A list being filled: its items at `off`, its count at `off2`. */
struct list_at {
    struct config *c;
    const struct setting *s;
};

static int add_port(const char *item, void *arg)
{
    const struct list_at *l = arg;
    int *ports = AT(l->c, l->s, int), *count = AT2(l->c, l->s, int);
    long port;

    if (parse_long(item, &port) < 0 || port < 1 || port > 65535 ||
        (size_t)*count >= l->s->size / sizeof(int))
        return -1;
    ports[(*count)++] = (int)port;
    return 0;
}

static int p_ports(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    struct list_at l = {c, s};

    *AT2(c, s, int) = 0;
    if (each_item(v, add_port, &l) < 0 || *AT2(c, s, int) == 0)
        return bad(err, n, s, "expected a comma-separated list of ports 1-65535");
    return 0;
}

static void s_ports(const struct config *c, const struct setting *s, char *out, size_t n)
{
    const int *ports = CAT(c, s, int);

    out[0] = '\0';
    for (int i = 0; i < *CAT2(c, s, int); i++)
        show_add(out, n, "%s%d", i ? "," : "", ports[i]);
}

static int add_host(const char *item, void *arg)
{
    const struct list_at *l = arg;
    char ***hosts = AT(l->c, l->s, char **);
    int *count = AT2(l->c, l->s, int);
    char **grown, *h;
    const char *p = item;

    if (strncmp(p, "*.", 2) == 0)
        p += 2;
    for (; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-')
            return -1;
    grown = realloc(*hosts, sizeof(char *) * (size_t)(*count + 1));
    if (!grown)
        return -1;
    *hosts = grown;
    h = strdup(item);
    if (!h)
        return -1;
    lowercase(h);
    grown[(*count)++] = h;
    return 0;
}

static int p_hosts(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    struct list_at l = {c, s};

    if (each_item(v, add_host, &l) < 0)
        return bad(err, n, s, "expected host names or *.domain entries, comma-separated");
    return 0;
}

static void s_hosts(const struct config *c, const struct setting *s, char *out, size_t n)
{
    char *const *hosts = *CAT(c, s, char **);

    out[0] = '\0';
    for (int i = 0; i < *CAT2(c, s, int); i++)
        show_add(out, n, "%s%s", i ? "," : "", hosts[i]);
}

static int add_cidr(const char *item, void *arg)
{
    const struct list_at *l = arg;
    struct cidr **items = AT(l->c, l->s, struct cidr *);
    int *count = AT2(l->c, l->s, int);
    struct cidr *grown = realloc(*items, sizeof(struct cidr) * (size_t)(*count + 1));

    if (!grown)
        return -1;
    *items = grown;
    if (netguard_parse_cidr(item, &grown[*count]) < 0)
        return -1;
    (*count)++;
    return 0;
}

static int p_cidrs(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    struct list_at l = {c, s};

    if (each_item(v, add_cidr, &l) < 0)
        return bad(err, n, s, "expected IP addresses or CIDR ranges, comma-separated");
    return 0;
}

/* Each range as parsed: network address and prefix length. */
static void s_cidrs(const struct config *c, const struct setting *s, char *out, size_t n)
{
    const struct cidr *items = *CAT(c, s, struct cidr *);
    char addr[INET6_ADDRSTRLEN];

    out[0] = '\0';
    for (int i = 0; i < *CAT2(c, s, int); i++) {
        if (!inet_ntop(items[i].family, items[i].addr, addr, sizeof(addr)))
            snprintf(addr, sizeof(addr), "?");
        show_add(out, n, "%s%s/%d", i ? "," : "", addr, items[i].prefix);
    }
}

static int p_level(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, level_names[i]) == 0) {
            *AT(c, s, enum log_level) = (enum log_level)i;
            return 0;
        }
    }
    return bad(err, n, s, "expected error, warn, info or debug");
}

static void s_level(const struct config *c, const struct setting *s, char *out, size_t n)
{
    unsigned level = (unsigned)*CAT(c, s, enum log_level);

    snprintf(out, n, "%s", level < 4 ? level_names[level] : "?");
}

/* Base64 when the value decodes cleanly, else the raw bytes: into the
 * buffer at `off` (`size` bytes), its length into the size_t at `off2`. */
static int p_key(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    uint8_t *key = AT(c, s, uint8_t);
    size_t *key_len = AT2(c, s, size_t);
    size_t len = strlen(v), i;
    unsigned char dec[SIZE(signing_key) + 4];
    int declen = -1;

    if (len % 4 == 0 && len / 4 * 3 <= sizeof(dec) && strspn(v,
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") == len) {
        declen = EVP_DecodeBlock(dec, (const unsigned char *)v, (int)len);
        /* EVP_DecodeBlock counts padding as zero bytes. */
        for (i = len; declen > 0 && i > 0 && v[i - 1] == '='; i--)
            declen--;
    }
    /* Base64 of 257 or 258 bytes decodes past the 256-byte key buffer. */
    if (declen >= 32 && (size_t)declen <= s->size) {
        memcpy(key, dec, (size_t)declen);
        *key_len = (size_t)declen;
    } else if (len >= 32 && len <= s->size) {
        memcpy(key, v, len);
        *key_len = len;
    } else {
        wipe_mem(dec, sizeof(dec));
        return bad(err, n, s, "must be 32 to 256 bytes, raw or base64-encoded");
    }
    wipe_mem(dec, sizeof(dec));
    for (i = 1; i < *key_len && key[i] == key[0]; i++)
        ;
    if (i == *key_len)
        return bad(err, n, s, "all bytes are equal; generate one with: openssl rand -base64 32");
    return 0;
}

/* The key itself is never shown: only whether it was given. */
static void s_key(const struct config *c, const struct setting *s, char *out, size_t n)
{
    (void)s;
    snprintf(out, n, "%s", c->signing_key_random ? "(random per process)" : "(set, hidden)");
}


/* Percent-decode [v, v+n) into `out` (`outlen` bytes with the NUL): the
 * user and password of a URL may hold any byte written as %XX. 0 or -1. */
static int hexval(char c)
{
    return isdigit((unsigned char)c) ? c - '0' : tolower((unsigned char)c) - 'a' + 10;
}

static int url_decode(const char *v, size_t n, char *out, size_t outlen)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)v[i];
        if (c == '%') {
            if (i + 2 >= n || !isxdigit((unsigned char)v[i + 1]) ||
                !isxdigit((unsigned char)v[i + 2]))
                return -1;
            c = hexval(v[i + 1]) << 4 | hexval(v[i + 2]);
            i += 2;
        }
        if (c == 0 || o + 1 >= outlen)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

#define STATE_URL_FORMS "expected redis://[user:password@]host:port/db or unix:///path/to/redis.sock"

/* STATE_URL: redis://[user[:password]@]host[:port][/db] (host a name, an
 * IPv4 address or [IPv6]) or unix:///absolute/path. */
static int p_state(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    struct state_url *u = AT(c, s, struct state_url);
    const char *p, *at, *hs, *he, *slash;
    long x;

    memset(u, 0, sizeof(*u));
    if (strncmp(v, "unix://", 7) == 0) {
        p = v + 7;
        if (p[0] != '/' || strlen(p) >= sizeof(u->path) || strpbrk(p, "?#"))
            return bad(err, n, s, STATE_URL_FORMS " (an absolute socket path, under 108 bytes)");
        memcpy(u->path, p, strlen(p) + 1);
        u->kind = STATE_REDIS_UNIX;
        return 0;
    }
    if (strncmp(v, "redis://", 8) != 0)
        return bad(err, n, s, STATE_URL_FORMS);
    p = v + 8;
    slash = strchr(p, '/');
    at = memrchr(p, '@', slash ? (size_t)(slash - p) : strlen(p));
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *ue = colon ? colon : at;
        if (url_decode(p, (size_t)(ue - p), u->user, sizeof(u->user)) < 0 ||
            (colon && url_decode(colon + 1, (size_t)(at - colon - 1), u->password,
                                 sizeof(u->password)) < 0)) {
            wipe_mem(u, sizeof(*u));
            return bad(err, n, s, "the user or password is too long or badly %-encoded");
        }
        p = at + 1;
    }
    he = slash ? slash : p + strlen(p);
    hs = p;
    u->port = 6379;
    if (*hs == '[') {
        const char *rb = memchr(hs, ']', (size_t)(he - hs));
        unsigned char tmp[16];
        if (!rb || (size_t)(rb - hs - 1) >= sizeof(u->host))
            goto bad_url;
        memcpy(u->host, hs + 1, (size_t)(rb - hs - 1));
        if (inet_pton(AF_INET6, u->host, tmp) != 1)
            goto bad_url;
        p = rb + 1;
    } else {
        const char *colon = memchr(hs, ':', (size_t)(he - hs));
        const char *e = colon ? colon : he;
        if (e == hs || (size_t)(e - hs) >= sizeof(u->host))
            goto bad_url;
        for (const char *q = hs; q < e; q++)
            if (!isalnum((unsigned char)*q) && *q != '.' && *q != '-' && *q != '_')
                goto bad_url;
        memcpy(u->host, hs, (size_t)(e - hs));
        p = e;
    }
    if (p < he && *p == ':') {
        char port[8];
        size_t pl = (size_t)(he - p - 1);
        if (pl == 0 || pl >= sizeof(port))
            goto bad_url;
        memcpy(port, p + 1, pl);
        port[pl] = '\0';
        if (parse_long(port, &x) < 0 || x < 1 || x > 65535)
            goto bad_url;
        u->port = (int)x;
    } else if (p != he) {
        goto bad_url;
    }
    if (slash && slash[1]) {
        if (parse_long(slash + 1, &x) < 0 || x < 0 || x > 100000)
            goto bad_url;
        u->db = (int)x;
    }
    u->kind = STATE_REDIS_TCP;
    return 0;
bad_url:
    wipe_mem(u, sizeof(*u));
    return bad(err, n, s, STATE_URL_FORMS);
}

/* The URL as parsed, the password masked. */
static void s_state(const struct config *c, const struct setting *s, char *out, size_t n)
{
    const struct state_url *u = CAT(c, s, struct state_url);
    int v6 = strchr(u->host, ':') != NULL;

    if (u->kind == STATE_REDIS_UNIX)
        snprintf(out, n, "unix://%s", u->path);
    else if (u->kind == STATE_REDIS_TCP)
        snprintf(out, n, "redis://%s%s%s%s%s%s:%d/%d", u->user,
                 u->password[0] ? ":***" : "", u->user[0] || u->password[0] ? "@" : "",
                 v6 ? "[" : "", u->host, v6 ? "]" : "", u->port, u->db);
    else
        snprintf(out, n, "(unset: state kept in this process)");
}

/* KEY_PREFIX: printable ASCII without blanks, so keys stay readable in
 * redis-cli and never need quoting. */
static int p_prefix(struct config *c, const struct setting *s, const char *v, char *err, size_t n)
{
    size_t len = strlen(v);

    if (len == 0 || len > 64)
        return bad(err, n, s, "expected 1 to 64 characters");
    for (const char *p = v; *p; p++)
        if (*p <= ' ' || *p > '~')
            return bad(err, n, s, "expected printable ASCII without blanks");
    return p_str(c, s, v, err, n);
}

static const struct kind K_INT = {p_int, s_int, 0};
static const struct kind K_SIZE = {p_size, s_size, 0};
static const struct kind K_BOOL = {p_bool, s_bool, 0};
static const struct kind K_STR = {p_str, s_str, 0};
static const struct kind K_DOMAIN = {p_domain, s_str, 0};
static const struct kind K_BIND = {p_bind, s_bind, 0};
static const struct kind K_PORTS = {p_ports, s_ports, 0};
static const struct kind K_HOSTS = {p_hosts, s_hosts, 1};
static const struct kind K_CIDRS = {p_cidrs, s_cidrs, 1};
static const struct kind K_LEVEL = {p_level, s_level, 0};
static const struct kind K_KEY = {p_key, s_key, 0};
static const struct kind K_STATE = {p_state, s_state, 0};
static const struct kind K_PREFIX = {p_prefix, s_str, 0};

#define MIB (1024L * 1024)

static const struct setting settings[] = {
    {.name = "BIND_ADDR", .def = "127.0.0.1:8443", .kind = &K_BIND,
     .off = OFF(bind_host), .size = SIZE(bind_host), .off2 = OFF(bind_port),
     .help = "listen address ip:port ([::]:8443 for IPv6)"},
    {.name = "TLS_CERT", .kind = &K_STR, .off = OFF(tls_cert),
     .help = "PEM certificate chain; with TLS_KEY the relay terminates TLS itself"},
    {.name = "TLS_KEY", .kind = &K_STR, .off = OFF(tls_key),
     .help = "PEM private key for TLS_CERT"},
    {.name = "ALLOW_PLAINTEXT", .def = "0", .kind = &K_BOOL, .off = OFF(allow_plaintext),
     .help = "1 allows plain HTTP on a non-loopback address (only behind a TLS proxy)"},
    {.name = "BYO_DOMAIN", .def = "localhost", .kind = &K_DOMAIN, .off = OFF(byo_domain),
     .help = "public host name the app is served from (WebSocket Origin check)"},
    {.name = "SPA_DIR", .kind = &K_STR, .off = OFF(spa_dir),
     .help = "directory of static files to serve (index.html fallback)"},
    {.name = "RELAY_SIGNING_KEY", .kind = &K_KEY, .off = OFF(signing_key),
     .size = SIZE(signing_key), .off2 = OFF(signing_key_len), .secret = 1,
     .help = "HS256 cookie key, base64 or raw, >= 32 bytes; random per process when unset"},
    {.name = "RELAY_COOKIE_TTL_SECS", .def = "600", .kind = &K_INT,
     .off = OFF(cookie_ttl_secs), .min = 10, .max = 86400,
     .help = "relay cookie lifetime in seconds"},
    {.name = "POW_DIFFICULTY_BITS", .def = "18", .kind = &K_INT,
     .off = OFF(pow_difficulty_bits), .min = 12, .max = 32,
     .help = "proof-of-work difficulty in leading zero bits (>= 12)"},
    {.name = "AUTH_CHALLENGE_PER_MIN", .def = "10", .kind = &K_INT,
     .off = OFF(auth_challenge_per_min), .min = 1, .max = 1000000,
     .help = "challenges per client IP per minute"},
    {.name = "AUTH_MAX_BODY_BYTES", .def = "16384", .kind = &K_SIZE,
     .off = OFF(auth_max_body_bytes), .min = 64, .max = 1 * MIB,
     .help = "largest POST /relay/auth body"},
    {.name = "RELAY_COOKIE_STORE_SIZE", .def = "65536", .kind = &K_INT,
     .off = OFF(cookie_store_size), .min = 1, .max = 1048576,
     .help = "cookies issued and not yet expired, at most (POST /relay/auth answers 503 "
             "when full)"},
    {.name = "SFTP_ALLOWED_PORTS", .def = "22,2022,2222", .kind = &K_PORTS,
     .off = OFF(allowed_ports), .size = SIZE(allowed_ports), .off2 = OFF(n_allowed_ports),
     .help = "target SSH ports, comma-separated"},
    {.name = "SFTP_HOST_ALLOWLIST", .def = "", .kind = &K_HOSTS,
     .off = OFF(host_allowlist), .off2 = OFF(n_host_allowlist),
     .help = "allowed target hosts (exact or *.domain); empty allows all"},
    {.name = "SFTP_ALLOW_PRIVATE_CIDRS", .def = "", .kind = &K_CIDRS,
     .off = OFF(allow_private), .off2 = OFF(n_allow_private),
     .help = "ranges exempt from the private-address guard, e.g. "
             "192.168.1.0/24,100.64.0.0/10"},
    {.name = "SFTP_MAX_CONCURRENT_PER_IP", .def = "3", .kind = &K_INT,
     .off = OFF(max_concurrent_per_ip), .min = 1, .max = 1000,
     .help = "live SFTP sessions per client IP (IPv6 per /64)"},
    {.name = "TRUSTED_PROXY_IPS", .def = "", .kind = &K_CIDRS,
     .off = OFF(trusted_proxies), .off2 = OFF(n_trusted_proxies),
     .help = "reverse proxies whose X-Forwarded-For is believed (IPs or CIDRs)"},
    {.name = "METRICS_ALLOW", .def = "127.0.0.0/8,::1", .kind = &K_CIDRS,
     .off = OFF(metrics_allow), .off2 = OFF(n_metrics_allow),
     .help = "client addresses (IPs or CIDRs) that may read GET /metrics; others get 403"},
    {.name = "LOG_LEVEL", .def = "info", .kind = &K_LEVEL, .off = OFF(log_level),
     .help = "error, warn, info or debug"},
    {.name = "MAX_SESSIONS", .def = "512", .kind = &K_INT, .off = OFF(max_sessions),
     .min = 1, .max = 100000, .help = "live SFTP sessions in the whole process"},
    {.name = "SFTP_UPLOAD_BUFFER_BYTES", .def = "209715200", .kind = &K_SIZE,
     .off = OFF(upload_buffer_bytes), .min = 1024, .max = 4096 * MIB,
     .help = "upload bytes accepted but not yet written, per session (200 MiB)"},
    {.name = "SFTP_IDLE_TIMEOUT_SECS", .def = "1800", .kind = &K_INT,
     .off = OFF(idle_timeout_secs), .min = 1, .max = 86400,
     .help = "close a session after this long without a frame from the browser"},
    {.name = "HOST_KEY_TIMEOUT_SECS", .def = "30", .kind = &K_INT,
     .off = OFF(host_key_timeout_secs), .min = 1, .max = 600,
     .help = "wait for host_key_accepted, then for the auth request"},
    {.name = "SIGN_TIMEOUT_SECS", .def = "30", .kind = &K_INT,
     .off = OFF(sign_timeout_secs), .min = 1, .max = 600,
     .help = "wait for the browser's answer to a sign_request (publickey-sign login)"},
    {.name = "WS_PING_INTERVAL_SECS", .def = "10", .kind = &K_INT,
     .off = OFF(ws_ping_interval_secs), .min = 1, .max = 600,
     .help = "WebSocket ping interval"},
    {.name = "SSH_CONNECT_TIMEOUT_SECS", .def = "10", .kind = &K_INT,
     .off = OFF(connect_timeout_secs), .min = 1, .max = 120,
     .help = "TCP connect and SSH key exchange timeout"},
    {.name = "SSH_BANNER_TIMEOUT_SECS", .def = "3", .kind = &K_INT,
     .off = OFF(banner_timeout_secs), .min = 1, .max = 60,
     .help = "wait for the server's SSH banner"},
    {.name = "SSH_KEEPALIVE_SECS", .def = "15", .kind = &K_INT, .off = OFF(keepalive_secs),
     .min = 1, .max = 3600, .help = "SSH keepalive interval"},
    {.name = "SSH_KEEPALIVE_COUNT", .def = "4", .kind = &K_INT, .off = OFF(keepalive_count),
     .min = 1, .max = 100,
     .help = "unanswered keepalives before the SSH connection is declared dead"},
    {.name = "SFTP_OP_TIMEOUT_SECS", .def = "60", .kind = &K_INT,
     .off = OFF(op_timeout_secs), .min = 1, .max = 3600,
     .help = "longest time one SFTP operation may take"},
    {.name = "RELAY_MEMORY_BUDGET_MIB", .def = "0", .kind = &K_INT,
     .off = OFF(memory_budget_mib), .min = 0, .max = 1048576,
     .help = "bytes held for browsers, all sessions together, before reading pauses (MiB); "
             "0 = a quarter of RAM or of the cgroup's MemoryMax, at least 64"},
    {.name = "SSH_SESSION_MEMORY_MIB", .def = "64", .kind = &K_INT,
     .off = OFF(ssh_session_memory_mib), .min = 4, .max = 4096,
     .help = "what libssh2 may hold for one session's SSH connection (MiB); past it the "
             "session ends. Eight downloads taken in turn hold about 6, a hostile server's "
             "packets and replies are cut by libssh2 itself at 50"},
    {.name = "SSH_MEMORY_BUDGET_MIB", .def = "0", .kind = &K_INT,
     .off = OFF(ssh_memory_budget_mib), .min = 0, .max = 1048576,
     .help = "what libssh2 may hold for all sessions together (MiB). When it is full, the "
             "sessions holding the most beyond their share are ended; honest ones hold "
             "under 1 each. 0 = the same as RELAY_MEMORY_BUDGET_MIB"},
    {.name = "SHUTDOWN_GRACE_SECS", .def = "30", .kind = &K_INT,
     .off = OFF(shutdown_grace_secs), .min = 0, .max = 3600,
     .help = "on SIGTERM, time live sessions get to finish their current operation"},
    {.name = "SFTP_LIST_MAX_ENTRIES", .def = "10000000", .kind = &K_INT,
     .off = OFF(list_max_entries), .min = 1, .max = 1000000000,
     .help = "entries of one `list` before it fails as `directory too large`"},
    {.name = "STATE_URL", .kind = &K_STATE, .off = OFF(state),
     .help = "shared state of several relays: redis://[user:password@]host:port/db or "
             "unix:///path/to/redis.sock (Redis or Valkey); unset keeps it in this process"},
    {.name = "STATE_PASSWORD_FILE", .kind = &K_STR, .off = OFF(state_password_file),
     .help = "file holding the STATE_URL password (instead of writing it in the URL)"},
    {.name = "KEY_PREFIX", .def = "wattcloud:", .kind = &K_PREFIX, .off = OFF(key_prefix),
     .help = "prefix of every key the relay writes to the STATE_URL store"},
    {.name = "STATE_LEASE_SECS", .def = "30", .kind = &K_INT, .off = OFF(state_lease_secs),
     .min = 3, .max = 3600,
     .help = "with STATE_URL: a dead relay's sessions free their slots after this long "
             "(leases, renewed every third of it)"},
};

#define N_SETTINGS (sizeof(settings) / sizeof(settings[0]))

static int loopback_bind(const struct config *c)
{
    return strncmp(c->bind_host, "127.", 4) == 0 || strcmp(c->bind_host, "::1") == 0;
}

/* STATE_PASSWORD_FILE: the whole file, one trailing newline dropped. */
static int state_password_read(struct config *c, char *err, size_t n)
{
    FILE *f;
    size_t len;
    int extra;

    if (c->state.kind == STATE_EMBEDDED) {
        snprintf(err, n, "invalid STATE_PASSWORD_FILE: set without STATE_URL");
        return -1;
    }
    if (c->state.password[0]) {
        snprintf(err, n, "invalid STATE_PASSWORD_FILE: STATE_URL holds a password too; "
                 "give it in one place");
        return -1;
    }
    f = fopen(c->state_password_file, "r");
    if (!f) {
        snprintf(err, n, "invalid STATE_PASSWORD_FILE: cannot read %s: %s",
                 c->state_password_file, strerror(errno));
        return -1;
    }
    /* Unbuffered: stdio would read the file into a buffer of its own and
     * free it without wiping, leaving a copy of the password behind. */
    setvbuf(f, NULL, _IONBF, 0);
    len = fread(c->state.password, 1, sizeof(c->state.password) - 1, f);
    extra = fgetc(f);
    fclose(f);
    c->state.password[len] = '\0';
    if (len > 0 && c->state.password[len - 1] == '\n')
        c->state.password[--len] = '\0';
    if (len > 0 && c->state.password[len - 1] == '\r')
        c->state.password[--len] = '\0';
    if (extra != EOF || len == 0 || strlen(c->state.password) != len) {
        wipe_mem(c->state.password, sizeof(c->state.password));
        snprintf(err, n, "invalid STATE_PASSWORD_FILE: %s must hold one password of 1 to %zu "
                 "bytes (no NUL)", c->state_password_file, sizeof(c->state.password) - 1);
        return -1;
    }
    return 0;
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
    if (c->state_password_file && state_password_read(c, err, n) < 0)
        return -1;
    if (c->state.kind != STATE_EMBEDDED && c->tls_cert) {
        /* gate.c answers a deferred upgrade by handing the connection's
         * socket back to lws, which only works below TLS. */
        snprintf(err, n, "invalid STATE_URL: relays sharing a store run behind a "
                 "TLS-terminating proxy (HAProxy); unset TLS_CERT/TLS_KEY");
        return -1;
    }
    if (c->state.kind != STATE_EMBEDDED && c->signing_key_len == 0) {
        snprintf(err, n, "invalid STATE_URL: relays sharing a store must share "
                 "RELAY_SIGNING_KEY too; set it");
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
        if (!v || (!*v && !s->kind->empty_ok))
            continue;
        if (s->kind->parse(c, s, v, err, errlen) < 0)
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

/* Text for roff: a backslash would start an escape and a line starting
 * with '.' or '\'' would be a request. */
static void man_text(FILE *out, const char *s)
{
    if (*s == '.' || *s == '\'')
        fputs("\\&", out);
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\e", out);
        else if (*s == '-')
            fputs("\\-", out);
        else
            fputc(*s, out);
    }
}

void cfg_print_man(FILE *out)
{
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *def = settings[i].def;
        fputs(".TP\n.B ", out);
        man_text(out, settings[i].name);
        fputc('\n', out);
        man_text(out, settings[i].help);
        fputs("\n.br\nDefault: ", out);
        if (def && *def) {
            fputs("\\fB", out);
            man_text(out, def);
            fputs("\\fR", out);
        } else {
            fputs(def ? "(empty)" : "(unset)", out);
        }
        fputc('\n', out);
    }
}

int cfg_effective(const struct config *c, const char *name, char *out, size_t outlen)
{
    for (size_t i = 0; i < N_SETTINGS; i++) {
        if (strcmp(settings[i].name, name) != 0)
            continue;
        out[0] = '\0';
        settings[i].kind->show(c, &settings[i], out, outlen);
        if (!out[0])
            snprintf(out, outlen, "(empty)");
        return 0;
    }
    return -1;
}

void cfg_log(const struct config *c)
{
    char value[LOG_LINE_MAX / 2];

    for (size_t i = 0; i < N_SETTINGS; i++) {
        cfg_effective(c, settings[i].name, value, sizeof(value));
        log_info("setting %s=%s", settings[i].name, value);
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
    free(c->metrics_allow);
    free(c->state_password_file);
    free(c->key_prefix);
    wipe_mem(&c->state, sizeof(c->state));
    wipe_mem(c->signing_key, sizeof(c->signing_key));
    memset(c, 0, sizeof(*c));
}
