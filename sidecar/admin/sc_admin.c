/*
 * sc_admin.c - the admin HTTP endpoint (see sc_admin.h).
 *
 * Routes are a table {path, auth, query parameters, handler} (pgbouncer's
 * admin.c style); every error is a JSON object {"error": "..."} with a
 * fitting status code: 400 bad parameter, 401 token, 404, 405, 410 expired
 * resume token, 503 PostgreSQL unreachable or too many streams.
 *
 * PostgreSQL: the short /v1 queries share one connection under db_mu
 * (opened on first use, dropped after a connection error, re-opened at most
 * once a second, with a statement timeout so a stuck query cannot hold the
 * mutex for long).  Every event stream has its own connection, because it
 * LISTENs and waits on it for as long as the client stays.
 *
 * Event streams (Server-Sent Events): libmicrohttpd runs one thread per
 * connection here, so the content callback may block; it waits on its
 * LISTEN connection for at most a second at a time, checking whether the
 * client hung up and whether the endpoint is stopping, and sends a comment
 * line every 15 s so proxies keep the connection open.
 */
#include "admin/sc_admin.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <microhttpd.h>

#include "admin/sc_events.h"
#include "admin/sc_inspect.h"
#include "base/sc_log.h"
#include "base/sc_metrics.h"
#include "base/sc_util.h"
#include "config/sc_config.h"
#include "db/sc_pg.h"
#include "record/sc_envelope.h"

/* Concurrent /v1/events/stream responses; more get 503. */
#define MAX_STREAMS 8
/* A comment line this often keeps idle streams (and the proxies on the way) open. */
#define KEEPALIVE_MS 15000
/* A stream re-reads at least this often: the horizon can move without a notification. */
#define STREAM_POLL_MS 1000
#define STREAM_BATCH   200
/* An SSE client that stops reading: at most this much is buffered for it. */
#define STREAM_BUFFER_MAX (8u << 20)
#define DEFAULT_LIMIT     100
#define MAX_LIMIT         1000

struct sc_admin {
    struct MHD_Daemon *d;
    const struct sc_config *cfg;
    struct sc_admin_hooks hooks;
    int port;
    char *schema_q;
    pthread_mutex_t db_mu;
    PGconn *db;          /* the short queries' connection, under db_mu; NULL = not open */
    int64_t db_retry_ms; /* under db_mu: no new connection attempt before this */
    char db_error[512];  /* under db_mu: why the last attempt failed */
    atomic_int streams;  /* open event streams */
    atomic_bool stopping;
};

struct request {
    struct sc_admin *a;
    struct MHD_Connection *c;
    const char *url;
    const char *method;
};

typedef enum MHD_Result (*handler_fn)(struct request *r);

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             const char *body, size_t len)
{
    struct MHD_Response *res =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!res)
        return MHD_NO;
    MHD_add_response_header(res, "Content-Type", type);
    MHD_add_response_header(res, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(c, status, res);
    MHD_destroy_response(res);
    return ret;
}

/*
 * A copy of s (malloc'd) that is valid UTF-8, for a JSON string: each byte
 * that does not belong to a valid sequence becomes the text \xNN.  Error
 * messages quote what a client sent (a query parameter's name, a filter
 * value: libmicrohttpd %-decodes them to arbitrary bytes) or cut a message
 * in the middle of a character, and json_pack() refuses such text.
 */
static char *utf8_sanitize(const char *s)
{
    size_t len = strlen(s);
    if (sc_utf8_valid(s, len))
        return sc_xstrdup(s);
    static const char hex[] = "0123456789abcdef";
    char *out = sc_xmalloc(len * 4 + 1), *o = out;
    for (size_t i = 0; i < len;) {
        unsigned char b = (unsigned char)s[i];
        /* The length a sequence starting with b has if it is valid (sc_utf8_valid decides). */
        size_t n = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : 4;
        if (n <= len - i && sc_utf8_valid(s + i, n)) {
            memcpy(o, s + i, n);
            o += n;
            i += n;
        } else {
            *o++ = '\\';
            *o++ = 'x';
            *o++ = hex[b >> 4];
            *o++ = hex[b & 15];
            i++;
        }
    }
    *o = '\0';
    return out;
}

