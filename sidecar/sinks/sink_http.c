/*
 * sink_http.c - one HTTP request per batch, made idempotent by a key the
 * receiver de-duplicates by (docs/design.md §4).
 *
 * NOTES
 * -----
 * Idempotency.  A batch goes out as one request whose body is the batch's
 * envelopes (NDJSON, or a JSON array) and whose Idempotency-Key is
 * <pipeline>/<topic>/<partition>/<first>-<last>.  Body and key are built
 * only from the records and the config (I1), so when the next owner replays
 * a pending batch (I5) it sends the very same bytes under the very same key,
 * and a receiver that remembers the keys it accepted applies the batch once
 * (I6).  The write offset is the batch's sequence number: next = this + 1.
 * Nothing here depends on time, the worker or the epoch except the
 * X-Sidecar-Epoch header, which is informational.
 *
 * Transient failures (connect errors, timeouts, 5xx, 408, 429) are retried
 * with capped exponential backoff and full jitter, or after Retry-After
 * (seconds or an HTTP date, capped at retry.max_backoff_ms).  write() runs
 * on a worker thread that serves several partitions, and rebalances and
 * shutdown wait for that thread, so write() never sleeps long: a wait of up
 * to INLINE_WAIT_MS is slept in place (while the call is younger than
 * INLINE_BUDGET_MS); a longer one is remembered in the partition handle
 * (not_before_ms) and write() returns SC_SINK_RETRY with the wait in
 * retry_in_ms, so the worker backs off this partition alone and calls again
 * exactly when the wait is over (it used to poll with a backoff of its own
 * that grew with every early call: a 2 s Retry-After cost 8 s, up to 30);
 * a call that comes back before not_before_ms returns SC_SINK_RETRY at once
 * without sending anything.  Every Retry-After that sets a wait is counted
 * in sidecar_http_retry_after_total.
 * retry.max_attempts and retry.max_elapsed_ms bound one round of attempts;
 * when a round is used up, write() returns SC_SINK_RETRY and the next call
 * starts a new round.  Running out of retries is never permanent: the batch
 * is pending in PostgreSQL and must be delivered before anything after it.
 *
 * Rejected records.  Only a 4xx that is about the content (400, 409, 413,
 * 422, ...) is permanent for records.  The receiver may reject a whole batch
 * for one bad record, so with on_error = dead_letter the batch is bisected:
 * each half is sent as its own request with its own key (<first>-<last> of
 * the half), left half first so delivery stays in offset order, until every
 * record is either delivered or alone and rejected; those become dead
 * letters, which the worker stores in the same transaction as the commit.
 * That costs 2n - 1 requests when every record is bad, so a split's right
 * half looks at its left sibling once that is resolved: if a quarter or
 * more of its records (at least 16) were rejected, the right half, when
 * rejected as a whole, is sent one record per request instead of being
 * split again (sc_sink_bisect_dense()): about n requests for an all-bad
 * batch, still about 2k log(n/k) for k scattered bad records.
 * The bisection state (ranges left, dead letters found) lives in the
 * partition handle, so a retry in the middle continues where it stopped; a
 * crash restarts it from the whole batch, and a deterministic receiver sees
 * the same requests under the same keys again.  With on_error = stop the
 * first such 4xx puts the partition in the error state.
 *
 * A 4xx that describes the request rather than a record (401, 403, 404,
 * 405, 407, 414, 415, 426, 431) and any 3xx (redirects are not followed)
 * stop the partition whatever on_error says: dead-lettering would move
 * every record of the topic into dead_letters because of a wrong URL or an
 * expired token.
 */
#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "base/sc_log.h"
#include "base/sc_metrics.h"
#include "config/sc_conf.h"
#include "config/sc_conf_check.h"
#include "sinks/sc_sink.h"

#define INLINE_WAIT_MS   250        /* longest backoff slept inside write() */
#define INLINE_BUDGET_MS 2000       /* no in-place sleep once a call ran this long */
#define EXCERPT_MAX      512        /* bytes of a response body kept for messages */
#define BODY_MAX         (1u << 30) /* one request body */

/* ---- configuration ------------------------------------------------------------------------ */

enum http_method {
    HTTP_POST,
    HTTP_PUT,
};

enum http_format {
    HTTP_NDJSON,
    HTTP_JSON_ARRAY,
};

enum on_error {
    ON_ERROR_DEAD_LETTER,
    ON_ERROR_STOP,
};

struct retry_conf {
    int max_attempts;
    int initial_backoff_ms;
    int max_backoff_ms;
    int max_elapsed_ms;
};

struct http_conf {
    char *url;
    enum http_method method;
    enum http_format format;
    struct sc_kvlist headers;
    int timeout_ms;
    struct retry_conf retry;
    enum on_error on_error;
    char *ca_file;
    bool insecure_skip_verify;
    char *bearer_token; /* secret */
};

static void check_header(struct sc_conf_ctx *ctx, const char *name, const char *value)
{
    static const char *const reserved[] = {"Content-Type", "Content-Length", "Transfer-Encoding",
                                           "Idempotency-Key"};
    char q[96];
    bool token = *name != '\0';
    for (const char *p = name; *p && token; p++)
        token = isalnum((unsigned char)*p) || strchr("!#$%&'*+-.^_`|~", *p);
    if (!token) {
        sc_conf_error_key(ctx, "invalid header name %s", sc_conf_quote(q, sizeof(q), name));
        return;
    }
    bool set_by_us = strncasecmp(name, "X-Sidecar-", 10) == 0;
    for (size_t i = 0; i < SC_ARRAY_LEN(reserved); i++)
        set_by_us |= strcasecmp(name, reserved[i]) == 0;
    if (set_by_us)
        sc_conf_error_key(ctx, "header %s is set by the sidecar",
                          sc_conf_quote(q, sizeof(q), name));
    if (strpbrk(value, "\r\n"))
        sc_conf_error(ctx, "must not contain a line break");
}

