/* Why a private key could not be used, in words a user can act on. libssh2
 * only says "unsupported private key file format"; we look at the key text
 * ourselves to tell a PuTTY key, a missing or wrong passphrase and an
 * OpenSSH cipher libssh2 cannot decrypt apart. */
#ifndef WC_KEYFORMAT_H
#define WC_KEYFORMAT_H

/* A static message describing the problem with `key` (NUL-terminated),
 * given the passphrase the user supplied (NULL when none). */
const char *keyformat_problem(const char *key, const char *passphrase);

#endif
