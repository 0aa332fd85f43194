/* libFuzzer target: the SSRF guard's parsers and decisions. Input: an
 * address or host text, a newline, a CIDR text. Whatever the literal
 * parser accepts is classified, printed back, matched against the CIDR and
 * run through the allow-list decision and netguard_pick(). */
#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "fuzz_common.h"
#include "netguard.h"

static struct cidr allow[2];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (netguard_parse_cidr("127.0.0.0/8", &allow[0]) != 0 ||
        netguard_parse_cidr("fd00::/8", &allow[1]) != 0)
        __builtin_trap();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *f[2], text[NETGUARD_ADDRSTRLEN], err[256];
    struct sockaddr_storage ss, pinned;
    socklen_t len = 0, plen = 0;
    struct cidr c;
    int have_cidr;

    fuzz_split(data, size, '\n', f, 2);
    have_cidr = f[1] && netguard_parse_cidr(f[1], &c) == 0;
    if (have_cidr) {
        if (c.family != AF_INET && c.family != AF_INET6)
            __builtin_trap();
        if (c.prefix < 0 || c.prefix > (c.family == AF_INET ? 32 : 128))
            __builtin_trap();
    }
    if (netguard_parse_cidr(f[0], &c) == 0)
        have_cidr = 1;
    if (netguard_literal(f[0], &ss, &len)) {
        struct addrinfo ai;
        const struct sockaddr *sa = (const struct sockaddr *)&ss;

        if (len > sizeof(ss))
            __builtin_trap();
        (void)netguard_is_blocked(sa);
        (void)netguard_check_addr(allow, 2, sa);
        if (netguard_ntop(sa, text, sizeof(text)) != 0)
            __builtin_trap();
        if (have_cidr)
            (void)netguard_cidr_contains(&c, sa);
        memset(&ai, 0, sizeof(ai));
        ai.ai_family = ss.ss_family;
        ai.ai_socktype = SOCK_STREAM;
        ai.ai_addr = (struct sockaddr *)&ss;
        ai.ai_addrlen = len;
        (void)netguard_pick(allow, 2, &ai, f[0], 22, &pinned, &plen, err, sizeof(err));
    }
    fuzz_fields_free(f, 2);
    return 0;
}
