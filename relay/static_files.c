/* Static files of the web app from SPA_DIR, with the security headers the
 * app needs. A request path is resolved with realpath() and must land
 * inside SPA_DIR: "..", dot files and symlinks pointing out of it are
 * refused, and lws streams the file from disk in small pieces. */
#include "static_files.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "config.h"
#include "http_wire.h"
#include "server_ctx.h"

/* The app runs WebAssembly (hence 'wasm-unsafe-eval', which allows
 * compiling WASM but not JavaScript eval) and talks only to this relay:
 * its own origin, and wss://BYO_DOMAIN (the page's origin once TLS is in
 * front; named too because older browsers do not count wss: as 'self').
 * Nothing may frame it, it submits no forms and needs no base URL. The same
 * headers are in deploy/Caddyfile.example and deploy/nginx.conf.example. */
#define CSP_HEAD "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'"
#define CSP_TAIL "; frame-ancestors 'none'; base-uri 'none'; object-src 'none'; " \
                 "form-action 'none'"
/* The app uses none of these browser features. */
#define PERMISSIONS "camera=(), microphone=(), geolocation=(), payment=(), usb=(), " \
                    "interest-cohort=()"
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

/* Whether BYO_DOMAIN (a host name, maybe with a port) can go into a
 * header as it is (config.c lowercases it; this keeps a stray character
 * from ending the policy early). */
static int domain_ok(const char *d)
{
    return d && *d && strspn(d, "abcdefghijklmnopqrstuvwxyz0123456789.-:[]") == strlen(d);
}

/* The security headers of every answer from here, as header lines. */
static void security_headers(struct lws *wsi, char *out, size_t outlen)
{
    const struct config *cfg = server_of(wsi)->cfg;
    const char *d = cfg->byo_domain;
    int tls = cfg->tls_cert != NULL;

    /* BYO_DOMAIN=localhost is development: the app and its relay may sit
     * on any two ports of the machine (the Origin check allows the same). */
    int local = d && strcmp(d, "localhost") == 0;

    snprintf(out, outlen,
             "Content-Security-Policy: " CSP_HEAD "%s%s%s" CSP_TAIL "\r\n"
             "Referrer-Policy: no-referrer\r\n"
             "X-Frame-Options: DENY\r\n"
             "Permissions-Policy: " PERMISSIONS "\r\n"
             "Cross-Origin-Opener-Policy: same-origin\r\n"
             "%s",
             domain_ok(d) ? " wss://" : "", domain_ok(d) ? d : "",
             local ? ":* ws://localhost:*" : "",
             tls ? "Strict-Transport-Security: " HSTS "\r\n" : "");
}

/* A short text answer for the refusals, with the page headers. */
static int refuse(struct lws *wsi, int status)
{
    char extra[HTTP_EXTRA_MAX];
    size_t n;

    security_headers(wsi, extra, sizeof(extra));
    n = strlen(extra);
    if (status == 405)
        snprintf(extra + n, sizeof(extra) - n, "Allow: GET, HEAD\r\n");
    return http_refuse(wsi, status, NULL, extra);
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

/* Why resolve_inside() refuses a path. */
#define RESOLVE_E_MISSING (-1)  /* it does not exist (or cannot be read) */
#define RESOLVE_E_OUTSIDE (-2)  /* it resolves outside root: a symlink out */

/* `path` resolved, with the resolved name in `out` (PATH_MAX bytes) and
 * its stat in `st`: 0, RESOLVE_E_MISSING or RESOLVE_E_OUTSIDE. */
static int resolve_inside(const char *root, const char *path, char *out, struct stat *st)
{
    size_t rlen = strlen(root);

    if (!realpath(path, out))
        return RESOLVE_E_MISSING;
    /* root "/" (a strange but valid SPA_DIR) contains everything. */
    if (!(rlen == 1 || (strncmp(out, root, rlen) == 0 &&
                        (out[rlen] == '/' || out[rlen] == '\0'))))
        return RESOLVE_E_OUTSIDE;
    if (stat(out, st) < 0)
        return RESOLVE_E_MISSING;
    return 0;
}

static int is_index_html(const char *path)
{
    size_t n = strlen(path);

    return n >= 11 && strcmp(path + n - 11, "/index.html") == 0;
}

static int send_file(struct lws *wsi, const char *path, int is_index)
{
    char extra[HTTP_EXTRA_MAX];
    size_t n;
    int rc;

    security_headers(wsi, extra, sizeof(extra));
    n = strlen(extra);
    /* X-Content-Type-Options is written by lws_serve_http_file's caller
     * only: add it here with the rest. index.html names the current asset
     * files: always revalidate. */
    snprintf(extra + n, sizeof(extra) - n, "X-Content-Type-Options: nosniff\r\n%s",
             is_index ? "Cache-Control: no-cache\r\n" : "");
    rc = lws_serve_http_file(wsi, path, mime_of(path), extra, (int)strlen(extra));
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
    if (rc == RESOLVE_E_OUTSIDE)
        return refuse(wsi, 404);  /* a symlink out of SPA_DIR */
    if (rc == 0 && S_ISDIR(st.st_mode)) {
        n = snprintf(want, sizeof(want), "%s/index.html", real);
        if (n < 0 || (size_t)n >= sizeof(want))
            return refuse(wsi, 404);
        rc = resolve_inside(root, want, real, &st);
        if (rc == RESOLVE_E_OUTSIDE)
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
