/*
 * sc_deadletter - dead letters as records again: `sidecar redrive`
 * (cli/cmd_redrive.c) re-sends the records in <schema>.dead_letters through
 * the pipeline's sink and marks the delivered ones status = 'redriven'.
 *
 * A row keeps the raw key and value (bytea) and the envelope (jsonb) the
 * sink was given; a record is rebuilt from the raw bytes plus the envelope's
 * timestamp and headers, so the sink serialises it exactly as before except
 * for the order of distinct header names (jsonb does not keep object key
 * order).
 *
 * @locality the redrive command's one thread.
 */
#ifndef SC_DEADLETTER_H
#define SC_DEADLETTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "record/sc_envelope.h"

/* A record rebuilt from a dead_letters row; rec points into the other members. */
struct sc_dead_record {
    struct sc_record rec;
    char *topic;
    void *key;   /* NULL = null key */
    void *value; /* NULL = null value */
    struct sc_header *headers;
    size_t nheaders;
};

/*
 * Rebuilds a record: topic, partition and offset from the row, key and value
 * from the raw bytes (NULL = SQL NULL), timestamp and headers from the
 * envelope text (header values: strings, {"base64": ...}, null, or arrays of
 * those for a repeated name).  Returns 0, or -1 with err set when the
 * envelope is not the sidecar's.  Free with sc_dead_record_free().
 */
int sc_dead_record_build(struct sc_dead_record *out, const char *topic, int32_t partition,
                         int64_t offset, const char *envelope, const void *key, size_t key_len,
                         const void *value, size_t value_len, char *err, size_t errsize)
    __attribute__((warn_unused_result));
void sc_dead_record_free(struct sc_dead_record *r);

#endif
