/* The HTTP routes of PROTOCOL §1: health and readiness, the relay cookie
 * endpoints, static files, and the per-client count of connections not
 * yet upgraded. Decisions are made by access.c, the upgrade by gate.c;
 * this file routes requests and moves bytes for the decisions. */
#include "http.h"
#include "clock.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>


#include "access.h"
#include "client_ip.h"
#include "config.h"
#include "conn_limit.h"
#include "gate.h"
#include "http_wire.h"
#include "log.h"
#include "metrics.h"
#include "netguard.h"
#include "server_ctx.h"
#include "signals.h"
#include "static_files.h"
#include "store.h"
#include "wipe.h"

/* A cookie request waiting for a shared store (store.h). Owned by the
 * store between submit and answer, then by the connection; a connection
 * that closes meanwhile leaves it `cancelled` for http_store_answer() to
 * free. */
struct http_wait {
    struct store_req req;
    struct lws *wsi;
    int redeem;             /* POST /relay/auth, else the challenge */
    int answered;
    int cancelled;
};

struct http_pss {
    struct http_wait *wait; /* a store answer this request waits for */
    char *body;             /* POST /relay/auth body, up to the cap */
    size_t len;
    int too_big;
    int is_auth;
    int64_t deadline_ms;    /* monotonic: the auth body must be in by then */
};

size_t http_pss_size(void)
{
    return sizeof(struct http_pss);
}

/* lws re-arms its body timeout on every chunk, so a body sent a byte at a
 * time would hold its connection for hours: keep our own deadline for the
 * whole body and give lws only what is left of it. Returns -1 when the
 * deadline has passed (the connection is closed). */
static int body_deadline(struct lws *wsi, struct http_pss *pss)
{
    int64_t left = pss->deadline_ms - clock_now_ms();

    if (left <= 0)
        return -1;
    lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, (int)((left + 999) / 1000));
    return 0;
}

static int uri_is(const char *in, const char *path)
{
    return strcmp(in, path) == 0;
}

static int store_unavailable(struct lws *wsi, const char *what, const char *ip)
{
    char why[STORE_NAME_MAX + 32];

    snprintf(why, sizeof(why), "state store %s unavailable",
             store_name(access_store(server_of(wsi)->access)));
    log_warn("%s refused: client=%s status=503 reason=%s", what, ip, why);
    return http_refuse(wsi, 503, why, NULL);
}

static int challenge_answer(struct lws *wsi, struct store_req *r)
{
    struct server *srv = server_of(wsi);
    char body[HTTP_BODY_MAX];
    char id[AUTH_UUID_LEN + 1];
    int status;

    /* The nonce_id is public (the client gets it) and makes each line
     * its own, so logs show which relay issued which challenge. */
    memcpy(id, r->ch.nonce_id, sizeof(id));
    status = access_challenge_end(srv->access, r, body, sizeof(body));
    log_debug("challenge: client=%s nonce_id=%s -> %d", r->client_ip, id[0] ? id : "-", status);
    if (status == 503)
        return store_unavailable(wsi, "challenge", r->client_ip);
    if (status != 200)
        return http_refuse(wsi, status, NULL, NULL);
    metrics_challenge_issued();
    return http_respond(wsi, 200, "application/json", body, NULL);
}

static int redeem_answer(struct lws *wsi, struct store_req *r)
{
    struct server *srv = server_of(wsi);
    char cookie[ACCESS_SET_COOKIE_MAX], extra[ACCESS_SET_COOKIE_MAX + 32];
    int status, rc;

    status = access_redeem_end(srv->access, r, cookie, sizeof(cookie));
    log_debug("cookie: client=%s nonce_id=%s -> %d", r->client_ip, r->nonce_id, status);
    if (status == 503 && store_shared(access_store(srv->access)))
        return store_unavailable(wsi, "cookie", r->client_ip);
    if (status == 503)
        return http_refuse(wsi, status, ACCESS_STORE_FULL_TEXT, NULL);
    if (status != 204)
        return http_refuse(wsi, status, NULL, NULL);
    metrics_cookie_issued();
    snprintf(extra, sizeof(extra), "Set-Cookie: %s\r\n", cookie);
    rc = http_respond_body_read(wsi, 204, "text/plain", NULL, extra);
    wipe_mem(cookie, sizeof(cookie));
    wipe_mem(extra, sizeof(extra));
    return rc;
}

