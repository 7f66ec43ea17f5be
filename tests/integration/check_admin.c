/*
 * check_admin.c - the admin endpoint's /v1 API and its protections (issue
 * 5, tests 3 and 6), served in-process by sc_admin_start() against a real
 * PostgreSQL, plus one run of the real binary.
 *
 *  - with admin.token set, every endpoint but /healthz answers 401 without
 *    or with a wrong token; malformed requests get 4xx with a JSON body,
 *    also when the message quotes bytes that are not UTF-8;
 *  - the default listen address is loopback only (checked in the kernel's
 *    socket table and by connecting to a non-loopback address);
 *  - /v1/checkpoints pages visit every checkpoint exactly once, also while
 *    rows are added between pages;
 *  - /v1/events pages, 410 for an expired token, restart=snapshot;
 *  - SSE: a client that reconnects with Last-Event-ID gets exactly the
 *    events it missed; streams are limited (503 beyond).
 *
 * How these tests were checked to fail: skipping the token check for /v1
 * routes (401 test), paging with OFFSET instead of the keyset (rows added
 * between pages are skipped or repeated), ignoring Last-Event-ID (the
 * reconnect gets the first events again), no stream limit (9th stream 200).
 */
#include <check.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "admin/sc_admin.h"
#include "admin/sc_events.h"
#include "config/sc_config.h"
#include "sinks/sc_sink.h"
#include "hx.h"
#include "scx.h"

static struct hx_pg pg;

static void pg_setup(void)
{
    hx_pg_start(&pg);
}

static void pg_teardown(void)
{
    hx_pg_stop(&pg);
}

struct tenv {
    char dsn[512];
    char cfg_path[700];
    PGconn *conn;
    struct sc_config *cfg;
    struct sc_admin *admin;
    int port;
};

/* A database with the schema, and the admin endpoint in this process ("admin" JSON member). */
static void tenv_start(struct tenv *t, const char *dbname, const char *admin)
{
    hx_pg_create_db(&pg, dbname, t->dsn, sizeof(t->dsn));
    snprintf(t->cfg_path, sizeof(t->cfg_path), "%s/sidecar.json", hx_tmpdir());
    hx_write_file(t->cfg_path,
                  "{\"instance_id\": \"test\",\n"
                  " \"postgres\": {\"dsn\": \"%s\"},\n"
                  " \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:9\"},\n"
                  " \"log\": {\"level\": \"warn\", \"format\": \"text\"},\n"
                  " %s%s\n"
                  " \"pipelines\": [{\"name\": \"p1\", \"topics\": [\"orders\"],"
                  " \"sink\": {\"type\": \"stdout\"}}]}\n",
                  t->dsn, admin ? "\"admin\": " : "", admin ? admin : "");
    scx_migrate(t->cfg_path);
    t->conn = hx_pg_connect(t->dsn);
    char err[4096];
    ck_assert_msg(sc_config_load(t->cfg_path, &sc_sinks, &t->cfg, err, sizeof(err)) == 0, "%s",
                  err);
    t->admin = NULL;
    if (!admin)
        return; /* the caller starts it */
    t->admin = sc_admin_start(t->cfg, NULL, err, sizeof(err));
    ck_assert_msg(t->admin != NULL, "%s", err);
    t->port = sc_admin_port(t->admin);
}

static void tenv_stop(struct tenv *t)
{
    sc_admin_stop(t->admin);
    sc_config_free(t->cfg);
    PQfinish(t->conn);
}

/* ---- a tiny HTTP/1.0 client (the server closes after each answer) ------------------------ */

static int connect_to(const char *ip, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static void send_request(int fd, const char *method, const char *path, const char *headers)
{
    char req[8192];
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%s\r\n", method, path,
                     headers ? headers : "");
    ck_assert(n > 0 && (size_t)n < sizeof(req));
    ck_assert_int_eq(write(fd, req, (size_t)n), n);
}

/* Reads until EOF (10 s at most); returns the whole response, status in *status. */
static char *read_all(int fd, long *status)
{
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    int64_t end = hx_now_ms() + 10000;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int left = (int)(end - hx_now_ms());
        ck_assert_msg(left > 0 && poll(&p, 1, left) == 1, "no complete answer in time");
        if (len + 4096 > cap)
            buf = realloc(buf, cap *= 2);
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    *status = strncmp(buf, "HTTP/1.", 7) == 0 ? strtol(buf + 9, NULL, 10) : 0;
    return buf;
}

