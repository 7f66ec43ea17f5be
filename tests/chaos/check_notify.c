/*
 * check_notify.c - invariants I7/I8 under load: above notify.max_per_second
 * the sidecar stops notifying per commit and sends one NOTIFY per
 * coalesce_ms; a watcher that re-reads the event table on every
 * notification (in commit order, below the snapshot xmin horizon) still
 * sees every event exactly once; the switch is an event and a metric, and
 * the sidecar switches back when the rate falls.
 */
#include <check.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scx.h"

#define MAX_EVENTS 400000

struct watcher {
    const char *dsn;
    atomic_bool stop;
    atomic_long notifications;
    atomic_llong seen_count;
    unsigned char *seen; /* by event id */
    long long duplicates;
    char last_xid[32];
    long long last_id;
};

/* Reads every event after the watcher's position whose transaction is finished. */
static void read_new(struct watcher *w, PGconn *conn)
{
    char id[32];
    snprintf(id, sizeof(id), "%lld", w->last_id);
    const char *params[] = {w->last_xid, id};
    PGresult *res = PQexecParams(conn,
                                 /* xid8 prints as a number; selecting xid::text would make
                                  * ORDER BY xid sort the text ("1000" < "999"). */
                                 "SELECT xid, id FROM sidecar.events"
                                 " WHERE (xid, id) > ($1::xid8, $2::bigint)"
                                 "   AND xid < pg_snapshot_xmin(pg_current_snapshot())"
                                 " ORDER BY xid, id",
                                 2, NULL, params, NULL, NULL, 0);
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    for (int i = 0; i < PQntuples(res); i++) {
        long long e = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        ck_assert(e > 0 && e < MAX_EVENTS);
        if (w->seen[e])
            w->duplicates++;
        w->seen[e] = 1;
        w->seen_count++;
        snprintf(w->last_xid, sizeof(w->last_xid), "%s", PQgetvalue(res, i, 0));
        w->last_id = e;
    }
    PQclear(res);
}

static void *watch(void *arg)
{
    struct watcher *w = arg;
    PGconn *conn = hx_pg_connect(w->dsn);
    PQclear(PQexec(conn, "LISTEN sidecar_events"));
    snprintf(w->last_xid, sizeof(w->last_xid), "0");
    while (!atomic_load(&w->stop)) {
        struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
        poll(&pfd, 1, 1000); /* a notification, or the 1 s fallback poll */
        PQconsumeInput(conn);
        PGnotify *n;
        while ((n = PQnotifies(conn)) != NULL) {
            atomic_fetch_add(&w->notifications, 1);
            PQfreemem(n);
        }
        read_new(w, conn);
    }
    read_new(w, conn);
    PQfinish(conn);
    return NULL;
}

static double metric_now(int port, const char *name)
{
    long status;
    char *m = scx_http_get(port, "/metrics", NULL, &status);
    double v = scx_metric(m, name, "");
    free(m);
    return v;
}

START_TEST(test_coalesced_notifications_lose_nothing)
{
    struct scx_env e;
    const char *topics[] = {"orders:4"};
    scx_env_start(&e, 1, topics, 1);
    int port = scx_free_port();
    struct scx_opts o = {.admin_port = port,
                         .max_records = 5,
                         .max_wait_ms = 1,
                         .workers = 4,
                         .extra_top =
                             "  \"notify\": {\"max_per_second\": 40, \"coalesce_ms\": 200}"};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);

    struct watcher w = {.dsn = e.dsn, .seen = calloc(MAX_EVENTS, 1)};
    pthread_t t;
    pthread_create(&t, NULL, watch, &w);

    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    /* A steady load: 4 x 8000 records in batches of 5 = 6400 commits. */
    hx_produce_seq(e.mock.bootstrap, "orders", 4, 0, 8000);
    bool saw_coalesced = false;
    int64_t end = hx_now_ms() + 60000;
    while (!scx_wait_committed(e.conn, "p1", "orders", 4, 8000, 200) && hx_now_ms() < end)
        if (metric_now(port, "sidecar_notify_coalesced") == 1)
            saw_coalesced = true;
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 4, 8000, 1000));
    ck_assert_msg(saw_coalesced, "the gauge never showed coalesced mode");

    long long commits =
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'commit'", 0, NULL);
    const char *mode_params[] = {"coalesced"};
    ck_assert_int_ge(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.events WHERE kind = 'notify_mode'"
                               " AND detail->>'mode' = $1",
                               1, mode_params),
                     1);
    long during = atomic_load(&w.notifications);
    fprintf(stderr, "%lld commits, %ld notifications during the load\n", commits, during);
    ck_assert_msg(during * 4 < commits, "%ld notifications for %lld commits: not coalesced", during,
                  commits);

    /* Calm: back to one notification per commit. */
    end = hx_now_ms() + 30000;
    const char *back_params[] = {"per_commit"};
    while (hx_pg_int(e.conn,
                     "SELECT count(*) FROM sidecar.events WHERE kind = 'notify_mode'"
                     " AND detail->>'mode' = $1",
                     1, back_params) == 0 &&
           hx_now_ms() < end)
        usleep(200000);
    ck_assert_int_eq(metric_now(port, "sidecar_notify_coalesced"), 0);
    ck_assert_double_eq(metric_now(port, "sidecar_notify_mode_switches_total"), 2);
    long before = atomic_load(&w.notifications);
    hx_produce_seq(e.mock.bootstrap, "orders", 4, 8000, 1); /* one record per partition */
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 4, 8001, 30000));
    /* The four commits' notifications arrive after the commits: wait for them (a bound, not
     * a pause; a coalescing sidecar would send fewer and fail here). */
    end = hx_now_ms() + 30000;
    while (atomic_load(&w.notifications) - before < 4 && hx_now_ms() < end)
        usleep(50000);
    ck_assert_int_ge(atomic_load(&w.notifications) - before, 4);

    scx_stop(pid, 20000);
    /* The stopped sidecar's last events (lease releases) are committed: wait until the
     * watcher has read as many events as the table holds, then stop it. */
    long long total = 0;
    end = hx_now_ms() + 30000;
    do {
        total = hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.events", 0, NULL);
        if (atomic_load(&w.seen_count) >= total)
            break;
        usleep(50000);
    } while (hx_now_ms() < end);
    atomic_store(&w.stop, true);
    pthread_join(t, NULL);

    /* The watcher saw every event exactly once. */
    total = hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.events", 0, NULL);
    ck_assert_int_eq(w.duplicates, 0);
    ck_assert_msg(atomic_load(&w.seen_count) == total, "watcher saw %lld of %lld events",
                  (long long)atomic_load(&w.seen_count), total);
    free(w.seen);
    scx_verify_files(&e, "p1", "orders", 4, 8001);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("notify");
    TCase *tc = tcase_create("coalesced");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_coalesced_notifications_lose_nothing);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
