/*
 * sc_avro.c - Avro datum -> JSON (see sc_avro.h).
 *
 * A compiled schema is avro-c's schema plus a "plan": one node per schema
 * node, carrying what avro-c does not keep (logical types; avro-c 1.11
 * parses them away) and what rendering needs ready-made (field names and
 * enum symbols as JSON string literals).  The plan is built by walking the
 * schema's JSON (jansson) and avro-c's schema side by side; named types are
 * unique objects in avro-c, so references to them (and recursive types)
 * share one plan node found by the avro-c pointer.
 *
 * Decoding a datum is three steps: scan() checks the bytes against the
 * plan within fixed bounds, avro-c reads them into a generic value, and
 * render() walks value and plan together into JSON.
 */
#include "record/sc_avro.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <avro.h>
#include <jansson.h>

#include "base/sc_base64.h"
#include "record/sc_envelope.h"

#define MAX_DECIMAL_BYTES 1024

enum kind {
    K_NULL,
    K_BOOL,
    K_INT,
    K_LONG,
    K_FLOAT,
    K_DOUBLE,
    K_BYTES,
    K_STRING,
    K_RECORD,
    K_ENUM,
    K_ARRAY,
    K_MAP,
    K_UNION,
    K_FIXED,
};

enum logical {
    L_NONE,
    L_DECIMAL,
    L_UUID,
    L_DATE,
    L_TIME_MILLIS,
    L_TIME_MICROS,
    L_TS_MILLIS,
    L_TS_MICROS,
    L_LOCAL_TS_MILLIS,
    L_LOCAL_TS_MICROS,
    L_DURATION,
};

struct plan {
    enum kind kind;
    enum logical logical;
    int scale;          /* decimal */
    int64_t fixed_size; /* fixed */
    size_t n;           /* fields, symbols, branches */
    struct plan **kids; /* record fields, union branches; [0] = array items / map values */
    char **names;       /* record: "\"name\":"; enum: "\"SYMBOL\"" */
    size_t *name_lens;
    int zero_width;       /* encodes to no bytes at all (null, fixed(0), such records) */
    struct plan *all;     /* every node of the schema, for freeing */
    avro_schema_t schema; /* named types: the avro-c object this node is */
};

struct sc_avro_schema {
    avro_schema_t schema;
    avro_value_iface_t *iface;
    struct plan *root;
    struct plan *nodes; /* list through ->all */
};

/* ---- compiling ---------------------------------------------------------------------------- */

struct builder {
    struct sc_avro_schema *s;
    char *err;
    size_t errsize;
    int failed;
};

static struct plan *node_new(struct builder *b, enum kind k)
{
    struct plan *p = sc_xcalloc(1, sizeof(*p));
    p->kind = k;
    p->all = b->s->nodes;
    b->s->nodes = p;
    return p;
}

static struct plan *find_named(struct builder *b, avro_schema_t s)
{
    for (struct plan *p = b->s->nodes; p; p = p->all)
        if (p->schema == s)
            return p;
    return NULL;
}

static char *json_literal(const char *s, size_t *len, const char *suffix)
{
    struct sc_buf t;
    sc_buf_init(&t, 0);
    if (sc_json_string_append(&t, s, strlen(s)) < 0 ||
        sc_buf_append(&t, suffix, strlen(suffix)) < 0 || sc_buf_putc(&t, '\0') < 0)
        abort(); /* no maximum */
    *len = t.len - 1;
    return t.data;
}

