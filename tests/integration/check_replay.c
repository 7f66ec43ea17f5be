/*
 * check_replay.c - invariant I5: a pending batch that can no longer be read
 * as it was pended is an explicit error state for that partition, never a
 * silent skip, and the other partitions keep running.  Then the documented
 * SQL gets a partition out of the error state without a restart.
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scx.h"

static bool wait_state(PGconn *conn, int partition, const char *state, int timeout_ms)
{
    char p[16];
    snprintf(p, sizeof(p), "%d", partition);
    const char *params[] = {p, state};
    int64_t end = hx_now_ms() + timeout_ms;
    do {
        if (hx_pg_int(conn,
                      "SELECT count(*) FROM sidecar.checkpoints WHERE partition = $1::int AND "
                      "state = $2",
                      2, params) == 1)
            return true;
        usleep(100000);
    } while (hx_now_ms() < end);
    return false;
}

START_TEST(test_replay_mismatch_is_an_error_state)
{
    struct scx_env e;
    const char *topics[] = {"orders:3"};
    scx_env_start(&e, 1, topics, 1);
    int port = scx_free_port();
    struct scx_opts o = {.admin_port = port};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 3, 0, 100);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 3, 100, 60000));
    scx_stop(pid, 15000);

    /* Partition 0: a pending batch whose records differ from what Kafka returns now (the
     * topic was recreated).  Partition 1: a pending batch Kafka no longer has at all. */
    hx_produce_seq(e.mock.bootstrap, "orders", 3, 100, 10);
    hx_pg_exec(e.conn, "UPDATE sidecar.checkpoints SET pending_first_offset = 100,"
                       " pending_last_offset = 109, pending_count = 10, pending_checksum = 12345,"
                       " pending_write_offset = committed_write_offset, pending_since = now()"
                       " WHERE partition = 0");
    hx_pg_exec(e.conn, "UPDATE sidecar.checkpoints SET pending_first_offset = 500,"
                       " pending_last_offset = 509, pending_count = 10, pending_checksum = 1,"
                       " pending_write_offset = committed_write_offset, pending_since = now()"
                       " WHERE partition = 1");

    pid = scx_start(&e, cfg, "sc-1b", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1b.log", e.dir);
    ck_assert_msg(wait_state(e.conn, 0, "error", 60000), "partition 0 not in error:\n%s",
                  scx_log_tail(log, 3000));
    ck_assert_msg(wait_state(e.conn, 1, "error", 60000), "partition 1 not in error:\n%s",
                  scx_log_tail(log, 3000));
    char *err0 =
        hx_pg_value(e.conn, "SELECT error FROM sidecar.checkpoints WHERE partition = 0", 0, NULL);
    char *err1 =
        hx_pg_value(e.conn, "SELECT error FROM sidecar.checkpoints WHERE partition = 1", 0, NULL);
    ck_assert_msg(strstr(err0, "does not match"), "%s", err0);
    ck_assert_msg(strstr(err1, "no longer readable"), "%s", err1);
    free(err0);
    free(err1);
    ck_assert_int_eq(scx_events(e.conn, "error", NULL), 2);

    /* Partition 2 is unaffected. */
    char p2[] = "2";
    const char *params[] = {p2};
    int64_t end = hx_now_ms() + 30000;
    while (hx_pg_int(e.conn,
                     "SELECT committed_offset FROM sidecar.checkpoints WHERE partition = $1::int",
                     1, params) != 110 &&
           hx_now_ms() < end)
        usleep(100000);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT committed_offset FROM sidecar.checkpoints WHERE "
                               "partition = $1::int",
                               1, params),
                     110);
    /* Nothing was skipped silently: the errored partitions did not move. */
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT committed_offset FROM sidecar.checkpoints WHERE "
                               "partition = 0",
                               0, NULL),
                     100);

    /* /readyz says why it is not ready. */
    long status;
    char *body = scx_http_get(port, "/readyz", NULL, &status);
    ck_assert_int_eq(status, 503);
    ck_assert_msg(strstr(body, "error state"), "%s", body);
    free(body);
    body = scx_http_get(port, "/metrics", NULL, &status);
    ck_assert_double_eq(scx_metric(body, "sidecar_partition_errors", ""), 2);
    free(body);

    /* The documented way out: clear the pending batch and the error in SQL. */
    hx_pg_exec(e.conn, "UPDATE sidecar.checkpoints SET state = 'ok', error = NULL,"
                       " pending_first_offset = NULL, pending_last_offset = NULL,"
                       " pending_count = NULL, pending_checksum = NULL,"
                       " pending_write_offset = NULL, pending_since = NULL"
                       " WHERE pipeline = 'p1' AND topic = 'orders' AND partition IN (0, 1)");
    bool resumed = scx_wait_committed(e.conn, "p1", "orders", 3, 110, 60000);
    char *states =
        hx_pg_value(e.conn,
                    "SELECT string_agg(format('%s:%s:%s:%s', partition, committed_offset,"
                    " pending_first_offset, state), ' ' ORDER BY partition)"
                    " FROM sidecar.checkpoints",
                    0, NULL);
    ck_assert_msg(resumed, "partitions did not resume after the SQL reset (%s):\n%s", states,
                  scx_log_tail(log, 20000));
    free(states);
    scx_stop(pid, 15000);
    scx_verify_files(&e, "p1", "orders", 3, 110);
    scx_env_stop(&e);
}
END_TEST

