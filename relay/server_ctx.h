/* The daemon's process-wide state, as every lws callback sees it. The HTTP
 * routes (http.c), the upgrade gate (gate.c), the static files and the
 * WebSocket protocol (ws.c) reach it through lws_context_user(): they need
 * this type, not the file that registers them (server.c). */
#ifndef WC_SERVER_CTX_H
#define WC_SERVER_CTX_H

#include <stdint.h>
#include <sys/socket.h>

#include <libwebsockets.h>

#include "session.h"

struct access;
struct config;
struct conn_limit;
struct gate_wait;
struct store_req;

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
    int admit_capped;              /* admit_peer is not a trusted proxy */
    int sig_fd;                    /* signalfd of SIGTERM/SIGINT/SIGHUP */
    int got_term, got_hup;
    int draining;          /* SIGTERM seen: no new sessions, /ready is 503 */
    int64_t drain_deadline_ms;     /* CLOCK_MONOTONIC */
    /* Wakes the service loop every LOOP_TICK_USECS (server.c); service
     * thread only. */
    lws_sorted_usec_list_t loop_tick;
    void *(*worker)(void *);       /* a session's thread, given to server_run() */
    /* Where the gate hands a shared store's answers to HTTP requests
     * (http_store_answer, set by server.c): the gate is below http.c. */
    void (*http_store_answer)(struct server *srv, struct store_req *r);
    /* Upgrades waiting for a shared store's answer, and those answered and
     * handed back to lws that lws has not asked about yet (gate.c). */
    struct gate_wait *gate_waits;
    int n_gate_waits;
    /* The lease an accepted upgrade took, until ESTABLISHED adopts it
     * (gate.c to ws.c, within one lws call). */
    struct lws *lease_wsi;
    char lease_key[64];
    char lease_id[48];
};

/* The server a wsi belongs to. */
static inline struct server *server_of(struct lws *wsi)
{
    return lws_context_user(lws_get_context(wsi));
}

#endif
