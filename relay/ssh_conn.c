/* SSH connection set-up with libssh2 in blocking mode. Every step is bounded
 * in time: connect() and the banner wait by poll(), everything libssh2 does
 * by libssh2_session_set_timeout(). */
#include "ssh_conn.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "clock.h"
#include "keyformat.h"
#include "sshsig.h"
#include "wipe_alloc.h"

/* OpenSSH's own host key order, so the fingerprint we show is the one the
 * user sees with `ssh` and the one earlier relays pinned in the vault. */
#define HOSTKEY_PREFS "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384," \
                      "ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256,ssh-rsa"

const char *ssh_err_code(int err)
{
    switch (err) {
    case SSH_E_CONNECT: return "connect_failed";
    case SSH_E_CONNECT_TIMEOUT: return "connect_timeout";
    case SSH_E_NOT_SSH: return "not_ssh";
    case SSH_E_CLOSED_BEFORE_BANNER: return "closed_before_banner";
    case SSH_E_BANNER_TIMEOUT: return "banner_timeout";
    case SSH_E_KEX: return "kex_failed";
    case SSH_E_AUTH: return "auth_failed";
    case SSH_E_KEY: return "bad_key";
    case SSH_E_SFTP: return "sftp_unavailable";
    case SSH_E_SIGN: return "bad_signature";
    case SSH_E_SIGN_TIMEOUT: return "sign_timeout";
    default: return "io";
    }
}

static long ms_left(const struct timespec *deadline)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (deadline->tv_sec - now.tv_sec) * 1000L +
           (deadline->tv_nsec - now.tv_nsec) / 1000000L;
}

static void deadline_in(struct timespec *d, int secs)
{
    clock_gettime(CLOCK_MONOTONIC, d);
    d->tv_sec += secs;
}

static int tcp_connect(int fd, const struct sockaddr *sa, socklen_t salen, int secs,
                       char *err, size_t errlen)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    struct timespec deadline;
    int flags = fcntl(fd, F_GETFL), soerr = 0, rc;
    socklen_t len = sizeof(soerr);

    /* Without O_NONBLOCK connect() would block past the timeout; without
     * going back to blocking, libssh2's blocking mode would spin. */
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        soerr = errno;
        goto failed;
    }
    rc = connect(fd, sa, salen);
    if (rc < 0 && errno != EINPROGRESS) {
        soerr = errno;
        goto failed;
    }
    deadline_in(&deadline, secs);
    while (rc < 0) {
        long left = ms_left(&deadline);
        if (left <= 0) {
            snprintf(err, errlen, "connection timed out after %d s", secs);
            return SSH_E_CONNECT_TIMEOUT;
        }
        rc = poll(&p, 1, (int)left);
        if (rc < 0 && errno != EINTR) {
            soerr = errno;
            goto failed;
        }
        if (rc > 0) {
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
                soerr = errno;
            if (soerr)
                goto failed;
            break;
        }
        rc = -1;
    }
    if (fcntl(fd, F_SETFL, flags) < 0) {
        soerr = errno;
        goto failed;
    }
    return 0;

failed:
    snprintf(err, errlen, "connection failed: %s", strerror(soerr));
    return SSH_E_CONNECT;
}

/* Does `buf` (n bytes) start with, or is it a start of, an SSH banner?
 * Returns 1 for a full match, 0 when more bytes are needed, -1 for no. */
static int banner_match(const char *buf, size_t n)
{
    static const char *const prefixes[] = {"SSH-2.0", "SSH-1.99"};
    int need_more = 0;

    for (size_t i = 0; i < 2; i++) {
        size_t plen = strlen(prefixes[i]);
        size_t cmp = n < plen ? n : plen;
        if (memcmp(buf, prefixes[i], cmp) != 0)
            continue;
        if (n >= plen)
            return 1;
        need_more = 1;
    }
    return need_more ? 0 : -1;
}

/* A server that hangs up before its banner is not a non-SSH server: OpenSSH
 * does that to refuse a source address (PerSourcePenalties since 9.8,
 * MaxStartups), as do fail2ban-style firewalls, and every user of this
 * relay shares its address. Say so, with its own code. */
