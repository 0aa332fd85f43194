/* Helpers shared by the libFuzzer targets: split the input into
 * NUL-terminated fields, and a base configuration like the default one. */
#ifndef WC_FUZZ_COMMON_H
#define WC_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Split `data` at each `sep` byte into at most `max` fields, each a fresh
 * NUL-terminated copy (an embedded NUL simply ends that C string early,
 * as it would for a header lws hands us). Missing fields are NULL. The
 * copies are exact-size heap blocks so ASan sees any overread. Returns
 * the number of fields; release with fuzz_fields_free(). */
static inline int fuzz_split(const uint8_t *data, size_t size, uint8_t sep, char **out,
                             int max)
{
    int n = 0;
    size_t start = 0;

    for (int i = 0; i < max; i++)
        out[i] = NULL;
    for (size_t i = 0; i <= size && n < max; i++) {
        if (i == size || (data[i] == sep && n < max - 1)) {
            size_t len = i - start;
            out[n] = malloc(len + 1);
            if (!out[n])
                abort();
            memcpy(out[n], data + start, len);
            out[n][len] = '\0';
            n++;
            start = i + 1;
        }
    }
    return n;
}

static inline void fuzz_fields_free(char **f, int max)
{
    for (int i = 0; i < max; i++) {
        free(f[i]);
        f[i] = NULL;
    }
}

#endif
