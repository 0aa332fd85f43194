/* sshsig: the `sign` extension's pure functions. Public key lines as
 * ssh-keygen writes them (fingerprints as ssh-keygen -l prints them), every
 * refusal's message, the userauth data check, ECDSA's P1363 -> mpint
 * conversion at its edges, the signature blob, and strict base64. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "sshsig.h"

/* Made with ssh-keygen -t ... -C unit-...; fingerprints from ssh-keygen -lf. */
static const char ed25519_line[] =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKihpEuMZu/gnN/CcOgDUnrRXU/Fo5F1SaBrrKkFpW7n unit-ed25519";
static const char ed25519_fp[] = "SHA256:UQejM73YEp3hCjSkuGVI4Bdse7/gr0l3NnkYh8In8AU";
static const char p256_line[] =
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBElQAN2ywZP339TBr"
    "sjrnjdFcxm34kneduCWrdF9RtqIenNvkMIHFYn8AZRfZYG5zxXC6cr4JJlsUJjbIZg/jxk= unit-ecdsab256";
static const char p256_fp[] = "SHA256:yAu2j28wS8aSFLiHwVfgyS1XIl0sPQsxfRnUpYyCOuc";
static const char p384_line[] =
    "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBC0GvJxMwMenlT/mZG"
    "kCDrO/hTLr/0ileEG5t18Sj8fvzTGn7kOf/9ZqE4UMi5mGFIGT/4pI2R3sNmjaUDoKCNVEutNRgJlvQquWfaSGigOJ"
    "Zw713Jh7c/nX8O0MZeTszw== unit-ecdsab384";
static const char p384_fp[] = "SHA256:+dZgNgECxN+J3Pu0ytlIg7e3qZnTCfUQEiGe1Io4RoI";
static const char rsa_line[] =
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCc01hdbO+STQlvjUhQMtw6HR97CsvN3cUnq9gCrYQLVBXbHNTVY4"
    "UOS8Nl0iW/Hn+7zv5v1fKrUK9TgkYbntI7JYaWuW3PY6R4Cy076dkxqcANGOMDgEfKmLNSa6sSGtjmRwzRN1MKU75q"
    "cyV0RUl5d4+P78j/iCNFZuzejC1CDJp+eAjIig5P/eWHfuS3JClT2gWUlm2zb+qBBoyXrSO+PIXYHmbgdExhpQSuTu"
    "0l+aWfFuDanCD0m+ttR8X2xUquMCPWvggqJmVX0sIabM0cm+p6V/jQB2ERkQ7YPVbxvLL4t3RkCrC15iYU1oLvbhPJ"
    "mFIv5nSbvzQYuoXyhX97 unit-rsab2048";
static const char rsa_fp[] = "SHA256:iYHuA4Dn+N5N4oqs1bpL5RilXF1l6pF/RyFDD2XUhuU";
static const char p521_line[] =
    "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBADmZoH/BJB2ykwtAg"
    "tDgr7sMTGN3E4f17BGZSGn9yG9VdxaBInE3H3OTnAQy+GL84Uw9KtRbT/DaY/NWi/i42ge5gEdq+b4/dU2NIOX4RLU"
    "0bbVPI5/p8l6J1YW+uQzx7GqbbEawwgqCd8/kFarNajZNArLspHlho8PrQKHNaAMgrzi5A== unit-ecdsab521";

static char err[512];

/* A growing SSH wire buffer for building test data. */
struct wb {
    uint8_t b[8192];
    size_t n;
};

static void put_u32(struct wb *w, uint32_t v)
{
    w->b[w->n++] = (uint8_t)(v >> 24);
    w->b[w->n++] = (uint8_t)(v >> 16);
    w->b[w->n++] = (uint8_t)(v >> 8);
    w->b[w->n++] = (uint8_t)v;
}

static void put_bytes(struct wb *w, const void *p, size_t n)
{
    put_u32(w, (uint32_t)n);
    memcpy(w->b + w->n, p, n);
    w->n += n;
}

static void put_str(struct wb *w, const char *s)
{
    put_bytes(w, s, strlen(s));
}

