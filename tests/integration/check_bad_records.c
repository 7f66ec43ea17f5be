/*
 * check_bad_records.c - records that are hard to handle, through the file,
 * the postgres and the HTTP sink of one running sidecar.
 *
 * The file sink must write, for each record, exactly the envelope that
 * sc_envelope_append() gives that record (I1: deterministic, so a replay
 * overwrites identical bytes): the test computes it in-process and compares
 * byte for byte.  The postgres sink (same database, default table) must
 * account for every record exactly once, as a row or as a dead letter,
 * and the test says which.  The HTTP sink's accepted bodies, in offset
 * order, must be the file sink's bytes exactly (same envelopes, one per
 * line).  The process keeps running throughout.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "receiver.h"
#include "record/sc_envelope.h"
#include "scx.h"

#define NRECS     13
#define BIG_VALUE 900000 /* under the broker's default message.max.bytes (~1 MB) */
#define NHEADERS  3000
#define TS0       1732240000000LL

static char *nested(int depth)
{
    char *s = malloc((size_t)depth * 2 + 1);
    memset(s, '[', (size_t)depth);
    memset(s + depth, ']', (size_t)depth);
    s[depth * 2] = '\0';
    return s;
}

struct fixture {
    struct hx_record recs[NRECS];
    char *deep_ok, *deep_over, *big;
    struct hx_header *many;
    char (*names)[16];
    struct hx_header odd[3];
};

static void build(struct fixture *fx)
{
    memset(fx, 0, sizeof(*fx));
    fx->deep_ok = nested(1000);   /* the deepest JSON kept as JSON */
    fx->deep_over = nested(5000); /* deeper: not embedded as JSON */
    fx->big = malloc(BIG_VALUE + 1);
    fx->big[0] = '"';
    memset(fx->big + 1, 'x', BIG_VALUE - 2);
    fx->big[BIG_VALUE - 1] = '"';
    fx->big[BIG_VALUE] = '\0';
    fx->many = calloc(NHEADERS, sizeof(*fx->many));
    fx->names = calloc(NHEADERS, sizeof(*fx->names));
    for (int i = 0; i < NHEADERS; i++) {
        snprintf(fx->names[i], sizeof(fx->names[0]), "h%d", i);
        fx->many[i] = (struct hx_header){fx->names[i], i % 7 ? "v" : NULL, i % 7 ? 1 : 0};
    }
    fx->odd[0] = (struct hx_header){"bin", "\xff\x00\xfe", 3};
    fx->odd[1] = (struct hx_header){"empty", "", 0};
    fx->odd[2] = (struct hx_header){"null", NULL, 0};
    static const char dup[] = "{\"a\":1,\"a\":2}";
    static const char bin[] = "\xff\xfe\x00"
                              "bin";
    static const char nul_json[] = "{\"s\":\"a\\u0000b\"}";
    struct hx_record r[NRECS] = {
        {.key = "k0", .key_len = 2, .value = "", .value_len = 0},              /* empty value */
        {.key = NULL, .value = NULL},                                          /* tombstone */
        {.key = "", .key_len = 0, .value = dup, .value_len = sizeof(dup) - 1}, /* dup keys */
        {.key = "k\0b", .key_len = 3, .value = bin, .value_len = sizeof(bin) - 1},
        {.key = "k4", .key_len = 2, .value = fx->deep_ok, .value_len = 2000},
        {.key = "k5", .key_len = 2, .value = fx->deep_over, .value_len = 10000},
        {.key = "k6", .key_len = 2, .value = fx->big, .value_len = BIG_VALUE},
        {.key = "k7", .key_len = 2, .value = nul_json, .value_len = sizeof(nul_json) - 1},
        {.key = "k8",
         .key_len = 2,
         .value = "{}",
         .value_len = 2,
         .headers = fx->many,
         .nheaders = NHEADERS},
        {.key = "k9",
         .key_len = 2,
         .value = "{}",
         .value_len = 2,
         .headers = fx->odd,
         .nheaders = 3},
        {.key = "k10", .key_len = 3, .value = "   ", .value_len = 3}, /* whitespace only */
        {.key = "k11", .key_len = 3, .value = "42", .value_len = 2},
        {.key = "\xc3\x28", .key_len = 2, .value = "\"ok\"", .value_len = 4}, /* bad UTF-8 key */
    };
    for (int i = 0; i < NRECS; i++) {
        fx->recs[i] = r[i];
        fx->recs[i].topic = "bad";
        fx->recs[i].partition = 0;
        fx->recs[i].timestamp = TS0 + i;
    }
}

