/*
 * check_delivery.c - the delivery path end to end with the real binary:
 * records produced to the mock cluster land in the file sink exactly once
 * and in order, checkpoints and events describe it, a restart continues
 * where it stopped, and start_from latest skips the backlog but nothing
 * produced after the start.
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "scx.h"

/* The committed batches' offset ranges in commit order, e.g. "0-7 8-8" (malloc'd). */
static char *commit_ranges(PGconn *conn)
{
    return hx_pg_value(conn,
                       "SELECT string_agg(first_offset || '-' || last_offset, ' ' ORDER BY id) "
                       "FROM sidecar.events WHERE kind = 'commit'",
                       0, NULL);
}

START_TEST(test_deliver_restart_continue)
{
    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 1, topics, 1);
    int port = scx_free_port();
    struct scx_opts o = {.admin_port = port};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);

    hx_produce_seq(e.mock.bootstrap, "orders", 4, 0, 500);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 4, 500, 60000),
                  "records not committed in time:\n%s", scx_log_tail(log, 4000));

    /* Live records keep flowing. */
    hx_produce_seq(e.mock.bootstrap, "orders", 4, 500, 250);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 4, 750, 30000));

    long status;
    char *body = scx_http_get(port, "/healthz", NULL, &status);
    ck_assert_int_eq(status, 200);
    free(body);
    body = scx_http_get(port, "/metrics", NULL, &status);
    ck_assert_int_eq(status, 200);
    ck_assert_double_eq(scx_metric(body, "sidecar_records_delivered_total", "topic=\"orders\""),
                        3000);
    ck_assert_double_eq(scx_metric(body, "sidecar_partitions_owned", ""), 4);
    free(body);
    bool ready = false;
    for (int i = 0; i < 100 && !ready; i++) {
        body = scx_http_get(port, "/readyz", NULL, &status);
        ready = status == 200;
        free(body);
        if (!ready)
            usleep(100000);
    }
    ck_assert_msg(ready, "/readyz never became ready");

    scx_stop(pid, 15000);
    /* Leases were released on shutdown (expired now), so a successor need not wait. */
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.leases WHERE expires_at > now()", 0, NULL),
        0);

    /* Records produced while no sidecar runs are picked up from the checkpoint. */
    hx_produce_seq(e.mock.bootstrap, "orders", 4, 750, 250);
    pid = scx_start(&e, cfg, "sc-1b", NULL);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 4, 1000, 60000));
    scx_stop(pid, 15000);
    scx_verify_files(&e, "p1", "orders", 4, 1000);

    /* Events: every commit is there, per partition in offset order. */
    long long commits =
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'commit'", 0, NULL);
    ck_assert_int_gt(commits, 0);
    long long disorder = hx_pg_int(
        e.conn,
        "SELECT count(*) FROM (SELECT first_offset, lag(last_offset) OVER (PARTITION BY topic, "
        "partition ORDER BY id) AS prev FROM sidecar.events WHERE kind IN ('commit','replay')) s "
        "WHERE prev IS NOT NULL AND first_offset <> prev + 1",
        0, NULL);
    ck_assert_int_eq(disorder, 0);
    long long leases =
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'lease'", 0, NULL);
    ck_assert_int_ge(leases, 8); /* 4 acquire + 4 release, twice */
    scx_env_stop(&e);
}
END_TEST

START_TEST(test_start_from_latest)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {.start_from = "latest"};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 100); /* backlog: skipped */
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    /* The start offset becomes a checkpoint before anything is delivered. */
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 2, 100, 30000));
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 100, 50);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 2, 150, 30000));
    scx_stop(pid, 15000);
    for (int p = 0; p < 2; p++) {
        char path[800];
        snprintf(path, sizeof(path), "%s/orders/%d.jsonl", e.out_dir, p);
        size_t len;
        char *d = hx_read_file(path, &len);
        ck_assert_ptr_nonnull(d);
        int lines = 0;
        for (char *c = d; *c; c++)
            lines += *c == '\n';
        ck_assert_int_eq(lines, 50);
        ck_assert_ptr_nonnull(strstr(d, "\"offset\":100,"));
        ck_assert_ptr_null(strstr(d, "\"offset\":99,"));
        free(d);
    }
    scx_env_stop(&e);
}
END_TEST

/*
 * Batches are cut exactly where batch.max_records and batch.max_bytes say
 * (keys and values count; the record that reaches max_bytes is in the batch
 * if it lands on it or is alone, else it starts the next one), whatever the
 * worker buffered beyond them.  Every batch here is full, so none leaves by
 * max_wait_ms.
 */
