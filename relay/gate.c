/* The gate in front of the WebSocket upgrade (PROTOCOL §1.2): the
 * RFC 6455 handshake checks, the client address, and the access decision
 * (access.c), answered with an HTTP status before anything is upgraded.
 * lws asks whichever protocol a connection is bound to at that moment, so
 * both the HTTP and the WebSocket callback route here. */
#include "gate.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "access.h"
#include "client_ip.h"
#include "config.h"
#include "conn_limit.h"
#include "http_wire.h"
#include "log.h"
#include "metrics.h"
#include "server_ctx.h"
#include "store.h"
#include "wipe.h"

/* All Cookie header lines of one request together. */
#define COOKIE_HEADER_MAX 8192
/* The only WebSocket version there is (RFC 6455 §4.1). */
#define WS_VERSION "13"
/* The WebSocket protocol our sessions run on (server.c's table). */
#define SFTP_PROTOCOL "wattcloud-sftp"
/* The request line and headers an upgrade is handed back to lws with
 * (see "Waiting for a shared store" below): the Cookie and
 * X-Forwarded-For the gate accepts at most, and room for the rest. */
#define GATE_HEAD_MAX (COOKIE_HEADER_MAX + CLIENT_IP_XFF_MAX + 4096)

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

/* Lists as lws_process_ws_upgrade() reads them (lws 4.1 and 4.3 alike):
 * its buffer, of which it copies at most one byte less, and its
 * tokenizer. A list it cannot read there makes lws drop the connection
 * without an answer after the gate said yes and spent the cookie, so the
 * gate reads each such header the same way first. */
#define UPGRADE_LIST_MAX 128
#define UPGRADE_LIST_FLAGS (LWS_TOKENIZE_F_COMMA_SEP_LIST | LWS_TOKENIZE_F_MINUS_NONTERM | \
                            LWS_TOKENIZE_F_DOT_NONTERM | LWS_TOKENIZE_F_RFC7230_DELIMS)

/* Start reading header `h` as lws does into `list` (UPGRADE_LIST_MAX
 * bytes). Returns 0, or -1 when lws could not read it at all. */
static int upgrade_list(struct lws *wsi, enum lws_token_indexes h, char *list,
                        struct lws_tokenize *ts)
{
    int n;

    lws_tokenize_init(ts, list, UPGRADE_LIST_FLAGS);
    n = lws_hdr_copy(wsi, list, UPGRADE_LIST_MAX - 1, h);
    if (n <= 0)
        return -1;
    ts->len = (unsigned)n;
    return 0;
}

/* Connection lists "upgrade" where lws will find it: only names and commas
 * before it (lws gives up on anything else, an empty element, a number or
 * a quoted string included), and the whole word, where lws takes any
 * prefix of it. */
