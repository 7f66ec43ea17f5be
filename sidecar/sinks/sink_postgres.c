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
 *     rows of the batch                  (one INSERT ... SELECT FROM unnest)
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
 * One round trip.  Normally all five statements go out at once as one
 * libpq pipeline (write_pipelined()), with a Sync after the advance and
 * one after COMMIT, and the results come back together.  In extended
 * protocol the server runs each statement as it arrives and skips
 * everything after a failure up to the next Sync, leaving the transaction
 * failed; the queued advance fails (rather than matching no row) when it
 * does not apply, so COMMIT commits only when the rows and the advance both
 * succeeded, and answers ROLLBACK otherwise.  The Sync before COMMIT makes
 * a process that stalls there (SIGSTOP, a frozen VM) look idle in its
 * transaction to the server, which ends the session after
 * idle_in_transaction_session_timeout (the lease TTL, set by the worker)
 * and so frees the checkpoint row the next owner's lease needs.
 * When the connection drops once COMMIT may have reached the server, the
 * worker reads the checkpoint back (as for a lost COMMIT answer).  When a
 * statement failed, the batch is rolled back and takes the usual way,
 * statement by statement: rows split on a bad row, then hook->commit(),
 * which tells a fence from a moved checkpoint.  A batch with dead letters
 * found while encoding it takes that way at once.
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
 * Fast path.  Rows go in as INSERT ... SELECT FROM unnest($arrays), whose
 * arrays are binary parameters (no quoting, no parsing of numbers).  With
 * the default columns a conflict can only be the same record, so the
 * pipelined INSERT has no ON CONFLICT (STMT_FAST): it only succeeds when no
 * row exists, and a key conflict (a replay, or a partition reset) makes the
 * partition use ON CONFLICT for the next SLOW_BATCHES batches.  Without the
 * hook's queue() (and in another database) the default columns go in by
 * binary COPY instead, with the same fallback; COPY cannot be pipelined.
 * Side by side with psql \copy of the same rows into the same table (one
 * partition, one connection): COPY at 1000 records per batch 0.7x, at 2000
 * 0.85x, at 5000 1.0x; ON CONFLICT about 0.5x.  The gap at small batches is
 * the fixed cost of a transaction per batch, which I3 requires.
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
 * partition stops in the error state with the server's message).
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

#include "base/sc_failpoint.h"
#include "base/sc_log.h"
#include "db/sc_pg.h"
#include "sinks/sc_sink.h"

/* After a key conflict on COPY, batches of the partition skip COPY for this long. */
#define SLOW_BATCHES 64
/* Microseconds between the Unix epoch and PostgreSQL's (2000-01-01). */
#define PG_EPOCH_US 946684800000000LL
/* Built-in type OIDs (fixed in every PostgreSQL). */
#define OID_BYTEA       17
#define OID_INT8        20
#define OID_INT2        21
#define OID_INT4        23
#define OID_TEXT        25
#define OID_JSON        114
#define OID_VARCHAR     1043
#define OID_TIMESTAMPTZ 1184
#define OID_NUMERIC     1700
#define OID_JSONB       3802
#define OID_TEXT_ARRAY  1009

/* Parameters of the insert: topic, partition, one array per field, one path per column. */
#define MAX_PARAMS 128

#define STMT_INSERT "sink_pg_insert"
/* Default columns: the same INSERT without ON CONFLICT (a conflict fails it, as it does COPY). */
#define STMT_FAST "sink_pg_fast"

/* Where a column's value comes from. */
enum pg_src {
    SRC_TOPIC,
    SRC_PARTITION,
    SRC_OFFSET,
    SRC_KEY,
    SRC_VALUE,
    SRC_HEADERS,
    SRC_TIMESTAMP,
    SRC_PATH,
};

/* The per-record fields sent to the server (only those some column uses). */
enum pg_field {
    F_OFF,       /* int8: always sent */
    F_KEY_TEXT,  /* key as text (string, or {"base64":..} text) */
    F_KEY_BYTEA, /* key bytes */
    F_KEY_JSON,  /* key as the envelope has it */
    F_VAL_TEXT,
    F_VAL_BYTEA,
    F_VAL_JSON,
    F_HEADERS, /* the envelope's headers object */
    F_DOC,     /* the value parsed as JSON, for "$.path" columns */
    F_TS,      /* timestamptz, NULL when the record has none */
    NFIELDS,
};

static const struct {
    const char *alias; /* column of the unnest() row */
    const char *type;  /* SQL array element type */
    uint32_t oid;      /* element type */
    uint32_t array_oid;
} fields[NFIELDS] = {
    {"o", "int8", OID_INT8, 1016},    {"kt", "text", OID_TEXT, 1009},
    {"kb", "bytea", OID_BYTEA, 1001}, {"kj", "jsonb", OID_JSONB, 3807},
    {"vt", "text", OID_TEXT, 1009},   {"vb", "bytea", OID_BYTEA, 1001},
    {"vj", "jsonb", OID_JSONB, 3807}, {"h", "jsonb", OID_JSONB, 3807},
    {"d", "jsonb", OID_JSONB, 3807},  {"ts", "timestamptz", OID_TIMESTAMPTZ, 1185},
};

struct pg_col {
    char *name;   /* as configured */
    char *name_q; /* quoted */
    enum pg_src src;
    char *path; /* SRC_PATH: text[] literal for #> / #>> ("{a,b,0}") */
    int param;  /* SRC_PATH: its parameter number in the insert */
    bool key;
    /* From the catalog (setup). */
    char *type;        /* format_type(): a type name ready for SQL */
    uint32_t base_oid; /* the type, or a domain's base type */
    enum pg_field field;
};

struct pg_row {
    size_t rec; /* index into the batch */
    int64_t offset;
    size_t off[NFIELDS];
    int32_t len[NFIELDS]; /* -1 = NULL */
};

enum pg_outcome {
    PG_OK,
    PG_ROW,   /* a row's data or a constraint: split the batch */
    PG_RETRY, /* transient: write the batch again later */
    PG_FATAL, /* the table or the config: the partition goes to the error state */
};

struct pg_ctx {
    const struct sc_sink_postgres_conf *conf;
    enum sc_value_format vf;
    bool same_db;  /* rows commit with the checkpoint */
    bool defaults; /* the default columns */
    const char *dsn;
    char app_name[96];
    int connect_timeout_ms;
    char *table_q;  /* "schema"."name" or "name" */
    char *schema_q; /* NULL when the table name is unqualified */
    char *schema;
    struct pg_col *cols;
    size_t ncols;
    int pos_off, pos_part, pos_topic; /* columns holding the source position, or -1 */
    bool guard;                       /* the source position is in the row */

