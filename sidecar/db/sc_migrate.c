/*
 * sc_migrate.c - applies the embedded sql/NNN_*.sql migrations.
 *
 * A run, on one connection:
 *
 *   1. pg_advisory_lock(hashtextextended('kafka-sidecar:migrate:' || schema, 0))
 *      - a session lock, so concurrent runs against the same schema queue up
 *      here and each later one finds the work done;
 *   2. creates the schema and <schema>.schema_migrations if they are missing
 *      (checked first, so a role that may not create schemas still works
 *      against a schema a DBA made for it);
 *   3. for every file whose version is not in schema_migrations, in version
 *      order: BEGIN; SET LOCAL search_path TO <schema>, pg_catalog; the file;
 *      INSERT INTO schema_migrations; COMMIT.  A failure rolls that file back
 *      and stops: earlier files stay applied, the version says where it
 *      stopped;
 *   4. unlocks (the lock also goes away with the session if we die).
 *
 * Identifiers go through sc_pg_quote_ident(); values are always parameters.
 */
#include "db/sc_migrate.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_log.h"
#include "base/sc_util.h"
#include "db/sc_pg.h"

/* The oldest server the migrations support (xid8, pg_current_xact_id()). */
#define MIN_SERVER_VERSION 130000

int sc_migrate_version_of(const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; i < 3; i++)
        if (name[i] < '0' || name[i] > '9')
            return -1;
    if (name[3] != '_')
        return -1;
    int v = (name[0] - '0') * 100 + (name[1] - '0') * 10 + (name[2] - '0');
    return v > 0 ? v : -1;
}

int sc_migrate_latest_version(void)
{
    int latest = 0;
    for (size_t i = 0; i < sc_sql_nfiles; i++) {
        int v = sc_migrate_version_of(sc_sql_files[i].name);
        if (v > latest)
            latest = v;
    }
    return latest;
}

/* Runs sql with text parameters (if any); unless it returns want: NULL, "what: error" in errbuf. */
static PGresult *run(PGconn *conn, const char *sql, int nparams, const char *const *params,
                     ExecStatusType want, const char *what, char *errbuf, size_t errsize)
{
    /* Without parameters: a simple query, which may hold several statements. */
    PGresult *res =
        nparams ? PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0) : PQexec(conn, sql);
    if (res && PQresultStatus(res) == want)
        return res;
    char msg[512];
    sc_pg_errmsg(conn, res, msg, sizeof(msg));
    snprintf(errbuf, errsize, "%s: %s", what, msg);
    PQclear(res);
    return NULL;
}

/* Does <schema>.<table> exist (as any relation)?  1 yes, 0 no, -1 error. */
static int relation_exists(PGconn *conn, const char *schema, const char *table, char *errbuf,
                           size_t errsize)
{
    const char *params[] = {schema, table};
    PGresult *res =
        run(conn,
            "SELECT 1 FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relname = $2",
            2, params, PGRES_TUPLES_OK, "could not look up the migrations table", errbuf, errsize);
    if (!res)
        return -1;
    int found = PQntuples(res) > 0;
    PQclear(res);
    return found;
}

static int schema_exists(PGconn *conn, const char *schema, char *errbuf, size_t errsize)
{
    const char *params[] = {schema};
    PGresult *res = run(conn, "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1", 1, params,
                        PGRES_TUPLES_OK, "could not look up the schema", errbuf, errsize);
    if (!res)
        return -1;
    int found = PQntuples(res) > 0;
    PQclear(res);
    return found;
}

/* A version column value (int, never NULL); -1 on garbage. */
static int version_value(const PGresult *res, int row)
{
    int64_t v;
    if (sc_parse_i64(PQgetvalue(res, row, 0), &v) != 0 || v < 0 || v > 1000000)
        return -1;
    return (int)v;
}

