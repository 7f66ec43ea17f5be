/*
 * sc_config.c - the sidecar's configuration: every key, its type, default,
 * range and help text is in the tables in this file and nowhere else; the
 * engine in sc_conf.c parses, prints, frees and documents from them.
 *
 * Validation that a table cannot express (identifier syntax, DSN syntax,
 * placeholders, cross-key rules) is in the check functions just above the
 * tables.  None of them puts a secret into an error message: DSN errors
 * from libpq are scrubbed of quoted fragments, and checks on secret keys
 * never quote the value.
 */
#include "config/sc_config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "base/sc_log.h"
#include "base/sc_util.h"
#include "config/sc_conf.h"
#include "config/sc_conf_check.h"
#include "config/sc_expand.h"

#define MAX_CONFIG_BYTES (4 * 1024 * 1024)

#define MS_MINUTE INT64_C(60000)
#define MS_DAY    INT64_C(86400000)

/* ---- small helpers ------------------------------------------------------------------------ */

static void buf_puts(struct sc_buf *b, const char *s, size_t n)
{
    if (sc_buf_append(b, s, n) < 0) /* no maximum: only an overflow could fail */
        abort();
}

static char *buf_take(struct sc_buf *b)
{
    buf_puts(b, "", 1);
    char *s = b->data;
    b->data = NULL;
    b->len = b->cap = 0;
    return s;
}

static bool instance_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= ' ' || *p == 0x7F)
            return false;
    return true;
}

/* ---- value checks ------------------------------------------------------------------------- */

static void check_instance_id(struct sc_conf_ctx *ctx, void *field)
{
    if (!instance_id_valid(*(char **)field))
        sc_conf_error(ctx, "must be 1 to 128 printable characters without whitespace");
}

static const struct {
    const char *name;
    const char *hint;
} managed_properties[] = {
    {"group.id", "use pipelines[].group_id"},
    {"bootstrap.servers", "use kafka.bootstrap.servers"},
    {"metadata.broker.list", "use kafka.bootstrap.servers"},
    {"enable.auto.commit", "offsets are committed after each checkpoint"},
    {"auto.commit.enable", "offsets are committed after each checkpoint"},
    {"enable.auto.offset.store", "offsets are stored after each checkpoint"},
    {"enable.partition.eof", "the consumer needs its own setting"},
    {"auto.offset.reset", "use pipelines[].start_from"},
};

/* The librdkafka property closest to name, for a "did you mean" (malloc'd, or NULL). */
static char *rdkafka_suggest(const char *name)
{
    char *text = NULL, *best = NULL;
    size_t textlen = 0, bestd = 3;
    FILE *f = open_memstream(&text, &textlen);
    if (!f)
        return NULL;
    rd_kafka_conf_properties_show(f);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    /* Rows look like "fetch.wait.max.ms      |  C  | 0 .. 300000 | ...". */
    for (const char *line = text; line && *line;) {
        size_t n = strspn(line, "abcdefghijklmnopqrstuvwxyz0123456789._");
        if (n > 0 && n <= 64 && line[n] == ' ') {
            char prop[65];
            memcpy(prop, line, n);
            prop[n] = '\0';
            size_t d = sc_edit_distance(name, prop);
            if (d < bestd) {
                bestd = d;
                free(best);
                best = sc_xstrdup(prop);
            }
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    free(text);
    return best;
}

/* kafka.properties and pipelines[].kafka_properties: not managed, and known to librdkafka. */
static void check_kafka_property(struct sc_conf_ctx *ctx, const char *key, const char *value)
{
    char q[128];
    for (size_t i = 0; i < SC_ARRAY_LEN(managed_properties); i++) {
        if (strcmp(key, managed_properties[i].name) == 0) {
            sc_conf_error_key(ctx, "property %s is managed by the sidecar: %s",
                              sc_conf_quote(q, sizeof(q), key), managed_properties[i].hint);
            return;
        }
    }
    if (strcmp(key, "plugin.library.paths") == 0)
        return; /* setting it loads the plugins: leave that to the consumer */
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512] = "";
    rd_kafka_conf_res_t res = rd_kafka_conf_set(conf, key, value, err, sizeof(err));
    rd_kafka_conf_destroy(conf);
    err[strcspn(err, "\n")] = '\0';
    if (res == RD_KAFKA_CONF_UNKNOWN) {
        char *hint = rdkafka_suggest(key);
        sc_conf_error_key(ctx, "unknown librdkafka property %s%s%s%s",
                          sc_conf_quote(q, sizeof(q), key), hint ? "; did you mean \"" : "",
                          hint ? hint : "", hint ? "\"?" : "");
        free(hint);
    } else if (res != RD_KAFKA_CONF_OK) {
        /* librdkafka quotes the value in some messages: not for a secret. */
        if (sc_conf_key_is_secret(key))
            sc_conf_error(ctx, "invalid value for librdkafka property %s",
                          sc_conf_quote(q, sizeof(q), key));
        else
            sc_conf_error(ctx, "%s", err);
    }
}

static void check_pipeline_name(struct sc_conf_ctx *ctx, void *field)
{
    const char *s = *(char **)field;
    size_t n = strlen(s);
    bool ok = n >= 1 && n <= 63 && isalnum((unsigned char)s[0]);
    for (size_t i = 1; ok && i < n; i++)
        ok = isalnum((unsigned char)s[i]) || strchr("._-", s[i]);
    char q[96];
    if (!ok)
        sc_conf_error(ctx,
                      "must be 1 to 63 letters, digits, \".\", \"_\" or \"-\", starting with a "
                      "letter or digit (got %s)",
                      sc_conf_quote(q, sizeof(q), s));
}

static void check_topic(struct sc_conf_ctx *ctx, const char *key, const char *s)
{
    size_t n = strlen(s);
    bool ok = n >= 1 && n <= 249 && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
    for (size_t i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)s[i]) || strchr("._-", s[i]);
    char q[96];
    if (!ok)
        sc_conf_error(ctx,
                      "invalid topic name %s: use 1 to 249 letters, digits, \".\", \"_\" or "
                      "\"-\" (not \".\" or \"..\")",
                      sc_conf_quote(q, sizeof(q), s));
}

