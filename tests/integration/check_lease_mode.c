/*
 * check_lease_mode.c - "assignment": "lease" operated as a user does, and
 * what both modes share about instances and operator control:
 *   - pin, move, drain (and undo) from the command line on three running
 *     instances: each takes effect at once, through a cooperative handoff
 *     that replays nothing, and shows in `sidecar status`, in events and in
 *     the metrics; misuse is refused with a clear message;
 *   - a second process started with an instance_id a live process already
 *     has in the pipeline exits 2 and disturbs nothing, while a restart
 *     right after a kill -9 is not refused (both modes);
 *   - pause_partition() takes effect within a batch: records produced right
 *     after it are not delivered, although the owner would only re-read the
 *     row at its next renewal (renew_ms 10 s here): the control channel
 *     reaches it at once, and no batch is pended on a paused row (both
 *     modes).
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "scx.h"
#include "scx_lease.h"

#define NPARTS 6

/* Runs `sidecar ARGS...` (NULL-terminated after cfg); returns the exit code, output in *out. */
static int sidecar(char **out, const char *cmd, const char *cfg, ...)
{
    const char *argv[24] = {hx_sidecar_bin(), cmd, "-c", cfg};
    int n = 4;
    va_list ap;
    va_start(ap, cfg);
    const char *a;
    while (n < 23 && (a = va_arg(ap, const char *)) != NULL)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return hx_run(argv, NULL, 90000, out);
}

static char *owner_of(PGconn *conn, int partition)
{
    char p[16];
    snprintf(p, sizeof(p), "%d", partition);
    const char *params[] = {p};
    return hx_pg_value(conn,
                       "SELECT owner FROM sidecar.leases WHERE pipeline = 'p1' AND topic = 'orders'"
                       " AND partition = $1::int AND expires_at > now()",
                       1, params);
}

/* A partition sc owns now. */
static int some_partition_of(PGconn *conn, const char *sc)
{
    const char *params[] = {sc};
    return (int)hx_pg_int(conn,
                          "SELECT min(partition) FROM sidecar.leases WHERE pipeline = 'p1'"
                          " AND owner = $1 AND expires_at > now() AND pinned_to IS NULL",
                          1, params);
}

static long long lease_events(PGconn *conn, const char *action)
{
    const char *params[] = {action};
    return hx_pg_int(conn,
                     "SELECT count(*) FROM sidecar.events WHERE kind = 'lease'"
                     " AND detail->>'action' = $1",
                     1, params);
}

