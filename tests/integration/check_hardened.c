/*
 * check_hardened.c - the sidecar as a container runs it: an unprivileged
 * user (65534, nobody) on a read-only root filesystem, with one writable
 * data directory (the file sink's).
 *
 * The sidecar is started through unshare(1) in a private mount namespace
 * where "/" is remounted read-only and only the output directory is a
 * writable bind mount, then setpriv(1) drops to uid/gid 65534.  It must
 * deliver exactly once, write its files as that user, and shut down
 * cleanly.  Needs root to set that up, as CI runs the tests.
 */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "scx.h"

#define NOBODY 65534

/* Copies the sidecar binary where user 65534 can run it (a build tree may be under /root). */
static void copy_binary(const char *to)
{
    size_t len;
    char *data = hx_read_file(hx_sidecar_bin(), &len);
    ck_assert_ptr_nonnull(data);
    int fd = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
    free(data);
}

START_TEST(test_unprivileged_read_only_root)
{
    ck_assert_msg(geteuid() == 0, "this test sets up a mount namespace and needs root, as CI");
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    int port = scx_free_port();
    struct scx_opts o = {.admin_port = port};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    ck_assert_int_eq(mkdir(e.out_dir, 0755), 0);
    ck_assert_int_eq(chown(e.out_dir, NOBODY, NOBODY), 0);
    char bin[600], log[700], script[2048];
    snprintf(bin, sizeof(bin), "%s/sidecar", e.dir);
    copy_binary(bin);
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    snprintf(
        script, sizeof(script),
        "set -e; mount --bind '%s' '%s'; mount -o remount,bind,ro /; "
        "if touch /sidecar-rw-probe 2>/dev/null; then echo 'root is writable' >&2; exit 97; fi; "
        "exec setpriv --reuid=%d --regid=%d --clear-groups '%s' run -c '%s'",
        e.out_dir, e.out_dir, NOBODY, NOBODY, bin, cfg);
    const char *argv[] = {"unshare", "--mount", "--propagation", "private",
                          "sh",      "-c",      script,          NULL};
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 500);
    pid_t pid = hx_spawn(argv, NULL, log);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 2, 500, 60000), "log:\n%s",
                  scx_log_tail(log, 3000));
    long status;
    char *body = scx_http_get(port, "/readyz", NULL, &status);
    ck_assert_int_eq(status, 200);
    free(body);
    scx_stop(pid, 15000);
    scx_verify_files(&e, "p1", "orders", 2, 500);
    char path[800];
    snprintf(path, sizeof(path), "%s/orders/0.jsonl", e.out_dir);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_uid, NOBODY);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hardened");
    TCase *tc = tcase_create("hardened");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_unprivileged_read_only_root);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
