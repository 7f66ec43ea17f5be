/*
 * check_partbuf.c - the partition buffer and batch cutting
 * (sidecar/pipeline/sc_partbuf.c) without Kafka or PostgreSQL: records come
 * back byte for byte, batches are cut by count and by bytes exactly as a
 * simple reference says, checksums match sc_record_checksum(), and offset
 * gaps (compacted topics, transaction markers: the mock cluster cannot make
 * them) do not confuse the search for a pending batch's end.
 */
#include <check.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/sc_partbuf.h"
#include "record/sc_envelope.h"

/* A record owned by the test: what was pushed, to compare the views with. */
struct rec {
    int64_t offset;
    int64_t timestamp;
    char key[64];
    int key_len; /* -1 = null */
    char value[600];
    int value_len; /* -1 = null */
    struct sc_header hdrs[3];
    char hname[3][16];
    char hval[3][16];
    size_t nheaders;
};

static struct sc_record view_of(const struct rec *t)
{
    return (struct sc_record){
        .topic = "t",
        .partition = 7,
        .offset = t->offset,
        .timestamp = t->timestamp,
        .key = t->key_len >= 0 ? t->key : NULL,
        .key_len = t->key_len > 0 ? (size_t)t->key_len : 0,
        .value = t->value_len >= 0 ? t->value : NULL,
        .value_len = t->value_len > 0 ? (size_t)t->value_len : 0,
        .headers = t->hdrs,
        .nheaders = t->nheaders,
    };
}

/* A pseudo-random record: null and empty keys and values, headers with null values. */
static void make(struct rec *t, int64_t offset, unsigned *seed)
{
    memset(t, 0, sizeof(*t));
    t->offset = offset;
    t->timestamp = rand_r(seed) % 4 == 0 ? -1 : 1700000000000 + offset;
    t->key_len = rand_r(seed) % 5 == 0 ? -1 : rand_r(seed) % 40;
    for (int i = 0; i < t->key_len; i++)
        t->key[i] = (char)('a' + rand_r(seed) % 26);
    t->value_len = rand_r(seed) % 7 == 0 ? -1 : rand_r(seed) % 500;
    for (int i = 0; i < t->value_len; i++)
        t->value[i] = (char)(rand_r(seed) % 256);
    t->nheaders = (size_t)(rand_r(seed) % 4);
    for (size_t h = 0; h < t->nheaders; h++) {
        snprintf(t->hname[h], sizeof(t->hname[h]), "h%u", rand_r(seed) % 100);
        snprintf(t->hval[h], sizeof(t->hval[h]), "v%u", rand_r(seed) % 1000);
        t->hdrs[h] = (struct sc_header){
            .name = t->hname[h],
            .value = rand_r(seed) % 3 == 0 ? NULL : t->hval[h],
            .len = strlen(t->hval[h]),
        };
        if (!t->hdrs[h].value)
            t->hdrs[h].len = 0;
    }
}

static void assert_same(const struct sc_record *got, const struct rec *want)
{
    struct sc_record w = view_of(want);
    ck_assert_str_eq(got->topic, "t");
    ck_assert_int_eq(got->partition, 7);
    ck_assert_int_eq(got->offset, w.offset);
    ck_assert_int_eq(got->timestamp, w.timestamp);
    ck_assert((got->key == NULL) == (w.key == NULL));
    ck_assert_uint_eq(got->key_len, w.key_len);
    ck_assert(w.key_len == 0 || memcmp(got->key, w.key, w.key_len) == 0);
    ck_assert((got->value == NULL) == (w.value == NULL));
    ck_assert_uint_eq(got->value_len, w.value_len);
    ck_assert(w.value_len == 0 || memcmp(got->value, w.value, w.value_len) == 0);
    ck_assert_uint_eq(got->nheaders, w.nheaders);
    for (size_t h = 0; h < w.nheaders; h++) {
        ck_assert_str_eq(got->headers[h].name, w.headers[h].name);
        ck_assert((got->headers[h].value == NULL) == (w.headers[h].value == NULL));
        ck_assert_uint_eq(got->headers[h].len, w.headers[h].len);
        ck_assert(w.headers[h].len == 0 ||
                  memcmp(got->headers[h].value, w.headers[h].value, w.headers[h].len) == 0);
    }
}

