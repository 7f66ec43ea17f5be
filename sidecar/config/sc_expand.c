/*
 * sc_expand.c - ${VAR}, ${VAR:-default}, ${file:/path} and $$ in config
 * strings (see sc_expand.h for the rules).
 *
 * Nothing here may put a value into an error message: values are often
 * passwords.  Messages name the variable or the file, and point at syntax
 * errors by character position instead of quoting the text.
 */
#include "config/sc_expand.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/sc_util.h"

#define MAX_NAME 255

bool sc_expand_needed(const char *s, size_t len)
{
    for (const char *p = s, *end = s + len; (p = memchr(p, '$', (size_t)(end - p))) != NULL; p++) {
        if (p + 1 < end && (p[1] == '{' || p[1] == '$'))
            return true;
    }
    return false;
}

static int read_file(const char *path, size_t max, bool regular_only, char **out, size_t *outlen)
{
    /* O_NONBLOCK: opening a FIFO without a writer would otherwise wait forever. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | (regular_only ? O_NONBLOCK : 0));
    if (fd < 0)
        return -1;
    int result = -1, saved = 0;
    struct sc_buf b;
    sc_buf_init(&b, max);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        saved = errno;
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        saved = EISDIR;
        goto out;
    }
    if (regular_only && !S_ISREG(st.st_mode)) {
        saved = EINVAL;
        goto out;
    }
    if (S_ISREG(st.st_mode) && (uintmax_t)st.st_size > (uintmax_t)max) {
        saved = EFBIG;
        goto out;
    }
    for (;;) {
        char chunk[16384];
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            saved = errno;
            goto out;
        }
        if (n == 0)
            break;
        if (sc_buf_append(&b, chunk, (size_t)n) < 0) {
            saved = EFBIG;
            goto out;
        }
    }
    /* sc_buf always allocates one spare byte past cap for a terminating NUL. */
    if (!b.data)
        b.data = sc_xcalloc(1, 1);
    b.data[b.len] = '\0';
    *out = b.data;
    *outlen = b.len;
    b.data = NULL;
    result = 0;
out:
    sc_buf_free(&b);
    close(fd);
    if (result < 0)
        errno = saved;
    return result;
}

int sc_expand_read_file(const char *path, size_t max, char **out, size_t *outlen)
{
    return read_file(path, max, false, out, outlen);
}

int sc_expand_read_regular_file(const char *path, size_t max, char **out, size_t *outlen)
{
    return read_file(path, max, true, out, outlen);
}

static void set_err(char *err, size_t errsize, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errsize, const char *fmt, ...)
{
    if (!err || errsize == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errsize, fmt, ap);
    va_end(ap);
}

static bool is_name_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_name_char(char c)
{
    return is_name_start(c) || (c >= '0' && c <= '9');
}

static bool contains(const char *s, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= len; i++)
        if (memcmp(s + i, needle, n) == 0)
            return true;
    return false;
}

/* Appends the contents of the file named by path[0..len) to b. */
static int expand_file(struct sc_buf *b, const char *path, size_t len, size_t at, char *err,
                       size_t errsize)
{
    if (len == 0) {
        set_err(err, errsize, "empty file name in \"${file:}\" at character %zu", at);
        return -1;
    }
    if (contains(path, len, "${")) {
        set_err(err, errsize, "nested \"${\" in \"${file:...}\" at character %zu is not supported",
                at);
        return -1;
    }
    if (memchr(path, '\0', len) || len > 4096) {
        set_err(err, errsize, "invalid file name in \"${file:...}\" at character %zu", at);
        return -1;
    }
    char *name = sc_xmalloc(len + 1);
    memcpy(name, path, len);
    name[len] = '\0';
    char *data = NULL;
    size_t n = 0;
    int result = -1;
    if (sc_expand_read_regular_file(name, SC_EXPAND_MAX_FILE, &data, &n) < 0) {
        if (errno == EFBIG)
            set_err(err, errsize, "file \"%s\" is larger than %d KiB", name,
                    SC_EXPAND_MAX_FILE / 1024);
        else if (errno == EINVAL)
            set_err(err, errsize,
                    "\"%s\" is not a regular file (a pipe or a device could "
                    "block or never end)",
                    name);
        else
            set_err(err, errsize, "cannot read file \"%s\": %s", name, strerror(errno));
        goto out;
    }
    /* One trailing newline is what `echo secret > file` adds; it is never part of a secret. */
    if (n >= 1 && data[n - 1] == '\n') {
        n--;
        if (n >= 1 && data[n - 1] == '\r')
            n--;
    }
    if (sc_buf_append(b, data, n) < 0) {
        set_err(err, errsize, "expanded value is longer than %d MiB",
                SC_EXPAND_MAX_RESULT / (1024 * 1024));
        goto out;
    }
    result = 0;
out:
    free(data);
    free(name);
    return result;
}

