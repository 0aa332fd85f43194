/* The protocol's numbers, where the code names them: the wire limits in
 * relay/config.h, and every default of the settings table with an empty
 * environment, against PROTOCOL.md §1, §3, §4 and §6. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "proto.h"

#define KIB 1024u
#define MIB (1024u * 1024u)

/* Every variable of the settings table in relay/config.c. */
static const char *const known_vars[] = {
    "BIND_ADDR", "TLS_CERT", "TLS_KEY", "ALLOW_PLAINTEXT", "BYO_DOMAIN", "SPA_DIR",
    "RELAY_SIGNING_KEY", "RELAY_COOKIE_TTL_SECS", "POW_DIFFICULTY_BITS",
    "AUTH_CHALLENGE_PER_MIN", "AUTH_MAX_BODY_BYTES", "SFTP_ALLOWED_PORTS",
    "SFTP_HOST_ALLOWLIST", "SFTP_ALLOW_PRIVATE_CIDRS", "SFTP_MAX_CONCURRENT_PER_IP",
    "TRUSTED_PROXY_IPS", "LOG_LEVEL", "MAX_SESSIONS", "SFTP_UPLOAD_BUFFER_BYTES",
    "SFTP_IDLE_TIMEOUT_SECS", "HOST_KEY_TIMEOUT_SECS", "WS_PING_INTERVAL_SECS",
    "SSH_CONNECT_TIMEOUT_SECS", "SSH_BANNER_TIMEOUT_SECS", "SSH_KEEPALIVE_SECS",
    "SSH_KEEPALIVE_COUNT", "SFTP_OP_TIMEOUT_SECS", "SHUTDOWN_GRACE_SECS", "SIGN_TIMEOUT_SECS",
};

/* The table may grow: also unset every name cfg_print_help() lists (lines
 * "  NAME   meaning"). Returns how many names it found. */
