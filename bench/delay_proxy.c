/*
 * bench-delay-proxy - a TCP proxy that delays every byte by a fixed time in
 * each direction, for bench/bench.py: PostgreSQL "behind a network" on a
 * machine whose kernel has no netem.  A client's round trip through it
 * takes twice the delay more than without it; the bytes, their order and
 * the throughput are untouched (data is forwarded as soon as it is due,
 * however much is queued).
 *
 *   bench-delay-proxy --upstream PORT --delay-us N [--port N]
 *                                 prints "PORT" on the first stdout line,
 *                                 then serves until SIGTERM / SIGINT
 *
 * One thread, epoll, one timeline per direction of each connection.  For
 * the benchmark only: no limits beyond a fixed number of connections.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#define MAX_CONNS 512
#define CHUNK     65536

/* Bytes read from one side, to be written to the other once due. */
struct chunk {
    int64_t due_us;
    size_t len, sent;
    struct chunk *next;
    char data[];
};

struct dir {
    int from, to;
    struct chunk *head, *tail;
    int eof;     /* the reading side closed: shut the writing side once drained */
    int blocked; /* the writing side's buffer is full: wait for EPOLLOUT */
};

struct conn {
    struct dir d[2]; /* 0: client -> server, 1: server -> client */
    int live;
};

static struct conn conns[MAX_CONNS];
static volatile sig_atomic_t stop;
static int64_t delay_us;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void conn_close(int ep, struct conn *c)
{
    for (int i = 0; i < 2; i++) {
        struct chunk *k = c->d[i].head;
        while (k) {
            struct chunk *n = k->next;
            free(k);
            k = n;
        }
        c->d[i].head = c->d[i].tail = NULL;
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->d[0].from, NULL);
    epoll_ctl(ep, EPOLL_CTL_DEL, c->d[1].from, NULL);
    close(c->d[0].from);
    close(c->d[1].from);
    c->live = 0;
}

/* Reads what fd has into its direction's timeline; -1 when the connection is over. */
static int pull(struct dir *d)
{
    for (;;) {
        struct chunk *k = malloc(sizeof(*k) + CHUNK);
        if (!k)
            return -1;
        ssize_t n = read(d->from, k->data, CHUNK);
        if (n <= 0) {
            free(k);
            if (n == 0) {
                d->eof = 1;
                return 0;
            }
            return errno == EAGAIN || errno == EINTR ? 0 : -1;
        }
        k->len = (size_t)n;
        k->sent = 0;
        k->due_us = now_us() + delay_us;
        k->next = NULL;
        if (d->tail)
            d->tail->next = k;
        else
            d->head = k;
        d->tail = k;
    }
}

/* Watches c->d[j].to for room: it is the reverse direction's reading side (same registration). */
static void want_out(int ep, struct conn *c, int j, int on)
{
    c->d[j].blocked = on;
    struct epoll_event ev = {.events = (c->d[1 - j].eof ? 0u : EPOLLIN) | (on ? EPOLLOUT : 0u),
                             .data.u64 = (uint64_t)((c - conns) * 2 + (1 - j))};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->d[j].to, &ev);
}

/* Writes what is due; returns -1 on a write error. */
static int push(int ep, struct conn *c, int j, int64_t now)
{
    struct dir *d = &c->d[j];
    while (!d->blocked && d->head && d->head->due_us <= now) {
        struct chunk *k = d->head;
        ssize_t n = write(d->to, k->data + k->sent, k->len - k->sent);
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        k->sent += n > 0 ? (size_t)n : 0;
        if (k->sent < k->len) {
            want_out(ep, c, j, 1); /* the socket buffer is full */
            return 0;
        }
        d->head = k->next;
        if (!d->head)
            d->tail = NULL;
        free(k);
    }
    if (!d->head && d->eof == 1) {
        shutdown(d->to, SHUT_WR);
        d->eof = 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int port = 0, upstream = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = (int)strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--upstream") == 0)
            upstream = (int)strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--delay-us") == 0)
            delay_us = strtoll(argv[i + 1], NULL, 10);
    }
    if (upstream <= 0 || delay_us < 0) {
        fprintf(stderr, "usage: bench-delay-proxy --upstream PORT --delay-us N [--port N]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(a);
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 64) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &alen) != 0) {
        perror("bench-delay-proxy: listen");
        return 1;
    }
    printf("%d\n", ntohs(a.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    while (!stop) {
        /* Sleep until the next chunk is due (or something arrives). */
        int64_t now = now_us(), next = INT64_MAX;
        for (int i = 0; i < MAX_CONNS; i++)
            for (int j = 0; conns[i].live && j < 2; j++)
                if (conns[i].d[j].head && !conns[i].d[j].blocked &&
                    conns[i].d[j].head->due_us < next)
                    next = conns[i].d[j].head->due_us;
        int64_t wait = next == INT64_MAX ? 100000 : next <= now ? 0 : next - now;
        struct timespec ts = {.tv_sec = wait / 1000000, .tv_nsec = (wait % 1000000) * 1000};
        struct epoll_event evs[64];
        int n = epoll_pwait2(ep, evs, 64, &ts, NULL);
        for (int e = 0; e < n; e++) {
            if (evs[e].data.u64 == UINT64_MAX) {
                int cfd = accept(ls, NULL, NULL);
                if (cfd < 0)
                    continue;
                int slot = -1;
                for (int i = 0; i < MAX_CONNS && slot < 0; i++)
                    if (!conns[i].live)
                        slot = i;
                struct sockaddr_in u = {.sin_family = AF_INET,
                                        .sin_port = htons((uint16_t)upstream)};
                u.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                int sfd = socket(AF_INET, SOCK_STREAM, 0);
                if (slot < 0 || connect(sfd, (struct sockaddr *)&u, sizeof(u)) != 0) {
                    close(cfd);
                    close(sfd);
                    continue;
                }
                nonblock(cfd);
                nonblock(sfd);
                struct conn *c = &conns[slot];
                memset(c, 0, sizeof(*c));
                c->live = 1;
                c->d[0].from = cfd, c->d[0].to = sfd;
                c->d[1].from = sfd, c->d[1].to = cfd;
                for (int j = 0; j < 2; j++) {
                    struct epoll_event cev = {.events = EPOLLIN,
                                              .data.u64 = (uint64_t)(slot * 2 + j)};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c->d[j].from, &cev);
                }
                continue;
            }
            struct conn *c = &conns[evs[e].data.u64 / 2];
            int j = (int)(evs[e].data.u64 % 2);
            struct dir *d = &c->d[j];
            if (!c->live)
                continue;
            if (evs[e].events & EPOLLOUT) /* room again for the reverse direction */
                want_out(ep, c, 1 - j, 0);
            if (!(evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            if (pull(d) != 0) {
                conn_close(ep, c);
                continue;
            }
            if (d->eof) /* nothing more to read; still watch for room if needed */
                want_out(ep, c, 1 - j, c->d[1 - j].blocked);
        }
        now = now_us();
        for (int i = 0; i < MAX_CONNS; i++) {
            struct conn *c = &conns[i];
            if (!c->live)
                continue;
            if (push(ep, c, 0, now) != 0 || push(ep, c, 1, now) != 0 ||
                (c->d[0].eof == 2 && c->d[1].eof == 2))
                conn_close(ep, c);
        }
    }
    return 0;
}
