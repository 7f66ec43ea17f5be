/*
 * check_harness - the harness every integration test stands on: a
 * throwaway PostgreSQL that starts, restarts and dies with its owner, the
 * kafka-mock cluster and its control commands, kafka-produce and
 * hx_produce writing exactly the bytes asked for, and the process helpers.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "hx.h"

/* Started once in the runner (unchecked fixtures): they must outlive each forked test. */
static struct hx_pg pg;
static struct hx_mock mock;

static void pg_setup(void)
{
    hx_pg_start(&pg);
}

static void pg_teardown(void)
{
    hx_pg_stop(&pg);
}

static void mock_setup(void)
{
    static const char *const topics[] = {"gen:3", "lines:2", "api:2", "faults:4"};

    hx_mock_start(&mock, 3, topics, 4);
}

static void mock_teardown(void)
{
    hx_mock_stop(&mock);
}

static bool path_gone(void *arg)
{
    return access(arg, F_OK) != 0 && errno == ENOENT;
}

/* ---- PostgreSQL ------------------------------------------------------------------------ */

START_TEST(test_pg_query)
{
    PGconn *c = hx_pg_connect(pg.dsn);
    const char *params[] = {"a", "b"};
    const char *dir = hx_tmpdir();
    char *v;

    ck_assert_int_eq(hx_pg_int(c, "SELECT 40 + 2", 0, NULL), 42);
    v = hx_pg_value(c, "SELECT $1::text || $2::text", 2, params);
    ck_assert_str_eq(v, "ab");
    free(v);
    ck_assert_ptr_null(hx_pg_value(c, "SELECT NULL", 0, NULL));
    ck_assert_ptr_null(hx_pg_value(c, "SELECT 1 WHERE false", 0, NULL));
    v = hx_pg_value(c, "SHOW fsync", 0, NULL);
    ck_assert_str_eq(v, "off");
    free(v);
    ck_assert_int_eq(hx_pg_int(c, "SHOW max_connections", 0, NULL), 300);

    /* For the next test: this table must survive us, the tmpdir must not. */
    hx_pg_exec(c, "CREATE TABLE hx_survivor (tmpdir text)");
    free(hx_pg_value(c, "INSERT INTO hx_survivor VALUES ($1) RETURNING 1", 1, &dir));
    ck_assert_int_eq(access(dir, F_OK), 0);
    PQfinish(c);
}
END_TEST

/* Runs after test_pg_query, in a new process: fixture servers survive, test resources not. */
START_TEST(test_pg_survives_tests)
{
    PGconn *c = hx_pg_connect(pg.dsn);
    char *dir = hx_pg_value(c, "SELECT tmpdir FROM hx_survivor", 0, NULL);

    ck_assert_ptr_nonnull(dir);
    ck_assert_msg(hx_wait_until(path_gone, dir, 10000),
                  "the previous test's tmpdir %s still exists", dir);
    free(dir);
    PQfinish(c);
}
END_TEST