static void check_listen(struct sc_conf_ctx *ctx, void *field)
{
    const char *s = *(char **)field;
    if (!*s)
        return; /* disabled */
    const char *host = s, *port;
    size_t hlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        host = s + 1;
        hlen = close ? (size_t)(close - host) : 0;
        port = close && close[1] == ':' ? close + 2 : NULL;
    } else {
        const char *colon = strrchr(s, ':');
        hlen = colon ? (size_t)(colon - s) : 0;
        port = colon ? colon + 1 : NULL;
        if (colon && memchr(s, ':', hlen)) {
            sc_conf_error(ctx, "an IPv6 address needs brackets, e.g. \"[::1]:9644\"");
            return;
        }
    }
    bool ok = hlen > 0 && port && *port && strlen(port) <= 5 &&
              strspn(port, "0123456789") == strlen(port);
    for (size_t i = 0; ok && i < hlen; i++)
        ok = isalnum((unsigned char)host[i]) || strchr(s[0] == '[' ? ":.%" : ".-_", host[i]);
    char q[96];
    if (!ok) {
        sc_conf_error(ctx,
                      "expected \"host:port\" (e.g. \"127.0.0.1:9644\", \"[::1]:9644\"), or \"\" "
                      "to disable (got %s)",
                      sc_conf_quote(q, sizeof(q), s));
        return;
    }
    long p = strtol(port, NULL, 10);
    if (p > 65535)
        sc_conf_error(ctx, "port must be between 0 and 65535 (got %ld)", p);
}

/* schema_registry.url: one http(s) URL, or several separated by commas (never quoted). */
static void check_registry_url(struct sc_conf_ctx *ctx, void *field)
{
    const char *s = *(char **)field;
    size_t n = 0;
    for (const char *p = s;; n++) {
        size_t len = strcspn(p, ",");
        char *one = sc_xmalloc(len + 1);
        memcpy(one, p, len);
        one[len] = '\0';
        if (len == 0)
            sc_conf_error(ctx, "URL %zu of the list is empty", n + 1);
        else
            sc_conf_check_url(ctx, &one);
        free(one);
        if (!p[len])
            break;
        p += len + 1;
    }
}

/* Each URL of the list with its password masked. */
static char *mask_registry_url(const char *s)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    for (const char *p = s;;) {
        size_t len = strcspn(p, ",");
        char *one = sc_xmalloc(len + 1);
        memcpy(one, p, len);
        one[len] = '\0';
        char *masked = sc_conf_mask_url(one);
        buf_puts(&b, masked, strlen(masked));
        free(masked);
        free(one);
        if (!p[len])
            break;
        buf_puts(&b, ",", 1);
        p += len + 1;
    }
    return buf_take(&b);
}

/* ---- table checks: computed defaults and cross-key rules ---------------------------------- */

static void check_lease(struct sc_conf_ctx *ctx, void *base, const json_t *obj, bool clean)
{
    const struct sc_lease_conf *l = base;
    if (!clean || (int64_t)l->renew_ms * 2 <= l->ttl_ms)
        return;
    sc_conf_push_key(ctx, "renew_ms");
    sc_conf_error(ctx, "must be at most half of lease.ttl_ms (%d)", l->ttl_ms);
    sc_conf_pop(ctx);
}

static void check_registry(struct sc_conf_ctx *ctx, void *base, const json_t *obj, bool clean)
{
    struct sc_registry_conf *r = base;
    /* A block without a url is "not given" (that is how the effective config prints an
     * absent one), unless it says something only a registry needs. */
    r->given = r->url != NULL;
    if (!clean)
        return;
    if (!r->url && (r->username || r->password || r->token || r->ca_file)) {
        sc_conf_push_key(ctx, "url");
        sc_conf_error(ctx, "is required: the Schema Registry's http:// or https:// URL");
        sc_conf_pop(ctx);
    }
    if (r->password && !r->username) {
        sc_conf_push_key(ctx, "password");
        sc_conf_error(ctx, "needs username (HTTP basic authentication)");
        sc_conf_pop(ctx);
    }
    if (r->token && r->username) {
        sc_conf_push_key(ctx, "token");
        sc_conf_error(ctx, "conflicts with username: use basic authentication or a bearer token");
        sc_conf_pop(ctx);
    }
}

