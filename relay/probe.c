/* The probe command: the relay's own path to a user's SFTP server, run once
 * from the command line with the relay's settings, reporting every step
 * (settings, SSRF verdict, TCP, banner, key exchange, host keys, offered
 * authentication, login, SFTP extensions, free space, a write) so an
 * operator can see what the app would see. Each step is the relay's code:
 * access.c's target checks, netguard_resolve(), ssh_open(), ssh_login()
 * (keyformat.c's messages) and the sftp_ops verb table; only what the
 * relay never asks (the server's other host keys, offered methods,
 * extensions) is asked here. Secrets are read from files or the terminal,
 * wiped after use and never printed. */
#include "probe.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/rand.h>

#include "access.h"
#include "clock.h"
#include "config.h"
#include "keyformat.h"
#include "netguard.h"
#include "sftp_ops.h"
#include "ssh_conn.h"
#include "wipe.h"

/* Largest key, password or passphrase file read (an RSA 16384-bit key in
 * OpenSSH format is about 13 KiB). */
#define PROBE_FILE_MAX (64 * 1024)
/* Longest passphrase typed at the terminal. */
#define PROBE_TTY_MAX 1024
/* Bytes written to the probe file (and removed with it). */
#define PROBE_WRITE_BYTES 64
/* The probe file's name in --path: a dot file with a random suffix. */
#define PROBE_FILE_PREFIX ".wattcloud-probe-"
/* Longest remote path the probe builds. */
#define PROBE_PATH_MAX 4096
#define PROBE_DEFAULT_PORT 22

const char probe_usage[] =
    "usage: wattcloud-relay probe HOST[:PORT] [--json] [--env-file PATH]\n"
    "         [--user USER [--key FILE [--passphrase-file FILE] | --password-file FILE]\n"
    "          [--path PATH] [--read-only]]\n"
    "\n"
    "Checks a target the way the relay would, with the relay's settings:\n"
    "settings and SSRF verdict, TCP connect, SSH banner, key exchange, host keys;\n"
    "with --user the authentication methods offered; with --key or --password-file\n"
    "the login, the SFTP subsystem and its extensions, the free space of --path\n"
    "(default: the login directory) and whether a file can be created there\n"
    "(created and removed; --read-only skips that). A key's passphrase is read\n"
    "from --passphrase-file or, when the key is encrypted, from the terminal.\n"
    "Exit status: 0 when every step asked for works, 1 when one fails (the report\n"
    "names it), 2 for bad arguments or settings.\n";

struct probe_opts {
    const char *target, *user, *key_file, *passphrase_file, *password_file, *path;
    int json, read_only;
};

struct probe {
    struct probe_opts o;
    struct config cfg;
    json_t *report;         /* the JSON report, filled step by step */
    const char *failed;     /* the step that failed, NULL while none has */
    struct ssh_params t;
    struct ssh_conn c;
    struct sftp_ops *ops;
    struct sftp_sink sink;
};

/* ---- reporting ------------------------------------------------------------ */

static void say(struct probe *p, const char *step, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* One line of the human report (nothing in JSON mode). */
static void say(struct probe *p, const char *step, const char *fmt, ...)
{
    va_list ap;

    if (p->o.json)
        return;
    printf("%-14s ", step);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void fail(struct probe *p, const char *step, const char *code, const char *msg)
{
    p->failed = step;
    json_object_set_new(p->report, "failed_step", json_string(step));
    json_object_set_new(p->report, "error", json_string(msg));
    if (code)
        json_object_set_new(p->report, "error_code", json_string(code));
    say(p, step, "FAILED: %s%s%s%s", msg, code ? " (" : "", code ? code : "", code ? ")" : "");
}

static void set(json_t *o, const char *key, json_t *v)
{
    json_object_set_new(o, key, v ? v : json_null());
}

static json_t *step_obj(struct probe *p, const char *step)
{
    json_t *o = json_object();

    json_object_set_new(p->report, step, o);
    return o;
}

/* ---- arguments and secrets ------------------------------------------------ */

/* "wattcloud-relay probe: <what><arg>", then the usage. */
static int usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "wattcloud-relay probe: %s%s\n%s", what, arg, probe_usage);
    return PROBE_EXIT_USAGE;
}

