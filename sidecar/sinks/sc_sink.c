/*
 * sc_sink.c - the sink registry and helpers every sink shares.
 */
#include "sinks/sc_sink.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The sink types, in the order the configuration reference lists them.
 * Adding a sink is one line here: X(name) for a struct sc_sink_class named
 * sink_<name>_class in sinks/sink_<name>.c (docs/writing-a-sink.md).
 */
#define SC_SINKS(X) \
    X(file)         \
    X(postgres)     \
    X(http)         \
    X(stdout)       \
    /* a new sink: X(name) on a line of its own, above this one */

#define DECLARE(name) extern const struct sc_sink_class sink_##name##_class;
SC_SINKS(DECLARE)
#undef DECLARE

#define LIST(name) &sink_##name##_class,
static const struct sc_sink_class *const classes[] = {SC_SINKS(LIST)};
#undef LIST

static const struct sc_conf_variant *sink_type(size_t i)
{
    return i < SC_ARRAY_LEN(classes) ? &classes[i]->conf : NULL;
}

static void check_sink(struct sc_conf_ctx *ctx, const struct sc_config *cfg, size_t i)
{
    const struct sc_sink_class *type = sc_sink_class_of(&cfg->pipelines[i].sink);
    if (type && type->check_config)
        type->check_config(ctx, cfg, i);
}

static int default_workers(const struct sc_config *cfg, size_t i, int cpus)
{
    const struct sc_sink_class *type = sc_sink_class_of(&cfg->pipelines[i].sink);
    if (!type || type->default_workers > 0 || type->spare_cpus <= 0)
        return type ? type->default_workers : 0;
    int n = cpus - type->spare_cpus;
    return n < 1 ? 1 : n < SC_DEFAULT_WORKERS_MAX ? n : SC_DEFAULT_WORKERS_MAX;
}

const struct sc_sink_registry sc_sinks = {
    .types = sink_type,
    .check = check_sink,
    .default_workers = default_workers,
};

const struct sc_sink_class *sc_sink_class_of(const struct sc_conf_choice *sink)
{
    for (size_t i = 0; i < SC_ARRAY_LEN(classes); i++)
        if (sink->variant == &classes[i]->conf)
            return classes[i];
    return NULL;
}

struct sc_sink *sc_sink_new(const struct sc_config *cfg, const struct sc_pipeline_conf *pc,
                            int worker_id, char *err, size_t errsize)
{
    const struct sc_sink_class *type = sc_sink_class_of(&pc->sink);
    if (!type) {
        snprintf(err, errsize, "pipeline \"%s\" has no known sink type", pc->name);
        return NULL;
    }
    struct sc_sink *sink = sc_xcalloc(1, sizeof(*sink));
    sink->type = type;
    sink->flags = type->flags;
    sink->cfg = cfg;
    sink->pc = pc;
    sink->conf = pc->sink.conf;
    sink->worker_id = worker_id;
    if (type->create && type->create(sink, err, errsize) != 0) {
        free(sink);
        return NULL;
    }
    return sink;
}

void sc_sink_free(struct sc_sink *sink)
{
    if (!sink)
        return;
    if (sink->type->destroy)
        sink->type->destroy(sink);
    free(sink);
}

void sc_batch_result_add_dead(struct sc_batch_result *r, size_t index, char *error, int status,
                              char *excerpt, int attempts)
{
    if (r->ndead == r->dead_cap) {
        r->dead_cap = r->dead_cap ? r->dead_cap * 2 : 8;
        r->dead = sc_xrealloc(r->dead, r->dead_cap * sizeof(*r->dead));
    }
    r->dead[r->ndead++] = (struct sc_dead_letter){
        .index = index, .error = error, .status = status, .excerpt = excerpt, .attempts = attempts};
}

bool sc_sink_bisect_dense(size_t left, size_t bad)
{
    return left >= 16 && bad * 4 >= left;
}

void sc_batch_result_clear(struct sc_batch_result *r)
{
    for (size_t i = 0; i < r->ndead; i++) {
        free(r->dead[i].error);
        free(r->dead[i].excerpt);
    }
    r->ndead = 0;
    r->next_write_offset = 0;
    r->retry_in_ms = 0;
}

int sc_sink_path_component(struct sc_buf *out, const char *name)
{
    if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        if (sc_buf_putc(out, '_') < 0)
            return -1;
    for (const char *p = name; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (sc_buf_putc(out, ok ? c : '_') < 0)
            return -1;
    }
    return 0;
}

char *sc_sink_expand_path(const char *tmpl, const struct sc_part_ref *ref)
{
    struct sc_buf b;
    sc_buf_init(&b, 4096);
    int rc = 0;
    for (const char *p = tmpl; *p && rc == 0;) {
        if (strncmp(p, "{pipeline}", 10) == 0) {
            rc = sc_sink_path_component(&b, ref->pipeline);
            p += 10;
        } else if (strncmp(p, "{topic}", 7) == 0) {
            rc = sc_sink_path_component(&b, ref->topic);
            p += 7;
        } else if (strncmp(p, "{partition}", 11) == 0) {
            rc = sc_buf_printf(&b, "%d", (int)ref->partition);
            p += 11;
        } else {
            rc = sc_buf_putc(&b, *p++);
        }
    }
    if (rc < 0 || sc_buf_putc(&b, '\0') < 0) {
        sc_buf_free(&b);
        return NULL;
    }
    return b.data;
}
