/*
 * sc_config.c - the sidecar's configuration: every key, its type, default,
 * range and help text is in the tables in this file and nowhere else; the
 * engine in sc_conf.c parses, prints, frees and documents from them.
 *
 * Validation that a table cannot express (identifier syntax, DSN syntax,
 * placeholders, cross-key rules) is in the check functions just above the
 * tables.  None of them puts a secret into an error message: DSN errors
 * from libpq are scrubbed of quoted fragments, and checks on secret keys
 * never quote the value.
 */
#include "config/sc_config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "base/sc_log.h"
#include "base/sc_util.h"
#include "config/sc_conf.h"
#include "config/sc_expand.h"

#define MAX_CONFIG_BYTES (4 * 1024 * 1024)

#define MS_MINUTE INT64_C(60000)
#define MS_DAY    INT64_C(86400000)

/* ---- small helpers ------------------------------------------------------------------------ */

static void buf_puts(struct sc_buf *b, const char *s, size_t n)
{
    if (sc_buf_append(b, s, n) < 0) /* no maximum: only an overflow could fail */
        abort();
}

static char *buf_take(struct sc_buf *b)
{
    buf_puts(b, "", 1);
    char *s = b->data;
    b->data = NULL;
    b->len = b->cap = 0;
    return s;
}

static bool is_ident(const char *s, size_t n)
{
    if (n == 0 || n > 63 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

static bool instance_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= ' ' || *p == 0x7F)
            return false;
    return true;
}

bool sc_config_key_is_secret(const char *name)
{
    static const char *const words[] = {
        "password", "passwd",        "secret",     "token",  "apikey",      "api_key",
        "api-key",  "authorization", "credential", "cookie", "private_key", "private-key",
    };
    static const char *const exact[] = {"sasl.oauthbearer.config", "ssl.key.pem", "ssl_key"};
    if (!name)
        return false;
    for (size_t i = 0; i < SC_ARRAY_LEN(exact); i++)
        if (strcasecmp(name, exact[i]) == 0)
            return true;
    for (size_t i = 0; i < SC_ARRAY_LEN(words); i++)
        if (strcasestr(name, words[i]))
            return true;
    return false;
}

const char *sc_kvlist_get(const struct sc_kvlist *kv, const char *key)
{
    for (size_t i = 0; kv && i < kv->count; i++)
        if (strcmp(kv->items[i].key, key) == 0)
            return kv->items[i].value;
    return NULL;
}

/* ---- DSNs: checking and masking, without ever showing a password -------------------------- */

static bool is_conninfo_keyword(const char *s, size_t n)
{
    /* Parsing "" lists every keyword this libpq knows, without reading the environment. */
    PQconninfoOption *opts = PQconninfoParse("", NULL);
    bool found = false;
    for (PQconninfoOption *o = opts; o && o->keyword && !found; o++)
        found = strlen(o->keyword) == n && memcmp(o->keyword, s, n) == 0;
    PQconninfoFree(opts);
    return found;
}

/*
 * libpq's first error line with every quoted fragment that could hold part
 * of the DSN replaced by "...": libpq quotes whole URIs and percent-decoded
 * passwords in some of its messages.  Kept: one-character fragments ("="),
 * libpq's own keywords, and the option name of "invalid connection option".
 */
static char *scrub_libpq_error(const char *msg)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    size_t n = strcspn(msg, "\n");
    bool option = strncmp(msg, "invalid connection option", 25) == 0;
    for (size_t i = 0; i < n; i++) {
        const char *close = msg[i] == '"' ? memchr(msg + i + 1, '"', n - i - 1) : NULL;
        if (!close) {
            buf_puts(&b, msg + i, 1);
            continue;
        }
        const char *in = msg + i + 1;
        size_t len = (size_t)(close - in);
        if (len <= 1 || is_conninfo_keyword(in, len) || (option && is_ident(in, len)))
            buf_puts(&b, msg + i, len + 2);
        else
            buf_puts(&b, "\"...\"", 5);
        i += len + 1;
    }
    return buf_take(&b);
}

static void check_dsn(struct sc_conf_ctx *ctx, void *field)
{
    const char *dsn = *(char **)field;
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn, &err);
    if (!opts) {
        char *reason = err ? scrub_libpq_error(err) : sc_xstrdup("out of memory");
        sc_conf_error(ctx, "invalid DSN: %s", reason);
        free(reason);
    }
    PQconninfoFree(opts);
    PQfreemem(err);
}

static bool is_secret_dsn_key(const char *k, size_t n)
{
    return (n == 8 && memcmp(k, "password", 8) == 0) ||
           (n == 11 && memcmp(k, "sslpassword", 11) == 0);
}

static bool is_uri(const char *dsn)
{
    return strncmp(dsn, "postgresql://", 13) == 0 || strncmp(dsn, "postgres://", 11) == 0;
}

/* postgresql://user:PASSWORD@host/db?password=PASSWORD - split like libpq does. */
static void mask_uri(const char *dsn, struct sc_buf *b)
{
    const char *start = strstr(dsn, "://") + 3, *p = start;
    buf_puts(b, dsn, (size_t)(start - dsn));
    while (*p && *p != '@' && *p != '/')
        p++;
    if (*p == '@') {
        const char *colon = memchr(start, ':', (size_t)(p - start));
        if (colon) {
            buf_puts(b, start, (size_t)(colon + 1 - start));
            buf_puts(b, "****", 4);
        } else {
            buf_puts(b, start, (size_t)(p - start));
        }
        start = p;
    }
    const char *q = strchr(start, '?');
    if (!q) {
        buf_puts(b, start, strlen(start));
        return;
    }
    buf_puts(b, start, (size_t)(q + 1 - start));
    for (p = q + 1; *p;) {
        size_t len = strcspn(p, "&"), klen = strcspn(p, "=&");
        if (klen < len && is_secret_dsn_key(p, klen)) {
            buf_puts(b, p, klen + 1);
            buf_puts(b, "****", 4);
        } else {
            buf_puts(b, p, len);
        }
        p += len;
        if (*p == '&')
            buf_puts(b, p++, 1);
    }
}

/* key=value form, tokenised like libpq's conninfo_parse(). */
static void mask_keyvalue(const char *dsn, struct sc_buf *b)
{
    const char *p = dsn;
    while (*p) {
        const char *s = p;
        while (isspace((unsigned char)*p))
            p++;
        const char *k = p;
        while (*p && *p != '=' && !isspace((unsigned char)*p))
            p++;
        size_t klen = (size_t)(p - k);
        while (isspace((unsigned char)*p))
            p++;
        if (*p != '=') {
            buf_puts(b, s, strlen(s));
            return;
        }
        p++;
        while (isspace((unsigned char)*p))
            p++;
        buf_puts(b, s, (size_t)(p - s));
        const char *v = p;
        if (*p == '\'') {
            for (p++; *p && *p != '\''; p++)
                if (*p == '\\' && p[1])
                    p++;
            if (*p)
                p++;
        } else {
            for (; *p && !isspace((unsigned char)*p); p++)
                if (*p == '\\' && p[1])
                    p++;
        }
        if (is_secret_dsn_key(k, klen))
            buf_puts(b, "****", 4);
        else
            buf_puts(b, v, (size_t)(p - v));
    }
}

/* Does dsn parse with no password other than "****"? */
static bool dsn_is_masked(const char *dsn)
{
    PQconninfoOption *opts = PQconninfoParse(dsn, NULL);
    bool ok = opts != NULL;
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (o->val && is_secret_dsn_key(o->keyword, strlen(o->keyword)) &&
            strcmp(o->val, "****") != 0)
            ok = false;
    PQconninfoFree(opts);
    return ok;
}

