/*
 * check_checkpoint_errors.c - a checkpoint statement that PostgreSQL
 * refuses for good is never retried forever: the partition stops in the
 * error state at once, with a message naming the statement, the SQLSTATE
 * and what to do, while the other partitions of the same worker keep
 * flowing; fixing the cause and running the SQL from the message resumes
 * it, and every record arrives exactly once.
 *
 * One case per class of permanent refusal, each made by an operator's
 * change to the schema while the sidecar runs with a single worker (so
 * every partition shares it) and partition 1 is refused past offset 100:
 *
 *   - integrity: a CHECK constraint on checkpoints (23514), with the file
 *     sink (the commit) and with the postgres sink (the advance inside
 *     the sink's transaction);
 *   - a trigger raising (P0001) on checkpoints, which also refuses the
 *     error state itself: the partition stops all the same (metric,
 *     /readyz) and the error state is recorded once the trigger is gone;
 *   - undefined object: a column of dead_letters dropped (42703), so the
 *     dead-letter insert of an HTTP record the receiver rejects fails;
 *   - privilege: INSERT on dead_letters revoked from the sidecar's role
 *     (42501).
 *
 * And the other side: a refusal that passes (a lock timeout, 55P03) is
 * retried with backoff by that partition alone, never the error state.
 */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "receiver.h"
#include "scx.h"

#define NPARTS 6
#define COUNT  300 /* records per partition */
#define LIMIT  100 /* partition 1 is refused past this offset */

enum sink_kind {
    SINK_FILE,
    SINK_HTTP,
    SINK_POSTGRES,
};

struct err_case {
    const char *name;
    enum sink_kind sink;
    const char *break_sql; /* the operator's change, before the sidecar starts */
    const char *fix_sql;   /* undoes it, once partition 1 is stopped */
    const char *sqlstate;
    const char *condition; /* its name in the message */
    const char *stmt;      /* the statement the message names (a prefix) */
    bool unrecorded;       /* the cause refuses recording the error state too */
    bool app_role;         /* the sidecar connects as a role without superuser rights */
};

static const struct err_case cases[] = {
    {"CHECK constraint on checkpoints, file sink", SINK_FILE,
     "ALTER TABLE sidecar.checkpoints ADD CONSTRAINT op_limit"
     " CHECK (partition <> 1 OR committed_offset <= 100) NOT VALID",
     "ALTER TABLE sidecar.checkpoints DROP CONSTRAINT op_limit", "23514", "check_violation",
     "sc_cp_commit", false, false},
    {"CHECK constraint on checkpoints, postgres sink", SINK_POSTGRES,
     "ALTER TABLE sidecar.checkpoints ADD CONSTRAINT op_limit"
     " CHECK (partition <> 1 OR committed_offset <= 100) NOT VALID",
     "ALTER TABLE sidecar.checkpoints DROP CONSTRAINT op_limit", "23514", "check_violation",
     "sc_cp_advance", false, false},
    {"trigger raising on checkpoints", SINK_FILE,
     "CREATE FUNCTION public.op_freeze() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
     " IF NEW.partition = 1 AND (NEW.committed_offset > 100 OR NEW.state = 'error') THEN"
     "  RAISE EXCEPTION 'partition 1 is frozen by the operator';"
     " END IF; RETURN NEW; END $$;"
     " CREATE TRIGGER op_freeze BEFORE UPDATE ON sidecar.checkpoints"
     " FOR EACH ROW EXECUTE FUNCTION public.op_freeze()",
     "DROP TRIGGER op_freeze ON sidecar.checkpoints", "P0001", "raise_exception", "sc_cp_commit",
     true, false},
    {"column of dead_letters dropped", SINK_HTTP,
     "ALTER TABLE sidecar.dead_letters DROP COLUMN response_excerpt",
     "ALTER TABLE sidecar.dead_letters ADD COLUMN response_excerpt text", "42703",
     "undefined_column", "sc_cp_dead", false, false},
    {"INSERT on dead_letters revoked", SINK_HTTP, "REVOKE INSERT ON sidecar.dead_letters FROM app",
     "GRANT INSERT ON sidecar.dead_letters TO app", "42501", "insufficient_privilege", "sc_cp_dead",
     false, true},
};

