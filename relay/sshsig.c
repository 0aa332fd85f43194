/* SSH wire formats of the `sign` extension, pure functions only (see
 * sshsig.h): the authorized_keys line, the userauth data to be signed,
 * and the conversion of WebCrypto signatures into SSH signatures. Every
 * length read from the browser or from the data is checked against what
 * is left before it is used. */
#include "sshsig.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#define SSH_MSG_USERAUTH_REQUEST 50

/* A cursor over SSH wire data. */
struct rd {
    const uint8_t *p;
    size_t left;
};

static int rd_byte(struct rd *r, uint8_t *v)
{
    if (r->left < 1)
        return -1;
    *v = *r->p++;
    r->left--;
    return 0;
}

/* string: uint32 length, then that many bytes (RFC 4251 §5). */
static int rd_string(struct rd *r, const uint8_t **s, size_t *n)
{
    uint32_t len;

    if (r->left < 4)
        return -1;
    len = (uint32_t)r->p[0] << 24 | (uint32_t)r->p[1] << 16 | (uint32_t)r->p[2] << 8 | r->p[3];
    if (len > r->left - 4)
        return -1;
    *s = r->p + 4;
    *n = len;
    r->p += 4 + (size_t)len;
    r->left -= 4 + (size_t)len;
    return 0;
}

static int str_is(const uint8_t *s, size_t n, const char *want)
{
    return n == strlen(want) && memcmp(s, want, n) == 0;
}

static const char b64_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_value(char c)
{
    const char *p = c ? strchr(b64_chars, c) : NULL;

    return p ? (int)(p - b64_chars) : -1;
}