static enum logical logical_of(const json_t *obj, enum kind k, int *scale, int64_t fixed_size)
{
    const char *lt = obj ? json_string_value(json_object_get(obj, "logicalType")) : NULL;
    if (!lt)
        return L_NONE;
    if (strcmp(lt, "decimal") == 0 && (k == K_BYTES || k == K_FIXED)) {
        json_t *jp = json_object_get(obj, "precision"), *js = json_object_get(obj, "scale");
        json_int_t prec = json_is_integer(jp) ? json_integer_value(jp) : 0;
        json_int_t sc = js ? (json_is_integer(js) ? json_integer_value(js) : -1) : 0;
        /* Invalid parameters make the logical type invalid: the underlying type is used. */
        if (prec < 1 || sc < 0 || sc > prec || prec > 10000)
            return L_NONE;
        if (k == K_FIXED && fixed_size < 1)
            return L_NONE;
        *scale = (int)sc;
        return L_DECIMAL;
    }
    struct {
        const char *name;
        enum kind k;
        enum logical l;
    } simple[] = {
        {"uuid", K_STRING, L_UUID},
        {"date", K_INT, L_DATE},
        {"time-millis", K_INT, L_TIME_MILLIS},
        {"time-micros", K_LONG, L_TIME_MICROS},
        {"timestamp-millis", K_LONG, L_TS_MILLIS},
        {"timestamp-micros", K_LONG, L_TS_MICROS},
        {"local-timestamp-millis", K_LONG, L_LOCAL_TS_MILLIS},
        {"local-timestamp-micros", K_LONG, L_LOCAL_TS_MICROS},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(simple); i++)
        if (strcmp(lt, simple[i].name) == 0)
            return simple[i].k == k ? simple[i].l : L_NONE;
    if (strcmp(lt, "duration") == 0 && k == K_FIXED && fixed_size == 12)
        return L_DURATION;
    return L_NONE;
}

static struct plan *build(struct builder *b, const json_t *j, avro_schema_t s, int depth);

/* j describes s: a name (string), a union (array) or a definition (object); NULL = unknown. */
static struct plan *build(struct builder *b, const json_t *j, avro_schema_t s, int depth)
{
    if (depth > 1000) {
        snprintf(b->err, b->errsize, "the schema is nested too deeply");
        b->failed = 1;
        return node_new(b, K_NULL);
    }
    if (is_avro_link(s)) {
        s = avro_schema_link_target(s);
        j = NULL; /* a reference by name: the definition was planned already */
    }
    bool named = is_avro_record(s) || is_avro_enum(s) || is_avro_fixed(s);
    if (named) {
        struct plan *p = find_named(b, s);
        if (p)
            return p;
    }
    const json_t *obj = json_is_object(j) ? j : NULL;
    const json_t *inner = obj ? json_object_get(obj, "type") : NULL;
    if (inner && (json_is_object(inner) || json_is_array(inner)))
        return build(b, inner, s, depth + 1); /* {"type": {...}} */

