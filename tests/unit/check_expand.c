/*
 * check_expand.c - ${VAR}, ${VAR:-default}, ${file:/path} and $$ expansion,
 * its error messages, and that no error ever contains a value.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/sc_expand.h"

static char err[1024];
static char tmpdir[] = "/tmp/check_expand.XXXXXX";

/* Expands s (a C string) and returns the malloc'd result, failing the test on error. */
static char *ok(const char *s)
{
    char *out = NULL;
    size_t n = 0;
    err[0] = '\0';
    ck_assert_msg(sc_expand(s, strlen(s), &out, &n, err, sizeof(err)) == 0,
                  "expanding \"%s\" failed: %s", s, err);
    ck_assert_uint_eq(strlen(out), n);
    return out;
}

/* Expands s expecting failure; returns the message. */
static const char *fails(const char *s)
{
    char *out = (char *)"untouched";
    size_t n = 0;
    err[0] = '\0';
    ck_assert_msg(sc_expand(s, strlen(s), &out, &n, err, sizeof(err)) == -1,
                  "expanding \"%s\" should fail", s);
    ck_assert_str_eq(out, "untouched"); /* no output on failure */
    ck_assert_msg(err[0] != '\0', "no message for \"%s\"", s);
    return err;
}

#define ck_expand(in, expected)           \
    do {                                  \
        char *got_ = ok(in);              \
        ck_assert_str_eq(got_, expected); \
        free(got_);                       \
    } while (0)

#define ck_expand_fails(in, substring)                                                            \
    do {                                                                                          \
        const char *msg_ = fails(in);                                                             \
        ck_assert_msg(strstr(msg_, substring), "error for \"%s\" is \"%s\", expected \"%s\"", in, \
                      msg_, substring);                                                           \
    } while (0)

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static char *tmp_path(const char *name)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    return path;
}

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s", "/tmp/check_expand.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    setenv("SCX_SET", "value", 1);
    setenv("SCX_EMPTY", "", 1);
    unsetenv("SCX_UNSET");
}

static void teardown(void)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(test_plain_text_unchanged)
{
    ck_expand("", "");
    ck_expand("hello world", "hello world");
    ck_assert(!sc_expand_needed("hello", 5));
    ck_assert(!sc_expand_needed("a$b $ {x} $", 11));
    ck_assert(sc_expand_needed("a${b}", 5));
    ck_assert(sc_expand_needed("a$$", 3));
}
END_TEST

START_TEST(test_lone_dollar_is_literal)
{
    ck_expand("$", "$");
    ck_expand("a$b", "a$b");
    ck_expand("cost: 5$", "cost: 5$");
    ck_expand("$ {SCX_SET}", "$ {SCX_SET}");
    ck_expand("$SCX_SET", "$SCX_SET"); /* only the braced form expands */
}
END_TEST

START_TEST(test_double_dollar)
{
    ck_expand("$$", "$");
    ck_expand("$$$$", "$$");
    ck_expand("$${SCX_SET}", "${SCX_SET}");
    ck_expand("$$$", "$$");
    ck_expand("pa$$word", "pa$word");
    ck_expand("$$${SCX_SET}", "$value");
}
END_TEST

START_TEST(test_variables)
{
    ck_expand("${SCX_SET}", "value");
    ck_expand("a-${SCX_SET}-b", "a-value-b");
    ck_expand("${SCX_SET}${SCX_SET}", "valuevalue");
    ck_expand("${SCX_EMPTY}", ""); /* set but empty is "" */
    ck_expand("x${SCX_EMPTY}y", "xy");
    ck_expand("${_}", getenv("_") ? getenv("_") : "");
}
END_TEST

START_TEST(test_unset_variable_is_an_error)
{
    ck_assert_str_eq(fails("${SCX_UNSET}"), "environment variable SCX_UNSET is not set (use "
                                            "${SCX_UNSET:-default} for a default)");
    ck_expand_fails("prefix ${SCX_SET} ${SCX_UNSET}", "SCX_UNSET is not set");
}
END_TEST

START_TEST(test_defaults)
{
    ck_expand("${SCX_UNSET:-fallback}", "fallback");
    ck_expand("${SCX_EMPTY:-fallback}", "fallback"); /* :- also covers empty */
    ck_expand("${SCX_SET:-fallback}", "value");
    ck_expand("${SCX_UNSET:-}", "");
    ck_expand("${SCX_UNSET:-a b:c-d$e}", "a b:c-d$e"); /* literal text */
    ck_expand("${SCX_UNSET:-$$}", "$$");               /* not processed inside a default */
    ck_expand("${SCX_UNSET:-http://127.0.0.1:8080/x}", "http://127.0.0.1:8080/x");
}
END_TEST

