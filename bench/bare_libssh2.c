/* bare_libssh2: the floor for the relay's CPU cost. Reads or writes one
 * file over SFTP with libssh2 directly, the way the relay's worker does it
 * (blocking mode, 256 KiB reads looped until full, 8 MiB writes looped
 * until acknowledged, fsync before close), and prints the transfer's wall
 * time and this process's CPU time as key=value pairs for bench/bench.py. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libssh2.h>
#include <libssh2_sftp.h>

#define READ_BYTES (256u * 1024)
#define WRITE_BYTES (8u * 1024 * 1024)

static double now_secs(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_secs(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void die_ssh(LIBSSH2_SESSION *ssh, const char *what)
{
    char *msg = NULL;

    libssh2_session_last_error(ssh, &msg, NULL, 0);
    fprintf(stderr, "bare_libssh2: %s: %s\n", what, msg ? msg : "?");
    exit(1);
}

static char *read_text_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)(n < 0 ? 0 : n) + 1);
    if (!buf || n < 0 || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* As the relay's read_full(): libssh2 returns as soon as some data is
 * there, so loop until the chunk is full or the file ends. */
static ssize_t read_full(LIBSSH2_SFTP_HANDLE *h, char *buf, size_t want)
{
    size_t n = 0;

    while (n < want) {
        ssize_t rc = libssh2_sftp_read(h, buf + n, want - n);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
        n += (size_t)rc;
    }
    return (ssize_t)n;
}

/* As the relay's write_full() on loopback: at most WRITE_WINDOW in flight
 * per call (relay/sftp_ops.c says why: a larger burst makes sshd grow its
 * input buffer at great cost), and a call returns after the first
 * acknowledged packet of its pipelined batch. */
#define WRITE_WINDOW (512u * 1024)

static int write_full(LIBSSH2_SFTP_HANDLE *h, const char *data, size_t len)
{
    size_t off = 0;

    while (off < len) {
        size_t n = len - off < WRITE_WINDOW ? len - off : WRITE_WINDOW;
        ssize_t rc = libssh2_sftp_write(h, data + off, n);
        if (rc < 0)
            return (int)rc;
        off += (size_t)rc;
    }
    return 0;
}

/* Each 8 MiB write timed, as wsbench times the relay's write_chunks: the
 * slowest against the median shows what a fresh SFTP stream costs the
 * server before it runs at speed (sshd and sftp-server are new processes
 * whose buffers grow, page by page, during the first megabytes), with no
 * relay in the path. */
#define CHUNKS_TIMED 4096

