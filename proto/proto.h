/* The browser-facing wire protocol (PROTOCOL.md §2, §3): parsing and
 * validation of the JSON text frames the app sends, and building of the
 * frames we answer with. No I/O and no threads: unit-testable alone. */
#ifndef WC_PROTO_H
#define WC_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "verbs.h"

/* Largest text frame we accept. The auth frame carries a private key
 * (an 8192-bit RSA key in PEM is ~6.5 KiB); nothing legitimate is larger. */
#define PROTO_MAX_TEXT_BYTES (64u * 1024)

/* Longest credentials accepted in an auth request, in bytes. They are
 * checked before any authentication attempt: an oversized one answers
 * bad_request on the auth id and is never counted as an auth failure
 * (a 60 KB password would otherwise fail inside libssh2 as an I/O error,
 * after the attempt was counted). Far above real use: OpenSSH user names
 * are short, passwords of password managers stay under 100 characters, and
 * an 8192-bit RSA key in PEM is ~6.5 KiB. */
#define PROTO_MAX_USERNAME_BYTES   1024u
#define PROTO_MAX_PASSWORD_BYTES   (4u * 1024)
#define PROTO_MAX_PASSPHRASE_BYTES (4u * 1024)
#define PROTO_MAX_PRIVATE_KEY_BYTES (16u * 1024)
/* One authorized_keys line (`sign` extension): an RSA 16384-bit public key
 * is about 2.8 KiB of base64. */
#define PROTO_MAX_PUBLIC_KEY_BYTES (8u * 1024)
/* Its optional signature algorithm name ("rsa-sha2-256"). */
#define PROTO_MAX_ALGORITHM_BYTES 64u

/* Wire limits that are not settings: they are part of the contract. */
#define PROTO_MAX_FRAME_BYTES   (16u * 1024 * 1024)  /* one binary frame */
#define PROTO_READ_CHUNK_BYTES  (256u * 1024)        /* one read_chunk */
#define PROTO_MAX_READ_HANDLES  8                    /* per session */

/* Sent as relay_version in the host_key frame: 3 = streaming reads. */
#define PROTO_RELAY_VERSION 3

/* One value per verb of verbs.h, in its order; M_UNKNOWN for any other
 * method name. */
#define PROTO_VERB_ENUM(name, e, param, binary, handler) e,
enum proto_method {
    M_UNKNOWN = 0,
    PROTO_VERBS(PROTO_VERB_ENUM)
    M_COUNT
};
#undef PROTO_VERB_ENUM

/* AUTH_PUBLICKEY_SIGN is the `sign` extension: the browser sends only
 * its public key and signs what the relay asks it to (sign_request). */
enum proto_auth_type { AUTH_PASSWORD, AUTH_PUBLICKEY, AUTH_PUBLICKEY_SIGN };

/* A parsed request. String pointers point into `root` and live as long as
 * the request; release with proto_request_free(). When the frame was a
 * request but an invalid one, `error` holds the exact message to answer
 * ("unknown method", "missing path", ...) and `code` its error code. */
struct proto_request {
    uint32_t id;
    enum proto_method method;
    const char *path;       /* path / write paths */
    const char *handle;     /* write_* / read_* handle */
    const char *from, *to;  /* rename (or legacy oldPath/newPath) */
    int resume;             /* write_open {"resume": true} */
    const char *error;
    const char *code;
    json_t *root;
};

/* Credentials copied out of an auth request into memory the session owns,
 * so the JSON tree can be wiped and dropped at once. Release with
 * proto_auth_wipe(), which zeroes before freeing. */
struct proto_auth {
    enum proto_auth_type type;
    char *username;
    char *password;         /* AUTH_PASSWORD */
    char *private_key;      /* AUTH_PUBLICKEY, NUL-terminated */
    char *passphrase;       /* AUTH_PUBLICKEY, NULL when none */
    char *public_key;       /* AUTH_PUBLICKEY_SIGN: one authorized_keys line */
    char *algorithm;        /* AUTH_PUBLICKEY_SIGN: the signature algorithm, or NULL */
};

/* Parse one text frame. Returns 0 when it is a request (check req->error),
 * -1 when it is not a JSON request at all (the caller ignores it). */
int proto_parse_request(const char *text, size_t len, struct proto_request *req);
void proto_request_free(struct proto_request *req);

/* Nonzero when the method's request is followed by one binary frame. */
int proto_method_takes_binary(enum proto_method m);
const char *proto_method_name(enum proto_method m);

/* 1 when the frame is exactly {"type":"host_key_accepted"} (more fields
 * tolerated), else 0. */
int proto_is_host_key_accepted(const char *text, size_t len);

/* The browser's answer to a sign_request:
 * {"type":"sign","request":K,"signature":"<base64>"}. Returns 0 when the
 * frame is a sign answer with an integer request id 1..2^32-1 (*request
 * set; *signature a malloc'd copy the caller frees, or NULL when the field
 * is missing or not a string, which the waiting login reports), else -1. */
int proto_parse_sign(const char *text, size_t len, uint32_t *request, char **signature);

/* Copy and validate the credentials of an auth request. Returns 0, or -1
 * with *errmsg set to the answer for the browser (code bad_request): a
 * missing field, an unknown type, or a field over its PROTO_MAX_*_BYTES
 * ("invalid auth request: password too long", ...). Wipes the credential
 * strings inside req->root. */
int proto_auth_take(struct proto_request *req, struct proto_auth *out,
                    const char **errmsg);
void proto_auth_wipe(struct proto_auth *a);

/* Builders. Each returns a NUL-terminated malloc'd string the caller owns
 * (free()), or NULL when out of memory. proto_result steals `result`. */
char *proto_result(uint32_t id, json_t *result);
char *proto_result_empty(uint32_t id);
char *proto_error(uint32_t id, const char *msg, const char *code);
char *proto_setup_error(const char *code, const char *msg);
char *proto_host_key(const char *fingerprint, const char *key_type);
/* {"type":"sign_request","request":K,"algorithm":alg,"data":data_b64}. */
char *proto_sign_request(uint32_t request, const char *alg, const char *data_b64);

/* Features this relay advertises in the host_key frame (§5). */
extern const char *const proto_features[];

#endif