static int parse_args(int argc, char **argv, struct probe_opts *o, char *err_env,
                      size_t errlen)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **value = NULL;

        if (strcmp(a, "--json") == 0) {
            o->json = 1;
            continue;
        }
        if (strcmp(a, "--read-only") == 0) {
            o->read_only = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(probe_usage, stdout);
            exit(PROBE_EXIT_OK);
        }
        if (strcmp(a, "--env-file") == 0) {
            if (i + 1 >= argc)
                return usage_error("a value is missing after ", a);
            if (cfg_load_env_file(argv[++i], err_env, errlen) < 0) {
                fprintf(stderr, "wattcloud-relay probe: %s\n", err_env);
                return PROBE_EXIT_USAGE;
            }
            continue;
        }
        if (strcmp(a, "--user") == 0)
            value = &o->user;
        else if (strcmp(a, "--key") == 0)
            value = &o->key_file;
        else if (strcmp(a, "--passphrase-file") == 0)
            value = &o->passphrase_file;
        else if (strcmp(a, "--password-file") == 0)
            value = &o->password_file;
        else if (strcmp(a, "--path") == 0)
            value = &o->path;
        if (value) {
            if (i + 1 >= argc || !argv[i + 1][0])
                return usage_error("a value is missing after ", a);
            *value = argv[++i];
            continue;
        }
        if (a[0] == '-' || o->target)
            return usage_error("unexpected argument ", a);
        o->target = a;
    }
    if (!o->target)
        return usage_error("HOST[:PORT] missing", "");
    if (o->key_file && o->password_file)
        return usage_error("--key and --password-file exclude each other", "");
    if ((o->key_file || o->password_file) && !o->user)
        return usage_error("--key and --password-file need --user", "");
    if (o->passphrase_file && !o->key_file)
        return usage_error("--passphrase-file needs --key", "");
    if ((o->path || o->read_only) && !o->key_file && !o->password_file)
        return usage_error("--path and --read-only need --key or --password-file", "");
    return 0;
}

/* The whole of a file, NUL-terminated, into a buffer the caller wipes and
 * frees. `first_line`: only up to the first line end (a password or
 * passphrase file). NULL with `err` filled on failure. */
static char *read_secret(const char *path, int first_line, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char *buf = NULL;
    size_t used = 0;

    if (fd < 0) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    buf = malloc(PROBE_FILE_MAX + 1);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf + used, PROBE_FILE_MAX + 1 - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        used += (size_t)n;
        if (used > PROBE_FILE_MAX) {
            snprintf(err, errlen, "%s is larger than %d bytes", path, PROBE_FILE_MAX);
            goto fail;
        }
    }
    buf[used] = '\0';
    if (first_line)
        buf[strcspn(buf, "\r\n")] = '\0';
    goto out;
fail:
    wipe_mem(buf, PROBE_FILE_MAX + 1);
    free(buf);
    buf = NULL;
out:
    close(fd);
    return buf;
}

/* A passphrase typed at the terminal without echo; NULL when there is no
 * terminal. The caller wipes and frees it. */
static char *read_tty_passphrase(const char *key_file)
{
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    struct termios old, quiet;
    char *buf;
    size_t used = 0;

    if (fd < 0)
        return NULL;
    buf = malloc(PROBE_TTY_MAX + 1);
    if (!buf || tcgetattr(fd, &old) < 0) {
        free(buf);
        close(fd);
        return NULL;
    }
    quiet = old;
    quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
    quiet.c_lflag |= ICANON;
    dprintf(fd, "Passphrase for %s: ", key_file);
    tcsetattr(fd, TCSAFLUSH, &quiet);
    while (used < PROBE_TTY_MAX) {
        char ch;
        ssize_t n = read(fd, &ch, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || ch == '\n' || ch == '\r')
            break;
        buf[used++] = ch;
    }
    buf[used] = '\0';
    tcsetattr(fd, TCSAFLUSH, &old);
    dprintf(fd, "\n");
    close(fd);
    return buf;
}

