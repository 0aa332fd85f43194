/* The relay's one clock for timers and deadlines: CLOCK_MONOTONIC in
 * milliseconds, which no change of the wall clock moves. Bottom layer:
 * includes nothing of ours. */
#ifndef WC_CLOCK_H
#define WC_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t clock_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The same clock in microseconds, for latencies shorter than a
 * millisecond (an SFTP stat on a LAN). */
static inline int64_t clock_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#endif
