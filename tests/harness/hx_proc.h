/*
 * hx_proc - child processes, temp directories and files, clocks: spawning
 * and waiting for the programs a test runs (the sidecar, kafka-mock,
 * kafka-produce), running a command to completion with its output, and
 * waiting for a condition (never for a fixed time).
 *
 * Every child, temp directory and tmpfs mount is registered with a
 * watchdog that removes it even when the test process is killed (see the
 * NOTES in hx_watchdog.c).  Functions abort the test (ck_abort_msg) on
 * setup failures.
 */
#ifndef HX_PROC_H
#define HX_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Path of the built sidecar / kafka-mock / kafka-produce binaries. */
const char *hx_sidecar_bin(void);
const char *hx_mock_bin(void);
const char *hx_produce_bin(void);

/*
 * Spawns argv[0] (searched in PATH) with argv, stdin from /dev/null, stdout
 * and stderr appended to log_path (NULL = /dev/null), extra environment
 * entries "K=V" in env (NULL-terminated, may be NULL; a bare "K" removes K).
 * Returns the pid. The process is SIGKILLed by the watchdog if the test
 * process dies before reaping it.
 */
pid_t hx_spawn(const char *const *argv, const char *const *env, const char *log_path);
/*
 * Waits up to timeout_ms (< 0: forever) for pid to exit; returns its exit
 * code, 128+signal if it was killed, or -1 on timeout (the process is left
 * running).
 */
int hx_wait(pid_t pid, int timeout_ms);
/*
 * Runs argv to completion (timeout_ms) capturing stdout+stderr into a
 * malloc'd NUL-terminated *output (output may be NULL). Returns like
 * hx_wait(); on timeout the process is killed and -1 returned.
 */
int hx_run(const char *const *argv, const char *const *env, int timeout_ms, char **output);
/* Same, with input_len bytes of input on the child's stdin (then EOF). */
int hx_run_input(const char *const *argv, const char *const *env, const char *input,
                 size_t input_len, int timeout_ms, char **output);
/* Whether pid is a live process (a zombie is not: here PID 1 does not reap orphans). */
bool hx_pid_alive(pid_t pid);

/* A fresh temp directory (removed at exit by the watchdog); returns a static-lifetime path. */
const char *hx_tmpdir(void);
/*
 * Mounts a tmpfs of the given size ("128k") at dir (created if missing), unmounted by the
 * watchdog at exit; needs root (CAP_SYS_ADMIN).  hx_tmpfs_resize() changes its size in place.
 */
void hx_mount_tmpfs(const char *dir, const char *size);
void hx_tmpfs_resize(const char *dir, const char *size);
/* Writes a file from a printf format; aborts on error. */
void hx_write_file(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Reads a whole file (malloc'd, NUL-terminated); *len may be NULL; NULL if missing. */
char *hx_read_file(const char *path, size_t *len);
/* Monotonic milliseconds. */
int64_t hx_now_ms(void);
/* Polls cond(arg) every 50 ms until true or timeout; returns whether it became true. */
bool hx_wait_until(bool (*cond)(void *), void *arg, int timeout_ms);

#endif
