/* access: the challenge and redeem endpoints (statuses, rate, single use,
 * IP binding, body limits, malformed bodies) and the upgrade gate, each of
 * its ten checks and their order, the spray rule, cookie single use. */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "access.h"
#include "auth_cookie.h"
#include "check.h"
#include "config.h"
#include "netguard.h"

#define T0 1700000000

static struct config cfg;
static char domain[64];
static char *allowlist[4];
static struct cidr allow_private[2];

/* Both clocks of access.c at wall-clock second `t`, the monotonic one
 * running in step (tests of a clock step pass their own pair). */
static struct access_time at(time_t t)
{
    struct access_time a = { t, (int64_t)t * 1000 };
    return a;
}

static void base_config(const char *byo)
{
    memset(&cfg, 0, sizeof(cfg));
    memcpy(cfg.signing_key, "0123456789abcdef0123456789abcdef", 32);
    cfg.signing_key_len = 32;
    cfg.cookie_ttl_secs = 600;
    cfg.pow_difficulty_bits = 12;
    cfg.auth_challenge_per_min = 10;
    cfg.auth_max_body_bytes = 16384;
    cfg.allowed_ports[0] = 22;
    cfg.allowed_ports[1] = 2022;
    cfg.allowed_ports[2] = 2222;
    cfg.n_allowed_ports = 3;
    cfg.max_concurrent_per_ip = 3;
    snprintf(domain, sizeof(domain), "%s", byo);
    cfg.byo_domain = domain;
}

/* A cookie header for host:port, signed as the relay would. */
static const char *cookie_ttl(const char *host, int port, time_t now, int ttl)
{
    static char hdr[AUTH_JWT_MAX + 64];
    char purpose[AUTH_PURPOSE_BUF], jwt[AUTH_JWT_MAX], jti[AUTH_UUID_LEN + 1];

    if (auth_purpose_for(host, port, purpose) != 0 || auth_uuid_new(jti) != 0 ||
        auth_jwt_sign(cfg.signing_key, cfg.signing_key_len, jti, purpose, now, ttl,
                      jwt, sizeof(jwt)) != 0)
        return "broken";
    snprintf(hdr, sizeof(hdr), "relay_auth_sftp=%s", jwt);
    return hdr;
}

static const char *cookie(const char *host, int port)
{
    return cookie_ttl(host, port, T0, 600);
}

static int gate(struct access *a, const char *origin, const char *cookie_hdr,
                const char *host, const char *port, const char *ip, time_t now,
                struct upgrade_target *t)
{
    struct upgrade_req r = { origin, cookie_hdr, host, port, ip };
    struct upgrade_target scratch;

    return access_check_upgrade(a, &r, at(now), t ? t : &scratch);
}

/* The usual request: no Origin (localhost mode), fresh cookie. */
static int simple(struct access *a, const char *host, int port, const char *ip)
{
    char p[16];

    snprintf(p, sizeof(p), "%d", port);
    return gate(a, NULL, cookie(host, port), host, p, ip, T0, NULL);
}

/* ---- challenge / redeem ---------------------------------------------------- */

static int parse_challenge(const char *body, char *nonce_id, uint8_t nonce[16],
                           int *difficulty)
{
    json_t *j = json_loads(body, JSON_REJECT_DUPLICATES, NULL);
    json_t *id = json_object_get(j, "nonce_id"), *n = json_object_get(j, "nonce"),
           *d = json_object_get(j, "difficulty");
    int ok = j && json_object_size(j) == 3 && json_is_string(id) &&
             json_string_length(id) == 36 && json_is_string(n) &&
             json_string_length(n) == 32 && json_is_integer(d);

    if (ok) {
        strcpy(nonce_id, json_string_value(id));
        const char *hex = json_string_value(n);
        for (int i = 0; i < 16; i++) {
            unsigned v;
            if (sscanf(hex + 2 * i, "%2x", &v) != 1 ||
                !strchr("0123456789abcdef", hex[2 * i]) ||
                !strchr("0123456789abcdef", hex[2 * i + 1]))
                ok = 0;
            nonce[i] = (uint8_t)v;
        }
        *difficulty = (int)json_integer_value(d);
    }
    json_decref(j);
    return ok;
}

static uint64_t solve(const uint8_t nonce[16], const char *purpose, int bits,
                      int want_ok)
{
    for (uint64_t a = 0;; a++)
        if (auth_pow_ok(nonce, purpose, a, bits) == want_ok)
            return a;
}

/* Ask a challenge for host:port from ip; fill nonce_id and the answer (a
 * good one or a bad one). Returns the HTTP status of the challenge. */
static int challenge(struct access *a, const char *host, int port, const char *ip,
                     time_t now, char nonce_id[40], uint64_t *answer, int good)
{
    char purpose[AUTH_PURPOSE_BUF], body[ACCESS_CHALLENGE_BODY_MAX];
    uint8_t nonce[16];
    int d = 0, st;

    auth_purpose_for(host, port, purpose);
    st = access_http_challenge(a, purpose, ip, at(now), body, sizeof(body));
    if (st != 200)
        return st;
    CHECK(parse_challenge(body, nonce_id, nonce, &d));
    CHECK(d == cfg.pow_difficulty_bits);
    *answer = solve(nonce, purpose, d, good);
    return st;
}

static int redeem(struct access *a, const char *nonce_id, uint64_t answer,
                  const char *ip, time_t now, char *set_cookie, size_t n)
{
    char body[200];

    snprintf(body, sizeof(body), "{\"nonce_id\":\"%s\",\"answer\":%llu}",
             nonce_id, (unsigned long long)answer);
    return access_http_redeem(a, body, strlen(body), ip, at(now), set_cookie, n);
}

/* Copy `tmpl` into `out` with every '@' replaced by `id`. */
static void subst(char *out, size_t n, const char *tmpl, const char *id)
{
    size_t o = 0;

    for (; *tmpl && o + 40 < n; tmpl++) {
        if (*tmpl == '@') {
            memcpy(out + o, id, strlen(id));
            o += strlen(id);
        } else {
            out[o++] = *tmpl;
        }
    }
    out[o] = '\0';
}

