/*
 * cmd_reset.c - `sidecar reset`: moves a partition's checkpoint.
 *
 * reset goes through the SQL function <schema>.reset_checkpoint() so the
 * command line and psql share one implementation: it refuses while another
 * instance holds a live lease (SQLSTATE 55P03) unless forced, drops the
 * pending batch, clears the error state, writes a 'reset' event and bumps
 * control_seq, which is how a running owner notices the change.  The
 * command only resolves earliest / latest from Kafka first and reports
 * what changed.
 */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "base/sc_log.h"
#include "base/sc_util.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "db/sc_pg.h"

static void kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk, (void)level;
    /* Connection noise while resolving; the outcome is reported by the caller. */
    sc_debug(NULL, "librdkafka %s: %s", fac, buf);
}

/* Sets a librdkafka property; -1 with a message in err. */
static int kafka_set(rd_kafka_conf_t *conf, const char *key, const char *value, char *err,
                     size_t errsize)
{
    char why[512];
    if (rd_kafka_conf_set(conf, key, value, why, sizeof(why)) == RD_KAFKA_CONF_OK)
        return 0;
    snprintf(err, errsize, "kafka property \"%s\": %s", key, why);
    return -1;
}

/*
 * Resolves earliest (log start) or latest (log end) with a short-lived
 * handle configured like the pipeline's consumer.  Returns SC_EXIT_OK, or
 * SC_EXIT_USAGE (no such partition) / SC_EXIT_FAILURE with err set.
 */
static int resolve_offset(const struct sc_config *cfg, const struct sc_pipeline_conf *p,
                          const char *topic, int32_t partition, bool latest, int64_t *offset,
                          char *err, size_t errsize)
{
    int result = SC_EXIT_FAILURE;
    rd_kafka_t *rk = NULL;
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (size_t i = 0; i < cfg->kafka.properties.count; i++)
        if (kafka_set(conf, cfg->kafka.properties.items[i].key,
                      cfg->kafka.properties.items[i].value, err, errsize) != 0)
            goto out;
    for (size_t i = 0; i < p->kafka_properties.count; i++)
        if (kafka_set(conf, p->kafka_properties.items[i].key, p->kafka_properties.items[i].value,
                      err, errsize) != 0)
            goto out;
    if (kafka_set(conf, "bootstrap.servers", cfg->kafka.bootstrap_servers, err, errsize) != 0 ||
        kafka_set(conf, "client.id", "kafka-sidecar-reset", err, errsize) != 0)
        goto out;
    rd_kafka_conf_set_log_cb(conf, kafka_log);
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
    if (!rk) {
        snprintf(err, errsize, "could not create a Kafka client: %s", why);
        goto out;
    }
    conf = NULL; /* owned by rk now */
    int64_t low = -1, high = -1;
    rd_kafka_resp_err_t e =
        rd_kafka_query_watermark_offsets(rk, topic, partition, &low, &high, 10000);
    if (e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || e == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
        e == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) {
        snprintf(err, errsize, "%s[%d] does not exist in Kafka at %s (%s)", topic, (int)partition,
                 cfg->kafka.bootstrap_servers, rd_kafka_err2str(e));
        result = SC_EXIT_USAGE;
        goto out;
    }
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errsize, "could not query the offsets of %s[%d] at %s: %s", topic,
                 (int)partition, cfg->kafka.bootstrap_servers, rd_kafka_err2str(e));
        goto out;
    }
    *offset = latest ? high : low;
    result = SC_EXIT_OK;
out:
    if (conf)
        rd_kafka_conf_destroy(conf);
    if (rk)
        rd_kafka_destroy(rk);
    return result;
}

/* The names of a list, comma-separated, for "... (configured: a, b)". */
static char *join_names(const char *const *names, size_t n)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    for (size_t i = 0; i < n; i++)
        if (sc_buf_printf(&b, "%s%s", i ? ", " : "", names[i]) != 0)
            break;
    if (sc_buf_putc(&b, '\0') != 0)
        abort();
    return b.data;
}

/* Checks --pipeline / --topic against the config; exit code and message. */
static int check_target(const struct sc_config *cfg, const char *pipeline, const char *topic,
                        const struct sc_pipeline_conf **out, char *err, size_t errsize)
{
    const struct sc_pipeline_conf *p = NULL;
    for (size_t i = 0; i < cfg->npipelines; i++)
        if (strcmp(cfg->pipelines[i].name, pipeline) == 0)
            p = &cfg->pipelines[i];
    if (!p) {
        const char **names = sc_xcalloc(cfg->npipelines + 1, sizeof(char *));
        for (size_t i = 0; i < cfg->npipelines; i++)
            names[i] = cfg->pipelines[i].name;
        char *list = join_names(names, cfg->npipelines);
        snprintf(err, errsize, "no pipeline \"%s\" in %s (configured: %s)", pipeline, cfg->path,
                 list);
        free(list);
        free(names);
        return SC_EXIT_USAGE;
    }
    for (size_t i = 0; i < p->topics.count; i++)
        if (strcmp(p->topics.items[i], topic) == 0) {
            *out = p;
            return SC_EXIT_OK;
        }
    char *list = join_names((const char *const *)p->topics.items, p->topics.count);
    snprintf(err, errsize, "pipeline \"%s\" does not consume topic \"%s\" (its topics: %s)",
             pipeline, topic, list);
    free(list);
    return SC_EXIT_USAGE;
}