static void check_retry(struct sc_conf_ctx *ctx, void *base, const json_t *obj, bool clean)
{
    const struct retry_conf *r = base;
    if (!clean || r->initial_backoff_ms <= r->max_backoff_ms)
        return;
    sc_conf_push_key(ctx, "initial_backoff_ms");
    sc_conf_error(ctx, "must be at most retry.max_backoff_ms (%d)", r->max_backoff_ms);
    sc_conf_pop(ctx);
}

static void check_http_sink(struct sc_conf_ctx *ctx, void *base, const json_t *obj, bool clean)
{
    const struct http_conf *h = base;
    bool authorization = false;
    for (size_t i = 0; i < h->headers.count; i++)
        authorization |= strcasecmp(h->headers.items[i].key, "Authorization") == 0;
    if (!h->bearer_token || !*h->bearer_token || !authorization)
        return;
    sc_conf_push_key(ctx, "bearer_token");
    sc_conf_error(ctx, "conflicts with the Authorization header in headers: set only one");
    sc_conf_pop(ctx);
}

static const struct sc_conf_enum http_methods[] = {
    {"POST", HTTP_POST},
    {"PUT", HTTP_PUT},
    {NULL, 0},
};
static const struct sc_conf_enum http_formats[] = {
    {"ndjson", HTTP_NDJSON},
    {"json_array", HTTP_JSON_ARRAY},
    {NULL, 0},
};
static const struct sc_conf_enum on_errors[] = {
    {"dead_letter", ON_ERROR_DEAD_LETTER},
    {"stop", ON_ERROR_STOP},
    {NULL, 0},
};

#define HTTPK(f) offsetof(struct http_conf, f)

static const struct sc_conf_key retry_keys[] = {
    {.name = "max_attempts",
     .type = SC_CONF_INT,
     .def = "10",
     .offset = offsetof(struct retry_conf, max_attempts),
     .min = 1,
     .max = 1000,
     .help = "attempts in one round of retries; then the partition backs off and the batch is "
             "sent again (running out of retries is never permanent)"},
    {.name = "initial_backoff_ms",
     .type = SC_CONF_INT,
     .def = "200",
     .offset = offsetof(struct retry_conf, initial_backoff_ms),
     .min = 1,
     .max = 600000,
     .help = "first backoff (doubling, with jitter)"},
    {.name = "max_backoff_ms",
     .type = SC_CONF_INT,
     .def = "10000",
     .offset = offsetof(struct retry_conf, max_backoff_ms),
     .min = 1,
     .max = 3600000,
     .help = "backoff cap"},
    {.name = "max_elapsed_ms",
     .type = SC_CONF_INT,
     .def = "60000",
     .offset = offsetof(struct retry_conf, max_elapsed_ms),
     .min = 0,
     .max = 86400000,
     .help = "give up after this long; 0 = no limit"},
    {NULL},
};
static const struct sc_conf_table retry_table = {
    .name = "pipelines[].sink.retry",
    .help = "Retries of connect errors, timeouts, 5xx, 408 and 429 (Retry-After is honoured).",
    .keys = retry_keys,
    .check = check_retry,
};

static const struct sc_conf_key http_keys[] = {
    {.name = "url",
     .type = SC_CONF_STRING,
     .offset = HTTPK(url),
     .flags = SC_CONF_REQUIRED,
     .check = sc_conf_check_url,
     .mask = sc_conf_mask_url,
     .help = "http:// or https:// endpoint (a password in it is masked when printed)"},
    {.name = "method",
     .type = SC_CONF_ENUM,
     .def = "POST",
     .offset = HTTPK(method),
     .values = http_methods,
     .help = "request method"},
    {.name = "format",
     .type = SC_CONF_ENUM,
     .def = "ndjson",
     .offset = HTTPK(format),
     .values = http_formats,
     .help = "body: one envelope per line, or a JSON array"},
    {.name = "headers",
     .type = SC_CONF_MAP,
     .offset = HTTPK(headers),
     .flags = SC_CONF_MASK_BY_NAME,
     .check_item = check_header,
     .is_secret_name = sc_conf_key_is_secret,
     .help = "extra request headers; Content-Type, Idempotency-Key and X-Sidecar-* are set "
             "by the sidecar"},
    {.name = "timeout_ms",
     .type = SC_CONF_INT,
     .def = "5000",
     .offset = HTTPK(timeout_ms),
     .min = 100,
     .max = 600000,
     .help = "timeout of one request"},
    {.name = "retry",
     .type = SC_CONF_OBJECT,
     .offset = HTTPK(retry),
     .table = &retry_table,
     .help = "retry policy"},
    {.name = "on_error",
     .type = SC_CONF_ENUM,
     .def = "dead_letter",
     .offset = HTTPK(on_error),
     .values = on_errors,
     .help = "after a 4xx that rejects records: dead_letter (the batch is split to find them; "
             "a row in dead_letters each, then continue) or stop (the partition's error state)"},
    {.name = "ca_file",
     .type = SC_CONF_STRING,
     .offset = HTTPK(ca_file),
     .min = 1,
     .check = sc_conf_check_ca_bundle,
     .def_doc = "the system CA store",
     .help = "PEM bundle of the CAs to verify the server with (checked for a certificate "
             "when the config loads; curl reads it when it connects)"},
    {.name = "insecure_skip_verify",
     .type = SC_CONF_BOOL,
     .def = "false",
     .offset = HTTPK(insecure_skip_verify),
     .help = "do not verify the TLS certificate"},
    {.name = "bearer_token",
     .type = SC_CONF_STRING,
     .offset = HTTPK(bearer_token),
     .flags = SC_CONF_SECRET,
     .help = "sent as \"Authorization: Bearer ...\""},
    {NULL},
};
static const struct sc_conf_table http_table = {
    .name = "pipelines[].sink",
    .help = "One request per batch, with an Idempotency-Key the receiver de-duplicates by.",
    .size = sizeof(struct http_conf),
    .keys = http_keys,
    .check = check_http_sink,
};

