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

/* `ms` from now on the same clock, as the absolute time that
 * pthread_cond_timedwait() takes from a condition variable set to
 * CLOCK_MONOTONIC. */
static inline struct timespec clock_deadline(int64_t ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

#endif
