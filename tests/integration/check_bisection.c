/*
 * check_bisection.c - how many sink calls it takes to find the rejected
 * records of one batch of 5,000 (the http and postgres sinks bisect a
 * rejected batch, left half first, down to single records).
 *
 * Pure bisection costs 2n - 1 calls for a batch whose records are all bad.
 * Once the left half of a split turns out dense with rejected records, the
 * right half, if rejected as a whole, is sent record by record instead
 * (sc_sink_bisect_dense()): about n calls.  A batch with a few bad records
 * keeps the bisection's few calls.  Each case checks the count and that
 * exactly the bad records became dead letters while every other record
 * was delivered once.
 */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "receiver.h"
#include "scx.h"

#define N 5000 /* records, all in one batch */

enum pattern {
    ALL_BAD,
    EVERY_THIRD, /* offsets divisible by 3 */
    THREE_BAD,   /* offsets 17, 2600 and 4999 */
};

static const char *const pattern_names[] = {"all bad", "every third bad", "three bad"};

static bool is_bad(enum pattern pat, int64_t off)
{
    switch (pat) {
    case ALL_BAD:
        return true;
    case EVERY_THIRD:
        return off % 3 == 0;
    case THREE_BAD:
        return off == 17 || off == 2600 || off == N - 1;
    }
    return false;
}

static bool skip_bad(int32_t partition, int64_t offset, void *arg)
{
    (void)partition;
    return is_bad(*(const enum pattern *)arg, offset);
}

static int64_t bad_count(enum pattern pat)
{
    int64_t n = 0;
    for (int64_t i = 0; i < N; i++)
        n += is_bad(pat, i);
    return n;
}

/* N records on partition 0; a bad one's value holds "bad":true. */
static void produce(const char *bootstrap, enum pattern pat)
{
    static char keys[N][16], values[N][48];
    struct hx_record *recs = calloc(N, sizeof(*recs));
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%d", i);
        snprintf(values[i], sizeof(values[i]), "{\"seq\":%d%s}", i,
                 is_bad(pat, i) ? ",\"bad\":true" : "");
        recs[i] = (struct hx_record){.topic = "orders",
                                     .partition = 0,
                                     .key = keys[i],
                                     .key_len = strlen(keys[i]),
                                     .value = values[i],
                                     .value_len = strlen(values[i])};
    }
    hx_produce(bootstrap, recs, N);
    free(recs);
}

/* Starts a sidecar whose one batch holds all N records; returns its pid. */
static pid_t start(struct scx_env *e, const char *sink, char *log, size_t logsize)
{
    /* max_wait_ms: however the fetches split them, the N records make one batch. */
    struct scx_opts o = {.max_records = N, .max_wait_ms = 10000, .workers = 1, .sink = sink};
    const char *cfg = scx_config(e, "sc-1", &o);
    scx_migrate(cfg);
    snprintf(log, logsize, "%s/sc-1.log", e->dir);
    return scx_start(e, cfg, "sc-1", NULL);
}

/* The batches committed for partition 0 (a batch is one commit event). */
static long long batches(PGconn *c)
{
    return hx_pg_int(c, "SELECT count(*) FROM sidecar.events WHERE kind = 'commit'", 0, NULL);
}

static void check_dead_letters(PGconn *c, enum pattern pat)
{
    ck_assert_int_eq(hx_pg_int(c, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL),
                     bad_count(pat));
    /* Exactly the bad ones. */
    ck_assert_int_eq(hx_pg_int(c,
                               "SELECT count(*) FROM sidecar.dead_letters WHERE"
                               " envelope->'value'->>'bad' IS NULL",
                               0, NULL),
                     0);
}

