/*
 * sc_registry.c - Schema Registry client and schema cache (see sc_registry.h).
 *
 * Requests: GET <url>/schemas/ids/<id>, each URL of the list in turn
 * (starting with the one that answered last) until one gives an answer
 * that is not a transient failure.  The answer is
 * {"schema": "<schema text>", "schemaType": "AVRO"|"JSON"|"PROTOBUF",
 *  "references": [...]} (schemaType absent = AVRO).
 */
#include "record/sc_registry.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "base/sc_log.h"
#include "base/sc_metrics.h"
#include "config/sc_conf_check.h"

#define MAX_RESPONSE     (8 * 1024 * 1024) /* a schema larger than this is refused */
#define MAX_ENTRIES      65536             /* ids remembered (failed ones are dropped first) */
#define RETRY_AFTER_MS   1000              /* a failed or 404 answer is reused this long */
#define WAIT_IN_FLIGHT_S 2                 /* one wait for another thread's request, in s */

enum entry_state {
    E_NEW,      /* nothing asked yet, or the last answer expired */
    E_FETCHING, /* a thread is asking */
    E_READY,    /* schema cached for good */
    E_UNUSABLE, /* a schema that cannot decode records: kept for good */
    E_MISSING,  /* 404 until retry_at_ms */
    E_FAILED,   /* no usable answer until retry_at_ms */
};

struct entry {
    uint32_t id;
    enum entry_state state;
    struct sc_avro_schema *schema;
    char *message;            /* E_UNUSABLE, E_MISSING, E_FAILED: what happened */
    int64_t retry_at_ms;      /* E_MISSING, E_FAILED */
    int64_t first_missing_ms; /* first 404 of the current run of them; 0 = none */
    struct entry *next;
};

struct sc_registry {
    const struct sc_registry_conf *conf;
    int refs; /* under all_lock */
    struct sc_registry *next;
    char **urls; /* base URLs without a trailing '/' */
    size_t nurls;
    char *display; /* for messages: passwords masked */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct entry *entries;
    size_t nentries;
    atomic_size_t last_good_url; /* a hint: where the next request starts */
};

static pthread_mutex_t all_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sc_registry *all;
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_rc;

static void curl_init(void)
{
    curl_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- configuration -------------------------------------------------------------------------- */

static void split_urls(const char *list, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    for (const char *p = list;;) {
        size_t len = strcspn(p, ",");
        while (len > 0 && p[len - 1] == '/')
            len--;
        *out = sc_xrealloc(*out, (*n + 1) * sizeof(**out));
        char *u = sc_xmalloc(len + 1);
        memcpy(u, p, len);
        u[len] = '\0';
        (*out)[(*n)++] = u;
        p += strcspn(p, ",");
        if (!*p)
            break;
        p++;
    }
}

char *sc_registry_display_url(const struct sc_registry_conf *conf)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    char **urls;
    size_t n;
    split_urls(conf->url ? conf->url : "", &urls, &n);
    for (size_t i = 0; i < n; i++) {
        char *m = sc_conf_mask_url(urls[i]);
        if ((i > 0 && sc_buf_putc(&b, ',') < 0) || sc_buf_append(&b, m, strlen(m)) < 0)
            abort(); /* no maximum */
        free(m);
        free(urls[i]);
    }
    free(urls);
    if (sc_buf_putc(&b, '\0') < 0)
        abort();
    return b.data;
}

/* ---- one request ---------------------------------------------------------------------------- */

struct body {
    struct sc_buf buf;
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct body *b = arg;
    if (sc_buf_append(&b->buf, p, size * n) < 0)
        return 0; /* too large: curl fails the transfer */
    return size * n;
}

/*
 * GET base+path with the configured auth and TLS.  Returns the HTTP status
 * (body in *body, NUL-terminated), or 0 with err when there was no answer.
 */