static void release(struct fixture *fx)
{
    free(fx->deep_ok);
    free(fx->deep_over);
    free(fx->big);
    free(fx->many);
    free(fx->names);
}

/* The envelope line the file sink must have written for record i. */
static void expected_line(const struct fixture *fx, int i, struct sc_buf *out)
{
    const struct hx_record *h = &fx->recs[i];
    struct sc_header *hs = calloc(h->nheaders ? h->nheaders : 1, sizeof(*hs));
    for (size_t j = 0; j < h->nheaders; j++)
        hs[j] = (struct sc_header){h->headers[j].name, h->headers[j].value, h->headers[j].len};
    struct sc_record r = {
        .topic = "bad",
        .partition = 0,
        .offset = i,
        .timestamp = h->timestamp,
        .key = h->key,
        .key_len = h->key_len,
        .value = h->value,
        .value_len = h->value_len,
        .headers = hs,
        .nheaders = h->nheaders,
    };
    sc_buf_reset(out);
    ck_assert_int_eq(
        sc_envelope_append(out, &r, &(struct sc_formats){SC_VALUE_AUTO, SC_VALUE_AUTO}), 0);
    ck_assert_int_eq(sc_buf_putc(out, '\n'), 0);
    free(hs);
}

START_TEST(test_bad_records_file_and_postgres)
{
    struct scx_env e;
    const char *topics[] = {"bad:1"};
    scx_env_start(&e, 1, topics, 1);
    struct fixture fx;
    build(&fx);

    int port = scx_free_port();
    struct rx *rx = rx_start();
    char cfg[600], log[700];
    snprintf(cfg, sizeof(cfg), "%s/sc.json", e.dir);
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    hx_write_file(
        cfg,
        "{\"instance_id\": \"sc-1\", \"postgres\": {\"dsn\": \"%s\"},\n"
        " \"kafka\": {\"bootstrap.servers\": \"%s\","
        " \"properties\": {\"session.timeout.ms\": \"6000\"}},\n"
        " \"admin\": {\"listen\": \"127.0.0.1:%d\"},\n"
        " \"pipelines\": [\n"
        "  {\"name\": \"files\", \"topics\": [\"bad\"], \"batch\": {\"max_wait_ms\": 20},\n"
        "   \"sink\": {\"type\": \"file\", \"path\": \"%s/{topic}/{partition}.jsonl\"}},\n"
        "  {\"name\": \"rows\", \"topics\": [\"bad\"], \"batch\": {\"max_wait_ms\": 20},\n"
        "   \"sink\": {\"type\": \"postgres\", \"table\": \"public.bad_rows\","
        " \"create_table\": true}},\n"
        "  {\"name\": \"hooks\", \"topics\": [\"bad\"], \"batch\": {\"max_wait_ms\": 20},\n"
        "   \"sink\": {\"type\": \"http\", \"url\": \"%s\"}}\n"
        " ]}\n",
        e.dsn, e.mock.bootstrap, port, e.out_dir, rx_url(rx));
    scx_migrate(cfg);
    hx_produce(e.mock.bootstrap, fx.recs, NRECS);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert_msg(scx_wait_committed(e.conn, "files", "bad", 1, NRECS, 60000), "log:\n%s",
                  scx_log_tail(log, 3000));
    ck_assert_msg(scx_wait_committed(e.conn, "rows", "bad", 1, NRECS, 60000), "log:\n%s",
                  scx_log_tail(log, 3000));
    ck_assert_msg(scx_wait_committed(e.conn, "hooks", "bad", 1, NRECS, 60000), "log:\n%s",
                  scx_log_tail(log, 3000));
    ck_assert(hx_pid_alive(pid));

    /* File sink: every line is exactly the in-process envelope of its record. */
    char path[800];
    snprintf(path, sizeof(path), "%s/bad/0.jsonl", e.out_dir);
    size_t len;
    char *data = hx_read_file(path, &len);
    ck_assert_ptr_nonnull(data);
    struct sc_buf want;
    sc_buf_init(&want, 0);
    size_t at = 0;
    for (int i = 0; i < NRECS; i++) {
        expected_line(&fx, i, &want);
        ck_assert_msg(at + want.len <= len && memcmp(data + at, want.data, want.len) == 0,
                      "record %d: file has %.200s..., expected %.200s...", i, data + at, want.data);
        at += want.len;
    }
    ck_assert_uint_eq(at, len);

    /* HTTP sink: the accepted bodies, by first offset, are the file's bytes. */
    struct sc_buf bodies;
    sc_buf_init(&bodies, 0);
    rx_lock(rx);
    for (int64_t next = 0; next < NRECS;) {
        const struct rx_request *hit = NULL;
        for (size_t i = 0; i < rx_nrequests(rx) && !hit; i++) {
            const struct rx_request *q = rx_request(rx, i);
            if (q->accepted_first && q->first && strtoll(q->first, NULL, 10) == next)
                hit = q;
        }
        ck_assert_msg(hit != NULL, "no accepted request starts at offset %lld", (long long)next);
        ck_assert_int_eq(sc_buf_append(&bodies, hit->body, hit->body_len), 0);
        next = strtoll(hit->last, NULL, 10) + 1;
    }
    rx_unlock(rx);
    ck_assert_msg(bodies.len == len && memcmp(bodies.data, data, len) == 0,
                  "HTTP bodies (%zu bytes) differ from the file (%zu bytes)", bodies.len, len);
    sc_buf_free(&bodies);
    /* What the envelope made of them (value_format auto). */
    ck_assert_ptr_nonnull(strstr(data, "\"offset\":1,\"timestamp\":1732240000001,\"key\":null,"
                                       "\"value\":null"));
    ck_assert_ptr_nonnull(strstr(data, "\"value\":{\"a\":1,\"a\":2}")); /* verbatim */
    ck_assert_ptr_nonnull(strstr(data, "\"offset\":3,\"timestamp\":1732240000003,\"key\":"
                                       "\"k\\u0000b\",\"value\":{\"base64\":\"//4AYmlu\"}"));
    free(data);
    sc_buf_free(&want);

    /* Postgres sink: each record once, as a row or a dead letter; which is which. */
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(DISTINCT o) FROM (SELECT \"offset\" AS o FROM "
                               "bad_rows UNION ALL SELECT \"offset\" FROM sidecar.dead_letters "
                               "WHERE pipeline = 'rows') s",
                               0, NULL),
                     NRECS);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT (SELECT count(*) FROM bad_rows) + (SELECT count(*) FROM "
                               "sidecar.dead_letters WHERE pipeline = 'rows')",
                               0, NULL),
                     NRECS);
    char *dead = hx_pg_value(e.conn,
                             "SELECT string_agg(\"offset\"::text, ',' ORDER BY \"offset\") FROM "
                             "sidecar.dead_letters WHERE pipeline = 'rows'",
                             0, NULL);
    ck_assert_msg(dead && strcmp(dead, "7") == 0,
                  "dead letters at offsets %s, expected only 7 (jsonb refuses \\u0000)",
                  dead ? dead : "(none)");
    free(dead);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM bad_rows WHERE \"offset\" = 6 AND "
                               "length(value #>> '{}') = 899998",
                               0, NULL),
                     1);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM bad_rows WHERE \"offset\" = 8 AND "
                               "(SELECT count(*) FROM jsonb_object_keys(headers)) = 3000",
                               0, NULL),
                     1);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM bad_rows WHERE \"offset\" = 1 AND key IS "
                               "NULL AND value IS NULL",
                               0, NULL),
                     1);

    long status;
    char *m = scx_http_get(port, "/metrics", NULL, &status);
    ck_assert_int_eq(status, 200);
    ck_assert_double_eq(scx_metric(m, "sidecar_dead_letters_total", "pipeline=\"rows\""), 1);
    free(m);
    scx_stop(pid, 15000);
    rx_stop(rx);
    release(&fx);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("bad_records");
    TCase *tc = tcase_create("bad_records");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_bad_records_file_and_postgres);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
