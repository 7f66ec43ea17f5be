/*
 * sc_partbuf - one partition's buffered records and how they are cut into
 * batches: the worker (sc_worker.c) copies each record here when it takes
 * it from librdkafka, cuts the next batch by batch.max_records /
 * batch.max_bytes, hands the sink views of a batch's records, and drops a
 * batch once it is committed.  No Kafka, no PostgreSQL: unit-tested alone
 * (tests/unit/check_partbuf.c), offset gaps included.
 *
 * A record is kept as its checksum image (record/sc_envelope.h:
 * sc_record_image_write()) in the partition's slabs, so a batch's CRC is a
 * crc32 pass over each run of contiguous bytes, and the key, value and
 * header values of a batch's sc_record views point into the slabs; header
 * names follow the image, NUL-terminated.  Holding librdkafka's messages
 * instead cost several hundred bytes of bookkeeping per record and pinned
 * every decompressed fetch buffer they came from: draining a backlog kept
 * about twice the data set's own size resident.
 *
 * The slabs are filled in order and freed from the front as batches are
 * dropped, so no byte is ever moved.  Full-size slabs go back to the
 * worker's pool (struct sc_slabpool) for its next partition to fill: a
 * single growing arena per partition, moved down, reallocated and given
 * back to the kernel as it emptied, faulted fresh pages in for most of what
 * it buffered and cost the HTTP sink about a quarter of its CPU (bench/).
 *
 * @locality the worker thread that owns the partition.
 */
#ifndef SC_PARTBUF_H
#define SC_PARTBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "record/sc_envelope.h"

/*
 * A buffered record: where its image is, and what the batch cutting needs
 * without reading it.  Its timestamp, key and value lengths and header
 * count are read from the image (40 bytes an entry instead of 64: with
 * records of ~90 bytes, an eighth of what a partition holds).
 */
struct sc_buffered {
    int64_t offset;
    int64_t arrival_ms;
    int64_t bytes_before; /* pushed_bytes when it was buffered (see sc_partbuf_bytes_upto()) */
    char *img;            /* the image: img[0 .. image_len), in one of the slabs */
    uint32_t image_len;   /* then names_len bytes of NUL-terminated header names */
    uint32_t names_len;
};

/* Images of consecutive records: data[0 .. len) of cap bytes. */
struct sc_slab {
    struct sc_slab *next;
    size_t cap, len;
    char data[];
};

/* The size of a full slab, header included (the largest but for records that do not fit). */
#define SC_SLAB_SIZE (64 * 1024)

/*
 * Full-size slabs that no partition holds any more, kept for the next one
 * that needs a slab (at most max_free of them; more are freed).  Shared by
 * one worker's partitions: not locked.
 */
struct sc_slabpool {
    struct sc_slab *free;
    size_t nfree, max_free;
};

/* Frees the slabs in the pool. */
void sc_slabpool_drain(struct sc_slabpool *pool);

struct sc_partbuf {
    /* The batch limits (batch.max_records, batch.max_bytes). */
    size_t max_records;
    int64_t max_bytes;

    struct sc_buffered *recs; /* recs[head .. head+len) */
    size_t head, len, cap;
    /* Their bytes, oldest first; the first record's image is in first. */
    struct sc_slab *first, *last;
    size_t slab_next;         /* the size of the next slab to take */
    int64_t slab_bytes;       /* the slabs' sizes, headers included */
    int64_t live_bytes;       /* the buffered records' images and header names */
    struct sc_slabpool *pool; /* where full-size slabs come from and go (NULL: malloc) */
    int64_t pushed_bytes;     /* batch.max_bytes' measure of every record ever buffered */
};

/* pool: the worker's (NULL: every slab is allocated and freed). */
void sc_partbuf_init(struct sc_partbuf *b, size_t max_records, int64_t max_bytes,
                     struct sc_slabpool *pool);
/* Frees the records and their memory (b can be used again). */
void sc_partbuf_free(struct sc_partbuf *b);