START_TEST(test_pg_create_db)
{
    char dsn[512];
    PGconn *c;
    char *name;

    /* A name that needs quoting both in SQL and in the conninfo string. */
    hx_pg_create_db(&pg, "hx db's", dsn, sizeof(dsn));
    c = hx_pg_connect(dsn);
    name = hx_pg_value(c, "SELECT current_database()", 0, NULL);
    ck_assert_str_eq(name, "hx db's");
    free(name);
    hx_pg_exec(c, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    PQfinish(c);
}
END_TEST

START_TEST(test_pg_restart_keeps_data)
{
    PGconn *c = hx_pg_connect(pg.dsn);
    pid_t before = hx_pg_pid(&pg);
    PGconn *down;

    ck_assert_int_gt(before, 0);
    hx_pg_exec(c, "CREATE TABLE crash (x int); INSERT INTO crash SELECT generate_series(1, 3)");
    PQfinish(c);

    /* A crash: committed rows must be there after recovery, with a new postmaster. */
    hx_pg_restart(&pg, true);
    ck_assert_int_gt(hx_pg_pid(&pg), 0);
    ck_assert_int_ne(hx_pg_pid(&pg), before);
    c = hx_pg_connect(pg.dsn);
    ck_assert_int_eq(hx_pg_int(c, "SELECT count(*) FROM crash", 0, NULL), 3);
    PQfinish(c);

    /* An outage: nothing listens until the server is started again on the same port. */
    hx_pg_server_stop(&pg, true);
    ck_assert_int_eq(hx_pg_pid(&pg), -1);
    down = PQconnectdb(pg.dsn);
    ck_assert_int_ne(PQstatus(down), CONNECTION_OK);
    PQfinish(down);
    hx_pg_server_start(&pg);
    hx_pg_restart(&pg, false);
    c = hx_pg_connect(pg.dsn);
    ck_assert_int_eq(hx_pg_int(c, "SELECT count(*) FROM crash", 0, NULL), 3);
    PQfinish(c);
}
END_TEST

/* ---- reading Kafka back ------------------------------------------------------------------- */

#define MAX_MSGS    1024
#define MAX_HEADERS 8

/* A consumed record, copied out of librdkafka (see consume_all). */
struct rec {
    int32_t partition;
    int64_t offset;
    int64_t timestamp;
    char *key, *value; /* NULL: null key / value */
    size_t key_len, value_len;
    size_t nheaders;
    struct {
        char *name, *value; /* value NULL: null header */
        size_t len;
    } headers[MAX_HEADERS];
};

static char *dup_bytes(const void *p, size_t len)
{
    char *d;

    if (p == NULL)
        return NULL;
    d = malloc(len + 1);
    ck_assert_ptr_nonnull(d);
    memcpy(d, p, len);
    d[len] = '\0';
    return d;
}

static void rec_copy(struct rec *r, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *hdrs = NULL;
    rd_kafka_timestamp_type_t tstype;

    memset(r, 0, sizeof(*r));
    r->partition = m->partition;
    r->offset = m->offset;
    r->timestamp = rd_kafka_message_timestamp(m, &tstype);
    r->key = dup_bytes(m->key, m->key_len);
    r->key_len = m->key_len;
    r->value = dup_bytes(m->payload, m->len);
    r->value_len = m->len;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *name;
        const void *v;
        size_t len;

        for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &v, &len) == 0; i++) {
            ck_assert_uint_lt(i, MAX_HEADERS);
            r->headers[i].name = dup_bytes(name, strlen(name));
            r->headers[i].value = dup_bytes(v, len);
            r->headers[i].len = len;
            r->nheaders = i + 1;
        }
    }
}

static void free_recs(struct rec *recs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(recs[i].key);
        free(recs[i].value);
        for (size_t h = 0; h < recs[i].nheaders; h++) {
            free(recs[i].headers[h].name);
            free(recs[i].headers[h].value);
        }
    }
}

/*
 * Reads every partition of topic from the beginning to its end (no group:
 * assign() avoids the mock's ~3 s group rebalance), in partition order.
 * Records are copied out and every message destroyed before the consumer:
 * rd_kafka_destroy() hangs forever while a message is still alive.
 */
static size_t consume_all(const char *topic, int nparts, struct rec *out)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(nparts);
    struct rec *tmp = calloc(MAX_MSGS, sizeof(*tmp));
    size_t n = 0, k = 0;
    int eofs = 0;
    char errstr[512];
    int64_t deadline = hx_now_ms() + 30000;
    rd_kafka_t *rk;

    ck_assert_ptr_nonnull(tmp);
    ck_assert(rd_kafka_conf_set(conf, "bootstrap.servers", mock.bootstrap, errstr,
                                sizeof(errstr)) == RD_KAFKA_CONF_OK);
    ck_assert(rd_kafka_conf_set(conf, "group.id", "hx-check", errstr, sizeof(errstr)) ==
              RD_KAFKA_CONF_OK);
    ck_assert(rd_kafka_conf_set(conf, "enable.partition.eof", "true", errstr, sizeof(errstr)) ==
              RD_KAFKA_CONF_OK);
    ck_assert(rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof(errstr)) ==
              RD_KAFKA_CONF_OK);
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    ck_assert_msg(rk != NULL, "consumer: %s", errstr);
    rd_kafka_poll_set_consumer(rk);
    for (int p = 0; p < nparts; p++)
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    ck_assert_int_eq(rd_kafka_assign(rk, parts), 0);
    rd_kafka_topic_partition_list_destroy(parts);

    while (eofs < nparts) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);

        ck_assert_msg(hx_now_ms() < deadline, "%s: only %d of %d partitions read to the end", topic,
                      eofs, nparts);
        if (m == NULL)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            eofs++;
        } else {
            ck_assert_msg(m->err == 0, "consume %s: %s", topic, rd_kafka_message_errstr(m));
            ck_assert_uint_lt(n, MAX_MSGS);
            rec_copy(&tmp[n++], m);
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    /* Partition order, offsets ascending within each (the fetch order interleaves them). */
    for (int p = 0; p < nparts; p++) {
        for (size_t i = 0; i < n; i++) {
            if (tmp[i].partition == p)
                out[k++] = tmp[i];
        }
    }
    free(tmp);
    return k;
}

