/* libFuzzer target: wsframe_feed(), the WebSocket message assembler, fed a
 * sequence of fragments as lws would deliver them. Each fragment is a
 * 10-byte header (flags: first, final, binary, keep; a 1-byte length; an
 * 8-byte declared remaining length, little-endian) then its bytes. Checks:
 * no crash, no leak, no buffer beyond the caps, messages never over them. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wsframe.h"

#define MAX_TEXT 1024
#define MAX_BIN 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wsframe w;
    size_t pos = 0;

    wsframe_init(&w, MAX_TEXT, MAX_BIN);
    while (size - pos >= 10) {
        uint8_t flags = data[pos];
        size_t len = data[pos + 1];
        uint64_t rem = 0;
        int rc;

        for (int i = 0; i < 8; i++)
            rem |= (uint64_t)data[pos + 2 + i] << (8 * i);
        pos += 10;
        if (len > size - pos)
            len = size - pos;
        rc = wsframe_feed(&w, data + pos, len, flags & 1, (flags >> 1) & 1, (flags >> 2) & 1,
                          rem, (flags >> 3) & 1);
        pos += len;
        if (w.bin_cap > MAX_BIN)
            __builtin_trap();
        if (rc == WSF_TEXT) {
            if (w.len > MAX_TEXT)
                __builtin_trap();
            wsframe_text_done(&w);
        } else if (rc == WSF_BINARY) {
            size_t n;
            uint8_t *p = wsframe_take_binary(&w, &n);
            if (n > MAX_BIN || (p && n == 0))
                __builtin_trap();
            if (p && n)
                (void)p[n - 1];  /* ASan checks the whole length is ours */
            free(p);
        } else if (rc < 0 && wsframe_receiving(&w)) {
            __builtin_trap();  /* an error abandons the message */
        }
    }
    wsframe_free(&w);
    return 0;
}