/* {"error": msg} with msg made valid UTF-8 (never NULL short of running out of memory). */
static json_t *error_object(const char *msg)
{
    char *clean = utf8_sanitize(msg);
    json_t *j = json_pack("{s:s}", "error", clean);
    free(clean);
    return j;
}

/*
 * Answers with j (taking it).  A value jansson refused (NULL) is a bug here,
 * but the client still gets an answer, a 500, instead of a closed connection.
 */
static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    if (!s) {
        static const char body[] = "{\"error\":\"internal error: could not encode the answer\"}\n";
        sc_error(NULL, "admin: could not encode the answer (status %u) as JSON", status);
        return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "application/json", body, sizeof(body) - 1);
    }
    size_t len = strlen(s);
    s = sc_xrealloc(s, len + 2);
    s[len++] = '\n';
    enum MHD_Result ret = reply(c, status, "application/json", s, len);
    free(s);
    return ret;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *msg)
{
    return reply_json(c, status, error_object(msg));
}

static enum MHD_Result h_healthz(struct request *r)
{
    return reply_json(r->c, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
}

static enum MHD_Result h_readyz(struct request *r)
{
    char why[512] = "";
    bool ok = r->a->hooks.ready ? r->a->hooks.ready(r->a->hooks.arg, why, sizeof(why)) : true;
    if (ok)
        return reply_json(r->c, MHD_HTTP_OK, json_pack("{s:s}", "status", "ready"));
    char *reason = utf8_sanitize(why); /* may quote a broker's or a server's text */
    json_t *j = json_pack("{s:s,s:s}", "status", "not ready", "reason", reason);
    free(reason);
    return reply_json(r->c, MHD_HTTP_SERVICE_UNAVAILABLE, j);
}

static enum MHD_Result h_metrics(struct request *r)
{
    struct sc_buf b;
    sc_buf_init(&b, 64u << 20);
    if (sc_metrics_render(&b) != 0) {
        sc_buf_free(&b);
        return reply_error(r->c, MHD_HTTP_INTERNAL_SERVER_ERROR, "metrics too large");
    }
    enum MHD_Result ret = reply(r->c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
                                b.data ? b.data : "", b.len);
    sc_buf_free(&b);
    return ret;
}

/* ---- query parameters ---------------------------------------------------------- */

static const char *arg(struct request *r, const char *name)
{
    return MHD_lookup_connection_value(r->c, MHD_GET_ARGUMENT_KIND, name);
}

/* limit=N: absent -> DEFAULT_LIMIT; otherwise 1..MAX_LIMIT or -1 (bad). */
static int arg_limit(struct request *r)
{
    const char *v = arg(r, "limit");
    int64_t n;
    if (!v)
        return DEFAULT_LIMIT;
    if (sc_parse_i64(v, &n) != 0 || n < 1 || n > MAX_LIMIT)
        return -1;
    return (int)n;
}

struct arg_check {
    const char *allowed; /* space-separated names */
    char bad[128];       /* the first problem, for the 400 */
    const char *seen[16];
    size_t nseen;
};

static enum MHD_Result check_one_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind, (void)value;
    struct arg_check *ck = cls;
    if (!sc_word_in(ck->allowed, key)) {
        snprintf(ck->bad, sizeof(ck->bad), "unknown query parameter \"%.64s\"", key);
        return MHD_NO;
    }
    for (size_t i = 0; i < ck->nseen; i++)
        if (strcmp(ck->seen[i], key) == 0) {
            snprintf(ck->bad, sizeof(ck->bad), "query parameter \"%.64s\" given twice", key);
            return MHD_NO;
        }
    if (ck->nseen < SC_ARRAY_LEN(ck->seen))
        ck->seen[ck->nseen++] = key;
    return MHD_YES;
}

/* ---- the short queries' connection ------------------------------------------------ */

/*
 * Locks db_mu and returns the connection (opened if needed), or unlocks and
 * returns NULL with the reason in err.
 */
