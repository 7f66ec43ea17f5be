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
    COL_MODE,
    COL_OWNER,
    COL_SHARE,
    COL_EPOCH,
    COL_LEASE,
    COL_COMMITTED,
    COL_LAG,
    COL_PENDING,
    COL_STATE,
    COL_PAUSED,
    COL_PINNED,
    COL_DEAD,
    COL_ERROR,
    NCOLS
};

static const struct {
    const char *title;
    bool right; /* numbers are right-aligned */
} columns[NCOLS] = {
    {"PIPELINE", false}, {"TOPIC", false},  {"PARTITION", true},    {"MODE", false},
    {"OWNER", false},    {"SHARE", false},  {"EPOCH", true},        {"LEASE", false},
    {"COMMITTED", true}, {"LAG", true},     {"PENDING", false},     {"STATE", false},
    {"PAUSED", false},   {"PINNED", false}, {"DEAD LETTERS", true}, {"ERROR", false},
};

/* "lease" / "group" for the assignment mode (from the owner, else the pipeline's instances). */
static char *mode_cell(json_t *row)
{
    const char *m = json_string_value(json_object_get(row, "assignment"));
    return sc_xstrdup(!m ? "-" : strcmp(m, "kafka-group") == 0 ? "group" : m);
}

/* SHARE: what the live owner holds of its fair share, "4/4" (lease mode), "4" (group). */
static char *share_cell(json_t *row)
{
    json_t *held = json_object_get(row, "owner_partitions"),
           *share = json_object_get(row, "owner_share");
    if (!json_is_integer(held) || json_integer_value(held) == 0)
        return sc_xstrdup("-");
    if (json_is_true(json_object_get(row, "owner_draining")))
        return sc_xasprintf("%" JSON_INTEGER_FORMAT " (draining)", json_integer_value(held));
    if (json_is_integer(share))
        return sc_xasprintf("%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
                            json_integer_value(held), json_integer_value(share));
    return sc_xasprintf("%" JSON_INTEGER_FORMAT, json_integer_value(held));
}

/* PINNED: the pin, and a handoff under way ("-> sc-2"). */
static char *pinned_cell(json_t *row)
{
    const char *pin = json_string_value(json_object_get(row, "pinned_to"));
    const char *to = json_string_value(json_object_get(row, "handoff_to"));
    if (pin && to && strcmp(pin, to) != 0)
        return sc_xasprintf("%s (-> %s)", pin, to);
    if (pin)
        return sc_xstrdup(pin);
    if (to)
        return sc_xasprintf("(-> %s)", to);
    return sc_xstrdup("-");
}

/* The longest error text shown in the table (--json has all of it). */
#define ERROR_CELL_MAX 80

