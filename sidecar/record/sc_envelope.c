/*
 * sc_envelope.c - deterministic record envelopes (see sc_envelope.h).
 *
 * Everything here appends into a caller-owned sc_buf and allocates nothing
 * per record: a batch reuses one buffer.  The JSON validator is a single
 * iterative pass that copies tokens while it checks them, so a valid JSON
 * value costs one scan and one copy.
 */
#include "record/sc_envelope.h"

#include <string.h>

#include <libdeflate.h>

#include "base/sc_base64.h"

#define JSON_MAX_DEPTH 1000

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t left)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return left >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (left < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && s[1] < 0xA0) /* overlong */
            return 0;
        if (c == 0xED && s[1] >= 0xA0) /* UTF-16 surrogates */
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (left < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && s[1] < 0x90) /* overlong */
            return 0;
        if (c == 0xF4 && s[1] >= 0x90) /* > U+10FFFF */
            return 0;
        return 4;
    }
    return 0;
}

bool sc_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        /* ASCII fast path, eight bytes at a time. */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ULL)
                break;
            i += 8;
        }
        if (i >= len)
            break;
        size_t n = utf8_seq(p + i, len - i);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

int sc_json_string_append(struct sc_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    /* Worst case every byte becomes \u00XX. */
    if (sc_buf_reserve(out, len + 2) < 0)
        return -1;
    out->data[out->len++] = '"';
    size_t run = 0; /* start of the pending run of bytes copied as-is */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if (sc_buf_append(out, s + run, i - run) < 0)
            return -1;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t n = 2;
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        if (sc_buf_append(out, esc, n) < 0)
            return -1;
        run = i + 1;
    }
    if (sc_buf_append(out, s + run, len - run) < 0)
        return -1;
    return sc_buf_putc(out, '"');
}

static int append_base64_object(struct sc_buf *out, const void *p, size_t len)
{
    if (sc_buf_append(out, "{\"base64\":\"", 11) < 0 ||
        sc_base64_encode(out, p, len, SC_BASE64_STD) < 0)
        return -1;
    return sc_buf_append(out, "\"}", 2);
}

static inline bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static inline bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static inline bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Validates the string token at in[*i] (the opening quote); advances past it. */
static bool scan_string(const char *in, size_t len, size_t *i)
{
    size_t p = *i + 1;
    while (p < len) {
        unsigned char c = (unsigned char)in[p];
        if (c == '"') {
            *i = p + 1;
            return true;
        }
        if (c < 0x20)
            return false;
        if (c == '\\') {
            if (p + 1 >= len)
                return false;
            char e = in[p + 1];
            if (e == 'u') {
                if (p + 6 > len || !is_hex(in[p + 2]) || !is_hex(in[p + 3]) || !is_hex(in[p + 4]) ||
                    !is_hex(in[p + 5]))
                    return false;
                p += 6;
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                       e == 'r' || e == 't') {
                p += 2;
            } else {
                return false;
            }
        } else if (c < 0x80) {
            p++;
        } else {
            size_t n = utf8_seq((const unsigned char *)in + p, len - p);
            if (n == 0)
                return false;
            p += n;
        }
    }
    return false;
}

/* Validates the number token at in[*i]; advances past it. */
static bool scan_number(const char *in, size_t len, size_t *i)
{
    size_t p = *i;
    if (p < len && in[p] == '-')
        p++;
    if (p >= len)
        return false;
    if (in[p] == '0') {
        p++;
    } else if (in[p] >= '1' && in[p] <= '9') {
        while (p < len && is_digit(in[p]))
            p++;
    } else {
        return false;
    }
    if (p < len && in[p] == '.') {
        p++;
        if (p >= len || !is_digit(in[p]))
            return false;
        while (p < len && is_digit(in[p]))
            p++;
    }
    if (p < len && (in[p] == 'e' || in[p] == 'E')) {
        p++;
        if (p < len && (in[p] == '+' || in[p] == '-'))
            p++;
        if (p >= len || !is_digit(in[p]))
            return false;
        while (p < len && is_digit(in[p]))
            p++;
    }
    *i = p;
    return true;
}

