/*
 * sc_sink - the sink interface: one type struct of callbacks per sink
 * (sink_file.c, sink_postgres.c, sink_http.c, sink_stdout.c) and the
 * registry that finds a type by its config name.
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

#include <libpq-fe.h>

#include "config/sc_config.h"
#include "record/sc_envelope.h"

enum sc_sink_result {
    SC_SINK_OK = 0, /* durably delivered (per the sink's durability policy) */
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
    struct sc_dead_letter *dead;
    size_t ndead;
    size_t dead_cap;
};

/* Adds a dead letter to a result; takes ownership of error/excerpt. */
void sc_batch_result_add_dead(struct sc_batch_result *r, size_t index, char *error, int status,
                              char *excerpt, int attempts);
void sc_batch_result_clear(struct sc_batch_result *r);

/*
 * Hook for sinks that commit the checkpoint themselves (SC_SINK_F_TRANSACTIONAL):
 * the worker lends its checkpoint connection and the parameters of the
 * commit so the sink can run it inside its own transaction.
 */
struct sc_commit_hook {
    /* The worker's checkpoint connection, lent for the duration of write():
     * the sink runs BEGIN, its rows, commit(), then COMMIT on it.  Prepared
     * statements of the sink must use names starting with "sink_" and be
     * re-prepared when conn differs from the previous call's. */
    PGconn *conn;
    /*
     * Runs the checkpoint advance (and the dead letters of r) on conn inside
     * the sink's open transaction.  Returns 0 on success, 1 when fenced (the
     * sink must ROLLBACK and return SC_SINK_FENCED), -1 on an error (ROLLBACK,
     * SC_SINK_RETRY), with err set.
     */
    int (*commit)(void *arg, const struct sc_batch *b, const struct sc_batch_result *r, char *err,
                  size_t errsize);
    void *arg;
    /*
     * Optional (NULL when not offered): the same advance for a sink that
     * sends its whole transaction as one pipeline (one round trip).  With
     * conn in pipeline mode, after the sink's BEGIN and rows, queue() sends
     * the advance without waiting.  It must not have dead letters (those go
     * through commit()).  The statement fails when the advance does not
     * apply (fenced, or the checkpoint moved), so the COMMIT the sink queues
     * behind it can never commit the rows alone.  Returns 0 when exactly
     * one statement was queued (the sink reads its result), -1 if none was.
     * The sink then reports with queued(): 1 COMMIT succeeded; 0 nothing
     * was committed (the sink has rolled back, and may go on with commit()
     * as usual); -1 unknown (the connection failed once COMMIT could have
     * reached the server: the sink returns SC_SINK_RETRY, and the worker
     * reads the checkpoint back to learn what happened).
     */
    int (*queue)(void *arg, const struct sc_batch *b, const struct sc_batch_result *r, char *err,
                 size_t errsize);
    void (*queued)(void *arg, int outcome);
};

struct sc_sink;
struct sc_sink_part;

/* The sink writes records + checkpoint in one transaction: no pending step. */
#define SC_SINK_F_TRANSACTIONAL 0x1

struct sc_sink_class {
    const char *name;
    unsigned flags; /* defaults for struct sc_sink.flags; create() may change them */

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
    int worker_id;
    void *ctx;
};

/* The type for a configured sink. */
const struct sc_sink_class *sc_sink_class_of(enum sc_sink_type t);

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

extern const struct sc_sink_class sink_file_type;
extern const struct sc_sink_class sink_stdout_type;
extern const struct sc_sink_class sink_postgres_type;
extern const struct sc_sink_class sink_http_type;

#endif