/*
 * dsn with its passwords replaced by "****", keeping its form.  Should the
 * textual masking ever miss (a percent-encoded keyword in a URI, say), the
 * DSN is rebuilt from libpq's own parse instead, which cannot miss.
 */
static char *dsn_mask(const char *dsn)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    if (is_uri(dsn))
        mask_uri(dsn, &b);
    else
        mask_keyvalue(dsn, &b);
    char *masked = buf_take(&b);
    if (dsn_is_masked(masked))
        return masked;
    free(masked);
    sc_buf_init(&b, 0);
    PQconninfoOption *opts = PQconninfoParse(dsn, NULL);
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (!o->val)
            continue;
        if (b.len)
            buf_puts(&b, " ", 1);
        buf_puts(&b, o->keyword, strlen(o->keyword));
        buf_puts(&b, "='", 2);
        const char *v = is_secret_dsn_key(o->keyword, strlen(o->keyword)) ? "****" : o->val;
        for (; *v; v++) {
            if (*v == '\'' || *v == '\\')
                buf_puts(&b, "\\", 1);
            buf_puts(&b, v, 1);
        }
        buf_puts(&b, "'", 1);
    }
    PQconninfoFree(opts);
    return buf_take(&b);
}

/* https://user:PASSWORD@host/ -> https://user:****@host/ (a lone user part may be a token). */
static char *url_mask(const char *url)
{
    const char *start = strstr(url, "://");
    if (!start)
        return sc_xstrdup(url);
    start += 3;
    size_t auth = strcspn(start, "/?#");
    const char *at = NULL;
    for (size_t i = 0; i < auth; i++)
        if (start[i] == '@')
            at = start + i;
    if (!at)
        return sc_xstrdup(url);
    const char *colon = memchr(start, ':', (size_t)(at - start));
    const char *cut = colon ? colon + 1 : start;
    return sc_xasprintf("%.*s****%s", (int)(cut - url), url, at);
}

/* ---- value checks ------------------------------------------------------------------------- */

static void check_instance_id(struct sc_conf_ctx *ctx, void *field)
{
    if (!instance_id_valid(*(char **)field))
        sc_conf_error(ctx, "must be 1 to 128 printable characters without whitespace");
}

static void check_ident(struct sc_conf_ctx *ctx, void *field)
{
    const char *s = *(char **)field;
    char q[96];
    if (!is_ident(s, strlen(s)))
        sc_conf_error(ctx,
                      "must be an identifier of 1 to 63 letters, digits or \"_\", not starting "
                      "with a digit (got %s)",
                      sc_conf_quote(q, sizeof(q), s));
}

static const struct {
    const char *name;
    const char *hint;
} managed_properties[] = {
    {"group.id", "use pipelines[].group_id"},
    {"bootstrap.servers", "use kafka.bootstrap.servers"},
    {"metadata.broker.list", "use kafka.bootstrap.servers"},
    {"enable.auto.commit", "offsets are committed after each checkpoint"},
    {"auto.commit.enable", "offsets are committed after each checkpoint"},
    {"enable.auto.offset.store", "offsets are stored after each checkpoint"},
    {"enable.partition.eof", "the consumer needs its own setting"},
    {"auto.offset.reset", "use pipelines[].start_from"},
};

/* The librdkafka property closest to name, for a "did you mean" (malloc'd, or NULL). */
static char *rdkafka_suggest(const char *name)
{
    char *text = NULL, *best = NULL;
    size_t textlen = 0, bestd = 3;
    FILE *f = open_memstream(&text, &textlen);
    if (!f)
        return NULL;
    rd_kafka_conf_properties_show(f);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    /* Rows look like "fetch.wait.max.ms      |  C  | 0 .. 300000 | ...". */
    for (const char *line = text; line && *line;) {
        size_t n = strspn(line, "abcdefghijklmnopqrstuvwxyz0123456789._");
        if (n > 0 && n <= 64 && line[n] == ' ') {
            char prop[65];
            memcpy(prop, line, n);
            prop[n] = '\0';
            size_t d = sc_edit_distance(name, prop);
            if (d < bestd) {
                bestd = d;
                free(best);
                best = sc_xstrdup(prop);
            }
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    free(text);
    return best;
}

/* kafka.properties and pipelines[].kafka_properties: not managed, and known to librdkafka. */
static void check_kafka_property(struct sc_conf_ctx *ctx, const char *key, const char *value)
{
    char q[128];
    for (size_t i = 0; i < SC_ARRAY_LEN(managed_properties); i++) {
        if (strcmp(key, managed_properties[i].name) == 0) {
            sc_conf_error_key(ctx, "property %s is managed by the sidecar: %s",
                              sc_conf_quote(q, sizeof(q), key), managed_properties[i].hint);
            return;
        }
    }
    if (strcmp(key, "plugin.library.paths") == 0)
        return; /* setting it loads the plugins: leave that to the consumer */
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512] = "";
    rd_kafka_conf_res_t res = rd_kafka_conf_set(conf, key, value, err, sizeof(err));
    rd_kafka_conf_destroy(conf);
    err[strcspn(err, "\n")] = '\0';
    if (res == RD_KAFKA_CONF_UNKNOWN) {
        char *hint = rdkafka_suggest(key);
        sc_conf_error_key(ctx, "unknown librdkafka property %s%s%s%s",
                          sc_conf_quote(q, sizeof(q), key), hint ? "; did you mean \"" : "",
                          hint ? hint : "", hint ? "\"?" : "");
        free(hint);
    } else if (res != RD_KAFKA_CONF_OK) {
        /* librdkafka quotes the value in some messages: not for a secret. */
        if (sc_config_key_is_secret(key))
            sc_conf_error(ctx, "invalid value for librdkafka property %s",
                          sc_conf_quote(q, sizeof(q), key));
        else
            sc_conf_error(ctx, "%s", err);
    }
}

static void check_pipeline_name(struct sc_conf_ctx *ctx, void *field)
{
    const char *s = *(char **)field;
    size_t n = strlen(s);
    bool ok = n >= 1 && n <= 63 && isalnum((unsigned char)s[0]);
    for (size_t i = 1; ok && i < n; i++)
        ok = isalnum((unsigned char)s[i]) || strchr("._-", s[i]);
    char q[96];
    if (!ok)
        sc_conf_error(ctx,
                      "must be 1 to 63 letters, digits, \".\", \"_\" or \"-\", starting with a "
                      "letter or digit (got %s)",
                      sc_conf_quote(q, sizeof(q), s));
}

static void check_topic(struct sc_conf_ctx *ctx, const char *key, const char *s)
{
    size_t n = strlen(s);
    bool ok = n >= 1 && n <= 249 && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
    for (size_t i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)s[i]) || strchr("._-", s[i]);
    char q[96];
    if (!ok)
        sc_conf_error(ctx,
                      "invalid topic name %s: use 1 to 249 letters, digits, \".\", \"_\" or "
                      "\"-\" (not \".\" or \"..\")",
                      sc_conf_quote(q, sizeof(q), s));
}

