/*
 * check_operator.c - what an operator does to a partition, through the real
 * binary and in SQL:
 *
 *   - a reset is validated (pipeline, topic, partition in Kafka and in the
 *     checkpoints, log start <= offset <= log end) and never creates a row,
 *     in `sidecar reset` and in reset_checkpoint();
 *   - `sidecar retry` / retry_errored() take partitions out of the error
 *     state (here: the receiver answered 404) keeping their pending batch,
 *     which the running owner then replays: every record once;
 *   - `sidecar status` counts dead letters and shows LAG as unknown for
 *     partitions no live lease holds.
 */
#include <check.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "receiver.h"
#include "scx.h"

/* Runs `sidecar ARGS...` (NULL-terminated, at most 12); exit code, output in *out. */
static int sidecar(char **out, ...)
{
    const char *argv[16] = {hx_sidecar_bin()};
    va_list ap;
    va_start(ap, out);
    size_t n = 1;
    const char *a;
    while (n < 14 && (a = va_arg(ap, const char *)) != NULL)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return hx_run(argv, NULL, 60000, out);
}

static long long checkpoint_rows(PGconn *conn)
{
    return hx_pg_int(conn, "SELECT count(*) FROM sidecar.checkpoints", 0, NULL);
}

START_TEST(test_reset_is_validated_and_never_creates_rows)
{
    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {0};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 4, 0, 100);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 4, 100, 60000), "%s",
                  scx_log_tail(log, 3000));
    scx_stop(pid, 20000); /* leases released: no --force needed below */
    ck_assert_int_eq(checkpoint_rows(e.conn), 4);

    /* The command line: every mistake is exit 2 with what exists, and changes nothing. */
    struct {
        const char *pipeline, *topic, *partition, *offset, *expect;
    } bad[] = {
        {"nope", "orders", "0", "0", "no pipeline \"nope\""},
        {"p1", "orderz", "0", "0", "does not consume topic \"orderz\""},
        {"p1", "orders", "77", "0", "topic \"orders\" has 4 partitions (0..3)"},
        {"p1", "orders", "1", "99999",
         "past the log end of orders[1]: the next record produced "
         "gets offset 100"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *out = NULL;
        int rc = sidecar(&out, "reset", "-c", cfg, "--pipeline", bad[i].pipeline, "--topic",
                         bad[i].topic, "--partition", bad[i].partition, "--to-offset",
                         bad[i].offset, NULL);
        ck_assert_msg(rc == 2 && strstr(out, bad[i].expect), "case %zu: exit %d: %s", i, rc, out);
        free(out);
    }
    ck_assert_int_eq(checkpoint_rows(e.conn), 4);
    ck_assert_int_eq(scx_events(e.conn, "reset", NULL), 0);

    /* SQL: the same mistakes are refused too, and no row appears. */
    struct {
        const char *sql, *state, *expect;
    } sql[] = {
        {"SELECT sidecar.reset_checkpoint('nope', 'orders', 0, 0)", "42704",
         "no pipeline \"nope\" has a checkpoint (pipelines with checkpoints: p1)"},
        {"SELECT sidecar.reset_checkpoint('p1', 'orders', 77, 0)", "42704",
         "has no checkpoint for orders[77] (its partitions of \"orders\": 0, 1, 2, 3)"},
        {"SELECT sidecar.reset_checkpoint('p1', 'orders', 1, 99999)", "22003",
         "offset 99999 is past the log end offset 100"},
        {"SELECT sidecar.reset_checkpoint('p1', 'orders', 1, -1)", "22023", "must be an offset"},
        {"SELECT sidecar.retry_partition('p1', 'orders', 1)", "55000",
         "it is not in the error state"},
    };
    /* What the owner samples every 5 s (it may not have yet: the run was short). */
    hx_pg_exec(e.conn, "INSERT INTO sidecar.partition_stats (pipeline, topic, partition,"
                       " low_watermark, high_watermark) SELECT 'p1', 'orders', p, 0, 100"
                       " FROM generate_series(0, 3) p ON CONFLICT (pipeline, topic, partition)"
                       " DO UPDATE SET low_watermark = 0, high_watermark = 100");
    for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
        PGresult *res = PQexec(e.conn, sql[i].sql);
        ck_assert_msg(PQresultStatus(res) == PGRES_FATAL_ERROR, "%s: accepted", sql[i].sql);
        ck_assert_msg(strcmp(PQresultErrorField(res, PG_DIAG_SQLSTATE), sql[i].state) == 0 &&
                          strstr(PQresultErrorMessage(res), sql[i].expect),
                      "%s: %s", sql[i].sql, PQresultErrorMessage(res));
        PQclear(res);
    }
    ck_assert_int_eq(checkpoint_rows(e.conn), 4);
    ck_assert_int_eq(scx_events(e.conn, "reset", NULL), 0);

    /* What is valid works: the log end (nothing to deliver), and back with a new write offset. */
    char *out = NULL;
    int rc = sidecar(&out, "reset", "-c", cfg, "--pipeline", "p1", "--topic", "orders",
                     "--partition", "2", "--to-offset", "latest", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "committed offset 100 -> 100 (latest") &&
                      strstr(out, "(kept)"),
                  "exit %d: %s", rc, out);
    free(out);
    rc = sidecar(&out, "reset", "-c", cfg, "--pipeline", "p1", "--topic", "orders", "--partition",
                 "3", "--to-offset", "earliest", "--write-offset", "0", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "committed offset 100 -> 0 (earliest") &&
                      strstr(out, "continues at write offset 0 (was"),
                  "exit %d: %s", rc, out);
    free(out);
    rc = sidecar(&out, "reset", "-c", cfg, "--pipeline", "p1", "--topic", "orders", "--partition",
                 "3", "--to-offset", "0", "--write-offset", "nine", NULL);
    ck_assert_msg(rc == 2 && strstr(out, "--write-offset \"nine\""), "exit %d: %s", rc, out);
    free(out);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT committed_write_offset FROM sidecar.checkpoints"
                               " WHERE partition = 3",
                               0, NULL),
                     0);
    ck_assert_int_eq(scx_events(e.conn, "reset", NULL), 2);
    ck_assert_int_eq(checkpoint_rows(e.conn), 4);
    scx_env_stop(&e);
}
END_TEST

