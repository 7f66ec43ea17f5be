/*
 * sc_deadletter.c - rebuilds a record from its sidecar.dead_letters row, so
 * that `sidecar redrive` (cli/cmd_redrive.c) can send it through the sink
 * again byte for byte.
 */
#include "admin/sc_deadletter.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/sc_base64.h"

#define PAGE_ROWS   20    /* records per redrive call: small, so progress is saved often */
#define MAX_LISTED  20    /* failures listed one per line in the summary */
#define FAILURE_MAX 65536 /* bytes of failure lines kept for the summary */
#define STR_(x)     #x
#define STR(x)      STR_(x)

/* ---- rebuilding records ------------------------------------------------------- */

/* Appends one header value (string, {"base64": ...} or null) to r. */
static int add_header(struct sc_dead_record *r, const char *name, const json_t *v, char *err,
                      size_t errsize)
{
    struct sc_header h = {.name = sc_xstrdup(name)};
    if (json_is_string(v)) {
        size_t n = json_string_length(v);
        char *d = sc_xmalloc(n + 1);
        memcpy(d, json_string_value(v), n);
        h.value = d;
        h.len = n;
    } else if (json_is_object(v) && json_is_string(json_object_get(v, "base64"))) {
        const json_t *b = json_object_get(v, "base64");
        struct sc_buf buf;
        sc_buf_init(&buf, 0);
        if (sc_base64_decode(&buf, json_string_value(b), json_string_length(b), SC_BASE64_STD) !=
            0) {
            sc_buf_free(&buf);
            free((char *)h.name);
            snprintf(err, errsize, "header \"%s\": invalid base64", name);
            return -1;
        }
        /* A zero-length value must stay non-NULL: NULL means a null header. */
        h.value = buf.data ? buf.data : sc_xcalloc(1, 1);
        h.len = buf.len;
    } else if (!json_is_null(v)) {
        free((char *)h.name);
        snprintf(err, errsize, "header \"%s\": expected a string, {\"base64\": ...} or null", name);
        return -1;
    }
    r->headers = sc_xrealloc(r->headers, (r->nheaders + 1) * sizeof(*r->headers));
    r->headers[r->nheaders++] = h;
    return 0;
}

int sc_dead_record_build(struct sc_dead_record *out, const char *topic, int32_t partition,
                         int64_t offset, const char *envelope, const void *key, size_t key_len,
                         const void *value, size_t value_len, char *err, size_t errsize)
{
    int rc = -1;
    memset(out, 0, sizeof(*out));
    json_error_t je;
    json_t *env = json_loads(envelope, JSON_ALLOW_NUL, &je);
    if (!json_is_object(env)) {
        snprintf(err, errsize, "the stored envelope is not a JSON object: %s",
                 env ? "other JSON" : je.text);
        goto out;
    }
    out->topic = sc_xstrdup(topic);
    if (key) {
        out->key = sc_xmalloc(key_len ? key_len : 1);
        memcpy(out->key, key, key_len);
    }
    if (value) {
        out->value = sc_xmalloc(value_len ? value_len : 1);
        memcpy(out->value, value, value_len);
    }
    const json_t *ts = json_object_get(env, "timestamp");
    if (ts && !json_is_null(ts) && !json_is_integer(ts)) {
        snprintf(err, errsize, "the stored envelope's timestamp is not an integer");
        goto out;
    }
    const json_t *hs = json_object_get(env, "headers");
    if (hs && !json_is_null(hs)) {
        if (!json_is_object(hs)) {
            snprintf(err, errsize, "the stored envelope's headers are not an object");
            goto out;
        }
        const char *name;
        json_t *v;
        json_object_foreach((json_t *)hs, name, v)
        {
            /* A repeated header name was stored once, as an array of its values. */
            if (json_is_array(v)) {
                size_t i;
                json_t *item;
                json_array_foreach(v, i, item)
                {
                    if (add_header(out, name, item, err, errsize) != 0)
                        goto out;
                }
            } else if (add_header(out, name, v, err, errsize) != 0) {
                goto out;
            }
        }
    }
    out->rec = (struct sc_record){
        .topic = out->topic,
        .partition = partition,
        .offset = offset,
        .timestamp = json_is_integer(ts) ? (int64_t)json_integer_value(ts) : -1,
        .key = out->key,
        .key_len = out->key ? key_len : 0,
        .value = out->value,
        .value_len = out->value ? value_len : 0,
        .headers = out->headers,
        .nheaders = out->nheaders,
    };
    rc = 0;
out:
    json_decref(env);
    if (rc != 0)
        sc_dead_record_free(out);
    return rc;
}

void sc_dead_record_free(struct sc_dead_record *r)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        free((char *)r->headers[i].name);
        free((void *)r->headers[i].value);
    }
    free(r->headers);
    free(r->topic);
    free(r->key);
    free(r->value);
    memset(r, 0, sizeof(*r));
}