static bool scan_literal(const char *in, size_t len, size_t *i, const char *lit, size_t n)
{
    if (len - *i < n || memcmp(in + *i, lit, n) != 0)
        return false;
    *i += n;
    return true;
}

int sc_json_minify_append(struct sc_buf *out, const char *in, size_t len)
{
    if (len == 0)
        return 0; /* nothing to write (and out->data may still be NULL) */
    if (sc_buf_reserve(out, len) < 0) {
        /* The text as sent does not fit under out's maximum; minified it may.  Rare (near
         * the maximum only): minify aside, then append what it became. */
        struct sc_buf tmp;
        sc_buf_init(&tmp, 0);
        int rc = sc_json_minify_append(&tmp, in, len);
        if (rc == 1 && sc_buf_append(out, tmp.data, tmp.len) < 0)
            rc = -1;
        sc_buf_free(&tmp);
        return rc;
    }
    char *o = out->data + out->len; /* the minified text is never longer than len */
    size_t olen = 0;
    char stack[JSON_MAX_DEPTH];
    size_t depth = 0;
    size_t i = 0;

#define SKIP_WS()                   \
    while (i < len && is_ws(in[i])) \
    i++
#define EMIT(from, n) (memcpy(o + olen, in + (from), (n)), olen += (n))

    SKIP_WS();
value:
    if (i >= len)
        return 0;
    {
        size_t start = i;
        char c = in[i];
        if (c == '{' || c == '[') {
            if (depth == JSON_MAX_DEPTH)
                return 0;
            stack[depth++] = c;
            o[olen++] = c;
            i++;
            SKIP_WS();
            if (i < len && in[i] == (c == '{' ? '}' : ']')) {
                o[olen++] = in[i++];
                depth--;
                goto after_value;
            }
            if (c == '[')
                goto value;
            goto key;
        }
        bool ok;
        if (c == '"')
            ok = scan_string(in, len, &i);
        else if (c == '-' || is_digit(c))
            ok = scan_number(in, len, &i);
        else if (c == 't')
            ok = scan_literal(in, len, &i, "true", 4);
        else if (c == 'f')
            ok = scan_literal(in, len, &i, "false", 5);
        else if (c == 'n')
            ok = scan_literal(in, len, &i, "null", 4);
        else
            ok = false;
        if (!ok)
            return 0;
        EMIT(start, i - start);
    }
after_value:
    SKIP_WS();
    if (depth == 0) {
        if (i != len)
            return 0;
        out->len += olen;
        return 1;
    }
    if (i >= len)
        return 0;
    if (in[i] == ',') {
        o[olen++] = ',';
        i++;
        SKIP_WS();
        if (stack[depth - 1] == '[')
            goto value;
        goto key;
    }
    if (in[i] == (stack[depth - 1] == '{' ? '}' : ']')) {
        o[olen++] = in[i++];
        depth--;
        goto after_value;
    }
    return 0;
key:
    if (i >= len || in[i] != '"')
        return 0;
    {
        size_t start = i;
        if (!scan_string(in, len, &i))
            return 0;
        EMIT(start, i - start);
    }
    SKIP_WS();
    if (i >= len || in[i] != ':')
        return 0;
    o[olen++] = ':';
    i++;
    SKIP_WS();
    goto value;
#undef SKIP_WS
#undef EMIT
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

char *sc_json_jsonb_safe(const char *s)
{
    char *copy = NULL;
    size_t len = strlen(s);
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] != '\\')
            continue;
        if (s[i + 1] != 'u' || i + 6 > len) {
            i++; /* another escape: skip its character */
            continue;
        }
        int u = hex4(s + i + 2);
        int next = i + 12 <= len && s[i + 6] == '\\' && s[i + 7] == 'u' ? hex4(s + i + 8) : -1;
        bool bad = u == 0 || (u >= 0xDC00 && u <= 0xDFFF) ||
                   (u >= 0xD800 && u <= 0xDBFF && !(next >= 0xDC00 && next <= 0xDFFF));
        if (u >= 0xD800 && u <= 0xDBFF && !bad) {
            i += 11; /* a valid pair: skip both escapes */
            continue;
        }
        if (bad) {
            if (!copy)
                copy = sc_xstrdup(s);
            memcpy(copy + i + 2, "fffd", 4);
        }
        i += 5;
    }
    return copy;
}

