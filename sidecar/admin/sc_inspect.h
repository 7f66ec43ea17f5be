/*
 * sc_inspect - reading and changing checkpoints for people: `sidecar
 * status`, `sidecar reset`, and the queries behind GET /v1/status and
 * GET /v1/checkpoints (keyset pages with opaque page tokens).
 *
 * @locality any thread; a PGconn is used by one thread at a time.
 */
#ifndef SC_INSPECT_H
#define SC_INSPECT_H

#include <stddef.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "db/sc_pg.h" /* enum sc_read_rc */

/*
 * Every row of <schema>.partition_status as a JSON array of objects
 * (pending_age as seconds in "pending_age_seconds").  *out is set on
 * SC_READ_OK; otherwise err says why.
 */
int sc_inspect_status(PGconn *conn, const char *schema_q, json_t **out, char *err, size_t errsize);

/*
 * The live (or drained) instances of every pipeline, from <schema>.instance_status, as a
 * JSON array of objects (mode, partitions held, fair share, host).
 */
int sc_inspect_instances(PGconn *conn, const char *schema_q, json_t **out, char *err,
                         size_t errsize);

/*
 * One page of <schema>.checkpoints in (pipeline, topic, partition) order,
 * after page_token (NULL = from the start): *out = {"checkpoints": [...],
 * "next_page_token": "..." or null on the last page}.  limit 1..1000.
 */
int sc_inspect_checkpoints_page(PGconn *conn, const char *schema_q, const char *page_token,
                                int limit, json_t **out, char *err, size_t errsize);

#endif
