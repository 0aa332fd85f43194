/* The HTTP surface of PROTOCOL §1: health and readiness, the relay cookie
 * endpoints, the gate in front of the WebSocket upgrade, static files, and
 * the one writer every HTTP answer goes through. Decisions are made by
 * access.c; this file checks that a request is well-formed HTTP and moves
 * bytes for the decisions. */
#include "http.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "access.h"
#include "client_ip.h"
#include "config.h"
#include "conn_limit.h"
#include "log.h"
#include "server.h"
#include "static_files.h"

/* All Cookie header lines of one request together. */
#define COOKIE_HEADER_MAX 8192
/* The header fields of one request, counted over the fields lws knows by
 * name: above this the answer is 431. lws's own budget (SERVER_HEADER_BUDGET
 * in server.c) is larger, so a request this size still parses and can be
 * answered instead of being dropped without a word. */
#define HTTP_HEADERS_MAX (8 * 1024)
/* The only WebSocket version there is (RFC 6455 §4.1). */
#define WS_VERSION "13"
/* The WebSocket protocol our sessions run on (server.c's table). */
#define SFTP_PROTOCOL "wattcloud-sftp"

struct http_pss {
    char *body;             /* POST /relay/auth body, up to the cap */
    size_t len;
    int too_big;
    int is_auth;
};

size_t http_pss_size(void)
{
    return sizeof(struct http_pss);
}

const char *http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

int http_has_body(struct lws *wsi)
{
    char v[32];

    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0)
        return 1;
    return lws_hdr_copy(wsi, v, sizeof(v), WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 &&
           strtoull(v, NULL, 10) > 0;
}

/* A body nobody reads: only POST /relay/auth reads its own. The pss is
 * another protocol's during the upgrade callback: only trust it on ours. */
static int unread_body(struct lws *wsi)
{
    const struct lws_protocols *pr = lws_get_protocol(wsi);
    struct http_pss *pss = pr && pr->callback == http_cb ? lws_wsi_user(wsi) : NULL;

    return !(pss && pss->is_auth) && http_has_body(wsi);
}

