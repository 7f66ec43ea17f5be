/*
 * cmd_check_config.c - `sidecar check-config`: validates a config file and
 * prints the effective configuration (defaults filled in, secrets masked),
 * or with --reference every key of every table as Markdown.
 *
 * Every rule that needs only the config is checked when the config loads
 * (the key tables and their check functions, shared with `run`), plus one
 * here that needs librdkafka: it must accept each pipeline's client
 * configuration as a whole.  With --online, the checks in online_checks[]
 * also ask the servers what `run` would find there: PostgreSQL answers and
 * the schema is migrated, every topic exists in Kafka, each sink's
 * destination is usable (a postgres sink's table and its shape, a file
 * sink's directory, an http sink's endpoint), each Schema Registry that
 * value_format / key_format avro reads answers with our credentials.
 * Nothing is created or changed.  Adding a check is one function and one line in that table.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "base/sc_util.h"
#include "cli/cli_kafka.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "db/sc_migrate.h"
#include "db/sc_pg.h"
#include "record/sc_registry.h"
#include "sinks/sc_sink.h"

/* What the online checks found: one line each on stderr, and a count of problems. */
struct online_report {
    int problems;
};

static void report(struct online_report *r, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void report(struct online_report *r, bool ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "  %s ", ok ? "ok     " : "PROBLEM");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (!ok)
        r->problems++;
}

/* PostgreSQL answers, and the schema is at the version this binary needs. */
static void online_postgres(const struct sc_config *cfg, struct online_report *r)
{
    char err[1024];
    PGconn *conn = sc_pg_connect(cfg->postgres.dsn, "kafka-sidecar/check-config",
                                 cfg->postgres.connect_timeout_ms, err, sizeof(err));
    if (!conn) {
        report(r, false, "postgres: %s%s", err,
               sc_pg_login_refused(err) ? " (check the user, password and database)" : "");
        return;
    }
    char *where = sc_pg_dsn_describe(cfg->postgres.dsn);
    if (sc_migrate_require_latest(conn, cfg->postgres.schema, err, sizeof(err)) != 0)
        report(r, false, "postgres: %s", err);
    else
        report(r, true, "postgres: %s answers; schema \"%s\" is migrated", where,
               cfg->postgres.schema);
    free(where);
    PQfinish(conn);
}

/* Every topic a pipeline names exists (patterns are matched at run time). */
static void online_kafka(const struct sc_config *cfg, struct online_report *r)
{
    char err[1024];
    for (size_t i = 0; i < cfg->npipelines; i++) {
        const struct sc_pipeline_conf *p = &cfg->pipelines[i];
        rd_kafka_t *rk = cli_kafka_new(cfg, p, err, sizeof(err));
        if (!rk) {
            report(r, false, "pipelines[%zu] (%s): %s", i, p->name, err);
            continue;
        }
        for (size_t t = 0; t < p->topics.count; t++) {
            const char *topic = p->topics.items[t];
            if (topic[0] == '^') {
                report(r, true, "pipelines[%zu] (%s): topic pattern %s is matched at run time", i,
                       p->name, topic);
                continue;
            }
            int count = 0;
            enum cli_kafka_rc rc = cli_kafka_partitions(rk, topic, 10000, &count, err, sizeof(err));
            if (rc == CLI_KAFKA_OK)
                report(r, true, "pipelines[%zu] (%s): topic \"%s\" exists (%d partition%s)", i,
                       p->name, topic, count, count == 1 ? "" : "s");
            else
                report(r, false, "pipelines[%zu] (%s): %s (Kafka at %s)", i, p->name, err,
                       cfg->kafka.bootstrap_servers);
        }
        rd_kafka_destroy(rk);
    }
}

/* Each sink's own check of its destination (sc_sink_class.check_online). */
static void online_sinks(const struct sc_config *cfg, struct online_report *r)
{
    char msg[2048];
    for (size_t i = 0; i < cfg->npipelines; i++) {
        const struct sc_sink_class *type = sc_sink_class_of(&cfg->pipelines[i].sink);
        if (!type || !type->check_online)
            continue;
        int rc = type->check_online(cfg, i, msg, sizeof(msg));
        report(r, rc == 0, "pipelines[%zu].sink (%s): %s", i, cfg->pipelines[i].name, msg);
    }
}

