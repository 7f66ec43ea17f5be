/*
 * check_migrate.c - the migration runner and the libpq helpers against a
 * real PostgreSQL (started by the harness), and `sidecar migrate` as a
 * child process.
 *
 * Every test works in a database of its own, so they do not see each
 * other's schemas.  Concurrency is made deterministic by holding the
 * migration advisory lock from the test until every contender is queued on
 * it, then letting them all go at once.
 */
#include <check.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "db/sc_migrate.h"
#include "db/sc_pg.h"
#include "hx.h"

static struct hx_pg pg;

static void pg_setup(void)
{
    hx_pg_start(&pg);
}

static void pg_teardown(void)
{
    hx_pg_stop(&pg);
}

/* A database of the test's own; its DSN goes into dsn (>= 512 bytes). */
static void fresh_db(const char *name, char *dsn)
{
    hx_pg_create_db(&pg, name, dsn, 512);
}

static PGconn *connect_or_fail(const char *dsn)
{
    char err[512];
    PGconn *conn = sc_pg_connect(dsn, "kafka-sidecar/test", 5000, err, sizeof(err));
    ck_assert_msg(conn != NULL, "%s", err);
    return conn;
}

static int apply_or_fail(PGconn *conn, const char *schema)
{
    char err[1024];
    int n = sc_migrate_apply(conn, schema, err, sizeof(err));
    ck_assert_msg(n >= 0, "migrate %s: %s", schema, err);
    return n;
}

static int current_version(PGconn *conn, const char *schema)
{
    char err[512];
    int v = sc_migrate_current_version(conn, schema, err, sizeof(err));
    ck_assert_msg(v >= 0, "%s", err);
    return v;
}

static long long count_of(PGconn *conn, const char *sql, const char *param)
{
    const char *params[] = {param};
    return hx_pg_int(conn, sql, param ? 1 : 0, params);
}

static long long relation_count(PGconn *conn, const char *schema, const char *relkinds)
{
    const char *params[] = {schema, relkinds};
    return hx_pg_int(conn,
                     "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                     " WHERE n.nspname = $1 AND strpos($2, c.relkind::text) > 0",
                     2, params);
}

static bool has_table(PGconn *conn, const char *schema, const char *table)
{
    const char *params[] = {schema, table};
    return hx_pg_int(conn,
                     "SELECT count(*) FROM information_schema.tables"
                     " WHERE table_schema = $1 AND table_name = $2 AND table_type = 'BASE TABLE'",
                     2, params) == 1;
}

static bool has_view(PGconn *conn, const char *schema, const char *view)
{
    const char *params[] = {schema, view};
    return hx_pg_int(conn, "SELECT count(*) FROM pg_views WHERE schemaname = $1 AND viewname = $2",
                     2, params) == 1;
}

/* Every table, view and index of the schema, with their columns: a fingerprint to compare. */
static char *schema_fingerprint(PGconn *conn, const char *schema)
{
    const char *params[] = {schema};
    return hx_pg_value(conn,
                       "SELECT string_agg(c.relname || '.' || coalesce(a.attname, '') || ':' ||"
                       " coalesce(format_type(a.atttypid, a.atttypmod), ''), ',' ORDER BY"
                       " c.relname, a.attnum)"
                       " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                       " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0"
                       " AND NOT a.attisdropped WHERE n.nspname = $1",
                       1, params);
}

/* ---- fresh schema, idempotence ---------------------------------------------- */

