/* config: every invalid value refused with an error naming its variable
 * (PROTOCOL.md §6 "an invalid value stops the daemon at start, naming the
 * variable"), the accepted forms parsed to the right values, empty values
 * never weakening a setting, and the env-file reader. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "check.h"
#include "config.h"
#include "netguard.h"

static const char *const vars[] = {
    "BIND_ADDR", "TLS_CERT", "TLS_KEY", "ALLOW_PLAINTEXT", "BYO_DOMAIN", "SPA_DIR",
    "RELAY_SIGNING_KEY", "RELAY_COOKIE_TTL_SECS", "POW_DIFFICULTY_BITS",
    "AUTH_CHALLENGE_PER_MIN", "AUTH_MAX_BODY_BYTES", "SFTP_ALLOWED_PORTS",
    "SFTP_HOST_ALLOWLIST", "SFTP_ALLOW_PRIVATE_CIDRS", "SFTP_MAX_CONCURRENT_PER_IP",
    "TRUSTED_PROXY_IPS", "LOG_LEVEL", "MAX_SESSIONS", "SFTP_UPLOAD_BUFFER_BYTES",
    "SFTP_IDLE_TIMEOUT_SECS", "HOST_KEY_TIMEOUT_SECS", "WS_PING_INTERVAL_SECS",
    "SSH_CONNECT_TIMEOUT_SECS", "SSH_BANNER_TIMEOUT_SECS", "SSH_KEEPALIVE_SECS",
    "SSH_KEEPALIVE_COUNT", "SFTP_OP_TIMEOUT_SECS", "SHUTDOWN_GRACE_SECS", "SIGN_TIMEOUT_SECS",
    "STATE_URL", "STATE_PASSWORD_FILE", "KEY_PREFIX", "STATE_LEASE_SECS",
};
#define N_VARS (sizeof(vars) / sizeof(vars[0]))

static struct config defaults;
static char err[1024];

static void reset_env(void)
{
    for (size_t i = 0; i < N_VARS; i++)
        unsetenv(vars[i]);
}

/* cfg_load with one variable set (on top of an empty environment). */
static int load1(struct config *c, const char *name, const char *value)
{
    reset_env();
    if (name)
        setenv(name, value, 1);
    err[0] = '\0';
    return cfg_load(c, err, sizeof(err));
}

/* `name`=`value` must be refused with an error naming `name` (or `names`). */
static void refused_as(const char *name, const char *value, const char *named)
{
    struct config c;
    int rc = load1(&c, name, value);

    CHECK(rc == -1);
    CHECK(strstr(err, named) != NULL);
    if (rc != -1 || !strstr(err, named))
        fprintf(stderr, "  %s=\"%s\": rc %d, err \"%s\"\n", name, value, rc, err);
    cfg_free(&c);
}

static void refused(const char *name, const char *value)
{
    refused_as(name, value, name);
}

static int accepted(struct config *c, const char *name, const char *value)
{
    int rc = load1(c, name, value);

    CHECK(rc == 0);
    if (rc != 0)
        fprintf(stderr, "  %s=\"%s\" refused: %s\n", name, value, err);
    return rc;
}

/* The scalar settings of two configs agree (the key only by its origin). */
static int same_settings(const struct config *a, const struct config *b)
{
#define SAME(f) (a->f == b->f)
#define SAME_STR(f) ((!a->f && !b->f) || (a->f && b->f && strcmp(a->f, b->f) == 0))
    return strcmp(a->bind_host, b->bind_host) == 0 && SAME(bind_port) && SAME_STR(tls_cert) &&
           SAME_STR(tls_key) && SAME(allow_plaintext) && SAME_STR(byo_domain) &&
           SAME_STR(spa_dir) && SAME(signing_key_random) && SAME(signing_key_len) &&
           SAME(cookie_ttl_secs) && SAME(pow_difficulty_bits) && SAME(auth_challenge_per_min) &&
           SAME(auth_max_body_bytes) && SAME(n_allowed_ports) &&
           memcmp(a->allowed_ports, b->allowed_ports, sizeof(a->allowed_ports)) == 0 &&
           SAME(n_host_allowlist) && SAME(n_allow_private) && SAME(n_trusted_proxies) &&
           SAME(max_concurrent_per_ip) && SAME(max_sessions) && SAME(upload_buffer_bytes) &&
           SAME(idle_timeout_secs) && SAME(host_key_timeout_secs) &&
           SAME(ws_ping_interval_secs) && SAME(connect_timeout_secs) &&
           SAME(banner_timeout_secs) && SAME(keepalive_secs) && SAME(keepalive_count) &&
           SAME(op_timeout_secs) && SAME(shutdown_grace_secs) && SAME(log_level);
#undef SAME
#undef SAME_STR
}

