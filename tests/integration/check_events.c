/*
 * check_events.c - the commit-ordered event reader (sc_events) and `sidecar
 * watch` against a real PostgreSQL, without a running sidecar: the tests
 * create the schema with `sidecar migrate` and write events themselves,
 * the way the sidecar's checkpoint transactions do.
 *
 *  - commit order (issue 5, test 1): 10 concurrent writers whose
 *    transactions commit out of id order (some open early and commit late,
 *    some roll back); a resumable C reader and the real `sidecar watch`,
 *    killed and disconnected at random and resumed from their last token,
 *    each see every committed event exactly once, in per-partition order,
 *    and no rolled-back one, while a naive "id > last" reader in the same
 *    run misses events;
 *  - snapshot consistency: readers that start at random moments with a
 *    snapshot of the checkpoints continue with exactly the events the
 *    snapshot does not contain;
 *  - expired tokens, --restart-from-snapshot, malformed tokens, filters;
 *  - LISTEN wakes a waiting reader.
 *
 * How these tests were checked to fail: reading "id > last" instead of the
 * xmin horizon (commit order: events lost), dropping the snapshot skip
 * (snapshot: events counted twice), starting after a snapshot at its xmax
 * instead of its xmin (snapshot: events lost), and ignoring event_horizon
 * (expiry: exit 0 instead of 2).
 */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "admin/sc_events.h"
#include "db/sc_pg.h"
#include "hx.h"
#include "scx.h"

static struct hx_pg pg;

static void pg_setup(void)
{
    hx_pg_start(&pg);
}

static void pg_teardown(void)
{
    hx_pg_stop(&pg);
}

struct tenv {
    char dsn[512];
    char dir[512];
    char cfg[700];
    PGconn *conn;
};

/* A database of the test's own with the schema migrated, and a config for the CLI. */
static void tenv_start(struct tenv *t, const char *dbname)
{
    hx_pg_create_db(&pg, dbname, t->dsn, sizeof(t->dsn));
    snprintf(t->dir, sizeof(t->dir), "%s", hx_tmpdir());
    snprintf(t->cfg, sizeof(t->cfg), "%s/sidecar.json", t->dir);
    hx_write_file(
        t->cfg,
        "{\"instance_id\": \"test\",\n"
        " \"postgres\": {\"dsn\": \"%s\"},\n"
        " \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:9\"},\n"
        " \"log\": {\"level\": \"info\", \"format\": \"text\"},\n"
        " \"pipelines\": [\n"
        "  {\"name\": \"p1\", \"topics\": [\"orders\", \"inversion\"],\n"
        "   \"sink\": {\"type\": \"stdout\"}},\n"
        "  {\"name\": \"p2\", \"topics\": [\"billing\"], \"sink\": {\"type\": \"stdout\"}}]}\n",
        t->dsn);
    scx_migrate(t->cfg);
    t->conn = hx_pg_connect(t->dsn);
}

static void tenv_stop(struct tenv *t)
{
    PQfinish(t->conn);
}

static long long insert_event(PGconn *conn, const char *pipeline, const char *topic, int part,
                              long long first)
{
    char p[16], f[32];
    snprintf(p, sizeof(p), "%d", part);
    snprintf(f, sizeof(f), "%lld", first);
    const char *params[] = {pipeline, topic, p, f};
    return hx_pg_int(conn,
                     "INSERT INTO sidecar.events (pipeline, topic, partition, kind, first_offset,"
                     " last_offset) VALUES ($1, $2, $3::int, 'commit', $4::bigint, $4::bigint)"
                     " RETURNING id",
                     4, params);
}

/* The token of position "after (xid, id)" with filter f (e.g. (0, 0): the whole history). */
static char *token_at(uint64_t xid, int64_t id, const struct sc_events_filter *f)
{
    struct sc_events_cursor c;
    sc_events_cursor_init(&c, f);
    sc_events_cursor_seek(&c, xid, id);
    char *tok = sc_events_cursor_token(&c);
    sc_events_cursor_free(&c);
    return tok;
}

static struct sc_events_filter no_filter = {NULL, NULL, -1};

/* ---- `sidecar watch` as a child process ------------------------------------------ */