/* ---- requests ------------------------------------------------------------------------------ */

enum outcome {
    OUT_OK,        /* 2xx: delivered */
    OUT_TRANSIENT, /* no response, timeout, 5xx, 408, 429: send again */
    OUT_REJECTED,  /* a 4xx about the records: dead letter or stop */
    OUT_REFUSED,   /* a 4xx/3xx about the request itself: stop */
    OUT_BROKEN,    /* the request cannot be built or sent at all: stop */
};

/* The result of one request. */
struct attempt {
    enum outcome outcome;
    long status;            /* 0: no HTTP response */
    int64_t retry_after_ms; /* -1: none */
    char what[384];         /* "HTTP 503 from URL", "timeout after 5000 ms (URL)" */
    char excerpt[EXCERPT_MAX + 1];
};

/* What one request carries: records [lo, hi) of recs. */
struct request {
    const char *pipeline;
    const char *topic;
    int32_t partition;
    int64_t epoch;
    const struct sc_record *recs;
    size_t lo, hi;
    bool redrive;
};

struct http_ctx {
    CURL *curl;
    struct sc_buf body;
    char resp[EXCERPT_MAX]; /* start of the response body */
    size_t resp_len;
    char retry_after[64]; /* Retry-After of the current response */
    char errbuf[CURL_ERROR_SIZE];
    char **static_headers; /* configured headers (+ Authorization), as "Name: value" lines */
    size_t nstatic;
    char *display_url; /* the URL without credentials or query, for messages */
};

/* A range of the batch still to be sent (the bisection stack). */
struct range {
    size_t lo, hi;
    int attempts;    /* requests of this range (in singles: of record lo) so far */
    int carried;     /* requests of the enclosing ranges that carried these records */
    bool judged;     /* the right half of a split: its left sibling's share was looked at */
    size_t sib_lo;   /* ... where that sibling starts, */
    size_t sib_dead; /* ... and the dead letters found before it */
    bool dense;      /* once rejected, send its records one at a time rather than split it */
    bool singles;    /* rejected and dense: records lo, lo + 1, ... alone, one per request */
};

struct found_dead {
    size_t index;
    char *error;
    int status;
    char *excerpt;
    int attempts;
};

/* Per partition: the progress of the batch being written, across write() calls. */
struct sc_sink_part {
    bool active;
    int64_t first, last, write_offset;
    size_t count;
    uint32_t checksum;
    struct range *stack;
    size_t nstack, stack_cap;
    struct found_dead *dead;
    size_t ndead, dead_cap;
    bool split_logged;
    bool singles_logged;
    /* the current round of retries */
    int round_attempts;
    int64_t round_start_ms;
    struct sc_backoff backoff;
    int64_t not_before_ms;
    char last_error[512];
    struct sc_metrics_part *m; /* the partition's metrics (found at the first Retry-After) */
};

/* ---- helpers -------------------------------------------------------------- */

static struct curl_slist *slist_add(struct curl_slist *l, const char *line)
{
    struct curl_slist *n = curl_slist_append(l, line);
    if (!n) {
        fprintf(stderr, "out of memory (curl header list)\n");
        abort();
    }
    return n;
}

/*
 * scheme://host[:port]/path of url: no user:password, query or fragment,
 * which may hold secrets (api_key=...), so it can appear in logs and in
 * dead_letters.error.
 */
static char *display_url(const char *url)
{
    const char *scheme_end = strstr(url, "://");
    const char *host = scheme_end ? scheme_end + 3 : url;
    const char *end = host + strcspn(host, "?#");
    const char *at = memchr(host, '@', (size_t)(end - host));
    const char *slash = memchr(host, '/', (size_t)(end - host));
    if (at && (!slash || at < slash))
        host = at + 1;
    return sc_xasprintf("%.*s%.*s", (int)(scheme_end ? scheme_end + 3 - url : 0), url,
                        (int)(end - host), host);
}

/*
 * Copies a response body excerpt as valid UTF-8 without control characters
 * (it goes into a text column and into one-line log records): invalid bytes
 * become '?', control characters ' ', and a character cut at the end is
 * dropped.
 */
