/* A closed-loop load generator over libzmq: N REQ clients, one request in flight each, one
 * epoll loop (no thread per client, no busy spin). bench/cload.py builds it against the
 * libzmq pyzmq loaded and drives it; it knows nothing of the engine's format beyond what the
 * command line tells it:
 *
 *   --payloads FILE   K requests to cycle through ("RLGP", u32 version 1, u32 K, then K x
 *                     (u32 length, u32 records, bytes)), all little-endian
 *   --client-id-at O / --request-id-at O   write client_id_base + i / 1, 2, 3 ... as u64 LE
 *                     at offset O of every request before it is sent (fresh ids: the engine
 *                     answers a repeated pair from its idempotency window)
 *   --check echo      a good reply is byte-identical to the request
 *   --check engine    a good reply starts with --reply-prefix (hex), has u16 --reply-error-at
 *                     == 0, u64 --reply-id-at == the request id, and is --reply-header +
 *                     records x --record-size bytes; in it each record's u16
 *                     --record-error-at != 0 counts a decision error by code, and its u8
 *                     --record-flags-at & --dup-flag counts DUPLICATE. A non-zero reply error
 *                     counts a request error by code (the name is Python's: bench/replies.py).
 *
 * Only requests sent in [start + warmup, start + warmup + duration) (and at most
 * --max-requests of them) are measured; then no new request is sent, in-flight ones get
 * --drain-s, and what is left counts NO_REPLY. A reply slower than --timeout-ms counts NO_REPLY
 * and the client reopens its socket (Lazy Pirate). So sent == ok + sum(errors).
 * Prints one JSON line on stdout (counts, percentiles in us, rates, its own CPU, and the
 * non-empty histogram buckets so several processes can be merged); exit 0 after a run, 2 on a
 * set-up error (stderr says why). --io-threads N: libzmq I/O threads (1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

/* libzmq 4.x ABI, declared here: pyzmq bundles the library but not zmq.h */
typedef struct { unsigned char _[64] __attribute__((aligned(sizeof(void *)))); } zmq_msg_t;
void *zmq_ctx_new(void);
int zmq_ctx_term(void *ctx);
int zmq_ctx_set(void *ctx, int option, int value);
void *zmq_socket(void *ctx, int type);
int zmq_close(void *s);
int zmq_setsockopt(void *s, int option, const void *value, size_t len);
int zmq_connect(void *s, const char *addr);
int zmq_send(void *s, const void *buf, size_t len, int flags);
int zmq_msg_init(zmq_msg_t *m);
int zmq_msg_recv(zmq_msg_t *m, void *s, int flags);
int zmq_msg_close(zmq_msg_t *m);
void *zmq_msg_data(zmq_msg_t *m);
size_t zmq_msg_size(const zmq_msg_t *m);
int zmq_msg_more(const zmq_msg_t *m);
int zmq_getsockopt(void *s, int option, void *value, size_t *len);
int zmq_errno(void);
const char *zmq_strerror(int err);
void zmq_version(int *major, int *minor, int *patch);
#define ZMQ_IO_THREADS 1
#define ZMQ_REQ 3
#define ZMQ_LINGER 17
#define ZMQ_FD 14
#define ZMQ_EVENTS 15
#define ZMQ_POLLIN 1
#define ZMQ_DONTWAIT 1

#define MAX_CLIENTS 100000
#define MAX_PAYLOADS 1000000
#define MAX_PAYLOAD_BYTES (64u << 20)
#define NCODES 65536
#define NO_OFFSET (-1L)

/* ---- histogram: log-linear buckets, values below 2048 ns exact, above within 1/1024 ---- */
#define SUB_BITS 10
#define SUB (1u << SUB_BITS)
#define MAX_SHIFT 40
#define NBUCKETS (2 * SUB + MAX_SHIFT * SUB)

static uint64_t hist[NBUCKETS];
static uint64_t hist_count, hist_max_ns, hist_sum_ns;

static unsigned bucket_of(uint64_t v) {
    if (v < 2 * SUB) return (unsigned)v;
    unsigned shift = 63 - __builtin_clzll(v) - SUB_BITS;      /* >= 1: top is in [SUB, 2SUB) */
    if (shift > MAX_SHIFT) return NBUCKETS - 1;
    return 2 * SUB + (shift - 1) * SUB + (unsigned)((v >> shift) - SUB);
}

