/*
 * check_lease.c - the lease statements (sc_lease) against a throwaway
 * PostgreSQL, no sidecar binary and no Kafka: the epoch (fencing token)
 * only ever rises, whatever happens to the lease and checkpoint rows; a
 * live lease of another owner is never taken; racing acquirers get exactly
 * one winner, whose epoch is the checkpoint row's; every lease change
 * writes its event.
 *
 * The server is started once (unchecked fixture); every test migrates a
 * database of its own.  Expiry is waited for as a condition on the
 * database clock, never as a fixed sleep.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_log.h"
#include "db/sc_db.h"
#include "db/sc_migrate.h"
#include "hx.h"
#include "protocol/sc_checkpoint.h"
#include "protocol/sc_lease.h"

#define TOPIC   "orders"
#define LONG_MS 600000 /* a lease that stays live for the whole test */

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

static void db_open_as(const struct t *t, struct sc_db *db, const char *app)
{
    sc_db_init(db, t->dsn, "sidecar", app, 5000);
    ck_assert_msg(sc_db_connect(db, true) == 0, "connect: %s", db->last_error);
}

static void db_open(const struct t *t, struct sc_db *db)
{
    db_open_as(t, db, "check_lease");
}

/* Acquires partition of TOPIC for owner; returns whether it was acquired (the answer in *r). */
static bool acquire(struct sc_db *db, const char *pipeline, const char *owner, int ttl_ms,
                    int32_t partition, struct sc_lease_req *r)
{
    bool unavailable = true;

    memset(r, 0, sizeof(*r));
    r->topic = TOPIC;
    r->partition = partition;
    ck_assert_msg(sc_lease_acquire(db, pipeline, owner, ttl_ms, NULL, r, 1, &unavailable) == 0,
                  "acquire by %s: %s", owner, db->last_error);
    ck_assert(!unavailable);
    return r->acquired;
}

/* Releases one lease (reserved for to, or NULL); returns how many were released (0 or 1). */
static int release_to(struct sc_db *db, const char *pipeline, const char *owner, int32_t partition,
                      int64_t epoch, const char *to)
{
    struct sc_lease_held h = {.topic = TOPIC, .partition = partition, .epoch = epoch};
    int n = sc_lease_release(db, pipeline, owner, NULL, &h, 1, "test", to);

    ck_assert_msg(n >= 0, "release: %s", db->last_error);
    return n;
}

static void release(struct sc_db *db, const char *pipeline, const char *owner, int32_t partition,
                    int64_t epoch)
{
    ck_assert_int_eq(release_to(db, pipeline, owner, partition, epoch, NULL), 1);
}

/* Who owner is in the registry: the incarnation is the same for every session of it. */
static struct sc_lease_self self_of(const char *pipeline, const char *owner, int ttl_ms)
{
    int64_t inc = 0;
    for (const char *c = owner; *c; c++)
        inc = inc * 31 + *c;
    return (struct sc_lease_self){pipeline, owner, inc, "lease", ttl_ms};
}

/* Registers owner in pipeline; returns whether it was. */
static bool register_as(struct sc_db *db, const char *pipeline, const char *owner, int ttl_ms)
{
    struct sc_lease_self self = self_of(pipeline, owner, ttl_ms);
    struct sc_lease_holder h;
    bool registered = false, draining = false;

    ck_assert_msg(sc_lease_register(db, &self, "test-host", 4242, &registered, &draining, &h) == 0,
                  "register: %s", db->last_error);
    return registered;
}

/* Renews one lease with a tick (registering first); returns its state. */
static enum sc_lease_state renew_state(struct sc_db *db, const char *pipeline, const char *owner,
                                       int32_t partition, int64_t epoch)
{
    struct sc_lease_self self = self_of(pipeline, owner, LONG_MS);
    struct sc_lease_held h = {.topic = TOPIC, .partition = partition, .epoch = epoch};
    struct sc_lease_tick tick;

    ck_assert(register_as(db, pipeline, owner, LONG_MS));
    ck_assert_int_eq(sc_lease_tick(db, &self, &h, 1, -1, -1, NULL, false, &tick), 0);
    ck_assert(tick.registered);
    sc_lease_tick_clear(&tick);
    return h.state;
}

/* Renews one lease; returns whether it is still ours. */
static bool renew(struct sc_db *db, const char *pipeline, const char *owner, int32_t partition,
                  int64_t epoch)
{
    return renew_state(db, pipeline, owner, partition, epoch) == SC_LEASE_RENEWED;
}

static long long row_int(const struct t *t, const char *sql, const char *pipeline,
                         int32_t partition)
{
    char part[24];
    const char *params[] = {pipeline, TOPIC, sc_i64(part, partition)};

    return hx_pg_int(t->conn, sql, 3, params);
}

static long long cp_epoch(const struct t *t, const char *pipeline, int32_t partition)
{
    return row_int(t,
                   "SELECT epoch FROM sidecar.checkpoints"
                   " WHERE pipeline = $1 AND topic = $2 AND partition = $3",
                   pipeline, partition);
}

static long long lease_epoch(const struct t *t, const char *pipeline, int32_t partition)
{
    return row_int(t,
                   "SELECT epoch FROM sidecar.leases"
                   " WHERE pipeline = $1 AND topic = $2 AND partition = $3",
                   pipeline, partition);
}

/* A row as it is stored, with the transaction that last wrote it (malloc'd; NULL: no row). */
static char *row_text(const struct t *t, const char *table, const char *pipeline, int32_t partition)
{
    char sql[256], part[24];
    const char *params[] = {pipeline, TOPIC, sc_i64(part, partition)};

    snprintf(sql, sizeof(sql),
             "SELECT r.xmin::text || ' ' || row_to_json(r)::text FROM sidecar.%s r"
             " WHERE pipeline = $1 AND topic = $2 AND partition = $3",
             table);
    return hx_pg_value(t->conn, sql, 3, params);
}

/* Events of pipeline: all (kind NULL), of one kind, or lease "acquire" / "release" ones. */
static long long events_of(const struct t *t, const char *pipeline, const char *kind)
{
    const char *params[] = {pipeline, kind};

    return hx_pg_int(t->conn,
                     "SELECT count(*) FROM sidecar.events WHERE pipeline = $1"
                     " AND ($2::text IS NULL OR kind = $2"
                     " OR (kind = 'lease' AND detail->>'action' = $2))",
                     2, params);
}

/* The acquisition's answer agrees with both rows: owner, epoch, and the checkpoint copy. */
static void check_acquired(const struct t *t, const char *pipeline, const char *owner,
                           int32_t partition, const struct sc_lease_req *r)
{
    char part[24];
    const char *params[] = {pipeline, TOPIC, sc_i64(part, partition)};
    char *holder = hx_pg_value(t->conn,
                               "SELECT owner FROM sidecar.leases"
                               " WHERE pipeline = $1 AND topic = $2 AND partition = $3"
                               " AND expires_at > now()",
                               3, params);

    ck_assert_msg(holder != NULL && strcmp(holder, owner) == 0, "live holder %s, want %s",
                  holder ? holder : "(none)", owner);
    free(holder);
    ck_assert_int_eq(lease_epoch(t, pipeline, partition), r->epoch);
    ck_assert_int_eq(cp_epoch(t, pipeline, partition), r->epoch);
    ck_assert_int_eq(r->cp.epoch, r->epoch);
}

/* Tries, as owner with cp's epoch, a one-record pend where cp says (on a copy of cp). */
static enum sc_cp_status try_pend(struct sc_db *db, const char *pipeline, const char *owner,
                                  int32_t partition, const struct sc_cp *cp)
{
    struct sc_cp_key k = {
        .pipeline = pipeline, .topic = TOPIC, .partition = partition, .owner = owner};
    struct sc_cp copy = *cp;
    int64_t first = cp->has_committed ? cp->committed_offset : 0;

    return sc_checkpoint_pend(db, &k, &copy, first, first, 1, 7);
}

/* ---- the epoch never repeats ------------------------------------------------------ */