static void test_numbers(void)
{
    struct config c;

    refused("POW_DIFFICULTY_BITS", "11");
    refused("POW_DIFFICULTY_BITS", "0");
    refused("POW_DIFFICULTY_BITS", "-18");
    refused("POW_DIFFICULTY_BITS", "18x");
    refused("POW_DIFFICULTY_BITS", " 18");
    refused("POW_DIFFICULTY_BITS", "eighteen");
    refused("POW_DIFFICULTY_BITS", "99999999999999999999999");
    if (accepted(&c, "POW_DIFFICULTY_BITS", "12") == 0)
        CHECK(c.pow_difficulty_bits == 12);
    cfg_free(&c);
    if (accepted(&c, "POW_DIFFICULTY_BITS", "22") == 0)
        CHECK(c.pow_difficulty_bits == 22);
    cfg_free(&c);

    refused("RELAY_COOKIE_TTL_SECS", "0");
    refused("RELAY_COOKIE_TTL_SECS", "abc");
    refused("AUTH_CHALLENGE_PER_MIN", "0");
    refused("AUTH_MAX_BODY_BYTES", "-1");
    refused("AUTH_MAX_BODY_BYTES", "16k");
    refused("SFTP_MAX_CONCURRENT_PER_IP", "0");
    refused("SFTP_UPLOAD_BUFFER_BYTES", "200MiB");
    refused("SFTP_IDLE_TIMEOUT_SECS", "0");
    refused("SSH_KEEPALIVE_COUNT", "0");
    refused("SFTP_OP_TIMEOUT_SECS", "1.5");
    refused("ALLOW_PLAINTEXT", "maybe");
    if (accepted(&c, "SFTP_UPLOAD_BUFFER_BYTES", "1048576") == 0)
        CHECK(c.upload_buffer_bytes == 1048576);
    cfg_free(&c);
}

static void test_bind(void)
{
    struct config c;

    refused("BIND_ADDR", "nonsense");
    refused("BIND_ADDR", "127.0.0.1");
    refused("BIND_ADDR", "127.0.0.1:");
    refused("BIND_ADDR", "127.0.0.1:0");
    refused("BIND_ADDR", "127.0.0.1:65536");
    refused("BIND_ADDR", "127.0.0.1:84x3");
    refused("BIND_ADDR", ":8443");
    refused("BIND_ADDR", "localhost:8443");
    refused("BIND_ADDR", "[::]");
    refused("BIND_ADDR", "[]:8443");

    /* A public address without TLS needs an explicit ALLOW_PLAINTEXT. */
    refused("BIND_ADDR", "0.0.0.0:8443");
    reset_env();
    setenv("BIND_ADDR", "0.0.0.0:8443", 1);
    setenv("ALLOW_PLAINTEXT", "1", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == 0);
    CHECK_STR(c.bind_host, "0.0.0.0");
    CHECK(c.bind_port == 8443);
    CHECK(c.allow_plaintext == 1);
    cfg_free(&c);
    reset_env();
    setenv("BIND_ADDR", "0.0.0.0:8443", 1);
    setenv("ALLOW_PLAINTEXT", "0", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == -1);
    CHECK(strstr(err, "BIND_ADDR") != NULL);
    cfg_free(&c);
    /* ... or TLS. */
    reset_env();
    setenv("BIND_ADDR", "0.0.0.0:443", 1);
    setenv("TLS_CERT", "/etc/ssl/relay.crt", 1);
    setenv("TLS_KEY", "/etc/ssl/relay.key", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == 0);
    CHECK_STR(c.tls_cert, "/etc/ssl/relay.crt");
    CHECK_STR(c.tls_key, "/etc/ssl/relay.key");
    CHECK(c.bind_port == 443);
    cfg_free(&c);

    /* TLS: both or neither. */
    refused_as("TLS_CERT", "/etc/ssl/relay.crt", "TLS_KEY");
    refused_as("TLS_KEY", "/etc/ssl/relay.key", "TLS_CERT");

    /* IPv6. */
    refused("BIND_ADDR", "[::]:8443");
    reset_env();
    setenv("BIND_ADDR", "[::]:8443", 1);
    setenv("ALLOW_PLAINTEXT", "1", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == 0);
    CHECK_STR(c.bind_host, "::");
    CHECK(c.bind_port == 8443);
    cfg_free(&c);
    if (accepted(&c, "BIND_ADDR", "[::1]:9000") == 0) {  /* loopback: no TLS needed */
        CHECK_STR(c.bind_host, "::1");
        CHECK(c.bind_port == 9000);
    }
    cfg_free(&c);
    if (accepted(&c, "BIND_ADDR", "127.0.0.2:1") == 0) {
        CHECK_STR(c.bind_host, "127.0.0.2");
        CHECK(c.bind_port == 1);
    }
    cfg_free(&c);
}

