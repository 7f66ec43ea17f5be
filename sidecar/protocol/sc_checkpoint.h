/*
 * sc_checkpoint - the pending/committed checkpoint protocol of one
 * partition (docs/design.md §4, invariants I2-I5).  The NOTES at the top of
 * sc_checkpoint.c explain what a crash at each step leaves behind.
 *
 * Every write is one SQL statement, conditional on the writer's lease epoch,
 * that also inserts the event describing it (same transaction).
 *
 * @locality the worker thread that owns the partition.
 */
#ifndef SC_CHECKPOINT_H
#define SC_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>

#include "db/sc_db.h"

/* Identifies a partition and the writer. */
struct sc_cp_key {
    const char *pipeline;
    const char *topic;
    int32_t partition;
    const char *owner;
    const char *notify_channel; /* NOTIFY this channel with the event; NULL = coalesced mode */
};

/* A checkpoint row as its owner knows it. */
struct sc_cp {
    int64_t epoch;
    bool has_committed; /* false: nothing committed yet (start_from applies) */
    int64_t committed_offset;
    int64_t committed_write_offset;
    bool has_pending;
    int64_t pending_first;
    int64_t pending_last;
    int32_t pending_count;
    uint32_t pending_checksum;
    int64_t pending_write_offset;
    bool error; /* state = 'error' */
    char error_msg[256];
    bool paused;         /* pause_partition() */
    int64_t control_seq; /* bumped by every operator action (reset, pause, resume) */
};

enum sc_cp_status {
    SC_CP_OK = 0,
    SC_CP_FENCED,      /* the row's epoch is not ours (another owner, or a reset) */
    SC_CP_CONFLICT,    /* epoch ours but the row is not in the state we expected */
    SC_CP_UNAVAILABLE, /* PostgreSQL unreachable: outcome unknown, reconcile and retry */
    SC_CP_TRANSIENT,   /* refused for a passing reason (serialization failure, deadlock,
                          timeout, lock, resources): nothing changed, retry later */
    SC_CP_FAILED,      /* refused for good (constraint, trigger, privilege, missing column...):
                          nothing changed and retrying cannot help; db->last_* say why */
};

const char *sc_cp_status_name(enum sc_cp_status s);

/* A record the sink could not deliver, stored in dead_letters with the commit. */
struct sc_cp_dead {
    int64_t offset;
    const char *envelope; /* the record's envelope (JSON text) */
    const void *key;      /* raw bytes, NULL = null */
    size_t key_len;
    const void *value; /* raw bytes, NULL = null */
    size_t value_len;
    const char *error;
    int status;          /* HTTP status or 0 */
    const char *excerpt; /* response body excerpt or NULL */
    int attempts;
};

/* What a pend of [first, last] (count, checksum) at write_offset makes of cp, the writer's
 * copy of the row. */
void sc_checkpoint_apply_pend(struct sc_cp *cp, int64_t first, int64_t last, int32_t count,
                              uint32_t checksum, int64_t write_offset);

/* Records a pending batch [first, last] (count records, checksum) at cp->committed_write_offset;
 * CONFLICT while the partition is paused (nothing new starts after pause_partition()). */
enum sc_cp_status sc_checkpoint_pend(struct sc_db *db, const struct sc_cp_key *k, struct sc_cp *cp,
                                     int64_t first, int64_t last, int32_t count, uint32_t checksum);

/*
 * Commits the pending batch: next offset to deliver and next write offset.
 * replay marks the commit of a batch re-delivered after a takeover.  The
 * dead letters (may be none) are stored in the same transaction: a record
 * is never committed past unless it was delivered or dead-lettered (I3).
 */
enum sc_cp_status sc_checkpoint_commit(struct sc_db *db, const struct sc_cp_key *k,
                                       struct sc_cp *cp, int64_t next_offset,
                                       int64_t next_write_offset, bool replay,
                                       const struct sc_cp_dead *dead, size_t ndead);

/* Commits the pending batch and pends the next one in one transaction (one round trip
 * when there are no dead letters).  A paused partition (pause_partition()) gets the commit
 * only: then cp->has_pending is false and cp->paused true. */
enum sc_cp_status sc_checkpoint_commit_and_pend(struct sc_db *db, const struct sc_cp_key *k,
                                                struct sc_cp *cp, int64_t next_offset,
                                                int64_t next_write_offset, bool replay,
                                                const struct sc_cp_dead *dead, size_t ndead,
                                                int64_t first, int64_t last, int32_t count,
                                                uint32_t checksum);

/* At most this many partitions per grouped commit statement (sc_checkpoint_commit_group()). */
#define SC_CP_GROUP_MAX 64

/* One partition's part of a grouped commit. */
struct sc_cp_group_item {
    const char *topic;
    int32_t partition;
    struct sc_cp *cp; /* the writer's copy of the row: updated when status is SC_CP_OK */
    int64_t next_offset, next_write_offset;
    bool replay;
    bool and_pend; /* pend the next batch [first, last] (count, checksum) with the commit */
    int64_t first, last;
    int32_t count;
    uint32_t checksum;
    enum sc_cp_status status; /* out: this partition's outcome (see below) */
};

