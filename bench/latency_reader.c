/*
 * bench-latency-reader: end-to-end latency as a reader of a directory of
 * JSON-lines files sees it (bench.py's latency phase).
 *
 *   bench-latency-reader DIR OUT.tsv
 *
 * Watches DIR with inotify, reads what each file gained as soon as the
 * kernel says it was written, and notes for every complete line holding
 * "timestamp":N the wall-clock time of that read minus N (milliseconds).
 * Prints "ready" once the watch is in place; on SIGTERM or SIGINT it reads
 * what is left, writes "timestamp<TAB>latency_ms" lines to OUT.tsv and
 * exits 0.
 *
 * bench.py measures both sides of the comparison with it: the sidecar's file
 * sink and kcat writing the same format to a file.  The reader it replaces
 * was a Python thread; at 2,400 writes a second on two cores it read late
 * and merged writes, adding its own lag to the figures.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

struct file {
    char name[NAME_MAX + 1];
    int fd;
    char *rest; /* an incomplete last line */
    size_t rest_len, rest_cap;
};

struct sample {
    int64_t ts;
    double lat_ms;
};

static volatile sig_atomic_t stop;
static struct file *files;
static size_t nfiles, files_cap;
static struct sample *samples;
static size_t nsamples, samples_cap;
static const char *dir;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return p;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    p = realloc(p, n * size);
    if (!p) {
        fprintf(stderr, "bench-latency-reader: out of memory\n");
        exit(1);
    }
    *cap = n;
    return p;
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec * 1000.0 + (double)t.tv_nsec / 1e6;
}

static struct file *file_named(const char *name)
{
    for (size_t i = 0; i < nfiles; i++)
        if (strcmp(files[i].name, name) == 0)
            return &files[i];
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    files = grow(files, &files_cap, nfiles + 1, sizeof(*files));
    struct file *f = &files[nfiles++];
    memset(f, 0, sizeof(*f));
    snprintf(f->name, sizeof(f->name), "%s", name);
    f->fd = fd;
    return f;
}

static void note_line(const char *line, size_t len, double at)
{
    static const char key[] = "\"timestamp\":";
    const char *k = memmem(line, len, key, sizeof(key) - 1);
    if (!k)
        return;
    const char *d = k + sizeof(key) - 1, *end = line + len;
    int64_t ts = 0;
    if (d >= end || *d < '0' || *d > '9')
        return;
    while (d < end && *d >= '0' && *d <= '9')
        ts = ts * 10 + (*d++ - '0');
    samples = grow(samples, &samples_cap, nsamples + 1, sizeof(*samples));
    samples[nsamples++] = (struct sample){ts, at - (double)ts};
}

/* Reads what f gained since the last call; every complete line is noted at the read's time. */
static void read_file(struct file *f)
{
    char buf[1 << 16];
    for (;;) {
        ssize_t n = read(f->fd, buf, sizeof(buf));
        if (n <= 0)
            return;
        double at = now_ms();
        f->rest = grow(f->rest, &f->rest_cap, f->rest_len + (size_t)n, 1);
        memcpy(f->rest + f->rest_len, buf, (size_t)n);
        f->rest_len += (size_t)n;
        size_t start = 0;
        for (size_t i = 0; i < f->rest_len; i++) {
            if (f->rest[i] == '\n') {
                note_line(f->rest + start, i - start, at);
                start = i + 1;
            }
        }
        memmove(f->rest, f->rest + start, f->rest_len - start);
        f->rest_len -= start;
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: bench-latency-reader DIR OUT.tsv\n");
        return 2;
    }
    dir = argv[1];
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (ino < 0 || inotify_add_watch(ino, dir, IN_MODIFY | IN_CREATE) < 0) {
        fprintf(stderr, "bench-latency-reader: watching %s: %s\n", dir, strerror(errno));
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    char ev[1 << 16] __attribute__((aligned(__alignof__(struct inotify_event))));
    while (!stop) {
        struct pollfd pfd = {.fd = ino, .events = POLLIN};
        if (poll(&pfd, 1, 200) <= 0)
            continue;
        ssize_t len = read(ino, ev, sizeof(ev));
        for (ssize_t i = 0; i < len;) {
            const struct inotify_event *e = (const struct inotify_event *)(ev + i);
            if (e->len > 0) {
                struct file *f = file_named(e->name);
                if (f)
                    read_file(f);
            }
            i += (ssize_t)(sizeof(*e) + e->len);
        }
    }
    for (size_t i = 0; i < nfiles; i++)
        read_file(&files[i]);
    FILE *out = fopen(argv[2], "w");
    if (!out) {
        fprintf(stderr, "bench-latency-reader: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    for (size_t i = 0; i < nsamples; i++)
        fprintf(out, "%" PRId64 "\t%.2f\n", samples[i].ts, samples[i].lat_ms);
    return fclose(out) == 0 ? 0 : 1;
}
