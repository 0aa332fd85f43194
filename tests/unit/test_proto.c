/* proto: request parsing (every method, every missing parameter, frames
 * that are not requests), the host_key_accepted test, credential take-over
 * with the JSON copy wiped, and byte-exact response builders, all against
 * PROTOCOL.md §2, §3 and §5. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "check.h"
#include "proto.h"
#include "wipe.h"

/* Parse a NUL-terminated frame. */
static int parse(const char *text, struct proto_request *req)
{
    return proto_parse_request(text, strlen(text), req);
}

/* Check that `got` (malloc'd, freed here) equals `want` byte for byte. */
#define CHECK_FRAME(got, want)                                             \
    do {                                                                   \
        char *check_frame_ = (got);                                        \
        CHECK_STR(check_frame_, (want));                                   \
        free(check_frame_);                                                \
    } while (0)

struct method_case {
    const char *name;
    enum proto_method m;
    const char *params;       /* a valid params object */
    const char *missing;      /* error when params is {} */
    int binary;
};

static const struct method_case cases[] = {
    {"auth", M_AUTH, "{\"username\":\"u\",\"password\":\"p\"}", NULL, 0},
    {"stat", M_STAT, "{\"path\":\"/a\"}", "missing path", 0},
    {"list", M_LIST, "{\"path\":\"/a\"}", "missing path", 0},
    {"fs_info", M_FS_INFO, "{\"path\":\"/a\"}", NULL, 0},
    {"mkdir", M_MKDIR, "{\"path\":\"/a\"}", "missing path", 0},
    {"delete", M_DELETE, "{\"path\":\"/a\"}", "missing path", 0},
    {"rename", M_RENAME, "{\"from\":\"/a\",\"to\":\"/b\"}", "missing from", 0},
    {"read", M_READ, "{\"path\":\"/a\"}", "missing path", 0},
    {"write", M_WRITE, "{\"path\":\"/a\",\"size\":3}", "missing path", 1},
    {"write_open", M_WRITE_OPEN, "{\"path\":\"/a\"}", "missing path", 0},
    {"write_chunk", M_WRITE_CHUNK, "{\"handle\":\"wh-1\"}", "missing handle", 1},
    {"write_close", M_WRITE_CLOSE, "{\"handle\":\"wh-1\"}", "missing handle", 0},
    {"write_abort", M_WRITE_ABORT, "{\"handle\":\"wh-1\"}", "missing handle", 0},
    {"read_open", M_READ_OPEN, "{\"path\":\"/a\"}", "missing path", 0},
    {"read_chunk", M_READ_CHUNK, "{\"handle\":\"rh-1\"}", "missing handle", 0},
    {"read_close", M_READ_CLOSE, "{\"handle\":\"rh-1\"}", "missing handle", 0},
};

#define N_CASES (sizeof(cases) / sizeof(cases[0]))

static void test_methods(void)
{
    char buf[512];
    struct proto_request req;
    int seen[M_COUNT] = {0};

    CHECK(N_CASES == M_COUNT - 1);  /* every method is covered */
    for (size_t i = 0; i < N_CASES; i++) {
        const struct method_case *c = &cases[i];

        seen[c->m]++;
        CHECK_STR(proto_method_name(c->m), c->name);
        CHECK(proto_method_takes_binary(c->m) == c->binary);

        /* With valid params: the method, the id, no error. */
        snprintf(buf, sizeof(buf), "{\"id\":%zu,\"method\":\"%s\",\"params\":%s}",
                 i + 100, c->name, c->params);
        CHECK(parse(buf, &req) == 0);
        CHECK(req.method == c->m);
        CHECK(req.id == i + 100);
        CHECK(req.error == NULL);
        CHECK(req.code == NULL);
        CHECK(req.root != NULL);
        if (req.error)
            fprintf(stderr, "  %s: unexpected error %s\n", c->name, req.error);
        proto_request_free(&req);

        /* Empty params, no params, null params, and the parameter given as
         * an empty string or a non-string: the exact "missing X" text. */
        const char *variants[] = {
            ",\"params\":{}}",
            "}",
            ",\"params\":null}",
            ",\"params\":{\"path\":\"\",\"handle\":\"\",\"from\":\"\",\"to\":\"\"}}",
            ",\"params\":{\"path\":7,\"handle\":[],\"from\":{},\"to\":null}}",
        };
        for (size_t v = 0; v < sizeof(variants) / sizeof(variants[0]); v++) {
            snprintf(buf, sizeof(buf), "{\"id\":1,\"method\":\"%s\"%s", c->name, variants[v]);
            CHECK(parse(buf, &req) == 0);
            CHECK(req.method == c->m);
            CHECK(req.id == 1);
            if (c->missing) {
                CHECK_STR(req.error, c->missing);
                CHECK_STR(req.code, "bad_request");
            } else {
                CHECK(req.error == NULL);
            }
            proto_request_free(&req);
        }
    }
    for (int m = M_UNKNOWN + 1; m < M_COUNT; m++)
        CHECK(seen[m] == 1);

    /* Binary frames follow exactly write and write_chunk. */
    for (int m = M_UNKNOWN; m <= M_COUNT; m++)
        CHECK(proto_method_takes_binary((enum proto_method)m) ==
              (m == M_WRITE || m == M_WRITE_CHUNK));
    CHECK_STR(proto_method_name(M_UNKNOWN), "unknown");
    CHECK_STR(proto_method_name(M_COUNT), "unknown");
}

