// What an epoll registration costs a packet socket that sends: every sent skb, freed, runs
// sock_def_write_space, which wakes the socket's wait queue when anything sleeps on it (an
// epoll does). 64-byte frames through sendmmsg (64 a call) on IFNAME for SECONDS, with the
// socket on no epoll (mode 0), on one for EPOLLIN|EPOLLET (1), or EPOLLIN|EPOLLOUT|EPOLLET
// (2, what the backend's workers register). Prints Mpps. As root, on an interface nobody else
// uses (e.g. one end of a veth pair in a fresh namespace):
//   gcc -O2 -o /tmp/epoll-wakeup resources/bench/epoll-wakeup.c
//   ip netns add ew && ip -n ew link add pa type veth peer name pb
//   ip -n ew link set pa up && ip -n ew link set pb up
//   for m in 0 1 2; do ip netns exec ew /tmp/epoll-wakeup pb $m 2; done; ip netns del ew
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s IFNAME MODE(0|1|2) SECONDS\n", argv[0]);
        return 2;
    }
    int mode = atoi(argv[2]);
    double secs = atof(argv[3]);
    if (strlen(argv[2]) != 1 || mode < 0 || mode > 2 || argv[2][0] != '0' + mode) {
        fprintf(stderr, "MODE must be 0, 1 or 2, not %s\n", argv[2]);
        return 2;
    }
    if (!(secs > 0)) {
        fprintf(stderr, "SECONDS must be a number above 0, not %s\n", argv[3]);
        return 2;
    }
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s < 0) {
        perror("socket");
        return 1;
    }
    struct sockaddr_ll a = {0};
    a.sll_family = AF_PACKET;
    a.sll_protocol = htons(ETH_P_ALL);
    a.sll_ifindex = if_nametoindex(argv[1]);
    if (a.sll_ifindex == 0 || bind(s, (void *)&a, sizeof a) != 0) {
        perror(argv[1]);
        return 1;
    }
    int one = 1;
    setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    setsockopt(s, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    if (mode) {
        int e = epoll_create1(0);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLET | (mode == 2 ? EPOLLOUT : 0)};
        if (e < 0 || epoll_ctl(e, EPOLL_CTL_ADD, s, &ev) != 0) {
            perror("epoll");
            return 1;
        }
    }
    unsigned char f[64];
    memset(f, 0, sizeof f);
    memset(f, 0xff, 6);
    f[12] = 0x08;
    struct mmsghdr m[64];
    struct iovec io[64];
    for (int i = 0; i < 64; i++) {
        io[i].iov_base = f;
        io[i].iov_len = sizeof f;
        memset(&m[i], 0, sizeof m[i]);
        m[i].msg_hdr.msg_iov = &io[i];
        m[i].msg_hdr.msg_iovlen = 1;
    }
    double t0 = now(), end = t0 + secs;
    long n = 0;
    while (now() < end) {
        int r = sendmmsg(s, m, 64, 0);
        if (r > 0)
            n += r;
    }
    printf("mode %d: %.3f Mpps\n", mode, n / (now() - t0) / 1e6);
    return 0;
}
