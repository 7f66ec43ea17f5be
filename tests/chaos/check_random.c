/*
 * check_random.c - invariant I6 under a random mix of every fault we know,
 * bounded to five minutes (Check timeout 300 s), replayable from a printed seed.
 *
 * Two `sidecar run` instances share three pipelines, one per sink: a file
 * sink, the postgres sink in the checkpoint database (an audit trigger
 * records every committed insert, in order) and the HTTP sink (the test
 * receiver, checking I2 on every request, adding a few 500s and taking
 * 10 ms per request).  Records are produced in small chunks throughout,
 * so that faults land inside batches, while for FAULT_WINDOW_MS the test
 * applies one fault after another, chosen and timed by a PRNG seeded from
 * CHAOS_SEED (or the clock):
 *
 *   kill      SIGKILL an instance, restart it
 *   stop      SIGSTOP an instance past its lease and the group's session
 *             timeout (another instance takes over), then SIGCONT it
 *   pg        PostgreSQL restarted with -m immediate (a crash)
 *   broker    one broker of the mock cluster down, or all, then up again
 *   sink      one sink unavailable for a while: the HTTP receiver answers
 *             503, the postgres sink's table is locked, the file sink's
 *             disk (a tmpfs) is full
 *
 * Every kind happens at least once.  Then the faults stop, everything is
 * restored, and every record must be in every sink exactly once, in
 * offset order per partition, with no partition in the error state.
 *
 * The seed is printed first, with the command that replays the same
 * schedule (same faults, targets and delays; the processes' own timing
 * varies, so a replay reproduces the schedule, not every interleaving),
 * and again after the run if the test failed.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "receiver.h"
#include "scx.h"

#define NPARTS          4
#define CHUNKS          32
#define PER_CHUNK       60 /* per partition and topic: 1,920; 23,040 records in all */
#define INSTANCES       2
#define FAULT_WINDOW_MS 120000
#define SETTLE_MS       120000
#define TTL_MS          3000
#define SESSION_MS      6000 /* the consumer group's session timeout (scx configs) */
/* The receiver between faults: a few 500s (before and after accepting) and 10 ms per request,
 * so batches take a while and faults land inside them. */
#define RX_BACKGROUND .p500_before = 10, .p500_after = 10, .delay_ms = 10

enum fault {
    F_KILL,
    F_STOP,
    F_PG,
    F_BROKER,
    F_SINK,
    NFAULTS
};
static const int fault_weights[NFAULTS] = {30, 10, 15, 20, 25};

static uint64_t seed, rng; /* seed: chosen in main(), before Check forks the test */

static uint32_t rnd(uint32_t n)
{
    /* xorshift64*: the schedule depends on the seed alone */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return n ? (uint32_t)(((rng * 0x2545F4914F6CDD1DULL) >> 32) % n) : 0;
}

static void say_seed(void)
{
    fprintf(stderr,
            "chaos_check_random: seed %" PRIu64 " (replay the schedule: CHAOS_SEED=%" PRIu64
            " ctest --test-dir BUILD -R chaos_check_random --output-on-failure)\n",
            seed, seed);
}

struct world {
    struct scx_env e;
    struct rx *rx;
    char cfg[INSTANCES][700];
    pid_t pid[INSTANCES];
    int64_t t0;
    int64_t produced; /* per partition and topic */
    int counts[NFAULTS];
};

static const char *const names[INSTANCES] = {"sc-1", "sc-2"};

static void note(const struct world *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(const struct world *w, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "[%6.1f s] %s\n", (double)(hx_now_ms() - w->t0) / 1000, msg);
}

static void pause_ms(int ms)
{
    usleep((useconds_t)ms * 1000);
}

static void pipeline_json(char *out, size_t size, const char *name, const char *topic,
                          const char *sink)
{
    snprintf(out, size,
             "    {\"name\": \"%s\", \"topics\": [\"%s\"], \"start_from\": \"earliest\","
             " \"batch\": {\"max_records\": 20, \"max_wait_ms\": 20},"
             " \"lease\": {\"ttl_ms\": %d, \"renew_ms\": 1000}, \"workers\": 2,"
             " \"sink\": %s}",
             name, topic, TTL_MS, sink);
}

