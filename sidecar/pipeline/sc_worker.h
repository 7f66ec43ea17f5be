/*
 * sc_worker - a delivery worker: one thread, its own PostgreSQL session and
 * sink instance, serving the partitions pinned to it; each batch goes
 * through the checkpoint protocol (pend -> sink write -> commit; see
 * protocol/sc_checkpoint.c).
 *
 * The consumer thread (sc_pipeline.c) talks to a worker only through the
 * calls below (they post to the worker's inbox and wake it) and the atomics
 * in struct sc_part.  Everything a worker needs from its pipeline is given
 * at creation in struct sc_worker_env; it never reaches back into the
 * pipeline.
 */
#ifndef SC_WORKER_H
#define SC_WORKER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "config/sc_config.h"
#include "protocol/sc_notify.h"

struct sc_part;
struct sc_worker;

/* What a worker uses of its pipeline; everything outlives the worker. */
struct sc_worker_env {
    const struct sc_config *cfg;
    const struct sc_pipeline_conf *pc;
    rd_kafka_t *rk;              /* the pipeline's consumer: pause, resume, seek, mirror offsets */
    const atomic_bool *stop;     /* process-wide shutdown flag */
    struct sc_notify_pl *notify; /* counts commits; the NOTIFY channel */
    /*
     * Asks the consumer thread to wake librdkafka's fetchers: a partition was
     * resumed, or its queue was drained at the prefetch limit (see
     * poke_fetchers() in sc_pipeline.c).  Called on the worker thread.
     */
    void (*wake_fetchers)(void *arg);
    void *wake_arg;
};

/* Creates a worker (not started); env is copied.  NULL with err on failure. */
struct sc_worker *sc_worker_new(const struct sc_worker_env *env, int id, char *err, size_t errsize);
int sc_worker_start(struct sc_worker *w);
/* The queue the partitions pinned to w are forwarded to. */
rd_kafka_queue_t *sc_worker_queue(struct sc_worker *w);

/* Hands a partition (with handover_cp / handover_epoch set) to the worker, which now owns it. */
void sc_worker_add(struct sc_worker *w, struct sc_part *p);
/* Tells the worker a fenced partition was re-acquired (new handover_*). */
void sc_worker_reacquired(struct sc_worker *w, struct sc_part *p);
/* Asks the worker to drop p (commit in flight, release the lease, free p). */
void sc_worker_remove(struct sc_worker *w, struct sc_part *p, const char *reason);
/* Waits until every removal asked of w is done or deadline (monotonic ms) passes; 0 if done. */
int sc_worker_wait_removed(struct sc_worker *w, int64_t deadline_ms);
/* How many partitions are pinned to w.  @locality any thread. */
int sc_worker_nparts(struct sc_worker *w);
/* Stops the thread (after all partitions were removed) and frees it. */
void sc_worker_stop(struct sc_worker *w);

#endif