int sc_envelope_append_value(struct sc_buf *out, const void *p, size_t len, enum sc_value_format vf)
{
    if (!p)
        return sc_buf_append(out, "null", 4);
    if (vf == SC_VALUE_BASE64 || sc_format_is_framed(vf))
        return append_base64_object(out, p, len);
    if (vf == SC_VALUE_AUTO) {
        int r = sc_json_minify_append(out, p, len);
        if (r != 0)
            return r < 0 ? -1 : 0;
    }
    if (sc_utf8_valid(p, len))
        return sc_json_string_append(out, p, len);
    return append_base64_object(out, p, len);
}

int sc_envelope_append_key(struct sc_buf *out, const void *p, size_t len, enum sc_value_format vf)
{
    if (!p)
        return sc_buf_append(out, "null", 4);
    if (vf != SC_VALUE_BASE64 && !sc_format_is_framed(vf) && sc_utf8_valid(p, len))
        return sc_json_string_append(out, p, len);
    return append_base64_object(out, p, len);
}

int sc_envelope_append_record_value(struct sc_buf *out, const struct sc_record *r,
                                    enum sc_value_format vf)
{
    if (r->value && r->value_json && sc_format_is_framed(vf))
        return sc_buf_append(out, r->value_json, r->value_json_len);
    return sc_envelope_append_value(out, r->value, r->value_len, vf);
}

int sc_envelope_append_record_key(struct sc_buf *out, const struct sc_record *r,
                                  enum sc_value_format kf)
{
    if (r->key && r->key_json && sc_format_is_framed(kf))
        return sc_buf_append(out, r->key_json, r->key_json_len);
    return sc_envelope_append_key(out, r->key, r->key_len, kf);
}

/* Header values: a string when valid UTF-8, else base64, null stays null. */
static int append_header_value(struct sc_buf *out, const struct sc_header *h)
{
    return sc_envelope_append_key(out, h->value, h->len, SC_VALUE_AUTO);
}

static int append_headers(struct sc_buf *out, const struct sc_header *hs, size_t n)
{
    if (sc_buf_putc(out, '{') < 0)
        return -1;
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        /* A repeated name is written once, at its first position, as an array. */
        bool seen = false, repeated = false;
        for (size_t j = 0; j < n && !seen; j++)
            if (j != i && strcmp(hs[j].name, hs[i].name) == 0) {
                if (j < i)
                    seen = true;
                repeated = true;
            }
        if (seen)
            continue;
        if (!first && sc_buf_putc(out, ',') < 0)
            return -1;
        first = false;
        const char *name = hs[i].name;
        size_t nlen = strlen(name);
        int rc = sc_utf8_valid(name, nlen) ? sc_json_string_append(out, name, nlen)
                                           : sc_json_string_append(out, "?", 1);
        if (rc < 0 || sc_buf_putc(out, ':') < 0)
            return -1;
        if (!repeated) {
            if (append_header_value(out, &hs[i]) < 0)
                return -1;
            continue;
        }
        if (sc_buf_putc(out, '[') < 0)
            return -1;
        bool first_value = true;
        for (size_t j = i; j < n; j++) {
            if (strcmp(hs[j].name, name) != 0)
                continue;
            if ((!first_value && sc_buf_putc(out, ',') < 0) || append_header_value(out, &hs[j]) < 0)
                return -1;
            first_value = false;
        }
        if (sc_buf_putc(out, ']') < 0)
            return -1;
    }
    return sc_buf_putc(out, '}');
}

int sc_envelope_append_headers(struct sc_buf *out, const struct sc_header *hs, size_t n)
{
    return append_headers(out, hs, n);
}

/* Appends v in decimal, as printf's %lld would: the envelope's numbers, without vfprintf. */
static int append_i64(struct sc_buf *out, int64_t v)
{
    char tmp[24];
    char *p = tmp + sizeof(tmp);
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    return sc_buf_append(out, p, (size_t)(tmp + sizeof(tmp) - p));
}

