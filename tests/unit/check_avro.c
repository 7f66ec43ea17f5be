/*
 * check_avro.c - Avro datums to JSON (sidecar/record/sc_avro.c) and the
 * Confluent framing (sc_decode.c).  The datums are written by python3-avro
 * (tests/harness/avro_encode.py), independently of avro-c, and each must
 * give the JSON of the mapping table in docs/schema-registry.md, byte for
 * byte.  Then the inputs a hostile or broken producer can send: truncated
 * and trailing bytes, lying lengths and counts, deep nesting, bad UTF-8,
 * out-of-range indexes; each must be refused with a reason, never crash.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "record/sc_avro.h"
#include "record/sc_decode.h"

struct expected {
    const char *name;
    const char *json;
};

static const struct expected expected[] = {
    {"primitives", "{\"n\":null,\"b\":true,\"i\":-42,\"l\":9007199254740993,\"f\":1.5,\"d\":0.1,"
                   "\"by\":\"AP8=\",\"s\":\"h\xc3\xa9llo \\\"q\\\"\\n\"}"},
    {"nested", "{\"a\":{\"x\":1},\"b\":{\"x\":2},\"c\":{\"x\":-3}}"},
    {"collections", "{\"arr\":[1,2,3],\"empty\":[],\"m\":{\"k1\":\"v1\",\"k2\":\"v2\"},"
                    "\"nested\":[{\"a\":1},{},{\"b\":-2,\"c\":3}]}"},
    {"unions_null", "{\"o1\":null,\"o2\":\"x\",\"u\":null,\"r\":null}"},
    {"unions_values", "{\"o1\":\"\",\"o2\":null,\"u\":5,\"r\":{\"z\":false}}"},
    {"unions_string", "{\"o1\":\"a\",\"o2\":\"b\",\"u\":\"five\",\"r\":null}"},
    {"enum", "\"GREEN\""},
    {"fixed", "\"AQIDBA==\""},
    {"bytes_top", "\"aGVsbG8=\""},
    {"string_top", "\"plain\""},
    {"logical", "{\"date\":\"2024-11-22\",\"tmillis\":\"13:45:30.123\",\"tmicros\":\"00:00:01."
                "000005\",\"tsmillis\":\"2024-11-22T01:46:40.007Z\",\"tsmicros\":\"2000-02-29T23:"
                "59:59.999999Z\",\"before1970\":\"1969-12-31T23:59:59.999Z\",\"uuid\":\"123e4567-"
                "e89b-12d3-a456-426614174000\",\"dec\":\"-12.30\",\"decfixed\":\"1234.5678\","
                "\"small\":\"0.00042\",\"unknown\":\"kept as a string\",\"opt_ts\":\"1970-01-01T"
                "00:00:00.001Z\"}"},
    {"recursive", "{\"v\":1,\"next\":{\"v\":2,\"next\":{\"v\":3,\"next\":null}}}"},
    {"special", "{\"nan\":\"NaN\",\"inf\":\"Infinity\",\"ninf\":\"-Infinity\",\"neg0\":-0,"
                "\"big\":1e+300,\"third\":0.33333334}"},
};

static size_t unhex(const char *hex, unsigned char *out, size_t size)
{
    size_t n = strlen(hex) / 2;
    ck_assert_uint_le(n, size);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        ck_assert_int_eq(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (unsigned char)v;
    }
    return n;
}

/* Decodes p[0..n) with schema (JSON text): 0 with the JSON in *json, or -1 with err. */
static int decode(const char *schema, const void *p, size_t n, char **json, char *err,
                  size_t errsize)
{
    struct sc_avro_schema *s = sc_avro_schema_new(schema, strlen(schema), err, errsize);
    ck_assert_msg(s != NULL, "schema %s: %s", schema, err);
    struct sc_buf b;
    sc_buf_init(&b, 0);
    int rc = sc_avro_to_json(s, p, n, &b, err, errsize);
    if (rc == 0) {
        ck_assert_int_eq(sc_buf_putc(&b, '\0'), 0);
        *json = b.data;
    } else {
        ck_assert_uint_eq(b.len, 0); /* nothing left behind */
        sc_buf_free(&b);
    }
    sc_avro_schema_free(s);
    return rc;
}

