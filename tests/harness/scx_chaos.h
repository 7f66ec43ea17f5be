/*
 * scx_chaos - the kill loop the crash tests share: several `sidecar run`
 * instances consume one topic while records are produced in chunks; the
 * test SIGKILLs one at random after each chunk and restarts whoever killed
 * itself at a failpoint; then a calm phase lets them finish.
 *
 * Whether a kill lands inside a batch (and leaves one to replay) is
 * chance, and so is much else a test wants to have seen.  A test checks
 * what it needs after the calm and, if it is missing, runs backlog rounds
 * (scx_chaos_backlog()), which make it happen instead of hoping.
 */
#ifndef SCX_CHAOS_H
#define SCX_CHAOS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "scx.h"

struct scx_inst {
    const char *name;
    const char *failpoints; /* SIDECAR_FAILPOINTS while the chaos lasts, or NULL */
    char cfg[700];          /* written by scx_chaos_start() */
    pid_t pid;
    int leases_before; /* "lease acquired" lines in its log when it was last started */
};

struct scx_chaos {
    struct scx_env *e;
    struct scx_inst *in;
    int ninst;
    const char *topic; /* "orders" */
    /* Produces count more records per partition of topic, from offset first: by default
     * hx_produce_seq(), whose values are their sequence numbers. */
    void (*produce)(struct scx_chaos *c, int64_t first, int64_t count);
    int nparts;
    int chunks;        /* produced at least this many chunks */
    int64_t per_chunk; /* records per partition in a chunk */
    int min_kills;     /* and killed (by the test or at failpoints) at least this often */
    /* Set by scx_chaos_start(). */
    const char *pipeline;
    /* What happened. */
    int kills;          /* by the test */
    int kills_working;  /* of them, of an instance that had acquired a lease since it started */
    int self_kills;     /* at failpoints */
    int64_t produced;   /* per partition */
    int backlog_rounds; /* scx_chaos_backlog() */
};

/* Backlog rounds a test runs at most for what it must see. */
#define SCX_CHAOS_MAX_ROUNDS 5

/* A chaos over ninst instances and nparts partitions of "orders": 10 chunks of 500 records
 * per partition, at least 20 kills (change the fields for other numbers). */
void scx_chaos_init(struct scx_chaos *c, struct scx_env *e, struct scx_inst *in, int ninst,
                    int nparts);

/* Writes each instance's config from o, migrates, and starts them all with their failpoints. */
void scx_chaos_start(struct scx_chaos *c, const struct scx_opts *o);

/* SIGKILLs one instance and starts it again after a random pause (< 0.8 s).  The victim is
 * one that has acquired a lease since it started when there is one: an instance still
 * joining the consumer group has nothing to lose. */
void scx_chaos_kill_one(struct scx_chaos *c);

/* Produces c->chunks chunks (and goes on killing until c->min_kills), killing one instance at
 * a random moment after each chunk (scx_chaos_kill_one()). */
void scx_chaos_kill(struct scx_chaos *c);

/* Restarts every instance that is gone (killed itself): with its failpoints or without. */
void scx_chaos_restart_dead(struct scx_chaos *c, bool failpoints);

/* Calm: restarts whoever dies, without failpoints, until every partition has committed all
 * c->produced records; then stops them all.  Asserts it happened, showing every log's tail
 * and the checkpoints when not. */
void scx_chaos_settle(struct scx_chaos *c);

/* Produces count more records per partition while no instance runs, starts them all (the
 * first with failpoints0 instead of its own when given) and settles: every instance starts
 * with records waiting on each partition it gets. */
void scx_chaos_backlog(struct scx_chaos *c, int64_t count, const char *failpoints0);

/* Batches replayed so far (sidecar.events). */
long long scx_chaos_replays(const struct scx_chaos *c);

/* A predicate for scx_chaos_until(): a batch was replayed (arg unused). */
bool scx_chaos_replayed(struct scx_chaos *c, void *arg);

/* Runs backlog rounds of count records (the first instance with failpoints0, which should
 * make it happen) while seen(c, arg) is false, up to SCX_CHAOS_MAX_ROUNDS rounds in all;
 * returns seen's last answer.  The test still asserts what it needs. */
bool scx_chaos_until(struct scx_chaos *c, bool (*seen)(struct scx_chaos *c, void *arg), void *arg,
                     int64_t count, const char *failpoints0);

#endif