static void clean_excerpt(const char *in, size_t len, char *out, size_t outsize)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < outsize;) {
        unsigned char ch = (unsigned char)in[i];
        if (ch < 0x80) {
            out[o++] = (ch < 0x20 || ch == 0x7F) ? ' ' : (char)ch;
            i++;
            continue;
        }
        size_t n = ch >= 0xF0 ? 4 : ch >= 0xE0 ? 3 : ch >= 0xC0 ? 2 : 1;
        if (i + n > len)
            break; /* cut by the excerpt limit */
        if (n > 1 && sc_utf8_valid(in + i, n)) {
            if (o + n + 1 > outsize)
                break;
            memcpy(out + o, in + i, n);
            o += n;
            i += n;
        } else {
            out[o++] = '?';
            i++;
        }
    }
    /* Trailing blanks say nothing. */
    while (o > 0 && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
}

/* Retry-After: delta-seconds or an HTTP date; -1 when absent or unreadable. */
static int64_t parse_retry_after(const char *v)
{
    if (!*v)
        return -1;
    bool digits = true;
    for (const char *p = v; *p && digits; p++)
        digits = isdigit((unsigned char)*p);
    if (digits) {
        int64_t s;
        if (sc_parse_i64(v, &s) != 0)
            return -1;
        return s > 86400 ? 86400 * 1000LL : s * 1000;
    }
    time_t t = curl_getdate(v, NULL);
    if (t == (time_t)-1)
        return -1;
    int64_t d = ((int64_t)t - (int64_t)time(NULL)) * 1000;
    return d < 0 ? 0 : d;
}

static enum outcome classify_status(long st)
{
    if (st >= 200 && st < 300)
        return OUT_OK;
    if (st == 408 || st == 429 || st >= 500)
        return OUT_TRANSIENT;
    if ((st >= 300 && st < 400) || st == 401 || st == 403 || st == 404 || st == 405 || st == 407 ||
        st == 414 || st == 415 || st == 426 || st == 431)
        return OUT_REFUSED;
    if (st >= 400)
        return OUT_REJECTED;
    return OUT_TRANSIENT; /* a 1xx as the final answer: nothing was confirmed */
}

/* ---- one request ------------------------------------------------------------ */

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct http_ctx *c = arg;
    size_t len = size * n;
    size_t room = sizeof(c->resp) - c->resp_len;
    size_t take = len < room ? len : room;
    memcpy(c->resp + c->resp_len, data, take);
    c->resp_len += take;
    return len; /* the rest is read and dropped: the connection stays usable */
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
    struct http_ctx *c = arg;
    size_t len = size * n;
    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        /* A new response (e.g. after "100 Continue"): forget the previous one's headers. */
        c->retry_after[0] = '\0';
        c->resp_len = 0;
    } else if (len > 12 && strncasecmp(data, "Retry-After:", 12) == 0) {
        const char *v = data + 12;
        const char *end = data + len;
        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
            end--;
        snprintf(c->retry_after, sizeof(c->retry_after), "%.*s", (int)(end - v), v);
    }
    return len;
}

static int build_body(struct sc_sink *sink, const struct request *rq)
{
    struct http_ctx *c = sink->ctx;
    bool array = ((const struct http_conf *)sink->conf)->format == HTTP_JSON_ARRAY;
    sc_buf_reset(&c->body);
    if (array && sc_buf_putc(&c->body, '[') < 0)
        return -1;
    for (size_t i = rq->lo; i < rq->hi; i++) {
        if (array && i > rq->lo && sc_buf_putc(&c->body, ',') < 0)
            return -1;
        if (sc_envelope_append(&c->body, &rq->recs[i], &sink->pc->formats) < 0)
            return -1;
        if (!array && sc_buf_putc(&c->body, '\n') < 0)
            return -1;
    }
    if (array && sc_buf_putc(&c->body, ']') < 0)
        return -1;
    return 0;
}

/* Sends one request and classifies its outcome into *a. */
static void perform(struct sc_sink *sink, const struct request *rq, struct attempt *a)
{
    struct http_ctx *c = sink->ctx;
    const struct http_conf *hc = sink->conf;
    memset(a, 0, sizeof(*a));
    a->retry_after_ms = -1;
    int64_t first = rq->recs[rq->lo].offset, last = rq->recs[rq->hi - 1].offset;
    if (build_body(sink, rq) != 0) {
        a->outcome = OUT_BROKEN;
        snprintf(a->what, sizeof(a->what),
                 "the request body for records [%" PRId64 "..%" PRId64 "] exceeds %u MiB", first,
                 last, BODY_MAX >> 20);
        return;
    }

    struct curl_slist *h = NULL;
    char *line;
    h = slist_add(h, hc->format == HTTP_JSON_ARRAY ? "Content-Type: application/json"
                                                   : "Content-Type: application/x-ndjson");
    line = sc_xasprintf("Idempotency-Key: %s/%s/%d/%" PRId64 "-%" PRId64, rq->pipeline, rq->topic,
                        (int)rq->partition, first, last);
    h = slist_add(h, line);
    free(line);
    line = sc_xasprintf("X-Sidecar-First-Offset: %" PRId64, first);
    h = slist_add(h, line);
    free(line);
    line = sc_xasprintf("X-Sidecar-Last-Offset: %" PRId64, last);
    h = slist_add(h, line);
    free(line);
    line = sc_xasprintf("X-Sidecar-Epoch: %" PRId64, rq->epoch);
    h = slist_add(h, line);
    free(line);
    if (rq->redrive)
        h = slist_add(h, "X-Sidecar-Redrive: true");
    /* curl would send "Expect: 100-continue" for large bodies and wait up to 1 s for it. */
    h = slist_add(h, "Expect:");
    for (size_t i = 0; i < c->nstatic; i++)
        h = slist_add(h, c->static_headers[i]);

    c->resp_len = 0;
    c->retry_after[0] = '\0';
    c->errbuf[0] = '\0';
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, c->body.data);
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body.len);
    CURLcode rc = curl_easy_perform(c->curl);
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(h);

    if (rc != CURLE_OK) {
        bool broken = rc == CURLE_URL_MALFORMAT || rc == CURLE_UNSUPPORTED_PROTOCOL ||
                      rc == CURLE_BAD_FUNCTION_ARGUMENT || rc == CURLE_OUT_OF_MEMORY;
        a->outcome = broken ? OUT_BROKEN : OUT_TRANSIENT;
        if (rc == CURLE_OPERATION_TIMEDOUT)
            snprintf(a->what, sizeof(a->what), "no response within timeout_ms (%d ms) from %s",
                     hc->timeout_ms, c->display_url);
        else
            snprintf(a->what, sizeof(a->what), "request to %s failed: %s", c->display_url,
                     c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc));
        return;
    }
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &a->status);
    a->outcome = classify_status(a->status);
    clean_excerpt(c->resp, c->resp_len, a->excerpt, sizeof(a->excerpt));
    if (a->status == 429 || a->status == 503 || (a->status >= 300 && a->status < 400))
        a->retry_after_ms = parse_retry_after(c->retry_after);
    snprintf(a->what, sizeof(a->what), "HTTP %ld from %s", a->status, c->display_url);
}

