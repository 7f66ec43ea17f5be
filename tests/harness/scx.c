/*
 * scx.c - sidecar test fixtures (see scx.h).
 */
#include "scx.h"

#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

void scx_env_start(struct scx_env *e, int brokers, const char *const *topics, size_t ntopics)
{
    scx_env_start_pg(e, brokers, topics, ntopics, NULL);
}

void scx_env_start_pg(struct scx_env *e, int brokers, const char *const *topics, size_t ntopics,
                      const char *pg_settings)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "%s", hx_tmpdir());
    snprintf(e->out_dir, sizeof(e->out_dir), "%s/out", e->dir);
    hx_pg_start_with(&e->pg, pg_settings);
    hx_pg_create_db(&e->pg, "sidecar_test", e->dsn, sizeof(e->dsn));
    e->conn = hx_pg_connect(e->dsn);
    hx_mock_start(&e->mock, brokers, topics, ntopics);
}

void scx_env_stop(struct scx_env *e)
{
    if (e->conn)
        PQfinish(e->conn);
    e->conn = NULL;
    hx_mock_stop(&e->mock);
    hx_pg_stop(&e->pg);
}

const char *scx_config(const struct scx_env *e, const char *instance, const struct scx_opts *o)
{
    static char path[700];
    char sink[1024], admin[64];
    if (o->sink)
        snprintf(sink, sizeof(sink), "%s", o->sink);
    else
        snprintf(sink, sizeof(sink),
                 "{\"type\":\"file\",\"path\":\"%s/{topic}/{partition}.jsonl\"}", e->out_dir);
    if (o->admin_port)
        snprintf(admin, sizeof(admin), "127.0.0.1:%d", o->admin_port);
    else
        admin[0] = '\0';
    char max_bytes[48] = "";
    if (o->max_bytes)
        snprintf(max_bytes, sizeof(max_bytes), ", \"max_bytes\": %d", o->max_bytes);
    snprintf(path, sizeof(path), "%s/%s.json", e->dir, instance);
    hx_write_file(
        path,
        "{\n"
        "  \"instance_id\": \"%s\",\n"
        "  \"postgres\": {\"dsn\": \"%s\"},\n"
        "  \"kafka\": {\"bootstrap.servers\": \"%s\",\n"
        "            \"properties\": {\"session.timeout.ms\": \"6000\",\n"
        "                           \"heartbeat.interval.ms\": \"500\",\n"
        "                           \"topic.metadata.refresh.interval.ms\": \"2000\"%s%s}},\n"
        "  \"admin\": {\"listen\": \"%s\"},\n"
        "  \"log\": {\"level\": \"%s\", \"format\": \"text\"},\n"
        "  \"shutdown_timeout_ms\": %d,\n"
        "%s%s"
        "  \"pipelines\": [{\n"
        "    \"name\": \"%s\",\n"
        "    \"topics\": %s,\n"
        "    \"start_from\": \"%s\",\n"
        "    \"assignment\": \"%s\",\n"
        "    \"batch\": {\"max_records\": %d, \"max_wait_ms\": %d%s},\n"
        "    \"lease\": {\"ttl_ms\": %d, \"renew_ms\": %d},\n"
        "    \"workers\": %d,\n"
        "%s%s"
        "    \"sink\": %s\n"
        "  }]\n"
        "}\n",
        instance, e->dsn, e->mock.bootstrap, o->kafka_props ? ",\n" : "",
        o->kafka_props ? o->kafka_props : "", admin,
        getenv("SCX_LOG_LEVEL") ? getenv("SCX_LOG_LEVEL") : "info",
        o->shutdown_timeout_ms ? o->shutdown_timeout_ms : 8000, o->extra_top ? o->extra_top : "",
        o->extra_top ? ",\n" : "", o->pipeline ? o->pipeline : "p1",
        o->topics ? o->topics : "[\"orders\"]", o->start_from ? o->start_from : "earliest",
        o->assignment ? o->assignment : "kafka-group", o->max_records ? o->max_records : 100,
        o->max_wait_ms ? o->max_wait_ms : 20, max_bytes, o->ttl_ms ? o->ttl_ms : 3000,
        o->renew_ms ? o->renew_ms : 1000, o->workers ? o->workers : 2,
        o->extra_pipeline ? o->extra_pipeline : "", o->extra_pipeline ? ",\n" : "", sink);
    return path;
}

void scx_migrate(const char *cfg)
{
    const char *argv[] = {hx_sidecar_bin(), "migrate", "-c", cfg, NULL};
    char *out = NULL;
    int rc = hx_run(argv, NULL, 60000, &out);
    ck_assert_msg(rc == 0, "sidecar migrate failed (%d): %s", rc, out ? out : "");
    free(out);
}

