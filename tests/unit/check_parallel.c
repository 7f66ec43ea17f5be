/*
 * check_parallel.c - sc_parallel: a run's items each called once, several
 * at once, and the run over only when all are.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "base/sc_parallel.h"

struct item {
    int calls;
    pthread_t thread;
};

static void count(void *arg)
{
    struct item *it = arg;
    it->calls++;
    it->thread = pthread_self();
}

START_TEST(test_each_item_once)
{
    struct sc_parallel pp;
    sc_parallel_init(&pp);
    sc_parallel_run(&pp, count, NULL, sizeof(struct item), 0);
    ck_assert_int_eq(pp.nhelpers, 0);
    /* One item: the caller's own, no helper started for it. */
    struct item one = {0};
    sc_parallel_run(&pp, count, &one, sizeof(one), 1);
    ck_assert_int_eq(one.calls, 1);
    ck_assert(pthread_equal(one.thread, pthread_self()));
    ck_assert_int_eq(pp.nhelpers, 0);
    /* Many runs of many items, fewer and more than the helpers. */
    for (size_t n = 2; n < 40; n++) {
        struct item *items = calloc(n, sizeof(*items));
        sc_parallel_run(&pp, count, items, sizeof(*items), n);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(items[i].calls == 1, "run of %zu: item %zu called %d times", n, i,
                          items[i].calls);
        free(items);
    }
    ck_assert_int_eq(pp.nhelpers, SC_PARALLEL_MAX - 1);
    sc_parallel_destroy(&pp);
}
END_TEST

/*
 * Calls that each wait until SC_PARALLEL_MAX of them have started: they
 * can only all return if that many run at once.  One that waited in vain
 * for a second gives up and says so (no test hangs).
 */
static atomic_int started, gave_up;

static void rendezvous(void *arg)
{
    (void)arg;
    atomic_fetch_add(&started, 1);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (atomic_load(&started) < SC_PARALLEL_MAX) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 10) {
            atomic_fetch_add(&gave_up, 1);
            return;
        }
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

START_TEST(test_items_run_at_once)
{
    struct sc_parallel pp;
    sc_parallel_init(&pp);
    for (int round = 0; round < 3; round++) {
        atomic_store(&started, 0);
        atomic_store(&gave_up, 0);
        char items[SC_PARALLEL_MAX];
        sc_parallel_run(&pp, rendezvous, items, 1, SC_PARALLEL_MAX);
        ck_assert_int_eq(atomic_load(&started), SC_PARALLEL_MAX);
        ck_assert_msg(atomic_load(&gave_up) == 0,
                      "round %d: %d calls waited in vain for %d at once", round,
                      atomic_load(&gave_up), SC_PARALLEL_MAX);
    }
    sc_parallel_destroy(&pp);
}
END_TEST

/* The run returns only once its slowest call has. */
static atomic_int finished;

static void slow_or_fast(void *arg)
{
    int ms = *(int *)arg;
    struct timespec d = {0, (long)ms * 1000000};
    nanosleep(&d, NULL);
    atomic_fetch_add(&finished, 1);
}

START_TEST(test_run_waits_for_every_call)
{
    struct sc_parallel pp;
    sc_parallel_init(&pp);
    int delays[] = {0, 200, 0, 0, 50, 0, 0};
    atomic_store(&finished, 0);
    sc_parallel_run(&pp, slow_or_fast, delays, sizeof(delays[0]), 7);
    ck_assert_int_eq(atomic_load(&finished), 7);
    sc_parallel_destroy(&pp);
}
END_TEST

static Suite *parallel_suite(void)
{
    Suite *s = suite_create("parallel");
    TCase *tc = tcase_create("parallel");
    tcase_add_test(tc, test_each_item_once);
    tcase_add_test(tc, test_items_run_at_once);
    tcase_add_test(tc, test_run_waits_for_every_call);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(parallel_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
