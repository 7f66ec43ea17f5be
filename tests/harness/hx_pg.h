/*
 * hx_pg - a throwaway PostgreSQL: initdb in a temp directory and a server on
 * a free port of 127.0.0.1, stopped and removed by the watchdog even when
 * the test process is killed; plus libpq helpers that abort the test unless
 * a statement succeeds.
 */
#ifndef HX_PG_H
#define HX_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <libpq-fe.h>

struct hx_pg {
    char dir[512]; /* temp dir: data/ and the private socket dir */
    int port;      /* TCP port on 127.0.0.1 */
    char dsn[512]; /* "host=127.0.0.1 port=N user=postgres dbname=postgres" */
    char bindir[256];
    pid_t watchdog;     /* stops the server and removes dir if we die */
    char settings[256]; /* extra server options ("-c name=value ..."), kept across restarts */
};

/* initdb (as the postgres user, via runuser when root) and start on a free port. */
void hx_pg_start(struct hx_pg *pg);
/*
 * Same with extra server options, e.g. "-c max_connections=20"; they come
 * after the defaults (so they win) and stay for every restart.
 */
void hx_pg_start_with(struct hx_pg *pg, const char *settings);
/* Stops the server (fast) and removes the directory. */
void hx_pg_stop(struct hx_pg *pg);
/* pg_ctl stop -m immediate (a crash) or fast, without removing data. */
void hx_pg_server_stop(struct hx_pg *pg, bool immediate);
/* Starts the server again on the same port after hx_pg_server_stop(). */
void hx_pg_server_start(struct hx_pg *pg);
/* pg_ctl restart -m immediate|fast. */
void hx_pg_restart(struct hx_pg *pg, bool immediate);
/* The postmaster's pid, or -1 when the server is not running (e.g. to SIGSTOP it). */
pid_t hx_pg_pid(const struct hx_pg *pg);
/* Creates database name and writes its DSN into dsn (size >= 512). */
void hx_pg_create_db(struct hx_pg *pg, const char *name, char *dsn, size_t dsn_size);
/* Connects to dsn or aborts the test. */
PGconn *hx_pg_connect(const char *dsn);
/* Runs sql (no parameters) and aborts the test unless it succeeds. */
void hx_pg_exec(PGconn *conn, const char *sql);
/*
 * Runs a one-value query with text params; returns a malloc'd string, or
 * NULL for SQL NULL or no row. More than one row or column aborts.
 */
char *hx_pg_value(PGconn *conn, const char *sql, int nparams, const char *const *params);
/* Same, parsed as an integer (aborts on NULL). */
long long hx_pg_int(PGconn *conn, const char *sql, int nparams, const char *const *params);

#endif
