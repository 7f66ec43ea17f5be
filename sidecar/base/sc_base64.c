/*
 * sc_base64.c - base64 and base64url (see sc_base64.h).
 */
#include "base/sc_base64.h"

#include <stdint.h>

static const char alphabets[2][65] = {
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
};

int sc_base64_encode(struct sc_buf *out, const void *p, size_t len, enum sc_base64_alphabet a)
{
    const char *tbl = alphabets[a == SC_BASE64_URL];
    bool pad = a == SC_BASE64_STD;
    const unsigned char *s = p;
    size_t rest = len % 3;
    size_t olen = len / 3 * 4 + (rest == 0 ? 0 : pad ? 4 : rest + 1);
    if (olen == 0)
        return 0; /* nothing to write (and out->data may still be NULL) */
    if (sc_buf_reserve(out, olen) < 0)
        return -1;
    char *o = out->data + out->len;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = tbl[(v >> 6) & 63];
        *o++ = tbl[v & 63];
    }
    if (rest > 0) {
        uint32_t v = (uint32_t)s[i] << 16 | (rest == 2 ? (uint32_t)s[i + 1] << 8 : 0);
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        if (rest == 2)
            *o++ = tbl[(v >> 6) & 63];
        else if (pad)
            *o++ = '=';
        if (pad)
            *o++ = '=';
    }
    out->len += olen;
    return 0;
}

static int value_of(unsigned char c, enum sc_base64_alphabet a)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (a == SC_BASE64_URL ? '-' : '+'))
        return 62;
    if (c == (a == SC_BASE64_URL ? '_' : '/'))
        return 63;
    return -1;
}

int sc_base64_decode(struct sc_buf *out, const char *in, size_t len, enum sc_base64_alphabet a)
{
    if (a == SC_BASE64_STD) {
        size_t pad = 0;
        while (len > 0 && pad < 2 && in[len - 1] == '=')
            len--, pad++;
        if (pad > 0 && (len + pad) % 4 != 0)
            return -1;
    }
    if (len % 4 == 1)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = value_of((unsigned char)in[i], a);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (sc_buf_putc(out, (char)(acc >> bits & 0xFF)) < 0)
                return -1;
        }
    }
    /* Leftover bits must be zero, or the same bytes would have two spellings. */
    return acc & ((1u << bits) - 1) ? -1 : 0;
}