static PGconn *db_acquire(struct sc_admin *a, char *err, size_t errsize)
{
    pthread_mutex_lock(&a->db_mu);
    if (a->db && PQstatus(a->db) != CONNECTION_OK) {
        PQfinish(a->db);
        a->db = NULL;
    }
    if (!a->db && sc_mono_ms() >= a->db_retry_ms) {
        a->db = sc_events_connect(a->cfg->postgres.dsn, a->cfg->postgres.connect_timeout_ms,
                                  "kafka-sidecar/admin", a->db_error, sizeof(a->db_error));
        if (a->db) {
            PGresult *res = PQexec(a->db, "SET statement_timeout TO '10s'");
            PQclear(res);
        } else {
            a->db_retry_ms = sc_mono_ms() + 1000;
        }
    }
    if (!a->db) {
        snprintf(err, errsize, "PostgreSQL unavailable: %s", a->db_error);
        pthread_mutex_unlock(&a->db_mu);
        return NULL;
    }
    return a->db;
}

/* Unlocks db_mu; broken drops the connection (the next request reconnects). */
static void db_release(struct sc_admin *a, bool broken)
{
    if (broken && a->db) {
        PQfinish(a->db);
        a->db = NULL;
    }
    pthread_mutex_unlock(&a->db_mu);
}

/* ---- /v1/status, /v1/checkpoints, /v1/events ---------------------------------------- */

static enum MHD_Result h_status(struct request *r)
{
    char err[1024];
    json_t *rows = NULL;
    PGconn *conn = db_acquire(r->a, err, sizeof(err));
    if (!conn)
        return reply_error(r->c, MHD_HTTP_SERVICE_UNAVAILABLE, err);
    int rc = sc_inspect_status(conn, r->a->schema_q, &rows, err, sizeof(err));
    db_release(r->a, rc == SC_READ_RETRY);
    if (rc != SC_READ_OK)
        return reply_error(r->c,
                           rc == SC_READ_RETRY ? MHD_HTTP_SERVICE_UNAVAILABLE
                                               : MHD_HTTP_INTERNAL_SERVER_ERROR,
                           err);
    return reply_json(r->c, MHD_HTTP_OK, rows);
}

static enum MHD_Result h_checkpoints(struct request *r)
{
    char err[1024];
    int limit = arg_limit(r);
    if (limit < 0)
        return reply_error(r->c, MHD_HTTP_BAD_REQUEST, "limit: expected an integer 1..1000");
    json_t *page = NULL;
    PGconn *conn = db_acquire(r->a, err, sizeof(err));
    if (!conn)
        return reply_error(r->c, MHD_HTTP_SERVICE_UNAVAILABLE, err);
    int rc = sc_inspect_checkpoints_page(conn, r->a->schema_q, arg(r, "page_token"), limit, &page,
                                         err, sizeof(err));
    db_release(r->a, rc == SC_READ_RETRY);
    switch (rc) {
    case SC_READ_OK:
        return reply_json(r->c, MHD_HTTP_OK, page);
    case SC_READ_BAD_TOKEN:
        return reply_error(r->c, MHD_HTTP_BAD_REQUEST, err);
    case SC_READ_RETRY:
        return reply_error(r->c, MHD_HTTP_SERVICE_UNAVAILABLE, err);
    default:
        return reply_error(r->c, MHD_HTTP_INTERNAL_SERVER_ERROR, err);
    }
}

/* The HTTP answer to a failed read. */
static enum MHD_Result reply_read_error(struct MHD_Connection *c, int rc, const char *err)
{
    if (rc == SC_READ_EXPIRED) {
        json_t *j = error_object(err);
        json_object_set_new(j, "hint",
                            json_string("add restart=snapshot to start again from the current "
                                        "checkpoints"));
        return reply_json(c, MHD_HTTP_GONE, j);
    }
    return reply_error(
        c, rc == SC_READ_RETRY ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_INTERNAL_SERVER_ERROR,
        err);
}

/*
 * The cursor a request asks for: filter from pipeline= and partition=,
 * position from the token (NULL = a fresh start with a snapshot).  On a
 * bad parameter returns -1 with the message in err.
 */
