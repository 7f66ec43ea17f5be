/*
 * sc_worker.c - a delivery worker: serves the partitions pinned to it,
 * turning buffered records into batches and running each batch through the
 * checkpoint protocol (sc_checkpoint.c): pend -> sink write -> commit.
 *
 * Every partition assigned to this worker has its fetch queue forwarded to
 * the worker's one queue, so the worker blocks on a single queue and
 * per-partition order is the order of arrival.  A record is copied once,
 * when it is taken from the queue, into its partition's buffer (see struct
 * sc_buffered) and the librdkafka message is destroyed at once; a batch is
 * an array of views (struct sc_record) into that buffer.
 *
 * The worker takes everything queued, then writes at most one batch per
 * partition, and again: librdkafka's queue stays short, so its prefetch
 * limits bound memory, and the next batch is usually buffered when a batch
 * commits, so the commit pends it in the same statement.  A partition whose
 * buffer holds two batches stops the worker taking more until it wrote one;
 * one that stays full without delivering, or delivers slowly, is paused in
 * librdkafka (see apply_backpressure()), and resumed once it drains.  A sink that asks for a
 * retry puts only its partition into backoff.  Below saturation the held-back
 * commits of all partitions that are due go in one statement (grouped commits,
 * commit_written_together()).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/sc_failpoint.h"
#include "base/sc_log.h"
#include "base/sc_metrics.h"
#include "base/sc_parallel.h"
#include "db/sc_db.h"
#include "pipeline/sc_budget.h"
#include "pipeline/sc_part.h"
#include "pipeline/sc_partbuf.h"
#include "pipeline/sc_worker.h"
#include "record/sc_decode.h"
#include "sinks/sc_sink_txn.h"
#include "protocol/sc_lease.h"

/* Where a record's decoded key and value are in the worker's buffer (decode_batch()). */
struct json_at {
    size_t key, key_len, value, value_len;
    bool has_key, has_value;
};

enum op_kind {
    OP_ADD,
    OP_REACQUIRED,
    OP_REMOVE,
};

struct op {
    enum op_kind kind;
    struct sc_part *p;
    char reason[32];
    struct op *next;
};

struct sc_worker {
    struct sc_worker_env env;
    int id;
    pthread_t thread;
    bool started;
    rd_kafka_queue_t *queue;
    struct sc_db db;
    struct sc_sink *sink;
    char name[64];

    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct op *inbox, *inbox_tail; /* under lock */
    int removals_pending;          /* under lock */
    atomic_int nparts;
    atomic_bool stop;

    struct sc_part *parts; /* worker-owned */
    struct sc_record *recs;
    size_t recs_cap;
    struct sc_header *hdrs;
    size_t hdrs_len, hdrs_cap;
    struct sc_header *push_hdrs; /* one record's headers while it is copied in */
    size_t push_hdrs_cap;
    struct sc_batch_result result;
    struct sc_buf dead_env; /* envelopes of the batch's dead letters */
    struct sc_cp_dead *dead;
    size_t dead_cap;
    int64_t give_up_ms; /* checkpoint writes stop retrying then (0 = only on stop) */

    /* value_format / key_format avro or json_schema (see decode_batch()). */
    bool decoding;
    struct sc_registry *registry; /* when a format is avro */
    struct sc_buf decoded;        /* the batch's decoded keys and values */
    struct sc_record *send;       /* what the sink gets: the records that decoded */
    size_t *send_map;             /* send[i] is recs[send_map[i]] */
    struct json_at *json_at;      /* where send[i]'s JSON is in decoded, while it grows */
    size_t nsend, send_cap;
    struct sc_batch_result bad;    /* records that did not decode (indexes into recs) */
    struct sc_batch_result merged; /* bad + the sink's dead letters, indexes into recs */
    struct sc_budget budget;
    struct sc_budget_feedback feedback;
    struct sc_slabpool slabs; /* the partitions' spare full-size slabs (sc_partbuf.h) */
    /* Set by congested() on every turn of the loop (see apply_backpressure()): */
    bool over_budget; /* the partitions' buffers hold budget.worker_buffer or more */
    bool starved;     /* ... and none of them a full batch: partial batches leave at once */
    uint64_t steps;   /* successful checkpoint writes and sink writes (progress) */
    /* w->parts by topic and partition (see find_part()) */
    struct sc_part **slots;
    size_t nslots, nparts_listed;
    struct sc_part *last_found;
    /* The sink's part_sync() of several partitions at once (sync_written_all()). */
    struct sc_parallel syncers;
    struct sync_job *sync_jobs;
    size_t sync_jobs_cap;
    /* Batches of several partitions in one transaction (deliver_txn_group()). */
    struct txn_member *txn;
    int txn_skip; /* turns left without them */
};

#define BATCH_DRAIN      512
#define DRAIN_ROUNDS     64 /* at most 64 * 512 records dequeued between two services */
#define ERROR_POLL_MS    5000
#define SLOW_SERVICE_MS  100  /* a full partition whose batch takes longer is paused */
#define FINISH_BUDGET_MS 1000 /* see finish_pending() */

static struct sc_cp_key key_of(const struct sc_worker *w, const struct sc_part *p)
{
    return (struct sc_cp_key){
        .pipeline = w->env.pc->name,
        .topic = p->topic,
        .partition = p->partition,
        .owner = w->env.cfg->instance_id,
        .notify_channel = sc_notify_channel(w->env.notify),
    };
}

/* ---- inbox ------------------------------------------------------------ */

static void post(struct sc_worker *w, enum op_kind kind, struct sc_part *p, const char *reason)
{
    struct op *op = sc_xcalloc(1, sizeof(*op));
    op->kind = kind;
    op->p = p;
    if (reason)
        snprintf(op->reason, sizeof(op->reason), "%s", reason);
    pthread_mutex_lock(&w->lock);
    if (kind == OP_REMOVE)
        w->removals_pending++;
    if (w->inbox_tail)
        w->inbox_tail->next = op;
    else
        w->inbox = op;
    w->inbox_tail = op;
    pthread_cond_broadcast(&w->cond); /* a worker waiting in wait_for_room() */
    pthread_mutex_unlock(&w->lock);
    rd_kafka_queue_yield(w->queue);
}

void sc_worker_add(struct sc_worker *w, struct sc_part *p)
{
    atomic_fetch_add(&w->nparts, 1);
    post(w, OP_ADD, p, NULL);
}

void sc_worker_reacquired(struct sc_worker *w, struct sc_part *p)
{
    post(w, OP_REACQUIRED, p, NULL);
}

void sc_worker_remove(struct sc_worker *w, struct sc_part *p, const char *reason)
{
    post(w, OP_REMOVE, p, reason);
}

int sc_worker_wait_removed(struct sc_worker *w, int64_t deadline_ms)
{
    pthread_mutex_lock(&w->lock);
    while (w->removals_pending > 0) {
        int64_t left = deadline_ms - sc_mono_ms();
        if (left <= 0)
            break;
        struct timespec ts; /* monotonic: immune to wall-clock jumps */
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t ns = ts.tv_nsec + (left < 100 ? left : 100) * 1000000;
        ts.tv_sec += ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_clockwait(&w->cond, &w->lock, CLOCK_MONOTONIC, &ts);
    }
    int rc = w->removals_pending > 0 ? -1 : 0;
    pthread_mutex_unlock(&w->lock);
    return rc;
}

int sc_worker_nparts(struct sc_worker *w)
{
    return atomic_load(&w->nparts);
}

/* ---- partition buffer (sc_partbuf.c) ------------------------------------ */

static bool stopping(const struct sc_worker *w)
{
    return atomic_load(w->env.stop);
}

static const struct sc_buffered *rec_at(const struct sc_part *p, size_t i)
{
    return sc_partbuf_at(&p->buf, i);
}

