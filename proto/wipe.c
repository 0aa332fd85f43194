/* Wiping memory that held a secret (wipe.h). */
#include "wipe.h"

#include <string.h>

void wipe_mem(void *p, size_t n)
{
    if (p && n)
        explicit_bzero(p, n);
}