START_TEST(epoch_rises_across_release_and_reacquire)
{
    struct t t;
    struct sc_db a, b;
    struct sc_lease_req r1, r2, r3, r4;

    t_start(&t, "epoch_release");
    db_open(&t, &a);
    db_open(&t, &b);

    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r1));
    ck_assert_int_ge(r1.epoch, 1);
    check_acquired(&t, "p", "A", 0, &r1);

    /* Released: free for anyone, and taking it again is a new epoch, even for A. */
    release(&a, "p", "A", 0, r1.epoch);
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r2));
    ck_assert_int_gt(r2.epoch, r1.epoch);
    check_acquired(&t, "p", "A", 0, &r2);

    /* A different owner after a release. */
    release(&a, "p", "A", 0, r2.epoch);
    ck_assert(acquire(&b, "p", "B", LONG_MS, 0, &r3));
    ck_assert_int_gt(r3.epoch, r2.epoch);
    check_acquired(&t, "p", "B", 0, &r3);

    /* And back to the first one. */
    release(&b, "p", "B", 0, r3.epoch);
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r4));
    ck_assert_int_gt(r4.epoch, r3.epoch);
    check_acquired(&t, "p", "A", 0, &r4);

    /* Every superseded epoch is fenced. */
    ck_assert_int_eq(try_pend(&b, "p", "B", 0, &r3.cp), SC_CP_FENCED);
    ck_assert_int_eq(try_pend(&a, "p", "A", 0, &r2.cp), SC_CP_FENCED);
    ck_assert_int_eq(try_pend(&a, "p", "A", 0, &r4.cp), SC_CP_OK);

    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

START_TEST(epoch_rises_after_lease_row_deleted)
{
    struct t t;
    struct sc_db a, b;
    struct sc_lease_req r1, r2, r3, r4, r5;

    t_start(&t, "epoch_delete");
    db_open(&t, &a);
    db_open(&t, &b);
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r1));
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r2));
    ck_assert_int_gt(r2.epoch, r1.epoch);

    /* An operator deletes the lease row of a live lease: the epoch lives on in the checkpoint. */
    hx_pg_exec(t.conn, "DELETE FROM sidecar.leases");
    ck_assert(acquire(&b, "p", "B", LONG_MS, 0, &r3));
    ck_assert_int_gt(r3.epoch, r2.epoch);
    check_acquired(&t, "p", "B", 0, &r3);
    ck_assert_int_eq(try_pend(&a, "p", "A", 0, &r2.cp), SC_CP_FENCED);

    /* Again, now back to A, who held an older epoch. */
    hx_pg_exec(t.conn, "DELETE FROM sidecar.leases");
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r4));
    ck_assert_int_gt(r4.epoch, r3.epoch);
    check_acquired(&t, "p", "A", 0, &r4);
    ck_assert_int_eq(try_pend(&b, "p", "B", 0, &r3.cp), SC_CP_FENCED);

    /* The checkpoint row deleted instead: the epoch lives on in the lease. */
    hx_pg_exec(t.conn, "DELETE FROM sidecar.checkpoints");
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r5));
    ck_assert_int_gt(r5.epoch, r4.epoch);
    check_acquired(&t, "p", "A", 0, &r5);
    ck_assert_int_eq(try_pend(&a, "p", "A", 0, &r5.cp), SC_CP_OK);

    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

/* Runs sidecar.reset_checkpoint(); returns the reset row's epoch, or -1 if it was refused. */
static long long sql_reset(const struct t *t, const char *pipeline, int32_t partition, long long to,
                           bool force)
{
    char part[24], off[24];
    const char *params[] = {pipeline, TOPIC, sc_i64(part, partition), sc_i64(off, to),
                            force ? "true" : "false"};
    /* A reset checks the offset against the partition's last watermark sample. */
    PQclear(PQexecParams(t->conn,
                         "INSERT INTO sidecar.partition_stats (pipeline, topic, partition,"
                         " low_watermark, high_watermark) VALUES ($1, $2, $3::int, 0, 1000000)"
                         " ON CONFLICT DO NOTHING",
                         3, NULL, params, NULL, NULL, 0));
    PGresult *res =
        PQexecParams(t->conn, "SELECT (sidecar.reset_checkpoint($1, $2, $3, $4, $5)).epoch", 5,
                     NULL, params, NULL, NULL, 0);
    long long epoch = -1;

    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        epoch = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    else /* refused because of a live lease, nothing else */
        ck_assert_str_eq(PQresultErrorField(res, PG_DIAG_SQLSTATE), "55P03");
    PQclear(res);
    return epoch;
}

START_TEST(epoch_rises_across_operator_reset)
{
    struct t t;
    struct sc_db a, b;
    struct sc_lease_req r1, r2, r3, r4;

    t_start(&t, "epoch_reset");
    db_open(&t, &a);
    db_open(&t, &b);
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r1));
    ck_assert_int_eq(try_pend(&a, "p", "A", 0, &r1.cp), SC_CP_OK);

    /* Refused while A's lease is live, and nothing changes. */
    char *before = row_text(&t, "checkpoints", "p", 0);
    ck_assert_int_eq(sql_reset(&t, "p", 0, 100, false), -1);
    char *after = row_text(&t, "checkpoints", "p", 0);
    ck_assert_str_eq(after, before);
    free(before);
    free(after);

    /* Forced: the row moves, its epoch does not go back. */
    ck_assert_int_eq(sql_reset(&t, "p", 0, 100, true), r1.epoch);
    ck_assert_int_eq(cp_epoch(&t, "p", 0), r1.epoch);

    /* Released, reset again, taken by B: a new, higher epoch that starts at the reset. */
    release(&a, "p", "A", 0, r1.epoch);
    ck_assert_int_eq(sql_reset(&t, "p", 0, 200, false), r1.epoch);
    ck_assert(acquire(&b, "p", "B", LONG_MS, 0, &r2));
    ck_assert_int_gt(r2.epoch, r1.epoch);
    check_acquired(&t, "p", "B", 0, &r2);
    ck_assert(r2.cp.has_committed && !r2.cp.has_pending);
    ck_assert_int_eq(r2.cp.committed_offset, 200);
    ck_assert_int_eq(try_pend(&a, "p", "A", 0, &r1.cp), SC_CP_FENCED);

    /* A reset then a re-acquisition by the same owner. */
    ck_assert_int_eq(sql_reset(&t, "p", 0, 300, true), r2.epoch);
    ck_assert(acquire(&b, "p", "B", LONG_MS, 0, &r3));
    ck_assert_int_gt(r3.epoch, r2.epoch);
    check_acquired(&t, "p", "B", 0, &r3);

    /* A deleted checkpoint row is not re-created by a reset (refused: resets never create
     * rows); the next acquisition creates it, with an epoch still above every earlier one. */
    hx_pg_exec(t.conn, "DELETE FROM sidecar.checkpoints");
    PGresult *res =
        PQexec(t.conn, "SELECT sidecar.reset_checkpoint('p', '" TOPIC "', 0, 400, true)");
    ck_assert_str_eq(PQresultErrorField(res, PG_DIAG_SQLSTATE), "42704");
    PQclear(res);
    ck_assert_int_eq(hx_pg_int(t.conn, "SELECT count(*) FROM sidecar.checkpoints", 0, NULL), 0);
    release(&b, "p", "B", 0, r3.epoch);
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r4));
    ck_assert_int_gt(r4.epoch, r3.epoch);
    check_acquired(&t, "p", "A", 0, &r4);
    ck_assert(!r4.cp.has_committed);

    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

/* ---- live leases are respected ------------------------------------------------------- */

struct expiry {
    const struct t *t;
    const char *pipeline;
};

/* Whether the lease has expired by the database's clock (the one the statements use). */
static bool lease_expired(void *arg)
{
    const struct expiry *e = arg;

    return row_int(e->t,
                   "SELECT count(*) FROM sidecar.leases WHERE pipeline = $1 AND topic = $2"
                   " AND partition = $3 AND expires_at <= now()",
                   e->pipeline, 0) == 1;
}

