/*
 * sc_pipeline.c - a pipeline's consumer thread with "assignment":
 * "kafka-group": the librdkafka poll loop, the rebalance callback, lease
 * acquisition, renewal and release; and what both assignment modes share
 * (sc_pipeline_int.h; lease mode is sc_leasemode.c).
 *
 * On assignment, PostgreSQL is the source of truth: the callback tries once
 * to acquire the lease of every new partition (one statement for all of
 * them), reading its checkpoint in the same statement, and assigns each
 * acquired partition at its pending batch's first offset (a replay) or its
 * committed offset.  A partition whose lease another live instance still
 * holds, or whose row a frozen session has locked, is assigned paused and
 * waits: the poll loop tries again (when the holder's lease runs out, or
 * soon for a locked row) while the other partitions run, and once it has
 * the lease the worker seeks to the checkpoint and resumes.  The partition's
 * fetch queue is forwarded to the queue of the worker it is pinned to before
 * the assignment, so no record ever reaches another queue.
 *
 * On revocation the callback asks the workers to finish (commit what they
 * have written, abandon what they have not), release the leases and drop
 * the partitions, waiting a bounded time, then unassigns.
 *
 * Every renew interval one statement renews the registration of this
 * process and every lease (sc_lease_tick()); control notifications
 * (pause, resume, reset: "<schema>_control") make it renew at once, so an
 * operator's change reaches the owner within a batch.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <jansson.h>

#include "base/sc_failpoint.h"
#include "base/sc_log.h"
#include "base/sc_metrics.h"
#include "pipeline/sc_budget.h"
#include "pipeline/sc_part.h"
#include "pipeline/sc_pipeline.h"
#include "pipeline/sc_pipeline_int.h"
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

/* A locked row (busy) is tried again this soon, then less and less often. */
#define BUSY_RETRY_MS 200
/* A notification triggers a renewal tick at most this often. */
#define NOTE_TICK_MS 50

struct sc_log_fields sc_pl_log(const struct sc_pipeline *pl)
{
    return (struct sc_log_fields){.pipeline = pl->pc->name, .partition = -1};
}

int64_t sc_pl_valid_until(const struct sc_pipeline *pl, int64_t sent_ms)
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
    struct sc_log_fields f = sc_pl_log(pl);
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
    struct sc_log_fields f = sc_pl_log(pl);
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        sc_debug(&f, "mirroring offsets to Kafka failed: %s (PostgreSQL stays authoritative)",
                 rd_kafka_err2str(err));
}

/* ---- partitions ------------------------------------------------------- */

struct sc_part *sc_pl_find_part(struct sc_pipeline *pl, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < pl->nparts; i++)
        if (pl->parts[i]->partition == partition && strcmp(pl->parts[i]->topic, topic) == 0)
            return pl->parts[i];
    return NULL;
}

void sc_pl_forget_part(struct sc_pipeline *pl, struct sc_part *p)
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

int64_t sc_pl_start_offset(struct sc_pipeline *pl, const struct sc_lease_req *r)
{
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
    return hi;
}

/* Gives p the state of acquisition r (the worker takes it over with the next ADD or
 * REACQUIRED); returns where to start fetching. */
static int64_t set_handover(struct sc_pipeline *pl, struct sc_part *p, const struct sc_lease_req *r)
{
    int64_t start = sc_pl_start_offset(pl, r);
    p->lease_epoch = r->epoch;
    p->control_seq = r->cp.control_seq;
    p->handover_cp = r->cp;
    p->handover_epoch = r->epoch;
    p->start_offset = start >= 0 ? start : -1;
    atomic_store(&p->lease_valid_until_ms, sc_pl_valid_until(pl, sc_mono_ms()));
    return start;
}

static void log_acquired(struct sc_part *p, const struct sc_lease_req *r, int64_t start,
                         const char *how)
{
    if (start == RD_KAFKA_OFFSET_BEGINNING)
        sc_info(&p->log,
                "lease acquired%s (epoch %" PRId64 "); no checkpoint yet, starting at the "
                "beginning (start_from earliest)",
                how, r->epoch);
    else
        sc_info(&p->log, "lease acquired%s (epoch %" PRId64 "); starting at offset %" PRId64 "%s",
                how, r->epoch, start, r->cp.has_pending ? " (pending batch to replay)" : "");
}

