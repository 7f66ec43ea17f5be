/*
 * check_file_faults.c - the file sink's file changed under a running
 * sidecar.
 *
 * Deleted: writing on would go into an unlinked inode (delivered, and gone),
 * so the partition stops in the error state with a message that says what
 * happened and what to do; the other partitions keep delivering.  The way
 * out while it runs: `sidecar reset --to-offset earliest --write-offset 0`,
 * after which the owner opens the path afresh and writes a whole new file.
 * Moved away: the same error (writing on would go into the moved file); put
 * back, `sidecar retry` continues with the pending batch through a handle
 * opened anew.
 * Made read-only: the sidecar holds the file open for writing, so delivery
 * simply continues (permissions are checked at open).
 * A failed fdatasync: the batch is not committed; it is written again at its
 * offset after the partition's backoff, then synced and committed.
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
    const char *topics[] = {"orders:3"};
    scx_env_start(&e, 1, topics, 1);
    struct scx_opts o = {0};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 3, 0, 300);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 3, 300, 60000), "log:\n%s",
                  scx_log_tail(log, 3000));

    char f0[800], f1[800], f2[800], f2away[810];
    snprintf(f0, sizeof(f0), "%s/orders/0.jsonl", e.out_dir);
    snprintf(f1, sizeof(f1), "%s/orders/1.jsonl", e.out_dir);
    snprintf(f2, sizeof(f2), "%s/orders/2.jsonl", e.out_dir);
    snprintf(f2away, sizeof(f2away), "%s.away", f2);
    ck_assert_int_eq(unlink(f0), 0);
    ck_assert_int_eq(chmod(f1, 0444), 0);
    ck_assert_int_eq(rename(f2, f2away), 0);
    hx_produce_seq(e.mock.bootstrap, "orders", 3, 300, 200);

    /* Partition 1 (read-only file) delivers on; partition 0 (deleted) stops with a reason. */
    int64_t end = hx_now_ms() + 60000;
    long long err0 = 0;
    while (hx_now_ms() < end &&
           (err0 = hx_pg_int(e.conn,
                             "SELECT count(*) FROM sidecar.checkpoints WHERE partition = 0 AND "
                             "state = 'error' AND error LIKE '%was deleted, moved or replaced%'",
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
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.checkpoints WHERE partition = 2 AND "
                               "state = 'error' AND error LIKE '%moved%' AND committed_offset = 300"
                               " AND pending_first_offset = 300",
                               0, NULL),
                     1);

    /* Deleted: start a new file from the beginning, while the sidecar runs. */
    const char *reset[] = {hx_sidecar_bin(), "reset", "-c",          cfg,
                           "--pipeline",     "p1",    "--topic",     "orders",
                           "--partition",    "0",     "--to-offset", "earliest",
                           "--write-offset", "0",     "--force",     NULL};
    char *out = NULL;
    int rc = hx_run(reset, NULL, 60000, &out);
    ck_assert_msg(rc == 0 && strstr(out, "continues at write offset 0"), "exit %d: %s", rc, out);
    free(out);
    /* Moved: put it back and retry, keeping the pending batch. */
    ck_assert_int_eq(rename(f2away, f2), 0);
    const char *retry[] = {hx_sidecar_bin(), "retry",  "-c",          cfg, "--pipeline", "p1",
                           "--topic",        "orders", "--partition", "2", NULL};
    rc = hx_run(retry, NULL, 60000, &out);
    ck_assert_msg(rc == 0 && strstr(out, "pending batch 300.."), "exit %d: %s", rc, out);
    free(out);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 3, 500, 60000), "log:\n%s",
                  scx_log_tail(log, 3000));
    scx_stop(pid, 15000);
    /* Every file holds every record once, in order, and is as long as its checkpoint says. */
    scx_verify_files(&e, "p1", "orders", 3, 500);
    scx_env_stop(&e);
}
END_TEST

START_TEST(test_failed_fsync_rewrites_the_batch)
{
    struct scx_env e;
    const char *topics[] = {"orders:3"};
    scx_env_start(&e, 1, topics, 1);
    /* Small batches that wait for their commit: both the grouped commit and the single one
     * sync before their statement. */
    struct scx_opts o = {.max_records = 20, .max_wait_ms = 20};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    pid_t pid = scx_start(&e, cfg, "sc-1", "file_sync=fail@0.2");
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    /* One sync in five fails at random: chunks of 30 records a partition (6 batches or more)
     * until three have failed, so the count below does not depend on luck. */
    int chunks = 0;
    while (chunks < 10 || (chunks < 100 && scx_log_count(log, "failpoint file_sync fired") < 3)) {
        hx_produce_seq(e.mock.bootstrap, "orders", 3, chunks * 30, 30);
        chunks++;
        ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 3, chunks * 30, 60000), "log:\n%s",
                      scx_log_tail(log, 3000));
    }
    scx_stop(pid, 15000);
    int failed = scx_log_count(log, "could not fsync");
    int fired = scx_log_count(log, "failpoint file_sync fired");
    int rewritten = scx_log_count(log, "retrying the batch in");
    ck_assert_msg(fired >= 3 && failed == fired && rewritten == fired,
                  "%d syncs failed, %d reported, %d batches written again; log:\n%s", fired, failed,
                  rewritten, scx_log_tail(log, 3000));
    /* Every record once, in order; each file as long as its checkpoint says. */
    scx_verify_files(&e, "p1", "orders", 3, chunks * 30);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("file_faults");
    TCase *tc = tcase_create("file_faults");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_file_deleted_or_read_only);
    tcase_add_test(tc, test_failed_fsync_rewrites_the_batch);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
