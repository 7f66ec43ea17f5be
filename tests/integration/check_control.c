/*
 * check_control.c - operating a running sidecar from SQL, metrics and
 * event retention:
 *   - pause_partition / resume_partition / reset_checkpoint take effect on a
 *     running sidecar without a restart (issue 5, test 5);
 *   - /metrics parses with the Prometheus reference parser and its counters
 *     match what was delivered (test 4); lag is visible in SQL and metrics;
 *   - old events are consolidated into event_history and event_horizon
 *     records how far they were pruned.
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scx.h"

static long long committed(PGconn *conn, int partition)
{
    char p[16];
    snprintf(p, sizeof(p), "%d", partition);
    const char *params[] = {p};
    char *v = hx_pg_value(conn,
                          "SELECT committed_offset FROM sidecar.checkpoints WHERE pipeline = 'p1'"
                          " AND topic = 'orders' AND partition = $1::int",
                          1, params);
    long long n = v ? strtoll(v, NULL, 10) : -1;
    free(v);
    return n;
}

static bool wait_committed_one(PGconn *conn, int partition, long long want, int timeout_ms)
{
    int64_t end = hx_now_ms() + timeout_ms;
    while (committed(conn, partition) != want && hx_now_ms() < end)
        usleep(100000);
    return committed(conn, partition) == want;
}

/*
 * pause_partition() of partition, then waits until the owner has applied it: it logs so once
 * per pause (its lease renewal or its next checkpoint write sees the change), so wait for
 * that line rather than pausing for longer than renew_ms and hoping it did.
 */
static void pause_and_wait(PGconn *conn, const char *log, int partition)
{
    char needle[64], sql[96];
    snprintf(needle, sizeof(needle), "orders[%d] paused by an operator", partition);
    snprintf(sql, sizeof(sql), "SELECT sidecar.pause_partition('p1', 'orders', %d)", partition);
    int before = scx_log_count(log, needle);
    hx_pg_exec(conn, sql);
    ck_assert_msg(scx_wait_log(log, needle, before + 1, 30000),
                  "the owner never applied the pause of partition %d:\n%s", partition,
                  scx_log_tail(log, 3000));
}

/*
 * Waits until the owner's watermark sample of partition (every 5 s, into partition_stats) has
 * the log end offset high: reset_checkpoint() checks its offset against that sample.
 */
static bool wait_sampled(PGconn *conn, int partition, long long high, int timeout_ms)
{
    char p[16], h[32];
    snprintf(p, sizeof(p), "%d", partition);
    snprintf(h, sizeof(h), "%lld", high);
    const char *params[] = {p, h};
    int64_t end = hx_now_ms() + timeout_ms;
    do {
        if (hx_pg_int(conn,
                      "SELECT count(*) FROM sidecar.partition_stats WHERE pipeline = 'p1' AND"
                      " topic = 'orders' AND partition = $1::int AND high_watermark = $2::bigint",
                      2, params) == 1)
            return true;
        usleep(100000);
    } while (hx_now_ms() < end);
    return false;
}

/* Number of sidecar_consumer_lag samples (partitions whose lag is known) in an exposition. */
static int lag_samples(const char *exposition)
{
    int n = 0;
    for (const char *c = exposition; c && (c = strstr(c, "\nsidecar_consumer_lag{")); c++)
        n++;
    return n;
}

static long file_lines(const struct scx_env *e, int partition)
{
    char path[800];
    snprintf(path, sizeof(path), "%s/orders/%d.jsonl", e->out_dir, partition);
    char *d = hx_read_file(path, NULL);
    long n = 0;
    for (char *c = d; c && *c; c++)
        n += *c == '\n';
    free(d);
    return n;
}