/* How a partition that could not be acquired waits, and for how long. */
static void set_waiting(struct sc_pipeline *pl, struct sc_part *p, const struct sc_lease_req *r,
                        int64_t now)
{
    int64_t wait = BUSY_RETRY_MS;
    if (r && !r->busy && r->holder[0])
        wait = r->holder_ms < 50                       ? 50
               : r->holder_ms > pl->pc->lease.renew_ms ? pl->pc->lease.renew_ms
                                                       : r->holder_ms;
    p->reacquire_at_ms = now + wait;
}

struct sc_part *sc_pl_add_part(struct sc_pipeline *pl, const char *topic, int32_t partition,
                               const struct sc_lease_req *r, int64_t *start)
{
    struct sc_part *p = sc_xcalloc(1, sizeof(*p));
    p->topic = sc_xstrdup(topic);
    p->partition = partition;
    p->log = (struct sc_log_fields){pl->pc->name, p->topic, p->partition};
    p->m = sc_metrics_part(pl->pc->name, p->topic, p->partition);
    if (r && r->acquired) {
        *start = set_handover(pl, p, r);
        log_acquired(p, r, *start, "");
    } else {
        /* Not ours yet: paused before it is assigned (librdkafka keeps the pause), so it
         * fetches nothing until the worker seeks to its checkpoint and resumes it. */
        p->handover_waiting = true;
        p->paused = true;
        p->start_offset = -1;
        atomic_store(&p->need_reacquire, true);
        set_waiting(pl, p, r, sc_mono_ms());
        *start = RD_KAFKA_OFFSET_END;
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, topic, partition);
        rd_kafka_pause_partitions(pl->rk, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (r && r->busy)
            sc_info(&p->log, "its lease or checkpoint row is locked by another session; "
                             "the other partitions go on, this one waits for the lock");
        else if (r && r->holder[0])
            sc_info(&p->log,
                    "lease is held by %s (epoch %" PRId64 ") for another %" PRId64
                    " ms; waiting for it to be released or to expire",
                    r->holder, r->epoch, r->holder_ms > 0 ? r->holder_ms : 0);
    }
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
    sc_worker_add(p->worker, p);
    return p;
}