static void status_row_cells(json_t *row, char **cells)
{
    cells[COL_PIPELINE] = cell(row, "pipeline");
    cells[COL_TOPIC] = cell(row, "topic");
    cells[COL_PART] = cell(row, "partition");
    cells[COL_MODE] = mode_cell(row);
    cells[COL_OWNER] = cell(row, "owner");
    cells[COL_SHARE] = share_cell(row);
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
    cells[COL_PINNED] = pinned_cell(row);
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

/* Prints a table: the titles, then nrows rows of ncols cells (right[c]: right-aligned). */
static void print_table(FILE *out, const char *const *titles, const bool *right, int ncols,
                        char **cells, size_t nrows)
{
    size_t *width = sc_xcalloc((size_t)ncols, sizeof(*width));
    for (int c = 0; c < ncols; c++)
        width[c] = strlen(titles[c]);
    for (size_t r = 0; r < nrows; r++)
        for (int c = 0; c < ncols; c++) {
            size_t w = strlen(cells[r * (size_t)ncols + (size_t)c]);
            if (w > width[c])
                width[c] = w;
        }
    for (size_t r = 0; r <= nrows; r++) {
        struct sc_buf line;
        sc_buf_init(&line, 0);
        for (int c = 0; c < ncols; c++) {
            const char *s = r == 0 ? titles[c] : cells[(r - 1) * (size_t)ncols + (size_t)c];
            bool last = c == ncols - 1;
            int w = (int)width[c];
            int rc = right[c] && r > 0 ? sc_buf_printf(&line, "%*s", w, s)
                     : last            ? sc_buf_printf(&line, "%s", s)
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
    free(width);
}

static void print_status_table(FILE *out, json_t *rows)
{
    size_t n = json_array_size(rows);
    char **cells = sc_xcalloc(n * NCOLS + 1, sizeof(char *));
    const char *titles[NCOLS];
    bool right[NCOLS];
    for (int c = 0; c < NCOLS; c++) {
        titles[c] = columns[c].title;
        right[c] = columns[c].right;
    }
    for (size_t r = 0; r < n; r++)
        status_row_cells(json_array_get(rows, r), cells + r * NCOLS);
    print_table(out, titles, right, NCOLS, cells, n);
    for (size_t i = 0; i < n * NCOLS; i++)
        free(cells[i]);
    free(cells);
}

/* The instances below the partitions: mode, state, what each holds of its share. */
static void print_instances_table(FILE *out, json_t *rows)
{
    enum {
        NI = 7
    };
    static const char *const titles[NI] = {"INSTANCE",   "PIPELINE", "MODE", "STATE",
                                           "PARTITIONS", "SHARE",    "HOST"};
    static const bool right[NI] = {false, false, false, false, true, true, false};
    size_t n = json_array_size(rows);
    char **cells = sc_xcalloc(n * NI + 1, sizeof(char *));
    for (size_t r = 0; r < n; r++) {
        json_t *row = json_array_get(rows, r);
        char **c = cells + r * NI;
        c[0] = cell(row, "instance_id");
        c[1] = cell(row, "pipeline");
        c[2] = mode_cell(row);
        c[3] = sc_xstrdup(!json_is_true(json_object_get(row, "live"))      ? "gone (drained)"
                          : json_is_true(json_object_get(row, "draining")) ? "draining"
                                                                           : "live");
        c[4] = cell(row, "owned");
        c[5] = cell(row, "share");
        const char *host = json_string_value(json_object_get(row, "host"));
        json_t *pid = json_object_get(row, "os_pid");
        c[6] = json_is_integer(pid) ? sc_xasprintf("%s (pid %" JSON_INTEGER_FORMAT ")",
                                                   host ? host : "?", json_integer_value(pid))
                                    : sc_xstrdup(host ? host : "-");
    }
    print_table(out, titles, right, NI, cells, n);
    for (size_t i = 0; i < n * NI; i++)
        free(cells[i]);
    free(cells);
}

static int run_status(const struct sc_config *cfg, const struct sc_cli *cli)
{
    bool json = cli->json;
    int result = SC_EXIT_FAILURE;
    char err[1024];
    json_t *rows = NULL, *insts = NULL;
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
        if (sc_inspect_instances(conn, schema_q, &insts, err, sizeof(err)) != SC_READ_OK) {
            fprintf(stderr, "sidecar status: %s\n", err);
            goto out;
        }
        if (json_array_size(insts) > 0) {
            fputc('\n', stdout);
            print_instances_table(stdout, insts);
        }
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "sidecar status: could not write the output\n");
        goto out;
    }
    result = SC_EXIT_OK;
out:
    json_decref(rows);
    json_decref(insts);
    PQfinish(conn);
    free(schema_q);
    return result;
}

const struct sc_command sc_cmd_status = {
    .name = "status",
    .summary = "Show every partition (owner, epoch, committed, lag, pending) and instance.",
    .usage = "-c FILE [--json]",
    .help = "A table of <schema>.partition_status: lease owner and epoch (LEASE live or\n"
            "expired), the committed offset (the next offset to deliver), LAG (from the\n"
            "owner's last watermark sample; - when unknown: not sampled yet, or no live\n"
            "lease holds the partition), the pending batch and how long it has been\n"
            "pending, the state, whether it is paused, the dead letters waiting for a\n"
            "redrive (sidecar redrive), and the error.\n"
            "MODE is the pipeline's assignment (group or lease); SHARE what the owner\n"
            "holds of its fair share (lease mode: held/share); PINNED the instance the\n"
            "partition is pinned to, and a handoff under way (-> instance).  Below, the\n"
            "live instances: mode, state (live, draining), partitions held, fair share.\n"
            "--json prints the partition rows as a JSON array of objects, with every column.\n",
    .options = "c json",
    .run = run_status,
};
