/*
 * check_http_crash.c - invariant I6 for the http sink: two `sidecar run`
 * processes share four partitions while 10,000 records are produced; the
 * test SIGKILLs them at random, failpoints kill them between pend and write
 * and between write and commit, and the receiver injects 500s (before and
 * after accepting a batch), 429 with Retry-After: 1, and answers slower
 * than timeout_ms.  At the end every key's bodies must be byte-identical
 * across retries and replays, and after de-duplication by Idempotency-Key
 * every record must be there exactly once, in offset order per partition.
 * Every request is checked on arrival against sidecar.checkpoints: its
 * range must be pending (or committed already), I2.
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "receiver.h"
#include "scx.h"

#define NPARTS     4
#define CHUNKS     10
#define PER_CHUNK  250 /* per partition: 10 x 250 x 4 = 10,000 records */
#define INSTANCES  2
#define MIN_KILLS  12
#define TIMEOUT_MS 1000

struct inst {
    const char *name;
    char cfg[700];
    const char *failpoints;
    pid_t pid;
};

START_TEST(test_http_crash_and_faults)
{
    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 1, topics, 1);
    srand((unsigned)time(NULL));
    struct rx *rx = rx_start();
    rx_check_pending(rx, e.dsn); /* I2: every request's range pending when it arrives */
    rx_set_faults(rx, &(struct rx_faults){.p500_before = 50,
                                          .p500_after = 50,
                                          .p429 = 30,
                                          .pslow = 20,
                                          .slow_ms = TIMEOUT_MS + 500});
    char sink[512];
    /* on_error stop: a 4xx is not expected here, and would show as an error state. */
    snprintf(sink, sizeof(sink),
             "{\"type\":\"http\",\"url\":\"%s\",\"timeout_ms\":%d,\"on_error\":\"stop\","
             "\"retry\":{\"max_attempts\":4,\"initial_backoff_ms\":50,\"max_backoff_ms\":1000,"
             "\"max_elapsed_ms\":5000}}",
             rx_url(rx), TIMEOUT_MS);
    struct scx_opts o = {.max_records = 25, .max_wait_ms = 10, .sink = sink};
    struct inst in[INSTANCES] = {
        {"sc-1", "", "after_pend=kill@0.03", 0},
        {"sc-2", "", "after_write=kill@0.03", 0},
    };
    for (int i = 0; i < INSTANCES; i++)
        snprintf(in[i].cfg, sizeof(in[i].cfg), "%s", scx_config(&e, in[i].name, &o));
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

    /* Calm: no more kills, but the receiver keeps injecting its faults. */
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
    if (!done) {
        for (int i = 0; i < INSTANCES; i++) {
            char log[700];
            snprintf(log, sizeof(log), "%s/%s.log", e.dir, in[i].name);
            fprintf(stderr, "---- %s log:\n%s\n", in[i].name, scx_log_tail(log, 6000));
        }
        char *cp = hx_pg_value(e.conn,
                               "SELECT string_agg(format('%s: committed %s pending %s..%s state %s "
                               "epoch %s', partition, committed_offset, pending_first_offset, "
                               "pending_last_offset, state, epoch), E'\\n' ORDER BY partition) "
                               "FROM sidecar.checkpoints",
                               0, NULL);
        fprintf(stderr, "---- checkpoints:\n%s\n", cp);
        free(cp);
    }
    ck_assert_msg(done, "not every partition reached offset %" PRId64 " in time", produced);
    for (int i = 0; i < INSTANCES; i++)
        scx_stop(in[i].pid, 15000);

    long requests = (long)rx_nrequests(rx), repeated = rx_repeated_keys(rx);
    long s500 = rx_count_status(rx, 500), s429 = rx_count_status(rx, 429);
    long slow = 0;
    rx_lock(rx);
    for (size_t i = 0; i < rx_nrequests(rx); i++)
        slow += rx_request(rx, i)->fault && rx_request(rx, i)->status == 200;
    rx_unlock(rx);
    long honoured = rx_check_retry_after(rx);
    long long replays =
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'replay'", 0, NULL);
    fprintf(stderr,
            "http crash test: %d kills by the test, %d at failpoints, %" PRId64
            " records per partition; %ld requests (%ld repeating a key), %ld x 500, %ld x 429 "
            "(%ld retried by the same owner), %ld slow, %ld connections, %lld replayed batches, "
            "%ld requests checked pending\n",
            kills, self_kills, produced, requests, repeated, s500, s429, honoured, slow,
            rx_connections(rx), replays, rx_pending_checked(rx));

    /* Every key's bodies identical; every record once, in order, with its key and value. */
    struct rx_verify_opts v = {.pipeline = "p1",
                               .topic = "orders",
                               .nparts = NPARTS,
                               .count = produced,
                               .seq_values = true};
    ck_assert_int_eq(rx_verify(rx, &v), produced * NPARTS);

    /* The faults and crashes did happen, and inside batches. */
    ck_assert_int_ge(kills + self_kills, MIN_KILLS);
    ck_assert_int_gt(s500, 0);
    ck_assert_int_gt(s429, 0);
    ck_assert_int_gt(slow, 0);
    ck_assert_int_gt(repeated, 0);
    ck_assert_int_gt(replays, 0);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.checkpoints WHERE "
                               "pending_first_offset IS NOT NULL OR state <> 'ok'",
                               0, NULL),
                     0);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL), 0);
    rx_stop(rx);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("http crash");
    TCase *tc = tcase_create("kill -9 and receiver faults");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_http_crash_and_faults);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