static void test_challenge_endpoint(void)
{
    struct access *a;
    char body[ACCESS_CHALLENGE_BODY_MAX], id[40];
    uint8_t nonce[16];
    int d;
    const char *p = "sftp:993574ec685453dca70ab7dd8c8cebce";

    base_config("localhost");
    a = access_new(&cfg);
    CHECK(a != NULL);

    CHECK(access_http_challenge(a, p, "203.0.113.5", at(T0), body, sizeof(body)) == 200);
    CHECK(parse_challenge(body, id, nonce, &d));
    CHECK(d == 12);
    CHECK(id[14] == '4');

    /* Bad purposes: 400, and they count. */
    static const char *const bad[] = {
        NULL, "", "sftp:", "sftp:993574EC685453dca70ab7dd8c8cebce",
        "sftp:993574ec685453dca70ab7dd8c8cebc", "ftp:993574ec685453dca70ab7dd8c8cebce",
        "sftp:993574ec685453dca70ab7dd8c8cebce ",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(access_http_challenge(a, bad[i], "203.0.113.5", at(T0), body,
                                    sizeof(body)) == 400);
    /* 1 + 7 so far; two more are fine, the eleventh is 429. */
    CHECK(access_http_challenge(a, p, "203.0.113.5", at(T0 + 1), body, sizeof(body)) == 200);
    CHECK(access_http_challenge(a, p, "203.0.113.5", at(T0 + 2), body, sizeof(body)) == 200);
    CHECK(access_http_challenge(a, p, "203.0.113.5", at(T0 + 3), body, sizeof(body)) == 429);
    /* A bad purpose is still a 400 (checked first), and counts. */
    CHECK(access_http_challenge(a, "x", "203.0.113.5", at(T0 + 3), body, sizeof(body)) == 400);
    /* Others are not affected. */
    CHECK(access_http_challenge(a, p, "203.0.113.6", at(T0 + 3), body, sizeof(body)) == 200);
    /* A minute after the burst: welcome again (the refusals at T0+3 remain). */
    CHECK(access_http_challenge(a, p, "203.0.113.5", at(T0 + 59), body, sizeof(body)) == 429);
    CHECK(access_http_challenge(a, p, "203.0.113.5", at(T0 + 63), body, sizeof(body)) == 200);

    /* IPv6 clients share their /64. */
    for (int i = 0; i < 10; i++) {
        char ip[64];
        snprintf(ip, sizeof(ip), "2001:db8:1:2::%x", i + 1);
        CHECK(access_http_challenge(a, p, ip, at(T0), body, sizeof(body)) == 200);
    }
    CHECK(access_http_challenge(a, p, "2001:db8:1:2:ffff::1", at(T0), body, sizeof(body)) == 429);
    CHECK(access_http_challenge(a, p, "2001:db8:1:3::1", at(T0), body, sizeof(body)) == 200);

    /* Internal trouble. */
    CHECK(access_http_challenge(a, p, "203.0.113.9", at(T0), body, 20) == 500);
    CHECK(access_http_challenge(a, p, NULL, at(T0), body, sizeof(body)) == 500);
    access_free(a);
    access_free(NULL);
}

static void test_redeem(void)
{
    struct access *a;
    char id[40], sc[ACCESS_SET_COOKIE_MAX], body[256];
    uint64_t ans;
    const char *ip = "203.0.113.5";

    base_config("localhost");
    cfg.auth_challenge_per_min = 1000;
    a = access_new(&cfg);

    /* The whole way: challenge, work, cookie, upgrade. */
    CHECK(challenge(a, "Example.COM", 22, ip, T0, id, &ans, 1) == 200);
    CHECK(redeem(a, id, ans, ip, T0 + 5, sc, sizeof(sc)) == 204);
    const char *tail = "; HttpOnly; Secure; SameSite=Strict; Path=/relay; Max-Age=600";
    CHECK(strncmp(sc, "relay_auth_sftp=", 16) == 0);
    CHECK(strlen(sc) > strlen(tail) &&
          strcmp(sc + strlen(sc) - strlen(tail), tail) == 0);
    char jwt[AUTH_JWT_MAX], hdr[AUTH_JWT_MAX + 64];
    snprintf(jwt, sizeof(jwt), "%.*s", (int)(strchr(sc, ';') - sc - 16), sc + 16);
    struct jwt_claims c;
    CHECK(auth_jwt_verify(cfg.signing_key, 32, jwt, T0 + 5, &c) == 0);
    CHECK_STR(c.purpose, "sftp:993574ec685453dca70ab7dd8c8cebce");
    CHECK(c.iat == T0 + 5 && c.exp == T0 + 605);
    snprintf(hdr, sizeof(hdr), "relay_auth_sftp=%s", jwt);
    struct upgrade_target t;
    CHECK(gate(a, "http://localhost:5173", hdr, "example.com", "22", ip, T0 + 6, &t) == 0);
    CHECK_STR(t.host, "example.com");
    CHECK(t.port == 22 && t.pinned == 0);
    /* Single use. */
    CHECK(gate(a, "http://localhost:5173", hdr, "example.com", "22", ip, T0 + 7, &t) == 403);

    /* A challenge is answered once. */
    CHECK(redeem(a, id, ans, ip, T0 + 6, sc, sizeof(sc)) == 400);
    CHECK(sc[0] == '\0');

    /* Another IP answers: 403, and the challenge is used up. */
    CHECK(challenge(a, "example.com", 22, ip, T0, id, &ans, 1) == 200);
    CHECK(redeem(a, id, ans, "203.0.113.6", T0 + 1, sc, sizeof(sc)) == 403);
    CHECK(redeem(a, id, ans, ip, T0 + 1, sc, sizeof(sc)) == 400);
    /* The exact IP counts, not its /64. */
    CHECK(challenge(a, "example.com", 22, "2001:db8::1", T0, id, &ans, 1) == 200);
    CHECK(redeem(a, id, ans, "2001:db8::2", T0 + 1, sc, sizeof(sc)) == 403);

    /* Not enough work: 403, used up. */
    CHECK(challenge(a, "example.com", 22, ip, T0, id, &ans, 0) == 200);
    CHECK(redeem(a, id, ans, ip, T0 + 1, sc, sizeof(sc)) == 403);
    CHECK(redeem(a, id, ans, ip, T0 + 1, sc, sizeof(sc)) == 400);

    /* Expiry: answered at +59 is fine, at exactly +60 it is gone. */
    CHECK(challenge(a, "example.com", 22, ip, T0, id, &ans, 1) == 200);
    CHECK(redeem(a, id, ans, ip, T0 + 59, sc, sizeof(sc)) == 204);
    CHECK(challenge(a, "example.com", 22, ip, T0, id, &ans, 1) == 200);
    CHECK(redeem(a, id, ans, ip, T0 + 60, sc, sizeof(sc)) == 400);
    CHECK(redeem(a, id, ans, ip, T0 + 1, sc, sizeof(sc)) == 400);
    CHECK(challenge(a, "example.com", 22, ip, T0, id, &ans, 1) == 200);
    CHECK(redeem(a, id, ans, ip, T0 + 61, sc, sizeof(sc)) == 400);

    /* Unknown ids. */
    CHECK(redeem(a, "6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f", 1, ip, T0, sc, sizeof(sc)) == 400);
    CHECK(redeem(a, "", 1, ip, T0, sc, sizeof(sc)) == 400);

    /* Body size: the cap itself is fine (then malformed), one more is 413. */
    char *big = malloc(cfg.auth_max_body_bytes + 2);
    memset(big, ' ', cfg.auth_max_body_bytes + 1);
    big[cfg.auth_max_body_bytes + 1] = '\0';
    CHECK(access_http_redeem(a, big, cfg.auth_max_body_bytes, ip, at(T0), sc, sizeof(sc)) == 400);
    CHECK(access_http_redeem(a, big, cfg.auth_max_body_bytes + 1, ip, at(T0), sc, sizeof(sc)) == 413);
    /* A good answer with padding inside the cap is accepted. */
    CHECK(challenge(a, "example.com", 22, ip, T0, id, &ans, 1) == 200);
    int n = snprintf(big, cfg.auth_max_body_bytes + 1,
                     "{\"nonce_id\":\"%s\",\"answer\":%llu}", id,
                     (unsigned long long)ans);
    memset(big + n, ' ', cfg.auth_max_body_bytes - (size_t)n);
    CHECK(access_http_redeem(a, big, cfg.auth_max_body_bytes, ip, at(T0), sc, sizeof(sc)) == 204);
    free(big);

    /* Malformed bodies: 400. A live challenge is left for the last ones. */
    CHECK(challenge(a, "example.com", 22, ip, T0, id, &ans, 1) == 200);
    static const char *const tmpl[] = {
        "", "{", "[]", "null", "\"x\"", "{}",
        "{\"nonce_id\":\"@\"}",
        "{\"answer\":5}",
        "{\"nonce_id\":7,\"answer\":5}",
        "{\"nonce_id\":null,\"answer\":5}",
        "{\"nonce_id\":\"@\",\"answer\":\"5\"}",
        "{\"nonce_id\":\"@\",\"answer\":5.0}",
        "{\"nonce_id\":\"@\",\"answer\":5e0}",
        "{\"nonce_id\":\"@\",\"answer\":-1}",
        "{\"nonce_id\":\"@\",\"answer\":true}",
        "{\"nonce_id\":\"@\",\"answer\":null}",
        "{\"nonce_id\":\"@\",\"answer\":[5]}",
        "{\"nonce_id\":\"@\",\"answer\":18446744073709551616}",
        "{\"nonce_id\":\"@\",\"answer\":99999999999999999999999}",
        "{\"nonce_id\":\"@\",\"answer\":0x10}",
        "{\"nonce_id\":\"@\",\"answer\":5,\"answer\":6}",
        "{\"nonce_id\":\"@\",\"nonce_id\":\"@\",\"answer\":5}",
        "{\"nonce_id\":\"@\",\"answer\":5} x",
        "{\"nonce_id\":\"@\",\"answer\":5}{}",
        "[{\"nonce_id\":\"@\",\"answer\":5}]",
    };
    for (size_t i = 0; i < sizeof(tmpl) / sizeof(tmpl[0]); i++) {
        subst(body, sizeof(body), tmpl[i], id);
        int st = access_http_redeem(a, body, strlen(body), ip, at(T0 + 1), sc, sizeof(sc));
        if (st != 400)
            fprintf(stderr, "body \"%s\": %d\n", body, st);
        CHECK(st == 400);
    }
    /* An embedded NUL, and no body at all. */
    snprintf(body, sizeof(body), "{\"nonce_id\":\"%s\",\"answer\":5}", id);
    body[5] = '\0';
    CHECK(access_http_redeem(a, body, strlen(body + 6) + 6, ip, at(T0 + 1), sc, sizeof(sc)) == 400);
    CHECK(access_http_redeem(a, NULL, 0, ip, at(T0 + 1), sc, sizeof(sc)) == 400);
    /* None of those used the challenge up. Other members are ignored. */
    snprintf(body, sizeof(body), "{\"answer\":%llu,\"nonce_id\":\"%s\",\"x\":[1]}",
             (unsigned long long)ans, id);
    CHECK(access_http_redeem(a, body, strlen(body), ip, at(T0 + 1), sc, sizeof(sc)) == 204);

    /* Answers up to 2^53 (JavaScript's integers) are taken as numbers. */
    CHECK(challenge(a, "example.com", 22, ip, T0, id, &ans, 1) == 200);
    int st = redeem(a, id, 9007199254740993ull, ip, T0 + 1, sc, sizeof(sc));
    CHECK(st == 403 || st == 204);

    /* Set-Cookie buffer too small: 500, nothing half-written. */
    CHECK(challenge(a, "example.com", 22, ip, T0, id, &ans, 1) == 200);
    CHECK(redeem(a, id, ans, ip, T0 + 1, sc, 50) == 500);
    CHECK(sc[0] == '\0');
    access_free(a);
}

/* ---- the upgrade gate ------------------------------------------------------ */

static void test_origin(void)
{
    struct access *a;

    base_config("localhost");
    a = access_new(&cfg);
    static const char *const ok[] = {
        "http://localhost", "https://localhost", "http://localhost:5173",
        "https://localhost:8443", "http://127.0.0.1", "http://127.0.0.1:8080",
        "https://127.0.0.1:1", "http://[::1]", "http://[::1]:3000",
        "https://[::1]:65535", "HTTP://LOCALHOST:5173", "https://LocalHost",
    };
    static const char *const bad[] = {
        "", "null", "http://attacker.localhost", "http://localhost.evil.com",
        "http://127.0.0.2", "https://localhost@evil.com", "https://user@localhost",
        "https://user:pw@localhost", "http://localhost/", "http://localhost/path",
        "http://localhost:", "http://localhost:0", "http://localhost:65536",
        "http://localhost:08080", "http://localhost:80a", "http://localhost:-1",
        "http://localhost:+80", "http://localhost: 80", "ftp://localhost",
        "ws://localhost", "localhost", "//localhost", "http://localhost.",
        "http://[::2]", "http://::1", "http://[::1", "http://127.0.0.1.nip.io",
        "https://evil.com", "http://localhost:5173/", " http://localhost",
        "http://localhost ", "http://localhost#", "http://localhost?x",
        "http://localhost\r\n", "http://127.1", "http://2130706433",
        "http://localhost:5173:5173", "https://localhost%2f@evil.com",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int st = gate(a, ok[i], cookie("example.com", 22), "example.com", "22",
                      "203.0.113.5", T0, NULL);
        if (st != 0)
            fprintf(stderr, "origin \"%s\": %d\n", ok[i], st);
        CHECK(st == 0);
    }
    /* A missing Origin is fine on localhost. */
    CHECK(gate(a, NULL, cookie("example.com", 22), "example.com", "22",
               "203.0.113.5", T0, NULL) == 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int st = gate(a, bad[i], cookie("example.com", 22), "example.com", "22",
                      "203.0.113.5", T0, NULL);
        if (st != 403)
            fprintf(stderr, "origin \"%s\": %d\n", bad[i], st);
        CHECK(st == 403);
    }
    access_free(a);

    /* An empty BYO_DOMAIN means the default, localhost. */
    base_config("");
    a = access_new(&cfg);
    CHECK(gate(a, NULL, cookie("example.com", 22), "example.com", "22",
               "203.0.113.5", T0, NULL) == 0);
    access_free(a);

    base_config("app.example.com");
    a = access_new(&cfg);
    static const char *const ok2[] = {
        "https://app.example.com", "https://APP.example.com", "HTTPS://App.Example.Com",
    };
    static const char *const bad2[] = {
        NULL, "", "http://app.example.com", "https://app.example.com:443",
        "https://app.example.com/", "https://evil.app.example.com",
        "https://app.example.com.evil.com", "https://app.example.co",
        "https://localhost", "http://localhost", "http://127.0.0.1",
        "https://user@app.example.com", "null", "app.example.com",
    };
    for (size_t i = 0; i < sizeof(ok2) / sizeof(ok2[0]); i++)
        CHECK(gate(a, ok2[i], cookie("example.com", 22), "example.com", "22",
                   "203.0.113.5", T0, NULL) == 0);
    for (size_t i = 0; i < sizeof(bad2) / sizeof(bad2[0]); i++) {
        int st = gate(a, bad2[i], cookie("example.com", 22), "example.com", "22",
                      "203.0.113.5", T0, NULL);
        if (st != 403)
            fprintf(stderr, "origin \"%s\": %d\n", bad2[i] ? bad2[i] : "(none)", st);
        CHECK(st == 403);
    }
    access_free(a);
}

static void test_cookie_check(void)
{
    struct access *a;
    char hdr[AUTH_JWT_MAX * 2];
    const char *ip = "203.0.113.5";

    base_config("localhost");
    a = access_new(&cfg);

    CHECK(gate(a, NULL, NULL, "example.com", "22", ip, T0, NULL) == 401);
    CHECK(gate(a, NULL, "", "example.com", "22", ip, T0, NULL) == 401);
    CHECK(gate(a, NULL, "a=b; c=d", "example.com", "22", ip, T0, NULL) == 401);
    CHECK(gate(a, NULL, "relay_auth_sftp=", "example.com", "22", ip, T0, NULL) == 401);
    CHECK(gate(a, NULL, "relay_auth_sftp", "example.com", "22", ip, T0, NULL) == 401);
    CHECK(gate(a, NULL, "relay_auth_sftp=garbage", "example.com", "22", ip, T0, NULL) == 401);
    CHECK(gate(a, NULL, "relay_auth_sftp=a.b.c", "example.com", "22", ip, T0, NULL) == 401);

    /* Expired, or signed with another key. */
    CHECK(gate(a, NULL, cookie("example.com", 22), "example.com", "22", ip,
               T0 + 600, NULL) == 401);
    CHECK(gate(a, NULL, cookie_ttl("example.com", 22, T0 - 600, 600),
               "example.com", "22", ip, T0, NULL) == 401);
    strcpy(hdr, cookie("example.com", 22));
    cfg.signing_key[0] ^= 1;
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 401);
    cfg.signing_key[0] ^= 1;
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 0);

    /* Parsing the Cookie header: exact name, blanks trimmed, first one counts. */
    const char *jwt = cookie("example.com", 22) + strlen("relay_auth_sftp=");
    snprintf(hdr, sizeof(hdr), "theme=dark; relay_auth_sftp=%s; lang=en", jwt);
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 0);
    jwt = cookie("example.com", 22) + strlen("relay_auth_sftp=");
    snprintf(hdr, sizeof(hdr), "  relay_auth_sftp = %s ;", jwt);
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 0);
    jwt = cookie("example.com", 22) + strlen("relay_auth_sftp=");
    snprintf(hdr, sizeof(hdr), "relay_auth_sftpx=%s", jwt);
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 401);
    snprintf(hdr, sizeof(hdr), "xrelay_auth_sftp=%s", jwt);
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 401);
    snprintf(hdr, sizeof(hdr), "RELAY_AUTH_SFTP=%s", jwt);
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 401);
    snprintf(hdr, sizeof(hdr), "relay_auth_sftp=\"%s\"", jwt);
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 401);
    snprintf(hdr, sizeof(hdr), "relay_auth_sftp=junk; relay_auth_sftp=%s", jwt);
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 401);
    snprintf(hdr, sizeof(hdr), "other=relay_auth_sftp=%s", jwt);
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 401);
    /* The unused cookie still works. */
    snprintf(hdr, sizeof(hdr), "relay_auth_sftp=%s", jwt);
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 0);
    /* A huge cookie value. */
    memset(hdr, 'A', sizeof(hdr) - 1);
    memcpy(hdr, "relay_auth_sftp=", 16);
    hdr[sizeof(hdr) - 1] = '\0';
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 401);
    access_free(a);
}

