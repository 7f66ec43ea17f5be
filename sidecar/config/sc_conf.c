/*
 * sc_conf.c - the declarative key-table engine (see sc_conf.h).
 *
 * Parsing order inside one object: the table's keys in table order (absent
 * ones get their default), then the keys of the chosen variant, then
 * unknown keys, then keys that are set but do not apply, then the table's
 * cross-key check.  Errors are sorted by source position afterwards, so
 * this order never shows.
 *
 * A value that fails to parse leaves its field zeroed, never defaulted:
 * the load fails anyway, and a check that gets clean == false knows not to
 * trust the struct.
 */
#include "config/sc_conf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_util.h"
#include "config/sc_expand.h"

#define MAX_KEYS 64 /* keys of one table (a fixed array of per-key results) */

/* ---- small helpers ------------------------------------------------------------------------ */

const char *sc_kvlist_get(const struct sc_kvlist *kv, const char *key)
{
    for (size_t i = 0; kv && i < kv->count; i++)
        if (strcmp(kv->items[i].key, key) == 0)
            return kv->items[i].value;
    return NULL;
}

/* Appends printf output to b, which has no maximum (so this cannot fail short of OOM). */
static void put(struct sc_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct sc_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0 || sc_buf_append(b, s, (size_t)n) < 0)
        abort();
    free(s);
}

/* Takes the buffer's contents as a NUL-terminated malloc'd string. */
static char *buf_take(struct sc_buf *b)
{
    if (sc_buf_putc(b, '\0') < 0)
        abort();
    char *s = b->data;
    b->data = NULL;
    b->len = b->cap = 0;
    return s;
}

static void *field_at(void *base, size_t offset)
{
    return (char *)base + offset;
}

static const void *cfield_at(const void *base, size_t offset)
{
    return (const char *)base + offset;
}

static bool utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned char c = *p;
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            p++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if ((size_t)(end - p) <= n)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((p[k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (p[k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        p += n + 1;
    }
    return true;
}

const char *sc_conf_quote(char *buf, size_t size, const char *s)
{
    if (size < 8) {
        if (size)
            buf[0] = '\0';
        return buf;
    }
    size_t o = 0, limit = size - 6; /* room for an escape, "..." and the closing quote */
    buf[o++] = '"';
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        char esc[8];
        int n;
        if (c == '"' || c == '\\')
            n = snprintf(esc, sizeof(esc), "\\%c", c);
        else if (c == '\n')
            n = snprintf(esc, sizeof(esc), "\\n");
        else if (c == '\t')
            n = snprintf(esc, sizeof(esc), "\\t");
        else if (c < 0x20 || c == 0x7F)
            n = snprintf(esc, sizeof(esc), "\\u%04x", c);
        else
            n = snprintf(esc, sizeof(esc), "%c", c);
        if (o + (size_t)n > limit) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(buf + o, esc, (size_t)n);
        o += (size_t)n;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

static const struct {
    const char *unit;
    int64_t ms;
} duration_units[] = {
    {"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1},
};

int sc_conf_parse_duration(const char *s, int64_t *ms)
{
    const char *p = s;
    int64_t v = 0;
    if (!(*p >= '0' && *p <= '9'))
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (INT64_MAX - (*p - '0')) / 10)
            return -1;
        v = v * 10 + (*p - '0');
    }
    int64_t mult = *p == '\0' ? 1 : 0;
    for (size_t i = 0; i < SC_ARRAY_LEN(duration_units) && !mult; i++)
        if (strcmp(p, duration_units[i].unit) == 0)
            mult = duration_units[i].ms;
    if (!mult || v > INT64_MAX / mult)
        return -1;
    *ms = v * mult;
    return 0;
}

const char *sc_conf_format_duration(int64_t ms, char *buf, size_t size)
{
    for (size_t i = 0; i < SC_ARRAY_LEN(duration_units); i++) {
        if (ms != 0 && ms % duration_units[i].ms == 0) {
            snprintf(buf, size, "%" PRId64 "%s", ms / duration_units[i].ms, duration_units[i].unit);
            return buf;
        }
    }
    snprintf(buf, size, "%" PRId64 "ms", ms);
    return buf;
}

/* A whole decimal integer, no spaces or '+'. */
static int parse_int_strict(const char *s, int64_t *out)
{
    const char *p = s[0] == '-' ? s + 1 : s;
    if (!(*p >= '0' && *p <= '9'))
        return -1;
    return sc_parse_i64(s, out);
}

/* ---- errors and paths --------------------------------------------------------------------- */

void sc_conf_ctx_init(struct sc_conf_ctx *ctx, const char *name, const char *text, size_t len)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->name = name;
    ctx->text = text;
    ctx->len = len;
}

void sc_conf_ctx_free(struct sc_conf_ctx *ctx)
{
    for (size_t i = 0; i < ctx->nshown; i++)
        free(ctx->errors[i].text);
    ctx->nshown = 0;
    ctx->nerrors = 0;
}

void sc_conf_push_key(struct sc_conf_ctx *ctx, const char *key)
{
    if (ctx->depth < SC_CONF_MAX_DEPTH)
        ctx->path[ctx->depth++] = (struct sc_jsonpos_seg){.key = key};
    else
        ctx->overflow++;
}

void sc_conf_push_index(struct sc_conf_ctx *ctx, size_t index)
{
    if (ctx->depth < SC_CONF_MAX_DEPTH)
        ctx->path[ctx->depth++] = (struct sc_jsonpos_seg){.index = index};
    else
        ctx->overflow++;
}

void sc_conf_pop(struct sc_conf_ctx *ctx)
{
    if (ctx->overflow)
        ctx->overflow--;
    else if (ctx->depth)
        ctx->depth--;
}

/* Can the member name be shown as ".name" in a path? */
static bool plain_key(const char *k)
{
    if (!*k)
        return false;
    for (const unsigned char *p = (const unsigned char *)k; *p; p++)
        if (*p <= ' ' || *p == '"' || *p == '[' || *p == ']' || *p == '\\' || *p == 0x7F)
            return false;
    return true;
}

static void render_path(struct sc_buf *b, const struct sc_jsonpos_seg *path, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!path[i].key) {
            put(b, "[%zu]", path[i].index);
        } else if (plain_key(path[i].key)) {
            put(b, "%s%s", i ? "." : "", path[i].key);
        } else {
            char q[256];
            put(b, "[%s]", sc_conf_quote(q, sizeof(q), path[i].key));
        }
    }
}