/* Views of b's records [from, from+n) compared with want[0..n), and their checksum. */
static void check_views(const struct sc_partbuf *b, size_t from, size_t n, const struct rec *want)
{
    struct sc_record *views = calloc(n ? n : 1, sizeof(*views));
    struct sc_header *hdrs = calloc(sc_partbuf_nheaders(b, from, n) + 1, sizeof(*hdrs));
    sc_partbuf_views(b, from, n, "t", 7, views, hdrs);
    uint32_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        assert_same(&views[i], &want[i]);
        struct sc_record w = view_of(&want[i]);
        crc = sc_record_checksum(crc, &w);
    }
    ck_assert_uint_eq(sc_partbuf_checksum(b, from, n), crc);
    free(views);
    free(hdrs);
}

/* The batch rule, spelled out: records are added while the sum stays below max_bytes; the
 * one that reaches it is included if it lands exactly on max_bytes or is the only one. */
static size_t reference_batch(const struct rec *r, size_t n, size_t max_records, int64_t max_bytes,
                              bool *full)
{
    int64_t sum = 0;
    *full = false;
    for (size_t i = 0; i < n; i++) {
        if (i == max_records) {
            *full = true;
            return i;
        }
        int64_t b =
            (r[i].key_len > 0 ? r[i].key_len : 0) + (r[i].value_len > 0 ? r[i].value_len : 0);
        if (sum + b >= max_bytes) {
            *full = true;
            return sum + b == max_bytes || i == 0 ? i + 1 : i;
        }
        sum += b;
    }
    if (n == max_records)
        *full = true;
    return n;
}

START_TEST(test_records_come_back_byte_for_byte)
{
    unsigned seed = 1;
    enum {
        N = 300
    };
    static struct rec recs[N];
    struct sc_partbuf b;
    sc_partbuf_init(&b, 1000, 1 << 20, NULL);
    for (size_t i = 0; i < N; i++) {
        make(&recs[i], (int64_t)(100 + 3 * i), &seed); /* gaps of 2 between offsets */
        struct sc_record v = view_of(&recs[i]);
        sc_partbuf_push(&b, &v, (int64_t)i);
    }
    ck_assert_uint_eq(b.len, N);
    check_views(&b, 0, N, recs);
    check_views(&b, 17, 100, recs + 17);
    for (size_t i = 0; i < N; i++) {
        ck_assert_int_eq(sc_partbuf_at(&b, i)->offset, recs[i].offset);
        ck_assert_int_eq(sc_partbuf_at(&b, i)->arrival_ms, (int64_t)i);
    }
    sc_partbuf_free(&b);
}
END_TEST

/* Dropping from the front and pushing at the back crosses slab boundaries both ways, and the
 * views of a batch cut earlier stay valid while more records come in: whatever is buffered must
 * come back intact, whichever slab it is in, with two partitions sharing one pool. */
START_TEST(test_slabs_keep_records_intact)
{
    unsigned seed = 2;
    enum {
        N = 4000
    };
    struct rec *recs = calloc(2 * N, sizeof(*recs));
    struct sc_slabpool pool = {.max_free = 4};
    struct sc_partbuf b[2];
    for (int k = 0; k < 2; k++)
        sc_partbuf_init(&b[k], 100, 1 << 20, &pool);
    size_t first[2] = {0, 0}, pushed[2] = {0, 0};
    struct sc_record views[64];
    struct sc_header hdrs[64 * 3];
    while (pushed[0] < N || pushed[1] < N) {
        int k = rand_r(&seed) % 2;
        struct rec *mine = recs + k * N;
        size_t more = (size_t)(rand_r(&seed) % 60) + 1;
        /* a batch's views, taken before the pushes and read after them */
        size_t nviews = b[k].len < 64 ? b[k].len : 64;
        sc_partbuf_views(&b[k], 0, nviews, "t", 7, views, hdrs);
        for (size_t i = 0; i < more && pushed[k] < N; i++, pushed[k]++) {
            make(&mine[pushed[k]], (int64_t)pushed[k], &seed);
            struct sc_record v = view_of(&mine[pushed[k]]);
            sc_partbuf_push(&b[k], &v, 0);
        }
        for (size_t i = 0; i < nviews; i++)
            assert_same(&views[i], &mine[first[k] + i]);
        size_t drop = (size_t)rand_r(&seed) % (b[k].len + 1);
        sc_partbuf_drop(&b[k], drop);
        first[k] += drop;
        ck_assert_uint_eq(b[k].len, pushed[k] - first[k]);
        check_views(&b[k], 0, b[k].len, mine + first[k]);
        ck_assert_uint_le(pool.nfree, pool.max_free);
    }
    for (int k = 0; k < 2; k++) {
        sc_partbuf_clear(&b[k]);
        ck_assert_uint_eq(b[k].len, 0);
        ck_assert_int_eq(sc_partbuf_bytes(&b[k]), 0);
        sc_partbuf_free(&b[k]);
        ck_assert_int_eq(sc_partbuf_mem(&b[k]), 0);
    }
    free(recs);
    sc_slabpool_drain(&pool);
    ck_assert_uint_eq(pool.nfree, 0);
    ck_assert_ptr_null(pool.free);
}
END_TEST

