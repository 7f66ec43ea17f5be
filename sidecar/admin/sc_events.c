/*
 * sc_events.c - commit-ordered event reading and resume tokens (see
 * sc_events.h).
 *
 * NOTES
 *
 * The problem.  events.id is a bigserial: it is assigned when a row is
 * inserted, not when its transaction commits.  Writer A inserts id 10 and
 * is slow to commit; writer B inserts id 11 and commits at once.  A reader
 * that pages with "id > last" sees 11, remembers 11, and never sees 10 when
 * A commits a moment later.  With many concurrent delivery workers this
 * happens all the time (check_events shows it in the same run).
 *
 * The order.  Every event row also stores xid = pg_current_xact_id(), the
 * 64-bit id of the top-level transaction that wrote it (also inside a
 * subtransaction), and readers go by (xid, id).  A reader only returns rows
 * whose transaction is certainly finished:
 *
 *     xid < pg_snapshot_xmin(pg_current_snapshot())
 *
 * The xmin of a snapshot is the oldest transaction id still running when it
 * was taken; every transaction with a smaller xid has committed or aborted,
 * and new transactions only get larger xids.  So the set of rows below that
 * horizon never changes again: no committed row can appear there later,
 * and an aborted transaction's rows never appear at all.  The query
 *
 *     WHERE (xid, id) > ($pos_xid, $pos_id) AND xid < <horizon>
 *       [AND filter] ORDER BY xid, id LIMIT n
 *
 * (one statement: the horizon and the rows come from the same snapshot)
 * therefore returns a prefix of a sequence that only ever grows at the end.
 * A reader that resumes from the (xid, id) of the last row it handed out
 * sees every later committed event exactly once, whatever it was doing in
 * between (disconnected, killed, reconnected to another server of the same
 * cluster).  The index events (xid, id) serves the scan.
 *
 * Per-partition order.  A partition's owner runs its checkpoint
 * transactions one after the other, so each gets its xid after the previous
 * one committed: by xid, the owner's events are in commit order.  Events of
 * different writers are ordered by xid, which need not be commit order (an
 * operator's reset_checkpoint() racing the owner may come out one step
 * early or late); nothing is lost or repeated either way.
 *
 * The cost.  A transaction that holds an xid for a long time anywhere in
 * the database cluster (a forgotten "BEGIN" in psql that wrote something, a
 * long batch job, a prepared transaction) holds the horizon back: events
 * committed after it started are delayed, never lost, until it ends.
 * Readers also lag by the duration of the transactions in flight, which for
 * the sidecar's own short checkpoint transactions is milliseconds.
 *
 * Empty reads move the position too.  When a read returns fewer rows than
 * asked for, every matching row below the horizon has been handed out, so
 * the position may jump to (horizon, 0).  This keeps a filtered reader's
 * position close to the present, so compaction of other partitions' events
 * does not make its token look expired.
 *
 * Starting with a snapshot.  A fresh reader first prints the checkpoints
 * as they are in one snapshot S (one statement returns pg_current_snapshot()
 * and the rows, so both come from the same snapshot, as in a REPEATABLE READ
 * transaction) and continues with the events from position
 * (pg_snapshot_xmin(S), 0).  Below xmin(S) every event's effect is already
 * in the snapshot rows.  Between xmin(S) and pg_snapshot_xmax(S) some
 * transactions had committed when S was taken (their effect is in the
 * snapshot) and some were still running (their effect is not): the reader
 * skips exactly the events with pg_visible_in_snapshot(xid, S).  From
 * xmax(S) on every event is new.  So the snapshot plus the events after it
 * is the state, with nothing counted twice or missed.  S travels in the
 * tokens until the position passes xmax(S).
 *
 * Only the last snapshot line's token holds that position; the earlier
 * lines' tokens say "start again with a new snapshot", because a snapshot
 * cannot be re-read later from the middle.  A client that resumes from one
 * of them gets a complete, newer snapshot instead of a partial old one.
 *
 * Expiry.  compact_events() (002_control.sql) deletes events in reader
 * order, oldest first, and records the last deleted (xid, id) in
 * event_horizon.  A position before it may have lost events, so the read
 * answers SC_READ_EXPIRED (watch exit 2, HTTP 410) unless the caller
 * restarts from a new snapshot.  The horizon row is read in the same
 * statement as the events, so a compaction that commits concurrently is
 * either seen (expired) or not yet (its rows are still visible).
 *
 * Waking up.  Writers NOTIFY the "<schema>_events" channel (per commit, or
 * coalesced under load), but a notification is only a hint: it may announce
 * many events, arrive before the horizon has passed the event (an older
 * transaction still runs), or not at all for a horizon that moved because
 * an unrelated transaction ended.  Readers therefore re-read on every
 * notification and also poll (about once a second).
 *
 * Tokens.  "v1." + base64url of {"x": xid, "i": id, "s": snapshot,
 * "p": pipeline, "t": topic, "n": partition} (members absent when empty),
 * or {"r": true, ...filter} for "start with a new snapshot"; see sc_token.h.
 */
