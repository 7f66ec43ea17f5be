/*
 * sc_partbuf.c - a partition's buffered records and batch cutting (see
 * sc_partbuf.h).
 */
#include "pipeline/sc_partbuf.h"

#include <endian.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_util.h"

/* First allocations; an emptied buffer keeps at most these (thousands of idle partitions
 * must not each hold a batch's worth of memory). */
#define ARENA_MIN 4096
#define RECS_MIN  32

void sc_partbuf_init(struct sc_partbuf *b, size_t max_records, int64_t max_bytes)
{
    memset(b, 0, sizeof(*b));
    b->max_records = max_records;
    b->max_bytes = max_bytes;
}

void sc_partbuf_free(struct sc_partbuf *b)
{
    sc_partbuf_clear(b);
    free(b->recs);
    free(b->arena);
    b->recs = NULL;
    b->arena = NULL;
    b->cap = b->arena_cap = 0;
}

/*
 * Room for n more arena bytes at its end.  Dropped records leave space at
 * the front, reclaimed by moving the live bytes down; the arena grows (by a
 * quarter) only when they would fill more than four fifths of it, so it
 * stays within about 1.6x the most ever buffered, and each byte is moved
 * at most four times on average.  When what is live fills an eighth of it
 * or less, most of it is given back.
 */
static char *arena_reserve(struct sc_partbuf *b, size_t n)
{
    if (b->arena_cap - b->arena_len >= n)
        return b->arena + b->arena_len;
    size_t live = b->arena_len - b->arena_head;
    if (b->arena_head > 0) {
        memmove(b->arena, b->arena + b->arena_head, live);
        for (size_t i = 0; i < b->len; i++)
            b->recs[b->head + i].at -= b->arena_head;
        b->arena_len = live;
        b->arena_head = 0;
    }
    if ((live + n) * 5 > b->arena_cap * 4) {
        size_t cap = b->arena_cap ? b->arena_cap : ARENA_MIN;
        while ((live + n) * 5 > cap * 4)
            cap += cap / 4;
        b->arena = sc_xrealloc(b->arena, cap);
        b->arena_cap = cap;
    } else if (b->arena_cap > ARENA_MIN && (live + n) * 8 < b->arena_cap) {
        /* It held far more once (a large batch, a large record): give most of it back. */
        size_t cap = (live + n) * 2 > ARENA_MIN ? (live + n) * 2 : ARENA_MIN;
        b->arena = sc_xrealloc(b->arena, cap);
        b->arena_cap = cap;
    }
    return b->arena + b->arena_len;
}

void sc_partbuf_push(struct sc_partbuf *b, const struct sc_record *r, int64_t now)
{
    if (b->head + b->len == b->cap) {
        if (b->head > 0) {
            memmove(b->recs, b->recs + b->head, b->len * sizeof(*b->recs));
            b->head = 0;
        }
        /* Like the arena: a quarter more when over four fifths full, so moves stay rare. */
        if (b->len * 5 >= b->cap * 4) {
            b->cap = b->cap ? b->cap + b->cap / 4 : RECS_MIN;
            b->recs = sc_xrealloc(b->recs, b->cap * sizeof(*b->recs));
        } else if (b->cap > RECS_MIN && b->len * 8 < b->cap) {
            b->cap = b->len * 2 > RECS_MIN ? b->len * 2 : RECS_MIN;
            b->recs = sc_xrealloc(b->recs, b->cap * sizeof(*b->recs));
        }
    }
    size_t names_len = 0;
    for (size_t j = 0; j < r->nheaders; j++)
        names_len += strlen(r->headers[j].name) + 1;
    size_t image_len = sc_record_image_size(r);
    char *o = arena_reserve(b, image_len + names_len);
    sc_record_image_write(o, r);
    o += image_len;
    for (size_t j = 0; j < r->nheaders; j++) {
        size_t l = strlen(r->headers[j].name) + 1;
        memcpy(o, r->headers[j].name, l);
        o += l;
    }
    struct sc_buffered *e = &b->recs[b->head + b->len];
    *e = (struct sc_buffered){
        .offset = r->offset,
        .arrival_ms = now,
        .bytes_before = b->pushed_bytes,
        .at = b->arena_len,
        .image_len = (uint32_t)image_len,
        .names_len = (uint32_t)names_len,
    };
    b->arena_len += image_len + names_len;
    b->len++;
    /* batch.max_bytes counts keys and values */
    b->pushed_bytes += (int64_t)(r->key ? r->key_len : 0) + (int64_t)(r->value ? r->value_len : 0);
}

void sc_partbuf_drop(struct sc_partbuf *b, size_t n)
{
    if (n > b->len)
        n = b->len;
    b->head += n;
    b->len -= n;
    if (b->len == 0) {
        b->head = 0;
        b->arena_head = b->arena_len = 0;
        if (b->arena_cap > ARENA_MIN) {
            free(b->arena);
            b->arena = NULL;
            b->arena_cap = 0;
        }
        if (b->cap > RECS_MIN) {
            free(b->recs);
            b->recs = NULL;
            b->cap = 0;
        }
    } else {
        b->arena_head = sc_partbuf_at(b, 0)->at;
    }
}

void sc_partbuf_clear(struct sc_partbuf *b)
{
    sc_partbuf_drop(b, b->len);
}

/*
 * Called for every partition on every turn of the worker's loop, with up to
 * two batches buffered: the byte sums come from the records' running
 * totals, and the record that fills a batch is found by bisection.
 */