static void assign_partitions(struct sc_pipeline *pl, rd_kafka_topic_partition_list_t *parts)
{
    struct sc_log_fields f = sc_pl_log(pl);
    size_t n = (size_t)parts->cnt;
    struct sc_lease_req *reqs = sc_xcalloc(n ? n : 1, sizeof(*reqs));
    for (size_t i = 0; i < n; i++) {
        reqs[i].topic = parts->elems[i].topic;
        reqs[i].partition = parts->elems[i].partition;
    }
    /*
     * One attempt, never a wait here: a partition whose lease is still held (the previous
     * owner has not released it, or died and its lease has not expired) or whose row is
     * locked waits on its own, paused, while the others start at once.
     */
    bool unavailable = false;
    if (n > 0 && sc_lease_acquire(&pl->db, pl->pc->name, pl->cfg->instance_id, pl->pc->lease.ttl_ms,
                                  sc_notify_channel(&pl->notify), reqs, n, &unavailable) == 0)
        atomic_store(&pl->db_ok_ms, sc_mono_ms());
    size_t got = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t start;
        sc_pl_add_part(pl, reqs[i].topic, reqs[i].partition, &reqs[i], &start);
        parts->elems[i].offset = start;
        got += reqs[i].acquired;
    }
    if (got > 0)
        sc_failpoint("after_lease");
    if (got < n)
        sc_info(&f, "%zu of %zu partition%s leased; the others wait for their leases", got, n,
                n == 1 ? "" : "s");
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
    struct sc_log_fields f = sc_pl_log(pl);
    size_t count = parts ? (size_t)parts->cnt : pl->nparts;
    for (size_t i = 0; i < count; i++) {
        struct sc_part *p =
            parts ? sc_pl_find_part(pl, parts->elems[i].topic, parts->elems[i].partition)
                  : pl->parts[0];
        if (!p)
            continue;
        sc_pl_forget_part(pl, p);
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
    struct sc_log_fields f = sc_pl_log(pl);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        pl->never_assigned = false;
        atomic_store(&pl->kafka_up, true); /* the group coordinator answered */
        sc_info(&f, "assigned %d partition%s", parts->cnt, parts->cnt == 1 ? "" : "s");
        assign_partitions(pl, parts);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        if (pl->closing && sc_failpoint_armed("close_yield")) {
            /* Test-only: what a poke during the close did.  The close returns before this
             * revoke is served, and the group waits for an unassign that never comes. */
            rd_kafka_queue_yield(pl->consumer_q);
            return;
        }
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

int sc_pl_register(struct sc_pipeline *pl, char *err, size_t errsize)
{
    struct sc_log_fields f = sc_pl_log(pl);
    char host[256] = "";
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "?");
    host[sizeof(host) - 1] = '\0';
    struct sc_backoff bo;
    sc_backoff_init(&bo, 200, 5000);
    /* A predecessor killed a moment ago may still show as connected for a moment: a short
     * grace period before calling it a second live process. */
    int64_t grace_end = sc_mono_ms() + 3000;
    bool logged = false;
    while (!atomic_load(pl->stop)) {
        bool registered = false, draining = false;
        struct sc_lease_holder holder;
        if (sc_lease_register(&pl->db, &pl->self, host, (int)getpid(), &registered, &draining,
                              &holder) != 0) {
            if (!logged)
                sc_warn(&f, "could not register this instance (%s); retrying", pl->db.last_error);
            logged = true;
            sc_sleep_ms(sc_backoff_next(&bo), pl->stop);
            continue;
        }
        atomic_store(&pl->db_ok_ms, sc_mono_ms());
        if (registered) {
            pl->draining = draining;
            if (draining)
                sc_warn(&f,
                        "instance \"%s\" is drained (drain_instance()): it takes no partitions "
                        "until `sidecar drain --undo` / undrain_instance()",
                        pl->cfg->instance_id);
            return SC_EXIT_OK;
        }
        if (sc_mono_ms() < grace_end) {
            sc_sleep_ms(250, pl->stop);
            continue;
        }
        snprintf(err, errsize,
                 "instance_id \"%s\" is already in use in pipeline \"%s\" by a live process "
                 "(pid %d on host %s, started %s; its registration expires in %" PRId64
                 " ms unless renewed): give every instance its own instance_id (leave "
                 "instance_id out of the config to use the host name)",
                 pl->cfg->instance_id, pl->pc->name, holder.os_pid, holder.host, holder.started_at,
                 holder.expires_ms > 0 ? holder.expires_ms : 0);
        return SC_EXIT_USAGE;
    }
    snprintf(err, errsize, "stopped before the instance was registered");
    return SC_EXIT_FAILURE;
}

/* A lease we held is no longer ours: fenced, whether or not a worker was about to write. */
static void lease_lost(struct sc_pipeline *pl, struct sc_part *p, const char *why)
{
    sc_warn(&p->log, "fenced: %s, epoch %" PRId64 " is no longer ours; stopping the partition", why,
            p->lease_epoch);
    atomic_store(&p->lease_valid_until_ms, 0);
    atomic_store(&p->need_reacquire, true);
    p->reacquire_at_ms = 0;
    sc_counter_add(&p->m->fenced, 1);
    struct sc_cp_key k = {pl->pc->name, p->topic, p->partition, pl->cfg->instance_id,
                          sc_notify_channel(&pl->notify)};
    sc_checkpoint_note_fenced(&pl->db, &k, p->lease_epoch, why);
}

