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

#include "scx.h"

#define NPARTS    6
#define CHUNKS    10
#define PER_CHUNK 500 /* per partition: 10 x 500 x 6 = 30,000 records */
#define INSTANCES 3
#define MIN_KILLS 20

struct inst {
    const char *name;
    const char *cfg;
    const char *failpoints;
    pid_t pid;
};

static void run_crash_test(const char *assignor)
{
    struct scx_env e;
    const char *topics[] = {"orders:6"};
    scx_env_start(&e, 3, topics, 1);
    srand((unsigned)time(NULL));

    char props[128];
    snprintf(props, sizeof(props), "\"partition.assignment.strategy\": \"%s\"", assignor);
    struct scx_opts o = {.max_records = 50, .max_wait_ms = 10, .kafka_props = props};
    static char cfgs[INSTANCES][700];
    struct inst in[INSTANCES] = {
        {"sc-1", cfgs[0], "after_pend=kill@0.02", 0},
        {"sc-2", cfgs[1], "after_write=kill@0.02", 0},
        {"sc-3", cfgs[2], "file_mid_write=kill@0.02", 0},
    };
    for (int i = 0; i < INSTANCES; i++)
        snprintf(cfgs[i], sizeof(cfgs[i]), "%s", scx_config(&e, in[i].name, &o));
    scx_migrate(in[0].cfg);
    for (int i = 0; i < INSTANCES; i++)
        in[i].pid = scx_start(&e, in[i].cfg, in[i].name, in[i].failpoints);

    int kills = 0, self_kills = 0, chunk = 0;
    int64_t produced = 0;
    while (chunk < CHUNKS || kills + self_kills < MIN_KILLS) {
        if (chunk < CHUNKS) {
            hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, produced, PER_CHUNK);
            produced += PER_CHUNK;
            chunk++;
        }
        usleep((useconds_t)(300 + rand() % 2200) * 1000);
        /* Restart whoever killed itself at a failpoint. */
        for (int i = 0; i < INSTANCES; i++)
            if (!hx_pid_alive(in[i].pid)) {
                hx_wait(in[i].pid, 1000);
                self_kills++;
                in[i].pid = scx_start(&e, in[i].cfg, in[i].name, in[i].failpoints);
            }
        int victim = rand() % INSTANCES;
        kill(in[victim].pid, SIGKILL);
        hx_wait(in[victim].pid, 5000);
        kills++;
        usleep((useconds_t)(rand() % 800) * 1000);
        in[victim].pid = scx_start(&e, in[victim].cfg, in[victim].name, in[victim].failpoints);
    }

    /* Calm: no more kills (restart failpoint victims without their failpoints). */
    bool done = false;
    for (int round = 0; round < 60 && !done; round++) {
        for (int i = 0; i < INSTANCES; i++)
            if (!hx_pid_alive(in[i].pid)) {
                hx_wait(in[i].pid, 1000);
                self_kills++;
                in[i].pid = scx_start(&e, in[i].cfg, in[i].name, NULL);
            }
        done = scx_wait_committed(e.conn, "p1", "orders", NPARTS, produced, 5000);
    }
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(done, "not every partition reached offset %" PRId64 " in time; sc-1 log:\n%s",
                  produced, scx_log_tail(log, 3000));
    for (int i = 0; i < INSTANCES; i++)
        scx_stop(in[i].pid, 15000);

    fprintf(stderr,
            "crash test (%s): %d kills by the test, %d at failpoints, %" PRId64
            " records per partition\n",
            assignor, kills, self_kills, produced);
    ck_assert_int_ge(kills + self_kills, MIN_KILLS);
    scx_verify_files(&e, "p1", "orders", NPARTS, produced);

    /* The kills did land inside batches: pending checkpoints were found and replayed. */
    long long replays =
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'replay'", 0, NULL);
    fprintf(stderr, "replayed batches: %lld\n", replays);
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