static int unset_help_names(void)
{
    FILE *tmp = tmpfile();
    char line[512];
    int saved, found = 0;

    if (!tmp)
        return -1;
    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    dup2(fileno(tmp), STDOUT_FILENO);
    cfg_print_help();
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    rewind(tmp);
    while (fgets(line, sizeof(line), tmp)) {
        char name[128];
        size_t n = 0;
        const char *p = line;

        if (strncmp(p, "  ", 2) != 0 || !isupper((unsigned char)p[2]))
            continue;
        for (p += 2; (isupper((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_') &&
                     n < sizeof(name) - 1;
             p++)
            name[n++] = *p;
        name[n] = '\0';
        if (n > 2 && (*p == ' ' || *p == '\n')) {
            unsetenv(name);
            found++;
        }
    }
    fclose(tmp);
    return found;
}

static void test_wire_limits(void)
{
    /* §3: "A binary frame over 16 MiB: error payload too large". */
    CHECK(PROTO_MAX_FRAME_BYTES == 16 * MIB);
    CHECK(PROTO_MAX_FRAME_BYTES == 16777216u);
    /* §3 read_chunk: "n <= 256 KiB". */
    CHECK(PROTO_READ_CHUNK_BYTES == 256 * KIB);
    CHECK(PROTO_READ_CHUNK_BYTES == 262144u);
    /* §3 read_open: "at most 8 open read handles per session". */
    CHECK(PROTO_MAX_READ_HANDLES == 8);
}

static void test_defaults(void)
{
    struct config c, c2;
    char err[512] = "";
    int found;

    for (size_t i = 0; i < sizeof(known_vars) / sizeof(known_vars[0]); i++)
        unsetenv(known_vars[i]);
    found = unset_help_names();
    /* The help text names at least the variables we know. */
    CHECK(found >= (int)(sizeof(known_vars) / sizeof(known_vars[0])));

    CHECK(cfg_load(&c, err, sizeof(err)) == 0);
    if (err[0])
        fprintf(stderr, "  cfg_load: %s\n", err);

    /* §6 BIND_ADDR 127.0.0.1:8443, no TLS, no plaintext override. */
    CHECK_STR(c.bind_host, "127.0.0.1");
    CHECK(c.bind_port == 8443);
    CHECK(c.tls_cert == NULL);
    CHECK(c.tls_key == NULL);
    CHECK(c.allow_plaintext == 0);
    CHECK(c.spa_dir == NULL);
    /* §6 BYO_DOMAIN localhost. */
    CHECK_STR(c.byo_domain, "localhost");
    /* §1.1 cookie: TTL 600 s, 18 bits, 10 challenges per minute, 16 KiB body. */
    CHECK(c.cookie_ttl_secs == 600);
    CHECK(c.pow_difficulty_bits == 18);
    CHECK(c.auth_challenge_per_min == 10);
    CHECK(c.auth_max_body_bytes == 16384);
    CHECK(c.auth_max_body_bytes == 16 * KIB);
    /* The cookie store: 65,536 cookies by default (AUTH_JTI_CAPACITY). */
    CHECK(c.cookie_store_size == 65536);
    /* §1.2 targets: ports 22, 2022, 2222; every host; no private ranges. */
    CHECK(c.n_allowed_ports == 3);
    CHECK(c.allowed_ports[0] == 22);
    CHECK(c.allowed_ports[1] == 2022);
    CHECK(c.allowed_ports[2] == 2222);
    CHECK(c.n_host_allowlist == 0);
    CHECK(c.n_allow_private == 0);
    CHECK(c.n_trusted_proxies == 0);
    /* §4 three live sessions per IP. */
    CHECK(c.max_concurrent_per_ip == 3);
    /* §3 upload memory 200 MiB per session. */
    CHECK(c.upload_buffer_bytes == 200 * (size_t)MIB);
    CHECK(c.upload_buffer_bytes == 209715200);
    /* §3 timeouts: 30 min idle; §2 30 s host key answer, ping every 10 s,
     * 10 s connect, 3 s banner; §3 keepalive 15 s x 4, 60 s per operation. */
    CHECK(c.idle_timeout_secs == 1800);
    CHECK(c.host_key_timeout_secs == 30);
    CHECK(c.ws_ping_interval_secs == 10);
    CHECK(c.connect_timeout_secs == 10);
    CHECK(c.banner_timeout_secs == 3);
    CHECK(c.keepalive_secs == 15);
    CHECK(c.keepalive_count == 4);
    CHECK(c.op_timeout_secs == 60);
    /* `sign` extension: 30 s for the browser's signature (README). */
    CHECK(c.sign_timeout_secs == 30);
    /* §6 LOG_LEVEL info. */
    CHECK(c.log_level == LOG_INFO);
    /* §1.1 no RELAY_SIGNING_KEY: a random key for this process. */
    CHECK(c.signing_key_random == 1);
    CHECK(c.signing_key_len == 32);
    {
        size_t nz = 0;
        for (size_t i = 0; i < 32; i++)
            nz += c.signing_key[i] != 0;
        CHECK(nz > 0);
    }

    /* Random means random: a second load draws another key. */
    CHECK(cfg_load(&c2, err, sizeof(err)) == 0);
    CHECK(c2.signing_key_random == 1 && c2.signing_key_len == 32);
    CHECK(memcmp(c.signing_key, c2.signing_key, 32) != 0);
    cfg_free(&c2);

    /* cfg_free wipes the key and leaves nothing behind. */
    cfg_free(&c);
    CHECK(c.signing_key_len == 0);
    CHECK(c.byo_domain == NULL);
    {
        size_t nz = 0;
        for (size_t i = 0; i < sizeof(c.signing_key); i++)
            nz += c.signing_key[i] != 0;
        CHECK(nz == 0);
    }
}

/* RELAY_COOKIE_STORE_SIZE stays within what the store accepts. */
static void test_cookie_store_size(void)
{
    struct config c;
    char err[512] = "";

    /* cfg_free() also after a refusal: cfg_load() may have filled some. */
    setenv("RELAY_COOKIE_STORE_SIZE", "0", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) != 0);
    CHECK(strstr(err, "RELAY_COOKIE_STORE_SIZE") != NULL);
    cfg_free(&c);
    setenv("RELAY_COOKIE_STORE_SIZE", "1048577", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) != 0);
    cfg_free(&c);
    setenv("RELAY_COOKIE_STORE_SIZE", "1048576", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == 0);
    CHECK(c.cookie_store_size == 1048576);
    cfg_free(&c);
    setenv("RELAY_COOKIE_STORE_SIZE", "3", 1);
    CHECK(cfg_load(&c, err, sizeof(err)) == 0);
    CHECK(c.cookie_store_size == 3);
    cfg_free(&c);
    unsetenv("RELAY_COOKIE_STORE_SIZE");
}

int main(void)
{
    test_wire_limits();
    test_defaults();
    test_cookie_store_size();
    CHECK_DONE();
}