int sc_pl_tick(struct sc_pipeline *pl, struct sc_lease_held *extra, size_t nextra, bool full,
               int known, int share, const char *topic_counts, struct sc_lease_tick *out)
{
    int64_t now = sc_mono_ms();
    pl->last_tick_ms = now;
    size_t n = 0;
    struct sc_lease_held *held = sc_xcalloc(pl->nparts + nextra + 1, sizeof(*held));
    struct sc_part **which = sc_xcalloc(pl->nparts ? pl->nparts : 1, sizeof(*which));
    for (size_t i = 0; i < pl->nparts; i++) {
        struct sc_part *p = pl->parts[i];
        if (atomic_load(&p->need_reacquire))
            continue;
        held[n] = (struct sc_lease_held){
            .topic = p->topic, .partition = p->partition, .epoch = p->lease_epoch};
        which[n++] = p;
    }
    for (size_t i = 0; i < nextra; i++)
        held[n + i] = extra[i];
    struct sc_lease_tick t;
    int rc =
        sc_lease_tick(&pl->db, &pl->self, held, n + nextra, known, share, topic_counts, full, &t);
    for (size_t i = 0; i < nextra; i++)
        extra[i].state = rc == 0 ? held[n + i].state : SC_LEASE_BUSY;
    if (rc == 0 && !t.registered) {
        /* Our registration is not ours: someone deleted it, or another process took this
         * instance_id while we could not renew it.  Register again (refused if the other is
         * alive and connected), and renew at the next tick. */
        char err[512];
        sc_lease_tick_clear(&t);
        int r = sc_pl_register(pl, err, sizeof(err));
        if (r != SC_EXIT_OK) {
            sc_error(&(struct sc_log_fields){pl->pc->name, NULL, -1}, "%s", err);
            atomic_store(&pl->exit_code, r);
        }
        rc = -1;
    }
    pl->tick_busy = 0;
    if (rc == 0) {
        atomic_store(&pl->db_ok_ms, now);
        pl->tick_busy = t.busy + t.self_busy;
        if (pl->tick_busy > 0 && now >= pl->busy_log_ms) {
            sc_info(&(struct sc_log_fields){pl->pc->name, NULL, -1},
                    "%zu lease%s%s not renewed this time: the row is locked by another session "
                    "(an open transaction?); still ours, trying again every half second",
                    t.busy, t.busy == 1 ? "" : "s", t.self_busy ? " and the registration" : "");
            pl->busy_log_ms = now + 30000;
        }
        for (size_t i = 0; i < n; i++) {
            struct sc_part *p = which[i];
            if (held[i].state == SC_LEASE_BUSY) {
                /* Still ours, not renewed: its validity runs on from the last renewal (the
                 * worker stops writing when it ends; the lease lapses if the lock stays). */
            } else if (held[i].state == SC_LEASE_RENEWED) {
                atomic_store(&p->lease_valid_until_ms, sc_pl_valid_until(pl, now));
                if (held[i].control_seq != p->control_seq) {
                    /* reset_checkpoint / pause_partition / resume_partition: the worker
                     * finishes its batch, then the row is re-read. */
                    sc_info(&p->log, "an operator changed the checkpoint (reset, pause or "
                                     "resume); re-reading it");
                    p->control_seq = held[i].control_seq;
                    atomic_store(&p->control_changed, true);
                }
            } else if (held[i].state == SC_LEASE_LAPSED) {
                /* Renewed too late (this process or PostgreSQL stalled for a TTL): the lease
                 * expired, nobody took it.  Stop writing and take it again (a new epoch). */
                sc_warn(&p->log,
                        "lease (epoch %" PRId64 ") expired before it was renewed; taking it "
                        "again",
                        p->lease_epoch);
                atomic_store(&p->lease_valid_until_ms, 0);
                atomic_store(&p->need_reacquire, true);
                p->reacquire_at_ms = 0;
            } else {
                lease_lost(pl, p, "lease renewal refused");
            }
        }
        if (out)
            *out = t;
        else
            sc_lease_tick_clear(&t);
    } else if (out) {
        memset(out, 0, sizeof(*out));
    }
    free(held);
    free(which);
    return rc;
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
 * Waits until librdkafka applied the fetch start of a re-assigned partition:
 * a seek is refused while the old fetcher stops (__PREV_IN_PROGRESS) and
 * until the start is applied (__STATE); one that succeeds was applied after
 * it (see restart_fetch()).
 */
#define RESTART_WAIT_MS 10000

static bool wait_fetch_started(struct sc_pipeline *pl, struct sc_part *p, int64_t start)
{
    int64_t deadline = sc_mono_ms() + RESTART_WAIT_MS;
    for (;;) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = start;
        rd_kafka_error_t *e = rd_kafka_seek_partitions(pl->rk, l, 1000);
        rd_kafka_resp_err_t err = e ? rd_kafka_error_code(e) : l->elems[0].err;
        char why[256];
        snprintf(why, sizeof(why), "%s", e ? rd_kafka_error_string(e) : rd_kafka_err2str(err));
        if (e)
            rd_kafka_error_destroy(e);
        rd_kafka_topic_partition_list_destroy(l);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
            return true;
        bool again = err == RD_KAFKA_RESP_ERR__STATE ||
                     err == RD_KAFKA_RESP_ERR__PREV_IN_PROGRESS ||
                     err == RD_KAFKA_RESP_ERR__TIMED_OUT;
        if (!again || sc_mono_ms() >= deadline) {
            sc_warn(&p->log,
                    "fetching did not restart at offset %" PRId64 " (%s); the worker seeks "
                    "there itself",
                    start, why);
            return false;
        }
        sc_sleep_ms(10, pl->stop);
        if (atomic_load(pl->stop))
            return false;
    }
}

