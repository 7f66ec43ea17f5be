/*
 * sc_conf - a declarative key-table engine for JSON configuration.
 *
 * A struct is described by a table of keys {name, type, default, offsetof,
 * min, max, enum values, flags, help}; the engine parses a jansson object
 * into the struct (expanding ${...} in strings, applying defaults, checking
 * types and ranges, rejecting unknown keys with a "did you mean"), renders
 * the struct back as JSON with secrets masked, frees it, and prints the
 * tables as a Markdown reference.  Everything specific to the sidecar's
 * keys lives in sc_config.c; nothing here knows about Kafka or PostgreSQL.
 *
 * Errors are collected, not fatal: each one is located in the source text
 * (sc_jsonpos) and kept in document order, so a user sees every problem of
 * a file at once as "FILE:LINE:COL: JSON.PATH: message".
 *
 * @locality one thread per sc_conf_ctx; tables are const and shared.
 */
#ifndef SC_CONF_H
#define SC_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "config/sc_jsonpos.h"

struct sc_buf;
struct sc_conf_ctx;
struct sc_conf_table;

/* A list of strings (e.g. topics): a STRLIST value. */
struct sc_strlist {
    char **items;
    size_t count;
};

/* An ordered string map (e.g. kafka properties, HTTP headers): a MAP value. */
struct sc_kv {
    char *key;
    char *value;
};
struct sc_kvlist {
    struct sc_kv *items;
    size_t count;
};

/* Returns the value of key in kv, or NULL. */
const char *sc_kvlist_get(const struct sc_kvlist *kv, const char *key);

/*
 * A variant of a table, chosen by the name given to the table's VARIANT key
 * (e.g. the sink "file" of "sink": {"type": "file", ...}): its own keys, in
 * a struct of table->size bytes the engine allocates.  Variants are not
 * known to the table that chooses between them; the layer that defines them
 * lists them (struct sc_conf_ctx.variants), so a new variant is added
 * without touching the configuration code.
 */
struct sc_conf_variant {
    const char *name;
    const struct sc_conf_table *table;
};

/* The value of a VARIANT key: the chosen variant and its struct (NULL until chosen). */
struct sc_conf_choice {
    const struct sc_conf_variant *variant;
    void *conf;
};

/* The i-th variant a VARIANT key may choose, or NULL past the last one. */
typedef const struct sc_conf_variant *(*sc_conf_variants_fn)(size_t i);

enum sc_conf_type {
    SC_CONF_STRING,   /* char *; min..max = length in bytes (max 0: no limit) */
    SC_CONF_INT,      /* int; min..max = value */
    SC_CONF_INT64,    /* int64_t; min..max = value */
    SC_CONF_BOOL,     /* bool */
    SC_CONF_ENUM,     /* int: the .value of one of .values, given by its name */
    SC_CONF_DURATION, /* int64_t ms: an integer (ms) or "<n>ms|s|m|h|d"; min..max in ms */
    SC_CONF_STRLIST,  /* struct sc_strlist: array of strings; min..max = item count */
    SC_CONF_MAP,      /* struct sc_kvlist: object of strings, in document order */
    SC_CONF_OBJECT,   /* the struct described by .table, at .offset */
    SC_CONF_ARRAY,    /* array of .table structs: pointer at .offset, size_t count at .aux_offset */
    SC_CONF_VARIANT,  /* struct sc_conf_choice: a variant's name, then that variant's keys are
                         the table's too (at most one VARIANT key per table) */
};

enum {
    SC_CONF_REQUIRED = 1u << 0,     /* absence is an error */
    SC_CONF_SECRET = 1u << 1,       /* masked by sc_conf_to_json(); never quoted in errors */
    SC_CONF_ALLOW_NUL = 1u << 2,    /* STRING may contain NUL: size_t length at .aux_offset */
    SC_CONF_SCALARS = 1u << 3,      /* MAP values may be numbers or booleans (kept as text) */
    SC_CONF_MASK_BY_NAME = 1u << 4, /* MAP values are masked when .is_secret_name(key) */
    SC_CONF_UNIQUE = 1u << 5,       /* STRLIST items must be unique */
};

/* One name of an ENUM key and the int stored for it. */
struct sc_conf_enum {
    const char *name;
    int value;
};

/* Validates a parsed field (field points into the struct); reports with sc_conf_error(). */
typedef void (*sc_conf_check_fn)(struct sc_conf_ctx *ctx, void *field);
/*
 * Validates one STRLIST item (key NULL) or MAP entry; the context's path
 * points at it.  value has value_len bytes (MAP values never contain NUL).
 */
typedef void (*sc_conf_item_fn)(struct sc_conf_ctx *ctx, const char *key, const char *value);
/* Whether a key is meaningful given the rest of the struct (base = the table's struct). */
typedef bool (*sc_conf_applies_fn)(const void *base);
/*
 * Cross-key validation and computed defaults, after every key of a table was
 * parsed; clean is false when some value of the object (or below) was invalid.
 */
typedef void (*sc_conf_table_fn)(struct sc_conf_ctx *ctx, void *base, const json_t *obj,
                                 bool clean);

