/* netguard: every blocked IPv4/IPv6 range with its neighbours just outside,
 * CIDR parsing, the allow_private exemption, IP literals, and the
 * resolve-then-pin decision (one blocked address refuses the name). */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "netguard.h"

/* -1 when `ip` is not a literal, else netguard_is_blocked(). */
static int blocked(const char *ip)
{
    struct sockaddr_storage ss;
    socklen_t len;

    if (!netguard_literal(ip, &ss, &len))
        return -1;
    return netguard_is_blocked((struct sockaddr *)&ss);
}

/* The relay passes the exemptions its config holds; so do the tests. */
#define ALLOW(c) (c).allow_private, (c).n_allow_private

static int check_addr(const struct config *cfg, const char *ip)
{
    struct sockaddr_storage ss;
    socklen_t len;

    if (!netguard_literal(ip, &ss, &len))
        return -99;
    if (!cfg)
        return netguard_check_addr(NULL, 0, (struct sockaddr *)&ss);
    return netguard_check_addr(ALLOW(*cfg), (struct sockaddr *)&ss);
}

static int contains(const char *cidr, const char *ip)
{
    struct cidr c;
    struct sockaddr_storage ss;
    socklen_t len;

    if (netguard_parse_cidr(cidr, &c) != 0 || !netguard_literal(ip, &ss, &len))
        return -1;
    return netguard_cidr_contains(&c, (struct sockaddr *)&ss);
}

struct verdict {
    const char *ip;
    int blocked;
};

static const struct verdict v4_cases[] = {
    /* 0.0.0.0/8 */
    {"0.0.0.0", 1}, {"0.1.2.3", 1}, {"0.255.255.255", 1}, {"1.0.0.0", 0},
    /* 10/8 */
    {"9.255.255.255", 0}, {"10.0.0.0", 1}, {"10.0.0.1", 1},
    {"10.255.255.255", 1}, {"11.0.0.0", 0},
    /* 100.64/10 */
    {"100.63.255.255", 0}, {"100.64.0.0", 1}, {"100.100.100.100", 1},
    {"100.127.255.255", 1}, {"100.128.0.0", 0},
    /* 127/8 */
    {"126.255.255.255", 0}, {"127.0.0.0", 1}, {"127.0.0.1", 1},
    {"127.255.255.255", 1}, {"128.0.0.0", 0},
    /* 169.254/16 */
    {"169.253.255.255", 0}, {"169.254.0.0", 1}, {"169.254.169.254", 1},
    {"169.254.255.255", 1}, {"169.255.0.0", 0},
    /* 172.16/12 */
    {"172.15.255.255", 0}, {"172.16.0.0", 1}, {"172.20.1.1", 1},
    {"172.31.255.255", 1}, {"172.32.0.0", 0},
    /* 192.0.0/24 and 192.0.2/24 */
    {"191.255.255.255", 0}, {"192.0.0.0", 1}, {"192.0.0.255", 1},
    {"192.0.1.0", 0}, {"192.0.1.255", 0}, {"192.0.2.0", 1},
    {"192.0.2.255", 1}, {"192.0.3.0", 0},
    /* 192.88.99/24 */
    {"192.88.98.255", 0}, {"192.88.99.0", 1}, {"192.88.99.255", 1},
    {"192.88.100.0", 0},
    /* 192.168/16 */
    {"192.167.255.255", 0}, {"192.168.0.0", 1}, {"192.168.1.1", 1},
    {"192.168.255.255", 1}, {"192.169.0.0", 0},
    /* 198.18/15 */
    {"198.17.255.255", 0}, {"198.18.0.0", 1}, {"198.19.255.255", 1},
    {"198.20.0.0", 0},
    /* 198.51.100/24 */
    {"198.51.99.255", 0}, {"198.51.100.0", 1}, {"198.51.100.255", 1},
    {"198.51.101.0", 0},
    /* 203.0.113/24 */
    {"203.0.112.255", 0}, {"203.0.113.0", 1}, {"203.0.113.255", 1},
    {"203.0.114.0", 0},
    /* 224/4, 240/4, broadcast */
    {"223.255.255.255", 0}, {"224.0.0.0", 1}, {"224.0.0.251", 1},
    {"239.255.255.255", 1}, {"240.0.0.0", 1}, {"250.1.2.3", 1},
    {"255.255.255.254", 1}, {"255.255.255.255", 1},
    /* ordinary public addresses */
    {"8.8.8.8", 0}, {"1.1.1.1", 0}, {"93.184.216.34", 0},
};