START_TEST(test_retry_keeps_the_pending_batch)
{
    struct scx_env e;
    const char *topics[] = {"orders:3"};
    scx_env_start(&e, 1, topics, 1);
    struct rx *rx = rx_start();
    rx_set_faults(rx, &(struct rx_faults){.status_all = 404});
    char sink[512];
    snprintf(sink, sizeof(sink), "{\"type\": \"http\", \"url\": \"%s\"}", rx_url(rx));
    struct scx_opts o = {.sink = sink};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 3, 0, 150);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);

    /* A wrong URL: every partition stops in the error state with its batch pending. */
    int64_t end = hx_now_ms() + 60000;
    while (hx_now_ms() < end &&
           hx_pg_int(e.conn,
                     "SELECT count(*) FROM sidecar.checkpoints WHERE state = 'error'"
                     " AND pending_first_offset = 0",
                     0, NULL) < 3)
        usleep(100000);
    ck_assert_msg(hx_pg_int(e.conn,
                            "SELECT count(*) FROM sidecar.checkpoints WHERE state = 'error'"
                            " AND pending_first_offset = 0",
                            0, NULL) == 3,
                  "%s", scx_log_tail(log, 3000));

    /* Fixed; one partition by the command line, the others by SQL, while it runs. */
    rx_set_faults(rx, &(struct rx_faults){0});
    char *out = NULL;
    int rc = sidecar(&out, "retry", "-c", cfg, "--pipeline", "p1", "--topic", "orders",
                     "--partition", "0", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "cleared the error state (was:") &&
                      strstr(out, "the pending batch 0..") && strstr(out, "is kept"),
                  "exit %d: %s", rc, out);
    free(out);
    hx_pg_exec(e.conn, "SELECT * FROM sidecar.retry_errored('p1')");
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 3, 150, 60000), "%s",
                  scx_log_tail(log, 3000));
    ck_assert_int_eq(scx_events(e.conn, "retry", NULL), 3);
    /* Nothing left to retry: exit 0 and says so. */
    rc = sidecar(&out, "retry", "-c", cfg, "--pipeline", "p1", "--all-errored", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "nothing to retry"), "exit %d: %s", rc, out);
    free(out);
    rc = sidecar(&out, "retry", "-c", cfg, "--pipeline", "p1", NULL);
    ck_assert_msg(rc == 2 && strstr(out, "--all-errored"), "exit %d: %s", rc, out);
    free(out);
    scx_stop(pid, 20000);

    /* Every record exactly once: the pending batches were replayed, not dropped. */
    rx_verify(
        rx,
        &(struct rx_verify_opts){
            .pipeline = "p1", .topic = "orders", .nparts = 3, .count = 150, .seq_values = true});
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL), 0);

    /* status: no live lease now, so LAG is unknown ("-"), not 0; dead letters are counted. */
    hx_pg_exec(e.conn,
               "INSERT INTO sidecar.dead_letters (pipeline, topic, partition, \"offset\", envelope,"
               " error) VALUES ('p1', 'orders', 1, 7, '{}', 'test'), ('p1', 'orders', 1, 8, '{}',"
               " 'test')");
    rc = sidecar(&out, "status", "-c", cfg, NULL);
    ck_assert_msg(rc == 0, "exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, "DEAD LETTERS"), "%s", out);
    /* Partition 1's row: p1 orders 1 MODE OWNER SHARE EPOCH LEASE COMMITTED LAG PENDING STATE
     * PAUSED PINNED DEAD (ERROR is empty). */
    bool found = false;
    for (const char *row = strstr(out, "\np1 "); row && !found; row = strstr(row + 1, "\np1 ")) {
        char t[15][64];
        if (sscanf(row + 1,
                   "%63s %63s %63s %63s %63s %63s %63s %63s %63s %63s %63s %63s %63s %63s %63s",
                   t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[12],
                   t[13], t[14]) != 15 ||
            strcmp(t[2], "1") != 0)
            continue;
        found = true;
        ck_assert_msg(strcmp(t[7], "expired") == 0 && strcmp(t[8], "150") == 0 &&
                          strcmp(t[9], "-") == 0 && strcmp(t[14], "2") == 0,
                      "partition 1: LEASE %s COMMITTED %s LAG %s DEAD LETTERS %s\n%s", t[7], t[8],
                      t[9], t[14], out);
    }
    ck_assert_msg(found, "no row for partition 1: %s", out);
    free(out);
    rc = sidecar(&out, "status", "-c", cfg, "--json", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "\"dead_letters\": 2") && strstr(out, "\"lag\": null") &&
                      !strstr(out, "\"lag\": 0"),
                  "%s", out);
    free(out);

    rx_stop(rx);
    scx_env_stop(&e);
}
END_TEST