START_TEST(test_batch_limits)
{
    struct scx_env e;
    const char *topics[] = {"orders:1"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {.max_records = 8, .max_bytes = 1024, .max_wait_ms = 3000};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);

    /* 8 records: max_records; one too big, alone; 1024 bytes exactly; two, as a third would
     * go beyond; one, as 400 + 700 would; 1024 bytes exactly. */
    static const size_t sizes[] = {10,  10,  10,  10,  10,  10,  10,  10,  2000,
                                   256, 256, 256, 256, 400, 400, 400, 700, 324};
    const size_t n = sizeof(sizes) / sizeof(sizes[0]);
    static char value[2000];
    memset(value, 'v', sizeof(value));
    struct hx_record recs[sizeof(sizes) / sizeof(sizes[0])];
    for (size_t i = 0; i < n; i++)
        recs[i] = (struct hx_record){.topic = "orders", .value = value, .value_len = sizes[i]};
    hx_produce(e.mock.bootstrap, recs, n);

    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 1, (int64_t)n, 30000),
                  "records not committed in time:\n%s", scx_log_tail(log, 4000));
    scx_stop(pid, 15000);
    char *batches = commit_ranges(e.conn);
    ck_assert_str_eq(batches, "0-7 8-8 9-12 13-14 15-15 16-17");
    free(batches);
    scx_env_stop(&e);
}
END_TEST

/* Whether the file sink's output file (arg) holds 50 lines. */
static bool fifty_lines(void *arg)
{
    size_t len = 0, lines = 0;
    char *data = hx_read_file(arg, &len);
    for (size_t i = 0; data && i < len; i++)
        lines += data[i] == '\n';
    free(data);
    return lines >= 50;
}

/*
 * batch.max_wait_ms counts from the Kafka timestamp once a partition is
 * caught up: 50 records produced a minute ago (CreateTime), fewer than a
 * full batch, are written as soon as they are all buffered instead of
 * waiting max_wait_ms (30 s here) after their arrival.  (Not the end of a
 * backlog: no batch was full.)
 */
START_TEST(test_old_records_not_held_back)
{
    struct scx_env e;
    const char *topics[] = {"orders:1"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {.max_records = 100, .max_wait_ms = 30000};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t minute_ago = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 - 60000;
    enum {
        N = 50
    };
    static struct hx_record recs[N];
    static char values[N][16];
    for (int i = 0; i < N; i++) {
        int len = snprintf(values[i], sizeof(values[i]), "v%d", i);
        recs[i] = (struct hx_record){.topic = "orders",
                                     .value = values[i],
                                     .value_len = (size_t)len,
                                     .timestamp = minute_ago + i};
    }
    hx_produce(e.mock.bootstrap, recs, N);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    /* Held back by max_wait_ms, the batch would be written after 30 s; 20 s leave room for a
     * slow machine and cannot be met by waiting the window out. */
    char path[800];
    snprintf(path, sizeof(path), "%s/orders/0.jsonl", e.out_dir);
    ck_assert_msg(hx_wait_until(fifty_lines, path, 20000),
                  "records a minute old waited for max_wait_ms:\n%s", scx_log_tail(log, 4000));
    /* Its commit still waits for the batch after it (or, as here, for the shutdown). */
    scx_stop(pid, 15000);
    char *batches = commit_ranges(e.conn);
    ck_assert_str_eq(batches, "0-49");
    free(batches);
    scx_env_stop(&e);
}
END_TEST

/*
 * The end of a backlog is not held back by max_wait_ms (4 s here): once the
 * partition has caught up and nothing arrived for a quarter of it, the last
 * partial batch is pended, written and committed (it used to wait 4 s to be
 * pended and 4 s more to be committed).  Records that then trickle in
 * gather for the whole max_wait_ms again: one batch per record would mean
 * the rule did not switch off.
 */
START_TEST(test_backlog_end_not_held_back)
{
    struct scx_env e;
    const char *topics[] = {"orders:1"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {.max_records = 100, .max_wait_ms = 4000};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 1, 0, 250);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 1, 250, 60000),
                  "backlog not committed in time:\n%s", scx_log_tail(log, 4000));
    long long ms = hx_pg_int(e.conn,
                             "SELECT (extract(epoch FROM max(at) - min(at)) * 1000)::bigint FROM "
                             "sidecar.events WHERE kind IN ('lease', 'commit')",
                             0, NULL);
    ck_assert_msg(ms < 5000, "the last partial batch committed %lld ms after the lease", ms);
    char *batches = commit_ranges(e.conn);
    ck_assert_str_eq(batches, "0-99 100-199 200-249");
    free(batches);

    /* A trickle, a record every 1.5 s (more than the 1 s "quiet" apart, less than
     * max_wait_ms): the first two or three still count as the end of the backlog (a full
     * batch was cut less than max_wait_ms before they came), then batches gather for
     * max_wait_ms again. */
    int64_t next = hx_now_ms();
    for (int i = 0; i < 8; i++) {
        /* 1.5 s from one produce's start to the next, however long producing takes here. */
        while (hx_now_ms() < next)
            usleep(10000);
        next = hx_now_ms() + 1500;
        hx_produce_seq(e.mock.bootstrap, "orders", 1, 250 + i, 1);
    }
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 1, 258, 30000));
    long long trickle = hx_pg_int(e.conn,
                                  "SELECT count(*) FROM sidecar.events WHERE kind = 'commit' AND "
                                  "first_offset >= 250",
                                  0, NULL);
    ck_assert_msg(trickle <= 6, "8 trickled records took %lld batches", trickle);
    scx_stop(pid, 15000);
    scx_verify_files(&e, "p1", "orders", 1, 258);
    scx_env_stop(&e);
}
END_TEST

