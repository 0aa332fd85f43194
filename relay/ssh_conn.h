/* One SSH connection to the user's server, driven in blocking mode by its
 * session's worker thread: TCP connect, SSH banner check, key exchange,
 * host key fingerprint, user authentication, SFTP subsystem. Knows nothing
 * of WebSockets. */
#ifndef WC_SSH_CONN_H
#define WC_SSH_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <libssh2.h>
#include <libssh2_sftp.h>

#include "proto.h"
#include "wipe_alloc.h"

/* Failures; each maps to the `code` of a setup error frame. */
enum ssh_err {
    SSH_E_CONNECT = -1,        /* refused, unreachable */
    SSH_E_CONNECT_TIMEOUT = -2,
    SSH_E_NOT_SSH = -3,        /* first bytes are not an SSH banner */
    SSH_E_BANNER_TIMEOUT = -4,
    SSH_E_KEX = -5,            /* key exchange failed */
    SSH_E_AUTH = -6,           /* credentials refused */
    SSH_E_KEY = -7,            /* private key unreadable */
    SSH_E_SFTP = -8,           /* SFTP subsystem refused */
    SSH_E_IO = -9,             /* connection lost or timed out */
    SSH_E_CLOSED_BEFORE_BANNER = -10,  /* hung up before any banner */
    SSH_E_SIGN = -11,          /* publickey-sign: unusable signature or request */
    SSH_E_SIGN_TIMEOUT = -12,  /* publickey-sign: the browser did not answer */
};

struct sshsig_key;

/* How a publickey-sign login (the `sign` extension) gets its signature:
 * `ask` hands the algorithm and the data to the browser and waits for its
 * answer, the base64 of WebCrypto's signature (*answer, malloc'd, may stay
 * NULL). Returns 0, or an ssh_err with a message for the browser in `err`.
 * Called on the worker thread, at most once per login. */
struct ssh_signer {
    const struct sshsig_key *key;
    int (*ask)(void *arg, const char *alg, const unsigned char *data, size_t len,
               char **answer, char *err, size_t errlen);
    void *arg;
};

struct ssh_params {
    int connect_secs;   /* TCP connect and key exchange */
    int banner_secs;    /* first bytes from the server */
    int op_secs;        /* any later blocking call */
    const char *hostkey_prefs;  /* host key algorithms to offer; NULL: OpenSSH's order */
    size_t mem_max;     /* what libssh2 may hold for the connection; 0: no limit */
    /* Ends the session when others need its libssh2 memory (wipe_alloc.h's
     * `evict`); NULL: never evicted. */
    void (*evict)(void *arg);
    void *evict_arg;
};

struct ssh_conn {
    /* First member: libssh2's allocation hooks find it through the
     * session's `abstract`, which points to this struct. */
    struct wipe_account acct;
    int sock;
    LIBSSH2_SESSION *ssh;
    LIBSSH2_SFTP *sftp;
    char fingerprint[64];      /* "SHA256:" + 43 base64 chars */
    const char *key_type;      /* "ssh-ed25519", ... (static) */
    const char *kbd_password;  /* only during keyboard-interactive auth */
    size_t read_size;          /* bytes per SFTP READ request (set at login) */
    int64_t connect_us;        /* how long the TCP connect took */
    /* Only during a publickey-sign login: libssh2's signing callback
     * reaches the signer and reports why it failed through these. */
    const struct ssh_signer *signer;
    const char *sign_user;
    int sign_calls;
    int sign_rc;
    char sign_err[256];
};

/* Why libssh2 says the connection failed, for the log: its error code,
 * what the code means and its message ("libssh2 -5, key exchange failed:
 * ..."). libssh2's messages are fixed text, never data. */
void ssh_failure(const struct ssh_conn *c, char *out, size_t outlen);

/* When the relay's own memory limits cut the connection (the session's
 * SSH_SESSION_MEMORY_MIB, or its place in SSH_MEMORY_BUDGET_MIB), why, in
 * words for the browser's error answers (code "limit"): the SFTP server is
 * not at fault unless it made the session hold that much. NULL when they
 * did not. The text is static. */
const char *ssh_memory_refusal(const struct ssh_conn *c);

/* Short code for the setup error frame, e.g. "connect_refused". */
const char *ssh_err_code(int err);

/* Connect to `sa`, check the banner, run the key exchange and read the host
 * key. `on_socket` receives the socket as soon as it exists, so another
 * thread can shut it down to cut a hung connection, and -1 before a failed
 * open closes it. Returns 0 or an ssh_err with a message in `err`. On
 * failure `c` is left empty; else release with ssh_close(). */
int ssh_open(struct ssh_conn *c, const struct sockaddr *sa, socklen_t salen,
             const struct ssh_params *t, void (*on_socket)(int fd, void *arg),
             void *arg, char *err, size_t errlen);

/* Authenticate with the credentials in `a` (the caller wipes them), then
 * open the SFTP subsystem. `signer` makes the signature of an
 * AUTH_PUBLICKEY_SIGN login (NULL for the other types). Returns 0,
 * SSH_E_AUTH, SSH_E_KEY, SSH_E_SFTP, SSH_E_SIGN, SSH_E_SIGN_TIMEOUT or
 * SSH_E_IO with the message for the browser in `err`. */
int ssh_login(struct ssh_conn *c, const struct proto_auth *a, const struct ssh_signer *signer,
              char *err, size_t errlen);

/* A round trip to the server that proves it is still there. 0, or the
 * negative libssh2 error (SSH_E_TIMEOUT: no answer in time). */
int ssh_ping(struct ssh_conn *c);

/* libssh2's code for "no answer within the timeout", as ssh_ping(),
 * ssh_login() and the SFTP calls return it. */
#define SSH_E_TIMEOUT LIBSSH2_ERROR_TIMEOUT

/* Every blocking call on `c` from now on gives up after `secs` seconds,
 * and so does each SFTP read (libssh2 keeps two timeouts). */
void ssh_set_timeout(struct ssh_conn *c, int secs);

/* The library's process-wide set-up and tear-down: once before the first
 * session, once after the last. ssh_global_init() returns 0 or -1. */
int ssh_global_init(void);
void ssh_global_exit(void);

/* The libssh2 version the relay runs with ("1.11.1"). */
const char *ssh_version(void);

/* 1 when this libssh2 sizes its SFTP READ requests by the server's
 * limits@openssh.com answer (our patch, scripts/libssh2-patches/), else 0:
 * then every read asks for libssh2's fixed 30000 bytes. */
int ssh_read_size_settable(void);

/* libssh2's text for the last error on `c` (static or owned by libssh2;
 * valid until the next call on `c`). Never NULL. */
const char *ssh_errmsg(struct ssh_conn *c);

/* The server stopped answering: cut the socket, so every libssh2 call that
 * follows (handle closes, disconnect, free) fails at once instead of
 * waiting out its timeout -- a timed-out libssh2_session_free() frees
 * nothing. Idempotent. */
void ssh_cut(struct ssh_conn *c);

/* Release everything. */
void ssh_close(struct ssh_conn *c);

#endif