/* The applied versions, ascending, in a malloc'd array (*out may be NULL when n = 0). */
static int read_applied(PGconn *conn, const char *qschema, int **out, size_t *n, char *errbuf,
                        size_t errsize)
{
    int result = -1;
    char *sql = sc_xasprintf("SELECT version FROM %s.schema_migrations ORDER BY version", qschema);
    PGresult *res = run(conn, sql, 0, NULL, PGRES_TUPLES_OK, "could not read schema_migrations",
                        errbuf, errsize);
    if (!res)
        goto out;
    *n = (size_t)PQntuples(res);
    *out = *n ? sc_xcalloc(*n, sizeof(int)) : NULL;
    for (size_t i = 0; i < *n; i++)
        (*out)[i] = version_value(res, (int)i);
    result = 0;
out:
    PQclear(res);
    free(sql);
    return result;
}

int sc_migrate_current_version(PGconn *conn, const char *schema, char *errbuf, size_t errsize)
{
    int result = -1;
    char *qschema = sc_pg_quote_ident(schema);
    char *sql = NULL;
    PGresult *res = NULL;

    int exists = relation_exists(conn, schema, "schema_migrations", errbuf, errsize);
    if (exists <= 0) {
        result = exists; /* 0: never migrated */
        goto out;
    }
    sql = sc_xasprintf("SELECT coalesce(max(version), 0) FROM %s.schema_migrations", qschema);
    res = run(conn, sql, 0, NULL, PGRES_TUPLES_OK, "could not read schema_migrations", errbuf,
              errsize);
    if (!res)
        goto out;
    result = version_value(res, 0);
out:
    PQclear(res);
    free(sql);
    free(qschema);
    return result;
}

static int cmp_version(const void *a, const void *b)
{
    int va = sc_migrate_version_of((*(const struct sc_sql_file *const *)a)->name);
    int vb = sc_migrate_version_of((*(const struct sc_sql_file *const *)b)->name);
    return (va > vb) - (va < vb);
}

/* Validates the names and returns the files sorted by version (malloc'd), or NULL. */
static const struct sc_sql_file **sorted_files(const struct sc_sql_file *files, size_t nfiles,
                                               char *errbuf, size_t errsize)
{
    const struct sc_sql_file **sorted = sc_xcalloc(nfiles ? nfiles : 1, sizeof(*sorted));
    for (size_t i = 0; i < nfiles; i++) {
        if (sc_migrate_version_of(files[i].name) < 0 || !files[i].text) {
            snprintf(errbuf, errsize,
                     "invalid migration file name \"%s\": expected NNN_name.sql with NNN from "
                     "001 to 999",
                     files[i].name ? files[i].name : "(null)");
            goto fail;
        }
        sorted[i] = &files[i];
    }
    qsort(sorted, nfiles, sizeof(*sorted), cmp_version);
    for (size_t i = 1; i < nfiles; i++) {
        if (cmp_version(&sorted[i - 1], &sorted[i]) == 0) {
            snprintf(errbuf, errsize, "duplicate migration version %d: %s and %s",
                     sc_migrate_version_of(sorted[i]->name), sorted[i - 1]->name, sorted[i]->name);
            goto fail;
        }
    }
    return sorted;
fail:
    free(sorted);
    return NULL;
}

/* Session advisory lock serialising every migrate run on this schema. */
static int migrate_lock(PGconn *conn, const char *schema, const char *key, bool lock, char *errbuf,
                        size_t errsize)
{
    const char *params[] = {key};
    PGresult *res = NULL;
    if (!lock) {
        res =
            run(conn, "SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtextextended($1, 0))", 1,
                params, PGRES_TUPLES_OK, "could not release the migration lock", errbuf, errsize);
        bool ok = res != NULL;
        PQclear(res);
        return ok ? 0 : -1;
    }
    res = run(conn, "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtextextended($1, 0))", 1,
              params, PGRES_TUPLES_OK, "could not take the migration lock", errbuf, errsize);
    if (!res)
        return -1;
    bool got = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (got)
        return 0;
    sc_info(NULL, "another migration of schema \"%s\" is running; waiting for it to finish",
            schema);
    res = run(conn, "SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtextextended($1, 0))", 1,
              params, PGRES_TUPLES_OK, "could not take the migration lock", errbuf, errsize);
    got = res != NULL;
    PQclear(res);
    return got ? 0 : -1;
}

