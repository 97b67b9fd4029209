/* risk-engine kernel-side enforcement: drop IPv4 and IPv6 TCP packets to the enforced ports whose
 * source is listed, pass everything else untouched. One body, two hooks: xdp_enforce (XDP,
 * generic mode on lo/veth) and tc_enforce (clsact ingress, direct action).
 *
 * Compiled by bcc with -DPORT_MATCH(p)=(p == 5555 || ...) (host byte order), -DMAX_ADDRS,
 * -DMAX_PREFIXES, -DMAX_AUTO, -DEVENTS_PER_S. Only packet bytes are read (UAPI header layouts), never
 * kernel structs, so the 6.1 headers against the newer kernel do not matter here.
 *
 *   gen          array [1] u32                 active generation, 0 or 1, read once a packet
 *   addrs0/1     hash  u32 saddr -> u32 mask   bit i: the address is in enforced list i
 *   nets0/1      lpm   {len, saddr} -> u32     the same for prefixes (cidr4 lists)
 *   nets6_0/1    lpm   {len, saddr[16]} -> u32 the same for IPv6 prefixes (cidr6 lists)
 *   counters     percpu array [NCOUNTERS] u64  C_* below, then one per list (C_LIST0 + i)
 *   rl           percpu array [1] struct rl_t  drop events allowed in the current second
 *   events       ringbuf of struct event_t     sampled drops (at most EVENTS_PER_S per CPU)
 *   autoblk      hash  u32 saddr -> auto_t     sources blocked by a rule (block_source) until
 *                                              expires_ns; added by the ingress process only
 *                                              (the supervisor deletes one an operator lifts)
 *   events6      ringbuf of struct event6_t    the same for IPv6 sources (one rate limit for both)
 *   autoblk6     hash  u8[16] saddr -> auto_t  autoblk for IPv6 sources (the same writers and expiry)
 *
 * A list-replace fills the inactive generation's maps completely, then flips `gen`: a packet
 * reads `gen` once and judges with one generation, never with a half-written one.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

#define C_PASSED        0   /* TCP to an enforced port, source not listed */
#define C_OTHER         1   /* not TCP to an enforced port: passed unjudged */
#define C_EVENTS_LOST   2   /* drop events not sent (rate limit or ring buffer full) */
#define C_LIST0         3   /* C_LIST0 + i: dropped because the source is in list i */
#define MAX_LISTS       16
#define C_AUTO          (C_LIST0 + MAX_LISTS)   /* dropped: blocked by a rule, not expired */
#define NCOUNTERS       (C_AUTO + 1)
#define AUTO_LIST       255 /* event_t.list of an auto block */

struct lpm_key_t {
    u32 prefixlen;
    u32 saddr;          /* network byte order, as in the packet */
};

struct event_t {
    u64 ts_ns;          /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
    u32 saddr;          /* network byte order */
    u16 dport;          /* host byte order */
    u8  list;           /* index of the list that matched */
    u8  gen;
};

struct auto_t {
    u64 expires_ns;     /* CLOCK_MONOTONIC: judged here, so an entry not yet swept blocks nothing */
    u64 blocked_ns;     /* when the rule fired */
};

struct rl_t {
    u64 window_ns;      /* start of the current second */
    u64 sent;
};

BPF_ARRAY(gen, u32, 1);
BPF_HASH(addrs0, u32, u32, MAX_ADDRS);
BPF_HASH(addrs1, u32, u32, MAX_ADDRS);
BPF_LPM_TRIE(nets0, struct lpm_key_t, u32, MAX_PREFIXES);
BPF_LPM_TRIE(nets1, struct lpm_key_t, u32, MAX_PREFIXES);
BPF_HASH(autoblk, u32, struct auto_t, MAX_AUTO);
BPF_PERCPU_ARRAY(counters, u64, NCOUNTERS);
BPF_PERCPU_ARRAY(rl, struct rl_t, 1);
BPF_RINGBUF_OUTPUT(events, 8);

static __always_inline void count(int idx)
{
    u64 *c = counters.lookup(&idx);
    if (c)
        *c += 1;    /* per-CPU slot: no other writer */
}

/* The drop events' rate limiter (emit, emit6: one budget): NULL when this second's
 * events are spent, so a flood costs one compare, not a ring record. */
static __always_inline struct rl_t *rl_take(u64 now)
{
    int zero = 0;
    struct rl_t *r = rl.lookup(&zero);
    if (!r)
        return 0;
    if (now - r->window_ns >= 1000000000ULL) {
        r->window_ns = now;
        r->sent = 0;
    }
    if (r->sent >= EVENTS_PER_S) {
        count(C_EVENTS_LOST);
        return 0;
    }
    return r;
}

