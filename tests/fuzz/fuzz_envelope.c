/*
 * fuzz_envelope.c - the record envelope on arbitrary key, value and header
 * bytes (sc_envelope.h), under every value_format.
 *
 * The input is read front to back as: flags, header count, partition (4
 * bytes), offset and timestamp (8 each), topic, key, the headers (flags,
 * name, value each), and the rest is the value; short inputs read as zeros.
 *
 * Checked for each record, besides "no sanitizer report":
 *   - encoding twice gives the same bytes, also appended after other text;
 *   - a bounded buffer fails exactly when the envelope is longer than it;
 *   - the envelope is the tombstone envelope with "null" replaced by the
 *     value's own encoding, and that tombstone envelope parses with jansson
 *     to exactly the record: topic, numbers, key and header bytes back
 *     (strings, or {"base64": ...} when not UTF-8 or when base64 is asked);
 *   - a value embedded as JSON means what the original text means, and is
 *     embedded whenever jansson reads it (nesting up to 1000 deep);
 *   - sc_json_jsonb_safe() leaves JSON that jansson reads without NUL;
 *   - the record image has the documented size and checksums like
 *     sc_record_checksum().
 */
#include <string.h>

#include <jansson.h>
#include <zlib.h>

#include "fuzz.h"
#include "record/sc_envelope.h"

#define MAX_HEADERS 8

struct reader {
    const uint8_t *p;
    size_t n;
};

static uint8_t take_u8(struct reader *r)
{
    if (r->n == 0)
        return 0;
    r->n--;
    return *r->p++;
}

static uint64_t take_u64(struct reader *r, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v |= (uint64_t)take_u8(r) << (8 * i);
    return v;
}

static const uint8_t *take_bytes(struct reader *r, size_t want, size_t *got)
{
    const uint8_t *p = r->p;
    *got = want < r->n ? want : r->n;
    r->p += *got;
    r->n -= *got;
    return p;
}

/* UTF-8 as RFC 3629 defines it, decoded independently of sc_utf8_valid(). */
static bool utf8_ok(const uint8_t *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        uint32_t c = s[i], min;
        size_t n;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 2, c &= 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 3, c &= 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 4, c &= 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (len - i < n)
            return false;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            c = c << 6 | (s[i + k] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return false;
        i += n;
    }
    return true;
}

/* Standard padded base64 into out (room for len * 3 / 4); its length, or -1. */
static long base64_decode(const char *s, size_t len, uint8_t *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (len % 4 != 0)
        return -1;
    long o = 0;
    for (size_t i = 0; i < len; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            const char *at = s[i + k] ? strchr(tbl, s[i + k]) : NULL;
            if (s[i + k] == '=' && i + 4 == len && k >= 2) {
                pad++;
                v <<= 6;
                continue;
            }
            if (!at || pad)
                return -1;
            v = v << 6 | (uint32_t)(at - tbl);
        }
        out[o++] = (uint8_t)(v >> 16);
        if (pad < 2)
            out[o++] = (uint8_t)(v >> 8);
        if (pad < 1)
            out[o++] = (uint8_t)v;
    }
    return o;
}

/* j is how the envelope writes the bytes p[0..len) (NULL = null). */
static void check_bytes(const json_t *j, const void *p, size_t len, bool force_base64,
                        const char *what)
{
    if (!p) {
        FUZZ_CHECK(json_is_null(j), "%s: null bytes not written as null", what);
        return;
    }
    if (!force_base64 && utf8_ok(p, len)) {
        FUZZ_CHECK(json_is_string(j) && json_string_length(j) == len &&
                       memcmp(json_string_value(j), p, len) == 0,
                   "%s: UTF-8 bytes not written as the same string", what);
        return;
    }
    const json_t *b = json_object_get(j, "base64");
    FUZZ_CHECK(json_is_object(j) && json_object_size(j) == 1 && json_is_string(b),
               "%s: expected {\"base64\": ...}", what);
    uint8_t *back = malloc(json_string_length(b) / 4 * 3 + 1);
    long n = back ? base64_decode(json_string_value(b), json_string_length(b), back) : -1;
    FUZZ_CHECK(n >= 0 && (size_t)n == len && memcmp(back, p, len) == 0,
               "%s: base64 does not decode to the bytes", what);
    free(back);
}