#include "admin/sc_events.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/sc_token.h"
#include "base/sc_util.h"
#include "db/sc_pg.h"
#include "record/sc_envelope.h"

#define SNAPSHOT_TEXT_MAX 16384

/* ---- filters ------------------------------------------------------------- */

int sc_events_filter_init(struct sc_events_filter *f, const char *pipeline, const char *partition,
                          char *err, size_t errsize)
{
    memset(f, 0, sizeof(*f));
    f->partition = -1;
    /*
     * Names travel in resume tokens as JSON strings, which must be UTF-8;
     * no configured pipeline or Kafka topic can match other bytes anyway.
     * The value is not quoted: it would put those bytes into the message.
     */
    if (pipeline && !sc_utf8_valid(pipeline, strlen(pipeline))) {
        snprintf(err, errsize, "pipeline: not valid UTF-8");
        return -1;
    }
    if (partition && !sc_utf8_valid(partition, strlen(partition))) {
        snprintf(err, errsize, "partition: not valid UTF-8 (expected TOPIC:N, e.g. orders:3)");
        return -1;
    }
    if (pipeline) {
        if (!*pipeline) {
            snprintf(err, errsize, "pipeline: expected a pipeline name");
            return -1;
        }
        f->pipeline = sc_xstrdup(pipeline);
    }
    if (partition) {
        /* Kafka topic names cannot contain ':' ([A-Za-z0-9._-]), so the last one splits. */
        const char *colon = strrchr(partition, ':');
        int64_t n = -1;
        if (!colon || colon == partition || sc_parse_i64(colon + 1, &n) != 0 || n < 0 ||
            n > INT32_MAX) {
            snprintf(err, errsize, "partition \"%s\": expected TOPIC:N, e.g. orders:3", partition);
            sc_events_filter_free(f);
            return -1;
        }
        f->topic = sc_xasprintf("%.*s", (int)(colon - partition), partition);
        f->partition = (int32_t)n;
    }
    return 0;
}

void sc_events_filter_free(struct sc_events_filter *f)
{
    free(f->pipeline);
    free(f->topic);
    f->pipeline = f->topic = NULL;
    f->partition = -1;
}

static void filter_copy(struct sc_events_filter *dst, const struct sc_events_filter *src)
{
    dst->pipeline = src && src->pipeline ? sc_xstrdup(src->pipeline) : NULL;
    dst->topic = src && src->topic ? sc_xstrdup(src->topic) : NULL;
    dst->partition = src && src->topic ? src->partition : -1;
}

static bool str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool filter_equal(const struct sc_events_filter *a, const struct sc_events_filter *b)
{
    return str_eq(a->pipeline, b->pipeline) && str_eq(a->topic, b->topic) &&
           (!a->topic || a->partition == b->partition);
}

