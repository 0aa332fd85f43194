/* The pure half of the `sign` extension (public-key login where the private
 * key stays in the browser): reading the authorized_keys line the browser
 * sends, checking the data libssh2 asks us to have signed, and turning the
 * bytes WebCrypto's sign() returns into the signature SSH expects. No I/O,
 * no threads, no libssh2: unit-tested and fuzzed on its own. */
#ifndef WC_SSHSIG_H
#define WC_SSHSIG_H

#include <stddef.h>
#include <stdint.h>

/* Longest authorized_keys line accepted (an RSA 16384-bit public key is
 * about 2.8 KiB of base64; comments are short). */
#define SSHSIG_MAX_LINE_BYTES (8u * 1024)
/* Largest public key blob and signature we handle: RSA 16384 bits. */
#define SSHSIG_MAX_BLOB_BYTES 4096u
#define SSHSIG_MAX_SIG_BYTES 2048u
/* Smallest RSA modulus accepted, as OpenSSH's RequiredRSASize (1024):
 * a server would refuse a shorter key anyway. */
#define SSHSIG_RSA_MIN_BITS 1024

enum sshsig_type { SSHSIG_ED25519 = 1, SSHSIG_ECDSA_P256, SSHSIG_ECDSA_P384, SSHSIG_RSA };

/* A parsed public key. `blob` is the key in SSH wire format, exactly what
 * the base64 field of the line decodes to. */
struct sshsig_key {
    enum sshsig_type type;
    const char *name;          /* "ssh-ed25519", ... (static) */
    uint8_t blob[SSHSIG_MAX_BLOB_BYTES];
    size_t blob_len;
    size_t sig_len;            /* bytes WebCrypto's signature must have */
    const char *alg;           /* the one algorithm to sign with, or NULL for any */
    char fingerprint[64];      /* "SHA256:" + unpadded base64, as ssh-keygen -l */
};

/* Parse one authorized_keys line ("type base64 [comment]"). Returns 0, or
 * -1 with a message for the browser in `err` that names the problem. */
int sshsig_parse_pubkey(const char *line, struct sshsig_key *k, char *err, size_t errlen);

/* Restrict the signature algorithm to `alg` (NULL: any the key may use,
 * for RSA rsa-sha2-512 before rsa-sha2-256). A WebCrypto RSA key is bound
 * to one hash, so a browser holding one names the algorithm it can sign.
 * Returns 0, or -1 with `err` naming the problem. */
int sshsig_set_algorithm(struct sshsig_key *k, const char *alg, char *err, size_t errlen);

/* For RSA keys, the signature algorithms to offer, best first, as
 * libssh2's LIBSSH2_METHOD_SIGN_ALGO preference takes them; NULL for the
 * other types, which have one algorithm each. */
const char *sshsig_rsa_prefs(const struct sshsig_key *k);

/* Hash length of the key exchange `kex` negotiated (libssh2's method name),
 * which is the session id's length; 0 when unknown. */
size_t sshsig_kex_hash_len(const char *kex);

/* Check that `data` is what SSH public-key authentication signs for this
 * key and user, and nothing else: string session_id (exactly the `sid_len`
 * bytes at `sid` when the caller knows them; else of `sid_len` bytes, or
 * one of the known hash lengths when 0), then SSH_MSG_USERAUTH_REQUEST for
 * `username`, service "ssh-connection", method "publickey", TRUE, an
 * algorithm this key may sign with, and exactly k's blob, with nothing
 * after it. Sets *alg to that algorithm (static string). RSA must be
 * rsa-sha2-256 or rsa-sha2-512: never SHA-1. Returns 0, SSHSIG_E_ALG when
 * the data asks for an algorithm the relay will not have signed (ssh-rsa),
 * or SSHSIG_E_DATA for anything else, with `err` set. */
#define SSHSIG_E_DATA (-1)
#define SSHSIG_E_ALG (-2)
int sshsig_check_data(const struct sshsig_key *k, const char *username, const uint8_t *sid,
                      size_t sid_len, const uint8_t *data, size_t len, const char **alg,
                      char *err, size_t errlen);

/* Turn the browser's answer (base64 of WebCrypto's sign() output for
 * `alg`) into the signature SSH carries inside its signature blob: the raw
 * 64 bytes for Ed25519, the k-byte PKCS#1 v1.5 signature for RSA, and
 * mpint r followed by mpint s for ECDSA (WebCrypto gives r||s, IEEE P1363).
 * `out` must hold SSHSIG_MAX_SIG_BYTES + 16. Returns 0 with *outlen set, or
 * -1 with a message naming the problem in `err`. */
int sshsig_convert(const struct sshsig_key *k, const char *alg, const char *b64,
                   uint8_t *out, size_t *outlen, char *err, size_t errlen);

/* The whole SSH signature blob, string(alg) || string(sig), as it goes on
 * the wire (libssh2 wraps the callback's signature this way itself; this is
 * for tests and for documenting the format). Returns 0, or -1 when `cap`
 * is too small. */
int sshsig_blob(const char *alg, const uint8_t *sig, size_t siglen, uint8_t *out,
                size_t cap, size_t *outlen);

/* Standard base64 with padding, NUL-terminated, malloc'd (caller frees);
 * NULL when out of memory or too large. */
char *sshsig_b64encode(const uint8_t *data, size_t len);

/* Strict standard base64 (padding optional, no whitespace) into `out` of
 * `cap` bytes. Returns the decoded length, or -1 when malformed or too big. */
long sshsig_b64decode(const char *in, size_t inlen, uint8_t *out, size_t cap);

#endif
