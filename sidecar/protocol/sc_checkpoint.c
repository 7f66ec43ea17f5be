/*
 * sc_checkpoint.c - the pending/committed checkpoint protocol.
 *
 * NOTES
 * -----
 * What is persisted.  One row per (pipeline, topic, partition) in
 * checkpoints: the committed position (committed_offset = next Kafka offset
 * to deliver, committed_write_offset = where the next batch goes in the
 * sink) and at most one pending batch (first/last offset, record count,
 * CRC-32 of the records, the write offset it goes to).  Every change also
 * inserts a row into events, in the same statement and so the same
 * transaction: an event exists iff its change committed (I7).
 *
 * The protocol for one batch B of a partition:
 *
 *   1. pend(B)       UPDATE ... SET pending_* = B, pending_write_offset =
 *                    committed_write_offset WHERE epoch = mine AND nothing
 *                    is pending
 *   2. sink.write(B) at pending_write_offset
 *   3. commit(B)     UPDATE ... SET committed_* = after B, pending_* = NULL
 *                    WHERE epoch = mine AND pending_first_offset = B.first
 *
 * Step 3 of B and step 1 of B+1 are one statement (commit_and_pend): one
 * round trip per batch.  With a backlog B+1 is ready when B is written; below
 * that the worker holds B's commit back for up to max_wait_ms and pends what
 * arrived meanwhile with it (sc_worker.c).  B is durable all along; a crash in
 * that window is the "after 2, before 3" case below.
 *
 * Grouped commits.  A worker serves several partitions over one connection,
 * and each commit_and_pend is a durable transaction (a WAL flush) of its own:
 * with W partitions per worker a record waited behind up to W of them.  So
 * the step 3 (+ step 1 of the next batch) of every partition of a worker
 * whose written batch is due goes in one statement, st_commit_group, an
 * UPDATE over an array of rows (sc_checkpoint_commit_group()).  Nothing of
 * the protocol changes per partition: each row carries its own epoch and
 * expected pending batch in the WHERE clause (I4), exactly the guards of
 * st_commit / st_commit_pend; each matched row writes the same events in
 * the same statement (I7) and one NOTIFY per partition; a batch is pended
 * before it is written (I2: its write waits for the statement's answer) and
 * committed only after it was written and durable (I3: only written batches
 * join).  A row that does not match is simply not updated: it gets no event,
 * the others commit, and the caller learns which rows matched from the
 * ordinalities returned, then reads the others back to tell a fence from a
 * conflict, as run_write_flag() does.  The statement is one transaction, so
 * a crash or a dropped connection leaves all its rows committed or none,
 * each of which is a case of the table below for every partition; the
 * worker then reads each row back, as for a single statement.  A statement
 * the server refused (a trigger, a lock timeout, a deadlock) changed
 * nothing for any partition: the worker then commits them one by one with
 * the single statements, so a refusal is classified and retried for its own
 * partition only, as before.  Step 1 alone goes the same way for the new
 * batches no commit took along (st_pend_group, sc_checkpoint_pend_group()):
 * st_pend's guards and event per row, all pended or none, every write after
 * the statement's answer (I2).
 *
 * What a crash at each point leaves behind, and why the next owner repairs
 * it (it always starts by reading this row under a new, higher epoch):
 *
 *   - before 1 commits: nothing pending; the sink holds nothing past
 *     committed_write_offset (I2: no byte is written before its pend
 *     commits).  The next owner starts at committed_offset.  The records of
 *     B are simply read again.
 *   - after 1, before or during 2: B is pending.  The sink may hold none,
 *     part or all of B at pending_write_offset.  The next owner reads
 *     exactly [first, last] again, checks the count and the checksum (I5),
 *     and writes B to the same write offset: the same bytes to the same
 *     place (I1), so a partial write is completed, a full one overwritten
 *     with identical bytes.  A file sink truncates to the committed write
 *     offset first, so nothing unaccounted for stays visible.
 *   - after 2, before 3 commits: same as the previous case: B is written
 *     twice, identically.  The sink was durable (I3) before 3 was sent, so
 *     3 never points past data that can vanish.
 *   - after 3: nothing pending; B is delivered once.
 *   - commit_and_pend interrupted: it is one statement; either both halves
 *     committed or neither, which are the cases above.
 *
 * An ambiguous outcome (the connection drops after the statement was sent)
 * is resolved by reading the row back: the worker compares it with the
 * state before and after and either continues, retries, or gives up the
 * partition.  Nothing is ever assumed.
 *
 * Refusals.  A statement the server answered with an error changed
 * nothing (each statement is its own transaction, or runs in one that is
 * rolled back; a grouped commit changed nothing for any of its partitions),
 * so only a dropped connection leaves the outcome unknown
 * (SC_CP_UNAVAILABLE).  An answered error is SC_CP_TRANSIENT when it may
 * pass (serialization failure, deadlock, timeout, lock, resources: retry
 * later) and SC_CP_FAILED when it cannot (a constraint, a trigger, a
 * missing column, a privilege: sc_db.c keeps the SQLSTATE, the statement and
 * the table, and sc_checkpoint_failure_message() turns them into the error
 * state's message).  A FAILED write is never retried: retrying an operator's
 * CHECK constraint forever would look like a healthy partition that never
 * moves.
 *
 * Fencing (I4).  The lease acquisition that gives a new owner its epoch
 * also writes that epoch into this row, in the same transaction.  Every
 * statement here carries "epoch = mine": a stalled old owner matches zero
 * rows, learns it is fenced, and stops the partition.  What it may still
 * do is finish a sink write of a batch it pended while it was the owner:
 * that batch is exactly the pending batch the new owner replays, to the
 * same place, so the late write changes nothing (I1).  The destructive
 * truncation at recovery is protected separately (see sink_file.c).
 *
 * Transactional sinks (the postgres sink in this database) have no pending
 * step: their rows and sc_checkpoint_advance() commit in one transaction.
 * When the sink pipelines that transaction, the advance is queued with
 * sc_checkpoint_advance_queue(), whose statement fails instead of matching
 * no row: the COMMIT behind it in the pipeline then never runs, so a fenced
 * owner's rows are never committed without their checkpoint (I4).  Several
 * partitions' batches may share that transaction (sc_worker.c,
 * deliver_txn_group()), each with its own queued advance: one that fails
 * fails them all, and each batch is then written again alone.
 *
 * Locks.  Each statement updates one checkpoints row (row lock, held until
 * commit) and inserts into events; a grouped commit updates (so locks) the
 * rows of its own partitions that still carry its epoch, and no other row
 * matches it: two owners never update the same row.  Lease acquisition
 * locks the lease row and then the checkpoint row, in that order,
 * everywhere, and skips locked rows; checkpoint writes lock only checkpoint
 * rows, so there is no lock-order cycle among the sidecar's own statements.
 * An operator's transaction holding several rows can still deadlock with a
 * grouped commit (the worker sorts its groups by topic and partition, but
 * the order rows are locked in is the plan's) or with a shared transaction
 * of a transactional sink (its advances go in that same order):
 * PostgreSQL then refuses one of them (a passing refusal) and the worker
 * commits its partitions one by one.
 */
