/* The daemon's process-wide state and its libwebsockets service loop. The
 * HTTP routes (http.c) and the WebSocket protocol (ws.c) reach it through
 * lws_context_user(). */
#ifndef WC_SERVER_H
#define WC_SERVER_H

#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include <libwebsockets.h>

#include "session.h"

struct conn_limit;

/* Everything here is touched by the service thread only, except `hub`
 * (its own lock) and `access` (see access.h). */
struct server {
    const struct config *cfg;
    struct access *access;
    struct session_hub hub;
    struct lws_context *ctx;
    struct conn_limit *conns;      /* unupgraded connections per client */
    struct sockaddr_storage admit_peer;  /* accepted, not yet created (http.c) */
    int admit_ready;
    int sig_fd;                    /* signalfd of SIGTERM/SIGINT/SIGHUP */
    int got_term, got_hup;
    int draining;          /* SIGTERM seen: no new sessions, /ready is 503 */
    int64_t drain_deadline_ms;     /* CLOCK_MONOTONIC */
};

/* Block SIGTERM, SIGINT and SIGHUP in the calling thread and every thread
 * it creates later (call first thing in main(): server_run() reads them
 * from a signalfd), and ignore SIGPIPE. */
void server_signals_block(void);

/* Run until SIGTERM/SIGINT and the drain are done. Returns the exit status
 * (2: the descriptor limit or a file named by a setting is unusable). When
 * session workers do not stop, exits the process without freeing what
 * they use. */
int server_run(const struct config *cfg);

/* The signalfd `fd` is readable (http.c's raw-file callback). */
void server_signal_readable(struct server *srv, int fd);

/* The server a wsi belongs to. */
struct server *server_of(struct lws *wsi);

/* The client IP of a request as PROTOCOL §1.2 defines it (X-Forwarded-For
 * only from trusted proxies, read whole up to CLIENT_IP_XFF_MAX). Returns 0,
 * -1 when the peer is unreadable, -2 when X-Forwarded-For is longer than
 * the relay reads (answer 431 rather than guess). */
int server_client_ip(struct lws *wsi, char *out, size_t outlen);

/* Protocol callbacks, for the protocols table. */
int http_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
            size_t len);
int ws_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len);
size_t http_pss_size(void);
/* The upgrade gate; lws asks whichever protocol the connection is bound to
 * at that moment, so both callbacks route here. */
int http_confirm_upgrade(struct lws *wsi, const char *upgrade);
size_t ws_pss_size(void);

/* Called once per second of the service loop while draining. */
void ws_drain_tick(struct server *srv, int force);

#endif
