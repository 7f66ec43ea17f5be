/*
 * scx - sidecar-specific test fixtures on top of hx: an environment with a
 * throwaway PostgreSQL database and a kafka-mock cluster, config files for
 * `sidecar run` instances, and the checks every delivery test ends with
 * (every record exactly once, in order).
 */
#ifndef SCX_H
#define SCX_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <libpq-fe.h>

#include "hx.h"

struct scx_env {
    struct hx_pg pg;
    char dsn[512];
    struct hx_mock mock;
    char dir[512];     /* per-test temp dir */
    char out_dir[600]; /* file sink root */
    PGconn *conn;
};

/* Starts PostgreSQL (fresh database) and kafka-mock with the given topics ("name:parts"). */
void scx_env_start(struct scx_env *e, int brokers, const char *const *topics, size_t ntopics);
/* Same with extra PostgreSQL server options (see hx_pg_start_with()). */
void scx_env_start_pg(struct scx_env *e, int brokers, const char *const *topics, size_t ntopics,
                      const char *pg_settings);
void scx_env_stop(struct scx_env *e);

/* Knobs of a generated config; zero values mean the defaults noted. */
struct scx_opts {
    const char *pipeline;       /* "p1" */
    const char *topics;         /* JSON array, default ["orders"] */
    const char *sink;           /* JSON object, default file sink into out_dir */
    int workers;                /* 2 */
    int max_records;            /* 100 */
    int max_wait_ms;            /* 20 */
    int max_bytes;              /* the default (1 MiB) */
    int ttl_ms;                 /* 3000 */
    int renew_ms;               /* 1000 */
    const char *start_from;     /* "earliest" */
    const char *kafka_props;    /* extra members of kafka.properties, e.g. "\"a\":\"b\"" */
    int admin_port;             /* 0: admin disabled */
    int shutdown_timeout_ms;    /* 8000 */
    const char *extra_top;      /* extra top-level members, e.g. "\"notify\":{...}" */
    const char *extra_pipeline; /* extra pipeline members, e.g. "\"value_format\":\"avro\"" */
    const char *assignment;     /* "kafka-group" (the default) or "lease" */
};

/* Writes a config for instance id into e->dir/<instance>.json; returns its path (static). */
const char *scx_config(const struct scx_env *e, const char *instance, const struct scx_opts *o);

/* Runs `sidecar migrate -c cfg` and asserts it succeeds. */
void scx_migrate(const char *cfg);

/* Starts `sidecar run -c cfg` logging to e->dir/<name>.log; failpoints may be NULL. */
pid_t scx_start(const struct scx_env *e, const char *cfg, const char *name, const char *failpoints);

/* SIGTERM and wait (asserts a clean exit 0 within timeout_ms). */
void scx_stop(pid_t pid, int timeout_ms);

/* Waits until every partition 0..nparts-1 of topic has committed_offset == expected and no
 * pending batch; returns whether it happened within timeout_ms. */
bool scx_wait_committed(PGconn *conn, const char *pipeline, const char *topic, int nparts,
                        int64_t expected, int timeout_ms);

/*
 * Asserts the file sink output of topic: for each partition, offsets
 * 0..count-1 exactly once, in order, each with the key and value that
 * hx_produce_seq() gave that offset, and the file size equal to the
 * committed write offset.
 */
void scx_verify_files(const struct scx_env *e, const char *pipeline, const char *topic, int nparts,
                      int64_t count);

/*
 * Makes e->dir/<name>-cert.pem and <name>-key.pem (openssl), a certificate
 * self-signed for 127.0.0.1 and localhost, as a private CA's would be.
 * cert and key receive the paths.
 */
void scx_self_signed(const struct scx_env *e, const char *name, char cert[800], char key[800]);

/* A free TCP port on 127.0.0.1. */
int scx_free_port(void);

/* GET http://127.0.0.1:port/path; returns the body (malloc'd) and sets *status. */
char *scx_http_get(int port, const char *path, const char *token, long *status);

/* Sum of the samples of metric name whose labels contain every k="v" in labels (may be ""). */
double scx_metric(const char *exposition, const char *name, const char *labels);
/* The same, read from a running sidecar's admin endpoint on port (-1 if it does not answer). */
double scx_metric_at(int port, const char *name, const char *labels);

/* Whether pid is stopped (SIGSTOP / a "stop" failpoint). */
bool scx_pid_stopped(pid_t pid);

/* Number of events of a kind (optionally only those whose owner is owner). */
long long scx_events(PGconn *conn, const char *kind, const char *owner);

/*
 * Creates app.events, the postgres sink's default table, and app.audit: a
 * BEFORE INSERT trigger adds a row per insert attempt that commits (ON
 * CONFLICT skipped ones too), so a record delivered twice shows there.
 */
void scx_create_audited_events(PGconn *conn);

/* The tail of a log file, for failure messages (static buffer). */
const char *scx_log_tail(const char *path, size_t bytes);

/* How often needle occurs in the file at path (0 if it is missing). */
int scx_log_count(const char *path, const char *needle);
/* Waits until needle occurs at least count times in the file at path; returns whether that
 * happened within timeout_ms.  A witness that a process saw something, instead of a pause. */
bool scx_wait_log(const char *path, const char *needle, int count, int timeout_ms);

#endif