static void test_unknown_method(void)
{
    struct proto_request req;
    const char *names[] = {"chmod", "", "STAT", "stat ", "auth\\u0000", "write_chunks"};
    char buf[256];

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(buf, sizeof(buf), "{\"id\":42,\"method\":\"%s\",\"params\":{\"path\":\"/\"}}",
                 names[i]);
        int rc = parse(buf, &req);
        if (strstr(names[i], "\\u0000")) {
            /* jansson refuses NUL inside strings: not a request at all. */
            CHECK(rc == -1);
            continue;
        }
        CHECK(rc == 0);
        CHECK(req.method == M_UNKNOWN);
        CHECK(req.id == 42);
        CHECK_STR(req.error, "unknown method");
        CHECK(req.code != NULL);
        proto_request_free(&req);
    }
}

static void test_not_requests(void)
{
    struct proto_request req;
    const char *frames[] = {
        "",
        "not json",
        "{",
        "[1,2,3]",
        "[{\"id\":1,\"method\":\"stat\"}]",
        "\"stat\"",
        "42",
        "null",
        "{}",
        "{\"method\":\"stat\",\"params\":{\"path\":\"/\"}}",            /* no id */
        "{\"id\":-1,\"method\":\"stat\",\"params\":{\"path\":\"/\"}}",
        "{\"id\":4294967296,\"method\":\"stat\",\"params\":{\"path\":\"/\"}}",
        "{\"id\":9223372036854775807,\"method\":\"stat\"}",
        "{\"id\":99999999999999999999,\"method\":\"stat\"}",
        "{\"id\":\"1\",\"method\":\"stat\",\"params\":{\"path\":\"/\"}}",
        "{\"id\":1.0,\"method\":\"stat\",\"params\":{\"path\":\"/\"}}",
        "{\"id\":1e3,\"method\":\"stat\",\"params\":{\"path\":\"/\"}}",
        "{\"id\":true,\"method\":\"stat\",\"params\":{\"path\":\"/\"}}",
        "{\"id\":null,\"method\":\"stat\",\"params\":{\"path\":\"/\"}}",
        "{\"id\":1,\"params\":{\"path\":\"/\"}}",                       /* no method */
        "{\"id\":1,\"method\":7,\"params\":{\"path\":\"/\"}}",
        "{\"id\":1,\"method\":null}",
        "{\"id\":1,\"method\":[\"stat\"]}",
        "{\"id\":1,\"method\":\"stat\",\"params\":{\"path\":\"/\"}} trailing",
        "{\"id\":1,\"method\":\"stat\",\"params\":{\"path\":\"/\"}}{}",
        /* Duplicate keys: no guessing which id or method was meant. */
        "{\"id\":1,\"id\":2,\"method\":\"stat\",\"params\":{\"path\":\"/\"}}",
        "{\"id\":1,\"method\":\"stat\",\"method\":\"delete\",\"params\":{\"path\":\"/\"}}",
        "{\"id\":1,\"method\":\"rename\",\"params\":{\"from\":\"/a\",\"to\":\"/b\",\"to\":\"/c\"}}",
        "{\"id\":1,\"method\":\"stat\",\"params\":{\"path\":\"/a\\u0000b\"}}",
        "{\"id\":1,\"method\":\"stat\",\"params\":{\"path\":\"\xff\xfe\"}}",  /* not UTF-8 */
    };

    for (size_t i = 0; i < sizeof(frames) / sizeof(frames[0]); i++) {
        memset(&req, 0x5a, sizeof(req));
        int rc = parse(frames[i], &req);
        CHECK(rc == -1);
        if (rc != -1)
            fprintf(stderr, "  accepted: %s\n", frames[i]);
        /* Nothing to free, nothing dangling. */
        CHECK(req.root == NULL);
        CHECK(req.error == NULL);
        proto_request_free(&req);
    }

    /* The length is honoured: a valid prefix of a longer buffer. */
    const char *two = "{\"id\":5,\"method\":\"stat\",\"params\":{\"path\":\"/\"}}GARBAGE";
    CHECK(proto_parse_request(two, strlen(two) - strlen("GARBAGE"), &req) == 0);
    CHECK(req.id == 5 && req.method == M_STAT);
    proto_request_free(&req);
    /* ... and a cut-off one is not a request. */
    CHECK(proto_parse_request(two, 20, &req) == -1);
    CHECK(proto_parse_request(two, 0, &req) == -1);

    /* params that is not an object is still a request, answered as an error. */
    CHECK(parse("{\"id\":3,\"method\":\"stat\",\"params\":[\"/\"]}", &req) == 0);
    CHECK(req.id == 3);
    CHECK(req.error != NULL);
    proto_request_free(&req);
    CHECK(parse("{\"id\":3,\"method\":\"stat\",\"params\":\"/\"}", &req) == 0);
    CHECK(req.error != NULL);
    proto_request_free(&req);

    /* Freeing twice, or a zeroed request, is harmless. */
    proto_request_free(&req);
    proto_request_free(NULL);
}

