/* HTTP/1.1 on the wire, shared by the routes (http.c), the upgrade gate
 * (gate.c) and the static files (static_files.c): the request framing
 * checks every route needs, and the one response writer of the relay. */
#ifndef WC_HTTP_WIRE_H
#define WC_HTTP_WIRE_H

/* A request, headers and body, must be complete this long after its
 * connection was accepted (or after the previous answer, on a kept-alive
 * connection). */
#define HTTP_REQUEST_DEADLINE_SECS 5

#include <stddef.h>

#include <libwebsockets.h>

/* Longest body http_respond() sends (the challenge JSON, reason texts). */
#define HTTP_BODY_MAX 512
/* Longest extra header block http_respond() takes. */
#define HTTP_EXTRA_MAX 1536

/* Write a complete HTTP/1.1 response in one piece: the status line, then
 * Content-Type `type`, Content-Length, Cache-Control: no-store unless
 * `extra` sets its own, X-Content-Type-Options: nosniff, `extra`
 * ("Name: value\r\n" lines, or NULL), and `body` (NULL for none; left out
 * for HEAD but still counted). Every status >= 400 also says
 * Connection: close and the connection is closed after it, as is any
 * connection whose request body nobody read. The status line is written
 * here and not by lws, which answers "HTTP/1.0" during the upgrade
 * callback. Returns what the lws callback should return: 0 to keep the
 * connection for the next request, -1 to close it. */
int http_respond(struct lws *wsi, int status, const char *type, const char *body,
                 const char *extra);

/* http_respond() for a request whose body has been read whole (POST
 * /relay/auth): a success keeps the connection. */
int http_respond_body_read(struct lws *wsi, int status, const char *type, const char *body,
                           const char *extra);

/* http_respond() for a body of `len` bytes of any size (GET /metrics):
 * the response is assembled in one heap buffer and handed to lws whole. */
int http_respond_len(struct lws *wsi, int status, const char *type, const char *body,
                     size_t len);

/* A refusal: `status` with a text/plain body naming the reason
 * ("forbidden: <why>" or the reason phrase alone). Returns -1. */
int http_refuse(struct lws *wsi, int status, const char *why, const char *extra);

/* The reason phrase of an HTTP status ("Not Found"). */
const char *http_reason(int status);

/* Whether the request announced a body. lws 4.1 must not be left with
 * unread body bytes on a keep-alive connection (the next requests parse
 * out of step and the service loop can spin): a route that does not read
 * the body answers, then closes the connection. */
int http_has_body(struct lws *wsi);

/* Content-Length: digits only; repeated lines (lws joins them with ',')
 * must all say the same. Returns the length, or -1. */
long long http_content_length(struct lws *wsi);

/* Request framing every route needs before it can answer without leaving
 * bytes to be read as a next request (RFC 9112 §6.3): headers within
 * HTTP_HEADERS_MAX, not both Content-Length and Transfer-Encoding, a valid
 * Content-Length. Returns 0, or the status to refuse with and `why`. */
int http_framing_status(struct lws *wsi, const char **why);

#endif