static void check_pipeline(struct sc_conf_ctx *ctx, void *base, const json_t *obj, bool clean)
{
    struct sc_pipeline_conf *p = base;
    if (!p->group_id && p->name)
        p->group_id = sc_xasprintf("sidecar-%s", p->name);
    /* Keys followed value_format before key_format existed (base64 forced both): a
     * pipeline that does not name key_format keeps writing the very same bytes (I1). */
    const json_t *kf = obj ? json_object_get(obj, "key_format") : NULL;
    if (!kf || json_is_null(kf))
        p->formats.key = p->formats.value == SC_VALUE_BASE64 ? SC_VALUE_BASE64 : SC_VALUE_AUTO;
}

static char *default_instance_id(void)
{
    const char *env = getenv("HOSTNAME");
    if (env && *env && instance_id_valid(env))
        return sc_xstrdup(env);
    char host[256];
    if (gethostname(host, sizeof(host)) == 0) {
        host[sizeof(host) - 1] = '\0';
        if (instance_id_valid(host))
            return sc_xstrdup(host);
    }
    return sc_xstrdup("sidecar");
}

static void check_root(struct sc_conf_ctx *ctx, void *base, const json_t *obj, bool clean)
{
    struct sc_config *cfg = base;
    if (!cfg->instance_id && !(obj && json_object_get(obj, "instance_id") &&
                               !json_is_null(json_object_get(obj, "instance_id"))))
        cfg->instance_id = default_instance_id();

    for (size_t i = 0; i < cfg->npipelines; i++) {
        struct sc_pipeline_conf *p = &cfg->pipelines[i];
        p->registry = p->schema_registry.given ? &p->schema_registry : &cfg->schema_registry;
        bool needs = p->formats.value == SC_VALUE_AVRO || p->formats.key == SC_VALUE_AVRO;
        if (needs && !p->registry->given) {
            sc_conf_push_key(ctx, "pipelines");
            sc_conf_push_index(ctx, i);
            sc_conf_push_key(ctx,
                             p->formats.value == SC_VALUE_AVRO ? "value_format" : "key_format");
            sc_conf_error(ctx, "\"avro\" needs a schema_registry block (at the top level or in "
                               "the pipeline) with the registry's url");
            sc_conf_pop(ctx);
            sc_conf_pop(ctx);
            sc_conf_pop(ctx);
        }
        for (size_t j = 0; j < i; j++) {
            const struct sc_pipeline_conf *o = &cfg->pipelines[j];
            char q[96];
            if (p->name && o->name && strcmp(p->name, o->name) == 0) {
                sc_conf_push_key(ctx, "pipelines");
                sc_conf_push_index(ctx, i);
                sc_conf_push_key(ctx, "name");
                sc_conf_error(ctx, "duplicate pipeline name %s (also pipelines[%zu])",
                              sc_conf_quote(q, sizeof(q), p->name), j);
                sc_conf_pop(ctx);
                sc_conf_pop(ctx);
                sc_conf_pop(ctx);
            }
        }
    }
}

/*
 * The sinks' rules that involve more than their own keys, for every
 * pipeline whose sink type is known (its keys may still be partly invalid).
 */
static void check_sinks(struct sc_conf_ctx *ctx, const struct sc_config *cfg,
                        const struct sc_sink_registry *sinks)
{
    for (size_t i = 0; sinks && sinks->check && i < cfg->npipelines; i++) {
        if (!cfg->pipelines[i].sink.variant || !cfg->pipelines[i].sink.conf)
            continue;
        sc_conf_push_key(ctx, "pipelines");
        sc_conf_push_index(ctx, i);
        sinks->check(ctx, cfg, i);
        sc_conf_pop(ctx);
        sc_conf_pop(ctx);
    }
}

/*
 * pipelines[].workers when not given: what the sink asks for (a sink whose
 * writes wait on a remote service keeps its requests going in parallel; one
 * whose writes are the sidecar's own CPU work leaves a CPU to librdkafka),
 * else one per CPU available, at most 4.  More workers than CPUs only made
 * them take turns: on 2 CPUs, 4 workers against 2 cost the file sink 8-13 %
 * more CPU and a worse p99 latency (docs/benchmarks.md), and gave the
 * postgres sink no more throughput.
 */
static void default_workers(struct sc_config *cfg, const struct sc_sink_registry *sinks)
{
    int cpus = -1;
    for (size_t i = 0; i < cfg->npipelines; i++) {
        struct sc_pipeline_conf *p = &cfg->pipelines[i];
        if (p->workers > 0)
            continue;
        if (cpus < 0)
            cpus = sc_cpus_available();
        if (sinks && sinks->default_workers && p->sink.variant && p->sink.conf)
            p->workers = sinks->default_workers(cfg, i, cpus);
        if (p->workers > 0)
            continue;
        p->workers = cpus < SC_DEFAULT_WORKERS_MAX ? cpus : SC_DEFAULT_WORKERS_MAX;
    }
}

/* ---- the tables --------------------------------------------------------------------------- */