static uint64_t bucket_top(unsigned b) {        /* the largest value the bucket holds */
    if (b < 2 * SUB) return b;
    unsigned shift = (b - 2 * SUB) / SUB + 1;
    uint64_t top = SUB + (b - 2 * SUB) % SUB;
    return ((top + 1) << shift) - 1;
}

static void hist_record(uint64_t ns) {
    hist[bucket_of(ns)]++;
    hist_count++;
    hist_sum_ns += ns;
    if (ns > hist_max_ns) hist_max_ns = ns;
}

static uint64_t hist_percentile(double p) {     /* HdrHistogram's rank: round(p% x n), >= 1 */
    if (!hist_count) return 0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)hist_count + 0.5);
    if (rank < 1) rank = 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < NBUCKETS; b++) {
        seen += hist[b];
        if (seen >= rank) {
            uint64_t v = bucket_top(b);
            return v < hist_max_ns ? v : hist_max_ns;
        }
    }
    return hist_max_ns;
}

/* ---- settings ---- */
static struct {
    const char *target, *payloads, *check;
    long clients, max_requests, timeout_ms, io_threads;
    double duration_s, warmup_s, drain_s;
    uint64_t client_id_base;
    long client_id_at, request_id_at;
    unsigned char reply_prefix[64];
    size_t reply_prefix_len;
    long reply_error_at, reply_id_at, reply_header, record_size, record_error_at, record_flags_at;
    unsigned dup_flag;
} cfg = {.clients = 1, .io_threads = 1, .max_requests = -1, .timeout_ms = 5000, .duration_s = 1.0,
         .warmup_s = 0.0, .drain_s = 2.0, .client_id_base = 1, .client_id_at = NO_OFFSET,
         .request_id_at = NO_OFFSET, .check = "echo", .reply_error_at = NO_OFFSET,
         .reply_id_at = NO_OFFSET, .reply_header = 0, .record_size = 0,
         .record_error_at = NO_OFFSET, .record_flags_at = NO_OFFSET};

static int check_echo;           /* --check echo, else engine */

static void die(const char *what, const char *detail) {
    fprintf(stderr, "loadgen: %s: %s\n", what, detail);
    exit(2);
}

static long parse_long(const char *name, const char *v, long lo, long hi) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 0);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "loadgen: %s=%s must be an integer in [%ld, %ld]\n", name, v, lo, hi);
        exit(2);
    }
    return x;
}

static double parse_double(const char *name, const char *v, double lo, double hi) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || end == v || !(x >= lo && x <= hi)) {
        fprintf(stderr, "loadgen: %s=%s must be a number in [%g, %g]\n", name, v, lo, hi);
        exit(2);
    }
    return x;
}

static void parse_hex(const char *v) {
    size_t n = strlen(v);
    if (n % 2 || n / 2 > sizeof cfg.reply_prefix) die("--reply-prefix must be even-length hex, at most 64 bytes", v);
    for (size_t i = 0; i < n / 2; i++) {
        unsigned x;
        if (sscanf(v + 2 * i, "%2x", &x) != 1) die("--reply-prefix is not hex", v);
        cfg.reply_prefix[i] = (unsigned char)x;
    }
    cfg.reply_prefix_len = n / 2;
}