    struct plan *p;
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        p = node_new(b, K_NULL);
        p->zero_width = 1;
        return p;
    case AVRO_BOOLEAN:
        return node_new(b, K_BOOL);
    case AVRO_INT32:
    case AVRO_INT64:
    case AVRO_FLOAT:
    case AVRO_DOUBLE:
    case AVRO_BYTES:
    case AVRO_STRING: {
        enum kind k = avro_typeof(s) == AVRO_INT32    ? K_INT
                      : avro_typeof(s) == AVRO_INT64  ? K_LONG
                      : avro_typeof(s) == AVRO_FLOAT  ? K_FLOAT
                      : avro_typeof(s) == AVRO_DOUBLE ? K_DOUBLE
                      : avro_typeof(s) == AVRO_BYTES  ? K_BYTES
                                                      : K_STRING;
        p = node_new(b, k);
        p->logical = logical_of(obj, k, &p->scale, 0);
        return p;
    }
    case AVRO_FIXED:
        p = node_new(b, K_FIXED);
        p->schema = s;
        p->fixed_size = avro_schema_fixed_size(s);
        p->zero_width = p->fixed_size == 0;
        p->logical = logical_of(obj, K_FIXED, &p->scale, p->fixed_size);
        return p;
    case AVRO_ENUM: {
        p = node_new(b, K_ENUM);
        p->schema = s;
        p->n = (size_t)avro_schema_enum_number_of_symbols(s);
        p->names = sc_xcalloc(p->n ? p->n : 1, sizeof(*p->names));
        p->name_lens = sc_xcalloc(p->n ? p->n : 1, sizeof(*p->name_lens));
        for (size_t i = 0; i < p->n; i++)
            p->names[i] = json_literal(avro_schema_enum_get(s, (int)i), &p->name_lens[i], "");
        return p;
    }
    case AVRO_RECORD: {
        p = node_new(b, K_RECORD);
        p->schema = s;
        p->n = avro_schema_record_size(s);
        p->kids = sc_xcalloc(p->n ? p->n : 1, sizeof(*p->kids));
        p->names = sc_xcalloc(p->n ? p->n : 1, sizeof(*p->names));
        p->name_lens = sc_xcalloc(p->n ? p->n : 1, sizeof(*p->name_lens));
        const json_t *fields = obj ? json_object_get(obj, "fields") : NULL;
        for (size_t i = 0; i < p->n; i++) {
            p->names[i] =
                json_literal(avro_schema_record_field_name(s, (int)i), &p->name_lens[i], ":");
            const json_t *f = json_array_get(fields, i);
            p->kids[i] = build(b, f ? json_object_get(f, "type") : NULL,
                               avro_schema_record_field_get_by_index(s, (int)i), depth + 1);
        }
        /* A record is zero-width when all its fields are (a recursive one never is: it
         * needs a union to end, and a union takes a byte). */
        p->zero_width = 1;
        for (size_t i = 0; i < p->n; i++)
            if (p->kids[i] == p || !p->kids[i]->zero_width)
                p->zero_width = 0;
        return p;
    }
    case AVRO_ARRAY:
    case AVRO_MAP: {
        bool array = avro_typeof(s) == AVRO_ARRAY;
        p = node_new(b, array ? K_ARRAY : K_MAP);
        p->n = 1;
        p->kids = sc_xcalloc(1, sizeof(*p->kids));
        p->kids[0] =
            build(b, obj ? json_object_get(obj, array ? "items" : "values") : NULL,
                  array ? avro_schema_array_items(s) : avro_schema_map_values(s), depth + 1);
        return p;
    }
    case AVRO_UNION: {
        p = node_new(b, K_UNION);
        p->n = avro_schema_union_size(s);
        p->kids = sc_xcalloc(p->n ? p->n : 1, sizeof(*p->kids));
        for (size_t i = 0; i < p->n; i++)
            p->kids[i] = build(b, json_is_array(j) ? json_array_get(j, i) : NULL,
                               avro_schema_union_branch(s, (int)i), depth + 1);
        return p;
    }
    default:
        snprintf(b->err, b->errsize, "unsupported Avro schema type %d", (int)avro_typeof(s));
        b->failed = 1;
        return node_new(b, K_NULL);
    }
}

void sc_avro_schema_free(struct sc_avro_schema *s)
{
    if (!s)
        return;
    while (s->nodes) {
        struct plan *p = s->nodes;
        s->nodes = p->all;
        if (p->names)
            for (size_t i = 0; i < p->n; i++)
                free(p->names[i]);
        free(p->names);
        free(p->name_lens);
        free(p->kids);
        free(p);
    }
    if (s->iface)
        avro_value_iface_decref(s->iface);
    if (s->schema)
        avro_schema_decref(s->schema);
    free(s);
}

struct sc_avro_schema *sc_avro_schema_new(const char *json, size_t len, char *err, size_t errsize)
{
    struct sc_avro_schema *s = sc_xcalloc(1, sizeof(*s));
    json_t *doc = NULL;
    json_error_t je;
    if (avro_schema_from_json_length(json, len, &s->schema) != 0) {
        snprintf(err, errsize, "not a valid Avro schema: %s", avro_strerror());
        s->schema = NULL;
        goto fail;
    }
    /* avro-c accepted it, so it is JSON; jansson reads the attributes avro-c drops. */
    doc = json_loadb(json, len, JSON_DECODE_ANY, &je);
    struct builder b = {.s = s, .err = err, .errsize = errsize};
    s->root = build(&b, doc, s->schema, 0);
    if (b.failed)
        goto fail;
    s->iface = avro_generic_class_from_schema(s->schema);
    if (!s->iface) {
        snprintf(err, errsize, "cannot decode with this Avro schema: %s", avro_strerror());
        goto fail;
    }
    json_decref(doc);
    return s;
fail:
    json_decref(doc);
    sc_avro_schema_free(s);
    return NULL;
}

/* ---- the bounded scan --------------------------------------------------------------------- */

struct scan {
    const unsigned char *p, *end;
    int64_t zero_items;
    char *err;
    size_t errsize;
};

static int scan_fail(struct scan *c, const char *what)
{
    snprintf(c->err, c->errsize, "%s", what);
    return -1;
}

