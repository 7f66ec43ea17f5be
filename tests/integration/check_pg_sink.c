/*
 * check_pg_sink.c - the postgres sink.
 *
 * "sink" cases drive the sink in-process against a real PostgreSQL (one
 * server for the case, one database per test), with a stand-in for the
 * worker's commit hook: row layout, the COPY fast path and its fallback,
 * several partitions' batches in one transaction (write_group()),
 * duplicate keys inside a batch, bisecting poison rows into dead letters,
 * the offset guard against stale replays, redrive, and the errors a user
 * gets for a table or config that cannot work.
 *
 * "e2e" cases run the real `sidecar` binary with the mock Kafka cluster:
 * dead letters stored with the checkpoint, last-wins upsert, a missing
 * table putting partitions in the error state, and a replay into another
 * database that must not overwrite a newer row.
 */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/sc_log.h"
#include "config/sc_config.h"
#include "record/sc_envelope.h"
#include "scx.h"
#include "sinks/sc_sink_txn.h"
#include "sinks/sink_postgres.h"

/* ---- in-process fixture ------------------------------------------------ */

static struct hx_pg pg; /* started once for the "sink" case (unchecked fixture) */

static void pg_up(void)
{
    hx_pg_start(&pg);
}

static void pg_down(void)
{
    hx_pg_stop(&pg);
}

struct fx {
    char dsn[512];      /* the checkpoint database */
    char sink_dsn[512]; /* a second database (other-DB mode) */
    PGconn *conn;       /* test's own connection to dsn */
    PGconn *sink_conn;  /* ... and to sink_dsn */
    struct sc_config *cfg;
    struct sc_sink *sink;
    struct sc_sink_part *part;
    struct sc_part_ref ref;
};

/* A fresh pair of databases named after the test. */
static void fx_init(struct fx *f, const char *name)
{
    memset(f, 0, sizeof(*f));
    char db[64];
    snprintf(db, sizeof(db), "%s_cp", name);
    hx_pg_create_db(&pg, db, f->dsn, sizeof(f->dsn));
    snprintf(db, sizeof(db), "%s_sink", name);
    hx_pg_create_db(&pg, db, f->sink_dsn, sizeof(f->sink_dsn));
    f->conn = hx_pg_connect(f->dsn);
    f->sink_conn = hx_pg_connect(f->sink_dsn);
    f->ref = (struct sc_part_ref){"p1", "orders", 0, 1};
}

/*
 * Creates a sink from a sink JSON object (printf format; "%s" gets the
 * second database's DSN where a test wants it).  Returns 0, or -1 with the
 * error in err.
 */
static int fx_sink(struct fx *f, const char *sink_json, char *err, size_t errsize)
{
    char doc[4096];
    snprintf(doc, sizeof(doc),
             "{\"instance_id\": \"t\", \"postgres\": {\"dsn\": \"%s\"},"
             " \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:1\"},"
             " \"pipelines\": [{\"name\": \"p1\", \"topics\": [\"orders\"], \"sink\": %s}]}",
             f->dsn, sink_json);
    if (f->cfg == NULL)
        ck_assert_msg(sc_config_load_string("t.json", doc, &sc_sinks, &f->cfg, err, errsize) == 0,
                      "config: %s", err);
    f->sink = sc_sink_new(f->cfg, &f->cfg->pipelines[0], 0, err, errsize);
    if (!f->sink)
        return -1;
    ck_assert_int_eq(f->sink->type->part_open(f->sink, &f->ref, &f->part, err, errsize), 0);
    return 0;
}

/* part_recover: 0 ready, -1 retry, -2 error state. */
static int fx_recover(struct fx *f, char *err, size_t errsize)
{
    return f->sink->type->part_recover(f->sink, f->part, 0, NULL, NULL, err, errsize);
}

static void fx_open(struct fx *f, const char *sink_json)
{
    char err[1024] = "";
    ck_assert_msg(fx_sink(f, sink_json, err, sizeof(err)) == 0, "sink: %s", err);
    ck_assert_msg(fx_recover(f, err, sizeof(err)) == 0, "recover: %s", err);
}

static void fx_close(struct fx *f)
{
    if (f->sink) {
        f->sink->type->part_close(f->sink, f->part);
        sc_sink_free(f->sink);
    }
    sc_config_free(f->cfg);
    PQfinish(f->conn);
    PQfinish(f->sink_conn);
}

/* Records of a batch: values and keys are copied into a pool the test owns. */
struct recs {
    struct sc_record r[256];
    char pool[256][256];
    char keys[256][32];
    size_t n;
};

static struct sc_header one_header = {"trace", "abc", 3};

static void recs_add(struct recs *rs, int32_t partition, int64_t offset, const char *key,
                     const char *value)
{
    ck_assert_uint_lt(rs->n, 256);
    struct sc_record *r = &rs->r[rs->n];
    char *v = rs->pool[rs->n];
    snprintf(v, sizeof(rs->pool[0]), "%s", value ? value : "");
    snprintf(rs->keys[rs->n], sizeof(rs->keys[0]), "%s", key ? key : "");
    *r = (struct sc_record){
        .topic = "orders",
        .partition = partition,
        .offset = offset,
        .timestamp = 1732240000000 + offset,
        .key = key ? rs->keys[rs->n] : NULL,
        .key_len = key ? strlen(key) : 0,
        .value = value ? v : NULL,
        .value_len = value ? strlen(v) : 0,
        .headers = &one_header,
        .nheaders = 1,
    };
    rs->n++;
}

/* The worker's commit hook, played by the test: counts calls, may mark the transaction. */
struct hook_state {
    PGconn *conn;
    bool pipelined; /* offer queue() too, as the worker does */
    int queued[3];  /* queued() outcomes seen: -1, 0, 1 */
    int calls;
    int ret;         /* what commit() returns */
    bool kill;       /* queue(): a statement that ends the session (a connection lost) */
    bool mark;       /* insert a marker row inside the sink's transaction */
    size_t ndead;    /* dead letters seen by the last call */
    int64_t next_wo; /* next_write_offset seen by the last call */
    size_t dead_at[64];
};

static int hook_commit(void *arg, const struct sc_batch *b, const struct sc_batch_result *r,
                       char *err, size_t errsize)
{
    struct hook_state *h = arg;
    h->calls++;
    h->ndead = r->ndead;
    h->next_wo = r->next_write_offset;
    for (size_t i = 0; i < r->ndead && i < 64; i++)
        h->dead_at[i] = r->dead[i].index;
    ck_assert_int_eq(PQtransactionStatus(h->conn), PQTRANS_INTRANS);
    if (h->mark) {
        char sql[128];
        snprintf(sql, sizeof(sql), "INSERT INTO marker VALUES (%" PRId64 ")", b->last_offset);
        hx_pg_exec(h->conn, sql);
    }
    if (h->ret != 0)
        snprintf(err, errsize, "hook says %d", h->ret);
    return h->ret;
}

/*
 * queue(): one statement in the sink's pipeline, like the worker's strict
 * advance: the marker row, or (ret != 0) a statement that fails, as the
 * advance does when fenced.
 */
static int hook_queue(void *arg, const struct sc_batch *b, const struct sc_batch_result *r,
                      char *err, size_t errsize)
{
    struct hook_state *h = arg;
    ck_assert_int_eq(PQpipelineStatus(h->conn), PQ_PIPELINE_ON);
    ck_assert_int_eq(r->ndead, 0);
    h->next_wo = r->next_write_offset;
    char off[24];
    snprintf(off, sizeof(off), "%" PRId64, b->last_offset);
    const char *v[1] = {off};
    const char *sql = h->kill       ? "SELECT pg_terminate_backend(pg_backend_pid()), $1::bigint"
                      : h->ret != 0 ? "SELECT CAST($1::text || ' fenced' AS int)"
                      : h->mark     ? "INSERT INTO marker VALUES ($1::bigint)"
                                    : "SELECT $1::bigint";
    if (PQsendQueryParams(h->conn, sql, 1, NULL, v, NULL, NULL, 0) != 1) {
        snprintf(err, errsize, "%s", PQerrorMessage(h->conn));
        return -1;
    }
    return 0;
}