/* Ask the store. The embedded one answers at once; a shared one later,
 * through http_store_answer() and a writable callback. */
static int ask(struct lws *wsi, struct http_pss *pss, struct http_wait *w)
{
    if (store_submit(access_store(server_of(wsi)->access), &w->req) == STORE_PENDING) {
        w->wsi = wsi;
        pss->wait = w;
        return 0;
    }
    {
        int rc = w->redeem ? redeem_answer(wsi, &w->req) : challenge_answer(wsi, &w->req);
        wipe_mem(w, sizeof(*w));
        free(w);
        return rc;
    }
}

static int challenge(struct lws *wsi, struct http_pss *pss)
{
    struct server *srv = server_of(wsi);
    char ip[CLIENT_IP_MAX], purpose[128];
    const char *p = lws_get_urlarg_by_name(wsi, "purpose=", purpose, sizeof(purpose));
    struct http_wait *w;
    int status;

    if ((status = gate_client_ip_status(wsi, ip, sizeof(ip))) != 0)
        return http_refuse(wsi, status, "client address", NULL);
    w = calloc(1, sizeof(*w));
    if (!w)
        return http_refuse(wsi, 503, "out of memory", NULL);
    status = access_challenge_begin(srv->access, p, ip, access_time_now(), &w->req);
    if (status) {
        free(w);
        return http_refuse(wsi, status, NULL, NULL);
    }
    w->req.owner = w;
    w->req.owner_kind = GATE_OWNER_HTTP;
    return ask(wsi, pss, w);
}

static int redeem(struct lws *wsi, struct http_pss *pss)
{
    struct server *srv = server_of(wsi);
    char ip[CLIENT_IP_MAX];
    struct http_wait *w;
    int status;

    if (pss->too_big) {
        metrics_redeem_refused(MR_REDEEM_TOO_LARGE);
        return http_refuse(wsi, 413, NULL, NULL);
    }
    if ((status = gate_client_ip_status(wsi, ip, sizeof(ip))) != 0)
        return http_refuse(wsi, status, "client address", NULL);
    w = calloc(1, sizeof(*w));
    if (!w)
        return http_refuse(wsi, 503, "out of memory", NULL);
    w->redeem = 1;
    status = access_redeem_begin(srv->access, pss->body ? pss->body : "", pss->len, ip,
                                 access_time_now(), &w->req);
    if (status) {
        free(w);
        return http_refuse(wsi, status, NULL, NULL);
    }
    w->req.owner = w;
    w->req.owner_kind = GATE_OWNER_HTTP;
    return ask(wsi, pss, w);
}

void http_store_answer(struct server *srv, struct store_req *r)
{
    struct http_wait *w = r->owner;

    (void)srv;
    if (w->cancelled) {
        wipe_mem(w, sizeof(*w));
        free(w);
        return;
    }
    w->answered = 1;
    lws_callback_on_writable(w->wsi);
}

/* The store answered: send what it decided. */
static int http_writeable(struct lws *wsi, struct http_pss *pss)
{
    struct http_wait *w = pss->wait;
    int rc;

    if (!w || !w->answered)
        return 0;
    pss->wait = NULL;
    rc = w->redeem ? redeem_answer(wsi, &w->req) : challenge_answer(wsi, &w->req);
    wipe_mem(w, sizeof(*w));
    free(w);
    return rc;
}

/* The connection goes: a wait still with the store is left for it to
 * free. */
static void drop_wait(struct http_pss *pss)
{
    struct http_wait *w = pss ? pss->wait : NULL;

    if (!w)
        return;
    pss->wait = NULL;
    if (w->answered) {
        wipe_mem(w, sizeof(*w));
        free(w);
    } else {
        w->cancelled = 1;
    }
}