static void free_secret(char *s)
{
    if (s) {
        wipe_mem(s, strlen(s));
        free(s);
    }
}

/* ---- steps ------------------------------------------------------------------ */

/* HOST, HOST:PORT, [V6]:PORT or a bare V6 address, checked as the gate
 * checks a target (access_target: check 3). */
static int parse_target(struct probe *p, struct upgrade_target *t)
{
    char host[ACCESS_HOST_MAX + 2], port[16];
    const char *s = p->o.target, *colon = strrchr(s, ':');
    size_t hlen = strlen(s);

    snprintf(port, sizeof(port), "%d", PROBE_DEFAULT_PORT);
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb && rb[1] == ':')
            snprintf(port, sizeof(port), "%s", rb + 2);
        hlen = rb ? (size_t)(rb + 1 - s) : hlen;
    } else if (colon && strchr(s, ':') == colon) {
        snprintf(port, sizeof(port), "%s", colon + 1);
        hlen = (size_t)(colon - s);
    }
    if (hlen < sizeof(host)) {
        memcpy(host, s, hlen);
        host[hlen] = '\0';
    }
    if (hlen >= sizeof(host) || access_target(host, port, t) < 0) {
        fail(p, "target", NULL, "not a host name or IP address with a port 1-65535");
        return -1;
    }
    json_object_set_new(p->report, "target",
                        json_pack("{s:s,s:i}", "host", t->host, "port", t->port));
    say(p, "target", "%s port %d", t->host, t->port);
    return 0;
}

/* Checks 4 and 5 of the upgrade gate with the relay's settings. */
static int check_settings(struct probe *p, const struct upgrade_target *t)
{
    const char *setting = access_target_refused_by(&p->cfg, t);
    char value[512], msg[1024];

    if (!setting) {
        json_object_set_new(p->report, "settings", json_string("allowed"));
        say(p, "settings", "port and host allowed (SFTP_ALLOWED_PORTS, SFTP_HOST_ALLOWLIST)");
        return 0;
    }
    cfg_effective(&p->cfg, setting, value, sizeof(value));
    if (strcmp(setting, "SFTP_ALLOWED_PORTS") == 0)
        snprintf(msg, sizeof(msg), "port %d is not in %s=%s; add it there to allow it",
                 t->port, setting, value);
    else
        snprintf(msg, sizeof(msg), "host %s is not in %s=%s; add it there to allow it",
                 t->host, setting, value);
    json_object_set_new(p->report, "settings", json_string("refused"));
    json_object_set_new(p->report, "allow_with", json_string(setting));
    fail(p, "settings", NULL, msg);
    return -1;
}

/* Name resolution and the SSRF verdict: netguard_resolve() decides and
 * pins, as the worker does. When it refuses, every address the name has is
 * listed with the SFTP_ALLOW_PRIVATE_CIDRS value that would let it pass. */
static int resolve(struct probe *p, const struct upgrade_target *t,
                   struct sockaddr_storage *ss, socklen_t *sslen)
{
    json_t *o = step_obj(p, "resolve"), *addrs = json_array();
    struct addrinfo hints, *res = NULL;
    char err[512], text[NETGUARD_ADDRSTRLEN], allow[512] = "", pinned[NETGUARD_ADDRSTRLEN];
    int64_t t0 = clock_now_us();
    int rc = netguard_resolve(p->cfg.allow_private, p->cfg.n_allow_private, t->host, t->port,
                              ss, sslen, err, sizeof(err));