static void test_host_port(void)
{
    struct access *a;
    const char *ip = "203.0.113.5";
    struct upgrade_target t;

    base_config("localhost");
    cfg.allowed_ports[3] = 65535;
    cfg.allowed_ports[4] = 1;
    cfg.n_allowed_ports = 5;
    a = access_new(&cfg);

    static const char *const bad_ports[] = {
        NULL, "", "0", "65536", "022", "00022", "+22", "-22", " 22", "22 ", "22a",
        "0x16", "2.2", "99999", "123456", "1e1", "22\n", "\xd9\xa2\xd9\xa2",
    };
    for (size_t i = 0; i < sizeof(bad_ports) / sizeof(bad_ports[0]); i++) {
        int st = gate(a, NULL, cookie("example.com", 22), "example.com",
                      bad_ports[i], ip, T0, NULL);
        if (st != 400)
            fprintf(stderr, "port \"%s\": %d\n", bad_ports[i] ? bad_ports[i] : "(none)", st);
        CHECK(st == 400);
    }
    CHECK(gate(a, NULL, cookie("example.com", 65535), "example.com", "65535", ip, T0, &t) == 0);
    CHECK(t.port == 65535);
    CHECK(gate(a, NULL, cookie("example.com", 1), "example.com", "1", ip, T0, &t) == 0);
    CHECK(t.port == 1);

    char longname[300], longlabel[100];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    for (int i = 1; i < 254; i += 2)
        longname[i] = '.';
    longname[254] = '\0';  /* 254 characters */
    memset(longlabel, 'b', 64);
    strcpy(longlabel + 64, ".example.com");
    const char *bad_hosts[] = {
        NULL, "", "a b", "exa mple.com", "127.1", "2130706433", "1.2.3.04",
        "0x7f.1", "a..b", ".a", "..", ".", "a/b", "user@host", "host:22",
        "[1.2.3.4]", "[::1", "::1]", "b\xc3\xbc" "cher.de", "host\n", "a;b",
        "fe80::1%eth0", "example.com..", NULL, NULL,
    };
    bad_hosts[sizeof(bad_hosts) / sizeof(bad_hosts[0]) - 2] = longname;
    bad_hosts[sizeof(bad_hosts) / sizeof(bad_hosts[0]) - 1] = longlabel;
    for (size_t i = 0; i < sizeof(bad_hosts) / sizeof(bad_hosts[0]); i++) {
        const char *h = bad_hosts[i];
        int st = gate(a, NULL, cookie(h && *h ? h : "x", 22), h, "22", ip, T0, NULL);
        if (st != 400)
            fprintf(stderr, "host \"%s\": %d\n", h ? h : "(none)", st);
        CHECK(st == 400);
    }
    /* Valid oddities: underscore, trailing dot, one label, max lengths. */
    static const char *const good_hosts[] = {
        "my_host.lan", "example.com.", "nas", "a-b.c-d.example", "x1.example.123a",
    };
    for (size_t i = 0; i < sizeof(good_hosts) / sizeof(good_hosts[0]); i++) {
        int st = gate(a, NULL, cookie(good_hosts[i], 22), good_hosts[i], "22",
                      "198.51.100.1", T0, NULL);
        if (st != 0)
            fprintf(stderr, "host \"%s\": %d\n", good_hosts[i], st);
        CHECK(st == 0);
    }
    longname[253] = '\0';  /* 253 characters, labels of 1 */
    longname[252] = 'a';
    CHECK(gate(a, NULL, cookie(longname, 22), longname, "22", "198.51.100.2", T0, &t) == 0);
    CHECK(strcmp(t.host, longname) == 0);
    memset(longlabel, 'b', 63);
    strcpy(longlabel + 63, ".example.com");  /* a label of 63 */
    CHECK(gate(a, NULL, cookie(longlabel, 22), longlabel, "22", "198.51.100.2", T0, NULL) == 0);

    /* Check 4: port allowed. */
    CHECK(simple(a, "example.com", 2022, ip) == 0);
    CHECK(simple(a, "example.com", 2222, ip) == 0);
    CHECK(simple(a, "example.com", 23, ip) == 403);
    CHECK(simple(a, "example.com", 8022, ip) == 403);
    access_free(a);
}