    /* Built by setup() from the catalog. */
    bool ready;
    bool used[NFIELDS];
    char *insert_sql;
    int nparams; /* of insert_sql: topic, partition, used fields, paths */
    Oid ptypes[MAX_PARAMS];
    char *copy_sql;
    char *fast_sql; /* default columns: insert_sql without ON CONFLICT */
    bool returning; /* insert mode, other database: duplicates found by RETURNING */

    /* Other database: batches; same database: redrive only. */
    PGconn *conn;
    struct sc_backoff backoff;
    int64_t next_connect_ms;
    bool logged_down;
    /* Where STMT_INSERT is prepared (a pointer alone could be reused by malloc). */
    PGconn *prep_conn;
    int prep_pid;

    /* Per batch, reused. */
    struct sc_buf data; /* encoded fields of the rows */
    struct pg_row *rows;
    size_t nrows, rows_cap;
    bool *took; /* returning: rows the statement reported */
    struct sc_buf copy;
    struct sc_buf arr[NFIELDS];
};

struct sc_sink_part {
    int slow_batches; /* > 0: skip COPY (a conflict was seen recently) */
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
static const char *sqlstate(const PGresult *res)
{
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

static bool result_ok(const PGresult *res)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

/*
 * Classifies a failed result and writes "message (SQLSTATE x)" into err.
 * Row errors are the ones a single record can cause (see NOTES).
 */
static enum pg_outcome classify(PGconn *conn, const PGresult *res, char *err, size_t errsize)
{
    char msg[400];
    sc_pg_errmsg(conn, res, msg, sizeof(msg));
    const char *state = sqlstate(res);
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
static enum pg_outcome exec_simple(PGconn *conn, const char *sql, char *err, size_t errsize)
{
    PGresult *res = PQexec(conn, sql);
    enum pg_outcome o = result_ok(res) ? PG_OK : classify(conn, res, err, errsize);
    PQclear(res);
    return o;
}

/* ROLLBACK after a failure: the error of the failure stays in err. */
static void rollback(PGconn *conn)
{
    PGresult *res = PQexec(conn, "ROLLBACK");
    PQclear(res);
}

/* ---- configuration ------------------------------------------------------ */

static const struct {
    const char *name;
    enum pg_src src;
} sources[] = {
    {"$topic", SRC_TOPIC},         {"$partition", SRC_PARTITION},
    {"$offset", SRC_OFFSET},       {"$key", SRC_KEY},
    {"$value", SRC_VALUE},         {"$headers", SRC_HEADERS},
    {"$timestamp", SRC_TIMESTAMP},
};

/* "$.a.b[0]" -> "{\"a\",\"b\",\"0\"}" (a text[] literal; the config loader checked the syntax). */
static char *path_literal(const char *src)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    int rc = sc_buf_putc(&b, '{');
    bool first = true;
    for (const char *p = src + 1; *p && rc == 0;) {
        size_t n;
        if (*p == '.') {
            p++;
            n = strcspn(p, ".[");
        } else { /* '[' digits ']' */
            p++;
            n = strcspn(p, "]");
        }
        if (!first)
            rc |= sc_buf_putc(&b, ',');
        first = false;
        rc |= sc_buf_putc(&b, '"');
        for (size_t i = 0; i < n && rc == 0; i++) {
            if (p[i] == '"' || p[i] == '\\')
                rc |= sc_buf_putc(&b, '\\');
            rc |= sc_buf_putc(&b, p[i]);
        }
        rc |= sc_buf_putc(&b, '"');
        p += n;
        if (*p == ']')
            p++;
    }
    rc |= sc_buf_putc(&b, '}');
    rc |= sc_buf_putc(&b, '\0');
    if (rc != 0)
        abort(); /* the buffer has no maximum */
    return b.data;
}

static void add_col(struct pg_ctx *c, const char *name, const char *source, bool key)
{
    struct pg_col *col = &c->cols[c->ncols++];
    col->name = sc_xstrdup(name);
    col->name_q = sc_pg_quote_ident(name);
    col->key = key;
    col->src = SRC_PATH;
    for (size_t i = 0; i < SC_ARRAY_LEN(sources); i++)
        if (strcmp(source, sources[i].name) == 0)
            col->src = sources[i].src;
    if (col->src == SRC_PATH)
        col->path = path_literal(source);
}

static bool pipeline_multi_topic(const struct sc_pipeline_conf *pc)
{
    if (pc->topics.count != 1)
        return true;
    return pc->topics.items[0][0] == '^'; /* a pattern may match several */
}

/* The column plan from the config; checks what only the sink knows. */
static int plan_columns(struct pg_ctx *c, const struct sc_pipeline_conf *pc, char *err,
                        size_t errsize)
{
    const struct sc_sink_postgres_conf *conf = c->conf;
    c->pos_off = c->pos_part = c->pos_topic = -1;
    if (conf->columns.count == 0) {
        static const char *const defs[][2] = {
            {"topic", "$topic"},  {"partition", "$partition"}, {"offset", "$offset"},
            {"key", "$key"},      {"value", "$value"},         {"headers", "$headers"},
            {"ts", "$timestamp"},
        };
        c->cols = sc_xcalloc(SC_ARRAY_LEN(defs), sizeof(*c->cols));
        for (size_t i = 0; i < SC_ARRAY_LEN(defs); i++)
            add_col(c, defs[i][0], defs[i][1], i < 3);
        c->defaults = true;
    } else {
        if (conf->columns.count > MAX_PARAMS - 2 - NFIELDS) {
            snprintf(err, errsize, "the postgres sink maps at most %d columns",
                     MAX_PARAMS - 2 - NFIELDS);
            return -1;
        }
        c->cols = sc_xcalloc(conf->columns.count, sizeof(*c->cols));
        for (size_t i = 0; i < conf->columns.count; i++) {
            bool key = false;
            for (size_t k = 0; k < conf->key_columns.count; k++)
                key |= strcmp(conf->key_columns.items[k], conf->columns.items[i].key) == 0;
            add_col(c, conf->columns.items[i].key, conf->columns.items[i].value, key);
        }
    }
    for (size_t i = 0; i < c->ncols; i++) {
        int *pos = c->cols[i].src == SRC_OFFSET      ? &c->pos_off
                   : c->cols[i].src == SRC_PARTITION ? &c->pos_part
                   : c->cols[i].src == SRC_TOPIC     ? &c->pos_topic
                                                     : NULL;
        if (pos && *pos < 0)
            *pos = (int)i;
    }
    c->guard = !c->defaults && c->pos_off >= 0 && c->pos_part >= 0 &&
               (c->pos_topic >= 0 || !pipeline_multi_topic(pc));
    if (!c->same_db && !c->defaults && conf->mode != SC_PG_INSERT_IGNORE && !c->guard) {
        snprintf(err, errsize,
                 "pipeline \"%s\": the postgres sink writes to another database (dsn is set), so "
                 "a batch can be written again after a crash; with mode \"%s\" and custom "
                 "columns it must know which record wrote a row: map columns to \"$partition\" "
                 "and \"$offset\"%s (e.g. \"src_partition\": \"$partition\", \"src_offset\": "
                 "\"$offset\"), or use mode \"insert_ignore\"",
                 pc->name, conf->mode == SC_PG_UPSERT ? "upsert" : "insert",
                 pipeline_multi_topic(pc) ? " and \"$topic\" (the pipeline reads several topics)"
                                          : "");
        return -1;
    }
    c->returning = !c->same_db && !c->defaults && conf->mode == SC_PG_INSERT;
    return 0;
}

static int split_table(struct pg_ctx *c)
{
    const char *t = c->conf->table;
    const char *dot = strchr(t, '.');
    char *name;
    if (dot) {
        c->schema = sc_xasprintf("%.*s", (int)(dot - t), t);
        c->schema_q = sc_pg_quote_ident(c->schema);
        name = sc_pg_quote_ident(dot + 1);
        c->table_q = sc_xasprintf("%s.%s", c->schema_q, name);
    } else {
        name = sc_pg_quote_ident(t);
        c->table_q = sc_xstrdup(name);
    }
    free(name);
    return 0;
}

static void ctx_free(struct pg_ctx *c)
{
    if (!c)
        return;
    if (c->conn)
        PQfinish(c->conn);
    for (size_t i = 0; i < c->ncols; i++) {
        free(c->cols[i].name);
        free(c->cols[i].name_q);
        free(c->cols[i].path);
        free(c->cols[i].type);
    }
    free(c->cols);
    free(c->table_q);
    free(c->schema_q);
    free(c->schema);
    free(c->insert_sql);
    free(c->copy_sql);
    free(c->fast_sql);
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
    c->conf = &sink->pc->sink.postgres;
    c->vf = sink->pc->value_format;
    c->same_db = c->conf->dsn == NULL;
    c->dsn = c->same_db ? sink->cfg->postgres.dsn : c->conf->dsn;
    c->connect_timeout_ms = sink->cfg->postgres.connect_timeout_ms;
    snprintf(c->app_name, sizeof(c->app_name), "kafka-sidecar/%s/sink-%d", sink->pc->name,
             sink->worker_id);
    sc_backoff_init(&c->backoff, 100, 5000);
    sc_buf_init(&c->data, 0);
    sc_buf_init(&c->copy, 0);
    for (int f = 0; f < NFIELDS; f++)
        sc_buf_init(&c->arr[f], 0);
    if (split_table(c) != 0 || plan_columns(c, sink->pc, err, errsize) != 0)
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

/* ---- table setup (create_table, catalog) -------------------------------- */

static const char *type_for_create(const struct pg_ctx *c, const struct pg_col *col)
{
    switch (col->src) {
    case SRC_TOPIC:
        return "text";
    case SRC_PARTITION:
        return "int";
    case SRC_OFFSET:
        return "bigint";
    case SRC_KEY:
        return c->defaults && c->conf->key_type == SC_PG_BYTEA ? "bytea" : "text";
    case SRC_VALUE:
        if (!c->defaults)
            return "jsonb";
        return c->conf->value_type == SC_PG_BYTEA  ? "bytea"
               : c->conf->value_type == SC_PG_TEXT ? "text"
                                                   : "jsonb";
    case SRC_HEADERS:
        return "jsonb";
    case SRC_TIMESTAMP:
        return "timestamptz";
    case SRC_PATH:
        return "text";
    }
    return "text";
}

static char *create_table_sql(const struct pg_ctx *c)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    int rc = sc_buf_printf(&b, "CREATE TABLE IF NOT EXISTS %s (", c->table_q);
    for (size_t i = 0; i < c->ncols; i++) {
        const struct pg_col *col = &c->cols[i];
        rc |= sc_buf_printf(&b, "%s %s%s, ", col->name_q, type_for_create(c, col),
                            col->key ? " NOT NULL" : "");
    }
    rc |= sc_buf_printf(&b, "PRIMARY KEY (");
    bool first = true;
    for (size_t i = 0; i < c->ncols; i++)
        if (c->cols[i].key) {
            rc |= sc_buf_printf(&b, "%s%s", first ? "" : ", ", c->cols[i].name_q);
            first = false;
        }
    rc |= sc_buf_printf(&b, "))");
    rc |= sc_buf_putc(&b, '\0');
    if (rc != 0)
        abort();
    return b.data;
}

/* 1 if the table exists, 0 if not, -1 on error (err set). */
static int table_exists(struct pg_ctx *c, PGconn *conn, enum pg_outcome *o, char *err,
                        size_t errsize)
{
    const char *p[1] = {c->table_q};
    PGresult *res =
        PQexecParams(conn, "SELECT to_regclass($1) IS NOT NULL", 1, NULL, p, NULL, NULL, 0);
    int r = -1;
    if (!result_ok(res))
        *o = classify(conn, res, err, errsize);
    else
        r = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return r;
}

/*
 * Creates the table (and its schema) unless it exists, under an advisory
 * lock so that workers and instances starting together do not race on the
 * catalog; each existence check runs first, so a user without CREATE rights
 * can still use a table that exists.
 */
static enum pg_outcome create_table(struct pg_ctx *c, PGconn *conn, char *err, size_t errsize)
{
    enum pg_outcome o = PG_OK;
    char *ddl = NULL;
    int exists = table_exists(c, conn, &o, err, errsize);
    if (exists != 0)
        return exists < 0 ? o : PG_OK;
    if ((o = exec_simple(conn, "BEGIN", err, errsize)) != PG_OK)
        return o;
    const char *p[2] = {c->table_q, c->schema ? c->schema : ""};
    PGresult *res = PQexecParams(conn,
                                 "SELECT pg_advisory_xact_lock(hashtext('kafka-sidecar sink ddl'),"
                                 " hashtext($1)), to_regclass($1) IS NOT NULL,"
                                 " $2 = '' OR to_regnamespace(quote_ident($2)) IS NOT NULL",
                                 2, NULL, p, NULL, NULL, 0);
    if (!result_ok(res)) {
        o = classify(conn, res, err, errsize);
        PQclear(res);
        goto out;
    }
    bool table = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
    bool schema = strcmp(PQgetvalue(res, 0, 2), "t") == 0;
    PQclear(res);
    if (!table) {
        if (!schema) {
            char *sql = sc_xasprintf("CREATE SCHEMA IF NOT EXISTS %s", c->schema_q);
            o = exec_simple(conn, sql, err, errsize);
            free(sql);
            if (o != PG_OK)
                goto out;
        }
        ddl = create_table_sql(c);
        if ((o = exec_simple(conn, ddl, err, errsize)) != PG_OK)
            goto out;
        sc_info(NULL, "postgres sink: created table %s", c->table_q);
    }
    o = exec_simple(conn, "COMMIT", err, errsize);
out:
    if (o != PG_OK) {
        char why[400];
        snprintf(why, sizeof(why), "%s", err);
        snprintf(err, errsize, "could not create table %s (create_table is true): %s", c->table_q,
                 why);
        rollback(conn);
    }
    free(ddl);
    /* A duplicate in the catalog: someone else's DDL won a race; the next try sees the table. */
    return o == PG_ROW ? PG_RETRY : o;
}

static bool is_json(uint32_t oid)
{
    return oid == OID_JSON || oid == OID_JSONB;
}

static bool is_number(uint32_t oid)
{
    return oid == OID_INT2 || oid == OID_INT4 || oid == OID_INT8 || oid == OID_NUMERIC;
}

/* Which field feeds a column of this type. */
static enum pg_field field_of(const struct pg_col *col)
{
    switch (col->src) {
    case SRC_KEY:
        return col->base_oid == OID_BYTEA ? F_KEY_BYTEA
               : is_json(col->base_oid)   ? F_KEY_JSON
                                          : F_KEY_TEXT;
    case SRC_VALUE:
        return col->base_oid == OID_BYTEA ? F_VAL_BYTEA
               : is_json(col->base_oid)   ? F_VAL_JSON
                                          : F_VAL_TEXT;
    case SRC_HEADERS:
        return F_HEADERS;
    case SRC_TIMESTAMP:
        return F_TS;
    case SRC_PATH:
        return F_DOC;
    default:
        return F_OFF;
    }
}

/*
 * The default columns go to COPY in binary, so their types must be exactly
 * the ones the binary encodings are for; the config's key_type and
 * value_type say which.
 */
static int check_default_types(struct pg_ctx *c, char *err, size_t errsize)
{
    for (size_t i = 0; i < c->ncols; i++) {
        const struct pg_col *col = &c->cols[i];
        uint32_t want = 0;
        const char *hint = "";
        switch (col->src) {
        case SRC_TOPIC:
            want = col->base_oid == OID_VARCHAR ? OID_VARCHAR : OID_TEXT;
            break;
        case SRC_PARTITION:
            want = OID_INT4;
            break;
        case SRC_OFFSET:
            want = OID_INT8;
            break;
        case SRC_KEY:
            want = c->conf->key_type == SC_PG_BYTEA ? OID_BYTEA : OID_TEXT;
            hint = " (see key_type)";
            break;
        case SRC_VALUE:
            want = c->conf->value_type == SC_PG_BYTEA  ? OID_BYTEA
                   : c->conf->value_type == SC_PG_TEXT ? OID_TEXT
                                                       : OID_JSONB;
            hint = " (see value_type)";
            break;
        case SRC_HEADERS:
            want = OID_JSONB;
            break;
        case SRC_TIMESTAMP:
            want = OID_TIMESTAMPTZ;
            break;
        case SRC_PATH:
            break;
        }
        if (col->base_oid != want) {
            snprintf(err, errsize,
                     "column %s of table %s has type %s, but the postgres sink's default "
                     "columns need %s%s: alter the column or let the sink create the table",
                     col->name_q, c->table_q, col->type,
                     want == OID_TEXT    ? "text"
                     : want == OID_INT4  ? "integer"
                     : want == OID_INT8  ? "bigint"
                     : want == OID_BYTEA ? "bytea"
                     : want == OID_JSONB ? "jsonb"
                                         : "timestamp with time zone",
                     hint);
            return -1;
        }
    }
    return 0;
}

/* Reads the configured columns' types; checks the key has a unique index to conflict on. */
static enum pg_outcome read_catalog(struct pg_ctx *c, PGconn *conn, char *err, size_t errsize)
{
    enum pg_outcome o = PG_FATAL;
    const char *p[2] = {c->table_q, NULL};
    PGresult *res =
        PQexecParams(conn,
                     "SELECT a.attname, format_type(a.atttypid, a.atttypmod),"
                     " CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END"
                     " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
                     " WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                     1, NULL, p, NULL, NULL, 0);
    if (!result_ok(res)) {
        o = classify(conn, res, err, errsize);
        goto out;
    }
    for (size_t i = 0; i < c->ncols; i++) {
        struct pg_col *col = &c->cols[i];
        free(col->type);
        col->type = NULL;
        for (int r = 0; r < PQntuples(res); r++)
            if (strcmp(PQgetvalue(res, r, 0), col->name) == 0) {
                col->type = sc_xstrdup(PQgetvalue(res, r, 1));
                col->base_oid = (uint32_t)strtoul(PQgetvalue(res, r, 2), NULL, 10);
            }
        if (!col->type) {
            snprintf(err, errsize,
                     "table %s has no column %s (configured in the postgres sink's %s): add "
                     "the column, or drop the table and let create_table make it",
                     c->table_q, col->name_q, c->defaults ? "default columns" : "columns");
            goto out;
        }
        col->field = field_of(col);
    }
    PQclear(res);
    res = NULL;
    if (c->defaults && check_default_types(c, err, errsize) != 0)
        goto out;

    /* ON CONFLICT (keys) needs a unique, immediate, non-partial index on exactly those. */
    struct sc_buf keys;
    sc_buf_init(&keys, 0);
    int rc = sc_buf_putc(&keys, '{');
    bool first = true;
    for (size_t i = 0; i < c->ncols; i++)
        if (c->cols[i].key) {
            rc |= sc_buf_printf(&keys, "%s\"%s\"", first ? "" : ",", c->cols[i].name);
            first = false;
        }
    rc |= sc_buf_putc(&keys, '}');
    rc |= sc_buf_putc(&keys, '\0');
    if (rc != 0)
        abort();
    p[1] = keys.data;
    res = PQexecParams(
        conn,
        "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1::regclass"
        " AND i.indisunique AND i.indisvalid AND i.indimmediate AND i.indpred IS NULL"
        " AND i.indexprs IS NULL AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text)"
        "  FROM pg_attribute a WHERE a.attrelid = i.indrelid"
        "  AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1]))"
        " = (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) k))",
        2, NULL, p, NULL, NULL, 0);
    sc_buf_free(&keys);
    if (!result_ok(res)) {
        o = classify(conn, res, err, errsize);
        goto out;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        struct sc_buf names;
        sc_buf_init(&names, 0);
        first = true;
        for (size_t i = 0; i < c->ncols; i++)
            if (c->cols[i].key) {
                (void)!sc_buf_printf(&names, "%s%s", first ? "" : ", ", c->cols[i].name_q);
                first = false;
            }
        (void)!sc_buf_putc(&names, '\0');
        snprintf(err, errsize,
                 "table %s has no unique index on exactly (%s), which the postgres sink needs "
                 "to recognise a record written before: add PRIMARY KEY (%s) or a unique "
                 "index (not deferrable, not partial)",
                 c->table_q, names.data, names.data);
        sc_buf_free(&names);
        goto out;
    }
    o = PG_OK;
out:
    PQclear(res);
    return o;
}

/* The expression of one column over the unnest() row r (params: $1 topic, $2 partition). */
static int col_expr(struct sc_buf *b, const struct pg_col *col, int path_param)
{
    switch (col->src) {
    case SRC_TOPIC:
        return sc_buf_printf(b, "CAST($1::text AS %s)", col->type);
    case SRC_PARTITION:
        return sc_buf_printf(b, "CAST($2::int4 AS %s)", col->type);
    case SRC_OFFSET:
        return sc_buf_printf(b, "CAST(r.o AS %s)", col->type);
    case SRC_KEY:
    case SRC_VALUE:
    case SRC_HEADERS:
        return sc_buf_printf(b, "CAST(r.%s AS %s)", fields[col->field].alias, col->type);
    case SRC_TIMESTAMP:
        if (is_number(col->base_oid)) /* epoch milliseconds, as in the envelope */
            return sc_buf_printf(b, "CAST(extract(epoch FROM r.ts) * 1000 AS %s)", col->type);
        return sc_buf_printf(b, "CAST(r.ts AS %s)", col->type);
    case SRC_PATH:
        return sc_buf_printf(b, "CAST(r.d %s $%d::text[] AS %s)",
                             is_json(col->base_oid) ? "#>" : "#>>", path_param, col->type);
    }
    return -1;
}

/*
 * The conflict clause (see NOTES for the modes).  The offset guard lets an
 * update through when the stored row has no known position, comes from
 * another partition (no order exists between partitions), or from the same
 * or an older offset of this one.
 */
static int build_conflict(const struct pg_ctx *c, struct sc_buf *b)
{
    const struct sc_sink_postgres_conf *conf = c->conf;
    int rc = sc_buf_printf(b, " ON CONFLICT (");
    bool first = true, nonkey = false;
    for (size_t i = 0; i < c->ncols; i++) {
        if (c->cols[i].key) {
            rc |= sc_buf_printf(b, "%s%s", first ? "" : ", ", c->cols[i].name_q);
            first = false;
        }
        nonkey |= !c->cols[i].key;
    }
    rc |= sc_buf_printf(b, ")");
    bool update = conf->mode == SC_PG_UPSERT || c->returning;
    if (!update || (!nonkey && !c->returning))
        return rc | sc_buf_printf(b, " DO NOTHING");
    rc |= sc_buf_printf(b, " DO UPDATE SET ");
    first = true;
    for (size_t i = 0; i < c->ncols; i++) {
        /* returning with only key columns: a no-op update, so RETURNING reports the row */
        if (c->cols[i].key && (nonkey || !first))
            continue;
        rc |= sc_buf_printf(b, "%s%s = EXCLUDED.%s", first ? "" : ", ", c->cols[i].name_q,
                            c->cols[i].name_q);
        first = false;
    }
    const char *off = c->pos_off >= 0 ? c->cols[c->pos_off].name_q : NULL;
    const char *part = c->pos_part >= 0 ? c->cols[c->pos_part].name_q : NULL;
    const char *topic = c->pos_topic >= 0 ? c->cols[c->pos_topic].name_q : NULL;
    if (c->returning) {
        /* insert: only the same source record may touch the row (its own replay) */
        rc |= sc_buf_printf(b, " WHERE t.%s = EXCLUDED.%s AND t.%s = EXCLUDED.%s", off, off, part,
                            part);
        if (topic)
            rc |= sc_buf_printf(b, " AND t.%s = EXCLUDED.%s", topic, topic);
        return rc | sc_buf_printf(b, " RETURNING CAST(t.%s AS text)", off);
    }
    if (c->guard) {
        rc |= sc_buf_printf(b, " WHERE t.%s IS NULL OR ", off);
        if (topic)
            rc |= sc_buf_printf(b, "(t.%s, t.%s) IS DISTINCT FROM (EXCLUDED.%s, EXCLUDED.%s)",
                                topic, part, topic, part);
        else
            rc |= sc_buf_printf(b, "t.%s IS DISTINCT FROM EXCLUDED.%s", part, part);
        rc |= sc_buf_printf(b, " OR CAST(t.%s AS bigint) <= CAST(EXCLUDED.%s AS bigint)", off, off);
    }
    return rc;
}

/* "SELECT <column expressions> AS "cN"[, r.o AS "o"] FROM (SELECT unnest(<array>) AS <field>, ...)
 * AS r" */
static int append_rows_select(struct sc_buf *b, const struct pg_ctx *c, const int *fparam,
                              bool with_o)
{
    int rc = sc_buf_printf(b, "SELECT ");
    for (size_t i = 0; i < c->ncols; i++)
        rc |= sc_buf_printf(b, "%s", i ? ", " : "") | col_expr(b, &c->cols[i], c->cols[i].param) |
              sc_buf_printf(b, " AS \"c%zu\"", i);
    if (with_o)
        rc |= sc_buf_printf(b, ", r.o AS \"o\"");
    /* unnest() in a select list runs the arrays in step without materialising them first,
     * as unnest() in FROM does: about a quarter less server time per row. */
    rc |= sc_buf_printf(b, " FROM (SELECT ");
    bool first = true;
    for (int f = 0; f < NFIELDS; f++)
        if (c->used[f]) {
            rc |= sc_buf_printf(b, "%sunnest($%d::%s[]) AS %s", first ? "" : ", ", fparam[f],
                                fields[f].type, fields[f].alias);
            first = false;
        }
    return rc | sc_buf_printf(b, ") AS r");
}

/*
 * INSERT INTO t (cols) SELECT ... FROM (SELECT unnest($3::int8[]) AS o, ...) AS r
 * with DISTINCT ON when two records of a batch can share a key.  Parameters:
 * $1 topic, $2 partition, one array per used field, one text[] per "$." column.
 */
static void build_sql(struct pg_ctx *c)
{
    const struct sc_sink_postgres_conf *conf = c->conf;
    memset(c->used, 0, sizeof(c->used));
    c->used[F_OFF] = true;
    for (size_t i = 0; i < c->ncols; i++)
        c->used[c->cols[i].field] = true;
    int param = 3;
    int fparam[NFIELDS];
    for (int f = 0; f < NFIELDS; f++)
        fparam[f] = c->used[f] ? param++ : 0;
    for (size_t i = 0; i < c->ncols; i++)
        c->cols[i].param = c->cols[i].src == SRC_PATH ? param++ : 0;
    c->nparams = param - 1;
    /* Types given up front: a statement may not use $1 or $2 at all. */
    c->ptypes[0] = OID_TEXT;
    c->ptypes[1] = OID_INT4;
    for (int f = 0; f < NFIELDS; f++)
        if (c->used[f])
            c->ptypes[fparam[f] - 1] = fields[f].array_oid;
    for (size_t i = 0; i < c->ncols; i++)
        if (c->cols[i].param)
            c->ptypes[c->cols[i].param - 1] = OID_TEXT_ARRAY;

    struct sc_buf b;
    sc_buf_init(&b, 0);
    int rc = sc_buf_printf(&b, "INSERT INTO %s AS t (", c->table_q);
    for (size_t i = 0; i < c->ncols; i++)
        rc |= sc_buf_printf(&b, "%s%s", i ? ", " : "", c->cols[i].name_q);
    rc |= sc_buf_printf(&b, ") SELECT ");
    for (size_t i = 0; i < c->ncols; i++)
        rc |= sc_buf_printf(&b, "%s\"c%zu\"", i ? ", " : "", i);
    bool dedupe = !c->defaults && (conf->mode != SC_PG_INSERT || c->returning);
    if (dedupe) {
        /* Rows with a NULL in the key never conflict: the CASE keeps them apart. */
        struct sc_buf keys, nulls;
        sc_buf_init(&keys, 0);
        sc_buf_init(&nulls, 0);
        bool first = true;
        for (size_t i = 0; i < c->ncols; i++)
            if (c->cols[i].key) {
                rc |= sc_buf_printf(&keys, "%s\"c%zu\"", first ? "" : ", ", i);
                rc |= sc_buf_printf(&nulls, "%s\"c%zu\" IS NULL", first ? "" : " OR ", i);
                first = false;
            }
        rc |= sc_buf_putc(&keys, '\0') | sc_buf_putc(&nulls, '\0');
        rc |= sc_buf_printf(&b,
                            " FROM (SELECT DISTINCT ON (%s, CASE WHEN %s THEN \"o\" END) *"
                            " FROM (",
                            keys.data, nulls.data);
        rc |= append_rows_select(&b, c, fparam, true);
        rc |= sc_buf_printf(&b, ") x ORDER BY %s, CASE WHEN %s THEN \"o\" END, \"o\" %s) s",
                            keys.data, nulls.data, conf->mode == SC_PG_UPSERT ? "DESC" : "ASC");
        sc_buf_free(&keys);
        sc_buf_free(&nulls);
    } else {
        rc |= sc_buf_printf(&b, " FROM (");
        rc |= append_rows_select(&b, c, fparam, false);
        rc |= sc_buf_printf(&b, ") s");
    }
    free(c->fast_sql);
    c->fast_sql = NULL;
    if (c->defaults && c->same_db) /* the pipelined fast path: a conflict fails it, like COPY */
        c->fast_sql = sc_xasprintf("%.*s", (int)b.len, b.data);
    /* insert with custom columns in the checkpoint database: a conflict is an error */
    bool plain = !c->defaults && conf->mode == SC_PG_INSERT && !c->returning;
    if (!plain)
        rc |= build_conflict(c, &b);
    rc |= sc_buf_putc(&b, '\0');
    if (rc != 0)
        abort();
    free(c->insert_sql);
    c->insert_sql = b.data;

    free(c->copy_sql);
    c->copy_sql = NULL;
    if (c->defaults) {
        struct sc_buf q;
        sc_buf_init(&q, 0);
        rc = sc_buf_printf(&q, "COPY %s (", c->table_q);
        for (size_t i = 0; i < c->ncols; i++)
            rc |= sc_buf_printf(&q, "%s%s", i ? ", " : "", c->cols[i].name_q);
        rc |= sc_buf_printf(&q, ") FROM STDIN (FORMAT binary)") | sc_buf_putc(&q, '\0');
        if (rc != 0)
            abort();
        c->copy_sql = q.data;
    }
}

static enum pg_outcome prepare_insert(struct pg_ctx *c, PGconn *conn, char *err, size_t errsize)
{
    if (c->prep_conn == conn && c->prep_pid == PQbackendPID(conn))
        return PG_OK;
    /* "does not exist" is the normal case */
    PGresult *res = PQexec(conn, "DEALLOCATE " STMT_INSERT);
    PQclear(res);
    if (c->fast_sql) {
        res = PQexec(conn, "DEALLOCATE " STMT_FAST);
        PQclear(res);
    }
    res = PQprepare(conn, STMT_INSERT, c->insert_sql, c->nparams, c->ptypes);
    if (result_ok(res) && c->fast_sql) {
        PQclear(res);
        res = PQprepare(conn, STMT_FAST, c->fast_sql, c->nparams, c->ptypes);
    }
    enum pg_outcome o = PG_OK;
    if (!result_ok(res)) {
        o = classify(conn, res, err, errsize);
        if (o != PG_RETRY) {
            char why[400];
            snprintf(why, sizeof(why), "%s", err);
            snprintf(err, errsize,
                     "the insert into %s does not fit the table: %s (check the column types "
                     "against the sources in \"columns\")",
                     c->table_q, why);
            o = PG_FATAL;
        }
    } else {
        c->prep_conn = conn;
        c->prep_pid = PQbackendPID(conn);
    }
    PQclear(res);
    return o;
}

/*
 * Makes the table ready on conn: creates it if configured, reads the column
 * types, builds and prepares the statements.  PG_FATAL means the table or
 * config is wrong (the message says what to do).
 */
static enum pg_outcome setup(struct pg_ctx *c, PGconn *conn, char *err, size_t errsize)
{
    enum pg_outcome o;
    if (c->conf->create_table) {
        if ((o = create_table(c, conn, err, errsize)) != PG_OK)
            return o;
    } else {
        int exists = table_exists(c, conn, &o, err, errsize);
        if (exists < 0)
            return o;
        if (exists == 0) {
            snprintf(err, errsize,
                     "table %s does not exist and create_table is false: create it (see "
                     "docs/sinks.md, \"PostgreSQL\"), or set \"create_table\": true",
                     c->table_q);
            return PG_FATAL;
        }
    }
    if ((o = read_catalog(c, conn, err, errsize)) != PG_OK)
        return o;
    build_sql(c);
    c->prep_conn = NULL;
    if ((o = prepare_insert(c, conn, err, errsize)) != PG_OK)
        return o;
    c->ready = true;
    return PG_OK;
}

/* ---- encoding the records ---------------------------------------------------- */

/* Text form of a key or value: the bytes when they are UTF-8 without NUL, else {"base64":..}. */
static int append_text_form(struct sc_buf *b, const void *p, size_t len, enum sc_value_format vf)
{
    if (vf != SC_VALUE_BASE64 && sc_utf8_valid(p, len) && !memchr(p, 0, len))
        return sc_buf_append(b, p, len);
    if (sc_buf_append(b, "{\"base64\":\"", 11) < 0 || sc_base64_append(b, p, len) < 0)
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
        const void *p = f == F_KEY_TEXT ? r->key : r->value;
        if (!p)
            return -1;
        rc = append_text_form(b, p, f == F_KEY_TEXT ? r->key_len : r->value_len, c->vf);
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
        rc = sc_buf_putc(b, 1) | sc_envelope_append_key(b, r->key, r->key_len, c->vf);
        break;
    case F_VAL_JSON:
        if (!r->value)
            return -1;
        rc = sc_buf_putc(b, 1) | sc_envelope_append_value(b, r->value, r->value_len, c->vf);
        break;
    case F_HEADERS:
        rc = sc_buf_putc(b, 1) | sc_envelope_append_headers(b, r->headers, r->nheaders);
        break;
    case F_DOC: {
        if (!r->value)
            return -1; /* a tombstone: every path is NULL */
        rc = sc_buf_putc(b, 1);
        int j = rc == 0 ? sc_json_minify_append(b, r->value, r->value_len) : -1;
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
        int rc = put_u32(a, 1) | put_u32(a, nulls) | put_u32(a, fields[f].oid) |
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
    if (!result_ok(res)) {
        o = classify(conn, res, err, errsize);
        if (strcmp(sqlstate(res), "26000") == 0)
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
 * already (with err), so go straight to its halves.  In a transaction each
 * attempt runs under a savepoint, so a failure undoes only itself.
 */
static enum pg_outcome insert_range(struct pg_ctx *c, PGconn *conn, const char *topic,
                                    int32_t partition, size_t lo, size_t hi, bool known_bad,
                                    bool in_tx, struct sc_batch_result *res, char *err,
                                    size_t errsize)
{
    if (lo >= hi)
        return PG_OK;
    if (!known_bad) {
        enum pg_outcome o;
        if (in_tx && (o = exec_simple(conn, "SAVEPOINT sink_rows", err, errsize)) != PG_OK)
            return o == PG_ROW ? PG_FATAL : o;
        o = run_insert(c, conn, topic, partition, lo, hi, err, errsize);
        if (o == PG_OK) {
            if (in_tx &&
                (o = exec_simple(conn, "RELEASE SAVEPOINT sink_rows", err, errsize)) != PG_OK)
                return o == PG_ROW ? PG_FATAL : o;
            return PG_OK;
        }
        if (o != PG_ROW)
            return o;
        char undo_err[256];
        enum pg_outcome u;
        if (in_tx &&
            (u = exec_simple(conn, "ROLLBACK TO SAVEPOINT sink_rows; RELEASE SAVEPOINT sink_rows",
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
    size_t mid = lo + (hi - lo) / 2;
    enum pg_outcome o =
        insert_range(c, conn, topic, partition, lo, mid, false, in_tx, res, err, errsize);
    if (o != PG_OK)
        return o;
    return insert_range(c, conn, topic, partition, mid, hi, false, in_tx, res, err, errsize);
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
                                     false, in_tx, res, err, errsize);
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

/* After copy_start() and encode_rows().  *conflict: a row of the batch is there already. */
static enum pg_outcome copy_rows(struct pg_ctx *c, PGconn *conn, const struct sc_batch *b,
                                 bool *conflict, char *err, size_t errsize)
{
    *conflict = false;
    enum pg_outcome o = PG_OK;
    PGresult *res;
    bool copy_in = false;
    while (!copy_in && (res = PQgetResult(conn)) != NULL) {
        copy_in = PQresultStatus(res) == PGRES_COPY_IN;
        if (!copy_in && o == PG_OK && !result_ok(res))
            o = classify(conn, res, err, errsize);
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
    int rc = sc_buf_append(q, "PGCOPY\n\377\r\n\0", 11) | put_u32(q, 0) | put_u32(q, 0);
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
    if (rc == 0)
        rc = put_u16(q, 0xFFFF) | copy_flush(conn, q);
    if (rc != 0 || PQputCopyEnd(conn, NULL) != 1) {
        snprintf(err, errsize, "COPY into %s failed: %s", c->table_q, PQerrorMessage(conn));
        while ((res = PQgetResult(conn)) != NULL)
            PQclear(res);
        return PG_RETRY;
    }
    while ((res = PQgetResult(conn)) != NULL) {
        if (o == PG_OK && !result_ok(res)) {
            o = classify(conn, res, err, errsize);
            *conflict = strcmp(sqlstate(res), "23505") == 0; /* unique_violation */
        }
        PQclear(res);
    }
    return o;
}

/* ---- one round trip: the pipelined transaction --------------------------- */

enum pipe_outcome {
    PIPE_COMMITTED,
    PIPE_NOT,     /* nothing committed; the connection is idle, or lost (PG_RETRY) */
    PIPE_UNKNOWN, /* the connection failed once COMMIT could have reached the server */
};

/*
 * Same database, one round trip per batch (see NOTES): BEGIN, SET
 * CONSTRAINTS ALL IMMEDIATE, one INSERT of all rows (stmt), the hook's
 * checkpoint advance, Sync, COMMIT, Sync go out together.  The advance
 * fails when it does not apply, and a failure makes the server skip the
 * rest up to the Sync and leaves the transaction failed, so COMMIT commits
 * all of it or answers ROLLBACK.
 * For PIPE_NOT, *o says what failed first (PG_OK: it could not start;
 * PG_ROW from the rows: split them; PG_RETRY: connection trouble), and
 * *conflict whether that was a key conflict.
 */
static enum pipe_outcome write_pipelined(struct pg_ctx *c, PGconn *conn, const struct sc_batch *b,
                                         const struct sc_commit_hook *hook, const char *stmt,
                                         struct sc_batch_result *res, enum pg_outcome *o,
                                         bool *conflict, char *err, size_t errsize)
{
    enum {
        Q_BEGIN,
        Q_SET,
        Q_ROWS,
        Q_ADVANCE,
        Q_COMMIT,
        NQ
    };
    *o = PG_OK;
    *conflict = false;
    if (PQenterPipelineMode(conn) != 1)
        return PIPE_NOT;
    struct insert_params ip;
    insert_params(c, b->part->topic, b->part->partition, 0, c->nrows, &ip);
    int queued = 0;
    if (PQsendQueryParams(conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1)
        queued++;
    if (queued == Q_SET &&
        PQsendQueryParams(conn, "SET CONSTRAINTS ALL IMMEDIATE", 0, NULL, NULL, NULL, NULL, 0) == 1)
        queued++;
    if (queued == Q_ROWS &&
        PQsendQueryPrepared(conn, stmt, c->nparams, ip.values, ip.lengths, ip.formats, 0) == 1)
        queued++;
    char qerr[256] = "";
    if (queued == Q_ADVANCE && hook->queue(hook->arg, b, res, qerr, sizeof(qerr)) == 0)
        queued++;
    /* A Sync before COMMIT too: should this process stall from here on, the server sees
     * its session idle in the transaction (not in the middle of a request) and ends it
     * after idle_in_transaction_session_timeout, which frees the checkpoint row the next
     * owner needs.  Flushed, but not waited for: still one round trip.  (A stall in the
     * few instructions since the advance was queued, with part of it already flushed,
     * is not covered: the server then waits in the middle of the request.) */
    bool lost = PQpipelineSync(conn) != 1, commit_sent = false;
    int syncs = 1;
    if (queued == Q_COMMIT && !lost) {
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
    for (int i = 0; !lost;) {
        PGresult *r = PQstatus(conn) == CONNECTION_OK && i <= NQ ? PQgetResult(conn) : NULL;
        if (PQstatus(conn) != CONNECTION_OK || i > NQ) {
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
        if (i == Q_COMMIT && result_ok(r) && strcmp(PQcmdStatus(r), "COMMIT") == 0)
            committed = true;
        else if (failed < 0 && st != PGRES_PIPELINE_ABORTED && (!result_ok(r) || i == Q_COMMIT)) {
            failed = i;
            if (result_ok(r)) { /* COMMIT answered ROLLBACK */
                snprintf(err, errsize, "COMMIT answered %s", PQcmdStatus(r));
                *o = PG_RETRY;
            } else {
                *o = classify(conn, r, err, errsize);
            }
            *conflict = i == Q_ROWS && strcmp(sqlstate(r), "23505") == 0;
            if (i == Q_ROWS && strcmp(sqlstate(r), "26000") == 0)
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
    if (failed < 0 || failed == Q_ADVANCE) {
        /* Not all of it could be queued, or the advance did not apply (fenced, or the
         * checkpoint moved): the usual way finds out which, with commit(). */
        sc_debug(NULL, "postgres sink: pipelined batch not committed: %s",
                 failed < 0 ? (qerr[0] ? qerr : PQerrorMessage(conn)) : err);
        *o = PG_OK;
    }
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        rollback(conn);
    return PIPE_NOT;
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
    enum pg_outcome o = setup(c, conn, err, errsize);
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

/* Same database: rows + checkpoint in one transaction on the lent connection. */
static enum sc_sink_result write_same_db(struct pg_ctx *c, struct sc_sink_part *p,
                                         const struct sc_batch *b,
                                         const struct sc_commit_hook *hook,
                                         struct sc_batch_result *res, char *err, size_t errsize)
{
    static const char begin[] = "BEGIN; SET CONSTRAINTS ALL IMMEDIATE; ";
    PGconn *conn = hook->conn;
    enum pg_outcome o;
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        rollback(conn); /* never happens unless a previous call was cut short */
    if (use_utf8(conn, err, errsize) != 0)
        return SC_SINK_RETRY;
    if (!c->ready && (o = setup(c, conn, err, errsize)) != PG_OK)
        return result_of(o);
    if ((o = prepare_insert(c, conn, err, errsize)) != PG_OK)
        return result_of(o);
    bool fast = c->copy_sql && p->slow_batches == 0 && !hook->queue;
    if (fast && (o = copy_start(c, conn, begin, err, errsize)) != PG_OK)
        return result_of(o);
    encode_rows(c, b->records, b->count, res, NULL);
    size_t ndead_before = res->ndead;
    bool pipelined = false; /* tried, and fell back */
    if (hook->queue && res->ndead == 0) {
        bool conflict, plain = c->fast_sql && p->slow_batches == 0;
        if (!plain && p->slow_batches > 0)
            p->slow_batches--;
        res->next_write_offset = b->last_offset + 1;
        enum pipe_outcome po = write_pipelined(c, conn, b, hook, plain ? STMT_FAST : STMT_INSERT,
                                               res, &o, &conflict, err, errsize);
        hook->queued(hook->arg, po == PIPE_COMMITTED ? 1 : po == PIPE_NOT ? 0 : -1);
        if (po == PIPE_COMMITTED)
            return SC_SINK_OK;
        if (po == PIPE_UNKNOWN || o == PG_RETRY)
            return SC_SINK_RETRY;
        if (o == PG_FATAL)
            return SC_SINK_ERROR; /* the table or the config: the usual way fails the same */
        pipelined = true;
        if (conflict)
            p->slow_batches = SLOW_BATCHES;
        /* a bad row (split below), a conflict, or the advance did not apply: the usual way */
    }
    bool done = false;
    if (fast) {
        bool conflict;
        o = copy_rows(c, conn, b, &conflict, err, errsize);
        if (o == PG_OK) {
            done = true;
        } else {
            rollback(conn);
            if (o != PG_ROW)
                return result_of(o);
            /* rows there already (a reset?) or a bad row: this batch takes the INSERT path */
            if (conflict)
                p->slow_batches = SLOW_BATCHES;
        }
    } else if (p->slow_batches > 0 && !pipelined) {
        p->slow_batches--;
    }
    if (!done) {
        if ((o = exec_simple(conn, "BEGIN; SET CONSTRAINTS ALL IMMEDIATE", err, errsize)) != PG_OK)
            return result_of(o);
        o = write_rows(c, conn, b, true, res, err, errsize);
        if (o != PG_OK) {
            rollback(conn);
            /* dead letters found so far are re-found on the retry */
            for (size_t i = ndead_before; i < res->ndead; i++)
                free(res->dead[i].error);
            res->ndead = ndead_before;
            return result_of(o);
        }
    }
    res->next_write_offset = b->last_offset + 1;
    int h = hook->commit(hook->arg, b, res, err, errsize);
    if (h != 0) {
        rollback(conn);
        return h > 0 ? SC_SINK_FENCED : SC_SINK_RETRY;
    }
    sc_failpoint("pg_before_commit");
    if ((o = exec_simple(conn, "COMMIT", err, errsize)) != PG_OK) {
        /* the worker reads the checkpoint back to learn whether it happened */
        rollback(conn);
        return SC_SINK_RETRY;
    }
    return SC_SINK_OK;
}

/* Another database: idempotent rows on the sink's own connection; the worker commits. */
static enum sc_sink_result write_other_db(struct pg_ctx *c, struct sc_sink_part *p,
                                          const struct sc_batch *b, struct sc_batch_result *res,
                                          char *err, size_t errsize)
{
    if (own_conn(c, err, errsize) != 0)
        return SC_SINK_RETRY;
    PGconn *conn = c->conn;
    enum pg_outcome o = c->ready ? PG_OK : setup(c, conn, err, errsize);
    if (o == PG_OK)
        o = prepare_insert(c, conn, err, errsize);
    /* A replay most likely finds its rows there already: straight to ON CONFLICT. */
    bool try_copy = c->copy_sql && p->slow_batches == 0 && !b->replay;
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
        o = setup(c, c->conn, err, errsize);
    if (o == PG_OK)
        o = prepare_insert(c, c->conn, err, errsize);
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
const struct sc_sink_class sink_postgres_type = {
    .name = "postgres",
    .flags = SC_SINK_F_TRANSACTIONAL,
    .create = pg_create,
    .destroy = pg_destroy,
    .part_open = pg_part_open,
    .part_recover = pg_part_recover,
    .part_close = pg_part_close,
    .write = pg_write,
    .redrive = pg_redrive,
};
