/*
 * sc_lease.c - leases with epoch fencing and the instance registry (see
 * sc_lease.h).  The statements call the SQL functions of
 * sql/005_lease_assignment.sql, whose comments explain their conditions.
 *
 * Concurrency: acquire_leases() locks the lease rows, then their checkpoint
 * rows, with SKIP LOCKED, and decides on the locked rows, so two acquirers
 * never both win, a loser is told the holder as it is now (not as its
 * statement's snapshot had it before it could lock), and a row locked by a
 * frozen session delays only its own partition.  The lock order is the same
 * as everywhere: lease row, then checkpoint row.
 */
#include "protocol/sc_lease.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/sc_log.h"

/* $1 pipeline, $2 owner, $3 ttl ms, $4 topics, $5 partitions, $6 events channel. */
static const struct sc_stmt st_acquire = {
    "sc_lease_acquire",
    "SELECT acquired, topic, partition, epoch, committed_offset, committed_write_offset,"
    " pending_first_offset, pending_last_offset, pending_count, pending_checksum,"
    " pending_write_offset, state, error, paused, control_seq, holder, holder_ms, busy"
    " FROM {S}.acquire_leases($1, $2, $3::bigint, $4::text[], $5::int[], $6)",
    6,
};

/* $1 pipeline, $2 instance, $3 incarnation, $4 assignment, $5 ttl ms, $6 host, $7 os pid,
 * $8 version. */
static const struct sc_stmt st_register = {
    "sc_lease_register",
    "SELECT registered, holder_host, holder_os_pid, holder_started_at::text, holder_expires_ms,"
    " draining FROM {S}.register_instance($1, $2, $3::bigint, $4, $5::bigint, $6, $7::int, $8)",
    8,
};

/* $1 pipeline, $2 instance, $3 incarnation. */
static const struct sc_stmt st_deregister = {
    "sc_lease_deregister",
    "WITH d AS (UPDATE {S}.instances SET expires_at = now(), renewed_at = now()"
    " WHERE pipeline = $1 AND instance_id = $2 AND incarnation = $3::bigint RETURNING 1)"
    " SELECT {S}.control_notify($1, NULL, NULL, 'leave', $2) FROM d",
    3,
};

/* $1 pipeline, $2 instance, $3 incarnation, $4 assignment, $5 ttl ms, $6 topics, $7 partitions,
 * $8 epochs, $9 known partitions, $10 share, $11 topic counts, $12 full. */
static const struct sc_stmt st_tick = {
    "sc_lease_tick",
    "SELECT kind, topic, partition, owner, epoch, live, control_seq, pinned_to, handoff_to,"
    " handoff_reason, handoff_ms, held_ms, busy"
    " FROM {S}.lease_tick($1, $2, $3::bigint, $4, $5::bigint, $6::text[], $7::int[],"
    " $8::bigint[], $9::int, $10::int, $11::jsonb, $12::boolean)",
    12,
};

/* NOTIFY of the lease events in CTE "e" on channel ch (NULL: coalesced mode). */
#define NOTIFY_LEASE(ch)                                                                   \
    " n AS (SELECT pg_notify(" ch "::text, json_build_object('id', max(e.id), 'pipeline'," \
    " $1::text)::text) FROM e HAVING " ch "::text IS NOT NULL AND count(*) > 0)"

/* $1 pipeline, $2 topics, $3 partitions, $4 epochs, $5 owner, $6 reason, $7 notify channel,
 * $8 handoff target (NULL: anyone), $9 the row's handoff_to when the release was decided.
 * Only a lease still ours (owner, epoch) is released.  A handoff request made since the
 * decision (handoff_to other than $9: an operator's move, another request) is newer: it
 * stays, and becomes the reservation; otherwise $8 replaces it. */