static void test_lists(void)
{
    struct config c;

    refused("SFTP_ALLOWED_PORTS", "0");
    refused("SFTP_ALLOWED_PORTS", "70000");
    refused("SFTP_ALLOWED_PORTS", "65536");
    refused("SFTP_ALLOWED_PORTS", "22,abc");
    refused("SFTP_ALLOWED_PORTS", "22,-1");
    refused("SFTP_ALLOWED_PORTS", "22;2222");
    refused("SFTP_ALLOWED_PORTS", ",,");
    if (accepted(&c, "SFTP_ALLOWED_PORTS", " 22 , 65535,1 ") == 0) {
        CHECK(c.n_allowed_ports == 3);
        CHECK(c.allowed_ports[0] == 22);
        CHECK(c.allowed_ports[1] == 65535);
        CHECK(c.allowed_ports[2] == 1);
    }
    cfg_free(&c);

    refused("LOG_LEVEL", "verbose");
    refused("LOG_LEVEL", "trace");
    if (accepted(&c, "LOG_LEVEL", "DEBUG") == 0)
        CHECK(c.log_level == LOG_DEBUG);
    cfg_free(&c);
    if (accepted(&c, "LOG_LEVEL", "error") == 0)
        CHECK(c.log_level == LOG_ERROR);
    cfg_free(&c);
    if (accepted(&c, "LOG_LEVEL", "warn") == 0)
        CHECK(c.log_level == LOG_WARN);
    cfg_free(&c);

    refused("BYO_DOMAIN", "evil.example.com/path");
    refused("BYO_DOMAIN", "a b");
    if (accepted(&c, "BYO_DOMAIN", "App.Example.COM") == 0)
        CHECK_STR(c.byo_domain, "app.example.com");
    cfg_free(&c);

    refused("SFTP_HOST_ALLOWLIST", "ok.example.com,bad host");
    refused("SFTP_HOST_ALLOWLIST", "evil/x");
    if (accepted(&c, "SFTP_HOST_ALLOWLIST", "NAS.Example.com, *.Home.example.org") == 0) {
        CHECK(c.n_host_allowlist == 2);
        if (c.n_host_allowlist == 2) {
            CHECK_STR(c.host_allowlist[0], "nas.example.com");
            CHECK_STR(c.host_allowlist[1], "*.home.example.org");
        }
    }
    cfg_free(&c);
}

static void check_cidr(const struct cidr *c, int family, const char *addr, int prefix)
{
    uint8_t want[16] = {0};

    CHECK(c->family == family);
    CHECK(inet_pton(family, addr, want) == 1);
    CHECK(memcmp(c->addr, want, family == AF_INET ? 4 : 16) == 0);
    CHECK(c->prefix == prefix);
}