/* POST /relay/auth: the body is read only with a valid Content-Length
 * under the cap; lws 4.1 would otherwise wait for a chunked or unbounded
 * body until its timeout and never answer. */
static int auth_start(struct lws *wsi, struct http_pss *pss)
{
    long long len;

    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0 ||
        lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0) {
        metrics_redeem_refused(MR_REDEEM_MALFORMED);
        return http_refuse(wsi, 411, "Content-Length required", NULL);
    }
    len = http_content_length(wsi);
    if (len < 0) {
        metrics_redeem_refused(MR_REDEEM_MALFORMED);
        return http_refuse(wsi, 400, "invalid Content-Length", NULL);
    }
    if ((unsigned long long)len > server_of(wsi)->cfg->auth_max_body_bytes) {
        metrics_redeem_refused(MR_REDEEM_TOO_LARGE);
        return http_refuse(wsi, 413, NULL, NULL);
    }
    pss->is_auth = 1;
    pss->deadline_ms = clock_now_ms() + HTTP_REQUEST_DEADLINE_SECS * 1000;
    return body_deadline(wsi, pss);  /* the body follows */
}

/* Whether the client of this request may read /metrics: its address (the
 * TCP peer, or what a trusted proxy reports) lies in METRICS_ALLOW. The
 * proxy's report counts, not the proxy: a proxy that passed /metrics on
 * would otherwise publish it to everyone as a loopback client. */
static int metrics_allowed(struct lws *wsi)
{
    const struct config *cfg = server_of(wsi)->cfg;
    char ip[CLIENT_IP_MAX];
    struct sockaddr_storage sa;
    socklen_t salen;

    if (gate_client_ip(wsi, ip, sizeof(ip)) != 0 || !netguard_literal(ip, &sa, &salen))
        return 0;
    for (int i = 0; i < cfg->n_metrics_allow; i++)
        if (netguard_cidr_contains(&cfg->metrics_allow[i], (struct sockaddr *)&sa))
            return 1;
    return 0;
}

/* GET /metrics: the exposition is written into one buffer and sent whole,
 * so no session waits for a scrape (metrics.c takes no lock). */
static int metrics(struct lws *wsi)
{
    char *body;
    long n;
    int rc;

    if (!metrics_allowed(wsi))
        return http_refuse(wsi, 403, "not in METRICS_ALLOW", NULL);
    body = malloc(METRICS_BODY_MAX);
    if (!body)
        return http_refuse(wsi, 503, "out of memory", NULL);
    n = metrics_format(body, METRICS_BODY_MAX);
    rc = n < 0 ? http_refuse(wsi, 500, "metrics too large", NULL)
               : http_respond_len(wsi, 200, METRICS_CONTENT_TYPE, body, (size_t)n);
    free(body);
    return rc;
}

/* /ready: 503 while draining, and while the shared store is away, so the
 * load balancer sends new sessions elsewhere. */
static int ready(struct lws *wsi, struct server *srv)
{
    char why[STORE_NAME_MAX + 32];

    if (srv->draining)
        return http_refuse(wsi, 503, "draining", NULL);
    if (!store_ready(access_store(srv->access))) {
        snprintf(why, sizeof(why), "state store %s unavailable",
                 store_name(access_store(srv->access)));
        return http_refuse(wsi, 503, why, NULL);
    }
    return http_respond(wsi, 200, "text/plain", "ready\n", NULL);
}