#define SAME_REQUEST " l.handoff_to IS NOT DISTINCT FROM $9::text"
static const struct sc_stmt st_release = {
    "sc_lease_release",
    "WITH l AS ("
    " UPDATE {S}.leases l SET expires_at = now(), renewed_at = now(),"
    "  handoff_to = CASE WHEN" SAME_REQUEST " THEN $8 ELSE l.handoff_to END,"
    "  handoff_reason = CASE WHEN NOT" SAME_REQUEST " THEN l.handoff_reason"
    "   WHEN $8::text IS NULL THEN NULL ELSE coalesce(l.handoff_reason, 'balance') END,"
    "  handoff_at = CASE WHEN (CASE WHEN" SAME_REQUEST " THEN $8 ELSE l.handoff_to END) IS NULL"
    "   THEN NULL ELSE now() END"
    " FROM unnest($2::text[], $3::int[], $4::bigint[]) AS r(topic, partition, epoch)"
    " WHERE l.pipeline = $1 AND l.topic = r.topic AND l.partition = r.partition"
    "  AND l.epoch = r.epoch AND l.owner = $5"
    " RETURNING l.topic, l.partition, l.epoch, l.handoff_to),"
    " e AS (INSERT INTO {S}.events (pipeline, topic, partition, kind, epoch, owner, detail)"
    " SELECT $1, l.topic, l.partition, 'lease', l.epoch, $5,"
    "  jsonb_strip_nulls(jsonb_build_object('action', 'release', 'reason', $6::text,"
    "   'to', l.handoff_to)) FROM l RETURNING id),"
    " c AS (SELECT {S}.control_notify($1, NULL, NULL, 'release',"
    "  (SELECT min(l.handoff_to) FROM l)) FROM e HAVING count(*) > 0)," NOTIFY_LEASE(
        "$7") " SELECT (SELECT count(*) FROM l), (SELECT count(*) FROM n),"
              " (SELECT count(*) FROM c)",
    9,
};

/* $1 pipeline, $2 me, $3 topics, $4 partitions, $5 owners. */
static const struct sc_stmt st_request = {
    "sc_lease_request",
    "SELECT count(*) FROM {S}.request_handoffs($1, $2, $3::text[], $4::int[], $5::text[])",
    5,
};

/* $1 pipeline, $2 me, $3 topics, $4 partitions, $5 why, $6 the requests as judged. */
static const struct sc_stmt st_refuse = {
    "sc_lease_refuse",
    "SELECT {S}.refuse_handoffs($1, $2, $3::text[], $4::int[], $5, $6::text[])",
    6,
};

int sc_pg_array_str(struct sc_buf *b, const char *const *items, size_t n)
{
    if (sc_buf_putc(b, '{') < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (i && sc_buf_putc(b, ',') < 0)
            return -1;
        if (!items[i]) {
            if (sc_buf_append(b, "NULL", 4) < 0)
                return -1;
            continue;
        }
        if (sc_buf_putc(b, '"') < 0)
            return -1;
        for (const char *p = items[i]; *p; p++)
            if (((*p == '"' || *p == '\\') && sc_buf_putc(b, '\\') < 0) || sc_buf_putc(b, *p) < 0)
                return -1;
        if (sc_buf_putc(b, '"') < 0)
            return -1;
    }
    if (sc_buf_putc(b, '}') < 0)
        return -1;
    return sc_buf_putc(b, '\0');
}

