/* keyformat: the message a user gets when libssh2 refused a private key,
 * with real keys made by ssh-keygen in a temporary directory (OpenSSH
 * format plain and encrypted, PEM RSA encrypted, a cipher libssh2 cannot
 * decrypt), literal PuTTY and garbage keys, and damaged envelopes: every
 * truncation of a key body and hand-made headers with hostile lengths. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "check.h"
#include "keyformat.h"

#define BEGIN "-----BEGIN OPENSSH PRIVATE KEY-----"
#define END "-----END OPENSSH PRIVATE KEY-----"

static char dir[] = "/tmp/wc-test-keyformat-XXXXXX";

static int contains(const char *msg, const char *part)
{
    int ok = msg && strstr(msg, part);

    if (!ok)
        fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", msg ? msg : "(null)", part);
    return ok;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf;
    long n;

    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf)
        buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Run a shell command quietly; 0 when it succeeded. */
static int run(const char *cmd)
{
    char full[2048];

    snprintf(full, sizeof(full), "%s </dev/null >/dev/null 2>&1", cmd);
    return system(full) == 0 ? 0 : -1;
}

/* ssh-keygen into dir/name; returns the private key text or NULL. */
static char *keygen(const char *name, const char *args)
{
    char cmd[512], path[256];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    snprintf(cmd, sizeof(cmd), "ssh-keygen -q %s -C test -f '%s'", args, path);
    if (run(cmd) < 0)
        return NULL;
    return slurp(path);
}

/* The base64 body of an OpenSSH key, line breaks removed. */
static char *openssh_body(const char *key)
{
    const char *b = strstr(key, BEGIN), *e = strstr(key, END);
    char *out, *o;

    if (!b || !e)
        return NULL;
    out = o = malloc((size_t)(e - b) + 1);
    if (!out)
        return NULL;
    for (b += strlen(BEGIN); b < e; b++)
        if (*b != '\n' && *b != '\r')
            *o++ = *b;
    *o = '\0';
    return out;
}

/* An OpenSSH key text around `body` (wrapped at 70 columns as ssh-keygen
 * does when `wrap`), optionally without the END line. */
static char *openssh_text(const char *body, size_t len, int wrap, int with_end)
{
    char *out = malloc(len + len / 70 + 128), *o = out;

    if (!out)
        return NULL;
    o += sprintf(o, "%s\n", BEGIN);
    for (size_t i = 0; i < len; i++) {
        *o++ = body[i];
        if (wrap && i % 70 == 69)
            *o++ = '\n';
    }
    if (with_end)
        o += sprintf(o, "\n%s\n", END);
    *o = '\0';
    return out;
}