static long http_get(const struct sc_registry_conf *conf, const char *base, const char *path,
                     struct sc_buf *body, char *err, size_t errsize)
{
    long status = 0;
    char curl_err[CURL_ERROR_SIZE] = "";
    struct curl_slist *h = NULL;
    struct body b = {.buf = *body};
    char *url = sc_xasprintf("%s%s", base, path);
    CURL *e = curl_easy_init();
    if (!e) {
        snprintf(err, errsize, "cannot create an HTTP request");
        goto out;
    }
    sc_buf_reset(&b.buf);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)conf->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)conf->timeout_ms);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "kafka-sidecar/" SIDECAR_VERSION);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    h = curl_slist_append(h, "Accept: application/vnd.schemaregistry.v1+json, application/json");
    if (conf->token) {
        char *auth = sc_xasprintf("Authorization: Bearer %s", conf->token);
        h = curl_slist_append(h, auth);
        memset(auth, 0, strlen(auth));
        free(auth);
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    if (conf->username) {
        curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(e, CURLOPT_USERNAME, conf->username);
        curl_easy_setopt(e, CURLOPT_PASSWORD, conf->password ? conf->password : "");
    }
    if (conf->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, conf->ca_file);
    if (conf->insecure_skip_verify) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    CURLcode rc = curl_easy_perform(e);
    if (rc != CURLE_OK) {
        /* curl's messages name the host, never the credentials.  A certificate that does not
         * verify (untrusted CA, or not for the URL's host) says what it was checked against. */
        const char *hint = "";
        if (rc == CURLE_PEER_FAILED_VERIFICATION)
            hint = conf->ca_file ? " (checked against schema_registry.ca_file)"
                                 : " (checked against the system CA store: set "
                                   "schema_registry.ca_file to trust a private CA)";
        else if (rc == CURLE_SSL_CACERT_BADFILE)
            hint = " (schema_registry.ca_file must be a PEM bundle of CA certificates)";
        snprintf(err, errsize, "%s%s", curl_err[0] ? curl_err : curl_easy_strerror(rc), hint);
        goto out;
    }
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    if (sc_buf_putc(&b.buf, '\0') < 0) {
        snprintf(err, errsize, "the answer is larger than %d MiB", MAX_RESPONSE >> 20);
        status = 0;
        goto out;
    }
    b.buf.len--;
out:
    *body = b.buf;
    curl_slist_free_all(h);
    if (e)
        curl_easy_cleanup(e);
    free(url);
    return status;
}

/* The registry's own message in an error body ({"error_code":..,"message":..}), shortened. */
static void body_message(const struct sc_buf *body, char *out, size_t size)
{
    json_t *j = json_loadb(body->data, body->len, 0, NULL);
    const char *m = json_string_value(json_object_get(j, "message"));
    snprintf(out, size, "%s", m ? m : "");
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
    json_decref(j);
}

enum answer {
    A_OK,
    A_MISSING,
    A_FAILED,
    A_UNUSABLE,
};

/* Interprets a 200 answer for id: compiles the schema into *out. */
static enum answer take_schema(uint32_t id, const struct sc_buf *body, struct sc_avro_schema **out,
                               char *err, size_t errsize)
{
    json_error_t je;
    enum answer a = A_FAILED;
    json_t *j = json_loadb(body->data, body->len, 0, &je);
    const json_t *schema = json_object_get(j, "schema");
    const char *type = json_string_value(json_object_get(j, "schemaType"));
    const json_t *refs = json_object_get(j, "references");
    char cerr[400];
    if (!json_is_object(j) || !json_is_string(schema)) {
        snprintf(err, errsize,
                 "the answer for schema id %" PRIu32 " is not a schema (no \"schema\" string "
                 "in a JSON object): is the URL the Schema Registry's?",
                 id);
        goto out;
    }
    a = A_UNUSABLE;
    if (type && strcmp(type, "AVRO") != 0) {
        snprintf(err, errsize, "schema id %" PRIu32 " is a %s schema, not Avro%s", id, type,
                 strcmp(type, "JSON") == 0 ? " (value_format / key_format json_schema reads "
                                             "JSON Schema records)"
                                           : " (Protobuf is not supported)");
        goto out;
    }
    if (json_array_size(refs) > 0) {
        snprintf(err, errsize,
                 "schema id %" PRIu32 " uses schema references, which are not supported yet", id);
        goto out;
    }
    *out = sc_avro_schema_new(json_string_value(schema), json_string_length(schema), cerr,
                              sizeof(cerr));
    if (!*out) {
        snprintf(err, errsize, "schema id %" PRIu32 ": %s", id, cerr);
        goto out;
    }
    a = A_OK;
out:
    json_decref(j);
    return a;
}

/* Asks every URL (the last good one first) for id's schema. */
static enum answer fetch(struct sc_registry *r, uint32_t id, struct sc_avro_schema **out, char *err,
                         size_t errsize)
{
    char path[64];
    snprintf(path, sizeof(path), "/schemas/ids/%" PRIu32, id);
    struct sc_buf body;
    sc_buf_init(&body, MAX_RESPONSE);
    enum answer a = A_FAILED;
    size_t first = atomic_load(&r->last_good_url);
    for (size_t k = 0; k < r->nurls; k++) {
        size_t i = (first + k) % r->nurls;
        char e[512] = "", msg[256];
        long status = http_get(r->conf, r->urls[i], path, &body, e, sizeof(e));
        char *shown = sc_conf_mask_url(r->urls[i]);
        if (status == 200) {
            a = take_schema(id, &body, out, err, errsize);
        } else if (status == 404) {
            body_message(&body, msg, sizeof(msg));
            snprintf(err, errsize, "schema id %" PRIu32 " is not in the registry at %s%s%s%s", id,
                     shown, msg[0] ? " (\"" : "", msg, msg[0] ? "\")" : "");
            a = A_MISSING;
        } else if (status == 0) {
            snprintf(err, errsize, "the schema registry at %s did not answer: %s", shown, e);
            a = A_FAILED;
        } else {
            body_message(&body, msg, sizeof(msg));
            snprintf(err, errsize, "the schema registry at %s answered HTTP %ld%s%s%s%s", shown,
                     status,
                     status == 401 || status == 403 ? " (check schema_registry's credentials)" : "",
                     msg[0] ? " (\"" : "", msg, msg[0] ? "\")" : "");
            a = A_FAILED;
        }
        free(shown);
        if (a != A_FAILED) {
            atomic_store(&r->last_good_url, i);
            break;
        }
    }
    sc_buf_free(&body);
    return a;
}