static bool error_before(const struct sc_conf_error *a, const struct sc_conf_error *b)
{
    return a->pos.offset != b->pos.offset ? a->pos.offset < b->pos.offset : a->seq < b->seq;
}

/* Keeps the SC_CONF_MAX_SHOWN first errors in document order; takes text. */
static void add_error(struct sc_conf_ctx *ctx, const struct sc_jsonpos *pos, char *text)
{
    struct sc_conf_error e = {.pos = *pos, .seq = ctx->nerrors++, .text = text};
    size_t n = ctx->nshown;
    if (n == SC_CONF_MAX_SHOWN) {
        if (!error_before(&e, &ctx->errors[n - 1])) {
            free(text);
            return;
        }
        free(ctx->errors[--n].text);
    }
    size_t k = n;
    for (; k > 0 && error_before(&e, &ctx->errors[k - 1]); k--)
        ctx->errors[k] = ctx->errors[k - 1];
    ctx->errors[k] = e;
    ctx->nshown = n + 1;
}

static void verror(struct sc_conf_ctx *ctx, enum sc_jsonpos_what what, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static void verror(struct sc_conf_ctx *ctx, enum sc_jsonpos_what what, const char *fmt, va_list ap)
{
    if (ctx->nerrors >= SC_CONF_MAX_LOCATE) {
        ctx->nerrors++;
        return;
    }
    struct sc_jsonpos pos;
    sc_jsonpos_find(ctx->text, ctx->len, ctx->path, ctx->depth, what, &pos);
    struct sc_buf b;
    sc_buf_init(&b, 0);
    if (ctx->depth) {
        render_path(&b, ctx->path, ctx->depth);
        put(&b, ": ");
    }
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        abort();
    put(&b, "%s", msg);
    free(msg);
    add_error(ctx, &pos, buf_take(&b));
}

void sc_conf_error(struct sc_conf_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(ctx, SC_JSONPOS_VALUE, fmt, ap);
    va_end(ap);
}

void sc_conf_error_key(struct sc_conf_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(ctx, SC_JSONPOS_KEY, fmt, ap);
    va_end(ap);
}

void sc_conf_error_at(struct sc_conf_ctx *ctx, const struct sc_jsonpos *pos, const char *fmt, ...)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    if (ctx->depth) {
        render_path(&b, ctx->path, ctx->depth);
        put(&b, ": ");
    }
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        abort();
    va_end(ap);
    put(&b, "%s", msg);
    free(msg);
    add_error(ctx, pos, buf_take(&b));
}

void sc_conf_format_errors(const struct sc_conf_ctx *ctx, char *buf, size_t size)
{
    if (size == 0)
        return;
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i <= ctx->nshown; i++) {
        char *line;
        if (i < ctx->nshown) {
            const struct sc_conf_error *e = &ctx->errors[i];
            line = sc_xasprintf("%s:%d:%d: %s\n", ctx->name, e->pos.line, e->pos.column, e->text);
        } else if (ctx->nerrors > ctx->nshown) {
            line = sc_xasprintf("%s: %zu more error%s not shown\n", ctx->name,
                                ctx->nerrors - ctx->nshown,
                                ctx->nerrors - ctx->nshown == 1 ? "" : "s");
        } else {
            break;
        }
        size_t n = strlen(line);
        bool fits = o + n < size; /* whole lines only */
        if (fits) {
            memcpy(buf + o, line, n + 1);
            o += n;
        }
        free(line);
        if (!fits)
            break;
    }
}

/* ---- values ------------------------------------------------------------------------------- */

static const char *type_name(const struct sc_conf_key *key)
{
    switch (key->type) {
    case SC_CONF_STRING:
        return "string";
    case SC_CONF_INT:
    case SC_CONF_INT64:
        return "integer";
    case SC_CONF_BOOL:
        return "boolean";
    case SC_CONF_ENUM:
    case SC_CONF_VARIANT:
        return "enum";
    case SC_CONF_DURATION:
        return "duration";
    case SC_CONF_STRLIST:
        return "array of strings";
    case SC_CONF_MAP:
        return key->flags & SC_CONF_SCALARS ? "object of strings / numbers / booleans"
                                            : "object of strings";
    case SC_CONF_OBJECT:
        return "object";
    case SC_CONF_ARRAY:
        return "array of objects";
    }
    return "?";
}

/*
 * The text of a JSON string, ${...} expanded and checked to be UTF-8 (a
 * file can hold anything).  Returns 0 with *out malloc'd, or -1 after
 * reporting the error.
 */
static int string_value(struct sc_conf_ctx *ctx, const json_t *v, char **out, size_t *outlen)
{
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (!sc_expand_needed(s, n)) {
        *out = sc_xmalloc(n + 1);
        memcpy(*out, s, n);
        (*out)[n] = '\0';
        *outlen = n;
        return 0;
    }
    char err[512];
    if (sc_expand(s, n, out, outlen, err, sizeof(err)) < 0) {
        sc_conf_error(ctx, "%s", err);
        return -1;
    }
    if (!utf8_valid(*out, *outlen)) {
        free(*out);
        *out = NULL;
        sc_conf_error(ctx, "is not valid UTF-8 after expansion");
        return -1;
    }
    return 0;
}

/*
 * What a value of the wrong type is, for "expected X (got Y)": a string
 * quoted (bounded), a number or literal as written, else its kind.
 */
static const char *json_got(char *buf, size_t size, const json_t *v)
{
    if (json_is_string(v))
        return sc_conf_quote(buf, size, json_string_value(v));
    if (json_is_integer(v))
        snprintf(buf, size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, size, "%g", json_real_value(v));
    else
        snprintf(buf, size, "%s",
                 json_is_true(v)     ? "true"
                 : json_is_false(v)  ? "false"
                 : json_is_null(v)   ? "null"
                 : json_is_object(v) ? "an object"
                                     : "an array");
    return buf;
}

