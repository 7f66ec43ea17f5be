/*
 * sc_pooling - does a PostgreSQL connection keep a server session of its
 * own from one transaction to the next?  The sidecar needs that (prepared
 * statements, idle_in_transaction_session_timeout, session advisory locks,
 * LISTEN), and a pooler in transaction or statement mode (PgBouncer
 * pool_mode = transaction / statement) does not give it.  How the check
 * works: the NOTES at the top of sc_pooling.c.
 *
 * @locality any thread (it opens connections of its own).
 */
#ifndef SC_POOLING_H
#define SC_POOLING_H

#include <stddef.h>

enum sc_pooling {
    SC_POOLING_UNKNOWN = -1, /* could not tell (connection trouble, no answer in time) */
    SC_POOLING_SESSION = 0,  /* a session of its own: direct, or a pooler in session mode */
    SC_POOLING_SHARED = 1,   /* server sessions change between transactions: refuse */
};

/*
 * Checks dsn with two connections (application_name app_name, each step
 * bounded by timeout_ms).  For SC_POOLING_SHARED and SC_POOLING_UNKNOWN,
 * err says what was seen and what to do.
 */
enum sc_pooling sc_pooling_check(const char *dsn, const char *app_name, int timeout_ms, char *err,
                                 size_t errsize);

#endif