/* method path -> status and the body parsed as JSON (NULL if it is not JSON). */
static json_t *http_json(int port, const char *method, const char *path, const char *headers,
                         long *status)
{
    int fd = connect_to("127.0.0.1", port);
    ck_assert_msg(fd >= 0, "connect: %s", strerror(errno));
    send_request(fd, method, path, headers);
    char *resp = read_all(fd, status);
    close(fd);
    const char *body = strstr(resp, "\r\n\r\n");
    json_error_t jerr;
    json_t *j = body ? json_loads(body + 4, JSON_DECODE_ANY, &jerr) : NULL;
    free(resp);
    return j;
}

static json_t *get_json(const struct tenv *t, const char *path, const char *token, long *status)
{
    char h[256] = "";
    if (token)
        snprintf(h, sizeof(h), "Authorization: Bearer %s\r\n", token);
    return http_json(t->port, "GET", path, h, status);
}

/* A 4xx/5xx must come with {"error": "..."}. */
static void expect_error(const struct tenv *t, const char *method, const char *path,
                         const char *headers, long want)
{
    long status;
    json_t *j = http_json(t->port, method, path, headers, &status);
    ck_assert_msg(status == want, "%s %s: status %ld, want %ld", method, path, status, want);
    ck_assert_msg(json_is_string(json_object_get(j, "error")), "%s %s: no JSON error body", method,
                  path);
    json_decref(j);
}

/* ---- Server-Sent Events client ------------------------------------------------------------ */

struct sse {
    int fd;
    char buf[1 << 16];
    size_t len;
};

/* Opens a stream; returns the status (the fd stays open on 200 only). */
static long sse_open(struct sse *s, int port, const char *path, const char *last_event_id)
{
    char h[8192] = "";
    if (last_event_id)
        snprintf(h, sizeof(h), "Last-Event-ID: %s\r\n", last_event_id);
    s->fd = connect_to("127.0.0.1", port);
    ck_assert(s->fd >= 0);
    send_request(s->fd, "GET", path, h);
    s->len = 0;
    /* Headers first. */
    int64_t end = hx_now_ms() + 10000;
    char *hdr_end;
    while (!(hdr_end = memmem(s->buf, s->len, "\r\n\r\n", 4))) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        ck_assert_msg(poll(&p, 1, (int)(end - hx_now_ms())) == 1, "no headers in time");
        ssize_t r = read(s->fd, s->buf + s->len, sizeof(s->buf) - s->len);
        ck_assert_msg(r > 0, "connection closed before the headers");
        s->len += (size_t)r;
    }
    long status = strtol(s->buf + 9, NULL, 10);
    size_t hl = (size_t)(hdr_end + 4 - s->buf);
    if (status == 200)
        ck_assert_ptr_nonnull(strstr(s->buf, "text/event-stream"));
    memmove(s->buf, s->buf + hl, s->len - hl);
    s->len -= hl;
    if (status != 200) {
        close(s->fd);
        s->fd = -1;
    }
    return status;
}

/*
 * The next event ("id" and "data" fields) within timeout_ms: 1 got one, 0
 * timed out, -1 stream ended.  Comments and retry lines are skipped; event
 * names other than the default are returned in event.
 */
static int sse_next(struct sse *s, char *id, size_t idsize, char *data, size_t datasize,
                    char *event, size_t eventsize, int timeout_ms)
{
    int64_t end = hx_now_ms() + timeout_ms;
    id[0] = data[0] = event[0] = '\0';
    for (;;) {
        char *sep = memmem(s->buf, s->len, "\n\n", 2);
        if (sep) {
            *sep = '\0';
            bool any = false;
            for (char *line = s->buf, *nl; line; line = nl) {
                nl = strchr(line, '\n');
                if (nl)
                    *nl++ = '\0';
                if (strncmp(line, "id: ", 4) == 0)
                    snprintf(id, idsize, "%s", line + 4), any = true;
                else if (strncmp(line, "data: ", 6) == 0)
                    snprintf(data, datasize, "%s", line + 6), any = true;
                else if (strncmp(line, "event: ", 7) == 0)
                    snprintf(event, eventsize, "%s", line + 7);
            }
            size_t used = (size_t)(sep + 2 - s->buf);
            memmove(s->buf, s->buf + used, s->len - used);
            s->len -= used;
            if (any)
                return 1;
            continue;
        }
        int left = (int)(end - hx_now_ms());
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        if (poll(&p, 1, left) != 1)
            return 0;
        ssize_t r = read(s->fd, s->buf + s->len, sizeof(s->buf) - s->len - 1);
        if (r <= 0)
            return -1;
        s->len += (size_t)r;
    }
}