    set(o, "ms", json_real((double)(clock_now_us() - t0) / 1000.0));
    set(o, "addresses", addrs);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(t->host, NULL, &hints, &res) == 0) {
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            int blocked;
            if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
                netguard_ntop(ai->ai_addr, text, sizeof(text)) != 0)
                continue;
            blocked = netguard_check_addr(p->cfg.allow_private, p->cfg.n_allow_private,
                                          ai->ai_addr) != 0;
            json_array_append_new(addrs, json_pack("{s:s,s:b}", "address", text,
                                                   "blocked", blocked));
            if (blocked && !strstr(allow, text))
                snprintf(allow + strlen(allow), sizeof(allow) - strlen(allow), "%s%s/%d",
                         allow[0] ? "," : "", text, strchr(text, ':') ? 128 : 32);
        }
        freeaddrinfo(res);
    }
    if (rc == NETGUARD_E_BLOCKED) {
        char msg[1200];
        set(o, "verdict", json_string("blocked"));
        set(o, "allow_with", json_sprintf("SFTP_ALLOW_PRIVATE_CIDRS=%s", allow));
        snprintf(msg, sizeof(msg), "%s; the relay refuses it (blocked_target). To allow it, "
                 "add to SFTP_ALLOW_PRIVATE_CIDRS: %s", err, allow[0] ? allow : "?");
        fail(p, "resolve", "blocked_target", msg);
        return -1;
    }
    if (rc < 0) {
        set(o, "verdict", json_string("unresolved"));
        fail(p, "resolve", "resolve_failed", err);
        return -1;
    }
    netguard_ntop((struct sockaddr *)ss, pinned, sizeof(pinned));
    set(o, "verdict", json_string("allowed"));
    set(o, "pinned", json_string(pinned));
    say(p, "resolve", "allowed; the relay would connect to %s", pinned);
    return 0;
}

static const char *method(struct probe *p, int which)
{
    const char *m = libssh2_session_methods(p->c.ssh, which);

    return m ? m : "?";
}

/* An AEAD cipher authenticates itself: the MAC libssh2 negotiated in the
 * key exchange is then not used. */
static const char *mac_used(struct probe *p)
{
    const char *cipher = method(p, LIBSSH2_METHOD_CRYPT_CS);

    if (strstr(cipher, "poly1305") || strstr(cipher, "gcm@openssh.com"))
        return "implicit (AEAD cipher)";
    return method(p, LIBSSH2_METHOD_MAC_CS);
}

static int connect_ssh(struct probe *p, struct sockaddr_storage *ss, socklen_t sslen)
{
    json_t *o = step_obj(p, "connect");
    char err[512];
    const char *banner;
    int64_t t0 = clock_now_us();
    int rc = ssh_open(&p->c, (struct sockaddr *)ss, sslen, &p->t, NULL, NULL, err, sizeof(err));

    if (rc < 0) {
        fail(p, "connect", ssh_err_code(rc), err);
        return -1;
    }
    banner = libssh2_session_banner_get(p->c.ssh);
    set(o, "tcp_connect_ms", json_real((double)p->c.connect_us / 1000.0));
    set(o, "handshake_ms", json_real((double)(clock_now_us() - t0) / 1000.0));
    set(o, "banner", json_string(banner ? banner : "?"));
    set(o, "kex", json_string(method(p, LIBSSH2_METHOD_KEX)));
    set(o, "host_key_algorithm", json_string(method(p, LIBSSH2_METHOD_HOSTKEY)));
    set(o, "cipher", json_string(method(p, LIBSSH2_METHOD_CRYPT_CS)));
    set(o, "mac", json_string(mac_used(p)));
    json_object_set_new(p->report, "host_key",
                        json_pack("{s:s,s:s}", "type", p->c.key_type, "fingerprint",
                                  p->c.fingerprint));
    say(p, "tcp connect", "%.1f ms", (double)p->c.connect_us / 1000.0);
    say(p, "banner", "%s", banner ? banner : "?");
    say(p, "key exchange", "%s, host key algorithm %s", method(p, LIBSSH2_METHOD_KEX),
        method(p, LIBSSH2_METHOD_HOSTKEY));
    say(p, "cipher", "%s, MAC %s", method(p, LIBSSH2_METHOD_CRYPT_CS), mac_used(p));
    say(p, "host key", "%s %s (what the app shows)", p->c.key_type, p->c.fingerprint);
    return 0;
}

