/*
 * scx_lease - fixtures for tests of lease-coordinated assignment
 * ("assignment": "lease"): who holds which lease, and waiting until the
 * instances are balanced and at rest.
 */
#ifndef SCX_LEASE_H
#define SCX_LEASE_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

/* Live leases of pipeline held by owner (NULL: by anyone). */
int scx_leases_of(PGconn *conn, const char *pipeline, const char *owner);

/* "topic[p]=owner ..." for every live lease of pipeline, in order (malloc'd). */
char *scx_owner_map(PGconn *conn, const char *pipeline);

/*
 * Waits until all nparts partitions of pipeline are leased, only by the
 * given instances, each holding floor or ceil of nparts/n, with no handoff
 * under way, and the same after every one of the instances has ticked
 * twice since (at rest: each planned on that view and acted on its plan).
 * Returns whether that happened within timeout_ms.
 */
bool scx_wait_balanced(PGconn *conn, const char *pipeline, const char *const *instances, size_t n,
                       int nparts, int timeout_ms);

#endif