static void sse_close(struct sse *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

static long long insert_event(PGconn *conn, int part, long long first)
{
    char p[16], f[32];
    snprintf(p, sizeof(p), "%d", part);
    snprintf(f, sizeof(f), "%lld", first);
    const char *params[] = {p, f};
    return hx_pg_int(conn,
                     "INSERT INTO sidecar.events (pipeline, topic, partition, kind, first_offset,"
                     " last_offset) VALUES ('p1', 'orders', $1::int, 'commit', $2::bigint,"
                     " $2::bigint) RETURNING id",
                     2, params);
}

static char *history_token(void)
{
    struct sc_events_filter none = {NULL, NULL, -1};
    struct sc_events_cursor c;
    sc_events_cursor_init(&c, &none);
    sc_events_cursor_seek(&c, 0, 0);
    char *tok = sc_events_cursor_token(&c);
    sc_events_cursor_free(&c);
    return tok;
}

/* ---- tests ------------------------------------------------------------------------------- */

START_TEST(token_required_everywhere_but_healthz)
{
    struct tenv t;
    tenv_start(&t, "auth", "{\"listen\": \"127.0.0.1:0\", \"token\": \"s3cret\"},");
    static const char *const paths[] = {"/readyz",           "/metrics",   "/v1/status",
                                        "/v1/checkpoints",   "/v1/events", "/v1/events/stream",
                                        "/v1/events?limit=0"};
    long status;
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        expect_error(&t, "GET", paths[i], NULL, 401);
        expect_error(&t, "GET", paths[i], "Authorization: Bearer wrong\r\n", 401);
        expect_error(&t, "GET", paths[i], "Authorization: Bearer s3cret2\r\n", 401);
        expect_error(&t, "GET", paths[i], "Authorization: Bearer s3cre\r\n", 401);
        expect_error(&t, "GET", paths[i], "Authorization: Basic czNjcmV0\r\n", 401);
        expect_error(&t, "GET", paths[i], "Authorization: s3cret\r\n", 401);
    }
    json_t *j = get_json(&t, "/healthz", NULL, &status);
    ck_assert_int_eq(status, 200);
    json_decref(j);
    /* With the token: through (the stream is tried with the SSE client below). */
    static const char *const ok[] = {"/readyz", "/v1/status", "/v1/checkpoints", "/v1/events"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        j = get_json(&t, ok[i], "s3cret", &status);
        ck_assert_msg(status == 200, "%s: %ld", ok[i], status);
        json_decref(j);
    }
    char *body = scx_http_get(t.port, "/metrics", "s3cret", &status);
    ck_assert_int_eq(status, 200);
    free(body);
    tenv_stop(&t);
}
END_TEST

