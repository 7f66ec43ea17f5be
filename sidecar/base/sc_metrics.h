/*
 * sc_metrics - the process's Prometheus metrics (docs/operations.md), all prefixed
 * sidecar_ and labelled by pipeline / topic / partition where it makes sense.
 *
 * Per-partition series live in a struct sc_metrics_part that the owner of
 * the partition keeps a pointer to; updates are relaxed atomics, so the hot
 * path takes no lock.  Series are never removed (a partition that moves to
 * another instance keeps its counters here; partitions_owned drops to 0).
 *
 * @locality any thread.
 */
#ifndef SC_METRICS_H
#define SC_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "base/sc_util.h"

#define SC_HIST_BUCKETS 14

/* A histogram of seconds with fixed buckets (1 ms .. 10 s). */
struct sc_hist {
    _Atomic uint64_t buckets[SC_HIST_BUCKETS]; /* non-cumulative counts */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_ns;
};

struct sc_metrics_part {
    char *pipeline;
    char *topic;
    int32_t partition;
    _Atomic uint64_t records_consumed;
    _Atomic uint64_t records_delivered;
    _Atomic uint64_t batches_committed;
    _Atomic uint64_t replays;
    _Atomic uint64_t fenced;
    _Atomic uint64_t dead_letters;
    _Atomic uint64_t sink_errors;
    _Atomic uint64_t decode_errors; /* records not in their value/key format: dead letters */
    _Atomic uint64_t schema_waits;  /* batches held back: the schema registry could not answer */
    _Atomic uint64_t checkpoint_retries; /* checkpoint statements refused for a passing reason */
    _Atomic uint64_t http_retry_after;   /* HTTP answers whose Retry-After set the next attempt */
    _Atomic int64_t consumer_lag;        /* -1 = unknown */
    _Atomic int64_t committed_offset;    /* -1 = unknown; set by the owner, used for the lag */
    atomic_int pending;                  /* 1 while a pending checkpoint exists */
    _Atomic int64_t pending_since_ms;    /* monotonic ms the current pending batch was pended */
    atomic_int owned;                    /* 1 while this process owns the partition */
    atomic_int error;                    /* 1 while in the error state */
    struct sc_hist checkpoint_seconds;
    struct sc_hist sink_write_seconds;
    struct sc_metrics_part *next;
};

/* The series of a partition (created on first use; never freed before exit). */
struct sc_metrics_part *sc_metrics_part(const char *pipeline, const char *topic, int32_t partition);

void sc_hist_observe_ns(struct sc_hist *h, int64_t ns);

/*
 * Sets the pending gauge.  pending = 1 means a new pending batch from now on
 * (a pend, a commit that pends the next batch, or a replay taken over):
 * sidecar_pending_age_seconds counts from this call.  0: none.
 */
void sc_metrics_set_pending(struct sc_metrics_part *m, int pending);

/* Per-pipeline series of the partition assignment (docs/operations.md). */
struct sc_metrics_pl {
    char *pipeline;
    _Atomic uint64_t steals;       /* handoffs this instance asked others for (lease mode) */
    _Atomic uint64_t handoffs_in;  /* partitions taken over from a handoff reserved for it */
    _Atomic uint64_t handoffs_out; /* partitions handed over (balance, move, pin, drain) */
    atomic_int share;              /* lease mode: its fair share; -1 = not lease mode */
    atomic_int instances;          /* lease mode: live instances taking partitions */
    struct sc_metrics_pl *next;
};

/* The series of a pipeline (created on first use; never freed before exit). */
struct sc_metrics_pl *sc_metrics_pipeline(const char *pipeline);

/* Process-wide gauges and counters that are not per partition. */
void sc_metrics_set_notify_mode(const char *pipeline, int coalesced);
void sc_metrics_inc_notify_mode_switches(void);

/* Schema Registry fetches (record/sc_registry.c), by outcome, and schemas cached. */
enum sc_metrics_fetch {
    SC_FETCH_OK,        /* a schema was fetched (and cached for the life of the process) */
    SC_FETCH_NOT_FOUND, /* 404: the id is unknown to the registry */
    SC_FETCH_ERROR,     /* no usable answer: connection, timeout, 5xx, auth, garbage */
    SC_FETCH_UNUSABLE,  /* a schema that cannot decode records (invalid, Protobuf, ...) */
    SC_FETCH__COUNT,
};
void sc_metrics_registry_fetch(enum sc_metrics_fetch outcome);
void sc_metrics_registry_cached(int64_t delta);

/* Appends the Prometheus text exposition (format 0.0.4) of every metric. */
int sc_metrics_render(struct sc_buf *out);

/* Frees everything (at exit, for leak checkers). */
void sc_metrics_free_all(void);

static inline void sc_counter_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

#endif