static void hook_queued(void *arg, int outcome)
{
    struct hook_state *h = arg;
    ck_assert(outcome >= -1 && outcome <= 1);
    h->queued[outcome + 1]++;
}

static enum sc_sink_result fx_write(struct fx *f, const struct recs *rs, struct hook_state *h,
                                    struct sc_batch_result *res, bool replay)
{
    struct sc_batch b = {
        .part = &f->ref,
        .records = rs->r,
        .count = rs->n,
        .first_offset = rs->r[0].offset,
        .last_offset = rs->r[rs->n - 1].offset,
        .write_offset = rs->r[0].offset,
        .replay = replay,
    };
    struct sc_commit_hook hook = {h ? h->conn : NULL, hook_commit, h, NULL, NULL};
    if (h && h->pipelined)
        hook.queue = hook_queue, hook.queued = hook_queued;
    char err[1024] = "";
    sc_batch_result_clear(res);
    enum sc_sink_result sr =
        f->sink->type->write(f->sink, f->part, &b, h ? &hook : NULL, res, err, sizeof(err));
    if (sr == SC_SINK_OK)
        ck_assert_int_eq(res->next_write_offset, b.last_offset + 1);
    else
        ck_assert_msg(err[0] != '\0', "write returned %d without a message", (int)sr);
    return sr;
}

static void res_free(struct sc_batch_result *res)
{
    sc_batch_result_clear(res);
    free(res->dead);
    memset(res, 0, sizeof(*res));
}

static long long q_int(PGconn *c, const char *sql)
{
    return hx_pg_int(c, sql, 0, NULL);
}

static char *q_str(PGconn *c, const char *sql)
{
    return hx_pg_value(c, sql, 0, NULL);
}

static void assert_str(PGconn *c, const char *sql, const char *want)
{
    char *got = q_str(c, sql);
    ck_assert_msg(got && strcmp(got, want) == 0, "%s: got %s, want %s", sql, got ? got : "NULL",
                  want);
    free(got);
}

/* ---- sink cases ---------------------------------------------------------- */

/*
 * Default columns in the checkpoint database: rows, the hook inside the
 * transaction, a replayed batch (COPY conflicts, INSERT ... ON CONFLICT
 * takes over), and nothing left behind when the hook fences or fails.
 */
START_TEST(test_default_same_db)
{
    /* 0: commit() only; with the worker's queue() too (one round trip for the advance and
     * COMMIT, commit() as the fallback): 1 the pipelined INSERT, 2 COPY, 3 auto */
    static const char *const methods[] = {"auto", "pipeline", "copy", "auto"};
    bool pipelined = _i > 0;
    struct fx f;
    char name[32], sink[256];
    snprintf(name, sizeof(name), "t_default_%d", _i);
    fx_init(&f, name);
    hx_pg_exec(f.conn, "CREATE TABLE marker (last bigint)");
    snprintf(sink, sizeof(sink),
             "{\"type\": \"postgres\", \"table\": \"app.events\", \"write_method\": \"%s\"}",
             methods[_i]);
    fx_open(&f, sink);
    ck_assert(f.sink->flags & SC_SINK_F_TRANSACTIONAL);

    struct recs rs = {.n = 0};
    char v[64], k[16];
    for (int i = 0; i < 10; i++) {
        snprintf(v, sizeof(v), "{ \"n\": %d, \"amount\": 1.50 }", i);
        snprintf(k, sizeof(k), "k%d", i);
        recs_add(&rs, 0, i, k, v);
    }
    rs.r[9].key = NULL; /* a null key */
    rs.r[9].timestamp = -1;
    struct hook_state h = {.conn = hx_pg_connect(f.dsn), .mark = true, .pipelined = pipelined};
    struct sc_batch_result res = {0};
    ck_assert_int_eq(fx_write(&f, &rs, &h, &res, false), SC_SINK_OK);
    ck_assert_int_eq(h.calls, !pipelined);
    ck_assert_int_eq(h.queued[2], pipelined);
    ck_assert_int_eq(h.next_wo, 10);
    ck_assert_int_eq(q_int(f.conn, "SELECT count(*) FROM app.events"), 10);
    ck_assert_int_eq(q_int(f.conn, "SELECT count(*) FROM marker"), 1);
    /* JSON verbatim (minified, numbers keep their text), key as text, headers, ts */
    assert_str(f.conn, "SELECT value::text FROM app.events WHERE \"offset\" = 3",
               "{\"n\": 3, \"amount\": 1.50}");
    assert_str(f.conn,
               "SELECT concat_ws('|', topic, partition, key, headers::text, "
               "(extract(epoch FROM ts) * 1000)::bigint) FROM app.events WHERE \"offset\" = 3",
               "orders|0|k3|{\"trace\": \"abc\"}|1732240000003");
    ck_assert_int_eq(q_int(f.conn, "SELECT count(*) FROM app.events WHERE \"offset\" = 9 AND "
                                   "key IS NULL AND ts IS NULL"),
                     1);

    /* The same batch again (a reset, say): no duplicate, no error. */
    ck_assert_int_eq(fx_write(&f, &rs, &h, &res, false), SC_SINK_OK);
    ck_assert_int_eq(q_int(f.conn, "SELECT count(*) FROM app.events"), 10);
    ck_assert_int_eq(h.ndead, 0);

    /* Fenced, or the checkpoint write failed: the rows are rolled back with it. */
    struct recs more = {.n = 0};
    for (int i = 10; i < 20; i++)
        recs_add(&more, 0, i, "k", "{}");
    h.ret = 1;
    ck_assert_int_eq(fx_write(&f, &more, &h, &res, false), SC_SINK_FENCED);
    h.ret = -1;
    ck_assert_int_eq(fx_write(&f, &more, &h, &res, false), SC_SINK_RETRY);
    ck_assert_int_eq(q_int(f.conn, "SELECT count(*) FROM app.events"), 10);
    ck_assert_int_eq(q_int(f.conn, "SELECT count(*) FROM marker"), 2);
    ck_assert_int_eq(PQtransactionStatus(h.conn), PQTRANS_IDLE);
    ck_assert_int_eq(PQpipelineStatus(h.conn), PQ_PIPELINE_OFF);
    /* pipelined: the replay conflicted (COPY: before anything was queued), the fenced and
     * failing advances failed; none unknown */
    ck_assert_int_eq(h.queued[1], !pipelined ? 0 : _i >= 2 ? 2 : 3); /* auto: COPY first */
    ck_assert_int_eq(h.queued[0], 0);
    h.ret = 0;
    ck_assert_int_eq(fx_write(&f, &more, &h, &res, false), SC_SINK_OK);
    ck_assert_int_eq(q_int(f.conn, "SELECT count(*) FROM app.events"), 20);

    /* The checkpoint connection is replaced (worker reconnected): statements follow. */
    PQfinish(h.conn);
    h.conn = hx_pg_connect(f.dsn);
    struct recs last = {.n = 0};
    recs_add(&last, 0, 20, "k", "not json");
    ck_assert_int_eq(fx_write(&f, &last, &h, &res, false), SC_SINK_OK);
    assert_str(f.conn, "SELECT value #>> '{}' FROM app.events WHERE \"offset\" = 20", "not json");
    res_free(&res);
    PQfinish(h.conn);
    fx_close(&f);
}
END_TEST

/*
 * write_group(): two partitions' batches in one transaction, all or
 * nothing: both commit, or (a fenced advance, a row already there, a bad
 * row, a record that cannot be a row) neither does and the connection is
 * idle; a group the sink cannot write as one COPY is declined before
 * anything is sent; a session lost after COMMIT was sent is "unknown".
 */
struct group_fx {
    struct fx f;
    struct sc_part_ref ref1;
    struct sc_sink_part *part1;
    struct hook_state h[2];
    struct sc_commit_hook hook[2];
    struct sc_batch b[2];
    struct sc_batch_result res[2];
    struct sc_txn_item items[2];
    char err[1024]; /* the last group_write()'s message */
};

