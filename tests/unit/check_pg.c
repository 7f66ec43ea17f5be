/*
 * check_pg.c - sc_pg's DSN helpers, identifier quoting and error helpers,
 * and sc_migrate's file-name rules; no server involved.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "db/sc_migrate.h"
#include "db/sc_pg.h"

static void check_mask(const char *dsn, const char *want)
{
    char *got = sc_pg_dsn_mask(dsn);
    ck_assert_msg(strcmp(got, want) == 0, "mask(%s) = [%s], want [%s]", dsn, got, want);
    free(got);
}

static void check_describe(const char *dsn, const char *want)
{
    char *got = sc_pg_dsn_describe(dsn);
    ck_assert_msg(strcmp(got, want) == 0, "describe(%s) = [%s], want [%s]", dsn, got, want);
    free(got);
}

/* The libpq environment must not leak into describe() expectations. */
static void clear_pg_env(void)
{
    static const char *const vars[] = {"PGHOST",     "PGHOSTADDR", "PGPORT",        "PGUSER",
                                       "PGDATABASE", "PGSERVICE",  "PGSERVICEFILE", "PGPASSWORD"};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
}

/* ---- sc_pg_dsn_mask ------------------------------------------------------- */

START_TEST(mask_keyvalue)
{
    check_mask("host=db port=5432 user=app password=s3cret dbname=orders",
               "host=db port=5432 user=app password=**** dbname=orders");
    check_mask("password=s3cret", "password=****");
    /* Blanks around "=" and odd spacing are kept as written. */
    check_mask("  host = db   password =  s3cret\tsslmode=require ",
               "  host = db   password =  ****\tsslmode=require ");
    /* sslpassword (client key passphrase) is a secret too. */
    check_mask("host=db sslpassword=k3y sslkey=/k.pem", "host=db sslpassword=**** sslkey=/k.pem");
    /* A misspelt key is rejected by libpq, but its value is still not shown. */
    check_mask("host=db passwd=s3cret", "host=db passwd=****");
}
END_TEST

START_TEST(mask_keyvalue_quoted)
{
    check_mask("host=db password='my secret' user=app", "host=db password=**** user=app");
    check_mask("host=db password='it\\'s \"q\" x' user=app", "host=db password=**** user=app");
    check_mask("user='app user' password='' dbname='my db'",
               "user='app user' password=**** dbname='my db'");
    /* A backslash escapes a blank in a bare value. */
    check_mask("password=a\\ b user=app", "password=**** user=app");
    /* Quoted values elsewhere are preserved byte for byte. */
    check_mask("application_name='a = b' host=db", "application_name='a = b' host=db");
}
END_TEST

START_TEST(mask_keyvalue_without_password)
{
    const char *dsns[] = {
        "host=db port=5432 user=app dbname=orders",
        "host=/var/run/postgresql dbname=x",
        "dbname='quoted name' options='-c search_path=a,b'",
        "",
    };
    for (size_t i = 0; i < sizeof(dsns) / sizeof(dsns[0]); i++)
        check_mask(dsns[i], dsns[i]);
    char *got = sc_pg_dsn_mask(NULL);
    ck_assert_str_eq(got, "");
    free(got);
}
END_TEST

START_TEST(mask_keyvalue_malformed)
{
    /* From the first syntax error on, nothing is shown: it may be half a password. */
    check_mask("host=db password='unterminated secret", "host=db password=****");
    check_mask("host=db password=sec ret", "host=db password=**** ****");
    check_mask("host=db password", "host=db ****");
    check_mask("mydb", "****");
}
END_TEST

