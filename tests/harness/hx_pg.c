/*
 * hx_pg.c - throwaway PostgreSQL clusters: initdb and pg_ctl (as the
 * postgres user when we are root) on a free port, each cluster registered
 * with the watchdog (hx_watchdog.c) before anything runs in it; and libpq
 * helpers that abort the test on failure.
 */
#include "hx_pg.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hx_internal.h"
#include "hx_proc.h"

#define HX_PG_START_MS 60000

/* ---- a cluster's directory (also used by the watchdog) ------------------------------- */

/* The postmaster's pid from DIR/data/postmaster.pid, or -1. */
static pid_t pg_dir_postmaster(const char *dir)
{
    char path[600], buf[32];
    ssize_t n;
    int fd;
    long pid;

    snprintf(path, sizeof(path), "%s/data/postmaster.pid", dir);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    pid = strtol(buf, NULL, 10);
    return pid > 0 ? (pid_t)pid : -1;
}

/* Immediate shutdown of the cluster in dir (SIGQUIT, as pg_ctl -m immediate), then SIGKILL. */
void pg_dir_kill(const char *dir)
{
    pid_t pid = pg_dir_postmaster(dir);
    char comm[64] = "", path[64];
    int fd;
    ssize_t n;

    if (!hx_pid_alive(pid))
        return;
    /* A stale postmaster.pid may name a recycled pid: only signal a postgres. */
    snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, comm, sizeof(comm) - 1);
        comm[n > 0 ? n : 0] = '\0';
        close(fd);
    }
    if (strncmp(comm, "postgres", 8) != 0)
        return;
    kill(pid, SIGQUIT);
    for (int i = 0; i < 500 && hx_pid_alive(pid); i++)
        hx_sleep_ms(20);
    if (hx_pid_alive(pid)) {
        kill(pid, SIGKILL);
        for (int i = 0; i < 100 && hx_pid_alive(pid); i++)
            hx_sleep_ms(20);
    }
}

/* ---- PostgreSQL ------------------------------------------------------------------------ */

/* The bin directory of the newest installed PostgreSQL major version. */
static void pg_find_bindir(char *out, size_t size)
{
    glob_t g;
    long best = -1;

    if (glob("/usr/lib/postgresql/*/bin/pg_ctl", 0, NULL, &g) != 0)
        hx_fail("no PostgreSQL server found (/usr/lib/postgresql/*/bin/pg_ctl)");
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *v = g.gl_pathv[i] + strlen("/usr/lib/postgresql/");
        long major = strtol(v, NULL, 10);

        if (major > best) {
            best = major;
            snprintf(out, size, "%.*s", (int)(strrchr(g.gl_pathv[i], '/') - g.gl_pathv[i]),
                     g.gl_pathv[i]);
        }
    }
    globfree(&g);
}

