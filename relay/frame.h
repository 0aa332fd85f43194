/* Outgoing WebSocket frames as a neutral type both sides can build: the SSH
 * worker fills payloads in place (no copy), the lws side sends them. The
 * headroom in front of the payload is what libwebsockets writes its frame
 * header into (LWS_PRE; ws.c checks it fits). */
#ifndef WC_FRAME_H
#define WC_FRAME_H

#include <stddef.h>

#define FRAME_HEADROOM 32

struct frame {
    struct frame *next;
    int binary;
    int close_after;      /* close the WebSocket once this frame is out */
    size_t len;           /* payload bytes */
    size_t sent;          /* payload bytes already handed to lws */
    unsigned char buf[];  /* FRAME_HEADROOM + len */
};

/* A frame with room for `len` payload bytes, uninitialised. The caller owns
 * it until it is posted to a session. NULL when out of memory. */
struct frame *frame_new(int binary, size_t len);

/* A text frame holding a copy of `text`, which is freed here (it comes from
 * the proto_* builders). NULL when `text` is NULL or out of memory. */
struct frame *frame_from_text(char *text);

static inline unsigned char *frame_data(struct frame *f)
{
    return f->buf + FRAME_HEADROOM;
}

void frame_free(struct frame *f);

#endif