/* Writes a config for the env with the given topics and sink (and extra kafka properties). */
static const char *own_config(const struct scx_env *e, const char *name, const char *topics,
                              const char *sink, const char *kafka_props)
{
    static char path[4][700];
    static int n;
    char *p = path[n++ % 4];
    snprintf(p, 700, "%s/%s", e->dir, name);
    hx_write_file(p,
                  "{\"instance_id\": \"ops\", \"postgres\": {\"dsn\": \"%s\"},\n"
                  " \"kafka\": {\"bootstrap.servers\": \"%s\", \"properties\": {%s}},\n"
                  " \"pipelines\": [{\"name\": \"p1\", \"topics\": %s, \"sink\": %s}]}\n",
                  e->dsn, e->mock.bootstrap, kafka_props ? kafka_props : "", topics, sink);
    return p;
}

START_TEST(test_check_config_online)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    char sink[1024];
    snprintf(sink, sizeof(sink), "{\"type\": \"file\", \"path\": \"%s/{topic}/{partition}\"}",
             e.out_dir);
    const char *good = own_config(&e, "good.json", "[\"orders\"]", sink, NULL);

    /* Before migrate: online says so (offline the file is fine). */
    char *out = NULL;
    int rc = sidecar(&out, "check-config", "-c", good, NULL);
    ck_assert_msg(rc == 0, "exit %d: %s", rc, out);
    free(out);
    rc = sidecar(&out, "check-config", "-c", good, "--online", NULL);
    ck_assert_msg(rc == 1 && strstr(out, "sidecar migrate"), "exit %d: %s", rc, out);
    free(out);
    scx_migrate(good);
    rc = sidecar(&out, "check-config", "-c", good, "--online", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "schema \"sidecar\" is migrated") &&
                      strstr(out, "topic \"orders\" exists (2 partitions)") &&
                      strstr(out, "can be created"),
                  "exit %d: %s", rc, out);
    free(out);

    /* A topic Kafka does not have, a file sink under a regular file. */
    char blocker[700];
    snprintf(blocker, sizeof(blocker), "%s/not-a-dir", e.dir);
    hx_write_file(blocker, "x");
    snprintf(sink, sizeof(sink), "{\"type\": \"file\", \"path\": \"%s/{topic}/{partition}\"}",
             blocker);
    const char *bad = own_config(&e, "bad.json", "[\"orders\", \"nosuch\"]", sink, NULL);
    rc = sidecar(&out, "check-config", "-c", bad, "--online", NULL);
    ck_assert_msg(rc == 1 && strstr(out, "topic \"nosuch\" does not exist") &&
                      strstr(out, "is not a directory") && strstr(out, "2 problems found online"),
                  "exit %d: %s", rc, out);
    free(out);

    /* A postgres sink whose table lacks a column and the unique index: both, before `run`. */
    hx_pg_exec(e.conn, "CREATE SCHEMA app; CREATE TABLE app.kv (id text, v text)");
    const char *pg = own_config(&e, "pg.json", "[\"orders\"]",
                                "{\"type\": \"postgres\", \"table\": \"app.kv\", \"mode\": "
                                "\"upsert\", \"create_table\": false, \"columns\": {\"id\": "
                                "\"$.id\", \"w\": \"$.w\"}, \"key_columns\": [\"id\"]}",
                                NULL);
    rc = sidecar(&out, "check-config", "-c", pg, "--online", NULL);
    ck_assert_msg(rc == 1 && strstr(out, "has 2 problems: (1) no column \"w\"") &&
                      strstr(out, "(2) no unique index on exactly (\"id\")"),
                  "exit %d: %s", rc, out);
    free(out);

    /* An HTTP endpoint: nothing listening is a problem, a listening receiver is fine. */
    char http[256];
    snprintf(http, sizeof(http), "{\"type\": \"http\", \"url\": \"http://127.0.0.1:%d/ingest\"}",
             scx_free_port());
    const char *down = own_config(&e, "down.json", "[\"orders\"]", http, NULL);
    rc = sidecar(&out, "check-config", "-c", down, "--online", NULL);
    ck_assert_msg(rc == 1 && strstr(out, "cannot connect to http://127.0.0.1:"), "exit %d: %s", rc,
                  out);
    free(out);
    struct rx *rx = rx_start();
    snprintf(http, sizeof(http), "{\"type\": \"http\", \"url\": \"%s\"}", rx_url(rx));
    const char *up = own_config(&e, "up.json", "[\"orders\"]", http, NULL);
    rc = sidecar(&out, "check-config", "-c", up, "--online", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "accepts connections (no request was sent)"),
                  "exit %d: %s", rc, out);
    free(out);
    ck_assert_int_eq(rx_nrequests(rx), 0);
    rx_stop(rx);

    /* Offline: librdkafka refuses the client configuration as a whole (SASL PLAIN without its
     * credentials): exit 2 from check-config, not a surprise from run. */
    const char *sasl = own_config(&e, "sasl.json", "[\"orders\"]", "{\"type\": \"stdout\"}",
                                  "\"security.protocol\": \"sasl_plaintext\","
                                  " \"sasl.mechanisms\": \"PLAIN\"");
    rc = sidecar(&out, "check-config", "-c", sasl, NULL);
    ck_assert_msg(rc == 2 && strstr(out, "sasl.username"), "exit %d: %s", rc, out);
    free(out);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("operator");
    TCase *tc = tcase_create("operator");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_reset_is_validated_and_never_creates_rows);
    tcase_add_test(tc, test_retry_keeps_the_pending_batch);
    tcase_add_test(tc, test_check_config_online);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
