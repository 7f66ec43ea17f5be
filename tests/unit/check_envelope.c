/*
 * check_envelope.c - the record envelope is exact and deterministic (I1).
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <zlib.h>

#include "record/sc_envelope.h"

static char *env_of(const struct sc_record *r, enum sc_value_format vf)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    ck_assert_int_eq(sc_envelope_append(&b, r, &SC_FORMATS_OF(vf)), 0);
    ck_assert_int_eq(sc_buf_putc(&b, '\0'), 0);
    return b.data;
}

static char *value_of(const char *v, size_t len, enum sc_value_format vf)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    ck_assert_int_eq(sc_envelope_append_value(&b, v, len, vf), 0);
    ck_assert_int_eq(sc_buf_putc(&b, '\0'), 0);
    return b.data;
}

#define ck_value(in, vf, expected)                     \
    do {                                               \
        char *got_ = value_of(in, sizeof(in) - 1, vf); \
        ck_assert_str_eq(got_, expected);              \
        free(got_);                                    \
    } while (0)

static struct sc_record rec(const char *key, const char *value)
{
    struct sc_record r = {
        .topic = "orders",
        .partition = 3,
        .offset = 1234,
        .timestamp = 1732240000000,
        .key = key,
        .key_len = key ? strlen(key) : 0,
        .value = value,
        .value_len = value ? strlen(value) : 0,
    };
    return r;
}

START_TEST(test_full_envelope_exact_bytes)
{
    struct sc_header hs[] = {{"trace", "abc", 3}};
    struct sc_record r = rec("k1", "{\"id\":7}");
    r.headers = hs;
    r.nheaders = 1;
    char *e = env_of(&r, SC_VALUE_AUTO);
    ck_assert_str_eq(e, "{\"topic\":\"orders\",\"partition\":3,\"offset\":1234,\"timestamp\":"
                        "1732240000000,\"key\":\"k1\",\"value\":{\"id\":7},\"headers\":{\"trace\":"
                        "\"abc\"}}");
    free(e);
}
END_TEST

START_TEST(test_json_value_verbatim_minus_whitespace)
{
    ck_value(" { \"id\" : 7 ,\n\t\"a\" : [ 1 , 2.50e3 , \"x y\" ] } ", SC_VALUE_AUTO,
             "{\"id\":7,\"a\":[1,2.50e3,\"x y\"]}");
    /* Numbers keep their exact text; duplicate keys and key order stay. */
    ck_value("{\"b\":1.0,\"a\":1e400,\"b\":-0.000}", SC_VALUE_AUTO,
             "{\"b\":1.0,\"a\":1e400,\"b\":-0.000}");
    /* Escapes inside strings are kept exactly as sent. */
    ck_value("[\"\\u00e9\\n\\/\", \"é\"]", SC_VALUE_AUTO, "[\"\\u00e9\\n\\/\",\"é\"]");
    ck_value("42", SC_VALUE_AUTO, "42");
    ck_value("\"str\"", SC_VALUE_AUTO, "\"str\"");
    ck_value("true", SC_VALUE_AUTO, "true");
    ck_value("null", SC_VALUE_AUTO, "null");
    ck_value("{}", SC_VALUE_AUTO, "{}");
    ck_value("[ ]", SC_VALUE_AUTO, "[]");
}
END_TEST

START_TEST(test_not_json_becomes_string)
{
    static const char *bad[] = {
        "{\"a\":}", "[1,]",          "01",      "-",     "1.",
        "tru",      "{\"a\" 1}",     "{} x",    "[1 2]", "{\"a\":1,}",
        "\"\\x\"",  "\"\\u12\"",     "{'a':1}", "[",     "]",
        "{\"a\"",   "nulll",         "+1",      ".5",    "1e",
        "\"abc",    "{1:2}",         "[1]]",    "--1",   "0x10",
        "NaN",      "[\"a\" \"b\"]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *got = value_of(bad[i], strlen(bad[i]), SC_VALUE_AUTO);
        ck_assert_msg(got[0] == '"', "%s should be a string, got %s", bad[i], got);
        json_error_t err;
        json_t *j = json_loads(got, JSON_DECODE_ANY, &err);
        ck_assert_msg(j && json_is_string(j), "%s: %s", bad[i], got);
        ck_assert_str_eq(json_string_value(j), bad[i]);
        json_decref(j);
        free(got);
    }
    ck_value("hello \"w\"\n\x01", SC_VALUE_AUTO, "\"hello \\\"w\\\"\\n\\u0001\"");
    ck_value("", SC_VALUE_AUTO, "\"\"");
    /* A raw control character inside a JSON string makes it not JSON. */
    ck_value("\"a\tb\"", SC_VALUE_AUTO, "\"\\\"a\\tb\\\"\"");
}
END_TEST