static const struct sc_conf_enum log_levels[] = {
    {"debug", SC_LOG_DEBUG},
    {"info", SC_LOG_INFO},
    {"warn", SC_LOG_WARN},
    {"error", SC_LOG_ERROR},
    {NULL, 0},
};
static const struct sc_conf_enum log_formats[] = {
    {"json", SC_LOG_FORMAT_JSON},
    {"text", SC_LOG_FORMAT_TEXT},
    {NULL, 0},
};
static const struct sc_conf_enum assignments[] = {
    {"kafka-group", SC_ASSIGN_KAFKA_GROUP},
    {"lease", SC_ASSIGN_LEASE},
    {NULL, 0},
};
static const struct sc_conf_enum start_froms[] = {
    {"earliest", SC_START_EARLIEST},
    {"latest", SC_START_LATEST},
    {NULL, 0},
};
static const struct sc_conf_enum value_formats[] = {
    {"auto", SC_VALUE_AUTO}, {"string", SC_VALUE_STRING},           {"base64", SC_VALUE_BASE64},
    {"avro", SC_VALUE_AVRO}, {"json_schema", SC_VALUE_JSON_SCHEMA}, {NULL, 0},
};
#define CFG(f)  offsetof(struct sc_config, f)
#define PIPE(f) offsetof(struct sc_pipeline_conf, f)

/*
 * The objects that are anonymous structs in struct sc_config (postgres,
 * kafka, admin, ...) are OBJECT keys at offset 0 whose tables use offsets
 * from struct sc_config itself.
 */
static const struct sc_conf_key postgres_keys[] = {
    {.name = "dsn",
     .type = SC_CONF_STRING,
     .offset = CFG(postgres.dsn),
     .min = 1,
     .flags = SC_CONF_REQUIRED | SC_CONF_SECRET,
     .check = sc_conf_check_dsn,
     .mask = sc_conf_mask_dsn,
     .help = "libpq connection string (\"host=... dbname=...\" or a postgresql:// URI) of the "
             "checkpoint database; the password is masked when printed"},
    {.name = "schema",
     .type = SC_CONF_STRING,
     .def = "sidecar",
     .offset = CFG(postgres.schema),
     .min = 1,
     .max = 63,
     .check = sc_conf_check_ident,
     .help = "schema of the sidecar's tables (leases, checkpoints, events, ...)"},
    {.name = "connect_timeout_ms",
     .type = SC_CONF_INT,
     .def = "5000",
     .offset = CFG(postgres.connect_timeout_ms),
     .min = 100,
     .max = 600000,
     .help = "bound on one connection attempt"},
    {NULL},
};
static const struct sc_conf_table postgres_table = {
    .name = "postgres",
    .help = "The PostgreSQL database that holds leases, checkpoints and events.",
    .keys = postgres_keys,
};

static const struct sc_conf_key kafka_keys[] = {
    {.name = "bootstrap.servers",
     .type = SC_CONF_STRING,
     .offset = CFG(kafka.bootstrap_servers),
     .min = 1,
     .flags = SC_CONF_REQUIRED,
     .help = "comma-separated host:port list of brokers"},
    {.name = "properties",
     .type = SC_CONF_MAP,
     .offset = CFG(kafka.properties),
     .flags = SC_CONF_SCALARS | SC_CONF_MASK_BY_NAME,
     .check_item = check_kafka_property,
     .is_secret_name = sc_conf_key_is_secret,
     .help = "librdkafka properties for every pipeline's consumer (numbers and booleans are "
             "passed as text); group.id, bootstrap.servers, enable.auto.commit, "
             "enable.auto.offset.store, enable.partition.eof and auto.offset.reset are managed "
             "by the sidecar"},
    {NULL},
};
static const struct sc_conf_table kafka_table = {
    .name = "kafka",
    .help = "The Kafka cluster.",
    .keys = kafka_keys,
};

static const struct sc_conf_key admin_keys[] = {
    {.name = "listen",
     .type = SC_CONF_STRING,
     .def = "127.0.0.1:9644",
     .offset = CFG(admin.listen),
     .check = check_listen,
     .help = "host:port of the admin HTTP endpoint (/healthz, /readyz, /metrics, /v1/...); "
             "\"[::1]:9644\" for IPv6, \"\" disables it"},
    {.name = "token",
     .type = SC_CONF_STRING,
     .def = "",
     .offset = CFG(admin.token),
     .flags = SC_CONF_SECRET,
     .help = "bearer token required by the admin endpoint; \"\" = no authentication"},
    {NULL},
};
static const struct sc_conf_table admin_table = {
    .name = "admin",
    .help = "The admin HTTP endpoint.",
    .keys = admin_keys,
};

static const struct sc_conf_key log_keys[] = {
    {.name = "level",
     .type = SC_CONF_ENUM,
     .def = "info",
     .offset = CFG(log.level),
     .values = log_levels,
     .help = "minimum level logged"},
    {.name = "format",
     .type = SC_CONF_ENUM,
     .def = "json",
     .offset = CFG(log.format),
     .values = log_formats,
     .help = "one JSON object per line on stderr, or readable text"},
    {NULL},
};
static const struct sc_conf_table log_table = {
    .name = "log",
    .help = "Logging (on stderr).",
    .keys = log_keys,
};