/* Copies m into p's buffer (the caller destroys m). */
static void buf_push(struct sc_worker *w, struct sc_part *p, rd_kafka_message_t *m, int64_t now)
{
    rd_kafka_timestamp_type_t tstype;
    struct sc_record r = {
        .offset = m->offset,
        .timestamp = rd_kafka_message_timestamp(m, &tstype),
        .key = m->key,
        .key_len = m->key ? m->key_len : 0,
        .value = m->payload,
        .value_len = m->payload ? m->len : 0,
    };
    if (tstype == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE)
        r.timestamp = -1;
    /* librdkafka parses (and allocates for) the headers on every call: ask once. */
    rd_kafka_headers_t *hs = NULL;
    if (rd_kafka_message_headers(m, &hs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        size_t cnt = rd_kafka_header_cnt(hs);
        if (cnt > w->push_hdrs_cap) {
            w->push_hdrs_cap = cnt;
            w->push_hdrs = sc_xrealloc(w->push_hdrs, cnt * sizeof(*w->push_hdrs));
        }
        const char *name;
        const void *val;
        size_t size;
        for (size_t j = 0; j < cnt && rd_kafka_header_get_all(hs, j, &name, &val, &size) ==
                                          RD_KAFKA_RESP_ERR_NO_ERROR;
             j++)
            w->push_hdrs[r.nheaders++] = (struct sc_header){name, val, size};
        r.headers = w->push_hdrs;
    }
    sc_partbuf_push(&p->buf, &r, now);
}

/* Asks the consumer thread to wake librdkafka's fetcher for p (see poke_fetchers()). */
static void poke_fetcher(struct sc_worker *w, struct sc_part *p)
{
    atomic_store(&p->poke, true);
    w->env.wake_fetchers(w->env.wake_arg);
}

static void set_paused(struct sc_worker *w, struct sc_part *p, bool pause)
{
    if (p->paused == pause)
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, p->topic, p->partition);
    rd_kafka_resp_err_t err =
        pause ? rd_kafka_pause_partitions(w->env.rk, l) : rd_kafka_resume_partitions(w->env.rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
        p->paused = pause;
    if (!err && !pause)
        poke_fetcher(w, p);
    sc_debug(&p->log, "%s fetching", pause ? "paused" : "resumed");
}

/*
 * A partition buffering two batches or more takes no more records for now;
 * unless it still waits for the rest of a pending batch it replays, which
 * the previous owner may have cut under larger batch limits.
 */
static bool buffer_full(const struct sc_part *p)
{
    if (!sc_partbuf_holds_two(&p->buf))
        return false;
    return !p->replay || rec_at(p, p->buf.len - 1)->offset >= p->cp.pending_last;
}

/*
 * Backpressure has two steps.  A full buffer first stops the worker taking
 * from its queue (congested()): librdkafka's prefetch limits then stop the
 * fetcher, and what it prefetched stays queued for when the partition has
 * written a batch, which under backlog is the next thing the worker does.
 * Only a partition that stays full without delivering (sink retry backoff,
 * PostgreSQL away, a late lease renewal), or delivers slowly (a batch took
 * over SLOW_SERVICE_MS), is paused in librdkafka, so that the records of
 * the worker's other partitions queued behind its own do not wait for it
 * to work through them.  Pausing is the expensive step:
 * librdkafka drops what it prefetched for the partition and fetches it again
 * on resume (measured: pausing at every full buffer halved the file sink's
 * throughput, bench/).  A paused partition is resumed once its buffer is
 * down to one batch.
 */
static void apply_backpressure(struct sc_worker *w, struct sc_part *p)
{
    if (sc_partbuf_holds_one(&p->buf) && p->paused && p->state == SC_PART_ACTIVE)
        set_paused(w, p, false);
}

/* After service() (which took took_ms): a partition still full that delivered nothing, or
 * slowly, is paused. */
static void pause_if_stuck(struct sc_worker *w, struct sc_part *p, size_t len_before,
                           int64_t took_ms)
{
    if (!p->paused && buffer_full(p) && (p->buf.len >= len_before || took_ms > SLOW_SERVICE_MS))
        set_paused(w, p, true);
}

static ssize_t pending_span(const struct sc_part *p);

/*
 * Whether the worker must not take more from its queue for now: a
 * partition's full buffer holds it back (see apply_backpressure()), or the
 * partitions' buffers together hold the worker's share of the memory
 * budget (sc_budget.h).  Over budget, full batches leave first; when there
 * is none, the partial ones leave at once (w->starved) instead of waiting
 * for records that cannot come in.  A partition replaying a pending batch
 * cut under larger limits may need more than the budget: while one still
 * waits for records, the budget does not stop the queue.
 */
static bool congested(struct sc_worker *w)
{
    bool full = false, any_full_batch = false, replay_waits = false;
    int64_t mem = 0, nparts = 0;
    for (const struct sc_part *p = w->parts; p; p = p->next)
        nparts++;
    /* A partition may hold two batches: they are cut at half its share of the buffer budget
     * (in records, at the size of its records so far). */
    int64_t buffer = sc_budget_worker_buffer(&w->budget, &w->feedback, sc_mono_ms());
    /* Batches from the nominal share: the feedback holds the queue back, but shrinking
     * batches for memory that is not in the buffers (many partitions' own state) only
     * multiplied the commits (bench/ --scale: 16-record batches at 1,024 partitions). */
    int64_t per_batch = w->budget.worker_buffer / 2 / (nparts > 0 ? nparts : 1);
    for (struct sc_part *p = w->parts; p; p = p->next) {
        if (p->buf.len > 0) {
            int64_t live = sc_partbuf_live(&p->buf);
            int64_t fit = per_batch / (live / (int64_t)p->buf.len + 1);
            p->buf.max_records =
                (size_t)(fit < 16                            ? 16
                         : fit > w->budget.batch_max_records ? w->budget.batch_max_records
                                                             : fit);
        }
        if (!p->paused && buffer_full(p))
            full = true;
        /* An empty buffer keeps a small first allocation: not counted, or a share smaller
         * than those of all partitions would hold the queue back for ever. */
        if (p->buf.len > 0)
            mem += sc_partbuf_mem(&p->buf);
        bool batch_full = false;
        size_t from = p->written ? (size_t)p->cp.pending_count : 0;
        if (p->buf.len > from)
            (void)sc_partbuf_next_batch(&p->buf, from, &batch_full);
        any_full_batch |= batch_full;
        replay_waits |= p->replay && p->state == SC_PART_ACTIVE && pending_span(p) < 0;
    }
    w->over_budget = mem >= buffer && !replay_waits;
    w->starved = w->over_budget && !any_full_batch;
    return full || w->over_budget;
}

/* Whether everything up to the high watermark of librdkafka's last fetch response for p is
 * buffered (nothing more is known to be there). */
static bool caught_up(const struct sc_worker *w, const struct sc_part *p)
{
    int64_t lo, hi;
    return rd_kafka_get_watermark_offsets(w->env.rk, p->topic, p->partition, &lo, &hi) ==
               RD_KAFKA_RESP_ERR_NO_ERROR &&
           hi >= 0 && p->next_expected >= hi;
}

/*
 * The end of a backlog or of a burst: when a partition that was behind has
 * caught up and gone quiet, its last partial batch need not wait
 * max_wait_ms for records that are not coming (nor its commit, once
 * written, as long again).  "Was behind": a full batch was cut no longer
 * than max_wait_ms before the newest buffered record arrived.  "Caught
 * up": caught_up().  "Quiet": nothing arrived for a quarter of
 * max_wait_ms.  Returns when that is (-1: not the end of a backlog).
 * Below saturation no batch is full, so a steady trickle still gathers for
 * the whole max_wait_ms and costs no more commits than before.
 */
static int64_t quiet_at(const struct sc_worker *w, const struct sc_part *p)
{
    const struct sc_batch_conf *bc = &w->env.pc->batch;
    if (p->buf.len == 0)
        return -1;
    int64_t last = rec_at(p, p->buf.len - 1)->arrival_ms;
    if (p->full_cut_ms == 0 || last - p->full_cut_ms > bc->max_wait_ms || !caught_up(w, p))
        return -1;
    return last + bc->max_wait_ms / 4;
}

static bool is_quiet(const struct sc_worker *w, const struct sc_part *p, int64_t now)
{
    int64_t at = quiet_at(w, p);
    return at >= 0 && now >= at;
}

/*
 * max_wait_ms counted from the Kafka timestamp: a partition that is caught
 * up lets the batch starting at buffered record from leave once that
 * record's timestamp is max_wait_ms old, even if it arrived later than
 * that.  A record's wait then bounds its end-to-end latency (the time it
 * spent in the producer, the broker and the fetch counts), instead of
 * adding to it.  Returns when that is, on the monotonic clock of now (-1:
 * not caught up, no timestamp, or one in the future, where the window
 * counts from arrival only).  A partition behind (a backlog) still fills
 * its batches: old records there do not make small ones.  Caught up, a
 * batch leaves at most once per fetch response that brought records
 * already max_wait_ms old.  Whether the partition is caught up (a lock in
 * librdkafka) is asked only once that time has come: a time still ahead is
 * returned as it is, and if the partition is behind when it comes, -1.
 */
static int64_t aged_at(const struct sc_worker *w, const struct sc_part *p, size_t from, int64_t now)
{
    if (from >= p->buf.len)
        return -1;
    int64_t ts = sc_partbuf_timestamp(&p->buf, from), age = sc_wall_ms() - ts;
    if (ts < 0 || age < 0)
        return -1;
    int64_t at = now + w->env.pc->batch.max_wait_ms - age;
    return at > now || caught_up(w, p) ? at : -1;
}

static bool is_aged(const struct sc_worker *w, const struct sc_part *p, size_t from, int64_t now)
{
    int64_t at = aged_at(w, p, from, now);
    return at >= 0 && now >= at;
}

/* The earlier of two deadlines, either -1 (none). */
static int64_t earlier(int64_t a, int64_t b)
{
    return a < 0 ? b : b < 0 || a < b ? a : b;
}

/* Which batches ready_count() accepts. */
enum ready_mode {
    READY_FULL, /* full by count or bytes */
    READY_DUE,  /* full, or its first record waited max_wait_ms (or is that old, aged_at()), or
                 * the partition is quiet */
    READY_ANY,  /* whatever is buffered (a written batch's commit takes it along) */
};

/* READY_DUE, or READY_ANY while the worker is starved for memory (see congested()). */
static enum ready_mode due_mode(const struct sc_worker *w)
{
    return w->starved ? READY_ANY : READY_DUE;
}

/* Whether the next batch, n records from index from (full or not), may leave under mode. */
static size_t ready_as(const struct sc_worker *w, const struct sc_part *p, size_t from, size_t n,
                       bool full, int64_t now, enum ready_mode mode)
{
    if (n == 0 || full || mode == READY_ANY)
        return n;
    if (mode == READY_DUE && (now - rec_at(p, from)->arrival_ms >= w->env.pc->batch.max_wait_ms ||
                              is_quiet(w, p, now) || is_aged(w, p, from, now)))
        return n;
    return 0;
}

/* How many buffered records, from index from, make the next batch if it is ready under mode. */
static size_t ready_count(const struct sc_worker *w, const struct sc_part *p, size_t from,
                          int64_t now, enum ready_mode mode)
{
    bool full;
    size_t n = sc_partbuf_next_batch(&p->buf, from, &full);
    return ready_as(w, p, from, n, full, now, mode);
}

/*
 * When the commit of p's written batch is due: max_wait_ms after the batch
 * was pended (the records arriving since then are the next batch, and the
 * commit pends them: each batch collects for max_wait_ms, not that plus
 * the commit and the write of the one before), or earlier, when the oldest
 * record buffered after it has waited max_wait_ms (the rule of any batch).
 */
static int64_t commit_due_at(const struct sc_worker *w, const struct sc_part *p)
{
    size_t n = (size_t)p->cp.pending_count;
    if (p->buf.len <= n)
        return p->commit_due_ms;
    int64_t oldest = rec_at(p, n)->arrival_ms + w->env.pc->batch.max_wait_ms;
    return oldest < p->commit_due_ms ? oldest : p->commit_due_ms;
}

/* ready_count() for a batch about to be pended; remembers when one was full (see quiet_at()). */
static size_t cut_batch(const struct sc_worker *w, struct sc_part *p, size_t from, int64_t now,
                        enum ready_mode mode)
{
    bool full;
    size_t n = sc_partbuf_next_batch(&p->buf, from, &full);
    if (full)
        p->full_cut_ms = now;
    return ready_as(w, p, from, n, full, now, mode);
}

/* ---- batches ------------------------------------------------------------ */

/* Fills w->recs with views of buffered records [from, from+n) (valid until they are dropped). */
static void build_records(struct sc_worker *w, struct sc_part *p, size_t from, size_t n)
{
    if (n > w->recs_cap) {
        w->recs_cap = n;
        w->recs = sc_xrealloc(w->recs, n * sizeof(*w->recs));
    }
    size_t total_hdrs = sc_partbuf_nheaders(&p->buf, from, n);
    if (total_hdrs > w->hdrs_cap) {
        w->hdrs_cap = total_hdrs;
        w->hdrs = sc_xrealloc(w->hdrs, total_hdrs * sizeof(*w->hdrs));
    }
    sc_partbuf_views(&p->buf, from, n, p->topic, p->partition, w->recs, w->hdrs);
}

static uint32_t batch_checksum(const struct sc_part *p, size_t from, size_t n)
{
    return sc_partbuf_checksum(&p->buf, from, n);
}

static void mirror_commit(struct sc_worker *w, struct sc_part *p, int64_t next_offset)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = next_offset;
    rd_kafka_resp_err_t err = rd_kafka_commit(w->env.rk, l, 1 /* async */);
    if (err)
        sc_debug(&p->log, "could not mirror offset %" PRId64 " to Kafka: %s", next_offset,
                 rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_destroy(l);
}

/* ---- state changes ------------------------------------------------------ */

static void part_stop_delivering(struct sc_worker *w, struct sc_part *p, enum sc_part_state state)
{
    p->state = state;
    p->written = false;
    atomic_store(&p->not_fetching, true);
    sc_partbuf_clear(&p->buf);
    set_paused(w, p, true);
    sc_metrics_set_pending(p->m, 0);
}

static void part_fenced(struct sc_worker *w, struct sc_part *p, const char *why, bool count)
{
    if (p->state == SC_PART_FENCED)
        return;
    if (count) {
        sc_warn(&p->log,
                "fenced: %s; epoch %" PRId64 " is no longer current, stopping the partition "
                "(another instance owns it, or it was reset)",
                why, p->cp.epoch);
        sc_counter_add(&p->m->fenced, 1);
        struct sc_cp_key k = key_of(w, p);
        sc_checkpoint_note_fenced(&w->db, &k, p->cp.epoch, why);
    } else {
        sc_info(&p->log, "%s; re-reading the checkpoint", why);
    }
    part_stop_delivering(w, p, SC_PART_FENCED);
    atomic_store(&p->lease_valid_until_ms, 0);
    atomic_store(&p->need_reacquire, true);
}

/*
 * Records the error state in the checkpoint row (with an 'error' event):
 * SC_CP_OK, or why not.  Waits out a PostgreSQL outage; a transient refusal
 * is tried a few times only: then the partition stays stopped here and the
 * error poll (service()) tries again.
 */
static enum sc_cp_status record_error(struct sc_worker *w, struct sc_part *p, const char *message)
{
    struct sc_cp_key k = key_of(w, p);
    enum sc_cp_status s;
    struct sc_backoff bo;
    sc_backoff_init(&bo, 200, 5000);
    int transient = 0;
    while (((s = sc_checkpoint_fail(&w->db, &k, &p->cp, message)) == SC_CP_UNAVAILABLE ||
            (s == SC_CP_TRANSIENT && ++transient < 5)) &&
           !stopping(w))
        sc_sleep_ms(sc_backoff_next(&bo), w->env.stop);
    return s;
}

static void part_error(struct sc_worker *w, struct sc_part *p, const char *message)
{
    sc_error(&p->log, "partition stopped in error state: %s", message);
    enum sc_cp_status s = record_error(w, p, message);
    if (s == SC_CP_FENCED || s == SC_CP_CONFLICT) {
        part_fenced(w, p, "while recording an error", s == SC_CP_FENCED);
        return;
    }
    p->error_unrecorded = s != SC_CP_OK;
    if (p->error_unrecorded) {
        /* The same cause (a trigger, a revoked privilege) may refuse this statement too:
         * the partition stops anyway, and the error poll records it once it can. */
        snprintf(p->error_msg, sizeof(p->error_msg), "%s", message);
        sc_error(&p->log,
                 "could not record the error state in PostgreSQL (%s: %s); the partition is "
                 "stopped all the same (sidecar_partition_errors, /readyz) and the error state "
                 "is recorded as soon as PostgreSQL accepts it",
                 sc_cp_status_name(s), w->db.last_error);
    }
    atomic_store(&p->m->error, 1);
    part_stop_delivering(w, p, SC_PART_ERROR);
    p->error_poll_ms = sc_mono_ms() + ERROR_POLL_MS;
}

/*
 * After an unknown outcome (connection lost mid-statement), reads the row
 * back until PostgreSQL answers, and decides: 1 = the write took effect,
 * 0 = it did not (retry it), -1 = neither (fenced or changed: re-acquire),
 * -2 = stopping or out of time, -3 = the row cannot be read (a permanent
 * error: w->db.last_* say why).
 */
/* A bounded caller (finish_pending()) ran out of time. */
static bool gave_up(const struct sc_worker *w)
{
    return w->give_up_ms > 0 && sc_mono_ms() >= w->give_up_ms;
}

/* Sleeps the next backoff step, but not past give_up_ms. */
static void retry_sleep(const struct sc_worker *w, const struct sc_part *p, struct sc_backoff *bo)
{
    int64_t ms = sc_backoff_next(bo);
    if (w->give_up_ms > 0 && w->give_up_ms - sc_mono_ms() < ms)
        ms = w->give_up_ms - sc_mono_ms();
    if (ms > 0)
        sc_sleep_ms(ms, w->env.stop);
}

static int reconcile(struct sc_worker *w, struct sc_part *p, const struct sc_cp *before,
                     const struct sc_cp *after)
{
    struct sc_cp_key k = key_of(w, p);
    struct sc_backoff bo;
    sc_backoff_init(&bo, 100, 5000);
    for (;;) {
        if (stopping(w) || gave_up(w))
            return -2;
        struct sc_cp now;
        enum sc_cp_status s = sc_checkpoint_load(&w->db, &k, &now);
        if (s == SC_CP_FAILED)
            return -3;
        if (s == SC_CP_UNAVAILABLE || s == SC_CP_TRANSIENT) {
            retry_sleep(w, p, &bo);
            continue;
        }
        if (s != SC_CP_OK || now.epoch != before->epoch || now.error)
            return -1;
#define SAME(a, b)                                                              \
    ((a)->has_committed == (b)->has_committed &&                                \
     (!(a)->has_committed || (a)->committed_offset == (b)->committed_offset) && \
     (a)->committed_write_offset == (b)->committed_write_offset &&              \
     (a)->has_pending == (b)->has_pending &&                                    \
     (!(a)->has_pending ||                                                      \
      ((a)->pending_first == (b)->pending_first && (a)->pending_last == (b)->pending_last)))
        if (SAME(&now, after))
            return 1;
        if (SAME(&now, before))
            return 0;
#undef SAME
        return -1;
    }
}

/*
 * Runs one checkpoint write (fn applied to a copy of p->cp) until it has a
 * definite outcome.  Returns true when it took effect (p->cp updated).
 */
typedef enum sc_cp_status (*cp_write_fn)(struct sc_worker *w, struct sc_part *p, struct sc_cp *cp,
                                         const void *arg);

/* A checkpoint statement was refused for good: the partition stops, saying why. */
static void checkpoint_failed(struct sc_worker *w, struct sc_part *p, const char *what)
{
    char msg[1024];
    struct sc_cp_key k = key_of(w, p);
    sc_checkpoint_failure_message(&w->db, &k, what, msg, sizeof(msg));
    part_error(w, p, msg);
}

/*
 * A checkpoint statement was refused for a passing reason and changed
 * nothing: this partition alone tries again later, with capped backoff, so
 * the worker's other partitions keep flowing.  Logged at the first refusal
 * and then at every power of two, and counted (sidecar_checkpoint_retries_total).
 */
static void checkpoint_retry_later(struct sc_worker *w, struct sc_part *p, const char *what)
{
    int delay = sc_backoff_next(&p->cp_backoff);
    p->cp_retries++;
    sc_counter_add(&p->m->checkpoint_retries, 1);
    if ((p->cp_retries & (p->cp_retries - 1)) == 0)
        sc_warn(&p->log,
                "checkpoint %s refused for now: statement %s, SQLSTATE %s (%s): %s; nothing "
                "changed, retrying in %d ms (attempt %d)",
                what, w->db.last_stmt, w->db.last_sqlstate,
                sc_pg_sqlstate_name(w->db.last_sqlstate), w->db.last_error, delay, p->cp_retries);
    p->retry_at_ms = sc_mono_ms() + delay;
}

/* A checkpoint statement took effect: transient trouble is over. */
static void checkpoint_ok(struct sc_part *p)
{
    if (p->cp_retries > 0)
        sc_info(&p->log, "checkpoint writes succeed again after %d refused attempt%s",
                p->cp_retries, p->cp_retries == 1 ? "" : "s");
    p->cp_retries = 0;
    sc_backoff_reset(&p->cp_backoff);
}

/*
 * Runs one checkpoint write (fn applied to a copy of p->cp).  Returns true
 * when it took effect (p->cp updated).  Otherwise the partition was fenced
 * or stopped in the error state (a permanent refusal), or it retries later
 * (p->retry_at_ms: a transient refusal, or stopping while the outcome is
 * unknown).  Only an unknown outcome (the connection failed with the
 * statement sent) is resolved here, by reading the row back until
 * PostgreSQL answers: the worker's other partitions share the connection
 * and could not write meanwhile anyway.
 */
static bool checkpoint_write(struct sc_worker *w, struct sc_part *p, cp_write_fn fn,
                             const void *arg, const char *what)
{
    struct sc_backoff bo;
    sc_backoff_init(&bo, 100, 5000);
    for (;;) {
        struct sc_cp cp = p->cp;
        int64_t t0 = sc_mono_ns();
        enum sc_cp_status s = fn(w, p, &cp, arg);
        sc_hist_observe_ns(&p->m->checkpoint_seconds, sc_mono_ns() - t0);
        switch (s) {
        case SC_CP_OK:
            p->cp = cp;
            w->steps++;
            checkpoint_ok(p);
            return true;
        case SC_CP_FENCED:
            part_fenced(w, p, what, true);
            return false;
        case SC_CP_CONFLICT:
            part_fenced(w, p, "the checkpoint changed under us (reset?)", false);
            return false;
        case SC_CP_FAILED:
            checkpoint_failed(w, p, what);
            return false;
        case SC_CP_TRANSIENT:
            checkpoint_retry_later(w, p, what);
            return false;
        case SC_CP_UNAVAILABLE: {
            /* cp now holds what the write would have produced: compare it with the row. */
            int r = reconcile(w, p, &p->cp, &cp);
            if (r == 1) {
                p->cp = cp;
                checkpoint_ok(p);
                return true;
            }
            if (r == -1) {
                part_fenced(w, p, "the checkpoint changed while PostgreSQL was unreachable", false);
                return false;
            }
            if (r == -3) {
                checkpoint_failed(w, p, "reading the checkpoint back");
                return false;
            }
            if (r != -2) {
                retry_sleep(w, p, &bo);
                if (!stopping(w) && !gave_up(w))
                    continue;
            }
            /* Stopping or out of time with the outcome unknown: try again later (service()
             * would otherwise retry at once, again and again), or leave it to a replay. */
            p->retry_at_ms = sc_mono_ms() + sc_backoff_next(&p->backoff);
            return false;
        }
        }
    }
}

/* The three writes of the protocol, shaped for checkpoint_write(). */
struct pend_args {
    int64_t first, last;
    int32_t count;
    uint32_t checksum;
};

struct commit_args {
    int64_t next_offset, next_write_offset;
    bool replay;
    bool and_pend;
    struct pend_args pend;
    const struct sc_cp_dead *dead;
    size_t ndead;
    size_t ndecode; /* of the dead letters, records that did not decode */
};

/*
 * The sc_checkpoint_* functions update *cp only on success; for the
 * reconcile path we need the intended "after" state even on failure, so
 * each wrapper applies the change to *cp itself when the outcome is unknown.
 */
static enum sc_cp_status do_pend(struct sc_worker *w, struct sc_part *p, struct sc_cp *cp,
                                 const void *arg)
{
    const struct pend_args *a = arg;
    struct sc_cp_key k = key_of(w, p);
    enum sc_cp_status s =
        sc_checkpoint_pend(&w->db, &k, cp, a->first, a->last, a->count, a->checksum);
    if (s == SC_CP_UNAVAILABLE)
        sc_checkpoint_apply_pend(cp, a->first, a->last, a->count, a->checksum,
                                 cp->committed_write_offset);
    return s;
}

/* What a commit (and pend) would make of *cp: compared with the row after an unknown outcome. */
static void commit_intended(struct sc_cp *cp, const struct commit_args *a)
{
    cp->has_committed = true;
    cp->committed_offset = a->next_offset;
    cp->committed_write_offset = a->next_write_offset;
    cp->has_pending = false;
    if (a->and_pend)
        sc_checkpoint_apply_pend(cp, a->pend.first, a->pend.last, a->pend.count, a->pend.checksum,
                                 a->next_write_offset);
}

static enum sc_cp_status do_commit(struct sc_worker *w, struct sc_part *p, struct sc_cp *cp,
                                   const void *arg)
{
    const struct commit_args *a = arg;
    struct sc_cp_key k = key_of(w, p);
    enum sc_cp_status s;
    if (a->and_pend)
        s = sc_checkpoint_commit_and_pend(&w->db, &k, cp, a->next_offset, a->next_write_offset,
                                          a->replay, a->dead, a->ndead, a->pend.first, a->pend.last,
                                          a->pend.count, a->pend.checksum);
    else
        s = sc_checkpoint_commit(&w->db, &k, cp, a->next_offset, a->next_write_offset, a->replay,
                                 a->dead, a->ndead);
    if (s == SC_CP_UNAVAILABLE)
        commit_intended(cp, a);
    return s;
}

struct start_args {
    int64_t offset;
};

static enum sc_cp_status do_set_start(struct sc_worker *w, struct sc_part *p, struct sc_cp *cp,
                                      const void *arg)
{
    const struct start_args *a = arg;
    struct sc_cp_key k = key_of(w, p);
    enum sc_cp_status s = sc_checkpoint_set_start(&w->db, &k, cp, a->offset, "start_from latest");
    if (s == SC_CP_UNAVAILABLE) {
        cp->has_committed = true;
        cp->committed_offset = a->offset;
    }
    return s;
}

/*
 * Turns the sink's dead letters for the batch in w->recs into rows for
 * dead_letters (envelope + raw key/value).  Returns how many.
 */
static size_t collect_dead(struct sc_worker *w, const struct sc_batch_result *r)
{
    if (r->ndead == 0)
        return 0;
    if (r->ndead > w->dead_cap) {
        w->dead_cap = r->ndead;
        w->dead = sc_xrealloc(w->dead, w->dead_cap * sizeof(*w->dead));
    }
    sc_buf_reset(&w->dead_env);
    size_t *starts = sc_xcalloc(r->ndead, sizeof(*starts));
    for (size_t i = 0; i < r->ndead; i++) {
        const struct sc_record *rec = &w->recs[r->dead[i].index];
        starts[i] = w->dead_env.len;
        if (sc_envelope_append(&w->dead_env, rec, &w->env.pc->formats) < 0 ||
            sc_buf_putc(&w->dead_env, '\0') < 0)
            abort(); /* the buffer has no maximum */
        w->dead[i] = (struct sc_cp_dead){
            .offset = rec->offset,
            .key = rec->key,
            .key_len = rec->key_len,
            .value = rec->value,
            .value_len = rec->value_len,
            .error = r->dead[i].error ? r->dead[i].error : "rejected by the sink",
            .status = r->dead[i].status,
            .excerpt = r->dead[i].excerpt,
            .attempts = r->dead[i].attempts > 0 ? r->dead[i].attempts : 1,
        };
    }
    for (size_t i = 0; i < r->ndead; i++)
        w->dead[i].envelope = w->dead_env.data + starts[i];
    free(starts);
    return r->ndead;
}

/* ---- decoding (value_format / key_format avro, json_schema) ------------------------- */

/*
 * NOTES: where records are decoded.
 *
 * Records in the Confluent wire format are decoded by the worker, after a
 * batch is cut and pended and right before the sink write (decode_batch()),
 * for every write of the batch: first deliveries, retries and replays
 * alike.  The sinks never see the wire format: they get each record with
 * its decoded JSON (struct sc_record.value_json / key_json), and the
 * envelope (record/sc_envelope.c) stays the one place that builds the
 * form every sink writes.
 *
 * Why here and not when records arrive: the buffer and the checksum stay
 * the raw bytes Kafka returned, so what is pended and verified on replay
 * (I5) is unchanged, and a replay by another instance decodes the same
 * bytes with the same schema (ids are immutable and cached for the life of
 * the process) into the same JSON (I1).  Why not before the pend: a pending
 * batch must be written again after a crash whether or not the registry is
 * up then, so the write has to cope with an unavailable registry anyway;
 * waiting before the pend would add a second place that does.
 *
 * Outcomes, per batch:
 *   - the registry cannot answer (connection, timeout, 5xx, 401, garbage):
 *     nothing is written, the partition backs off like a sink retry
 *     (sidecar_schema_registry_waits_total), and the same batch is decoded
 *     again later; nothing is lost or skipped;
 *   - the registry answers 404 for an id: the same, until the id has been
 *     missing for schema_registry.unknown_id_grace, then the partition's
 *     error state, with the id and the registry in the message;
 *   - a record that is not in the framing, or whose payload does not decode
 *     with its schema (or whose schema cannot decode anything: Protobuf,
 *     invalid): a dead letter with the reason, committed with the batch
 *     (I3); the sink gets the other records of the batch.  This is a
 *     function of the bytes alone, so a replay drops the same records.
 */

#define DECODED_MAX_RECORD (64 * 1024 * 1024) /* a decoded key or value larger is a dead letter */

enum decode_outcome {
    DECODE_WRITE, /* b describes what the sink gets (maybe nothing: all dead letters) */
    DECODE_RETRY, /* the registry: try the batch again later */
    DECODE_ERROR, /* the partition's error state (err) */
};

/* Decodes one framed key or value of record i; -1 when it is a dead letter (added to w->bad). */
static int decode_field(struct sc_worker *w, size_t i, bool key, enum sc_value_format fmt,
                        size_t *off, size_t *len, enum decode_outcome *outcome, char *err,
                        size_t errsize)
{
    const struct sc_record *r = &w->recs[i];
    char why[600];
    uint32_t id = 0;
    int64_t missing_ms = 0;
    size_t mark = w->decoded.len;
    enum sc_decode_status st =
        sc_decode_append(w->registry, fmt, key ? r->key : r->value, key ? r->key_len : r->value_len,
                         &w->decoded, &id, &missing_ms, why, sizeof(why));
    if (st == SC_DECODE_OK && w->decoded.len - mark > DECODED_MAX_RECORD) {
        w->decoded.len = mark;
        snprintf(why, sizeof(why), "schema id %u: the decoded %s is larger than %d MiB",
                 (unsigned)id, key ? "key" : "value", DECODED_MAX_RECORD >> 20);
        st = SC_DECODE_BAD;
    }
    switch (st) {
    case SC_DECODE_OK:
        *off = mark;
        *len = w->decoded.len - mark;
        return 0;
    case SC_DECODE_BAD:
        sc_batch_result_add_dead(&w->bad, i,
                                 sc_xasprintf("%s (%s_format %s)", why, key ? "key" : "value",
                                              fmt == SC_VALUE_AVRO ? "avro" : "json_schema"),
                                 0, NULL, 1);
        return -1;
    case SC_DECODE_NOT_FOUND:
        if (missing_ms >= w->env.pc->registry->unknown_id_grace_ms) {
            snprintf(err, errsize,
                     "%s, for %" PRId64 " s now (schema_registry.unknown_id_grace); the record "
                     "at offset %" PRId64 " cannot be decoded: register the schema, or point "
                     "schema_registry at the producer's registry, then reset the partition",
                     why, missing_ms / 1000, r->offset);
            *outcome = DECODE_ERROR;
            return -1;
        }
        __attribute__((fallthrough));
    case SC_DECODE_UNAVAILABLE:
        snprintf(err, errsize, "%s", why);
        *outcome = DECODE_RETRY;
        return -1;
    }
    return -1;
}

/*
 * Decodes the framed keys and values of w->recs[0..n) and points b at the
 * records that decoded (w->send); the others are in w->bad.
 */
static enum decode_outcome decode_batch(struct sc_worker *w, struct sc_batch *b, size_t n,
                                        char *err, size_t errsize)
{
    const struct sc_formats *f = &w->env.pc->formats;
    enum decode_outcome outcome = DECODE_WRITE;
    sc_batch_result_clear(&w->bad);
    sc_buf_reset(&w->decoded);
    if (n > w->send_cap) {
        w->send_cap = n;
        w->send = sc_xrealloc(w->send, n * sizeof(*w->send));
        w->send_map = sc_xrealloc(w->send_map, n * sizeof(*w->send_map));
        w->json_at = sc_xrealloc(w->json_at, n * sizeof(*w->json_at));
    }
    w->nsend = 0;
    for (size_t i = 0; i < n && outcome == DECODE_WRITE; i++) {
        const struct sc_record *r = &w->recs[i];
        struct json_at *at = &w->json_at[w->nsend];
        *at = (struct json_at){0};
        bool k = sc_format_is_framed(f->key) && r->key;
        bool v = sc_format_is_framed(f->value) && r->value;
        if ((k && decode_field(w, i, true, f->key, &at->key, &at->key_len, &outcome, err, errsize) <
                      0) ||
            (v && decode_field(w, i, false, f->value, &at->value, &at->value_len, &outcome, err,
                               errsize) < 0))
            continue;
        at->has_key = k;
        at->has_value = v;
        w->send_map[w->nsend++] = i;
    }
    if (outcome != DECODE_WRITE)
        return outcome;
    /* Only now, w->decoded no longer moving: point the records at their JSON. */
    for (size_t j = 0; j < w->nsend; j++) {
        const struct json_at *at = &w->json_at[j];
        struct sc_record *r = &w->recs[w->send_map[j]];
        r->key_json = at->has_key ? w->decoded.data + at->key : NULL;
        r->key_json_len = at->key_len;
        r->value_json = at->has_value ? w->decoded.data + at->value : NULL;
        r->value_json_len = at->value_len;
        w->send[j] = *r;
    }
    b->records = w->send;
    b->count = w->nsend;
    return DECODE_WRITE;
}

/*
 * The dead letters of a batch written after decode_batch(): the records
 * that did not decode and those the sink rejected (its indexes are into
 * w->send), as one result indexed into w->recs, in record order.
 */
static const struct sc_batch_result *merge_dead(struct sc_worker *w,
                                                const struct sc_batch_result *sink)
{
    if (!w->decoding)
        return sink;
    sc_batch_result_clear(&w->merged);
    size_t a = 0, b = 0;
    while (a < w->bad.ndead || b < sink->ndead) {
        size_t ia = a < w->bad.ndead ? w->bad.dead[a].index : SIZE_MAX;
        size_t ib = b < sink->ndead ? w->send_map[sink->dead[b].index] : SIZE_MAX;
        const struct sc_dead_letter *d = ia < ib ? &w->bad.dead[a++] : &sink->dead[b++];
        sc_batch_result_add_dead(&w->merged, ia < ib ? ia : ib,
                                 d->error ? sc_xstrdup(d->error) : NULL, d->status,
                                 d->excerpt ? sc_xstrdup(d->excerpt) : NULL, d->attempts);
    }
    w->merged.next_write_offset = sink->next_write_offset;
    return &w->merged;
}

/* The registry could not answer for a batch: only this partition backs off. */
static void decode_retry_later(struct sc_part *p, const char *err)
{
    sc_counter_add(&p->m->schema_waits, 1);
    int delay = sc_backoff_next(&p->backoff);
    sc_warn(&p->log, "waiting for the schema registry, retrying the batch in %d ms: %s", delay,
            err);
    p->retry_at_ms = sc_mono_ms() + delay;
}

/* ---- recovery ------------------------------------------------------------ */

struct owner_check {
    struct sc_worker *w;
    struct sc_part *p;
};

static int still_owner(void *arg)
{
    struct owner_check *oc = arg;
    struct sc_cp_key k = key_of(oc->w, oc->p);
    return sc_checkpoint_still_owner(&oc->w->db, &k, oc->p->cp.epoch);
}

/* STARTING -> ACTIVE: opens the sink destination and makes it agree with the checkpoint. */
static void part_start(struct sc_worker *w, struct sc_part *p, int64_t now)
{
    if (p->cp.error) {
        sc_error(&p->log,
                 "partition is in the error state: %s (fix the cause, then reset it: see "
                 "docs/operations.md, \"Getting a partition out of the error state\")",
                 p->cp.error_msg);
        atomic_store(&p->m->error, 1);
        part_stop_delivering(w, p, SC_PART_ERROR);
        p->error_poll_ms = now + ERROR_POLL_MS;
        return;
    }
    atomic_store(&p->m->error, 0);
    p->pended_ms = now; /* for a batch found pending (see commit_due_at()) */
    atomic_store(&p->m->committed_offset, p->cp.has_committed ? p->cp.committed_offset : -1);
    if (p->cp.paused) {
        sc_info(&p->log, "paused by an operator (resume_partition() to continue)");
        part_stop_delivering(w, p, SC_PART_PAUSED);
        return;
    }
    char err[512] = "";
    if (!p->sink_part && w->sink->type->part_open &&
        w->sink->type->part_open(
            w->sink, &(struct sc_part_ref){w->env.pc->name, p->topic, p->partition, p->cp.epoch},
            &p->sink_part, err, sizeof(err)) != 0) {
        sc_error(&p->log, "%s; retrying", err);
        p->retry_at_ms = now + sc_backoff_next(&p->backoff);
        return;
    }
    if (!p->sink_recovered && w->sink->type->part_recover) {
        struct owner_check oc = {w, p};
        int rc = w->sink->type->part_recover(w->sink, p->sink_part, p->cp.committed_write_offset,
                                             still_owner, &oc, err, sizeof(err));
        if (rc == -2) {
            part_error(w, p, err);
            return;
        }
        if (rc != 0) {
            if (still_owner(&oc) != 0) {
                part_fenced(w, p, "lease lost during recovery", true);
                return;
            }
            sc_error(&p->log, "%s; retrying", err);
            p->retry_at_ms = now + sc_backoff_next(&p->backoff);
            return;
        }
    }
    p->sink_recovered = true;
    sc_backoff_reset(&p->backoff);

    /* start_from latest with no checkpoint yet: the start offset becomes one. */
    if (!p->cp.has_committed && !p->cp.has_pending && p->start_offset >= 0) {
        struct start_args a = {p->start_offset};
        if (!checkpoint_write(w, p, do_set_start, &a, "setting the start offset"))
            return;
    }
    if (p->cp.has_pending && (w->sink->flags & SC_SINK_F_TRANSACTIONAL)) {
        part_error(w, p,
                   "a pending batch exists but this sink commits in one transaction and never "
                   "pends (was the sink type changed?); reset the partition to continue");
        return;
    }
    p->replay = p->cp.has_pending;
    if (p->replay) {
        sc_info(&p->log,
                "replaying pending batch [%" PRId64 "..%" PRId64 "] (%d records) at write offset "
                "%" PRId64 " left by the previous owner",
                p->cp.pending_first, p->cp.pending_last, p->cp.pending_count,
                p->cp.pending_write_offset);
        sc_metrics_set_pending(p->m, 1);
    }
    p->state = SC_PART_ACTIVE;
    atomic_store(&p->not_fetching, false);
    set_paused(w, p, false);
    apply_backpressure(w, p);
}

/* ---- delivery ------------------------------------------------------------ */

/*
 * Number of buffered messages that belong to the pending batch, or -1 while
 * the buffer does not reach its last offset yet (a replay still fetching).
 */
static ssize_t pending_span(const struct sc_part *p)
{
    if (!p->replay)
        return p->cp.pending_count <= (int32_t)p->buf.len ? p->cp.pending_count : -1;
    return sc_partbuf_count_upto(&p->buf, p->cp.pending_last);
}

/* The transactional sink's commit: the checkpoint advance inside its transaction. */
struct hook_ctx {
    struct sc_worker *w;
    struct sc_part *p;
    struct sc_cp cp;     /* the state after the advance */
    struct sc_cp queued; /* the state after a queued advance, should it commit */
    size_t count;        /* records in the batch (the sink may get fewer: decode_batch()) */
    size_t ndead;
    bool done;
    bool failed;           /* the advance (or a dead letter) was refused for good */
    char failed_msg[1024]; /* ... and why (sc_checkpoint_failure_message()) */
};

static int hook_commit(void *arg, const struct sc_batch *b, const struct sc_batch_result *r,
                       char *err, size_t errsize)
{
    struct hook_ctx *hc = arg;
    struct sc_cp_key k = key_of(hc->w, hc->p);
    hc->ndead = collect_dead(hc->w, merge_dead(hc->w, r));
    int64_t t0 = sc_mono_ns();
    enum sc_cp_status s =
        sc_checkpoint_advance(&hc->w->db, &k, &hc->cp, b->first_offset, b->last_offset,
                              (int32_t)hc->count, r->next_write_offset, hc->w->dead, hc->ndead);
    sc_hist_observe_ns(&hc->p->m->checkpoint_seconds, sc_mono_ns() - t0);
    if (s == SC_CP_OK) {
        hc->done = true;
        return 0;
    }
    if (s == SC_CP_FAILED) {
        hc->failed = true;
        sc_checkpoint_failure_message(&hc->w->db, &k, "committing a batch", hc->failed_msg,
                                      sizeof(hc->failed_msg));
    } else if (s == SC_CP_TRANSIENT) {
        sc_counter_add(&hc->p->m->checkpoint_retries, 1);
    }
    snprintf(err, errsize, "checkpoint advance: %s (%s)", sc_cp_status_name(s),
             hc->w->db.last_error);
    return s == SC_CP_FENCED || s == SC_CP_CONFLICT ? 1 : -1;
}

/* The same advance queued in the sink's pipeline (see struct sc_commit_hook). */
static int hook_queue(void *arg, const struct sc_batch *b, const struct sc_batch_result *r,
                      char *err, size_t errsize)
{
    struct hook_ctx *hc = arg;
    if (r->ndead > 0) {
        snprintf(err, errsize, "dead letters are stored through commit()");
        return -1;
    }
    struct sc_cp_key k = key_of(hc->w, hc->p);
    if (sc_checkpoint_advance_queue(&hc->w->db, &k, &hc->cp, b->first_offset, b->last_offset,
                                    (int32_t)hc->count, r->next_write_offset, &hc->queued) != 0) {
        snprintf(err, errsize, "checkpoint advance: %s", hc->w->db.last_error);
        return -1;
    }
    return 0;
}

static void hook_queued(void *arg, int outcome)
{
    struct hook_ctx *hc = arg;
    if (outcome == 0)
        return;
    /* Committed, or perhaps (then the worker reconciles against this state). */
    hc->ndead = 0;
    hc->cp = hc->queued;
    hc->done = true;
}

/*
 * One sink write of batch b, timed into sink_write_seconds (with its sync, when the sink
 * syncs before the commit: see sync_written()); the outcome in w->result.
 */
static enum sc_sink_result write_batch(struct sc_worker *w, struct sc_part *p,
                                       const struct sc_batch *b, const struct sc_commit_hook *hook,
                                       char *err, size_t errsize)
{
    sc_batch_result_clear(&w->result);
    int64_t t0 = sc_mono_ns();
    enum sc_sink_result sr =
        w->sink->type->write(w->sink, p->sink_part, b, hook, &w->result, err, errsize);
    if (w->sink->type->part_sync)
        p->unsynced_ns += sc_mono_ns() - t0;
    else
        sc_hist_observe_ns(&p->m->sink_write_seconds, sc_mono_ns() - t0);
    if (sr == SC_SINK_OK)
        w->steps++;
    return sr;
}

static void retry_later(struct sc_worker *w, struct sc_part *p, const char *err);

/*
 * Before any commit that covers p's written batch: makes it durable (the
 * sink's part_sync(), the file sink's fdatasync), if sync_written_all()
 * has not already.  false: the sync failed, the commit must not happen;
 * the batch stays pending and is written again (same offset) after the
 * partition's backoff.
 */
struct sync_job {
    struct sc_sink *sink;
    struct sc_part *p;
    int rc;
    int64_t took_ns;
    char err[1024];
};

/* The sink's part_sync() of one partition: in the worker thread or a syncer. */
static void sync_job_run(void *arg)
{
    struct sync_job *j = arg;
    int64_t t0 = sc_mono_ns();
    j->err[0] = '\0';
    j->rc = j->sink->type->part_sync(j->sink, j->p->sink_part, j->err, sizeof(j->err));
    j->took_ns = sc_mono_ns() - t0;
}

/* After j ran, in the worker thread: the metric, and a failed sync's retry. */
static bool sync_job_done(struct sc_worker *w, const struct sync_job *j)
{
    struct sc_part *p = j->p;
    if (p->unsynced_ns > 0)
        sc_hist_observe_ns(&p->m->sink_write_seconds, p->unsynced_ns + j->took_ns);
    p->unsynced_ns = 0;
    if (j->rc == 0)
        return true;
    p->written = false;
    w->result.retry_in_ms = 0;
    retry_later(w, p, j->err);
    return false;
}

static bool sync_written(struct sc_worker *w, struct sc_part *p)
{
    if (!w->sink->type->part_sync || !p->sink_part)
        return true;
    struct sync_job j = {.sink = w->sink, .p = p};
    sync_job_run(&j);
    return sync_job_done(w, &j);
}

/*
 * The sink asked for a retry: only this partition backs off, for as long as
 * the sink said (its own schedule, or the destination's Retry-After), else
 * by the worker's backoff.
 */
static void retry_later(struct sc_worker *w, struct sc_part *p, const char *err)
{
    sc_counter_add(&p->m->sink_errors, 1);
    int64_t delay =
        w->result.retry_in_ms > 0 ? w->result.retry_in_ms : sc_backoff_next(&p->backoff);
    sc_warn(&p->log, "sink write failed, retrying the batch in %" PRId64 " ms: %s", delay, err);
    p->retry_at_ms = sc_mono_ms() + delay;
}

/* A transactional sink committed the first n buffered records of p (the state in hc). */
static void txn_committed(struct sc_worker *w, struct sc_part *p, const struct hook_ctx *hc,
                          size_t n)
{
    sc_backoff_reset(&p->backoff);
    p->cp = hc->cp;
    sc_notify_count_commit(w->env.notify);
    atomic_store(&p->m->committed_offset, p->cp.committed_offset);
    sc_counter_add(&p->m->records_delivered, n - hc->ndead);
    sc_counter_add(&p->m->dead_letters, hc->ndead);
    sc_counter_add(&p->m->decode_errors, w->decoding ? w->bad.ndead : 0);
    sc_counter_add(&p->m->batches_committed, 1);
    mirror_commit(w, p, p->cp.committed_offset);
    sc_partbuf_drop(&p->buf, n);
    apply_backpressure(w, p);
    sc_failpoint("after_commit");
}

/* The batch of p's first n buffered records under p's epoch (records: set by the caller). */
static struct sc_batch head_batch(const struct sc_worker *w, const struct sc_part *p, size_t n,
                                  struct sc_part_ref *ref)
{
    *ref = (struct sc_part_ref){w->env.pc->name, p->topic, p->partition, p->cp.epoch};
    return (struct sc_batch){
        .part = ref,
        .count = n,
        .first_offset = rec_at(p, 0)->offset,
        .last_offset = rec_at(p, n - 1)->offset,
        .write_offset = p->cp.committed_write_offset,
    };
}

/* Takes back the checkpoint connection lent to a transactional sink.  A sink cut short may
 * leave it in pipeline mode or in a transaction: never reuse it like that (sc_db_release()
 * then reconnects). */
static void lent_back(struct sc_worker *w, PGconn *conn)
{
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF || PQtransactionStatus(conn) != PQTRANS_IDLE)
        w->db.broken = true;
    sc_db_release(&w->db);
}

