/*
 * fuzz_token.c - resume and page tokens from untrusted clients.
 *
 * Tokens arrive in query strings and Last-Event-ID headers, so every decoder
 * behind them sees attacker bytes: sc_token_decode(), the resume-token
 * reader sc_events_cursor_from_token() and the /v1/checkpoints page-token
 * reader (through sc_inspect_checkpoints_page() without a connection: a bad
 * token is refused before any query).  The first input byte picks the form:
 *
 *   0  the rest is the token text as a client would send it
 *   1  the rest is the JSON inside a token: the target wraps it in "v1." +
 *      base64url itself, so mutations reach the content checks instead of
 *      dying in base64
 *   2  the rest is "PIPELINE\nTOPIC:N", the pipeline= and partition= filter
 *      of /v1/events
 *
 * Invariants: a decoded token re-encodes to a token that decodes to an equal
 * object, and encoding is then a fixed point; a cursor read from a token
 * gives back a token that reads as the same cursor under its own filter; a
 * filter is accepted only as UTF-8, and a fresh cursor's token reads back
 * under it.
 */
#include <string.h>

#include <jansson.h>

#include "admin/sc_events.h"
#include "admin/sc_inspect.h"
#include "db/sc_pg.h"
#include "admin/sc_token.h"
#include "fuzz.h"
#include "record/sc_envelope.h"

static bool utf8(const char *s)
{
    return !s || sc_utf8_valid(s, strlen(s));
}

static char *b64url_token(const uint8_t *p, size_t n)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *out = malloc(3 + (n + 2) / 3 * 4 + 1), *o = out;
    if (!out)
        abort();
    memcpy(o, "v1.", 3);
    o += 3;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        *o++ = a[v >> 18 & 63];
        *o++ = a[v >> 12 & 63];
        if (i + 1 < n)
            *o++ = a[v >> 6 & 63];
        if (i + 2 < n)
            *o++ = a[v & 63];
    }
    *o = '\0';
    return out;
}

static char *cstring(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        abort();
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static void check_token_codec(const char *tok)
{
    char err[512] = "";
    json_t *obj = sc_token_decode(tok, "resume token", err, sizeof(err));
    if (!obj) {
        FUZZ_CHECK(err[0] != '\0', "a refused token needs a message");
        return;
    }
    char *enc = sc_token_encode(obj);
    FUZZ_CHECK(strncmp(enc, "v1.", 3) == 0 &&
                   strspn(enc + 3, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                   "0123456789-_") == strlen(enc + 3),
               "not URL-safe: %s", enc);
    json_t *again = sc_token_decode(enc, "resume token", err, sizeof(err));
    FUZZ_CHECK(again != NULL, "re-encoded token refused: %s", err);
    FUZZ_CHECK(json_equal(obj, again), "re-encoded token decodes differently");
    char *enc2 = sc_token_encode(again);
    FUZZ_CHECK(strcmp(enc, enc2) == 0, "encoding is not a fixed point: %s vs %s", enc, enc2);
    free(enc2);
    json_decref(again);
    free(enc);
    json_decref(obj);
}

static void check_cursor(const char *tok)
{
    char err[2048] = "";
    struct sc_events_cursor c, d;
    sc_events_cursor_init(&c, NULL);
    sc_events_cursor_init(&d, NULL);
    if (sc_events_cursor_from_token(&c, tok, NULL, err, sizeof(err)) != 0) {
        FUZZ_CHECK(err[0] != '\0', "a refused resume token needs a message");
        goto out;
    }
    char *t1 = sc_events_cursor_token(&c);
    int rc = sc_events_cursor_from_token(&d, t1, &c.filter, err, sizeof(err));
    FUZZ_CHECK(rc == 0, "the token of a cursor is refused: %s (%s)", err, t1);
    FUZZ_CHECK(d.fresh == c.fresh && (c.fresh || (d.xid == c.xid && d.id == c.id)) &&
                   !d.snapshot == !c.snapshot &&
                   (!c.snapshot || strcmp(d.snapshot, c.snapshot) == 0) &&
                   d.snap_xmax == c.snap_xmax,
               "cursor changed through its token %s", t1);
    char *t2 = sc_events_cursor_token(&d);
    FUZZ_CHECK(strcmp(t1, t2) == 0, "cursor token not stable: %s vs %s", t1, t2);
    free(t2);
    free(t1);
out:
    sc_events_cursor_free(&d);
    sc_events_cursor_free(&c);
}

static void check_page_token(const char *tok)
{
    char err[1024] = "";
    json_t *page = NULL;
    /* No connection: a token that parses fails at the query instead, never succeeds. */
    int rc = sc_inspect_checkpoints_page(NULL, "\"sidecar\"", tok, 10, &page, err, sizeof(err));
    FUZZ_CHECK(rc != SC_READ_OK && page == NULL, "a page without a database");
    FUZZ_CHECK(err[0] != '\0', "a failed page needs a message");
}

static void check_filter(const char *text)
{
    char err[1024] = "", buf[512];
    const char *nl = strchr(text, '\n');
    char *pipeline = nl ? strndup(text, (size_t)(nl - text)) : NULL;
    const char *partition = nl ? nl + 1 : text;
    struct sc_events_filter f;
    if (sc_events_filter_init(&f, pipeline, *partition ? partition : NULL, err, sizeof(err)) == 0) {
        sc_events_filter_describe(&f, buf, sizeof(buf));
        /* A token is JSON: it could not carry anything else (regressions/filter-not-utf8). */
        FUZZ_CHECK(utf8(f.pipeline) && utf8(f.topic), "a filter that is not UTF-8 is accepted");
        struct sc_events_cursor c;
        sc_events_cursor_init(&c, &f);
        char *tok = sc_events_cursor_token(&c);
        struct sc_events_cursor d;
        sc_events_cursor_init(&d, NULL);
        int rc = sc_events_cursor_from_token(&d, tok, &f, err, sizeof(err));
        FUZZ_CHECK(rc == 0, "a fresh cursor's token is refused: %s", err);
        sc_events_cursor_free(&d);
        sc_events_cursor_free(&c);
        free(tok);
        sc_events_filter_free(&f);
    } else {
        FUZZ_CHECK(err[0] != '\0', "a refused filter needs a message");
    }
    free(pipeline);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4 * SC_TOKEN_MAX)
        return -1;
    char *text = data[0] % 3 == 1 ? b64url_token(data + 1, size - 1) : cstring(data + 1, size - 1);
    if (data[0] % 3 == 2) {
        check_filter(text);
    } else {
        check_token_codec(text);
        check_cursor(text);
        check_page_token(text);
    }
    free(text);
    return 0;
}