START_TEST(mask_uri)
{
    check_mask("postgresql://user:pass@host/db", "postgresql://user:****@host/db");
    check_mask("postgres://app:p%40ss@db.example:6543/orders?sslmode=require",
               "postgres://app:****@db.example:6543/orders?sslmode=require");
    /* An empty password hides nothing. */
    check_mask("postgresql://user:@host/db", "postgresql://user:@host/db");
    check_mask("postgresql://app:pw@h1:5432,h2:5433/db",
               "postgresql://app:****@h1:5432,h2:5433/db");
    check_mask("postgresql://app:pw@[::1]:5432/db", "postgresql://app:****@[::1]:5432/db");
    /* Passwords given as query parameters (also percent-encoded keys). */
    check_mask("postgresql://host/db?password=x&sslmode=require",
               "postgresql://host/db?password=****&sslmode=require");
    check_mask("postgresql://host/db?sslmode=require&pass%77ord=x",
               "postgresql://host/db?sslmode=require&pass%77ord=****");
    check_mask("postgresql://u:a@host/db?password=b", "postgresql://u:****@host/db?password=****");
}
END_TEST

START_TEST(mask_uri_without_password)
{
    const char *dsns[] = {
        "postgresql://user@host/db",
        "postgresql://host:5432/db?sslmode=require&application_name=x",
        "postgresql://",
        "postgresql:///db?host=/tmp",
        "postgres://[::1]/db",
    };
    for (size_t i = 0; i < sizeof(dsns) / sizeof(dsns[0]); i++)
        check_mask(dsns[i], dsns[i]);
}
END_TEST

/* ---- sc_pg_login_refused ---------------------------------------------------- */

