/*
 * receiver.c - the test HTTP receiver (see receiver.h).
 */
#include "receiver.h"

#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <microhttpd.h>

#include "hx.h"
#include "scx.h"

#define BODY_MAX (64 * 1024 * 1024)

/* First body seen under a key, and whether a 2xx accepted it. */
struct rx_key {
    char *key;
    char *body;
    size_t body_len;
    bool accepted;
    int requests; /* answered so far */
};

struct rx {
    struct MHD_Daemon *daemon;
    int port;
    char url[64];
    pthread_mutex_t lock;
    struct rx_faults faults; /* under lock; reject_marker and retry_after are copies */
    char *marker;
    char *retry_after;
    unsigned seed;
    struct rx_request *reqs;
    size_t nreqs, reqs_cap;
    struct rx_key *keys;
    size_t nkeys, keys_cap;
    long mismatches;
    long connections;
    /* rx_check_pending(): the checkpoint connection, under its own lock */
    pthread_mutex_t pend_lock;
    char *pend_dsn;
    PGconn *pend_conn;
    long pend_checked, pend_violations;
    char pend_first_violation[512];
    char *cert, *key; /* TLS only */
};

/* The body of one request as it arrives in pieces. */
struct upload {
    char *data;
    size_t len;
    bool too_big;
};

static char *dup_header(struct MHD_Connection *c, const char *name)
{
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
    return v ? strdup(v) : NULL;
}

static struct rx_key *find_key(struct rx *rx, const char *key)
{
    for (size_t i = 0; i < rx->nkeys; i++)
        if (strcmp(rx->keys[i].key, key) == 0)
            return &rx->keys[i];
    return NULL;
}

static int roll(struct rx *rx)
{
    return rand_r(&rx->seed) % 1000;
}

/* Records the request and decides the answer (under the lock). Returns the status. */
static int decide(struct rx *rx, struct rx_request *rq, int *slow_ms)
{
    struct rx_key *k = rq->key ? find_key(rx, rq->key) : NULL;
    if (rq->key && !k) {
        if (rx->nkeys == rx->keys_cap) {
            rx->keys_cap = rx->keys_cap ? rx->keys_cap * 2 : 256;
            rx->keys = realloc(rx->keys, rx->keys_cap * sizeof(*rx->keys));
        }
        k = &rx->keys[rx->nkeys++];
        *k = (struct rx_key){strdup(rq->key), malloc(rq->body_len + 1), rq->body_len, false, 0};
        memcpy(k->body, rq->body, rq->body_len);
    } else if (k && (k->body_len != rq->body_len || memcmp(k->body, rq->body, rq->body_len))) {
        rx->mismatches++;
    }
    const struct rx_faults *f = &rx->faults;
    *slow_ms = f->delay_ms;
    if (f->status_all)
        return f->status_all;
    if (!rq->key)
        return 400;
    if (f->retry_status && k->requests++ < f->retry_times) {
        rq->fault = true;
        if (f->retry_after && f->retry_after[0] == '+') {
            time_t t = time(NULL) + strtol(f->retry_after + 1, NULL, 10);
            struct tm tm;
            strftime(rq->retry_after, sizeof(rq->retry_after), "%a, %d %b %Y %H:%M:%S GMT",
                     gmtime_r(&t, &tm));
        } else if (f->retry_after) {
            snprintf(rq->retry_after, sizeof(rq->retry_after), "%s", f->retry_after);
        }
        return f->retry_status;
    }
    if (rx->marker && memmem(rq->body, rq->body_len, rx->marker, strlen(rx->marker)))
        return f->reject_status ? f->reject_status : 422;
    int r = roll(rx);
    if (r < f->p500_before) {
        rq->fault = true;
        return 500;
    }
    r -= f->p500_before;
    if (r < f->p429) {
        rq->fault = true;
        snprintf(rq->retry_after, sizeof(rq->retry_after), "1");
        return 429;
    }
    r -= f->p429;
    /* Accepted from here on: a key is applied once, by its first 2xx-bound request. */
    if (!k->accepted) {
        k->accepted = true;
        rq->accepted_first = true;
    }
    if (r < f->p500_after) {
        rq->fault = true;
        return 500;
    }
    r -= f->p500_after;
    if (r < f->pslow) {
        rq->fault = true;
        *slow_ms = f->slow_ms;
    }
    return 200;
}

