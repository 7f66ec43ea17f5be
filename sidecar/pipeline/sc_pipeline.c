/*
 * sc_pipeline.c - a pipeline's consumer thread: the librdkafka poll loop,
 * the rebalance callback, lease acquisition, renewal and release.
 *
 * On assignment, PostgreSQL is the source of truth: the callback acquires
 * the lease of every new partition (one statement for all of them, waiting
 * while another live owner still holds one), reads its checkpoint in the
 * same statement, and assigns each partition at its pending batch's first
 * offset (a replay) or its committed offset.  Only then does librdkafka
 * start fetching it.  The partition's fetch queue is forwarded to the queue
 * of the worker it is pinned to before the assignment, so no record ever
 * reaches another queue.
 *
 * On revocation the callback asks the workers to finish (commit what they
 * have written, abandon what they have not), release the leases and drop
 * the partitions, waiting a bounded time, then unassigns.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/sc_failpoint.h"
#include "base/sc_log.h"
#include "base/sc_metrics.h"
#include "pipeline/sc_budget.h"
#include "pipeline/sc_part.h"
#include "pipeline/sc_pipeline.h"
#include "pipeline/sc_worker.h"
#include "protocol/sc_lease.h"

/* Properties the sidecar sets itself (the config loader rejects them from users). */
static const char *const managed[][2] = {
    {"enable.auto.commit", "false"},
    {"enable.auto.offset.store", "false"},
    {"enable.partition.eof", "false"},
    /* PostgreSQL says where to start; an offset Kafka no longer has is an error, never a
     * silent jump (I5). */
    {"auto.offset.reset", "error"},
};

static struct sc_log_fields pl_log(const struct sc_pipeline *pl)
{
    return (struct sc_log_fields){.pipeline = pl->pc->name, .partition = -1};
}

/* Lease validity the workers may rely on after a renewal sent at t. */
static int64_t valid_until(const struct sc_pipeline *pl, int64_t sent_ms)
{
    return sent_ms + pl->pc->lease.ttl_ms - pl->pc->lease.renew_ms;
}

/* ---- librdkafka callbacks --------------------------------------------- */

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    struct sc_pipeline *pl = rd_kafka_opaque(rk);
    struct sc_log_fields f = {.pipeline = pl ? pl->pc->name : NULL, .partition = -1};
    enum sc_log_level l = level <= 3   ? SC_LOG_ERROR
                          : level <= 5 ? SC_LOG_WARN
                          : level == 6 ? SC_LOG_INFO
                                       : SC_LOG_DEBUG;
    sc_log(l, &f, "kafka: %s: %s", fac, buf);
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct sc_pipeline *pl = opaque;
    struct sc_log_fields f = pl_log(pl);
    (void)rk;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        atomic_store(&pl->kafka_up, false);
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char buf[512];
        rd_kafka_fatal_error(rk, buf, sizeof(buf));
        sc_error(&f, "kafka: fatal error: %s", buf);
        atomic_store(&pl->exit_code, 1);
        return;
    }
    sc_warn(&f, "kafka: %s: %s", rd_kafka_err2name(err), reason);
}

/* Statistics (every 5 s) tell whether any broker connection is up, for /readyz. */
static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    (void)rk;
    struct sc_pipeline *pl = opaque;
    json_error_t e;
    json_t *j = json_loadb(json, len, 0, &e);
    bool up = false;
    const char *name;
    json_t *b;
    json_object_foreach(json_object_get(j, "brokers"), name, b)
    {
        const char *state = json_string_value(json_object_get(b, "state"));
        if (json_integer_value(json_object_get(b, "nodeid")) >= 0 && state &&
            strcmp(state, "UP") == 0)
            up = true;
    }
    json_decref(j);
    atomic_store(&pl->kafka_up, up);
    return 0; /* librdkafka frees json */
}

static void commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk, (void)offsets;
    struct sc_pipeline *pl = opaque;
    struct sc_log_fields f = pl_log(pl);
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        sc_debug(&f, "mirroring offsets to Kafka failed: %s (PostgreSQL stays authoritative)",
                 rd_kafka_err2str(err));
}

/* ---- partitions ------------------------------------------------------- */

static struct sc_part *find_part(struct sc_pipeline *pl, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < pl->nparts; i++)
        if (pl->parts[i]->partition == partition && strcmp(pl->parts[i]->topic, topic) == 0)
            return pl->parts[i];
    return NULL;
}

static void forget_part(struct sc_pipeline *pl, struct sc_part *p)
{
    pthread_mutex_lock(&pl->lock);
    for (size_t i = 0; i < pl->nparts; i++)
        if (pl->parts[i] == p) {
            pl->parts[i] = pl->parts[--pl->nparts];
            break;
        }
    pthread_mutex_unlock(&pl->lock);
}