static void test_generated(void)
{
    char *plain, *enc, *rsa, *rsa_plain, *chacha, *crlf;
    char cmd[1536], path[256];

    if (run("command -v ssh-keygen") < 0) {
        printf("ssh-keygen not found: generated-key cases skipped\n");
        return;
    }
    plain = keygen("ed_plain", "-t ed25519 -N ''");
    enc = keygen("ed_enc", "-t ed25519 -N 'correct horse'");
    rsa = keygen("rsa_pem_enc", "-t rsa -b 2048 -m PEM -N 'correct horse'");
    rsa_plain = keygen("rsa_pem", "-t rsa -b 2048 -m PEM -N ''");
    CHECK(plain && enc && rsa && rsa_plain);

    if (plain) {
        /* Not encrypted: whatever libssh2 disliked, it is not a passphrase. */
        const char *m = keyformat_problem(plain, NULL);
        CHECK(contains(m, "unsupported key format"));
        CHECK(!strstr(m, "passphrase"));
        m = keyformat_problem(plain, "unused");
        CHECK(contains(m, "unsupported key format"));
        CHECK(!strstr(m, "wrong passphrase"));
    }
    if (enc) {
        /* The default cipher of an encrypted OpenSSH key. */
        char *body = openssh_body(enc);
        CHECK(body != NULL);
        free(body);
        CHECK(contains(keyformat_problem(enc, NULL), "passphrase required"));
        CHECK(contains(keyformat_problem(enc, "wrong"), "wrong passphrase"));
        CHECK(!strstr(keyformat_problem(enc, "wrong"), "cipher"));
        CHECK(contains(keyformat_problem(enc, ""), "wrong passphrase"));
        /* Windows line endings do not change the diagnosis. */
        crlf = malloc(strlen(enc) * 2 + 1);
        if (crlf) {
            char *o = crlf;
            for (const char *p = enc; *p; p++) {
                if (*p == '\n')
                    *o++ = '\r';
                *o++ = *p;
            }
            *o = '\0';
            CHECK(contains(keyformat_problem(crlf, NULL), "passphrase required"));
            CHECK(contains(keyformat_problem(crlf, "wrong"), "wrong passphrase"));
            free(crlf);
        }
    }
    if (rsa) {
        CHECK(strstr(rsa, "ENCRYPTED") != NULL);
        CHECK(contains(keyformat_problem(rsa, NULL), "passphrase required"));
        CHECK(contains(keyformat_problem(rsa, "wrong"), "wrong passphrase"));
    }
    if (rsa_plain) {
        const char *m = keyformat_problem(rsa_plain, NULL);
        CHECK(contains(m, "unsupported key format"));
        CHECK(!strstr(m, "passphrase"));
    }

    /* Re-encrypt the OpenSSH key with chacha20-poly1305, when this
     * ssh-keygen knows -Z (OpenSSH >= 8.1?). */
    snprintf(path, sizeof(path), "%s/ed_chacha", dir);
    snprintf(cmd, sizeof(cmd), "cp '%s/ed_enc' '%s' && chmod 600 '%s' && "
             "ssh-keygen -q -p -P 'correct horse' -N 'new pass' "
             "-Z chacha20-poly1305@openssh.com -f '%s'", dir, path, path, path);
    if (enc && run(cmd) == 0 && (chacha = slurp(path)) != NULL) {
        char *body = openssh_body(chacha);
        uint8_t dec[128];
        int n = body ? EVP_DecodeBlock(dec, (const unsigned char *)body, 80) : -1;
        /* The envelope really names the new cipher. */
        CHECK(n >= 19 + 29 && memcmp(dec + 19, "chacha20-poly1305@openssh.com", 29) == 0);
        free(body);
        const char *m = keyformat_problem(chacha, "new pass");
        CHECK(contains(m, "cipher"));
        CHECK(contains(m, "cannot read"));
        CHECK(contains(m, "ssh-keygen -p -Z aes256-ctr"));
        CHECK(contains(keyformat_problem(chacha, "wrong"), "cannot read"));
        /* Without a passphrase the first thing to ask for is one. */
        CHECK(contains(keyformat_problem(chacha, NULL), "passphrase required"));
        free(chacha);
    } else {
        printf("ssh-keygen -Z chacha20-poly1305@openssh.com unsupported: case skipped\n");
    }

    /* Every truncation of the encrypted key body, in every form. */
    if (enc) {
        char *body = openssh_body(enc);
        size_t blen = body ? strlen(body) : 0;
        const char *full_null = keyformat_problem(enc, NULL);
        const char *full_pp = keyformat_problem(enc, "pp");

        CHECK(blen > 200);
        for (size_t len = 0; body && len <= 200 && len <= blen; len++) {
            for (int form = 0; form < 4; form++) {
                char *t = openssh_text(body, len, form & 1, !(form & 2));
                const char *a, *b;
                if (!t)
                    continue;
                a = keyformat_problem(t, NULL);
                b = keyformat_problem(t, "pp");
                CHECK(a && *a && b && *b);
                if (form & 2) {
                    /* No END line: never mistaken for a readable key. */
                    CHECK(contains(a, "unsupported key format"));
                } else if (len >= 40) {
                    /* Magic and cipher name fit in 40 base64 characters
                     * (29 bytes): the diagnosis is that of the whole key. */
                    CHECK(a == full_null || strcmp(a, full_null) == 0);
                    CHECK(b == full_pp || strcmp(b, full_pp) == 0);
                } else {
                    CHECK(contains(a, "unsupported key format"));
                    CHECK(contains(b, "unsupported key format"));
                }
                free(t);
            }
        }
        /* Every prefix of the whole file text, too. */
        for (size_t len = 0; len <= strlen(enc); len++) {
            char *t = strndup(enc, len);
            if (t) {
                CHECK(keyformat_problem(t, NULL) != NULL);
                CHECK(keyformat_problem(t, "pp") != NULL);
                free(t);
            }
        }
        free(body);
    }

    free(plain);
    free(enc);
    free(rsa);
    free(rsa_plain);
}