/*
 * librdkafka stops fetching a partition after an offset-out-of-range error
 * (auto.offset.reset=error), and a seek cannot restart it: assign it again.
 *
 * librdkafka 2.0 numbers each pause, resume, seek, fetch start and fetch stop
 * of a partition when the call creates it, on the calling thread, but
 * applies them in the order they reach its main thread, and it discards
 * (silently, for pause and resume) one numbered below the last it applied.
 * A worker's resume numbered just before the fetch start a re-assignment
 * queues, but applied after it, is thus lost: the partition stays paused in
 * librdkafka while the worker believes it resumed, and it is never fetched
 * again (seen in the debug log: "received outdated op PAUSE (v8) ...
 * (opv10)", then nothing).  So the fetch restarts while the partition is
 * still paused (the worker paused it when the error stopped it), and this
 * returns only once librdkafka applied the start (wait_fetch_started()); the
 * worker, told afterwards, resumes with the newest operation of all.
 * Returns false when that could not be confirmed.
 */
static bool restart_fetch(struct sc_pipeline *pl, struct sc_part *p, int64_t start)
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
    bool ok = !e && !err;
    if (e)
        rd_kafka_error_destroy(e);
    rd_kafka_topic_partition_list_destroy(l);
    return ok && wait_fetch_started(pl, p, start);
}

