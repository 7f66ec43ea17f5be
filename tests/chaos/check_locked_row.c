/*
 * check_locked_row.c - one checkpoint row locked by a frozen session (an
 * operator's open BEGIN ... FOR UPDATE in psql) delays only its own
 * partition, in both assignment modes.
 *
 * Instance A delivers six partitions and stops.  More records arrive.  A
 * psql-like session locks partition 0's checkpoint row and keeps its
 * transaction open.  Instance B starts: partitions 1..5 start and deliver
 * everything at once, while partition 0 waits, delivering nothing; when
 * the transaction ends, partition 0 follows.  (Before, B's lease
 * acquisition took all partitions of its rebalance in one statement that
 * waited for the lock: none of the six progressed while it was held.)
 */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scx.h"

#define NPARTS 6

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

/* Partitions 1..NPARTS-1 all at want. */
static bool others_at(PGconn *conn, long long want)
{
    for (int p = 1; p < NPARTS; p++)
        if (committed(conn, p) != want)
            return false;
    return true;
}

/* _i: 0 kafka-group, 1 lease */
START_TEST(test_locked_row_delays_only_its_partition)
{
    const char *mode = _i ? "lease" : "kafka-group";
    struct scx_env e;
    const char *topics[] = {"orders:6"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {.assignment = mode, .max_records = 50};
    static char cfg_a[700];
    snprintf(cfg_a, sizeof(cfg_a), "%s", scx_config(&e, "sc-a", &o));
    const char *cfg_b = scx_config(&e, "sc-b", &o);
    scx_migrate(cfg_a);

    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 0, 200);
    pid_t a = scx_start(&e, cfg_a, "sc-a", NULL);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", NPARTS, 200, 60000));
    scx_stop(a, 20000);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 200, 200);

    /* An operator's forgotten transaction holds partition 0's checkpoint row. */
    PGconn *locker = hx_pg_connect(e.dsn);
    hx_pg_exec(locker, "BEGIN");
    hx_pg_exec(locker, "SELECT * FROM sidecar.checkpoints WHERE pipeline = 'p1'"
                       " AND topic = 'orders' AND partition = 0 FOR UPDATE");

    int64_t t0 = hx_now_ms();
    pid_t b = scx_start(&e, cfg_b, "sc-b", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-b.log", e.dir);
    int64_t end = t0 + 90000;
    while (!others_at(e.conn, 400) && hx_now_ms() < end)
        usleep(100000);
    int64_t took = hx_now_ms() - t0;
    ck_assert_msg(others_at(e.conn, 400),
                  "%s: partitions 1..5 did not progress while partition 0's row was locked "
                  "(after %lld ms):\n%s",
                  mode, (long long)took, scx_log_tail(log, 3000));
    fprintf(stderr, "%s: partitions 1..5 delivered everything %lld ms after the start\n", mode,
            (long long)took);
    /* Partition 0 waited, and delivered nothing meanwhile. */
    ck_assert_int_eq(committed(e.conn, 0), 200);
    const char *params[] = {"sc-b"};
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.leases WHERE partition = 0"
                               " AND owner = $1 AND expires_at > now()",
                               1, params),
                     0);

    /* The transaction ends: partition 0 follows. */
    int64_t t1 = hx_now_ms();
    hx_pg_exec(locker, "COMMIT");
    PQfinish(locker);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, 400, 60000), "%s",
                  scx_log_tail(log, 3000));
    fprintf(stderr, "%s: partition 0 delivered everything %lld ms after the lock went\n", mode,
            (long long)(hx_now_ms() - t1));
    scx_stop(b, 20000);
    scx_verify_files(&e, "p1", "orders", NPARTS, 400);
    ck_assert_int_eq(scx_events(e.conn, "fenced", NULL), 0);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("locked_row");
    TCase *tc = tcase_create("locked_row");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_locked_row_delays_only_its_partition, 0, 2);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