#include "protocol/sc_checkpoint.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_log.h"
#include "record/sc_envelope.h"

#define PK "pipeline = $1 AND topic = $2 AND partition = $3"
/*
 * Announces the events a statement inserted (CTE "e", RETURNING id) on the
 * channel in parameter ch, unless it is NULL (coalesced mode: sc_notify.c
 * then sends one NOTIFY per interval).  NOTIFY is delivered on commit only,
 * so a watcher never hears of an event whose transaction rolled back.
 */
#define NOTIFY_CTE(ch)                                                                     \
    " n AS (SELECT pg_notify(" ch "::text, json_build_object('id', max(e.id), 'pipeline'," \
    " $1::text, 'topic', $2::text, 'partition', $3::int)::text) FROM e"                    \
    " HAVING " ch "::text IS NOT NULL AND count(*) > 0)"

/* The columns sc_checkpoint_parse_row() reads, in its order. */
#define CP_COLUMNS                                                                                \
    "epoch, committed_offset, committed_write_offset, pending_first_offset, pending_last_offset," \
    " pending_count, pending_checksum, pending_write_offset, state, error, paused, control_seq"

static const struct sc_stmt st_pend = {
    "sc_cp_pend",
    "WITH c AS ("
    " UPDATE {S}.checkpoints SET pending_first_offset = $6, pending_last_offset = $7,"
    "  pending_count = $8, pending_checksum = $9, pending_write_offset = committed_write_offset,"
    "  pending_since = now(), updated_at = now()"
    " WHERE " PK " AND epoch = $4 AND state = 'ok' AND pending_first_offset IS NULL"
    "  AND NOT paused"
    "  AND committed_write_offset = $10 AND committed_offset IS NOT DISTINCT FROM $11"
    " RETURNING pending_write_offset),"
    " e AS (INSERT INTO {S}.events (pipeline, topic, partition, kind, epoch, owner, first_offset,"
    "  last_offset, write_offset, detail)"
    " SELECT $1, $2, $3, 'pend', $4, $5, $6, $7, pending_write_offset,"
    "  jsonb_build_object('count', $8::int, 'checksum', $9::bigint) FROM c RETURNING "
    "id)," NOTIFY_CTE("$12") " SELECT pending_write_offset FROM c, (SELECT count(*) FROM n) AS _n",
    12,
};

static const struct sc_stmt st_commit = {
    "sc_cp_commit",
    "WITH c AS ("
    " UPDATE {S}.checkpoints SET committed_offset = $7, committed_write_offset = $8,"
    "  pending_first_offset = NULL, pending_last_offset = NULL, pending_count = NULL,"
    "  pending_checksum = NULL, pending_write_offset = NULL, pending_since = NULL,"
    "  updated_at = now()"
    " WHERE " PK " AND epoch = $4 AND state = 'ok' AND pending_first_offset = $6"
    " RETURNING 1),"
    " e AS (INSERT INTO {S}.events (pipeline, topic, partition, kind, epoch, owner, first_offset,"
    "  last_offset, write_offset, detail)"
    " SELECT $1, $2, $3, $9, $4, $5, $6, $10, $8,"
    "  jsonb_build_object('count', $11::int, 'next_offset', $7::bigint) FROM c RETURNING "
    "id)," NOTIFY_CTE("$12") " SELECT 1 FROM c, (SELECT count(*) FROM n) AS _n",
    12,
};

/* The commit of B always; the pend of B+1 only if the partition is not paused (an
 * operator's pause_partition() stops delivery before the next batch: docs/operations.md). */
static const struct sc_stmt st_commit_pend = {
    "sc_cp_commit_pend",
    "WITH c AS ("
    " UPDATE {S}.checkpoints SET committed_offset = $7, committed_write_offset = $8,"
    "  pending_first_offset = CASE WHEN paused THEN NULL ELSE $9::bigint END,"
    "  pending_last_offset = CASE WHEN paused THEN NULL ELSE $10::bigint END,"
    "  pending_count = CASE WHEN paused THEN NULL ELSE $11::int END,"
    "  pending_checksum = CASE WHEN paused THEN NULL ELSE $12::bigint END,"
    "  pending_write_offset = CASE WHEN paused THEN NULL ELSE $8::bigint END,"
    "  pending_since = CASE WHEN paused THEN NULL ELSE now() END,"
    "  updated_at = now()"
    " WHERE " PK " AND epoch = $4 AND state = 'ok' AND pending_first_offset = $6"
    " RETURNING paused),"
    " e AS (INSERT INTO {S}.events (pipeline, topic, partition, kind, epoch, owner, first_offset,"
    "  last_offset, write_offset, detail)"
    " SELECT $1, $2, $3, v.kind, $4, $5, v.f, v.l, $8, v.d FROM c, (VALUES"
    "  (1, $15::text, $6::bigint, $13::bigint,"
    "   jsonb_build_object('count', $14::int, 'next_offset', $7::bigint)),"
    "  (2, 'pend', $9::bigint, $10::bigint,"
    "   jsonb_build_object('count', $11::int, 'checksum', $12::bigint))) AS v(ord, kind, f, l, d)"
    "  WHERE v.ord = 1 OR NOT c.paused"
    "  ORDER BY v.ord RETURNING id)," NOTIFY_CTE(
        "$16") " SELECT c.paused FROM c, (SELECT count(*) FROM n) AS _n",
    16,
};

/*
 * st_commit / st_commit_pend for several partitions of one pipeline and owner
 * (sc_checkpoint_commit_group()): one row per partition in the arrays $4..$16
 * (pend columns NULL: commit only), each row guarded by its own epoch and
 * pending batch as the single statements are.  A row that does not match is
 * not updated, so it gets no event and no NOTIFY, and is missing from the
 * answer (its ordinality ord says which item each answered row is).
 */
