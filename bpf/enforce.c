/* risk-engine kernel-side enforcement: drop IPv4 TCP packets to the enforced ports whose
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
 *   counters     percpu array [NCOUNTERS] u64  C_* below, then one per list (C_LIST0 + i)
 *   rl           percpu array [1] struct rl_t  drop events allowed in the current second
 *   events       ringbuf of struct event_t     sampled drops (at most EVENTS_PER_S per CPU)
 *   autoblk      hash  u32 saddr -> auto_t     sources blocked by a rule (block_source) until
 *                                              expires_ns; written by the ingress process only
 *
 * A list-replace fills the inactive generation's maps completely, then flips `gen`: a packet
 * reads `gen` once and judges with one generation, never with a half-written one.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

#define C_PASSED        0   /* TCP to an enforced port, source not listed */
#define C_OTHER         1   /* not IPv4 TCP to an enforced port: passed unjudged */
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

static __always_inline void emit(u32 saddr, u16 dport, u32 list, u32 g)
{
    int zero = 0;
    struct rl_t *r = rl.lookup(&zero);
    if (!r)
        return;
    u64 now = bpf_ktime_get_ns();
    if (now - r->window_ns >= 1000000000ULL) {
        r->window_ns = now;
        r->sent = 0;
    }
    if (r->sent >= EVENTS_PER_S) {      /* a flood costs one compare, not a ring record */
        count(C_EVENTS_LOST);
        return;
    }
    struct event_t ev = {.ts_ns = now, .saddr = saddr, .dport = dport, .list = list, .gen = g};
    if (events.ringbuf_output(&ev, sizeof(ev), 0) == 0)
        r->sent += 1;
    else
        count(C_EVENTS_LOST);
}

/* 1: drop, 0: pass */
static __always_inline int judge(void *data, void *data_end)
{
    struct ethhdr *eth = data;
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
    struct tcphdr *tcp = (void *)ip + ip->ihl * 4;
    if ((void *)(tcp + 1) > data_end) {
        count(C_OTHER);
        return 0;
    }
    u16 dport = ntohs(tcp->dest);
    if (!(PORT_MATCH(dport))) {
        count(C_OTHER);
        return 0;
    }
    int zero = 0;
    u32 *gp = gen.lookup(&zero);
    u32 g = gp ? *gp : 0;                /* read once: this packet is judged by generation g */
    u32 saddr = ip->saddr;
    struct lpm_key_t key = {.prefixlen = 32, .saddr = saddr};
    u32 *mask = g ? addrs1.lookup(&saddr) : addrs0.lookup(&saddr);
    if (!mask || !*mask)
        mask = g ? nets1.lookup(&key) : nets0.lookup(&key);
    if (!mask || !*mask) {
        struct auto_t *a = autoblk.lookup(&saddr);   /* no generations: one writer, one entry each */
        if (a && bpf_ktime_get_ns() < a->expires_ns) {
            count(C_AUTO);
            emit(saddr, dport, AUTO_LIST, g);
            return 1;
        }
        count(C_PASSED);
        return 0;
    }
    u32 m = *mask, list = 0;
#pragma unroll
    for (int i = 0; i < MAX_LISTS; i++) {   /* the lowest list holding the source names the drop */
        if (m & (1u << i)) {
            list = i;
            break;
        }
    }
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
