/*
 * check_secrets.c - secrets never show: not in the log (at debug level, with
 * failing deliveries that log their errors), not in any admin endpoint, not
 * in `status`, `check-config` or `check-config --reference`.
 *
 * Every secret the config can hold gets a distinct value containing
 * "SECRET": the DSN password, the admin token, an HTTP sink's bearer token,
 * an Authorization-like header and credentials in its URL, a librdkafka
 * sasl.password (set, unused, so librdkafka has reason to mention it) and a
 * secret read through ${file:...}.  The HTTP pipeline points at a closed
 * port, so its errors are logged over and over.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scx.h"

static void assert_clean(const char *what, const char *text)
{
    ck_assert_ptr_nonnull(text);
    const char *hit = strstr(text, "SECRET");
    if (hit) {
        size_t from = hit - text > 200 ? (size_t)(hit - text) - 200 : 0;
        ck_abort_msg("a secret shows in %s: ...%.400s...", what, text + from);
    }
}

START_TEST(test_secrets_never_shown)
{
    struct scx_env e;
    const char *topics[] = {"orders:2", "audit:1"};
    scx_env_start(&e, 1, topics, 2);
    int port = scx_free_port(), dead_port = scx_free_port();
    char secret_file[600], cfg[600], log[700];
    snprintf(secret_file, sizeof(secret_file), "%s/token", e.dir);
    hx_write_file(secret_file, "file-SECRET-7\n");
    snprintf(cfg, sizeof(cfg), "%s/sc.json", e.dir);
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    /* trust authentication: the server ignores the password, libpq still holds it */
    hx_write_file(
        cfg,
        "{\"instance_id\": \"sc-1\",\n"
        " \"postgres\": {\"dsn\": \"%s password=pg-SECRET-1\"},\n"
        " \"kafka\": {\"bootstrap.servers\": \"%s\", \"properties\": {\"sasl.password\": "
        "\"kafka-SECRET-4\", \"sasl.username\": \"u\", \"session.timeout.ms\": \"6000\"}},\n"
        " \"admin\": {\"listen\": \"127.0.0.1:%d\", \"token\": \"adm-SECRET-2\"},\n"
        " \"log\": {\"level\": \"debug\", \"format\": \"json\"},\n"
        " \"pipelines\": [\n"
        "  {\"name\": \"files\", \"topics\": [\"orders\"], \"batch\": {\"max_wait_ms\": 20},\n"
        "   \"sink\": {\"type\": \"file\", \"path\": \"%s/{topic}/{partition}.jsonl\"}},\n"
        "  {\"name\": \"hooks\", \"topics\": [\"audit\"], \"batch\": {\"max_wait_ms\": 20},\n"
        "   \"sink\": {\"type\": \"http\", \"url\": \"http://user:url-SECRET-5@127.0.0.1:%d/in\",\n"
        "            \"bearer_token\": \"${file:%s}\", \"timeout_ms\": 500,\n"
        "            \"headers\": {\"X-Api-Key\": \"hdr-SECRET-6\"}}}\n"
        " ]}\n",
        e.dsn, e.mock.bootstrap, port, e.out_dir, dead_port, secret_file);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 200);
    hx_produce_seq(e.mock.bootstrap, "audit", 1, 0, 20);

    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert_msg(scx_wait_committed(e.conn, "files", "orders", 2, 200, 60000), "log:\n%s",
                  scx_log_tail(log, 3000));
    /* The HTTP pipeline fails and retries, logging each time: wait until a failure and its
     * retry are in the log (the URL they show is checked below). */
    ck_assert_msg(scx_wait_log(log, "request to http://127.0.0.1:", 2, 30000),
                  "the HTTP errors were not logged:\n%s", scx_log_tail(log, 2000));

    static const char *const paths[] = {"/healthz",   "/readyz",         "/metrics",
                                        "/v1/status", "/v1/checkpoints", "/v1/events?limit=1000"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        long status;
        char *body = scx_http_get(port, paths[i], "adm-SECRET-2", &status);
        ck_assert_msg(status == 200, "%s: %ld", paths[i], status);
        assert_clean(paths[i], body);
        free(body);
        /* A wrong token is refused, and the answer does not echo it. */
        body = scx_http_get(port, paths[i], "wrong-SECRET-8", &status);
        if (strcmp(paths[i], "/healthz") != 0)
            ck_assert_msg(status == 401, "%s without the token: %ld", paths[i], status);
        assert_clean(paths[i], body);
        free(body);
    }

    const char *status_argv[] = {hx_sidecar_bin(), "status", "-c", cfg, NULL};
    char *out = NULL;
    hx_run(status_argv, NULL, 60000, &out);
    ck_assert_ptr_nonnull(out);
    ck_assert_msg(strstr(out, "files") != NULL, "status: %s", out);
    assert_clean("sidecar status", out);
    free(out);
    const char *check_argv[] = {hx_sidecar_bin(), "check-config", "-c", cfg, NULL};
    out = NULL;
    hx_run(check_argv, NULL, 60000, &out);
    ck_assert_ptr_nonnull(out);
    ck_assert_msg(strstr(out, "****") != NULL, "check-config masks nothing? %s", out);
    assert_clean("sidecar check-config", out);
    free(out);

    scx_stop(pid, 15000);
    char *text = hx_read_file(log, NULL);
    /* The URL is in the failed requests' messages: without its credentials. */
    ck_assert_msg(strstr(text, "request to http://127.0.0.1:") != NULL,
                  "the HTTP errors were not logged:\n%s", scx_log_tail(log, 2000));
    assert_clean("the log", text);
    free(text);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("secrets");
    TCase *tc = tcase_create("secrets");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_secrets_never_shown);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