static const struct sc_stmt st_commit_group = {
    "sc_cp_commit_group",
    "WITH r AS (SELECT * FROM unnest($4::text[], $5::int[], $6::bigint[], $7::bigint[],"
    "  $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::int[], $13::bigint[],"
    "  $14::bigint[], $15::int[], $16::text[]) WITH ORDINALITY"
    "  AS r(topic, part, epoch, pf, nxt, nwo, f, l, cnt, ck, cl, cc, kind, ord)),"
    " c AS ("
    " UPDATE {S}.checkpoints t SET committed_offset = r.nxt, committed_write_offset = r.nwo,"
    "  pending_first_offset = CASE WHEN t.paused THEN NULL ELSE r.f END,"
    "  pending_last_offset = CASE WHEN t.paused THEN NULL ELSE r.l END,"
    "  pending_count = CASE WHEN t.paused THEN NULL ELSE r.cnt END,"
    "  pending_checksum = CASE WHEN t.paused THEN NULL ELSE r.ck END,"
    "  pending_write_offset = CASE WHEN t.paused OR r.f IS NULL THEN NULL ELSE r.nwo END,"
    "  pending_since = CASE WHEN t.paused OR r.f IS NULL THEN NULL ELSE now() END,"
    "  updated_at = now()"
    " FROM r WHERE t.pipeline = $1 AND t.topic = r.topic AND t.partition = r.part"
    "  AND t.epoch = r.epoch AND t.state = 'ok' AND t.pending_first_offset = r.pf"
    " RETURNING r.*, t.paused),"
    " e AS (INSERT INTO {S}.events (pipeline, topic, partition, kind, epoch, owner, first_offset,"
    "  last_offset, write_offset, detail)"
    " SELECT $1, c.topic, c.part, v.kind, c.epoch, $2, v.f, v.l, c.nwo, v.d FROM c,"
    "  LATERAL (VALUES (1, c.kind, c.pf, c.cl,"
    "   jsonb_build_object('count', c.cc, 'next_offset', c.nxt)),"
    "  (2, 'pend', c.f, c.l, jsonb_build_object('count', c.cnt, 'checksum', c.ck)))"
    "  AS v(o, kind, f, l, d)"
    "  WHERE v.o = 1 OR (c.f IS NOT NULL AND NOT c.paused)"
    "  ORDER BY c.ord, v.o RETURNING id, topic, partition),"
    " n AS (SELECT pg_notify($3::text, json_build_object('id', max(e.id), 'pipeline', $1::text,"
    "  'topic', e.topic, 'partition', e.partition)::text) FROM e WHERE $3::text IS NOT NULL"
    "  GROUP BY e.topic, e.partition)"
    " SELECT c.ord, c.paused FROM c, (SELECT count(*) FROM n) AS _n",
    16,
};

/*
 * The pends of several partitions (sc_checkpoint_pend_group()): st_pend's
 * guards and event for each row of the arrays $4..$12.
 */
static const struct sc_stmt st_pend_group = {
    "sc_cp_pend_group",
    "WITH r AS (SELECT * FROM unnest($4::text[], $5::int[], $6::bigint[], $7::bigint[],"
    "  $8::bigint[], $9::bigint[], $10::bigint[], $11::int[], $12::bigint[]) WITH ORDINALITY"
    "  AS r(topic, part, epoch, cwo, co, f, l, cnt, ck, ord)),"
    " c AS ("
    " UPDATE {S}.checkpoints t SET pending_first_offset = r.f, pending_last_offset = r.l,"
    "  pending_count = r.cnt, pending_checksum = r.ck,"
    "  pending_write_offset = t.committed_write_offset, pending_since = now(), updated_at = now()"
    " FROM r WHERE t.pipeline = $1 AND t.topic = r.topic AND t.partition = r.part"
    "  AND t.epoch = r.epoch AND t.state = 'ok' AND t.pending_first_offset IS NULL"
    "  AND NOT t.paused AND t.committed_write_offset = r.cwo"
    "  AND t.committed_offset IS NOT DISTINCT FROM r.co"
    " RETURNING r.*, t.pending_write_offset AS pwo),"
    " e AS (INSERT INTO {S}.events (pipeline, topic, partition, kind, epoch, owner, first_offset,"
    "  last_offset, write_offset, detail)"
    " SELECT $1, c.topic, c.part, 'pend', c.epoch, $2, c.f, c.l, c.pwo,"
    "  jsonb_build_object('count', c.cnt, 'checksum', c.ck) FROM c ORDER BY c.ord"
    "  RETURNING id, topic, partition),"
    " n AS (SELECT pg_notify($3::text, json_build_object('id', max(e.id), 'pipeline', $1::text,"
    "  'topic', e.topic, 'partition', e.partition)::text) FROM e WHERE $3::text IS NOT NULL"
    "  GROUP BY e.topic, e.partition)"
    " SELECT c.ord FROM c, (SELECT count(*) FROM n) AS _n",
    12,
};

/* The advance of a transactional sink, up to its final SELECT (which differs below). */
#define ADVANCE_CTES                                                                               \
    "WITH c AS ("                                                                                  \
    " UPDATE {S}.checkpoints SET committed_offset = $9::bigint + 1, committed_write_offset = $7,"  \
    "  updated_at = now()"                                                                         \
    " WHERE " PK " AND epoch = $4 AND state = 'ok' AND pending_first_offset IS NULL"               \
    "  AND NOT paused AND committed_offset IS NOT DISTINCT FROM $6"                                \
    " RETURNING 1),"                                                                               \
    " e AS (INSERT INTO {S}.events (pipeline, topic, partition, kind, epoch, owner, first_offset," \
    "  last_offset, write_offset, detail)"                                                         \
    " SELECT $1, $2, $3, 'commit', $4, $5, $8, $9, $7,"                                            \
    "  jsonb_build_object('count', $10::int, 'next_offset', $9::bigint + 1) FROM c RETURNING "     \
    "id)," NOTIFY_CTE("$11")

static const struct sc_stmt st_advance = {
    "sc_cp_advance",
    ADVANCE_CTES " SELECT 1 FROM c, (SELECT count(*) FROM n) AS _n",
    11,
};

/*
 * st_advance for a pipelined transaction: no row matched is an error
 * (casting that text to int fails), which aborts the transaction, so the
 * COMMIT queued behind it rolls back.
 */