static int closed_before_banner(char *err, size_t errlen)
{
    snprintf(err, errlen, "the server closed the connection before sending its SSH banner: "
             "it is probably refusing or rate-limiting connections from this relay "
             "(OpenSSH PerSourcePenalties or MaxStartups, fail2ban)");
    return SSH_E_CLOSED_BEFORE_BANNER;
}

/* How long a server that sent something other than a banner gets to hang
 * up, which makes it a refusal rather than a non-SSH server. */
#define REFUSAL_HANGUP_MS 500
#define REFUSAL_TEXT_MAX 80

/* One short line of text followed by a hang-up is how OpenSSH refuses a
 * source address ("Not allowed at this time" for PerSourcePenalties,
 * "Exceeded MaxStartups"). Returns 1 and the closed_before_banner error,
 * with the server's words, when `buf` is such a line and the server hangs
 * up within REFUSAL_HANGUP_MS; else 0. */
static int refused_with_line(int fd, const char *buf, size_t n, char *err, size_t errlen)
{
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    char text[REFUSAL_TEXT_MAX + 1];
    size_t i;

    for (i = 0; i < n && buf[i] != '\r' && buf[i] != '\n'; i++)
        if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] > 0x7e || i >= REFUSAL_TEXT_MAX)
            return 0;
    size_t end = i;

    if (end < n && buf[end] == '\r')
        end++;
    if (end < n && buf[end] == '\n')
        end++;
    if (i == 0 || end == i || end != n)
        return 0;  /* not exactly one short line (an HTTP answer has more) */
    if (poll(&p, 1, REFUSAL_HANGUP_MS) <= 0 || !(p.revents & (POLLRDHUP | POLLHUP)))
        return 0;
    memcpy(text, buf, i);
    text[i] = '\0';
    snprintf(err, errlen, "the server closed the connection before sending its SSH banner "
             "(it said \"%s\"): it is probably refusing or rate-limiting connections from "
             "this relay (OpenSSH PerSourcePenalties or MaxStartups, fail2ban)", text);
    return 1;
}

/* Peek (never consume: libssh2 must read the banner itself) until the first
 * bytes prove an SSH server, however the banner is split into packets. */
static int check_banner(int fd, int secs, char *err, size_t errlen)
{
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    struct timespec deadline;
    char buf[REFUSAL_TEXT_MAX + 2];

    deadline_in(&deadline, secs);
    for (;;) {
        long left = ms_left(&deadline);
        ssize_t n;
        int m;

        if (left <= 0) {
            snprintf(err, errlen, "no SSH banner from the server within %d s", secs);
            return SSH_E_BANNER_TIMEOUT;
        }
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        n = recv(fd, buf, sizeof(buf), MSG_PEEK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)))
            return closed_before_banner(err, errlen);
        if (n < 0) {
            snprintf(err, errlen, "reading the SSH banner failed: %s", strerror(errno));
            return SSH_E_IO;
        }
        m = banner_match(buf, (size_t)n);
        if (m == 1)
            return 0;
        if (m < 0) {
            if (refused_with_line(fd, buf, (size_t)n, err, errlen))
                return SSH_E_CLOSED_BEFORE_BANNER;
            snprintf(err, errlen, "the server is not an SSH server");
            return SSH_E_NOT_SSH;
        }
        /* Part of a banner, then the end of the stream: peeking would
         * return the same bytes until the timeout. */
        if (p.revents & (POLLRDHUP | POLLHUP))
            return closed_before_banner(err, errlen);
        /* A partial banner: the rest is in flight. Peeking again at once
         * would spin on the same bytes. */
        usleep(10 * 1000);
    }
}

static const char *hostkey_type_name(int type)
{
    switch (type) {
    case LIBSSH2_HOSTKEY_TYPE_RSA: return "ssh-rsa";
    case LIBSSH2_HOSTKEY_TYPE_DSS: return "ssh-dss";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return "ecdsa-sha2-nistp256";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return "ecdsa-sha2-nistp384";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return "ecdsa-sha2-nistp521";
    case LIBSSH2_HOSTKEY_TYPE_ED25519: return "ssh-ed25519";
    default: return "unknown";
    }
}

