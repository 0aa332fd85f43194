/* Diagnosis of private keys libssh2 refused to load. Reads only the
 * unencrypted envelope (PEM headers, the openssh-key-v1 cipher name). */
#include "keyformat.h"

#include <string.h>

#include <openssl/evp.h>

#define OPENSSH_BEGIN "-----BEGIN OPENSSH PRIVATE KEY-----"
#define OPENSSH_END "-----END OPENSSH PRIVATE KEY-----"
#define OPENSSH_MAGIC "openssh-key-v1"

/* Decode the first bytes of an OpenSSH key body and copy its cipher name
 * into `out`. Returns 0, or -1 when the envelope is unreadable. */
static int openssh_cipher(const char *key, char *out, size_t outlen)
{
    const char *b = strstr(key, OPENSSH_BEGIN), *e;
    unsigned char in[128], dec[96];
    size_t n = 0, namelen;
    int declen;

    if (!b)
        return -1;
    b += strlen(OPENSSH_BEGIN);
    e = strstr(b, OPENSSH_END);
    if (!e)
        return -1;
    /* 128 base64 characters are enough for magic + cipher name. */
    for (; b < e && n < sizeof(in); b++)
        if (*b != '\n' && *b != '\r' && *b != ' ')
            in[n++] = (unsigned char)*b;
    n -= n % 4;
    declen = EVP_DecodeBlock(dec, in, (int)n);
    if (declen < (int)sizeof(OPENSSH_MAGIC) + 4 ||
        memcmp(dec, OPENSSH_MAGIC, sizeof(OPENSSH_MAGIC)) != 0)
        return -1;
    namelen = (size_t)dec[sizeof(OPENSSH_MAGIC)] << 24 |
              (size_t)dec[sizeof(OPENSSH_MAGIC) + 1] << 16 |
              (size_t)dec[sizeof(OPENSSH_MAGIC) + 2] << 8 |
              (size_t)dec[sizeof(OPENSSH_MAGIC) + 3];
    if (namelen == 0 || namelen >= outlen ||
        sizeof(OPENSSH_MAGIC) + 4 + namelen > (size_t)declen)
        return -1;
    memcpy(out, dec + sizeof(OPENSSH_MAGIC) + 4, namelen);
    out[namelen] = '\0';
    return 0;
}

static const char *openssh_problem(const char *key, const char *passphrase)
{
    char cipher[64];

    if (openssh_cipher(key, cipher, sizeof(cipher)) < 0)
        return "unsupported key format: the OpenSSH private key is damaged";
    if (strcmp(cipher, "none") == 0)
        return "unsupported key format: this key type cannot be used";
    if (!passphrase)
        return "private key is encrypted: passphrase required";
    if (strcmp(cipher, "aes256-ctr") != 0 && strcmp(cipher, "aes128-ctr") != 0 &&
        strcmp(cipher, "aes192-ctr") != 0 && strcmp(cipher, "aes256-cbc") != 0 &&
        strcmp(cipher, "aes128-cbc") != 0 && strcmp(cipher, "3des-cbc") != 0)
        return "unsupported key format: the key is encrypted with a cipher the relay "
               "cannot read; re-encrypt it with: ssh-keygen -p -Z aes256-ctr -f KEY";
    return "wrong passphrase or unsupported key format";
}

const char *keyformat_problem(const char *key, const char *passphrase)
{
    int encrypted;

    if (strstr(key, "PuTTY-User-Key-File"))
        return "unsupported key format: PuTTY key; convert it with: "
               "puttygen KEY.ppk -O private-openssh -o KEY";
    if (strstr(key, OPENSSH_BEGIN))
        return openssh_problem(key, passphrase);
    if (!strstr(key, "-----BEGIN ") || !strstr(key, "PRIVATE KEY-----"))
        return "unsupported key format: not a PEM or OpenSSH private key";
    encrypted = strstr(key, "ENCRYPTED") != NULL;
    if (encrypted && !passphrase)
        return "private key is encrypted: passphrase required";
    if (encrypted)
        return "wrong passphrase or unsupported key format";
    return "unsupported key format: the private key could not be parsed";
}
