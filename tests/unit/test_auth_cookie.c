/* auth_cookie: purpose vectors, proof-of-work boundaries, the JWT against
 * tampering, wrong keys, expiry, alg confusion and malformed encodings, and
 * the single-use challenge and cookie-id stores with their capacities. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth_cookie.h"
#include "check.h"

static const uint8_t key[32] = "0123456789abcdef0123456789abcdef";
static const uint8_t other_key[32] = "fedcba9876543210fedcba9876543210";

/* A fresh cookie id, as access.c makes one before it signs. */
static const char *fresh_jti(void)
{
    static char jti[AUTH_UUID_LEN + 1];

    CHECK(auth_uuid_new(jti) == 0);
    return jti;
}

/* ---- helpers: an independent base64url and JWT maker ------------------- */

static void b64url(const void *in, size_t n, char *out)
{
    size_t o = 0;
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);

    for (int i = 0; i < len; i++) {
        if (out[i] == '=')
            break;
        out[o++] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    }
    out[o] = '\0';
}

/* header.payload.signature with any header, payload and digest (NULL md:
 * an empty signature). */
static void make_token(const uint8_t *k, size_t klen, const char *header,
                       const char *payload, const EVP_MD *md, char *out)
{
    char h[512], p[512], s[200];
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;

    b64url(header, strlen(header), h);
    b64url(payload, strlen(payload), p);
    sprintf(out, "%s.%s", h, p);
    s[0] = '\0';
    if (md) {
        HMAC(md, k, (int)klen, (const unsigned char *)out, strlen(out), mac,
             &maclen);
        b64url(mac, maclen, s);
    }
    strcat(out, ".");
    strcat(out, s);
}

static int leading_zero_bits(const uint8_t nonce[16], const char *purpose,
                             uint64_t answer)
{
    uint8_t buf[16 + 64 + 8], md[32];
    size_t n = strlen(purpose);
    unsigned int mdlen;
    int z = 0;

    memcpy(buf, nonce, 16);
    memcpy(buf + 16, purpose, n);
    for (int i = 0; i < 8; i++)
        buf[16 + n + i] = (uint8_t)(answer >> (8 * i));
    EVP_Digest(buf, 16 + n + 8, md, &mdlen, EVP_sha256(), NULL);
    while (z < 256 && !(md[z / 8] & (0x80 >> (z % 8))))
        z++;
    return z;
}

/* ---- purpose -------------------------------------------------------------- */

static void test_purpose(void)
{
    char p[AUTH_PURPOSE_BUF];

    /* printf 'example.com:22' | sha256sum */
    CHECK(auth_purpose_for("Example.COM", 22, p) == 0);
    CHECK_STR(p, "sftp:993574ec685453dca70ab7dd8c8cebce");
    CHECK(auth_purpose_for("example.com", 22, p) == 0);
    CHECK_STR(p, "sftp:993574ec685453dca70ab7dd8c8cebce");
    /* printf 'example.com:2222' | sha256sum */
    CHECK(auth_purpose_for("EXAMPLE.com", 2222, p) == 0);
    CHECK_STR(p, "sftp:27f9c6aaa91efb950ca85076e45d7acb");
    CHECK(auth_purpose_valid(p) == 1);

    CHECK(auth_purpose_for(NULL, 22, p) == -EINVAL);
    CHECK(auth_purpose_for("", 22, p) == -EINVAL);
    CHECK(auth_purpose_for("example.com", 0, p) == -EINVAL);
    CHECK(auth_purpose_for("example.com", 65536, p) == -EINVAL);
    CHECK(auth_purpose_for("example.com", 65535, p) == 0);

    CHECK(auth_purpose_valid("sftp:993574ec685453dca70ab7dd8c8cebce") == 1);
    CHECK(auth_purpose_valid("sftp:0123456789abcdef0123456789abcdef") == 1);
    CHECK(auth_purpose_valid("sftp:993574EC685453dca70ab7dd8c8cebce") == 0);
    CHECK(auth_purpose_valid("sftp:993574ec685453dca70ab7dd8c8cebc") == 0);
    CHECK(auth_purpose_valid("sftp:993574ec685453dca70ab7dd8c8cebce0") == 0);
    CHECK(auth_purpose_valid("sftp:993574ec685453dca70ab7dd8c8cebcg") == 0);
    CHECK(auth_purpose_valid("sftp:993574ec685453dca70ab7dd8c8cebce\n") == 0);
    CHECK(auth_purpose_valid("SFTP:993574ec685453dca70ab7dd8c8cebce") == 0);
    CHECK(auth_purpose_valid("ftp:993574ec685453dca70ab7dd8c8cebce0") == 0);
    CHECK(auth_purpose_valid(" sftp:993574ec685453dca70ab7dd8c8cebce") == 0);
    CHECK(auth_purpose_valid("sftp:") == 0);
    CHECK(auth_purpose_valid("") == 0);
    CHECK(auth_purpose_valid(NULL) == 0);
}

