/*
 * check_metrics.c - the Prometheus exposition (sidecar/base/sc_metrics.c):
 * sidecar_pending_age_seconds, the age of a partition's pending batch that
 * the dashboard and the "pending batch too old" alert
 * (docker/observability/) read, counts from the latest pend, is 0 without a
 * pending batch, and every per-partition family has a sample for every
 * partition series.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_metrics.h"
#include "scx.h"

static char *render(void)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    ck_assert_int_eq(sc_metrics_render(&b), 0);
    ck_assert_int_eq(sc_buf_putc(&b, '\0'), 0);
    return (char *)b.data;
}

static double age(const char *labels)
{
    char *text = render();
    ck_assert_msg(strstr(text, "# TYPE sidecar_pending_age_seconds gauge\n"), "%s", text);
    double v = scx_metric(text, "sidecar_pending_age_seconds", labels);
    free(text);
    return v;
}

/* Waits (without a fixed sleep) until the age of labels' batch exceeds min seconds. */
static double age_above(const char *labels, double min)
{
    int64_t deadline = sc_mono_ms() + 10000;
    double v;
    while ((v = age(labels)) <= min && sc_mono_ms() < deadline)
        sc_sleep_ms(5, NULL);
    return v;
}

START_TEST(test_pending_age)
{
    struct sc_metrics_part *m = sc_metrics_part("p1", "orders", 3);
    struct sc_metrics_part *other = sc_metrics_part("p1", "orders", 4);
    const char *l3 = "pipeline=\"p1\",topic=\"orders\",partition=\"3\"";
    const char *l4 = "pipeline=\"p1\",topic=\"orders\",partition=\"4\"";

    /* No pending batch: a 0 sample, not a missing one (alerts compare it). */
    ck_assert(age(l3) == 0);
    char *text = render();
    ck_assert_msg(strstr(text, "sidecar_pending_age_seconds{pipeline=\"p1\",topic=\"orders\","
                               "partition=\"3\"} 0.000\n"),
                  "%s", text);
    free(text);

    sc_metrics_set_pending(m, 1);
    double first = age_above(l3, 0.05);
    ck_assert_msg(first > 0.05 && first < 60, "age %g", first);
    ck_assert(age(l4) == 0); /* per partition */

    /* A commit that pends the next batch starts the clock again. */
    sc_metrics_set_pending(m, 1);
    double second = age(l3);
    ck_assert_msg(second < first, "new batch %g, old %g", second, first);
    ck_assert_int_eq(atomic_load(&m->pending), 1);

    sc_metrics_set_pending(m, 0);
    ck_assert(age(l3) == 0);
    ck_assert_int_eq(atomic_load(&m->pending), 0);
    ck_assert_int_eq(atomic_load(&other->pending), 0);
}
END_TEST

START_TEST(test_every_partition_family_has_samples)
{
    sc_metrics_part("p2", "t", 0);
    char *text = render();
    static const char *const families[] = {
        "sidecar_records_consumed_total",
        "sidecar_records_delivered_total",
        "sidecar_batches_committed_total",
        "sidecar_replays_total",
        "sidecar_fenced_total",
        "sidecar_dead_letters_total",
        "sidecar_sink_errors_total",
        "sidecar_pending_checkpoints",
        "sidecar_partitions_owned",
        "sidecar_partition_errors",
        "sidecar_pending_age_seconds",
        "sidecar_checkpoint_seconds_bucket",
        "sidecar_sink_write_seconds_bucket",
    };
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
        char want[128];
        snprintf(want, sizeof(want), "\n%s{pipeline=\"p2\",topic=\"t\",partition=\"0\"",
                 families[i]);
        ck_assert_msg(strstr(text, want), "no sample of %s for p2/t/0", families[i]);
    }
    free(text);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");
    tcase_add_test(tc, test_pending_age);
    tcase_add_test(tc, test_every_partition_family_has_samples);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    sc_metrics_free_all();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
