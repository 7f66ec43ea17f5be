/*
 * sc_part - one partition a pipeline owns: what the consumer thread
 * (sc_pipeline.c) and the worker it is pinned to (sc_worker.c) share.
 *
 * Ownership: the consumer thread creates a partition when it acquires the
 * lease, hands it to a worker (sc_worker_add()) and asks the worker to drop
 * it (sc_worker_remove()); the worker frees it.  Fields are grouped by the
 * thread that writes them; the atomics are how the two signal each other.
 */
#ifndef SC_PART_H
#define SC_PART_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "base/sc_log.h"
#include "base/sc_util.h"
#include "pipeline/sc_partbuf.h"
#include "protocol/sc_checkpoint.h"

struct sc_worker;
struct sc_metrics_part;
struct sc_sink_part;

enum sc_part_state {
    SC_PART_STARTING, /* handed to the worker; recovery not done yet */
    SC_PART_ACTIVE,   /* delivering */
    SC_PART_FENCED,   /* lost its epoch, or not leased yet: waits for the consumer thread to
                         (re-)acquire it */
    SC_PART_ERROR,    /* checkpoint state 'error': delivers nothing until reset */
    SC_PART_PAUSED,   /* pause_partition(): keeps the lease, delivers nothing */
};

struct sc_part {
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
    int64_t reacquire_at_ms;              /* consumer: next acquisition attempt (need_reacquire) */
    /* Consumer -> worker with REMOVE: release the lease reserved for this instance (a
     * handoff; NULL: for anyone), and set *removed once released (or not, if no longer
     * ours).  All three outlive the partition (the consumer thread owns them).  The worker
     * sets *removed holding *removed_lock (if any), after which it frees the partition: the
     * consumer thread, holding it, may still renew lease_valid_until_ms while *removed is
     * false (lease mode keeps renewing a partition being handed over). */
    const char *release_to;
    const char *release_seen; /* the lease's handoff request when the release was decided */
    atomic_bool *removed;
    pthread_mutex_t *removed_lock;

    /* Hand-over from the consumer thread (under the worker's lock). */
    struct sc_cp handover_cp;
    int64_t handover_epoch;
    bool handover_seek;    /* the worker must seek (false: the consumer re-assigned it) */
    bool handover_waiting; /* added before its lease was acquired: waits, fetching nothing */
    int64_t start_offset;  /* where Kafka was asked to start (assign/seek) */

    /* ---- worker-owned ---- */
    enum sc_part_state state;
    struct sc_cp cp;
    struct sc_sink_part *sink_part;
    bool sink_recovered;
    bool replay;  /* cp's pending batch was found at takeover: verify and re-deliver */
    bool written; /* the pending batch is written; its commit waits (see sc_worker.c) */
    int64_t written_next_write_offset;
    int64_t unsynced_ns;   /* sink time of writes not yet synced (sync_written()) */
    int64_t commit_due_ms; /* a written batch commits then at the latest */
    int64_t pended_ms;     /* when the pending batch was pended: the next one collects since */
    int64_t full_cut_ms;   /* when the last full batch was cut (sc_worker.c quiet_at()) */
    int64_t next_expected; /* lowest offset accepted into the buffer */
    struct sc_partbuf buf; /* the buffered records */
    bool paused;
    int64_t retry_at_ms;
    struct sc_backoff backoff;
    int64_t error_poll_ms; /* next time an errored partition re-reads its row */
    bool error_unrecorded; /* in the error state, but PostgreSQL refused to record it (yet) */
    char error_msg[1024];  /* the error to record, while error_unrecorded */
    struct sc_backoff cp_backoff; /* transient refusals of checkpoint statements */
    int cp_retries;               /* refusals in a row (0 after a success) */
    unsigned seek_gen;            /* bumped by every worker-side seek */
    struct sc_part *next;         /* in the worker's list */
};

#endif