static int connection_upgrade(struct lws *wsi)
{
    char list[UPGRADE_LIST_MAX];
    struct lws_tokenize ts;
    lws_tokenize_elem e;

    if (upgrade_list(wsi, WSI_TOKEN_CONNECTION, list, &ts) < 0)
        return 0;
    do {
        e = lws_tokenize(&ts);
        if (e == LWS_TOKZE_TOKEN && ts.token_len == 7 &&
            strncasecmp(ts.token, "upgrade", 7) == 0)
            return 1;
    } while (e == LWS_TOKZE_TOKEN || e == LWS_TOKZE_DELIMITER);
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
 * when it names none, or when its tokenizer fails on an element before that
 * (a quoted string, "x=y", bytes that are not UTF-8), or an element is a
 * name of 63 bytes or more, or the list is 127 bytes or longer: all after
 * the gate said yes and spent the cookie. So the list is read here exactly
 * as lws reads it (lws_process_ws_upgrade(): the same buffer sizes, the
 * same tokenizer and flags), and the upgrade goes ahead only when lws will
 * take it. Only the SFTP protocol may be chosen: "http" would give a
 * WebSocket with no session behind it. No header: lws takes the default
 * protocol, the SFTP one. */
/* lws's buffer for one name; lws_tokenize_cstr() takes at most two bytes
 * less. */
#define PROTOCOL_NAME_MAX 64

static int subprotocol_ok(struct lws *wsi)
{
    char list[UPGRADE_LIST_MAX], name[PROTOCOL_NAME_MAX];
    struct lws_tokenize ts;
    lws_tokenize_elem e;

    if (lws_hdr_total_length(wsi, WSI_TOKEN_PROTOCOL) == 0)
        return 1;
    if (upgrade_list(wsi, WSI_TOKEN_PROTOCOL, list, &ts) < 0)
        return 0;
    do {
        e = lws_tokenize(&ts);
        if (e == LWS_TOKZE_TOKEN) {
            if (lws_tokenize_cstr(&ts, name, sizeof(name)))
                return 0;
            if (strcmp(name, SFTP_PROTOCOL) == 0)
                return 1;
            if (strcmp(name, "http") == 0)
                return 0;
        } else if (e != LWS_TOKZE_DELIMITER && e != LWS_TOKZE_ENDED) {
            return 0;
        }
    } while (e > 0);
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
    else if (!connection_upgrade(wsi))
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

/* ---- Waiting for a shared store --------------------------------------------
 *
 * With a shared store (STATE_URL) checks 7-9 need a round trip, and lws
 * asks LWS_CALLBACK_HTTP_CONFIRM_UPGRADE for an answer on the spot: it has
 * no way to hold an upgrade and answer it later, and answering it with
 * "yes" sends 101 at once. So the gate takes the client's socket out of
 * lws instead: the descriptor is duplicated, a stand-in socket whose peer
 * is already gone takes its number (lws closes that one), and the request
 * is written down again from the headers lws parsed. When the store has
 * answered, the socket goes back to lws with that request as if it had
 * just been read (lws_adopt_socket_vhost_readbuf); lws parses it and asks
 * the gate again, and this time the answer is there. Every check runs
 * again on the second pass, so every answer is the HTTP status it always
 * was (PROTOCOL §1.2), and a second pass that does not see the same cookie,
 * client and target as the first refuses with 400. This needs the socket
 * to carry plain HTTP: a relay with a shared store runs behind a TLS proxy
 * (config.c refuses TLS_CERT with STATE_URL).
 */

/* Upgrades waiting for the store or for lws at once; more answer 503 at
 * once. Each holds one descriptor and GATE_HEAD_MAX bytes, so a store that
 * stops answering costs at most this many of each until the round trip
 * times out (tests/integration/test_store_hostile.py). */
#define GATE_WAITS_MAX 256
/* decide(): the upgrade waits for the store, nothing to answer now. */
#define GATE_DEFERRED (-2)

struct gate_wait {
    struct store_req req;          /* the store's answer comes back here */
    int fd;                        /* the client's socket, ours until handed back */
    int handed;                    /* handed back to lws, answer not yet read */
    int answered_now;              /* the store refused without queueing */
    struct lws *wsi;               /* the connection lws made of it */
    struct sockaddr_storage peer;
    char *head;                    /* the request written down again */
    size_t len;
    struct gate_wait *next;
};

/* One client (client_ip_key: an address, IPv6 per /64) has at most
 * SFTP_MAX_CONCURRENT_PER_IP upgrades waiting: it can never hold more live
 * sessions than that, and without a bound of its own one client with
 * enough valid cookies could take every GATE_WAITS_MAX slot from the
 * others. Beyond it the upgrade gets the per-client answer, 429. */
static int waits_of(const struct server *srv, const char *key)
{
    int n = 0;

    for (const struct gate_wait *w = srv->gate_waits; w; w = w->next)
        n += strcmp(w->req.key, key) == 0;
    return n;
}

static void wait_free(struct gate_wait *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    if (w->head) {
        wipe_mem(w->head, w->len);
        free(w->head);
    }
    wipe_mem(&w->req, sizeof(w->req));
    free(w);
}

static void wait_unlink(struct server *srv, struct gate_wait *w)
{
    for (struct gate_wait **pp = &srv->gate_waits; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            srv->n_gate_waits--;
            return;
        }
    }
}

/* The answered wait of the connection lws is asking about, taken off the
 * list; NULL when it has none. Matched by descriptor while lws is still
 * inside lws_adopt_socket_vhost_readbuf() (w->wsi not known yet), by
 * connection after. */
static struct gate_wait *wait_take(struct server *srv, struct lws *wsi)
{
    int fd = lws_get_socket_fd(wsi);

    for (struct gate_wait *w = srv->gate_waits; w; w = w->next) {
        if (w->handed && w->fd == fd && (!w->wsi || w->wsi == wsi)) {
            wait_unlink(srv, w);
            w->fd = -1;  /* lws owns it now */
            return w;
        }
    }
    return NULL;
}

/* Percent-encode `in` into `out` at *o, keeping the first '=' (a query
 * argument as lws split and decoded it). -1 when it does not fit. */
static int put_arg(char *out, size_t outlen, size_t *o, const char *in)
{
    static const char hex[] = "0123456789ABCDEF";
    int eq = 0;

    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        int plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                    (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' ||
                    *p == '~' || (*p == '=' && !eq);
        if (*p == '=')
            eq = 1;
        if (*o + 4 > outlen)
            return -1;
        if (plain) {
            out[(*o)++] = (char)*p;
        } else {
            out[(*o)++] = '%';
            out[(*o)++] = hex[*p >> 4];
            out[(*o)++] = hex[*p & 15];
        }
    }
    return 0;
}

/* Append "Name: <header h>\r\n" when the request has it. -1 when it does
 * not fit. */
static int put_header(struct lws *wsi, char *out, size_t outlen, size_t *o, const char *name,
                      enum lws_token_indexes h)
{
    int n = lws_hdr_total_length(wsi, h);
    size_t nl = strlen(name);

    if (n <= 0)
        return 0;
    if (*o + nl + 2 + (size_t)n + 3 > outlen)
        return -1;
    memcpy(out + *o, name, nl);
    memcpy(out + *o + nl, ": ", 2);
    *o += nl + 2;
    if (lws_hdr_copy(wsi, out + *o, (int)(outlen - *o), h) != n)
        return -1;
    *o += (size_t)n;
    memcpy(out + *o, "\r\n", 2);
    *o += 2;
    return 0;
}

/* The upgrade request again, from what lws parsed: everything the gate and
 * the WebSocket handshake read, nothing else. NULL when it does not fit in
 * GATE_HEAD_MAX (431) or no memory. */
static char *rebuild_request(struct lws *wsi, const char *cookie, size_t *len)
{
    char *out = malloc(GATE_HEAD_MAX), frag[1024];
    size_t o = 0;
    int ok = out != NULL;

    if (ok) {
        memcpy(out, "GET /relay/ws", 13);
        o = 13;
    }
    for (int i = 0; ok; i++) {
        int n = lws_hdr_copy_fragment(wsi, frag, sizeof(frag), WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n < 0 || (n == 0 && lws_hdr_fragment_length(wsi, WSI_TOKEN_HTTP_URI_ARGS, i) <= 0))
            break;
        out[o++] = i ? '&' : '?';
        ok = put_arg(out, GATE_HEAD_MAX, &o, frag) == 0;
    }
    if (ok && o + 64 < GATE_HEAD_MAX) {
        static const char line[] = " HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
        memcpy(out + o, line, sizeof(line) - 1);
        o += sizeof(line) - 1;
    } else {
        ok = 0;
    }
    ok = ok && put_header(wsi, out, GATE_HEAD_MAX, &o, "Host", WSI_TOKEN_HOST) == 0 &&
         put_header(wsi, out, GATE_HEAD_MAX, &o, "Origin", WSI_TOKEN_ORIGIN) == 0 &&
         put_header(wsi, out, GATE_HEAD_MAX, &o, "Sec-WebSocket-Version", WSI_TOKEN_VERSION) == 0 &&
         put_header(wsi, out, GATE_HEAD_MAX, &o, "Sec-WebSocket-Key", WSI_TOKEN_KEY) == 0 &&
         put_header(wsi, out, GATE_HEAD_MAX, &o, "Sec-WebSocket-Protocol", WSI_TOKEN_PROTOCOL) == 0 &&
         put_header(wsi, out, GATE_HEAD_MAX, &o, "X-Forwarded-For",
                    WSI_TOKEN_X_FORWARDED_FOR) == 0;
    if (ok && cookie && cookie[0]) {
        size_t cl = strlen(cookie);
        ok = o + cl + 12 < GATE_HEAD_MAX;
        if (ok) {
            memcpy(out + o, "Cookie: ", 8);
            memcpy(out + o + 8, cookie, cl);
            memcpy(out + o + 8 + cl, "\r\n", 2);
            o += cl + 10;
        }
    }
    if (ok && o + 3 < GATE_HEAD_MAX) {
        memcpy(out + o, "\r\n", 2);
        o += 2;
    } else {
        ok = 0;
    }
    wipe_mem(frag, sizeof(frag));
    if (!ok) {
        if (out) {
            wipe_mem(out, GATE_HEAD_MAX);
            free(out);
        }
        return NULL;
    }
    *len = o;
    return out;
}

/* Take the client's socket away from lws: returns our own descriptor of
 * it, or -1. lws keeps its descriptor number, now a socket whose peer has
 * gone, and closes it as it closes any refused upgrade. */
static int steal_socket(struct lws *wsi)
{
    int fd = lws_get_socket_fd(wsi), keep, sp[2];

    if (fd < 0)
        return -1;
    keep = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (keep < 0)
        return -1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp) < 0) {
        close(keep);
        return -1;
    }
    if (dup3(sp[0], fd, O_CLOEXEC) < 0) {
        close(sp[0]);
        close(sp[1]);
        close(keep);
        return -1;
    }
    close(sp[0]);
    close(sp[1]);
    return keep;
}

