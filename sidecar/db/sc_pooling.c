/*
 * sc_pooling.c - is the PostgreSQL session ours from one transaction to
 * the next, or does a pooler share it?
 *
 * NOTES
 * -----
 * Why.  The sidecar keeps state in its server sessions: prepared
 * statements (every checkpoint statement), settings
 * (idle_in_transaction_session_timeout, which frees a stalled owner's
 * checkpoint row, docs/design.md §4), session advisory locks (migrations)
 * and LISTEN (watchers).  A pooler in transaction mode (PgBouncer
 * pool_mode = transaction) gives a client a server session per
 * transaction, which may be another one each time; in statement mode per
 * statement.  Then a prepared statement "does not exist", a timeout is set
 * on some other client's session, a migration's lock is held by nobody:
 * failures far from their cause.  So `run` and `migrate` refuse such a
 * connection at start, saying to connect directly or through a session
 * pool.
 *
 * How.  Poolers do not tell their mode to a pooled connection (PgBouncer's
 * SHOW pool_mode belongs to its admin console), so the check looks at the
 * behaviour it cares about, with two connections A and B:
 *
 *   A: SELECT pg_backend_pid(), set_config('sidecar.session_probe', T, false)
 *   B: BEGIN; SELECT pg_backend_pid(), current_setting('sidecar.session_probe', true)
 *   A: SELECT pg_backend_pid(), current_setting('sidecar.session_probe', true)
 *      (while B's transaction holds its server session)
 *
 * Directly or through a session pool A keeps its server session: B gets
 * another one, and A sees its own pid and token T again.  Through a
 * transaction pool A's session went back to the pool after its first
 * statement: B gets it (PgBouncer reuses the most recently used server
 * connection first) and sees A's pid or T; or, if another client took it
 * first, A, while B holds a session, sees another pid or no T.  A statement
 * pool refuses B's BEGIN.  Only such evidence counts as "shared"; a
 * missing answer (a pool with no free session, a slow server) is "unknown",
 * which the callers log and accept.  Three rounds with fresh tokens, since
 * another client of the pooler may take A's released session before B
 * does.  The check costs two connections and a few round trips at start.
 */
#include "db/sc_pooling.h"

#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "base/sc_util.h"
#include "db/sc_pg.h"

#define ROUNDS 3

/* What one probe query saw. */
struct probe {
    long pid;
    char token[40]; /* the probe setting as the session has it ("" when unset) */
};

/*
 * Sends sql (simple protocol; several statements allowed) and waits up to
 * timeout_ms for its last row-returning result: 1 with *out filled, 0 on
 * timeout (the query is left running; the caller closes the connection),
 * -1 on an error (message in err).
 */
static int query(PGconn *c, const char *sql, int timeout_ms, struct probe *out, char *err,
                 size_t errsize)
{
    if (PQsendQuery(c, sql) != 1) {
        sc_pg_errmsg(c, NULL, err, errsize);
        return -1;
    }
    int64_t end = sc_mono_ms() + timeout_ms;
    int rc = 1;
    bool got = false;
    for (;;) {
        while (PQisBusy(c)) {
            int64_t left = end - sc_mono_ms();
            if (left <= 0)
                return 0;
            struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
            if (poll(&pfd, 1, (int)left) < 0 || PQconsumeInput(c) != 1) {
                sc_pg_errmsg(c, NULL, err, errsize);
                return -1;
            }
        }
        PGresult *res = PQgetResult(c);
        if (!res)
            break;
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) == 2) {
            out->pid = strtol(PQgetvalue(res, 0, 0), NULL, 10);
            snprintf(out->token, sizeof(out->token), "%s", PQgetvalue(res, 0, 1));
            got = true;
        } else if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK && rc == 1) {
            sc_pg_errmsg(c, res, err, errsize);
            rc = -1;
        }
        PQclear(res);
    }
    if (rc == 1 && !got) {
        snprintf(err, errsize, "unexpected answer to the probe");
        rc = -1;
    }
    return rc;
}

