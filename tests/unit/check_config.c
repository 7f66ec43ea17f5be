/*
 * check_config.c - loading, validating and printing the configuration.
 *
 * Most cases are bad input: each asserts the exact FILE:LINE:COL, the JSON
 * path and part of the message, because that is what a user acts on.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "base/sc_log.h"
#include "base/sc_util.h"
#include "config/sc_conf_check.h"
#include "config/sc_config.h"
#include "sinks/sc_sink.h"

static char err[16384];
static struct sc_config *cfg;
static char tmpdir[64];

/*
 * Every document starts with these three lines, so positions below are easy
 * to check by eye:
 *   line 2, col 23: the postgres.dsn value; line 3, col 34: bootstrap.servers
 */
#define HEAD                                                      \
    "{\n"                                                         \
    "  \"postgres\": {\"dsn\": \"host=localhost dbname=app\"},\n" \
    "  \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:9092\"},\n"
/*
 * Line 4: the pipeline object's '{' is at col 17, its name value at col 26,
 * topics at col 41.  Line 5 holds the sink: its '{' is at col 13, so the
 * character at index k of the sink text is at col 13 + k.
 */
#define PIPE_HEAD "  \"pipelines\": [{\"name\": \"p\", \"topics\": [\"t\"],\n"
#define TAIL      "  }]\n}\n"
#define DOC(sink) HEAD PIPE_HEAD "    \"sink\": " sink "\n" TAIL
#define FILE_SINK "{\"type\": \"file\", \"path\": \"/d/{partition}\"}"

/* The file sink's workers when not given: a CPU left to librdkafka, at least 1, at most 4. */
static int file_default_workers(void)
{
    int n = sc_cpus_available() - 1;
    return n < 1 ? 1 : n < 4 ? n : 4;
}

static int load(const char *text)
{
    cfg = NULL;
    err[0] = '\0';
    int rc = sc_config_load_string("t.json", text, &sc_sinks, &cfg, err, sizeof(err));
    if (rc == 0)
        ck_assert_ptr_nonnull(cfg);
    else
        ck_assert_ptr_null(cfg);
    return rc;
}

static int load_file(const char *path)
{
    cfg = NULL;
    err[0] = '\0';
    return sc_config_load(path, &sc_sinks, &cfg, err, sizeof(err));
}

/*
 * The effective value of pipelines[i].sink.<key>, as `sidecar check-config`
 * prints it: each sink's config struct is private to its file, so the
 * tests read it the way users do.
 */
static json_t *sink_value(size_t i, const char *key)
{
    static json_t *all; /* kept until the next call: the tests compare one value at a time */
    json_decref(all);
    all = sc_config_to_json(cfg);
    json_t *sink = json_object_get(json_array_get(json_object_get(all, "pipelines"), i), "sink");
    return json_object_get(sink, key);
}

static const char *sink_str(size_t i, const char *key)
{
    json_t *v = sink_value(i, key);
    ck_assert_msg(json_is_string(v), "pipelines[%zu].sink.%s is not a string", i, key);
    return json_string_value(v);
}

static long long sink_int(size_t i, const char *key)
{
    json_t *v = sink_value(i, key);
    ck_assert_msg(json_is_integer(v), "pipelines[%zu].sink.%s is not an integer", i, key);
    return json_integer_value(v);
}

static bool sink_bool(size_t i, const char *key)
{
    json_t *v = sink_value(i, key);
    ck_assert_msg(json_is_boolean(v), "pipelines[%zu].sink.%s is not a boolean", i, key);
    return json_is_true(v);
}

/* Is there an error line that starts with prefix and contains sub? */
static bool has_line(const char *prefix, const char *sub)
{
    for (const char *line = err; *line;) {
        const char *eol = strchr(line, '\n');
        size_t n = eol ? (size_t)(eol - line) : strlen(line);
        char buf[4096];
        snprintf(buf, sizeof(buf), "%.*s", (int)n, line);
        if (strncmp(buf, prefix, strlen(prefix)) == 0 && strstr(buf, sub))
            return true;
        line += n + (eol ? 1 : 0);
    }
    return false;
}

static size_t count_lines(void)
{
    size_t n = 0;
    for (const char *p = err; *p; p++)
        n += *p == '\n';
    return n;
}

#define ck_valid(text)                                                            \
    do {                                                                          \
        ck_assert_msg(load(text) == 0, "expected a valid config, got:\n%s", err); \
    } while (0)

/* Loading text fails, with a line "where..." containing sub. */
#define ck_error(text, where, sub)                                                             \
    do {                                                                                       \
        ck_assert_int_eq(load(text), -1);                                                      \
        ck_assert_msg(has_line(where, sub), "expected a line \"%s...%s...\", got:\n%s", where, \
                      sub, err);                                                               \
    } while (0)

static void write_file(const char *path, const char *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s", "/tmp/check_config.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    setenv("HOSTNAME", "test-host", 1);
    cfg = NULL;
}