/* The lease of an accepted upgrade, for ESTABLISHED (ws.c) to adopt; a
 * lease no ESTABLISHED took (lws failed the handshake after the gate) is
 * given back here. */
static void hand_lease(struct server *srv, struct lws *wsi, const struct store_req *r)
{
    if (srv->lease_wsi && srv->lease_id[0])
        store_lease_drop(access_store(srv->access), srv->lease_key, srv->lease_id);
    srv->lease_wsi = NULL;
    srv->lease_id[0] = '\0';
    if (!r->lease[0])
        return;
    srv->lease_wsi = wsi;
    snprintf(srv->lease_key, sizeof(srv->lease_key), "%s", r->key);
    snprintf(srv->lease_id, sizeof(srv->lease_id), "%s", r->lease);
}

static const char *store_down_why(struct server *srv, char *buf, size_t n)
{
    snprintf(buf, n, "state store %s unavailable", store_name(access_store(srv->access)));
    return buf;
}

/* The second pass's request must be the first's. */
static int same_request(const struct store_req *a, const struct store_req *b)
{
    return strcmp(a->key, b->key) == 0 && strcmp(a->client_ip, b->client_ip) == 0 &&
           strcmp(a->jti, b->jti) == 0 && strcmp(a->host, b->host) == 0 &&
           a->target_refused == b->target_refused;
}