/* Copies r (its key, value and headers) in, at the end; arrival time now (ms). */
void sc_partbuf_push(struct sc_partbuf *b, const struct sc_record *r, int64_t now);
/* Drops the first n records (a committed batch), or all of them. */
void sc_partbuf_drop(struct sc_partbuf *b, size_t n);
void sc_partbuf_clear(struct sc_partbuf *b);

/* The i-th buffered record (0 = the oldest). */
static inline const struct sc_buffered *sc_partbuf_at(const struct sc_partbuf *b, size_t i)
{
    return &b->recs[b->head + i];
}

/* batch.max_bytes' measure of buffered records [0, i); i may be len. */
static inline int64_t sc_partbuf_bytes_upto(const struct sc_partbuf *b, size_t i)
{
    int64_t before = i < b->len ? sc_partbuf_at(b, i)->bytes_before : b->pushed_bytes;
    return before - (b->len > 0 ? sc_partbuf_at(b, 0)->bytes_before : b->pushed_bytes);
}

/*
 * The memory the buffer holds (its slabs and index, allocated): what the
 * worker's share of the memory budget bounds.  The slabs hold what is
 * buffered plus the unfilled end of the last one (a partition's first slabs
 * are small: 4 KiB, then twice the last up to SC_SLAB_SIZE).  The index
 * grows by a quarter at a time and is refilled to four fifths before it
 * grows; one that held far more than it does gives most of it back as it
 * drains.  An emptied buffer keeps at most a small first slab and index.
 */
static inline int64_t sc_partbuf_mem(const struct sc_partbuf *b)
{
    return b->slab_bytes + (int64_t)(b->cap * sizeof(struct sc_buffered));
}

/* The bytes the buffered records take (their images and index entries). */
static inline int64_t sc_partbuf_live(const struct sc_partbuf *b)
{
    return b->live_bytes + (int64_t)(b->len * sizeof(struct sc_buffered));
}

/* batch.max_bytes' measure of every buffered record. */
static inline int64_t sc_partbuf_bytes(const struct sc_partbuf *b)
{
    return sc_partbuf_bytes_upto(b, b->len);
}

/*
 * The next batch, from record index from: how many records, and whether
 * that is full.  A batch is full at max_records, or at the first record
 * that brings it to max_bytes (that record left out if it would go beyond,
 * unless it is the only one, so a record larger than max_bytes still goes,
 * alone).  0 when nothing is buffered from there.
 */
size_t sc_partbuf_next_batch(const struct sc_partbuf *b, size_t from, bool *full);

/* Whether two batches or more are buffered (a full buffer takes nothing more for now). */
bool sc_partbuf_holds_two(const struct sc_partbuf *b);
/* Whether at most one batch is buffered. */
bool sc_partbuf_holds_one(const struct sc_partbuf *b);

/*
 * How many buffered records have an offset <= last, or -1 while the newest
 * buffered offset is below last (more may come).  Offsets may have gaps
 * (compacted topics, transaction markers): the batch [first, last] pended
 * earlier is complete once a record at or past last is buffered.
 */
ptrdiff_t sc_partbuf_count_upto(const struct sc_partbuf *b, int64_t last);

/* The Kafka timestamp of the i-th buffered record (ms since the epoch; < 0 = none). */
int64_t sc_partbuf_timestamp(const struct sc_partbuf *b, size_t i);

/* The headers of records [from, from+n): what sc_partbuf_views() needs in hdrs. */
size_t sc_partbuf_nheaders(const struct sc_partbuf *b, size_t from, size_t n);
/*
 * Fills out[0..n) with views of records [from, from+n) of topic/partition;
 * their headers go to hdrs (room for sc_partbuf_nheaders()).  The views
 * point into the buffer: valid until those records are dropped.
 */
void sc_partbuf_views(const struct sc_partbuf *b, size_t from, size_t n, const char *topic,
                      int32_t partition, struct sc_record *out, struct sc_header *hdrs);

/*
 * The batch checksum of records [from, from+n): sc_record_checksum() folded
 * over them (computed as one CRC-32 per run of adjacent images).
 */
uint32_t sc_partbuf_checksum(const struct sc_partbuf *b, size_t from, size_t n);

#endif
