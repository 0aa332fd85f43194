/* The relay's one way to wipe memory that held a secret (credentials,
 * cookies, keys): at the bottom of the stack, so the protocol parser and
 * every relay file use the same call. */
#ifndef WC_WIPE_H
#define WC_WIPE_H

#include <stddef.h>

/* Zero `n` bytes at `p` in a way the compiler may not elide. NULL or 0 is
 * a no-op. */
void wipe_mem(void *p, size_t n);

#endif