START_TEST(expired_lease_taken_by_other_owner)
{
    struct t t;
    struct sc_db a, b;
    struct sc_lease_req r1, r2, r3;
    struct expiry e = {&t, "p"};

    t_start(&t, "expiry");
    db_open(&t, &a);
    db_open(&t, &b);
    ck_assert(acquire(&a, "p", "A", 100, 0, &r1));
    ck_assert_msg(hx_wait_until(lease_expired, &e, 30000), "the 100 ms lease never expired");

    ck_assert(acquire(&b, "p", "B", LONG_MS, 0, &r2));
    ck_assert_int_gt(r2.epoch, r1.epoch);
    check_acquired(&t, "p", "B", 0, &r2);

    /* A, waking up late: its lease and its writes are gone, and B's lease is not its to take. */
    ck_assert(!renew(&a, "p", "A", 0, r1.epoch));
    ck_assert_int_eq(try_pend(&a, "p", "A", 0, &r1.cp), SC_CP_FENCED);
    ck_assert(!acquire(&a, "p", "A", LONG_MS, 0, &r3));
    ck_assert_str_eq(r3.holder, "B");
    ck_assert_int_eq(try_pend(&b, "p", "B", 0, &r2.cp), SC_CP_OK);

    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

START_TEST(live_lease_of_other_owner_is_not_taken)
{
    struct t t;
    struct sc_db a, b;
    struct sc_lease_req r1, rb[2];
    bool unavailable = true;

    t_start(&t, "live");
    db_open(&t, &a);
    db_open(&t, &b);
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r1));
    char *lease0 = row_text(&t, "leases", "p", 0), *cp0 = row_text(&t, "checkpoints", "p", 0);
    long long events0 = events_of(&t, "p", NULL);

    /* B asks for partition 0 (A's) and 1 (free) in one statement: it gets 1 only. */
    memset(rb, 0, sizeof(rb));
    rb[0].topic = rb[1].topic = TOPIC;
    rb[0].partition = 0;
    rb[1].partition = 1;
    ck_assert_int_eq(sc_lease_acquire(&b, "p", "B", LONG_MS, NULL, rb, 2, &unavailable), 0);
    ck_assert(!rb[0].acquired);
    ck_assert_str_eq(rb[0].holder, "A");
    ck_assert_int_eq(rb[0].epoch, r1.epoch);
    ck_assert_msg(rb[0].holder_ms > 0 && rb[0].holder_ms <= LONG_MS, "holder_ms %lld",
                  (long long)rb[0].holder_ms);
    ck_assert(rb[1].acquired);
    check_acquired(&t, "p", "B", 1, &rb[1]);

    /* Partition 0 untouched: not even rewritten with the same values; one event, for 1. */
    char *lease1 = row_text(&t, "leases", "p", 0), *cp1 = row_text(&t, "checkpoints", "p", 0);
    ck_assert_str_eq(lease1, lease0);
    ck_assert_str_eq(cp1, cp0);
    ck_assert_int_eq(events_of(&t, "p", NULL), events0 + 1);
    free(lease0);
    free(lease1);
    free(cp0);
    free(cp1);

    /* A still owns it. */
    ck_assert(renew(&a, "p", "A", 0, r1.epoch));
    ck_assert_int_eq(try_pend(&a, "p", "A", 0, &r1.cp), SC_CP_OK);

    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

START_TEST(same_owner_reacquires_its_live_lease)
{
    struct t t;
    struct sc_db a, a2;
    struct sc_lease_req r1, r2;

    t_start(&t, "same_owner");
    db_open(&t, &a);
    db_open(&t, &a2); /* A restarted after a crash: a new session, the same instance id */
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r1));
    ck_assert(acquire(&a2, "p", "A", LONG_MS, 0, &r2));
    ck_assert_int_gt(r2.epoch, r1.epoch);
    check_acquired(&t, "p", "A", 0, &r2);

    /* The previous incarnation is fenced like any other previous owner. */
    ck_assert(!renew(&a, "p", "A", 0, r1.epoch));
    ck_assert_int_eq(try_pend(&a, "p", "A", 0, &r1.cp), SC_CP_FENCED);
    ck_assert(renew(&a2, "p", "A", 0, r2.epoch));
    ck_assert_int_eq(try_pend(&a2, "p", "A", 0, &r2.cp), SC_CP_OK);

    sc_db_close(&a);
    sc_db_close(&a2);
    t_stop(&t);
}
END_TEST

/* ---- racing acquirers ------------------------------------------------------------------- */

#define RACERS 6
#define ROUNDS 60

struct race {
    const char *pipeline;
    pthread_barrier_t start, done;
    bool stop;
};

struct racer {
    struct race *race;
    char owner[16];
    struct sc_db db;
    struct sc_lease_req req;
    int rc;
    bool unavailable;
    atomic_int busy; /* attempts this round that found the row locked */
};

/* Acquires until it has the lease or is told who has it: a locked row is tried again, as the
 * sidecar does. */
static void *racer_main(void *arg)
{
    struct racer *r = arg;

    for (;;) {
        pthread_barrier_wait(&r->race->start);
        if (r->race->stop)
            break;
        atomic_store(&r->busy, 0);
        do {
            memset(&r->req, 0, sizeof(r->req));
            r->req.topic = TOPIC;
            r->req.partition = 0;
            r->rc = sc_lease_acquire(&r->db, r->race->pipeline, r->owner, LONG_MS, NULL, &r->req, 1,
                                     &r->unavailable);
            if (r->rc == 0 && r->req.busy) {
                atomic_fetch_add(&r->busy, 1);
                usleep(2000);
            }
        } while (r->rc == 0 && r->req.busy);
        pthread_barrier_wait(&r->race->done);
    }
    return NULL;
}

/* Every racer found the row locked by the test's gate (and keeps trying). */
static bool all_racers_blocked(void *arg)
{
    struct racer *racers = arg;

    for (int i = 0; i < RACERS; i++)
        if (atomic_load(&racers[i].busy) == 0)
            return false;
    return true;
}

/*
 * Before each round the previous winner's lease is made available in one of
 * three ways: it expires, it is released, or its row is deleted (the first
 * round starts with no rows at all).  Every other round the racers find the
 * lease row locked by the test (a held row lock, or an uncommitted insert of
 * the missing row): a locked row is skipped, never waited for, so each racer
 * is told "busy" and tries again until the lock goes; in the others they
 * only start together.  Either way exactly one wins, and every loser is
 * told the winner: the holder is read from the row it locked, not from a
 * snapshot taken before the winner committed.
 */
START_TEST(concurrent_acquirers_get_one_winner)
{
    struct t t;
    struct race race = {.pipeline = "p"};
    struct racer racers[RACERS];
    pthread_t tids[RACERS];
    struct sc_db rel;
    PGconn *gate;
    long long prev = 0;
    int gated_rounds = 0;

    t_start(&t, "race");
    gate = hx_pg_connect(t.dsn);
    db_open(&t, &rel);
    pthread_barrier_init(&race.start, NULL, RACERS + 1);
    pthread_barrier_init(&race.done, NULL, RACERS + 1);
    for (int i = 0; i < RACERS; i++) {
        racers[i].race = &race;
        snprintf(racers[i].owner, sizeof(racers[i].owner), "racer-%d", i);
        db_open(&t, &racers[i].db);
        ck_assert_int_eq(pthread_create(&tids[i], NULL, racer_main, &racers[i]), 0);
    }

    const char *winner = NULL;
    for (int round = 0; round < ROUNDS; round++) {
        int how = round % 3; /* 0: row deleted (or none yet), 1: expired, 2: released */
        bool gated = (round / 3) % 2 == 0;
        long long events = events_of(&t, "p", "acquire");

        if (round > 0 && how == 0)
            hx_pg_exec(t.conn, "DELETE FROM sidecar.leases");
        else if (how == 1)
            hx_pg_exec(t.conn, "UPDATE sidecar.leases SET expires_at = now() - interval '1 s'");
        else if (how == 2)
            release(&rel, "p", winner, 0, prev);
        if (gated) {
            hx_pg_exec(gate, "BEGIN");
            hx_pg_exec(gate, how == 0 ? "INSERT INTO sidecar.leases (pipeline, topic, partition)"
                                        " VALUES ('p', '" TOPIC "', 0)"
                                      : "SELECT 1 FROM sidecar.leases FOR UPDATE");
        }
        pthread_barrier_wait(&race.start);
        if (gated) {
            ck_assert_msg(hx_wait_until(all_racers_blocked, racers, 30000),
                          "round %d: the racers never all found the row locked", round);
            hx_pg_exec(gate, how == 0 ? "ROLLBACK" : "COMMIT");
            gated_rounds++;
        }
        pthread_barrier_wait(&race.done);

        int winners = 0;
        struct racer *w = NULL;
        for (int i = 0; i < RACERS; i++) {
            ck_assert_msg(racers[i].rc == 0 && !racers[i].unavailable, "round %d: %s failed: %s",
                          round, racers[i].owner, racers[i].db.last_error);
            if (racers[i].req.acquired) {
                winners++;
                w = &racers[i];
            }
        }
        ck_assert_msg(winners == 1, "round %d (%s%s): %d winners", round,
                      how == 0   ? "deleted"
                      : how == 1 ? "expired"
                                 : "released",
                      gated ? ", gated" : "", winners);
        ck_assert_msg(w->req.epoch > prev, "round %d: epoch %lld after %lld", round,
                      (long long)w->req.epoch, prev);
        check_acquired(&t, "p", w->owner, 0, &w->req);
        ck_assert_int_eq(events_of(&t, "p", "acquire"), events + 1);
        /* Every loser is told the winner, with its epoch. */
        for (int i = 0; i < RACERS; i++) {
            const struct sc_lease_req *l = &racers[i].req;

            if (&racers[i] != w)
                ck_assert_msg(strcmp(l->holder, w->owner) == 0 && l->epoch == w->req.epoch &&
                                  l->holder_ms > 0,
                              "round %d: %s was told %s (epoch %lld) holds the lease, not %s",
                              round, racers[i].owner, l->holder, (long long)l->epoch, w->owner);
        }
        prev = w->req.epoch;
        winner = w->owner;
    }
    ck_assert_int_eq(gated_rounds, ROUNDS / 2);

    race.stop = true;
    pthread_barrier_wait(&race.start);
    for (int i = 0; i < RACERS; i++) {
        pthread_join(tids[i], NULL);
        sc_db_close(&racers[i].db);
    }
    pthread_barrier_destroy(&race.start);
    pthread_barrier_destroy(&race.done);
    sc_db_close(&rel);
    PQfinish(gate);
    t_stop(&t);
}
END_TEST