static void test_ids(void)
{
    struct proto_request req;

    CHECK(parse("{\"id\":4294967295,\"method\":\"stat\",\"params\":{\"path\":\"/\"}}", &req) == 0);
    CHECK(req.id == UINT32_MAX);
    CHECK(req.error == NULL);
    proto_request_free(&req);

    CHECK(parse("{\"id\":0,\"method\":\"stat\",\"params\":{\"path\":\"/\"}}", &req) == 0);
    CHECK(req.id == 0);
    proto_request_free(&req);

    /* Key order and whitespace do not matter. */
    CHECK(parse(" {\n\"params\" : {\"path\":\"/x\"} , \"method\":\"stat\", \"id\" : 17 }\n",
                &req) == 0);
    CHECK(req.id == 17 && req.method == M_STAT);
    CHECK_STR(req.path, "/x");
    proto_request_free(&req);

    /* Unknown extra fields are tolerated. */
    CHECK(parse("{\"id\":8,\"method\":\"stat\",\"params\":{\"path\":\"/x\",\"z\":1},\"x\":[]}",
                &req) == 0);
    CHECK(req.error == NULL);
    proto_request_free(&req);
}

static void test_params(void)
{
    struct proto_request req;

    /* rename: from/to, legacy oldPath/newPath, and a mix. */
    CHECK(parse("{\"id\":1,\"method\":\"rename\",\"params\":{\"from\":\"/a\",\"to\":\"/b\"}}",
                &req) == 0);
    CHECK(req.error == NULL);
    CHECK_STR(req.from, "/a");
    CHECK_STR(req.to, "/b");
    proto_request_free(&req);
    CHECK(parse("{\"id\":1,\"method\":\"rename\",\"params\":{\"oldPath\":\"/o\",\"newPath\":\"/n\"}}",
                &req) == 0);
    CHECK(req.error == NULL);
    CHECK_STR(req.from, "/o");
    CHECK_STR(req.to, "/n");
    proto_request_free(&req);
    CHECK(parse("{\"id\":1,\"method\":\"rename\",\"params\":{\"oldPath\":\"/o\",\"to\":\"/b\"}}",
                &req) == 0);
    CHECK(req.error == NULL);
    CHECK_STR(req.from, "/o");
    CHECK_STR(req.to, "/b");
    proto_request_free(&req);
    /* The new names win over the legacy ones. */
    CHECK(parse("{\"id\":1,\"method\":\"rename\",\"params\":{\"from\":\"/a\",\"oldPath\":\"/o\","
                "\"to\":\"/b\",\"newPath\":\"/n\"}}", &req) == 0);
    CHECK_STR(req.from, "/a");
    CHECK_STR(req.to, "/b");
    proto_request_free(&req);
    CHECK(parse("{\"id\":1,\"method\":\"rename\",\"params\":{\"from\":\"/a\"}}", &req) == 0);
    CHECK_STR(req.error, "missing to");
    proto_request_free(&req);
    CHECK(parse("{\"id\":1,\"method\":\"rename\",\"params\":{\"oldPath\":\"/a\"}}", &req) == 0);
    CHECK_STR(req.error, "missing to");
    proto_request_free(&req);
    CHECK(parse("{\"id\":1,\"method\":\"rename\",\"params\":{\"to\":\"/b\"}}", &req) == 0);
    CHECK_STR(req.error, "missing from");
    proto_request_free(&req);
    CHECK(parse("{\"id\":1,\"method\":\"rename\",\"params\":{\"newPath\":\"/b\"}}", &req) == 0);
    CHECK_STR(req.error, "missing from");
    proto_request_free(&req);

    /* fs_info: path defaults to "/". */
    CHECK(parse("{\"id\":2,\"method\":\"fs_info\"}", &req) == 0);
    CHECK(req.error == NULL);
    CHECK_STR(req.path, "/");
    proto_request_free(&req);
    CHECK(parse("{\"id\":2,\"method\":\"fs_info\",\"params\":{}}", &req) == 0);
    CHECK_STR(req.path, "/");
    proto_request_free(&req);
    CHECK(parse("{\"id\":2,\"method\":\"fs_info\",\"params\":{\"path\":\"\"}}", &req) == 0);
    CHECK_STR(req.path, "/");
    proto_request_free(&req);
    CHECK(parse("{\"id\":2,\"method\":\"fs_info\",\"params\":{\"path\":\"/srv\"}}", &req) == 0);
    CHECK_STR(req.path, "/srv");
    proto_request_free(&req);

    /* write_open resume: only a JSON true turns it on. */
    struct {
        const char *params;
        int resume;
    } rs[] = {
        {"{\"path\":\"/f\",\"resume\":true}", 1},
        {"{\"path\":\"/f\",\"resume\":false}", 0},
        {"{\"path\":\"/f\"}", 0},
        {"{\"path\":\"/f\",\"resume\":null}", 0},
        {"{\"path\":\"/f\",\"resume\":\"true\"}", 0},
        {"{\"path\":\"/f\",\"resume\":1}", 0},
    };
    for (size_t i = 0; i < sizeof(rs) / sizeof(rs[0]); i++) {
        char buf[160];
        snprintf(buf, sizeof(buf), "{\"id\":3,\"method\":\"write_open\",\"params\":%s}",
                 rs[i].params);
        CHECK(parse(buf, &req) == 0);
        CHECK(req.error == NULL);
        CHECK_STR(req.path, "/f");
        CHECK(req.resume == rs[i].resume);
        proto_request_free(&req);
    }

    /* Strings are returned as sent, UTF-8 and escapes decoded. */
    CHECK(parse("{\"id\":4,\"method\":\"stat\",\"params\":{\"path\":\"/d\\u00e9j\\u00e0 vu/\\\"q\\\"\"}}",
                &req) == 0);
    CHECK_STR(req.path, "/d\xc3\xa9j\xc3\xa0 vu/\"q\"");
    proto_request_free(&req);
    CHECK(parse("{\"id\":4,\"method\":\"write_chunk\",\"params\":{\"handle\":\"wh-0123\"}}",
                &req) == 0);
    CHECK_STR(req.handle, "wh-0123");
    proto_request_free(&req);
}