START_TEST(test_binary_becomes_base64)
{
    ck_value("\xff\xfe\x00\x01", SC_VALUE_AUTO, "{\"base64\":\"//4AAQ==\"}");
    ck_value("\xc0\x80", SC_VALUE_AUTO, "{\"base64\":\"wIA=\"}");             /* overlong NUL */
    ck_value("\xed\xa0\x80", SC_VALUE_AUTO, "{\"base64\":\"7aCA\"}");         /* surrogate */
    ck_value("\xf4\x90\x80\x80", SC_VALUE_AUTO, "{\"base64\":\"9JCAgA==\"}"); /* > U+10FFFF */
    ck_value("\"\xff\"", SC_VALUE_AUTO, "{\"base64\":\"Iv8i\"}"); /* JSON-looking, bad UTF-8 */
    ck_value("\xf0\x9f\x98\x80", SC_VALUE_AUTO, "\"\xf0\x9f\x98\x80\""); /* emoji is fine */
}
END_TEST

START_TEST(test_forced_formats)
{
    ck_value("{\"id\": 7}", SC_VALUE_STRING, "\"{\\\"id\\\": 7}\"");
    ck_value("{\"id\": 7}", SC_VALUE_BASE64, "{\"base64\":\"eyJpZCI6IDd9\"}");
    /* string cannot hold invalid UTF-8: it falls back to base64 rather than lose bytes. */
    ck_value("\xff", SC_VALUE_STRING, "{\"base64\":\"/w==\"}");
    struct sc_record r = rec("k", "v");
    char *e = env_of(&r, SC_VALUE_BASE64);
    ck_assert_ptr_nonnull(
        strstr(e, "\"key\":{\"base64\":\"aw==\"},\"value\":{\"base64\":\"dg==\"}"));
    free(e);
}
END_TEST

START_TEST(test_nulls_and_missing_timestamp)
{
    struct sc_record r = rec(NULL, NULL);
    r.timestamp = -1;
    char *e = env_of(&r, SC_VALUE_AUTO);
    ck_assert_str_eq(e, "{\"topic\":\"orders\",\"partition\":3,\"offset\":1234,\"timestamp\":null,"
                        "\"key\":null,\"value\":null,\"headers\":{}}");
    free(e);
    /* A key that is JSON text is still a string: keys skip the JSON step. */
    r = rec("{\"a\":1}", "x");
    e = env_of(&r, SC_VALUE_AUTO);
    ck_assert_ptr_nonnull(strstr(e, "\"key\":\"{\\\"a\\\":1}\""));
    free(e);
}
END_TEST

START_TEST(test_headers)
{
    struct sc_header hs[] = {
        {"a", "1", 1}, {"bin", "\xff\x00", 2}, {"n", NULL, 0}, {"a", "2", 1}, {"q\"", "x", 1},
    };
    struct sc_record r = rec("k", "1");
    r.headers = hs;
    r.nheaders = 5;
    char *e = env_of(&r, SC_VALUE_AUTO);
    ck_assert_ptr_nonnull(strstr(e,
                                 "\"headers\":{\"a\":[\"1\",\"2\"],\"bin\":{\"base64\":\"/wA=\"},"
                                 "\"n\":null,\"q\\\"\":\"x\"}}"));
    free(e);
}
END_TEST