static int cmp_secs(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void print_chunks(double *secs, size_t n)
{
    size_t worst_at = 0;
    double worst;

    if (n == 0)
        return;
    for (size_t k = 1; k < n; k++)
        if (secs[k] > secs[worst_at])
            worst_at = k;
    worst = secs[worst_at];
    qsort(secs, n, sizeof(*secs), cmp_secs);
    printf(" worst_chunk_secs=%.4f worst_chunk_index=%zu median_chunk_secs=%.4f", worst,
           worst_at, secs[n / 2]);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bare_libssh2 --port N --user U --key FILE [--host IP] [--src FILE]\n"
            "                    read REMOTE | write REMOTE SIZE\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *user = NULL, *key_path = NULL, *src = NULL, *mode;
    const char *cs, *sc;
    int port = 22, i, sock, one = 1, fd = -1;
    unsigned long long size = 0, moved = 0;
    static double chunk_secs[CHUNKS_TIMED];
    size_t nchunks = 0;
    struct sockaddr_in sa;
    LIBSSH2_SESSION *ssh;
    LIBSSH2_SFTP *sftp;
    LIBSSH2_SFTP_HANDLE *h;
    char *key, *buf;
    double t0, c0, t1, c1;

    for (i = 1; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--host") == 0)
            host = argv[i + 1];
        else if (strcmp(argv[i], "--user") == 0)
            user = argv[i + 1];
        else if (strcmp(argv[i], "--key") == 0)
            key_path = argv[i + 1];
        else if (strcmp(argv[i], "--src") == 0)
            src = argv[i + 1];
        else
            usage();
    }
    if (!user || !key_path || i >= argc)
        usage();
    mode = argv[i];
    if (!(strcmp(mode, "read") == 0 && argc - i == 2) &&
        !(strcmp(mode, "write") == 0 && argc - i == 3))
        usage();
    if (strcmp(mode, "write") == 0)
        size = strtoull(argv[i + 2], NULL, 10);
    key = read_text_file(key_path);
    if (!key) {
        fprintf(stderr, "bare_libssh2: cannot read %s\n", key_path);
        return 2;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        usage();
    sock = socket(AF_INET, SOCK_STREAM, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("bare_libssh2: connect");
        return 1;
    }
    /* The relay sets it too (without it, reads stall on delayed ACKs). */
    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    libssh2_init(0);
    ssh = libssh2_session_init();
    libssh2_session_set_blocking(ssh, 1);
    libssh2_session_set_timeout(ssh, 60000);
    if (libssh2_session_handshake(ssh, sock) < 0)
        die_ssh(ssh, "handshake");
    if (libssh2_userauth_publickey_frommemory(ssh, user, strlen(user), NULL, 0, key,
                                              strlen(key), NULL) < 0)
        die_ssh(ssh, "authentication");
    sftp = libssh2_sftp_init(ssh);
    if (!sftp)
        die_ssh(ssh, "sftp");
#ifdef LIBSSH2_SFTP_HAS_READ_SIZE
    /* As the relay does (ssh_conn.c): reads of the size the server promised. */
    {
        LIBSSH2_SFTP_LIMITS lim;
        if (libssh2_sftp_limits(sftp, &lim) == 0 && lim.max_read_length > 0)
            libssh2_sftp_set_read_size(sftp, (size_t)lim.max_read_length);
    }
#endif
    cs = libssh2_session_methods(ssh, LIBSSH2_METHOD_CRYPT_CS);
    sc = libssh2_session_methods(ssh, LIBSSH2_METHOD_CRYPT_SC);

    buf = malloc(WRITE_BYTES);
    if (!buf)
        return 2;
    if (src) {
        fd = open(src, O_RDONLY);
        if (fd < 0) {
            perror("bare_libssh2: --src");
            return 2;
        }
    } else {
        unsigned long long x = 88172645463325252ULL;
        for (size_t k = 0; k + 8 <= WRITE_BYTES; k += 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            memcpy(buf + k, &x, 8);
        }
    }

    t0 = now_secs();
    c0 = cpu_secs();
    if (strcmp(mode, "read") == 0) {
        ssize_t n;
        h = libssh2_sftp_open(sftp, argv[i + 1], LIBSSH2_FXF_READ, 0);
        if (!h)
            die_ssh(ssh, "open");
        while ((n = read_full(h, buf, READ_BYTES)) > 0)
            moved += (unsigned long long)n;
        if (n < 0)
            die_ssh(ssh, "read");
        libssh2_sftp_close_handle(h);
    } else {
        h = libssh2_sftp_open(sftp, argv[i + 1],
                              LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC, 0644);
        if (!h)
            die_ssh(ssh, "open");
        while (moved < size) {
            size_t n = size - moved < WRITE_BYTES ? (size_t)(size - moved) : WRITE_BYTES;
            if (fd >= 0 && read(fd, buf, n) != (ssize_t)n) {
                fprintf(stderr, "bare_libssh2: --src file too short\n");
                return 2;
            }
            double w0 = now_secs();
            if (write_full(h, buf, n) < 0)
                die_ssh(ssh, "write");
            if (nchunks < CHUNKS_TIMED)
                chunk_secs[nchunks++] = now_secs() - w0;
            moved += n;
        }
        /* The relay's write_close fsyncs (the "fsync" feature). */
        if (libssh2_sftp_fsync(h) < 0 &&
            libssh2_sftp_last_error(sftp) != LIBSSH2_FX_OP_UNSUPPORTED)
            die_ssh(ssh, "fsync");
        if (libssh2_sftp_close_handle(h) < 0)
            die_ssh(ssh, "close");
    }
    c1 = cpu_secs();
    t1 = now_secs();

    printf("mode=%s bytes=%llu secs=%.6f mbps=%.2f cpu_s=%.3f cpu_s_per_gib=%.3f "
           "cipher_cs=%s cipher_sc=%s libssh2=%s",
           mode, moved, t1 - t0, (double)moved / (t1 - t0) / 1e6, c1 - c0,
           moved ? (c1 - c0) / ((double)moved / (1024.0 * 1024 * 1024)) : 0.0,
           cs ? cs : "?", sc ? sc : "?", libssh2_version(0));
    print_chunks(chunk_secs, nchunks);
    printf("\n");
    libssh2_sftp_shutdown(sftp);
    libssh2_session_disconnect(ssh, "done");
    libssh2_session_free(ssh);
    libssh2_exit();
    close(sock);
    free(buf);
    free(key);
    if (fd >= 0)
        close(fd);
    return 0;
}
