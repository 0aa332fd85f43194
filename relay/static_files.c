/* Static files of the web app from SPA_DIR, with the security headers the
 * app needs. A request path is resolved with realpath() and must land
 * inside SPA_DIR: "..", dot files and symlinks pointing out of it are
 * refused, and lws streams the file from disk in small pieces. */
#include "static_files.h"

#include <errno.h>
/* PATH_MAX: <limits.h> would be shadowed by relay/limits.h through gcc's
 * syslimits.h (#include_next also searches -iquote directories). */
#include <linux/limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "config.h"
#include "server.h"

/* The app runs WebAssembly (hence 'wasm-unsafe-eval', which allows
 * compiling WASM but not JavaScript eval) and talks to the relay over
 * wss:. Nothing may frame it. */
#define CSP "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; " \
            "connect-src 'self' wss:; frame-ancestors 'none'; base-uri 'self'; " \
            "object-src 'none'; form-action 'self'"
#define HSTS "max-age=63072000; includeSubDomains"

struct mime {
    const char *ext;
    const char *type;
};

static const struct mime mimes[] = {
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"json", "application/json"},
    {"webmanifest", "application/manifest+json"},
    {"map", "application/json"},
    {"svg", "image/svg+xml"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"webp", "image/webp"},
    {"gif", "image/gif"},
    {"ico", "image/x-icon"},
    {"woff2", "font/woff2"},
    {"woff", "font/woff"},
    /* WebAssembly.instantiateStreaming() insists on exactly this type. */
    {"wasm", "application/wasm"},
    {"txt", "text/plain; charset=utf-8"},
};

static const char *mime_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(slash ? slash : path, '.');

    if (dot)
        for (size_t i = 0; i < sizeof(mimes) / sizeof(mimes[0]); i++)
            if (strcasecmp(dot + 1, mimes[i].ext) == 0)
                return mimes[i].type;
    /* With nosniff the browser will not guess a script or a page from it. */
    return "application/octet-stream";
}

static int add_header(struct lws *wsi, const char *name, const char *value,
                      unsigned char **p, unsigned char *end)
{
    return lws_add_http_header_by_name(wsi, (const unsigned char *)name,
                                       (const unsigned char *)value, (int)strlen(value), p,
                                       end);
}

/* Headers every answer from here carries. */
static int add_security_headers(struct lws *wsi, int tls, unsigned char **p,
                                unsigned char *end)
{
    if (add_header(wsi, "content-security-policy:", CSP, p, end) ||
        add_header(wsi, "x-content-type-options:", "nosniff", p, end) ||
        add_header(wsi, "referrer-policy:", "no-referrer", p, end) ||
        add_header(wsi, "x-frame-options:", "DENY", p, end))
        return -1;
    if (tls && add_header(wsi, "strict-transport-security:", HSTS, p, end))
        return -1;
    return 0;
}

static int tls_on(struct lws *wsi)
{
    return server_of(wsi)->cfg->tls_cert != NULL;
}