START_TEST(test_deterministic_and_always_valid_json)
{
    /* Random bytes, random headers: the envelope is always valid JSON and the
     * same record always gives the same bytes. */
    srand(42);
    unsigned char val[64], key[16], hv[8];
    for (int iter = 0; iter < 5000; iter++) {
        size_t vl = (size_t)rand() % sizeof(val), kl = (size_t)rand() % sizeof(key);
        for (size_t i = 0; i < vl; i++)
            val[i] = (unsigned char)(iter % 3 == 0 ? rand() % 256
                                                   : " {}[]\",:0123456789tfnul\\e.-"[rand() % 28]);
        for (size_t i = 0; i < kl; i++)
            key[i] = (unsigned char)(rand() % 256);
        for (size_t i = 0; i < sizeof(hv); i++)
            hv[i] = (unsigned char)(rand() % 256);
        struct sc_header hs[] = {{"h1", hv, (size_t)rand() % 8}, {"h1", "v", 1}};
        struct sc_record r = {.topic = "t.x_y-z",
                              .partition = iter % 7,
                              .offset = iter,
                              .timestamp = iter,
                              .key = key,
                              .key_len = kl,
                              .value = val,
                              .value_len = vl,
                              .headers = hs,
                              .nheaders = (size_t)(iter % 3)};
        char *a = env_of(&r, (enum sc_value_format)(iter % 3));
        char *b = env_of(&r, (enum sc_value_format)(iter % 3));
        ck_assert_str_eq(a, b);
        json_error_t err;
        json_t *j = json_loads(a, JSON_ALLOW_NUL, &err);
        ck_assert_msg(j != NULL, "invalid envelope %s: %s", a, err.text);
        ck_assert_int_eq(json_integer_value(json_object_get(j, "offset")), iter);
        json_decref(j);
        free(a);
        free(b);
    }
}
END_TEST

START_TEST(test_deep_nesting_is_not_json)
{
    size_t depth = 1001;
    char *v = malloc(depth * 2 + 1);
    memset(v, '[', depth);
    memset(v + depth, ']', depth);
    v[depth * 2] = 0;
    char *got = value_of(v, depth * 2, SC_VALUE_AUTO);
    ck_assert_int_eq(got[0], '"');
    free(got);
    /* 1000 levels is still JSON */
    got = value_of(v + 1, depth * 2 - 2, SC_VALUE_AUTO);
    ck_assert_int_eq(got[0], '[');
    free(got);
    free(v);
}
END_TEST

START_TEST(test_buffer_maximum_is_respected)
{
    struct sc_buf b;
    sc_buf_init(&b, 32);
    struct sc_record r = rec("k", "a value that does not fit in thirty-two bytes");
    ck_assert_int_eq(sc_envelope_append(&b, &r, &SC_FORMATS_OF(SC_VALUE_AUTO)), -1);
    ck_assert_uint_le(b.len, 32);
    sc_buf_free(&b);
}
END_TEST

START_TEST(test_checksum)
{
    struct sc_record a = rec("k", "v"), b = rec("k", "v");
    ck_assert_uint_eq(sc_record_checksum(0, &a), sc_record_checksum(0, &b));
    b = rec("k", "w");
    ck_assert_uint_ne(sc_record_checksum(0, &a), sc_record_checksum(0, &b));
    /* null and empty differ */
    struct sc_record n = rec("k", NULL), e = rec("k", "");
    ck_assert_uint_ne(sc_record_checksum(0, &n), sc_record_checksum(0, &e));
    /* offset is part of it */
    b = rec("k", "v");
    b.offset++;
    ck_assert_uint_ne(sc_record_checksum(0, &a), sc_record_checksum(0, &b));
    /* a batch checksum depends on order */
    uint32_t ab = sc_record_checksum(sc_record_checksum(0, &a), &b);
    uint32_t ba = sc_record_checksum(sc_record_checksum(0, &b), &a);
    ck_assert_uint_ne(ab, ba);
}
END_TEST