/*
 * A pending batch pended under larger batch limits (the config was lowered
 * across the crash) is replayed whole: the worker takes in the whole range
 * although it is far more than the two batches it buffers otherwise, then
 * goes on in batches of the new size.
 */
START_TEST(test_replay_batch_larger_than_the_limits)
{
    struct scx_env e;
    const char *topics[] = {"orders:1"};
    scx_env_start(&e, 1, topics, 1);
    /* max_wait_ms: the first batch is the full 200 records, however the fetches split them;
     * a memory budget that lets batches be that large (the default lowers them). */
    struct scx_opts o = {.max_records = 200,
                         .max_bytes = 64 << 20,
                         .max_wait_ms = 10000,
                         .extra_top = "\"memory\": {\"limit_mib\": 256}"};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    /* 3 MB in 300 records: more than one fetch response of the mock cluster. */
    enum {
        N = 300,
        SIZE = 10000
    };
    static char value[SIZE];
    memset(value, 'v', sizeof(value));
    static struct hx_record recs[N];
    for (size_t i = 0; i < N; i++)
        recs[i] = (struct hx_record){.topic = "orders", .value = value, .value_len = SIZE};
    hx_produce(e.mock.bootstrap, recs, N);
    pid_t pid = scx_start(&e, cfg, "sc-1", "after_pend=kill");
    ck_assert_int_eq(hx_wait(pid, 30000), 128 + SIGKILL);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT pending_count FROM sidecar.checkpoints", 0, NULL),
                     200);

    /* Two records fill the buffer now. */
    struct scx_opts small = {.max_records = 10, .max_bytes = 1024};
    cfg = scx_config(&e, "sc-1b", &small);
    pid = scx_start(&e, cfg, "sc-1b", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1b.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 1, N, 30000),
                  "not delivered in time:\n%s", scx_log_tail(log, 3000));
    scx_stop(pid, 15000);
    char *batches = hx_pg_value(e.conn,
                                "SELECT string_agg(kind || ':' || first_offset || '-' || "
                                "last_offset, ' ' ORDER BY id) FROM sidecar.events WHERE kind IN "
                                "('commit', 'replay') AND first_offset < 203",
                                0, NULL);
    ck_assert_str_eq(batches, "replay:0-199 commit:200-200 commit:201-201 commit:202-202");
    free(batches);
    char path[800];
    snprintf(path, sizeof(path), "%s/orders/0.jsonl", e.out_dir);
    size_t len;
    char *d = hx_read_file(path, &len);
    ck_assert_ptr_nonnull(d);
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += d[i] == '\n';
    ck_assert_uint_eq(lines, N);
    free(d);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("replay");
    TCase *tc = tcase_create("mismatch");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_replay_mismatch_is_an_error_state);
    tcase_add_test(tc, test_replay_batch_larger_than_the_limits);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
