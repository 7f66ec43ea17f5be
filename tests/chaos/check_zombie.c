/*
 * check_zombie.c - invariant I4: a stalled owner is fenced.
 *
 * Instance A stops itself (SIGSTOP, via a failpoint) between writing a
 * batch and committing it, i.e. with a batch "in its hands".  B joins, waits
 * for A's lease to expire, takes every partition over, replays A's pending
 * batch and keeps delivering.  Then A is continued: it goes on to commit
 * its interrupted batch (a written batch is committed even when the lease's
 * renewal is late, since the commit is fenced by the epoch) and the commit
 * is refused: a 'fenced' event and sidecar_fenced_total on A's /metrics.
 * (A continued with a batch pended and not yet written writes nothing: its
 * lease is late.)  The output stays exact throughout.
 *
 * Then the same with the postgres sink in the checkpoint database: A stops
 * inside a batch's transaction, its rows and checkpoint advance sent and
 * the checkpoint row locked, COMMIT not sent.  B's lease acquisition needs
 * that row: the server ends A's session once it has idled in the
 * transaction for the lease TTL, and B takes over.  A, continued, finds its
 * connection gone and its partitions fenced; no row of its batch commits.
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scx.h"

#define NPARTS 4

START_TEST(test_stalled_owner_is_fenced)
{
    /* _i == 1: the postgres sink in the checkpoint database (a transaction per batch) */
    bool pg = _i == 1;
    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 1, topics, 1);
    const char *sink = NULL;
    if (pg) {
        sink = "{\"type\": \"postgres\", \"table\": \"app.events\"}";
        scx_create_audited_events(e.conn);
    }
    int port_a = scx_free_port(), port_b = scx_free_port();
    struct scx_opts oa = {.max_records = 20, .admin_port = port_a, .workers = 1, .sink = sink};
    struct scx_opts ob = {.max_records = 20, .admin_port = port_b, .sink = sink};
    char cfg_a[700];
    snprintf(cfg_a, sizeof(cfg_a), "%s", scx_config(&e, "sc-a", &oa));
    const char *cfg_b = scx_config(&e, "sc-b", &ob);
    scx_migrate(cfg_a);

    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 0, 1000);
    /* A stops itself in its 25th batch: file sink, a batch pending and written, not
     * committed; postgres sink, inside the batch's transaction, its rows and checkpoint
     * advance sent, COMMIT not (the checkpoint row stays locked while A is stopped). */
    pid_t a = scx_start(&e, cfg_a, "sc-a", pg ? "pg_before_commit=stop#25" : "after_write=stop#25");
    int64_t end = hx_now_ms() + 60000;
    while (!scx_pid_stopped(a) && hx_now_ms() < end)
        usleep(50000);
    char log_a[700];
    snprintf(log_a, sizeof(log_a), "%s/sc-a.log", e.dir);
    ck_assert_msg(scx_pid_stopped(a), "A never reached its failpoint; A log:\n%s",
                  scx_log_tail(log_a, 3000));
    long long pending = hx_pg_int(
        e.conn, "SELECT count(*) FROM sidecar.checkpoints WHERE pending_first_offset IS NOT NULL",
        0, NULL);
    if (pg)
        ck_assert_int_eq(pending, 0); /* a transactional sink has no pending step */
    else
        ck_assert_int_ge(pending, 1);

    /* B takes over once A's session and leases time out, and finishes the backlog. */
    pid_t b = scx_start(&e, cfg_b, "sc-b", NULL);
    char log_b[700];
    snprintf(log_b, sizeof(log_b), "%s/sc-b.log", e.dir);
    bool took_over = scx_wait_committed(e.conn, "p1", "orders", NPARTS, 1000, 90000);
    char *act = took_over
                    ? NULL
                    : hx_pg_value(e.conn,
                                  "SELECT string_agg(concat_ws(' | ', application_name, state,"
                                  " wait_event_type, wait_event, left(query, 80)), E'\\n')"
                                  " FROM pg_stat_activity WHERE datname = current_database()",
                                  0, NULL);
    ck_assert_msg(took_over, "B did not take over; sessions:\n%s\nB log:\n%s", act,
                  scx_log_tail(log_b, 3000));
    free(act);
    if (!pg)
        ck_assert_int_ge(scx_events(e.conn, "replay", "sc-b"), 1);
    const char *params[] = {"sc-b"};
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.leases WHERE owner <> $1", 1, params), 0);

    /* Wake the zombie: its commit must be refused. */
    kill(a, SIGCONT);
    end = hx_now_ms() + 30000;
    while (scx_events(e.conn, "fenced", "sc-a") == 0 && hx_now_ms() < end)
        usleep(100000);
    ck_assert_msg(scx_events(e.conn, "fenced", "sc-a") >= 1, "no fenced event for A; A log:\n%s",
                  scx_log_tail(log_a, 3000));
    long status;
    char *metrics = scx_http_get(port_a, "/metrics", NULL, &status);
    ck_assert_int_eq(status, 200);
    ck_assert_msg(scx_metric(metrics, "sidecar_fenced_total", "") >= 1, "metrics:\n%s", metrics);
    free(metrics);

    /* Both keep running; new records are delivered once. */
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 1000, 500);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", NPARTS, 1500, 90000));
    scx_stop(a, 20000);
    scx_stop(b, 20000);
    if (pg) {
        ck_assert_int_eq(hx_pg_int(e.conn,
                                   "SELECT count(DISTINCT (partition, \"offset\")) FROM app.events"
                                   " WHERE \"offset\" BETWEEN 0 AND 1499",
                                   0, NULL),
                         1500 * NPARTS);
        /* One committed insert attempt per record: A's stalled batch never committed. */
        ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM app.audit", 0, NULL),
                         1500 * NPARTS);
    } else {
        scx_verify_files(&e, "p1", "orders", NPARTS, 1500);
    }
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("zombie");
    TCase *tc = tcase_create("fencing");
    tcase_set_timeout(tc, 400);
    tcase_add_loop_test(tc, test_stalled_owner_is_fenced, 0, 2);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