static void test_parse_ok(void)
{
    static const struct {
        const char *line, *name, *fp;
        enum sshsig_type type;
        size_t sig_len;
    } ok[] = {
        {ed25519_line, "ssh-ed25519", ed25519_fp, SSHSIG_ED25519, 64},
        {p256_line, "ecdsa-sha2-nistp256", p256_fp, SSHSIG_ECDSA_P256, 64},
        {p384_line, "ecdsa-sha2-nistp384", p384_fp, SSHSIG_ECDSA_P384, 96},
        {rsa_line, "ssh-rsa", rsa_fp, SSHSIG_RSA, 256},
    };
    struct sshsig_key k;
    char buf[4096];

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        CHECK(sshsig_parse_pubkey(ok[i].line, &k, err, sizeof(err)) == 0);
        CHECK(k.type == ok[i].type);
        CHECK_STR(k.name, ok[i].name);
        CHECK_STR(k.fingerprint, ok[i].fp);
        CHECK(k.sig_len == ok[i].sig_len);
        /* Without a comment, with leading blanks and a pasted line break. */
        snprintf(buf, sizeof(buf), "  %.*s\r\n", (int)strcspn(ok[i].line + strlen(ok[i].name) + 1, " ") +
                 (int)strlen(ok[i].name) + 1, ok[i].line);
        CHECK(sshsig_parse_pubkey(buf, &k, err, sizeof(err)) == 0);
        CHECK_STR(k.fingerprint, ok[i].fp);
    }
}

/* A line for `blob` under `type`, base64 made by the module itself. */
static void line_for(char *out, size_t n, const char *type, const struct wb *blob)
{
    char *b64 = sshsig_b64encode(blob->b, blob->n);

    snprintf(out, n, "%s %s x", type, b64 ? b64 : "");
    free(b64);
}

static void test_parse_refused(void)
{
    static const struct {
        const char *line, *err;
    } bad[] = {
        {"", "unsupported public key: expected an authorized_keys line \"type base64-key [comment]\""},
        {"ssh-ed25519", "unsupported public key: expected an authorized_keys line \"type base64-key [comment]\""},
        {"ssh-dss AAAAB3NzaC1kc3MAAACBAIDuNlKF24Dg unit-dsa",
         "unsupported public key type \"ssh-dss\": use ssh-ed25519, ecdsa-sha2-nistp256, "
         "ecdsa-sha2-nistp384 or ssh-rsa"},
        {p521_line, "unsupported public key type \"ecdsa-sha2-nistp521\": use ssh-ed25519, "
         "ecdsa-sha2-nistp256, ecdsa-sha2-nistp384 or ssh-rsa"},
        {"from=\"10.0.0.1\" ssh-ed25519 AAAA", "unsupported public key type \"from=\"10.0.0.1\"\": "
         "use ssh-ed25519, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384 or ssh-rsa"},
        {"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
         "unsupported public key: this is a private key; send the public key line (the .pub "
         "file), the private key stays with you"},
        {"ssh-ed25519 AAAA*C3 x", "unsupported public key: the base64 key data is damaged"},
        {"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKihpEuMZu/gnN/CcOgDUnrRXU/Fo5F1SaBrrKkFpW7 x",
         "unsupported public key: the base64 key data is damaged"},
        {"ssh-ed25519 A x\nssh-ed25519 B y", "unsupported public key: expected one authorized_keys line"},
        /* An Ed25519 blob presented as ECDSA, and the other way round. */
        {"ecdsa-sha2-nistp256 AAAAC3NzaC1lZDI1NTE5AAAAIKihpEuMZu/gnN/CcOgDUnrRXU/Fo5F1SaBrrKkFpW7n",
         "unsupported public key: the key data is not a ecdsa-sha2-nistp256 key"},
        {"ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIKihpEuMZu/gnN/CcOgDUnrRXU/Fo5F1SaBrrKkFpW7n",
         "unsupported public key: the key data is not a ssh-rsa key"},
    };
    struct sshsig_key k;
    struct wb w = {.n = 0};
    char line[12000];
    uint8_t n[300];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        CHECK(sshsig_parse_pubkey(bad[i].line, &k, err, sizeof(err)) == -1);
        CHECK_STR(err, bad[i].err);
        CHECK(k.sig_len == 0 && k.blob_len == 0);
    }

    /* A P-384 curve name inside a P-256 key; a short point; trailing bytes. */
    put_str(&w, "ecdsa-sha2-nistp256");
    put_str(&w, "nistp384");
    memset(n, 4, 65);
    put_bytes(&w, n, 65);
    line_for(line, sizeof(line), "ecdsa-sha2-nistp256", &w);
    CHECK(sshsig_parse_pubkey(line, &k, err, sizeof(err)) == -1);
    CHECK_STR(err, "unsupported public key: the key data is not a ecdsa-sha2-nistp256 key");
    w.n = 0;
    put_str(&w, "ssh-ed25519");
    put_bytes(&w, n, 31);
    line_for(line, sizeof(line), "ssh-ed25519", &w);
    CHECK(sshsig_parse_pubkey(line, &k, err, sizeof(err)) == -1);
    CHECK_STR(err, "unsupported public key: the ssh-ed25519 key data is damaged");
    w.n = 0;
    put_str(&w, "ssh-ed25519");
    put_bytes(&w, n, 32);
    put_u32(&w, 0);
    line_for(line, sizeof(line), "ssh-ed25519", &w);
    CHECK(sshsig_parse_pubkey(line, &k, err, sizeof(err)) == -1);
    CHECK_STR(err, "unsupported public key: the ssh-ed25519 key data is damaged");

    /* RSA: 1024 bits is the floor (OpenSSH's RequiredRSASize). */
    for (size_t bits = 1016; bits <= 1024; bits += 8) {
        w.n = 0;
        put_str(&w, "ssh-rsa");
        put_bytes(&w, "\x01\x00\x01", 3);
        memset(n, 0xc5, sizeof(n));
        n[0] = 0;  /* mpint: positive */
        put_bytes(&w, n, bits / 8 + 1);
        line_for(line, sizeof(line), "ssh-rsa", &w);
        int rc = sshsig_parse_pubkey(line, &k, err, sizeof(err));
        CHECK(rc == (bits < SSHSIG_RSA_MIN_BITS ? -1 : 0));
        if (rc < 0)
            CHECK_STR(err, "unsupported public key: not a usable RSA key (at least 1024 bits)");
        else
            CHECK(k.sig_len == 128);
    }

    /* Over the line cap. */
    memset(line, 'A', SSHSIG_MAX_LINE_BYTES + 1);
    memcpy(line, "ssh-rsa ", 8);
    line[SSHSIG_MAX_LINE_BYTES + 1] = '\0';
    CHECK(sshsig_parse_pubkey(line, &k, err, sizeof(err)) == -1);
    CHECK_STR(err, "unsupported public key: the line is too long");
}