/* Creates the schema and its schema_migrations table unless they exist. */
static int ensure_bookkeeping(PGconn *conn, const char *schema, const char *qschema, char *errbuf,
                              size_t errsize)
{
    int result = -1;
    char *sql = NULL;
    PGresult *res = NULL;

    int exists = schema_exists(conn, schema, errbuf, errsize);
    if (exists < 0)
        goto out;
    if (!exists) {
        sql = sc_xasprintf("CREATE SCHEMA IF NOT EXISTS %s", qschema);
        res = run(conn, sql, 0, NULL, PGRES_COMMAND_OK, "could not create the schema", errbuf,
                  errsize);
        if (!res)
            goto out;
        PQclear(res);
        res = NULL;
        free(sql);
        sql = NULL;
        sc_info(NULL, "created schema \"%s\"", schema);
    }
    exists = relation_exists(conn, schema, "schema_migrations", errbuf, errsize);
    if (exists < 0)
        goto out;
    if (!exists) {
        /* Two statements in one simple query: one implicit transaction. */
        sql = sc_xasprintf("CREATE TABLE IF NOT EXISTS %s.schema_migrations ("
                           "version int PRIMARY KEY, "
                           "name text NOT NULL, "
                           "applied_at timestamptz NOT NULL DEFAULT now()); "
                           "COMMENT ON TABLE %s.schema_migrations IS "
                           "'Migrations (sql/NNN_name.sql) applied by `sidecar migrate`, one row "
                           "each; the schema''s version is max(version).'",
                           qschema, qschema);
        res = run(conn, sql, 0, NULL, PGRES_COMMAND_OK, "could not create schema_migrations",
                  errbuf, errsize);
        if (!res)
            goto out;
    }
    result = 0;
out:
    PQclear(res);
    free(sql);
    return result;
}

/*
 * The line of text that an error's statement position (1-based, counted in
 * characters, UTF-8 assumed) points at; 0 when unknown.
 */
static int error_line(const char *text, const char *position)
{
    int64_t pos;
    if (!position || sc_parse_i64(position, &pos) != 0 || pos < 1)
        return 0;
    int line = 1;
    int64_t chars = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if ((*p & 0xC0) == 0x80)
            continue; /* UTF-8 continuation byte */
        if (++chars == pos)
            return line;
        if (*p == '\n')
            line++;
    }
    return 0;
}

/* Applies one file in its own transaction; on failure rolls back and explains in errbuf. */
static int apply_one(PGconn *conn, const char *qschema, const struct sc_sql_file *f, int version,
                     char *errbuf, size_t errsize)
{
    int result = -1;
    char *sql = NULL;
    PGresult *res = NULL;
    char msg[512];

    res = run(conn, "BEGIN", 0, NULL, PGRES_COMMAND_OK, "BEGIN", errbuf, errsize);
    if (!res)
        goto out;
    PQclear(res);
    sql = sc_xasprintf("SET LOCAL search_path TO %s, pg_catalog", qschema);
    res = run(conn, sql, 0, NULL, PGRES_COMMAND_OK, "SET search_path", errbuf, errsize);
    if (!res)
        goto out;
    PQclear(res);

    /* The file may hold many statements: PQexec runs them all, stopping at the first error. */
    res = PQexec(conn, f->text);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
        sc_pg_errmsg(conn, res, msg, sizeof(msg));
        int line =
            res ? error_line(f->text, PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION)) : 0;
        if (line > 0)
            snprintf(errbuf, errsize, "line %d: %s", line, msg);
        else
            snprintf(errbuf, errsize, "%s", msg);
        goto out;
    }
    PQclear(res);
    res = NULL;
    if (PQtransactionStatus(conn) != PQTRANS_INTRANS) {
        snprintf(errbuf, errsize,
                 "the file ended the transaction (a migration must not contain BEGIN, COMMIT "
                 "or ROLLBACK)");
        goto out;
    }

    char vbuf[16];
    snprintf(vbuf, sizeof(vbuf), "%d", version);
    const char *params[] = {vbuf, f->name};
    free(sql);
    sql = sc_xasprintf("INSERT INTO %s.schema_migrations (version, name) VALUES ($1, $2)", qschema);
    res = run(conn, sql, 2, params, PGRES_COMMAND_OK, "could not record it", errbuf, errsize);
    if (!res)
        goto out;
    PQclear(res);
    res = run(conn, "COMMIT", 0, NULL, PGRES_COMMAND_OK, "COMMIT", errbuf, errsize);
    if (!res)
        goto out;
    result = 0;
