/*
 * sc_util - small shared pieces: exit codes, clocks, a bounded growable
 * buffer, capped exponential backoff with jitter, checked allocation.
 */
#ifndef SC_UTIL_H
#define SC_UTIL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Process exit codes (docs/design.md §7). */
enum {
    SC_EXIT_OK = 0,
    SC_EXIT_FAILURE = 1, /* runtime failure: unreachable server, I/O error */
    SC_EXIT_USAGE = 2,   /* bad command line, invalid config, bad token */
};

#define SC_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Allocation that aborts the process on failure (out of memory is not recoverable here). */
void *sc_xmalloc(size_t n);
void *sc_xcalloc(size_t n, size_t size);
void *sc_xrealloc(void *p, size_t n);
char *sc_xstrdup(const char *s);
char *sc_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Monotonic and wall-clock milliseconds. */
int64_t sc_mono_ms(void);
int64_t sc_wall_ms(void);
/* Monotonic nanoseconds (for latency histograms). */
int64_t sc_mono_ns(void);
/* Sleeps ms milliseconds, or less if *stop becomes true (checked every 50 ms). */
void sc_sleep_ms(int64_t ms, const atomic_bool *stop);

/*
 * A growable byte buffer with a hard maximum: sc_buf_reserve() fails instead
 * of growing past max (0 = SIZE_MAX).  Reused across batches: sc_buf_reset()
 * keeps the allocation.
 */
struct sc_buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max;
};

void sc_buf_init(struct sc_buf *b, size_t max);
void sc_buf_free(struct sc_buf *b);
static inline void sc_buf_reset(struct sc_buf *b)
{
    b->len = 0;
}
/* Ensures room for n more bytes; -1 if that would exceed max. */
int sc_buf_reserve(struct sc_buf *b, size_t n) __attribute__((warn_unused_result));
/* The growing path of sc_buf_append() (and its error). */
int sc_buf_append_grow(struct sc_buf *b, const void *p, size_t n)
    __attribute__((warn_unused_result));
/*
 * Appends n bytes; -1 if that would exceed max.  Inline: the envelope encoder
 * appends a few bytes at a time, and a call per piece showed in profiles.
 * (cap never exceeds max, so fitting in cap is fitting under max.)
 */
__attribute__((warn_unused_result)) static inline int sc_buf_append(struct sc_buf *b, const void *p,
                                                                    size_t n)
{
    if (n <= b->cap - b->len) {
        if (n)
            memcpy(b->data + b->len, p, n);
        b->len += n;
        return 0;
    }
    return sc_buf_append_grow(b, p, n);
}
__attribute__((warn_unused_result)) static inline int sc_buf_putc(struct sc_buf *b, char c)
{
    if (b->len < b->cap) {
        b->data[b->len++] = c;
        return 0;
    }
    return sc_buf_append_grow(b, &c, 1);
}
int sc_buf_printf(struct sc_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)))
__attribute__((warn_unused_result));

/*
 * Capped exponential backoff with full jitter: attempt 0 -> [initial/2, initial],
 * doubling up to max_ms.
 */
struct sc_backoff {
    int initial_ms;
    int max_ms;
    int attempt;
};
void sc_backoff_init(struct sc_backoff *b, int initial_ms, int max_ms);
int sc_backoff_next(struct sc_backoff *b);
void sc_backoff_reset(struct sc_backoff *b);

/* Thread-safe pseudo-random number in [0, n). */
uint32_t sc_rand(uint32_t n);

/* Parses a whole decimal int64 string; 0 ok, -1 on garbage or overflow. */
int sc_parse_i64(const char *s, int64_t *out);

/* The value of a hexadecimal digit, or -1. */
int sc_hexval(char c);

/* Is name one of the space-separated words of list?  Never for an empty name. */
bool sc_word_in(const char *list, const char *name);

/* Levenshtein distance between a and b (for "did you mean" hints). */
size_t sc_edit_distance(const char *a, const char *b);

/*
 * The CPUs this process may use: its affinity mask's, or fewer when its
 * cgroup allows less CPU time (cgroup v2 cpu.max of its cgroup and every
 * ancestor, or v1 cpu.cfs_quota_us / cpu.cfs_period_us at the hierarchy's
 * root, as a container sees it), rounded up; 1 at least.
 */
int sc_cpus_available(void);
/* The same with the cgroup hierarchy mounted at root, the process's cgroup v2 path
 * (from /proc/self/cgroup; NULL: unknown) and an affinity count (for tests). */
int sc_cpus_available_at(const char *root, const char *cgroup, int affinity);

#endif