static void test_cidrs(void)
{
    struct config c;

    if (accepted(&c, "SFTP_ALLOW_PRIVATE_CIDRS", "127.0.0.0/8,100.64.0.0/10") == 0) {
        CHECK(c.n_allow_private == 2);
        if (c.n_allow_private == 2) {
            check_cidr(&c.allow_private[0], AF_INET, "127.0.0.0", 8);
            check_cidr(&c.allow_private[1], AF_INET, "100.64.0.0", 10);
        }
        CHECK(c.n_trusted_proxies == 0);
    }
    cfg_free(&c);
    if (accepted(&c, "SFTP_ALLOW_PRIVATE_CIDRS", " 192.168.1.7/24 , fd00::/8,10.1.2.3 ") == 0) {
        CHECK(c.n_allow_private == 3);
        if (c.n_allow_private == 3) {
            check_cidr(&c.allow_private[0], AF_INET, "192.168.1.0", 24);  /* host bits cleared */
            check_cidr(&c.allow_private[1], AF_INET6, "fd00::", 8);
            check_cidr(&c.allow_private[2], AF_INET, "10.1.2.3", 32);
        }
    }
    cfg_free(&c);
    refused("SFTP_ALLOW_PRIVATE_CIDRS", "10.0.0.0/33");
    refused("SFTP_ALLOW_PRIVATE_CIDRS", "127.0.0.0/8,10.0.0.0/33");
    refused("SFTP_ALLOW_PRIVATE_CIDRS", "fd00::/129");
    refused("SFTP_ALLOW_PRIVATE_CIDRS", "10.0.0.0/-1");
    refused("SFTP_ALLOW_PRIVATE_CIDRS", "10.0.0.0/");
    refused("SFTP_ALLOW_PRIVATE_CIDRS", "nas.local");
    refused("SFTP_ALLOW_PRIVATE_CIDRS", "10.0.0/8");

    if (accepted(&c, "TRUSTED_PROXY_IPS", "10.0.0.1,::1") == 0) {
        CHECK(c.n_trusted_proxies == 2);
        if (c.n_trusted_proxies == 2) {
            check_cidr(&c.trusted_proxies[0], AF_INET, "10.0.0.1", 32);
            check_cidr(&c.trusted_proxies[1], AF_INET6, "::1", 128);
        }
        CHECK(c.n_allow_private == 0);
    }
    cfg_free(&c);
    refused("TRUSTED_PROXY_IPS", "10.0.0.1,proxy.local");
}

static char *base64(const uint8_t *p, size_t n)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1);

    if (out)
        EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    return out;
}