START_TEST(test_python_avro_cases)
{
    FILE *f = popen("/usr/bin/python3 " HX_SOURCE_DIR "/tests/harness/avro_encode.py cases", "r");
    ck_assert_ptr_nonnull(f);
    char line[65536];
    size_t seen = 0;
    while (fgets(line, sizeof(line), f)) {
        json_error_t je;
        json_t *c = json_loads(line, 0, &je);
        ck_assert_msg(c != NULL, "bad line from avro_encode.py: %s", je.text);
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *schema = json_string_value(json_object_get(c, "schema"));
        unsigned char bytes[4096];
        size_t n = unhex(json_string_value(json_object_get(c, "hex")), bytes, sizeof(bytes));
        const char *want = NULL;
        for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++)
            if (strcmp(expected[i].name, name) == 0)
                want = expected[i].json;
        ck_assert_msg(want != NULL, "no expected JSON for case %s", name);
        char err[512], *got = NULL, *again = NULL;
        ck_assert_msg(decode(schema, bytes, n, &got, err, sizeof(err)) == 0, "%s: %s", name, err);
        ck_assert_msg(strcmp(got, want) == 0, "%s:\n got  %s\n want %s", name, got, want);
        /* Valid JSON, and the same bytes every time (I1). */
        json_t *parsed = json_loads(got, JSON_DECODE_ANY, &je);
        ck_assert_msg(parsed != NULL, "%s: not JSON: %s", name, je.text);
        json_decref(parsed);
        ck_assert_int_eq(decode(schema, bytes, n, &again, err, sizeof(err)), 0);
        ck_assert_str_eq(got, again);
        free(again);
        /* A datum one byte short, or with a byte left over, is not a datum. */
        if (n > 0)
            ck_assert_msg(decode(schema, bytes, n - 1, &again, err, sizeof(err)) == -1,
                          "%s: truncated datum accepted", name);
        bytes[n] = 0;
        ck_assert_int_eq(decode(schema, bytes, n + 1, &again, err, sizeof(err)), -1);
        ck_assert_msg(strstr(err, "left after the datum") != NULL, "%s: %s", name, err);
        free(got);
        json_decref(c);
        seen++;
    }
    ck_assert_int_eq(pclose(f), 0);
    ck_assert_uint_eq(seen, sizeof(expected) / sizeof(expected[0]));
}
END_TEST

static void ck_refused(const char *schema, const void *p, size_t n, const char *reason)
{
    char err[512], *json = NULL;
    ck_assert_msg(decode(schema, p, n, &json, err, sizeof(err)) == -1, "accepted: %s", json);
    ck_assert_msg(strstr(err, reason) != NULL, "want \"%s\", got \"%s\"", reason, err);
}

