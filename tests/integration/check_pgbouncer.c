/*
 * check_pgbouncer.c - the sidecar behind a real PgBouncer (Debian's).
 *
 * Transaction and statement pooling hand a client a different server
 * session per transaction (or statement), which breaks what the sidecar
 * keeps in its session (prepared statements,
 * idle_in_transaction_session_timeout, advisory locks, LISTEN): `migrate`
 * and `run` refuse such a connection at start with a message that says to
 * connect directly or through a session pool, and exit 1.
 *
 * Session pooling works: migrate, run, a kill -9 in the middle of the
 * backlog and a restart, every record exactly once.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scx.h"

#define NPARTS 4

/* A config whose DSN goes through the bouncer (e's own stays direct). */
static const char *config_via(const struct scx_env *e, const struct hx_pgbouncer *b,
                              const char *instance)
{
    struct scx_env via = *e;
    hx_pgbouncer_dsn(b, "sidecar_test", "postgres", via.dsn, sizeof(via.dsn));
    struct scx_opts o = {.max_records = 50};
    return scx_config(&via, instance, &o);
}

static const char *const refused_modes[] = {"transaction", "statement"};

START_TEST(test_transaction_pooling_is_refused)
{
    const char *mode = refused_modes[_i];
    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 1, topics, 1);
    struct hx_pgbouncer b;
    hx_pgbouncer_start(&b, &e.pg, mode);
    char cfg[700];
    snprintf(cfg, sizeof(cfg), "%s", config_via(&e, &b, "sc-1"));

    /* migrate refuses, and creates nothing */
    const char *argv[] = {hx_sidecar_bin(), "migrate", "-c", cfg, NULL};
    char *out = NULL;
    int rc = hx_run(argv, NULL, 60000, &out);
    ck_assert_msg(rc == 1, "migrate through %s pooling: exit %d:\n%s", mode, rc, out);
    ck_assert_msg(strstr(out, "does not keep a server session of its own") &&
                      strstr(out, "pool_mode = session") && strstr(out, "Connect directly"),
                  "%s", out);
    ck_assert_msg(!strstr(out, "password"), "%s", out);
    free(out);
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'sidecar'", 0, NULL),
        0);

    /* run refuses at start, before it takes any partition */
    struct scx_opts direct = {.max_records = 50};
    scx_migrate(scx_config(&e, "direct", &direct));
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 0, 100);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    rc = hx_wait(pid, 60000);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(rc == 1, "run through %s pooling: exit %d; log:\n%s", mode, rc,
                  scx_log_tail(log, 3000));
    char *text = hx_read_file(log, NULL);
    ck_assert_msg(strstr(text, "does not keep a server session of its own"), "%s", text);
    fprintf(stderr, "%s pooling: %s\n", mode, strstr(text, "the PostgreSQL connection"));
    free(text);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.leases", 0, NULL), 0);
    hx_pgbouncer_stop(&b);
    scx_env_stop(&e);
}
END_TEST

START_TEST(test_session_pooling_works)
{
    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 1, topics, 1);
    struct hx_pgbouncer b;
    hx_pgbouncer_start(&b, &e.pg, "session");
    char cfg[700];
    snprintf(cfg, sizeof(cfg), "%s", config_via(&e, &b, "sc-1"));
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 0, 1000);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    /* kill -9 in the middle of the backlog, then a restart through the same pool */
    int64_t end = hx_now_ms() + 60000;
    while (hx_now_ms() < end &&
           hx_pg_int(e.conn, "SELECT coalesce(sum(committed_offset), 0) FROM sidecar.checkpoints",
                     0, NULL) < 1000)
        usleep(20000);
    kill(pid, SIGKILL);
    hx_wait(pid, 10000);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 1000, 500);
    pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, 1500, 90000),
                  "not committed through the session pool; log:\n%s", scx_log_tail(log, 3000));
    scx_stop(pid, 20000);
    scx_verify_files(&e, "p1", "orders", NPARTS, 1500);
    char *text = hx_read_file(log, NULL);
    ck_assert_msg(!strstr(text, "server session"), "the pooling check complained:\n%s", text);
    free(text);
    hx_pgbouncer_stop(&b);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pgbouncer");
    TCase *tc = tcase_create("pgbouncer");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_transaction_pooling_is_refused, 0, 2);
    tcase_add_test(tc, test_session_pooling_works);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
