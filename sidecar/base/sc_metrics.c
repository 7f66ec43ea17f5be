/*
 * sc_metrics.c - Prometheus metrics registry and text exposition.
 */
#include "base/sc_metrics.h"

#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sc_metrics_part *reg_head;
static _Atomic uint64_t notify_mode_switches;
static _Atomic uint64_t registry_fetches[SC_FETCH__COUNT];
static _Atomic int64_t registry_cached;

/* Upper bounds of the histogram buckets, in seconds (the last one is +Inf). */
static const double bucket_le[SC_HIST_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                  0.25,  0.5,    1,     2.5,  5,     10,   0};

struct sc_metrics_part *sc_metrics_part(const char *pipeline, const char *topic, int32_t partition)
{
    pthread_mutex_lock(&reg_lock);
    struct sc_metrics_part *m;
    for (m = reg_head; m; m = m->next)
        if (m->partition == partition && strcmp(m->topic, topic) == 0 &&
            strcmp(m->pipeline, pipeline) == 0)
            break;
    if (!m) {
        m = sc_xcalloc(1, sizeof(*m));
        m->pipeline = sc_xstrdup(pipeline);
        m->topic = sc_xstrdup(topic);
        m->partition = partition;
        atomic_store(&m->consumer_lag, -1);
        atomic_store(&m->committed_offset, -1);
        /* Keep the list sorted so the exposition is stable. */
        struct sc_metrics_part **pp = &reg_head;
        while (*pp) {
            int c = strcmp((*pp)->pipeline, pipeline);
            if (c == 0)
                c = strcmp((*pp)->topic, topic);
            if (c == 0)
                c = (*pp)->partition - partition;
            if (c > 0)
                break;
            pp = &(*pp)->next;
        }
        m->next = *pp;
        *pp = m;
    }
    pthread_mutex_unlock(&reg_lock);
    return m;
}

void sc_hist_observe_ns(struct sc_hist *h, int64_t ns)
{
    double s = (double)ns / 1e9;
    int i = 0;
    while (i < SC_HIST_BUCKETS - 1 && s > bucket_le[i])
        i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, (uint64_t)(ns > 0 ? ns : 0), memory_order_relaxed);
}

void sc_metrics_set_pending(struct sc_metrics_part *m, int pending)
{
    /* The time first: a scrape that sees pending = 1 sees this batch's time. */
    if (pending)
        atomic_store(&m->pending_since_ms, sc_mono_ms());
    atomic_store(&m->pending, pending ? 1 : 0);
}

/* Seconds the partition's pending batch has been pending here; 0 without one. */
static double pending_age(const struct sc_metrics_part *m, int64_t now_ms)
{
    if (!atomic_load(&m->pending))
        return 0;
    int64_t since = atomic_load(&m->pending_since_ms);
    return now_ms > since ? (double)(now_ms - since) / 1000.0 : 0;
}

static pthread_mutex_t mode_lock = PTHREAD_MUTEX_INITIALIZER;
struct mode {
    char *pipeline;
    int coalesced;
    struct mode *next;
};
static struct mode *modes;

void sc_metrics_set_notify_mode(const char *pipeline, int coalesced)
{
    pthread_mutex_lock(&mode_lock);
    struct mode *m;
    for (m = modes; m; m = m->next)
        if (strcmp(m->pipeline, pipeline) == 0)
            break;
    if (!m) {
        m = sc_xcalloc(1, sizeof(*m));
        m->pipeline = sc_xstrdup(pipeline);
        m->next = modes;
        modes = m;
    }
    m->coalesced = coalesced;
    pthread_mutex_unlock(&mode_lock);
}

static struct sc_metrics_pl *pipelines;

static int put_label(struct sc_buf *out, const char *name, const char *v);

struct sc_metrics_pl *sc_metrics_pipeline(const char *pipeline)
{
    pthread_mutex_lock(&mode_lock);
    struct sc_metrics_pl *m, **pp = &pipelines;
    for (m = pipelines; m; m = m->next)
        if (strcmp(m->pipeline, pipeline) == 0)
            break;
    if (!m) {
        m = sc_xcalloc(1, sizeof(*m));
        m->pipeline = sc_xstrdup(pipeline);
        atomic_store(&m->share, -1);
        while (*pp && strcmp((*pp)->pipeline, pipeline) < 0) /* sorted: a stable exposition */
            pp = &(*pp)->next;
        m->next = *pp;
        *pp = m;
    }
    pthread_mutex_unlock(&mode_lock);
    return m;
}