START_TEST(fresh_migrate_creates_everything)
{
    char dsn[512], err[512];
    fresh_db("m_fresh", dsn);
    PGconn *conn = connect_or_fail(dsn);

    ck_assert_int_eq(current_version(conn, "sidecar"), 0);
    ck_assert_int_eq(sc_migrate_require_latest(conn, "sidecar", err, sizeof(err)), -1);
    char want[256];
    snprintf(want, sizeof(want),
             "schema \"sidecar\" is at version 0 but this sidecar needs version %d: "
             "run `sidecar migrate -c FILE` first",
             sc_migrate_latest_version());
    ck_assert_str_eq(err, want);

    ck_assert_int_eq(apply_or_fail(conn, "sidecar"), (int)sc_sql_nfiles);
    ck_assert_int_eq(current_version(conn, "sidecar"), sc_migrate_latest_version());
    ck_assert_int_eq(sc_migrate_require_latest(conn, "sidecar", err, sizeof(err)), 0);

    static const char *const tables[] = {
        "schema_migrations", "leases", "checkpoints", "events", "partition_stats", "dead_letters"};
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++)
        ck_assert_msg(has_table(conn, "sidecar", tables[i]), "table %s missing", tables[i]);
    static const char *const views[] = {"partition_status", "pending", "recent_events"};
    for (size_t i = 0; i < sizeof(views) / sizeof(views[0]); i++)
        ck_assert_msg(has_view(conn, "sidecar", views[i]), "view %s missing", views[i]);

    /* Users read the schema with \d+: every table and view is commented. */
    ck_assert_int_eq(count_of(conn,
                              "SELECT count(*) FROM pg_class c"
                              " JOIN pg_namespace n ON n.oid = c.relnamespace"
                              " WHERE n.nspname = $1 AND c.relkind IN ('r', 'v')"
                              " AND obj_description(c.oid, 'pg_class') IS NULL",
                              "sidecar"),
                     0);
    ck_assert_int_gt(count_of(conn,
                              "SELECT count(*) FROM pg_description d JOIN pg_class c"
                              " ON c.oid = d.objoid JOIN pg_namespace n ON n.oid = c.relnamespace"
                              " WHERE n.nspname = $1 AND c.relname = 'checkpoints'"
                              " AND d.objsubid > 0",
                              "sidecar"),
                     5);
    /* Nothing leaked into public through a missing search_path. */
    ck_assert_int_eq(relation_count(conn, "public", "rvSi"), 0);

    /* A few shapes the rest of the sidecar relies on. */
    char *type = hx_pg_value(conn,
                             "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                             " WHERE attrelid = 'sidecar.events'::regclass AND attname = 'xid'",
                             0, NULL);
    ck_assert_str_eq(type, "xid8");
    free(type);
    hx_pg_exec(conn, "INSERT INTO sidecar.checkpoints (pipeline, topic, partition)"
                     " VALUES ('p', 't', 0)");
    char *committed =
        hx_pg_value(conn, "SELECT committed_offset FROM sidecar.checkpoints", 0, NULL);
    ck_assert_ptr_null(committed); /* NULL = nothing committed yet */
    ck_assert_int_eq(hx_pg_int(conn,
                               "SELECT count(*) FROM sidecar.partition_status"
                               " WHERE lag IS NULL AND NOT lease_live",
                               0, NULL),
                     1);
    PGresult *res = PQexec(conn, "UPDATE sidecar.checkpoints SET pending_first_offset = 1");
    ck_assert_int_eq(PQresultStatus(res), PGRES_FATAL_ERROR);
    ck_assert_str_eq(PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME),
                     "checkpoints_pending_all_or_none");
    PQclear(res);
    PQfinish(conn);
}
END_TEST

START_TEST(second_run_is_a_noop)
{
    char dsn[512];
    fresh_db("m_noop", dsn);
    PGconn *conn = connect_or_fail(dsn);
    ck_assert_int_ge(apply_or_fail(conn, "sidecar"), 1);
    char *before = schema_fingerprint(conn, "sidecar");
    char *applied_at = hx_pg_value(conn,
                                   "SELECT string_agg(applied_at::text, ',')"
                                   " FROM sidecar.schema_migrations",
                                   0, NULL);

    ck_assert_int_eq(apply_or_fail(conn, "sidecar"), 0);
    PGconn *other = connect_or_fail(dsn);
    ck_assert_int_eq(apply_or_fail(other, "sidecar"), 0);
    PQfinish(other);

    ck_assert_int_eq(current_version(conn, "sidecar"), sc_migrate_latest_version());
    ck_assert_int_eq(hx_pg_int(conn, "SELECT count(*) FROM sidecar.schema_migrations", 0, NULL),
                     (long long)sc_sql_nfiles);
    char *after = schema_fingerprint(conn, "sidecar");
    ck_assert_str_eq(before, after);
    char *applied_at2 = hx_pg_value(conn,
                                    "SELECT string_agg(applied_at::text, ',')"
                                    " FROM sidecar.schema_migrations",
                                    0, NULL);
    ck_assert_str_eq(applied_at, applied_at2);
    free(before);
    free(after);
    free(applied_at);
    free(applied_at2);
    PQfinish(conn);
}
END_TEST

