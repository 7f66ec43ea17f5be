/*
 * check_registry_crash.c - invariants I1 and I6 with value_format avro: two
 * `sidecar run` processes share four partitions of Avro orders (written by
 * python3-avro, framed with schema id 1) and deliver them to the http sink
 * while the test SIGKILLs them at random, failpoints kill them between
 * pend and write and between write and commit, and the Schema Registry
 * stand-in goes down (503) now and then.  Each restarted process starts
 * with an empty schema cache, so replays decode again from the registry.
 *
 * At the end: every Idempotency-Key's bodies are byte-identical across
 * retries and replays (a replay wrote the same bytes, I1), every record
 * was accepted exactly once in offset order (I6), and each accepted record
 * carries the decoded JSON of its order.
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "receiver.h"
#include "registry.h"
#include "scx_chaos.h"

#define NPARTS       4
#define CHUNKS       6
#define MAX_CHUNKS   40  /* 40 x 150 x 4 = 24,000 records at most */
#define PER_CHUNK    150 /* per partition: 6 x 150 x 4 = 3,600 records */
#define INSTANCES    2
#define MIN_KILLS    10
#define MIN_REPEATED 3 /* keys sent more than once */
/* Records per partition in a backlog round (scx_chaos_backlog()). */
#define BACKLOG 600

/* Order number of (partition, offset): each partition has its own range. */
static int64_t order_of(int32_t p, int64_t offset)
{
    return (int64_t)p * 100000 + offset;
}

/* struct scx_chaos.produce: count orders per partition from offset first, framed with id 1. */
static void produce_orders(struct scx_chaos *c, int64_t first, int64_t count)
{
    struct hx_record *recs = calloc((size_t)count, sizeof(*recs));
    for (int32_t p = 0; p < NPARTS; p++) {
        char **values;
        size_t *lens;
        reg_orders(order_of(p, first), count, 1, &values, &lens);
        for (int64_t i = 0; i < count; i++)
            recs[i] = (struct hx_record){
                .topic = "orders", .partition = p, .value = values[i], .value_len = lens[i]};
        hx_produce(c->e->mock.bootstrap, recs, (size_t)count);
        for (int64_t i = 0; i < count; i++)
            free(values[i]);
        free(values);
        free(lens);
    }
    free(recs);
}

/* scx_chaos_until(): MIN_REPEATED requests repeated a key (batches sent twice). */
static bool repeated_enough(struct scx_chaos *c, void *rx)
{
    (void)c;
    return rx_repeated_keys(rx) >= MIN_REPEATED;
}

/* Every accepted record's value is its order's JSON, byte for byte. */
static int64_t check_values(struct rx *rx)
{
    int64_t checked = 0;
    rx_lock(rx);
    for (size_t i = 0; i < rx_nrequests(rx); i++) {
        const struct rx_request *q = rx_request(rx, i);
        if (!q->accepted_first)
            continue;
        char *body = strdup(q->body);
        for (char *line = body, *nl; line && *line; line = nl ? nl + 1 : NULL) {
            nl = strchr(line, '\n');
            if (nl)
                *nl = '\0';
            json_t *j = json_loads(line, 0, NULL);
            ck_assert_msg(j != NULL, "not an envelope: %s", line);
            int32_t p = (int32_t)json_integer_value(json_object_get(j, "partition"));
            int64_t off = json_integer_value(json_object_get(j, "offset"));
            char want[1200];
            snprintf(want, sizeof(want),
                     ",\"value\":%s,\"headers\":", reg_order_json(order_of(p, off)));
            ck_assert_msg(strstr(line, want) != NULL, "partition %d offset %" PRId64 ": %s", p, off,
                          line);
            json_decref(j);
            checked++;
        }
        free(body);
    }
    rx_unlock(rx);
    return checked;
}

