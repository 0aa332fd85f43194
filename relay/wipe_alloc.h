/* Allocators that zero memory before giving it back. jansson and libssh2
 * take allocator hooks; routing them through these means the copies those
 * libraries make of passwords and private keys (parsed JSON strings, SSH
 * packet buffers) do not linger in freed heap memory. */
#ifndef WC_WIPE_ALLOC_H
#define WC_WIPE_ALLOC_H

#include <stddef.h>

/* Plain malloc/free/realloc semantics; blocks are ordinary malloc blocks,
 * so free() on them is safe too (it just does not wipe). */
void *wipe_malloc(size_t n);
void *wipe_realloc(void *p, size_t n);
void wipe_free(void *p);
char *wipe_strdup(const char *s);

/* Install the hooks into jansson. Call once, before any JSON is parsed. */
void wipe_alloc_install_jansson(void);

/* What one libssh2 session's allocations hold. A server decides much of
 * that (packets libssh2 keeps, replies it queues), so the hooks bound it
 * twice. Per session: past `max` (SSH_SESSION_MEMORY_MIB) an allocation is
 * refused, libssh2 reports LIBSSH2_ERROR_ALLOC and only that session ends.
 * For all sessions together, the budget (wipe_ssh_set_budget), a hard cap.
 * While it has room, any session allocates. When it is full, each
 * session's share is the budget divided among the sessions holding memory:
 * the session allocating is refused if it holds the most and more than its
 * share; otherwise sessions over their share that hold more than it are
 * evicted, largest first, until they cover the shortfall (their `evict`
 * callback, whether they are busy or idle), and it waits up to
 * WIPE_ROOM_WAIT_MS for the room they leave, then is refused. So a hostile
 * server swells only its own session, whether it keeps allocating or parks
 * its memory, and honest sessions pause rather than fail.
 *
 * The `abstract` given to libssh2_session_init_ex() must point to a struct
 * whose first member is this one. Zero it, then set `max` and `evict`
 * before the first allocation; wipe_account_close() when the session is
 * done. */
enum wipe_refusal {
    WIPE_REFUSED_NONE = 0,
    WIPE_REFUSED_SESSION,   /* past the session's `max` */
    WIPE_REFUSED_SHARE,     /* the largest holder, over its share of a full budget, or evicted */
    WIPE_REFUSED_BUDGET     /* no room in the budget within WIPE_ROOM_WAIT_MS */
};

#define WIPE_ROOM_WAIT_MS 5000

struct wipe_account {
    _Atomic size_t held;    /* bytes allocated now (malloc_usable_size); written by the
                             * owner, read by any thread that looks for the largest */
    size_t peak;            /* owner: the most `held` has been */
    size_t max;             /* owner: refuse past this; 0: no limit */
    enum wipe_refusal refused;  /* owner: why an allocation was refused, if one was */
    /* Asks the owner to end the session, from another session's thread,
     * with the budget's lock held: it must only signal (take no lock that
     * is held while allocating through these hooks). NULL: never evicted. */
    void (*evict)(void *arg);
    void *evict_arg;
    _Atomic int evicted;    /* set once, by any thread, before `evict` is called */
    _Atomic size_t evicted_held;  /* `held` when it was evicted (stored before `evicted`) */
    /* The budget's list of accounts that have allocated (its lock). */
    int listed;
    struct wipe_account *prev, *next;
};

/* Hook signatures libssh2_session_init_ex() expects. */
void *wipe_ssh_alloc(size_t n, void **abstract);
void *wipe_ssh_realloc(void *p, size_t n, void **abstract);
void wipe_ssh_free(void *p, void **abstract);

/* Was the account evicted? Then *held is what it held at that moment.
 * Any thread. */
int wipe_account_evicted(const struct wipe_account *a, size_t *held);

/* The session is gone: take the account off the budget's list and what it
 * still holds out of the process total (libssh2 frees a few of its blocks
 * with free(), which the hooks never see). */
void wipe_account_close(struct wipe_account *a);

/* What all libssh2 sessions may hold together (SSH_MEMORY_BUDGET_MIB); 0,
 * the default, is no budget. An allocation waits at most `room_wait_ms`
 * (WIPE_ROOM_WAIT_MS; tests use less) for room. Call once, before the
 * first session (the peak starts again from here). */
void wipe_ssh_set_budget(size_t bytes, int room_wait_ms);
size_t wipe_ssh_budget(void);

/* What all libssh2 sessions hold together, and the most they have held
 * since start-up; any thread. */
size_t wipe_ssh_total(void);
size_t wipe_ssh_peak(void);

/* Wipe what a credential leaves behind on the calling thread beyond the
 * buffers we free: the vector registers, then WIPE_STACK_BYTES of dead
 * stack just below the caller's frame. Why both: a vectorised memcpy or
 * strlen (glibc's AVX2/EVEX variants) over a private key leaves its text
 * in ymm/zmm registers, and any later first call through a lazily bound
 * PLT slot (_dl_runtime_resolve_xsavec; jansson and libc are not linked
 * with -z now) or a signal saves all registers onto the stack, where key
 * lines would stay readable (tests/integration/test_hygiene.py checks).
 * Call it once the last function that touched a credential has returned. */
#define WIPE_STACK_BYTES (64u * 1024)
void wipe_thread_residue(void);

/* Give the pages of the calling thread's stack below its current frame back
 * to the kernel (they read as zeros afterwards). Call it last thing before
 * a thread ends: glibc keeps the stacks of ended threads for reuse (up to
 * 40 MiB of them), with every page they ever touched, so without this a
 * burst of sessions would leave its stacks' pages resident. */
void wipe_release_stack(void);

#endif
