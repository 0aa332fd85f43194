/* libFuzzer target: keyformat_problem(), which reads a private key the
 * user pasted to tell why libssh2 refused it. Input: key text, then
 * optionally a NUL and the passphrase. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "keyformat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *f[2];
    int n = fuzz_split(data, size, 0, f, 2);
    const char *msg = keyformat_problem(f[0], n > 1 ? f[1] : NULL);

    if (!msg || !*msg)
        __builtin_trap();  /* the user must always get a message */
    (void)strlen(msg);
    fuzz_fields_free(f, 2);
    return 0;
}