/* A string for an INT/BOOL key, when it holds "${": expanded; else NULL (type error). */
static char *expanded_scalar(struct sc_conf_ctx *ctx, const json_t *v, bool *failed)
{
    *failed = false;
    if (!json_is_string(v) || !strstr(json_string_value(v), "${"))
        return NULL;
    char *s = NULL;
    size_t n = 0;
    if (string_value(ctx, v, &s, &n) < 0) {
        *failed = true;
        return NULL;
    }
    return s;
}

static int integer_value(struct sc_conf_ctx *ctx, const json_t *v, int64_t *x)
{
    if (json_is_integer(v)) {
        *x = json_integer_value(v);
        return 0;
    }
    bool failed;
    char *s = expanded_scalar(ctx, v, &failed);
    if (failed)
        return -1;
    char q[96];
    if (s) {
        int rc = parse_int_strict(s, x);
        if (rc < 0)
            sc_conf_error(ctx, "expected an integer after expansion (got %s)",
                          sc_conf_quote(q, sizeof(q), s));
        free(s);
        return rc;
    }
    int64_t tmp;
    if (json_is_string(v) && parse_int_strict(json_string_value(v), &tmp) == 0)
        sc_conf_error(ctx, "expected an integer (write %s without quotes)", json_string_value(v));
    else
        sc_conf_error(ctx, "expected an integer (got %s)", json_got(q, sizeof(q), v));
    return -1;
}

static int bool_value(struct sc_conf_ctx *ctx, const json_t *v, bool *b)
{
    if (json_is_boolean(v)) {
        *b = json_is_true(v);
        return 0;
    }
    bool failed;
    char *s = expanded_scalar(ctx, v, &failed);
    if (failed)
        return -1;
    int rc = -1;
    char q[96];
    if (s && (strcmp(s, "true") == 0 || strcmp(s, "false") == 0)) {
        *b = strcmp(s, "true") == 0;
        rc = 0;
    } else if (s) {
        sc_conf_error(ctx, "expected true or false after expansion (got %s)",
                      sc_conf_quote(q, sizeof(q), s));
    } else if (json_is_string(v) && (strcmp(json_string_value(v), "true") == 0 ||
                                     strcmp(json_string_value(v), "false") == 0)) {
        sc_conf_error(ctx, "expected true or false (write %s without quotes)",
                      json_string_value(v));
    } else {
        sc_conf_error(ctx, "expected true or false (got %s)", json_got(q, sizeof(q), v));
    }
    free(s);
    return rc;
}

static void enum_list(struct sc_buf *b, const struct sc_conf_enum *values, const char *sep)
{
    for (size_t i = 0; values[i].name; i++)
        put(b, "%s%s", i ? sep : "", values[i].name);
}

static const char *enum_name(const struct sc_conf_enum *values, int value)
{
    for (size_t i = 0; values[i].name; i++)
        if (values[i].value == value)
            return values[i].name;
    return NULL;
}

static int enum_lookup(const struct sc_conf_enum *values, const char *name, int *value)
{
    for (size_t i = 0; values[i].name; i++) {
        if (strcmp(values[i].name, name) == 0) {
            *value = values[i].value;
            return 0;
        }
    }
    return -1;
}

static int parse_default(const struct sc_conf_key *key, void *base)
{
    void *f = field_at(base, key->offset);
    int64_t x = 0;
    switch (key->type) {
    case SC_CONF_STRING:
        *(char **)f = key->def ? sc_xstrdup(key->def) : NULL;
        if (key->flags & SC_CONF_ALLOW_NUL)
            *(size_t *)field_at(base, key->aux_offset) = key->def ? strlen(key->def) : 0;
        return 0;
    case SC_CONF_INT:
    case SC_CONF_INT64:
        if (key->def && parse_int_strict(key->def, &x) < 0)
            return -1;
        if (key->def && (x < key->min || x > key->max))
            return -1;
        if (key->type == SC_CONF_INT)
            *(int *)f = (int)x;
        else
            *(int64_t *)f = x;
        return 0;
    case SC_CONF_BOOL:
        if (key->def && strcmp(key->def, "true") != 0 && strcmp(key->def, "false") != 0)
            return -1;
        *(bool *)f = key->def && strcmp(key->def, "true") == 0;
        return 0;
    case SC_CONF_ENUM:
        if (!key->def)
            return 0;
        return enum_lookup(key->values, key->def, (int *)f);
    case SC_CONF_DURATION:
        if (key->def && (sc_conf_parse_duration(key->def, &x) < 0 || x < key->min ||
                         (key->max && x > key->max)))
            return -1;
        *(int64_t *)f = x;
        return 0;
    case SC_CONF_STRLIST:
    case SC_CONF_MAP:
    case SC_CONF_OBJECT:
    case SC_CONF_ARRAY:
        return key->def ? -1 : 0; /* empty; OBJECT defaults come from its own table */
    case SC_CONF_VARIANT:
        return key->def ? -1 : 0; /* none chosen: a variant is named, never defaulted */
    }
    return -1;
}

static void check_count(struct sc_conf_ctx *ctx, const struct sc_conf_key *key, size_t n)
{
    if (key->min > 0 && n < (size_t)key->min) {
        if (key->min == 1)
            sc_conf_error(ctx, "must not be empty");
        else
            sc_conf_error(ctx, "must have at least %" PRId64 " items (got %zu)", key->min, n);
    } else if (key->max > 0 && n > (size_t)key->max) {
        sc_conf_error(ctx, "must have at most %" PRId64 " items (got %zu)", key->max, n);
    }
}

static int parse_string(struct sc_conf_ctx *ctx, const struct sc_conf_key *key, void *base,
                        const json_t *v)
{
    char **f = field_at(base, key->offset);
    if (json_is_null(v) && !(key->flags & SC_CONF_REQUIRED) && !key->def)
        return 0; /* an explicit null means "not set" */
    if (!json_is_string(v)) {
        char q[96];
        sc_conf_error(ctx, "expected a string (got %s)", json_got(q, sizeof(q), v));
        return -1;
    }
    char *s = NULL;
    size_t n = 0;
    if (string_value(ctx, v, &s, &n) < 0)
        return -1;
    int result = -1;
    if (!(key->flags & SC_CONF_ALLOW_NUL) && memchr(s, '\0', n)) {
        sc_conf_error(ctx, "must not contain a NUL character");
        goto out;
    }
    if (key->min > 0 && n < (size_t)key->min) {
        if (key->min == 1)
            sc_conf_error(ctx, "must not be empty");
        else
            sc_conf_error(ctx, "must be at least %" PRId64 " bytes long (got %zu)", key->min, n);
        goto out;
    }
    if (key->max > 0 && n > (size_t)key->max) {
        sc_conf_error(ctx, "must be at most %" PRId64 " bytes long (got %zu)", key->max, n);
        goto out;
    }
    *f = s;
    s = NULL;
    if (key->flags & SC_CONF_ALLOW_NUL)
        *(size_t *)field_at(base, key->aux_offset) = n;
    result = 0;
    if (key->check) {
        size_t before = ctx->nerrors;
        key->check(ctx, f);
        result = ctx->nerrors == before ? 0 : -1;
    }
out:
    free(s);
    return result;
}

