/* risk-engine eBPF socket telemetry: tracepoints only, filtered in the kernel to one port.
 *
 * Compiled by bcc at load time with -DFRONT_PORT=<port> -DMAX_CONNS=<n>. Every number is
 * read from tracepoint ARGUMENTS (args->...), never from kernel structs: the installed
 * headers are 6.1 while the kernel is newer, so struct offsets would be wrong. The
 * socket pointer (skaddr / sk) is only used as an opaque map key, never dereferenced.
 *
 * A socket is "ours" when its LOCAL port is FRONT_PORT (the engine's side of the front
 * door; clients on the same host are not counted twice). It enters `conns` when a state
 * change or a tcp_probe names it, and leaves on TCP_CLOSE.
 *
 *   conns        hash  skaddr -> struct conn_t       per connection, at most MAX_CONNS
 *   counters     percpu array [NCOUNTERS] u64        totals that outlive connections
 *   srtt_hist    percpu array [NSLOTS] u64           slot k (k>=1) counts srtt_us < 2^k
 *   transitions  percpu array [16*16] u64            index oldstate*16 + newstate
 */

#define C_BYTES_TX      0   /* sock_send_length ret > 0 on our sockets */
#define C_BYTES_RX      1   /* sock_recv_length ret > 0, MSG_PEEK excluded */
#define C_RETRANS       2   /* tcp_retransmit_skb on our sockets */
#define C_SRTT_SUM_US   3
#define C_SRTT_COUNT    4   /* tcp_probe events (one srtt sample each) */
#define C_TABLE_FULL    5   /* a connection could not be added to `conns` */
#define NCOUNTERS       8

#define NSLOTS          32  /* 2^31 us = 35 minutes: the last slot absorbs the rest */
#define TCP_ESTABLISHED 1
#define TCP_CLOSE       7
#define TCP_LISTEN      10
#define IPPROTO_TCP_    6
#define MSG_PEEK_       2

struct conn_t {
    u64 bytes_tx;
    u64 bytes_rx;
    u64 retransmits;
    u64 probes;
    u32 srtt_us;        /* last sample */
    u32 snd_cwnd;       /* last sample, segments */
    u16 dport;          /* peer port */
    u16 state;          /* last TCP state seen */
    u32 pad;
};

BPF_HASH(conns, u64, struct conn_t, MAX_CONNS);
BPF_PERCPU_ARRAY(counters, u64, NCOUNTERS);
BPF_PERCPU_ARRAY(srtt_hist, u64, NSLOTS);
BPF_PERCPU_ARRAY(transitions, u64, 256);

static __always_inline void count(u32 idx, u64 v)
{
    u64 *p = counters.lookup(&idx);
    if (p)
        *p += v;            /* per-CPU slot: no other writer */
}

/* The entry for sk, created (in `state`) if missing; NULL when the table is full. */
static __always_inline struct conn_t *conn_get(u64 sk, u16 dport, u16 state)
{
    struct conn_t *c = conns.lookup(&sk);
    if (c)
        return c;
    struct conn_t zero = {};
    zero.dport = dport;
    zero.state = state;
    conns.insert(&sk, &zero);   /* fails when full, or when another CPU won the race */
    c = conns.lookup(&sk);
    if (!c)
        count(C_TABLE_FULL, 1);
    return c;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP_ || args->sport != FRONT_PORT)
        return 0;
    u32 from = args->oldstate & 15, to = args->newstate & 15;
    u32 idx = from * 16 + to;
    u64 *t = transitions.lookup(&idx);
    if (t)
        *t += 1;
    u64 sk = (u64)args->skaddr;
    if (to == TCP_CLOSE) {
        conns.delete(&sk);
    } else if (to != TCP_LISTEN) {
        struct conn_t *c = conn_get(sk, args->dport, to);
        if (c)
            c->state = to;
    }
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_probe)
{
    if (args->sport != FRONT_PORT)
        return 0;
    u32 srtt_us = args->srtt;   /* tp->srtt_us >> 3: microseconds */
    struct conn_t *c = conn_get((u64)args->skaddr, args->dport, TCP_ESTABLISHED);
    if (c) {
        c->srtt_us = srtt_us;
        c->snd_cwnd = args->snd_cwnd;
        __sync_fetch_and_add(&c->probes, 1);
    }
    u32 slot = bpf_log2l(srtt_us);
    if (slot >= NSLOTS)
        slot = NSLOTS - 1;
    u64 *h = srtt_hist.lookup(&slot);
    if (h)
        *h += 1;
    count(C_SRTT_SUM_US, srtt_us);
    count(C_SRTT_COUNT, 1);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    if (args->sport != FRONT_PORT)
        return 0;
    count(C_RETRANS, 1);
    u64 sk = (u64)args->skaddr;
    struct conn_t *c = conns.lookup(&sk);
    if (c)
        __sync_fetch_and_add(&c->retransmits, 1);
    return 0;
}

/* sock_send_length / sock_recv_length carry no ports: a socket counts only once it is
 * in `conns` (put there by the probes above, which filtered on the port). */
TRACEPOINT_PROBE(sock, sock_send_length)
{
    if (args->ret <= 0)
        return 0;
    u64 sk = (u64)args->sk;
    struct conn_t *c = conns.lookup(&sk);
    if (!c)
        return 0;
    __sync_fetch_and_add(&c->bytes_tx, (u64)args->ret);
    count(C_BYTES_TX, (u64)args->ret);
    return 0;
}

TRACEPOINT_PROBE(sock, sock_recv_length)
{
    if (args->ret <= 0 || (args->flags & MSG_PEEK_))
        return 0;
    u64 sk = (u64)args->sk;
    struct conn_t *c = conns.lookup(&sk);
    if (!c)
        return 0;
    __sync_fetch_and_add(&c->bytes_rx, (u64)args->ret);
    count(C_BYTES_RX, (u64)args->ret);
    return 0;
}
