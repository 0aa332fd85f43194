/* The upgrade gate of PROTOCOL §1.2 and the client address it is decided
 * for. Service thread only. */
#ifndef WC_GATE_H
#define WC_GATE_H

#include <stddef.h>

#include <libwebsockets.h>

/* Answer LWS_CALLBACK_HTTP_CONFIRM_UPGRADE (`upgrade` is lws's `in`):
 * returns 0 to let the upgrade proceed, or -1 after writing the refusal
 * (lws then closes the connection). */
int gate_confirm_upgrade(struct lws *wsi, const char *upgrade);

/* Why gate_client_ip() has no address. */
#define GATE_E_PEER     (-1)  /* the peer or the header is unreadable */
#define GATE_E_XFF_LONG (-2)  /* X-Forwarded-For longer than the relay reads */

/* The client IP of a request as PROTOCOL §1.2 defines it (X-Forwarded-For
 * only from trusted proxies, read whole up to CLIENT_IP_XFF_MAX). Returns 0,
 * GATE_E_PEER, or GATE_E_XFF_LONG (answer 431 rather than guess). */
int gate_client_ip(struct lws *wsi, char *out, size_t outlen);

/* gate_client_ip() as an HTTP answer: 0, 400 (no usable address) or 431
 * (X-Forwarded-For longer than the relay reads). */
int gate_client_ip_status(struct lws *wsi, char *ip, size_t iplen);

/* Who a store request belongs to (store_req.owner_kind). */
#define GATE_OWNER_UPGRADE 1   /* an upgrade waiting here */
#define GATE_OWNER_HTTP    2   /* a cookie request waiting in http.c */

struct server;

/* The shared store has answered: hand waiting upgrades back to lws and
 * pass cookie requests to http.c. Service thread, on
 * LWS_CALLBACK_EVENT_WAIT_CANCELLED. */
void gate_store_answers(struct server *srv);

/* lws is done with `wsi` (LWS_CALLBACK_WSI_DESTROY): forget an answer or a
 * lease still kept for it. */
void gate_forget(struct server *srv, struct lws *wsi);

/* At exit, after store_stop(): free every wait. */
void gate_shutdown(struct server *srv);

#endif