START_TEST(test_pause_resume_reset_on_a_running_sidecar)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    int port = scx_free_port();
    struct scx_opts o = {.admin_port = port, .max_records = 50};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 200);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 2, 200, 60000), "%s",
                  scx_log_tail(log, 3000));

    /* Pause partition 0: it stops, partition 1 goes on. */
    pause_and_wait(e.conn, log, 0);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 200, 100);
    ck_assert(wait_committed_one(e.conn, 1, 300, 30000));
    /* A negative check: nothing shows that partition 0 would have delivered by now, so give
     * it a moment (a slower machine can only make this pass wrongly, never fail). */
    usleep(1000 * 1000);
    ck_assert_int_eq(committed(e.conn, 0), 200);
    ck_assert_int_eq(scx_events(e.conn, "pause", NULL), 1);
    long status;
    char *body = scx_http_get(port, "/readyz", NULL, &status);
    ck_assert_msg(status == 200, "a paused partition is not a readiness problem: %s", body);
    free(body);

    /* Resume: it catches up. */
    hx_pg_exec(e.conn, "SELECT sidecar.resume_partition('p1', 'orders', 0)");
    ck_assert_msg(wait_committed_one(e.conn, 0, 300, 30000), "%s", scx_log_tail(log, 3000));

    /* reset_checkpoint checks its offset against the owner's last watermark sample: wait for
     * one of the log as it is (end 300). */
    ck_assert_msg(wait_sampled(e.conn, 1, 300, 30000), "no watermark sample of partition 1:\n%s",
                  scx_log_tail(log, 3000));

    /* reset_checkpoint refuses a live lease unless forced. */
    PGresult *res = PQexec(e.conn, "SELECT sidecar.reset_checkpoint('p1', 'orders', 1, 250)");
    ck_assert_int_eq(PQresultStatus(res), PGRES_FATAL_ERROR);
    ck_assert_str_eq(PQresultErrorField(res, PG_DIAG_SQLSTATE), "55P03");
    ck_assert_msg(strstr(PQresultErrorMessage(res), "holds a live lease"), "%s",
                  PQresultErrorMessage(res));
    PQclear(res);

    /* Forced, backwards: the running owner re-delivers 250..299 (the file sink appends them
     * after what it already wrote: a reset is the operator's decision to deliver again). */
    hx_pg_exec(e.conn, "SELECT sidecar.reset_checkpoint('p1', 'orders', 1, 250, true)");
    int64_t end = hx_now_ms() + 30000;
    while (file_lines(&e, 1) < 350 && hx_now_ms() < end)
        usleep(100000);
    ck_assert_int_eq(file_lines(&e, 1), 350);
    ck_assert(wait_committed_one(e.conn, 1, 300, 10000));
    ck_assert_int_eq(scx_events(e.conn, "reset", NULL), 1);

    /* Forward: skip ahead; only what follows the new position is delivered.  A reset must
     * stay within the log (log end 500 once 400..499 are produced), so partition 0 is paused
     * while they are, and the reset's range check reads a fresh sample: the owner's own (it
     * samples paused partitions too), not one written here, which a sample of the owner's
     * taken before the produce could overwrite just before the reset. */
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 300, 100);
    ck_assert(wait_committed_one(e.conn, 0, 400, 30000));
    pause_and_wait(e.conn, log, 0);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 400, 100);
    ck_assert_msg(wait_sampled(e.conn, 0, 500, 30000), "no watermark sample of partition 0:\n%s",
                  scx_log_tail(log, 3000));
    hx_pg_exec(e.conn, "SELECT sidecar.reset_checkpoint('p1', 'orders', 0, 450, true)");
    hx_pg_exec(e.conn, "SELECT sidecar.resume_partition('p1', 'orders', 0)");
    ck_assert_msg(wait_committed_one(e.conn, 0, 500, 30000), "%s", scx_log_tail(log, 3000));
    ck_assert_int_eq(file_lines(&e, 0), 450); /* 0..399 and 450..499 */

    scx_stop(pid, 20000);
    /* Nothing was fenced by these operator actions: they are not zombies. */
    ck_assert_int_eq(scx_events(e.conn, "fenced", NULL), 0);
    scx_env_stop(&e);
}
END_TEST

