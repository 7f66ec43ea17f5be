/*
 * sc_inspect.c - the checkpoint queries behind `sidecar status`
 * (cli/cmd_status.c) and the admin API's /v1/status and /v1/checkpoints
 * (see sc_inspect.h).
 */
#include "admin/sc_inspect.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/sc_token.h"
#include "base/sc_util.h"
#include "db/sc_pg.h"

static const char status_sql[] =
    "SELECT row_to_json(s)::text FROM ("
    "  SELECT pipeline, topic, partition, owner, epoch, lease_live, lease_expires_at,"
    "         committed_offset, committed_write_offset, pending_first_offset,"
    "         pending_last_offset, pending_count,"
    "         extract(epoch FROM pending_age)::float8 AS pending_age_seconds,"
    "         high_watermark, lag, stats_sampled_at, state, paused, error, updated_at,"
    "         assignment, pinned_to, handoff_to, owner_share, owner_partitions, owner_draining,"
    "         dead_letters"
    "    FROM {S}.partition_status"
    "   ORDER BY pipeline, topic, partition) s";

static const char instances_sql[] =
    "SELECT row_to_json(s)::text FROM ("
    "  SELECT pipeline, instance_id, assignment, live, draining, owned, share, partitions, host,"
    "         os_pid, version, started_at, renewed_at, expires_at"
    "    FROM {S}.instance_status WHERE live OR draining"
    "   ORDER BY pipeline, instance_id) s";

/* Runs sql (with {S} for the schema) and collects its one JSON column into an array. */
static int json_rows(PGconn *conn, const char *fmt, const char *schema_q, int nparams,
                     const char *const *params, json_t *arr, int *nrows, char *err, size_t errsize)
{
    int rc = SC_READ_FAILED;
    char *sql = sc_pg_with_schema(fmt, schema_q);
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = sc_pg_read_failed(conn, res, "could not read the checkpoints", err, errsize);
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
    rc = SC_READ_OK;
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
    if (rc != SC_READ_OK) {
        json_decref(arr);
        return rc;
    }
    *out = arr;
    return SC_READ_OK;
}

int sc_inspect_instances(PGconn *conn, const char *schema_q, json_t **out, char *err,
                         size_t errsize)
{
    json_t *arr = json_array();
    int n;
    int rc = json_rows(conn, instances_sql, schema_q, 0, NULL, arr, &n, err, errsize);
    if (rc != SC_READ_OK) {
        json_decref(arr);
        return rc;
    }
    *out = arr;
    return SC_READ_OK;
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
    int rc = SC_READ_FAILED;
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
        rc = SC_READ_BAD_TOKEN;
        goto out;
    }
    /* One row more than the page: whether it exists says if there is a next page. */
    snprintf(lim, sizeof(lim), "%d", limit + 1);
    const char *params[] = {pipeline, topic, pipeline ? part : NULL, lim};
    sql = sc_pg_with_schema(page_sql, schema_q);
    res = PQexecParams(conn, sql, 4, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = sc_pg_read_failed(conn, res, "could not read the checkpoints", err, errsize);
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
    rc = SC_READ_OK;
out:
    json_decref(arr);
    PQclear(res);
    free(sql);
    free(pipeline);
    free(topic);
    return rc;
}