/* "HTTP 422 from URL: excerpt" (the excerpt shortened for one-line messages). */
static char *describe(const struct attempt *a)
{
    if (!a->excerpt[0])
        return sc_xstrdup(a->what);
    char short_ex[200];
    clean_excerpt(a->excerpt, strlen(a->excerpt), short_ex, sizeof(short_ex));
    return sc_xasprintf("%s: %s%s", a->what, short_ex,
                        strlen(a->excerpt) >= sizeof(short_ex) - 1 ? "..." : "");
}

/* ---- sink type --------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static atomic_bool warned_insecure;

static void curl_init(void)
{
    /* Not thread-safe in every libcurl build: once, before any handle exists. */
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void http_destroy(struct sc_sink *sink)
{
    struct http_ctx *c = sink->ctx;
    if (!c)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    sc_buf_free(&c->body);
    for (size_t i = 0; i < c->nstatic; i++)
        free(c->static_headers[i]);
    free(c->static_headers);
    free(c->display_url);
    free(c);
    sink->ctx = NULL;
}

static int http_create(struct sc_sink *sink, char *err, size_t errsize)
{
    const struct http_conf *hc = sink->conf;
    struct sc_log_fields f = {.pipeline = sink->pc->name, .partition = -1};
    int rc = -1;
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) {
        snprintf(err, errsize, "could not initialise libcurl: %s",
                 curl_easy_strerror(curl_init_rc));
        return -1;
    }
    struct http_ctx *c = sc_xcalloc(1, sizeof(*c));
    sink->ctx = c;
    sc_buf_init(&c->body, BODY_MAX);
    c->display_url = display_url(hc->url);
    c->static_headers = sc_xcalloc(hc->headers.count + 1, sizeof(char *));
    for (size_t i = 0; i < hc->headers.count; i++) {
        const struct sc_kv *kv = &hc->headers.items[i];
        /* "Name;" is curl's way to send a header with an empty value. */
        c->static_headers[c->nstatic++] =
            *kv->value ? sc_xasprintf("%s: %s", kv->key, kv->value) : sc_xasprintf("%s;", kv->key);
    }
    if (hc->bearer_token && *hc->bearer_token)
        c->static_headers[c->nstatic++] =
            sc_xasprintf("Authorization: Bearer %s", hc->bearer_token);

    c->curl = curl_easy_init();
    if (!c->curl) {
        snprintf(err, errsize, "could not create a libcurl handle");
        goto out;
    }
    CURL *e = c->curl;
    /* One handle per worker, kept for the process lifetime: its connection is reused. */
    curl_easy_setopt(e, CURLOPT_URL, hc->url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM for DNS timeouts */
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)hc->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)hc->timeout_ms);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    if (hc->method == HTTP_PUT)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "kafka-sidecar/" SIDECAR_VERSION);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    /* HTTP/2 where TLS negotiates it (ALPN); plain http stays HTTP/1.1 (no h2c upgrade). */
    bool tls = strncasecmp(hc->url, "https://", 8) == 0;
    if (curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                         tls ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1) !=
        CURLE_OK)
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    if (hc->ca_file && curl_easy_setopt(e, CURLOPT_CAINFO, hc->ca_file) != CURLE_OK) {
        snprintf(err, errsize, "ca_file is not supported by this libcurl's TLS backend");
        goto out;
    }
    if (hc->insecure_skip_verify) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
        if (tls && !atomic_exchange(&warned_insecure, true))
            sc_warn(&f,
                    "insecure_skip_verify is set: the TLS certificate of %s is not verified, "
                    "anyone on the path can read and alter the records",
                    c->display_url);
    }
    rc = 0;
out:
    if (rc != 0)
        http_destroy(sink);
    return rc;
}