static void test_allowlist(void)
{
    struct access *a;
    const char *ip = "203.0.113.5";

    base_config("localhost");
    allowlist[0] = "example.com";
    allowlist[1] = "*.corp.example";
    allowlist[2] = "10.0.0.5";
    cfg.host_allowlist = allowlist;
    cfg.n_host_allowlist = 3;
    CHECK(netguard_parse_cidr("10.0.0.0/8", &allow_private[0]) == 0);
    cfg.allow_private = allow_private;
    cfg.n_allow_private = 1;
    cfg.max_concurrent_per_ip = 100;
    a = access_new(&cfg);

    static const char *const ok[] = {
        "example.com", "EXAMPLE.COM", "a.corp.example", "A.Corp.Example",
        "a-1.corp.example", "10.0.0.5",
    };
    static const char *const bad[] = {
        "www.example.com", "example.co", "corp.example", "a.b.corp.example",
        "xcorp.example", "other.com", "a.corp.example.evil", "example.com.",
        "10.0.0.6",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char key[32];
        snprintf(key, sizeof(key), "198.51.100.%zu", i);  /* no spray */
        int st = simple(a, ok[i], 22, key);
        if (st != 0)
            fprintf(stderr, "allowlist \"%s\": %d\n", ok[i], st);
        CHECK(st == 0);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int st = simple(a, bad[i], 22, ip);
        if (st != 403)
            fprintf(stderr, "allowlist \"%s\": %d\n", bad[i], st);
        CHECK(st == 403);
    }
    access_free(a);
}

