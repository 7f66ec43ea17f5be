/*
 * registry.c - the Schema Registry stand-in (see registry.h).
 */
#include "registry.h"

#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <microhttpd.h>

#include "scx.h"

struct schema {
    uint32_t id;
    char *body; /* the answer to GET /schemas/ids/{id} */
    long requests;
};

struct reg {
    struct MHD_Daemon *daemon;
    int port;
    char url[64];
    char *user, *password;
    char *cert, *key; /* TLS only: MHD keeps pointers to them for the daemon's life */
    pthread_mutex_t lock;
    enum reg_mode mode;
    struct schema *schemas;
    size_t nschemas;
    struct schema unknown[64]; /* request counts of ids not registered (yet) */
    size_t nunknown;
    long unauthorized;
};

static struct schema *find(struct reg *r, uint32_t id, bool count_unknown)
{
    for (size_t i = 0; i < r->nschemas; i++)
        if (r->schemas[i].id == id)
            return &r->schemas[i];
    for (size_t i = 0; i < r->nunknown; i++)
        if (r->unknown[i].id == id)
            return &r->unknown[i];
    if (!count_unknown || r->nunknown == 64)
        return NULL;
    r->unknown[r->nunknown].id = id;
    return &r->unknown[r->nunknown++];
}

static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const char *body)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(resp, "Content-Type", "application/vnd.schemaregistry.v1+json");
    if (status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Basic realm=\"registry\"");
    enum MHD_Result ret = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **state)
{
    (void)version, (void)upload, (void)upload_size;
    struct reg *r = cls;
    if (!*state) { /* headers only: answer on the second call */
        *state = r;
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0)
        return answer(c, 405, "{\"error_code\":405,\"message\":\"method not allowed\"}");
    pthread_mutex_lock(&r->lock);
    enum reg_mode mode = r->mode;
    uint32_t id = 0;
    bool ids = sscanf(url, "/schemas/ids/%" SCNu32, &id) == 1;
    struct schema *s = ids ? find(r, id, true) : NULL;
    if (s)
        s->requests++;
    bool authorized = true;
    if (r->user) {
        char *pass = NULL;
        char *user = MHD_basic_auth_get_username_password(c, &pass);
        authorized = user && pass && strcmp(user, r->user) == 0 && strcmp(pass, r->password) == 0;
        MHD_free(user);
        MHD_free(pass);
        if (!authorized)
            r->unauthorized++;
    }
    char *body = s && s->body ? strdup(s->body) : NULL;
    pthread_mutex_unlock(&r->lock);

    enum MHD_Result ret;
    if (mode == REG_DOWN)
        ret = answer(c, 503, "{\"error_code\":50301,\"message\":\"service unavailable\"}");
    else if (mode == REG_GARBAGE)
        ret = answer(c, 200, "<html><body>It works!</body></html>");
    else if (!authorized)
        ret = answer(c, 401, "{\"error_code\":401,\"message\":\"Unauthorized\"}");
    else if (strcmp(url, "/subjects") == 0)
        ret = answer(c, 200, "[\"orders-value\"]");
    else if (body)
        ret = answer(c, 200, body);
    else if (ids)
        ret = answer(c, 404, "{\"error_code\":40403,\"message\":\"Schema not found\"}");
    else
        ret = answer(c, 404, "{\"error_code\":404,\"message\":\"HTTP 404 Not Found\"}");
    free(body);
    return ret;
}

