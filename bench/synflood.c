/* A bounded TCP SYN flood for bench.enforce (bench/synflood.py builds and runs it): raw IPv4
 * SYNs from --source to --dest:--port, each a new connection attempt (source port and
 * sequence number vary), IP and TCP checksums valid, sent in batches with sendmmsg.
 *
 *   --count N     stop after N packets          --seconds S   stop after S seconds
 *   --pps R       pace to R packets/s (0: as fast as the machine lets one process send)
 *
 * It stops at whichever bound comes first, or on SIGTERM/SIGINT, and prints one JSON line:
 * {"sent":N,"errors":E,"elapsed_s":T,"cpu_user_s":U,"cpu_sys_s":S} (errors: packets the
 * kernel refused, e.g. ENOBUFS). Exit 0 after a run, 2 on a set-up error (stderr says why).
 * Needs CAP_NET_RAW; it sends to the one address given and nowhere else.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 32
#define PKT 40                      /* IPv4 header 20 + TCP header 20 */

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static uint16_t csum(const uint8_t *p, size_t n, uint32_t sum)
{
    for (; n > 1; p += 2, n -= 2)
        sum += (uint32_t)p[0] << 8 | p[1];
    if (n)
        sum += (uint32_t)p[0] << 8;
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

/* one SYN: the kernel fills the IP id and checksum of an IPPROTO_RAW packet; TCP's is ours */
static void syn(uint8_t *b, uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport, uint32_t seq)
{
    memset(b, 0, PKT);
    b[0] = 0x45; b[3] = PKT; b[8] = 64; b[9] = IPPROTO_TCP;
    memcpy(b + 12, &src, 4);
    memcpy(b + 16, &dst, 4);
    uint8_t *t = b + 20;
    t[0] = sport >> 8; t[1] = sport & 0xFF; t[2] = dport >> 8; t[3] = dport & 0xFF;
    t[4] = seq >> 24; t[5] = seq >> 16; t[6] = seq >> 8; t[7] = seq;
    t[12] = 5 << 4; t[13] = 0x02; t[14] = 0xFF; t[15] = 0xFF;
    uint8_t pseudo[12];
    memcpy(pseudo, &src, 4);
    memcpy(pseudo + 4, &dst, 4);
    pseudo[8] = 0; pseudo[9] = IPPROTO_TCP; pseudo[10] = 0; pseudo[11] = 20;
    uint16_t c = csum(pseudo, 12, 0);
    c = csum(t, 20, (uint16_t)~c);
    t[16] = c >> 8; t[17] = c & 0xFF;
}

static int usage(const char *why)
{
    fprintf(stderr, "synflood: %s\nusage: synflood --source A --dest A --port P --count N "
            "--seconds S [--pps R]\n", why);
    return 2;
}

int main(int argc, char **argv)
{
    const char *source = NULL, *dest = NULL;
    long port = 0, pps = 0;
    long long count = -1;
    double seconds = -1;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            return usage("every option takes a value");
        const char *k = argv[i], *v = argv[++i];
        char *end = NULL;
        if (!strcmp(k, "--source")) source = v;
        else if (!strcmp(k, "--dest")) dest = v;
        else if (!strcmp(k, "--port")) port = strtol(v, &end, 10);
        else if (!strcmp(k, "--count")) count = strtoll(v, &end, 10);
        else if (!strcmp(k, "--seconds")) seconds = strtod(v, &end);
        else if (!strcmp(k, "--pps")) pps = strtol(v, &end, 10);
        else return usage("unknown option");
        if (end && *end)
            return usage("not a number");
    }
    struct in_addr src, dst;
    if (!source || !dest || inet_pton(AF_INET, source, &src) != 1 || inet_pton(AF_INET, dest, &dst) != 1)
        return usage("--source and --dest must be IPv4 addresses");
    if (port < 1 || port > 65535 || count < 1 || seconds <= 0 || seconds > 3600 || pps < 0)
        return usage("need --port 1..65535, --count >= 1, 0 < --seconds <= 3600, --pps >= 0");

    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (fd < 0) {
        fprintf(stderr, "synflood: raw socket: %s (needs CAP_NET_RAW)\n", strerror(errno));
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    static uint8_t bufs[BATCH][PKT];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = dst};
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = PKT;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &to;
        msgs[i].msg_hdr.msg_namelen = sizeof(to);
    }

    long long sent = 0, errors = 0, n = 0;
    double t0 = now_s(), t = t0;
    while (!stop && sent + errors < count && (t = now_s()) - t0 < seconds) {
        if (pps > 0 && sent + errors >= (long long)((t - t0) * pps)) {
            struct timespec nap = {0, 50000};        /* ahead of the pace: wait 50 us */
            nanosleep(&nap, NULL);
            continue;
        }
        int k = BATCH;
        if (count - sent - errors < k)
            k = (int)(count - sent - errors);
        for (int i = 0; i < k; i++, n++)             /* sports 1024..65535, a new seq each */
            syn(bufs[i], src.s_addr, dst.s_addr, (uint16_t)(1024 + n % 64512), (uint16_t)port,
                (uint32_t)(n * 2654435761u));
        int r = sendmmsg(fd, msgs, (unsigned)k, 0);
        if (r < 0) {
            if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR) {
                fprintf(stderr, "synflood: sendmmsg: %s\n", strerror(errno));
                close(fd);
                return 2;
            }
            errors += k;
        } else {
            sent += r;
            errors += k - r;
        }
    }
    double elapsed = now_s() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"sent\":%lld,\"errors\":%lld,\"elapsed_s\":%.6f,\"cpu_user_s\":%.6f,\"cpu_sys_s\":%.6f}\n",
           sent, errors, elapsed, ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    close(fd);
    return 0;
}
