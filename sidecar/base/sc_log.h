/*
 * sc_log - one line per log record on stderr, as JSON (default) or text.
 *
 * Every record may carry the pipeline / topic / partition it concerns, so a
 * user can grep or filter by partition at 3 a.m.  A record is built in a
 * stack buffer and written with one write(2), so lines from several threads
 * never interleave.  Secrets must be masked by the caller (see sc_pg_dsn_mask).
 *
 * @locality any thread; sc_log_setup() before threads start.
 */
#ifndef SC_LOG_H
#define SC_LOG_H

#include <stdbool.h>
#include <stdint.h>

enum sc_log_level {
    SC_LOG_DEBUG,
    SC_LOG_INFO,
    SC_LOG_WARN,
    SC_LOG_ERROR,
};

enum sc_log_format {
    SC_LOG_FORMAT_JSON,
    SC_LOG_FORMAT_TEXT,
};

/* Optional context of a record; partition < 0 means "none". */
struct sc_log_fields {
    const char *pipeline;
    const char *topic;
    int32_t partition;
};

/* Sets the minimum level and the format (defaults: info, json). */
void sc_log_setup(enum sc_log_level level, enum sc_log_format format);

/* Redirects output to fd (default 2); used by tests. */
void sc_log_set_fd(int fd);

bool sc_log_enabled(enum sc_log_level level);

/* Returns the level named by s ("debug", "info", "warn", "error"), or -1. */
int sc_log_level_parse(const char *s);

void sc_log(enum sc_log_level level, const struct sc_log_fields *f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define sc_debug(f, ...)                          \
    do {                                          \
        if (sc_log_enabled(SC_LOG_DEBUG))         \
            sc_log(SC_LOG_DEBUG, f, __VA_ARGS__); \
    } while (0)
#define sc_info(f, ...)  sc_log(SC_LOG_INFO, f, __VA_ARGS__)
#define sc_warn(f, ...)  sc_log(SC_LOG_WARN, f, __VA_ARGS__)
#define sc_error(f, ...) sc_log(SC_LOG_ERROR, f, __VA_ARGS__)

#endif