static int parse_number(struct sc_conf_ctx *ctx, const struct sc_conf_key *key, void *base,
                        const json_t *v)
{
    int64_t x;
    if (integer_value(ctx, v, &x) < 0)
        return -1;
    if (x < key->min || x > key->max) {
        sc_conf_error(ctx, "must be between %" PRId64 " and %" PRId64 " (got %" PRId64 ")",
                      key->min, key->max, x);
        return -1;
    }
    if (key->type == SC_CONF_INT)
        *(int *)field_at(base, key->offset) = (int)x;
    else
        *(int64_t *)field_at(base, key->offset) = x;
    return 0;
}

static int parse_enum(struct sc_conf_ctx *ctx, const struct sc_conf_key *key, void *base,
                      const json_t *v)
{
    char *s = NULL;
    size_t n = 0;
    if (json_is_string(v) && string_value(ctx, v, &s, &n) < 0)
        return -1;
    int result = -1;
    if (s && enum_lookup(key->values, s, (int *)field_at(base, key->offset)) == 0) {
        result = 0;
    } else {
        struct sc_buf b;
        sc_buf_init(&b, 0);
        enum_list(&b, key->values, ", ");
        char *list = buf_take(&b);
        char q[96];
        if (s)
            sc_conf_error(ctx, "expected one of: %s (got %s)", list,
                          sc_conf_quote(q, sizeof(q), s));
        else
            sc_conf_error(ctx, "expected one of: %s", list);
        free(list);
    }
    free(s);
    return result;
}

/* The variant of ctx->variants called name, or NULL; the names listed in *list (malloc'd). */
static const struct sc_conf_variant *variant_lookup(const struct sc_conf_ctx *ctx, const char *name,
                                                    char **list)
{
    const struct sc_conf_variant *found = NULL, *v;
    struct sc_buf b;
    sc_buf_init(&b, 0);
    for (size_t i = 0; ctx->variants && (v = ctx->variants(i)) != NULL; i++) {
        put(&b, "%s%s", i ? ", " : "", v->name);
        if (name && strcmp(v->name, name) == 0)
            found = v;
    }
    *list = buf_take(&b);
    return found;
}

static int parse_variant(struct sc_conf_ctx *ctx, const struct sc_conf_key *key, void *base,
                         const json_t *v)
{
    char *s = NULL, *list = NULL;
    size_t n = 0;
    if (json_is_string(v) && string_value(ctx, v, &s, &n) < 0)
        return -1;
    struct sc_conf_choice *choice = field_at(base, key->offset);
    choice->variant = variant_lookup(ctx, s, &list);
    int result = choice->variant ? 0 : -1;
    char q[96];
    if (!choice->variant && s)
        sc_conf_error(ctx, "expected one of: %s (got %s)", list, sc_conf_quote(q, sizeof(q), s));
    else if (!choice->variant)
        sc_conf_error(ctx, "expected one of: %s", list);
    free(list);
    free(s);
    return result;
}

static int parse_duration(struct sc_conf_ctx *ctx, const struct sc_conf_key *key, void *base,
                          const json_t *v)
{
    int64_t ms = 0;
    char *s = NULL;
    size_t n = 0;
    int result = -1;
    char a[32], b[32];
    if (json_is_string(v) && string_value(ctx, v, &s, &n) < 0)
        return -1;
    if (json_is_integer(v)) {
        ms = json_integer_value(v);
    } else if (!s || sc_conf_parse_duration(s, &ms) < 0) {
        sc_conf_error(ctx, "expected a duration: milliseconds, or a string like \"90s\", "
                           "\"15m\", \"7d\" (units ms, s, m, h, d)");
        goto out;
    }
    if (ms < key->min) {
        if (ms < 0)
            sc_conf_error(ctx, "must be at least %s (got %" PRId64 ")",
                          sc_conf_format_duration(key->min, a, sizeof(a)), ms);
        else
            sc_conf_error(ctx, "must be at least %s (got %s)",
                          sc_conf_format_duration(key->min, a, sizeof(a)),
                          sc_conf_format_duration(ms, b, sizeof(b)));
        goto out;
    }
    if (key->max && ms > key->max) {
        sc_conf_error(ctx, "must be at most %s (got %s)",
                      sc_conf_format_duration(key->max, a, sizeof(a)),
                      sc_conf_format_duration(ms, b, sizeof(b)));
        goto out;
    }
    *(int64_t *)field_at(base, key->offset) = ms;
    result = 0;
out:
    free(s);
    return result;
}

static int parse_strlist(struct sc_conf_ctx *ctx, const struct sc_conf_key *key, void *base,
                         const json_t *v)
{
    struct sc_strlist *list = field_at(base, key->offset);
    if (!json_is_array(v)) {
        sc_conf_error(ctx, "expected an array of strings");
        return -1;
    }
    size_t before = ctx->nerrors, n = json_array_size(v);
    check_count(ctx, key, n);
    list->items = sc_xcalloc(n ? n : 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        const json_t *item = json_array_get(v, i);
        char *s = NULL;
        size_t len = 0;
        sc_conf_push_index(ctx, i);
        if (!json_is_string(item)) {
            char q[96];
            sc_conf_error(ctx, "expected a string (got %s)", json_got(q, sizeof(q), item));
        } else if (string_value(ctx, item, &s, &len) == 0) {
            size_t item_before = ctx->nerrors;
            if (memchr(s, '\0', len))
                sc_conf_error(ctx, "must not contain a NUL character");
            else if (key->check_item)
                key->check_item(ctx, NULL, s);
            for (size_t k = 0; (key->flags & SC_CONF_UNIQUE) && k < list->count; k++) {
                if (strcmp(list->items[k], s) == 0) {
                    char q[96];
                    sc_conf_error(ctx, "duplicate value %s (same as item [%zu])",
                                  sc_conf_quote(q, sizeof(q), s), k);
                    break;
                }
            }
            if (ctx->nerrors == item_before) {
                list->items[list->count++] = s;
                s = NULL;
            }
        }
        free(s);
        sc_conf_pop(ctx);
    }
    return ctx->nerrors == before ? 0 : -1;
}