static void teardown(void)
{
    sc_config_free(cfg);
    cfg = NULL;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

/* ---- valid documents ---------------------------------------------------------------------- */

START_TEST(test_minimal_config_gets_every_default)
{
    ck_valid(DOC(FILE_SINK));
    ck_assert_str_eq(cfg->path, "t.json");
    ck_assert_str_eq(cfg->instance_id, "test-host");
    ck_assert_str_eq(cfg->postgres.dsn, "host=localhost dbname=app");
    ck_assert_str_eq(cfg->postgres.schema, "sidecar");
    ck_assert_int_eq(cfg->postgres.connect_timeout_ms, 5000);
    ck_assert_str_eq(cfg->kafka.bootstrap_servers, "127.0.0.1:9092");
    ck_assert_uint_eq(cfg->kafka.properties.count, 0);
    ck_assert_str_eq(cfg->admin.listen, "127.0.0.1:9644");
    ck_assert_str_eq(cfg->admin.token, "");
    ck_assert_int_eq(cfg->log.level, SC_LOG_INFO);
    ck_assert_int_eq(cfg->log.format, SC_LOG_FORMAT_JSON);
    ck_assert_int_eq(cfg->shutdown_timeout_ms, 8000);
    ck_assert_int_eq(cfg->notify.max_per_second, 200);
    ck_assert_int_eq(cfg->notify.coalesce_ms, 250);
    ck_assert_int_eq(cfg->events.retention_ms, 7 * 86400000LL);
    ck_assert_int_eq(cfg->events.compact_interval_ms, 3600000);
    ck_assert_uint_eq(cfg->npipelines, 1);
    const struct sc_pipeline_conf *p = &cfg->pipelines[0];
    ck_assert_str_eq(p->name, "p");
    ck_assert_str_eq(p->group_id, "sidecar-p");
    ck_assert_uint_eq(p->topics.count, 1);
    ck_assert_str_eq(p->topics.items[0], "t");
    ck_assert_int_eq(p->assignment, SC_ASSIGN_KAFKA_GROUP);
    ck_assert_int_eq(p->start_from, SC_START_EARLIEST);
    ck_assert_int_eq(p->formats.value, SC_VALUE_AUTO);
    ck_assert_int_eq(p->formats.key, SC_VALUE_AUTO);
    ck_assert_int_eq(p->batch.max_records, 5000);
    ck_assert_int_eq(p->batch.max_bytes, 1048576);
    ck_assert_int_eq(p->batch.max_wait_ms, 100);
    ck_assert_int_eq(p->lease.ttl_ms, 10000);
    ck_assert_int_eq(p->lease.renew_ms, 3000);
    ck_assert_int_eq(p->workers, file_default_workers());
    ck_assert_uint_eq(p->kafka_properties.count, 0);
    ck_assert_str_eq(p->sink.variant->name, "file");
    ck_assert_str_eq(sink_str(0, "path"), "/d/{partition}");
    ck_assert_str_eq(sink_str(0, "format"), "jsonl");
    ck_assert_ptr_null(sink_value(0, "delimiter")); /* only applies to raw */
    ck_assert_str_eq(sink_str(0, "fsync"), "batch");
    ck_assert_ptr_null(sink_value(0, "fsync_interval_ms")); /* only applies to interval */
}
END_TEST

/* A rule `run` enforces belongs in check-config too: upserts into another database must be
 * able to tell which record wrote a row. */
START_TEST(test_postgres_other_db_needs_source_position)
{
#define PG_OTHER(extra)                                                                          \
    DOC("{\"type\": \"postgres\", \"dsn\": \"host=x\", \"table\": \"t\", \"mode\": \"upsert\", " \
        "\"columns\": {\"id\": \"$.id\"" extra "}, \"key_columns\": [\"id\"]}")
    ck_error(PG_OTHER(""), "t.json:5:94: pipelines[0].sink.columns: ",
             "map columns to \"$partition\" and \"$offset\"");
    ck_error(PG_OTHER(", \"p\": \"$partition\""),
             "t.json:5:94: pipelines[0].sink.columns: ", "or use mode \"insert_ignore\"");
    ck_valid(PG_OTHER(", \"p\": \"$partition\", \"o\": \"$offset\""));
    sc_config_free(cfg);
    /* insert_ignore never overwrites, and the checkpoint database needs no guard. */
    ck_valid(DOC("{\"type\": \"postgres\", \"dsn\": \"host=x\", \"table\": \"t\", \"mode\": "
                 "\"insert_ignore\", \"columns\": {\"id\": \"$.id\"}, \"key_columns\": [\"id\"]}"));
    sc_config_free(cfg);
    ck_valid(DOC("{\"type\": \"postgres\", \"table\": \"t\", \"mode\": \"upsert\", \"columns\": "
                 "{\"id\": \"$.id\"}, \"key_columns\": [\"id\"]}"));
#undef PG_OTHER
}
END_TEST

START_TEST(test_instance_id_default)
{
    unsetenv("HOSTNAME");
    ck_valid(DOC(FILE_SINK));
    char host[256] = "";
    gethostname(host, sizeof(host));
    ck_assert_str_eq(cfg->instance_id, host[0] ? host : "sidecar");
    sc_config_free(cfg);
    setenv("HOSTNAME", "", 1); /* empty counts as unset */
    ck_valid(DOC(FILE_SINK));
    ck_assert_str_eq(cfg->instance_id, host[0] ? host : "sidecar");
}
END_TEST

static const char full_config[] =
    "{\n"
    "  \"instance_id\": \"node-7\",\n"
    "  \"postgres\": {\"dsn\": \"postgresql://app:pw@db:5432/app\", \"schema\": \"sc_2\",\n"
    "               \"connect_timeout_ms\": 1500},\n"
    "  \"kafka\": {\"bootstrap.servers\": \"k1:9092,k2:9092\",\n"
    "            \"properties\": {\"security.protocol\": \"plaintext\", \"fetch.wait.max.ms\": "
    "50,\n"
    "                           \"check.crcs\": true, \"client.id\": \"c\"}},\n"
    "  \"admin\": {\"listen\": \"[::1]:9000\", \"token\": \"adm\"},\n"
    "  \"log\": {\"level\": \"debug\", \"format\": \"text\"},\n"
    "  \"shutdown_timeout_ms\": 20000,\n"
    "  \"notify\": {\"max_per_second\": 50, \"coalesce_ms\": 100},\n"
    "  \"events\": {\"retention\": \"36h\", \"compact_interval\": 90000},\n"
    "  \"pipelines\": [\n"
    "    {\"name\": \"raw-files\", \"group_id\": \"g1\", \"topics\": [\"a\", \"b.c\"],\n"
    "     \"assignment\": \"kafka-group\", \"start_from\": \"latest\", \"value_format\": "
    "\"base64\",\n"
    "     \"batch\": {\"max_records\": 10, \"max_bytes\": 2048, \"max_wait_ms\": 0},\n"
    "     \"lease\": {\"ttl_ms\": 6000, \"renew_ms\": 3000}, \"workers\": 64,\n"
    "     \"kafka_properties\": {\"fetch.wait.max.ms\": \"10\"},\n"
    "     \"sink\": {\"type\": \"file\", \"path\": \"/d/{pipeline}/{topic}/{partition}.bin\",\n"
    "              \"format\": \"raw\", \"delimiter\": \"\\u0000|\", \"fsync\": \"interval\",\n"
    "              \"fsync_interval_ms\": 50}},\n"
    "    {\"name\": \"to-pg\", \"topics\": [\"a\"],\n"
    "     \"sink\": {\"type\": \"postgres\", \"dsn\": \"host=other password=x\", \"table\": "
    "\"app.t\",\n"
    "              \"mode\": \"upsert\", \"columns\": {\"id\": \"$.order.id\", \"item\": "
    "\"$.items[0].sku\",\n"
    "              \"t\": \"$topic\", \"body\": \"$value\", \"sp\": \"$partition\",\n"
    "              \"so\": \"$offset\"}, \"key_columns\": [\"id\"],\n"
    "              \"create_table\": false}},\n"
    "    {\"name\": \"to-http\", \"topics\": [\"a\"],\n"
    "     \"sink\": {\"type\": \"http\", \"url\": \"https://api.example.com/in\", \"method\": "
    "\"PUT\",\n"
    "              \"format\": \"json_array\", \"headers\": {\"X-Tenant\": \"t1\"},\n"
    "              \"timeout_ms\": 100, \"retry\": {\"max_attempts\": 1, "
    "\"initial_backoff_ms\": 5,\n"
    "              \"max_backoff_ms\": 5, \"max_elapsed_ms\": 0}, \"on_error\": \"stop\",\n"
    "              \"insecure_skip_verify\": true, \"bearer_token\": \"tok\"}},\n"
    "    {\"name\": \"debug\", \"topics\": [\"a\"], \"sink\": {\"type\": \"stdout\"}},\n"
    "    {\"name\": \"pg-bytes\", \"topics\": [\"a\"], \"sink\": {\"type\": \"postgres\",\n"
    "     \"table\": \"raw_t\", \"value_type\": \"bytea\", \"key_type\": \"bytea\", \"mode\": "
    "\"insert_ignore\"}}\n"
    "  ]\n"
    "}\n";

START_TEST(test_full_config)
{
    ck_valid(full_config);
    ck_assert_str_eq(cfg->instance_id, "node-7");
    ck_assert_str_eq(cfg->postgres.schema, "sc_2");
    ck_assert_int_eq(cfg->postgres.connect_timeout_ms, 1500);
    ck_assert_str_eq(cfg->kafka.bootstrap_servers, "k1:9092,k2:9092");
    ck_assert_uint_eq(cfg->kafka.properties.count, 4);
    ck_assert_str_eq(cfg->kafka.properties.items[0].key, "security.protocol"); /* in order */
    ck_assert_str_eq(sc_kvlist_get(&cfg->kafka.properties, "fetch.wait.max.ms"), "50");
    ck_assert_str_eq(sc_kvlist_get(&cfg->kafka.properties, "check.crcs"), "true");
    ck_assert_ptr_null(sc_kvlist_get(&cfg->kafka.properties, "nope"));
    ck_assert_str_eq(cfg->admin.listen, "[::1]:9000");
    ck_assert_str_eq(cfg->admin.token, "adm");
    ck_assert_int_eq(cfg->log.level, SC_LOG_DEBUG);
    ck_assert_int_eq(cfg->log.format, SC_LOG_FORMAT_TEXT);
    ck_assert_int_eq(cfg->shutdown_timeout_ms, 20000);
    ck_assert_int_eq(cfg->notify.max_per_second, 50);
    ck_assert_int_eq(cfg->notify.coalesce_ms, 100);
    ck_assert_int_eq(cfg->events.retention_ms, 36 * 3600000LL);
    ck_assert_int_eq(cfg->events.compact_interval_ms, 90000);
    ck_assert_uint_eq(cfg->npipelines, 5);

    const struct sc_pipeline_conf *p = &cfg->pipelines[0];
    ck_assert_str_eq(p->group_id, "g1");
    ck_assert_uint_eq(p->topics.count, 2);
    ck_assert_str_eq(p->topics.items[1], "b.c");
    ck_assert_int_eq(p->start_from, SC_START_LATEST);
    ck_assert_int_eq(p->formats.value, SC_VALUE_BASE64);
    ck_assert_int_eq(p->formats.key, SC_VALUE_BASE64); /* key_format follows base64 */
    ck_assert_int_eq(p->batch.max_records, 10);
    ck_assert_int_eq(p->batch.max_bytes, 2048);
    ck_assert_int_eq(p->batch.max_wait_ms, 0);
    ck_assert_int_eq(p->lease.ttl_ms, 6000);
    ck_assert_int_eq(p->workers, 64);
    ck_assert_str_eq(sc_kvlist_get(&p->kafka_properties, "fetch.wait.max.ms"), "10");
    ck_assert_str_eq(sink_str(0, "format"), "raw");
    ck_assert_uint_eq(json_string_length(sink_value(0, "delimiter")), 2);
    ck_assert_int_eq(memcmp(sink_str(0, "delimiter"), "\0|", 2), 0);
    ck_assert_str_eq(sink_str(0, "fsync"), "interval");
    ck_assert_int_eq(sink_int(0, "fsync_interval_ms"), 50);

    p = &cfg->pipelines[1];
    ck_assert_str_eq(p->sink.variant->name, "postgres");
    ck_assert_str_eq(sink_str(1, "dsn"), "host=other password=****");
    ck_assert_str_eq(sink_str(1, "table"), "app.t");
    ck_assert_str_eq(sink_str(1, "mode"), "upsert");
    ck_assert_uint_eq(json_object_size(sink_value(1, "columns")), 6);
    ck_assert_str_eq(json_string_value(json_object_get(sink_value(1, "columns"), "item")),
                     "$.items[0].sku");
    ck_assert_uint_eq(json_array_size(sink_value(1, "key_columns")), 1);
    ck_assert(!sink_bool(1, "create_table"));

    p = &cfg->pipelines[2];
    ck_assert_str_eq(p->sink.variant->name, "http");
    ck_assert_str_eq(sink_str(2, "url"), "https://api.example.com/in");
    ck_assert_str_eq(sink_str(2, "method"), "PUT");
    ck_assert_str_eq(sink_str(2, "format"), "json_array");
    ck_assert_str_eq(json_string_value(json_object_get(sink_value(2, "headers"), "X-Tenant")),
                     "t1");
    ck_assert_int_eq(sink_int(2, "timeout_ms"), 100);
    json_t *retry = sink_value(2, "retry");
    ck_assert_int_eq(json_integer_value(json_object_get(retry, "max_attempts")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(retry, "initial_backoff_ms")), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(retry, "max_backoff_ms")), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(retry, "max_elapsed_ms")), 0);
    ck_assert_str_eq(sink_str(2, "on_error"), "stop");
    ck_assert(json_is_null(sink_value(2, "ca_file")));
    ck_assert(sink_bool(2, "insecure_skip_verify"));
    ck_assert_str_eq(sink_str(2, "bearer_token"), "****");

    ck_assert_str_eq(cfg->pipelines[3].sink.variant->name, "stdout");
    ck_assert(json_is_null(sink_value(4, "dsn"))); /* the checkpoint database */
    ck_assert_str_eq(sink_str(4, "value_type"), "bytea");
    ck_assert_str_eq(sink_str(4, "key_type"), "bytea");
    ck_assert_str_eq(sink_str(4, "mode"), "insert_ignore");
    ck_assert(sink_bool(4, "create_table"));
}
END_TEST

START_TEST(test_effective_config_round_trips)
{
    /* check-config's output is itself a valid config with the same meaning. */
    ck_valid(full_config);
    json_t *first = sc_config_to_json(cfg);
    char *text = json_dumps(first, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    sc_config_free(cfg);
    ck_valid(text);
    json_t *second = sc_config_to_json(cfg);
    ck_assert(json_equal(first, second));
    /* Documented key order. */
    ck_assert_ptr_nonnull(strstr(text, "\"instance_id\""));
    ck_assert(strstr(text, "\"instance_id\"") < strstr(text, "\"postgres\""));
    ck_assert(strstr(text, "\"postgres\"") < strstr(text, "\"kafka\""));
    ck_assert(strstr(text, "\"events\"") < strstr(text, "\"pipelines\""));
    /* Keys that do not apply are left out rather than printed. */
    json_t *p0 = json_array_get(json_object_get(second, "pipelines"), 3);
    ck_assert_uint_eq(json_object_size(json_object_get(p0, "sink")), 1);
    free(text);
    json_decref(first);
    json_decref(second);
}
END_TEST

START_TEST(test_example_configs_load)
{
    static const char *const files[] = {"quickstart.json", "http-sink.json", "postgres-sink.json"};
    setenv("SIDECAR_PG_DSN", "host=127.0.0.1 port=5432 dbname=app user=app password=pw", 1);
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/conf/%s", HX_SOURCE_DIR, files[i]);
        ck_assert_msg(load_file(path) == 0, "%s:\n%s", path, err);
        sc_config_free(cfg);
        cfg = NULL;
    }
    char path[1024];
    snprintf(path, sizeof(path), "%s/conf/quickstart.json", HX_SOURCE_DIR);
    unsetenv("SIDECAR_DATA_DIR");
    ck_assert_int_eq(load_file(path), 0);
    ck_assert_str_eq(sink_str(0, "path"), "/tmp/sidecar-demo/{topic}/{partition}.jsonl");
    ck_assert_str_eq(cfg->pipelines[0].topics.items[0], "orders");
    sc_config_free(cfg);
    unsetenv("SIDECAR_PG_DSN");
    ck_assert_int_eq(load_file(path), -1);
    ck_assert_ptr_nonnull(
        strstr(err, "postgres.dsn: environment variable SIDECAR_PG_DSN is not set"));
}
END_TEST

