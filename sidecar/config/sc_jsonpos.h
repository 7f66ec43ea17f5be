/*
 * sc_jsonpos - finds where a value lives in the source text of a JSON
 * document, so configuration errors can say FILE:LINE:COL.
 *
 * jansson keeps no node positions after parsing, so this is a small scanner
 * over the original text that walks a path of member names and array
 * indices.  It assumes the text is valid JSON (it was parsed by jansson
 * first) and never allocates, except in sc_jsonpos_key_ending_at().
 *
 * Lines and columns are 1-based and columns count characters, not bytes,
 * exactly like jansson's own error positions.
 */
#ifndef SC_JSONPOS_H
#define SC_JSONPOS_H

#include <stddef.h>

/* One step of a path: a member name, or an array index when key is NULL. */
struct sc_jsonpos_seg {
    const char *key;
    size_t index;
};

struct sc_jsonpos {
    size_t offset; /* byte offset in the text */
    int line;
    int column;
};

enum sc_jsonpos_what {
    SC_JSONPOS_VALUE, /* the first character of the value (the '{' of an object) */
    SC_JSONPOS_KEY,   /* the opening quote of the last segment's member name */
};

/*
 * Locates path (n segments) in text (len bytes).  Returns how many leading
 * segments were found (n on success) and sets *pos to the position of the
 * deepest one found: its value, or its member name for SC_JSONPOS_KEY when
 * the whole path was found.  With 0 segments found *pos is the top-level
 * value, so the result is always a usable position.
 */
size_t sc_jsonpos_find(const char *text, size_t len, const struct sc_jsonpos_seg *path, size_t n,
                       enum sc_jsonpos_what what, struct sc_jsonpos *pos);

/* The line and column of byte offset (clamped to len). */
void sc_jsonpos_at(const char *text, size_t len, size_t offset, struct sc_jsonpos *pos);

/*
 * Finds the member name whose closing quote ends at byte offset end (where
 * jansson stops when it rejects a duplicate key).  On success returns 0,
 * sets *pos to the name's opening quote and *path / *n to the path of that
 * member, the last segment being the name itself; free it with
 * sc_jsonpos_path_free().  Returns -1 when there is no such name.
 */
int sc_jsonpos_key_ending_at(const char *text, size_t len, size_t end, struct sc_jsonpos *pos,
                             struct sc_jsonpos_seg **path, size_t *n);

void sc_jsonpos_path_free(struct sc_jsonpos_seg *path, size_t n);

#endif
