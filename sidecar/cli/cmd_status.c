/*
 * cmd_status.c - `sidecar status`: one table row (or JSON object) per
 * partition from <schema>.partition_status (admin/sc_inspect.c).
 */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "admin/sc_inspect.h"
#include "base/sc_util.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "db/sc_pg.h"

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
    COL_DEAD,
    COL_ERROR,
    NCOLS
};

static const struct {
    const char *title;
    bool right; /* numbers are right-aligned */
} columns[NCOLS] = {
    {"PIPELINE", false}, {"TOPIC", false}, {"PARTITION", true}, {"OWNER", false},
    {"EPOCH", true},     {"LEASE", false}, {"COMMITTED", true}, {"LAG", true},
    {"PENDING", false},  {"STATE", false}, {"PAUSED", false},   {"DEAD LETTERS", true},
    {"ERROR", false},
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
    cells[COL_DEAD] = cell(row, "dead_letters");
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

static int run_status(const struct sc_config *cfg, const struct sc_cli *cli)
{
    bool json = cli->json;
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
    if (sc_inspect_status(conn, schema_q, &rows, err, sizeof(err)) != SC_READ_OK) {
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

const struct sc_command sc_cmd_status = {
    .name = "status",
    .summary = "Show every partition: owner, epoch, committed offset, lag, pending.",
    .usage = "-c FILE [--json]",
    .help = "A table of <schema>.partition_status: lease owner and epoch (LEASE live or\n"
            "expired), the committed offset (the next offset to deliver), LAG (from the\n"
            "owner's last watermark sample; - when unknown: not sampled yet, or no live\n"
            "lease holds the partition), the pending batch and how long it has been\n"
            "pending, the state, whether it is paused, the dead letters waiting for a\n"
            "redrive (sidecar redrive), and the error.\n"
            "--json prints the same rows as a JSON array of objects, with every column.\n",
    .options = "c json",
    .run = run_status,
};
