/* SIGTERM, SIGINT and SIGHUP as events: blocked in every thread, read from
 * a signalfd that the service loop watches like any socket. */
#ifndef WC_SIGNALS_H
#define WC_SIGNALS_H

/* Block SIGTERM, SIGINT and SIGHUP in the calling thread and every thread
 * it creates later (call first thing in main(): server_run() reads them
 * from a signalfd), and ignore SIGPIPE. */
void signals_block(void);

/* A non-blocking signalfd of the three signals, or -1. */
int signals_open(void);

/* Read what `fd` (from signals_open()) holds: sets *got_hup for SIGHUP
 * and *got_term for SIGTERM or SIGINT. */
void signals_read(int fd, int *got_term, int *got_hup);

#endif