static struct sc_worker *least_loaded(struct sc_pipeline *pl)
{
    struct sc_worker *best = pl->workers[0];
    for (int i = 1; i < pl->nworkers; i++)
        if (sc_worker_nparts(pl->workers[i]) < sc_worker_nparts(best))
            best = pl->workers[i];
    return best;
}

/*
 * Acquires the leases of reqs, waiting while another live owner holds some
 * (never taking a live lease), retrying while PostgreSQL is down, and
 * renewing the leases we already hold meanwhile.  Returns false if the
 * process is shutting down first.
 */
static void renew_leases(struct sc_pipeline *pl);

static bool acquire_all(struct sc_pipeline *pl, struct sc_lease_req *reqs, size_t n)
{
    struct sc_log_fields f = pl_log(pl);
    struct sc_backoff bo;
    sc_backoff_init(&bo, 100, 5000);
    size_t left = n;
    int64_t last_log = 0;
    struct sc_lease_req *todo = sc_xcalloc(n, sizeof(*todo));
    while (left > 0) {
        if (atomic_load(pl->stop)) {
            free(todo);
            return false;
        }
        /* Ask again only for the ones we do not have yet. */
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (!reqs[i].acquired)
                todo[m++] = reqs[i];
        bool unavailable = false;
        if (sc_lease_acquire(&pl->db, pl->pc->name, pl->cfg->instance_id, pl->pc->lease.ttl_ms,
                             sc_notify_channel(&pl->notify), todo, m, &unavailable) != 0) {
            sc_sleep_ms(sc_backoff_next(&bo), pl->stop);
            renew_leases(pl);
            continue;
        }
        sc_backoff_reset(&bo);
        atomic_store(&pl->db_ok_ms, sc_mono_ms());
        int64_t wait = pl->pc->lease.renew_ms;
        for (size_t j = 0; j < m; j++) {
            for (size_t i = 0; i < n; i++) {
                if (reqs[i].partition != todo[j].partition ||
                    strcmp(reqs[i].topic, todo[j].topic) != 0)
                    continue;
                reqs[i] = todo[j];
                if (reqs[i].acquired) {
                    left--;
                } else {
                    int64_t ms = todo[j].holder_ms;
                    if (ms < wait)
                        wait = ms < 50 ? 50 : ms;
                    if (sc_mono_ms() - last_log >= 5000) {
                        struct sc_log_fields pf = {pl->pc->name, todo[j].topic, todo[j].partition};
                        sc_info(&pf,
                                "lease is held by %s (epoch %" PRId64 ") for another %" PRId64
                                " ms; waiting for it to be released or to expire",
                                todo[j].holder[0] ? todo[j].holder : "another instance",
                                todo[j].epoch, ms > 0 ? ms : 0);
                    }
                }
            }
        }
        if (left > 0) {
            if (sc_mono_ms() - last_log >= 5000)
                last_log = sc_mono_ms();
            sc_sleep_ms(wait, pl->stop);
            renew_leases(pl);
        }
    }
    free(todo);
    sc_failpoint("after_lease");
    (void)f;
    return true;
}

/* Where to start fetching a freshly leased partition, resolving start_from. */
static int64_t start_offset(struct sc_pipeline *pl, struct sc_lease_req *r, int64_t *persist)
{
    *persist = -1;
    if (r->cp.has_pending)
        return r->cp.pending_first;
    if (r->cp.has_committed)
        return r->cp.committed_offset;
    if (pl->pc->start_from == SC_START_EARLIEST)
        return RD_KAFKA_OFFSET_BEGINNING;
    /* latest: resolve now and let the worker persist it before it delivers anything, so a
     * crash before the first commit does not skip what was produced in between. */
    int64_t lo = 0, hi = 0;
    struct sc_backoff bo;
    sc_backoff_init(&bo, 200, 5000);
    while (!atomic_load(pl->stop)) {
        rd_kafka_resp_err_t err =
            rd_kafka_query_watermark_offsets(pl->rk, r->topic, r->partition, &lo, &hi, 5000);
        if (!err)
            break;
        struct sc_log_fields f = {pl->pc->name, r->topic, r->partition};
        sc_warn(&f, "could not query the high watermark for start_from latest: %s; retrying",
                rd_kafka_err2str(err));
        sc_sleep_ms(sc_backoff_next(&bo), pl->stop);
    }
    *persist = hi;
    return hi;
}