static void test_purpose_and_single_use(void)
{
    struct access *a;
    const char *ip = "203.0.113.5";
    char hdr[AUTH_JWT_MAX + 64];

    base_config("localhost");
    a = access_new(&cfg);

    /* Check 6: the cookie names another target. */
    strcpy(hdr, cookie("example.com", 22));
    CHECK(gate(a, NULL, hdr, "example.com", "2222", ip, T0, NULL) == 403);
    CHECK(gate(a, NULL, hdr, "example.org", "22", ip, T0, NULL) == 403);
    /* Case does not matter: lowercase(host) is hashed. */
    CHECK(gate(a, NULL, hdr, "EXAMPLE.com", "22", ip, T0, NULL) == 0);
    /* Check 7: once. */
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0, NULL) == 403);
    CHECK(gate(a, NULL, hdr, "example.com", "22", ip, T0 + 599, NULL) == 403);
    CHECK(gate(a, NULL, hdr, "example.com", "22", "198.51.100.1", T0, NULL) == 403);
    access_free(a);
}

static void test_limits_checks(void)
{
    struct access *a;
    const char *ip = "203.0.113.5";
    char hdr[AUTH_JWT_MAX + 64];

    base_config("localhost");
    a = access_new(&cfg);
    CHECK(access_ratelimit(a) != NULL);
    CHECK(access_ratelimit(NULL) == NULL);

    /* Check 9: three live sessions. */
    for (int i = 0; i < 3; i++) {
        CHECK(simple(a, "example.com", 22, ip) == 0);
        CHECK(access_session_open(a, ip) == 0);
    }
    CHECK(simple(a, "example.com", 22, ip) == 429);
    CHECK(access_session_open(a, ip) == -1);
    CHECK(simple(a, "example.com", 22, "203.0.113.6") == 0);
    access_session_close(a, ip);
    CHECK(simple(a, "example.com", 22, ip) == 0);
    CHECK(access_session_open(a, ip) == 0);
    for (int i = 0; i < 3; i++)
        access_session_close(a, ip);
    /* IPv6: per /64. */
    for (int i = 0; i < 3; i++) {
        char v6[64];
        snprintf(v6, sizeof(v6), "2001:db8:5:6::%d", i + 1);
        CHECK(access_session_open(a, v6) == 0);
    }
    CHECK(simple(a, "example.com", 22, "2001:db8:5:6:aaaa::1") == 429);
    CHECK(simple(a, "example.com", 22, "2001:db8:5:7::1") == 0);

    /* Check 8: auth failures (counted by the worker through access). */
    const char *v = "198.51.100.50";
    for (int i = 0; i < 4; i++)
        CHECK(access_auth_attempt(a, v, at(T0)) == 0);
    CHECK(simple(a, "example.com", 22, v) == 0);
    CHECK(access_auth_attempt(a, v, at(T0)) == 0);
    access_auth_refund(a, v, at(T0));  /* the fifth was right */
    CHECK(simple(a, "example.com", 22, v) == 0);
    CHECK(access_auth_attempt(a, v, at(T0)) == 0);  /* the fifth failure */
    CHECK(access_auth_attempt(a, v, at(T0)) == -1);
    CHECK(simple(a, "example.com", 22, v) == 429);
    /* The block lasts an hour; cookies are fresh each time. */
    CHECK(gate(a, NULL, cookie_ttl("example.com", 22, T0 + 3599, 600), "example.com",
               "22", v, T0 + 3599, NULL) == 429);
    CHECK(gate(a, NULL, cookie_ttl("example.com", 22, T0 + 3600, 600), "example.com",
               "22", v, T0 + 3600, NULL) == 0);

    /* A blocked client's cookie is used up all the same (check 7 first). */
    const char *w = "198.51.100.51";
    for (int i = 0; i < 5; i++)
        access_auth_attempt(a, w, at(T0));
    strcpy(hdr, cookie_ttl("example.com", 22, T0, 100000));
    CHECK(gate(a, NULL, hdr, "example.com", "22", w, T0, NULL) == 429);
    CHECK(gate(a, NULL, hdr, "example.com", "22", w, T0 + 3600, NULL) == 403);
    access_free(a);
}

