/* Outgoing WebSocket frames as a neutral type both sides can build: the SSH
 * worker fills payloads in place (no copy), the lws side sends them. The
 * headroom in front of the payload is what libwebsockets writes its frame
 * header into (LWS_PRE; ws.c checks it fits). */
#ifndef WC_FRAME_H
#define WC_FRAME_H

#include <stddef.h>

#define FRAME_HEADROOM 32

/* A message too large to hold goes out as several frames of the queue, the
 * fragments of one WebSocket message (RFC 6455 §5.4): the first has `more`
 * set, the following ones `cont`, the last one clears `more`. Nothing but
 * control frames may be sent between them, so the session keeps frames from
 * other producers behind an unfinished message. */
struct frame {
    struct frame *next;
    int binary;
    int close_after;      /* close the WebSocket once this frame is out */
    int more;             /* the message goes on in a later frame */
    int cont;             /* continues a message started by an earlier frame */
    /* No payload: the message it continues was cut short (the file shrank,
     * the server failed mid-way). A short message must never pass for a
     * whole one, so the WebSocket is closed instead of finishing it. */
    int abort;
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
