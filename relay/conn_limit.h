/* Connections that have not (yet) become WebSocket sessions, counted per
 * client network, so one address cannot fill the descriptor table with
 * connections that never send a complete request. */
#ifndef WC_CONN_LIMIT_H
#define WC_CONN_LIMIT_H

#include <stddef.h>
#include <sys/socket.h>

/* Unupgraded connections one client network may hold at once. A browser
 * opens at most six per host; a page, its assets and a few sessions being
 * set up stay far below this. Counted by TCP peer: before the request is
 * read nothing else is known. A trusted proxy (TRUSTED_PROXY_IPS) is not
 * capped: all its clients come from its address, and one of them holding
 * 64 requests open would lock out all the others; the proxy's own limits
 * apply to its clients, and the table's (below) to the proxy. */
#define CONN_LIMIT_PER_CLIENT 64

/*
 * Keys are TCP peers: an IPv4 address (also when mapped into IPv6) or the
 * /64 of an IPv6 address. Owners are opaque pointers (the lws connection).
 * Service thread only: no locking.
 */
struct conn_limit;

/* A table tracking at most `capacity` connections at once (the descriptor
 * table bounds it), `per_key` of them per client network. Owned by the
 * caller: release with conn_limit_free(). NULL when out of memory. */
struct conn_limit *conn_limit_new(size_t capacity, int per_key);
void conn_limit_free(struct conn_limit *cl);

/* Connections counted for the network of `sa` now. */
int conn_limit_count(const struct conn_limit *cl, const struct sockaddr *sa);

/* Count `owner` for the network of `sa`: 0, or -1 when `capped` and that
 * network already holds `per_key`, the table is full, or `sa` is not
 * IPv4/IPv6 (then nothing is counted). `owner` must not be counted
 * already. */
int conn_limit_add(struct conn_limit *cl, const void *owner, const struct sockaddr *sa,
                   int capped);

/* Stop counting `owner` (upgraded or closed); unknown owners are ignored. */
void conn_limit_remove(struct conn_limit *cl, const void *owner);

/* Connections counted in all (tests). */
size_t conn_limit_total(const struct conn_limit *cl);

/* 1 when `capacity` connections are counted. */
int conn_limit_full(const struct conn_limit *cl);

/* The connection to give up when the table is full and another arrives:
 * the oldest of the network holding the most. Many networks holding a
 * few each (an IPv6 block) then lose their own oldest first, and a
 * client holding one or two keeps them. NULL when nothing is counted. */
const void *conn_limit_victim(const struct conn_limit *cl);

#endif