const char *sc_events_filter_describe(const struct sc_events_filter *f, char *buf, size_t size)
{
    if (!f->pipeline && !f->topic)
        snprintf(buf, size, "no filter");
    else if (!f->topic)
        snprintf(buf, size, "pipeline %s", f->pipeline);
    else if (!f->pipeline)
        snprintf(buf, size, "partition %s:%d", f->topic, (int)f->partition);
    else
        snprintf(buf, size, "pipeline %s, partition %s:%d", f->pipeline, f->topic,
                 (int)f->partition);
    return buf;
}

/* ---- cursors and tokens ---------------------------------------------------- */

void sc_events_cursor_init(struct sc_events_cursor *c, const struct sc_events_filter *f)
{
    memset(c, 0, sizeof(*c));
    filter_copy(&c->filter, f);
    c->fresh = true;
}

void sc_events_cursor_free(struct sc_events_cursor *c)
{
    sc_events_filter_free(&c->filter);
    free(c->snapshot);
    c->snapshot = NULL;
}

static void cursor_drop_snapshot(struct sc_events_cursor *c)
{
    free(c->snapshot);
    c->snapshot = NULL;
    c->snap_xmax = 0;
}

void sc_events_cursor_restart(struct sc_events_cursor *c)
{
    cursor_drop_snapshot(c);
    c->fresh = true;
    c->xid = 0;
    c->id = 0;
}

void sc_events_cursor_seek(struct sc_events_cursor *c, uint64_t xid, int64_t id)
{
    cursor_drop_snapshot(c);
    c->fresh = false;
    c->xid = xid;
    c->id = id;
}

static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

/*
 * Checks the pg_snapshot text form "xmin:xmax:xip,xip,..." and returns its
 * xmax.  Done here, not by PostgreSQL's input function, so a damaged token
 * is a clear "bad token" and never a failed statement.
 */
static int snapshot_parse(const char *s, uint64_t *xmax)
{
    uint64_t xmin, prev = 0;
    const char *p = s;
    char num[24];
    for (int field = 0; field < 2; field++) {
        size_t n = strspn(p, "0123456789");
        if (n == 0 || n >= sizeof(num) || p[n] != ':')
            return -1;
        memcpy(num, p, n);
        num[n] = '\0';
        if (parse_u64(num, field == 0 ? &xmin : xmax) != 0)
            return -1;
        p += n + 1;
    }
    if (xmin > *xmax)
        return -1;
    while (*p) {
        size_t n = strspn(p, "0123456789");
        uint64_t xip;
        if (n == 0 || n >= sizeof(num))
            return -1;
        memcpy(num, p, n);
        num[n] = '\0';
        if (parse_u64(num, &xip) != 0 || xip < xmin || xip >= *xmax || xip <= prev)
            return -1;
        prev = xip;
        p += n;
        if (*p == ',' && p[1])
            p++;
        else if (*p)
            return -1;
    }
    return 0;
}

/*
 * Sets o[key] = v (taking v), or aborts: a token that lacked a member would
 * silently stand for a wider filter or another position.  json_string()
 * fails only on allocation or text that is not UTF-8, which no cursor holds
 * (sc_events_filter_init() refuses it, snapshots are digits and tokens are
 * decoded JSON).
 */
static void token_set(json_t *o, const char *key, json_t *v)
{
    if (!v || json_object_set_new(o, key, v) != 0)
        abort();
}

