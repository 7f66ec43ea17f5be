/*
 * sc_pipeline_int - what the two assignment modes of a pipeline share:
 * sc_pipeline.c ("kafka-group") and sc_leasemode.c ("lease").  Not for use
 * outside sidecar/pipeline/.
 *
 * @locality the pipeline's consumer thread.
 */
#ifndef SC_PIPELINE_INT_H
#define SC_PIPELINE_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "pipeline/sc_part.h"
#include "pipeline/sc_pipeline.h"
#include "protocol/sc_lease.h"

struct sc_log_fields sc_pl_log(const struct sc_pipeline *pl);

/* Leaves the consumer group (rd_kafka_consumer_close) with fetcher pokes stopped first. */
void sc_pl_close_consumer(struct sc_pipeline *pl);

/* Lease validity the workers may rely on after a renewal sent at sent_ms. */
int64_t sc_pl_valid_until(const struct sc_pipeline *pl, int64_t sent_ms);

struct sc_part *sc_pl_find_part(struct sc_pipeline *pl, const char *topic, int32_t partition);
void sc_pl_forget_part(struct sc_pipeline *pl, struct sc_part *p);

/*
 * Creates the partition of an acquisition (r->acquired) or one that waits
 * for its lease (r NULL or not acquired: paused, fetching nothing), pins it
 * to the least loaded worker, forwards its fetch queue there and hands it
 * over.  Returns it, with *start set to the offset librdkafka must be
 * assigned at (RD_KAFKA_OFFSET_END for a waiting partition: paused, it
 * fetches nothing; the worker seeks once the lease is acquired).
 */
struct sc_part *sc_pl_add_part(struct sc_pipeline *pl, const char *topic, int32_t partition,
                               const struct sc_lease_req *r, int64_t *start);

/*
 * One renewal tick: renews the registration and the leases of every owned
 * partition that is not waiting for (re)acquisition, and acts on the answer
 * for each (renewed: valid longer, operator changes noticed; lapsed or lost:
 * the partition waits for re-acquisition, a loss counted as fenced).  With
 * full, *out also holds the lease table and the live instances (caller
 * clears it).  extra[0..nextra) are renewed too, their answers left in
 * their state for the caller (partitions being handed over, no longer in
 * pl->parts).  Returns 0, or -1 (PostgreSQL trouble: try again soon).
 */
int sc_pl_tick(struct sc_pipeline *pl, struct sc_lease_held *extra, size_t nextra, bool full,
               int known, int share, const char *topic_counts, struct sc_lease_tick *out);

/*
 * Tries to (re-)acquire every partition waiting for its lease whose retry
 * time has come, in one statement; an acquired one goes back to its worker
 * (seek to the checkpoint).  lost_fn (may be NULL) is told of each one
 * another live instance holds (lease mode drops it).
 */
void sc_pl_acquire_waiting(struct sc_pipeline *pl,
                           void (*lost_fn)(struct sc_pipeline *pl, struct sc_part *p,
                                           const char *holder));

/* Reads the control channel; sets pl->tick_now when a notification concerns us. */
void sc_pl_poll_notes(struct sc_pipeline *pl);

/* The periodic chores of both modes: fetcher pokes, watermark samples, queue forwards. */
void sc_pl_upkeep(struct sc_pipeline *pl);

/* Where to start fetching a freshly leased partition (start_from resolved). */
int64_t sc_pl_start_offset(struct sc_pipeline *pl, const struct sc_lease_req *r);

/* Registers the process (retrying while PostgreSQL is away); see sc_pipeline_start(). */
int sc_pl_register(struct sc_pipeline *pl, char *err, size_t errsize);

/* Lease mode (sc_leasemode.c). */
int sc_leasemode_init(struct sc_pipeline *pl, char *err, size_t errsize);
void *sc_leasemode_main(void *arg);
void sc_leasemode_free(struct sc_pipeline *pl);

#endif
