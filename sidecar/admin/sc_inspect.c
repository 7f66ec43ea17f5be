/*
 * sc_inspect.c - `sidecar status`, `sidecar reset` and the checkpoint
 * queries of the admin API (see sc_inspect.h).
 *
 * reset goes through the SQL function <schema>.reset_checkpoint() so the
 * command line and psql share one implementation: it refuses while another
 * instance holds a live lease (SQLSTATE 55P03) unless forced, drops the
 * pending batch, clears the error state, writes a 'reset' event and bumps
 * control_seq, which is how a running owner notices the change.  The
 * command only resolves earliest / latest from Kafka first and reports
 * what changed.
 */
#include "admin/sc_inspect.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "admin/sc_token.h"
#include "base/sc_log.h"
#include "base/sc_util.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "db/sc_pg.h"

/* ---- queries ---------------------------------------------------------------- */

static int query_failed(PGconn *conn, PGresult *res, const char *what, char *err, size_t errsize)
{
    char msg[512];
    sc_pg_errmsg(conn, res, msg, sizeof(msg));
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    bool missing = state && (strcmp(state, "42P01") == 0 || strcmp(state, "42883") == 0 ||
                             strcmp(state, "3F000") == 0);
    snprintf(err, errsize, "%s: %s%s", what, msg,
             missing ? " (is the schema migrated? run `sidecar migrate`)" : "");
    return sc_pg_classify(conn, res) == SC_PG_RETRY ? SC_INSPECT_RETRY : SC_INSPECT_FAILED;
}

static const char status_sql[] =
    "SELECT row_to_json(s)::text FROM ("
    "  SELECT pipeline, topic, partition, owner, epoch, lease_live, lease_expires_at,"
    "         committed_offset, committed_write_offset, pending_first_offset,"
    "         pending_last_offset, pending_count,"
    "         extract(epoch FROM pending_age)::float8 AS pending_age_seconds,"
    "         high_watermark, lag, stats_sampled_at, state, paused, error, updated_at"
    "    FROM {S}.partition_status"
    "   ORDER BY pipeline, topic, partition) s";

/* Runs sql (with {S} for the schema) and collects its one JSON column into an array. */
static int json_rows(PGconn *conn, const char *fmt, const char *schema_q, int nparams,
                     const char *const *params, json_t *arr, int *nrows, char *err, size_t errsize)
{
    int rc = SC_INSPECT_FAILED;
    char *sql = sc_pg_with_schema(fmt, schema_q);
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = query_failed(conn, res, "could not read the checkpoints", err, errsize);
        goto out;
    }
    for (int r = 0; r < PQntuples(res); r++) {
        json_error_t jerr;
        json_t *row = json_loads(PQgetvalue(res, r, 0), 0, &jerr);
        if (!json_is_object(row)) {
            json_decref(row);
            snprintf(err, errsize, "unexpected row from the server: %s", jerr.text);
            goto out;
        }
        json_array_append_new(arr, row);
    }
    *nrows = PQntuples(res);
    rc = SC_INSPECT_OK;
out:
    PQclear(res);
    free(sql);
    return rc;
}

int sc_inspect_status(PGconn *conn, const char *schema_q, json_t **out, char *err, size_t errsize)
{
    json_t *arr = json_array();
    int n;
    int rc = json_rows(conn, status_sql, schema_q, 0, NULL, arr, &n, err, errsize);
    if (rc != SC_INSPECT_OK) {
        json_decref(arr);
        return rc;
    }
    *out = arr;
    return SC_INSPECT_OK;
}

/*
 * Keyset pagination: the page token holds the last key of the previous
 * page, and the next page is "(pipeline, topic, partition) > that key"
 * served by the primary key index.  Unlike OFFSET it neither skips nor
 * repeats rows when checkpoints are added or removed between pages.
 */
static const char page_sql[] =
    "SELECT row_to_json(c)::text, c.pipeline, c.topic, c.partition"
    "  FROM {S}.checkpoints c"
    " WHERE $1::text IS NULL OR (c.pipeline, c.topic, c.partition) > ($1, $2, $3::int)"
    " ORDER BY c.pipeline, c.topic, c.partition"
    " LIMIT $4::int";

static int page_token_parse(const char *token, char **pipeline, char **topic, char *part,
                            size_t partsize, char *err, size_t errsize)
{
    json_t *o = sc_token_decode(token, "page token", err, errsize);
    if (!o)
        return -1;
    const char *k = NULL, *p = NULL, *t = NULL;
    json_int_t n = -1;
    int rc = -1;
    if (json_object_size(o) != 4 ||
        json_unpack(o, "{s:s,s:s,s:s,s:I}", "k", &k, "p", &p, "t", &t, "n", &n) != 0 ||
        strcmp(k, "checkpoints") != 0 || n < 0 || n > INT32_MAX) {
        snprintf(err, errsize, "malformed page token (not a /v1/checkpoints page token)");
        goto out;
    }
    *pipeline = sc_xstrdup(p);
    *topic = sc_xstrdup(t);
    snprintf(part, partsize, "%" JSON_INTEGER_FORMAT, n);
    rc = 0;
out:
    json_decref(o);
    return rc;
}