static void assert_bytes(const void *got, size_t got_len, const void *want, size_t want_len,
                         const char *what)
{
    ck_assert_msg(got_len == want_len && (want_len == 0 || memcmp(got, want, want_len) == 0),
                  "%s: got %zu bytes \"%.*s\", want %zu bytes \"%.*s\"", what, got_len,
                  (int)got_len, got ? (const char *)got : "", want_len, (int)want_len,
                  want ? (const char *)want : "");
}

/* Asserts header idx of r is name = value (value NULL: a null header). */
static void assert_header(const struct rec *r, size_t idx, const char *name, const void *value,
                          size_t len)
{
    ck_assert_uint_lt(idx, r->nheaders);
    ck_assert_str_eq(r->headers[idx].name, name);
    if (value == NULL)
        ck_assert_ptr_null(r->headers[idx].value);
    else
        assert_bytes(r->headers[idx].value, r->headers[idx].len, value, len, name);
}

/* ---- kafka-mock and producing -------------------------------------------------------------- */

START_TEST(test_mock_commands)
{
    char reply[512];

    ck_assert_ptr_nonnull(strchr(mock.bootstrap, ','));
    ck_assert_int_eq(hx_mock_cmd(&mock, reply, sizeof(reply), "bootstrap"), 0);
    ck_assert_str_eq(reply, mock.bootstrap);
    ck_assert_int_eq(hx_mock_cmd(&mock, reply, sizeof(reply), "help"), 0);
    ck_assert_ptr_nonnull(strstr(reply, "watermarks TOPIC PARTITION"));

    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "broker down 1"), 0);
    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "broker up 1"), 0);
    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "broker down all"), 0);
    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "broker up all"), 0);
    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "rtt 2 50"), 0);
    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "rtt all 0"), 0);
    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "errors Fetch NOT_LEADER_FOR_PARTITION 7"), 0);
    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "clear-errors fetch"), 0);
    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "broker-errors 2 OffsetCommit _TRANSPORT@10"), 0);
    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "coordinator group g1 3"), 0);
    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "topic create extra 2 1"), 0);
    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "leader faults 0 2"), 0);

    /* Produced through the moved leader, while a Produce error is injected: still exact. */
    ck_assert_int_eq(hx_mock_cmd(&mock, NULL, 0, "errors Produce NOT_LEADER_FOR_PARTITION"), 0);
    hx_produce_seq(mock.bootstrap, "faults", 1, 0, 25);
    ck_assert_int_eq(hx_mock_cmd(&mock, reply, sizeof(reply), "watermarks faults 0"), 0);
    ck_assert_str_eq(reply, "0 25");
    ck_assert_int_eq(hx_mock_cmd(&mock, reply, sizeof(reply), "watermarks faults 1"), 0);
    ck_assert_str_eq(reply, "0 0");

    ck_assert_int_eq(hx_mock_cmd(&mock, reply, sizeof(reply), "frobnicate 1"), -1);
    ck_assert_str_eq(reply, "unknown command \"frobnicate\" (try help)");
    ck_assert_int_eq(hx_mock_cmd(&mock, reply, sizeof(reply), "broker down 9"), -1);
    ck_assert_int_eq(hx_mock_cmd(&mock, reply, sizeof(reply), "errors Fetch NO_SUCH_ERROR"), -1);
    ck_assert_int_eq(hx_mock_cmd(&mock, reply, sizeof(reply), "watermarks nosuchtopic 0"), -1);
    ck_assert_str_eq(reply, "no topic \"nosuchtopic\"");
}
END_TEST