/* OpenSSH's format: "SHA256:" + unpadded standard base64 of the digest. */
static int read_fingerprint(struct ssh_conn *c)
{
    const unsigned char *hash = (const unsigned char *)
        libssh2_hostkey_hash(c->ssh, LIBSSH2_HOSTKEY_HASH_SHA256);
    unsigned char b64[48];
    size_t len;
    int type = LIBSSH2_HOSTKEY_TYPE_UNKNOWN;

    if (!hash)
        return -1;
    EVP_EncodeBlock(b64, hash, 32);
    len = strlen((char *)b64);
    while (len && b64[len - 1] == '=')
        b64[--len] = '\0';
    snprintf(c->fingerprint, sizeof(c->fingerprint), "SHA256:%s", b64);
    libssh2_session_hostkey(c->ssh, &len, &type);
    c->key_type = hostkey_type_name(type);
    return 0;
}

/* libssh2's last error message on `ssh` (never NULL; libssh2 owns it, valid
 * until its next call on `ssh`), and its code in *code when code is set. */
static const char *last_msg(LIBSSH2_SESSION *ssh, int *code)
{
    char *msg = NULL;
    int err = ssh ? libssh2_session_last_error(ssh, &msg, NULL, 0) : 0;

    if (code)
        *code = err;
    return msg && *msg ? msg : "unknown error";
}

static void last_error(LIBSSH2_SESSION *ssh, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s: %s", what, last_msg(ssh, NULL));
}

/* What libssh2's codes for a lost connection mean: its message is often
 * that of the SFTP call that met the failure ("Timeout waiting for status
 * message" for a refused key re-exchange), so the code says more. */
static const char *failure_name(int err)
{
    switch (err) {
    case LIBSSH2_ERROR_KEX_FAILURE:
    case LIBSSH2_ERROR_KEY_EXCHANGE_FAILURE:
        return "key exchange failed";
    case LIBSSH2_ERROR_INVALID_MAC:
        return "a packet failed its MAC";
    case LIBSSH2_ERROR_DECRYPT:
        return "a packet failed to decrypt";
    case LIBSSH2_ERROR_SOCKET_RECV:
    case LIBSSH2_ERROR_SOCKET_SEND:
    case LIBSSH2_ERROR_SOCKET_DISCONNECT:
        return "the connection broke";
    case LIBSSH2_ERROR_TIMEOUT:
        return "timeout";
    case LIBSSH2_ERROR_OUT_OF_BOUNDARY:
        /* Our patches' bounds on what a server makes libssh2 keep. */
        return "the server sent more than libssh2 keeps";
    default:
        return "error";
    }
}

void ssh_failure(const struct ssh_conn *c, char *out, size_t outlen)
{
    int err;
    const char *msg = last_msg(c->ssh, &err);
    size_t evicted_held;

    if (wipe_account_evicted(&c->acct, &evicted_held))
        snprintf(out, outlen, "evicted: libssh2 held %zu KiB for this session, more than its "
                 "share when all sessions together held SSH_MEMORY_BUDGET_MIB (%zu MiB), "
                 "and a session holding less needed room", evicted_held >> 10,
                 wipe_ssh_budget() >> 20);
    else if (c->acct.refused == WIPE_REFUSED_SESSION)
        snprintf(out, outlen, "the server made libssh2 hold more than %zu MiB "
                 "(SSH_SESSION_MEMORY_MIB)", c->acct.max >> 20);
    else if (c->acct.refused == WIPE_REFUSED_SHARE)
        snprintf(out, outlen, "libssh2 held %zu KiB for this session, the most of any, more "
                 "than its share when all sessions together held SSH_MEMORY_BUDGET_MIB "
                 "(%zu MiB)", (size_t)c->acct.held >> 10, wipe_ssh_budget() >> 20);
    else if (c->acct.refused == WIPE_REFUSED_BUDGET)
        snprintf(out, outlen, "all sessions together held SSH_MEMORY_BUDGET_MIB (%zu MiB) "
                 "for over %d s with no session to evict", wipe_ssh_budget() >> 20,
                 WIPE_ROOM_WAIT_MS / 1000);
    else
        snprintf(out, outlen, "libssh2 %d, %s: %s", err, failure_name(err), msg);
}