static int request_cursor(struct request *r, const char *token, struct sc_events_cursor *cur,
                          bool *restart, char *err, size_t errsize)
{
    struct sc_events_filter f;
    sc_events_cursor_init(cur, NULL); /* the caller frees it whatever happens */
    const char *rs = arg(r, "restart");
    if (rs && strcmp(rs, "snapshot") != 0) {
        snprintf(err, errsize, "restart: the only value is \"snapshot\"");
        return -1;
    }
    *restart = rs != NULL;
    if (sc_events_filter_init(&f, arg(r, "pipeline"), arg(r, "partition"), err, errsize) != 0)
        return -1;
    sc_events_cursor_free(cur);
    sc_events_cursor_init(cur, &f);
    int rc = token ? sc_events_cursor_from_token(cur, token, &f, err, errsize) : 0;
    sc_events_filter_free(&f);
    return rc;
}

static enum MHD_Result h_events(struct request *r)
{
    char err[2048];
    struct sc_events_cursor cur;
    bool restart;
    int limit = arg_limit(r);
    if (limit < 0)
        return reply_error(r->c, MHD_HTTP_BAD_REQUEST, "limit: expected an integer 1..1000");
    if (request_cursor(r, arg(r, "from"), &cur, &restart, err, sizeof(err)) != 0) {
        sc_events_cursor_free(&cur);
        return reply_error(r->c, MHD_HTTP_BAD_REQUEST, err);
    }
    json_t *events = json_array();
    enum MHD_Result ret;
    PGconn *conn = db_acquire(r->a, err, sizeof(err));
    if (!conn) {
        ret = reply_error(r->c, MHD_HTTP_SERVICE_UNAVAILABLE, err);
        goto out;
    }
    int n = sc_events_read(conn, r->a->schema_q, &cur, limit, events, err, sizeof(err));
    if (n == SC_READ_EXPIRED && restart) {
        sc_events_cursor_restart(&cur);
        n = sc_events_read(conn, r->a->schema_q, &cur, limit, events, err, sizeof(err));
    }
    db_release(r->a, n == SC_READ_RETRY);
    if (n < 0) {
        ret = reply_read_error(r->c, n, err);
        goto out;
    }
    char *next = sc_events_cursor_token(&cur);
    ret =
        reply_json(r->c, MHD_HTTP_OK, json_pack("{s:O,s:s}", "events", events, "next_token", next));
    free(next);
out:
    json_decref(events);
    sc_events_cursor_free(&cur);
    return ret;
}

/* ---- /v1/events/stream ---------------------------------------------------------------- */

struct stream {
    struct sc_admin *a;
    PGconn *conn; /* own connection, LISTENing; NULL while reconnecting */
    struct sc_events_cursor cur;
    bool restart;      /* restart=snapshot: an expired position starts over */
    bool done;         /* end after what is buffered */
    struct sc_buf out; /* SSE text not yet handed to libmicrohttpd */
    size_t sent;       /* bytes of out already handed over */
    int64_t last_write_ms;
    int64_t next_connect_ms;
    int fd; /* the client's socket, to notice a hang-up while idle */
};

static void stream_free(void *cls)
{
    struct stream *s = cls;
    PQfinish(s->conn);
    sc_events_cursor_free(&s->cur);
    sc_buf_free(&s->out);
    atomic_fetch_sub(&s->a->streams, 1);
    sc_debug(NULL, "admin: event stream closed");
    free(s);
}

/* Appends "id: TOKEN\ndata: JSON\n\n" for each object (compact JSON has no newline). */
static int stream_format(struct stream *s, json_t *arr)
{
    size_t i;
    json_t *obj;
    json_array_foreach(arr, i, obj)
    {
        const char *tok = json_string_value(json_object_get(obj, "token"));
        char *data = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
        int rc = data ? sc_buf_printf(&s->out, "id: %s\ndata: %s\n\n", tok ? tok : "", data) : -1;
        free(data);
        if (rc != 0)
            return -1;
    }
    return 0;
}

/* A last event saying why the stream ends (event type "sidecar-error", not "error":
 * that name is EventSource's own connection error). */
static void stream_fail(struct stream *s, int code, const char *msg)
{
    json_t *j = error_object(msg);
    json_object_set_new(j, "status", json_integer(code));
    char *data = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    (void)!sc_buf_printf(&s->out, "event: sidecar-error\ndata: %s\n\n", data ? data : "{}");
    free(data);
    s->done = true;
}

