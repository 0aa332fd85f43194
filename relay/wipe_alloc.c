/* Size-tracking allocators that wipe on free (see wipe_alloc.h). The header
 * keeps the 16-byte alignment malloc promises. */
#include "wipe_alloc.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define HEADER 16

static size_t *header_of(void *p)
{
    return (size_t *)((char *)p - HEADER);
}

void *wipe_malloc(size_t n)
{
    char *b;

    if (n > (size_t)-1 - HEADER)
        return NULL;
    b = malloc(n + HEADER);
    if (!b)
        return NULL;
    *(size_t *)b = n;
    return b + HEADER;
}

void wipe_free(void *p)
{
    size_t *h;

    if (!p)
        return;
    h = header_of(p);
    explicit_bzero(p, *h);
    free(h);
}

/* realloc would leave the old block unwiped: allocate, copy, wipe. */
void *wipe_realloc(void *p, size_t n)
{
    void *q;
    size_t old;

    if (!p)
        return wipe_malloc(n);
    q = wipe_malloc(n);
    if (!q)
        return NULL;
    old = *header_of(p);
    memcpy(q, p, old < n ? old : n);
    wipe_free(p);
    return q;
}

char *wipe_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = wipe_malloc(n);

    if (d)
        memcpy(d, s, n);
    return d;
}

void wipe_alloc_install_jansson(void)
{
    json_set_alloc_funcs(wipe_malloc, wipe_free);
}

void *wipe_ssh_alloc(size_t n, void **abstract)
{
    (void)abstract;
    return wipe_malloc(n);
}

void *wipe_ssh_realloc(void *p, size_t n, void **abstract)
{
    (void)abstract;
    return wipe_realloc(p, n);
}

void wipe_ssh_free(void *p, void **abstract)
{
    (void)abstract;
    wipe_free(p);
}