int http_respond(struct lws *wsi, int status, const char *type, const char *body,
                 const char *extra)
{
    unsigned char buf[LWS_PRE + 512 + HTTP_EXTRA_MAX + HTTP_BODY_MAX];
    char *start = (char *)buf + LWS_PRE, *p = start;
    size_t room = sizeof(buf) - LWS_PRE, blen = body ? strlen(body) : 0;
    int close_after = status >= 400 || unread_body(wsi);
    int head = lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0;
    int n;

    if (blen > HTTP_BODY_MAX || (extra && strlen(extra) > HTTP_EXTRA_MAX))
        return -1;
    n = snprintf(p, room,
                 "HTTP/1.1 %d %s\r\n"
                 "Content-Type: %s\r\n"
                 "Content-Length: %zu\r\n"
                 "%s"
                 "X-Content-Type-Options: nosniff\r\n"
                 "%s%s\r\n",
                 status, http_reason(status), type ? type : "text/plain", blen,
                 extra && strcasestr(extra, "cache-control:") ? "" : "Cache-Control: no-store\r\n",
                 close_after ? "Connection: close\r\n" : "", extra ? extra : "");
    if (n < 0 || (size_t)n >= room - blen)
        return -1;
    p += n;
    if (blen && !head) {
        memcpy(p, body, blen);
        p += blen;
    }
    if (lws_write(wsi, (unsigned char *)start, (size_t)(p - start), LWS_WRITE_HTTP_FINAL) !=
        (int)(p - start))
        return -1;
    if (close_after)
        return -1;  /* lws sends what it still holds, then closes */
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

int http_refuse(struct lws *wsi, int status, const char *why, const char *extra)
{
    char body[160];
    const char *r = http_reason(status);

    if (why)
        snprintf(body, sizeof(body), "%s: %s\n", r, why);
    else
        snprintf(body, sizeof(body), "%s\n", r);
    http_respond(wsi, status, "text/plain; charset=utf-8", body, extra);
    return -1;
}

/* The sum of the header fields lws knows by name (custom ones are not
 * listed by lws 4.1; its own budget bounds those). */
static size_t headers_size(struct lws *wsi)
{
    size_t total = 0;

    for (int t = 0; t < WSI_TOKEN_COUNT; t++) {
        int n = lws_hdr_total_length(wsi, (enum lws_token_indexes)t);
        if (n > 0)
            total += (size_t)n;
    }
    return total;
}

/* Content-Length: digits only; repeated lines (lws joins them with ',')
 * must all say the same. Returns the length, or -1. */
static long long content_length(struct lws *wsi)
{
    char v[128], *p = v, *end;
    long long len = -1;

    if (lws_hdr_copy(wsi, v, sizeof(v), WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0)
        return -1;
    for (;;) {
        long long one;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!isdigit((unsigned char)*p))
            return -1;
        errno = 0;
        one = strtoll(p, &end, 10);
        if (errno || (len >= 0 && one != len))
            return -1;
        len = one;
        p = end;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0')
            return len;
        if (*p++ != ',')
            return -1;
    }
}

/* Request framing every route needs before it can answer without leaving
 * bytes to be read as a next request (RFC 9112 §6.3). 0 or a status. */
static int framing_status(struct lws *wsi, const char **why)
{
    int has_cl = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0;
    int has_te = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0;

    if (headers_size(wsi) > HTTP_HEADERS_MAX) {
        *why = "request headers too large";
        return 431;
    }
    if (has_cl && has_te) {
        *why = "both Content-Length and Transfer-Encoding";
        return 400;
    }
    if (has_cl && content_length(wsi) < 0) {
        *why = "invalid Content-Length";
        return 400;
    }
    return 0;
}

static int uri_is(const char *in, const char *path)
{
    return strcmp(in, path) == 0;
}

/* The client IP, or a refusal status (400, or 431 for an X-Forwarded-For
 * longer than the relay reads). */
static int client_ip_status(struct lws *wsi, char *ip, size_t iplen)
{
    int rc = server_client_ip(wsi, ip, iplen);

    return rc == 0 ? 0 : rc == -2 ? 431 : 400;
}

static int challenge(struct lws *wsi)
{
    struct server *srv = server_of(wsi);
    char ip[CLIENT_IP_MAX], purpose[128], body[HTTP_BODY_MAX];
    const char *p = lws_get_urlarg_by_name(wsi, "purpose=", purpose, sizeof(purpose));
    int status;

    if ((status = client_ip_status(wsi, ip, sizeof(ip))) != 0)
        return http_refuse(wsi, status, "client address", NULL);
    status = access_http_challenge(srv->access, p, ip, access_time_now(), body, sizeof(body));
    if (status != 200)
        return http_refuse(wsi, status, NULL, NULL);
    return http_respond(wsi, 200, "application/json", body, NULL);
}

static int redeem(struct lws *wsi, struct http_pss *pss)
{
    struct server *srv = server_of(wsi);
    char ip[CLIENT_IP_MAX], cookie[ACCESS_SET_COOKIE_MAX], extra[ACCESS_SET_COOKIE_MAX + 32];
    int status, rc;

    if (pss->too_big)
        return http_refuse(wsi, 413, NULL, NULL);
    if ((status = client_ip_status(wsi, ip, sizeof(ip))) != 0)
        return http_refuse(wsi, status, "client address", NULL);
    status = access_http_redeem(srv->access, pss->body ? pss->body : "", pss->len, ip,
                                access_time_now(), cookie, sizeof(cookie));
    if (status == 503)
        return http_refuse(wsi, status, ACCESS_STORE_FULL_TEXT, NULL);
    if (status != 204)
        return http_refuse(wsi, status, NULL, NULL);
    snprintf(extra, sizeof(extra), "Set-Cookie: %s\r\n", cookie);
    rc = http_respond(wsi, 204, "text/plain", NULL, extra);
    OPENSSL_cleanse(cookie, sizeof(cookie));
    OPENSSL_cleanse(extra, sizeof(extra));
    return rc;
}

/* POST /relay/auth: the body is read only with a valid Content-Length
 * under the cap; lws 4.1 would otherwise wait for a chunked or unbounded
 * body until its timeout and never answer. */
static int auth_start(struct lws *wsi, struct http_pss *pss)
{
    long long len;

    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0 ||
        lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0)
        return http_refuse(wsi, 411, "Content-Length required", NULL);
    len = content_length(wsi);
    if (len < 0)
        return http_refuse(wsi, 400, "invalid Content-Length", NULL);
    if ((unsigned long long)len > server_of(wsi)->cfg->auth_max_body_bytes)
        return http_refuse(wsi, 413, NULL, NULL);
    pss->is_auth = 1;
    return 0;  /* the body follows */
}