struct reg *reg_start_tls(const char *user, const char *password, const char *cert_pem,
                          const char *key_pem)
{
    struct reg *r = calloc(1, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
    r->user = user ? strdup(user) : NULL;
    r->password = password ? strdup(password) : NULL;
    bool tls = cert_pem != NULL;
    if (tls) {
        r->cert = strdup(cert_pem);
        r->key = strdup(key_pem);
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD;
    for (int tries = 0; tries < 20 && !r->daemon; tries++) {
        r->port = scx_free_port();
        if (tls)
            r->daemon = MHD_start_daemon(
                flags | MHD_USE_TLS, (uint16_t)r->port, NULL, NULL, on_request, r,
                MHD_OPTION_HTTPS_MEM_CERT, r->cert, MHD_OPTION_HTTPS_MEM_KEY, r->key,
                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60, MHD_OPTION_END);
        else
            r->daemon =
                MHD_start_daemon(flags, (uint16_t)r->port, NULL, NULL, on_request, r,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60, MHD_OPTION_END);
    }
    ck_assert_msg(r->daemon != NULL, "could not start the Schema Registry stand-in%s",
                  tls ? " with TLS" : "");
    snprintf(r->url, sizeof(r->url), "%s://127.0.0.1:%d", tls ? "https" : "http", r->port);
    return r;
}

struct reg *reg_start(const char *user, const char *password)
{
    return reg_start_tls(user, password, NULL, NULL);
}

const char *reg_url(const struct reg *r)
{
    return r->url;
}

void reg_add(struct reg *r, uint32_t id, const char *schema, const char *type)
{
    json_t *o = json_pack("{s:i,s:s}", "id", (json_int_t)id, "schema", schema);
    if (type)
        json_object_set_new(o, "schemaType", json_string(type));
    char *body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    pthread_mutex_lock(&r->lock);
    r->schemas = realloc(r->schemas, (r->nschemas + 1) * sizeof(*r->schemas));
    struct schema *old = find(r, id, false);
    r->schemas[r->nschemas++] =
        (struct schema){.id = id, .body = body, .requests = old ? old->requests : 0};
    pthread_mutex_unlock(&r->lock);
}

void reg_set_mode(struct reg *r, enum reg_mode m)
{
    pthread_mutex_lock(&r->lock);
    r->mode = m;
    pthread_mutex_unlock(&r->lock);
}

long reg_requests(struct reg *r, uint32_t id)
{
    long n = 0;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->nschemas; i++)
        if (r->schemas[i].id == id)
            n = r->schemas[i].requests;
    for (size_t i = 0; i < r->nunknown; i++)
        if (r->unknown[i].id == id)
            n += r->unknown[i].requests; /* asked before it was registered */
    pthread_mutex_unlock(&r->lock);
    return n;
}

long reg_unauthorized(struct reg *r)
{
    pthread_mutex_lock(&r->lock);
    long n = r->unauthorized;
    pthread_mutex_unlock(&r->lock);
    return n;
}

void reg_stop(struct reg *r)
{
    if (!r)
        return;
    MHD_stop_daemon(r->daemon);
    for (size_t i = 0; i < r->nschemas; i++)
        free(r->schemas[i].body);
    free(r->schemas);
    free(r->user);
    free(r->password);
    free(r->cert);
    free(r->key);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* ---- orders encoded by python3-avro ------------------------------------------------------- */

static FILE *run_encoder(int64_t first, int64_t count)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/python3 %s/tests/harness/avro_encode.py orders %" PRId64 " %" PRId64,
             HX_SOURCE_DIR, first, count);
    FILE *f = popen(cmd, "r");
    ck_assert_msg(f != NULL, "cannot run %s", cmd);
    return f;
}

char *reg_order_schema(void)
{
    FILE *f = run_encoder(0, 0);
    char line[8192];
    ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
    ck_assert_int_eq(pclose(f), 0);
    line[strcspn(line, "\n")] = '\0';
    return strdup(line);
}

void reg_orders(int64_t first, int64_t count, uint32_t id, char ***values, size_t **lens)
{
    FILE *f = run_encoder(first, count);
    char line[8192];
    ck_assert_ptr_nonnull(fgets(line, sizeof(line), f)); /* the schema */
    *values = calloc((size_t)count, sizeof(**values));
    *lens = calloc((size_t)count, sizeof(**lens));
    for (int64_t i = 0; i < count; i++) {
        ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
        size_t n = strcspn(line, "\n") / 2;
        unsigned char *v = malloc(n + 5);
        v[0] = 0;
        v[1] = (unsigned char)(id >> 24);
        v[2] = (unsigned char)(id >> 16);
        v[3] = (unsigned char)(id >> 8);
        v[4] = (unsigned char)id;
        for (size_t j = 0; j < n; j++) {
            unsigned b;
            ck_assert_int_eq(sscanf(line + 2 * j, "%2x", &b), 1);
            v[5 + j] = (unsigned char)b;
        }
        (*values)[i] = (char *)v;
        (*lens)[i] = n + 5;
    }
    ck_assert_int_eq(pclose(f), 0);
}

const char *reg_order_json(int64_t i)
{
    static __thread char buf[1024];
    static const char *const status[] = {"NEW", "PAID", "SHIPPED"};
    time_t t = (time_t)(1700000000 + i);
    struct tm tm;
    gmtime_r(&t, &tm);
    char note[64], tags[256] = "";
    if (i % 2)
        snprintf(note, sizeof(note), "null");
    else
        snprintf(note, sizeof(note), "\"note %" PRId64 "\"", i);
    for (int j = 0; j < (int)(i % 3); j++)
        snprintf(tags + strlen(tags), sizeof(tags) - strlen(tags), "%s\"t%d\"", j ? "," : "", j);
    int64_t cents = i * 7 % 100000;
    snprintf(buf, sizeof(buf),
             "{\"order_id\":%" PRId64 ",\"customer\":\"customer-%" PRId64 "\",\"amount\":\"%" PRId64
             ".%02" PRId64 "\",\"status\":\"%s\",\"note\":%s,\"placed_at\":\"%04d-%02d-%02dT%02d:"
             "%02d:%02d.000Z\",\"tags\":[%s]}",
             i, i % 97, cents / 100, cents % 100, status[i % 3], note, tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, tags);
    return buf;
}
