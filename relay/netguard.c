/* The SSRF guard: which addresses the relay may connect to (PROTOCOL §1.2
 * check 10), CIDR parsing for the settings that name address ranges, and
 * the resolve-then-pin step the session worker runs before connecting. */
#include "netguard.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What to do with an address that falls in a range. */
enum range_action {
    RANGE_BLOCK,         /* never connect */
    RANGE_EMBED_LAST32,  /* judge the IPv4 address in bits 96..127 */
    RANGE_EMBED_6TO4,    /* judge the IPv4 address in bits 16..47 */
};

struct range {
    uint8_t prefix[16];
    int bits;
    enum range_action action;
    const char *why;
};

/* IPv4 ranges the relay refuses, in the order they are tried (the first
 * match names the reason). */
static const struct range v4_ranges[] = {
    { {0, 0, 0, 0}, 8, RANGE_BLOCK,
      "\"this network\"; 0.0.0.0 reaches the local host on Linux" },
    { {10, 0, 0, 0}, 8, RANGE_BLOCK, "private network (RFC 1918)" },
    { {100, 64, 0, 0}, 10, RANGE_BLOCK,
      "carrier-grade NAT shared space (RFC 6598), also Tailscale" },
    { {127, 0, 0, 0}, 8, RANGE_BLOCK, "loopback" },
    { {169, 254, 0, 0}, 16, RANGE_BLOCK,
      "link-local, where cloud metadata services answer" },
    { {172, 16, 0, 0}, 12, RANGE_BLOCK, "private network (RFC 1918)" },
    { {192, 0, 0, 0}, 24, RANGE_BLOCK,
      "IETF protocol assignments (RFC 6890), e.g. DS-Lite" },
    { {192, 0, 2, 0}, 24, RANGE_BLOCK, "documentation TEST-NET-1" },
    { {192, 88, 99, 0}, 24, RANGE_BLOCK,
      "deprecated 6to4 relay anycast (RFC 7526)" },
    { {192, 168, 0, 0}, 16, RANGE_BLOCK, "private network (RFC 1918)" },
    { {198, 18, 0, 0}, 15, RANGE_BLOCK, "benchmarking (RFC 2544)" },
    { {198, 51, 100, 0}, 24, RANGE_BLOCK, "documentation TEST-NET-2" },
    { {203, 0, 113, 0}, 24, RANGE_BLOCK, "documentation TEST-NET-3" },
    { {224, 0, 0, 0}, 4, RANGE_BLOCK, "multicast" },
    { {255, 255, 255, 255}, 32, RANGE_BLOCK, "limited broadcast" },
    { {240, 0, 0, 0}, 4, RANGE_BLOCK, "reserved (former class E)" },
};

/* IPv6 ranges, in the order they are tried. Whatever none of them matches
 * must still lie in 2000::/3, the only space allocated for global unicast:
 * anything else is unassigned or special and no SFTP server lives there. */
