/*
 * sc_leasemode.c - a pipeline's consumer thread with "assignment": "lease":
 * the instances share the partitions through PostgreSQL alone.  The
 * consumer never joins a Kafka consumer group: it assigns itself the
 * partitions whose leases it holds (rd_kafka_incremental_assign()), finds
 * the topics' partitions in the metadata (and those added later), and
 * mirrors its offsets to Kafka under group_id without membership.
 *
 * NOTES
 * -----
 * What is persisted (sql/005_lease_assignment.sql).  `instances` has a row
 * per process and pipeline, live while expires_at is in the future; `leases`
 * has, besides owner/epoch/expiry, an operator's pin and a handoff: a
 * request that the owner hand the partition to an instance (while the lease
 * is live) or, once released, a reservation for that instance.
 *
 * Every renew interval (jittered between 75% and 100% of lease.renew_ms, so
 * instances do not tick in step) each instance runs one statement,
 * lease_tick(): it renews its registration and the leases it holds (only
 * those still live: a lapsed lease must be acquired again, under a new
 * epoch) and reads the pipeline's lease table and live instances.  The
 * planner (protocol/sc_assign.c, a pure function) then says what to take,
 * what to ask others for, what to hand over and what to decline.  At rest
 * it says nothing and the tick is the only statement.  Notifications on the
 * control channel (a handoff request, a release, an operator action, an
 * instance leaving) make the instances concerned tick at once instead of
 * waiting for their next renewal.
 *
 * A cooperative handoff of partition X from A to B:
 *   1. B asks (request_handoffs()): leases.handoff_to = B, NOTIFY;
 *   2. A, on its next tick (at once, woken by the NOTIFY), grants it: its
 *      worker finishes the batch in flight (commits a written batch, writes
 *      and commits a pended one, pends nothing new: sc_worker.c
 *      finish_pending()), then releases the lease with handoff_to = B as a
 *      reservation (expires_at = now), NOTIFY; only then does A unassign X;
 *   3. B, woken, acquires X (only B may, for one TTL) under a new epoch and
 *      starts at the committed offset: nothing to replay.
 * What a crash at each step leaves behind:
 *   - B dies after 1: A grants and releases a reservation for a dead
 *     instance, which is void (not live): anyone takes X; or A refuses the
 *     request of an instance that is gone.  Nothing was written twice.
 *   - A dies before 2 completes: A's lease expires after the TTL; B (or
 *     whoever's share it fits) takes it with a new epoch and replays A's
 *     pending batch if there is one (I5), exactly as after any crash.
 *   - A is stalled (SIGSTOP, GC pause, partitioned away): it never grants;
 *     its lease expires and B takes X anyway.  If A wakes with a batch in
 *     its hands, its commit names its old epoch and is refused (I4); a write
 *     it finishes is the pending batch B replays, to the same place (I1).
 *   - B dies after 2: the reservation lapses after a TTL (or at once, as B's
 *     registration expires) and X is free for anyone.
 *   - B dies after 3: like any owner's crash.
 * A partition is owned by at most one live lease at any time (the
 * acquisition is conditional on the lease row, locked), and the checkpoint
 * writes are fenced by the epoch, so ownership mistakes (clocks, stale
 * views, a planner bug) can cost a replay, never a duplicate.
 *
 * Failover: a crashed instance's leases and registration expire together,
 * a TTL after its last renewal; the next tick of each survivor (at most a
 * renew interval later) sees them free and takes them, up to its share.
 *
 * Locks: lease_tick() locks the instance row and the renewed lease rows;
 * acquire_leases() locks lease rows, then checkpoint rows; request/refuse
 * lock lease rows; a release locks its one lease row.  Every statement that
 * locks several lease rows locks them first, sorted by (topic, partition),
 * with SKIP LOCKED: no two of them can deadlock, and a row held by another
 * session (an operator's open transaction) is left for a later tick - the
 * tick answers it "busy": still ours, not renewed, its local validity not
 * extended.  Lease before checkpoint, as everywhere (sc_checkpoint.c).
 *
 * A partition being handed over stays in lm->rel, and renewed, until its
 * worker has released it: a batch in flight may outlast the lease's slack.
 * The release carries the handoff request it was decided on; a newer one
 * (an operator's move meanwhile) wins.  An instance cut off from Kafka for
 * about a TTL tells the registry it sees no partitions: it takes no share
 * and hands its partitions to the instances that can reach Kafka.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/sc_log.h"
#include "base/sc_metrics.h"
#include "pipeline/sc_part.h"
#include "pipeline/sc_pipeline.h"
#include "pipeline/sc_pipeline_int.h"
#include "pipeline/sc_worker.h"
#include "protocol/sc_assign.h"
#include "protocol/sc_lease.h"

#define META_INTERVAL_MS 5000

/* A partition of the pipeline's topics, as the metadata shows it. */
struct known {
    const char *topic; /* points into pl->pc->topics */
    int32_t partition;
};

