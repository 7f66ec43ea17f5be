/*
 * check_pg_faults.c - PostgreSQL refusing work without going down.
 *
 * statement_timeout: the database cancels every statement that runs longer
 * than 300 ms, and the test holds a lock on the sink table, so the postgres
 * sink's writes are cancelled (SQLSTATE 57014) again and again.  That is a
 * transient condition, not a bad batch: the partitions must back off and
 * retry, never enter the error state, and finish once the lock goes.
 *
 * Connection limit: the server has few slots (max_connections = 25); the
 * test takes every one of them, connecting until the server refuses and
 * terminating the sidecar's sessions until all slots are its own, so every
 * reconnect is refused ("too many clients", 53300).  The sidecar keeps
 * running and trying; when the slots come back it finishes the backlog by
 * itself.
 *
 * Every record lands exactly once throughout (the table's key would refuse
 * a duplicate, and the count of distinct offsets must equal the total).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scx.h"

#define NPARTS   2
#define MAX_CONN 25 /* the server's max_connections: few, so the test fills them quickly */

static double metric(int port, const char *name)
{
    return scx_metric_at(port, name, "");
}

/* Sessions of the sidecar (its application_name is kafka-sidecar/...). */
static long long sidecar_sessions(PGconn *c)
{
    return hx_pg_int(c,
                     "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                     "'kafka-sidecar/%'",
                     0, NULL);
}

/* Connection slots in use by clients. */
static long long client_backends(PGconn *c)
{
    return hx_pg_int(
        c, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'", 0, NULL);
}

/* Connection attempts the server refused so far ("too many clients", in its log). */
static long refusals(const struct scx_env *e)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/pg.log", e->pg.dir);
    char *text = hx_read_file(path, NULL);
    long n = 0;
    for (const char *p = text; p && (p = strstr(p, "too many clients")) != NULL; p++)
        n++;
    free(text);
    return n;
}

static long long rows(PGconn *c)
{
    return hx_pg_int(c, "SELECT count(DISTINCT (partition, \"offset\")) FROM public.t", 0, NULL);
}

START_TEST(test_statement_timeout_and_connection_limit)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    char settings[64];
    snprintf(settings, sizeof(settings), "-c max_connections=%d", MAX_CONN);
    scx_env_start_pg(&e, 1, topics, 1, settings);
    hx_pg_exec(e.conn, "ALTER DATABASE sidecar_test SET statement_timeout = '300ms'");
    int port = scx_free_port();
    struct scx_opts o = {
        .admin_port = port,
        .sink = "{\"type\": \"postgres\", \"table\": \"public.t\", \"create_table\": true}",
        .ttl_ms = 6000,
        .renew_ms = 2000,
    };
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 0, 500);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, 500, 60000), "log:\n%s",
                  scx_log_tail(log, 3000));

    /* 1. The sink table is locked: writes are cancelled by statement_timeout. */
    PGconn *locker = hx_pg_connect(e.dsn);
    hx_pg_exec(locker, "SET statement_timeout = 0"); /* the lock must not time out itself */
    hx_pg_exec(locker, "BEGIN");
    hx_pg_exec(locker, "LOCK TABLE public.t IN ACCESS EXCLUSIVE MODE");
    double errors0 = metric(port, "sidecar_sink_errors_total");
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 500, 500);
    int64_t end = hx_now_ms() + 60000;
    while (metric(port, "sidecar_sink_errors_total") < errors0 + 3 && hx_now_ms() < end)
        usleep(100000);
    ck_assert_msg(metric(port, "sidecar_sink_errors_total") >= errors0 + 3,
                  "no cancelled writes; log:\n%s", scx_log_tail(log, 3000));
    char *text = hx_read_file(log, NULL);
    ck_assert_msg(strstr(text, "statement timeout") != NULL, "log:\n%s", scx_log_tail(log, 3000));
    free(text);
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.checkpoints WHERE state <> 'ok'", 0, NULL),
        0);
    ck_assert(hx_pid_alive(pid));
    hx_pg_exec(locker, "COMMIT");
    PQfinish(locker);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, 1000, 90000),
                  "no progress after the lock was released; log:\n%s", scx_log_tail(log, 3000));
    ck_assert_int_eq(rows(e.conn), NPARTS * 1000);

    /* 2. Every connection slot taken; the sidecar's sessions terminated.  The server has
     * MAX_CONN slots: fill them until the server refuses, cut the sidecar off, and fill
     * the slots its sessions leave until every slot is the test's.  No deadline: the loop
     * ends on the server's word, however slow the machine. */
    hx_pg_exec(e.conn, "ALTER DATABASE sidecar_test RESET statement_timeout");
    PGconn *hog[MAX_CONN];
    int nhog = 0, terminations = 0;
    for (;;) {
        PGconn *c = PQconnectdb(e.dsn);
        if (PQstatus(c) == CONNECTION_OK) {
            ck_assert_msg(nhog < MAX_CONN, "more than max_connections (%d) connections", MAX_CONN);
            hog[nhog++] = c;
            continue;
        }
        PQfinish(c);
        ck_assert_msg(nhog > 0, "no connection at all");
        if (sidecar_sessions(hog[0]) == 0 && client_backends(hog[0]) == MAX_CONN)
            break; /* full, and none of it is the sidecar's (a dying backend is still counted) */
        hx_pg_exec(hog[0], "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                           "application_name LIKE 'kafka-sidecar/%'");
        terminations++;
        usleep(10000);
    }
    ck_assert_int_gt(terminations, 0);
    fprintf(stderr,
            "connection limit: %d slots taken, the sidecar's sessions terminated %d times\n", nhog,
            terminations);
    long refused0 = refusals(&e);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 1000, 500);
    /* The sidecar keeps trying: wait for the server to have refused it a few times. */
    int64_t end2 = hx_now_ms() + 60000;
    while (refusals(&e) < refused0 + 3 && hx_now_ms() < end2)
        usleep(100000);
    ck_assert_msg(refusals(&e) >= refused0 + 3, "the sidecar did not try to reconnect; log:\n%s",
                  scx_log_tail(log, 3000));
    ck_assert(hx_pid_alive(pid));
    long long during = hx_pg_int(hog[0],
                                 "SELECT coalesce(sum(committed_offset), 0) FROM "
                                 "sidecar.checkpoints WHERE pipeline = 'p1'",
                                 0, NULL);
    ck_assert_msg(during == NPARTS * 1000, "delivered without a connection? (%lld)", during);
    text = hx_read_file(log, NULL);
    ck_assert_msg(strstr(text, "too many clients") != NULL || strstr(text, "sorry") != NULL ||
                      strstr(text, "terminating connection") != NULL,
                  "lost connections not logged; log:\n%s", scx_log_tail(log, 3000));
    free(text);
    for (int i = 0; i < nhog; i++)
        PQfinish(hog[i]);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, 1500, 90000),
                  "no progress after the slots came back; log:\n%s", scx_log_tail(log, 3000));
    ck_assert_int_eq(rows(e.conn), NPARTS * 1500);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM public.t", 0, NULL), NPARTS * 1500);
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.checkpoints WHERE state <> 'ok'", 0, NULL),
        0);
    scx_stop(pid, 20000);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pg_faults");
    TCase *tc = tcase_create("pg_faults");
    tcase_set_timeout(tc, 400);
    tcase_add_test(tc, test_statement_timeout_and_connection_limit);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
