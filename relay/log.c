/* stderr logging, one record per write() so lines from worker threads do
 * not interleave; control bytes escaped, identical records folded. */
#include "log.h"
#include "clock.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
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

/* The message text with every control byte (and DEL) written as \xNN, so
 * that a header value (an Origin, a host name) can neither end a record
 * nor send escape sequences to a terminal reading the log. */
static size_t escape(const char *in, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;

    for (; *in && n + 5 < outlen; in++) {
        unsigned char c = (unsigned char)*in;
        if (c < 0x20 || c == 0x7f) {
            out[n++] = '\\';
            out[n++] = 'x';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

static void emit(enum log_level level, const char *text)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    static const int syslog_prio[] = {3, 4, 6, 7};
    char line[LOG_LINE_MAX + 64];
    size_t n;

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
    n += (size_t)snprintf(line + n, sizeof(line) - n - 1, "%s", text);
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    if (write(STDERR_FILENO, line, n) < 0) {
        /* Nowhere left to report it. */
    }
}

/* The last record written, to fold identical ones that follow it: a
 * failure that repeats in a loop (accept at the descriptor limit) must not
 * fill the disk. Guarded by `repeat_mu`: workers log too. */
static pthread_mutex_t repeat_mu = PTHREAD_MUTEX_INITIALIZER;
static char last_text[LOG_LINE_MAX];
static enum log_level last_level;
static unsigned long repeats;     /* identical records not written since */
static int64_t last_written_ms;

void log_msg(enum log_level level, const char *fmt, ...)
{
    char raw[LOG_LINE_MAX], text[LOG_LINE_MAX], note[96];
    va_list ap;
    int64_t now;

    if (!log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    escape(raw, text, sizeof(text));
    now = clock_now_ms();

    pthread_mutex_lock(&repeat_mu);
    if (level == last_level && strcmp(text, last_text) == 0 &&
        now - last_written_ms < LOG_REPEAT_FOLD_MS) {
        repeats++;
        pthread_mutex_unlock(&repeat_mu);
        return;
    }
    if (repeats) {
        snprintf(note, sizeof(note), "last message repeated %lu times", repeats);
        emit(last_level, note);
    }
    repeats = 0;
    last_level = level;
    memcpy(last_text, text, sizeof(last_text));
    last_written_ms = now;
    emit(level, text);
    pthread_mutex_unlock(&repeat_mu);
}