START_TEST(malformed_requests_get_json_errors)
{
    struct tenv t;
    tenv_start(&t, "malformed", "{\"listen\": \"127.0.0.1:0\"},");
    struct {
        const char *method, *path;
        long status;
    } cases[] = {
        {"GET", "/v1/nope", 404},
        {"GET", "/v1/status/", 404},
        {"POST", "/v1/status", 405},
        {"DELETE", "/v1/events", 405},
        {"GET", "/v1/status?x=1", 400},
        {"GET", "/v1/events?limit=0", 400},
        {"GET", "/v1/events?limit=1001", 400},
        {"GET", "/v1/events?limit=ten", 400},
        {"GET", "/v1/events?limit=", 400},
        {"GET", "/v1/events?limit=5&limit=6", 400},
        {"GET", "/v1/events?from=garbage", 400},
        {"GET", "/v1/events?from=", 400},
        {"GET", "/v1/events?from=v9.abc", 400},
        {"GET", "/v1/events?partition=orders", 400},
        {"GET", "/v1/events?partition=orders:-1", 400},
        {"GET", "/v1/events?restart=yes", 400},
        {"GET", "/v1/events?fromm=x", 400},
        {"GET", "/v1/events/stream?from=garbage", 400},
        {"GET", "/v1/events/stream?limit=5", 400},
        {"GET", "/v1/checkpoints?page_token=garbage", 400},
        {"GET", "/v1/checkpoints?page_token=v1.e30", 400},
        {"GET", "/v1/checkpoints?limit=0", 400},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_error(&t, cases[i].method, cases[i].path, NULL, cases[i].status);

    /* An events token is not a page token, and the other way round. */
    char *tok = history_token();
    char path[4096];
    snprintf(path, sizeof(path), "/v1/checkpoints?page_token=%s", tok);
    expect_error(&t, "GET", path, NULL, 400);
    free(tok);
    hx_pg_exec(t.conn, "INSERT INTO sidecar.checkpoints (pipeline, topic, partition)"
                       " SELECT 'p1', 'orders', g FROM generate_series(0, 2) g");
    long status;
    json_t *page = get_json(&t, "/v1/checkpoints?limit=1", NULL, &status);
    ck_assert_int_eq(status, 200);
    snprintf(path, sizeof(path), "/v1/events?from=%s",
             json_string_value(json_object_get(page, "next_page_token")));
    expect_error(&t, "GET", path, NULL, 400);
    json_decref(page);

    /*
     * Parameters that %-decode to bytes that are not UTF-8: the message names
     * the parameter and shows such bytes as \xNN (json_pack() refused them,
     * and the connection closed without an answer: tests/fuzz/regressions/fuzz_admin/).
     */
    struct {
        const char *path, *want;
    } not_utf8[] = {
        {"/v1/events?%FA=1", "unknown query parameter \"\\xfa\""},
        {"/v1/events?limit=5&%FA%C3%A9=1", "unknown query parameter \"\\xfa\xc3\xa9\""},
        /* Cut at 64 bytes in the middle of the "é". */
        {"/v1/events?aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa%C3%A9=1",
         "aaaaaaa\\xc3\""},
        {"/v1/events?partition=%FA", "partition: not valid UTF-8"},
        {"/v1/events?partition=orde%FArs:3", "partition: not valid UTF-8"},
        {"/v1/events?pipeline=%FA", "pipeline: not valid UTF-8"},
        {"/v1/events/stream?partition=%FA", "partition: not valid UTF-8"},
        {"/v1/checkpoints?%FA", "unknown query parameter \"\\xfa\""},
    };
    for (size_t i = 0; i < sizeof(not_utf8) / sizeof(not_utf8[0]); i++) {
        json_t *e = get_json(&t, not_utf8[i].path, NULL, &status);
        ck_assert_msg(status == 400, "%s: status %ld", not_utf8[i].path, status);
        const char *msg = json_string_value(json_object_get(e, "error"));
        ck_assert_msg(msg && strstr(msg, not_utf8[i].want), "%s: error %s, want %s",
                      not_utf8[i].path, msg ? msg : "(none)", not_utf8[i].want);
        json_decref(e);
    }

    /* A raw garbage request line does not crash or hang the endpoint. */
    int fd = connect_to("127.0.0.1", t.port);
    ck_assert_int_eq(write(fd, "\x01\x02 garbage\r\n\r\n", 14), 14);
    char *resp = read_all(fd, &status);
    close(fd);
    ck_assert_msg(status == 0 || (status >= 400 && status < 500), "garbage got %ld", status);
    free(resp);
    json_t *j = get_json(&t, "/healthz", NULL, &status);
    ck_assert_int_eq(status, 200);
    json_decref(j);
    tenv_stop(&t);
}
END_TEST

/* Is there a listening socket on port bound to the hex address addr in /proc/net/tcp? */
static bool listening_on(const char *addr, int port)
{
    char want[32];
    snprintf(want, sizeof(want), "%s:%04X", addr, port);
    FILE *f = fopen("/proc/net/tcp", "r"); /* procfs files have no size: read, don't stat */
    ck_assert_ptr_nonnull(f);
    bool found = false;
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        char local[64], remote[64], st[8];
        if (sscanf(line, "%*d: %63s %63s %7s", local, remote, st) == 3 && strcmp(st, "0A") == 0 &&
            strcmp(local, want) == 0)
            found = true;
    }
    fclose(f);
    return found;
}