const char *ssh_memory_refusal(const struct ssh_conn *c)
{
    size_t held;

    if (wipe_account_evicted(&c->acct, &held))
        return "the relay ran short of memory and ended this session, which held the most, "
               "to make room for others";
    switch (c->acct.refused) {
    case WIPE_REFUSED_SESSION:
        return "the SFTP server made the relay hold more memory than one session may";
    case WIPE_REFUSED_SHARE:
        return "the relay ran short of memory and this session held the most";
    case WIPE_REFUSED_BUDGET:
        return "the relay ran short of memory";
    case WIPE_REFUSED_NONE:
        break;
    }
    return NULL;
}

int ssh_open(struct ssh_conn *c, const struct sockaddr *sa, socklen_t salen,
             const struct ssh_params *t, void (*on_socket)(int fd, void *arg),
             void *arg, char *err, size_t errlen)
{
    int one = 1, rc;

    memset(c, 0, sizeof(*c));
    c->acct.max = t->mem_max;
    c->acct.evict = t->evict;
    c->acct.evict_arg = t->evict_arg;
    c->sock = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->sock < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return SSH_E_CONNECT;
    }
    if (on_socket)
        on_socket(c->sock, arg);
    c->connect_us = clock_now_us();
    rc = tcp_connect(c->sock, sa, salen, t->connect_secs, err, errlen);
    c->connect_us = clock_now_us() - c->connect_us;
    if (rc < 0)
        goto out;
    setsockopt(c->sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    rc = check_banner(c->sock, t->banner_secs, err, errlen);
    if (rc < 0)
        goto out;

    rc = SSH_E_KEX;
    /* Wiping allocators: libssh2's packet buffers carry the password and
     * the signature request; they must not linger in freed memory. */
    c->ssh = libssh2_session_init_ex(wipe_ssh_alloc, wipe_ssh_free, wipe_ssh_realloc, c);
    if (!c->ssh) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    libssh2_session_set_blocking(c->ssh, 1);
    libssh2_session_set_timeout(c->ssh, (long)t->connect_secs * 1000);
    if (libssh2_session_method_pref(c->ssh, LIBSSH2_METHOD_HOSTKEY,
                                    t->hostkey_prefs ? t->hostkey_prefs : HOSTKEY_PREFS) < 0) {
        last_error(c->ssh, "host key preferences", err, errlen);
        goto out;
    }
    if (libssh2_session_handshake(c->ssh, c->sock) < 0) {
        last_error(c->ssh, "key exchange failed", err, errlen);
        goto out;
    }
    if (read_fingerprint(c) < 0) {
        snprintf(err, errlen, "key exchange failed: no host key");
        goto out;
    }
    libssh2_session_set_timeout(c->ssh, (long)t->op_secs * 1000);
    libssh2_session_set_read_timeout(c->ssh, t->op_secs);
    rc = 0;
out:
    if (rc < 0) {
        ssh_cut(c);
        /* Told before the close: the number may be reused at once, and a
         * holder that still had it would shut down another's socket. */
        if (on_socket)
            on_socket(-1, arg);
        ssh_close(c);
    }
    return rc;
}

static int has_method(const char *list, const char *name)
{
    size_t n = strlen(name);

    for (const char *p = list; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return 1;
        p = comma ? comma + 1 : NULL;
    }
    return 0;
}

/* Many NAS only offer keyboard-interactive: answer every prompt with the
 * password. libssh2 frees the answers with the session's allocator, so they
 * must come from it too. */
static void kbd_cb(const char *name, int name_len, const char *instruction,
                   int instruction_len, int num_prompts,
                   const LIBSSH2_USERAUTH_KBDINT_PROMPT *prompts,
                   LIBSSH2_USERAUTH_KBDINT_RESPONSE *responses, void **abstract)
{
    struct ssh_conn *c = *abstract;

    (void)name, (void)name_len, (void)instruction, (void)instruction_len, (void)prompts;
    for (int i = 0; i < num_prompts; i++) {
        responses[i].text = c->kbd_password ? wipe_strdup(c->kbd_password) : NULL;
        responses[i].length = responses[i].text ? (unsigned)strlen(responses[i].text) : 0;
    }
}