static const struct sc_record *group_records(void *arg)
{
    return ((const struct recs *)arg)->r;
}

static int group_write(struct group_fx *g, const struct recs *r0, const struct recs *r1)
{
    const struct recs *rs[2] = {r0, r1};
    for (int i = 0; i < 2; i++) {
        g->b[i] = (struct sc_batch){
            .part = i ? &g->ref1 : &g->f.ref,
            .count = rs[i]->n,
            .first_offset = rs[i]->r[0].offset,
            .last_offset = rs[i]->r[rs[i]->n - 1].offset,
            .write_offset = rs[i]->r[0].offset,
        };
        g->hook[i] =
            (struct sc_commit_hook){g->h[i].conn, hook_commit, &g->h[i], hook_queue, hook_queued};
        sc_batch_result_clear(&g->res[i]);
        g->items[i] = (struct sc_txn_item){i ? g->part1 : g->f.part,
                                           &g->b[i],
                                           &g->hook[i],
                                           &g->res[i],
                                           group_records,
                                           (void *)rs[i]};
    }
    g->err[0] = '\0';
    int outcome = g->f.sink->type->write_group(g->f.sink, g->items, 2, g->err, sizeof(g->err));
    PGconn *conn = g->h[0].conn;
    if (PQstatus(conn) == CONNECTION_OK) {
        ck_assert_int_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
        ck_assert_int_eq(PQpipelineStatus(conn), PQ_PIPELINE_OFF);
    }
    return outcome;
}

static void group_batch(struct recs *rs, int32_t partition, int64_t from, int n, const char *value)
{
    rs->n = 0;
    for (int i = 0; i < n; i++)
        recs_add(rs, partition, from + i, "k", value);
}

START_TEST(test_write_group)
{
    struct group_fx g;
    memset(&g, 0, sizeof(g));
    fx_init(&g.f, "t_group");
    hx_pg_exec(g.f.conn, "CREATE TABLE marker (last bigint)");
    fx_open(&g.f, "{\"type\": \"postgres\", \"table\": \"app.events\"}");
    char err[256];
    g.ref1 = (struct sc_part_ref){"p1", "orders", 1, 1};
    ck_assert_int_eq(g.f.sink->type->part_open(g.f.sink, &g.ref1, &g.part1, err, sizeof(err)), 0);
    PGconn *conn = hx_pg_connect(g.f.dsn);
    for (int i = 0; i < 2; i++)
        g.h[i] = (struct hook_state){.conn = conn, .mark = true, .pipelined = true};
    static struct recs a, b;

    /* Both commit, in one transaction: their rows, and both advances (the markers). */
    group_batch(&a, 0, 0, 100, "{\"x\": 1}");
    group_batch(&b, 1, 0, 50, "{\"x\": 2}");
    ck_assert_int_eq(group_write(&g, &a, &b), 1);
    ck_assert_int_eq(g.h[0].queued[2] + g.h[1].queued[2], 2);
    ck_assert_int_eq(g.h[0].next_wo, 100);
    ck_assert_int_eq(g.h[1].next_wo, 50);
    ck_assert_int_eq(g.res[0].next_write_offset, 100);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(*) FROM app.events WHERE partition = 0"), 100);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(*) FROM app.events WHERE partition = 1 AND "
                                     "value = '{\"x\": 2}'"),
                     50);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(*) FROM marker"), 2);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(DISTINCT xmin::text) FROM app.events"), 1);

    /* One advance fenced: neither batch stays. */
    group_batch(&a, 0, 100, 10, "{}");
    group_batch(&b, 1, 50, 10, "{}");
    g.h[1].ret = 1;
    ck_assert_int_eq(group_write(&g, &a, &b), 0);
    ck_assert_msg(strstr(g.err, "fenced"), "%s", g.err);
    ck_assert_int_eq(g.h[0].queued[1] + g.h[1].queued[1], 2);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(*) FROM app.events"), 150);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(*) FROM marker"), 2);
    g.h[1].ret = 0;

    /* A row there already (partition 1 written again from offset 40), or a bad row (jsonb
     * refuses \u0000): the COPY fails, nothing commits, no advance was queued. */
    group_batch(&b, 1, 40, 20, "{}");
    ck_assert_int_eq(group_write(&g, &a, &b), 0);
    ck_assert_msg(strstr(g.err, "23505"), "%s", g.err);
    group_batch(&b, 1, 50, 10, "{\"bad\": \"nul\\u0000\"}");
    ck_assert_int_eq(group_write(&g, &a, &b), 0);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(*) FROM app.events"), 150);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(*) FROM marker"), 2);
    ck_assert_int_eq(g.h[0].queued[1] + g.h[1].queued[1], 2);

    /* Written one by one, the usual way sorts them out; then groups go on. */
    struct sc_batch_result res = {0};
    ck_assert_int_eq(fx_write(&g.f, &a, &g.h[0], &res, false), SC_SINK_OK);
    group_batch(&a, 0, 110, 10, "{}");
    group_batch(&b, 1, 50, 10, "{}");
    ck_assert_int_eq(group_write(&g, &a, &b), 1);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(*) FROM app.events"), 180);

    /* A partition that took INSERT ... ON CONFLICT lately (a conflict) cannot go by COPY:
     * declined before anything is sent. */
    g.part1->slow_batches = 1;
    group_batch(&a, 0, 120, 10, "{}");
    group_batch(&b, 1, 60, 10, "{}");
    int q = g.h[0].queued[0] + g.h[0].queued[1] + g.h[0].queued[2];
    ck_assert_int_eq(group_write(&g, &a, &b), 0);
    ck_assert_int_eq(g.h[0].queued[0] + g.h[0].queued[1] + g.h[0].queued[2], q);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(*) FROM app.events"), 180);
    g.part1->slow_batches = 0;

    /* A record that cannot be a row (its timestamp beyond timestamptz) in the second batch,
     * after the first one's rows were sent: the COPY is ended with an error, nothing commits,
     * no advance was queued. */
    group_batch(&b, 1, 60, 10, "{}");
    b.r[5].timestamp = INT64_MAX / 1000;
    ck_assert_int_eq(group_write(&g, &a, &b), 0);
    ck_assert_msg(strstr(g.err, "cannot be rows"), "%s", g.err);
    ck_assert_int_eq(g.h[0].queued[0] + g.h[0].queued[1] + g.h[0].queued[2], q);
    ck_assert_int_eq(g.res[1].ndead, 1);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(*) FROM app.events"), 180);

    /* The session ends while the advances and COMMIT are on their way: the outcome is
     * unknown to the sink (the worker reads the checkpoints back); here nothing committed. */
    group_batch(&b, 1, 60, 10, "{}");
    g.h[1].kill = true;
    ck_assert_int_eq(group_write(&g, &a, &b), -1);
    ck_assert_msg(g.err[0], "no message");
    ck_assert_int_eq(g.h[0].queued[0] + g.h[1].queued[0], 2);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(*) FROM app.events"), 180);
    ck_assert_int_eq(q_int(g.f.conn, "SELECT count(*) FROM marker"), 5);

    for (int i = 0; i < 2; i++)
        res_free(&g.res[i]);
    res_free(&res);
    g.f.sink->type->part_close(g.f.sink, g.part1);
    PQfinish(conn);
    fx_close(&g.f);
}
END_TEST

/*
 * write_method auto measures both ways on the connection (COPY, preferred,
 * and the pipelined INSERT) for each size of batch and commits every batch
 * either way; a forced method never tries the other.
 */