static int http_request(struct lws *wsi, struct http_pss *pss, const char *uri)
{
    struct server *srv = server_of(wsi);
    int is_get = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0;
    int is_post = lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0;
    const char *why = NULL;
    int status = framing_status(wsi, &why);

    if (status)
        return http_refuse(wsi, status, why, NULL);
    if (uri_is(uri, "/health"))
        return http_respond(wsi, 200, "text/plain", "ok\n", NULL);
    if (uri_is(uri, "/ready"))
        return srv->draining ? http_refuse(wsi, 503, "draining", NULL)
                             : http_respond(wsi, 200, "text/plain", "ready\n", NULL);
    if (uri_is(uri, "/relay/auth/challenge"))
        return is_get ? challenge(wsi) : http_refuse(wsi, 405, NULL, "Allow: GET\r\n");
    if (uri_is(uri, "/relay/auth"))
        return is_post ? auth_start(wsi, pss) : http_refuse(wsi, 405, NULL, "Allow: POST\r\n");
    if (uri_is(uri, "/relay/ws"))
        return http_refuse(wsi, 400, "a WebSocket endpoint", NULL);
    return static_serve(wsi, uri);  /* SPA_DIR files, else 404 */
}

static int body_chunk(struct lws *wsi, struct http_pss *pss, const void *in, size_t len)
{
    size_t cap = server_of(wsi)->cfg->auth_max_body_bytes;
    char *grown;

    if (!pss->is_auth || pss->too_big || len == 0)
        return 0;
    if (len > cap || pss->len > cap - len) {
        pss->too_big = 1;
        return 0;
    }
    grown = realloc(pss->body, pss->len + len + 1);
    if (!grown)
        return -1;
    pss->body = grown;
    memcpy(pss->body + pss->len, in, len);
    pss->len += len;
    pss->body[pss->len] = '\0';
    return 0;
}

/* --- the upgrade gate --- */

/* Whether header `h` lists `token` (comma-separated, case-insensitive). */
static int lists_token(struct lws *wsi, enum lws_token_indexes h, const char *token)
{
    char v[256], *save = NULL;
    size_t tl = strlen(token);

    if (lws_hdr_copy(wsi, v, sizeof(v), h) <= 0)
        return 0;
    for (char *t = strtok_r(v, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ' || *t == '\t')
            t++;
        size_t n = strcspn(t, " \t");
        if (n == tl && strncasecmp(t, token, tl) == 0)
            return 1;
    }
    return 0;
}

/* Sec-WebSocket-Key: base64 of exactly 16 bytes (RFC 6455 §4.1), i.e. 22
 * base64 characters, the last of them with its low 4 bits zero, and "==". */
static int ws_key_ok(struct lws *wsi)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char k[64];
    const char *c;

    if (lws_hdr_copy(wsi, k, sizeof(k), WSI_TOKEN_KEY) != 24 || k[22] != '=' || k[23] != '=')
        return 0;
    for (int i = 0; i < 22; i++)
        if (!k[i] || !strchr(b64, k[i]))
            return 0;
    c = strchr(b64, k[21]);
    return ((c - b64) & 0x0f) == 0;
}

/* lws binds an upgrade to the first protocol of ours that
 * Sec-WebSocket-Protocol names, and drops the connection without an answer
 * when it names none. Only the SFTP protocol may be chosen: "http" would
 * give a WebSocket with no session behind it. No header: lws takes the
 * default protocol, the SFTP one. The walk splits on every byte that is
 * not a name character, finer than lws's tokenizer, so any name lws finds
 * is seen here first. */
static int subprotocol_ok(struct lws *wsi)
{
    char v[128];
    int n = lws_hdr_total_length(wsi, WSI_TOKEN_PROTOCOL);

    if (n == 0)
        return 1;
    /* lws copies at most 127 bytes of it and refuses longer lists. */
    if (n < 0 || lws_hdr_copy(wsi, v, sizeof(v), WSI_TOKEN_PROTOCOL) <= 0)
        return 0;
    for (char *p = v; *p;) {
        size_t len = strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                               "0123456789-._");
        if (len == strlen(SFTP_PROTOCOL) && strncmp(p, SFTP_PROTOCOL, len) == 0)
            return 1;
        if (len == 4 && strncmp(p, "http", 4) == 0)
            return 0;
        p += len ? len : 1;
    }
    return 0;
}

/* RFC 6455 §4.2.1, checked before anything is looked up or used up: lws
 * would otherwise drop a bad handshake after the gate said yes (and after
 * the cookie was spent). Returns 0 or 400 with `why`. */
