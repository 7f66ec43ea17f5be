/*
 * check_http_retry_after.c - the HTTP sink waits as long as the receiver
 * asks with Retry-After on 429 and 503, in both of its forms (delay
 * seconds and an HTTP date), and no longer: the worker comes back exactly
 * when the sink's wait is over instead of polling with a backoff of its
 * own that grows with every poll (which made a 2 s Retry-After cost up to
 * 30 s).  Each wait is counted in sidecar_http_retry_after_total.
 *
 * The receiver answers every batch's first two requests with the status
 * and a Retry-After of 2 s; the retry policy's own backoff is far shorter
 * (20 ms) and its cap far longer (10 s), so only the header explains the
 * waits.  Checked: each next attempt of a key comes after the wait asked,
 * and soon after it; exactly one failed write (sidecar_sink_errors_total)
 * and one Retry-After wait per 429/503, i.e. the sink was not called again
 * before its wait was over; every record once, in order, and each request's
 * range pending in PostgreSQL when it arrived (I2).
 */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "receiver.h"
#include "scx.h"

#define NPARTS 2
#define COUNT  100

struct variant {
    int status;
    const char *retry_after; /* what the receiver sends */
    int64_t min_wait_ms;     /* the least the sink must wait after such an answer */
    int64_t max_wait_ms;     /* the most it may ask for */
};

static const struct variant variants[] = {
    {429, "2", 2000, 2000},
    /* An HTTP date 2 s ahead, at one-second resolution: 1 to 2 s from the answer. */
    {503, "+2", 1000, 2000},
};

START_TEST(test_retry_after_is_honoured)
{
    const struct variant *v = &variants[_i];
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    struct rx *rx = rx_start();
    rx_check_pending(rx, e.dsn); /* I2 on every request */
    rx_set_faults(rx, &(struct rx_faults){.retry_status = v->status,
                                          .retry_times = 2,
                                          .retry_after = v->retry_after});
    char sink[512];
    snprintf(sink, sizeof(sink),
             "{\"type\":\"http\",\"url\":\"%s\",\"on_error\":\"stop\","
             "\"retry\":{\"initial_backoff_ms\":20,\"max_backoff_ms\":10000,"
             "\"max_attempts\":10,\"max_elapsed_ms\":60000}}",
             rx_url(rx));
    int port = scx_free_port();
    struct scx_opts o = {.max_records = 50, .admin_port = port, .sink = sink};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 0, COUNT);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, COUNT, 120000),
                  "records not committed in time; log:\n%s", scx_log_tail(log, 3000));
    double errors = scx_metric_at(port, "sidecar_sink_errors_total", "");
    double waits = scx_metric_at(port, "sidecar_http_retry_after_total", "");
    scx_stop(pid, 15000);

    long refused = rx_count_status(rx, v->status);
    ck_assert_int_gt(refused, 0);
    rx_lock(rx);
    size_t n = rx_nrequests(rx);
    long followed = 0;
    int64_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        const struct rx_request *r = rx_request(rx, i);
        if (r->status != v->status)
            continue;
        for (size_t j = i + 1; j < n; j++) {
            const struct rx_request *next = rx_request(rx, j);
            if (strcmp(next->key, r->key) != 0)
                continue;
            int64_t gap = next->at_ms - r->at_ms;
            ck_assert_msg(gap >= v->min_wait_ms - 50,
                          "key %s sent again %" PRId64 " ms after %d with Retry-After: %s", r->key,
                          gap, v->status, r->retry_after);
            /* Soon after: the worker does not add a backoff of its own (generous for a
             * loaded machine; what the header asks is at most max_wait_ms). */
            ck_assert_msg(gap <= v->max_wait_ms + 3000,
                          "key %s sent again only %" PRId64 " ms after %d with Retry-After: %s",
                          r->key, gap, v->status, r->retry_after);
            worst = gap > worst ? gap : worst;
            followed++;
            break;
        }
    }
    rx_unlock(rx);
    fprintf(stderr,
            "%d with Retry-After %s: %ld answers, %ld followed up, longest gap %" PRId64
            " ms; sink errors %.0f, Retry-After waits %.0f\n",
            v->status, v->retry_after, refused, followed, worst, errors, waits);
    ck_assert_int_eq(followed, refused);
    /* One failed write per answer: the sink was not asked again before its wait was over. */
    ck_assert_int_eq((long)errors, refused);
    ck_assert_int_eq((long)waits, refused);

    struct rx_verify_opts vo = {
        .pipeline = "p1", .topic = "orders", .nparts = NPARTS, .count = COUNT, .seq_values = true};
    ck_assert_int_eq(rx_verify(rx, &vo), NPARTS * COUNT);
    ck_assert_int_eq(rx_pending_checked(rx), (long)n);
    rx_stop(rx);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("http_retry_after");
    TCase *tc = tcase_create("retry-after");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_retry_after_is_honoured, 0,
                        (int)(sizeof(variants) / sizeof(variants[0])));
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
