/*
 * check_observability.c - the Grafana dashboard and the Prometheus alerting
 * rules in docker/observability/ read metrics a running sidecar really
 * exports: every metric name they use (listed by check_observability.py
 * names) has a sample in the /metrics of a sidecar that has delivered
 * records.  On the way, sidecar_pending_age_seconds is watched live: it
 * grows while a batch is held pending (a failpoint sleeps after the pend)
 * and drops to 0 once everything is committed.
 *
 * A crash leaves a last log line: a sidecar that dies of SIGSEGV (a
 * failpoint raises it) logs the signal and a backtrace an operator can
 * resolve, dies of the signal (exit status 139, as before), and the restart
 * delivers every record once.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scx.h"

/* Whether the exposition has a sample of name (not only its HELP/TYPE lines). */
static bool has_sample(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *line = text; line && *line;) {
        if (strncmp(line, name, n) == 0 && (line[n] == '{' || line[n] == ' '))
            return true;
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return false;
}

static double age_sum;
static bool pending_age_at_least(int port, double min)
{
    age_sum = scx_metric_at(port, "sidecar_pending_age_seconds", "");
    return age_sum >= min;
}

START_TEST(test_dashboard_and_rules_use_exported_metrics)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    int port = scx_free_port();
    struct scx_opts o = {.admin_port = port};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 300);
    /* The first batch stays pending for 4 s: the age must show it. */
    pid_t pid = scx_start(&e, cfg, "sc-1", "after_pend=sleep:4000#1");

    int64_t deadline = hx_now_ms() + 60000;
    while (!pending_age_at_least(port, 1.0) && hx_now_ms() < deadline)
        usleep(50 * 1000);
    ck_assert_msg(age_sum >= 1.0, "sidecar_pending_age_seconds never reached 1 s (last sum %g)",
                  age_sum);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 2, 300, 60000));
    deadline = hx_now_ms() + 30000;
    while (scx_metric_at(port, "sidecar_pending_age_seconds", "") != 0 && hx_now_ms() < deadline)
        usleep(50 * 1000);
    ck_assert_msg(scx_metric_at(port, "sidecar_pending_age_seconds", "") == 0,
                  "a pending age is left after every batch was committed");

    /* The names the dashboard, the rules and their tests use. */
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "python3 %s/docker/observability/check_observability.py names",
             HX_SOURCE_DIR);
    FILE *f = popen(cmd, "r");
    ck_assert_msg(f, "cannot run %s", cmd);
    static char names[64][128];
    int nnames = 0;
    while (nnames < 64 && fgets(names[nnames], sizeof(names[nnames]), f)) {
        names[nnames][strcspn(names[nnames], "\n")] = '\0';
        if (names[nnames][0])
            nnames++;
    }
    int rc = pclose(f);
    ck_assert_msg(rc == 0, "%s failed (exit status %d)", cmd, rc);
    ck_assert_msg(nnames >= 10, "only %d metric names from %s", nnames, cmd);

    /* Every one has a sample; the lag appears with the first watermark sample (every 5 s). */
    char missing[2048];
    deadline = hx_now_ms() + 60000;
    for (;;) {
        long status;
        char *text = scx_http_get(port, "/metrics", NULL, &status);
        ck_assert_int_eq(status, 200);
        ck_assert(text);
        size_t mlen = 0;
        missing[0] = '\0';
        for (int i = 0; i < nnames; i++)
            if (!has_sample(text, names[i]) && mlen < sizeof(missing)) {
                int n = snprintf(missing + mlen, sizeof(missing) - mlen, " %s", names[i]);
                mlen += n > 0 ? (size_t)n : 0;
            }
        free(text);
        if (!missing[0] || hx_now_ms() > deadline)
            break;
        usleep(200 * 1000);
    }
    ck_assert_msg(!missing[0], "used by docker/observability but not exported:%s", missing);

    scx_stop(pid, 15000);
    scx_env_stop(&e);
}
END_TEST

START_TEST(test_crash_leaves_a_backtrace)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    const char *cfg = scx_config(&e, "sc-1", &(struct scx_opts){0});
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 200);
    pid_t pid = scx_start(&e, cfg, "sc-1", "after_lease=segv#1");
    int rc = hx_wait(pid, 60000);
    ck_assert_msg(rc == 128 + SIGSEGV, "expected death by SIGSEGV (status 139), got %d", rc);

    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    const char *tail = scx_log_tail(log, 4000);
    ck_assert_msg(scx_log_count(log, "fatal signal 11 (SIGSEGV) in thread") == 1,
                  "no crash record in the log:\n%s", tail);
    /* Frames as module+offset, our own binary among them (addr2line resolves those). */
    ck_assert_msg(strstr(tail, "Backtrace (addr2line -f -e MODULE OFFSET): ") &&
                      strstr(tail, " sidecar+0x"),
                  "no backtrace with sidecar frames in the crash record:\n%s", tail);

    pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 2, 200, 60000));
    scx_stop(pid, 15000);
    scx_verify_files(&e, "p1", "orders", 2, 200);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("observability");
    TCase *tc = tcase_create("metric names");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_dashboard_and_rules_use_exported_metrics);
    tcase_add_test(tc, test_crash_leaves_a_backtrace);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