START_TEST(test_crc32_is_zlibs)
{
    /* The check value of CRC-32/ISO-HDLC, then zlib's CRC-32 over every length up to 4 KiB,
     * at every alignment, continued from a running value: checksums already stored with
     * pending batches must keep matching. */
    ck_assert_uint_eq(sc_crc32(0, "123456789", 9), 0xCBF43926u);
    ck_assert_uint_eq(sc_crc32(0, NULL, 0), 0);
    static unsigned char buf[4096 + 16];
    srand(11);
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)rand();
    for (size_t len = 0; len <= 4096; len += len < 300 ? 1 : 61)
        for (size_t at = 0; at < 16; at += 5) {
            uint32_t seed = (uint32_t)(len * 2654435761u);
            ck_assert_uint_eq(sc_crc32(seed, buf + at, len),
                              (uint32_t)crc32_z(seed, buf + at, len));
        }
}
END_TEST

START_TEST(test_checksum_image)
{
    /* The image's CRC-32 is the record checksum, for any mix of null, empty, binary and
     * headers, and images of consecutive records checksum as a batch. */
    srand(7);
    unsigned char key[12], val[40], hv[6];
    uint32_t batch = 0, batch_image = 0;
    for (int iter = 0; iter < 2000; iter++) {
        for (size_t i = 0; i < sizeof(key); i++)
            key[i] = (unsigned char)rand();
        for (size_t i = 0; i < sizeof(val); i++)
            val[i] = (unsigned char)rand();
        for (size_t i = 0; i < sizeof(hv); i++)
            hv[i] = (unsigned char)rand();
        struct sc_header hs[] = {
            {"h", hv, (size_t)rand() % sizeof(hv)}, {"n", NULL, 0}, {"empty", "", 0}};
        struct sc_record r = {.topic = "orders",
                              .partition = 1,
                              .offset = iter * 977LL - 5,
                              .timestamp = iter % 4 == 0 ? -1 : iter * 1000003LL,
                              .key = iter % 5 == 0 ? NULL : key,
                              .key_len = iter % 5 == 0 ? 0 : (size_t)rand() % sizeof(key),
                              .value = iter % 7 == 0 ? NULL : val,
                              .value_len = iter % 7 == 0 ? 0 : (size_t)rand() % sizeof(val),
                              .headers = hs,
                              .nheaders = (size_t)(iter % 4)};
        size_t n = sc_record_image_size(&r);
        char *img = malloc(n + 1);
        img[n] = '!'; /* the image writes exactly its size */
        sc_record_image_write(img, &r);
        ck_assert_int_eq(img[n], '!');
        ck_assert_uint_eq((uint32_t)crc32_z(0, (const Bytef *)img, n), sc_record_checksum(0, &r));
        batch = sc_record_checksum(batch, &r);
        batch_image = (uint32_t)crc32_z(batch_image, (const Bytef *)img, n);
        ck_assert_uint_eq(batch, batch_image);
        free(img);
    }
}
END_TEST

START_TEST(test_utf8_validator)
{
    ck_assert(sc_utf8_valid("plain ascii text longer than eight", 34));
    ck_assert(sc_utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9));
    ck_assert(!sc_utf8_valid("\xc3", 1));
    ck_assert(!sc_utf8_valid("abcdefgh\xe2\x82", 10));
    ck_assert(!sc_utf8_valid("\xe0\x80\xaf", 3));
    ck_assert(!sc_utf8_valid("\xf8\x88\x80\x80\x80", 5));
    ck_assert(sc_utf8_valid("", 0));
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("envelope");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_full_envelope_exact_bytes);
    tcase_add_test(tc, test_json_value_verbatim_minus_whitespace);
    tcase_add_test(tc, test_not_json_becomes_string);
    tcase_add_test(tc, test_binary_becomes_base64);
    tcase_add_test(tc, test_forced_formats);
    tcase_add_test(tc, test_nulls_and_missing_timestamp);
    tcase_add_test(tc, test_headers);
    tcase_add_test(tc, test_deterministic_and_always_valid_json);
    tcase_add_test(tc, test_deep_nesting_is_not_json);
    tcase_add_test(tc, test_buffer_maximum_is_respected);
    tcase_add_test(tc, test_checksum);
    tcase_add_test(tc, test_crc32_is_zlibs);
    tcase_add_test(tc, test_checksum_image);
    tcase_add_test(tc, test_utf8_validator);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