int sc_pg_array_i64(struct sc_buf *b, const int64_t *items, size_t n)
{
    if (sc_buf_putc(b, '{') < 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (sc_buf_printf(b, "%s%lld", i ? "," : "", (long long)items[i]) < 0)
            return -1;
    if (sc_buf_putc(b, '}') < 0)
        return -1;
    return sc_buf_putc(b, '\0');
}

/* Array parameters for a list of (topic, partition[, epoch]). */
struct arrays {
    struct sc_buf topics, partitions, epochs;
};

static void arrays_build(struct arrays *a, const char *const *topics, const int32_t *parts,
                         const int64_t *epochs, size_t n)
{
    sc_buf_init(&a->topics, 0);
    sc_buf_init(&a->partitions, 0);
    sc_buf_init(&a->epochs, 0);
    int64_t *p64 = sc_xcalloc(n ? n : 1, sizeof(*p64));
    for (size_t i = 0; i < n; i++)
        p64[i] = parts[i];
    /* No maximum on these buffers: only an allocation failure could fail, which aborts. */
    (void)!sc_pg_array_str(&a->topics, topics, n);
    (void)!sc_pg_array_i64(&a->partitions, p64, n);
    (void)!sc_pg_array_i64(&a->epochs, epochs ? epochs : p64, n);
    free(p64);
}

static void arrays_free(struct arrays *a)
{
    sc_buf_free(&a->topics);
    sc_buf_free(&a->partitions);
    sc_buf_free(&a->epochs);
}

static int64_t col_i64(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static const char *col_str(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

static bool col_bool(const PGresult *res, int row, int col)
{
    return !PQgetisnull(res, row, col) && PQgetvalue(res, row, col)[0] == 't';
}

int sc_lease_acquire(struct sc_db *db, const char *pipeline, const char *owner, int ttl_ms,
                     const char *notify_channel, struct sc_lease_req *reqs, size_t n,
                     bool *unavailable)
{
    *unavailable = false;
    const char **topics = sc_xcalloc(n ? n : 1, sizeof(*topics));
    int32_t *parts = sc_xcalloc(n ? n : 1, sizeof(*parts));
    for (size_t i = 0; i < n; i++) {
        topics[i] = reqs[i].topic;
        parts[i] = reqs[i].partition;
        reqs[i].acquired = false;
        reqs[i].busy = true; /* unless the answer says otherwise */
        reqs[i].holder[0] = '\0';
        reqs[i].holder_ms = 0;
        reqs[i].epoch = 0;
    }
    struct arrays a;
    arrays_build(&a, topics, parts, NULL, n);
    char ttl[24];
    const char *params[] = {pipeline,          owner,         sc_i64(ttl, ttl_ms), a.topics.data,
                            a.partitions.data, notify_channel};
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec(db, &st_acquire, params, &cls);
    arrays_free(&a);
    free(topics);
    free(parts);
    if (!res) {
        *unavailable = cls == SC_PG_RETRY;
        if (cls != SC_PG_RETRY)
            sc_error(NULL, "lease acquisition failed: %s", db->last_error);
        return -1;
    }
    for (int row = 0; row < PQntuples(res); row++) {
        const char *topic = PQgetvalue(res, row, 1);
        int32_t partition = (int32_t)col_i64(res, row, 2);
        for (size_t i = 0; i < n; i++) {
            struct sc_lease_req *r = &reqs[i];
            if (r->partition != partition || strcmp(r->topic, topic) != 0)
                continue;
            r->acquired = col_bool(res, row, 0);
            r->busy = col_bool(res, row, 17);
            r->epoch = col_i64(res, row, 3);
            if (r->acquired) {
                sc_checkpoint_parse_row(res, row, 3, &r->cp);
            } else if (!r->busy) {
                const char *h = col_str(res, row, 15);
                snprintf(r->holder, sizeof(r->holder), "%s", h ? h : "");
                r->holder_ms = col_i64(res, row, 16);
            }
        }
    }
    PQclear(res);
    return 0;
}

int sc_lease_register(struct sc_db *db, const struct sc_lease_self *self, const char *host,
                      int os_pid, bool *registered, bool *draining, struct sc_lease_holder *holder)
{
    char inc[24], ttl[24], pid[24];
    const char *params[] = {self->pipeline,
                            self->instance,
                            sc_i64(inc, self->incarnation),
                            self->assignment,
                            sc_i64(ttl, self->ttl_ms),
                            host,
                            sc_i64(pid, os_pid),
                            SIDECAR_VERSION};
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec(db, &st_register, params, &cls);
    if (!res)
        return -1;
    memset(holder, 0, sizeof(*holder));
    *registered = PQntuples(res) == 1 && col_bool(res, 0, 0);
    *draining = PQntuples(res) == 1 && col_bool(res, 0, 5);
    if (!*registered && PQntuples(res) == 1) {
        const char *h = col_str(res, 0, 1), *at = col_str(res, 0, 3);
        snprintf(holder->host, sizeof(holder->host), "%s", h ? h : "?");
        holder->os_pid = (int)col_i64(res, 0, 2);
        snprintf(holder->started_at, sizeof(holder->started_at), "%s", at ? at : "?");
        holder->expires_ms = col_i64(res, 0, 4);
    }
    PQclear(res);
    return 0;
}

int sc_lease_deregister(struct sc_db *db, const struct sc_lease_self *self)
{
    char inc[24];
    const char *params[] = {self->pipeline, self->instance, sc_i64(inc, self->incarnation)};
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec(db, &st_deregister, params, &cls);
    if (!res)
        return -1;
    PQclear(res);
    return 0;
}

int sc_lease_tick(struct sc_db *db, const struct sc_lease_self *self, struct sc_lease_held *held,
                  size_t n, int known, int share, const char *topic_counts, bool full,
                  struct sc_lease_tick *out)
{
    memset(out, 0, sizeof(*out));
    const char **topics = sc_xcalloc(n ? n : 1, sizeof(*topics));
    int32_t *parts = sc_xcalloc(n ? n : 1, sizeof(*parts));
    int64_t *epochs = sc_xcalloc(n ? n : 1, sizeof(*epochs));
    for (size_t i = 0; i < n; i++) {
        topics[i] = held[i].topic;
        parts[i] = held[i].partition;
        epochs[i] = held[i].epoch;
        held[i].state = SC_LEASE_LOST;
    }
    struct arrays a;
    arrays_build(&a, topics, parts, epochs, n);
    char inc[24], ttl[24], kn[24], sh[24];
    const char *params[] = {self->pipeline,
                            self->instance,
                            sc_i64(inc, self->incarnation),
                            self->assignment,
                            sc_i64(ttl, self->ttl_ms),
                            a.topics.data,
                            a.partitions.data,
                            a.epochs.data,
                            known >= 0 ? sc_i64(kn, known) : NULL,
                            share >= 0 ? sc_i64(sh, share) : NULL,
                            topic_counts,
                            full ? "true" : "false"};
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec(db, &st_tick, params, &cls);
    arrays_free(&a);
    free(topics);
    free(parts);
    free(epochs);
    if (!res)
        return -1;
    int rows = PQntuples(res);
    out->res = res;
    out->leases = sc_xcalloc((size_t)rows + 1, sizeof(*out->leases));
    out->insts = sc_xcalloc((size_t)rows + 1, sizeof(*out->insts));
    for (int row = 0; row < rows; row++) {
        const char *kind = PQgetvalue(res, row, 0);
        if (strcmp(kind, "self") == 0) {
            out->registered = col_bool(res, row, 5);
            out->self_busy = col_bool(res, row, 12);
        } else if (strcmp(kind, "held") == 0) {
            const char *topic = PQgetvalue(res, row, 1);
            int32_t partition = (int32_t)col_i64(res, row, 2);
            const char *owner = col_str(res, row, 3);
            int64_t epoch = col_i64(res, row, 4);
            for (size_t i = 0; i < n; i++) {
                struct sc_lease_held *h = &held[i];
                if (h->partition != partition || strcmp(h->topic, topic) != 0)
                    continue;
                bool ours = owner && strcmp(owner, self->instance) == 0 && epoch == h->epoch;
                if (col_bool(res, row, 5)) {
                    h->state = SC_LEASE_RENEWED;
                } else if (ours && col_bool(res, row, 12)) {
                    h->state = SC_LEASE_BUSY; /* locked by another session: not renewed now */
                    out->busy++;
                } else if (ours) {
                    h->state = SC_LEASE_LAPSED;
                } else {
                    h->state = SC_LEASE_LOST;
                }
                h->control_seq = col_i64(res, row, 6);
            }
        } else if (strcmp(kind, "lease") == 0) {
            out->leases[out->nleases++] = (struct sc_lease_row){
                .topic = PQgetvalue(res, row, 1),
                .partition = (int32_t)col_i64(res, row, 2),
                .owner = col_str(res, row, 3),
                .epoch = col_i64(res, row, 4),
                .pinned_to = col_str(res, row, 7),
                .handoff_to = col_str(res, row, 8),
                .reason = sc_handoff_reason_parse(col_str(res, row, 9)),
                .handoff_ms = col_i64(res, row, 10),
                .held_ms = col_i64(res, row, 11),
            };
        } else if (strcmp(kind, "instance") == 0) {
            out->insts[out->ninsts++] = (struct sc_lease_instance){
                .id = PQgetvalue(res, row, 3),
                .owned = (int)col_i64(res, row, 4),
                .eligible = col_bool(res, row, 5),
                .draining = col_i64(res, row, 6) != 0,
            };
        }
    }
    return 0;
}

void sc_lease_tick_clear(struct sc_lease_tick *t)
{
    free(t->leases);
    free(t->insts);
    PQclear(t->res);
    memset(t, 0, sizeof(*t));
}

int sc_lease_release(struct sc_db *db, const char *pipeline, const char *owner,
                     const char *notify_channel, const struct sc_lease_held *held, size_t n,
                     const char *reason, const char *handoff_to)
{
    return sc_lease_release_judged(db, pipeline, owner, notify_channel, held, n, reason, handoff_to,
                                   handoff_to);
}

int sc_lease_release_judged(struct sc_db *db, const char *pipeline, const char *owner,
                            const char *notify_channel, const struct sc_lease_held *held, size_t n,
                            const char *reason, const char *handoff_to, const char *seen)
{
    if (n == 0)
        return 0;
    const char **topics = sc_xcalloc(n, sizeof(*topics));
    int32_t *parts = sc_xcalloc(n, sizeof(*parts));
    int64_t *epochs = sc_xcalloc(n, sizeof(*epochs));
    for (size_t i = 0; i < n; i++) {
        topics[i] = held[i].topic;
        parts[i] = held[i].partition;
        epochs[i] = held[i].epoch;
    }
    struct arrays a;
    arrays_build(&a, topics, parts, epochs, n);
    free(topics);
    free(parts);
    free(epochs);
    const char *params[] = {pipeline, a.topics.data,  a.partitions.data, a.epochs.data, owner,
                            reason,   notify_channel, handoff_to,        seen};
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec(db, &st_release, params, &cls);
    arrays_free(&a);
    if (!res)
        return -1;
    int released = (int)col_i64(res, 0, 0);
    PQclear(res);
    return released;
}

/* Runs st with (pipeline, me, topics, partitions, owners or why[, was]); returns its one
 * integer, or -1. */
static int run_handoff(struct sc_db *db, const struct sc_stmt *st, const char *pipeline,
                       const char *me, const char *const *topics, const int32_t *partitions,
                       size_t n, const char *const *owners, const char *why, const char *const *was)
{
    if (n == 0)
        return 0;
    struct arrays a;
    arrays_build(&a, topics, partitions, NULL, n);
    struct sc_buf ob;
    sc_buf_init(&ob, 0);
    if (owners || was)
        (void)!sc_pg_array_str(&ob, owners ? owners : was, n);
    const char *params[] = {pipeline, me, a.topics.data, a.partitions.data, owners ? ob.data : why,
                            ob.data};
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec(db, st, params, &cls);
    arrays_free(&a);
    sc_buf_free(&ob);
    if (!res)
        return -1;
    int count = PQntuples(res) == 1 ? (int)col_i64(res, 0, 0) : 0;
    PQclear(res);
    return count;
}

int sc_lease_request_handoffs(struct sc_db *db, const char *pipeline, const char *me,
                              const char *const *topics, const int32_t *partitions,
                              const char *const *owners, size_t n)
{
    return run_handoff(db, &st_request, pipeline, me, topics, partitions, n, owners, NULL, NULL);
}

int sc_lease_refuse_handoffs(struct sc_db *db, const char *pipeline, const char *me,
                             const char *const *topics, const int32_t *partitions,
                             const char *const *was, size_t n, const char *why)
{
    return run_handoff(db, &st_refuse, pipeline, me, topics, partitions, n, NULL, why, was);
}

int sc_lease_listen(struct sc_db *db, unsigned *gen)
{
    if (sc_db_connect(db, false) != 0)
        return -1;
    if (*gen == db->connects)
        return 0;
    /* The channel is an identifier, "<schema>_control": the quoted schema (its embedded
     * quotes doubled by sc_pg_quote_ident()) with _control inside its closing quote. */
    size_t slen = strlen(db->schema_q);
    char *q = sc_xasprintf("LISTEN %.*s_control\"", (int)(slen - 1), db->schema_q);
    enum sc_pg_errclass cls;
    PGresult *res = sc_db_exec_once(db, q, 0, NULL, &cls);
    free(q);
    if (!res)
        return -1;
    PQclear(res);
    *gen = db->connects;
    return 1;
}

int sc_lease_poll_notes(struct sc_db *db, const char *pipeline,
                        void (*fn)(void *arg, const struct sc_lease_note *note), void *arg)
{
    if (!db->conn || PQstatus(db->conn) != CONNECTION_OK)
        return -1;
    if (PQconsumeInput(db->conn) != 1) {
        sc_db_reset(db);
        return -1;
    }
    int count = 0;
    PGnotify *nt;
    while ((nt = PQnotifies(db->conn)) != NULL) {
        json_error_t e;
        json_t *j = json_loads(nt->extra, 0, &e);
        const char *pl = json_string_value(json_object_get(j, "pipeline"));
        if (pl && strcmp(pl, pipeline) == 0) {
            struct sc_lease_note note = {.partition = -1};
            const char *t = json_string_value(json_object_get(j, "topic"));
            const char *a = json_string_value(json_object_get(j, "action"));
            const char *in = json_string_value(json_object_get(j, "instance"));
            json_t *p = json_object_get(j, "partition");
            snprintf(note.topic, sizeof(note.topic), "%s", t ? t : "");
            snprintf(note.action, sizeof(note.action), "%s", a ? a : "");
            snprintf(note.instance, sizeof(note.instance), "%s", in ? in : "");
            if (json_is_integer(p))
                note.partition = (int32_t)json_integer_value(p);
            fn(arg, &note);
            count++;
        }
        json_decref(j);
        PQfreemem(nt);
    }
    return count;
}
