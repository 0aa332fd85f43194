/* HTTP/1.1 on the wire: the framing checks every request passes before a
 * route answers it, and the one writer every HTTP answer goes through. */
#include "http_wire.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The header fields of one request, counted over the fields lws knows by
 * name: above this the answer is 431. lws's own budget (SERVER_HEADER_BUDGET
 * in server.c) is larger, so a request this size still parses and can be
 * answered instead of being dropped without a word. */
#define HTTP_HEADERS_MAX (8 * 1024)

const char *http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

int http_has_body(struct lws *wsi)
{
    char v[32];

    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0)
        return 1;
    return lws_hdr_copy(wsi, v, sizeof(v), WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 &&
           strtoull(v, NULL, 10) > 0;
}

/* The head of a response (status line and headers) for a body of `blen`
 * bytes. Returns its length, or -1 when it does not fit in `room`. */
static int head_of(char *p, size_t room, int status, const char *type,
                   size_t blen, const char *extra, int close_after)
{
    int n = snprintf(p, room,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "%s"
                     "X-Content-Type-Options: nosniff\r\n"
                     "%s%s\r\n",
                     status, http_reason(status), type ? type : "text/plain", blen,
                     extra && strcasestr(extra, "cache-control:") ? ""
                                                                  : "Cache-Control: no-store\r\n",
                     close_after ? "Connection: close\r\n" : "", extra ? extra : "");

    return n < 0 || (size_t)n >= room ? -1 : n;
}

/* A body nobody read keeps the connection from being reused: only POST
 * /relay/auth reads its own, and says so with `body_read`. */
static int respond(struct lws *wsi, int status, const char *type, const char *body,
                   const char *extra, int body_read)
{
    unsigned char buf[LWS_PRE + 512 + HTTP_EXTRA_MAX + HTTP_BODY_MAX];
    char *start = (char *)buf + LWS_PRE, *p = start;
    size_t room = sizeof(buf) - LWS_PRE, blen = body ? strlen(body) : 0;
    int close_after = status >= 400 || (!body_read && http_has_body(wsi));
    int head = lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0;
    int n;

    if (blen > HTTP_BODY_MAX || (extra && strlen(extra) > HTTP_EXTRA_MAX))
        return -1;
    n = head_of(p, room - blen, status, type, blen, extra, close_after);
    if (n < 0)
        return -1;
    p += n;
    if (blen && !head) {
        memcpy(p, body, blen);
        p += blen;
    }
    if (lws_write(wsi, (unsigned char *)start, (size_t)(p - start), LWS_WRITE_HTTP_FINAL) !=
        (int)(p - start))
        return -1;
    if (close_after)
        return -1;  /* lws sends what it still holds, then closes */
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

int http_respond_len(struct lws *wsi, int status, const char *type, const char *body,
                     size_t len)
{
    size_t room = 512 + len;
    unsigned char *buf = malloc(LWS_PRE + room);
    char *start = buf ? (char *)buf + LWS_PRE : NULL;
    int close_after = status >= 400 || http_has_body(wsi);
    int head = lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0;
    int n, rc = -1;

    if (!buf)
        return -1;
    n = head_of(start, room - len, status, type, len, NULL, close_after);
    if (n < 0)
        goto out;
    if (!head)
        memcpy(start + n, body, len);
    n += head ? 0 : (int)len;
    if (lws_write(wsi, (unsigned char *)start, (size_t)n, LWS_WRITE_HTTP_FINAL) != n)
        goto out;
    rc = close_after || lws_http_transaction_completed(wsi) ? -1 : 0;
out:
    free(buf);
    return rc;
}

int http_respond(struct lws *wsi, int status, const char *type, const char *body,
                 const char *extra)
{
    return respond(wsi, status, type, body, extra, 0);
}

int http_respond_body_read(struct lws *wsi, int status, const char *type, const char *body,
                           const char *extra)
{
    return respond(wsi, status, type, body, extra, 1);
}

int http_refuse(struct lws *wsi, int status, const char *why, const char *extra)
{
    char body[160];
    const char *r = http_reason(status);

    if (why)
        snprintf(body, sizeof(body), "%s: %s\n", r, why);
    else
        snprintf(body, sizeof(body), "%s\n", r);
    http_respond(wsi, status, "text/plain; charset=utf-8", body, extra);
    return -1;
}

/* The sum of the header fields lws knows by name (custom ones are not
 * listed by lws 4.1; its own budget bounds those). */
static size_t headers_size(struct lws *wsi)
{
    size_t total = 0;

    for (int t = 0; t < WSI_TOKEN_COUNT; t++) {
        int n = lws_hdr_total_length(wsi, (enum lws_token_indexes)t);
        if (n > 0)
            total += (size_t)n;
    }
    return total;
}

long long http_content_length(struct lws *wsi)
{
    char v[128], *p = v, *end;
    long long len = -1;

    if (lws_hdr_copy(wsi, v, sizeof(v), WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0)
        return -1;
    for (;;) {
        long long one;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!isdigit((unsigned char)*p))
            return -1;
        errno = 0;
        one = strtoll(p, &end, 10);
        if (errno || (len >= 0 && one != len))
            return -1;
        len = one;
        p = end;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0')
            return len;
        if (*p++ != ',')
            return -1;
    }
}

int http_framing_status(struct lws *wsi, const char **why)
{
    int has_cl = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0;
    int has_te = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0;

    if (headers_size(wsi) > HTTP_HEADERS_MAX) {
        *why = "request headers too large";
        return 431;
    }
    if (has_cl && has_te) {
        *why = "both Content-Length and Transfer-Encoding";
        return 400;
    }
    if (has_cl && http_content_length(wsi) < 0) {
        *why = "invalid Content-Length";
        return 400;
    }
    return 0;
}
