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
struct sc_part;

struct sc_pipeline {
    const struct sc_config *cfg;
    const struct sc_pipeline_conf *pc;
    rd_kafka_t *rk;
    struct sc_db db; /* consumer thread's session: leases */
    pthread_t thread;
    bool thread_started;
    const atomic_bool *stop; /* process-wide shutdown flag */
    bool cooperative;
    bool assigned_once; /* consumer thread: a rebalance assigned partitions (maybe none) */

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
                                    const atomic_bool *stop, char *err, size_t errsize);
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

#endif