/* A transactional sink's advance matched no row: another epoch (fenced), or an operator
 * changed the row under us (a reset, a pause): then it is re-read, not counted. */
static void txn_unmatched(struct sc_worker *w, struct sc_part *p)
{
    struct sc_cp_key k = key_of(w, p);
    bool fenced = sc_checkpoint_still_owner(&w->db, &k, p->cp.epoch) != 0;
    part_fenced(w, p, fenced ? "committing a batch" : "the checkpoint changed under us", fenced);
}

/*
 * Sinks that write records and checkpoint in one transaction: no pending step
 * at all.  One batch per call, like deliver_one().
 */
static void deliver_transactional(struct sc_worker *w, struct sc_part *p, int64_t now)
{
    if (stopping(w))
        return;
    size_t n = cut_batch(w, p, 0, now, due_mode(w));
    if (n == 0)
        return;
    build_records(w, p, 0, n);
    struct sc_part_ref ref;
    struct sc_batch b = head_batch(w, p, n, &ref);
    b.records = w->recs;
    struct hook_ctx hc = {.w = w, .p = p, .cp = p->cp, .count = n};
    char err[1024] = "";
    if (w->decoding) {
        enum decode_outcome d = decode_batch(w, &b, n, err, sizeof(err));
        if (d == DECODE_RETRY) {
            decode_retry_later(p, err);
            return;
        }
        if (d == DECODE_ERROR) {
            part_error(w, p, err);
            return;
        }
    }
    PGconn *conn = sc_db_hold(&w->db);
    if (!conn) {
        p->retry_at_ms = sc_mono_ms() + sc_backoff_next(&p->backoff);
        return;
    }
    struct sc_commit_hook hook = {conn, hook_commit, &hc, hook_queue, hook_queued};
    /* Dead letters (records that did not decode) are stored through commit() alone. */
    if (w->bad.ndead > 0 || sc_checkpoint_advance_prepare(&w->db) != 0)
        hook.queue = NULL, hook.queued = NULL; /* commit() alone; it reports the trouble */
    enum sc_sink_result sr = write_batch(w, p, &b, &hook, err, sizeof(err));
    lent_back(w, conn);
    if (sr == SC_SINK_RETRY && hc.done) {
        /* The COMMIT itself failed: it may or may not have happened. */
        int r = reconcile(w, p, &p->cp, &hc.cp);
        if (r == 1)
            sr = SC_SINK_OK;
        else if (r == -1)
            sr = SC_SINK_FENCED;
    }
    if (sr == SC_SINK_OK && !hc.done) {
        sr = SC_SINK_ERROR;
        snprintf(err, sizeof(err), "sink returned success without committing the checkpoint");
    }
    if (sr != SC_SINK_OK && hc.failed) {
        /* The checkpoint advance or a dead letter was refused for good: the sink saw only
         * "an error" and would have the batch retried forever. */
        part_error(w, p, hc.failed_msg);
        return;
    }
    switch (sr) {
    case SC_SINK_OK:
        break;
    case SC_SINK_FENCED:
        txn_unmatched(w, p);
        return;
    case SC_SINK_RETRY:
        retry_later(w, p, err);
        return;
    case SC_SINK_ERROR:
        sc_counter_add(&p->m->sink_errors, 1);
        part_error(w, p, err);
        return;
    }
    txn_committed(w, p, &hc, n);
}