/* Refusals that waiting cannot fix end `run` at once; a server that is away is waited for. */
START_TEST(login_refused)
{
    static const char *const refused[] = {
        "could not connect to PostgreSQL at db:5432/app as app: connection to server at "
        "\"10.0.0.5\", port 5432 failed: FATAL:  password authentication failed for user \"app\"",
        "... failed: FATAL:  no pg_hba.conf entry for host \"10.0.0.9\", user \"app\", database "
        "\"app\", no encryption",
        "... failed: FATAL:  role \"app\" does not exist",
        "... failed: FATAL:  database \"appp\" does not exist",
        "... failed: fe_sendauth: no password supplied",
        "... failed: FATAL:  Ident authentication failed for user \"app\"",
        "... failed: FATAL:  permission denied for database \"app\"",
        "... failed: FATAL:  role \"app\" is not permitted to log in",
    };
    static const char *const waited_for[] = {
        "... port 5432 failed: Connection refused",
        "... failed: timeout expired",
        "... could not translate host name \"db\" to address: Name or service not known",
        "... failed: FATAL:  the database system is starting up",
        "... failed: FATAL:  sorry, too many clients already",
        "... failed: server closed the connection unexpectedly",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        ck_assert_msg(sc_pg_login_refused(refused[i]), "not a refusal: %s", refused[i]);
    for (size_t i = 0; i < sizeof(waited_for) / sizeof(waited_for[0]); i++)
        ck_assert_msg(!sc_pg_login_refused(waited_for[i]), "taken for a refusal: %s",
                      waited_for[i]);
    ck_assert(!sc_pg_login_refused(NULL));
}
END_TEST

/* ---- sc_pg_dsn_describe --------------------------------------------------- */

START_TEST(describe_keyvalue)
{
    clear_pg_env();
    check_describe("host=db.example port=6543 user=app dbname=orders password=s3cret",
                   "db.example:6543/orders as app");
    check_describe("host=db user='app user' dbname='my db' password='a b'",
                   "db:5432/my db as app user");
    /* dbname defaults to the user. */
    check_describe("host=db user=bob", "db:5432/bob as bob");
    check_describe("user=bob password=x", "localhost:5432/bob as bob");
    check_describe("hostaddr=10.0.0.7 user=bob", "10.0.0.7:5432/bob as bob");
    check_describe("host=a,b port=5432,5433 user=u dbname=d", "a:5432,b:5433/d as u");
    check_describe("host=a,b port=6000 user=u dbname=d", "a:6000,b:6000/d as u");
    check_describe("host=/var/run/postgresql user=u dbname=d", "/var/run/postgresql:5432/d as u");
}
END_TEST

START_TEST(describe_uri)
{
    clear_pg_env();
    check_describe("postgresql://app:s3cret@db.example:6543/orders",
                   "db.example:6543/orders as app");
    check_describe("postgres://app@db.example/orders?sslmode=require",
                   "db.example:5432/orders as app");
    check_describe("postgresql://app:pw@[::1]:5433/db", "[::1]:5433/db as app");
    check_describe("postgresql://h1:1,h2:2/db?user=u", "h1:1,h2:2/db as u");
    check_describe("postgresql://u@/db?host=/tmp", "/tmp:5432/db as u");
}
END_TEST

START_TEST(describe_env_defaults)
{
    clear_pg_env();
    setenv("PGHOST", "envhost", 1);
    setenv("PGPORT", "7777", 1);
    setenv("PGUSER", "envuser", 1);
    check_describe("", "envhost:7777/envuser as envuser");
    setenv("PGDATABASE", "envdb", 1);
    check_describe("password=x", "envhost:7777/envdb as envuser");
    /* The DSN wins over the environment. */
    check_describe("host=h port=1 user=u dbname=d", "h:1/d as u");
    check_describe("postgresql://u@h:1/d", "h:1/d as u");
    clear_pg_env();
}
END_TEST

START_TEST(describe_never_shows_secrets)
{
    clear_pg_env();
    const char *dsns[] = {
        "host=h user=u password=TOPSECRET",      "postgresql://u:TOPSECRET@h/d",
        "postgresql://u@h/d?password=TOPSECRET", "host=h password='TOPSECRET",
        "postgresql://u:TOPSECRET%zz@h/d",
    };
    for (size_t i = 0; i < sizeof(dsns) / sizeof(dsns[0]); i++) {
        char *d = sc_pg_dsn_describe(dsns[i]);
        ck_assert_msg(strstr(d, "TOPSECRET") == NULL, "describe(%s) = %s", dsns[i], d);
        free(d);
    }
    check_describe("host=h password='unterminated", "(invalid DSN)");
}
END_TEST

/* ---- sc_pg_dsn_check ------------------------------------------------------ */

START_TEST(dsn_check_valid)
{
    char err[256];
    const char *dsns[] = {
        "host=db port=5432 user=app password='a b' dbname=orders",
        "postgresql://app:pw@db:5432/orders?sslmode=require",
        "postgres://db/orders",
        "",
    };
    for (size_t i = 0; i < sizeof(dsns) / sizeof(dsns[0]); i++)
        ck_assert_msg(sc_pg_dsn_check(dsns[i], err, sizeof(err)) == 0, "%s: %s", dsns[i], err);
}
END_TEST

START_TEST(dsn_check_invalid_hides_dsn)
{
    static const struct {
        const char *dsn;
        const char *expect; /* in the error */
    } cases[] = {
        {"host=db password=TOP SECRET", "missing \"=\""},
        {"host=db password=TOP a\"SECRET", "missing \"=\" after \"...\" in connection info"},
        {"host=db password=TOP \"SECRET", "missing \"=\" after \"...\" in connection info"},
        {"host=db password=TOP ]\"SECRET", "missing \"=\" after \"...\" in connection info"},
        {"postgresql://u:TOP\"SECRET@[::1/d", "matching \"]\" in IPv6 host address in URI"},
        {"host=db password='TOPSECRET", "unterminated quoted string"},
        {"host=db passwrd=TOPSECRET", "invalid connection option \"passwrd\""},
        {"postgresql://u:TOPSECRET%zz@h/d", "invalid percent-encoded token"},
        {"postgresql://u:TOPSECRET@[::1/d", "IPv6"},
        {"postgresql://u:TOPSECRET@h/d?TOPSECRET", "query parameter"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[256] = "";
        ck_assert_int_eq(sc_pg_dsn_check(cases[i].dsn, err, sizeof(err)), -1);
        ck_assert_msg(strstr(err, cases[i].expect) != NULL, "%s: [%s]", cases[i].dsn, err);
        ck_assert_msg(strstr(err, "SECRET") == NULL, "%s leaks: [%s]", cases[i].dsn, err);
        ck_assert_msg(strstr(err, "postgresql://") == NULL, "%s leaks: [%s]", cases[i].dsn, err);
    }
}
END_TEST

START_TEST(connect_invalid_dsn)
{
    char err[512] = "";
    PGconn *conn = sc_pg_connect("host=db password='TOPSECRET", "t", 1000, err, sizeof(err));
    ck_assert_ptr_null(conn);
    ck_assert_msg(strstr(err, "could not connect to PostgreSQL: invalid DSN: ") == err, "%s", err);
    ck_assert_msg(strstr(err, "TOPSECRET") == NULL, "%s", err);
}
END_TEST

/* ---- quoting, errors -------------------------------------------------------- */

START_TEST(quote_ident_weird_names)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"sidecar", "\"sidecar\""},
        {"My-Schema", "\"My-Schema\""},
        {"with space", "\"with space\""},
        {"a\"b", "\"a\"\"b\""},
        {"\"", "\"\"\"\""},
        {"\"\"x\"", "\"\"\"\"\"x\"\"\""},
        {"Robert'); DROP TABLE x; --", "\"Robert'); DROP TABLE x; --\""},
        {"schéma", "\"schéma\""},
        {"", "\"\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *q = sc_pg_quote_ident(cases[i].in);
        ck_assert_str_eq(q, cases[i].out);
        free(q);
    }
}
END_TEST