/* The per-pipeline assignment series (caller holds mode_lock). */
static int render_pipelines(struct sc_buf *out)
{
    static const struct {
        const char *name, *help, *type;
        size_t off;
        int is_int;
        const char *extra; /* an extra label */
    } fams[] = {
        {"lease_share", "Lease mode: this instance's fair share, ceil(partitions / instances).",
         "gauge", offsetof(struct sc_metrics_pl, share), 1, NULL},
        {"lease_instances", "Lease mode: live instances taking partitions.", "gauge",
         offsetof(struct sc_metrics_pl, instances), 1, NULL},
        {"lease_steals_total",
         "Lease mode: partitions this instance asked another (above its share) to hand over.",
         "counter", offsetof(struct sc_metrics_pl, steals), 0, NULL},
        {"lease_handoffs_total",
         "Lease mode: cooperative handoffs: partitions received (in) or handed over (out).",
         "counter", offsetof(struct sc_metrics_pl, handoffs_in), 0, "direction=\"in\""},
        {"lease_handoffs_total", NULL, "counter", offsetof(struct sc_metrics_pl, handoffs_out), 0,
         "direction=\"out\""},
    };
    for (size_t f = 0; f < SC_ARRAY_LEN(fams); f++) {
        if (fams[f].help &&
            sc_buf_printf(out, "# HELP sidecar_%s %s\n# TYPE sidecar_%s %s\n", fams[f].name,
                          fams[f].help, fams[f].name, fams[f].type) < 0)
            return -1;
        for (struct sc_metrics_pl *m = pipelines; m; m = m->next) {
            const char *p = (const char *)m + fams[f].off;
            long long v = fams[f].is_int ? atomic_load((const atomic_int *)p)
                                         : (long long)atomic_load((const _Atomic uint64_t *)p);
            if (fams[f].is_int && v < 0)
                continue; /* not lease mode */
            if (sc_buf_printf(out, "sidecar_%s{", fams[f].name) < 0 ||
                put_label(out, "pipeline", m->pipeline) < 0 ||
                (fams[f].extra && sc_buf_printf(out, ",%s", fams[f].extra) < 0) ||
                sc_buf_printf(out, "} %lld\n", v) < 0)
                return -1;
        }
    }
    return 0;
}

void sc_metrics_inc_notify_mode_switches(void)
{
    sc_counter_add(&notify_mode_switches, 1);
}

void sc_metrics_registry_fetch(enum sc_metrics_fetch outcome)
{
    if (outcome >= 0 && outcome < SC_FETCH__COUNT)
        sc_counter_add(&registry_fetches[outcome], 1);
}

void sc_metrics_registry_cached(int64_t delta)
{
    atomic_fetch_add_explicit(&registry_cached, delta, memory_order_relaxed);
}

/* Label values are pipeline/topic names: escape \ " and newline anyway. */
static int put_label(struct sc_buf *out, const char *name, const char *v)
{
    if (sc_buf_printf(out, "%s=\"", name) < 0)
        return -1;
    for (const char *p = v; *p; p++) {
        const char *esc = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        if (esc ? sc_buf_append(out, esc, 2) < 0 : sc_buf_putc(out, *p) < 0)
            return -1;
    }
    return sc_buf_putc(out, '"');
}

static int put_labels(struct sc_buf *out, const struct sc_metrics_part *m, const char *extra)
{
    if (sc_buf_putc(out, '{') < 0 || put_label(out, "pipeline", m->pipeline) < 0 ||
        sc_buf_putc(out, ',') < 0 || put_label(out, "topic", m->topic) < 0 ||
        sc_buf_printf(out, ",partition=\"%d\"", (int)m->partition) < 0)
        return -1;
    if (extra && sc_buf_printf(out, ",%s", extra) < 0)
        return -1;
    return sc_buf_putc(out, '}');
}

enum kind {
    COUNTER,
    GAUGE
};

struct family {
    const char *name;
    const char *help;
    enum kind kind;
    size_t offset; /* of the atomic in struct sc_metrics_part */
    int is_int;    /* atomic_int / int64 gauge rather than uint64 counter */
};