static const struct range v6_ranges[] = {
    { {0}, 128, RANGE_BLOCK, "unspecified address" },
    { {[15] = 1}, 128, RANGE_BLOCK, "loopback" },
    { {[10] = 0xff, [11] = 0xff}, 96, RANGE_EMBED_LAST32,
      "IPv4-mapped" },
    /* Deprecated IPv4-compatible form: it carries an IPv4 address, judge it. */
    { {0}, 96, RANGE_EMBED_LAST32, "IPv4-compatible" },
    /* Well-known NAT64 prefix: a translator connects to the IPv4 inside. */
    { {0x00, 0x64, 0xff, 0x9b}, 96, RANGE_EMBED_LAST32, "NAT64" },
    /* Local-use NAT64 (RFC 8215): where the IPv4 sits depends on the
     * operator's prefix length, so it cannot be judged: refuse. */
    { {0x00, 0x64, 0xff, 0x9b, 0x00, 0x01}, 48, RANGE_BLOCK,
      "local-use NAT64 (RFC 8215)" },
    { {0x01, 0x00}, 64, RANGE_BLOCK, "discard-only (RFC 6666)" },
    /* Teredo embeds an obfuscated client address and reaches through a
     * relay of its own choosing: refuse outright. */
    { {0x20, 0x01, 0x00, 0x00}, 32, RANGE_BLOCK, "Teredo tunnel" },
    { {0x20, 0x01, 0x00, 0x02, 0x00, 0x00}, 48, RANGE_BLOCK,
      "benchmarking (RFC 5180)" },
    { {0x20, 0x01, 0x00, 0x10}, 28, RANGE_BLOCK, "ORCHID, not routable" },
    { {0x20, 0x01, 0x00, 0x20}, 28, RANGE_BLOCK, "ORCHIDv2, not routable" },
    { {0x20, 0x01, 0x0d, 0xb8}, 32, RANGE_BLOCK, "documentation" },
    /* 6to4 routes to the IPv4 address in bits 16..47: judge that one. */
    { {0x20, 0x02}, 16, RANGE_EMBED_6TO4, "6to4" },
    { {0x3f, 0xff}, 20, RANGE_BLOCK, "documentation (RFC 9637)" },
    { {0xfc}, 7, RANGE_BLOCK, "unique local address (private network)" },
    { {0xfe, 0x80}, 10, RANGE_BLOCK, "link-local" },
    { {0xfe, 0xc0}, 10, RANGE_BLOCK, "deprecated site-local" },
    { {0xff}, 8, RANGE_BLOCK, "multicast" },
};

static const uint8_t v6_global_unicast[16] = {0x20};  /* 2000::/3 */

static const uint8_t v4_mapped_prefix[12] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
};

