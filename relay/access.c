/* The HTTP access layer of PROTOCOL §1.1-§1.2: challenge and cookie
 * endpoints and the WebSocket upgrade gate, each a function from request
 * strings to an HTTP status, on top of auth_cookie, ratelimit and netguard. */
#include "access.h"
#include "clock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "auth_cookie.h"
#include "client_ip.h"
#include "metrics.h"
#include "netguard.h"
#include "ratelimit.h"
#include "store.h"
#include "wipe.h"

struct access {
    const struct config *cfg;        /* borrowed */
    struct store *store;             /* embedded or shared (STATE_URL) */
    int localhost;                   /* BYO_DOMAIN is "localhost" */
    char *origin;                    /* "https://" BYO_DOMAIN */
};

struct access *access_new(const struct config *cfg)
{
    struct access *a;
    const char *domain;
    size_t n;

    if (!cfg || cfg->signing_key_len < 32 ||
        cfg->signing_key_len > sizeof(cfg->signing_key))
        return NULL;
    a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->cfg = cfg;
    domain = cfg->byo_domain && *cfg->byo_domain ? cfg->byo_domain : "localhost";
    a->localhost = strcasecmp(domain, "localhost") == 0;
    n = strlen(domain) + sizeof("https://");
    a->origin = malloc(n);
    if (a->origin)
        snprintf(a->origin, n, "https://%s", domain);
    a->store = cfg->state.kind == STATE_EMBEDDED ? store_embedded_new(cfg) : store_redis_new(cfg);
    if (!a->origin || !a->store) {
        access_free(a);
        return NULL;
    }
    return a;
}

void access_free(struct access *a)
{
    if (!a)
        return;
    store_free(a->store);
    free(a->origin);
    free(a);
}

struct ratelimit *access_ratelimit(struct access *a)
{
    return a ? store_ratelimit(a->store) : NULL;
}

struct store *access_store(struct access *a)
{
    return a ? a->store : NULL;
}

static void key_of(const char *client_ip, char key[CLIENT_IP_MAX])
{
    client_ip_key(client_ip, key, CLIENT_IP_MAX);
}

struct access_time access_time_now(void)
{
    struct access_time t;

    t.wall = time(NULL);
    t.mono_ms = clock_now_ms();
    return t;
}

/* ---- GET /relay/auth/challenge ----------------------------------------- */

/* The request every entry point starts from. */
static void req_init(struct store_req *r, enum store_op op, const char *client_ip,
                     struct access_time now)
{
    memset(r, 0, sizeof(*r));
    r->op = op;
    key_of(client_ip, r->key);
    snprintf(r->client_ip, sizeof(r->client_ip), "%s", client_ip);
    r->now_ms = now.mono_ms;
    r->wall = now.wall;
}

/* A request the embedded store answers at once; a shared store is only
 * reached through the begin/end pairs (the caller waits for the answer). */
static int submit_now(struct access *a, struct store_req *r)
{
    if (store_submit(a->store, r) != STORE_DONE)
        return -1;
    return 0;
}

int access_challenge_begin(struct access *a, const char *purpose_query,
                           const char *client_ip, struct access_time now,
                           struct store_req *r)
{
    if (!a || !client_ip || !r || strlen(client_ip) >= CLIENT_IP_MAX)
        return 500;
    req_init(r, STORE_CHALLENGE, client_ip, now);
    r->valid = auth_purpose_valid(purpose_query);
    if (r->valid && auth_challenge_make(purpose_query, client_ip, now.mono_ms, &r->ch) != 0)
        return 500;
    return 0;
}