/* A partition being handed over: the worker finishes and releases it, then we unassign.
 * Until then its lease is renewed like any other (a batch in flight may take longer than
 * the lease's slack), through p while done is false, under lm->rel_lock. */
struct releasing {
    char *topic;
    int32_t partition;
    int64_t epoch;     /* the lease to renew; 0: none (lapsed or lost: not renewed) */
    struct sc_part *p; /* valid while !done, under lm->rel_lock (the worker frees it after) */
    char *to;          /* the instance it is reserved for, or NULL */
    char *seen;        /* the lease's handoff request when this was decided, or NULL */
    atomic_bool done;  /* set by the worker once released */
    bool handoff;      /* counts in sidecar_lease_handoffs_total{direction="out"} */
    int64_t since_ms;
    bool warned;
};

struct sc_leasemode {
    rd_kafka_topic_t **rkts;
    int *counts; /* partitions per topic; -1 = not known yet */
    struct known *known;
    size_t nknown;
    bool counts_dirty; /* tell the registry the new counts */
    int64_t next_meta_ms;
    int64_t next_tick_ms;
    bool want_steal; /* the last plan wanted to ask others: this one may (hysteresis) */
    int share;
    int eligible;
    bool was_draining;
    int64_t next_busy_log_ms;       /* "skipped: locked" is logged at most this often */
    int64_t meta_ok_ms;             /* the last metadata read that succeeded */
    rd_kafka_resp_err_t meta_err;   /* the metadata error last logged (0: none) */
    int meta_fails;                 /* metadata reads failed in a row */
    rd_kafka_resp_err_t *topic_err; /* per topic: the error last logged (0: none) */
    bool no_share;                  /* cut off from Kafka: we told the others we see nothing */
    struct releasing **rel;
    size_t nrel, relcap;
    pthread_mutex_t rel_lock; /* a worker sets releasing.done under it */
};

static struct sc_log_fields lm_log(const struct sc_pipeline *pl)
{
    return sc_pl_log(pl);
}

int sc_leasemode_init(struct sc_pipeline *pl, char *err, size_t errsize)
{
    struct sc_leasemode *lm = sc_xcalloc(1, sizeof(*lm));
    size_t nt = pl->pc->topics.count;
    pthread_mutex_init(&lm->rel_lock, NULL);
    lm->rkts = sc_xcalloc(nt, sizeof(*lm->rkts));
    lm->counts = sc_xcalloc(nt, sizeof(*lm->counts));
    lm->topic_err = sc_xcalloc(nt, sizeof(*lm->topic_err));
    for (size_t i = 0; i < nt; i++) {
        lm->counts[i] = -1;
        lm->rkts[i] = rd_kafka_topic_new(pl->rk, pl->pc->topics.items[i], NULL);
        if (!lm->rkts[i]) {
            snprintf(err, errsize, "topic \"%s\": %s", pl->pc->topics.items[i],
                     rd_kafka_err2str(rd_kafka_last_error()));
            pl->lm = lm;
            return -1;
        }
    }
    lm->share = -1;
    pl->lm = lm;
    return 0;
}

