/*
 * cmd_retry.c - `sidecar retry`: takes a partition, or every errored
 * partition of a pipeline, out of the error state, keeping its position
 * and its pending batch.
 *
 * For errors whose cause an operator fixed outside the sidecar (a wrong
 * URL, a missing table or column, a full disk that was not retried): the
 * owner re-reads the row, replays the pending batch to the recorded write
 * offset and goes on.  It is <schema>.retry_partition() /
 * <schema>.retry_errored() in SQL, so psql users get the same; the
 * command reports what changed.
 */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "base/sc_util.h"
#include "cli/cli_target.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "db/sc_pg.h"

/* Prints one retried row: pipeline, topic, partition, pending first, pending last. */
static void print_row(PGresult *res, int r, const char *old_error)
{
    printf("retried pipeline %s, %s[%s]: cleared the error state (was: %s)\n",
           PQgetvalue(res, r, 0), PQgetvalue(res, r, 1), PQgetvalue(res, r, 2),
           old_error ? old_error : "?");
    if (!PQgetisnull(res, r, 3))
        printf("  the pending batch %s..%s is kept: the owner replays it first\n",
               PQgetvalue(res, r, 3), PQgetvalue(res, r, 4));
    else
        printf("  delivery continues at offset %s\n",
               PQgetisnull(res, r, 5) ? "(start_from)" : PQgetvalue(res, r, 5));
}

static int run_retry(const struct sc_config *cfg, const struct sc_cli *cli)
{
    int result = SC_EXIT_USAGE;
    char err[1024];
    char *schema_q = sc_pg_quote_ident(cfg->postgres.schema);
    char *errors_sql = NULL, *retry_sql = NULL;
    PGconn *conn = NULL;
    PGresult *errors = NULL, *res = NULL;
    const struct sc_pipeline_conf *p = NULL;
    int64_t part = -1;

    bool one = cli->topic || cli->partition;
    if (!cli->pipeline || (one && (!cli->topic || !cli->partition)) ||
        (!one && !cli->all_errored) || (one && cli->all_errored)) {
        fprintf(stderr, "sidecar retry: give --pipeline P and either --topic T --partition N or "
                        "--all-errored\nTry 'sidecar retry --help'.\n");
        goto out;
    }
    if (one && (sc_parse_i64(cli->partition, &part) != 0 || part < 0 || part > INT32_MAX)) {
        fprintf(stderr, "sidecar retry: --partition \"%s\": expected a partition number >= 0\n",
                cli->partition);
        goto out;
    }
    if (cli_find_target(cfg, cli->pipeline, cli->topic, &p, err, sizeof(err)) != SC_EXIT_OK) {
        fprintf(stderr, "sidecar retry: %s\n", err);
        goto out;
    }

    result = SC_EXIT_FAILURE;
    conn = sc_pg_connect(cfg->postgres.dsn, "kafka-sidecar/retry", cfg->postgres.connect_timeout_ms,
                         err, sizeof(err));
    if (!conn) {
        fprintf(stderr, "sidecar retry: %s\n", err);
        goto out;
    }
    char pn[16];
    snprintf(pn, sizeof(pn), "%" PRId64, part);
    const char *params[] = {cli->pipeline, cli->topic, pn};
    /* The errors being cleared, for the report (the function's rows no longer have them). */
    errors_sql =
        sc_pg_with_schema("SELECT topic, partition, error FROM {S}.checkpoints"
                          " WHERE pipeline = $1 AND state = 'error'"
                          "   AND ($2::text IS NULL OR (topic = $2 AND partition = $3::int))",
                          schema_q);
    retry_sql = sc_pg_with_schema(
        one ? "SELECT pipeline, topic, partition, pending_first_offset, pending_last_offset,"
              "       committed_offset FROM {S}.retry_partition($1, $2, $3::int)"
            : "SELECT pipeline, topic, partition, pending_first_offset, pending_last_offset,"
              "       committed_offset FROM {S}.retry_errored($1)",
        schema_q);
    PQclear(PQexec(conn, "BEGIN"));
    errors = PQexecParams(conn, errors_sql, 3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(errors) != PGRES_TUPLES_OK) {
        res = errors, errors = NULL;
        goto failed;
    }
    res = PQexecParams(conn, retry_sql, one ? 3 : 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        goto failed;
    PGresult *commit = PQexec(conn, "COMMIT");
    bool committed = PQresultStatus(commit) == PGRES_COMMAND_OK;
    PQclear(commit);
    if (!committed) {
        PQclear(res);
        res = NULL;
        goto failed;
    }
    if (PQntuples(res) == 0)
        printf("no partition of pipeline %s is in the error state: nothing to retry\n",
               cli->pipeline);
    for (int r = 0; r < PQntuples(res); r++) {
        const char *old = NULL;
        for (int e = 0; e < PQntuples(errors); e++)
            if (strcmp(PQgetvalue(errors, e, 0), PQgetvalue(res, r, 1)) == 0 &&
                strcmp(PQgetvalue(errors, e, 1), PQgetvalue(res, r, 2)) == 0)
                old = PQgetvalue(errors, e, 2);
        print_row(res, r, old);
    }
    if (PQntuples(res) > 0)
        printf("  a running owner picks the change up without a restart and reopens its sink\n");
    fflush(stdout);
    result = SC_EXIT_OK;
    goto out;
failed : {
    char msg[1024];
    sc_pg_errmsg(conn, res, msg, sizeof(msg));
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *hint = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_HINT) : NULL;
    fprintf(stderr, "sidecar retry: %s\n", msg);
    if (hint)
        fprintf(stderr, "hint: %s\n", hint);
    else if (state && (strcmp(state, "42P01") == 0 || strcmp(state, "42883") == 0 ||
                       strcmp(state, "3F000") == 0))
        fprintf(stderr, "hint: is the schema migrated? run `sidecar migrate`\n");
    if (state && strcmp(state, "42704") == 0)
        result = SC_EXIT_USAGE;
}
out:
    PQclear(errors);
    PQclear(res);
    if (conn && PQtransactionStatus(conn) != PQTRANS_IDLE)
        PQclear(PQexec(conn, "ROLLBACK"));
    PQfinish(conn);
    free(errors_sql);
    free(retry_sql);
    free(schema_q);
    return result;
}

const struct sc_command sc_cmd_retry = {
    .name = "retry",
    .summary = "Take errored partitions out of the error state, keeping their pending batch.",
    .usage = "-c FILE --pipeline P (--topic T --partition N | --all-errored)",
    .help = "After fixing what put a partition in the error state (a wrong URL or token,\n"
            "a missing table, column or unique index), clears the error while keeping the\n"
            "position and the pending batch: the owner replays that batch to the same\n"
            "place, then goes on.  --all-errored does it for every errored partition of\n"
            "the pipeline.  Same as SELECT * FROM <schema>.retry_partition(P, T, N) or\n"
            "<schema>.retry_errored(P) in psql.  A running owner picks the change up by\n"
            "itself; a restarted one starts with it.\n"
            "\n"
            "To drop the pending batch or move the position instead: sidecar reset.\n"
            "Exit 0 also when nothing was in the error state (--all-errored); 1 when the\n"
            "named partition is not in the error state; 2 for an unknown pipeline, topic\n"
            "or partition.\n",
    .options = "c pipeline topic partition all-errored",
    .run = run_retry,
};