START_TEST(test_utf8_bom_is_accepted)
{
    ck_valid("\xEF\xBB\xBF" DOC(FILE_SINK));
}
END_TEST

/* ---- the file itself ---------------------------------------------------------------------- */

START_TEST(test_missing_file)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/nope.json", tmpdir);
    ck_assert_int_eq(load_file(path), -1);
    char expected[256];
    snprintf(expected, sizeof(expected), "%s: cannot read config: No such file or directory\n",
             path);
    ck_assert_str_eq(err, expected);
    ck_assert_ptr_null(cfg);
}
END_TEST

START_TEST(test_unreadable_file_and_directory)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/secret.json", tmpdir);
    write_file(path, DOC(FILE_SINK), strlen(DOC(FILE_SINK)));
    ck_assert_int_eq(chmod(path, 0), 0);
    if (geteuid() != 0) { /* root reads it anyway */
        ck_assert_int_eq(load_file(path), -1);
        ck_assert(has_line(path, ": cannot read config: Permission denied"));
    }
    ck_assert_int_eq(load_file(tmpdir), -1);
    char expected[256];
    snprintf(expected, sizeof(expected), "%s: cannot read config: Is a directory\n", tmpdir);
    ck_assert_str_eq(err, expected);
}
END_TEST

START_TEST(test_empty_and_huge_files)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/empty.json", tmpdir);
    write_file(path, "", 0);
    ck_assert_int_eq(load_file(path), -1);
    ck_assert(has_line(path, ": cannot read config: file is empty"));
    write_file(path, " \n\t\n", 4);
    ck_assert_int_eq(load_file(path), -1);
    ck_assert(has_line(path, ": cannot read config: file is empty"));

    size_t n = 4 * 1024 * 1024 + 1;
    char *big = malloc(n);
    memset(big, ' ', n);
    big[0] = '{';
    big[n - 1] = '}';
    write_file(path, big, n);
    free(big);
    ck_assert_int_eq(load_file(path), -1);
    ck_assert(has_line(path, ": cannot read config: file is larger than 4 MiB"));
}
END_TEST

START_TEST(test_invalid_json_has_line_and_column)
{
    ck_error("{\n  \"postgres\": {\"dsn\": \"x\"},\n  \"kafka\": }\n",
             "t.json:3:12: ", "invalid JSON: unexpected token");
    ck_error("{\n  \"a\": tru\n}", "t.json:2:8: ", "invalid JSON: invalid token");
    ck_error("{\"a\": 1,}", "t.json:1:9: ", "invalid JSON:");
    ck_error("{\"a\": 1", "t.json:1:", "invalid JSON:");
    ck_assert_uint_eq(count_lines(), 1);
}
END_TEST

START_TEST(test_invalid_json_does_not_echo_strings)
{
    /* jansson quotes the bad token; a broken string may well be a password. */
    ck_error("{\n  \"postgres\": {\"dsn\": \"password=hunter2\n\"}}",
             "t.json:2:", "invalid JSON: unexpected newline");
    ck_assert_ptr_null(strstr(err, "hunter2"));
    ck_error("{\"postgres\": {\"dsn\": \"password=hunter2", "t.json:1:", "invalid JSON:");
    ck_assert_ptr_null(strstr(err, "hunter2"));
    ck_error("{\"postgres\": {\"dsn\": hunter2}}", "t.json:1:22: ", "invalid JSON: invalid token");
    ck_assert_ptr_null(strstr(err, "hunter2"));
}
END_TEST

START_TEST(test_top_level_must_be_an_object)
{
    ck_error("  [1, 2]", "t.json:1:3: ", "expected an object at the top level");
}
END_TEST

START_TEST(test_duplicate_keys)
{
    ck_error(HEAD PIPE_HEAD "    \"sink\": {\"type\": \"file\", \"path\": \"/a/{partition}\",\n"
                            "             \"path\": \"/b/{partition}\"}\n" TAIL,
             "t.json:6:14: pipelines[0].sink.path: ", "duplicate key \"path\"");
    ck_error("{\"a\": 1, \"\\u0061\": 2}", "t.json:1:10: a: ", "duplicate key \"a\"");
}
END_TEST

/* ---- keys --------------------------------------------------------------------------------- */

START_TEST(test_unknown_key_top_level)
{
    ck_error(HEAD "  \"pipeline\": []\n}",
             "t.json:4:3: pipeline: ", "unknown key \"pipeline\"; did you mean \"pipelines\"?");
    /* and the pipelines themselves are missing, at the top-level '{' */
    ck_assert(has_line("t.json:1:1: ", "missing required key \"pipelines\""));
}
END_TEST

START_TEST(test_unknown_key_nested)
{
    ck_error("{\n  \"postgres\": {\"dsn\": \"host=x\", \"shema\": \"s\"},\n"
             "  \"kafka\": {\"bootstrap.servers\": \"k:1\"},\n" PIPE_HEAD "    \"sink\": " FILE_SINK
             "\n" TAIL,
             "t.json:2:33: postgres.shema: ", "unknown key \"shema\"; did you mean \"schema\"?");
    ck_error(HEAD "  \"log\": {\"lvl\": \"info\"},\n" PIPE_HEAD "    \"sink\": " FILE_SINK
                  "\n" TAIL,
             "t.json:4:11: log.lvl: ", "unknown key \"lvl\"; did you mean \"level\"?");
    /* A prefix is a hint too; a far-off name gets none. */
    ck_error(HEAD "  \"events\": {\"compact\": \"1h\", \"zzzzzz\": 1},\n" PIPE_HEAD
                  "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:4:14: events.compact: ", "did you mean \"compact_interval\"?");
    ck_assert(has_line("t.json:4:31: events.zzzzzz: ", "unknown key \"zzzzzz\""));
    ck_assert_ptr_null(strstr(strstr(err, "zzzzzz"), "did you mean"));
}
END_TEST

START_TEST(test_columns_count_characters_and_keys_are_decoded)
{
    /* "ü" is two bytes but one column, as in jansson's own positions. */
    ck_error(HEAD "  \"admin\": {\"token\": \"\xC3\xBC\", \"listen\": \"x\"},\n" PIPE_HEAD
                  "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:4:37: admin.listen: ", "expected \"host:port\"");
    /* A member name written with escapes is found by its decoded name. */
    ck_error(HEAD "  \"admin\": {\"\\u006Cisten\": \"x\", \"t\\u00f6ken\": \"\"},\n" PIPE_HEAD
                  "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:4:28: admin.listen: ", "expected \"host:port\"");
    ck_assert(has_line("t.json:4:33: admin.t\xC3\xB6ken: ", "did you mean \"token\"?"));
}
END_TEST

START_TEST(test_unknown_key_in_sink)
{
    /* "pth" at index 17 of the sink text: col 30. */
    ck_error(DOC("{\"type\": \"file\", \"pth\": \"/d/{partition}\"}"),
             "t.json:5:30: pipelines[0].sink.pth: ", "unknown key \"pth\"; did you mean \"path\"?");
    ck_assert(has_line("t.json:5:13: pipelines[0].sink: ", "missing required key \"path\""));
    /* A key of another sink type. */
    ck_error(DOC("{\"type\": \"file\", \"path\": \"/d/{partition}\", \"url\": \"http://x\"}"),
             "t.json:5:56: pipelines[0].sink.url: ",
             "unknown key \"url\" for type \"file\" (it is a key of type \"http\")");
    ck_assert_uint_eq(count_lines(), 1);
    ck_error(
        DOC("{\"type\": \"stdout\", \"format\": \"raw\"}"),
        "t.json:5:32: pipelines[0].sink.format: ", "unknown key \"format\" for type \"stdout\"");
}
END_TEST

START_TEST(test_missing_required_keys)
{
    ck_error("{\n  \"kafka\": {\"bootstrap.servers\": \"k:1\"},\n" PIPE_HEAD
             "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:1:1: ", "missing required key \"postgres\"");
    ck_error("{\n  \"postgres\": {},\n  \"kafka\": {\"bootstrap.servers\": \"k:1\"},\n" PIPE_HEAD
             "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:2:15: postgres: ", "missing required key \"dsn\"");
    ck_error(DOC("{\"type\": \"http\"}"),
             "t.json:5:13: pipelines[0].sink: ", "missing required key \"url\"");
    ck_error(DOC("{\"path\": \"/d/{partition}\"}"),
             "t.json:5:13: pipelines[0].sink: ", "missing required key \"type\"");
    /* Without a type, the keys of some type are not reported as unknown. */
    ck_assert_uint_eq(count_lines(), 1);
    ck_error(HEAD "  \"pipelines\": [{\"topics\": [\"t\"], \"sink\": {\"type\": \"stdout\"}}]\n}",
             "t.json:4:17: pipelines[0]: ", "missing required key \"name\"");
    ck_error(HEAD "  \"pipelines\": [{\"name\": \"p\", \"topics\": [\"t\"]}]\n}",
             "t.json:4:17: pipelines[0]: ", "missing required key \"sink\"");
}
END_TEST