/* The record of partition 1 that the HTTP receiver rejects (it becomes a dead letter). */
#define POISON_MARKER "\"partition\":1,\"seq\":150,"
#define POISON_OFFSET 150

static bool is_poison(int32_t partition, int64_t offset, void *arg)
{
    (void)arg;
    return partition == 1 && offset == POISON_OFFSET;
}

static long long q_int(PGconn *c, const char *sql, int partition)
{
    char p[16];
    snprintf(p, sizeof(p), "%d", partition);
    const char *params[] = {p};
    return hx_pg_int(c, sql, 1, params);
}

static bool wait_state(PGconn *c, int partition, const char *state, int timeout_ms)
{
    char p[16];
    snprintf(p, sizeof(p), "%d", partition);
    const char *params[] = {p, state};
    int64_t end = hx_now_ms() + timeout_ms;
    do {
        if (hx_pg_int(c,
                      "SELECT count(*) FROM sidecar.checkpoints WHERE pipeline = 'p1' AND "
                      "partition = $1::int AND state = $2",
                      2, params) == 1)
            return true;
        usleep(100000);
    } while (hx_now_ms() < end);
    return false;
}

static bool wait_metric(int port, const char *name, const char *labels, double want, int timeout_ms)
{
    int64_t end = hx_now_ms() + timeout_ms;
    do {
        if (scx_metric_at(port, name, labels) == want)
            return true;
        usleep(100000);
    } while (hx_now_ms() < end);
    return false;
}

/* Committed offsets of every partition but 1 reach COUNT. */
static bool wait_others(PGconn *c, int timeout_ms)
{
    int64_t end = hx_now_ms() + timeout_ms;
    do {
        if (hx_pg_int(c,
                      "SELECT count(*) FROM sidecar.checkpoints WHERE pipeline = 'p1' AND "
                      "partition <> 1 AND committed_offset = 300 AND pending_first_offset IS NULL",
                      0, NULL) == NPARTS - 1)
            return true;
        usleep(100000);
    } while (hx_now_ms() < end);
    return false;
}

/* The sidecar connects as "app": everything in the schema granted, no superuser. */
static void create_app_role(PGconn *c)
{
    hx_pg_exec(c, "CREATE ROLE app LOGIN");
    hx_pg_exec(c, "GRANT USAGE ON SCHEMA sidecar TO app");
    hx_pg_exec(c, "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA sidecar TO app");
    hx_pg_exec(c, "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA sidecar TO app");
    hx_pg_exec(c, "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA sidecar TO app");
}