/* Each Schema Registry the pipelines read Avro with answers GET /subjects, once per block. */
static void online_registries(const struct sc_config *cfg, struct online_report *r)
{
    for (size_t i = 0; i < cfg->npipelines; i++) {
        const struct sc_pipeline_conf *p = &cfg->pipelines[i];
        bool avro = p->formats.value == SC_VALUE_AVRO || p->formats.key == SC_VALUE_AVRO;
        bool seen = false;
        for (size_t j = 0; j < i && avro; j++)
            seen |= cfg->pipelines[j].registry == p->registry &&
                    (cfg->pipelines[j].formats.value == SC_VALUE_AVRO ||
                     cfg->pipelines[j].formats.key == SC_VALUE_AVRO);
        if (!avro || seen)
            continue;
        char err[2048];
        char *url = sc_registry_display_url(p->registry);
        if (sc_registry_ping(p->registry, err, sizeof(err)) == 0)
            report(r, true, "pipelines[%zu] (%s): schema registry %s answers", i, p->name, url);
        else
            report(r, false, "pipelines[%zu] (%s): %s", i, p->name, err);
        free(url);
    }
}

static const struct {
    const char *what;
    void (*run)(const struct sc_config *cfg, struct online_report *r);
} online_checks[] = {
    {"PostgreSQL", online_postgres},
    {"Kafka", online_kafka},
    {"sinks", online_sinks},
    {"Schema Registry", online_registries},
};

/*
 * Offline, but beyond the key tables: librdkafka checks a client's
 * configuration as a whole only when the client is created (a SASL
 * mechanism without its credentials, TLS files that do not load).  Returns
 * the number of pipelines it refused, with the reason printed.
 */
static int check_kafka_clients(const struct sc_config *cfg)
{
    int bad = 0;
    char err[1024];
    for (size_t i = 0; i < cfg->npipelines; i++) {
        rd_kafka_t *rk = cli_kafka_new(cfg, &cfg->pipelines[i], err, sizeof(err));
        if (!rk) {
            fprintf(stderr, "%s: pipelines[%zu] (%s): kafka: %s\n", cfg->path, i,
                    cfg->pipelines[i].name, err);
            bad++;
            continue;
        }
        rd_kafka_destroy(rk);
    }
    return bad;
}

static int run_check_config(const struct sc_config *cfg, const struct sc_cli *cli)
{
    if (cli->reference) {
        char *md = sc_config_reference_markdown(&sc_sinks);
        fputs(md, stdout);
        free(md);
        return SC_EXIT_OK;
    }
    if (check_kafka_clients(cfg) > 0)
        return SC_EXIT_USAGE;
    json_t *j = sc_config_to_json(cfg);
    json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    fflush(stdout);
    json_decref(j);
    fprintf(stderr, "%s: configuration is valid (%zu pipeline%s)\n", cli->config, cfg->npipelines,
            cfg->npipelines == 1 ? "" : "s");
    if (!cli->online)
        return SC_EXIT_OK;
    struct online_report r = {0};
    for (size_t i = 0; i < SC_ARRAY_LEN(online_checks); i++) {
        fprintf(stderr, "%s:\n", online_checks[i].what);
        online_checks[i].run(cfg, &r);
    }
    if (r.problems > 0) {
        fprintf(stderr, "%s: %d problem%s found online: `sidecar run` would not get far\n",
                cli->config, r.problems, r.problems == 1 ? "" : "s");
        return SC_EXIT_FAILURE;
    }
    fprintf(stderr, "%s: PostgreSQL, Kafka and the sinks are ready for it\n", cli->config);
    return SC_EXIT_OK;
}

const struct sc_command sc_cmd_check_config = {
    .name = "check-config",
    .summary = "Validate a config file and print the effective config.",
    .usage = "-c FILE [--online] | --reference",
    .help = "Prints the configuration with defaults filled in and secrets masked.  Every\n"
            "rule that needs only the file is checked (exit 2 on a mistake), including\n"
            "librdkafka's own check of each pipeline's Kafka properties as a whole.\n"
            "\n"
            "--online also asks the servers what `sidecar run` would find, changing\n"
            "nothing: PostgreSQL answers and the schema is migrated, every topic exists\n"
            "in Kafka, each postgres sink's table exists (or will be created) with the\n"
            "configured columns, types and unique index, each file sink's directory is\n"
            "writable, each http sink's endpoint accepts a connection (no request is\n"
            "sent).  One line per check on stderr; exit 1 if any failed.\n"
            "\n"
            "--reference prints every key with its type, default and range (Markdown).\n",
    .options = "c reference online",
    .run = run_check_config,
};
