/*
 * cmd_reset.c - `sidecar reset`: moves a partition's checkpoint.
 *
 * reset goes through the SQL function <schema>.reset_checkpoint() so the
 * command line and psql share one implementation: it refuses an unknown
 * pipeline or partition (it never creates a row), an offset outside the log
 * and, unless forced, a live lease (SQLSTATE 55P03); it drops the pending
 * batch, clears the error state, optionally sets the write offset, writes a
 * 'reset' event and bumps control_seq, which is how a running owner notices
 * the change.  The command first asks Kafka: the topic's partitions, the
 * partition's log start and end (which resolve earliest / latest and bound
 * the offset), and stores that as a fresh watermark sample in the same
 * transaction, so the function checks against what Kafka just said.
 */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "base/sc_log.h"
#include "base/sc_util.h"
#include "cli/cli_kafka.h"
#include "cli/cli_target.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "db/sc_pg.h"

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

/*
 * The server's message and its hint; a refused reset (live lease) also
 * names --force.  Returns the exit code: 2 when the operator named
 * something that does not exist or an offset out of range, else 1.
 */
static int report_reset_error(PGconn *conn, const PGresult *res)
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
    if (state &&
        (strcmp(state, "42704") == 0 || strcmp(state, "22003") == 0 || strcmp(state, "22023") == 0))
        return SC_EXIT_USAGE;
    return SC_EXIT_FAILURE;
}

/*
 * Asks Kafka whether topic[partition] exists and where its log starts and
 * ends; resolves earliest / latest and checks a given offset against them.
 * Returns SC_EXIT_OK, SC_EXIT_USAGE (no such partition, offset outside the
 * log) or SC_EXIT_FAILURE (Kafka did not answer), with the message printed.
 */
static int check_in_kafka(const struct sc_config *cfg, const struct sc_pipeline_conf *p,
                          const char *topic, int32_t partition, const char *to_offset,
                          int64_t *offset, int64_t *log_start, int64_t *log_end)
{
    char err[1024];
    int result = SC_EXIT_FAILURE;
    rd_kafka_t *rk = cli_kafka_new(cfg, p, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "sidecar reset: %s\n", err);
        return SC_EXIT_USAGE;
    }
    int count = 0;
    enum cli_kafka_rc rc = cli_kafka_partitions(rk, topic, 10000, &count, err, sizeof(err));
    if (rc == CLI_KAFKA_OK && partition >= count) {
        snprintf(err, sizeof(err),
                 "topic \"%s\" has %d partition%s (0..%d): there is no partition %d", topic, count,
                 count == 1 ? "" : "s", count - 1, (int)partition);
        rc = CLI_KAFKA_NOT_FOUND;
    }
    if (rc == CLI_KAFKA_OK)
        rc = cli_kafka_log_range(rk, topic, partition, 10000, log_start, log_end, err, sizeof(err));
    if (rc != CLI_KAFKA_OK) {
        fprintf(stderr, "sidecar reset: %s (Kafka at %s)\n", err, cfg->kafka.bootstrap_servers);
        if (rc == CLI_KAFKA_FAILED)
            fprintf(stderr, "hint: the reset is checked against Kafka first; without Kafka, "
                            "<schema>.reset_checkpoint() in psql checks against the last "
                            "watermark sample\n");
        result = rc == CLI_KAFKA_NOT_FOUND ? SC_EXIT_USAGE : SC_EXIT_FAILURE;
        goto out;
    }
    if (strcmp(to_offset, "earliest") == 0)
        *offset = *log_start;
    else if (strcmp(to_offset, "latest") == 0)
        *offset = *log_end;
    result = SC_EXIT_USAGE;
    if (*offset > *log_end) {
        fprintf(stderr,
                "sidecar reset: --to-offset %" PRId64 " is past the log end of %s[%d]: the next "
                "record produced gets offset %" PRId64 " (log start %" PRId64 ")\n",
                *offset, topic, (int)partition, *log_end, *log_start);
        goto out;
    }
    if (*offset < *log_start) {
        fprintf(stderr,
                "sidecar reset: --to-offset %" PRId64 " is before the log start of %s[%d]: the "
                "oldest record Kafka still has is offset %" PRId64 " (log end %" PRId64 ")\n",
                *offset, topic, (int)partition, *log_start, *log_end);
        goto out;
    }
    result = SC_EXIT_OK;
