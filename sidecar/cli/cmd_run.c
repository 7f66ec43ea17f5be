/*
 * cmd_run.c - `sidecar run`: starts every pipeline and the admin endpoint,
 * and shuts them down in order on SIGTERM/SIGINT (docs/design.md §7).
 *
 * Signals only set a flag; the threads notice it.  A second signal exits at
 * once: every pending checkpoint makes that a replay, never a loss.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin/sc_admin.h"
#include "admin/sc_retention.h"
#include "base/sc_failpoint.h"
#include "base/sc_log.h"
#include "base/sc_metrics.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "db/sc_migrate.h"
#include "pipeline/sc_pipeline.h"
#include "protocol/sc_notify.h"

static atomic_bool stopping;
static volatile sig_atomic_t signals_seen;

static void on_signal(int sig)
{
    if (signals_seen++ > 0) {
        static const char msg[] = "second signal: exiting now\n";
        (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
        _exit(SC_EXIT_FAILURE);
    }
    (void)sig;
    atomic_store(&stopping, true);
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* Waits until PostgreSQL answers and the schema is current (or we are told to stop). */
static int wait_for_database(const struct sc_config *cfg)
{
    struct sc_backoff bo;
    sc_backoff_init(&bo, 200, 10000);
    char err[1024];
    bool logged = false;
    while (!atomic_load(&stopping)) {
        PGconn *conn = sc_pg_connect(cfg->postgres.dsn, "kafka-sidecar/startup",
                                     cfg->postgres.connect_timeout_ms, err, sizeof(err));
        if (conn) {
            int rc = sc_migrate_require_latest(conn, cfg->postgres.schema, err, sizeof(err));
            PQfinish(conn);
            if (rc == 0)
                return 0;
            sc_error(NULL, "%s", err);
            return -1;
        }
        int delay = sc_backoff_next(&bo);
        if (!logged)
            sc_warn(NULL, "%s; retrying (with backoff up to 10 s) until it is reachable", err);
        logged = true;
        sc_sleep_ms(delay, &stopping);
    }
    return -1;
}

struct run_state {
    struct sc_pipeline **pls;
    size_t n;
};

static bool all_ready(void *arg, char *why, size_t whysize)
{
    struct run_state *rs = arg;
    if (atomic_load(&stopping)) {
        snprintf(why, whysize, "shutting down");
        return false;
    }
    for (size_t i = 0; i < rs->n; i++)
        if (!rs->pls[i] || !sc_pipeline_ready(rs->pls[i], why, whysize))
            return false;
    return true;
}

static int run_run(const struct sc_config *cfg, const struct sc_cli *cli)
{
    (void)cli;
    install_signals();
    sc_failpoint_init();
    sc_info(NULL, "kafka sidecar %s starting as instance \"%s\" (%zu pipeline%s)", SIDECAR_VERSION,
            cfg->instance_id, cfg->npipelines, cfg->npipelines == 1 ? "" : "s");
    int rc = SC_EXIT_OK;
    struct sc_pipeline **pls = sc_xcalloc(cfg->npipelines, sizeof(*pls));
    struct run_state rs = {pls, cfg->npipelines};
    char err[1024];
    /* The admin endpoint comes up first, so /healthz answers while we connect. */
    struct sc_admin_hooks hooks = {all_ready, &rs};
    struct sc_admin *admin = sc_admin_start(cfg, &hooks, err, sizeof(err));
    if (!admin && err[0]) {
        sc_error(NULL, "%s", err);
        free(pls);
        return SC_EXIT_FAILURE;
    }
    if (wait_for_database(cfg) != 0) {
        sc_admin_stop(admin);
        free(pls);
        return atomic_load(&stopping) ? SC_EXIT_OK : SC_EXIT_FAILURE;
    }
    for (size_t i = 0; i < cfg->npipelines; i++) {
        pls[i] = sc_pipeline_new(cfg, &cfg->pipelines[i], &stopping, err, sizeof(err));
        int started = pls[i] ? sc_pipeline_start(pls[i], err, sizeof(err)) : SC_EXIT_FAILURE;
        if (started != SC_EXIT_OK) {
            struct sc_log_fields f = {.pipeline = cfg->pipelines[i].name, .partition = -1};
            sc_error(&f, "%s", err);
            rc = started; /* SC_EXIT_USAGE: this instance_id is in use by a live process */
            atomic_store(&stopping, true);
            break;
        }
    }

    struct sc_notifier *notifier = NULL;
    struct sc_retention *retention = NULL;
    if (!atomic_load(&stopping)) {
        struct sc_notify_pl **nps = sc_xcalloc(cfg->npipelines, sizeof(*nps));
        for (size_t i = 0; i < cfg->npipelines; i++)
            nps[i] = &pls[i]->notify;
        notifier = sc_notifier_start(cfg, nps, cfg->npipelines, err, sizeof(err));
        free(nps);
        retention = sc_retention_start(cfg, err, sizeof(err));
        if (!notifier || !retention) {
            sc_error(NULL, "%s", err);
            rc = SC_EXIT_FAILURE;
            atomic_store(&stopping, true);
        }
    }

    while (!atomic_load(&stopping)) {
        sc_sleep_ms(200, &stopping);
        for (size_t i = 0; i < cfg->npipelines; i++)
            if (pls[i] && atomic_load(&pls[i]->exit_code) != 0) {
                rc = atomic_load(&pls[i]->exit_code);
                atomic_store(&stopping, true);
            }
    }

    /* Shutdown: bounded by shutdown_timeout_ms, after which we leave anyway (safe). */
    int64_t deadline = sc_mono_ms() + cfg->shutdown_timeout_ms;
    sc_info(NULL, "stopping (at most %d ms)", cfg->shutdown_timeout_ms);
    for (size_t i = 0; i < cfg->npipelines; i++) {
        if (!pls[i])
            continue;
        /* Monotonic: a wall-clock jump must not stretch or cut the shutdown bound. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t left = deadline - sc_mono_ms();
        if (left < 0)
            left = 0;
        ts.tv_sec += left / 1000;
        ts.tv_nsec += (left % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        if (pls[i]->thread_started &&
            pthread_clockjoin_np(pls[i]->thread, NULL, CLOCK_MONOTONIC, &ts) != 0) {
            sc_error(NULL,
                     "shutdown did not finish within shutdown_timeout_ms (%d ms); exiting anyway "
                     "(pending checkpoints make this a replay, not a loss)",
                     cfg->shutdown_timeout_ms);
            _exit(SC_EXIT_FAILURE);
        }
        pls[i]->thread_started = false;
    }
    /* The admin threads read the pipelines, the notifier their state: stop them first. */
    sc_admin_stop(admin);
    sc_notifier_stop(notifier);
    sc_retention_stop(retention);
    for (size_t i = 0; i < cfg->npipelines; i++)
        sc_pipeline_free(pls[i]);
    free(pls);
    if (!sc_pipeline_kept_consumer())
        rd_kafka_wait_destroyed(2000);
    sc_metrics_free_all();
    sc_info(NULL, "stopped");
    return rc;
}

const struct sc_command sc_cmd_run = {
    .name = "run",
    .summary = "Consume the configured pipelines and deliver them to their sinks.",
    .usage = "-c FILE",
    .help = "Runs until SIGTERM/SIGINT: then stops fetching, commits in-flight batches,\n"
            "releases its leases and exits 0.  A second signal exits at once (safe: a\n"
            "pending checkpoint makes that a replay, never a loss).\n",
    .options = "c",
    .run = run_run,
};