/* Distinguish "the server said no" from "the connection broke". */
static int auth_failure(int rc, LIBSSH2_SESSION *ssh, char *err, size_t errlen)
{
    if (rc == LIBSSH2_ERROR_AUTHENTICATION_FAILED ||
        rc == LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED || rc == LIBSSH2_ERROR_PASSWORD_EXPIRED ||
        rc == LIBSSH2_ERROR_METHOD_NONE) {
        snprintf(err, errlen, "authentication failed");
        return SSH_E_AUTH;
    }
    last_error(ssh, "connection lost during authentication", err, errlen);
    return SSH_E_IO;
}

static int login_password(struct ssh_conn *c, const struct proto_auth *a,
                          char *err, size_t errlen)
{
    unsigned ulen = (unsigned)strlen(a->username);
    const char *list = libssh2_userauth_list(c->ssh, a->username, ulen);
    int rc = LIBSSH2_ERROR_AUTHENTICATION_FAILED;

    if (!list) {
        if (libssh2_userauth_authenticated(c->ssh))
            return 0;
        return auth_failure(libssh2_session_last_errno(c->ssh), c->ssh, err, errlen);
    }
    if (has_method(list, "password")) {
        rc = libssh2_userauth_password_ex(c->ssh, a->username, ulen, a->password,
                                          (unsigned)strlen(a->password), NULL);
        if (rc == 0)
            return 0;
        if (rc != LIBSSH2_ERROR_AUTHENTICATION_FAILED &&
            rc != LIBSSH2_ERROR_PASSWORD_EXPIRED)
            return auth_failure(rc, c->ssh, err, errlen);
    }
    if (has_method(list, "keyboard-interactive")) {
        c->kbd_password = a->password;
        rc = libssh2_userauth_keyboard_interactive_ex(c->ssh, a->username, ulen, kbd_cb);
        c->kbd_password = NULL;
        if (rc == 0)
            return 0;
    }
    return auth_failure(rc, c->ssh, err, errlen);
}

static int login_key(struct ssh_conn *c, const struct proto_auth *a, char *err, size_t errlen)
{
    int rc = libssh2_userauth_publickey_frommemory(
        c->ssh, a->username, strlen(a->username), NULL, 0, a->private_key,
        strlen(a->private_key), a->passphrase);

    if (rc == 0)
        return 0;
    if (rc == LIBSSH2_ERROR_FILE || rc == LIBSSH2_ERROR_METHOD_NOT_SUPPORTED ||
        rc == LIBSSH2_ERROR_KEY_EXCHANGE_FAILURE || rc == LIBSSH2_ERROR_DECRYPT) {
        snprintf(err, errlen, "%s", keyformat_problem(a->private_key, a->passphrase));
        return SSH_E_KEY;
    }
    return auth_failure(rc, c->ssh, err, errlen);
}

/* libssh2's own size of an SFTP READ request. */
#define SFTP_READ_SIZE_DEFAULT 30000
/* libssh2 keeps up to four read buffers' worth of READ requests in flight
 * (1 MiB for our 256 KiB chunks), one allocation each: a server promising
 * 1-byte reads would have it queue a million requests per chunk. A promise
 * below this is taken for no promise at all. */
#define SFTP_READ_SIZE_MIN 4096

/* Pipelined reads only work when the server answers each request in full:
 * a short answer in the middle of a file fails the whole read. So the size
 * comes from what the server promised in limits@openssh.com (OpenSSH: 255
 * KiB), never from a guess; without that answer libssh2's 30000 stays.
 * Eight times fewer requests take about a quarter of the relay's CPU per
 * downloaded GiB (bench/RESULTS.md). */
static void size_reads(struct ssh_conn *c)
{
    c->read_size = SFTP_READ_SIZE_DEFAULT;
#ifdef LIBSSH2_SFTP_HAS_READ_SIZE
    LIBSSH2_SFTP_LIMITS lim;

    if (libssh2_sftp_limits(c->sftp, &lim) == 0 && lim.max_read_length >= SFTP_READ_SIZE_MIN) {
        size_t want = lim.max_read_length > SIZE_MAX ? SIZE_MAX : (size_t)lim.max_read_length;
        c->read_size = libssh2_sftp_set_read_size(c->sftp, want);
    }
#endif
}