static int http_part_open(struct sc_sink *sink, const struct sc_part_ref *ref,
                          struct sc_sink_part **out, char *err, size_t errsize)
{
    (void)sink, (void)ref, (void)err, (void)errsize;
    *out = sc_xcalloc(1, sizeof(**out));
    return 0;
}

static void dead_free(struct sc_sink_part *p)
{
    for (size_t i = 0; i < p->ndead; i++) {
        free(p->dead[i].error);
        free(p->dead[i].excerpt);
    }
    p->ndead = 0;
}

static void http_part_close(struct sc_sink *sink, struct sc_sink_part *p)
{
    (void)sink;
    if (!p)
        return;
    dead_free(p);
    free(p->dead);
    free(p->stack);
    free(p);
}

static void push_range(struct sc_sink_part *p, size_t lo, size_t hi, int carried)
{
    if (p->nstack == p->stack_cap) {
        p->stack_cap = p->stack_cap ? p->stack_cap * 2 : 16;
        p->stack = sc_xrealloc(p->stack, p->stack_cap * sizeof(*p->stack));
    }
    p->stack[p->nstack++] = (struct range){.lo = lo, .hi = hi, .carried = carried, .judged = true};
}

/*
 * The right half of a split, once its left sibling is resolved (it is on
 * top of the stack again): when that sibling turned out dense with rejected
 * records, this half is likely so too, and is sent record by record once
 * it is rejected as a whole (see sc_sink_bisect_dense()).
 */
static void judge_density(struct sc_sink_part *p, struct range *r, const struct sc_batch *b)
{
    if (r->judged)
        return;
    r->judged = true;
    size_t left = r->lo - r->sib_lo, bad = p->ndead - r->sib_dead;
    r->dense = sc_sink_bisect_dense(left, bad);
    if (r->dense && !p->singles_logged) {
        p->singles_logged = true;
        sc_info(&(struct sc_log_fields){b->part->pipeline, b->part->topic, b->part->partition},
                "%zu of the %zu records before offset %" PRId64 " were rejected: the rest of "
                "each rejected range is sent one record at a time",
                bad, left, b->records[r->lo].offset);
    }
}

static void round_reset(struct sc_sink *sink, struct sc_sink_part *p)
{
    const struct retry_conf *rc = &((const struct http_conf *)sink->conf)->retry;
    p->round_attempts = 0;
    sc_backoff_init(&p->backoff, rc->initial_backoff_ms, rc->max_backoff_ms);
}

/* Forgets any progress and starts batch b (or nothing, when b is NULL). */
static void part_begin(struct sc_sink *sink, struct sc_sink_part *p, const struct sc_batch *b)
{
    dead_free(p);
    p->nstack = 0;
    p->active = b != NULL;
    p->split_logged = false;
    p->singles_logged = false;
    p->not_before_ms = 0;
    p->last_error[0] = '\0';
    round_reset(sink, p);
    if (!b)
        return;
    p->first = b->first_offset;
    p->last = b->last_offset;
    p->count = b->count;
    p->checksum = b->checksum;
    p->write_offset = b->write_offset;
    push_range(p, 0, b->count, 0);
}

static bool same_batch(const struct sc_sink_part *p, const struct sc_batch *b)
{
    return p->active && p->first == b->first_offset && p->last == b->last_offset &&
           p->count == b->count && p->checksum == b->checksum && p->write_offset == b->write_offset;
}

/*
 * The request for the range on top of the stack was rejected with a
 * record-level 4xx: dead-letter its one record (and go on with the next
 * one, in singles), or send a dense range's records one at a time, or
 * split the range in halves.
 */
static void split_rejected(struct sc_sink_part *p, const struct sc_batch *b,
                           const struct attempt *a)
{
    struct range *r = &p->stack[p->nstack - 1];
    struct sc_log_fields f = {b->part->pipeline, b->part->topic, b->part->partition};
    if (r->singles || r->hi - r->lo == 1) {
        if (p->ndead == p->dead_cap) {
            p->dead_cap = p->dead_cap ? p->dead_cap * 2 : 8;
            p->dead = sc_xrealloc(p->dead, p->dead_cap * sizeof(*p->dead));
        }
        p->dead[p->ndead++] = (struct found_dead){
            .index = r->lo,
            .error = describe(a),
            .status = (int)a->status,
            .excerpt = a->excerpt[0] ? sc_xstrdup(a->excerpt) : NULL,
            .attempts = r->carried + r->attempts,
        };
        sc_debug(&f, "record at offset %" PRId64 " rejected with HTTP %ld; it goes to dead_letters",
                 b->records[r->lo].offset, a->status);
        if (++r->lo == r->hi)
            p->nstack--;
        r->attempts = 0;
        return;
    }
    if (!p->split_logged) {
        p->split_logged = true;
        sc_info(&f,
                "HTTP %ld for records [%" PRId64 "..%" PRId64 "]: splitting the batch to find the "
                "rejected records (on_error dead_letter)",
                a->status, b->records[r->lo].offset, b->records[r->hi - 1].offset);
    }
    if (r->dense) {
        r->singles = true;
        r->carried += r->attempts;
        r->attempts = 0;
        return;
    }
    struct range split = *r;
    p->nstack--;
    size_t mid = split.lo + (split.hi - split.lo) / 2;
    int carried = split.carried + split.attempts;
    push_range(p, mid, split.hi, carried); /* right half below: the left one goes first */
    struct range *right = &p->stack[p->nstack - 1];
    right->judged = false;
    right->sib_lo = split.lo;
    right->sib_dead = p->ndead;
    push_range(p, split.lo, mid, carried);
}

