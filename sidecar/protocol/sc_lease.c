/*
 * sc_lease.c - per-partition leases with epoch fencing (see sc_lease.h).
 *
 * Concurrency: two instances acquiring the same lease race on the leases
 * primary key; INSERT ... ON CONFLICT DO UPDATE locks the existing row and
 * evaluates the takeover condition against its latest committed version,
 * so exactly one of them bumps the epoch; the other sees the winner's live
 * lease and waits.  The checkpoint row is locked after the lease row, as in
 * every other statement that touches both.
 */
#include "protocol/sc_lease.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_log.h"

/* NOTIFY of the lease events in CTE "e" on channel ch (NULL: coalesced mode). */
#define NOTIFY_LEASE(ch)                                                                   \
    " n AS (SELECT pg_notify(" ch "::text, json_build_object('id', max(e.id), 'pipeline'," \
    " $1::text)::text) FROM e HAVING " ch "::text IS NOT NULL AND count(*) > 0)"

/*
 * $1 pipeline, $2 topics, $3 partitions, $4 owner, $5 ttl ms, $6 notify channel.
 * The new epoch is above both the lease's and the checkpoint's last epoch,
 * so deleting lease rows or resetting a checkpoint never lets an epoch repeat.
 */
static const struct sc_stmt st_acquire = {
    "sc_lease_acquire",
    "WITH req AS ("
    " SELECT r.topic, r.partition FROM unnest($2::text[], $3::int[]) AS r(topic, partition)),"
    " got AS ("
    " INSERT INTO {S}.leases AS l (pipeline, topic, partition, owner, epoch, acquired_at,"
    "  renewed_at, expires_at)"
    " SELECT $1, req.topic, req.partition, $4,"
    "  coalesce((SELECT c.epoch FROM {S}.checkpoints c WHERE c.pipeline = $1"
    "   AND c.topic = req.topic AND c.partition = req.partition), 0) + 1,"
    "  now(), now(), now() + make_interval(secs => $5::bigint / 1000.0) FROM req"
    " ON CONFLICT (pipeline, topic, partition) DO UPDATE"
    "  SET owner = EXCLUDED.owner, acquired_at = now(), renewed_at = now(),"
    "   expires_at = EXCLUDED.expires_at,"
    "   epoch = greatest(l.epoch, EXCLUDED.epoch - 1) + 1"
    "  WHERE l.expires_at IS NULL OR l.expires_at <= now() OR l.owner = EXCLUDED.owner"
    " RETURNING l.topic, l.partition, l.epoch),"
    " cp AS ("
    " INSERT INTO {S}.checkpoints AS c (pipeline, topic, partition, epoch)"
    " SELECT $1, got.topic, got.partition, got.epoch FROM got"
    " ON CONFLICT (pipeline, topic, partition) DO UPDATE SET epoch = EXCLUDED.epoch,"
    "  updated_at = now()"
    " RETURNING c.topic, c.partition, c.epoch, c.committed_offset, c.committed_write_offset,"
    "  c.pending_first_offset, c.pending_last_offset, c.pending_count, c.pending_checksum,"
    "  c.pending_write_offset, c.state, c.error, c.paused, c.control_seq),"
    " e AS ("
    " INSERT INTO {S}.events (pipeline, topic, partition, kind, epoch, owner, first_offset,"
    "  last_offset, write_offset, detail)"
    " SELECT $1, cp.topic, cp.partition, 'lease', cp.epoch, $4, cp.committed_offset, NULL,"
    "  cp.committed_write_offset, jsonb_build_object('action', 'acquire',"
    "   'pending', cp.pending_first_offset IS NOT NULL) FROM cp RETURNING id)," NOTIFY_LEASE(
        "$6") " SELECT true, cp.topic, cp.partition, cp.epoch, cp.committed_offset,"
              "  cp.committed_write_offset, cp.pending_first_offset, cp.pending_last_offset,"
              "  cp.pending_count, cp.pending_checksum, cp.pending_write_offset, cp.state, "
              "cp.error,"
              "  cp.paused, cp.control_seq, NULL::text, NULL::bigint"
              " FROM cp, (SELECT count(*) FROM n) AS _n"
              " UNION ALL"
              " SELECT false, req.topic, req.partition, l.epoch, NULL, NULL, NULL, NULL, NULL, "
              "NULL, NULL,"
              "  NULL, NULL, NULL, NULL, l.owner,"
              "  (extract(epoch FROM (l.expires_at - now())) * 1000)::bigint"
              " FROM req JOIN {S}.leases l ON l.pipeline = $1 AND l.topic = req.topic"
              "  AND l.partition = req.partition"
              " WHERE NOT EXISTS (SELECT 1 FROM got WHERE got.topic = req.topic"
              "  AND got.partition = req.partition)",
    6,
};

/* $1 pipeline, $2 topics, $3 partitions, $4 epochs, $5 owner, $6 ttl ms. */
static const struct sc_stmt st_renew = {
    "sc_lease_renew",
    "UPDATE {S}.leases l SET renewed_at = now(),"
    " expires_at = now() + make_interval(secs => $6::bigint / 1000.0)"
    " FROM unnest($2::text[], $3::int[], $4::bigint[]) AS r(topic, partition, epoch),"
    "  {S}.checkpoints c"
    " WHERE l.pipeline = $1 AND l.topic = r.topic AND l.partition = r.partition"
    "  AND l.epoch = r.epoch AND l.owner = $5"
    "  AND c.pipeline = l.pipeline AND c.topic = l.topic AND c.partition = l.partition"
    " RETURNING l.topic, l.partition, c.control_seq",
    6,
};

