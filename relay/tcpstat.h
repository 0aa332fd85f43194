/* What the kernel counts of a TCP connection that lws does not tell us:
 * how much of what we sent the peer has acknowledged (ws.c's close flush
 * watches it to tell a slow browser from one that reads nothing). */
#ifndef WC_TCPSTAT_H
#define WC_TCPSTAT_H

#include <stdint.h>

/* The bytes the peer of TCP socket `fd` has acknowledged so far, in
 * *acked; -1 when `fd` is not a TCP socket or the kernel does not say. */
int tcpstat_bytes_acked(int fd, uint64_t *acked);

#endif
