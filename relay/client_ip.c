/* The client address behind the TCP peer and trusted proxies, and the key
 * the per-client abuse limits count it under. Only X-Forwarded-For entries
 * appended by proxies we trust are believed. */
#include "client_ip.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "netguard.h"

int client_ip_trusted_addr(const struct config *cfg, const struct sockaddr *sa)
{
    for (int i = 0; i < cfg->n_trusted_proxies; i++)
        if (netguard_cidr_contains(&cfg->trusted_proxies[i], sa))
            return 1;
    return 0;
}

int client_ip_trusted(const struct config *cfg, const char *peer)
{
    struct sockaddr_storage ss;
    socklen_t len;

    return cfg && peer && netguard_literal(peer, &ss, &len) &&
           client_ip_trusted_addr(cfg, (struct sockaddr *)&ss);
}

/* Parse the X-Forwarded-For entry [b, e) after trimming blanks.
 * Returns 1 with `ss` filled, 0 when it is not an IP literal. */
static int parse_entry(const char *b, const char *e,
                       struct sockaddr_storage *ss)
{
    char buf[NETGUARD_ADDRSTRLEN + 2];
    socklen_t len;

    while (b < e && (*b == ' ' || *b == '\t'))
        b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    if (e == b || (size_t)(e - b) >= sizeof(buf))
        return 0;
    memcpy(buf, b, (size_t)(e - b));
    buf[e - b] = '\0';
    return netguard_literal(buf, ss, &len);
}

int client_ip_resolve(const struct config *cfg, const char *peer,
                      const char *xff, char *out, size_t outlen)
{
    struct sockaddr_storage peer_ss, ss;
    socklen_t len;

    if (!peer || !out || outlen == 0)
        return -1;
    if (!netguard_literal(peer, &peer_ss, &len))
        return -1;

    if (cfg && xff && client_ip_trusted_addr(cfg, (struct sockaddr *)&peer_ss)) {
        const char *end = xff + strlen(xff);

        /* Walk entries right to left: [b, end) is the current one. */
        while (end > xff) {
            const char *b = end;
            while (b > xff && b[-1] != ',')
                b--;
            if (!parse_entry(b, end, &ss))
                break;  /* junk on our proxies' side: use the peer */
            if (!client_ip_trusted_addr(cfg, (struct sockaddr *)&ss))
                return netguard_ntop((struct sockaddr *)&ss, out, outlen);
            if (b == xff)
                break;  /* all entries are proxies: use the peer */
            end = b - 1;  /* step over the comma */
            if (end == xff)
                break;  /* a leading comma: empty entry, junk */
        }
    }
    return netguard_ntop((struct sockaddr *)&peer_ss, out, outlen);
}

void client_ip_key(const char *ip, char *out, size_t outlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char text[NETGUARD_ADDRSTRLEN];

    if (!out || outlen == 0)
        return;
    if (!ip) {
        out[0] = '\0';
        return;
    }
    if (!netguard_literal(ip, &ss, &len) ||
        netguard_ntop((struct sockaddr *)&ss, text, sizeof(text)) != 0) {
        snprintf(out, outlen, "%s", ip);
        return;
    }
    if (strchr(text, ':') == NULL) {
        snprintf(out, outlen, "%s", text);  /* IPv4, or mapped IPv4 */
        return;
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    struct sockaddr_in6 net = *sin6;
    memset(net.sin6_addr.s6_addr + 8, 0, 8);
    if (netguard_ntop((struct sockaddr *)&net, text, sizeof(text)) != 0) {
        snprintf(out, outlen, "%s", ip);
        return;
    }
    snprintf(out, outlen, "%s/64", text);
}
