/*
 * cmd_redrive.c - `sidecar redrive -c FILE --pipeline P [--id N]`: sends
 * a pipeline's dead letters through its sink again (see sc_deadletter.h).
 *
 * The command reads the rows with status 'new' (or the one --id) in pages
 * of PAGE_ROWS by id, rebuilds each record, hands a page to the sink's
 * redrive callback (each record goes out alone) and then updates each row:
 * delivered -> status 'redriven', redriven_at now(), attempts + 1; failed ->
 * attempts + 1 and the new error.  No transaction is held while the sink
 * works: each update is conditional on the row still having the status and
 * attempts we read, so a row the sidecar dead-lettered again in the
 * meantime (a replay bumps attempts) or another redrive touched is left as
 * it is and reported.  Sending a record twice (two redrives at once, or a
 * crash between the send and the update) is harmless: the request carries
 * the same Idempotency-Key every time.
 *
 * Exit codes: 0 all delivered (or nothing to do), 1 some failed or
 * PostgreSQL / the sink could not be reached, 2 usage (unknown pipeline,
 * bad --id, a sink that cannot redrive).
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "admin/sc_deadletter.h"
#include "base/sc_util.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "record/sc_decode.h"
#include "db/sc_pg.h"
#include "sinks/sc_sink.h"

#define PAGE_ROWS   20    /* records per redrive call: small, so progress is saved often */
#define MAX_LISTED  20    /* failures listed one per line in the summary */
#define FAILURE_MAX 65536 /* bytes of failure lines kept for the summary */
#define STR_(x)     #x
#define STR(x)      STR_(x)

struct redrive {
    const struct sc_pipeline_conf *pc;
    PGconn *conn;
    char *schema_q;
    struct sc_sink *sink;
    struct sc_registry *registry; /* value_format / key_format avro */
    long seen, delivered, failed;
    size_t listed;
    struct sc_buf failures; /* "  id N (topic[p] offset o): error\n" lines */
};

static void note_failure(struct redrive *r, int64_t id, const char *topic, int32_t partition,
                         int64_t offset, const char *error)
{
    r->failed++;
    if (r->listed++ >= MAX_LISTED)
        return;
    size_t before = r->failures.len;
    if (sc_buf_printf(&r->failures, "  id %" PRId64 " (%s[%d] offset %" PRId64 "): %s\n", id, topic,
                      (int)partition, offset, error) < 0)
        r->failures.len = before; /* the buffer is bounded: a line that does not fit is dropped */
}