START_TEST(test_avro_crash_exactly_once)
{
    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 1, topics, 1);
    srand((unsigned)time(NULL));
    struct rx *rx = rx_start();
    struct reg *r = reg_start(NULL, NULL);
    char *schema = reg_order_schema();
    reg_add(r, 1, schema, NULL);

    char sink[512], top[256];
    snprintf(sink, sizeof(sink),
             "{\"type\":\"http\",\"url\":\"%s\",\"timeout_ms\":2000,\"on_error\":\"stop\","
             "\"retry\":{\"max_attempts\":4,\"initial_backoff_ms\":50,\"max_backoff_ms\":500}}",
             rx_url(rx));
    snprintf(top, sizeof(top), "  \"schema_registry\": {\"url\": \"%s\", \"timeout_ms\": 1000}",
             reg_url(r));
    struct scx_opts o = {.max_records = 25,
                         .max_wait_ms = 10,
                         .sink = sink,
                         .extra_top = top,
                         .extra_pipeline = "    \"value_format\": \"avro\""};
    struct scx_inst in[INSTANCES] = {
        {.name = "sc-1", .failpoints = "after_pend=kill@0.1"},
        {.name = "sc-2", .failpoints = "after_write=kill@0.2"},
    };
    /* Its own kill loop (the registry goes away, Avro records): scx_chaos for the rest. */
    struct scx_chaos c;
    scx_chaos_init(&c, &e, in, INSTANCES, NPARTS);
    c.produce = produce_orders;
    scx_chaos_start(&c, &o);

    int chunk = 0, outages = 0;
    /* Until enough kills happened and a few batches were sent twice (more records if need
     * be, up to MAX_CHUNKS: whether a kill lands inside a batch is chance, and the backlog
     * rounds after the calm make it happen if it did not). */
    while (chunk < CHUNKS || c.kills + c.self_kills < MIN_KILLS ||
           (rx_repeated_keys(rx) < MIN_REPEATED && chunk < MAX_CHUNKS)) {
        if (rand() % 3 == 0) { /* the registry away while new records arrive */
            reg_set_mode(r, REG_DOWN);
            outages++;
        }
        if (chunk < CHUNKS || rx_repeated_keys(rx) < MIN_REPEATED) {
            produce_orders(&c, c.produced, PER_CHUNK);
            c.produced += PER_CHUNK;
            chunk++;
        }
        usleep((useconds_t)(1000 + rand() % 2000) * 1000);
        reg_set_mode(r, REG_SERVE);
        scx_chaos_restart_dead(&c, true);
        if (rand() % 2) /* let them deliver (and hit their failpoints) for a while */
            continue;
        scx_chaos_kill_one(&c);
    }

    scx_chaos_settle(&c);
    /* Whether a kill lands between a write and its commit is chance: if too few did, sc-1
     * kills itself after its first write, with a backlog waiting. */
    scx_chaos_until(&c, repeated_enough, rx, BACKLOG, "after_write=kill#1");

    long long replays = scx_chaos_replays(&c);
    long repeated = rx_repeated_keys(rx);
    fprintf(stderr,
            "avro crash test: %d kills by the test (%d of a working instance), %d at failpoints, "
            "%d registry outages, "
            "%" PRId64 " records per partition; %zu requests (%ld repeating a key), %lld replayed "
            "batches, %ld schema requests (%d rounds started with a backlog)\n",
            c.kills, c.kills_working, c.self_kills, outages, c.produced, rx_nrequests(rx), repeated,
            replays, reg_requests(r, 1), c.backlog_rounds);

    /* Byte-identical bodies per key, every record once and in order... */
    struct rx_verify_opts v = {
        .pipeline = "p1", .topic = "orders", .nparts = NPARTS, .count = c.produced};
    ck_assert_int_eq(rx_verify(rx, &v), c.produced * NPARTS);
    ck_assert_int_eq(rx_body_mismatches(rx), 0);
    /* ...each one its order's decoded JSON. */
    ck_assert_int_eq(check_values(rx), c.produced * NPARTS);

    ck_assert_int_ge(c.kills + c.self_kills, MIN_KILLS);
    ck_assert_int_ge(repeated, MIN_REPEATED);
    ck_assert_int_gt(replays, 0);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL), 0);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.checkpoints WHERE "
                               "pending_first_offset IS NOT NULL OR state <> 'ok'",
                               0, NULL),
                     0);
    free(schema);
    reg_stop(r);
    rx_stop(rx);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("avro crash");
    TCase *tc = tcase_create("kill -9 with avro values");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_avro_crash_exactly_once);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
