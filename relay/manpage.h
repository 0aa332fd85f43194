/* wattcloud-relay(8), as `wattcloud-relay --man` prints it. */
#ifndef WC_MANPAGE_H
#define WC_MANPAGE_H

#include <stdio.h>

/* Write the whole page (roff) to `out`. */
void manpage_print(FILE *out);

#endif
