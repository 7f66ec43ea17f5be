/*
 * check_crash.c - invariant I6 under kill -9: three `sidecar run` processes
 * share one consumer group over six partitions while records are produced;
 * the test SIGKILLs them at random moments and failpoints make them kill
 * themselves between pend and write, in the middle of a file write, and
 * between write and commit.  At the end every partition file must hold
 * every offset exactly once, in order, with the produced values, and every
 * checkpoint must be committed.
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "scx_chaos.h"

#define NPARTS    6 /* scx_chaos's 10 chunks x 500 records x 6 = 30,000 records */
#define INSTANCES 3
/* Records per partition in a backlog round (scx_chaos_backlog()). */
#define BACKLOG 2000

static void run_crash_test(const char *assignor)
{
    struct scx_env e;
    const char *topics[] = {"orders:6"};
    scx_env_start(&e, 3, topics, 1);
    srand((unsigned)time(NULL));

    char props[128];
    snprintf(props, sizeof(props), "\"partition.assignment.strategy\": \"%s\"", assignor);
    struct scx_opts o = {.max_records = 50, .max_wait_ms = 10, .kafka_props = props};
    struct scx_inst in[INSTANCES] = {
        {.name = "sc-1", .failpoints = "after_pend=kill@0.02"},
        {.name = "sc-2", .failpoints = "after_write=kill@0.02"},
        {.name = "sc-3", .failpoints = "file_mid_write=kill@0.02"},
    };
    struct scx_chaos c;
    scx_chaos_init(&c, &e, in, INSTANCES, NPARTS);
    scx_chaos_start(&c, &o);
    scx_chaos_kill(&c);
    /* Calm: no more kills (failpoint victims come back without their failpoints). */
    scx_chaos_settle(&c);
    /* The kills did land inside batches: pending checkpoints were found and replayed.  That
     * is chance: if none did, sc-1 kills itself in its first file write, with a backlog
     * waiting. */
    scx_chaos_until(&c, scx_chaos_replayed, NULL, BACKLOG, "file_mid_write=kill#1");
    long long replays = scx_chaos_replays(&c);
    fprintf(stderr,
            "crash test (%s): %d kills by the test (%d of a working instance), %d at failpoints, "
            "%" PRId64 " records per partition, %lld replayed batches (%d rounds started with a "
            "backlog)\n",
            assignor, c.kills, c.kills_working, c.self_kills, c.produced, replays,
            c.backlog_rounds);
    ck_assert_int_ge(c.kills + c.self_kills, c.min_kills);
    scx_verify_files(&e, "p1", "orders", NPARTS, c.produced);
    ck_assert_int_gt(replays, 0);
    long long pending = hx_pg_int(
        e.conn, "SELECT count(*) FROM sidecar.checkpoints WHERE pending_first_offset IS NOT NULL",
        0, NULL);
    ck_assert_int_eq(pending, 0);
    scx_env_stop(&e);
}

START_TEST(test_crash_cooperative)
{
    run_crash_test("cooperative-sticky");
}
END_TEST

START_TEST(test_crash_eager)
{
    run_crash_test("range");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("crash");
    TCase *tc = tcase_create("kill -9");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_crash_cooperative);
    tcase_add_test(tc, test_crash_eager);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