size_t sc_partbuf_next_batch(const struct sc_partbuf *b, size_t from, bool *full)
{
    *full = false;
    if (from >= b->len)
        return 0;
    size_t most = b->len - from < b->max_records ? b->len - from : b->max_records;
    int64_t base = sc_partbuf_bytes_upto(b, from);
    if (sc_partbuf_bytes_upto(b, from + most) - base < b->max_bytes) {
        *full = most == b->max_records;
        return most;
    }
    *full = true;
    size_t lo = 1, hi = most; /* the first n whose bytes reach max_bytes is in [lo, hi] */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sc_partbuf_bytes_upto(b, from + mid) - base >= b->max_bytes)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo == 1 || sc_partbuf_bytes_upto(b, from + lo) - base == b->max_bytes ? lo : lo - 1;
}

bool sc_partbuf_holds_two(const struct sc_partbuf *b)
{
    return b->len >= 2 * b->max_records || sc_partbuf_bytes(b) >= 2 * b->max_bytes;
}

bool sc_partbuf_holds_one(const struct sc_partbuf *b)
{
    return b->len <= b->max_records && sc_partbuf_bytes(b) <= b->max_bytes;
}

ptrdiff_t sc_partbuf_count_upto(const struct sc_partbuf *b, int64_t last)
{
    size_t n = 0;
    while (n < b->len && sc_partbuf_at(b, n)->offset <= last)
        n++;
    if (n == b->len && (n == 0 || sc_partbuf_at(b, n - 1)->offset < last))
        return -1; /* not complete yet */
    return (ptrdiff_t)n;
}

static int64_t get_le64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return (int64_t)le64toh(v);
}

/* Image layout (sc_record_image_write()): offset, timestamp, key length (-1 = null), key,
 * value length (-1 = null), value, header count, then each header's name and value. */
#define IMG_TIMESTAMP 8
#define IMG_KEY_LEN   16

/* Where the image's value length is (after the key). */
static size_t img_value_len_at(const char *img)
{
    int64_t klen = get_le64(img + IMG_KEY_LEN);
    return IMG_KEY_LEN + 8 + (size_t)(klen > 0 ? klen : 0);
}

/* Where the image's header count is (after the value). */
static size_t img_nheaders_at(const char *img)
{
    size_t at = img_value_len_at(img);
    int64_t vlen = get_le64(img + at);
    return at + 8 + (size_t)(vlen > 0 ? vlen : 0);
}

int64_t sc_partbuf_timestamp(const struct sc_partbuf *b, size_t i)
{
    return get_le64(b->arena + sc_partbuf_at(b, i)->at + IMG_TIMESTAMP);
}

size_t sc_partbuf_nheaders(const struct sc_partbuf *b, size_t from, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const char *img = b->arena + sc_partbuf_at(b, from + i)->at;
        total += (size_t)get_le64(img + img_nheaders_at(img));
    }
    return total;
}

void sc_partbuf_views(const struct sc_partbuf *b, size_t from, size_t n, const char *topic,
                      int32_t partition, struct sc_record *out, struct sc_header *hdrs)
{
    size_t nh = 0;
    for (size_t i = 0; i < n; i++) {
        const struct sc_buffered *e = sc_partbuf_at(b, from + i);
        const char *img = b->arena + e->at;
        struct sc_record *r = &out[i];
        r->topic = topic;
        r->partition = partition;
        r->offset = e->offset;
        r->timestamp = get_le64(img + IMG_TIMESTAMP);
        int64_t klen = get_le64(img + IMG_KEY_LEN);
        size_t pos = IMG_KEY_LEN + 8;
        r->key = klen >= 0 ? img + pos : NULL;
        r->key_len = klen > 0 ? (size_t)klen : 0;
        pos += r->key_len;
        int64_t vlen = get_le64(img + pos);
        pos += 8;
        r->value = vlen >= 0 ? img + pos : NULL;
        r->value_len = vlen > 0 ? (size_t)vlen : 0;
        pos += r->value_len;
        r->nheaders = (size_t)get_le64(img + pos);
        pos += 8;
        r->headers = hdrs + nh;
        r->key_json = r->value_json = NULL; /* set by the worker's decode_batch() */
        r->key_json_len = r->value_json_len = 0;
        const char *name = img + e->image_len;
        for (size_t j = 0; j < r->nheaders; j++) {
            pos += 8 + (size_t)get_le64(img + pos); /* the name, read from its copy below */
            int64_t hlen = get_le64(img + pos);
            pos += 8;
            hdrs[nh++] = (struct sc_header){.name = name,
                                            .value = hlen >= 0 ? img + pos : NULL,
                                            .len = hlen > 0 ? (size_t)hlen : 0};
            pos += hlen > 0 ? (size_t)hlen : 0;
            name += strlen(name) + 1;
        }
    }
}

uint32_t sc_partbuf_checksum(const struct sc_partbuf *b, size_t from, size_t n)
{
    uint32_t crc = 0;
    const char *run = NULL;
    size_t run_len = 0;
    for (size_t i = 0; i < n; i++) {
        const struct sc_buffered *e = sc_partbuf_at(b, from + i);
        const char *img = b->arena + e->at;
        if (run && run + run_len == img) {
            run_len += e->image_len;
            continue;
        }
        if (run)
            crc = sc_crc32(crc, run, run_len);
        run = img;
        run_len = e->image_len;
    }
    if (run)
        crc = sc_crc32(crc, run, run_len);
    return crc;
}
