/*
 * sc_crash - a last log line when the process dies of a fatal signal.
 *
 * On SIGSEGV, SIGBUS, SIGILL, SIGFPE or SIGABRT the handler logs one error
 * record (in the configured log format) naming the signal, the thread and a
 * backtrace as module+offset pairs that `addr2line -f -e MODULE OFFSET`
 * resolves, then lets the signal kill the process as it would have (exit
 * status 128+signal, a core file where the system keeps them).  Nothing is
 * lost by dying here: pending checkpoints make the restart a replay.
 *
 * Writing the record is best effort: if the handler itself hangs (a lock
 * held by the crashed thread), an alarm ends the process 3 s later.
 *
 * @locality install once from the main thread, before other threads start.
 */
#ifndef SC_CRASH_H
#define SC_CRASH_H

void sc_crash_install(void);

#endif
