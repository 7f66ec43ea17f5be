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

#include "config/sc_conf.h"

enum sc_start_from {
    SC_START_EARLIEST,
    SC_START_LATEST,
};

/* How partitions are spread over instances (docs/design.md §10). */
enum sc_assignment {
    SC_ASSIGN_KAFKA_GROUP, /* Kafka's group coordinator assigns them */
    SC_ASSIGN_LEASE,       /* the instances share them through PostgreSQL leases alone */
};

/*
 * How the envelope renders a record's value or key (docs/sinks.md, "Record
 * envelope"; docs/schema-registry.md).  AVRO and JSON_SCHEMA are the
 * Confluent wire format (0x00, a 4-byte big-endian schema id, the payload),
 * decoded by the worker before the sink sees the record (record/sc_decode.h).
 */
enum sc_value_format {
    SC_VALUE_AUTO,
    SC_VALUE_STRING,
    SC_VALUE_BASE64,
    SC_VALUE_AVRO,
    SC_VALUE_JSON_SCHEMA,
};

/* Needs the Confluent framing (and, for Avro, the Schema Registry)? */
static inline bool sc_format_is_framed(enum sc_value_format f)
{
    return f == SC_VALUE_AVRO || f == SC_VALUE_JSON_SCHEMA;
}

/* The value and key format of a pipeline, as the envelope needs them. */
struct sc_formats {
    enum sc_value_format value;
    enum sc_value_format key;
};

/* The formats of a pipeline that names only value_format vf (key_format's default). */
#define SC_FORMATS_OF(vf) \
    ((struct sc_formats){(vf), (vf) == SC_VALUE_BASE64 ? SC_VALUE_BASE64 : SC_VALUE_AUTO})

/*
 * A Confluent-compatible Schema Registry (top level, or a pipeline's own,
 * which replaces it whole).  Strings are NULL when not given.
 */
struct sc_registry_conf {
    bool given;     /* the block is in the file (with a url) */
    char *url;      /* one URL, or several separated by commas (tried in turn) */
    char *username; /* HTTP basic auth */
    char *password; /* secret */
    char *token;    /* secret: "Authorization: Bearer ..." */
    char *ca_file;
    bool insecure_skip_verify;
    int timeout_ms;
    int64_t unknown_id_grace_ms; /* a 404 is retried this long, then the partition's error state */
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
    struct sc_formats formats;               /* value_format, key_format */
    struct sc_registry_conf schema_registry; /* the pipeline's own block (given or not) */
    const struct sc_registry_conf *registry; /* the one in force: its own, else the top level's */
    struct sc_batch_conf batch;
    struct sc_lease_conf lease;
    int workers;
    struct sc_kvlist kafka_properties; /* per-pipeline overrides of kafka.properties */
    /* The sink: .variant is its type's name and key table (a struct sc_sink_class, see
     * sinks/sc_sink.h), .conf that type's own config struct. */
    struct sc_conf_choice sink;
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
    struct sc_registry_conf schema_registry;
    struct {
        int limit_mib; /* the budget prefetch and buffers are derived from (pipeline/sc_budget.h) */
    } memory;
    struct sc_pipeline_conf *pipelines;
    size_t npipelines;
};

/*
 * The sink types a configuration may name, and their checks.  The sinks
 * layer provides it (sc_sinks in sinks/sc_sink.h): the loader knows no
 * sink by name, so a new sink needs no change here.
 */
struct sc_sink_registry {
    sc_conf_variants_fn types; /* each type's name and key table */
    /* Rules between pipelines[i].sink and the rest of the configuration (e.g.
     * two pipelines writing the same files); ctx's path is at pipelines[i]. */
    void (*check)(struct sc_conf_ctx *ctx, const struct sc_config *cfg, size_t i);
    /* Optional: pipelines[i].workers when the configuration does not set it, given the
     * CPUs available (0: one per CPU available, at most SC_DEFAULT_WORKERS_MAX). */
    int (*default_workers)(const struct sc_config *cfg, size_t i, int cpus);
};

/* The most workers a pipeline gets by default (see sc_sink_registry.default_workers). */
#define SC_DEFAULT_WORKERS_MAX 4

/*
 * Loads and validates path, with the sink types of sinks.  On success
 * returns 0 and sets *out (owned by the caller).  On failure returns -1 and
 * writes one or more lines (each "FILE:LINE:COL: PATH: message", at most
 * errsize bytes) into errbuf.
 */
int sc_config_load(const char *path, const struct sc_sink_registry *sinks, struct sc_config **out,
                   char *errbuf, size_t errsize) __attribute__((warn_unused_result));

/* Same as sc_config_load() on an in-memory document; name is used in errors. */
int sc_config_load_string(const char *name, const char *text, const struct sc_sink_registry *sinks,
                          struct sc_config **out, char *errbuf, size_t errsize)
    __attribute__((warn_unused_result));

void sc_config_free(struct sc_config *cfg);

/* The effective configuration (defaults filled in) with every secret masked. */
json_t *sc_config_to_json(const struct sc_config *cfg);

/* Markdown reference of every key (the sinks' too): name, type, default, range, help. */
char *sc_config_reference_markdown(const struct sc_sink_registry *sinks);

/*
 * Checks the key tables themselves (every default parses and is in range):
 * 0, or -1 with a message in err.  For the unit tests.
 */
int sc_config_selftest(const struct sc_sink_registry *sinks, char *err, size_t errsize);

#endif