/* 1 when the first `bits` bits of `a` and `p` are equal. */
static int prefix_match(const uint8_t *a, const uint8_t *p, int bits)
{
    int full = bits / 8, rest = bits % 8;

    if (memcmp(a, p, (size_t)full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (p[full] & mask);
}

static void clear_host_bits(uint8_t *a, int len, int bits)
{
    for (int i = 0; i < len; i++) {
        int keep = bits - i * 8;
        if (keep >= 8)
            continue;
        a[i] = keep <= 0 ? 0 : (uint8_t)(a[i] & (0xff << (8 - keep)));
    }
}

/* The address in `sa` as family + bytes, an IPv4-mapped IPv6 address turned
 * into its IPv4 address. Returns 0 or -1 for an unknown family. */
static int addr_bytes(const struct sockaddr *sa, int *family, uint8_t out[16])
{
    if (!sa)
        return -1;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        memcpy(out, &sin->sin_addr, 4);
        *family = AF_INET;
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        const uint8_t *b = sin6->sin6_addr.s6_addr;
        if (memcmp(b, v4_mapped_prefix, 12) == 0) {
            memcpy(out, b + 12, 4);
            *family = AF_INET;
        } else {
            memcpy(out, b, 16);
            *family = AF_INET6;
        }
        return 0;
    }
    return -1;
}

static const char *v4_reason(const uint8_t a[4])
{
    for (size_t i = 0; i < sizeof(v4_ranges) / sizeof(v4_ranges[0]); i++)
        if (prefix_match(a, v4_ranges[i].prefix, v4_ranges[i].bits))
            return v4_ranges[i].why;
    return NULL;
}

static const char *v6_reason(const uint8_t a[16])
{
    for (size_t i = 0; i < sizeof(v6_ranges) / sizeof(v6_ranges[0]); i++) {
        const struct range *r = &v6_ranges[i];
        if (!prefix_match(a, r->prefix, r->bits))
            continue;
        switch (r->action) {
        case RANGE_BLOCK:
            return r->why;
        case RANGE_EMBED_LAST32:
            return v4_reason(a + 12) ? r->why : NULL;
        case RANGE_EMBED_6TO4:
            return v4_reason(a + 2) ? r->why : NULL;
        }
    }
    if (!prefix_match(a, v6_global_unicast, 3))
        return "outside global unicast 2000::/3 (reserved)";
    return NULL;
}

/* Why `sa` is blocked, or NULL when it is not. */
static const char *blocked_reason(const struct sockaddr *sa)
{
    int family;
    uint8_t a[16];

    if (!sa)
        return "no address";
    /* Judge the raw IPv6 bytes: the mapped range has its own entry. */
    if (sa->sa_family == AF_INET6)
        return v6_reason(((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr);
    if (addr_bytes(sa, &family, a) != 0)
        return "unknown address family";
    return v4_reason(a);
}

/* Strict decimal prefix length: 1-3 digits, no leading zero, <= max. */
static int parse_prefix(const char *s, int max)
{
    int v = 0;
    size_t n = strlen(s);

    if (n == 0 || n > 3 || (n > 1 && s[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= max ? v : -1;
}

int netguard_parse_cidr(const char *s, struct cidr *out)
{
    char addr[NETGUARD_ADDRSTRLEN];
    const char *slash;
    size_t alen;
    struct cidr c;

    if (!s || !out)
        return -1;
    memset(&c, 0, sizeof(c));
    slash = strchr(s, '/');
    alen = slash ? (size_t)(slash - s) : strlen(s);
    if (alen == 0 || alen >= sizeof(addr))
        return -1;
    memcpy(addr, s, alen);
    addr[alen] = '\0';

    if (inet_pton(AF_INET, addr, c.addr) == 1) {
        c.family = AF_INET;
        c.prefix = slash ? parse_prefix(slash + 1, 32) : 32;
    } else if (inet_pton(AF_INET6, addr, c.addr) == 1) {
        c.family = AF_INET6;
        c.prefix = slash ? parse_prefix(slash + 1, 128) : 128;
    } else {
        return -1;
    }
    if (c.prefix < 0)
        return -1;

    /* Addresses are matched with mapped forms folded to IPv4, so a mapped
     * CIDR must be folded the same way to ever match. */
    if (c.family == AF_INET6 && c.prefix >= 96 &&
        memcmp(c.addr, v4_mapped_prefix, 12) == 0) {
        memmove(c.addr, c.addr + 12, 4);
        memset(c.addr + 4, 0, 12);
        c.family = AF_INET;
        c.prefix -= 96;
    }
    clear_host_bits(c.addr, c.family == AF_INET ? 4 : 16, c.prefix);
    *out = c;
    return 0;
}

int netguard_cidr_contains(const struct cidr *c, const struct sockaddr *sa)
{
    int family;
    uint8_t a[16];

    if (!c || addr_bytes(sa, &family, a) != 0 || family != c->family)
        return 0;
    if (c->prefix < 0 || c->prefix > (family == AF_INET ? 32 : 128))
        return 0;
    return prefix_match(a, c->addr, c->prefix);
}

int netguard_is_blocked(const struct sockaddr *sa)
{
    return blocked_reason(sa) != NULL;
}

int netguard_check_addr(const struct cidr *allow, int n_allow,
                       const struct sockaddr *sa)
{
    if (!sa)
        return -1;
    for (int i = 0; allow && i < n_allow; i++)
        if (netguard_cidr_contains(&allow[i], sa))
            return 0;
    return netguard_is_blocked(sa) ? -1 : 0;
}

int netguard_literal(const char *host, struct sockaddr_storage *out,
                     socklen_t *outlen)
{
    char buf[NETGUARD_ADDRSTRLEN];
    size_t n;
    struct sockaddr_storage ss;

    if (!host)
        return 0;
    memset(&ss, 0, sizeof(ss));
    n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        /* Brackets only ever wrap an IPv6 address. */
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        if (n - 2 >= sizeof(buf))
            return 0;
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = '\0';
        if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) != 1)
            return 0;
        sin6->sin6_family = AF_INET6;
        if (out)
            *out = ss;
        if (outlen)
            *outlen = sizeof(*sin6);
        return 1;
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        if (out)
            *out = ss;
        if (outlen)
            *outlen = sizeof(*sin);
        return 1;
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        if (out)
            *out = ss;
        if (outlen)
            *outlen = sizeof(*sin6);
        return 1;
    }
    return 0;
}

int netguard_ntop(const struct sockaddr *sa, char *out, size_t outlen)
{
    int family;
    uint8_t a[16];

    if (!out || outlen == 0 || addr_bytes(sa, &family, a) != 0)
        return -1;
    if (!inet_ntop(family, a, out, (socklen_t)outlen))
        return -1;
    return 0;
}

static void set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

/* Judge one resolved address: NETGUARD_E_BLOCKED (with `err` filled) when
 * blocked. */
static int judge(const struct cidr *allow, int n_allow, const struct sockaddr *sa,
                 const char *host, char *err, size_t errlen)
{
    char text[NETGUARD_ADDRSTRLEN];

    if (netguard_check_addr(allow, n_allow, sa) == 0)
        return 0;
    if (err && errlen) {
        if (netguard_ntop(sa, text, sizeof(text)) != 0)
            snprintf(text, sizeof(text), "?");
        snprintf(err, errlen, "%s: blocked address %s (%s)",
                 host, text, blocked_reason(sa) ? blocked_reason(sa) : "?");
    }
    return NETGUARD_E_BLOCKED;
}

int netguard_pick(const struct cidr *allow, int n_allow, const struct addrinfo *res,
                  const char *host, int port, struct sockaddr_storage *out,
                  socklen_t *outlen, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    int found = 0;

    if (err && errlen)
        err[0] = '\0';
    if (!host || port < 1 || port > 65535 || !out || !outlen) {
        if (err && errlen)
            snprintf(err, errlen, "invalid target");
        return NETGUARD_E_UNRESOLVED;
    }
    memset(&ss, 0, sizeof(ss));
    for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        if (!ai->ai_addr || ai->ai_addrlen > sizeof(ss) ||
            ai->ai_addr->sa_family != ai->ai_family)
            continue;
        if (judge(allow, n_allow, ai->ai_addr, host, err, errlen) != 0)
            return NETGUARD_E_BLOCKED;
        if (!found) {
            /* getaddrinfo() already sorted by RFC 6724: pin the first. */
            memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
            sslen = ai->ai_addrlen;
            found = 1;
        }
    }
    if (!found) {
        if (err && errlen)
            snprintf(err, errlen, "%s has no IPv4 or IPv6 address", host);
        return NETGUARD_E_UNRESOLVED;
    }
    set_port(&ss, port);
    *out = ss;
    *outlen = sslen;
    return 0;
}

int netguard_resolve(const struct cidr *allow, int n_allow, const char *host, int port,
                     struct sockaddr_storage *out, socklen_t *outlen,
                     char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    struct sockaddr_storage ss;
    socklen_t sslen;
    int rc;

    if (err && errlen)
        err[0] = '\0';
    if (!host || !*host || port < 1 || port > 65535 || !out || !outlen) {
        if (err && errlen)
            snprintf(err, errlen, "invalid target");
        return NETGUARD_E_UNRESOLVED;
    }

    if (netguard_literal(host, &ss, &sslen)) {
        if (judge(allow, n_allow, (struct sockaddr *)&ss, host, err, errlen) != 0)
            return NETGUARD_E_BLOCKED;
        set_port(&ss, port);
        *out = ss;
        *outlen = sslen;
        return 0;
    }

    /* No AI_ADDRCONFIG: every address the name has is judged, including
     * those of a family this host cannot reach, so a name that mixes
     * public and private addresses is refused wherever the relay runs. */
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0) {
        if (err && errlen)
            snprintf(err, errlen, "%s does not resolve: %s", host,
                     gai_strerror(rc));
        return NETGUARD_E_UNRESOLVED;
    }
    rc = netguard_pick(allow, n_allow, res, host, port, out, outlen, err, errlen);
    freeaddrinfo(res);
    return rc;
}
