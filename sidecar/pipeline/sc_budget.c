/*
 * sc_budget.c - the memory budget's shares (see the NOTES in sc_budget.h).
 */
#include "pipeline/sc_budget.h"

#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/sc_log.h"
#include "sinks/sc_sink.h"

#define MiB (1LL << 20)

/* The smallest shares that still work (a tiny budget gives small batches, not a stall). */
#define MIN_COVERED (8 * MiB)
#define MIN_QUEUE   (256LL << 10)
#define MIN_BUFFER  (512LL << 10)

#define MMAP_THRESHOLD (128 * 1024)

/* Measured per record besides its payload (bench/, records of ~90 bytes): a message queued
 * in librdkafka, and a record of the batch being written (the postgres sink's row and
 * encoding, the file and http sinks' envelope). */
#define QUEUED_MESSAGE_COST 400
#define BATCH_RECORD_COST   350

/* What a fetch response costs in memory per byte on the wire, with room to spare.  A
 * response is parsed whole into librdkafka's queues, and fetch.max.bytes counts compressed
 * bytes: a message costs its payload plus QUEUED_MESSAGE_COST once parsed.  Measured with
 * the bench's records (lz4, ~90-byte values): ~60 bytes on the wire, ~490 in memory, 8x;
 * data that compresses better costs more.  With fetch.max.bytes at a quarter of the share
 * instead, a worker's queue held up to 46,000 messages (20 MiB) over its limits and the
 * peak RSS went to 48-61 MiB under a 32 MiB budget (docs/benchmarks.md, small fetches). */
#define RESPONSE_EXPANSION 12

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

int64_t sc_budget_fixed(const struct sc_config *cfg)
{
    int64_t fixed = SC_BUDGET_FIXED;
    for (size_t i = 0; i < cfg->npipelines; i++) {
        const struct sc_sink_class *type = sc_sink_class_of(&cfg->pipelines[i].sink);
        bool seen = false; /* once per sink type, however many pipelines use it */
        for (size_t j = 0; j < i && !seen; j++)
            seen = sc_sink_class_of(&cfg->pipelines[j].sink) == type;
        if (type && !seen)
            fixed += type->fixed_bytes;
    }
    return fixed;
}

void sc_budget_derive(const struct sc_config *cfg, const struct sc_pipeline_conf *pc,
                      struct sc_budget *out)
{
    int64_t workers = 0;
    for (size_t i = 0; i < cfg->npipelines; i++)
        workers += cfg->pipelines[i].workers;
    int64_t w = pc->workers > 0 ? pc->workers : 1;
    if (workers < w)
        workers = w;
    out->limit = (int64_t)cfg->memory.limit_mib * MiB;
    int64_t covered = out->limit - sc_budget_fixed(cfg);
    if (covered < MIN_COVERED)
        covered = MIN_COVERED;
    out->pipeline = covered * w / workers;

    int64_t kafka = out->pipeline * 25 / 100;
    /* A quarter of it for the response being parsed, in memory (message.max.bytes is
     * lowered with it: librdkafka wants fetch.max.bytes at least that). */
    out->fetch_max_bytes = clamp64(kafka / 4 / RESPONSE_EXPANSION, 65536, 52428800);
    int64_t queue = (kafka - kafka / 4) / w;
    if (queue < MIN_QUEUE)
        queue = MIN_QUEUE;
    out->queued_kbytes = clamp64(queue / 3 / 1024, 64, 2097151);
    out->queued_messages = clamp64(queue / QUEUED_MESSAGE_COST, 1000, 10000000);
    out->partition_fetch_bytes = clamp64(out->fetch_max_bytes / 2, 65536, 1048576);

    out->worker_buffer = out->pipeline * 50 / 100 / w;
    if (out->worker_buffer < MIN_BUFFER)
        out->worker_buffer = MIN_BUFFER;
    int64_t scratch = out->pipeline * 15 / 100 / w;
    int64_t batch = scratch / 3 < out->worker_buffer / 4 ? scratch / 3 : out->worker_buffer / 4;
    out->batch_max_bytes = clamp64(batch, 1024, pc->batch.max_bytes);
    out->batch_max_records = (int)clamp64(scratch / BATCH_RECORD_COST, 16, pc->batch.max_records);
}

void sc_budget_feedback_init(struct sc_budget_feedback *f)
{
    f->next_sample_ms = 0;
    f->permille = 1000;
}

