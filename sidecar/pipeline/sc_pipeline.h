/*
 * sc_pipeline - one configured pipeline at run time: its Kafka consumer,
 * the consumer thread that handles rebalances and lease renewal, and its
 * pool of delivery workers (sc_worker.c).
 *
 * Threads and ownership:
 *   - the consumer thread owns the rd_kafka_t poll loop, the rebalance
 *     callback, the list of owned partitions (pl->parts) and the lease
 *     connection; it creates a struct sc_part on assignment, hands it to
 *     one worker, and asks that worker to drop it on revocation;
 *   - a worker owns everything under "worker-owned" in struct sc_part and
 *     its own checkpoint connection and sink instance;
 *   - the two talk through the worker's inbox (mutex + condition variable,
 *     with rd_kafka_queue_yield() to wake a worker blocked on its queue) and
 *     a few atomics in struct sc_part.
 */
#ifndef SC_PIPELINE_H
#define SC_PIPELINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "config/sc_config.h"
#include "db/sc_db.h"
#include "protocol/sc_checkpoint.h"
#include "protocol/sc_notify.h"
#include "sinks/sc_sink.h"

struct sc_worker;
struct sc_buffered;
struct sc_pipeline;
struct sc_metrics_part;

enum sc_part_state {
    SC_PART_STARTING, /* handed to the worker; recovery not done yet */
    SC_PART_ACTIVE,   /* delivering */
    SC_PART_FENCED,   /* lost its epoch; waiting for the consumer thread to re-acquire */
    SC_PART_ERROR,    /* checkpoint state 'error': delivers nothing until reset */
    SC_PART_PAUSED,   /* pause_partition(): keeps the lease, delivers nothing */
};

struct sc_part {
    struct sc_pipeline *pl;
    char *topic;
    int32_t partition;
    struct sc_worker *worker;
    rd_kafka_queue_t *queue; /* the partition's fetch queue, forwarded to the worker's */
    struct sc_log_fields log;
    struct sc_metrics_part *m;

    /* Consumer thread: lease epoch and liveness. */
    int64_t lease_epoch;
    _Atomic int64_t lease_valid_until_ms; /* monotonic; 0 = do not deliver */
    atomic_bool need_reacquire;           /* worker -> consumer: fenced or conflict */
    atomic_bool fetch_stopped;            /* worker -> consumer: librdkafka stopped fetching
                                             (offset out of range): re-assign to restart */
    atomic_bool control_changed;          /* consumer -> worker: an operator changed the row */
    atomic_bool not_fetching;             /* worker -> consumer: paused/errored, so librdkafka's
                                             cached watermarks go stale: ask the broker */
    atomic_bool poke;                     /* worker -> consumer: may be fetchable again: wake
                                             librdkafka's fetcher (poke_fetchers()) */
    int64_t control_seq;                  /* consumer: the row's control_seq as last seen */
    bool revoked;                         /* consumer: REMOVE sent */

    /* Hand-over from the consumer thread (under the worker's lock). */
    struct sc_cp handover_cp;
    int64_t handover_epoch;
    bool handover_seek;   /* the worker must seek (false: the consumer re-assigned it) */
    int64_t start_offset; /* where Kafka was asked to start (assign/seek) */

    /* ---- worker-owned ---- */
    enum sc_part_state state;
    struct sc_cp cp;
    struct sc_sink_part *sink_part;
    bool sink_recovered;
    bool replay;  /* cp's pending batch was found at takeover: verify and re-deliver */
    bool written; /* the pending batch is written; its commit waits (see sc_worker.c) */
    int64_t written_next_write_offset;
    int64_t commit_due_ms;    /* a written batch commits then at the latest */
    int64_t full_cut_ms;      /* when the last full batch was cut (sc_worker.c quiet_at()) */
    int64_t next_expected;    /* lowest offset accepted into the buffer */
    struct sc_buffered *recs; /* buffered records recs[head .. head+len), copies (sc_worker.c) */
    size_t head, len, cap;
    char *arena; /* their bytes: arena[arena_head .. arena_len) */
    size_t arena_head, arena_len, arena_cap;
    int64_t pushed_bytes; /* batch.max_bytes' measure of every record ever buffered */
    bool paused;
    int64_t retry_at_ms;
    struct sc_backoff backoff;
    int64_t error_poll_ms; /* next time an errored partition re-reads its row */
    unsigned seek_gen;     /* bumped by every worker-side seek */
    struct sc_part *next;  /* in the worker's list */
};

struct sc_pipeline {
    const struct sc_config *cfg;
    const struct sc_pipeline_conf *pc;
    rd_kafka_t *rk;
    struct sc_db db; /* consumer thread's session: leases */
    pthread_t thread;
    bool thread_started;
    const volatile bool *stop; /* process-wide shutdown flag */
    bool cooperative;

    struct sc_worker **workers;
    int nworkers;

    pthread_mutex_t lock;   /* guards parts/nparts against readers on other threads */
    struct sc_part **parts; /* owned partitions (written by the consumer thread only) */
    size_t nparts, parts_cap;
    _Atomic int64_t db_ok_ms; /* last time PostgreSQL answered the consumer thread */
    int64_t next_renew_ms;
    int64_t next_watermarks_ms;
    int64_t next_reforward_ms;
    atomic_bool kafka_up;
    atomic_int exit_code;
    struct sc_notify_pl notify;
    /* Worker -> consumer thread: partitions were resumed; wake librdkafka's fetchers (see
     * poke_fetchers() in sc_pipeline.c).  consumer_q is the queue the consumer thread polls. */
    atomic_bool fetch_poke;
    rd_kafka_queue_t *consumer_q;
    int64_t next_poke_ms;
};

/* Creates the consumer and the workers (not started). NULL with err on failure. */
struct sc_pipeline *sc_pipeline_new(const struct sc_config *cfg, const struct sc_pipeline_conf *pc,
                                    const volatile bool *stop, char *err, size_t errsize);
/* Starts the worker threads and the consumer thread. */
int sc_pipeline_start(struct sc_pipeline *pl, char *err, size_t errsize);
/*
 * Waits for the consumer thread to finish its shutdown (it starts when *stop
 * becomes true): revokes every partition, commits in-flight batches,
 * releases leases, leaves the group.  Then stops the workers.
 */
void sc_pipeline_join(struct sc_pipeline *pl);
/* For /readyz: Kafka connected, PostgreSQL answering, every assigned partition leased
 * and none in the error state.  @locality any thread. */
bool sc_pipeline_ready(struct sc_pipeline *pl, char *why, size_t whysize);
void sc_pipeline_free(struct sc_pipeline *pl);

/* ---- worker interface (sc_worker.c) ---- */

struct sc_worker *sc_worker_new(struct sc_pipeline *pl, int id, char *err, size_t errsize);
int sc_worker_start(struct sc_worker *w);
/* Hands a partition (with handover_cp / handover_epoch set) to the worker. */
void sc_worker_add(struct sc_worker *w, struct sc_part *p);
/* Tells the worker a fenced partition was re-acquired (new handover_*). */
void sc_worker_reacquired(struct sc_worker *w, struct sc_part *p);
/* Asks the worker to drop p (commit in flight, release the lease). */
void sc_worker_remove(struct sc_worker *w, struct sc_part *p, const char *reason);
/* Waits until every removal asked of w is done or deadline (monotonic ms) passes; 0 if done. */
int sc_worker_wait_removed(struct sc_worker *w, int64_t deadline_ms);
int sc_worker_nparts(struct sc_worker *w);
/* Stops the thread (after all partitions were removed) and frees it. */
void sc_worker_stop(struct sc_worker *w);

#endif