/* A short text answer for the refusals. */
static int refuse(struct lws *wsi, int status)
{
    unsigned char buf[LWS_PRE + 2048], *start = buf + LWS_PRE, *p = start;
    unsigned char *end = buf + sizeof(buf) - 1;
    unsigned char body[LWS_PRE + 64];
    const char *text = status == 404 ? "not found\n" :
                       status == 405 ? "method not allowed\n" : "bad request\n";
    size_t len = strlen(text);
    int hang_up = http_has_body(wsi);

    if (lws_add_http_common_headers(wsi, (unsigned)status, "text/plain", len, &p, end) ||
        add_security_headers(wsi, tls_on(wsi), &p, end) ||
        add_header(wsi, "cache-control:", "no-store", &p, end) ||
        (status == 405 && add_header(wsi, "allow:", "GET, HEAD", &p, end)) ||
        (hang_up && add_header(wsi, "connection:", "close", &p, end)) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    /* lws leaves out the body of a HEAD answer itself. */
    memcpy(body + LWS_PRE, text, len);
    if (lws_write(wsi, body + LWS_PRE, len, LWS_WRITE_HTTP_FINAL) != (int)len)
        return -1;
    if (hang_up)
        return -1;  /* the body stays unread: this connection cannot go on */
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* 400 for ".." as a path segment (lws resolves dot segments, %2e forms
 * included, before the callback sees the path: this is the backstop), 404
 * for dot files: .git, .env and the like have no business being public.
 * /.well-known/ stays reachable. Returns 0 when the path may be served. */
static int path_refusal(const char *uri)
{
    const char *seg;

    if (uri[0] != '/' || strchr(uri, '\\'))
        return 400;
    for (seg = uri; seg; seg = strchr(seg + 1, '/')) {
        const char *s = seg + 1;
        if (s[0] != '.')
            continue;
        if (s[1] == '.' && (s[2] == '/' || s[2] == '\0'))
            return 400;
        if (strncmp(s, ".well-known", 11) == 0 && (s[11] == '/' || s[11] == '\0'))
            continue;
        if (s[1] != '/' && s[1] != '\0')
            return 404;
    }
    return 0;
}

/* `path` resolved; 0 when it is a regular file inside `root`, with the
 * resolved name in `out` (PATH_MAX bytes). */
static int resolve_inside(const char *root, const char *path, char *out, struct stat *st)
{
    size_t rlen = strlen(root);

    if (!realpath(path, out))
        return -1;
    /* root "/" (a strange but valid SPA_DIR) contains everything. */
    if (!(rlen == 1 || (strncmp(out, root, rlen) == 0 &&
                        (out[rlen] == '/' || out[rlen] == '\0'))))
        return -2;
    if (stat(out, st) < 0)
        return -1;
    return 0;
}

static int is_index_html(const char *path)
{
    size_t n = strlen(path);

    return n >= 11 && strcmp(path + n - 11, "/index.html") == 0;
}

static int send_file(struct lws *wsi, const char *path, int is_index)
{
    unsigned char hdrs[1536], *p = hdrs, *end = hdrs + sizeof(hdrs);
    int rc;

    if (add_security_headers(wsi, tls_on(wsi), &p, end) ||
        /* index.html names the current asset files: always revalidate. */
        (is_index && add_header(wsi, "cache-control:", "no-cache", &p, end)))
        return -1;
    rc = lws_serve_http_file(wsi, path, mime_of(path), (const char *)hdrs, (int)(p - hdrs));
    /* <0 error; >0 sent completely (small file); 0 lws streams the rest
     * from its writable callbacks and finishes the transaction itself. */
    if (rc < 0 || (rc > 0 && lws_http_transaction_completed(wsi)))
        return -1;
    return 0;
}

int static_serve(struct lws *wsi, const char *uri)
{
    const char *dir = server_of(wsi)->cfg->spa_dir;
    char root[PATH_MAX], want[PATH_MAX], real[PATH_MAX];
    struct stat st;
    int rc, n;

    if (!dir)
        return refuse(wsi, 404);
    if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0 &&
        lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) <= 0)
        return refuse(wsi, 405);
    if (http_has_body(wsi))
        return refuse(wsi, 400);  /* a GET with a body: nothing here reads it */
    if ((rc = path_refusal(uri)) != 0)
        return refuse(wsi, rc);
    /* The relay's own namespace is never the app: an unknown /relay/...
     * is a mistake worth a 404, not an HTML page. */
    if (strncmp(uri, "/relay/", 7) == 0 || strcmp(uri, "/relay") == 0)
        return refuse(wsi, 404);
    if (!realpath(dir, root))
        return refuse(wsi, 404);

    n = snprintf(want, sizeof(want), "%s%s", root, uri);
    if (n < 0 || (size_t)n >= sizeof(want))
        return refuse(wsi, 404);
    rc = resolve_inside(root, want, real, &st);
    if (rc == -2)
        return refuse(wsi, 404);  /* a symlink out of SPA_DIR */
    if (rc == 0 && S_ISDIR(st.st_mode)) {
        n = snprintf(want, sizeof(want), "%s/index.html", real);
        if (n < 0 || (size_t)n >= sizeof(want))
            return refuse(wsi, 404);
        rc = resolve_inside(root, want, real, &st);
        if (rc == -2)
            return refuse(wsi, 404);
    }
    if (rc == 0 && S_ISREG(st.st_mode))
        return send_file(wsi, real, is_index_html(real));
    if (rc == 0 || (errno != ENOENT && errno != ENOTDIR))
        return refuse(wsi, 404);  /* a device, a socket, unreadable... */

    /* No such file: a route of the app. */
    n = snprintf(want, sizeof(want), "%s/index.html", root);
    if (n < 0 || (size_t)n >= sizeof(want) || resolve_inside(root, want, real, &st) != 0 ||
        !S_ISREG(st.st_mode))
        return refuse(wsi, 404);
    return send_file(wsi, real, 1);
}

int static_check_dir(const char *dir, char *err, size_t errlen)
{
    char path[PATH_MAX];
    struct stat st;

    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "invalid SPA_DIR: %s is not a directory", dir);
        return -1;
    }
    snprintf(path, sizeof(path), "%s/index.html", dir);
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "invalid SPA_DIR: %s has no index.html", dir);
        return -1;
    }
    return 0;
}