#define OFF(f) offsetof(struct sc_metrics_part, f)
static const struct family families[] = {
    {"records_consumed_total", "Records received from Kafka.", COUNTER, OFF(records_consumed), 0},
    {"records_delivered_total", "Records delivered to the sink and committed.", COUNTER,
     OFF(records_delivered), 0},
    {"batches_committed_total", "Batches whose checkpoint was committed.", COUNTER,
     OFF(batches_committed), 0},
    {"replays_total", "Pending batches re-delivered after a takeover.", COUNTER, OFF(replays), 0},
    {"fenced_total", "Checkpoint writes refused because another owner holds a newer epoch.",
     COUNTER, OFF(fenced), 0},
    {"dead_letters_total", "Records written to sidecar.dead_letters.", COUNTER, OFF(dead_letters),
     0},
    {"sink_errors_total", "Failed sink writes (retried or permanent).", COUNTER, OFF(sink_errors),
     0},
    {"decode_errors_total",
     "Records that could not be decoded in their value_format / key_format (dead-lettered).",
     COUNTER, OFF(decode_errors), 0},
    {"schema_registry_waits_total",
     "Batches held back because the Schema Registry could not answer (retried with backoff).",
     COUNTER, OFF(schema_waits), 0},
    {"checkpoint_retries_total",
     "Checkpoint statements refused for a passing reason (serialization failure, deadlock, "
     "timeout, lock) and retried later; nothing had changed.",
     COUNTER, OFF(checkpoint_retries), 0},
    {"http_retry_after_total",
     "HTTP sink answers (429, 503) whose Retry-After set when the batch is sent again.", COUNTER,
     OFF(http_retry_after), 0},
    {"consumer_lag", "High watermark minus committed offset (owned partitions only).", GAUGE,
     OFF(consumer_lag), 2},
    {"pending_checkpoints", "1 while the partition has a pending checkpoint.", GAUGE, OFF(pending),
     1},
    {"partitions_owned", "1 while this process owns the partition's lease.", GAUGE, OFF(owned), 1},
    {"partition_errors", "1 while the partition is in the error state.", GAUGE, OFF(error), 1},
};