int ssh_read_size_settable(void)
{
#ifdef LIBSSH2_SFTP_HAS_READ_SIZE
    return 1;
#else
    return 0;
#endif
}

/* This session's id (the first key exchange's hash), which every
 * signature of SSH user authentication covers first: with our libssh2
 * patch (scripts/libssh2-patches/session-id.patch) the very bytes, so a
 * browser is only ever asked to sign for this session; without it NULL,
 * and the data is checked for an id of the right length only. */
static const uint8_t *session_id(LIBSSH2_SESSION *session, size_t *len)
{
#ifdef LIBSSH2_HAS_SESSION_ID
    return libssh2_session_id(session, len);
#else
    (void)session;
    *len = 0;
    return NULL;
#endif
}

/* libssh2's signing callback (the hook its ssh-agent support uses): the
 * data must be this session's userauth request for this user and key, the
 * browser signs it, and we turn WebCrypto's bytes into SSH's signature.
 * libssh2 puts it into the signature blob (string algorithm, string
 * signature) itself, and frees it with the session's allocator. */
static int sign_cb(LIBSSH2_SESSION *session, unsigned char **sig, size_t *sig_len,
                   const unsigned char *data, size_t data_len, void **abstract)
{
    struct ssh_conn *c = *abstract;
    const struct ssh_signer *sg = c->signer;
    const char *kex = libssh2_session_methods(session, LIBSSH2_METHOD_KEX);
    uint8_t out[SSHSIG_MAX_SIG_BYTES + 16];
    size_t outlen;
    char *answer = NULL;
    const char *alg = NULL;
    size_t sid_len = 0;
    int rc = SSH_E_SIGN;

    /* libssh2 retries with another algorithm when a callback says it
     * cannot sign; one login asks the browser for one signature. */
    if (c->sign_calls++ > 0) {
        snprintf(c->sign_err, sizeof(c->sign_err),
                 "signature request refused: one signature per login");
        goto out;
    }
    rc = sshsig_check_data(sg->key, c->sign_user, session_id(session, &sid_len),
                           sid_len ? sid_len : sshsig_kex_hash_len(kex), data, data_len,
                           &alg, c->sign_err, sizeof(c->sign_err));
    if (rc < 0) {
        rc = rc == SSHSIG_E_ALG ? SSH_E_KEY : SSH_E_SIGN;
        goto out;
    }
    rc = sg->ask(sg->arg, alg, data, data_len, &answer, c->sign_err, sizeof(c->sign_err));
    if (rc < 0)
        goto out;
    rc = SSH_E_SIGN;
    if (sshsig_convert(sg->key, alg, answer, out, &outlen, c->sign_err,
                       sizeof(c->sign_err)) < 0)
        goto out;
    *sig = wipe_malloc(outlen);
    if (!*sig) {
        snprintf(c->sign_err, sizeof(c->sign_err), "out of memory");
        rc = SSH_E_IO;
        goto out;
    }
    memcpy(*sig, out, outlen);
    *sig_len = outlen;
    rc = 0;
out:
    free(answer);
    c->sign_rc = rc;
    return rc == 0 ? 0 : -1;
}

