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

bool scx_wait_balanced(PGconn *conn, const char *pipeline, const char *const *instances, size_t n,
                       int nparts, int timeout_ms)
{
    int64_t end = hx_now_ms() + timeout_ms;
    while (hx_now_ms() < end) {
        if (balanced_now(conn, pipeline, instances, n, nparts)) {
            char *before = scx_owner_map(conn, pipeline);
            usleep(1500 * 1000);
            char *after = scx_owner_map(conn, pipeline);
            bool same = strcmp(before, after) == 0;
            free(before);
            free(after);
            if (same && balanced_now(conn, pipeline, instances, n, nparts))
                return true;
        }
        usleep(100 * 1000);
    }
    return false;
}