static void test_spray(void)
{
    struct access *a;
    const char *ip = "203.0.113.5";
    char host[32];

    base_config("localhost");
    a = access_new(&cfg);

    for (int i = 0; i < 5; i++) {
        snprintf(host, sizeof(host), "h%d.example.com", i);
        CHECK(simple(a, host, 22, ip) == 0);
    }
    /* The same hosts again, other ports, other case: still five. */
    CHECK(simple(a, "h0.example.com", 22, ip) == 0);
    CHECK(simple(a, "H1.example.com", 2222, ip) == 0);
    /* The sixth distinct host: 429, and the client is blocked. */
    CHECK(simple(a, "h5.example.com", 22, ip) == 429);
    CHECK(simple(a, "h0.example.com", 22, ip) == 429);

    /* Requests that fail an earlier check do not count as targets. */
    const char *ip2 = "203.0.113.6";
    for (int i = 0; i < 10; i++) {
        snprintf(host, sizeof(host), "x%d.example.com", i);
        CHECK(gate(a, "https://evil.com", cookie(host, 22), host, "22", ip2, T0,
                   NULL) == 403);
        CHECK(gate(a, NULL, NULL, host, "22", ip2, T0, NULL) == 401);
        CHECK(simple(a, host, 23, ip2) == 403);
    }
    for (int i = 0; i < 5; i++) {
        snprintf(host, sizeof(host), "y%d.example.com", i);
        CHECK(simple(a, host, 22, ip2) == 0);
    }

    /* Blocked targets count: probing private addresses is spraying too
     * (the target is recorded before check 10). */
    const char *ip3 = "203.0.113.7";
    for (int i = 1; i <= 5; i++) {
        snprintf(host, sizeof(host), "10.0.0.%d", i);
        CHECK(simple(a, host, 22, ip3) == 403);
    }
    CHECK(simple(a, "10.0.0.6", 22, ip3) == 429);
    CHECK(simple(a, "example.com", 22, ip3) == 429);
    access_free(a);
}

static void test_ssrf(void)
{
    struct access *a;
    struct upgrade_target t;
    char ip[32];
    int n = 0;

    base_config("localhost");
    a = access_new(&cfg);

    static const char *const blocked[] = {
        "10.0.0.1", "127.0.0.1", "169.254.169.254", "0.0.0.0", "100.64.1.1",
        "192.168.1.1", "[::1]", "::1", "[::ffff:127.0.0.1]", "[fe80::1]",
        "[fd00::1]", "[2002:7f00:1::]", "255.255.255.255", "224.0.0.1",
    };
    for (size_t i = 0; i < sizeof(blocked) / sizeof(blocked[0]); i++) {
        snprintf(ip, sizeof(ip), "198.51.100.%d", n++);  /* no spray */
        int st = simple(a, blocked[i], 22, ip);
        if (st != 403)
            fprintf(stderr, "target \"%s\": %d\n", blocked[i], st);
        CHECK(st == 403);
    }

    CHECK(gate(a, NULL, cookie("8.8.8.8", 22), "8.8.8.8", "22", "198.51.100.100",
               T0, &t) == 0);
    CHECK(t.pinned == 1 && t.port == 22 && t.addr.ss_family == AF_INET);
    CHECK(t.addrlen == sizeof(struct sockaddr_in));
    CHECK(ntohs(((struct sockaddr_in *)&t.addr)->sin_port) == 22);
    CHECK_STR(t.host, "8.8.8.8");
    CHECK(gate(a, NULL, cookie("[2606:4700:4700::1111]", 2022),
               "[2606:4700:4700::1111]", "2022", "198.51.100.101", T0, &t) == 0);
    CHECK(t.pinned == 1 && t.addr.ss_family == AF_INET6);
    CHECK(ntohs(((struct sockaddr_in6 *)&t.addr)->sin6_port) == 2022);
    CHECK_STR(t.host, "[2606:4700:4700::1111]");
    /* A name is left to the worker (DNS must not block the service thread). */
    CHECK(gate(a, NULL, cookie("Internal.Corp", 22), "Internal.Corp", "22",
               "198.51.100.102", T0, &t) == 0);
    CHECK(t.pinned == 0);
    CHECK_STR(t.host, "internal.corp");
    access_free(a);

    /* SFTP_ALLOW_PRIVATE_CIDRS. */
    base_config("localhost");
    CHECK(netguard_parse_cidr("127.0.0.0/8", &allow_private[0]) == 0);
    CHECK(netguard_parse_cidr("100.64.0.0/10", &allow_private[1]) == 0);
    cfg.allow_private = allow_private;
    cfg.n_allow_private = 2;
    a = access_new(&cfg);
    CHECK(simple(a, "127.0.0.1", 22, "198.51.100.1") == 0);
    CHECK(simple(a, "100.101.102.103", 22, "198.51.100.2") == 0);
    CHECK(simple(a, "10.0.0.1", 22, "198.51.100.3") == 403);
    CHECK(simple(a, "[::1]", 22, "198.51.100.4") == 403);
    access_free(a);
}