START_TEST(test_permanent_refusal_stops_only_its_partition)
{
    const struct err_case *c = &cases[_i];
    fprintf(stderr, "---- case %d: %s\n", _i, c->name);
    struct scx_env e;
    const char *topics[] = {"orders:6"};
    scx_env_start(&e, 1, topics, 1);
    struct rx *rx = NULL;
    char sink[512];
    const char *sink_json = NULL;
    if (c->sink == SINK_HTTP) {
        rx = rx_start();
        rx_set_faults(rx, &(struct rx_faults){.reject_marker = POISON_MARKER});
        snprintf(sink, sizeof(sink), "{\"type\":\"http\",\"url\":\"%s\"}", rx_url(rx));
        sink_json = sink;
    } else if (c->sink == SINK_POSTGRES) {
        sink_json = "{\"type\": \"postgres\", \"table\": \"public.t\", \"create_table\": true}";
    }
    int port = scx_free_port();
    struct scx_opts o = {.workers = 1, .max_records = 50, .admin_port = port, .sink = sink_json};
    char cfg[700];
    snprintf(cfg, sizeof(cfg), "%s", scx_config(&e, "sc-1", &o));
    scx_migrate(cfg);
    if (c->app_role) {
        create_app_role(e.conn);
        struct scx_env as_app = e;
        char *u = strstr(as_app.dsn, "user=postgres");
        ck_assert_ptr_nonnull(u);
        memcpy(u, "user=app     ", 13); /* same length: spaces separate DSN keywords */
        snprintf(cfg, sizeof(cfg), "%s", scx_config(&as_app, "sc-1", &o));
    }
    hx_pg_exec(e.conn, c->break_sql);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 0, COUNT);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);

    /* Partition 1 stops at once; the others, served by the same worker, deliver on. */
    if (c->unrecorded) {
        ck_assert_msg(wait_metric(port, "sidecar_partition_errors", "partition=\"1\"", 1, 60000),
                      "partition 1 not stopped; log:\n%s", scx_log_tail(log, 4000));
        long status;
        char *body = scx_http_get(port, "/readyz", NULL, &status);
        ck_assert_int_eq(status, 503);
        free(body);
        char *text = hx_read_file(log, NULL);
        ck_assert_msg(strstr(text, "could not record the error state"), "log:\n%s",
                      scx_log_tail(log, 4000));
        free(text);
        ck_assert_int_eq(q_int(e.conn,
                               "SELECT count(*) FROM sidecar.checkpoints WHERE partition = $1::int"
                               " AND state = 'ok'",
                               1),
                         1);
    } else {
        ck_assert_msg(wait_state(e.conn, 1, "error", 60000), "partition 1 not in error; log:\n%s",
                      scx_log_tail(log, 4000));
    }
    ck_assert_msg(wait_others(e.conn, 60000),
                  "the other partitions of the worker did not finish; log:\n%s",
                  scx_log_tail(log, 4000));
    ck_assert_int_le(
        q_int(e.conn, "SELECT committed_offset FROM sidecar.checkpoints WHERE partition = $1::int",
              1),
        c->sink == SINK_HTTP ? POISON_OFFSET : LIMIT);

    if (c->unrecorded) {
        /* Once the cause is gone, the error state is recorded (the poll tries again). */
        hx_pg_exec(e.conn, c->fix_sql);
        ck_assert_msg(wait_state(e.conn, 1, "error", 60000),
                      "error state not recorded after the fix; log:\n%s", scx_log_tail(log, 4000));
    }
    /* The message: statement, SQLSTATE, condition, what to do, and the SQL that clears it. */
    char *msg = hx_pg_value(
        e.conn, "SELECT error FROM sidecar.checkpoints WHERE pipeline = 'p1' AND partition = 1", 0,
        NULL);
    ck_assert_ptr_nonnull(msg);
    fprintf(stderr, "error: %s\n", msg);
    char want[64];
    snprintf(want, sizeof(want), "SQLSTATE %s (%s)", c->sqlstate, c->condition);
    ck_assert_msg(strstr(msg, want), "no \"%s\" in: %s", want, msg);
    snprintf(want, sizeof(want), "statement %s", c->stmt);
    ck_assert_msg(strstr(msg, want), "no \"%s\" in: %s", want, msg);
    ck_assert_msg(strstr(msg, "failed permanently") && strstr(msg, "Retrying cannot help"), "%s",
                  msg);
    /* Refused once, not retried: one error event, no checkpoint retry counted. */
    ck_assert_int_eq(q_int(e.conn,
                           "SELECT count(*) FROM sidecar.events WHERE kind = 'error' AND "
                           "partition = $1::int",
                           1),
                     1);
    ck_assert_int_eq((long long)scx_metric_at(port, "sidecar_checkpoint_retries_total", ""), 0);

    /* The operator fixes the cause and runs the SQL the message gives. */
    if (!c->unrecorded)
        hx_pg_exec(e.conn, c->fix_sql);
    char *sql = strstr(msg, "UPDATE ");
    ck_assert_ptr_nonnull(sql);
    char *end = strstr(sql, " (docs/");
    ck_assert_ptr_nonnull(end);
    *end = '\0';
    hx_pg_exec(e.conn, sql);
    free(msg);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, COUNT, 60000),
                  "partition 1 did not resume; log:\n%s", scx_log_tail(log, 4000));
    ck_assert(wait_metric(port, "sidecar_partition_errors", "partition=\"1\"", 0, 30000));
    scx_stop(pid, 20000);

    switch (c->sink) {
    case SINK_FILE:
        scx_verify_files(&e, "p1", "orders", NPARTS, COUNT);
        break;
    case SINK_POSTGRES:
        ck_assert_int_eq(hx_pg_int(e.conn,
                                   "SELECT count(DISTINCT (partition, \"offset\")) FROM public.t",
                                   0, NULL),
                         NPARTS * COUNT);
        ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM public.t", 0, NULL),
                         NPARTS * COUNT);
        break;
    case SINK_HTTP: {
        struct rx_verify_opts v = {.pipeline = "p1",
                                   .topic = "orders",
                                   .nparts = NPARTS,
                                   .count = COUNT,
                                   .skip = is_poison,
                                   .seq_values = true};
        ck_assert_int_eq(rx_verify(rx, &v), NPARTS * COUNT - 1);
        ck_assert_int_eq(hx_pg_int(e.conn,
                                   "SELECT count(*) FROM sidecar.dead_letters WHERE partition = 1"
                                   " AND \"offset\" = 150",
                                   0, NULL),
                         1);
        break;
    }
    }
    rx_stop(rx);
    scx_env_stop(&e);
}
END_TEST