START_TEST(test_wrong_types)
{
    ck_error(DOC("{\"type\": \"http\", \"url\": 5}"),
             "t.json:5:37: pipelines[0].sink.url: ", "expected a string (got 5)");
    ck_error(DOC("{\"type\": \"http\", \"url\": \"http://x\", \"timeout_ms\": \"5s\"}"),
             "t.json:5:63: pipelines[0].sink.timeout_ms: ", "expected an integer (got \"5s\")");
    ck_error(DOC("{\"type\": \"http\", \"url\": \"http://x\", \"timeout_ms\": \"500\"}"),
             "t.json:5:63: pipelines[0].sink.timeout_ms: ",
             "expected an integer (write 500 without quotes)");
    ck_error(DOC("{\"type\": \"http\", \"url\": \"http://x\", \"timeout_ms\": 1.5}"),
             "t.json:5:63: pipelines[0].sink.timeout_ms: ", "expected an integer (got 1.5)");
    ck_error(DOC("{\"type\": \"http\", \"url\": \"http://x\", \"insecure_skip_verify\": \"yes\"}"),
             "t.json:5:73: pipelines[0].sink.insecure_skip_verify: ",
             "expected true or false (got \"yes\")");
    ck_error(DOC("{\"type\": \"http\", \"url\": \"http://x\", \"retry\": []}"),
             "t.json:5:58: pipelines[0].sink.retry: ", "expected an object");
    ck_error(DOC("{\"type\": \"http\", \"url\": \"http://x\", \"headers\": {\"A\": 1}}"),
             "t.json:5:66: pipelines[0].sink.headers.A: ", "expected a string (got 1)");
    ck_error(HEAD "  \"pipelines\": [{\"name\": \"p\", \"topics\": \"t\", \"sink\": {\"type\": "
                  "\"stdout\"}}]\n}",
             "t.json:4:41: pipelines[0].topics: ", "expected an array of strings");
    ck_error(HEAD
             "  \"pipelines\": [{\"name\": \"p\", \"topics\": [\"t\", 7], \"sink\": {\"type\": "
             "\"stdout\"}}]\n}",
             "t.json:4:47: pipelines[0].topics[1]: ", "expected a string (got 7)");
    ck_error(HEAD "  \"pipelines\": {}\n}",
             "t.json:4:16: pipelines: ", "expected an array of objects");
    ck_error(HEAD "  \"pipelines\": [\"p\"]\n}",
             "t.json:4:17: pipelines[0]: ", "expected an object");
    ck_error(HEAD "  \"log\": \"debug\",\n" PIPE_HEAD "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:4:10: log: ", "expected an object");
    ck_error(DOC("{\"type\": 5}"), "t.json:5:22: pipelines[0].sink.type: ",
             "expected one of: file, postgres, http, stdout");
}
END_TEST

START_TEST(test_ranges)
{
    ck_error(
        HEAD PIPE_HEAD "    \"batch\": {\"max_records\": 0},\n    \"sink\": " FILE_SINK "\n" TAIL,
        "t.json:5:30: pipelines[0].batch.max_records: ", "must be between 1 and 1000000 (got 0)");
    ck_error(HEAD PIPE_HEAD "    \"batch\": {\"max_records\": 1000001},\n    \"sink\": " FILE_SINK
                            "\n" TAIL,
             "t.json:5:30: pipelines[0].batch.max_records: ",
             "must be between 1 and 1000000 (got 1000001)");
    ck_error(HEAD PIPE_HEAD "    \"workers\": -1,\n    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:5:16: pipelines[0].workers: ", "must be between 1 and 64 (got -1)");
    ck_error(HEAD "  \"shutdown_timeout_ms\": 999,\n" PIPE_HEAD "    \"sink\": " FILE_SINK
                  "\n" TAIL,
             "t.json:4:26: shutdown_timeout_ms: ", "must be between 1000 and 600000 (got 999)");
    ck_error(HEAD "  \"shutdown_timeout_ms\": 99999999999999999999,\n" PIPE_HEAD,
             "t.json:4:", "invalid JSON: too big integer");
}
END_TEST

START_TEST(test_enums)
{
    ck_error(HEAD PIPE_HEAD "    \"start_from\": \"newest\",\n    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:5:19: pipelines[0].start_from: ",
             "expected one of: earliest, latest (got \"newest\")");
    ck_error(HEAD "  \"log\": {\"level\": \"INFO\"},\n" PIPE_HEAD "    \"sink\": " FILE_SINK
                  "\n" TAIL,
             "t.json:4:20: log.level: ", "expected one of: debug, info, warn, error");
    ck_error(DOC("{\"type\": \"postgres\", \"table\": \"t\", \"key_type\": \"jsonb\"}"),
             "t.json:5:60: pipelines[0].sink.key_type: ", "expected one of: text, bytea");
    ck_error(HEAD PIPE_HEAD "    \"assignment\": \"pg-lease\",\n    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:5:19: pipelines[0].assignment: ", "expected one of: kafka-group");
}
END_TEST

START_TEST(test_unknown_sink_type)
{
    ck_error(DOC("{\"type\": \"ftp\", \"path\": \"x\"}"), "t.json:5:22: pipelines[0].sink.type: ",
             "expected one of: file, postgres, http, stdout (got \"ftp\")");
    ck_assert_uint_eq(count_lines(), 1); /* "path" is not also reported */
}
END_TEST

START_TEST(test_file_sink_path)
{
    ck_error(DOC("{\"type\": \"file\", \"path\": \"/d/{topic}.jsonl\"}"),
             "t.json:5:38: pipelines[0].sink.path: ",
             "must contain {partition}: partitions cannot share a file");
    ck_error(DOC("{\"type\": \"file\", \"path\": \"/d/{part}/{partition}\"}"),
             "t.json:5:38: pipelines[0].sink.path: ", "unknown placeholder \"{part}\"");
    ck_error(DOC("{\"type\": \"file\", \"path\": \"/d/{partition\"}"),
             "t.json:5:38: pipelines[0].sink.path: ", "unterminated placeholder");
    /* Two topics need {topic}. */
    ck_error(
        HEAD
        "  \"pipelines\": [{\"name\": \"p\", \"topics\": [\"a\", \"b\"],\n    \"sink\": " FILE_SINK
        "\n" TAIL,
        "t.json:5:38: pipelines[0].sink.path: ", "must contain {topic}");
    /* Two pipelines writing the same files. */
    ck_error(HEAD "  \"pipelines\": [\n"
                  "    {\"name\": \"a\", \"topics\": [\"t\"], \"sink\": " FILE_SINK "},\n"
                  "    {\"name\": \"b\", \"topics\": [\"t\"], \"sink\": " FILE_SINK "}]\n}",
             "t.json:6:69: pipelines[1].sink.path: ", "same files as pipelines[0].sink.path");
    ck_valid(HEAD "  \"pipelines\": [\n"
                  "    {\"name\": \"a\", \"topics\": [\"t\"], \"sink\": {\"type\": \"file\", "
                  "\"path\": \"/{pipeline}/{partition}\"}},\n"
                  "    {\"name\": \"b\", \"topics\": [\"t\"], \"sink\": {\"type\": \"file\", "
                  "\"path\": \"/{pipeline}/{partition}\"}}]\n}");
}
END_TEST

START_TEST(test_file_sink_delimiter)
{
    ck_error(DOC("{\"type\": \"file\", \"path\": \"/d/{partition}\", \"delimiter\": \"\\t\"}"),
             "t.json:5:69: pipelines[0].sink.delimiter: ", "only applies to format raw");
    ck_valid(DOC("{\"type\": \"file\", \"path\": \"/d/{partition}\", \"format\": \"raw\", "
                 "\"delimiter\": \"\\u0000\"}"));
    ck_assert_uint_eq(json_string_length(sink_value(0, "delimiter")), 1);
    ck_assert_int_eq(sink_str(0, "delimiter")[0], '\0');
    json_t *j = sc_config_to_json(cfg);
    json_t *d = json_object_get(
        json_object_get(json_array_get(json_object_get(j, "pipelines"), 0), "sink"), "delimiter");
    ck_assert_uint_eq(json_string_length(d), 1);
    json_decref(j);
    sc_config_free(cfg);
    /* NUL is only allowed there. */
    ck_error(DOC("{\"type\": \"file\", \"path\": \"/d/{partition}\\u0000\"}"),
             "t.json:5:38: pipelines[0].sink.path: ", "must not contain a NUL character");
    ck_error(
        DOC("{\"type\": \"file\", \"path\": \"/d/{partition}\", \"fsync_interval_ms\": 5}"),
        "t.json:5:77: pipelines[0].sink.fsync_interval_ms: ", "only applies to fsync interval");
}
END_TEST

START_TEST(test_env_unset)
{
    unsetenv("SCT_NOPE");
    ck_error("{\n  \"postgres\": {\"dsn\": \"${SCT_NOPE}\"},\n"
             "  \"kafka\": {\"bootstrap.servers\": \"k:1\"},\n" PIPE_HEAD "    \"sink\": " FILE_SINK
             "\n" TAIL,
             "t.json:2:23: postgres.dsn: ",
             "environment variable SCT_NOPE is not set (use ${SCT_NOPE:-default} for a default)");
    /* In an array item and a map value too. */
    ck_error(HEAD "  \"pipelines\": [{\"name\": \"p\", \"topics\": [\"${SCT_NOPE}\"],\n"
                  "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:4:42: pipelines[0].topics[0]: ", "SCT_NOPE is not set");
    ck_error(
        DOC("{\"type\": \"http\", \"url\": \"http://x\", \"headers\": {\"X-A\": \"${SCT_NOPE}\"}}"),
        "t.json:5:68: pipelines[0].sink.headers.X-A: ", "SCT_NOPE is not set");
    ck_error(DOC("{\"type\": \"http\", \"url\": \"http://${SCT_X\"}"),
             "t.json:5:37: pipelines[0].sink.url: ", "unterminated \"${\"");
}
END_TEST

