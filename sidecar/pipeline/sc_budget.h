/*
 * sc_budget - the memory budget (memory.limit_mib): how much of it each
 * pipeline and worker may use for what, derived from the configuration
 * alone, so the consumer thread (librdkafka's properties) and each worker
 * (its buffers, its batch size) compute the same shares independently.
 *
 * NOTES
 * -----
 * What the memory of a draining sidecar is made of (measured with
 * heaptrack and /proc/PID/smaps, bench/): code, libraries and idle
 * threads, about 14 MiB; librdkafka's prefetched messages (a message costs
 * a few hundred bytes besides its payload) and the fetch responses in
 * flight; the records each worker has taken into its partitions' buffers
 * (slabs and an index entry per record, sc_partbuf.h); the sink's
 * scratch for the batch being written (an envelope or row encoding of
 * it, about three times its payload).  The budget covers the last three:
 *
 *     covered  = limit - SC_BUDGET_FIXED (the first part, not covered)
 *                      - what each sink type in use takes once (its
 *                        fixed_bytes: libcurl's 2.5 MiB for the HTTP sink)
 *     pipeline = covered x its workers / all pipelines' workers
 *       25 %  librdkafka: a quarter of it for the fetch response being
 *             parsed, which costs up to ~12 x its size on the wire once
 *             decompressed and parsed into messages, so fetch.max.bytes
 *             (and message.max.bytes with it) is a 48th of the share, at
 *             least 64 KiB; the rest split over the workers' queues
 *             (queued.max.messages.kbytes counts payload, so a third of a
 *             queue's share; queued.min.messages at 400 bytes a message,
 *             as measured for small records).  librdkafka decides to fetch
 *             a partition while its queue is below those limits, and what
 *             the response brings lands on top of them: hence the small
 *             fetches.
 *       50 %  the workers' buffers: a worker takes nothing more from its
 *             queue while its partitions' slabs and indexes hold this
 *             much, and cuts each partition's batches at half its part of
 *             it (sc_worker.c)
 *       10 %  slack: the spare slabs each worker keeps for its partitions
 *             to refill (an eighth of its buffer share), the unfilled end
 *             of each partition's last slab, the allocator's own
 *       15 %  the batch being written: batch.max_bytes is lowered to a
 *             third of a worker's share (and to a quarter of its buffer),
 *             batch.max_records to one record per 350 bytes of it
 *
 * What it cannot cover: the fixed part above and what grows with the
 * number of partitions (librdkafka's and the sidecar's per-partition
 * state, ~75 KiB each at 1,024 partitions: docs/benchmarks.md, "The scale
 * curve"),
 * and one record larger than the budget, which still goes through: it is
 * fetched (librdkafka returns a first record batch larger than its fetch
 * limits), buffered and written alone.  Properties set in
 * kafka.properties / kafka_properties win over the derived ones.
 */
#ifndef SC_BUDGET_H
#define SC_BUDGET_H

#include <stdbool.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "config/sc_config.h"

/* The part of the budget no setting bounds: code, libraries, idle threads (measured ~14 MiB). */
#define SC_BUDGET_FIXED (14LL << 20)

struct sc_budget {
    int64_t limit;    /* memory.limit_mib in bytes */
    int64_t pipeline; /* this pipeline's share of the covered part */
    /* librdkafka */
    int64_t fetch_max_bytes;
    int64_t partition_fetch_bytes;
    int64_t queued_kbytes;   /* per worker queue */
    int64_t queued_messages; /* per worker queue */
    /* each worker */
    int64_t worker_buffer;   /* records buffered in its partitions, bytes of memory */
    int64_t batch_max_bytes; /* batch.max_bytes, lowered to fit */
    int batch_max_records;   /* batch.max_records, lowered to fit */
};

/*
 * The feedback that keeps the process within the limit whatever the
 * estimates above missed (per-partition state, libpq's buffers, allocator
 * slack): each worker reads the process's resident memory every
 * SC_BUDGET_SAMPLE_MS and scales its buffer share down while the process is
 * above 95 % of the limit, and back up once it is well below.
 */
#define SC_BUDGET_SAMPLE_MS 100

struct sc_budget_feedback {
    int64_t next_sample_ms;
    int permille; /* the share of worker_buffer in force, 100..1000 */
};

void sc_budget_feedback_init(struct sc_budget_feedback *f);
/* Samples the resident memory when due and returns worker_buffer scaled. */
int64_t sc_budget_worker_buffer(const struct sc_budget *b, struct sc_budget_feedback *f,
                                int64_t now_ms);
/* The process's resident memory in bytes, -1 if unknown. */
int64_t sc_budget_rss(void);

/* What the budget does not cover: SC_BUDGET_FIXED and each sink type's fixed_bytes. */
int64_t sc_budget_fixed(const struct sc_config *cfg);
/* The shares of pipeline pc in cfg's budget. */
void sc_budget_derive(const struct sc_config *cfg, const struct sc_pipeline_conf *pc,
                      struct sc_budget *out);

/*
 * After the user's properties (which win over the budget's): librdkafka refuses a
 * fetch.max.bytes below message.max.bytes, and the budget lowers both.  A user who set one
 * of them gets the other raised (fetch.max.bytes) or lowered (message.max.bytes) to match;
 * when the user set both, librdkafka reports the conflict.  0, or -1 with err.
 */
int sc_budget_reconcile(rd_kafka_conf_t *conf, bool user_fetch, bool user_message, char *err,
                        size_t errsize);

/* Below this memory.limit_mib all threads share one malloc arena (sc_budget_malloc_init). */
#define SC_BUDGET_ONE_ARENA_MIB 64

/*
 * Sets glibc's malloc up for the budget, before any thread starts: large
 * freed blocks go back to the system at once (M_MMAP_THRESHOLD), and under
 * a budget below SC_BUDGET_ONE_ARENA_MIB all threads share one arena
 * (M_ARENA_MAX) unless the user set MALLOC_ARENA_MAX or the glibc tunable.
 */
void sc_budget_malloc_init(const struct sc_config *cfg);

/*
 * Applies the budget for pipeline pc: sets the derived librdkafka
 * properties on conf (before the user's properties, which override them)
 * and logs the shares.  0, or -1 with err.
 */
int sc_budget_apply(const struct sc_config *cfg, const struct sc_pipeline_conf *pc,
                    rd_kafka_conf_t *conf, char *err, size_t errsize);

#endif