/* Checks 1-10: 0 to upgrade, a status, or GATE_DEFERRED. */
static int decide(struct lws *wsi, const struct upgrade_req *req, const char *cookie,
                  struct upgrade_target *t, const char **why, char *whybuf, size_t whylen)
{
    struct server *srv = server_of(wsi);
    struct store *st = access_store(srv->access);
    struct gate_wait *w = wait_take(srv, wsi);
    struct store_req sr;
    int status, rc;

    status = access_upgrade_begin(srv->access, req, access_time_now(), t, &sr);
    if (w) {
        /* Second pass: the store has answered. */
        if (status == 0 && !same_request(&w->req, &sr)) {
            status = 400;
            *why = "request changed while the store answered";
        }
        if (status == 0) {
            status = access_upgrade_end(srv->access, &w->req, t);
            if (status == 503)
                *why = store_down_why(srv, whybuf, whylen);
        }
        if (status == 0)
            hand_lease(srv, wsi, &w->req);
        else
            store_lease_drop(st, w->req.key, w->req.lease);
        wait_free(w);
        wipe_mem(&sr, sizeof(sr));
        return status;
    }
    if (status)
        return status;
    if (!store_shared(st)) {
        store_submit(st, &sr);  /* the embedded store answers at once */
        return access_upgrade_end(srv->access, &sr, t);
    }
    if (!store_ready(st)) {
        *why = store_down_why(srv, whybuf, whylen);
        return 503;
    }
    if (srv->n_gate_waits >= GATE_WAITS_MAX) {
        *why = "too many upgrades waiting for the state store";
        return 503;
    }
    if (waits_of(srv, sr.key) >= srv->cfg->max_concurrent_per_ip) {
        *why = "too many upgrades from this client waiting for the state store";
        return 429;
    }
    w = calloc(1, sizeof(*w));
    if (!w)
        return 503;
    w->fd = -1;
    w->req = sr;
    wipe_mem(&sr, sizeof(sr));
    w->req.owner = w;
    w->req.owner_kind = GATE_OWNER_UPGRADE;
    w->head = rebuild_request(wsi, cookie, &w->len);
    if (!w->head) {
        wait_free(w);
        return 431;
    }
    {
        socklen_t sl = sizeof(w->peer);
        getpeername(lws_get_socket_fd(wsi), (struct sockaddr *)&w->peer, &sl);
    }
    w->fd = steal_socket(wsi);
    if (w->fd < 0) {
        wait_free(w);
        *why = "cannot hold the connection";
        return 503;
    }
    w->next = srv->gate_waits;
    srv->gate_waits = w;
    srv->n_gate_waits++;
    rc = store_submit(st, &w->req);
    if (rc == STORE_DONE) {
        /* Refused at once (queue full, store just went away): the answer
         * goes the same way as a late one, on the next service turn. */
        w->answered_now = 1;
        lws_cancel_service(lws_get_context(wsi));
    }
    return GATE_DEFERRED;
}