START_TEST(test_write_method_measured)
{
    for (int forced = 0; forced < 2; forced++) {
        struct fx f;
        fx_init(&f, forced ? "t_measured_f" : "t_measured");
        fx_open(&f, forced ? "{\"type\": \"postgres\", \"table\": \"ev\", \"write_method\": "
                             "\"copy\"}"
                           : "{\"type\": \"postgres\", \"table\": \"ev\"}");
        struct hook_state h = {.conn = hx_pg_connect(f.dsn), .pipelined = true};
        struct sc_batch_result res = {0};
        for (int batch = 0; batch < 10; batch++) {
            struct recs rs = {.n = 0};
            for (int i = 0; i < 50; i++)
                recs_add(&rs, 0, batch * 50 + i, "k", "{\"x\": 1}");
            ck_assert_int_eq(fx_write(&f, &rs, &h, &res, false), SC_SINK_OK);
        }
        ck_assert_int_eq(h.queued[2], 10);
        ck_assert_int_eq(h.calls, 0);
        ck_assert_int_eq(q_int(f.conn, "SELECT count(DISTINCT \"offset\") FROM ev"), 500);
        const struct pg_ctx *c = f.sink->ctx;
        const struct sc_pick_way *w = c->pick.way[sc_pick_class(50)];
        if (forced) {
            ck_assert_uint_eq(w[0].samples, 10); /* COPY */
            ck_assert_uint_eq(w[1].samples, 0);
        } else {
            ck_assert_uint_ge(w[0].samples, SC_PICK_WARMUP); /* COPY, preferred */
            ck_assert_uint_ge(w[1].samples, 1);
            ck_assert_uint_eq(w[0].samples + w[1].samples, 10);
            ck_assert_int_ge(sc_pick_best(&c->pick, 50), 0);
        }
        res_free(&res);
        PQfinish(h.conn);
        fx_close(&f);
    }
}
END_TEST

/*
 * Poison rows: a jsonb value the server refuses ("\u0000") and values that
 * break a CHECK constraint are isolated, one dead letter each, the others
 * are written, in both databases' modes.
 */
static void poison_run(bool other_db, bool pipelined)
{
    struct fx f;
    fx_init(&f, other_db ? "t_poison_o" : pipelined ? "t_poison_p" : "t_poison_s");
    PGconn *target = other_db ? f.sink_conn : f.conn;
    hx_pg_exec(target, "CREATE TABLE orders (id text PRIMARY KEY, amount numeric CHECK (amount "
                       ">= 0), note text, src_part int, src_off bigint)");
    char sink[1024];
    snprintf(sink, sizeof(sink),
             "{\"type\": \"postgres\", %s%s%s \"table\": \"orders\", \"mode\": \"upsert\","
             " \"columns\": {\"id\": \"$.id\", \"amount\": \"$.amount\", \"note\": \"$.note\","
             " \"src_part\": \"$partition\", \"src_off\": \"$offset\"},"
             " \"key_columns\": [\"id\"]}",
             other_db ? "\"dsn\": \"" : "", other_db ? f.sink_dsn : "", other_db ? "\"," : "");
    fx_open(&f, sink);

    struct recs rs = {.n = 0};
    bool bad[100] = {false};
    for (int i = 0; i < 100; i++) {
        char v[128], k[16];
        int amount = i;
        const char *note = "ok";
        if (i == 0 || i == 37 || i == 38 || i == 99) {
            amount = -1; /* CHECK */
            bad[i] = true;
        }
        if (i == 64) {
            note = "nul\\u0000byte"; /* jsonb refuses it */
            bad[i] = true;
        }
        snprintf(v, sizeof(v), "{\"id\": \"o%d\", \"amount\": %d, \"note\": \"%s\"}", i, amount,
                 note);
        snprintf(k, sizeof(k), "k%d", i);
        recs_add(&rs, 0, i, k, v);
    }
    /* A dead letter found while encoding (not JSON) keeps a batch off the pipeline. */
    size_t ndead = pipelined ? 5 : 6;
    if (!pipelined)
        recs_add(&rs, 0, 100, "k100", "this is not JSON"); /* no "$." column can come from it */
    struct hook_state h = {.conn = f.conn, .pipelined = pipelined};
    struct sc_batch_result res = {0};
    ck_assert_int_eq(fx_write(&f, &rs, other_db ? NULL : &h, &res, false), SC_SINK_OK);
    /* pipelined: the INSERT failed on a row, so nothing was committed; commit() took over */
    ck_assert_int_eq(h.queued[1], pipelined);
    ck_assert_int_eq(h.queued[0] + h.queued[2], 0);
    ck_assert_int_eq(h.calls, other_db ? 0 : 1);
    ck_assert_int_eq(res.ndead, ndead);
    bool seen[101] = {false};
    for (size_t i = 0; i < res.ndead; i++) {
        size_t at = res.dead[i].index;
        ck_assert_msg(at == 100 || bad[at], "record %zu dead-lettered: %s", at, res.dead[i].error);
        ck_assert(!seen[at]);
        seen[at] = true;
        const char *want = at == 100  ? "not a JSON document"
                           : at == 64 ? "Unicode"
                                      : "check constraint";
        ck_assert_msg(strstr(res.dead[i].error, want), "record %zu: %s", at, res.dead[i].error);
    }
    if (!other_db)
        ck_assert_int_eq(h.ndead, ndead); /* the hook got them to store with the checkpoint */
    ck_assert_int_eq(q_int(target, "SELECT count(*) FROM orders"), 95);
    ck_assert_int_eq(q_int(target, "SELECT count(*) FROM orders WHERE amount < 0"), 0);

    /* The same batch written again (a replay) finds the same records, nothing else. */
    ck_assert_int_eq(fx_write(&f, &rs, other_db ? NULL : &h, &res, true), SC_SINK_OK);
    ck_assert_int_eq(res.ndead, ndead);
    ck_assert_int_eq(q_int(target, "SELECT count(*) FROM orders"), 95);
    res_free(&res);
    fx_close(&f);
}

START_TEST(test_poison_same_db)
{
    poison_run(false, _i == 1);
}
END_TEST

START_TEST(test_poison_other_db)
{
    poison_run(true, false);
}
END_TEST

/* Two records of one batch with the same key: no "cannot affect row a second time". */
START_TEST(test_duplicate_keys_in_batch)
{
    static const char *const modes[] = {"upsert", "insert_ignore", "insert"};
    for (size_t m = 0; m < 3; m++) {
        struct fx f;
        char name[32];
        snprintf(name, sizeof(name), "t_dup_%zu", m);
        fx_init(&f, name);
        char sink[512];
        snprintf(sink, sizeof(sink),
                 "{\"type\": \"postgres\", \"table\": \"kv\", \"mode\": \"%s\","
                 " \"columns\": {\"id\": \"$.id\", \"v\": \"$.v\", \"off\": \"$offset\"},"
                 " \"key_columns\": [\"id\"]}",
                 modes[m]);
        fx_open(&f, sink);
        struct recs rs = {.n = 0};
        const char *vals[] = {"{\"id\": 1, \"v\": \"a\"}", "{\"id\": 2, \"v\": \"x\"}",
                              "{\"id\": 1, \"v\": \"b\"}", "{\"id\": 1, \"v\": \"c\"}",
                              "{\"v\": \"no id\"}",        "{\"v\": \"no id either\"}"};
        for (int i = 0; i < 6; i++)
            recs_add(&rs, 0, i, "k", vals[i]);
        struct hook_state h = {.conn = f.conn};
        struct sc_batch_result res = {0};
        ck_assert_int_eq(fx_write(&f, &rs, &h, &res, false), SC_SINK_OK);
        /* records without an id cannot be rows: a NULL key (primary key column) */
        size_t want_dead = m == 2 ? 4 : 2;
        ck_assert_msg(res.ndead == want_dead, "mode %s: %zu dead letters", modes[m], res.ndead);
        const char *want_v = m == 0 ? "c" : "a";
        char *got = q_str(f.conn, "SELECT v || '@' || off FROM kv WHERE id = '1'");
        char want[16];
        snprintf(want, sizeof(want), "%s@%d", want_v, m == 0 ? 3 : 0);
        ck_assert_msg(strcmp(got, want) == 0, "mode %s: %s, want %s", modes[m], got, want);
        free(got);
        ck_assert_int_eq(q_int(f.conn, "SELECT count(*) FROM kv"), 2);
        res_free(&res);
        fx_close(&f);
    }
}
END_TEST