/* The server's other host keys: one more handshake per key type, each
 * offering only that type, so a user can match each line of
 * `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on the server. */
static void other_host_keys(struct probe *p, struct sockaddr_storage *ss, socklen_t sslen)
{
    static const char *const prefs[] = {
        "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
        "rsa-sha2-512,rsa-sha2-256,ssh-rsa",
    };
    json_t *list = json_array();

    json_object_set_new(p->report, "other_host_keys", list);
    for (size_t i = 0; i < sizeof(prefs) / sizeof(prefs[0]); i++) {
        struct ssh_params t = p->t;
        struct ssh_conn c;
        char err[512];

        t.hostkey_prefs = prefs[i];
        if (ssh_open(&c, (struct sockaddr *)ss, sslen, &t, NULL, NULL, err, sizeof(err)) < 0)
            continue;  /* no key of this type (or no second connection): nothing to add */
        if (strcmp(c.key_type, p->c.key_type) != 0) {
            json_array_append_new(list, json_pack("{s:s,s:s}", "type", c.key_type,
                                                  "fingerprint", c.fingerprint));
            say(p, "other host key", "%s %s", c.key_type, c.fingerprint);
        }
        ssh_close(&c);
    }
}

/* Asked on a connection of its own: libssh2 keeps only the last answer to
 * libssh2_userauth_list() and leaks an earlier one, and the password login
 * (ssh_login) asks again on its connection. */
static void auth_methods(struct probe *p, struct sockaddr_storage *ss, socklen_t sslen)
{
    struct ssh_conn c;
    char err[512];
    const char *list;

    if (ssh_open(&c, (struct sockaddr *)ss, sslen, &p->t, NULL, NULL, err, sizeof(err)) < 0) {
        json_object_set_new(p->report, "auth_methods", json_string("?"));
        say(p, "auth methods", "? (a second connection failed: %s)", err);
        return;
    }
    list = libssh2_userauth_list(c.ssh, p->o.user, (unsigned)strlen(p->o.user));
    if (!list && libssh2_userauth_authenticated(c.ssh)) {
        json_object_set_new(p->report, "auth_methods", json_string("none"));
        say(p, "auth methods", "none needed: the server let %s in without credentials",
            p->o.user);
    } else {
        json_object_set_new(p->report, "auth_methods", json_string(list ? list : "?"));
        say(p, "auth methods", "%s", list ? list : "? (the server did not say)");
    }
    ssh_close(&c);
}

static int login(struct probe *p)
{
    struct proto_auth a;
    char err[512];
    int rc = -1;

    memset(&a, 0, sizeof(a));
    a.username = (char *)p->o.user;
    if (p->o.password_file) {
        a.type = AUTH_PASSWORD;
        a.password = read_secret(p->o.password_file, 1, err, sizeof(err));
        if (!a.password) {
            fail(p, "login", NULL, err);
            return -1;
        }
    } else {
        a.type = AUTH_PUBLICKEY;
        a.private_key = read_secret(p->o.key_file, 0, err, sizeof(err));
        if (!a.private_key) {
            fail(p, "login", NULL, err);
            return -1;
        }
        if (p->o.passphrase_file) {
            a.passphrase = read_secret(p->o.passphrase_file, 1, err, sizeof(err));
            if (!a.passphrase) {
                fail(p, "login", NULL, err);
                goto out;
            }
        } else if (strcmp(keyformat_problem(a.private_key, NULL),
                          "private key is encrypted: passphrase required") == 0) {
            a.passphrase = read_tty_passphrase(p->o.key_file);
        }
    }
    rc = ssh_login(&p->c, &a, NULL, err, sizeof(err));
    json_object_set_new(p->report, "login",
                        json_pack("{s:s,s:s}", "method",
                                  a.type == AUTH_PASSWORD ? "password" : "publickey",
                                  "result", rc == 0 ? "ok" : ssh_err_code(rc)));
    if (rc == SSH_E_SFTP) {
        say(p, "login", "ok (%s)", a.type == AUTH_PASSWORD ? "password" : "publickey");
        fail(p, "sftp", ssh_err_code(rc), err);
    } else if (rc < 0) {
        fail(p, "login", ssh_err_code(rc), err);
    } else {
        say(p, "login", "ok (%s)", a.type == AUTH_PASSWORD ? "password" : "publickey");
        say(p, "sftp", "subsystem available");
    }
out:
    free_secret(a.password);
    free_secret(a.private_key);
    free_secret(a.passphrase);
    return rc < 0 ? -1 : 0;
}