long sshsig_b64decode(const char *in, size_t inlen, uint8_t *out, size_t cap)
{
    size_t n = inlen, o = 0;
    uint32_t acc = 0;
    int bits = 0;

    /* At most two '=' and only at the end, making a multiple of 4. */
    if (n > 0 && in[n - 1] == '=') {
        if (n % 4 != 0)
            return -1;
        n--;
        if (n > 0 && in[n - 1] == '=')
            n--;
    }
    if (n % 4 == 1)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value(in[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return -1;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    /* Leftover bits must be zero: one text, one value. */
    if (bits && (acc & ((1u << bits) - 1)))
        return -1;
    return (long)o;
}

char *sshsig_b64encode(const uint8_t *data, size_t len)
{
    char *out;

    if (len > (size_t)1 << 28)
        return NULL;
    out = malloc((len + 2) / 3 * 4 + 1);
    if (out)
        EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

static int fingerprint(struct sshsig_key *k)
{
    unsigned char md[32], b64[48];
    unsigned int mdlen = 0;
    size_t n;

    if (EVP_Digest(k->blob, k->blob_len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return -1;
    EVP_EncodeBlock(b64, md, 32);
    n = strlen((char *)b64);
    while (n && b64[n - 1] == '=')
        b64[--n] = '\0';
    snprintf(k->fingerprint, sizeof(k->fingerprint), "SHA256:%s", b64);
    return 0;
}

/* Key types this path supports, and what each blob must hold. */
static const struct {
    const char *name;
    enum sshsig_type type;
    const char *curve;   /* ECDSA: the curve identifier inside the blob */
    size_t point_len;    /* Ed25519: the key; ECDSA: the uncompressed point */
    size_t sig_len;      /* WebCrypto's signature length; RSA: from the key */
} types[] = {
    {"ssh-ed25519", SSHSIG_ED25519, NULL, 32, 64},
    {"ecdsa-sha2-nistp256", SSHSIG_ECDSA_P256, "nistp256", 65, 64},
    {"ecdsa-sha2-nistp384", SSHSIG_ECDSA_P384, "nistp384", 97, 96},
    {"ssh-rsa", SSHSIG_RSA, NULL, 0, 0},
};
#define N_TYPES (sizeof(types) / sizeof(types[0]))

/* The modulus length in bytes of an RSA blob (string "ssh-rsa", mpint e,
 * mpint n), or 0 when the blob is not a usable RSA key. */
static size_t rsa_modulus_len(struct rd *r)
{
    const uint8_t *e, *n;
    size_t elen, nlen;

    if (rd_string(r, &e, &elen) < 0 || rd_string(r, &n, &nlen) < 0 || r->left != 0)
        return 0;
    if (elen == 0 || (e[0] & 0x80))
        return 0;
    while (nlen > 0 && n[0] == 0) {
        n++;
        nlen--;
    }
    if (nlen * 8 < SSHSIG_RSA_MIN_BITS || nlen > SSHSIG_MAX_SIG_BYTES)
        return 0;
    return nlen;
}

/* Check the blob's contents against its type; sets k->sig_len. */
static int check_blob(struct sshsig_key *k, size_t t, char *err, size_t errlen)
{
    struct rd r = {k->blob, k->blob_len};
    const uint8_t *s;
    size_t n;

    if (rd_string(&r, &s, &n) < 0 || !str_is(s, n, types[t].name)) {
        snprintf(err, errlen, "unsupported public key: the key data is not a %s key",
                 types[t].name);
        return -1;
    }
    if (types[t].type == SSHSIG_RSA) {
        k->sig_len = rsa_modulus_len(&r);
        if (k->sig_len == 0) {
            snprintf(err, errlen, "unsupported public key: not a usable RSA key "
                     "(at least %d bits)", SSHSIG_RSA_MIN_BITS);
            return -1;
        }
        return 0;
    }
    if (types[t].curve &&
        (rd_string(&r, &s, &n) < 0 || !str_is(s, n, types[t].curve))) {
        snprintf(err, errlen, "unsupported public key: the key data is not a %s key",
                 types[t].name);
        return -1;
    }
    if (rd_string(&r, &s, &n) < 0 || n != types[t].point_len || r.left != 0 ||
        (types[t].curve && s[0] != 0x04)) {
        snprintf(err, errlen, "unsupported public key: the %s key data is damaged",
                 types[t].name);
        return -1;
    }
    k->sig_len = types[t].sig_len;
    return 0;
}

/* Copy the printable start of `s` (up to `n` bytes) for an error message. */
static void printable(char *out, size_t outlen, const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n && i + 1 < outlen && s[i] > 0x20 && s[i] < 0x7f; i++)
        out[i] = s[i];
    out[i] = '\0';
}

int sshsig_parse_pubkey(const char *line, struct sshsig_key *k, char *err, size_t errlen)
{
    const char *type, *b64;
    size_t tlen, blen, t, eol;
    long dec;

    memset(k, 0, sizeof(*k));
    if (strlen(line) > SSHSIG_MAX_LINE_BYTES) {
        snprintf(err, errlen, "unsupported public key: the line is too long");
        return -1;
    }
    /* A private key pasted by mistake must not be echoed or parsed. */
    if (strstr(line, "PRIVATE KEY")) {
        snprintf(err, errlen, "unsupported public key: this is a private key; send the "
                 "public key line (the .pub file), the private key stays with you");
        return -1;
    }
    /* One line; the line break a copy and paste brings along is fine. */
    eol = strcspn(line, "\r\n");
    if (line[eol + strspn(line + eol, "\r\n")] != '\0') {
        snprintf(err, errlen, "unsupported public key: expected one authorized_keys line");
        return -1;
    }
    type = line + strspn(line, " \t");
    tlen = strcspn(type, " \t\r\n");
    b64 = type + tlen + strspn(type + tlen, " \t");
    blen = strcspn(b64, " \t\r\n");
    if (tlen == 0 || blen == 0) {
        snprintf(err, errlen, "unsupported public key: expected an authorized_keys line "
                 "\"type base64-key [comment]\"");
        return -1;
    }
    for (t = 0; t < N_TYPES; t++)
        if (tlen == strlen(types[t].name) && strncmp(type, types[t].name, tlen) == 0)
            break;
    if (t == N_TYPES) {
        char shown[48];
        printable(shown, sizeof(shown), type, tlen);
        snprintf(err, errlen, "unsupported public key type \"%s\": use ssh-ed25519, "
                 "ecdsa-sha2-nistp256, ecdsa-sha2-nistp384 or ssh-rsa", shown);
        return -1;
    }
    dec = sshsig_b64decode(b64, blen, k->blob, sizeof(k->blob));
    if (dec <= 0) {
        snprintf(err, errlen, "unsupported public key: the base64 key data is damaged");
        return -1;
    }
    k->blob_len = (size_t)dec;
    k->type = types[t].type;
    k->name = types[t].name;
    if (check_blob(k, t, err, errlen) < 0)
        goto fail;
    if (fingerprint(k) < 0) {
        snprintf(err, errlen, "cannot compute the key's fingerprint");
        goto fail;
    }
    return 0;
fail:
    memset(k, 0, sizeof(*k));
    return -1;
}

/* Key exchange method -> exchange hash length (the session id's). */
static const struct {
    const char *kex;
    size_t len;
} kex_hashes[] = {
    {"curve25519-sha256", 32},
    {"curve25519-sha256@libssh.org", 32},
    {"ecdh-sha2-nistp256", 32},
    {"ecdh-sha2-nistp384", 48},
    {"ecdh-sha2-nistp521", 64},
    {"diffie-hellman-group-exchange-sha256", 32},
    {"diffie-hellman-group14-sha256", 32},
    {"diffie-hellman-group16-sha512", 64},
    {"diffie-hellman-group18-sha512", 64},
    {"diffie-hellman-group-exchange-sha1", 20},
    {"diffie-hellman-group14-sha1", 20},
    {"diffie-hellman-group1-sha1", 20},
};

size_t sshsig_kex_hash_len(const char *kex)
{
    for (size_t i = 0; kex && i < sizeof(kex_hashes) / sizeof(kex_hashes[0]); i++)
        if (strcmp(kex, kex_hashes[i].kex) == 0)
            return kex_hashes[i].len;
    return 0;
}

static const char *const rsa_algs[] = {"rsa-sha2-512", "rsa-sha2-256"};

int sshsig_set_algorithm(struct sshsig_key *k, const char *alg, char *err, size_t errlen)
{
    char shown[48];

    k->alg = NULL;
    if (!alg)
        return 0;
    if (k->type == SSHSIG_RSA) {
        for (size_t i = 0; i < 2; i++)
            if (strcmp(alg, rsa_algs[i]) == 0)
                k->alg = rsa_algs[i];
    } else if (strcmp(alg, k->name) == 0) {
        k->alg = k->name;
    }
    if (k->alg)
        return 0;
    printable(shown, sizeof(shown), alg, strlen(alg));
    snprintf(err, errlen, "unsupported signature algorithm \"%s\" for a %s key: use %s", shown,
             k->name, k->type == SSHSIG_RSA ? "rsa-sha2-256 or rsa-sha2-512" : k->name);
    return -1;
}

const char *sshsig_rsa_prefs(const struct sshsig_key *k)
{
    if (k->type != SSHSIG_RSA)
        return NULL;
    return k->alg ? k->alg : "rsa-sha2-512,rsa-sha2-256";
}

/* The signature algorithm named in the data, if this key may use it. */
static const char *allowed_alg(const struct sshsig_key *k, const uint8_t *s, size_t n)
{
    if (k->alg)
        return str_is(s, n, k->alg) ? k->alg : NULL;
    if (k->type != SSHSIG_RSA)
        return str_is(s, n, k->name) ? k->name : NULL;
    for (size_t i = 0; i < 2; i++)
        if (str_is(s, n, rsa_algs[i]))
            return rsa_algs[i];
    return NULL;
}

int sshsig_check_data(const struct sshsig_key *k, const char *username, const uint8_t *sid,
                      size_t sid_len, const uint8_t *data, size_t len, const char **alg,
                      char *err, size_t errlen)
{
    static const char refused[] = "signature request refused: the data to sign is not "
                                  "this session's public-key authentication";
    struct rd r = {data, len};
    const uint8_t *s;
    size_t n;
    uint8_t b;

    *alg = NULL;
    if (rd_string(&r, &s, &n) < 0)
        goto refuse;
    if (sid_len ? n != sid_len : (n != 20 && n != 32 && n != 48 && n != 64))
        goto refuse;
    if (sid && memcmp(s, sid, n) != 0)
        goto refuse;
    if (rd_byte(&r, &b) < 0 || b != SSH_MSG_USERAUTH_REQUEST)
        goto refuse;
    if (rd_string(&r, &s, &n) < 0 || !str_is(s, n, username))
        goto refuse;
    if (rd_string(&r, &s, &n) < 0 || !str_is(s, n, "ssh-connection"))
        goto refuse;
    if (rd_string(&r, &s, &n) < 0 || !str_is(s, n, "publickey"))
        goto refuse;
    if (rd_byte(&r, &b) < 0 || b != 1)
        goto refuse;
    if (rd_string(&r, &s, &n) < 0)
        goto refuse;
    *alg = allowed_alg(k, s, n);
    if (!*alg) {
        if (k->type == SSHSIG_RSA && str_is(s, n, "ssh-rsa")) {
            snprintf(err, errlen, "the server accepts RSA keys only with SHA-1 signatures "
                     "(ssh-rsa); the relay asks only for rsa-sha2-256 or rsa-sha2-512");
            return SSHSIG_E_ALG;
        }
        snprintf(err, errlen, "%s", refused);
        return SSHSIG_E_DATA;
    }
    if (rd_string(&r, &s, &n) < 0 || n != k->blob_len || memcmp(s, k->blob, n) != 0 ||
        r.left != 0)
        goto refuse;
    return 0;
refuse:
    *alg = NULL;
    snprintf(err, errlen, "%s", refused);
    return SSHSIG_E_DATA;
}

/* mpint (RFC 4251 §5) of the unsigned big-endian `v` (n bytes) at `out`;
 * returns the bytes written (at most n + 5). */
static size_t put_mpint(uint8_t *out, const uint8_t *v, size_t n)
{
    size_t len, pad;

    while (n > 0 && v[0] == 0) {
        v++;
        n--;
    }
    pad = n > 0 && (v[0] & 0x80) ? 1 : 0;
    len = n + pad;
    out[0] = (uint8_t)(len >> 24);
    out[1] = (uint8_t)(len >> 16);
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    out[4] = 0;
    memcpy(out + 4 + pad, v, n);
    return 4 + len;
}

static int all_zero(const uint8_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v[i])
            return 0;
    return 1;
}

int sshsig_convert(const struct sshsig_key *k, const char *alg, const char *b64,
                   uint8_t *out, size_t *outlen, char *err, size_t errlen)
{
    uint8_t raw[SSHSIG_MAX_SIG_BYTES];
    long n;
    size_t half;

    *outlen = 0;
    if (!b64 || !*b64) {
        snprintf(err, errlen, "invalid signature: the sign answer has no signature");
        return -1;
    }
    n = sshsig_b64decode(b64, strlen(b64), raw, sizeof(raw));
    if (n < 0) {
        snprintf(err, errlen, "invalid signature: not base64, or longer than %u bytes",
                 SSHSIG_MAX_SIG_BYTES);
        return -1;
    }
    if ((size_t)n != k->sig_len) {
        snprintf(err, errlen, "invalid signature: %s needs %zu bytes, got %ld", alg,
                 k->sig_len, n);
        return -1;
    }
    if (k->type != SSHSIG_ECDSA_P256 && k->type != SSHSIG_ECDSA_P384) {
        memcpy(out, raw, (size_t)n);
        *outlen = (size_t)n;
        return 0;
    }
    /* WebCrypto's ECDSA signature is r || s, each as long as the curve's
     * order; SSH wants each as an mpint (RFC 5656 §3.1.2). */
    half = (size_t)n / 2;
    if (all_zero(raw, half) || all_zero(raw + half, half)) {
        snprintf(err, errlen, "invalid signature: ECDSA r or s is zero");
        return -1;
    }
    *outlen = put_mpint(out, raw, half);
    *outlen += put_mpint(out + *outlen, raw + half, half);
    return 0;
}

int sshsig_blob(const char *alg, const uint8_t *sig, size_t siglen, uint8_t *out,
                size_t cap, size_t *outlen)
{
    size_t alen = strlen(alg);

    if (cap < 8 || alen > cap - 8 || siglen > cap - 8 - alen ||
        alen > UINT32_MAX || siglen > UINT32_MAX)
        return -1;
    out[0] = (uint8_t)(alen >> 24);
    out[1] = (uint8_t)(alen >> 16);
    out[2] = (uint8_t)(alen >> 8);
    out[3] = (uint8_t)alen;
    memcpy(out + 4, alg, alen);
    out[4 + alen] = (uint8_t)(siglen >> 24);
    out[5 + alen] = (uint8_t)(siglen >> 16);
    out[6 + alen] = (uint8_t)(siglen >> 8);
    out[7 + alen] = (uint8_t)siglen;
    memcpy(out + 8 + alen, sig, siglen);
    *outlen = 8 + alen + siglen;
    return 0;
}