/*
 * Memory: sc_partbuf_mem() is what the buffer holds allocated, within a
 * slab of what is buffered; a buffer that held a large burst gives it back
 * as it drains, and all but a small first slab once empty (the budget of
 * thousands of idle partitions).
 */
START_TEST(test_memory_given_back)
{
    unsigned seed = 3;
    struct rec r;
    struct sc_partbuf b;
    sc_partbuf_init(&b, 100000, 1 << 30, NULL);
    ck_assert_int_eq(sc_partbuf_mem(&b), 0);
    make(&r, 0, &seed);
    struct sc_record v = view_of(&r);
    sc_partbuf_push(&b, &v, 0);
    ck_assert_int_le(b.slab_bytes, 4096); /* one record: a small first slab */
    for (int i = 1; i < 20000; i++) {
        make(&r, i, &seed);
        v = view_of(&r);
        sc_partbuf_push(&b, &v, 0);
    }
    int64_t full = sc_partbuf_mem(&b), live = sc_partbuf_live(&b);
    ck_assert_int_ge(full, live);
    /* the slabs: what is buffered, the end of each slab a record did not fit in, the last
     * one's unfilled part; the index: a quarter more at most */
    ck_assert_int_le(b.slab_bytes, b.live_bytes * 102 / 100 + SC_SLAB_SIZE);
    ck_assert_int_le(full, live * 13 / 10 + SC_SLAB_SIZE);
    /* Drain to a few records, pushing a few all along: the slabs go with what is dropped. */
    for (int i = 0; i < 200; i++) {
        sc_partbuf_drop(&b, 120);
        ck_assert_int_le(b.slab_bytes, b.live_bytes * 102 / 100 + 2 * SC_SLAB_SIZE);
        make(&r, 20000 + i, &seed);
        v = view_of(&r);
        sc_partbuf_push(&b, &v, 0);
    }
    ck_assert_int_lt(sc_partbuf_mem(&b), full / 2);
    sc_partbuf_clear(&b);
    ck_assert_int_le(sc_partbuf_mem(&b), 4096 + 32 * (int64_t)sizeof(struct sc_buffered));
    ck_assert_uint_le(b.cap, 32);
    /* ... and it works again from there, with small slabs first. */
    make(&r, 30000, &seed);
    v = view_of(&r);
    sc_partbuf_push(&b, &v, 0);
    check_views(&b, 0, 1, &r);
    ck_assert_int_le(b.slab_bytes, 2 * SC_SLAB_SIZE);
    sc_partbuf_free(&b);
}
END_TEST

/*
 * The pool: full-size slabs a partition gives back are the next ones
 * another partition fills (the same memory, no allocation), never more than
 * max_free of them are kept, and a record larger than a slab gets one of
 * its own that is freed, not kept.
 */