START_TEST(test_env_defaults_and_values)
{
    unsetenv("SCT_BOOT");
    setenv("SCT_EMPTY", "", 1);
    setenv("SCT_TOPIC", "orders", 1);
    setenv("SCT_KEY", "k-1", 1);
    ck_valid("{\n  \"postgres\": {\"dsn\": \"host=${SCT_EMPTY:-db} dbname=x\"},\n"
             "  \"kafka\": {\"bootstrap.servers\": \"${SCT_BOOT:-127.0.0.1:9092}\"},\n"
             "  \"admin\": {\"token\": \"${SCT_EMPTY}\"},\n"
             "  \"pipelines\": [{\"name\": \"p\", \"topics\": [\"${SCT_TOPIC}\"],\n"
             "    \"group_id\": \"$${SCT_TOPIC}\",\n"
             "    \"sink\": {\"type\": \"http\", \"url\": \"http://x\", \"headers\": {\"X-Key\": "
             "\"${SCT_KEY}\"}}\n" TAIL);
    ck_assert_str_eq(cfg->postgres.dsn, "host=db dbname=x");
    ck_assert_str_eq(cfg->kafka.bootstrap_servers, "127.0.0.1:9092");
    ck_assert_str_eq(cfg->admin.token, "");
    ck_assert_str_eq(cfg->pipelines[0].topics.items[0], "orders");
    ck_assert_str_eq(cfg->pipelines[0].group_id, "${SCT_TOPIC}");
    ck_assert_str_eq(json_string_value(json_object_get(sink_value(0, "headers"), "X-Key")), "k-1");
}
END_TEST

START_TEST(test_env_in_integers_and_booleans)
{
    unsetenv("SCT_WORKERS");
    setenv("SCT_CREATE", "false", 1);
    setenv("SCT_RET", "2d", 1);
    ck_valid(HEAD "  \"events\": {\"retention\": \"${SCT_RET}\"},\n" PIPE_HEAD
                  "    \"workers\": \"${SCT_WORKERS:-7}\",\n"
                  "    \"sink\": {\"type\": \"postgres\", \"table\": \"t\", \"create_table\": "
                  "\"${SCT_CREATE}\"}\n" TAIL);
    ck_assert_int_eq(cfg->pipelines[0].workers, 7);
    ck_assert(!sink_bool(0, "create_table"));
    ck_assert_int_eq(cfg->events.retention_ms, 2 * 86400000LL);
    sc_config_free(cfg);

    setenv("SCT_WORKERS", "abc", 1);
    ck_error(
        HEAD PIPE_HEAD "    \"workers\": \"${SCT_WORKERS}\",\n    \"sink\": " FILE_SINK "\n" TAIL,
        "t.json:5:16: pipelines[0].workers: ", "expected an integer after expansion (got \"abc\")");
    setenv("SCT_WORKERS", "65", 1);
    ck_error(HEAD PIPE_HEAD "    \"workers\": \"${SCT_WORKERS}\",\n    \"sink\": " FILE_SINK
                            "\n" TAIL,
             "t.json:5:16: pipelines[0].workers: ", "must be between 1 and 64 (got 65)");
    setenv("SCT_CREATE", "yes", 1);
    ck_error(DOC("{\"type\": \"postgres\", \"table\": \"t\", \"create_table\": \"${SCT_CREATE}\"}"),
             "t.json:5:64: pipelines[0].sink.create_table: ",
             "expected true or false after expansion (got \"yes\")");
}
END_TEST

START_TEST(test_file_expansion)
{
    char path[128], doc[1024];
    snprintf(path, sizeof(path), "%s/dsn", tmpdir);
    write_file(path, "host=db password=from-file\n", 27);
    snprintf(doc, sizeof(doc),
             "{\n  \"postgres\": {\"dsn\": \"${file:%s}\"},\n"
             "  \"kafka\": {\"bootstrap.servers\": \"k:1\"},\n" PIPE_HEAD "    \"sink\": " FILE_SINK
             "\n" TAIL,
             path);
    ck_valid(doc);
    ck_assert_str_eq(cfg->postgres.dsn, "host=db password=from-file");
    json_t *j = sc_config_to_json(cfg);
    char *dump = json_dumps(j, 0);
    ck_assert_ptr_null(strstr(dump, "from-file"));
    free(dump);
    json_decref(j);
    sc_config_free(cfg);

    unlink(path);
    ck_error(doc, "t.json:2:23: postgres.dsn: ", "cannot read file \"");
    ck_assert(has_line("t.json:2:23: postgres.dsn: ", ": No such file or directory"));
    ck_assert_ptr_nonnull(strstr(err, path));
}
END_TEST

START_TEST(test_duplicate_pipeline_names)
{
    ck_error(
        HEAD "  \"pipelines\": [\n"
             "    {\"name\": \"p\", \"topics\": [\"t\"], \"sink\": {\"type\": \"stdout\"}},\n"
             "    {\"name\": \"q\", \"topics\": [\"t\"], \"sink\": {\"type\": \"stdout\"}},\n"
             "    {\"name\": \"p\", \"topics\": [\"u\"], \"sink\": {\"type\": \"stdout\"}}]\n}",
        "t.json:7:14: pipelines[2].name: ", "duplicate pipeline name \"p\" (also pipelines[0])");
    ck_assert_uint_eq(count_lines(), 1);
}
END_TEST

START_TEST(test_pipeline_names_and_topics)
{
    ck_error(HEAD "  \"pipelines\": [{\"name\": \"-p\", \"topics\": [\"t\"], \"sink\": {\"type\": "
                  "\"stdout\"}}]\n}",
             "t.json:4:26: pipelines[0].name: ", "must be 1 to 63 letters");
    ck_error(HEAD
             "  \"pipelines\": [{\"name\": \"p\", \"topics\": [\"or ders\", \"..\"], \"sink\": "
             "{\"type\": \"stdout\"}}]\n}",
             "t.json:4:42: pipelines[0].topics[0]: ", "invalid topic name \"or ders\"");
    ck_assert(has_line("t.json:4:53: pipelines[0].topics[1]: ", "invalid topic name \"..\""));
    ck_error(HEAD
             "  \"pipelines\": [{\"name\": \"p\", \"topics\": [\"t\", \"u\", \"t\"], \"sink\": "
             "{\"type\": \"stdout\"}}]\n}",
             "t.json:4:52: pipelines[0].topics[2]: ", "duplicate value \"t\"");
    ck_error(HEAD "  \"pipelines\": []\n}", "t.json:4:16: pipelines: ", "must not be empty");
}
END_TEST

START_TEST(test_too_many_pipelines)
{
    char doc[16384];
    size_t o = (size_t)snprintf(doc, sizeof(doc), "%s  \"pipelines\": [", HEAD);
    for (int i = 0; i < 65; i++)
        o += (size_t)snprintf(doc + o, sizeof(doc) - o,
                              "%s{\"name\": \"p%d\", \"topics\": [\"t\"], \"sink\": {\"type\": "
                              "\"stdout\"}}",
                              i ? "," : "", i);
    snprintf(doc + o, sizeof(doc) - o, "]}");
    ck_error(doc, "t.json:4:16: pipelines: ", "must have at most 64 items (got 65)");
}
END_TEST

START_TEST(test_lease_renew_vs_ttl)
{
    ck_error(HEAD PIPE_HEAD "    \"lease\": {\"ttl_ms\": 10000, \"renew_ms\": 6000},\n"
                            "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:5:44: pipelines[0].lease.renew_ms: ",
             "must be at most half of lease.ttl_ms (10000)");
    /* renew_ms left at its default (3000): the lease object is the position. */
    ck_error(HEAD PIPE_HEAD "    \"lease\": {\"ttl_ms\": 5000},\n    \"sink\": " FILE_SINK
                            "\n" TAIL,
             "t.json:5:14: pipelines[0].lease.renew_ms: ",
             "must be at most half of lease.ttl_ms (5000)");
    /* An unknown key next to them does not hide the rule. */
    ck_error(HEAD PIPE_HEAD "    \"lease\": {\"ttl_ms\": 5000, \"renw_ms\": 1},\n"
                            "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:5:31: pipelines[0].lease.renw_ms: ", "did you mean \"renew_ms\"?");
    ck_assert(has_line("t.json:5:14: pipelines[0].lease.renew_ms: ", "at most half"));
    ck_valid(HEAD PIPE_HEAD "    \"lease\": {\"ttl_ms\": 6000, \"renew_ms\": 3000},\n"
                            "    \"sink\": " FILE_SINK "\n" TAIL);
}
END_TEST

START_TEST(test_managed_kafka_properties)
{
    ck_error("{\n  \"postgres\": {\"dsn\": \"host=x\"},\n"
             "  \"kafka\": {\"bootstrap.servers\": \"k:1\", \"properties\": {\"group.id\": "
             "\"g\"}},\n" PIPE_HEAD "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:3:56: kafka.properties.group.id: ",
             "property \"group.id\" is managed by the sidecar: use pipelines[].group_id");
    ck_error(HEAD PIPE_HEAD "    \"kafka_properties\": {\"auto.offset.reset\": \"latest\",\n"
                            "      \"bootstrap.servers\": \"x:1\", \"enable.auto.commit\": true},\n"
                            "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:5:26: pipelines[0].kafka_properties.auto.offset.reset: ",
             "use pipelines[].start_from");
    ck_assert(has_line("t.json:6:7: pipelines[0].kafka_properties.bootstrap.servers: ",
                       "use kafka.bootstrap.servers"));
    ck_assert(has_line("t.json:6:35: pipelines[0].kafka_properties.enable.auto.commit: ",
                       "managed by the sidecar"));
    ck_assert_uint_eq(count_lines(), 3);
}
END_TEST

START_TEST(test_librdkafka_properties_are_checked)
{
    ck_error(
        HEAD PIPE_HEAD "    \"kafka_properties\": {\"fetch.wait.max.m\": 10, \"nonsense.x\": 1,\n"
                       "      \"security.protocol\": \"bogus\", \"sasl.password\": null,\n"
                       "      \"statistics.interval.ms\": -5},\n"
                       "    \"sink\": " FILE_SINK "\n" TAIL,
        "t.json:5:26: pipelines[0].kafka_properties.fetch.wait.max.m: ",
        "unknown librdkafka property \"fetch.wait.max.m\"; did you mean \"fetch.wait.max.ms\"?");
    ck_assert(has_line("t.json:5:50: pipelines[0].kafka_properties.nonsense.x: ",
                       "unknown librdkafka property \"nonsense.x\""));
    ck_assert(has_line("t.json:6:28: pipelines[0].kafka_properties.security.protocol: ",
                       "Invalid value \"bogus\""));
    ck_assert(has_line("t.json:6:54: pipelines[0].kafka_properties.sasl.password: ",
                       "expected a string, number or boolean"));
    ck_assert(has_line("t.json:7:33: pipelines[0].kafka_properties.statistics.interval.ms: ",
                       "outside allowed range"));
}
END_TEST