static int http_request(struct lws *wsi, struct http_pss *pss, const char *uri)
{
    struct server *srv = server_of(wsi);
    int is_get = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0;
    int is_post = lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0;
    const char *why = NULL;
    int status = http_framing_status(wsi, &why);

    if (status)
        return http_refuse(wsi, status, why, NULL);
    if (uri_is(uri, "/health"))
        return http_respond(wsi, 200, "text/plain", "ok\n", NULL);
    if (uri_is(uri, "/ready"))
        return ready(wsi, srv);
    if (uri_is(uri, "/metrics"))
        return is_get ? metrics(wsi) : http_refuse(wsi, 405, NULL, "Allow: GET\r\n");
    if (uri_is(uri, "/relay/auth/challenge"))
        return is_get ? challenge(wsi, pss) : http_refuse(wsi, 405, NULL, "Allow: GET\r\n");
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

    if (pss->is_auth && body_deadline(wsi, pss) < 0)
        return -1;
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

/* The table of unupgraded connections is full (many networks each under
 * their cap, or a trusted proxy's clients): the oldest connection of the
 * network holding the most goes, so that a newcomer is served instead of
 * waiting for lws's table to free. Its count goes now, its descriptor on
 * lws's next turn; the table is sized below lws's (server.c) so lws always
 * has room to accept the newcomer meanwhile. */
static void make_room(struct server *srv)
{
    struct lws *victim = (struct lws *)conn_limit_victim(srv->conns);

    if (!victim)
        return;
    conn_limit_remove(srv->conns, victim);
    /* A kill on lws's next turn alone is not enough: lws replaces it with a
     * timeout of its own whenever a request's headers complete or a
     * keep-alive answer ends, so a busy victim lived on, uncounted. With
     * its socket shut down lws reads its end on that turn whatever. */
    shutdown(lws_get_socket_fd(victim), SHUT_RDWR);
    lws_set_timeout(victim, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    log_warn("connection closed to make room: the table of unupgraded connections is full; "
             "the busiest client network loses its oldest");
}

/* Accepted connections, counted per client network until they upgrade or
 * close. lws asks about a new socket (FILTER_NETWORK_CONNECTION, with its
 * peer) right before it creates the connection for it (WSI_CREATE, with
 * no socket yet), in the same call: the peer waits in srv->admit between
 * the two. A trusted proxy is counted but not capped (conn_limit.h). */
static int admit(struct lws *wsi, const struct lws_filter_network_conn_args *f)
{
    struct server *srv = server_of(wsi);
    const struct sockaddr *sa = (const struct sockaddr *)&f->cli_addr;

    srv->admit_ready = 0;
    srv->admit_capped = !client_ip_trusted_addr(srv->cfg, sa);
    if (srv->admit_capped && conn_limit_count(srv->conns, sa) >= CONN_LIMIT_PER_CLIENT) {
        log_warn("connection refused: too many unupgraded connections from one client "
                 "(CONN_LIMIT_PER_CLIENT %d)", CONN_LIMIT_PER_CLIENT);
        return 1;
    }
    if (conn_limit_full(srv->conns))
        make_room(srv);
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
    /* Cannot fail: admit() checked the cap and made room this very call. */
    conn_limit_add(srv->conns, wsi, (const struct sockaddr *)&srv->admit_peer,
                   srv->admit_capped);
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
        gate_forget(server_of(wsi), wsi);
        return 0;
    case LWS_CALLBACK_RAW_ADOPT:
        return raw_adopted(wsi);
    case LWS_CALLBACK_RAW_RX:
        return -1;
    case LWS_CALLBACK_RAW_RX_FILE:
        signals_read(server_of(wsi)->sig_fd, &server_of(wsi)->got_term,
                     &server_of(wsi)->got_hup);
        return 0;
    case LWS_CALLBACK_HTTP:
        return http_request(wsi, pss, in);
    case LWS_CALLBACK_HTTP_BODY:
        return body_chunk(wsi, pss, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return redeem(wsi, pss);
    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (pss && pss->wait)
            return http_writeable(wsi, pss);
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return gate_confirm_upgrade(wsi, in);
    case LWS_CALLBACK_ESTABLISHED:
        /* A WebSocket bound to this protocol would have no session: the
         * gate prevents it, this is the backstop. */
        return -1;
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
    case LWS_CALLBACK_CLOSED_HTTP:
        drop_wait(pss);
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