START_TEST(classify_without_server)
{
    ck_assert_int_eq(sc_pg_classify(NULL, NULL), SC_PG_RETRY);
    PGresult *ok = PQmakeEmptyPGresult(NULL, PGRES_COMMAND_OK);
    ck_assert_int_eq(sc_pg_classify(NULL, ok), SC_PG_OK);
    PQclear(ok);
    PGresult *tuples = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    ck_assert_int_eq(sc_pg_classify(NULL, tuples), SC_PG_OK);
    PQclear(tuples);
    /* An error libpq made itself (no SQLSTATE): retry (with a live connection too:
     * integration_check_migrate, unit_check_pg_write_failure). */
    PGresult *fatal = PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
    ck_assert_int_eq(sc_pg_classify(NULL, fatal), SC_PG_RETRY);
    PQclear(fatal);
}
END_TEST

START_TEST(errmsg_without_server)
{
    char buf[64];
    ck_assert_str_eq(sc_pg_errmsg(NULL, NULL, buf, sizeof(buf)), "no result from the server");
    PGresult *fatal = PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
    ck_assert_str_eq(sc_pg_errmsg(NULL, fatal, buf, sizeof(buf)), "unknown error");
    PQclear(fatal);
    /* Truncation keeps the buffer terminated. */
    char tiny[5];
    ck_assert_str_eq(sc_pg_errmsg(NULL, NULL, tiny, sizeof(tiny)), "no r");
}
END_TEST

/* ---- migration file names --------------------------------------------------- */

START_TEST(version_of)
{
    ck_assert_int_eq(sc_migrate_version_of("001_init.sql"), 1);
    ck_assert_int_eq(sc_migrate_version_of("010_add_index.sql"), 10);
    ck_assert_int_eq(sc_migrate_version_of("999_last.sql"), 999);
    ck_assert_int_eq(sc_migrate_version_of("002_"), 2);
    ck_assert_int_eq(sc_migrate_version_of("000_zero.sql"), -1);
    ck_assert_int_eq(sc_migrate_version_of("01_short.sql"), -1);
    ck_assert_int_eq(sc_migrate_version_of("0001_long.sql"), -1);
    ck_assert_int_eq(sc_migrate_version_of("001-dash.sql"), -1);
    ck_assert_int_eq(sc_migrate_version_of("001init.sql"), -1);
    ck_assert_int_eq(sc_migrate_version_of("abc_x.sql"), -1);
    ck_assert_int_eq(sc_migrate_version_of("001"), -1);
    ck_assert_int_eq(sc_migrate_version_of(""), -1);
    ck_assert_int_eq(sc_migrate_version_of(NULL), -1);
}
END_TEST