/* ---- the cache ------------------------------------------------------------------------------ */

static void entry_free(struct entry *e)
{
    sc_avro_schema_free(e->schema);
    free(e->message);
    free(e);
}

/* Drops remembered failures when the cache is full (under r->lock). */
static void make_room(struct sc_registry *r)
{
    if (r->nentries < MAX_ENTRIES)
        return;
    for (struct entry **pp = &r->entries; *pp;) {
        struct entry *e = *pp;
        if (e->state == E_MISSING || e->state == E_FAILED || e->state == E_NEW) {
            *pp = e->next;
            entry_free(e);
            r->nentries--;
        } else {
            pp = &e->next;
        }
    }
}

static struct entry *entry_of(struct sc_registry *r, uint32_t id)
{
    for (struct entry *e = r->entries; e; e = e->next)
        if (e->id == id)
            return e;
    make_room(r);
    if (r->nentries >= MAX_ENTRIES)
        return NULL;
    struct entry *e = sc_xcalloc(1, sizeof(*e));
    e->id = id;
    e->next = r->entries;
    r->entries = e;
    r->nentries++;
    return e;
}

enum sc_reg_status sc_registry_avro(struct sc_registry *r, uint32_t id,
                                    const struct sc_avro_schema **out, int64_t *missing_ms,
                                    char *err, size_t errsize)
{
    enum sc_reg_status st = SC_REG_UNAVAILABLE;
    *missing_ms = 0;
    pthread_mutex_lock(&r->lock);
    struct entry *e = entry_of(r, id);
    if (!e) {
        snprintf(err, errsize, "too many unknown schema ids at once (%d)", MAX_ENTRIES);
        goto out;
    }
    int64_t now = sc_mono_ms();
    while (e->state == E_FETCHING) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += WAIT_IN_FLIGHT_S;
        if (pthread_cond_timedwait(&r->cond, &r->lock, &ts) != 0 && e->state == E_FETCHING) {
            snprintf(err, errsize, "schema id %" PRIu32 " is still being fetched", id);
            goto out;
        }
        now = sc_mono_ms();
    }
    if ((e->state == E_MISSING || e->state == E_FAILED) && now < e->retry_at_ms)
        goto answer;
    if (e->state == E_NEW || e->state == E_MISSING || e->state == E_FAILED) {
        enum entry_state before = e->state;
        e->state = E_FETCHING;
        pthread_mutex_unlock(&r->lock);
        struct sc_avro_schema *s = NULL;
        char msg[512] = "";
        enum answer a = fetch(r, id, &s, msg, sizeof(msg));
        pthread_mutex_lock(&r->lock);
        now = sc_mono_ms();
        free(e->message);
        e->message = a == A_OK ? NULL : sc_xstrdup(msg);
        switch (a) {
        case A_OK:
            e->state = E_READY;
            e->schema = s;
            e->first_missing_ms = 0;
            sc_metrics_registry_fetch(SC_FETCH_OK);
            sc_metrics_registry_cached(1);
            sc_info(NULL, "schema id %" PRIu32 " fetched from the schema registry", id);
            break;
        case A_UNUSABLE:
            e->state = E_UNUSABLE;
            sc_metrics_registry_fetch(SC_FETCH_UNUSABLE);
            sc_metrics_registry_cached(1);
            sc_warn(NULL, "%s", msg);
            break;
        case A_MISSING:
            e->state = E_MISSING;
            if (!e->first_missing_ms)
                e->first_missing_ms = now;
            e->retry_at_ms = now + RETRY_AFTER_MS;
            sc_metrics_registry_fetch(SC_FETCH_NOT_FOUND);
            if (before != E_MISSING)
                sc_warn(NULL, "%s; asking again", msg);
            break;
        case A_FAILED:
            e->state = E_FAILED;
            e->retry_at_ms = now + RETRY_AFTER_MS;
            sc_metrics_registry_fetch(SC_FETCH_ERROR);
            if (before != E_FAILED)
                sc_warn(NULL, "%s; asking again", msg);
            break;
        }
        pthread_cond_broadcast(&r->cond);
    }