static int handshake_status(struct lws *wsi, const char **why)
{
    char v[16];

    if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0)
        *why = "an upgrade must be a GET";
    else if (lws_hdr_total_length(wsi, WSI_TOKEN_HOST) <= 0)
        *why = "missing Host";
    else if (!lists_token(wsi, WSI_TOKEN_CONNECTION, "upgrade"))
        *why = "Connection must list upgrade";
    else if (lws_hdr_copy(wsi, v, sizeof(v), WSI_TOKEN_VERSION) <= 0 ||
             strcmp(v, WS_VERSION) != 0)
        *why = "Sec-WebSocket-Version must be 13";
    else if (!ws_key_ok(wsi))
        *why = "missing or malformed Sec-WebSocket-Key";
    else if (!subprotocol_ok(wsi))
        *why = "unsupported Sec-WebSocket-Protocol";
    else
        return 0;
    return 400;
}

/* Every Cookie line of the request, joined with "; ". lws 4.1 would glue
 * the lines together with nothing (or ',') in between and hide the relay
 * cookie behind another one. A cookie value never holds ',' (RFC 6265
 * §4.1.1), so a ',' between pairs is read as a separator too. Returns the
 * length, 0 when there is none, -1 when they do not fit. */
static int cookie_lines(struct lws *wsi, char *out, size_t outlen)
{
    size_t used = 0;

    out[0] = '\0';
    for (int i = 0;; i++) {
        int n = lws_hdr_fragment_length(wsi, WSI_TOKEN_HTTP_COOKIE, i);
        if (n <= 0)
            break;
        if (used + (size_t)n + 3 > outlen)
            return -1;
        if (used) {
            memcpy(out + used, "; ", 2);
            used += 2;
        }
        if (lws_hdr_copy_fragment(wsi, out + used, (int)(outlen - used),
                                  WSI_TOKEN_HTTP_COOKIE, i) != n)
            return -1;
        used += (size_t)n;
    }
    for (size_t i = 0; i < used; i++)
        if (out[i] == ',')
            out[i] = ';';
    return (int)used;
}

static int refuse_upgrade(struct lws *wsi, const char *ip, int status, const char *why)
{
    log_info("upgrade refused: client=%s status=%d%s%s", ip ? ip : "?", status,
             why ? " reason=" : "", why ? why : "");
    http_refuse(wsi, status, why, NULL);
    return -1;  /* lws: hang up once the answer is out */
}

/* PROTOCOL §1.2, answered with a status before anything is upgraded. */
static int confirm_upgrade(struct lws *wsi)
{
    struct server *srv = server_of(wsi);
    char uri[64], ip[CLIENT_IP_MAX], origin[512], host[512], port[512], mode[64];
    char *cookie = NULL;
    const char *why = NULL, *m;
    struct upgrade_req req;
    struct upgrade_target target;
    int status, n;

    if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0 ||
        strcmp(uri, "/relay/ws") != 0)
        return refuse_upgrade(wsi, NULL, 404, "only /relay/ws upgrades");
    if ((status = framing_status(wsi, &why)) != 0)
        return refuse_upgrade(wsi, NULL, status, why);
    if (srv->draining || hub_count(&srv->hub) >= srv->cfg->max_sessions)
        return refuse_upgrade(wsi, NULL, 503, srv->draining ? "draining" : "relay full");
    if ((status = client_ip_status(wsi, ip, sizeof(ip))) != 0)
        return refuse_upgrade(wsi, NULL, status, "client address");
    if ((status = handshake_status(wsi, &why)) != 0)
        return refuse_upgrade(wsi, ip, status, why);
    m = lws_get_urlarg_by_name(wsi, "mode=", mode, sizeof(mode));
    if (!m || strcmp(m, "sftp") != 0)
        return refuse_upgrade(wsi, ip, 400, "mode must be sftp");

    cookie = malloc(COOKIE_HEADER_MAX);
    if (!cookie)
        return refuse_upgrade(wsi, ip, 503, "out of memory");
    memset(&req, 0, sizeof(req));
    req.client_ip = ip;
    if (lws_hdr_copy(wsi, origin, sizeof(origin), WSI_TOKEN_ORIGIN) > 0)
        req.origin = origin;
    n = cookie_lines(wsi, cookie, COOKIE_HEADER_MAX);
    if (n > 0)
        req.cookie_header = cookie;
    req.host = lws_get_urlarg_by_name(wsi, "host=", host, sizeof(host));
    req.port = lws_get_urlarg_by_name(wsi, "port=", port, sizeof(port));
    status = n < 0 ? 431 : access_check_upgrade(srv->access, &req, access_time_now(), &target);
    log_debug("gate: host=%s port=%s origin=%s cookie=%s -> %d", req.host ? req.host : "(none)",
              req.port ? req.port : "(none)", req.origin ? req.origin : "(none)",
              req.cookie_header ? "present" : "absent", status);
    OPENSSL_cleanse(cookie, COOKIE_HEADER_MAX);
    free(cookie);
    if (status)
        return refuse_upgrade(wsi, ip, status, NULL);
    /* From here the connection is a session (or closes): it no longer
     * counts among the client's unupgraded connections. */
    conn_limit_remove(srv->conns, wsi);
    return 0;
}