static const struct sc_stmt st_advance_strict = {
    "sc_cp_advance_strict",
    ADVANCE_CTES " SELECT CAST(CASE WHEN count(*) = 1 THEN '1' ELSE"
                 " 'sidecar: the checkpoint advance matched no row' END AS int)"
                 " FROM c, (SELECT count(*) FROM n) AS _n",
    11,
};

/* A replay dead-letters the same record again: one row per record, attempts add up. */
static const struct sc_stmt st_dead = {
    "sc_cp_dead",
    "INSERT INTO {S}.dead_letters AS d (pipeline, topic, partition, \"offset\", envelope, key,"
    " value, headers, error, http_status, response_excerpt, attempts)"
    " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, ($5::jsonb)->'headers', $8, $9, $10, $11)"
    " ON CONFLICT (pipeline, topic, partition, \"offset\") DO UPDATE SET"
    "  envelope = EXCLUDED.envelope, error = EXCLUDED.error, http_status = EXCLUDED.http_status,"
    "  response_excerpt = EXCLUDED.response_excerpt, attempts = d.attempts + EXCLUDED.attempts,"
    "  status = 'new', redriven_at = NULL, created_at = now()",
    11,
};

static const struct sc_stmt st_set_start = {
    "sc_cp_set_start",
    "WITH c AS ("
    " UPDATE {S}.checkpoints SET committed_offset = $6, updated_at = now()"
    " WHERE " PK " AND epoch = $4 AND committed_offset IS NULL AND pending_first_offset IS NULL"
    " RETURNING committed_write_offset),"
    " e AS (INSERT INTO {S}.events (pipeline, topic, partition, kind, epoch, owner, first_offset,"
    "  write_offset, detail)"
    " SELECT $1, $2, $3, 'reset', $4, $5, $6, committed_write_offset,"
    "  jsonb_build_object('reason', $7::text) FROM c RETURNING id)," NOTIFY_CTE(
        "$8") " SELECT 1 FROM c, (SELECT count(*) FROM n) AS _n",
    8,
};

static const struct sc_stmt st_fail = {
    "sc_cp_fail",
    "WITH c AS ("
    " UPDATE {S}.checkpoints SET state = 'error', error = $6, updated_at = now()"
    " WHERE " PK " AND epoch = $4"
    " RETURNING pending_first_offset, pending_last_offset, committed_write_offset),"
    " e AS (INSERT INTO {S}.events (pipeline, topic, partition, kind, epoch, owner, first_offset,"
    "  last_offset, write_offset, detail)"
    " SELECT $1, $2, $3, 'error', $4, $5, pending_first_offset, pending_last_offset,"
    "  committed_write_offset, jsonb_build_object('error', $6::text) FROM c RETURNING "
    "id)," NOTIFY_CTE("$7") " SELECT 1 FROM c, (SELECT count(*) FROM n) AS _n",
    7,
};

static const struct sc_stmt st_fenced = {
    "sc_cp_fenced",
    "WITH e AS (INSERT INTO {S}.events (pipeline, topic, partition, kind, epoch, owner, detail)"
    " SELECT $1, $2, $3, 'fenced', $4, $5, jsonb_build_object('reason', $6::text,"
    "  'current_epoch', (SELECT epoch FROM {S}.checkpoints WHERE " PK
    ")) RETURNING id)," NOTIFY_CTE("$7") " SELECT count(*) FROM n",
    7,
};

static const struct sc_stmt st_load = {
    "sc_cp_load",
    "SELECT " CP_COLUMNS " FROM {S}.checkpoints WHERE " PK,
    3,
};

static const struct sc_stmt st_owner = {
    "sc_cp_owner",
    "SELECT 1 FROM {S}.checkpoints WHERE " PK " AND epoch = $4",
    4,
};

const char *sc_cp_status_name(enum sc_cp_status s)
{
    switch (s) {
    case SC_CP_OK:
        return "ok";
    case SC_CP_FENCED:
        return "fenced";
    case SC_CP_CONFLICT:
        return "conflict";
    case SC_CP_UNAVAILABLE:
        return "unavailable";
    case SC_CP_TRANSIENT:
        return "transient";
    case SC_CP_FAILED:
        return "failed";
    }
    return "?";
}

/* The status of a statement that failed with class cls (see struct sc_db's last_*). */
static enum sc_cp_status failed(const struct sc_db *db, enum sc_pg_errclass cls)
{
    if (cls != SC_PG_RETRY)
        return SC_CP_FAILED;
    return db->last_answered ? SC_CP_TRANSIENT : SC_CP_UNAVAILABLE;
}

