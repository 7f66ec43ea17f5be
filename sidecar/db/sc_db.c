/*
 * sc_db.c - a PostgreSQL session with lazy (re)connection and prepared
 * statements (see sc_db.h).
 */
#include "db/sc_db.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_log.h"

void sc_db_init(struct sc_db *db, const char *dsn, const char *schema, const char *app_name,
                int connect_timeout_ms)
{
    memset(db, 0, sizeof(*db));
    db->dsn = sc_xstrdup(dsn);
    db->app_name = sc_xstrdup(app_name);
    db->connect_timeout_ms = connect_timeout_ms;
    db->schema_q = sc_pg_quote_ident(schema);
    sc_backoff_init(&db->backoff, 100, 5000);
}

void sc_db_close(struct sc_db *db)
{
    if (db->conn)
        PQfinish(db->conn);
    free(db->dsn);
    free(db->app_name);
    free(db->schema_q);
    memset(db, 0, sizeof(*db));
}

void sc_db_reset(struct sc_db *db)
{
    if (db->hold > 0) {
        db->broken = true; /* closed by sc_db_release() */
        return;
    }
    if (db->conn) {
        PQfinish(db->conn);
        db->conn = NULL;
    }
    db->nprepared = 0;
}

PGconn *sc_db_hold(struct sc_db *db)
{
    if (sc_db_connect(db, false) != 0)
        return NULL;
    db->hold++;
    return db->conn;
}

void sc_db_release(struct sc_db *db)
{
    if (db->hold > 0)
        db->hold--;
    if (db->hold == 0 && (db->broken || (db->conn && PQstatus(db->conn) != CONNECTION_OK))) {
        db->broken = false;
        sc_db_reset(db);
    }
}

int sc_db_connect(struct sc_db *db, bool force)
{
    if (db->conn && PQstatus(db->conn) == CONNECTION_OK && !db->broken)
        return 0;
    if (db->hold > 0) {
        snprintf(db->last_error, sizeof(db->last_error), "connection to PostgreSQL lost");
        return -1; /* never swap the connection under a caller's transaction */
    }
    sc_db_reset(db);
    int64_t now = sc_mono_ms();
    if (!force && now < db->next_connect_ms) {
        return -1;
    }
    db->conn = sc_pg_connect(db->dsn, db->app_name, db->connect_timeout_ms, db->last_error,
                             sizeof(db->last_error));
    if (!db->conn) {
        db->next_connect_ms = sc_mono_ms() + sc_backoff_next(&db->backoff);
        if (!db->logged_down) {
            sc_warn(NULL, "%s; retrying with backoff", db->last_error);
            db->logged_down = true;
        }
        return -1;
    }
    if (db->idle_tx_timeout_ms > 0) {
        char ms[24];
        const char *v[1] = {sc_i64(ms, db->idle_tx_timeout_ms)};
        PGresult *res = PQexecParams(
            db->conn, "SELECT set_config('idle_in_transaction_session_timeout', $1, false)", 1,
            NULL, v, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            char why[256];
            sc_warn(NULL, "could not set idle_in_transaction_session_timeout: %s",
                    sc_pg_errmsg(db->conn, res, why, sizeof(why)));
        }
        PQclear(res);
    }
    db->connects++;
    if (db->logged_down)
        sc_info(NULL, "reconnected to PostgreSQL");
    db->logged_down = false;
    sc_backoff_reset(&db->backoff);
    db->next_connect_ms = 0;
    return 0;
}

char *sc_db_expand(const struct sc_db *db, const char *sql)
{
    return sc_pg_with_schema(sql, db->schema_q);
}

/* Records what the failed result res of statement stmt says (see struct sc_db). */
static void note_failure(struct sc_db *db, const PGresult *res, const char *stmt)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *schema = res ? PQresultErrorField(res, PG_DIAG_SCHEMA_NAME) : NULL;
    const char *table = res ? PQresultErrorField(res, PG_DIAG_TABLE_NAME) : NULL;
    snprintf(db->last_sqlstate, sizeof(db->last_sqlstate), "%s", state ? state : "");
    snprintf(db->last_stmt, sizeof(db->last_stmt), "%.*s", (int)strcspn(stmt, " ;("), stmt);
    if (table && *table)
        snprintf(db->last_relation, sizeof(db->last_relation), "%s%s%s", schema ? schema : "",
                 schema ? "." : "", table);
    else
        db->last_relation[0] = '\0';
    /* Connection trouble (class 08) and a server going away (57P01..57P03) may have hit a
     * statement that had already done its work: only other errors are certain. */
    db->last_answered = state && *state && strncmp(state, "08", 2) != 0 &&
                        strncmp(state, "57P0", 4) != 0 && db->conn &&
                        PQstatus(db->conn) == CONNECTION_OK;
}