void sc_leasemode_free(struct sc_pipeline *pl)
{
    struct sc_leasemode *lm = pl->lm;
    if (!lm)
        return;
    for (size_t i = 0; i < pl->pc->topics.count; i++)
        if (lm->rkts[i])
            rd_kafka_topic_destroy(lm->rkts[i]);
    for (size_t i = 0; i < lm->nrel; i++) {
        free(lm->rel[i]->topic);
        free(lm->rel[i]->to);
        free(lm->rel[i]->seen);
        free(lm->rel[i]);
    }
    free(lm->rel);
    free(lm->rkts);
    free(lm->counts);
    free(lm->topic_err);
    free(lm->known);
    pthread_mutex_destroy(&lm->rel_lock);
    free(lm);
    pl->lm = NULL;
}

/* ---- discovery --------------------------------------------------------------- */

/*
 * The partitions of the pipeline's topics, from the metadata, every
 * META_INTERVAL_MS: new partitions (and topics created later) join the
 * assignment at the next tick.  A partition that disappears keeps its owner
 * until it is gone for good (its fetches fail loudly).
 */
static void discover(struct sc_pipeline *pl)
{
    struct sc_leasemode *lm = pl->lm;
    struct sc_log_fields f = lm_log(pl);
    lm->next_meta_ms = sc_mono_ms() + META_INTERVAL_MS;
    /* One request for all the pipeline's topics (the ones this handle knows), bounded well
     * below a renew interval: the renewal tick runs on this thread too. */
    int timeout = pl->pc->lease.renew_ms / 2;
    timeout = timeout < 200 ? 200 : timeout > 5000 ? 5000 : timeout;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(pl->rk, 0, NULL, &md, timeout);
    if (err || !md) {
        if (!err)
            err = RD_KAFKA_RESP_ERR__FAIL;
        /* One failed read under load says little: warn from the second in a row, once per
         * cause. */
        if (++lm->meta_fails >= 2 && err != lm->meta_err) {
            sc_warn(&f,
                    "cannot read Kafka's metadata: %s; trying again every %d s (after about a "
                    "lease TTL without Kafka this instance takes no share of the partitions)",
                    rd_kafka_err2str(err), META_INTERVAL_MS / 1000);
            lm->meta_err = err;
        } else {
            sc_debug(&f, "metadata: %s", rd_kafka_err2str(err));
        }
        if (md)
            rd_kafka_metadata_destroy(md);
        return;
    }
    if (lm->meta_err)
        sc_info(&f, "Kafka's metadata can be read again");
    lm->meta_err = RD_KAFKA_RESP_ERR_NO_ERROR;
    lm->meta_fails = 0;
    lm->meta_ok_ms = sc_mono_ms();
    atomic_store(&pl->kafka_up, true);
    bool changed = false;
    for (size_t i = 0; i < pl->pc->topics.count; i++) {
        int count = lm->counts[i];
        for (int t = 0; t < md->topic_cnt; t++) {
            if (strcmp(md->topics[t].topic, pl->pc->topics.items[i]) != 0)
                continue;
            rd_kafka_resp_err_t te = md->topics[t].err;
            if (!te)
                count = md->topics[t].partition_cnt;
            else if (te == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                count = count < 0 ? 0 : count;
            else if (te != lm->topic_err[i]) /* e.g. TOPIC_AUTHORIZATION_FAILED */
                sc_warn(&f,
                        "topic \"%s\": %s; its partitions %s until Kafka answers for it "
                        "(checked every %d s)",
                        pl->pc->topics.items[i], rd_kafka_err2str(te),
                        count > 0 ? "keep what is known of them" : "are not consumed",
                        META_INTERVAL_MS / 1000);
            if (!te && lm->topic_err[i] &&
                lm->topic_err[i] != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                sc_info(&f, "topic \"%s\" can be read again", pl->pc->topics.items[i]);
            lm->topic_err[i] = te;
        }
        if (count > lm->counts[i]) { /* a topic never shrinks (partitions cannot be removed) */
            sc_info(&f, "topic \"%s\" has %d partition%s%s", pl->pc->topics.items[i], count,
                    count == 1 ? "" : "s", lm->counts[i] > 0 ? " now" : "");
            lm->counts[i] = count;
            changed = true;
        } else if (count == 0 && lm->counts[i] < 0) {
            sc_warn(&f, "topic \"%s\" does not exist (yet); its partitions join once it does",
                    pl->pc->topics.items[i]);
            lm->counts[i] = 0;
        }
    }
    rd_kafka_metadata_destroy(md);
    if (!changed)
        return;
    size_t n = 0;
    for (size_t i = 0; i < pl->pc->topics.count; i++)
        n += lm->counts[i] > 0 ? (size_t)lm->counts[i] : 0;
    free(lm->known);
    lm->known = sc_xcalloc(n ? n : 1, sizeof(*lm->known));
    lm->nknown = 0;
    for (size_t i = 0; i < pl->pc->topics.count; i++)
        for (int32_t p = 0; p < lm->counts[i]; p++)
            lm->known[lm->nknown++] = (struct known){pl->pc->topics.items[i], p};
    lm->counts_dirty = true;
    pl->tick_now = true;
}

/* {"orders": 12, ...} for the registry (malloc'd). */
static char *topic_counts_json(const struct sc_pipeline *pl)
{
    json_t *o = json_object();
    for (size_t i = 0; i < pl->pc->topics.count; i++)
        if (pl->lm->counts[i] >= 0)
            json_object_set_new(o, pl->pc->topics.items[i], json_integer(pl->lm->counts[i]));
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    return s;
}

/* ---- handing partitions over -------------------------------------------------- */

static struct releasing *find_releasing(struct sc_leasemode *lm, const char *topic,
                                        int32_t partition)
{
    for (size_t i = 0; i < lm->nrel; i++)
        if (lm->rel[i]->partition == partition && strcmp(lm->rel[i]->topic, topic) == 0)
            return lm->rel[i];
    return NULL;
}

/* Asks p's worker to finish its batch in flight and release the lease (reserved for to, or
 * for anyone); the partition is unassigned once that is done (finish_releases()).  announce:
 * log it (not for a lost lease or the shutdown, which say so themselves). */
static void start_release(struct sc_pipeline *pl, struct sc_part *p, const char *to,
                          const char *seen, const char *reason, bool announce)
{
    struct sc_leasemode *lm = pl->lm;
    struct releasing *r = sc_xcalloc(1, sizeof(*r));
    r->topic = sc_xstrdup(p->topic);
    r->partition = p->partition;
    r->to = to ? sc_xstrdup(to) : NULL;
    r->seen = seen ? sc_xstrdup(seen) : NULL;
    r->epoch = atomic_load(&p->need_reacquire) ? 0 : p->lease_epoch;
    r->p = p;
    r->handoff = to != NULL;
    r->since_ms = sc_mono_ms();
    if (lm->nrel == lm->relcap) {
        lm->relcap = lm->relcap ? lm->relcap * 2 : 16;
        lm->rel = sc_xrealloc(lm->rel, lm->relcap * sizeof(*lm->rel));
    }
    lm->rel[lm->nrel++] = r;
    if (announce)
        sc_info(&p->log, "handing the partition over%s%s (%s) after its batch in flight",
                to ? " to " : "", to ? to : "", reason);
    p->release_to = r->to;
    p->release_seen = r->seen;
    p->removed = &r->done;
    p->removed_lock = &lm->rel_lock;
    p->revoked = true;
    sc_pl_forget_part(pl, p);
    sc_worker_remove(p->worker, p, reason); /* the worker frees p */
}

/* Unassigns what the workers have released. */
static void finish_releases(struct sc_pipeline *pl)
{
    struct sc_leasemode *lm = pl->lm;
    int64_t now = sc_mono_ms();
    rd_kafka_topic_partition_list_t *l = NULL;
    for (size_t i = 0; i < lm->nrel;) {
        struct releasing *r = lm->rel[i];
        if (!atomic_load(&r->done)) {
            if (!r->warned && now - r->since_ms > pl->pc->lease.ttl_ms) {
                struct sc_log_fields f = {pl->pc->name, r->topic, r->partition};
                sc_warn(&f,
                        "the worker has not finished its batch in flight after %d ms (a slow "
                        "sink?); the lease stays renewed until it has, then it is handed over",
                        pl->pc->lease.ttl_ms);
                r->warned = true;
            }
            i++;
            continue;
        }
        if (!l)
            l = rd_kafka_topic_partition_list_new(4);
        rd_kafka_topic_partition_list_add(l, r->topic, r->partition);
        if (r->handoff)
            sc_counter_add(&pl->m->handoffs_out, 1);
        free(r->topic);
        free(r->to);
        free(r->seen);
        free(r);
        lm->rel[i] = lm->rel[--lm->nrel];
    }
    if (l) {
        rd_kafka_error_t *e = rd_kafka_incremental_unassign(pl->rk, l);
        if (e) {
            struct sc_log_fields f = lm_log(pl);
            sc_warn(&f, "unassigning released partitions: %s", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
        }
        rd_kafka_topic_partition_list_destroy(l);
    }
}

/* A partition we wait to re-acquire is held by, or reserved for, another live instance. */
static void lost(struct sc_pipeline *pl, struct sc_part *p, const char *holder)
{
    sc_info(&p->log,
            "the lease is %s's now (held by it, or reserved for it); dropping the partition",
            holder);
    start_release(pl, p, NULL, NULL, "lost", false);
}

/* ---- the tick ---------------------------------------------------------------- */

/*
 * The partitions this instance tells the others it sees: none once it has
 * been cut off from Kafka (no broker up and no metadata read) for about a
 * lease TTL, so that it takes no share and the instances that can reach
 * Kafka take its partitions over (it hands them over, each after its batch
 * in flight).  It takes its share again as soon as it can read Kafka.
 */
static int known_partitions(struct sc_pipeline *pl)
{
    struct sc_leasemode *lm = pl->lm;
    struct sc_log_fields f = lm_log(pl);
    int64_t now = sc_mono_ms();
    bool cut_off = lm->nknown > 0 && !atomic_load(&pl->kafka_up) &&
                   now - lm->meta_ok_ms > pl->pc->lease.ttl_ms + META_INTERVAL_MS;
    if (cut_off && !lm->no_share)
        sc_warn(&f,
                "Kafka unreachable for %" PRId64 " ms: taking no share of the partitions, so "
                "that instances that can reach it take them over",
                now - lm->meta_ok_ms);
    else if (!cut_off && lm->no_share)
        sc_info(&f, "Kafka reachable again: taking a share of the partitions again");
    lm->no_share = cut_off;
    return cut_off ? 0 : (int)lm->nknown;
}

/* The tick's answer for a partition being handed over (tick sent at sent_ms). */
static void renewed_releasing(struct sc_pipeline *pl, struct releasing *r,
                              enum sc_lease_state state, int64_t sent_ms)
{
    pthread_mutex_lock(&pl->lm->rel_lock);
    if (!atomic_load(&r->done)) {
        if (state == SC_LEASE_RENEWED) {
            atomic_store(&r->p->lease_valid_until_ms, sc_pl_valid_until(pl, sent_ms));
        } else if (state != SC_LEASE_BUSY) {
            /* Lapsed or lost: write nothing more; the next owner replays what is pending. */
            atomic_store(&r->p->lease_valid_until_ms, 0);
            r->epoch = 0;
        }
    }
    pthread_mutex_unlock(&pl->lm->rel_lock);
}

static int row_cmp(const void *a, const void *b)
{
    const struct sc_lease_row *x = a, *y = b;
    int c = strcmp(x->topic, y->topic);
    return c ? c : (x->partition > y->partition) - (x->partition < y->partition);
}

static const struct sc_lease_row *find_row(const struct sc_lease_tick *t, const char *topic,
                                           int32_t partition)
{
    struct sc_lease_row key = {.topic = topic, .partition = partition};
    return bsearch(&key, t->leases, t->nleases, sizeof(*t->leases), row_cmp);
}

/* Acquires parts (one statement) and assigns what it got. */
static void take(struct sc_pipeline *pl, const struct sc_assign_part *parts, const size_t *idx,
                 size_t n)
{
    struct sc_log_fields f = lm_log(pl);
    struct sc_lease_req *reqs = sc_xcalloc(n, sizeof(*reqs));
    for (size_t i = 0; i < n; i++)
        reqs[i] = (struct sc_lease_req){.topic = parts[idx[i]].topic,
                                        .partition = parts[idx[i]].partition};
    bool unavailable;
    if (sc_lease_acquire(&pl->db, pl->pc->name, pl->cfg->instance_id, pl->pc->lease.ttl_ms,
                         sc_notify_channel(&pl->notify), reqs, n, &unavailable) != 0) {
        free(reqs);
        return; /* the next tick tries again */
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
    size_t busy = 0;
    for (size_t i = 0; i < n; i++) {
        struct sc_lease_req *r = &reqs[i];
        if (!r->acquired) {
            busy += r->busy;
            continue;
        }
        const struct sc_assign_part *ap = &parts[idx[i]];
        if (ap->handoff_to && strcmp(ap->handoff_to, pl->cfg->instance_id) == 0 && !ap->owner)
            sc_counter_add(&pl->m->handoffs_in, 1);
        int64_t start;
        sc_pl_add_part(pl, r->topic, r->partition, r, &start);
        rd_kafka_topic_partition_list_add(l, r->topic, r->partition)->offset = start;
    }
    if (busy > 0) {
        if (sc_mono_ms() >= pl->lm->next_busy_log_ms) {
            sc_info(&f,
                    "%zu partition%s skipped: the lease or checkpoint row is locked by another "
                    "session (an open transaction?); trying again every half second",
                    busy, busy == 1 ? "" : "s");
            pl->lm->next_busy_log_ms = sc_mono_ms() + 30000;
        }
        /* The lock may be gone in a moment: do not wait for a whole renew interval. */
        if (pl->lm->next_tick_ms > sc_mono_ms() + 500)
            pl->lm->next_tick_ms = sc_mono_ms() + 500;
    }
    if (l->cnt > 0) {
        rd_kafka_error_t *e = rd_kafka_incremental_assign(pl->rk, l);
        if (e) {
            sc_error(&f, "assigning partitions failed: %s", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    free(reqs);
}

static const char *release_reason(const struct sc_pipeline *pl, const struct sc_assign_part *p,
                                  const char *to)
{
    if (pl->draining)
        return "drain";
    if (to && p->pinned_to && strcmp(p->pinned_to, to) == 0)
        return "pin";
    if (to && p->reason == SC_HANDOFF_MOVE)
        return "move";
    return to ? "balance" : "release";
}

static void plan_and_act(struct sc_pipeline *pl, const struct sc_lease_tick *t)
{
    struct sc_leasemode *lm = pl->lm;
    struct sc_log_fields f = lm_log(pl);
    const char *me = pl->cfg->instance_id;

    struct sc_assign_inst *insts = sc_xcalloc(t->ninsts + 1, sizeof(*insts));
    bool me_eligible = false, me_draining = false;
    for (size_t i = 0; i < t->ninsts; i++) {
        insts[i] = (struct sc_assign_inst){t->insts[i].id, t->insts[i].eligible};
        if (strcmp(t->insts[i].id, me) == 0) {
            me_eligible = t->insts[i].eligible;
            me_draining = t->insts[i].draining;
        }
    }
    pl->draining = me_draining;
    if (pl->draining != lm->was_draining)
        sc_info(&f, pl->draining ? "drained by an operator: handing every partition over"
                                 : "undrained: taking partitions again");
    lm->was_draining = pl->draining;

    size_t np = lm->nknown;
    struct sc_assign_part *parts = sc_xcalloc(np ? np : 1, sizeof(*parts));
    for (size_t k = 0; k < np; k++) {
        const struct sc_lease_row *r = find_row(t, lm->known[k].topic, lm->known[k].partition);
        parts[k] = (struct sc_assign_part){.topic = lm->known[k].topic,
                                           .partition = lm->known[k].partition};
        if (r) {
            parts[k].owner = r->owner;
            parts[k].pinned_to = r->pinned_to;
            parts[k].handoff_to = r->handoff_to;
            parts[k].reason = r->reason;
            parts[k].handoff_ms = r->handoff_ms;
            parts[k].held_ms = r->held_ms;
        }
    }
    enum sc_assign_act *act = sc_xcalloc(np ? np : 1, sizeof(*act));
    const char **target = sc_xcalloc(np ? np : 1, sizeof(*target));
    struct sc_assign_in in = {
        .me = me,
        .insts = insts,
        .ninsts = t->ninsts,
        .parts = parts,
        .nparts = np,
        .reservation_ms = pl->pc->lease.ttl_ms,
        .may_steal = lm->want_steal,
    };
    struct sc_assign_out out = {.act = act, .target = target};
    sc_assign_plan(&in, &out);
    lm->want_steal = out.steals > 0;
    if (me_eligible && out.share != lm->share)
        sc_info(&f, "fair share: %d of %zu partition%s (%d instance%s)", out.share, np,
                np == 1 ? "" : "s", out.eligible, out.eligible == 1 ? "" : "s");
    lm->share = me_eligible ? out.share : 0;
    lm->eligible = out.eligible;
    atomic_store(&pl->m->share, lm->share);
    atomic_store(&pl->m->instances, out.eligible);

    size_t *takes = sc_xcalloc(np ? np : 1, sizeof(*takes));
    const char **rt = sc_xcalloc(np ? np : 1, sizeof(*rt));
    const char **ro = sc_xcalloc(np ? np : 1, sizeof(*ro));
    int32_t *rp = sc_xcalloc(np ? np : 1, sizeof(*rp));
    const char **ft = sc_xcalloc(np ? np : 1, sizeof(*ft));
    const char **fw = sc_xcalloc(np ? np : 1, sizeof(*fw));
    int32_t *fp = sc_xcalloc(np ? np : 1, sizeof(*fp));
    size_t ntake = 0, nreq = 0, nref = 0;
    for (size_t k = 0; k < np; k++) {
        const struct sc_assign_part *p = &parts[k];
        bool releasing = find_releasing(lm, p->topic, p->partition) != NULL;
        struct sc_part *mine = sc_pl_find_part(pl, p->topic, p->partition);
        switch (act[k]) {
        case SC_ACT_NONE:
            break;
        case SC_ACT_TAKE:
            if (!mine && !releasing)
                takes[ntake++] = k;
            break;
        case SC_ACT_RELEASE:
            if (mine && !mine->revoked)
                start_release(pl, mine, target[k], p->handoff_to, release_reason(pl, p, target[k]),
                              true);
            break;
        case SC_ACT_REQUEST:
            rt[nreq] = p->topic;
            rp[nreq] = p->partition;
            ro[nreq++] = target[k];
            break;
        case SC_ACT_REFUSE:
            ft[nref] = p->topic;
            fw[nref] = p->handoff_to;
            fp[nref++] = p->partition;
            break;
        }
    }
    if (nref > 0 &&
        sc_lease_refuse_handoffs(&pl->db, pl->pc->name, me, ft, fp, fw, nref,
                                 pl->draining ? "draining" : "declined: balanced already") > 0)
        sc_info(&f,
                "declined %zu handoff request%s (the partitions are balanced already, "
                "pinned here, or the requester is gone)",
                nref, nref == 1 ? "" : "s");
    if (nreq > 0) {
        int asked = sc_lease_request_handoffs(&pl->db, pl->pc->name, me, rt, rp, ro, nreq);
        if (asked > 0) {
            sc_counter_add(&pl->m->steals, (uint64_t)asked);
            bool several = false;
            for (size_t i = 1; i < nreq; i++)
                several |= strcmp(ro[i], ro[0]) != 0;
            sc_info(&f, "holding %d of a fair share of %d: asked %s%s for %d partition%s",
                    out.owned, out.share, ro[0], several ? " and others" : "", asked,
                    asked == 1 ? "" : "s");
        }
    }
    if (ntake > 0)
        take(pl, parts, takes, ntake);
    free(takes);
    free(rt);
    free(ro);
    free(rp);
    free(ft);
    free(fw);
    free(fp);
    free(act);
    free(target);
    free(parts);
    free(insts);
}

static void tick(struct sc_pipeline *pl)
{
    struct sc_leasemode *lm = pl->lm;
    int64_t now = sc_mono_ms();
    if (pl->tick_now ? now - pl->last_tick_ms < 50 : now < lm->next_tick_ms)
        return;
    pl->tick_now = false;
    int renew = pl->pc->lease.renew_ms;
    lm->next_tick_ms = now + renew * 3 / 4 + (int64_t)sc_rand((uint32_t)(renew / 4 + 1));
    char *counts = lm->counts_dirty ? topic_counts_json(pl) : NULL;
    /* The partitions being handed over are renewed until their worker has released them. */
    struct sc_lease_held *x = sc_xcalloc(lm->nrel + 1, sizeof(*x));
    struct releasing **xr = sc_xcalloc(lm->nrel + 1, sizeof(*xr));
    size_t nx = 0;
    for (size_t i = 0; i < lm->nrel; i++)
        if (lm->rel[i]->epoch > 0 && !atomic_load(&lm->rel[i]->done)) {
            x[nx] = (struct sc_lease_held){.topic = lm->rel[i]->topic,
                                           .partition = lm->rel[i]->partition,
                                           .epoch = lm->rel[i]->epoch};
            xr[nx++] = lm->rel[i];
        }
    struct sc_lease_tick t;
    int rc = sc_pl_tick(pl, x, nx, true, known_partitions(pl), lm->share, counts, &t);
    free(counts);
    if (rc == 0)
        for (size_t i = 0; i < nx; i++)
            renewed_releasing(pl, xr[i], x[i].state, now);
    free(x);
    free(xr);
    if (rc != 0) {
        lm->next_tick_ms = now + 500; /* PostgreSQL trouble: try again soon */
        return;
    }
    if (pl->tick_busy > 0 && lm->next_tick_ms > now + 500)
        lm->next_tick_ms = now + 500; /* a locked row was not renewed: again soon */
    lm->counts_dirty = false;
    qsort(t.leases, t.nleases, sizeof(*t.leases), row_cmp);
    plan_and_act(pl, &t);
    sc_lease_tick_clear(&t);
}

/* ---- the thread -------------------------------------------------------------- */

static void shutdown_all(struct sc_pipeline *pl)
{
    struct sc_log_fields f = lm_log(pl);
    sc_info(&f, "shutting down: finishing in-flight batches and releasing leases");
    while (pl->nparts > 0)
        start_release(pl, pl->parts[0], NULL, NULL, "shutdown", false);
    int64_t deadline = sc_mono_ms() + pl->cfg->shutdown_timeout_ms * 3 / 4;
    while (pl->lm->nrel > 0 && sc_mono_ms() < deadline) {
        finish_releases(pl);
        if (pl->lm->nrel > 0)
            sc_sleep_ms(10, NULL);
    }
    if (pl->lm->nrel > 0)
        sc_warn(&f,
                "%zu partition%s not finished in time; leaving them (their pending "
                "checkpoints make this a replay, not a loss)",
                pl->lm->nrel, pl->lm->nrel == 1 ? "" : "s");
    rd_kafka_assign(pl->rk, NULL);
    sc_lease_deregister(&pl->db, &pl->self);
    sc_pl_close_consumer(pl);
}

void *sc_leasemode_main(void *arg)
{
    struct sc_pipeline *pl = arg;
    struct sc_leasemode *lm = pl->lm;
    struct sc_log_fields f = lm_log(pl);
    sc_info(&f,
            "assignment lease: sharing the partitions with the other instances through "
            "PostgreSQL (no consumer group; offsets mirrored to Kafka as group \"%s\"), %d "
            "worker%s",
            pl->pc->group_id, pl->nworkers, pl->nworkers == 1 ? "" : "s");
    while (!atomic_load(pl->stop) && atomic_load(&pl->exit_code) == 0) {
        int64_t now = sc_mono_ms();
        int timeout = 100;
        int64_t due = lm->next_tick_ms - now;
        if (due < timeout)
            timeout = due < 0 ? 0 : (int)due;
        if (atomic_load(&pl->fetch_poke)) {
            int64_t wait = pl->next_poke_ms - now;
            timeout = wait < 0 ? 0 : wait < timeout ? (int)wait : timeout;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(pl->rk, timeout);
        if (m) {
            if (m->err)
                sc_warn(&f, "kafka: %s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
        }
        sc_pl_poll_notes(pl);
        if (sc_mono_ms() >= lm->next_meta_ms)
            discover(pl);
        tick(pl);
        finish_releases(pl);
        sc_pl_acquire_waiting(pl, lost);
        sc_pl_upkeep(pl);
    }
    shutdown_all(pl);
    return NULL;
}
