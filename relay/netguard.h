/* The SSRF guard (PROTOCOL §1.2 check 10): classifies IP addresses, parses
 * CIDRs, and resolves target names to one pinned, allowed address.
 * Pure functions, no allocation, no state: safe from any thread. */
#ifndef WC_NETGUARD_H
#define WC_NETGUARD_H

#include <netdb.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/socket.h>

/* An address range: SFTP_ALLOW_PRIVATE_CIDRS and TRUSTED_PROXY_IPS are
 * lists of these (struct config holds them; netguard_parse_cidr fills them).
 * The guard takes its exemptions as a plain array and count, not the
 * config, so that it stays a leaf the config parser can use. */
struct cidr {
    int family;            /* AF_INET or AF_INET6 */
    uint8_t addr[16];      /* network address, 4 or 16 bytes used */
    int prefix;            /* prefix length in bits */
};

/* Why netguard_resolve() and netguard_pick() refuse a target. */
#define NETGUARD_E_BLOCKED    (-1)  /* an address is in a blocked range */
#define NETGUARD_E_UNRESOLVED (-2)  /* no usable address, or an invalid target */

/* Longest text netguard_ntop() writes, NUL included (an IPv6 address). */
#define NETGUARD_ADDRSTRLEN 46

/* Parse "a.b.c.d/n", "v6/n" or a bare address (a /32 or /128 host route)
 * into `out`. An IPv4-mapped IPv6 CIDR of prefix >= 96 ("::ffff:10.0.0.0/104")
 * is stored as the IPv4 CIDR it denotes. Host bits below the prefix are
 * cleared ("10.1.2.3/8" is 10.0.0.0/8). No spaces, brackets, zone ids or
 * leading zeros in the prefix are accepted. Returns 0 or -1. */
int netguard_parse_cidr(const char *s, struct cidr *out);

/* 1 when `sa` (AF_INET or AF_INET6) lies inside `c`, else 0. An IPv4-mapped
 * IPv6 address (::ffff:a.b.c.d) is the IPv4 address it carries. */
int netguard_cidr_contains(const struct cidr *c, const struct sockaddr *sa);

/* 1 when `sa` is in a range the relay never connects to (private, loopback,
 * link-local, CGNAT, documentation, benchmark, multicast, reserved, and the
 * IPv6 forms that carry such an IPv4 address), else 0. Unknown families
 * are blocked. */
int netguard_is_blocked(const struct sockaddr *sa);

/* The SSRF decision for one address: 0 allowed, -1 blocked. An address in
 * one of the `n_allow` ranges of `allow` (SFTP_ALLOW_PRIVATE_CIDRS; NULL
 * with 0 for none) is allowed whatever its class. The exemption
 * matches the address itself (an IPv4-mapped one by its IPv4), never the
 * IPv4 inside a 6to4 or NAT64 address: those stay blocked. */
int netguard_check_addr(const struct cidr *allow, int n_allow,
                       const struct sockaddr *sa);

/* 1 when `host` is an IP literal — a strict dotted quad, or an IPv6 address
 * with or without [brackets] — and then fills `out`/`outlen` (port 0);
 * 0 when it is not (a name, or junk). Legacy numeric forms that inet_aton()
 * would take ("127.1", "0x7f.1", "2130706433") are not literals here: they
 * count as names, so whatever they resolve to is checked after resolution. */
int netguard_literal(const char *host, struct sockaddr_storage *out,
                     socklen_t *outlen);

/* Canonical text of an address into `out` (>= NETGUARD_ADDRSTRLEN bytes):
 * inet_ntop() form, an IPv4-mapped IPv6 address written as plain IPv4.
 * Returns 0 or -1 (unknown family, buffer too small). */
int netguard_ntop(const struct sockaddr *sa, char *out, size_t outlen);

/* BLOCKING (getaddrinfo): call only from a worker thread, never from the
 * lws service thread. Resolves `host` (a name or an IP literal) and pins
 * the first allowed address, with `port` set, into `out`/`outlen`.
 * Returns 0, or NETGUARD_E_BLOCKED when any resolved address is blocked
 * (a name that resolves to public and private addresses alike is refused;
 * `err` names the address and why), or NETGUARD_E_UNRESOLVED when the name
 * does not resolve (`err` says why). */
int netguard_resolve(const struct cidr *allow, int n_allow, const char *host,
                     int port, struct sockaddr_storage *out, socklen_t *outlen,
                     char *err, size_t errlen);

/* The decision part of netguard_resolve(), on an addrinfo list it got
 * (exposed so tests can feed it lists no resolver would give them):
 * NETGUARD_E_BLOCKED if any AF_INET/AF_INET6 entry is blocked,
 * NETGUARD_E_UNRESOLVED if there is none, else 0 with the first one
 * pinned, `port` set. Non-blocking. */
int netguard_pick(const struct cidr *allow, int n_allow,
                  const struct addrinfo *res, const char *host, int port,
                  struct sockaddr_storage *out, socklen_t *outlen, char *err,
                  size_t errlen);

#endif