START_TEST(test_pool_reuses_full_slabs)
{
    unsigned seed = 4;
    struct sc_slabpool pool = {.max_free = 3};
    struct sc_partbuf a, b;
    sc_partbuf_init(&a, 1000000, 1 << 30, &pool);
    sc_partbuf_init(&b, 1000000, 1 << 30, &pool);
    struct rec *r = calloc(1, sizeof(*r));
    int64_t off = 0;
    while (a.slab_bytes < 12 * SC_SLAB_SIZE) {
        make(r, off++, &seed);
        struct sc_record v = view_of(r);
        sc_partbuf_push(&a, &v, 0);
    }
    sc_partbuf_clear(&a);
    ck_assert_uint_eq(pool.nfree, 3);
    ck_assert_int_le(a.slab_bytes, 4096);
    const struct sc_slab *kept[3];
    size_t i = 0;
    for (const struct sc_slab *s = pool.free; s; s = s->next)
        kept[i++] = s;
    /* b grows through its small slabs to full-size ones: those come from the pool */
    while (b.slab_bytes < 8 * SC_SLAB_SIZE) {
        make(r, off++, &seed);
        struct sc_record v = view_of(r);
        sc_partbuf_push(&b, &v, 0);
    }
    size_t reused = 0;
    for (const struct sc_slab *s = b.first; s; s = s->next)
        for (size_t k = 0; k < 3; k++)
            reused += s == kept[k];
    ck_assert_uint_eq(reused, 3);
    ck_assert_uint_eq(pool.nfree, 0);
    /* a record larger than a slab */
    struct sc_record big = view_of(r);
    char *huge = calloc(1, 3 * SC_SLAB_SIZE);
    big.value = huge;
    big.value_len = 3 * SC_SLAB_SIZE;
    big.offset = off++;
    sc_partbuf_push(&b, &big, 0);
    ck_assert_uint_ge(b.last->cap, 3 * SC_SLAB_SIZE);
    sc_partbuf_clear(&b);
    ck_assert_uint_le(pool.nfree, 3);
    for (const struct sc_slab *s = pool.free; s; s = s->next)
        ck_assert_uint_eq(s->cap + offsetof(struct sc_slab, data), SC_SLAB_SIZE);
    sc_partbuf_free(&a);
    sc_partbuf_free(&b);
    sc_slabpool_drain(&pool);
    free(huge);
    free(r);
}
END_TEST

START_TEST(test_batches_by_count_and_bytes)
{
    struct sc_partbuf b;
    sc_partbuf_init(&b, 3, 100, NULL);
    struct rec r;
    memset(&r, 0, sizeof(r));
    r.key_len = -1;
    bool full;
    ck_assert_uint_eq(sc_partbuf_next_batch(&b, 0, &full), 0);
    int sizes[] = {10, 10, 10, 10, 40, 40, 40, 50, 50, 150, 1, 99};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        r.offset = (int64_t)i;
        r.value_len = sizes[i];
        struct sc_record v = view_of(&r);
        sc_partbuf_push(&b, &v, 0);
    }
    ck_assert_uint_eq(sc_partbuf_next_batch(&b, 0, &full), 3); /* max_records */
    ck_assert(full);
    ck_assert_uint_eq(sc_partbuf_next_batch(&b, 3, &full), 3); /* 10 + 40 + 40 = 90 */
    ck_assert(full);
    ck_assert_uint_eq(sc_partbuf_next_batch(&b, 5, &full), 2); /* 40 + 40, the 50 would pass 100 */
    ck_assert(full);
    ck_assert_uint_eq(sc_partbuf_next_batch(&b, 7, &full), 2); /* 50 + 50 = exactly 100 */
    ck_assert(full);
    ck_assert_uint_eq(sc_partbuf_next_batch(&b, 9, &full), 1); /* 150 alone: too big, still goes */
    ck_assert(full);
    ck_assert_uint_eq(sc_partbuf_next_batch(&b, 10, &full), 2); /* 1 + 99 = 100 */
    ck_assert(full);
    ck_assert_uint_eq(sc_partbuf_next_batch(&b, 11, &full), 1); /* 99: not full, may wait */
    ck_assert(!full);
    ck_assert_uint_eq(sc_partbuf_next_batch(&b, 12, &full), 0);
    ck_assert(sc_partbuf_holds_two(&b)); /* 12 records >= 2 * 3 */
    ck_assert(!sc_partbuf_holds_one(&b));
    sc_partbuf_drop(&b, 10);
    ck_assert_int_eq(sc_partbuf_bytes(&b), 100);
    ck_assert(sc_partbuf_holds_one(&b));
    ck_assert(!sc_partbuf_holds_two(&b));
    sc_partbuf_free(&b);
}
END_TEST