START_TEST(test_nested_in_default_is_an_error)
{
    ck_expand_fails("${SCX_UNSET:-${SCX_SET}}", "nested \"${\" in the default of ${SCX_UNSET}");
    /* Also when the variable is set: the syntax is wrong either way. */
    ck_expand_fails("${SCX_SET:-${OTHER}}", "nested");
}
END_TEST

START_TEST(test_syntax_errors)
{
    ck_expand_fails("${SCX_SET", "unterminated \"${\" at character 1");
    ck_expand_fails("abc ${", "unterminated \"${\" at character 5");
    ck_expand_fails("${}", "empty variable name");
    ck_expand_fails("${1ABC}", "invalid variable name at character 1");
    ck_expand_fails("x ${A B}", "invalid variable name at character 3");
    ck_expand_fails("${A.B}", "invalid variable name");
    ck_expand_fails("${SCX_SET:?msg}", "unsupported expansion after \"${SCX_SET\"");
    ck_expand_fails("${SCX_SET-x}", "unsupported expansion");
    ck_expand_fails("${SCX_SET:x}", "unsupported expansion");
    ck_expand_fails("${SCX_SET:}", "unsupported expansion");
}
END_TEST

START_TEST(test_long_name)
{
    char in[400];
    snprintf(in, sizeof(in), "${%0300d}", 0);
    memset(in + 2, 'A', 300);
    ck_expand_fails(in, "longer than 255 characters");
}
END_TEST

START_TEST(test_no_second_pass)
{
    setenv("SCX_INDIRECT", "${SCX_SET} and $$", 1);
    ck_expand("${SCX_INDIRECT}", "${SCX_SET} and $$");
    ck_expand("${SCX_UNSET:-x}${SCX_INDIRECT}", "x${SCX_SET} and $$");
}
END_TEST

START_TEST(test_file)
{
    char *p = tmp_path("secret");
    char in[600];
    snprintf(in, sizeof(in), "${file:%s}", p);

    write_file(p, "s3cret\n", 7); /* one trailing newline is trimmed */
    ck_expand(in, "s3cret");
    write_file(p, "s3cret\r\n", 8); /* so is CRLF */
    ck_expand(in, "s3cret");
    write_file(p, "s3cret\n\n", 8); /* only one */
    ck_expand(in, "s3cret\n");
    write_file(p, "s3cret", 6);
    ck_expand(in, "s3cret");
    write_file(p, "", 0);
    ck_expand(in, "");
    write_file(p, "\n", 1);
    ck_expand(in, "");
    write_file(p, "a\nb\n", 4);
    ck_expand(in, "a\nb");

    snprintf(in, sizeof(in), "user=x password=${file:%s} host=y", p);
    write_file(p, "pw\n", 3);
    ck_expand(in, "user=x password=pw host=y");
}
END_TEST

START_TEST(test_file_with_nul_bytes)
{
    char *p = tmp_path("bin");
    write_file(p, "a\0b", 3);
    char in[600];
    snprintf(in, sizeof(in), "<${file:%s}>", p);
    char *out = NULL;
    size_t n = 0;
    ck_assert_int_eq(sc_expand(in, strlen(in), &out, &n, err, sizeof(err)), 0);
    ck_assert_uint_eq(n, 5);
    ck_assert_int_eq(memcmp(out, "<a\0b>", 6), 0); /* NUL-terminated too */
    free(out);
}
END_TEST

START_TEST(test_file_errors)
{
    char in[600], expected[700];
    char *p = tmp_path("missing");
    snprintf(in, sizeof(in), "${file:%s}", p);
    snprintf(expected, sizeof(expected), "cannot read file \"%s\": No such file or directory", p);
    ck_assert_str_eq(fails(in), expected);

    snprintf(in, sizeof(in), "${file:%s}", tmpdir);
    ck_expand_fails(in, "Is a directory");

    ck_expand_fails("${file:}", "empty file name");
    ck_expand_fails("${file:/x/${SCX_SET}}", "nested");

    /* A variable named "file" with a default is not a file reference. */
    ck_expand("${file:-dflt}", getenv("file") && *getenv("file") ? getenv("file") : "dflt");
}
END_TEST

