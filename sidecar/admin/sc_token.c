/*
 * sc_token.c - opaque, URL-safe, versioned tokens (see sc_token.h).
 */
#include "admin/sc_token.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_base64.h"
#include "base/sc_util.h"

#define PREFIX "v1."

char *sc_token_encode(const json_t *obj)
{
    char *json = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!json)
        abort(); /* only fails on allocation */
    struct sc_buf b;
    sc_buf_init(&b, 0);
    if (sc_buf_append(&b, PREFIX, strlen(PREFIX)) < 0 ||
        sc_base64_encode(&b, json, strlen(json), SC_BASE64_URL) < 0 || sc_buf_putc(&b, '\0') < 0)
        abort(); /* no maximum: only allocation could fail, and that aborts */
    free(json);
    return b.data;
}

/* Decodes unpadded base64url into a NUL-terminated string; NULL when it is not valid. */
static char *b64url_decode(const char *s, size_t n, size_t *outlen)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    if (sc_base64_decode(&b, s, n, SC_BASE64_URL) < 0 || sc_buf_putc(&b, '\0') < 0) {
        sc_buf_free(&b);
        return NULL;
    }
    *outlen = b.len - 1;
    return b.data;
}

json_t *sc_token_decode(const char *token, const char *what, char *err, size_t errsize)
{
    json_t *obj = NULL;
    char *json = NULL;
    size_t plen = strlen(PREFIX);

    if (!token || !*token) {
        snprintf(err, errsize, "empty %s", what);
        goto out;
    }
    size_t n = strlen(token);
    if (n > SC_TOKEN_MAX) {
        snprintf(err, errsize, "%s too long (%zu bytes, at most %d)", what, n, SC_TOKEN_MAX);
        goto out;
    }
    if (strncmp(token, PREFIX, plen) != 0) {
        /* "v7." is a token from a newer release; anything else is not a token at all. */
        if (token[0] == 'v' && strchr(token, '.'))
            snprintf(err, errsize, "unsupported %s version \"%.*s\" (this sidecar reads v1)", what,
                     (int)(strchr(token, '.') - token), token);
        else
            snprintf(err, errsize, "malformed %s: expected a string starting with \"v1.\"", what);
        goto out;
    }
    size_t jlen = 0;
    json = b64url_decode(token + plen, n - plen, &jlen);
    if (!json) {
        snprintf(err, errsize, "malformed %s: not base64url after \"v1.\" (truncated or altered?)",
                 what);
        goto out;
    }
    json_error_t jerr;
    obj = json_loadb(json, jlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj || !json_is_object(obj)) {
        json_decref(obj);
        obj = NULL;
        snprintf(err, errsize, "malformed %s: contents are not what a sidecar writes", what);
        goto out;
    }
out:
    free(json);
    return obj;
}