START_TEST(test_two_pipelines_in_one_process)
{
    /* Each pipeline has its own consumer, group, leases, checkpoints and sink. */
    struct scx_env e;
    const char *topics[] = {"orders:3", "audit:2"};
    scx_env_start(&e, 1, topics, 2);
    char path[700];
    snprintf(path, sizeof(path), "%s/two.json", e.dir);
    hx_write_file(
        path,
        "{\"instance_id\": \"sc-two\", \"postgres\": {\"dsn\": \"%s\"},\n"
        " \"kafka\": {\"bootstrap.servers\": \"%s\", \"properties\":"
        " {\"session.timeout.ms\": \"6000\"}},\n"
        " \"admin\": {\"listen\": \"\"}, \"log\": {\"format\": \"text\"},\n"
        " \"pipelines\": [\n"
        "  {\"name\": \"orders-files\", \"topics\": [\"orders\"], \"workers\": 2,\n"
        "   \"batch\": {\"max_records\": 100, \"max_wait_ms\": 20},\n"
        "   \"sink\": {\"type\": \"file\", \"path\": \"%s/{topic}/{partition}.jsonl\"}},\n"
        "  {\"name\": \"audit-table\", \"topics\": [\"audit\"], \"workers\": 1,\n"
        "   \"sink\": {\"type\": \"postgres\", \"table\": \"audit_rows\"}}]}\n",
        e.dsn, e.mock.bootstrap, e.out_dir);
    scx_migrate(path);
    hx_produce_seq(e.mock.bootstrap, "orders", 3, 0, 400);
    hx_produce_seq(e.mock.bootstrap, "audit", 2, 0, 300);
    pid_t pid = scx_start(&e, path, "sc-two", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-two.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "orders-files", "orders", 3, 400, 60000), "%s",
                  scx_log_tail(log, 3000));
    ck_assert_msg(scx_wait_committed(e.conn, "audit-table", "audit", 2, 300, 60000), "%s",
                  scx_log_tail(log, 3000));
    scx_stop(pid, 20000);
    scx_verify_files(&e, "orders-files", "orders", 3, 400);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM audit_rows", 0, NULL), 600);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(DISTINCT (partition, \"offset\")) FROM audit_rows", 0,
                               NULL),
                     600);
    /* Two consumer groups, one per pipeline. */
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT count(DISTINCT pipeline) FROM sidecar.leases", 0, NULL), 2);
    scx_env_stop(&e);
}
END_TEST

/*
 * Grouped commits: one worker, four partitions, each with a written batch
 * held back for max_wait_ms (5 s) and a new record buffered meanwhile.  When
 * the first is due, the four commits and the four pends of the next batches
 * go in one statement: one transaction, one event pair per partition, each
 * in offset order, and the delivery is exactly once.  (With the grouping
 * switched off the four commits are four transactions.)
 */
