/*
 * sc_sink_txn - the commit hook of transactional sinks: sinks that write
 * their records into the checkpoint database and commit the checkpoint in
 * the same transaction (sink_postgres.c), so no pending step is needed.
 *
 * Only such sinks and the worker include this header; the others never see
 * libpq through the sink interface.
 */
#ifndef SC_SINK_TXN_H
#define SC_SINK_TXN_H

#include <libpq-fe.h>

#include "sinks/sc_sink.h"

/*
 * The worker's side of a transactional sink's write (SC_SINK_F_TRANSACTIONAL):
 * it lends its checkpoint connection and the parameters of the commit so
 * the sink can run it inside its own transaction.
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

/* One partition's batch in a shared transaction (struct sc_sink_class.write_group). */
struct sc_txn_item {
    struct sc_sink_part *part;
    const struct sc_batch *batch;      /* its records come from records() */
    const struct sc_commit_hook *hook; /* with queue(); conn is the same in every item */
    struct sc_batch_result *res;       /* next_write_offset, as from write() */
    /* The batch's records (batch->count), valid until records() is called for another item:
     * the worker lays out one batch's records at a time, so a group costs no more memory
     * than its largest batch. */
    const struct sc_record *(*records)(void *arg);
    void *arg;
};

#endif
