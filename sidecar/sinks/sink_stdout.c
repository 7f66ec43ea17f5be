/*
 * sink_stdout.c - writes envelopes to standard output, one per line.
 *
 * For debugging only: stdout cannot be rewound, so a replay after a crash
 * prints the pending batch again (at-least-once).  The write offset counts
 * lines.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "sinks/sc_sink.h"

struct stdout_ctx {
    struct sc_buf buf;
};

static int stdout_create(struct sc_sink *sink, char *err, size_t errsize)
{
    (void)err, (void)errsize;
    struct stdout_ctx *c = sc_xcalloc(1, sizeof(*c));
    sc_buf_init(&c->buf, 0);
    sink->ctx = c;
    return 0;
}

static void stdout_destroy(struct sc_sink *sink)
{
    struct stdout_ctx *c = sink->ctx;
    sc_buf_free(&c->buf);
    free(c);
}

static int stdout_part_open(struct sc_sink *sink, const struct sc_part_ref *ref,
                            struct sc_sink_part **out, char *err, size_t errsize)
{
    (void)sink, (void)ref, (void)err, (void)errsize;
    *out = NULL;
    return 0;
}

static enum sc_sink_result stdout_write(struct sc_sink *sink, struct sc_sink_part *p,
                                        const struct sc_batch *b, const struct sc_commit_hook *hook,
                                        struct sc_batch_result *res, char *err, size_t errsize)
{
    (void)p, (void)hook;
    struct stdout_ctx *c = sink->ctx;
    sc_buf_reset(&c->buf);
    for (size_t i = 0; i < b->count; i++)
        if (sc_envelope_append(&c->buf, &b->records[i], &sink->pc->formats) < 0 ||
            sc_buf_putc(&c->buf, '\n') < 0) {
            snprintf(err, errsize, "batch too large for the output buffer");
            return SC_SINK_ERROR;
        }
    /* One write(2) per batch; lines of concurrent workers never interleave mid-line
     * for batches up to PIPE_BUF, and stay whole lines otherwise. */
    const char *d = c->buf.data;
    size_t left = c->buf.len;
    while (left > 0) {
        ssize_t n = write(STDOUT_FILENO, d, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errsize, "could not write to stdout: %s", strerror(errno));
            return SC_SINK_RETRY;
        }
        d += n;
        left -= (size_t)n;
    }
    res->next_write_offset = b->write_offset + (int64_t)b->count;
    return SC_SINK_OK;
}

/* No keys of its own: {"type": "stdout"}. */
static const struct sc_conf_key stdout_keys[] = {{NULL}};
static const struct sc_conf_table stdout_table = {
    .name = "pipelines[].sink",
    .help = "Envelopes on standard output, for debugging (at least once).",
    .keys = stdout_keys,
};

const struct sc_sink_class sink_stdout_class = {
    .conf = {.name = "stdout", .table = &stdout_table},
    .create = stdout_create,
    .destroy = stdout_destroy,
    .part_open = stdout_part_open,
    .write = stdout_write,
};