START_TEST(embedded_files)
{
    ck_assert_uint_ge(sc_sql_nfiles, 1);
    ck_assert_str_eq(sc_sql_files[0].name, "001_init.sql");
    ck_assert_ptr_nonnull(strstr(sc_sql_files[0].text, "CREATE TABLE checkpoints"));
    int prev = 0;
    for (size_t i = 0; i < sc_sql_nfiles; i++) {
        int v = sc_migrate_version_of(sc_sql_files[i].name);
        ck_assert_msg(v > prev, "%s: bad or out-of-order version", sc_sql_files[i].name);
        prev = v;
    }
    ck_assert_int_eq(sc_migrate_latest_version(), prev);
}
END_TEST

START_TEST(file_list_rejected)
{
    /* Checked before the connection is even looked at. */
    char err[256];
    const struct sc_sql_file dup[] = {
        {"001_init.sql", "SELECT 1"},
        {"002_a.sql", "SELECT 1"},
        {"002_b.sql", "SELECT 1"},
    };
    ck_assert_int_eq(sc_migrate_apply_files(NULL, "s", dup, 3, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "duplicate migration version 2") != NULL, "%s", err);
    ck_assert_msg(strstr(err, "002_a.sql") && strstr(err, "002_b.sql"), "%s", err);

    const struct sc_sql_file badname[] = {
        {"001_init.sql", "SELECT 1"},
        {"2_second.sql", "SELECT 1"},
    };
    ck_assert_int_eq(sc_migrate_apply_files(NULL, "s", badname, 2, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "invalid migration file name \"2_second.sql\"") != NULL, "%s", err);

    ck_assert_int_eq(
        sc_migrate_apply_files(NULL, "", sc_sql_files, sc_sql_nfiles, err, sizeof(err)), -1);
    ck_assert_int_eq(
        sc_migrate_apply_files(NULL, "s", sc_sql_files, sc_sql_nfiles, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "not connected to PostgreSQL");
}
END_TEST

static Suite *pg_suite(void)
{
    Suite *s = suite_create("pg");
    TCase *tc = tcase_create("dsn");
    tcase_add_test(tc, mask_keyvalue);
    tcase_add_test(tc, mask_keyvalue_quoted);
    tcase_add_test(tc, mask_keyvalue_without_password);
    tcase_add_test(tc, mask_keyvalue_malformed);
    tcase_add_test(tc, mask_uri);
    tcase_add_test(tc, mask_uri_without_password);
    tcase_add_test(tc, describe_keyvalue);
    tcase_add_test(tc, describe_uri);
    tcase_add_test(tc, describe_env_defaults);
    tcase_add_test(tc, describe_never_shows_secrets);
    tcase_add_test(tc, dsn_check_valid);
    tcase_add_test(tc, dsn_check_invalid_hides_dsn);
    tcase_add_test(tc, connect_invalid_dsn);
    suite_add_tcase(s, tc);

    tc = tcase_create("helpers");
    tcase_add_test(tc, quote_ident_weird_names);
    tcase_add_test(tc, classify_without_server);
    tcase_add_test(tc, errmsg_without_server);
    suite_add_tcase(s, tc);

    tc = tcase_create("migrate_files");
    tcase_add_test(tc, login_refused);
    tcase_add_test(tc, version_of);
    tcase_add_test(tc, embedded_files);
    tcase_add_test(tc, file_list_rejected);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pg_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