/*
 * I2: is the request's range pending (or committed) in its checkpoint row?
 * 1 yes, 0 no (a violation), -1 cannot tell (PostgreSQL away).
 */
static int pend_check(struct rx *rx, const struct rx_request *rq)
{
    if (!rq->key || !rq->first || !rq->last || rq->redrive)
        return 1;
    /* Key: <pipeline>/<topic>/<partition>/<first>-<last> (the tests' names have no '/'). */
    char pipeline[128], topic[256], part[16];
    if (sscanf(rq->key, "%127[^/]/%255[^/]/%15[^/]/", pipeline, topic, part) != 3)
        return 0;
    int64_t first = strtoll(rq->first, NULL, 10), last = strtoll(rq->last, NULL, 10);
    int rc = -1;
    pthread_mutex_lock(&rx->pend_lock);
    if (rx->pend_conn && PQstatus(rx->pend_conn) != CONNECTION_OK) {
        PQfinish(rx->pend_conn);
        rx->pend_conn = NULL;
    }
    if (!rx->pend_conn) {
        rx->pend_conn = PQconnectdb(rx->pend_dsn);
        if (PQstatus(rx->pend_conn) != CONNECTION_OK) {
            PQfinish(rx->pend_conn);
            rx->pend_conn = NULL;
            goto out;
        }
    }
    const char *params[] = {pipeline, topic, part};
    PGresult *res = PQexecParams(rx->pend_conn,
                                 "SELECT coalesce(pending_first_offset, -1),"
                                 " coalesce(pending_last_offset, -1),"
                                 " coalesce(committed_offset, 0) FROM sidecar.checkpoints"
                                 " WHERE pipeline = $1 AND topic = $2 AND partition = $3::int",
                                 3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        int64_t pf = -1, pl = -1, committed = 0;
        if (PQntuples(res) == 1) {
            pf = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
            pl = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
            committed = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
        }
        bool pending = pf >= 0 && pf <= first && last <= pl;
        rc = pending || last < committed;
        rx->pend_checked++;
        if (!rc && rx->pend_violations++ == 0)
            snprintf(rx->pend_first_violation, sizeof(rx->pend_first_violation),
                     "request %s arrived while the checkpoint had pending [%" PRId64 "..%" PRId64
                     "], committed offset %" PRId64,
                     rq->key, pf, pl, committed);
    }
    PQclear(res);
out:
    pthread_mutex_unlock(&rx->pend_lock);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    (void)url, (void)version;
    struct rx *rx = cls;
    struct upload *u = *con_cls;
    if (!u) {
        *con_cls = calloc(1, sizeof(*u));
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (u->len + *upload_size > BODY_MAX) {
            u->too_big = true;
        } else {
            u->data = realloc(u->data, u->len + *upload_size + 1);
            memcpy(u->data + u->len, upload_data, *upload_size);
            u->len += *upload_size;
            u->data[u->len] = '\0'; /* bodies are searched with strstr() */
        }
        *upload_size = 0;
        return MHD_YES;
    }

    struct rx_request rq = {
        .method = strdup(method),
        .key = dup_header(c, "Idempotency-Key"),
        .first = dup_header(c, "X-Sidecar-First-Offset"),
        .last = dup_header(c, "X-Sidecar-Last-Offset"),
        .epoch = dup_header(c, "X-Sidecar-Epoch"),
        .redrive = dup_header(c, "X-Sidecar-Redrive"),
        .content_type = dup_header(c, MHD_HTTP_HEADER_CONTENT_TYPE),
        .authorization = dup_header(c, MHD_HTTP_HEADER_AUTHORIZATION),
        .tenant = dup_header(c, "X-Tenant"),
        .body = u->data ? u->data : calloc(1, 1),
        .body_len = u->len,
        .at_ms = hx_now_ms(),
    };
    u->data = NULL;
    int slow_ms = 0;
    int pended = rx->pend_dsn ? pend_check(rx, &rq) : 1;
    rq.unpended = pended == 0;
    pthread_mutex_lock(&rx->lock);
    if (pended < 0) {
        rq.status = 503; /* cannot check I2 now: not accepted, the sink sends it again */
        rq.fault = true;
    } else {
        rq.status = u->too_big ? 413 : decide(rx, &rq, &slow_ms);
    }
    if (rx->nreqs == rx->reqs_cap) {
        rx->reqs_cap = rx->reqs_cap ? rx->reqs_cap * 2 : 1024;
        rx->reqs = realloc(rx->reqs, rx->reqs_cap * sizeof(*rx->reqs));
    }
    rx->reqs[rx->nreqs++] = rq;
    pthread_mutex_unlock(&rx->lock);

    if (slow_ms > 0)
        usleep((useconds_t)slow_ms * 1000);
    const char *text = rq.status == 200   ? "{\"ok\":true}"
                       : rq.status == 422 ? "{\"error\":\"poison record rejected by the test\"}"
                       : rq.status == 429 || rq.status == 503
                           ? "slow down"
                           : "{\"error\":\"injected by the test receiver\"}";
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (rq.retry_after[0])
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, rq.retry_after);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)rq.status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)c, (void)toe;
    struct upload *u = *con_cls;
    if (u) {
        free(u->data);
        free(u);
    }
    *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    (void)c, (void)socket_context;
    struct rx *rx = cls;
    if (toe != MHD_CONNECTION_NOTIFY_STARTED)
        return;
    pthread_mutex_lock(&rx->lock);
    rx->connections++;
    pthread_mutex_unlock(&rx->lock);
}