static __always_inline u32 lowest_list(u32 m)
{
    u32 list = 0;
#pragma unroll
    for (int i = 0; i < MAX_LISTS; i++) {   /* the lowest list holding the source names the drop */
        if (m & (1u << i)) {
            list = i;
            break;
        }
    }
    return list;
}

/* The generation a packet is judged by: read once, so it never sees a half-flipped list. */
static __always_inline u32 active_gen(void)
{
    int zero = 0;
    u32 *gp = gen.lookup(&zero);
    return gp ? *gp : 0;
}

/* The TCP destination port when it is an enforced one, else 0: the packet passes unjudged
 * (counted C_OTHER). Enforced ports are 1..65535, so 0 is never one. */
static __always_inline u16 enforced_dport(struct tcphdr *tcp, void *data_end)
{
    if ((void *)(tcp + 1) > data_end) {
        count(C_OTHER);
        return 0;
    }
    u16 dport = ntohs(tcp->dest);
    if (!(PORT_MATCH(dport))) {
        count(C_OTHER);
        return 0;
    }
    return dport;
}

static __always_inline void emit(u32 saddr, u16 dport, u32 list, u32 g)
{
    u64 now = bpf_ktime_get_ns();
    struct rl_t *r = rl_take(now);
    if (!r)
        return;
    struct event_t ev = {.ts_ns = now, .saddr = saddr, .dport = dport, .list = list, .gen = g};
    if (events.ringbuf_output(&ev, sizeof(ev), 0) == 0)
        r->sent += 1;
    else
        count(C_EVENTS_LOST);
}

/* --- IPv6 (cidr6 lists) ------------------------------------------------------------------
 * Ethernet -> IPv6 -> [extension headers] -> TCP to an enforced port, judged by nets6_<gen>
 * (one trie: a bare address is its /128). The extension-header chain is walked for at most
 * IPV6_MAX_EXT headers of the kinds a TCP packet may carry before its TCP header (hop-by-hop,
 * routing, destination options, fragment, AH). Not TCP (UDP, ICMPv6, ESP, no next header) and
 * later fragments (no port) pass unjudged, as for IPv4. A chain still unfinished after the
 * walk is judged by its source alone: dropped if listed or auto-blocked (it may hide TCP to an enforced port;
 * the event's port is 0), passed otherwise, so an unlisted source is never dropped and a
 * listed one cannot slip TCP through by stacking headers.
 */
#define IPV6_MAX_EXT    6
#define NEXTHDR_HOP     0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAG    44
#define NEXTHDR_AH      51
#define NEXTHDR_DEST    60

struct lpm6_key_t {
    u32 prefixlen;
    u8  saddr[16];      /* as in the packet */
};

struct auto6_key_t {
    u8  saddr[16];      /* as in the packet */
};

struct event6_t {
    u64 ts_ns;          /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
    u8  saddr[16];
    u16 dport;          /* host byte order; 0: chain longer than the walk, port unknown */
    u8  list;
    u8  gen;
    u32 pad;
};

struct frag6_t {        /* the fragment header (RFC 8200 4.5) */
    u8     nexthdr;
    u8     reserved;
    __be16 frag_off;    /* offset << 3 | flags */
    __be32 id;
};

BPF_LPM_TRIE(nets6_0, struct lpm6_key_t, u32, MAX_PREFIXES6);
BPF_LPM_TRIE(nets6_1, struct lpm6_key_t, u32, MAX_PREFIXES6);
BPF_HASH(autoblk6, struct auto6_key_t, struct auto_t, MAX_AUTO);
BPF_RINGBUF_OUTPUT(events6, 8);

static __always_inline void emit6(struct ipv6hdr *ip6, u16 dport, u32 list, u32 g)
{
    u64 now = bpf_ktime_get_ns();
    struct rl_t *r = rl_take(now);
    if (!r)
        return;
    struct event6_t ev = {.ts_ns = now, .dport = dport, .list = list, .gen = g};
    __builtin_memcpy(ev.saddr, &ip6->saddr, 16);
    if (events6.ringbuf_output(&ev, sizeof(ev), 0) == 0)
        r->sent += 1;
    else
        count(C_EVENTS_LOST);
}

/* 1: drop, 0: pass. ``known``: the packet is TCP to an enforced port (else the chain was
 * longer than the walk, and only a listed source is dropped). */