static size_t json_depth(const json_t *j)
{
    size_t d = 0, i;
    const char *k;
    json_t *v;
    if (json_is_array(j)) {
        json_array_foreach(j, i, v)
        {
            size_t c = json_depth(v);
            d = c > d ? c : d;
        }
        return d + 1;
    }
    if (json_is_object(j)) {
        json_object_foreach((json_t *)j, k, v)
        {
            size_t c = json_depth(v);
            d = c > d ? c : d;
        }
        return d + 1;
    }
    return 0;
}

/* jansson refuses some valid JSON: numbers out of its range, lone surrogate escapes. */
static bool jansson_limit(const json_error_t *e)
{
    return strstr(e->text, "too big") || strstr(e->text, "overflow") || strstr(e->text, "Unicode");
}

static char *encode(const struct sc_record *r, enum sc_value_format vf, const char *prefix,
                    size_t *len)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    FUZZ_CHECK(sc_buf_append(&b, prefix, strlen(prefix)) == 0, "prefix");
    FUZZ_CHECK(sc_envelope_append(&b, r, &SC_FORMATS_OF(vf)) == 0, "unbounded append failed");
    FUZZ_CHECK(sc_buf_putc(&b, '\0') == 0, "NUL");
    size_t plen = strlen(prefix);
    *len = b.len - 1 - plen;
    memmove(b.data, b.data + plen, *len + 1);
    return b.data;
}

/*
 * The value alone, as the envelope writes it; *json says whether it went in
 * as JSON.  Into an empty buffer: an empty value must not compute NULL + 0
 * (regressions/fuzz_envelope/empty-value-empty-buffer).
 */
static char *encode_value(const struct sc_record *r, enum sc_value_format vf, size_t *len,
                          bool *json)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    *json = false;
    if (r->value && vf == SC_VALUE_AUTO) {
        int rc = sc_json_minify_append(&b, r->value, r->value_len);
        FUZZ_CHECK(rc >= 0, "unbounded minify failed");
        *json = rc == 1;
        b.len = 0;
    }
    FUZZ_CHECK(sc_envelope_append_value(&b, r->value, r->value_len, vf) == 0, "value");
    FUZZ_CHECK(sc_buf_putc(&b, '\0') == 0, "NUL");
    *len = b.len - 1;
    return b.data;
}

static void check_tombstone(const struct sc_record *r, enum sc_value_format vf, const char *t,
                            size_t tlen)
{
    json_error_t e;
    json_t *o = json_loadb(t, tlen, JSON_ALLOW_NUL, &e);
    FUZZ_CHECK(o != NULL, "envelope is not JSON: %s at %d: %.300s", e.text, e.position, t);
    const json_t *topic = json_object_get(o, "topic"), *ts = json_object_get(o, "timestamp");
    FUZZ_CHECK(json_is_string(topic) && strcmp(json_string_value(topic), r->topic) == 0, "topic");
    FUZZ_CHECK(json_integer_value(json_object_get(o, "partition")) == r->partition, "partition");
    FUZZ_CHECK(json_integer_value(json_object_get(o, "offset")) == r->offset, "offset");
    FUZZ_CHECK(r->timestamp < 0 ? json_is_null(ts) : json_integer_value(ts) == r->timestamp,
               "timestamp");
    check_bytes(json_object_get(o, "key"), r->key, r->key_len, vf == SC_VALUE_BASE64, "key");
    FUZZ_CHECK(json_is_null(json_object_get(o, "value")), "tombstone value");
    const json_t *hs = json_object_get(o, "headers");
    FUZZ_CHECK(json_is_object(hs), "headers");
    for (size_t i = 0; i < r->nheaders; i++) {
        const char *name = r->headers[i].name;
        /* Names that are not UTF-8 are all written as "?": nothing to compare them with. */
        if (!utf8_ok((const uint8_t *)name, strlen(name)) || strcmp(name, "?") == 0)
            continue;
        size_t count = 0, first = SIZE_MAX;
        for (size_t j = 0; j < r->nheaders; j++)
            if (strcmp(r->headers[j].name, name) == 0) {
                count++;
                first = first < j ? first : j;
            }
        if (first != i)
            continue;
        const json_t *v = json_object_get(hs, name);
        if (count == 1) {
            check_bytes(v, r->headers[i].value, r->headers[i].len, false, "header value");
            continue;
        }
        FUZZ_CHECK(json_is_array(v) && json_array_size(v) == count, "repeated header %s", name);
        for (size_t j = i, k = 0; j < r->nheaders; j++)
            if (strcmp(r->headers[j].name, name) == 0)
                check_bytes(json_array_get(v, k++), r->headers[j].value, r->headers[j].len, false,
                            "repeated header value");
    }
    json_decref(o);
}

