/*
 * check_group_shutdown.c - "assignment": "kafka-group": SIGTERM during an
 * instance's first cooperative rebalance exits 0, leases released.
 *
 * librdkafka before 2.3.0 (Debian 12 ships 2.0.2) asserts when a consumer
 * that joined a group with the cooperative-sticky assignor, but never got
 * an assignment, is destroyed (confluentinc/librdkafka#4312): the sidecar
 * died by SIGABRT.  The situation, as it happened: instances A and B share
 * a group; A is killed; C starts and joins while the group is rebalancing;
 * C's JoinGroup is answered (librdkafka now has an assignor for it) but
 * its SyncGroup is told the group is rebalancing again (in the wild: A's
 * session expiring at that moment), so C rejoins without an assignment,
 * and is stopped.  Which of C's requests meets A's expiry is a matter of
 * timing, so the mock cluster answers the group's next SyncGroups with
 * REBALANCE_IN_PROGRESS: C is then certain to be in the situation once its
 * librdkafka debug log shows that answer, and the test SIGTERMs it right
 * after that line (a condition, not a delay).  Before the workaround this
 * exited 134 (SIGABRT) every time.
 *
 * A consumer close cut short (its queue yielded while it waited, as a
 * worker's late poke once did: SIGTERM then hung for good in the second
 * close inside rd_kafka_destroy) is noticed: the process logs it, leaves
 * the handle to the exit, and still exits 0 with the leases released.
 *
 * And the bound: whatever blocks after the pipelines' threads ended (a
 * failpoint sleeps a minute there), the process exits 1 once
 * shutdown_timeout_ms has passed, saying so, and the next run delivers
 * everything once.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scx.h"
#include "scx_lease.h"

#define WINDOW "SyncGroup response: Broker: Group rebalance in progress"

static bool in_window(void *arg)
{
    return scx_log_count(arg, WINDOW) > 0;
}

static bool both_own(void *arg)
{
    PGconn *conn = arg;
    return scx_leases_of(conn, "p1", "sc-a") > 0 && scx_leases_of(conn, "p1", "sc-b") > 0;
}

START_TEST(test_sigterm_during_first_cooperative_rebalance)
{
    struct scx_env e;
    const char *topics[] = {"orders:6"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {.max_records = 50};
    struct scx_opts oc = {.kafka_props = "\"debug\": \"cgrp\""};
    static char cfg_a[700], cfg_b[700], cfg_c[700];
    snprintf(cfg_a, sizeof(cfg_a), "%s", scx_config(&e, "sc-a", &o));
    snprintf(cfg_b, sizeof(cfg_b), "%s", scx_config(&e, "sc-b", &o));
    setenv("SCX_LOG_LEVEL", "debug", 1); /* librdkafka's debug lines reach C's log */
    snprintf(cfg_c, sizeof(cfg_c), "%s", scx_config(&e, "sc-c", &oc));
    unsetenv("SCX_LOG_LEVEL");
    scx_migrate(cfg_a);
    hx_produce_seq(e.mock.bootstrap, "orders", 6, 0, 100);

    pid_t a = scx_start(&e, cfg_a, "sc-a", NULL);
    pid_t b = scx_start(&e, cfg_b, "sc-b", NULL);
    ck_assert_msg(hx_wait_until(both_own, e.conn, 60000), "A and B never shared the group");
    char reply[256];
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply),
                                 "errors SyncGroup REBALANCE_IN_PROGRESS REBALANCE_IN_PROGRESS "
                                 "REBALANCE_IN_PROGRESS REBALANCE_IN_PROGRESS "
                                 "REBALANCE_IN_PROGRESS REBALANCE_IN_PROGRESS"),
                     0);
    kill(a, SIGKILL);
    hx_wait(a, 10000);
    pid_t c = scx_start(&e, cfg_c, "sc-c", NULL);
    char log_c[700];
    snprintf(log_c, sizeof(log_c), "%s/sc-c.log", e.dir);
    ck_assert_msg(hx_wait_until(in_window, log_c, 90000),
                  "C never got a SyncGroup answer of REBALANCE_IN_PROGRESS:\n%s",
                  scx_log_tail(log_c, 3000));
    ck_assert_msg(scx_log_count(log_c, "] assigned ") == 0, "C was assigned before the SIGTERM");

    /* SIGTERM between its first JoinGroup and its first assignment. */
    kill(c, SIGTERM);
    int rc = hx_wait(c, 20000);
    ck_assert_msg(rc == 0, "C exited with %d on SIGTERM during its first rebalance:\n%s", rc,
                  scx_log_tail(log_c, 2000));
    ck_assert_int_eq(scx_leases_of(e.conn, "p1", "sc-c"), 0);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.instance_status"
                               " WHERE instance_id = 'sc-c' AND live",
                               0, NULL),
                     0);

    /* The group goes on without it. */
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply), "clear-errors SyncGroup"), 0);
    hx_produce_seq(e.mock.bootstrap, "orders", 6, 100, 100);
    char log_b[700];
    snprintf(log_b, sizeof(log_b), "%s/sc-b.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 6, 200, 90000), "%s",
                  scx_log_tail(log_b, 3000));
    scx_stop(b, 20000);
    ck_assert_int_eq(scx_leases_of(e.conn, "p1", NULL), 0);
    scx_verify_files(&e, "p1", "orders", 6, 200);
    scx_env_stop(&e);
}
END_TEST