/* ---- events ------------------------------------------------------------------------------- */

/*
 * Asserts the newest event of pipeline: "kind|epoch|owner|first_offset|write_offset"
 * ("-" for NULL) and its detail (compared as jsonb).
 */
static void check_last_event(const struct t *t, const char *pipeline, const char *want,
                             const char *detail)
{
    const char *params[] = {pipeline, detail};
    char *got = hx_pg_value(t->conn,
                            "SELECT concat_ws('|', kind, epoch, owner,"
                            " coalesce(first_offset::text, '-'), coalesce(write_offset::text, '-'),"
                            " CASE WHEN detail = $2::jsonb THEN 'detail ok' ELSE detail::text END)"
                            " FROM sidecar.events WHERE pipeline = $1 ORDER BY id DESC LIMIT 1",
                            2, params);
    char full[512];

    snprintf(full, sizeof(full), "%s|detail ok", want);
    ck_assert_msg(got != NULL && strcmp(got, full) == 0, "newest event [%s], want [%s] %s",
                  got ? got : "(none)", want, detail);
    free(got);
}

START_TEST(lease_events_match_changes)
{
    struct t t;
    struct sc_db a, b;
    struct sc_lease_req r1, r2, r3, r4;
    char want[256];

    t_start(&t, "lease_events");
    db_open(&t, &a);
    db_open(&t, &b);

    /* Acquired: one event. */
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r1));
    ck_assert_int_eq(events_of(&t, "p", NULL), 1);
    snprintf(want, sizeof(want), "lease|%lld|A|-|0", (long long)r1.epoch);
    check_last_event(&t, "p", want, "{\"action\": \"acquire\", \"pending\": false}");

    /* Not acquired, renewed, a release with an epoch that is not the lease's: none. */
    ck_assert(!acquire(&b, "p", "B", LONG_MS, 0, &r2));
    ck_assert(renew(&a, "p", "A", 0, r1.epoch));
    char *lease0 = row_text(&t, "leases", "p", 0);
    ck_assert_int_eq(release_to(&a, "p", "A", 0, r1.epoch + 1, NULL), 0);
    ck_assert_int_eq(release_to(&b, "p", "B", 0, r1.epoch, NULL), 0);
    char *lease1 = row_text(&t, "leases", "p", 0);
    ck_assert_str_eq(lease1, lease0);
    free(lease0);
    free(lease1);
    ck_assert_int_eq(events_of(&t, "p", NULL), 1);

    /* A pends a batch (its own event), then releases: one release event. */
    ck_assert_int_eq(try_pend(&a, "p", "A", 0, &r1.cp), SC_CP_OK);
    ck_assert_int_eq(events_of(&t, "p", NULL), 2);
    release(&a, "p", "A", 0, r1.epoch);
    ck_assert_int_eq(events_of(&t, "p", NULL), 3);
    snprintf(want, sizeof(want), "lease|%lld|A|-|-", (long long)r1.epoch);
    check_last_event(&t, "p", want, "{\"action\": \"release\", \"reason\": \"test\"}");

    /* B takes over and is told there is a pending batch. */
    ck_assert(acquire(&b, "p", "B", LONG_MS, 0, &r3));
    ck_assert_int_eq(events_of(&t, "p", NULL), 4);
    snprintf(want, sizeof(want), "lease|%lld|B|-|0", (long long)r3.epoch);
    check_last_event(&t, "p", want, "{\"action\": \"acquire\", \"pending\": true}");

    /* After a reset to 42 (the operator's own event), an acquisition reports that position. */
    release(&b, "p", "B", 0, r3.epoch);
    /* A reset checks the offset against the partition's last watermark sample. */
    hx_pg_exec(t.conn,
               "INSERT INTO sidecar.partition_stats (pipeline, topic, partition, low_watermark,"
               " high_watermark) VALUES ('p', '" TOPIC "', 0, 0, 1000)");
    hx_pg_exec(t.conn, "SELECT sidecar.reset_checkpoint('p', '" TOPIC "', 0, 42)");
    ck_assert_int_eq(events_of(&t, "p", NULL), 6);
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r4));
    ck_assert_int_eq(events_of(&t, "p", NULL), 7);
    snprintf(want, sizeof(want), "lease|%lld|A|42|0", (long long)r4.epoch);
    check_last_event(&t, "p", want, "{\"action\": \"acquire\", \"pending\": false}");
    ck_assert_int_eq(events_of(&t, "p", "acquire"), 3);
    ck_assert_int_eq(events_of(&t, "p", "release"), 2);

    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

/* ---- the epoch sequence, lapsed leases -------------------------------------------------- */

START_TEST(epoch_never_repeats_when_both_rows_are_deleted)
{
    struct t t;
    struct sc_db a, b;
    struct sc_lease_req r1, r2, r3;

    t_start(&t, "epoch_both");
    db_open(&t, &a);
    db_open(&t, &b);
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r1));
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r2));
    /* Both rows gone: nothing in the tables remembers the epoch any more. */
    hx_pg_exec(t.conn, "DELETE FROM sidecar.leases");
    hx_pg_exec(t.conn, "DELETE FROM sidecar.checkpoints");
    ck_assert(acquire(&b, "p", "B", LONG_MS, 0, &r3));
    ck_assert_int_gt(r3.epoch, r2.epoch);
    check_acquired(&t, "p", "B", 0, &r3);
    /* A stalled A still holding epoch r2 (or r1) stays fenced. */
    ck_assert_int_eq(try_pend(&a, "p", "A", 0, &r2.cp), SC_CP_FENCED);
    ck_assert_int_eq(try_pend(&a, "p", "A", 0, &r1.cp), SC_CP_FENCED);
    ck_assert_int_eq(try_pend(&b, "p", "B", 0, &r3.cp), SC_CP_OK);
    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

