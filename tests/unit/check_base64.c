/*
 * check_base64.c - base64 and base64url (sidecar/base/sc_base64.c): the
 * envelope's binary values, dead-letter rebuilding and resume tokens share
 * them, so both directions are checked against known vectors, round trips
 * of every length, and the inputs a strict decoder must refuse.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_base64.h"

static void ck_dec(enum sc_base64_alphabet a, const char *in, int rc, const char *out,
                   size_t out_len)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    ck_assert_msg(sc_base64_decode(&b, in, strlen(in), a) == rc, "decode(\"%s\")", in);
    if (rc == 0) {
        ck_assert_uint_eq(b.len, out_len);
        ck_assert(out_len == 0 || memcmp(b.data, out, out_len) == 0);
    }
    sc_buf_free(&b);
}

static void ck_enc(enum sc_base64_alphabet a, const char *in, size_t len, const char *want)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    ck_assert_int_eq(sc_base64_encode(&b, in, len, a), 0);
    ck_assert_uint_eq(b.len, strlen(want));
    ck_assert(b.len == 0 || memcmp(b.data, want, b.len) == 0);
    sc_buf_free(&b);
}

START_TEST(test_standard)
{
    /* RFC 4648 §10 vectors. */
    ck_enc(SC_BASE64_STD, "", 0, "");
    ck_enc(SC_BASE64_STD, "f", 1, "Zg==");
    ck_enc(SC_BASE64_STD, "fo", 2, "Zm8=");
    ck_enc(SC_BASE64_STD, "foo", 3, "Zm9v");
    ck_enc(SC_BASE64_STD, "foobar", 6, "Zm9vYmFy");
    ck_enc(SC_BASE64_STD, "\xfb\xff\xbf", 3, "+/+/");
    ck_dec(SC_BASE64_STD, "", 0, "", 0);
    ck_dec(SC_BASE64_STD, "Zg==", 0, "f", 1);
    ck_dec(SC_BASE64_STD, "Zm8=", 0, "fo", 2);
    ck_dec(SC_BASE64_STD, "Zm9v", 0, "foo", 3);
    ck_dec(SC_BASE64_STD, "Zm8", 0, "fo", 2); /* padding may be left out */
    ck_dec(SC_BASE64_STD, "/wA=", 0, "\xff\x00", 2);
    ck_dec(SC_BASE64_STD, "+/+/", 0, "\xfb\xff\xbf", 3);
    ck_dec(SC_BASE64_STD, "Z", -1, NULL, 0);     /* impossible length */
    ck_dec(SC_BASE64_STD, "Zm9v!", -1, NULL, 0); /* outside the alphabet */
    ck_dec(SC_BASE64_STD, "Zm 9v", -1, NULL, 0); /* no whitespace */
    ck_dec(SC_BASE64_STD, "Zh==", -1, NULL, 0);  /* leftover bits: "Zg==" spelled otherwise */
    ck_dec(SC_BASE64_STD, "Zm8==", -1, NULL, 0); /* wrong padding */
    ck_dec(SC_BASE64_STD, "Zg===", -1, NULL, 0); /* too much padding */
    ck_dec(SC_BASE64_STD, "Zm-_", -1, NULL, 0);  /* the URL alphabet is not standard */
}
END_TEST

START_TEST(test_url)
{
    ck_enc(SC_BASE64_URL, "f", 1, "Zg");
    ck_enc(SC_BASE64_URL, "fo", 2, "Zm8");
    ck_enc(SC_BASE64_URL, "\xfb\xff\xbf", 3, "-_-_");
    ck_dec(SC_BASE64_URL, "Zg", 0, "f", 1);
    ck_dec(SC_BASE64_URL, "-_-_", 0, "\xfb\xff\xbf", 3);
    ck_dec(SC_BASE64_URL, "Zg==", -1, NULL, 0); /* tokens are never padded */
    ck_dec(SC_BASE64_URL, "+/+/", -1, NULL, 0);
    ck_dec(SC_BASE64_URL, "Zh", -1, NULL, 0);
}
END_TEST

/* Every length from 0 to 300, both alphabets: decode(encode(x)) == x. */
START_TEST(test_round_trips)
{
    unsigned seed = 5;
    char in[300];
    for (size_t n = 0; n < sizeof(in); n++) {
        for (size_t i = 0; i < n; i++)
            in[i] = (char)rand_r(&seed);
        for (int a = SC_BASE64_STD; a <= SC_BASE64_URL; a++) {
            struct sc_buf e, d;
            sc_buf_init(&e, 0);
            sc_buf_init(&d, 0);
            ck_assert_int_eq(sc_base64_encode(&e, in, n, (enum sc_base64_alphabet)a), 0);
            ck_assert_uint_eq(e.len, a == SC_BASE64_STD ? (n + 2) / 3 * 4 : (n * 4 + 2) / 3);
            ck_assert_int_eq(sc_base64_decode(&d, e.data, e.len, (enum sc_base64_alphabet)a), 0);
            ck_assert_uint_eq(d.len, n);
            ck_assert(n == 0 || memcmp(d.data, in, n) == 0);
            sc_buf_free(&e);
            sc_buf_free(&d);
        }
    }
}
END_TEST

/* A bounded output buffer: encoding reports -1 instead of writing past it. */
START_TEST(test_bounded_output)
{
    struct sc_buf b;
    sc_buf_init(&b, 7);
    ck_assert_int_eq(sc_base64_encode(&b, "foobar", 6, SC_BASE64_STD), -1);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_int_eq(sc_base64_encode(&b, "foo", 3, SC_BASE64_STD), 0);
    sc_buf_free(&b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("base64");
    TCase *tc = tcase_create("base64");
    tcase_add_test(tc, test_standard);
    tcase_add_test(tc, test_url);
    tcase_add_test(tc, test_round_trips);
    tcase_add_test(tc, test_bounded_output);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