static void check_listen(struct sc_conf_ctx *ctx, void *field)
{
    const char *s = *(char **)field;
    if (!*s)
        return; /* disabled */
    const char *host = s, *port;
    size_t hlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        host = s + 1;
        hlen = close ? (size_t)(close - host) : 0;
        port = close && close[1] == ':' ? close + 2 : NULL;
    } else {
        const char *colon = strrchr(s, ':');
        hlen = colon ? (size_t)(colon - s) : 0;
        port = colon ? colon + 1 : NULL;
        if (colon && memchr(s, ':', hlen)) {
            sc_conf_error(ctx, "an IPv6 address needs brackets, e.g. \"[::1]:9644\"");
            return;
        }
    }
    bool ok = hlen > 0 && port && *port && strlen(port) <= 5 &&
              strspn(port, "0123456789") == strlen(port);
    for (size_t i = 0; ok && i < hlen; i++)
        ok = isalnum((unsigned char)host[i]) || strchr(s[0] == '[' ? ":.%" : ".-_", host[i]);
    char q[96];
    if (!ok) {
        sc_conf_error(ctx,
                      "expected \"host:port\" (e.g. \"127.0.0.1:9644\", \"[::1]:9644\"), or \"\" "
                      "to disable (got %s)",
                      sc_conf_quote(q, sizeof(q), s));
        return;
    }
    long p = strtol(port, NULL, 10);
    if (p > 65535)
        sc_conf_error(ctx, "port must be between 0 and 65535 (got %ld)", p);
}

static const char *const file_placeholders[] = {"{pipeline}", "{topic}", "{partition}"};

static void check_file_path(struct sc_conf_ctx *ctx, void *field)
{
    const char *path = *(char **)field;
    bool partition = false;
    char q[96];
    for (const char *s = path; (s = strchr(s, '{')) != NULL;) {
        const char *e = strchr(s, '}');
        if (!e) {
            sc_conf_error(ctx, "unterminated placeholder \"{\" (use {pipeline}, {topic} and "
                               "{partition})");
            return;
        }
        size_t n = (size_t)(e - s) + 1;
        bool known = false;
        for (size_t i = 0; i < SC_ARRAY_LEN(file_placeholders); i++)
            if (strlen(file_placeholders[i]) == n && memcmp(s, file_placeholders[i], n) == 0)
                known = true;
        if (!known) {
            char *ph = sc_xasprintf("%.*s", (int)n, s);
            sc_conf_error(ctx, "unknown placeholder %s (use {pipeline}, {topic} and {partition})",
                          sc_conf_quote(q, sizeof(q), ph));
            free(ph);
            return;
        }
        partition |= n == strlen("{partition}") && memcmp(s, "{partition}", n) == 0;
        s = e + 1;
    }
    if (!partition)
        sc_conf_error(ctx, "must contain {partition}: partitions cannot share a file");
}

static void check_table_name(struct sc_conf_ctx *ctx, void *field)
{
    const char *s = *(char **)field;
    const char *dot = strchr(s, '.');
    bool ok = dot ? is_ident(s, (size_t)(dot - s)) && is_ident(dot + 1, strlen(dot + 1))
                  : is_ident(s, strlen(s));
    char q[96];
    if (!ok)
        sc_conf_error(ctx,
                      "must be \"name\" or \"schema.name\", each part 1 to 63 letters, digits "
                      "or \"_\", not starting with a digit (got %s)",
                      sc_conf_quote(q, sizeof(q), s));
}

static const char *const column_sources[] = {
    "$topic", "$partition", "$offset", "$key", "$value", "$headers", "$timestamp",
};

/* "$topic" ... or "$.a.b[0].c": a JSON path into the record value. */
static bool valid_source(const char *s)
{
    for (size_t i = 0; i < SC_ARRAY_LEN(column_sources); i++)
        if (strcmp(s, column_sources[i]) == 0)
            return true;
    if (s[0] != '$' || !s[1])
        return false;
    for (const char *p = s + 1; *p;) {
        size_t n;
        if (*p == '.') {
            n = strcspn(++p, ".[]");
            if (n == 0)
                return false;
            p += n;
        } else if (*p == '[') {
            n = strspn(++p, "0123456789");
            if (n == 0 || p[n] != ']')
                return false;
            p += n + 1;
        } else {
            return false;
        }
    }
    return true;
}

static void check_column(struct sc_conf_ctx *ctx, const char *column, const char *source)
{
    char q[96];
    if (!is_ident(column, strlen(column)))
        sc_conf_error_key(ctx,
                          "invalid column name %s: use 1 to 63 letters, digits or \"_\", not "
                          "starting with a digit",
                          sc_conf_quote(q, sizeof(q), column));
    if (!valid_source(source))
        sc_conf_error(ctx,
                      "invalid source %s: use \"$.field.path\" (a JSON path into the record "
                      "value, e.g. \"$.order.id\" or \"$.items[0]\") or one of $topic, "
                      "$partition, $offset, $key, $value, $headers, $timestamp",
                      sc_conf_quote(q, sizeof(q), source));
}

static void check_url(struct sc_conf_ctx *ctx, void *field)
{
    const char *url = *(char **)field;
    size_t scheme = strncasecmp(url, "http://", 7) == 0    ? 7
                    : strncasecmp(url, "https://", 8) == 0 ? 8
                                                           : 0;
    /* The URL may carry credentials: never quoted here. */
    if (!scheme)
        sc_conf_error(ctx, "must start with http:// or https://");
    else if (!url[scheme] || strchr("/?#", url[scheme]))
        sc_conf_error(ctx, "must name a host after %.*s", (int)scheme, url);
    else
        for (const unsigned char *p = (const unsigned char *)url; *p; p++)
            if (*p <= ' ' || *p == 0x7F) {
                sc_conf_error(ctx, "must not contain spaces or control characters");
                break;
            }
}

static void check_header(struct sc_conf_ctx *ctx, const char *name, const char *value)
{
    static const char *const reserved[] = {"Content-Type", "Content-Length", "Transfer-Encoding",
                                           "Idempotency-Key"};
    char q[96];
    bool token = *name != '\0';
    for (const char *p = name; *p && token; p++)
        token = isalnum((unsigned char)*p) || strchr("!#$%&'*+-.^_`|~", *p);
    if (!token) {
        sc_conf_error_key(ctx, "invalid header name %s", sc_conf_quote(q, sizeof(q), name));
        return;
    }
    bool set_by_us = strncasecmp(name, "X-Sidecar-", 10) == 0;
    for (size_t i = 0; i < SC_ARRAY_LEN(reserved); i++)
        set_by_us |= strcasecmp(name, reserved[i]) == 0;
    if (set_by_us)
        sc_conf_error_key(ctx, "header %s is set by the sidecar",
                          sc_conf_quote(q, sizeof(q), name));
    if (strpbrk(value, "\r\n"))
        sc_conf_error(ctx, "must not contain a line break");
}

static void check_readable_file(struct sc_conf_ctx *ctx, void *field)
{
    const char *path = *(char **)field;
    char *data = NULL;
    size_t n = 0;
    char q[256];
    /* Reading (not access(2)) is the real test, and a CA bundle is small. */
    if (sc_expand_read_regular_file(path, 16 * 1024 * 1024, &data, &n) < 0)
        sc_conf_error(ctx, "cannot read file %s: %s", sc_conf_quote(q, sizeof(q), path),
                      errno == EFBIG    ? "larger than 16 MiB"
                      : errno == EINVAL ? "not a regular file"
                                        : strerror(errno));
    free(data);
}

/* ---- table checks: computed defaults and cross-key rules ---------------------------------- */

static bool file_is_raw(const void *base)
{
    return ((const struct sc_sink_file_conf *)base)->format == SC_FILE_RAW;
}

static bool file_fsync_interval(const void *base)
{
    return ((const struct sc_sink_file_conf *)base)->fsync == SC_FSYNC_INTERVAL;
}

static bool pg_default_columns(const void *base)
{
    return ((const struct sc_sink_postgres_conf *)base)->columns.count == 0;
}

static bool pg_custom_columns(const void *base)
{
    return ((const struct sc_sink_postgres_conf *)base)->columns.count > 0;
}

