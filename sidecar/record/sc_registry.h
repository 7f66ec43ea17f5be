/*
 * sc_registry - a Confluent-compatible Schema Registry client with a cache
 * of schemas by id (docs/schema-registry.md).
 *
 * A schema id names one schema forever, so a schema fetched once is kept
 * for the life of the process: a replay decodes with the very schema the
 * first delivery used (I1).  At most one request per id is in flight; other
 * threads asking for that id wait for its answer.  A failed or 404 answer
 * is remembered for a second, so many partitions asking at once cost one
 * request.
 *
 * One struct sc_registry per configuration block (the top level's, or a
 * pipeline's own), shared by the workers that use it: sc_registry_acquire()
 * finds or creates it, sc_registry_release() drops it with the last user.
 *
 * Secrets (password, token, a password in a URL) are never logged and never
 * put into an error message.
 *
 * @locality any thread.
 */
#ifndef SC_REGISTRY_H
#define SC_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "config/sc_config.h"
#include "record/sc_avro.h"

enum sc_reg_status {
    SC_REG_OK,          /* *out is the schema (valid until the registry is released) */
    SC_REG_UNAVAILABLE, /* transient: no usable answer (connection, timeout, 5xx, 401, garbage) */
    SC_REG_NOT_FOUND,   /* the registry does not know the id (404); *missing_ms says how long */
    SC_REG_UNUSABLE,    /* the id's schema cannot decode records (not Avro, invalid, ...) */
};

struct sc_registry;

/* The registry for conf (shared; created on first use).  NULL with err if it cannot be. */
struct sc_registry *sc_registry_acquire(const struct sc_registry_conf *conf, char *err,
                                        size_t errsize);
void sc_registry_release(struct sc_registry *r);

/*
 * The Avro schema with this id.  On SC_REG_NOT_FOUND, *missing_ms is how
 * long the registry has been answering 404 for it (0 the first time).  On
 * anything but SC_REG_OK, err says what happened.
 */
enum sc_reg_status sc_registry_avro(struct sc_registry *r, uint32_t id,
                                    const struct sc_avro_schema **out, int64_t *missing_ms,
                                    char *err, size_t errsize);

/* The base URLs of conf as one printable string with passwords masked (malloc'd). */
char *sc_registry_display_url(const struct sc_registry_conf *conf);

/*
 * Whether the registry answers, with our credentials (`check-config
 * --online`): GET /subjects on each URL.  0 when one answered 200, else -1
 * with err.
 */
int sc_registry_ping(const struct sc_registry_conf *conf, char *err, size_t errsize);

#endif
