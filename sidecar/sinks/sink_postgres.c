/*
 * sink_postgres.c - records as rows of a PostgreSQL table; the write offset
 * is the next source offset (docs/design.md §4).
 *
 * NOTES
 * -----
 * Two ways to be exactly-once.  Without "dsn" the table lives in the
 * checkpoint database and the sink is transactional (SC_SINK_F_TRANSACTIONAL;
 * with "dsn", pg_create() gives the instance a twin class without the flag):
 * on the worker's own checkpoint connection it runs
 *
 *     BEGIN; SET CONSTRAINTS ALL IMMEDIATE
 *     rows of the batch                  (COPY, or one INSERT ... SELECT FROM
 *                                         unnest: see "Two ways" below)
 *     the epoch-guarded checkpoint advance (hook->queue(), or hook->commit()
 *                                          with dead letters)
 *     COMMIT
 *
 * so rows and checkpoint commit together or not at all: there is no pending
 * step and nothing to replay.  A crash anywhere before COMMIT leaves neither;
 * a fenced owner's advance matches no row and the transaction is rolled back
 * with its rows (I4).  Constraints are made immediate so a deferred
 * constraint fails at its row, where the batch can be split, not at COMMIT.
 *
 * Two ways, one transaction.  The rows go in by binary COPY or by one
 * INSERT ... SELECT FROM unnest($arrays); either way the advance and
 * COMMIT follow in one libpq pipeline (write_pipelined()), with a Sync
 * after the advance and one after COMMIT.  COPY cannot be pipelined: it
 * costs three round trips (BEGIN + COPY, sent before the rows are encoded
 * so that its round trip overlaps the encoding; the rows; the advance +
 * COMMIT) but the least server CPU per row (bench/: 1.0-1.1x psql \copy's,
 * the INSERT 1.5x).  The INSERT goes in the same pipeline as BEGIN, the
 * advance and COMMIT: one round trip.  Which is faster depends on the batch
 * size, the round-trip time and the server's load, so with write_method
 * auto each connection measures both (sc_pick.h: per batch size class the
 * time per row; COPY unless the INSERT was faster by PICK_MARGIN, the other
 * way tried after PICK_EXPLORE_EVERY batches, then less and less often
 * while it stays the dearer one); only batches that went the
 * fast way whole are measured.  Behind 1 ms each way COPY still won for
 * batches of thousands of rows (bench/ --pg-delay-ms 1).
 *
 * In extended protocol the server runs each statement as it arrives and
 * skips everything after a failure up to the next Sync, leaving the
 * transaction failed; the queued advance fails (rather than matching no
 * row) when it does not apply, so COMMIT commits only when the rows and
 * the advance both succeeded, and answers ROLLBACK otherwise.  The Sync
 * before COMMIT makes a process that stalls there (SIGSTOP, a frozen VM)
 * look idle in its transaction to the server, which ends the session after
 * idle_in_transaction_session_timeout (the lease TTL, set by the worker)
 * and so frees the checkpoint row the next owner's lease needs.
 * When the connection drops once COMMIT may have reached the server, the
 * worker reads the checkpoint back (as for a lost COMMIT answer).  When a
 * statement failed, the batch is rolled back and takes the usual way,
 * statement by statement: rows split on a bad row, then hook->commit(),
 * which tells a fence from a moved checkpoint.  A batch with dead letters
 * found while encoding it takes that way at once (after COPY: its rows
 * stay, commit() stores the dead letters with the advance).
 *
 * Several partitions, one transaction (write_group()).  The worker may hand
 * over the batches of several of its partitions at once: one COPY of all
 * their rows (each row carries its topic and partition), then every
 * partition's advance and COMMIT in one pipeline as above.  On the server
 * a COPY statement and a commit cost about as much for a few rows as for
 * many (bench/pg_backends.sh: a transaction per batch cost 1.23-1.35x one
 * COPY of the same rows), so this is what a bigger batch would save,
 * without waiting for one.  All or nothing, and never sorted out here: a
 * failed COPY (a bad row, a row already there) or an advance that did not
 * apply rolls all of it back and the worker writes the batches one by one
 * with write(), which finds the cause for its partition.  A group is
 * declined before anything is sent unless every batch could take COPY
 * alone (no recent conflict, write_method not pipeline).
 *
 * With "dsn" the table is elsewhere and the worker runs the usual protocol
 * (pend, write, commit).  A batch may then be written twice: after a crash
 * between write and commit, and by a fenced owner finishing a write late
 * while its successor has moved on.  So every write is idempotent: rows are
 * upserted on the key, and an update only applies when the stored row comes
 * from the same or an older position of the same partition ("offset guard",
 * see build_conflict()), so a late replay never overwrites a newer row.
 *
 * Columns.  Default layout: topic, partition, "offset", key, value, headers,
 * ts keyed by (topic, partition, "offset"): a key conflict can only be the
 * very record written before, and the fast path applies (below).  With
 * "columns" each column takes a source: $topic ... $timestamp, or "$.a.b[0]"
 * into the value parsed as JSON; key_columns are the conflict target.  Column
 * types are always read from the catalog, and values are cast to them on the
 * server, so users can create their table with the types they want
 * (create_table makes JSON paths text).  Two records of one batch with the
 * same key are folded with DISTINCT ON before ON CONFLICT sees them: the last
 * one wins (upsert), the first one (insert_ignore, insert).
 *
 * Modes.  upsert: a key's row holds its latest record.  insert_ignore: its
 * first.  insert: keys are new; a record whose key already holds a row of
 * another record is a dead letter (plain INSERT in the same database; in
 * another database ON CONFLICT ... WHERE <same source record> RETURNING, so
 * that a replay still overwrites its own rows).  With the default columns a
 * conflict is always the same record, so insert and insert_ignore just skip
 * it.  In another database, upsert and insert with custom columns need the
 * source position in the row: columns mapped from $partition and $offset
 * (and $topic when the pipeline reads several topics); create() says so.
 *
 * Fast path.  The INSERT's arrays are binary parameters (no quoting, no
 * parsing of numbers).  With the default columns a conflict can only be the
 * same record, so neither COPY nor the fast INSERT (STMT_FAST) has ON
 * CONFLICT: they only succeed when no row exists, and a key conflict (a
 * replay, or a partition reset) makes the partition use the INSERT with
 * ON CONFLICT for the next SLOW_BATCHES batches.  Custom columns need
 * DISTINCT ON and ON CONFLICT, so they always take the INSERT.  Without
 * the hook's queue() (and in another database) the advance goes through
 * commit(), a round trip of its own.  Side by side with psql \copy of the
 * same rows into the same table (one partition, one connection): COPY at
 * 1000 records per batch 0.7x, at 2000 0.85x, at 5000 1.0x; ON CONFLICT
 * about 0.5x.  The gap at small batches is the fixed cost of a transaction
 * per batch, which I3 requires.
 *
 * Values.  jsonb columns get the envelope's form of the key or value (JSON
 * verbatim, a string, or {"base64": ...}); text columns the bytes when they
 * are UTF-8 without NUL (value_format base64 forces), else that same
 * {"base64": ...} text, so nothing is refused for its encoding; bytea the
 * bytes.  headers: the envelope's object; ts: the record timestamp (NULL
 * when there is none; epoch milliseconds in a numeric column).  A tombstone
 * (NULL value) gives NULL in every column taken from the value.
 *
 * Bad rows.  An error of SQLSTATE class 22 (data) or 23 (constraint), 54000
 * (e.g. an index row too large) or P0001 (a trigger's RAISE) belongs to some
 * row: the range is split in halves, each retried (under a SAVEPOINT in the
 * same-database transaction), down to single records, which become dead
 * letters committed with the checkpoint.  Everything else is either
 * transient (connection, 40001, 40P01: SC_SINK_RETRY, the whole batch is
 * written again) or a problem of the table or the config (SC_SINK_ERROR: the
 * partition stops in the error state with the server's message).  A right
 * half whose left sibling was dense with bad rows is tried row by row when
 * it fails (sc_sink_bisect_dense(): about n statements for an all-bad
 * batch, not 2n).
 *
 * Connections.  Same database: the lent checkpoint connection for batches,
 * a short-lived one for the table setup, and one for redrive.  Other
 * database: one connection per worker, reconnected with backoff.  Prepared
 * statements are named "sink_*" and re-prepared whenever the connection (or
 * its backend) changes.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_base64.h"
#include "base/sc_failpoint.h"
#include "base/sc_log.h"
#include "db/sc_pg.h"
#include "sinks/sc_sink_txn.h"
#include "sinks/sink_postgres.h"

/* With write_method auto, one batch in this many of a size class tries the other way, and
 * COPY (the cheaper for the server) gives way only to a pipeline faster by this much. */