pid_t scx_start(const struct scx_env *e, const char *cfg, const char *name, const char *failpoints)
{
    char log[700], fp[512];
    snprintf(log, sizeof(log), "%s/%s.log", e->dir, name);
    const char *argv[] = {hx_sidecar_bin(), "run", "-c", cfg, NULL};
    const char *env[] = {fp, NULL};
    snprintf(fp, sizeof(fp), "SIDECAR_FAILPOINTS=%s", failpoints ? failpoints : "");
    return hx_spawn(argv, env, log);
}

void scx_stop(pid_t pid, int timeout_ms)
{
    kill(pid, SIGTERM);
    int rc = hx_wait(pid, timeout_ms);
    ck_assert_msg(rc == 0, "sidecar %d did not exit cleanly on SIGTERM (status %d)", (int)pid, rc);
}

bool scx_wait_committed(PGconn *conn, const char *pipeline, const char *topic, int nparts,
                        int64_t expected, int timeout_ms)
{
    int64_t end = hx_now_ms() + timeout_ms;
    char exp[32], np[32];
    snprintf(exp, sizeof(exp), "%" PRId64, expected);
    snprintf(np, sizeof(np), "%d", nparts);
    const char *params[] = {pipeline, topic, exp, np};
    do {
        long long n = hx_pg_int(conn,
                                "SELECT count(*) FROM sidecar.checkpoints WHERE pipeline = $1 AND "
                                "topic = $2 AND committed_offset = $3::bigint AND "
                                "pending_first_offset IS NULL AND partition < $4::int",
                                4, params);
        if (n == nparts)
            return true;
        usleep(200000);
    } while (hx_now_ms() < end);
    return false;
}

void scx_verify_files(const struct scx_env *e, const char *pipeline, const char *topic, int nparts,
                      int64_t count)
{
    for (int p = 0; p < nparts; p++) {
        char path[800];
        snprintf(path, sizeof(path), "%s/%s/%d.jsonl", e->out_dir, topic, p);
        size_t len = 0;
        char *data = hx_read_file(path, &len);
        ck_assert_msg(data != NULL, "missing output file %s", path);
        char *seen = calloc((size_t)count, 1);
        int64_t line_no = 0;
        char *save = NULL;
        for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            json_error_t err;
            json_t *j = json_loads(line, 0, &err);
            ck_assert_msg(j != NULL, "%s line %" PRId64 ": invalid JSON (%s): %.200s", path,
                          line_no + 1, err.text, line);
            int64_t off = json_integer_value(json_object_get(j, "offset"));
            ck_assert_msg(off == line_no,
                          "%s line %" PRId64 ": offset %" PRId64 ", expected %" PRId64
                          " (a record lost, duplicated or out of order)",
                          path, line_no + 1, off, line_no);
            ck_assert_int_eq(json_integer_value(json_object_get(j, "partition")), p);
            ck_assert_str_eq(json_string_value(json_object_get(j, "topic")), topic);
            json_t *v = json_object_get(j, "value");
            int64_t seq = json_integer_value(json_object_get(v, "seq"));
            ck_assert_msg(seq >= 0 && seq < count && !seen[seq],
                          "%s line %" PRId64 ": seq %" PRId64 " unexpected or repeated", path,
                          line_no + 1, seq);
            seen[seq] = 1;
            char want[512];
            json_t *expv = json_loads(hx_seq_value(topic, p, seq, want, sizeof(want)), 0, &err);
            ck_assert_msg(json_equal(v, expv), "%s line %" PRId64 ": value differs", path,
                          line_no + 1);
            char key[32];
            snprintf(key, sizeof(key), "k%" PRId64, seq);
            ck_assert_str_eq(json_string_value(json_object_get(j, "key")), key);
            json_decref(expv);
            json_decref(j);
            line_no++;
        }
        ck_assert_msg(line_no == count, "%s: %" PRId64 " records, expected %" PRId64, path, line_no,
                      count);
        free(seen);
        free(data);

        /* Readers trust bytes up to committed_write_offset: it must be the whole file. */
        char ps[16];
        snprintf(ps, sizeof(ps), "%d", p);
        const char *params[] = {pipeline, topic, ps};
        PGconn *conn = hx_pg_connect(e->dsn);
        long long cwo = hx_pg_int(conn,
                                  "SELECT committed_write_offset FROM sidecar.checkpoints "
                                  "WHERE pipeline = $1 AND topic = $2 AND partition = $3::int",
                                  3, params);
        PQfinish(conn);
        ck_assert_msg((long long)len == cwo, "%s is %zu bytes but committed_write_offset is %lld",
                      path, len, cwo);
    }
}

int scx_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    socklen_t l = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct hx_body {
        char *data;
        size_t len;
    } *b = arg;
    b->data = realloc(b->data, b->len + size * n + 1);
    memcpy(b->data + b->len, p, size * n);
    b->len += size * n;
    b->data[b->len] = '\0';
    return size * n;
}

