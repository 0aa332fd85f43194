/* One-line log records on stderr. Under systemd (JOURNAL_STREAM set) each
 * line carries a <N> syslog priority prefix that journald understands;
 * otherwise a UTC timestamp and the level name. Never pass a credential or
 * file content to these functions. */
#ifndef WC_LOG_H
#define WC_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Longest record text; longer ones are cut. */
#define LOG_LINE_MAX 1024
/* An identical record within this long after the last one written is
 * counted, not written; the count is written ("last message repeated N
 * times") before the next different record, and the record itself again
 * once this much time has passed. */
#define LOG_REPEAT_FOLD_MS 10000

void log_init(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int log_enabled(enum log_level level);

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