/* Joins group as a new consumer of topic gen, leaves, and returns the member id it was given. */
static char *join_and_leave(const char *group)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    ck_assert_int_eq(
        rd_kafka_conf_set(conf, "bootstrap.servers", mock.bootstrap, errstr, sizeof(errstr)),
        RD_KAFKA_CONF_OK);
    ck_assert_int_eq(rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr)),
                     RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    ck_assert_msg(rk, "%s", errstr);
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, "gen", RD_KAFKA_PARTITION_UA);
    ck_assert_int_eq(rd_kafka_subscribe(rk, topics), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(topics);
    char *id = NULL;
    int64_t deadline = hx_now_ms() + 30000;
    while (!id && hx_now_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (m)
            rd_kafka_message_destroy(m);
        char *mid = rd_kafka_memberid(rk);
        if (mid && *mid)
            id = strdup(mid);
        rd_kafka_mem_free(rk, mid);
    }
    ck_assert_msg(id, "no member id from the coordinator within 30 s");
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return id;
}

/*
 * The mock names a member after its address ("%p"), and a member that timed
 * out and a later one can share that address: a client rejoining under the
 * old name then shared another client's entry (an assertion in the mock, a
 * crash in the 2.0 sticky assignor).  kafka-mock appends a sequence number
 * to each name (sidecar/tools/mock_member_ids.c): the ids carry it, all
 * different.  Without the fix the ids are bare addresses and this fails.
 */
START_TEST(test_mock_member_ids_unique)
{
    char *ids[3];
    unsigned long seqs[3];
    for (int i = 0; i < 3; i++) {
        char group[16];
        snprintf(group, sizeof(group), "ids-%d", i);
        ids[i] = join_and_leave(group);
        const char *dash = strrchr(ids[i], '-');
        char *end = NULL;
        ck_assert_msg(strncmp(ids[i], "0x", 2) == 0 && dash &&
                          (seqs[i] = strtoul(dash + 1, &end, 10)) > 0 && end && !*end,
                      "member id \"%s\" is not ADDRESS-SEQUENCE", ids[i]);
    }
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++) {
            ck_assert_str_ne(ids[i], ids[j]);
            ck_assert_uint_ne(seqs[i], seqs[j]);
        }
    for (int i = 0; i < 3; i++)
        free(ids[i]);
}
END_TEST

START_TEST(test_produce_count)
{
    const char *argv[] = {hx_produce_bin(), "-b",  mock.bootstrap, "-t", "gen",
                          "--count",        "100", "--start",      "5",  NULL};
    static struct rec msgs[MAX_MSGS];
    char reply[64], want[256], key[32];
    char *out = NULL;
    size_t n;

    ck_assert_int_eq(hx_run(argv, NULL, 30000, &out), 0);
    ck_assert_msg(strstr(out, "produced 300 records to gen (3 partitions) in ") != NULL, "%s", out);
    free(out);
    ck_assert_int_eq(hx_mock_cmd(&mock, reply, sizeof(reply), "watermarks gen 2"), 0);
    ck_assert_str_eq(reply, "0 100");

    n = consume_all("gen", 3, msgs);
    ck_assert_uint_eq(n, 300);
    for (size_t i = 0; i < n; i++) {
        const struct rec *m = &msgs[i];
        int64_t seq = 5 + m->offset;

        ck_assert_int_eq(m->partition, (int32_t)(i / 100));
        ck_assert_int_eq(m->offset, (int64_t)(i % 100));
        snprintf(key, sizeof(key), "k%" PRId64, seq);
        assert_bytes(m->key, m->key_len, key, strlen(key), "key");
        hx_seq_value("gen", m->partition, seq, want, sizeof(want));
        assert_bytes(m->value, m->value_len, want, strlen(want), "value");
        ck_assert_uint_ge(m->value_len, 70);
        ck_assert_uint_le(m->value_len, 100);
    }
    free_recs(msgs, n);
}
END_TEST