/* A valid stat request of exactly `total` bytes, padded inside the path. */
static char *sized_request(size_t total)
{
    const char *head = "{\"id\":1,\"method\":\"stat\",\"params\":{\"path\":\"/";
    const char *tail = "\"}}";
    size_t fixed = strlen(head) + strlen(tail);
    char *buf = malloc(total + 1);

    if (!buf || total < fixed)
        return NULL;
    memcpy(buf, head, strlen(head));
    memset(buf + strlen(head), 'a', total - fixed);
    memcpy(buf + total - strlen(tail), tail, strlen(tail));
    buf[total] = '\0';
    return buf;
}

static void test_size_limit(void)
{
    struct proto_request req;
    char *ok = sized_request(PROTO_MAX_TEXT_BYTES);
    char *big = sized_request(PROTO_MAX_TEXT_BYTES + 1);
    char *huge = sized_request(1024 * 1024);

    CHECK(ok && big && huge);
    if (!ok || !big || !huge)
        goto out;
    CHECK(proto_parse_request(ok, PROTO_MAX_TEXT_BYTES, &req) == 0);
    CHECK(req.method == M_STAT && req.error == NULL);
    CHECK(req.path && strlen(req.path) > 60000);
    proto_request_free(&req);
    CHECK(proto_parse_request(big, PROTO_MAX_TEXT_BYTES + 1, &req) == -1);
    CHECK(req.root == NULL);
    CHECK(proto_parse_request(huge, 1024 * 1024, &req) == -1);
    /* An 8192-bit RSA key in PEM (~6.5 KiB) must fit. */
    CHECK(PROTO_MAX_TEXT_BYTES >= 16 * 1024);
out:
    free(ok);
    free(big);
    free(huge);
}

static void test_host_key_accepted(void)
{
    struct {
        const char *text;
        int want;
    } cs[] = {
        {"{\"type\":\"host_key_accepted\"}", 1},
        {" { \"type\" : \"host_key_accepted\" } ", 1},
        {"{\"type\":\"host_key_accepted\",\"fingerprint\":\"SHA256:x\",\"n\":[1,{}]}", 1},
        {"{\"id\":1,\"type\":\"host_key_accepted\"}", 1},
        {"{\"type\":\"host_key_rejected\"}", 0},
        {"{\"type\":\"HOST_KEY_ACCEPTED\"}", 0},
        {"{\"type\":\"host_key_accepted \"}", 0},
        {"{\"type\":\"host_key_acceptedx\"}", 0},
        {"{\"type\":\"host_key\"}", 0},
        {"{\"type\":\"\"}", 0},
        {"{\"type\":\"host_key_accepted\\u0000\"}", 0},
        {"{\"type\":true}", 0},
        {"{\"type\":null}", 0},
        {"{\"type\":[\"host_key_accepted\"]}", 0},
        {"{\"accepted\":true}", 0},
        {"{}", 0},
        {"[\"host_key_accepted\"]", 0},
        {"[{\"type\":\"host_key_accepted\"}]", 0},
        {"\"host_key_accepted\"", 0},
        {"host_key_accepted", 0},
        {"{\"type\":\"host_key_accepted\"", 0},
        {"{\"type\":\"host_key_accepted\"}}", 0},
        {"", 0},
        {"null", 0},
    };

    for (size_t i = 0; i < sizeof(cs) / sizeof(cs[0]); i++) {
        int got = proto_is_host_key_accepted(cs[i].text, strlen(cs[i].text));
        CHECK(got == cs[i].want);
        if (got != cs[i].want)
            fprintf(stderr, "  host_key_accepted(%s) = %d\n", cs[i].text, got);
    }
    /* The length is honoured. */
    const char *t = "{\"type\":\"host_key_accepted\"}";
    CHECK(proto_is_host_key_accepted(t, strlen(t) - 1) == 0);
}

/* 1 when the n bytes at p are all zero. */
static int all_zero(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* After proto_auth_take, the JSON copy of `key` inside params must be wiped
 * (same length, every byte zero): the tree may linger until freed. */
static int wiped(const struct proto_request *req, const char *key, const char *secret)
{
    json_t *v = json_object_get(json_object_get(req->root, "params"), key);
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);

    if (!s)
        return 0;
    if (n != strlen(secret))
        return 0;
    return all_zero(s, n) && memcmp(s, secret, n) != 0;
}

