/*
 * sc_sink - the sink interface: one class struct per sink type (sink_file.c,
 * sink_postgres.c, sink_http.c, sink_stdout.c) holding its name, its
 * configuration keys and its callbacks, and the registry that lists the
 * classes (sc_sink.c: a new sink is its own file plus one line there; see
 * docs/writing-a-sink.md).
 *
 * A sink instance belongs to one delivery worker thread; every callback of
 * an instance runs on that thread.  A partition handle (struct sc_sink_part)
 * belongs to the worker that owns the partition.
 *
 * The contract that makes replays overwrite instead of duplicating (I1, I5):
 * write() of the same batch at the same write offset must leave the
 * destination in the same state however often it runs, and what it writes
 * must be a pure function of the records and the config.
 */
#ifndef SC_SINK_H
#define SC_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/sc_conf.h"
#include "config/sc_config.h"
#include "record/sc_envelope.h"

enum sc_sink_result {
    SC_SINK_OK = 0, /* delivered; durable per the sink's policy once part_sync() returned */
    SC_SINK_RETRY,  /* transient: the same batch will be written again, same offset */
    SC_SINK_ERROR,  /* permanent for the partition: it goes to the error state */
    SC_SINK_FENCED, /* transactional sinks: the checkpoint commit matched no row (I4) */
};

/* Identifies a partition and its owner's lease. */
struct sc_part_ref {
    const char *pipeline;
    const char *topic;
    int32_t partition;
    int64_t epoch;
};

/* A record the sink could not deliver and wants dead-lettered (I3: committed past only as
 * a dead letter, in the commit's transaction). */
struct sc_dead_letter {
    size_t index;  /* into sc_batch.records */
    char *error;   /* malloc'd, owned by the batch result */
    int status;    /* HTTP status or 0 */
    char *excerpt; /* response body excerpt or NULL, malloc'd */
    int attempts;
};

/*
 * A batch of consecutive records of one partition, to be written at
 * write_offset (the sink's own unit: file byte offset, HTTP batch sequence,
 * PostgreSQL next source offset).
 */
struct sc_batch {
    const struct sc_part_ref *part;
    const struct sc_record *records;
    size_t count;
    int64_t first_offset;
    int64_t last_offset;
    uint32_t checksum;
    int64_t write_offset;
    bool replay; /* re-delivery of a pending batch found at takeover */
};

/* What write() reports besides its result. */
struct sc_batch_result {
    int64_t next_write_offset; /* where the next batch goes (on SC_SINK_OK) */
    /* On SC_SINK_RETRY: when to call write() again, in ms from now, when the sink knows
     * (its own backoff, or what the destination asked, e.g. HTTP Retry-After); 0 = the
     * worker's own backoff. */
    int64_t retry_in_ms;
    struct sc_dead_letter *dead;
    size_t ndead;
    size_t dead_cap;
};

/*
 * Finding rejected records by bisection (the http and postgres sinks): a
 * rejected range is split in halves, left first, down to single records.
 * Once the left half of a split is resolved and `bad` of its `left` records
 * were rejected, this says whether they are dense enough (a quarter or
 * more, of at least 16) that the right half, when rejected as a whole, is
 * better sent one record at a time than split again: an all-bad batch of n
 * records then costs about n calls instead of 2n, while a batch with a few
 * rejected records keeps the bisection's few calls.
 */
bool sc_sink_bisect_dense(size_t left, size_t bad);

/* Adds a dead letter to a result; takes ownership of error/excerpt. */
void sc_batch_result_add_dead(struct sc_batch_result *r, size_t index, char *error, int status,
                              char *excerpt, int attempts);
void sc_batch_result_clear(struct sc_batch_result *r);

/*
 * Hook for sinks that commit the checkpoint themselves (SC_SINK_F_TRANSACTIONAL):
 * the worker lends its checkpoint connection and the commit so the sink can
 * run it inside its own transaction.  Defined in sinks/sc_sink_txn.h, which
 * only transactional sinks (and the worker) include.
 */
struct sc_commit_hook;
/* One partition's batch in a transaction shared with other partitions' (write_group()). */
struct sc_txn_item;

struct sc_sink;
struct sc_sink_part;

/* The sink writes records + checkpoint in one transaction: no pending step. */
#define SC_SINK_F_TRANSACTIONAL 0x1

struct sc_sink_class {
    /*
     * The type's name in the config ("type": "file") and the table of its
     * own keys: the loader parses them into a struct of conf.table->size
     * bytes that the sink reads as sink->conf, and `check-config
     * --reference` documents them from the same table.
     */
    struct sc_conf_variant conf;
    /*
     * Optional: rules between this sink's keys and the rest of the
     * configuration (another pipeline writing the same files, say), for
     * cfg->pipelines[i]; ctx's path is at pipelines[i].  Runs even when some
     * keys were invalid: a NULL string means "not given or invalid".
     */
    void (*check_config)(struct sc_conf_ctx *ctx, const struct sc_config *cfg, size_t i);
    /*
     * Optional, for `sidecar check-config --online`: checks what the sink of
     * cfg->pipelines[i] needs from outside the config (a table and its shape,
     * a writable directory) without changing anything.  Returns 0 with a
     * short note of what was checked in msg, or -1 with every problem in msg.
     */
    int (*check_online)(const struct sc_config *cfg, size_t i, char *msg, size_t msgsize);
    unsigned flags; /* defaults for struct sc_sink.flags; create() may change them */
    /* Optional: the pipeline's workers when its config does not set them (0: one per CPU
     * available, at most 4), e.g. more for a sink whose writes mostly wait on a service. */
    int default_workers;
    /* Optional, with default_workers 0: the CPUs that default leaves to librdkafka's threads
     * (fetching, decompressing), down to one worker.  For a sink whose writes are the
     * sidecar's own CPU work (formatting, write()) rather than waits on a server. */
    int spare_cpus;
    /* Optional: memory the type takes once per process, whatever its workers do (libraries
     * it initialises), which the memory budget sets aside with its fixed part (sc_budget.h). */
    int64_t fixed_bytes;

