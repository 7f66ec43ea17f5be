/*
 * fuzz_admin.c - the admin HTTP endpoint (sc_admin.c) on arbitrary
 * requests: routing, the bearer token check, query parameters (limit,
 * from, page_token, pipeline, partition, restart), Last-Event-ID.
 *
 * LLVMFuzzerInitialize() starts the real endpoint on 127.0.0.1 with a port
 * chosen by the kernel, a bearer token, and a DSN that fails at once (a
 * socket directory that does not exist), so no PostgreSQL is needed: every
 * parameter check before the database still runs, and what needs the
 * database answers 503.  Each input becomes one request on a new
 * connection; the target writes it, half-closes, and reads the answer.
 * The first input byte says how:
 *
 *   bits 0-2  method: GET HEAD POST PUT DELETE OPTIONS GET GET
 *   bit 3     no Authorization header     bit 4  a wrong token
 *   bit 5     raw: the rest is the whole request, sent as it is
 *
 * otherwise the rest is the request target (up to the first newline) and
 * header lines.  Checked: an answer comes within 8 s and starts with an
 * HTTP status line; it is never a 500 (nothing here is an internal error);
 * a JSON body parses; neither the admin token nor the database password
 * shows up in an answer unless the request itself holds it.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "admin/sc_admin.h"
#include "base/sc_log.h"
#include "base/sc_util.h"
#include "config/sc_config.h"
#include "sinks/sc_sink.h"
#include "fuzz.h"

#define TOKEN       "fuzz-admin-token"
#define PG_PASSWORD "fuzz-pg-password"
#define WAIT_MS     8000
#define QUIET_MS    5

static const char config_text[] =
    "{\"instance_id\": \"fuzz\","
    " \"postgres\": {\"dsn\": \"host=/nonexistent/sc-fuzz dbname=sidecar password=" PG_PASSWORD
    "\", \"schema\": \"sidecar\"},"
    " \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:9\"},"
    " \"admin\": {\"listen\": \"127.0.0.1:0\", \"token\": \"" TOKEN "\"},"
    " \"log\": {\"level\": \"error\", \"format\": \"text\"},"
    " \"pipelines\": [{\"name\": \"p1\", \"topics\": [\"orders\"],"
    "   \"sink\": {\"type\": \"file\", \"path\": \"/nonexistent/{topic}/{partition}.jsonl\"}}]}";

static struct sc_config *cfg;
static struct sc_admin *admin;
static int port;
static int ready_calls;
/* SC_FUZZ_VERBOSE=1 prints each answer (for writing seeds). */
static bool verbose;

static bool ready(void *arg, char *why, size_t whysize)
{
    (void)arg;
    /* Alternate, so both /readyz answers are reached. */
    if (++ready_calls % 2)
        return true;
    snprintf(why, whysize, "pipeline p1: not started");
    return false;
}

