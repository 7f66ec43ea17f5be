/*
 * check_file_faults.c - the file sink's file changed under a running
 * sidecar.
 *
 * Deleted: writing on would go into an unlinked inode (delivered, and gone),
 * so the partition stops in the error state with a message that says what
 * happened and what to do; the other partitions keep delivering.
 * Made read-only: the sidecar holds the file open for writing, so delivery
 * simply continues (permissions are checked at open).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "scx.h"

START_TEST(test_file_deleted_or_read_only)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {0};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 300);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 2, 300, 60000), "log:\n%s",
                  scx_log_tail(log, 3000));

    char f0[800], f1[800];
    snprintf(f0, sizeof(f0), "%s/orders/0.jsonl", e.out_dir);
    snprintf(f1, sizeof(f1), "%s/orders/1.jsonl", e.out_dir);
    ck_assert_int_eq(unlink(f0), 0);
    ck_assert_int_eq(chmod(f1, 0444), 0);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 300, 200);

    /* Partition 1 (read-only file) delivers on; partition 0 (deleted) stops with a reason. */
    int64_t end = hx_now_ms() + 60000;
    long long err0 = 0;
    while (hx_now_ms() < end &&
           (err0 = hx_pg_int(e.conn,
                             "SELECT count(*) FROM sidecar.checkpoints WHERE partition = 0 AND "
                             "state = 'error' AND error LIKE '%was deleted while the sidecar%'",
                             0, NULL)) == 0)
        usleep(100000);
    ck_assert_msg(err0 == 1, "partition 0 not in the error state; log:\n%s",
                  scx_log_tail(log, 3000));
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT committed_offset FROM sidecar.checkpoints WHERE "
                               "partition = 0",
                               0, NULL),
                     300);
    end = hx_now_ms() + 60000;
    while (hx_now_ms() < end &&
           hx_pg_int(e.conn, "SELECT committed_offset FROM sidecar.checkpoints WHERE partition = 1",
                     0, NULL) < 500)
        usleep(100000);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT committed_offset FROM sidecar.checkpoints WHERE "
                               "partition = 1 AND state = 'ok'",
                               0, NULL),
                     500);
    ck_assert(hx_pid_alive(pid));
    ck_assert_int_eq(access(f0, F_OK), -1); /* not recreated behind the operator's back */
    scx_stop(pid, 15000);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("file_faults");
    TCase *tc = tcase_create("file_faults");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_file_deleted_or_read_only);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
