/*
 * check_cli.c - the command line as a user meets it: bad input gets a clear
 * error naming the problem and where it is, exit code 2 (1 for runtime
 * failures such as an unreachable database), and nothing is written to
 * PostgreSQL; every subcommand has --help.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hx.h"
#include "scx.h"

static struct hx_pg pg;
static char dsn[512];
static const char *dir;

static void setup(void)
{
    hx_pg_start(&pg);
    hx_pg_create_db(&pg, "cli", dsn, sizeof(dsn));
    dir = hx_tmpdir();
}

static void teardown(void)
{
    hx_pg_stop(&pg);
}

/* Runs the sidecar with args; returns the exit code and the output in *out. */
static int run(char **out, const char *a1, const char *a2, const char *a3, const char *a4)
{
    const char *argv[] = {hx_sidecar_bin(), a1, a2, a3, a4, NULL};
    const char *env[] = {"SIDECAR_CONFIG", "HX_UNSET_VAR", NULL}; /* both removed */
    return hx_run(argv, env, 30000, out);
}

static const char *write_cfg(const char *name, const char *body)
{
    static char path[16][600];
    static int n;
    char *p = path[n++ % 16];
    snprintf(p, 600, "%s/%s", dir, name);
    hx_write_file(p, "%s", body);
    return p;
}

/* A valid config with one substitution point. */
static const char *cfg_with(const char *name, const char *pipeline_extra, const char *sink)
{
    char body[4096];
    snprintf(body, sizeof(body),
             "{\n"
             "  \"postgres\": {\"dsn\": \"%s\"},\n"
             "  \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:1\"},\n"
             "  \"pipelines\": [{\n"
             "    \"name\": \"p1\",\n"
             "    \"topics\": [\"orders\"],%s\n"
             "    \"sink\": %s\n"
             "  }]\n"
             "}\n",
             dsn, pipeline_extra, sink);
    return write_cfg(name, body);
}

static void assert_no_schema(void)
{
    PGconn *c = hx_pg_connect(dsn);
    ck_assert_int_eq(
        hx_pg_int(c, "SELECT count(*) FROM pg_namespace WHERE nspname = 'sidecar'", 0, NULL), 0);
    PQfinish(c);
}

struct bad_case {
    const char *name;
    const char *body;   /* NULL: use file as given */
    const char *expect; /* substring of the error */
};