/* $1 pipeline, $2 topics, $3 partitions, $4 epochs, $5 owner, $6 reason, $7 notify channel. */
static const struct sc_stmt st_release = {
    "sc_lease_release",
    "WITH l AS ("
    " UPDATE {S}.leases l SET expires_at = now(), renewed_at = now()"
    " FROM unnest($2::text[], $3::int[], $4::bigint[]) AS r(topic, partition, epoch)"
    " WHERE l.pipeline = $1 AND l.topic = r.topic AND l.partition = r.partition"
    "  AND l.epoch = r.epoch AND l.owner = $5"
    " RETURNING l.topic, l.partition, l.epoch)"
    " , e AS (INSERT INTO {S}.events (pipeline, topic, partition, kind, epoch, owner, detail)"
    " SELECT $1, l.topic, l.partition, 'lease', l.epoch, $5,"
    "  jsonb_build_object('action', 'release', 'reason', $6::text) FROM l RETURNING "
    "id)," NOTIFY_LEASE("$7") " SELECT count(*) FROM n",
    7,
};

int sc_pg_array_str(struct sc_buf *b, const char *const *items, size_t n)
{
    if (sc_buf_putc(b, '{') < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if ((i && sc_buf_putc(b, ',') < 0) || sc_buf_putc(b, '"') < 0)
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
    int64_t *p64 = sc_xcalloc(n, sizeof(*p64));
    for (size_t i = 0; i < n; i++)
        p64[i] = parts[i];
    (void)!sc_pg_array_str(&a->topics, topics, n);
    (void)!sc_pg_array_i64(&a->partitions, p64, n);
    if (epochs)
        (void)!sc_pg_array_i64(&a->epochs, epochs, n);
    free(p64);
}

static void arrays_free(struct arrays *a)
{
    sc_buf_free(&a->topics);
    sc_buf_free(&a->partitions);
    sc_buf_free(&a->epochs);
}

int sc_lease_acquire(struct sc_db *db, const char *pipeline, const char *owner, int ttl_ms,
                     const char *notify_channel, struct sc_lease_req *reqs, size_t n,
                     bool *unavailable)
{
    *unavailable = false;
    const char **topics = sc_xcalloc(n, sizeof(*topics));
    int32_t *parts = sc_xcalloc(n, sizeof(*parts));
    for (size_t i = 0; i < n; i++) {
        topics[i] = reqs[i].topic;
        parts[i] = reqs[i].partition;
        reqs[i].acquired = false;
        reqs[i].holder[0] = '\0';
        reqs[i].holder_ms = 0;
        reqs[i].epoch = 0;
    }
    struct arrays a;
    arrays_build(&a, topics, parts, NULL, n);
    char ttl[24];
    const char *params[] = {pipeline, a.topics.data,       a.partitions.data,
                            owner,    sc_i64(ttl, ttl_ms), notify_channel};
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
        int32_t partition = (int32_t)strtol(PQgetvalue(res, row, 2), NULL, 10);
        for (size_t i = 0; i < n; i++) {
            struct sc_lease_req *r = &reqs[i];
            if (r->partition != partition || strcmp(r->topic, topic) != 0)
                continue;
            r->acquired = PQgetvalue(res, row, 0)[0] == 't';
            r->epoch = strtoll(PQgetvalue(res, row, 3), NULL, 10);
            if (r->acquired) {
                sc_checkpoint_parse_row(res, row, 3, &r->cp);
            } else {
                snprintf(r->holder, sizeof(r->holder), "%s", PQgetvalue(res, row, 15));
                r->holder_ms = strtoll(PQgetvalue(res, row, 16), NULL, 10);
            }
        }
    }
    PQclear(res);
    return 0;
}

static int run_held(struct sc_db *db, const struct sc_stmt *st, const char *pipeline,
                    const char *owner, const char *last, const char *extra,
                    const struct sc_lease_held *held, size_t n, PGresult **out)
{
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
    const char *params[] = {pipeline, a.topics.data, a.partitions.data, a.epochs.data, owner,
                            last,     extra};
    enum sc_pg_errclass cls;
    *out = sc_db_exec(db, st, params, &cls);
    arrays_free(&a);
    free(topics);
    free(parts);
    free(epochs);
    return *out ? 0 : -1;
}

int sc_lease_renew(struct sc_db *db, const char *pipeline, const char *owner, int ttl_ms,
                   struct sc_lease_held *held, size_t n)
{
    if (n == 0)
        return 0;
    char ttl[24];
    PGresult *res;
    if (run_held(db, &st_renew, pipeline, owner, sc_i64(ttl, ttl_ms), NULL, held, n, &res) != 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        held[i].ok = false;
    for (int row = 0; row < PQntuples(res); row++) {
        const char *topic = PQgetvalue(res, row, 0);
        int32_t partition = (int32_t)strtol(PQgetvalue(res, row, 1), NULL, 10);
        for (size_t i = 0; i < n; i++)
            if (held[i].partition == partition && strcmp(held[i].topic, topic) == 0) {
                held[i].ok = true;
                held[i].control_seq = strtoll(PQgetvalue(res, row, 2), NULL, 10);
            }
    }
    PQclear(res);
    return 0;
}

int sc_lease_release(struct sc_db *db, const char *pipeline, const char *owner,
                     const char *notify_channel, const struct sc_lease_held *held, size_t n,
                     const char *reason)
{
    if (n == 0)
        return 0;
    PGresult *res;
    if (run_held(db, &st_release, pipeline, owner, reason, notify_channel, held, n, &res) != 0)
        return -1;
    PQclear(res);
    return 0;
}
