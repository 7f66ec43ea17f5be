/*
 * check_assign.c - the lease-mode ownership judgement (sc_assign_plan())
 * as a pure function, without PostgreSQL or Kafka.
 *
 * A small model of the lease table plays the database: each instance in
 * turn (in a random order) plans from the table as it is and its actions
 * are applied with the statements' conditions (a take needs a free lease
 * not reserved for someone else, a request needs a live owner and no
 * request on it yet, a release or refusal needs to be the owner's).
 * Instances only ask others for partitions when they wanted to on their
 * previous turn too, as the pipeline does (hysteresis).
 *
 * Proven for N = 1..5 instances and P = 1..64 partitions: from nothing,
 * after an instance joins, after one leaves (crash: its leases lapse), and
 * after one drains, the table comes to rest within a bounded number of
 * rounds with every partition owned and every eligible instance holding
 * floor(P/N) or ceil(P/N); a join moves exactly the partitions the newcomer
 * ends up with, a departure only the departed one's; at rest nobody plans
 * anything (no ping-pong).  Pins and moves are honoured.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/sc_assign.h"

#define MAX_INST  8
#define MAX_PARTS 64
#define TTL       3 /* reservations last this many rounds */

struct model {
    int ninst;
    char ids[MAX_INST][16];
    bool live[MAX_INST];
    bool draining[MAX_INST];
    bool wanted_steal[MAX_INST];
    int np;
    char topic[MAX_PARTS][8];
    int owner[MAX_PARTS];   /* index, -1 = none */
    int handoff[MAX_PARTS]; /* index, -1 = none */
    enum sc_handoff_reason reason[MAX_PARTS];
    int handoff_age[MAX_PARTS];
    int held[MAX_PARTS];
    int pinned[MAX_PARTS];
    long moves; /* ownership changes */
    unsigned seed;
};

static void model_init(struct model *m, int ninst, int np, unsigned seed)
{
    memset(m, 0, sizeof(*m));
    m->ninst = ninst;
    m->np = np;
    m->seed = seed;
    for (int i = 0; i < MAX_INST; i++) {
        snprintf(m->ids[i], sizeof(m->ids[i]), "sc-%d", i + 1);
        m->live[i] = i < ninst;
    }
    for (int k = 0; k < np; k++) {
        /* two topics, as a pipeline with several topics has */
        snprintf(m->topic[k], sizeof(m->topic[k]), "%s", k % 3 ? "orders" : "refunds");
        m->owner[k] = m->handoff[k] = m->pinned[k] = -1;
    }
}

static int id_index(const struct model *m, const char *id)
{
    for (int i = 0; id && i < MAX_INST; i++)
        if (strcmp(m->ids[i], id) == 0)
            return i;
    return -1;
}

/* A plan made by one instance, applied later. */
struct plan {
    int me;
    enum sc_assign_act act[MAX_PARTS];
    const char *target[MAX_PARTS];
};

/* Plans for instance me from the table as it is now; returns whether it wants to steal. */
static bool plan_for(struct model *m, int me, struct plan *pl)
{
    struct sc_assign_inst insts[MAX_INST];
    struct sc_assign_part parts[MAX_PARTS];
    size_t ni = 0;
    pl->me = me;
    for (int i = 0; i < MAX_INST; i++)
        if (m->live[i])
            insts[ni++] = (struct sc_assign_inst){m->ids[i], !m->draining[i]};
    for (int k = 0; k < m->np; k++)
        parts[k] = (struct sc_assign_part){
            .topic = m->topic[k],
            .partition = k,
            .owner = m->owner[k] >= 0 ? m->ids[m->owner[k]] : NULL,
            .pinned_to = m->pinned[k] >= 0 ? m->ids[m->pinned[k]] : NULL,
            .handoff_to = m->handoff[k] >= 0 ? m->ids[m->handoff[k]] : NULL,
            .reason = m->reason[k],
            .handoff_ms = m->handoff_age[k],
            .held_ms = m->held[k],
        };
    struct sc_assign_in in = {
        .me = m->ids[me],
        .insts = insts,
        .ninsts = ni,
        .parts = parts,
        .nparts = (size_t)m->np,
        .reservation_ms = TTL,
        .may_steal = m->wanted_steal[me],
    };
    struct sc_assign_out out = {.act = pl->act, .target = pl->target};
    sc_assign_plan(&in, &out);
    m->wanted_steal[me] = out.steals > 0;
    return out.steals > 0;
}

/* Applies a plan like the statements do (each action checks the row as it is now); returns
 * the number of actions that changed something. */
