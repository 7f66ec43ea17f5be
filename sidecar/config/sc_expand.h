/*
 * sc_expand - variable expansion in configuration strings.
 *
 *   ${VAR}            the environment variable VAR; an error when unset
 *                     (set but empty expands to "")
 *   ${VAR:-default}   VAR, or the literal text default when VAR is unset or
 *                     empty (shell semantics); default may not contain "${"
 *                     or "}"
 *   ${file:/path}     the contents of a file (at most 1 MiB) minus one
 *                     trailing "\n" or "\r\n" (for Docker / Kubernetes
 *                     secrets); ${file:-x} is the variable "file" instead
 *   $$                a literal "$"
 *
 * A "$" followed by anything else is literal.  VAR is [A-Za-z_][A-Za-z0-9_]*.
 * Expansion is one pass: text that comes out of a variable or a file is
 * never expanded again.  Error messages name the variable or the file and
 * never contain a value, so secrets cannot leak through them.
 *
 * @locality any thread (reads the environment with getenv).
 */
#ifndef SC_EXPAND_H
#define SC_EXPAND_H

#include <stdbool.h>
#include <stddef.h>

#define SC_EXPAND_MAX_FILE   (1024 * 1024)      /* bytes read by one ${file:...} */
#define SC_EXPAND_MAX_RESULT (16 * 1024 * 1024) /* bytes of one expanded string */

/* Does s (len bytes) contain anything sc_expand() would change ("${" or "$$")? */
bool sc_expand_needed(const char *s, size_t len);

/*
 * Expands s (len bytes, may contain NUL).  On success returns 0 and sets *out
 * to a malloc'd, NUL-terminated string of *outlen bytes (it may contain NUL
 * bytes that came from a file).  On failure returns -1 and writes a message
 * such as "environment variable FOO is not set (...)" into err.
 */
int sc_expand(const char *s, size_t len, char **out, size_t *outlen, char *err, size_t errsize)
    __attribute__((warn_unused_result));

/*
 * Reads the whole file at path, at most max bytes, into a malloc'd
 * NUL-terminated buffer.  Returns 0, or -1 with errno set (EFBIG when the
 * file is larger than max, EISDIR for a directory).
 */
int sc_expand_read_file(const char *path, size_t max, char **out, size_t *outlen)
    __attribute__((warn_unused_result));
/*
 * The same for a file that must be a regular file (${file:} secrets, CA
 * bundles): a FIFO, socket or device is refused with EINVAL instead of
 * blocking on open or read.
 */
int sc_expand_read_regular_file(const char *path, size_t max, char **out, size_t *outlen)
    __attribute__((warn_unused_result));

#endif
