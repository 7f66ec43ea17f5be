/*
 * sc_admin.c - the admin HTTP endpoint (see sc_admin.h).
 *
 * Routes are a table {method, path, auth, handler} (pgbouncer's admin.c
 * style); every error is a JSON object {"error": "..."} with a fitting
 * status code.
 */
#include "sc_admin.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <jansson.h>
#include <microhttpd.h>

#include "sc_config.h"
#include "sc_log.h"
#include "sc_metrics.h"
#include "sc_util.h"

struct sc_admin {
    struct MHD_Daemon *d;
    const struct sc_config *cfg;
    struct sc_admin_hooks hooks;
    int port;
};

struct request {
    struct sc_admin *a;
    struct MHD_Connection *c;
    const char *url;
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

static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s)
        return MHD_NO;
    size_t len = strlen(s);
    s = sc_xrealloc(s, len + 2);
    s[len++] = '\n';
    enum MHD_Result ret = reply(c, status, "application/json", s, len);
    free(s);
    return ret;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *msg)
{
    return reply_json(c, status, json_pack("{s:s}", "error", msg));
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
    return reply_json(r->c, MHD_HTTP_SERVICE_UNAVAILABLE,
                      json_pack("{s:s,s:s}", "status", "not ready", "reason", why));
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

struct route {
    const char *path;
    bool auth;
    handler_fn fn;
};

static const struct route routes[] = {
    {"/healthz", false, h_healthz},
    {"/readyz", true, h_readyz},
    {"/metrics", true, h_metrics},
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
    struct request r = {a, c, url};
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
    MHD_stop_daemon(a->d);
    free(a);
}
