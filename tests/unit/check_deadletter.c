/*
 * check_deadletter.c - a record rebuilt from a dead_letters row (raw key and
 * value, envelope for timestamp and headers) gives the same envelope bytes
 * as the original, so `sidecar redrive` re-sends what the sink rejected.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "admin/sc_deadletter.h"

static char *env_of(const struct sc_record *r, enum sc_value_format vf)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    ck_assert_int_eq(sc_envelope_append(&b, r, &SC_FORMATS_OF(vf)), 0);
    ck_assert_int_eq(sc_buf_putc(&b, '\0'), 0);
    return b.data;
}

/* Envelope of r, rebuilt from that envelope plus the raw bytes, envelope again: equal. */
static void roundtrip(const struct sc_record *r, enum sc_value_format vf)
{
    char *env = env_of(r, vf);
    struct sc_dead_record d;
    char err[256] = "";
    ck_assert_msg(sc_dead_record_build(&d, r->topic, r->partition, r->offset, env, r->key,
                                       r->key_len, r->value, r->value_len, err, sizeof(err)) == 0,
                  "%s", err);
    char *again = env_of(&d.rec, vf);
    ck_assert_str_eq(again, env);
    free(again);
    sc_dead_record_free(&d);
    free(env);
}

START_TEST(test_rebuild_gives_the_same_envelope)
{
    struct sc_header hs[] = {
        {"trace", "abc", 3},  {"bin", "\xff\x00\x01", 3},
        {"trace", "def", 3}, /* repeated: stored as an array */
        {"nothing", NULL, 0}, {"empty", "", 0},
    };
    struct sc_record r = {
        .topic = "orders",
        .partition = 3,
        .offset = 1234,
        .timestamp = 1732240000000,
        .key = "k1",
        .key_len = 2,
        .value = "{\"id\": 7, \"n\": 1.50}",
        .value_len = 20,
        .headers = hs,
        .nheaders = 5,
    };
    roundtrip(&r, SC_VALUE_AUTO);
    roundtrip(&r, SC_VALUE_STRING);
    roundtrip(&r, SC_VALUE_BASE64);

    /* Binary key and value, no timestamp, no headers. */
    struct sc_record b = {.topic = "t", .partition = 0, .offset = 0, .timestamp = -1};
    b.key = "\x00\xfe";
    b.key_len = 2;
    b.value = "\x80\x81\x00";
    b.value_len = 3;
    roundtrip(&b, SC_VALUE_AUTO);

    /* Tombstone with a null key. */
    struct sc_record t = {.topic = "t", .partition = 1, .offset = 9, .timestamp = 5};
    roundtrip(&t, SC_VALUE_AUTO);

    /* An empty (not null) value stays empty. */
    struct sc_record e = {.topic = "t", .partition = 1, .offset = 9, .timestamp = 5};
    e.value = "";
    e.value_len = 0;
    e.key = "";
    e.key_len = 0;
    roundtrip(&e, SC_VALUE_AUTO);
}
END_TEST

START_TEST(test_rebuild_from_jsonb_text)
{
    /* What PostgreSQL prints for the stored jsonb: spaces, keys reordered. */
    const char *env = "{\"key\": \"k1\", \"topic\": \"orders\", \"value\": {\"id\": 7}, "
                      "\"offset\": 4, \"headers\": {\"a\": [\"1\", {\"base64\": \"/wA=\"}], "
                      "\"z\": null}, \"partition\": 0, \"timestamp\": 1700000000000}";
    struct sc_dead_record d;
    char err[256] = "";
    ck_assert_int_eq(
        sc_dead_record_build(&d, "orders", 0, 4, env, "k1", 2, "{\"id\":7}", 8, err, sizeof(err)),
        0);
    ck_assert_int_eq(d.rec.timestamp, 1700000000000LL);
    ck_assert_int_eq(d.rec.nheaders, 3);
    ck_assert_str_eq(d.rec.headers[0].name, "a");
    ck_assert_int_eq(d.rec.headers[0].len, 1);
    ck_assert_int_eq(memcmp(d.rec.headers[0].value, "1", 1), 0);
    ck_assert_str_eq(d.rec.headers[1].name, "a");
    ck_assert_int_eq(d.rec.headers[1].len, 2);
    ck_assert_int_eq(memcmp(d.rec.headers[1].value, "\xff\x00", 2), 0);
    ck_assert_str_eq(d.rec.headers[2].name, "z");
    ck_assert_ptr_null(d.rec.headers[2].value);
    char *again = env_of(&d.rec, SC_VALUE_AUTO);
    ck_assert_str_eq(again, "{\"topic\":\"orders\",\"partition\":0,\"offset\":4,\"timestamp\":"
                            "1700000000000,\"key\":\"k1\",\"value\":{\"id\":7},\"headers\":{\"a\":"
                            "[\"1\",{\"base64\":\"/wA=\"}],\"z\":null}}");
    free(again);
    sc_dead_record_free(&d);
}
END_TEST

START_TEST(test_rebuild_rejects_foreign_envelopes)
{
    struct sc_dead_record d;
    char err[256];
    const char *bad[] = {
        "not json",
        "[1,2]",
        "{\"timestamp\":\"yesterday\"}",
        "{\"headers\":[1]}",
        "{\"headers\":{\"h\":{\"base64\":\"!!\"}}}",
        "{\"headers\":{\"h\":42}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_int_eq(
            sc_dead_record_build(&d, "t", 0, 0, bad[i], NULL, 0, NULL, 0, err, sizeof(err)), -1);
        ck_assert_msg(err[0] != '\0', "no message for %s", bad[i]);
        ck_assert_ptr_null(d.headers); /* freed on failure */
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("deadletter");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_rebuild_gives_the_same_envelope);
    tcase_add_test(tc, test_rebuild_from_jsonb_text);
    tcase_add_test(tc, test_rebuild_rejects_foreign_envelopes);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