/*
 * sc_checkpoint_commit() or sc_checkpoint_commit_and_pend() (without dead
 * letters) for up to SC_CP_GROUP_MAX partitions of one pipeline and owner,
 * in one statement: one round trip and one transaction for all of them.
 * Every row is guarded by its own epoch and expected pending batch, exactly
 * as the single statements are, and a row that does not match changes
 * nothing and writes no event, while the others commit.
 *
 * Returns SC_CP_OK when the statement ran: then every item's status says
 * what happened to its partition: SC_CP_OK (committed, item->cp updated, as
 * by the single statement, paused included), SC_CP_FENCED or SC_CP_CONFLICT
 * (its row did not match: nothing of it changed), or SC_CP_UNAVAILABLE /
 * SC_CP_TRANSIENT / SC_CP_FAILED when its row did not match and reading it
 * back to say why failed (nothing of it changed either).  Any other return
 * is the statement's own: SC_CP_TRANSIENT or SC_CP_FAILED changed nothing
 * for any item; SC_CP_UNAVAILABLE leaves all of them unknown (all committed
 * or none: it is one transaction).  Items' statuses are then undefined.
 */
enum sc_cp_status sc_checkpoint_commit_group(struct sc_db *db, const char *pipeline,
                                             const char *owner, const char *notify_channel,
                                             struct sc_cp_group_item *items, size_t n);

/*
 * sc_checkpoint_pend() for up to SC_CP_GROUP_MAX partitions of one pipeline
 * and owner, in one statement: each item pends [first, last] (count,
 * checksum; next_offset, next_write_offset, replay and and_pend are not
 * read).  Every row is guarded exactly as the single statement guards it
 * (its epoch, nothing pending, not paused, the committed position in
 * item->cp), writes the same 'pend' event, and a row that does not match
 * changes nothing while the others pend.  Returns and statuses as
 * sc_checkpoint_commit_group()'s; SC_CP_OK for an item means pended
 * (item->cp updated as by the single statement).
 */
enum sc_cp_status sc_checkpoint_pend_group(struct sc_db *db, const char *pipeline,
                                           const char *owner, const char *notify_channel,
                                           struct sc_cp_group_item *items, size_t n);

/*
 * For sinks that commit records and checkpoint in one transaction (no
 * pending step): advances the committed position from cp (nothing pending)
 * to the batch [first, last], storing dead letters too.  Must run on db's
 * connection inside the caller's open transaction (see sc_db_hold()).
 */
enum sc_cp_status sc_checkpoint_advance(struct sc_db *db, const struct sc_cp_key *k,
                                        struct sc_cp *cp, int64_t first, int64_t last,
                                        int32_t count, int64_t next_write_offset,
                                        const struct sc_cp_dead *dead, size_t ndead);

/*
 * The same advance (without dead letters) for a caller that pipelines its
 * whole transaction (BEGIN, rows, advance, COMMIT, one round trip; the
 * connection is in pipeline mode): queues the statement and returns
 * without waiting; the caller reads its one result.  The statement fails
 * (an error result) when it matches no row, fenced or not, so a COMMIT
 * queued after it rolls back instead of committing rows without their
 * checkpoint; sc_checkpoint_advance() after a rollback says which it was.
 * sc_checkpoint_advance_prepare() first, outside pipeline mode (one round
 * trip the first time on a connection).  *cp is left as it is; *after
 * gets the state once the transaction commits.  0, or -1 (db->last_error).
 */
int sc_checkpoint_advance_prepare(struct sc_db *db);
int sc_checkpoint_advance_queue(struct sc_db *db, const struct sc_cp_key *k, const struct sc_cp *cp,
                                int64_t first, int64_t last, int32_t count,
                                int64_t next_write_offset, struct sc_cp *after);

/* Stores dead letters (inside the caller's transaction). */
enum sc_cp_status sc_checkpoint_store_dead(struct sc_db *db, const struct sc_cp_key *k,
                                           const struct sc_cp_dead *dead, size_t ndead);

/* Sets the starting offset of a partition that has no checkpoint yet (start_from latest). */
enum sc_cp_status sc_checkpoint_set_start(struct sc_db *db, const struct sc_cp_key *k,
                                          struct sc_cp *cp, int64_t offset, const char *why);

/* Puts the partition in the error state with a message a user can act on. */
enum sc_cp_status sc_checkpoint_fail(struct sc_db *db, const struct sc_cp_key *k, struct sc_cp *cp,
                                     const char *message);

/* Writes a 'fenced' event (unconditionally: the writer lost its epoch). */
enum sc_cp_status sc_checkpoint_note_fenced(struct sc_db *db, const struct sc_cp_key *k,
                                            int64_t my_epoch, const char *reason);

/*
 * A message for the error state after SC_CP_FAILED (what: "committing a
 * batch"): the statement, its SQLSTATE and what the server said (from
 * db->last_*), what to fix, and the SQL that clears the error state keeping
 * the pending batch.  Written into out (a few hundred bytes suffice).
 */
void sc_checkpoint_failure_message(const struct sc_db *db, const struct sc_cp_key *k,
                                   const char *what, char *out, size_t size);

/* Reads the row into *cp (for reconciling after an unknown outcome). */
enum sc_cp_status sc_checkpoint_load(struct sc_db *db, const struct sc_cp_key *k, struct sc_cp *cp);

/* 0 if epoch is still the row's epoch, -1 otherwise (or on error). */
int sc_checkpoint_still_owner(struct sc_db *db, const struct sc_cp_key *k, int64_t epoch);

/* Parses columns [col, col+11] of a result row into *cp (shared with sc_lease): epoch,
 * committed_offset, committed_write_offset, pending_{first,last}_offset, pending_count,
 * pending_checksum, pending_write_offset, state, error, paused, control_seq. */
void sc_checkpoint_parse_row(const PGresult *res, int row, int col, struct sc_cp *cp);

#endif