/*
 * Upgrades from what earlier builds applied: round 1 shipped versions 1 and 2; the build
 * before lease mode shipped 1, 2 and 4 (lease mode's migration came later, as 5).  Each
 * upgrade applies the rest in version order, keeps the rows, and ends with the same schema
 * as a fresh migration.
 */
START_TEST(upgrade_from_earlier_builds)
{
    char dsn[512];
    fresh_db("m_upgrade_fresh", dsn);
    PGconn *fresh = connect_or_fail(dsn);
    ck_assert_int_ge(apply_or_fail(fresh, "sidecar"), 1);
    char *want = schema_fingerprint(fresh, "sidecar");
    PQfinish(fresh);

    static const int shipped[][4] = {{1, 2, 0}, {1, 2, 4, 0}};
    for (size_t k = 0; k < sizeof(shipped) / sizeof(shipped[0]); k++) {
        char name[32];
        snprintf(name, sizeof(name), "m_upgrade_%zu", k);
        fresh_db(name, dsn);
        PGconn *conn = connect_or_fail(dsn);
        struct sc_sql_file old[8];
        size_t nold = 0;
        for (size_t i = 0; i < sc_sql_nfiles; i++)
            for (size_t j = 0; j < 4 && shipped[k][j]; j++)
                if (sc_migrate_version_of(sc_sql_files[i].name) == shipped[k][j] && nold < 8)
                    old[nold++] = sc_sql_files[i];
        char err[1024];
        ck_assert_int_eq(sc_migrate_apply_files(conn, "sidecar", old, nold, err, sizeof(err)),
                         (int)nold);
        hx_pg_exec(conn, "INSERT INTO sidecar.checkpoints (pipeline, topic, partition,"
                         " committed_offset) VALUES ('p1', 'orders', 0, 42)");
        int applied =
            sc_migrate_apply_files(conn, "sidecar", sc_sql_files, sc_sql_nfiles, err, sizeof(err));
        ck_assert_msg(applied == (int)(sc_sql_nfiles - nold), "upgrade %zu: %d applied: %s", k,
                      applied, err);
        ck_assert_int_eq(current_version(conn, "sidecar"), sc_migrate_latest_version());
        ck_assert_int_eq(hx_pg_int(conn,
                                   "SELECT committed_offset FROM sidecar.partition_status"
                                   " WHERE pipeline = 'p1' AND partition = 0",
                                   0, NULL),
                         42);
        char *got = schema_fingerprint(conn, "sidecar");
        ck_assert_msg(strcmp(got, want) == 0, "upgrade %zu: schema differs from a fresh one", k);
        free(got);
        PQfinish(conn);
    }
    free(want);
}
END_TEST

/* ---- concurrency -------------------------------------------------------------- */

/* Takes the migration lock of schema from the test's side. */
static void hold_migrate_lock(PGconn *conn, const char *schema, bool lock)
{
    char key[256];
    snprintf(key, sizeof(key), "kafka-sidecar:migrate:%s", schema);
    const char *params[] = {key};
    char *v = hx_pg_value(conn,
                          lock ? "SELECT pg_advisory_lock(hashtextextended($1, 0))::text"
                               : "SELECT pg_advisory_unlock(hashtextextended($1, 0))::text",
                          1, params);
    free(v);
}

struct waiters {
    PGconn *conn;
    long long want;
};

static bool lock_waiters_reach(void *arg)
{
    struct waiters *w = arg;
    return hx_pg_int(w->conn,
                     "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted", 0,
                     NULL) >= w->want;
}

struct migrator {
    const char *dsn;
    const char *schema;
    int result;
    char err[1024];
};

static void *migrator_main(void *arg)
{
    struct migrator *m = arg;
    m->result = -1;
    PGconn *conn = sc_pg_connect(m->dsn, "kafka-sidecar/test", 5000, m->err, sizeof(m->err));
    if (!conn)
        return NULL;
    m->result = sc_migrate_apply(conn, m->schema, m->err, sizeof(m->err));
    PQfinish(conn);
    return NULL;
}

