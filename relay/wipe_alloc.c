/* Allocators that wipe on free (see wipe_alloc.h). Blocks are plain malloc
 * blocks, sized with malloc_usable_size(): libssh2 1.11.1 itself frees some
 * of its LIBSSH2_ALLOC blocks with free() (gen_publickey_from_ec_evp), so a
 * private header would corrupt the heap. */
#include "clock.h"
#include "wipe.h"
#include "wipe_alloc.h"

#include <errno.h>
#include <malloc.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
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
 * ssh_total and ssh_peak are added to by every worker thread and read by
 * the service thread (metrics): atomics. ssh_total is exact and only ever
 * moves by a reservation that fits, so no thread sees memory that was
 * refused. Its changes are sequentially consistent, as is `room_waiters`:
 * a free that lowers the total and a waiter that counts itself before
 * looking at the total cannot both miss the other (no lost wake-up). */
static size_t ssh_budget;
static int room_wait_ms;
static _Atomic size_t ssh_total;
static _Atomic size_t ssh_peak;

/* When the budget is full the hooks look at every session's holding and
 * may wait for room: `budget_mu` guards the list of accounts and is what
 * `room_cv` (CLOCK_MONOTONIC) waits with; `room_waiters` (sessions in
 * budget_take) lets a free skip the lock when nobody waits. Lock order: budget_mu, then whatever an
 * `evict` callback takes (a session's own lock). */
static pthread_mutex_t budget_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t room_cv;
static pthread_once_t room_once = PTHREAD_ONCE_INIT;
static struct wipe_account *accounts;       /* budget_mu */
static _Atomic int room_waiters;

/* No single libssh2 allocation comes near this; refusing larger requests
 * up front keeps the reservation below from wrapping the total. */
#define ACCOUNT_REQUEST_MAX (SIZE_MAX / 4)
/* malloc_usable_size() exceeds the request by less than this (a page, for
 * chunks malloc maps on their own), so an allocation reserves it as well
 * and gives back what malloc did not use: the total never passes the
 * budget, whatever malloc rounds to. */
#define ACCOUNT_ROUNDING 4096

static void room_init(void)
{
    pthread_condattr_t attr;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&room_cv, &attr);
    pthread_condattr_destroy(&attr);
}

void wipe_ssh_set_budget(size_t bytes, int wait_ms)
{
    ssh_budget = bytes;
    room_wait_ms = wait_ms;
    atomic_store_explicit(&ssh_peak, wipe_ssh_total(), memory_order_relaxed);
}

size_t wipe_ssh_budget(void)
{
    return ssh_budget;
}

static struct wipe_account *account_of(void **abstract)
{
    return abstract && *abstract ? (struct wipe_account *)*abstract : NULL;
}

static size_t held_of(struct wipe_account *a)
{
    return atomic_load_explicit(&a->held, memory_order_relaxed);
}

static void note_peak(size_t total)
{
    size_t peak = atomic_load_explicit(&ssh_peak, memory_order_relaxed);

    while (total > peak && !atomic_compare_exchange_weak_explicit(
               &ssh_peak, &peak, total, memory_order_relaxed, memory_order_relaxed))
        ;
}

/* Move `a`'s count and the process total by `delta`, taken modulo
 * SIZE_MAX + 1 (so a "negative" delta gives bytes back): one atomic add,
 * so the total never dips or swells for a moment in between. */
static void account_move(struct wipe_account *a, size_t delta)
{
    size_t held = held_of(a) + delta;

    atomic_store_explicit(&a->held, held, memory_order_relaxed);
    if (held > a->peak)
        a->peak = held;
    note_peak(atomic_fetch_add(&ssh_total, delta) + delta);
}

/* Someone may be waiting for room: wake them. */
static void room_freed(void)
{
    if (atomic_load(&room_waiters) == 0)
        return;
    pthread_mutex_lock(&budget_mu);
    pthread_cond_broadcast(&room_cv);
    pthread_mutex_unlock(&budget_mu);
}

