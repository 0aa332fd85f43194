/* stderr logging, one record per write() so lines from worker threads do
 * not interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level max_level = LOG_INFO;
static int journal;

void log_init(enum log_level level)
{
    max_level = level;
    journal = getenv("JOURNAL_STREAM") != NULL;
}

int log_enabled(enum log_level level)
{
    return level <= max_level;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    static const int syslog_prio[] = {3, 4, 6, 7};
    char line[1024];
    size_t n;
    va_list ap;

    if (!log_enabled(level))
        return;
    if (journal) {
        n = (size_t)snprintf(line, sizeof(line), "<%d>", syslog_prio[level]);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ %s ",
                              ts.tv_nsec / 1000000, names[level]);
    }
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    n = strlen(line);
    /* Keep records on one line whatever the message held. */
    for (size_t i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[n++] = '\n';
    if (write(STDERR_FILENO, line, n) < 0) {
        /* Nowhere left to report it. */
    }
}
