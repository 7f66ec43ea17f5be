/*
 * fuzz_avro.c - records in the Confluent wire format from untrusted
 * producers: the Avro datum -> JSON path (record/sc_avro.c: the bounded
 * scan, avro-c's reader, the renderer) and the framing with its
 * json_schema payload (record/sc_decode.c).
 *
 * The first input byte picks the form:
 *
 *   bit 7 clear  the rest is an Avro datum of built-in schema (byte % count):
 *                the schemas of tests/harness/avro_encode.py's cases (every
 *                type and logical type, a recursive one) and two with
 *                arrays of zero-width and union items
 *   bit 7 set    the rest is a framed key or value for json_schema
 *
 * The schemas are fixed: they come from the operator's registry, the bytes
 * from anyone who can produce to the topic.
 *
 * Invariants: decoding returns 0 or -1 (never "out of room" with an
 * unbounded buffer); what it gives is one valid JSON text in valid UTF-8,
 * the same bytes on a second run (I1); with a bounded buffer it gives the
 * same text or leaves the buffer as it was; a framed input is accepted by
 * sc_frame_parse() exactly when it has five bytes starting with 0x00, and
 * json_schema gives the minified payload exactly when the payload is JSON.
 */
#include <string.h>

#include "fuzz.h"
#include "record/sc_avro.h"
#include "record/sc_decode.h"
#include "record/sc_envelope.h"

static const char *const schema_text[] = {
    "{\"type\": \"record\", \"name\": \"Primitives\", \"fields\": [{\"name\": \"n\", \"type\": "
    "\"null\"}, {\"name\": \"b\", \"type\": \"boolean\"}, {\"name\": \"i\", \"type\": \"int\"}, "
    "{\"name\": \"l\", \"type\": \"long\"}, {\"name\": \"f\", \"type\": \"float\"}, {\"name\": "
    "\"d\", \"type\": \"double\"}, {\"name\": \"by\", \"type\": \"bytes\"}, {\"name\": \"s\", "
    "\"type\": \"string\"}]}",
    "{\"type\": \"record\", \"name\": \"Outer\", \"namespace\": \"com.example\", \"fields\": "
    "[{\"name\": \"a\", \"type\": {\"type\": \"record\", \"name\": \"Inner\", \"fields\": "
    "[{\"name\": \"x\", \"type\": \"int\"}]}}, {\"name\": \"b\", \"type\": \"Inner\"}, {\"name\": "
    "\"c\", \"type\": \"com.example.Inner\"}]}",
    "{\"type\": \"record\", \"name\": \"Collections\", \"fields\": [{\"name\": \"arr\", \"type\": "
    "{\"type\": \"array\", \"items\": \"int\"}}, {\"name\": \"empty\", \"type\": {\"type\": "
    "\"array\", \"items\": \"string\"}}, {\"name\": \"m\", \"type\": {\"type\": \"map\", "
    "\"values\": \"string\"}}, {\"name\": \"nested\", \"type\": {\"type\": \"array\", \"items\": "
    "{\"type\": \"map\", \"values\": \"long\"}}}]}",
    "{\"type\": \"record\", \"name\": \"Unions\", \"fields\": [{\"name\": \"o1\", \"type\": "
    "[\"null\", \"string\"]}, {\"name\": \"o2\", \"type\": [\"null\", \"string\"], \"default\": "
    "null}, {\"name\": \"u\", \"type\": [\"null\", \"long\", \"string\"]}, {\"name\": \"r\", "
    "\"type\": [\"null\", {\"type\": \"record\", \"name\": \"R\", \"fields\": [{\"name\": \"z\", "
    "\"type\": \"boolean\"}]}]}]}",
    "{\"type\": \"enum\", \"name\": \"Color\", \"symbols\": [\"RED\", \"GREEN\", \"BLUE\"]}",
    "{\"type\": \"fixed\", \"name\": \"F4\", \"size\": 4}",
    "\"bytes\"",
    "\"string\"",
    "{\"type\": \"record\", \"name\": \"Logical\", \"fields\": [{\"name\": \"date\", \"type\": "
    "{\"type\": \"int\", \"logicalType\": \"date\"}}, {\"name\": \"tmillis\", \"type\": {\"type\": "
    "\"int\", \"logicalType\": \"time-millis\"}}, {\"name\": \"tmicros\", \"type\": {\"type\": "
    "\"long\", \"logicalType\": \"time-micros\"}}, {\"name\": \"tsmillis\", \"type\": {\"type\": "
    "\"long\", \"logicalType\": \"timestamp-millis\"}}, {\"name\": \"tsmicros\", \"type\": "
    "{\"type\": \"long\", \"logicalType\": \"timestamp-micros\"}}, {\"name\": \"before1970\", "
    "\"type\": {\"type\": \"long\", \"logicalType\": \"timestamp-millis\"}}, {\"name\": \"uuid\", "
    "\"type\": {\"type\": \"string\", \"logicalType\": \"uuid\"}}, {\"name\": \"dec\", \"type\": "
    "{\"type\": \"bytes\", \"logicalType\": \"decimal\", \"precision\": 10, \"scale\": 2}}, "
    "{\"name\": \"decfixed\", \"type\": {\"type\": \"fixed\", \"name\": \"D8\", \"size\": 8, "
    "\"logicalType\": \"decimal\", \"precision\": 18, \"scale\": 4}}, {\"name\": \"small\", "
    "\"type\": {\"type\": \"bytes\", \"logicalType\": \"decimal\", \"precision\": 5, \"scale\": "
    "5}}, {\"name\": \"unknown\", \"type\": {\"type\": \"string\", \"logicalType\": \"made-up\"}}, "
    "{\"name\": \"opt_ts\", \"type\": [\"null\", {\"type\": \"long\", \"logicalType\": "
    "\"timestamp-millis\"}]}]}",
    "{\"type\": \"record\", \"name\": \"Node\", \"fields\": [{\"name\": \"v\", \"type\": \"int\"}, "
    "{\"name\": \"next\", \"type\": [\"null\", \"Node\"]}]}",
    "{\"type\": \"record\", \"name\": \"Special\", \"fields\": [{\"name\": \"nan\", \"type\": "
    "\"double\"}, {\"name\": \"inf\", \"type\": \"double\"}, {\"name\": \"ninf\", \"type\": "
    "\"float\"}, {\"name\": \"neg0\", \"type\": \"double\"}, {\"name\": \"big\", \"type\": "
    "\"double\"}, {\"name\": \"third\", \"type\": \"float\"}]}",
    "{\"type\":\"array\",\"items\":\"null\"}",
    "{\"type\":\"map\",\"values\":{\"type\":\"array\",\"items\":[\"null\",\"double\"]}}",
};