static void parse_args(int argc, char **argv) {
    const long OFF = 1L << 30;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (i + 1 >= argc) die("missing value after", k);
        const char *v = argv[++i];
        if (!strcmp(k, "--target")) cfg.target = v;
        else if (!strcmp(k, "--payloads")) cfg.payloads = v;
        else if (!strcmp(k, "--check")) cfg.check = v;
        else if (!strcmp(k, "--clients")) cfg.clients = parse_long(k, v, 1, MAX_CLIENTS);
        else if (!strcmp(k, "--io-threads")) cfg.io_threads = parse_long(k, v, 1, 64);
        else if (!strcmp(k, "--max-requests")) cfg.max_requests = parse_long(k, v, -1, 1L << 62);
        else if (!strcmp(k, "--timeout-ms")) cfg.timeout_ms = parse_long(k, v, 1, 3600000);
        else if (!strcmp(k, "--duration-s")) cfg.duration_s = parse_double(k, v, 0.001, 86400);
        else if (!strcmp(k, "--warmup-s")) cfg.warmup_s = parse_double(k, v, 0, 86400);
        else if (!strcmp(k, "--drain-s")) cfg.drain_s = parse_double(k, v, 0, 3600);
        else if (!strcmp(k, "--client-id-base")) cfg.client_id_base = (uint64_t)parse_long(k, v, 0, (long)(~0UL >> 1));
        else if (!strcmp(k, "--client-id-at")) cfg.client_id_at = parse_long(k, v, -1, OFF);
        else if (!strcmp(k, "--request-id-at")) cfg.request_id_at = parse_long(k, v, -1, OFF);
        else if (!strcmp(k, "--reply-prefix")) parse_hex(v);
        else if (!strcmp(k, "--reply-error-at")) cfg.reply_error_at = parse_long(k, v, -1, OFF);
        else if (!strcmp(k, "--reply-id-at")) cfg.reply_id_at = parse_long(k, v, -1, OFF);
        else if (!strcmp(k, "--reply-header")) cfg.reply_header = parse_long(k, v, 0, OFF);
        else if (!strcmp(k, "--record-size")) cfg.record_size = parse_long(k, v, 0, OFF);
        else if (!strcmp(k, "--record-error-at")) cfg.record_error_at = parse_long(k, v, -1, OFF);
        else if (!strcmp(k, "--record-flags-at")) cfg.record_flags_at = parse_long(k, v, -1, OFF);
        else if (!strcmp(k, "--dup-flag")) cfg.dup_flag = (unsigned)parse_long(k, v, 0, 255);
        else die("unknown option", k);
    }
    if (!cfg.target || !cfg.payloads) die("usage", "--target ADDR --payloads FILE [options: see bench/loadgen.c]");
    if (strcmp(cfg.check, "echo") && strcmp(cfg.check, "engine")) die("--check must be echo or engine, not", cfg.check);
    if (!strcmp(cfg.check, "engine") && (cfg.reply_error_at < 0 || cfg.reply_id_at < 0 ||
                                          cfg.request_id_at < 0 || cfg.record_size <= 0))
        die("--check engine", "needs --reply-error-at, --reply-id-at, --request-id-at and --record-size");
    if ((cfg.record_error_at >= 0 && cfg.record_error_at + 2 > cfg.record_size) ||
        (cfg.record_flags_at >= 0 && cfg.record_flags_at + 1 > cfg.record_size))
        die("--record-error-at/--record-flags-at", "lie beyond --record-size");
    check_echo = !strcmp(cfg.check, "echo");
}

/* ---- payloads ---- */
typedef struct { unsigned char *bytes; uint32_t len, records; } payload_t;
static payload_t *payloads;
static uint32_t npayloads;

static uint32_t rd_u32(const unsigned char *p) {
    return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void load_payloads(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path, strerror(errno));
    unsigned char h[12];
    if (fread(h, 1, 12, f) != 12 || memcmp(h, "RLGP", 4) || rd_u32(h + 4) != 1)
        die(path, "not a payload file (magic RLGP, version 1)");
    npayloads = rd_u32(h + 8);
    if (npayloads < 1 || npayloads > MAX_PAYLOADS) die(path, "payload count out of range");
    payloads = calloc(npayloads, sizeof *payloads);
    for (uint32_t i = 0; i < npayloads; i++) {
        unsigned char e[8];
        if (fread(e, 1, 8, f) != 8) die(path, "truncated entry header");
        payload_t *p = &payloads[i];
        p->len = rd_u32(e);
        p->records = rd_u32(e + 4);
        if (p->len < 1 || p->len > MAX_PAYLOAD_BYTES) die(path, "payload length out of range");
        p->bytes = malloc(p->len);
        if (!p->bytes || fread(p->bytes, 1, p->len, f) != p->len) die(path, "truncated payload");
        if ((cfg.client_id_at >= 0 && (uint64_t)cfg.client_id_at + 8 > p->len) ||
            (cfg.request_id_at >= 0 && (uint64_t)cfg.request_id_at + 8 > p->len))
            die(path, "an id offset lies beyond a payload's end");
    }
    if (fgetc(f) != EOF) die(path, "trailing bytes after the last payload");
    fclose(f);
}

/* ---- counters ---- */
static uint64_t sent_all, sent, ok, events_ok, no_reply, bad_reply;
static uint64_t *code_errors, *decision_errors;   /* by u16 code */
static uint64_t duplicates;