/* The text form of a shortest-round-trip double. */
static char *real_text(double d)
{
    char buf[64];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    return sc_xstrdup(buf);
}

static int parse_map(struct sc_conf_ctx *ctx, const struct sc_conf_key *key, void *base,
                     const json_t *v)
{
    struct sc_kvlist *kv = field_at(base, key->offset);
    bool scalars = key->flags & SC_CONF_SCALARS;
    if (!json_is_object(v)) {
        sc_conf_error(ctx, "expected an object");
        return -1;
    }
    size_t before = ctx->nerrors, n = json_object_size(v);
    kv->items = sc_xcalloc(n ? n : 1, sizeof(*kv->items));
    const char *k;
    const json_t *item;
    json_object_foreach((json_t *)v, k, item)
    {
        char *s = NULL;
        size_t len = 0;
        sc_conf_push_key(ctx, k);
        if (json_is_string(item)) {
            if (string_value(ctx, item, &s, &len) == 0 && memchr(s, '\0', len)) {
                sc_conf_error(ctx, "must not contain a NUL character");
                free(s);
                s = NULL;
            }
        } else if (scalars && json_is_integer(item)) {
            s = sc_xasprintf("%" JSON_INTEGER_FORMAT, json_integer_value(item));
        } else if (scalars && json_is_real(item)) {
            s = real_text(json_real_value(item));
        } else if (scalars && json_is_boolean(item)) {
            s = sc_xstrdup(json_is_true(item) ? "true" : "false");
        } else {
            char q[96];
            sc_conf_error(ctx, "%s (got %s)",
                          scalars ? "expected a string, number or boolean" : "expected a string",
                          json_got(q, sizeof(q), item));
        }
        if (s) {
            size_t item_before = ctx->nerrors;
            if (key->check_item)
                key->check_item(ctx, k, s);
            if (ctx->nerrors == item_before) {
                kv->items[kv->count].key = sc_xstrdup(k);
                kv->items[kv->count++].value = s;
                s = NULL;
            }
        }
        free(s);
        sc_conf_pop(ctx);
    }
    return ctx->nerrors == before ? 0 : -1;
}

static int parse_array(struct sc_conf_ctx *ctx, const struct sc_conf_key *key, void *base,
                       const json_t *v)
{
    if (!json_is_array(v)) {
        sc_conf_error(ctx, "expected an array of objects");
        return -1;
    }
    size_t before = ctx->nerrors, n = json_array_size(v);
    check_count(ctx, key, n);
    char *items = sc_xcalloc(n ? n : 1, key->table->size);
    *(void **)field_at(base, key->offset) = items;
    *(size_t *)field_at(base, key->aux_offset) = n;
    for (size_t i = 0; i < n; i++) {
        const json_t *item = json_array_get(v, i);
        sc_conf_push_index(ctx, i);
        if (!json_is_object(item))
            sc_conf_error(ctx, "expected an object");
        else
            sc_conf_parse(ctx, key->table, items + i * key->table->size, item);
        sc_conf_pop(ctx);
    }
    return ctx->nerrors == before ? 0 : -1;
}

/* Parses v (present) into the key's field; the path points at the key.  0 when valid. */
static int parse_field(struct sc_conf_ctx *ctx, const struct sc_conf_key *key, void *base,
                       const json_t *v)
{
    size_t before = ctx->nerrors;
    int rc = -1;
    switch (key->type) {
    case SC_CONF_STRING:
        return parse_string(ctx, key, base, v); /* runs key->check itself */
    case SC_CONF_INT:
    case SC_CONF_INT64:
        rc = parse_number(ctx, key, base, v);
        break;
    case SC_CONF_BOOL:
        rc = bool_value(ctx, v, field_at(base, key->offset));
        break;
    case SC_CONF_ENUM:
        rc = parse_enum(ctx, key, base, v);
        break;
    case SC_CONF_DURATION:
        rc = parse_duration(ctx, key, base, v);
        break;
    case SC_CONF_STRLIST:
        rc = parse_strlist(ctx, key, base, v);
        break;
    case SC_CONF_MAP:
        rc = parse_map(ctx, key, base, v);
        break;
    case SC_CONF_OBJECT:
        if (!json_is_object(v)) {
            sc_conf_error(ctx, "expected an object");
            return -1;
        }
        sc_conf_parse(ctx, key->table, field_at(base, key->offset), v);
        rc = 0;
        break;
    case SC_CONF_ARRAY:
        rc = parse_array(ctx, key, base, v);
        break;
    case SC_CONF_VARIANT:
        rc = parse_variant(ctx, key, base, v);
        break;
    }
    if (rc == 0 && key->check)
        key->check(ctx, field_at(base, key->offset));
    return ctx->nerrors == before ? rc : -1;
}

static size_t count_keys(const struct sc_conf_key *keys)
{
    size_t n = 0;
    while (keys[n].name)
        n++;
    return n;
}