void sc_pl_acquire_waiting(struct sc_pipeline *pl,
                           void (*lost_fn)(struct sc_pipeline *pl, struct sc_part *p,
                                           const char *holder))
{
    int64_t now = sc_mono_ms();
    size_t n = 0;
    struct sc_lease_req *reqs = NULL;
    struct sc_part **which = NULL;
    for (size_t i = 0; i < pl->nparts; i++) {
        struct sc_part *p = pl->parts[i];
        if (!atomic_load(&p->need_reacquire) || p->revoked || now < p->reacquire_at_ms)
            continue;
        if (!reqs) {
            reqs = sc_xcalloc(pl->nparts, sizeof(*reqs));
            which = sc_xcalloc(pl->nparts, sizeof(*which));
        }
        reqs[n] = (struct sc_lease_req){.topic = p->topic, .partition = p->partition};
        which[n++] = p;
    }
    if (n == 0)
        return;
    bool unavailable;
    if (sc_lease_acquire(&pl->db, pl->pc->name, pl->cfg->instance_id, pl->pc->lease.ttl_ms,
                         sc_notify_channel(&pl->notify), reqs, n, &unavailable) != 0) {
        for (size_t i = 0; i < n; i++)
            which[i]->reacquire_at_ms = now + 500; /* PostgreSQL trouble: soon again */
        goto out;
    }
    atomic_store(&pl->db_ok_ms, sc_mono_ms());
    for (size_t i = 0; i < n; i++) {
        struct sc_part *p = which[i];
        struct sc_lease_req *r = &reqs[i];
        if (!r->acquired) {
            set_waiting(pl, p, r, now);
            if (!r->busy && r->holder[0] && strcmp(r->holder, pl->cfg->instance_id) != 0 && lost_fn)
                lost_fn(pl, p, r->holder);
            continue;
        }
        bool waited = p->lease_epoch == 0; /* never leased here yet */
        int64_t start = set_handover(pl, p, r);
        atomic_store(&p->need_reacquire, false);
        bool restart = atomic_exchange(&p->fetch_stopped, false);
        if (waited)
            log_acquired(p, r, start, " after waiting");
        /* A stopped fetcher restarts before the worker is told, while the partition stays
         * paused (nothing fetched reaches the worker before it takes the new state, and its
         * resume comes after all the restart did: see restart_fetch()).  A running one is
         * moved by the worker's seek once it took the new state. */
        p->handover_seek = !restart || !restart_fetch(pl, p, start);
        sc_worker_reacquired(p->worker, p);
    }
out:
    free(reqs);
    free(which);
}

/* A control notification: renew at once when it concerns this pipeline's partitions. */
static void on_note(void *arg, const struct sc_lease_note *note)
{
    struct sc_pipeline *pl = arg;
    if (pl->lm || !note->topic[0] || sc_pl_find_part(pl, note->topic, note->partition))
        pl->tick_now = true;
}