static int auth_request(const char *params, struct proto_request *req)
{
    char buf[4096];

    snprintf(buf, sizeof(buf), "{\"id\":11,\"method\":\"auth\",\"params\":%s}", params);
    if (parse(buf, req) != 0 || req->method != M_AUTH || req->error)
        return -1;
    return 0;
}

static void check_empty_auth(const struct proto_auth *a)
{
    CHECK(a->username == NULL);
    CHECK(a->password == NULL);
    CHECK(a->private_key == NULL);
    CHECK(a->passphrase == NULL);
    CHECK(a->public_key == NULL);
    CHECK(a->algorithm == NULL);
}

static const char *const test_key =
    "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAA\\n"
    "-----END OPENSSH PRIVATE KEY-----\\n";
static const char *const test_key_decoded =
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----\n";

static void test_auth_take(void)
{
    struct proto_request req;
    struct proto_auth a;
    const char *err;
    char params[2048];

    /* Password with an explicit type. */
    CHECK(auth_request("{\"type\":\"password\",\"username\":\"alice\",\"password\":\"s3cr\\u00e9t\"}",
                       &req) == 0);
    CHECK(proto_auth_take(&req, &a, &err) == 0);
    CHECK(err == NULL);
    CHECK(a.type == AUTH_PASSWORD);
    CHECK_STR(a.username, "alice");
    CHECK_STR(a.password, "s3cr\xc3\xa9t");
    CHECK(a.private_key == NULL && a.passphrase == NULL);
    CHECK(wiped(&req, "password", "s3cr\xc3\xa9t"));
    CHECK(wiped(&req, "username", "alice"));
    proto_auth_wipe(&a);
    check_empty_auth(&a);
    proto_auth_wipe(&a);  /* twice is harmless */
    proto_request_free(&req);

    /* Missing type means password. */
    CHECK(auth_request("{\"username\":\"bob\",\"password\":\"hunter2\"}", &req) == 0);
    CHECK(proto_auth_take(&req, &a, &err) == 0);
    CHECK(a.type == AUTH_PASSWORD);
    CHECK_STR(a.username, "bob");
    CHECK_STR(a.password, "hunter2");
    CHECK(wiped(&req, "password", "hunter2"));
    proto_auth_wipe(&a);
    proto_request_free(&req);

    /* An empty password is a password (some servers allow it). */
    CHECK(auth_request("{\"username\":\"bob\",\"password\":\"\"}", &req) == 0);
    CHECK(proto_auth_take(&req, &a, &err) == 0);
    CHECK_STR(a.password, "");
    proto_auth_wipe(&a);
    proto_request_free(&req);

    /* Public key with a passphrase. */
    snprintf(params, sizeof(params),
             "{\"type\":\"publickey\",\"username\":\"carol\",\"privateKey\":\"%s\","
             "\"passphrase\":\"open sesame\"}", test_key);
    CHECK(auth_request(params, &req) == 0);
    CHECK(proto_auth_take(&req, &a, &err) == 0);
    CHECK(err == NULL);
    CHECK(a.type == AUTH_PUBLICKEY);
    CHECK_STR(a.username, "carol");
    CHECK_STR(a.private_key, test_key_decoded);
    CHECK_STR(a.passphrase, "open sesame");
    CHECK(a.password == NULL);
    CHECK(wiped(&req, "privateKey", test_key_decoded));
    CHECK(wiped(&req, "passphrase", "open sesame"));
    CHECK(wiped(&req, "username", "carol"));
    proto_auth_wipe(&a);
    check_empty_auth(&a);
    proto_request_free(&req);

    /* Public key, passphrase null, absent or empty: NULL. */
    const char *pps[] = {",\"passphrase\":null", "", ",\"passphrase\":\"\""};
    for (size_t i = 0; i < sizeof(pps) / sizeof(pps[0]); i++) {
        snprintf(params, sizeof(params),
                 "{\"type\":\"publickey\",\"username\":\"carol\",\"privateKey\":\"%s\"%s}",
                 test_key, pps[i]);
        CHECK(auth_request(params, &req) == 0);
        CHECK(proto_auth_take(&req, &a, &err) == 0);
        CHECK(a.type == AUTH_PUBLICKEY);
        CHECK_STR(a.private_key, test_key_decoded);
        CHECK(a.passphrase == NULL);
        CHECK(wiped(&req, "privateKey", test_key_decoded));
        proto_auth_wipe(&a);
        proto_request_free(&req);
    }

    /* publickey-sign (`sign` extension): only a public key line. */
    CHECK(auth_request("{\"type\":\"publickey-sign\",\"username\":\"dave\","
                       "\"publicKey\":\"ssh-ed25519 AAAA dave@laptop\"}", &req) == 0);
    CHECK(proto_auth_take(&req, &a, &err) == 0);
    CHECK(err == NULL);
    CHECK(a.type == AUTH_PUBLICKEY_SIGN);
    CHECK_STR(a.username, "dave");
    CHECK_STR(a.public_key, "ssh-ed25519 AAAA dave@laptop");
    CHECK(a.password == NULL && a.private_key == NULL && a.passphrase == NULL);
    CHECK(a.algorithm == NULL);
    proto_auth_wipe(&a);
    check_empty_auth(&a);
    proto_request_free(&req);
    CHECK(auth_request("{\"type\":\"publickey-sign\",\"username\":\"dave\","
                       "\"publicKey\":\"ssh-rsa AAAA\",\"algorithm\":\"rsa-sha2-256\"}",
                       &req) == 0);
    CHECK(proto_auth_take(&req, &a, &err) == 0);
    CHECK_STR(a.algorithm, "rsa-sha2-256");
    proto_auth_wipe(&a);
    check_empty_auth(&a);
    proto_request_free(&req);

    /* Unknown type: refused, and the secrets that came along are wiped. */
    CHECK(auth_request("{\"type\":\"keyboard-interactive\",\"username\":\"u\","
                       "\"password\":\"pw-unknown\",\"passphrase\":\"pp-unknown\"}", &req) == 0);
    CHECK(proto_auth_take(&req, &a, &err) == -1);
    CHECK_STR(err, "invalid auth request: unknown type");
    check_empty_auth(&a);
    CHECK(wiped(&req, "password", "pw-unknown"));
    CHECK(wiped(&req, "passphrase", "pp-unknown"));
    proto_request_free(&req);

    /* Missing fields: exact messages, nothing handed out, JSON wiped. */
    struct {
        const char *params;
        const char *err;
        const char *secret_key, *secret;
    } bad[] = {
        {"{\"password\":\"pw-1\"}", "invalid auth request: missing username", "password", "pw-1"},
        {"{\"username\":\"\",\"password\":\"pw-2\"}", "invalid auth request: missing username",
         "password", "pw-2"},
        {"{\"username\":7,\"password\":\"pw-3\"}", "invalid auth request: missing username",
         "password", "pw-3"},
        {"{\"type\":\"password\",\"username\":\"u\"}", "invalid auth request: missing password",
         NULL, NULL},
        {"{\"username\":\"u\",\"password\":null}", "invalid auth request: missing password",
         NULL, NULL},
        {"{\"type\":\"publickey\",\"username\":\"u\",\"passphrase\":\"pp-4\"}",
         "invalid auth request: missing privateKey", "passphrase", "pp-4"},
        {"{\"type\":\"publickey\",\"username\":\"u\",\"privateKey\":\"\"}",
         "invalid auth request: missing privateKey", NULL, NULL},
        {"{\"type\":\"publickey\",\"privateKey\":\"KEY-5\"}",
         "invalid auth request: missing username", "privateKey", "KEY-5"},
        {"{\"type\":\"publickey-sign\",\"username\":\"u\"}",
         "invalid auth request: missing publicKey", NULL, NULL},
        {"{\"type\":\"publickey-sign\",\"username\":\"u\",\"publicKey\":\"\"}",
         "invalid auth request: missing publicKey", NULL, NULL},
        {"{\"type\":\"publickey-sign\",\"username\":\"u\",\"publicKey\":7}",
         "invalid auth request: missing publicKey", NULL, NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(auth_request(bad[i].params, &req) == 0);
        memset(&a, 0x5a, sizeof(a));
        CHECK(proto_auth_take(&req, &a, &err) == -1);
        CHECK_STR(err, bad[i].err);
        check_empty_auth(&a);
        if (bad[i].secret_key)
            CHECK(wiped(&req, bad[i].secret_key, bad[i].secret));
        proto_request_free(&req);
    }

    /* No params at all. */
    CHECK(parse("{\"id\":11,\"method\":\"auth\"}", &req) == 0);
    CHECK(req.error == NULL);
    CHECK(proto_auth_take(&req, &a, &err) == -1);
    CHECK(err != NULL);
    check_empty_auth(&a);
    proto_request_free(&req);

    /* proto_auth_wipe on a zeroed struct. */
    memset(&a, 0, sizeof(a));
    proto_auth_wipe(&a);
    check_empty_auth(&a);

    /* wipe_mem zeroes, and tolerates NULL / 0. */
    char buf[8] = "abcdefg";
    wipe_mem(buf, sizeof(buf));
    CHECK(all_zero(buf, sizeof(buf)));
    wipe_mem(NULL, 5);
    wipe_mem(buf, 0);
}

/* A string of `n` copies of `c` (malloc'd, NUL-terminated). */
static char *filled(size_t n, char c)
{
    char *s = malloc(n + 1);

    if (!s)
        abort();
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* Credentials over their caps are a bad request, answered before any
 * authentication is tried; at the cap they are taken. */
static void test_auth_caps(void)
{
    static const struct {
        const char *type, *field;
        size_t cap;
        const char *err;
    } f[] = {
        {"password", "username", PROTO_MAX_USERNAME_BYTES, "invalid auth request: username too long"},
        {"password", "password", PROTO_MAX_PASSWORD_BYTES, "invalid auth request: password too long"},
        {"publickey", "privateKey", PROTO_MAX_PRIVATE_KEY_BYTES,
         "invalid auth request: privateKey too long"},
        {"publickey", "passphrase", PROTO_MAX_PASSPHRASE_BYTES,
         "invalid auth request: passphrase too long"},
        {"publickey-sign", "publicKey", PROTO_MAX_PUBLIC_KEY_BYTES,
         "invalid auth request: publicKey too long"},
        {"publickey-sign", "algorithm", PROTO_MAX_ALGORITHM_BYTES,
         "invalid auth request: algorithm too long"},
    };
    struct proto_request req;
    struct proto_auth a;
    const char *err;

    /* The caps leave room for real credentials, under the frame cap. */
    CHECK(PROTO_MAX_PASSWORD_BYTES >= 1024 && PROTO_MAX_PASSWORD_BYTES <= 8192);
    CHECK(PROTO_MAX_PRIVATE_KEY_BYTES >= 8192);
    CHECK(PROTO_MAX_PRIVATE_KEY_BYTES + PROTO_MAX_PASSPHRASE_BYTES +
          PROTO_MAX_USERNAME_BYTES < PROTO_MAX_TEXT_BYTES);

    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        for (size_t extra = 0; extra <= 1; extra++) {
            char *v = filled(f[i].cap + extra, 'k'), *text;
            /* The other fields get short valid values; `v` needs no escaping. */
            int pw = strcmp(f[i].type, "password") == 0;
            size_t n = strlen(v) + 200;
            text = malloc(n);
            if (!text)
                abort();
            snprintf(text, n,
                     "{\"id\":12,\"method\":\"auth\",\"params\":{\"type\":\"%s\","
                     "\"username\":\"%s\",\"%s\":\"%s\"%s}}",
                     f[i].type, strcmp(f[i].field, "username") == 0 ? v : "u",
                     strcmp(f[i].field, "username") == 0 ? "password" : f[i].field,
                     strcmp(f[i].field, "username") == 0 ? "pw" : v,
                     pw || strcmp(f[i].field, "privateKey") == 0 ||
                             strcmp(f[i].field, "publicKey") == 0 ? ""
                     : strcmp(f[i].type, "publickey-sign") == 0 ? ",\"publicKey\":\"KEY\""
                                                                : ",\"privateKey\":\"KEY\"");
            CHECK(text && proto_parse_request(text, strlen(text), &req) == 0);
            CHECK(req.error == NULL);
            memset(&a, 0x5a, sizeof(a));
            int rc = proto_auth_take(&req, &a, &err);
            if (extra) {
                CHECK(rc == -1);
                CHECK_STR(err, f[i].err);
                check_empty_auth(&a);
                CHECK(wiped(&req, f[i].field, v));
            } else {
                CHECK(rc == 0);
                CHECK(err == NULL);
                proto_auth_wipe(&a);
            }
            proto_request_free(&req);
            free(text);
            free(v);
        }
    }

    /* The case that was reported: a 60 KB password in a frame under
     * PROTO_MAX_TEXT_BYTES. */
    char *pw = filled(60000, 'p'), *text = malloc(60100);
    if (!text)
        abort();
    snprintf(text, 60100,
             "{\"id\":13,\"method\":\"auth\",\"params\":{\"username\":\"u\","
             "\"password\":\"%s\"}}", pw);
    CHECK(text && strlen(text) < PROTO_MAX_TEXT_BYTES);
    CHECK(text && proto_parse_request(text, strlen(text), &req) == 0);
    CHECK(req.id == 13 && req.error == NULL);
    CHECK(proto_auth_take(&req, &a, &err) == -1);
    CHECK_STR(err, "invalid auth request: password too long");
    check_empty_auth(&a);
    proto_request_free(&req);
    free(text);
    free(pw);
}

static void test_builders(void)
{
    CHECK_FRAME(proto_result_empty(7), "{\"id\":7,\"result\":{}}");
    CHECK_FRAME(proto_result_empty(0), "{\"id\":0,\"result\":{}}");
    CHECK_FRAME(proto_result_empty(UINT32_MAX), "{\"id\":4294967295,\"result\":{}}");
    CHECK_FRAME(proto_error(3, "x", NULL), "{\"id\":3,\"error\":\"x\"}");
    CHECK_FRAME(proto_error(3, "x", "c"), "{\"id\":3,\"error\":\"x\",\"code\":\"c\"}");
    CHECK_FRAME(proto_error(UINT32_MAX, "unknown method", "bad_request"),
                "{\"id\":4294967295,\"error\":\"unknown method\",\"code\":\"bad_request\"}");
    CHECK_FRAME(proto_error(1, "say \"hi\"\n\\", NULL),
                "{\"id\":1,\"error\":\"say \\\"hi\\\"\\n\\\\\"}");
    CHECK_FRAME(proto_result(5, json_pack("{s:I}", "size", (json_int_t)262144)),
                "{\"id\":5,\"result\":{\"size\":262144}}");
    CHECK_FRAME(proto_result(6, json_pack("{s:b,s:I,s:I}", "supported", 1, "freeBytes",
                                          (json_int_t)1, "totalBytes", (json_int_t)2)),
                "{\"id\":6,\"result\":{\"supported\":true,\"freeBytes\":1,\"totalBytes\":2}}");
    CHECK(proto_result(5, NULL) == NULL);
    CHECK_FRAME(proto_setup_error("connect_failed", "connection refused"),
                "{\"type\":\"error\",\"code\":\"connect_failed\",\"error\":\"connection refused\"}");
    CHECK_FRAME(proto_setup_error("blocked_target", "x"),
                "{\"type\":\"error\",\"code\":\"blocked_target\",\"error\":\"x\"}");

    /* host_key: byte-exact, then field by field. */
    CHECK_FRAME(proto_host_key("SHA256:abc", "ssh-ed25519"),
                "{\"type\":\"host_key\",\"fingerprint\":\"SHA256:abc\",\"relay_version\":3,"
                "\"features\":[\"write-through\",\"fsync\",\"resume\",\"codes\",\"sign\"],"
                "\"key_type\":\"ssh-ed25519\"}");
    CHECK_FRAME(proto_host_key("SHA256:abc", NULL),
                "{\"type\":\"host_key\",\"fingerprint\":\"SHA256:abc\",\"relay_version\":3,"
                "\"features\":[\"write-through\",\"fsync\",\"resume\",\"codes\",\"sign\"]}");

    char *hk = proto_host_key("SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
                              "ecdsa-sha2-nistp256");
    json_t *o = hk ? json_loads(hk, 0, NULL) : NULL;
    CHECK(o != NULL);
    CHECK_STR(json_string_value(json_object_get(o, "type")), "host_key");
    CHECK_STR(json_string_value(json_object_get(o, "fingerprint")),
              "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU");
    CHECK(json_is_integer(json_object_get(o, "relay_version")));
    CHECK(json_integer_value(json_object_get(o, "relay_version")) == 3);
    CHECK_STR(json_string_value(json_object_get(o, "key_type")), "ecdsa-sha2-nistp256");
    json_t *f = json_object_get(o, "features");
    const char *want[] = {"write-through", "fsync", "resume", "codes", "sign"};
    CHECK(json_is_array(f) && json_array_size(f) == 5);
    for (size_t i = 0; i < 5; i++)
        CHECK_STR(json_string_value(json_array_get(f, i)), want[i]);
    CHECK(json_object_get(o, "id") == NULL);  /* a type frame, not an id frame */
    json_decref(o);
    free(hk);

    /* The exported feature list matches the frame. */
    for (size_t i = 0; i < 5; i++)
        CHECK_STR(proto_features[i], want[i]);
    CHECK(proto_features[5] == NULL);
}

/* The `sign` extension's frames: the browser's answer is recognised only
 * with type "sign" and a request id 1..2^32-1; the signature is handed on
 * as text (checked by the waiting login), or NULL when absent. */
static void test_sign_frames(void)
{
    static const struct {
        const char *text;
        int rc;
        uint32_t request;
        const char *sig;
    } sign_cases[] = {
        {"{\"type\":\"sign\",\"request\":1,\"signature\":\"AAAA\"}", 0, 1, "AAAA"},
        {"{\"type\":\"sign\",\"request\":4294967295,\"signature\":\"\"}", 0, 4294967295u, ""},
        {"{\"type\":\"sign\",\"request\":7}", 0, 7, NULL},
        {"{\"type\":\"sign\",\"request\":7,\"signature\":12}", 0, 7, NULL},
        {"{\"type\":\"sign\",\"request\":0,\"signature\":\"AAAA\"}", -1, 0, NULL},
        {"{\"type\":\"sign\",\"request\":-1,\"signature\":\"AAAA\"}", -1, 0, NULL},
        {"{\"type\":\"sign\",\"request\":4294967296,\"signature\":\"AAAA\"}", -1, 0, NULL},
        {"{\"type\":\"sign\",\"request\":\"1\",\"signature\":\"AAAA\"}", -1, 0, NULL},
        {"{\"type\":\"sign\",\"signature\":\"AAAA\"}", -1, 0, NULL},
        {"{\"type\":\"signed\",\"request\":1,\"signature\":\"AAAA\"}", -1, 0, NULL},
        {"{\"type\":\"sign\",\"request\":1,\"request\":2}", -1, 0, NULL},
        {"[\"sign\"]", -1, 0, NULL},
        {"not json", -1, 0, NULL},
    };

    for (size_t i = 0; i < sizeof(sign_cases) / sizeof(sign_cases[0]); i++) {
        uint32_t request = 99;
        char *sig = (char *)"x";
        int rc = proto_parse_sign(sign_cases[i].text, strlen(sign_cases[i].text), &request, &sig);
        CHECK(rc == sign_cases[i].rc);
        CHECK(request == sign_cases[i].request);
        if (sign_cases[i].sig)
            CHECK_STR(sig, sign_cases[i].sig);
        else
            CHECK(sig == NULL);
        if (rc != sign_cases[i].rc)
            fprintf(stderr, "  case %zu: %s\n", i, sign_cases[i].text);
        free(sig);
    }

    CHECK_FRAME(proto_sign_request(3, "rsa-sha2-512", "AAECAw=="),
                "{\"type\":\"sign_request\",\"request\":3,\"algorithm\":\"rsa-sha2-512\","
                "\"data\":\"AAECAw==\"}");
}

static void test_constants(void)
{
    /* PROTOCOL.md §2 step 2: "relay_version":3. */
    CHECK(PROTO_RELAY_VERSION == 3);
}

int main(void)
{
    test_methods();
    test_unknown_method();
    test_not_requests();
    test_ids();
    test_params();
    test_size_limit();
    test_host_key_accepted();
    test_auth_take();
    test_auth_caps();
    test_builders();
    test_sign_frames();
    test_constants();
    CHECK_DONE();
}