static void assign_partitions(struct sc_pipeline *pl, rd_kafka_topic_partition_list_t *parts)
{
    struct sc_log_fields f = pl_log(pl);
    size_t n = (size_t)parts->cnt;
    struct sc_lease_req *reqs = sc_xcalloc(n ? n : 1, sizeof(*reqs));
    for (size_t i = 0; i < n; i++) {
        reqs[i].topic = parts->elems[i].topic;
        reqs[i].partition = parts->elems[i].partition;
    }
    if (n > 0 && !acquire_all(pl, reqs, n)) {
        /* Shutting down while waiting: take nothing. */
        free(reqs);
        if (!pl->cooperative)
            rd_kafka_assign(pl->rk, NULL);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct sc_lease_req *r = &reqs[i];
        int64_t persist;
        int64_t start = start_offset(pl, r, &persist);
        parts->elems[i].offset = start;

        struct sc_part *p = sc_xcalloc(1, sizeof(*p));
        p->topic = sc_xstrdup(r->topic);
        p->partition = r->partition;
        p->log = (struct sc_log_fields){pl->pc->name, p->topic, p->partition};
        p->m = sc_metrics_part(pl->pc->name, p->topic, p->partition);
        p->lease_epoch = r->epoch;
        p->control_seq = r->cp.control_seq;
        p->handover_cp = r->cp;
        p->handover_epoch = r->epoch;
        p->start_offset = start >= 0 ? start : -1;
        atomic_store(&p->lease_valid_until_ms, valid_until(pl, sc_mono_ms()));
        p->worker = least_loaded(pl);
        p->queue = rd_kafka_queue_get_partition(pl->rk, p->topic, p->partition);
        rd_kafka_queue_forward(p->queue, sc_worker_queue(p->worker));
        pthread_mutex_lock(&pl->lock);
        if (pl->nparts == pl->parts_cap) {
            pl->parts_cap = pl->parts_cap ? pl->parts_cap * 2 : 16;
            pl->parts = sc_xrealloc(pl->parts, pl->parts_cap * sizeof(*pl->parts));
        }
        pl->parts[pl->nparts++] = p;
        pthread_mutex_unlock(&pl->lock);
        if (start == RD_KAFKA_OFFSET_BEGINNING)
            sc_info(&p->log,
                    "lease acquired (epoch %" PRId64 "); no checkpoint yet, starting at the "
                    "beginning (start_from earliest)",
                    r->epoch);
        else
            sc_info(&p->log, "lease acquired (epoch %" PRId64 "); starting at offset %" PRId64 "%s",
                    r->epoch, start, r->cp.has_pending ? " (pending batch to replay)" : "");
        sc_worker_add(p->worker, p);
    }
    rd_kafka_error_t *e = NULL;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (pl->cooperative)
        e = rd_kafka_incremental_assign(pl->rk, parts);
    else
        err = rd_kafka_assign(pl->rk, parts);
    if (e || err) {
        sc_error(&f, "assigning partitions failed: %s",
                 e ? rd_kafka_error_string(e) : rd_kafka_err2str(err));
        if (e)
            rd_kafka_error_destroy(e);
    }
    free(reqs);
}

/* Asks the workers to drop parts (or every owned partition if parts is NULL) and waits. */
static void drop_partitions(struct sc_pipeline *pl, rd_kafka_topic_partition_list_t *parts,
                            const char *reason, int64_t deadline)
{
    struct sc_log_fields f = pl_log(pl);
    size_t count = parts ? (size_t)parts->cnt : pl->nparts;
    for (size_t i = 0; i < count; i++) {
        struct sc_part *p =
            parts ? find_part(pl, parts->elems[i].topic, parts->elems[i].partition) : pl->parts[0];
        if (!p)
            continue;
        forget_part(pl, p);
        sc_worker_remove(p->worker, p, reason); /* the worker frees p */
    }
    for (int i = 0; i < pl->nworkers; i++)
        if (sc_worker_wait_removed(pl->workers[i], deadline) != 0)
            sc_warn(&f,
                    "worker %d did not finish its partitions in time; leaving them (their "
                    "pending checkpoints make this a replay, not a loss)",
                    i);
}