/* The data libssh2 hands its signing callback for `k`. */
static void userauth_data(struct wb *w, size_t sid_len, const char *user, const char *alg,
                          const struct sshsig_key *k)
{
    uint8_t sid[64];

    memset(sid, 0x5e, sizeof(sid));
    w->n = 0;
    put_bytes(w, sid, sid_len);
    w->b[w->n++] = 50;
    put_str(w, user);
    put_str(w, "ssh-connection");
    put_str(w, "publickey");
    w->b[w->n++] = 1;
    put_str(w, alg);
    put_bytes(w, k->blob, k->blob_len);
}

static void test_check_data(void)
{
    static const char refused[] = "signature request refused: the data to sign is not this "
                                  "session's public-key authentication";
    struct sshsig_key ed, rsa, other;
    struct wb w;
    const char *alg;

    CHECK(sshsig_parse_pubkey(ed25519_line, &ed, err, sizeof(err)) == 0);
    CHECK(sshsig_parse_pubkey(rsa_line, &rsa, err, sizeof(err)) == 0);
    CHECK(sshsig_parse_pubkey(p256_line, &other, err, sizeof(err)) == 0);

    userauth_data(&w, 32, "alice", "ssh-ed25519", &ed);
    CHECK(sshsig_check_data(&ed, "alice", NULL, 32, w.b, w.n, &alg, err, sizeof(err)) == 0);
    CHECK_STR(alg, "ssh-ed25519");
    /* This very session's id, byte for byte, when the caller knows it. */
    {
        uint8_t sid[32], other_sid[32];
        memset(sid, 0x5e, sizeof(sid));
        memcpy(other_sid, sid, sizeof(sid));
        other_sid[31] ^= 1;
        CHECK(sshsig_check_data(&ed, "alice", sid, 32, w.b, w.n, &alg, err, sizeof(err)) == 0);
        CHECK(sshsig_check_data(&ed, "alice", other_sid, 32, w.b, w.n, &alg, err,
                                sizeof(err)) == SSHSIG_E_DATA);
        CHECK_STR(err, refused);
    }
    /* Any known hash length when the key exchange is unknown. */
    CHECK(sshsig_check_data(&ed, "alice", NULL, 0, w.b, w.n, &alg, err, sizeof(err)) == 0);
    /* Wrong session id length, user, key; cut short; a byte more. */
    CHECK(sshsig_check_data(&ed, "alice", NULL, 48, w.b, w.n, &alg, err, sizeof(err)) == SSHSIG_E_DATA);
    CHECK_STR(err, refused);
    CHECK(alg == NULL);
    CHECK(sshsig_check_data(&ed, "alicE", NULL, 32, w.b, w.n, &alg, err, sizeof(err)) == SSHSIG_E_DATA);
    CHECK(sshsig_check_data(&ed, "alice", NULL, 32, w.b, w.n - 1, &alg, err, sizeof(err)) == SSHSIG_E_DATA);
    w.b[w.n] = 0;
    CHECK(sshsig_check_data(&ed, "alice", NULL, 32, w.b, w.n + 1, &alg, err, sizeof(err)) == SSHSIG_E_DATA);
    for (size_t cut = 0; cut < w.n; cut++)
        CHECK(sshsig_check_data(&ed, "alice", NULL, 32, w.b, cut, &alg, err, sizeof(err)) == SSHSIG_E_DATA);
    userauth_data(&w, 32, "alice", "ecdsa-sha2-nistp256", &other);
    CHECK(sshsig_check_data(&ed, "alice", NULL, 32, w.b, w.n, &alg, err, sizeof(err)) == SSHSIG_E_DATA);
    userauth_data(&w, 32, "alice", "ssh-ed25519", &other);
    CHECK(sshsig_check_data(&ed, "alice", NULL, 32, w.b, w.n, &alg, err, sizeof(err)) == SSHSIG_E_DATA);
    CHECK_STR(err, refused);
    userauth_data(&w, 0, "alice", "ssh-ed25519", &ed);
    CHECK(sshsig_check_data(&ed, "alice", NULL, 0, w.b, w.n, &alg, err, sizeof(err)) == SSHSIG_E_DATA);
    /* Not a userauth request: another message number, service, method. */
    userauth_data(&w, 32, "alice", "ssh-ed25519", &ed);
    w.b[36] = 51;
    CHECK(sshsig_check_data(&ed, "alice", NULL, 32, w.b, w.n, &alg, err, sizeof(err)) == SSHSIG_E_DATA);

    /* RSA: SHA-2 only. */
    userauth_data(&w, 64, "bob", "rsa-sha2-512", &rsa);
    CHECK(sshsig_check_data(&rsa, "bob", NULL, 64, w.b, w.n, &alg, err, sizeof(err)) == 0);
    CHECK_STR(alg, "rsa-sha2-512");
    userauth_data(&w, 20, "bob", "rsa-sha2-256", &rsa);
    CHECK(sshsig_check_data(&rsa, "bob", NULL, 20, w.b, w.n, &alg, err, sizeof(err)) == 0);
    CHECK_STR(alg, "rsa-sha2-256");
    userauth_data(&w, 32, "bob", "ssh-rsa", &rsa);
    CHECK(sshsig_check_data(&rsa, "bob", NULL, 32, w.b, w.n, &alg, err, sizeof(err)) == SSHSIG_E_ALG);
    CHECK_STR(err, "the server accepts RSA keys only with SHA-1 signatures (ssh-rsa); the relay "
                   "asks only for rsa-sha2-256 or rsa-sha2-512");
    CHECK(alg == NULL);

    /* The browser names the one algorithm its RSA CryptoKey can sign. */
    CHECK(sshsig_rsa_prefs(&rsa) != NULL);
    CHECK_STR(sshsig_rsa_prefs(&rsa), "rsa-sha2-512,rsa-sha2-256");
    CHECK(sshsig_set_algorithm(&rsa, "rsa-sha2-256", err, sizeof(err)) == 0);
    CHECK_STR(sshsig_rsa_prefs(&rsa), "rsa-sha2-256");
    userauth_data(&w, 32, "bob", "rsa-sha2-512", &rsa);
    CHECK(sshsig_check_data(&rsa, "bob", NULL, 32, w.b, w.n, &alg, err, sizeof(err)) == SSHSIG_E_DATA);
    userauth_data(&w, 32, "bob", "rsa-sha2-256", &rsa);
    CHECK(sshsig_check_data(&rsa, "bob", NULL, 32, w.b, w.n, &alg, err, sizeof(err)) == 0);
    CHECK_STR(alg, "rsa-sha2-256");
    CHECK(sshsig_set_algorithm(&rsa, "ssh-rsa", err, sizeof(err)) == -1);
    CHECK_STR(err, "unsupported signature algorithm \"ssh-rsa\" for a ssh-rsa key: use "
                   "rsa-sha2-256 or rsa-sha2-512");
    CHECK(rsa.alg == NULL);
    CHECK(sshsig_set_algorithm(&rsa, NULL, err, sizeof(err)) == 0);
    CHECK(sshsig_rsa_prefs(&ed) == NULL);
    CHECK(sshsig_set_algorithm(&ed, "ssh-ed25519", err, sizeof(err)) == 0);
    CHECK(sshsig_set_algorithm(&ed, "rsa-sha2-256", err, sizeof(err)) == -1);
    CHECK_STR(err, "unsupported signature algorithm \"rsa-sha2-256\" for a ssh-ed25519 key: "
                   "use ssh-ed25519");

    /* Session id lengths of libssh2's key exchanges. */
    CHECK(sshsig_kex_hash_len("curve25519-sha256") == 32);
    CHECK(sshsig_kex_hash_len("ecdh-sha2-nistp384") == 48);
    CHECK(sshsig_kex_hash_len("diffie-hellman-group16-sha512") == 64);
    CHECK(sshsig_kex_hash_len("diffie-hellman-group14-sha1") == 20);
    CHECK(sshsig_kex_hash_len("sntrup761x25519-sha512") == 0);
    CHECK(sshsig_kex_hash_len(NULL) == 0);
}

