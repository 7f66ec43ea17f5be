/*
 * sc_notify.c - per-commit or coalesced NOTIFY of checkpoint events (see
 * sc_notify.h).
 */
#include "protocol/sc_notify.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_log.h"
#include "base/sc_metrics.h"
#include "config/sc_config.h"
#include "db/sc_db.h"

/* Below half the threshold for this long before notifying per commit again. */
#define CALM_MS 3000

void sc_notify_pl_init(struct sc_notify_pl *n, const struct sc_config *cfg, const char *pipeline)
{
    n->pipeline = pipeline;
    snprintf(n->channel, sizeof(n->channel), "%s_events", cfg->postgres.schema);
    atomic_store(&n->commits, 0);
    atomic_store(&n->coalesced, false);
    atomic_store(&n->dirty, false);
    sc_metrics_set_notify_mode(pipeline, 0);
}

void sc_notify_count_commit(struct sc_notify_pl *n)
{
    atomic_fetch_add_explicit(&n->commits, 1, memory_order_relaxed);
}

const char *sc_notify_channel(struct sc_notify_pl *n)
{
    if (atomic_load_explicit(&n->coalesced, memory_order_relaxed)) {
        atomic_store_explicit(&n->dirty, true, memory_order_relaxed);
        return NULL;
    }
    return n->channel;
}

/* The rate is measured over the last second from samples taken every tick, so a burst is
 * noticed within a tick or two rather than at the end of a fixed window. */
#define SAMPLES 32

struct pl_state {
    struct sc_notify_pl *n;
    int64_t t[SAMPLES];
    uint64_t c[SAMPLES];
    size_t next, count;
    int64_t calm_since_ms;  /* 0: not calm */
    int64_t last_notify_ms; /* last coalesced NOTIFY */
};

/* Commits per second over (about) the last second, or -1 with too little history. */
static int64_t sample_rate(struct pl_state *ps, int64_t now)
{
    uint64_t c = atomic_load(&ps->n->commits);
    ps->t[ps->next] = now;
    ps->c[ps->next] = c;
    ps->next = (ps->next + 1) % SAMPLES;
    if (ps->count < SAMPLES)
        ps->count++;
    /* The oldest sample still within a second (at least 200 ms back). */
    int64_t rate = -1;
    for (size_t k = 1; k < ps->count; k++) {
        size_t i = (ps->next + SAMPLES - 1 - k) % SAMPLES;
        int64_t dt = now - ps->t[i];
        if (dt > 1000)
            break;
        if (dt >= 200)
            rate = (int64_t)(c - ps->c[i]) * 1000 / dt;
    }
    return rate;
}

struct sc_notifier {
    const struct sc_config *cfg;
    struct sc_db db;
    struct pl_state *pls;
    size_t n;
    pthread_t thread;
    atomic_bool stop;
};

static const struct sc_stmt st_mode = {
    "sc_notify_mode",
    "WITH e AS (INSERT INTO {S}.events (pipeline, kind, owner, detail)"
    " VALUES ($1, 'notify_mode', $2, jsonb_build_object('mode', $3::text, 'commits_per_second',"
    "  $4::bigint, 'max_per_second', $5::int)) RETURNING id)"
    " SELECT pg_notify($6::text, json_build_object('id', e.id, 'pipeline', $1::text, 'kind',"
    "  'notify_mode', 'mode', $3::text)::text) FROM e",
    6,
};

static const struct sc_stmt st_coalesced = {
    "sc_notify_coalesced",
    "SELECT pg_notify($1::text, json_build_object('pipeline', $2::text, 'coalesced', true,"
    " 'upto', (SELECT max(id) FROM {S}.events))::text)",
    2,
};