enum sc_pooling sc_pooling_check(const char *dsn, const char *app_name, int timeout_ms, char *err,
                                 size_t errsize)
{
    enum sc_pooling verdict = SC_POOLING_SESSION;
    char why[768] = "", msg[512];
    PGconn *a = sc_pg_connect(dsn, app_name, timeout_ms, msg, sizeof(msg));
    PGconn *b = NULL;
    char *where = sc_pg_dsn_describe(dsn);
    if (!a) {
        snprintf(err, errsize, "%s", msg);
        verdict = SC_POOLING_UNKNOWN;
        goto out;
    }
    if (timeout_ms <= 0)
        timeout_ms = 10000;
    for (int round = 0; round < ROUNDS && verdict != SC_POOLING_SHARED; round++) {
        char token[40], sql[160];
        snprintf(token, sizeof(token), "%08x%08x%d", (unsigned)sc_rand(UINT32_MAX),
                 (unsigned)sc_mono_ms(), (int)getpid());
        snprintf(sql, sizeof(sql),
                 "SELECT pg_backend_pid(), set_config('sidecar.session_probe', '%s', false)",
                 token); /* a token of hex digits: nothing to quote */
        struct probe pa = {0}, pb = {0}, pa2 = {0};
        int r = query(a, sql, timeout_ms, &pa, msg, sizeof(msg));
        if (r != 1) {
            snprintf(why, sizeof(why), "%s", r == 0 ? "no answer in time" : msg);
            verdict = SC_POOLING_UNKNOWN;
            break;
        }
        b = sc_pg_connect(dsn, app_name, timeout_ms, msg, sizeof(msg));
        if (!b) {
            snprintf(why, sizeof(why), "%s", msg);
            verdict = SC_POOLING_UNKNOWN;
            break;
        }
        r = query(b,
                  "BEGIN; SELECT pg_backend_pid(), current_setting('sidecar.session_probe', true)",
                  timeout_ms, &pb, msg, sizeof(msg));
        if (r < 0 && strstr(msg, "pooling")) {
            /* PgBouncer in statement mode: "... not allowed in statement pooling mode" */
            snprintf(why, sizeof(why), "a transaction was refused: %s", msg);
            verdict = SC_POOLING_SHARED;
        } else if (r == 1 && (pb.pid == pa.pid || strcmp(pb.token, token) == 0)) {
            snprintf(why, sizeof(why),
                     "another connection was given this connection's server session (backend "
                     "pid %ld) between two of its transactions",
                     pa.pid);
            verdict = SC_POOLING_SHARED;
        } else if (r == 1) {
            r = query(a, "SELECT pg_backend_pid(), current_setting('sidecar.session_probe', true)",
                      timeout_ms, &pa2, msg, sizeof(msg));
            if (r == 1 && (pa2.pid != pa.pid || strcmp(pa2.token, token) != 0)) {
                snprintf(why, sizeof(why),
                         "this connection's server session changed between two of its "
                         "transactions (backend pid %ld, then %ld)",
                         pa.pid, pa2.pid);
                verdict = SC_POOLING_SHARED;
            } else if (r != 1) {
                snprintf(why, sizeof(why), "%s", r == 0 ? "no answer in time" : msg);
                verdict = SC_POOLING_UNKNOWN;
            }
        } else {
            snprintf(why, sizeof(why), "%s",
                     r == 0 ? "a second connection got no server session in time" : msg);
            verdict = SC_POOLING_UNKNOWN;
        }
        PQfinish(b); /* ends its transaction */
        b = NULL;
        if (verdict == SC_POOLING_UNKNOWN)
            break;
    }
    if (verdict == SC_POOLING_SHARED)
        snprintf(err, errsize,
                 "the PostgreSQL connection to %s does not keep a server session of its own: %s. "
                 "It goes through a pooler in transaction or statement mode (PgBouncer "
                 "pool_mode = transaction), with which the sidecar's prepared statements, "
                 "session settings (idle_in_transaction_session_timeout) and locks would break. "
                 "Connect directly to PostgreSQL, or through a pool in session mode (PgBouncer "
                 "pool_mode = session)",
                 where, why);
    else if (verdict == SC_POOLING_UNKNOWN)
        snprintf(err, errsize,
                 "could not check whether the PostgreSQL connection to %s keeps a server session "
                 "of its own (%s); it must not go through a pooler in transaction mode",
                 where, why);
out:
    if (b)
        PQfinish(b);
    if (a)
        PQfinish(a);
    free(where);
    return verdict;
}