static void wr_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t rd_le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* a reply to the request `req` (id `rid`, `records` records): counts it, returns 1 if ok */
static int classify(const unsigned char *rep, size_t n, const unsigned char *req, size_t req_len,
                    uint32_t records, uint64_t rid) {
    if (check_echo) {
        if (n == req_len && !memcmp(rep, req, n)) { ok++; events_ok += records; return 1; }
        bad_reply++;
        return 0;
    }
    if (n < (size_t)cfg.reply_header || n < cfg.reply_prefix_len ||
        n < (size_t)cfg.reply_error_at + 2 || n < (size_t)cfg.reply_id_at + 8 ||
        memcmp(rep, cfg.reply_prefix, cfg.reply_prefix_len)) {
        bad_reply++;
        return 0;
    }
    unsigned err = (unsigned)rd_le(rep + cfg.reply_error_at, 2);
    if (err) { code_errors[err]++; return 0; }
    if (rd_le(rep + cfg.reply_id_at, 8) != rid ||
        n != (size_t)cfg.reply_header + (size_t)records * (size_t)cfg.record_size) {
        bad_reply++;
        return 0;
    }
    uint32_t clean = records;
    for (uint32_t r = 0; r < records; r++) {
        const unsigned char *rec = rep + cfg.reply_header + (size_t)r * cfg.record_size;
        int bad = 0;
        if (cfg.record_error_at >= 0) {
            unsigned e = (unsigned)rd_le(rec + cfg.record_error_at, 2);
            if (e) { decision_errors[e]++; bad = 1; }
        }
        if (cfg.record_flags_at >= 0 && (rec[cfg.record_flags_at] & cfg.dup_flag)) { duplicates++; bad = 1; }
        clean -= bad;
    }
    ok++;
    events_ok += clean;          /* events/s counts decisions the rules made, not defaults */
    return 1;
}

/* ---- clients ---- */
typedef struct {
    unsigned char *buf;          /* the request in flight, ids written in */
    size_t len;
    uint32_t records;
    uint64_t t_tx_ns, rid;
    int in_flight, measured;
} client_t;

static void *ctx;
static int epfd;
static client_t *clients;
static void **socks;
static size_t max_len;
static uint64_t next_payload, t_measure, t_end;
static long in_flight;
static volatile sig_atomic_t stop_requested;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Each socket's ZMQ_FD is in one epoll set: a wake-up costs O(ready sockets), where zmq_poll
 * would ask every socket for its events on every call (O(clients) per reply). The fd only
 * says "look at ZMQ_EVENTS": it is level-triggered until libzmq processes its commands. */
static void open_socket(long i) {
    void *s = zmq_socket(ctx, ZMQ_REQ);
    int linger = 0, fd;
    size_t n = sizeof fd;
    if (!s) die("zmq_socket", zmq_strerror(zmq_errno()));
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(s, cfg.target)) die(cfg.target, zmq_strerror(zmq_errno()));
    if (zmq_getsockopt(s, ZMQ_FD, &fd, &n)) die("zmq_getsockopt(ZMQ_FD)", zmq_strerror(zmq_errno()));
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev)) die("epoll_ctl", strerror(errno));
    socks[i] = s;
}

static void close_socket(long i) {
    int fd;
    size_t n = sizeof fd;
    if (!zmq_getsockopt(socks[i], ZMQ_FD, &fd, &n)) epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    zmq_close(socks[i]);
}

static int readable(long i) {
    int ev = 0;
    size_t n = sizeof ev;
    return !zmq_getsockopt(socks[i], ZMQ_EVENTS, &ev, &n) && (ev & ZMQ_POLLIN);
}

static int may_send(uint64_t t) {
    return t < t_end && !stop_requested &&
           (cfg.max_requests < 0 || t < t_measure || sent < (uint64_t)cfg.max_requests);
}

static void send_request(long i, uint64_t t_ns) {
    client_t *c = &clients[i];
    payload_t *p = &payloads[next_payload++ % npayloads];
    memcpy(c->buf, p->bytes, p->len);
    c->len = p->len;
    c->records = p->records;
    c->rid++;
    if (cfg.client_id_at >= 0) wr_u64(c->buf + cfg.client_id_at, cfg.client_id_base + (uint64_t)i);
    if (cfg.request_id_at >= 0) wr_u64(c->buf + cfg.request_id_at, c->rid);
    c->t_tx_ns = t_ns;
    c->in_flight = 1;
    c->measured = t_ns >= t_measure;
    in_flight++;
    sent_all++;
    if (c->measured) sent++;
    if (zmq_send(socks[i], c->buf, c->len, 0) < 0)     /* REQ in send state: blocks at most on HWM */
        die("zmq_send", zmq_strerror(zmq_errno()));
}