/* ---- SFTP through the relay's verb table ------------------------------------- */

static int sink_drop(void *arg, struct frame *a, struct frame *b)
{
    (void)arg;
    frame_free(a);
    frame_free(b);
    return 0;
}

/* Run one verb as the worker runs a browser's request: parsed by proto,
 * answered by sftp_ops (a write_chunk's bytes written by sftp_ops_flush).
 * Takes `req`; `r` is cleared by the caller with op_reply_clear(). */
static void verb(struct probe *p, json_t *req, const uint8_t *data, size_t len,
                 struct op_reply *r)
{
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    struct proto_request q;

    memset(r, 0, sizeof(*r));
    json_decref(req);
    if (!text || proto_parse_request(text, strlen(text), &q) < 0) {
        free(text);
        r->error = "out of memory";
        r->code = "io";
        return;
    }
    sftp_ops_run(p->ops, &q, data, len, r);
    if (r->write_pending && sftp_ops_flush(p->ops, &q, data, len) < 0) {
        r->error = "write failed: connection to the SFTP server lost";
        r->code = "io";
    }
    proto_request_free(&q);
    free(text);
}

static json_t *request(const char *method_name, const char *key, const char *value)
{
    return json_pack("{s:i,s:s,s:{s:s}}", "id", 1, "method", method_name, "params", key, value);
}

/* Whether the server answers an extension request: the answer to a request
 * for a file that does not exist tells "unsupported" from "supported". */
static const char *ext_answer(struct probe *p, int rc)
{
    if (rc == 0)
        return "yes";
    if (rc == LIBSSH2_ERROR_SFTP_PROTOCOL)
        return libssh2_sftp_last_error(p->c.sftp) == LIBSSH2_FX_OP_UNSUPPORTED ? "no" : "yes";
    return "unknown";
}

static void join_path(char *out, size_t n, const char *dir, const char *name)
{
    size_t l = strlen(dir);

    snprintf(out, n, "%s%s%s", dir, l && dir[l - 1] == '/' ? "" : "/", name);
}

static int random_name(char *out, size_t n)
{
    unsigned char rnd[8];
    char hex[17];

    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        return -1;
    for (int i = 0; i < 8; i++)
        snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    snprintf(out, n, PROBE_FILE_PREFIX "%s", hex);
    return 0;
}

static void extensions(struct probe *p, json_t *ext, const char *dir)
{
    char from[PROBE_PATH_MAX], to[PROBE_PATH_MAX + 16], name[64];
    const char *limits = "unknown (this libssh2 cannot ask)";
    int rc;

    if (random_name(name, sizeof(name)) < 0)
        return;
    join_path(from, sizeof(from), dir, name);
    snprintf(to, sizeof(to), "%s-renamed", from);
    rc = libssh2_sftp_posix_rename_ex(p->c.sftp, from, (unsigned)strlen(from), to,
                                      (unsigned)strlen(to));
    set(ext, "posix-rename", json_string(ext_answer(p, rc)));
#ifdef LIBSSH2_SFTP_HAS_READ_SIZE
    {
        LIBSSH2_SFTP_LIMITS lim;
        rc = libssh2_sftp_limits(p->c.sftp, &lim);
        limits = rc == 0 ? "yes" : "no";
        if (rc == 0)
            set(ext, "limits_max_read", json_integer((json_int_t)lim.max_read_length));
    }
#endif
    set(ext, "limits", json_string(limits));
}