static int64_t revoke_deadline(const struct sc_pipeline *pl)
{
    int64_t bound =
        atomic_load(pl->stop) ? pl->cfg->shutdown_timeout_ms * 3 / 4 : pl->pc->lease.ttl_ms;
    return sc_mono_ms() + bound;
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    struct sc_pipeline *pl = opaque;
    struct sc_log_fields f = pl_log(pl);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        atomic_store(&pl->kafka_up, true); /* the group coordinator answered */
        pl->assigned_once = true;
        sc_info(&f, "assigned %d partition%s", parts->cnt, parts->cnt == 1 ? "" : "s");
        assign_partitions(pl, parts);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        bool lost = rd_kafka_assignment_lost(rk);
        sc_info(&f, "%s %d partition%s", lost ? "lost" : "revoked", parts->cnt,
                parts->cnt == 1 ? "" : "s");
        drop_partitions(pl, parts,
                        lost                    ? "lost"
                        : atomic_load(pl->stop) ? "shutdown"
                                                : "revoked",
                        revoke_deadline(pl));
        if (pl->cooperative) {
            rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
            if (e)
                rd_kafka_error_destroy(e);
        } else {
            rd_kafka_assign(rk, NULL);
        }
        return;
    }
    sc_error(&f, "rebalance error: %s", rd_kafka_err2str(err));
    drop_partitions(pl, NULL, "rebalance error", revoke_deadline(pl));
    if (pl->cooperative) {
        rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
        if (e)
            rd_kafka_error_destroy(e);
    } else {
        rd_kafka_assign(rk, NULL);
    }
}

/* ---- leases over time ------------------------------------------------- */

static void renew_leases(struct sc_pipeline *pl)
{
    int64_t now = sc_mono_ms();
    if (now < pl->next_renew_ms)
        return;
    pl->next_renew_ms = now + pl->pc->lease.renew_ms;
    size_t n = 0;
    struct sc_lease_held *held = sc_xcalloc(pl->nparts ? pl->nparts : 1, sizeof(*held));
    struct sc_part **which = sc_xcalloc(pl->nparts ? pl->nparts : 1, sizeof(*which));
    for (size_t i = 0; i < pl->nparts; i++) {
        struct sc_part *p = pl->parts[i];
        if (atomic_load(&p->need_reacquire))
            continue;
        held[n] = (struct sc_lease_held){
            .topic = p->topic, .partition = p->partition, .epoch = p->lease_epoch};
        which[n++] = p;
    }
    if (n == 0) {
        /* Nothing to renew: still find out whether PostgreSQL answers, for /readyz. */
        enum sc_pg_errclass cls;
        PGresult *res = sc_db_exec_once(&pl->db, "SELECT 1", 0, NULL, &cls);
        if (res) {
            PQclear(res);
            atomic_store(&pl->db_ok_ms, now);
        }
    } else if (sc_lease_renew(&pl->db, pl->pc->name, pl->cfg->instance_id, pl->pc->lease.ttl_ms,
                              held, n) == 0) {
        atomic_store(&pl->db_ok_ms, now);
        for (size_t i = 0; i < n; i++) {
            struct sc_part *p = which[i];
            if (held[i].ok) {
                atomic_store(&p->lease_valid_until_ms, valid_until(pl, now));
                if (held[i].control_seq != p->control_seq) {
                    /* reset_checkpoint / pause_partition / resume_partition: the worker
                     * finishes its batch, then the row is re-read. */
                    sc_info(&p->log, "an operator changed the checkpoint (reset, pause or "
                                     "resume); re-reading it");
                    p->control_seq = held[i].control_seq;
                    atomic_store(&p->control_changed, true);
                }
            } else {
                /* Someone else holds a newer epoch: we are fenced, whether or not a worker
                 * was about to write. */
                sc_warn(&p->log,
                        "fenced: lease renewal refused, epoch %" PRId64 " is no longer ours; "
                        "stopping the partition",
                        p->lease_epoch);
                atomic_store(&p->lease_valid_until_ms, 0);
                atomic_store(&p->need_reacquire, true);
                sc_counter_add(&p->m->fenced, 1);
                struct sc_cp_key k = {pl->pc->name, p->topic, p->partition, pl->cfg->instance_id,
                                      sc_notify_channel(&pl->notify)};
                sc_checkpoint_note_fenced(&pl->db, &k, p->lease_epoch, "lease renewal refused");
            }
        }
    } else {
        pl->next_renew_ms = now + 500; /* PostgreSQL trouble: try again soon */
    }
    free(held);
    free(which);
}

/*
 * librdkafka clears a partition queue's forwarding whenever it stops that
 * partition's fetcher, and an application-set forward is not restored when
 * fetching starts again: records would pile up in a queue nobody reads.
 * Forwarding again is idempotent (queued records move over in order), so
 * the consumer thread re-asserts it after any re-assignment and once a
 * second as a safety net.
 */
static void reforward_all(struct sc_pipeline *pl)
{
    for (size_t i = 0; i < pl->nparts; i++)
        rd_kafka_queue_forward(pl->parts[i]->queue, sc_worker_queue(pl->parts[i]->worker));
    pl->next_reforward_ms = sc_mono_ms() + 1000;
}

/*
 * librdkafka stops fetching a partition after an offset-out-of-range error
 * (auto.offset.reset=error), and a seek cannot restart it: assign it again.
 */