char *sc_events_cursor_token(const struct sc_events_cursor *c)
{
    json_t *o = json_object();
    if (!o)
        abort(); /* allocation only */
    if (c->fresh) {
        token_set(o, "r", json_true());
    } else {
        token_set(o, "x", json_integer((json_int_t)c->xid));
        token_set(o, "i", json_integer((json_int_t)c->id));
        if (c->snapshot)
            token_set(o, "s", json_string(c->snapshot));
    }
    if (c->filter.pipeline)
        token_set(o, "p", json_string(c->filter.pipeline));
    if (c->filter.topic) {
        token_set(o, "t", json_string(c->filter.topic));
        token_set(o, "n", json_integer(c->filter.partition));
    }
    char *tok = sc_token_encode(o);
    json_decref(o);
    return tok;
}

int sc_events_cursor_from_token(struct sc_events_cursor *c, const char *token,
                                const struct sc_events_filter *want, char *err, size_t errsize)
{
    int result = -1;
    struct sc_events_cursor n;
    sc_events_cursor_init(&n, NULL);
    json_t *o = sc_token_decode(token, "resume token", err, errsize);
    if (!o)
        goto out;

    const char *bad = NULL;
    json_t *x = NULL, *i = NULL, *s = NULL, *p = NULL, *t = NULL, *pn = NULL, *r = NULL;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        json_t **slot = strcmp(key, "x") == 0   ? &x
                        : strcmp(key, "i") == 0 ? &i
                        : strcmp(key, "s") == 0 ? &s
                        : strcmp(key, "p") == 0 ? &p
                        : strcmp(key, "t") == 0 ? &t
                        : strcmp(key, "n") == 0 ? &pn
                        : strcmp(key, "r") == 0 ? &r
                                                : NULL;
        if (!slot) {
            bad = "unknown member";
            break;
        }
        *slot = v;
    }
    if (!bad && r && (!json_is_true(r) || x || i || s))
        bad = "restart marker with a position";
    if (!bad && !r &&
        (!json_is_integer(x) || json_integer_value(x) < 0 || !json_is_integer(i) ||
         json_integer_value(i) < 0))
        bad = "no position";
    if (!bad && s &&
        (!json_is_string(s) || json_string_length(s) > SNAPSHOT_TEXT_MAX ||
         snapshot_parse(json_string_value(s), &n.snap_xmax) != 0))
        bad = "invalid snapshot";
    if (!bad && p && (!json_is_string(p) || json_string_length(p) == 0))
        bad = "invalid pipeline";
    if (!bad && (!t != !pn ||
                 (t && (!json_is_string(t) || json_string_length(t) == 0 || !json_is_integer(pn) ||
                        json_integer_value(pn) < 0 || json_integer_value(pn) > INT32_MAX))))
        bad = "invalid partition";
    if (bad) {
        snprintf(err, errsize, "malformed resume token (%s)", bad);
        goto out;
    }

    n.fresh = r != NULL;
    if (!r) {
        n.xid = (uint64_t)json_integer_value(x);
        n.id = (int64_t)json_integer_value(i);
    }
    if (s)
        n.snapshot = sc_xstrdup(json_string_value(s));
    if (p)
        n.filter.pipeline = sc_xstrdup(json_string_value(p));
    if (t) {
        n.filter.topic = sc_xstrdup(json_string_value(t));
        n.filter.partition = (int32_t)json_integer_value(pn);
    }
    if (want && !filter_equal(&n.filter, want)) {
        char had[512], asked[512];
        snprintf(err, errsize,
                 "the resume token was issued for %s but this request asks for %s: resume with "
                 "the filter the token was issued for",
                 sc_events_filter_describe(&n.filter, had, sizeof(had)),
                 sc_events_filter_describe(want, asked, sizeof(asked)));
        goto out;
    }
    sc_events_cursor_free(c);
    *c = n;
    memset(&n, 0, sizeof(n));
    result = 0;
out:
    sc_events_cursor_free(&n);
    json_decref(o);
    return result;
}

/* ---- connection ------------------------------------------------------------ */

