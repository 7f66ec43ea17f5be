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
#include <unistd.h>

#include "scx.h"

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
    char *batches =
        hx_pg_value(e.conn,
                    "SELECT string_agg(first_offset || '-' || last_offset, ' ' ORDER BY "
                    "id) FROM sidecar.events WHERE kind = 'commit'",
                    0, NULL);
    ck_assert_str_eq(batches, "0-7 8-8 9-12 13-14 15-15 16-17");
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
    char *batches =
        hx_pg_value(e.conn,
                    "SELECT string_agg(first_offset || '-' || last_offset, ' ' ORDER BY id) "
                    "FROM sidecar.events WHERE kind = 'commit'",
                    0, NULL);
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
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