/* The offsets committed to Kafka for group in topic's partitions 0..n-1 (into offsets). */
static void kafka_committed(const char *bootstrap, const char *group, const char *topic, int n,
                            int64_t *offsets)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    ck_assert(rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err, sizeof(err)) ==
              RD_KAFKA_CONF_OK);
    ck_assert(rd_kafka_conf_set(conf, "group.id", group, err, sizeof(err)) == RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    ck_assert_msg(rk != NULL, "%s", err);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++)
        rd_kafka_topic_partition_list_add(l, topic, p);
    ck_assert_int_eq(rd_kafka_committed(rk, l, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    for (int p = 0; p < n; p++)
        offsets[p] = l->elems[p].offset;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
}

START_TEST(test_pin_move_drain_from_the_command_line)
{
    struct scx_env e;
    const char *topics[] = {"orders:6"};
    scx_env_start(&e, 1, topics, 1);
    const char *names[] = {"sc-1", "sc-2", "sc-3"};
    static char cfgs[3][700];
    int ports[3];
    pid_t pids[3];
    for (int i = 0; i < 3; i++) {
        ports[i] = scx_free_port();
        struct scx_opts o = {.assignment = "lease", .admin_port = ports[i], .max_records = 50};
        snprintf(cfgs[i], sizeof(cfgs[i]), "%s", scx_config(&e, names[i], &o));
    }
    scx_migrate(cfgs[0]);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 0, 300);
    for (int i = 0; i < 3; i++)
        pids[i] = scx_start(&e, cfgs[i], names[i], NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_balanced(e.conn, "p1", names, 3, NPARTS, 60000), "not balanced: %s\n%s",
                  scx_owner_map(e.conn, "p1"), scx_log_tail(log, 3000));
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, 300, 60000), "%s",
                  scx_log_tail(log, 3000));

    /* Pin a partition of sc-1 to sc-3: handed over at once, and it stays there. */
    int k = some_partition_of(e.conn, "sc-1");
    char ks[16];
    snprintf(ks, sizeof(ks), "%d", k);
    char *out = NULL;
    int rc = sidecar(&out, "pin", cfgs[0], "--topic", "orders", "--partition", ks, "--instance",
                     "sc-3", "--wait", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "pinned p1 orders[") && strstr(out, "done"), "%d: %s", rc,
                  out);
    free(out);
    char *o = owner_of(e.conn, k);
    ck_assert_str_eq(o, "sc-3");
    free(o);
    ck_assert_int_eq(lease_events(e.conn, "pin"), 1);

    /* Move a partition of sc-2 to sc-1. */
    int m = some_partition_of(e.conn, "sc-2");
    char ms[16];
    snprintf(ms, sizeof(ms), "%d", m);
    rc = sidecar(&out, "move", cfgs[0], "--pipeline", "p1", "--topic", "orders", "--partition", ms,
                 "--instance", "sc-1", "--wait", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "moving p1 orders[") && strstr(out, "done"), "%d: %s", rc,
                  out);
    free(out);
    ck_assert_int_eq(lease_events(e.conn, "move"), 1);

    /* The status shows mode, pin and share. */
    rc = sidecar(&out, "status", cfgs[0], NULL);
    ck_assert_msg(rc == 0 && strstr(out, "MODE") && strstr(out, "PINNED") && strstr(out, "SHARE") &&
                      strstr(out, "lease") && strstr(out, "INSTANCE") &&
                      strstr(out, "sc-2      p1        lease"),
                  "%s", out);
    free(out);
    rc = sidecar(&out, "status", cfgs[0], "--json", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "\"pinned_to\": \"sc-3\"") &&
                      strstr(out, "\"assignment\": \"lease\"") && strstr(out, "\"owner_share\""),
                  "%s", out);
    free(out);

    /* Drain sc-2: it hands everything over and idles; the others are balanced (3 each). */
    rc = sidecar(&out, "drain", cfgs[0], "--instance", "sc-2", "--wait", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "draining sc-2") && strstr(out, "done"), "%d: %s", rc,
                  out);
    free(out);
    const char *two[] = {"sc-1", "sc-3"};
    ck_assert_msg(scx_wait_balanced(e.conn, "p1", two, 2, NPARTS, 30000), "%s",
                  scx_owner_map(e.conn, "p1"));
    ck_assert_int_eq(scx_leases_of(e.conn, "p1", "sc-2"), 0);
    o = owner_of(e.conn, k);
    ck_assert_str_eq(o, "sc-3"); /* the pin held */
    free(o);
    ck_assert_int_ge(scx_metric_at(ports[1], "sidecar_lease_handoffs_total", "direction=\"out\""),
                     1);
    ck_assert_int_ge(
        scx_metric_at(ports[0], "sidecar_lease_handoffs_total", "direction=\"in\"") +
            scx_metric_at(ports[2], "sidecar_lease_handoffs_total", "direction=\"in\""),
        1);
    ck_assert_int_eq(scx_metric_at(ports[0], "sidecar_lease_share", "pipeline=\"p1\""), 3);
    ck_assert_int_eq(scx_metric_at(ports[0], "sidecar_lease_instances", "pipeline=\"p1\""), 2);
    ck_assert_int_eq(scx_metric_at(ports[0], "sidecar_partitions_owned", "pipeline=\"p1\""),
                     scx_leases_of(e.conn, "p1", "sc-1"));

    /* Records keep flowing while the drained instance idles. */
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 300, 200);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", NPARTS, 500, 60000));

    /* Undrained, it takes its share again (from the others, which give up exactly that). */
    rc = sidecar(&out, "drain", cfgs[0], "--instance", "sc-2", "--undo", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "undrained sc-2"), "%d: %s", rc, out);
    free(out);
    ck_assert_msg(scx_wait_balanced(e.conn, "p1", names, 3, NPARTS, 30000), "%s",
                  scx_owner_map(e.conn, "p1"));
    ck_assert_int_ge(scx_metric_at(ports[1], "sidecar_lease_steals_total", "pipeline=\"p1\""), 1);
    rc = sidecar(&out, "unpin", cfgs[0], "--topic", "orders", "--partition", ks, NULL);
    ck_assert_msg(rc == 0 && strstr(out, "unpinned"), "%d: %s", rc, out);
    free(out);

    /* Misuse: clear errors, nothing changed. */
    rc = sidecar(&out, "pin", cfgs[0], "--topic", "orders", "--partition", "0", "--instance",
                 "nobody", NULL);
    ck_assert_msg(rc == 1 && strstr(out, "no instance \"nobody\"") && strstr(out, "sc-1"), "%d: %s",
                  rc, out);
    free(out);
    rc = sidecar(&out, "pin", cfgs[0], "--topic", "orders", "--partition", "6", "--instance",
                 "sc-1", NULL);
    ck_assert_msg(rc == 1 && strstr(out, "has 6 partitions"), "%d: %s", rc, out);
    free(out);
    rc = sidecar(&out, "move", cfgs[0], "--topic", "orders", "--partition", "0", NULL);
    ck_assert_msg(rc == 2 && strstr(out, "--instance ID is required"), "%d: %s", rc, out);
    free(out);
    rc = sidecar(&out, "pin", cfgs[0], "--topic", "refunds", "--partition", "0", "--instance",
                 "sc-1", NULL);
    ck_assert_msg(rc == 2 && strstr(out, "does not consume topic"), "%d: %s", rc, out);
    free(out);
    struct scx_opts go = {0};
    const char *group_cfg = scx_config(&e, "group", &go);
    rc = sidecar(&out, "drain", group_cfg, "--instance", "sc-1", NULL);
    ck_assert_msg(rc == 2 && strstr(out, "kafka-group"), "%d: %s", rc, out);
    free(out);

    /* A healthy handoff replays nothing; nobody was fenced. */
    ck_assert_int_eq(scx_events(e.conn, "replay", NULL), 0);
    ck_assert_int_eq(scx_events(e.conn, "fenced", NULL), 0);
    ck_assert_int_ge(lease_events(e.conn, "handoff_request"), 1);

    for (int i = 0; i < 3; i++)
        scx_stop(pids[i], 20000);
    ck_assert_int_eq(scx_leases_of(e.conn, "p1", NULL), 0);
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.instance_status WHERE live", 0, NULL), 0);
    scx_verify_files(&e, "p1", "orders", NPARTS, 500);
    /* Without joining a group, the offsets are still mirrored to Kafka under group_id, so lag
     * tools keep working. */
    int64_t offsets[NPARTS];
    kafka_committed(e.mock.bootstrap, "sidecar-p1", "orders", NPARTS, offsets);
    for (int p = 0; p < NPARTS; p++)
        ck_assert_msg(offsets[p] == 500, "partition %d: committed offset %lld in Kafka", p,
                      (long long)offsets[p]);
    scx_env_stop(&e);
}
END_TEST