static void switch_mode(struct sc_notifier *nt, struct pl_state *ps, bool coalesced, int64_t rate)
{
    char r[24], mx[24];
    const char *params[] = {ps->n->pipeline,
                            nt->cfg->instance_id,
                            coalesced ? "coalesced" : "per_commit",
                            sc_i64(r, rate),
                            sc_i64(mx, nt->cfg->notify.max_per_second),
                            ps->n->channel};
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec(&nt->db, &st_mode, params, &cls);
    if (!res)
        return; /* try again next tick: the mode only changes once the event is written */
    PQclear(res);
    atomic_store(&ps->n->coalesced, coalesced);
    sc_metrics_set_notify_mode(ps->n->pipeline, coalesced);
    sc_metrics_inc_notify_mode_switches();
    struct sc_log_fields f = {.pipeline = ps->n->pipeline, .partition = -1};
    if (coalesced)
        sc_info(&f,
                "%" PRId64 " checkpoint commits/s is above notify.max_per_second (%d): "
                "coalescing NOTIFY to one per %d ms",
                rate, nt->cfg->notify.max_per_second, nt->cfg->notify.coalesce_ms);
    else
        sc_info(&f, "%" PRId64 " checkpoint commits/s: notifying per commit again", rate);
}

static void tick(struct sc_notifier *nt, struct pl_state *ps, int64_t now)
{
    struct sc_notify_pl *n = ps->n;
    bool coalesced = atomic_load(&n->coalesced);
    if (coalesced && now - ps->last_notify_ms >= nt->cfg->notify.coalesce_ms &&
        atomic_exchange(&n->dirty, false)) {
        ps->last_notify_ms = now;
        const char *params[] = {n->channel, n->pipeline};
        enum sc_pg_errclass cls;
        PGresult *res = sc_db_exec(&nt->db, &st_coalesced, params, &cls);
        if (res)
            PQclear(res);
        else
            atomic_store(&n->dirty, true); /* announce it next time */
    }
    int64_t rate = sample_rate(ps, now);
    if (rate < 0)
        return;
    int max = nt->cfg->notify.max_per_second;
    if (!coalesced && rate > max) {
        switch_mode(nt, ps, true, rate);
        ps->calm_since_ms = 0;
    } else if (coalesced && rate * 2 <= max) {
        if (ps->calm_since_ms == 0)
            ps->calm_since_ms = now;
        else if (now - ps->calm_since_ms >= CALM_MS) {
            switch_mode(nt, ps, false, rate);
            ps->calm_since_ms = 0;
        }
    } else {
        ps->calm_since_ms = 0;
    }
}

static void *notifier_main(void *arg)
{
    struct sc_notifier *nt = arg;
    /* Ticks every coalesce_ms (at most 100 ms apart, so the rate is sampled often). */
    int interval = nt->cfg->notify.coalesce_ms < 100 ? nt->cfg->notify.coalesce_ms : 100;
    while (!atomic_load(&nt->stop)) {
        int64_t end = sc_mono_ms() + interval;
        while (!atomic_load(&nt->stop) && sc_mono_ms() < end)
            sc_sleep_ms(end - sc_mono_ms() < 50 ? end - sc_mono_ms() : 50, NULL);
        int64_t now = sc_mono_ms();
        for (size_t i = 0; i < nt->n; i++)
            tick(nt, &nt->pls[i], now);
    }
    return NULL;
}

struct sc_notifier *sc_notifier_start(const struct sc_config *cfg, struct sc_notify_pl **pls,
                                      size_t n, char *err, size_t errsize)
{
    struct sc_notifier *nt = sc_xcalloc(1, sizeof(*nt));
    nt->cfg = cfg;
    nt->n = n;
    nt->pls = sc_xcalloc(n ? n : 1, sizeof(*nt->pls));
    for (size_t i = 0; i < n; i++)
        nt->pls[i] = (struct pl_state){.n = pls[i]};
    sc_db_init(&nt->db, cfg->postgres.dsn, cfg->postgres.schema, "kafka-sidecar/notify",
               cfg->postgres.connect_timeout_ms);
    if (pthread_create(&nt->thread, NULL, notifier_main, nt) != 0) {
        snprintf(err, errsize, "could not start the notifier thread");
        sc_db_close(&nt->db);
        free(nt->pls);
        free(nt);
        return NULL;
    }
    return nt;
}

void sc_notifier_stop(struct sc_notifier *nt)
{
    if (!nt)
        return;
    atomic_store(&nt->stop, true);
    pthread_join(nt->thread, NULL);
    sc_db_close(&nt->db);
    free(nt->pls);
    free(nt);
}