/* No connection: nothing was sent (connection trouble, retry later). */
static void not_connected(struct sc_db *db, enum sc_pg_errclass *cls)
{
    *cls = SC_PG_RETRY;
    db->last_sqlstate[0] = db->last_relation[0] = '\0';
    snprintf(db->last_stmt, sizeof(db->last_stmt), "(not connected)");
    db->last_answered = false;
}

/* The last failure was a transient condition of the statement on a healthy, idle session. */
static bool statement_only(const struct sc_db *db)
{
    static const char *const states[] = {
        "40001", /* serialization_failure */
        "40P01", /* deadlock_detected */
        "55P03", /* lock_not_available */
    };
    if (!db->conn || PQstatus(db->conn) != CONNECTION_OK ||
        PQtransactionStatus(db->conn) != PQTRANS_IDLE)
        return false;
    for (size_t i = 0; i < SC_ARRAY_LEN(states); i++)
        if (strcmp(db->last_sqlstate, states[i]) == 0)
            return true;
    return false;
}

static PGresult *check_result(struct sc_db *db, PGresult *res, const char *stmt,
                              enum sc_pg_errclass *cls)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        *cls = SC_PG_OK;
        return res;
    }
    *cls = sc_pg_classify(db->conn, res);
    sc_pg_errmsg(db->conn, res, db->last_error, sizeof(db->last_error));
    note_failure(db, res, stmt);
    PQclear(res);
    if (*cls == SC_PG_RETRY && statement_only(db)) {
        /* A deadlock, a serialization failure or a lock timeout ended the statement, not
         * the session: keep it (its LISTENs and prepared statements); the caller retries. */
        sc_debug(NULL, "PostgreSQL: %s; the statement will be retried", db->last_error);
        return NULL;
    }
    if (*cls == SC_PG_RETRY || !db->conn || PQstatus(db->conn) != CONNECTION_OK) {
        *cls = SC_PG_RETRY;
        if (!db->logged_down)
            sc_warn(NULL, "PostgreSQL: %s; will reconnect", db->last_error);
        db->logged_down = true;
        sc_db_reset(db);
    }
    return NULL;
}

static bool is_prepared(const struct sc_db *db, const struct sc_stmt *st)
{
    for (size_t i = 0; i < db->nprepared; i++)
        if (db->prepared[i] == st)
            return true;
    return false;
}

int sc_db_prepare(struct sc_db *db, const struct sc_stmt *st, enum sc_pg_errclass *cls)
{
    if (sc_db_connect(db, false) != 0) {
        not_connected(db, cls);
        return -1;
    }
    if (is_prepared(db, st))
        return 0;
    char *sql = sc_db_expand(db, st->sql);
    PGresult *res = PQprepare(db->conn, st->name, sql, st->nparams, NULL);
    free(sql);
    if (!check_result(db, res, st->name, cls))
        return -1;
    PQclear(res);
    if (db->nprepared < SC_DB_MAX_STMTS)
        db->prepared[db->nprepared++] = st;
    return 0;
}

int sc_db_send(struct sc_db *db, const struct sc_stmt *st, const char *const *params)
{
    if (!db->conn || !is_prepared(db, st)) {
        snprintf(db->last_error, sizeof(db->last_error), "statement %s is not prepared", st->name);
        return -1;
    }
    if (PQsendQueryPrepared(db->conn, st->name, st->nparams, params, NULL, NULL, 0) == 1)
        return 0;
    sc_pg_errmsg(db->conn, NULL, db->last_error, sizeof(db->last_error));
    return -1;
}

PGresult *sc_db_exec(struct sc_db *db, const struct sc_stmt *st, const char *const *params,
                     enum sc_pg_errclass *cls)
{
    return sc_db_exec_params(db, st, params, NULL, NULL, cls);
}

PGresult *sc_db_exec_params(struct sc_db *db, const struct sc_stmt *st, const char *const *params,
                            const int *lengths, const int *formats, enum sc_pg_errclass *cls)
{
    if (sc_db_connect(db, false) != 0) {
        not_connected(db, cls);
        return NULL;
    }
    if (sc_db_prepare(db, st, cls) != 0)
        return NULL;
    PGresult *res = PQexecPrepared(db->conn, st->name, st->nparams, params, lengths, formats, 0);
    return check_result(db, res, st->name, cls);
}

PGresult *sc_db_exec_once(struct sc_db *db, const char *sql, int nparams, const char *const *params,
                          enum sc_pg_errclass *cls)
{
    if (sc_db_connect(db, false) != 0) {
        not_connected(db, cls);
        return NULL;
    }
    char *q = sc_db_expand(db, sql);
    PGresult *res = PQexecParams(db->conn, q, nparams, NULL, params, NULL, NULL, 0);
    free(q);
    return check_result(db, res, sql, cls);
}

const char *sc_i64(char *buf, int64_t v)
{
    snprintf(buf, 24, "%" PRId64, v);
    return buf;
}