/*
 * A handoff while the owner's batch in flight takes longer than the lease's
 * slack (every write of sc-a sleeps 8 s, a TTL is 3 s): the partition is
 * renewed until its worker has finished the batch and released the lease,
 * so the batch is committed by its writer and the next owner replays
 * nothing.  (When the partition stopped being renewed as its handoff began,
 * the lease ran out mid-batch: sc-b took it and replayed the batch, and
 * sc-a's commit was fenced.)
 */
START_TEST(test_slow_batch_during_a_handoff_is_not_replayed)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    static char cfg_a[700], cfg_b[700];
    struct scx_opts o = {.assignment = "lease", .max_records = 50};
    snprintf(cfg_a, sizeof(cfg_a), "%s", scx_config(&e, "sc-a", &o));
    snprintf(cfg_b, sizeof(cfg_b), "%s", scx_config(&e, "sc-b", &o));
    scx_migrate(cfg_a);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 20);
    pid_t a = scx_start(&e, cfg_a, "sc-a", "after_write=sleep:8000");
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-a.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 2, 20, 90000), "%s",
                  scx_log_tail(log, 3000));
    pid_t b = scx_start(&e, cfg_b, "sc-b", NULL);
    const char *names[] = {"sc-a", "sc-b"};
    ck_assert_msg(scx_wait_balanced(e.conn, "p1", names, 2, 2, 60000), "not balanced: %s",
                  scx_owner_map(e.conn, "p1"));

    /* sc-a pends a batch of its partition and sleeps in its write; then the move. */
    int m = some_partition_of(e.conn, "sc-a");
    char ms[16];
    snprintf(ms, sizeof(ms), "%d", m);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 20, 20);
    const char *params[] = {ms};
    int64_t end = hx_now_ms() + 60000;
    while (hx_pg_int(e.conn,
                     "SELECT count(*) FROM sidecar.checkpoints WHERE pipeline = 'p1'"
                     " AND topic = 'orders' AND partition = $1::int AND pending_first_offset = 20",
                     1, params) == 0 &&
           hx_now_ms() < end)
        usleep(20000);
    char *out = NULL;
    int rc = sidecar(&out, "move", cfg_a, "--topic", "orders", "--partition", ms, "--instance",
                     "sc-b", "--wait", NULL);
    ck_assert_msg(rc == 0 && strstr(out, "done"), "%d: %s\n%s", rc, out, scx_log_tail(log, 3000));
    free(out);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 2, 40, 90000), "%s",
                  scx_log_tail(log, 3000));
    ck_assert_msg(scx_events(e.conn, "replay", NULL) == 0 &&
                      scx_events(e.conn, "fenced", NULL) == 0,
                  "replays %lld, fenced %lld\n%s", scx_events(e.conn, "replay", NULL),
                  scx_events(e.conn, "fenced", NULL), scx_log_tail(log, 3000));
    scx_stop(a, 30000);
    scx_stop(b, 30000);
    scx_verify_files(&e, "p1", "orders", 2, 40);
    scx_env_stop(&e);
}
END_TEST