START_TEST(lapsed_lease_is_not_renewed)
{
    struct t t;
    struct sc_db a, b;
    struct sc_lease_req r1, r2, r3;
    struct expiry e = {&t, "p"};

    t_start(&t, "lapsed");
    db_open(&t, &a);
    db_open(&t, &b);
    ck_assert(acquire(&a, "p", "A", 100, 0, &r1));
    ck_assert_msg(hx_wait_until(lease_expired, &e, 30000), "the 100 ms lease never expired");
    /* Nobody took it, but renewing it is refused: A must acquire it again (new epoch). */
    char *before = row_text(&t, "leases", "p", 0);
    ck_assert_int_eq(renew_state(&a, "p", "A", 0, r1.epoch), SC_LEASE_LAPSED);
    char *after = row_text(&t, "leases", "p", 0);
    ck_assert_str_eq(after, before);
    free(before);
    free(after);
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r2));
    ck_assert_int_gt(r2.epoch, r1.epoch);
    ck_assert_int_eq(renew_state(&a, "p", "A", 0, r2.epoch), SC_LEASE_RENEWED);
    /* A lease another owner holds now is lost, not lapsed. */
    release(&a, "p", "A", 0, r2.epoch);
    ck_assert(acquire(&b, "p", "B", LONG_MS, 0, &r3));
    ck_assert_int_eq(renew_state(&a, "p", "A", 0, r2.epoch), SC_LEASE_LOST);
    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

/* ---- locked rows ------------------------------------------------------------------------------
 */

START_TEST(locked_rows_delay_only_their_partition)
{
    struct t t;
    struct sc_db a;
    struct sc_lease_req r[3];
    bool unavailable;

    t_start(&t, "locked");
    db_open(&t, &a);
    PGconn *op = hx_pg_connect(t.dsn);
    /* Partition 0: its checkpoint row exists and an open transaction holds it. */
    hx_pg_exec(t.conn, "INSERT INTO sidecar.checkpoints (pipeline, topic, partition)"
                       " VALUES ('p', '" TOPIC "', 0)");
    hx_pg_exec(op, "BEGIN");
    hx_pg_exec(op, "SELECT 1 FROM sidecar.checkpoints WHERE partition = 0 FOR UPDATE");
    /* Partition 1: another transaction is inserting its lease row and has not committed. */
    PGconn *op2 = hx_pg_connect(t.dsn);
    hx_pg_exec(op2, "BEGIN");
    hx_pg_exec(op2, "INSERT INTO sidecar.leases (pipeline, topic, partition)"
                    " VALUES ('p', '" TOPIC "', 1)");
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 3; i++) {
        r[i].topic = TOPIC;
        r[i].partition = i;
    }
    int64_t t0 = hx_now_ms();
    ck_assert_int_eq(sc_lease_acquire(&a, "p", "A", LONG_MS, NULL, r, 3, &unavailable), 0);
    int64_t took = hx_now_ms() - t0;
    ck_assert(!r[0].acquired && r[0].busy);
    ck_assert(!r[1].acquired && r[1].busy);
    ck_assert(r[2].acquired && !r[2].busy);
    check_acquired(&t, "p", "A", 2, &r[2]);
    ck_assert_msg(took < 5000, "the acquisition waited %lld ms for the locks", (long long)took);
    /* The locks go: the two are acquired. */
    hx_pg_exec(op, "COMMIT");
    hx_pg_exec(op2, "ROLLBACK");
    ck_assert_int_eq(sc_lease_acquire(&a, "p", "A", LONG_MS, NULL, r, 2, &unavailable), 0);
    ck_assert(r[0].acquired && r[1].acquired);
    check_acquired(&t, "p", "A", 0, &r[0]);
    check_acquired(&t, "p", "A", 1, &r[1]);
    PQfinish(op);
    PQfinish(op2);
    sc_db_close(&a);
    t_stop(&t);
}
END_TEST

/* ---- the registry -----------------------------------------------------------------------------
 */

START_TEST(registry_refuses_a_second_live_process)
{
    struct t t;
    struct sc_db a, a2;

    t_start(&t, "registry");
    /* The sessions look like the sidecar's lease sessions (their application_name). */
    db_open_as(&t, &a, "kafka-sidecar/p/leases");
    db_open_as(&t, &a2, "kafka-sidecar/p/leases");
    struct sc_lease_self s1 = {"p", "A", 1, "lease", LONG_MS};
    struct sc_lease_self s2 = {"p", "A", 2, "lease", LONG_MS};
    struct sc_lease_holder h;
    bool reg = false, dr = true;
    ck_assert_int_eq(sc_lease_register(&a, &s1, "host-1", 101, &reg, &dr, &h), 0);
    ck_assert(reg && !dr);
    /* Another process (incarnation 2) with the same id while the first is connected. */
    ck_assert_int_eq(sc_lease_register(&a2, &s2, "host-2", 202, &reg, &dr, &h), 0);
    ck_assert(!reg);
    ck_assert_str_eq(h.host, "host-1");
    ck_assert_int_eq(h.os_pid, 101);
    ck_assert_int_gt(h.expires_ms, 0);
    /* The same id in another pipeline is another registration. */
    struct sc_lease_self s3 = {"q", "A", 2, "lease", LONG_MS};
    ck_assert_int_eq(sc_lease_register(&a2, &s3, "host-2", 202, &reg, &dr, &h), 0);
    ck_assert(reg);
    /* The first one's tick renews it; the second's says it is not registered. */
    struct sc_lease_tick tick;
    ck_assert_int_eq(sc_lease_tick(&a, &s1, NULL, 0, 4, 4, "{\"orders\": 4}", true, &tick), 0);
    ck_assert(tick.registered);
    ck_assert_int_eq(tick.ninsts, 1);
    ck_assert_str_eq(tick.insts[0].id, "A");
    ck_assert(tick.insts[0].eligible);
    sc_lease_tick_clear(&tick);
    ck_assert_int_eq(sc_lease_tick(&a2, &s2, NULL, 0, -1, -1, NULL, true, &tick), 0);
    ck_assert(!tick.registered);
    sc_lease_tick_clear(&tick);
    /* The first one's session ends (a crash): the second takes the id at once. */
    sc_db_close(&a);
    int64_t end = hx_now_ms() + 30000;
    do
        ck_assert_int_eq(sc_lease_register(&a2, &s2, "host-2", 202, &reg, &dr, &h), 0);
    while (!reg && hx_now_ms() < end);
    ck_assert_msg(reg, "the id of a disconnected process was not taken over");
    /* Drained instances stay drained across a new registration. */
    hx_pg_exec(t.conn, "SELECT sidecar.drain_instance('p', 'A')");
    ck_assert_int_eq(sc_lease_register(&a2, &s2, "host-2", 202, &reg, &dr, &h), 0);
    ck_assert(reg && dr);
    ck_assert_int_eq(sc_lease_tick(&a2, &s2, NULL, 0, -1, -1, NULL, true, &tick), 0);
    ck_assert(tick.ninsts == 1 && !tick.insts[0].eligible);
    sc_lease_tick_clear(&tick);
    /* A clean shutdown: not live any more, for the others at once. */
    ck_assert_int_eq(sc_lease_deregister(&a2, &s2), 0);
    ck_assert_int_eq(hx_pg_int(t.conn,
                               "SELECT count(*) FROM sidecar.instance_status WHERE pipeline = 'p'"
                               " AND live",
                               0, NULL),
                     0);
    sc_db_close(&a2);
    t_stop(&t);
}
END_TEST

/* ---- handoffs ----------------------------------------------------------------------------------
 */

