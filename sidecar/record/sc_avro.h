/*
 * sc_avro - one Avro binary datum to deterministic JSON, with avro-c
 * (Debian's libavro) parsing the schema and decoding the bytes.
 *
 * The JSON form (docs/schema-registry.md has the full table): records are
 * objects with their fields in schema order; arrays and maps are arrays and
 * objects (map keys in encoded order); a union is its value alone, with no
 * branch name; enums are their symbol; bytes and fixed are base64 strings
 * (RFC 4648, padded); float and double are the shortest decimal that reads
 * back as the same number, NaN and infinities the strings "NaN",
 * "Infinity", "-Infinity".  Logical types: decimal is a string holding the
 * exact decimal number ("-12.30"), date "YYYY-MM-DD", time-millis /
 * time-micros "HH:MM:SS.fff" / "HH:MM:SS.ffffff", timestamp-millis /
 * timestamp-micros ISO 8601 in UTC with a "Z", local-timestamp-* the same
 * without it, uuid its string, duration {"months":M,"days":D,"millis":S};
 * a date or time outside the years 0000-9999 (or the day) stays a number.
 * A logical type on the wrong underlying type is ignored, as the Avro
 * specification asks.
 *
 * The output is a pure function of the schema text and the bytes (I1).
 *
 * avro-c trusts its input: its reader recurses once per nesting level,
 * allocates what a length prefix claims, and loops over claimed array
 * counts.  So every datum is first checked by a bounded scan against the
 * schema (lengths within the datum, nesting at most SC_AVRO_MAX_DEPTH,
 * items of zero-width types at most SC_AVRO_MAX_ITEMS, union and enum
 * indexes in range, every byte consumed); only a datum that passes reaches
 * avro-c.
 *
 * @locality a compiled schema is immutable and may be shared by threads.
 */
#ifndef SC_AVRO_H
#define SC_AVRO_H

#include <stddef.h>

#include "base/sc_util.h"

#define SC_AVRO_MAX_DEPTH 128     /* nested records, arrays, maps and unions */
#define SC_AVRO_MAX_ITEMS 1000000 /* items of a type that encodes to zero bytes, per datum */

struct sc_avro_schema;

/*
 * Compiles the schema in json[0..len) (the registry's "schema" text).
 * NULL with a message in err when it is not a valid Avro schema.
 */
struct sc_avro_schema *sc_avro_schema_new(const char *json, size_t len, char *err, size_t errsize);
void sc_avro_schema_free(struct sc_avro_schema *s);

/*
 * Decodes the datum p[0..len) (all of it) and appends its JSON form to out.
 * 0; -1 when the bytes are not a datum of the schema (err says why); -2
 * when out would exceed its maximum (out is then as it was).
 */
int sc_avro_to_json(const struct sc_avro_schema *s, const void *p, size_t len, struct sc_buf *out,
                    char *err, size_t errsize) __attribute__((warn_unused_result));

#endif