static const struct sc_conf_key notify_keys[] = {
    {.name = "max_per_second",
     .type = SC_CONF_INT,
     .def = "200",
     .offset = CFG(notify.max_per_second),
     .min = 1,
     .max = 1000000,
     .help = "checkpoint commits per second above which NOTIFY is coalesced (one per "
             "coalesce_ms) instead of sent per commit"},
    {.name = "coalesce_ms",
     .type = SC_CONF_INT,
     .def = "250",
     .offset = CFG(notify.coalesce_ms),
     .min = 10,
     .max = 60000,
     .help = "interval of coalesced notifications"},
    {NULL},
};
static const struct sc_conf_table notify_table = {
    .name = "notify",
    .help = "LISTEN/NOTIFY of checkpoint events.",
    .keys = notify_keys,
};

static const struct sc_conf_key events_keys[] = {
    {.name = "retention",
     .type = SC_CONF_DURATION,
     .def = "7d",
     .offset = CFG(events.retention_ms),
     .min = MS_MINUTE,
     .max = 3650 * MS_DAY,
     .help = "age after which events are compacted into a per-partition history"},
    {.name = "compact_interval",
     .type = SC_CONF_DURATION,
     .def = "1h",
     .offset = CFG(events.compact_interval_ms),
     .min = 1000,
     .max = 30 * MS_DAY,
     .help = "how often compaction runs"},
    {NULL},
};
static const struct sc_conf_table events_table = {
    .name = "events",
    .help = "The event table (durations: milliseconds, or a string like \"90s\", \"15m\", "
            "\"7d\").",
    .keys = events_keys,
};

static const struct sc_conf_key memory_keys[] = {
    {.name = "limit_mib",
     .type = SC_CONF_INT,
     .def = "64",
     .offset = CFG(memory.limit_mib),
     .min = 32,
     .max = 1048576,
     .help = "the process's memory budget in MiB: librdkafka's prefetch, the partitions' "
             "buffers and the batch size are derived from it (see docs/operations.md, "
             "\"Memory\")"},
    {NULL},
};
static const struct sc_conf_table memory_table = {
    .name = "memory",
    .help = "Memory use.",
    .keys = memory_keys,
};

static const struct sc_conf_key batch_keys[] = {
    /* Under backlog every batch costs a checkpoint commit, an fdatasync (file) or a
     * transaction (postgres) and a Kafka offset mirror; at 5000 records those stop
     * dominating (bench/: CPU per record -35% vs 1000, postgres sink from 0.85x to ~1x
     * \copy).  Partial batches still leave after max_wait_ms, so latency is unchanged. */
    {.name = "max_records",
     .type = SC_CONF_INT,
     .def = "5000",
     .offset = offsetof(struct sc_batch_conf, max_records),
     .min = 1,
     .max = 1000000,
     .help = "records per batch at most"},
    {.name = "max_bytes",
     .type = SC_CONF_INT64,
     .def = "1048576",
     .offset = offsetof(struct sc_batch_conf, max_bytes),
     .min = 1024,
     .max = 268435456,
     .help = "bytes of record values and keys per batch at most"},
    {.name = "max_wait_ms",
     .type = SC_CONF_INT,
     .def = "100",
     .offset = offsetof(struct sc_batch_conf, max_wait_ms),
     .min = 0,
     .max = 60000,
     .help = "how long a partial batch may wait for more records, counted from the oldest "
             "record's Kafka timestamp once the partition has caught up, else from its "
             "arrival (at the end of a backlog, a quarter of it: see \"Data flow\" in "
             "docs/design.md)"},
    {NULL},
};
static const struct sc_conf_table batch_table = {
    .name = "pipelines[].batch",
    .help = "A batch is delivered when any limit is reached.",
    .keys = batch_keys,
};

static const struct sc_conf_key lease_keys[] = {
    {.name = "ttl_ms",
     .type = SC_CONF_INT,
     .def = "10000",
     .offset = offsetof(struct sc_lease_conf, ttl_ms),
     .min = 1000,
     .max = 600000,
     .help = "a lease not renewed for this long may be taken over"},
    {.name = "renew_ms",
     .type = SC_CONF_INT,
     .def = "3000",
     .offset = offsetof(struct sc_lease_conf, renew_ms),
     .min = 100,
     .max = 300000,
     .help = "renewal interval; at most half of ttl_ms"},
    {NULL},
};
static const struct sc_conf_table lease_table = {
    .name = "pipelines[].lease",
    .help = "Partition leases in PostgreSQL (fencing epochs).",
    .keys = lease_keys,
    .check = check_lease,
};

