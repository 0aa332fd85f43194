/* The relay's CPU floor per GiB, part by part (bench/floor.sh adds the SSH
 * cipher from `openssl speed`): what one byte must cost however good the
 * code, on this machine. A relayed byte is received from one TCP socket,
 * copied once into a frame (upload: unmasked on the way, RFC 6455 §5.3),
 * and sent on another TCP socket; the cipher is measured apart.
 * Each figure is the CPU time (user + system) of the side that does the
 * work, per GiB, so another process on the machine hardly changes it. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BUF_BYTES (256u * 1024)        /* the relay's download frame */
#define COPY_GIB 4
#define TCP_BYTES (4ull << 30)

static double cpu_secs(void)
{
    struct rusage r;

    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_utime.tv_sec + (double)r.ru_stime.tv_sec +
           ((double)r.ru_utime.tv_usec + (double)r.ru_stime.tv_usec) / 1e6;
}

/* memcpy and the 4-byte-key XOR of unmasking, over a buffer the size of
 * a frame, so the figure is the loop's cost, not the memory system's. */
static void copies(uint8_t *a, uint8_t *b)
{
    uint64_t key = 0x0403020104030201ull, rounds = (uint64_t)COPY_GIB << 30;
    double t;

    rounds /= BUF_BYTES;
    t = cpu_secs();
    for (uint64_t i = 0; i < rounds; i++) {
        memcpy(b, a, BUF_BYTES);
        __asm__ volatile("" : : "r"(b) : "memory");
    }
    printf("copy %.3f\n", (cpu_secs() - t) / COPY_GIB);
    t = cpu_secs();
    for (uint64_t i = 0; i < rounds; i++) {
        uint64_t *p = (uint64_t *)(void *)a;
        for (size_t j = 0; j < BUF_BYTES / 8; j++)
            p[j] ^= key;
        __asm__ volatile("" : : "r"(a) : "memory");
    }
    printf("unmask %.3f\n", (cpu_secs() - t) / COPY_GIB);
}

/* TCP over loopback: a child sends TCP_BYTES, we receive them; each side
 * reports its own CPU. */
static int tcp(uint8_t *buf)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int l = socket(AF_INET, SOCK_STREAM, 0), c;
    uint64_t got = 0;
    double t;
    pid_t pid;

    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0 ||
        getsockname(l, (struct sockaddr *)&a, &alen) < 0)
        return -1;
    fflush(stdout);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        uint64_t sent = 0;
        c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)) < 0)
            _exit(1);
        t = cpu_secs();
        while (sent < TCP_BYTES) {
            ssize_t k = write(c, buf, BUF_BYTES);
            if (k <= 0)
                _exit(1);
            sent += (uint64_t)k;
        }
        printf("tcp_send %.3f\n", (cpu_secs() - t) / (double)(TCP_BYTES >> 30));
        fflush(stdout);
        _exit(0);
    }
    c = accept(l, NULL, NULL);
    if (c < 0)
        return -1;
    t = cpu_secs();
    while (got < TCP_BYTES) {
        ssize_t k = read(c, buf, BUF_BYTES);
        if (k <= 0)
            break;
        got += (uint64_t)k;
    }
    printf("tcp_recv %.3f\n", (cpu_secs() - t) / (double)(TCP_BYTES >> 30));
    waitpid(pid, NULL, 0);
    return got == TCP_BYTES ? 0 : -1;
}

int main(void)
{
    uint8_t *a = malloc(BUF_BYTES), *b = malloc(BUF_BYTES);

    if (!a || !b)
        return 2;
    memset(a, 1, BUF_BYTES);
    memset(b, 2, BUF_BYTES);
    copies(a, b);
    return tcp(a) == 0 ? 0 : 1;
}