static void check_lease(struct sc_conf_ctx *ctx, void *base, const json_t *obj, bool clean)
{
    const struct sc_lease_conf *l = base;
    if (!clean || (int64_t)l->renew_ms * 2 <= l->ttl_ms)
        return;
    sc_conf_push_key(ctx, "renew_ms");
    sc_conf_error(ctx, "must be at most half of lease.ttl_ms (%d)", l->ttl_ms);
    sc_conf_pop(ctx);
}

static void check_retry(struct sc_conf_ctx *ctx, void *base, const json_t *obj, bool clean)
{
    const struct sc_retry_conf *r = base;
    if (!clean || r->initial_backoff_ms <= r->max_backoff_ms)
        return;
    sc_conf_push_key(ctx, "initial_backoff_ms");
    sc_conf_error(ctx, "must be at most retry.max_backoff_ms (%d)", r->max_backoff_ms);
    sc_conf_pop(ctx);
}

static void check_postgres_sink(struct sc_conf_ctx *ctx, void *base, const json_t *obj, bool clean)
{
    const struct sc_sink_postgres_conf *pg = base;
    if (!clean || pg->columns.count == 0)
        return; /* with an invalid column, key_columns would be judged on a partial map */
    sc_conf_push_key(ctx, "key_columns");
    if (pg->key_columns.count == 0)
        sc_conf_error(ctx, "must name the columns that identify a record when columns is set "
                           "(e.g. [\"id\"]): a replay overwrites rows by this key");
    for (size_t i = 0; i < pg->key_columns.count; i++) {
        if (sc_kvlist_get(&pg->columns, pg->key_columns.items[i]))
            continue;
        char q[96];
        sc_conf_push_index(ctx, i);
        sc_conf_error(ctx, "%s is not a key of columns",
                      sc_conf_quote(q, sizeof(q), pg->key_columns.items[i]));
        sc_conf_pop(ctx);
    }
    sc_conf_pop(ctx);
}

static void check_http_sink(struct sc_conf_ctx *ctx, void *base, const json_t *obj, bool clean)
{
    const struct sc_sink_http_conf *h = base;
    bool authorization = false;
    for (size_t i = 0; i < h->headers.count; i++)
        authorization |= strcasecmp(h->headers.items[i].key, "Authorization") == 0;
    if (!h->bearer_token || !*h->bearer_token || !authorization)
        return;
    sc_conf_push_key(ctx, "bearer_token");
    sc_conf_error(ctx, "conflicts with the Authorization header in headers: set only one");
    sc_conf_pop(ctx);
}

static void check_pipeline(struct sc_conf_ctx *ctx, void *base, const json_t *obj, bool clean)
{
    struct sc_pipeline_conf *p = base;
    if (!p->group_id && p->name)
        p->group_id = sc_xasprintf("sidecar-%s", p->name);
    const char *path = p->sink.file.path;
    if (p->sink.type == SC_SINK_FILE && path && p->topics.count > 1 && !strstr(path, "{topic}")) {
        sc_conf_push_key(ctx, "sink");
        sc_conf_push_key(ctx, "path");
        sc_conf_error(ctx,
                      "must contain {topic}: this pipeline reads %zu topics, and their "
                      "partitions cannot share a file",
                      p->topics.count);
        sc_conf_pop(ctx);
        sc_conf_pop(ctx);
    }
}

static bool share_a_topic(const struct sc_pipeline_conf *a, const struct sc_pipeline_conf *b)
{
    for (size_t i = 0; i < a->topics.count; i++)
        for (size_t k = 0; k < b->topics.count; k++)
            if (strcmp(a->topics.items[i], b->topics.items[k]) == 0)
                return true;
    return false;
}

static char *default_instance_id(void)
{
    const char *env = getenv("HOSTNAME");
    if (env && *env && instance_id_valid(env))
        return sc_xstrdup(env);
    char host[256];
    if (gethostname(host, sizeof(host)) == 0) {
        host[sizeof(host) - 1] = '\0';
        if (instance_id_valid(host))
            return sc_xstrdup(host);
    }
    return sc_xstrdup("sidecar");
}

static void check_root(struct sc_conf_ctx *ctx, void *base, const json_t *obj, bool clean)
{
    struct sc_config *cfg = base;
    if (!cfg->instance_id && !(obj && json_object_get(obj, "instance_id") &&
                               !json_is_null(json_object_get(obj, "instance_id"))))
        cfg->instance_id = default_instance_id();

    for (size_t i = 0; i < cfg->npipelines; i++) {
        const struct sc_pipeline_conf *p = &cfg->pipelines[i];
        for (size_t j = 0; j < i; j++) {
            const struct sc_pipeline_conf *o = &cfg->pipelines[j];
            char q[96];
            sc_conf_push_key(ctx, "pipelines");
            sc_conf_push_index(ctx, i);
            if (p->name && o->name && strcmp(p->name, o->name) == 0) {
                sc_conf_push_key(ctx, "name");
                sc_conf_error(ctx, "duplicate pipeline name %s (also pipelines[%zu])",
                              sc_conf_quote(q, sizeof(q), p->name), j);
                sc_conf_pop(ctx);
            }
            /* Two pipelines writing the same partition's file would corrupt it. */
            const char *a = p->sink.file.path, *b = o->sink.file.path;
            if (p->sink.type == SC_SINK_FILE && o->sink.type == SC_SINK_FILE && a && b &&
                strcmp(a, b) == 0 && !strstr(a, "{pipeline}") &&
                (!strstr(a, "{topic}") || share_a_topic(p, o))) {
                sc_conf_push_key(ctx, "sink");
                sc_conf_push_key(ctx, "path");
                sc_conf_error(ctx,
                              "same files as pipelines[%zu].sink.path: add {pipeline} to "
                              "the path",
                              j);
                sc_conf_pop(ctx);
                sc_conf_pop(ctx);
            }
            sc_conf_pop(ctx);
            sc_conf_pop(ctx);
        }
    }
}

/* ---- the tables --------------------------------------------------------------------------- */

static const struct sc_conf_enum log_levels[] = {
    {"debug", SC_LOG_DEBUG},
    {"info", SC_LOG_INFO},
    {"warn", SC_LOG_WARN},
    {"error", SC_LOG_ERROR},
    {NULL, 0},
};
static const struct sc_conf_enum log_formats[] = {
    {"json", SC_LOG_FORMAT_JSON},
    {"text", SC_LOG_FORMAT_TEXT},
    {NULL, 0},
};
static const struct sc_conf_enum assignments[] = {
    {"kafka-group", SC_ASSIGN_KAFKA_GROUP},
    {NULL, 0},
};
static const struct sc_conf_enum start_froms[] = {
    {"earliest", SC_START_EARLIEST},
    {"latest", SC_START_LATEST},
    {NULL, 0},
};
static const struct sc_conf_enum value_formats[] = {
    {"auto", SC_VALUE_AUTO},
    {"string", SC_VALUE_STRING},
    {"base64", SC_VALUE_BASE64},
    {NULL, 0},
};
static const struct sc_conf_enum sink_types[] = {
    {"file", SC_SINK_FILE},
    {"postgres", SC_SINK_POSTGRES},
    {"http", SC_SINK_HTTP},
    {"stdout", SC_SINK_STDOUT},
    {NULL, 0},
};
static const struct sc_conf_enum file_formats[] = {
    {"jsonl", SC_FILE_JSONL},
    {"raw", SC_FILE_RAW},
    {NULL, 0},
};
static const struct sc_conf_enum fsync_policies[] = {
    {"batch", SC_FSYNC_BATCH},
    {"interval", SC_FSYNC_INTERVAL},
    {"never", SC_FSYNC_NEVER},
    {NULL, 0},
};
static const struct sc_conf_enum pg_modes[] = {
    {"insert", SC_PG_INSERT},
    {"upsert", SC_PG_UPSERT},
    {"insert_ignore", SC_PG_INSERT_IGNORE},
    {NULL, 0},
};
static const struct sc_conf_enum pg_value_types[] = {
    {"jsonb", SC_PG_JSONB},
    {"text", SC_PG_TEXT},
    {"bytea", SC_PG_BYTEA},
    {NULL, 0},
};
static const struct sc_conf_enum pg_key_types[] = {
    {"text", SC_PG_TEXT},
    {"bytea", SC_PG_BYTEA},
    {NULL, 0},
};
static const struct sc_conf_enum http_methods[] = {
    {"POST", SC_HTTP_POST},
    {"PUT", SC_HTTP_PUT},
    {NULL, 0},
};
static const struct sc_conf_enum http_formats[] = {
    {"ndjson", SC_HTTP_NDJSON},
    {"json_array", SC_HTTP_JSON_ARRAY},
    {NULL, 0},
};
static const struct sc_conf_enum on_errors[] = {
    {"dead_letter", SC_ON_ERROR_DEAD_LETTER},
    {"stop", SC_ON_ERROR_STOP},
    {NULL, 0},
};