struct rx *rx_start_tls(const char *cert_pem, const char *key_pem)
{
    struct rx *rx = calloc(1, sizeof(*rx));
    pthread_mutex_init(&rx->lock, NULL);
    pthread_mutex_init(&rx->pend_lock, NULL);
    rx->seed = (unsigned)getpid() ^ (unsigned)hx_now_ms();
    bool tls = cert_pem != NULL;
    if (tls) {
        /* MHD keeps pointers to these for the daemon's lifetime. */
        rx->cert = strdup(cert_pem);
        rx->key = strdup(key_pem);
    }
    unsigned flags =
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    for (int tries = 0; tries < 20 && !rx->daemon; tries++) {
        rx->port = scx_free_port();
        /* No error log over TLS: the test makes handshakes fail on purpose. */
        if (tls)
            rx->daemon = MHD_start_daemon(
                (flags & ~(unsigned)MHD_USE_ERROR_LOG) | MHD_USE_TLS, (uint16_t)rx->port, NULL,
                NULL, on_request, rx, MHD_OPTION_HTTPS_MEM_CERT, rx->cert, MHD_OPTION_HTTPS_MEM_KEY,
                rx->key, MHD_OPTION_NOTIFY_COMPLETED, on_completed, rx,
                MHD_OPTION_NOTIFY_CONNECTION, on_connection, rx, MHD_OPTION_CONNECTION_TIMEOUT,
                (unsigned)60, MHD_OPTION_END);
        else
            rx->daemon = MHD_start_daemon(
                flags, (uint16_t)rx->port, NULL, NULL, on_request, rx, MHD_OPTION_NOTIFY_COMPLETED,
                on_completed, rx, MHD_OPTION_NOTIFY_CONNECTION, on_connection, rx,
                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60, MHD_OPTION_END);
    }
    ck_assert_msg(rx->daemon != NULL, "could not start the test HTTP receiver");
    snprintf(rx->url, sizeof(rx->url), "%s://127.0.0.1:%d/ingest", tls ? "https" : "http",
             rx->port);
    return rx;
}