int sc_envelope_append(struct sc_buf *out, const struct sc_record *r, const struct sc_formats *f)
{
    if (sc_buf_append(out, "{\"topic\":", 9) < 0 ||
        sc_json_string_append(out, r->topic, strlen(r->topic)) < 0)
        return -1;
    /* || sequences the appends (| would not: the fields could land in any order). */
    if (sc_buf_append(out, ",\"partition\":", 13) < 0 || append_i64(out, r->partition) < 0 ||
        sc_buf_append(out, ",\"offset\":", 10) < 0 || append_i64(out, r->offset) < 0 ||
        sc_buf_append(out, ",\"timestamp\":", 13) < 0 ||
        (r->timestamp >= 0 ? append_i64(out, r->timestamp) : sc_buf_append(out, "null", 4)) < 0 ||
        sc_buf_append(out, ",\"key\":", 7) < 0 ||
        sc_envelope_append_record_key(out, r, f->key) < 0 ||
        sc_buf_append(out, ",\"value\":", 9) < 0 ||
        sc_envelope_append_record_value(out, r, f->value) < 0 ||
        sc_buf_append(out, ",\"headers\":", 11) < 0 ||
        append_headers(out, r->headers, r->nheaders) < 0)
        return -1;
    return sc_buf_putc(out, '}');
}

uint32_t sc_crc32(uint32_t crc, const void *p, size_t len)
{
    return libdeflate_crc32(crc, p, len);
}

static uint32_t crc_i64(uint32_t crc, int64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)v >> (8 * i));
    return sc_crc32(crc, b, 8);
}

/* Length-prefixed bytes; NULL is encoded as length -1 so null != empty. */
static uint32_t crc_bytes(uint32_t crc, const void *p, size_t len)
{
    crc = crc_i64(crc, p ? (int64_t)len : -1);
    if (p && len)
        crc = sc_crc32(crc, p, len);
    return crc;
}

/* The image's pieces, in the order sc_record_checksum() folds them in. */
static char *put_le64(char *o, int64_t v)
{
    for (int i = 0; i < 8; i++)
        *o++ = (char)((uint64_t)v >> (8 * i));
    return o;
}

static char *put_bytes(char *o, const void *p, size_t len)
{
    o = put_le64(o, p ? (int64_t)len : -1);
    if (p && len) {
        memcpy(o, p, len);
        o += len;
    }
    return o;
}

size_t sc_record_image_size(const struct sc_record *r)
{
    size_t n = 5 * 8 + (r->key ? r->key_len : 0) + (r->value ? r->value_len : 0);
    for (size_t i = 0; i < r->nheaders; i++)
        n += 16 + strlen(r->headers[i].name) + (r->headers[i].value ? r->headers[i].len : 0);
    return n;
}

void sc_record_image_write(char *out, const struct sc_record *r)
{
    out = put_le64(out, r->offset);
    out = put_le64(out, r->timestamp);
    out = put_bytes(out, r->key, r->key_len);
    out = put_bytes(out, r->value, r->value_len);
    out = put_le64(out, (int64_t)r->nheaders);
    for (size_t i = 0; i < r->nheaders; i++) {
        out = put_bytes(out, r->headers[i].name, strlen(r->headers[i].name));
        out = put_bytes(out, r->headers[i].value, r->headers[i].len);
    }
}

uint32_t sc_record_checksum(uint32_t crc, const struct sc_record *r)
{
    crc = crc_i64(crc, r->offset);
    crc = crc_i64(crc, r->timestamp);
    crc = crc_bytes(crc, r->key, r->key_len);
    crc = crc_bytes(crc, r->value, r->value_len);
    crc = crc_i64(crc, (int64_t)r->nheaders);
    for (size_t i = 0; i < r->nheaders; i++) {
        crc = crc_bytes(crc, r->headers[i].name, strlen(r->headers[i].name));
        crc = crc_bytes(crc, r->headers[i].value, r->headers[i].len);
    }
    return crc;
}