START_TEST(default_listen_is_loopback_only)
{
    /* The default, from a config without an "admin" member. */
    struct tenv t;
    tenv_start(&t, "bind", NULL);
    ck_assert_str_eq(t.cfg->admin.listen, "127.0.0.1:9644");
    /*
     * Serve on the default host with a free port (port 0): a fixed 9644
     * could collide with a developer's running sidecar.  What matters is
     * the host part.
     */
    char *listen = strdup(t.cfg->admin.listen);
    strcpy(strrchr(listen, ':'), ":0");
    free(t.cfg->admin.listen);
    t.cfg->admin.listen = listen;
    char err[512];
    t.admin = sc_admin_start(t.cfg, NULL, err, sizeof(err));
    ck_assert_msg(t.admin != NULL, "%s", err);
    t.port = sc_admin_port(t.admin);
    ck_assert_int_gt(t.port, 0);

    /* The kernel's view: bound to 127.0.0.1 (0100007F), not to 0.0.0.0. */
    ck_assert(listening_on("0100007F", t.port));
    ck_assert(!listening_on("00000000", t.port));
    long status;
    json_t *j = get_json(&t, "/healthz", NULL, &status);
    ck_assert_int_eq(status, 200);
    json_decref(j);

    /* And from outside: every non-loopback IPv4 address of this machine refuses. */
    struct ifaddrs *ifs = NULL;
    ck_assert_int_eq(getifaddrs(&ifs), 0);
    int tried = 0;
    for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
            continue;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, ip, sizeof(ip));
        if (strncmp(ip, "127.", 4) == 0)
            continue;
        int fd = connect_to(ip, t.port);
        ck_assert_msg(fd < 0 && errno == ECONNREFUSED, "the admin port answers on %s", ip);
        tried++;
    }
    freeifaddrs(ifs);
    fprintf(stderr, "default bind: refused on %d non-loopback address(es)\n", tried);
    tenv_stop(&t);
}
END_TEST

START_TEST(checkpoint_pages_visit_every_row_once)
{
    struct tenv t;
    tenv_start(&t, "pages", "{\"listen\": \"127.0.0.1:0\"},");
    /* 257 rows over two pipelines and topics, with names that sort in interesting ways. */
    hx_pg_exec(t.conn,
               "INSERT INTO sidecar.checkpoints (pipeline, topic, partition, committed_offset)"
               " SELECT p, tp, g, g * 10 FROM unnest(ARRAY['p1', 'p1-x', 'P2']) p,"
               " unnest(ARRAY['a', 'a.b', 'b']) tp, generate_series(0, 27) g"
               " UNION ALL SELECT 'z', 'z', 0, 0 UNION ALL SELECT 'z', 'z', 10, 0"
               " UNION ALL SELECT 'z', 'z', 2, 0");
    long long total = hx_pg_int(t.conn, "SELECT count(*) FROM sidecar.checkpoints", 0, NULL);
    ck_assert_int_eq(total, 255);
    json_t *seen = json_object();
    char path[4096] = "/v1/checkpoints?limit=10";
    int pages = 0;
    json_t *first = NULL, *last = NULL;
    for (;;) {
        long status;
        json_t *page = get_json(&t, path, NULL, &status);
        ck_assert_int_eq(status, 200);
        json_t *rows = json_object_get(page, "checkpoints");
        ck_assert(json_is_array(rows));
        ck_assert_int_le(json_array_size(rows), 10);
        size_t i;
        json_t *row;
        json_array_foreach(rows, i, row)
        {
            char key[512];
            snprintf(key, sizeof(key), "%s\x1f%s\x1f%lld",
                     json_string_value(json_object_get(row, "pipeline")),
                     json_string_value(json_object_get(row, "topic")),
                     (long long)json_integer_value(json_object_get(row, "partition")));
            ck_assert_msg(!json_object_get(seen, key), "row %s on two pages", key);
            json_object_set_new(seen, key, json_true());
            if (!first)
                first = json_incref(row);
            json_decref(last);
            last = json_incref(row);
        }
        pages++;
        /*
         * Changes between pages, whatever the collation: the very first row
         * is deleted and inserted again (behind the cursor: must not come
         * again), and a row right after the last one seen is added (ahead:
         * must come).
         */
        if (pages == 3) {
            char part[32], ahead[32];
            snprintf(part, sizeof(part), "%lld",
                     (long long)json_integer_value(json_object_get(first, "partition")));
            snprintf(ahead, sizeof(ahead), "%lld",
                     (long long)json_integer_value(json_object_get(last, "partition")) + 100000);
            const char *p1[] = {json_string_value(json_object_get(first, "pipeline")),
                                json_string_value(json_object_get(first, "topic")), part};
            const char *p2[] = {json_string_value(json_object_get(last, "pipeline")),
                                json_string_value(json_object_get(last, "topic")), ahead};
            free(hx_pg_value(t.conn,
                             "WITH d AS (DELETE FROM sidecar.checkpoints WHERE pipeline = $1 AND"
                             " topic = $2 AND partition = $3::int RETURNING *)"
                             " INSERT INTO sidecar.checkpoints SELECT * FROM d RETURNING 'x'",
                             3, p1));
            free(hx_pg_value(t.conn,
                             "INSERT INTO sidecar.checkpoints (pipeline, topic, partition)"
                             " VALUES ($1, $2, $3::int) RETURNING 'x'",
                             3, p2));
        }
        json_t *next = json_object_get(page, "next_page_token");
        if (json_is_null(next)) {
            json_decref(page);
            break;
        }
        ck_assert(json_is_string(next));
        const char *tok = json_string_value(next);
        ck_assert_uint_eq(strspn(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                      "0123456789-_."),
                          strlen(tok));
        snprintf(path, sizeof(path), "/v1/checkpoints?limit=10&page_token=%s", tok);
        json_decref(page);
        ck_assert_int_lt(pages, 100);
    }
    json_decref(first);
    json_decref(last);
    /* Every row of the table was seen, exactly once (the duplicate check is above). */
    PGresult *res = PQexec(t.conn, "SELECT pipeline, topic, partition FROM sidecar.checkpoints");
    ck_assert_int_eq(PQntuples(res), 256);
    for (int i = 0; i < PQntuples(res); i++) {
        char key[512];
        snprintf(key, sizeof(key), "%s\x1f%s\x1f%lld", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                 atoll(PQgetvalue(res, i, 2)));
        ck_assert_msg(json_object_get(seen, key), "row %s never seen", key);
    }
    PQclear(res);
    ck_assert_int_eq(json_object_size(seen), 256);
    fprintf(stderr, "checkpoint pages: %d pages, %zu rows\n", pages, json_object_size(seen));

    /* One page holds all when the limit allows; its next_page_token is null. */
    long status;
    json_t *page = get_json(&t, "/v1/checkpoints?limit=1000", NULL, &status);
    ck_assert_int_eq(status, 200);
    ck_assert(json_is_null(json_object_get(page, "next_page_token")));
    ck_assert_int_eq(json_array_size(json_object_get(page, "checkpoints")),
                     hx_pg_int(t.conn, "SELECT count(*) FROM sidecar.checkpoints", 0, NULL));
    json_decref(page);
    json_decref(seen);
    tenv_stop(&t);
}
END_TEST