/* A value or "none" for NULL. */
static const char *or_none(PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? "none" : PQgetvalue(res, row, col);
}

/* Rolls back (if a transaction is open) and closes. */
static void finish(PGconn *conn)
{
    if (conn && PQtransactionStatus(conn) != PQTRANS_IDLE)
        PQclear(PQexec(conn, "ROLLBACK"));
    PQfinish(conn);
}

static bool ok(const PGresult *res, ExecStatusType want)
{
    return res && PQresultStatus(res) == want;
}

/* The server's message, and its hint; a refused reset (live lease) also names --force. */
static void report_reset_error(PGconn *conn, const PGresult *res)
{
    char msg[1024];
    sc_pg_errmsg(conn, res, msg, sizeof(msg));
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *hint = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_HINT) : NULL;
    fprintf(stderr, "sidecar reset: %s\n", msg);
    if (state && strcmp(state, "55P03") == 0)
        fprintf(stderr, "hint: %s\n      (with sidecar reset: pass --force to reset it anyway)\n",
                hint ? hint : "stop that instance first");
    else if (hint)
        fprintf(stderr, "hint: %s\n", hint);
    else if (state && (strcmp(state, "42P01") == 0 || strcmp(state, "42883") == 0 ||
                       strcmp(state, "3F000") == 0))
        fprintf(stderr, "hint: is the schema migrated? run `sidecar migrate`\n");
}

