/*
 * check_status.c - `sidecar status` and `sidecar reset` as child processes
 * against a real PostgreSQL (and the mock cluster for earliest / latest).
 *
 * How these tests were checked to fail: a status table whose columns do
 * not line up, --json without a column, reset ignoring --force (the live
 * lease test), and earliest/latest swapped.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "hx.h"
#include "scx.h"

static struct hx_pg pg;

static void pg_setup(void)
{
    hx_pg_start(&pg);
}

static void pg_teardown(void)
{
    hx_pg_stop(&pg);
}

struct tenv {
    char dsn[512];
    char cfg[700];
    PGconn *conn;
};

static void tenv_start(struct tenv *t, const char *dbname, const char *bootstrap)
{
    hx_pg_create_db(&pg, dbname, t->dsn, sizeof(t->dsn));
    snprintf(t->cfg, sizeof(t->cfg), "%s/sidecar.json", hx_tmpdir());
    hx_write_file(
        t->cfg,
        "{\"instance_id\": \"test\",\n"
        " \"postgres\": {\"dsn\": \"%s\"},\n"
        " \"kafka\": {\"bootstrap.servers\": \"%s\"},\n"
        " \"log\": {\"level\": \"warn\", \"format\": \"text\"},\n"
        " \"pipelines\": [\n"
        "  {\"name\": \"p1\", \"topics\": [\"orders\", \"audit\"],"
        "   \"sink\": {\"type\": \"stdout\"}},\n"
        "  {\"name\": \"p2\", \"topics\": [\"billing\"], \"sink\": {\"type\": \"stdout\"}}]}\n",
        t->dsn, bootstrap ? bootstrap : "127.0.0.1:9");
    scx_migrate(t->cfg);
    t->conn = hx_pg_connect(t->dsn);
}

/* Runs `sidecar SUB -c cfg ARGS...`; output (stdout and stderr) in *out. */
static int sidecar(const struct tenv *t, const char *sub, const char *const *args, char **out)
{
    const char *argv[20] = {hx_sidecar_bin(), sub, "-c", t->cfg};
    size_t n = 4;
    for (size_t i = 0; args && args[i] && n < 19; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return hx_run(argv, NULL, 30000, out);
}

static void seed_rows(PGconn *conn)
{
    hx_pg_exec(conn,
               "INSERT INTO sidecar.checkpoints (pipeline, topic, partition, committed_offset,"
               " committed_write_offset, epoch) VALUES"
               " ('p1', 'orders', 0, 1500, 99000, 3),"
               " ('p1', 'orders', 1, NULL, 0, 0),"
               " ('p1', 'orders', 12, 42, 420, 1),"
               " ('p2', 'billing', 0, 7, 7, 2);"
               "UPDATE sidecar.checkpoints SET pending_first_offset = 1500,"
               " pending_last_offset = 1599, pending_count = 100, pending_checksum = 1,"
               " pending_write_offset = 99000, pending_since = now() - interval '95 seconds'"
               " WHERE partition = 0 AND topic = 'orders';"
               "UPDATE sidecar.checkpoints SET state = 'error', error = 'replay mismatch: "
               "pending batch 40..41 has 1 record in Kafka, 2 were pended; the records were "
               "probably deleted by retention' WHERE partition = 12;"
               "UPDATE sidecar.checkpoints SET paused = true WHERE topic = 'billing';"
               "INSERT INTO sidecar.leases VALUES"
               " ('p1', 'orders', 0, 'sidecar-a', 3, now(), now(), now() + interval '1 hour'),"
               " ('p1', 'orders', 1, 'sidecar-a', 1, now(), now(), now() + interval '1 hour'),"
               " ('p2', 'billing', 0, 'sidecar-b', 2, now(), now(), now() - interval '1 minute');"
               "INSERT INTO sidecar.partition_stats (pipeline, topic, partition, low_watermark,"
               " high_watermark) VALUES ('p1', 'orders', 0, 0, 2000), ('p1', 'orders', 1, 10, 50),"
               " ('p2', 'billing', 0, 0, 900);"
               "INSERT INTO sidecar.dead_letters (pipeline, topic, partition, \"offset\","
               " envelope, error) VALUES ('p1', 'orders', 12, 40, '{}', 'x'),"
               " ('p1', 'orders', 12, 41, '{}', 'x')");
}

START_TEST(status_table_and_json)
{
    struct tenv t;
    tenv_start(&t, "status", NULL);
    char *out = NULL;
    /* Empty: a header, and a note on stderr. */
    ck_assert_int_eq(sidecar(&t, "status", NULL, &out), 0);
    ck_assert_ptr_nonnull(strstr(out, "PIPELINE"));
    ck_assert_ptr_nonnull(strstr(out, "no checkpoints"));
    free(out);

    seed_rows(t.conn);
    ck_assert_int_eq(sidecar(&t, "status", NULL, &out), 0);
    fprintf(stderr, "%s", out);
    /* Header + 4 rows, columns aligned: every title starts where its cells start or end. */
    char *lines[8];
    int n = 0;
    for (char *l = strtok(out, "\n"); l && n < 8; l = strtok(NULL, "\n"))
        lines[n++] = l;
    ck_assert_int_eq(n, 5);
    static const char *const titles[] = {
        "PIPELINE", "TOPIC",   "PARTITION", "OWNER",  "EPOCH",        "LEASE", "COMMITTED",
        "LAG",      "PENDING", "STATE",     "PAUSED", "DEAD LETTERS", "ERROR"};
    size_t pos[13];
    for (int c = 0; c < 13; c++) {
        char *at = strstr(lines[0], titles[c]);
        ck_assert_msg(at, "no column %s", titles[c]);
        pos[c] = (size_t)(at - lines[0]);
        if (c > 0)
            ck_assert_uint_gt(pos[c], pos[c - 1]);
    }
    /* Left-aligned cells start under their title, right-aligned ones end under it. */
    for (int r = 1; r < n; r++) {
        ck_assert_msg(lines[r][pos[1] - 1] == ' ' && lines[r][pos[1]] != ' ', "row %d: %s", r,
                      lines[r]);
        size_t committed_end = pos[6] + strlen("COMMITTED") - 1;
        ck_assert_msg(lines[r][committed_end] != ' ' && lines[r][committed_end + 1] == ' ',
                      "row %d: COMMITTED not right-aligned: %s", r, lines[r]);
        ck_assert_msg(lines[r][pos[9] - 1] == ' ' && lines[r][pos[9]] != ' ', "row %d: %s", r,
                      lines[r]);
    }
    /* The values. */
    ck_assert_ptr_nonnull(strstr(lines[1], "sidecar-a"));
    ck_assert_ptr_nonnull(strstr(lines[1], "live"));
    ck_assert_ptr_nonnull(strstr(lines[1], "1500..1599 (1m3"));
    ck_assert_msg(strstr(lines[1], " 500 "), "lag 2000 - 1500: %s", lines[1]);
    ck_assert_msg(strstr(lines[2], " 40 "), "lag before the first commit: %s", lines[2]);
    ck_assert_ptr_nonnull(strstr(lines[3], "error"));
    ck_assert_ptr_nonnull(strstr(lines[3], "replay mismatch"));
    ck_assert_msg(strstr(lines[3], "...") && strlen(strstr(lines[3], "replay")) <= 80,
                  "long errors are cut: %s", lines[3]);
    ck_assert_ptr_nonnull(strstr(lines[4], "expired"));
    ck_assert_ptr_nonnull(strstr(lines[4], "yes"));
    /* An expired lease's sample is stale: LAG unknown, not 900 - 7. */
    ck_assert_msg(lines[4][pos[7] + strlen("LAG") - 1] == '-', "lag of an expired lease: %s",
                  lines[4]);
    /* Dead letters waiting for a redrive, right-aligned under their title. */
    size_t dead_end = pos[11] + strlen("DEAD LETTERS") - 1;
    ck_assert_msg(lines[3][dead_end] == '2' && lines[1][dead_end] == '0', "dead letters:\n%s\n%s",
                  lines[1], lines[3]);
    free(out);

    /* --json: one object per partition with every column, for scripts. */
    const char *args[] = {"--json", NULL};
    ck_assert_int_eq(sidecar(&t, "status", args, &out), 0);
    json_error_t jerr;
    json_t *rows = json_loads(out, 0, &jerr);
    ck_assert_msg(json_is_array(rows), "%s: %s", jerr.text, out);
    ck_assert_int_eq(json_array_size(rows), 4);
    json_t *r0 = json_array_get(rows, 0);
    static const char *const keys[] = {"pipeline",
                                       "topic",
                                       "partition",
                                       "owner",
                                       "epoch",
                                       "lease_live",
                                       "lease_expires_at",
                                       "committed_offset",
                                       "committed_write_offset",
                                       "pending_first_offset",
                                       "pending_last_offset",
                                       "pending_count",
                                       "pending_age_seconds",
                                       "high_watermark",
                                       "lag",
                                       "stats_sampled_at",
                                       "state",
                                       "paused",
                                       "error",
                                       "updated_at",
                                       "dead_letters"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        ck_assert_msg(json_object_get(r0, keys[i]), "--json lacks %s", keys[i]);
    ck_assert_int_eq(json_integer_value(json_object_get(r0, "lag")), 500);
    ck_assert(json_is_true(json_object_get(r0, "lease_live")));
    double age = json_number_value(json_object_get(r0, "pending_age_seconds"));
    ck_assert_msg(age >= 95 && age < 200, "pending age %f", age);
    ck_assert(json_is_true(json_object_get(json_array_get(rows, 3), "paused")));
    ck_assert(json_is_null(json_object_get(json_array_get(rows, 1), "committed_offset")));
    json_decref(rows);
    free(out);

    /* Unreachable database: exit 1 with a message naming the server, not the password. */
    char bad[700];
    snprintf(bad, sizeof(bad), "%s/bad.json", hx_tmpdir());
    hx_write_file(bad,
                  "{\"postgres\": {\"dsn\": \"host=127.0.0.1 port=1 user=u password=hunter2\"},"
                  " \"kafka\": {\"bootstrap.servers\": \"x:1\"}, \"pipelines\": [{\"name\": \"p\","
                  " \"topics\": [\"t\"], \"sink\": {\"type\": \"stdout\"}}]}");
    const char *argv[] = {hx_sidecar_bin(), "status", "-c", bad, NULL};
    ck_assert_int_eq(hx_run(argv, NULL, 30000, &out), 1);
    ck_assert_ptr_nonnull(strstr(out, "127.0.0.1:1"));
    ck_assert_ptr_null(strstr(out, "hunter2"));
    free(out);
    PQfinish(t.conn);
}
END_TEST

START_TEST(reset_validates_arguments)
{
    struct tenv t;
    tenv_start(&t, "reset_args", NULL);
    struct {
        const char *args[12];
        const char *want;
    } cases[] = {
        {{"--topic", "orders", "--partition", "0", "--to-offset", "5", NULL}, "--pipeline"},
        {{"--pipeline", "p1", "--partition", "0", "--to-offset", "5", NULL}, "--topic"},
        {{"--pipeline", "p1", "--topic", "orders", "--to-offset", "5", NULL}, "--partition"},
        {{"--pipeline", "p1", "--topic", "orders", "--partition", "0", NULL}, "--to-offset"},
        {{"--pipeline", "nope", "--topic", "orders", "--partition", "0", "--to-offset", "5", NULL},
         "no pipeline \"nope\""},
        {{"--pipeline", "p2", "--topic", "orders", "--partition", "0", "--to-offset", "5", NULL},
         "its topics: billing"},
        {{"--pipeline", "p1", "--topic", "orders", "--partition", "-1", "--to-offset", "5", NULL},
         "partition number"},
        {{"--pipeline", "p1", "--topic", "orders", "--partition", "x", "--to-offset", "5", NULL},
         "partition number"},
        {{"--pipeline", "p1", "--topic", "orders", "--partition", "0", "--to-offset", "-5", NULL},
         "earliest or latest"},
        {{"--pipeline", "p1", "--topic", "orders", "--partition", "0", "--to-offset", "soon", NULL},
         "earliest or latest"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out = NULL;
        int rc = sidecar(&t, "reset", cases[i].args, &out);
        ck_assert_msg(rc == 2 && strstr(out, cases[i].want), "case %zu: exit %d: %s", i, rc, out);
        free(out);
    }
    /* "configured: p1, p2" names what exists. */
    char *out = NULL;
    const char *a[] = {"--pipeline", "p3",          "--topic", "x", "--partition",
                       "0",          "--to-offset", "1",       NULL};
    ck_assert_int_eq(sidecar(&t, "reset", a, &out), 2);
    ck_assert_ptr_nonnull(strstr(out, "configured: p1, p2"));
    free(out);
    /* --help says what happens to output already written, per sink. */
    const char *h[] = {"--help", NULL};
    ck_assert_int_eq(sidecar(&t, "reset", h, &out), 0);
    ck_assert_msg(strstr(out, "file:") && strstr(out, "http:") && strstr(out, "postgres:") &&
                      strstr(out, "Idempotency-Key"),
                  "%s", out);
    free(out);
    ck_assert_int_eq(hx_pg_int(t.conn, "SELECT count(*) FROM sidecar.events", 0, NULL), 0);
    PQfinish(t.conn);
}
END_TEST

START_TEST(reset_refuses_live_lease_unless_forced)
{
    /* A reset asks Kafka for the partition and its log first: offsets 0..1999 exist. */
    struct hx_mock m;
    const char *topics[] = {"orders:13", "audit:4"};
    hx_mock_start(&m, 1, topics, 2);
    hx_produce_seq(m.bootstrap, "orders", 1, 0, 2000);
    struct tenv t;
    tenv_start(&t, "reset_lease", m.bootstrap);
    seed_rows(t.conn);
    const char *args[] = {"--pipeline", "p1",          "--topic", "orders", "--partition",
                          "0",          "--to-offset", "100",     NULL,     NULL};
    char *out = NULL;
    ck_assert_int_eq(sidecar(&t, "reset", args, &out), 1);
    ck_assert_msg(strstr(out, "live lease") && strstr(out, "sidecar-a") && strstr(out, "--force"),
                  "%s", out);
    free(out);
    ck_assert_int_eq(hx_pg_int(t.conn,
                               "SELECT committed_offset FROM sidecar.checkpoints WHERE"
                               " topic = 'orders' AND partition = 0",
                               0, NULL),
                     1500);
    ck_assert_int_eq(hx_pg_int(t.conn, "SELECT count(*) FROM sidecar.events", 0, NULL), 0);

    args[8] = "--force";
    ck_assert_int_eq(sidecar(&t, "reset", args, &out), 0);
    fprintf(stderr, "%s", out);
    ck_assert_msg(strstr(out, "committed offset 1500 -> 100"), "%s", out);
    ck_assert_msg(strstr(out, "dropped the pending batch 1500..1599"), "%s", out);
    ck_assert_msg(strstr(out, "committed_write_offset 99000"), "%s", out);
    free(out);
    PGresult *res = PQexec(t.conn, "SELECT committed_offset, pending_first_offset IS NULL, state"
                                   " FROM sidecar.checkpoints WHERE topic = 'orders'"
                                   " AND partition = 0");
    ck_assert_str_eq(PQgetvalue(res, 0, 0), "100");
    ck_assert_str_eq(PQgetvalue(res, 0, 1), "t");
    PQclear(res);
    ck_assert_int_eq(hx_pg_int(t.conn,
                               "SELECT count(*) FROM sidecar.events WHERE kind = 'reset' AND"
                               " (detail->>'previous_committed_offset')::bigint = 1500 AND"
                               " (detail->>'force')::boolean",
                               0, NULL),
                     1);

    /* An expired lease needs no --force; the error state is cleared. */
    const char *a2[] = {"--pipeline", "p1",          "--topic", "orders", "--partition",
                        "12",         "--to-offset", "0",       NULL};
    ck_assert_int_eq(sidecar(&t, "reset", a2, &out), 0);
    ck_assert_msg(strstr(out, "42 -> 0") && strstr(out, "cleared the error state"), "%s", out);
    free(out);
    ck_assert_int_eq(hx_pg_int(t.conn,
                               "SELECT count(*) FROM sidecar.checkpoints WHERE partition = 12"
                               " AND state = 'ok' AND error IS NULL",
                               0, NULL),
                     1);
    /* A partition without a checkpoint (never owned) is refused: a reset creates no row. */
    const char *a3[] = {"--pipeline", "p1",          "--topic", "audit", "--partition",
                        "3",          "--to-offset", "0",       NULL};
    ck_assert_int_eq(sidecar(&t, "reset", a3, &out), 2);
    ck_assert_msg(strstr(out, "has no checkpoint for audit[3]"), "%s", out);
    free(out);
    ck_assert_int_eq(hx_pg_int(t.conn, "SELECT count(*) FROM sidecar.checkpoints", 0, NULL), 4);
    PQfinish(t.conn);
    hx_mock_stop(&m);
}
END_TEST

START_TEST(reset_to_earliest_and_latest)
{
    struct hx_mock m;
    const char *topics[] = {"orders:2"};
    hx_mock_start(&m, 1, topics, 1);
    hx_produce_seq(m.bootstrap, "orders", 2, 0, 50);
    hx_produce_seq(m.bootstrap, "orders", 1, 50, 7); /* partition 0 only: 57 there */
    struct tenv t;
    tenv_start(&t, "reset_kafka", m.bootstrap);
    hx_pg_exec(t.conn,
               "INSERT INTO sidecar.checkpoints (pipeline, topic, partition,"
               " committed_offset) VALUES ('p1', 'orders', 0, 30), ('p1', 'orders', 1, 30)");
    char *out = NULL;
    const char *a[] = {"--pipeline", "p1",          "--topic", "orders", "--partition",
                       "0",          "--to-offset", "latest",  NULL};
    ck_assert_int_eq(sidecar(&t, "reset", a, &out), 0);
    ck_assert_msg(strstr(out, "30 -> 57 (latest"), "%s", out);
    free(out);
    const char *b[] = {"--pipeline", "p1",          "--topic",  "orders", "--partition",
                       "1",          "--to-offset", "earliest", NULL};
    ck_assert_int_eq(sidecar(&t, "reset", b, &out), 0);
    ck_assert_msg(strstr(out, "30 -> 0 (earliest"), "%s", out);
    free(out);
    const char *c[] = {"--pipeline", "p1",          "--topic", "orders", "--partition",
                       "1",          "--to-offset", "latest",  NULL};
    ck_assert_int_eq(sidecar(&t, "reset", c, &out), 0);
    ck_assert_msg(strstr(out, "0 -> 50 (latest"), "%s", out);
    free(out);
    PGresult *res = PQexec(t.conn, "SELECT committed_offset FROM sidecar.checkpoints"
                                   " ORDER BY partition");
    ck_assert_str_eq(PQgetvalue(res, 0, 0), "57");
    ck_assert_str_eq(PQgetvalue(res, 1, 0), "50");
    PQclear(res);
    /* A partition Kafka does not have: exit 2, nothing changed. */
    const char *d[] = {"--pipeline", "p1",          "--topic", "orders", "--partition",
                       "9",          "--to-offset", "latest",  NULL};
    ck_assert_int_eq(sidecar(&t, "reset", d, &out), 2);
    ck_assert_msg(strstr(out, "topic \"orders\" has 2 partitions (0..1): there is no partition 9"),
                  "%s", out);
    free(out);
    hx_mock_stop(&m);
    /* Kafka unreachable: exit 1, nothing is reset unchecked; psql's reset_checkpoint() checks
     * against the last sample (the command stored Kafka's answer as one). */
    const char *e[] = {"--pipeline", "p1",          "--topic", "orders", "--partition",
                       "0",          "--to-offset", "3",       NULL};
    ck_assert_int_eq(sidecar(&t, "reset", e, &out), 1);
    ck_assert_msg(strstr(out, "could not read the metadata") && strstr(out, "reset_checkpoint()"),
                  "%s", out);
    free(out);
    hx_pg_exec(t.conn, "SELECT sidecar.reset_checkpoint('p1', 'orders', 0, 3)");
    PGresult *bad = PQexec(t.conn, "SELECT sidecar.reset_checkpoint('p1', 'orders', 0, 58)");
    ck_assert_msg(strstr(PQresultErrorMessage(bad), "past the log end offset 57"), "%s",
                  PQresultErrorMessage(bad));
    PQclear(bad);
    PQfinish(t.conn);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("status");
    TCase *tc = tcase_create("status");
    tcase_add_unchecked_fixture(tc, pg_setup, pg_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, status_table_and_json);
    tcase_add_test(tc, reset_validates_arguments);
    tcase_add_test(tc, reset_refuses_live_lease_unless_forced);
    tcase_add_test(tc, reset_to_earliest_and_latest);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