char *scx_http_get(int port, const char *path, const char *token, long *status)
{
    struct {
        char *data;
        size_t len;
    } body = {calloc(1, 1), 0};
    CURL *c = curl_easy_init();
    char url[512], auth[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    struct curl_slist *h = NULL;
    if (token) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    }
    *status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return body.data;
}

double scx_metric(const char *text, const char *name, const char *labels)
{
    double sum = 0;
    size_t nl = strlen(name);
    for (const char *line = text; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t len = eol ? (size_t)(eol - line) : strlen(line);
        if (len > nl && strncmp(line, name, nl) == 0 && (line[nl] == '{' || line[nl] == ' ')) {
            char buf[2048];
            snprintf(buf, sizeof(buf), "%.*s", (int)len, line);
            bool match = true;
            if (labels && *labels) {
                char want[512];
                snprintf(want, sizeof(want), "%s", labels);
                char *save = NULL;
                for (char *kv = strtok_r(want, ",", &save); kv; kv = strtok_r(NULL, ",", &save))
                    if (!strstr(buf, kv))
                        match = false;
            }
            const char *sp = strrchr(buf, ' ');
            if (match && sp)
                sum += strtod(sp + 1, NULL);
        }
        line = eol ? eol + 1 : NULL;
    }
    return sum;
}

const char *scx_log_tail(const char *path, size_t bytes)
{
    static char buf[8192];
    if (bytes >= sizeof(buf))
        bytes = sizeof(buf) - 1;
    size_t len = 0;
    char *d = hx_read_file(path, &len);
    if (!d)
        return "(no log)";
    size_t from = len > bytes ? len - bytes : 0;
    snprintf(buf, sizeof(buf), "%s", d + from);
    free(d);
    return buf;
}

int scx_log_count(const char *path, const char *needle)
{
    char *d = hx_read_file(path, NULL);
    int n = 0;
    size_t len = strlen(needle);
    for (const char *c = d; c && len > 0 && (c = strstr(c, needle)); c += len)
        n++;
    free(d);
    return n;
}

bool scx_wait_log(const char *path, const char *needle, int count, int timeout_ms)
{
    int64_t end = hx_now_ms() + timeout_ms;
    do {
        if (scx_log_count(path, needle) >= count)
            return true;
        usleep(100000);
    } while (hx_now_ms() < end);
    return false;
}

bool scx_pid_stopped(pid_t pid)
{
    char path[64], line[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r"); /* procfs files have no size: read, don't stat */
    if (!f)
        return false;
    bool ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    const char *rp = ok ? strrchr(line, ')') : NULL;
    return rp && (rp[2] == 'T' || rp[2] == 't');
}

long long scx_events(PGconn *conn, const char *kind, const char *owner)
{
    const char *params[] = {kind, owner};
    return hx_pg_int(conn,
                     "SELECT count(*) FROM sidecar.events WHERE kind = $1 AND "
                     "($2::text IS NULL OR owner = $2)",
                     2, params);
}

void scx_create_audited_events(PGconn *conn)
{
    hx_pg_exec(conn, "CREATE SCHEMA app");
    hx_pg_exec(conn, "CREATE TABLE app.events (topic text NOT NULL, partition int NOT NULL,"
                     " \"offset\" bigint NOT NULL, key text, value jsonb, headers jsonb,"
                     " ts timestamptz, PRIMARY KEY (topic, partition, \"offset\"))");
    hx_pg_exec(conn, "CREATE TABLE app.audit (partition int, \"offset\" bigint)");
    hx_pg_exec(conn, "CREATE FUNCTION app.audit() RETURNS trigger LANGUAGE plpgsql AS $$"
                     " BEGIN INSERT INTO app.audit VALUES (NEW.partition, NEW.\"offset\");"
                     " RETURN NEW; END $$");
    hx_pg_exec(conn, "CREATE TRIGGER audit BEFORE INSERT ON app.events FOR EACH ROW"
                     " EXECUTE FUNCTION app.audit()");
}

double scx_metric_at(int port, const char *name, const char *labels)
{
    long status;
    char *m = scx_http_get(port, "/metrics", NULL, &status);
    double v = status == 200 && m ? scx_metric(m, name, labels) : -1;
    free(m);
    return v;
}

void scx_self_signed(const struct scx_env *e, const char *name, char cert[800], char key[800])
{
    snprintf(cert, 800, "%s/%s-cert.pem", e->dir, name);
    snprintf(key, 800, "%s/%s-key.pem", e->dir, name);
    const char *gen[] = {"openssl",  "req",
                         "-x509",    "-newkey",
                         "rsa:2048", "-nodes",
                         "-days",    "2",
                         "-subj",    "/CN=127.0.0.1",
                         "-addext",  "subjectAltName=IP:127.0.0.1,DNS:localhost",
                         "-keyout",  key,
                         "-out",     cert,
                         NULL};
    char *out = NULL;
    ck_assert_msg(hx_run(gen, NULL, 60000, &out) == 0, "openssl: %s", out);
    free(out);
}
