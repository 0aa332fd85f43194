/* The WebSocket protocol of a session ("wattcloud-sftp") as an lws
 * callback. Service thread only. */
#ifndef WC_WS_H
#define WC_WS_H

#include <stddef.h>

#include <libwebsockets.h>

struct server;

/* The callback and per-connection size for the protocols table. */
int ws_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len);
size_t ws_pss_size(void);

/* Called once per second of the service loop while draining: closes idle
 * sessions, and every session when `force`. */
void ws_drain_tick(struct server *srv, int force);

#endif