START_TEST(test_file_size_limit)
{
    char *p = tmp_path("big");
    size_t n = SC_EXPAND_MAX_FILE;
    char *data = malloc(n + 1);
    memset(data, 'x', n + 1);
    write_file(p, data, n); /* exactly the limit: fine */
    char in[600];
    snprintf(in, sizeof(in), "${file:%s}", p);
    char *out = ok(in);
    ck_assert_uint_eq(strlen(out), n);
    free(out);
    write_file(p, data, n + 1);
    ck_expand_fails(in, "is larger than 1024 KiB");
    free(data);

    char *buf = NULL;
    size_t len = 0;
    errno = 0;
    ck_assert_int_eq(sc_expand_read_file(p, 10, &buf, &len), -1);
    ck_assert_int_eq(errno, EFBIG);
}
END_TEST

START_TEST(test_unreadable_file)
{
    char *p = tmp_path("noperm");
    write_file(p, "x", 1);
    ck_assert_int_eq(chmod(p, 0), 0);
    char in[600];
    snprintf(in, sizeof(in), "${file:%s}", p);
    if (geteuid() != 0) {
        ck_expand_fails(in, "Permission denied");
    } else {
        /* root reads anyway: the directory case covers an unreadable path. */
        char *out = ok(in);
        free(out);
    }
}
END_TEST

/* A FIFO (no writer), /dev/stdin or a device as a secret file: refused at once, never read. */
START_TEST(test_file_must_be_regular)
{
    char *fifo = tmp_path("fifo");
    unlink(fifo);
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    char in[600];
    snprintf(in, sizeof(in), "${file:%s}", fifo);
    ck_expand_fails(in, "is not a regular file");
    ck_expand_fails("${file:/dev/zero}", "is not a regular file");
    ck_expand_fails("${file:/dev/null}", "is not a regular file");
    char *buf = NULL;
    size_t len = 0;
    errno = 0;
    ck_assert_int_eq(sc_expand_read_regular_file(fifo, 10, &buf, &len), -1);
    ck_assert_int_eq(errno, EINVAL);
    unlink(fifo);
}
END_TEST

START_TEST(test_errors_never_contain_values)
{
    setenv("SCX_SECRET", "hunter2-secret", 1);
    const char *msg = fails("${SCX_SECRET} ${SCX_UNSET}");
    ck_assert_ptr_null(strstr(msg, "hunter2"));
    msg = fails("${SCX_SECRET:-x} ${1bad}");
    ck_assert_ptr_null(strstr(msg, "hunter2"));
    /* An invalid name is located, not quoted: it may be a pasted password. */
    msg = fails("${pa ssw0rd}");
    ck_assert_ptr_null(strstr(msg, "ssw0rd"));
    msg = fails("user=x password=${hunter2");
    ck_assert_ptr_null(strstr(msg, "hunter2"));

    char *p = tmp_path("secret2");
    write_file(p, "file-secret-value", 17);
    char in[600];
    snprintf(in, sizeof(in), "${file:%s}${SCX_UNSET}", p);
    msg = fails(in);
    ck_assert_ptr_null(strstr(msg, "file-secret-value"));
}
END_TEST

START_TEST(test_embedded_nul_in_input_is_kept)
{
    const char in[] = "a\0${SCX_SET}";
    char *out = NULL;
    size_t n = 0;
    ck_assert_int_eq(sc_expand(in, sizeof(in) - 1, &out, &n, err, sizeof(err)), 0);
    ck_assert_uint_eq(n, 7);
    ck_assert_int_eq(memcmp(out, "a\0value", 7), 0);
    free(out);
}
END_TEST

static Suite *expand_suite(void)
{
    Suite *s = suite_create("expand");
    TCase *tc = tcase_create("expand");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_plain_text_unchanged);
    tcase_add_test(tc, test_lone_dollar_is_literal);
    tcase_add_test(tc, test_double_dollar);
    tcase_add_test(tc, test_variables);
    tcase_add_test(tc, test_unset_variable_is_an_error);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_nested_in_default_is_an_error);
    tcase_add_test(tc, test_syntax_errors);
    tcase_add_test(tc, test_long_name);
    tcase_add_test(tc, test_no_second_pass);
    tcase_add_test(tc, test_file);
    tcase_add_test(tc, test_file_with_nul_bytes);
    tcase_add_test(tc, test_file_errors);
    tcase_add_test(tc, test_file_size_limit);
    tcase_add_test(tc, test_unreadable_file);
    tcase_add_test(tc, test_file_must_be_regular);
    tcase_add_test(tc, test_errors_never_contain_values);
    tcase_add_test(tc, test_embedded_nul_in_input_is_kept);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(expand_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
