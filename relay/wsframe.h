/* Assembly of WebSocket data messages from the fragments lws delivers:
 * text and binary messages across continuation frames, with the size caps
 * of PROTOCOL §3 enforced on each frame's declared length before a byte is
 * buffered. Pure: no lws, no session; ws.c feeds it what lws hands over
 * (lws answers control frames itself, so only data fragments arrive). */
#ifndef WC_WSFRAME_H
#define WC_WSFRAME_H

#include <stddef.h>
#include <stdint.h>

struct wsframe {
    size_t max_text;     /* whole text message cap */
    size_t max_binary;   /* whole binary message cap */
    int in_msg;          /* between a message's first and final fragment */
    int binary;          /* the message in progress is binary */
    int keep;            /* its bytes are stored (else only counted) */
    size_t len;          /* bytes of the message so far, stored or not */
    char *text;          /* max_text bytes, allocated on first use */
    uint8_t *bin;        /* binary payload, grown on demand, reused */
    size_t bin_cap;
};

enum wsframe_result {
    WSF_MORE = 0,         /* fragment taken; the message goes on */
    WSF_TEXT = 1,         /* a whole text message: text, len */
    WSF_BINARY = 2,       /* a whole binary message: wsframe_take_binary() */
    WSF_E_TOO_LARGE = -1, /* the message is (declared) over its cap */
    WSF_E_NOMEM = -2,
    WSF_E_PROTOCOL = -3,  /* a new message began inside an unfinished one */
};

void wsframe_init(struct wsframe *w, size_t max_text, size_t max_binary);
/* Release the buffers, wiping the text one (it may have held credentials). */
void wsframe_free(struct wsframe *w);

/* Take one fragment of `len` bytes. `first`/`final` say whether it opens
 * and ends its message, `remaining` is how many bytes of the current frame
 * are still to come (lws_remaining_packet_payload(): declared by the peer,
 * up to 2^63). `keep` is read at a binary message's first fragment: whether
 * its bytes are wanted (a request waits for them) or only counted and
 * dropped. After an error the message is abandoned; the caller closes. */
int wsframe_feed(struct wsframe *w, const void *in, size_t len, int first, int final,
                 int binary, uint64_t remaining, int keep);

/* Offer a buffer of `cap` bytes (malloc'd; ownership passes here) for the
 * next binary message to be assembled in: kept when no buffer is held and
 * no message is in progress, else freed. Reusing the buffer of an earlier
 * upload chunk spares the page faults of a fresh one. */
void wsframe_offer_binary(struct wsframe *w, uint8_t *buf, size_t cap);

/* After WSF_BINARY: the payload (caller owns it, frees with free()) or NULL
 * when it was not kept or empty; `*len` is its length either way. */
uint8_t *wsframe_take_binary(struct wsframe *w, size_t *len);

/* After WSF_TEXT, once the text was used: wipe it. */
void wsframe_text_done(struct wsframe *w);

/* Stop storing the binary message in progress (its buffer is freed);
 * its remaining bytes are only counted, and WSF_BINARY still ends it. */
void wsframe_drop(struct wsframe *w);

/* A data message is partly received. */
int wsframe_receiving(const struct wsframe *w);

#endif
