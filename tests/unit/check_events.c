/*
 * check_events.c - resume tokens and filters of sc_events, and the token
 * codec under them; no server involved (the reading itself is tested in
 * tests/integration/check_events.c).
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "admin/sc_events.h"
#include "admin/sc_token.h"
#include "record/sc_envelope.h"

static void filter(struct sc_events_filter *f, const char *pipeline, const char *partition)
{
    char err[256];
    ck_assert_msg(sc_events_filter_init(f, pipeline, partition, err, sizeof(err)) == 0, "%s", err);
}

/* Decodes tok into a cursor expecting filter want; returns 0 or -1 with err filled. */
static int decode(const char *tok, const struct sc_events_filter *want, struct sc_events_cursor *c,
                  char *err, size_t errsize)
{
    sc_events_cursor_init(c, NULL);
    return sc_events_cursor_from_token(c, tok, want, err, errsize);
}

/* A token around arbitrary text, to forge malformed contents (base64url written out here). */
static char *forge(const char *text)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t n = strlen(text);
    char *out = malloc(3 + (n + 2) / 3 * 4 + 1), *o = out;
    const unsigned char *in = (const unsigned char *)text;
    memcpy(o, "v1.", 3);
    o += 3;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        *o++ = a[v >> 18 & 63];
        *o++ = a[v >> 12 & 63];
        if (i + 1 < n)
            *o++ = a[v >> 6 & 63];
        if (i + 2 < n)
            *o++ = a[v & 63];
    }
    *o = '\0';
    return out;
}

START_TEST(token_round_trip)
{
    struct sc_events_filter f;
    filter(&f, "p1", "orders:3");
    struct sc_events_cursor c, d;
    sc_events_cursor_init(&c, &f);
    sc_events_cursor_seek(&c, 123456789012ULL, 42);
    c.snapshot = strdup("123456789000:123456789020:123456789005,123456789011");
    c.snap_xmax = 123456789020ULL;
    char *tok = sc_events_cursor_token(&c);
    /* Opaque and URL-safe: no character that needs escaping in a query or a header. */
    ck_assert_int_eq(strncmp(tok, "v1.", 3), 0);
    ck_assert_uint_eq(strspn(tok + 3, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                      "0123456789-_"),
                      strlen(tok) - 3);

    char err[512];
    ck_assert_msg(decode(tok, &f, &d, err, sizeof(err)) == 0, "%s", err);
    ck_assert(!d.fresh);
    ck_assert_uint_eq(d.xid, 123456789012ULL);
    ck_assert_int_eq(d.id, 42);
    ck_assert_str_eq(d.snapshot, c.snapshot);
    ck_assert_uint_eq(d.snap_xmax, 123456789020ULL);
    ck_assert_str_eq(d.filter.pipeline, "p1");
    ck_assert_str_eq(d.filter.topic, "orders");
    ck_assert_int_eq(d.filter.partition, 3);
    /* Encoding the decoded cursor gives the same token. */
    char *again = sc_events_cursor_token(&d);
    ck_assert_str_eq(again, tok);
    free(again);
    free(tok);
    sc_events_cursor_free(&d);

    /* A fresh cursor's token means "start with a new snapshot". */
    sc_events_cursor_restart(&c);
    tok = sc_events_cursor_token(&c);
    ck_assert_msg(decode(tok, &f, &d, err, sizeof(err)) == 0, "%s", err);
    ck_assert(d.fresh);
    ck_assert_ptr_null(d.snapshot);
    free(tok);
    sc_events_cursor_free(&d);
    sc_events_cursor_free(&c);
    sc_events_filter_free(&f);
}
END_TEST

START_TEST(token_filter_must_match)
{
    struct sc_events_filter none, p1, p1o3, p1o4;
    filter(&none, NULL, NULL);
    filter(&p1, "p1", NULL);
    filter(&p1o3, "p1", "orders:3");
    filter(&p1o4, "p1", "orders:4");
    struct sc_events_cursor c, d;
    sc_events_cursor_init(&c, &p1o3);
    sc_events_cursor_seek(&c, 10, 1);
    char *tok = sc_events_cursor_token(&c);
    char err[512];
    ck_assert_int_eq(decode(tok, &none, &d, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "issued for pipeline p1, partition orders:3") &&
                      strstr(err, "asks for no filter"),
                  "%s", err);
    sc_events_cursor_free(&d);
    ck_assert_int_eq(decode(tok, &p1, &d, err, sizeof(err)), -1);
    sc_events_cursor_free(&d);
    ck_assert_int_eq(decode(tok, &p1o4, &d, err, sizeof(err)), -1);
    sc_events_cursor_free(&d);
    ck_assert_int_eq(decode(tok, &p1o3, &d, err, sizeof(err)), 0);
    sc_events_cursor_free(&d);
    free(tok);
    sc_events_cursor_free(&c);
    sc_events_filter_free(&none);
    sc_events_filter_free(&p1);
    sc_events_filter_free(&p1o3);
    sc_events_filter_free(&p1o4);
}
END_TEST

