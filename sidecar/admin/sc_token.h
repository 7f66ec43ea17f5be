/*
 * sc_token - opaque, URL-safe, versioned tokens: "v1." followed by the
 * base64url encoding (RFC 4648 §5, no padding) of a compact JSON object.
 *
 * Event resume tokens (sc_events) and checkpoint page tokens (sc_inspect)
 * are built on it.  The JSON inside is an implementation detail: callers
 * outside those modules must treat a token as an opaque string.  The "v1."
 * prefix lets a later release change the contents and still recognise (and
 * reject with a clear message) the tokens of this one.
 *
 * @locality any thread.
 */
#ifndef SC_TOKEN_H
#define SC_TOKEN_H

#include <stddef.h>

#include <jansson.h>

/* The longest token accepted (a snapshot with many in-progress xids is the big case). */
#define SC_TOKEN_MAX 32768

/* Encodes obj; returns a malloc'd token. */
char *sc_token_encode(const json_t *obj);

/*
 * Decodes a token into a new JSON object (caller json_decref()s).  what
 * names the kind of token in messages ("resume token", "page token").
 * Returns NULL with a message in err if the token is not one of ours.
 */
json_t *sc_token_decode(const char *token, const char *what, char *err, size_t errsize);

#endif