#define REG(f) offsetof(struct sc_registry_conf, f)
static const struct sc_conf_key registry_keys[] = {
    {.name = "url",
     .type = SC_CONF_STRING,
     .offset = REG(url),
     .min = 1,
     .check = check_registry_url,
     .mask = mask_registry_url,
     .help = "http:// or https:// base URL of the registry, or several separated by commas "
             "(tried in turn; a password in one is masked when printed); required"},
    {.name = "username",
     .type = SC_CONF_STRING,
     .offset = REG(username),
     .min = 1,
     .help = "HTTP basic authentication user (Confluent Cloud: the API key)"},
    {.name = "password",
     .type = SC_CONF_STRING,
     .offset = REG(password),
     .flags = SC_CONF_SECRET,
     .help = "HTTP basic authentication password (Confluent Cloud: the API secret); use "
             "`${file:...}` or `${VAR}`"},
    {.name = "token",
     .type = SC_CONF_STRING,
     .offset = REG(token),
     .min = 1,
     .flags = SC_CONF_SECRET,
     .help = "sent as \"Authorization: Bearer ...\" (instead of basic authentication)"},
    {.name = "ca_file",
     .type = SC_CONF_STRING,
     .offset = REG(ca_file),
     .min = 1,
     .check = sc_conf_check_ca_bundle,
     .def_doc = "the system CA store",
     .help = "PEM bundle of the CAs to verify an https:// registry with (must be readable "
             "and hold a certificate when the config loads)"},
    {.name = "insecure_skip_verify",
     .type = SC_CONF_BOOL,
     .def = "false",
     .offset = REG(insecure_skip_verify),
     .help = "do not verify the registry's TLS certificate"},
    {.name = "timeout_ms",
     .type = SC_CONF_INT,
     .def = "5000",
     .offset = REG(timeout_ms),
     .min = 100,
     .max = 600000,
     .help = "timeout of one request (connecting included)"},
    {.name = "unknown_id_grace",
     .type = SC_CONF_DURATION,
     .def = "5m",
     .offset = REG(unknown_id_grace_ms),
     .min = 0,
     .max = 7 * MS_DAY,
     .help = "how long a schema id the registry does not know (404) is asked for again before "
             "the partition stops in the error state (a producer may register it late, or "
             "the sidecar may be reading a registry that is not the producer's)"},
    {NULL},
};
static const struct sc_conf_table registry_table = {
    .name = "schema_registry",
    .help = "The Confluent-compatible Schema Registry that value_format / key_format \"avro\" "
            "read schemas from (`GET /schemas/ids/{id}`); see docs/schema-registry.md.  A "
            "pipeline's own schema_registry block replaces this one whole.",
    .keys = registry_keys,
    .check = check_registry,
};

static const struct sc_conf_key sink_keys[] = {
    {.name = "type",
     .type = SC_CONF_VARIANT,
     .offset = 0,
     .flags = SC_CONF_REQUIRED,
     .help = "selects the sink; each type has its own keys (below)"},
    {NULL},
};
static const struct sc_conf_table sink_table = {
    .name = "pipelines[].sink",
    .help = "Where records go.",
    .keys = sink_keys,
};

static const struct sc_conf_key pipeline_keys[] = {
    {.name = "name",
     .type = SC_CONF_STRING,
     .offset = PIPE(name),
     .min = 1,
     .max = 63,
     .flags = SC_CONF_REQUIRED,
     .check = check_pipeline_name,
     .help = "unique, `[A-Za-z0-9][A-Za-z0-9._-]*`; names the pipeline's checkpoints in "
             "PostgreSQL"},
    {.name = "group_id",
     .type = SC_CONF_STRING,
     .offset = PIPE(group_id),
     .min = 1,
     .max = 255,
     .def_doc = "`\"sidecar-<name>\"`",
     .help = "Kafka consumer group (with assignment lease: only the name offsets are "
             "mirrored under, for lag tools; no group is joined)"},
    {.name = "topics",
     .type = SC_CONF_STRLIST,
     .offset = PIPE(topics),
     .min = 1,
     .flags = SC_CONF_REQUIRED | SC_CONF_UNIQUE,
     .check_item = check_topic,
     .help = "topics to consume"},
    {.name = "assignment",
     .type = SC_CONF_ENUM,
     .def = "kafka-group",
     .offset = PIPE(assignment),
     .values = assignments,
     .help = "who decides which instance consumes which partition: kafka-group (Kafka's "
             "consumer group coordinator) or lease (the instances, through PostgreSQL leases "
             "alone: fast failover, ownership controlled from SQL; see docs/design.md §10)"},
    {.name = "start_from",
     .type = SC_CONF_ENUM,
     .def = "earliest",
     .offset = PIPE(start_from),
     .values = start_froms,
     .help = "where a partition without a checkpoint starts"},
    {.name = "value_format",
     .type = SC_CONF_ENUM,
     .def = "auto",
     .offset = PIPE(formats.value),
     .values = value_formats,
     .help = "envelope value: auto (JSON verbatim, else a string, else base64), string, base64, "
             "avro (Confluent wire format, decoded with the schema from schema_registry) or "
             "json_schema (Confluent wire format around JSON: the JSON embedded)"},
    {.name = "key_format",
     .type = SC_CONF_ENUM,
     .offset = PIPE(formats.key),
     .values = value_formats,
     .def_doc = "`\"base64\"` when value_format is base64, else `\"auto\"`",
     .help = "envelope key: auto and string (a string if UTF-8, else base64), base64, avro or "
             "json_schema (as for value_format)"},
    {.name = "schema_registry",
     .type = SC_CONF_OBJECT,
     .offset = PIPE(schema_registry),
     .table = &registry_table,
     .def_doc = "the top-level schema_registry",
     .help = "this pipeline's own Schema Registry, replacing the top-level block whole"},
    {.name = "batch",
     .type = SC_CONF_OBJECT,
     .offset = PIPE(batch),
     .table = &batch_table,
     .help = "batch limits"},
    {.name = "lease",
     .type = SC_CONF_OBJECT,
     .offset = PIPE(lease),
     .table = &lease_table,
     .help = "partition leases"},
    {.name = "workers",
     .type = SC_CONF_INT,
     .offset = PIPE(workers),
     .min = 1,
     .max = 64,
     .def_doc = "4 for the http sink; the CPUs available less one for the file sink, at least 1; "
                "else the CPUs available; at most 4",
     .help = "delivery threads (a partition is pinned to one); the CPUs available are the "
             "process's CPU affinity, fewer if its cgroup's CPU quota allows less (a "
             "container's --cpus), rounded up"},
    {.name = "kafka_properties",
     .type = SC_CONF_MAP,
     .offset = PIPE(kafka_properties),
     .flags = SC_CONF_SCALARS | SC_CONF_MASK_BY_NAME,
     .check_item = check_kafka_property,
     .is_secret_name = sc_conf_key_is_secret,
     .help = "librdkafka properties overriding kafka.properties for this pipeline"},
    {.name = "sink",
     .type = SC_CONF_OBJECT,
     .offset = PIPE(sink),
     .table = &sink_table,
     .flags = SC_CONF_REQUIRED,
     .help = "the destination"},
    {NULL},
};
static const struct sc_conf_table pipeline_table = {
    .name = "pipelines[]",
    .help = "A pipeline consumes topics and delivers them to one sink.",
    .size = sizeof(struct sc_pipeline_conf),
    .keys = pipeline_keys,
    .check = check_pipeline,
};