struct rx *rx_start(void)
{
    return rx_start_tls(NULL, NULL);
}

int rx_port(const struct rx *rx)
{
    return rx->port;
}

const char *rx_url(const struct rx *rx)
{
    return rx->url;
}

void rx_set_faults(struct rx *rx, const struct rx_faults *f)
{
    pthread_mutex_lock(&rx->lock);
    free(rx->marker);
    free(rx->retry_after);
    rx->faults = *f;
    rx->marker = f->reject_marker ? strdup(f->reject_marker) : NULL;
    rx->faults.reject_marker = rx->marker;
    rx->retry_after = f->retry_after ? strdup(f->retry_after) : NULL;
    rx->faults.retry_after = rx->retry_after;
    pthread_mutex_unlock(&rx->lock);
}

void rx_stop(struct rx *rx)
{
    if (!rx)
        return;
    MHD_stop_daemon(rx->daemon);
    for (size_t i = 0; i < rx->nreqs; i++) {
        struct rx_request *r = &rx->reqs[i];
        free(r->method);
        free(r->key);
        free(r->first);
        free(r->last);
        free(r->epoch);
        free(r->redrive);
        free(r->content_type);
        free(r->authorization);
        free(r->tenant);
        free(r->body);
    }
    for (size_t i = 0; i < rx->nkeys; i++) {
        free(rx->keys[i].key);
        free(rx->keys[i].body);
    }
    free(rx->reqs);
    free(rx->keys);
    free(rx->marker);
    free(rx->retry_after);
    free(rx->pend_dsn);
    if (rx->pend_conn)
        PQfinish(rx->pend_conn);
    pthread_mutex_destroy(&rx->pend_lock);
    free(rx->cert);
    free(rx->key);
    pthread_mutex_destroy(&rx->lock);
    free(rx);
}

void rx_check_pending(struct rx *rx, const char *dsn)
{
    pthread_mutex_lock(&rx->pend_lock);
    free(rx->pend_dsn);
    rx->pend_dsn = strdup(dsn);
    pthread_mutex_unlock(&rx->pend_lock);
}

long rx_pending_checked(struct rx *rx)
{
    pthread_mutex_lock(&rx->pend_lock);
    long n = rx->pend_checked;
    pthread_mutex_unlock(&rx->pend_lock);
    return n;
}

void rx_lock(struct rx *rx)
{
    pthread_mutex_lock(&rx->lock);
}

void rx_unlock(struct rx *rx)
{
    pthread_mutex_unlock(&rx->lock);
}

size_t rx_nrequests(struct rx *rx)
{
    return rx->nreqs;
}

const struct rx_request *rx_request(struct rx *rx, size_t i)
{
    return &rx->reqs[i];
}

long rx_connections(struct rx *rx)
{
    pthread_mutex_lock(&rx->lock);
    long n = rx->connections;
    pthread_mutex_unlock(&rx->lock);
    return n;
}

long rx_body_mismatches(struct rx *rx)
{
    pthread_mutex_lock(&rx->lock);
    long n = rx->mismatches;
    pthread_mutex_unlock(&rx->lock);
    return n;
}

long rx_count_status(struct rx *rx, int status)
{
    long n = 0;
    pthread_mutex_lock(&rx->lock);
    for (size_t i = 0; i < rx->nreqs; i++)
        n += rx->reqs[i].status == status;
    pthread_mutex_unlock(&rx->lock);
    return n;
}

/* ---- verification ---------------------------------------------------------- */

long rx_repeated_keys(struct rx *rx)
{
    long n = 0;
    rx_lock(rx);
    size_t total = rx_nrequests(rx);
    for (size_t i = 0; i < total; i++) {
        const struct rx_request *r = rx_request(rx, i);
        for (size_t j = 0; j < i && r->key; j++)
            if (rx_request(rx, j)->key && strcmp(rx_request(rx, j)->key, r->key) == 0) {
                n++;
                break;
            }
    }
    rx_unlock(rx);
    return n;
}