static void test_signing_key(void)
{
    struct config c;
    uint8_t raw[300];
    char *b64;

    refused("RELAY_SIGNING_KEY", "short");
    refused("RELAY_SIGNING_KEY", "0123456789abcdef0123456789abcd!");   /* 31 raw bytes */
    refused("RELAY_SIGNING_KEY", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");  /* all equal */
    /* base64 of 32 zero bytes: all equal once decoded. */
    memset(raw, 0, 32);
    b64 = base64(raw, 32);
    refused("RELAY_SIGNING_KEY", b64);
    free(b64);
    /* base64 of only 24 random bytes is too short as base64; its 32
     * characters may only count as a raw key. */
    CHECK(RAND_bytes(raw, 24) == 1);
    b64 = base64(raw, 24);
    CHECK(strlen(b64) == 32);
    if (load1(&c, "RELAY_SIGNING_KEY", b64) == 0)  /* then it must be the raw text */
        CHECK(c.signing_key_len == 32 && memcmp(c.signing_key, b64, 32) == 0);
    cfg_free(&c);
    free(b64);

    /* base64 of 32 random bytes: decoded to exactly those bytes. */
    CHECK(RAND_bytes(raw, 32) == 1);
    b64 = base64(raw, 32);
    CHECK(strlen(b64) == 44 && b64[43] == '=');
    if (accepted(&c, "RELAY_SIGNING_KEY", b64) == 0) {
        CHECK(c.signing_key_len == 32);
        CHECK(memcmp(c.signing_key, raw, 32) == 0);
        CHECK(c.signing_key_random == 0);
    }
    cfg_free(&c);
    free(b64);

    /* 64 random bytes, "==" padding. */
    CHECK(RAND_bytes(raw, 64) == 1);
    b64 = base64(raw, 64);
    if (accepted(&c, "RELAY_SIGNING_KEY", b64) == 0) {
        CHECK(c.signing_key_len == 64);
        CHECK(memcmp(c.signing_key, raw, 64) == 0);
    }
    cfg_free(&c);
    free(b64);

    /* A 40-character raw key (valid base64 alphabet, but only 30 bytes
     * decoded): taken as the raw bytes. */
    const char *raw40 = "0123456789abcdefghijABCDEFGHIJ0123456789";
    CHECK(strlen(raw40) == 40);
    if (accepted(&c, "RELAY_SIGNING_KEY", raw40) == 0) {
        CHECK(c.signing_key_len == 40);
        CHECK(memcmp(c.signing_key, raw40, 40) == 0);
        CHECK(c.signing_key_random == 0);
    }
    cfg_free(&c);
    /* A raw key outside the base64 alphabet. */
    const char *rawp = "correct horse battery staple, 2024!";
    if (accepted(&c, "RELAY_SIGNING_KEY", rawp) == 0) {
        CHECK(c.signing_key_len == strlen(rawp));
        CHECK(memcmp(c.signing_key, rawp, strlen(rawp)) == 0);
    }
    cfg_free(&c);

    /* The largest key that fits: base64 of 256 bytes. */
    CHECK(RAND_bytes(raw, 256) == 1);
    b64 = base64(raw, 256);
    if (accepted(&c, "RELAY_SIGNING_KEY", b64) == 0) {
        CHECK(c.signing_key_len == 256);
        CHECK(memcmp(c.signing_key, raw, 256) == 0);
    }
    cfg_free(&c);
    free(b64);

    /* Base64 of 257 or 258 bytes does not fit the 256-byte key buffer:
     * refused, never written past it. */
    for (size_t n = 257; n <= 258; n++) {
        CHECK(RAND_bytes(raw, (int)n) == 1);
        b64 = base64(raw, n);
        CHECK(strlen(b64) == 344);
        int rc = load1(&c, "RELAY_SIGNING_KEY", b64);
        CHECK(rc == -1 || c.signing_key_len <= sizeof(c.signing_key));
        if (rc == -1)
            CHECK(strstr(err, "RELAY_SIGNING_KEY") != NULL);
        else
            fprintf(stderr, "  base64 of %zu bytes: signing_key_len %zu\n", n,
                    c.signing_key_len);
        cfg_free(&c);
        free(b64);
    }
    /* A raw key longer than the buffer. */
    {
        char big[400];
        for (size_t i = 0; i < sizeof(big) - 1; i++)
            big[i] = (char)('!' + i % 90);
        big[sizeof(big) - 1] = '\0';
        refused("RELAY_SIGNING_KEY", big);
    }
}

/* An empty value (`POW_DIFFICULTY_BITS=` in an env file) must either be
 * refused naming the variable or mean the default: never a zeroed field
 * (POW 0 bits would turn the proof of work off). */
static void test_empty_values(void)
{
    struct config c;

    for (size_t i = 0; i < N_VARS; i++) {
        int rc = load1(&c, vars[i], "");
        if (rc == -1) {
            CHECK(strstr(err, vars[i]) != NULL);
        } else {
            int same = same_settings(&c, &defaults);
            CHECK(same);
            if (!same)
                fprintf(stderr, "  %s=\"\" is neither refused nor the default\n", vars[i]);
        }
        cfg_free(&c);
    }
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static void check_env(const char *name, const char *want)
{
    const char *got = getenv(name);

    CHECK_STR(got, want);
}

static void test_env_file(void)
{
    char dir[] = "/tmp/wc-test-config-XXXXXX";
    char path[256], bad[256], missing[256];
    struct config c;

    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof(path), "%s/relay.env", dir);
    snprintf(bad, sizeof(bad), "%s/bad.env", dir);
    snprintf(missing, sizeof(missing), "%s/none.env", dir);
    CHECK(write_file(path,
                     "# a comment\n"
                     "; another comment\n"
                     "\n"
                     "   # indented comment\n"
                     "WC_T_A=plain\n"
                     "  WC_T_B =  spaced value  \n"
                     "WC_T_C=\"double quoted\"\n"
                     "WC_T_D='single # quoted'\n"
                     "WC_T_E=file-loses\n"
                     "WC_T_F=a=b=c\n"
                     "WC_T_G=\"mismatched'\n"
                     "WC_T_H=\n"
                     "WC_T_I=\"\"\n"
                     "POW_DIFFICULTY_BITS=20\n"
                     "LOG_LEVEL=debug\r\n"
                     "WC_T_LAST=no newline at end") == 0);
    for (const char *v = "ABCDEFGHI"; *v; v++) {
        char n[16];
        snprintf(n, sizeof(n), "WC_T_%c", *v);
        unsetenv(n);
    }
    unsetenv("WC_T_LAST");
    reset_env();
    setenv("WC_T_E", "env-wins", 1);

    err[0] = '\0';
    CHECK(cfg_load_env_file(path, err, sizeof(err)) == 0);
    check_env("WC_T_A", "plain");
    check_env("WC_T_B", "spaced value");
    check_env("WC_T_C", "double quoted");
    check_env("WC_T_D", "single # quoted");
    check_env("WC_T_E", "env-wins");
    check_env("WC_T_F", "a=b=c");
    check_env("WC_T_G", "\"mismatched'");
    check_env("WC_T_H", "");
    check_env("WC_T_I", "");
    check_env("WC_T_LAST", "no newline at end");
    check_env("LOG_LEVEL", "debug");
    CHECK(getenv("# a comment") == NULL);

    /* The file feeds cfg_load like the environment does. */
    CHECK(cfg_load(&c, err, sizeof(err)) == 0);
    CHECK(c.pow_difficulty_bits == 20);
    CHECK(c.log_level == LOG_DEBUG);
    cfg_free(&c);

    /* An explicit environment value wins over the file for settings too. */
    reset_env();
    setenv("POW_DIFFICULTY_BITS", "14", 1);
    CHECK(cfg_load_env_file(path, err, sizeof(err)) == 0);
    CHECK(cfg_load(&c, err, sizeof(err)) == 0);
    CHECK(c.pow_difficulty_bits == 14);
    cfg_free(&c);

    /* A line without '=' is an error naming the file and line. */
    CHECK(write_file(bad, "# ok\nWC_T_X=1\nthis line is wrong\n") == 0);
    err[0] = '\0';
    CHECK(cfg_load_env_file(bad, err, sizeof(err)) == -1);
    CHECK(strstr(err, bad) != NULL);
    CHECK(strstr(err, ":3") != NULL);
    unsetenv("WC_T_X");

    /* A missing file. */
    err[0] = '\0';
    CHECK(cfg_load_env_file(missing, err, sizeof(err)) == -1);
    CHECK(strstr(err, missing) != NULL);

    /* An invalid value from the file is refused by cfg_load, named. */
    reset_env();
    CHECK(write_file(bad, "POW_DIFFICULTY_BITS=11\n") == 0);
    CHECK(cfg_load_env_file(bad, err, sizeof(err)) == 0);
    CHECK(cfg_load(&c, err, sizeof(err)) == -1);
    CHECK(strstr(err, "POW_DIFFICULTY_BITS") != NULL);
    cfg_free(&c);

    unlink(path);
    unlink(bad);
    rmdir(dir);
    for (const char *v = "ABCDEFGHI"; *v; v++) {
        char n[16];
        snprintf(n, sizeof(n), "WC_T_%c", *v);
        unsetenv(n);
    }
    unsetenv("WC_T_LAST");
    reset_env();
}

/* The start-up log shows each value as parsed, not as written in the
 * environment, and never the signing key. */
static void test_effective_values(void)
{
    static const char key[] = "0123456789abcdefghijklmnopqrstuvwxyzABCD";
    struct config c;
    char v[256], line[8192];
    FILE *cap;
    size_t got;
    int saved;

    reset_env();
    setenv("BIND_ADDR", "[::1]:9000", 1);
    setenv("BYO_DOMAIN", "App.Example.COM", 1);
    setenv("SFTP_ALLOWED_PORTS", " 22 , 2222", 1);
    setenv("SFTP_HOST_ALLOWLIST", "*.Example.com, files.B.org", 1);
    setenv("TRUSTED_PROXY_IPS", "10.1.2.3, 192.168.7.9/16,::ffff:10.0.0.1", 1);
    setenv("LOG_LEVEL", "DEBUG", 1);
    setenv("ALLOW_PLAINTEXT", "yes", 1);
    setenv("RELAY_SIGNING_KEY", key, 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == 0);

    CHECK(cfg_effective(&c, "BIND_ADDR", v, sizeof(v)) == 0);
    CHECK_STR(v, "[::1]:9000");
    cfg_effective(&c, "BYO_DOMAIN", v, sizeof(v));
    CHECK_STR(v, "app.example.com");
    cfg_effective(&c, "SFTP_ALLOWED_PORTS", v, sizeof(v));
    CHECK_STR(v, "22,2222");
    cfg_effective(&c, "SFTP_HOST_ALLOWLIST", v, sizeof(v));
    CHECK_STR(v, "*.example.com,files.b.org");
    cfg_effective(&c, "TRUSTED_PROXY_IPS", v, sizeof(v));
    CHECK_STR(v, "10.1.2.3/32,192.168.0.0/16,10.0.0.1/32");
    cfg_effective(&c, "SFTP_ALLOW_PRIVATE_CIDRS", v, sizeof(v));
    CHECK_STR(v, "(empty)");
    cfg_effective(&c, "LOG_LEVEL", v, sizeof(v));
    CHECK_STR(v, "debug");
    cfg_effective(&c, "ALLOW_PLAINTEXT", v, sizeof(v));
    CHECK_STR(v, "1");
    cfg_effective(&c, "TLS_CERT", v, sizeof(v));
    CHECK_STR(v, "(unset)");
    cfg_effective(&c, "SFTP_UPLOAD_BUFFER_BYTES", v, sizeof(v));
    CHECK_STR(v, "209715200");
    cfg_effective(&c, "RELAY_SIGNING_KEY", v, sizeof(v));
    CHECK_STR(v, "(set, hidden)");
    CHECK(cfg_effective(&c, "NO_SUCH_SETTING", v, sizeof(v)) == -1);
    /* A value longer than the buffer is cut, and says so. */
    cfg_effective(&c, "TRUSTED_PROXY_IPS", v, 16);
    CHECK_STR(v, "10.1.2.3/32,...");

    /* The log line itself, captured from stderr. */
    cap = tmpfile();
    CHECK(cap != NULL);
    if (cap) {
        fflush(stderr);
        saved = dup(2);
        dup2(fileno(cap), 2);
        log_init(LOG_INFO);
        cfg_log(&c);
        fflush(stderr);
        dup2(saved, 2);
        close(saved);
        rewind(cap);
        got = fread(line, 1, sizeof(line) - 1, cap);
        line[got] = '\0';
        fclose(cap);
        CHECK(strstr(line, "setting BYO_DOMAIN=app.example.com\n") != NULL);
        CHECK(strstr(line, "setting SFTP_ALLOWED_PORTS=22,2222\n") != NULL);
        CHECK(strstr(line, "setting RELAY_SIGNING_KEY=(set, hidden)\n") != NULL);
        CHECK(strstr(line, key) == NULL);
    }
    cfg_free(&c);
    reset_env();
}

/* STATE_URL, STATE_PASSWORD_FILE, KEY_PREFIX (the shared store). */
static void test_state(void)
{
    static const char key[] = "0123456789abcdef0123456789abcdef";
    struct config c;
    char out[256], path[] = "/tmp/wc-cfg-pw-XXXXXX";
    FILE *f;
    int fd;

    CHECK(defaults.state.kind == STATE_EMBEDDED);
    CHECK_STR(defaults.key_prefix, "wattcloud:");
    CHECK(defaults.state_lease_secs == 30);

    reset_env();
    setenv("RELAY_SIGNING_KEY", key, 1);
    setenv("STATE_URL", "redis://relay:s%40cret@[::1]:6380/2", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == 0);
    CHECK(c.state.kind == STATE_REDIS_TCP && c.state.port == 6380 && c.state.db == 2);
    CHECK_STR(c.state.host, "::1");
    CHECK_STR(c.state.user, "relay");
    CHECK_STR(c.state.password, "s@cret");
    CHECK(cfg_effective(&c, "STATE_URL", out, sizeof(out)) == 0);
    CHECK_STR(out, "redis://relay:***@[::1]:6380/2");
    cfg_free(&c);

    setenv("STATE_URL", "redis://store.internal", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == 0);
    CHECK(c.state.port == 6379 && c.state.db == 0 && !c.state.password[0]);
    cfg_free(&c);
    setenv("STATE_URL", "unix:///run/redis/redis.sock", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == 0);
    CHECK(c.state.kind == STATE_REDIS_UNIX);
    CHECK_STR(c.state.path, "/run/redis/redis.sock");
    cfg_free(&c);

    /* The password from a file, never with one in the URL. */
    fd = mkstemp(path);
    f = fd >= 0 ? fdopen(fd, "w") : NULL;
    CHECK(f != NULL);
    if (f) {
        fputs("from-file\n", f);
        fclose(f);
    }
    setenv("STATE_URL", "redis://127.0.0.1:6379/0", 1);
    setenv("STATE_PASSWORD_FILE", path, 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == 0);
    CHECK_STR(c.state.password, "from-file");
    cfg_free(&c);
    setenv("STATE_URL", "redis://:pw@127.0.0.1:6379/0", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == -1 && strstr(err, "STATE_PASSWORD_FILE"));
    cfg_free(&c);
    unlink(path);
    setenv("STATE_URL", "redis://127.0.0.1:6379/0", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == -1 && strstr(err, "STATE_PASSWORD_FILE"));
    cfg_free(&c);
    unsetenv("STATE_PASSWORD_FILE");

    /* A store needs a shared signing key and plain HTTP behind a proxy. */
    unsetenv("RELAY_SIGNING_KEY");
    CHECK(cfg_load(&c, err, sizeof(err)) == -1 && strstr(err, "STATE_URL"));
    cfg_free(&c);
    setenv("RELAY_SIGNING_KEY", key, 1);
    setenv("TLS_CERT", "/etc/ssl/a.crt", 1);
    setenv("TLS_KEY", "/etc/ssl/a.key", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == -1 && strstr(err, "STATE_URL"));
    cfg_free(&c);

    refused_as("STATE_URL", "http://127.0.0.1:6379", "STATE_URL");
    refused_as("STATE_URL", "redis://", "STATE_URL");
    refused_as("STATE_URL", "redis://host:0/0", "STATE_URL");
    refused_as("STATE_URL", "redis://host:65536", "STATE_URL");
    refused_as("STATE_URL", "redis://host:6379/x", "STATE_URL");
    refused_as("STATE_URL", "redis://ho st:6379", "STATE_URL");
    refused_as("STATE_URL", "redis://u:%zz@host", "STATE_URL");
    refused_as("STATE_URL", "unix://relative.sock", "STATE_URL");
    refused_as("KEY_PREFIX", "has space", "KEY_PREFIX");
    refused_as("KEY_PREFIX", "0123456789012345678901234567890123456789012345678901234567890123456789",
               "KEY_PREFIX");
    refused_as("STATE_PASSWORD_FILE", "/nonexistent", "STATE_PASSWORD_FILE");
    /* A lease renewed every third of it: at 3 s, once a second. */
    refused("STATE_LEASE_SECS", "2");
    refused("STATE_LEASE_SECS", "3601");
    if (accepted(&c, "STATE_LEASE_SECS", "3") == 0)
        CHECK(c.state_lease_secs == 3);
    cfg_free(&c);
    reset_env();
}

int main(void)
{
    reset_env();
    CHECK(cfg_load(&defaults, err, sizeof(err)) == 0);
    test_numbers();
    test_bind();
    test_lists();
    test_cidrs();
    test_signing_key();
    test_empty_values();
    test_env_file();
    test_effective_values();
    test_state();
    cfg_free(&defaults);
    CHECK_DONE();
}