/* Spawns `sidecar watch -c cfg ARGS...` with stdout appended to out and stderr to err. */
static pid_t watch_spawn(const struct tenv *t, const char *out, const char *err,
                         const char *const *args)
{
    const char *argv[16] = {
        "/bin/sh", "-c",  "exec \"$@\" 2>>\"$WATCH_ERR\"", "sh", hx_sidecar_bin(), "watch",
        "-c",      t->cfg};
    size_t n = 8;
    for (size_t i = 0; args && args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    char env0[700];
    snprintf(env0, sizeof(env0), "WATCH_ERR=%s", err);
    const char *env[] = {env0, NULL};
    return hx_spawn(argv, env, out);
}

/* The complete lines of a watch output file as JSON objects (a torn last line is left out). */
static json_t *watch_lines(const char *path)
{
    json_t *arr = json_array();
    size_t len = 0;
    char *d = hx_read_file(path, &len);
    if (!d)
        return arr;
    char *line = d;
    for (char *nl; (nl = memchr(line, '\n', len - (size_t)(line - d))) != NULL; line = nl + 1) {
        *nl = '\0';
        json_error_t jerr;
        json_t *j = json_loads(line, 0, &jerr);
        ck_assert_msg(json_is_object(j), "%s: not a JSON object: %.200s", path, line);
        ck_assert_msg(json_is_string(json_object_get(j, "token")), "%s: no token: %.200s", path,
                      line);
        json_array_append_new(arr, j);
    }
    free(d);
    return arr;
}

/* The start of the latest query of any `sidecar watch` (its application_name), as text. */
static char *watch_query_start(PGconn *conn)
{
    char *v = hx_pg_value(conn,
                          "SELECT coalesce(max(query_start), '-infinity')::text FROM"
                          " pg_stat_activity WHERE application_name = 'kafka-sidecar/watch'",
                          0, NULL);
    return v ? v : strdup("-infinity");
}

/* Waits until a `sidecar watch` query started after the time after (text); returns its start. */
static char *watch_query_after(PGconn *conn, const char *after, int64_t deadline)
{
    const char *params[] = {after};
    for (;;) {
        if (hx_pg_int(conn,
                      "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                      " 'kafka-sidecar/watch' AND query_start > $1::timestamptz",
                      1, params) > 0)
            return watch_query_start(conn);
        ck_assert_msg(hx_now_ms() < deadline, "sidecar watch read nothing after %s", after);
        usleep(20000);
    }
}

/*
 * Waits until `sidecar watch` (resumed with --from: one query per turn of its loop, whose
 * lines it prints before the next) has read the events once more after this call and
 * printed what that read returned: a query that starts after now, then one that starts
 * after that.  The witness that anything it would print twice or extra is in its output,
 * instead of a pause longer than its poll interval.
 */
static void wait_watch_read_again(PGconn *conn)
{
    int64_t deadline = hx_now_ms() + 30000;
    char *now = hx_pg_value(conn, "SELECT clock_timestamp()::text", 0, NULL);
    char *first = watch_query_after(conn, now, deadline);
    char *second = watch_query_after(conn, first, deadline);
    free(now);
    free(first);
    free(second);
}

/* ---- checking what a reader saw ---------------------------------------------------- */

struct seen_event {
    long long id;
    char topic[32];
    int partition;
    long long first;
    bool aborted;
};

struct seen {
    struct seen_event *ev;
    size_t n, cap;
    char last_token[4096];
};

static void seen_add(struct seen *s, json_t *obj)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 1024;
        s->ev = realloc(s->ev, s->cap * sizeof(*s->ev));
    }
    struct seen_event *e = &s->ev[s->n++];
    e->id = json_integer_value(json_object_get(obj, "id"));
    snprintf(e->topic, sizeof(e->topic), "%s",
             json_string_value(json_object_get(obj, "topic")) ?: "");
    e->partition = (int)json_integer_value(json_object_get(obj, "partition"));
    e->first = json_integer_value(json_object_get(obj, "first_offset"));
    e->aborted = json_is_true(json_object_get(json_object_get(obj, "detail"), "aborted"));
    snprintf(s->last_token, sizeof(s->last_token), "%s",
             json_string_value(json_object_get(obj, "token")));
}

/*
 * Every committed event of the table exactly once, no other, and for each
 * (topic, partition) first_offset 0, 1, 2, ... in the order seen.
 */
static void verify_seen(PGconn *conn, const char *who, const struct seen *s)
{
    PGresult *res = PQexec(conn, "SELECT id FROM sidecar.events ORDER BY id");
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    long long max_id = hx_pg_int(conn, "SELECT coalesce(max(id), 0) FROM sidecar.events", 0, NULL);
    char *exists = calloc((size_t)max_id + 2, 1), *count = calloc((size_t)max_id + 2, 1);
    for (int i = 0; i < PQntuples(res); i++)
        exists[atoll(PQgetvalue(res, i, 0))] = 1;
    size_t committed = (size_t)PQntuples(res);
    PQclear(res);

    struct next {
        char topic[32];
        int partition;
        long long first;
    } next[256];
    size_t nnext = 0;
    for (size_t i = 0; i < s->n; i++) {
        const struct seen_event *e = &s->ev[i];
        ck_assert_msg(!e->aborted, "%s saw event %lld of a rolled-back transaction", who, e->id);
        ck_assert_msg(e->id > 0 && e->id <= max_id && exists[e->id],
                      "%s saw event %lld that is not in the table", who, e->id);
        ck_assert_msg(count[e->id]++ == 0, "%s saw event %lld twice", who, e->id);
        size_t k = 0;
        while (k < nnext &&
               !(next[k].partition == e->partition && !strcmp(next[k].topic, e->topic)))
            k++;
        if (k == nnext) {
            ck_assert(nnext < 256);
            snprintf(next[k].topic, sizeof(next[k].topic), "%s", e->topic);
            next[k].partition = e->partition;
            next[k].first = 0;
            nnext++;
        }
        ck_assert_msg(e->first == next[k].first,
                      "%s: %s[%d] event %lld has first_offset %lld, expected %lld (out of order "
                      "or missing)",
                      who, e->topic, e->partition, e->id, e->first, next[k].first);
        next[k].first++;
    }
    ck_assert_msg(s->n == committed, "%s saw %zu events, %zu committed", who, s->n, committed);
    free(exists);
    free(count);
}

/* ---- commit order -------------------------------------------------------------------- */

#define NWRITERS      10
#define MIN_RESTARTS  6 /* interrupted `watch` runs at least, in the concurrent test */
#define TX_PER_WRITER 45

struct writer {
    const char *dsn;
    int id;
    unsigned seed;
    long long committed_events;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    PGconn *conn = hx_pg_connect(w->dsn);
    long long next[2] = {0, 0};
    for (int tx = 0; tx < TX_PER_WRITER; tx++) {
        unsigned r = (unsigned)rand_r(&w->seed);
        bool abort_it = r % 9 == 0;
        bool slow = r % 7 == 1; /* opened early, committed late: ids commit out of order */
        bool notify = r % 2 == 0;
        int k = 1 + (int)(r / 16 % 3);
        long long tnext[2] = {next[0], next[1]};
        hx_pg_exec(conn, "BEGIN");
        for (int j = 0; j < k; j++) {
            int side = rand_r(&w->seed) % 2;
            char part[16], first[32];
            snprintf(part, sizeof(part), "%d", w->id + side * NWRITERS);
            snprintf(first, sizeof(first), "%lld", tnext[side]++);
            const char *params[] = {part, first, abort_it ? "true" : "false"};
            PGresult *res = PQexecParams(
                conn,
                "INSERT INTO sidecar.events (pipeline, topic, partition, kind, first_offset,"
                " last_offset, detail) VALUES ('p1', 'orders', $1::int, 'commit', $2::bigint,"
                " $2::bigint, jsonb_build_object('aborted', $3::boolean))",
                3, NULL, params, NULL, NULL, 0);
            ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s", PQerrorMessage(conn));
            PQclear(res);
            usleep((useconds_t)(rand_r(&w->seed) % 4000));
        }
        if (notify)
            hx_pg_exec(conn, "SELECT pg_notify('sidecar_events', 'hint')");
        usleep(slow ? 150000 + (useconds_t)(rand_r(&w->seed) % 350000)
                    : (useconds_t)(rand_r(&w->seed) % 15000));
        if (abort_it) {
            hx_pg_exec(conn, "ROLLBACK");
        } else {
            hx_pg_exec(conn, "COMMIT");
            next[0] = tnext[0];
            next[1] = tnext[1];
            w->committed_events += k;
        }
        usleep((useconds_t)(rand_r(&w->seed) % 5000));
    }
    PQfinish(conn);
    return NULL;
}