/* The bisection against the spelled-out rule, on random records and limits. */
START_TEST(test_batches_match_the_reference)
{
    unsigned seed = 3;
    enum {
        N = 400
    };
    static struct rec recs[N];
    for (int round = 0; round < 200; round++) {
        size_t max_records = (size_t)(rand_r(&seed) % 50) + 1;
        int64_t max_bytes = rand_r(&seed) % 3000 + 1;
        struct sc_partbuf b;
        sc_partbuf_init(&b, max_records, max_bytes, NULL);
        size_t n = (size_t)(rand_r(&seed) % N) + 1;
        for (size_t i = 0; i < n; i++) {
            make(&recs[i], (int64_t)i, &seed);
            struct sc_record v = view_of(&recs[i]);
            sc_partbuf_push(&b, &v, 0);
        }
        /* Cut the whole buffer into batches, from an arbitrary first drop on. */
        size_t from = (size_t)rand_r(&seed) % n;
        sc_partbuf_drop(&b, from);
        size_t at = 0;
        while (at < b.len) {
            bool full, want_full;
            size_t got = sc_partbuf_next_batch(&b, at, &full);
            size_t want =
                reference_batch(recs + from + at, b.len - at, max_records, max_bytes, &want_full);
            ck_assert_msg(got == want && full == want_full,
                          "round %d: batch at %zu: got %zu%s, want %zu%s", round, at, got,
                          full ? " (full)" : "", want, want_full ? " (full)" : "");
            ck_assert_uint_gt(got, 0);
            at += got;
        }
        sc_partbuf_free(&b);
    }
}
END_TEST

/* A pending batch [first, last] is complete once a record at or past last is buffered, whatever
 * offsets are missing in between (the next owner counts and checks them: replay verification). */
START_TEST(test_pending_range_with_offset_gaps)
{
    struct sc_partbuf b;
    sc_partbuf_init(&b, 100, 1 << 20, NULL);
    struct rec r;
    memset(&r, 0, sizeof(r));
    r.key_len = r.value_len = -1;
    ck_assert_int_eq(sc_partbuf_count_upto(&b, 5), -1); /* nothing yet */
    int64_t offsets[] = {5, 7, 9, 30};
    for (size_t i = 0; i < 3; i++) {
        r.offset = offsets[i];
        struct sc_record v = view_of(&r);
        sc_partbuf_push(&b, &v, 0);
    }
    ck_assert_int_eq(sc_partbuf_count_upto(&b, 4), 0); /* before the first: none of them */
    ck_assert_int_eq(sc_partbuf_count_upto(&b, 5), 1);
    ck_assert_int_eq(sc_partbuf_count_upto(&b, 6), 1); /* 6 is a gap; 7 shows it is complete */
    ck_assert_int_eq(sc_partbuf_count_upto(&b, 8), 2);
    ck_assert_int_eq(sc_partbuf_count_upto(&b, 9), 3);
    ck_assert_int_eq(sc_partbuf_count_upto(&b, 20), -1); /* 10..20 may still come */
    r.offset = offsets[3];
    struct sc_record v = view_of(&r);
    sc_partbuf_push(&b, &v, 0);
    ck_assert_int_eq(sc_partbuf_count_upto(&b, 20), 3); /* 30 proves 10..20 do not exist */
    ck_assert_int_eq(sc_partbuf_count_upto(&b, 30), 4);
    sc_partbuf_free(&b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("partbuf");
    TCase *tc = tcase_create("partbuf");
    tcase_add_test(tc, test_records_come_back_byte_for_byte);
    tcase_add_test(tc, test_slabs_keep_records_intact);
    tcase_add_test(tc, test_memory_given_back);
    tcase_add_test(tc, test_pool_reuses_full_slabs);
    tcase_add_test(tc, test_batches_by_count_and_bytes);
    tcase_add_test(tc, test_batches_match_the_reference);
    tcase_add_test(tc, test_pending_range_with_offset_gaps);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