/* Give back `n` bytes. A block freed here may never have been counted
 * (libssh2 allocates a few with malloc()), so neither count goes below
 * zero. */
static void account_sub(struct wipe_account *a, size_t n)
{
    size_t held = held_of(a);

    if (n > held)
        n = held;
    if (n == 0)
        return;
    account_move(a, (size_t)0 - n);
    room_freed();
}

static int refuse(struct wipe_account *a, enum wipe_refusal why)
{
    a->refused = why;
    return -1;
}

/* Add `r` to the total if it stays within `limit`; a refused reservation
 * is never seen by another thread. */
static int total_reserve(size_t r, size_t limit)
{
    size_t cur = atomic_load_explicit(&ssh_total, memory_order_relaxed);

    do {
        if (r > limit || cur > limit - r)
            return -1;
    } while (!atomic_compare_exchange_weak(&ssh_total, &cur, cur + r));
    note_peak(cur + r);
    return 0;
}

/* The budget is full and `a` needs `r` more (budget_mu
 * held). Each session's share is the budget divided among the sessions
 * holding memory. If `a` holds the most and more than its share, it is the
 * session to end: -1. Otherwise evict, largest first, sessions over their
 * share that hold more than `a` would, until what the evicted ones still
 * hold covers the shortfall. When it evicted any, it wakes every waiter (an
 * evicted session may be one, waiting for room it should give instead);
 * otherwise waiters are woken only by memory coming back, so they never
 * wake one another in turn. */
static int budget_full(struct wipe_account *a, size_t r)
{
    size_t want = held_of(a) + r, holders = 1, share, top = 0, pending = 0, need, total;
    struct wipe_account *x, *largest;
    int evicted = 0;

    /* Frees do not take budget_mu: the budget may have room again since
     * the reservation failed. Then there is nothing to do but retry (and
     * the shortfall below would wrap). */
    total = wipe_ssh_total();
    if (total <= ssh_budget && r <= ssh_budget - total)
        return 0;
    need = total + r - ssh_budget;

    for (x = accounts; x; x = x->next) {
        if (x == a || held_of(x) == 0)
            continue;
        holders++;
        if (held_of(x) > top)
            top = held_of(x);
        if (atomic_load_explicit(&x->evicted, memory_order_relaxed))
            pending += held_of(x);
    }
    share = ssh_budget / holders;
    if (want > share && want >= top)
        return -1;
    while (pending < need) {
        largest = NULL;
        for (x = accounts; x; x = x->next)
            if (x != a && x->evict && held_of(x) > share && held_of(x) > want &&
                !atomic_load_explicit(&x->evicted, memory_order_relaxed) &&
                (!largest || held_of(x) > held_of(largest)))
                largest = x;
        if (!largest)
            break;
        atomic_store_explicit(&largest->evicted_held, held_of(largest), memory_order_relaxed);
        atomic_store_explicit(&largest->evicted, 1, memory_order_release);
        largest->evict(largest->evict_arg);
        pending += held_of(largest);
        evicted = 1;
    }
    if (evicted)
        pthread_cond_broadcast(&room_cv);
    return 0;
}

static void list_account(struct wipe_account *a)
{
    a->prev = NULL;
    a->next = accounts;
    if (accounts)
        accounts->prev = a;
    accounts = a;
    a->listed = 1;
}

/* Take `r` bytes of the budget for `a` when it is full, or list `a` on its
 * first allocation (see the header). */
static int budget_take(struct wipe_account *a, size_t r)
{
    struct timespec until = clock_deadline(room_wait_ms);
    int rc = 0, timed_out = 0;

    pthread_once(&room_once, room_init);
    pthread_mutex_lock(&budget_mu);
    if (!a->listed)
        list_account(a);
    atomic_fetch_add(&room_waiters, 1);
    for (;;) {
        if (total_reserve(r, ssh_budget) == 0)
            break;
        /* Evicted by another session, perhaps while it waited here: its
         * memory is what the others wait for. */
        if (atomic_load_explicit(&a->evicted, memory_order_relaxed) ||
            budget_full(a, r) < 0) {
            rc = refuse(a, WIPE_REFUSED_SHARE);
            break;
        }
        if (timed_out) {
            rc = refuse(a, WIPE_REFUSED_BUDGET);
            break;
        }
        timed_out = pthread_cond_timedwait(&room_cv, &budget_mu, &until) == ETIMEDOUT;
    }
    atomic_fetch_sub(&room_waiters, 1);
    pthread_mutex_unlock(&budget_mu);
    return rc;
}