int sc_inspect_checkpoints_page(PGconn *conn, const char *schema_q, const char *page_token,
                                int limit, json_t **out, char *err, size_t errsize)
{
    int rc = SC_INSPECT_FAILED;
    char *pipeline = NULL, *topic = NULL;
    char part[24] = "", lim[16];
    PGresult *res = NULL;
    char *sql = NULL;
    json_t *arr = json_array();

    if (limit < 1 || limit > 1000) {
        snprintf(err, errsize, "limit %d out of range 1..1000", limit);
        goto out;
    }
    if (page_token &&
        page_token_parse(page_token, &pipeline, &topic, part, sizeof(part), err, errsize) != 0) {
        rc = SC_INSPECT_BAD_TOKEN;
        goto out;
    }
    /* One row more than the page: whether it exists says if there is a next page. */
    snprintf(lim, sizeof(lim), "%d", limit + 1);
    const char *params[] = {pipeline, topic, pipeline ? part : NULL, lim};
    sql = sc_pg_with_schema(page_sql, schema_q);
    res = PQexecParams(conn, sql, 4, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = query_failed(conn, res, "could not read the checkpoints", err, errsize);
        goto out;
    }
    int rows = PQntuples(res);
    int shown = rows > limit ? limit : rows;
    for (int r = 0; r < shown; r++) {
        json_error_t jerr;
        json_t *row = json_loads(PQgetvalue(res, r, 0), 0, &jerr);
        if (!json_is_object(row)) {
            json_decref(row);
            snprintf(err, errsize, "unexpected row from the server: %s", jerr.text);
            goto out;
        }
        json_array_append_new(arr, row);
    }
    json_t *next = json_null();
    if (rows > limit) {
        int last = limit - 1;
        json_t *key = json_pack("{s:s,s:s,s:s,s:I}", "k", "checkpoints", "p",
                                PQgetvalue(res, last, 1), "t", PQgetvalue(res, last, 2), "n",
                                (json_int_t)strtoll(PQgetvalue(res, last, 3), NULL, 10));
        char *tok = sc_token_encode(key);
        json_decref(key);
        next = json_string(tok);
        free(tok);
    }
    *out = json_pack("{s:O,s:o}", "checkpoints", arr, "next_page_token", next);
    rc = SC_INSPECT_OK;
out:
    json_decref(arr);
    PQclear(res);
    free(sql);
    free(pipeline);
    free(topic);
    return rc;
}

/* ---- sidecar status ------------------------------------------------------------ */

/* A cell of the status table: the value as text, "-" for null. */
static char *cell(json_t *row, const char *key)
{
    json_t *v = json_object_get(row, key);
    if (json_is_string(v))
        return sc_xstrdup(json_string_value(v));
    if (json_is_integer(v))
        return sc_xasprintf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
    if (json_is_boolean(v))
        return sc_xstrdup(json_is_true(v) ? "yes" : "no");
    return sc_xstrdup("-");
}

/* "3.2s", "4m05s", "2h07m", "3d04h": short enough for a table. */
static void format_age(double s, char *buf, size_t size)
{
    long long t = (long long)s;
    if (s < 60)
        snprintf(buf, size, "%.1fs", s);
    else if (t < 3600)
        snprintf(buf, size, "%lldm%02llds", t / 60, t % 60);
    else if (t < 86400)
        snprintf(buf, size, "%lldh%02lldm", t / 3600, t % 3600 / 60);
    else
        snprintf(buf, size, "%lldd%02lldh", t / 86400, t % 86400 / 3600);
}

enum {
    COL_PIPELINE,
    COL_TOPIC,
    COL_PART,
    COL_OWNER,
    COL_EPOCH,
    COL_LEASE,
    COL_COMMITTED,
    COL_LAG,
    COL_PENDING,
    COL_STATE,
    COL_PAUSED,
    COL_ERROR,
    NCOLS
};

static const struct {
    const char *title;
    bool right; /* numbers are right-aligned */
} columns[NCOLS] = {
    {"PIPELINE", false}, {"TOPIC", false}, {"PARTITION", true}, {"OWNER", false},
    {"EPOCH", true},     {"LEASE", false}, {"COMMITTED", true}, {"LAG", true},
    {"PENDING", false},  {"STATE", false}, {"PAUSED", false},   {"ERROR", false},
};

/* The longest error text shown in the table (--json has all of it). */
#define ERROR_CELL_MAX 80