/*
 * Another database, upsert: a late replay of an older batch (a fenced owner
 * finishing its write) never overwrites a newer row of the same partition.
 */
START_TEST(test_stale_replay_other_db)
{
    struct fx f;
    fx_init(&f, "t_stale");
    char sink[1024];
    snprintf(sink, sizeof(sink),
             "{\"type\": \"postgres\", \"dsn\": \"%s\", \"table\": \"s.kv\", \"mode\": \"upsert\","
             " \"columns\": {\"id\": \"$.id\", \"v\": \"$.v\", \"src_partition\": \"$partition\","
             " \"src_offset\": \"$offset\"}, \"key_columns\": [\"id\"]}",
             f.sink_dsn);
    fx_open(&f, sink);
    ck_assert(!(f.sink->flags & SC_SINK_F_TRANSACTIONAL));

    struct recs newer = {.n = 0}, older = {.n = 0}, other_part = {.n = 0};
    recs_add(&newer, 0, 10, "k", "{\"id\": 1, \"v\": \"new\"}");
    recs_add(&older, 0, 4, "k", "{\"id\": 1, \"v\": \"old\"}");
    recs_add(&older, 0, 5, "k", "{\"id\": 2, \"v\": \"only\"}");
    struct sc_batch_result res = {0};
    ck_assert_int_eq(fx_write(&f, &newer, NULL, &res, false), SC_SINK_OK);
    ck_assert_int_eq(fx_write(&f, &older, NULL, &res, true), SC_SINK_OK);
    ck_assert_int_eq(res.ndead, 0);
    assert_str(f.sink_conn, "SELECT v || '@' || src_offset FROM s.kv WHERE id = '1'", "new@10");
    assert_str(f.sink_conn, "SELECT v FROM s.kv WHERE id = '2'", "only");
    /* The same offset again (a replay of the newer batch itself) applies. */
    hx_pg_exec(f.sink_conn, "UPDATE s.kv SET v = 'tampered' WHERE id = '1'");
    ck_assert_int_eq(fx_write(&f, &newer, NULL, &res, true), SC_SINK_OK);
    assert_str(f.sink_conn, "SELECT v FROM s.kv WHERE id = '1'", "new");
    /* Offsets of different partitions are not ordered: the later write wins. */
    f.ref.partition = 1;
    recs_add(&other_part, 1, 2, "k", "{\"id\": 1, \"v\": \"from p1\"}");
    ck_assert_int_eq(fx_write(&f, &other_part, NULL, &res, false), SC_SINK_OK);
    assert_str(f.sink_conn, "SELECT v || '@' || src_partition FROM s.kv WHERE id = '1'",
               "from p1@1");
    res_free(&res);
    fx_close(&f);
}
END_TEST

/* Default columns in another database: a replayed batch overwrites itself. */
START_TEST(test_default_other_db_replay)
{
    struct fx f;
    fx_init(&f, "t_defo");
    char sink[1024];
    snprintf(sink, sizeof(sink),
             "{\"type\": \"postgres\", \"dsn\": \"%s\", \"table\": \"ev\", \"mode\": \"upsert\","
             " \"value_type\": \"text\", \"key_type\": \"bytea\"}",
             f.sink_dsn);
    fx_open(&f, sink);
    struct recs rs = {.n = 0};
    for (int i = 0; i < 50; i++)
        recs_add(&rs, 0, i, "key", "plain text");
    rs.r[7].value = "\xff\xfe binary";
    rs.r[7].value_len = 9;
    struct sc_batch_result res = {0};
    ck_assert_int_eq(fx_write(&f, &rs, NULL, &res, false), SC_SINK_OK);
    ck_assert_int_eq(fx_write(&f, &rs, NULL, &res, true), SC_SINK_OK);  /* replay */
    ck_assert_int_eq(fx_write(&f, &rs, NULL, &res, false), SC_SINK_OK); /* COPY conflicts */
    ck_assert_int_eq(res.ndead, 0);
    ck_assert_int_eq(q_int(f.sink_conn, "SELECT count(*) FROM ev"), 50);
    assert_str(f.sink_conn, "SELECT value FROM ev WHERE \"offset\" = 3", "plain text");
    /* text that is not UTF-8: the envelope's base64 form */
    assert_str(f.sink_conn, "SELECT value FROM ev WHERE \"offset\" = 7",
               "{\"base64\":\"//4gYmluYXJ5\"}");
    assert_str(f.sink_conn, "SELECT encode(key, 'escape') FROM ev WHERE \"offset\" = 7", "key");
    res_free(&res);
    fx_close(&f);
}
END_TEST

/*
 * insert with custom columns in another database: a replay overwrites its
 * own rows, a record whose key holds another record's row is a dead letter.
 */
START_TEST(test_insert_other_db)
{
    struct fx f;
    fx_init(&f, "t_inso");
    char sink[1024];
    snprintf(sink, sizeof(sink),
             "{\"type\": \"postgres\", \"dsn\": \"%s\", \"table\": \"kv\", \"mode\": \"insert\","
             " \"columns\": {\"id\": \"$.id\", \"v\": \"$.v\", \"p\": \"$partition\","
             " \"o\": \"$offset\"}, \"key_columns\": [\"id\"]}",
             f.sink_dsn);
    fx_open(&f, sink);
    struct recs rs = {.n = 0};
    recs_add(&rs, 0, 0, "k", "{\"id\": 1, \"v\": \"first\"}");
    recs_add(&rs, 0, 1, "k", "{\"id\": 2, \"v\": \"x\"}");
    recs_add(&rs, 0, 2, "k", "{\"id\": 1, \"v\": \"second\"}");
    struct sc_batch_result res = {0};
    for (int round = 0; round < 2; round++) {
        ck_assert_int_eq(fx_write(&f, &rs, NULL, &res, round > 0), SC_SINK_OK);
        ck_assert_int_eq(res.ndead, 1);
        ck_assert_int_eq(res.dead[0].index, 2);
        ck_assert_msg(strstr(res.dead[0].error, "duplicate key"), "%s", res.dead[0].error);
        assert_str(f.sink_conn, "SELECT v FROM kv WHERE id = '1'", "first");
    }
    res_free(&res);
    fx_close(&f);
}
END_TEST

/*
 * Identifiers from the config are quoted, never pasted: reserved words and
 * mixed case (which unquoted SQL would reject or fold) name the schema, the
 * table and the columns, created by the sink and written in both modes.
 * Names with quotes, spaces or semicolons never reach SQL: the config
 * refuses them, naming the key.
 */
START_TEST(test_identifiers_quoted)
{
    struct fx f;
    fx_init(&f, "t_ident");
    hx_pg_exec(f.conn, "CREATE SCHEMA \"Select\"");
    fx_open(&f, "{\"type\": \"postgres\", \"table\": \"Select.order\", \"create_table\": true}");
    struct recs rs = {.n = 0};
    recs_add(&rs, 0, 0, "k0", "{\"id\": 1, \"v\": \"a\"}");
    recs_add(&rs, 0, 1, "k1", "{\"id\": 1, \"v\": \"b\"}");
    struct hook_state h = {.conn = hx_pg_connect(f.dsn)};
    struct sc_batch_result res = {0};
    ck_assert_int_eq(fx_write(&f, &rs, &h, &res, false), SC_SINK_OK);
    ck_assert_int_eq(q_int(f.conn, "SELECT count(*) FROM \"Select\".\"order\""), 2);
    res_free(&res);
    PQfinish(h.conn);
    fx_close(&f);

    struct fx g;
    fx_init(&g, "t_ident2");
    char sink[1024];
    snprintf(sink, sizeof(sink),
             "{\"type\": \"postgres\", \"dsn\": \"%s\", \"table\": \"Table\", \"create_table\": "
             "true, \"mode\": \"upsert\", \"columns\": {\"From\": \"$.id\", \"where\": \"$.v\","
             " \"Group\": \"$partition\", \"Limit\": \"$offset\"},"
             " \"key_columns\": [\"From\"]}",
             g.sink_dsn);
    fx_open(&g, sink);
    struct sc_batch_result res2 = {0};
    ck_assert_int_eq(fx_write(&g, &rs, NULL, &res2, false), SC_SINK_OK);
    ck_assert_int_eq(res2.ndead, 0);
    assert_str(g.sink_conn, "SELECT concat_ws('|', \"From\", \"where\") FROM \"Table\"", "1|b");
    res_free(&res2);
    fx_close(&g);

    static const char *const hostile[] = {
        "{\"type\": \"postgres\", \"table\": \"a b\"}",
        "{\"type\": \"postgres\", \"table\": \"t\\\"; DROP TABLE x; --\"}",
        "{\"type\": \"postgres\", \"table\": \"s.t.u\"}",
        "{\"type\": \"postgres\", \"table\": \"t\", \"columns\": {\"a'b\": \"$.id\"},"
        " \"key_columns\": [\"a'b\"]}",
    };
    for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
        char doc[2048], err[1024] = "";
        snprintf(doc, sizeof(doc),
                 "{\"instance_id\": \"t\", \"postgres\": {\"dsn\": \"host=x\"},"
                 " \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:1\"},"
                 " \"pipelines\": [{\"name\": \"p1\", \"topics\": [\"orders\"], \"sink\": %s}]}",
                 hostile[i]);
        struct sc_config *cfg = NULL;
        ck_assert_msg(sc_config_load_string("t.json", doc, &sc_sinks, &cfg, err, sizeof(err)) != 0,
                      "accepted: %s", hostile[i]);
        ck_assert_msg(strstr(err, "pipelines[0].sink.") != NULL, "%s", err);
    }
}
END_TEST

