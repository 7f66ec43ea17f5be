/*
 * sc_lease - per-partition leases in PostgreSQL with an epoch (fencing
 * token): acquire, renew, release.  docs/design.md §4, invariant I4.
 *
 * A lease can be taken when it is free, expired, or already held by this
 * instance (a restart after a crash need not wait for its own TTL).  Every
 * acquisition raises the epoch above both the lease's and the checkpoint's
 * previous epoch and writes it into the checkpoint row in the same
 * transaction, so the previous holder's checkpoint writes match no row.
 * A live lease of another owner is never taken: the caller waits.
 *
 * @locality any thread with its own struct sc_db.
 */
#ifndef SC_LEASE_H
#define SC_LEASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db/sc_db.h"
#include "protocol/sc_checkpoint.h"

/* One partition asked for, and the answer. */
struct sc_lease_req {
    const char *topic;
    int32_t partition;
    /* results */
    bool acquired;
    int64_t epoch;     /* our new epoch (acquired) or the holder's */
    struct sc_cp cp;   /* the checkpoint row (acquired only) */
    char holder[128];  /* the live holder (not acquired) */
    int64_t holder_ms; /* its lease expires in this many ms (not acquired) */
};

/*
 * Tries to acquire every lease in reqs in one statement (one round trip),
 * announcing the lease events on notify_channel (NULL: coalesced mode).
 * Returns 0 (each req says whether it was acquired), or -1 if PostgreSQL
 * could not be asked (*unavailable true: retry later).
 */
int sc_lease_acquire(struct sc_db *db, const char *pipeline, const char *owner, int ttl_ms,
                     const char *notify_channel, struct sc_lease_req *reqs, size_t n,
                     bool *unavailable);

/* A held lease, for renewal and release. */
struct sc_lease_held {
    const char *topic;
    int32_t partition;
    int64_t epoch;
    bool ok;             /* result of renew: still ours */
    int64_t control_seq; /* result of renew: the checkpoint's operator sequence */
};

/*
 * Renews every lease in held (one statement); sets ok per lease.
 * Returns 0, or -1 if PostgreSQL could not be asked.
 */
int sc_lease_renew(struct sc_db *db, const char *pipeline, const char *owner, int ttl_ms,
                   struct sc_lease_held *held, size_t n);

/* Releases (expires now) the given leases, writing a 'lease' release event. */
int sc_lease_release(struct sc_db *db, const char *pipeline, const char *owner,
                     const char *notify_channel, const struct sc_lease_held *held, size_t n,
                     const char *reason);

/* Appends a PostgreSQL array literal of strings / integers to b. */
int sc_pg_array_str(struct sc_buf *b, const char *const *items, size_t n);
int sc_pg_array_i64(struct sc_buf *b, const int64_t *items, size_t n);

#endif
