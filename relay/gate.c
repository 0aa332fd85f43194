/* The gate in front of the WebSocket upgrade (PROTOCOL §1.2): the
 * RFC 6455 handshake checks, the client address, and the access decision
 * (access.c), answered with an HTTP status before anything is upgraded.
 * lws asks whichever protocol a connection is bound to at that moment, so
 * both the HTTP and the WebSocket callback route here. */
#include "gate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


#include "access.h"
#include "client_ip.h"
#include "config.h"
#include "conn_limit.h"
#include "http_wire.h"
#include "log.h"
#include "metrics.h"
#include "server_ctx.h"
#include "wipe.h"

/* All Cookie header lines of one request together. */
#define COOKIE_HEADER_MAX 8192
/* The only WebSocket version there is (RFC 6455 §4.1). */
#define WS_VERSION "13"
/* The WebSocket protocol our sessions run on (server.c's table). */
#define SFTP_PROTOCOL "wattcloud-sftp"

int gate_client_ip(struct lws *wsi, char *out, size_t outlen)
{
    struct server *srv = server_of(wsi);
    char peer[128], *xff = NULL;
    int len, rc;

    if (!lws_get_peer_simple(wsi, peer, sizeof(peer)))
        return GATE_E_PEER;
    len = lws_hdr_total_length(wsi, WSI_TOKEN_X_FORWARDED_FOR);
    /* Only a trusted proxy's header is read, and then all of it. */
    if (len > 0 && client_ip_trusted(srv->cfg, peer)) {
        if (len > CLIENT_IP_XFF_MAX)
            return GATE_E_XFF_LONG;
        xff = malloc((size_t)len + 1);
        if (!xff)
            return GATE_E_PEER;
        if (lws_hdr_copy(wsi, xff, len + 1, WSI_TOKEN_X_FORWARDED_FOR) < 0) {
            free(xff);
            return GATE_E_PEER;
        }
    }
    rc = client_ip_resolve(srv->cfg, peer, xff, out, outlen);
    free(xff);
    return rc;
}

int gate_client_ip_status(struct lws *wsi, char *ip, size_t iplen)
{
    int rc = gate_client_ip(wsi, ip, iplen);

    return rc == 0 ? 0 : rc == GATE_E_XFF_LONG ? 431 : 400;
}

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
    metrics_upgrade_refused(status);
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
    if ((status = http_framing_status(wsi, &why)) != 0)
        return refuse_upgrade(wsi, NULL, status, why);
    if (srv->draining || session_hub_count(&srv->hub) >= srv->cfg->max_sessions)
        return refuse_upgrade(wsi, NULL, 503, srv->draining ? "draining" : "relay full");
    if ((status = gate_client_ip_status(wsi, ip, sizeof(ip))) != 0)
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
    wipe_mem(cookie, COOKIE_HEADER_MAX);
    free(cookie);
    if (status)
        return refuse_upgrade(wsi, ip, status, NULL);
    /* From here the connection is a session (or closes): it no longer
     * counts among the client's unupgraded connections. */
    conn_limit_remove(srv->conns, wsi);
    return 0;
}

int gate_confirm_upgrade(struct lws *wsi, const char *upgrade)
{
    if (!upgrade || strcasecmp(upgrade, "websocket") != 0)
        return refuse_upgrade(wsi, NULL, 400, "only WebSocket upgrades");
    return confirm_upgrade(wsi);
}