/* Every reply client i has waiting, each followed by its next request (closed loop). The
 * last ZMQ_EVENTS check also re-arms the fd: libzmq signals it again for the next reply. */
static void service(long i) {
    while (readable(i)) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, socks[i], ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        uint64_t t_rx = now_ns();
        client_t *c = &clients[i];
        int more = zmq_msg_more(&m);
        if (c->in_flight && c->measured) {
            hist_record(t_rx - c->t_tx_ns);
            if (more) bad_reply++;               /* the protocol's replies are one frame */
            else classify(zmq_msg_data(&m), zmq_msg_size(&m), c->buf, c->len, c->records, c->rid);
        }
        zmq_msg_close(&m);
        while (more) {                           /* drain the rest of a multi-frame reply */
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, socks[i], 0) < 0) { zmq_msg_close(&m); break; }
            more = zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        if (c->in_flight) { c->in_flight = 0; in_flight--; }
        if (may_send(t_rx)) send_request(i, t_rx);
    }
}

static void on_signal(int sig) { (void)sig; stop_requested = 1; }

static void print_codes(const char *name, const uint64_t *codes, const char *extra[], const uint64_t extra_n[], int nextra) {
    printf("\"%s\":{", name);
    int first = 1;
    for (int j = 0; j < nextra; j++)
        if (extra_n[j]) { printf("%s\"%s\":%" PRIu64, first ? "" : ",", extra[j], extra_n[j]); first = 0; }
    for (unsigned c = 1; c < NCODES; c++)
        if (codes[c]) { printf("%s\"code_%u\":%" PRIu64, first ? "" : ",", c, codes[c]); first = 0; }
    printf("}");
}

/* `loadgen --percentiles-of-stdin`: the histogram alone, over values (ns) read from stdin;
 * the tests compare it with exact percentiles of the same values */