/*
 * Several partitions in one transaction (struct sc_sink_class.write_group):
 * the batches due in one turn go into the sink together, each with its own
 * epoch-guarded advance, so the server runs one COPY statement and one
 * commit for all of them instead of one per batch (docs/design.md §4,
 * "Grouped transactions").  All or nothing: when the group
 * did not commit, the partitions go the usual way, one batch each, in the
 * same turn (that way tells a bad row or a fence apart), and the worker
 * writes no group for TXN_BACKOFF turns.  The sink asks for one member's
 * records at a time (txn_records()): a group holds no more memory than its
 * largest batch.
 */
#define TXN_MAX_BATCHES 16
#define TXN_MAX_RECORDS 65536
#define TXN_BACKOFF     64

struct txn_member {
    struct sc_worker *w;
    struct sc_part *p;
    size_t n;
    struct sc_part_ref ref;
    struct sc_batch b;
    struct hook_ctx hc;
    struct sc_commit_hook hook;
    struct sc_batch_result res;
};

/* Whether service() would deliver a batch of p now (under mode); how many records (0: none). */
static size_t txn_candidate(struct sc_worker *w, struct sc_part *p, int64_t now,
                            enum ready_mode mode)
{
    if (p->state != SC_PART_ACTIVE || now < p->retry_at_ms || !p->sink_part ||
        atomic_load(&p->control_changed) || atomic_load(&p->lease_valid_until_ms) < now)
        return 0;
    return cut_batch(w, p, 0, now, mode);
}