answer:
    switch (e->state) {
    case E_READY:
        *out = e->schema;
        st = SC_REG_OK;
        break;
    case E_UNUSABLE:
        st = SC_REG_UNUSABLE;
        break;
    case E_MISSING:
        st = SC_REG_NOT_FOUND;
        *missing_ms = now - e->first_missing_ms;
        break;
    default:
        st = SC_REG_UNAVAILABLE;
        break;
    }
    if (st != SC_REG_OK)
        snprintf(err, errsize, "%s", e->message ? e->message : "no answer yet");
out:
    pthread_mutex_unlock(&r->lock);
    return st;
}

/* ---- sharing ----------------------------------------------------------------------------------
 */

struct sc_registry *sc_registry_acquire(const struct sc_registry_conf *conf, char *err,
                                        size_t errsize)
{
    pthread_once(&curl_once, curl_init);
    if (curl_rc != CURLE_OK) {
        snprintf(err, errsize, "cannot initialise libcurl: %s", curl_easy_strerror(curl_rc));
        return NULL;
    }
    if (!conf->url) {
        snprintf(err, errsize, "no schema_registry.url is configured");
        return NULL;
    }
    pthread_mutex_lock(&all_lock);
    struct sc_registry *r;
    for (r = all; r; r = r->next)
        if (r->conf == conf)
            break;
    if (!r) {
        r = sc_xcalloc(1, sizeof(*r));
        r->conf = conf;
        split_urls(conf->url, &r->urls, &r->nurls);
        r->display = sc_registry_display_url(conf);
        pthread_mutex_init(&r->lock, NULL);
        pthread_cond_init(&r->cond, NULL);
        r->next = all;
        all = r;
        if (conf->insecure_skip_verify)
            sc_warn(NULL,
                    "schema_registry.insecure_skip_verify is set: the TLS certificate of %s is not "
                    "verified, anyone on the path can hand out schemas (use ca_file instead)",
                    r->display);
    }
    r->refs++;
    pthread_mutex_unlock(&all_lock);
    return r;
}

void sc_registry_release(struct sc_registry *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&all_lock);
    bool last = --r->refs == 0;
    if (last)
        for (struct sc_registry **pp = &all; *pp; pp = &(*pp)->next)
            if (*pp == r) {
                *pp = r->next;
                break;
            }
    pthread_mutex_unlock(&all_lock);
    if (!last)
        return;
    while (r->entries) {
        struct entry *e = r->entries;
        r->entries = e->next;
        if (e->state == E_READY || e->state == E_UNUSABLE)
            sc_metrics_registry_cached(-1);
        entry_free(e);
    }
    for (size_t i = 0; i < r->nurls; i++)
        free(r->urls[i]);
    free(r->urls);
    free(r->display);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    free(r);
}

int sc_registry_ping(const struct sc_registry_conf *conf, char *err, size_t errsize)
{
    pthread_once(&curl_once, curl_init);
    char **urls;
    size_t n;
    int rc = -1;
    split_urls(conf->url ? conf->url : "", &urls, &n);
    struct sc_buf body;
    sc_buf_init(&body, MAX_RESPONSE);
    struct sc_buf msgs; /* one reason per URL; a full buffer cuts the list short */
    sc_buf_init(&msgs, 4096);
    int full = 0;
    for (size_t i = 0; i < n; i++) {
        char e[512] = "";
        long status = http_get(conf, urls[i], "/subjects", &body, e, sizeof(e));
        char *shown = sc_conf_mask_url(urls[i]);
        json_t *j = status == 200 ? json_loadb(body.data, body.len, 0, NULL) : NULL;
        bool list = json_is_array(j);
        json_decref(j);
        if (list) {
            rc = 0;
        } else if (status == 200) {
            full |= sc_buf_printf(&msgs,
                                  "%s%s: answered 200 without a list of subjects (not a "
                                  "Schema Registry?)",
                                  msgs.len ? "; " : "", shown);
        } else if (status) {
            full |= sc_buf_printf(&msgs, "%s%s: HTTP %ld%s", msgs.len ? "; " : "", shown, status,
                                  status == 401 || status == 403 ? " (credentials refused)" : "");
        } else {
            full |= sc_buf_printf(&msgs, "%s%s: %s", msgs.len ? "; " : "", shown, e);
        }
        free(shown);
        if (rc == 0 || full)
            break;
    }
    if (rc != 0)
        snprintf(err, errsize, "schema registry not reachable: %.*s", (int)msgs.len,
                 msgs.data ? msgs.data : "");
    sc_buf_free(&msgs);
    sc_buf_free(&body);
    for (size_t i = 0; i < n; i++)
        free(urls[i]);
    free(urls);
    return rc;
}
