/*
 * sc_base64 - base64 (RFC 4648 §4, padded) for binary keys, values and
 * header values in envelopes, and base64url (§5, unpadded) for tokens.
 *
 * Decoding is strict: a character outside the alphabet, an impossible
 * length or non-zero leftover bits (which would give the same bytes a
 * second spelling) is refused.  Standard base64 may omit its padding.
 */
#ifndef SC_BASE64_H
#define SC_BASE64_H

#include <stdbool.h>
#include <stddef.h>

#include "base/sc_util.h"

enum sc_base64_alphabet {
    SC_BASE64_STD, /* A-Z a-z 0-9 + /, padded with '=' */
    SC_BASE64_URL, /* A-Z a-z 0-9 - _, no padding */
};

/* Appends the encoding of p[0..len) to out; -1 if out would exceed its maximum. */
int sc_base64_encode(struct sc_buf *out, const void *p, size_t len, enum sc_base64_alphabet a)
    __attribute__((warn_unused_result));

/* Appends the bytes in[0..len) encodes to out; -1 when in is not valid (or out is full). */
int sc_base64_decode(struct sc_buf *out, const char *in, size_t len, enum sc_base64_alphabet a)
    __attribute__((warn_unused_result));

#endif