/* Hand an answered upgrade back to lws, which asks the gate again at once
 * (or, when it has no header table free, as soon as it has one). */
static void hand_back(struct server *srv, struct gate_wait *w)
{
    struct lws_vhost *vh = lws_get_vhost_by_name(srv->ctx, "default");
    struct lws *wsi;
    int fd = w->fd;

    w->handed = 1;
    memcpy(&srv->admit_peer, &w->peer, sizeof(srv->admit_peer));
    srv->admit_ready = 1;  /* counted per client again (http.c created()) */
    wsi = vh ? lws_adopt_socket_vhost_readbuf(vh, fd, w->head, w->len) : NULL;
    srv->admit_ready = 0;
    /* `w` may be gone now: the gate read its answer during the call. If it
     * is still listed, lws has not asked yet, or failed (and closed the
     * socket) before it did. */
    for (struct gate_wait *x = srv->gate_waits; x; x = x->next) {
        if (!x->handed || x->wsi || x->fd != fd)
            continue;
        if (wsi) {
            x->wsi = wsi;
        } else {
            wait_unlink(srv, x);
            x->fd = -1;
            store_lease_drop(access_store(srv->access), x->req.key, x->req.lease);
            wait_free(x);
        }
        break;
    }
}

void gate_store_answers(struct server *srv)
{
    struct store *st = access_store(srv->access);
    struct store_req *r = store_take_done(st), *next;

    for (; r; r = next) {
        next = r->next;
        if (r->owner_kind == GATE_OWNER_HTTP)
            srv->http_store_answer(srv, r);
        else
            hand_back(srv, r->owner);
    }
    /* Upgrades the store refused at once (decide()). Handing one back
     * changes the list: start over after each. */
    for (int again = 1; again;) {
        again = 0;
        for (struct gate_wait *w = srv->gate_waits; w; w = w->next) {
            if (!w->handed && w->answered_now) {
                w->answered_now = 0;
                hand_back(srv, w);
                again = 1;
                break;
            }
        }
    }
}

