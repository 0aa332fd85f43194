/* Allocation of outgoing frames with lws headroom in front. */
#include "frame.h"

#include <stdlib.h>
#include <string.h>

struct frame *frame_new(int binary, size_t len)
{
    struct frame *f = malloc(sizeof(*f) + FRAME_HEADROOM + len);

    if (!f)
        return NULL;
    f->next = NULL;
    f->binary = binary;
    f->close_after = 0;
    f->more = 0;
    f->cont = 0;
    f->abort = 0;
    f->len = len;
    f->sent = 0;
    return f;
}

struct frame *frame_from_text(char *text)
{
    struct frame *f;
    size_t len;

    if (!text)
        return NULL;
    len = strlen(text);
    f = frame_new(0, len);
    if (f)
        memcpy(frame_data(f), text, len);
    free(text);
    return f;
}

void frame_free(struct frame *f)
{
    free(f);
}
