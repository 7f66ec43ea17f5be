/*
 * cmd_assign.c - `sidecar pin`, `unpin`, `move` and `drain`: who owns which
 * partition of a pipeline with "assignment": "lease" (docs/design.md §10).
 *
 * Each command is one call of the SQL function of the same name
 * (<schema>.pin_partition(), unpin_partition(), move_partition(),
 * drain_instance() / undrain_instance()), so the command line and psql
 * share one implementation: the function checks the pipeline, the instance
 * and the partition, writes a 'lease' event and NOTIFYs the control
 * channel, where the running instances hear of it at once.  The command
 * checks the config first (the pipeline exists and uses lease assignment,
 * the topic is one of its topics), reports what the function did, and with
 * --wait follows the handoff until it is done.
 */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "base/sc_util.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "db/sc_pg.h"

#define WAIT_MS 60000

enum verb {
    VERB_PIN,
    VERB_UNPIN,
    VERB_MOVE,
    VERB_DRAIN,
};

static const char *const verb_names[] = {"pin", "unpin", "move", "drain"};

/* Checks --pipeline (defaulting to the only one) and --topic against the config. */
static int check_config(const struct sc_config *cfg, enum verb v, const struct sc_cli *cli,
                        const char **pipeline)
{
    const char *name = verb_names[v];
    const struct sc_pipeline_conf *p = NULL;
    if (!cli->pipeline && cfg->npipelines == 1) {
        p = &cfg->pipelines[0];
    } else if (!cli->pipeline) {
        fprintf(stderr, "sidecar %s: --pipeline P is required (%s has %zu pipelines)\n", name,
                cfg->path, cfg->npipelines);
        return SC_EXIT_USAGE;
    } else {
        for (size_t i = 0; i < cfg->npipelines; i++)
            if (strcmp(cfg->pipelines[i].name, cli->pipeline) == 0)
                p = &cfg->pipelines[i];
        if (!p) {
            fprintf(stderr, "sidecar %s: no pipeline \"%s\" in %s\n", name, cli->pipeline,
                    cfg->path);
            return SC_EXIT_USAGE;
        }
    }
    *pipeline = p->name;
    if (p->assignment != SC_ASSIGN_LEASE) {
        fprintf(stderr,
                "sidecar %s: pipeline \"%s\" uses \"assignment\": \"kafka-group\": Kafka's "
                "group coordinator decides which instance consumes which partition\n"
                "hint: set \"assignment\": \"lease\" for the pipeline to control ownership\n",
                name, p->name);
        return SC_EXIT_USAGE;
    }
    if (v == VERB_DRAIN)
        return SC_EXIT_OK;
    for (size_t i = 0; i < p->topics.count; i++)
        if (strcmp(p->topics.items[i], cli->topic) == 0)
            return SC_EXIT_OK;
    fprintf(stderr, "sidecar %s: pipeline \"%s\" does not consume topic \"%s\"\n", name, p->name,
            cli->topic);
    return SC_EXIT_USAGE;
}

/* The server's warnings (e.g. drain_instance() leaving nobody to consume), as the command's
 * own: "sidecar VERB: warning: ..." on stderr. */
static void print_warning(void *arg, const char *message)
{
    const char *prefix = "WARNING:  ";
    if (strncmp(message, prefix, strlen(prefix)) != 0)
        return;
    message += strlen(prefix);
    int len = (int)strcspn(message, "\n");
    fprintf(stderr, "sidecar %s: warning: %.*s\n", (const char *)arg, len, message);
}

/* Runs sql with params; prints the server's error (and hint) on failure. */
static PGresult *call(PGconn *conn, const char *name, const char *sql, int n,
                      const char *const *params)
{
    PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        return res;
    char msg[1024];
    sc_pg_errmsg(conn, res, msg, sizeof(msg));
    const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    fprintf(stderr, "sidecar %s: %s\n", name, msg);
    if (hint)
        fprintf(stderr, "hint: %s\n", hint);
    else if (state && (strcmp(state, "42P01") == 0 || strcmp(state, "42883") == 0 ||
                       strcmp(state, "3F000") == 0))
        fprintf(stderr, "hint: is the schema migrated? run `sidecar migrate`\n");
    PQclear(res);
    return NULL;
}