out:
    rd_kafka_destroy(rk);
    return result;
}

static int run_reset(const struct sc_config *cfg, const struct sc_cli *cli)
{
    const char *pipeline = cli->pipeline, *topic = cli->topic, *partition = cli->partition;
    const char *to_offset = cli->to_offset, *write_offset = cli->write_offset;
    bool force = cli->force;
    int result = SC_EXIT_USAGE;
    char err[1024];
    char *schema_q = sc_pg_quote_ident(cfg->postgres.schema);
    char *stats_sql = NULL, *before_sql = NULL, *reset_sql = NULL, *event_sql = NULL;
    PGconn *conn = NULL;
    PGresult *step = NULL, *before = NULL, *reset = NULL, *ev = NULL;
    const struct sc_pipeline_conf *p = NULL;
    int64_t part = -1, offset = -1, wo = -1, log_start = -1, log_end = -1;
    const char *how = "";

    const char *missing[4];
    size_t nmissing = 0;
    if (!pipeline)
        missing[nmissing++] = "--pipeline P";
    if (!topic)
        missing[nmissing++] = "--topic T";
    if (!partition)
        missing[nmissing++] = "--partition N";
    if (!to_offset)
        missing[nmissing++] = "--to-offset X|earliest|latest";
    if (nmissing) {
        fprintf(stderr, "sidecar reset: missing ");
        for (size_t i = 0; i < nmissing; i++)
            fprintf(stderr, "%s%s", i == 0 ? "" : i + 1 == nmissing ? " and " : ", ", missing[i]);
        fprintf(stderr, "\nTry 'sidecar reset --help'.\n");
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
    if (write_offset && strcmp(write_offset, "keep") != 0 &&
        (sc_parse_i64(write_offset, &wo) != 0 || wo < 0)) {
        fprintf(stderr,
                "sidecar reset: --write-offset \"%s\": expected keep or a write offset >= 0 "
                "(0: a file sink starts a new, empty file)\n",
                write_offset);
        goto out;
    }
    if (cli_find_target(cfg, pipeline, topic, &p, err, sizeof(err)) != SC_EXIT_OK) {
        fprintf(stderr, "sidecar reset: %s\n", err);
        goto out;
    }
    result = check_in_kafka(cfg, p, topic, (int32_t)part, to_offset, &offset, &log_start, &log_end);
    if (result != SC_EXIT_OK)
        goto out;
    if (earliest || latest)
        how = latest ? " (latest: the log end offset)" : " (earliest: the log start offset)";

    result = SC_EXIT_FAILURE;
    conn = sc_pg_connect(cfg->postgres.dsn, "kafka-sidecar/reset", cfg->postgres.connect_timeout_ms,
                         err, sizeof(err));
    if (!conn) {
        fprintf(stderr, "sidecar reset: %s\n", err);
        goto out;
    }
    char off[24], pn[16], lo[24], hi[24], wob[24];
    snprintf(off, sizeof(off), "%" PRId64, offset);
    snprintf(pn, sizeof(pn), "%" PRId64, part);
    snprintf(lo, sizeof(lo), "%" PRId64, log_start);
    snprintf(hi, sizeof(hi), "%" PRId64, log_end);
    snprintf(wob, sizeof(wob), "%" PRId64, wo);
    const char *params[] = {
        pipeline, topic, pn, off, force ? "true" : "false", wo >= 0 ? wob : NULL};
    const char *stats_params[] = {pipeline, topic, pn, lo, hi};
    /* What Kafka just said, for the function's range check (and for lag). */
    stats_sql = sc_pg_with_schema(
        "INSERT INTO {S}.partition_stats AS s (pipeline, topic, partition, low_watermark,"
        " high_watermark, sampled_at) VALUES ($1, $2, $3::int, $4::bigint, $5::bigint, now())"
        " ON CONFLICT (pipeline, topic, partition) DO UPDATE SET"
        " low_watermark = EXCLUDED.low_watermark, high_watermark = EXCLUDED.high_watermark,"
        " sampled_at = EXCLUDED.sampled_at",
        schema_q);
    before_sql = sc_pg_with_schema("SELECT pending_first_offset, pending_last_offset, state, error,"
                                   "       committed_write_offset"
                                   "  FROM {S}.checkpoints"
                                   " WHERE pipeline = $1 AND topic = $2 AND partition = $3::int",
                                   schema_q);
    reset_sql = sc_pg_with_schema(
        "SELECT committed_offset, committed_write_offset"
        "  FROM {S}.reset_checkpoint($1, $2, $3::int, $4::bigint, $5::boolean, $6::bigint)",
        schema_q);
    /* The function's own event: the previous committed offset, read under its row lock. */
    event_sql = sc_pg_with_schema("SELECT id, detail->>'previous_committed_offset' FROM {S}.events"
                                  " WHERE xid = pg_current_xact_id() AND kind = 'reset'"
                                  " ORDER BY id DESC LIMIT 1",
                                  schema_q);

    /* One transaction: the sample, the row before (for the report), the reset, its event. */
    step = PQexec(conn, "BEGIN");
    if (!ok(step, PGRES_COMMAND_OK))
        goto failed;
    PQclear(step);
    step = PQexecParams(conn, stats_sql, 5, NULL, stats_params, NULL, NULL, 0);
    if (!ok(step, PGRES_COMMAND_OK))
        goto failed;
    PQclear(step);
    step = NULL;
    before = PQexecParams(conn, before_sql, 3, NULL, params, NULL, NULL, 0);
    if (!ok(before, PGRES_TUPLES_OK)) {
        step = before, before = NULL;
        goto failed;
    }
    reset = PQexecParams(conn, reset_sql, 6, NULL, params, NULL, NULL, 0);
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
    bool wo_changed = false;
    if (PQntuples(before) == 1) {
        if (!PQgetisnull(before, 0, 0))
            printf("  dropped the pending batch %s..%s (it will not be replayed)\n",
                   PQgetvalue(before, 0, 0), PQgetvalue(before, 0, 1));
        if (strcmp(PQgetvalue(before, 0, 2), "error") == 0)
            printf("  cleared the error state (was: %s)\n", or_none(before, 0, 3));
        wo_changed = strcmp(PQgetvalue(before, 0, 4), PQgetvalue(reset, 0, 1)) != 0;
    }
    if (wo_changed)
        printf("  the sink continues at write offset %s (was %s)\n", PQgetvalue(reset, 0, 1),
               PQgetvalue(before, 0, 4));
    else
        printf("  the sink continues at committed_write_offset %s (kept)\n",
               PQgetvalue(reset, 0, 1));
    printf("  event %s (kind reset); a running owner picks the change up without a restart and "
           "reopens its sink\n",
           PQgetvalue(ev, 0, 0));
    fflush(stdout);
    result = SC_EXIT_OK;
    goto out;
failed:
    result = report_reset_error(conn, step);
out:
    PQclear(step);
    PQclear(before);
    PQclear(reset);
    PQclear(ev);
    finish(conn);
    free(stats_sql);
    free(before_sql);
    free(reset_sql);
    free(event_sql);
    free(schema_q);
    return result;
}

const struct sc_command sc_cmd_reset = {
    .name = "reset",
    .summary = "Move a partition's checkpoint (clears an error state).",
    .usage = "-c FILE --pipeline P --topic T --partition N --to-offset X|earliest|latest\n"
             "       [--write-offset keep|N] [--force]",
    .help = "Sets the partition's committed offset (the next offset to deliver) to X, or\n"
            "to Kafka's earliest (log start) or latest (log end) offset; drops a pending\n"
            "batch (it is not replayed), clears the error state and writes a 'reset'\n"
            "event.  Same as SELECT * FROM <schema>.reset_checkpoint(...) in psql.\n"
            "Checked first (exit 2 otherwise): the pipeline and topic are configured, the\n"
            "partition exists in Kafka and has a checkpoint (reset never creates one), and\n"
            "log start <= X <= log end, as Kafka says now.\n"
            "Refuses (exit 1) while another instance holds a live lease on the partition\n"
            "unless --force is given; a running owner picks the change up by itself and\n"
            "reopens its sink (a file sink's file, for instance).\n"
            "\n"
            "--write-offset sets where the sink continues writing: keep (the default)\n"
            "continues at committed_write_offset; 0 starts over (a file sink writes a new\n"
            "file: after the file was deleted or moved away, --to-offset earliest\n"
            "--write-offset 0 delivers everything again).\n"
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
    .options = "c pipeline topic partition to-offset write-offset force",
    .run = run_reset,
};