START_TEST(concurrent_threads_migrate_once)
{
    char dsn[512];
    fresh_db("m_threads", dsn);
    PGconn *conn = connect_or_fail(dsn);
    hold_migrate_lock(conn, "sidecar", true);

    struct migrator m[3];
    pthread_t tid[3];
    for (int i = 0; i < 3; i++) {
        m[i] = (struct migrator){.dsn = dsn, .schema = "sidecar"};
        ck_assert_int_eq(pthread_create(&tid[i], NULL, migrator_main, &m[i]), 0);
    }
    struct waiters w = {conn, 3};
    ck_assert_msg(hx_wait_until(lock_waiters_reach, &w, 20000), "migrators never queued");
    hold_migrate_lock(conn, "sidecar", false);
    int total = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(tid[i], NULL);
        ck_assert_msg(m[i].result >= 0, "migrator %d: %s", i, m[i].err);
        total += m[i].result;
    }
    ck_assert_int_eq(total, (int)sc_sql_nfiles);
    ck_assert_int_eq(hx_pg_int(conn, "SELECT count(*) FROM sidecar.schema_migrations", 0, NULL),
                     (long long)sc_sql_nfiles);
    ck_assert_int_eq(current_version(conn, "sidecar"), sc_migrate_latest_version());
    PQfinish(conn);
}
END_TEST

/* This process's temp dir (kept in a static: hx_tmpdir() makes a new one per call). */
static const char *test_dir(void)
{
    static const char *dir;
    if (!dir)
        dir = hx_tmpdir();
    return dir;
}

/* Writes a config for `sidecar migrate` into the temp dir; returns its path (static). */
static const char *write_config(const char *name, const char *dsn, const char *schema)
{
    static char path[1024];
    snprintf(path, sizeof(path), "%s/%s.json", test_dir(), name);
    hx_write_file(path,
                  "{\n"
                  "  \"instance_id\": \"migrate-test\",\n"
                  "  \"postgres\": {\"dsn\": \"%s\", \"schema\": \"%s\"},\n"
                  "  \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:9\"},\n"
                  "  \"log\": {\"level\": \"info\", \"format\": \"text\"},\n"
                  "  \"pipelines\": [{\n"
                  "    \"name\": \"p\", \"group_id\": \"g\", \"topics\": [\"t\"],\n"
                  "    \"sink\": {\"type\": \"stdout\"}\n"
                  "  }]\n"
                  "}\n",
                  dsn, schema);
    return path;
}

START_TEST(binary_migrate_reports_version)
{
    char dsn[512];
    fresh_db("m_binary", dsn);
    const char *cfg = write_config("binary", dsn, "sidecar");
    const char *argv[] = {hx_sidecar_bin(), "migrate", "-c", cfg, NULL};
    char *out = NULL;
    int rc = hx_run(argv, NULL, 60000, &out);
    ck_assert_msg(rc == 0, "exit %d: %s", rc, out);
    char want[256];
    snprintf(want, sizeof(want), "schema \"sidecar\" is at version %d (applied %zu migration%s)\n",
             sc_migrate_latest_version(), sc_sql_nfiles, sc_sql_nfiles == 1 ? "" : "s");
    ck_assert_msg(strstr(out, want), "%s", out);
    free(out);
    rc = hx_run(argv, NULL, 60000, &out);
    ck_assert_msg(rc == 0, "exit %d: %s", rc, out);
    snprintf(want, sizeof(want), "schema \"sidecar\" is up to date (version %d)\n",
             sc_migrate_latest_version());
    ck_assert_msg(strstr(out, want), "%s", out);
    free(out);
}
END_TEST