/* redrive: each record on its own, ok[] / errors[] per record. */
START_TEST(test_redrive)
{
    struct fx f;
    fx_init(&f, "t_redrive");
    hx_pg_exec(f.conn, "CREATE TABLE orders (id text PRIMARY KEY, amount numeric CONSTRAINT "
                       "positive CHECK (amount >= 0))");
    fx_open(&f, "{\"type\": \"postgres\", \"table\": \"orders\", \"mode\": \"upsert\","
                " \"columns\": {\"id\": \"$.id\", \"amount\": \"$.amount\"},"
                " \"key_columns\": [\"id\"]}");
    struct recs rs = {.n = 0};
    recs_add(&rs, 0, 0, "k", "{\"id\": \"a\", \"amount\": -5}");
    recs_add(&rs, 0, 1, "k", "{\"id\": \"b\", \"amount\": -7}");
    recs_add(&rs, 0, 2, "k", "not json");
    bool ok[3];
    char *errors[3];
    char err[512] = "";
    ck_assert_int_eq(f.sink->type->redrive(f.sink, rs.r, 3, ok, errors, err, sizeof(err)),
                     SC_SINK_OK);
    for (int i = 0; i < 3; i++) {
        ck_assert(!ok[i]);
        ck_assert_ptr_nonnull(errors[i]);
        free(errors[i]);
    }
    /* The operator fixes the cause; the constraint-violating records go through. */
    hx_pg_exec(f.conn, "ALTER TABLE orders DROP CONSTRAINT positive");
    ck_assert_int_eq(f.sink->type->redrive(f.sink, rs.r, 3, ok, errors, err, sizeof(err)),
                     SC_SINK_OK);
    ck_assert(ok[0] && ok[1] && !ok[2]);
    ck_assert_ptr_null(errors[0]);
    ck_assert_msg(strstr(errors[2], "not a JSON document"), "%s", errors[2]);
    free(errors[2]);
    ck_assert_int_eq(q_int(f.conn, "SELECT sum(amount) FROM orders"), -12);
    fx_close(&f);
}
END_TEST

/* A table or config that cannot work: a clear message, the partition in the error state. */
START_TEST(test_config_errors)
{
    char err[1024];
    struct fx f;
    fx_init(&f, "t_cfgerr");

    /* missing table, create_table false -> -2 (error state) with what to do */
    err[0] = '\0';
    ck_assert_int_eq(fx_sink(&f,
                             "{\"type\": \"postgres\", \"table\": \"app.missing\","
                             " \"create_table\": false}",
                             err, sizeof(err)),
                     0);
    ck_assert_int_eq(fx_recover(&f, err, sizeof(err)), -2);
    ck_assert_msg(strstr(err, "\"app\".\"missing\" does not exist and create_table is false"), "%s",
                  err);
    f.sink->type->part_close(f.sink, f.part);
    sc_sink_free(f.sink);
    f.sink = NULL;
    sc_config_free(f.cfg);
    f.cfg = NULL;

    /* the table exists with a value column of another type than value_type */
    hx_pg_exec(f.conn, "CREATE TABLE ev (topic text, partition int, \"offset\" bigint, key text, "
                       "value text, headers jsonb, ts timestamptz, "
                       "PRIMARY KEY (topic, partition, \"offset\"))");
    ck_assert_int_eq(fx_sink(&f, "{\"type\": \"postgres\", \"table\": \"ev\"}", err, sizeof(err)),
                     0);
    ck_assert_int_eq(fx_recover(&f, err, sizeof(err)), -2);
    ck_assert_msg(strstr(err, "table \"ev\" has column \"value\" of type text") &&
                      strstr(err, "value_type"),
                  "%s", err);
    f.sink->type->part_close(f.sink, f.part);
    sc_sink_free(f.sink);
    f.sink = NULL;
    sc_config_free(f.cfg);
    f.cfg = NULL;

    /* key_columns without a unique index on them */
    hx_pg_exec(f.conn, "CREATE TABLE nokey (id text, v text)");
    ck_assert_int_eq(fx_sink(&f,
                             "{\"type\": \"postgres\", \"table\": \"nokey\", \"mode\": \"upsert\","
                             " \"columns\": {\"id\": \"$.id\", \"v\": \"$.v\"},"
                             " \"key_columns\": [\"id\"]}",
                             err, sizeof(err)),
                     0);
    ck_assert_int_eq(fx_recover(&f, err, sizeof(err)), -2);
    ck_assert_msg(strstr(err, "no unique index on exactly (\"id\")"), "%s", err);
    f.sink->type->part_close(f.sink, f.part);
    sc_sink_free(f.sink);
    f.sink = NULL;
    sc_config_free(f.cfg);
    f.cfg = NULL;

    /* a column the table lacks, and (still) no unique index: both problems at once, so that
     * fixing one does not just reveal the next at the following start */
    ck_assert_int_eq(fx_sink(&f,
                             "{\"type\": \"postgres\", \"table\": \"nokey\", \"mode\": \"upsert\","
                             " \"columns\": {\"id\": \"$.id\", \"w\": \"$.w\"},"
                             " \"key_columns\": [\"id\"]}",
                             err, sizeof(err)),
                     0);
    ck_assert_int_eq(fx_recover(&f, err, sizeof(err)), -2);
    ck_assert_msg(strstr(err, "table \"nokey\" has 2 problems: (1) no column \"w\"") &&
                      strstr(err, "(2) no unique index on exactly (\"id\")"),
                  "%s", err);
    f.sink->type->part_close(f.sink, f.part);
    sc_sink_free(f.sink);
    f.sink = NULL;
    sc_config_free(f.cfg);
    f.cfg = NULL;

    /* another database, upsert with custom columns but no source position: refused by the
     * config check already (so `sidecar check-config` says it, not only `run`) */
    char sink[1024], doc[2048];
    snprintf(sink, sizeof(sink),
             "{\"type\": \"postgres\", \"dsn\": \"%s\", \"table\": \"kv\", \"mode\": \"upsert\","
             " \"columns\": {\"id\": \"$.id\", \"v\": \"$.v\"}, \"key_columns\": [\"id\"]}",
             f.sink_dsn);
    snprintf(doc, sizeof(doc),
             "{\"postgres\": {\"dsn\": \"%s\"}, \"kafka\": {\"bootstrap.servers\": \"k:1\"},"
             " \"pipelines\": [{\"name\": \"p1\", \"topics\": [\"orders\"], \"sink\": %s}]}",
             f.dsn, sink);
    err[0] = '\0';
    struct sc_config *bad = NULL;
    ck_assert_int_eq(sc_config_load_string("t.json", doc, &sc_sinks, &bad, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "pipelines[0].sink.columns: ") &&
                      strstr(err, "\"$partition\" and \"$offset\"") && strstr(err, "insert_ignore"),
                  "%s", err);

    /* the sink database is down: retry (-1), not an error state */
    snprintf(sink, sizeof(sink),
             "{\"type\": \"postgres\", \"dsn\": \"host=127.0.0.1 port=1 dbname=x\","
             " \"table\": \"kv\"}");
    ck_assert_int_eq(fx_sink(&f, sink, err, sizeof(err)), 0);
    ck_assert_int_eq(fx_recover(&f, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "could not connect"), "%s", err);
    fx_close(&f);
}
END_TEST

