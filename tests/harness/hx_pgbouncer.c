/*
 * hx_pgbouncer.c - a throwaway PgBouncer (see hx_pgbouncer.h).
 */
#include "hx_pgbouncer.h"

#include <check.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "hx_proc.h"

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    socklen_t l = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

void hx_pgbouncer_start(struct hx_pgbouncer *b, const struct hx_pg *pg, const char *pool_mode)
{
    memset(b, 0, sizeof(*b));
    /* PgBouncer, running as postgres, must reach its directory inside the test's. */
    ck_assert(chmod(hx_tmpdir(), 0711) == 0);
    snprintf(b->dir, sizeof(b->dir), "%s/pgbouncer", hx_tmpdir());
    ck_assert_msg(mkdir(b->dir, 0755) == 0, "mkdir %s", b->dir);
    char path[700], cfg[700], log[700];
    snprintf(path, sizeof(path), "%s/users.txt", b->dir);
    hx_write_file(path, "\"postgres\" \"\"\n\"app\" \"\"\n");
    snprintf(cfg, sizeof(cfg), "%s/pgbouncer.ini", b->dir);
    snprintf(log, sizeof(log), "%s/pgbouncer.log", b->dir);
    /* PgBouncer refuses to run as root: -u makes it switch to postgres, which must be
     * able to write its log there. */
    bool root = geteuid() == 0;
    if (root) {
        struct passwd *pw = getpwnam("postgres");
        ck_assert_msg(pw != NULL, "running as root but there is no postgres user");
        ck_assert(chown(b->dir, pw->pw_uid, pw->pw_gid) == 0);
    }
    const char *bin =
        access("/usr/sbin/pgbouncer", X_OK) == 0 ? "/usr/sbin/pgbouncer" : "pgbouncer";
    for (int attempt = 0; attempt < 5 && !b->pid; attempt++) {
        b->port = free_port();
        hx_write_file(cfg,
                      "[databases]\n"
                      "* = host=127.0.0.1 port=%d\n"
                      "[pgbouncer]\n"
                      "listen_addr = 127.0.0.1\n"
                      "listen_port = %d\n"
                      "unix_socket_dir =\n"
                      "auth_type = trust\n"
                      "auth_file = %s\n"
                      "pool_mode = %s\n"
                      "max_client_conn = 200\n"
                      "default_pool_size = 30\n"
                      "logfile = %s\n",
                      pg->port, b->port, path, pool_mode, log);
        const char *argv_root[] = {bin, "-u", "postgres", cfg, NULL};
        const char *argv_user[] = {bin, cfg, NULL};
        pid_t pid = hx_spawn(root ? argv_root : argv_user, NULL, NULL);
        /* Up when it answers (a connection through it reaches the server). */
        char dsn[256];
        hx_pgbouncer_dsn(&(struct hx_pgbouncer){.port = b->port}, "postgres", "postgres", dsn,
                         sizeof(dsn));
        int64_t end = hx_now_ms() + 30000;
        while (hx_pid_alive(pid) && hx_now_ms() < end && PQping(dsn) != PQPING_OK)
            usleep(50000);
        if (hx_pid_alive(pid) && PQping(dsn) == PQPING_OK) {
            b->pid = pid;
        } else {
            kill(pid, SIGKILL);
            hx_wait(pid, 5000);
        }
    }
    char *text = hx_read_file(log, NULL);
    ck_assert_msg(b->pid > 0, "could not start PgBouncer (%s); its log:\n%s", bin,
                  text ? text : "(none)");
    free(text);
}

void hx_pgbouncer_stop(struct hx_pgbouncer *b)
{
    if (b->pid <= 0)
        return;
    kill(b->pid, SIGINT); /* "safe shutdown" would wait for clients: SIGINT is immediate */
    if (hx_wait(b->pid, 10000) < 0) {
        kill(b->pid, SIGKILL);
        hx_wait(b->pid, 5000);
    }
    b->pid = 0;
}

void hx_pgbouncer_dsn(const struct hx_pgbouncer *b, const char *dbname, const char *user, char *dsn,
                      size_t size)
{
    snprintf(dsn, size, "host=127.0.0.1 port=%d user=%s dbname=%s", b->port, user, dbname);
}
