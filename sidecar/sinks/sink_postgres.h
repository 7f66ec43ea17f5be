/*
 * sink_postgres.h - what the two halves of the postgres sink share (private
 * to sinks/sink_postgres*.c): its configuration, the column plan and the
 * per-worker state.
 *
 *   sink_postgres_table.c  the configuration keys and checks; which columns
 *                          come from where; creating the table, reading its
 *                          types from the catalog, building the statements
 *   sink_postgres.c        the NOTES on how it is exactly-once; connections,
 *                          encoding records, writing them (COPY, INSERT,
 *                          the pipelined transaction), the sink callbacks
 */
#ifndef SINK_POSTGRES_H
#define SINK_POSTGRES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "base/sc_pick.h"
#include "config/sc_config.h"
#include "sinks/sc_sink.h"

/* ---- configuration ---- */

enum pg_mode {
    PG_INSERT,
    PG_UPSERT,
    PG_INSERT_IGNORE,
};

/* How the rows of a batch go in (same database, default columns; see NOTES). */
enum pg_write_method {
    PG_WRITE_AUTO,
    PG_WRITE_COPY,
    PG_WRITE_PIPELINE,
};

enum pg_coltype {
    PG_JSONB,
    PG_TEXT,
    PG_BYTEA,
};

struct pg_conf {
    char *dsn;   /* NULL: the checkpoint database (one-tx mode) */
    char *table; /* "name" or "schema.name" */
    enum pg_mode mode;
    struct sc_kvlist columns;      /* column -> "$.json.path" or "$topic" ...; empty = defaults */
    struct sc_strlist key_columns; /* empty = (topic, partition, offset) */
    bool create_table;
    enum pg_coltype value_type; /* default columns only: jsonb | text | bytea */
    enum pg_coltype key_type;   /* default columns only: text | bytea */
    enum pg_write_method write_method;
};

/* The keys of "type": "postgres" and the check of the config as a whole. */
extern const struct sc_conf_table pg_conf_table;
void pg_check_config(struct sc_conf_ctx *ctx, const struct sc_config *cfg, size_t i);
/* `check-config --online`: the table's shape, nothing created (sc_sink_class.check_online). */
int pg_check_online(const struct sc_config *cfg, size_t i, char *msg, size_t msgsize);

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

struct pg_field_type {
    const char *alias; /* column of the unnest() row */
    const char *type;  /* SQL array element type */
    uint32_t oid;      /* element type */
    uint32_t array_oid;
};
extern const struct pg_field_type pg_fields[NFIELDS];

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
    const struct pg_conf *conf;
    struct sc_formats fmt;
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

    /* Same database, default columns: COPY (way 0) or the pipelined INSERT (way 1), by
     * what each cost on this connection lately (write_method auto). */
    struct sc_pick pick;

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

/* ---- shared helpers (sink_postgres.c) ---- */

/* The SQLSTATE of a failed result, or "" */
const char *pg_sqlstate(const PGresult *res);
bool pg_result_ok(const PGresult *res);
/* Classifies a failed result and writes "message (SQLSTATE x)" into err. */
enum pg_outcome pg_classify(PGconn *conn, const PGresult *res, char *err, size_t errsize);
/* ROLLBACK after a failure (its error stays where it was reported). */
void pg_rollback(PGconn *conn);
/* Runs a statement without parameters; the error in err. */
enum pg_outcome pg_exec_simple(PGconn *conn, const char *sql, char *err, size_t errsize);

/* ---- the table (sink_postgres_table.c) ---- */

/* The column plan from the config (default or mapped columns, the offset guard). */
int pg_plan(struct pg_ctx *c, const struct sc_pipeline_conf *pc, char *err, size_t errsize);
/* Frees the plan and everything setup() built (not c itself). */
void pg_plan_free(struct pg_ctx *c);
/*
 * Makes the table ready on conn: creates it if configured, reads the column
 * types, builds and prepares the statements.  PG_FATAL means the table or
 * config is wrong (the message says what to do).
 */
enum pg_outcome pg_setup(struct pg_ctx *c, PGconn *conn, char *err, size_t errsize);
/* Prepares the insert statements on conn if they are not (a new connection or backend). */
enum pg_outcome pg_prepare_insert(struct pg_ctx *c, PGconn *conn, char *err, size_t errsize);

#endif