/*
 * A passing refusal: partition 1's checkpoint row is locked by an open
 * transaction and the sidecar's sessions have lock_timeout = 200ms, so its
 * checkpoint writes fail with 55P03 again and again.  That partition alone
 * retries with backoff (counted, logged, never the error state); the other
 * partitions of the same worker deliver what is produced meanwhile; once
 * the lock goes, partition 1 catches up, exactly once.
 */
START_TEST(test_transient_refusal_retries_only_its_partition)
{
    struct scx_env e;
    const char *topics[] = {"orders:6"};
    scx_env_start(&e, 1, topics, 1);
    hx_pg_exec(e.conn, "ALTER DATABASE sidecar_test SET lock_timeout = '200ms'");
    int port = scx_free_port();
    struct scx_opts o = {.workers = 1, .max_records = 50, .admin_port = port};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 0, COUNT);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, COUNT, 60000), "log:\n%s",
                  scx_log_tail(log, 3000));

    PGconn *locker = hx_pg_connect(e.dsn);
    hx_pg_exec(locker, "SET lock_timeout = 0");
    hx_pg_exec(locker, "BEGIN");
    hx_pg_exec(locker, "SELECT * FROM sidecar.checkpoints WHERE partition = 1 FOR UPDATE");
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, COUNT, COUNT);
    /* The others finish while partition 1 is refused, retried and counted. */
    int64_t end = hx_now_ms() + 60000;
    while (hx_now_ms() < end &&
           !(hx_pg_int(e.conn,
                       "SELECT count(*) FROM sidecar.checkpoints WHERE partition <> 1 AND "
                       "committed_offset = 600 AND pending_first_offset IS NULL",
                       0, NULL) == NPARTS - 1 &&
             scx_metric_at(port, "sidecar_checkpoint_retries_total", "partition=\"1\"") >= 3))
        usleep(100000);
    double retries = scx_metric_at(port, "sidecar_checkpoint_retries_total", "partition=\"1\"");
    ck_assert_msg(retries >= 3, "partition 1 retried %.0f times; log:\n%s", retries,
                  scx_log_tail(log, 3000));
    ck_assert_msg(hx_pg_int(e.conn,
                            "SELECT count(*) FROM sidecar.checkpoints WHERE partition <> 1 AND "
                            "committed_offset = 600",
                            0, NULL) == NPARTS - 1,
                  "the other partitions of the worker waited for partition 1; log:\n%s",
                  scx_log_tail(log, 3000));
    ck_assert_int_eq(
        q_int(e.conn, "SELECT committed_offset FROM sidecar.checkpoints WHERE partition = $1::int",
              1),
        COUNT);
    char *text = hx_read_file(log, NULL);
    ck_assert_msg(strstr(text, "refused for now") && strstr(text, "SQLSTATE 55P03"), "log:\n%s",
                  scx_log_tail(log, 3000));
    free(text);
    fprintf(stderr, "lock on partition 1: %.0f checkpoint retries while the others finished\n",
            retries);

    hx_pg_exec(locker, "COMMIT");
    PQfinish(locker);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, 2 * COUNT, 60000),
                  "partition 1 did not catch up; log:\n%s", scx_log_tail(log, 3000));
    scx_stop(pid, 20000);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.events WHERE kind = 'error' OR "
                               "kind = 'fenced'",
                               0, NULL),
                     0);
    scx_verify_files(&e, "p1", "orders", NPARTS, 2 * COUNT);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("checkpoint_errors");
    TCase *tc = tcase_create("permanent refusals");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_permanent_refusal_stops_only_its_partition, 0,
                        (int)(sizeof(cases) / sizeof(cases[0])));
    tcase_add_test(tc, test_transient_refusal_retries_only_its_partition);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