/*
 * An instance that loses Kafka after it had its share: sc-b reads its own
 * kafka-mock cluster (the same topic), which is then stopped.  About a TTL
 * later sc-b tells the others it sees no partitions: it is no longer
 * eligible, hands its partition over and sc-a, which still reaches its
 * Kafka, consumes everything.  (Before, sc-b kept its share: its partition
 * stalled with nobody to take it over.)
 */
START_TEST(test_instance_without_kafka_takes_no_share)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    struct hx_mock other;
    hx_mock_start(&other, 1, topics, 1);
    static char cfg_a[700], cfg_b[700];
    struct scx_opts o = {.assignment = "lease"};
    snprintf(cfg_a, sizeof(cfg_a), "%s", scx_config(&e, "sc-a", &o));
    /* sc-b's config, reading the other cluster. */
    snprintf(cfg_b, sizeof(cfg_b), "%s", scx_config(&e, "sc-b", &o));
    char *text = hx_read_file(cfg_b, NULL);
    char *at = strstr(text, e.mock.bootstrap);
    ck_assert(at != NULL);
    *at = '\0';
    hx_write_file(cfg_b, "%s%s%s", text, other.bootstrap, at + strlen(e.mock.bootstrap));
    free(text);
    scx_migrate(cfg_a);
    pid_t a = scx_start(&e, cfg_a, "sc-a", NULL);
    pid_t b = scx_start(&e, cfg_b, "sc-b", NULL);
    const char *names[] = {"sc-a", "sc-b"};
    ck_assert_msg(scx_wait_balanced(e.conn, "p1", names, 2, 2, 60000), "not balanced: %s",
                  scx_owner_map(e.conn, "p1"));

    hx_mock_stop(&other);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-b.log", e.dir);
    const char *one[] = {"sc-a"};
    ck_assert_msg(scx_wait_balanced(e.conn, "p1", one, 1, 2, 60000), "%s\n%s",
                  scx_owner_map(e.conn, "p1"), scx_log_tail(log, 3000));
    ck_assert_int_eq(scx_leases_of(e.conn, "p1", "sc-b"), 0);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 50);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 2, 50, 60000));
    text = hx_read_file(log, NULL);
    ck_assert_msg(text && strstr(text, "Kafka unreachable"), "%s", scx_log_tail(log, 3000));
    free(text);
    kill(b, SIGKILL);
    hx_wait(b, 10000);
    scx_stop(a, 30000);
    scx_verify_files(&e, "p1", "orders", 2, 50);
    scx_env_stop(&e);
}
END_TEST

/* _i: 0 kafka-group, 1 lease */
START_TEST(test_duplicate_instance_id_is_refused)
{
    const char *mode = _i ? "lease" : "kafka-group";
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {.assignment = mode, .admin_port = scx_free_port()};
    struct scx_opts dup = {.assignment = mode}; /* no admin port: only the instance_id clashes */
    static char cfg[700];
    snprintf(cfg, sizeof(cfg), "%s", scx_config(&e, "sc-1", &o));
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 100);
    pid_t a = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 2, 100, 60000));

    /* A second process with the same instance_id (its own config file, same id). */
    char dup_cfg[700];
    snprintf(dup_cfg, sizeof(dup_cfg), "%s", scx_config(&e, "sc-1", &dup));
    char *out = NULL;
    const char *argv[] = {hx_sidecar_bin(), "run", "-c", dup_cfg, NULL};
    int64_t t0 = hx_now_ms();
    int rc = hx_run(argv, NULL, 60000, &out);
    ck_assert_msg(rc == 2, "exit %d, want 2:\n%s", rc, out);
    ck_assert_msg(strstr(out, "instance_id \"sc-1\" is already in use in pipeline \"p1\"") &&
                      strstr(out, "give every instance its own instance_id"),
                  "%s", out);
    ck_assert_msg(hx_now_ms() - t0 < 30000, "took %lld ms", (long long)(hx_now_ms() - t0));
    free(out);

    /* The first one did not notice: it still owns everything and keeps delivering. */
    ck_assert_int_eq(scx_leases_of(e.conn, "p1", "sc-1"), 2);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 100, 100);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 2, 200, 60000));

    /* Killed, and restarted at once: the same id is its own again (the old session is gone). */
    kill(a, SIGKILL);
    hx_wait(a, 10000);
    a = scx_start(&e, cfg, "sc-1b", NULL);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 200, 100);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1b.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 2, 300, 60000), "%s",
                  scx_log_tail(log, 3000));
    char *l = hx_read_file(log, NULL);
    ck_assert_msg(l && !strstr(l, "already in use"), "%s", l);
    free(l);
    scx_stop(a, 20000);
    scx_verify_files(&e, "p1", "orders", 2, 300);
    scx_env_stop(&e);
}
END_TEST

