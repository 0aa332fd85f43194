/* wsframe: message assembly across fragments and the size caps, checked on
 * the declared frame length before anything is buffered. Control frames
 * (ping, pong, close) never reach the assembler: lws answers them itself,
 * so "a ping between two fragments" is, to us, two fragments in a row. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "wsframe.h"

#define MAXT 64
#define MAXB 1024

static uint8_t buf[4096];

static int feed(struct wsframe *w, size_t len, int first, int final, int bin, uint64_t rem,
                int keep)
{
    return wsframe_feed(w, buf, len, first, final, bin, rem, keep);
}

static void one_frame_messages(void)
{
    struct wsframe w;
    uint8_t *p;
    size_t len;

    wsframe_init(&w, MAXT, MAXB);
    memcpy(buf, "{\"id\":1}", 8);
    CHECK(feed(&w, 8, 1, 1, 0, 0, 0) == WSF_TEXT);
    CHECK(w.len == 8 && memcmp(w.text, "{\"id\":1}", 8) == 0);
    wsframe_text_done(&w);
    CHECK(w.len == 0);

    /* A kept binary message delivered in pieces (lws splits a frame at its
     * receive buffer): the declared rest reserves the buffer once. */
    memset(buf, 'a', 100);
    CHECK(feed(&w, 100, 1, 0, 1, 200, 1) == WSF_MORE);
    CHECK(w.bin_cap >= 300);
    CHECK(feed(&w, 100, 0, 0, 1, 100, 1) == WSF_MORE);
    CHECK(feed(&w, 100, 0, 1, 1, 0, 1) == WSF_BINARY);
    p = wsframe_take_binary(&w, &len);
    CHECK(p && len == 300 && p[299] == 'a');
    free(p);

    /* Not kept: counted, nothing stored. */
    CHECK(feed(&w, 100, 1, 1, 1, 0, 0) == WSF_BINARY);
    p = wsframe_take_binary(&w, &len);
    CHECK(!p && len == 100);

    /* Empty messages. */
    CHECK(feed(&w, 0, 1, 1, 1, 0, 1) == WSF_BINARY);
    p = wsframe_take_binary(&w, &len);
    CHECK(!p && len == 0);
    CHECK(feed(&w, 0, 1, 1, 0, 0, 0) == WSF_TEXT);
    CHECK(w.text && w.len == 0);
    wsframe_text_done(&w);
    wsframe_free(&w);
}

static void fragmented_messages(void)
{
    struct wsframe w;
    uint8_t *p;
    size_t len;

    wsframe_init(&w, MAXT, MAXB);
    /* Text across three frames (FIN=0, continuation, continuation FIN=1). */
    memcpy(buf, "abc", 3);
    CHECK(feed(&w, 3, 1, 0, 0, 0, 0) == WSF_MORE);
    CHECK(wsframe_receiving(&w));
    memcpy(buf, "de", 2);
    CHECK(feed(&w, 2, 0, 0, 0, 0, 0) == WSF_MORE);
    /* An empty continuation (a ping came between frames: nothing for us). */
    CHECK(feed(&w, 0, 0, 0, 0, 0, 0) == WSF_MORE);
    memcpy(buf, "f", 1);
    CHECK(feed(&w, 1, 0, 1, 0, 0, 0) == WSF_TEXT);
    CHECK(w.len == 6 && memcmp(w.text, "abcdef", 6) == 0);
    CHECK(!wsframe_receiving(&w));
    wsframe_text_done(&w);

    /* Binary across frames whose sizes are not known in advance: the
     * buffer grows, the bytes stay in order. */
    for (int i = 0; i < 10; i++) {
        memset(buf, 'A' + i, 90);
        CHECK(feed(&w, 90, i == 0, i == 9, 1, 0, 1) == (i == 9 ? WSF_BINARY : WSF_MORE));
    }
    p = wsframe_take_binary(&w, &len);
    CHECK(p && len == 900 && p[0] == 'A' && p[89] == 'A' && p[90] == 'B' && p[899] == 'J');
    free(p);

    /* `keep` counts only at the first fragment. */
    CHECK(feed(&w, 10, 1, 0, 1, 0, 0) == WSF_MORE);
    CHECK(feed(&w, 10, 0, 1, 1, 0, 1) == WSF_BINARY);
    p = wsframe_take_binary(&w, &len);
    CHECK(!p && len == 20);

    /* A continuation with nothing open is taken as a start. */
    memcpy(buf, "x", 1);
    CHECK(feed(&w, 1, 0, 1, 0, 0, 0) == WSF_TEXT);
    wsframe_text_done(&w);
    wsframe_free(&w);
}

