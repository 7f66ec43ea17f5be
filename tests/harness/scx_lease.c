/*
 * scx_lease.c - lease-assignment fixtures (see scx_lease.h).
 */
#include "scx_lease.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hx.h"

int scx_leases_of(PGconn *conn, const char *pipeline, const char *owner)
{
    const char *params[] = {pipeline, owner};
    return (int)hx_pg_int(conn,
                          "SELECT count(*) FROM sidecar.leases WHERE pipeline = $1"
                          " AND ($2::text IS NULL OR owner = $2) AND expires_at > now()",
                          2, params);
}

char *scx_owner_map(PGconn *conn, const char *pipeline)
{
    const char *params[] = {pipeline};
    char *m = hx_pg_value(conn,
                          "SELECT coalesce(string_agg(format('%s[%s]=%s', topic, partition, owner),"
                          " ' ' ORDER BY topic, partition), '')"
                          " FROM sidecar.leases WHERE pipeline = $1 AND expires_at > now()",
                          1, params);
    return m ? m : strdup("");
}

/* One look: balanced over instances, nothing under way. */
static bool balanced_now(PGconn *conn, const char *pipeline, const char *const *instances, size_t n,
                         int nparts)
{
    if (scx_leases_of(conn, pipeline, NULL) != nparts)
        return false;
    const char *params[] = {pipeline};
    if (hx_pg_int(conn,
                  "SELECT count(*) FROM sidecar.leases WHERE pipeline = $1"
                  " AND handoff_to IS NOT NULL",
                  1, params) != 0)
        return false;
    int lo = nparts / (int)n, hi = (nparts + (int)n - 1) / (int)n, sum = 0;
    for (size_t i = 0; i < n; i++) {
        int c = scx_leases_of(conn, pipeline, instances[i]);
        if (c < lo || c > hi)
            return false;
        sum += c;
    }
    return sum == nparts;
}

/*
 * Waits until each of the n instances has renewed its registration (lease_tick(), which
 * returns the view it plans on) in a transaction that started after now.  Each plans and
 * acts on that view before its next tick.  Returns false at end (a hx_now_ms() time).
 */
static bool all_ticked_since_now(PGconn *conn, const char *pipeline, const char *const *instances,
                                 size_t n, int64_t end)
{
    char *since = hx_pg_value(conn, "SELECT clock_timestamp()::text", 0, NULL);
    bool all = false;
    while (!all && hx_now_ms() < end) {
        all = true;
        for (size_t i = 0; i < n && all; i++) {
            const char *params[] = {pipeline, instances[i], since};
            all = hx_pg_int(conn,
                            "SELECT count(*) FROM sidecar.instances WHERE pipeline = $1"
                            " AND instance_id = $2 AND renewed_at > $3::timestamptz",
                            3, params) == 1;
        }
        if (!all)
            usleep(50 * 1000);
    }
    free(since);
    return all;
}

bool scx_wait_balanced(PGconn *conn, const char *pipeline, const char *const *instances, size_t n,
                       int nparts, int timeout_ms)
{
    int64_t end = hx_now_ms() + timeout_ms;
    while (hx_now_ms() < end) {
        if (balanced_now(conn, pipeline, instances, n, nparts)) {
            /* At rest: every instance has planned on this view (a tick after it) and acted
             * on its plan (a second tick after that), and nothing changed. */
            char *before = scx_owner_map(conn, pipeline);
            bool ticked = all_ticked_since_now(conn, pipeline, instances, n, end) &&
                          all_ticked_since_now(conn, pipeline, instances, n, end);
            char *after = scx_owner_map(conn, pipeline);
            bool same = strcmp(before, after) == 0;
            free(before);
            free(after);
            if (ticked && same && balanced_now(conn, pipeline, instances, n, nparts))
                return true;
        }
        usleep(100 * 1000);
    }
    return false;
}