/* Requests failing several checks get the status of the first. */
static void test_order(void)
{
    struct access *a;
    const char *ip = "203.0.113.5";
    char hdr[AUTH_JWT_MAX + 64];

    base_config("app.example.com");
    allowlist[0] = "example.com";
    cfg.host_allowlist = allowlist;
    cfg.n_host_allowlist = 1;
    a = access_new(&cfg);
    const char *o = "https://app.example.com";

    /* 1 before 2, 2 before 3, 3 before 4. */
    CHECK(gate(a, "https://evil.com", NULL, NULL, NULL, ip, T0, NULL) == 403);
    CHECK(gate(a, NULL, "relay_auth_sftp=x", "", "0", ip, T0, NULL) == 403);
    CHECK(gate(a, o, NULL, NULL, "abc", ip, T0, NULL) == 401);
    CHECK(gate(a, o, cookie("example.com", 22), "example.com", "22", ip, T0 + 601,
               NULL) == 401);
    CHECK(gate(a, o, cookie("example.com", 22), "example.com", "0", ip, T0, NULL) == 400);
    CHECK(gate(a, o, cookie("example.com", 22), "", "23", ip, T0, NULL) == 400);

    /* 4, 5, 6 fail before the cookie is used: it still works afterwards. */
    strcpy(hdr, cookie("example.com", 22));
    CHECK(gate(a, o, hdr, "example.com", "23", ip, T0, NULL) == 403);
    CHECK(gate(a, o, hdr, "other.com", "22", ip, T0, NULL) == 403);
    CHECK(gate(a, o, hdr, "example.com", "2222", ip, T0, NULL) == 403);
    CHECK(gate(a, o, hdr, "example.com", "22", ip, T0, NULL) == 0);
    /* 7 before 8. */
    for (int i = 0; i < 5; i++)
        access_auth_attempt(a, ip, at(T0));
    CHECK(gate(a, o, hdr, "example.com", "22", ip, T0, NULL) == 403);
    CHECK(gate(a, o, cookie("example.com", 22), "example.com", "22", ip, T0, NULL) == 429);
    access_free(a);

    /* 8 and 9 before 10. */
    base_config("localhost");
    a = access_new(&cfg);
    for (int i = 0; i < 5; i++)
        access_auth_attempt(a, ip, at(T0));
    CHECK(simple(a, "10.0.0.1", 22, ip) == 429);
    const char *ip2 = "203.0.113.6";
    for (int i = 0; i < 3; i++)
        CHECK(access_session_open(a, ip2) == 0);
    CHECK(simple(a, "10.0.0.1", 22, ip2) == 429);
    CHECK(simple(a, "10.0.0.1", 22, "203.0.113.7") == 403);
    /* Not reaching the spray step leaves no target behind: ip2 closes its
     * sessions and still has five distinct hosts to go. */
    for (int i = 0; i < 3; i++)
        access_session_close(a, ip2);
    char host[32];
    for (int i = 0; i < 5; i++) {
        snprintf(host, sizeof(host), "z%d.example.com", i);
        CHECK(simple(a, host, 22, ip2) == 0);
    }
    CHECK(gate(a, NULL, cookie("example.com", 22), "example.com", "22", NULL, T0,
               NULL) == 500);
    access_free(a);
}

static void test_jti_store_full(void)
{
    struct access *a;
    const char *ip = "203.0.113.5";
    int st = 0, i;

    base_config("localhost");
    a = access_new(&cfg);
    for (i = 0; i < AUTH_JTI_CAPACITY; i++) {
        st = simple(a, "example.com", 22, ip);
        if (st != 0)
            break;
    }
    CHECK(i == AUTH_JTI_CAPACITY && st == 0);
    /* Full of unexpired ids: refuse, never forget one. */
    CHECK(simple(a, "example.com", 22, ip) == 503);
    /* When the cookies have expired, their ids make room. */
    CHECK(gate(a, NULL, cookie_ttl("example.com", 22, T0 + 600, 600),
               "example.com", "22", ip, T0 + 600, NULL) == 0);
    access_free(a);
}

/* Ask a challenge for example.com:22 at `now`; fill its id, nonce and
 * purpose. Returns the HTTP status. */
static int challenge_raw(struct access *a, const char *ip, struct access_time now,
                         char nonce_id[40], uint8_t nonce[16],
                         char purpose[AUTH_PURPOSE_BUF])
{
    char body[ACCESS_CHALLENGE_BODY_MAX];
    int d = 0, st;

    auth_purpose_for("example.com", 22, purpose);
    st = access_http_challenge(a, purpose, ip, now, body, sizeof(body));
    if (st == 200)
        CHECK(parse_challenge(body, nonce_id, nonce, &d));
    return st;
}

static int redeem_at(struct access *a, const char *nonce_id, const char *answer_text,
                     const char *ip, struct access_time now, char *sc, size_t n)
{
    char body[200];

    snprintf(body, sizeof(body), "{\"nonce_id\":\"%s\",\"answer\":%s}", nonce_id,
             answer_text);
    return access_http_redeem(a, body, strlen(body), ip, now, sc, n);
}

/* The answer is an unsigned 64-bit integer: the whole range is read
 * exactly, not through jansson's signed integers. */
static void test_answer_u64(void)
{
    struct access *a;
    char id[40], sc[ACCESS_SET_COOKIE_MAX], purpose[AUTH_PURPOSE_BUF], num[32];
    uint8_t nonce[16];
    const char *ip = "203.0.113.5";
    uint64_t ans;

    base_config("localhost");
    cfg.auth_challenge_per_min = 1000;
    a = access_new(&cfg);

    /* A good answer at or above 2^63. */
    CHECK(challenge_raw(a, ip, at(T0), id, nonce, purpose) == 200);
    for (ans = 1ull << 63; !auth_pow_ok(nonce, purpose, ans, cfg.pow_difficulty_bits); ans++)
        ;
    snprintf(num, sizeof(num), "%llu", (unsigned long long)ans);
    CHECK(redeem_at(a, id, num, ip, at(T0 + 1), sc, sizeof(sc)) == 204);

    /* A good answer near 2^64 - 1. */
    CHECK(challenge_raw(a, ip, at(T0), id, nonce, purpose) == 200);
    for (ans = UINT64_MAX; !auth_pow_ok(nonce, purpose, ans, cfg.pow_difficulty_bits); ans--)
        ;
    snprintf(num, sizeof(num), "%llu", (unsigned long long)ans);
    CHECK(redeem_at(a, id, num, ip, at(T0 + 1), sc, sizeof(sc)) == 204);

    /* 2^64 - 1 itself is a number: judged by the work (403), not 400. */
    CHECK(challenge_raw(a, ip, at(T0), id, nonce, purpose) == 200);
    int st = redeem_at(a, id, "18446744073709551615", ip, at(T0 + 1), sc, sizeof(sc));
    CHECK(st == (auth_pow_ok(nonce, purpose, UINT64_MAX, cfg.pow_difficulty_bits) ? 204 : 403));

    /* Outside the range, negative, fractions, exponents, leading zeros,
     * strings: 400, and the challenge stays usable. */
    CHECK(challenge_raw(a, ip, at(T0), id, nonce, purpose) == 200);
    static const char *const bad[] = {
        "18446744073709551616", "36893488147419103232", "-1", "-0",
        "-9223372036854775808", "1.5", "0.0", "1e3", "1E3", "01", "\"5\"",
        "9223372036854775808.0", "1e19",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        st = redeem_at(a, id, bad[i], ip, at(T0 + 1), sc, sizeof(sc));
        if (st != 400)
            fprintf(stderr, "answer %s: %d\n", bad[i], st);
        CHECK(st == 400);
    }
    /* Members before and after, blanks, nesting, escaped strings: the
     * answer is still found. */
    for (ans = 0; !auth_pow_ok(nonce, purpose, ans, cfg.pow_difficulty_bits); ans++)
        ;
    char body[400];
    snprintf(body, sizeof(body),
             " { \"x\" : {\"answer\": 1, \"y\": [\"}\", \"\\\"answer\\\"\"]},"
             " \"nonce_id\" : \"%s\" ,\n\t\"answer\" :\r %llu } ",
             id, (unsigned long long)ans);
    CHECK(access_http_redeem(a, body, strlen(body), ip, at(T0 + 1), sc, sizeof(sc)) == 204);
    access_free(a);
}

