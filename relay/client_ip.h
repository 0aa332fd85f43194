/* Who the client is: the TCP peer, or the address a trusted reverse proxy
 * reports in X-Forwarded-For (PROTOCOL §1.2), and the key the abuse limits
 * count it under (IPv6 per /64, §4). Pure functions, safe from any thread. */
#ifndef WC_CLIENT_IP_H
#define WC_CLIENT_IP_H

#include <stddef.h>
#include <sys/socket.h>

#include "config.h"

/* Buffer size that always holds a client IP or a client key, NUL included
 * ("ffff:ffff:ffff:ffff::/64" is the longest key). */
#define CLIENT_IP_MAX 64
/* The longest X-Forwarded-For the relay reads (all lines together). A
 * proxy chain of any sane length fits many times over; a longer header is
 * refused (431) rather than cut, since cutting it would make the proxy the
 * client and put every user behind it under one set of limits. */
#define CLIENT_IP_XFF_MAX 8192

/* The client address as canonical text in `out` (inet_ntop form; an
 * IPv4-mapped peer "::ffff:1.2.3.4" becomes "1.2.3.4").
 *
 * `peer` is the TCP peer as libwebsockets shows it. When the peer lies in
 * cfg->trusted_proxies and `xff` (all X-Forwarded-For header values joined
 * with ',', or NULL) is given, X-Forwarded-For is read right to left,
 * skipping entries that are trusted proxies themselves; the first other
 * entry is the client. Only entries written by our own proxies are read,
 * so a client cannot choose its address. When an entry on that walk is not
 * a bare IP literal (empty, "unknown", "1.2.3.4:5678", junk), or every entry
 * is a trusted proxy, the answer is the peer: the proxy then stands for all
 * its clients, which is stricter, never spoofable.
 *
 * Returns 0, or -1 when `peer` is not an IP address or `out` is too small
 * (CLIENT_IP_MAX always suffices). */
int client_ip_resolve(const struct config *cfg, const char *peer,
                      const char *xff, char *out, size_t outlen);

/* 1 when the TCP peer `peer` is one of cfg->trusted_proxies. */
int client_ip_trusted(const struct config *cfg, const char *peer);

/* The same for a peer address. */
int client_ip_trusted_addr(const struct config *cfg, const struct sockaddr *sa);

/* The rate-limit key of a client IP (as client_ip_resolve() writes it):
 * IPv4 as it is, IPv6 its /64 ("2001:db8:1:2::/64"), since one IPv6 host
 * commonly holds a whole /64. Text that is not an IP is copied as it is.
 * `out` should have CLIENT_IP_MAX bytes; the result is truncated to fit. */
void client_ip_key(const char *ip, char *out, size_t outlen);

#endif