#define CFG(f)   offsetof(struct sc_config, f)
#define PIPE(f)  offsetof(struct sc_pipeline_conf, f)
#define FILEK(f) offsetof(struct sc_sink_file_conf, f)
#define PGK(f)   offsetof(struct sc_sink_postgres_conf, f)
#define HTTPK(f) offsetof(struct sc_sink_http_conf, f)

/*
 * The objects that are anonymous structs in struct sc_config (postgres,
 * kafka, admin, ...) are OBJECT keys at offset 0 whose tables use offsets
 * from struct sc_config itself.
 */
static const struct sc_conf_key postgres_keys[] = {
    {.name = "dsn",
     .type = SC_CONF_STRING,
     .offset = CFG(postgres.dsn),
     .min = 1,
     .flags = SC_CONF_REQUIRED | SC_CONF_SECRET,
     .check = check_dsn,
     .mask = dsn_mask,
     .help = "libpq connection string (\"host=... dbname=...\" or a postgresql:// URI) of the "
             "checkpoint database; the password is masked when printed"},
    {.name = "schema",
     .type = SC_CONF_STRING,
     .def = "sidecar",
     .offset = CFG(postgres.schema),
     .min = 1,
     .max = 63,
     .check = check_ident,
     .help = "schema of the sidecar's tables (leases, checkpoints, events, ...)"},
    {.name = "connect_timeout_ms",
     .type = SC_CONF_INT,
     .def = "5000",
     .offset = CFG(postgres.connect_timeout_ms),
     .min = 100,
     .max = 600000,
     .help = "bound on one connection attempt"},
    {NULL},
};
static const struct sc_conf_table postgres_table = {
    .name = "postgres",
    .help = "The PostgreSQL database that holds leases, checkpoints and events.",
    .keys = postgres_keys,
};

static const struct sc_conf_key kafka_keys[] = {
    {.name = "bootstrap.servers",
     .type = SC_CONF_STRING,
     .offset = CFG(kafka.bootstrap_servers),
     .min = 1,
     .flags = SC_CONF_REQUIRED,
     .help = "comma-separated host:port list of brokers"},
    {.name = "properties",
     .type = SC_CONF_MAP,
     .offset = CFG(kafka.properties),
     .flags = SC_CONF_SCALARS | SC_CONF_MASK_BY_NAME,
     .check_item = check_kafka_property,
     .is_secret_name = sc_config_key_is_secret,
     .help = "librdkafka properties for every pipeline's consumer (numbers and booleans are "
             "passed as text); group.id, bootstrap.servers, enable.auto.commit, "
             "enable.auto.offset.store, enable.partition.eof and auto.offset.reset are managed "
             "by the sidecar"},
    {NULL},
};
static const struct sc_conf_table kafka_table = {
    .name = "kafka",
    .help = "The Kafka cluster.",
    .keys = kafka_keys,
};

static const struct sc_conf_key admin_keys[] = {
    {.name = "listen",
     .type = SC_CONF_STRING,
     .def = "127.0.0.1:9644",
     .offset = CFG(admin.listen),
     .check = check_listen,
     .help = "host:port of the admin HTTP endpoint (/healthz, /readyz, /metrics, /v1/...); "
             "\"[::1]:9644\" for IPv6, \"\" disables it"},
    {.name = "token",
     .type = SC_CONF_STRING,
     .def = "",
     .offset = CFG(admin.token),
     .flags = SC_CONF_SECRET,
     .help = "bearer token required by the admin endpoint; \"\" = no authentication"},
    {NULL},
};
static const struct sc_conf_table admin_table = {
    .name = "admin",
    .help = "The admin HTTP endpoint.",
    .keys = admin_keys,
};

static const struct sc_conf_key log_keys[] = {
    {.name = "level",
     .type = SC_CONF_ENUM,
     .def = "info",
     .offset = CFG(log.level),
     .values = log_levels,
     .help = "minimum level logged"},
    {.name = "format",
     .type = SC_CONF_ENUM,
     .def = "json",
     .offset = CFG(log.format),
     .values = log_formats,
     .help = "one JSON object per line on stderr, or readable text"},
    {NULL},
};
static const struct sc_conf_table log_table = {
    .name = "log",
    .help = "Logging (on stderr).",
    .keys = log_keys,
};

static const struct sc_conf_key notify_keys[] = {
    {.name = "max_per_second",
     .type = SC_CONF_INT,
     .def = "200",
     .offset = CFG(notify.max_per_second),
     .min = 1,
     .max = 1000000,
     .help = "checkpoint commits per second above which NOTIFY is coalesced (one per "
             "coalesce_ms) instead of sent per commit"},
    {.name = "coalesce_ms",
     .type = SC_CONF_INT,
     .def = "250",
     .offset = CFG(notify.coalesce_ms),
     .min = 10,
     .max = 60000,
     .help = "interval of coalesced notifications"},
    {NULL},
};
static const struct sc_conf_table notify_table = {
    .name = "notify",
    .help = "LISTEN/NOTIFY of checkpoint events.",
    .keys = notify_keys,
};

static const struct sc_conf_key events_keys[] = {
    {.name = "retention",
     .type = SC_CONF_DURATION,
     .def = "7d",
     .offset = CFG(events.retention_ms),
     .min = MS_MINUTE,
     .max = 3650 * MS_DAY,
     .help = "age after which events are compacted into a per-partition history"},
    {.name = "compact_interval",
     .type = SC_CONF_DURATION,
     .def = "1h",
     .offset = CFG(events.compact_interval_ms),
     .min = 1000,
     .max = 30 * MS_DAY,
     .help = "how often compaction runs"},
    {NULL},
};
static const struct sc_conf_table events_table = {
    .name = "events",
    .help = "The event table (durations: milliseconds, or a string like \"90s\", \"15m\", "
            "\"7d\").",
    .keys = events_keys,
};