/* A port that was free a moment ago; start_server retries if someone took it meanwhile. */
static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) != 0)
        hx_fail("could not find a free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

/* The last lines of the server log, for failure messages. */
static void pg_log_tail(const struct hx_pg *pg, char *out, size_t size)
{
    char path[600];
    size_t len;
    char *log;

    snprintf(path, sizeof(path), "%s/pg.log", pg->dir);
    log = hx_read_file(path, &len);
    if (log == NULL) {
        snprintf(out, size, "(no server log)");
        return;
    }
    snprintf(out, size, "%s", len > 1500 ? log + len - 1500 : log);
    free(log);
}

/*
 * Runs a PostgreSQL program from bindir, as the postgres user when we are
 * root (initdb and pg_ctl refuse to run as root), with the cluster directory
 * as working directory (root's cwd may not be readable by postgres).
 */
static int pg_run(const struct hx_pg *pg, const char *prog, const char *const *args, char **output)
{
    const char *argv[32];
    char path[400];
    size_t n = 0;

    if (geteuid() == 0) {
        argv[n++] = "runuser";
        argv[n++] = "-u";
        argv[n++] = "postgres";
        argv[n++] = "--";
    }
    snprintf(path, sizeof(path), "%s/%s", pg->bindir, prog);
    argv[n++] = path;
    for (size_t i = 0; args[i] != NULL && n < sizeof(argv) / sizeof(argv[0]) - 1; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return hx_run_ex(argv, NULL, pg->dir, NULL, 0, HX_PG_START_MS + 30000, output);
}

/* The paths and server options of a cluster; the same for every start. */
struct pg_paths {
    char data[600];
    char log[600];
    char opts[1024];
};

static void pg_paths(const struct hx_pg *pg, struct pg_paths *p)
{
    snprintf(p->data, sizeof(p->data), "%s/data", pg->dir);
    snprintf(p->log, sizeof(p->log), "%s/pg.log", pg->dir);
    /*
     * fsync=off: a throwaway cluster; data still survives a server crash
     * (the OS keeps it), which is all the crash tests need. The socket dir
     * is private so parallel clusters never collide on /var/run/postgresql.
     */
    snprintf(p->opts, sizeof(p->opts),
             "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 "
             "-c shared_buffers=64MB %s",
             pg->port, pg->dir, pg->settings);
}

/* pg_ctl start; 0 or the exit code, with pg_ctl's output in *output. */
static int pg_ctl_start(struct hx_pg *pg, char **output)
{
    struct pg_paths p;

    pg_paths(pg, &p);
    return pg_run(pg, "pg_ctl",
                  (const char *const[]){"start", "-w", "-t", "60", "-D", p.data, "-l", p.log, "-o",
                                        p.opts, NULL},
                  output);
}

void hx_pg_start(struct hx_pg *pg)
{
    hx_pg_start_with(pg, NULL);
}

void hx_pg_start_with(struct hx_pg *pg, const char *settings)
{
    char data[600], tail[1600];
    char *out = NULL;
    int rc = -1;

    memset(pg, 0, sizeof(*pg));
    snprintf(pg->settings, sizeof(pg->settings), "%s", settings ? settings : "");
    pg_find_bindir(pg->bindir, sizeof(pg->bindir));
    snprintf(pg->dir, sizeof(pg->dir), "/tmp/hx-pg-XXXXXX");
    if (mkdtemp(pg->dir) == NULL)
        hx_fail("could not create a temp directory: %s", strerror(errno));
    /* Registered before anything runs in it: a crash from here on is cleaned up. */
    pg->watchdog = wd_register("P", pg->dir);
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("postgres");

        if (pw == NULL)
            hx_fail("running as root but there is no postgres user to run the server as");
        if (chown(pg->dir, pw->pw_uid, pw->pw_gid) != 0)
            hx_fail("could not chown \"%s\" to postgres: %s", pg->dir, strerror(errno));
    }
    snprintf(data, sizeof(data), "%s/data", pg->dir);
    rc = pg_run(pg, "initdb",
                (const char *const[]){"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                                      "--locale=C", "--no-sync", "--no-instructions", NULL},
                &out);
    if (rc != 0)
        hx_fail("initdb in %s failed (exit %d): %s", data, rc, out);
    free(out);

    /* The free port may be taken between probing and binding: try a few. */
    for (int attempt = 0; attempt < 5; attempt++) {
        pg->port = free_port();
        out = NULL;
        rc = pg_ctl_start(pg, &out);
        if (rc == 0)
            break;
        if (attempt < 4)
            free(out);
    }
    if (rc != 0) {
        pg_log_tail(pg, tail, sizeof(tail));
        hx_fail("could not start PostgreSQL in %s (pg_ctl exit %d): %s\nserver log:\n%s", pg->dir,
                rc, out, tail);
    }
    free(out);
    snprintf(pg->dsn, sizeof(pg->dsn), "host=127.0.0.1 port=%d user=postgres dbname=postgres",
             pg->port);
}

static void pg_ctl_stop(struct hx_pg *pg, const char *mode, bool must)
{
    char data[600], tail[1600];
    char *out = NULL;
    int rc;

    snprintf(data, sizeof(data), "%s/data", pg->dir);
    rc =
        pg_run(pg, "pg_ctl",
               (const char *const[]){"stop", "-w", "-t", "60", "-m", mode, "-D", data, NULL}, &out);
    if (rc != 0 && must) {
        pg_log_tail(pg, tail, sizeof(tail));
        hx_fail("pg_ctl stop -m %s in %s failed (exit %d): %s\nserver log:\n%s", mode, pg->dir, rc,
                out, tail);
    }
    free(out);
}

void hx_pg_stop(struct hx_pg *pg)
{
    if (pg->dir[0] == '\0')
        return;
    /* The server may already be down (an outage test): not an error here. */
    if (pg_dir_postmaster(pg->dir) > 0)
        pg_ctl_stop(pg, "fast", false);
    pg_dir_kill(pg->dir); /* in case the clean stop failed */
    rm_rf(pg->dir);
    wd_forget(pg->watchdog, "F", pg->dir);
    memset(pg, 0, sizeof(*pg));
}

void hx_pg_server_stop(struct hx_pg *pg, bool immediate)
{
    pg_ctl_stop(pg, immediate ? "immediate" : "fast", true);
}

void hx_pg_server_start(struct hx_pg *pg)
{
    char tail[1600];
    char *out = NULL;
    int rc = pg_ctl_start(pg, &out);

    if (rc != 0) {
        pg_log_tail(pg, tail, sizeof(tail));
        hx_fail("could not restart PostgreSQL on port %d (pg_ctl exit %d): %s\nserver log:\n%s",
                pg->port, rc, out, tail);
    }
    free(out);
}

void hx_pg_restart(struct hx_pg *pg, bool immediate)
{
    struct pg_paths p;
    char tail[1600];
    char *out = NULL;
    int rc;

    pg_paths(pg, &p);
    rc = pg_run(pg, "pg_ctl",
                (const char *const[]){"restart", "-w", "-t", "60", "-m",
                                      immediate ? "immediate" : "fast", "-D", p.data, "-l", p.log,
                                      "-o", p.opts, NULL},
                &out);
    if (rc != 0) {
        pg_log_tail(pg, tail, sizeof(tail));
        hx_fail("pg_ctl restart failed (exit %d): %s\nserver log:\n%s", rc, out, tail);
    }
    free(out);
}

pid_t hx_pg_pid(const struct hx_pg *pg)
{
    pid_t pid = pg->dir[0] ? pg_dir_postmaster(pg->dir) : -1;

    return hx_pid_alive(pid) ? pid : -1;
}

void hx_pg_create_db(struct hx_pg *pg, const char *name, char *dsn, size_t dsn_size)
{
    PGconn *conn = hx_pg_connect(pg->dsn);
    char *ident = PQescapeIdentifier(conn, name, strlen(name));
    char sql[512];

    if (ident == NULL)
        hx_fail("bad database name \"%s\": %s", name, PQerrorMessage(conn));
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", ident);
    PQfreemem(ident);
    hx_pg_exec(conn, sql);
    PQfinish(conn);
    /* libpq conninfo quoting: a name with spaces or quotes still works. */
    {
        char quoted[256];
        size_t q = 0;

        for (const char *c = name; *c != '\0' && q < sizeof(quoted) - 3; c++) {
            if (*c == '\'' || *c == '\\')
                quoted[q++] = '\\';
            quoted[q++] = *c;
        }
        quoted[q] = '\0';
        snprintf(dsn, dsn_size, "host=127.0.0.1 port=%d user=postgres dbname='%s'", pg->port,
                 quoted);
    }
}

PGconn *hx_pg_connect(const char *dsn)
{
    PGconn *conn = PQconnectdb(dsn);

    if (PQstatus(conn) != CONNECTION_OK) {
        char msg[1024];

        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
        PQfinish(conn);
        hx_fail("could not connect to \"%s\": %s", dsn, msg);
    }
    return conn;
}

void hx_pg_exec(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char msg[1024];

        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
        PQclear(res);
        hx_fail("SQL failed: %.300s: %s", sql, msg);
    }
    PQclear(res);
}

char *hx_pg_value(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    char *v = NULL;

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char msg[1024];

        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
        PQclear(res);
        hx_fail("query failed: %.300s: %s", sql, msg);
    }
    if (PQnfields(res) != 1 || PQntuples(res) > 1) {
        int rows = PQntuples(res), cols = PQnfields(res);

        PQclear(res);
        hx_fail("query gave %d rows of %d columns, expected one value: %.300s", rows, cols, sql);
    }
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
        v = strdup(PQgetvalue(res, 0, 0));
        if (v == NULL)
            hx_fail("out of memory");
    }
    PQclear(res);
    return v;
}

long long hx_pg_int(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
    char *v = hx_pg_value(conn, sql, nparams, params), *end;
    long long n;

    if (v == NULL)
        hx_fail("query gave NULL (or no row), expected an integer: %.300s", sql);
    errno = 0;
    n = strtoll(v, &end, 10);
    if (errno != 0 || *end != '\0' || end == v) {
        char copy[64];

        snprintf(copy, sizeof(copy), "%s", v);
        free(v);
        hx_fail("query gave \"%s\", expected an integer: %.300s", copy, sql);
    }
    free(v);
    return n;
}