static int scan_long(struct scan *c, int64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (c->p >= c->end)
            return scan_fail(c, "the datum ends inside a number");
        unsigned char b = *c->p++;
        if (shift == 63 && (b & 0x7E))
            return scan_fail(c, "a variable-length number is longer than 64 bits");
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return 0;
        }
    }
    return scan_fail(c, "a variable-length number is longer than 64 bits");
}

static int scan_skip(struct scan *c, int64_t n, const char *what)
{
    if (n < 0 || n > c->end - c->p)
        return scan_fail(c, what);
    c->p += n;
    return 0;
}

static int scan_value(struct scan *c, const struct plan *pl, int depth)
{
    int64_t v;
    if (depth > SC_AVRO_MAX_DEPTH)
        return scan_fail(c, "the datum is nested deeper than 128 levels");
    switch (pl->kind) {
    case K_NULL:
        return 0;
    case K_BOOL:
        if (c->p >= c->end)
            return scan_fail(c, "the datum ends inside a boolean");
        if (*c->p > 1)
            return scan_fail(c, "a boolean is neither 0 nor 1");
        c->p++;
        return 0;
    case K_INT:
        if (scan_long(c, &v) < 0)
            return -1;
        return v < INT32_MIN || v > INT32_MAX ? scan_fail(c, "an int is out of range") : 0;
    case K_LONG:
        return scan_long(c, &v);
    case K_FLOAT:
        return scan_skip(c, 4, "the datum ends inside a float");
    case K_DOUBLE:
        return scan_skip(c, 8, "the datum ends inside a double");
    case K_BYTES:
    case K_STRING:
        if (scan_long(c, &v) < 0)
            return -1;
        return scan_skip(c, v, "a string or bytes length is negative or past the end");
    case K_FIXED:
        return scan_skip(c, pl->fixed_size, "the datum ends inside a fixed");
    case K_ENUM:
        if (scan_long(c, &v) < 0)
            return -1;
        return v < 0 || (uint64_t)v >= pl->n ? scan_fail(c, "an enum index is out of range") : 0;
    case K_UNION:
        if (scan_long(c, &v) < 0)
            return -1;
        if (v < 0 || (uint64_t)v >= pl->n)
            return scan_fail(c, "a union branch index is out of range");
        return scan_value(c, pl->kids[v], depth + 1);
    case K_RECORD:
        for (size_t i = 0; i < pl->n; i++)
            if (scan_value(c, pl->kids[i], depth + 1) < 0)
                return -1;
        return 0;
    case K_ARRAY:
    case K_MAP:
        for (;;) {
            int64_t count;
            if (scan_long(c, &count) < 0)
                return -1;
            if (count == 0)
                return 0;
            if (count < 0) {
                int64_t size;
                if (count == INT64_MIN || scan_long(c, &size) < 0)
                    return scan_fail(c, "an array or map block is malformed");
                count = -count;
            }
            /* Every item but a zero-width one takes a byte: a count beyond the rest of the
             * datum is a lie, unless the items take no bytes, which are counted. */
            bool zero = pl->kind == K_ARRAY && pl->kids[0]->zero_width;
            if (zero) {
                /* Checked before adding: a hostile count near INT64_MAX must not overflow. */
                if (count > SC_AVRO_MAX_ITEMS || c->zero_items > SC_AVRO_MAX_ITEMS - count)
                    return scan_fail(c, "an array holds more than 1000000 items of a type that "
                                        "takes no bytes");
                c->zero_items += count;
            } else if (count > c->end - c->p) {
                return scan_fail(c, "an array or map claims more items than the datum holds");
            }
            for (int64_t i = 0; i < count; i++) {
                if (pl->kind == K_MAP) {
                    if (scan_long(c, &v) < 0 ||
                        scan_skip(c, v, "a map key length is negative or past the end") < 0)
                        return -1;
                }
                if (scan_value(c, pl->kids[0], depth + 1) < 0)
                    return -1;
            }
        }
    }
    return scan_fail(c, "unknown type");
}

/* ---- rendering ---------------------------------------------------------------------------- */

struct render {
    struct sc_buf *out;
    char *err;
    size_t errsize;
    int bad; /* the datum cannot be rendered (err set), as opposed to out being full */
};