long rx_check_retry_after(struct rx *rx)
{
    long checked = 0;
    rx_lock(rx);
    size_t total = rx_nrequests(rx);
    for (size_t i = 0; i < total; i++) {
        const struct rx_request *r = rx_request(rx, i);
        if (r->status != 429 || !r->key || !r->epoch)
            continue;
        for (size_t j = i + 1; j < total; j++) {
            const struct rx_request *n = rx_request(rx, j);
            if (!n->key || !n->epoch || strcmp(n->key, r->key) != 0 ||
                strcmp(n->epoch, r->epoch) != 0)
                continue;
            ck_assert_msg(n->at_ms - r->at_ms >= 950,
                          "key %s sent again %" PRId64 " ms after a 429 with Retry-After: 1",
                          r->key, n->at_ms - r->at_ms);
            checked++;
            break;
        }
    }
    rx_unlock(rx);
    return checked;
}

/* An accepted request's records of one partition. */
struct batch {
    int64_t first, last;
    bool redrive; /* sent by `sidecar redrive`, out of the offset order */
    json_t *records;
    const char *raw; /* body, for byte checks of the values */
};

static int by_first(const void *a, const void *b)
{
    const struct batch *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

/* The body's records as a JSON array (NDJSON lines or a JSON array). */
static json_t *parse_body(const struct rx_request *r, bool array, size_t index)
{
    json_error_t e;
    if (array) {
        json_t *j = json_loadb(r->body, r->body_len, 0, &e);
        ck_assert_msg(json_is_array(j), "request %zu: body is not a JSON array: %s", index, e.text);
        return j;
    }
    ck_assert_msg(r->body_len > 0 && r->body[r->body_len - 1] == '\n',
                  "request %zu: NDJSON body does not end with a newline", index);
    json_t *out = json_array();
    const char *p = r->body, *end = r->body + r->body_len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        json_t *j = json_loadb(p, (size_t)(nl - p), 0, &e);
        ck_assert_msg(json_is_object(j), "request %zu: invalid NDJSON line: %s: %.200s", index,
                      e.text, p);
        json_array_append_new(out, j);
        p = nl + 1;
    }
    return out;
}