START_TEST(test_due_commits_grouped)
{
    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {.workers = 1, .max_wait_ms = 5000};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 4, 0, 1);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    /* Each partition's first record pended (and written at once, then held back). */
    int64_t end = hx_now_ms() + 60000;
    while (scx_events(e.conn, "pend", NULL) < 4 && hx_now_ms() < end)
        usleep(20000);
    ck_assert_msg(scx_events(e.conn, "pend", NULL) == 4, "first batches not pended:\n%s",
                  scx_log_tail(log, 4000));
    ck_assert_int_eq(scx_events(e.conn, "commit", NULL), 0); /* still held back */
    hx_produce_seq(e.mock.bootstrap, "orders", 4, 1, 1);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 4, 2, 60000),
                  "records not committed in time:\n%s", scx_log_tail(log, 4000));
    scx_stop(pid, 15000);
    scx_verify_files(&e, "p1", "orders", 4, 2);

    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(DISTINCT xid) FROM sidecar.events WHERE kind = "
                               "'commit' AND first_offset = 0",
                               0, NULL),
                     1);
    char *tx = hx_pg_value(e.conn,
                           "SELECT string_agg(partition || ':' || kind || ':' || first_offset,"
                           " ' ' ORDER BY id) FROM sidecar.events WHERE xid = (SELECT xid FROM"
                           " sidecar.events WHERE kind = 'commit' AND first_offset = 0 LIMIT 1)",
                           0, NULL);
    ck_assert_str_eq(tx, "0:commit:0 0:pend:1 1:commit:0 1:pend:1 2:commit:0 2:pend:1 "
                         "3:commit:0 3:pend:1");
    free(tx);
    scx_env_stop(&e);
}
END_TEST

/*
 * A grouped commit the server refuses (here a trigger that refuses only the
 * grouped statement, as a constraint or an operator's trigger could) changed
 * nothing: the worker commits the partitions one by one instead, and none of
 * them stops in the error state for it.  (Stopping the partitions on the
 * grouped refusal fails this test: they end in the error state.)
 */
START_TEST(test_refused_group_commits_one_by_one)
{
    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {.workers = 1, .max_wait_ms = 3000};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_pg_exec(e.conn, "CREATE SEQUENCE refusals"); /* counts across rollbacks */
    hx_pg_exec(e.conn,
               "CREATE FUNCTION refuse_groups() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
               " IF current_query() LIKE '%WITH ORDINALITY%' THEN PERFORM nextval('refusals');"
               " RAISE EXCEPTION 'no grouped commits here'; END IF; RETURN NEW; END $$");
    hx_pg_exec(e.conn, "CREATE TRIGGER refuse_groups BEFORE UPDATE ON sidecar.checkpoints"
                       " FOR EACH ROW EXECUTE FUNCTION refuse_groups()");
    hx_produce_seq(e.mock.bootstrap, "orders", 4, 0, 1);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    int64_t end = hx_now_ms() + 60000;
    while (scx_events(e.conn, "pend", NULL) < 4 && hx_now_ms() < end)
        usleep(20000);
    ck_assert_msg(scx_events(e.conn, "pend", NULL) == 4, "first batches not pended:\n%s",
                  scx_log_tail(log, 4000));
    hx_produce_seq(e.mock.bootstrap, "orders", 4, 1, 1);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 4, 2, 60000),
                  "records not committed in time:\n%s", scx_log_tail(log, 4000));
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.checkpoints WHERE state <> 'ok'", 0, NULL),
        0);
    scx_stop(pid, 15000);
    scx_verify_files(&e, "p1", "orders", 4, 2);
    /* Each partition's first batch committed alone, its next batch pended with it. */
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(DISTINCT xid) FROM sidecar.events WHERE kind = "
                               "'commit' AND first_offset = 0",
                               0, NULL),
                     4);
    ck_assert_int_eq(scx_events(e.conn, "error", NULL), 0);
    ck_assert_msg(hx_pg_int(e.conn, "SELECT last_value FROM refusals WHERE is_called", 0, NULL) > 0,
                  "no grouped commit was tried");
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("delivery");
    TCase *tc = tcase_create("file sink");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_deliver_restart_continue);
    tcase_add_test(tc, test_start_from_latest);
    tcase_add_test(tc, test_two_pipelines_in_one_process);
    tcase_add_test(tc, test_batch_limits);
    tcase_add_test(tc, test_backlog_end_not_held_back);
    tcase_add_test(tc, test_old_records_not_held_back);
    tcase_add_test(tc, test_due_commits_grouped);
    tcase_add_test(tc, test_refused_group_commits_one_by_one);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
