/*
 * sc_config - the sidecar's JSON configuration: load, validate, print.
 *
 * The keys, their types, ranges, defaults and help texts live in declarative
 * tables in sc_config.c (the one place defaults are documented; `sidecar
 * check-config --reference` prints them as Markdown).  Loading expands
 * ${VAR}, ${VAR:-default} and ${file:/path} in strings, rejects unknown keys
 * with a "did you mean" hint, and reports every problem as
 *
 *     FILE:LINE:COL: JSON.PATH: message
 *
 * e.g. `conf/app.json:12:9: pipelines[0].sink.url: expected a string`.
 *
 * A loaded struct sc_config is immutable and owned by the caller; free it
 * with sc_config_free().  It is shared read-only by every thread.
 */
#ifndef SC_CONFIG_H
#define SC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* A list of strings (e.g. topics). */
struct sc_strlist {
    char **items;
    size_t count;
};

/* An ordered string map (e.g. kafka properties, HTTP headers, column map). */
struct sc_kv {
    char *key;
    char *value;
};
struct sc_kvlist {
    struct sc_kv *items;
    size_t count;
};

enum sc_start_from {
    SC_START_EARLIEST,
    SC_START_LATEST,
};

/* How partitions are spread over instances (only the Kafka consumer group so far). */
enum sc_assignment {
    SC_ASSIGN_KAFKA_GROUP,
};

enum sc_value_format {
    SC_VALUE_AUTO,
    SC_VALUE_STRING,
    SC_VALUE_BASE64,
};

enum sc_sink_type {
    SC_SINK_FILE,
    SC_SINK_POSTGRES,
    SC_SINK_HTTP,
    SC_SINK_STDOUT,
};

enum sc_file_format {
    SC_FILE_JSONL,
    SC_FILE_RAW,
};

enum sc_fsync_policy {
    SC_FSYNC_BATCH,
    SC_FSYNC_INTERVAL,
    SC_FSYNC_NEVER,
};

struct sc_sink_file_conf {
    char *path; /* template with {pipeline} {topic} {partition} */
    enum sc_file_format format;
    char *delimiter;      /* raw format only; JSON-decoded bytes, may contain NUL */
    size_t delimiter_len; /* delimiter may contain NUL */
    enum sc_fsync_policy fsync;
    int fsync_interval_ms;
};

enum sc_pg_mode {
    SC_PG_INSERT,
    SC_PG_UPSERT,
    SC_PG_INSERT_IGNORE,
};

enum sc_pg_coltype {
    SC_PG_JSONB,
    SC_PG_TEXT,
    SC_PG_BYTEA,
};

struct sc_sink_postgres_conf {
    char *dsn;   /* NULL: the checkpoint database (one-tx mode) */
    char *table; /* "name" or "schema.name" */
    enum sc_pg_mode mode;
    struct sc_kvlist columns;      /* column -> "$.json.path" or "$topic" ...; empty = defaults */
    struct sc_strlist key_columns; /* empty = (topic, partition, offset) */
    bool create_table;
    enum sc_pg_coltype value_type; /* default columns only: jsonb | text | bytea */
    enum sc_pg_coltype key_type;   /* default columns only: text | bytea */
};

enum sc_http_method {
    SC_HTTP_POST,
    SC_HTTP_PUT,
};

enum sc_http_format {
    SC_HTTP_NDJSON,
    SC_HTTP_JSON_ARRAY,
};

enum sc_on_error {
    SC_ON_ERROR_DEAD_LETTER,
    SC_ON_ERROR_STOP,
};

struct sc_retry_conf {
    int max_attempts;
    int initial_backoff_ms;
    int max_backoff_ms;
    int max_elapsed_ms;
};

struct sc_sink_http_conf {
    char *url;
    enum sc_http_method method;
    enum sc_http_format format;
    struct sc_kvlist headers;
    int timeout_ms;
    struct sc_retry_conf retry;
    enum sc_on_error on_error;
    char *ca_file;
    bool insecure_skip_verify;
    char *bearer_token; /* secret */
};

struct sc_sink_conf {
    enum sc_sink_type type;
    struct sc_sink_file_conf file;
    struct sc_sink_postgres_conf postgres;
    struct sc_sink_http_conf http;
};

struct sc_batch_conf {
    int max_records;
    int64_t max_bytes;
    int max_wait_ms;
};

struct sc_lease_conf {
    int ttl_ms;
    int renew_ms;
};

struct sc_pipeline_conf {
    char *name;
    char *group_id;
    struct sc_strlist topics;
    enum sc_start_from start_from;
    enum sc_value_format value_format;
    struct sc_batch_conf batch;
    struct sc_lease_conf lease;
    int workers;
    struct sc_kvlist kafka_properties; /* per-pipeline overrides of kafka.properties */
    struct sc_sink_conf sink;
    enum sc_assignment assignment;
};

struct sc_config {
    char *path; /* as given on the command line */
    char *instance_id;
    struct {
        char *dsn; /* secret (password) */
        char *schema;
        int connect_timeout_ms;
    } postgres;
    struct {
        char *bootstrap_servers;
        struct sc_kvlist properties;
    } kafka;
    struct {
        char *listen; /* "host:port"; "" disables the admin endpoint */
        char *token;  /* secret; "" = no auth */
    } admin;
    struct {
        int level;  /* enum sc_log_level */
        int format; /* enum sc_log_format */
    } log;
    int shutdown_timeout_ms;
    struct {
        int max_per_second;
        int coalesce_ms;
    } notify;
    struct {
        int64_t retention_ms;
        int64_t compact_interval_ms;
    } events;
    struct sc_pipeline_conf *pipelines;
    size_t npipelines;
};

/*
 * Loads and validates path.  On success returns 0 and sets *out (owned by
 * the caller).  On failure returns -1 and writes one or more lines (each
 * "FILE:LINE:COL: PATH: message", at most errsize bytes) into errbuf.
 */
int sc_config_load(const char *path, struct sc_config **out, char *errbuf, size_t errsize)
    __attribute__((warn_unused_result));

/* Same as sc_config_load() on an in-memory document; name is used in errors. */
int sc_config_load_string(const char *name, const char *text, struct sc_config **out, char *errbuf,
                          size_t errsize) __attribute__((warn_unused_result));

void sc_config_free(struct sc_config *cfg);

/* The effective configuration (defaults filled in) with every secret masked. */
json_t *sc_config_to_json(const struct sc_config *cfg);

/* Markdown reference of every key: name, type, default, range, help. */
char *sc_config_reference_markdown(void);

/* Returns the value of key in kv, or NULL. */
const char *sc_kvlist_get(const struct sc_kvlist *kv, const char *key);

/* Does a property/header name look like it holds a secret (password, token...)? */
bool sc_config_key_is_secret(const char *name);

/*
 * Checks the key tables themselves (every default parses and is in range):
 * 0, or -1 with a message in err.  For the unit tests.
 */
int sc_config_selftest(char *err, size_t errsize);

#endif