/* Replaces each {S} of sql with the quoted schema; malloc'd. */
static char *expand_schema(const char *sql, const char *schema_q)
{
    size_t n = 0, sl = strlen(schema_q);
    for (const char *p = sql; (p = strstr(p, "{S}")) != NULL; p += 3)
        n++;
    char *out = sc_xmalloc(strlen(sql) + n * sl + 1), *o = out;
    for (const char *p = sql; *p;) {
        if (strncmp(p, "{S}", 3) == 0) {
            memcpy(o, schema_q, sl);
            o += sl;
            p += 3;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

/* Runs sql ({S} = the schema); NULL (message printed) unless the result has status want. */
static PGresult *query(struct redrive *r, const char *sql_tmpl, int nparams,
                       const char *const *params, ExecStatusType want)
{
    char *sql = expand_schema(sql_tmpl, r->schema_q);
    PGresult *res = PQexecParams(r->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    free(sql);
    if (PQresultStatus(res) == want)
        return res;
    char msg[512];
    fprintf(stderr, "sidecar redrive: %s\n", sc_pg_errmsg(r->conn, res, msg, sizeof(msg)));
    PQclear(res);
    return NULL;
}

/*
 * Marks a row after a redrive attempt, if it is still as we read it.
 * Returns 1 when updated, 0 when the row changed meanwhile, -1 on an error.
 */
static int mark(struct redrive *r, const char *id, const char *attempts, const char *error)
{
    static const char ok_sql[] =
        "UPDATE {S}.dead_letters SET status = 'redriven', redriven_at = now(),"
        " attempts = attempts + 1 WHERE id = $1::bigint AND status = 'new'"
        " AND attempts = $2::int";
    static const char fail_sql[] =
        "UPDATE {S}.dead_letters SET attempts = attempts + 1, error = $3"
        " WHERE id = $1::bigint AND status = 'new' AND attempts = $2::int";
    const char *params[] = {id, attempts, error};
    PGresult *res = query(r, error ? fail_sql : ok_sql, error ? 3 : 2, params, PGRES_COMMAND_OK);
    if (!res)
        return -1;
    int64_t n = 0;
    (void)sc_parse_i64(PQcmdTuples(res), &n);
    PQclear(res);
    return n > 0 ? 1 : 0;
}

/*
 * Redrives one page of rows with id > *last_id (only id one_id when set).
 * Returns the number of rows read (0: done), or -1 when the command must
 * stop (PostgreSQL or the sink unreachable; the message is printed).
 */
static int redrive_page(struct redrive *r, int64_t *last_id, const char *one_id)
{
    static const char page_sql[] =
        "SELECT id, topic, partition, \"offset\", envelope::text, key, value, attempts"
        " FROM {S}.dead_letters WHERE pipeline = $1 AND status = 'new' AND id > $2::bigint"
        " AND ($3::bigint IS NULL OR id = $3::bigint) ORDER BY id LIMIT " STR(PAGE_ROWS);
    char after[24];
    snprintf(after, sizeof(after), "%" PRId64, *last_id);
    const char *params[] = {r->pc->name, after, one_id};
    PGresult *res = query(r, page_sql, 3, params, PGRES_TUPLES_OK);
    if (!res)
        return -1;
    int rows = PQntuples(res), rc = rows;
    struct sc_dead_record recs[PAGE_ROWS];
    struct sc_record views[PAGE_ROWS];
    int row_of[PAGE_ROWS]; /* recs[i] came from row row_of[i] */
    bool ok[PAGE_ROWS] = {false};
    char *errors[PAGE_ROWS] = {NULL};
    size_t n = 0;
    for (int i = 0; i < rows; i++) {
        int64_t id = 0, offset = 0;
        (void)sc_parse_i64(PQgetvalue(res, i, 0), &id);
        (void)sc_parse_i64(PQgetvalue(res, i, 3), &offset);
        *last_id = id;
        const char *topic = PQgetvalue(res, i, 1);
        int32_t partition = (int32_t)strtol(PQgetvalue(res, i, 2), NULL, 10);
        size_t klen = 0, vlen = 0;
        unsigned char *key =
            PQgetisnull(res, i, 5)
                ? NULL
                : PQunescapeBytea((const unsigned char *)PQgetvalue(res, i, 5), &klen);
        unsigned char *value =
            PQgetisnull(res, i, 6)
                ? NULL
                : PQunescapeBytea((const unsigned char *)PQgetvalue(res, i, 6), &vlen);
        char err[256];
        r->seen++;
        enum sc_decode_status st = SC_DECODE_OK;
        if (sc_dead_record_build(&recs[n], topic, partition, offset, PQgetvalue(res, i, 4), key,
                                 klen, value, vlen, err, sizeof(err)) != 0) {
            note_failure(r, id, topic, partition, offset, err);
        } else if ((st = sc_decode_record(r->registry, &r->pc->formats, &recs[n].rec, err,
                                          sizeof(err))) != SC_DECODE_OK) {
            /* Framed formats are decoded again, as the worker did (docs/schema-registry.md). */
            sc_dead_record_free(&recs[n]);
            if (st == SC_DECODE_BAD) {
                note_failure(r, id, topic, partition, offset, err);
            } else { /* the registry cannot answer: send nothing of this page */
                fprintf(stderr, "sidecar redrive: %s\n", err);
                for (size_t j = 0; j < n; j++) {
                    sc_decode_record_free(&recs[j].rec);
                    sc_dead_record_free(&recs[j]);
                }
                n = 0;
                rc = -1;
                PQfreemem(key);
                PQfreemem(value);
                break;
            }
        } else {
            views[n] = recs[n].rec;
            row_of[n++] = i;
        }
        PQfreemem(key);
        PQfreemem(value);
    }

    char err[512] = "";
    enum sc_sink_result sr =
        n > 0 ? r->sink->type->redrive(r->sink, views, n, ok, errors, err, sizeof(err))
              : SC_SINK_OK;
    for (size_t i = 0; i < n; i++) {
        int row = row_of[i];
        const char *id = PQgetvalue(res, row, 0);
        int64_t idv = 0;
        (void)sc_parse_i64(id, &idv);
        const struct sc_record *rec = &views[i];
        if (!ok[i] && !errors[i])
            continue; /* not attempted: the sink stopped before it */
        char *stored = errors[i] ? sc_xasprintf("redrive: %s", errors[i]) : NULL;
        int m = rc < 0 ? -1 : mark(r, id, PQgetvalue(res, row, 7), stored);
        free(stored);
        if (m < 0) {
            rc = -1; /* PostgreSQL went away: the rest of the page stays as it was */
            note_failure(r, idv, rec->topic, rec->partition, rec->offset,
                         ok[i] ? "delivered, but could not be marked redriven (a later redrive "
                                 "sends it again under the same Idempotency-Key)"
                               : errors[i]);
        } else if (m == 0) {
            note_failure(r, idv, rec->topic, rec->partition, rec->offset,
                         "the row changed while it was being redriven (the sidecar "
                         "dead-lettered it again, or another redrive ran): left as it is");
        } else if (ok[i]) {
            r->delivered++;
        } else {
            note_failure(r, idv, rec->topic, rec->partition, rec->offset, errors[i]);
        }
    }
    if (sr != SC_SINK_OK) {
        fprintf(stderr, "sidecar redrive: the sink could not be reached: %s\n", err);
        rc = -1;
    }
    for (size_t i = 0; i < n; i++) {
        free(errors[i]);
        sc_decode_record_free(&recs[i].rec);
        sc_dead_record_free(&recs[i]);
    }
    PQclear(res);
    return rc;
}

static const struct sc_pipeline_conf *find_pipeline(const struct sc_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->npipelines; i++)
        if (strcmp(cfg->pipelines[i].name, name) == 0)
            return &cfg->pipelines[i];
    return NULL;
}

static void print_pipelines(const struct sc_config *cfg)
{
    fprintf(stderr, "configured pipelines:");
    for (size_t i = 0; i < cfg->npipelines; i++)
        fprintf(stderr, "%s %s", i ? "," : "", cfg->pipelines[i].name);
    fputc('\n', stderr);
}

/*
 * --id N: says why there is nothing to do for a row that is not 'new'.
 * Returns -1 to go on, else an exit code.
 */
static int check_one(struct redrive *r, const char *id)
{
    static const char sql[] = "SELECT status, coalesce(redriven_at::text, '') FROM {S}.dead_letters"
                              " WHERE id = $1::bigint AND pipeline = $2";
    const char *params[] = {id, r->pc->name};
    PGresult *res = query(r, sql, 2, params, PGRES_TUPLES_OK);
    if (!res)
        return SC_EXIT_FAILURE;
    int rc = -1;
    if (PQntuples(res) == 0) {
        fprintf(stderr, "sidecar redrive: no dead letter with id %s in pipeline \"%s\"\n", id,
                r->pc->name);
        rc = SC_EXIT_USAGE;
    } else if (strcmp(PQgetvalue(res, 0, 0), "new") != 0) {
        const char *at = PQgetvalue(res, 0, 1);
        printf("dead letter %s is '%s'%s%s%s, not 'new': nothing to redrive (set status = 'new' "
               "to send it again)\n",
               id, PQgetvalue(res, 0, 0), *at ? " (at " : "", at, *at ? ")" : "");
        rc = SC_EXIT_OK;
    }
    PQclear(res);
    return rc;
}

static int run_redrive(const struct sc_config *cfg, const struct sc_cli *cli)
{
    const char *pipeline = cli->pipeline, *id = cli->id;
    struct redrive r = {0};
    sc_buf_init(&r.failures, FAILURE_MAX);
    int rc = SC_EXIT_USAGE;
    char err[1024];
    if (!pipeline) {
        fprintf(stderr, "sidecar redrive: --pipeline is required\n");
        print_pipelines(cfg);
        goto out;
    }
    r.pc = find_pipeline(cfg, pipeline);
    if (!r.pc) {
        fprintf(stderr, "sidecar redrive: unknown pipeline \"%s\" (not in %s); ", pipeline,
                cfg->path);
        print_pipelines(cfg);
        goto out;
    }
    int64_t idv = 0;
    if (id && (sc_parse_i64(id, &idv) != 0 || idv <= 0)) {
        fprintf(stderr,
                "sidecar redrive: --id must be a dead_letters id (a positive integer), "
                "got \"%s\"\n",
                id);
        goto out;
    }
    const struct sc_sink_class *type = sc_sink_class_of(&r.pc->sink);
    if (!type || !type->redrive) {
        fprintf(stderr,
                "sidecar redrive: pipeline \"%s\" delivers to the %s sink, which cannot re-send "
                "dead letters; inspect them with SQL: SELECT id, topic, partition, \"offset\", "
                "error FROM %s.dead_letters WHERE pipeline = '%s' AND status = 'new'\n",
                pipeline, type ? type->conf.name : "unknown", cfg->postgres.schema, pipeline);
        goto out;
    }

    rc = SC_EXIT_FAILURE;
    /* As in `sidecar run`: a peer closing a TLS connection must not kill the command. */
    signal(SIGPIPE, SIG_IGN);
    r.conn = sc_pg_connect(cfg->postgres.dsn, "kafka-sidecar/redrive",
                           cfg->postgres.connect_timeout_ms, err, sizeof(err));
    if (!r.conn) {
        fprintf(stderr, "sidecar redrive: %s\n", err);
        goto out;
    }
    r.schema_q = sc_pg_quote_ident(cfg->postgres.schema);
    if (id) {
        int c = check_one(&r, id);
        if (c >= 0) {
            rc = c;
            goto out;
        }
    }
    if (r.pc->formats.value == SC_VALUE_AVRO || r.pc->formats.key == SC_VALUE_AVRO) {
        r.registry = sc_registry_acquire(r.pc->registry, err, sizeof(err));
        if (!r.registry) {
            fprintf(stderr, "sidecar redrive: %s\n", err);
            goto out;
        }
    }
    r.sink = sc_sink_new(cfg, r.pc, 0, err, sizeof(err));
    if (!r.sink) {
        fprintf(stderr, "sidecar redrive: could not create the %s sink: %s\n", type->conf.name,
                err);
        goto out;
    }

    int64_t last_id = 0;
    int got;
    while ((got = redrive_page(&r, &last_id, id)) > 0)
        ;
    if (got < 0 && r.seen == 0)
        goto out; /* the reason is printed */
    if (r.seen == 0 && got == 0) {
        printf("no dead letters with status 'new' in pipeline \"%s\": nothing to redrive\n",
               pipeline);
        rc = SC_EXIT_OK;
        goto out;
    }
    printf("redrove %ld of %ld dead letter%s of pipeline \"%s\"", r.delivered, r.seen,
           r.seen == 1 ? "" : "s", pipeline);
    if (r.failed > 0)
        printf("; %ld still failing:\n%.*s%s", r.failed, (int)r.failures.len,
               r.failures.data ? r.failures.data : "",
               r.listed > MAX_LISTED ? "  ... (see the error column of dead_letters)\n" : "");
    else
        printf("\n");
    if (got < 0)
        printf("stopped early: the rows not reached are unchanged; run redrive again\n");
    rc = got == 0 && r.failed == 0 ? SC_EXIT_OK : SC_EXIT_FAILURE;
out:
    sc_sink_free(r.sink);
    sc_registry_release(r.registry);
    free(r.schema_q);
    if (r.conn)
        PQfinish(r.conn);
    sc_buf_free(&r.failures);
    return rc;
}

const struct sc_command sc_cmd_redrive = {
    .name = "redrive",
    .summary = "Re-send dead-lettered records through the pipeline's sink.",
    .usage = "-c FILE --pipeline P [--id N]",
    .help = "Sends the pipeline's dead letters with status 'new' (or only --id N) again,\n"
            "each record alone under its own Idempotency-Key, and marks the delivered ones\n"
            "status 'redriven'.  Failures stay 'new' with attempts + 1 and the new error.\n"
            "Exit 0 when all went through, 1 when some failed or a server was unreachable.\n",
    .options = "c pipeline id",
    .run = run_redrive,
};