static const struct sc_conf_key *find_key(const struct sc_conf_key *keys, const char *name)
{
    for (size_t i = 0; keys && keys[i].name; i++)
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

/* Parses every key of keys from obj (NULL: all absent) into base; ok[i] = key i is valid. */
static void parse_keys(struct sc_conf_ctx *ctx, const struct sc_conf_key *keys, void *base,
                       const json_t *obj, bool *ok)
{
    for (size_t i = 0; keys[i].name; i++) {
        const struct sc_conf_key *key = &keys[i];
        const json_t *v = obj ? json_object_get(obj, key->name) : NULL;
        if (v) {
            sc_conf_push_key(ctx, key->name);
            ok[i] = parse_field(ctx, key, base, v) == 0;
            sc_conf_pop(ctx);
            continue;
        }
        ok[i] = !(key->flags & SC_CONF_REQUIRED);
        if (obj && (key->flags & SC_CONF_REQUIRED))
            sc_conf_error(ctx, "missing required key \"%s\"", key->name);
        if (key->type == SC_CONF_OBJECT) {
            sc_conf_push_key(ctx, key->name);
            sc_conf_parse(ctx, key->table, field_at(base, key->offset), NULL);
            sc_conf_pop(ctx);
        } else if (parse_default(key, base) < 0) {
            abort(); /* a broken table: sc_conf_table_selftest() catches this in the tests */
        }
    }
}

/* "Did you mean": the closest name within edit distance 2, else one that starts with name. */
static const char *suggest(const char *name, const struct sc_conf_key *a,
                           const struct sc_conf_key *b)
{
    const struct sc_conf_key *sets[2] = {a, b};
    const char *best = NULL, *prefix = NULL;
    size_t bestd = SIZE_MAX, nlen = strlen(name);
    for (size_t s = 0; s < 2; s++) {
        for (size_t i = 0; sets[s] && sets[s][i].name; i++) {
            const char *c = sets[s][i].name;
            size_t d = sc_edit_distance(name, c), clen = strlen(c);
            if (d < bestd) {
                bestd = d;
                best = c;
            }
            if (!prefix && ((nlen >= 3 && strncmp(c, name, nlen) == 0) ||
                            (clen >= 3 && strncmp(name, c, clen) == 0)))
                prefix = c;
        }
    }
    return bestd <= 2 && bestd < nlen ? best : prefix;
}

/* The table's VARIANT key, or NULL. */
static const struct sc_conf_key *variant_key(const struct sc_conf_table *t)
{
    for (size_t i = 0; t->keys[i].name; i++)
        if (t->keys[i].type == SC_CONF_VARIANT)
            return &t->keys[i];
    return NULL;
}

/* The name of a variant (other than chosen) that has key name, or NULL. */
static const char *other_variant(const struct sc_conf_ctx *ctx,
                                 const struct sc_conf_variant *chosen, const char *name)
{
    const struct sc_conf_variant *v;
    for (size_t i = 0; ctx->variants && (v = ctx->variants(i)) != NULL; i++)
        if (v != chosen && find_key(v->table->keys, name))
            return v->name;
    return NULL;
}

static void check_unknown(struct sc_conf_ctx *ctx, const struct sc_conf_table *t,
                          const struct sc_conf_key *vk, const struct sc_conf_variant *variant,
                          const json_t *obj)
{
    const char *k;
    const json_t *v;
    const struct sc_conf_key *vkeys = variant ? variant->table->keys : NULL;
    json_object_foreach((json_t *)obj, k, v)
    {
        if (find_key(t->keys, k) || find_key(vkeys, k))
            continue;
        const char *other = vk ? other_variant(ctx, variant, k) : NULL;
        if (other && !variant)
            continue; /* the selector itself is missing or invalid: already reported */
        const char *hint = suggest(k, t->keys, vkeys);
        struct sc_buf b;
        sc_buf_init(&b, 0);
        char q[256];
        put(&b, "unknown key %s", sc_conf_quote(q, sizeof(q), k));
        if (other)
            put(&b, " for %s \"%s\" (it is a key of %s \"%s\")", vk->name, variant->name, vk->name,
                other);
        if (hint)
            put(&b, "; did you mean \"%s\"?", hint);
        char *msg = buf_take(&b);
        sc_conf_push_key(ctx, k);
        sc_conf_error_key(ctx, "%s", msg);
        sc_conf_pop(ctx);
        free(msg);
    }
}

static void check_applies(struct sc_conf_ctx *ctx, const struct sc_conf_key *keys, void *base,
                          const json_t *obj)
{
    for (size_t i = 0; keys[i].name; i++) {
        if (!keys[i].applies || !json_object_get(obj, keys[i].name) || keys[i].applies(base))
            continue;
        sc_conf_push_key(ctx, keys[i].name);
        sc_conf_error(ctx, "%s",
                      keys[i].not_applicable ? keys[i].not_applicable : "does not apply here");
        sc_conf_pop(ctx);
    }
}

void sc_conf_parse(struct sc_conf_ctx *ctx, const struct sc_conf_table *table, void *base,
                   const json_t *obj)
{
    size_t before = ctx->nerrors;
    bool ok[MAX_KEYS], vok[MAX_KEYS];
    parse_keys(ctx, table->keys, base, obj, ok);

    const struct sc_conf_key *vk = variant_key(table);
    const struct sc_conf_variant *variant = NULL;
    struct sc_conf_choice *choice = vk ? field_at(base, vk->offset) : NULL;
    if (choice && choice->variant) {
        variant = choice->variant;
        choice->conf = sc_xcalloc(1, variant->table->size ? variant->table->size : 1);
        parse_keys(ctx, variant->table->keys, choice->conf, obj, vok);
    }
    /* "Does not apply" is judged on the parsed values, so only when they all parsed. */
    bool keys_clean = ctx->nerrors == before;
    if (obj) {
        check_unknown(ctx, table, vk, variant, obj);
        if (keys_clean)
            check_applies(ctx, table->keys, base, obj);
        if (keys_clean && variant)
            check_applies(ctx, variant->table->keys, choice->conf, obj);
    }
    if (variant && variant->table->check)
        variant->table->check(ctx, choice->conf, obj, keys_clean);
    if (table->check)
        table->check(ctx, base, obj, keys_clean);
}

/* ---- free, JSON, reference ---------------------------------------------------------------- */

static void free_keys(const struct sc_conf_key *keys, void *base)
{
    for (size_t i = 0; keys[i].name; i++) {
        const struct sc_conf_key *key = &keys[i];
        void *f = field_at(base, key->offset);
        switch (key->type) {
        case SC_CONF_STRING:
            free(*(char **)f);
            *(char **)f = NULL;
            break;
        case SC_CONF_STRLIST: {
            struct sc_strlist *l = f;
            for (size_t k = 0; k < l->count; k++)
                free(l->items[k]);
            free(l->items);
            memset(l, 0, sizeof(*l));
            break;
        }
        case SC_CONF_MAP: {
            struct sc_kvlist *kv = f;
            for (size_t k = 0; k < kv->count; k++) {
                free(kv->items[k].key);
                free(kv->items[k].value);
            }
            free(kv->items);
            memset(kv, 0, sizeof(*kv));
            break;
        }
        case SC_CONF_OBJECT:
            sc_conf_free(key->table, f);
            break;
        case SC_CONF_ARRAY: {
            char *items = *(char **)f;
            size_t n = *(size_t *)field_at(base, key->aux_offset);
            for (size_t k = 0; items && k < n; k++)
                sc_conf_free(key->table, items + k * key->table->size);
            free(items);
            *(char **)f = NULL;
            *(size_t *)field_at(base, key->aux_offset) = 0;
            break;
        }
        case SC_CONF_VARIANT: {
            struct sc_conf_choice *c = f;
            if (c->variant && c->conf)
                sc_conf_free(c->variant->table, c->conf);
            free(c->conf);
            memset(c, 0, sizeof(*c));
            break;
        }
        default:
            break;
        }
    }
}

void sc_conf_free(const struct sc_conf_table *table, void *base)
{
    if (!base)
        return;
    free_keys(table->keys, base);
}

static json_t *json_text(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    return j ? j : json_null();
}

static json_t *field_json(const struct sc_conf_key *key, const void *base)
{
    const void *f = cfield_at(base, key->offset);
    char buf[32];
    switch (key->type) {
    case SC_CONF_STRING: {
        const char *s = *(char *const *)f;
        if (!s)
            return json_null();
        if (key->mask) {
            char *m = key->mask(s);
            json_t *j = json_text(m, strlen(m));
            free(m);
            return j;
        }
        if (key->flags & SC_CONF_SECRET)
            return json_string(*s ? "****" : "");
        size_t n = key->flags & SC_CONF_ALLOW_NUL
                       ? *(const size_t *)cfield_at(base, key->aux_offset)
                       : strlen(s);
        return json_text(s, n);
    }
    case SC_CONF_INT:
        return json_integer(*(const int *)f);
    case SC_CONF_INT64:
        return json_integer(*(const int64_t *)f);
    case SC_CONF_BOOL:
        return json_boolean(*(const bool *)f);
    case SC_CONF_ENUM: {
        const char *name = enum_name(key->values, *(const int *)f);
        return name ? json_string(name) : json_null();
    }
    case SC_CONF_DURATION:
        return json_string(sc_conf_format_duration(*(const int64_t *)f, buf, sizeof(buf)));
    case SC_CONF_STRLIST: {
        const struct sc_strlist *l = f;
        json_t *a = json_array();
        for (size_t i = 0; i < l->count; i++)
            json_array_append_new(a, json_text(l->items[i], strlen(l->items[i])));
        return a;
    }
    case SC_CONF_MAP: {
        const struct sc_kvlist *kv = f;
        json_t *o = json_object();
        for (size_t i = 0; i < kv->count; i++) {
            const struct sc_kv *e = &kv->items[i];
            bool mask = (key->flags & SC_CONF_MASK_BY_NAME) && key->is_secret_name &&
                        key->is_secret_name(e->key) && *e->value;
            json_object_set_new(o, e->key,
                                mask ? json_string("****") : json_text(e->value, strlen(e->value)));
        }
        return o;
    }
    case SC_CONF_OBJECT:
        return sc_conf_to_json(key->table, f);
    case SC_CONF_ARRAY: {
        const char *items = *(char *const *)f;
        size_t n = *(const size_t *)cfield_at(base, key->aux_offset);
        json_t *a = json_array();
        for (size_t i = 0; items && i < n; i++)
            json_array_append_new(a, sc_conf_to_json(key->table, items + i * key->table->size));
        return a;
    }
    case SC_CONF_VARIANT: {
        const struct sc_conf_choice *c = f;
        return c->variant ? json_string(c->variant->name) : json_null();
    }
    }
    return json_null();
}

static void keys_json(json_t *obj, const struct sc_conf_key *keys, const void *base)
{
    for (size_t i = 0; keys[i].name; i++)
        if (!keys[i].applies || keys[i].applies(base))
            json_object_set_new(obj, keys[i].name, field_json(&keys[i], base));
}

json_t *sc_conf_to_json(const struct sc_conf_table *table, const void *base)
{
    json_t *obj = json_object();
    keys_json(obj, table->keys, base);
    const struct sc_conf_key *vk = variant_key(table);
    const struct sc_conf_choice *c = vk ? cfield_at(base, vk->offset) : NULL;
    if (c && c->variant && c->conf)
        keys_json(obj, c->variant->table->keys, c->conf);
    return obj;
}

/* Markdown table cells cannot hold '|' or newlines. */
static void put_cell(struct sc_buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            put(b, "\\|");
        else if (*s == '\n')
            put(b, " ");
        else
            put(b, "%c", *s);
    }
}