static void caps(void)
{
    struct wsframe w;
    uint8_t *p;
    size_t len;

    wsframe_init(&w, MAXT, MAXB);
    /* Exactly at the caps is fine. */
    CHECK(feed(&w, MAXT, 1, 1, 0, 0, 0) == WSF_TEXT);
    wsframe_text_done(&w);
    CHECK(feed(&w, MAXB, 1, 1, 1, 0, 1) == WSF_BINARY);
    free(wsframe_take_binary(&w, &len));
    /* One over, by delivered bytes or by declared rest. */
    CHECK(feed(&w, MAXT + 1, 1, 1, 0, 0, 0) == WSF_E_TOO_LARGE);
    CHECK(!wsframe_receiving(&w));
    CHECK(feed(&w, 1, 1, 0, 0, MAXT, 0) == WSF_E_TOO_LARGE);
    CHECK(feed(&w, 10, 1, 0, 1, MAXB - 9, 1) == WSF_E_TOO_LARGE);
    CHECK(w.bin_cap <= MAXB);
    /* Across fragments: the sum is capped, whether kept or not. */
    CHECK(feed(&w, 1000, 1, 0, 1, 0, 0) == WSF_MORE);
    CHECK(feed(&w, 25, 0, 0, 1, 0, 0) == WSF_E_TOO_LARGE);
    CHECK(feed(&w, 1000, 1, 0, 1, 0, 1) == WSF_MORE);
    CHECK(feed(&w, 24, 0, 1, 1, 0, 1) == WSF_BINARY);
    p = wsframe_take_binary(&w, &len);
    CHECK(p && len == MAXB);
    free(p);

    /* The crafted sequence: a 10-byte first fragment, then a continuation
     * declaring 2^63 - 1 bytes. Rejected at once, nothing allocated for it
     * (this looped for ever when the buffer size doubled until it wrapped). */
    CHECK(feed(&w, 10, 1, 0, 1, 0, 1) == WSF_MORE);
    CHECK(feed(&w, 1, 0, 0, 1, INT64_MAX - 1, 1) == WSF_E_TOO_LARGE);
    CHECK(feed(&w, 10, 1, 0, 1, 0, 1) == WSF_MORE);
    CHECK(feed(&w, 0, 0, 0, 1, UINT64_MAX, 1) == WSF_E_TOO_LARGE);
    CHECK(feed(&w, 10, 1, 0, 0, UINT64_MAX, 0) == WSF_E_TOO_LARGE);
    CHECK(w.bin_cap <= MAXB);
    wsframe_free(&w);

    /* The real caps: a 16 MiB binary message of 64 KiB pieces is fine. */
    wsframe_init(&w, 64 * 1024, 16u * 1024 * 1024);
    CHECK(feed(&w, 10, 1, 0, 1, 0, 1) == WSF_MORE);
    CHECK(feed(&w, 0, 0, 0, 1, (uint64_t)1 << 63, 1) == WSF_E_TOO_LARGE);
    CHECK(feed(&w, 4096, 1, 0, 1, 16u * 1024 * 1024 - 4096, 1) == WSF_MORE);
    CHECK(w.bin_cap == 16u * 1024 * 1024);
    /* A buffer that large starts on a 2 MiB boundary, so that all of it can
     * be huge pages: glibc's own mapping would leave up to 2 MiB of it to
     * 512 faults of 4 KiB, paid on a session's first chunks. */
    CHECK(((uintptr_t)w.bin & (2u * 1024 * 1024 - 1)) == 0);
    wsframe_free(&w);
}

static void interleaving(void)
{
    struct wsframe w;
    size_t len;

    wsframe_init(&w, MAXT, MAXB);
    /* A new data message before the last one ended is a protocol error,
     * whichever kinds they are; afterwards the assembler starts clean. */
    CHECK(feed(&w, 5, 1, 0, 1, 0, 1) == WSF_MORE);
    CHECK(feed(&w, 5, 1, 1, 0, 0, 0) == WSF_E_PROTOCOL);
    CHECK(!wsframe_receiving(&w));
    CHECK(feed(&w, 5, 1, 0, 0, 0, 0) == WSF_MORE);
    CHECK(feed(&w, 5, 1, 0, 1, 0, 1) == WSF_E_PROTOCOL);
    CHECK(feed(&w, 5, 1, 0, 0, 0, 0) == WSF_MORE);
    CHECK(feed(&w, 5, 1, 0, 0, 0, 0) == WSF_E_PROTOCOL);
    /* After an error a fresh message works. */
    CHECK(feed(&w, 3, 1, 1, 1, 0, 1) == WSF_BINARY);
    free(wsframe_take_binary(&w, &len));
    CHECK(len == 3);
    /* A continuation keeps the kind of its message, whatever it says. */
    memcpy(buf, "ab", 2);
    CHECK(feed(&w, 1, 1, 0, 0, 0, 0) == WSF_MORE);
    CHECK(feed(&w, 1, 0, 1, 1, 0, 1) == WSF_TEXT);
    wsframe_text_done(&w);
    wsframe_free(&w);
    wsframe_free(&w);  /* twice is harmless */
}

int main(void)
{
    one_frame_messages();
    fragmented_messages();
    caps();
    interleaving();
    printf("test_wsframe: %d checks, %d failed\n", check_count, check_failures);
    return check_failures != 0;
}
