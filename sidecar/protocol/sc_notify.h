/*
 * sc_notify - how checkpoint events are announced with NOTIFY (I7, I8).
 *
 * Every checkpoint statement NOTIFYs "<schema>_events" in its own
 * transaction, so a watcher hears of an event only if it committed.  But a
 * NOTIFY takes a cluster-wide lock held through commit, serialising every
 * notifying commit.  So each pipeline counts its commits; above
 * notify.max_per_second it switches to coalesced mode: statements stop
 * notifying (events are still written in each transaction) and the
 * notifier thread sends one NOTIFY per notify.coalesce_ms that says
 * "events up to id X".  Watchers re-read the event table from their token
 * on any notification, so nothing is lost, only batched.  When the rate
 * falls below half the threshold for a few seconds it switches back.
 * Each switch is a 'notify_mode' event and the sidecar_notify_coalesced
 * gauge.
 *
 * @locality sc_notify_channel(): any thread; the notifier: its own thread.
 */
#ifndef SC_NOTIFY_H
#define SC_NOTIFY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sc_config;

/* One pipeline's notification state, shared by its threads. */
struct sc_notify_pl {
    const char *pipeline;
    char channel[160];        /* "<schema>_events" */
    _Atomic uint64_t commits; /* checkpoint commits so far, for the rate */
    atomic_bool coalesced;
    atomic_bool dirty; /* events written since the last coalesced NOTIFY */
};

void sc_notify_pl_init(struct sc_notify_pl *n, const struct sc_config *cfg, const char *pipeline);

/*
 * The channel a statement about to write an event should NOTIFY, or NULL in
 * coalesced mode (the event is then announced by the notifier).
 */
const char *sc_notify_channel(struct sc_notify_pl *n);

/* Counts one committed batch (the rate that decides the mode). */
void sc_notify_count_commit(struct sc_notify_pl *n);

struct sc_notifier;

/* Starts the notifier thread for these pipelines; NULL with err on failure. */
struct sc_notifier *sc_notifier_start(const struct sc_config *cfg, struct sc_notify_pl **pls,
                                      size_t n, char *err, size_t errsize);
void sc_notifier_stop(struct sc_notifier *nt);

#endif