static __always_inline int judge6_source(struct ipv6hdr *ip6, u16 dport, int known)
{
    u32 g = active_gen();
    struct lpm6_key_t key = {.prefixlen = 128};
    __builtin_memcpy(key.saddr, &ip6->saddr, 16);
    u32 *mask = g ? nets6_1.lookup(&key) : nets6_0.lookup(&key);
    if (!mask || !*mask) {
        struct auto6_key_t akey = {};
        __builtin_memcpy(akey.saddr, &ip6->saddr, 16);
        struct auto_t *a = autoblk6.lookup(&akey);     /* as autoblk: judged by its expiry */
        if (a && bpf_ktime_get_ns() < a->expires_ns) {
            count(C_AUTO);
            emit6(ip6, dport, AUTO_LIST, g);
            return 1;
        }
        count(known ? C_PASSED : C_OTHER);
        return 0;
    }
    u32 list = lowest_list(*mask);
    count(C_LIST0 + list);
    emit6(ip6, dport, list, g);
    return 1;
}

static __always_inline int judge6(struct ipv6hdr *ip6, void *data_end)
{
    if ((void *)(ip6 + 1) > data_end) {
        count(C_OTHER);
        return 0;
    }
    u8 nh = ip6->nexthdr;
    void *p = (void *)(ip6 + 1);
#pragma unroll
    for (int i = 0; i < IPV6_MAX_EXT; i++) {
        if (nh == IPPROTO_TCP)
            break;
        if (nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST || nh == NEXTHDR_AH) {
            struct ipv6_opt_hdr *h = p;
            if ((void *)(h + 1) > data_end) {
                count(C_OTHER);
                return 0;
            }
            /* AH counts 4-byte words less 2, the others 8-byte words less 1 */
            u32 len = nh == NEXTHDR_AH ? ((u32)h->hdrlen + 2) * 4 : ((u32)h->hdrlen + 1) * 8;
            nh = h->nexthdr;
            p = (void *)h + len;
        } else if (nh == NEXTHDR_FRAG) {
            struct frag6_t *f = p;
            if ((void *)(f + 1) > data_end) {
                count(C_OTHER);
                return 0;
            }
            if (f->frag_off & htons(0xFFF8)) {      /* a later fragment carries no port */
                count(C_OTHER);
                return 0;
            }
            nh = f->nexthdr;
            p = (void *)(f + 1);
        } else {                                    /* not TCP: passed unjudged */
            count(C_OTHER);
            return 0;
        }
    }
    if (nh != IPPROTO_TCP)
        return judge6_source(ip6, 0, 0);
    u16 dport = enforced_dport(p, data_end);
    return dport ? judge6_source(ip6, dport, 1) : 0;
}

/* 1: drop, 0: pass */
static __always_inline int judge(void *data, void *data_end)
{
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) <= data_end && eth->h_proto == htons(ETH_P_IPV6))
        return judge6((void *)(eth + 1), data_end);
    if ((void *)(eth + 1) > data_end || eth->h_proto != htons(ETH_P_IP)) {
        count(C_OTHER);
        return 0;
    }
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_TCP || ip->ihl < 5
            || (ip->frag_off & htons(0x1FFF))) {   /* a later fragment carries no port */
        count(C_OTHER);
        return 0;
    }
    u16 dport = enforced_dport((void *)ip + ip->ihl * 4, data_end);
    if (!dport)
        return 0;
    u32 g = active_gen();
    u32 saddr = ip->saddr;
    struct lpm_key_t key = {.prefixlen = 32, .saddr = saddr};
    u32 *mask = g ? addrs1.lookup(&saddr) : addrs0.lookup(&saddr);
    if (!mask || !*mask)
        mask = g ? nets1.lookup(&key) : nets0.lookup(&key);
    if (!mask || !*mask) {
        struct auto_t *a = autoblk.lookup(&saddr);   /* no generations: one adder, one entry each */
        if (a && bpf_ktime_get_ns() < a->expires_ns) {
            count(C_AUTO);
            emit(saddr, dport, AUTO_LIST, g);
            return 1;
        }
        count(C_PASSED);
        return 0;
    }
    u32 list = lowest_list(*mask);
    count(C_LIST0 + list);
    emit(saddr, dport, list, g);
    return 1;
}

int xdp_enforce(struct xdp_md *ctx)
{
    return judge((void *)(long)ctx->data, (void *)(long)ctx->data_end) ? XDP_DROP : XDP_PASS;
}

int tc_enforce(struct __sk_buff *skb)
{
    return judge((void *)(long)skb->data, (void *)(long)skb->data_end) ? TC_ACT_SHOT : TC_ACT_OK;
}