/* Every malformed token is rejected with a message, never accepted or crashed on. */
START_TEST(token_malformed)
{
    struct {
        const char *token; /* or NULL: forge json */
        const char *json;
        const char *want; /* substring of the message */
    } cases[] = {
        {"", NULL, "empty resume token"},
        {"garbage", NULL, "expected a string starting with \"v1.\""},
        {"v2.eyJ4IjoxLCJpIjoyfQ", NULL, "unsupported resume token version \"v2\""},
        {"v1.", NULL, "contents"},
        {"v1.eyJ4IjoxLCJpIjoyfQ==", NULL, "not base64url"},        /* padding */
        {"v1.eyJ4IjoxLCJpIjoyfQ+/", NULL, "not base64url"},        /* standard alphabet */
        {"v1.eyJ4IjoxLCJpIjoyf", NULL, "not base64url"},           /* impossible length */
        {"v1.eyJ4IjoxLCJpIjoyfR", NULL, "not base64url"},          /* non-zero spare bits */
        {"v1.eyJ4IjoxLCJpIjoy", NULL, "contents"},                 /* truncated JSON */
        {NULL, "{\"x\":1,\"i\":2}", NULL},                         /* the forger works */
        {NULL, "[1,2]", "contents"},                               /* not an object */
        {NULL, "{\"x\":1,\"x\":2,\"i\":0}", "contents"},           /* duplicate member */
        {NULL, "{\"x\":1}", "no position"},                        /* no id */
        {NULL, "{\"x\":-1,\"i\":0}", "no position"},               /* negative */
        {NULL, "{\"x\":\"1\",\"i\":0}", "no position"},            /* wrong type */
        {NULL, "{\"x\":1,\"i\":0,\"z\":1}", "unknown member"},     /* unknown member */
        {NULL, "{\"r\":true,\"x\":1,\"i\":0}", "restart marker"},  /* both kinds */
        {NULL, "{\"r\":false}", "restart marker"},                 /* restart must be true */
        {NULL, "{\"x\":1,\"i\":0,\"t\":\"orders\"}", "partition"}, /* topic without number */
        {NULL, "{\"x\":1,\"i\":0,\"n\":3}", "partition"},          /* number without topic */
        {NULL, "{\"x\":1,\"i\":0,\"t\":\"o\",\"n\":-3}", "partition"},
        {NULL, "{\"x\":1,\"i\":0,\"p\":\"\"}", "pipeline"},
        {NULL, "{\"x\":1,\"i\":0,\"s\":\"1:2\"}", "snapshot"},
        {NULL, "{\"x\":1,\"i\":0,\"s\":\"5:3:\"}", "snapshot"},        /* xmin > xmax */
        {NULL, "{\"x\":1,\"i\":0,\"s\":\"1:10:11\"}", "snapshot"},     /* xip >= xmax */
        {NULL, "{\"x\":1,\"i\":0,\"s\":\"1:10:5,3\"}", "snapshot"},    /* xip not ascending */
        {NULL, "{\"x\":1,\"i\":0,\"s\":\"1:10:5,\"}", "snapshot"},     /* trailing comma */
        {NULL, "{\"x\":1,\"i\":0,\"s\":\"1:10:5;drop\"}", "snapshot"}, /* junk */
        {NULL, "{\"k\":\"checkpoints\",\"p\":\"a\",\"t\":\"b\",\"n\":1}", "unknown member"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *tok = cases[i].token ? strdup(cases[i].token) : forge(cases[i].json);
        struct sc_events_cursor c;
        char err[512] = "";
        int rc = decode(tok, NULL, &c, err, sizeof(err));
        if (!cases[i].want) {
            ck_assert_msg(rc == 0 && c.xid == 1 && c.id == 2, "case %zu: %s", i, err);
            sc_events_cursor_free(&c);
            free(tok);
            continue;
        }
        ck_assert_msg(rc == -1, "case %zu (%s) accepted", i, tok);
        ck_assert_msg(strstr(err, cases[i].want), "case %zu: message \"%s\" lacks \"%s\"", i, err,
                      cases[i].want);
        sc_events_cursor_free(&c);
        free(tok);
    }
    /* Far too long: rejected before any decoding. */
    size_t n = SC_TOKEN_MAX + 10;
    char *big = malloc(n + 1);
    memcpy(big, "v1.", 3);
    memset(big + 3, 'A', n - 3);
    big[n] = '\0';
    struct sc_events_cursor c;
    char err[512];
    ck_assert_int_eq(decode(big, NULL, &c, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "too long"));
    sc_events_cursor_free(&c);
    free(big);
}
END_TEST

START_TEST(filter_parsing)
{
    struct sc_events_filter f;
    char err[256], buf[256];
    filter(&f, NULL, "orders:3");
    ck_assert_ptr_null(f.pipeline);
    ck_assert_str_eq(f.topic, "orders");
    ck_assert_int_eq(f.partition, 3);
    ck_assert_str_eq(sc_events_filter_describe(&f, buf, sizeof(buf)), "partition orders:3");
    sc_events_filter_free(&f);
    filter(&f, "p1", NULL);
    ck_assert_int_eq(f.partition, -1);
    ck_assert_str_eq(sc_events_filter_describe(&f, buf, sizeof(buf)), "pipeline p1");
    sc_events_filter_free(&f);

    static const char *const bad[] = {"orders",   ":3",        "orders:",           "orders:-1",
                                      "orders:x", "orders:3x", "orders:99999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(sc_events_filter_init(&f, NULL, bad[i], err, sizeof(err)) == -1, "%s",
                      bad[i]);
        ck_assert_ptr_nonnull(strstr(err, "expected TOPIC:N"));
    }
    ck_assert_int_eq(sc_events_filter_init(&f, "", NULL, err, sizeof(err)), -1);
}
END_TEST

