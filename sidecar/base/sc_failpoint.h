/*
 * sc_failpoint - test-only crash points, inert unless the SIDECAR_FAILPOINTS
 * environment variable names them (and compiled out entirely when the build
 * option SIDECAR_FAILPOINTS is OFF).
 *
 *   SIDECAR_FAILPOINTS="after_pend=kill@0.02,after_write=kill#5,file_mid_write=stop@0.01"
 *
 * Each entry is NAME=ACTION with an optional trigger: @P fires with
 * probability P on each pass, #N fires on the Nth pass (default: every
 * pass).  Actions: kill (SIGKILL self), stop (SIGSTOP self), segv (SIGSEGV
 * self: the crash report), exit (_exit 99), sleep:MS, fail (where the code
 * asks sc_failpoint_fails(): the step reports an error).  Points: after_pend,
 * file_mid_write, file_sync (fail: the file sink's fdatasync fails),
 * after_write, after_commit, after_lease, pg_before_commit
 * (postgres sink, same database: rows and checkpoint sent, COMMIT not yet;
 * pipelined or not), shutdown_cleanup (`run` on SIGTERM: the pipelines'
 * threads have ended, the rest is not stopped yet).  close_yield is armed
 * with any action and acts itself: the revoke that the consumer's close
 * delivers yields the group's queue and returns unserved, which ends
 * rd_kafka_consumer_close() early with the group stuck half left (what a
 * worker's poke during the close once did).
 */
#ifndef SC_FAILPOINT_H
#define SC_FAILPOINT_H

#include <stdbool.h>

#ifdef SC_FAILPOINTS
void sc_failpoint_init(void);
bool sc_failpoint_hit(const char *name); /* true: it fired with action fail */
bool sc_failpoint_is_armed(const char *name);
#define sc_failpoint(name)       ((void)sc_failpoint_hit(name))
#define sc_failpoint_fails(name) sc_failpoint_hit(name)
#define sc_failpoint_armed(name) sc_failpoint_is_armed(name)
#else
static inline void sc_failpoint_init(void)
{
}
#define sc_failpoint(name)       ((void)0)
#define sc_failpoint_fails(name) false
#define sc_failpoint_armed(name) false
#endif

#endif