static int64_t col_i64(const PGresult *res, int row, int col)
{
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

void sc_checkpoint_parse_row(const PGresult *res, int row, int c, struct sc_cp *cp)
{
    memset(cp, 0, sizeof(*cp));
    cp->epoch = col_i64(res, row, c);
    cp->has_committed = !PQgetisnull(res, row, c + 1);
    cp->committed_offset = cp->has_committed ? col_i64(res, row, c + 1) : 0;
    cp->committed_write_offset = col_i64(res, row, c + 2);
    cp->has_pending = !PQgetisnull(res, row, c + 3);
    if (cp->has_pending) {
        cp->pending_first = col_i64(res, row, c + 3);
        cp->pending_last = col_i64(res, row, c + 4);
        cp->pending_count = (int32_t)col_i64(res, row, c + 5);
        cp->pending_checksum = (uint32_t)col_i64(res, row, c + 6);
        cp->pending_write_offset = col_i64(res, row, c + 7);
    }
    cp->error = strcmp(PQgetvalue(res, row, c + 8), "error") == 0;
    if (!PQgetisnull(res, row, c + 9))
        snprintf(cp->error_msg, sizeof(cp->error_msg), "%s", PQgetvalue(res, row, c + 9));
    cp->paused = PQgetvalue(res, row, c + 10)[0] == 't';
    cp->control_seq = col_i64(res, row, c + 11);
}

/* Parameter buffers for one statement: pipeline, topic, partition, epoch, owner, then extras. */
struct params {
    const char *v[16];
    char num[16][24];
    int n;
};

static void params_init(struct params *p, const struct sc_cp_key *k, int64_t epoch)
{
    p->n = 0;
    p->v[p->n++] = k->pipeline;
    p->v[p->n++] = k->topic;
    p->v[p->n] = sc_i64(p->num[p->n], k->partition);
    p->n++;
    p->v[p->n] = sc_i64(p->num[p->n], epoch);
    p->n++;
    p->v[p->n++] = k->owner;
}

static void param_i64(struct params *p, int64_t v)
{
    p->v[p->n] = sc_i64(p->num[p->n], v);
    p->n++;
}

static void param_str(struct params *p, const char *s)
{
    p->v[p->n++] = s;
}

/*
 * Runs a conditional write: OK if it matched the row, else FENCED/CONFLICT from a reload.
 * flag (may be NULL): whether the first column of the answer is true.
 */
static enum sc_cp_status run_write_flag(struct sc_db *db, const struct sc_stmt *st,
                                        const struct params *p, const struct sc_cp_key *k,
                                        int64_t epoch, bool *flag)
{
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec(db, st, p->v, &cls);
    if (!res)
        return failed(db, cls);
    int rows = PQntuples(res);
    if (flag)
        *flag = rows > 0 && PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (rows > 0)
        return SC_CP_OK;
    /* Zero rows: find out why, so the caller can tell a fence from a bug. */
    struct sc_cp now;
    enum sc_cp_status s = sc_checkpoint_load(db, k, &now);
    if (s != SC_CP_OK)
        return s == SC_CP_CONFLICT ? SC_CP_FENCED : s;
    return now.epoch != epoch ? SC_CP_FENCED : SC_CP_CONFLICT;
}

static enum sc_cp_status run_write(struct sc_db *db, const struct sc_stmt *st,
                                   const struct params *p, const struct sc_cp_key *k, int64_t epoch)
{
    return run_write_flag(db, st, p, k, epoch, NULL);
}

enum sc_cp_status sc_checkpoint_store_dead(struct sc_db *db, const struct sc_cp_key *k,
                                           const struct sc_cp_dead *dead, size_t ndead)
{
    for (size_t i = 0; i < ndead; i++) {
        const struct sc_cp_dead *d = &dead[i];
        char part[24], off[24], st[24], att[24];
        /* jsonb refuses \u0000 (a NUL in the record): the raw bytes are kept as bytea. */
        char *safe = sc_json_jsonb_safe(d->envelope);
        const char *v[11] = {k->pipeline,
                             k->topic,
                             sc_i64(part, k->partition),
                             sc_i64(off, d->offset),
                             safe ? safe : d->envelope,
                             d->key,
                             d->value,
                             d->error,
                             d->status ? sc_i64(st, d->status) : NULL,
                             d->excerpt,
                             sc_i64(att, d->attempts)};
        int lens[11] = {0, 0, 0, 0, 0, (int)d->key_len, (int)d->value_len, 0, 0, 0, 0};
        int fmts[11] = {0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0}; /* key, value: binary bytea */
        enum sc_pg_errclass cls;
        PGresult *res = sc_db_exec_params(db, &st_dead, v, lens, fmts, &cls);
        free(safe);
        if (!res)
            return failed(db, cls);
        PQclear(res);
    }
    return SC_CP_OK;
}

/*
 * Runs a conditional write together with dead letters in one transaction
 * (BEGIN / inserts / write / COMMIT); without dead letters it is the single
 * statement alone.
 */
static enum sc_cp_status run_write_dead(struct sc_db *db, const struct sc_stmt *st,
                                        const struct params *p, const struct sc_cp_key *k,
                                        int64_t epoch, const struct sc_cp_dead *dead, size_t ndead,
                                        bool *flag);

void sc_checkpoint_apply_pend(struct sc_cp *cp, int64_t first, int64_t last, int32_t count,
                              uint32_t checksum, int64_t write_offset)
{
    cp->has_pending = true;
    cp->pending_first = first;
    cp->pending_last = last;
    cp->pending_count = count;
    cp->pending_checksum = checksum;
    cp->pending_write_offset = write_offset;
}

enum sc_cp_status sc_checkpoint_pend(struct sc_db *db, const struct sc_cp_key *k, struct sc_cp *cp,
                                     int64_t first, int64_t last, int32_t count, uint32_t checksum)
{
    struct params p;
    params_init(&p, k, cp->epoch);
    param_i64(&p, first);
    param_i64(&p, last);
    param_i64(&p, count);
    param_i64(&p, checksum);
    param_i64(&p, cp->committed_write_offset);
    if (cp->has_committed)
        param_i64(&p, cp->committed_offset); /* $11: a reset meanwhile makes this a conflict */
    else
        param_str(&p, NULL);
    param_str(&p, k->notify_channel);
    enum sc_cp_status s = run_write(db, &st_pend, &p, k, cp->epoch);
    if (s == SC_CP_OK)
        sc_checkpoint_apply_pend(cp, first, last, count, checksum, cp->committed_write_offset);
    return s;
}

static void apply_commit(struct sc_cp *cp, int64_t next_offset, int64_t next_write_offset)
{
    cp->has_committed = true;
    cp->committed_offset = next_offset;
    cp->committed_write_offset = next_write_offset;
    cp->has_pending = false;
}

enum sc_cp_status sc_checkpoint_commit(struct sc_db *db, const struct sc_cp_key *k,
                                       struct sc_cp *cp, int64_t next_offset,
                                       int64_t next_write_offset, bool replay,
                                       const struct sc_cp_dead *dead, size_t ndead)
{
    struct params p;
    params_init(&p, k, cp->epoch);
    param_i64(&p, cp->pending_first);
    param_i64(&p, next_offset);
    param_i64(&p, next_write_offset);
    param_str(&p, replay ? "replay" : "commit");
    param_i64(&p, cp->pending_last);
    param_i64(&p, cp->pending_count);
    param_str(&p, k->notify_channel);
    enum sc_cp_status s = run_write_dead(db, &st_commit, &p, k, cp->epoch, dead, ndead, NULL);
    if (s == SC_CP_OK)
        apply_commit(cp, next_offset, next_write_offset);
    return s;
}

enum sc_cp_status sc_checkpoint_commit_and_pend(struct sc_db *db, const struct sc_cp_key *k,
                                                struct sc_cp *cp, int64_t next_offset,
                                                int64_t next_write_offset, bool replay,
                                                const struct sc_cp_dead *dead, size_t ndead,
                                                int64_t first, int64_t last, int32_t count,
                                                uint32_t checksum)
{
    struct params p;
    params_init(&p, k, cp->epoch);
    param_i64(&p, cp->pending_first); /* $6 */
    param_i64(&p, next_offset);       /* $7 */
    param_i64(&p, next_write_offset); /* $8 */
    param_i64(&p, first);             /* $9 */
    param_i64(&p, last);              /* $10 */
    param_i64(&p, count);             /* $11 */
    param_i64(&p, checksum);          /* $12 */
    param_i64(&p, cp->pending_last);  /* $13 */
    param_i64(&p, cp->pending_count); /* $14 */
    param_str(&p, replay ? "replay" : "commit");
    param_str(&p, k->notify_channel);
    bool paused = false;
    enum sc_cp_status s =
        run_write_dead(db, &st_commit_pend, &p, k, cp->epoch, dead, ndead, &paused);
    if (s == SC_CP_OK && paused) {
        /* Committed; the next batch was not pended: an operator paused the partition. */
        apply_commit(cp, next_offset, next_write_offset);
        cp->paused = true;
    } else if (s == SC_CP_OK) {
        apply_commit(cp, next_offset, next_write_offset);
        sc_checkpoint_apply_pend(cp, first, last, count, checksum, next_write_offset);
    }
    return s;
}

/* A text[] literal element: "..." with \ and " escaped (a topic may hold any byte but NUL). */
static int put_array_text(struct sc_buf *b, const char *s)
{
    int rc = sc_buf_putc(b, '"');
    for (; *s && rc == 0; s++) {
        if (*s == '"' || *s == '\\')
            rc = sc_buf_putc(b, '\\');
        if (rc == 0)
            rc = sc_buf_putc(b, *s);
    }
    return rc == 0 ? sc_buf_putc(b, '"') : rc;
}

/* The columns of st_commit_group's arrays $4..$16, in order. */
enum {
    G_TOPIC,
    G_PART,
    G_EPOCH,
    G_PF,
    G_NXT,
    G_NWO,
    G_F,
    G_L,
    G_CNT,
    G_CK,
    G_CL,
    G_CC,
    G_KIND,
    G_NCOLS
};

/* Appends item it's value of column col (NULL for the pend columns of a commit alone). */
static int put_group_value(struct sc_buf *b, const struct sc_cp_group_item *it, int col)
{
    char num[24];
    int64_t v;
    switch (col) {
    case G_TOPIC:
        return put_array_text(b, it->topic);
    case G_KIND:
        return put_array_text(b, it->replay ? "replay" : "commit");
    case G_PART:
        v = it->partition;
        break;
    case G_EPOCH:
        v = it->cp->epoch;
        break;
    case G_PF:
        v = it->cp->pending_first;
        break;
    case G_NXT:
        v = it->next_offset;
        break;
    case G_NWO:
        v = it->next_write_offset;
        break;
    case G_CL:
        v = it->cp->pending_last;
        break;
    case G_CC:
        v = it->cp->pending_count;
        break;
    default:
        if (!it->and_pend)
            return sc_buf_append(b, "NULL", 4);
        v = col == G_F     ? it->first
            : col == G_L   ? it->last
            : col == G_CNT ? it->count
                           : (int64_t)it->checksum;
        break;
    }
    const char *t = sc_i64(num, v);
    return sc_buf_append(b, t, strlen(t));
}

/* The columns of st_pend_group's arrays $4..$12, in order. */
enum {
    P_TOPIC,
    P_PART,
    P_EPOCH,
    P_CWO,
    P_CO,
    P_F,
    P_L,
    P_CNT,
    P_CK,
    P_NCOLS
};

static int put_pend_value(struct sc_buf *b, const struct sc_cp_group_item *it, int col)
{
    char num[24];
    const struct sc_cp *cp = it->cp;
    int64_t v;
    switch (col) {
    case P_TOPIC:
        return put_array_text(b, it->topic);
    case P_PART:
        v = it->partition;
        break;
    case P_EPOCH:
        v = cp->epoch;
        break;
    case P_CWO:
        v = cp->committed_write_offset;
        break;
    case P_CO:
        /* As st_pend's $11: a reset meanwhile makes the row a conflict. */
        if (!cp->has_committed)
            return sc_buf_append(b, "NULL", 4);
        v = cp->committed_offset;
        break;
    case P_F:
        v = it->first;
        break;
    case P_L:
        v = it->last;
        break;
    case P_CNT:
        v = it->count;
        break;
    default:
        v = (int64_t)it->checksum;
        break;
    }
    const char *t = sc_i64(num, v);
    return sc_buf_append(b, t, strlen(t));
}

/* An item whose row a grouped statement did not update: as run_write_flag(), find out why,
 * so the caller can tell a fence from a bug. */
static enum sc_cp_status unmatched_status(struct sc_db *db, const char *pipeline, const char *owner,
                                          const struct sc_cp_group_item *it)
{
    struct sc_cp_key k = {pipeline, it->topic, it->partition, owner, NULL};
    struct sc_cp now;
    enum sc_cp_status ls = sc_checkpoint_load(db, &k, &now);
    if (ls == SC_CP_CONFLICT) /* no row at all */
        return SC_CP_FENCED;
    if (ls != SC_CP_OK)
        return ls;
    return now.epoch != it->cp->epoch ? SC_CP_FENCED : SC_CP_CONFLICT;
}

/*
 * Runs grouped statement st over items[0..n): ncols arrays, column col of
 * every item put by put(), as $4.. after $1 pipeline, $2 owner, $3 the
 * notification channel.  SC_CP_OK when it ran: then each item's status
 * says whether its row was updated (SC_CP_OK) or why not
 * (unmatched_status()), and paused[i] is the answer's second column for
 * it, when the statement has one.  Else the statement's own status.
 */
static enum sc_cp_status
run_group(struct sc_db *db, const struct sc_stmt *st, const char *pipeline, const char *owner,
          const char *notify_channel, struct sc_cp_group_item *items, size_t n, int ncols,
          int (*put)(struct sc_buf *, const struct sc_cp_group_item *, int), bool *paused)
{
    if (n == 0 || n > SC_CP_GROUP_MAX || ncols > G_NCOLS)
        return SC_CP_FAILED; /* a caller's bug; nothing sent */
    /* All arrays in one buffer, each NUL-terminated: a topic name is at most 249 bytes. */
    struct sc_buf b;
    sc_buf_init(&b, 1 << 20);
    size_t at[G_NCOLS]; /* the widest statement's */
    int rc = 0;
    for (int col = 0; col < ncols && rc == 0; col++) {
        at[col] = b.len;
        rc = sc_buf_putc(&b, '{');
        for (size_t i = 0; i < n && rc == 0; i++) {
            if (i > 0)
                rc = sc_buf_putc(&b, ',');
            if (rc == 0)
                rc = put(&b, &items[i], col);
        }
        if (rc == 0)
            rc = sc_buf_append(&b, "}", 2); /* with the NUL */
    }
    enum sc_cp_status s = SC_CP_FAILED;
    if (rc != 0)
        goto out; /* over 1 MiB: not with SC_CP_GROUP_MAX names of at most 249 bytes */
    const char *v[16] = {pipeline, owner, notify_channel};
    for (int col = 0; col < ncols; col++)
        v[3 + col] = b.data + at[col];
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec(db, st, v, &cls);
    if (!res) {
        s = failed(db, cls);
        goto out;
    }
    bool matched[SC_CP_GROUP_MAX] = {false};
    memset(paused, 0, n * sizeof(*paused));
    for (int row = 0; row < PQntuples(res); row++) {
        int64_t ord = col_i64(res, row, 0);
        if (ord >= 1 && ord <= (int64_t)n) {
            matched[ord - 1] = true;
            paused[ord - 1] = PQnfields(res) > 1 && PQgetvalue(res, row, 1)[0] == 't';
        }
    }
    PQclear(res);
    s = SC_CP_OK;
    for (size_t i = 0; i < n; i++)
        items[i].status = matched[i] ? SC_CP_OK : unmatched_status(db, pipeline, owner, &items[i]);
out:
    sc_buf_free(&b);
    return s;
}

enum sc_cp_status sc_checkpoint_commit_group(struct sc_db *db, const char *pipeline,
                                             const char *owner, const char *notify_channel,
                                             struct sc_cp_group_item *items, size_t n)
{
    bool paused[SC_CP_GROUP_MAX];
    enum sc_cp_status s = run_group(db, &st_commit_group, pipeline, owner, notify_channel, items, n,
                                    G_NCOLS, put_group_value, paused);
    for (size_t i = 0; s == SC_CP_OK && i < n; i++) {
        struct sc_cp_group_item *it = &items[i];
        if (it->status != SC_CP_OK)
            continue;
        apply_commit(it->cp, it->next_offset, it->next_write_offset);
        if (it->and_pend && paused[i])
            it->cp->paused = true; /* committed; the next batch was not pended */
        else if (it->and_pend)
            sc_checkpoint_apply_pend(it->cp, it->first, it->last, it->count, it->checksum,
                                     it->next_write_offset);
    }
    return s;
}

enum sc_cp_status sc_checkpoint_pend_group(struct sc_db *db, const char *pipeline,
                                           const char *owner, const char *notify_channel,
                                           struct sc_cp_group_item *items, size_t n)
{
    bool paused[SC_CP_GROUP_MAX];
    enum sc_cp_status s = run_group(db, &st_pend_group, pipeline, owner, notify_channel, items, n,
                                    P_NCOLS, put_pend_value, paused);
    for (size_t i = 0; s == SC_CP_OK && i < n; i++) {
        struct sc_cp_group_item *it = &items[i];
        if (it->status == SC_CP_OK)
            sc_checkpoint_apply_pend(it->cp, it->first, it->last, it->count, it->checksum,
                                     it->cp->committed_write_offset);
    }
    return s;
}

/* The parameters of st_advance and st_advance_strict. */
static void advance_params(struct params *p, const struct sc_cp_key *k, const struct sc_cp *cp,
                           int64_t first, int64_t last, int32_t count, int64_t next_write_offset)
{
    params_init(p, k, cp->epoch);
    if (cp->has_committed)
        param_i64(p, cp->committed_offset); /* $6 */
    else
        param_str(p, NULL);
    param_i64(p, next_write_offset); /* $7 */
    param_i64(p, first);             /* $8 */
    param_i64(p, last);              /* $9 */
    param_i64(p, count);             /* $10 */
    param_str(p, k->notify_channel); /* $11 */
}

enum sc_cp_status sc_checkpoint_advance(struct sc_db *db, const struct sc_cp_key *k,
                                        struct sc_cp *cp, int64_t first, int64_t last,
                                        int32_t count, int64_t next_write_offset,
                                        const struct sc_cp_dead *dead, size_t ndead)
{
    /* The caller holds the transaction open: no BEGIN/COMMIT here. */
    enum sc_cp_status s = sc_checkpoint_store_dead(db, k, dead, ndead);
    if (s != SC_CP_OK)
        return s;
    struct params p;
    advance_params(&p, k, cp, first, last, count, next_write_offset);
    s = run_write(db, &st_advance, &p, k, cp->epoch);
    if (s == SC_CP_OK)
        apply_commit(cp, last + 1, next_write_offset);
    return s;
}

int sc_checkpoint_advance_prepare(struct sc_db *db)
{
    enum sc_pg_errclass cls;
    return sc_db_prepare(db, &st_advance_strict, &cls);
}

int sc_checkpoint_advance_queue(struct sc_db *db, const struct sc_cp_key *k, const struct sc_cp *cp,
                                int64_t first, int64_t last, int32_t count,
                                int64_t next_write_offset, struct sc_cp *after)
{
    struct params p;
    advance_params(&p, k, cp, first, last, count, next_write_offset);
    if (sc_db_send(db, &st_advance_strict, p.v) != 0)
        return -1;
    *after = *cp;
    apply_commit(after, last + 1, next_write_offset);
    return 0;
}

enum sc_cp_status sc_checkpoint_set_start(struct sc_db *db, const struct sc_cp_key *k,
                                          struct sc_cp *cp, int64_t offset, const char *why)
{
    struct params p;
    params_init(&p, k, cp->epoch);
    param_i64(&p, offset);
    param_str(&p, why);
    param_str(&p, k->notify_channel);
    enum sc_cp_status s = run_write(db, &st_set_start, &p, k, cp->epoch);
    if (s == SC_CP_OK) {
        cp->has_committed = true;
        cp->committed_offset = offset;
    }
    return s;
}

enum sc_cp_status sc_checkpoint_fail(struct sc_db *db, const struct sc_cp_key *k, struct sc_cp *cp,
                                     const char *message)
{
    struct params p;
    params_init(&p, k, cp->epoch);
    param_str(&p, message);
    param_str(&p, k->notify_channel);
    enum sc_cp_status s = run_write(db, &st_fail, &p, k, cp->epoch);
    if (s == SC_CP_OK) {
        cp->error = true;
        snprintf(cp->error_msg, sizeof(cp->error_msg), "%s", message);
    }
    return s;
}

enum sc_cp_status sc_checkpoint_note_fenced(struct sc_db *db, const struct sc_cp_key *k,
                                            int64_t my_epoch, const char *reason)
{
    struct params p;
    params_init(&p, k, my_epoch);
    param_str(&p, reason);
    param_str(&p, k->notify_channel);
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec(db, &st_fenced, p.v, &cls);
    if (!res)
        return failed(db, cls);
    PQclear(res);
    return SC_CP_OK;
}

/* Appends s as an SQL string literal ('it''s'), for a message a user copies into psql. */
static void put_literal(struct sc_buf *b, const char *s)
{
    (void)!sc_buf_putc(b, '\'');
    for (; *s; s++)
        (void)!(*s == '\'' ? sc_buf_append(b, "''", 2) : sc_buf_putc(b, *s));
    (void)!sc_buf_putc(b, '\'');
}

/* What to look at for a permanent failure with SQLSTATE state. */
static const char *failure_cause(const char *state)
{
    if (strncmp(state, "23", 2) == 0)
        return "a constraint on the table refuses the change; drop or correct it";
    if (strcmp(state, "42501") == 0)
        return "the sidecar's database role lacks a privilege; GRANT it";
    if (strcmp(state, "P0001") == 0)
        return "a trigger or function raised an error; look at the table's triggers";
    if (strncmp(state, "42", 2) == 0 || strcmp(state, "3F000") == 0)
        return "a column, table or function the sidecar uses is missing or changed; restore it "
               "as sql/ defines it";
    return "see the server's message";
}

/* What a statement of this file (or of a transaction around it) does, for messages. */
static const char *stmt_purpose(const char *name)
{
    static const struct {
        const char *name, *purpose;
    } purposes[] = {
        {"sc_cp_pend", "the pend"},
        {"sc_cp_commit", "the commit"},
        {"sc_cp_commit_pend", "the commit and the next batch's pend"},
        {"sc_cp_commit_group", "the grouped commit of several partitions"},
        {"sc_cp_advance", "the checkpoint advance"},
        {"sc_cp_advance_strict", "the checkpoint advance"},
        {"sc_cp_dead", "the dead-letter insert"},
        {"sc_cp_set_start", "setting the start offset"},
        {"sc_cp_fail", "recording the error state"},
        {"sc_cp_load", "reading the checkpoint"},
        {"COMMIT", "the transaction's commit"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(purposes); i++)
        if (strcmp(name, purposes[i].name) == 0)
            return purposes[i].purpose;
    return "a statement";
}

void sc_checkpoint_failure_message(const struct sc_db *db, const struct sc_cp_key *k,
                                   const char *what, char *out, size_t size)
{
    struct sc_buf b;
    sc_buf_init(&b, 8192); /* the parts are bounded: names, a 512-byte server message */
    char part[24];
    const char *stmt = db->last_stmt[0] ? db->last_stmt : "?";
    (void)!sc_buf_printf(&b,
                         "%s failed permanently: %s (statement %s) was refused with SQLSTATE %s "
                         "(%s)%s%s: %s. Retrying cannot help; fix the cause (%s), then clear the "
                         "error state, keeping the pending batch: UPDATE %s.checkpoints SET state "
                         "= 'ok', error = NULL WHERE pipeline = ",
                         what, stmt_purpose(stmt), stmt,
                         db->last_sqlstate[0] ? db->last_sqlstate : "none",
                         sc_pg_sqlstate_name(db->last_sqlstate), db->last_relation[0] ? " on " : "",
                         db->last_relation, db->last_error, failure_cause(db->last_sqlstate),
                         db->schema_q ? db->schema_q : "sidecar");
    put_literal(&b, k->pipeline);
    (void)!sc_buf_printf(&b, " AND topic = ");
    put_literal(&b, k->topic);
    (void)!sc_buf_printf(&b,
                         " AND partition = %s (docs/operations.md, \"Getting a partition out "
                         "of the error state\")",
                         sc_i64(part, k->partition));
    snprintf(out, size, "%.*s", (int)b.len, b.data ? b.data : "");
    sc_buf_free(&b);
}

enum sc_cp_status sc_checkpoint_load(struct sc_db *db, const struct sc_cp_key *k, struct sc_cp *cp)
{
    struct params p;
    params_init(&p, k, 0);
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec(db, &st_load, p.v, &cls);
    if (!res)
        return failed(db, cls);
    enum sc_cp_status s = SC_CP_CONFLICT; /* no row at all */
    if (PQntuples(res) == 1) {
        sc_checkpoint_parse_row(res, 0, 0, cp);
        s = SC_CP_OK;
    }
    PQclear(res);
    return s;
}

static enum sc_cp_status exec_simple(struct sc_db *db, const char *sql)
{
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec_once(db, sql, 0, NULL, &cls);
    if (!res)
        return failed(db, cls);
    PQclear(res);
    return SC_CP_OK;
}

static enum sc_cp_status run_write_dead(struct sc_db *db, const struct sc_stmt *st,
                                        const struct params *p, const struct sc_cp_key *k,
                                        int64_t epoch, const struct sc_cp_dead *dead, size_t ndead,
                                        bool *flag)
{
    if (ndead == 0)
        return run_write_flag(db, st, p, k, epoch, flag);
    if (!sc_db_hold(db))
        return SC_CP_UNAVAILABLE;
    enum sc_cp_status s = exec_simple(db, "BEGIN");
    if (s == SC_CP_OK)
        s = sc_checkpoint_store_dead(db, k, dead, ndead);
    if (s == SC_CP_OK)
        s = run_write_flag(db, st, p, k, epoch, flag);
    if (s == SC_CP_OK)
        s = exec_simple(db, "COMMIT");
    else
        exec_simple(db, "ROLLBACK");
    sc_db_release(db);
    return s;
}

int sc_checkpoint_still_owner(struct sc_db *db, const struct sc_cp_key *k, int64_t epoch)
{
    struct params p;
    params_init(&p, k, epoch);
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec(db, &st_owner, p.v, &cls);
    if (!res)
        return -1;
    int rows = PQntuples(res);
    PQclear(res);
    return rows == 1 ? 0 : -1;
}
