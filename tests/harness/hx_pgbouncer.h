/*
 * hx_pgbouncer - a throwaway PgBouncer (Debian's pgbouncer) in front of a
 * throwaway PostgreSQL (hx_pg.h), in the pool mode a test asks for: every
 * database of the server, users postgres and app, trust authentication, a
 * free port of 127.0.0.1.  The process is registered with the watchdog
 * like every child of the harness.
 */
#ifndef HX_PGBOUNCER_H
#define HX_PGBOUNCER_H

#include <sys/types.h>

#include "hx_pg.h"

struct hx_pgbouncer {
    pid_t pid;
    int port;
    char dir[600]; /* config, log, auth file */
};

/* Starts PgBouncer with pool_mode ("session", "transaction", "statement") in front of pg. */
void hx_pgbouncer_start(struct hx_pgbouncer *b, const struct hx_pg *pg, const char *pool_mode);
void hx_pgbouncer_stop(struct hx_pgbouncer *b);
/* A DSN for database dbname as user through the bouncer, into dsn (size >= 256). */
void hx_pgbouncer_dsn(const struct hx_pgbouncer *b, const char *dbname, const char *user, char *dsn,
                      size_t size);

#endif
