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
#include "scx_chaos.h"

#define NPARTS     4
#define PER_CHUNK  250 /* per partition: scx_chaos's 10 chunks x 250 x 4 = 10,000 records */
#define INSTANCES  2
#define MIN_KILLS  12
#define TIMEOUT_MS 1000
/* Records per partition in a backlog round (scx_chaos_backlog()). */
#define BACKLOG 1000

/* scx_chaos_until(): a batch was replayed and a key reached the receiver twice. */
static bool sent_twice(struct scx_chaos *c, void *rx)
{
    return rx_repeated_keys(rx) > 0 && scx_chaos_replays(c) > 0;
}

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
    struct scx_inst in[INSTANCES] = {
        {.name = "sc-1", .failpoints = "after_pend=kill@0.03"},
        {.name = "sc-2", .failpoints = "after_write=kill@0.03"},
    };
    struct scx_chaos c;
    scx_chaos_init(&c, &e, in, INSTANCES, NPARTS);
    c.per_chunk = PER_CHUNK;
    c.min_kills = MIN_KILLS;
    scx_chaos_start(&c, &o);
    scx_chaos_kill(&c);
    /* Calm: no more kills, but the receiver keeps injecting its faults. */
    scx_chaos_settle(&c);
    /* Whether a kill landed between a write and its commit is chance: if none did, sc-1
     * kills itself after its first write, with a backlog waiting. */
    scx_chaos_until(&c, sent_twice, rx, BACKLOG, "after_write=kill#1");

    long requests = (long)rx_nrequests(rx), repeated = rx_repeated_keys(rx);
    long s500 = rx_count_status(rx, 500), s429 = rx_count_status(rx, 429);
    long slow = 0;
    rx_lock(rx);
    for (size_t i = 0; i < rx_nrequests(rx); i++)
        slow += rx_request(rx, i)->fault && rx_request(rx, i)->status == 200;
    rx_unlock(rx);
    long honoured = rx_check_retry_after(rx);
    long long replays = scx_chaos_replays(&c);
    fprintf(stderr,
            "http crash test: %d kills by the test (%d of a working instance), %d at failpoints, "
            "%" PRId64
            " records per partition; %ld requests (%ld repeating a key), %ld x 500, %ld x 429 "
            "(%ld retried by the same owner), %ld slow, %ld connections, %lld replayed batches, "
            "%ld requests checked pending (%d rounds started with a backlog)\n",
            c.kills, c.kills_working, c.self_kills, c.produced, requests, repeated, s500, s429,
            honoured, slow, rx_connections(rx), replays, rx_pending_checked(rx), c.backlog_rounds);

    /* Every key's bodies identical; every record once, in order, with its key and value. */
    struct rx_verify_opts v = {.pipeline = "p1",
                               .topic = "orders",
                               .nparts = NPARTS,
                               .count = c.produced,
                               .seq_values = true};
    ck_assert_int_eq(rx_verify(rx, &v), c.produced * NPARTS);

    /* The faults and crashes did happen, and inside batches. */
    ck_assert_int_ge(c.kills + c.self_kills, MIN_KILLS);
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