/* ---- proof of work ------------------------------------------------------- */

static void test_pow(void)
{
    uint8_t nonce[16];
    const char *purpose = "sftp:993574ec685453dca70ab7dd8c8cebce";
    const int d = 10;
    uint64_t exact = UINT64_MAX, less = UINT64_MAX;

    for (int i = 0; i < 16; i++)
        nonce[i] = (uint8_t)i;

    /* Vector from Python's hashlib (the integration client's solver):
     * the smallest answer with 12 bits, and one above 2^32. */
    CHECK(auth_pow_ok(nonce, purpose, 549, 12) == 1);
    CHECK(leading_zero_bits(nonce, purpose, 549) == 12);
    for (uint64_t a = 0; a < 549; a++)
        if (auth_pow_ok(nonce, purpose, a, 12))
            CHECK(!"an answer below 549 passed 12 bits");
    CHECK(auth_pow_ok(nonce, purpose, 1099511628436ull, 10) == 1);

    /* Boundaries: an answer with exactly d zero bits passes d, fails d+1;
     * one with exactly d-1 fails d. */
    for (uint64_t a = 0; a < 10000000 && (exact == UINT64_MAX || less == UINT64_MAX); a++) {
        int z = leading_zero_bits(nonce, purpose, a);
        if (z == d && exact == UINT64_MAX)
            exact = a;
        if (z == d - 1 && less == UINT64_MAX)
            less = a;
    }
    CHECK(exact != UINT64_MAX && less != UINT64_MAX);
    CHECK(auth_pow_ok(nonce, purpose, exact, d) == 1);
    CHECK(auth_pow_ok(nonce, purpose, exact, d + 1) == 0);
    CHECK(auth_pow_ok(nonce, purpose, exact, d - 1) == 1);
    CHECK(auth_pow_ok(nonce, purpose, less, d) == 0);
    CHECK(auth_pow_ok(nonce, purpose, less, d - 1) == 1);

    /* The answer binds nonce and purpose: agreement with an independent
     * implementation over many nonces, purposes, answers and difficulties. */
    int agree = 1;
    for (uint64_t a = 0; a < 3000; a++) {
        uint8_t n2[16];
        const char *p2 = a % 2 ? purpose : "sftp:27f9c6aaa91efb950ca85076e45d7acb";
        memcpy(n2, nonce, 16);
        n2[a % 16] ^= (uint8_t)(a >> 4);
        int bits = (int)(a % 13);
        if (auth_pow_ok(n2, p2, a * 2654435761u, bits) !=
            (leading_zero_bits(n2, p2, a * 2654435761u) >= bits))
            agree = 0;
    }
    CHECK(agree);

    CHECK(auth_pow_ok(nonce, purpose, 0, 0) == 1);
    CHECK(auth_pow_ok(nonce, purpose, 0, 257) == 0);
    CHECK(auth_pow_ok(NULL, purpose, 0, 0) == 0);
    CHECK(auth_pow_ok(nonce, NULL, 0, 0) == 0);
}

/* ---- JWT ------------------------------------------------------------------ */