static int apply(struct model *m, const struct plan *pl)
{
    int me = pl->me, changed = 0;
    for (int k = 0; k < m->np; k++) {
        int t = id_index(m, pl->target[k]);
        switch (pl->act[k]) {
        case SC_ACT_NONE:
            break;
        case SC_ACT_TAKE: {
            int h = m->handoff[k];
            bool reserved_other = h >= 0 && h != me && m->handoff_age[k] < TTL && m->live[h];
            if (m->owner[k] < 0 && !reserved_other) {
                m->owner[k] = me;
                m->handoff[k] = -1;
                m->reason[k] = SC_HANDOFF_NONE;
                m->held[k] = 0;
                m->moves++;
                changed++;
            }
            break;
        }
        case SC_ACT_REQUEST:
            ck_assert_int_ge(t, 0);
            if (m->owner[k] == t && m->handoff[k] < 0 && (m->pinned[k] < 0 || m->pinned[k] == me)) {
                m->handoff[k] = me;
                m->reason[k] = SC_HANDOFF_BALANCE;
                m->handoff_age[k] = 0;
                changed++;
            }
            break;
        case SC_ACT_RELEASE:
            if (m->owner[k] == me) {
                m->owner[k] = -1;
                m->handoff[k] = t;
                m->handoff_age[k] = 0;
                changed++;
            }
            break;
        case SC_ACT_REFUSE:
            if (m->owner[k] == me && m->handoff[k] >= 0) {
                m->handoff[k] = -1;
                m->reason[k] = SC_HANDOFF_NONE;
                changed++;
            }
            break;
        }
    }
    return changed;
}

/* One instance's turn: plan from the table and apply at once. */
static int turn(struct model *m, int me, bool *wants)
{
    struct plan pl;
    *wants = plan_for(m, me, &pl);
    return apply(m, &pl);
}

static bool concurrent; /* settle(): every instance plans from the same table, then all apply */

/* Rounds (every live instance once, random order) until one changes nothing and nobody
 * wants to steal; returns how many it took (fails beyond max_rounds). */