/* An OpenSSH envelope: magic (with or without its NUL), then a 32-bit
 * big-endian length, then `name` (namelen bytes of it, padded with 'x'). */
static char *envelope(const char *magic, size_t magic_len, uint32_t namelen,
                      const char *name, size_t name_bytes)
{
    uint8_t raw[256];
    char b64[512], *out;
    size_t n = 0;

    memcpy(raw, magic, magic_len);
    n = magic_len;
    raw[n++] = (uint8_t)(namelen >> 24);
    raw[n++] = (uint8_t)(namelen >> 16);
    raw[n++] = (uint8_t)(namelen >> 8);
    raw[n++] = (uint8_t)namelen;
    for (size_t i = 0; i < name_bytes && n < 200; i++)
        raw[n++] = (uint8_t)(name && i < strlen(name) ? name[i] : 'x');
    /* The rest of a real key follows: kdf name, options, keys... */
    while (n < 200)
        raw[n++] = 0;
    EVP_EncodeBlock((unsigned char *)b64, raw, (int)n);
    out = openssh_text(b64, strlen(b64), 1, 1);
    return out;
}

static void test_envelopes(void)
{
    static const char magic[] = "openssh-key-v1";  /* sizeof includes the NUL */
    char *k;

    /* A supported cipher: the passphrase is wrong. */
    k = envelope(magic, sizeof(magic), 10, "aes256-ctr", 10);
    CHECK(contains(keyformat_problem(k, "pp"), "wrong passphrase"));
    CHECK(contains(keyformat_problem(k, NULL), "passphrase required"));
    free(k);
    k = envelope(magic, sizeof(magic), 10, "aes128-cbc", 10);
    CHECK(contains(keyformat_problem(k, "pp"), "wrong passphrase"));
    free(k);
    /* "none": not encrypted. */
    k = envelope(magic, sizeof(magic), 4, "none", 4);
    CHECK(!strstr(keyformat_problem(k, NULL), "passphrase"));
    free(k);
    /* An unknown cipher. */
    k = envelope(magic, sizeof(magic), 22, "aes256-gcm@openssh.com", 22);
    CHECK(contains(keyformat_problem(k, "pp"), "cannot read"));
    free(k);
    /* A name that is a prefix of a supported one is not that one. */
    k = envelope(magic, sizeof(magic), 7, "aes256-", 7);
    CHECK(contains(keyformat_problem(k, "pp"), "cannot read"));
    free(k);
    /* The longest name that fits our buffer, and one byte more. */
    k = envelope(magic, sizeof(magic), 63, NULL, 63);
    CHECK(contains(keyformat_problem(k, "pp"), "cannot read"));
    free(k);
    k = envelope(magic, sizeof(magic), 64, NULL, 64);
    CHECK(contains(keyformat_problem(k, "pp"), "damaged"));
    free(k);
    /* Lengths past the decoded bytes, huge, zero. */
    uint32_t lens[] = {0, 77, 78, 96, 97, 1000, 0x7fffffffu, 0x80000000u, 0xffffffffu};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        k = envelope(magic, sizeof(magic), lens[i], NULL, 200);
        CHECK(contains(keyformat_problem(k, "pp"), "damaged"));
        CHECK(contains(keyformat_problem(k, NULL), "damaged"));
        free(k);
    }
    /* Wrong magic, or the magic without its NUL. */
    k = envelope("openssh-key-v2", sizeof(magic), 10, "aes256-ctr", 10);
    CHECK(contains(keyformat_problem(k, "pp"), "damaged"));
    free(k);
    k = envelope(magic, sizeof(magic) - 1, 10, "aes256-ctr", 10);
    CHECK(contains(keyformat_problem(k, "pp"), "damaged"));
    free(k);

    /* Bodies that are not base64 at all. */
    const char *junk[] = {
        BEGIN "\n" END "\n",
        BEGIN END,
        BEGIN "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n" END "\n",
        BEGIN "\n====\n" END "\n",
        BEGIN "\nb3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHI=====\n" END "\n",
        BEGIN "\n\xff\xfe\xfd\xfc\n" END "\n",
        END "\n" BEGIN "\n",
        BEGIN,
    };
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
        const char *m = keyformat_problem(junk[i], "pp");
        CHECK(contains(m, "unsupported key format"));
        CHECK(keyformat_problem(junk[i], NULL) != NULL);
    }
    /* A huge body (well past the 128 characters looked at). */
    {
        size_t n = 1 << 20;
        char *big = malloc(n + 128);
        if (big) {
            char *o = big + sprintf(big, "%s\n", BEGIN);
            memset(o, 'A', n);
            o += n;
            sprintf(o, "\n%s\n", END);
            CHECK(contains(keyformat_problem(big, "pp"), "damaged"));
            free(big);
        }
    }
}

