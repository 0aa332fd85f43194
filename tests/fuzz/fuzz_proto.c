/* libFuzzer target: the browser's text frames (PROTOCOL §2-§3) as the
 * service thread parses them: a request (and, for auth, the credentials
 * taken out of it), and the host key acceptance. The input is the frame. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "wipe_alloc.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    /* As in main(): JSON goes through the wiping allocator. */
    wipe_alloc_install_jansson();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proto_request req;
    struct proto_auth auth;
    const char *err = NULL;
    char *out;

    (void)proto_is_host_key_accepted((const char *)data, size);
    if (proto_parse_request((const char *)data, size, &req) < 0)
        return 0;
    (void)proto_method_takes_binary(req.method);
    (void)proto_method_name(req.method);
    /* Whatever parsed must be answerable: the strings the request points
     * at go into a reply the way the worker would echo them. */
    if (req.error) {
        out = proto_error(req.id, req.error, req.code);
        free(out);
    }
    if (req.path) {
        size_t n = strlen(req.path);
        (void)n;
        out = proto_error(req.id, req.path, "not_found");
        free(out);
    }
    if (req.method == M_AUTH && !req.error) {
        if (proto_auth_take(&req, &auth, &err) == 0) {
            /* What ssh_login() relies on: NUL-terminated strings. */
            (void)strlen(auth.username);
            if (auth.password)
                (void)strlen(auth.password);
            if (auth.private_key)
                (void)strlen(auth.private_key);
            if (auth.passphrase)
                (void)strlen(auth.passphrase);
            if (auth.public_key)
                (void)strlen(auth.public_key);
            if (auth.algorithm)
                (void)strlen(auth.algorithm);
            proto_auth_wipe(&auth);
        } else if (!err) {
            __builtin_trap();  /* a refusal must say why */
        }
    }
    proto_request_free(&req);
    return 0;
}