#define NSCHEMAS (sizeof(schema_text) / sizeof(schema_text[0]))
static struct sc_avro_schema *schemas[NSCHEMAS];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    for (size_t i = 0; i < NSCHEMAS; i++) {
        char err[512];
        schemas[i] = sc_avro_schema_new(schema_text[i], strlen(schema_text[i]), err, sizeof(err));
        FUZZ_CHECK(schemas[i] != NULL, "built-in schema %zu: %s", i, err);
    }
    return 0;
}

/* One JSON text in UTF-8, by the envelope's RFC 8259 validator (jansson refuses numbers
 * beyond a double, which JSON allows and a json_schema payload may hold). */
static void check_json(const char *p, size_t n)
{
    FUZZ_CHECK(sc_utf8_valid(p, n), "output is not UTF-8");
    struct sc_buf b;
    sc_buf_init(&b, 0);
    int rc = sc_json_minify_append(&b, p, n);
    FUZZ_CHECK(rc == 1, "output is not JSON: %.*s", (int)(n > 200 ? 200 : n), p);
    FUZZ_CHECK(b.len == n && memcmp(b.data, p, n) == 0, "output is not minified");
    sc_buf_free(&b);
}

static void fuzz_datum(const struct sc_avro_schema *s, const uint8_t *p, size_t n)
{
    struct sc_buf a, b, small;
    sc_buf_init(&a, 0);
    sc_buf_init(&b, 0);
    sc_buf_init(&small, 64);
    char err[512];
    int rc = sc_avro_to_json(s, p, n, &a, err, sizeof(err));
    FUZZ_CHECK(rc == 0 || rc == -1, "unbounded decode returned %d", rc);
    FUZZ_CHECK(rc == 0 || a.len == 0, "a refused datum left output behind");
    FUZZ_CHECK(rc == 0 || err[0], "refused without a reason");
    if (rc == 0) {
        check_json(a.data, a.len);
        FUZZ_CHECK(sc_avro_to_json(s, p, n, &b, err, sizeof(err)) == 0, "second decode failed");
        FUZZ_CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0, "not deterministic");
    }
    FUZZ_CHECK(sc_buf_append(&small, "x", 1) == 0, "append");
    int src = sc_avro_to_json(s, p, n, &small, err, sizeof(err));
    if (src == 0)
        FUZZ_CHECK(rc == 0 && small.len == a.len + 1 && memcmp(small.data + 1, a.data, a.len) == 0,
                   "a bounded decode gave other bytes");
    else
        FUZZ_CHECK(small.len == 1 && (src == -2 || rc == -1), "bounded decode: %d, %zu", src,
                   small.len);
    sc_buf_free(&a);
    sc_buf_free(&b);
    sc_buf_free(&small);
}

static void fuzz_framed(const uint8_t *p, size_t n)
{
    uint32_t id;
    const void *payload;
    size_t plen;
    char err[512];
    int rc = sc_frame_parse(p, n, &id, &payload, &plen, err, sizeof(err));
    FUZZ_CHECK((rc == 0) == (n >= 5 && p[0] == 0), "frame parse %d", rc);
    struct sc_buf out, direct;
    sc_buf_init(&out, 0);
    sc_buf_init(&direct, 0);
    int64_t missing;
    enum sc_decode_status st =
        sc_decode_append(NULL, SC_VALUE_JSON_SCHEMA, p, n, &out, &id, &missing, err, sizeof(err));
    if (rc != 0) {
        FUZZ_CHECK(st == SC_DECODE_BAD && out.len == 0, "unframed bytes accepted");
    } else {
        int j = sc_json_minify_append(&direct, payload, plen);
        FUZZ_CHECK((st == SC_DECODE_OK) == (j == 1), "json_schema %d vs minify %d", st, j);
        if (st == SC_DECODE_OK) {
            FUZZ_CHECK(out.len == direct.len && memcmp(out.data, direct.data, out.len) == 0,
                       "json_schema is not the minified payload");
            check_json(out.data, out.len);
        } else {
            FUZZ_CHECK(st == SC_DECODE_BAD && out.len == 0, "json_schema failure left output");
        }
    }
    sc_buf_free(&out);
    sc_buf_free(&direct);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!schemas[0])
        LLVMFuzzerInitialize(NULL, NULL);
    if (size == 0)
        return 0;
    if (data[0] & 0x80)
        fuzz_framed(data + 1, size - 1);
    else
        fuzz_datum(schemas[data[0] % NSCHEMAS], data + 1, size - 1);
    return 0;
}