static int percentiles_of_stdin(void) {
    unsigned long long v;
    while (scanf("%llu", &v) == 1) hist_record(v);
    printf("{\"count\":%" PRIu64 ",\"p50\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"p999\":%" PRIu64
           ",\"max\":%" PRIu64 "}\n", hist_count, hist_percentile(50.0), hist_percentile(99.0),
           hist_percentile(99.9), hist_max_ns);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--percentiles-of-stdin")) return percentiles_of_stdin();
    parse_args(argc, argv);
    int major, minor, patch;
    zmq_version(&major, &minor, &patch);
    if (major != 4) die("libzmq", "major version is not 4: the declarations above follow the 4.x ABI");
    load_payloads(cfg.payloads);
    for (uint32_t j = 0; j < npayloads; j++) if (payloads[j].len > max_len) max_len = payloads[j].len;
    code_errors = calloc(NCODES, sizeof *code_errors);
    decision_errors = calloc(NCODES, sizeof *decision_errors);
    clients = calloc(cfg.clients, sizeof *clients);
    socks = calloc(cfg.clients, sizeof *socks);
    if (!code_errors || !decision_errors || !clients || !socks) die("calloc", "out of memory");
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    ctx = zmq_ctx_new();
    if (!ctx) die("zmq_ctx_new", zmq_strerror(zmq_errno()));
    if (zmq_ctx_set(ctx, ZMQ_IO_THREADS, (int)cfg.io_threads)) die("zmq_ctx_set(ZMQ_IO_THREADS)", zmq_strerror(zmq_errno()));
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1", strerror(errno));
    for (long i = 0; i < cfg.clients; i++) {
        clients[i].buf = malloc(max_len);
        if (!clients[i].buf) die("malloc", "out of memory");
        open_socket(i);
    }
    struct timespec cpu0;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu0);
    const uint64_t t_start = now_ns();
    t_measure = t_start + (uint64_t)(cfg.warmup_s * 1e9);
    t_end = t_measure + (uint64_t)(cfg.duration_s * 1e9);      /* sending stops here */
    const uint64_t timeout_ns = (uint64_t)cfg.timeout_ms * 1000000u;
    const uint64_t drain_ns = (uint64_t)(cfg.drain_s * 1e9);
    uint64_t last_scan = t_start;
    struct epoll_event evs[256];

    for (long i = 0; i < cfg.clients; i++) send_request(i, now_ns());
    for (;;) {
        uint64_t now = now_ns();
        if (stop_requested && now < t_end) t_end = now > t_measure ? now : t_measure;
        if (cfg.max_requests >= 0 && sent >= (uint64_t)cfg.max_requests && now >= t_measure && now < t_end)
            t_end = now;         /* the count bound ends the window like the clock would */
        if (now >= t_end && (in_flight == 0 || now >= t_end + drain_ns)) break;
        int n = epoll_wait(epfd, evs, 256, 10);
        if (n < 0 && errno != EINTR) die("epoll_wait", strerror(errno));
        for (int j = 0; j < n; j++) service((long)evs[j].data.u64);
        now = now_ns();
        if (now - last_scan > 50000000u) {
            last_scan = now;
            for (long i = 0; i < cfg.clients; i++) {
                client_t *c = &clients[i];
                if (!c->in_flight) continue;
                service(i);                      /* a safety net: a reply whose wake-up was missed */
                /* service() may have sent a request stamped after `now`: compare signed */
                if (!c->in_flight || (int64_t)(now - c->t_tx_ns) <= (int64_t)timeout_ns) continue;
                if (c->measured) no_reply++;     /* Lazy Pirate: a late reply costs a socket */
                c->in_flight = 0;
                in_flight--;
                close_socket(i);
                open_socket(i);
                if (may_send(now)) send_request(i, now);
            }
        }
    }
    for (long i = 0; i < cfg.clients; i++) {
        if (clients[i].in_flight && clients[i].measured) no_reply++;
        close_socket(i);
    }
    zmq_ctx_term(ctx);
    struct timespec cpu1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu1);
    double cpu_s = (double)(cpu1.tv_sec - cpu0.tv_sec) + (double)(cpu1.tv_nsec - cpu0.tv_nsec) / 1e9;
    double window_s = t_end > t_measure ? (double)(t_end - t_measure) / 1e9 : 0.0;
    uint64_t code_total = 0, decision_total = duplicates;
    for (unsigned c = 1; c < NCODES; c++) { code_total += code_errors[c]; decision_total += decision_errors[c]; }
    uint64_t answered = ok + bad_reply + code_total;

    printf("{\"generator\":\"c\",\"libzmq\":\"%d.%d.%d\",\"clients\":%ld,\"window_s\":%.6f,"
           "\"sent\":%" PRIu64 ",\"ok\":%" PRIu64 ",\"answered\":%" PRIu64 ",\"events_ok\":%" PRIu64 ",",
           major, minor, patch, cfg.clients, window_s, sent, ok, answered, events_ok);
    const char *req_names[] = {"NO_REPLY", "BAD_REPLY"};
    const uint64_t req_counts[] = {no_reply, bad_reply};
    print_codes("errors", code_errors, req_names, req_counts, 2);
    const char *dec_names[] = {"DUPLICATE"};
    const uint64_t dec_counts[] = {duplicates};
    printf(",");
    print_codes("decision_errors", decision_errors, dec_names, dec_counts, 1);
    printf(",\"error_count\":%" PRIu64 ",\"decision_error_count\":%" PRIu64 ",",
           no_reply + bad_reply + code_total, decision_total);
    printf("\"recorded\":%" PRIu64 ",\"p50_us\":%.3f,\"p99_us\":%.3f,\"p999_us\":%.3f,\"max_us\":%.3f,"
           "\"mean_us\":%.3f,", hist_count, hist_percentile(50.0) / 1e3, hist_percentile(99.0) / 1e3,
           hist_percentile(99.9) / 1e3, hist_max_ns / 1e3,
           hist_count ? (double)hist_sum_ns / (double)hist_count / 1e3 : 0.0);
    /* the generator's own CPU (every thread, libzmq's I/O thread too) per request sent,
     * warm-up included: next to the target's, it says whether the client was the limit */
    printf("\"requests_per_s\":%.3f,\"events_per_s\":%.3f,\"cpu_s\":%.4f,\"requests_total\":%" PRIu64
           ",\"cpu_us_per_request\":%.2f,", window_s > 0 ? ok / window_s : 0.0,
           window_s > 0 ? events_ok / window_s : 0.0, cpu_s, sent_all,
           sent_all ? cpu_s / (double)sent_all * 1e6 : 0.0);
    /* the non-empty buckets, [index, count]: bench/cload.py merges several processes' */
    printf("\"hist_sub_bits\":%d,\"hist\":[", SUB_BITS);
    for (unsigned b = 0, first = 1; b < NBUCKETS; b++)
        if (hist[b]) { printf("%s[%u,%" PRIu64 "]", first ? "" : ",", b, hist[b]); first = 0; }
    printf("]}\n");
    return 0;
}