START_TEST(test_metrics_parse_and_match_deliveries)
{
    struct scx_env e;
    const char *topics[] = {"orders:3"};
    scx_env_start(&e, 1, topics, 1);
    int port = scx_free_port();
    struct scx_opts o = {.admin_port = port};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 3, 0, 700);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 3, 700, 60000));
    /* Watermarks are sampled every 5 s: wait for a sample taken after the commits, when every
     * partition's lag is known and 0 (before it, lag is unknown or from before the commits). */
    long status = 0;
    char *metrics = NULL;
    int64_t end = hx_now_ms() + 30000;
    for (;;) {
        metrics = scx_http_get(port, "/metrics", NULL, &status);
        if ((status == 200 && lag_samples(metrics) == 3 &&
             scx_metric(metrics, "sidecar_consumer_lag", "") == 0) ||
            hx_now_ms() >= end)
            break;
        free(metrics);
        usleep(200000);
    }
    ck_assert_int_eq(status, 200);
    ck_assert_msg(lag_samples(metrics) == 3, "no watermark sample for every partition:\n%s",
                  metrics);
    /* The reference parser (python3-prometheus-client) must accept every line. */
    const char *argv[] = {"/usr/bin/python3", "-c",
                          "import sys\n"
                          "from prometheus_client.parser import text_string_to_metric_families\n"
                          "n = 0\n"
                          "delivered = 0\n"
                          "for fam in text_string_to_metric_families(sys.stdin.read()):\n"
                          "    for s in fam.samples:\n"
                          "        n += 1\n"
                          "        if s.name == 'sidecar_records_delivered_total':\n"
                          "            delivered += s.value\n"
                          "print('samples', n, 'delivered', int(delivered))\n",
                          NULL};
    char *out = NULL;
    int rc = hx_run_input(argv, NULL, metrics, strlen(metrics), 30000, &out);
    ck_assert_msg(rc == 0, "the Prometheus parser rejected /metrics: %s\n%s", out, metrics);
    ck_assert_msg(strstr(out, "delivered 2100"), "%s", out);
    free(out);
    ck_assert_double_eq(scx_metric(metrics, "sidecar_batches_committed_total", ""),
                        (double)hx_pg_int(e.conn,
                                          "SELECT count(*) FROM sidecar.events WHERE kind = "
                                          "'commit'",
                                          0, NULL));
    ck_assert_double_eq(scx_metric(metrics, "sidecar_consumer_lag", ""), 0);
    ck_assert_double_eq(scx_metric(metrics, "sidecar_notify_coalesced", ""), 0);
    ck_assert_msg(strstr(metrics, "sidecar_checkpoint_seconds_bucket{"), "%s", metrics);
    free(metrics);

    /* Lag in SQL: produce while the sidecar is stopped, the last sample is before that, so
     * sample again with a running sidecar paused on one partition. */
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    pause_and_wait(e.conn, log, 2);
    hx_produce_seq(e.mock.bootstrap, "orders", 3, 700, 50);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 2, 750, 30000));
    end = hx_now_ms() + 20000;
    long long lag = -1;
    while (hx_now_ms() < end) {
        char *v = hx_pg_value(
            e.conn, "SELECT lag FROM sidecar.partition_status WHERE partition = 2", 0, NULL);
        lag = v ? strtoll(v, NULL, 10) : -1;
        free(v);
        if (lag == 50)
            break;
        usleep(200000);
    }
    ck_assert_int_eq(lag, 50);
    metrics = scx_http_get(port, "/metrics", NULL, &status);
    ck_assert_double_eq(scx_metric(metrics, "sidecar_consumer_lag", "partition=\"2\""), 50);
    free(metrics);
    scx_stop(pid, 20000);
    scx_env_stop(&e);
}
END_TEST

START_TEST(test_retention_consolidates_old_events)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {.extra_top = "  \"events\": {\"retention\": \"1m\", \"compact_interval\": "
                                      "\"1s\"}"};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 300);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 2, 300, 60000));
    /* Age every event so far by two hours. */
    long long before = hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.events", 0, NULL);
    long long commits = hx_pg_int(
        e.conn, "SELECT count(*) FROM sidecar.events WHERE kind IN ('commit', 'replay')", 0, NULL);
    hx_pg_exec(e.conn, "UPDATE sidecar.events SET at = at - interval '2 hours'");
    int64_t end = hx_now_ms() + 30000;
    while (hx_pg_int(e.conn,
                     "SELECT count(*) FROM sidecar.events WHERE at < now() - "
                     "interval '1 hour'",
                     0, NULL) > 0 &&
           hx_now_ms() < end)
        usleep(200000);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.events WHERE at < now() - "
                               "interval '1 hour'",
                               0, NULL),
                     0);
    /* The history keeps per partition the committed range and the batch count. */
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT coalesce(sum(events), 0) FROM sidecar.event_history", 0, NULL),
        before);
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT coalesce(sum(batches), 0) FROM sidecar.event_history", 0, NULL),
        commits);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT max(last_offset) FROM sidecar.event_history WHERE "
                               "partition = 1",
                               0, NULL),
                     299);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.event_horizon WHERE pruned_id IS "
                               "NOT NULL",
                               0, NULL),
                     1);
    /* New events keep flowing after compaction. */
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 300, 10);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 2, 310, 30000));
    ck_assert_int_gt(hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.events", 0, NULL), 0);
    scx_stop(pid, 20000);
    scx_verify_files(&e, "p1", "orders", 2, 310);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("control");
    TCase *tc = tcase_create("control");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_pause_resume_reset_on_a_running_sidecar);
    tcase_add_test(tc, test_metrics_parse_and_match_deliveries);
    tcase_add_test(tc, test_retention_consolidates_old_events);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