int http_confirm_upgrade(struct lws *wsi, const char *upgrade)
{
    if (!upgrade || strcasecmp(upgrade, "websocket") != 0)
        return refuse_upgrade(wsi, NULL, 400, "only WebSocket upgrades");
    return confirm_upgrade(wsi);
}

/* lws 4.1 turns a CONNECT request into a raw socket that it never answers
 * and never times out. Answer it like any method we do not serve. */
static int raw_adopted(struct lws *wsi)
{
    static const char answer[] = "HTTP/1.1 405 Method Not Allowed\r\n"
                                 "Content-Type: text/plain; charset=utf-8\r\n"
                                 "Content-Length: 32\r\n"
                                 "Cache-Control: no-store\r\n"
                                 "X-Content-Type-Options: nosniff\r\n"
                                 "Connection: close\r\n"
                                 "\r\n"
                                 "Method Not Allowed: not a proxy\n";
    unsigned char buf[LWS_PRE + sizeof(answer)];

    _Static_assert(sizeof("Method Not Allowed: not a proxy\n") - 1 == 32, "Content-Length");
    memcpy(buf + LWS_PRE, answer, sizeof(answer) - 1);
    lws_write(wsi, buf + LWS_PRE, sizeof(answer) - 1, LWS_WRITE_RAW);
    return -1;
}

/* Accepted connections, counted per client network until they upgrade or
 * close. lws asks about a new socket (FILTER_NETWORK_CONNECTION, with its
 * peer) right before it creates the connection for it (WSI_CREATE, with
 * no socket yet), in the same call: the peer waits in srv->admit between
 * the two. */
static int admit(struct lws *wsi, const struct lws_filter_network_conn_args *f)
{
    struct server *srv = server_of(wsi);
    const struct sockaddr *sa = (const struct sockaddr *)&f->cli_addr;

    srv->admit_ready = 0;
    if (conn_limit_count(srv->conns, sa) >= CONN_LIMIT_PER_CLIENT) {
        log_warn("connection refused: too many unupgraded connections from one client "
                 "(CONN_LIMIT_PER_CLIENT %d)", CONN_LIMIT_PER_CLIENT);
        return 1;
    }
    memcpy(&srv->admit_peer, &f->cli_addr, sizeof(srv->admit_peer));
    srv->admit_ready = 1;
    return 0;
}

static void created(struct lws *wsi)
{
    struct server *srv = server_of(wsi);

    if (!srv->admit_ready)
        return;
    srv->admit_ready = 0;
    /* Cannot fail for the cap (admit() checked it this very call) and the
     * table holds the whole descriptor table. */
    conn_limit_add(srv->conns, wsi, (const struct sockaddr *)&srv->admit_peer);
}

int http_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
            size_t len)
{
    struct http_pss *pss = user;

    switch (reason) {
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
        return admit(wsi, user);
    case LWS_CALLBACK_WSI_CREATE:
        created(wsi);
        return 0;
    case LWS_CALLBACK_WSI_DESTROY:
        conn_limit_remove(server_of(wsi)->conns, wsi);
        return 0;
    case LWS_CALLBACK_RAW_ADOPT:
        return raw_adopted(wsi);
    case LWS_CALLBACK_RAW_RX:
        return -1;
    case LWS_CALLBACK_RAW_RX_FILE:
        server_signal_readable(server_of(wsi), server_of(wsi)->sig_fd);
        return 0;
    case LWS_CALLBACK_HTTP:
        return http_request(wsi, pss, in);
    case LWS_CALLBACK_HTTP_BODY:
        return body_chunk(wsi, pss, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return redeem(wsi, pss);
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return http_confirm_upgrade(wsi, in);
    case LWS_CALLBACK_ESTABLISHED:
        /* A WebSocket bound to this protocol would have no session: the
         * gate prevents it, this is the backstop. */
        return -1;
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
    case LWS_CALLBACK_CLOSED_HTTP:
        if (pss) {
            free(pss->body);
            pss->body = NULL;
            pss->len = 0;
        }
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}
