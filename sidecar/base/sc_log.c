/*
 * sc_log.c - structured log lines on stderr.
 */
#include "base/sc_log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum sc_log_level log_level = SC_LOG_INFO;
static enum sc_log_format log_format = SC_LOG_FORMAT_JSON;
static int log_fd = 2;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void sc_log_setup(enum sc_log_level level, enum sc_log_format format)
{
    log_level = level;
    log_format = format;
}

void sc_log_set_fd(int fd)
{
    log_fd = fd;
}

bool sc_log_enabled(enum sc_log_level level)
{
    return level >= log_level;
}

int sc_log_level_parse(const char *s)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
        if (strcmp(s, level_names[i]) == 0)
            return (int)i;
    if (strcmp(s, "warning") == 0)
        return SC_LOG_WARN;
    return -1;
}

/* A bounded line builder: text past the end is cut, never overflows. */
struct line {
    char buf[4096];
    size_t len;
};

static void put(struct line *l, const char *s, size_t n)
{
    size_t room = sizeof(l->buf) - 2 - l->len; /* keep space for '\n' */
    if (n > room)
        n = room;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

static void putf(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct line *l, const char *fmt, ...)
{
    size_t room = sizeof(l->buf) - 2 - l->len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->buf + l->len, room + 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    l->len += (size_t)n < room ? (size_t)n : room;
}

/* Appends s as the inside of a JSON string. */
static void put_json_escaped(struct line *l, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[7];
        switch (*p) {
        case '"':
            put(l, "\\\"", 2);
            break;
        case '\\':
            put(l, "\\\\", 2);
            break;
        case '\n':
            put(l, "\\n", 2);
            break;
        case '\r':
            put(l, "\\r", 2);
            break;
        case '\t':
            put(l, "\\t", 2);
            break;
        default:
            if (*p < 0x20) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[*p >> 4];
                esc[5] = hex[*p & 15];
                put(l, esc, 6);
            } else {
                put(l, (const char *)p, 1);
            }
        }
    }
}

void sc_log(enum sc_log_level level, const struct sc_log_fields *f, const char *fmt, ...)
{
    if (!sc_log_enabled(level))
        return;
    int saved_errno = errno;

    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    size_t wl = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + wl, sizeof(when) - wl, ".%03ldZ", ts.tv_nsec / 1000000);

    struct line l;
    l.len = 0;
    if (log_format == SC_LOG_FORMAT_JSON) {
        putf(&l, "{\"ts\":\"%s\",\"level\":\"%s\"", when, level_names[level]);
        if (f && f->pipeline) {
            puts_(&l, ",\"pipeline\":\"");
            put_json_escaped(&l, f->pipeline);
            puts_(&l, "\"");
        }
        if (f && f->topic) {
            puts_(&l, ",\"topic\":\"");
            put_json_escaped(&l, f->topic);
            puts_(&l, "\"");
        }
        if (f && f->partition >= 0)
            putf(&l, ",\"partition\":%d", (int)f->partition);
        puts_(&l, ",\"msg\":\"");
        put_json_escaped(&l, msg);
        puts_(&l, "\"}");
    } else {
        putf(&l, "%s %-5s ", when, level_names[level]);
        if (f && f->pipeline)
            putf(&l, "[%s] ", f->pipeline);
        if (f && f->topic && f->partition >= 0)
            putf(&l, "%s[%d] ", f->topic, (int)f->partition);
        else if (f && f->topic)
            putf(&l, "%s ", f->topic);
        puts_(&l, msg);
    }
    l.buf[l.len++] = '\n';

    const char *p = l.buf;
    size_t left = l.len;
    while (left > 0) {
        ssize_t n = write(log_fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        p += n;
        left -= (size_t)n;
    }
    errno = saved_errno;
}