START_TEST(handoff_request_release_and_reservation)
{
    struct t t;
    struct sc_db a, b, c;
    struct sc_lease_req r1, r2, r3;

    t_start(&t, "handoff");
    db_open(&t, &a);
    db_open(&t, &b);
    db_open(&t, &c);
    ck_assert(register_as(&a, "p", "A", LONG_MS));
    ck_assert(register_as(&b, "p", "B", LONG_MS));
    ck_assert(register_as(&c, "p", "C", LONG_MS));
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r1));

    /* B asks for it once; a second request (C's) on it is not made. */
    const char *topics[] = {TOPIC};
    const int32_t parts[] = {0};
    const char *owners[] = {"A"};
    ck_assert_int_eq(sc_lease_request_handoffs(&b, "p", "B", topics, parts, owners, 1), 1);
    ck_assert_int_eq(sc_lease_request_handoffs(&c, "p", "C", topics, parts, owners, 1), 0);
    ck_assert_int_eq(events_of(&t, "p", "handoff_request"), 1);
    /* A's tick sees it. */
    struct sc_lease_self sa = self_of("p", "A", LONG_MS);
    struct sc_lease_held h = {.topic = TOPIC, .partition = 0, .epoch = r1.epoch};
    struct sc_lease_tick tick;
    ck_assert_int_eq(sc_lease_tick(&a, &sa, &h, 1, 1, 1, NULL, true, &tick), 0);
    ck_assert_int_eq(h.state, SC_LEASE_RENEWED);
    ck_assert_int_eq(tick.nleases, 1);
    ck_assert_str_eq(tick.leases[0].owner, "A");
    ck_assert_str_eq(tick.leases[0].handoff_to, "B");
    ck_assert_int_eq(tick.leases[0].reason, SC_HANDOFF_BALANCE);
    ck_assert_int_eq(tick.ninsts, 3);
    sc_lease_tick_clear(&tick);

    /* A refuses: cleared, with its event; then B asks again and A hands it over. */
    const char *was[] = {"B"};
    ck_assert_int_eq(sc_lease_refuse_handoffs(&a, "p", "A", topics, parts, was, 1, "test"), 1);
    ck_assert_int_eq(events_of(&t, "p", "handoff_refused"), 1);
    ck_assert_int_eq(sc_lease_request_handoffs(&b, "p", "B", topics, parts, owners, 1), 1);
    ck_assert_int_eq(release_to(&a, "p", "A", 0, r1.epoch, "B"), 1);

    /* Reserved for B: C cannot take it, B can. */
    ck_assert(!acquire(&c, "p", "C", LONG_MS, 0, &r2));
    ck_assert_str_eq(r2.holder, "B");
    ck_assert(acquire(&b, "p", "B", LONG_MS, 0, &r3));
    ck_assert_int_gt(r3.epoch, r1.epoch);
    check_acquired(&t, "p", "B", 0, &r3);
    ck_assert_int_eq(row_int(&t,
                             "SELECT count(*) FROM sidecar.leases WHERE pipeline = $1 AND"
                             " topic = $2 AND partition = $3 AND handoff_to IS NULL",
                             "p", 0),
                     1);

    /* A reservation for an instance that is gone is void: anyone takes it. */
    ck_assert_int_eq(release_to(&b, "p", "B", 0, r3.epoch, "A"), 1);
    struct sc_lease_self sb = self_of("p", "A", LONG_MS);
    ck_assert_int_eq(sc_lease_deregister(&a, &sb), 0);
    ck_assert(acquire(&c, "p", "C", LONG_MS, 0, &r2));
    sc_db_close(&a);
    sc_db_close(&b);
    sc_db_close(&c);
    t_stop(&t);
}
END_TEST

/*
 * A handoff decision is made on what a tick saw; by the time it is carried
 * out, an operator may have moved the partition elsewhere.  The newer
 * request wins: a release reserves the partition for the instance the
 * operator named, not the one the owner decided on; a refusal does not
 * clear it; a shutdown release (for anyone) keeps it.
 */
START_TEST(stale_handoff_decisions_keep_the_newer_request)
{
    struct t t;
    struct sc_db a, b, c;
    struct sc_lease_req r0, r1, rb, rc0, rc1;

    t_start(&t, "stale");
    db_open(&t, &a);
    db_open(&t, &b);
    db_open(&t, &c);
    ck_assert(register_as(&a, "p", "A", LONG_MS));
    ck_assert(register_as(&b, "p", "B", LONG_MS));
    ck_assert(register_as(&c, "p", "C", LONG_MS));
    ck_assert(acquire(&a, "p", "A", LONG_MS, 0, &r0));
    ck_assert(acquire(&a, "p", "A", LONG_MS, 1, &r1));
    const char *topics[] = {TOPIC, TOPIC};
    const int32_t parts[] = {0, 1};
    const char *owners[] = {"A", "A"};
    const char *was[] = {"B", "B"};
    const char *to_c = "SELECT count(*) FROM sidecar.leases WHERE pipeline = $1 AND topic = $2"
                       " AND partition = $3 AND handoff_to = 'C' AND handoff_reason = 'move'";

    /* B asks for both; A decides to grant 0 and refuse 1; meanwhile the operator moves both
     * to C. */
    ck_assert_int_eq(sc_lease_request_handoffs(&b, "p", "B", topics, parts, owners, 2), 2);
    hx_pg_exec(t.conn, "SELECT sidecar.move_partition('p', '" TOPIC "', 0, 'C')");
    hx_pg_exec(t.conn, "SELECT sidecar.move_partition('p', '" TOPIC "', 1, 'C')");

    /* The refusal of B's request does not clear the operator's move. */
    ck_assert_int_eq(
        sc_lease_refuse_handoffs(&a, "p", "A", &topics[1], &parts[1], &was[1], 1, "test"), 0);
    ck_assert_int_eq(row_int(&t, to_c, "p", 1), 1);

    /* The release to B reserves it for C: B cannot take it, C can. */
    struct sc_lease_held h = {.topic = TOPIC, .partition = 0, .epoch = r0.epoch};
    ck_assert_int_eq(sc_lease_release_judged(&a, "p", "A", NULL, &h, 1, "balance", "B", "B"), 1);
    ck_assert_int_eq(row_int(&t, to_c, "p", 0), 1);
    ck_assert(!acquire(&b, "p", "B", LONG_MS, 0, &rb));
    ck_assert_str_eq(rb.holder, "C");
    ck_assert(acquire(&c, "p", "C", LONG_MS, 0, &rc0));

    /* A shutdown release (for anyone) keeps the pending move as the reservation. */
    h = (struct sc_lease_held){.topic = TOPIC, .partition = 1, .epoch = r1.epoch};
    ck_assert_int_eq(sc_lease_release_judged(&a, "p", "A", NULL, &h, 1, "shutdown", NULL, NULL), 1);
    ck_assert_int_eq(row_int(&t, to_c, "p", 1), 1);
    ck_assert(!acquire(&b, "p", "B", LONG_MS, 1, &rb));
    ck_assert(acquire(&c, "p", "C", LONG_MS, 1, &rc1));

    /* What was judged is still there: the decision applies (granted to B, reserved for B). */
    ck_assert_int_eq(
        sc_lease_request_handoffs(&b, "p", "B", topics, parts, (const char *[]){"C"}, 1), 1);
    h = (struct sc_lease_held){.topic = TOPIC, .partition = 0, .epoch = rc0.epoch};
    ck_assert_int_eq(sc_lease_release_judged(&c, "p", "C", NULL, &h, 1, "balance", "B", "B"), 1);
    ck_assert(acquire(&b, "p", "B", LONG_MS, 0, &rb));
    sc_db_close(&a);
    sc_db_close(&b);
    sc_db_close(&c);
    t_stop(&t);
}
END_TEST

/* ---- lock order ---------------------------------------------------------------------------------
 */

#define LOCK_PARTS  24
#define LOCK_ROUNDS 150

/* B, until stopped: asks A for every partition, in the reverse of A's order. */
struct asker {
    struct sc_db db;
    atomic_bool stop;
    int rounds;
    int failures;
    char error[600];
};

static void *asker_main(void *arg)
{
    struct asker *k = arg;
    const char *topics[LOCK_PARTS], *owners[LOCK_PARTS];
    int32_t parts[LOCK_PARTS];

    for (int i = 0; i < LOCK_PARTS; i++) {
        topics[i] = TOPIC;
        parts[i] = LOCK_PARTS - 1 - i;
        owners[i] = "A";
    }
    for (; !atomic_load(&k->stop); k->rounds++)
        if (sc_lease_request_handoffs(&k->db, "p", "B", topics, parts, owners, LOCK_PARTS) < 0 &&
            k->failures++ == 0)
            snprintf(k->error, sizeof(k->error), "%s", k->db.last_error);
    return NULL;
}

/*
 * A renews its leases (lease_tick) and declines the requests on them
 * (refuse_handoffs) in one order while B asks for them (request_handoffs) in
 * the opposite one, concurrently, many times: every statement that locks
 * several lease rows locks them in the same order, so none ever fails with
 * "deadlock detected".
 */