/* The first value of the answer to sql (malloc'd; NULL for none or SQL NULL). */
static char *value(PGconn *conn, const char *sql, int n, const char *const *params)
{
    PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    char *v = NULL;
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        v = sc_xstrdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

/* Polls sql (one boolean) until it says true or WAIT_MS pass. */
static bool wait_for(PGconn *conn, const char *sql, int n, const char *const *params)
{
    int64_t end = sc_mono_ms() + WAIT_MS;
    for (;;) {
        char *v = value(conn, sql, n, params);
        bool done = v && v[0] == 't';
        free(v);
        if (done)
            return true;
        if (sc_mono_ms() >= end)
            return false;
        usleep(200 * 1000);
    }
}

static int run_verb(const struct sc_config *cfg, const struct sc_cli *cli, enum verb v)
{
    const char *name = verb_names[v];
    int result = SC_EXIT_USAGE;
    char err[1024], pn[24];
    char *schema_q = sc_pg_quote_ident(cfg->postgres.schema);
    char *sql = NULL, *wait_sql = NULL, *live = NULL;
    char *live_sql = sc_pg_with_schema("SELECT expires_at > now() FROM {S}.instances"
                                       " WHERE pipeline = $1 AND instance_id = $2",
                                       schema_q);
    PGconn *conn = NULL;
    PGresult *res = NULL;
    const char *pipeline = NULL;
    int64_t part = -1;

    const char *missing = NULL;
    if (v != VERB_DRAIN && !cli->topic)
        missing = "--topic T";
    else if (v != VERB_DRAIN && !cli->partition)
        missing = "--partition N";
    else if (v != VERB_UNPIN && !cli->instance)
        missing = "--instance ID";
    if (missing) {
        fprintf(stderr, "sidecar %s: %s is required\nTry 'sidecar %s --help'.\n", name, missing,
                name);
        goto out;
    }
    if (v != VERB_DRAIN &&
        (sc_parse_i64(cli->partition, &part) != 0 || part < 0 || part > INT32_MAX)) {
        fprintf(stderr, "sidecar %s: --partition \"%s\": expected a partition number >= 0\n", name,
                cli->partition);
        goto out;
    }
    snprintf(pn, sizeof(pn), "%" PRId64, part);
    result = check_config(cfg, v, cli, &pipeline);
    if (result != SC_EXIT_OK)
        goto out;

    result = SC_EXIT_FAILURE;
    conn = sc_pg_connect(cfg->postgres.dsn, "kafka-sidecar/assign",
                         cfg->postgres.connect_timeout_ms, err, sizeof(err));
    if (!conn) {
        fprintf(stderr, "sidecar %s: %s\n", name, err);
        goto out;
    }
    PQsetNoticeProcessor(conn, print_warning, (void *)name);
    const char *pparams[] = {pipeline, cli->topic, pn, cli->instance};
    const char *dparams[] = {pipeline, cli->instance};
    switch (v) {
    case VERB_PIN:
        sql = sc_pg_with_schema("SELECT CASE WHEN expires_at > now() THEN owner END"
                                " FROM {S}.pin_partition($1, $2, $3::int, $4)",
                                schema_q);
        if (!(res = call(conn, name, sql, 4, pparams)))
            goto out;
        if (!(live = value(conn, live_sql, 2, dparams)) || strcmp(live, "t") != 0)
            printf("pinned %s %s[%s] to %s; %s is not running: the pin takes effect when it "
                   "runs (until then the partition stays where it is)\n",
                   pipeline, cli->topic, pn, cli->instance, cli->instance);
        else if (PQgetisnull(res, 0, 0) || strcmp(PQgetvalue(res, 0, 0), cli->instance) == 0)
            printf("pinned %s %s[%s] to %s; it takes the partition when it is free\n", pipeline,
                   cli->topic, pn, cli->instance);
        else
            printf("pinned %s %s[%s] to %s; its owner %s hands it over after its batch in "
                   "flight\n",
                   pipeline, cli->topic, pn, cli->instance, PQgetvalue(res, 0, 0));
        wait_sql = sc_pg_with_schema(
            "SELECT coalesce(bool_or(owner = $4 AND expires_at > now()), false) FROM {S}.leases"
            " WHERE pipeline = $1 AND topic = $2 AND partition = $3::int",
            schema_q);
        break;
    case VERB_UNPIN:
        sql = sc_pg_with_schema("SELECT 1 FROM {S}.unpin_partition($1, $2, $3::int)", schema_q);
        if (!(res = call(conn, name, sql, 3, pparams)))
            goto out;
        printf("unpinned %s %s[%s]; it stays where it is, balancing may move it\n", pipeline,
               cli->topic, pn);
        break;
    case VERB_MOVE:
        sql = sc_pg_with_schema("SELECT CASE WHEN expires_at > now() THEN owner END"
                                " FROM {S}.move_partition($1, $2, $3::int, $4)",
                                schema_q);
        if (!(res = call(conn, name, sql, 4, pparams)))
            goto out;
        if (!PQgetisnull(res, 0, 0) && strcmp(PQgetvalue(res, 0, 0), cli->instance) == 0)
            printf("%s owns %s %s[%s] already\n", cli->instance, pipeline, cli->topic, pn);
        else
            printf("moving %s %s[%s] to %s%s%s (after the batch in flight); balancing may even "
                   "out the counts later: pin it to keep it there\n",
                   pipeline, cli->topic, pn, cli->instance, PQgetisnull(res, 0, 0) ? "" : " from ",
                   PQgetisnull(res, 0, 0) ? "" : PQgetvalue(res, 0, 0));
        wait_sql = sc_pg_with_schema(
            "SELECT coalesce(bool_or(owner = $4 AND expires_at > now()), false) FROM {S}.leases"
            " WHERE pipeline = $1 AND topic = $2 AND partition = $3::int",
            schema_q);
        break;
    case VERB_DRAIN:
        sql = sc_pg_with_schema("SELECT draining FROM {S}.drain_instance($1, $2, $3::boolean)",
                                schema_q);
        {
            const char *params[] = {pipeline, cli->instance, cli->undo ? "false" : "true"};
            if (!(res = call(conn, name, sql, 3, params)))
                goto out;
        }
        if (cli->undo)
            printf("undrained %s in pipeline %s: it takes its share of partitions again\n",
                   cli->instance, pipeline);
        else
            printf("draining %s in pipeline %s: it hands every partition over (each after its "
                   "batch in flight) and takes none until `sidecar drain --undo`\n",
                   cli->instance, pipeline);
        if (!cli->undo)
            wait_sql = sc_pg_with_schema("SELECT count(*) = 0 FROM {S}.leases"
                                         " WHERE pipeline = $1 AND owner = $2"
                                         " AND expires_at > now()",
                                         schema_q);
        break;
    }
    fflush(stdout);
    result = SC_EXIT_OK;
    if (cli->wait && wait_sql) {
        bool done = v == VERB_DRAIN ? wait_for(conn, wait_sql, 2, dparams)
                                    : wait_for(conn, wait_sql, 4, pparams);
        if (done) {
            printf("done\n");
        } else {
            fprintf(stderr,
                    "sidecar %s: not done after %d s (is %s running? `sidecar status` "
                    "shows the leases)\n",
                    name, WAIT_MS / 1000, cli->instance);
            result = SC_EXIT_FAILURE;
        }
    }
out:
    PQclear(res);
    PQfinish(conn);
    free(sql);
    free(wait_sql);
    free(live_sql);
    free(live);
    free(schema_q);
    return result;
}

static int run_pin(const struct sc_config *cfg, const struct sc_cli *cli)
{
    return run_verb(cfg, cli, VERB_PIN);
}

static int run_unpin(const struct sc_config *cfg, const struct sc_cli *cli)
{
    return run_verb(cfg, cli, VERB_UNPIN);
}

static int run_move(const struct sc_config *cfg, const struct sc_cli *cli)
{
    return run_verb(cfg, cli, VERB_MOVE);
}

static int run_drain(const struct sc_config *cfg, const struct sc_cli *cli)
{
    return run_verb(cfg, cli, VERB_DRAIN);
}

#define LEASE_ONLY                                                                           \
    "Only for pipelines with \"assignment\": \"lease\" (docs/design.md §10).  --pipeline\n" \
    "may be left out when the config has one pipeline.  Exit 1 when PostgreSQL refuses\n"    \
    "(unknown instance, pipeline not in lease mode, ...), 2 on a usage error.\n"

const struct sc_command sc_cmd_pin = {
    .name = "pin",
    .summary = "Pin a partition to an instance (lease assignment).",
    .usage = "-c FILE [--pipeline P] --topic T --partition N --instance ID [--wait]",
    .help = "The instance owns the partition whenever it is live: its current owner hands\n"
            "it over after the batch in flight, and balancing never moves it away.  A pin\n"
            "to an instance that is not running is void until it runs.  --wait follows the\n"
            "handoff until the instance holds the lease (at most 60 s).\n"
            "Same as SELECT * FROM <schema>.pin_partition(P, T, N, ID).\n" LEASE_ONLY,
    .options = "c pipeline topic partition instance wait",
    .run = run_pin,
};

const struct sc_command sc_cmd_unpin = {
    .name = "unpin",
    .summary = "Remove a partition's pin (lease assignment).",
    .usage = "-c FILE [--pipeline P] --topic T --partition N",
    .help = "The partition stays where it is; balancing may move it again.\n"
            "Same as SELECT * FROM <schema>.unpin_partition(P, T, N).\n" LEASE_ONLY,
    .options = "c pipeline topic partition",
    .run = run_unpin,
};

const struct sc_command sc_cmd_move = {
    .name = "move",
    .summary = "Move one partition to another instance (lease assignment).",
    .usage = "-c FILE [--pipeline P] --topic T --partition N --instance ID [--wait]",
    .help = "Asks the owner to hand the partition to the instance (live, not draining)\n"
            "after the batch in flight: nothing is replayed.  One-shot: balancing may\n"
            "later even out the counts by moving some partition back; pin it to keep it\n"
            "there.  --wait follows the handoff until the instance holds the lease.\n"
            "Same as SELECT * FROM <schema>.move_partition(P, T, N, ID).\n" LEASE_ONLY,
    .options = "c pipeline topic partition instance wait",
    .run = run_move,
};

const struct sc_command sc_cmd_drain = {
    .name = "drain",
    .summary = "Make an instance hand all its partitions over (lease assignment).",
    .usage = "-c FILE [--pipeline P] --instance ID [--wait] [--undo]",
    .help = "The instance hands every partition to the others (each after its batch in\n"
            "flight), then idles: for rolling deploys and taking a host out of rotation.\n"
            "It stays drained, across restarts, until `sidecar drain --undo`.  --wait\n"
            "returns once it holds no lease (at most 60 s).  Draining the last instance\n"
            "that can consume (running, undrained, seeing the topics) stops the pipeline\n"
            "until one starts or is undrained: it is done, with a warning saying so.\n"
            "Same as SELECT * FROM <schema>.drain_instance(P, ID) / undrain_instance(P, ID).\n"
            "\n"
            "Rolling deploy: drain --wait, stop the instance, deploy, start it, drain "
            "--undo.\n" LEASE_ONLY,
    .options = "c pipeline instance wait undo",
    .run = run_drain,
};