START_TEST(test_produce_stdin)
{
    static const char input[] =
        "{\"partition\":1,\"key\":\"a\",\"value\":{ \"id\" : 1.50, \"id\":2 },"
        "\"headers\":{\"h1\":\"v1\",\"hn\":null},\"timestamp\":1700000000000}\n"
        "{\"partition\":1,\"key\":null,\"value\":null}\n"
        "\n"
        "{\"partition\":1,\"key_base64\":\"AP8=\",\"value_base64\":\"AAECA/8=\","
        "\"headers\":[[\"h\",\"1\"],[\"h\",{\"base64\":\"AAE=\"}]]}\n"
        "{\"partition\":0,\"value\":\"caf\\u00e9 \\\"q\\\"\",\"key\":\"k\\u0000z\"}\n";
    const char *argv[] = {hx_produce_bin(), "-b", mock.bootstrap, "-t", "lines", NULL};
    static struct rec msgs[MAX_MSGS];
    char *out = NULL;
    size_t n;

    ck_assert_int_eq(hx_run_input(argv, NULL, input, strlen(input), 30000, &out), 0);
    ck_assert_msg(strstr(out, "produced 4 records to lines (2 partitions)") != NULL, "%s", out);
    free(out);

    n = consume_all("lines", 2, msgs);
    ck_assert_uint_eq(n, 4);

    /* partition 0: a JSON string value is produced as its raw UTF-8 text */
    ck_assert_int_eq(msgs[0].partition, 0);
    assert_bytes(msgs[0].key, msgs[0].key_len, "k\0z", 3, "key with NUL");
    assert_bytes(msgs[0].value, msgs[0].value_len, "caf\xc3\xa9 \"q\"", 9, "string value");
    ck_assert_uint_eq(msgs[0].nheaders, 0);

    /* any other JSON value: its exact text, whitespace and duplicate keys included */
    ck_assert_int_eq(msgs[1].partition, 1);
    ck_assert_int_eq(msgs[1].offset, 0);
    assert_bytes(msgs[1].key, msgs[1].key_len, "a", 1, "key");
    assert_bytes(msgs[1].value, msgs[1].value_len, "{ \"id\" : 1.50, \"id\":2 }", 23, "value");
    ck_assert_int_eq(msgs[1].timestamp, 1700000000000LL);
    ck_assert_uint_eq(msgs[1].nheaders, 2);
    assert_header(&msgs[1], 0, "h1", "v1", 2);
    assert_header(&msgs[1], 1, "hn", NULL, 0);

    /* null key and value (a tombstone) */
    ck_assert_ptr_null(msgs[2].key);
    ck_assert_ptr_null(msgs[2].value);

    /* binary key, value and a repeated binary header */
    assert_bytes(msgs[3].key, msgs[3].key_len, "\x00\xff", 2, "binary key");
    assert_bytes(msgs[3].value, msgs[3].value_len, "\x00\x01\x02\x03\xff", 5, "binary value");
    ck_assert_uint_eq(msgs[3].nheaders, 2);
    assert_header(&msgs[3], 0, "h", "1", 1);
    assert_header(&msgs[3], 1, "h", "\x00\x01", 2);
    free_recs(msgs, n);

    /* A bad line names itself and exits 2. */
    out = NULL;
    ck_assert_int_eq(hx_run_input(argv, NULL, "{\"partition\":0}\n{\"valu\":1}\n", 27, 30000, &out),
                     2);
    ck_assert_msg(strstr(out, "stdin:2: unknown field \"valu\"") != NULL, "%s", out);
    free(out);
}
END_TEST

