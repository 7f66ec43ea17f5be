/*
 * cmd_watch.c - `sidecar watch`: prints checkpoint events as they commit,
 * one JSON object per line, each with its resume token (docs/design.md §5).
 *
 * Without --from it first prints the current checkpoints ("kind":
 * "snapshot").  It follows the events forever: LISTEN wakes it, a poll
 * every second covers what a notification cannot announce (see the NOTES
 * in sc_events.c).  When the PostgreSQL connection drops it reconnects with
 * backoff and resumes from its own position, so the output has no gap and
 * no repeat.  SIGINT / SIGTERM end it with exit 0; a bad or expired token
 * is exit 2; a closed stdout (`| head`) ends it quietly.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin/sc_events.h"
#include "base/sc_log.h"
#include "base/sc_util.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "db/sc_pg.h"

/* Events per query: large enough for throughput, small enough to print promptly. */
#define WATCH_BATCH 500
/* Poll even without a notification: the horizon can move silently. */
#define WATCH_POLL_MS 1000

static atomic_bool watch_stop;

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&watch_stop, true);
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* Is pipeline (and topic) configured?  A typo would otherwise watch silence forever. */
static bool filter_known(const struct sc_config *cfg, const struct sc_events_filter *f, char *err,
                         size_t errsize)
{
    bool pipeline_found = !f->pipeline, topic_found = !f->topic;
    for (size_t i = 0; i < cfg->npipelines; i++) {
        const struct sc_pipeline_conf *p = &cfg->pipelines[i];
        if (f->pipeline && strcmp(p->name, f->pipeline) != 0)
            continue;
        pipeline_found = true;
        for (size_t t = 0; f->topic && t < p->topics.count; t++)
            if (strcmp(p->topics.items[t], f->topic) == 0)
                topic_found = true;
    }
    if (!pipeline_found || !topic_found) {
        struct sc_buf b;
        sc_buf_init(&b, 0);
        for (size_t i = 0; i < cfg->npipelines; i++) {
            const struct sc_pipeline_conf *p = &cfg->pipelines[i];
            int rc = sc_buf_printf(&b, "%s%s (", i ? ", " : "", p->name);
            for (size_t t = 0; rc == 0 && t < p->topics.count; t++)
                rc = sc_buf_printf(&b, "%s%s", t ? " " : "", p->topics.items[t]);
            if (rc == 0)
                rc = sc_buf_putc(&b, ')');
            (void)rc; /* unbounded buffer */
        }
        if (!pipeline_found)
            snprintf(err, errsize, "--pipeline %s: no such pipeline in %s (configured: %.*s)",
                     f->pipeline, cfg->path, (int)b.len, b.data ? b.data : "");
        else
            snprintf(err, errsize,
                     "--partition %s:%d: no configured pipeline%s consumes topic %s "
                     "(configured: %.*s)",
                     f->topic, (int)f->partition, f->pipeline ? " of that name" : "", f->topic,
                     (int)b.len, b.data ? b.data : "");
        sc_buf_free(&b);
        return false;
    }
    return true;
}

/*
 * Has the reader of stdout gone (`watch | head -3`)?  Without this a quiet
 * stream would only notice at its next event, which may be hours away.
 */
static bool stdout_closed(void)
{
    struct pollfd p = {.fd = STDOUT_FILENO, .events = 0};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP)) != 0;
}

/* Prints each object of arr as one line.  0, or -1 when stdout is gone (errno set). */
static int print_lines(json_t *arr)
{
    size_t i;
    json_t *obj;
    json_array_foreach(arr, i, obj)
    {
        char *s = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!s)
            abort(); /* allocation only */
        int rc = fputs(s, stdout) < 0 || fputc('\n', stdout) == EOF || fflush(stdout) != 0;
        free(s);
        if (rc)
            return -1;
    }
    return 0;
}

