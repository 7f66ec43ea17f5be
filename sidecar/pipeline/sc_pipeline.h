/*
 * sc_pipeline - one configured pipeline at run time: its Kafka consumer,
 * the consumer thread that decides which partitions it consumes and renews
 * their leases, and its pool of delivery workers (sc_worker.c).
 *
 * Who decides which partitions an instance consumes is the pipeline's
 * "assignment": with "kafka-group" Kafka's group coordinator assigns them
 * (rebalance callback, sc_pipeline.c); with "lease" the instances share
 * them through PostgreSQL alone (sc_leasemode.c, docs/design.md §10).
 *
 * Threads and ownership:
 *   - the consumer thread owns the rd_kafka_t poll loop, the rebalance
 *     callback or the lease-mode assignment, the list of owned partitions
 *     (pl->parts) and the lease connection; it creates a struct sc_part when
 *     a partition becomes its own, hands it to one worker, and asks that
 *     worker to drop it when it goes;
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

#include "base/sc_metrics.h"
#include "config/sc_config.h"
#include "db/sc_db.h"
#include "protocol/sc_checkpoint.h"
#include "protocol/sc_lease.h"
#include "protocol/sc_notify.h"
#include "sinks/sc_sink.h"

struct sc_worker;
struct sc_part;
struct sc_leasemode;

struct sc_pipeline {
    const struct sc_config *cfg;
    const struct sc_pipeline_conf *pc;
    rd_kafka_t *rk;
    struct sc_db db; /* consumer thread's session: leases */
    pthread_t thread;
    bool thread_started;
    const atomic_bool *stop; /* process-wide shutdown flag */
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
    /* Set (under poke_lock) before the consumer is closed: no more pokes.  While it closes,
     * consumer_q is forwarded to the close's own queue, and a poke (a queue yield) would end
     * rd_kafka_consumer_close() early, leaving the group half left. */
    pthread_mutex_t poke_lock;
    bool closing;
    bool close_unfinished; /* rd_kafka_consumer_close() returned before the group was left */

    /* Consumer thread: the registration, control notifications and the renewal tick. */
    struct sc_lease_self self;
    bool draining;           /* an operator drained this instance (lease mode) */
    unsigned listen_gen;     /* the lease connection that LISTENs on the control channel */
    bool tick_now;           /* a notification asks for a renewal tick at once */
    int64_t last_tick_ms;    /* when the last tick was sent */
    size_t tick_busy;        /* rows the last tick found locked (not renewed): tick soon */
    int64_t busy_log_ms;     /* when "not renewed: locked" may be logged again */
    int64_t next_listen_ms;  /* next LISTEN attempt while it fails */
    struct sc_metrics_pl *m; /* the pipeline's assignment metrics */
    bool subscribed;         /* kafka-group: joined (or joining) the consumer group */
    bool never_assigned;     /* kafka-group: no assignment received yet (see shutdown) */
    struct sc_leasemode *lm; /* "assignment": "lease" state (sc_leasemode.c), else NULL */
};

/* Creates the consumer and the workers (not started). NULL with err on failure. */
struct sc_pipeline *sc_pipeline_new(const struct sc_config *cfg, const struct sc_pipeline_conf *pc,
                                    const atomic_bool *stop, char *err, size_t errsize);
/*
 * Registers this process for the pipeline, then starts the worker threads
 * and the consumer thread.  Returns SC_EXIT_OK, SC_EXIT_FAILURE, or
 * SC_EXIT_USAGE when another live process runs the pipeline with the same
 * instance_id (err says which); err is set unless SC_EXIT_OK.
 */
int sc_pipeline_start(struct sc_pipeline *pl, char *err, size_t errsize);

/* Whether the process may skip rd_kafka_wait_destroyed() (a consumer was kept alive to
 * dodge a librdkafka bug, see sc_pipeline_free()). */
bool sc_pipeline_kept_consumer(void);
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