START_TEST(test_malformed_dsn_hides_the_password)
{
    static const char *const dsns[] = {
        "host=db password=hunter2 garbage",   /* libpq: missing "=" after "garbage" */
        "password=my hunter2",                /* an unquoted password with a space */
        "postgresql://bob:hunter2@[::1/db",   /* libpq quotes the whole URI */
        "postgresql://bob:hunter2%zz@db/app", /* ... or the percent-decoded password */
        "host='db password=hunter2",          /* unterminated quote */
    };
    for (size_t i = 0; i < sizeof(dsns) / sizeof(dsns[0]); i++) {
        char doc[1024];
        snprintf(doc, sizeof(doc),
                 "{\n  \"postgres\": {\"dsn\": \"%s\"},\n"
                 "  \"kafka\": {\"bootstrap.servers\": \"k:1\"},\n" PIPE_HEAD
                 "    \"sink\": " FILE_SINK "\n" TAIL,
                 dsns[i]);
        ck_error(doc, "t.json:2:23: postgres.dsn: ", "invalid DSN: ");
        ck_assert_msg(!strstr(err, "hunter2"), "password in: %s", err);
    }
    /* The useful part of libpq's message is kept. */
    ck_error("{\n  \"postgres\": {\"dsn\": \"hots=db\"},\n  \"kafka\": {\"bootstrap.servers\": "
             "\"k:1\"},\n" PIPE_HEAD "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:2:23: postgres.dsn: ", "invalid DSN: invalid connection option \"hots\"");
    ck_error(DOC("{\"type\": \"postgres\", \"table\": \"t\", \"dsn\": \"x=1 password=hunter2 y\"}"),
             "t.json:5:55: pipelines[0].sink.dsn: ", "invalid DSN: ");
    ck_assert_ptr_null(strstr(err, "hunter2"));
    ck_error("{\n  \"postgres\": {\"dsn\": \"\"},\n  \"kafka\": {\"bootstrap.servers\": "
             "\"k:1\"},\n" PIPE_HEAD "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:2:23: postgres.dsn: ", "must not be empty");
}
END_TEST

START_TEST(test_secrets_are_masked)
{
    ck_valid(
        "{\n  \"postgres\": {\"dsn\": \"postgresql://app:pg-uri-pw@db/app?sslpassword=ssl-pw&"
        "sslmode=require\"},\n"
        "  \"kafka\": {\"bootstrap.servers\": \"k:1\", \"properties\": {\"sasl.password\": "
        "\"sasl-pw\",\n"
        "    \"sasl.oauthbearer.config\": \"principal=x oauth-cfg\", \"client.id\": "
        "\"visible-id\"}},\n"
        "  \"admin\": {\"token\": \"admin-tok\"},\n"
        "  \"pipelines\": [{\"name\": \"p\", \"topics\": [\"t\"],\n"
        "    \"kafka_properties\": {\"ssl.key.password\": \"key-pw\"},\n"
        "    \"sink\": {\"type\": \"http\", \"url\": \"https://u:url-pw@h/x\", "
        "\"bearer_token\": \"bearer-tok\",\n"
        "      \"headers\": {\"X-Api-Key\": \"api-key-val\", \"Cookie\": \"sess=cookie-val\", "
        "\"X-Trace\": \"visible-trace\"}}},\n"
        "   {\"name\": \"q\", \"topics\": [\"t\"], \"sink\": {\"type\": \"postgres\", \"table\": "
        "\"t\",\n"
        "      \"dsn\": \"host=db user=u password='kv pw\\\\'s' dbname=d\"}}]\n}");
    json_t *j = sc_config_to_json(cfg);
    char *dump = json_dumps(j, JSON_PRESERVE_ORDER);
    static const char *const secrets[] = {"pg-uri-pw",   "ssl-pw",     "sasl-pw", "oauth-cfg",
                                          "admin-tok",   "key-pw",     "url-pw",  "bearer-tok",
                                          "api-key-val", "cookie-val", "kv pw"};
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
        ck_assert_msg(!strstr(dump, secrets[i]), "\"%s\" in %s", secrets[i], dump);
    ck_assert_ptr_nonnull(strstr(dump, "visible-id"));
    ck_assert_ptr_nonnull(strstr(dump, "visible-trace"));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "postgres"), "dsn")),
                     "postgresql://app:****@db/app?sslpassword=****&sslmode=require");
    json_t *p = json_object_get(j, "pipelines");
    json_t *http = json_object_get(json_array_get(p, 0), "sink");
    ck_assert_str_eq(json_string_value(json_object_get(http, "url")), "https://u:****@h/x");
    ck_assert_str_eq(json_string_value(json_object_get(http, "bearer_token")), "****");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "admin"), "token")),
                     "****");
    json_t *pg = json_object_get(json_array_get(p, 1), "sink");
    ck_assert_str_eq(json_string_value(json_object_get(pg, "dsn")),
                     "host=db user=u password=**** dbname=d");
    free(dump);
    json_decref(j);
    /* The struct keeps the real values. */
    ck_assert_str_eq(cfg->admin.token, "admin-tok");
}
END_TEST