static void restart_fetch(struct sc_pipeline *pl, struct sc_part *p, int64_t start)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = start;
    rd_kafka_error_t *e = NULL;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (pl->cooperative) {
        e = rd_kafka_incremental_unassign(pl->rk, l);
        if (!e)
            e = rd_kafka_incremental_assign(pl->rk, l);
    } else {
        /* Eager: assign() replaces the whole assignment.  The other partitions restart from
         * the offsets mirrored to Kafka, which never exceed their PostgreSQL checkpoints:
         * their workers drop what they already have (offset below next_expected). */
        rd_kafka_topic_partition_list_t *all = NULL;
        err = rd_kafka_assignment(pl->rk, &all);
        if (!err) {
            for (int i = 0; i < all->cnt; i++)
                all->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
            rd_kafka_topic_partition_t *t =
                rd_kafka_topic_partition_list_find(all, p->topic, p->partition);
            if (t)
                t->offset = start;
            err = rd_kafka_assign(pl->rk, all);
            rd_kafka_topic_partition_list_destroy(all);
        }
    }
    reforward_all(pl);
    if (e || err)
        sc_warn(&p->log, "could not restart fetching at offset %" PRId64 ": %s", start,
                e ? rd_kafka_error_string(e) : rd_kafka_err2str(err));
    if (e)
        rd_kafka_error_destroy(e);
    rd_kafka_topic_partition_list_destroy(l);
}

/*
 * A worker found its partition fenced (or reset): try, without waiting, to
 * take the lease again; on success the worker reloads the checkpoint and
 * seeks back to it.
 */
static void reacquire_fenced(struct sc_pipeline *pl)
{
    for (size_t i = 0; i < pl->nparts; i++) {
        struct sc_part *p = pl->parts[i];
        if (!atomic_load(&p->need_reacquire))
            continue;
        struct sc_lease_req r = {.topic = p->topic, .partition = p->partition};
        bool unavailable;
        if (sc_lease_acquire(&pl->db, pl->pc->name, pl->cfg->instance_id, pl->pc->lease.ttl_ms,
                             sc_notify_channel(&pl->notify), &r, 1, &unavailable) != 0 ||
            !r.acquired)
            continue;
        int64_t persist;
        int64_t start = start_offset(pl, &r, &persist);
        atomic_store(&p->need_reacquire, false);
        p->lease_epoch = r.epoch;
        p->control_seq = r.cp.control_seq;
        p->handover_cp = r.cp;
        p->handover_epoch = r.epoch;
        p->start_offset = start >= 0 ? start : -1;
        atomic_store(&p->lease_valid_until_ms, valid_until(pl, sc_mono_ms()));
        bool restart = atomic_exchange(&p->fetch_stopped, false);
        p->handover_seek = !restart;
        /* The worker takes the new state first; only then does fetching restart, so
         * nothing fetched for the new position can reach a partition it still thinks is
         * fenced.  (A stopped fetcher has nothing stale in flight.) */
        sc_worker_reacquired(p->worker, p);
        if (restart)
            restart_fetch(pl, p, start);
    }
}

/* $1 pipeline, $2 topics, $3 partitions, $4 low watermarks, $5 high watermarks. */
static const struct sc_stmt st_stats = {
    "sc_partition_stats",
    "INSERT INTO {S}.partition_stats AS s (pipeline, topic, partition, low_watermark,"
    " high_watermark, sampled_at)"
    " SELECT $1, r.topic, r.partition, r.lo, r.hi, now()"
    " FROM unnest($2::text[], $3::int[], $4::bigint[], $5::bigint[]) AS r(topic, partition, lo, hi)"
    " ON CONFLICT (pipeline, topic, partition) DO UPDATE SET low_watermark = "
    "EXCLUDED.low_watermark,"
    "  high_watermark = EXCLUDED.high_watermark, sampled_at = EXCLUDED.sampled_at",
    5,
};

/*
 * Every 5 s: the high watermarks librdkafka learned from its fetches (no
 * broker round trip) go to partition_stats, so `partition_status.lag` works
 * in SQL, and into sidecar_consumer_lag.  Only owned partitions are sampled:
 * a partition that moved away has no lag here (its new owner reports it).
 */
