/*
 * check_checkpoint.c - the checkpoint statements (sc_checkpoint) against a
 * throwaway PostgreSQL, no sidecar binary and no Kafka: a write with a
 * superseded epoch is FENCED, one that expects another state of the row is
 * a CONFLICT, and neither changes the row or writes an event; every write
 * that commits writes exactly the event describing it, in its transaction.
 *
 * "Unchanged" is checked on the row as stored, with its xmin: a write that
 * rewrote the row with the same values would show too.  Each refused write
 * is followed by the same write with the right epoch and state, which must
 * succeed: so the refusal was for the reason the test names, not another.
 *
 * The server is started once (unchecked fixture); every test migrates a
 * database of its own.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/sc_log.h"
#include "db/sc_db.h"
#include "db/sc_migrate.h"
#include "hx.h"
#include "protocol/sc_checkpoint.h"
#include "protocol/sc_lease.h"

#define TOPIC   "orders"
#define LONG_MS 600000

static struct hx_pg pg;

static void pg_setup(void)
{
    hx_pg_start(&pg);
}

static void pg_teardown(void)
{
    hx_pg_stop(&pg);
}

/* A test's database: migrated, with an inspection connection. */
struct t {
    char dsn[512];
    PGconn *conn;
};

static void t_start(struct t *t, const char *name)
{
    char err[1024];

    hx_pg_create_db(&pg, name, t->dsn, sizeof(t->dsn));
    t->conn = hx_pg_connect(t->dsn);
    ck_assert_msg(sc_migrate_apply(t->conn, "sidecar", err, sizeof(err)) > 0, "migrate: %s", err);
}

static void t_stop(struct t *t)
{
    PQfinish(t->conn);
}

static void db_open(const struct t *t, struct sc_db *db)
{
    sc_db_init(db, t->dsn, "sidecar", "check_checkpoint", 5000);
    ck_assert_msg(sc_db_connect(db, true) == 0, "connect: %s", db->last_error);
}

/* Acquires partition 0 of TOPIC in pipeline for owner (asserts it was); returns the row. */
static struct sc_cp acquire(struct sc_db *db, const char *pipeline, const char *owner)
{
    struct sc_lease_req r = {.topic = TOPIC, .partition = 0};
    bool unavailable = true;

    ck_assert_msg(sc_lease_acquire(db, pipeline, owner, LONG_MS, NULL, &r, 1, &unavailable) == 0,
                  "acquire: %s", db->last_error);
    ck_assert_msg(r.acquired, "%s could not acquire %s: held by %s", owner, pipeline, r.holder);
    return r.cp;
}

static void release(struct sc_db *db, const char *pipeline, const char *owner, int64_t epoch)
{
    struct sc_lease_held h = {.topic = TOPIC, .partition = 0, .epoch = epoch};

    ck_assert_int_eq(sc_lease_release(db, pipeline, owner, NULL, &h, 1, "test", NULL), 1);
}

/* What a refused write must leave as it was: the row as stored, the events, the dead letters. */
struct snap {
    char *row;
    long long events, dead;
};

static void snap_take(const struct t *t, const char *pipeline, struct snap *s)
{
    const char *params[] = {pipeline, TOPIC};

    s->row = hx_pg_value(t->conn,
                         "SELECT c.xmin::text || ' ' || row_to_json(c)::text"
                         " FROM sidecar.checkpoints c WHERE pipeline = $1 AND topic = $2"
                         " AND partition = 0",
                         2, params);
    ck_assert(s->row != NULL);
    s->events =
        hx_pg_int(t->conn, "SELECT count(*) FROM sidecar.events WHERE pipeline = $1", 1, params);
    s->dead = hx_pg_int(t->conn, "SELECT count(*) FROM sidecar.dead_letters WHERE pipeline = $1", 1,
                        params);
}

static void snap_free(struct snap *s)
{
    free(s->row);
    s->row = NULL;
}

/* Asserts that nothing changed since *before (which is freed). */
static void check_unchanged(const struct t *t, const char *pipeline, struct snap *before,
                            const char *what)
{
    struct snap now;

    snap_take(t, pipeline, &now);
    ck_assert_msg(strcmp(now.row, before->row) == 0, "%s changed the row:\n  was %s\n  now %s",
                  what, before->row, now.row);
    ck_assert_msg(now.events == before->events, "%s wrote %lld events", what,
                  now.events - before->events);
    ck_assert_msg(now.dead == before->dead, "%s stored %lld dead letters", what,
                  now.dead - before->dead);
    snap_free(&now);
    snap_free(before);
}

/* Asserts that the cached state of the writer was left alone too. */
static void check_cp_same(const struct sc_cp *a, const struct sc_cp *b, const char *what)
{
    ck_assert_msg(memcmp(a, b, sizeof(*a)) == 0, "%s changed the caller's copy of the row", what);
}

static const char *st(enum sc_cp_status s)
{
    return sc_cp_status_name(s);
}

/* One dead letter, for writes that store them with the commit. */
static const struct sc_cp_dead dead1 = {
    .offset = 3,
    .envelope = "{\"offset\": 3, \"headers\": []}",
    .key = "k",
    .key_len = 1,
    .value = "v",
    .value_len = 1,
    .error = "rejected",
    .status = 422,
    .attempts = 1,
};

static long long count_of(const struct t *t, const char *sql, const char *pipeline)
{
    const char *params[] = {pipeline};

    return hx_pg_int(t->conn, sql, 1, params);
}

/* ---- fencing ------------------------------------------------------------------------ */

/*
 * A's epoch is superseded by B's (A released, B acquired).  For each kind of
 * write, A's attempt carries exactly B's view of the row but A's epoch: it
 * is FENCED and changes nothing, then B's identical write succeeds.
 */
