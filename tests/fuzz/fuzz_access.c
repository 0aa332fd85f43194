/* libFuzzer target: everything of the HTTP gate that reads what a client
 * sends (PROTOCOL §1.1, §1.2): the upgrade checks with fuzzed Origin,
 * Cookie header, host and port; the client address from X-Forwarded-For;
 * the JWT verifier; the challenge and redeem endpoints; purpose strings.
 *
 * Input: fields separated by '\n':
 *   origin, cookie header, host, port, peer, X-Forwarded-For, auth body,
 *   challenge purpose, raw token.
 * A cookie field "@valid" is replaced by a correctly signed cookie for the
 * fuzzed host and port, and "@nonce" in the auth body by the nonce_id of a
 * challenge just issued, so the checks behind the signature and behind the
 * challenge lookup get fuzzed too; when the fuzzed purpose is refused, a
 * challenge for a valid one is issued instead, so there is always a nonce.
 * The proof of work needs only 1 bit here, so accepted answers (and the
 * cookie they earn) are as common as refused ones. The stores persist
 * across inputs, as they do in the daemon, and the clock advances two hours
 * per input so that blocks and stored ids expire instead of piling up. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "access.h"
#include "auth_cookie.h"
#include "client_ip.h"
#include "config.h"
#include "fuzz_common.h"
#include "netguard.h"

#define T0 1700000000
#define NFIELDS 9

static struct config cfg;
static struct access *acc;
static char domain[] = "example.com";
static char *allowlist[] = {"sftp.example.com", "*.hosts.example.com"};
static struct cidr allow_private[1];
static struct cidr proxies[2];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    memset(&cfg, 0, sizeof(cfg));
    memcpy(cfg.signing_key, "0123456789abcdef0123456789abcdef", 32);
    cfg.signing_key_len = 32;
    cfg.cookie_ttl_secs = 600;
    cfg.pow_difficulty_bits = 1;
    /* High enough that the rate limit does not hide the rest. */
    cfg.auth_challenge_per_min = 1000000;
    cfg.auth_max_body_bytes = 16384;
    cfg.allowed_ports[0] = 22;
    cfg.allowed_ports[1] = 2222;
    cfg.n_allowed_ports = 2;
    cfg.max_concurrent_per_ip = 3;
    cfg.max_sessions = 512;
    cfg.byo_domain = domain;
    cfg.host_allowlist = allowlist;
    cfg.n_host_allowlist = 2;
    if (netguard_parse_cidr("10.0.0.0/8", &allow_private[0]) != 0 ||
        netguard_parse_cidr("127.0.0.1", &proxies[0]) != 0 ||
        netguard_parse_cidr("2001:db8::/32", &proxies[1]) != 0)
        __builtin_trap();
    cfg.allow_private = allow_private;
    cfg.n_allow_private = 1;
    cfg.trusted_proxies = proxies;
    cfg.n_trusted_proxies = 2;
    acc = access_new(&cfg);
    if (!acc)
        __builtin_trap();
    return 0;
}

/* Both clocks of access.c at wall-clock second `t`. */
static struct access_time at(time_t t)
{
    struct access_time a = { t, (int64_t)t * 1000 };
    return a;
}

/* "relay_auth_sftp=<jwt>" for host:port, or NULL when they are invalid. */
static char *signed_cookie(const char *host, const char *port, time_t now)
{
    static char hdr[AUTH_JWT_MAX + 32];
    char purpose[AUTH_PURPOSE_BUF], jwt[AUTH_JWT_MAX], jti[AUTH_UUID_LEN + 1];
    int p = port ? atoi(port) : 0;

    if (!host || auth_purpose_for(host, p, purpose) != 0 || auth_uuid_new(jti) != 0 ||
        auth_jwt_sign(cfg.signing_key, cfg.signing_key_len, jti, purpose, now, 600, jwt,
                      sizeof(jwt)) != 0)
        return NULL;
    snprintf(hdr, sizeof(hdr), "relay_auth_sftp=%s", jwt);
    return hdr;
}