/* One instance sc-1 with failpoints, started on 100 records of orders:2 and waited for. */
static pid_t start_delivered(struct scx_env *e, const struct scx_opts *o, const char *failpoints,
                             const char **cfg)
{
    const char *topics[] = {"orders:2"};
    scx_env_start(e, 1, topics, 1);
    *cfg = scx_config(e, "sc-1", o);
    scx_migrate(*cfg);
    hx_produce_seq(e->mock.bootstrap, "orders", 2, 0, 100);
    pid_t pid = scx_start(e, *cfg, "sc-1", failpoints);
    ck_assert(scx_wait_committed(e->conn, "p1", "orders", 2, 100, 60000));
    return pid;
}

START_TEST(test_close_cut_short_does_not_hang)
{
    struct scx_env e;
    const char *cfg;
    pid_t pid = start_delivered(&e, &(struct scx_opts){0}, "close_yield=sleep:0", &cfg);
    kill(pid, SIGTERM);
    int rc = hx_wait(pid, 20000);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(rc == 0, "exit status %d after SIGTERM (-1: still running):\n%s", rc,
                  scx_log_tail(log, 2000));
    /* The close really was cut short: the test reached the path it is about. */
    ck_assert_msg(scx_log_count(log, "leaving the consumer group did not finish") > 0, "%s",
                  scx_log_tail(log, 2000));
    ck_assert_int_eq(scx_leases_of(e.conn, "p1", "sc-1"), 0);
    scx_verify_files(&e, "p1", "orders", 2, 100);
    scx_env_stop(&e);
}
END_TEST

START_TEST(test_shutdown_bound_holds_whatever_blocks)
{
    struct scx_env e;
    const char *cfg;
    pid_t pid = start_delivered(&e, &(struct scx_opts){.shutdown_timeout_ms = 2000},
                                "shutdown_cleanup=sleep:60000", &cfg);
    int64_t t0 = hx_now_ms();
    kill(pid, SIGTERM);
    int rc = hx_wait(pid, 30000);
    int64_t took = hx_now_ms() - t0;
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(rc == 1, "exit status %d after SIGTERM with a blocked clean-up:\n%s", rc,
                  scx_log_tail(log, 2000));
    /* The 60 s sleep did not hold it: it left at the bound (2 s), well before. */
    ck_assert_msg(took < 30000, "took %lld ms", (long long)took);
    ck_assert_msg(
        scx_log_count(log, "shutdown did not finish within shutdown_timeout_ms (2000 ms)") > 0,
        "%s", scx_log_tail(log, 2000));

    hx_produce_seq(e.mock.bootstrap, "orders", 2, 100, 100);
    pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 2, 200, 60000));
    scx_stop(pid, 20000);
    scx_verify_files(&e, "p1", "orders", 2, 200);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("group_shutdown");
    TCase *tc = tcase_create("group_shutdown");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_sigterm_during_first_cooperative_rebalance);
    tcase_add_test(tc, test_close_cut_short_does_not_hang);
    tcase_add_test(tc, test_shutdown_bound_holds_whatever_blocks);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