int64_t sc_budget_rss(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return -1;
    long long size = 0, resident = -1;
    if (fscanf(f, "%lld %lld", &size, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : (int64_t)resident * sysconf(_SC_PAGESIZE);
}

int64_t sc_budget_worker_buffer(const struct sc_budget *b, struct sc_budget_feedback *f,
                                int64_t now_ms)
{
    if (now_ms >= f->next_sample_ms) {
        f->next_sample_ms = now_ms + SC_BUDGET_SAMPLE_MS;
        /* Aim a little below the limit: the correction comes after the fact. */
        int64_t rss = sc_budget_rss(), target = b->limit - b->limit / 20;
        if (rss > target) {
            /* Every worker gives back its part of the excess, 5 % of its share at least. */
            int cut = (int)((rss - target) * 1000 / (b->pipeline > 0 ? b->pipeline : 1));
            f->permille -= cut > 50 ? cut : 50;
        } else if (rss >= 0 && rss < target - b->limit / 10) {
            f->permille += 20;
        }
        f->permille = f->permille < 100 ? 100 : f->permille > 1000 ? 1000 : f->permille;
    }
    return b->worker_buffer * f->permille / 1000;
}

static int set_i64(rd_kafka_conf_t *conf, const char *k, int64_t v, char *err, size_t errsize)
{
    char val[32], e[256];
    snprintf(val, sizeof(val), "%" PRId64, v);
    if (rd_kafka_conf_set(conf, k, val, e, sizeof(e)) != RD_KAFKA_CONF_OK) {
        snprintf(err, errsize, "kafka property \"%s\": %s", k, e);
        return -1;
    }
    return 0;
}

static int64_t get_i64(rd_kafka_conf_t *conf, const char *k)
{
    char v[32];
    size_t n = sizeof(v);
    return rd_kafka_conf_get(conf, k, v, &n) == RD_KAFKA_CONF_OK ? strtoll(v, NULL, 10) : -1;
}

int sc_budget_reconcile(rd_kafka_conf_t *conf, bool user_fetch, bool user_message, char *err,
                        size_t errsize)
{
    int64_t fetch = get_i64(conf, "fetch.max.bytes"), message = get_i64(conf, "message.max.bytes");
    if (fetch < 0 || message < 0 || fetch >= message)
        return 0;
    if (!user_fetch)
        return set_i64(conf, "fetch.max.bytes", message, err, errsize);
    if (!user_message)
        return set_i64(conf, "message.max.bytes", fetch < 1000 ? 1000 : fetch, err, errsize);
    return 0; /* both the user's: librdkafka says what is wrong with them */
}

void sc_budget_malloc_init(const struct sc_config *cfg)
{
    /* glibc serves blocks from this size on by mmap and unmaps them when freed.  Left to
     * itself it raises the threshold to the largest block freed so far (up to 32 MiB), after
     * which the partitions' arenas and librdkafka's fetch buffers come from the heap and
     * their memory stays resident when they shrink or go: measured 70 -> 61 MiB draining a
     * backlog at the same speed (bench/). */
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    /* Under a small budget, one malloc arena for all threads.  glibc gives each new thread an
     * arena of its own (up to 8 per CPU), and what one arena has freed the others cannot
     * use: the http sink drained 2M records under 32 MiB at 33.8-35.1 MiB, and at 32.2-32.9
     * with one arena, as fast.  At 64 MiB one arena saved 4-7 MiB, but the http sink drained
     * 0.90-0.94 x as fast at ~12 % more CPU (2 CPUs; docs/benchmarks.md#malloc-arenas).  The
     * user's MALLOC_ARENA_MAX or glibc.malloc.arena_max wins: glibc has read it already. */
    const char *tunables = getenv("GLIBC_TUNABLES");
    if (cfg->memory.limit_mib < SC_BUDGET_ONE_ARENA_MIB && !getenv("MALLOC_ARENA_MAX") &&
        !(tunables && strstr(tunables, "glibc.malloc.arena_max")))
        mallopt(M_ARENA_MAX, 1);
}

int sc_budget_apply(const struct sc_config *cfg, const struct sc_pipeline_conf *pc,
                    rd_kafka_conf_t *conf, char *err, size_t errsize)
{
    struct sc_budget b;
    sc_budget_derive(cfg, pc, &b);
    if (set_i64(conf, "queued.max.messages.kbytes", b.queued_kbytes, err, errsize) ||
        set_i64(conf, "queued.min.messages", b.queued_messages, err, errsize) ||
        set_i64(conf, "fetch.max.bytes", b.fetch_max_bytes, err, errsize) ||
        set_i64(conf, "message.max.bytes", b.fetch_max_bytes, err, errsize) ||
        set_i64(conf, "max.partition.fetch.bytes", b.partition_fetch_bytes, err, errsize))
        return -1;
    struct sc_log_fields f = {.pipeline = pc->name, .partition = -1};
    sc_info(&f,
            "memory budget %d MiB (%" PRId64 " KiB for this pipeline): librdkafka "
            "fetch.max.bytes %" PRId64 ", per worker queue %" PRId64 " KiB / %" PRId64
            " messages; %" PRId64 " KiB of buffered records per worker; batches up to %d "
            "records / %" PRId64 " bytes",
            cfg->memory.limit_mib, b.pipeline >> 10, b.fetch_max_bytes, b.queued_kbytes,
            b.queued_messages, b.worker_buffer >> 10, b.batch_max_records, b.batch_max_bytes);
    return 0;
}
