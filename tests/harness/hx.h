/*
 * hx - the integration test harness: a throwaway PostgreSQL, the kafka-mock
 * cluster as a child process, a producer of known records, and helpers to
 * run the real `sidecar` binary as a child process.  One header per concern,
 * all included here:
 *
 *   hx_proc.h   child processes, temp directories and files, clocks, waiting
 *   hx_pg.h     the throwaway PostgreSQL and libpq helpers
 *   hx_kafka.h  kafka-mock and producing records
 *   hx_pgbouncer.h  a throwaway PgBouncer in front of the throwaway PostgreSQL
 *
 * Everything started here is torn down by a watchdog process even when the
 * test process is killed (it watches a pipe whose other end dies with us).
 * Lifetimes follow the process that started a resource: servers started in
 * an unchecked fixture (the Check runner) survive each forked test; those
 * started inside a test die with it. See the NOTES in hx_watchdog.c.
 * Functions abort the test (via ck_abort_msg) on setup failures: a test that
 * cannot get its servers fails, it is never skipped.
 */
#ifndef HX_H
#define HX_H

#include "hx_kafka.h"
#include "hx_pg.h"
#include "hx_pgbouncer.h"
#include "hx_proc.h"

#endif