static int part_order(const struct sc_part *x, const struct sc_part *y);

/* struct sc_txn_item.records: a member's records in w->recs, one member at a time. */
static const struct sc_record *txn_records(void *arg)
{
    struct txn_member *g = arg;
    build_records(g->w, g->p, 0, g->n);
    return g->w->recs;
}

static int txn_member_cmp(const void *a, const void *b)
{
    return part_order(((const struct txn_member *)a)->p, ((const struct txn_member *)b)->p);
}

static bool in_txn_group(const struct sc_worker *w, size_t k, const struct sc_part *p)
{
    for (size_t i = 0; i < k; i++)
        if (w->txn[i].p == p)
            return true;
    return false;
}

static void deliver_txn_group(struct sc_worker *w)
{
    if (w->txn_skip > 0) {
        w->txn_skip--;
        return;
    }
    if (stopping(w))
        return;
    int64_t now = sc_mono_ms();
    size_t k = 0, total = 0;
    /* The batches that are due, then whatever the other partitions hold: they would go in
     * transactions of their own soon, and cost less in this one. */
    for (int round = 0; round < 2; round++) {
        enum ready_mode mode = round == 0 ? due_mode(w) : READY_ANY;
        for (struct sc_part *p = w->parts; p && k < TXN_MAX_BATCHES; p = p->next) {
            if (round == 1 && in_txn_group(w, k, p))
                continue;
            size_t n = txn_candidate(w, p, now, mode);
            if (n == 0 || total + n > TXN_MAX_RECORDS)
                continue;
            struct txn_member *g = &w->txn[k++];
            g->w = w, g->p = p, g->n = n;
            total += n;
        }
        if (round == 0 && k == 0)
            return;
    }
    if (k < 2)
        return; /* one batch: the usual way */
    /* The advances lock their rows in the order every grouped statement does. */
    qsort(w->txn, k, sizeof(*w->txn), txn_member_cmp);
    PGconn *conn = sc_db_hold(&w->db);
    if (!conn || sc_checkpoint_advance_prepare(&w->db) != 0) {
        if (conn)
            sc_db_release(&w->db);
        return; /* the usual way finds out what is wrong */
    }
    struct sc_txn_item items[TXN_MAX_BATCHES];
    for (size_t i = 0; i < k; i++) {
        struct txn_member *g = &w->txn[i];
        struct sc_part *p = g->p;
        g->b = head_batch(w, p, g->n, &g->ref); /* records: txn_records() */
        g->hc = (struct hook_ctx){.w = w, .p = p, .cp = p->cp, .count = g->n};
        g->hook = (struct sc_commit_hook){conn, hook_commit, &g->hc, hook_queue, hook_queued};
        sc_batch_result_clear(&g->res);
        items[i] = (struct sc_txn_item){p->sink_part, &g->b, &g->hook, &g->res, txn_records, g};
    }
    char err[1024] = "";
    int64_t t0 = sc_mono_ns();
    int outcome = w->sink->type->write_group(w->sink, items, k, err, sizeof(err));
    int64_t took = sc_mono_ns() - t0;
    lent_back(w, conn);
    if (outcome == 0) {
        if (err[0])
            sc_debug(NULL, "%s: %zu batches not committed together, writing them one by one: %s",
                     w->name, k, err);
        w->txn_skip = TXN_BACKOFF;
        return;
    }
    for (size_t i = 0; i < k; i++) {
        struct txn_member *g = &w->txn[i];
        struct sc_part *p = g->p;
        sc_hist_observe_ns(&p->m->sink_write_seconds, took);
        int r = outcome == 1 ? 1 : reconcile(w, p, &p->cp, &g->hc.cp);
        if (r == 1 && !g->hc.done) {
            part_error(w, p, "sink returned success without committing the checkpoint");
        } else if (r == 1) {
            w->steps++;
            txn_committed(w, p, &g->hc, g->n);
        } else if (r == -1) {
            txn_unmatched(w, p);
        } else { /* not committed, or not known yet: again after the backoff */
            w->result.retry_in_ms = 0;
            retry_later(w, p, err);
        }
    }
}

static void batch_committed(struct sc_worker *w, struct sc_part *p, const struct commit_args *c,
                            size_t n, size_t ndead, int64_t now);

/*
 * Commits the pending batch (the first n buffered records, written, with
 * ndead dead letters in w->dead), pending the next `next` records in the
 * same statement when next > 0.
 */
static void commit_batch(struct sc_worker *w, struct sc_part *p, size_t n,
                         int64_t next_write_offset, size_t ndead, size_t ndecode, size_t next)
{
    if (!sync_written(w, p))
        return;
    bool was_replay = p->replay;
    struct commit_args c = {
        .next_offset = p->cp.pending_last + 1,
        .next_write_offset = next_write_offset,
        .replay = was_replay,
        .dead = w->dead,
        .ndead = ndead,
        .ndecode = ndecode,
    };
    if (next > 0 && !stopping(w)) {
        c.and_pend = true;
        c.pend = (struct pend_args){rec_at(p, n)->offset, rec_at(p, n + next - 1)->offset,
                                    (int32_t)next, batch_checksum(p, n, next)};
    }
    int64_t now = sc_mono_ms();
    if (!checkpoint_write(w, p, do_commit, &c, "committing a batch"))
        return; /* fenced, or stopping while PostgreSQL is away: a replay then */
    batch_committed(w, p, &c, n, ndead, now);
}

/* The pending batch (n records, ndead dead letters) committed as c says (by a statement sent
 * at now or later): p->cp is updated. */
static void batch_committed(struct sc_worker *w, struct sc_part *p, const struct commit_args *c,
                            size_t n, size_t ndead, int64_t now)
{
    p->pended_ms = now;
    bool was_replay = c->replay;
    p->written = false;
    sc_failpoint("after_commit");
    sc_notify_count_commit(w->env.notify);
    atomic_store(&p->m->committed_offset, c->next_offset);
    if (c->and_pend && !p->cp.has_pending) {
        /* Committed, but the next batch was not pended: an operator paused the partition
         * meanwhile.  Re-read the row before anything else (service()). */
        atomic_store(&p->control_changed, true);
    } else if (c->and_pend) {
        sc_failpoint("after_pend"); /* the next batch is pending, not yet written */
    }
    p->replay = false;
    sc_metrics_set_pending(p->m, p->cp.has_pending ? 1 : 0);
    sc_counter_add(&p->m->records_delivered, n - ndead);
    sc_counter_add(&p->m->dead_letters, ndead);
    sc_counter_add(&p->m->decode_errors, c->ndecode);
    sc_counter_add(&p->m->batches_committed, 1);
    if (was_replay) {
        sc_counter_add(&p->m->replays, 1);
        sc_info(&p->log, "replayed batch committed; next offset %" PRId64, c->next_offset);
    }
    mirror_commit(w, p, c->next_offset);
    sc_partbuf_drop(&p->buf, n);
    apply_backpressure(w, p);
}

/* A new batch is pending (p->cp says which), at now: not written yet. */
static void batch_pended(struct sc_part *p, int64_t now)
{
    p->pended_ms = now;
    sc_metrics_set_pending(p->m, 1);
    sc_failpoint("after_pend");
}

/*
 * One batch of a partition through the protocol: pend it (unless it is
 * pending already), write it, commit it, pending the next one in the same
 * statement when that one is ready.  One batch per call, so the worker
 * drains its queue between batches and librdkafka never holds more than its
 * prefetch limits; the batch pended with a commit is written by the next
 * call (or by finish_pending() if the partition goes away).
 *
 * A written batch whose successor is not full yet holds its commit back
 * until max_wait_ms after it was pended (the batch is durable; only its
 * commit waits; see commit_due_at()), then commits and pends what arrived
 * meanwhile in the same statement, together with the other partitions of
 * the worker that are due (commit_written_together()).  Below saturation,
 * where batches leave by max_wait_ms, a batch then costs one PostgreSQL
 * transaction instead of two, and its records wait no longer than before.
 * Readers of committed_write_offset see a batch up to max_wait_ms later;
 * what is written is the same.  With a sink that syncs before the commit,
 * a batch whose successor is full (a backlog) waits too, but only for the
 * turn's end and the next turn's grouped commit (see hold, below).  A
 * replay, a batch with dead letters, a stopping worker and finish commit
 * at once.
 */