static int r_fail(struct render *c, const char *what)
{
    snprintf(c->err, c->errsize, "%s", what);
    c->bad = 1;
    return -1;
}

static int r_put(struct render *c, const char *s, size_t n)
{
    return sc_buf_append(c->out, s, n);
}

static int r_printf(struct render *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int r_printf(struct render *c, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return r_fail(c, "internal: a number did not fit");
    return r_put(c, tmp, (size_t)n);
}

/* The shortest %.Ng text that reads back as the same double (or float). */
static int r_real(struct render *c, double d, bool is_float)
{
    if (isnan(d))
        return r_put(c, "\"NaN\"", 5);
    if (isinf(d))
        return d > 0 ? r_put(c, "\"Infinity\"", 10) : r_put(c, "\"-Infinity\"", 11);
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
        if (is_float ? strtof(tmp, NULL) == (float)d : strtod(tmp, NULL) == d)
            break;
    }
    /* %g may give "1e+20" or "inf"-free text that JSON accepts as it is. */
    return r_put(c, tmp, strlen(tmp));
}

/* Days since 1970-01-01 -> civil date (proleptic Gregorian; H. Hinnant's algorithm). */
static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* v in units per second (1000 or 1000000) since the epoch; false when out of 0000..9999. */
static int r_timestamp(struct render *c, int64_t v, int64_t per_sec, bool zone)
{
    int64_t per_day = 86400 * per_sec;
    int64_t days = floor_div(v, per_day), rest = v - days * per_day;
    int64_t y;
    int m, d;
    if (days < -719528 || days > 2932896) /* 0000-01-01 .. 9999-12-31 */
        return r_printf(c, "%" PRId64, v);
    civil_from_days(days, &y, &m, &d);
    int64_t secs = rest / per_sec, frac = rest % per_sec;
    return r_printf(c, "\"%04d-%02d-%02dT%02d:%02d:%02d.%0*" PRId64 "%s\"", (int)y, m, d,
                    (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60),
                    per_sec == 1000 ? 3 : 6, frac, zone ? "Z" : "");
}

static int r_time(struct render *c, int64_t v, int64_t per_sec)
{
    if (v < 0 || v >= 86400 * per_sec)
        return r_printf(c, "%" PRId64, v);
    int64_t secs = v / per_sec, frac = v % per_sec;
    return r_printf(c, "\"%02d:%02d:%02d.%0*" PRId64 "\"", (int)(secs / 3600),
                    (int)(secs / 60 % 60), (int)(secs % 60), per_sec == 1000 ? 3 : 6, frac);
}

static int r_date(struct render *c, int32_t days)
{
    int64_t y;
    int m, d;
    if (days < -719528 || days > 2932896)
        return r_printf(c, "%" PRId32, days);
    civil_from_days(days, &y, &m, &d);
    return r_printf(c, "\"%04d-%02d-%02d\"", (int)y, m, d);
}

/* The two's-complement big-endian integer b[0..n) scaled by 10^-scale, as a JSON string. */
static int r_decimal(struct render *c, const unsigned char *b, size_t n, int scale)
{
    if (n > MAX_DECIMAL_BYTES)
        return r_fail(c, "a decimal is longer than 1024 bytes");
    if (n == 0)
        return r_fail(c, "a decimal has no bytes");
    bool neg = b[0] & 0x80;
    unsigned char mag[MAX_DECIMAL_BYTES];
    memcpy(mag, b, n);
    if (neg) { /* magnitude = two's complement negation */
        for (size_t i = 0; i < n; i++)
            mag[i] = (unsigned char)~mag[i];
        for (size_t i = n; i-- > 0;)
            if (++mag[i] != 0)
                break;
    }
    /* Repeated division by 10^9: base-10^9 limbs, least significant first. */
    uint32_t limbs[MAX_DECIMAL_BYTES / 3 + 2];
    size_t nl = 0, start = 0;
    while (start < n && mag[start] == 0)
        start++;
    while (start < n) {
        uint64_t rem = 0;
        for (size_t i = start; i < n; i++) {
            uint64_t cur = (rem << 8) | mag[i];
            mag[i] = (unsigned char)(cur / 1000000000u);
            rem = cur % 1000000000u;
        }
        limbs[nl++] = (uint32_t)rem;
        while (start < n && mag[start] == 0)
            start++;
    }
    char digits[MAX_DECIMAL_BYTES * 3 + 16];
    size_t nd = 0;
    if (nl == 0) {
        digits[nd++] = '0';
    } else {
        nd = (size_t)snprintf(digits, sizeof(digits), "%" PRIu32, limbs[nl - 1]);
        for (size_t i = nl - 1; i-- > 0;)
            nd += (size_t)snprintf(digits + nd, sizeof(digits) - nd, "%09" PRIu32, limbs[i]);
    }
    if (sc_buf_putc(c->out, '"') < 0 || (neg && nl > 0 && sc_buf_putc(c->out, '-') < 0))
        return -1;
    size_t sc = (size_t)scale;
    if (sc == 0) {
        if (r_put(c, digits, nd) < 0)
            return -1;
    } else if (nd > sc) {
        if (r_put(c, digits, nd - sc) < 0 || sc_buf_putc(c->out, '.') < 0 ||
            r_put(c, digits + nd - sc, sc) < 0)
            return -1;
    } else {
        if (r_put(c, "0.", 2) < 0)
            return -1;
        for (size_t i = nd; i < sc; i++)
            if (sc_buf_putc(c->out, '0') < 0)
                return -1;
        if (r_put(c, digits, nd) < 0)
            return -1;
    }
    return sc_buf_putc(c->out, '"');
}

