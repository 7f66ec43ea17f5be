/*
 * sc_events - reads sidecar.events in commit-safe order and carries the
 * reader's position in resume tokens; used by `sidecar watch`, GET
 * /v1/events and the /v1/events/stream Server-Sent Events (I7; docs/design.md §5).
 *
 * A reader is a struct sc_events_cursor: a filter (pipeline, topic and
 * partition) and a position.  A fresh cursor starts with a snapshot of the
 * checkpoints, one {"kind":"snapshot", ...} object per row, consistent with
 * the position the events then continue from.  Every object handed out
 * carries "token": the resume token after it.  See the NOTES in sc_events.c
 * for why no committed event is ever missed or repeated.
 *
 * @locality a cursor and a connection are used by one thread at a time.
 */
#ifndef SC_EVENTS_H
#define SC_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "db/sc_pg.h" /* enum sc_read_rc */

/* Which events a reader wants. */
struct sc_events_filter {
    char *pipeline;    /* NULL: every pipeline */
    char *topic;       /* NULL: every partition, and pipeline-wide events; else with partition */
    int32_t partition; /* -1 when topic is NULL */
};

/* A reader's position.  Owns its strings. */
struct sc_events_cursor {
    struct sc_events_filter filter;
    bool fresh;   /* no position yet: the next read starts with a snapshot */
    uint64_t xid; /* after the event (xid, id) in reader order; id 0 = before xid's */
    int64_t id;
    char *snapshot;     /* pg_snapshot text: skip events visible in it (see NOTES); or NULL */
    uint64_t snap_xmax; /* pg_snapshot_xmax(snapshot) */
};

/*
 * Fills f from the command line / query forms: pipeline may be NULL,
 * partition is NULL or "TOPIC:N".  0, or -1 with a message in err (also for
 * text that is not UTF-8, which a resume token could not carry).
 */
int sc_events_filter_init(struct sc_events_filter *f, const char *pipeline, const char *partition,
                          char *err, size_t errsize) __attribute__((warn_unused_result));
void sc_events_filter_free(struct sc_events_filter *f);
/* Human form into buf: "pipeline p1, partition orders:3", or "no filter"; returns buf. */
const char *sc_events_filter_describe(const struct sc_events_filter *f, char *buf, size_t size);

/* A fresh cursor over filter f (copied). */
void sc_events_cursor_init(struct sc_events_cursor *c, const struct sc_events_filter *f);
void sc_events_cursor_free(struct sc_events_cursor *c);
/* Forgets the position: the next read starts with a new snapshot. */
void sc_events_cursor_restart(struct sc_events_cursor *c);
/* Sets the position to "after (xid, id)", without a snapshot (tests, tools). */
void sc_events_cursor_seek(struct sc_events_cursor *c, uint64_t xid, int64_t id);

/*
 * Replaces c with the position of token.  The token's filter must equal
 * want (a token only continues the stream it came from).  0, or -1 with a
 * message in err (malformed, or made for another filter).
 */
int sc_events_cursor_from_token(struct sc_events_cursor *c, const char *token,
                                const struct sc_events_filter *want, char *err, size_t errsize)
    __attribute__((warn_unused_result));
/*
 * The resume token of c's current position (malloc'd).  c's filter must be
 * UTF-8, as sc_events_filter_init() makes it: a token never leaves out a
 * member, so the process aborts instead.
 */
char *sc_events_cursor_token(const struct sc_events_cursor *c);

/*
 * Connects for reading events: sc_pg_connect() plus TimeZone UTC (so "at"
 * is RFC 3339 UTC).  NULL with the reason in err.
 */
PGconn *sc_events_connect(const char *dsn, int timeout_ms, const char *app_name, char *err,
                          size_t errsize) __attribute__((warn_unused_result));

/* LISTENs on the schema's events channel.  0 or an sc_read_rc with err set. */
int sc_events_listen(PGconn *conn, const char *schema_q, char *err, size_t errsize);

/*
 * Waits until a notification arrives on conn (any payload: they are only
 * hints) or timeout_ms passes.  1 notified, 0 timed out or interrupted by a
 * signal, -1 connection lost.  Drains every pending notification.
 */
int sc_events_wait(PGconn *conn, int timeout_ms);

/*
 * The next objects for cursor c, appended to the array out: for a fresh
 * cursor first the snapshot (every matching checkpoint, not counted against
 * limit), then up to limit events (1..10000), each with "token".  Advances
 * c.  Returns how many objects were appended, or an sc_read_rc with a
 * message in err (c unchanged then).  schema_q is the quoted schema.
 */
int sc_events_read(PGconn *conn, const char *schema_q, struct sc_events_cursor *c, int limit,
                   json_t *out, char *err, size_t errsize) __attribute__((warn_unused_result));

#endif
