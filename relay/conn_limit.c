/* Per-network count of connections not yet upgraded: two open-addressing
 * tables of fixed size (owner -> network, network -> count), allocated once,
 * with backward-shift deletion so no tombstones pile up under churn. */
#include "conn_limit.h"

#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

struct net {
    uint64_t addr;   /* IPv4 address, or the upper 64 bits of an IPv6 one */
    uint32_t v6;     /* 1 for an IPv6 /64; 0 for IPv4 */
};

struct owner_slot {
    const void *owner;   /* NULL: free */
    struct net net;
    uint64_t seq;        /* order of counting: the oldest has the least */
};

struct net_slot {
    struct net net;
    int count;           /* 0: free */
};

struct conn_limit {
    struct owner_slot *owners;
    struct net_slot *nets;
    size_t mask;         /* both tables have mask + 1 slots */
    size_t total;
    size_t capacity;
    int per_key;
    uint64_t next_seq;
    uint64_t seed;       /* so that no one can aim addresses at one chain */
};

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static size_t net_home(const struct conn_limit *cl, struct net n)
{
    return (size_t)mix(n.addr ^ cl->seed ^ ((uint64_t)n.v6 << 63 | n.v6)) & cl->mask;
}

static size_t owner_home(const struct conn_limit *cl, const void *owner)
{
    return (size_t)mix((uint64_t)(uintptr_t)owner ^ cl->seed) & cl->mask;
}

static int net_of(const struct sockaddr *sa, struct net *n)
{
    memset(n, 0, sizeof(*n));
    if (sa->sa_family == AF_INET) {
        n->addr = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) == 0) {
            n->addr = (uint64_t)a[12] << 24 | (uint64_t)a[13] << 16 | (uint64_t)a[14] << 8 |
                      a[15];
            return 0;
        }
        for (int i = 0; i < 8; i++)
            n->addr = n->addr << 8 | a[i];
        n->v6 = 1;
        return 0;
    }
    return -1;
}

static int net_eq(struct net a, struct net b)
{
    return a.addr == b.addr && a.v6 == b.v6;
}

struct conn_limit *conn_limit_new(size_t capacity, int per_key)
{
    struct conn_limit *cl = calloc(1, sizeof(*cl));
    size_t slots = 16;

    if (!cl || capacity == 0 || capacity > SIZE_MAX / 4 || per_key < 1)
        goto fail;
    /* At most half full: probe chains stay short. */
    while (slots < capacity * 2)
        slots *= 2;
    cl->owners = calloc(slots, sizeof(*cl->owners));
    cl->nets = calloc(slots, sizeof(*cl->nets));
    if (!cl->owners || !cl->nets)
        goto fail;
    cl->mask = slots - 1;
    cl->capacity = capacity;
    cl->per_key = per_key;
    if (getrandom(&cl->seed, sizeof(cl->seed), GRND_NONBLOCK) != sizeof(cl->seed))
        cl->seed = (uint64_t)(uintptr_t)cl;  /* spreading only, not a secret */
    return cl;
fail:
    conn_limit_free(cl);
    return NULL;
}

void conn_limit_free(struct conn_limit *cl)
{
    if (!cl)
        return;
    free(cl->owners);
    free(cl->nets);
    free(cl);
}

/* The slot holding `n`, or the free slot where it would go. */
static size_t net_find(const struct conn_limit *cl, struct net n)
{
    size_t i = net_home(cl, n);

    while (cl->nets[i].count && !net_eq(cl->nets[i].net, n))
        i = (i + 1) & cl->mask;
    return i;
}

static size_t owner_find(const struct conn_limit *cl, const void *owner)
{
    size_t i = owner_home(cl, owner);

    while (cl->owners[i].owner && cl->owners[i].owner != owner)
        i = (i + 1) & cl->mask;
    return i;
}

/* Whether home slot `h` lies cyclically in (hole, j]: then the entry at j
 * cannot move back into the hole without becoming unreachable. */
static int stays(size_t hole, size_t j, size_t h)
{
    return hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
}

static void net_delete(struct conn_limit *cl, size_t hole)
{
    size_t j = hole;

    for (;;) {
        j = (j + 1) & cl->mask;
        if (!cl->nets[j].count)
            break;
        if (stays(hole, j, net_home(cl, cl->nets[j].net)))
            continue;
        cl->nets[hole] = cl->nets[j];
        hole = j;
    }
    memset(&cl->nets[hole], 0, sizeof(cl->nets[hole]));
}

static void owner_delete(struct conn_limit *cl, size_t hole)
{
    size_t j = hole;

    for (;;) {
        j = (j + 1) & cl->mask;
        if (!cl->owners[j].owner)
            break;
        if (stays(hole, j, owner_home(cl, cl->owners[j].owner)))
            continue;
        cl->owners[hole] = cl->owners[j];
        hole = j;
    }
    memset(&cl->owners[hole], 0, sizeof(cl->owners[hole]));
}

int conn_limit_count(const struct conn_limit *cl, const struct sockaddr *sa)
{
    struct net n;

    if (net_of(sa, &n) < 0)
        return 0;
    return cl->nets[net_find(cl, n)].count;
}

int conn_limit_add(struct conn_limit *cl, const void *owner, const struct sockaddr *sa,
                   int capped)
{
    struct net n;
    size_t ni, oi;

    if (!owner || net_of(sa, &n) < 0 || cl->total >= cl->capacity)
        return -1;
    ni = net_find(cl, n);
    if (capped && cl->nets[ni].count >= cl->per_key)
        return -1;
    oi = owner_find(cl, owner);
    if (cl->owners[oi].owner)
        return -1;  /* counted already: a caller bug, count it once */
    cl->owners[oi].owner = owner;
    cl->owners[oi].net = n;
    cl->owners[oi].seq = cl->next_seq++;
    cl->nets[ni].net = n;
    cl->nets[ni].count++;
    cl->total++;
    return 0;
}

void conn_limit_remove(struct conn_limit *cl, const void *owner)
{
    size_t oi, ni;

    if (!cl || !owner)
        return;
    oi = owner_find(cl, owner);
    if (!cl->owners[oi].owner)
        return;
    ni = net_find(cl, cl->owners[oi].net);
    if (cl->nets[ni].count > 0 && --cl->nets[ni].count == 0)
        net_delete(cl, ni);
    owner_delete(cl, oi);
    cl->total--;
}

size_t conn_limit_total(const struct conn_limit *cl)
{
    return cl->total;
}

int conn_limit_full(const struct conn_limit *cl)
{
    return cl->total >= cl->capacity;
}

/* Two walks over the tables: only run when the table is full, which an
 * honest load never makes it. */
const void *conn_limit_victim(const struct conn_limit *cl)
{
    const struct owner_slot *oldest = NULL;
    struct net most = {0};
    int most_count = 0;

    for (size_t i = 0; i <= cl->mask; i++)
        if (cl->nets[i].count > most_count) {
            most_count = cl->nets[i].count;
            most = cl->nets[i].net;
        }
    if (most_count == 0)
        return NULL;
    for (size_t i = 0; i <= cl->mask; i++) {
        const struct owner_slot *o = &cl->owners[i];
        if (o->owner && net_eq(o->net, most) && (!oldest || o->seq < oldest->seq))
            oldest = o;
    }
    return oldest ? oldest->owner : NULL;
}
