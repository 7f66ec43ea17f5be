/*
 * check_pg_sink_crash.c - invariant I6 for the postgres sink under kill -9.
 *
 * Three `sidecar run` processes share one consumer group over six
 * partitions while 30,000 records are produced; the test SIGKILLs them at
 * random moments and failpoints make them kill themselves at the steps of
 * the protocol.  At the end the table must hold every source record exactly
 * once with the produced key and value, and every checkpoint must be
 * committed.  What a case must have seen (a group, a replay) may not
 * happen by chance in the chaos: then rounds that start every instance
 * with records waiting on all partitions make it happen (scx_chaos_until()).
 *
 *  - same database: rows and checkpoint in one transaction.  Kills land
 *    after the rows and the checkpoint advance were sent but before COMMIT
 *    (pg_before_commit) and after COMMIT (after_commit).  Again with one
 *    worker per instance, which then writes several partitions' batches
 *    in one transaction (and must have).  A BEFORE INSERT
 *    trigger counts every committed attempt to insert a record, including
 *    ones ON CONFLICT would skip, so a record delivered twice is seen even
 *    though the primary key keeps the table itself clean.
 *  - another database, default columns (COPY; a replay conflicts and falls
 *    back to INSERT ... ON CONFLICT) and custom columns upserted on a user
 *    key with the offset guard: kills between pend and write, between
 *    write and commit, and after commit.  Replays must have happened.
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "scx_chaos.h"

#define NPARTS    6 /* scx_chaos's 10 chunks x 500 records x 6 = 30,000 records */
#define INSTANCES 3
/* Records per partition in a backlog round (scx_chaos_backlog()). */
#define BACKLOG 2000

/*
 * Asserts the rows of `select` (partition, offset, key, value as JSON text,
 * ordered by partition and offset): per partition offsets 0..count-1 once
 * each, with the key and value hx_produce_seq() gave that offset.
 */
static void verify_rows(PGconn *conn, const char *select, int64_t count)
{
    PGresult *res = PQexec(conn, select);
    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s: %s", select, PQerrorMessage(conn));
    int64_t row = 0;
    for (int p = 0; p < NPARTS; p++) {
        for (int64_t off = 0; off < count; off++, row++) {
            ck_assert_msg(row < PQntuples(res), "partition %d: only %" PRId64 " rows", p, off);
            int got_p = atoi(PQgetvalue(res, (int)row, 0));
            int64_t got_off = strtoll(PQgetvalue(res, (int)row, 1), NULL, 10);
            ck_assert_msg(got_p == p && got_off == off,
                          "row %" PRId64 ": partition %d offset %" PRId64 ", expected %d/%" PRId64
                          " (a record lost or duplicated)",
                          row, got_p, got_off, p, off);
            char key[32], want[512];
            snprintf(key, sizeof(key), "k%" PRId64, off);
            ck_assert_str_eq(PQgetvalue(res, (int)row, 2), key);
            json_error_t jerr;
            json_t *got = json_loads(PQgetvalue(res, (int)row, 3), 0, &jerr);
            json_t *exp = json_loads(hx_seq_value("orders", p, off, want, sizeof(want)), 0, &jerr);
            ck_assert_msg(got && exp && json_equal(got, exp), "%d/%" PRId64 ": value %s, want %s",
                          p, off, PQgetvalue(res, (int)row, 3), want);
            json_decref(got);
            json_decref(exp);
        }
    }
    ck_assert_msg(row == PQntuples(res), "%d rows, expected %" PRId64, PQntuples(res), row);
    PQclear(res);
}

static void check_checkpoints(PGconn *conn, int64_t produced)
{
    char n[32];
    snprintf(n, sizeof(n), "%" PRId64, produced);
    const char *p[] = {n};
    ck_assert_int_eq(hx_pg_int(conn,
                               "SELECT count(*) FROM sidecar.checkpoints WHERE committed_offset = "
                               "$1::bigint AND pending_first_offset IS NULL AND state = 'ok'",
                               1, p),
                     NPARTS);
    ck_assert_int_eq(hx_pg_int(conn, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL), 0);
}

/* Commits of several partitions in one transaction share its xid. */
static long long grouped_commits(PGconn *conn)
{
    return hx_pg_int(conn,
                     "SELECT count(*) FROM (SELECT xid FROM sidecar.events WHERE "
                     "kind = 'commit' GROUP BY xid HAVING count(*) > 1) g",
                     0, NULL);
}

/* scx_chaos_until(): a transaction of several partitions committed. */
static bool group_committed(struct scx_chaos *c, void *arg)
{
    (void)arg;
    return grouped_commits(c->e->conn) > 0;
}

/* workers: 1 puts each instance's partitions on one worker, which then writes the batches
 * of several partitions in one transaction (grouped). */