/* Reads what is there for the stream; -1 when the stream should end (message queued). */
static int stream_fill(struct stream *s, char *err, size_t errsize)
{
    json_t *arr = json_array();
    int n = sc_events_read(s->conn, s->a->schema_q, &s->cur, STREAM_BATCH, arr, err, errsize);
    if (n == SC_READ_EXPIRED && s->restart) {
        sc_events_cursor_restart(&s->cur);
        n = sc_events_read(s->conn, s->a->schema_q, &s->cur, STREAM_BATCH, arr, err, errsize);
    }
    if (n >= 0 && stream_format(s, arr) != 0) {
        snprintf(err, errsize, "client too slow: more than %u bytes waiting", STREAM_BUFFER_MAX);
        n = SC_READ_FAILED;
    }
    json_decref(arr);
    return n;
}

/* Did the client hang up?  Only looked at between writes, so a peek is enough. */
static bool client_gone(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (fd < 0 || poll(&p, 1, 0) != 1)
        return false;
    if (p.revents & (POLLHUP | POLLERR | POLLRDHUP))
        return true;
    char c;
    return (p.revents & POLLIN) && recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static int stream_connect(struct stream *s, char *err, size_t errsize)
{
    s->conn = sc_events_connect(s->a->cfg->postgres.dsn, s->a->cfg->postgres.connect_timeout_ms,
                                "kafka-sidecar/admin-stream", err, errsize);
    if (!s->conn)
        return SC_READ_RETRY;
    int rc = sc_events_listen(s->conn, s->a->schema_q, err, errsize);
    if (rc != 0) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
    return rc;
}

/* libmicrohttpd's content callback: blocks (thread per connection) until there is text. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct stream *s = cls;
    char err[2048];
    for (;;) {
        if (s->sent < s->out.len) {
            size_t n = s->out.len - s->sent < max ? s->out.len - s->sent : max;
            memcpy(buf, s->out.data + s->sent, n);
            s->sent += n;
            if (s->sent == s->out.len) {
                sc_buf_reset(&s->out);
                s->sent = 0;
            }
            s->last_write_ms = sc_mono_ms();
            return (ssize_t)n;
        }
        if (s->done || atomic_load(&s->a->stopping))
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (client_gone(s->fd))
            return MHD_CONTENT_READER_END_WITH_ERROR;
        int64_t now = sc_mono_ms();
        if (now - s->last_write_ms >= KEEPALIVE_MS) {
            (void)!sc_buf_printf(&s->out, ": keep-alive\n\n");
            continue;
        }
        int wait_ms = (int)(KEEPALIVE_MS - (now - s->last_write_ms));
        if (wait_ms > STREAM_POLL_MS)
            wait_ms = STREAM_POLL_MS;
        if (!s->conn) {
            /* PostgreSQL went away: keep the client, reconnect, resume from the cursor. */
            if (now < s->next_connect_ms) {
                sc_sleep_ms(wait_ms, NULL);
                continue;
            }
            int rc = stream_connect(s, err, sizeof(err));
            if (rc == SC_READ_FAILED)
                stream_fail(s, 500, err);
            else if (rc != 0)
                s->next_connect_ms = now + 1000;
            continue;
        }
        int n = stream_fill(s, err, sizeof(err));
        if (n == SC_READ_RETRY) {
            sc_warn(NULL, "admin: event stream: %s; reconnecting", err);
            PQfinish(s->conn);
            s->conn = NULL;
            continue;
        }
        if (n < 0) {
            stream_fail(s, n == SC_READ_EXPIRED ? 410 : 500, err);
            continue;
        }
        if (n >= STREAM_BATCH || s->out.len > 0)
            continue;
        if (sc_events_wait(s->conn, wait_ms) < 0) {
            PQfinish(s->conn);
            s->conn = NULL;
        }
    }
}