static void test_convert(void)
{
    struct sshsig_key ed, p256, p384, rsa;
    uint8_t raw[512], out[SSHSIG_MAX_SIG_BYTES + 16];
    size_t n;
    char *b64;

    CHECK(sshsig_parse_pubkey(ed25519_line, &ed, err, sizeof(err)) == 0);
    CHECK(sshsig_parse_pubkey(p256_line, &p256, err, sizeof(err)) == 0);
    CHECK(sshsig_parse_pubkey(p384_line, &p384, err, sizeof(err)) == 0);
    CHECK(sshsig_parse_pubkey(rsa_line, &rsa, err, sizeof(err)) == 0);

    /* Ed25519 and RSA pass through. */
    for (int i = 0; i < 256; i++)
        raw[i] = (uint8_t)i;
    b64 = sshsig_b64encode(raw, 64);
    CHECK(sshsig_convert(&ed, "ssh-ed25519", b64, out, &n, err, sizeof(err)) == 0);
    CHECK(n == 64 && memcmp(out, raw, 64) == 0);
    free(b64);
    b64 = sshsig_b64encode(raw, 256);
    CHECK(sshsig_convert(&rsa, "rsa-sha2-256", b64, out, &n, err, sizeof(err)) == 0);
    CHECK(n == 256 && memcmp(out, raw, 256) == 0);
    free(b64);

    /* Wrong lengths name the algorithm and both lengths. */
    b64 = sshsig_b64encode(raw, 63);
    CHECK(sshsig_convert(&ed, "ssh-ed25519", b64, out, &n, err, sizeof(err)) == -1);
    CHECK_STR(err, "invalid signature: ssh-ed25519 needs 64 bytes, got 63");
    CHECK(sshsig_convert(&p384, "ecdsa-sha2-nistp384", b64, out, &n, err, sizeof(err)) == -1);
    CHECK_STR(err, "invalid signature: ecdsa-sha2-nistp384 needs 96 bytes, got 63");
    CHECK(sshsig_convert(&rsa, "rsa-sha2-512", b64, out, &n, err, sizeof(err)) == -1);
    CHECK_STR(err, "invalid signature: rsa-sha2-512 needs 256 bytes, got 63");
    free(b64);
    /* A DER ECDSA signature (what OpenSSL, not WebCrypto, returns). */
    b64 = sshsig_b64encode((const uint8_t *)"\x30\x44\x02\x20", 4);
    CHECK(sshsig_convert(&p256, "ecdsa-sha2-nistp256", b64, out, &n, err, sizeof(err)) == -1);
    CHECK_STR(err, "invalid signature: ecdsa-sha2-nistp256 needs 64 bytes, got 4");
    free(b64);
    CHECK(sshsig_convert(&ed, "ssh-ed25519", "not base64!", out, &n, err, sizeof(err)) == -1);
    CHECK_STR(err, "invalid signature: not base64, or longer than 2048 bytes");
    CHECK(sshsig_convert(&ed, "ssh-ed25519", "", out, &n, err, sizeof(err)) == -1);
    CHECK_STR(err, "invalid signature: the sign answer has no signature");
    CHECK(sshsig_convert(&ed, "ssh-ed25519", NULL, out, &n, err, sizeof(err)) == -1);
    CHECK_STR(err, "invalid signature: the sign answer has no signature");

    /* ECDSA P-256: r with its high bit set gets a zero byte, s with
     * leading zeros loses them (RFC 4251 mpint). */
    memset(raw, 0, 64);
    memset(raw, 0x80, 32);
    raw[62] = 0x01;
    raw[63] = 0x02;
    b64 = sshsig_b64encode(raw, 64);
    CHECK(sshsig_convert(&p256, "ecdsa-sha2-nistp256", b64, out, &n, err, sizeof(err)) == 0);
    CHECK(n == 4 + 33 + 4 + 2);
    CHECK(memcmp(out, "\x00\x00\x00\x21\x00\x80", 6) == 0);
    CHECK(out[36] == 0x80);
    CHECK(memcmp(out + 37, "\x00\x00\x00\x02\x01\x02", 6) == 0);
    free(b64);
    /* P-384, a small positive r: no padding byte. */
    memset(raw, 0x11, 96);
    raw[0] = 0x7f;
    b64 = sshsig_b64encode(raw, 96);
    CHECK(sshsig_convert(&p384, "ecdsa-sha2-nistp384", b64, out, &n, err, sizeof(err)) == 0);
    CHECK(n == 2 * (4 + 48));
    CHECK(memcmp(out, "\x00\x00\x00\x30\x7f\x11", 6) == 0);
    CHECK(memcmp(out + 52, "\x00\x00\x00\x30\x11\x11", 6) == 0);
    free(b64);
    /* r = 0 or s = 0 is no signature. */
    memset(raw, 0, 64);
    raw[0] = 1;
    b64 = sshsig_b64encode(raw, 64);
    CHECK(sshsig_convert(&p256, "ecdsa-sha2-nistp256", b64, out, &n, err, sizeof(err)) == -1);
    CHECK_STR(err, "invalid signature: ECDSA r or s is zero");
    free(b64);
}