static void deliver_one(struct sc_worker *w, struct sc_part *p, int64_t now, bool finish)
{
    const struct sc_pipeline_conf *pc = w->env.pc;
    if (p->written) {
        size_t n = (size_t)p->cp.pending_count;
        size_t next = cut_batch(w, p, n, now, READY_FULL);
        if (next == 0) {
            if (now < commit_due_at(w, p) && !is_quiet(w, p, now) && !is_aged(w, p, n, now) &&
                !finish && !stopping(w) && !w->starved)
                return;
            /* Due: what arrived meanwhile is pended with the commit (it waited less than
             * max_wait_ms; a partial batch may always leave earlier). */
            next = cut_batch(w, p, n, now, READY_ANY);
        }
        commit_batch(w, p, n, p->written_next_write_offset, 0, 0, finish ? 0 : next);
        return;
    }
    if (stopping(w) && !p->cp.has_pending)
        return; /* shutting down: finish what is pending, start nothing new */
    if (!p->cp.has_pending) {
        size_t n = cut_batch(w, p, 0, now, due_mode(w));
        if (n == 0)
            return;
        struct pend_args a = {rec_at(p, 0)->offset, rec_at(p, n - 1)->offset, (int32_t)n,
                              batch_checksum(p, 0, n)};
        if (!checkpoint_write(w, p, do_pend, &a, "pending a batch"))
            return;
        batch_pended(p, now);
    }

    ssize_t span = pending_span(p);
    if (span < 0)
        return; /* replay: the pending range is still being fetched */
    size_t n = (size_t)span;
    build_records(w, p, 0, n);
    if (p->replay) {
        uint32_t crc = batch_checksum(p, 0, n);
        if ((int32_t)n != p->cp.pending_count || crc != p->cp.pending_checksum) {
            char msg[256];
            snprintf(msg, sizeof(msg),
                     "pending batch [%" PRId64 "..%" PRId64 "] does not match what Kafka "
                     "returns now: expected %d records with checksum %u, found %zu with "
                     "checksum %u (records deleted by retention or compaction, or the topic "
                     "was recreated)",
                     p->cp.pending_first, p->cp.pending_last, p->cp.pending_count,
                     p->cp.pending_checksum, n, crc);
            part_error(w, p, msg);
            return;
        }
    }
    struct sc_part_ref ref = {pc->name, p->topic, p->partition, p->cp.epoch};
    struct sc_batch b = {
        .part = &ref,
        .records = w->recs,
        .count = n,
        .first_offset = p->cp.pending_first,
        .last_offset = p->cp.pending_last,
        .checksum = p->cp.pending_checksum,
        .write_offset = p->cp.pending_write_offset,
        .replay = p->replay,
    };
    char err[1024] = "";
    if (w->decoding) {
        enum decode_outcome d = decode_batch(w, &b, n, err, sizeof(err));
        if (d == DECODE_RETRY) {
            decode_retry_later(p, err);
            return;
        }
        if (d == DECODE_ERROR) {
            part_error(w, p, err);
            return;
        }
    }
    enum sc_sink_result sr;
    if (b.count == 0 && n > 0) {
        /* Not one record decoded: nothing to write, the dead letters commit below. */
        sc_batch_result_clear(&w->result);
        w->result.next_write_offset = b.write_offset;
        sr = SC_SINK_OK;
    } else {
        sr = write_batch(w, p, &b, NULL, err, sizeof(err));
    }
    if (sr == SC_SINK_RETRY) {
        retry_later(w, p, err);
        return;
    }
    if (sr == SC_SINK_ERROR || sr == SC_SINK_FENCED) {
        sc_counter_add(&p->m->sink_errors, 1);
        part_error(w, p, err);
        return;
    }
    sc_backoff_reset(&p->backoff);
    sc_failpoint("after_write");

    size_t ndead = collect_dead(w, merge_dead(w, &w->result)); /* before w->recs is reused */
    /* Counted when the batch commits: a batch whose sync or commit fails is decoded and
     * written again. */
    size_t ndecode = w->decoding ? w->bad.ndead : 0;
    size_t next = cut_batch(w, p, n, now, READY_FULL);
    /* A sink that syncs before the commit holds back the commit of a batch whose successor
     * is full, or of a worker starved for memory, too: to the end of the turn, where its
     * sync runs alongside the other partitions' (sync_written_all()), and the start of the
     * next, where it commits in a group.  Committed here, each such batch synced and
     * committed alone, one after the other: in a backlog under the memory budget, 45 % of
     * the batches (bench/, file sink, 2M records over 32 partitions: 0.66-0.77 -> 0.83 x
     * the build before the budget).  A sink without a sync gains nothing from the wait and
     * would hold the batch's memory through it. */
    bool hold = w->sink->type->part_sync || (next == 0 && !w->starved);
    if (hold && ndead == 0 && !p->replay && !finish && !stopping(w) && pc->batch.max_wait_ms > 0) {
        p->written = true;
        p->written_next_write_offset = w->result.next_write_offset;
        /* The next batch collects from the pend of this one on (commit_due_at()). */
        p->commit_due_ms = (p->pended_ms < now ? p->pended_ms : now) + pc->batch.max_wait_ms;
        return;
    }
    commit_batch(w, p, n, w->result.next_write_offset, ndead, ndecode, finish ? 0 : next);
}

/*
 * deliver_one(finish) with checkpoint retries stopped after FINISH_BUDGET_MS
 * (then retry_at_ms backs off): commits a written batch, or writes and
 * commits a pending one, without pending anything new.  A written batch is
 * committed whatever the lease's renewal says: it is durable in the sink,
 * and the commit names this owner's epoch, so it is refused (and counted as
 * fenced) if another instance took the partition over, and otherwise saves
 * the next owner a replay.
 */
static void finish_bounded(struct sc_worker *w, struct sc_part *p, int64_t now)
{
    w->give_up_ms = now + FINISH_BUDGET_MS;
    deliver_one(w, p, now, true);
    w->give_up_ms = 0;
}

/*
 * Grouped commits.  Below saturation every partition's written batch waits
 * for its commit (deliver_one()), and each commit was a durable PostgreSQL
 * transaction of its own, one after the other: with several partitions per
 * worker a record waited for the commits of the partitions served before
 * its own.  Here the written batches of all partitions whose commit is due
 * (by the rules of deliver_one()) go in one statement
 * (sc_checkpoint_commit_group()), each row fenced by its own epoch and
 * pending batch; a written batch due within half of max_wait_ms is taken
 * along when something arrived for it meanwhile (a partial batch may always
 * leave early), so the partitions stay in step and the next round groups
 * them again.  A row that did not match stops only its partition, as the
 * single statement would; a statement the server refused changed nothing,
 * and then each partition commits alone, in service(), as before, where its
 * own refusal is classified and retried.  One partition due is committed
 * there too, by the single statement.
 */
struct group_member {
    struct sc_part *p;
    struct commit_args c;
    size_t n; /* records of the written batch */
    struct sc_cp after;
};

/* Whether p's written batch may join a grouped commit now: *next = records pended with it. */
static bool group_candidate(struct sc_worker *w, struct sc_part *p, int64_t now, size_t *next,
                            bool *due)
{
    if (!p->written || p->state != SC_PART_ACTIVE || now < p->retry_at_ms || p->replay ||
        atomic_load(&p->control_changed) || atomic_load(&p->lease_valid_until_ms) < now)
        return false; /* service() takes it as before */
    size_t n = (size_t)p->cp.pending_count;
    *next = cut_batch(w, p, n, now, READY_FULL);
    *due = *next > 0 || now >= commit_due_at(w, p) || is_quiet(w, p, now) ||
           is_aged(w, p, n, now) || w->starved;
    if (!*due && commit_due_at(w, p) - now > w->env.pc->batch.max_wait_ms / 2)
        return false;
    if (*next == 0)
        *next = cut_batch(w, p, n, now, READY_ANY);
    return *due || *next > 0; /* taken early only with a batch to pend */
}

/*
 * After a turn's writes: syncs the batches written in it whose commit waits
 * (the sink's part_sync()), while the worker has nothing else to do.  The
 * writes of the turn went out back to back, right after the statement that
 * pended them; their syncs no longer stand between the next statement and
 * its writes.  The syncs run SC_PARALLEL_MAX at once (each partition has
 * its own file: concurrent fdatasyncs share the filesystem's journal
 * commits; 16 files on ext4, four at a time, took about 0.2 ms each
 * against 0.35 one after the other).  A batch whose sync fails is written
 * again (sync_written()).
 */
static void sync_written_all(struct sc_worker *w)
{
    if (!w->sink->type->part_sync)
        return;
    size_t n = 0;
    for (struct sc_part *p = w->parts; p; p = p->next) {
        if (!p->written || p->unsynced_ns <= 0 || p->state != SC_PART_ACTIVE || !p->sink_part)
            continue;
        if (n == w->sync_jobs_cap) {
            w->sync_jobs_cap = n ? 2 * n : 16;
            w->sync_jobs = sc_xrealloc(w->sync_jobs, w->sync_jobs_cap * sizeof(*w->sync_jobs));
        }
        w->sync_jobs[n++] = (struct sync_job){.sink = w->sink, .p = p};
    }
    sc_parallel_run(&w->syncers, sync_job_run, w->sync_jobs, sizeof(*w->sync_jobs), n);
    for (size_t i = 0; i < n; i++)
        (void)sync_job_done(w, &w->sync_jobs[i]);
}

/* Rows are locked in (topic, partition) order, in every grouped statement of every owner. */
static int part_order(const struct sc_part *x, const struct sc_part *y)
{
    int c = strcmp(x->topic, y->topic);
    return c ? c : (x->partition > y->partition) - (x->partition < y->partition);
}

static int member_cmp(const void *a, const void *b)
{
    return part_order(((const struct group_member *)a)->p, ((const struct group_member *)b)->p);
}

/* Sorts g[0..ng) into row order and fills items[] from it, each row's copy in g[i].after. */
static void group_items(struct group_member *g, size_t ng, struct sc_cp_group_item *items)
{
    qsort(g, ng, sizeof(*g), member_cmp);
    for (size_t i = 0; i < ng; i++) {
        g[i].after = g[i].p->cp;
        items[i] = (struct sc_cp_group_item){
            .topic = g[i].p->topic,
            .partition = g[i].p->partition,
            .cp = &g[i].after,
            .next_offset = g[i].c.next_offset,
            .next_write_offset = g[i].c.next_write_offset,
            .and_pend = g[i].c.and_pend,
            .first = g[i].c.pend.first,
            .last = g[i].c.pend.last,
            .count = g[i].c.pend.count,
            .checksum = g[i].c.pend.checksum,
        };
    }
}

/* A grouped statement's outcome was unknown and reading row p back did not settle it
 * (reconcile()'s r: -1, -3 or -2); r == 0 (it did not happen) is left to service(). */
static void group_reconcile_failed(struct sc_worker *w, struct sc_part *p, int r)
{
    if (r == -1)
        part_fenced(w, p, "the checkpoint changed while PostgreSQL was unreachable", false);
    else if (r == -3)
        checkpoint_failed(w, p, "reading the checkpoint back");
    else if (r == -2)
        p->retry_at_ms = sc_mono_ms() + sc_backoff_next(&p->backoff);
}

/* Commits the members of g together (see above); those left written commit in service(). */
static void commit_group(struct sc_worker *w, struct group_member *g, size_t ng)
{
    struct sc_cp_group_item items[SC_CP_GROUP_MAX];
    size_t synced = 0;
    for (size_t i = 0; i < ng; i++)
        if (sync_written(w, g[i].p))
            g[synced++] = g[i];
    if ((ng = synced) == 0)
        return;
    group_items(g, ng, items);
    int64_t t0 = sc_mono_ns(), now = sc_mono_ms();
    enum sc_cp_status s =
        sc_checkpoint_commit_group(&w->db, w->env.pc->name, w->env.cfg->instance_id,
                                   sc_notify_channel(w->env.notify), items, ng);
    int64_t took = sc_mono_ns() - t0;
    if (s == SC_CP_TRANSIENT || s == SC_CP_FAILED) {
        /* Nothing changed: each partition commits alone in service() and its refusal is
         * classified there, for it alone. */
        sc_debug(&g[0].p->log,
                 "grouped commit of %zu partitions refused (SQLSTATE %s: %s); "
                 "committing them one by one",
                 ng, w->db.last_sqlstate, w->db.last_error);
        return;
    }
    for (size_t i = 0; i < ng; i++) {
        struct sc_part *p = g[i].p;
        sc_hist_observe_ns(&p->m->checkpoint_seconds, took);
        enum sc_cp_status ps = s == SC_CP_OK ? items[i].status : SC_CP_UNAVAILABLE;
        int r = 0;
        switch (ps) {
        case SC_CP_OK:
            r = 1;
            break;
        case SC_CP_FENCED:
            part_fenced(w, p, "committing a batch", true);
            continue;
        case SC_CP_CONFLICT:
            part_fenced(w, p, "the checkpoint changed under us (reset?)", false);
            continue;
        case SC_CP_UNAVAILABLE:
            if (s == SC_CP_OK)
                continue; /* not matched, and reading why failed: service() commits it alone */
            /* The statement's outcome is unknown (all or none): compare each row. */
            commit_intended(&g[i].after, &g[i].c);
            r = reconcile(w, p, &p->cp, &g[i].after);
            break;
        default:
            continue; /* not matched, reading why refused: service() commits it alone */
        }
        if (r == 1) {
            p->cp = g[i].after;
            w->steps++;
            checkpoint_ok(p);
            batch_committed(w, p, &g[i].c, g[i].n, 0, now);
        } else {
            group_reconcile_failed(w, p, r); /* r == 0: service() commits it alone */
        }
    }
}

/* Finds the written batches due for commit and commits them in groups (see above). */
static void commit_written_together(struct sc_worker *w)
{
    if ((w->sink->flags & SC_SINK_F_TRANSACTIONAL) || stopping(w) ||
        w->env.pc->batch.max_wait_ms <= 0)
        return;
    struct group_member g[SC_CP_GROUP_MAX];
    size_t ng = 0;
    bool any_due = false;
    int64_t now = sc_mono_ms();
    for (struct sc_part *p = w->parts; p; p = p->next) {
        size_t next;
        bool due;
        if (!group_candidate(w, p, now, &next, &due))
            continue;
        size_t n = (size_t)p->cp.pending_count;
        struct group_member *m = &g[ng++];
        *m = (struct group_member){
            .p = p,
            .n = n,
            .c = {.next_offset = p->cp.pending_last + 1,
                  .next_write_offset = p->written_next_write_offset},
        };
        if (next > 0) {
            m->c.and_pend = true;
            m->c.pend = (struct pend_args){rec_at(p, n)->offset, rec_at(p, n + next - 1)->offset,
                                           (int32_t)next, batch_checksum(p, n, next)};
        }
        any_due = any_due || due;
        if (ng == SC_CP_GROUP_MAX) {
            if (any_due)
                commit_group(w, g, ng);
            ng = 0;
            any_due = false;
        }
    }
    if (any_due && ng >= 2)
        commit_group(w, g, ng);
}

/*
 * Grouped pends.  Under a backlog with a memory budget, a worker's
 * partitions often commit a batch with nothing buffered to pend with it:
 * the budget held the queue back until the commit freed the batch's
 * memory.  Their next batches were then pended one statement each, one
 * round trip after the other before each write: with 16 partitions a
 * worker, half the batches (bench/, file sink, 2M records over 32
 * partitions under 64 MiB).  So before the turn's writes, the new batches
 * of all partitions that have one ready go in one statement
 * (sc_checkpoint_pend_group()), each row guarded as the single pend is;
 * every write still waits for its pend's answer (I2).  A partition whose
 * row did not match is stopped as the single pend would stop it; a
 * statement the server refused changed nothing, and then each partition
 * pends alone in service(), where its refusal is classified and retried.
 */