/* The body with "@nonce" replaced by `nonce_id` (a fresh heap copy). */
static char *with_nonce(const char *body, const char *nonce_id, size_t *len)
{
    const char *at = body ? strstr(body, "@nonce") : NULL;
    char *out;

    if (!at || !nonce_id) {
        *len = body ? strlen(body) : 0;
        out = malloc(*len + 1);
        if (!out)
            abort();
        memcpy(out, body ? body : "", *len + 1);
        return out;
    }
    *len = strlen(body) - 6 + strlen(nonce_id);
    out = malloc(*len + 1);
    if (!out)
        abort();
    snprintf(out, *len + 1, "%.*s%s%s", (int)(at - body), body, nonce_id, at + 6);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *f[NFIELDS], ip[CLIENT_IP_MAX], key[CLIENT_IP_MAX];
    char body[ACCESS_CHALLENGE_BODY_MAX], set_cookie[ACCESS_SET_COOKIE_MAX];
    char nonce_id[AUTH_UUID_LEN + 1] = "";
    static time_t now;
    struct upgrade_target t;
    struct jwt_claims claims;
    const char *cookie;
    char *redeem;
    size_t rlen;
    int st;

    now = now ? now + 7200 : T0;
    fuzz_split(data, size, '\n', f, NFIELDS);

    /* Who the client is. A peer that does not parse falls back to a fixed
     * one, so the rest still runs. */
    if (!f[4] || client_ip_resolve(&cfg, f[4], f[5], ip, sizeof(ip)) != 0)
        if (client_ip_resolve(&cfg, "127.0.0.1", f[5], ip, sizeof(ip)) != 0)
            snprintf(ip, sizeof(ip), "192.0.2.1");
    client_ip_key(ip, key, sizeof(key));
    if (f[4])
        client_ip_key(f[4], key, sizeof(key));  /* also fed raw text */

    /* The upgrade gate. */
    cookie = f[1];
    if (cookie && strcmp(cookie, "@valid") == 0)
        cookie = signed_cookie(f[2], f[3], now);
    {
        struct upgrade_req r = {f[0], cookie, f[2], f[3], ip};
        st = access_check_upgrade(acc, &r, at(now + 1), &t);
        if (st == 0) {
            if (t.port < 1 || t.port > 65535 || !memchr(t.host, 0, sizeof(t.host)))
                __builtin_trap();
            /* An allowed upgrade takes and frees its slot like a session. */
            if (access_session_open(acc, ip) == 0)
                access_session_close(acc, ip);
        } else if (st < 400 || st > 599) {
            __builtin_trap();
        }
    }

    /* The JWT verifier on raw text. */
    if (f[8])
        (void)auth_jwt_verify(cfg.signing_key, cfg.signing_key_len, f[8], now, &claims);
    if (f[1])
        (void)auth_jwt_verify(cfg.signing_key, cfg.signing_key_len, f[1], now, &claims);

    /* Challenge then redeem. */
    (void)auth_purpose_valid(f[7] ? f[7] : "");
    st = access_http_challenge(acc, f[7], ip, at(now), body, sizeof(body));
    if (st == 400) {
        char purpose[AUTH_PURPOSE_BUF];
        if (auth_purpose_for("example.com", 22, purpose) != 0)
            __builtin_trap();
        st = access_http_challenge(acc, purpose, ip, at(now), body, sizeof(body));
    }
    if (st == 200) {
        const char *p = strstr(body, "\"nonce_id\":\"");
        if (!p)
            __builtin_trap();
        snprintf(nonce_id, sizeof(nonce_id), "%.36s", p + 12);
    } else if (st != 400 && st != 429) {
        __builtin_trap();
    }
    /* Without "@nonce" the fuzzed body cannot name the challenge: answer it
     * with a well-formed body instead (the answer from the input's size),
     * so the proof-of-work check and the cookie it earns run every time. */
    if (nonce_id[0] && (!f[6] || !strstr(f[6], "@nonce"))) {
        char ok_body[128];
        snprintf(ok_body, sizeof(ok_body), "{\"nonce_id\":\"%s\",\"answer\":%zu}", nonce_id,
                 size);
        st = access_http_redeem(acc, ok_body, strlen(ok_body), ip, at(now + 1), set_cookie,
                                sizeof(set_cookie));
        if (st != 204 && st != 403 && st != 429 && st != 503)
            __builtin_trap();
        nonce_id[0] = '\0';
    }
    redeem = with_nonce(f[6], nonce_id[0] ? nonce_id : NULL, &rlen);
    st = access_http_redeem(acc, redeem, rlen, ip, at(now + 1), set_cookie, sizeof(set_cookie));
    if (st == 204 && !strstr(set_cookie, ACCESS_COOKIE_NAME "="))
        __builtin_trap();
    if (st != 204 && st != 400 && st != 403 && st != 413 && st != 503)
        __builtin_trap();
    free(redeem);
    fuzz_fields_free(f, NFIELDS);
    return 0;
}