/* fsync@openssh.com on the probe file, opened for reading. */
static void try_fsync(struct probe *p, json_t *ext, const char *file)
{
    LIBSSH2_SFTP_HANDLE *h = libssh2_sftp_open(p->c.sftp, file, LIBSSH2_FXF_READ, 0);

    if (!h) {
        set(ext, "fsync", json_string("unknown"));
        return;
    }
    set(ext, "fsync", json_string(ext_answer(p, libssh2_sftp_fsync(h))));
    libssh2_sftp_close_handle(h);
}

static const char *ext_text(json_t *ext, const char *name)
{
    const char *v = json_string_value(json_object_get(ext, name));

    return v ? v : "not checked";
}

/* Free space, extensions and, unless --read-only, a file created, written,
 * synced and removed in --path with the relay's own verbs. */
static int sftp_checks(struct probe *p)
{
    const char *dir = p->o.path ? p->o.path : ".";
    json_t *ext = json_object(), *space = step_obj(p, "free_space"), *result;
    char file[PROBE_PATH_MAX], name[64], handle[64];
    uint8_t payload[PROBE_WRITE_BYTES];
    struct op_reply r;
    int rc = 0;

    json_object_set_new(p->report, "extensions", ext);
    p->sink.post = sink_drop;
    p->ops = sftp_ops_new(&p->c, &p->sink, p->cfg.list_max_entries,
                          p->cfg.op_timeout_secs);
    if (!p->ops) {
        fail(p, "sftp", "io", "out of memory");
        return -1;
    }
    verb(p, request("stat", "path", dir), NULL, 0, &r);
    if (r.error || !json_is_true(json_object_get(r.result, "isDir"))) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s: %s", dir, r.error ? r.error : "not a directory");
        fail(p, "path", r.error ? r.code : "not_a_directory", msg);
        op_reply_clear(&r);
        return -1;
    }
    op_reply_clear(&r);

    verb(p, request("fs_info", "path", dir), NULL, 0, &r);
    result = r.result;
    set(ext, "statvfs", json_string(json_is_true(json_object_get(result, "supported"))
                                        ? "yes" : "no"));
    set(space, "path", json_string(dir));
    set(space, "free_bytes", json_incref(json_object_get(result, "freeBytes")));
    set(space, "total_bytes", json_incref(json_object_get(result, "totalBytes")));
    if (json_is_true(json_object_get(result, "supported")))
        say(p, "free space", "%.1f GiB free of %.1f GiB in %s",
            (double)json_integer_value(json_object_get(result, "freeBytes")) / 1073741824.0,
            (double)json_integer_value(json_object_get(result, "totalBytes")) / 1073741824.0,
            dir);
    else
        say(p, "free space", "unknown: the server has no statvfs@openssh.com (the app skips "
            "its quota check)");
    op_reply_clear(&r);
    extensions(p, ext, dir);

    if (p->o.read_only) {
        json_object_set_new(p->report, "writable", json_string("not checked (--read-only)"));
        say(p, "extensions", "posix-rename %s, statvfs %s, limits %s, fsync %s",
            ext_text(ext, "posix-rename"), ext_text(ext, "statvfs"), ext_text(ext, "limits"),
            "not checked (--read-only)");
        say(p, "writable", "not checked (--read-only)");
        return 0;
    }
    if (random_name(name, sizeof(name)) < 0) {
        fail(p, "writable", "io", "no random bytes for the probe file's name");
        return -1;
    }
    join_path(file, sizeof(file), dir, name);
    RAND_bytes(payload, sizeof(payload));
    verb(p, request("write_open", "path", file), NULL, 0, &r);
    if (r.error) {
        rc = -1;
        goto refused;
    }
    {
        const char *h = json_string_value(json_object_get(r.result, "handle"));
        snprintf(handle, sizeof(handle), "%s", h ? h : "");
    }
    op_reply_clear(&r);
    verb(p, request("write_chunk", "handle", handle), payload, sizeof(payload), &r);
    op_reply_clear(&r);
    verb(p, request("write_close", "handle", handle), NULL, 0, &r);  /* fsyncs where offered */
    if (r.error) {
        rc = -1;
        goto refused;
    }
    op_reply_clear(&r);
    try_fsync(p, ext, file);
    verb(p, request("delete", "path", file), NULL, 0, &r);
    if (r.error) {
        char msg[PROBE_PATH_MAX + 256];
        snprintf(msg, sizeof(msg), "created %s but could not remove it: %s", file, r.error);
        fail(p, "writable", r.code, msg);
        op_reply_clear(&r);
        return -1;
    }
    op_reply_clear(&r);
    say(p, "extensions", "posix-rename %s, statvfs %s, limits %s, fsync %s",
        ext_text(ext, "posix-rename"), ext_text(ext, "statvfs"), ext_text(ext, "limits"),
        ext_text(ext, "fsync"));
    json_object_set_new(p->report, "writable", json_string("yes"));
    say(p, "writable", "yes: created, wrote, synced and removed %s", file);
    return 0;
