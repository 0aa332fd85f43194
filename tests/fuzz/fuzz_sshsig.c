/* libFuzzer target: the `sign` extension's parsing of what the browser and
 * libssh2 hand the relay (relay/sshsig.c): the authorized_keys line with an
 * algorithm choice, the userauth data to be signed, the browser's base64
 * signature and its conversion to SSH's format, and the browser's `sign`
 * frame (proto_parse_sign). The first input byte picks the part; the rest
 * is its input. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "proto.h"
#include "sshsig.h"
#include "wipe_alloc.h"

/* One valid key of each type, so the data and signature parts get past
 * the key parser (ssh-keygen output). */
static const char *const lines[] = {
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKihpEuMZu/gnN/CcOgDUnrRXU/Fo5F1SaBrrKkFpW7n",
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBElQAN2ywZP339TB"
    "rsjrnjdFcxm34kneduCWrdF9RtqIenNvkMIHFYn8AZRfZYG5zxXC6cr4JJlsUJjbIZg/jxk=",
    "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBC0GvJxMwMenlT/mZ"
    "GkCDrO/hTLr/0ileEG5t18Sj8fvzTGn7kOf/9ZqE4UMi5mGFIGT/4pI2R3sNmjaUDoKCNVEutNRgJlvQquWfaSGig"
    "OJZw713Jh7c/nX8O0MZeTszw==",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCc01hdbO+STQlvjUhQMtw6HR97CsvN3cUnq9gCrYQLVBXbHNTVY"
    "4UOS8Nl0iW/Hn+7zv5v1fKrUK9TgkYbntI7JYaWuW3PY6R4Cy076dkxqcANGOMDgEfKmLNSa6sSGtjmRwzRN1MKU7"
    "5qcyV0RUl5d4+P78j/iCNFZuzejC1CDJp+eAjIig5P/eWHfuS3JClT2gWUlm2zb+qBBoyXrSO+PIXYHmbgdExhpQ"
    "SuTu0l+aWfFuDanCD0m+ttR8X2xUquMCPWvggqJmVX0sIabM0cm+p6V/jQB2ERkQ7YPVbxvLL4t3RkCrC15iYU1o"
    "LvbhPJmFIv5nSbvzQYuoXyhX97",
};
static const char *const algs[] = {NULL, "ssh-ed25519", "rsa-sha2-256", "rsa-sha2-512"};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    wipe_alloc_install_jansson();
    return 0;
}

static void key_line(const uint8_t *data, size_t size)
{
    char *f[2], err[256];
    struct sshsig_key k;

    fuzz_split(data, size, '\n', f, 2);
    if (sshsig_parse_pubkey(f[0], &k, err, sizeof(err)) == 0) {
        if (k.blob_len == 0 || k.blob_len > sizeof(k.blob) || k.sig_len == 0 ||
            k.sig_len > SSHSIG_MAX_SIG_BYTES || strncmp(k.fingerprint, "SHA256:", 7) != 0)
            __builtin_trap();
        if (f[1] && sshsig_set_algorithm(&k, f[1], err, sizeof(err)) < 0 && !err[0])
            __builtin_trap();
        (void)sshsig_rsa_prefs(&k);
    } else if (!err[0]) {
        __builtin_trap();  /* a refusal must say why */
    }
    fuzz_fields_free(f, 2);
}

static void userauth_data(uint8_t pick, const uint8_t *data, size_t size)
{
    struct sshsig_key k;
    const char *alg = NULL;
    char err[256];
    size_t sid = (size_t[]){0, 20, 32, 48, 64}[pick % 5];

    if (sshsig_parse_pubkey(lines[pick % 4], &k, err, sizeof(err)) < 0)
        __builtin_trap();
    sshsig_set_algorithm(&k, algs[(pick >> 4) % 4], err, sizeof(err));
    if (sshsig_check_data(&k, "u", NULL, sid, data, size, &alg, err, sizeof(err)) == 0 && !alg)
        __builtin_trap();
}

static void signature(uint8_t pick, const uint8_t *data, size_t size)
{
    static const char *const sig_algs[] = {"ssh-ed25519", "ecdsa-sha2-nistp256",
                                           "ecdsa-sha2-nistp384", "rsa-sha2-512"};
    uint8_t out[SSHSIG_MAX_SIG_BYTES + 16], blob[SSHSIG_MAX_SIG_BYTES + 64];
    struct sshsig_key k;
    char *f[1], err[256];
    size_t n, bn;

    if (sshsig_parse_pubkey(lines[pick % 4], &k, err, sizeof(err)) < 0)
        __builtin_trap();
    fuzz_split(data, size, 0, f, 1);
    if (sshsig_convert(&k, sig_algs[pick % 4], f[0], out, &n, err, sizeof(err)) == 0) {
        if (n == 0 || n > k.sig_len + 10)
            __builtin_trap();
        if (sshsig_blob(sig_algs[pick % 4], out, n, blob, sizeof(blob), &bn) < 0)
            __builtin_trap();
    }
    fuzz_fields_free(f, 1);
}

static void sign_frame(const uint8_t *data, size_t size)
{
    uint8_t raw[SSHSIG_MAX_SIG_BYTES];
    uint32_t request;
    char *sig = NULL, *b64;

    if (proto_parse_sign((const char *)data, size, &request, &sig) == 0 && request == 0)
        __builtin_trap();
    if (sig)
        (void)sshsig_b64decode(sig, strlen(sig), raw, sizeof(raw));
    free(sig);
    b64 = sshsig_b64encode(data, size);
    if (b64) {
        long n = sshsig_b64decode(b64, strlen(b64), raw, sizeof(raw));
        if (size <= sizeof(raw) && (n != (long)size || memcmp(raw, data, size) != 0))
            __builtin_trap();  /* encode and decode must agree */
        free(b64);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 4) {
    case 0: key_line(data + 1, size - 1); break;
    case 1: userauth_data(data[0] >> 2, data + 1, size - 1); break;
    case 2: signature(data[0] >> 2, data + 1, size - 1); break;
    default: sign_frame(data + 1, size - 1); break;
    }
    return 0;
}