PGconn *sc_events_connect(const char *dsn, int timeout_ms, const char *app_name, char *err,
                          size_t errsize)
{
    PGconn *conn = sc_pg_connect(dsn, app_name, timeout_ms, err, errsize);
    if (!conn)
        return NULL;
    /*
     * json_build_object() renders timestamptz in the session time zone: make
     * it RFC 3339 UTC.  No JIT: these are small index scans, and compiling
     * them would cost more than running them.
     */
    PGresult *res = PQexec(conn, "SET TimeZone TO 'UTC'; SET jit TO off");
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        char msg[512];
        snprintf(err, errsize, "could not set the time zone: %s",
                 sc_pg_errmsg(conn, res, msg, sizeof(msg)));
        PQclear(res);
        PQfinish(conn);
        return NULL;
    }
    PQclear(res);
    return conn;
}

int sc_events_listen(PGconn *conn, const char *schema_q, char *err, size_t errsize)
{
    int rc = 0;
    char *sql = sc_pg_with_schema("SELECT {S}.events_channel()", schema_q);
    char *listen = NULL, *chan = NULL;
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        rc = sc_pg_read_failed(conn, res, "could not find the events channel", err, errsize);
        goto out;
    }
    chan = sc_pg_quote_ident(PQgetvalue(res, 0, 0));
    listen = sc_xasprintf("LISTEN %s", chan);
    PQclear(res);
    res = PQexec(conn, listen);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = sc_pg_read_failed(conn, res, "could not LISTEN", err, errsize);
out:
    PQclear(res);
    free(sql);
    free(listen);
    free(chan);
    return rc;
}

/* Takes every queued notification; returns how many there were. */
static int drain_notifies(PGconn *conn)
{
    int n = 0;
    PGnotify *nt;
    while ((nt = PQnotifies(conn)) != NULL) {
        PQfreemem(nt);
        n++;
    }
    return n;
}

int sc_events_wait(PGconn *conn, int timeout_ms)
{
    /* Notifications that arrived with the last query's results come first. */
    if (drain_notifies(conn) > 0)
        return 1;
    int fd = PQsocket(conn);
    if (fd < 0 || PQstatus(conn) != CONNECTION_OK)
        return -1;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int r = poll(&pfd, 1, timeout_ms);
    if (r < 0)
        return errno == EINTR ? 0 : -1;
    if (r == 0)
        return 0;
    if (!PQconsumeInput(conn) || PQstatus(conn) != CONNECTION_OK)
        return -1;
    return drain_notifies(conn) > 0 ? 1 : 0;
}

/* ---- reading ----------------------------------------------------------------- */

static const char snapshot_sql[] =
    "SELECT s.snap::text, pg_snapshot_xmin(s.snap)::text, row_to_json(c)::text"
    "  FROM (SELECT pg_current_snapshot() AS snap) s"
    "  LEFT JOIN {S}.checkpoints c"
    "    ON ($1::text IS NULL OR c.pipeline = $1)"
    "   AND ($2::text IS NULL OR (c.topic = $2 AND c.partition = $3::int))"
    " ORDER BY c.pipeline, c.topic, c.partition";

/* One statement: the horizon, the expiry check and the rows share one snapshot (NOTES). */
static const char events_sql[] =
    "SELECT h.horizon::text, h.expired, h.pruned_at::text, e.xid::text, e.id, e.j::text"
    "  FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon,"
    "               coalesce(($1::xid8, $2::bigint) < (z.pruned_xid, z.pruned_id), false)"
    "                   AS expired,"
    "               z.pruned_at"
    "          FROM {S}.event_horizon z LIMIT 1) h"
    "  LEFT JOIN LATERAL ("
    "        SELECT ev.xid, ev.id,"
    "               json_build_object('id', ev.id, 'at', ev.at, 'pipeline', ev.pipeline,"
    "                                 'topic', ev.topic, 'partition', ev.partition,"
    "                                 'kind', ev.kind, 'epoch', ev.epoch, 'owner', ev.owner,"
    "                                 'first_offset', ev.first_offset,"
    "                                 'last_offset', ev.last_offset,"
    "                                 'write_offset', ev.write_offset, 'detail', ev.detail) AS j"
    "          FROM {S}.events ev"
    "         WHERE NOT h.expired"
    "           AND (ev.xid, ev.id) > ($1::xid8, $2::bigint)"
    "           AND ev.xid < h.horizon"
    "           AND ($3::text IS NULL OR ev.pipeline = $3)"
    "           AND ($4::text IS NULL OR (ev.topic = $4 AND ev.partition = $5::int))"
    "           AND ($6::pg_snapshot IS NULL OR ev.xid >= pg_snapshot_xmax($6::pg_snapshot)"
    "                OR NOT pg_visible_in_snapshot(ev.xid, $6::pg_snapshot))"
    "         ORDER BY ev.xid, ev.id"
    "         LIMIT $7::int) e ON true"
    " ORDER BY e.xid, e.id";