/* A grouped pend took effect (or was read back): p->cp becomes after, as after a single
 * pend in checkpoint_write(). */
static void batch_pended_in_group(struct sc_worker *w, struct sc_part *p, const struct sc_cp *after,
                                  int64_t now)
{
    p->cp = *after;
    w->steps++;
    checkpoint_ok(p);
    batch_pended(p, now);
}

/* Pends the batches g[i].c.pend of g[0..ng) in one statement (the commit fields are unused). */
static void pend_group(struct sc_worker *w, struct group_member *g, size_t ng, int64_t now)
{
    struct sc_cp_group_item items[SC_CP_GROUP_MAX];
    group_items(g, ng, items);
    int64_t t0 = sc_mono_ns();
    enum sc_cp_status s = sc_checkpoint_pend_group(&w->db, w->env.pc->name, w->env.cfg->instance_id,
                                                   sc_notify_channel(w->env.notify), items, ng);
    int64_t took = sc_mono_ns() - t0;
    if (s == SC_CP_TRANSIENT || s == SC_CP_FAILED) {
        sc_debug(&g[0].p->log,
                 "grouped pend of %zu partitions refused (SQLSTATE %s: %s); pending them one "
                 "by one",
                 ng, w->db.last_sqlstate, w->db.last_error);
        return; /* nothing changed: each pends alone in service() */
    }
    for (size_t i = 0; i < ng; i++) {
        struct sc_part *p = g[i].p;
        sc_hist_observe_ns(&p->m->checkpoint_seconds, took);
        enum sc_cp_status ps = s == SC_CP_OK ? items[i].status : SC_CP_UNAVAILABLE;
        if (ps == SC_CP_OK) {
            batch_pended_in_group(w, p, &g[i].after, now);
        } else if (ps == SC_CP_FENCED) {
            part_fenced(w, p, "pending a batch", true);
        } else if (ps == SC_CP_CONFLICT) {
            part_fenced(w, p, "the checkpoint changed under us (reset?)", false);
        } else if (ps == SC_CP_UNAVAILABLE && s != SC_CP_OK) {
            /* The statement's outcome is unknown (all or none): compare each row. */
            const struct pend_args *a = &g[i].c.pend;
            sc_checkpoint_apply_pend(&g[i].after, a->first, a->last, a->count, a->checksum,
                                     g[i].after.committed_write_offset);
            int r = reconcile(w, p, &p->cp, &g[i].after);
            if (r == 1)
                batch_pended_in_group(w, p, &g[i].after, now);
            else
                group_reconcile_failed(w, p, r); /* r == 0: service() pends it alone */
        } /* else not matched, and reading why failed: service() pends it alone */
    }
}

/* Pends the new batches of the partitions that have one ready, in groups (see above). */
static void pend_ready_together(struct sc_worker *w)
{
    if ((w->sink->flags & SC_SINK_F_TRANSACTIONAL) || stopping(w))
        return;
    struct group_member g[SC_CP_GROUP_MAX];
    size_t ng = 0;
    int64_t now = sc_mono_ms();
    for (struct sc_part *p = w->parts; p; p = p->next) {
        /* What deliver_one() would pend now, with service()'s conditions for getting there. */
        if (p->state != SC_PART_ACTIVE || p->written || p->cp.has_pending || p->replay ||
            now < p->retry_at_ms || atomic_load(&p->control_changed) ||
            atomic_load(&p->lease_valid_until_ms) < now)
            continue;
        size_t n = cut_batch(w, p, 0, now, due_mode(w));
        if (n == 0)
            continue;
        g[ng++] = (struct group_member){
            .p = p,
            .c = {.and_pend = true,
                  .pend = {rec_at(p, 0)->offset, rec_at(p, n - 1)->offset, (int32_t)n,
                           batch_checksum(p, 0, n)}},
        };
        if (ng == SC_CP_GROUP_MAX) {
            pend_group(w, g, ng, now);
            ng = 0;
        }
    }
    if (ng >= 2)
        pend_group(w, g, ng, now);
}

static void service(struct sc_worker *w, struct sc_part *p)
{
    int64_t now = sc_mono_ms();
    if (p->state != SC_PART_FENCED && atomic_exchange(&p->control_changed, false)) {
        /* Between batches: commit a written batch first (refused if the operator moved the
         * row: then it is replayed), so nothing is half done.  Re-read the row under a new
         * epoch. */
        if (p->written && p->state == SC_PART_ACTIVE)
            finish_bounded(w, p, now);
        part_fenced(w, p, "an operator changed the checkpoint", false);
        return;
    }
    if (p->state == SC_PART_STARTING) {
        if (now < p->retry_at_ms)
            return;
        part_start(w, p, now);
        if (p->state != SC_PART_ACTIVE)
            return;
    }
    if (p->state == SC_PART_ERROR && now >= p->error_poll_ms) {
        /* An operator may have reset the row (SQL or `sidecar reset`): look again. */
        p->error_poll_ms = now + ERROR_POLL_MS;
        struct sc_cp_key k = key_of(w, p);
        struct sc_cp row;
        if (sc_checkpoint_load(&w->db, &k, &row) != SC_CP_OK)
            return;
        if (row.epoch != p->cp.epoch || (!row.error && !p->error_unrecorded)) {
            atomic_store(&p->m->error, 0);
            p->error_unrecorded = false;
            part_fenced(w, p, "the error state was cleared", false);
        } else if (p->error_unrecorded) {
            /* PostgreSQL refused to record it (the cause may refuse every write): again. */
            enum sc_cp_status s = sc_checkpoint_fail(&w->db, &k, &p->cp, p->error_msg);
            if (s == SC_CP_OK) {
                p->error_unrecorded = false;
                sc_info(&p->log, "error state recorded in PostgreSQL");
            } else if (s == SC_CP_FENCED || s == SC_CP_CONFLICT) {
                atomic_store(&p->m->error, 0);
                p->error_unrecorded = false;
                part_fenced(w, p, "while recording an error", s == SC_CP_FENCED);
            }
        }
        return;
    }
    if (p->state != SC_PART_ACTIVE || now < p->retry_at_ms)
        return;
    if (atomic_load(&p->lease_valid_until_ms) < now) {
        /* Renewal is late (PostgreSQL down? this process stopped?): write nothing we might
         * not own.  A written batch is durable already: commit it (see finish_bounded()). */
        if (p->written)
            finish_bounded(w, p, now);
        return;
    }
    if (w->sink->flags & SC_SINK_F_TRANSACTIONAL) {
        deliver_transactional(w, p, now);
        return;
    }

    deliver_one(w, p, now, false);
}

/* ---- messages ------------------------------------------------------------ */

/*
 * The worker's partitions by topic and partition, for dispatch(): an open
 * addressing table (linear probing, at most half full), rebuilt when a
 * partition goes, and the last partition found, since a fetch delivers a
 * run of one partition's records.  A list walk per record cost time in
 * proportion to the partitions a worker owns (bench/ --scale).
 */
static size_t part_hash(const char *topic, int32_t partition)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const char *c = topic; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ULL;
    return (size_t)(h ^ (uint64_t)(uint32_t)partition * 0x9E3779B97F4A7C15ULL);
}

static void index_put(struct sc_worker *w, struct sc_part *p)
{
    size_t mask = w->nslots - 1;
    size_t i = part_hash(p->topic, p->partition) & mask;
    while (w->slots[i])
        i = (i + 1) & mask;
    w->slots[i] = p;
}

static void index_rebuild(struct sc_worker *w)
{
    size_t n = 0;
    for (struct sc_part *p = w->parts; p; p = p->next)
        n++;
    size_t want = 16;
    while (want < 2 * n)
        want *= 2;
    if (want != w->nslots) {
        free(w->slots);
        w->slots = sc_xcalloc(want, sizeof(*w->slots));
        w->nslots = want;
    } else {
        memset(w->slots, 0, w->nslots * sizeof(*w->slots));
    }
    for (struct sc_part *p = w->parts; p; p = p->next)
        index_put(w, p);
    w->last_found = NULL;
}

static struct sc_part *find_part(struct sc_worker *w, const char *topic, int32_t partition)
{
    struct sc_part *p = w->last_found;
    if (p && p->partition == partition && strcmp(p->topic, topic) == 0)
        return p;
    if (w->nslots == 0)
        return NULL;
    size_t mask = w->nslots - 1;
    for (size_t i = part_hash(topic, partition) & mask; (p = w->slots[i]) != NULL;
         i = (i + 1) & mask)
        if (p->partition == partition && strcmp(p->topic, topic) == 0)
            return w->last_found = p;
    return NULL;
}

static void process_inbox(struct sc_worker *w);

static void on_consume_error(struct sc_worker *w, struct sc_part *p, rd_kafka_message_t *m)
{
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
        return;
    if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET ||
        m->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE) {
        if (p->written && p->state == SC_PART_ACTIVE) {
            /* The written batch is durable and was read: commit it, so the error (and a
             * reset after it) starts after it rather than dropping it from the sink. */
            finish_bounded(w, p, sc_mono_ms());
            if (p->state != SC_PART_ACTIVE)
                return; /* fenced meanwhile */
        }
        char msg[512];
        if (p->replay || p->cp.has_pending)
            snprintf(msg, sizeof(msg),
                     "pending batch [%" PRId64 "..%" PRId64 "] is no longer readable from Kafka "
                     "(%s): records deleted by retention or the topic was recreated",
                     p->cp.pending_first, p->cp.pending_last, rd_kafka_message_errstr(m));
        else
            snprintf(msg, sizeof(msg),
                     "checkpoint offset %" PRId64 " is out of range in Kafka (%s): records "
                     "deleted by retention or the topic was recreated",
                     p->next_expected, rd_kafka_message_errstr(m));
        atomic_store(&p->fetch_stopped, true); /* librdkafka stopped fetching it */
        part_error(w, p, msg);
        return;
    }
    sc_warn(&p->log, "consumer error: %s", rd_kafka_message_errstr(m));
}

static void dispatch(struct sc_worker *w, rd_kafka_message_t *m, int64_t now)
{
    const char *topic = m->rkt ? rd_kafka_topic_name(m->rkt) : NULL;
    struct sc_part *p = topic ? find_part(w, topic, m->partition) : NULL;
    if (!p && topic) {
        /* An ADD is always posted before the partition is assigned: take it now. */
        process_inbox(w);
        p = find_part(w, topic, m->partition);
    }
    if (p &&
        (p->state == SC_PART_FENCED || p->state == SC_PART_ERROR || p->state == SC_PART_PAUSED)) {
        /* It may have been re-acquired meanwhile: take the news before judging m. */
        unsigned gen = p->seek_gen;
        process_inbox(w);
        p = find_part(w, topic, m->partition);
        if (p && p->seek_gen != gen) {
            rd_kafka_message_destroy(m); /* dequeued before that seek: stale */
            return;
        }
    }
    if (!p) {
        if (m->err)
            sc_warn(NULL, "consumer error: %s", rd_kafka_message_errstr(m));
        rd_kafka_message_destroy(m);
        return;
    }
    if (m->err) {
        if (p->state == SC_PART_ACTIVE || p->state == SC_PART_STARTING)
            on_consume_error(w, p, m);
        rd_kafka_message_destroy(m);
        return;
    }
    if ((p->state != SC_PART_ACTIVE && p->state != SC_PART_STARTING) ||
        m->offset < p->next_expected) {
        rd_kafka_message_destroy(m); /* not ours any more, or already buffered */
        return;
    }
    p->next_expected = m->offset + 1;
    sc_counter_add(&p->m->records_consumed, 1);
    buf_push(w, p, m, now);
    rd_kafka_message_destroy(m);
}

/* ---- partition add / remove ------------------------------------------- */

static void take_handover(struct sc_part *p)
{
    p->cp = p->handover_cp;
    p->cp.epoch = p->handover_epoch;
    p->state = SC_PART_STARTING;
    p->sink_recovered = false;
    p->replay = false;
    p->written = false;
    p->full_cut_ms = 0;
    p->retry_at_ms = 0;
    p->next_expected = p->start_offset >= 0 ? p->start_offset : 0;
    sc_backoff_init(&p->backoff, 100, 30000);
    sc_backoff_init(&p->cp_backoff, 100, 5000);
    p->cp_retries = 0;
    p->error_unrecorded = false;
}

static void part_added(struct sc_worker *w, struct sc_part *p)
{
    sc_partbuf_init(&p->buf, (size_t)w->budget.batch_max_records, w->budget.batch_max_bytes,
                    &w->slabs);
    take_handover(p);
    p->next = w->parts;
    w->parts = p;
    w->nparts_listed++;
    if (2 * w->nparts_listed > w->nslots)
        index_rebuild(w);
    else
        index_put(w, p);
    if (p->handover_waiting) {
        /* Assigned by Kafka but its lease is not ours yet (held by another live instance, or
         * its row locked): paused, it fetches nothing until the consumer thread acquires it
         * and hands it over again (OP_REACQUIRED). */
        p->state = SC_PART_FENCED;
        atomic_store(&p->not_fetching, true);
        return;
    }
    atomic_store(&p->m->owned, 1);
}

static void part_reacquired(struct sc_worker *w, struct sc_part *p)
{
    /* Re-acquired after fencing or after an operator changed the row (reset, retry, a cleared
     * error): the destination may have changed too (a file deleted or moved away, a reset that
     * starts a new file at write offset 0), so part_start() opens it afresh instead of writing
     * through a handle to what used to be there. */
    if (p->sink_part && w->sink->type->part_close)
        w->sink->type->part_close(w->sink, p->sink_part);
    p->sink_part = NULL;
    sc_partbuf_clear(&p->buf);
    take_handover(p);
    atomic_store(&p->m->owned, 1);
    if (!p->handover_seek) {
        /* The consumer thread re-assigned the partition at the start offset. */
        sc_info(&p->log,
                "lease re-acquired with epoch %" PRId64 "; fetching again from offset %" PRId64,
                p->cp.epoch, p->start_offset);
        return;
    }
    /* Start reading again at the checkpoint: the seek drops what was fetched before. */
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset =
        p->start_offset >= 0 ? p->start_offset : RD_KAFKA_OFFSET_BEGINNING;
    p->seek_gen++;
    rd_kafka_error_t *e = rd_kafka_seek_partitions(w->env.rk, l, 10000);
    if (e || l->elems[0].err) {
        sc_warn(&p->log, "seek to offset %" PRId64 " failed: %s", p->start_offset,
                e ? rd_kafka_error_string(e) : rd_kafka_err2str(l->elems[0].err));
        if (e)
            rd_kafka_error_destroy(e);
    }
    rd_kafka_topic_partition_list_destroy(l);
    sc_info(&p->log, "lease re-acquired with epoch %" PRId64 "; resuming at offset %" PRId64,
            p->cp.epoch, p->start_offset);
}