static void sample_watermarks(struct sc_pipeline *pl)
{
    int64_t now = sc_mono_ms();
    if (now < pl->next_watermarks_ms || pl->nparts == 0)
        return;
    pl->next_watermarks_ms = now + 5000;
    size_t n = 0;
    const char **topics = sc_xcalloc(pl->nparts, sizeof(*topics));
    int64_t *parts = sc_xcalloc(pl->nparts, sizeof(*parts));
    int64_t *lo = sc_xcalloc(pl->nparts, sizeof(*lo));
    int64_t *hi = sc_xcalloc(pl->nparts, sizeof(*hi));
    for (size_t i = 0; i < pl->nparts; i++) {
        struct sc_part *p = pl->parts[i];
        int64_t l, h;
        rd_kafka_resp_err_t err =
            atomic_load(&p->not_fetching)
                ? rd_kafka_query_watermark_offsets(pl->rk, p->topic, p->partition, &l, &h, 2000)
                : rd_kafka_get_watermark_offsets(pl->rk, p->topic, p->partition, &l, &h);
        if (err || h < 0)
            continue;
        int64_t committed = atomic_load(&p->m->committed_offset);
        int64_t from = committed >= 0 ? committed : l;
        atomic_store(&p->m->consumer_lag, from >= 0 && h >= from ? h - from : 0);
        topics[n] = p->topic;
        parts[n] = p->partition;
        lo[n] = l;
        hi[n] = h;
        n++;
    }
    if (n > 0) {
        struct sc_buf a, b, c, d;
        sc_buf_init(&a, 0);
        sc_buf_init(&b, 0);
        sc_buf_init(&c, 0);
        sc_buf_init(&d, 0);
        if (sc_pg_array_str(&a, topics, n) == 0 && sc_pg_array_i64(&b, parts, n) == 0 &&
            sc_pg_array_i64(&c, lo, n) == 0 && sc_pg_array_i64(&d, hi, n) == 0) {
            const char *params[] = {pl->pc->name, a.data, b.data, c.data, d.data};
            enum sc_pg_errclass cls;
            PGresult *res = sc_db_exec(&pl->db, &st_stats, params, &cls);
            if (res)
                PQclear(res);
        }
        sc_buf_free(&a);
        sc_buf_free(&b);
        sc_buf_free(&c);
        sc_buf_free(&d);
    }
    free(topics);
    free(parts);
    free(lo);
    free(hi);
}

/*
 * librdkafka (2.0 at least) does not wake a broker's fetcher when one of its
 * partitions becomes fetchable again: neither on resume (handled on its main
 * thread) nor when the application drains a fetch queue that had reached
 * queued.max.messages.kbytes / queued.min.messages.  A fetcher with nothing
 * to fetch sleeps up to a second, so a backlog drained in bursts with most
 * of a second idle in between.  Any request to a broker wakes its thread,
 * which then looks at its partitions again: a ListOffsets for the partitions
 * the workers flagged (one request per leader) is the cheapest there is.
 * It is sent from here, off the workers, at most every POKE_INTERVAL_MS.
 */
#define POKE_INTERVAL_MS 5

static void poke_fetchers(struct sc_pipeline *pl)
{
    int64_t now = sc_mono_ms();
    if (now < pl->next_poke_ms || !atomic_exchange(&pl->fetch_poke, false))
        return;
    pl->next_poke_ms = now + POKE_INTERVAL_MS;
    if (!atomic_load(&pl->kafka_up))
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    for (size_t i = 0; i < pl->nparts; i++) {
        struct sc_part *p = pl->parts[i];
        if (atomic_exchange(&p->poke, false))
            rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset =
                RD_KAFKA_OFFSET_END;
    }
    if (l->cnt > 0)
        (void)rd_kafka_offsets_for_times(pl->rk, l, 500); /* only the request matters */
    rd_kafka_topic_partition_list_destroy(l);
}