struct sc_conf_key {
    const char *name;
    enum sc_conf_type type;
    const char *def; /* default, as text ("5000", "info", "7d"); NULL: none / empty */
    size_t offset;   /* offsetof() in the table's struct */
    int64_t min, max;
    const struct sc_conf_enum *values; /* ENUM: terminated by {NULL} */
    unsigned flags;
    const char *help;

    const struct sc_conf_table *table; /* OBJECT, ARRAY */
    size_t aux_offset;                 /* ARRAY: size_t count; ALLOW_NUL: size_t length */
    const char *def_doc;               /* default as documented, when computed at load time */
    sc_conf_check_fn check;
    sc_conf_item_fn check_item;       /* STRLIST items, MAP entries */
    sc_conf_applies_fn applies;       /* NULL: always applies */
    const char *not_applicable;       /* error when set but !applies: "only applies to ..." */
    char *(*mask)(const char *value); /* STRING: malloc'd printable form (SECRET default "****") */
    bool (*is_secret_name)(const char *name); /* MASK_BY_NAME */
};

struct sc_conf_table {
    const char *name; /* the path in the reference, e.g. "pipelines[].sink" */
    const char *help;
    size_t size;                    /* sizeof the struct (ARRAY elements) */
    const struct sc_conf_key *keys; /* terminated by {NULL} */
    sc_conf_table_fn check;         /* after the keys and, if any, the chosen variant's check */
};

/* ---- loading ------------------------------------------------------------------------------ */

#define SC_CONF_MAX_DEPTH  32   /* nesting of configuration paths */
#define SC_CONF_MAX_SHOWN  20   /* errors printed; the others are counted */
#define SC_CONF_MAX_LOCATE 1000 /* errors located in the text (each lookup scans it) */

struct sc_conf_error {
    struct sc_jsonpos pos;
    size_t seq;
    char *text; /* "json.path: message" or "message" */
};

struct sc_conf_ctx {
    const char *name; /* the file name, exactly as given */
    const char *text; /* the source text */
    size_t len;
    struct sc_jsonpos_seg path[SC_CONF_MAX_DEPTH];
    size_t depth;
    size_t overflow; /* pushes beyond SC_CONF_MAX_DEPTH (not recorded) */
    struct sc_conf_error errors[SC_CONF_MAX_SHOWN]; /* the first ones in document order */
    size_t nshown;
    size_t nerrors;               /* all errors */
    sc_conf_variants_fn variants; /* what VARIANT keys may choose (NULL: nothing) */
};

void sc_conf_ctx_init(struct sc_conf_ctx *ctx, const char *name, const char *text, size_t len);
void sc_conf_ctx_free(struct sc_conf_ctx *ctx);

/* Parses obj (an object; NULL = absent: defaults only) into base as described by table. */
void sc_conf_parse(struct sc_conf_ctx *ctx, const struct sc_conf_table *table, void *base,
                   const json_t *obj);

/* Path handling for checks: keys must outlive the ctx's use of them. */
void sc_conf_push_key(struct sc_conf_ctx *ctx, const char *key);
void sc_conf_push_index(struct sc_conf_ctx *ctx, size_t index);
void sc_conf_pop(struct sc_conf_ctx *ctx);

/* Reports an error at the value of the current path (or its nearest existing ancestor). */
void sc_conf_error(struct sc_conf_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Same, at the member name of the current path's last segment. */
void sc_conf_error_key(struct sc_conf_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* An error at an explicit position (e.g. invalid JSON), with the current path if any. */
void sc_conf_error_at(struct sc_conf_ctx *ctx, const struct sc_jsonpos *pos, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Writes the errors, one "NAME:LINE:COL: PATH: message" line each, in
 * document order, into buf (truncated at a line boundary when too small).
 */
void sc_conf_format_errors(const struct sc_conf_ctx *ctx, char *buf, size_t size);

/* Writes s into buf as a quoted, escaped, possibly shortened string for messages. */
const char *sc_conf_quote(char *buf, size_t size, const char *s);

/* Parses a duration ("250", "90s", "7d" ...) into ms; -1 when invalid. */
int sc_conf_parse_duration(const char *s, int64_t *ms);
/* Formats ms as the largest exact unit ("7d", "90s", "1500ms") into buf. */
const char *sc_conf_format_duration(int64_t ms, char *buf, size_t size);

/* ---- using the result --------------------------------------------------------------------- */

/* Frees every string, list and array the table's keys own in base (not base itself). */
void sc_conf_free(const struct sc_conf_table *table, void *base);

/* The struct as a JSON object in table order, defaults included, secrets masked. */
json_t *sc_conf_to_json(const struct sc_conf_table *table, const void *base);

/* Appends a Markdown reference of table (and the tables below it, and of each of
 * variants for a VARIANT key) to out. */
void sc_conf_reference(const struct sc_conf_table *table, sc_conf_variants_fn variants,
                       struct sc_buf *out);

/*
 * Checks a table's own consistency (every default parses and is in range,
 * every variant's value is an ENUM value): 0, or -1 with a message in err.
 * For unit tests; a broken table is a programming error.
 */
int sc_conf_table_selftest(const struct sc_conf_table *table, sc_conf_variants_fn variants,
                           char *err, size_t errsize);

#endif
