/*
 * sc_partbuf.c - a partition's buffered records and batch cutting (see
 * sc_partbuf.h).
 */
#include "pipeline/sc_partbuf.h"

#include <endian.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_util.h"

/* A partition's first slab; an emptied buffer keeps at most one of these and an index of
 * RECS_MIN entries (thousands of idle partitions must not each hold a batch's worth). */
#define SLAB_MIN 4096
#define RECS_MIN 32

#define SLAB_HEADER offsetof(struct sc_slab, data)

void sc_partbuf_init(struct sc_partbuf *b, size_t max_records, int64_t max_bytes,
                     struct sc_slabpool *pool)
{
    memset(b, 0, sizeof(*b));
    b->max_records = max_records;
    b->max_bytes = max_bytes;
    b->pool = pool;
    b->slab_next = SLAB_MIN;
}

static size_t slab_size(const struct sc_slab *s)
{
    return SLAB_HEADER + s->cap;
}

void sc_slabpool_drain(struct sc_slabpool *pool)
{
    while (pool->free) {
        struct sc_slab *s = pool->free;
        pool->free = s->next;
        free(s);
    }
    pool->nfree = 0;
}

static void slab_release(struct sc_partbuf *b, struct sc_slab *s)
{
    b->slab_bytes -= (int64_t)slab_size(s);
    struct sc_slabpool *pool = b->pool;
    if (pool && slab_size(s) == SC_SLAB_SIZE && pool->nfree < pool->max_free) {
        s->next = pool->free;
        pool->free = s;
        pool->nfree++;
    } else {
        free(s);
    }
}

/* Gives back the slabs before the one that holds the first buffered record; when nothing is
 * buffered, all of them but keep (NULL: all). */
static void release_front(struct sc_partbuf *b, const struct sc_slab *keep)
{
    const char *img = b->len > 0 ? sc_partbuf_at(b, 0)->img : NULL;
    while (b->first && b->first != keep &&
           (!img || img < b->first->data || img >= b->first->data + b->first->len)) {
        struct sc_slab *s = b->first;
        b->first = s->next;
        if (!b->first)
            b->last = NULL;
        slab_release(b, s);
    }
}

void sc_partbuf_free(struct sc_partbuf *b)
{
    sc_partbuf_clear(b);
    if (b->first)
        slab_release(b, b->first);
    b->first = b->last = NULL;
    free(b->recs);
    b->recs = NULL;
    b->cap = 0;
}

/*
 * Room for n more bytes after the newest record: at the end of the last
 * slab, or in a new one.  A new slab is twice the size of the one before up
 * to SC_SLAB_SIZE (a record that needs more gets a slab of its own size), so
 * a partition that buffers a few records holds a few KiB, and one that
 * drains a backlog fills full-size slabs from the worker's pool.
 */
static char *slab_reserve(struct sc_partbuf *b, size_t n)
{
    struct sc_slab *s = b->last;
    if (s && s->cap - s->len >= n)
        return s->data + s->len;
    size_t size = b->slab_next;
    while (size < SC_SLAB_SIZE && size - SLAB_HEADER < n)
        size *= 2;
    if (size - SLAB_HEADER < n)
        size = SLAB_HEADER + n;
    struct sc_slabpool *pool = b->pool;
    if (pool && size == SC_SLAB_SIZE && pool->free) {
        s = pool->free;
        pool->free = s->next;
        pool->nfree--;
    } else {
        s = sc_xmalloc(size);
    }
    s->next = NULL;
    s->cap = size - SLAB_HEADER;
    s->len = 0;
    b->slab_bytes += (int64_t)size;
    if (b->last)
        b->last->next = s;
    else
        b->first = s;
    b->last = s;
    b->slab_next = size * 2 < SC_SLAB_SIZE ? size * 2 : SC_SLAB_SIZE;
    return s->data;
}

void sc_partbuf_push(struct sc_partbuf *b, const struct sc_record *r, int64_t now)
{
    if (b->head + b->len == b->cap) {
        if (b->head > 0) {
            memmove(b->recs, b->recs + b->head, b->len * sizeof(*b->recs));
            b->head = 0;
        }
        /* A quarter more when over four fifths full, so moves stay rare. */
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
    char *img = slab_reserve(b, image_len + names_len), *o = img;
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
        .img = img,
        .image_len = (uint32_t)image_len,
        .names_len = (uint32_t)names_len,
    };
    b->last->len += image_len + names_len;
    b->live_bytes += (int64_t)(image_len + names_len);
    b->len++;
    /* batch.max_bytes counts keys and values */
    b->pushed_bytes += (int64_t)(r->key ? r->key_len : 0) + (int64_t)(r->value ? r->value_len : 0);
}

void sc_partbuf_drop(struct sc_partbuf *b, size_t n)
{
    if (n > b->len)
        n = b->len;
    for (size_t i = 0; i < n; i++) {
        const struct sc_buffered *e = sc_partbuf_at(b, i);
        b->live_bytes -= (int64_t)(e->image_len + e->names_len);
    }
    b->head += n;
    b->len -= n;
    if (b->len > 0) {
        release_front(b, NULL);
        return;
    }
    b->head = 0;
    /* Emptied: a small last slab is kept, and the next starts smaller (a partition that went
     * quiet gets back to small slabs). */
    struct sc_slab *keep = b->last && slab_size(b->last) <= SLAB_MIN ? b->last : NULL;
    release_front(b, keep);
    if (keep)
        keep->len = 0;
    b->slab_next = b->slab_next / 2 > SLAB_MIN ? b->slab_next / 2 : SLAB_MIN;
    if (b->cap > RECS_MIN) {
        free(b->recs);
        b->recs = NULL;
        b->cap = 0;
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
    return get_le64(sc_partbuf_at(b, i)->img + IMG_TIMESTAMP);
}

size_t sc_partbuf_nheaders(const struct sc_partbuf *b, size_t from, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const char *img = sc_partbuf_at(b, from + i)->img;
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
        const char *img = e->img;
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
        const char *img = e->img;
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