static void stop_admin(void)
{
    sc_admin_stop(admin);
    sc_config_free(cfg);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char err[2048];
    signal(SIGPIPE, SIG_IGN);
    verbose = getenv("SC_FUZZ_VERBOSE") != NULL;
    sc_log_setup(SC_LOG_ERROR, SC_LOG_FORMAT_TEXT);
    if (sc_config_load_string("fuzz_admin.json", config_text, &sc_sinks, &cfg, err, sizeof(err)) !=
        0) {
        fprintf(stderr, "fuzz_admin: %s", err);
        exit(1);
    }
    struct sc_admin_hooks hooks = {ready, NULL};
    admin = sc_admin_start(cfg, &hooks, err, sizeof(err));
    port = sc_admin_port(admin);
    if (!admin || port <= 0) {
        fprintf(stderr, "fuzz_admin: could not start the admin endpoint: %s\n", err);
        exit(1);
    }
    atexit(stop_admin);
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Has the first answer in a[0..len) arrived whole (headers, and the body its
 * Content-Length announces unless it answers a HEAD)?
 */
static bool answer_complete(const char *a, size_t len, bool head)
{
    const char *end = memmem(a, len, "\r\n\r\n", 4);
    if (!end)
        return false;
    size_t hlen = (size_t)(end - a) + 4;
    const char *cl = memmem(a, hlen, "\r\nContent-Length: ", 18);
    return head || (cl && len - hlen >= strtoul(cl + 18, NULL, 10));
}

/*
 * Sends req and reads the first answer into out.
 *
 * A connection closed the usual way leaves a TIME_WAIT socket for a minute
 * on the side that closed first, and thousands of requests a second would
 * run out of ports and fill the kernel's table; one reset instead leaves
 * nothing.  So the target never half-closes when it need not: requests say
 * "Connection: close", the server answers and closes, and the target resets.
 * (An answer that keeps the connection open is reset once complete; waiting
 * for the server's close instead keeps libFuzzer's malloc/free balance for
 * the input, or it runs a slow leak check after each.)  Only a request
 * libmicrohttpd waits on (no blank line yet, a body still to come) is
 * half-closed, at once or after QUIET_MS without an answer; and every
 * connection comes from its own 127.x.y.z address, so even those TIME_WAIT
 * sockets never make connect() fail.
 */
static void exchange(const char *req, size_t len, bool head, struct sc_buf *out)
{
    static uint32_t next_source;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0, "socket: %s", strerror(errno));
    uint32_t n = next_source++ % (254u * 256 * 254);
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr =
        htonl(127u << 24 | (1 + n / (256 * 254)) << 16 | (n / 254 % 256) << 8 | (1 + n % 254));
    FUZZ_CHECK(bind(fd, (struct sockaddr *)&src, sizeof(src)) == 0, "bind: %s", strerror(errno));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        /* Interrupted (libFuzzer's SIGALRM): the connection completes in the background. */
        FUZZ_CHECK(errno == EINTR, "connect: %s", strerror(errno));
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int e = 0;
        socklen_t elen = sizeof(e);
        while (poll(&p, 1, WAIT_MS) < 0 && errno == EINTR)
            ;
        FUZZ_CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) == 0 && e == 0, "connect: %s",
                   strerror(e));
    }
    for (size_t sent = 0; sent < len;) {
        ssize_t k = send(fd, req + sent, len - sent, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break; /* the server may close early on a bad request: read its answer */
        sent += (size_t)k;
    }
    bool half_closed = false;
    if (len == 0 || (!memmem(req, len, "\n\r\n", 3) && !memmem(req, len, "\n\n", 2))) {
        shutdown(fd, SHUT_WR); /* headers unfinished: nothing comes before EOF */
        half_closed = true;
    }
    int64_t deadline = now_ms() + WAIT_MS, quiet = now_ms() + QUIET_MS;
    for (;;) {
        int64_t now = now_ms();
        FUZZ_CHECK(now < deadline, "no answer within %d ms to: %.*s", WAIT_MS,
                   (int)(len < 300 ? len : 300), req);
        if (!half_closed && now >= quiet) {
            shutdown(fd, SHUT_WR);
            half_closed = true;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)((half_closed ? deadline : quiet) - now)) <= 0)
            continue;
        char buf[16384];
        ssize_t k = recv(fd, buf, sizeof(buf), 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        FUZZ_CHECK(sc_buf_append(out, buf, (size_t)k) == 0, "answer too large");
        quiet = now_ms() + QUIET_MS;
        if (answer_complete(out->data, out->len, head)) {
            const char *end = memmem(out->data, out->len, "\r\n\r\n", 4);
            if (!memmem(out->data, (size_t)(end - out->data), "\r\nConnection: close", 19))
                break;          /* kept open: reset it */
            half_closed = true; /* closing: wait for it (no QUIET_MS limit) */
        }
    }
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

