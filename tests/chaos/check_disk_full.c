/*
 * check_disk_full.c - the file sink on a full disk (ENOSPC is transient).
 *
 * The file sink's directory is a small tmpfs that fills up part way through
 * a backlog.  While it is full the sidecar keeps running, the partitions
 * are not put in the error state, their checkpoints do not advance past
 * what is on disk, and the failed batch is retried with backoff.  When the
 * tmpfs grows (space returns), delivery resumes by itself, without a
 * restart, and every record is in the files exactly once, in order, with
 * each file exactly as long as its committed write offset: no half-written
 * batch is left behind.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scx.h"

#define NPARTS 2
#define COUNT  3000 /* per partition: ~200 bytes a line, ~1.2 MB in all */

static double sink_errors(int port)
{
    return scx_metric_at(port, "sidecar_sink_errors_total", "");
}

START_TEST(test_disk_full_then_space_returns)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    hx_mount_tmpfs(e.out_dir, "192k");
    int port = scx_free_port();
    struct scx_opts o = {.admin_port = port};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", NPARTS, 0, COUNT);

    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);

    /* The disk fills: writes fail and are retried (at least twice: backoff, not give up). */
    int64_t end = hx_now_ms() + 60000;
    while (sink_errors(port) < 2 && hx_now_ms() < end)
        usleep(100000);
    ck_assert_msg(sink_errors(port) >= 2, "no failed writes on the full disk; log:\n%s",
                  scx_log_tail(log, 3000));
    ck_assert_msg(hx_pid_alive(pid), "the sidecar exited on a full disk; log:\n%s",
                  scx_log_tail(log, 3000));
    char *tail = hx_read_file(log, NULL);
    ck_assert_ptr_nonnull(tail);
    ck_assert_msg(strstr(tail, "No space left on device") != NULL, "log:\n%s",
                  scx_log_tail(log, 3000));
    free(tail);
    ck_assert_int_lt(hx_pg_int(e.conn,
                               "SELECT coalesce(sum(committed_offset), 0) FROM sidecar.checkpoints "
                               "WHERE pipeline = 'p1'",
                               0, NULL),
                     NPARTS * COUNT);
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.checkpoints WHERE state <> 'ok'", 0, NULL),
        0);

    /* Space returns: the same process finishes the backlog. */
    hx_tmpfs_resize(e.out_dir, "16m");
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", NPARTS, COUNT, 120000),
                  "delivery did not resume after space returned; log:\n%s",
                  scx_log_tail(log, 3000));
    ck_assert_msg(hx_pid_alive(pid), "the sidecar was restarted");
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'error'", 0, NULL), 0);
    scx_stop(pid, 15000);
    scx_verify_files(&e, "p1", "orders", NPARTS, COUNT);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("disk_full");
    TCase *tc = tcase_create("enospc");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_disk_full_then_space_returns);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
