/* The HTTP routes of PROTOCOL §1 as the lws callback of the "http"
 * protocol. */
#ifndef WC_HTTP_H
#define WC_HTTP_H

#include <stddef.h>

#include <libwebsockets.h>

/* The callback and per-connection size for the protocols table. */
int http_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
            size_t len);
size_t http_pss_size(void);

struct server;
struct store_req;

/* A cookie request's answer from the shared store (gate.c passes it on):
 * sends it, or frees it when its connection has gone. Service thread. */
void http_store_answer(struct server *srv, struct store_req *r);

#endif