START_TEST(test_key_is_secret)
{
    static const char *const yes[] = {"sasl.password",
                                      "ssl.keystore.password",
                                      "Authorization",
                                      "X-API-KEY",
                                      "x-apikey",
                                      "my_api_key",
                                      "client_secret",
                                      "X-Auth-Token",
                                      "sasl.oauthbearer.config",
                                      "ssl.key.pem",
                                      "SSL_KEY",
                                      "aws_credentials",
                                      "passwd",
                                      "Cookie"};
    static const char *const no[] = {"client.id",        "security.protocol", "X-Trace",
                                     "ssl.key.location", "sasl.username",     "Content-Encoding",
                                     "keyboard"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        ck_assert_msg(sc_conf_key_is_secret(yes[i]), "%s", yes[i]);
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        ck_assert_msg(!sc_conf_key_is_secret(no[i]), "%s", no[i]);
}
END_TEST

START_TEST(test_postgres_sink_rules)
{
    ck_error(DOC("{\"type\": \"postgres\", \"table\": \"app.orders.x\"}"),
             "t.json:5:43: pipelines[0].sink.table: ", "must be \"name\" or \"schema.name\"");
    ck_error(DOC("{\"type\": \"postgres\", \"table\": \"1t\"}"),
             "t.json:5:43: pipelines[0].sink.table: ", "(got \"1t\")");
    ck_error(
        DOC("{\"type\": \"postgres\", \"table\": \"t\", \"columns\": {\"id\": \"$.a..b\", \"x y\": "
            "\"$topic\", \"k\": \"topic\"}, \"key_columns\": [\"id\"]}"),
        "t.json:5:66: pipelines[0].sink.columns.id: ", "invalid source \"$.a..b\"");
    ck_assert(has_line("t.json:5:76: pipelines[0].sink.columns[\"x y\"]: ",
                       "invalid column name \"x y\""));
    ck_assert(has_line("t.json:5:98: pipelines[0].sink.columns.k: ", "invalid source \"topic\""));
    ck_assert_uint_eq(count_lines(), 3); /* key_columns is not blamed for the bad columns */
    ck_error(DOC("{\"type\": \"postgres\", \"table\": \"t\", \"columns\": {\"id\": \"$.id\"}}"),
             "t.json:5:13: pipelines[0].sink.key_columns: ", "must name the columns");
    ck_error(DOC("{\"type\": \"postgres\", \"table\": \"t\", \"columns\": {\"id\": \"$.id\"}, "
                 "\"key_columns\": [\"id\", \"nope\"]}"),
             "t.json:5:97: pipelines[0].sink.key_columns[1]: ", "\"nope\" is not a key of columns");
    ck_error(DOC("{\"type\": \"postgres\", \"table\": \"t\", \"key_columns\": [\"id\"]}"),
             "t.json:5:63: pipelines[0].sink.key_columns: ", "only applies with columns");
    ck_error(DOC("{\"type\": \"postgres\", \"table\": \"t\", \"columns\": {\"id\": \"$.id\"}, "
                 "\"key_columns\": [\"id\"], \"value_type\": \"text\"}"),
             "t.json:5:112: pipelines[0].sink.value_type: ", "only applies to the default columns");
}
END_TEST

START_TEST(test_http_sink_rules)
{
    ck_error(DOC("{\"type\": \"http\", \"url\": \"ftp://x\"}"),
             "t.json:5:37: pipelines[0].sink.url: ", "must start with http:// or https://");
    ck_error(
        DOC("{\"type\": \"http\", \"url\": \"http://x\", \"headers\": {\"Idempotency-Key\": "
            "\"k\", \"x-sidecar-epoch\": \"1\", \"content-type\": \"a\", \"X-Ok\": \"a\\nb\"}}"),
        "t.json:5:61: pipelines[0].sink.headers.Idempotency-Key: ",
        "header \"Idempotency-Key\" is set by the sidecar");
    ck_assert(has_line("t.json:5:85: pipelines[0].sink.headers.x-sidecar-epoch: ", "is set by"));
    ck_assert(has_line("t.json:5:109: pipelines[0].sink.headers.content-type: ", "is set by"));
    ck_assert(
        has_line("t.json:5:138: pipelines[0].sink.headers.X-Ok: ", "must not contain a line"));
    ck_error(DOC("{\"type\": \"http\", \"url\": \"http://x\", \"retry\": {\"initial_backoff_ms\": "
                 "500, \"max_backoff_ms\": 100}}"),
             "t.json:5:81: pipelines[0].sink.retry.initial_backoff_ms: ",
             "must be at most retry.max_backoff_ms (100)");
    ck_error(
        DOC("{\"type\": \"http\", \"url\": \"http://x\", \"ca_file\": \"/nonexistent/ca.pem\"}"),
        "t.json:5:60: pipelines[0].sink.ca_file: ",
        "cannot read file \"/nonexistent/ca.pem\": No such file or directory");
    ck_error(
        DOC("{\"type\": \"http\", \"url\": \"http://x\", \"bearer_token\": \"t\", \"headers\": "
            "{\"authorization\": \"Basic x\"}}"),
        "t.json:5:65: pipelines[0].sink.bearer_token: ", "conflicts with the Authorization");
}
END_TEST

/*
 * workers when not given: 4 for the http sink (its requests wait on the
 * service), one CPU fewer than available for the file sink (its writes are
 * the sidecar's own CPU work; librdkafka's threads keep a CPU), at least
 * one, else one per CPU available, at most 4; given, as given.
 */
START_TEST(test_default_workers)
{
    int cpus = sc_cpus_available();
    ck_assert_int_ge(cpus, 1);
    ck_valid(DOC("{\"type\": \"http\", \"url\": \"http://x\"}"));
    ck_assert_int_eq(cfg->pipelines[0].workers, 4);
    ck_assert_int_eq(sc_sinks.default_workers(cfg, 0, 1), 4); /* whatever the CPUs */
    ck_assert_int_eq(sc_sinks.default_workers(cfg, 0, 16), 4);
    sc_config_free(cfg);
    cfg = NULL;
    ck_valid(DOC("{\"type\": \"stdout\"}"));
    ck_assert_int_eq(cfg->pipelines[0].workers, cpus < 4 ? cpus : 4);
    sc_config_free(cfg);
    cfg = NULL;
    ck_valid(DOC(FILE_SINK));
    ck_assert_int_eq(cfg->pipelines[0].workers, file_default_workers());
    /* On other machines: CPUs available -> the file sink's workers (its class's answer). */
    static const int file_workers[][2] = {{1, 1}, {2, 1}, {3, 2}, {4, 3}, {5, 4}, {16, 4}};
    for (size_t k = 0; k < SC_ARRAY_LEN(file_workers); k++)
        ck_assert_int_eq(sc_sinks.default_workers(cfg, 0, file_workers[k][0]), file_workers[k][1]);
    sc_config_free(cfg);
    cfg = NULL;
    ck_valid(HEAD PIPE_HEAD "    \"workers\": 7,\n    \"sink\": {\"type\": \"http\", \"url\": "
                            "\"http://x\"}\n" TAIL);
    ck_assert_int_eq(cfg->pipelines[0].workers, 7);
    sc_config_free(cfg);
    cfg = NULL;
}
END_TEST

static void write_at(const char *dir, const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* The CPUs available: the affinity count, lowered by a cgroup's CPU quota, rounded up. */
START_TEST(test_cpus_available_follows_cgroup_quotas)
{
    char root[64] = "/tmp/sc-cgroup-XXXXXX", dir[256];
    ck_assert_ptr_nonnull(mkdtemp(root));
    /* Nothing to read: the affinity count (at least 1). */
    ck_assert_int_eq(sc_cpus_available_at(root, "/a/b", 8), 8);
    ck_assert_int_eq(sc_cpus_available_at(root, NULL, 0), 1);
    /* cgroup v2: the process's cgroup and its ancestors; the lowest quota wins. */
    snprintf(dir, sizeof(dir), "%s/a", root);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    snprintf(dir, sizeof(dir), "%s/a/b", root);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    write_at(root, "cpu.max", "max 100000\n");
    write_at(root, "a/b/cpu.max", "max 100000\n");
    ck_assert_int_eq(sc_cpus_available_at(root, "/a/b", 8), 8);
    write_at(root, "a/cpu.max", "150000 100000\n"); /* 1.5 CPUs: 2 */
    ck_assert_int_eq(sc_cpus_available_at(root, "/a/b", 8), 2);
    ck_assert_int_eq(sc_cpus_available_at(root, "/a/b", 1), 1);
    ck_assert_int_eq(sc_cpus_available_at(root, "/", 8), 8); /* another cgroup's limit */
    write_at(root, "cpu.max", "50000 100000\n");
    ck_assert_int_eq(sc_cpus_available_at(root, "/a/b", 8), 1);
    write_at(root, "cpu.max", "garbage\n");
    ck_assert_int_eq(sc_cpus_available_at(root, "/", 8), 8);
    /* cgroup v1: the cpu controller's quota at its root; -1 is no limit. */
    snprintf(dir, sizeof(dir), "%s/cpu,cpuacct", root);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    write_at(root, "cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    write_at(root, "cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    ck_assert_int_eq(sc_cpus_available_at(root, NULL, 8), 8);
    write_at(root, "cpu,cpuacct/cpu.cfs_quota_us", "300000\n");
    ck_assert_int_eq(sc_cpus_available_at(root, NULL, 8), 3);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_admin_listen)
{
    static const struct {
        const char *listen;
        const char *error; /* NULL: valid */
    } cases[] = {
        {"", NULL},
        {"0.0.0.0:9644", NULL},
        {"[::1]:9644", NULL},
        {"localhost:0", NULL},
        {"::1:9644", "an IPv6 address needs brackets"},
        {"127.0.0.1", "expected \"host:port\""},
        {"127.0.0.1:http", "expected \"host:port\""},
        {":9644", "expected \"host:port\""},
        {"127.0.0.1:70000", "port must be between 0 and 65535 (got 70000)"},
        {"[::1]9644", "expected \"host:port\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char doc[1024];
        snprintf(doc, sizeof(doc),
                 HEAD "  \"admin\": {\"listen\": \"%s\"},\n" PIPE_HEAD "    \"sink\": " FILE_SINK
                      "\n" TAIL,
                 cases[i].listen);
        if (!cases[i].error) {
            ck_valid(doc);
            ck_assert_str_eq(cfg->admin.listen, cases[i].listen);
            sc_config_free(cfg);
        } else {
            ck_error(doc, "t.json:4:23: admin.listen: ", cases[i].error);
        }
    }
}
END_TEST

START_TEST(test_durations)
{
    ck_error(HEAD "  \"events\": {\"retention\": \"30s\"},\n" PIPE_HEAD "    \"sink\": " FILE_SINK
                  "\n" TAIL,
             "t.json:4:27: events.retention: ", "must be at least 1m (got 30s)");
    ck_error(HEAD "  \"events\": {\"retention\": \"7 days\"},\n" PIPE_HEAD
                  "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:4:27: events.retention: ", "expected a duration");
    ck_error(HEAD "  \"events\": {\"compact_interval\": 999},\n" PIPE_HEAD
                  "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:4:34: events.compact_interval: ", "must be at least 1s (got 999ms)");
    ck_valid(HEAD
             "  \"events\": {\"retention\": \"90m\", \"compact_interval\": \"1500ms\"},\n" PIPE_HEAD
             "    \"sink\": " FILE_SINK "\n" TAIL);
    ck_assert_int_eq(cfg->events.retention_ms, 90 * 60000);
    ck_assert_int_eq(cfg->events.compact_interval_ms, 1500);
}
END_TEST

START_TEST(test_instance_id_rules)
{
    ck_error(HEAD "  \"instance_id\": \"my host\",\n" PIPE_HEAD "    \"sink\": " FILE_SINK
                  "\n" TAIL,
             "t.json:4:18: instance_id: ", "printable characters without whitespace");
    ck_error(HEAD "  \"instance_id\": \"\",\n" PIPE_HEAD "    \"sink\": " FILE_SINK "\n" TAIL,
             "t.json:4:18: instance_id: ", "must not be empty");
}
END_TEST

START_TEST(test_errors_in_document_order_and_capped)
{
    /* Found in table order (postgres before pipelines), printed in document order. */
    ck_assert_int_eq(load(HEAD PIPE_HEAD "    \"workers\": 0,\n    \"sink\": {\"type\": \"nope\"}\n"
                                         "  }],\n  \"log\": {\"level\": \"loud\"},\n"
                                         "  \"instance_id\": \"a b\"\n}"),
                     -1);
    const char *w = strstr(err, "t.json:5:16: pipelines[0].workers");
    const char *t = strstr(err, "t.json:6:22: pipelines[0].sink.type");
    const char *l = strstr(err, "t.json:8:20: log.level");
    const char *i = strstr(err, "t.json:9:18: instance_id");
    ck_assert_msg(w && t && l && i && w < t && t < l && l < i, "order:\n%s", err);
    ck_assert_uint_eq(count_lines(), 4);

    char doc[8192];
    size_t o = (size_t)snprintf(doc, sizeof(doc), "{\"postgres\": {\"dsn\": \"host=x\"");
    for (int k = 0; k < 30; k++)
        o += (size_t)snprintf(doc + o, sizeof(doc) - o, ", \"k%02d\": 1", k);
    snprintf(doc + o, sizeof(doc) - o,
             "}, \"kafka\": {\"bootstrap.servers\": \"k:1\"},"
             " \"pipelines\": [{\"name\": \"p\", \"topics\": [\"t\"],"
             " \"sink\": {\"type\": \"stdout\"}}]}");
    ck_assert_int_eq(load(doc), -1);
    ck_assert_uint_eq(count_lines(), 21);
    ck_assert(has_line("t.json:1:", "postgres.k00: unknown key"));
    ck_assert(has_line("t.json:1:", "postgres.k19: unknown key"));
    ck_assert(!has_line("t.json:1:", "postgres.k20: unknown key"));
    ck_assert(has_line("t.json: 10 more errors not shown", ""));
}
END_TEST

START_TEST(test_error_buffer_is_bounded)
{
    char small[100];
    struct sc_config *c = NULL;
    ck_assert_int_eq(sc_config_load_string("t.json", DOC("{\"type\": 1, \"a\": 1, \"b\": 2}"),
                                           &sc_sinks, &c, small, sizeof(small)),
                     -1);
    ck_assert_uint_lt(strlen(small), sizeof(small));
    ck_assert(strlen(small) == 0 || small[strlen(small) - 1] == '\n'); /* whole lines */
}
END_TEST

START_TEST(test_reference_markdown)
{
    char *md = sc_config_reference_markdown(&sc_sinks);
    static const char *const want[] = {
        "# Configuration reference",
        "| `instance_id` |",
        "## `postgres`",
        "| `dsn` | string, secret | **required**",
        "| `schema` | string | `\"sidecar\"` | 1..63 bytes",
        "| `max_records` | integer | `5000` | 1..1000000 |",
        "## `pipelines[].sink` with `type`: `file`",
        "## `pipelines[].sink` with `type`: `http`",
        "| `retention` | duration | `7d` | 1m..",
        "`kafka-group`",
        "only applies to format raw",
        "## `pipelines[].sink.retry`",
        "`\"sidecar-<name>\"`",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        ck_assert_msg(strstr(md, want[i]), "missing \"%s\" in:\n%s", want[i], md);
    free(md);
}
END_TEST

START_TEST(test_tables_are_consistent)
{
    char msg[256] = "";
    ck_assert_msg(sc_config_selftest(&sc_sinks, msg, sizeof(msg)) == 0, "%s", msg);
}
END_TEST

START_TEST(test_nothing_leaks_on_failure)
{
    /* Failures after partial parsing free what was built (valgrind / ASan check this). */
    ck_error(
        HEAD
        "  \"pipelines\": [{\"name\": \"p\", \"topics\": [\"a\", 1],\n"
        "    \"kafka_properties\": {\"client.id\": \"x\"},\n"
        "    \"sink\": {\"type\": \"http\", \"url\": \"http://x\", \"headers\": {\"A\": \"b\"},"
        " \"retry\": {\"max_attempts\": 0}}}]\n}",
        "t.json:6:", "max_attempts");
}
END_TEST

/* ---- schema_registry, value_format / key_format ------------------------------------------- */

#define REG_PIPE(members)                                                     \
    "  \"pipelines\": [{\"name\": \"p\", \"topics\": [\"t\"], " members ",\n" \
    "    \"sink\": " FILE_SINK "\n" TAIL

START_TEST(test_schema_registry)
{
    /* avro needs a registry, at the top level or in the pipeline. */
    ck_error(HEAD REG_PIPE("\"value_format\": \"avro\""),
             "t.json:4:", "pipelines[0].value_format: \"avro\" needs a schema_registry block");
    ck_error(HEAD REG_PIPE("\"key_format\": \"avro\""),
             "t.json:4:", "pipelines[0].key_format: \"avro\" needs a schema_registry block");
    /* json_schema does not. */
    ck_valid(HEAD REG_PIPE("\"value_format\": \"json_schema\""));
    ck_assert_int_eq(cfg->pipelines[0].formats.value, SC_VALUE_JSON_SCHEMA);
    ck_assert_int_eq(cfg->pipelines[0].formats.key, SC_VALUE_AUTO);
    sc_config_free(cfg);

    /* The top-level block, secrets masked, the pipeline pointing at it. */
    setenv("SR_SECRET", "hunter2-sr", 1);
    ck_valid(HEAD "  \"schema_registry\": {\"url\": \"https://a:8081,https://u:pw@b:8081/\", "
                  "\"username\": \"key\", \"password\": \"${SR_SECRET}\"},\n" REG_PIPE(
                      "\"value_format\": \"avro\", \"key_format\": \"string\""));
    const struct sc_pipeline_conf *pc = &cfg->pipelines[0];
    ck_assert_ptr_eq(pc->registry, &cfg->schema_registry);
    ck_assert_str_eq(pc->registry->password, "hunter2-sr");
    ck_assert_int_eq(pc->registry->timeout_ms, 5000);
    ck_assert_int_eq(pc->registry->unknown_id_grace_ms, 300000);
    ck_assert_int_eq(pc->formats.key, SC_VALUE_STRING);
    json_t *j = sc_config_to_json(cfg);
    char *text = json_dumps(j, 0);
    ck_assert_msg(!strstr(text, "hunter2") && !strstr(text, ":pw@"), "%s", text);
    ck_assert_msg(strstr(text, "https://u:****@b:8081/") != NULL, "%s", text);
    free(text);
    json_decref(j);
    sc_config_free(cfg);

    /* A pipeline's own block replaces the top-level one. */
    ck_valid(HEAD "  \"schema_registry\": {\"url\": \"http://top\"},\n" REG_PIPE(
        "\"value_format\": \"avro\", \"schema_registry\": {\"url\": \"http://own\", "
        "\"token\": \"t\"}"));
    ck_assert_str_eq(cfg->pipelines[0].registry->url, "http://own");
    ck_assert_ptr_null(cfg->pipelines[0].registry->username);
    sc_config_free(cfg);

    /* Bad blocks. */
    ck_error(HEAD "  \"schema_registry\": {\"url\": \"ftp://x\"},\n" REG_PIPE("\"workers\": 1"),
             "t.json:4:", "schema_registry.url: must start with http:// or https://");
    ck_error(HEAD "  \"schema_registry\": {\"url\": \"http://a,\"},\n" REG_PIPE("\"workers\": 1"),
             "t.json:4:", "schema_registry.url: URL 2 of the list is empty");
    ck_error(HEAD "  \"schema_registry\": {\"username\": \"u\"},\n" REG_PIPE("\"workers\": 1"),
             "t.json:4:", "schema_registry.url: is required");
    ck_error(HEAD "  \"schema_registry\": {\"url\": \"http://a\", \"password\": \"p\"},\n" REG_PIPE(
                 "\"workers\": 1"),
             "t.json:4:", "schema_registry.password: needs username");
    ck_error(HEAD "  \"schema_registry\": {\"url\": \"http://a\", \"username\": \"u\", "
                  "\"token\": \"secret-tok\"},\n" REG_PIPE("\"workers\": 1"),
             "t.json:4:", "schema_registry.token: conflicts with username");
    ck_assert_msg(strstr(err, "secret-tok") == NULL, "%s", err);
    ck_error(HEAD REG_PIPE("\"value_format\": \"protobuf\""),
             "t.json:4:", "pipelines[0].value_format: ");
}
END_TEST

/*
 * A ca_file (the http sink's, the registry's) must hold a PEM certificate
 * when the config loads: an empty file, a DER certificate or a key alone
 * used to pass, and curl refused them only at the first connection.
 */
START_TEST(test_ca_file_must_hold_a_certificate)
{
    static const char pem[] = "# a bundle\n-----BEGIN CERTIFICATE-----\nMIIB\n"
                              "-----END CERTIFICATE-----\n";
    static const char key[] = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
    static const char der[] = "\x30\x82\x01\x0a\x02\x82\x01\x01\x00";
    const struct {
        const char *name, *data;
        size_t len;
    } files[] = {{"ca.pem", pem, sizeof(pem) - 1},
                 {"empty.pem", "", 0},
                 {"key.pem", key, sizeof(key) - 1},
                 {"ca.der", der, sizeof(der) - 1}};
    char paths[SC_ARRAY_LEN(files)][128];
    for (size_t i = 0; i < SC_ARRAY_LEN(files); i++) {
        snprintf(paths[i], sizeof(paths[i]), "%s/%s", tmpdir, files[i].name);
        write_file(paths[i], files[i].data, files[i].len);
    }
    char doc[2048], want[1024];
    for (size_t i = 0; i < SC_ARRAY_LEN(files); i++) {
        for (int reg = 0; reg < 2; reg++) {
            if (reg)
                snprintf(doc, sizeof(doc),
                         HEAD "  \"schema_registry\": {\"url\": \"https://r\", \"ca_file\": "
                              "\"%s\"},\n" REG_PIPE("\"workers\": 1"),
                         paths[i]);
            else
                snprintf(doc, sizeof(doc),
                         DOC("{\"type\": \"http\", \"url\": \"https://x\", \"ca_file\": \"%s\"}"),
                         paths[i]);
            if (i == 0) {
                ck_valid(doc);
                sc_config_free(cfg);
                cfg = NULL;
                continue;
            }
            snprintf(want, sizeof(want),
                     "file \"%s\" holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" "
                     "line): a CA bundle in PEM format is expected",
                     paths[i]);
            ck_error(doc, "t.json:", want);
            ck_assert(has_line("t.json:", reg ? "schema_registry.ca_file: " : "sink.ca_file: "));
        }
    }
    /* A directory is no file. */
    snprintf(doc, sizeof(doc),
             DOC("{\"type\": \"http\", \"url\": \"https://x\", \"ca_file\": \"%s\"}"), tmpdir);
    ck_error(doc, "t.json:", "Is a directory");
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_minimal_config_gets_every_default);
    tcase_add_test(tc, test_default_workers);
    tcase_add_test(tc, test_ca_file_must_hold_a_certificate);
    tcase_add_test(tc, test_cpus_available_follows_cgroup_quotas);
    tcase_add_test(tc, test_schema_registry);
    tcase_add_test(tc, test_instance_id_default);
    tcase_add_test(tc, test_full_config);
    tcase_add_test(tc, test_postgres_other_db_needs_source_position);
    tcase_add_test(tc, test_effective_config_round_trips);
    tcase_add_test(tc, test_example_configs_load);
    tcase_add_test(tc, test_utf8_bom_is_accepted);
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_unreadable_file_and_directory);
    tcase_add_test(tc, test_empty_and_huge_files);
    tcase_add_test(tc, test_invalid_json_has_line_and_column);
    tcase_add_test(tc, test_invalid_json_does_not_echo_strings);
    tcase_add_test(tc, test_top_level_must_be_an_object);
    tcase_add_test(tc, test_duplicate_keys);
    tcase_add_test(tc, test_unknown_key_top_level);
    tcase_add_test(tc, test_unknown_key_nested);
    tcase_add_test(tc, test_columns_count_characters_and_keys_are_decoded);
    tcase_add_test(tc, test_unknown_key_in_sink);
    tcase_add_test(tc, test_missing_required_keys);
    tcase_add_test(tc, test_wrong_types);
    tcase_add_test(tc, test_ranges);
    tcase_add_test(tc, test_enums);
    tcase_add_test(tc, test_unknown_sink_type);
    tcase_add_test(tc, test_file_sink_path);
    tcase_add_test(tc, test_file_sink_delimiter);
    tcase_add_test(tc, test_env_unset);
    tcase_add_test(tc, test_env_defaults_and_values);
    tcase_add_test(tc, test_env_in_integers_and_booleans);
    tcase_add_test(tc, test_file_expansion);
    tcase_add_test(tc, test_duplicate_pipeline_names);
    tcase_add_test(tc, test_pipeline_names_and_topics);
    tcase_add_test(tc, test_too_many_pipelines);
    tcase_add_test(tc, test_lease_renew_vs_ttl);
    tcase_add_test(tc, test_managed_kafka_properties);
    tcase_add_test(tc, test_librdkafka_properties_are_checked);
    tcase_add_test(tc, test_malformed_dsn_hides_the_password);
    tcase_add_test(tc, test_secrets_are_masked);
    tcase_add_test(tc, test_key_is_secret);
    tcase_add_test(tc, test_postgres_sink_rules);
    tcase_add_test(tc, test_http_sink_rules);
    tcase_add_test(tc, test_admin_listen);
    tcase_add_test(tc, test_durations);
    tcase_add_test(tc, test_instance_id_rules);
    tcase_add_test(tc, test_errors_in_document_order_and_capped);
    tcase_add_test(tc, test_error_buffer_is_bounded);
    tcase_add_test(tc, test_reference_markdown);
    tcase_add_test(tc, test_tables_are_consistent);
    tcase_add_test(tc, test_nothing_leaks_on_failure);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
