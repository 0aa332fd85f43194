/* Allocators that wipe on free (see wipe_alloc.h). Blocks are plain malloc
 * blocks, sized with malloc_usable_size(): libssh2 1.11.1 itself frees some
 * of its LIBSSH2_ALLOC blocks with free() (gen_publickey_from_ec_evp), so a
 * private header would corrupt the heap. */
#include "wipe_alloc.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

void *wipe_malloc(size_t n)
{
    return malloc(n ? n : 1);
}

void wipe_free(void *p)
{
    if (!p)
        return;
    explicit_bzero(p, malloc_usable_size(p));
    free(p);
}

/* realloc could move the block and leave the old one unwiped: allocate,
 * copy, wipe. */
void *wipe_realloc(void *p, size_t n)
{
    void *q;
    size_t old;

    if (!p)
        return wipe_malloc(n);
    q = wipe_malloc(n);
    if (!q)
        return NULL;
    old = malloc_usable_size(p);
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