/* Workers and instances starting together all create the same table: none fails. */
struct racer {
    struct fx *f;
    int rc;
    char err[1024];
};

static void *race(void *arg)
{
    struct racer *r = arg;
    struct sc_sink *s = sc_sink_new(r->f->cfg, &r->f->cfg->pipelines[0], 0, r->err, 1024);
    struct sc_sink_part *p = NULL;
    r->rc = -1;
    if (s && s->type->part_open(s, &r->f->ref, &p, r->err, 1024) == 0) {
        r->rc = s->type->part_recover(s, p, 0, NULL, NULL, r->err, 1024);
        s->type->part_close(s, p);
    }
    sc_sink_free(s);
    return NULL;
}

START_TEST(test_create_table_race)
{
    struct fx f;
    fx_init(&f, "t_race");
    char err[1024];
    ck_assert_int_eq(
        fx_sink(&f, "{\"type\": \"postgres\", \"table\": \"fresh.events\"}", err, sizeof(err)), 0);
    enum {
        N = 8
    };
    struct racer rs[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        rs[i] = (struct racer){.f = &f};
        pthread_create(&th[i], NULL, race, &rs[i]);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ck_assert_msg(rs[i].rc == 0, "racer %d: %s", i, rs[i].err);
    }
    ck_assert_int_eq(q_int(f.conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'events'"), 1);
    fx_close(&f);
}
END_TEST

/*
 * The table vanishes under a running sink: the batch fails with the
 * server's reason (partition error state), and once the partition is
 * retried the sink looks at the catalog again and, with create_table,
 * makes the table anew.
 */
START_TEST(test_table_dropped)
{
    bool pipelined = _i == 1; /* the pipelined INSERT (_i == 2: COPY, with queue() offered) */
    struct fx f;
    char name[32];
    snprintf(name, sizeof(name), "t_dropped_%d", _i);
    fx_init(&f, name);
    fx_open(&f, _i == 1 ? "{\"type\": \"postgres\", \"table\": \"ev\", \"write_method\": "
                          "\"pipeline\"}"
                        : "{\"type\": \"postgres\", \"table\": \"ev\"}");
    struct recs rs = {.n = 0};
    recs_add(&rs, 0, 0, "k", "{}");
    struct hook_state h = {.conn = hx_pg_connect(f.dsn), .pipelined = _i > 0};
    struct sc_batch_result res = {0};
    ck_assert_int_eq(fx_write(&f, &rs, &h, &res, false), SC_SINK_OK);
    hx_pg_exec(f.conn, "DROP TABLE ev");
    ck_assert_int_eq(fx_write(&f, &rs, &h, &res, false), SC_SINK_ERROR);
    ck_assert_int_eq(PQtransactionStatus(h.conn), PQTRANS_IDLE);
    ck_assert_int_eq(PQpipelineStatus(h.conn), PQ_PIPELINE_OFF);
    ck_assert_int_eq(h.queued[1], pipelined); /* the pipelined INSERT failed, nothing committed */
    ck_assert_int_eq(fx_write(&f, &rs, &h, &res, false), SC_SINK_OK);
    ck_assert_int_eq(q_int(f.conn, "SELECT count(*) FROM ev"), 1);
    res_free(&res);
    PQfinish(h.conn);
    fx_close(&f);
}
END_TEST

/*
 * Envelopes go into dead_letters.envelope (jsonb): the escapes jsonb
 * refuses are replaced, everything else is kept byte for byte.
 */
START_TEST(test_jsonb_safe_envelope)
{
    static const char *const cases[][2] = {
        {"{\"v\":\"a\\u0000b\"}", "{\"v\":\"a\\ufffdb\"}"},
        {"[\"\\ud800\",\"\\udc00x\",\"\\uD83D\\uDE00\"]",
         "[\"\\ufffd\",\"\\ufffdx\",\"\\uD83D\\uDE00\"]"},
        {"\"\\\\u0000\"", NULL}, /* an escaped backslash, then text */
        {"\"\\ud83d\\u0041\"", "\"\\ufffd\\u0041\""},
        {"{\"plain\":1}", NULL},
    };
    PGconn *c = hx_pg_connect(pg.dsn);
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        char *safe = sc_json_jsonb_safe(cases[i][0]);
        if (!cases[i][1]) {
            ck_assert_msg(safe == NULL, "case %zu changed: %s", i, safe);
            continue;
        }
        ck_assert_msg(safe && strcmp(safe, cases[i][1]) == 0, "case %zu: %s", i,
                      safe ? safe : "NULL");
        const char *p[] = {safe};
        PGresult *r = PQexecParams(c, "SELECT $1::jsonb", 1, NULL, p, NULL, NULL, 0);
        ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "case %zu: %s", i, PQerrorMessage(c));
        PQclear(r);
        free(safe);
    }
    PQfinish(c);
}
END_TEST

/* ---- e2e cases ------------------------------------------------------------ */

static const char *log_of(const struct scx_env *e, const char *name)
{
    static char path[700];
    snprintf(path, sizeof(path), "%s/%s.log", e->dir, name);
    return path;
}

/*
 * Poison records through the real pipeline: exactly those land in
 * sidecar.dead_letters (envelope and error), all others in the table, and
 * the checkpoint moves past them.
 */
START_TEST(test_e2e_dead_letters)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    hx_pg_exec(e.conn, "CREATE SCHEMA app");
    hx_pg_exec(e.conn, "CREATE TABLE app.orders (id bigint PRIMARY KEY, amount numeric NOT NULL "
                       "CHECK (amount >= 0), note text)");
    struct scx_opts o = {
        .sink = "{\"type\": \"postgres\", \"table\": \"app.orders\", \"mode\": \"upsert\","
                " \"create_table\": false, \"columns\": {\"id\": \"$.id\","
                " \"amount\": \"$.amount\", \"note\": \"$.note\"}, \"key_columns\": [\"id\"]}",
        .max_records = 64,
    };
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);

    enum {
        N = 300
    };
    static struct hx_record recs[N];
    static char vals[N][128];
    int ndead = 0;
    for (int i = 0; i < N; i++) {
        bool negative = i % 47 == 5, nul = i % 61 == 30;
        snprintf(vals[i], sizeof(vals[i]), "{\"id\": %d, \"amount\": %d, \"note\": \"%s\"}", i,
                 negative ? -i : i, nul ? "bad \\u0000" : "fine");
        ndead += negative || nul;
        recs[i] = (struct hx_record){.topic = "orders",
                                     .partition = i % 2,
                                     .key = "k",
                                     .key_len = 1,
                                     .value = vals[i],
                                     .value_len = strlen(vals[i])};
    }
    hx_produce(e.mock.bootstrap, recs, N);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 2, N / 2, 60000), "not committed:\n%s",
                  scx_log_tail(log_of(&e, "sc-1"), 4000));
    scx_stop(pid, 15000);

    ck_assert_int_eq(q_int(e.conn, "SELECT count(*) FROM app.orders"), N - ndead);
    ck_assert_int_eq(q_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters"), ndead);
    /* exactly the poison ones, each with its envelope and the server's reason */
    ck_assert_int_eq(q_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters WHERE pipeline = 'p1'"
                                   " AND (envelope->'value'->>'amount')::int < 0"
                                   " AND error LIKE '%check constraint%' AND status = 'new'"
                                   " AND (envelope->>'offset')::bigint = \"offset\""),
                     q_int(e.conn, "SELECT count(*) FROM generate_series(0, 299) i"
                                   " WHERE i % 47 = 5 AND i % 61 <> 30"));
    ck_assert_int_eq(q_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters"
                                   " WHERE error LIKE '%Unicode%'"
                                   " AND envelope->'value'->>'note' LIKE 'bad%'"),
                     q_int(e.conn, "SELECT count(*) FROM generate_series(0, 299) i"
                                   " WHERE i % 61 = 30"));
    ck_assert_int_eq(q_int(e.conn, "SELECT count(*) FROM app.orders o JOIN sidecar.dead_letters "
                                   "d ON (d.envelope->'value'->>'id')::bigint = o.id"),
                     0);
    scx_env_stop(&e);
}
END_TEST

