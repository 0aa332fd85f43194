/* One-line log records on stderr. Under systemd (JOURNAL_STREAM set) each
 * line carries a <N> syslog priority prefix that journald understands;
 * otherwise a UTC timestamp and the level name. Never pass a credential or
 * file content to these functions. */
#ifndef WC_LOG_H
#define WC_LOG_H

#include "config.h"

void log_init(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int log_enabled(enum log_level level);

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