static enum sc_sink_result http_write(struct sc_sink *sink, struct sc_sink_part *p,
                                      const struct sc_batch *b, const struct sc_commit_hook *hook,
                                      struct sc_batch_result *res, char *err, size_t errsize)
{
    (void)hook;
    const struct http_conf *hc = sink->conf;
    const struct retry_conf *rc = &hc->retry;
    enum sc_sink_result result = SC_SINK_ERROR;
    if (!same_batch(p, b))
        part_begin(sink, p, b);

    int64_t call_start = sc_mono_ms();
    if (p->not_before_ms > call_start) {
        int64_t wait = p->not_before_ms - call_start;
        if (wait > INLINE_WAIT_MS) {
            /* The worker came back before the backoff is over: send nothing yet. */
            snprintf(err, errsize, "%s; still backing off (%" PRId64 " ms left)", p->last_error,
                     wait);
            res->retry_in_ms = wait;
            return SC_SINK_RETRY;
        }
        sc_sleep_ms(wait, NULL);
    }
    p->not_before_ms = 0;

    while (p->nstack > 0) {
        struct range *r = &p->stack[p->nstack - 1];
        judge_density(p, r, b);
        struct request rq = {.pipeline = b->part->pipeline,
                             .topic = b->part->topic,
                             .partition = b->part->partition,
                             .epoch = b->part->epoch,
                             .recs = b->records,
                             .lo = r->lo,
                             .hi = r->singles ? r->lo + 1 : r->hi};
        if (p->round_attempts == 0)
            p->round_start_ms = sc_mono_ms();
        struct attempt a;
        perform(sink, &rq, &a);
        r->attempts++;
        int64_t first = b->records[rq.lo].offset, last = b->records[rq.hi - 1].offset;

        if (a.outcome == OUT_OK) {
            if (rq.hi < r->hi) { /* singles: the next record */
                r->lo = rq.hi;
                r->attempts = 0;
            } else {
                p->nstack--;
            }
            round_reset(sink, p);
            continue;
        }
        if (a.outcome == OUT_REJECTED && hc->on_error == ON_ERROR_DEAD_LETTER) {
            split_rejected(p, b, &a);
            round_reset(sink, p);
            continue;
        }
        if (a.outcome != OUT_TRANSIENT) {
            char *d = describe(&a);
            if (a.outcome == OUT_REJECTED)
                snprintf(err, errsize,
                         "records [%" PRId64 "..%" PRId64 "] rejected (on_error stop; with "
                         "on_error dead_letter they would go to dead_letters): %s",
                         first, last, d);
            else if (a.outcome == OUT_REFUSED)
                snprintf(err, errsize,
                         "the endpoint refuses the request itself, not a record (check url, "
                         "method, headers and bearer_token; the partition stops rather than "
                         "dead-letter every record): %s",
                         d);
            else
                snprintf(err, errsize, "%s", d);
            free(d);
            goto out;
        }

        p->round_attempts++;
        int64_t now = sc_mono_ms(), elapsed = now - p->round_start_ms;
        char *what = describe(&a);
        snprintf(p->last_error, sizeof(p->last_error),
                 "%s for records [%" PRId64 "..%" PRId64 "] (attempt %d of %d)", what, first, last,
                 p->round_attempts, rc->max_attempts);
        free(what);
        int64_t wait = a.retry_after_ms >= 0 ? a.retry_after_ms : sc_backoff_next(&p->backoff);
        if (wait > rc->max_backoff_ms)
            wait = rc->max_backoff_ms;
        if (a.retry_after_ms >= 0) {
            if (!p->m)
                p->m = sc_metrics_part(rq.pipeline, rq.topic, rq.partition);
            sc_counter_add(&p->m->http_retry_after, 1);
        }
        bool round_over = p->round_attempts >= rc->max_attempts ||
                          (rc->max_elapsed_ms > 0 && elapsed + wait > rc->max_elapsed_ms);
        if (round_over) {
            /* Not permanent: the batch stays pending; the next call starts a new round. */
            snprintf(err, errsize,
                     "%s; retry budget used up (%d attempts in %" PRId64 " ms), the batch stays "
                     "pending and is sent again after the partition's backoff",
                     p->last_error, p->round_attempts, elapsed);
            round_reset(sink, p);
            p->not_before_ms = a.retry_after_ms >= 0 ? now + wait : 0;
            res->retry_in_ms = a.retry_after_ms >= 0 ? wait : 0; /* else the worker's backoff */
            return SC_SINK_RETRY;
        }
        if (wait <= INLINE_WAIT_MS && now - call_start + wait <= INLINE_BUDGET_MS) {
            sc_debug(&(struct sc_log_fields){rq.pipeline, rq.topic, rq.partition},
                     "%s; retrying in %" PRId64 " ms", p->last_error, wait);
            sc_sleep_ms(wait, NULL);
            continue;
        }
        /* The worker waits at least this long (and says how long, once). */
        p->not_before_ms = now + wait;
        res->retry_in_ms = wait;
        snprintf(err, errsize, "%s%s", p->last_error,
                 a.retry_after_ms >= 0 ? " (as its Retry-After asks)" : "");
        return SC_SINK_RETRY;
    }