static const struct sc_conf_key batch_keys[] = {
    /* Under backlog every batch costs a checkpoint commit, an fdatasync (file) or a
     * transaction (postgres) and a Kafka offset mirror; at 5000 records those stop
     * dominating (bench/: CPU per record -35% vs 1000, postgres sink from 0.85x to ~1x
     * \copy).  Partial batches still leave after max_wait_ms, so latency is unchanged. */
    {.name = "max_records",
     .type = SC_CONF_INT,
     .def = "5000",
     .offset = offsetof(struct sc_batch_conf, max_records),
     .min = 1,
     .max = 1000000,
     .help = "records per batch at most"},
    {.name = "max_bytes",
     .type = SC_CONF_INT64,
     .def = "1048576",
     .offset = offsetof(struct sc_batch_conf, max_bytes),
     .min = 1024,
     .max = 268435456,
     .help = "bytes of record values and keys per batch at most"},
    {.name = "max_wait_ms",
     .type = SC_CONF_INT,
     .def = "100",
     .offset = offsetof(struct sc_batch_conf, max_wait_ms),
     .min = 0,
     .max = 60000,
     .help = "how long a partial batch may wait for more records (at the end of a backlog, "
             "a quarter of it: see \"Data flow\" in docs/design.md)"},
    {NULL},
};
static const struct sc_conf_table batch_table = {
    .name = "pipelines[].batch",
    .help = "A batch is delivered when any limit is reached.",
    .keys = batch_keys,
};

static const struct sc_conf_key lease_keys[] = {
    {.name = "ttl_ms",
     .type = SC_CONF_INT,
     .def = "10000",
     .offset = offsetof(struct sc_lease_conf, ttl_ms),
     .min = 1000,
     .max = 600000,
     .help = "a lease not renewed for this long may be taken over"},
    {.name = "renew_ms",
     .type = SC_CONF_INT,
     .def = "3000",
     .offset = offsetof(struct sc_lease_conf, renew_ms),
     .min = 100,
     .max = 300000,
     .help = "renewal interval; at most half of ttl_ms"},
    {NULL},
};
static const struct sc_conf_table lease_table = {
    .name = "pipelines[].lease",
    .help = "Partition leases in PostgreSQL (fencing epochs).",
    .keys = lease_keys,
    .check = check_lease,
};

static const struct sc_conf_key file_keys[] = {
    {.name = "path",
     .type = SC_CONF_STRING,
     .offset = FILEK(path),
     .min = 1,
     .flags = SC_CONF_REQUIRED,
     .check = check_file_path,
     .help = "file of each partition, with placeholders {pipeline}, {topic} and {partition} "
             "(which it must contain); directories are created"},
    {.name = "format",
     .type = SC_CONF_ENUM,
     .def = "jsonl",
     .offset = FILEK(format),
     .values = file_formats,
     .help = "jsonl: one record envelope per line; raw: the value bytes then the delimiter"},
    {.name = "delimiter",
     .type = SC_CONF_STRING,
     .def = "\n",
     .offset = FILEK(delimiter),
     .flags = SC_CONF_ALLOW_NUL,
     .aux_offset = FILEK(delimiter_len),
     .applies = file_is_raw,
     .not_applicable = "only applies to format raw",
     .help = "written after each value (may contain \\u0000)"},
    {.name = "fsync",
     .type = SC_CONF_ENUM,
     .def = "batch",
     .offset = FILEK(fsync),
     .values = fsync_policies,
     .help = "batch: fsync before each checkpoint commit (survives power loss); interval: at "
             "most every fsync_interval_ms; never: leave it to the kernel. All three survive a "
             "process crash; with interval/never a power loss can lose the file's tail, which "
             "the sidecar then reports as an error state instead of writing past it"},
    {.name = "fsync_interval_ms",
     .type = SC_CONF_INT,
     .def = "1000",
     .offset = FILEK(fsync_interval_ms),
     .min = 1,
     .max = 60000,
     .applies = file_fsync_interval,
     .not_applicable = "only applies to fsync interval",
     .help = "fsync interval"},
    {NULL},
};
static const struct sc_conf_table file_table = {
    .name = "pipelines[].sink",
    .help = "One file per partition; the write offset is the byte offset in the file.",
    .keys = file_keys,
};

static const struct sc_conf_key pg_sink_keys[] = {
    {.name = "dsn",
     .type = SC_CONF_STRING,
     .offset = PGK(dsn),
     .min = 1,
     .flags = SC_CONF_SECRET,
     .check = check_dsn,
     .mask = dsn_mask,
     .def_doc = "the checkpoint database",
     .help = "target database; when unset, rows and checkpoint commit in one transaction"},
    {.name = "table",
     .type = SC_CONF_STRING,
     .offset = PGK(table),
     .flags = SC_CONF_REQUIRED,
     .check = check_table_name,
     .help = "\"name\" or \"schema.name\""},
    {.name = "mode",
     .type = SC_CONF_ENUM,
     .def = "insert",
     .offset = PGK(mode),
     .values = pg_modes,
     .help = "how a row whose key exists is treated"},
    {.name = "columns",
     .type = SC_CONF_MAP,
     .offset = PGK(columns),
     .check_item = check_column,
     .help = "column -> source: \"$.json.path\" into the value, or $topic, $partition, "
             "$offset, $key, $value, $headers, $timestamp; {} = the default columns"},
    {.name = "key_columns",
     .type = SC_CONF_STRLIST,
     .offset = PGK(key_columns),
     .flags = SC_CONF_UNIQUE,
     .applies = pg_custom_columns,
     .not_applicable = "only applies with columns: the default columns are keyed by topic, "
                       "partition and offset",
     .help = "columns that identify a record (required with columns)"},
    {.name = "create_table",
     .type = SC_CONF_BOOL,
     .def = "true",
     .offset = PGK(create_table),
     .help = "create the table if it does not exist"},
    {.name = "value_type",
     .type = SC_CONF_ENUM,
     .def = "jsonb",
     .offset = PGK(value_type),
     .values = pg_value_types,
     .applies = pg_default_columns,
     .not_applicable = "only applies to the default columns, not with columns",
     .help = "type of the value column"},
    {.name = "key_type",
     .type = SC_CONF_ENUM,
     .def = "text",
     .offset = PGK(key_type),
     .values = pg_key_types,
     .applies = pg_default_columns,
     .not_applicable = "only applies to the default columns, not with columns",
     .help = "type of the key column"},
    {NULL},
};
static const struct sc_conf_table pg_sink_table = {
    .name = "pipelines[].sink",
    .help = "Rows in a PostgreSQL table; the write offset is the next source offset.",
    .keys = pg_sink_keys,
    .check = check_postgres_sink,
};

static const struct sc_conf_key retry_keys[] = {
    {.name = "max_attempts",
     .type = SC_CONF_INT,
     .def = "10",
     .offset = offsetof(struct sc_retry_conf, max_attempts),
     .min = 1,
     .max = 1000,
     .help = "attempts in one round of retries; then the partition backs off and the batch is "
             "sent again (running out of retries is never permanent)"},
    {.name = "initial_backoff_ms",
     .type = SC_CONF_INT,
     .def = "200",
     .offset = offsetof(struct sc_retry_conf, initial_backoff_ms),
     .min = 1,
     .max = 600000,
     .help = "first backoff (doubling, with jitter)"},
    {.name = "max_backoff_ms",
     .type = SC_CONF_INT,
     .def = "10000",
     .offset = offsetof(struct sc_retry_conf, max_backoff_ms),
     .min = 1,
     .max = 3600000,
     .help = "backoff cap"},
    {.name = "max_elapsed_ms",
     .type = SC_CONF_INT,
     .def = "60000",
     .offset = offsetof(struct sc_retry_conf, max_elapsed_ms),
     .min = 0,
     .max = 86400000,
     .help = "give up after this long; 0 = no limit"},
    {NULL},
};
static const struct sc_conf_table retry_table = {
    .name = "pipelines[].sink.retry",
    .help = "Retries of connect errors, timeouts, 5xx, 408 and 429 (Retry-After is honoured).",
    .keys = retry_keys,
    .check = check_retry,
};

