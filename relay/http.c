/* The HTTP surface of PROTOCOL §1: health and readiness, the relay cookie
 * endpoints, the gate in front of the WebSocket upgrade, and static files.
 * Decisions are made by access.c; this file only moves bytes for them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "access.h"
#include "config.h"
#include "log.h"
#include "server.h"
#include "static_files.h"

#define COOKIE_HEADER_MAX 8192
#define BODY_JSON_MAX 512

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

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "ok";
    case 204: return "";
    case 400: return "bad request";
    case 401: return "unauthorized";
    case 403: return "forbidden";
    case 404: return "not found";
    case 405: return "method not allowed";
    case 413: return "payload too large";
    case 429: return "too many requests";
    case 503: return "unavailable";
    default: return "error";
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

/* A body nobody reads: only POST /relay/auth reads its own. */
static int unread_body(struct lws *wsi)
{
    struct http_pss *pss = lws_wsi_user(wsi);

    return !(pss && pss->is_auth) && http_has_body(wsi);
}

/* Send a complete response. Returns what the callback should return. */
static int reply(struct lws *wsi, int status, const char *type, const char *body,
                 const char *set_cookie)
{
    size_t blen = body ? strlen(body) : 0;
    unsigned char hdr[LWS_PRE + 2048], *start = hdr + LWS_PRE, *p = start;
    unsigned char *end = hdr + sizeof(hdr) - 1;
    unsigned char out[LWS_PRE + BODY_JSON_MAX];
    int close_after = unread_body(wsi);

    if (blen > BODY_JSON_MAX)
        return -1;
    if (lws_add_http_common_headers(wsi, (unsigned)status, type, blen, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"x-content-type-options:",
                                    (const unsigned char *)"nosniff", 7, &p, end))
        return -1;
    if (set_cookie &&
        lws_add_http_header_by_name(wsi, (const unsigned char *)"set-cookie:",
                                    (const unsigned char *)set_cookie,
                                    (int)strlen(set_cookie), &p, end))
        return -1;
    if (close_after &&
        lws_add_http_header_by_name(wsi, (const unsigned char *)"connection:",
                                    (const unsigned char *)"close", 5, &p, end))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    if (blen) {
        memcpy(out + LWS_PRE, body, blen);
        if (lws_write(wsi, out + LWS_PRE, blen, LWS_WRITE_HTTP_FINAL) != (int)blen)
            return -1;
    }
    if (close_after)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int reply_status(struct lws *wsi, int status)
{
    char body[64];

    snprintf(body, sizeof(body), "%s\n", status_text(status));
    return reply(wsi, status, "text/plain", body, NULL);
}

static int uri_is(const char *in, const char *path)
{
    return strcmp(in, path) == 0;
}

static int challenge(struct lws *wsi)
{
    struct server *srv = server_of(wsi);
    char ip[64], purpose[128], body[BODY_JSON_MAX];
    const char *p = lws_get_urlarg_by_name(wsi, "purpose=", purpose, sizeof(purpose));
    int status;

    if (server_client_ip(wsi, ip, sizeof(ip)) < 0)
        return reply_status(wsi, 400);
    status = access_http_challenge(srv->access, p, ip, access_time_now(), body, sizeof(body));
    if (status != 200)
        return reply_status(wsi, status);
    return reply(wsi, 200, "application/json", body, NULL);
}

static int redeem(struct lws *wsi, struct http_pss *pss)
{
    struct server *srv = server_of(wsi);
    char ip[64], cookie[1024];
    int status;

    if (pss->too_big)
        return reply_status(wsi, 413);
    if (server_client_ip(wsi, ip, sizeof(ip)) < 0)
        return reply_status(wsi, 400);
    status = access_http_redeem(srv->access, pss->body ? pss->body : "", pss->len, ip,
                                access_time_now(), cookie, sizeof(cookie));
    if (status == 204)
        return reply(wsi, 204, "text/plain", NULL, cookie);
    if (status == 503)
        return reply(wsi, 503, "text/plain", ACCESS_STORE_FULL_TEXT "\n", NULL);
    return reply_status(wsi, status);
}

static int http_request(struct lws *wsi, struct http_pss *pss, const char *uri)
{
    struct server *srv = server_of(wsi);
    int is_get = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0;
    int is_post = lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0;
    char clen[32];

    if (uri_is(uri, "/health"))
        return reply(wsi, 200, "text/plain", "ok\n", NULL);
    if (uri_is(uri, "/ready"))
        return srv->draining ? reply_status(wsi, 503)
                             : reply(wsi, 200, "text/plain", "ready\n", NULL);
    if (uri_is(uri, "/relay/auth/challenge"))
        return is_get ? challenge(wsi) : reply_status(wsi, 405);
    if (uri_is(uri, "/relay/auth")) {
        if (!is_post)
            return reply_status(wsi, 405);
        /* Refuse an announced oversize body before reading any of it. */
        if (lws_hdr_copy(wsi, clen, sizeof(clen), WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 &&
            strtoull(clen, NULL, 10) > srv->cfg->auth_max_body_bytes)
            return reply_status(wsi, 413);
        pss->is_auth = 1;
        return 0;  /* the body follows */
    }
    if (uri_is(uri, "/relay/ws"))
        return reply_status(wsi, 400);  /* a WebSocket endpoint, not a page */
    return static_serve(wsi, uri);  /* SPA_DIR files, else 404 */
}

static int body_chunk(struct lws *wsi, struct http_pss *pss, const void *in, size_t len)
{
    size_t cap = server_of(wsi)->cfg->auth_max_body_bytes;
    char *grown;

    if (!pss->is_auth || pss->too_big || len == 0)
        return 0;
    if (pss->len + len > cap) {
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

/* PROTOCOL §1.2, answered with a status before anything is upgraded. */
static int confirm_upgrade(struct lws *wsi)
{
    struct server *srv = server_of(wsi);
    char uri[64], ip[64], origin[512], host[512], port[512], mode[512];
    char *cookie = NULL;
    struct upgrade_req req;
    struct upgrade_target target;
    int status;

    if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0 ||
        strcmp(uri, "/relay/ws") != 0)
        status = 404;
    else if (srv->draining || hub_count(&srv->hub) >= srv->cfg->max_sessions)
        status = 503;
    else if (server_client_ip(wsi, ip, sizeof(ip)) < 0)
        status = 400;
    else
        status = 0;
    if (status) {
        lws_return_http_status(wsi, (unsigned)status, NULL);
        return 1;
    }
    cookie = malloc(COOKIE_HEADER_MAX);
    if (!cookie)
        return 1;
    memset(&req, 0, sizeof(req));
    req.client_ip = ip;
    if (lws_hdr_copy(wsi, origin, sizeof(origin), WSI_TOKEN_ORIGIN) > 0)
        req.origin = origin;
    if (lws_hdr_copy(wsi, cookie, COOKIE_HEADER_MAX, WSI_TOKEN_HTTP_COOKIE) > 0)
        req.cookie_header = cookie;
    req.host = lws_get_urlarg_by_name(wsi, "host=", host, sizeof(host));
    req.port = lws_get_urlarg_by_name(wsi, "port=", port, sizeof(port));
    status = access_check_upgrade(srv->access, &req, access_time_now(), &target);
    log_debug("gate: host=%s port=%s origin=%s cookie=%s -> %d", req.host ? req.host : "(none)",
              req.port ? req.port : "(none)", req.origin ? req.origin : "(none)",
              req.cookie_header ? "present" : "absent", status);
    if (status == 0) {
        const char *m = lws_get_urlarg_by_name(wsi, "mode=", mode, sizeof(mode));
        if (!m || strcmp(m, "sftp") != 0)
            status = 400;
    }
    OPENSSL_cleanse(cookie, COOKIE_HEADER_MAX);
    free(cookie);
    if (status) {
        log_info("upgrade refused: client=%s status=%d", ip, status);
        lws_return_http_status(wsi, (unsigned)status, NULL);
        return 1;
    }
    return 0;
}

int http_confirm_upgrade(struct lws *wsi, const char *upgrade)
{
    if (!upgrade || strcmp(upgrade, "websocket") != 0) {
        lws_return_http_status(wsi, 400, NULL);
        return 1;
    }
    return confirm_upgrade(wsi);
}

int http_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
            size_t len)
{
    struct http_pss *pss = user;

    switch (reason) {
    case LWS_CALLBACK_HTTP:
        return http_request(wsi, pss, in);
    case LWS_CALLBACK_HTTP_BODY:
        return body_chunk(wsi, pss, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return redeem(wsi, pss);
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return http_confirm_upgrade(wsi, in);
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