void sc_pl_poll_notes(struct sc_pipeline *pl)
{
    int64_t now = sc_mono_ms();
    if (now >= pl->next_listen_ms) {
        int r = sc_lease_listen(&pl->db, &pl->listen_gen);
        if (r < 0)
            pl->next_listen_ms = now + 1000;
        else if (r == 1)
            pl->tick_now = true; /* a new session: what was announced meanwhile is unheard */
    }
    if (sc_lease_poll_notes(&pl->db, pl->pc->name, on_note, pl) < 0)
        pl->next_listen_ms = 0;
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
        if (p->lease_epoch == 0)
            continue; /* never leased here: its owner reports it */
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

void sc_pl_upkeep(struct sc_pipeline *pl)
{
    poke_fetchers(pl);
    sample_watermarks(pl);
    if (sc_mono_ms() >= pl->next_reforward_ms)
        reforward_all(pl);
}

/* Renews every renew interval, or at once when a notification asked for it. */
static void group_tick(struct sc_pipeline *pl)
{
    int64_t now = sc_mono_ms();
    if (pl->tick_now ? now - pl->last_tick_ms < NOTE_TICK_MS : now < pl->next_renew_ms)
        return;
    pl->tick_now = false;
    pl->next_renew_ms = now + pl->pc->lease.renew_ms;
    if (sc_pl_tick(pl, NULL, 0, false, -1, -1, NULL, NULL) != 0 || pl->tick_busy > 0)
        pl->next_renew_ms = now + 500; /* PostgreSQL trouble or a locked row: again soon */
}

static void *consumer_main(void *arg)
{
    struct sc_pipeline *pl = arg;
    struct sc_log_fields f = sc_pl_log(pl);
    rd_kafka_topic_partition_list_t *topics =
        rd_kafka_topic_partition_list_new((int)pl->pc->topics.count);
    for (size_t i = 0; i < pl->pc->topics.count; i++)
        rd_kafka_topic_partition_list_add(topics, pl->pc->topics.items[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(pl->rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    pl->subscribed = err == RD_KAFKA_RESP_ERR_NO_ERROR;
    if (err) {
        sc_error(&f, "could not subscribe: %s", rd_kafka_err2str(err));
        atomic_store(&pl->exit_code, 1);
        return NULL;
    }
    sc_info(&f, "consuming as group \"%s\" (%s rebalancing), %d worker%s", pl->pc->group_id,
            pl->cooperative ? "cooperative" : "eager", pl->nworkers, pl->nworkers == 1 ? "" : "s");
    while (!atomic_load(pl->stop) && atomic_load(&pl->exit_code) == 0) {
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
        sc_pl_poll_notes(pl);
        group_tick(pl);
        sc_pl_acquire_waiting(pl, NULL);
        sc_pl_upkeep(pl);
    }
    /* Leaving the group revokes everything through rebalance_cb: workers commit what they
     * wrote and release the leases before we go. */
    sc_info(&f, "shutting down: finishing in-flight batches and releasing leases");
    sc_pl_close_consumer(pl);
    if (pl->nparts > 0)
        drop_partitions(pl, NULL, "shutdown", revoke_deadline(pl));
    sc_lease_deregister(&pl->db, &pl->self);
    return NULL;
}

/* ---- construction ------------------------------------------------------ */

/* A worker's struct sc_worker_env.wake_fetchers: the consumer thread pokes them. */
static void wake_fetchers(void *arg)
{
    struct sc_pipeline *pl = arg;
    if (atomic_exchange(&pl->fetch_poke, true))
        return;
    pthread_mutex_lock(&pl->poke_lock);
    if (!pl->closing)
        rd_kafka_queue_yield(pl->consumer_q);
    pthread_mutex_unlock(&pl->poke_lock);
}

/*
 * While rd_kafka_consumer_close() runs, the group's queue (consumer_q) is
 * forwarded to the close's own queue, and a yield on consumer_q ends the
 * close's wait early: the group is then left half terminated, and the
 * second close inside rd_kafka_destroy() waits forever for a reply that
 * went to the first one (SIGTERM hung in chaos_check_random).  So no
 * worker pokes from here on; and a close that still returns unfinished
 * leaves the handle to the process exit rather than to that wait.
 */
void sc_pl_close_consumer(struct sc_pipeline *pl)
{
    pthread_mutex_lock(&pl->poke_lock);
    pl->closing = true;
    pthread_mutex_unlock(&pl->poke_lock);
    rd_kafka_resp_err_t err = rd_kafka_consumer_close(pl->rk);
    if (err != RD_KAFKA_RESP_ERR__UNKNOWN_GROUP && !rd_kafka_consumer_closed(pl->rk)) {
        struct sc_log_fields f = sc_pl_log(pl);
        sc_warn(&f,
                "leaving the consumer group did not finish (%s); the Kafka handle is left to "
                "the process exit",
                rd_kafka_err2str(err));
        pl->close_unfinished = true;
    }
}

/* Whether kafka.properties or the pipeline's kafka_properties set property k. */
static bool user_sets(const struct sc_config *cfg, const struct sc_pipeline_conf *pc, const char *k)
{
    return sc_kvlist_get(&cfg->kafka.properties, k) || sc_kvlist_get(&pc->kafka_properties, k);
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

/*
 * librdkafka before 2.3.0 asserts in rd_kafka_destroy() when its consumer
 * joined a group with the cooperative-sticky assignor but never received an
 * assignment (confluentinc/librdkafka#4312, fixed by #4381): SIGTERM during
 * an instance's first rebalance aborted the process.  Such a consumer is
 * closed (it leaves the group) but not destroyed: the process is exiting.
 */
static atomic_bool kept_consumer;

static bool destroy_would_abort(const struct sc_pipeline *pl)
{
    char strategy[256];
    size_t ssz = sizeof(strategy);
    return pl->pc->assignment == SC_ASSIGN_KAFKA_GROUP && pl->subscribed && pl->never_assigned &&
           rd_kafka_version() < 0x020300ff &&
           rd_kafka_conf_get(rd_kafka_conf(pl->rk), "partition.assignment.strategy", strategy,
                             &ssz) == RD_KAFKA_CONF_OK &&
           strstr(strategy, "cooperative-sticky") != NULL;
}

bool sc_pipeline_kept_consumer(void)
{
    return atomic_load(&kept_consumer);
}

struct sc_pipeline *sc_pipeline_new(const struct sc_config *cfg, const struct sc_pipeline_conf *pc,
                                    const atomic_bool *stop, char *err, size_t errsize)
{
    struct sc_pipeline *pl = sc_xcalloc(1, sizeof(*pl));
    pl->cfg = cfg;
    pl->pc = pc;
    pl->stop = stop;
    pl->never_assigned = true;
    pthread_mutex_init(&pl->lock, NULL);
    pthread_mutex_init(&pl->poke_lock, NULL);
    sc_notify_pl_init(&pl->notify, cfg, pc->name);
    pl->m = sc_metrics_pipeline(pc->name);
    uint64_t inc = 0;
    if (getrandom(&inc, sizeof(inc), 0) != (ssize_t)sizeof(inc))
        inc = (uint64_t)sc_mono_ms() * 2654435761u ^ (uint64_t)getpid();
    pl->self = (struct sc_lease_self){
        .pipeline = pc->name,
        .instance = cfg->instance_id,
        .incarnation = (int64_t)(inc & INT64_MAX),
        .assignment = pc->assignment == SC_ASSIGN_LEASE ? "lease" : "kafka-group",
        .ttl_ms = pc->lease.ttl_ms,
    };

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
    if (sc_budget_reconcile(conf, user_sets(cfg, pc, "fetch.max.bytes"),
                            user_sets(cfg, pc, "message.max.bytes"), err, errsize) ||
        set_prop(conf, "bootstrap.servers", cfg->kafka.bootstrap_servers, err, errsize) ||
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
    /* Lease mode assigns partitions itself, one at a time (no group membership). */
    if (pc->assignment == SC_ASSIGN_LEASE)
        pl->cooperative = true;
    rd_kafka_conf_set_opaque(conf, pl);
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    if (pc->assignment != SC_ASSIGN_LEASE)
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
    if (pc->assignment == SC_ASSIGN_LEASE && sc_leasemode_init(pl, err, errsize) != 0)
        goto fail;
    return pl;
fail:
    if (conf)
        rd_kafka_conf_destroy(conf);
    sc_pipeline_free(pl);
    return NULL;
}

int sc_pipeline_start(struct sc_pipeline *pl, char *err, size_t errsize)
{
    /* On this thread, before the consumer thread owns the lease session. */
    int rc = sc_pl_register(pl, err, errsize);
    if (rc != SC_EXIT_OK)
        return rc;
    for (int i = 0; i < pl->nworkers; i++)
        if (sc_worker_start(pl->workers[i]) != 0) {
            snprintf(err, errsize, "could not start worker thread %d", i);
            return SC_EXIT_FAILURE;
        }
    if (pthread_create(&pl->thread, NULL, pl->lm ? sc_leasemode_main : consumer_main, pl) != 0) {
        snprintf(err, errsize, "could not start the consumer thread");
        return SC_EXIT_FAILURE;
    }
    pl->thread_started = true;
    return SC_EXIT_OK;
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
    sc_leasemode_free(pl);
    if (pl->consumer_q)
        rd_kafka_queue_destroy(pl->consumer_q);
    if (pl->rk && pl->close_unfinished) {
        atomic_store(&kept_consumer, true); /* logged when the close returned */
    } else if (pl->rk && destroy_would_abort(pl)) {
        struct sc_log_fields f = sc_pl_log(pl);
        sc_info(&f,
                "librdkafka %s would abort destroying a consumer that never got an "
                "assignment (librdkafka#4312): leaving it to the exit",
                rd_kafka_version_str());
        atomic_store(&kept_consumer, true);
    } else if (pl->rk) {
        rd_kafka_destroy(pl->rk);
    }
    if (pl->db.dsn)
        sc_db_close(&pl->db);
    pthread_mutex_destroy(&pl->lock);
    pthread_mutex_destroy(&pl->poke_lock);
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