/* Take `n` bytes for `a` before allocating them, or refuse; `*r` is what
 * was reserved (n and the rounding). */
static int account_take(struct wipe_account *a, size_t n, size_t *r)
{
    if (n > ACCOUNT_REQUEST_MAX)
        return refuse(a, a->max ? WIPE_REFUSED_SESSION : WIPE_REFUSED_BUDGET);
    if (a->max && (n > a->max || held_of(a) > a->max - n))
        return refuse(a, WIPE_REFUSED_SESSION);
    if (atomic_load_explicit(&a->evicted, memory_order_relaxed))
        return refuse(a, WIPE_REFUSED_SHARE);
    *r = n + ACCOUNT_ROUNDING;
    if (!ssh_budget) {
        atomic_fetch_add_explicit(&ssh_total, *r, memory_order_relaxed);
    } else if (!a->listed || total_reserve(*r, ssh_budget) < 0) {
        if (budget_take(a, *r) < 0)
            return -1;
    }
    /* The total already has the bytes: only the account moves here. */
    atomic_store_explicit(&a->held, held_of(a) + *r, memory_order_relaxed);
    if (held_of(a) > a->peak)
        a->peak = held_of(a);
    return 0;
}

/* The allocation that reserved `r` now holds `used` in place of `old`:
 * give back the difference in one move. */
static void account_settle(struct wipe_account *a, size_t r, size_t old, size_t used)
{
    account_move(a, used - old - r);
    if (used < old + r)
        room_freed();
}

void *wipe_ssh_alloc(size_t n, void **abstract)
{
    struct wipe_account *a = account_of(abstract);
    size_t r;
    void *p;

    if (!a)
        return wipe_malloc(n);
    if (account_take(a, n, &r) < 0)
        return NULL;
    p = wipe_malloc(n);
    account_settle(a, r, 0, p ? malloc_usable_size(p) : 0);
    return p;
}

void *wipe_ssh_realloc(void *p, size_t n, void **abstract)
{
    struct wipe_account *a = account_of(abstract);
    size_t old = p ? malloc_usable_size(p) : 0, r = 0;
    void *q;

    if (!a)
        return wipe_realloc(p, n);
    /* A block that was never counted (allocated with malloc()) counts
     * from here on: it cannot be given back twice. */
    if (old > held_of(a))
        old = held_of(a);
    if (n > old && account_take(a, n - old, &r) < 0)
        return NULL;
    q = wipe_realloc(p, n);
    if (!q) {
        account_settle(a, r, 0, 0);
        return NULL;
    }
    account_settle(a, r, old, malloc_usable_size(q));
    return q;
}

void wipe_ssh_free(void *p, void **abstract)
{
    struct wipe_account *a = account_of(abstract);

    if (p && a)
        account_sub(a, malloc_usable_size(p));
    wipe_free(p);
}

int wipe_account_evicted(const struct wipe_account *a, size_t *held)
{
    if (!atomic_load_explicit(&a->evicted, memory_order_acquire))
        return 0;
    *held = atomic_load_explicit(&a->evicted_held, memory_order_relaxed);
    return 1;
}

void wipe_account_close(struct wipe_account *a)
{
    pthread_mutex_lock(&budget_mu);
    if (a->listed) {
        if (a->prev)
            a->prev->next = a->next;
        else
            accounts = a->next;
        if (a->next)
            a->next->prev = a->prev;
        a->listed = 0;
        a->prev = a->next = NULL;
    }
    pthread_mutex_unlock(&budget_mu);
    account_sub(a, held_of(a));
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