static void test_jwt_roundtrip(void)
{
    const char *purpose = "sftp:993574ec685453dca70ab7dd8c8cebce";
    char tok[AUTH_JWT_MAX], tok2[AUTH_JWT_MAX];
    struct jwt_claims c;
    time_t now = 1700000000;

    CHECK(auth_jwt_sign(key, sizeof(key), fresh_jti(), purpose, now, 600, tok, sizeof(tok)) == 0);
    CHECK(strncmp(tok, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.", 37) == 0);
    CHECK(strchr(tok, '=') == NULL);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == 0);
    CHECK_STR(c.purpose, purpose);
    CHECK(c.iat == now && c.exp == now + 600);
    CHECK(strlen(c.jti) == 36 && c.jti[14] == '4' && strchr("89ab", c.jti[19]));
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now + 599, &c) == 0);
    /* Expired at exp. */
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now + 600, &c) == -ETIMEDOUT);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now + 100000, &c) == -ETIMEDOUT);
    /* Wrong key. */
    CHECK(auth_jwt_verify(other_key, sizeof(other_key), tok, now, &c) == -EPERM);
    CHECK(auth_jwt_verify(key, 31, tok, now, &c) == -EPERM);

    /* Each cookie carries the id it was given, and fresh ids differ. */
    char jti[AUTH_UUID_LEN + 1];
    CHECK(auth_uuid_new(jti) == 0);
    CHECK(auth_jwt_sign(key, sizeof(key), jti, purpose, now, 600, tok2, sizeof(tok2)) == 0);
    struct jwt_claims c2;
    CHECK(auth_jwt_verify(key, sizeof(key), tok2, now, &c2) == 0);
    CHECK_STR(c2.jti, jti);
    CHECK(strcmp(c.jti, c2.jti) != 0);
    CHECK(auth_jwt_sign(key, sizeof(key), NULL, purpose, now, 600, tok, sizeof(tok)) == -EINVAL);
    CHECK(auth_jwt_sign(key, sizeof(key), "not-a-uuid", purpose, now, 600, tok,
                        sizeof(tok)) == -EINVAL);
    CHECK(auth_jwt_sign(key, sizeof(key), "6F1C1F0E-2B7A-4C61-9D2E-1A2B3C4D5E6F", purpose, now,
                        600, tok, sizeof(tok)) == -EINVAL);

    /* Sign: arguments and buffer size. */
    CHECK(auth_jwt_sign(key, 0, fresh_jti(), purpose, now, 600, tok, sizeof(tok)) == -EINVAL);
    CHECK(auth_jwt_sign(key, sizeof(key), fresh_jti(), "sftp:nope", now, 600, tok, sizeof(tok)) == -EINVAL);
    CHECK(auth_jwt_sign(key, sizeof(key), fresh_jti(), purpose, now, 0, tok, sizeof(tok)) == -EINVAL);
    CHECK(auth_jwt_sign(key, sizeof(key), fresh_jti(), purpose, now, 600, tok, 100) == -ENOSPC);
    CHECK(auth_jwt_sign(key, sizeof(key), fresh_jti(), purpose, now, 600, tok, strlen(tok2)) == -ENOSPC);
    CHECK(auth_jwt_sign(key, sizeof(key), fresh_jti(), purpose, now, 600, tok, strlen(tok2) + 1) == 0);
}

static void test_jwt_tamper(void)
{
    const char *purpose = "sftp:993574ec685453dca70ab7dd8c8cebce";
    char tok[AUTH_JWT_MAX], bad[AUTH_JWT_MAX * 2], part[512];
    struct jwt_claims c;
    time_t now = 1700000000;

    CHECK(auth_jwt_sign(key, sizeof(key), fresh_jti(), purpose, now, 600, tok, sizeof(tok)) == 0);
    char *dot1 = strchr(tok, '.'), *dot2 = strrchr(tok, '.');

    /* Tampered payload: a later exp under the old signature. */
    const char *forged = "{\"jti\":\"00000000-0000-4000-8000-000000000000\","
                         "\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\","
                         "\"iat\":1700000000,\"exp\":1900000000}";
    b64url(forged, strlen(forged), part);
    snprintf(bad, sizeof(bad), "%.*s.%s%s", (int)(dot1 - tok), tok, part, dot2);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EPERM);

    /* One payload character changed. */
    strcpy(bad, tok);
    bad[dot1 - tok + 5] = bad[dot1 - tok + 5] == 'A' ? 'B' : 'A';
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EPERM);

    /* One signature character changed. */
    strcpy(bad, tok);
    bad[dot2 - tok + 1] = bad[dot2 - tok + 1] == 'A' ? 'B' : 'A';
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EPERM);

    /* A change late in the signature: every MAC byte is compared. */
    strcpy(bad, tok);
    bad[dot2 - tok + 40] = bad[dot2 - tok + 40] == 'A' ? 'B' : 'A';
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EPERM);

    /* Signature cut short, empty, or made longer. */
    strcpy(bad, tok);
    bad[strlen(bad) - 3] = '\0';  /* 40 characters: 30 bytes, canonical */
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EPERM);
    snprintf(bad, sizeof(bad), "%.*s.", (int)(dot2 - tok), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EPERM);
    snprintf(bad, sizeof(bad), "%sAAAA", tok);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EPERM);

    /* The signature's last character with a non-zero unused bit: another
     * encoding of the same bytes, refused as malformed. 32 bytes take 43
     * characters, the last of which carries 4 bits and 2 unused ones. */
    const char *alpha =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    strcpy(bad, tok);
    char *last = bad + strlen(bad) - 1;
    CHECK(strlen(dot2 + 1) == 43);
    *last = alpha[(strchr(alpha, *last) - alpha) ^ 1];
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
}