static bool contains(const char *s, size_t len, const char *needle)
{
    return memmem(s, len, needle, strlen(needle)) != NULL;
}

/*
 * Does a request for this target, with no header lines of the fuzzer's,
 * reach on_request() (printable ASCII, no space), which must then answer?
 */
static bool plain_target(const char *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (t[i] <= ' ' || t[i] > '~')
            return false;
    return n > 0 && t[0] == '/';
}

/*
 * Writes in to out (room for 4 * n + 1 bytes) with each byte >= 0x80 as \xNN; returns
 * out's length.
 */
static size_t escape_high(const char *in, size_t n, char *out)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)in[i];
        len += b < 0x80 ? (size_t)(out[len] = (char)b, 1)
                        : (size_t)snprintf(out + len, 5, "\\x%02x", b);
    }
    return len;
}

/* Writes in to out with each %XX decoded, as libmicrohttpd decodes a query; returns the
 * length. */
static size_t percent_decode(const char *in, size_t n, char *out)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == '%' && i + 2 < n && isxdigit((unsigned char)in[i + 1]) &&
            isxdigit((unsigned char)in[i + 2])) {
            char hex[3] = {in[i + 1], in[i + 2], 0};
            out[len++] = (char)strtoul(hex, NULL, 16);
            i += 2;
        } else {
            out[len++] = in[i] == '+' ? ' ' : in[i];
        }
    }
    return len;
}

/*
 * Checks the first answer in ans (a request may smuggle a second one in: only the
 * first is looked at).  input is the part of the request the fuzzer wrote.
 */
static void check_answer(const char *input, size_t inlen, const char *ans, size_t len, bool head,
                         bool must)
{
    FUZZ_CHECK(len > 0 || !must, "no answer at all to: %.*s", (int)(inlen < 300 ? inlen : 300),
               input);
    if (len == 0)
        return; /* libmicrohttpd may close on a request it cannot parse */
    FUZZ_CHECK(len >= 12 && memcmp(ans, "HTTP/1.", 7) == 0, "no status line: %.*s",
               (int)(len < 200 ? len : 200), ans);
    FUZZ_CHECK(memcmp(ans + 8, " 500", 4) != 0, "internal server error for: %.*s",
               (int)(inlen < 300 ? inlen : 300), input);
    /* Echoed input may be shown with bytes >= 0x80 as \xNN, whose hex digits can spell a
     * secret next to the input's letters ("f\xffuzz-..."), and query parameters are echoed
     * percent-decoded ("%fFuzz-..." becomes "\xffuzz-..."): judge against those forms too. */
    char *esc = malloc(inlen * 4 + 1), *dec = malloc(inlen * 4 + 1), *raw = malloc(inlen + 1);
    size_t elen = escape_high(input, inlen, esc);
    size_t dlen = escape_high(raw, percent_decode(input, inlen, raw), dec);
    free(raw);
    static const char *const secrets[] = {TOKEN, PG_PASSWORD};
    for (size_t i = 0; i < SC_ARRAY_LEN(secrets); i++)
        FUZZ_CHECK(!contains(ans, len, secrets[i]) || contains(input, inlen, secrets[i]) ||
                       contains(esc, elen, secrets[i]) || contains(dec, dlen, secrets[i]),
                   "the answer shows a secret: %.*s", (int)len, ans);
    free(esc);
    free(dec);
    const char *end = memmem(ans, len, "\r\n\r\n", 4);
    FUZZ_CHECK(end != NULL, "answer without the end of its headers");
    size_t hlen = (size_t)(end - ans) + 4;
    const char *cl = memmem(ans, hlen, "\r\nContent-Length: ", 18);
    if (head || !cl || !memmem(ans, hlen, "\r\nContent-Type: application/json\r\n", 34))
        return;
    size_t body = strtoul(cl + 18, NULL, 10);
    FUZZ_CHECK(body <= len - hlen, "answer shorter than its Content-Length");
    json_error_t e;
    json_t *j = json_loadb(ans + hlen, body, 0, &e);
    FUZZ_CHECK(j != NULL, "JSON body does not parse: %s: %.*s", e.text, (int)body, ans + hlen);
    json_decref(j);
}

