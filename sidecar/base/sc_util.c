/*
 * sc_util.c - small shared pieces (see sc_util.h).
 */
#include "base/sc_util.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void oom(size_t n)
{
    fprintf(stderr, "out of memory (allocating %zu bytes)\n", n);
    abort();
}

void *sc_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *sc_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom(n * size);
    return p;
}

void *sc_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *sc_xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p)
        oom(strlen(s) + 1);
    return p;
}

char *sc_xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = NULL;
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom(0);
    return out;
}

static int64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sc_mono_ms(void)
{
    return clock_ms(CLOCK_MONOTONIC);
}

int64_t sc_wall_ms(void)
{
    return clock_ms(CLOCK_REALTIME);
}

int64_t sc_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void sc_sleep_ms(int64_t ms, const atomic_bool *stop)
{
    int64_t end = sc_mono_ms() + ms;
    for (;;) {
        if (stop && atomic_load(stop))
            return;
        int64_t left = end - sc_mono_ms();
        if (left <= 0)
            return;
        if (stop && left > 50)
            left = 50;
        struct timespec ts = {.tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
}

void sc_buf_init(struct sc_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max ? max : SIZE_MAX;
}

void sc_buf_free(struct sc_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int sc_buf_reserve(struct sc_buf *b, size_t n)
{
    if (n > b->max || b->len > b->max - n)
        return -1;
    size_t need = b->len + n;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > b->max)
        cap = b->max;
    b->data = sc_xrealloc(b->data, cap + 1); /* +1: room for a terminating NUL */
    b->cap = cap;
    return 0;
}

int sc_buf_append_grow(struct sc_buf *b, const void *p, size_t n)
{
    if (sc_buf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int sc_buf_printf(struct sc_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n < sizeof(tmp))
        return sc_buf_append(b, tmp, (size_t)n);
    if (sc_buf_reserve(b, (size_t)n + 1) < 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void sc_backoff_init(struct sc_backoff *b, int initial_ms, int max_ms)
{
    b->initial_ms = initial_ms > 0 ? initial_ms : 1;
    b->max_ms = max_ms >= b->initial_ms ? max_ms : b->initial_ms;
    b->attempt = 0;
}

int sc_backoff_next(struct sc_backoff *b)
{
    int64_t ceil = b->initial_ms;
    for (int i = 0; i < b->attempt && ceil < b->max_ms; i++)
        ceil *= 2;
    if (ceil > b->max_ms)
        ceil = b->max_ms;
    if (b->attempt < 62)
        b->attempt++;
    int64_t half = ceil / 2;
    return (int)(half + sc_rand((uint32_t)(ceil - half + 1)));
}

void sc_backoff_reset(struct sc_backoff *b)
{
    b->attempt = 0;
}

uint32_t sc_rand(uint32_t n)
{
    static __thread uint64_t state;
    if (state == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        state = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)&state;
        state |= 1;
    }
    /* xorshift64* */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    uint64_t r = state * 0x2545F4914F6CDD1DULL;
    return n ? (uint32_t)((r >> 32) % n) : 0;
}

int sc_parse_i64(const char *s, int64_t *out)
{
    if (!s || !*s)
        return -1;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

size_t sc_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return la > lb ? la : lb;
    size_t prev[65], cur[65];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(size_t) * (lb + 1));
    }
    return prev[lb];
}

bool sc_word_in(const char *list, const char *name)
{
    size_t n = strlen(name);
    if (n == 0)
        return false;
    for (const char *p = list; (p = strstr(p, name)) != NULL; p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return true;
    return false;
}

int sc_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The CPUs a quota of quota per period microseconds allows, rounded up (INT_MAX: none). */
static int quota_cpus(long long quota, long long period)
{
    if (quota <= 0 || period <= 0)
        return INT_MAX;
    long long n = (quota + period - 1) / period;
    return n > INT_MAX ? INT_MAX : (int)n;
}

/* cgroup v2: cpu.max of dir ("max 100000" or "200000 100000"); INT_MAX if none or no limit. */
static int v2_cpus(const char *dir)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/cpu.max", dir) >= (int)sizeof(path))
        return INT_MAX;
    FILE *f = fopen(path, "r");
    if (!f)
        return INT_MAX;
    char quota[32] = "";
    long long period = 0;
    int n = fscanf(f, "%31s %lld", quota, &period);
    fclose(f);
    if (n != 2 || strcmp(quota, "max") == 0)
        return INT_MAX;
    return quota_cpus(strtoll(quota, NULL, 10), period);
}

static long long read_ll(const char *root, const char *name)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/%s", root, name) >= (int)sizeof(path))
        return -1;
    FILE *f = fopen(path, "r");
    long long v = -1;
    if (f) {
        if (fscanf(f, "%lld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

int sc_cpus_available_at(const char *root, const char *cgroup, int affinity)
{
    int n = affinity > 0 ? affinity : 1;
    /* v2: the process's cgroup and each ancestor up to the root may each set a limit. */
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof(dir), "%s%s", root, cgroup && cgroup[0] == '/' ? cgroup : "") >=
        (int)sizeof(dir))
        snprintf(dir, sizeof(dir), "%s", root);
    for (;;) {
        int c = v2_cpus(dir);
        if (c < n)
            n = c;
        char *slash = strrchr(dir, '/');
        if (strlen(dir) <= strlen(root) || !slash || slash < dir + strlen(root))
            break;
        *slash = '\0';
    }
    /* v1: the cpu controller's files at its root (a container's own cgroup). */
    static const char *const v1[] = {"cpu", "cpu,cpuacct", "cpuacct,cpu"};
    for (size_t i = 0; i < SC_ARRAY_LEN(v1); i++) {
        char q[64], pd[64];
        snprintf(q, sizeof(q), "%s/cpu.cfs_quota_us", v1[i]);
        snprintf(pd, sizeof(pd), "%s/cpu.cfs_period_us", v1[i]);
        int c = quota_cpus(read_ll(root, q), read_ll(root, pd));
        if (c < n)
            n = c;
    }
    return n;
}

int sc_cpus_available(void)
{
    cpu_set_t set;
    int affinity = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 0;
    if (affinity <= 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        affinity = online > 0 && online < INT_MAX ? (int)online : 1;
    }
    /* "0::/path" in /proc/self/cgroup: the process's cgroup v2 */
    char line[PATH_MAX + 8], cgroup[PATH_MAX] = "";
    FILE *f = fopen("/proc/self/cgroup", "r");
    while (f && fgets(line, sizeof(line), f)) {
        size_t len = strcspn(line, "\n");
        if (strncmp(line, "0::", 3) == 0 && len - 3 < sizeof(cgroup)) {
            memcpy(cgroup, line + 3, len - 3);
            cgroup[len - 3] = '\0';
        }
    }
    if (f)
        fclose(f);
    return sc_cpus_available_at("/sys/fs/cgroup", cgroup[0] ? cgroup : NULL, affinity);
}