static enum MHD_Result h_events_stream(struct request *r)
{
    char err[2048];
    struct sc_admin *a = r->a;
    /* A reconnecting EventSource sends the id of the last event it got: that wins over ?from. */
    const char *token = MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, "Last-Event-ID");
    if (!token || !*token)
        token = arg(r, "from");
    if (atomic_fetch_add(&a->streams, 1) >= MAX_STREAMS) {
        atomic_fetch_sub(&a->streams, 1);
        return reply_error(r->c, MHD_HTTP_SERVICE_UNAVAILABLE,
                           "too many event streams open (at most 8): try again later");
    }
    struct stream *s = sc_xcalloc(1, sizeof(*s));
    s->a = a;
    s->fd = -1;
    sc_buf_init(&s->out, STREAM_BUFFER_MAX);
    if (request_cursor(r, token, &s->cur, &s->restart, err, sizeof(err)) != 0) {
        stream_free(s);
        return reply_error(r->c, MHD_HTTP_BAD_REQUEST, err);
    }
    int rc = stream_connect(s, err, sizeof(err));
    if (rc != 0) {
        stream_free(s);
        return reply_error(r->c,
                           rc == SC_READ_RETRY ? MHD_HTTP_SERVICE_UNAVAILABLE
                                               : MHD_HTTP_INTERNAL_SERVER_ERROR,
                           err);
    }
    /* The first read before answering, so a bad or expired token is a proper 410 / 5xx. */
    (void)!sc_buf_printf(&s->out, ": kafka-sidecar events\nretry: 2000\n\n");
    rc = stream_fill(s, err, sizeof(err));
    if (rc < 0) {
        stream_free(s);
        return reply_read_error(r->c, rc, err);
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->c, MHD_CONNECTION_INFO_CONNECTION_FD);
    s->fd = ci ? ci->connect_fd : -1;
    s->last_write_ms = sc_mono_ms();
    /* The stream is idle for long stretches by design: our keep-alives replace the timeout. */
    MHD_set_connection_option(r->c, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    struct MHD_Response *res =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, s, stream_free);
    if (!res) {
        stream_free(s);
        return MHD_NO;
    }
    MHD_add_response_header(res, "Content-Type", "text/event-stream; charset=utf-8");
    MHD_add_response_header(res, "Cache-Control", "no-store");
    MHD_add_response_header(res, "X-Accel-Buffering", "no");
    sc_debug(NULL, "admin: event stream opened");
    enum MHD_Result ret = MHD_queue_response(r->c, MHD_HTTP_OK, res);
    MHD_destroy_response(res); /* stream_free runs when libmicrohttpd is done with it */
    return ret;
}

struct route {
    const char *path;
    bool auth;
    const char *params; /* accepted query parameters, space-separated */
    handler_fn fn;
};

static const struct route routes[] = {
    {"/healthz", false, "", h_healthz},
    {"/readyz", true, "", h_readyz},
    {"/metrics", true, "", h_metrics},
    {"/v1/status", true, "", h_status},
    {"/v1/checkpoints", true, "page_token limit", h_checkpoints},
    {"/v1/events", true, "from limit pipeline partition restart", h_events},
    {"/v1/events/stream", true, "from pipeline partition restart", h_events_stream},
};