int access_challenge_end(struct access *a, struct store_req *r, char *body, size_t bodylen)
{
    char nonce[2 * AUTH_NONCE_BYTES + 1];
    int n, status = r->status;

    if (!body || bodylen == 0) {
        status = 500;
        goto out;
    }
    body[0] = '\0';
    if (status != 200)
        goto out;
    for (int i = 0; i < AUTH_NONCE_BYTES; i++)
        snprintf(nonce + 2 * i, 3, "%02x", r->ch.nonce[i]);
    n = snprintf(body, bodylen,
                 "{\"nonce_id\":\"%s\",\"nonce\":\"%s\",\"difficulty\":%d}",
                 r->ch.nonce_id, nonce, a->cfg->pow_difficulty_bits);
    if (n < 0 || (size_t)n >= bodylen) {
        body[0] = '\0';
        status = 500;
    }
out:
    wipe_mem(&r->ch, sizeof(r->ch));
    return status;
}

int access_http_challenge(struct access *a, const char *purpose_query,
                          const char *client_ip, struct access_time now,
                          char *body, size_t bodylen)
{
    struct store_req r;
    int status;

    if (!a || !body || bodylen == 0)
        return 500;
    status = access_challenge_begin(a, purpose_query, client_ip, now, &r);
    if (status)
        return status;
    if (submit_now(a, &r) != 0)
        return 500;
    return access_challenge_end(a, &r, body, bodylen);
}

/* ---- POST /relay/auth --------------------------------------------------- */

/* A JSON body already validated by jansson is walked here once more, to
 * read the raw text of its "answer": jansson stores integers as signed 64
 * bits, and the answer is an unsigned 64-bit integer (PROTOCOL §1.1). The
 * helpers below take a position in [b, b+len) and return the position
 * after what they skipped; they trust the text to be valid JSON. */