static const struct verdict v6_cases[] = {
    {"::", 1}, {"::1", 1},
    /* IPv4-compatible ::/96: the embedded address decides */
    {"::2", 1}, {"::10.0.0.1", 1}, {"::8.8.8.8", 0},
    /* mapped */
    {"::ffff:10.0.0.1", 1}, {"::ffff:127.0.0.1", 1}, {"::ffff:0.0.0.0", 1},
    {"::ffff:169.254.169.254", 1}, {"::ffff:100.64.0.1", 1},
    {"::ffff:8.8.8.8", 0}, {"::ffff:100.128.0.0", 0},
    /* IPv4-translated ::ffff:0:0:0/96 is not mapped: reserved space */
    {"::ffff:0:8.8.8.8", 1},
    /* NAT64 */
    {"64:ff9b::10.0.0.1", 1}, {"64:ff9b::7f00:1", 1}, {"64:ff9b::c0a8:101", 1},
    {"64:ff9b::8.8.8.8", 0}, {"64:ff9b:1::1", 1},
    /* discard-only 100::/64 */
    {"100::", 1}, {"100::ffff:ffff:ffff:ffff", 1},
    /* Teredo 2001::/32 */
    {"2001::", 1}, {"2001:0:ffff:ffff:ffff:ffff:ffff:ffff", 1},
    {"2001:1::1", 0},
    /* benchmarking 2001:2::/48 */
    {"2001:2::1", 1}, {"2001:2:0:ffff::1", 1}, {"2001:2:1::1", 0},
    /* ORCHID and ORCHIDv2 */
    {"2001:f::1", 0}, {"2001:10::1", 1}, {"2001:1f:ffff::1", 1},
    {"2001:20::1", 1}, {"2001:2f:ffff::1", 1}, {"2001:30::1", 0},
    /* documentation 2001:db8::/32 */
    {"2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", 0}, {"2001:db8::", 1},
    {"2001:db8::1", 1}, {"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 1},
    {"2001:db9::", 0},
    /* 6to4: the IPv4 in bits 16..47 decides */
    {"2002:0a00:0001::", 1}, {"2002:0a00:0001::1", 1}, {"2002:7f00:1::", 1},
    {"2002:c0a8:0101::1", 1}, {"2002::", 1}, {"2002:a9fe:a9fe::", 1},
    {"2002:0808:0808::", 0}, {"2002:0808:0808:1::1", 0},
    /* documentation 3fff::/20 */
    {"3ffe:ffff::1", 0}, {"3fff::1", 1}, {"3fff:fff:ffff::1", 1},
    {"3fff:1000::", 0},
    /* ULA fc00::/7 */
    {"fc00::", 1}, {"fc00::1", 1}, {"fd12:3456::1", 1}, {"fdff::1", 1},
    {"fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1},
    /* link-local, site-local, the reserved fe00::/9 below them, multicast */
    {"fe00::1", 1}, {"fe7f:ffff::1", 1}, {"fe80::", 1}, {"fe80::1", 1},
    {"febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1}, {"fec0::1", 1},
    {"feff::1", 1}, {"ff00::", 1}, {"ff02::1", 1},
    {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1},
    /* outside global unicast 2000::/3 */
    {"1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1}, {"4000::1", 1},
    {"5f00::1", 1}, {"fbff:ffff::1", 1},
    /* global unicast */
    {"2000::", 0}, {"2606:4700:4700::1111", 0}, {"2a00:1450:4001::1", 0},
    {"3ffe::1", 0}, {"2001:4860:4860::8888", 0},
};

static void test_ranges(void)
{
    for (size_t i = 0; i < sizeof(v4_cases) / sizeof(v4_cases[0]); i++) {
        int got = blocked(v4_cases[i].ip);
        if (got != v4_cases[i].blocked)
            fprintf(stderr, "v4 %s: blocked=%d, want %d\n", v4_cases[i].ip,
                    got, v4_cases[i].blocked);
        CHECK(got == v4_cases[i].blocked);
    }
    for (size_t i = 0; i < sizeof(v6_cases) / sizeof(v6_cases[0]); i++) {
        int got = blocked(v6_cases[i].ip);
        if (got != v6_cases[i].blocked)
            fprintf(stderr, "v6 %s: blocked=%d, want %d\n", v6_cases[i].ip,
                    got, v6_cases[i].blocked);
        CHECK(got == v6_cases[i].blocked);
    }

    /* An unknown family and NULL are blocked. */
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_UNIX;
    CHECK(netguard_is_blocked((struct sockaddr *)&ss) == 1);
    CHECK(netguard_is_blocked(NULL) == 1);
}

static void test_parse_cidr(void)
{
    struct cidr c;
    uint8_t want[16];

    CHECK(netguard_parse_cidr("10.0.0.0/8", &c) == 0);
    CHECK(c.family == AF_INET && c.prefix == 8);
    inet_pton(AF_INET, "10.0.0.0", want);
    CHECK(memcmp(c.addr, want, 4) == 0);

    /* Host bits are cleared. */
    CHECK(netguard_parse_cidr("10.1.2.3/8", &c) == 0);
    CHECK(memcmp(c.addr, want, 4) == 0);
    CHECK(netguard_parse_cidr("100.64.0.0/10", &c) == 0 && c.prefix == 10);
    CHECK(netguard_parse_cidr("0.0.0.0/0", &c) == 0 && c.prefix == 0);

    /* A bare address is a host route. */
    CHECK(netguard_parse_cidr("1.2.3.4", &c) == 0);
    CHECK(c.family == AF_INET && c.prefix == 32);
    CHECK(netguard_parse_cidr("::1", &c) == 0);
    CHECK(c.family == AF_INET6 && c.prefix == 128);
    CHECK(netguard_parse_cidr("2001:db8::/32", &c) == 0);
    CHECK(c.family == AF_INET6 && c.prefix == 32);
    CHECK(netguard_parse_cidr("2001:db8::/128", &c) == 0);
    CHECK(netguard_parse_cidr("::/0", &c) == 0 && c.prefix == 0);
    CHECK(netguard_parse_cidr("fd00::1234/8", &c) == 0);
    inet_pton(AF_INET6, "fd00::", want);
    CHECK(memcmp(c.addr, want, 16) == 0);

    /* A mapped CIDR becomes the IPv4 CIDR it denotes. */
    CHECK(netguard_parse_cidr("::ffff:10.0.0.0/104", &c) == 0);
    CHECK(c.family == AF_INET && c.prefix == 8);
    inet_pton(AF_INET, "10.0.0.0", want);
    CHECK(memcmp(c.addr, want, 4) == 0);
    CHECK(netguard_parse_cidr("::ffff:1.2.3.4", &c) == 0);
    CHECK(c.family == AF_INET && c.prefix == 32);

    static const char *const bad[] = {
        "", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/+8",
        "10.0.0.0/08", "10.0.0.0/8 ", " 10.0.0.0/8", "10.0.0.0 /8",
        "10.0.0.0/8/8", "10.0.0.0/1000", "10.0.0.0/8x", "2001:db8::/129",
        "fe80::1%eth0/64", "fe80::1%eth0", "[::1]", "[::1]/128", "10.0.0/8",
        "10.0.0.0.0/8", "010.0.0.0/8", "0x0a.0.0.0/8", "abc", "abc/8",
        "256.0.0.0/8", "1.2.3.4/32\n", "10/8", "2001:db8::/3 2",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = netguard_parse_cidr(bad[i], &c);
        if (rc != -1)
            fprintf(stderr, "cidr \"%s\" accepted\n", bad[i]);
        CHECK(rc == -1);
    }
    CHECK(netguard_parse_cidr(NULL, &c) == -1);
    CHECK(netguard_parse_cidr("10.0.0.0/8", NULL) == -1);
}

static void test_contains(void)
{
    CHECK(contains("10.0.0.0/8", "10.0.0.0") == 1);
    CHECK(contains("10.0.0.0/8", "10.255.255.255") == 1);
    CHECK(contains("10.0.0.0/8", "11.0.0.0") == 0);
    CHECK(contains("10.0.0.0/8", "9.255.255.255") == 0);
    CHECK(contains("100.64.0.0/10", "100.101.102.103") == 1);
    CHECK(contains("100.64.0.0/10", "100.128.0.1") == 0);
    CHECK(contains("1.2.3.4", "1.2.3.4") == 1);
    CHECK(contains("1.2.3.4", "1.2.3.5") == 0);
    CHECK(contains("0.0.0.0/0", "203.0.113.9") == 1);
    /* Mapped addresses are the IPv4 address they carry. */
    CHECK(contains("10.0.0.0/8", "::ffff:10.9.8.7") == 1);
    CHECK(contains("::ffff:10.0.0.0/104", "10.9.8.7") == 1);
    CHECK(contains("::ffff:10.0.0.0/104", "::ffff:10.9.8.7") == 1);
    /* Families never mix otherwise. */
    CHECK(contains("10.0.0.0/8", "2001:db8::1") == 0);
    CHECK(contains("0.0.0.0/0", "::1") == 0);
    CHECK(contains("::/0", "10.0.0.1") == 0);
    CHECK(contains("::/0", "2001:db8::1") == 1);
    CHECK(contains("2001:db8::/32", "2001:db8:ffff::1") == 1);
    CHECK(contains("2001:db8::/32", "2001:db9::") == 0);
    CHECK(contains("2001:db8:0:1::/63", "2001:db8:0:1:ffff::") == 1);
    CHECK(contains("2001:db8:0:2::/63", "2001:db8:0:1:ffff::") == 0);
    CHECK(contains("::1", "::1") == 1);
    CHECK(netguard_cidr_contains(NULL, NULL) == 0);
}

static void test_allow_private(void)
{
    struct config cfg;
    struct cidr allow[3];

    memset(&cfg, 0, sizeof(cfg));
    CHECK(check_addr(&cfg, "127.0.0.1") == -1);
    CHECK(check_addr(&cfg, "8.8.8.8") == 0);
    CHECK(check_addr(NULL, "8.8.8.8") == 0);
    CHECK(check_addr(NULL, "10.0.0.1") == -1);

    CHECK(netguard_parse_cidr("127.0.0.0/8", &allow[0]) == 0);
    cfg.allow_private = allow;
    cfg.n_allow_private = 1;
    CHECK(check_addr(&cfg, "127.0.0.1") == 0);
    CHECK(check_addr(&cfg, "127.255.255.255") == 0);
    CHECK(check_addr(&cfg, "::ffff:127.0.0.1") == 0);
    CHECK(check_addr(&cfg, "10.0.0.1") == -1);
    CHECK(check_addr(&cfg, "::1") == -1);            /* not a v4 range */
    CHECK(check_addr(&cfg, "2002:7f00:1::") == -1);  /* 6to4 is not mapped */
    CHECK(check_addr(&cfg, "8.8.8.8") == 0);

    /* A Tailscale peer. */
    CHECK(netguard_parse_cidr("100.64.0.0/10", &allow[1]) == 0);
    CHECK(netguard_parse_cidr("fd00::/8", &allow[2]) == 0);
    cfg.n_allow_private = 3;
    CHECK(check_addr(&cfg, "100.101.102.103") == 0);
    CHECK(check_addr(&cfg, "100.64.0.0") == 0);
    CHECK(check_addr(&cfg, "100.127.255.255") == 0);
    CHECK(check_addr(&cfg, "169.254.169.254") == -1);
    CHECK(check_addr(&cfg, "fd12::1") == 0);
    CHECK(check_addr(&cfg, "fc00::1") == -1);
    CHECK(netguard_check_addr(ALLOW(cfg), NULL) == -1);
}

static void test_literal(void)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    char text[NETGUARD_ADDRSTRLEN];

    CHECK(netguard_literal("1.2.3.4", &ss, &len) == 1);
    CHECK(ss.ss_family == AF_INET && len == sizeof(struct sockaddr_in));
    CHECK(netguard_literal("::1", &ss, &len) == 1);
    CHECK(ss.ss_family == AF_INET6 && len == sizeof(struct sockaddr_in6));
    CHECK(netguard_literal("[::1]", &ss, &len) == 1);
    CHECK(ss.ss_family == AF_INET6);
    CHECK(netguard_literal("[2001:DB8::1]", &ss, &len) == 1);
    CHECK(netguard_literal("::ffff:1.2.3.4", &ss, &len) == 1);
    CHECK(ss.ss_family == AF_INET6);
    CHECK(netguard_literal("1.2.3.4", NULL, NULL) == 1);

    static const char *const names[] = {
        "example.com", "localhost", "127.1", "2130706433", "0x7f.0.0.1",
        "0x7f000001", "01.2.3.4", "1.2.3.04", "[1.2.3.4]", "[::1", "::1]",
        "[[::1]]", "", "[]", "fe80::1%eth0", "[fe80::1%25eth0]", "1.2.3.4 ",
        " 1.2.3.4", "1.2.3.4.5", "::1 ", "1.2.3.4:22", "[::1]:22",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        int rc = netguard_literal(names[i], &ss, &len);
        if (rc != 0)
            fprintf(stderr, "\"%s\" taken for a literal\n", names[i]);
        CHECK(rc == 0);
    }
    CHECK(netguard_literal(NULL, &ss, &len) == 0);

    /* Canonical text. */
    CHECK(netguard_literal("::ffff:1.2.3.4", &ss, &len) == 1);
    CHECK(netguard_ntop((struct sockaddr *)&ss, text, sizeof(text)) == 0);
    CHECK_STR(text, "1.2.3.4");
    CHECK(netguard_literal("2001:DB8:0:0::0001", &ss, &len) == 1);
    CHECK(netguard_ntop((struct sockaddr *)&ss, text, sizeof(text)) == 0);
    CHECK_STR(text, "2001:db8::1");
    CHECK(netguard_ntop((struct sockaddr *)&ss, text, 5) == -1);
}

static struct addrinfo *ai_make(struct addrinfo *ai, struct sockaddr_storage *ss,
                                const char *ip, struct addrinfo *next)
{
    socklen_t len;

    memset(ai, 0, sizeof(*ai));
    if (!netguard_literal(ip, ss, &len))
        return NULL;
    ai->ai_family = ss->ss_family;
    ai->ai_socktype = SOCK_STREAM;
    ai->ai_addr = (struct sockaddr *)ss;
    ai->ai_addrlen = len;
    ai->ai_next = next;
    return ai;
}

static void test_pick(void)
{
    struct config cfg;
    struct addrinfo a[3];
    struct sockaddr_storage s[3], out;
    socklen_t outlen = 0;
    char err[256], text[NETGUARD_ADDRSTRLEN];
    struct addrinfo *list;

    memset(&cfg, 0, sizeof(cfg));

    /* All public: the first is pinned, with the port. */
    list = ai_make(&a[0], &s[0], "2606:4700:4700::1111",
                   ai_make(&a[1], &s[1], "1.1.1.1", NULL));
    CHECK(netguard_pick(ALLOW(cfg), list, "one.one", 2222, &out, &outlen, err,
                        sizeof(err)) == 0);
    CHECK(out.ss_family == AF_INET6 && outlen == sizeof(struct sockaddr_in6));
    CHECK(ntohs(((struct sockaddr_in6 *)&out)->sin6_port) == 2222);
    CHECK(netguard_ntop((struct sockaddr *)&out, text, sizeof(text)) == 0);
    CHECK_STR(text, "2606:4700:4700::1111");

    /* Public and private: refused, the error names the address. */
    list = ai_make(&a[0], &s[0], "93.184.216.34",
                   ai_make(&a[1], &s[1], "10.0.0.5",
                           ai_make(&a[2], &s[2], "8.8.8.8", NULL)));
    CHECK(netguard_pick(ALLOW(cfg), list, "mixed.example", 22, &out, &outlen, err,
                        sizeof(err)) == -1);
    CHECK(strstr(err, "10.0.0.5") != NULL);
    CHECK(strstr(err, "mixed.example") != NULL);

    /* A blocked IPv6 address among public IPv4 ones. */
    list = ai_make(&a[0], &s[0], "8.8.8.8", ai_make(&a[1], &s[1], "::1", NULL));
    CHECK(netguard_pick(ALLOW(cfg), list, "x", 22, &out, &outlen, err, sizeof(err)) == -1);

    /* Nothing usable: does not resolve. */
    CHECK(netguard_pick(ALLOW(cfg), NULL, "x", 22, &out, &outlen, err, sizeof(err)) == -2);
    CHECK(err[0] != '\0');
    list = ai_make(&a[0], &s[0], "8.8.8.8", NULL);
    CHECK(netguard_pick(ALLOW(cfg), list, "x", 0, &out, &outlen, err, sizeof(err)) == -2);

    /* allow_private lets a LAN NAS through. */
    struct cidr allow;
    CHECK(netguard_parse_cidr("192.168.1.0/24", &allow) == 0);
    cfg.allow_private = &allow;
    cfg.n_allow_private = 1;
    list = ai_make(&a[0], &s[0], "192.168.1.20", NULL);
    CHECK(netguard_pick(ALLOW(cfg), list, "nas.lan", 22, &out, &outlen, err,
                        sizeof(err)) == 0);
    CHECK(ntohs(((struct sockaddr_in *)&out)->sin_port) == 22);
    list = ai_make(&a[0], &s[0], "192.168.1.20",
                   ai_make(&a[1], &s[1], "192.168.2.20", NULL));
    CHECK(netguard_pick(ALLOW(cfg), list, "nas.lan", 22, &out, &outlen, err,
                        sizeof(err)) == -1);
}

static void test_resolve(void)
{
    struct config cfg;
    struct cidr allow[2];
    struct sockaddr_storage out;
    socklen_t outlen = 0;
    char err[256];

    memset(&cfg, 0, sizeof(cfg));

    /* Literals never touch DNS. */
    CHECK(netguard_resolve(ALLOW(cfg), "8.8.8.8", 22, &out, &outlen, err,
                           sizeof(err)) == 0);
    CHECK(out.ss_family == AF_INET && outlen == sizeof(struct sockaddr_in));
    CHECK(ntohs(((struct sockaddr_in *)&out)->sin_port) == 22);
    CHECK(netguard_resolve(ALLOW(cfg), "[2606:4700:4700::1111]", 2022, &out, &outlen,
                           err, sizeof(err)) == 0);
    CHECK(ntohs(((struct sockaddr_in6 *)&out)->sin6_port) == 2022);
    CHECK(netguard_resolve(ALLOW(cfg), "10.0.0.1", 22, &out, &outlen, err,
                           sizeof(err)) == -1);
    CHECK(strstr(err, "10.0.0.1") != NULL);
    CHECK(netguard_resolve(ALLOW(cfg), "[::1]", 22, &out, &outlen, err, sizeof(err)) == -1);
    CHECK(netguard_resolve(ALLOW(cfg), "", 22, &out, &outlen, err, sizeof(err)) == -2);
    CHECK(netguard_resolve(ALLOW(cfg), "8.8.8.8", 0, &out, &outlen, err, sizeof(err)) == -2);
    CHECK(netguard_resolve(ALLOW(cfg), "8.8.8.8", 65536, &out, &outlen, err,
                           sizeof(err)) == -2);

    /* "localhost" comes from /etc/hosts: loopback, blocked... */
    CHECK(netguard_resolve(ALLOW(cfg), "localhost", 22, &out, &outlen, err,
                           sizeof(err)) == -1);
    /* ...unless every loopback address it has is allowed. */
    CHECK(netguard_parse_cidr("127.0.0.0/8", &allow[0]) == 0);
    CHECK(netguard_parse_cidr("::1", &allow[1]) == 0);
    cfg.allow_private = allow;
    cfg.n_allow_private = 2;
    CHECK(netguard_resolve(ALLOW(cfg), "localhost", 2222, &out, &outlen, err,
                           sizeof(err)) == 0);
    CHECK(netguard_is_blocked((struct sockaddr *)&out) == 1);
    CHECK(netguard_resolve(ALLOW(cfg), "127.0.0.1", 22, &out, &outlen, err,
                           sizeof(err)) == 0);
}

int main(void)
{
    test_ranges();
    test_parse_cidr();
    test_contains();
    test_allow_private();
    test_literal();
    test_pick();
    test_resolve();
    CHECK_DONE();
}