/* The reader everybody writes first: "id > last", remembering the highest id seen. */
struct naive {
    const char *dsn;
    atomic_bool stop;
    atomic_llong last;
    char *seen; /* by id */
    size_t seen_cap;
};

static void *naive_main(void *arg)
{
    struct naive *nv = arg;
    PGconn *conn = hx_pg_connect(nv->dsn);
    while (!atomic_load(&nv->stop)) {
        char last[32];
        snprintf(last, sizeof(last), "%lld", atomic_load(&nv->last));
        const char *params[] = {last};
        PGresult *res =
            PQexecParams(conn, "SELECT id FROM sidecar.events WHERE id > $1::bigint ORDER BY id", 1,
                         NULL, params, NULL, NULL, 0);
        ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
        for (int i = 0; i < PQntuples(res); i++) {
            long long id = atoll(PQgetvalue(res, i, 0));
            if ((size_t)id < nv->seen_cap)
                nv->seen[id] = 1;
            atomic_store(&nv->last, id);
        }
        PQclear(res);
        usleep(2000);
    }
    PQfinish(conn);
    return NULL;
}

/* A resumable in-process reader: disconnects at random and resumes from its token. */
struct creader {
    const char *dsn;
    unsigned seed;
    atomic_llong target; /* stop once this many events are seen (-1: not known yet) */
    struct seen seen;
    int reconnects;
    char error[1100];
};

static void *creader_main(void *arg)
{
    struct creader *cr = arg;
    char err[1024];
    PGconn *conn = NULL;
    struct sc_events_cursor cur;
    sc_events_cursor_init(&cur, NULL);
    char *start = token_at(0, 0, &no_filter);
    if (sc_events_cursor_from_token(&cur, start, &no_filter, err, sizeof(err)) != 0) {
        snprintf(cr->error, sizeof(cr->error), "start token: %s", err);
        goto out;
    }
    int64_t deadline = hx_now_ms() + 120000;
    while (hx_now_ms() < deadline) {
        long long target = atomic_load(&cr->target);
        if (target >= 0 && (long long)cr->seen.n >= target)
            break;
        if (!conn) {
            conn = sc_events_connect(cr->dsn, 5000, "test-creader", err, sizeof(err));
            if (!conn || sc_events_listen(conn, "\"sidecar\"", err, sizeof(err)) != 0) {
                snprintf(cr->error, sizeof(cr->error), "connect: %s", err);
                goto out;
            }
        }
        json_t *arr = json_array();
        int limit = 1 + rand_r(&cr->seed) % 40;
        int n = sc_events_read(conn, "\"sidecar\"", &cur, limit, arr, err, sizeof(err));
        if (n < 0) {
            json_decref(arr);
            snprintf(cr->error, sizeof(cr->error), "read: %s", err);
            goto out;
        }
        size_t i;
        json_t *obj;
        json_array_foreach(arr, i, obj)
        {
            seen_add(&cr->seen, obj);
        }
        json_decref(arr);
        if (rand_r(&cr->seed) % 12 == 0) {
            /* Drop everything but a token string, like a client that went away. */
            PQfinish(conn);
            conn = NULL;
            char *tok = rand_r(&cr->seed) % 2 && cr->seen.n ? strdup(cr->seen.last_token)
                                                            : sc_events_cursor_token(&cur);
            sc_events_cursor_free(&cur);
            sc_events_cursor_init(&cur, NULL);
            int rc = sc_events_cursor_from_token(&cur, tok, &no_filter, err, sizeof(err));
            free(tok);
            if (rc != 0) {
                snprintf(cr->error, sizeof(cr->error), "resume token: %s", err);
                goto out;
            }
            cr->reconnects++;
        } else if (n < limit) {
            sc_events_wait(conn, 20);
        }
    }
    if ((long long)cr->seen.n < atomic_load(&cr->target))
        snprintf(cr->error, sizeof(cr->error), "timed out after %zu events", cr->seen.n);
out:
    free(start);
    PQfinish(conn);
    sc_events_cursor_free(&cur);
    return NULL;
}

