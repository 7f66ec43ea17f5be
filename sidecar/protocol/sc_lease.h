/*
 * sc_lease - per-partition leases in PostgreSQL with an epoch (fencing
 * token), and the registry of live instances they are renewed with.
 * docs/design.md §4 (leases and fencing, I4) and §10 (lease-coordinated
 * assignment).  The statements are SQL functions of sql/005_lease_assignment.sql.
 *
 * A lease can be taken when it is free, expired or released (unless a
 * handoff reserved it for another live instance), or when it is held by
 * this instance_id itself (a restart after a crash need not wait for its
 * own TTL; a second process with the same instance_id is refused at start,
 * see sc_lease_register()).  Every acquisition raises the epoch (from a
 * sequence, above both the lease's and the checkpoint's previous epoch) and
 * writes it into the checkpoint row in the same transaction, so the
 * previous holder's checkpoint writes match no row.  A live lease of
 * another owner is never taken: the caller waits, or (lease mode) asks the
 * owner to hand it over.  A lease or checkpoint row locked by another
 * session is skipped, not waited for (busy): it delays its own partition
 * only.
 *
 * Renewal is one statement per renew interval per instance, whatever the
 * number of partitions (sc_lease_tick()): it renews the registration and
 * every lease still live, and (lease mode) returns the lease table and the
 * live instances the assignment judges by.
 *
 * @locality any thread with its own struct sc_db.
 */
#ifndef SC_LEASE_H
#define SC_LEASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db/sc_db.h"
#include "protocol/sc_assign.h"
#include "protocol/sc_checkpoint.h"