START_TEST(concurrent_binaries_migrate_once)
{
    char dsn[512];
    fresh_db("m_procs", dsn);
    const char *cfg = write_config("procs", dsn, "sidecar");
    PGconn *conn = connect_or_fail(dsn);
    hold_migrate_lock(conn, "sidecar", true);

    pid_t pid[3];
    char logs[3][1024];
    for (int i = 0; i < 3; i++) {
        snprintf(logs[i], sizeof(logs[i]), "%s/migrate-%d.log", test_dir(), i);
        const char *argv[] = {hx_sidecar_bin(), "migrate", "-c", cfg, NULL};
        pid[i] = hx_spawn(argv, NULL, logs[i]);
    }
    struct waiters w = {conn, 3};
    ck_assert_msg(hx_wait_until(lock_waiters_reach, &w, 30000), "migrate processes never queued");
    hold_migrate_lock(conn, "sidecar", false);

    int applied = 0, up_to_date = 0;
    char want_applied[128], want_current[128];
    snprintf(want_applied, sizeof(want_applied), "(applied %zu migration%s)", sc_sql_nfiles,
             sc_sql_nfiles == 1 ? "" : "s");
    snprintf(want_current, sizeof(want_current), "is up to date (version %d)",
             sc_migrate_latest_version());
    for (int i = 0; i < 3; i++) {
        int rc = hx_wait(pid[i], 60000);
        char *log = hx_read_file(logs[i], NULL);
        ck_assert_msg(rc == 0, "migrate %d exited %d: %s", i, rc, log ? log : "");
        applied += strstr(log, want_applied) != NULL;
        up_to_date += strstr(log, want_current) != NULL;
        free(log);
    }
    ck_assert_int_eq(applied, 1);
    ck_assert_int_eq(up_to_date, 2);
    ck_assert_int_eq(hx_pg_int(conn, "SELECT count(*) FROM sidecar.schema_migrations", 0, NULL),
                     (long long)sc_sql_nfiles);
    PQfinish(conn);
}
END_TEST

/* ---- schema names that need quoting ------------------------------------------ */