START_TEST(test_hostile_datums)
{
    /* A string that claims more bytes than there are (avro-c would allocate them). */
    ck_refused("\"string\"", "\xfe\xff\xff\xff\x0f", 5, "past the end");
    ck_refused("\"bytes\"", "\x01", 1, "past the end"); /* length -1 */
    /* 2^40 nulls in 6 bytes: avro-c would loop over them. */
    ck_refused("{\"type\":\"array\",\"items\":\"null\"}", "\x80\x80\x80\x80\x80\x40", 6,
               "more than 1000000 items");
    /* An array of longs claiming 1000 items in 3 bytes. */
    ck_refused("{\"type\":\"array\",\"items\":\"long\"}", "\xd0\x0f\x00", 3, "more items");
    /* A varint of eleven bytes. */
    ck_refused("\"long\"", "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11, "64 bits");
    ck_refused("\"int\"", "\x80\x80\x80\x80\x20", 5, "out of range");
    ck_refused("\"boolean\"", "\x02", 1, "neither 0 nor 1");
    ck_refused("{\"type\":\"enum\",\"name\":\"E\",\"symbols\":[\"A\"]}", "\x02", 1, "enum index");
    ck_refused("[\"null\",\"int\"]", "\x04", 1, "union branch");
    ck_refused("[\"null\",\"int\"]", "\x01", 1, "union branch"); /* -1 */
    ck_refused("\"string\"", "\x04\xff\xfe", 3, "UTF-8");
    ck_refused("{\"type\":\"map\",\"values\":\"int\"}", "\x02\x02\xc3\x02\x00", 5, "UTF-8");
    ck_refused("\"double\"", "\x00\x00", 2, "inside a double");
    ck_refused("{\"type\":\"bytes\",\"logicalType\":\"decimal\",\"precision\":4}", "\x00", 1,
               "no bytes");

    /* A recursive schema nested 200 deep (a list of 200 nodes): bounded, not a stack overflow. */
    const char *node = "{\"type\":\"record\",\"name\":\"N\",\"fields\":[{\"name\":\"next\","
                       "\"type\":[\"null\",\"N\"]}]}";
    unsigned char deep[201];
    memset(deep, 2, 200); /* branch 1 (N) two hundred times */
    deep[200] = 0;        /* then null */
    ck_refused(node, deep, sizeof(deep), "nested deeper");
    char err[512], *json = NULL;
    ck_assert_int_eq(decode(node, deep + 150, 51, &json, err, sizeof(err)), 0); /* 50 is fine */
    free(json);

    /* Out of room: -2, and out as it was. */
    struct sc_avro_schema *s = sc_avro_schema_new("\"string\"", 8, err, sizeof(err));
    ck_assert_ptr_nonnull(s);
    struct sc_buf b;
    sc_buf_init(&b, 8);
    ck_assert_int_eq(sc_buf_append(&b, "ab", 2), 0);
    ck_assert_int_eq(sc_avro_to_json(s, "\x14hello world", 11, &b, err, sizeof(err)), -2);
    ck_assert_uint_eq(b.len, 2);
    sc_buf_free(&b);
    sc_avro_schema_free(s);
}
END_TEST

START_TEST(test_schemas)
{
    char err[512];
    ck_assert_ptr_null(sc_avro_schema_new("{\"type\":\"record\"}", 17, err, sizeof(err)));
    ck_assert_msg(strstr(err, "not a valid Avro schema") != NULL, "%s", err);
    ck_assert_ptr_null(sc_avro_schema_new("not json", 8, err, sizeof(err)));
    /* Invalid decimal parameters: the logical type is ignored (the spec), bytes stay bytes. */
    const char *bad_dec = "{\"type\":\"bytes\",\"logicalType\":\"decimal\",\"precision\":2,"
                          "\"scale\":3}";
    char *json = NULL;
    ck_assert_int_eq(decode(bad_dec, "\x02\x07", 2, &json, err, sizeof(err)), 0);
    ck_assert_str_eq(json, "\"Bw==\"");
    free(json);
    /* A date outside 0000..9999 stays a number; so does a negative time. */
    ck_assert_int_eq(decode("{\"type\":\"int\",\"logicalType\":\"date\"}", "\xfe\xff\xff\xff\x0f",
                            5, &json, err, sizeof(err)),
                     0);
    ck_assert_str_eq(json, "2147483647");
    free(json);
    ck_assert_int_eq(decode("{\"type\":\"int\",\"logicalType\":\"time-millis\"}", "\x01", 1, &json,
                            err, sizeof(err)),
                     0);
    ck_assert_str_eq(json, "-1");
    free(json);
    /* duration: three little-endian unsigned ints. */
    ck_assert_int_eq(decode("{\"type\":\"fixed\",\"name\":\"D\",\"size\":12,\"logicalType\":"
                            "\"duration\"}",
                            "\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00", 12, &json, err,
                            sizeof(err)),
                     0);
    ck_assert_str_eq(json, "{\"months\":1,\"days\":2,\"millis\":3}");
    free(json);
    /* A map key encoded twice keeps its first position and its last value. */
    ck_assert_int_eq(decode("{\"type\":\"map\",\"values\":\"int\"}",
                            "\x06\x02"
                            "a\x02\x02"
                            "b\x04\x02"
                            "a\x06\x00",
                            11, &json, err, sizeof(err)),
                     0);
    ck_assert_str_eq(json, "{\"a\":3,\"b\":2}");
    free(json);
    /* A negative decimal with a leading 0xff byte, and zero. */
    const char *dec = "{\"type\":\"bytes\",\"logicalType\":\"decimal\",\"precision\":30,"
                      "\"scale\":3}";
    ck_assert_int_eq(decode(dec, "\x04\xff\xfe", 3, &json, err, sizeof(err)), 0);
    ck_assert_str_eq(json, "\"-0.002\"");
    free(json);
    ck_assert_int_eq(decode(dec, "\x02\x00", 2, &json, err, sizeof(err)), 0);
    ck_assert_str_eq(json, "\"0.000\"");
    free(json);
    /* 2^64 + 1 = 0x010000000000000001 (9 bytes), beyond any C integer. */
    ck_assert_int_eq(
        decode(dec, "\x12\x01\x00\x00\x00\x00\x00\x00\x00\x01", 10, &json, err, sizeof(err)), 0);
    ck_assert_str_eq(json, "\"18446744073709551.617\"");
    free(json);
}
END_TEST

START_TEST(test_framing)
{
    uint32_t id = 0;
    const void *payload;
    size_t plen;
    char err[256];
    ck_assert_int_eq(
        sc_frame_parse("\x00\x00\x01\x02\x03xyz", 8, &id, &payload, &plen, err, sizeof(err)), 0);
    ck_assert_uint_eq(id, 0x010203);
    ck_assert_uint_eq(plen, 3);
    ck_assert_int_eq(memcmp(payload, "xyz", 3), 0);
    ck_assert_int_eq(sc_frame_parse("\x00\x00\x00\x01", 4, &id, &payload, &plen, err, sizeof(err)),
                     -1);
    ck_assert_msg(strstr(err, "shorter than the 5-byte header") != NULL, "%s", err);
    ck_assert_int_eq(sc_frame_parse("{\"a\":1}", 7, &id, &payload, &plen, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "0x7b, not the magic byte") != NULL, "%s", err);

    /* json_schema: the JSON after the header, minified; anything else is a dead letter. */
    struct sc_buf b;
    sc_buf_init(&b, 0);
    int64_t missing;
    ck_assert_int_eq(sc_decode_append(NULL, SC_VALUE_JSON_SCHEMA,
                                      "\x00\x00\x00\x00\x07{ \"a\" : 1 }", 16, &b, &id, &missing,
                                      err, sizeof(err)),
                     SC_DECODE_OK);
    ck_assert_uint_eq(id, 7);
    ck_assert_int_eq(b.len, 7);
    ck_assert_int_eq(memcmp(b.data, "{\"a\":1}", 7), 0);
    ck_assert_int_eq(sc_decode_append(NULL, SC_VALUE_JSON_SCHEMA, "\x00\x00\x00\x00\x07{ \"a\" ",
                                      11, &b, &id, &missing, err, sizeof(err)),
                     SC_DECODE_BAD);
    ck_assert_msg(strstr(err, "not one valid JSON text") != NULL, "%s", err);
    ck_assert_int_eq(b.len, 7);
    ck_assert_int_eq(sc_decode_append(NULL, SC_VALUE_JSON_SCHEMA, "{\"a\":1}", 7, &b, &id, &missing,
                                      err, sizeof(err)),
                     SC_DECODE_BAD);
    sc_buf_free(&b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("avro");
    TCase *tc = tcase_create("avro");
    tcase_add_test(tc, test_python_avro_cases);
    tcase_add_test(tc, test_hostile_datums);
    tcase_add_test(tc, test_schemas);
    tcase_add_test(tc, test_framing);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