/* One partition asked for, and the answer. */
struct sc_lease_req {
    const char *topic;
    int32_t partition;
    /* results */
    bool acquired;
    bool busy;         /* its lease or checkpoint row is locked by another session: try later */
    int64_t epoch;     /* our new epoch (acquired) or the holder's */
    struct sc_cp cp;   /* the checkpoint row (acquired only) */
    char holder[129];  /* the live holder, or the instance it is reserved for (not acquired) */
    int64_t holder_ms; /* its lease (or the reservation) lasts this many ms more */
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
enum sc_lease_state {
    SC_LEASE_RENEWED, /* still ours, renewed */
    SC_LEASE_LAPSED,  /* still our epoch but expired before we renewed it: acquire it again */
    SC_LEASE_LOST,    /* another owner or epoch now (or the row is gone): we are fenced */
    SC_LEASE_BUSY,    /* still ours and live, but its row is locked by another session: not
                         renewed this time (the local validity must not be extended) */
};

struct sc_lease_held {
    const char *topic;
    int32_t partition;
    int64_t epoch;
    /* results of sc_lease_tick() */
    enum sc_lease_state state;
    int64_t control_seq; /* the checkpoint's operator sequence */
};

/* This process, as the registry knows it. */
struct sc_lease_self {
    const char *pipeline;
    const char *instance;   /* instance_id */
    int64_t incarnation;    /* random per process start */
    const char *assignment; /* "kafka-group" or "lease" */
    int ttl_ms;
};

/* Who holds an instance_id when registering is refused. */
struct sc_lease_holder {
    char host[256];
    int os_pid;
    char started_at[64];
    int64_t expires_ms;
};

/*
 * Registers this process for its pipeline.  *registered is false (and
 * *holder says who) while another live, connected process holds the same
 * instance_id there; a crashed predecessor is never in the way.  *draining
 * tells whether an operator drained this instance.  0, or -1 if
 * PostgreSQL could not be asked.
 */
int sc_lease_register(struct sc_db *db, const struct sc_lease_self *self, const char *host,
                      int os_pid, bool *registered, bool *draining, struct sc_lease_holder *holder);

/* Marks the registration expired (a clean shutdown), telling the others at once. */
int sc_lease_deregister(struct sc_db *db, const struct sc_lease_self *self);

/* A lease row of the pipeline, as sc_lease_tick() returns it (lease mode). */
struct sc_lease_row {
    const char *topic;
    int32_t partition;
    const char *owner; /* live holder or NULL */
    int64_t epoch;
    const char *pinned_to;  /* or NULL */
    const char *handoff_to; /* or NULL */
    enum sc_handoff_reason reason;
    int64_t handoff_ms;
    int64_t held_ms;
};

/* A live instance of the pipeline. */
struct sc_lease_instance {
    const char *id;
    int owned;     /* live leases it holds */
    bool eligible; /* lease mode, not draining, and it sees partitions in the metadata */
    bool draining; /* drain_instance() */
};

struct sc_lease_tick {
    bool registered; /* false: another process holds our instance_id: renewed nothing */
    bool self_busy;  /* our registration row is locked by another session: not renewed */
    size_t busy;     /* leases answered SC_LEASE_BUSY */
    struct sc_lease_row *leases;
    size_t nleases;
    struct sc_lease_instance *insts;
    size_t ninsts;
    PGresult *res; /* owns the strings above */
};

/*
 * One renewal: the registration (with what this instance knows: the
 * partitions it saw in the metadata, known; its share; topic_counts, a JSON
 * object or NULL) and every lease in held (state and control_seq set per
 * lease).  With full, also the pipeline's leases and live instances.
 * 0, or -1 if PostgreSQL could not be asked.  sc_lease_tick_clear() after.
 */
int sc_lease_tick(struct sc_db *db, const struct sc_lease_self *self, struct sc_lease_held *held,
                  size_t n, int known, int share, const char *topic_counts, bool full,
                  struct sc_lease_tick *out);
void sc_lease_tick_clear(struct sc_lease_tick *t);

/*
 * Releases (expires now) the given leases, writing a 'lease' release event
 * and telling the other instances on the control channel.  handoff_to
 * reserves them for that instance (a handoff); NULL frees them for anyone.
 * seen is the lease's handoff request (handoff_to) as it was when the
 * release was decided: a request made since then (an operator's move,
 * another instance's request) is newer and stays, as the reservation,
 * instead of handoff_to.  sc_lease_release() judges with seen = handoff_to.
 * Returns how many were released (a lease no longer ours is not), or -1.
 */
int sc_lease_release(struct sc_db *db, const char *pipeline, const char *owner,
                     const char *notify_channel, const struct sc_lease_held *held, size_t n,
                     const char *reason, const char *handoff_to);
int sc_lease_release_judged(struct sc_db *db, const char *pipeline, const char *owner,
                            const char *notify_channel, const struct sc_lease_held *held, size_t n,
                            const char *reason, const char *handoff_to, const char *seen);

/*
 * Lease mode: asks the owners[i] of (topics[i], partitions[i]) to hand them
 * to me; returns how many requests were made (a partition already asked
 * for, or no longer theirs, is not), or -1.
 */
int sc_lease_request_handoffs(struct sc_db *db, const char *pipeline, const char *me,
                              const char *const *topics, const int32_t *partitions,
                              const char *const *owners, size_t n);

/*
 * Lease mode: declines the handoff requests on these leases of mine (why:
 * for the event).  was[i] is the request (handoff_to) as it was judged: one
 * made since then is newer and is not cleared.  Returns how many were.
 */
int sc_lease_refuse_handoffs(struct sc_db *db, const char *pipeline, const char *me,
                             const char *const *topics, const int32_t *partitions,
                             const char *const *was, size_t n, const char *why);

/*
 * LISTENs on the control channel ("<schema>_control") on db's connection
 * unless *gen says this connection listens already (db->connects).
 * Returns 1 when it started listening (a new connection: notifications may
 * have been missed meanwhile), 0 when it listened already, -1 on failure.
 */
int sc_lease_listen(struct sc_db *db, unsigned *gen);

/* A notification on the control channel. */
struct sc_lease_note {
    char topic[256]; /* "" when about no partition */
    int32_t partition;
    char action[32];
    char instance[129];
};

/*
 * Reads the control notifications that arrived for pipeline (without
 * waiting), calling fn for each; returns how many, or -1 if the connection
 * broke.
 */
int sc_lease_poll_notes(struct sc_db *db, const char *pipeline,
                        void (*fn)(void *arg, const struct sc_lease_note *note), void *arg);

/* Appends a PostgreSQL array literal of strings / integers to b. */
int sc_pg_array_str(struct sc_buf *b, const char *const *items, size_t n);
int sc_pg_array_i64(struct sc_buf *b, const int64_t *items, size_t n);

#endif