static const struct sc_conf_key http_keys[] = {
    {.name = "url",
     .type = SC_CONF_STRING,
     .offset = HTTPK(url),
     .flags = SC_CONF_REQUIRED,
     .check = check_url,
     .mask = url_mask,
     .help = "http:// or https:// endpoint (a password in it is masked when printed)"},
    {.name = "method",
     .type = SC_CONF_ENUM,
     .def = "POST",
     .offset = HTTPK(method),
     .values = http_methods,
     .help = "request method"},
    {.name = "format",
     .type = SC_CONF_ENUM,
     .def = "ndjson",
     .offset = HTTPK(format),
     .values = http_formats,
     .help = "body: one envelope per line, or a JSON array"},
    {.name = "headers",
     .type = SC_CONF_MAP,
     .offset = HTTPK(headers),
     .flags = SC_CONF_MASK_BY_NAME,
     .check_item = check_header,
     .is_secret_name = sc_config_key_is_secret,
     .help = "extra request headers; Content-Type, Idempotency-Key and X-Sidecar-* are set "
             "by the sidecar"},
    {.name = "timeout_ms",
     .type = SC_CONF_INT,
     .def = "5000",
     .offset = HTTPK(timeout_ms),
     .min = 100,
     .max = 600000,
     .help = "timeout of one request"},
    {.name = "retry",
     .type = SC_CONF_OBJECT,
     .offset = HTTPK(retry),
     .table = &retry_table,
     .help = "retry policy"},
    {.name = "on_error",
     .type = SC_CONF_ENUM,
     .def = "dead_letter",
     .offset = HTTPK(on_error),
     .values = on_errors,
     .help = "after a 4xx that rejects records: dead_letter (the batch is split to find them; "
             "a row in dead_letters each, then continue) or stop (the partition's error state)"},
    {.name = "ca_file",
     .type = SC_CONF_STRING,
     .offset = HTTPK(ca_file),
     .min = 1,
     .check = check_readable_file,
     .def_doc = "the system CA store",
     .help = "PEM bundle to verify the server with (read at load time)"},
    {.name = "insecure_skip_verify",
     .type = SC_CONF_BOOL,
     .def = "false",
     .offset = HTTPK(insecure_skip_verify),
     .help = "do not verify the TLS certificate"},
    {.name = "bearer_token",
     .type = SC_CONF_STRING,
     .offset = HTTPK(bearer_token),
     .flags = SC_CONF_SECRET,
     .help = "sent as \"Authorization: Bearer ...\""},
    {NULL},
};
static const struct sc_conf_table http_table = {
    .name = "pipelines[].sink",
    .help = "One request per batch, with an Idempotency-Key the receiver de-duplicates by.",
    .keys = http_keys,
    .check = check_http_sink,
};

static const struct sc_conf_key stdout_keys[] = {{NULL}};
static const struct sc_conf_table stdout_table = {
    .name = "pipelines[].sink",
    .help = "Envelopes on standard output, for debugging (at least once).",
    .keys = stdout_keys,
};

static const struct sc_conf_key sink_keys[] = {
    {.name = "type",
     .type = SC_CONF_ENUM,
     .offset = offsetof(struct sc_sink_conf, type),
     .values = sink_types,
     .flags = SC_CONF_REQUIRED,
     .help = "selects the sink; each type has its own keys (below)"},
    {NULL},
};
static const struct sc_conf_variant sink_variants[] = {
    {SC_SINK_FILE, offsetof(struct sc_sink_conf, file), &file_table},
    {SC_SINK_POSTGRES, offsetof(struct sc_sink_conf, postgres), &pg_sink_table},
    {SC_SINK_HTTP, offsetof(struct sc_sink_conf, http), &http_table},
    {SC_SINK_STDOUT, 0, &stdout_table},
    {0, 0, NULL},
};
static const struct sc_conf_table sink_table = {
    .name = "pipelines[].sink",
    .help = "Where records go.",
    .keys = sink_keys,
    .variant_key = "type",
    .variants = sink_variants,
};

static const struct sc_conf_key pipeline_keys[] = {
    {.name = "name",
     .type = SC_CONF_STRING,
     .offset = PIPE(name),
     .min = 1,
     .max = 63,
     .flags = SC_CONF_REQUIRED,
     .check = check_pipeline_name,
     .help = "unique, `[A-Za-z0-9][A-Za-z0-9._-]*`; names the pipeline's checkpoints in "
             "PostgreSQL"},
    {.name = "group_id",
     .type = SC_CONF_STRING,
     .offset = PIPE(group_id),
     .min = 1,
     .max = 255,
     .def_doc = "`\"sidecar-<name>\"`",
     .help = "Kafka consumer group"},
    {.name = "topics",
     .type = SC_CONF_STRLIST,
     .offset = PIPE(topics),
     .min = 1,
     .flags = SC_CONF_REQUIRED | SC_CONF_UNIQUE,
     .check_item = check_topic,
     .help = "topics to consume"},
    {.name = "assignment",
     .type = SC_CONF_ENUM,
     .def = "kafka-group",
     .offset = PIPE(assignment),
     .values = assignments,
     .help = "how partitions are spread over instances"},
    {.name = "start_from",
     .type = SC_CONF_ENUM,
     .def = "earliest",
     .offset = PIPE(start_from),
     .values = start_froms,
     .help = "where a partition without a checkpoint starts"},
    {.name = "value_format",
     .type = SC_CONF_ENUM,
     .def = "auto",
     .offset = PIPE(value_format),
     .values = value_formats,
     .help = "envelope value: auto (JSON verbatim, else a string, else base64), string, base64"},
    {.name = "batch",
     .type = SC_CONF_OBJECT,
     .offset = PIPE(batch),
     .table = &batch_table,
     .help = "batch limits"},
    {.name = "lease",
     .type = SC_CONF_OBJECT,
     .offset = PIPE(lease),
     .table = &lease_table,
     .help = "partition leases"},
    {.name = "workers",
     .type = SC_CONF_INT,
     .def = "4",
     .offset = PIPE(workers),
     .min = 1,
     .max = 64,
     .help = "delivery threads (a partition is pinned to one)"},
    {.name = "kafka_properties",
     .type = SC_CONF_MAP,
     .offset = PIPE(kafka_properties),
     .flags = SC_CONF_SCALARS | SC_CONF_MASK_BY_NAME,
     .check_item = check_kafka_property,
     .is_secret_name = sc_config_key_is_secret,
     .help = "librdkafka properties overriding kafka.properties for this pipeline"},
    {.name = "sink",
     .type = SC_CONF_OBJECT,
     .offset = PIPE(sink),
     .table = &sink_table,
     .flags = SC_CONF_REQUIRED,
     .help = "the destination"},
    {NULL},
};
static const struct sc_conf_table pipeline_table = {
    .name = "pipelines[]",
    .help = "A pipeline consumes topics and delivers them to one sink.",
    .size = sizeof(struct sc_pipeline_conf),
    .keys = pipeline_keys,
    .check = check_pipeline,
};