START_TEST(event_pages_expiry_and_status)
{
    struct tenv t;
    tenv_start(&t, "event_pages", "{\"listen\": \"127.0.0.1:0\"},");
    hx_pg_exec(t.conn, "INSERT INTO sidecar.checkpoints (pipeline, topic, partition,"
                       " committed_offset) VALUES ('p1', 'orders', 0, 5), ('p1', 'orders', 1, 7)");
    for (int i = 0; i < 23; i++)
        insert_event(t.conn, i % 2, 100 + i);

    /* No from: the snapshot first, then the events after it (none yet). */
    long status;
    json_t *page = get_json(&t, "/v1/events", NULL, &status);
    ck_assert_int_eq(status, 200);
    json_t *evs = json_object_get(page, "events");
    ck_assert_int_eq(json_array_size(evs), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(evs, 0), "kind")),
                     "snapshot");
    ck_assert(json_is_string(json_object_get(page, "next_token")));
    json_decref(page);

    /* From the start of history, 5 at a time: all 23 once, in order. */
    char *tok = history_token();
    char path[8192];
    long long expect_first = 100;
    int pages = 0;
    for (;;) {
        snprintf(path, sizeof(path), "/v1/events?limit=5&from=%s", tok);
        page = get_json(&t, path, NULL, &status);
        ck_assert_int_eq(status, 200);
        evs = json_object_get(page, "events");
        size_t i;
        json_t *e;
        json_array_foreach(evs, i, e)
        {
            ck_assert_int_eq(json_integer_value(json_object_get(e, "first_offset")),
                             expect_first++);
        }
        free(tok);
        tok = strdup(json_string_value(json_object_get(page, "next_token")));
        size_t n = json_array_size(evs);
        json_decref(page);
        pages++;
        if (n == 0)
            break;
    }
    ck_assert_int_eq(expect_first, 123);
    ck_assert_int_eq(pages, 6);
    /* The filter travels in the token: the same token with another filter is refused. */
    snprintf(path, sizeof(path), "/v1/events?from=%s&pipeline=p1", tok);
    expect_error(&t, "GET", path, NULL, 400);

    /* Expired after compaction: 410 with a hint; restart=snapshot starts over. */
    char *start = history_token();
    ck_assert_int_eq(
        hx_pg_int(t.conn, "SELECT sidecar.compact_events('0 seconds'::interval)", 0, NULL), 23);
    snprintf(path, sizeof(path), "/v1/events?from=%s", start);
    page = get_json(&t, path, NULL, &status);
    ck_assert_int_eq(status, 410);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(page, "error")), "expired"));
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(page, "hint")), "restart"));
    json_decref(page);
    snprintf(path, sizeof(path), "/v1/events?from=%s&restart=snapshot", start);
    page = get_json(&t, path, NULL, &status);
    ck_assert_int_eq(status, 200);
    ck_assert_int_eq(json_array_size(json_object_get(page, "events")), 2);
    json_decref(page);
    /* The token from the end of the pages is still good. */
    snprintf(path, sizeof(path), "/v1/events?from=%s", tok);
    page = get_json(&t, path, NULL, &status);
    ck_assert_int_eq(status, 200);
    json_decref(page);

    /* /v1/status: one object per partition, as `sidecar status --json`. */
    page = get_json(&t, "/v1/status", NULL, &status);
    ck_assert_int_eq(status, 200);
    ck_assert_int_eq(json_array_size(page), 2);
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_array_get(page, 1), "committed_offset")), 7);
    json_decref(page);
    free(tok);
    free(start);
    tenv_stop(&t);
}
END_TEST

