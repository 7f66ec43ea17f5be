/*
 * sc_jsonpos.c - locate a JSON path in source text (see sc_jsonpos.h).
 *
 * The scanner trusts that the text is valid JSON (jansson parsed it before),
 * but never reads past len whatever the input: a malformed document only
 * makes a lookup stop early.
 */
#include "config/sc_jsonpos.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_util.h"

/* Deeper documents are still scanned, but nothing below this depth is reported. */
#define WALK_MAX_DEPTH 512

static size_t skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* i is at the opening quote; returns the offset just past the closing quote. */
static size_t skip_string(const char *s, size_t len, size_t i)
{
    for (i++; i < len; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return len;
}

/* Returns the offset just past the value starting at i. */
static size_t skip_value(const char *s, size_t len, size_t i)
{
    if (i >= len)
        return len;
    if (s[i] == '"')
        return skip_string(s, len, i);
    if (s[i] == '{' || s[i] == '[') {
        size_t depth = 0;
        while (i < len) {
            char c = s[i];
            if (c == '"') {
                i = skip_string(s, len, i);
                continue;
            }
            if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return i + 1;
            }
            i++;
        }
        return len;
    }
    while (i < len && !strchr(",}] \t\r\n", s[i]))
        i++;
    return i;
}

static long read_hex4(const char *p, const char *end)
{
    if (end - p < 4)
        return -1;
    long v = 0;
    for (int k = 0; k < 4; k++) {
        int h = sc_hexval(p[k]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

static size_t put_utf8(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/*
 * Decodes the next character of a string token's contents at *p (escapes
 * included) into out; returns its byte count, 0 at end or on a bad escape.
 */
static size_t next_char(const char **p, const char *end, char out[4])
{
    const char *q = *p;
    if (q >= end)
        return 0;
    if (*q != '\\') {
        out[0] = *q;
        *p = q + 1;
        return 1;
    }
    if (end - q < 2)
        return 0;
    char e = q[1];
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *k = strchr(from, e);
    if (e != 'u') {
        if (!k || e == '\0')
            return 0;
        out[0] = to[k - from];
        *p = q + 2;
        return 1;
    }
    long cp = read_hex4(q + 2, end);
    if (cp < 0)
        return 0;
    q += 6;
    if (cp >= 0xD800 && cp <= 0xDBFF && end - q >= 6 && q[0] == '\\' && q[1] == 'u') {
        long lo = read_hex4(q + 2, end);
        if (lo >= 0xDC00 && lo <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            q += 6;
        }
    }
    *p = q;
    return put_utf8((uint32_t)cp, out);
}

/* Does the string token [start, end) (quotes included) decode to key? */
static bool token_equals(const char *s, size_t start, size_t end, const char *key)
{
    if (end - start < 2)
        return false;
    const char *p = s + start + 1, *stop = s + end - 1;
    size_t klen = strlen(key), ki = 0;
    char buf[4];
    while (p < stop) {
        size_t n = next_char(&p, stop, buf);
        if (n == 0 || ki + n > klen || memcmp(key + ki, buf, n) != 0)
            return false;
        ki += n;
    }
    return ki == klen;
}

static char *token_decode(const char *s, size_t start, size_t end)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    const char *p = s + start + 1, *stop = s + end - 1;
    char buf[4];
    bool ok = true;
    while (ok && p < stop) {
        size_t n = next_char(&p, stop, buf);
        ok = n > 0 && sc_buf_append(&b, buf, n) == 0;
    }
    if (!ok || sc_buf_putc(&b, '\0') < 0) {
        sc_buf_free(&b);
        return sc_xstrdup("");
    }
    return b.data ? b.data : sc_xstrdup("");
}

void sc_jsonpos_at(const char *text, size_t len, size_t offset, struct sc_jsonpos *pos)
{
    if (offset > len)
        offset = len;
    int line = 1, col = 1;
    for (size_t i = 0; i < offset; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '\n') {
            line++;
            col = 1;
        } else if (c < 0x80 || c >= 0xC0) {
            /* UTF-8 continuation bytes do not start a new character. */
            col++;
        }
    }
    pos->offset = offset;
    pos->line = line;
    pos->column = col;
}

/* Moves from '{' at i to the value of member key; returns true with *val, *keyat set. */
static bool find_member(const char *s, size_t len, size_t i, const char *key, size_t *val,
                        size_t *keyat)
{
    if (i >= len || s[i] != '{')
        return false;
    i++;
    for (;;) {
        i = skip_ws(s, len, i);
        if (i >= len || s[i] != '"')
            return false;
        size_t ks = i, ke = skip_string(s, len, i);
        i = skip_ws(s, len, ke);
        if (i >= len || s[i] != ':')
            return false;
        i = skip_ws(s, len, i + 1);
        if (token_equals(s, ks, ke, key)) {
            *val = i;
            *keyat = ks;
            return true;
        }
        i = skip_ws(s, len, skip_value(s, len, i));
        if (i >= len || s[i] != ',')
            return false;
        i++;
    }
}

/* Moves from '[' at i to element index; returns true with *val set. */
static bool find_element(const char *s, size_t len, size_t i, size_t index, size_t *val)
{
    if (i >= len || s[i] != '[')
        return false;
    i++;
    for (size_t k = 0;; k++) {
        i = skip_ws(s, len, i);
        if (i >= len || s[i] == ']')
            return false;
        if (k == index) {
            *val = i;
            return true;
        }
        i = skip_ws(s, len, skip_value(s, len, i));
        if (i >= len || s[i] != ',')
            return false;
        i++;
    }
}

size_t sc_jsonpos_find(const char *text, size_t len, const struct sc_jsonpos_seg *path, size_t n,
                       enum sc_jsonpos_what what, struct sc_jsonpos *pos)
{
    size_t i = skip_ws(text, len, 0), at = i, found = 0;
    for (; found < n; found++) {
        size_t val = 0, keyat = 0;
        bool ok = path[found].key ? find_member(text, len, i, path[found].key, &val, &keyat)
                                  : find_element(text, len, i, path[found].index, &val);
        if (!ok)
            break;
        i = val;
        at = (found + 1 == n && what == SC_JSONPOS_KEY && path[found].key) ? keyat : val;
    }
    sc_jsonpos_at(text, len, at, pos);
    return found;
}

/* ---- finding a member name by where it ends --------------------------------------------- */

struct span {
    size_t start, end; /* member name token, when is_key */
    size_t index;
    bool is_key;
};

struct walk {
    const char *s;
    size_t len;
    size_t target; /* the offset just past the wanted name's closing quote */
    struct span *stack;
    size_t depth, cap;
    bool found;
};

static void walk_push(struct walk *w, struct span sp)
{
    if (w->depth == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 16;
        w->stack = sc_xrealloc(w->stack, w->cap * sizeof(*w->stack));
    }
    w->stack[w->depth++] = sp;
}

static size_t walk_value(struct walk *w, size_t i, int depth)
{
    const char *s = w->s;
    size_t len = w->len;
    if (i >= len || depth > WALK_MAX_DEPTH || (s[i] != '{' && s[i] != '['))
        return skip_value(s, len, i);
    bool obj = s[i] == '{';
    char close = obj ? '}' : ']';
    i++;
    for (size_t k = 0;; k++) {
        i = skip_ws(s, len, i);
        if (i < len && s[i] == close)
            return i + 1;
        struct span sp = {.index = k};
        if (obj) {
            if (i >= len || s[i] != '"')
                return len;
            sp.is_key = true;
            sp.start = i;
            sp.end = skip_string(s, len, i);
            if (sp.end == w->target) {
                walk_push(w, sp);
                w->found = true;
                return len;
            }
            i = skip_ws(s, len, sp.end);
            if (i >= len || s[i] != ':')
                return len;
            i = skip_ws(s, len, i + 1);
        }
        walk_push(w, sp);
        i = walk_value(w, i, depth + 1);
        if (w->found)
            return len;
        w->depth--;
        i = skip_ws(s, len, i);
        if (i >= len || s[i] != ',')
            return i < len && s[i] == close ? i + 1 : len;
        i++;
    }
}

int sc_jsonpos_key_ending_at(const char *text, size_t len, size_t end, struct sc_jsonpos *pos,
                             struct sc_jsonpos_seg **path, size_t *n)
{
    struct walk w = {.s = text, .len = len, .target = end};
    int result = -1;
    walk_value(&w, skip_ws(text, len, 0), 0);
    if (!w.found)
        goto out;
    struct sc_jsonpos_seg *segs = sc_xcalloc(w.depth, sizeof(*segs));
    for (size_t k = 0; k < w.depth; k++) {
        if (w.stack[k].is_key)
            segs[k].key = token_decode(text, w.stack[k].start, w.stack[k].end);
        else
            segs[k].index = w.stack[k].index;
    }
    sc_jsonpos_at(text, len, w.stack[w.depth - 1].start, pos);
    *path = segs;
    *n = w.depth;
    result = 0;
out:
    free(w.stack);
    return result;
}

void sc_jsonpos_path_free(struct sc_jsonpos_seg *path, size_t n)
{
    if (!path)
        return;
    for (size_t k = 0; k < n; k++)
        free((char *)path[k].key);
    free(path);
}