static int settle(struct model *m, int max_rounds)
{
    for (int round = 1; round <= max_rounds; round++) {
        int order[MAX_INST], n = 0;
        for (int i = 0; i < MAX_INST; i++)
            if (m->live[i])
                order[n++] = i;
        for (int i = n - 1; i > 0; i--) {
            int j = (int)(rand_r(&m->seed) % (unsigned)(i + 1)), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        int changed = 0;
        bool wants_any = false;
        static struct plan plans[MAX_INST];
        for (int i = 0; i < n; i++) {
            if (concurrent) {
                wants_any |= plan_for(m, order[i], &plans[i]);
            } else {
                bool w;
                changed += turn(m, order[i], &w);
                wants_any |= w;
            }
        }
        for (int i = 0; concurrent && i < n; i++)
            changed += apply(m, &plans[i]);
        for (int k = 0; k < m->np; k++) {
            m->held[k]++;
            m->handoff_age[k]++;
        }
        if (changed == 0 && !wants_any)
            return round;
    }
    ck_abort_msg("no rest after %d rounds", max_rounds);
    return -1;
}

static int owned_by(const struct model *m, int i)
{
    int n = 0;
    for (int k = 0; k < m->np; k++)
        n += m->owner[k] == i;
    return n;
}

/* Every partition owned by an eligible instance; each eligible one holds floor or ceil. */
static void assert_balanced(const struct model *m, const char *what)
{
    int n = 0;
    for (int i = 0; i < MAX_INST; i++)
        n += m->live[i] && !m->draining[i];
    int lo = m->np / n, hi = (m->np + n - 1) / n;
    for (int k = 0; k < m->np; k++)
        ck_assert_msg(m->owner[k] >= 0 && m->live[m->owner[k]] && !m->draining[m->owner[k]],
                      "%s: N=%d P=%d: partition %d not owned by an eligible instance", what, n,
                      m->np, k);
    for (int i = 0; i < MAX_INST; i++) {
        if (!m->live[i])
            continue;
        int c = owned_by(m, i);
        if (m->draining[i])
            ck_assert_msg(c == 0, "%s: draining %s still holds %d", what, m->ids[i], c);
        else
            ck_assert_msg(c >= lo && c <= hi, "%s: N=%d P=%d: %s holds %d, want %d..%d", what, n,
                          m->np, m->ids[i], c, lo, hi);
    }
}

/* At rest, nobody plans anything for a while. */
static void assert_at_rest(struct model *m)
{
    int before[MAX_PARTS];
    memcpy(before, m->owner, sizeof(before));
    for (int round = 0; round < 5; round++)
        for (int i = 0; i < MAX_INST; i++) {
            bool w;
            if (m->live[i]) {
                ck_assert_int_eq(turn(m, i, &w), 0);
                ck_assert(!w);
            }
        }
    ck_assert_int_eq(memcmp(before, m->owner, sizeof(before)), 0);
}

START_TEST(balance_from_nothing)
{
    for (int n = 1; n <= 5; n++)
        for (int p = 1; p <= MAX_PARTS; p++) {
            struct model m;
            model_init(&m, n, p, (unsigned)(n * 1000 + p));
            int rounds = settle(&m, 60);
            assert_balanced(&m, "from nothing");
            assert_at_rest(&m);
            /* Free partitions are taken directly: nothing moves twice. */
            ck_assert_msg(m.moves == p, "N=%d P=%d: %ld moves for %d partitions", n, p, m.moves, p);
            ck_assert_msg(rounds <= 6, "N=%d P=%d: %d rounds", n, p, rounds);
        }
}
END_TEST

START_TEST(join_moves_only_what_the_newcomer_takes)
{
    for (int n = 1; n <= 4; n++)
        for (int p = 1; p <= MAX_PARTS; p++) {
            struct model m;
            model_init(&m, n, p, (unsigned)(n * 7919 + p));
            settle(&m, 60);
            int before[MAX_PARTS];
            memcpy(before, m.owner, sizeof(before));
            m.live[n] = true; /* instance n+1 starts */
            m.moves = 0;
            int rounds = settle(&m, 60);
            assert_balanced(&m, "join");
            assert_at_rest(&m);
            int newcomer = owned_by(&m, n), changed = 0;
            for (int k = 0; k < p; k++)
                if (m.owner[k] != before[k]) {
                    changed++;
                    ck_assert_msg(m.owner[k] == n,
                                  "N=%d P=%d: partition %d moved from %s to %s, not to the "
                                  "newcomer",
                                  n + 1, p, k, m.ids[before[k]], m.ids[m.owner[k]]);
                }
            ck_assert_int_eq(changed, newcomer);
            ck_assert_int_eq(m.moves, newcomer);
            /* Asked in its second round, handed over in the next: a few rounds per partition
             * asked of each owner, in parallel across owners. */
            ck_assert_msg(rounds <= 4 + 2 * ((p + n) / (n + 1)), "N=%d P=%d: %d rounds", n + 1, p,
                          rounds);
        }
}
END_TEST

START_TEST(leave_moves_only_the_departed_ones)
{
    for (int n = 2; n <= 5; n++)
        for (int p = 1; p <= MAX_PARTS; p++) {
            struct model m;
            model_init(&m, n, p, (unsigned)(n * 104729 + p));
            settle(&m, 60);
            int gone = (int)(m.seed % (unsigned)n);
            int before[MAX_PARTS];
            memcpy(before, m.owner, sizeof(before));
            /* Crash: the registration and the leases lapse together. */
            m.live[gone] = false;
            for (int k = 0; k < p; k++)
                if (m.owner[k] == gone)
                    m.owner[k] = -1;
            settle(&m, 60);
            assert_balanced(&m, "leave");
            assert_at_rest(&m);
            for (int k = 0; k < p; k++)
                if (before[k] != gone)
                    ck_assert_msg(m.owner[k] == before[k],
                                  "N=%d P=%d: partition %d of a survivor moved", n - 1, p, k);
        }
}
END_TEST

START_TEST(drain_hands_everything_over)
{
    for (int n = 2; n <= 5; n++)
        for (int p = 1; p <= 40; p++) {
            struct model m;
            model_init(&m, n, p, (unsigned)(n * 31 + p));
            settle(&m, 60);
            m.draining[0] = true;
            settle(&m, 60);
            assert_balanced(&m, "drain");
            ck_assert_int_eq(owned_by(&m, 0), 0);
            /* Undrained, it gets its share back. */
            m.draining[0] = false;
            settle(&m, 80);
            assert_balanced(&m, "undrain");
            assert_at_rest(&m);
        }
}
END_TEST

START_TEST(pins_and_moves_are_honoured)
{
    struct model m;
    model_init(&m, 3, 12, 42);
    settle(&m, 60);
    /* Pin a partition of sc-1 to sc-3: sc-1 hands it over, and it stays. */
    int k = 0;
    while (m.owner[k] != 0)
        k++;
    m.pinned[k] = 2;
    settle(&m, 60);
    ck_assert_int_eq(m.owner[k], 2);
    /* Balancing may move another partition of sc-3's, never the pinned one. */
    for (int r = 0; r < 10; r++)
        settle(&m, 60);
    ck_assert_int_eq(m.owner[k], 2);
    /* A pin to an instance that is gone is void: the partition is taken over. */
    m.live[2] = false;
    for (int j = 0; j < m.np; j++)
        if (m.owner[j] == 2)
            m.owner[j] = -1;
    settle(&m, 60);
    ck_assert(m.owner[k] == 0 || m.owner[k] == 1);
    /* It comes back: the pinned partition returns to it. */
    m.live[2] = true;
    settle(&m, 60);
    ck_assert_int_eq(m.owner[k], 2);
    m.pinned[k] = -1;

    /* A move (operator) is honoured even against the balance. */
    int j = 0;
    while (m.owner[j] != 0)
        j++;
    m.handoff[j] = 1;
    m.reason[j] = SC_HANDOFF_MOVE;
    m.handoff_age[j] = 0;
    bool w;
    turn(&m, 0, &w);
    ck_assert_int_eq(m.owner[j], -1);
    ck_assert_int_eq(m.handoff[j], 1);
    turn(&m, 2, &w); /* reserved: sc-3 must not take it */
    ck_assert_int_eq(m.owner[j], -1);
    turn(&m, 1, &w);
    ck_assert_int_eq(m.owner[j], 1);
    settle(&m, 60);
    assert_balanced(&m, "after a move");
}
END_TEST

START_TEST(requests_are_refused_without_imbalance)
{
    /* Two instances at 3 and 2: a request of the one at 2 is refused (3 < 2 + 2). */
    struct model m;
    model_init(&m, 2, 5, 7);
    settle(&m, 60);
    int small = owned_by(&m, 0) < owned_by(&m, 1) ? 0 : 1, big = 1 - small;
    int k = 0;
    while (m.owner[k] != big)
        k++;
    m.handoff[k] = small;
    m.reason[k] = SC_HANDOFF_BALANCE;
    m.handoff_age[k] = 0;
    bool w;
    ck_assert_int_eq(turn(&m, big, &w), 1);
    ck_assert_int_eq(m.owner[k], big);
    ck_assert_int_eq(m.handoff[k], -1);
}
END_TEST

/* Every instance plans from the same (soon stale) table, as concurrent ticks do: races are
 * settled by the statements' conditions, and the table still comes to rest balanced. */
START_TEST(concurrent_plans_still_balance)
{
    concurrent = true;
    for (int n = 1; n <= 5; n++)
        for (int p = 1; p <= MAX_PARTS; p++) {
            struct model m;
            model_init(&m, n, p, (unsigned)(n * 5 + p * 3));
            settle(&m, 80);
            assert_balanced(&m, "concurrent, from nothing");
            if (n < 5) {
                m.live[n] = true;
                settle(&m, 80);
                assert_balanced(&m, "concurrent, join");
            }
            int gone = p % (n + (n < 5));
            m.live[gone] = false;
            for (int k = 0; k < p; k++)
                if (m.owner[k] == gone)
                    m.owner[k] = -1;
            if (n + (n < 5) > 1) {
                settle(&m, 80);
                assert_balanced(&m, "concurrent, leave");
            }
        }
    concurrent = false;
}
END_TEST

START_TEST(plan_is_deterministic)
{
    struct sc_assign_inst insts[] = {{"a", true}, {"b", true}, {"c", true}};
    struct sc_assign_part parts[10];
    for (int k = 0; k < 10; k++)
        parts[k] = (struct sc_assign_part){.topic = "t", .partition = k};
    enum sc_assign_act a1[10], a2[10];
    const char *t1[10], *t2[10];
    struct sc_assign_in in = {.me = "b", .insts = insts, .ninsts = 3, .parts = parts, .nparts = 10};
    struct sc_assign_out o1 = {.act = a1, .target = t1}, o2 = {.act = a2, .target = t2};
    sc_assign_plan(&in, &o1);
    sc_assign_plan(&in, &o2);
    ck_assert_int_eq(memcmp(a1, a2, sizeof(a1)), 0);
    ck_assert_int_eq(o1.share, 4);
    ck_assert_int_eq(o1.eligible, 3);
    int takes = 0;
    for (int k = 0; k < 10; k++)
        takes += a1[k] == SC_ACT_TAKE;
    ck_assert_int_eq(takes, 4);
    /* Not eligible (draining, or not registered): takes nothing. */
    insts[1].eligible = false;
    sc_assign_plan(&in, &o1);
    for (int k = 0; k < 10; k++)
        ck_assert_int_eq(a1[k], SC_ACT_NONE);
    ck_assert_int_eq(o1.share, 0);
    ck_assert_int_eq(sc_handoff_reason_parse("move"), SC_HANDOFF_MOVE);
    ck_assert_str_eq(sc_handoff_reason_name(SC_HANDOFF_PIN), "pin");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("assign");
    TCase *tc = tcase_create("plan");
    tcase_add_test(tc, balance_from_nothing);
    tcase_add_test(tc, join_moves_only_what_the_newcomer_takes);
    tcase_add_test(tc, leave_moves_only_the_departed_ones);
    tcase_add_test(tc, drain_hands_everything_over);
    tcase_add_test(tc, pins_and_moves_are_honoured);
    tcase_add_test(tc, requests_are_refused_without_imbalance);
    tcase_add_test(tc, concurrent_plans_still_balance);
    tcase_add_test(tc, plan_is_deterministic);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