/* A config for instance i: three pipelines, one per sink. */
static void write_config(struct world *w, int i)
{
    snprintf(w->cfg[i], sizeof(w->cfg[i]), "%s/%s.json", w->e.dir, names[i]);
    char file_sink[700], http_sink[512], p1[1024], p2[1024], p3[1024];
    snprintf(file_sink, sizeof(file_sink),
             "{\"type\": \"file\", \"path\": \"%s/{topic}/{partition}.jsonl\"}", w->e.out_dir);
    snprintf(http_sink, sizeof(http_sink),
             "{\"type\": \"http\", \"url\": \"%s\", \"timeout_ms\": 2000, \"on_error\": \"stop\","
             " \"retry\": {\"max_attempts\": 5, \"initial_backoff_ms\": 50,"
             " \"max_backoff_ms\": 1000, \"max_elapsed_ms\": 5000}}",
             rx_url(w->rx));
    pipeline_json(p1, sizeof(p1), "pf", "files", file_sink);
    pipeline_json(p2, sizeof(p2), "pp", "rows",
                  "{\"type\": \"postgres\", \"table\": \"app.events\"}");
    pipeline_json(p3, sizeof(p3), "ph", "posts", http_sink);
    hx_write_file(w->cfg[i],
                  "{\n"
                  "  \"instance_id\": \"%s\",\n"
                  "  \"postgres\": {\"dsn\": \"%s\"},\n"
                  "  \"kafka\": {\"bootstrap.servers\": \"%s\",\n"
                  "            \"properties\": {\"session.timeout.ms\": \"%d\",\n"
                  "                           \"heartbeat.interval.ms\": \"500\",\n"
                  "                           \"topic.metadata.refresh.interval.ms\": \"2000\"}},\n"
                  "  \"admin\": {\"listen\": \"\"},\n"
                  "  \"log\": {\"level\": \"info\", \"format\": \"text\"},\n"
                  "  \"shutdown_timeout_ms\": 8000,\n"
                  "  \"pipelines\": [\n%s,\n%s,\n%s\n  ]\n"
                  "}\n",
                  names[i], w->e.dsn, w->e.mock.bootstrap, SESSION_MS, p1, p2, p3);
}

static void start(struct world *w, int i)
{
    w->pid[i] = scx_start(&w->e, w->cfg[i], names[i], NULL);
}

/* Restarts instances that are gone (none should exit by itself: that is logged). */
static void revive(struct world *w)
{
    for (int i = 0; i < INSTANCES; i++)
        if (!hx_pid_alive(w->pid[i])) {
            int rc = hx_wait(w->pid[i], 1000);
            note(w, "%s had exited (status %d): restarted", names[i], rc);
            start(w, i);
        }
}