static void part_removed(struct sc_worker *w, struct sc_part *p, const char *reason)
{
    if (p->sink_part && w->sink->type->part_close)
        w->sink->type->part_close(w->sink, p->sink_part);
    p->sink_part = NULL;
    /* librdkafka keeps an application pause across unassign and assign: a partition paused
     * here (backpressure, error state) that comes back to this process would never be fetched
     * again (its next sc_part starts out "not paused", so nothing would resume it). */
    set_paused(w, p, false);
    if (p->state != SC_PART_FENCED && strcmp(reason, "lost") != 0) {
        struct sc_lease_held h = {
            .topic = p->topic, .partition = p->partition, .epoch = p->cp.epoch};
        int released = sc_lease_release_judged(&w->db, w->env.pc->name, w->env.cfg->instance_id,
                                               sc_notify_channel(w->env.notify), &h, 1, reason,
                                               p->release_to, p->release_seen);
        if (released < 0)
            sc_warn(&p->log, "could not release the lease (%s); it expires by itself",
                    w->db.last_error);
        else if (released == 0)
            sc_info(&p->log, "lease not released (%s): epoch %" PRId64 " is no longer ours", reason,
                    p->cp.epoch);
        else if (p->release_to)
            sc_info(&p->log, "lease released (%s) and reserved for %s", reason, p->release_to);
        else
            sc_info(&p->log, "lease released (%s)", reason);
    }
    if (p->removed) {
        if (p->removed_lock)
            pthread_mutex_lock(p->removed_lock);
        atomic_store(p->removed, true);
        if (p->removed_lock)
            pthread_mutex_unlock(p->removed_lock);
    }
    sc_partbuf_free(&p->buf);
    atomic_store(&p->m->owned, 0);
    sc_metrics_set_pending(p->m, 0);
    atomic_store(&p->m->consumer_lag, -1);
    for (struct sc_part **pp = &w->parts; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    w->nparts_listed--;
    index_rebuild(w);
    rd_kafka_queue_destroy(p->queue);
    free(p->topic);
    free(p);
    atomic_fetch_sub(&w->nparts, 1);
}

/*
 * deliver_one() writes one batch per call and may hold a written batch's
 * commit back, so a partition being handed back may have a batch written
 * and not committed, or pended with the last commit and buffered: commit
 * it, or write and commit it, first, so a revocation or a shutdown leaves
 * no replay behind that it can avoid.  Bounded: the consumer thread waits
 * for this in the rebalance callback, where it renews no leases, so
 * checkpoint retries stop after FINISH_BUDGET_MS and whatever is left is
 * the next owner's replay.  A lost partition, or one whose lease is late,
 * gets nothing new written; only its written batch is committed.
 */
static void finish_pending(struct sc_worker *w, struct sc_part *p, const char *reason)
{
    int64_t now = sc_mono_ms();
    if (p->state != SC_PART_ACTIVE || !p->cp.has_pending || p->replay || now < p->retry_at_ms)
        return;
    if (p->written || (strcmp(reason, "lost") != 0 &&
                       atomic_load(&p->lease_valid_until_ms) >= now && pending_span(p) >= 0))
        finish_bounded(w, p, now);
}

static void process_inbox(struct sc_worker *w)
{
    pthread_mutex_lock(&w->lock);
    struct op *ops = w->inbox;
    w->inbox = w->inbox_tail = NULL;
    pthread_mutex_unlock(&w->lock);
    while (ops) {
        struct op *op = ops;
        ops = op->next;
        switch (op->kind) {
        case OP_ADD:
            part_added(w, op->p);
            break;
        case OP_REACQUIRED:
            part_reacquired(w, op->p);
            break;
        case OP_REMOVE:
            finish_pending(w, op->p, op->reason);
            part_removed(w, op->p, op->reason);
            pthread_mutex_lock(&w->lock);
            w->removals_pending--;
            pthread_cond_broadcast(&w->cond);
            pthread_mutex_unlock(&w->lock);
            break;
        }
        free(op);
    }
}

/* ---- thread ---------------------------------------------------------------- */

/* How long the worker may block: until the next batch deadline or retry, at most 100 ms. */
static int next_timeout(struct sc_worker *w)
{
    int64_t now = sc_mono_ms(), wake = now + 100;
    int max_wait = w->env.pc->batch.max_wait_ms;
    for (struct sc_part *p = w->parts; p; p = p->next) {
        if (p->state == SC_PART_STARTING)
            wake = p->retry_at_ms < wake ? p->retry_at_ms : wake;
        if (p->state != SC_PART_ACTIVE || atomic_load(&p->lease_valid_until_ms) < now)
            continue;
        if (p->retry_at_ms > now) {
            wake = p->retry_at_ms < wake ? p->retry_at_ms : wake;
            continue;
        }
        if (p->written) {
            /* Its commit waits until commit_due_at(), the next batch is full, or quiet. */
            size_t n = (size_t)p->cp.pending_count;
            if (stopping(w) || w->starved || ready_count(w, p, n, now, READY_FULL) > 0)
                return 0;
            int64_t due =
                earlier(commit_due_at(w, p), earlier(quiet_at(w, p), aged_at(w, p, n, now)));
            wake = due < wake ? due : wake;
            continue;
        }
        /* A batch can be written now (when stopping, only a pending one is). */
        if (p->cp.has_pending ? pending_span(p) >= 0
                              : !stopping(w) && ready_count(w, p, 0, now, READY_FULL) > 0)
            return 0;
        if (p->buf.len > 0 && !p->cp.has_pending && !stopping(w)) {
            if (w->starved) /* out of memory for more: what is buffered leaves now */
                return 0;
            int64_t due = earlier(rec_at(p, 0)->arrival_ms + max_wait,
                                  earlier(quiet_at(w, p), aged_at(w, p, 0, now)));
            wake = due < wake ? due : wake;
        }
    }
    int64_t t = wake - now;
    if (t <= 0)
        return 0;
    /* Every turn of the loop looks at every partition: with many partitions, whose deadlines
     * fall at different times, wake for a few of them at once (up to 1 ms per 64 partitions,
     * at most a quarter of max_wait_ms later), so the turns stay few. */
    int64_t slack = (int64_t)w->nparts_listed / 64;
    if (slack > max_wait / 4)
        slack = max_wait / 4;
    return (int)(t + slack);
}

/* Sleeps until the next batch deadline or retry (at least 1 ms), or news in the inbox. */
static void wait_for_room(struct sc_worker *w)
{
    int ms = next_timeout(w);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = ts.tv_nsec + (int64_t)(ms > 0 ? ms : 1) * 1000000;
    ts.tv_sec += ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    pthread_mutex_lock(&w->lock);
    if (!w->inbox && !atomic_load(&w->stop))
        pthread_cond_clockwait(&w->cond, &w->lock, CLOCK_MONOTONIC, &ts);
    pthread_mutex_unlock(&w->lock);
}

/*
 * Takes what is queued (up to DRAIN_ROUNDS * BATCH_DRAIN records, without
 * waiting) while the worker is not congested; m, if not NULL, was taken
 * already.  Not while iterating w->parts: dispatch() may take the inbox,
 * which adds and removes partitions.
 */
static void take_queued(struct sc_worker *w, rd_kafka_message_t *m)
{
    rd_kafka_message_t *batch[BATCH_DRAIN];
    int64_t now = sc_mono_ms();
    ssize_t total = 0;
    if (m) {
        dispatch(w, m, now);
        total = 1;
    }
    for (int round = 0; round < DRAIN_ROUNDS && !congested(w); round++) {
        ssize_t n = rd_kafka_consume_batch_queue(w->queue, 0, batch, BATCH_DRAIN);
        for (ssize_t i = 0; i < n; i++)
            dispatch(w, batch[i], now);
        total += n > 0 ? n : 0;
        if (n < BATCH_DRAIN)
            break;
    }
    /* The queue may have been at librdkafka's prefetch limit, which stops fetching its
     * partitions until something wakes the fetcher. */
    if (total >= BATCH_DRAIN)
        for (struct sc_part *p = w->parts; p; p = p->next)
            if (!p->paused && p->state == SC_PART_ACTIVE)
                poke_fetcher(w, p);
}

static void *worker_main(void *arg)
{
    struct sc_worker *w = arg;
    while (!atomic_load(&w->stop)) {
        process_inbox(w);
        /* A full buffer holds the queue back until its partition wrote a batch. */
        rd_kafka_message_t *m =
            congested(w) ? NULL : rd_kafka_consume_queue(w->queue, next_timeout(w));
        /* Take what is queued (up to a bound) before serving the partitions: with the next
         * batch buffered by the time a batch is written, its commit pends the next one in
         * the same statement (one round trip per batch under backlog). */
        if (m)
            take_queued(w, m);
        uint64_t steps = w->steps;
        commit_written_together(w);
        pend_ready_together(w);
        if (w->sink->type->write_group && (w->sink->flags & SC_SINK_F_TRANSACTIONAL) &&
            !w->decoding)
            deliver_txn_group(w);
        for (struct sc_part *p = w->parts; p; p = p->next) {
            size_t len = p->buf.len;
            int64_t t0 = sc_mono_ms();
            service(w, p);
            pause_if_stuck(w, p, len, sc_mono_ms() - t0);
        }
        /* Writing the batches took a while, in which librdkafka's queue filled up to its
         * prefetch limit and its fetcher stopped: empty it before the syncs and the next
         * commit, so that fetching goes on meanwhile.  Under the memory budget the worker
         * otherwise waited for fetches after every round of writes (the file sink drained
         * 1M records 1.21 x as fast with this, docs/benchmarks.md#lulls). */
        if (w->steps != steps)
            take_queued(w, NULL);
        sync_written_all(w);
        /* Held back and nothing delivered (a sink in retry backoff, PostgreSQL away): wait
         * for the next deadline instead of turning round at once. */
        if (w->steps == steps && congested(w))
            wait_for_room(w);
    }
    process_inbox(w);
    return NULL;
}

struct sc_worker *sc_worker_new(const struct sc_worker_env *env, int id, char *err, size_t errsize)
{
    struct sc_worker *w = sc_xcalloc(1, sizeof(*w));
    w->env = *env;
    w->id = id;
    const struct sc_config *cfg = env->cfg;
    snprintf(w->name, sizeof(w->name), "kafka-sidecar/%s/worker-%d", env->pc->name, id);
    w->sink = sc_sink_new(cfg, env->pc, id, err, errsize);
    if (!w->sink) {
        free(w);
        return NULL;
    }
    const struct sc_formats *f = &env->pc->formats;
    w->decoding = sc_format_is_framed(f->value) || sc_format_is_framed(f->key);
    if (f->value == SC_VALUE_AVRO || f->key == SC_VALUE_AVRO) {
        w->registry = sc_registry_acquire(env->pc->registry, err, errsize);
        if (!w->registry) {
            sc_sink_free(w->sink);
            free(w);
            return NULL;
        }
    }
    /* No maximum of its own: a batch holds at most max_records keys and values, each at most
     * DECODED_MAX_RECORD decoded. */
    sc_buf_init(&w->decoded, 0);
    w->queue = rd_kafka_queue_new(env->rk);
    sc_budget_derive(cfg, env->pc, &w->budget);
    sc_budget_feedback_init(&w->feedback);
    /* The spare slabs are outside the buffers' share: the budget's slack (sc_budget.h). */
    w->slabs.max_free = (size_t)(w->budget.worker_buffer / 8 / SC_SLAB_SIZE);
    sc_buf_init(&w->dead_env, 0);
    sc_db_init(&w->db, cfg->postgres.dsn, cfg->postgres.schema, w->name,
               cfg->postgres.connect_timeout_ms);
    /* A worker stalled inside the postgres sink's transaction holds its checkpoint row
     * locked, and the next owner's lease acquisition waits on that lock: once the lease
     * has expired, the server ends the stalled session (the next owner fences it anyway). */
    w->db.idle_tx_timeout_ms = env->pc->lease.ttl_ms;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    sc_parallel_init(&w->syncers);
    if (w->sink->type->write_group)
        w->txn = sc_xcalloc(TXN_MAX_BATCHES, sizeof(*w->txn));
    return w;
}

int sc_worker_start(struct sc_worker *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        return -1;
    w->started = true;
    return 0;
}

rd_kafka_queue_t *sc_worker_queue(struct sc_worker *w)
{
    return w->queue;
}

void sc_worker_stop(struct sc_worker *w)
{
    if (!w)
        return;
    atomic_store(&w->stop, true);
    if (w->started) {
        pthread_mutex_lock(&w->lock);
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
        rd_kafka_queue_yield(w->queue);
        pthread_join(w->thread, NULL);
    }
    sc_parallel_destroy(&w->syncers);
    free(w->sync_jobs);
    for (size_t i = 0; w->txn && i < TXN_MAX_BATCHES; i++) {
        sc_batch_result_clear(&w->txn[i].res);
        free(w->txn[i].res.dead);
    }
    free(w->txn);
    /* Partitions the consumer thread never got to remove (hard shutdown). */
    while (w->parts)
        part_removed(w, w->parts, "shutdown");
    sc_slabpool_drain(&w->slabs);
    sc_batch_result_clear(&w->result);
    free(w->result.dead);
    sc_batch_result_clear(&w->bad);
    free(w->bad.dead);
    sc_batch_result_clear(&w->merged);
    free(w->merged.dead);
    free(w->send);
    free(w->send_map);
    free(w->json_at);
    sc_buf_free(&w->decoded);
    sc_registry_release(w->registry);
    free(w->recs);
    free(w->hdrs);
    free(w->push_hdrs);
    free(w->slots);
    free(w->dead);
    sc_buf_free(&w->dead_env);
    sc_sink_free(w->sink);
    rd_kafka_queue_destroy(w->queue);
    sc_db_close(&w->db);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w);
}