static void test_jwt_alg(void)
{
    const char *payload =
        "{\"jti\":\"6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f\","
        "\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\","
        "\"iat\":1700000000,\"exp\":1700000600}";
    char tok[2048];
    struct jwt_claims c;
    time_t now = 1700000000;

    /* Our own format, made independently: accepted. */
    make_token(key, sizeof(key), "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload,
               EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == 0);
    CHECK_STR(c.jti, "6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f");
    /* typ is optional; other header members are ignored. */
    make_token(key, sizeof(key), "{\"alg\":\"HS256\"}", payload, EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == 0);
    make_token(key, sizeof(key), "{\"alg\":\"HS256\",\"kid\":\"1\"}", payload,
               EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == 0);

    /* alg "none", without and with a signature. */
    make_token(key, sizeof(key), "{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, NULL, tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EPERM);
    make_token(key, sizeof(key), "{\"alg\":\"none\",\"typ\":\"JWT\"}", payload,
               EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EPERM);
    make_token(key, sizeof(key), "{\"alg\":\"None\"}", payload, NULL, tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EPERM);
    /* Other algorithms, even correctly signed with the key. */
    make_token(key, sizeof(key), "{\"alg\":\"HS512\",\"typ\":\"JWT\"}", payload,
               EVP_sha512(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EPERM);
    make_token(key, sizeof(key), "{\"alg\":\"HS384\",\"typ\":\"JWT\"}", payload,
               EVP_sha384(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EPERM);
    /* The header must say HS256 even when the MAC is HS256. */
    make_token(key, sizeof(key), "{\"alg\":\"HS512\",\"typ\":\"JWT\"}", payload,
               EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EPERM);
    make_token(key, sizeof(key), "{\"alg\":\"hs256\",\"typ\":\"JWT\"}", payload,
               EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EPERM);
    make_token(key, sizeof(key), "{\"alg\":\"RS256\",\"typ\":\"JWT\"}", payload,
               EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EPERM);
    make_token(key, sizeof(key), "{\"typ\":\"JWT\"}", payload, EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EPERM);
    make_token(key, sizeof(key), "{\"alg\":256}", payload, EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EPERM);
    make_token(key, sizeof(key), "{\"alg\":\"HS256\",\"crit\":[\"b64\"]}", payload,
               EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EPERM);
    /* A duplicate member could hide "none" from one parser and not another. */
    make_token(key, sizeof(key), "{\"alg\":\"none\",\"alg\":\"HS256\"}", payload,
               EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EBADMSG);
    make_token(key, sizeof(key), "{\"alg\":\"HS256\",\"typ\":\"JWS\"}", payload,
               EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EBADMSG);
    /* The header is not a JSON object. */
    make_token(key, sizeof(key), "[\"HS256\"]", payload, EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EBADMSG);
    make_token(key, sizeof(key), "{\"alg\":\"HS256\"", payload, EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EBADMSG);
    make_token(key, sizeof(key), "HS256", payload, EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == -EBADMSG);
}

static void test_jwt_claims(void)
{
    static const char *const bad_payloads[] = {
        /* missing or ill-typed claims */
        "{\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\",\"iat\":1,\"exp\":1800000000}",
        "{\"jti\":\"x\",\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\",\"iat\":1,\"exp\":1800000000}",
        "{\"jti\":\"6F1C1F0E-2B7A-4C61-9D2E-1A2B3C4D5E6F\",\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\",\"iat\":1,\"exp\":1800000000}",
        "{\"jti\":7,\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\",\"iat\":1,\"exp\":1800000000}",
        "{\"jti\":\"6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f\",\"iat\":1,\"exp\":1800000000}",
        "{\"jti\":\"6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f\",\"purpose\":\"sftp:x\",\"iat\":1,\"exp\":1800000000}",
        "{\"jti\":\"6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f\",\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\",\"exp\":1800000000}",
        "{\"jti\":\"6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f\",\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\",\"iat\":\"1\",\"exp\":1800000000}",
        "{\"jti\":\"6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f\",\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\",\"iat\":1}",
        "{\"jti\":\"6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f\",\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\",\"iat\":1,\"exp\":1.8e9}",
        "{\"jti\":\"6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f\",\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\",\"iat\":1,\"exp\":\"1800000000\"}",
        "{\"jti\":\"6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f\",\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\",\"iat\":1,\"exp\":1800000000,\"exp\":1900000000}",
        "[1,2,3]",
        "null",
        "{",
    };
    char tok[2048];
    struct jwt_claims c;
    time_t now = 1700000000;
    const char *hdr = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

    for (size_t i = 0; i < sizeof(bad_payloads) / sizeof(bad_payloads[0]); i++) {
        make_token(key, sizeof(key), hdr, bad_payloads[i], EVP_sha256(), tok);
        int rc = auth_jwt_verify(key, sizeof(key), tok, now, &c);
        if (rc != -EBADMSG)
            fprintf(stderr, "payload %zu: %d\n", i, rc);
        CHECK(rc == -EBADMSG);
    }
    /* Extra claims are ignored. */
    make_token(key, sizeof(key), hdr,
               "{\"jti\":\"6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f\","
               "\"purpose\":\"sftp:993574ec685453dca70ab7dd8c8cebce\","
               "\"iat\":1,\"exp\":1800000000,\"sub\":\"x\"}",
               EVP_sha256(), tok);
    CHECK(auth_jwt_verify(key, sizeof(key), tok, now, &c) == 0);
    CHECK(c.iat == 1 && c.exp == 1800000000);
}

static void test_jwt_malformed(void)
{
    const char *purpose = "sftp:993574ec685453dca70ab7dd8c8cebce";
    char tok[AUTH_JWT_MAX], bad[AUTH_JWT_MAX * 3];
    struct jwt_claims c;
    time_t now = 1700000000;

    CHECK(auth_jwt_sign(key, sizeof(key), fresh_jti(), purpose, now, 600, tok, sizeof(tok)) == 0);
    char *dot1 = strchr(tok, '.'), *dot2 = strrchr(tok, '.');
    int hl = (int)(dot1 - tok), pl = (int)(dot2 - dot1 - 1);
    const char *h = tok, *p = dot1 + 1, *s = dot2 + 1;

    static const char *const junk[] = {
        "", ".", "..", "...", "a", "a.b", "a.b.c.d", "abc", "eyJ", "eyJ.eyJ",
    };
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++)
        CHECK(auth_jwt_verify(key, sizeof(key), junk[i], now, &c) == -EBADMSG);
    CHECK(auth_jwt_verify(key, sizeof(key), NULL, now, &c) == -EBADMSG);

    /* Two parts, four parts, empty parts. */
    snprintf(bad, sizeof(bad), "%.*s.%.*s", hl, h, pl, p);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    snprintf(bad, sizeof(bad), "%s.%s", tok, s);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    snprintf(bad, sizeof(bad), "%s.", tok);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    snprintf(bad, sizeof(bad), ".%.*s.%s", pl, p, s);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    snprintf(bad, sizeof(bad), "%.*s..%s", hl, h, s);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    /* Padding, standard base64 characters, blanks, other junk. */
    snprintf(bad, sizeof(bad), "%s=", tok);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    snprintf(bad, sizeof(bad), "%.*s=.%.*s.%s", hl, h, pl, p, s);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    strcpy(bad, tok);
    bad[dot2 - tok + 3] = '+';
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    strcpy(bad, tok);
    bad[dot1 - tok + 3] = '/';
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    snprintf(bad, sizeof(bad), " %s", tok);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    snprintf(bad, sizeof(bad), "%s ", tok);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    snprintf(bad, sizeof(bad), "%.*s.%.*s\n.%s", hl, h, pl, p, s);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    /* A part whose length is 1 mod 4 cannot be base64. */
    snprintf(bad, sizeof(bad), "%.*sA.%.*s.%s", hl, h, pl, p, s);
    CHECK(hl % 4 != 0 || auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    snprintf(bad, sizeof(bad), "A.%.*s.%s", pl, p, s);
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
    /* Too long. */
    memset(bad, 'A', AUTH_JWT_MAX * 2);
    bad[100] = '.';
    bad[200] = '.';
    bad[AUTH_JWT_MAX * 2] = '\0';
    CHECK(auth_jwt_verify(key, sizeof(key), bad, now, &c) == -EBADMSG);
}

/* ---- challenge store ----------------------------------------------------- */

static void test_challenges(void)
{
    struct auth_challenges *s = auth_challenges_new();
    struct auth_challenge a, b, got;
    const char *purpose = "sftp:993574ec685453dca70ab7dd8c8cebce";
    int64_t now = 1000000;  /* CLOCK_MONOTONIC milliseconds */

    CHECK(s != NULL);
    CHECK(auth_challenge_issue(s, purpose, "203.0.113.5", now, &a) == 0);
    CHECK(auth_challenge_issue(s, purpose, "203.0.113.5", now, &b) == 0);
    CHECK(strlen(a.nonce_id) == 36 && a.nonce_id[14] == '4');
    CHECK(strcmp(a.nonce_id, b.nonce_id) != 0);
    CHECK(memcmp(a.nonce, b.nonce, 16) != 0);
    CHECK(AUTH_CHALLENGE_TTL_MS == 60000);  /* PROTOCOL §1.1: 60 s */
    CHECK(a.expires_ms == now + AUTH_CHALLENGE_TTL_MS);
    CHECK_STR(a.client_ip, "203.0.113.5");
    CHECK_STR(a.purpose, purpose);

    /* Single use. */
    CHECK(auth_challenge_take(s, a.nonce_id, now + 1, &got) == 0);
    CHECK(memcmp(&got, &a, sizeof(a)) == 0);
    CHECK(auth_challenge_take(s, a.nonce_id, now + 1, &got) == -ENOENT);
    /* Valid until 1 ms before 60 s, gone at exactly 60 s and after. */
    CHECK(auth_challenge_take(s, b.nonce_id, now + AUTH_CHALLENGE_TTL_MS - 1, &got) == 0);
    CHECK(auth_challenge_issue(s, purpose, "203.0.113.5", now, &a) == 0);
    CHECK(auth_challenge_take(s, a.nonce_id, now + AUTH_CHALLENGE_TTL_MS, &got) == -ETIMEDOUT);
    CHECK(auth_challenge_take(s, a.nonce_id, now + 1, &got) == -ENOENT);
    CHECK(auth_challenge_issue(s, purpose, "203.0.113.5", now, &a) == 0);
    CHECK(auth_challenge_take(s, a.nonce_id, now + 61000, &got) == -ETIMEDOUT);

    CHECK(auth_challenge_take(s, "6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f", now, &got) == -ENOENT);
    CHECK(auth_challenge_take(s, "", now, &got) == -ENOENT);
    CHECK(auth_challenge_take(s, "x", now, &got) == -ENOENT);
    CHECK(auth_challenge_take(s, NULL, now, &got) == -ENOENT);

    CHECK(auth_challenge_issue(s, "sftp:bad", "203.0.113.5", now, &a) == -EINVAL);
    CHECK(auth_challenge_issue(s, NULL, "203.0.113.5", now, &a) == -EINVAL);
    CHECK(auth_challenge_issue(s, purpose, NULL, now, &a) == -EINVAL);
    char longip[100];
    memset(longip, '1', sizeof(longip) - 1);
    longip[sizeof(longip) - 1] = '\0';
    CHECK(auth_challenge_issue(s, purpose, longip, now, &a) == -EINVAL);

    /* Capacity: the oldest makes room for the newest. */
    struct auth_challenge first, second, newest;
    CHECK(auth_challenge_issue(s, purpose, "1.1.1.1", now, &first) == 0);
    CHECK(auth_challenge_issue(s, purpose, "1.1.1.2", now, &second) == 0);
    for (int i = 0; i < AUTH_CHALLENGE_CAPACITY - 1; i++)
        CHECK(auth_challenge_issue(s, purpose, "1.1.1.3", now + 1, &newest) == 0);
    CHECK(auth_challenge_take(s, first.nonce_id, now + 1, &got) == -ENOENT);
    CHECK(auth_challenge_take(s, second.nonce_id, now + 1, &got) == 0);
    CHECK_STR(got.client_ip, "1.1.1.2");
    CHECK(auth_challenge_take(s, newest.nonce_id, now + 1, &got) == 0);
    /* Many rounds over the ring stay consistent. */
    for (int i = 0; i < 3 * AUTH_CHALLENGE_CAPACITY; i++) {
        CHECK(auth_challenge_issue(s, purpose, "1.1.1.4", now + 2, &newest) == 0);
        if (i % 3 == 0)
            CHECK(auth_challenge_take(s, newest.nonce_id, now + 2, &got) == 0);
    }
    CHECK(auth_challenge_take(s, newest.nonce_id, now + 2, &got) == 0);
    auth_challenges_free(s);
    auth_challenges_free(NULL);
}

/* ---- used cookie ids ------------------------------------------------------ */

static const char *jti_n(unsigned n)
{
    static char buf[40];

    snprintf(buf, sizeof(buf), "00000000-0000-4000-8000-%012x", n);
    return buf;
}

static void test_jtis(void)
{
    struct auth_jtis *s = auth_jtis_new(AUTH_JTI_CAPACITY);
    time_t now = 5000;

    CHECK(s != NULL);
    CHECK(auth_jti_use(s, "6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f", now + 600, now) == 0);
    CHECK(auth_jti_use(s, "6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f", now + 600, now) == -EEXIST);
    CHECK(auth_jti_use(s, "6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f", now + 600, now + 500) == -EEXIST);
    CHECK(auth_jtis_count(s) == 1);
    CHECK(auth_jti_use(s, "not-a-uuid", now + 600, now) == -EINVAL);
    CHECK(auth_jti_use(s, NULL, now + 600, now) == -EINVAL);

    /* Fill it with ids issued elsewhere (another instance): a full store
     * refuses an unknown one rather than forget a live one. */
    for (unsigned i = 1; i < AUTH_JTI_CAPACITY; i++)
        CHECK(auth_jti_use(s, jti_n(i), now + 600 + (i % 7), now) == 0);
    CHECK(auth_jtis_count(s) == AUTH_JTI_CAPACITY);
    CHECK(auth_jti_use(s, jti_n(AUTH_JTI_CAPACITY), now + 600, now) == -ENOSPC);
    CHECK(auth_jti_use(s, jti_n(AUTH_JTI_CAPACITY), now + 600, now + 599) == -ENOSPC);
    CHECK(auth_jti_reserve(s, jti_n(AUTH_JTI_CAPACITY), now + 600, now) == -ENOSPC);
    /* Replays are still seen as replays. */
    CHECK(auth_jti_use(s, jti_n(5), now + 600, now) == -EEXIST);
    /* Once some cookies have expired, their ids make room. */
    CHECK(auth_jti_use(s, jti_n(AUTH_JTI_CAPACITY), now + 1200, now + 601) == 0);
    CHECK(auth_jtis_count(s) < AUTH_JTI_CAPACITY);
    CHECK(auth_jti_use(s, jti_n(7), now + 1200, now + 601) == 0);  /* i%7==0 expired */
    CHECK(auth_jti_use(s, jti_n(8), now + 1200, now + 601) == 0);   /* exp now+601 */
    CHECK(auth_jti_use(s, jti_n(13), now + 1200, now + 601) == -EEXIST);  /* live */
    CHECK(auth_jti_use(s, "6f1c1f0e-2b7a-4c61-9d2e-1a2b3c4d5e6f", now + 1200, now + 601) == 0);
    auth_jtis_free(s);
    auth_jtis_free(NULL);

    /* The capacity is a setting, within its range. */
    CHECK(auth_jtis_new(0) == NULL);
    CHECK(auth_jtis_new(AUTH_JTI_CAPACITY_MAX + 1) == NULL);
    s = auth_jtis_new(AUTH_JTI_CAPACITY_MIN);
    CHECK(s != NULL);
    auth_jtis_free(s);
}

/* Ids reserved when their cookie is issued: a full store refuses to issue
 * more, and never refuses the one use of a cookie it issued. */
static void test_jtis_reserved(void)
{
    enum { CAP = 16 };
    struct auth_jtis *s = auth_jtis_new(CAP);
    time_t now = 5000;

    CHECK(s != NULL);
    for (unsigned i = 0; i < CAP; i++)
        CHECK(auth_jti_reserve(s, jti_n(i), now + 600 + i, now) == 0);
    CHECK(auth_jtis_count(s) == CAP);
    CHECK(auth_jti_reserve(s, jti_n(0), now + 600, now) == -EEXIST);
    CHECK(auth_jti_reserve(s, "not-a-uuid", now + 600, now) == -EINVAL);
    /* Full: issuing is refused, also just before the first id expires. */
    CHECK(auth_jti_reserve(s, jti_n(100), now + 600, now) == -ENOSPC);
    CHECK(auth_jti_reserve(s, jti_n(100), now + 600, now + 599) == -ENOSPC);
    /* Each issued cookie is used once, full store or not; then it is a
     * replay. A cookie never issued here finds no room. */
    for (unsigned i = 0; i < CAP; i++) {
        CHECK(auth_jti_use(s, jti_n(i), now + 600 + i, now + 10) == 0);
        CHECK(auth_jti_use(s, jti_n(i), now + 600 + i, now + 10) == -EEXIST);
    }
    CHECK(auth_jtis_count(s) == CAP);
    CHECK(auth_jti_use(s, jti_n(101), now + 600, now + 10) == -ENOSPC);
    CHECK(auth_jti_reserve(s, jti_n(100), now + 600, now + 10) == -ENOSPC);
    /* Expired ids (exp now+600 and now+601) free their slots: two more
     * cookies can be issued, not three. */
    CHECK(auth_jti_reserve(s, jti_n(100), now + 1200, now + 601) == 0);
    CHECK(auth_jti_reserve(s, jti_n(102), now + 1200, now + 601) == 0);
    CHECK(auth_jti_reserve(s, jti_n(103), now + 1200, now + 601) == -ENOSPC);
    CHECK(auth_jti_use(s, jti_n(100), now + 1200, now + 601) == 0);
    CHECK(auth_jti_use(s, jti_n(2), now + 602, now + 601) == -EEXIST);  /* still live */

    /* A reservation given back (the cookie was never sent) frees its slot;
     * a used id is never given back. */
    auth_jti_unreserve(s, jti_n(102));
    auth_jti_unreserve(s, jti_n(100));
    auth_jti_unreserve(s, NULL);
    CHECK(auth_jti_use(s, jti_n(100), now + 1200, now + 601) == -EEXIST);
    CHECK(auth_jti_reserve(s, jti_n(103), now + 1200, now + 601) == 0);
    CHECK(auth_jtis_count(s) == CAP);

    /* Everything expired: the store empties as it is asked again. */
    for (unsigned i = 200; i < 200 + CAP; i++)
        CHECK(auth_jti_reserve(s, jti_n(i), now + 5000, now + 2000) == 0);
    CHECK(auth_jtis_count(s) == CAP);
    auth_jtis_free(s);
}

int main(void)
{
    test_purpose();
    test_pow();
    test_jwt_roundtrip();
    test_jwt_tamper();
    test_jwt_alg();
    test_jwt_claims();
    test_jwt_malformed();
    test_challenges();
    test_jtis();
    test_jtis_reserved();
    CHECK_DONE();
}