void gate_forget(struct server *srv, struct lws *wsi)
{
    for (struct gate_wait *w = srv->gate_waits; w; w = w->next) {
        if (w->handed && w->wsi == wsi) {
            wait_unlink(srv, w);
            w->fd = -1;  /* closed by lws */
            store_lease_drop(access_store(srv->access), w->req.key, w->req.lease);
            wait_free(w);
            return;
        }
    }
    if (srv->lease_wsi == wsi) {
        store_lease_drop(access_store(srv->access), srv->lease_key, srv->lease_id);
        srv->lease_wsi = NULL;
    }
}

void gate_shutdown(struct server *srv)
{
    struct store *st = access_store(srv->access);
    struct store_req *r, *next;

    /* The store is stopped: what it answered last is not handed back. */
    for (r = st ? store_take_done(st) : NULL; r; r = next) {
        next = r->next;
        if (r->owner_kind == GATE_OWNER_HTTP)
            srv->http_store_answer(srv, r);
    }
    while (srv->gate_waits) {
        struct gate_wait *w = srv->gate_waits;
        srv->gate_waits = w->next;
        if (w->wsi)
            w->fd = -1;
        wait_free(w);
    }
    srv->n_gate_waits = 0;
}

/* PROTOCOL §1.2, answered with a status before anything is upgraded. */
static int confirm_upgrade(struct lws *wsi)
{
    struct server *srv = server_of(wsi);
    char uri[64], ip[CLIENT_IP_MAX], origin[512], host[512], port[512], mode[64];
    char *cookie = NULL;
    const char *why = NULL, *m;
    char store_why[STORE_NAME_MAX + 32];
    struct upgrade_req req;
    struct upgrade_target target;
    int status, n;

    if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0 ||
        strcmp(uri, "/relay/ws") != 0)
        return refuse_upgrade(wsi, NULL, 404, "only /relay/ws upgrades");
    if ((status = http_framing_status(wsi, &why)) != 0)
        return refuse_upgrade(wsi, NULL, status, why);
    if ((status = gate_client_ip_status(wsi, ip, sizeof(ip))) != 0)
        return refuse_upgrade(wsi, NULL, status, "client address");
    if (srv->draining || session_hub_count(&srv->hub) >= srv->cfg->max_sessions)
        return refuse_upgrade(wsi, ip, 503, srv->draining ? "draining" : "relay full");
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
    status = n < 0 ? 431 : decide(wsi, &req, cookie, &target, &why, store_why,
                                   sizeof(store_why));
    log_debug("gate: host=%s port=%s origin=%s cookie=%s -> %d", req.host ? req.host : "(none)",
              req.port ? req.port : "(none)", req.origin ? req.origin : "(none)",
              req.cookie_header ? "present" : "absent", status);
    wipe_mem(cookie, COOKIE_HEADER_MAX);
    free(cookie);
    if (status == GATE_DEFERRED)
        return -1;  /* lws closes a stand-in socket: the client's waits with us */
    if (status)
        return refuse_upgrade(wsi, ip, status, why);
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