static void status_row_cells(json_t *row, char **cells)
{
    cells[COL_PIPELINE] = cell(row, "pipeline");
    cells[COL_TOPIC] = cell(row, "topic");
    cells[COL_PART] = cell(row, "partition");
    cells[COL_OWNER] = cell(row, "owner");
    cells[COL_EPOCH] = cell(row, "epoch");
    json_t *owner = json_object_get(row, "owner");
    cells[COL_LEASE] = sc_xstrdup(json_is_null(owner) || !owner                      ? "-"
                                  : json_is_true(json_object_get(row, "lease_live")) ? "live"
                                                                                     : "expired");
    cells[COL_COMMITTED] = cell(row, "committed_offset");
    cells[COL_LAG] = cell(row, "lag");
    json_t *first = json_object_get(row, "pending_first_offset");
    if (json_is_integer(first)) {
        char age[32];
        format_age(json_number_value(json_object_get(row, "pending_age_seconds")), age,
                   sizeof(age));
        cells[COL_PENDING] = sc_xasprintf(
            "%" JSON_INTEGER_FORMAT "..%" JSON_INTEGER_FORMAT " (%s)", json_integer_value(first),
            json_integer_value(json_object_get(row, "pending_last_offset")), age);
    } else {
        cells[COL_PENDING] = sc_xstrdup("-");
    }
    cells[COL_STATE] = cell(row, "state");
    cells[COL_PAUSED] = cell(row, "paused");
    json_t *e = json_object_get(row, "error");
    if (json_is_string(e)) {
        /* One line, bounded: the table stays readable; --json has the whole text. */
        const char *s = json_string_value(e);
        size_t n = strcspn(s, "\r\n");
        if (n > ERROR_CELL_MAX)
            cells[COL_ERROR] = sc_xasprintf("%.*s...", ERROR_CELL_MAX - 3, s);
        else
            cells[COL_ERROR] = sc_xasprintf("%.*s%s", (int)n, s, s[n] ? "..." : "");
    } else {
        cells[COL_ERROR] = sc_xstrdup("");
    }
}

static void print_status_table(FILE *out, json_t *rows)
{
    size_t n = json_array_size(rows);
    char **cells = sc_xcalloc(n * NCOLS + 1, sizeof(char *));
    size_t width[NCOLS];
    for (int c = 0; c < NCOLS; c++)
        width[c] = strlen(columns[c].title);
    for (size_t r = 0; r < n; r++) {
        status_row_cells(json_array_get(rows, r), cells + r * NCOLS);
        for (int c = 0; c < NCOLS; c++) {
            size_t w = strlen(cells[r * NCOLS + c]);
            if (w > width[c])
                width[c] = w;
        }
    }
    for (size_t r = 0; r <= n; r++) {
        struct sc_buf line;
        sc_buf_init(&line, 0);
        for (int c = 0; c < NCOLS; c++) {
            const char *s = r == 0 ? columns[c].title : cells[(r - 1) * NCOLS + c];
            bool last = c == NCOLS - 1;
            int w = (int)width[c];
            int rc = columns[c].right && r > 0 ? sc_buf_printf(&line, "%*s", w, s)
                     : last                    ? sc_buf_printf(&line, "%s", s)
                                               : sc_buf_printf(&line, "%-*s", w, s);
            if (rc == 0 && !last)
                rc = sc_buf_append(&line, "  ", 2);
            (void)rc; /* unbounded buffer: cannot fail */
        }
        while (line.len > 0 && line.data[line.len - 1] == ' ')
            line.len--;
        fprintf(out, "%.*s\n", (int)line.len, line.data ? line.data : "");
        sc_buf_free(&line);
    }
    for (size_t i = 0; i < n * NCOLS; i++)
        free(cells[i]);
    free(cells);
}

int sc_cmd_status(const struct sc_config *cfg, bool json)
{
    int result = SC_EXIT_FAILURE;
    char err[1024];
    json_t *rows = NULL;
    char *schema_q = sc_pg_quote_ident(cfg->postgres.schema);
    PGconn *conn = sc_pg_connect(cfg->postgres.dsn, "kafka-sidecar/status",
                                 cfg->postgres.connect_timeout_ms, err, sizeof(err));
    if (!conn) {
        fprintf(stderr, "sidecar status: %s\n", err);
        goto out;
    }
    /* Timestamps in --json are RFC 3339 UTC whatever the server's time zone. */
    PQclear(PQexec(conn, "SET TimeZone TO 'UTC'"));
    if (sc_inspect_status(conn, schema_q, &rows, err, sizeof(err)) != SC_INSPECT_OK) {
        fprintf(stderr, "sidecar status: %s\n", err);
        goto out;
    }
    if (json) {
        json_dumpf(rows, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
    } else {
        print_status_table(stdout, rows);
        if (json_array_size(rows) == 0)
            fprintf(stderr, "no checkpoints in schema \"%s\" yet\n", cfg->postgres.schema);
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "sidecar status: could not write the output\n");
        goto out;
    }
    result = SC_EXIT_OK;
out:
    json_decref(rows);
    PQfinish(conn);
    free(schema_q);
    return result;
}

/* ---- sidecar reset ---------------------------------------------------------------- */

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

int sc_cmd_reset(const struct sc_config *cfg, const char *pipeline, const char *topic,
                 const char *partition, const char *to_offset, bool force)
{
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