static void test_blob_and_base64(void)
{
    uint8_t out[64], dec[16];
    size_t n;

    CHECK(sshsig_blob("ssh-ed25519", (const uint8_t *)"\xaa\xbb", 2, out, sizeof(out), &n) == 0);
    CHECK(n == 4 + 11 + 4 + 2);
    CHECK(memcmp(out, "\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x02\xaa\xbb", n) == 0);
    CHECK(sshsig_blob("ssh-ed25519", (const uint8_t *)"\xaa\xbb", 2, out, 20, &n) == -1);
    CHECK(sshsig_blob("ssh-ed25519", (const uint8_t *)"\xaa\xbb", 2, out, 21, &n) == 0);
    CHECK(sshsig_blob("x", out, 0, out, 7, &n) == -1);

    CHECK(sshsig_b64decode("AAECAw==", 8, dec, sizeof(dec)) == 4);
    CHECK(memcmp(dec, "\x00\x01\x02\x03", 4) == 0);
    CHECK(sshsig_b64decode("AAECAw", 6, dec, sizeof(dec)) == 4);  /* unpadded */
    CHECK(sshsig_b64decode("AAECAw=", 7, dec, sizeof(dec)) == -1);
    CHECK(sshsig_b64decode("AAECAx==", 8, dec, sizeof(dec)) == -1); /* stray low bits */
    CHECK(sshsig_b64decode("AA=CAw==", 8, dec, sizeof(dec)) == -1);
    CHECK(sshsig_b64decode("AAEC Aw==", 9, dec, sizeof(dec)) == -1);
    CHECK(sshsig_b64decode("A", 1, dec, sizeof(dec)) == -1);
    CHECK(sshsig_b64decode("AAECAw==", 8, dec, 3) == -1);            /* over the cap */
    CHECK(sshsig_b64decode("-_", 2, dec, sizeof(dec)) == -1);        /* base64url */
    CHECK(sshsig_b64decode("", 0, dec, sizeof(dec)) == 0);
}

int main(void)
{
    test_parse_ok();
    test_parse_refused();
    test_check_data();
    test_convert();
    test_blob_and_base64();
    CHECK_DONE();
}