static int r_base64(struct render *c, const void *p, size_t n)
{
    if (sc_buf_putc(c->out, '"') < 0 || sc_base64_encode(c->out, p, n, SC_BASE64_STD) < 0)
        return -1;
    return sc_buf_putc(c->out, '"');
}

static int r_string(struct render *c, const char *s, size_t n)
{
    if (!sc_utf8_valid(s, n))
        return r_fail(c, "a string is not valid UTF-8");
    return sc_json_string_append(c->out, s, n);
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int render(struct render *c, const struct plan *pl, avro_value_t *v)
{
    switch (pl->kind) {
    case K_NULL:
        return r_put(c, "null", 4);
    case K_BOOL: {
        int b = 0;
        if (avro_value_get_boolean(v, &b))
            return r_fail(c, avro_strerror());
        return b ? r_put(c, "true", 4) : r_put(c, "false", 5);
    }
    case K_INT: {
        int32_t i = 0;
        if (avro_value_get_int(v, &i))
            return r_fail(c, avro_strerror());
        if (pl->logical == L_DATE)
            return r_date(c, i);
        if (pl->logical == L_TIME_MILLIS)
            return r_time(c, i, 1000);
        return r_printf(c, "%" PRId32, i);
    }
    case K_LONG: {
        int64_t l = 0;
        if (avro_value_get_long(v, &l))
            return r_fail(c, avro_strerror());
        switch (pl->logical) {
        case L_TIME_MICROS:
            return r_time(c, l, 1000000);
        case L_TS_MILLIS:
        case L_LOCAL_TS_MILLIS:
            return r_timestamp(c, l, 1000, pl->logical == L_TS_MILLIS);
        case L_TS_MICROS:
        case L_LOCAL_TS_MICROS:
            return r_timestamp(c, l, 1000000, pl->logical == L_TS_MICROS);
        default:
            return r_printf(c, "%" PRId64, l);
        }
    }
    case K_FLOAT: {
        float f = 0;
        if (avro_value_get_float(v, &f))
            return r_fail(c, avro_strerror());
        return r_real(c, f, true);
    }
    case K_DOUBLE: {
        double d = 0;
        if (avro_value_get_double(v, &d))
            return r_fail(c, avro_strerror());
        return r_real(c, d, false);
    }
    case K_BYTES:
    case K_FIXED: {
        const void *p = NULL;
        size_t n = 0;
        if (pl->kind == K_BYTES ? avro_value_get_bytes(v, &p, &n) : avro_value_get_fixed(v, &p, &n))
            return r_fail(c, avro_strerror());
        if (pl->logical == L_DECIMAL)
            return r_decimal(c, p, n, pl->scale);
        if (pl->logical == L_DURATION && n == 12) {
            const unsigned char *b = p;
            return r_printf(c,
                            "{\"months\":%" PRIu32 ",\"days\":%" PRIu32 ",\"millis\":%" PRIu32 "}",
                            le32(b), le32(b + 4), le32(b + 8));
        }
        return r_base64(c, p, n);
    }
    case K_STRING: {
        const char *s = NULL;
        size_t n = 0;
        if (avro_value_get_string(v, &s, &n))
            return r_fail(c, avro_strerror());
        return r_string(c, s, n > 0 ? n - 1 : 0); /* avro-c counts the NUL */
    }
    case K_ENUM: {
        int i = 0;
        if (avro_value_get_enum(v, &i))
            return r_fail(c, avro_strerror());
        if (i < 0 || (size_t)i >= pl->n)
            return r_fail(c, "an enum index is out of range");
        return r_put(c, pl->names[i], pl->name_lens[i]);
    }
    case K_UNION: {
        int disc = 0;
        avro_value_t branch;
        if (avro_value_get_discriminant(v, &disc) || avro_value_get_current_branch(v, &branch))
            return r_fail(c, avro_strerror());
        if (disc < 0 || (size_t)disc >= pl->n)
            return r_fail(c, "a union branch index is out of range");
        return render(c, pl->kids[disc], &branch);
    }
    case K_RECORD: {
        if (sc_buf_putc(c->out, '{') < 0)
            return -1;
        for (size_t i = 0; i < pl->n; i++) {
            avro_value_t field;
            if (avro_value_get_by_index(v, i, &field, NULL))
                return r_fail(c, avro_strerror());
            if ((i > 0 && sc_buf_putc(c->out, ',') < 0) ||
                r_put(c, pl->names[i], pl->name_lens[i]) < 0 || render(c, pl->kids[i], &field) < 0)
                return -1;
        }
        return sc_buf_putc(c->out, '}');
    }
    case K_ARRAY:
    case K_MAP: {
        bool map = pl->kind == K_MAP;
        size_t n = 0;
        if (avro_value_get_size(v, &n))
            return r_fail(c, avro_strerror());
        if (sc_buf_putc(c->out, map ? '{' : '[') < 0)
            return -1;
        for (size_t i = 0; i < n; i++) {
            avro_value_t item;
            const char *key = NULL;
            if (avro_value_get_by_index(v, i, &item, map ? &key : NULL))
                return r_fail(c, avro_strerror());
            if (i > 0 && sc_buf_putc(c->out, ',') < 0)
                return -1;
            if (map && (r_string(c, key, strlen(key)) < 0 || sc_buf_putc(c->out, ':') < 0))
                return -1;
            if (render(c, pl->kids[0], &item) < 0)
                return -1;
        }
        return sc_buf_putc(c->out, map ? '}' : ']');
    }
    }
    return r_fail(c, "unknown type");
}

int sc_avro_to_json(const struct sc_avro_schema *s, const void *p, size_t len, struct sc_buf *out,
                    char *err, size_t errsize)
{
    struct scan sc = {
        .p = p, .end = (const unsigned char *)p + len, .err = err, .errsize = errsize};
    if (len > INT64_MAX / 2 || scan_value(&sc, s->root, 0) < 0)
        return -1;
    if (sc.p != sc.end) {
        snprintf(err, errsize, "%zu bytes are left after the datum (written with another schema?)",
                 (size_t)(sc.end - sc.p));
        return -1;
    }
    int rc = -1;
    size_t mark = out->len;
    avro_value_t v;
    avro_reader_t rd = avro_reader_memory(p, (int64_t)len);
    if (!rd) {
        snprintf(err, errsize, "cannot read the datum: %s", avro_strerror());
        return -1;
    }
    if (avro_generic_value_new(s->iface, &v) != 0) {
        snprintf(err, errsize, "cannot decode the datum: %s", avro_strerror());
        avro_reader_free(rd);
        return -1;
    }
    if (avro_value_read(rd, &v) != 0) {
        snprintf(err, errsize, "cannot decode the datum: %s", avro_strerror());
        goto out;
    }
    struct render r = {.out = out, .err = err, .errsize = errsize};
    rc = render(&r, s->root, &v) == 0 ? 0 : r.bad ? -1 : -2;
out:
    if (rc != 0)
        out->len = mark;
    avro_value_decref(&v);
    avro_reader_free(rd);
    return rc;
}
