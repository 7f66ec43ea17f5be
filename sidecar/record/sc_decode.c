/*
 * sc_decode.c - the Confluent wire format (see sc_decode.h).
 */
#include "record/sc_decode.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "record/sc_avro.h"
#include "record/sc_envelope.h"

int sc_frame_parse(const void *p, size_t len, uint32_t *id, const void **payload, size_t *plen,
                   char *err, size_t errsize)
{
    const unsigned char *b = p;
    if (len < SC_FRAME_HEADER) {
        snprintf(err, errsize,
                 "not in the Confluent wire format: %zu bytes, shorter than the 5-byte header "
                 "(magic byte 0, schema id)",
                 len);
        return -1;
    }
    if (b[0] != 0) {
        snprintf(err, errsize,
                 "not in the Confluent wire format: the first byte is 0x%02x, not the magic "
                 "byte 0x00",
                 b[0]);
        return -1;
    }
    *id = (uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 8 | b[4];
    *payload = b + SC_FRAME_HEADER;
    *plen = len - SC_FRAME_HEADER;
    return 0;
}

enum sc_decode_status sc_decode_append(struct sc_registry *reg, enum sc_value_format fmt,
                                       const void *p, size_t len, struct sc_buf *out, uint32_t *id,
                                       int64_t *missing_ms, char *err, size_t errsize)
{
    const void *payload;
    size_t plen;
    *missing_ms = 0;
    if (sc_frame_parse(p, len, id, &payload, &plen, err, errsize) < 0)
        return SC_DECODE_BAD;
    if (fmt == SC_VALUE_JSON_SCHEMA) {
        size_t mark = out->len;
        int rc = sc_json_minify_append(out, payload, plen);
        if (rc == 1)
            return SC_DECODE_OK;
        out->len = mark;
        snprintf(err, errsize,
                 rc == 0 ? "schema id %" PRIu32 ": the payload after the 5-byte header is not "
                           "one valid JSON text"
                         : "schema id %" PRIu32 ": the JSON payload is too large",
                 *id);
        return SC_DECODE_BAD;
    }
    const struct sc_avro_schema *schema = NULL;
    char why[512];
    switch (sc_registry_avro(reg, *id, &schema, missing_ms, why, sizeof(why))) {
    case SC_REG_OK:
        break;
    case SC_REG_UNAVAILABLE:
        snprintf(err, errsize, "%s", why);
        return SC_DECODE_UNAVAILABLE;
    case SC_REG_NOT_FOUND:
        snprintf(err, errsize, "%s", why);
        return SC_DECODE_NOT_FOUND;
    case SC_REG_UNUSABLE:
        snprintf(err, errsize, "%s", why);
        return SC_DECODE_BAD;
    }
    int rc = sc_avro_to_json(schema, payload, plen, out, why, sizeof(why));
    if (rc == 0)
        return SC_DECODE_OK;
    if (rc == -2)
        snprintf(err, errsize, "schema id %" PRIu32 ": the decoded value is too large", *id);
    else
        snprintf(err, errsize, "schema id %" PRIu32 ": not an Avro datum of this schema: %s", *id,
                 why);
    return SC_DECODE_BAD;
}

/* Decodes one framed field into a malloc'd NUL-terminated copy. */
static enum sc_decode_status decode_copy(struct sc_registry *reg, enum sc_value_format fmt,
                                         const void *p, size_t len, const char **json,
                                         size_t *json_len, char *err, size_t errsize)
{
    struct sc_buf b;
    sc_buf_init(&b, 64 * 1024 * 1024);
    uint32_t id;
    int64_t missing;
    enum sc_decode_status st = sc_decode_append(reg, fmt, p, len, &b, &id, &missing, err, errsize);
    if (st == SC_DECODE_OK && sc_buf_putc(&b, '\0') == 0) {
        *json = b.data;
        *json_len = b.len - 1;
        return SC_DECODE_OK;
    }
    if (st == SC_DECODE_OK) {
        snprintf(err, errsize, "schema id %" PRIu32 ": the decoded value is too large", id);
        st = SC_DECODE_BAD;
    }
    sc_buf_free(&b);
    return st;
}

enum sc_decode_status sc_decode_record(struct sc_registry *reg, const struct sc_formats *f,
                                       struct sc_record *r, char *err, size_t errsize)
{
    r->key_json = r->value_json = NULL;
    r->key_json_len = r->value_json_len = 0;
    enum sc_decode_status st = SC_DECODE_OK;
    if (sc_format_is_framed(f->key) && r->key)
        st = decode_copy(reg, f->key, r->key, r->key_len, &r->key_json, &r->key_json_len, err,
                         errsize);
    if (st == SC_DECODE_OK && sc_format_is_framed(f->value) && r->value)
        st = decode_copy(reg, f->value, r->value, r->value_len, &r->value_json, &r->value_json_len,
                         err, errsize);
    if (st != SC_DECODE_OK)
        sc_decode_record_free(r);
    return st;
}

void sc_decode_record_free(struct sc_record *r)
{
    free((char *)r->key_json);
    free((char *)r->value_json);
    r->key_json = r->value_json = NULL;
    r->key_json_len = r->value_json_len = 0;
}