static void run_same_db(int workers)
{
    struct scx_env e;
    const char *topics[] = {"orders:6"};
    scx_env_start(&e, 3, topics, 1);
    srand((unsigned)time(NULL));
    scx_create_audited_events(e.conn);
    struct scx_opts o = {
        .sink = "{\"type\": \"postgres\", \"table\": \"app.events\"}",
        .max_records = 50,
        .max_wait_ms = 10,
        .workers = workers,
    };
    struct scx_inst in[INSTANCES] = {
        {.name = "sc-1", .failpoints = "pg_before_commit=kill@0.02"},
        {.name = "sc-2", .failpoints = "after_commit=kill@0.02"},
        {.name = "sc-3", .failpoints = "pg_before_commit=kill@0.01,after_commit=kill@0.01"},
    };
    struct scx_chaos c;
    scx_chaos_init(&c, &e, in, INSTANCES, NPARTS);
    scx_chaos_start(&c, &o);
    scx_chaos_kill(&c);
    scx_chaos_settle(&c);
    /* Most kills land while the consumer group rebalances, and an instance holds records of
     * two partitions at once only by chance.  One that starts with a backlog on both of its
     * partitions writes groups from its first turns: start them so, with their failpoints,
     * until a group committed. */
    if (workers == 1)
        scx_chaos_until(&c, group_committed, NULL, BACKLOG, NULL);
    long long grouped = grouped_commits(e.conn);
    fprintf(stderr,
            "pg sink, same database, %s: %d kills by the test (%d of a working instance), %d at "
            "failpoints, "
            "%lld transactions of several partitions (%d rounds started with a backlog)\n",
            workers == 1 ? "one worker" : "default workers", c.kills, c.kills_working, c.self_kills,
            grouped, c.backlog_rounds);
    ck_assert_int_ge(c.kills + c.self_kills, c.min_kills);
    if (workers == 1)
        ck_assert_int_gt(grouped, 0);

    verify_rows(e.conn,
                "SELECT partition, \"offset\", key, value::text FROM app.events "
                "WHERE topic = 'orders' ORDER BY partition, \"offset\"",
                c.produced);
    /* One committed insert attempt per record: nothing was delivered twice. */
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM app.audit", 0, NULL),
                     c.produced * NPARTS);
    check_checkpoints(e.conn, c.produced);
    /* No pending step in this mode. */
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'pend'", 0, NULL), 0);
    scx_env_stop(&e);
}

START_TEST(test_same_db)
{
    run_same_db(0);
}
END_TEST

START_TEST(test_same_db_grouped)
{
    run_same_db(1);
}
END_TEST

static void run_other_db(bool custom)
{
    struct scx_env e;
    const char *topics[] = {"orders:6"};
    scx_env_start(&e, 3, topics, 1);
    srand((unsigned)time(NULL));
    char target_dsn[512], sink[1024];
    hx_pg_create_db(&e.pg, "target", target_dsn, sizeof(target_dsn));
    if (custom)
        snprintf(sink, sizeof(sink),
                 "{\"type\": \"postgres\", \"dsn\": \"%s\", \"table\": \"app.latest\","
                 " \"mode\": \"upsert\", \"columns\": {\"part\": \"$partition\","
                 " \"seq\": \"$.seq\", \"src_offset\": \"$offset\", \"k\": \"$key\","
                 " \"doc\": \"$value\"}, \"key_columns\": [\"part\", \"seq\"]}",
                 target_dsn);
    else
        snprintf(sink, sizeof(sink),
                 "{\"type\": \"postgres\", \"dsn\": \"%s\", \"table\": \"app.events\","
                 " \"mode\": \"upsert\"}",
                 target_dsn);
    struct scx_opts o = {.sink = sink, .max_records = 50, .max_wait_ms = 10};
    struct scx_inst in[INSTANCES] = {
        {.name = "sc-1", .failpoints = "after_pend=kill@0.02"},
        {.name = "sc-2", .failpoints = "after_write=kill@0.02"},
        {.name = "sc-3", .failpoints = "after_commit=kill@0.02"},
    };
    struct scx_chaos c;
    scx_chaos_init(&c, &e, in, INSTANCES, NPARTS);
    scx_chaos_start(&c, &o);
    scx_chaos_kill(&c);
    scx_chaos_settle(&c);
    /* The kills that leave a batch to replay (between pend and commit) are a matter of
     * chance: if none did, sc-1 kills itself after its first pend, with a backlog waiting. */
    scx_chaos_until(&c, scx_chaos_replayed, NULL, BACKLOG, "after_pend=kill#1");
    long long replays = scx_chaos_replays(&c);
    fprintf(stderr,
            "pg sink, other database (%s columns): %d kills by the test (%d of a working "
            "instance), %d at failpoints, "
            "%lld replayed batches (%d rounds started with a backlog)\n",
            custom ? "custom" : "default", c.kills, c.kills_working, c.self_kills, replays,
            c.backlog_rounds);
    ck_assert_int_ge(c.kills + c.self_kills, c.min_kills);
    ck_assert_int_gt(replays, 0);

    PGconn *t = hx_pg_connect(target_dsn);
    if (custom)
        verify_rows(t,
                    "SELECT part, src_offset, k, doc::text FROM app.latest "
                    "WHERE seq::bigint = src_offset ORDER BY part, src_offset",
                    c.produced);
    else
        verify_rows(t,
                    "SELECT partition, \"offset\", key, value::text FROM app.events "
                    "WHERE topic = 'orders' ORDER BY partition, \"offset\"",
                    c.produced);
    ck_assert_int_eq(
        hx_pg_int(t, custom ? "SELECT count(*) FROM app.latest" : "SELECT count(*) FROM app.events",
                  0, NULL),
        c.produced * NPARTS);
    PQfinish(t);
    check_checkpoints(e.conn, c.produced);
    scx_env_stop(&e);
}

START_TEST(test_other_db_default_columns)
{
    run_other_db(false);
}
END_TEST

START_TEST(test_other_db_custom_columns)
{
    run_other_db(true);
}
END_TEST

int main(void)
{
    /* One case per scenario, so each can be run alone: CK_RUN_CASE=same-db ... */
    const struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"same-db", test_same_db},
        {"same-db-grouped", test_same_db_grouped},
        {"other-db-default", test_other_db_default_columns},
        {"other-db-custom", test_other_db_custom_columns},
    };
    Suite *s = suite_create("pg_sink_crash");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_set_timeout(tc, 900);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