refused:
    {
        char msg[PROBE_PATH_MAX + 256];
        snprintf(msg, sizeof(msg), "cannot create files in %s: %s", dir, r.error);
        json_object_set_new(p->report, "writable", json_string("no"));
        say(p, "extensions", "posix-rename %s, statvfs %s, limits %s, fsync not checked",
            ext_text(ext, "posix-rename"), ext_text(ext, "statvfs"), ext_text(ext, "limits"));
        fail(p, "writable", r.code, msg);
        op_reply_clear(&r);
    }
    return rc;
}

/* ---- the command -------------------------------------------------------------- */

static int run(struct probe *p)
{
    struct upgrade_target t;
    struct sockaddr_storage ss;
    socklen_t sslen = 0;

    if (parse_target(p, &t) < 0 || check_settings(p, &t) < 0 || resolve(p, &t, &ss, &sslen) < 0)
        return -1;
    /* The relay pins the address it checked: so does the probe. */
    if (connect_ssh(p, &ss, sslen) < 0)
        return -1;
    other_host_keys(p, &ss, sslen);
    if (!p->o.user)
        return 0;
    auth_methods(p, &ss, sslen);
    if (!p->o.key_file && !p->o.password_file)
        return 0;
    if (login(p) < 0)
        return -1;
    return sftp_checks(p);
}

int probe_main(int argc, char **argv)
{
    struct probe p;
    char err[512];
    int rc;

    memset(&p, 0, sizeof(p));
    p.c.sock = -1;
    rc = parse_args(argc, argv, &p.o, err, sizeof(err));
    if (rc)
        return rc;
    if (cfg_load(&p.cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "wattcloud-relay probe: %s\n", err);
        cfg_free(&p.cfg);
        return PROBE_EXIT_USAGE;
    }
    if (ssh_global_init() < 0) {
        fprintf(stderr, "wattcloud-relay probe: libssh2_init failed\n");
        cfg_free(&p.cfg);
        return PROBE_EXIT_USAGE;
    }
    p.t.connect_secs = p.cfg.connect_timeout_secs;
    p.t.banner_secs = p.cfg.banner_timeout_secs;
    p.t.op_secs = p.cfg.op_timeout_secs;
    p.t.mem_max = (size_t)p.cfg.ssh_session_memory_mib << 20;
    p.report = json_object();
    run(&p);
    json_object_set_new(p.report, "ok", json_boolean(!p.failed));
    if (p.o.json) {
        json_dumpf(p.report, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        putchar('\n');
    } else if (p.failed) {
        printf("result         FAILED at step \"%s\"\n", p.failed);
    } else {
        printf("result         ok\n");
    }
    sftp_ops_free(p.ops);
    ssh_close(&p.c);
    json_decref(p.report);
    ssh_global_exit();
    cfg_free(&p.cfg);
    return p.failed ? PROBE_EXIT_FAILED : PROBE_EXIT_OK;
}
