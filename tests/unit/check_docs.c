/*
 * check_docs.c - the configuration reference in docs/configuration.md is
 * the one the binary prints: regenerate it with `tests/update-docs.sh`
 * after changing a key table.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/sc_config.h"
#include "sinks/sc_sink.h"
#include "hx.h"

START_TEST(test_config_reference_is_current)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/docs/configuration.md", HX_SOURCE_DIR);
    char *doc = hx_read_file(path, NULL);
    ck_assert_msg(doc != NULL, "cannot read %s", path);
    const char *begin = strstr(doc, "<!-- config-reference:begin");
    const char *end = strstr(doc, "<!-- config-reference:end -->");
    ck_assert_msg(begin && end && end > begin,
                  "docs/configuration.md lacks the config-reference markers");
    begin = strchr(begin, '\n') + 1;
    char *md = sc_config_reference_markdown(&sc_sinks);
    /* As embedded: without the generated H1 (the document has the section title) and with
     * every heading one level down. */
    char *body = md;
    if (strncmp(body, "# ", 2) == 0) {
        body = strchr(body, '\n') + 1;
        if (*body == '\n')
            body++;
    }
    char *want = malloc(strlen(body) * 2 + 1);
    char *o = want;
    for (const char *l = body; *l;) {
        if (*l == '#')
            *o++ = '#';
        const char *nl = strchr(l, '\n');
        size_t n = nl ? (size_t)(nl - l) + 1 : strlen(l);
        memcpy(o, l, n);
        o += n;
        l += n;
    }
    *o = '\0';
    size_t len = (size_t)(end - begin);
    ck_assert_msg(len == strlen(want) && memcmp(begin, want, len) == 0,
                  "docs/configuration.md's configuration reference is out of date: run "
                  "tests/update-docs.sh");
    free(want);
    free(md);
    free(doc);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("docs");
    TCase *tc = tcase_create("reference");
    tcase_add_test(tc, test_config_reference_is_current);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
