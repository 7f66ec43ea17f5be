/*
 * check_pick.c - sc_pick: two ways of doing a job, the cheaper one chosen
 * by measurement per size class, the other one tried now and then.
 */
#include <check.h>
#include <stdlib.h>

#include "base/sc_pick.h"

START_TEST(test_classes)
{
    ck_assert_int_eq(sc_pick_class(1), 0);
    ck_assert_int_eq(sc_pick_class(3), 0);
    ck_assert_int_eq(sc_pick_class(4), 1);
    ck_assert_int_eq(sc_pick_class(15), 1);
    ck_assert_int_eq(sc_pick_class(16), 2);
    ck_assert_int_eq(sc_pick_class(4999), 6);
    ck_assert_int_eq(sc_pick_class(5000), 6);
    ck_assert_int_eq(sc_pick_class((size_t)1 << 40), SC_PICK_CLASSES - 1);
}
END_TEST

/*
 * A simulated connection where way 0 costs 10 + 1 per unit and way 1 costs
 * 100 + 0.5 per unit: way 1 wins from 180 units on.  After warming up, big
 * jobs take way 1 and small ones way 0, each trying the other after 8 jobs,
 * then after 16, 32, ... as it keeps proving dearer.
 */
static int64_t cost(int way, size_t n)
{
    return way == 0 ? 10 + (int64_t)n : 100 + (int64_t)n / 2;
}

static int run(struct sc_pick *p, size_t n, int jobs, int *counts)
{
    counts[0] = counts[1] = 0;
    for (int i = 0; i < jobs; i++) {
        int w = sc_pick_way(p, n);
        ck_assert(w == 0 || w == 1);
        counts[w]++;
        sc_pick_observe(p, w, n, cost(w, n));
    }
    return sc_pick_best(p, n);
}

START_TEST(test_measured_choice)
{
    struct sc_pick p;
    sc_pick_init(&p, 8, 0, 0.1);
    ck_assert_int_eq(sc_pick_best(&p, 5000), -1);
    int counts[2];
    ck_assert_int_eq(run(&p, 5000, 80, counts), 1);
    /* warm-up, then the other way after 8, 16 and 32 more jobs (80 in all) */
    ck_assert_int_eq(counts[0], SC_PICK_WARMUP + 3);
    ck_assert_int_eq(run(&p, 8, 80, counts), 0); /* another class, its own answer */
    ck_assert_int_eq(counts[1], 1 + 3);
    ck_assert_int_eq(sc_pick_best(&p, 5000), 1); /* unchanged by the small jobs */
}
END_TEST

/* The costs change (the server got busy with way 1's kind of work): the choice follows. */
START_TEST(test_follows_change)
{
    struct sc_pick p;
    sc_pick_init(&p, 4, 0, 0.1);
    int counts[2];
    ck_assert_int_eq(run(&p, 1000, 40, counts), 1);
    for (int i = 0; i < 200; i++) {
        int w = sc_pick_way(&p, 1000);
        sc_pick_observe(&p, w, 1000, w == 1 ? 5000 : cost(0, 1000));
    }
    ck_assert_int_eq(sc_pick_best(&p, 1000), 0);
    ck_assert_uint_gt(p.interval[sc_pick_class(1000)], 4); /* way 1 proved dearer since */
}
END_TEST

/*
 * Exploring the dearer way costs: each exploration that confirms the
 * choice halves how often it comes, down to 1 job in SC_PICK_BACKOFF *
 * explore_every; a change of choice makes it frequent again.
 */
START_TEST(test_exploration_backs_off)
{
    struct sc_pick p;
    sc_pick_init(&p, 4, 0, 0.1);
    int counts[2];
    int c = sc_pick_class(5000);
    ck_assert_int_eq(run(&p, 5000, 2000, counts), 1);
    ck_assert_uint_eq(p.interval[c], 4 * SC_PICK_BACKOFF);
    /* 4, 8, 16, 32 and then every 64th job: far fewer than 1 in 4 */
    ck_assert_int_le(counts[0], SC_PICK_WARMUP + 4 + 2000 / 64 + 1);
    ck_assert_int_ge(counts[0], SC_PICK_WARMUP + 2000 / 64 - 1);
    /* Way 1 gets dear (its own jobs show it: no exploration needed): the choice moves to
     * way 0 and way 1 is looked at every 4th job again. */
    for (int i = 0; i < 20 && sc_pick_best(&p, 5000) != 0; i++) {
        int w = sc_pick_way(&p, 5000);
        sc_pick_observe(&p, w, 5000, w == 1 ? 50000 : cost(0, 5000));
    }
    ck_assert_int_eq(sc_pick_best(&p, 5000), 0);
    ck_assert_uint_eq(p.interval[c], 4);
}
END_TEST

/* The preferred way keeps its place unless the other is cheaper by more than the margin. */
START_TEST(test_margin)
{
    struct sc_pick p;
    sc_pick_init(&p, 16, 0, 0.15);
    for (int i = 0; i < 2 * SC_PICK_WARMUP; i++) {
        int w = sc_pick_way(&p, 100);
        sc_pick_observe(&p, w, 100, w == 0 ? 1000 : 900); /* the other 10 % cheaper */
    }
    ck_assert_int_eq(sc_pick_best(&p, 100), 0);
    for (int i = 0; i < 40; i++) {
        int w = sc_pick_way(&p, 100);
        sc_pick_observe(&p, w, 100, w == 0 ? 1000 : 700); /* now 30 % cheaper */
    }
    ck_assert_int_eq(sc_pick_best(&p, 100), 1);
}
END_TEST

/* Nonsense observations are ignored. */
START_TEST(test_ignores_nonsense)
{
    struct sc_pick p;
    sc_pick_init(&p, 0, 0, 0); /* clamped to 2 */
    ck_assert_uint_eq(p.explore_every, 2);
    sc_pick_observe(&p, 2, 10, 100);
    sc_pick_observe(&p, -1, 10, 100);
    sc_pick_observe(&p, 0, 0, 100);
    sc_pick_observe(&p, 0, 10, -5);
    ck_assert_uint_eq(p.way[sc_pick_class(10)][0].samples, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pick");
    TCase *tc = tcase_create("pick");
    tcase_add_test(tc, test_classes);
    tcase_add_test(tc, test_measured_choice);
    tcase_add_test(tc, test_follows_change);
    tcase_add_test(tc, test_exploration_backs_off);
    tcase_add_test(tc, test_margin);
    tcase_add_test(tc, test_ignores_nonsense);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
