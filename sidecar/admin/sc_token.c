/*
 * sc_token.c - opaque, URL-safe, versioned tokens (see sc_token.h).
 */
#include "admin/sc_token.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_util.h"

#define PREFIX "v1."

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

char *sc_token_encode(const json_t *obj)
{
    char *json = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!json)
        abort(); /* only fails on allocation */
    size_t n = strlen(json);
    size_t plen = strlen(PREFIX);
    char *out = sc_xmalloc(plen + (n + 2) / 3 * 4 + 1);
    memcpy(out, PREFIX, plen);
    char *o = out + plen;
    const unsigned char *in = (const unsigned char *)json;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = b64url[v >> 18 & 63];
        *o++ = b64url[v >> 12 & 63];
        *o++ = b64url[v >> 6 & 63];
        *o++ = b64url[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = b64url[v >> 18 & 63];
        *o++ = b64url[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *o++ = b64url[v >> 18 & 63];
        *o++ = b64url[v >> 12 & 63];
        *o++ = b64url[v >> 6 & 63];
    }
    *o = '\0';
    free(json);
    return out;
}

/* Decodes unpadded base64url; NULL on a character outside the alphabet or an impossible length. */
static char *b64url_decode(const char *s, size_t n, size_t *outlen)
{
    if (n % 4 == 1)
        return NULL;
    char *out = sc_xmalloc(n / 4 * 3 + 3);
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)s[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)(acc >> bits & 0xff);
        }
    }
    /* Leftover bits must be zero, or the same bytes would have two spellings. */
    if (acc & ((1u << bits) - 1)) {
        free(out);
        return NULL;
    }
    out[o] = '\0';
    *outlen = o;
    return out;
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