/* Challenges expire by the monotonic clock, at exactly 60 s; a wall-clock
 * step changes nothing. The cookie's iat/exp stay wall-clock. */
static void test_challenge_clock(void)
{
    struct access *a;
    char id[40], sc[ACCESS_SET_COOKIE_MAX], purpose[AUTH_PURPOSE_BUF], num[32];
    uint8_t nonce[16];
    const char *ip = "203.0.113.5";
    struct access_time t0 = { T0, 5000000 }, later;
    uint64_t ans;

    base_config("localhost");
    cfg.auth_challenge_per_min = 1000;
    a = access_new(&cfg);

    /* Wall clock stepped an hour ahead, 59.999 s later: still valid. */
    CHECK(challenge_raw(a, ip, t0, id, nonce, purpose) == 200);
    for (ans = 0; !auth_pow_ok(nonce, purpose, ans, cfg.pow_difficulty_bits); ans++)
        ;
    snprintf(num, sizeof(num), "%llu", (unsigned long long)ans);
    later = (struct access_time){ T0 + 3600, t0.mono_ms + 59999 };
    CHECK(redeem_at(a, id, num, ip, later, sc, sizeof(sc)) == 204);
    /* The cookie is dated by the wall clock. */
    char jwt[AUTH_JWT_MAX];
    struct jwt_claims c;
    snprintf(jwt, sizeof(jwt), "%.*s", (int)(strchr(sc, ';') - sc - 16), sc + 16);
    CHECK(auth_jwt_verify(cfg.signing_key, 32, jwt, T0 + 3600, &c) == 0);
    CHECK(c.iat == T0 + 3600 && c.exp == T0 + 3600 + 600);

    /* Wall clock stepped back an hour, 60.000 s later: expired. */
    CHECK(challenge_raw(a, ip, t0, id, nonce, purpose) == 200);
    for (ans = 0; !auth_pow_ok(nonce, purpose, ans, cfg.pow_difficulty_bits); ans++)
        ;
    snprintf(num, sizeof(num), "%llu", (unsigned long long)ans);
    later = (struct access_time){ T0 - 3600, t0.mono_ms + 60000 };
    CHECK(redeem_at(a, id, num, ip, later, sc, sizeof(sc)) == 400);

    /* Challenge rate: a wall-clock step does not open a new minute. */
    base_config("localhost");
    access_free(a);
    a = access_new(&cfg);
    for (int i = 0; i < cfg.auth_challenge_per_min; i++)
        CHECK(challenge_raw(a, ip, t0, id, nonce, purpose) == 200);
    later = (struct access_time){ T0 + 86400, t0.mono_ms + 1000 };
    CHECK(challenge_raw(a, ip, later, id, nonce, purpose) == 429);
    later = (struct access_time){ T0 - 86400, t0.mono_ms + 61000 };
    CHECK(challenge_raw(a, ip, later, id, nonce, purpose) == 200);
    access_free(a);
}

/* Issue one cookie for example.com:22 at `now` into `hdr` (a Cookie
 * header). Returns the status of POST /relay/auth. */
static int issue(struct access *a, const char *ip, time_t now, char *hdr, size_t n)
{
    char id[40], sc[ACCESS_SET_COOKIE_MAX];
    uint64_t ans;
    int st;

    hdr[0] = '\0';
    CHECK(challenge(a, "example.com", 22, ip, now, id, &ans, 1) == 200);
    st = redeem(a, id, ans, ip, now, sc, sizeof(sc));
    if (st == 204)
        snprintf(hdr, n, "%.*s", (int)(strchr(sc, ';') - sc), sc);
    return st;
}

/* A full cookie store refuses to issue, never to accept a cookie it
 * issued: each is used exactly once; expired ones make room again. */
static void test_cookie_store_full(void)
{
    enum { CAP = 5 };
    struct access *a;
    char hdr[CAP][AUTH_JWT_MAX + 32], extra[AUTH_JWT_MAX + 32];
    const char *ip = "203.0.113.5";

    base_config("localhost");
    cfg.auth_challenge_per_min = 1000;
    cfg.max_concurrent_per_ip = 100;
    cfg.cookie_store_size = CAP;
    a = access_new(&cfg);
    CHECK(a != NULL);

    for (int i = 0; i < CAP; i++)
        CHECK(issue(a, ip, T0, hdr[i], sizeof(hdr[i])) == 204);
    /* Full: the next cookie is refused at issue, with 503. */
    CHECK(issue(a, ip, T0 + 1, extra, sizeof(extra)) == 503);
    CHECK(extra[0] == '\0');
    CHECK(issue(a, "198.51.100.7", T0 + 599, extra, sizeof(extra)) == 503);
    /* Every cookie issued works once, then is a replay. */
    for (int i = 0; i < CAP; i++) {
        CHECK(gate(a, NULL, hdr[i], "example.com", "22", ip, T0 + 2, NULL) == 0);
        CHECK(gate(a, NULL, hdr[i], "example.com", "22", ip, T0 + 3, NULL) == 403);
    }
    /* Still full of live ids until they expire, then issuing resumes. */
    CHECK(issue(a, ip, T0 + 4, extra, sizeof(extra)) == 503);
    CHECK(issue(a, ip, T0 + 600, extra, sizeof(extra)) == 204);
    CHECK(gate(a, NULL, extra, "example.com", "22", ip, T0 + 601, NULL) == 0);
    access_free(a);
}

/* The default store size is the documented one. */
static void test_cookie_store_default(void)
{
    CHECK(AUTH_JTI_CAPACITY == 65536);
}

static void test_new(void)
{
    base_config("localhost");
    cfg.signing_key_len = 16;
    CHECK(access_new(&cfg) == NULL);
    CHECK(access_new(NULL) == NULL);
    cfg.byo_domain = NULL;
    cfg.signing_key_len = 32;
    struct access *a = access_new(&cfg);
    CHECK(a != NULL);
    CHECK(simple(a, "example.com", 22, "203.0.113.5") == 0);
    access_free(a);
}

int main(void)
{
    test_new();
    test_challenge_endpoint();
    test_redeem();
    test_origin();
    test_cookie_check();
    test_host_port();
    test_allowlist();
    test_purpose_and_single_use();
    test_limits_checks();
    test_spray();
    test_ssrf();
    test_order();
    test_jti_store_full();
    test_answer_u64();
    test_challenge_clock();
    test_cookie_store_full();
    test_cookie_store_default();
    CHECK_DONE();
}