static void check_value(const struct sc_record *r, enum sc_value_format vf, const char *v,
                        size_t vlen, bool embedded)
{
    json_error_t e, ge;
    json_t *got = json_loadb(v, vlen, JSON_DECODE_ANY | JSON_ALLOW_NUL, &ge);
    json_t *orig =
        r->value ? json_loadb(r->value, r->value_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e) : NULL;
    if (!embedded) {
        FUZZ_CHECK(got != NULL, "value encoding is not JSON: %s", ge.text);
        check_bytes(got, r->value, r->value_len, vf == SC_VALUE_BASE64, "value");
        /* jansson stops at a NUL byte ("1\0x" reads as 1): no verdict on those. */
        FUZZ_CHECK(vf != SC_VALUE_AUTO || !orig || json_depth(orig) > 1000 ||
                       memchr(r->value, '\0', r->value_len),
                   "jansson reads the value as JSON, the envelope does not");
    } else if (orig) {
        FUZZ_CHECK(got != NULL && json_equal(orig, got), "embedded JSON means something else");
    } else {
        /* jansson cannot read the original: it must be one of its known limits. */
        FUZZ_CHECK(jansson_limit(&e), "embedded as JSON, jansson says: %s", e.text);
    }
    /* What the postgres sink sends to jsonb: no \u0000, no lone surrogates. */
    char *safe = sc_json_jsonb_safe(v);
    if (safe) {
        FUZZ_CHECK(strlen(safe) == vlen, "jsonb_safe changed the length");
        json_t *s = json_loadb(safe, vlen, JSON_DECODE_ANY, &e);
        FUZZ_CHECK(s != NULL || (!strstr(e.text, "Unicode") && !strstr(e.text, "NUL")),
                   "jsonb_safe left: %s", e.text);
        json_decref(s);
        free(safe);
    }
    json_decref(orig);
    json_decref(got);
}

static void check_image(const struct sc_record *r, uint32_t seed)
{
    size_t want = 5 * 8 + (r->key ? r->key_len : 0) + (r->value ? r->value_len : 0);
    for (size_t i = 0; i < r->nheaders; i++)
        want += 16 + strlen(r->headers[i].name) + (r->headers[i].value ? r->headers[i].len : 0);
    size_t n = sc_record_image_size(r);
    FUZZ_CHECK(n == want, "image size %zu, expected %zu", n, want);
    char *img = malloc(n);
    FUZZ_CHECK(img != NULL, "malloc");
    sc_record_image_write(img, r);
    FUZZ_CHECK(crc32_z(seed, (const Bytef *)img, n) == sc_record_checksum(seed, r),
               "image checksum differs from sc_record_checksum");
    free(img);
}