int64_t rx_verify(struct rx *rx, const struct rx_verify_opts *o)
{
    int64_t total = 0;
    pthread_mutex_lock(&rx->pend_lock);
    long violations = rx->pend_violations;
    char first_violation[512];
    snprintf(first_violation, sizeof(first_violation), "%s", rx->pend_first_violation);
    pthread_mutex_unlock(&rx->pend_lock);
    ck_assert_msg(violations == 0,
                  "%ld requests reached the receiver before their batch was pending (I2): %s",
                  violations, first_violation);
    rx_lock(rx);
    ck_assert_msg(rx->mismatches == 0,
                  "%ld requests carried a body different from an earlier one under the same "
                  "Idempotency-Key",
                  rx->mismatches);
    struct batch **parts = calloc((size_t)o->nparts, sizeof(*parts));
    size_t *nb = calloc((size_t)o->nparts, sizeof(*nb));
    for (int p = 0; p < o->nparts; p++)
        parts[p] = calloc(rx->nreqs + 1, sizeof(struct batch));

    for (size_t i = 0; i < rx->nreqs; i++) {
        const struct rx_request *r = &rx->reqs[i];
        ck_assert_msg(r->key != NULL, "request %zu has no Idempotency-Key", i);
        ck_assert_msg(r->first && r->last && r->epoch,
                      "request %zu lacks X-Sidecar-First-Offset/-Last-Offset/-Epoch", i);
        ck_assert_str_eq(r->content_type,
                         o->json_array ? "application/json" : "application/x-ndjson");
        json_t *recs = parse_body(r, o->json_array, i);
        size_t n = json_array_size(recs);
        ck_assert_msg(n > 0, "request %zu: empty body", i);
        json_t *f = json_array_get(recs, 0), *l = json_array_get(recs, n - 1);
        int64_t first = json_integer_value(json_object_get(f, "offset"));
        int64_t last = json_integer_value(json_object_get(l, "offset"));
        int32_t part = (int32_t)json_integer_value(json_object_get(f, "partition"));
        char want[512];
        snprintf(want, sizeof(want), "%s/%s/%d/%" PRId64 "-%" PRId64, o->pipeline, o->topic,
                 (int)part, first, last);
        ck_assert_msg(strcmp(r->key, want) == 0, "request %zu: Idempotency-Key %s, body is %s", i,
                      r->key, want);
        ck_assert_int_eq(strtoll(r->first, NULL, 10), first);
        ck_assert_int_eq(strtoll(r->last, NULL, 10), last);
        ck_assert_msg(part >= 0 && part < o->nparts, "request %zu: partition %d", i, (int)part);
        if (!r->accepted_first) {
            json_decref(recs);
            continue;
        }
        parts[part][nb[part]++] = (struct batch){.first = first,
                                                 .last = last,
                                                 .redrive = r->redrive != NULL,
                                                 .records = recs,
                                                 .raw = r->body};
    }

    for (int p = 0; p < o->nparts; p++) {
        struct batch *bs = parts[p];
        /* First acceptance happens in offset order: batch n+1 is sent after n is acknowledged. */
        const struct batch *prev = NULL;
        for (size_t i = 0; i < nb[p]; i++) {
            if (bs[i].redrive)
                continue;
            ck_assert_msg(!prev || bs[i].first > prev->last,
                          "partition %d: batch [%" PRId64 "..%" PRId64 "] accepted after [%" PRId64
                          "..%" PRId64 "]",
                          p, bs[i].first, bs[i].last, prev->first, prev->last);
            prev = &bs[i];
        }
        qsort(bs, nb[p], sizeof(*bs), by_first);
        int64_t next = 0;
        for (size_t i = 0; i < nb[p]; i++) {
            size_t j;
            json_t *rec;
            json_array_foreach(bs[i].records, j, rec)
            {
                while (next < o->count && o->skip && o->skip(p, next, o->skip_arg))
                    next++;
                int64_t off = json_integer_value(json_object_get(rec, "offset"));
                ck_assert_msg(off == next,
                              "partition %d: accepted record at offset %" PRId64 " where %" PRId64
                              " was expected (a record lost, duplicated, out of order, or one "
                              "that should have been rejected)",
                              p, off, next);
                ck_assert_int_eq(json_integer_value(json_object_get(rec, "partition")), p);
                ck_assert_str_eq(json_string_value(json_object_get(rec, "topic")), o->topic);
                if (o->seq_values) {
                    char key[32], value[512], needle[600];
                    snprintf(key, sizeof(key), "k%" PRId64, off);
                    ck_assert_str_eq(json_string_value(json_object_get(rec, "key")), key);
                    /* Byte check: the value is embedded verbatim. */
                    snprintf(needle, sizeof(needle), "\"offset\":%" PRId64 ",", off);
                    const char *at = strstr(bs[i].raw, needle);
                    ck_assert_ptr_nonnull(at);
                    snprintf(needle, sizeof(needle), "\"value\":%s,\"headers\":",
                             hx_seq_value(o->topic, p, off, value, sizeof(value)));
                    const char *v = strstr(at, needle);
                    const char *eol = strpbrk(at, o->json_array ? "}]" : "\n");
                    ck_assert_msg(v && (!eol || v < eol || o->json_array),
                                  "partition %d offset %" PRId64 ": value differs from %s", p, off,
                                  value);
                }
                next++;
                total++;
            }
            json_decref(bs[i].records);
        }
        while (next < o->count && o->skip && o->skip(p, next, o->skip_arg))
            next++;
        ck_assert_msg(next == o->count,
                      "partition %d: accepted records end before offset %" PRId64
                      " (expected up to %" PRId64 ")",
                      p, next, o->count - 1);
        free(bs);
    }
    free(parts);
    free(nb);
    rx_unlock(rx);
    return total;
}
