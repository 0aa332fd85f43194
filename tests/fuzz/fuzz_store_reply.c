/* libFuzzer target: what a state store (STATE_URL) may answer. Input: the
 * bytes a hostile store sends. store_redis_scan() decides whether the
 * relay takes an answer; whatever it takes must be exactly one answer
 * hiredis parses without error, of a type our commands use (never an
 * array), no longer than STORE_REPLY_MAX, and an answer it asks more bytes
 * for must not be complete already. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data, *bad = NULL;
    size_t used = 0;
    int rc = store_redis_scan(buf, size, &used, &bad);
    redisReader *rd;
    void *reply = NULL;

    if (rc < 0) {
        if (!bad || !bad[0])
            __builtin_trap();
        return 0;
    }
    if (rc == 0) {
        /* Incomplete: the same bytes cut short are incomplete too. */
        if (size > 0 && store_redis_scan(buf, size - 1, &used, &bad) == 1)
            __builtin_trap();
        return 0;
    }
    if (used == 0 || used > size || used > STORE_REPLY_MAX)
        __builtin_trap();
    rd = redisReaderCreate();
    if (!rd)
        return 0;
    if (redisReaderFeed(rd, buf, used) != REDIS_OK || redisReaderGetReply(rd, &reply) != REDIS_OK ||
        !reply)
        __builtin_trap();
    {
        redisReply *r = reply;
        void *more = NULL;
        if (r->type == REDIS_REPLY_ARRAY)
            __builtin_trap();
        if (r->type == REDIS_REPLY_STRING && r->len > STORE_REPLY_MAX)
            __builtin_trap();
        /* Exactly one answer: nothing left over for a second. */
        if (redisReaderGetReply(rd, &more) != REDIS_OK || more)
            __builtin_trap();
        /* Every strict prefix is incomplete. */
        for (size_t cut = 0; cut < used; cut += 1 + cut / 8) {
            size_t u2 = 0;
            const char *b2 = NULL;
            if (store_redis_scan(buf, cut, &u2, &b2) == 1)
                __builtin_trap();
        }
    }
    freeReplyObject(reply);
    redisReaderFree(rd);
    return 0;
}