/* Appends the token of c to obj and obj to arr. */
static void append_with_token(json_t *arr, json_t *obj, const struct sc_events_cursor *c)
{
    char *tok = sc_events_cursor_token(c);
    json_object_set_new(obj, "token", json_string(tok));
    free(tok);
    json_array_append_new(arr, obj);
}

/* Reads the snapshot into arr and moves c (fresh) to the position after it. */
static int read_snapshot(PGconn *conn, const char *schema_q, struct sc_events_cursor *c,
                         json_t *arr, char *err, size_t errsize)
{
    int rc = SC_READ_FAILED;
    char part[16];
    snprintf(part, sizeof(part), "%d", (int)c->filter.partition);
    const char *params[] = {c->filter.pipeline, c->filter.topic, c->filter.topic ? part : NULL};
    char *sql = sc_pg_with_schema(snapshot_sql, schema_q);
    PGresult *res = PQexecParams(conn, sql, 3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1) {
        rc = sc_pg_read_failed(conn, res, "could not read the checkpoints", err, errsize);
        goto out;
    }
    uint64_t xmin, xmax;
    const char *snap = PQgetvalue(res, 0, 0);
    if (parse_u64(PQgetvalue(res, 0, 1), &xmin) != 0 || snapshot_parse(snap, &xmax) != 0) {
        snprintf(err, errsize, "unexpected snapshot \"%s\" from the server", snap);
        goto out;
    }
    /* Only the last line's token holds the position (NOTES: "Only the last ..."). */
    char *restart = sc_events_cursor_token(c);
    c->fresh = false;
    c->xid = xmin;
    c->id = 0;
    if (xmin < xmax) {
        c->snapshot = sc_xstrdup(snap);
        c->snap_xmax = xmax;
    }
    int rows = PQgetisnull(res, 0, 2) ? 0 : PQntuples(res);
    for (int r = 0; r < rows; r++) {
        json_error_t jerr;
        json_t *row = json_loads(PQgetvalue(res, r, 2), 0, &jerr);
        if (!json_is_object(row)) {
            json_decref(row);
            free(restart);
            snprintf(err, errsize, "unexpected checkpoint row from the server: %s", jerr.text);
            goto out;
        }
        json_t *obj = json_pack("{s:s}", "kind", "snapshot");
        json_object_update(obj, row);
        json_decref(row);
        if (r < rows - 1) {
            json_object_set_new(obj, "token", json_string(restart));
            json_array_append_new(arr, obj);
        } else {
            append_with_token(arr, obj, c);
        }
    }
    free(restart);
    rc = 0;
out:
    PQclear(res);
    free(sql);
    return rc;
}