static void put_default(struct sc_buf *b, const struct sc_conf_key *key)
{
    if (key->flags & SC_CONF_REQUIRED) {
        put(b, "**required**");
    } else if (key->def_doc) {
        put_cell(b, key->def_doc);
    } else if (key->type == SC_CONF_OBJECT) {
        put(b, "(see below)");
    } else if (key->type == SC_CONF_STRLIST || key->type == SC_CONF_ARRAY) {
        put(b, "`[]`");
    } else if (key->type == SC_CONF_MAP) {
        put(b, "`{}`");
    } else if (!key->def) {
        put(b, "none");
    } else if (key->type == SC_CONF_STRING) {
        json_t *j = json_string(key->def);
        char *s = json_dumps(j, JSON_ENCODE_ANY);
        put(b, "`");
        put_cell(b, s ? s : "");
        put(b, "`");
        free(s);
        json_decref(j);
    } else {
        put(b, "`%s`", key->def);
    }
}

static void put_allowed(struct sc_buf *b, const struct sc_conf_key *key,
                        sc_conf_variants_fn variants)
{
    char x[32], y[32];
    switch (key->type) {
    case SC_CONF_STRING:
        if (key->min > 0 && key->max > 0)
            put(b, "%" PRId64 "..%" PRId64 " bytes", key->min, key->max);
        else if (key->max > 0)
            put(b, "at most %" PRId64 " bytes", key->max);
        else if (key->min == 1)
            put(b, "not empty");
        break;
    case SC_CONF_INT:
    case SC_CONF_INT64:
        put(b, "%" PRId64 "..%" PRId64, key->min, key->max);
        break;
    case SC_CONF_ENUM:
        for (size_t i = 0; key->values[i].name; i++)
            put(b, "%s`%s`", i ? ", " : "", key->values[i].name);
        break;
    case SC_CONF_VARIANT: {
        const struct sc_conf_variant *v;
        for (size_t i = 0; variants && (v = variants(i)) != NULL; i++)
            put(b, "%s`%s`", i ? ", " : "", v->name);
        break;
    }
    case SC_CONF_DURATION:
        put(b, "%s..%s", sc_conf_format_duration(key->min, x, sizeof(x)),
            key->max ? sc_conf_format_duration(key->max, y, sizeof(y)) : "");
        break;
    case SC_CONF_STRLIST:
    case SC_CONF_ARRAY: {
        const char *sep = "";
        if (key->max > 0) {
            put(b, "%" PRId64 "..%" PRId64 " items", key->min, key->max);
            sep = ", ";
        } else if (key->min > 0) {
            put(b, "at least %" PRId64 " item%s", key->min, key->min == 1 ? "" : "s");
            sep = ", ";
        }
        if (key->flags & SC_CONF_UNIQUE)
            put(b, "%sunique", sep);
        break;
    }
    default:
        break;
    }
}