START_TEST(lease_updaters_never_deadlock)
{
    struct t t;
    struct sc_db a;
    struct asker b = {0};
    struct sc_lease_req r[LOCK_PARTS];
    struct sc_lease_held h[LOCK_PARTS];
    const char *topics[LOCK_PARTS], *was[LOCK_PARTS];
    int32_t parts[LOCK_PARTS];
    bool unavailable;
    pthread_t tid;
    int failures = 0;
    char error[600] = "";

    t_start(&t, "lockorder");
    db_open(&t, &a);
    db_open(&t, &b.db);
    ck_assert(register_as(&a, "p", "A", LONG_MS));
    ck_assert(register_as(&b.db, "p", "B", LONG_MS));
    /* Other pipelines' rows make the planner look the requested rows up one by one, in the
     * order given (a nested loop over the primary key), as on a real deployment. */
    hx_pg_exec(t.conn, "INSERT INTO sidecar.leases (pipeline, topic, partition)"
                       " SELECT 'other-' || (g / 100), '" TOPIC "', g % 100"
                       " FROM generate_series(0, 19999) g");
    hx_pg_exec(t.conn, "ANALYZE sidecar.leases");
    memset(r, 0, sizeof(r));
    for (int i = 0; i < LOCK_PARTS; i++) {
        r[i].topic = topics[i] = TOPIC;
        was[i] = "B";
        r[i].partition = parts[i] = i;
    }
    ck_assert_int_eq(sc_lease_acquire(&a, "p", "A", LONG_MS, NULL, r, LOCK_PARTS, &unavailable), 0);
    for (int i = 0; i < LOCK_PARTS; i++) {
        ck_assert(r[i].acquired);
        h[i] = (struct sc_lease_held){.topic = TOPIC, .partition = i, .epoch = r[i].epoch};
    }
    struct sc_lease_self sa = self_of("p", "A", LONG_MS);
    ck_assert_int_eq(pthread_create(&tid, NULL, asker_main, &b), 0);
    for (int round = 0; round < LOCK_ROUNDS; round++) {
        struct sc_lease_tick tick;
        if (sc_lease_tick(&a, &sa, h, LOCK_PARTS, LOCK_PARTS, LOCK_PARTS, NULL, false, &tick) !=
            0) {
            if (failures++ == 0)
                snprintf(error, sizeof(error), "tick: %s", a.last_error);
            continue;
        }
        sc_lease_tick_clear(&tick);
        /* A row B holds locked is skipped (busy), never lost. */
        for (int i = 0; i < LOCK_PARTS; i++)
            ck_assert_msg(h[i].state == SC_LEASE_RENEWED || h[i].state == SC_LEASE_BUSY,
                          "round %d: partition %d lost (state %d)", round, i, (int)h[i].state);
        if (sc_lease_refuse_handoffs(&a, "p", "A", topics, parts, was, LOCK_PARTS, "test") < 0 &&
            failures++ == 0)
            snprintf(error, sizeof(error), "refuse: %s", a.last_error);
    }
    atomic_store(&b.stop, true);
    pthread_join(tid, NULL);
    ck_assert_msg(failures == 0, "A failed %d times, first: %s", failures, error);
    ck_assert_msg(b.failures == 0, "B failed %d times, first: %s", b.failures, b.error);
    sc_db_close(&a);
    sc_db_close(&b.db);
    t_stop(&t);
}
END_TEST

/*
 * A lease row, and then the instance's registration, locked by an
 * operator's open transaction: the tick does not wait for them.  It renews
 * every other lease, answers the locked one "busy" (still ours, not
 * renewed: its expiry is unchanged), and keeps the registration.
 */
START_TEST(tick_skips_locked_rows)
{
    struct t t;
    struct sc_db a, b;
    struct sc_lease_req r[3];
    struct sc_lease_held h[3];
    struct sc_lease_tick tick;
    bool unavailable;

    t_start(&t, "tickskip");
    /* A tick that waits for a lock fails after 20 s instead of hanging the test. */
    char dsn[600];
    snprintf(dsn, sizeof(dsn), "%s options='-c statement_timeout=20000'", t.dsn);
    sc_db_init(&a, dsn, "sidecar", "check_lease", 5000);
    ck_assert_msg(sc_db_connect(&a, true) == 0, "connect: %s", a.last_error);
    db_open(&t, &b);
    ck_assert(register_as(&a, "p", "A", LONG_MS));
    ck_assert(register_as(&b, "p", "B", LONG_MS));
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 3; i++) {
        r[i].topic = TOPIC;
        r[i].partition = i;
    }
    ck_assert_int_eq(sc_lease_acquire(&a, "p", "A", LONG_MS, NULL, r, 3, &unavailable), 0);
    for (int i = 0; i < 3; i++) {
        ck_assert(r[i].acquired);
        h[i] = (struct sc_lease_held){.topic = TOPIC, .partition = i, .epoch = r[i].epoch};
    }
    struct sc_lease_self sa = self_of("p", "A", LONG_MS);
    const char *expiry = "SELECT (extract(epoch FROM expires_at) * 1000000)::bigint FROM"
                         " sidecar.leases WHERE pipeline = $1 AND topic = $2 AND partition = $3";
    long long before[3];
    for (int i = 0; i < 3; i++)
        before[i] = row_int(&t, expiry, "p", i);

    /* An operator's move of partition 1, not committed yet. */
    PGconn *op = hx_pg_connect(t.dsn);
    hx_pg_exec(op, "BEGIN");
    hx_pg_exec(op, "SELECT sidecar.move_partition('p', '" TOPIC "', 1, 'B')");
    int64_t t0 = hx_now_ms();
    ck_assert_msg(sc_lease_tick(&a, &sa, h, 3, 3, 2, NULL, true, &tick) == 0, "tick: %s",
                  a.last_error);
    int64_t took = hx_now_ms() - t0;
    ck_assert_msg(took < 4000, "the tick waited %lld ms for the locked row", (long long)took);
    ck_assert(tick.registered && !tick.self_busy);
    ck_assert_int_eq(tick.busy, 1);
    sc_lease_tick_clear(&tick);
    ck_assert_int_eq(h[0].state, SC_LEASE_RENEWED);
    ck_assert_int_eq(h[1].state, SC_LEASE_BUSY);
    ck_assert_int_eq(h[2].state, SC_LEASE_RENEWED);
    ck_assert_int_gt(row_int(&t, expiry, "p", 0), before[0]);
    ck_assert_int_eq(row_int(&t, expiry, "p", 1), before[1]);
    ck_assert_int_gt(row_int(&t, expiry, "p", 2), before[2]);

    /* A drain of A, not committed yet: the registration row is locked too. */
    PGconn *op2 = hx_pg_connect(t.dsn);
    hx_pg_exec(op2, "BEGIN");
    hx_pg_exec(op2, "SELECT sidecar.drain_instance('p', 'A')");
    t0 = hx_now_ms();
    ck_assert_msg(sc_lease_tick(&a, &sa, h, 3, 3, 2, NULL, true, &tick) == 0, "tick: %s",
                  a.last_error);
    took = hx_now_ms() - t0;
    ck_assert_msg(took < 4000, "the tick waited %lld ms for the locked rows", (long long)took);
    ck_assert(tick.registered && tick.self_busy);
    ck_assert_int_eq(tick.busy, 1);
    sc_lease_tick_clear(&tick);
    ck_assert(h[0].state == SC_LEASE_RENEWED && h[1].state == SC_LEASE_BUSY &&
              h[2].state == SC_LEASE_RENEWED);

    /* The locks go: everything is renewed again. */
    hx_pg_exec(op, "ROLLBACK");
    hx_pg_exec(op2, "ROLLBACK");
    ck_assert_int_eq(sc_lease_tick(&a, &sa, h, 3, 3, 2, NULL, true, &tick), 0);
    ck_assert(tick.registered && !tick.self_busy);
    ck_assert_int_eq(tick.busy, 0);
    sc_lease_tick_clear(&tick);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(h[i].state, SC_LEASE_RENEWED);
    ck_assert_int_gt(row_int(&t, expiry, "p", 1), before[1]);
    PQfinish(op);
    PQfinish(op2);
    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

/* ---- operator control --------------------------------------------------------------------------
 */

/* Runs sql; returns its SQLSTATE ("" on success; the message in msg). */
static const char *sql_state(const struct t *t, const char *sql, char *msg, size_t size)
{
    static char state[8];
    PGresult *res = PQexec(t->conn, sql);
    state[0] = '\0';
    msg[0] = '\0';
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        snprintf(state, sizeof(state), "%s", PQresultErrorField(res, PG_DIAG_SQLSTATE));
        snprintf(msg, size, "%s", PQresultErrorMessage(res));
    }
    PQclear(res);
    return state;
}