static const struct sc_conf_key root_keys[] = {
    {.name = "instance_id",
     .type = SC_CONF_STRING,
     .offset = CFG(instance_id),
     .min = 1,
     .max = 128,
     .check = check_instance_id,
     .def_doc = "`$HOSTNAME`, else the host name, else `\"sidecar\"`",
     .help = "this instance's name as lease owner; printable, no whitespace"},
    {.name = "postgres",
     .type = SC_CONF_OBJECT,
     .offset = 0,
     .table = &postgres_table,
     .flags = SC_CONF_REQUIRED,
     .help = "checkpoint database"},
    {.name = "kafka",
     .type = SC_CONF_OBJECT,
     .offset = 0,
     .table = &kafka_table,
     .flags = SC_CONF_REQUIRED,
     .help = "Kafka cluster"},
    {.name = "admin",
     .type = SC_CONF_OBJECT,
     .offset = 0,
     .table = &admin_table,
     .help = "admin HTTP endpoint"},
    {.name = "log", .type = SC_CONF_OBJECT, .offset = 0, .table = &log_table, .help = "logging"},
    {.name = "shutdown_timeout_ms",
     .type = SC_CONF_INT,
     .def = "8000",
     .offset = CFG(shutdown_timeout_ms),
     .min = 1000,
     .max = 600000,
     .help = "on SIGTERM, finish in-flight batches and exit within this time (fits Docker's "
             "10 s stop grace period)"},
    {.name = "notify",
     .type = SC_CONF_OBJECT,
     .offset = 0,
     .table = &notify_table,
     .help = "event notifications"},
    {.name = "events",
     .type = SC_CONF_OBJECT,
     .offset = 0,
     .table = &events_table,
     .help = "event history"},
    {.name = "schema_registry",
     .type = SC_CONF_OBJECT,
     .offset = CFG(schema_registry),
     .table = &registry_table,
     .help = "Schema Registry for value_format / key_format \"avro\""},
    {.name = "memory",
     .type = SC_CONF_OBJECT,
     .offset = 0,
     .table = &memory_table,
     .help = "memory budget"},
    {.name = "pipelines",
     .type = SC_CONF_ARRAY,
     .offset = CFG(pipelines),
     .aux_offset = CFG(npipelines),
     .table = &pipeline_table,
     .min = 1,
     .max = 64,
     .flags = SC_CONF_REQUIRED,
     .help = "1 to 64 pipelines with unique names"},
    {NULL},
};
static const struct sc_conf_table root_table = {
    .name = "",
    .help = "The top level of the configuration file.",
    .keys = root_keys,
    .check = check_root,
};

/* ---- loading ------------------------------------------------------------------------------ */

/*
 * jansson quotes the offending token ("near '\"password=...'", "near 'hunter2'"),
 * which may be a secret: the quote is dropped, LINE:COL already points there.
 */
static void report_json_error(struct sc_conf_ctx *ctx, const json_error_t *jerr)
{
    if (json_error_code(jerr) == json_error_duplicate_key) {
        struct sc_jsonpos pos;
        struct sc_jsonpos_seg *path = NULL;
        size_t n = 0;
        if (sc_jsonpos_key_ending_at(ctx->text, ctx->len, (size_t)jerr->position, &pos, &path,
                                     &n) == 0) {
            for (size_t i = 0; i < n; i++)
                if (path[i].key)
                    sc_conf_push_key(ctx, path[i].key);
                else
                    sc_conf_push_index(ctx, path[i].index);
            char q[256];
            sc_conf_error_at(ctx, &pos, "duplicate key %s",
                             sc_conf_quote(q, sizeof(q), path[n - 1].key));
            for (size_t i = 0; i < n; i++)
                sc_conf_pop(ctx);
            sc_jsonpos_path_free(path, n);
            return;
        }
    }
    char text[JSON_ERROR_TEXT_LENGTH];
    snprintf(text, sizeof(text), "%s", jerr->text);
    char *near = strstr(text, " near '");
    if (near)
        *near = '\0';
    struct sc_jsonpos pos = {
        .offset = jerr->position > 0 ? (size_t)jerr->position : 0,
        .line = jerr->line > 0 ? jerr->line : 1,
        .column = jerr->column > 0 ? jerr->column : 1,
    };
    if (strncmp(text, "invalid token", 13) == 0 && pos.offset > 0 && pos.offset <= ctx->len) {
        /* jansson stops at the bad word's last character: point at its first. */
        size_t start = pos.offset - 1;
        while (start > 0 && (isalnum((unsigned char)ctx->text[start - 1]) ||
                             strchr("+-._", ctx->text[start - 1])))
            start--;
        sc_jsonpos_at(ctx->text, ctx->len, start, &pos);
    }
    sc_conf_error_at(ctx, &pos, "invalid JSON: %s", text);
}