START_TEST(sse_resumes_with_last_event_id)
{
    struct tenv t;
    tenv_start(&t, "sse", "{\"listen\": \"127.0.0.1:0\"},");
    for (int i = 0; i < 10; i++)
        insert_event(t.conn, 0, i);
    char *tok = history_token();
    char path[8192], id[8192], data[8192], event[64];
    snprintf(path, sizeof(path), "/v1/events/stream?from=%s", tok);

    /* First connection: the 10 events, then 5 more that arrive live. */
    struct sse s;
    ck_assert_int_eq(sse_open(&s, t.port, path, NULL), 200);
    long long next = 0;
    char last_id[8192] = "";
    for (int i = 0; i < 15; i++) {
        if (i == 10)
            for (int k = 10; k < 15; k++)
                insert_event(t.conn, 0, k);
        ck_assert_int_eq(
            sse_next(&s, id, sizeof(id), data, sizeof(data), event, sizeof(event), 5000), 1);
        json_t *j = json_loads(data, 0, NULL);
        ck_assert_int_eq(json_integer_value(json_object_get(j, "first_offset")), next++);
        /* The id is the event's resume token. */
        ck_assert_str_eq(id, json_string_value(json_object_get(j, "token")));
        json_decref(j);
        snprintf(last_id, sizeof(last_id), "%s", id);
    }
    sse_close(&s);

    /* Missed while away: 20 events. */
    for (int k = 15; k < 35; k++)
        insert_event(t.conn, 0, k);
    /* Reconnect as EventSource does: same URL (its ?from is stale), Last-Event-ID wins. */
    ck_assert_int_eq(sse_open(&s, t.port, path, last_id), 200);
    int got = 0;
    for (;;) {
        int rc = sse_next(&s, id, sizeof(id), data, sizeof(data), event, sizeof(event), 2500);
        if (rc != 1)
            break;
        json_t *j = json_loads(data, 0, NULL);
        ck_assert_int_eq(json_integer_value(json_object_get(j, "first_offset")), next++);
        json_decref(j);
        got++;
    }
    ck_assert_int_eq(got, 20); /* exactly the missed ones: no repeat, none lost */
    sse_close(&s);

    /* A bad Last-Event-ID is a 400 before any streaming; an expired one a 410. */
    ck_assert_int_eq(sse_open(&s, t.port, "/v1/events/stream", "garbage"), 400);
    hx_pg_int(t.conn, "SELECT sidecar.compact_events('0 seconds'::interval)", 0, NULL);
    ck_assert_int_eq(sse_open(&s, t.port, "/v1/events/stream", tok), 410);
    snprintf(path, sizeof(path), "/v1/events/stream?restart=snapshot");
    ck_assert_int_eq(sse_open(&s, t.port, path, tok), 200);
    sse_close(&s);
    free(tok);
    tenv_stop(&t);
}
END_TEST