START_TEST(operator_functions_check_and_announce)
{
    struct t t;
    struct sc_db a, b;
    char msg[512];

    t_start(&t, "operator");
    db_open(&t, &a);
    db_open(&t, &b);
    /* Nothing known about the pipeline yet. */
    ck_assert_str_eq(
        sql_state(&t, "SELECT sidecar.pin_partition('p', 'orders', 0, 'A')", msg, sizeof(msg)),
        "42704");
    ck_assert_msg(strstr(msg, "unknown pipeline"), "%s", msg);

    ck_assert(register_as(&a, "p", "A", LONG_MS));
    ck_assert(register_as(&b, "p", "B", LONG_MS));
    struct sc_lease_self sa = self_of("p", "A", LONG_MS);
    struct sc_lease_tick tick;
    ck_assert_int_eq(sc_lease_tick(&a, &sa, NULL, 0, 4, 2, "{\"orders\": 4}", false, &tick), 0);
    sc_lease_tick_clear(&tick);

    /* Unknown instance, topic, partition: refused with what is known. */
    ck_assert_str_eq(
        sql_state(&t, "SELECT sidecar.pin_partition('p', 'orders', 0, 'Z')", msg, sizeof(msg)),
        "42704");
    ck_assert_msg(strstr(msg, "no instance \"Z\""), "%s", msg);
    ck_assert_str_eq(
        sql_state(&t, "SELECT sidecar.pin_partition('p', 'orders', 4, 'A')", msg, sizeof(msg)),
        "42704");
    ck_assert_msg(strstr(msg, "has 4 partitions"), "%s", msg);
    ck_assert_str_eq(
        sql_state(&t, "SELECT sidecar.pin_partition('p', 'refunds', 0, 'A')", msg, sizeof(msg)),
        "42704");
    ck_assert_msg(strstr(msg, "does not consume topic"), "%s", msg);

    /* Pin, move (to a live instance only), unpin, drain, undrain: each an event. */
    ck_assert_str_eq(
        sql_state(&t, "SELECT sidecar.pin_partition('p', 'orders', 2, 'B')", msg, sizeof(msg)), "");
    ck_assert_int_eq(row_int(&t,
                             "SELECT count(*) FROM sidecar.leases WHERE pipeline = $1 AND"
                             " topic = $2 AND partition = $3 AND pinned_to = 'B'",
                             "p", 2),
                     1);
    ck_assert_str_eq(
        sql_state(&t, "SELECT sidecar.move_partition('p', 'orders', 2, 'A')", msg, sizeof(msg)),
        "55000");
    ck_assert_msg(strstr(msg, "pinned to \"B\""), "%s", msg);
    ck_assert_str_eq(
        sql_state(&t, "SELECT sidecar.unpin_partition('p', 'orders', 2)", msg, sizeof(msg)), "");
    ck_assert_str_eq(
        sql_state(&t, "SELECT sidecar.move_partition('p', 'orders', 2, 'A')", msg, sizeof(msg)),
        "");
    ck_assert_int_eq(row_int(&t,
                             "SELECT count(*) FROM sidecar.leases WHERE pipeline = $1 AND"
                             " topic = $2 AND partition = $3 AND handoff_to = 'A'"
                             " AND handoff_reason = 'move'",
                             "p", 2),
                     1);
    ck_assert_str_eq(sql_state(&t, "SELECT sidecar.drain_instance('p', 'B')", msg, sizeof(msg)),
                     "");
    ck_assert_str_eq(
        sql_state(&t, "SELECT sidecar.move_partition('p', 'orders', 1, 'B')", msg, sizeof(msg)),
        "55000");
    ck_assert_msg(strstr(msg, "is draining"), "%s", msg); /* no lease row for partition 1 yet */
    ck_assert_str_eq(sql_state(&t, "SELECT sidecar.undrain_instance('p', 'B')", msg, sizeof(msg)),
                     "");
    ck_assert_int_eq(events_of(&t, "p", "pin"), 1);
    ck_assert_int_eq(events_of(&t, "p", "unpin"), 1);
    ck_assert_int_eq(events_of(&t, "p", "move"), 1);
    ck_assert_int_eq(events_of(&t, "p", "drain"), 1);
    ck_assert_int_eq(events_of(&t, "p", "undrain"), 1);

    /* A pipeline whose live instances use Kafka's group coordinator: refused. */
    struct sc_lease_self g = {"g", "G", 9, "kafka-group", LONG_MS};
    struct sc_lease_holder h;
    bool reg, dr;
    ck_assert_int_eq(sc_lease_register(&a, &g, "host", 1, &reg, &dr, &h), 0);
    ck_assert_str_eq(sql_state(&t, "SELECT sidecar.drain_instance('g', 'G')", msg, sizeof(msg)),
                     "0A000");
    ck_assert_msg(strstr(msg, "kafka-group"), "%s", msg);
    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

static void collect_notice(void *arg, const char *message)
{
    size_t len = strlen(arg);
    snprintf((char *)arg + len, 1024 - len, "%s", message);
}

/* Draining the last instance that could consume says so (a WARNING); the others do not. */
START_TEST(draining_the_last_instance_warns)
{
    struct t t;
    struct sc_db a, b;
    char notices[1024] = "";

    t_start(&t, "drainlast");
    db_open(&t, &a);
    db_open(&t, &b);
    ck_assert(register_as(&a, "p", "A", LONG_MS));
    ck_assert(register_as(&b, "p", "B", LONG_MS));
    struct sc_lease_self sa = self_of("p", "A", LONG_MS), sb = self_of("p", "B", LONG_MS);
    struct sc_lease_tick tick;
    ck_assert_int_eq(sc_lease_tick(&a, &sa, NULL, 0, 4, 2, "{\"orders\": 4}", false, &tick), 0);
    sc_lease_tick_clear(&tick);
    ck_assert_int_eq(sc_lease_tick(&b, &sb, NULL, 0, 4, 2, "{\"orders\": 4}", false, &tick), 0);
    sc_lease_tick_clear(&tick);
    PQsetNoticeProcessor(t.conn, collect_notice, notices);
    hx_pg_exec(t.conn, "SELECT sidecar.drain_instance('p', 'B')");
    ck_assert_msg(notices[0] == '\0', "%s", notices);
    hx_pg_exec(t.conn, "SELECT sidecar.drain_instance('p', 'A')");
    ck_assert_msg(strstr(notices, "WARNING") && strstr(notices, "stops consuming"), "%s", notices);
    notices[0] = '\0';
    hx_pg_exec(t.conn, "SELECT sidecar.undrain_instance('p', 'B')");
    ck_assert_msg(notices[0] == '\0', "%s", notices);
    sc_db_close(&a);
    sc_db_close(&b);
    t_stop(&t);
}
END_TEST

static Suite *lease_suite(void)
{
    Suite *s = suite_create("lease");
    TCase *tc = tcase_create("lease");

    tcase_add_unchecked_fixture(tc, pg_setup, pg_teardown);
    tcase_add_test(tc, epoch_rises_across_release_and_reacquire);
    tcase_add_test(tc, epoch_rises_after_lease_row_deleted);
    tcase_add_test(tc, epoch_rises_across_operator_reset);
    tcase_add_test(tc, expired_lease_taken_by_other_owner);
    tcase_add_test(tc, live_lease_of_other_owner_is_not_taken);
    tcase_add_test(tc, same_owner_reacquires_its_live_lease);
    tcase_add_test(tc, concurrent_acquirers_get_one_winner);
    tcase_add_test(tc, lease_events_match_changes);
    tcase_add_test(tc, epoch_never_repeats_when_both_rows_are_deleted);
    tcase_add_test(tc, lapsed_lease_is_not_renewed);
    tcase_add_test(tc, locked_rows_delay_only_their_partition);
    tcase_add_test(tc, registry_refuses_a_second_live_process);
    tcase_add_test(tc, handoff_request_release_and_reservation);
    tcase_add_test(tc, operator_functions_check_and_announce);
    tcase_add_test(tc, lease_updaters_never_deadlock);
    tcase_add_test(tc, tick_skips_locked_rows);
    tcase_add_test(tc, stale_handoff_decisions_keep_the_newer_request);
    tcase_add_test(tc, draining_the_last_instance_warns);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(lease_suite());

    sc_log_setup(SC_LOG_WARN, SC_LOG_FORMAT_TEXT); /* not every migration's progress */
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
