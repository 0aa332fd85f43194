/* wsbench: drives the relay exactly like the Wattcloud app does — relay
 * cookie by proof of work, WebSocket upgrade, host key, key auth, then
 * read_chunk / write_chunk one at a time, each waiting for its answer — and
 * prints machine-readable results for bench/bench.py.
 *
 * It is written directly on sockets (no WebSocket library) so that the
 * client costs little CPU next to the relay and sshd it shares cores with.
 * Several sessions run as forked processes that start their measured phase
 * together; the parent samples the relay's CPU time and memory around it. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#define KIB 1024u
#define MIB (1024u * 1024u)
#define UPLOAD_CHUNK (8u * MIB)          /* what the app sends per write_chunk */
#define READ_CHUNK_MAX (256u * KIB)      /* PROTOCOL §3 read_chunk */
#define HTTP_MAX 16384
#define RESULT_MAX 2048                  /* one result line; < PIPE_BUF keeps it atomic */
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

enum { OP_CONT = 0, OP_TEXT = 1, OP_BIN = 2, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10 };

struct opts {
    const char *relay_host;
    int relay_port;
    const char *host;            /* SFTP target as the app names it */
    int port;
    const char *user;
    char *key_pem;               /* private key text, sent as privateKey */
    const char *origin;
    const char *src;             /* upload data from this local file */
    int sessions;
    int relay_pid;
    int sha256;                  /* hash downloaded bytes (correctness runs) */
    int timeout_secs;
    int setup_parallel;          /* sessions logging in at the same time */
    const char *mode;
    char **args;
    int nargs;
};

/* ------------------------------------------------------------------ */
/* Small helpers. */

static char errbuf[512];

/* Record why something failed; functions return -1 and the caller reports
 * errbuf once. */
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
    va_end(ap);
    return -1;
}

