/*
 * hx - the integration test harness: a throwaway PostgreSQL, the kafka-mock
 * cluster as a child process, a producer of known records, and helpers to
 * run the real `sidecar` binary as a child process.
 *
 * Everything started here is torn down by a watchdog process even when the
 * test process is killed (it watches a pipe whose other end dies with us).
 * Lifetimes follow the process that started a resource: servers started in
 * an unchecked fixture (the Check runner) survive each forked test; those
 * started inside a test die with it. See the NOTES in hx.c.
 * Functions abort the test (via ck_abort_msg) on setup failures: a test that
 * cannot get its servers fails, it is never skipped.
 */
#ifndef HX_H
#define HX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libpq-fe.h>

/* ---- throwaway PostgreSQL ------------------------------------------------ */

struct hx_pg {
    char dir[512]; /* temp dir: data/ and the private socket dir */
    int port;      /* TCP port on 127.0.0.1 */
    char dsn[512]; /* "host=127.0.0.1 port=N user=postgres dbname=postgres" */
    char bindir[256];
    pid_t watchdog; /* stops the server and removes dir if we die */
};

/* initdb (as the postgres user, via runuser when root) and start on a free port. */
void hx_pg_start(struct hx_pg *pg);
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

/* ---- kafka-mock child process -------------------------------------------- */

struct hx_mock {
    pid_t pid;
    int in_fd;  /* commands to the mock's stdin */
    int out_fd; /* replies from its stdout */
    char bootstrap[256];
};

/*
 * Starts `kafka-mock --brokers N --topic T...` (topics as "name:partitions").
 * Returns once the bootstrap address was printed.
 */
void hx_mock_start(struct hx_mock *m, int brokers, const char *const *topics, size_t ntopics);
/*
 * Sends one control command line (printf-style) and waits for its reply
 * line (30 s, else the test aborts); returns 0 for "ok..." (the rest of the
 * line, if any, in reply), -1 for "error: ..." (the reason in reply).
 * reply may be NULL. Commands: see `kafka-mock --help`.
 */
int hx_mock_cmd(struct hx_mock *m, char *reply, size_t reply_size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void hx_mock_stop(struct hx_mock *m);

/* ---- producing known records --------------------------------------------- */

struct hx_header {
    const char *name;
    const void *value; /* NULL = null header value */
    size_t len;
};

struct hx_record {
    const char *topic;
    int32_t partition; /* explicit; never -1 */
    const void *key;   /* NULL = null key */
    size_t key_len;
    const void *value; /* NULL = null value (tombstone) */
    size_t value_len;
    const struct hx_header *headers;
    size_t nheaders;
    int64_t timestamp; /* ms; 0 = producer's clock */
};

/* Produces recs with acks=all and waits until every one is acknowledged. */
void hx_produce(const char *bootstrap, const struct hx_record *recs, size_t n);

/*
 * Produces count records to every partition 0..partitions-1 of topic, with
 * key "k<seq>" and value hx_seq_value(topic, partition, seq) (JSON text, ~90
 * bytes), seq starting at first_seq; lz4-compressed, acks=all.
 */
void hx_produce_seq(const char *bootstrap, const char *topic, int partitions, int64_t first_seq,
                    int64_t count);
/* The value hx_produce_seq() gives record seq of a partition (into buf). */
const char *hx_seq_value(const char *topic, int32_t partition, int64_t seq, char *buf, size_t size);

/* ---- processes and files ------------------------------------------------- */

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