static void *consumer_main(void *arg)
{
    struct sc_pipeline *pl = arg;
    struct sc_log_fields f = pl_log(pl);
    rd_kafka_topic_partition_list_t *topics =
        rd_kafka_topic_partition_list_new((int)pl->pc->topics.count);
    for (size_t i = 0; i < pl->pc->topics.count; i++)
        rd_kafka_topic_partition_list_add(topics, pl->pc->topics.items[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(pl->rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (err) {
        sc_error(&f, "could not subscribe: %s", rd_kafka_err2str(err));
        atomic_store(&pl->exit_code, 1);
        return NULL;
    }
    sc_info(&f, "consuming as group \"%s\" (%s rebalancing), %d worker%s", pl->pc->group_id,
            pl->cooperative ? "cooperative" : "eager", pl->nworkers, pl->nworkers == 1 ? "" : "s");
    while (!atomic_load(pl->stop)) {
        int timeout = 100;
        if (atomic_load(&pl->fetch_poke)) {
            int64_t wait = pl->next_poke_ms - sc_mono_ms();
            timeout = wait < 0 ? 0 : (int)wait;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(pl->rk, timeout);
        if (m) {
            if (m->err)
                sc_warn(&f, "kafka: %s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
        }
        poke_fetchers(pl);
        renew_leases(pl);
        reacquire_fenced(pl);
        sample_watermarks(pl);
        if (sc_mono_ms() >= pl->next_reforward_ms)
            reforward_all(pl);
    }
    /* Leaving the group revokes everything through rebalance_cb: workers commit what they
     * wrote and release the leases before we go. */
    sc_info(&f, "shutting down: finishing in-flight batches and releasing leases");
    rd_kafka_consumer_close(pl->rk);
    if (pl->nparts > 0)
        drop_partitions(pl, NULL, "shutdown", revoke_deadline(pl));
    return NULL;
}

/* ---- construction ------------------------------------------------------ */

/* A worker's struct sc_worker_env.wake_fetchers: the consumer thread pokes them. */
static void wake_fetchers(void *arg)
{
    struct sc_pipeline *pl = arg;
    if (!atomic_exchange(&pl->fetch_poke, true))
        rd_kafka_queue_yield(pl->consumer_q);
}

static int set_prop(rd_kafka_conf_t *conf, const char *k, const char *v, char *err, size_t errsize)
{
    char e[256];
    if (rd_kafka_conf_set(conf, k, v, e, sizeof(e)) != RD_KAFKA_CONF_OK) {
        snprintf(err, errsize, "kafka property \"%s\": %s", k, e);
        return -1;
    }
    return 0;
}

struct sc_pipeline *sc_pipeline_new(const struct sc_config *cfg, const struct sc_pipeline_conf *pc,
                                    const atomic_bool *stop, char *err, size_t errsize)
{
    struct sc_pipeline *pl = sc_xcalloc(1, sizeof(*pl));
    pl->cfg = cfg;
    pl->pc = pc;
    pl->stop = stop;
    pthread_mutex_init(&pl->lock, NULL);
    sc_notify_pl_init(&pl->notify, cfg, pc->name);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char client_id[256];
    snprintf(client_id, sizeof(client_id), "kafka-sidecar-%s-%s", cfg->instance_id, pc->name);
    /*
     * Defaults first; users may override them in kafka.properties / kafka_properties.
     *
     * Prefetch: every partition's fetch queue is forwarded to its worker's queue, and
     * librdkafka applies queued.max.messages.kbytes / queued.min.messages to that queue,
     * so they bound what is fetched but not yet taken per worker; those and the fetch
     * sizes come from the memory budget (sc_budget.h).  fetch.wait.max.ms: a fetch in
     * flight holds back partitions resumed meanwhile until the broker answers, which for
     * partitions with nothing new takes this long.
     */
    if (set_prop(conf, "client.id", client_id, err, errsize) ||
        set_prop(conf, "partition.assignment.strategy", "cooperative-sticky", err, errsize) ||
        sc_budget_apply(cfg, pc, conf, err, errsize) ||
        set_prop(conf, "fetch.wait.max.ms", "100", err, errsize) ||
        set_prop(conf, "session.timeout.ms", "10000", err, errsize) ||
        set_prop(conf, "heartbeat.interval.ms", "1000", err, errsize) ||
        set_prop(conf, "statistics.interval.ms", "5000", err, errsize))
        goto fail;
    for (size_t i = 0; i < cfg->kafka.properties.count; i++)
        if (set_prop(conf, cfg->kafka.properties.items[i].key, cfg->kafka.properties.items[i].value,
                     err, errsize))
            goto fail;
    for (size_t i = 0; i < pc->kafka_properties.count; i++)
        if (set_prop(conf, pc->kafka_properties.items[i].key, pc->kafka_properties.items[i].value,
                     err, errsize))
            goto fail;
    if (set_prop(conf, "bootstrap.servers", cfg->kafka.bootstrap_servers, err, errsize) ||
        set_prop(conf, "group.id", pc->group_id, err, errsize))
        goto fail;
    for (size_t i = 0; i < SC_ARRAY_LEN(managed); i++)
        if (set_prop(conf, managed[i][0], managed[i][1], err, errsize))
            goto fail;
    char strategy[256];
    size_t ssz = sizeof(strategy);
    if (rd_kafka_conf_get(conf, "partition.assignment.strategy", strategy, &ssz) ==
        RD_KAFKA_CONF_OK)
        pl->cooperative = strstr(strategy, "cooperative") != NULL;
    rd_kafka_conf_set_opaque(conf, pl);
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(conf, commit_cb);
    rd_kafka_conf_set_stats_cb(conf, stats_cb);
    char e[512];
    pl->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, e, sizeof(e));
    if (!pl->rk) {
        snprintf(err, errsize, "could not create the Kafka consumer: %s", e);
        goto fail; /* conf is still ours: rd_kafka_new only takes it on success */
    }
    conf = NULL;
    rd_kafka_poll_set_consumer(pl->rk);
    pl->consumer_q = rd_kafka_queue_get_consumer(pl->rk);

    char app[128];
    snprintf(app, sizeof(app), "kafka-sidecar/%s/leases", pc->name);
    sc_db_init(&pl->db, cfg->postgres.dsn, cfg->postgres.schema, app,
               cfg->postgres.connect_timeout_ms);

    pl->nworkers = pc->workers;
    pl->workers = sc_xcalloc((size_t)pl->nworkers, sizeof(*pl->workers));
    struct sc_worker_env env = {
        .cfg = cfg,
        .pc = pc,
        .rk = pl->rk,
        .stop = stop,
        .notify = &pl->notify,
        .wake_fetchers = wake_fetchers,
        .wake_arg = pl,
    };
    for (int i = 0; i < pl->nworkers; i++) {
        pl->workers[i] = sc_worker_new(&env, i, err, errsize);
        if (!pl->workers[i])
            goto fail;
    }
    return pl;
fail:
    if (conf)
        rd_kafka_conf_destroy(conf);
    sc_pipeline_free(pl);
    return NULL;
}

int sc_pipeline_start(struct sc_pipeline *pl, char *err, size_t errsize)
{
    for (int i = 0; i < pl->nworkers; i++)
        if (sc_worker_start(pl->workers[i]) != 0) {
            snprintf(err, errsize, "could not start worker thread %d", i);
            return -1;
        }
    if (pthread_create(&pl->thread, NULL, consumer_main, pl) != 0) {
        snprintf(err, errsize, "could not start the consumer thread");
        return -1;
    }
    pl->thread_started = true;
    return 0;
}

void sc_pipeline_join(struct sc_pipeline *pl)
{
    if (pl->thread_started) {
        pthread_join(pl->thread, NULL);
        pl->thread_started = false;
    }
}

void sc_pipeline_free(struct sc_pipeline *pl)
{
    if (!pl)
        return;
    sc_pipeline_join(pl);
    for (int i = 0; i < pl->nworkers; i++)
        sc_worker_stop(pl->workers[i]);
    free(pl->workers);
    free(pl->parts);
    if (pl->consumer_q)
        rd_kafka_queue_destroy(pl->consumer_q);
    /* librdkafka before 2.3.0 aborts in rd_kafka_destroy() when a cooperative-sticky
     * consumer joined its group but never got an assignment (its assignor state is still
     * NULL: librdkafka issue #4312): a SIGTERM during an instance's first rebalance then
     * ended in SIGABRT.  The consumer is closed already (it left the group) and the process
     * is exiting: leave that handle alone. */
    if (pl->rk && pl->cooperative && !pl->assigned_once && rd_kafka_version() < 0x020300ff)
        sc_debug(NULL, "pipeline %s: consumer never assigned; not destroyed (librdkafka #4312)",
                 pl->pc->name);
    else if (pl->rk)
        rd_kafka_destroy(pl->rk);
    if (pl->db.dsn)
        sc_db_close(&pl->db);
    pthread_mutex_destroy(&pl->lock);
    free(pl);
}

bool sc_pipeline_ready(struct sc_pipeline *pl, char *why, size_t whysize)
{
    int64_t now = sc_mono_ms();
    if (!atomic_load(&pl->kafka_up)) {
        snprintf(why, whysize, "pipeline %s: no Kafka broker connection is up", pl->pc->name);
        return false;
    }
    int64_t db_ok = atomic_load(&pl->db_ok_ms);
    if (db_ok == 0 || now - db_ok > 2 * (int64_t)pl->pc->lease.renew_ms + 1000) {
        snprintf(why, whysize, "pipeline %s: PostgreSQL has not answered for %lld ms", pl->pc->name,
                 (long long)(db_ok ? now - db_ok : -1));
        return false;
    }
    bool ok = true;
    pthread_mutex_lock(&pl->lock);
    for (size_t i = 0; i < pl->nparts && ok; i++) {
        struct sc_part *p = pl->parts[i];
        if (atomic_load(&p->m->error)) {
            snprintf(why, whysize, "pipeline %s: partition %s[%d] is in the error state",
                     pl->pc->name, p->topic, (int)p->partition);
            ok = false;
        } else if (atomic_load(&p->need_reacquire) || atomic_load(&p->lease_valid_until_ms) < now) {
            snprintf(why, whysize, "pipeline %s: partition %s[%d] is assigned but not leased",
                     pl->pc->name, p->topic, (int)p->partition);
            ok = false;
        }
    }
    pthread_mutex_unlock(&pl->lock);
    return ok;
}