static int run_watch(const struct sc_config *cfg, const struct sc_cli *cli)
{
    const char *from = cli->from, *pipeline = cli->pipeline, *partition = cli->partition;
    bool restart_snapshot = cli->restart_snapshot;
    int result = SC_EXIT_USAGE;
    char err[2048];
    struct sc_events_filter f = {.partition = -1};
    struct sc_events_cursor cur;
    char *schema_q = sc_pg_quote_ident(cfg->postgres.schema);
    PGconn *conn = NULL;
    json_t *batch = json_array();
    bool connected_once = false;
    struct sc_backoff bo;
    sc_backoff_init(&bo, 200, 10000);
    sc_events_cursor_init(&cur, NULL);
    install_signals(); /* first: a signal during start-up must also mean "exit 0" */

    if (sc_events_filter_init(&f, pipeline, partition, err, sizeof(err)) != 0 ||
        !filter_known(cfg, &f, err, sizeof(err))) {
        fprintf(stderr, "sidecar watch: %s\n", err);
        goto out;
    }
    sc_events_cursor_free(&cur);
    sc_events_cursor_init(&cur, &f);
    if (from && sc_events_cursor_from_token(&cur, from, &f, err, sizeof(err)) != 0) {
        fprintf(stderr, "sidecar watch: --from: %s\n", err);
        goto out;
    }

    result = SC_EXIT_FAILURE;
    while (!atomic_load(&watch_stop)) {
        if (!conn) {
            conn = sc_events_connect(cfg->postgres.dsn, cfg->postgres.connect_timeout_ms,
                                     "kafka-sidecar/watch", err, sizeof(err));
            int rc = conn ? sc_events_listen(conn, schema_q, err, sizeof(err)) : SC_READ_RETRY;
            /* Failing to start at all is a configuration problem: say so and stop. */
            if (rc == SC_READ_FAILED || (rc != 0 && !connected_once)) {
                fprintf(stderr, "sidecar watch: %s\n", err);
                goto out;
            }
            if (rc != 0) {
                PQfinish(conn);
                conn = NULL;
                int delay = sc_backoff_next(&bo);
                sc_warn(NULL, "watch: %s; retrying in %d ms", err, delay);
                sc_sleep_ms(delay, &watch_stop);
                continue;
            }
            if (connected_once)
                sc_info(NULL, "watch: reconnected to PostgreSQL; resuming after the last event");
            connected_once = true;
        }

        int n = sc_events_read(conn, schema_q, &cur, WATCH_BATCH, batch, err, sizeof(err));
        if (n == SC_READ_EXPIRED) {
            if (!restart_snapshot) {
                fprintf(stderr,
                        "sidecar watch: %s\nhint: use --restart-from-snapshot to start again "
                        "from the current checkpoints\n",
                        err);
                result = SC_EXIT_USAGE;
                goto out;
            }
            sc_warn(NULL, "watch: %s; restarting from a new snapshot", err);
            sc_events_cursor_restart(&cur);
            continue;
        }
        if (n == SC_READ_FAILED) {
            fprintf(stderr, "sidecar watch: %s\n", err);
            goto out;
        }
        if (n == SC_READ_RETRY) {
            PQfinish(conn);
            conn = NULL;
            int delay = sc_backoff_next(&bo);
            sc_warn(NULL, "watch: %s; reconnecting in %d ms", err, delay);
            sc_sleep_ms(delay, &watch_stop);
            continue;
        }
        sc_backoff_reset(&bo);
        if (print_lines(batch) != 0) {
            /* The reader went away (`watch | head`): that is how pipelines end. */
            result = errno == EPIPE ? SC_EXIT_OK : SC_EXIT_FAILURE;
            if (result != SC_EXIT_OK)
                fprintf(stderr, "sidecar watch: could not write to stdout: %s\n", strerror(errno));
            goto out;
        }
        json_array_clear(batch);
        if (n >= WATCH_BATCH)
            continue; /* more may be waiting */
        if (stdout_closed())
            break;
        if (sc_events_wait(conn, WATCH_POLL_MS) < 0) {
            PQfinish(conn);
            conn = NULL;
            sc_warn(NULL, "watch: lost the PostgreSQL connection; reconnecting");
        }
    }
    result = SC_EXIT_OK;
out:
    PQfinish(conn);
    json_decref(batch);
    sc_events_cursor_free(&cur);
    sc_events_filter_free(&f);
    free(schema_q);
    return result;
}

const struct sc_command sc_cmd_watch = {
    .name = "watch",
    .summary = "Print checkpoint events as they commit, one JSON object per line.",
    .usage =
        "-c FILE [--from TOKEN] [--pipeline P] [--partition TOPIC:N] [--restart-from-snapshot]",
    .help = "Without --from, first prints the current checkpoints (\"kind\":\"snapshot\"),\n"
            "then every event as its transaction commits, forever.  Every line carries\n"
            "\"token\": pass it to --from to resume exactly after that line (with the same\n"
            "--pipeline / --partition).  Events are never missed or repeated, also across\n"
            "PostgreSQL reconnects, which happen by themselves.\n"
            "\n"
            "Exit codes: 0 on SIGINT / SIGTERM; 2 for a malformed token, a token issued for\n"
            "another filter, or an expired one (its events were compacted away: add\n"
            "--restart-from-snapshot to start again from the current checkpoints).\n",
    .options = "c from pipeline partition restart-from-snapshot",
    .run = run_watch,
};