START_TEST(test_hx_produce)
{
    static const struct hx_header hdrs[] = {
        {"trace", "abc", 3},
        {"none", NULL, 0},
        {"bin", "\x00\x01", 2},
    };
    const struct hx_record recs[] = {
        {.topic = "api",
         .partition = 0,
         .key = "k1",
         .key_len = 2,
         .value = "{\"id\":7}",
         .value_len = 8,
         .headers = hdrs,
         .nheaders = 3,
         .timestamp = 1732240000000LL},
        {.topic = "api", .partition = 0, .key = NULL, .value = NULL},
        {.topic = "api",
         .partition = 1,
         .key = "b",
         .key_len = 1,
         .value = "\x00\xfe\x00",
         .value_len = 3},
    };
    static struct rec msgs[MAX_MSGS];
    char want[256];
    size_t n;

    hx_produce(mock.bootstrap, recs, 3);
    hx_produce_seq(mock.bootstrap, "api", 2, 1000, 10);
    n = consume_all("api", 2, msgs);
    ck_assert_uint_eq(n, 3 + 20);

    assert_bytes(msgs[0].key, msgs[0].key_len, "k1", 2, "key");
    assert_bytes(msgs[0].value, msgs[0].value_len, "{\"id\":7}", 8, "value");
    ck_assert_int_eq(msgs[0].timestamp, 1732240000000LL);
    ck_assert_uint_eq(msgs[0].nheaders, 3);
    assert_header(&msgs[0], 0, "trace", "abc", 3);
    assert_header(&msgs[0], 1, "none", NULL, 0);
    assert_header(&msgs[0], 2, "bin", "\x00\x01", 2);
    ck_assert_ptr_null(msgs[1].key);
    ck_assert_ptr_null(msgs[1].value);
    for (int i = 0; i < 10; i++) {
        const struct rec *m = &msgs[2 + i];

        ck_assert_int_eq(m->offset, 2 + i);
        hx_seq_value("api", 0, 1000 + i, want, sizeof(want));
        assert_bytes(m->value, m->value_len, want, strlen(want), "seq value");
    }
    ck_assert_int_eq(msgs[12].partition, 1);
    assert_bytes(msgs[12].value, msgs[12].value_len, "\x00\xfe\x00", 3, "binary value");
    ck_assert_str_eq(hx_seq_value("orders", 3, 1234, want, sizeof(want)),
                     "{\"topic\":\"orders\",\"partition\":3,\"seq\":1234,\"amount\":1234.74,"
                     "\"note\":\"orders-000000001234\"}");
    free_recs(msgs, n);
}
END_TEST

/* ---- watchdog -------------------------------------------------------------------------------- */

/*
 * Forks a helper that runs fn (which starts resources and writes a line
 * describing them to fd), reads that line and SIGKILLs the helper: it dies
 * without any chance to clean up.
 */
static void run_and_kill(void (*fn)(int fd), char *line, size_t size)
{
    int p[2];
    pid_t child;
    FILE *f;

    ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
    child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        close(p[0]);
        fn(p[1]);
        for (;;)
            pause();
    }
    close(p[1]);
    f = fdopen(p[0], "r");
    ck_assert_msg(fgets(line, (int)size, f) != NULL, "the helper died before reporting");
    fclose(f);
    ck_assert_int_eq(kill(child, SIGKILL), 0);
    ck_assert_int_eq(waitpid(child, NULL, 0), child);
}

static void start_pg_and_report(int fd)
{
    static struct hx_pg child_pg;

    hx_pg_start(&child_pg);
    dprintf(fd, "%d %s\n", (int)hx_pg_pid(&child_pg), child_pg.dir);
}

struct pg_gone {
    pid_t pid;
    const char *dir;
};

static bool pg_is_gone(void *arg)
{
    const struct pg_gone *g = arg;

    return !hx_pid_alive(g->pid) && path_gone((void *)g->dir);
}

START_TEST(test_watchdog_stops_pg_of_killed_process)
{
    char line[600], dir[600];
    int pid;
    int64_t t0;

    run_and_kill(start_pg_and_report, line, sizeof(line));
    ck_assert_int_eq(sscanf(line, "%d %599s", &pid, dir), 2);
    ck_assert_int_gt(pid, 0);
    t0 = hx_now_ms();
    ck_assert_msg(hx_wait_until(pg_is_gone, &(struct pg_gone){pid, dir}, 10000),
                  "postmaster %d alive: %d, %s exists: %d", pid, hx_pid_alive(pid), dir,
                  access(dir, F_OK) == 0);
    fprintf(stderr, "check_harness: PostgreSQL of a SIGKILLed owner gone after %" PRId64 " ms\n",
            hx_now_ms() - t0);
}
END_TEST

static void spawn_and_report(int fd)
{
    const char *argv[] = {"sleep", "600", NULL};
    const char *dir = hx_tmpdir();
    char path[600];

    snprintf(path, sizeof(path), "%s/file", dir);
    hx_write_file(path, "x");
    dprintf(fd, "%d %s\n", (int)hx_spawn(argv, NULL, NULL), dir);
}

