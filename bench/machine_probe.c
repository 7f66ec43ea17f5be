/*
 * bench-machine-probe: what two costs that decide some of the bench's targets
 * cost on this machine, as one line of JSON.
 *
 *   bench-machine-probe DIR
 *
 * - page_fault_us: the first write to a page of fresh private memory, per
 *   page (the kernel finds, zeroes and maps it).
 * - shared_page_fault_us: the first write of a second process to a page of
 *   shared memory that another process has already touched, per page.  A
 *   PostgreSQL backend pays this for each page of shared_buffers it touches
 *   for the first time; a sink that loads through two backends pays it
 *   twice where `\copy`'s one backend pays it once.
 * - fdatasync_ms_p50 / _p99: appending 4 KiB to a file in DIR and
 *   fdatasync() it, as the file sink does after each batch and PostgreSQL
 *   for each commit's WAL.
 *
 * A target that compares the sidecar with a reference that pays these less
 * often (fewer backends, no sync) moves with them, and machines of the same
 * kind measured those targets differently by more than their margins
 * (docs/benchmarks.md), so bench.py stores the probe's line with every
 * result.  The fault figures are medians of three passes over 64 MiB; the
 * sync figures come from 200 syncs.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REGION (64u << 20)
#define REPEAT 3
#define SYNCS  200

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return v[n / 2];
}

static double touch(volatile char *m, size_t len, long page)
{
    double t0 = now_us();
    for (size_t i = 0; i < len; i += (size_t)page)
        m[i] = 1;
    return (now_us() - t0) / (double)(len / (size_t)page);
}

static int private_fault(long page, double *out)
{
    double v[REPEAT];
    for (int r = 0; r < REPEAT; r++) {
        char *m = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            return -1;
        v[r] = touch(m, REGION, page);
        munmap(m, REGION);
    }
    *out = median(v, REPEAT);
    return 0;
}

/* One child's write to every page of m: the child's cost per page, or < 0. */
static double child_touch(char *m, long page)
{
    int fd[2];
    if (pipe(fd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]);
        close(fd[1]);
        return -1;
    }
    if (pid == 0) {
        double us = touch(m, REGION, page);
        ssize_t n = write(fd[1], &us, sizeof us);
        _exit(n == (ssize_t)sizeof us ? 0 : 1);
    }
    close(fd[1]);
    double us = -1;
    ssize_t n = read(fd[0], &us, sizeof us);
    close(fd[0]);
    int status;
    waitpid(pid, &status, 0);
    return n == (ssize_t)sizeof us && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? us : -1;
}

static int shared_fault(long page, double *out)
{
    char *m = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -1;
    (void)touch(m, REGION, page);
    double v[REPEAT];
    int rc = 0;
    for (int r = 0; r < REPEAT && rc == 0; r++)
        if ((v[r] = child_touch(m, page)) < 0)
            rc = -1;
    munmap(m, REGION);
    if (rc == 0)
        *out = median(v, REPEAT);
    return rc;
}

static int sync_cost(const char *dir, double *p50, double *p99)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/machine-probe.%ld", dir, (long)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    if (fd < 0)
        return -1;
    unlink(path);
    char block[4096];
    memset(block, 'x', sizeof block);
    static double v[SYNCS];
    for (int i = 0; i < SYNCS; i++) {
        double t0 = now_us();
        if (write(fd, block, sizeof block) != (ssize_t)sizeof block || fdatasync(fd) != 0) {
            close(fd);
            return -1;
        }
        v[i] = (now_us() - t0) / 1000.0;
    }
    close(fd);
    qsort(v, SYNCS, sizeof v[0], cmp_double);
    *p50 = v[SYNCS / 2];
    *p99 = v[SYNCS * 99 / 100];
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: bench-machine-probe DIR\n");
        return 2;
    }
    long page = sysconf(_SC_PAGESIZE);
    double priv, shared, p50, p99;
    if (private_fault(page, &priv) != 0 || shared_fault(page, &shared) != 0) {
        fprintf(stderr, "bench-machine-probe: memory: %s\n", strerror(errno));
        return 1;
    }
    if (sync_cost(argv[1], &p50, &p99) != 0) {
        fprintf(stderr, "bench-machine-probe: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    printf("{\"page_fault_us\": %.2f, \"shared_page_fault_us\": %.2f, "
           "\"fdatasync_ms_p50\": %.3f, \"fdatasync_ms_p99\": %.3f}\n",
           priv, shared, p50, p99);
    return 0;
}