static void test_literals(void)
{
    const char *putty =
        "PuTTY-User-Key-File-3: ssh-ed25519\n"
        "Encryption: none\n"
        "Comment: eddsa-key-20240101\n"
        "Public-Lines: 2\n"
        "AAAAC3NzaC1lZDI1NTE5AAAAIGjJ0x9l1lq0Bq3nR4k6p2qvZ2t9vN0m7q9b1c2d3e4f\n"
        "Private-Lines: 1\n"
        "AAAAIFf0ZkVqZ0c0Q2x3a0l5T1Z6S1l6Y0pKQ1F3d1d3d3d3d3d3d3d3d3d3\n"
        "Private-MAC: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
    const char *putty2 =
        "PuTTY-User-Key-File-2: ssh-rsa\nEncryption: aes256-cbc\nComment: k\n";

    CHECK(contains(keyformat_problem(putty, NULL), "PuTTY"));
    CHECK(contains(keyformat_problem(putty, "pp"), "PuTTY"));
    CHECK(contains(keyformat_problem(putty2, "pp"), "PuTTY"));
    CHECK(contains(keyformat_problem(putty, NULL), "puttygen"));

    const char *garbage[] = {
        "",
        "hello world",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGjJ0x9l1lq0Bq3nR4k6p2qvZ2t9vN0m7q9b1c2d3e4f test",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n",
        "PRIVATE KEY-----",
        "\xff\xfe\x00",
    };
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        CHECK(contains(keyformat_problem(garbage[i], NULL),
                       "not a PEM or OpenSSH private key"));
        CHECK(contains(keyformat_problem(garbage[i], "pp"),
                       "not a PEM or OpenSSH private key"));
    }

    /* PEM forms by their headers alone. */
    const char *pkcs8_enc =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0w\n"
        "-----END ENCRYPTED PRIVATE KEY-----\n";
    CHECK(contains(keyformat_problem(pkcs8_enc, NULL), "passphrase required"));
    CHECK(contains(keyformat_problem(pkcs8_enc, "x"), "wrong passphrase"));
    const char *ec_plain =
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----\n";
    CHECK(contains(keyformat_problem(ec_plain, NULL), "could not be parsed"));
}

int main(void)
{
    char cmd[300];

    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    chmod(dir, 0700);
    test_generated();
    test_envelopes();
    test_literals();
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (run(cmd) < 0)
        fprintf(stderr, "could not remove %s\n", dir);
    CHECK_DONE();
}
