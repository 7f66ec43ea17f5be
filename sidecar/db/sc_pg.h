/*
 * sc_pg - libpq helpers shared by every module that talks to PostgreSQL:
 * connecting with a readable error, masking DSNs, classifying errors.
 *
 * Nothing here ever prints a password: use sc_pg_dsn_mask() or
 * sc_pg_dsn_describe() whenever a DSN has to appear in a message.
 *
 * @locality any thread; a PGconn is used by one thread at a time.
 */
#ifndef SC_PG_H
#define SC_PG_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

/* How a failed statement should be handled. */
enum sc_pg_errclass {
    SC_PG_OK = 0,
    SC_PG_RETRY,     /* connection lost, serialization failure, deadlock, shutdown: retry */
    SC_PG_PERMANENT, /* constraint violation, bad data, syntax: retrying cannot help */
};

/* What a read for people (status, checkpoint pages, events) returns besides a count >= 0. */
enum sc_read_rc {
    SC_READ_OK = 0,
    SC_READ_RETRY = -1,     /* connection trouble: reconnect and read again (same cursor) */
    SC_READ_FAILED = -2,    /* permanent (schema missing, bug): retrying cannot help */
    SC_READ_BAD_TOKEN = -3, /* a page token that is not one of ours */
    SC_READ_EXPIRED = -4,   /* events after the resume token were compacted away */
};

/*
 * A failed read (res NULL: connection trouble) as "what: message", with a
 * hint to run `sidecar migrate` when the schema's objects are missing;
 * SC_READ_RETRY or SC_READ_FAILED.
 */
int sc_pg_read_failed(PGconn *conn, const PGresult *res, const char *what, char *err,
                      size_t errsize);

/*
 * Returns 0 if dsn parses (key=value or URI form), else -1 with the reason
 * in errbuf (the DSN itself is not repeated, so no secret can leak).
 */
int sc_pg_dsn_check(const char *dsn, char *errbuf, size_t errsize);

/* A malloc'd copy of dsn with the password replaced by "****". */
char *sc_pg_dsn_mask(const char *dsn);

/* A malloc'd short description: "host:port/dbname as user" (no secrets). */
char *sc_pg_dsn_describe(const char *dsn);

/*
 * Connects; application_name is set to app_name when not given in the DSN.
 * timeout_ms bounds the connection attempt (0 = libpq default).
 * On failure returns NULL and writes "could not connect to PostgreSQL at
 * HOST:PORT/DB as USER: reason" into errbuf.
 */
PGconn *sc_pg_connect(const char *dsn, const char *app_name, int timeout_ms, char *errbuf,
                      size_t errsize) __attribute__((warn_unused_result));

/*
 * Whether a connection failure message from sc_pg_connect() says the server
 * refused the login (a wrong password or user, no pg_hba.conf entry, a
 * database that does not exist): waiting will not fix that by itself, unlike
 * a server that is down or unreachable.
 */
bool sc_pg_login_refused(const char *connect_error);

/*
 * Classifies a result (NULL = no result, i.e. connection trouble).  Retry:
 * connection exceptions (class 08), an error libpq reports itself (no
 * SQLSTATE: the link, whatever PQstatus() says), transaction rollbacks (40:
 * serialization failures, deadlocks), cancelled statements (57014), a server shutting down
 * or starting (57P01..57P03), insufficient resources (53), lock timeouts
 * (55P03), a read-only server (25006) and a vanished prepared statement
 * (26000: a new connection prepares it again).  Everything else is permanent:
 * constraints (23), data (22), syntax, privileges and missing objects (42),
 * a trigger's RAISE (P0001), ...
 */
enum sc_pg_errclass sc_pg_classify(PGconn *conn, const PGresult *res);

/* The condition name of a SQLSTATE ("23514" -> "check_violation"), else its class's. */
const char *sc_pg_sqlstate_name(const char *state);

/* The first line of the result's or connection's error message, in buf. */
const char *sc_pg_errmsg(PGconn *conn, const PGresult *res, char *buf, size_t size);

/* A malloc'd, correctly quoted identifier ("my schema" -> "\"my schema\""). */
char *sc_pg_quote_ident(const char *ident);

/* A malloc'd copy of sql with every "{S}" replaced by schema_q (an already quoted schema). */
char *sc_pg_with_schema(const char *sql, const char *schema_q);

#endif
