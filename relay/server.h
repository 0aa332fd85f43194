/* The daemon's process-wide state and its libwebsockets service loop. The
 * HTTP routes (http.c) and the WebSocket protocol (ws.c) reach it through
 * lws_context_user(). */
#ifndef WC_SERVER_H
#define WC_SERVER_H

#include <time.h>

#include <libwebsockets.h>

#include "session.h"

struct server {
    const struct config *cfg;
    struct access *access;
    struct session_hub hub;
    struct lws_context *ctx;
    int draining;          /* SIGTERM seen: no new sessions, /ready is 503 */
    time_t drain_deadline;
};

/* Run until SIGTERM/SIGINT and the drain are done. Returns the exit status. */
int server_run(const struct config *cfg);

/* The server a wsi belongs to. */
struct server *server_of(struct lws *wsi);

/* The client IP of a request as PROTOCOL §1.2 defines it (X-Forwarded-For
 * only from trusted proxies). Returns 0 or -1. */
int server_client_ip(struct lws *wsi, char *out, size_t outlen);

/* Protocol callbacks, for the protocols table. */
int http_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
            size_t len);
int ws_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len);
size_t http_pss_size(void);
/* Whether the request announced a body. lws 4.1 must not be left with
 * unread body bytes on a keep-alive connection (the next requests parse
 * out of step and the service loop can spin): a route that does not read
 * the body answers, then closes the connection. */
int http_has_body(struct lws *wsi);
/* The upgrade gate; lws asks whichever protocol the connection is bound to
 * at that moment, so both callbacks route here. */
int http_confirm_upgrade(struct lws *wsi, const char *upgrade);
size_t ws_pss_size(void);

/* Called once per second of the service loop while draining. */
void ws_drain_tick(struct server *srv, int force);

#endif