static void reference_table(struct sc_buf *b, const struct sc_conf_table *t, const char *title,
                            const struct sc_conf_key *keys, sc_conf_variants_fn variants)
{
    put(b, "## %s\n\n", title);
    if (t->help)
        put(b, "%s\n\n", t->help);
    if (!keys[0].name) {
        put(b, "No other keys.\n\n");
        return;
    }
    put(b, "| Key | Type | Default | Allowed | Description |\n|---|---|---|---|---|\n");
    for (size_t i = 0; keys[i].name; i++) {
        const struct sc_conf_key *k = &keys[i];
        put(b, "| `%s` | %s%s | ", k->name, type_name(k),
            k->flags & SC_CONF_SECRET ? ", secret" : "");
        put_default(b, k);
        put(b, " | ");
        put_allowed(b, k, variants);
        put(b, " | ");
        put_cell(b, k->help ? k->help : "");
        if (k->applies && k->not_applicable) {
            put(b, "; ");
            put_cell(b, k->not_applicable);
        }
        put(b, " |\n");
    }
    put(b, "\n");
}

static void reference_below(struct sc_buf *b, const struct sc_conf_key *keys,
                            sc_conf_variants_fn variants)
{
    for (size_t i = 0; keys[i].name; i++)
        if (keys[i].type == SC_CONF_OBJECT || keys[i].type == SC_CONF_ARRAY)
            sc_conf_reference(keys[i].table, variants, b);
}

void sc_conf_reference(const struct sc_conf_table *table, sc_conf_variants_fn variants,
                       struct sc_buf *out)
{
    char *title = sc_xasprintf("`%s`", table->name && *table->name ? table->name : "(top level)");
    reference_table(out, table, title, table->keys, variants);
    free(title);
    reference_below(out, table->keys, variants);
    const struct sc_conf_key *vk = variant_key(table);
    const struct sc_conf_variant *v;
    for (size_t i = 0; vk && variants && (v = variants(i)) != NULL; i++) {
        char *vt = sc_xasprintf("`%s` with `%s`: `%s`", table->name, vk->name, v->name);
        reference_table(out, v->table, vt, v->table->keys, variants);
        free(vt);
        reference_below(out, v->table->keys, variants);
    }
}

int sc_conf_table_selftest(const struct sc_conf_table *table, sc_conf_variants_fn variants,
                           char *err, size_t errsize)
{
    const struct sc_conf_key *keys = table->keys;
    if (count_keys(keys) >= MAX_KEYS) {
        snprintf(err, errsize, "%s: more than %d keys", table->name, MAX_KEYS - 1);
        return -1;
    }
    for (size_t i = 0; keys[i].name; i++) {
        const struct sc_conf_key *k = &keys[i];
        union {
            char *s;
            int64_t i64;
            int i;
            bool b;
            struct sc_strlist l;
            struct sc_kvlist kv;
            void *p;
        } scratch[2];
        memset(scratch, 0, sizeof(scratch));
        struct sc_conf_key probe = *k;
        probe.offset = 0;
        probe.aux_offset = sizeof(scratch[0]);
        bool bad = false;
        if (k->type == SC_CONF_ENUM && !k->values)
            bad = true;
        else if ((k->type == SC_CONF_OBJECT || k->type == SC_CONF_ARRAY) && !k->table)
            bad = true;
        else if (k->type != SC_CONF_OBJECT && parse_default(&probe, scratch) < 0)
            bad = true;
        if (k->type == SC_CONF_STRING) {
            size_t n = scratch[0].s ? strlen(scratch[0].s) : 0;
            if (k->def &&
                ((k->min > 0 && n < (size_t)k->min) || (k->max > 0 && n > (size_t)k->max)))
                bad = true;
            free(scratch[0].s);
        }
        if (bad) {
            snprintf(err, errsize, "%s.%s: invalid default or description", table->name, k->name);
            return -1;
        }
        if ((k->type == SC_CONF_OBJECT || k->type == SC_CONF_ARRAY) &&
            sc_conf_table_selftest(k->table, variants, err, errsize) < 0)
            return -1;
    }
    const struct sc_conf_key *vk = variant_key(table);
    const struct sc_conf_variant *v;
    for (size_t i = 0; vk && variants && (v = variants(i)) != NULL; i++) {
        for (size_t k = 0; k < i; k++)
            if (strcmp(variants(k)->name, v->name) == 0) {
                snprintf(err, errsize, "%s: two variants named \"%s\"", table->name, v->name);
                return -1;
            }
        if (!v->table || !v->table->keys) {
            snprintf(err, errsize, "%s: variant \"%s\" has no key table", table->name, v->name);
            return -1;
        }
        if (sc_conf_table_selftest(v->table, variants, err, errsize) < 0)
            return -1;
    }
    return 0;
}
