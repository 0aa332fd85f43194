/* Parsing and building of the relay's JSON frames. Validation happens here
 * once, completely, so the layers above only see well-formed requests or
 * the exact error string PROTOCOL.md prescribes for a malformed one. */
#include "proto.h"

#include <stdlib.h>
#include <string.h>

#include "wipe.h"

const char *const proto_features[] = {"write-through", "fsync", "resume", "codes", "sign",
                                      NULL};

/* What each method needs. `param` names the required string parameter whose
 * absence is answered "missing <param>"; rename checks its two itself. */
struct method_spec {
    const char *name;
    const char *param;
    int takes_binary;
};

#define METHOD_SPEC(wire, e, param, binary, handler) [e] = {wire, param, binary},
static const struct method_spec methods[M_COUNT] = {
    [M_UNKNOWN] = {NULL, NULL, 0},
    PROTO_VERBS(METHOD_SPEC)
};
#undef METHOD_SPEC

int proto_method_takes_binary(enum proto_method m)
{
    return m > M_UNKNOWN && m < M_COUNT && methods[m].takes_binary;
}

const char *proto_method_name(enum proto_method m)
{
    if (m <= M_UNKNOWN || m >= M_COUNT)
        return "unknown";
    return methods[m].name;
}

static enum proto_method method_lookup(const char *name)
{
    for (int m = M_UNKNOWN + 1; m < M_COUNT; m++)
        if (strcmp(methods[m].name, name) == 0)
            return (enum proto_method)m;
    return M_UNKNOWN;
}

/* A string parameter, or NULL when absent or not a string. Empty strings
 * count as absent: no SFTP operation has a meaningful empty path. */
static const char *param_str(json_t *params, const char *key)
{
    const char *s = json_string_value(json_object_get(params, key));
    return (s && *s) ? s : NULL;
}

static void set_error(struct proto_request *req, const char *msg)
{
    req->error = msg;
    req->code = "bad_request";
}

static void parse_params(struct proto_request *req, json_t *params)
{
    const struct method_spec *spec = &methods[req->method];

    req->path = param_str(params, "path");
    req->handle = param_str(params, "handle");
    req->resume = json_is_true(json_object_get(params, "resume"));
    if (req->method == M_RENAME) {
        req->from = param_str(params, "from");
        if (!req->from)
            req->from = param_str(params, "oldPath");
        req->to = param_str(params, "to");
        if (!req->to)
            req->to = param_str(params, "newPath");
        if (!req->from)
            set_error(req, "missing from");
        else if (!req->to)
            set_error(req, "missing to");
        return;
    }
    if (req->method == M_FS_INFO && !req->path)
        req->path = "/";
    if (!spec->param)
        return;
    if (strcmp(spec->param, "path") == 0 && !req->path)
        set_error(req, "missing path");
    else if (strcmp(spec->param, "handle") == 0 && !req->handle)
        set_error(req, "missing handle");
}

int proto_parse_request(const char *text, size_t len, struct proto_request *req)
{
    json_t *root, *jid, *params;
    const char *method;
    json_int_t id;

    memset(req, 0, sizeof(*req));
    if (len > PROTO_MAX_TEXT_BYTES)
        return -1;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(root))
        goto not_request;
    jid = json_object_get(root, "id");
    method = json_string_value(json_object_get(root, "method"));
    if (!json_is_integer(jid) || !method)
        goto not_request;
    id = json_integer_value(jid);
    if (id < 0 || id > (json_int_t)UINT32_MAX)
        goto not_request;

    req->root = root;
    req->id = (uint32_t)id;
    req->method = method_lookup(method);
    if (req->method == M_UNKNOWN) {
        req->error = "unknown method";
        req->code = "unknown_method";
        return 0;
    }
    params = json_object_get(root, "params");
    if (params && !json_is_object(params) && !json_is_null(params)) {
        set_error(req, "invalid params");
        return 0;
    }
    parse_params(req, params);
    return 0;

not_request:
    json_decref(root);
    memset(req, 0, sizeof(*req));
    return -1;
}

void proto_request_free(struct proto_request *req)
{
    if (!req)
        return;
    json_decref(req->root);
    memset(req, 0, sizeof(*req));
}

int proto_is_host_key_accepted(const char *text, size_t len)
{
    json_t *root = json_loadb(text, len, 0, NULL);
    const char *type = json_string_value(json_object_get(root, "type"));
    int ok = type && strcmp(type, "host_key_accepted") == 0;

    json_decref(root);
    return ok;
}

int proto_parse_sign(const char *text, size_t len, uint32_t *request, char **signature)
{
    json_t *root, *jreq;
    const char *type, *sig;
    json_int_t id;
    int rc = -1;

    *request = 0;
    *signature = NULL;
    if (len > PROTO_MAX_TEXT_BYTES)
        return -1;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
    type = json_string_value(json_object_get(root, "type"));
    jreq = json_object_get(root, "request");
    if (!type || strcmp(type, "sign") != 0 || !json_is_integer(jreq))
        goto out;
    id = json_integer_value(jreq);
    if (id < 1 || id > (json_int_t)UINT32_MAX)
        goto out;
    sig = json_string_value(json_object_get(root, "signature"));
    if (sig) {
        *signature = strdup(sig);
        if (!*signature)
            goto out;
    }
    *request = (uint32_t)id;
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* Duplicate a credential string, then wipe the original inside the JSON
 * tree. jansson keeps the length next to the string, so overwriting in
 * place with zeros is safe for its later free. */
static char *take_secret(json_t *params, const char *key)
{
    json_t *v = json_object_get(params, key);
    const char *s = json_string_value(v);
    char *copy;

    if (!s)
        return NULL;
    copy = strdup(s);
    wipe_mem((char *)s, json_string_length(v));
    return copy;
}

void proto_auth_wipe(struct proto_auth *a)
{
    char **fields[] = {&a->username, &a->password, &a->private_key, &a->passphrase,
                       &a->public_key, &a->algorithm};

    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (*fields[i]) {
            wipe_mem(*fields[i], strlen(*fields[i]));
            free(*fields[i]);
            *fields[i] = NULL;
        }
    }
}