static int load_text(const char *name, const char *text, size_t len,
                     const struct sc_sink_registry *sinks, struct sc_config **out, char *errbuf,
                     size_t errsize)
{
    struct sc_conf_ctx ctx;
    struct sc_config *cfg = NULL;
    json_t *root = NULL;
    json_error_t jerr;
    int result = -1;

    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
        text += 3; /* a UTF-8 byte order mark, as some editors write */
        len -= 3;
    }
    sc_conf_ctx_init(&ctx, name, text, len);
    size_t first = 0;
    while (first < len && strchr(" \t\r\n", text[first]))
        first++;
    if (first == len) {
        snprintf(errbuf, errsize, "%s: cannot read config: file is empty\n", name);
        return -1;
    }
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        report_json_error(&ctx, &jerr);
        goto out;
    }
    if (!json_is_object(root)) {
        struct sc_jsonpos pos;
        sc_jsonpos_at(text, len, first, &pos);
        sc_conf_error_at(&ctx, &pos, "expected an object at the top level");
        goto out;
    }
    cfg = sc_xcalloc(1, sizeof(*cfg));
    cfg->path = sc_xstrdup(name);
    ctx.variants = sinks ? sinks->types : NULL;
    sc_conf_parse(&ctx, &root_table, cfg, root);
    check_sinks(&ctx, cfg, sinks);
    default_workers(cfg, sinks);
    if (ctx.nerrors == 0) {
        *out = cfg;
        cfg = NULL;
        result = 0;
    }
out:
    if (result < 0)
        sc_conf_format_errors(&ctx, errbuf, errsize);
    sc_config_free(cfg);
    json_decref(root);
    sc_conf_ctx_free(&ctx);
    return result;
}

int sc_config_load(const char *path, const struct sc_sink_registry *sinks, struct sc_config **out,
                   char *errbuf, size_t errsize)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    if (sc_expand_read_file(path, MAX_CONFIG_BYTES, &text, &len) < 0) {
        if (errno == EFBIG)
            snprintf(errbuf, errsize, "%s: cannot read config: file is larger than %d MiB\n", path,
                     MAX_CONFIG_BYTES / (1024 * 1024));
        else
            snprintf(errbuf, errsize, "%s: cannot read config: %s\n", path, strerror(errno));
        return -1;
    }
    int rc = load_text(path, text, len, sinks, out, errbuf, errsize);
    free(text);
    return rc;
}

int sc_config_load_string(const char *name, const char *text, const struct sc_sink_registry *sinks,
                          struct sc_config **out, char *errbuf, size_t errsize)
{
    *out = NULL;
    return load_text(name, text, strlen(text), sinks, out, errbuf, errsize);
}

void sc_config_free(struct sc_config *cfg)
{
    if (!cfg)
        return;
    sc_conf_free(&root_table, cfg);
    free(cfg->path);
    free(cfg);
}

json_t *sc_config_to_json(const struct sc_config *cfg)
{
    return sc_conf_to_json(&root_table, cfg);
}

char *sc_config_reference_markdown(const struct sc_sink_registry *sinks)
{
    static const char intro[] =
        "# Configuration reference\n\n"
        "Generated by `sidecar check-config --reference` from the key tables in "
        "`sidecar/config/sc_config.c` and, for each sink, in its own file under "
        "`sidecar/sinks/`.\n\n"
        "The file is one JSON object.  Unknown keys are errors.  Every string value (array "
        "items and object values too, never keys) may use `${VAR}` (an error when VAR is "
        "unset), `${VAR:-default}` (when VAR is unset or empty), `${file:/path}` (the file's "
        "contents minus one trailing newline) and `$$` (a literal `$`).  An integer or boolean "
        "may be given as a string holding `${...}`, e.g. `\"workers\": \"${WORKERS:-4}\"`.  "
        "Durations are milliseconds or a string such as `\"90s\"`, `\"15m\"`, `\"7d\"` (units "
        "ms, s, m, h, d).  Secret values are masked by `sidecar check-config` and never "
        "logged.\n\n";
    struct sc_buf b;
    sc_buf_init(&b, 0);
    buf_puts(&b, intro, strlen(intro));
    sc_conf_reference(&root_table, sinks ? sinks->types : NULL, &b);
    return buf_take(&b);
}

int sc_config_selftest(const struct sc_sink_registry *sinks, char *err, size_t errsize)
{
    return sc_conf_table_selftest(&root_table, sinks ? sinks->types : NULL, err, errsize);
}