static long long committed(PGconn *conn, int partition)
{
    char p[16];
    snprintf(p, sizeof(p), "%d", partition);
    const char *params[] = {p};
    char *v = hx_pg_value(conn,
                          "SELECT committed_offset FROM sidecar.checkpoints WHERE pipeline = 'p1'"
                          " AND topic = 'orders' AND partition = $1::int",
                          1, params);
    long long n = v ? strtoll(v, NULL, 10) : -1;
    free(v);
    return n;
}

struct log_wait {
    const char *path;
    const char *text;
};

static bool log_has(void *arg)
{
    const struct log_wait *w = arg;
    char *d = hx_read_file(w->path, NULL);
    bool found = d && strstr(d, w->text);
    free(d);
    return found;
}

/* _i: 0 kafka-group, 1 lease */
START_TEST(test_pause_takes_effect_within_a_batch)
{
    const char *mode = _i ? "lease" : "kafka-group";
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    /* Renewals 10 s apart: anything faster is the control channel at work. */
    struct scx_opts o = {.assignment = mode, .ttl_ms = 30000, .renew_ms = 10000, .workers = 1};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 100);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 2, 100, 60000), "%s",
                  scx_log_tail(log, 3000));

    /* Pause partition 0, and produce at once. */
    int64_t t0 = hx_now_ms();
    hx_pg_exec(e.conn, "SELECT sidecar.pause_partition('p1', 'orders', 0)");
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 100, 100);

    /* The owner hears of the pause long before its next renewal; partition 1 delivers its new
     * records; partition 0 delivered none of the records produced after the pause. */
    struct log_wait w = {log, "paused by an operator"};
    ck_assert_msg(hx_wait_until(log_has, &w, 60000), "the owner never saw the pause:\n%s",
                  scx_log_tail(log, 3000));
    int64_t heard_ms = hx_now_ms() - t0;
    int64_t end = hx_now_ms() + 60000;
    while (committed(e.conn, 1) != 200 && hx_now_ms() < end)
        usleep(100000);
    ck_assert_int_eq(committed(e.conn, 1), 200);
    ck_assert_msg(committed(e.conn, 0) == 100,
                  "partition 0 committed %lld after pause_partition(): records produced after it "
                  "went through (the owner heard of the pause after %lld ms)",
                  committed(e.conn, 0), (long long)heard_ms);
    fprintf(stderr, "%s: the owner applied the pause %lld ms after pause_partition()\n", mode,
            (long long)heard_ms);
    ck_assert_msg(heard_ms < 5000, "the pause took %lld ms to reach the owner (renew_ms 10000)",
                  (long long)heard_ms);

    /* Resumed: the rest comes, once. */
    hx_pg_exec(e.conn, "SELECT sidecar.resume_partition('p1', 'orders', 0)");
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 2, 200, 60000), "%s",
                  scx_log_tail(log, 3000));
    scx_stop(pid, 20000);
    scx_verify_files(&e, "p1", "orders", 2, 200);
    ck_assert_int_eq(scx_events(e.conn, "fenced", NULL), 0);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("lease_mode");
    TCase *tc = tcase_create("lease_mode");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_pin_move_drain_from_the_command_line);
    tcase_add_loop_test(tc, test_duplicate_instance_id_is_refused, 0, 2);
    tcase_add_loop_test(tc, test_pause_takes_effect_within_a_batch, 0, 2);
    suite_add_tcase(s, tc);
    /* Their own case, so that CK_RUN_CASE=faults runs them alone. */
    TCase *slow = tcase_create("faults");
    tcase_set_timeout(slow, 600);
    tcase_add_test(slow, test_slow_batch_during_a_handoff_is_not_replayed);
    tcase_add_test(slow, test_instance_without_kafka_takes_no_share);
    suite_add_tcase(s, slow);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