    /* Creates the per-worker state in sink->ctx (connections, handles, buffers). */
    int (*create)(struct sc_sink *sink, char *err, size_t errsize);
    /* Frees sink->ctx; partitions are closed before. */
    void (*destroy)(struct sc_sink *sink);

    /* Opens the destination of a partition the worker now owns. */
    int (*part_open)(struct sc_sink *sink, const struct sc_part_ref *ref, struct sc_sink_part **out,
                     char *err, size_t errsize);
    /*
     * Makes the destination agree with the checkpoint before the first write
     * after a takeover: nothing past end_write_offset may remain visible
     * (file: truncate).  still_owner(arg) re-checks the lease at the last
     * moment; a sink that destroys data must call it under a lock that any
     * other recovering owner also takes.  Optional.
     */
    int (*part_recover)(struct sc_sink *sink, struct sc_sink_part *p, int64_t end_write_offset,
                        int (*still_owner)(void *arg), void *arg, char *err, size_t errsize);
    /* Closes the partition's destination (flushing what the policy needs). Optional. */
    void (*part_close)(struct sc_sink *sink, struct sc_sink_part *p);

    /*
     * Delivers b at b->write_offset.  On SC_SINK_OK sets res->next_write_offset
     * and may list dead letters.  err gets a message for RETRY/ERROR.
     * hook is non-NULL only for SC_SINK_F_TRANSACTIONAL sinks.
     */
    enum sc_sink_result (*write)(struct sc_sink *sink, struct sc_sink_part *p,
                                 const struct sc_batch *b, const struct sc_commit_hook *hook,
                                 struct sc_batch_result *res, char *err, size_t errsize);

    /*
     * Optional, for SC_SINK_F_TRANSACTIONAL sinks: writes the batches of
     * several partitions, each with its checkpoint advance (its hook's
     * queue()), in one transaction on the connection all the items' hooks
     * lend.  All or nothing: returns 1 when it committed, 0 when nothing was
     * committed (the connection is idle, or lost; the worker then writes the
     * batches one by one with write(), which tells a bad row or a fence
     * apart), -1
     * when the connection failed once COMMIT could have reached the server
     * (the worker reads the checkpoints back).  Once the advances were
     * queued, every item's queued() is told that outcome.  A sink may
     * decline a group (0) before sending anything.
     */
    int (*write_group)(struct sc_sink *sink, const struct sc_txn_item *items, size_t n, char *err,
                       size_t errsize);

    /*
     * Optional: makes durable what write() delivered to p since the last
     * call, for a sink whose durability step may wait until the checkpoint
     * commit (file: fdatasync).  The worker calls it before every commit
     * that covers a written batch, and after a turn in which it wrote
     * several partitions' batches, for those whose commit waits: the writes
     * of the turn go out back to back, each no longer behind the syncs of
     * the ones before.  Those syncs run several at once (base/sc_parallel.h):
     * it may be called from another thread than the worker's, alongside
     * other partitions' part_sync() (never two for one partition, never
     * alongside any other call into the sink), so it touches only p.
     * Returns 0, or -1 with err: the written batch is then written again
     * (same write offset) before its commit.
     */
    int (*part_sync)(struct sc_sink *sink, struct sc_sink_part *p, char *err, size_t errsize);

    /*
     * Optional (`sidecar redrive`): re-sends dead-lettered records, outside
     * the checkpoint protocol, each on its own.  Sets ok[i] when records[i]
     * was delivered, else errors[i] (malloc'd; the caller frees).  Returns
     * SC_SINK_OK if the destination could be asked at all.
     */
    enum sc_sink_result (*redrive)(struct sc_sink *sink, const struct sc_record *records, size_t n,
                                   bool *ok, char **errors, char *err, size_t errsize);
};

struct sc_sink {
    const struct sc_sink_class *type;
    unsigned flags; /* SC_SINK_F_*: the class's, unless create() decided otherwise */
    const struct sc_config *cfg;
    const struct sc_pipeline_conf *pc;
    const void *conf; /* the type's own config struct (pc->sink.conf) */
    int worker_id;
    void *ctx;
};

/* Every sink type, for the config loader (sc_config_load() and friends). */
extern const struct sc_sink_registry sc_sinks;

/* The class of a configured sink (pc->sink), or NULL if it is not a sink type. */
const struct sc_sink_class *sc_sink_class_of(const struct sc_conf_choice *sink);

/* Creates a sink instance for one worker; NULL with err on failure. */
struct sc_sink *sc_sink_new(const struct sc_config *cfg, const struct sc_pipeline_conf *pc,
                            int worker_id, char *err, size_t errsize);
void sc_sink_free(struct sc_sink *sink);

/*
 * Appends the sanitised form of a name for use as one path component:
 * bytes outside [A-Za-z0-9._-] become '_', and "." / ".." / "" get a '_'
 * prefix, so a topic name can never climb out of or into a directory.
 */
int sc_sink_path_component(struct sc_buf *out, const char *name)
    __attribute__((warn_unused_result));

/* Expands {pipeline} {topic} {partition} in a path template (components sanitised). */
char *sc_sink_expand_path(const char *tmpl, const struct sc_part_ref *ref);

#endif
