/*
 * check_playground.c - tests/playground.sh, the documented way to try the
 * sidecar, as a newcomer uses it: start it, wait for its ready line, run
 * the real sidecar with the configs it printed (file sink, then postgres
 * sink) against the DSN and bootstrap address it printed, then Ctrl-C
 * (SIGINT) and check that PostgreSQL, the mock cluster and the work
 * directory are all gone.
 */
#include <check.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "scx.h"

/* The value of "NAME: value" in text (into buf), or NULL. */
static const char *field(const char *text, const char *name, char *buf, size_t size)
{
    char key[64];
    snprintf(key, sizeof(key), "\n%s: ", name);
    const char *at = strstr(text, key);
    if (!at)
        return NULL;
    at += strlen(key);
    snprintf(buf, size, "%.*s", (int)strcspn(at, "\n"), at);
    return buf;
}

START_TEST(test_playground_start_use_stop)
{
    const char *dir = hx_tmpdir();
    char log[700], script[700], bindir_env[700], bin[600];
    snprintf(log, sizeof(log), "%s/playground.log", dir);
    snprintf(script, sizeof(script), "%s/tests/playground.sh", HX_SOURCE_DIR);
    snprintf(bin, sizeof(bin), "%s", hx_sidecar_bin());
    snprintf(bindir_env, sizeof(bindir_env), "SIDECAR_BIN_DIR=%s", dirname(bin));
    const char *argv[] = {"bash", script, "--topic", "orders:2", NULL};
    const char *env[] = {bindir_env, NULL};
    pid_t pg_play = hx_spawn(argv, env, log);

    char *text = NULL;
    int64_t end = hx_now_ms() + 120000;
    while (hx_now_ms() < end && hx_pid_alive(pg_play)) {
        free(text);
        text = hx_read_file(log, NULL);
        if (text && strstr(text, "\nplayground ready"))
            break;
        usleep(100000);
    }
    ck_assert_msg(text && strstr(text, "\nplayground ready"), "no ready line:\n%s",
                  text ? text : "");
    char dsn[512], bootstrap[512], file_cfg[600], pg_cfg[600], data[600], pids[64];
    ck_assert(field(text, "DSN", dsn, sizeof(dsn)));
    ck_assert(field(text, "BOOTSTRAP", bootstrap, sizeof(bootstrap)));
    ck_assert(field(text, "CONFIG file", file_cfg, sizeof(file_cfg)));
    ck_assert(field(text, "CONFIG postgres", pg_cfg, sizeof(pg_cfg)));
    ck_assert(field(text, "DATA", data, sizeof(data)));
    ck_assert(field(text, "PIDS", pids, sizeof(pids)));
    pid_t pg_pid = 0, mock_pid = 0;
    ck_assert_int_eq(sscanf(pids, "%d %d", &pg_pid, &mock_pid), 2);
    free(text);

    /* The printed addresses and configs work as they are: the file sink... */
    PGconn *conn = hx_pg_connect(dsn);
    hx_produce_seq(bootstrap, "orders", 2, 0, 100);
    char sclog[700];
    snprintf(sclog, sizeof(sclog), "%s/file.log", dir);
    const char *run1[] = {hx_sidecar_bin(), "run", "-c", file_cfg, NULL};
    pid_t sc = hx_spawn(run1, NULL, sclog);
    ck_assert_msg(scx_wait_committed(conn, "orders-to-files", "orders", 2, 100, 90000), "%s",
                  scx_log_tail(sclog, 3000));
    scx_stop(sc, 20000);
    char out0[700];
    snprintf(out0, sizeof(out0), "%s/out/orders/0.jsonl", data);
    size_t len = 0;
    char *lines = hx_read_file(out0, &len);
    ck_assert_msg(lines && len > 0, "no output in %s", out0);
    free(lines);

    /* ... and the postgres sink, rows in the playground's database. */
    snprintf(sclog, sizeof(sclog), "%s/postgres.log", dir);
    const char *run2[] = {hx_sidecar_bin(), "run", "-c", pg_cfg, NULL};
    sc = hx_spawn(run2, NULL, sclog);
    ck_assert_msg(scx_wait_committed(conn, "orders-to-table", "orders", 2, 100, 90000), "%s",
                  scx_log_tail(sclog, 3000));
    scx_stop(sc, 20000);
    ck_assert_int_eq(hx_pg_int(conn,
                               "SELECT count(DISTINCT (partition, \"offset\"))"
                               " FROM app.orders_events",
                               0, NULL),
                     200);
    PQfinish(conn);

    /* Ctrl-C: everything it started stops, and its directory goes. */
    ck_assert_int_eq(kill(pg_play, SIGINT), 0);
    int rc = hx_wait(pg_play, 60000);
    ck_assert_msg(rc == 0, "playground exit %d:\n%s", rc, scx_log_tail(log, 2000));
    ck_assert_msg(!hx_pid_alive(pg_pid), "PostgreSQL (pid %d) still runs", (int)pg_pid);
    ck_assert_msg(!hx_pid_alive(mock_pid), "kafka-mock (pid %d) still runs", (int)mock_pid);
    ck_assert_msg(access(data, F_OK) != 0, "%s is still there", data);
    PGconn *gone = PQconnectdb(dsn);
    ck_assert_int_ne(PQstatus(gone), CONNECTION_OK);
    PQfinish(gone);
    text = hx_read_file(log, NULL);
    ck_assert_msg(strstr(text, "\nstopped"), "%s", text);
    free(text);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("playground");
    TCase *tc = tcase_create("playground");
    tcase_set_timeout(tc, 400);
    tcase_add_test(tc, test_playground_start_use_stop);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