/* The backend of every running `sidecar watch` is terminated: it must reconnect by itself. */
static void kill_watch_backends(PGconn *conn)
{
    hx_pg_exec(conn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE application_name = 'kafka-sidecar/watch'");
}

START_TEST(commit_order_with_concurrent_writers)
{
    struct tenv t;
    tenv_start(&t, "commit_order");
    unsigned seed = (unsigned)getpid();
    fprintf(stderr, "commit order: seed %u\n", seed);

    struct naive nv = {.dsn = t.dsn, .seen_cap = 1u << 20};
    nv.seen = calloc(nv.seen_cap, 1);
    pthread_t naive_thread;
    pthread_create(&naive_thread, NULL, naive_main, &nv);

    struct creader cr = {.dsn = t.dsn, .seed = seed ^ 0x5bd1e995u};
    atomic_init(&cr.target, -1);
    pthread_t creader_thread;
    pthread_create(&creader_thread, NULL, creader_main, &cr);

    /*
     * One inversion for certain, before the random ones: A inserts (lower
     * id) and commits only after B's higher id is committed and the naive
     * reader has moved past it.
     */
    PGconn *a = hx_pg_connect(t.dsn);
    hx_pg_exec(a, "BEGIN");
    long long low = insert_event(a, "p1", "inversion", 0, 0);
    long long high = insert_event(t.conn, "p1", "inversion", 1, 0);
    ck_assert_int_lt(low, high);
    while (atomic_load(&nv.last) < high)
        usleep(1000);
    hx_pg_exec(a, "COMMIT");
    PQfinish(a);

    struct writer w[NWRITERS];
    pthread_t wt[NWRITERS];
    bool joined[NWRITERS] = {false};
    for (int i = 0; i < NWRITERS; i++) {
        w[i] = (struct writer){.dsn = t.dsn, .id = i, .seed = seed + 7919u * (unsigned)i};
        pthread_create(&wt[i], NULL, writer_main, &w[i]);
    }

    /* Meanwhile the real binary, killed and disconnected at random, resumes from its output. */
    struct seen bin = {0};
    char *tok = token_at(0, 0, &no_filter);
    snprintf(bin.last_token, sizeof(bin.last_token), "%s", tok);
    free(tok);
    char err_path[700];
    snprintf(err_path, sizeof(err_path), "%s/watch.err", t.dir);
    int runs = 0, kills = 0, terms = 0, backend_kills = 0;
    bool writers_done = false;
    long long total = -1;
    int64_t deadline = hx_now_ms() + 150000;
    for (;;) {
        char out[700];
        snprintf(out, sizeof(out), "%s/watch-%d.out", t.dir, runs++);
        char from[4200];
        snprintf(from, sizeof(from), "%s", bin.last_token);
        const char *args[] = {"--from", from, NULL};
        pid_t pid = watch_spawn(&t, out, err_path, args);
        /* At least MIN_RESTARTS interrupted runs, however fast the writers are: the final
         * count of restarts must not depend on the machine's speed. */
        bool last_run = writers_done && kills + terms >= MIN_RESTARTS;
        if (!last_run) {
            /* Run a while, maybe have PostgreSQL drop it, then kill it one way or the other. */
            usleep(200000 + (useconds_t)(rand_r(&seed) % 900000));
            if (rand_r(&seed) % 3 == 0) {
                kill_watch_backends(t.conn);
                backend_kills++;
                usleep(300000 + (useconds_t)(rand_r(&seed) % 600000));
            }
            if (rand_r(&seed) % 2) {
                kill(pid, SIGKILL);
                ck_assert_int_eq(hx_wait(pid, 10000), 128 + SIGKILL);
                kills++;
            } else {
                kill(pid, SIGTERM);
                int rc = hx_wait(pid, 10000);
                ck_assert_msg(rc == 0, "watch exited %d on SIGTERM:\n%s", rc,
                              scx_log_tail(err_path, 2000));
                terms++;
            }
        } else {
            /* The last run: until everything committed has been printed. */
            for (;;) {
                json_t *lines = watch_lines(out);
                long long have = (long long)(bin.n + json_array_size(lines));
                json_decref(lines);
                if (have >= total)
                    break;
                ck_assert_msg(hx_now_ms() < deadline, "watch printed %lld of %lld events:\n%s",
                              have, total, scx_log_tail(err_path, 3000));
                usleep(100000);
            }
            /* One more read, printed: anything printed twice or extra shows up. */
            wait_watch_read_again(t.conn);
            kill(pid, SIGTERM);
            ck_assert_int_eq(hx_wait(pid, 10000), 0);
        }
        json_t *lines = watch_lines(out);
        size_t i;
        json_t *obj;
        json_array_foreach(lines, i, obj)
        {
            ck_assert_msg(json_object_get(obj, "kind") &&
                              strcmp(json_string_value(json_object_get(obj, "kind")), "snapshot"),
                          "a resumed watch printed a snapshot");
            seen_add(&bin, obj);
        }
        json_decref(lines);
        if (last_run)
            break;
        if (!writers_done) {
            bool alive = false;
            for (int k = 0; k < NWRITERS; k++)
                if (!joined[k])
                    alive |= !(joined[k] = pthread_tryjoin_np(wt[k], NULL) == 0);
            if (!alive) {
                writers_done = true;
                total = hx_pg_int(t.conn, "SELECT count(*) FROM sidecar.events", 0, NULL);
                atomic_store(&cr.target, total);
            }
        }
        ck_assert_msg(hx_now_ms() < deadline, "writers did not finish in time");
    }
    pthread_join(creader_thread, NULL);
    atomic_store(&nv.stop, true);
    pthread_join(naive_thread, NULL);

    long long committed = 2;
    for (int i = 0; i < NWRITERS; i++)
        committed += w[i].committed_events;
    ck_assert_int_eq(committed, total);
    ck_assert_msg(cr.error[0] == '\0', "C reader: %s", cr.error);
    verify_seen(t.conn, "the C reader", &cr.seen);
    verify_seen(t.conn, "sidecar watch", &bin);

    /* The naive reader in the same run: it missed events (at least the forced inversion). */
    long long missed = 0;
    PGresult *res = PQexec(t.conn, "SELECT id FROM sidecar.events");
    for (int i = 0; i < PQntuples(res); i++)
        missed += !nv.seen[atoll(PQgetvalue(res, i, 0))];
    PQclear(res);
    ck_assert_msg(!nv.seen[low], "the naive reader saw the late-committing event %lld", low);
    ck_assert_int_gt(missed, 0);
    long long rolled_back_ids =
        hx_pg_int(t.conn, "SELECT last_value FROM sidecar.events_id_seq", 0, NULL) - total;
    fprintf(stderr,
            "commit order: %lld events committed (ids up to %lld: %lld rolled back), the naive "
            "reader missed %lld; C reader %d reconnects; watch %d runs (%d SIGKILL, %d SIGTERM, "
            "%d backends terminated)\n",
            total, total + rolled_back_ids, rolled_back_ids, missed, cr.reconnects, runs, kills,
            terms, backend_kills);
    ck_assert_int_gt(rolled_back_ids, 0);
    ck_assert_int_ge(kills + terms, MIN_RESTARTS);
    free(nv.seen);
    free(cr.seen.ev);
    free(bin.ev);
    tenv_stop(&t);
}
END_TEST

/* ---- snapshot consistency ------------------------------------------------------------- */

#define SNAP_PARTS   6
#define SNAP_READERS 8
#define SNAP_WARMUP  20 /* commits before the watch starts; events it prints after its snapshot */

struct snap_writer {
    const char *dsn;
    int partition;
    unsigned seed;
    atomic_bool *stop;
};

/* A checkpoint transaction as the sidecar does it: move committed_offset, write the event. */
static void *snap_writer_main(void *arg)
{
    struct snap_writer *w = arg;
    PGconn *conn = hx_pg_connect(w->dsn);
    char part[16];
    snprintf(part, sizeof(part), "%d", w->partition);
    while (!atomic_load(w->stop)) {
        int k = 1 + rand_r(&w->seed) % 5;
        char kk[16];
        snprintf(kk, sizeof(kk), "%d", k);
        const char *params[] = {part, kk};
        hx_pg_exec(conn, "BEGIN");
        PGresult *res = PQexecParams(conn,
                                     "WITH c AS (UPDATE sidecar.checkpoints"
                                     "   SET committed_offset = committed_offset + $2::int"
                                     " WHERE pipeline = 'p1' AND topic = 'orders'"
                                     "   AND partition = $1::int RETURNING committed_offset)"
                                     " INSERT INTO sidecar.events (pipeline, topic, partition,"
                                     "   kind, first_offset, last_offset)"
                                     " SELECT 'p1', 'orders', $1::int, 'commit',"
                                     "   committed_offset - $2::int, committed_offset - 1 FROM c",
                                     2, NULL, params, NULL, NULL, 0);
        ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s", PQerrorMessage(conn));
        PQclear(res);
        unsigned r = (unsigned)rand_r(&w->seed);
        usleep(r % 10 == 0 ? 100000 + r % 200000 : r % 20000);
        hx_pg_exec(conn, r % 11 == 0 ? "ROLLBACK" : "COMMIT");
        usleep((useconds_t)(rand_r(&w->seed) % 3000));
    }
    PQfinish(conn);
    return NULL;
}

/* Checks a reader's lines: snapshot rows, then events continuing each partition exactly. */
struct continuity {
    long long next[SNAP_PARTS]; /* -1 until the snapshot gave it */
    bool snapshot_done;
    long long events;
    char error[512];
};

static void continuity_add(struct continuity *c, json_t *obj)
{
    const char *kind = json_string_value(json_object_get(obj, "kind"));
    int p = (int)json_integer_value(json_object_get(obj, "partition"));
    if (c->error[0] || p < 0 || p >= SNAP_PARTS)
        return;
    if (strcmp(kind, "snapshot") == 0) {
        if (c->snapshot_done)
            snprintf(c->error, sizeof(c->error), "snapshot line after an event");
        c->next[p] = json_integer_value(json_object_get(obj, "committed_offset"));
        return;
    }
    c->snapshot_done = true;
    if (strcmp(kind, "commit") != 0) {
        snprintf(c->error, sizeof(c->error), "unexpected %s event %lld (from before the snapshot?)",
                 kind, json_integer_value(json_object_get(obj, "id")));
        return;
    }
    long long first = json_integer_value(json_object_get(obj, "first_offset"));
    long long last = json_integer_value(json_object_get(obj, "last_offset"));
    if (c->next[p] < 0)
        snprintf(c->error, sizeof(c->error), "event for partition %d without its snapshot row", p);
    else if (first != c->next[p])
        snprintf(c->error, sizeof(c->error),
                 "partition %d: snapshot/events say %lld, event %lld starts at %lld (%s)", p,
                 c->next[p], json_integer_value(json_object_get(obj, "id")), first,
                 first > c->next[p] ? "events lost" : "counted twice");
    c->next[p] = last + 1;
    c->events++;
}

/* The continuity of everything sidecar watch has written to path so far. */
static void watch_continuity(const char *path, struct continuity *c)
{
    memset(c, 0, sizeof(*c));
    for (int p = 0; p < SNAP_PARTS; p++)
        c->next[p] = -1;
    json_t *lines = watch_lines(path);
    size_t i;
    json_t *obj;
    json_array_foreach(lines, i, obj)
    {
        continuity_add(c, obj);
    }
    json_decref(lines);
}

struct snap_reader {
    const char *dsn;
    unsigned seed;
    int filter_partition; /* -1: all */
    long long *final;     /* final committed offsets, set when the writers stopped */
    atomic_bool *final_known;
    struct continuity cont;
};

static bool caught_up(const struct continuity *c, const long long *final, int only)
{
    for (int p = 0; p < SNAP_PARTS; p++)
        if ((only < 0 || p == only) && c->next[p] != final[p])
            return false;
    return true;
}

static void *snap_reader_main(void *arg)
{
    struct snap_reader *sr = arg;
    char err[1024], part[32];
    usleep((useconds_t)(rand_r(&sr->seed) % 2500000));
    PGconn *conn = sc_events_connect(sr->dsn, 5000, "test-snapreader", err, sizeof(err));
    ck_assert_msg(conn != NULL, "%s", err);
    struct sc_events_filter f;
    snprintf(part, sizeof(part), "orders:%d", sr->filter_partition);
    ck_assert(sc_events_filter_init(&f, "p1", sr->filter_partition >= 0 ? part : NULL, err,
                                    sizeof(err)) == 0);
    struct sc_events_cursor cur;
    sc_events_cursor_init(&cur, &f);
    for (int p = 0; p < SNAP_PARTS; p++)
        sr->cont.next[p] = -1;
    int64_t deadline = hx_now_ms() + 60000;
    while (hx_now_ms() < deadline && !sr->cont.error[0]) {
        if (atomic_load(sr->final_known) && caught_up(&sr->cont, sr->final, sr->filter_partition))
            break;
        json_t *arr = json_array();
        int n = sc_events_read(conn, "\"sidecar\"", &cur, 50, arr, err, sizeof(err));
        ck_assert_msg(n >= 0, "%s", err);
        size_t i;
        json_t *obj;
        json_array_foreach(arr, i, obj)
        {
            continuity_add(&sr->cont, obj);
        }
        json_decref(arr);
        if (n == 0)
            usleep(5000);
    }
    if (!sr->cont.error[0] && !caught_up(&sr->cont, sr->final, sr->filter_partition))
        snprintf(sr->cont.error, sizeof(sr->cont.error), "did not catch up");
    sc_events_cursor_free(&cur);
    sc_events_filter_free(&f);
    PQfinish(conn);
    return NULL;
}

START_TEST(snapshot_is_consistent_with_events)
{
    struct tenv t;
    tenv_start(&t, "snapshot");
    hx_pg_exec(t.conn,
               "INSERT INTO sidecar.checkpoints (pipeline, topic, partition,"
               " committed_offset) SELECT 'p1', 'orders', g, 0 FROM generate_series(0, 5) g");
    /* Events before the snapshot: their effect is in it, they must not be printed. */
    hx_pg_exec(t.conn, "INSERT INTO sidecar.events (pipeline, topic, partition, kind)"
                       " VALUES ('p1', 'orders', 0, 'lease')");
    unsigned seed = (unsigned)getpid() * 31u;
    atomic_bool stop = false, final_known = false;
    long long final[SNAP_PARTS];
    struct snap_writer w[SNAP_PARTS];
    pthread_t wt[SNAP_PARTS], rt[SNAP_READERS];
    for (int p = 0; p < SNAP_PARTS; p++) {
        w[p] = (struct snap_writer){t.dsn, p, seed + (unsigned)p, &stop};
        pthread_create(&wt[p], NULL, snap_writer_main, &w[p]);
    }
    struct snap_reader r[SNAP_READERS];
    for (int i = 0; i < SNAP_READERS; i++) {
        r[i] = (struct snap_reader){.dsn = t.dsn,
                                    .seed = seed * 7u + (unsigned)i,
                                    .filter_partition = i % 4 == 3 ? i % SNAP_PARTS : -1,
                                    .final = final,
                                    .final_known = &final_known};
        pthread_create(&rt[i], NULL, snap_reader_main, &r[i]);
    }
    /* And the real binary, started in the middle of it all: once the writers have committed
     * a few events, and running until it has printed events after its snapshot. */
    int64_t deadline = hx_now_ms() + 30000;
    while (hx_pg_int(t.conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'commit'", 0, NULL) <
           SNAP_WARMUP) {
        ck_assert_msg(hx_now_ms() < deadline, "the writers committed nothing");
        usleep(20000);
    }
    char out[700], err_path[700];
    snprintf(out, sizeof(out), "%s/watch.out", t.dir);
    snprintf(err_path, sizeof(err_path), "%s/watch.err", t.dir);
    const char *args[] = {"--pipeline", "p1", NULL};
    pid_t pid = watch_spawn(&t, out, err_path, args);
    deadline = hx_now_ms() + 30000;
    for (;;) {
        struct continuity c;
        watch_continuity(out, &c);
        if (c.events >= SNAP_WARMUP || c.error[0])
            break;
        ck_assert_msg(hx_now_ms() < deadline, "sidecar watch printed %lld events:\n%s", c.events,
                      scx_log_tail(err_path, 2000));
        usleep(50000);
    }
    atomic_store(&stop, true);
    for (int p = 0; p < SNAP_PARTS; p++)
        pthread_join(wt[p], NULL);
    PGresult *res = PQexec(t.conn, "SELECT committed_offset FROM sidecar.checkpoints"
                                   " ORDER BY partition");
    for (int p = 0; p < SNAP_PARTS; p++)
        final[p] = atoll(PQgetvalue(res, p, 0));
    PQclear(res);
    atomic_store(&final_known, true);
    for (int i = 0; i < SNAP_READERS; i++) {
        pthread_join(rt[i], NULL);
        ck_assert_msg(r[i].cont.error[0] == '\0', "reader %d: %s", i, r[i].cont.error);
    }

    struct continuity bin;
    deadline = hx_now_ms() + 20000;
    for (;;) {
        watch_continuity(out, &bin);
        ck_assert_msg(bin.error[0] == '\0', "sidecar watch: %s", bin.error);
        if (caught_up(&bin, final, -1))
            break;
        ck_assert_msg(hx_now_ms() < deadline, "sidecar watch did not catch up:\n%s",
                      scx_log_tail(err_path, 2000));
        usleep(100000);
    }
    kill(pid, SIGTERM);
    ck_assert_int_eq(hx_wait(pid, 10000), 0);
    long long total = 0;
    for (int p = 0; p < SNAP_PARTS; p++)
        total += final[p];
    fprintf(stderr,
            "snapshot: %lld offsets committed, watch printed %lld events after its "
            "snapshot\n",
            total, bin.events);
    ck_assert_int_gt(bin.events, 0);
    tenv_stop(&t);
}
END_TEST

/* ---- the snapshot lines' tokens -------------------------------------------------------- */

START_TEST(snapshot_tokens)
{
    struct tenv t;
    tenv_start(&t, "snapshot_tokens");
    hx_pg_exec(t.conn, "INSERT INTO sidecar.checkpoints (pipeline, topic, partition,"
                       " committed_offset) SELECT 'p1', 'orders', g, 10 * g"
                       " FROM generate_series(0, 2) g");
    char err[1024];
    PGconn *conn = sc_events_connect(t.dsn, 5000, "test", err, sizeof(err));
    ck_assert_msg(conn != NULL, "%s", err);
    struct sc_events_cursor cur;
    sc_events_cursor_init(&cur, &no_filter);
    json_t *arr = json_array();
    ck_assert_int_eq(sc_events_read(conn, "\"sidecar\"", &cur, 10, arr, err, sizeof(err)), 3);
    for (int i = 0; i < 3; i++) {
        json_t *row = json_array_get(arr, (size_t)i);
        ck_assert_str_eq(json_string_value(json_object_get(row, "kind")), "snapshot");
        ck_assert_int_eq(json_integer_value(json_object_get(row, "committed_offset")), 10 * i);
        struct sc_events_cursor c;
        sc_events_cursor_init(&c, NULL);
        ck_assert(sc_events_cursor_from_token(&c, json_string_value(json_object_get(row, "token")),
                                              &no_filter, err, sizeof(err)) == 0);
        /* A snapshot cannot be resumed from its middle: earlier lines say "start again". */
        ck_assert_int_eq(c.fresh, i < 2);
        sc_events_cursor_free(&c);
    }
    /* The last line's token continues with what happens next, and only that. */
    const char *last = json_string_value(json_object_get(json_array_get(arr, 2), "token"));
    insert_event(t.conn, "p1", "orders", 1, 10);
    char out[700], err_path[700];
    snprintf(out, sizeof(out), "%s/watch.out", t.dir);
    snprintf(err_path, sizeof(err_path), "%s/watch.err", t.dir);
    const char *args[] = {"--from", last, NULL};
    pid_t pid = watch_spawn(&t, out, err_path, args);
    json_t *lines = NULL;
    for (int i = 0; i < 100; i++) {
        json_decref(lines);
        lines = watch_lines(out);
        if (json_array_size(lines) >= 1)
            break;
        usleep(100000);
    }
    wait_watch_read_again(t.conn); /* a second line would be printed by now */
    json_decref(lines);
    lines = watch_lines(out);
    kill(pid, SIGTERM);
    ck_assert_int_eq(hx_wait(pid, 10000), 0);
    ck_assert_int_eq(json_array_size(lines), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(lines, 0), "kind")),
                     "commit");
    json_decref(lines);

    /* A middle line's token prints a whole new snapshot. */
    snprintf(out, sizeof(out), "%s/watch2.out", t.dir);
    const char *args2[] = {
        "--from", json_string_value(json_object_get(json_array_get(arr, 0), "token")), NULL};
    pid = watch_spawn(&t, out, err_path, args2);
    lines = NULL;
    for (int i = 0; i < 100; i++) {
        json_decref(lines);
        lines = watch_lines(out);
        if (json_array_size(lines) >= 3)
            break;
        usleep(100000);
    }
    kill(pid, SIGTERM);
    ck_assert_int_eq(hx_wait(pid, 10000), 0);
    ck_assert_int_eq(json_array_size(lines), 3);
    for (int i = 0; i < 3; i++)
        ck_assert_str_eq(
            json_string_value(json_object_get(json_array_get(lines, (size_t)i), "kind")),
            "snapshot");
    json_decref(lines);
    json_decref(arr);
    sc_events_cursor_free(&cur);
    PQfinish(conn);
    tenv_stop(&t);
}
END_TEST

