/*
 * check_outages.c - I6 across outages of the servers the sidecar depends on:
 * PostgreSQL killed and restarted mid-stream (pg_ctl restart -m immediate),
 * and Kafka brokers taken down and up through the kafka-mock control
 * channel: down and up, request errors, partition leadership moving (and
 * missing for a while) and a slow broker.  The sidecars must neither crash
 * nor lose nor duplicate, and must resume by themselves.
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

START_TEST(test_postgres_restart_midstream)
{
    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {.max_records = 50};
    char cfg1[700];
    snprintf(cfg1, sizeof(cfg1), "%s", scx_config(&e, "sc-1", &o));
    const char *cfg2 = scx_config(&e, "sc-2", &o);
    scx_migrate(cfg1);
    pid_t p1 = scx_start(&e, cfg1, "sc-1", NULL);
    pid_t p2 = scx_start(&e, cfg2, "sc-2", NULL);

    int64_t produced = 0;
    for (int round = 0; round < 4; round++) {
        hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, produced, 1000);
        produced += 1000;
        usleep((useconds_t)(200 + round * 300) * 1000); /* land inside delivery */
        PQfinish(e.conn);
        hx_pg_restart(&e.pg, true);
        e.conn = hx_pg_connect(e.dsn);
    }
    /* A longer outage too: longer than the lease TTL. */
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, produced, 1000);
    produced += 1000;
    PQfinish(e.conn);
    hx_pg_server_stop(&e.pg, true);
    sleep(5);
    ck_assert(hx_pid_alive(p1) && hx_pid_alive(p2));
    hx_pg_server_start(&e.pg);
    e.conn = hx_pg_connect(e.dsn);

    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, produced, 120000),
                  "not all committed after PostgreSQL restarts; sc-1 log:\n%s",
                  scx_log_tail(log, 4000));
    scx_stop(p1, 20000);
    scx_stop(p2, 20000);
    scx_verify_files(&e, "p1", "orders", NPARTS, produced);
    scx_env_stop(&e);
}
END_TEST

START_TEST(test_broker_down_up_midstream)
{
    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 3, topics, 1);
    struct scx_opts o = {.max_records = 50};
    char cfg1[700];
    snprintf(cfg1, sizeof(cfg1), "%s", scx_config(&e, "sc-1", &o));
    const char *cfg2 = scx_config(&e, "sc-2", &o);
    scx_migrate(cfg1);
    pid_t p1 = scx_start(&e, cfg1, "sc-1", NULL);
    pid_t p2 = scx_start(&e, cfg2, "sc-2", NULL);

    int64_t produced = 0;
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, produced, 1500);
    produced += 1500;
    char reply[256];
    /* One broker (leader of some partitions) away for a while. */
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply), "broker down 2"), 0);
    sleep(4);
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply), "broker up 2"), 0);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, produced, 1500);
    produced += 1500;
    /* Every broker away: no fetch, no group coordinator. */
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply), "broker down all"), 0);
    sleep(6);
    ck_assert(hx_pid_alive(p1) && hx_pid_alive(p2));
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply), "broker up all"), 0);
    /* Request errors on fetches and commits. */
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply),
                                 "errors Fetch NOT_LEADER_FOR_PARTITION REQUEST_TIMED_OUT "
                                 "NOT_LEADER_FOR_PARTITION"),
                     0);
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply),
                                 "errors OffsetCommit REQUEST_TIMED_OUT COORDINATOR_NOT_AVAILABLE"),
                     0);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, produced, 1500);
    produced += 1500;
    /* Leadership moves mid-stream, one partition has no leader for a while, a slow broker. */
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply), "leader orders 0 3"), 0);
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply), "leader orders 1 -1"), 0);
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply), "rtt 2 300"), 0);
    sleep(2);
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply), "leader orders 1 2"), 0);
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply), "leader orders 2 1"), 0);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, produced, 1500);
    produced += 1500;
    ck_assert_int_eq(hx_mock_cmd(&e.mock, reply, sizeof(reply), "rtt 2 0"), 0);

    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, produced, 120000),
                  "not all committed after broker outages; sc-1 log:\n%s", scx_log_tail(log, 4000));
    scx_stop(p1, 20000);
    scx_stop(p2, 20000);
    scx_verify_files(&e, "p1", "orders", NPARTS, produced);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("outages");
    TCase *tc = tcase_create("outages");
    tcase_set_timeout(tc, 400);
    tcase_add_test(tc, test_postgres_restart_midstream);
    tcase_add_test(tc, test_broker_down_up_midstream);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