out:
    PQclear(res);
    if (result != 0 && PQtransactionStatus(conn) != PQTRANS_IDLE)
        PQclear(PQexec(conn, "ROLLBACK"));
    free(sql);
    return result;
}

static bool contains(const int *v, size_t n, int x)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == x)
            return true;
    return false;
}

int sc_migrate_apply_files(PGconn *conn, const char *schema, const struct sc_sql_file *files,
                           size_t nfiles, char *errbuf, size_t errsize)
{
    int result = -1;
    const struct sc_sql_file **sorted = NULL;
    char *qschema = NULL;
    char *lock_key = NULL;
    bool locked = false;
    int *applied = NULL;
    size_t napplied = 0;
    int count = 0;

    if (!schema || !*schema) {
        snprintf(errbuf, errsize, "the schema name is empty");
        goto out;
    }
    sorted = sorted_files(files, nfiles, errbuf, errsize);
    if (!sorted)
        goto out;
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        snprintf(errbuf, errsize, "not connected to PostgreSQL");
        goto out;
    }
    if (PQtransactionStatus(conn) != PQTRANS_IDLE) {
        snprintf(errbuf, errsize, "cannot migrate inside an open transaction");
        goto out;
    }
    int server = PQserverVersion(conn);
    if (server < MIN_SERVER_VERSION) {
        snprintf(errbuf, errsize, "PostgreSQL 13 or later is required (the server is %d.%d)",
                 server / 10000, server % 10000);
        goto out;
    }

    qschema = sc_pg_quote_ident(schema);
    lock_key = sc_xasprintf("kafka-sidecar:migrate:%s", schema);
    if (migrate_lock(conn, schema, lock_key, true, errbuf, errsize) != 0)
        goto out;
    locked = true;
    if (ensure_bookkeeping(conn, schema, qschema, errbuf, errsize) != 0)
        goto out;
    if (read_applied(conn, qschema, &applied, &napplied, errbuf, errsize) != 0)
        goto out;

    int version = napplied ? applied[napplied - 1] : 0;
    for (size_t i = 0; i < nfiles; i++) {
        const struct sc_sql_file *f = sorted[i];
        int v = sc_migrate_version_of(f->name);
        if (contains(applied, napplied, v))
            continue;
        int64_t t0 = sc_mono_ms();
        char why[768];
        if (apply_one(conn, qschema, f, v, why, sizeof(why)) != 0) {
            snprintf(errbuf, errsize, "migration %s failed: %s (schema left at version %d)",
                     f->name, why, version);
            goto out;
        }
        if (v > version)
            version = v;
        count++;
        sc_info(NULL, "applied migration %s to schema \"%s\" in %lld ms", f->name, schema,
                (long long)(sc_mono_ms() - t0));
    }
    result = count;
out:
    if (locked && PQstatus(conn) == CONNECTION_OK) {
        char uerr[256];
        if (migrate_lock(conn, schema, lock_key, false, uerr, sizeof(uerr)) != 0)
            sc_warn(NULL, "%s", uerr); /* harmless: the lock goes away with the session */
    }
    free(applied);
    free(lock_key);
    free(qschema);
    free(sorted);
    return result;
}

int sc_migrate_apply(PGconn *conn, const char *schema, char *errbuf, size_t errsize)
{
    return sc_migrate_apply_files(conn, schema, sc_sql_files, sc_sql_nfiles, errbuf, errsize);
}

int sc_migrate_require_latest(PGconn *conn, const char *schema, char *errbuf, size_t errsize)
{
    int current = sc_migrate_current_version(conn, schema, errbuf, errsize);
    if (current < 0)
        return -1;
    int latest = sc_migrate_latest_version();
    /* A newer schema is fine: migrations only add, and old binaries keep running during upgrades.
     */
    if (current >= latest)
        return 0;
    snprintf(errbuf, errsize,
             "schema \"%s\" is at version %d but this sidecar needs version %d: run `sidecar "
             "migrate -c FILE` first",
             schema, current, latest);
    return -1;
}