int proto_auth_take(struct proto_request *req, struct proto_auth *out,
                    const char **errmsg)
{
    json_t *params = json_object_get(req->root, "params");
    const char *type = json_string_value(json_object_get(params, "type"));

    memset(out, 0, sizeof(*out));
    *errmsg = NULL;
    if (!json_is_object(params)) {
        *errmsg = "invalid auth request: missing params";
        return -1;
    }
    if (!type || strcmp(type, "password") == 0) {
        out->type = AUTH_PASSWORD;
        out->password = take_secret(params, "password");
    } else if (strcmp(type, "publickey") == 0) {
        out->type = AUTH_PUBLICKEY;
        out->private_key = take_secret(params, "privateKey");
        out->passphrase = take_secret(params, "passphrase");
    } else if (strcmp(type, "publickey-sign") == 0) {
        /* Not a secret, but one copy to wipe is simpler than two rules. */
        out->type = AUTH_PUBLICKEY_SIGN;
        out->public_key = take_secret(params, "publicKey");
        out->algorithm = take_secret(params, "algorithm");
    } else {
        /* Wipe whatever secrets came along before refusing. */
        char *junk[] = {take_secret(params, "password"),
                        take_secret(params, "privateKey"),
                        take_secret(params, "passphrase")};
        for (int i = 0; i < 3; i++)
            if (junk[i]) {
                wipe_mem(junk[i], strlen(junk[i]));
                free(junk[i]);
            }
        *errmsg = "invalid auth request: unknown type";
        return -1;
    }
    out->username = take_secret(params, "username");
    if (!out->username || !*out->username)
        *errmsg = "invalid auth request: missing username";
    else if (out->type == AUTH_PASSWORD && !out->password)
        *errmsg = "invalid auth request: missing password";
    else if (out->type == AUTH_PUBLICKEY && (!out->private_key || !*out->private_key))
        *errmsg = "invalid auth request: missing privateKey";
    else if (out->type == AUTH_PUBLICKEY_SIGN && (!out->public_key || !*out->public_key))
        *errmsg = "invalid auth request: missing publicKey";
    else if (strlen(out->username) > PROTO_MAX_USERNAME_BYTES)
        *errmsg = "invalid auth request: username too long";
    else if (out->password && strlen(out->password) > PROTO_MAX_PASSWORD_BYTES)
        *errmsg = "invalid auth request: password too long";
    else if (out->private_key && strlen(out->private_key) > PROTO_MAX_PRIVATE_KEY_BYTES)
        *errmsg = "invalid auth request: privateKey too long";
    else if (out->passphrase && strlen(out->passphrase) > PROTO_MAX_PASSPHRASE_BYTES)
        *errmsg = "invalid auth request: passphrase too long";
    else if (out->public_key && strlen(out->public_key) > PROTO_MAX_PUBLIC_KEY_BYTES)
        *errmsg = "invalid auth request: publicKey too long";
    else if (out->algorithm && strlen(out->algorithm) > PROTO_MAX_ALGORITHM_BYTES)
        *errmsg = "invalid auth request: algorithm too long";
    if (*errmsg) {
        proto_auth_wipe(out);
        return -1;
    }
    if (out->passphrase && !*out->passphrase) {
        free(out->passphrase);
        out->passphrase = NULL;
    }
    return 0;
}

/* The result is plain malloc memory whatever allocator jansson was given
 * (json_set_alloc_funcs), so callers can always free() it. */
static char *dump(json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL, *out = NULL;
    json_malloc_t jmalloc;
    json_free_t jfree;

    json_decref(obj);
    if (!s)
        return NULL;
    out = strdup(s);
    json_get_alloc_funcs(&jmalloc, &jfree);
    jfree(s);
    return out;
}

char *proto_result(uint32_t id, json_t *result)
{
    if (!result)
        return NULL;
    return dump(json_pack("{s:I,s:o}", "id", (json_int_t)id, "result", result));
}

char *proto_result_empty(uint32_t id)
{
    return proto_result(id, json_object());
}

char *proto_error(uint32_t id, const char *msg, const char *code)
{
    json_t *o = json_pack("{s:I,s:s}", "id", (json_int_t)id, "error", msg);

    if (o && code)
        json_object_set_new(o, "code", json_string(code));
    return dump(o);
}

char *proto_setup_error(const char *code, const char *msg)
{
    return dump(json_pack("{s:s,s:s,s:s}", "type", "error", "code", code, "error", msg));
}

char *proto_host_key(const char *fingerprint, const char *key_type)
{
    json_t *features = json_array();
    json_t *o;

    for (int i = 0; proto_features[i]; i++)
        json_array_append_new(features, json_string(proto_features[i]));
    o = json_pack("{s:s,s:s,s:i,s:o}", "type", "host_key", "fingerprint", fingerprint,
                  "relay_version", PROTO_RELAY_VERSION, "features", features);
    if (o && key_type)
        json_object_set_new(o, "key_type", json_string(key_type));
    return dump(o);
}

char *proto_sign_request(uint32_t request, const char *alg, const char *data_b64)
{
    return dump(json_pack("{s:s,s:I,s:s,s:s}", "type", "sign_request", "request",
                          (json_int_t)request, "algorithm", alg, "data", data_b64));
}
