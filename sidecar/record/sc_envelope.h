/*
 * sc_envelope - the record envelope (docs/sinks.md): the one JSON form every
 * sink writes for a record, byte-for-byte deterministic (invariant I1).
 *
 *   {"topic":"orders","partition":3,"offset":1234,"timestamp":1732240000000,
 *    "key":"k1","value":{"id":7},"headers":{"trace":"abc"}}
 *
 * Key order and escaping are fixed.  A value that is valid JSON is embedded
 * verbatim with only insignificant whitespace removed (numbers keep their
 * exact text, key order and duplicate keys stay as sent); otherwise a JSON
 * string when it is valid UTF-8; otherwise {"base64":"..."}.  Keys follow
 * the same rule without the JSON step.  Null key/value -> null.  Headers
 * become an object of strings (binary values as {"base64":...}, null values
 * as null); a header name that repeats becomes an array of its values in
 * record order, so nothing is lost.  A missing timestamp is null.
 *
 * value_format / key_format avro and json_schema (docs/schema-registry.md):
 * the worker decodes such a value or key before any sink sees the record
 * (record/sc_decode.h) and sets value_json / key_json; the envelope embeds
 * that JSON verbatim.  Not decoded (only a dead letter's envelope, whose
 * record could not be decoded) -> {"base64": ...} of the raw bytes.
 *
 * @locality any thread; no shared state.
 */
#ifndef SC_ENVELOPE_H
#define SC_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/sc_util.h"
#include "config/sc_config.h"

struct sc_header {
    const char *name;
    const void *value; /* NULL = null value */
    size_t len;
};

/* A read-only view of one Kafka record (points into librdkafka's message). */
struct sc_record {
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp; /* ms since the epoch; < 0 = none */
    const void *key;   /* NULL = null key */
    size_t key_len;
    const void *value; /* NULL = null value (tombstone) */
    size_t value_len;
    const struct sc_header *headers;
    size_t nheaders;
    /* Decoded forms (framed formats only, see above): valid minified JSON, or NULL. */
    const char *key_json;
    size_t key_json_len;
    const char *value_json;
    size_t value_json_len;
};

/* Appends r's envelope (no trailing newline) to out; -1 if out would exceed its maximum. */
int sc_envelope_append(struct sc_buf *out, const struct sc_record *r, const struct sc_formats *f)
    __attribute__((warn_unused_result));

/* The envelope's "value" member alone for r under vf (decoded JSON included). */
int sc_envelope_append_record_value(struct sc_buf *out, const struct sc_record *r,
                                    enum sc_value_format vf) __attribute__((warn_unused_result));
/* The envelope's "key" member alone for r under kf (decoded JSON included). */
int sc_envelope_append_record_key(struct sc_buf *out, const struct sc_record *r,
                                  enum sc_value_format kf) __attribute__((warn_unused_result));

/* Appends the JSON form of raw value bytes under the rules above (framed formats: base64). */
int sc_envelope_append_value(struct sc_buf *out, const void *p, size_t len, enum sc_value_format vf)
    __attribute__((warn_unused_result));

/* Appends the JSON form of a key (string if UTF-8, else {"base64":..}; base64 forces). */
int sc_envelope_append_key(struct sc_buf *out, const void *p, size_t len, enum sc_value_format vf)
    __attribute__((warn_unused_result));

/* Appends the "headers" member alone: an object of strings under the rules above. */
int sc_envelope_append_headers(struct sc_buf *out, const struct sc_header *hs, size_t n)
    __attribute__((warn_unused_result));

/*
 * If in[0..len) is one valid JSON text (RFC 8259, UTF-8), appends it with
 * insignificant whitespace removed and returns 1; returns 0 (out unchanged)
 * if it is not JSON, -1 if out is full.  Nesting deeper than 1000 counts as
 * not JSON.
 */
int sc_json_minify_append(struct sc_buf *out, const char *in, size_t len);

/*
 * PostgreSQL's jsonb refuses some valid JSON: the escape \u0000 (its text
 * cannot hold NUL) and unpaired UTF-16 surrogate escapes.  Returns a
 * malloc'd copy of the JSON text s with each of them replaced by \ufffd, or
 * NULL when s has none (use s as it is).
 */
char *sc_json_jsonb_safe(const char *s);

/* Is s[0..len) valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF)? */
bool sc_utf8_valid(const char *s, size_t len);

/* Appends s as a JSON string literal (with quotes); s must be valid UTF-8. */
int sc_json_string_append(struct sc_buf *out, const char *s, size_t len)
    __attribute__((warn_unused_result));

/*
 * Folds r into a running CRC-32 over a canonical binary encoding of
 * (offset, timestamp, key, value, headers): independent of value_format and
 * sink, so a replay can verify it reads the very records that were pended.
 */
uint32_t sc_record_checksum(uint32_t crc, const struct sc_record *r);

/*
 * CRC-32 (the zlib / gzip one, "CRC-32/ISO-HDLC") of len bytes at p,
 * continuing crc (0 to start).  Checksums are stored in PostgreSQL with
 * pending batches, so this function can never change.  libdeflate's, which
 * uses the CPU's carry-less multiply where there is one (about 10x zlib's).
 */
uint32_t sc_crc32(uint32_t crc, const void *p, size_t len);

/*
 * That encoding as bytes, the record's "checksum image": offset, timestamp,
 * key length, key, value length, value, header count, then each header's
 * name length, name, value length, value; every number 8 bytes little-endian,
 * a NULL key / value / header value as length -1 with no bytes.  Since
 * CRC-32 streams, sc_crc32(crc, image) == sc_record_checksum(crc, r), and the
 * images of consecutive records checksum in one pass (the worker buffers
 * records in this form: see sc_worker.c).
 */
size_t sc_record_image_size(const struct sc_record *r);
/* Writes the image of r to out, which has room for sc_record_image_size(r) bytes. */
void sc_record_image_write(char *out, const struct sc_record *r);

#endif