/* Constant-time comparison so the token cannot be guessed byte by byte. */
static bool token_ok(const char *header, const char *token)
{
    if (!header || strncmp(header, "Bearer ", 7) != 0)
        return false;
    const char *given = header + 7;
    size_t gl = strlen(given), tl = strlen(token);
    unsigned char diff = gl != tl;
    for (size_t i = 0; i < tl; i++)
        diff |= (unsigned char)(token[i] ^ (i < gl ? given[i] : 0));
    return diff == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **state)
{
    (void)version, (void)upload_data;
    struct sc_admin *a = cls;
    if (*state == NULL) {
        /* First call: headers only.  Remember we saw it; answer on the next call. */
        *state = (void *)1;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* no endpoint takes a body: ignore it */
        return MHD_YES;
    }
    const struct route *rt = NULL;
    for (size_t i = 0; i < SC_ARRAY_LEN(routes); i++)
        if (strcmp(routes[i].path, url) == 0)
            rt = &routes[i];
    if (!rt)
        return reply_error(c, MHD_HTTP_NOT_FOUND, "no such endpoint");
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        struct MHD_Response *res = MHD_create_response_from_buffer(
            strlen("{\"error\":\"method not allowed\"}\n"),
            (void *)"{\"error\":\"method not allowed\"}\n", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(res, "Allow", "GET, HEAD");
        MHD_add_response_header(res, "Content-Type", "application/json");
        enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_METHOD_NOT_ALLOWED, res);
        MHD_destroy_response(res);
        return ret;
    }
    if (rt->auth && a->cfg->admin.token && a->cfg->admin.token[0]) {
        const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        if (!token_ok(h, a->cfg->admin.token)) {
            struct MHD_Response *res = MHD_create_response_from_buffer(
                strlen("{\"error\":\"missing or wrong bearer token\"}\n"),
                (void *)"{\"error\":\"missing or wrong bearer token\"}\n", MHD_RESPMEM_PERSISTENT);
            MHD_add_response_header(res, "WWW-Authenticate", "Bearer realm=\"kafka-sidecar\"");
            MHD_add_response_header(res, "Content-Type", "application/json");
            enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_UNAUTHORIZED, res);
            MHD_destroy_response(res);
            return ret;
        }
    }
    struct arg_check ck = {.allowed = rt->params};
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, check_one_arg, &ck);
    if (ck.bad[0])
        return reply_error(c, MHD_HTTP_BAD_REQUEST, ck.bad);
    struct request r = {a, c, url, method};
    return rt->fn(&r);
}

/* Parses "host:port" / "[v6]:port" into a socket address. */
static int parse_listen(const char *listen, struct sockaddr_storage *ss, char *err, size_t errsize)
{
    char host[256];
    const char *colon;
    if (listen[0] == '[') {
        const char *end = strchr(listen, ']');
        if (!end || end[1] != ':') {
            snprintf(err, errsize, "admin.listen \"%s\": expected [IPv6]:PORT", listen);
            return -1;
        }
        snprintf(host, sizeof(host), "%.*s", (int)(end - listen - 1), listen + 1);
        colon = end + 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon) {
            snprintf(err, errsize, "admin.listen \"%s\": expected HOST:PORT", listen);
            return -1;
        }
        snprintf(host, sizeof(host), "%.*s", (int)(colon - listen), listen);
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errsize, "admin.listen \"%s\": %s", listen, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    return 0;
}

struct sc_admin *sc_admin_start(const struct sc_config *cfg, const struct sc_admin_hooks *hooks,
                                char *err, size_t errsize)
{
    err[0] = '\0';
    if (!cfg->admin.listen || !cfg->admin.listen[0])
        return NULL;
    struct sockaddr_storage ss;
    if (parse_listen(cfg->admin.listen, &ss, err, errsize) != 0)
        return NULL;
    struct sc_admin *a = sc_xcalloc(1, sizeof(*a));
    a->cfg = cfg;
    if (hooks)
        a->hooks = *hooks;
    a->schema_q = sc_pg_quote_ident(cfg->postgres.schema);
    pthread_mutex_init(&a->db_mu, NULL);
    atomic_init(&a->streams, 0);
    atomic_init(&a->stopping, false);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    a->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, a, MHD_OPTION_SOCK_ADDR, &ss,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)32,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)16,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536, MHD_OPTION_END);
    if (!a->d) {
        snprintf(err, errsize, "could not listen on %s for the admin endpoint (address in use?)",
                 cfg->admin.listen);
        pthread_mutex_destroy(&a->db_mu);
        free(a->schema_q);
        free(a);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(a->d, MHD_DAEMON_INFO_BIND_PORT);
    a->port = info ? info->port : 0;
    sc_info(NULL, "admin endpoint listening on %s (port %d)%s", cfg->admin.listen, a->port,
            cfg->admin.token && cfg->admin.token[0] ? ", bearer token required" : "");
    return a;
}

int sc_admin_port(const struct sc_admin *a)
{
    return a ? a->port : 0;
}

void sc_admin_stop(struct sc_admin *a)
{
    if (!a)
        return;
    /* Streams notice within STREAM_POLL_MS and end; MHD_stop_daemon() joins their threads. */
    atomic_store(&a->stopping, true);
    MHD_stop_daemon(a->d);
    PQfinish(a->db);
    pthread_mutex_destroy(&a->db_mu);
    free(a->schema_q);
    free(a);
}
