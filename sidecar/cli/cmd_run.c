/*
 * cmd_run.c - `sidecar run`: starts every pipeline and the admin endpoint,
 * and shuts them down in order on SIGTERM/SIGINT (docs/design.md §7).
 *
 * Signals only set a flag; the threads notice it.  A second signal exits at
 * once: every pending checkpoint makes that a replay, never a loss.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin/sc_admin.h"
#include "admin/sc_retention.h"
#include "base/sc_crash.h"
#include "base/sc_failpoint.h"
#include "base/sc_log.h"
#include "base/sc_metrics.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "db/sc_migrate.h"
#include "db/sc_pg.h"
#include "db/sc_pooling.h"
#include "pipeline/sc_budget.h"
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
    sc_crash_install();
}

/*
 * The shutdown bound, whatever blocks: the pipelines' threads are joined
 * against the deadline, but stopping the admin endpoint, the notifier and
 * the workers and destroying the Kafka handles could still wait on a
 * library.  This thread ends the process when the deadline passes.
 */
static int shutdown_timeout_ms;

static void *shutdown_watchdog(void *arg)
{
    int64_t deadline = *(int64_t *)arg;
    free(arg);
    struct timespec ts = {.tv_sec = deadline / 1000, .tv_nsec = (deadline % 1000) * 1000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
    sc_error(NULL,
             "shutdown did not finish within shutdown_timeout_ms (%d ms); exiting anyway "
             "(pending checkpoints make this a replay, not a loss)",
             shutdown_timeout_ms);
    _exit(SC_EXIT_FAILURE);
    return NULL;
}

static void start_shutdown_watchdog(int64_t deadline_ms)
{
    pthread_t t;
    int64_t *arg = sc_xmalloc(sizeof(*arg));
    *arg = deadline_ms;
    if (pthread_create(&t, NULL, shutdown_watchdog, arg) == 0)
        pthread_detach(t);
    else
        free(arg);
}

/*
 * What /readyz says before the pipelines run: the start-up stage and, while
 * PostgreSQL cannot be reached, why.  Written by the main thread, read by
 * the admin threads.
 */
struct run_state {
    struct sc_pipeline **pls;
    size_t n;
    atomic_bool started; /* every pipeline started: ask them */
    pthread_mutex_t lock;
    char stage[600];
};

static void set_stage(struct run_state *rs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_stage(struct run_state *rs, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&rs->lock);
    vsnprintf(rs->stage, sizeof(rs->stage), fmt, ap);
    pthread_mutex_unlock(&rs->lock);
    va_end(ap);
}

/* Refuses a connection through a transaction pool (db/sc_pooling.c): 0 or -1. */
static int check_pooling(const struct sc_config *cfg, struct run_state *rs)
{
    char err[1024];
    enum sc_pooling p = sc_pooling_check(cfg->postgres.dsn, "kafka-sidecar/startup",
                                         cfg->postgres.connect_timeout_ms, err, sizeof(err));
    if (p == SC_POOLING_SHARED) {
        sc_error(NULL, "%s", err);
        set_stage(rs, "not starting: %s", err);
        return -1;
    }
    if (p == SC_POOLING_UNKNOWN)
        sc_warn(NULL, "%s", err);
    return 0;
}

/*
 * Waits until PostgreSQL answers and the schema is current (or we are told
 * to stop).  A server that is down or unreachable is retried with backoff,
 * logged at attempts 1, 2, 4, 8, ... (and at least every 5 minutes), each
 * line saying when the next attempt is; a refused login (wrong password,
 * unknown user or database) ends the start at once unless wait is set,
 * because waiting will not fix it.
 */
static int wait_for_database(const struct sc_config *cfg, struct run_state *rs, bool wait)
{
    struct sc_backoff bo;
    sc_backoff_init(&bo, 200, 10000);
    char err[1024];
    int64_t last_log = 0;
    for (long attempt = 1; !atomic_load(&stopping); attempt++) {
        PGconn *conn = sc_pg_connect(cfg->postgres.dsn, "kafka-sidecar/startup",
                                     cfg->postgres.connect_timeout_ms, err, sizeof(err));
        if (conn) {
            set_stage(rs, "starting: checking the schema");
            int rc = sc_migrate_require_latest(conn, cfg->postgres.schema, err, sizeof(err));
            PQfinish(conn);
            if (rc == 0) {
                if (attempt > 1)
                    sc_info(NULL, "connected to PostgreSQL (attempt %ld)", attempt);
                return check_pooling(cfg, rs);
            }
            sc_error(NULL, "%s", err);
            set_stage(rs, "not starting: %s", err);
            return -1;
        }
        bool refused = sc_pg_login_refused(err);
        if (refused && !wait) {
            sc_error(NULL,
                     "%s: PostgreSQL refused the login; check the user, password and database "
                     "in postgres.dsn (sidecar run --wait-for-postgres keeps retrying instead, "
                     "e.g. while the role is being created)",
                     err);
            set_stage(rs, "not starting: %s", err);
            return -1;
        }
        int delay = sc_backoff_next(&bo);
        set_stage(rs, "starting: waiting for PostgreSQL: %s (attempt %ld, next in %.1f s)", err,
                  attempt, delay / 1000.0);
        int64_t now = sc_mono_ms();
        if ((attempt & (attempt - 1)) == 0 || now - last_log >= 300000) {
            if (attempt == 1)
                sc_warn(NULL, "%s; retrying with backoff (up to 10 s) until it is reachable%s", err,
                        refused ? " (--wait-for-postgres)" : "");
            else
                sc_warn(NULL, "still cannot connect: %s (attempt %ld, next in %.1f s)", err,
                        attempt, delay / 1000.0);
            last_log = now;
        }
        sc_sleep_ms(delay, &stopping);
    }
    return -1;
}

static bool all_ready(void *arg, char *why, size_t whysize)
{
    struct run_state *rs = arg;
    if (atomic_load(&stopping)) {
        snprintf(why, whysize, "shutting down");
        return false;
    }
    if (!atomic_load(&rs->started)) {
        pthread_mutex_lock(&rs->lock);
        snprintf(why, whysize, "%s", rs->stage);
        pthread_mutex_unlock(&rs->lock);
        return false;
    }
    for (size_t i = 0; i < rs->n; i++)
        if (!rs->pls[i] || !sc_pipeline_ready(rs->pls[i], why, whysize))
            return false;
    return true;
}

static int run_run(const struct sc_config *cfg, const struct sc_cli *cli)
{
    sc_budget_malloc_init(cfg); /* before the first thread */
    install_signals();
    sc_failpoint_init();
    sc_info(NULL, "kafka sidecar %s starting as instance \"%s\" (%zu pipeline%s)", SIDECAR_VERSION,
            cfg->instance_id, cfg->npipelines, cfg->npipelines == 1 ? "" : "s");
    int rc = SC_EXIT_OK;
    struct sc_pipeline **pls = sc_xcalloc(cfg->npipelines, sizeof(*pls));
    struct run_state rs = {.pls = pls, .n = cfg->npipelines};
    pthread_mutex_init(&rs.lock, NULL);
    set_stage(&rs, "starting: connecting to PostgreSQL");
    char err[1024];
    /* The admin endpoint comes up first, so /healthz answers while we connect. */
    struct sc_admin_hooks hooks = {all_ready, &rs};
    struct sc_admin *admin = sc_admin_start(cfg, &hooks, err, sizeof(err));
    if (!admin && err[0]) {
        sc_error(NULL, "%s", err);
        free(pls);
        pthread_mutex_destroy(&rs.lock);
        return SC_EXIT_FAILURE;
    }
    if (wait_for_database(cfg, &rs, cli->wait_for_postgres) != 0) {
        sc_admin_stop(admin);
        free(pls);
        pthread_mutex_destroy(&rs.lock);
        return atomic_load(&stopping) ? SC_EXIT_OK : SC_EXIT_FAILURE;
    }
    for (size_t i = 0; i < cfg->npipelines; i++) {
        set_stage(&rs, "starting: pipeline %s", cfg->pipelines[i].name);
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
        atomic_store(&rs.started, true);
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
    shutdown_timeout_ms = cfg->shutdown_timeout_ms;
    start_shutdown_watchdog(deadline);
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
    sc_failpoint("shutdown_cleanup");
    /* The admin threads read the pipelines, the notifier their state: stop them first. */
    sc_admin_stop(admin);
    sc_notifier_stop(notifier);
    sc_retention_stop(retention);
    for (size_t i = 0; i < cfg->npipelines; i++)
        sc_pipeline_free(pls[i]);
    free(pls);
    pthread_mutex_destroy(&rs.lock);
    if (!sc_pipeline_kept_consumer())
        rd_kafka_wait_destroyed(2000);
    sc_metrics_free_all();
    sc_info(NULL, "stopped");
    return rc;
}

const struct sc_command sc_cmd_run = {
    .name = "run",
    .summary = "Consume the configured pipelines and deliver them to their sinks.",
    .usage = "-c FILE [--wait-for-postgres]",
    .help = "Runs until SIGTERM/SIGINT: then stops fetching, commits in-flight batches,\n"
            "releases its leases and exits 0.  A second signal exits at once (safe: a\n"
            "pending checkpoint makes that a replay, never a loss).\n"
            "\n"
            "At start-up PostgreSQL that is down or unreachable is waited for (retries\n"
            "with backoff, logged with a growing interval; /readyz says why it is not\n"
            "ready).  A refused login (wrong password or user, no such database, no\n"
            "pg_hba.conf entry) exits 1 at once, since waiting will not fix it, unless\n"
            "--wait-for-postgres is given (e.g. while the role is still being created).\n",
    .options = "c wait-for-postgres",
    .run = run_run,
};