START_TEST(test_watchdog_kills_children_and_removes_tmpdirs)
{
    char line[600], dir[600];
    int pid;

    run_and_kill(spawn_and_report, line, sizeof(line));
    ck_assert_int_eq(sscanf(line, "%d %599s", &pid, dir), 2);
    ck_assert_msg(hx_wait_until(pg_is_gone, &(struct pg_gone){pid, dir}, 10000),
                  "child %d alive: %d, %s exists: %d", pid, hx_pid_alive(pid), dir,
                  access(dir, F_OK) == 0);
}
END_TEST

/* ---- processes and files ------------------------------------------------------------------- */

START_TEST(test_processes)
{
    const char *sh_exit[] = {"sh", "-c", "echo out; echo err >&2; exit 3", NULL};
    const char *cat[] = {"cat", NULL};
    const char *sleeper[] = {"sleep", "30", NULL};
    const char *env_kill[] = {"sh", "-c", "echo \"$HX_VAR ${HOME-unset}\"; kill -9 $$", NULL};
    const char *env[] = {"HX_VAR=42", "HOME", NULL};
    const char *dir = hx_tmpdir();
    char path[600], *out = NULL, *data;
    size_t len;
    int64_t t0;
    pid_t pid;

    ck_assert_int_eq(hx_run(sh_exit, NULL, 10000, &out), 3);
    ck_assert_str_eq(out, "out\nerr\n");
    free(out);

    ck_assert_int_eq(hx_run_input(cat, NULL, "a\0b", 3, 10000, &out), 0);
    ck_assert_int_eq(memcmp(out, "a\0b", 4), 0);
    free(out);

    t0 = hx_now_ms();
    ck_assert_int_eq(hx_run(sleeper, NULL, 200, NULL), -1);
    ck_assert_int_lt(hx_now_ms() - t0, 5000);

    snprintf(path, sizeof(path), "%s/spawn.log", dir);
    pid = hx_spawn(env_kill, env, path);
    ck_assert_int_eq(hx_wait(pid, 10000), 128 + SIGKILL);
    data = hx_read_file(path, &len);
    ck_assert_str_eq(data, "42 unset\n");
    free(data);

    pid = hx_spawn(sleeper, NULL, NULL);
    ck_assert_int_eq(hx_wait(pid, 50), -1);
    ck_assert(hx_pid_alive(pid));
    kill(pid, SIGTERM);
    ck_assert_int_eq(hx_wait(pid, 10000), 128 + SIGTERM);

    snprintf(path, sizeof(path), "%s/f.txt", dir);
    hx_write_file(path, "%s=%d\n", "n", 7);
    data = hx_read_file(path, &len);
    ck_assert_str_eq(data, "n=7\n");
    ck_assert_uint_eq(len, 4);
    free(data);
    snprintf(path, sizeof(path), "%s/missing", dir);
    ck_assert_ptr_null(hx_read_file(path, NULL));
}
END_TEST

static Suite *harness_suite(void)
{
    Suite *s = suite_create("harness");
    TCase *tc;

    tc = tcase_create("postgres");
    tcase_add_unchecked_fixture(tc, pg_setup, pg_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_pg_query);
    tcase_add_test(tc, test_pg_survives_tests);
    tcase_add_test(tc, test_pg_create_db);
    tcase_add_test(tc, test_pg_restart_keeps_data);
    suite_add_tcase(s, tc);

    tc = tcase_create("kafka");
    tcase_add_unchecked_fixture(tc, mock_setup, mock_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_mock_commands);
    tcase_add_test(tc, test_mock_member_ids_unique);
    tcase_add_test(tc, test_produce_count);
    tcase_add_test(tc, test_produce_stdin);
    tcase_add_test(tc, test_hx_produce);
    suite_add_tcase(s, tc);

    tc = tcase_create("watchdog");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_watchdog_stops_pg_of_killed_process);
    tcase_add_test(tc, test_watchdog_kills_children_and_removes_tmpdirs);
    tcase_add_test(tc, test_processes);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(harness_suite());
    int failed;

    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
