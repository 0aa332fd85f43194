/* client_ip: the TCP peer unless it is a trusted proxy, X-Forwarded-For read
 * right to left past our own proxies, ::ffff: normalisation, malformed
 * headers, and the rate-limit key (IPv6 per /64). */
#include <string.h>

#include "check.h"
#include "client_ip.h"
#include "config.h"
#include "netguard.h"

static const char *resolve(const struct config *cfg, const char *peer,
                           const char *xff)
{
    static char out[CLIENT_IP_MAX];

    if (client_ip_resolve(cfg, peer, xff, out, sizeof(out)) != 0)
        return "(error)";
    return out;
}

static const char *key(const char *ip)
{
    static char out[CLIENT_IP_MAX];

    client_ip_key(ip, out, sizeof(out));
    return out;
}

static void test_untrusted(void)
{
    struct config cfg;

    memset(&cfg, 0, sizeof(cfg));
    CHECK_STR(resolve(&cfg, "1.2.3.4", NULL), "1.2.3.4");
    /* An untrusted peer cannot choose its address with a header. */
    CHECK_STR(resolve(&cfg, "1.2.3.4", "9.9.9.9"), "1.2.3.4");
    CHECK_STR(resolve(&cfg, "1.2.3.4", "127.0.0.1, 10.0.0.1"), "1.2.3.4");
    CHECK_STR(resolve(NULL, "1.2.3.4", "9.9.9.9"), "1.2.3.4");
    /* Dual-stack listeners show IPv4 peers mapped. */
    CHECK_STR(resolve(&cfg, "::ffff:1.2.3.4", NULL), "1.2.3.4");
    CHECK_STR(resolve(&cfg, "::FFFF:1.2.3.4", NULL), "1.2.3.4");
    CHECK_STR(resolve(&cfg, "2001:DB8:0::1", NULL), "2001:db8::1");
    CHECK_STR(resolve(&cfg, "[2001:db8::1]", NULL), "2001:db8::1");
    /* A peer that is not an address is an error. */
    CHECK_STR(resolve(&cfg, "example.com", NULL), "(error)");
    CHECK_STR(resolve(&cfg, "", NULL), "(error)");
    CHECK_STR(resolve(&cfg, NULL, NULL), "(error)");

    char small[4];
    CHECK(client_ip_resolve(&cfg, "1.2.3.4", NULL, small, sizeof(small)) == -1);
}

static void test_trusted(void)
{
    struct config cfg;
    struct cidr proxies[3];

    memset(&cfg, 0, sizeof(cfg));
    CHECK(netguard_parse_cidr("127.0.0.1", &proxies[0]) == 0);
    CHECK(netguard_parse_cidr("10.0.0.0/8", &proxies[1]) == 0);
    CHECK(netguard_parse_cidr("fd00::/8", &proxies[2]) == 0);
    cfg.trusted_proxies = proxies;
    cfg.n_trusted_proxies = 3;

    /* No header: the peer. */
    CHECK_STR(resolve(&cfg, "127.0.0.1", NULL), "127.0.0.1");
    CHECK_STR(resolve(&cfg, "127.0.0.1", ""), "127.0.0.1");
    /* The right-most entry not a proxy. */
    CHECK_STR(resolve(&cfg, "127.0.0.1", "203.0.113.7"), "203.0.113.7");
    CHECK_STR(resolve(&cfg, "::ffff:127.0.0.1", "203.0.113.7"), "203.0.113.7");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "198.51.100.1, 203.0.113.7"),
              "203.0.113.7");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "198.51.100.1,203.0.113.7,10.1.1.1"),
              "203.0.113.7");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "1.1.1.1, 203.0.113.7 ,\t10.1.1.1 , 10.2.2.2"),
              "203.0.113.7");
    /* The client chose what is left of our proxies' entries: ignored. */
    CHECK_STR(resolve(&cfg, "127.0.0.1", "garbage, 127.0.0.1, 203.0.113.7"),
              "203.0.113.7");
    CHECK_STR(resolve(&cfg, "10.9.9.9", "10.0.0.1, 10.0.0.2"), "10.9.9.9");
    /* IPv6 clients, mapped and bracketed entries. */
    CHECK_STR(resolve(&cfg, "127.0.0.1", "2001:DB8::7"), "2001:db8::7");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "[2001:db8::7]"), "2001:db8::7");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "::ffff:203.0.113.7"), "203.0.113.7");
    CHECK_STR(resolve(&cfg, "fd00::1", "203.0.113.7, fd00::2"), "203.0.113.7");
    /* A mapped proxy entry is still a proxy. */
    CHECK_STR(resolve(&cfg, "127.0.0.1", "203.0.113.7, ::ffff:10.0.0.1"),
              "203.0.113.7");

    /* Malformed entries on our proxies' side: the peer stands for all. */
    CHECK_STR(resolve(&cfg, "127.0.0.1", "unknown"), "127.0.0.1");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "203.0.113.7:5555"), "127.0.0.1");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "203.0.113.7,"), "127.0.0.1");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "203.0.113.7, "), "127.0.0.1");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "203.0.113.7,,10.0.0.1"), "127.0.0.1");
    CHECK_STR(resolve(&cfg, "127.0.0.1", ",10.0.0.1"), "127.0.0.1");
    CHECK_STR(resolve(&cfg, "127.0.0.1", ","), "127.0.0.1");
    CHECK_STR(resolve(&cfg, "127.0.0.1", " "), "127.0.0.1");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "example.com"), "127.0.0.1");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "1.2.3.4 5.6.7.8"), "127.0.0.1");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "127.1"), "127.0.0.1");
    /* Every entry a proxy: the peer. */
    CHECK_STR(resolve(&cfg, "127.0.0.1", "10.0.0.1"), "127.0.0.1");
    CHECK_STR(resolve(&cfg, "127.0.0.1", "127.0.0.1, 10.0.0.1"), "127.0.0.1");

    /* An entry too long to be an address. */
    char big[300];
    memset(big, '1', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CHECK_STR(resolve(&cfg, "127.0.0.1", big), "127.0.0.1");
}

static void test_key(void)
{
    CHECK_STR(key("1.2.3.4"), "1.2.3.4");
    CHECK_STR(key("::ffff:1.2.3.4"), "1.2.3.4");
    CHECK_STR(key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
    CHECK_STR(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
    CHECK_STR(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64");
    CHECK_STR(key("2001:db8:1:3::1"), "2001:db8:1:3::/64");
    CHECK_STR(key("2001:db8::1"), "2001:db8::/64");
    CHECK_STR(key("2001:DB8:0:0:1::"), "2001:db8::/64");
    CHECK_STR(key("::1"), "::/64");
    CHECK_STR(key("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
              "ffff:ffff:ffff:ffff::/64");
    CHECK(strlen(key("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")) < CLIENT_IP_MAX);
    CHECK_STR(key("not-an-ip"), "not-an-ip");
    CHECK_STR(key(NULL), "");

    char small[8];
    client_ip_key("2001:db8:1:2::1", small, sizeof(small));
    CHECK(strlen(small) == 7);
}

int main(void)
{
    test_untrusted();
    test_trusted();
    test_key();
    CHECK_DONE();
}