static double now_secs(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (!p) {
        fprintf(stderr, "wsbench: out of memory\n");
        exit(2);
    }
    return p;
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
    buf = xmalloc((size_t)n + 1);
    if (n < 0 || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void hex(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int unhex(const char *in, unsigned char *out, size_t max)
{
    size_t n = strlen(in);

    if (n % 2 || n / 2 > max)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(in + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (unsigned char)v;
    }
    return (int)(n / 2);
}

static int send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return fail("send: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int tcp_connect(const char *host, int port, int timeout_secs)
{
    struct sockaddr_in sa;
    struct timeval tv = {.tv_sec = timeout_secs};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (fd < 0 || inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        if (fd >= 0)
            close(fd);
        return fail("bad relay address %s", host);
    }
    /* Every read and write is bounded: a stuck relay fails the run instead
     * of hanging the benchmark. */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return fail("connect %s:%d: %s", host, port, strerror(errno));
    }
    return fd;
}

/* ------------------------------------------------------------------ */
/* Buffered reading from a socket: HTTP headers and WebSocket frame
 * headers come from the buffer; large payloads go straight from the
 * socket into their destination. */

struct conn {
    int fd;
    unsigned char *rb;
    size_t rcap, roff, rlen;
};

static void conn_init(struct conn *c, int fd)
{
    c->fd = fd;
    c->rcap = 64 * KIB;
    c->rb = xmalloc(c->rcap);
    c->roff = c->rlen = 0;
}

static void conn_free(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->rb);
    c->fd = -1;
    c->rb = NULL;
}

/* Make at least `need` bytes available at rb + roff. */
static int conn_fill(struct conn *c, size_t need)
{
    if (need > c->rcap)
        return fail("internal: read buffer too small");
    if (c->roff + need > c->rcap) {
        memmove(c->rb, c->rb + c->roff, c->rlen - c->roff);
        c->rlen -= c->roff;
        c->roff = 0;
    }
    while (c->rlen - c->roff < need) {
        ssize_t n = recv(c->fd, c->rb + c->rlen, c->rcap - c->rlen, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            return fail("connection closed by the relay");
        if (n < 0)
            return fail("recv: %s", errno == EAGAIN ? "timed out" : strerror(errno));
        c->rlen += (size_t)n;
    }
    return 0;
}

static int conn_buffered(const struct conn *c)
{
    return c->rlen > c->roff;
}

/* Copy `n` bytes to dst: what is buffered first, the rest from the socket. */
static int conn_take(struct conn *c, unsigned char *dst, size_t n)
{
    size_t have = c->rlen - c->roff, k = have < n ? have : n;

    memcpy(dst, c->rb + c->roff, k);
    c->roff += k;
    while (k < n) {
        ssize_t r = recv(c->fd, dst + k, n - k, MSG_WAITALL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            return fail("connection closed by the relay");
        if (r < 0)
            return fail("recv: %s", errno == EAGAIN ? "timed out" : strerror(errno));
        k += (size_t)r;
    }
    return 0;
}

/* Read an HTTP response head (up to and including the blank line) into
 * `head`, NUL-terminated. Bytes after it stay buffered. */
static int read_head(struct conn *c, char *head, size_t max)
{
    size_t scanned = 0;

    for (;;) {
        size_t have = c->rlen - c->roff;
        for (; scanned + 4 <= have; scanned++) {
            if (memcmp(c->rb + c->roff + scanned, "\r\n\r\n", 4) == 0) {
                size_t n = scanned + 4;
                if (n >= max)
                    return fail("HTTP response head too large");
                memcpy(head, c->rb + c->roff, n);
                head[n] = '\0';
                c->roff += n;
                return 0;
            }
        }
        if (have >= max)
            return fail("HTTP response head too large");
        if (conn_fill(c, have + 1) < 0)
            return -1;
    }
}

/* The value of header `name` in `head` (case-insensitive), copied to out. */
static int header_value(const char *head, const char *name, char *out, size_t max)
{
    size_t nlen = strlen(name);

    for (const char *line = strstr(head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *l = line + 2, *end = strstr(l, "\r\n");
        size_t vlen;
        if (!end || strncasecmp(l, name, nlen) != 0 || l[nlen] != ':')
            continue;
        l += nlen + 1;
        while (*l == ' ' || *l == '\t')
            l++;
        vlen = (size_t)(end - l);
        if (vlen >= max)
            return -1;
        memcpy(out, l, vlen);
        out[vlen] = '\0';
        return 0;
    }
    return -1;
}

static int status_code(const char *head)
{
    int status = 0;

    return sscanf(head, "HTTP/1.%*d %d", &status) == 1 ? status : -1;
}

/* ------------------------------------------------------------------ */
/* The relay cookie, PROTOCOL §1.1, exactly as the browser gets it. */

/* One plain HTTP/1.1 request on its own connection. `head` receives the
 * response head, `body` the body (Content-Length bytes, NUL-terminated). */
static int http_request(const struct opts *o, const char *request, size_t reqlen, char *head,
                        char *body, size_t bodymax)
{
    struct conn c;
    char clen[32];
    size_t n = 0;
    int fd = tcp_connect(o->relay_host, o->relay_port, o->timeout_secs), rc = -1;

    if (fd < 0)
        return -1;
    conn_init(&c, fd);
    if (send_all(fd, request, reqlen) < 0 || read_head(&c, head, HTTP_MAX) < 0)
        goto out;
    if (header_value(head, "Content-Length", clen, sizeof(clen)) == 0)
        n = strtoul(clen, NULL, 10);
    if (n >= bodymax) {
        fail("HTTP body too large");
        goto out;
    }
    if (n && conn_take(&c, (unsigned char *)body, n) < 0)
        goto out;
    body[n] = '\0';
    rc = 0;
out:
    conn_free(&c);
    return rc;
}

static void purpose_for(const char *host, int port, char *out /* 38 */)
{
    unsigned char digest[32];
    char input[300], lower[260], hx[65];
    size_t i;

    for (i = 0; host[i] && i < sizeof(lower) - 1; i++)
        lower[i] = (char)((host[i] >= 'A' && host[i] <= 'Z') ? host[i] + 32 : host[i]);
    lower[i] = '\0';
    snprintf(input, sizeof(input), "%s:%d", lower, port);
    SHA256((const unsigned char *)input, strlen(input), digest);
    hex(digest, 16, hx);
    snprintf(out, 38, "sftp:%.32s", hx);
}

static int leading_zero_bits(const unsigned char *d)
{
    int bits = 0;

    for (int i = 0; i < 32; i++) {
        if (d[i] == 0) {
            bits += 8;
            continue;
        }
        for (unsigned char m = 0x80; m && !(d[i] & m); m >>= 1)
            bits++;
        break;
    }
    return bits;
}

/* Smallest answer with SHA-256(nonce || purpose || answer_le64) starting
 * with `difficulty` zero bits: the same search the browser runs. */
static uint64_t solve_pow(const unsigned char *nonce, size_t nlen, const char *purpose,
                          int difficulty)
{
    EVP_MD_CTX *prefix = EVP_MD_CTX_new(), *ctx = EVP_MD_CTX_new();
    unsigned char digest[32], le[8];
    uint64_t answer;

    EVP_DigestInit_ex(prefix, EVP_sha256(), NULL);
    EVP_DigestUpdate(prefix, nonce, nlen);
    EVP_DigestUpdate(prefix, purpose, strlen(purpose));
    for (answer = 0;; answer++) {
        for (int i = 0; i < 8; i++)
            le[i] = (unsigned char)(answer >> (8 * i));
        EVP_MD_CTX_copy_ex(ctx, prefix);
        EVP_DigestUpdate(ctx, le, 8);
        EVP_DigestFinal_ex(ctx, digest, NULL);
        if (leading_zero_bits(digest) >= difficulty)
            break;
    }
    EVP_MD_CTX_free(ctx);
    EVP_MD_CTX_free(prefix);
    return answer;
}

static int get_cookie(const struct opts *o, char *cookie, size_t max)
{
    char purpose[40], req[1024], *head = xmalloc(HTTP_MAX), body[2048], setc[2048];
    unsigned char nonce[64];
    const char *nonce_id, *nonce_hex, *p;
    json_t *j = NULL, *ans = NULL;
    char *ansbody = NULL;
    int n, status, difficulty, nlen, rc = -1;
    size_t vlen;

    purpose_for(o->host, o->port, purpose);
    n = snprintf(req, sizeof(req),
                 "GET /relay/auth/challenge?purpose=%s HTTP/1.1\r\nHost: %s:%d\r\n"
                 "Origin: %s\r\nConnection: close\r\n\r\n",
                 purpose, o->relay_host, o->relay_port, o->origin);
    if (http_request(o, req, (size_t)n, head, body, sizeof(body)) < 0)
        goto out;
    status = status_code(head);
    if (status != 200) {
        fail("GET /relay/auth/challenge: HTTP %d", status);
        goto out;
    }
    j = json_loads(body, 0, NULL);
    nonce_id = json_string_value(json_object_get(j, "nonce_id"));
    nonce_hex = json_string_value(json_object_get(j, "nonce"));
    difficulty = (int)json_integer_value(json_object_get(j, "difficulty"));
    if (!nonce_id || !nonce_hex || difficulty < 1 || difficulty > 40 ||
        (nlen = unhex(nonce_hex, nonce, sizeof(nonce))) < 0) {
        fail("challenge answer is not the expected JSON: %.200s", body);
        goto out;
    }
    ans = json_pack("{s:s,s:I}", "nonce_id", nonce_id, "answer",
                    (json_int_t)solve_pow(nonce, (size_t)nlen, purpose, difficulty));
    ansbody = json_dumps(ans, JSON_COMPACT);
    n = snprintf(req, sizeof(req),
                 "POST /relay/auth HTTP/1.1\r\nHost: %s:%d\r\nOrigin: %s\r\n"
                 "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                 "Connection: close\r\n\r\n%s",
                 o->relay_host, o->relay_port, o->origin, strlen(ansbody), ansbody);
    if (n >= (int)sizeof(req) || http_request(o, req, (size_t)n, head, body, sizeof(body)) < 0)
        goto out;
    status = status_code(head);
    if (status != 204) {
        fail("POST /relay/auth: HTTP %d", status);
        goto out;
    }
    if (header_value(head, "Set-Cookie", setc, sizeof(setc)) < 0 ||
        strncmp(setc, "relay_auth_sftp=", 16) != 0) {
        fail("POST /relay/auth: no relay_auth_sftp cookie in the answer");
        goto out;
    }
    p = setc + 16;
    vlen = strcspn(p, ";");
    if (vlen == 0 || vlen >= max) {
        fail("POST /relay/auth: bad cookie value");
        goto out;
    }
    memcpy(cookie, p, vlen);
    cookie[vlen] = '\0';
    rc = 0;
out:
    free(ansbody);
    json_decref(ans);
    json_decref(j);
    free(head);
    return rc;
}

/* ------------------------------------------------------------------ */
/* WebSocket (RFC 6455), client side. */

struct ws {
    struct conn c;
    unsigned char *msg;          /* the last complete data message */
    size_t mcap, mlen;
    unsigned char *tx;           /* header room + payload of the frame being built */
    size_t txcap;
    uint64_t rng;
};

#define TX_HEAD 14               /* longest client frame header */

static uint32_t ws_rand32(struct ws *w)
{
    /* xorshift64*: mask keys only need to be unpredictable to proxies,
     * not cryptographically strong, for a benchmark. */
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return (uint32_t)((w->rng * 0x2545F4914F6CDD1DULL) >> 32);
}

static void ensure_cap(unsigned char **buf, size_t *cap, size_t need)
{
    if (*cap >= need)
        return;
    free(*buf);
    *cap = need;
    *buf = xmalloc(need);
}

/* Payload area of the next frame, `len` bytes: fill it, then ws_send(). */
static unsigned char *ws_payload(struct ws *w, size_t len)
{
    ensure_cap(&w->tx, &w->txcap, TX_HEAD + len);
    return w->tx + TX_HEAD;
}

static void mask_bytes(unsigned char *p, size_t len, uint32_t key)
{
    uint64_t k64 = (uint64_t)key | ((uint64_t)key << 32), v;
    size_t i = 0;

    /* The key bytes in wire order repeat every 4 bytes, so an 8-byte word
     * XOR with the key twice masks 8 bytes at a time. */
    for (; i + 8 <= len; i += 8) {
        memcpy(&v, p + i, 8);
        v ^= k64;
        memcpy(p + i, &v, 8);
    }
    for (; i < len; i++)
        p[i] ^= ((const unsigned char *)&key)[i % 4];
}

/* Send one complete frame whose payload was written at ws_payload(). */
static int ws_send(struct ws *w, int opcode, size_t len)
{
    unsigned char hdr[TX_HEAD], *start;
    uint32_t key = ws_rand32(w);
    size_t h = 0;

    hdr[h++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        hdr[h++] = (unsigned char)(0x80 | len);
    } else if (len <= 0xffff) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (unsigned char)(len >> 8);
        hdr[h++] = (unsigned char)len;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    memcpy(hdr + h, &key, 4);
    h += 4;
    mask_bytes(w->tx + TX_HEAD, len, key);
    start = w->tx + TX_HEAD - h;
    memcpy(start, hdr, h);
    return send_all(w->c.fd, start, h + len);
}

static int ws_send_copy(struct ws *w, int opcode, const void *data, size_t len)
{
    memcpy(ws_payload(w, len), data, len);
    return ws_send(w, opcode, len);
}

static int ws_send_text(struct ws *w, const char *text)
{
    return ws_send_copy(w, OP_TEXT, text, strlen(text));
}

/* Receive the next data message into w->msg (opcode in *op), answering
 * pings on the way. Fragmented messages are joined. A close from the
 * relay is answered and reported as an error. With `control_returns`, a
 * control frame handled at the start of a message returns 1 at once (the
 * caller is only servicing the connection while it waits for something
 * else); otherwise the result is 0 or -1. */
static int ws_recv_ex(struct ws *w, int *op, int control_returns)
{
    int msg_op = -1;

    w->mlen = 0;
    for (;;) {
        unsigned char *b, ctl[125];
        int fin, opcode;
        uint64_t len;

        if (conn_fill(&w->c, 2) < 0)
            return -1;
        b = w->c.rb + w->c.roff;
        fin = b[0] & 0x80;
        opcode = b[0] & 0x0f;
        if (b[1] & 0x80)
            return fail("the relay sent a masked frame");
        len = b[1] & 0x7f;
        w->c.roff += 2;
        if (len == 126 || len == 127) {
            size_t n = len == 126 ? 2 : 8;
            if (conn_fill(&w->c, n) < 0)
                return -1;
            len = 0;
            for (size_t i = 0; i < n; i++)
                len = (len << 8) | w->c.rb[w->c.roff + i];
            w->c.roff += n;
        }
        if (opcode >= 8) {
            if (len > sizeof(ctl) || !fin)
                return fail("bad control frame");
            if (conn_take(&w->c, ctl, (size_t)len) < 0)
                return -1;
            if (opcode == OP_PING) {
                if (ws_send_copy(w, OP_PONG, ctl, (size_t)len) < 0)
                    return -1;
            } else if (opcode == OP_CLOSE) {
                unsigned code = len >= 2 ? (unsigned)(ctl[0] << 8 | ctl[1]) : 0;
                ws_send_copy(w, OP_CLOSE, ctl, len >= 2 ? 2 : 0);
                return fail("the relay closed the WebSocket (code %u)", code);
            }
            if (control_returns && msg_op < 0)
                return 1;
            continue;
        }
        if (opcode == OP_CONT) {
            if (msg_op < 0)
                return fail("continuation frame without a message");
        } else {
            if (msg_op >= 0)
                return fail("new message inside a fragmented one");
            msg_op = opcode;
        }
        if (w->mlen + len > 64 * MIB)
            return fail("message too large");
        if (w->mcap < w->mlen + len + 1) {
            size_t cap = w->mcap ? w->mcap : 4096;
            unsigned char *grown;
            while (cap < w->mlen + len + 1)
                cap *= 2;
            grown = realloc(w->msg, cap);
            if (!grown)
                return fail("out of memory");
            w->msg = grown;
            w->mcap = cap;
        }
        if (conn_take(&w->c, w->msg + w->mlen, (size_t)len) < 0)
            return -1;
        w->mlen += (size_t)len;
        if (fin) {
            w->msg[w->mlen] = '\0';
            *op = msg_op;
            return 0;
        }
    }
}

static int ws_recv(struct ws *w, int *op)
{
    return ws_recv_ex(w, op, 0);
}

/* Handle one incoming frame without expecting data: answers a ping,
 * notices a close. Used while a session waits for the other sessions or
 * for the parent's signal. */
static int ws_service_control(struct ws *w)
{
    int op, rc = ws_recv_ex(w, &op, 1);

    if (rc != 0)
        return rc < 0 ? -1 : 0;
    return fail("unexpected %s frame while idle", op == OP_TEXT ? "text" : "binary");
}

static void ws_close(struct ws *w)
{
    unsigned char code[2] = {0x03, 0xe8};  /* 1000 */

    if (w->c.fd >= 0)
        ws_send_copy(w, OP_CLOSE, code, 2);
    conn_free(&w->c);
    free(w->msg);
    free(w->tx);
    memset(w, 0, sizeof(*w));
    w->c.fd = -1;
}

static int ws_open(const struct opts *o, const char *cookie, struct ws *w)
{
    unsigned char key[16], sha[20];
    char key64[32], expect[40], accept[64], req[4096], *head;
    int n, fd, status;

    memset(w, 0, sizeof(*w));
    w->c.fd = -1;
    if (getrandom(&w->rng, sizeof(w->rng), 0) != sizeof(w->rng) || w->rng == 0)
        w->rng = 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
    for (int i = 0; i < 16; i += 4) {
        uint32_t r = ws_rand32(w);
        memcpy(key + i, &r, 4);
    }
    EVP_EncodeBlock((unsigned char *)key64, key, 16);
    n = snprintf(req, sizeof(req),
                 "GET /relay/ws?mode=sftp&host=%s&port=%d HTTP/1.1\r\n"
                 "Host: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                 "Origin: %s\r\nCookie: relay_auth_sftp=%s\r\n\r\n",
                 o->host, o->port, o->relay_host, o->relay_port, key64, o->origin, cookie);
    if (n >= (int)sizeof(req))
        return fail("upgrade request too long");
    fd = tcp_connect(o->relay_host, o->relay_port, o->timeout_secs);
    if (fd < 0)
        return -1;
    conn_init(&w->c, fd);
    head = xmalloc(HTTP_MAX);
    if (send_all(fd, req, (size_t)n) < 0 || read_head(&w->c, head, HTTP_MAX) < 0)
        goto failed;
    status = status_code(head);
    if (status != 101) {
        fail("upgrade refused: HTTP %d", status);
        goto failed;
    }
    snprintf(req, sizeof(req), "%s%s", key64, WS_GUID);
    SHA1((const unsigned char *)req, strlen(req), sha);
    EVP_EncodeBlock((unsigned char *)expect, sha, 20);
    if (header_value(head, "Sec-WebSocket-Accept", accept, sizeof(accept)) < 0 ||
        strcmp(accept, expect) != 0) {
        fail("upgrade answer has a wrong Sec-WebSocket-Accept");
        goto failed;
    }
    free(head);
    /* Downloads arrive as 256 KiB frames: a larger buffer means fewer
     * recv calls for the frame headers in between. */
    free(w->c.rb);
    w->c.rcap = 512 * KIB;
    w->c.rb = xmalloc(w->c.rcap);
    w->c.rlen = w->c.roff = 0;
    return 0;
failed:
    free(head);
    conn_free(&w->c);
    return -1;
}

/* ------------------------------------------------------------------ */
/* Requests, PROTOCOL §3. */

struct session {
    struct ws ws;
    uint32_t next_id;
};

/* Send {"id","method","params"} (params stolen) and wait for the answer with
 * that id. Returns the whole answer (caller decrefs) or NULL; an answer with
 * "error" is returned too — check with is_ok(). */
static json_t *call(struct session *s, const char *method, json_t *params)
{
    uint32_t id = ++s->next_id;
    json_t *req = json_pack("{s:I,s:s,s:o}", "id", (json_int_t)id, "method", method, "params",
                            params ? params : json_object());
    char *text = json_dumps(req, JSON_COMPACT);
    json_t *resp;
    int op, rc = ws_send_text(&s->ws, text);

    free(text);
    json_decref(req);
    if (rc < 0)
        return NULL;
    if (ws_recv(&s->ws, &op) < 0)
        return NULL;
    if (op != OP_TEXT) {
        fail("%s: expected a text answer, got a binary frame", method);
        return NULL;
    }
    resp = json_loadb((const char *)s->ws.msg, s->ws.mlen, 0, NULL);
    if (!resp || json_integer_value(json_object_get(resp, "id")) != (json_int_t)id) {
        fail("%s: answer without our id: %.200s", method, (const char *)s->ws.msg);
        json_decref(resp);
        return NULL;
    }
    return resp;
}

static json_t *result_of(json_t *resp, const char *method)
{
    json_t *r = json_object_get(resp, "result");

    if (!r) {
        const char *e = json_string_value(json_object_get(resp, "error"));
        fail("%s failed: %s", method, e ? e : "(no error text)");
    }
    return r;
}

/* A call that must succeed; returns 0 or -1. */
static int call_ok(struct session *s, const char *method, json_t *params)
{
    json_t *resp = call(s, method, params);
    int rc = resp && result_of(resp, method) ? 0 : -1;

    json_decref(resp);
    return rc;
}

static int session_open(const struct opts *o, struct session *s)
{
    char cookie[2048];
    json_t *frame, *resp, *params;
    const char *type;
    int op;

    memset(s, 0, sizeof(*s));
    s->ws.c.fd = -1;
    if (get_cookie(o, cookie, sizeof(cookie)) < 0 || ws_open(o, cookie, &s->ws) < 0)
        return -1;
    if (ws_recv(&s->ws, &op) < 0)
        return -1;
    frame = json_loadb((const char *)s->ws.msg, s->ws.mlen, 0, NULL);
    type = json_string_value(json_object_get(frame, "type"));
    if (op != OP_TEXT || !type || strcmp(type, "host_key") != 0) {
        fail("expected host_key, got %.200s", op == OP_TEXT ? (const char *)s->ws.msg : "binary");
        json_decref(frame);
        return -1;
    }
    json_decref(frame);
    /* A benchmark trusts its own sshd: accept whatever key it shows. */
    if (ws_send_text(&s->ws, "{\"type\":\"host_key_accepted\"}") < 0)
        return -1;
    params = json_pack("{s:s,s:s,s:s,s:n}", "type", "publickey", "username", o->user,
                       "privateKey", o->key_pem, "passphrase");
    resp = call(s, "auth", params);
    if (!resp || !result_of(resp, "auth")) {
        json_decref(resp);
        return -1;
    }
    json_decref(resp);
    return 0;
}

static void session_close(struct session *s)
{
    ws_close(&s->ws);
}

/* ------------------------------------------------------------------ */
/* Modes. Each fills `out` with key=value pairs for its result line. */

struct result {
    uint64_t bytes;
    uint64_t ops;
    double secs;
    char extra[1024];
};

static void path_for(const char *tmpl, int index, char *out, size_t max)
{
    const char *pct = strstr(tmpl, "%d");

    if (!pct) {
        snprintf(out, max, "%s", tmpl);
        return;
    }
    snprintf(out, max, "%.*s%d%s", (int)(pct - tmpl), tmpl, index, pct + 2);
}

/* read_open, then one read_chunk at a time — text answer, then its binary
 * frame — until the empty chunk, then read_close. */
static int do_download(const struct opts *o, struct session *s, const char *path,
                       struct result *r)
{
    json_t *resp = call(s, "read_open", json_pack("{s:s}", "path", path)), *res;
    char handle[64];
    EVP_MD_CTX *sha = NULL;
    int rc = -1;

    if (!resp || !(res = result_of(resp, "read_open")))
        goto out;
    snprintf(handle, sizeof(handle), "%s", json_string_value(json_object_get(res, "handle")));
    json_decref(resp);
    resp = NULL;
    if (o->sha256) {
        sha = EVP_MD_CTX_new();
        EVP_DigestInit_ex(sha, EVP_sha256(), NULL);
    }
    for (;;) {
        json_int_t size;
        int op;

        resp = call(s, "read_chunk", json_pack("{s:s}", "handle", handle));
        if (!resp || !(res = result_of(resp, "read_chunk")))
            goto out;
        size = json_integer_value(json_object_get(res, "size"));
        json_decref(resp);
        resp = NULL;
        if (ws_recv(&s->ws, &op) < 0)
            goto out;
        if (op != OP_BIN || (json_int_t)s->ws.mlen != size || size > (json_int_t)READ_CHUNK_MAX) {
            fail("read_chunk: announced %lld bytes, got a %s frame of %zu", (long long)size,
                 op == OP_BIN ? "binary" : "text", s->ws.mlen);
            goto out;
        }
        r->ops++;
        if (size == 0)
            break;
        if (sha)
            EVP_DigestUpdate(sha, s->ws.msg, s->ws.mlen);
        r->bytes += (uint64_t)size;
    }
    if (call_ok(s, "read_close", json_pack("{s:s}", "handle", handle)) < 0)
        goto out;
    if (sha) {
        unsigned char d[32];
        char hx[65];
        size_t len = strlen(r->extra);
        EVP_DigestFinal_ex(sha, d, NULL);
        hex(d, 32, hx);
        snprintf(r->extra + len, sizeof(r->extra) - len, " sha256=%s", hx);
    }
    rc = 0;
out:
    EVP_MD_CTX_free(sha);
    json_decref(resp);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static void fill_pattern(unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t x = seed | 1;

    for (size_t i = 0; i + 8 <= n; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(p + i, &x, 8);
    }
}

/* write_open, `size` bytes as 8 MiB write_chunk frames — request, binary
 * frame, wait for {} — then write_close. Data comes from --src (read
 * straight into the frame being built) or from a generated pattern. */
static int do_upload(const struct opts *o, struct session *s, const char *path, uint64_t size,
                     struct result *r)
{
    json_t *resp = call(s, "write_open", json_pack("{s:s}", "path", path)), *res;
    char handle[64], *text;
    unsigned char *pattern = NULL;
    uint64_t off = 0;
    int fd = -1, rc = -1;
    double worst = 0, *times = NULL;
    size_t nchunks = (size_t)((size + UPLOAD_CHUNK - 1) / UPLOAD_CHUNK), ntimes = 0,
           worst_at = 0;

    if (!resp || !(res = result_of(resp, "write_open")))
        goto out;
    snprintf(handle, sizeof(handle), "%s", json_string_value(json_object_get(res, "handle")));
    json_decref(resp);
    resp = NULL;
    if (o->src) {
        fd = open(o->src, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fail("open %s: %s", o->src, strerror(errno));
            goto out;
        }
    } else {
        pattern = xmalloc(UPLOAD_CHUNK);
        fill_pattern(pattern, UPLOAD_CHUNK, (uint64_t)getpid());
    }
    times = xmalloc((nchunks ? nchunks : 1) * sizeof(*times));
    /* Fault in our own send buffer before the clock starts: the first
     * chunk's time is meant to show a stall in the relay, and writing 8 MiB
     * into fresh pages here costs this VM 30-40 ms of the client's own. */
    if (size)
        memset(ws_payload(&s->ws, size < UPLOAD_CHUNK ? (size_t)size : UPLOAD_CHUNK), 0,
               size < UPLOAD_CHUNK ? (size_t)size : UPLOAD_CHUNK);
    /* The request text is the same for every chunk but its id. */
    while (off < size) {
        size_t n = size - off < UPLOAD_CHUNK ? (size_t)(size - off) : UPLOAD_CHUNK;
        uint32_t id = ++s->next_id;
        double t0 = now_secs();
        json_t *req = json_pack("{s:I,s:s,s:{s:s}}", "id", (json_int_t)id, "method",
                                "write_chunk", "params", "handle", handle);
        unsigned char *dst;
        int op;

        text = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        rc = ws_send_text(&s->ws, text);
        free(text);
        if (rc < 0)
            goto out;
        rc = -1;
        dst = ws_payload(&s->ws, n);
        if (fd >= 0) {
            size_t got = 0;
            while (got < n) {
                ssize_t k = read(fd, dst + got, n - got);
                if (k <= 0) {
                    fail("read %s: %s", o->src, k < 0 ? strerror(errno) : "file too short");
                    goto out;
                }
                got += (size_t)k;
            }
        } else {
            memcpy(dst, pattern, n);
            memcpy(dst, &off, n >= 8 ? 8 : 0);  /* every chunk differs */
        }
        if (ws_send(&s->ws, OP_BIN, n) < 0 || ws_recv(&s->ws, &op) < 0)
            goto out;
        resp = op == OP_TEXT ? json_loadb((const char *)s->ws.msg, s->ws.mlen, 0, NULL) : NULL;
        if (!resp || json_integer_value(json_object_get(resp, "id")) != (json_int_t)id) {
            fail("write_chunk: unexpected answer %.200s", op == OP_TEXT ? (char *)s->ws.msg : "");
            goto out;
        }
        if (!result_of(resp, "write_chunk"))
            goto out;
        json_decref(resp);
        resp = NULL;
        off += n;
        r->ops++;
        times[ntimes] = now_secs() - t0;
        if (times[ntimes] > worst) {
            worst = times[ntimes];
            worst_at = ntimes;
        }
        ntimes++;
    }
    /* A stall hides in an average: report the slowest chunk (and which one:
     * the session's first upload used to stall on its 2nd) next to the
     * median chunk. */
    /* Diagnosis: WSBENCH_CHUNK_LOG=FILE appends every chunk's time, in
     * order, one upload a line (which chunk stalls, and how the rest run). */
    if (getenv("WSBENCH_CHUNK_LOG")) {
        FILE *lf = fopen(getenv("WSBENCH_CHUNK_LOG"), "a");
        for (size_t i = 0; lf && i < ntimes; i++)
            fprintf(lf, "%.4f%c", times[i], i + 1 == ntimes ? '\n' : ' ');
        if (lf)
            fclose(lf);
    }
    qsort(times, ntimes, sizeof(*times), cmp_double);
    snprintf(r->extra + strlen(r->extra), sizeof(r->extra) - strlen(r->extra),
             " worst_chunk_secs=%.3f worst_chunk_index=%zu median_chunk_secs=%.4f", worst,
             worst_at, ntimes ? times[ntimes / 2] : 0.0);
    if (call_ok(s, "write_close", json_pack("{s:s}", "handle", handle)) < 0)
        goto out;
    r->ops++;
    r->bytes += size;
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    free(pattern);
    free(times);
    json_decref(resp);
    return rc;
}

/* Many small operations, each waiting for its answer, in the order an app
 * session would mix them: per iteration mkdir, stat, rename, list, delete
 * on a fresh directory. Per-verb latencies go into the result line. */
static int do_smallops(struct session *s, const char *dir, int n, struct result *r)
{
    static const char *const verbs[] = {"mkdir", "stat", "rename", "list", "delete"};
    double spent[5] = {0};
    char a[1100], b[1100];

    for (int i = 0; i < n; i++) {
        json_t *params[5];
        snprintf(a, sizeof(a), "%.1000s/d%d", dir, i);
        snprintf(b, sizeof(b), "%.1000s/e%d", dir, i);
        params[0] = json_pack("{s:s}", "path", a);
        params[1] = json_pack("{s:s}", "path", a);
        params[2] = json_pack("{s:s,s:s}", "from", a, "to", b);
        params[3] = json_pack("{s:s}", "path", b);
        params[4] = json_pack("{s:s}", "path", b);
        for (int v = 0; v < 5; v++) {
            double t0 = now_secs();
            if (call_ok(s, verbs[v], params[v]) < 0) {
                for (int k = v + 1; k < 5; k++)
                    json_decref(params[k]);
                return -1;
            }
            spent[v] += now_secs() - t0;
            r->ops++;
        }
    }
    snprintf(r->extra + strlen(r->extra), sizeof(r->extra) - strlen(r->extra),
             " us_mkdir=%.0f us_stat=%.0f us_rename=%.0f us_list=%.0f us_delete=%.0f",
             spent[0] / n * 1e6, spent[1] / n * 1e6, spent[2] / n * 1e6, spent[3] / n * 1e6,
             spent[4] / n * 1e6);
    return 0;
}

static int run_mode(const struct opts *o, struct session *s, int index, struct result *r)
{
    char p1[1024], p2[1024];

    if (strcmp(o->mode, "download") == 0) {
        path_for(o->args[0], index, p1, sizeof(p1));
        return do_download(o, s, p1, r);
    }
    if (strcmp(o->mode, "upload") == 0) {
        path_for(o->args[0], index, p1, sizeof(p1));
        return do_upload(o, s, p1, strtoull(o->args[1], NULL, 10), r);
    }
    if (strcmp(o->mode, "mix") == 0) {
        path_for(o->args[0], index, p1, sizeof(p1));
        path_for(o->args[1], index, p2, sizeof(p2));
        if (do_download(o, s, p1, r) < 0)
            return -1;
        return do_upload(o, s, p2, strtoull(o->args[2], NULL, 10), r);
    }
    if (strcmp(o->mode, "smallops") == 0) {
        path_for(o->args[0], index, p1, sizeof(p1));
        return do_smallops(s, p1, atoi(o->args[1]), r);
    }
    return 0;  /* idle: the session only has to exist */
}

/* ------------------------------------------------------------------ */
/* The relay process, seen from /proc. */

static double proc_cpu_secs(int pid)
{
    char path[64], buf[2048], *p;
    unsigned long long ut = 0, st = 0;
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the ")" of the command name: state is field 3, utime
     * field 14 and stime field 15 (proc(5)), all threads included. */
    p = strrchr(buf, ')');
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                     &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Minor page faults of the whole process so far (proc(5) field 10, all
 * threads): on a VM each one costs microseconds, so faults per GiB moved
 * show allocation churn that CPU time alone blurs. -1 when unreadable. */
static long long proc_minflt(int pid)
{
    char path[64], buf[2048], *p;
    unsigned long long mf = 0;
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* After ")": state (3), ppid, pgrp, session, tty_nr, tpgid, flags (9),
     * minflt (10). */
    p = strrchr(buf, ')');
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %llu", &mf) != 1)
        return -1;
    return (long long)mf;
}

static long proc_status_kb(int pid, const char *field)
{
    char path[64], line[256];
    size_t flen = strlen(field);
    long kb = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
            kb = strtol(line + flen + 1, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

/* Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0),
 * so the peak we read afterwards is the peak of the measured phase. */
static void proc_reset_hwm(int pid)
{
    char path[64];
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/clear_refs", pid);
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, "5", 1) != 1)
            fprintf(stderr, "wsbench: cannot reset VmHWM of %d\n", pid);
        close(fd);
    }
}

/* ------------------------------------------------------------------ */
/* Sessions as processes. Each child opens its session, reports ready,
 * waits for "go" (the parent closes the go pipe), runs the mode, writes
 * one result line, and keeps the session open until "quit" so that no
 * session's teardown falls into the measured phase of the others. */

/* Wait until `fd` (a pipe) reports EOF, answering the relay's pings. */
static int wait_pipe_eof(struct session *s, int fd)
{
    for (;;) {
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = s->ws.c.fd, .events = POLLIN}};
        if (conn_buffered(&s->ws.c)) {
            if (ws_service_control(&s->ws) < 0)
                return -1;
            continue;
        }
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return fail("poll: %s", strerror(errno));
        }
        if (p[0].revents) {
            char c;
            if (read(fd, &c, 1) <= 0)
                return 0;
        }
        if (p[1].revents && ws_service_control(&s->ws) < 0)
            return -1;
    }
}

static void child(const struct opts *o, int index, const int tokens[2], int ready_w, int go_r,
                  int quit_r, int result_w)
{
    struct session s;
    struct result r;
    char line[RESULT_MAX], c;
    int ok = -1, n, opened;
    double t0;

    memset(&r, 0, sizeof(r));
    /* A login token: the relay refuses a login from an IP that already
     * has RATELIMIT_AUTH_MAX_FAILURES (5) attempts pending (PROTOCOL §4 counts
     * an attempt before it is made), so at most setup_parallel (< 5)
     * sessions of ours may be logging in at once. */
    if (read(tokens[0], &c, 1) != 1)
        _exit(3);
    opened = session_open(o, &s);
    if (write(tokens[1], "t", 1) != 1)
        _exit(3);
    if (opened < 0) {
        if (write(ready_w, "E", 1) != 1)
            _exit(3);
        goto report;
    }
    if (write(ready_w, "R", 1) != 1)
        _exit(3);
    if (wait_pipe_eof(&s, go_r) < 0)
        goto report;
    t0 = now_secs();
    ok = run_mode(o, &s, index, &r);
    r.secs = now_secs() - t0;
report:
    if (ok == 0) {
        n = snprintf(line, sizeof(line), "session=%d ok=1 bytes=%llu ops=%llu secs=%.6f%s\n",
                     index, (unsigned long long)r.bytes, (unsigned long long)r.ops, r.secs,
                     r.extra);
    } else {
        /* The error text goes last, quoted, for the parent to pass on. */
        for (char *e = errbuf; *e; e++)
            if (*e == '"' || *e == '\n')
                *e = '\'';
        n = snprintf(line, sizeof(line), "session=%d ok=0 bytes=0 ops=0 secs=0 error=\"%s\"\n",
                     index, errbuf);
    }
    if (n >= (int)sizeof(line)) {
        /* Truncated: keep it one line. */
        n = (int)sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    if (write(result_w, line, (size_t)n) != n)
        _exit(3);
    /* Stay until "quit" even after a failure: a child that exits early is
     * how the parent recognises one that crashed without a result. */
    if (ok == 0)
        wait_pipe_eof(&s, quit_r);
    session_close(&s);
    while (read(quit_r, &c, 1) > 0)
        ;
    _exit(ok == 0 ? 0 : 1);
}

/* Read exactly `n` bytes from fd with a deadline. Returns bytes read. */
static size_t read_until(int fd, char *buf, size_t n, double deadline)
{
    size_t got = 0;

    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int left = (int)((deadline - now_secs()) * 1000);
        ssize_t k;
        if (left <= 0 || poll(&p, 1, left) <= 0)
            break;
        k = read(fd, buf + got, n - got);
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    return got;
}

static int run(const struct opts *o)
{
    int ready[2], go[2], quit[2], res[2], tokens[2], n = o->sessions, ok = 0, errors = 0;
    int nready = 0;
    char *rbuf = xmalloc((size_t)n * RESULT_MAX + 1), *line, *save = NULL, first_err[600] = "";
    char extra1[1024] = "";
    size_t rlen = 0;
    double deadline, t0, t1, cpu0 = -1, cpu1 = -1, max_secs = 0;
    long long flt0 = -1, flt1 = -1;
    long rss_before = -1, rss_ready = -1, rss_end = -1, hwm = -1;
    unsigned long long bytes = 0, ops = 0;

    if (pipe(ready) < 0 || pipe(go) < 0 || pipe(quit) < 0 || pipe(res) < 0 ||
        pipe(tokens) < 0) {
        perror("pipe");
        return 2;
    }
    for (int i = 0; i < o->setup_parallel; i++)
        if (write(tokens[1], "t", 1) != 1)
            return 2;
    if (o->relay_pid > 0)
        rss_before = proc_status_kb(o->relay_pid, "VmRSS");
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            close(ready[0]);
            close(go[1]);
            close(quit[1]);
            close(res[0]);
            child(o, i, tokens, ready[1], go[0], quit[0], res[1]);
        }
    }
    close(ready[1]);
    close(go[0]);
    close(quit[0]);
    close(res[1]);

    /* Everyone connected and authenticated (or failed). */
    deadline = now_secs() + o->timeout_secs + 0.5 * n;
    {
        char *marks = xmalloc((size_t)n);
        size_t got = read_until(ready[0], marks, (size_t)n, deadline);
        for (size_t i = 0; i < got; i++)
            nready += marks[i] == 'R';
        free(marks);
    }
    if (strcmp(o->mode, "idle") == 0 && o->nargs > 0) {
        /* Let the relay settle (threads parked, buffers released). */
        double hold = atof(o->args[0]);
        if (hold > 0)
            usleep((useconds_t)(hold * 1e6));
    }
    if (o->relay_pid > 0) {
        rss_ready = proc_status_kb(o->relay_pid, "VmRSS");
        proc_reset_hwm(o->relay_pid);
        cpu0 = proc_cpu_secs(o->relay_pid);
        flt0 = proc_minflt(o->relay_pid);
    }
    t0 = now_secs();
    close(go[1]);
    /* Results: one line per child. Children stay alive until "quit", so
     * one that exits before is one that crashed without a result. */
    for (int lines = 0, exited = 0; lines + exited < n;) {
        struct pollfd p = {.fd = res[0], .events = POLLIN};
        ssize_t k;
        if (poll(&p, 1, 1000) <= 0) {
            while (waitpid(-1, NULL, WNOHANG) > 0)
                exited++;
            continue;
        }
        k = read(res[0], rbuf + rlen, (size_t)n * RESULT_MAX - rlen);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        for (ssize_t i = 0; i < k; i++)
            lines += rbuf[rlen + (size_t)i] == '\n';
        rlen += (size_t)k;
    }
    t1 = now_secs();
    if (o->relay_pid > 0) {
        cpu1 = proc_cpu_secs(o->relay_pid);
        flt1 = proc_minflt(o->relay_pid);
        hwm = proc_status_kb(o->relay_pid, "VmHWM");
        rss_end = proc_status_kb(o->relay_pid, "VmRSS");
    }
    close(quit[1]);
    rbuf[rlen] = '\0';
    for (line = strtok_r(rbuf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        unsigned long long b = 0, p = 0;
        int idx, good;
        double secs;
        char *e;
        if (sscanf(line, "session=%d ok=%d bytes=%llu ops=%llu secs=%lf", &idx, &good, &b, &p,
                   &secs) != 5)
            continue;
        if (good) {
            ok++;
            bytes += b;
            ops += p;
            if (secs > max_secs)
                max_secs = secs;
            if (n == 1) {
                /* One session: pass its own extra fields on. */
                char *x = strstr(line, "secs=");
                x = x ? strchr(x, ' ') : NULL;
                snprintf(extra1, sizeof(extra1), "%s", x ? x : "");
            }
        } else if (!first_err[0] && (e = strstr(line, "error="))) {
            snprintf(first_err, sizeof(first_err), " %s", e);
        }
    }
    while (wait(NULL) > 0)
        ;
    errors = n - ok;
    printf("mode=%s sessions=%d ready=%d ok=%d errors=%d bytes=%llu ops=%llu wall=%.6f "
           "max_session_secs=%.6f mbps=%.2f ops_per_s=%.1f",
           o->mode, n, nready, ok, errors, bytes, ops, t1 - t0, max_secs,
           t1 > t0 ? (double)bytes / (t1 - t0) / 1e6 : 0.0,
           t1 > t0 ? (double)ops / (t1 - t0) : 0.0);
    if (o->relay_pid > 0)
        printf(" relay_cpu_s=%.3f relay_minflt=%lld relay_rss_before_kb=%ld "
               "relay_rss_ready_kb=%ld relay_rss_end_kb=%ld relay_hwm_kb=%ld",
               cpu1 - cpu0, flt0 >= 0 && flt1 >= 0 ? flt1 - flt0 : -1LL, rss_before,
               rss_ready, rss_end, hwm);
    printf("%s%s\n", extra1, first_err);
    fflush(stdout);
    free(rbuf);
    return errors ? 1 : 0;
}

/* ------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: wsbench [options] MODE ARGS...\n"
            "  --relay IP:PORT     relay address (127.0.0.1:8443)\n"
            "  --host H --port N   SFTP server, as the app names it (127.0.0.1, 22)\n"
            "  --user U --key F    SSH user and private key file (sent as privateKey)\n"
            "  --origin O          Origin header (http://localhost)\n"
            "  --sessions N        N sessions in parallel, one process each (1)\n"
            "  --relay-pid PID     report relay CPU and memory for the measured phase\n"
            "  --src FILE          upload data read from FILE (default: generated)\n"
            "  --sha256            print the SHA-256 of downloaded data\n"
            "  --timeout SECS      per socket operation and for setup (60)\n"
            "  --setup-parallel K  sessions logging in at once (4: the relay refuses a\n"
            "                      login while 5 from the same IP are pending)\n"
            "modes (%%d in a path becomes the session index):\n"
            "  download PATH          read_open, read_chunk until EOF, read_close\n"
            "  upload PATH SIZE       write_open, 8 MiB write_chunks, write_close\n"
            "  mix PATH UPATH SIZE    download PATH, then upload SIZE bytes to UPATH\n"
            "  smallops DIR N         N x (mkdir, stat, rename, list, delete) in DIR\n"
            "  idle SECS              open the sessions, wait SECS, sample relay RSS\n"
            "prints one line of key=value pairs; exit status 1 when a session failed\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct opts o = {.relay_host = "127.0.0.1", .relay_port = 8443, .host = "127.0.0.1",
                     .port = 22, .user = NULL, .origin = "http://localhost", .sessions = 1,
                     .timeout_secs = 60, .setup_parallel = 4};
    static char relay_host[64];
    const char *key_path = NULL;
    int i, need;

    for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--sha256") == 0) {
            o.sha256 = 1;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (strcmp(a, "--relay") == 0) {
            const char *colon = strrchr(v, ':');
            if (!colon || (size_t)(colon - v) >= sizeof(relay_host))
                usage();
            memcpy(relay_host, v, (size_t)(colon - v));
            relay_host[colon - v] = '\0';
            o.relay_host = relay_host;
            o.relay_port = atoi(colon + 1);
        } else if (strcmp(a, "--host") == 0) {
            o.host = v;
        } else if (strcmp(a, "--port") == 0) {
            o.port = atoi(v);
        } else if (strcmp(a, "--user") == 0) {
            o.user = v;
        } else if (strcmp(a, "--key") == 0) {
            key_path = v;
        } else if (strcmp(a, "--origin") == 0) {
            o.origin = v;
        } else if (strcmp(a, "--sessions") == 0) {
            o.sessions = atoi(v);
        } else if (strcmp(a, "--relay-pid") == 0) {
            o.relay_pid = atoi(v);
        } else if (strcmp(a, "--src") == 0) {
            o.src = v;
        } else if (strcmp(a, "--timeout") == 0) {
            o.timeout_secs = atoi(v);
        } else if (strcmp(a, "--setup-parallel") == 0) {
            o.setup_parallel = atoi(v);
        } else {
            usage();
        }
    }
    if (i >= argc || !o.user || !key_path || o.sessions < 1 || o.timeout_secs < 1 ||
        o.setup_parallel < 1)
        usage();
    o.mode = argv[i];
    o.args = argv + i + 1;
    o.nargs = argc - i - 1;
    if (strcmp(o.mode, "download") == 0 || strcmp(o.mode, "idle") == 0)
        need = 1;
    else if (strcmp(o.mode, "upload") == 0 || strcmp(o.mode, "smallops") == 0)
        need = 2;
    else if (strcmp(o.mode, "mix") == 0)
        need = 3;
    else
        usage();
    if (o.nargs != need)
        usage();
    o.key_pem = read_text_file(key_path);
    if (!o.key_pem) {
        fprintf(stderr, "wsbench: cannot read %s: %s\n", key_path, strerror(errno));
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    return run(&o);
}
