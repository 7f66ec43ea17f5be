/*
 * check_sink_path.c - a topic (or pipeline) name can never move a file sink
 * path out of, or into another, directory: sc_sink_expand_path() keeps the
 * template's directory structure whatever bytes the names hold.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sinks/sc_sink.h"

static char *expand(const char *tmpl, const char *pipeline, const char *topic, int partition)
{
    struct sc_part_ref ref = {.pipeline = pipeline, .topic = topic, .partition = partition};
    char *p = sc_sink_expand_path(tmpl, &ref);
    ck_assert_ptr_nonnull(p);
    return p;
}

START_TEST(test_known_names)
{
    static const struct {
        const char *topic, *want;
    } cases[] = {
        {"orders", "/data/orders/3.jsonl"},
        {"orders.v2-eu_1", "/data/orders.v2-eu_1/3.jsonl"},
        {"..", "/data/_../3.jsonl"},
        {".", "/data/_./3.jsonl"},
        {"", "/data/_/3.jsonl"},
        {"../../etc/passwd", "/data/.._.._etc_passwd/3.jsonl"},
        {"/etc/passwd", "/data/_etc_passwd/3.jsonl"},
        {"a/b", "/data/a_b/3.jsonl"},
        {"...", "/data/.../3.jsonl"},
        {"tab\there", "/data/tab_here/3.jsonl"},
        {"\xc3\xa4rger", "/data/__rger/3.jsonl"}, /* non-ASCII bytes, one '_' each */
        {"~root", "/data/_root/3.jsonl"},
        {"$(rm -rf)", "/data/__rm_-rf_/3.jsonl"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = expand("/data/{topic}/{partition}.jsonl", "p1", cases[i].topic, 3);
        ck_assert_msg(strcmp(got, cases[i].want) == 0, "topic \"%s\": got %s, want %s",
                      cases[i].topic, got, cases[i].want);
        free(got);
    }
    /* The pipeline name is sanitised the same way. */
    char *got = expand("/data/{pipeline}/{topic}-{partition}", "../x", "t", 0);
    ck_assert_str_eq(got, "/data/.._x/t-0");
    free(got);
}
END_TEST

/* Whether s (one path component) is safe: non-empty, not "." or "..", only [A-Za-z0-9._-]. */
static bool safe_component(const char *s, size_t n)
{
    if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

START_TEST(test_random_names_keep_the_structure)
{
    /* Names biased towards the dangerous bytes: '.', '/', and everything else. */
    static const char pool[] = "..../\\/ab";
    srand(11);
    for (int iter = 0; iter < 20000; iter++) {
        char topic[16];
        size_t len = (size_t)rand() % sizeof(topic);
        for (size_t i = 0; i < len; i++)
            topic[i] = rand() % 3 ? pool[rand() % (sizeof(pool) - 1)] : (char)(1 + rand() % 255);
        topic[len] = '\0';
        char *got = expand("/data/{topic}/{partition}.jsonl", "p1", topic, 7);
        ck_assert_msg(strncmp(got, "/data/", 6) == 0, "%s", got);
        const char *comp = got + 6;
        const char *slash = strchr(comp, '/');
        ck_assert_msg(slash != NULL && strcmp(slash, "/7.jsonl") == 0, "%s", got);
        ck_assert_msg(safe_component(comp, (size_t)(slash - comp)), "unsafe component in %s", got);
        free(got);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sink_path");
    TCase *tc = tcase_create("sink_path");
    tcase_add_test(tc, test_known_names);
    tcase_add_test(tc, test_random_names_keep_the_structure);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
