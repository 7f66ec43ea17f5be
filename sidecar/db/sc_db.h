/*
 * sc_db - one thread's PostgreSQL session for checkpoint and lease work:
 * connects lazily, reconnects after a failure (capped backoff with jitter),
 * and prepares the statements it runs on first use per connection.
 *
 * Statements are written with "{S}" where the quoted schema goes, e.g.
 * "UPDATE {S}.checkpoints SET ...": the schema is an identifier from the
 * config, quoted once; values are always parameters.
 *
 * @locality one thread per struct sc_db.
 */
#ifndef SC_DB_H
#define SC_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "base/sc_util.h"
#include "db/sc_pg.h"

/* A statement known by a fixed id (index into a static table). */
struct sc_stmt {
    const char *name; /* prepared statement name, unique per connection */
    const char *sql;  /* with {S} for the schema */
    int nparams;
};

#define SC_DB_MAX_STMTS 64

struct sc_db {
    char *dsn;
    char *app_name;
    int connect_timeout_ms;
    char *schema_q; /* quoted schema */
    PGconn *conn;
    const struct sc_stmt *prepared[SC_DB_MAX_STMTS];
    size_t nprepared;
    struct sc_backoff backoff;
    int64_t next_connect_ms; /* earliest next connection attempt (monotonic) */
    bool logged_down;        /* "connection lost" logged once per outage */
    int hold;                /* > 0: a caller has the connection in a transaction */
    bool broken;             /* an error happened while held: reset on release */
    /* > 0: the server ends this session when it sits idle inside a transaction this long
     * (a stalled holder of a transaction must not keep its row locks forever). */
    int idle_tx_timeout_ms;
    unsigned connects; /* successful connections so far: tells a new session from the last */
    char last_error[512];
    /* More about the last failed statement (every sc_db_exec*() and sc_db_prepare() that
     * fails sets them): */
    char last_sqlstate[6];   /* the server's SQLSTATE, "" when there was none */
    char last_stmt[40];      /* the statement's name ("sc_cp_commit"), or its first word */
    char last_relation[160]; /* "schema.table" the error is about, "" when not known */
    /* The server answered with an error while the connection stayed up: the statement
     * certainly did not take effect (false: the outcome of a sent statement is unknown). */
    bool last_answered;
};

void sc_db_init(struct sc_db *db, const char *dsn, const char *schema, const char *app_name,
                int connect_timeout_ms);
void sc_db_close(struct sc_db *db);

/*
 * Ensures a live connection.  Returns 0, or -1 (not connected yet: the
 * caller retries later; the reason is in db->last_error).  Does not block
 * longer than one connection attempt; honours the backoff schedule unless
 * force is set.
 */
int sc_db_connect(struct sc_db *db, bool force);

/* Drops the connection (after an error) so the next use reconnects. */
void sc_db_reset(struct sc_db *db);

/*
 * Lends the connection to a caller that runs a transaction on it (a sink
 * writing rows and checkpoint together): until sc_db_release(), errors do
 * not close it under the caller's feet.  Returns the connection or NULL if
 * PostgreSQL is not reachable right now.
 */
PGconn *sc_db_hold(struct sc_db *db);
void sc_db_release(struct sc_db *db);

/*
 * Runs a prepared statement with text params (NULL = SQL NULL).  Returns the
 * result when it is PGRES_TUPLES_OK / PGRES_COMMAND_OK (caller PQclear()s),
 * else NULL with *cls set (SC_PG_RETRY: connection trouble, retry later;
 * SC_PG_PERMANENT: a bug or constraint) and db->last_error filled in.
 */
PGresult *sc_db_exec(struct sc_db *db, const struct sc_stmt *st, const char *const *params,
                     enum sc_pg_errclass *cls);

/* Same with per-parameter lengths and formats (1 = binary), e.g. for bytea. */
PGresult *sc_db_exec_params(struct sc_db *db, const struct sc_stmt *st, const char *const *params,
                            const int *lengths, const int *formats, enum sc_pg_errclass *cls);

/*
 * Prepares st on the connection unless it is already: 0, or -1 with *cls
 * and db->last_error set.  For statements later sent with sc_db_send(),
 * which cannot prepare them (pipeline mode).
 */
int sc_db_prepare(struct sc_db *db, const struct sc_stmt *st, enum sc_pg_errclass *cls);

/*
 * Sends st (prepared with sc_db_prepare() on this connection) without
 * waiting for its result, which the caller reads: on a connection in
 * pipeline mode, the statement only joins the pipeline.  0, or -1 with
 * db->last_error set.
 */
int sc_db_send(struct sc_db *db, const struct sc_stmt *st, const char *const *params);

/* Same for an unprepared statement (with {S} expansion); for rare paths. */
PGresult *sc_db_exec_once(struct sc_db *db, const char *sql, int nparams, const char *const *params,
                          enum sc_pg_errclass *cls);

/* Expands {S} in sql with db->schema_q; malloc'd. */
char *sc_db_expand(const struct sc_db *db, const char *sql);

/* Formats an int64 into buf (>= 24 bytes); returns buf. */
const char *sc_i64(char *buf, int64_t v);

#endif
