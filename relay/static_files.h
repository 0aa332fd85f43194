/* Static files of the web app (SPA_DIR): any GET or HEAD that no other
 * route takes. Paths resolve inside SPA_DIR only; a path without a file
 * answers index.html so the app's own router can take it. */
#ifndef WC_STATIC_FILES_H
#define WC_STATIC_FILES_H

#include <stddef.h>

#include <libwebsockets.h>

/* Answer the request for `uri` (lws's decoded path, without the query) from
 * the server's SPA_DIR, or 404 when SPA_DIR is unset. Files stream from
 * disk. Returns what the HTTP callback should return: 0 to keep the
 * connection, -1 to close it. */
int static_serve(struct lws *wsi, const char *uri);

/* Check at start that `dir` is a directory holding an index.html. Returns 0,
 * or -1 with the reason in `err`. */
int static_check_dir(const char *dir, char *err, size_t errlen);

#endif