#define PICK_EXPLORE_EVERY 64
#define PICK_MARGIN        0.15

/* The ways of a batch into the checkpoint database (0 and 1 are c->pick's ways). */
enum pg_way {
    WAY_COPY = 0,     /* COPY, then the advance and COMMIT in one round trip */
    WAY_PIPELINE = 1, /* BEGIN, INSERT, advance, COMMIT in one round trip */
    WAY_STATEMENTS,   /* BEGIN, INSERT split on bad rows, commit(), COMMIT: one at a time */
};

/* ---- small helpers ----------------------------------------------------- */

static int put_u16(struct sc_buf *b, uint16_t v)
{
    unsigned char x[2] = {(unsigned char)(v >> 8), (unsigned char)v};
    return sc_buf_append(b, x, 2);
}

static int put_u32(struct sc_buf *b, uint32_t v)
{
    unsigned char x[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    return sc_buf_append(b, x, 4);
}

static int put_u64(struct sc_buf *b, uint64_t v)
{
    if (put_u32(b, (uint32_t)(v >> 32)) < 0)
        return -1;
    return put_u32(b, (uint32_t)v);
}

/* The SQLSTATE of a failed result, or "" */
const char *pg_sqlstate(const PGresult *res)
{
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

bool pg_result_ok(const PGresult *res)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

/*
 * Classifies a failed result and writes "message (SQLSTATE x)" into err.
 * Row errors are the ones a single record can cause (see NOTES).
 */
enum pg_outcome pg_classify(PGconn *conn, const PGresult *res, char *err, size_t errsize)
{
    char msg[400];
    sc_pg_errmsg(conn, res, msg, sizeof(msg));
    const char *state = pg_sqlstate(res);
    if (*state)
        snprintf(err, errsize, "%s (SQLSTATE %s)", msg, state);
    else
        snprintf(err, errsize, "%s", msg);
    if (sc_pg_classify(conn, res) == SC_PG_RETRY || PQstatus(conn) != CONNECTION_OK)
        return PG_RETRY;
    if (strcmp(state, "26000") == 0)
        return PG_RETRY; /* our prepared statement vanished (new backend): prepare again */
    if (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 ||
        strcmp(state, "54000") == 0 || strcmp(state, "P0001") == 0)
        return PG_ROW;
    return PG_FATAL;
}

/* Runs a statement without parameters; PQclear()s; the error in err. */
enum pg_outcome pg_exec_simple(PGconn *conn, const char *sql, char *err, size_t errsize)
{
    PGresult *res = PQexec(conn, sql);
    enum pg_outcome o = pg_result_ok(res) ? PG_OK : pg_classify(conn, res, err, errsize);
    PQclear(res);
    return o;
}

/* ROLLBACK after a failure: the error of the failure stays in err. */
void pg_rollback(PGconn *conn)
{
    PGresult *res = PQexec(conn, "ROLLBACK");
    PQclear(res);
}

static void ctx_free(struct pg_ctx *c)
{
    if (!c)
        return;
    if (c->conn)
        PQfinish(c->conn);
    pg_plan_free(c);
    free(c->rows);
    free(c->took);
    sc_buf_free(&c->data);
    sc_buf_free(&c->copy);
    for (int f = 0; f < NFIELDS; f++)
        sc_buf_free(&c->arr[f]);
    free(c);
}

static int pg_create(struct sc_sink *sink, char *err, size_t errsize)
{
    int result = -1;
    struct pg_ctx *c = sc_xcalloc(1, sizeof(*c));
    c->conf = sink->conf;
    c->fmt = sink->pc->formats;
    c->same_db = c->conf->dsn == NULL;
    c->dsn = c->same_db ? sink->cfg->postgres.dsn : c->conf->dsn;
    c->connect_timeout_ms = sink->cfg->postgres.connect_timeout_ms;
    snprintf(c->app_name, sizeof(c->app_name), "kafka-sidecar/%s/sink-%d", sink->pc->name,
             sink->worker_id);
    sc_backoff_init(&c->backoff, 100, 5000);
    sc_pick_init(&c->pick, PICK_EXPLORE_EVERY, WAY_COPY, PICK_MARGIN);
    sc_buf_init(&c->data, 0);
    sc_buf_init(&c->copy, 0);
    for (int f = 0; f < NFIELDS; f++)
        sc_buf_init(&c->arr[f], 0);
    if (pg_plan(c, sink->pc, err, errsize) != 0)
        goto out;
    /* In another database rows and checkpoint cannot share a transaction: the worker
     * runs the usual pend / write / commit protocol around an idempotent write. */
    if (!c->same_db)
        sink->flags &= ~SC_SINK_F_TRANSACTIONAL;
    sink->ctx = c;
    c = NULL;
    result = 0;
out:
    ctx_free(c);
    return result;
}

static void pg_destroy(struct sc_sink *sink)
{
    ctx_free(sink->ctx);
    sink->ctx = NULL;
}

/* ---- connections -------------------------------------------------------- */

/* Text and binary text parameters are sent as UTF-8, whatever the server's default. */
static int use_utf8(PGconn *conn, char *err, size_t errsize)
{
    if (PQclientEncoding(conn) == 6 /* PG_UTF8 */ || PQsetClientEncoding(conn, "UTF8") == 0)
        return 0;
    snprintf(err, errsize, "could not set client_encoding to UTF8: %s", PQerrorMessage(conn));
    return -1;
}

/* The sink's own connection (other database; redrive): 0, or -1 with err (retry later). */
static int own_conn(struct pg_ctx *c, char *err, size_t errsize)
{
    if (c->conn && PQstatus(c->conn) == CONNECTION_OK)
        return 0;
    if (c->conn) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    if (sc_mono_ms() < c->next_connect_ms) {
        snprintf(err, errsize, "not connected to the sink database (waiting before reconnecting)");
        return -1;
    }
    c->conn = sc_pg_connect(c->dsn, c->app_name, c->connect_timeout_ms, err, errsize);
    if (c->conn && use_utf8(c->conn, err, errsize) != 0) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    if (!c->conn) {
        c->next_connect_ms = sc_mono_ms() + sc_backoff_next(&c->backoff);
        if (!c->logged_down)
            sc_warn(NULL, "postgres sink: %s; retrying with backoff", err);
        c->logged_down = true;
        return -1;
    }
    if (c->logged_down)
        sc_info(NULL, "postgres sink: reconnected to the sink database");
    c->logged_down = false;
    sc_backoff_reset(&c->backoff);
    return 0;
}

/* Drops the own connection after connection trouble, so the next use reconnects. */
static void own_conn_check(struct pg_ctx *c)
{
    if (c->conn && PQstatus(c->conn) != CONNECTION_OK) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
}

/* ---- encoding the records ---------------------------------------------------- */

/* Text form of a key or value: the bytes when they are UTF-8 without NUL, else {"base64":..}. */
static int append_text_form(struct sc_buf *b, const void *p, size_t len, enum sc_value_format vf)
{
    if (vf != SC_VALUE_BASE64 && sc_utf8_valid(p, len) && !memchr(p, 0, len))
        return sc_buf_append(b, p, len);
    if (sc_buf_append(b, "{\"base64\":\"", 11) < 0 ||
        sc_base64_encode(b, p, len, SC_BASE64_STD) < 0)
        return -1;
    return sc_buf_append(b, "\"}", 2);
}

/*
 * Encodes field f of record r at the end of c->data (jsonb with its version
 * byte, timestamptz and int8 in binary).  Returns the length, -1 for NULL,
 * or -2 with why set when the record cannot fill the field.
 */
static int64_t encode_field(struct pg_ctx *c, enum pg_field f, const struct sc_record *r,
                            const char **why)
{
    struct sc_buf *b = &c->data;
    size_t start = b->len;
    int rc = 0;
    switch (f) {
    case F_OFF:
        rc = put_u64(b, (uint64_t)r->offset);
        break;
    case F_KEY_TEXT:
    case F_VAL_TEXT: {
        bool key = f == F_KEY_TEXT;
        const void *p = key ? r->key : r->value;
        const char *json = key ? r->key_json : r->value_json; /* decoded: schema registry */
        if (!sc_format_is_framed(key ? c->fmt.key : c->fmt.value))
            json = NULL;
        if (!p)
            return -1;
        rc = json ? sc_buf_append(b, json, key ? r->key_json_len : r->value_json_len)
                  : append_text_form(b, p, key ? r->key_len : r->value_len,
                                     key ? c->fmt.key : c->fmt.value);
        break;
    }
    case F_KEY_BYTEA:
        if (!r->key)
            return -1;
        rc = sc_buf_append(b, r->key, r->key_len);
        break;
    case F_VAL_BYTEA:
        if (!r->value)
            return -1;
        rc = sc_buf_append(b, r->value, r->value_len);
        break;
    case F_KEY_JSON:
        if (!r->key)
            return -1;
        rc = sc_buf_putc(b, 1) | sc_envelope_append_record_key(b, r, c->fmt.key);
        break;
    case F_VAL_JSON:
        if (!r->value)
            return -1;
        rc = sc_buf_putc(b, 1) | sc_envelope_append_record_value(b, r, c->fmt.value);
        break;
    case F_HEADERS:
        rc = sc_buf_putc(b, 1) | sc_envelope_append_headers(b, r->headers, r->nheaders);
        break;
    case F_DOC: {
        if (!r->value)
            return -1; /* a tombstone: every path is NULL */
        rc = sc_buf_putc(b, 1);
        /* A decoded value (schema registry) is the document; else the value's own JSON. */
        int j = rc != 0 ? -1
                : r->value_json && sc_format_is_framed(c->fmt.value)
                    ? (sc_buf_append(b, r->value_json, r->value_json_len) < 0 ? -1 : 1)
                    : sc_json_minify_append(b, r->value, r->value_len);
        if (j == 0) {
            *why = "the value is not a JSON document, so the sink's \"$.\" columns cannot be "
                   "taken from it";
            b->len = start;
            return -2;
        }
        rc = j < 0 ? -1 : 0;
        break;
    }
    case F_TS:
        if (r->timestamp < 0)
            return -1;
        if (r->timestamp > (INT64_MAX - PG_EPOCH_US) / 1000) {
            *why = "the record's timestamp is out of range";
            return -2;
        }
        rc = put_u64(b, (uint64_t)(r->timestamp * 1000 - PG_EPOCH_US));
        break;
    case NFIELDS:
        break;
    }
    if (rc != 0)
        abort(); /* the buffer has no maximum */
    int64_t n = (int64_t)(b->len - start);
    if (n > INT32_MAX - 1) {
        *why = "the field is larger than PostgreSQL accepts (1 GB)";
        b->len = start;
        return -2;
    }
    return n;
}

/*
 * Encodes records[0..n) into c->rows; a record that cannot be a row (value
 * not JSON while "$." columns need it) is added to res as a dead letter, or
 * to errors[] when res is NULL (redrive).
 */
static void encode_rows(struct pg_ctx *c, const struct sc_record *records, size_t n,
                        struct sc_batch_result *res, char **errors)
{
    sc_buf_reset(&c->data);
    if (n > c->rows_cap) {
        c->rows_cap = n;
        c->rows = sc_xrealloc(c->rows, n * sizeof(*c->rows));
        free(c->took);
        c->took = sc_xcalloc(n, sizeof(*c->took));
    }
    c->nrows = 0;
    for (size_t i = 0; i < n; i++) {
        struct pg_row *row = &c->rows[c->nrows];
        row->rec = i;
        row->offset = records[i].offset;
        size_t mark = c->data.len;
        const char *why = NULL;
        for (int f = 0; f < NFIELDS && !why; f++) {
            if (!c->used[f])
                continue;
            row->off[f] = c->data.len;
            int64_t len = encode_field(c, (enum pg_field)f, &records[i], &why);
            row->len[f] = (int32_t)(len < 0 ? -1 : len);
        }
        if (why) {
            c->data.len = mark;
            if (res)
                sc_batch_result_add_dead(res, i, sc_xstrdup(why), 0, NULL, 1);
            else
                errors[i] = sc_xstrdup(why);
            continue;
        }
        c->nrows++;
    }
}

/* One binary array per used field, for rows [lo, hi). */
static void build_arrays(struct pg_ctx *c, size_t lo, size_t hi)
{
    for (int f = 0; f < NFIELDS; f++) {
        if (!c->used[f])
            continue;
        struct sc_buf *a = &c->arr[f];
        sc_buf_reset(a);
        bool nulls = false;
        for (size_t i = lo; i < hi; i++)
            nulls |= c->rows[i].len[f] < 0;
        /* ndim, has-nulls flag, element type, then (size, lower bound) of the dimension */
        int rc = put_u32(a, 1) | put_u32(a, nulls) | put_u32(a, pg_fields[f].oid) |
                 put_u32(a, (uint32_t)(hi - lo)) | put_u32(a, 1);
        for (size_t i = lo; i < hi; i++) {
            const struct pg_row *row = &c->rows[i];
            rc |= put_u32(a, (uint32_t)row->len[f]);
            if (row->len[f] > 0)
                rc |= sc_buf_append(a, c->data.data + row->off[f], (size_t)row->len[f]);
        }
        if (rc != 0)
            abort();
    }
}

/* ---- writing ------------------------------------------------------------- */

/* The parameters of STMT_INSERT / STMT_FAST for rows [lo, hi) (part: >= 16 bytes). */
struct insert_params {
    const char *values[MAX_PARAMS];
    int lengths[MAX_PARAMS], formats[MAX_PARAMS];
    char part[16];
};

static void insert_params(struct pg_ctx *c, const char *topic, int32_t partition, size_t lo,
                          size_t hi, struct insert_params *ip)
{
    build_arrays(c, lo, hi);
    snprintf(ip->part, sizeof(ip->part), "%d", (int)partition);
    int n = 0;
    ip->values[n] = topic, ip->lengths[n] = 0, ip->formats[n++] = 0;
    ip->values[n] = ip->part, ip->lengths[n] = 0, ip->formats[n++] = 0;
    for (int f = 0; f < NFIELDS; f++)
        if (c->used[f]) {
            ip->values[n] = c->arr[f].data;
            ip->lengths[n] = (int)c->arr[f].len;
            ip->formats[n++] = 1;
        }
    for (size_t i = 0; i < c->ncols; i++)
        if (c->cols[i].src == SRC_PATH) {
            ip->values[n] = c->cols[i].path;
            ip->lengths[n] = 0;
            ip->formats[n++] = 0;
        }
}

/* Runs STMT_INSERT for rows [lo, hi); with returning, marks c->took[] by offset. */
static enum pg_outcome run_insert(struct pg_ctx *c, PGconn *conn, const char *topic,
                                  int32_t partition, size_t lo, size_t hi, char *err,
                                  size_t errsize)
{
    struct insert_params ip;
    insert_params(c, topic, partition, lo, hi, &ip);
    PGresult *res = PQexecPrepared(conn, STMT_INSERT, c->nparams, ip.values, ip.lengths, ip.formats,
                                   0 /* text */);
    enum pg_outcome o = PG_OK;
    if (!pg_result_ok(res)) {
        o = pg_classify(conn, res, err, errsize);
        if (strcmp(pg_sqlstate(res), "26000") == 0)
            c->prep_conn = NULL;
    } else if (c->returning) {
        /* Rows come back by offset; the batch's offsets ascend. */
        for (int r = 0; r < PQntuples(res); r++) {
            int64_t off = strtoll(PQgetvalue(res, r, 0), NULL, 10);
            size_t a = lo, z = hi;
            while (a < z) {
                size_t m = a + (z - a) / 2;
                if (c->rows[m].offset < off)
                    a = m + 1;
                else
                    z = m;
            }
            if (a < hi && c->rows[a].offset == off)
                c->took[a] = true;
        }
    }
    PQclear(res);
    return o;
}

static void add_dead(struct pg_ctx *c, size_t row, const char *error, struct sc_batch_result *res)
{
    sc_batch_result_add_dead(res, c->rows[row].rec, sc_xstrdup(error), 0, NULL, 1);
}

/*
 * Writes rows [lo, hi), splitting the range on row errors until single
 * records remain, which become dead letters.  known_bad: the range failed
 * already (with err), so go straight to its halves.  dense: if it fails,
 * try its rows one by one instead of splitting it (its left sibling was
 * dense with bad rows, sc_sink_bisect_dense()).  In a transaction each
 * attempt runs under a savepoint, so a failure undoes only itself.
 */
static enum pg_outcome insert_range(struct pg_ctx *c, PGconn *conn, const char *topic,
                                    int32_t partition, size_t lo, size_t hi, bool known_bad,
                                    bool dense, bool in_tx, struct sc_batch_result *res, char *err,
                                    size_t errsize)
{
    if (lo >= hi)
        return PG_OK;
    if (!known_bad) {
        enum pg_outcome o;
        if (in_tx && (o = pg_exec_simple(conn, "SAVEPOINT sink_rows", err, errsize)) != PG_OK)
            return o == PG_ROW ? PG_FATAL : o;
        o = run_insert(c, conn, topic, partition, lo, hi, err, errsize);
        if (o == PG_OK) {
            if (in_tx &&
                (o = pg_exec_simple(conn, "RELEASE SAVEPOINT sink_rows", err, errsize)) != PG_OK)
                return o == PG_ROW ? PG_FATAL : o;
            return PG_OK;
        }
        if (o != PG_ROW)
            return o;
        char undo_err[256];
        enum pg_outcome u;
        if (in_tx && (u = pg_exec_simple(
                          conn, "ROLLBACK TO SAVEPOINT sink_rows; RELEASE SAVEPOINT sink_rows",
                          undo_err, sizeof(undo_err))) != PG_OK) {
            snprintf(err, errsize, "%s", undo_err);
            return u == PG_ROW ? PG_FATAL : u;
        }
    }
    if (hi - lo == 1) {
        sc_debug(NULL, "postgres sink: offset %" PRId64 " rejected: %s", c->rows[lo].offset, err);
        add_dead(c, lo, err, res);
        return PG_OK;
    }
    if (dense) {
        for (size_t i = lo; i < hi; i++) {
            enum pg_outcome o = insert_range(c, conn, topic, partition, i, i + 1, false, false,
                                             in_tx, res, err, errsize);
            if (o != PG_OK)
                return o;
        }
        return PG_OK;
    }
    size_t mid = lo + (hi - lo) / 2, ndead = res->ndead;
    enum pg_outcome o =
        insert_range(c, conn, topic, partition, lo, mid, false, false, in_tx, res, err, errsize);
    if (o != PG_OK)
        return o;
    return insert_range(c, conn, topic, partition, mid, hi, false,
                        sc_sink_bisect_dense(mid - lo, res->ndead - ndead), in_tx, res, err,
                        errsize);
}

/* insert mode in another database: rows the statement did not report hit another record's key. */
static void dead_duplicates(struct pg_ctx *c, struct sc_batch_result *res, size_t ndead_before)
{
    if (!c->returning)
        return;
    for (size_t i = 0; i < c->nrows; i++) {
        if (c->took[i])
            continue;
        bool dead = false; /* rejected for its own reason already */
        for (size_t d = ndead_before; d < res->ndead && !dead; d++)
            dead = res->dead[d].index == c->rows[i].rec;
        if (!dead)
            add_dead(c, i,
                     "duplicate key: a row with this key already holds another record "
                     "(mode insert)",
                     res);
    }
}

/* The general path: one INSERT of all rows, split on row errors. */
static enum pg_outcome write_rows(struct pg_ctx *c, PGconn *conn, const struct sc_batch *b,
                                  bool in_tx, struct sc_batch_result *res, char *err,
                                  size_t errsize)
{
    size_t ndead_before = res->ndead;
    if (c->returning)
        memset(c->took, 0, c->nrows * sizeof(*c->took));
    enum pg_outcome o = insert_range(c, conn, b->part->topic, b->part->partition, 0, c->nrows,
                                     false, false, in_tx, res, err, errsize);
    if (o == PG_OK)
        dead_duplicates(c, res, ndead_before);
    return o;
}

/* Hands the COPY data gathered so far to libpq (which sends it): 0, or -1 on connection trouble. */
static int copy_flush(PGconn *conn, struct sc_buf *q)
{
    int rc = q->len > 0 && PQputCopyData(conn, q->data, (int)q->len) != 1 ? -1 : 0;
    sc_buf_reset(q);
    return rc;
}

/*
 * The fast path: one binary COPY of all rows (default columns; see NOTES).
 * copy_start() sends the command without waiting, so its round trip
 * overlaps encoding the batch; copy_rows() then sends the rows in pieces of
 * COPY_CHUNK while encoding the rest, so the server parses and inserts
 * while the client still works.
 */
#define COPY_CHUNK 65536

/* How every transaction of the same-database mode starts (see NOTES: constraints immediate). */
#define BEGIN_TX "BEGIN; SET CONSTRAINTS ALL IMMEDIATE"

static enum pg_outcome copy_start(struct pg_ctx *c, PGconn *conn, const char *begin, char *err,
                                  size_t errsize)
{
    char *sql = sc_xasprintf("%s%s", begin, c->copy_sql);
    int sent = PQsendQuery(conn, sql);
    free(sql);
    if (sent)
        return PG_OK;
    snprintf(err, errsize, "could not send COPY: %s", PQerrorMessage(conn));
    return PG_RETRY;
}

/*
 * Ends the COPY data (rc: what copy_put() returned; why: a message that
 * makes the server fail the COPY instead) and reads how the COPY went.
 * *conflict: a row was there already.
 */
static enum pg_outcome copy_close(struct pg_ctx *c, PGconn *conn, int rc, const char *why,
                                  bool *conflict, char *err, size_t errsize)
{
    struct sc_buf *q = &c->copy;
    PGresult *res;
    *conflict = false;
    if (rc == 0 && !why)
        rc = put_u16(q, 0xFFFF) | copy_flush(conn, q);
    sc_buf_reset(q);
    if (rc != 0 && !why)
        why = "the rows could not be sent whole";
    if (PQputCopyEnd(conn, why) != 1) {
        snprintf(err, errsize, "COPY into %s failed: %s", c->table_q, PQerrorMessage(conn));
        while ((res = PQgetResult(conn)) != NULL)
            PQclear(res);
        return PG_RETRY;
    }
    enum pg_outcome o = PG_OK;
    while ((res = PQgetResult(conn)) != NULL) {
        if (o == PG_OK && !pg_result_ok(res)) {
            o = pg_classify(conn, res, err, errsize);
            *conflict = strcmp(pg_sqlstate(res), "23505") == 0; /* unique_violation */
        }
        PQclear(res);
    }
    if (why) { /* the server failed the COPY as asked: nothing to split */
        snprintf(err, errsize, "COPY into %s ended: %s", c->table_q, why);
        return PG_RETRY;
    }
    return o;
}

/* After copy_start(): waits until the server takes COPY data, and puts the header in c->copy. */
static enum pg_outcome copy_open(struct pg_ctx *c, PGconn *conn, char *err, size_t errsize)
{
    enum pg_outcome o = PG_OK;
    PGresult *res;
    bool copy_in = false;
    while (!copy_in && (res = PQgetResult(conn)) != NULL) {
        copy_in = PQresultStatus(res) == PGRES_COPY_IN;
        if (!copy_in && o == PG_OK && !pg_result_ok(res))
            o = pg_classify(conn, res, err, errsize);
        PQclear(res);
    }
    if (!copy_in) {
        if (o == PG_OK) {
            snprintf(err, errsize, "COPY into %s did not start", c->table_q);
            o = PG_RETRY;
        }
        return o == PG_ROW ? PG_FATAL : o; /* the statement failed, not a row */
    }
    struct sc_buf *q = &c->copy;
    sc_buf_reset(q);
    bool conflict;
    if (sc_buf_append(q, "PGCOPY\n\377\r\n\0", 11) | put_u32(q, 0) | put_u32(q, 0))
        return copy_close(c, conn, -1, NULL, &conflict, err, errsize);
    return PG_OK;
}

/* Adds the rows of batch b (encode_rows()) to the COPY data, sent in pieces: 0, or -1. */
static int copy_put(struct pg_ctx *c, PGconn *conn, const struct sc_batch *b)
{
    struct sc_buf *q = &c->copy;
    int rc = 0;
    size_t tlen = strlen(b->part->topic);
    for (size_t i = 0; i < c->nrows && rc == 0; i++) {
        const struct pg_row *row = &c->rows[i];
        rc |= put_u16(q, (uint16_t)c->ncols);
        for (size_t k = 0; k < c->ncols; k++) {
            const struct pg_col *col = &c->cols[k];
            if (col->src == SRC_TOPIC) {
                rc |= put_u32(q, (uint32_t)tlen) | sc_buf_append(q, b->part->topic, tlen);
            } else if (col->src == SRC_PARTITION) {
                rc |= put_u32(q, 4) | put_u32(q, (uint32_t)b->part->partition);
            } else {
                int32_t len = row->len[col->field];
                rc |= put_u32(q, (uint32_t)len);
                if (len > 0)
                    rc |= sc_buf_append(q, c->data.data + row->off[col->field], (size_t)len);
            }
        }
        if (q->len >= COPY_CHUNK)
            rc |= copy_flush(conn, q);
    }
    return rc;
}

/* After copy_start() and encode_rows(): the rows of b.  *conflict: a row is there already. */
static enum pg_outcome copy_rows(struct pg_ctx *c, PGconn *conn, const struct sc_batch *b,
                                 bool *conflict, char *err, size_t errsize)
{
    *conflict = false;
    enum pg_outcome o = copy_open(c, conn, err, errsize);
    if (o != PG_OK)
        return o;
    return copy_close(c, conn, copy_put(c, conn, b), NULL, conflict, err, errsize);
}

/* ---- one round trip: the pipelined transaction --------------------------- */

enum pipe_outcome {
    PIPE_COMMITTED,
    PIPE_NOT,     /* nothing committed; the connection is idle, or lost (PG_RETRY) */
    PIPE_UNKNOWN, /* the connection failed once COMMIT could have reached the server */
};

/*
 * Same database, one round trip (see NOTES): BEGIN, SET CONSTRAINTS ALL
 * IMMEDIATE, one INSERT of all rows (stmt), the hook's checkpoint advance,
 * Sync, COMMIT, Sync go out together.  With stmt NULL the transaction is
 * open and holds the rows already (COPY): only the advance, Sync, COMMIT,
 * Sync go out; then there may be several items (write_group()), each with
 * its advance, all in the one transaction.  The advance fails when it does
 * not apply, and a failure makes the server skip the rest up to the Sync
 * and leaves the transaction failed, so COMMIT commits all of it or
 * answers ROLLBACK.
 * For PIPE_NOT, *o says what failed first (PG_OK: it could not start, or
 * the advance did not apply; PG_ROW from the rows: split them; PG_RETRY:
 * connection trouble), and *conflict whether that was a key conflict; the
 * transaction is rolled back.
 */
static enum pipe_outcome write_pipelined(struct pg_ctx *c, PGconn *conn,
                                         const struct sc_txn_item *items, size_t n,
                                         const char *stmt, enum pg_outcome *o, bool *conflict,
                                         char *err, size_t errsize)
{
    enum {
        Q_BEGIN,
        Q_SET,
        Q_ROWS,
        Q_ADVANCE, /* the first item's; item i's is Q_ADVANCE + i */
    };
    const int q_commit = Q_ADVANCE + (int)n, nq = q_commit + 1;
    *o = PG_OK;
    *conflict = false;
    if (PQenterPipelineMode(conn) != 1) {
        if (PQtransactionStatus(conn) != PQTRANS_IDLE)
            pg_rollback(conn);
        return PIPE_NOT;
    }
    int first = stmt ? Q_BEGIN : Q_ADVANCE, queued = first;
    if (stmt) {
        const struct sc_batch *b = items[0].batch;
        struct insert_params ip;
        insert_params(c, b->part->topic, b->part->partition, 0, c->nrows, &ip);
        if (PQsendQueryParams(conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1)
            queued++;
        if (queued == Q_SET && PQsendQueryParams(conn, "SET CONSTRAINTS ALL IMMEDIATE", 0, NULL,
                                                 NULL, NULL, NULL, 0) == 1)
            queued++;
        if (queued == Q_ROWS &&
            PQsendQueryPrepared(conn, stmt, c->nparams, ip.values, ip.lengths, ip.formats, 0) == 1)
            queued++;
    }
    char qerr[256] = "";
    for (const struct sc_txn_item *it; queued >= Q_ADVANCE && queued < q_commit; queued++) {
        it = &items[queued - Q_ADVANCE];
        if (it->hook->queue(it->hook->arg, it->batch, it->res, qerr, sizeof(qerr)) != 0)
            break;
    }
    /* A Sync before COMMIT too: should this process stall from here on, the server sees
     * its session idle in the transaction (not in the middle of a request) and ends it
     * after idle_in_transaction_session_timeout, which frees the checkpoint row the next
     * owner needs.  Flushed, but not waited for: still one round trip.  (A stall in the
     * few instructions since the advance was queued, with part of it already flushed,
     * is not covered: the server then waits in the middle of the request.) */
    bool lost = PQpipelineSync(conn) != 1, commit_sent = false;
    int syncs = 1;
    if (queued == q_commit && !lost) {
        sc_failpoint("pg_before_commit");
        commit_sent = true; /* from here on, the server may commit */
        if (PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1)
            queued++;
        lost = PQpipelineSync(conn) != 1;
        syncs++;
    }
    /* Results come statement by statement, each ended by NULL, and a result per Sync. */
    bool committed = false;
    int failed = -1; /* the first statement that failed */
    for (int i = first; !lost;) {
        PGresult *r = PQstatus(conn) == CONNECTION_OK && i <= nq ? PQgetResult(conn) : NULL;
        if (PQstatus(conn) != CONNECTION_OK || i > nq) {
            PQclear(r);
            lost = true;
            break;
        }
        if (!r) {
            i++;
            continue;
        }
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            if (--syncs == 0)
                break;
            continue;
        }
        if (i == q_commit && pg_result_ok(r) && strcmp(PQcmdStatus(r), "COMMIT") == 0)
            committed = true;
        else if (failed < 0 && st != PGRES_PIPELINE_ABORTED &&
                 (!pg_result_ok(r) || i == q_commit)) {
            failed = i;
            if (pg_result_ok(r)) { /* COMMIT answered ROLLBACK */
                snprintf(err, errsize, "COMMIT answered %s", PQcmdStatus(r));
                *o = PG_RETRY;
            } else {
                *o = pg_classify(conn, r, err, errsize);
            }
            *conflict = stmt && i == Q_ROWS && strcmp(pg_sqlstate(r), "23505") == 0;
            if (stmt && i == Q_ROWS && strcmp(pg_sqlstate(r), "26000") == 0)
                c->prep_conn = NULL; /* our INSERT vanished (a new backend): prepare again */
        }
        PQclear(r);
    }
    if (lost || PQexitPipelineMode(conn) != 1) {
        snprintf(err, errsize, "connection to PostgreSQL lost during the batch: %s",
                 PQerrorMessage(conn));
        *o = PG_RETRY;
        return commit_sent ? PIPE_UNKNOWN : PIPE_NOT;
    }
    if (committed && failed < 0)
        return PIPE_COMMITTED;
    if (commit_sent && failed < 0) {
        /* COMMIT could not be queued whole, yet part of it may have gone out with the Sync */
        snprintf(err, errsize, "could not send COMMIT: %s", PQerrorMessage(conn));
        *o = PG_RETRY;
        return PIPE_UNKNOWN;
    }
    if (failed < 0 || (failed >= Q_ADVANCE && failed < q_commit)) {
        /* Not all of it could be queued, or an advance did not apply (fenced, or the
         * checkpoint moved): the usual way finds out which, with commit(). */
        sc_debug(NULL, "postgres sink: pipelined batch not committed: %s",
                 failed < 0 ? (qerr[0] ? qerr : PQerrorMessage(conn)) : err);
        *o = PG_OK;
    }
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        pg_rollback(conn);
    return PIPE_NOT;
}

/* What the hook's queued() is told of a pipelined transaction (struct sc_commit_hook). */
static int queued_outcome(enum pipe_outcome po)
{
    return po == PIPE_COMMITTED ? 1 : po == PIPE_NOT ? 0 : -1;
}

/* ---- the sink callbacks ---------------------------------------------------- */

static int pg_part_open(struct sc_sink *sink, const struct sc_part_ref *ref,
                        struct sc_sink_part **out, char *err, size_t errsize)
{
    (void)sink, (void)ref, (void)err, (void)errsize;
    *out = sc_xcalloc(1, sizeof(**out));
    return 0;
}

static void pg_part_close(struct sc_sink *sink, struct sc_sink_part *p)
{
    (void)sink;
    free(p);
}

/*
 * Makes the table ready before the first batch: -2 (partition error state)
 * when the table or the config is wrong, -1 to retry later.  Nothing to
 * undo in the table: rows are keyed, so a batch written again replaces
 * itself.
 */
static int pg_part_recover(struct sc_sink *sink, struct sc_sink_part *p, int64_t end,
                           int (*still_owner)(void *arg), void *arg, char *err, size_t errsize)
{
    (void)p, (void)end, (void)still_owner, (void)arg;
    struct pg_ctx *c = sink->ctx;
    if (c->ready)
        return 0;
    PGconn *conn = NULL;
    if (c->same_db) {
        /* The checkpoint connection is lent only during write(): use a short-lived one. */
        conn = sc_pg_connect(c->dsn, c->app_name, c->connect_timeout_ms, err, errsize);
        if (!conn || use_utf8(conn, err, errsize) != 0) {
            if (conn)
                PQfinish(conn);
            return -1;
        }
    } else {
        if (own_conn(c, err, errsize) != 0)
            return -1;
        conn = c->conn;
    }
    enum pg_outcome o = pg_setup(c, conn, err, errsize);
    if (c->same_db) {
        PQfinish(conn);
        c->prep_conn = NULL; /* prepared there, not on the checkpoint connection */
    } else {
        own_conn_check(c);
    }
    if (o == PG_OK)
        return 0;
    return o == PG_RETRY ? -1 : -2;
}

static enum sc_sink_result result_of(enum pg_outcome o)
{
    return o == PG_RETRY ? SC_SINK_RETRY : SC_SINK_ERROR;
}

/* Whether p's next batch may go in by COPY (default columns, no conflict seen lately). */
static bool can_copy(const struct pg_ctx *c, const struct sc_sink_part *p)
{
    return c->copy_sql && p->slow_batches == 0;
}

static enum pg_way choose_way(struct pg_ctx *c, const struct sc_sink_part *p,
                              const struct sc_commit_hook *hook, size_t n)
{
    bool copy = can_copy(c, p), pipe = hook->queue != NULL;
    if (copy && pipe) {
        if (c->conf->write_method == PG_WRITE_COPY)
            return WAY_COPY;
        if (c->conf->write_method == PG_WRITE_PIPELINE)
            return WAY_PIPELINE;
        return sc_pick_way(&c->pick, n) == WAY_COPY ? WAY_COPY : WAY_PIPELINE;
    }
    return pipe ? WAY_PIPELINE : copy ? WAY_COPY : WAY_STATEMENTS;
}

/*
 * write_pipelined(), and the hook told how it went.  Returns true when that
 * decided the batch (*sr), false when the batch takes the usual way
 * (nothing was committed, the connection is idle).
 */
static bool pipelined(struct pg_ctx *c, struct sc_sink_part *p, PGconn *conn,
                      const struct sc_batch *b, const struct sc_commit_hook *hook, const char *stmt,
                      struct sc_batch_result *res, enum sc_sink_result *sr, char *err,
                      size_t errsize)
{
    enum pg_outcome o;
    bool conflict;
    struct sc_txn_item item = {.part = p, .batch = b, .hook = hook, .res = res};
    enum pipe_outcome po = write_pipelined(c, conn, &item, 1, stmt, &o, &conflict, err, errsize);
    hook->queued(hook->arg, queued_outcome(po));
    if (po == PIPE_COMMITTED)
        *sr = SC_SINK_OK;
    else if (po == PIPE_UNKNOWN || o == PG_RETRY)
        *sr = SC_SINK_RETRY;
    else if (o == PG_FATAL)
        *sr = SC_SINK_ERROR; /* the table or the config: the usual way fails the same */
    else {
        if (conflict)
            p->slow_batches = SLOW_BATCHES;
        return false; /* a bad row, a conflict, or the advance did not apply */
    }
    return true;
}

/* Same database: rows + checkpoint in one transaction on the lent connection. */
static enum sc_sink_result write_same_db(struct pg_ctx *c, struct sc_sink_part *p,
                                         const struct sc_batch *b,
                                         const struct sc_commit_hook *hook,
                                         struct sc_batch_result *res, char *err, size_t errsize)
{
    PGconn *conn = hook->conn;
    enum pg_outcome o;
    enum sc_sink_result sr;
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        pg_rollback(conn); /* never happens unless a previous call was cut short */
    if (use_utf8(conn, err, errsize) != 0)
        return SC_SINK_RETRY;
    if (!c->ready && (o = pg_setup(c, conn, err, errsize)) != PG_OK)
        return result_of(o);
    if ((o = pg_prepare_insert(c, conn, err, errsize)) != PG_OK)
        return result_of(o);
    int64_t t0 = sc_mono_ns();
    enum pg_way way = choose_way(c, p, hook, b->count);
    /* COPY starts before the rows are encoded: its round trip overlaps the encoding. */
    if (way == WAY_COPY && (o = copy_start(c, conn, BEGIN_TX "; ", err, errsize)) != PG_OK)
        return result_of(o);
    encode_rows(c, b->records, b->count, res, NULL);
    size_t ndead_before = res->ndead;
    res->next_write_offset = b->last_offset + 1;
    bool rows_in = false; /* the rows are in the open transaction */
    if (way == WAY_PIPELINE && res->ndead == 0) {
        bool plain = c->fast_sql && p->slow_batches == 0;
        if (!plain && p->slow_batches > 0)
            p->slow_batches--;
        if (pipelined(c, p, conn, b, hook, plain ? STMT_FAST : STMT_INSERT, res, &sr, err,
                      errsize)) {
            if (sr == SC_SINK_OK && plain)
                sc_pick_observe(&c->pick, WAY_PIPELINE, b->count, sc_mono_ns() - t0);
            return sr;
        }
    } else if (way == WAY_COPY) {
        bool conflict;
        o = copy_rows(c, conn, b, &conflict, err, errsize);
        if (o == PG_OK) {
            rows_in = true;
        } else {
            pg_rollback(conn);
            if (o != PG_ROW)
                return result_of(o);
            /* rows there already (a reset?) or a bad row: this batch takes the INSERT path */
            if (conflict)
                p->slow_batches = SLOW_BATCHES;
        }
        /* Dead letters found while encoding go in with commit(), below. */
        if (rows_in && res->ndead == 0 && hook->queue) {
            if (pipelined(c, p, conn, b, hook, NULL, res, &sr, err, errsize)) {
                if (sr == SC_SINK_OK)
                    sc_pick_observe(&c->pick, WAY_COPY, b->count, sc_mono_ns() - t0);
                return sr;
            }
            rows_in = false; /* rolled back with the advance: the usual way tells why */
        }
    } else if (p->slow_batches > 0) {
        p->slow_batches--;
    }
    if (!rows_in) {
        if ((o = pg_exec_simple(conn, BEGIN_TX, err, errsize)) != PG_OK)
            return result_of(o);
        o = write_rows(c, conn, b, true, res, err, errsize);
        if (o != PG_OK) {
            pg_rollback(conn);
            /* dead letters found so far are re-found on the retry */
            for (size_t i = ndead_before; i < res->ndead; i++)
                free(res->dead[i].error);
            res->ndead = ndead_before;
            return result_of(o);
        }
    }
    int h = hook->commit(hook->arg, b, res, err, errsize);
    if (h != 0) {
        pg_rollback(conn);
        return h > 0 ? SC_SINK_FENCED : SC_SINK_RETRY;
    }
    sc_failpoint("pg_before_commit");
    if ((o = pg_exec_simple(conn, "COMMIT", err, errsize)) != PG_OK) {
        /* the worker reads the checkpoint back to learn whether it happened */
        pg_rollback(conn);
        return SC_SINK_RETRY;
    }
    return SC_SINK_OK;
}

/*
 * Several partitions' batches in one transaction (struct sc_sink_class.write_group):
 * one COPY of all their rows, then every advance, Sync, COMMIT, Sync in one
 * pipeline.  Declined (0, nothing sent) unless every batch could take COPY
 * alone; a batch with dead letters ends the COPY and the transaction.
 */
static int pg_write_group(struct sc_sink *sink, const struct sc_txn_item *items, size_t n,
                          char *err, size_t errsize)
{
    struct pg_ctx *c = sink->ctx;
    PGconn *conn = items[0].hook->conn;
    bool conflict;
    if (!c->same_db || !c->ready || c->conf->write_method == PG_WRITE_PIPELINE)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!can_copy(c, items[i].part) || !items[i].hook->queue)
            return 0;
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        pg_rollback(conn); /* never happens unless a previous call was cut short */
    if (use_utf8(conn, err, errsize) != 0)
        return 0;
    enum pg_outcome o = copy_start(c, conn, BEGIN_TX "; ", err, errsize);
    if (o == PG_OK)
        o = copy_open(c, conn, err, errsize);
    if (o == PG_OK) {
        int rc = 0;
        const char *why = NULL;
        for (size_t i = 0; i < n && rc == 0 && !why; i++) {
            const struct sc_batch *b = items[i].batch;
            encode_rows(c, items[i].records(items[i].arg), b->count, items[i].res, NULL);
            items[i].res->next_write_offset = b->last_offset + 1;
            if (items[i].res->ndead > 0)
                why = "a batch of the group has records that cannot be rows";
            else
                rc = copy_put(c, conn, b);
        }
        o = copy_close(c, conn, rc, why, &conflict, err, errsize);
    }
    if (o != PG_OK) {
        pg_rollback(conn);
        return 0;
    }
    int outcome =
        queued_outcome(write_pipelined(c, conn, items, n, NULL, &o, &conflict, err, errsize));
    for (size_t i = 0; i < n; i++)
        items[i].hook->queued(items[i].hook->arg, outcome);
    return outcome;
}

/* Another database: idempotent rows on the sink's own connection; the worker commits. */
static enum sc_sink_result write_other_db(struct pg_ctx *c, struct sc_sink_part *p,
                                          const struct sc_batch *b, struct sc_batch_result *res,
                                          char *err, size_t errsize)
{
    if (own_conn(c, err, errsize) != 0)
        return SC_SINK_RETRY;
    PGconn *conn = c->conn;
    enum pg_outcome o = c->ready ? PG_OK : pg_setup(c, conn, err, errsize);
    if (o == PG_OK)
        o = pg_prepare_insert(c, conn, err, errsize);
    /* A replay most likely finds its rows there already: straight to ON CONFLICT. */
    bool try_copy = can_copy(c, p) && !b->replay;
    if (o == PG_OK && try_copy)
        o = copy_start(c, conn, "", err, errsize);
    encode_rows(c, b->records, b->count, res, NULL);
    if (o == PG_OK) {
        if (!try_copy && p->slow_batches > 0)
            p->slow_batches--;
        bool conflict = false;
        o = try_copy ? copy_rows(c, conn, b, &conflict, err, errsize) : PG_ROW;
        if (o == PG_ROW) {
            if (conflict)
                p->slow_batches = SLOW_BATCHES;
            size_t ndead_before = res->ndead;
            o = write_rows(c, conn, b, false, res, err, errsize);
            if (o != PG_OK) {
                for (size_t i = ndead_before; i < res->ndead; i++)
                    free(res->dead[i].error);
                res->ndead = ndead_before;
            }
        }
    }
    own_conn_check(c);
    if (o != PG_OK)
        return result_of(o);
    res->next_write_offset = b->last_offset + 1;
    return SC_SINK_OK;
}

static enum sc_sink_result pg_write(struct sc_sink *sink, struct sc_sink_part *p,
                                    const struct sc_batch *b, const struct sc_commit_hook *hook,
                                    struct sc_batch_result *res, char *err, size_t errsize)
{
    struct pg_ctx *c = sink->ctx;
    enum sc_sink_result sr;
    if (c->same_db && !hook) {
        snprintf(err, errsize, "the postgres sink in the checkpoint database needs the hook");
        return SC_SINK_ERROR;
    }
    if (c->same_db)
        sr = write_same_db(c, p, b, hook, res, err, errsize);
    else
        sr = write_other_db(c, p, b, res, err, errsize);
    /* The table or its columns may have changed: look at the catalog again next time. */
    if (sr == SC_SINK_ERROR)
        c->ready = false;
    return sr;
}

/*
 * Re-sends dead letters, each in its own statement (autocommit), with the
 * same conflict handling as a batch.
 */
static enum sc_sink_result pg_redrive(struct sc_sink *sink, const struct sc_record *records,
                                      size_t n, bool *ok, char **errors, char *err, size_t errsize)
{
    struct pg_ctx *c = sink->ctx;
    if (own_conn(c, err, errsize) != 0)
        return SC_SINK_RETRY;
    enum pg_outcome o = PG_OK;
    if (!c->ready)
        o = pg_setup(c, c->conn, err, errsize);
    if (o == PG_OK)
        o = pg_prepare_insert(c, c->conn, err, errsize);
    for (size_t i = 0; i < n && o == PG_OK; i++) {
        ok[i] = false;
        errors[i] = NULL;
        encode_rows(c, &records[i], 1, NULL, &errors[i]);
        if (c->nrows == 0)
            continue; /* errors[i] says why */
        c->took[0] = false;
        char rowerr[512];
        o = run_insert(c, c->conn, records[i].topic, records[i].partition, 0, 1, rowerr,
                       sizeof(rowerr));
        if (o == PG_ROW) {
            errors[i] = sc_xstrdup(rowerr);
            o = PG_OK;
        } else if (o == PG_OK && c->returning && !c->took[0]) {
            errors[i] = sc_xstrdup("duplicate key: a row with this key already holds another "
                                   "record (mode insert)");
        } else if (o == PG_OK) {
            ok[i] = true;
        } else {
            snprintf(err, errsize, "%s", rowerr);
        }
    }
    own_conn_check(c);
    if (o != PG_OK)
        return result_of(o);
    return SC_SINK_OK;
}

/* Transactional by default (no dsn: rows and checkpoint in one transaction); pg_create()
 * clears the flag for a table in another database. */
const struct sc_sink_class sink_postgres_class = {
    .conf = {.name = "postgres", .table = &pg_conf_table},
    .check_config = pg_check_config,
    .check_online = pg_check_online,
    .flags = SC_SINK_F_TRANSACTIONAL,
    .create = pg_create,
    .destroy = pg_destroy,
    .part_open = pg_part_open,
    .part_recover = pg_part_recover,
    .part_close = pg_part_close,
    .write = pg_write,
    .write_group = pg_write_group,
    .redrive = pg_redrive,
};