static void check_format(struct sc_record *r, enum sc_value_format vf, size_t max)
{
    size_t len, len2, tlen, vlen;
    char *env = encode(r, vf, "", &len);
    char *env2 = encode(r, vf, "{\"earlier\":1}\n", &len2);
    FUZZ_CHECK(len == len2 && memcmp(env, env2, len) == 0, "not deterministic");
    free(env2);

    const void *value = r->value;
    r->value = NULL;
    char *tomb = encode(r, vf, "", &tlen);
    r->value = value;
    check_tombstone(r, vf, tomb, tlen);

    bool embedded;
    char *v = encode_value(r, vf, &vlen, &embedded);
    /* The tombstone's "null" is the last "null" before ,"headers": */
    struct sc_buf h;
    sc_buf_init(&h, 0);
    FUZZ_CHECK(sc_envelope_append_headers(&h, r->headers, r->nheaders) == 0, "headers");
    size_t tail = strlen(",\"headers\":") + h.len + 1, at = tlen - tail - 4;
    FUZZ_CHECK(tlen >= tail + 4 && memcmp(tomb + at, "null", 4) == 0 &&
                   memcmp(tomb + at + 4, ",\"headers\":", 11) == 0 &&
                   memcmp(tomb + at + 15, h.data, h.len) == 0,
               "tombstone does not end with the headers");
    FUZZ_CHECK(len == tlen - 4 + vlen && memcmp(env, tomb, at) == 0 &&
                   memcmp(env + at, v, vlen) == 0 &&
                   memcmp(env + at + vlen, tomb + at + 4, tail) == 0,
               "envelope is not the tombstone with the value in place of null");
    check_value(r, vf, v, vlen, embedded);

    /*
     * A bounded buffer fails exactly when the envelope does not fit, also for
     * a JSON value whose text as sent would not (regressions/fuzz_envelope/
     * minify-reserve).
     */
    struct sc_buf b;
    sc_buf_init(&b, max);
    int rc = sc_envelope_append(&b, r, &SC_FORMATS_OF(vf));
    FUZZ_CHECK(rc == 0 ? len <= max && b.len == len && memcmp(b.data, env, len) == 0 : len > max,
               "bounded append: rc %d, envelope %zu bytes, max %zu", rc, len, max);
    sc_buf_free(&b);
    sc_buf_free(&h);
    free(v);
    free(tomb);
    free(env);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20)
        return -1;
    static const char topic_chars[] =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
    struct reader in = {data, size};
    uint8_t flags = take_u8(&in);
    size_t nheaders = take_u8(&in) % (MAX_HEADERS + 1);
    struct sc_record r = {0};
    r.partition = (int32_t)(uint32_t)take_u64(&in, 4);
    r.offset = (int64_t)take_u64(&in, 8);
    r.timestamp = (int64_t)take_u64(&in, 8);

    /* Topic names are [A-Za-z0-9._-] in Kafka: map the bytes onto that. */
    char topic[33];
    size_t tn = take_u8(&in) % sizeof(topic), got;
    const uint8_t *tp = take_bytes(&in, tn, &got);
    for (size_t i = 0; i < got; i++)
        topic[i] = topic_chars[tp[i] % (sizeof(topic_chars) - 1)];
    topic[got] = '\0';
    r.topic = topic;

    r.key = take_bytes(&in, take_u8(&in), &r.key_len);
    if (flags & 1)
        r.key = NULL;

    struct sc_header hs[MAX_HEADERS];
    char names[MAX_HEADERS][17];
    for (size_t i = 0; i < nheaders; i++) {
        uint8_t hf = take_u8(&in);
        const uint8_t *np = take_bytes(&in, hf % 17, &got);
        memcpy(names[i], np, got); /* a NUL inside ends the name, as in a C string */
        names[i][got] = '\0';
        hs[i].name = names[i];
        hs[i].value = take_bytes(&in, take_u8(&in), &hs[i].len);
        if (hf & 0x80)
            hs[i].value = NULL;
    }
    r.headers = hs;
    r.nheaders = nheaders;

    r.value = take_bytes(&in, in.n, &r.value_len);
    if (flags & 2)
        r.value = NULL;

    size_t max = 1 + (size_t)(flags >> 2) * 16;
    check_format(&r, SC_VALUE_AUTO, max);
    check_format(&r, SC_VALUE_STRING, max);
    check_format(&r, SC_VALUE_BASE64, max);
    check_image(&r, (uint32_t)r.offset);
    return 0;
}