/* upsert with duplicate keys in one batch: no error, the last record per key wins. */
START_TEST(test_e2e_duplicate_keys)
{
    struct scx_env e;
    const char *topics[] = {"orders:1"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {
        .sink = "{\"type\": \"postgres\", \"table\": \"latest\", \"mode\": \"upsert\","
                " \"columns\": {\"id\": \"$.id\", \"v\": \"$.v\", \"off\": \"$offset\"},"
                " \"key_columns\": [\"id\"]}",
        .max_records = 1000,
        .max_wait_ms = 500,
    };
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    enum {
        N = 200
    };
    static struct hx_record recs[N];
    static char vals[N][64];
    for (int i = 0; i < N; i++) {
        snprintf(vals[i], sizeof(vals[i]), "{\"id\": %d, \"v\": %d}", i % 10, i);
        recs[i] = (struct hx_record){
            .topic = "orders", .partition = 0, .value = vals[i], .value_len = strlen(vals[i])};
    }
    hx_produce(e.mock.bootstrap, recs, N); /* before the start: one batch of 200 */
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 1, N, 60000), "not committed:\n%s",
                  scx_log_tail(log_of(&e, "sc-1"), 4000));
    scx_stop(pid, 15000);
    ck_assert_int_eq(q_int(e.conn, "SELECT count(*) FROM latest"), 10);
    ck_assert_int_eq(q_int(e.conn, "SELECT count(*) FROM latest WHERE v::int = 190 + id::int "
                                   "AND off::int = v::int"),
                     10);
    ck_assert_int_eq(q_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters"), 0);
    ck_assert_int_le(q_int(e.conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'commit'"), 2);
    scx_env_stop(&e);
}
END_TEST

/* A missing table with create_table false: each partition in the error state, no crash. */
START_TEST(test_e2e_missing_table)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {
        .sink = "{\"type\": \"postgres\", \"table\": \"app.nowhere\", \"create_table\": false}",
    };
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 10);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    bool errored = false;
    for (int i = 0; i < 300 && !errored; i++) {
        errored = q_int(e.conn, "SELECT count(*) FROM sidecar.checkpoints WHERE state = 'error' "
                                "AND error LIKE '%\"app\".\"nowhere\" does not exist and "
                                "create_table is false%'") == 2;
        if (!errored)
            usleep(100000);
    }
    ck_assert_msg(errored, "partitions not in the error state:\n%s",
                  scx_log_tail(log_of(&e, "sc-1"), 4000));
    ck_assert(hx_pid_alive(pid));
    ck_assert_int_eq(q_int(e.conn, "SELECT count(*) FROM sidecar.checkpoints "
                                   "WHERE committed_offset > 0"),
                     0);
    scx_stop(pid, 15000);
    scx_env_stop(&e);
}
END_TEST

/*
 * Another database: a newer row (an update from a later offset) is already
 * in the table when older records are delivered and replayed after a crash
 * between write and commit: the newer row stays.
 */
START_TEST(test_e2e_other_db_stale_replay)
{
    struct scx_env e;
    const char *topics[] = {"orders:1"};
    scx_env_start(&e, 1, topics, 1);
    char sink_dsn[512], sink[1024];
    hx_pg_create_db(&e.pg, "target", sink_dsn, sizeof(sink_dsn));
    PGconn *t = hx_pg_connect(sink_dsn);
    hx_pg_exec(t, "CREATE TABLE kv (id int PRIMARY KEY, v text, part int, off bigint)");
    hx_pg_exec(t, "INSERT INTO kv VALUES (3, 'newer', 0, 1000)");
    snprintf(sink, sizeof(sink),
             "{\"type\": \"postgres\", \"dsn\": \"%s\", \"table\": \"kv\", \"mode\": \"upsert\","
             " \"columns\": {\"id\": \"$.id\", \"v\": \"$.v\", \"part\": \"$partition\","
             " \"off\": \"$offset\"}, \"key_columns\": [\"id\"]}",
             sink_dsn);
    struct scx_opts o = {.sink = sink, .max_records = 10};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    enum {
        N = 40
    };
    static struct hx_record recs[N];
    static char vals[N][64];
    for (int i = 0; i < N; i++) {
        snprintf(vals[i], sizeof(vals[i]), "{\"id\": %d, \"v\": \"v%d\"}", i % 8, i);
        recs[i] = (struct hx_record){
            .topic = "orders", .partition = 0, .value = vals[i], .value_len = strlen(vals[i])};
    }
    hx_produce(e.mock.bootstrap, recs, N);
    /* killed after its first sink write, before the commit: the restart replays that batch */
    pid_t pid = scx_start(&e, cfg, "sc-1", "after_write=kill#1");
    ck_assert_int_eq(hx_wait(pid, 60000), 128 + SIGKILL);
    ck_assert_int_eq(q_int(e.conn, "SELECT count(*) FROM sidecar.checkpoints "
                                   "WHERE pending_first_offset IS NOT NULL"),
                     1);
    pid = scx_start(&e, cfg, "sc-1b", NULL);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 1, N, 60000), "not committed:\n%s",
                  scx_log_tail(log_of(&e, "sc-1b"), 4000));
    scx_stop(pid, 15000);
    ck_assert_int_ge(q_int(e.conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'replay'"), 1);
    assert_str(t, "SELECT v || '@' || off FROM kv WHERE id = 3", "newer@1000");
    /* every other key holds its last record */
    ck_assert_int_eq(q_int(t, "SELECT count(*) FROM kv WHERE id <> 3 AND v = 'v' || off "
                              "AND off = 32 + id"),
                     7);
    PQfinish(t);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    sc_log_setup(SC_LOG_ERROR, SC_LOG_FORMAT_TEXT);
    Suite *s = suite_create("pg_sink");
    TCase *tc = tcase_create("sink");
    tcase_add_unchecked_fixture(tc, pg_up, pg_down);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_default_same_db, 0, 4);
    tcase_add_test(tc, test_write_method_measured);
    tcase_add_test(tc, test_write_group);
    tcase_add_loop_test(tc, test_poison_same_db, 0, 2);
    tcase_add_test(tc, test_poison_other_db);
    tcase_add_test(tc, test_duplicate_keys_in_batch);
    tcase_add_test(tc, test_stale_replay_other_db);
    tcase_add_test(tc, test_default_other_db_replay);
    tcase_add_test(tc, test_insert_other_db);
    tcase_add_test(tc, test_identifiers_quoted);
    tcase_add_test(tc, test_redrive);
    tcase_add_test(tc, test_config_errors);
    tcase_add_test(tc, test_create_table_race);
    tcase_add_loop_test(tc, test_table_dropped, 0, 3);
    tcase_add_test(tc, test_jsonb_safe_envelope);
    suite_add_tcase(s, tc);

    TCase *e2e = tcase_create("e2e");
    tcase_set_timeout(e2e, 300);
    tcase_add_test(e2e, test_e2e_dead_letters);
    tcase_add_test(e2e, test_e2e_duplicate_keys);
    tcase_add_test(e2e, test_e2e_missing_table);
    tcase_add_test(e2e, test_e2e_other_db_stale_replay);
    suite_add_tcase(s, e2e);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