static size_t skip_ws(const char *b, size_t len, size_t i)
{
    while (i < len && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n'))
        i++;
    return i;
}

static size_t skip_string(const char *b, size_t len, size_t i)
{
    for (i++; i < len && b[i] != '"'; i++)
        if (b[i] == '\\')
            i++;
    return i < len ? i + 1 : len;
}

static size_t skip_value(const char *b, size_t len, size_t i)
{
    int depth = 0;

    if (i < len && b[i] == '"')
        return skip_string(b, len, i);
    if (i < len && (b[i] == '{' || b[i] == '[')) {
        do {
            if (b[i] == '"') {
                i = skip_string(b, len, i);
                continue;
            }
            if (b[i] == '{' || b[i] == '[')
                depth++;
            else if (b[i] == '}' || b[i] == ']')
                depth--;
            i++;
        } while (i < len && depth > 0);
        return i;
    }
    while (i < len && !strchr(",}] \t\r\n", b[i]))
        i++;
    return i;
}

/* The raw value text of the top-level member named exactly "answer" (no
 * escapes in the name; the browser sends none). 0 or -1. */
static int answer_token(const char *b, size_t len, const char **tok, size_t *toklen)
{
    size_t i = skip_ws(b, len, 0);

    if (i >= len || b[i] != '{')
        return -1;
    for (i++;;) {
        size_t ks, ke, vs;
        i = skip_ws(b, len, i);
        if (i >= len || b[i] != '"')
            return -1;
        ks = i + 1;
        i = skip_string(b, len, i);
        ke = i - 1;
        i = skip_ws(b, len, i);
        if (i >= len || b[i] != ':')
            return -1;
        vs = i = skip_ws(b, len, i + 1);
        i = skip_value(b, len, i);
        if (ke >= ks && ke - ks == 6 && memcmp(b + ks, "answer", 6) == 0) {
            *tok = b + vs;
            *toklen = i - vs;
            return 0;
        }
        i = skip_ws(b, len, i);
        if (i >= len || b[i] != ',')
            return -1;
        i++;
    }
}

/* A JSON integer 0..2^64-1: digits only (no sign, fraction or exponent),
 * no leading zero, no overflow. 0 or -1. */
static int parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;

    if (n == 0 || (n > 1 && s[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (s[i] < '0' || s[i] > '9' || v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Parse {"nonce_id": string, "answer": integer 0..2^64-1}; other members
 * are ignored. jansson validates the whole body (integers read as reals,
 * so a large answer is not a parse error); the answer's own text is then
 * read exactly. 0 or -1. */
static int parse_answer(const char *body, size_t len, char *nonce_id,
                        size_t idlen, uint64_t *answer)
{
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL,
                           NULL);
    json_t *id;
    const char *tok;
    size_t toklen;
    int rc = -1;

    if (!j)
        return -1;
    id = json_object_get(j, "nonce_id");
    if (json_is_object(j) && json_is_string(id) && json_string_length(id) < idlen &&
        json_is_number(json_object_get(j, "answer")) &&
        answer_token(body, len, &tok, &toklen) == 0 &&
        parse_u64(tok, toklen, answer) == 0) {
        memcpy(nonce_id, json_string_value(id), json_string_length(id) + 1);
        rc = 0;
    }
    json_decref(j);
    return rc;
}

int access_redeem_begin(struct access *a, const char *body, size_t len,
                        const char *client_ip, struct access_time now, struct store_req *r)
{
    uint64_t answer;

    if (!a || !client_ip || !r || strlen(client_ip) >= CLIENT_IP_MAX)
        return 500;
    req_init(r, STORE_TAKE, client_ip, now);
    if (len > a->cfg->auth_max_body_bytes)
        return metrics_redeem_refused(MR_REDEEM_TOO_LARGE), 413;
    if (!body || parse_answer(body, len, r->nonce_id, sizeof(r->nonce_id), &answer) != 0)
        return metrics_redeem_refused(MR_REDEEM_MALFORMED), 400;
    /* The answer waits in the request for the challenge to come back. */
    r->exp = (int64_t)answer;
    return 0;
}

int access_redeem_end(struct access *a, struct store_req *r, char *set_cookie, size_t n)
{
    char jwt[AUTH_JWT_MAX], jti[AUTH_UUID_LEN + 1];
    const struct auth_challenge *c = &r->ch;
    uint64_t answer = (uint64_t)r->exp;
    int rc, status, w;

    if (!set_cookie || n == 0) {
        status = 500;
        goto out;
    }
    set_cookie[0] = '\0';
    if (r->status != 200) {
        status = r->status == 503 ? 503 : r->status == 500 ? 500 : 400;
        if (status == 400)
            metrics_redeem_refused(MR_REDEEM_UNKNOWN);
        goto out;  /* unknown, used, forgotten or expired; or no store */
    }
    /* The challenge is used up from here on, whatever the answer. */
    if (strcmp(c->client_ip, r->client_ip) != 0 ||
        !auth_pow_ok(c->nonce, c->purpose, answer, a->cfg->pow_difficulty_bits)) {
        metrics_redeem_refused(strcmp(c->client_ip, r->client_ip) ? MR_REDEEM_WRONG_CLIENT
                                                                  : MR_REDEEM_WORK);
        status = 403;
        goto out;
    }
    /* The cookie's id takes its slot in the (embedded) store now, so that
     * its one use can never be refused; a full store refuses to issue. */
    do {
        if (auth_uuid_new(jti) != 0) {
            status = 500;
            goto out;
        }
        rc = store_jti_reserve(a->store, jti, r->wall + a->cfg->cookie_ttl_secs, r->wall);
    } while (rc == -EEXIST);
    if (rc != 0) {
        status = rc == -ENOSPC ? 503 : 500;
        goto out;
    }
    if (auth_jwt_sign(a->cfg->signing_key, a->cfg->signing_key_len, jti, c->purpose,
                      r->wall, a->cfg->cookie_ttl_secs, jwt, sizeof(jwt)) != 0) {
        store_jti_unreserve(a->store, jti);
        status = 500;
        goto out;
    }
    w = snprintf(set_cookie, n,
                 ACCESS_COOKIE_NAME "=%s; HttpOnly; Secure; SameSite=Strict; "
                 "Path=/relay; Max-Age=%d", jwt, a->cfg->cookie_ttl_secs);
    wipe_mem(jwt, sizeof(jwt));
    if (w < 0 || (size_t)w >= n) {
        store_jti_unreserve(a->store, jti);
        wipe_mem(set_cookie, n);
        set_cookie[0] = '\0';
        status = 500;
        goto out;
    }
    status = 204;
out:
    if (status != 204 && status != 403 && status != 400)
        metrics_redeem_refused(status == 503 ? MR_REDEEM_STORE_FULL : MR_REDEEM_INTERNAL);
    wipe_mem(&r->ch, sizeof(r->ch));
    return status;
}

int access_http_redeem(struct access *a, const char *body, size_t len,
                       const char *client_ip, struct access_time now,
                       char *set_cookie, size_t n)
{
    struct store_req r;
    int status;

    if (!a || !client_ip || !set_cookie || n == 0)
        return 500;
    set_cookie[0] = '\0';
    status = access_redeem_begin(a, body, len, client_ip, now, &r);
    if (status)
        return status;
    if (submit_now(a, &r) != 0)
        return 500;
    return access_redeem_end(a, &r, set_cookie, n);
}

/* ---- The upgrade gate --------------------------------------------------- */

/* Strict port: 1-5 digits, no sign, blank or leading zero, 1-65535.
 * [s, s+n) need not be NUL-terminated. Returns the port or -1. */
static int parse_port_n(const char *s, size_t n)
{
    int v = 0;

    if (n == 0 || n > 5 || s[0] == '0')
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= 65535 ? v : -1;
}

static int parse_port(const char *s)
{
    return s ? parse_port_n(s, strlen(s)) : -1;
}

/* Origins a BYO_DOMAIN=localhost relay accepts: http(s) to localhost,
 * 127.0.0.1 or [::1], any port or none, nothing else (no userinfo, path,
 * trailing dot or other loopback address). */
static int loopback_origin(const char *o)
{
    static const char *const hosts[] = { "localhost", "127.0.0.1", "[::1]" };
    const char *p;

    if (strncasecmp(o, "http://", 7) == 0)
        p = o + 7;
    else if (strncasecmp(o, "https://", 8) == 0)
        p = o + 8;
    else
        return 0;
    for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) {
        size_t n = strlen(hosts[i]);
        if (strncasecmp(p, hosts[i], n) != 0)
            continue;
        if (p[n] == '\0')
            return 1;
        if (p[n] == ':' && parse_port(p + n + 1) > 0)
            return 1;
    }
    return 0;
}

static int origin_ok(const struct access *a, const char *origin)
{
    if (a->localhost)
        return !origin || loopback_origin(origin);
    return origin && strcasecmp(origin, a->origin) == 0;
}

/* Copy the value of cookie `name` from a Cookie header ("a=b; c=d") into
 * `out`: 0, or -1 when absent, empty or longer than `outlen` - 1. The
 * first cookie of that exact name counts. */
static int cookie_value(const char *hdr, const char *name, char *out,
                        size_t outlen)
{
    size_t nlen = strlen(name);
    const char *p = hdr;

    while (p && *p) {
        const char *end = strchr(p, ';'), *eq, *v, *ve;
        if (!end)
            end = p + strlen(p);
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        eq = memchr(p, '=', (size_t)(end - p));
        if (eq) {
            const char *ne = eq;
            while (ne > p && (ne[-1] == ' ' || ne[-1] == '\t'))
                ne--;
            if ((size_t)(ne - p) == nlen && memcmp(p, name, nlen) == 0) {
                v = eq + 1;
                ve = end;
                while (v < ve && (*v == ' ' || *v == '\t'))
                    v++;
                while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                    ve--;
                if (ve == v || (size_t)(ve - v) >= outlen)
                    return -1;
                memcpy(out, v, (size_t)(ve - v));
                out[ve - v] = '\0';
                return 0;
            }
        }
        p = *end ? end + 1 : end;
    }
    return -1;
}

/* Check 3: a host the worker can resolve unambiguously. */
static int host_ok(const char *h)
{
    size_t n = h ? strlen(h) : 0, label = 0;
    const char *last;
    int digits_only = 1;

    if (n == 0 || n > 253)
        return 0;
    if (netguard_literal(h, NULL, NULL))
        return 1;
    if (h[n - 1] == '.')
        n--;  /* one trailing dot: a fully qualified name */
    last = h;
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        if (c == '.') {
            if (label == 0)
                return 0;  /* empty label */
            label = 0;
            last = h + i + 1;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return 0;
        if (++label > 63)
            return 0;
    }
    if (label == 0)
        return 0;
    /* An all-digit last label is no DNS name but a legacy number form
     * that resolvers read as an address ("127.1", "2130706433"). */
    for (const char *p = last; p < h + n; p++)
        if (*p < '0' || *p > '9')
            digits_only = 0;
    return !digits_only;
}

static int port_allowed(const struct config *cfg, int port)
{
    for (int i = 0; i < cfg->n_allowed_ports; i++)
        if (cfg->allowed_ports[i] == port)
            return 1;
    return 0;
}

/* Check 5: empty list = all; "*.example.com" matches exactly one more
 * label in front ("a.example.com", not "example.com" nor "a.b.example.com"). */
static int host_allowed(const struct config *cfg, const char *host)
{
    size_t hl = strlen(host);

    if (cfg->n_host_allowlist <= 0)
        return 1;
    for (int i = 0; i < cfg->n_host_allowlist; i++) {
        const char *e = cfg->host_allowlist[i];
        if (!e)
            continue;
        if (e[0] == '*' && e[1] == '.') {
            const char *suffix = e + 1;  /* ".example.com" */
            size_t sl = strlen(suffix);
            if (hl > sl && strcasecmp(host + hl - sl, suffix) == 0 &&
                memchr(host, '.', hl - sl) == NULL)
                return 1;
        } else if (strcasecmp(host, e) == 0) {
            return 1;
        }
    }
    return 0;
}

int access_target(const char *host, const char *port, struct upgrade_target *t)
{
    size_t i;

    memset(t, 0, sizeof(*t));
    t->port = parse_port(port);
    if (!host_ok(host) || t->port < 0) {
        memset(t, 0, sizeof(*t));
        return -1;
    }
    for (i = 0; host[i] && i + 1 < sizeof(t->host); i++)
        t->host[i] = (host[i] >= 'A' && host[i] <= 'Z') ? (char)(host[i] - 'A' + 'a') : host[i];
    t->host[i] = '\0';
    if (netguard_literal(host, &t->addr, &t->addrlen)) {
        if (t->addr.ss_family == AF_INET)
            ((struct sockaddr_in *)&t->addr)->sin_port = htons((uint16_t)t->port);
        else
            ((struct sockaddr_in6 *)&t->addr)->sin6_port = htons((uint16_t)t->port);
        t->pinned = 1;
    }
    return 0;
}

const char *access_target_refused_by(const struct config *cfg,
                                     const struct upgrade_target *t)
{
    if (!port_allowed(cfg, t->port))
        return "SFTP_ALLOWED_PORTS";
    if (!host_allowed(cfg, t->host))
        return "SFTP_HOST_ALLOWLIST";
    return NULL;
}

int access_upgrade_begin(struct access *a, const struct upgrade_req *r,
                         struct access_time now, struct upgrade_target *t,
                         struct store_req *sr)
{
    char token[AUTH_JWT_MAX + 1], purpose[AUTH_PURPOSE_BUF];
    struct jwt_claims claims;
    int port, rc, status;

    if (!a || !r || !t || !sr || !r->client_ip || strlen(r->client_ip) >= CLIENT_IP_MAX)
        return 500;
    memset(t, 0, sizeof(*t));
    memset(&claims, 0, sizeof(claims));
    req_init(sr, STORE_UPGRADE, r->client_ip, now);

    /* 1. Origin. */
    if (!origin_ok(a, r->origin))
        return 403;

    /* 2. Cookie present, signature valid, not expired. */
    rc = -1;
    if (r->cookie_header &&
        cookie_value(r->cookie_header, ACCESS_COOKIE_NAME, token, sizeof(token)) == 0)
        rc = auth_jwt_verify(a->cfg->signing_key, a->cfg->signing_key_len,
                             token, now.wall, &claims);
    wipe_mem(token, sizeof(token));
    if (rc != 0)
        return metrics_cookie_refused(MR_COOKIE_INVALID), 401;

    /* 3. host and port well-formed. */
    if (access_target(r->host, r->port, t) < 0)
        return 400;
    port = t->port;

    /* 4. Port allowed. */
    if (!port_allowed(a->cfg, port))
        return 403;

    /* 5. Host allowed. */
    if (!host_allowed(a->cfg, t->host)) {
        status = 403;
        goto fail;
    }

    /* 6. The cookie was made for this very target. */
    if (auth_purpose_for(r->host, port, purpose) != 0) {
        status = 500;
        goto fail;
    }
    if (strcmp(purpose, claims.purpose) != 0) {
        metrics_cookie_refused(MR_COOKIE_WRONG_TARGET);
        status = 403;
        goto fail;
    }

    /* 7-9 and spray are the store's (STORE_UPGRADE). Check 10 for an IP
     * literal is known now, but answers only after them: probing private
     * targets counts as spraying too. A name is judged by the worker,
     * after DNS. */
    memcpy(sr->jti, claims.jti, sizeof(sr->jti));
    sr->exp = claims.exp;
    snprintf(sr->host, sizeof(sr->host), "%s", t->host);
    sr->target_refused =
        t->pinned && netguard_check_addr(a->cfg->allow_private, a->cfg->n_allow_private,
                                         (struct sockaddr *)&t->addr) != 0;
    return 0;

fail:
    memset(t, 0, sizeof(*t));
    return status;
}

int access_upgrade_end(struct access *a, const struct store_req *sr, struct upgrade_target *t)
{
    (void)a;
    if (sr->status != 0) {
        /* The store's 403 is the cookie's spent single use, unless it is
         * check 10's verdict on an IP literal; its 503 may be the store
         * being away, which is no cookie's fault. */
        if (sr->status == 403 && !sr->target_refused)
            metrics_cookie_refused(MR_COOKIE_REUSED);
        memset(t, 0, sizeof(*t));
        return sr->status;
    }
    return 0;
}

int access_check_upgrade(struct access *a, const struct upgrade_req *r,
                         struct access_time now, struct upgrade_target *t)
{
    struct store_req sr;
    int status = access_upgrade_begin(a, r, now, t, &sr);

    if (status)
        return status;
    if (submit_now(a, &sr) != 0) {
        memset(t, 0, sizeof(*t));
        return 503;
    }
    return access_upgrade_end(a, &sr, t);
}

int access_session_open_lease(struct access *a, const char *client_ip, const char *lease)
{
    char key[CLIENT_IP_MAX];

    if (!a || !client_ip)
        return -1;
    key_of(client_ip, key);
    return store_session_open(a->store, key, lease);
}

void access_session_close_lease(struct access *a, const char *client_ip, const char *lease)
{
    char key[CLIENT_IP_MAX];

    if (!a || !client_ip)
        return;
    key_of(client_ip, key);
    store_session_close(a->store, key, lease);
}

int access_session_open(struct access *a, const char *client_ip)
{
    return access_session_open_lease(a, client_ip, "");
}

void access_session_close(struct access *a, const char *client_ip)
{
    access_session_close_lease(a, client_ip, "");
}

int access_auth_attempt(struct access *a, const char *client_ip,
                        struct access_time now)
{
    char key[CLIENT_IP_MAX];

    if (!a || !client_ip)
        return -1;
    key_of(client_ip, key);
    return store_auth_attempt(a->store, key, now.mono_ms) == 0 ? 0 : -1;
}

void access_auth_refund(struct access *a, const char *client_ip,
                        struct access_time now)
{
    char key[CLIENT_IP_MAX];

    if (!a || !client_ip)
        return;
    key_of(client_ip, key);
    store_auth_refund(a->store, key, now.mono_ms);
}