static int render_hist(struct sc_buf *out, const char *name, const char *help, size_t off)
{
    if (sc_buf_printf(out, "# HELP sidecar_%s %s\n# TYPE sidecar_%s histogram\n", name, help,
                      name) < 0)
        return -1;
    for (struct sc_metrics_part *m = reg_head; m; m = m->next) {
        struct sc_hist *h = (struct sc_hist *)((char *)m + off);
        uint64_t cum = 0;
        for (int i = 0; i < SC_HIST_BUCKETS; i++) {
            cum += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
            char le[48];
            if (i == SC_HIST_BUCKETS - 1)
                snprintf(le, sizeof(le), "le=\"+Inf\"");
            else
                snprintf(le, sizeof(le), "le=\"%g\"", bucket_le[i]);
            if (sc_buf_printf(out, "sidecar_%s_bucket", name) < 0 || put_labels(out, m, le) < 0 ||
                sc_buf_printf(out, " %llu\n", (unsigned long long)cum) < 0)
                return -1;
        }
        uint64_t count = atomic_load_explicit(&h->count, memory_order_relaxed);
        double sum = (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9;
        if (sc_buf_printf(out, "sidecar_%s_sum", name) < 0 || put_labels(out, m, NULL) < 0 ||
            sc_buf_printf(out, " %.9f\n", sum) < 0 ||
            sc_buf_printf(out, "sidecar_%s_count", name) < 0 || put_labels(out, m, NULL) < 0 ||
            sc_buf_printf(out, " %llu\n", (unsigned long long)count) < 0)
            return -1;
    }
    return 0;
}

int sc_metrics_render(struct sc_buf *out)
{
    int rc = 0;
    pthread_mutex_lock(&reg_lock);
    for (size_t f = 0; f < SC_ARRAY_LEN(families) && rc == 0; f++) {
        const struct family *fam = &families[f];
        rc = sc_buf_printf(out, "# HELP sidecar_%s %s\n# TYPE sidecar_%s %s\n", fam->name,
                           fam->help, fam->name, fam->kind == COUNTER ? "counter" : "gauge");
        for (struct sc_metrics_part *m = reg_head; m && rc == 0; m = m->next) {
            const char *p = (const char *)m + fam->offset;
            long long v;
            if (fam->is_int == 1)
                v = atomic_load((const atomic_int *)p);
            else if (fam->is_int == 2)
                v = atomic_load((const _Atomic int64_t *)p);
            else
                v = (long long)atomic_load((const _Atomic uint64_t *)p);
            if (fam->is_int == 2 && v < 0)
                continue; /* lag unknown: no sample rather than a wrong one */
            if (sc_buf_printf(out, "sidecar_%s", fam->name) < 0 || put_labels(out, m, NULL) < 0 ||
                sc_buf_printf(out, " %lld\n", v) < 0)
                rc = -1;
        }
    }
    if (rc == 0)
        rc = sc_buf_printf(out, "# HELP sidecar_pending_age_seconds Seconds the partition's "
                                "pending batch has been pending in this process (a replayed "
                                "batch counts from the takeover); 0 without one.\n"
                                "# TYPE sidecar_pending_age_seconds gauge\n");
    int64_t now_ms = sc_mono_ms();
    for (struct sc_metrics_part *m = reg_head; m && rc == 0; m = m->next)
        if (sc_buf_printf(out, "sidecar_pending_age_seconds") < 0 || put_labels(out, m, NULL) < 0 ||
            sc_buf_printf(out, " %.3f\n", pending_age(m, now_ms)) < 0)
            rc = -1;
    if (rc == 0)
        rc = render_hist(out, "checkpoint_seconds",
                         "Time of one checkpoint statement (pend, commit or both).",
                         OFF(checkpoint_seconds));
    if (rc == 0)
        rc = render_hist(out, "sink_write_seconds", "Time of one sink write of a batch.",
                         OFF(sink_write_seconds));
    pthread_mutex_unlock(&reg_lock);

    if (rc == 0)
        rc = sc_buf_printf(out,
                           "# HELP sidecar_notify_mode_switches_total Switches between per-commit "
                           "and coalesced NOTIFY.\n# TYPE sidecar_notify_mode_switches_total "
                           "counter\nsidecar_notify_mode_switches_total %llu\n",
                           (unsigned long long)atomic_load(&notify_mode_switches));
    static const char *const outcomes[SC_FETCH__COUNT] = {"ok", "not_found", "error", "unusable"};
    if (rc == 0)
        rc = sc_buf_printf(out, "# HELP sidecar_schema_registry_fetches_total Schema Registry "
                                "requests for a schema id, by outcome.\n"
                                "# TYPE sidecar_schema_registry_fetches_total counter\n");
    for (int i = 0; i < SC_FETCH__COUNT && rc == 0; i++)
        rc = sc_buf_printf(out, "sidecar_schema_registry_fetches_total{outcome=\"%s\"} %llu\n",
                           outcomes[i], (unsigned long long)atomic_load(&registry_fetches[i]));
    if (rc == 0)
        rc = sc_buf_printf(out,
                           "# HELP sidecar_schema_registry_cached_schemas Schemas cached by id "
                           "(for the life of the process).\n"
                           "# TYPE sidecar_schema_registry_cached_schemas gauge\n"
                           "sidecar_schema_registry_cached_schemas %lld\n",
                           (long long)atomic_load(&registry_cached));
    pthread_mutex_lock(&mode_lock);
    if (rc == 0 && modes)
        rc = sc_buf_printf(out, "# HELP sidecar_notify_coalesced 1 while NOTIFY is coalesced "
                                "(commit rate above notify.max_per_second).\n"
                                "# TYPE sidecar_notify_coalesced gauge\n");
    for (struct mode *m = modes; m && rc == 0; m = m->next) {
        rc = sc_buf_printf(out, "sidecar_notify_coalesced{") < 0 ||
                     put_label(out, "pipeline", m->pipeline) < 0 ||
                     sc_buf_printf(out, "} %d\n", m->coalesced) < 0
                 ? -1
                 : 0;
    }
    if (rc == 0)
        rc = render_pipelines(out);
    pthread_mutex_unlock(&mode_lock);
    return rc;
}

void sc_metrics_free_all(void)
{
    pthread_mutex_lock(&reg_lock);
    while (reg_head) {
        struct sc_metrics_part *m = reg_head;
        reg_head = m->next;
        free(m->pipeline);
        free(m->topic);
        free(m);
    }
    pthread_mutex_unlock(&reg_lock);
    pthread_mutex_lock(&mode_lock);
    while (modes) {
        struct mode *m = modes;
        modes = m->next;
        free(m->pipeline);
        free(m);
    }
    while (pipelines) {
        struct sc_metrics_pl *m = pipelines;
        pipelines = m->next;
        free(m->pipeline);
        free(m);
    }
    pthread_mutex_unlock(&mode_lock);
}