START_TEST(quoted_schema_names)
{
    char dsn[512];
    fresh_db("m_quoted", dsn);
    PGconn *conn = connect_or_fail(dsn);
    static const char *const schemas[] = {"My-Schema", "it's \"odd\"", "sidecar"};
    for (size_t i = 0; i < sizeof(schemas) / sizeof(schemas[0]); i++) {
        const char *s = schemas[i];
        ck_assert_int_eq(current_version(conn, s), 0);
        ck_assert_int_eq(apply_or_fail(conn, s), (int)sc_sql_nfiles);
        ck_assert_int_eq(apply_or_fail(conn, s), 0);
        ck_assert_int_eq(current_version(conn, s), sc_migrate_latest_version());
        ck_assert_msg(has_table(conn, s, "checkpoints"), "%s: no checkpoints", s);
        ck_assert_msg(has_view(conn, s, "partition_status"), "%s: no partition_status", s);
    }
    /* Exactly those schemas, spelt exactly so, and nothing in lower-cased look-alikes. */
    ck_assert_int_eq(
        count_of(conn, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", "my-schema"), 0);
    ck_assert_int_eq(relation_count(conn, "My-Schema", "rv"),
                     relation_count(conn, "sidecar", "rv"));
    ck_assert_int_eq(relation_count(conn, "public", "rvSi"), 0);
    PQfinish(conn);
}
END_TEST

/* ---- failures ------------------------------------------------------------------ */

START_TEST(broken_second_migration_rolls_back)
{
    char dsn[512], err[1024];
    fresh_db("m_broken", dsn);
    PGconn *conn = connect_or_fail(dsn);
    const struct sc_sql_file files[] = {
        sc_sql_files[0],
        {"002_broken.sql", "CREATE TABLE must_not_exist (a int);\n"
                           "ALTER TABLE checkpoints ADD COLUMN nope int;\n"
                           "SELEC 1;\n"},
    };
    ck_assert_int_eq(sc_migrate_apply_files(conn, "sidecar", files, 2, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "migration 002_broken.sql failed: line 3: syntax error at or near "
                              "\"SELEC\" (schema left at version 1)") == err,
                  "%s", err);
    ck_assert_int_eq(current_version(conn, "sidecar"), 1);
    ck_assert(!has_table(conn, "sidecar", "must_not_exist"));
    ck_assert_int_eq(hx_pg_int(conn,
                               "SELECT count(*) FROM information_schema.columns WHERE"
                               " table_schema = 'sidecar' AND column_name = 'nope'",
                               0, NULL),
                     0);
    ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
    /* The connection is still usable and the lock was released. */
    ck_assert_int_eq(hx_pg_int(conn, "SELECT 1", 0, NULL), 1);
    PGconn *other = connect_or_fail(dsn);
    char *got = hx_pg_value(other,
                            "SELECT pg_try_advisory_lock(hashtextextended("
                            "'kafka-sidecar:migrate:sidecar', 0))::text",
                            0, NULL);
    ck_assert_str_eq(got, "true");
    free(got);
    PQfinish(other);

    /* Fixed, the same version applies. */
    const struct sc_sql_file fixed[] = {
        sc_sql_files[0],
        {"002_fixed.sql", "CREATE TABLE now_exists (a int);\n"},
    };
    ck_assert_int_eq(sc_migrate_apply_files(conn, "sidecar", fixed, 2, err, sizeof(err)), 1);
    ck_assert_int_eq(current_version(conn, "sidecar"), 2);
    ck_assert(has_table(conn, "sidecar", "now_exists"));
    /* Older than this binary's migrations: require_latest refuses; at or beyond them (an
     * upgrade under way, a newer binary migrated already): fine.  The version numbers come
     * from the embedded set, so a new migration does not break this. */
    ck_assert_int_eq(sc_migrate_require_latest(conn, "sidecar", err, sizeof(err)),
                     sc_migrate_latest_version() > 2 ? -1 : 0);
    char newer_name[32];
    snprintf(newer_name, sizeof(newer_name), "%03d_newer.sql", sc_migrate_latest_version() + 1);
    const struct sc_sql_file newer[] = {
        sc_sql_files[0],
        {"002_fixed.sql", "CREATE TABLE now_exists (a int);\n"},
        {newer_name, "CREATE TABLE newer (a int);\n"},
    };
    ck_assert_int_eq(sc_migrate_apply_files(conn, "sidecar", newer, 3, err, sizeof(err)), 1);
    ck_assert_int_eq(sc_migrate_require_latest(conn, "sidecar", err, sizeof(err)), 0);
    PQfinish(conn);
}
END_TEST

START_TEST(broken_first_migration_leaves_version_0)
{
    char dsn[512], err[1024];
    fresh_db("m_broken1", dsn);
    PGconn *conn = connect_or_fail(dsn);
    const struct sc_sql_file files[] = {
        {"001_bad.sql", "CREATE TABLE t (a int REFERENCES nowhere (id));"},
    };
    ck_assert_int_eq(sc_migrate_apply_files(conn, "s1", files, 1, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "migration 001_bad.sql failed: ") == err, "%s", err);
    ck_assert_msg(strstr(err, "\"nowhere\" does not exist"), "%s", err);
    ck_assert_msg(strstr(err, "(schema left at version 0)"), "%s", err);
    ck_assert_int_eq(current_version(conn, "s1"), 0);

    /* A file that commits by itself breaks the one-transaction rule: refused, not recorded. */
    const struct sc_sql_file commits[] = {
        {"001_commits.sql", "CREATE TABLE c (a int); COMMIT;"},
    };
    ck_assert_int_eq(sc_migrate_apply_files(conn, "s2", commits, 1, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "ended the transaction"), "%s", err);
    ck_assert_int_eq(current_version(conn, "s2"), 0);

    /* Not inside a caller's transaction. */
    hx_pg_exec(conn, "BEGIN");
    ck_assert_int_eq(sc_migrate_apply(conn, "s3", err, sizeof(err)), -1);
    ck_assert_str_eq(err, "cannot migrate inside an open transaction");
    hx_pg_exec(conn, "ROLLBACK");

    /* A rejected file list touches nothing. */
    const struct sc_sql_file dup[] = {sc_sql_files[0], sc_sql_files[0]};
    ck_assert_int_eq(sc_migrate_apply_files(conn, "s4", dup, 2, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "duplicate migration version 1"), "%s", err);
    ck_assert_int_eq(count_of(conn, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", "s4"),
                     0);
    PQfinish(conn);
}
END_TEST

START_TEST(pre_created_schema_without_create_privilege)
{
    /* A DBA made the schema for a role that may not create schemas. */
    char dsn[512];
    fresh_db("m_dba", dsn);
    PGconn *conn = connect_or_fail(dsn);
    hx_pg_exec(conn, "CREATE ROLE sidecar_app NOLOGIN");
    hx_pg_exec(conn, "REVOKE CREATE ON DATABASE m_dba FROM PUBLIC");
    hx_pg_exec(conn, "CREATE SCHEMA app_schema AUTHORIZATION sidecar_app");
    hx_pg_exec(conn, "SET ROLE sidecar_app");
    ck_assert_int_eq(apply_or_fail(conn, "app_schema"), (int)sc_sql_nfiles);
    ck_assert_int_eq(apply_or_fail(conn, "app_schema"), 0);
    /* Creating a schema of its own is refused, with the reason. */
    char err[1024];
    ck_assert_int_eq(sc_migrate_apply(conn, "other_schema", err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "could not create the schema: permission denied"), "%s", err);
    PQfinish(conn);
}
END_TEST

/* A local TCP port nobody listens on (bound, not listening: connections are refused). */
static int closed_port(int *fd)
{
    *fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(*fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(*fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    ck_assert_int_eq(getsockname(*fd, (struct sockaddr *)&a, &len), 0);
    return ntohs(a.sin_port);
}

START_TEST(unreachable_server)
{
    int fd;
    int port = closed_port(&fd);
    char dsn[512], where[64], err[1024];
    snprintf(where, sizeof(where), "127.0.0.1:%d/postgres as postgres: ", port);

    snprintf(dsn, sizeof(dsn),
             "host=127.0.0.1 port=%d user=postgres password=TOPSECRET dbname=postgres", port);
    ck_assert_ptr_null(sc_pg_connect(dsn, "t", 2000, err, sizeof(err)));
    ck_assert_msg(strstr(err, "could not connect to PostgreSQL at ") == err, "%s", err);
    ck_assert_msg(strstr(err, where), "%s", err);
    ck_assert_msg(strstr(err, "refused"), "%s", err);
    ck_assert_msg(!strstr(err, "TOPSECRET"), "%s", err);

    snprintf(dsn, sizeof(dsn), "postgresql://postgres:TOPSECRET@127.0.0.1:%d/postgres", port);
    ck_assert_ptr_null(sc_pg_connect(dsn, "t", 2000, err, sizeof(err)));
    ck_assert_msg(strstr(err, where), "%s", err);
    ck_assert_msg(!strstr(err, "TOPSECRET"), "%s", err);

    /* The binary: exit 1, the target named, the password not. */
    const char *cfg = write_config("unreachable", dsn, "sidecar");
    const char *argv[] = {hx_sidecar_bin(), "migrate", "-c", cfg, NULL};
    char *out = NULL;
    int rc = hx_run(argv, NULL, 60000, &out);
    ck_assert_msg(rc == 1, "exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, where), "%s", out);
    ck_assert_msg(!strstr(out, "TOPSECRET"), "%s", out);
    free(out);
    close(fd);
}
END_TEST

/* ---- libpq helpers against a server --------------------------------------------- */

static char *conninfo_value(PGconn *conn, const char *key)
{
    PQconninfoOption *opts = PQconninfo(conn);
    char *v = NULL;
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (strcmp(o->keyword, key) == 0 && o->val)
            v = strdup(o->val);
    PQconninfoFree(opts);
    return v;
}

static void check_setting(PGconn *conn, const char *key, const char *want)
{
    char *v = conninfo_value(conn, key);
    ck_assert_msg(v && strcmp(v, want) == 0, "%s = %s, want %s", key, v ? v : "(unset)", want);
    free(v);
}

START_TEST(connect_settings)
{
    char dsn[512], err[512], dsn2[600];
    fresh_db("m_connect", dsn);
    PGconn *conn = sc_pg_connect(dsn, "kafka-sidecar/test", 1500, err, sizeof(err));
    ck_assert_msg(conn, "%s", err);
    char *app = hx_pg_value(conn, "SHOW application_name", 0, NULL);
    ck_assert_str_eq(app, "kafka-sidecar/test");
    free(app);
    check_setting(conn, "connect_timeout", "2"); /* 1.5 s rounded up */
    check_setting(conn, "keepalives", "1");
    check_setting(conn, "keepalives_idle", "10");
    check_setting(conn, "keepalives_interval", "5");
    check_setting(conn, "keepalives_count", "3");
    PQfinish(conn);

    /* What the DSN says explicitly wins. */
    snprintf(dsn2, sizeof(dsn2), "%s application_name=mine connect_timeout=7 keepalives_idle=30",
             dsn);
    conn = sc_pg_connect(dsn2, "kafka-sidecar/test", 1500, err, sizeof(err));
    ck_assert_msg(conn, "%s", err);
    app = hx_pg_value(conn, "SHOW application_name", 0, NULL);
    ck_assert_str_eq(app, "mine");
    free(app);
    check_setting(conn, "connect_timeout", "7");
    check_setting(conn, "keepalives_idle", "30");
    PQfinish(conn);
}
END_TEST

static enum sc_pg_errclass raise_class(PGconn *conn, const char *sqlstate, char *msg, size_t size)
{
    char sql[256];
    snprintf(sql, sizeof(sql),
             "DO $$ BEGIN RAISE EXCEPTION 'raised %s' USING ERRCODE = '%s'; END $$", sqlstate,
             sqlstate);
    PGresult *res = PQexec(conn, sql);
    enum sc_pg_errclass c = sc_pg_classify(conn, res);
    sc_pg_errmsg(conn, res, msg, size);
    PQclear(res);
    return c;
}

START_TEST(classify_sqlstates)
{
    char dsn[512], msg[256], want[64];
    fresh_db("m_classify", dsn);
    PGconn *conn = connect_or_fail(dsn);
    /* 57014: statement_timeout or pg_cancel_backend(), class 53: the server is short of
     * something; both pass (chaos_check_pg_faults). */
    static const char *const retry[] = {"40001", "40P01", "57P01", "57P02", "57P03",
                                        "57014", "53000", "53100", "53200", "53300",
                                        "55P03", "08006", "08000"};
    for (size_t i = 0; i < sizeof(retry) / sizeof(retry[0]); i++) {
        ck_assert_msg(raise_class(conn, retry[i], msg, sizeof(msg)) == SC_PG_RETRY, "%s", retry[i]);
        snprintf(want, sizeof(want), "raised %s", retry[i]);
        ck_assert_str_eq(msg, want);
    }
    static const char *const permanent[] = {"23505", "22012", "42601", "42P01", "P0001", "53400"};
    for (size_t i = 0; i < sizeof(permanent) / sizeof(permanent[0]); i++)
        ck_assert_msg(raise_class(conn, permanent[i], msg, sizeof(msg)) == SC_PG_PERMANENT, "%s",
                      permanent[i]);

    PGresult *res = PQexec(conn, "SELECT 1");
    ck_assert_int_eq(sc_pg_classify(conn, res), SC_PG_OK);
    PQclear(res);
    res = PQexec(conn, "SELECT 1/0");
    ck_assert_int_eq(sc_pg_classify(conn, res), SC_PG_PERMANENT);
    ck_assert_str_eq(sc_pg_errmsg(conn, res, msg, sizeof(msg)), "division by zero");
    PQclear(res);

    /* An error libpq made itself (no SQLSTATE) on a connection it still calls fine: the
     * link failed, not the statement, so retry (it was permanent, and stopped partitions
     * during PostgreSQL restarts). */
    res = PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
    ck_assert_int_eq(PQstatus(conn), CONNECTION_OK);
    ck_assert_int_eq(sc_pg_classify(conn, res), SC_PG_RETRY);
    PQclear(res);

    /* A connection that dies under us: retry. */
    res = PQexec(conn, "SELECT pg_terminate_backend(pg_backend_pid())");
    ck_assert_int_eq(sc_pg_classify(conn, res), SC_PG_RETRY);
    PQclear(res);
    res = PQexec(conn, "SELECT 1");
    ck_assert_int_eq(sc_pg_classify(conn, res), SC_PG_RETRY);
    PQclear(res);
    PQfinish(conn);
}
END_TEST

static Suite *migrate_suite(void)
{
    Suite *s = suite_create("migrate");
    TCase *tc = tcase_create("migrate");
    tcase_add_unchecked_fixture(tc, pg_setup, pg_teardown);
    tcase_add_test(tc, fresh_migrate_creates_everything);
    tcase_add_test(tc, second_run_is_a_noop);
    tcase_add_test(tc, upgrade_from_earlier_builds);
    tcase_add_test(tc, concurrent_threads_migrate_once);
    tcase_add_test(tc, binary_migrate_reports_version);
    tcase_add_test(tc, concurrent_binaries_migrate_once);
    tcase_add_test(tc, quoted_schema_names);
    tcase_add_test(tc, broken_second_migration_rolls_back);
    tcase_add_test(tc, broken_first_migration_leaves_version_0);
    tcase_add_test(tc, pre_created_schema_without_create_privilege);
    tcase_add_test(tc, unreachable_server);
    tcase_add_test(tc, connect_settings);
    tcase_add_test(tc, classify_sqlstates);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(migrate_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