START_TEST(test_http_calls)
{
    enum pattern pat = (enum pattern)_i;
    struct scx_env e;
    const char *topics[] = {"orders:1"};
    scx_env_start(&e, 1, topics, 1);
    struct rx *rx = rx_start();
    rx_set_faults(rx, &(struct rx_faults){.reject_marker = "\"bad\":true", .reject_status = 422});
    char sink[256];
    snprintf(sink, sizeof(sink), "{\"type\":\"http\",\"url\":\"%s\"}", rx_url(rx));
    produce(e.mock.bootstrap, pat);
    char log[700];
    pid_t pid = start(&e, sink, log, sizeof(log));
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 1, N, 180000),
                  "not committed; log:\n%s", scx_log_tail(log, 3000));
    scx_stop(pid, 20000);

    long calls = (long)rx_nrequests(rx);
    long long nb = batches(e.conn);
    int64_t bad = bad_count(pat);
    fprintf(stderr, "http sink, %s (%" PRId64 " of %d): %ld requests in %lld batch(es)\n",
            pattern_names[pat], bad, N, calls, nb);
    ck_assert_int_eq(nb, 1);
    check_dead_letters(e.conn, pat);
    struct rx_verify_opts v = {.pipeline = "p1",
                               .topic = "orders",
                               .nparts = 1,
                               .count = N,
                               .skip = skip_bad,
                               .skip_arg = &pat};
    ck_assert_int_eq(rx_verify(rx, &v), N - bad);
    switch (pat) {
    case ALL_BAD: /* 2n - 1 = 9,999 by bisection alone */
        ck_assert_int_le(calls, N + N / 20);
        break;
    case EVERY_THIRD: /* about 1.6n by bisection alone */
        ck_assert_int_le(calls, N + N / 10);
        break;
    case THREE_BAD: /* about 2 x 3 x log2(n) */
        ck_assert_int_le(calls, 100);
        break;
    }
    rx_stop(rx);
    scx_env_stop(&e);
}
END_TEST

/* INSERT statements into app.events, counted by a statement trigger (rollbacks too). */
static void create_counted_table(PGconn *c, enum pattern pat)
{
    hx_pg_exec(c, "CREATE SCHEMA app");
    hx_pg_exec(c, "CREATE TABLE app.events (topic text NOT NULL, partition int NOT NULL,"
                  " \"offset\" bigint NOT NULL, key text, value jsonb, headers jsonb,"
                  " ts timestamptz, PRIMARY KEY (topic, partition, \"offset\"))");
    hx_pg_exec(c, pat == ALL_BAD ? "ALTER TABLE app.events ADD CHECK (false)"
                                 : "ALTER TABLE app.events ADD CHECK (value->>'bad' IS NULL)");
    hx_pg_exec(c, "CREATE SEQUENCE app.calls");
    hx_pg_exec(c, "CREATE FUNCTION app.count_call() RETURNS trigger LANGUAGE plpgsql AS"
                  " $$ BEGIN PERFORM nextval('app.calls'); RETURN NULL; END $$");
    hx_pg_exec(c, "CREATE TRIGGER count_call BEFORE INSERT ON app.events FOR EACH STATEMENT"
                  " EXECUTE FUNCTION app.count_call()");
}

START_TEST(test_postgres_calls)
{
    enum pattern pat = (enum pattern)_i;
    struct scx_env e;
    const char *topics[] = {"orders:1"};
    scx_env_start(&e, 1, topics, 1);
    create_counted_table(e.conn, pat);
    produce(e.mock.bootstrap, pat);
    char log[700];
    pid_t pid = start(&e, "{\"type\": \"postgres\", \"table\": \"app.events\"}", log, sizeof(log));
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 1, N, 180000),
                  "not committed; log:\n%s", scx_log_tail(log, 3000));
    scx_stop(pid, 20000);

    long long calls = hx_pg_int(e.conn, "SELECT last_value FROM app.calls", 0, NULL);
    long long nb = batches(e.conn);
    int64_t bad = bad_count(pat);
    fprintf(stderr,
            "postgres sink, %s (%" PRId64 " of %d): %lld INSERT statements in %lld "
            "batch(es)\n",
            pattern_names[pat], bad, N, calls, nb);
    ck_assert_int_eq(nb, 1);
    check_dead_letters(e.conn, pat);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM app.events", 0, NULL), N - bad);
    switch (pat) {
    case ALL_BAD:
        ck_assert_int_le(calls, N + N / 20);
        break;
    case EVERY_THIRD:
        ck_assert_int_le(calls, N + N / 10);
        break;
    case THREE_BAD:
        ck_assert_int_le(calls, 100);
        break;
    }
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("bisection");
    TCase *tc = tcase_create("bisection");
    tcase_set_timeout(tc, 400);
    tcase_add_loop_test(tc, test_http_calls, ALL_BAD, THREE_BAD + 1);
    tcase_add_loop_test(tc, test_postgres_calls, ALL_BAD, THREE_BAD + 1);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
