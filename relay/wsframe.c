/* WebSocket message assembly (wsframe.h). Every length that comes from the
 * peer is compared with what is left under the cap, never added first, so
 * no declared size can overflow the arithmetic. */
#include "wsframe.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "proto.h"
#include "wipe.h"

/* First allocation for a kept binary message whose size is not declared
 * yet; the common case (one frame) allocates its declared size at once. */
#define BIN_MIN_CAP (64u * 1024)

void wsframe_init(struct wsframe *w, size_t max_text, size_t max_binary)
{
    memset(w, 0, sizeof(*w));
    w->max_text = max_text;
    w->max_binary = max_binary;
}

void wsframe_free(struct wsframe *w)
{
    if (w->text)
        wipe_mem(w->text, w->max_text);
    free(w->text);
    free(w->bin);
    w->text = NULL;
    w->bin = NULL;
    w->bin_cap = 0;
    w->in_msg = 0;
    w->len = 0;
}

/* Transparent huge pages for a fresh upload buffer: it is filled whole at
 * once, so 2 MiB pages cost no extra memory, and an 8 MiB chunk then takes
 * a handful of page faults instead of 2048 (each 10-20 us on a VM). Only
 * the 2 MiB-aligned part of the block can get them, and only where the
 * system's THP setting is "madvise" or "always"; elsewhere it is a no-op. */
#define HUGE_PAGE_BYTES (2u * 1024 * 1024)

static void hint_huge_pages(uint8_t *p, size_t n)
{
    uintptr_t lo = ((uintptr_t)p + HUGE_PAGE_BYTES - 1) & ~(uintptr_t)(HUGE_PAGE_BYTES - 1);
    uintptr_t hi = ((uintptr_t)p + n) & ~(uintptr_t)(HUGE_PAGE_BYTES - 1);

    if (hi > lo)
        (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
}

/* Room for `need` bytes (need <= max_binary, so doubling cannot wrap). */
static int bin_reserve(struct wsframe *w, size_t need)
{
    size_t cap = w->bin_cap ? w->bin_cap : BIN_MIN_CAP;
    uint8_t *grown;

    if (need <= w->bin_cap)
        return 0;
    while (cap < need && cap < w->max_binary)
        cap *= 2;
    if (cap < need)
        cap = need;
    if (cap > w->max_binary)
        cap = w->max_binary;
    if (cap >= 2 * HUGE_PAGE_BYTES && w->bin_cap < 2 * HUGE_PAGE_BYTES) {
        /* Aligned, so that every 2 MiB of the buffer can be a huge page:
         * glibc's own mapping starts a header's length past a boundary at
         * best, leaving up to 2 MiB to 4 KiB pages (512 faults), paid on a
         * session's first chunks. The alignment costs address space, not
         * memory. What the small buffer held (under 4 MiB) is copied. */
        void *p = NULL;
        if (posix_memalign(&p, HUGE_PAGE_BYTES, cap) != 0)
            return -1;
        grown = p;
        if (w->len)
            memcpy(grown, w->bin, w->len);
        free(w->bin);
    } else {
        grown = realloc(w->bin, cap);
        if (!grown)
            return -1;
    }
    if (cap >= 2 * HUGE_PAGE_BYTES)
        hint_huge_pages(grown, cap);
    w->bin = grown;
    w->bin_cap = cap;
    return 0;
}

static int start(struct wsframe *w, int first, int binary, int keep)
{
    if (w->in_msg && first)
        return -1;
    if (!w->in_msg) {
        /* A continuation with nothing open is taken as a start: lws checks
         * the opcode order, and a message must not be lost to a detail. */
        w->in_msg = 1;
        w->binary = binary;
        w->keep = binary && keep;
        w->len = 0;
    }
    return 0;
}

int wsframe_feed(struct wsframe *w, const void *in, size_t len, int first, int final,
                 int binary, uint64_t remaining, int keep)
{
    size_t max;

    if (start(w, first, binary, keep) < 0) {
        w->in_msg = 0;
        w->len = 0;
        return WSF_E_PROTOCOL;
    }
    max = w->binary ? w->max_binary : w->max_text;
    /* The declared rest of this frame counts now, before it is read. */
    if (len > max - w->len || remaining > (uint64_t)(max - w->len - len)) {
        w->in_msg = 0;
        w->len = 0;
        return WSF_E_TOO_LARGE;
    }
    if (!w->binary) {
        if (!w->text) {
            w->text = malloc(w->max_text);
            if (!w->text) {
                w->in_msg = 0;
                return WSF_E_NOMEM;
            }
        }
        if (len > 0)
            memcpy(w->text + w->len, in, len);
    } else if (w->keep && len > 0) {
        if (bin_reserve(w, w->len + len + (size_t)remaining) < 0) {
            w->in_msg = 0;
            return WSF_E_NOMEM;
        }
        memcpy(w->bin + w->len, in, len);
    }
    w->len += len;
    if (!final)
        return WSF_MORE;
    w->in_msg = 0;
    return w->binary ? WSF_BINARY : WSF_TEXT;
}

void wsframe_offer_binary(struct wsframe *w, uint8_t *buf, size_t cap)
{
    if (!buf)
        return;
    if (w->bin || w->in_msg || cap == 0 || cap > w->max_binary) {
        free(buf);
        return;
    }
    w->bin = buf;
    w->bin_cap = cap;
}

uint8_t *wsframe_take_binary(struct wsframe *w, size_t *len)
{
    uint8_t *p = NULL;

    *len = w->len;
    if (w->keep && w->len > 0) {
        p = w->bin;
        w->bin = NULL;
        w->bin_cap = 0;
    }
    w->len = 0;
    w->keep = 0;
    return p;
}

void wsframe_text_done(struct wsframe *w)
{
    if (w->text)
        wipe_mem(w->text, w->len);
    w->len = 0;
}

int wsframe_receiving(const struct wsframe *w)
{
    return w->in_msg;
}

void wsframe_drop(struct wsframe *w)
{
    w->keep = 0;
    free(w->bin);
    w->bin = NULL;
    w->bin_cap = 0;
}