START_TEST(stale_epoch_writes_are_fenced)
{
    struct t t;
    struct sc_db a, b;
    struct sc_cp_key ka = {.pipeline = "p", .topic = TOPIC, .partition = 0, .owner = "A"};
    struct sc_cp_key kb = ka;
    struct snap before;
    enum sc_cp_status s;

    kb.owner = "B";
    t_start(&t, "fenced");
    db_open(&t, &a);
    db_open(&t, &b);
    struct sc_cp cpa = acquire(&a, "p", "A");
    int64_t old = cpa.epoch;
    release(&a, "p", "A", old);
    struct sc_cp cpb = acquire(&b, "p", "B");
    ck_assert_int_gt(cpb.epoch, old);

    /* A stale copy: B's view of the row, A's epoch. */
#define STALE(var)          \
    struct sc_cp var = cpb; \
    var.epoch = old;        \
    struct sc_cp var##_copy = var

    /* set_start (start_from latest) */
    {
        STALE(x);
        snap_take(&t, "p", &before);
        s = sc_checkpoint_set_start(&a, &ka, &x, 0, "latest");
        ck_assert_msg(s == SC_CP_FENCED, "set_start: %s", st(s));
        check_unchanged(&t, "p", &before, "fenced set_start");
        check_cp_same(&x, &x_copy, "fenced set_start");
        ck_assert_int_eq(sc_checkpoint_set_start(&b, &kb, &cpb, 0, "latest"), SC_CP_OK);
    }
    /* pend */
    {
        STALE(x);
        snap_take(&t, "p", &before);
        s = sc_checkpoint_pend(&a, &ka, &x, 0, 9, 10, 111);
        ck_assert_msg(s == SC_CP_FENCED, "pend: %s", st(s));
        check_unchanged(&t, "p", &before, "fenced pend");
        check_cp_same(&x, &x_copy, "fenced pend");
        ck_assert_int_eq(sc_checkpoint_pend(&b, &kb, &cpb, 0, 9, 10, 111), SC_CP_OK);
    }
    /* commit, with a dead letter (stored in the same transaction, or not at all) */
    {
        STALE(x);
        snap_take(&t, "p", &before);
        s = sc_checkpoint_commit(&a, &ka, &x, 10, 1000, false, &dead1, 1);
        ck_assert_msg(s == SC_CP_FENCED, "commit: %s", st(s));
        check_unchanged(&t, "p", &before, "fenced commit");
        check_cp_same(&x, &x_copy, "fenced commit");
        ck_assert_int_eq(sc_checkpoint_commit(&b, &kb, &cpb, 10, 1000, false, &dead1, 1), SC_CP_OK);
        ck_assert_int_eq(
            count_of(&t, "SELECT count(*) FROM sidecar.dead_letters WHERE pipeline = $1", "p"), 1);
    }
    /* commit without dead letters (a single statement) */
    {
        ck_assert_int_eq(sc_checkpoint_pend(&b, &kb, &cpb, 10, 19, 10, 222), SC_CP_OK);
        STALE(x);
        snap_take(&t, "p", &before);
        s = sc_checkpoint_commit(&a, &ka, &x, 20, 2000, true, NULL, 0);
        ck_assert_msg(s == SC_CP_FENCED, "commit (replay): %s", st(s));
        check_unchanged(&t, "p", &before, "fenced commit (replay)");
        check_cp_same(&x, &x_copy, "fenced commit (replay)");
    }
    /* commit_and_pend */
    {
        STALE(x);
        snap_take(&t, "p", &before);
        s = sc_checkpoint_commit_and_pend(&a, &ka, &x, 20, 2000, false, NULL, 0, 20, 29, 10, 333);
        ck_assert_msg(s == SC_CP_FENCED, "commit_and_pend: %s", st(s));
        check_unchanged(&t, "p", &before, "fenced commit_and_pend");
        check_cp_same(&x, &x_copy, "fenced commit_and_pend");
        ck_assert_int_eq(
            sc_checkpoint_commit_and_pend(&b, &kb, &cpb, 20, 2000, false, NULL, 0, 20, 29, 10, 333),
            SC_CP_OK);
        ck_assert_int_eq(sc_checkpoint_commit(&b, &kb, &cpb, 30, 3000, false, NULL, 0), SC_CP_OK);
    }
    /* advance (transactional sinks; their dead letters are in the caller's transaction) */
    {
        STALE(x);
        snap_take(&t, "p", &before);
        s = sc_checkpoint_advance(&a, &ka, &x, 30, 39, 10, 40, NULL, 0);
        ck_assert_msg(s == SC_CP_FENCED, "advance: %s", st(s));
        check_unchanged(&t, "p", &before, "fenced advance");
        check_cp_same(&x, &x_copy, "fenced advance");
        ck_assert_int_eq(sc_checkpoint_advance(&b, &kb, &cpb, 30, 39, 10, 40, NULL, 0), SC_CP_OK);
    }
    /* fail */
    {
        STALE(x);
        snap_take(&t, "p", &before);
        s = sc_checkpoint_fail(&a, &ka, &x, "stale owner's error");
        ck_assert_msg(s == SC_CP_FENCED, "fail: %s", st(s));
        check_unchanged(&t, "p", &before, "fenced fail");
        check_cp_same(&x, &x_copy, "fenced fail");
        ck_assert_int_eq(sc_checkpoint_fail(&b, &kb, &cpb, "B's error"), SC_CP_OK);
    }
#undef STALE
    ck_assert_int_eq(sc_checkpoint_still_owner(&a, &ka, old), -1);
    ck_assert_int_eq(sc_checkpoint_still_owner(&b, &kb, cpb.epoch), 0);

    /* B's view after all that is what is stored. */
    struct sc_cp now;
    ck_assert_int_eq(sc_checkpoint_load(&b, &kb, &now), SC_CP_OK);
    ck_assert(now.has_committed && !now.has_pending && now.error);
    ck_assert_int_eq(now.committed_offset, 40);
    ck_assert_int_eq(now.committed_write_offset, 40);
    ck_assert_str_eq(now.error_msg, "B's error");

    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

/*
 * The pipelined advance of the postgres sink: a statement that matches no
 * row (fenced, or a conflict) is an error, so the COMMIT queued behind it
 * cannot commit the sink's rows without their checkpoint.
 */
static ExecStatusType queued_advance(struct sc_db *db, const struct sc_cp_key *k,
                                     const struct sc_cp *cp, int64_t first, int64_t last,
                                     bool commit)
{
    struct sc_cp after;
    PGconn *conn;
    PGresult *res;
    ExecStatusType status;

    ck_assert_int_eq(sc_checkpoint_advance_prepare(db), 0);
    conn = sc_db_hold(db);
    ck_assert(conn != NULL);
    hx_pg_exec(conn, "BEGIN");
    ck_assert_int_eq(sc_checkpoint_advance_queue(db, k, cp, first, last,
                                                 (int32_t)(last - first + 1), last + 1, &after),
                     0);
    res = PQgetResult(conn);
    status = PQresultStatus(res);
    if (status == PGRES_TUPLES_OK)
        ck_assert_int_eq(PQntuples(res), 1);
    PQclear(res);
    while ((res = PQgetResult(conn)) != NULL)
        PQclear(res);
    hx_pg_exec(conn, status == PGRES_TUPLES_OK && commit ? "COMMIT" : "ROLLBACK");
    sc_db_release(db);
    return status;
}

START_TEST(queued_advance_fails_unless_it_matches)
{
    struct t t;
    struct sc_db a, b;
    struct sc_cp_key ka = {.pipeline = "p", .topic = TOPIC, .partition = 0, .owner = "A"};
    struct sc_cp_key kb = ka;
    struct snap before;

    kb.owner = "B";
    t_start(&t, "queued_advance");
    db_open(&t, &a);
    db_open(&t, &b);
    struct sc_cp cpa = acquire(&a, "p", "A");
    release(&a, "p", "A", cpa.epoch);
    struct sc_cp cpb = acquire(&b, "p", "B");

    /* Fenced: A's epoch. */
    struct sc_cp stale = cpb;
    stale.epoch = cpa.epoch;
    snap_take(&t, "p", &before);
    ck_assert_int_eq(queued_advance(&a, &ka, &stale, 0, 9, true), PGRES_FATAL_ERROR);
    check_unchanged(&t, "p", &before, "fenced queued advance");

    /* A conflict: B's epoch, but B believes something was committed already. */
    struct sc_cp wrong = cpb;
    wrong.has_committed = true;
    wrong.committed_offset = 0;
    snap_take(&t, "p", &before);
    ck_assert_int_eq(queued_advance(&b, &kb, &wrong, 0, 9, true), PGRES_FATAL_ERROR);
    check_unchanged(&t, "p", &before, "conflicting queued advance");

    /* B's own view: one row, committed with the transaction. */
    ck_assert_int_eq(queued_advance(&b, &kb, &cpb, 0, 9, true), PGRES_TUPLES_OK);
    struct sc_cp now;
    ck_assert_int_eq(sc_checkpoint_load(&b, &kb, &now), SC_CP_OK);
    ck_assert(now.has_committed && !now.has_pending);
    ck_assert_int_eq(now.committed_offset, 10);
    ck_assert_int_eq(now.committed_write_offset, 10);

    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

/* ---- conflicts --------------------------------------------------------------------------- */

/* Runs a write that must be a CONFLICT that changes nothing; what names it in messages. */
#define EXPECT_CONFLICT(what, call)                                                 \
    do {                                                                            \
        struct snap before_;                                                        \
        snap_take(&t, "p", &before_);                                               \
        enum sc_cp_status s_ = (call);                                              \
        ck_assert_msg(s_ == SC_CP_CONFLICT, "%s: %s, want conflict", what, st(s_)); \
        check_unchanged(&t, "p", &before_, what);                                   \
    } while (0)

START_TEST(writes_expecting_another_state_conflict)
{
    struct t t;
    struct sc_db a;
    struct sc_cp_key k = {.pipeline = "p", .topic = TOPIC, .partition = 0, .owner = "A"};
    struct sc_cp x;

    t_start(&t, "conflicts");
    db_open(&t, &a);
    struct sc_cp cp = acquire(&a, "p", "A");
    ck_assert_int_eq(sc_checkpoint_set_start(&a, &k, &cp, 0, "latest"), SC_CP_OK);
    /* Set once only. */
    x = cp;
    x.has_committed = false;
    EXPECT_CONFLICT("a second set_start", sc_checkpoint_set_start(&a, &k, &x, 5, "latest"));

    /* Commit without anything pending (the writer believes [0, 9] is). */
    x = cp;
    x.has_pending = true;
    x.pending_first = 0;
    x.pending_last = 9;
    x.pending_count = 10;
    EXPECT_CONFLICT("commit without pending",
                    sc_checkpoint_commit(&a, &k, &x, 10, 100, false, &dead1, 1));
    x = cp;
    x.has_pending = true;
    x.pending_first = 0;
    x.pending_last = 9;
    EXPECT_CONFLICT(
        "commit_and_pend without pending",
        sc_checkpoint_commit_and_pend(&a, &k, &x, 10, 100, false, NULL, 0, 10, 19, 10, 2));

    /* Pend [0, 9]; then pends while it is pending. */
    ck_assert_int_eq(sc_checkpoint_pend(&a, &k, &cp, 0, 9, 10, 1), SC_CP_OK);
    x = cp;
    x.has_pending = false;
    EXPECT_CONFLICT("pend of the same range while pending",
                    sc_checkpoint_pend(&a, &k, &x, 0, 9, 10, 1));
    x = cp;
    x.has_pending = false;
    EXPECT_CONFLICT("pend of the next range while pending",
                    sc_checkpoint_pend(&a, &k, &x, 10, 19, 10, 2));
    x = cp;
    x.has_pending = false;
    EXPECT_CONFLICT("advance while pending",
                    sc_checkpoint_advance(&a, &k, &x, 0, 9, 10, 100, NULL, 0));

    /* Commits of another range than the pending one. */
    x = cp;
    x.pending_first = 10;
    x.pending_last = 19;
    EXPECT_CONFLICT("commit of the next range",
                    sc_checkpoint_commit(&a, &k, &x, 20, 200, false, NULL, 0));
    x = cp;
    x.pending_first = 5;
    x.pending_last = 9;
    EXPECT_CONFLICT("commit of a range starting inside the pending one",
                    sc_checkpoint_commit(&a, &k, &x, 10, 100, false, &dead1, 1));
    x = cp;
    x.pending_first = 1;
    EXPECT_CONFLICT(
        "commit_and_pend of another range",
        sc_checkpoint_commit_and_pend(&a, &k, &x, 10, 100, false, NULL, 0, 10, 19, 10, 2));

    /* The right one. */
    ck_assert_int_eq(sc_checkpoint_commit(&a, &k, &cp, 10, 100, false, NULL, 0), SC_CP_OK);

    /* A pend or advance from another position than the committed one. */
    x = cp;
    x.committed_write_offset = 50;
    EXPECT_CONFLICT("pend at another write offset", sc_checkpoint_pend(&a, &k, &x, 10, 19, 10, 2));
    x = cp;
    x.committed_offset = 5;
    EXPECT_CONFLICT("pend after another committed offset",
                    sc_checkpoint_pend(&a, &k, &x, 10, 19, 10, 2));
    x = cp;
    x.committed_offset = 5;
    EXPECT_CONFLICT("advance from another committed offset",
                    sc_checkpoint_advance(&a, &k, &x, 10, 19, 10, 200, NULL, 0));

    /* In the error state nothing moves (until an operator resets it). */
    ck_assert_int_eq(sc_checkpoint_fail(&a, &k, &cp, "broken"), SC_CP_OK);
    x = cp;
    EXPECT_CONFLICT("pend in the error state", sc_checkpoint_pend(&a, &k, &x, 10, 19, 10, 2));
    x = cp;
    EXPECT_CONFLICT("advance in the error state",
                    sc_checkpoint_advance(&a, &k, &x, 10, 19, 10, 200, NULL, 0));

    sc_db_close(&a);
    t_stop(&t);
}
END_TEST

/*
 * An operator's reset of a live owner's partition (forced) keeps the epoch,
 * so the owner is not fenced; its in-flight writes, which expect the row as
 * it was, are conflicts instead, and it carries on from the new position.
 */
START_TEST(operator_reset_turns_in_flight_writes_into_conflicts)
{
    struct t t;
    struct sc_db a;
    struct sc_cp_key k = {.pipeline = "p", .topic = TOPIC, .partition = 0, .owner = "A"};
    struct sc_cp x;

    t_start(&t, "reset_conflicts");
    db_open(&t, &a);
    struct sc_cp cp = acquire(&a, "p", "A");
    ck_assert_int_eq(sc_checkpoint_set_start(&a, &k, &cp, 0, "latest"), SC_CP_OK);
    ck_assert_int_eq(sc_checkpoint_pend(&a, &k, &cp, 0, 9, 10, 1), SC_CP_OK);

    /* A reset checks the offset against the partition's last watermark sample. */
    hx_pg_exec(t.conn,
               "INSERT INTO sidecar.partition_stats (pipeline, topic, partition, low_watermark,"
               " high_watermark) VALUES ('p', '" TOPIC "', 0, 0, 1000)");
    hx_pg_exec(t.conn, "SELECT sidecar.reset_checkpoint('p', '" TOPIC "', 0, 100, true)");

    /* The batch pending before the reset cannot be committed... */
    x = cp;
    EXPECT_CONFLICT("commit of a batch the reset dropped",
                    sc_checkpoint_commit(&a, &k, &x, 10, 100, false, NULL, 0));
    x = cp;
    EXPECT_CONFLICT(
        "commit_and_pend of a batch the reset dropped",
        sc_checkpoint_commit_and_pend(&a, &k, &x, 10, 100, false, NULL, 0, 10, 19, 10, 2));
    /* ...and nothing can be pended from the old position. */
    x = cp;
    x.has_pending = false;
    EXPECT_CONFLICT("pend from the position before the reset",
                    sc_checkpoint_pend(&a, &k, &x, 0, 9, 10, 1));

    /* The owner notices (renewal), re-reads the row, and goes on from 100. */
    struct sc_lease_held h = {.topic = TOPIC, .partition = 0, .epoch = cp.epoch};
    struct sc_lease_self self = {"p", "A", 1, "kafka-group", LONG_MS};
    struct sc_lease_holder holder;
    struct sc_lease_tick tick;
    bool registered, draining;
    ck_assert_int_eq(sc_lease_register(&a, &self, "test", 1, &registered, &draining, &holder), 0);
    ck_assert(registered);
    ck_assert_int_eq(sc_lease_tick(&a, &self, &h, 1, -1, -1, NULL, false, &tick), 0);
    ck_assert(tick.registered);
    sc_lease_tick_clear(&tick);
    ck_assert_int_eq(h.state, SC_LEASE_RENEWED);
    ck_assert_int_gt(h.control_seq, cp.control_seq);
    ck_assert_int_eq(sc_checkpoint_load(&a, &k, &cp), SC_CP_OK);
    ck_assert(cp.has_committed && !cp.has_pending);
    ck_assert_int_eq(cp.committed_offset, 100);
    ck_assert_int_eq(sc_checkpoint_pend(&a, &k, &cp, 100, 109, 10, 3), SC_CP_OK);

    sc_db_close(&a);
    t_stop(&t);
}
END_TEST

/*
 * pause_partition() stops delivery before the next batch, whenever the owner
 * hears of it: nothing can be pended on a paused row, a written batch still
 * commits but its successor is not pended with it, and a transactional
 * sink's advance (which has no pending step) is refused.
 */
START_TEST(paused_rows_take_no_new_batch)
{
    struct t t;
    struct sc_db a;
    struct sc_cp_key k = {.pipeline = "p", .topic = TOPIC, .partition = 0, .owner = "A"};
    struct sc_cp x;

    t_start(&t, "paused");
    db_open(&t, &a);
    struct sc_cp cp = acquire(&a, "p", "A");
    ck_assert_int_eq(sc_checkpoint_set_start(&a, &k, &cp, 0, "latest"), SC_CP_OK);
    ck_assert_int_eq(sc_checkpoint_pend(&a, &k, &cp, 0, 9, 10, 1), SC_CP_OK);

    hx_pg_exec(t.conn, "SELECT sidecar.pause_partition('p', '" TOPIC "', 0)");

    /* The batch in flight commits; the next one is not pended with it. */
    long long events = count_of(&t, "SELECT count(*) FROM sidecar.events WHERE pipeline = $1", "p");
    ck_assert_int_eq(
        sc_checkpoint_commit_and_pend(&a, &k, &cp, 10, 100, false, NULL, 0, 10, 19, 10, 2),
        SC_CP_OK);
    ck_assert(cp.has_committed && !cp.has_pending && cp.paused);
    ck_assert_int_eq(cp.committed_offset, 10);
    ck_assert_int_eq(count_of(&t,
                              "SELECT count(*) FROM sidecar.checkpoints WHERE pipeline = $1"
                              " AND committed_offset = 10 AND pending_first_offset IS NULL",
                              "p"),
                     1);
    ck_assert_int_eq(count_of(&t, "SELECT count(*) FROM sidecar.events WHERE pipeline = $1", "p"),
                     events + 1); /* the commit's event, no pend event */

    /* Nothing new is pended, and a transactional advance is refused. */
    x = cp;
    EXPECT_CONFLICT("pend on a paused row", sc_checkpoint_pend(&a, &k, &x, 10, 19, 10, 2));
    x = cp;
    EXPECT_CONFLICT("advance on a paused row",
                    sc_checkpoint_advance(&a, &k, &x, 10, 19, 10, 20, NULL, 0));

    /* Resumed (and re-read, as the owner does): delivery goes on. */
    hx_pg_exec(t.conn, "SELECT sidecar.resume_partition('p', '" TOPIC "', 0)");
    ck_assert_int_eq(sc_checkpoint_load(&a, &k, &cp), SC_CP_OK);
    ck_assert_int_eq(sc_checkpoint_pend(&a, &k, &cp, 10, 19, 10, 2), SC_CP_OK);

    sc_db_close(&a);
    t_stop(&t);
}
END_TEST

/* ---- events ---------------------------------------------------------------------------- */

/* An expected event: "kind|epoch|owner|first|last|write" ("-" for NULL) and its detail. */
struct ev {
    char line[128];
    const char *detail; /* JSON, compared as jsonb */
    bool with_row;      /* written by the transaction that last wrote the checkpoint row */
};

/*
 * Asserts that the events of pipeline "p" after *last_id are exactly want[0..n-1], in order,
 * and moves *last_id past them.
 */
static void expect_events(const struct t *t, long long *last_id, const struct ev *want, int n,
                          const char *what)
{
    char id[24];
    const char *params[] = {"p", sc_i64(id, *last_id)};
    PGresult *res = PQexecParams(
        t->conn,
        "SELECT e.id, concat_ws('|', e.kind, e.epoch, e.owner, coalesce(e.first_offset::text, '-'),"
        " coalesce(e.last_offset::text, '-'), coalesce(e.write_offset::text, '-')),"
        " e.detail::text, e.xid::text::bigint % 4294967296 = c.xmin::text::bigint"
        " FROM sidecar.events e LEFT JOIN sidecar.checkpoints c ON c.pipeline = e.pipeline"
        " AND c.topic = e.topic AND c.partition = e.partition"
        " WHERE e.pipeline = $1 AND e.id > $2 ORDER BY e.id",
        2, NULL, params, NULL, NULL, 0);

    ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s", PQerrorMessage(t->conn));
    ck_assert_msg(PQntuples(res) == n, "%s: %d events, want %d (first: %s)", what, PQntuples(res),
                  n, PQntuples(res) > 0 ? PQgetvalue(res, 0, 1) : "none");
    for (int i = 0; i < n; i++) {
        const char *dp[] = {want[i].detail};
        char *canon = hx_pg_value(t->conn, "SELECT $1::jsonb::text", 1, dp);

        ck_assert_msg(strcmp(PQgetvalue(res, i, 1), want[i].line) == 0,
                      "%s: event %d is %s, want %s", what, i, PQgetvalue(res, i, 1), want[i].line);
        ck_assert_msg(strcmp(PQgetvalue(res, i, 2), canon) == 0, "%s: event %d detail %s, want %s",
                      what, i, PQgetvalue(res, i, 2), canon);
        ck_assert_msg((PQgetvalue(res, i, 3)[0] == 't') == want[i].with_row,
                      "%s: event %d %s in the transaction that wrote the row", what, i,
                      want[i].with_row ? "not" : "unexpectedly");
        *last_id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        free(canon);
    }
    PQclear(res);
}

START_TEST(events_match_changes)
{
    struct t t;
    struct sc_db a, a2;
    struct sc_cp_key k = {.pipeline = "p", .topic = TOPIC, .partition = 0, .owner = "A"};
    struct ev w[2];
    long long last = 0;
    struct sc_cp x;

    t_start(&t, "events");
    db_open(&t, &a);
    db_open(&t, &a2);
    struct sc_cp cp = acquire(&a, "p", "A");
    long long e = cp.epoch;

    snprintf(w[0].line, sizeof(w[0].line), "lease|%lld|A|-|-|0", e);
    w[0].detail = "{\"action\": \"acquire\", \"pending\": false}";
    w[0].with_row = true;
    expect_events(&t, &last, w, 1, "acquire");

    ck_assert_int_eq(sc_checkpoint_set_start(&a, &k, &cp, 5, "start_from latest"), SC_CP_OK);
    snprintf(w[0].line, sizeof(w[0].line), "reset|%lld|A|5|-|0", e);
    w[0].detail = "{\"reason\": \"start_from latest\"}";
    expect_events(&t, &last, w, 1, "set_start");

    ck_assert_int_eq(sc_checkpoint_pend(&a, &k, &cp, 5, 14, 10, 1234), SC_CP_OK);
    snprintf(w[0].line, sizeof(w[0].line), "pend|%lld|A|5|14|0", e);
    w[0].detail = "{\"count\": 10, \"checksum\": 1234}";
    expect_events(&t, &last, w, 1, "pend");

    ck_assert_int_eq(sc_checkpoint_commit(&a, &k, &cp, 15, 1000, false, NULL, 0), SC_CP_OK);
    snprintf(w[0].line, sizeof(w[0].line), "commit|%lld|A|5|14|1000", e);
    w[0].detail = "{\"count\": 10, \"next_offset\": 15}";
    expect_events(&t, &last, w, 1, "commit");

    /* A checksum above 2^31 is stored as the unsigned value. */
    ck_assert_int_eq(sc_checkpoint_pend(&a, &k, &cp, 15, 24, 10, 4000000000u), SC_CP_OK);
    snprintf(w[0].line, sizeof(w[0].line), "pend|%lld|A|15|24|1000", e);
    w[0].detail = "{\"count\": 10, \"checksum\": 4000000000}";
    expect_events(&t, &last, w, 1, "pend (large checksum)");

    /* Two changes in one statement: two events, commit first. */
    ck_assert_int_eq(
        sc_checkpoint_commit_and_pend(&a, &k, &cp, 25, 2000, false, NULL, 0, 25, 34, 10, 77),
        SC_CP_OK);
    snprintf(w[0].line, sizeof(w[0].line), "commit|%lld|A|15|24|2000", e);
    w[0].detail = "{\"count\": 10, \"next_offset\": 25}";
    snprintf(w[1].line, sizeof(w[1].line), "pend|%lld|A|25|34|2000", e);
    w[1].detail = "{\"count\": 10, \"checksum\": 77}";
    w[1].with_row = true;
    expect_events(&t, &last, w, 2, "commit_and_pend");

    /* A replayed batch's commit, with a dead letter. */
    ck_assert_int_eq(sc_checkpoint_commit(&a, &k, &cp, 35, 3000, true, &dead1, 1), SC_CP_OK);
    snprintf(w[0].line, sizeof(w[0].line), "replay|%lld|A|25|34|3000", e);
    w[0].detail = "{\"count\": 10, \"next_offset\": 35}";
    expect_events(&t, &last, w, 1, "commit (replay)");

    ck_assert_int_eq(sc_checkpoint_advance(&a, &k, &cp, 35, 44, 10, 4000, NULL, 0), SC_CP_OK);
    snprintf(w[0].line, sizeof(w[0].line), "commit|%lld|A|35|44|4000", e);
    w[0].detail = "{\"count\": 10, \"next_offset\": 45}";
    expect_events(&t, &last, w, 1, "advance");

    /* Refused writes: none. */
    x = cp;
    x.committed_offset = 0;
    ck_assert_int_eq(sc_checkpoint_pend(&a, &k, &x, 45, 54, 10, 1), SC_CP_CONFLICT);
    expect_events(&t, &last, w, 0, "conflicting pend");

    /* A restarted A (a new session) takes its lease again: A's old epoch is fenced. */
    struct sc_cp cp2 = acquire(&a2, "p", "A");
    long long e2 = cp2.epoch;
    snprintf(w[0].line, sizeof(w[0].line), "lease|%lld|A|45|-|4000", e2);
    w[0].detail = "{\"action\": \"acquire\", \"pending\": false}";
    expect_events(&t, &last, w, 1, "re-acquire");

    ck_assert_int_eq(sc_checkpoint_pend(&a, &k, &cp, 45, 54, 10, 1), SC_CP_FENCED);
    ck_assert_int_eq(sc_checkpoint_fail(&a, &k, &cp, "too late"), SC_CP_FENCED);
    expect_events(&t, &last, w, 0, "fenced writes");

    /* What the fenced writer reports about itself: one event, not tied to a row change. */
    ck_assert_int_eq(sc_checkpoint_note_fenced(&a, &k, e, "commit refused"), SC_CP_OK);
    snprintf(w[0].line, sizeof(w[0].line), "fenced|%lld|A|-|-|-", e);
    char detail[128];
    snprintf(detail, sizeof(detail), "{\"reason\": \"commit refused\", \"current_epoch\": %lld}",
             e2);
    w[0].detail = detail;
    w[0].with_row = false;
    expect_events(&t, &last, w, 1, "note_fenced");

    ck_assert_int_eq(sc_checkpoint_fail(&a2, &k, &cp2, "boom"), SC_CP_OK);
    snprintf(w[0].line, sizeof(w[0].line), "error|%lld|A|-|-|4000", e2);
    w[0].detail = "{\"error\": \"boom\"}";
    w[0].with_row = true;
    expect_events(&t, &last, w, 1, "fail");

    /* Every event, and no other, is one the test expected. */
    ck_assert_int_eq(count_of(&t, "SELECT count(*) FROM sidecar.events WHERE pipeline = $1", "p"),
                     12);

    sc_db_close(&a);
    sc_db_close(&a2);
    t_stop(&t);
}
END_TEST

/* ---- grouped commits ---------------------------------------------------------------------- */

/* A topic whose name needs quoting in an array literal (PostgreSQL accepts any text). */
#define WEIRD "we\"ird\\, {t}"

static struct sc_cp acquire_part(struct sc_db *db, const char *pipeline, const char *owner,
                                 const char *topic, int32_t partition)
{
    struct sc_lease_req r = {.topic = topic, .partition = partition};
    bool unavailable = true;

    ck_assert_msg(sc_lease_acquire(db, pipeline, owner, LONG_MS, NULL, &r, 1, &unavailable) == 0,
                  "acquire: %s", db->last_error);
    ck_assert_msg(r.acquired, "%s could not acquire %s/%d", owner, topic, (int)partition);
    return r.cp;
}

/* The row of (pipeline p, topic, partition) as stored, with its xmin (malloc'd). */
static char *row_of(const struct t *t, const char *topic, int32_t partition)
{
    char part[24];
    const char *params[] = {topic, sc_i64(part, partition)};
    char *row = hx_pg_value(t->conn,
                            "SELECT c.xmin::text || ' ' || row_to_json(c)::text"
                            " FROM sidecar.checkpoints c WHERE pipeline = 'p' AND topic = $1"
                            " AND partition = $2",
                            2, params);
    ck_assert(row != NULL);
    return row;
}

static long long events_of(const struct t *t)
{
    return count_of(t, "SELECT count(*) FROM sidecar.events WHERE pipeline = $1", "p");
}

/* A grouped item committing cp's pending batch (next offset = its last + 1), pending
 * [first, first + 9] unless first < 0. */
static struct sc_cp_group_item item(const char *topic, int32_t partition, struct sc_cp *cp,
                                    int64_t first)
{
    return (struct sc_cp_group_item){
        .topic = topic,
        .partition = partition,
        .cp = cp,
        .next_offset = cp->pending_last + 1,
        .next_write_offset = (cp->pending_last + 1) * 100,
        .and_pend = first >= 0,
        .first = first,
        .last = first + 9,
        .count = 10,
        .checksum = (uint32_t)(1000 + first),
        .status = SC_CP_FAILED, /* must be overwritten */
    };
}

/*
 * The grouped commit of several partitions in one statement: each row is
 * fenced by its own epoch and pending batch, exactly as the single
 * statements are.  A fenced row and a conflicting row among committing ones
 * change nothing of theirs (row, events, the caller's copy) while the others
 * commit, with the events the single statements write, in the same
 * transaction as their rows, and one NOTIFY per committed partition.  A
 * paused row gets the commit only.  A refusal of the whole statement (here
 * a trigger refusing one row) changes no row at all.
 */
START_TEST(grouped_commits_fence_each_row)
{
    struct t t;
    struct sc_db a, b;
    struct sc_cp_key kb = {.pipeline = "p", .topic = TOPIC, .partition = 1, .owner = "B"};
    struct sc_cp_group_item g[5];
    struct ev w[8];
    long long last = 0;
    enum sc_cp_status s;

    t_start(&t, "grouped");
    db_open(&t, &a);
    db_open(&t, &b);
    /* A owns orders/0..3 and WEIRD/0, each with [0, 9] pending. */
    struct sc_cp cp[5];
    const char *topics[5] = {TOPIC, TOPIC, TOPIC, TOPIC, WEIRD};
    const int32_t parts[5] = {0, 1, 2, 3, 0};
    for (int i = 0; i < 5; i++) {
        struct sc_cp_key k = {
            .pipeline = "p", .topic = topics[i], .partition = parts[i], .owner = "A"};
        cp[i] = acquire_part(&a, "p", "A", topics[i], parts[i]);
        ck_assert_int_eq(sc_checkpoint_set_start(&a, &k, &cp[i], 0, "latest"), SC_CP_OK);
        ck_assert_int_eq(sc_checkpoint_pend(&a, &k, &cp[i], 0, 9, 10, 111), SC_CP_OK);
    }
    /* orders/1 goes to B (A's copy keeps its old epoch): A's commit of it is fenced. */
    {
        struct sc_lease_held h = {.topic = TOPIC, .partition = 1, .epoch = cp[1].epoch};
        ck_assert_int_eq(sc_lease_release(&a, "p", "A", NULL, &h, 1, "test", NULL), 1);
    }
    struct sc_cp cpb = acquire_part(&b, "p", "B", TOPIC, 1);
    /* orders/2: A's copy expects another pending batch: a conflict. */
    cp[2].pending_first = 5;
    cp[2].pending_last = 14;
    struct sc_cp copy1 = cp[1], copy2 = cp[2];
    char *row1 = row_of(&t, TOPIC, 1), *row2 = row_of(&t, TOPIC, 2);
    last = hx_pg_int(t.conn, "SELECT max(id) FROM sidecar.events", 0, NULL); /* the setup's */

    hx_pg_exec(t.conn, "LISTEN grouped");
    g[0] = item(TOPIC, 0, &cp[0], 10);
    g[1] = item(TOPIC, 1, &cp[1], 10);
    g[2] = item(TOPIC, 2, &cp[2], 15);
    g[3] = item(TOPIC, 3, &cp[3], -1); /* a commit without a pend */
    g[4] = item(WEIRD, 0, &cp[4], 10);
    s = sc_checkpoint_commit_group(&a, "p", "A", "grouped", g, 5);
    ck_assert_msg(s == SC_CP_OK, "grouped commit: %s (%s)", st(s), a.last_error);
    ck_assert_msg(g[0].status == SC_CP_OK, "orders/0: %s", st(g[0].status));
    ck_assert_msg(g[1].status == SC_CP_FENCED, "orders/1: %s, want fenced", st(g[1].status));
    ck_assert_msg(g[2].status == SC_CP_CONFLICT, "orders/2: %s, want conflict", st(g[2].status));
    ck_assert_msg(g[3].status == SC_CP_OK, "orders/3: %s", st(g[3].status));
    ck_assert_msg(g[4].status == SC_CP_OK, "weird/0: %s", st(g[4].status));

    /* The refused rows and their writers' copies are as they were. */
    char *now1 = row_of(&t, TOPIC, 1), *now2 = row_of(&t, TOPIC, 2);
    ck_assert_msg(strcmp(now1, row1) == 0, "fenced row changed:\n  was %s\n  now %s", row1, now1);
    ck_assert_msg(strcmp(now2, row2) == 0, "conflicting row changed:\n  was %s\n  now %s", row2,
                  now2);
    free(now1), free(now2), free(row1), free(row2);
    check_cp_same(&cp[1], &copy1, "fenced grouped commit");
    check_cp_same(&cp[2], &copy2, "conflicting grouped commit");

    /* The others: copies and rows as the single statements leave them. */
    ck_assert(cp[0].has_committed && cp[0].committed_offset == 10 && cp[0].has_pending &&
              cp[0].pending_first == 10 && cp[0].pending_last == 19 &&
              cp[0].pending_write_offset == 1000 && cp[0].committed_write_offset == 1000);
    ck_assert(cp[3].committed_offset == 10 && !cp[3].has_pending);
    ck_assert(cp[4].committed_offset == 10 && cp[4].has_pending && cp[4].pending_first == 10);
    for (int i = 0; i < 5; i += (i == 0 ? 3 : 1)) {
        struct sc_cp_key k = {.pipeline = "p", .topic = topics[i], .partition = parts[i]};
        struct sc_cp row;
        ck_assert_int_eq(sc_checkpoint_load(&a, &k, &row), SC_CP_OK);
        row.control_seq = cp[i].control_seq;
        ck_assert_msg(
            row.has_committed == cp[i].has_committed &&
                row.committed_offset == cp[i].committed_offset &&
                row.committed_write_offset == cp[i].committed_write_offset &&
                row.has_pending == cp[i].has_pending &&
                (!row.has_pending || (row.pending_first == cp[i].pending_first &&
                                      row.pending_last == cp[i].pending_last &&
                                      row.pending_count == cp[i].pending_count &&
                                      row.pending_checksum == cp[i].pending_checksum &&
                                      row.pending_write_offset == cp[i].pending_write_offset)),
            "row %d differs from the writer's copy", i);
    }
    /* Events: the commit (and pend) of each committed row, in its transaction, in order. */
    long long e = cp[0].epoch, e3 = cp[3].epoch, e4 = cp[4].epoch;
    snprintf(w[0].line, sizeof(w[0].line), "commit|%lld|A|0|9|1000", e);
    w[0].detail = "{\"count\": 10, \"next_offset\": 10}";
    snprintf(w[1].line, sizeof(w[1].line), "pend|%lld|A|10|19|1000", e);
    w[1].detail = "{\"count\": 10, \"checksum\": 1010}";
    snprintf(w[2].line, sizeof(w[2].line), "commit|%lld|A|0|9|1000", e3);
    w[2].detail = "{\"count\": 10, \"next_offset\": 10}";
    snprintf(w[3].line, sizeof(w[3].line), "commit|%lld|A|0|9|1000", e4);
    w[3].detail = "{\"count\": 10, \"next_offset\": 10}";
    snprintf(w[4].line, sizeof(w[4].line), "pend|%lld|A|10|19|1000", e4);
    w[4].detail = "{\"count\": 10, \"checksum\": 1010}";
    for (int i = 0; i < 5; i++)
        w[i].with_row = true;
    expect_events(&t, &last, w, 5, "grouped commit");
    /* One NOTIFY per committed partition, naming it and its last event. */
    hx_pg_exec(t.conn, "SELECT 1");
    int notes = 0;
    PGnotify *nf;
    bool seen[5] = {false};
    while ((nf = PQnotifies(t.conn)) != NULL) {
        ck_assert_str_eq(nf->relname, "grouped");
        const char *params[] = {nf->extra};
        char *who = hx_pg_value(t.conn,
                                "SELECT ($1::json->>'topic') || '/' || ($1::json->>'partition')"
                                " || ' ' || (($1::json->>'id')::bigint = (SELECT max(id) FROM"
                                " sidecar.events e WHERE e.topic = $1::json->>'topic' AND"
                                " e.partition = ($1::json->>'partition')::int))::text",
                                1, params);
        for (int i = 0; i < 5; i++) {
            char want[300];
            snprintf(want, sizeof(want), "%s/%d true", topics[i], (int)parts[i]);
            if (strcmp(who, want) == 0) {
                ck_assert_msg(!seen[i], "two notifications for %s", who);
                seen[i] = true;
            }
        }
        free(who);
        PQfreemem(nf);
        notes++;
    }
    ck_assert_msg(notes == 3 && seen[0] && seen[3] && seen[4], "%d notifications", notes);
    hx_pg_exec(t.conn, "UNLISTEN grouped");

    /* The refusals were for the reasons named: B's write of the same batch commits, and A's
     * with the right pending batch. */
    ck_assert_int_eq(sc_checkpoint_commit(&b, &kb, &cpb, 10, 1000, false, NULL, 0), SC_CP_OK);
    cp[2].pending_first = 0;
    cp[2].pending_last = 9;
    g[0] = item(TOPIC, 2, &cp[2], 10);
    /* ... and all rows matching: all commit; a paused one without its next batch. */
    hx_pg_exec(t.conn, "SELECT sidecar.pause_partition('p', '" TOPIC "', 0)");
    g[1] = item(TOPIC, 0, &cp[0], 20);
    g[2] = item(WEIRD, 0, &cp[4], 20);
    s = sc_checkpoint_commit_group(&a, "p", "A", NULL, g, 3);
    ck_assert_msg(s == SC_CP_OK && g[0].status == SC_CP_OK && g[1].status == SC_CP_OK &&
                      g[2].status == SC_CP_OK,
                  "all matching: %s %s %s %s", st(s), st(g[0].status), st(g[1].status),
                  st(g[2].status));
    ck_assert(cp[2].committed_offset == 10 && cp[2].has_pending && cp[2].pending_first == 10);
    ck_assert(cp[0].committed_offset == 20 && !cp[0].has_pending && cp[0].paused);
    ck_assert(cp[4].committed_offset == 20 && cp[4].has_pending && cp[4].pending_first == 20);
    ck_assert_int_eq(count_of(&t,
                              "SELECT count(*) FROM sidecar.checkpoints WHERE pipeline = $1"
                              " AND committed_offset = 20 AND pending_first_offset IS NULL"
                              " AND topic = 'orders' AND partition = 0",
                              "p"),
                     1);
    /* commit + pend, commit (paused: no pend), commit + pend */
    long long e2 = cp[2].epoch;
    snprintf(w[0].line, sizeof(w[0].line), "commit|%lld|A|0|9|1000", e2);
    w[0].detail = "{\"count\": 10, \"next_offset\": 10}";
    snprintf(w[1].line, sizeof(w[1].line), "pend|%lld|A|10|19|1000", e2);
    w[1].detail = "{\"count\": 10, \"checksum\": 1010}";
    snprintf(w[2].line, sizeof(w[2].line), "commit|%lld|A|10|19|2000", e);
    w[2].detail = "{\"count\": 10, \"next_offset\": 20}";
    snprintf(w[3].line, sizeof(w[3].line), "commit|%lld|A|10|19|2000", e4);
    w[3].detail = "{\"count\": 10, \"next_offset\": 20}";
    snprintf(w[4].line, sizeof(w[4].line), "pend|%lld|A|20|29|2000", e4);
    w[4].detail = "{\"count\": 10, \"checksum\": 1020}";
    /* skip B's commit and the pause's event first */
    last = hx_pg_int(t.conn,
                     "SELECT max(id) FROM sidecar.events WHERE pipeline = 'p' AND"
                     " (owner = 'B' OR kind NOT IN ('commit', 'pend'))",
                     0, NULL);
    expect_events(&t, &last, w, 5, "grouped commit, all matching");

    /* A refusal of the statement (a trigger refusing one of its rows) changes no row. */
    hx_pg_exec(t.conn,
               "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
               " IF NEW.partition = 2 THEN RAISE EXCEPTION 'no'; END IF; RETURN NEW; END $$");
    hx_pg_exec(t.conn, "CREATE TRIGGER refuse BEFORE UPDATE ON sidecar.checkpoints FOR EACH ROW"
                       " EXECUTE FUNCTION refuse()");
    char *r2 = row_of(&t, TOPIC, 2), *r4 = row_of(&t, WEIRD, 0);
    long long events = events_of(&t);
    struct sc_cp c2 = cp[2], c4 = cp[4];
    g[0] = item(WEIRD, 0, &cp[4], 30);
    g[1] = item(TOPIC, 2, &cp[2], 20);
    s = sc_checkpoint_commit_group(&a, "p", "A", NULL, g, 2);
    ck_assert_msg(s == SC_CP_FAILED, "refused grouped commit: %s", st(s));
    ck_assert_str_eq(a.last_sqlstate, "P0001");
    ck_assert_str_eq(a.last_stmt, "sc_cp_commit_group");
    char *n2 = row_of(&t, TOPIC, 2), *n4 = row_of(&t, WEIRD, 0);
    ck_assert_str_eq(n2, r2);
    ck_assert_str_eq(n4, r4);
    ck_assert_int_eq(events_of(&t), events);
    check_cp_same(&cp[2], &c2, "refused grouped commit");
    check_cp_same(&cp[4], &c4, "refused grouped commit");
    free(r2), free(r4), free(n2), free(n4);

    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

/*
 * The grouped pend of several partitions' new batches in one statement:
 * each row is guarded exactly as the single pend guards it.  A fenced row,
 * a row whose committed position moved and a paused row change nothing of
 * theirs (row, events, the caller's copy) while the others pend, with the
 * single statement's event, in the same transaction as their rows, and one
 * NOTIFY per pended partition.  A refusal of the whole statement changes no
 * row at all.
 */
START_TEST(grouped_pends_fence_each_row)
{
    struct t t;
    struct sc_db a, b;
    struct sc_cp_group_item g[5];
    struct ev w[2];
    enum sc_cp_status s;

    t_start(&t, "gpend");
    db_open(&t, &a);
    db_open(&t, &b);
    /* A owns orders/0..3 and WEIRD/0, nothing pending. */
    struct sc_cp cp[5];
    const char *topics[5] = {TOPIC, TOPIC, TOPIC, TOPIC, WEIRD};
    const int32_t parts[5] = {0, 1, 2, 3, 0};
    for (int i = 0; i < 5; i++) {
        struct sc_cp_key k = {
            .pipeline = "p", .topic = topics[i], .partition = parts[i], .owner = "A"};
        cp[i] = acquire_part(&a, "p", "A", topics[i], parts[i]);
        ck_assert_int_eq(sc_checkpoint_set_start(&a, &k, &cp[i], 0, "latest"), SC_CP_OK);
    }
    /* orders/1 goes to B (A's copy keeps its old epoch): A's pend of it is fenced. */
    {
        struct sc_lease_held h = {.topic = TOPIC, .partition = 1, .epoch = cp[1].epoch};
        ck_assert_int_eq(sc_lease_release(&a, "p", "A", NULL, &h, 1, "test", NULL), 1);
    }
    (void)acquire_part(&b, "p", "B", TOPIC, 1);
    /* orders/2: A's copy expects another committed write offset: a conflict.  orders/3 is
     * paused: nothing new starts, as with the single pend. */
    struct sc_cp right2 = cp[2];
    cp[2].committed_write_offset = 7;
    hx_pg_exec(t.conn, "SELECT sidecar.pause_partition('p', '" TOPIC "', 3)");
    struct sc_cp copy[4] = {cp[0], cp[1], cp[2], cp[3]};
    char *row[4];
    for (int i = 1; i < 4; i++)
        row[i] = row_of(&t, TOPIC, i);
    long long last = hx_pg_int(t.conn, "SELECT max(id) FROM sidecar.events", 0, NULL);

    hx_pg_exec(t.conn, "LISTEN gpend");
    for (int i = 0; i < 5; i++)
        g[i] = item(topics[i], parts[i], &cp[i], 0);
    s = sc_checkpoint_pend_group(&a, "p", "A", "gpend", g, 5);
    ck_assert_msg(s == SC_CP_OK, "grouped pend: %s (%s)", st(s), a.last_error);
    const enum sc_cp_status want[5] = {SC_CP_OK, SC_CP_FENCED, SC_CP_CONFLICT, SC_CP_CONFLICT,
                                       SC_CP_OK};
    for (int i = 0; i < 5; i++)
        ck_assert_msg(g[i].status == want[i], "item %d: %s, want %s", i, st(g[i].status),
                      st(want[i]));

    /* The refused rows and their writers' copies are as they were. */
    for (int i = 1; i < 4; i++) {
        char *now = row_of(&t, TOPIC, i);
        ck_assert_msg(strcmp(now, row[i]) == 0, "refused row %d changed:\n  was %s\n  now %s", i,
                      row[i], now);
        free(now);
        free(row[i]);
        check_cp_same(&cp[i], &copy[i], "refused grouped pend");
    }
    /* The others: copies and rows as the single pend leaves them. */
    for (int i = 0; i < 5; i += 4) {
        ck_assert(cp[i].has_pending && cp[i].pending_first == 0 && cp[i].pending_last == 9 &&
                  cp[i].pending_count == 10 && cp[i].pending_checksum == 1000 &&
                  cp[i].pending_write_offset == cp[i].committed_write_offset);
        struct sc_cp_key k = {.pipeline = "p", .topic = topics[i], .partition = parts[i]};
        struct sc_cp r;
        ck_assert_int_eq(sc_checkpoint_load(&a, &k, &r), SC_CP_OK);
        ck_assert_msg(r.has_pending && r.pending_first == 0 && r.pending_last == 9 &&
                          r.pending_count == 10 && r.pending_checksum == 1000 &&
                          r.pending_write_offset == cp[i].pending_write_offset &&
                          r.committed_write_offset == cp[i].committed_write_offset,
                      "row %d differs from the writer's copy", i);
    }
    /* Events: the pend of each pended row, in its transaction, in the items' order. */
    for (int i = 0; i < 2; i++) {
        const struct sc_cp *c = &cp[i * 4];
        snprintf(w[i].line, sizeof(w[i].line), "pend|%lld|A|0|9|%lld", (long long)c->epoch,
                 (long long)c->committed_write_offset);
        w[i].detail = "{\"count\": 10, \"checksum\": 1000}";
        w[i].with_row = true;
    }
    expect_events(&t, &last, w, 2, "grouped pend");
    /* One NOTIFY per pended partition. */
    hx_pg_exec(t.conn, "SELECT 1");
    int notes = 0;
    PGnotify *nf;
    while ((nf = PQnotifies(t.conn)) != NULL) {
        ck_assert_str_eq(nf->relname, "gpend");
        notes++;
        PQfreemem(nf);
    }
    ck_assert_int_eq(notes, 2);
    hx_pg_exec(t.conn, "UNLISTEN gpend");

    /* The refusal was for the reason named: with the right copy, orders/2 pends. */
    cp[2] = right2;
    g[0] = item(TOPIC, 2, &cp[2], 0);
    s = sc_checkpoint_pend_group(&a, "p", "A", NULL, g, 1);
    ck_assert_msg(s == SC_CP_OK && g[0].status == SC_CP_OK && cp[2].has_pending,
                  "orders/2 with the right copy: %s %s", st(s), st(g[0].status));

    /* A refusal of the statement (a trigger refusing one of its rows) changes no row. */
    struct sc_cp cp5 = acquire_part(&a, "p", "A", TOPIC, 5),
                 cp6 = acquire_part(&a, "p", "A", TOPIC, 6);
    hx_pg_exec(t.conn,
               "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
               " IF NEW.partition = 6 THEN RAISE EXCEPTION 'no'; END IF; RETURN NEW; END $$");
    hx_pg_exec(t.conn, "CREATE TRIGGER refuse BEFORE UPDATE ON sidecar.checkpoints FOR EACH ROW"
                       " EXECUTE FUNCTION refuse()");
    char *r5 = row_of(&t, TOPIC, 5), *r6 = row_of(&t, TOPIC, 6);
    long long events = events_of(&t);
    struct sc_cp c5 = cp5, c6 = cp6;
    g[0] = item(TOPIC, 5, &cp5, 0);
    g[1] = item(TOPIC, 6, &cp6, 0);
    s = sc_checkpoint_pend_group(&a, "p", "A", NULL, g, 2);
    ck_assert_msg(s == SC_CP_FAILED, "refused grouped pend: %s", st(s));
    ck_assert_str_eq(a.last_sqlstate, "P0001");
    ck_assert_str_eq(a.last_stmt, "sc_cp_pend_group");
    char *n5 = row_of(&t, TOPIC, 5), *n6 = row_of(&t, TOPIC, 6);
    ck_assert_str_eq(n5, r5);
    ck_assert_str_eq(n6, r6);
    ck_assert_int_eq(events_of(&t), events);
    check_cp_same(&cp5, &c5, "refused grouped pend");
    check_cp_same(&cp6, &c6, "refused grouped pend");
    free(r5), free(r6), free(n5), free(n6);

    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

/* ---- refusals ---------------------------------------------------------------------- */

/* Asserts status want and, for a refusal the server answered, the SQLSTATE and statement. */
static void expect_refusal(const struct sc_db *db, enum sc_cp_status got, enum sc_cp_status want,
                           const char *sqlstate, const char *stmt, const char *what)
{
    ck_assert_msg(got == want, "%s: %s, expected %s (%s: %s)", what, st(got), st(want),
                  db->last_sqlstate, db->last_error);
    ck_assert_msg(strcmp(db->last_sqlstate, sqlstate) == 0, "%s: SQLSTATE %s, expected %s", what,
                  db->last_sqlstate, sqlstate);
    ck_assert_msg(strcmp(db->last_stmt, stmt) == 0, "%s: statement %s, expected %s", what,
                  db->last_stmt, stmt);
    ck_assert_msg(db->last_answered == (want != SC_CP_UNAVAILABLE), "%s: answered %d", what,
                  db->last_answered);
}

struct killer {
    const char *dsn;
    const char *app;
};

/* Terminates the session named k->app once it sleeps in a trigger's pg_sleep(). */
static void *kill_when_sleeping(void *arg)
{
    const struct killer *k = arg;
    PGconn *c = hx_pg_connect(k->dsn);
    const char *params[] = {k->app};
    int64_t end = hx_now_ms() + 30000;
    while (hx_now_ms() < end &&
           hx_pg_int(c,
                     "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND "
                     "wait_event = 'PgSleep'",
                     1, params) == 0)
        usleep(20000);
    hx_pg_int(c,
              "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
              "application_name = $1",
              1, params);
    PQfinish(c);
    return NULL;
}

/*
 * Every kind of refusal of a checkpoint write, each made by a change an
 * operator could make: permanent ones (a CHECK constraint, a trigger
 * raising, a dropped column, a revoked privilege) are FAILED, passing ones
 * (a lock timeout, a serialization failure) TRANSIENT, a session killed in
 * the middle of the statement UNAVAILABLE (the outcome is unknown).  The
 * SQLSTATE and the statement are kept for the message, and none of them
 * changes the row, the events or the dead letters.
 */
START_TEST(refusals_are_classified)
{
    struct t t;
    struct sc_db a;
    struct sc_cp_key k = {.pipeline = "p", .topic = TOPIC, .partition = 0, .owner = "A"};
    struct snap before;
    enum sc_cp_status s;

    t_start(&t, "refusals");
    db_open(&t, &a);
    struct sc_cp cp = acquire(&a, "p", "A");
    ck_assert_int_eq(sc_checkpoint_set_start(&a, &k, &cp, 0, "latest"), SC_CP_OK);
    ck_assert_int_eq(sc_checkpoint_pend(&a, &k, &cp, 0, 9, 10, 111), SC_CP_OK);
    struct sc_cp copy = cp;

    /* integrity: a CHECK constraint added by an operator (23514) */
    hx_pg_exec(t.conn, "ALTER TABLE sidecar.checkpoints ADD CONSTRAINT op_limit"
                       " CHECK (committed_offset < 5) NOT VALID");
    snap_take(&t, "p", &before);
    s = sc_checkpoint_commit(&a, &k, &cp, 10, 1000, false, NULL, 0);
    expect_refusal(&a, s, SC_CP_FAILED, "23514", "sc_cp_commit", "CHECK constraint");
    ck_assert_str_eq(a.last_relation, "sidecar.checkpoints");
    check_unchanged(&t, "p", &before, "refused commit");
    check_cp_same(&cp, &copy, "refused commit");
    char msg[1024];
    sc_checkpoint_failure_message(&a, &k, "committing a batch", msg, sizeof(msg));
    ck_assert_msg(strstr(msg, "committing a batch failed permanently: the commit (statement "
                              "sc_cp_commit) was refused with SQLSTATE 23514 (check_violation) "
                              "on sidecar.checkpoints: new row for relation \"checkpoints\""),
                  "%s", msg);
    ck_assert_msg(strstr(msg, "UPDATE \"sidecar\".checkpoints SET state = 'ok', error = NULL WHERE "
                              "pipeline = 'p' AND topic = 'orders' AND partition = 0 (docs/"),
                  "%s", msg);
    hx_pg_exec(t.conn, "ALTER TABLE sidecar.checkpoints DROP CONSTRAINT op_limit");

    /* a trigger raising, on the dead letters stored with the commit (P0001) */
    hx_pg_exec(t.conn, "CREATE FUNCTION public.no_dead() RETURNS trigger LANGUAGE plpgsql AS"
                       " $$ BEGIN RAISE EXCEPTION 'no dead letters today'; END $$;"
                       " CREATE TRIGGER no_dead BEFORE INSERT ON sidecar.dead_letters"
                       " FOR EACH ROW EXECUTE FUNCTION public.no_dead()");
    snap_take(&t, "p", &before);
    s = sc_checkpoint_commit(&a, &k, &cp, 10, 1000, false, &dead1, 1);
    expect_refusal(&a, s, SC_CP_FAILED, "P0001", "sc_cp_dead", "trigger");
    check_unchanged(&t, "p", &before, "refused dead letter");
    hx_pg_exec(t.conn, "DROP TRIGGER no_dead ON sidecar.dead_letters");

    /* undefined object: a column the dead-letter insert names was dropped (42703) */
    hx_pg_exec(t.conn, "ALTER TABLE sidecar.dead_letters DROP COLUMN response_excerpt");
    snap_take(&t, "p", &before);
    s = sc_checkpoint_commit(&a, &k, &cp, 10, 1000, false, &dead1, 1);
    expect_refusal(&a, s, SC_CP_FAILED, "42703", "sc_cp_dead", "dropped column");
    check_unchanged(&t, "p", &before, "dropped column");
    hx_pg_exec(t.conn, "ALTER TABLE sidecar.dead_letters ADD COLUMN response_excerpt text");

    /* privilege: UPDATE on checkpoints revoked from the writer's role (42501) */
    hx_pg_exec(t.conn, "CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA sidecar TO app;"
                       " GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA sidecar TO app;"
                       " GRANT USAGE ON ALL SEQUENCES IN SCHEMA sidecar TO app;"
                       " REVOKE UPDATE ON sidecar.checkpoints FROM app");
    char app_dsn[600];
    snprintf(app_dsn, sizeof(app_dsn), "%s user=app", t.dsn);
    struct sc_db app;
    sc_db_init(&app, app_dsn, "sidecar", "check_checkpoint_app", 5000);
    snap_take(&t, "p", &before);
    s = sc_checkpoint_commit(&app, &k, &cp, 10, 1000, false, NULL, 0);
    expect_refusal(&app, s, SC_CP_FAILED, "42501", "sc_cp_commit", "revoked privilege");
    check_unchanged(&t, "p", &before, "revoked privilege");
    sc_db_close(&app);

    /* passing: the row locked by another session, lock_timeout (55P03) */
    PGconn *locker = hx_pg_connect(t.dsn);
    hx_pg_exec(locker, "BEGIN; SELECT * FROM sidecar.checkpoints FOR UPDATE");
    PGresult *r = sc_db_exec_once(&a, "SET lock_timeout = '200ms'", 0, NULL,
                                  &(enum sc_pg_errclass){SC_PG_OK});
    ck_assert_ptr_nonnull(r);
    PQclear(r);
    s = sc_checkpoint_commit(&a, &k, &cp, 10, 1000, false, NULL, 0);
    expect_refusal(&a, s, SC_CP_TRANSIENT, "55P03", "sc_cp_commit", "lock timeout");
    hx_pg_exec(locker, "ROLLBACK");
    PQfinish(locker);

    /* passing: a serialization failure (40001), here raised by a trigger */
    hx_pg_exec(t.conn, "CREATE FUNCTION public.busy() RETURNS trigger LANGUAGE plpgsql AS"
                       " $$ BEGIN RAISE EXCEPTION 'busy' USING ERRCODE = 'serialization_failure';"
                       " END $$; CREATE TRIGGER busy BEFORE UPDATE ON sidecar.checkpoints"
                       " FOR EACH ROW EXECUTE FUNCTION public.busy()");
    snap_take(&t, "p", &before);
    s = sc_checkpoint_commit(&a, &k, &cp, 10, 1000, false, NULL, 0);
    expect_refusal(&a, s, SC_CP_TRANSIENT, "40001", "sc_cp_commit", "serialization failure");
    check_unchanged(&t, "p", &before, "serialization failure");
    hx_pg_exec(t.conn, "DROP TRIGGER busy ON sidecar.checkpoints");

    /* unknown: the session is terminated in the middle of the statement (57P01) */
    hx_pg_exec(t.conn, "CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS"
                       " $$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$;"
                       " CREATE TRIGGER slow BEFORE UPDATE ON sidecar.checkpoints"
                       " FOR EACH ROW EXECUTE FUNCTION public.slow()");
    pthread_t killer;
    struct killer kl = {t.dsn, "check_checkpoint"};
    ck_assert_int_eq(pthread_create(&killer, NULL, kill_when_sleeping, &kl), 0);
    snap_take(&t, "p", &before);
    s = sc_checkpoint_commit(&a, &k, &cp, 10, 1000, false, NULL, 0);
    pthread_join(killer, NULL);
    ck_assert_msg(s == SC_CP_UNAVAILABLE, "killed session: %s (%s)", st(s), a.last_error);
    ck_assert(!a.last_answered);
    check_unchanged(&t, "p", &before, "killed session");
    hx_pg_exec(t.conn, "DROP TRIGGER slow ON sidecar.checkpoints");

    /* Everything undone: the same commit, with its dead letter, goes through. */
    ck_assert_int_eq(sc_checkpoint_commit(&a, &k, &cp, 10, 1000, false, &dead1, 1), SC_CP_OK);
    sc_db_close(&a);
    t_stop(&t);
}
END_TEST

static Suite *checkpoint_suite(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");

    tcase_add_unchecked_fixture(tc, pg_setup, pg_teardown);
    tcase_add_test(tc, stale_epoch_writes_are_fenced);
    tcase_add_test(tc, queued_advance_fails_unless_it_matches);
    tcase_add_test(tc, writes_expecting_another_state_conflict);
    tcase_add_test(tc, operator_reset_turns_in_flight_writes_into_conflicts);
    tcase_add_test(tc, paused_rows_take_no_new_batch);
    tcase_add_test(tc, events_match_changes);
    tcase_add_test(tc, grouped_commits_fence_each_row);
    tcase_add_test(tc, grouped_pends_fence_each_row);
    tcase_add_test(tc, refusals_are_classified);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(checkpoint_suite());

    sc_log_setup(SC_LOG_WARN, SC_LOG_FORMAT_TEXT); /* not every migration's progress */
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