/* ---- expiry, malformed tokens, filters -------------------------------------------------- */

static int run_watch(const struct tenv *t, const char *const *args, char **output)
{
    const char *argv[16] = {hx_sidecar_bin(), "watch", "-c", t->cfg};
    size_t n = 4;
    for (size_t i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return hx_run(argv, NULL, 20000, output);
}

START_TEST(expired_and_malformed_tokens)
{
    struct tenv t;
    tenv_start(&t, "expired");
    for (int i = 0; i < 30; i++)
        insert_event(t.conn, "p1", "orders", 0, i);
    hx_pg_exec(t.conn, "INSERT INTO sidecar.checkpoints (pipeline, topic, partition,"
                       " committed_offset) VALUES ('p1', 'orders', 0, 30)");
    char err[1024];
    PGconn *conn = sc_events_connect(t.dsn, 5000, "test", err, sizeof(err));
    ck_assert_msg(conn != NULL, "%s", err);
    struct sc_events_cursor cur;
    sc_events_cursor_init(&cur, NULL);
    char *start = token_at(0, 0, &no_filter);
    ck_assert(sc_events_cursor_from_token(&cur, start, &no_filter, err, sizeof(err)) == 0);
    json_t *arr = json_array();
    ck_assert_int_eq(sc_events_read(conn, "\"sidecar\"", &cur, 10, arr, err, sizeof(err)), 10);
    char *t10 = strdup(json_string_value(json_object_get(json_array_get(arr, 9), "token")));
    ck_assert_int_eq(sc_events_read(conn, "\"sidecar\"", &cur, 100, arr, err, sizeof(err)), 20);
    char *t30 = sc_events_cursor_token(&cur);

    /* Compaction removes all 30 (they are older than "0 seconds"). */
    ck_assert_int_eq(
        hx_pg_int(t.conn, "SELECT sidecar.compact_events('0 seconds'::interval)", 0, NULL), 30);

    /* The reader API says expired; a token past the pruned events is still fine. */
    struct sc_events_cursor c10;
    sc_events_cursor_init(&c10, NULL);
    ck_assert(sc_events_cursor_from_token(&c10, t10, &no_filter, err, sizeof(err)) == 0);
    ck_assert_int_eq(sc_events_read(conn, "\"sidecar\"", &c10, 10, arr, err, sizeof(err)),
                     SC_READ_EXPIRED);
    ck_assert_ptr_nonnull(strstr(err, "expired"));
    ck_assert_int_eq(sc_events_read(conn, "\"sidecar\"", &cur, 10, arr, err, sizeof(err)), 0);
    /* A token from before any compaction-free history: (0,0) is expired now too. */
    struct sc_events_cursor c0;
    sc_events_cursor_init(&c0, NULL);
    ck_assert(sc_events_cursor_from_token(&c0, start, &no_filter, err, sizeof(err)) == 0);
    ck_assert_int_eq(sc_events_read(conn, "\"sidecar\"", &c0, 10, arr, err, sizeof(err)),
                     SC_READ_EXPIRED);

    /* watch: exit 2 with a message that says what to do. */
    char *out = NULL;
    const char *a1[] = {"--from", t10, NULL};
    ck_assert_int_eq(run_watch(&t, a1, &out), 2);
    ck_assert_msg(strstr(out, "token expired") && strstr(out, "--restart-from-snapshot"), "%s",
                  out);
    free(out);

    /* --restart-from-snapshot: the current checkpoints, then events as they come. */
    char wout[700], werr[700];
    snprintf(wout, sizeof(wout), "%s/restart.out", t.dir);
    snprintf(werr, sizeof(werr), "%s/restart.err", t.dir);
    const char *a2[] = {"--from", t10, "--restart-from-snapshot", NULL};
    pid_t pid = watch_spawn(&t, wout, werr, a2);
    json_t *lines = NULL;
    for (int i = 0; i < 100; i++) {
        json_decref(lines);
        lines = watch_lines(wout);
        if (json_array_size(lines) >= 1)
            break;
        usleep(100000);
    }
    insert_event(t.conn, "p1", "orders", 0, 30);
    for (int i = 0; i < 100; i++) {
        json_decref(lines);
        lines = watch_lines(wout);
        if (json_array_size(lines) >= 2)
            break;
        usleep(100000);
    }
    kill(pid, SIGINT);
    ck_assert_int_eq(hx_wait(pid, 10000), 0);
    ck_assert_int_eq(json_array_size(lines), 2);
    json_t *snap = json_array_get(lines, 0), *ev = json_array_get(lines, 1);
    ck_assert_str_eq(json_string_value(json_object_get(snap, "kind")), "snapshot");
    ck_assert_int_eq(json_integer_value(json_object_get(snap, "committed_offset")), 30);
    ck_assert_str_eq(json_string_value(json_object_get(ev, "kind")), "commit");
    ck_assert_int_eq(json_integer_value(json_object_get(ev, "first_offset")), 30);
    /* The documented fields, in the documented order, then the token. */
    static const char *const fields[] = {
        "id",    "at",           "pipeline",    "topic",        "partition", "kind", "epoch",
        "owner", "first_offset", "last_offset", "write_offset", "detail",    "token"};
    const char *key;
    json_t *v;
    size_t k = 0;
    json_object_foreach(ev, key, v)
    {
        ck_assert_msg(k < 13 && strcmp(key, fields[k]) == 0, "field %zu is %s", k, key);
        k++;
    }
    ck_assert_int_eq(k, 13);
    const char *at = json_string_value(json_object_get(ev, "at"));
    ck_assert_msg(at && strlen(at) > 20 && at[10] == 'T' && strstr(at, "+00:00"),
                  "at is not RFC 3339 UTC: %s", at);
    json_decref(lines);

    /* Bad tokens and bad filters: exit 2 with a message, before anything is printed. */
    struct {
        const char *args[8];
        const char *want;
    } bad[] = {
        {{"--from", "garbage", NULL}, "malformed resume token"},
        {{"--from", "v1.e30", NULL}, "malformed resume token"},
        {{"--from", t30, "--pipeline", "p1", NULL}, "issued for no filter"},
        {{"--partition", "orders", NULL}, "expected TOPIC:N"},
        {{"--pipeline", "nope", NULL}, "no such pipeline"},
        {{"--pipeline", "p2", "--partition", "orders:1", NULL}, "consumes topic orders"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = run_watch(&t, bad[i].args, &out);
        ck_assert_msg(rc == 2 && strstr(out, bad[i].want), "case %zu: exit %d: %s", i, rc, out);
        free(out);
    }
    free(t10);
    free(t30);
    free(start);
    json_decref(arr);
    sc_events_cursor_free(&cur);
    sc_events_cursor_free(&c10);
    sc_events_cursor_free(&c0);
    PQfinish(conn);
    tenv_stop(&t);
}
END_TEST

START_TEST(filters_and_listen)
{
    struct tenv t;
    tenv_start(&t, "filters");
    insert_event(t.conn, "p1", "orders", 0, 0);
    insert_event(t.conn, "p1", "orders", 1, 0);
    insert_event(t.conn, "p2", "billing", 0, 0);
    hx_pg_exec(t.conn, "INSERT INTO sidecar.events (pipeline, kind) VALUES ('p1', 'lease')");
    char err[1024];
    PGconn *conn = sc_events_connect(t.dsn, 5000, "test", err, sizeof(err));
    ck_assert_msg(conn != NULL, "%s", err);
    struct {
        const char *pipeline, *partition;
        int want;
    } cases[] = {{NULL, NULL, 4},       {"p1", NULL, 3},        {"p2", NULL, 1},
                 {"p1", "orders:1", 1}, {NULL, "billing:0", 1}, {"p2", "orders:0", 0}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sc_events_filter f;
        ck_assert(sc_events_filter_init(&f, cases[i].pipeline, cases[i].partition, err,
                                        sizeof(err)) == 0);
        struct sc_events_cursor c;
        sc_events_cursor_init(&c, &f);
        sc_events_cursor_seek(&c, 0, 0);
        json_t *arr = json_array();
        ck_assert_int_eq(sc_events_read(conn, "\"sidecar\"", &c, 100, arr, err, sizeof(err)),
                         cases[i].want);
        json_decref(arr);
        sc_events_cursor_free(&c);
        sc_events_filter_free(&f);
    }

    /* LISTEN: an operator action (which notifies) wakes a waiting reader at once. */
    ck_assert_int_eq(sc_events_listen(conn, "\"sidecar\"", err, sizeof(err)), 0);
    ck_assert_int_eq(sc_events_wait(conn, 200), 0);
    hx_pg_exec(t.conn, "SELECT sidecar.pause_partition('p1', 'orders', 0)");
    int64_t t0 = hx_now_ms();
    ck_assert_int_eq(sc_events_wait(conn, 5000), 1);
    ck_assert_int_lt(hx_now_ms() - t0, 1000);
    /* A connection that dies is reported as such, not as a quiet timeout forever. */
    hx_pg_exec(t.conn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                       " WHERE application_name = 'test'");
    int w = 0;
    for (int i = 0; i < 20 && w == 0; i++)
        w = sc_events_wait(conn, 100);
    if (w == 0) {
        /* Or the next read says so. */
        struct sc_events_cursor c;
        sc_events_cursor_init(&c, &no_filter);
        sc_events_cursor_seek(&c, 0, 0);
        json_t *arr = json_array();
        w = sc_events_read(conn, "\"sidecar\"", &c, 10, arr, err, sizeof(err));
        ck_assert_int_eq(w, SC_READ_RETRY);
        json_decref(arr);
        sc_events_cursor_free(&c);
    } else {
        ck_assert_int_eq(w, -1);
    }
    PQfinish(conn);
    tenv_stop(&t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("events");
    TCase *tc = tcase_create("events");
    tcase_add_unchecked_fixture(tc, pg_setup, pg_teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, commit_order_with_concurrent_writers);
    tcase_add_test(tc, snapshot_is_consistent_with_events);
    tcase_add_test(tc, snapshot_tokens);
    tcase_add_test(tc, expired_and_malformed_tokens);
    tcase_add_test(tc, filters_and_listen);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
