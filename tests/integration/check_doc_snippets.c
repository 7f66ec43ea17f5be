/*
 * check_doc_snippets.c - the code the documentation tells people to run,
 * taken from the Markdown itself, so the docs and the test cannot drift.
 *
 * The HTTP receiver of docs/sinks.md ("Receiving from the HTTP sink") is
 * run with python3 against the sidecar with its default four workers, each
 * keeping its own connection: every record must arrive exactly once, in
 * the receiver's own table.  (A single-threaded server kept the first
 * connection and timed the others out; a threaded one without a lock broke
 * on the shared SQLite connection.)
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scx.h"

/* The first ```python block after the heading (malloc'd), or NULL. */
static char *python_block_after(const char *doc, const char *heading)
{
    char path[700];
    snprintf(path, sizeof(path), "%s/%s", HX_SOURCE_DIR, doc);
    char *md = hx_read_file(path, NULL);
    ck_assert_msg(md, "cannot read %s", path);
    char *h = strstr(md, heading);
    char *start = h ? strstr(h, "\n```python\n") : NULL;
    char *end = start ? strstr(start + 11, "\n```") : NULL;
    char *code = NULL;
    if (end) {
        start += 11;
        code = strndup(start, (size_t)(end - start) + 1);
    }
    free(md);
    return code;
}

START_TEST(test_http_receiver_of_the_docs)
{
    char *code = python_block_after("docs/sinks.md", "### Receiving from the HTTP sink");
    ck_assert_msg(code && strstr(code, "serve_forever"), "no receiver snippet in docs/sinks.md");

    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 1, topics, 1);
    char script[700], log[700], port_env[32];
    snprintf(script, sizeof(script), "%s/receiver.py", e.dir);
    snprintf(log, sizeof(log), "%s/receiver.log", e.dir);
    hx_write_file(script, "%s", code);
    free(code);
    int port = scx_free_port();
    snprintf(port_env, sizeof(port_env), "PORT=%d", port);
    /* The receiver keeps received.db in its working directory: the test's. */
    ck_assert_int_eq(chdir(e.dir), 0);
    const char *py[] = {"python3", script, NULL};
    const char *env[] = {port_env, NULL};
    pid_t rx = hx_spawn(py, env, log);
    int64_t end = hx_now_ms() + 30000;
    long status = 0;
    while (hx_now_ms() < end) {
        char *b = scx_http_get(port, "/", NULL, &status);
        free(b);
        if (status > 0)
            break;
        usleep(100000);
    }
    ck_assert_msg(status > 0, "the receiver does not listen: %s", scx_log_tail(log, 2000));

    char sink[256];
    snprintf(sink, sizeof(sink), "{\"type\": \"http\", \"url\": \"http://127.0.0.1:%d/ingest\"}",
             port);
    struct scx_opts o = {.sink = sink, .workers = 4, .max_records = 50};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 4, 0, 400);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char sclog[700];
    snprintf(sclog, sizeof(sclog), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 4, 400, 120000),
                  "not delivered; sidecar:\n%s\nreceiver:\n%s", scx_log_tail(sclog, 3000),
                  scx_log_tail(log, 1000));
    scx_stop(pid, 20000);

    /* The receiver's table: 1,600 rows, every (partition, offset) once. */
    const char *count[] = {
        "python3", "-c",
        "import sqlite3; c = sqlite3.connect('received.db');"
        "print(*c.execute('SELECT count(*), count(DISTINCT part || \":\" || off),"
        " min(off), max(off), count(DISTINCT part) FROM orders').fetchone())",
        NULL};
    char *out = NULL;
    ck_assert_int_eq(hx_run(count, NULL, 30000, &out), 0);
    ck_assert_msg(strncmp(out, "1600 1600 0 399 4", 17) == 0, "receiver holds: %s", out);
    free(out);
    kill(rx, SIGTERM);
    hx_wait(rx, 10000);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("doc_snippets");
    TCase *tc = tcase_create("doc_snippets");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_http_receiver_of_the_docs);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