static const struct sc_conf_key root_keys[] = {
    {.name = "instance_id",
     .type = SC_CONF_STRING,
     .offset = CFG(instance_id),
     .min = 1,
     .max = 128,
     .check = check_instance_id,
     .def_doc = "`$HOSTNAME`, else the host name, else `\"sidecar\"`",
     .help = "this instance's name as lease owner; printable, no whitespace"},
    {.name = "postgres",
     .type = SC_CONF_OBJECT,
     .offset = 0,
     .table = &postgres_table,
     .flags = SC_CONF_REQUIRED,
     .help = "checkpoint database"},
    {.name = "kafka",
     .type = SC_CONF_OBJECT,
     .offset = 0,
     .table = &kafka_table,
     .flags = SC_CONF_REQUIRED,
     .help = "Kafka cluster"},
    {.name = "admin",
     .type = SC_CONF_OBJECT,
     .offset = 0,
     .table = &admin_table,
     .help = "admin HTTP endpoint"},
    {.name = "log", .type = SC_CONF_OBJECT, .offset = 0, .table = &log_table, .help = "logging"},
    {.name = "shutdown_timeout_ms",
     .type = SC_CONF_INT,
     .def = "8000",
     .offset = CFG(shutdown_timeout_ms),
     .min = 1000,
     .max = 600000,
     .help = "on SIGTERM, finish in-flight batches and exit within this time (fits Docker's "
             "10 s stop grace period)"},
    {.name = "notify",
     .type = SC_CONF_OBJECT,
     .offset = 0,
     .table = &notify_table,
     .help = "event notifications"},
    {.name = "events",
     .type = SC_CONF_OBJECT,
     .offset = 0,
     .table = &events_table,
     .help = "event history"},
    {.name = "pipelines",
     .type = SC_CONF_ARRAY,
     .offset = CFG(pipelines),
     .aux_offset = CFG(npipelines),
     .table = &pipeline_table,
     .min = 1,
     .max = 64,
     .flags = SC_CONF_REQUIRED,
     .help = "1 to 64 pipelines with unique names"},
    {NULL},
};
static const struct sc_conf_table root_table = {
    .name = "",
    .help = "The top level of the configuration file.",
    .keys = root_keys,
    .check = check_root,
};

/* ---- loading ------------------------------------------------------------------------------ */

/*
 * jansson quotes the offending token ("near '\"password=...'", "near 'hunter2'"),
 * which may be a secret: the quote is dropped, LINE:COL already points there.
 */
static void report_json_error(struct sc_conf_ctx *ctx, const json_error_t *jerr)
{
    if (json_error_code(jerr) == json_error_duplicate_key) {
        struct sc_jsonpos pos;
        struct sc_jsonpos_seg *path = NULL;
        size_t n = 0;
        if (sc_jsonpos_key_ending_at(ctx->text, ctx->len, (size_t)jerr->position, &pos, &path,
                                     &n) == 0) {
            for (size_t i = 0; i < n; i++)
                if (path[i].key)
                    sc_conf_push_key(ctx, path[i].key);
                else
                    sc_conf_push_index(ctx, path[i].index);
            char q[256];
            sc_conf_error_at(ctx, &pos, "duplicate key %s",
                             sc_conf_quote(q, sizeof(q), path[n - 1].key));
            for (size_t i = 0; i < n; i++)
                sc_conf_pop(ctx);
            sc_jsonpos_path_free(path, n);
            return;
        }
    }
    char text[JSON_ERROR_TEXT_LENGTH];
    snprintf(text, sizeof(text), "%s", jerr->text);
    char *near = strstr(text, " near '");
    if (near)
        *near = '\0';
    struct sc_jsonpos pos = {
        .offset = jerr->position > 0 ? (size_t)jerr->position : 0,
        .line = jerr->line > 0 ? jerr->line : 1,
        .column = jerr->column > 0 ? jerr->column : 1,
    };
    if (strncmp(text, "invalid token", 13) == 0 && pos.offset > 0 && pos.offset <= ctx->len) {
        /* jansson stops at the bad word's last character: point at its first. */
        size_t start = pos.offset - 1;
        while (start > 0 && (isalnum((unsigned char)ctx->text[start - 1]) ||
                             strchr("+-._", ctx->text[start - 1])))
            start--;
        sc_jsonpos_at(ctx->text, ctx->len, start, &pos);
    }
    sc_conf_error_at(ctx, &pos, "invalid JSON: %s", text);
}

static int load_text(const char *name, const char *text, size_t len, struct sc_config **out,
                     char *errbuf, size_t errsize)
{
    struct sc_conf_ctx ctx;
    struct sc_config *cfg = NULL;
    json_t *root = NULL;
    json_error_t jerr;
    int result = -1;

    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
        text += 3; /* a UTF-8 byte order mark, as some editors write */
        len -= 3;
    }
    sc_conf_ctx_init(&ctx, name, text, len);
    size_t first = 0;
    while (first < len && strchr(" \t\r\n", text[first]))
        first++;
    if (first == len) {
        snprintf(errbuf, errsize, "%s: cannot read config: file is empty\n", name);
        return -1;
    }
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        report_json_error(&ctx, &jerr);
        goto out;
    }
    if (!json_is_object(root)) {
        struct sc_jsonpos pos;
        sc_jsonpos_at(text, len, first, &pos);
        sc_conf_error_at(&ctx, &pos, "expected an object at the top level");
        goto out;
    }
    cfg = sc_xcalloc(1, sizeof(*cfg));
    cfg->path = sc_xstrdup(name);
    sc_conf_parse(&ctx, &root_table, cfg, root);
    if (ctx.nerrors == 0) {
        *out = cfg;
        cfg = NULL;
        result = 0;
    }
out:
    if (result < 0)
        sc_conf_format_errors(&ctx, errbuf, errsize);
    sc_config_free(cfg);
    json_decref(root);
    sc_conf_ctx_free(&ctx);
    return result;
}

int sc_config_load(const char *path, struct sc_config **out, char *errbuf, size_t errsize)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    if (sc_expand_read_file(path, MAX_CONFIG_BYTES, &text, &len) < 0) {
        if (errno == EFBIG)
            snprintf(errbuf, errsize, "%s: cannot read config: file is larger than %d MiB\n", path,
                     MAX_CONFIG_BYTES / (1024 * 1024));
        else
            snprintf(errbuf, errsize, "%s: cannot read config: %s\n", path, strerror(errno));
        return -1;
    }
    int rc = load_text(path, text, len, out, errbuf, errsize);
    free(text);
    return rc;
}

int sc_config_load_string(const char *name, const char *text, struct sc_config **out, char *errbuf,
                          size_t errsize)
{
    *out = NULL;
    return load_text(name, text, strlen(text), out, errbuf, errsize);
}

void sc_config_free(struct sc_config *cfg)
{
    if (!cfg)
        return;
    sc_conf_free(&root_table, cfg);
    free(cfg->path);
    free(cfg);
}

json_t *sc_config_to_json(const struct sc_config *cfg)
{
    return sc_conf_to_json(&root_table, cfg);
}

char *sc_config_reference_markdown(void)
{
    static const char intro[] =
        "# Configuration reference\n\n"
        "Generated by `sidecar check-config --reference` from the key tables in "
        "`sidecar/config/sc_config.c`.\n\n"
        "The file is one JSON object.  Unknown keys are errors.  Every string value (array "
        "items and object values too, never keys) may use `${VAR}` (an error when VAR is "
        "unset), `${VAR:-default}` (when VAR is unset or empty), `${file:/path}` (the file's "
        "contents minus one trailing newline) and `$$` (a literal `$`).  An integer or boolean "
        "may be given as a string holding `${...}`, e.g. `\"workers\": \"${WORKERS:-4}\"`.  "
        "Durations are milliseconds or a string such as `\"90s\"`, `\"15m\"`, `\"7d\"` (units "
        "ms, s, m, h, d).  Secret values are masked by `sidecar check-config` and never "
        "logged.\n\n";
    struct sc_buf b;
    sc_buf_init(&b, 0);
    buf_puts(&b, intro, strlen(intro));
    sc_conf_reference(&root_table, &b);
    return buf_take(&b);
}

int sc_config_selftest(char *err, size_t errsize)
{
    return sc_conf_table_selftest(&root_table, err, errsize);
}