START_TEST(test_bad_config_exit_2_nothing_written)
{
    const char *file_sink = "{\"type\": \"file\", \"path\": \"/tmp/x/{partition}.jsonl\"}";
    char buf[4096];
    struct bad_case cases[] = {
        {"invalid.json", "{\n  \"postgres\": {\"dsn\": \"x\"},,\n}\n", "invalid.json:2:"},
        {"empty.json", "", "empty"},
        {"array.json", "[1, 2]\n", "expected an object"},
        {"unknown-top.json",
         "{\"postgress\": {}, \"kafka\": {\"bootstrap.servers\": \"b\"}, \"pipelines\": []}",
         "did you mean \"postgres\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *path = write_cfg(cases[i].name, cases[i].body);
        char *out = NULL;
        int rc = run(&out, "migrate", "-c", path, NULL);
        ck_assert_msg(rc == 2, "%s: exit %d: %s", cases[i].name, rc, out);
        ck_assert_msg(strstr(out, cases[i].expect), "%s: %s", cases[i].name, out);
        free(out);
    }

    /* Semantic errors, each with file:line:col and the JSON path. */
    struct {
        const char *name, *extra, *sink, *expect;
    } sem[] = {
        {"type.json", "\n    \"workers\": \"four\",", file_sink,
         "pipelines[0].workers: expected an integer (got \"four\")"},
        {"range.json", "\n    \"batch\": {\"max_records\": 0},", file_sink,
         "pipelines[0].batch.max_records: must be between 1 and 1000000"},
        {"unknown-key.json", "\n    \"topcs\": [\"x\"],", file_sink, "did you mean \"topics\""},
        {"sink-type.json", "", "{\"type\": \"ftp\"}",
         "pipelines[0].sink.type: expected one of: file, postgres, http, stdout"},
        {"missing.json", "", "{\"type\": \"http\"}", "missing required key \"url\""},
        {"unset-var.json", "", "{\"type\": \"file\", \"path\": \"${HX_UNSET_VAR}/{partition}\"}",
         "environment variable HX_UNSET_VAR is not set"},
        {"sink-url.json", "", "{\"type\": \"http\", \"url\": 42}",
         "pipelines[0].sink.url: expected a string (got 42)"},
    };
    for (size_t i = 0; i < sizeof(sem) / sizeof(sem[0]); i++) {
        const char *path = cfg_with(sem[i].name, sem[i].extra, sem[i].sink);
        for (int sub = 0; sub < 3; sub++) {
            const char *cmd = sub == 0 ? "migrate" : sub == 1 ? "run" : "check-config";
            char *out = NULL;
            int rc = run(&out, cmd, "-c", path, NULL);
            ck_assert_msg(rc == 2, "%s %s: exit %d: %s", cmd, sem[i].name, rc, out);
            ck_assert_msg(strstr(out, sem[i].expect), "%s %s: %s", cmd, sem[i].name, out);
            snprintf(buf, sizeof(buf), "%s:", path);
            ck_assert_msg(strstr(out, buf), "%s: error does not name the file: %s", sem[i].name,
                          out);
            free(out);
        }
    }

    /* Missing and unreadable files. */
    char *out = NULL;
    snprintf(buf, sizeof(buf), "%s/nope.json", dir);
    ck_assert_int_eq(run(&out, "migrate", "-c", buf, NULL), 2);
    ck_assert_msg(strstr(out, "No such file or directory"), "%s", out);
    free(out);
    ck_assert_int_eq(run(&out, "migrate", "-c", dir, NULL), 2); /* a directory */
    free(out);

    /* A malformed DSN is a config error and the password never shows. */
    const char *bad_dsn = write_cfg(
        "bad-dsn.json", "{\"postgres\": {\"dsn\": \"host=db password=hunter2 port\"},"
                        " \"kafka\": {\"bootstrap.servers\": \"b\"}, \"pipelines\": [{\"name\":"
                        " \"p\", \"topics\": [\"t\"], \"sink\": {\"type\": \"stdout\"}}]}");
    ck_assert_int_eq(run(&out, "migrate", "-c", bad_dsn, NULL), 2);
    ck_assert_msg(strstr(out, "postgres.dsn"), "%s", out);
    ck_assert_msg(!strstr(out, "hunter2"), "password leaked: %s", out);
    free(out);

    assert_no_schema();
}
END_TEST

START_TEST(test_unreachable_database_exit_1_host_named_password_masked)
{
    char path_body[1024];
    /* A closed port on this machine. */
    int port = 1;
    snprintf(path_body, sizeof(path_body),
             "{\"postgres\": {\"dsn\": \"host=127.0.0.1 port=%d user=app password=hunter2 "
             "dbname=x\", \"connect_timeout_ms\": 2000}, \"kafka\": {\"bootstrap.servers\": "
             "\"b\"}, \"pipelines\": [{\"name\": \"p\", \"topics\": [\"t\"], \"sink\": "
             "{\"type\": \"stdout\"}}]}",
             port);
    const char *path = write_cfg("unreachable.json", path_body);
    char *out = NULL;
    int rc = run(&out, "migrate", "-c", path, NULL);
    ck_assert_msg(rc == 1, "exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, "127.0.0.1:1"), "host not named: %s", out);
    ck_assert_msg(!strstr(out, "hunter2"), "password leaked: %s", out);
    free(out);
    /* check-config shows the config with the password masked. */
    rc = run(&out, "check-config", "-c", path, NULL);
    ck_assert_int_eq(rc, 0);
    ck_assert_msg(strstr(out, "password=****"), "%s", out);
    ck_assert_msg(!strstr(out, "hunter2"), "password leaked: %s", out);
    free(out);
}
END_TEST

START_TEST(test_run_requires_migrations)
{
    const char *path = cfg_with("nomigr.json", "", "{\"type\": \"stdout\"}");
    char *out = NULL;
    int rc = run(&out, "run", "-c", path, NULL);
    ck_assert_msg(rc == 1, "exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, "sidecar migrate"), "%s", out);
    free(out);
    assert_no_schema();
}
END_TEST

/* A run config with its own DSN and admin port; log level info, text. */
static const char *run_cfg(const char *name, const char *run_dsn, int admin_port)
{
    char body[2048];
    snprintf(body, sizeof(body),
             "{\"instance_id\": \"cli\",\n"
             " \"postgres\": {\"dsn\": \"%s\", \"connect_timeout_ms\": 2000},\n"
             " \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:1\"},\n"
             " \"admin\": {\"listen\": \"127.0.0.1:%d\"},\n"
             " \"log\": {\"level\": \"info\", \"format\": \"text\"},\n"
             " \"pipelines\": [{\"name\": \"p1\", \"topics\": [\"orders\"],"
             " \"sink\": {\"type\": \"stdout\"}}]}\n",
             run_dsn, admin_port);
    return write_cfg(name, body);
}

/* Polls /readyz until its reason contains want; returns the last body (malloc'd). */
static char *readyz_until(int port, const char *want, int timeout_ms)
{
    int64_t end = hx_now_ms() + timeout_ms;
    char *body = NULL;
    do {
        free(body);
        long status = 0;
        body = scx_http_get(port, "/readyz", NULL, &status);
        if (body && status == 503 && strstr(body, want))
            return body;
        usleep(100000);
    } while (hx_now_ms() < end);
    return body;
}

START_TEST(test_postgres_unreachable_or_refusing_at_start)
{
    /* A role that logs in with a password (the cluster trusts everyone else). */
    char hba[700];
    snprintf(hba, sizeof(hba), "%s/data/pg_hba.conf", pg.dir);
    char *old = hx_read_file(hba, NULL);
    ck_assert_ptr_nonnull(old);
    hx_write_file(hba, "host all pwuser 127.0.0.1/32 scram-sha-256\n%s", old);
    free(old);
    PGconn *c = hx_pg_connect(dsn);
    hx_pg_exec(c, "CREATE ROLE pwuser LOGIN PASSWORD 'right-one'");
    hx_pg_exec(c, "SELECT pg_reload_conf()");
    PQfinish(c);

    /* A wrong password: exit 1 at once, saying so, without the password. */
    char bad_dsn[600];
    snprintf(bad_dsn, sizeof(bad_dsn),
             "host=127.0.0.1 port=%d user=pwuser password=hunter2x "
             "dbname=cli",
             pg.port);
    int port = scx_free_port();
    const char *cfg = run_cfg("badpw.json", bad_dsn, port);
    char *out = NULL;
    int rc = run(&out, "run", "-c", cfg, NULL);
    ck_assert_msg(rc == 1, "exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, "password authentication failed") &&
                      strstr(out, "PostgreSQL refused the login") &&
                      strstr(out, "--wait-for-postgres") && !strstr(out, "hunter2x"),
                  "%s", out);
    free(out);

    /* Told to wait: it keeps trying, and /readyz says why it is not ready. */
    char log[700];
    snprintf(log, sizeof(log), "%s/wait.log", dir);
    const char *argv[] = {hx_sidecar_bin(), "run", "-c", cfg, "--wait-for-postgres", NULL};
    pid_t pid = hx_spawn(argv, NULL, log);
    char *body = readyz_until(port, "(attempt 2,", 30000);
    ck_assert_msg(body && strstr(body, "waiting for PostgreSQL") &&
                      strstr(body, "password authentication failed") && !strstr(body, "hunter2x"),
                  "/readyz: %s\nlog: %s", body ? body : "(none)", scx_log_tail(log, 2000));
    free(body);
    kill(pid, SIGTERM);
    ck_assert_int_eq(hx_wait(pid, 15000), 0);

    /* Down (nothing listens): retried, logged with a growing interval, the reason in /readyz. */
    int closed = scx_free_port();
    char down_dsn[600];
    snprintf(down_dsn, sizeof(down_dsn), "host=127.0.0.1 port=%d user=app password=hunter2x",
             closed);
    port = scx_free_port();
    cfg = run_cfg("down.json", down_dsn, port);
    snprintf(log, sizeof(log), "%s/down.log", dir);
    const char *argv2[] = {hx_sidecar_bin(), "run", "-c", cfg, NULL};
    pid = hx_spawn(argv2, NULL, log);
    body = readyz_until(port, "(attempt 6,", 60000);
    ck_assert_msg(body && strstr(body, "starting: waiting for PostgreSQL: could not connect") &&
                      strstr(body, ", next in ") && !strstr(body, "hunter2x"),
                  "/readyz: %s\nlog: %s", body ? body : "(none)", scx_log_tail(log, 2000));
    free(body);
    kill(pid, SIGTERM);
    ck_assert_int_eq(hx_wait(pid, 15000), 0);
    char *text = hx_read_file(log, NULL);
    int stills = 0;
    for (const char *l = strstr(text, "still cannot connect"); l;
         l = strstr(l + 1, "still cannot connect")) {
        const char *a = strstr(l, "(attempt ");
        ck_assert_msg(a && strcspn(l, "\n") > (size_t)(a - l), "%s", text);
        long n = strtol(a + 9, NULL, 10);
        ck_assert_msg(n >= 2 && (n & (n - 1)) == 0, "attempt %ld logged: not a power of two\n%s", n,
                      text);
        ck_assert_msg(strstr(a, ", next in ") && strstr(a, ", next in ") < l + strcspn(l, "\n"),
                      "%s", text);
        stills++;
    }
    /* Attempts 2 and 4 at least were logged; attempts 3, 5 and 6 were not. */
    ck_assert_msg(stills >= 2 && stills <= 3, "%d lines:\n%s", stills, text);
    ck_assert_msg(!strstr(text, "hunter2x"), "%s", text);
    free(text);
}
END_TEST

START_TEST(test_usage_and_help)
{
    char *out = NULL;
    ck_assert_int_eq(run(&out, "bogus", NULL, NULL, NULL), 2);
    ck_assert_msg(strstr(out, "unknown subcommand"), "%s", out);
    free(out);
    ck_assert_int_eq(run(&out, "statsu", NULL, NULL, NULL), 2);
    ck_assert_msg(strstr(out, "did you mean 'status'") || strstr(out, "Did you mean 'status'"),
                  "%s", out);
    free(out);
    ck_assert_int_eq(run(&out, "migrate", NULL, NULL, NULL), 2); /* no -c */
    ck_assert_msg(strstr(out, "-c FILE"), "%s", out);
    free(out);
    ck_assert_int_eq(run(&out, "migrate", "-c", "x.json", "--frobnicate"), 2);
    ck_assert_msg(strstr(out, "unknown option"), "%s", out);
    free(out);
    ck_assert_int_eq(run(&out, "migrate", "-c", "x.json", "extra"), 2);
    free(out);
    /* -c without its file is a missing value, not an unknown option. */
    ck_assert_int_eq(run(&out, "status", "-c", NULL, NULL), 2);
    ck_assert_msg(strstr(out, "option '-c' needs a value") && !strstr(out, "unknown option"), "%s",
                  out);
    free(out);
    /* Without a subcommand run is implied, but the error does not blame a `run` never typed. */
    ck_assert_int_eq(run(&out, "--verbose", NULL, NULL, NULL), 2);
    ck_assert_msg(strstr(out, "sidecar: unknown option '--verbose'") &&
                      !strstr(out, "sidecar run: unknown option"),
                  "%s", out);
    free(out);
    ck_assert_int_eq(run(&out, "reset", "-c", "x.json", "--partiton=3"), 2);
    ck_assert_msg(strstr(out, "did you mean '--partition'"), "%s", out);
    free(out);
    /* reset names every missing option at once. */
    ck_assert_int_eq(run(&out, "reset", "-c", cfg_with("reset.json", "", "{\"type\": \"stdout\"}"),
                         "--pipeline=p1"),
                     2);
    ck_assert_msg(strstr(out, "--topic T, --partition N and --to-offset"), "%s", out);
    free(out);
    const char *subs[] = {"run",   "migrate", "check-config", "status", "watch",
                          "reset", "retry",   "redrive",      "version"};
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        ck_assert_int_eq(run(&out, subs[i], "--help", NULL, NULL), 0);
        ck_assert_msg(strstr(out, "usage: sidecar"), "%s --help: %s", subs[i], out);
        free(out);
    }
    ck_assert_int_eq(run(&out, "--help", NULL, NULL, NULL), 0);
    ck_assert_msg(strstr(out, "Exit codes"), "%s", out);
    free(out);
    ck_assert_int_eq(run(&out, "version", NULL, NULL, NULL), 0);
    ck_assert_msg(strstr(out, "librdkafka"), "%s", out);
    free(out);
    ck_assert_int_eq(run(&out, "check-config", "--reference", NULL, NULL), 0);
    ck_assert_msg(strstr(out, "max_records"), "%s", out);
    free(out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("bad input");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_bad_config_exit_2_nothing_written);
    tcase_add_test(tc, test_unreachable_database_exit_1_host_named_password_masked);
    tcase_add_test(tc, test_run_requires_migrations);
    tcase_add_test(tc, test_usage_and_help);
    tcase_add_test(tc, test_postgres_unreachable_or_refusing_at_start);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
