/*
 * sc_retention.c - background compaction of old events (see sc_retention.h).
 */
#include "admin/sc_retention.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/sc_log.h"
#include "config/sc_config.h"
#include "db/sc_db.h"

/* The first pass runs shortly after start, then every compact_interval. */
#define FIRST_PASS_MS 30000
#define BATCH         5000

struct sc_retention {
    const struct sc_config *cfg;
    struct sc_db db;
    pthread_t thread;
    atomic_bool stop;
};

static const struct sc_stmt st_compact = {
    "sc_compact",
    "SELECT {S}.compact_events(make_interval(secs => $1::bigint / 1000.0), $2::int)",
    2,
};

static bool sleep_until(struct sc_retention *r, int64_t end)
{
    while (!atomic_load(&r->stop) && sc_mono_ms() < end)
        sc_sleep_ms(end - sc_mono_ms() < 100 ? end - sc_mono_ms() : 100, NULL);
    return !atomic_load(&r->stop);
}

static void pass(struct sc_retention *r)
{
    char ret[24], batch[24];
    const char *params[] = {sc_i64(ret, r->cfg->events.retention_ms), sc_i64(batch, BATCH)};
    int64_t total = 0;
    for (;;) {
        enum sc_pg_errclass cls;
        PGresult *res = sc_db_exec(&r->db, &st_compact, params, &cls);
        if (!res) {
            sc_warn(NULL, "event compaction failed: %s (trying again next interval)",
                    r->db.last_error);
            break;
        }
        int64_t n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
        total += n;
        /* Small transactions, with a breath between them, so compaction never competes
         * with checkpoint commits for long. */
        if (n < BATCH || !sleep_until(r, sc_mono_ms() + 50))
            break;
    }
    if (total > 0)
        sc_info(NULL, "compacted %" PRId64 " events older than %" PRId64 " s into event_history",
                total, r->cfg->events.retention_ms / 1000);
}

static void *retention_main(void *arg)
{
    struct sc_retention *r = arg;
    int64_t first = r->cfg->events.compact_interval_ms < FIRST_PASS_MS
                        ? r->cfg->events.compact_interval_ms
                        : FIRST_PASS_MS;
    int64_t next = sc_mono_ms() + first;
    while (sleep_until(r, next)) {
        pass(r);
        next = sc_mono_ms() + r->cfg->events.compact_interval_ms;
    }
    return NULL;
}

struct sc_retention *sc_retention_start(const struct sc_config *cfg, char *err, size_t errsize)
{
    struct sc_retention *r = sc_xcalloc(1, sizeof(*r));
    r->cfg = cfg;
    sc_db_init(&r->db, cfg->postgres.dsn, cfg->postgres.schema, "kafka-sidecar/retention",
               cfg->postgres.connect_timeout_ms);
    if (pthread_create(&r->thread, NULL, retention_main, r) != 0) {
        snprintf(err, errsize, "could not start the retention thread");
        sc_db_close(&r->db);
        free(r);
        return NULL;
    }
    return r;
}

void sc_retention_stop(struct sc_retention *r)
{
    if (!r)
        return;
    atomic_store(&r->stop, true);
    pthread_join(r->thread, NULL);
    sc_db_close(&r->db);
    free(r);
}
