/*
 * hx_internal - what the harness's own files share; tests include hx.h
 * (or hx_proc.h, hx_pg.h, hx_kafka.h) instead.
 */
#ifndef HX_INTERNAL_H
#define HX_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* ---- hx_proc.c ------------------------------------------------------------ */

/* Aborts the test with a message, also printed to stderr. */
void hx_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* One-time process setup (SIGPIPE ignored); idempotent. */
void hx_init(void);
void hx_sleep_ms(int ms);
/* /proc/PID/stat: state letter and start time (either may be NULL); 0 or -1. */
int proc_stat(pid_t pid, char *state, unsigned long long *starttime);
/* Removes a directory tree, best effort. */
void rm_rf(const char *dir);
/* hx_spawn() with a working directory, stdin/stdout descriptors and stderr choice. */
pid_t hx_spawn_ex(const char *const *argv, const char *const *env, const char *cwd, int in_fd,
                  int out_fd, bool keep_stderr, const char *log_path);
/* hx_run() / hx_run_input() with a working directory. */
int hx_run_ex(const char *const *argv, const char *const *env, const char *cwd, const char *input,
              size_t input_len, int timeout_ms, char **output);

/* ---- hx_watchdog.c -------------------------------------------------------- */

/*
 * Registers a resource with this process's watchdog ("P dir", "D dir",
 * "M dir", "K pid"); returns the watchdog's pid.
 */
pid_t wd_register(const char *op, const char *arg);
/* Forgets a resource ("F dir", "U pid"); wd_pid 0: this process's watchdog. */
void wd_forget(pid_t wd_pid, const char *op, const char *arg);
void wd_track_pid(pid_t pid);
void wd_untrack_pid(pid_t pid);

/* ---- hx_pg.c -------------------------------------------------------------- */

/* Immediate shutdown of the cluster in dir/data, if one runs there. */
void pg_dir_kill(const char *dir);

#endif
