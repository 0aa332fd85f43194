/* tcpstat: byte counters of a TCP connection from the kernel.
 *
 * Its own file because the counters are in the kernel's struct tcp_info
 * (linux/tcp.h, tcpi_bytes_acked since Linux 4.2), and glibc's
 * netinet/tcp.h, which ws.c uses for the connection's state, declares an
 * older struct of the same name: the two headers cannot meet in one unit. */
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

#include "tcpstat.h"

int tcpstat_bytes_acked(int fd, uint64_t *acked)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);

    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return -1;
    /* An older kernel fills less of the struct than we know of. */
    if (len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(ti.tcpi_bytes_acked))
        return -1;
    *acked = ti.tcpi_bytes_acked;
    return 0;
}