/*
 * A pipeline or topic that is not UTF-8 is refused with a message naming the
 * parameter: a resume token (JSON) could not carry it, and the token of such
 * a filter used to lack it (tests/fuzz/regressions/fuzz_token/filter-not-utf8).
 */
START_TEST(filter_not_utf8)
{
    static const struct {
        const char *pipeline, *partition, *want;
    } bad[] = {
        {"p\xfa", NULL, "pipeline: not valid UTF-8"},
        {"\xc3", "orders:3", "pipeline: not valid UTF-8"},                /* truncated sequence */
        {"p1", "orde\xfars:3", "partition: not valid UTF-8"},             /* the fuzzer's input */
        {NULL, "\xfa", "partition: not valid UTF-8"},                     /* also without a colon */
        {NULL, "\xc0\xaf:1", "partition: not valid UTF-8"},               /* overlong "/" */
        {NULL, "\xed\xa0\x80:1", "partition: not valid UTF-8"},           /* a surrogate */
        {NULL, "orders:3\xf4\x90\x80\x80", "partition: not valid UTF-8"}, /* above U+10FFFF */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct sc_events_filter f;
        char err[256] = "";
        ck_assert_msg(
            sc_events_filter_init(&f, bad[i].pipeline, bad[i].partition, err, sizeof(err)) == -1,
            "case %zu accepted", i);
        ck_assert_msg(strstr(err, bad[i].want), "case %zu: message \"%s\"", i, err);
        /* The message does not quote the bytes, so it can go into JSON as it is. */
        ck_assert(sc_utf8_valid(err, strlen(err)));
        ck_assert_ptr_null(f.pipeline);
        ck_assert_ptr_null(f.topic);
    }

    /* UTF-8 beyond ASCII is fine, and its token reads back under the same filter. */
    struct sc_events_filter f;
    filter(&f, "p\xc3\xafpe", "\xc3\xb6rders:3");
    ck_assert_str_eq(f.topic, "\xc3\xb6rders");
    struct sc_events_cursor c, d;
    sc_events_cursor_init(&c, &f);
    char *tok = sc_events_cursor_token(&c);
    char err[512];
    ck_assert_msg(decode(tok, &f, &d, err, sizeof(err)) == 0, "%s", err);
    ck_assert_str_eq(d.filter.pipeline, "p\xc3\xafpe");
    ck_assert_str_eq(d.filter.topic, "\xc3\xb6rders");
    free(tok);
    sc_events_cursor_free(&d);
    sc_events_cursor_free(&c);
    sc_events_filter_free(&f);
}
END_TEST

START_TEST(token_codec)
{
    /* Every length modulo 3 round-trips, and the decoded object is the encoded one. */
    for (int len = 0; len < 12; len++) {
        char s[16];
        memset(s, 'a' + len, (size_t)len);
        s[len] = '\0';
        json_t *o = json_pack("{s:s}", "v", s);
        char *tok = sc_token_encode(o);
        char err[256];
        json_t *back = sc_token_decode(tok, "page token", err, sizeof(err));
        ck_assert_msg(back && json_equal(back, o), "len %d: %s", len, err);
        json_decref(back);
        json_decref(o);
        free(tok);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("events");
    TCase *tc = tcase_create("tokens");
    tcase_add_test(tc, token_round_trip);
    tcase_add_test(tc, token_filter_must_match);
    tcase_add_test(tc, token_malformed);
    tcase_add_test(tc, filter_parsing);
    tcase_add_test(tc, filter_not_utf8);
    tcase_add_test(tc, token_codec);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
