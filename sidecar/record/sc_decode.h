/*
 * sc_decode - keys and values in the Confluent wire format (value_format /
 * key_format "avro" and "json_schema") turned into the JSON the envelope
 * embeds (docs/schema-registry.md).
 *
 * The framing: one 0x00 byte, the schema id as 4 bytes big-endian, then
 * the payload: an Avro binary datum of that schema, or a JSON text.
 *
 * The outcome of decoding is a function of the bytes and of the schema the
 * id names, which never changes; so a record that fails once fails every
 * time (a dead letter), and a record that decodes gives the same JSON every
 * time (I1).  Only the registry's availability is transient.
 *
 * @locality any thread (the registry is shared and locks itself).
 */
#ifndef SC_DECODE_H
#define SC_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "base/sc_util.h"
#include "config/sc_config.h"
#include "record/sc_envelope.h"
#include "record/sc_registry.h"

#define SC_FRAME_HEADER 5 /* magic byte + schema id */

enum sc_decode_status {
    SC_DECODE_OK,          /* the JSON was appended to out */
    SC_DECODE_BAD,         /* the record is not in the format: a dead letter (err says why) */
    SC_DECODE_UNAVAILABLE, /* the registry could not answer: try the batch again later */
    SC_DECODE_NOT_FOUND,   /* the registry does not know the id (yet): *missing_ms how long */
};

/* Splits a framed key or value: 0, or -1 with err (wrong magic byte, too short). */
int sc_frame_parse(const void *p, size_t len, uint32_t *id, const void **payload, size_t *plen,
                   char *err, size_t errsize);

/*
 * Appends the JSON form of the framed bytes p[0..len) under fmt (AVRO or
 * JSON_SCHEMA) to out.  reg is needed for AVRO only.  *id gets the schema
 * id when the framing is valid.  On SC_DECODE_BAD out is as it was, and a
 * value larger than out allows is BAD too.
 */
enum sc_decode_status sc_decode_append(struct sc_registry *reg, enum sc_value_format fmt,
                                       const void *p, size_t len, struct sc_buf *out, uint32_t *id,
                                       int64_t *missing_ms, char *err, size_t errsize);

/*
 * Decodes r's framed key and value under f (outside the delivery path:
 * `sidecar redrive`) and points r->key_json / value_json at malloc'd
 * copies; free them with sc_decode_record_free().  SC_DECODE_NOT_FOUND
 * and SC_DECODE_UNAVAILABLE leave nothing to free.
 */
enum sc_decode_status sc_decode_record(struct sc_registry *reg, const struct sc_formats *f,
                                       struct sc_record *r, char *err, size_t errsize);
void sc_decode_record_free(struct sc_record *r);

#endif