static int run_reset(const struct sc_config *cfg, const struct sc_cli *cli)
{
    const char *pipeline = cli->pipeline, *topic = cli->topic, *partition = cli->partition;
    const char *to_offset = cli->to_offset;
    bool force = cli->force;
    int result = SC_EXIT_USAGE;
    char err[1024];
    char *schema_q = sc_pg_quote_ident(cfg->postgres.schema);
    char *before_sql = NULL, *reset_sql = NULL, *event_sql = NULL;
    PGconn *conn = NULL;
    PGresult *step = NULL, *before = NULL, *reset = NULL, *ev = NULL;
    const struct sc_pipeline_conf *p = NULL;
    int64_t part = -1, offset = -1;
    const char *how = "";

    const char *missing = !pipeline    ? "--pipeline P"
                          : !topic     ? "--topic T"
                          : !partition ? "--partition N"
                          : !to_offset ? "--to-offset X|earliest|latest"
                                       : NULL;
    if (missing) {
        fprintf(stderr, "sidecar reset: %s is required\nTry 'sidecar reset --help'.\n", missing);
        goto out;
    }
    if (sc_parse_i64(partition, &part) != 0 || part < 0 || part > INT32_MAX) {
        fprintf(stderr, "sidecar reset: --partition \"%s\": expected a partition number >= 0\n",
                partition);
        goto out;
    }
    bool earliest = strcmp(to_offset, "earliest") == 0, latest = strcmp(to_offset, "latest") == 0;
    if (!earliest && !latest && (sc_parse_i64(to_offset, &offset) != 0 || offset < 0)) {
        fprintf(stderr,
                "sidecar reset: --to-offset \"%s\": expected an offset >= 0, earliest or latest\n",
                to_offset);
        goto out;
    }
    if (check_target(cfg, pipeline, topic, &p, err, sizeof(err)) != SC_EXIT_OK) {
        fprintf(stderr, "sidecar reset: %s\n", err);
        goto out;
    }
    if (earliest || latest) {
        result = resolve_offset(cfg, p, topic, (int32_t)part, latest, &offset, err, sizeof(err));
        if (result != SC_EXIT_OK) {
            fprintf(stderr, "sidecar reset: %s\n", err);
            goto out;
        }
        how = latest ? " (latest: the log end offset)" : " (earliest: the log start offset)";
    }

    result = SC_EXIT_FAILURE;
    conn = sc_pg_connect(cfg->postgres.dsn, "kafka-sidecar/reset", cfg->postgres.connect_timeout_ms,
                         err, sizeof(err));
    if (!conn) {
        fprintf(stderr, "sidecar reset: %s\n", err);
        goto out;
    }
    char off[24], pn[16];
    snprintf(off, sizeof(off), "%" PRId64, offset);
    snprintf(pn, sizeof(pn), "%" PRId64, part);
    const char *params[] = {pipeline, topic, pn, off, force ? "true" : "false"};
    before_sql = sc_pg_with_schema("SELECT pending_first_offset, pending_last_offset, state, error"
                                   "  FROM {S}.checkpoints"
                                   " WHERE pipeline = $1 AND topic = $2 AND partition = $3::int",
                                   schema_q);
    reset_sql =
        sc_pg_with_schema("SELECT committed_offset, committed_write_offset"
                          "  FROM {S}.reset_checkpoint($1, $2, $3::int, $4::bigint, $5::boolean)",
                          schema_q);
    /* The function's own event: the previous committed offset, read under its row lock. */
    event_sql = sc_pg_with_schema("SELECT id, detail->>'previous_committed_offset' FROM {S}.events"
                                  " WHERE xid = pg_current_xact_id() AND kind = 'reset'"
                                  " ORDER BY id DESC LIMIT 1",
                                  schema_q);

    /* One transaction: the row before (for the report), the reset, and the event it wrote. */
    step = PQexec(conn, "BEGIN");
    if (!ok(step, PGRES_COMMAND_OK))
        goto failed;
    PQclear(step);
    step = NULL;
    before = PQexecParams(conn, before_sql, 3, NULL, params, NULL, NULL, 0);
    if (!ok(before, PGRES_TUPLES_OK)) {
        step = before, before = NULL;
        goto failed;
    }
    reset = PQexecParams(conn, reset_sql, 5, NULL, params, NULL, NULL, 0);
    if (!ok(reset, PGRES_TUPLES_OK) || PQntuples(reset) != 1) {
        step = reset, reset = NULL;
        goto failed;
    }
    ev = PQexec(conn, event_sql);
    if (!ok(ev, PGRES_TUPLES_OK) || PQntuples(ev) != 1) {
        step = ev, ev = NULL;
        goto failed;
    }
    step = PQexec(conn, "COMMIT");
    if (!ok(step, PGRES_COMMAND_OK))
        goto failed;

    printf("reset pipeline %s, %s[%s]: committed offset %s -> %s%s\n", pipeline, topic, pn,
           or_none(ev, 0, 1), PQgetvalue(reset, 0, 0), how);
    if (PQntuples(before) == 1) {
        if (!PQgetisnull(before, 0, 0))
            printf("  dropped the pending batch %s..%s (it will not be replayed)\n",
                   PQgetvalue(before, 0, 0), PQgetvalue(before, 0, 1));
        if (strcmp(PQgetvalue(before, 0, 2), "error") == 0)
            printf("  cleared the error state (was: %s)\n", or_none(before, 0, 3));
    }
    printf("  the sink continues at committed_write_offset %s\n", PQgetvalue(reset, 0, 1));
    printf("  event %s (kind reset); a running owner picks the change up without a restart\n",
           PQgetvalue(ev, 0, 0));
    fflush(stdout);
    result = SC_EXIT_OK;
    goto out;
failed:
    report_reset_error(conn, step);
out:
    PQclear(step);
    PQclear(before);
    PQclear(reset);
    PQclear(ev);
    finish(conn);
    free(before_sql);
    free(reset_sql);
    free(event_sql);
    free(schema_q);
    return result;
}

const struct sc_command sc_cmd_reset = {
    .name = "reset",
    .summary = "Move a partition's checkpoint (clears an error state).",
    .usage = "-c FILE --pipeline P --topic T --partition N --to-offset X|earliest|latest [--force]",
    .help = "Sets the partition's committed offset (the next offset to deliver) to X, or\n"
            "to Kafka's earliest (log start) or latest (log end) offset; drops a pending\n"
            "batch (it is not replayed), clears the error state and writes a 'reset'\n"
            "event.  Same as SELECT * FROM <schema>.reset_checkpoint(...) in psql.\n"
            "Refuses (exit 1) while another instance holds a live lease on the partition\n"
            "unless --force is given; a running owner picks the change up by itself.\n"
            "\n"
            "Output already written stays; delivery continues from X at the sink's\n"
            "committed_write_offset, so moving back re-delivers records:\n"
            "  file:     bytes already written stay; new output continues at\n"
            "            committed_write_offset (moving back appends the records again).\n"
            "  http:     re-sent batches carry the same Idempotency-Key for the same\n"
            "            offsets, so a de-duplicating receiver ignores re-sent ranges\n"
            "            (batch boundaries can differ: de-duplicate by offset to be safe).\n"
            "  postgres: re-delivered rows hit existing keys: with mode insert they become\n"
            "            dead letters; use upsert or insert_ignore, or delete the rows first.\n"
            "  stdout:   printed again.\n"
            "Moving forward skips records: they are never delivered.\n",
    .options = "c pipeline topic partition to-offset force",
    .run = run_reset,
};