/*
 * The length of the first request in a request the target built (raw or
 * not: header lines the fuzzer wrote may hold a blank one): up to its first
 * blank line.  libmicrohttpd 0.9.75 ends a header line at CRLF, at a lone LF and
 * at a lone CR, so any two line ends in a row ("\n\n", "\r\r", "\n\r\n",
 * "\n\r") may end the headers; cut at the earliest of them.
 */
static size_t first_request_len(const char *s, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if ((s[i] == '\n' && (s[i + 1] == '\n' || s[i + 1] == '\r')) ||
            (s[i] == '\r' && s[i + 1] == '\r'))
            return i + 2 + (i + 2 < len && s[i + 1] == '\r' && s[i + 2] == '\n');
    }
    return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const methods[] = {"GET",    "HEAD",    "POST", "PUT",
                                          "DELETE", "OPTIONS", "GET",  "GET"};
    if (size < 1 || size > 16384)
        return -1;
    uint8_t flags = data[0];
    const char *rest = (const char *)data + 1;
    size_t restlen = size - 1;
    struct sc_buf req, ans;
    sc_buf_init(&req, 0);
    sc_buf_init(&ans, 1 << 24);
    const char *method = methods[flags & 7];
    bool ok = true, must = false;
    if (flags & 0x20) {
        ok = sc_buf_append(&req, rest, restlen) == 0;
        method = restlen >= 5 && memcmp(rest, "HEAD ", 5) == 0 ? "HEAD" : "GET";
    } else {
        const char *nl = memchr(rest, '\n', restlen);
        size_t tlen = nl ? (size_t)(nl - rest) : restlen;
        /* Also when %XX decodes to bytes that are not UTF-8 (regressions/fuzz_admin/). */
        must = !nl && plain_target(rest, tlen);
        ok = sc_buf_printf(&req, "%s %.*s HTTP/1.1\r\nHost: 127.0.0.1\r\n", method, (int)tlen,
                           rest) == 0;
        ok = ok && sc_buf_append(&req, "Connection: close\r\n", 19) == 0;
        if (!(flags & 0x08))
            ok = ok && sc_buf_printf(&req, "Authorization: Bearer %s\r\n",
                                     flags & 0x10 ? "wrong-token" : TOKEN) == 0;
        /* The remaining lines are headers (a "\n" becomes "\r\n"). */
        for (const char *p = nl ? nl + 1 : NULL, *end = rest + restlen; p && p < end;) {
            const char *e = memchr(p, '\n', (size_t)(end - p));
            size_t n = e ? (size_t)(e - p) : (size_t)(end - p);
            ok = ok && sc_buf_append(&req, p, n) == 0 && sc_buf_append(&req, "\r\n", 2) == 0;
            p = e ? e + 1 : NULL;
        }
        ok = ok && sc_buf_append(&req, "\r\n", 2) == 0;
    }
    FUZZ_CHECK(ok, "request buffer");
    /* One request per input: a pipelined second one could still be in the server's thread
     * when this input ends, and libFuzzer's leak check would count what it has allocated
     * at that moment (regressions/fuzz_admin/pipelined-second-request and
     * pipelined-after-bare-cr: header lines the fuzzer wrote can end the first early). */
    req.len = first_request_len(req.data, req.len);
    bool head = strcmp(method, "HEAD") == 0;
    exchange(req.data, req.len, head, &ans);
    if (verbose)
        fprintf(stderr, "%.*s\n---\n", (int)ans.len, ans.data ? ans.data : "");
    check_answer(rest, restlen, ans.data, ans.len, head, must);
    sc_buf_free(&ans);
    sc_buf_free(&req);
    return 0;
}