    /* Every record is delivered or rejected: hand the rejected ones to the worker. */
    if (p->ndead > 0)
        sc_warn(&(struct sc_log_fields){b->part->pipeline, b->part->topic, b->part->partition},
                "%zu of the records [%" PRId64 "..%" PRId64 "] rejected by %s; they go to "
                "dead_letters (the first: offset %" PRId64 ", %s)",
                p->ndead, b->first_offset, b->last_offset,
                ((struct http_ctx *)sink->ctx)->display_url, b->records[p->dead[0].index].offset,
                p->dead[0].error);
    for (size_t i = 0; i < p->ndead; i++) {
        struct found_dead *fd = &p->dead[i];
        sc_batch_result_add_dead(res, fd->index, fd->error, fd->status, fd->excerpt, fd->attempts);
        fd->error = fd->excerpt = NULL; /* owned by res now */
    }
    res->next_write_offset = b->write_offset + 1;
    result = SC_SINK_OK;
out:
    part_begin(sink, p, NULL);
    return result;
}

/*
 * Sends each record alone (key <pipeline>/<topic>/<partition>/<off>-<off>,
 * X-Sidecar-Epoch 0: a redrive runs outside any lease).  This runs in the
 * `sidecar redrive` command, not on a worker, so it waits out its backoffs
 * in place.  When a record cannot be sent at all (retries used up without
 * an HTTP answer), it gets its error and the call returns SC_SINK_RETRY at
 * once: the records after it have neither ok[i] nor errors[i] set (not
 * attempted).
 */
static enum sc_sink_result http_redrive(struct sc_sink *sink, const struct sc_record *records,
                                        size_t n, bool *ok, char **errors, char *err,
                                        size_t errsize)
{
    const struct retry_conf *rc = &((const struct http_conf *)sink->conf)->retry;
    for (size_t i = 0; i < n; i++) {
        struct request rq = {.pipeline = sink->pc->name,
                             .topic = records[i].topic,
                             .partition = records[i].partition,
                             .epoch = 0,
                             .recs = records,
                             .lo = i,
                             .hi = i + 1,
                             .redrive = true};
        struct sc_backoff bo;
        sc_backoff_init(&bo, rc->initial_backoff_ms, rc->max_backoff_ms);
        int64_t start = sc_mono_ms();
        for (int attempts = 1;; attempts++) {
            struct attempt a;
            perform(sink, &rq, &a);
            if (a.outcome == OUT_OK) {
                ok[i] = true;
                break;
            }
            if (a.outcome != OUT_TRANSIENT) {
                errors[i] = describe(&a);
                break;
            }
            int64_t wait = a.retry_after_ms >= 0 ? a.retry_after_ms : sc_backoff_next(&bo);
            if (wait > rc->max_backoff_ms)
                wait = rc->max_backoff_ms;
            int64_t elapsed = sc_mono_ms() - start;
            if (attempts >= rc->max_attempts ||
                (rc->max_elapsed_ms > 0 && elapsed + wait > rc->max_elapsed_ms)) {
                errors[i] = describe(&a);
                snprintf(err, errsize, "%s (%d attempts in %" PRId64 " ms)", errors[i], attempts,
                         elapsed);
                return SC_SINK_RETRY;
            }
            sc_sleep_ms(wait, NULL);
        }
    }
    return SC_SINK_OK;
}

/*
 * `check-config --online`: the endpoint's host resolves and accepts a
 * connection within timeout_ms, TLS included (certificate verified as
 * configured).  No request is sent: a wrong path or token shows only when
 * the first batch goes out.
 */
static int http_check_online(const struct sc_config *cfg, size_t i, char *msg, size_t msgsize)
{
    const struct http_conf *hc = cfg->pipelines[i].sink.conf;
    char *shown = display_url(hc->url);
    char errbuf[CURL_ERROR_SIZE] = "";
    int result = -1;
    CURL *e = NULL;
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK || !(e = curl_easy_init())) {
        snprintf(msg, msgsize, "could not create a libcurl handle");
        goto out;
    }
    curl_easy_setopt(e, CURLOPT_URL, hc->url);
    curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)hc->timeout_ms);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    if (hc->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, hc->ca_file);
    if (hc->insecure_skip_verify) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    CURLcode rc = curl_easy_perform(e);
    if (rc != CURLE_OK) {
        snprintf(msg, msgsize, "cannot connect to %s: %s", shown,
                 errbuf[0] ? errbuf : curl_easy_strerror(rc));
        goto out;
    }
    snprintf(msg, msgsize, "%s accepts connections%s (no request was sent)", shown,
             strncasecmp(hc->url, "https://", 8) == 0 ? " over TLS" : "");
    result = 0;
out:
    if (e)
        curl_easy_cleanup(e);
    free(shown);
    return result;
}

const struct sc_sink_class sink_http_class = {
    .conf = {.name = "http", .table = &http_table},
    .check_online = http_check_online,
    /* Each worker has one request out at a time, which mostly waits on the service: as many
     * as before the CPU-based default, whatever the CPUs (docs/sinks.md). */
    .default_workers = 4,
    /* curl_global_init() (OpenSSL's tables) 2.0 MiB, the first handle's first request 0.4 MiB
     * more, the next handles ~16 KiB each (measured, libcurl 7.88 on Debian 12). */
    .fixed_bytes = 5 * (1LL << 20) / 2,
    .create = http_create,
    .destroy = http_destroy,
    .part_open = http_part_open,
    .part_close = http_part_close,
    .write = http_write,
    .redrive = http_redrive,
};
