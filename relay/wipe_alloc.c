/* Allocators that wipe on free (see wipe_alloc.h). Blocks are plain malloc
 * blocks, sized with malloc_usable_size(): libssh2 1.11.1 itself frees some
 * of its LIBSSH2_ALLOC blocks with free() (gen_publickey_from_ec_evp), so a
 * private header would corrupt the heap. */
#include "wipe.h"
#include "wipe_alloc.h"

#include <malloc.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <jansson.h>

void *wipe_malloc(size_t n)
{
    return malloc(n ? n : 1);
}

void wipe_free(void *p)
{
    if (!p)
        return;
    wipe_mem(p, malloc_usable_size(p));
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

/* The process-wide state of the libssh2 accounts. `ssh_budget` is written
 * once at start-up, before any worker thread exists, and only read after.
 * The rest is added to by every worker thread and read by the service
 * thread (metrics): atomics. ssh_total and ssh_holders are exact (relaxed
 * order is enough, nothing else is published through them); ssh_peak is a
 * high-water mark. */
static size_t ssh_budget;
static _Atomic size_t ssh_total;
static _Atomic size_t ssh_peak;
static _Atomic size_t ssh_holders;  /* accounts whose `held` is not 0 */

/* No single libssh2 allocation comes near this; refusing larger requests
 * up front keeps the reservation below from wrapping the total. */
#define ACCOUNT_REQUEST_MAX (SIZE_MAX / 4)

void wipe_ssh_set_budget(size_t bytes)
{
    ssh_budget = bytes;
}

size_t wipe_ssh_budget(void)
{
    return ssh_budget;
}

static struct wipe_account *account_of(void **abstract)
{
    return abstract && *abstract ? (struct wipe_account *)*abstract : NULL;
}

static void note_peak(size_t total)
{
    size_t peak = atomic_load_explicit(&ssh_peak, memory_order_relaxed);

    while (total > peak && !atomic_compare_exchange_weak_explicit(
               &ssh_peak, &peak, total, memory_order_relaxed, memory_order_relaxed))
        ;
}

/* Count `n` bytes the process total already includes into `a`. */
static void account_held_add(struct wipe_account *a, size_t n)
{
    if (a->held == 0 && n > 0)
        atomic_fetch_add_explicit(&ssh_holders, 1, memory_order_relaxed);
    a->held += n;
    if (a->held > a->peak)
        a->peak = a->held;
}

static void account_add(struct wipe_account *a, size_t n)
{
    note_peak(atomic_fetch_add_explicit(&ssh_total, n, memory_order_relaxed) + n);
    account_held_add(a, n);
}

/* A block freed here may never have been counted (libssh2 allocates a few
 * with malloc()), so neither count goes below zero. */
static void account_sub(struct wipe_account *a, size_t n)
{
    if (n > a->held)
        n = a->held;
    a->held -= n;
    if (a->held == 0 && n > 0)
        atomic_fetch_sub_explicit(&ssh_holders, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&ssh_total, n, memory_order_relaxed);
}

static int refuse(struct wipe_account *a, enum wipe_refusal why)
{
    a->refused = why;
    return -1;
}

/* Would `n` more bytes for `a`, with `before` held by all sessions before
 * them, go past the budget or past a's share of it? */
static enum wipe_refusal over_budget(const struct wipe_account *a, size_t before, size_t n)
{
    size_t half = ssh_budget / 2, holders;

    if (n > ssh_budget || before > ssh_budget - n)
        return WIPE_REFUSED_BUDGET;
    if (before + n <= half)
        return WIPE_REFUSED_NONE;
    holders = atomic_load_explicit(&ssh_holders, memory_order_relaxed);
    if (a->held == 0)
        holders++;  /* a becomes one with these bytes */
    if (n > half / holders || a->held > half / holders - n)
        return WIPE_REFUSED_SHARE;
    return WIPE_REFUSED_NONE;
}

/* Take `n` bytes for `a` before allocating them, or refuse. The process
 * total is reserved with one atomic add and checked after it, so threads
 * racing for the last bytes of the budget cannot all pass. */
static int account_take(struct wipe_account *a, size_t n)
{
    size_t before;
    enum wipe_refusal why;

    if (n > ACCOUNT_REQUEST_MAX)
        return refuse(a, a->max ? WIPE_REFUSED_SESSION : WIPE_REFUSED_BUDGET);
    if (a->max && (n > a->max || a->held > a->max - n))
        return refuse(a, WIPE_REFUSED_SESSION);
    before = atomic_fetch_add_explicit(&ssh_total, n, memory_order_relaxed);
    if (ssh_budget && (why = over_budget(a, before, n)) != WIPE_REFUSED_NONE) {
        atomic_fetch_sub_explicit(&ssh_total, n, memory_order_relaxed);
        return refuse(a, why);
    }
    note_peak(before + n);
    account_held_add(a, n);
    return 0;
}

void *wipe_ssh_alloc(size_t n, void **abstract)
{
    struct wipe_account *a = account_of(abstract);
    void *p;

    if (!a)
        return wipe_malloc(n);
    if (n && account_take(a, n) < 0)
        return NULL;
    p = wipe_malloc(n);
    if (!p)
        account_sub(a, n);
    else
        account_add(a, malloc_usable_size(p) - n);  /* malloc's rounding */
    return p;
}

void *wipe_ssh_realloc(void *p, size_t n, void **abstract)
{
    struct wipe_account *a = account_of(abstract);
    size_t old = p ? malloc_usable_size(p) : 0, grow = n > old ? n - old : 0;
    void *q;

    if (!a)
        return wipe_realloc(p, n);
    if (grow && account_take(a, grow) < 0)
        return NULL;
    q = wipe_realloc(p, n);
    if (!q) {
        account_sub(a, grow);
        return NULL;
    }
    account_sub(a, old + grow);
    account_add(a, malloc_usable_size(q));
    return q;
}

void wipe_ssh_free(void *p, void **abstract)
{
    struct wipe_account *a = account_of(abstract);

    if (p && a)
        account_sub(a, malloc_usable_size(p));
    wipe_free(p);
}

void wipe_account_close(struct wipe_account *a)
{
    account_sub(a, a->held);
}

size_t wipe_ssh_total(void)
{
    return atomic_load_explicit(&ssh_total, memory_order_relaxed);
}

size_t wipe_ssh_peak(void)
{
    return atomic_load_explicit(&ssh_peak, memory_order_relaxed);
}

/* Zero the vector registers. xmm/ymm0-15 are clobbers the compiler knows
 * of; zmm16-31 exist only with AVX-512, which glibc's EVEX string functions
 * use and which this file is not compiled for, so nothing of ours lives
 * there. CPUID decides, so this runs on any x86-64 (and under valgrind,
 * whose virtual CPU has no AVX-512). Other architectures: no-op. */
static void wipe_vector_regs(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx512f"))
        __asm__ volatile(
            "vpxord %%zmm16, %%zmm16, %%zmm16\n\tvpxord %%zmm17, %%zmm17, %%zmm17\n\t"
            "vpxord %%zmm18, %%zmm18, %%zmm18\n\tvpxord %%zmm19, %%zmm19, %%zmm19\n\t"
            "vpxord %%zmm20, %%zmm20, %%zmm20\n\tvpxord %%zmm21, %%zmm21, %%zmm21\n\t"
            "vpxord %%zmm22, %%zmm22, %%zmm22\n\tvpxord %%zmm23, %%zmm23, %%zmm23\n\t"
            "vpxord %%zmm24, %%zmm24, %%zmm24\n\tvpxord %%zmm25, %%zmm25, %%zmm25\n\t"
            "vpxord %%zmm26, %%zmm26, %%zmm26\n\tvpxord %%zmm27, %%zmm27, %%zmm27\n\t"
            "vpxord %%zmm28, %%zmm28, %%zmm28\n\tvpxord %%zmm29, %%zmm29, %%zmm29\n\t"
            "vpxord %%zmm30, %%zmm30, %%zmm30\n\tvpxord %%zmm31, %%zmm31, %%zmm31"
            ::: "memory");
    if (__builtin_cpu_supports("avx"))
        /* Also clears the upper halves of zmm0-15. */
        __asm__ volatile("vzeroall" ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
                         "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
                         "xmm13", "xmm14", "xmm15", "memory");
    else
        __asm__ volatile(
            "pxor %%xmm0, %%xmm0\n\tpxor %%xmm1, %%xmm1\n\tpxor %%xmm2, %%xmm2\n\t"
            "pxor %%xmm3, %%xmm3\n\tpxor %%xmm4, %%xmm4\n\tpxor %%xmm5, %%xmm5\n\t"
            "pxor %%xmm6, %%xmm6\n\tpxor %%xmm7, %%xmm7\n\tpxor %%xmm8, %%xmm8\n\t"
            "pxor %%xmm9, %%xmm9\n\tpxor %%xmm10, %%xmm10\n\tpxor %%xmm11, %%xmm11\n\t"
            "pxor %%xmm12, %%xmm12\n\tpxor %%xmm13, %%xmm13\n\tpxor %%xmm14, %%xmm14\n\t"
            "pxor %%xmm15, %%xmm15"
            ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
            "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory");
#endif
}

/* noinline: the buffer must be a frame of its own, below the caller's. The
 * empty asm makes the zeroed buffer "used", so the store is not elided. */
__attribute__((noinline)) static void wipe_dead_stack(void)
{
    unsigned char buf[WIPE_STACK_BYTES];

    wipe_mem(buf, sizeof(buf));
    __asm__ volatile("" : : "r"(buf) : "memory");
}

/* Registers first: a lazy binding inside the stack wipe would otherwise
 * spill them again, below the wiped part. */
__attribute__((noinline)) void wipe_thread_residue(void)
{
    wipe_vector_regs();
    wipe_dead_stack();
}

/* The frame of this function and the libc calls it makes live in the pages
 * just below the caller's frame: keep STACK_KEEP_PAGES of them. */
#define STACK_KEEP_PAGES 4

__attribute__((noinline)) void wipe_release_stack(void)
{
    pthread_attr_t attr;
    void *lo;
    size_t size;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    uintptr_t start, end;

    if (pthread_getattr_np(pthread_self(), &attr) != 0)
        return;
    if (pthread_attr_getstack(&attr, &lo, &size) == 0) {
        start = ((uintptr_t)lo + page - 1) & ~(page - 1);
        end = (here & ~(page - 1));
        if (end > start + STACK_KEEP_PAGES * page)
            (void)madvise((void *)start, end - STACK_KEEP_PAGES * page - start, MADV_DONTNEED);
    }
    pthread_attr_destroy(&attr);
}