static int login_sign(struct ssh_conn *c, const struct proto_auth *a,
                      const struct ssh_signer *sg, char *err, size_t errlen)
{
    const struct sshsig_key *k = sg->key;
    void *abstract = c;
    int rc;

    /* RSA only with SHA-2 (RFC 8332), SHA-512 first unless the browser
     * named one: libssh2 picks the first of these the server lists in
     * server-sig-algs. */
    if (sshsig_rsa_prefs(k) &&
        libssh2_session_method_pref(c->ssh, LIBSSH2_METHOD_SIGN_ALGO, sshsig_rsa_prefs(k)) < 0) {
        last_error(c->ssh, "signature algorithm preferences", err, errlen);
        return SSH_E_IO;
    }
    c->signer = sg;
    c->sign_user = a->username;
    c->sign_calls = 0;
    c->sign_rc = 0;
    c->sign_err[0] = '\0';
    rc = libssh2_userauth_publickey(c->ssh, a->username, k->blob, k->blob_len, sign_cb,
                                    &abstract);
    c->signer = NULL;
    c->sign_user = NULL;
    if (rc == 0)
        return 0;
    if (c->sign_rc < 0) {
        snprintf(err, errlen, "%s", c->sign_err);
        return c->sign_rc;
    }
    if (rc == LIBSSH2_ERROR_METHOD_NONE) {
        snprintf(err, errlen, "the server accepts no RSA signature algorithm the relay "
                 "offers (%s); the relay never asks for SHA-1 (ssh-rsa) signatures",
                 sshsig_rsa_prefs(k));
        return SSH_E_KEY;
    }
    if (rc == LIBSSH2_ERROR_AUTHENTICATION_FAILED || rc == LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED) {
        /* libssh2 asks first whether the server would take the key, and
         * only then for the signature. */
        snprintf(err, errlen, c->sign_calls == 0
                 ? "authentication failed: the server does not accept this public key"
                 : "authentication failed: the server refused the signature");
        return SSH_E_AUTH;
    }
    return auth_failure(rc, c->ssh, err, errlen);
}

int ssh_login(struct ssh_conn *c, const struct proto_auth *a, const struct ssh_signer *signer,
              char *err, size_t errlen)
{
    int rc;

    if (a->type == AUTH_PASSWORD)
        rc = login_password(c, a, err, errlen);
    else if (a->type == AUTH_PUBLICKEY)
        rc = login_key(c, a, err, errlen);
    else if (signer)
        rc = login_sign(c, a, signer, err, errlen);
    else {
        snprintf(err, errlen, "no signer for a publickey-sign login");
        rc = SSH_E_IO;
    }

    if (rc < 0)
        return rc;
    /* No libssh2_keepalive_config(): with it, libssh2's socket wait polls
     * for at most the keepalive interval and a blocking call that hears
     * nothing for that long fails with LIBSSH2_ERROR_TIMEOUT ("Timed out
     * waiting on socket", _libssh2_wait_socket in session.c), so every
     * operation would be limited to the keepalive interval instead of
     * SFTP_OP_TIMEOUT_SECS.
     * The worker sends its own keepalives while idle (worker.c), so only
     * the operation timeout and the keepalive's dead-peer rule decide that
     * a server is gone. */
    c->sftp = libssh2_sftp_init(c->ssh);
    if (!c->sftp) {
        last_error(c->ssh, "SFTP subsystem unavailable", err, errlen);
        return SSH_E_SFTP;
    }
    size_reads(c);
    return 0;
}

int ssh_ping(struct ssh_conn *c)
{
    char path[512];
    int rc = libssh2_sftp_realpath(c->sftp, ".", path, sizeof(path));

    if (rc >= 0)
        return 0;
    /* A status reply is an answer: the server is there. */
    return rc == LIBSSH2_ERROR_SFTP_PROTOCOL ? 0 : rc;
}

const char *ssh_errmsg(struct ssh_conn *c)
{
    return last_msg(c->ssh, NULL);
}

void ssh_cut(struct ssh_conn *c)
{
    if (c->sock >= 0)
        shutdown(c->sock, SHUT_RDWR);
}

void ssh_set_timeout(struct ssh_conn *c, int secs)
{
    libssh2_session_set_timeout(c->ssh, (long)secs * 1000);
    libssh2_session_set_read_timeout(c->ssh, secs);
}

int ssh_global_init(void)
{
    return libssh2_init(0) == 0 ? 0 : -1;
}

void ssh_global_exit(void)
{
    libssh2_exit();
}

const char *ssh_version(void)
{
    return libssh2_version(0);
}

void ssh_close(struct ssh_conn *c)
{
    if (c->ssh)
        /* A healthy server answers the close at once; a dead one must not
         * hold the worker for a whole operation timeout. */
        libssh2_session_set_timeout(c->ssh, 2000);
    if (c->sftp)
        libssh2_sftp_shutdown(c->sftp);
    if (c->ssh) {
        libssh2_session_disconnect(c->ssh, "relay session closed");
        libssh2_session_free(c->ssh);
    }
    wipe_account_close(&c->acct);
    if (c->sock >= 0)
        close(c->sock);
    memset(c, 0, sizeof(*c));
    c->sock = -1;
}
