/* Streamed answers: a fragmented message queued by the worker keeps the
 * service thread's frames behind it (nothing but control frames may come
 * between fragments, RFC 6455 §5.4), and the byte counts a server reports
 * for statvfs saturate instead of wrapping into negative JSON numbers. */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "session.h"
#include "sftp_ops.h"

static struct frame *tagged(int binary, char tag, int more, int cont)
{
    struct frame *f = frame_new(binary, 1);

    frame_data(f)[0] = (unsigned char)tag;
    f->more = more;
    f->cont = cont;
    return f;
}

/* Pop every queued frame; their tags in order. */
static void drain(struct session *s, char *out, size_t cap)
{
    size_t n = 0;
    struct frame *f;

    while ((f = session_peek_frame(s)) != NULL && n + 1 < cap) {
        out[n++] = (char)frame_data(f)[0];
        session_pop_frame(s);
    }
    out[n] = '\0';
}

static void test_service_frames_wait_behind_a_fragmented_message(void)
{
    struct config cfg;
    struct session_hub hub;
    struct session *s;
    char order[16];

    memset(&cfg, 0, sizeof(cfg));
    session_hub_init(&hub, &cfg, NULL);
    s = session_new(&hub, "127.0.0.1", "h", 22);
    CHECK(s != NULL);

    /* Whole messages keep their order. */
    session_post(s, tagged(0, 'a', 0, 0), NULL);
    session_post_nowait(s, tagged(0, 'b', 0, 0));
    drain(s, order, sizeof(order));
    CHECK_STR(order, "ab");

    /* A text header, a binary message in three fragments, and two error
     * frames from the service thread arriving in the middle of it. */
    session_post(s, tagged(0, 'h', 0, 0), tagged(1, '1', 1, 0));
    session_post_nowait(s, tagged(0, 'x', 0, 0));
    session_post(s, tagged(1, '2', 1, 1), NULL);
    session_post_nowait(s, tagged(0, 'y', 0, 0));
    session_post(s, tagged(1, '3', 0, 1), NULL);
    session_post_nowait(s, tagged(0, 'z', 0, 0));
    drain(s, order, sizeof(order));
    CHECK_STR(order, "h123xyz");

    /* A message cut short (abort frame) also releases what was held. */
    session_post(s, tagged(1, '1', 1, 0), NULL);
    session_post_nowait(s, tagged(0, 'x', 0, 0));
    session_post(s, tagged(1, '!', 0, 1), NULL);
    drain(s, order, sizeof(order));
    CHECK_STR(order, "1!x");

    /* Frames still held when the session goes are freed with it (ASan). */
    session_post(s, tagged(1, '1', 1, 0), NULL);
    session_post_nowait(s, tagged(0, 'x', 0, 0));
    /* Posting notified the hub, which holds a reference until taken. */
    for (struct session *n = session_hub_take_notified(&hub), *next; n; n = next) {
        next = session_hub_notified_next(&hub, n);
        session_unref(n);
    }
    session_unref(s);
    session_hub_destroy(&hub);
}

static void test_statvfs_bytes_saturate(void)
{
    CHECK(sftp_ops_bytes(0, 4096) == 0);
    CHECK(sftp_ops_bytes(1000, 4096) == 4096000);
    CHECK(sftp_ops_bytes(UINT64_MAX, 4096) == INT64_MAX);
    CHECK(sftp_ops_bytes((uint64_t)1 << 52, 4096) == INT64_MAX);   /* 2^64: wraps to 0 */
    CHECK(sftp_ops_bytes((uint64_t)1 << 51, 4096) == INT64_MAX);   /* 2^63: negative */
    CHECK(sftp_ops_bytes(((uint64_t)1 << 51) - 1, 4096) == INT64_MAX - 4095);
    CHECK(sftp_ops_bytes(UINT64_MAX, 0) == 0);
    /* The upload window: 512 KiB on a LAN, the bandwidth-delay product for
     * 100 MB/s on a distant server, never over 4 MiB. */
    CHECK(sftp_ops_write_window(0) == 512u * 1024);
    CHECK(sftp_ops_write_window(50) == 512u * 1024);
    CHECK(sftp_ops_write_window(20000) == 2000000);
    CHECK(sftp_ops_write_window(41943) == 4194300);
    CHECK(sftp_ops_write_window(41944) == 4u * 1024 * 1024);
    CHECK(sftp_ops_write_window(UINT32_MAX) == 4u * 1024 * 1024);
}

int main(void)
{
    test_service_frames_wait_behind_a_fragmented_message();
    test_statvfs_bytes_saturate();
    CHECK_DONE();
}