static int read_events(PGconn *conn, const char *schema_q, struct sc_events_cursor *c, int limit,
                       json_t *arr, char *err, size_t errsize)
{
    int rc = SC_READ_FAILED;
    char xid[24], id[24], part[16], lim[16];
    snprintf(xid, sizeof(xid), "%" PRIu64, c->xid);
    snprintf(id, sizeof(id), "%" PRId64, c->id);
    snprintf(part, sizeof(part), "%d", (int)c->filter.partition);
    snprintf(lim, sizeof(lim), "%d", limit);
    const char *params[] = {
        xid,         id, c->filter.pipeline, c->filter.topic, c->filter.topic ? part : NULL,
        c->snapshot, lim};
    char *sql = sc_pg_with_schema(events_sql, schema_q);
    PGresult *res = PQexecParams(conn, sql, 7, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = sc_pg_read_failed(conn, res, "could not read events", err, errsize);
        goto out;
    }
    if (PQntuples(res) < 1) {
        snprintf(err, errsize, "the event_horizon row is missing (was it deleted by hand?)");
        goto out;
    }
    if (strcmp(PQgetvalue(res, 0, 1), "t") == 0) {
        snprintf(err, errsize,
                 "resume token expired: the events after it were compacted (events.retention; "
                 "compaction last ran at %s)",
                 PQgetvalue(res, 0, 2));
        rc = SC_READ_EXPIRED;
        goto out;
    }
    uint64_t horizon;
    if (parse_u64(PQgetvalue(res, 0, 0), &horizon) != 0) {
        snprintf(err, errsize, "unexpected horizon \"%s\" from the server", PQgetvalue(res, 0, 0));
        goto out;
    }
    int rows = PQgetisnull(res, 0, 3) ? 0 : PQntuples(res);
    for (int r = 0; r < rows; r++) {
        uint64_t ex;
        int64_t eid;
        json_error_t jerr;
        json_t *obj = json_loads(PQgetvalue(res, r, 5), 0, &jerr);
        if (parse_u64(PQgetvalue(res, r, 3), &ex) != 0 ||
            sc_parse_i64(PQgetvalue(res, r, 4), &eid) != 0 || !json_is_object(obj)) {
            json_decref(obj);
            snprintf(err, errsize, "unexpected event row from the server");
            goto out;
        }
        c->xid = ex;
        c->id = eid;
        if (c->snapshot && ex >= c->snap_xmax)
            cursor_drop_snapshot(c);
        append_with_token(arr, obj, c);
    }
    /* Fewer than asked for: everything below the horizon is out (NOTES: "Empty reads"). */
    if (rows < limit && horizon > c->xid) {
        c->xid = horizon;
        c->id = 0;
        if (c->snapshot && horizon >= c->snap_xmax)
            cursor_drop_snapshot(c);
    }
    rc = rows;
out:
    PQclear(res);
    free(sql);
    return rc;
}

static void cursor_copy(struct sc_events_cursor *dst, const struct sc_events_cursor *src)
{
    *dst = *src;
    filter_copy(&dst->filter, &src->filter);
    dst->snapshot = src->snapshot ? sc_xstrdup(src->snapshot) : NULL;
}

int sc_events_read(PGconn *conn, const char *schema_q, struct sc_events_cursor *c, int limit,
                   json_t *out, char *err, size_t errsize)
{
    if (limit < 1 || limit > 10000) {
        snprintf(err, errsize, "limit %d out of range 1..10000", limit);
        return SC_READ_FAILED;
    }
    /* Work on copies so that a failure leaves both c and out as they were. */
    struct sc_events_cursor work;
    cursor_copy(&work, c);
    json_t *got = json_array();
    int rc = 0;
    if (work.fresh) {
        rc = read_snapshot(conn, schema_q, &work, got, err, errsize);
        if (rc < 0)
            goto out;
    }
    rc = read_events(conn, schema_q, &work, limit, got, err, errsize);
    if (rc < 0)
        goto out;
    rc = (int)json_array_size(got);
    json_array_extend(out, got);
    sc_events_cursor_free(c);
    *c = work;
    memset(&work, 0, sizeof(work));
out:
    sc_events_cursor_free(&work);
    json_decref(got);
    return rc;
}