/* Expands the body of "${...}" (between the braces) at character position at. */
static int expand_one(struct sc_buf *b, const char *body, size_t len, size_t at, char *err,
                      size_t errsize)
{
    if (len >= 5 && memcmp(body, "file:", 5) == 0 && (len == 5 || body[5] != '-'))
        return expand_file(b, body + 5, len - 5, at, err, errsize);

    size_t n = 0;
    if (len > 0 && is_name_start(body[0]))
        for (n = 1; n < len && is_name_char(body[n]); n++)
            ;
    if (n == 0) {
        if (len == 0)
            set_err(err, errsize, "empty variable name in \"${}\" at character %zu", at);
        else
            set_err(err, errsize,
                    "invalid variable name at character %zu (a name is a letter or \"_\" "
                    "followed by letters, digits or \"_\")",
                    at);
        return -1;
    }
    if (n > MAX_NAME) {
        set_err(err, errsize, "variable name at character %zu is longer than %d characters", at,
                MAX_NAME);
        return -1;
    }
    char name[MAX_NAME + 1];
    memcpy(name, body, n);
    name[n] = '\0';

    const char *def = NULL;
    size_t deflen = 0;
    if (n < len) {
        if (len - n >= 2 && body[n] == ':' && body[n + 1] == '-') {
            def = body + n + 2;
            deflen = len - n - 2;
        } else if (strchr(":-?=+", body[n])) {
            set_err(err, errsize,
                    "unsupported expansion after \"${%s\" at character %zu (use ${%s} or "
                    "${%s:-default})",
                    name, at, name, name);
            return -1;
        } else {
            set_err(err, errsize,
                    "invalid variable name at character %zu (a name is a letter or \"_\" "
                    "followed by letters, digits or \"_\")",
                    at);
            return -1;
        }
        if (contains(def, deflen, "${")) {
            set_err(err, errsize,
                    "nested \"${\" in the default of ${%s} is not supported (a default is "
                    "literal text)",
                    name);
            return -1;
        }
    }

    const char *value = getenv(name);
    size_t vlen;
    if (def && (!value || !*value)) {
        value = def;
        vlen = deflen;
    } else if (!value) {
        set_err(err, errsize,
                "environment variable %s is not set (use ${%s:-default} for a default)", name,
                name);
        return -1;
    } else {
        vlen = strlen(value);
    }
    if (sc_buf_append(b, value, vlen) < 0) {
        set_err(err, errsize, "expanded value is longer than %d MiB",
                SC_EXPAND_MAX_RESULT / (1024 * 1024));
        return -1;
    }
    return 0;
}

int sc_expand(const char *s, size_t len, char **out, size_t *outlen, char *err, size_t errsize)
{
    struct sc_buf b;
    sc_buf_init(&b, SC_EXPAND_MAX_RESULT);
    int result = -1;
    size_t i = 0;
    while (i < len) {
        const char *dollar = memchr(s + i, '$', len - i);
        size_t d = dollar ? (size_t)(dollar - s) : len;
        if (sc_buf_append(&b, s + i, d - i) < 0)
            goto too_long;
        if (d == len)
            break;
        if (d + 1 < len && s[d + 1] == '$') {
            if (sc_buf_putc(&b, '$') < 0)
                goto too_long;
            i = d + 2;
            continue;
        }
        if (d + 1 >= len || s[d + 1] != '{') {
            if (sc_buf_putc(&b, '$') < 0)
                goto too_long;
            i = d + 1;
            continue;
        }
        const char *close = memchr(s + d + 2, '}', len - d - 2);
        if (!close) {
            set_err(err, errsize, "unterminated \"${\" at character %zu (missing \"}\")", d + 1);
            goto out;
        }
        size_t end = (size_t)(close - s);
        if (expand_one(&b, s + d + 2, end - d - 2, d + 1, err, errsize) < 0)
            goto out;
        i = end + 1;
    }
    *out = b.data ? b.data : sc_xcalloc(1, 1);
    (*out)[b.len] = '\0';
    *outlen = b.len;
    b.data = NULL;
    result = 0;
    goto out;
too_long:
    set_err(err, errsize, "expanded value is longer than %d MiB",
            SC_EXPAND_MAX_RESULT / (1024 * 1024));
out:
    sc_buf_free(&b);
    return result;
}