/* Fills the file sink's disk (a tmpfs) with a ballast file. */
static void fill_disk(const char *ballast)
{
    int fd = open(ballast, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ck_assert_msg(fd >= 0, "%s: %s", ballast, strerror(errno));
    static char chunk[65536];
    while (write(fd, chunk, sizeof(chunk)) > 0)
        ;
    ck_assert_int_eq(errno, ENOSPC);
    /* The last bytes: a smaller write may still fit. */
    while (write(fd, chunk, 512) > 0)
        ;
    close(fd);
}

static void fault_sink(struct world *w, int ms)
{
    switch (rnd(3)) {
    case 0:
        note(w, "sink: HTTP receiver answers 503 for %d ms", ms);
        rx_set_faults(w->rx, &(struct rx_faults){.status_all = 503});
        pause_ms(ms);
        rx_set_faults(w->rx, &(struct rx_faults){RX_BACKGROUND});
        break;
    case 1: {
        note(w, "sink: postgres sink's table locked for %d ms", ms);
        PGconn *c = PQconnectdb(w->e.dsn);
        PGresult *r = PQexec(c, "SET lock_timeout = '5s'; BEGIN;"
                                " LOCK TABLE app.events IN ACCESS EXCLUSIVE MODE");
        bool locked = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (!locked)
            note(w, "  (could not lock: %s)", PQerrorMessage(c));
        pause_ms(ms);
        PQfinish(c); /* ends the transaction, releases the lock */
        break;
    }
    default: {
        char ballast[700];
        snprintf(ballast, sizeof(ballast), "%s/ballast", w->e.out_dir);
        note(w, "sink: file sink's disk full for %d ms", ms);
        fill_disk(ballast);
        pause_ms(ms);
        unlink(ballast);
        break;
    }
    }
}

static void apply(struct world *w, enum fault f)
{
    w->counts[f]++;
    int i = (int)rnd(INSTANCES);
    switch (f) {
    case F_KILL: {
        int after = (int)rnd(1000);
        note(w, "kill: SIGKILL %s, restart after %d ms", names[i], after);
        kill(w->pid[i], SIGKILL);
        hx_wait(w->pid[i], 10000);
        pause_ms(after);
        start(w, i);
        break;
    }
    case F_STOP: {
        int ms = SESSION_MS + TTL_MS + (int)rnd(3000);
        note(w, "stop: SIGSTOP %s for %d ms (lease %d ms, session %d ms)", names[i], ms, TTL_MS,
             SESSION_MS);
        kill(w->pid[i], SIGSTOP);
        pause_ms(ms);
        kill(w->pid[i], SIGCONT);
        break;
    }
    case F_PG:
        note(w, "pg: PostgreSQL restart -m immediate");
        PQfinish(w->e.conn);
        w->e.conn = NULL;
        hx_pg_restart(&w->e.pg, true);
        w->e.conn = hx_pg_connect(w->e.dsn);
        break;
    case F_BROKER: {
        int ms = 1000 + (int)rnd(4000);
        bool all = rnd(4) == 0;
        int b = 1 + (int)rnd(3);
        char reply[256], which[16];
        snprintf(which, sizeof(which), all ? "all" : "%d", b);
        note(w, "broker: broker %s down for %d ms", which, ms);
        ck_assert_int_eq(hx_mock_cmd(&w->e.mock, reply, sizeof(reply), "broker down %s", which), 0);
        pause_ms(ms);
        ck_assert_int_eq(hx_mock_cmd(&w->e.mock, reply, sizeof(reply), "broker up %s", which), 0);
        break;
    }
    case F_SINK:
        fault_sink(w, 1000 + (int)rnd(4000));
        break;
    case NFAULTS:
        break;
    }
}

static enum fault pick(void)
{
    int total = 0;
    for (int f = 0; f < NFAULTS; f++)
        total += fault_weights[f];
    int r = (int)rnd((uint32_t)total);
    for (int f = 0; f < NFAULTS; f++) {
        if (r < fault_weights[f])
            return (enum fault)f;
        r -= fault_weights[f];
    }
    return F_KILL;
}

static void produce_chunk(struct world *w)
{
    const char *topics[] = {"files", "rows", "posts"};
    for (size_t t = 0; t < 3; t++)
        hx_produce_seq(w->e.mock.bootstrap, topics[t], NPARTS, w->produced, PER_CHUNK);
    w->produced += PER_CHUNK;
    note(w, "produced up to offset %" PRId64 " on every partition", w->produced);
}

/* The postgres sink's rows: every offset once, with its key and value, inserted in order. */
static void verify_rows(PGconn *c, int64_t count)
{
    ck_assert_int_eq(hx_pg_int(c, "SELECT count(*) FROM app.events", 0, NULL), NPARTS * count);
    ck_assert_int_eq(hx_pg_int(c, "SELECT count(*) FROM app.audit", 0, NULL), NPARTS * count);
    /* In order: per partition, the committed inserts ascend by offset. */
    ck_assert_int_eq(hx_pg_int(c,
                               "SELECT count(*) FROM (SELECT \"offset\", lag(\"offset\") OVER"
                               " (PARTITION BY partition ORDER BY id) AS prev FROM app.audit) a"
                               " WHERE prev IS NOT NULL AND \"offset\" <> prev + 1",
                               0, NULL),
                     0);
    PGresult *res = PQexec(c, "SELECT partition, \"offset\", key, value::text FROM app.events"
                              " ORDER BY partition, \"offset\"");
    ck_assert(PQresultStatus(res) == PGRES_TUPLES_OK);
    int row = 0;
    for (int p = 0; p < NPARTS; p++)
        for (int64_t off = 0; off < count; off++, row++) {
            ck_assert_int_eq(atoi(PQgetvalue(res, row, 0)), p);
            ck_assert_int_eq(strtoll(PQgetvalue(res, row, 1), NULL, 10), off);
            char key[32], want[512];
            snprintf(key, sizeof(key), "k%" PRId64, off);
            ck_assert_str_eq(PQgetvalue(res, row, 2), key);
            /* jsonb normalises the text (spaces after ':' and ','): compare as jsonb. */
            hx_seq_value("rows", p, off, want, sizeof(want));
            const char *params[] = {PQgetvalue(res, row, 3), want};
            ck_assert_int_eq(hx_pg_int(c, "SELECT ($1::jsonb = $2::jsonb)::int", 2, params), 1);
        }
    PQclear(res);
}

START_TEST(test_random_faults)
{
    rng = seed ? seed : 1;
    say_seed();

    struct world *w = calloc(1, sizeof(*w));
    const char *topics[] = {"files:4", "rows:4", "posts:4"};
    scx_env_start(&w->e, 3, topics, 3);
    w->t0 = hx_now_ms();
    hx_mount_tmpfs(w->e.out_dir, "16m");
    hx_pg_exec(w->e.conn, "CREATE SCHEMA app");
    hx_pg_exec(w->e.conn, "CREATE TABLE app.events (topic text NOT NULL, partition int NOT NULL,"
                          " \"offset\" bigint NOT NULL, key text, value jsonb, headers jsonb,"
                          " ts timestamptz, PRIMARY KEY (topic, partition, \"offset\"))");
    hx_pg_exec(w->e.conn,
               "CREATE TABLE app.audit (id bigserial, partition int, \"offset\" bigint)");
    hx_pg_exec(w->e.conn, "CREATE FUNCTION app.audit() RETURNS trigger LANGUAGE plpgsql AS $$"
                          " BEGIN INSERT INTO app.audit (partition, \"offset\")"
                          " VALUES (NEW.partition, NEW.\"offset\"); RETURN NEW; END $$");
    hx_pg_exec(w->e.conn, "CREATE TRIGGER audit BEFORE INSERT ON app.events FOR EACH ROW"
                          " EXECUTE FUNCTION app.audit()");
    w->rx = rx_start();
    rx_check_pending(w->rx, w->e.dsn);
    rx_set_faults(w->rx, &(struct rx_faults){RX_BACKGROUND});
    for (int i = 0; i < INSTANCES; i++)
        write_config(w, i);
    scx_migrate(w->cfg[0]);
    for (int i = 0; i < INSTANCES; i++)
        start(w, i);

    /* Faults, one after another, while the chunks are produced. */
    int64_t end = hx_now_ms() + FAULT_WINDOW_MS;
    int64_t next_chunk = hx_now_ms();
    bool must[NFAULTS] = {true, true, true, true, true};
    for (;;) {
        /* The chunks due by now (all of them once the window is over). */
        while (w->produced < CHUNKS * PER_CHUNK &&
               (hx_now_ms() >= next_chunk || hx_now_ms() >= end)) {
            produce_chunk(w);
            next_chunk += FAULT_WINDOW_MS / CHUNKS;
        }
        enum fault f;
        if (hx_now_ms() < end) {
            f = pick();
        } else {
            /* Out of time: the kinds that did not happen yet, in order. */
            f = NFAULTS;
            for (int k = 0; k < NFAULTS && f == NFAULTS; k++)
                if (must[k] && w->counts[k] == 0)
                    f = (enum fault)k;
            if (f == NFAULTS && w->produced >= CHUNKS * PER_CHUNK)
                break;
        }
        if (f != NFAULTS)
            apply(w, f);
        pause_ms(300 + (int)rnd(2000));
        revive(w);
    }

    /* Calm: every sink back, every instance running; wait for the last record everywhere. */
    rx_set_faults(w->rx, &(struct rx_faults){0});
    revive(w);
    note(w, "faults over: kill %d, stop %d, pg %d, broker %d, sink %d; settling", w->counts[F_KILL],
         w->counts[F_STOP], w->counts[F_PG], w->counts[F_BROKER], w->counts[F_SINK]);
    int64_t settle_end = hx_now_ms() + SETTLE_MS;
    const char *pls[] = {"pf", "pp", "ph"}, *tps[] = {"files", "rows", "posts"};
    for (int k = 0; k < 3; k++) {
        int64_t left = settle_end - hx_now_ms();
        bool done = left > 0 &&
                    scx_wait_committed(w->e.conn, pls[k], tps[k], NPARTS, w->produced, (int)left);
        if (!done) {
            for (int i = 0; i < INSTANCES; i++) {
                char log[700];
                snprintf(log, sizeof(log), "%s/%s.log", w->e.dir, names[i]);
                fprintf(stderr, "---- %s log:\n%s\n", names[i], scx_log_tail(log, 4000));
            }
            char *cp = hx_pg_value(w->e.conn,
                                   "SELECT string_agg(format('%s %s/%s: committed %s pending %s..%s"
                                   " state %s', pipeline, topic, partition, committed_offset,"
                                   " pending_first_offset, pending_last_offset, state), E'\\n'"
                                   " ORDER BY pipeline, partition) FROM sidecar.checkpoints",
                                   0, NULL);
            fprintf(stderr, "---- checkpoints:\n%s\n", cp);
            free(cp);
        }
        ck_assert_msg(done, "pipeline %s did not reach offset %" PRId64 " (seed %" PRIu64 ")",
                      pls[k], w->produced, seed);
    }
    note(w, "every record committed");
    for (int i = 0; i < INSTANCES; i++) {
        /* One that died during the run (a crash) is not a shutdown failure: say which. */
        bool was_alive = hx_pid_alive(w->pid[i]);
        kill(w->pid[i], SIGTERM);
        int rc = hx_wait(w->pid[i], 20000);
        if (rc == -1) {
            /* Hung: SIGABRT makes it log where its main thread is (the crash record). */
            kill(w->pid[i], SIGABRT);
            hx_wait(w->pid[i], 10000);
        }
        if (rc != 0) {
            char log[700];
            snprintf(log, sizeof(log), "%s/%s.log", w->e.dir, names[i]);
            fprintf(stderr, "---- %s log:\n%s\n", names[i], scx_log_tail(log, 6000));
        }
        ck_assert_msg(was_alive, "%s died during the run (status %d, seed %" PRIu64 ")", names[i],
                      rc, seed);
        ck_assert_msg(rc == 0, "%s did not exit cleanly on SIGTERM (status %d, seed %" PRIu64 ")",
                      names[i], rc, seed);
    }

    /* Exactly once, in order, in every sink; nothing stopped, nothing dead-lettered. */
    ck_assert_int_eq(hx_pg_int(w->e.conn,
                               "SELECT count(*) FROM sidecar.checkpoints WHERE state <> 'ok' OR"
                               " pending_first_offset IS NOT NULL",
                               0, NULL),
                     0);
    ck_assert_int_eq(hx_pg_int(w->e.conn, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL), 0);
    scx_verify_files(&w->e, "pf", "files", NPARTS, w->produced);
    verify_rows(w->e.conn, w->produced);
    struct rx_verify_opts v = {.pipeline = "ph",
                               .topic = "posts",
                               .nparts = NPARTS,
                               .count = w->produced,
                               .seq_values = true};
    ck_assert_int_eq(rx_verify(w->rx, &v), NPARTS * w->produced);
    long long replays =
        hx_pg_int(w->e.conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'replay'", 0, NULL);
    long long fenced =
        hx_pg_int(w->e.conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'fenced'", 0, NULL);
    note(w,
         "exactly once in all three sinks: %" PRId64 " records per partition and topic; %lld "
         "replayed batches, %lld fenced writes, %zu HTTP requests (%ld checked pending)",
         w->produced, replays, fenced, rx_nrequests(w->rx), rx_pending_checked(w->rx));
    rx_stop(w->rx);
    scx_env_stop(&w->e);
    free(w);
}
END_TEST

int main(void)
{
    const char *env = getenv("CHAOS_SEED");
    seed = env && *env ? strtoull(env, NULL, 10)
                       : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ (uint64_t)hx_now_ms();
    Suite *s = suite_create("random");
    TCase *tc = tcase_create("random faults");
    tcase_set_timeout(tc, 300); /* 10 s setup, 120 s of faults, at most 120 s to settle */
    tcase_add_test(tc, test_random_faults);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (failed) {
        fprintf(stderr, "chaos_check_random FAILED; ");
        say_seed();
    }
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
