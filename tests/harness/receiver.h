/*
 * receiver - an HTTP receiver for testing the http sink (libmicrohttpd,
 * one thread per connection): it records every request (headers and body
 * bytes), answers according to a fault plan, and de-duplicates by
 * Idempotency-Key the way docs/sinks.md tells a real service to: a key is
 * "accepted" once, by the first request it answers 2xx to.
 *
 * rx_verify() then checks the http sink's contract over everything that
 * arrived: each key's bodies byte-identical, key and headers matching the
 * body, and the accepted batches, sorted by first offset, holding every
 * expected record exactly once in order.
 */
#ifndef RECEIVER_H
#define RECEIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What the receiver does to requests; probabilities in per mille, drawn per request. */
struct rx_faults {
    int p500_before; /* 500 before accepting: nothing happened */
    int p500_after;  /* accept, then 500: the answer is "lost" */
    int p429;        /* 429 with Retry-After: 1, not accepted */
    int pslow;       /* accept, then answer after slow_ms (beyond the sink's timeout) */
    int slow_ms;
    const char *reject_marker; /* a body containing it gets reject_status, not accepted */
    int reject_status;         /* 422 when 0 */
    int status_all;            /* != 0: answer every request with this status (not accepted) */
    int delay_ms;              /* every answer waits this long (a slow service, not a fault) */
    /* Deterministic back-pressure: each key's first retry_times requests are answered
     * retry_status (429 or 503), not accepted, with a Retry-After of retry_after: delay
     * seconds ("2"), "+N" for an HTTP date N seconds ahead, NULL for none. */
    int retry_status;
    int retry_times;
    const char *retry_after;
};

struct rx_request {
    char *method;
    char *key;          /* Idempotency-Key or NULL */
    char *first, *last; /* X-Sidecar-First-Offset / -Last-Offset */
    char *epoch;        /* X-Sidecar-Epoch */
    char *redrive;      /* X-Sidecar-Redrive */
    char *content_type;
    char *authorization;
    char *tenant; /* X-Tenant (a configured header in the tests) */
    char *body;   /* NUL-terminated */
    size_t body_len;
    int64_t at_ms;        /* when the request was complete (hx_now_ms) */
    int status;           /* what the receiver answered */
    char retry_after[64]; /* the Retry-After it sent ("" if none) */
    bool accepted_first;  /* the request that accepted its key */
    bool fault;           /* answered by an injected fault (500, 429, slow) */
    bool unpended;        /* its range was neither pending nor committed (rx_check_pending()) */
};

struct rx;

/* Starts on a free port of 127.0.0.1 (aborts the test on failure). */
struct rx *rx_start(void);
/* Same over TLS with the given PEM certificate and key (contents, not paths): https://. */
struct rx *rx_start_tls(const char *cert_pem, const char *key_pem);
int rx_port(const struct rx *rx);
/* "http(s)://127.0.0.1:PORT/ingest" (a buffer in the receiver). */
const char *rx_url(const struct rx *rx);
void rx_set_faults(struct rx *rx, const struct rx_faults *f);
void rx_stop(struct rx *rx);

/* Requests so far; rx_request() results stay valid until rx_stop() (hold the lock). */
void rx_lock(struct rx *rx);
void rx_unlock(struct rx *rx);
size_t rx_nrequests(struct rx *rx);
const struct rx_request *rx_request(struct rx *rx, size_t i);
/* TCP connections accepted so far. */
long rx_connections(struct rx *rx);
/* Requests whose body differed from an earlier body under the same key. */
long rx_body_mismatches(struct rx *rx);
/* Requests answered with status (any key). */
long rx_count_status(struct rx *rx, int status);

/*
 * Asserts that after each 429 (Retry-After: 1) the same owner (same
 * X-Sidecar-Epoch) did not send that key again within a second; returns how
 * many 429s that owner followed up (a new owner after a crash does not know
 * about the 429 and may send at once).
 */
long rx_check_retry_after(struct rx *rx);

/*
 * Invariant I2 (pend before write), checked on every request from now on:
 * before answering, the receiver reads the partition's row in
 * sidecar.checkpoints (dsn) and requires the request's offset range to lie
 * within the pending batch, or to be committed already (a stalled owner's
 * late request, a retry); anything else is a write before its pend, which
 * rx_verify() reports.  A request it cannot check (PostgreSQL away) is
 * answered 503, so the sink sends it again.  Redrive requests are exempt.
 */
void rx_check_pending(struct rx *rx, const char *dsn);
/* Requests checked against the checkpoint so far, and those that failed the check. */
long rx_pending_checked(struct rx *rx);

/* Requests that repeated an earlier request's key (retries and replays). */
long rx_repeated_keys(struct rx *rx);

/* Which records a verification expects (NULL: offsets 0..count-1 of every partition). */
typedef bool (*rx_expect_fn)(int32_t partition, int64_t offset, void *arg);

struct rx_verify_opts {
    const char *pipeline;
    const char *topic;
    int nparts;
    int64_t count;     /* offsets 0..count-1 per partition were produced */
    rx_expect_fn skip; /* offsets that must NOT have been accepted (e.g. dead letters) */
    void *skip_arg;
    bool seq_values; /* records are hx_produce_seq()'s: check key and value */
    bool json_array; /* bodies are JSON arrays, not NDJSON */
};

/*
 * Asserts (ck_assert) the contract over every request so far; returns the
 * number of accepted records.
 */
int64_t rx_verify(struct rx *rx, const struct rx_verify_opts *o);

#endif