START_TEST(stream_limit)
{
    struct tenv t;
    tenv_start(&t, "streams", "{\"listen\": \"127.0.0.1:0\"},");
    struct sse s[9];
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(sse_open(&s[i], t.port, "/v1/events/stream", NULL), 200);
    expect_error(&t, "GET", "/v1/events/stream", NULL, 503);
    /* Other endpoints still answer while 8 streams are open. */
    long status;
    json_t *j = get_json(&t, "/v1/status", NULL, &status);
    ck_assert_int_eq(status, 200);
    json_decref(j);
    /* A client that leaves frees its slot (noticed within a second or two; the bound is for a
     * loaded machine). */
    sse_close(&s[0]);
    long got = 0;
    int64_t end = hx_now_ms() + 30000;
    while (got != 200 && hx_now_ms() < end) {
        usleep(100000);
        got = sse_open(&s[8], t.port, "/v1/events/stream", NULL);
    }
    ck_assert_int_eq(got, 200);
    /* Stopping the endpoint ends open streams promptly. */
    int64_t t0 = hx_now_ms();
    sc_admin_stop(t.admin);
    t.admin = NULL;
    ck_assert_int_lt(hx_now_ms() - t0, 5000);
    for (int i = 1; i < 9; i++)
        sse_close(&s[i]);
    sc_config_free(t.cfg);
    PQfinish(t.conn);
}
END_TEST

/* The real binary: `sidecar run` serves /v1 behind its token, with what it delivered. */
START_TEST(running_sidecar_serves_v1)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    int port = scx_free_port();
    struct scx_opts o = {.admin_port = port};
    const char *cfg = scx_config(&e, "sc-1", &o);
    /* scx_config has no token knob: add one. */
    char *text = hx_read_file(cfg, NULL);
    char *at = strstr(text, "\"admin\": {");
    ck_assert_ptr_nonnull(at);
    char patched[8192];
    snprintf(patched, sizeof(patched), "%.*s\"admin\": {\"token\": \"t0k\", %s", (int)(at - text),
             text, at + strlen("\"admin\": {"));
    hx_write_file(cfg, "%s", patched);
    free(text);
    scx_migrate(cfg);
    hx_produce_seq(e.mock.bootstrap, "orders", 2, 0, 100);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 2, 100, 60000));

    long status;
    char *body = scx_http_get(port, "/v1/status", NULL, &status);
    ck_assert_int_eq(status, 401);
    free(body);
    body = scx_http_get(port, "/v1/status", "t0k", &status);
    ck_assert_int_eq(status, 200);
    json_t *rows = json_loads(body, 0, NULL);
    free(body);
    ck_assert_int_eq(json_array_size(rows), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *r = json_array_get(rows, i);
        ck_assert_int_eq(json_integer_value(json_object_get(r, "committed_offset")), 100);
        ck_assert_str_eq(json_string_value(json_object_get(r, "owner")), "sc-1");
        ck_assert(json_is_true(json_object_get(r, "lease_live")));
    }
    json_decref(rows);
    /* The commits it made, as events: offsets 0..99 of each partition, once, in order. */
    char *tok = history_token();
    char path[4096];
    snprintf(path, sizeof(path), "/v1/events?limit=1000&from=%s", tok);
    body = scx_http_get(port, path, "t0k", &status);
    ck_assert_int_eq(status, 200);
    json_t *page = json_loads(body, 0, NULL);
    free(body);
    long long next[2] = {0, 0};
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(page, "events"), i, ev)
    {
        const char *kind = json_string_value(json_object_get(ev, "kind"));
        if (strcmp(kind, "commit") != 0)
            continue;
        int p = (int)json_integer_value(json_object_get(ev, "partition"));
        ck_assert_int_eq(json_integer_value(json_object_get(ev, "first_offset")), next[p]);
        next[p] = json_integer_value(json_object_get(ev, "last_offset")) + 1;
    }
    ck_assert_int_eq(next[0], 100);
    ck_assert_int_eq(next[1], 100);
    json_decref(page);
    free(tok);
    scx_stop(pid, 15000);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("admin");
    TCase *tc = tcase_create("admin");
    tcase_add_unchecked_fixture(tc, pg_setup, pg_teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, token_required_everywhere_but_healthz);
    tcase_add_test(tc, malformed_requests_get_json_errors);
    tcase_add_test(tc, default_listen_is_loopback_only);
    tcase_add_test(tc, checkpoint_pages_visit_every_row_once);
    tcase_add_test(tc, event_pages_expiry_and_status);
    tcase_add_test(tc, sse_resumes_with_last_event_id);
    tcase_add_test(tc, stream_limit);
    suite_add_tcase(s, tc);
    TCase *e2e = tcase_create("binary");
    tcase_set_timeout(e2e, 180);
    tcase_add_test(e2e, running_sidecar_serves_v1);
    suite_add_tcase(s, e2e);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
