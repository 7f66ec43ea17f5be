/*
 * check_registry.c - value_format avro / json_schema end to end: records
 * encoded by python3-avro (tests/harness/avro_encode.py) in the Confluent
 * wire format, a Schema Registry stand-in with basic authentication
 * (tests/harness/registry.c), and the real `sidecar run`.
 *
 *   - test_avro_file_sink: every order lands in the file sink as the JSON
 *     of docs/schema-registry.md; poison records among them (no framing,
 *     a truncated datum, a Protobuf schema id) are dead letters with their
 *     reason while the rest of the batch is delivered; one registry request
 *     per schema id; the password never shows (check-config, logs);
 *     check-config --online sees the registry, and a wrong password.
 *   - test_registry_faults: the registry down (503), then answering
 *     garbage, then back; a schema id registered late: nothing is lost,
 *     skipped or dead-lettered meanwhile, and everything arrives once.
 *   - test_unknown_id_stops_the_partition: an id that never appears stops
 *     its partition in the error state after unknown_id_grace (the first
 *     of the two registry URLs refuses connections: the second answers).
 *   - test_postgres_paths: the postgres sink's "$.path" columns read the
 *     decoded value; json_schema values and avro keys too.
 *   - test_registry_tls_ca_file: the registry over https with a self-signed
 *     certificate.  Without ca_file: check-config --online fails naming the
 *     certificate problem, and `run` logs it, delivers and dead-letters
 *     nothing and keeps both partitions backing off (transient, never the
 *     error state).  Restarted with ca_file: check-config passes (also via
 *     localhost; not via 127.0.0.2, which the certificate does not name)
 *     and every order arrives once, decoded, with a single fetch.  Then with
 *     insecure_skip_verify instead: delivered, with one warning.
 */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "registry.h"
#include "scx.h"

#define SR_USER "sr-user"
#define SR_PASS "s3cret-Pa55"

/* The top-level schema_registry member for scx_opts.extra_top (static buffer). */
static const char *registry_block(const struct scx_env *e, const struct reg *r, const char *pass,
                                  const char *more)
{
    static char buf[1024];
    char path[700];
    snprintf(path, sizeof(path), "%s/sr_password", e->dir);
    hx_write_file(path, "%s\n", pass);
    int n = snprintf(buf, sizeof(buf),
                     "  \"schema_registry\": {\"url\": \"%s\", \"username\": \"%s\", "
                     "\"password\": \"${file:%s}\", \"timeout_ms\": 2000%s%s}",
                     reg_url(r), SR_USER, path, more ? ", " : "", more ? more : "");
    ck_assert_msg(n > 0 && (size_t)n < sizeof(buf), "registry block truncated (%d bytes)", n);
    return buf;
}

/* Produces orders [first, first+count) of partition p, framed with id, keys "k<i>". */
static void produce_orders(const struct scx_env *e, const char *topic, int32_t p, int64_t first,
                           int64_t count, uint32_t id)
{
    char **values;
    size_t *lens;
    reg_orders(first, count, id, &values, &lens);
    struct hx_record *recs = calloc((size_t)count, sizeof(*recs));
    char(*keys)[32] = calloc((size_t)count, sizeof(*keys));
    for (int64_t i = 0; i < count; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%" PRId64, first + i);
        recs[i] = (struct hx_record){.topic = topic,
                                     .partition = p,
                                     .key = keys[i],
                                     .key_len = strlen(keys[i]),
                                     .value = values[i],
                                     .value_len = lens[i]};
    }
    hx_produce(e->mock.bootstrap, recs, (size_t)count);
    for (int64_t i = 0; i < count; i++)
        free(values[i]);
    free(values);
    free(lens);
    free(recs);
    free(keys);
}

static void produce_one(const struct scx_env *e, const char *topic, int32_t p, const void *value,
                        size_t len)
{
    struct hx_record r = {.topic = topic, .partition = p, .value = value, .value_len = len};
    hx_produce(e->mock.bootstrap, &r, 1);
}

/* The lines of a partition's file, each checked to be an envelope of that offset. */
static json_t *read_lines(const struct scx_env *e, const char *topic, int p)
{
    char path[800];
    snprintf(path, sizeof(path), "%s/%s/%d.jsonl", e->out_dir, topic, p);
    char *text = hx_read_file(path, NULL);
    ck_assert_msg(text != NULL, "no output file %s", path);
    json_t *lines = json_array();
    for (char *line = text, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        ck_assert_msg(nl != NULL, "%s: last line not terminated", path);
        *nl = '\0';
        json_array_append_new(lines, json_string(line));
    }
    free(text);
    return lines;
}

/* Asserts line has offset off and a "value" member whose text is exactly want. */
static void ck_line(const char *line, int64_t off, const char *want)
{
    char needle[2048];
    snprintf(needle, sizeof(needle), ",\"offset\":%" PRId64 ",", off);
    ck_assert_msg(strstr(line, needle) != NULL, "want offset %" PRId64 ": %s", off, line);
    snprintf(needle, sizeof(needle), ",\"value\":%s,\"headers\":", want);
    ck_assert_msg(strstr(line, needle) != NULL, "offset %" PRId64 ":\n line %s\n want value %s",
                  off, line, want);
    json_error_t je;
    json_t *j = json_loads(line, 0, &je);
    ck_assert_msg(j != NULL, "not JSON: %s", line);
    json_decref(j);
}

static int admin_port;

static bool both_committed(void *arg)
{
    struct scx_env *e = arg;
    return hx_pg_int(e->conn,
                     "SELECT count(*) FROM sidecar.checkpoints WHERE pending_first_offset IS NULL "
                     "AND ((partition = 0 AND committed_offset = 100) OR (partition = 1 AND "
                     "committed_offset = 54))",
                     0, NULL) == 2;
}

START_TEST(test_avro_file_sink)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    struct reg *r = reg_start(SR_USER, SR_PASS);
    char *schema = reg_order_schema();
    reg_add(r, 1, schema, NULL);
    reg_add(r, 5, "syntax = \"proto3\"; message M { int32 a = 1; }", "PROTOBUF");

    /* Partition 0: orders 0..99.  Partition 1: orders 100..149 with poison at 10, 20, 30
     * and a tombstone at 40 (offsets). */
    produce_orders(&e, "orders", 0, 0, 100, 1);
    int64_t order = 100;
    char **tr;
    size_t *trl;
    reg_orders(999, 1, 1, &tr, &trl);
    for (int64_t off = 0; off < 54; off++) {
        if (off == 10)
            produce_one(&e, "orders", 1, "{\"not\":\"framed\"}", 16);
        else if (off == 20)
            produce_one(&e, "orders", 1, tr[0], trl[0] - 1); /* the datum's last byte cut */
        else if (off == 30)
            produce_one(&e, "orders", 1, "\x00\x00\x00\x00\x05\x08\x96\x01", 8); /* Protobuf */
        else if (off == 40)
            produce_one(&e, "orders", 1, NULL, 0);
        else
            produce_orders(&e, "orders", 1, order++, 1, 1);
    }
    free(tr[0]);
    free(tr);
    free(trl);

    admin_port = scx_free_port();
    struct scx_opts o = {.extra_top = registry_block(&e, r, SR_PASS, NULL),
                         .extra_pipeline = "    \"value_format\": \"avro\"",
                         .admin_port = admin_port,
                         .max_records = 20};
    const char *cfg = scx_config(&e, "sc-1", &o);
    char cfgpath[700];
    snprintf(cfgpath, sizeof(cfgpath), "%s", cfg);

    scx_migrate(cfgpath);
    /* check-config: the password masked; --online: the registry answers. */
    const char *check[] = {hx_sidecar_bin(), "check-config", "--online", "-c", cfgpath, NULL};
    char *out = NULL;
    int rc = hx_run(check, NULL, 30000, &out);
    ck_assert_msg(rc == 0, "check-config --online failed (%d): %s", rc, out);
    ck_assert_msg(strstr(out, SR_PASS) == NULL, "the password was printed: %s", out);
    ck_assert_msg(strstr(out, "schema registry http://127.0.0.1") != NULL, "%s", out);
    free(out);

    pid_t pid = scx_start(&e, cfgpath, "sc-1", NULL);
    bool done = hx_wait_until(both_committed, &e, 90000);
    char logpath[700];
    snprintf(logpath, sizeof(logpath), "%s/sc-1.log", e.dir);
    ck_assert_msg(done, "not delivered; log:\n%s", scx_log_tail(logpath, 4000));
    double decode_errors = scx_metric_at(admin_port, "sidecar_decode_errors_total", "");
    double fetched_ok =
        scx_metric_at(admin_port, "sidecar_schema_registry_fetches_total", "outcome=\"ok\"");
    double cached = scx_metric_at(admin_port, "sidecar_schema_registry_cached_schemas", "");
    scx_stop(pid, 15000);

    /* Every order as the mapping says, in offset order; the tombstone a null value. */
    json_t *l0 = read_lines(&e, "orders", 0);
    ck_assert_uint_eq(json_array_size(l0), 100);
    for (int64_t i = 0; i < 100; i++)
        ck_line(json_string_value(json_array_get(l0, (size_t)i)), i, reg_order_json(i));
    json_decref(l0);
    json_t *l1 = read_lines(&e, "orders", 1);
    ck_assert_uint_eq(json_array_size(l1), 51);
    size_t line = 0;
    order = 100;
    for (int64_t off = 0; off < 54; off++) {
        if (off == 10 || off == 20 || off == 30)
            continue;
        ck_line(json_string_value(json_array_get(l1, line++)), off,
                off == 40 ? "null" : reg_order_json(order++));
    }
    json_decref(l1);

    /* The poison records are dead letters with their reason (and their raw bytes). */
    char *dl = hx_pg_value(e.conn,
                           "SELECT string_agg(format('%s: %s', \"offset\", error), E'\\n' ORDER BY "
                           "\"offset\") FROM sidecar.dead_letters WHERE partition = 1",
                           0, NULL);
    fprintf(stderr, "dead letters:\n%s\n", dl);
    ck_assert_msg(strstr(dl, "10: not in the Confluent wire format: the first byte is 0x7b") !=
                      NULL,
                  "%s", dl);
    ck_assert_msg(strstr(dl, "20: schema id 1: not an Avro datum of this schema") != NULL, "%s",
                  dl);
    ck_assert_msg(strstr(dl, "30: schema id 5 is a PROTOBUF schema") != NULL, "%s", dl);
    free(dl);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL), 3);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.dead_letters WHERE \"offset\" = 10 "
                               "AND value = convert_to('{\"not\":\"framed\"}', 'UTF8') AND "
                               "envelope->'value' = '{\"base64\":\"eyJub3QiOiJmcmFtZWQifQ==\"}'",
                               0, NULL),
                     1);
    ck_assert_int_eq((int)decode_errors, 3);

    /* One request per schema id, however many workers and batches (the cache). */
    ck_assert_int_eq(reg_requests(r, 1), 1);
    ck_assert_int_eq(reg_requests(r, 5), 1);
    ck_assert_int_eq((int)fetched_ok, 1);
    ck_assert_int_eq((int)cached, 2);
    ck_assert_int_eq(reg_unauthorized(r), 0);

    /* The password is in no log line. */
    char *log = hx_read_file(logpath, NULL);
    ck_assert_msg(strstr(log, SR_PASS) == NULL, "the password was logged");
    free(log);

    /* --online with a wrong password: exit 1, the registry's 401 named. */
    o.extra_top = registry_block(&e, r, "wrong", NULL);
    snprintf(cfgpath, sizeof(cfgpath), "%s", scx_config(&e, "sc-bad", &o));
    const char *bad[] = {hx_sidecar_bin(), "check-config", "--online", "-c", cfgpath, NULL};
    rc = hx_run(bad, NULL, 30000, &out);
    ck_assert_msg(rc == 1 && strstr(out, "HTTP 401 (credentials refused)"), "%d: %s", rc, out);
    ck_assert_msg(strstr(out, "wrong") == NULL, "the password was printed: %s", out);
    free(out);

    free(schema);
    reg_stop(r);
    scx_env_stop(&e);
}
END_TEST

static int64_t committed(PGconn *conn, int partition)
{
    char p[16];
    snprintf(p, sizeof(p), "%d", partition);
    const char *params[] = {p};
    return hx_pg_int(conn,
                     "SELECT coalesce(max(committed_offset), -1) FROM sidecar.checkpoints "
                     "WHERE partition = $1::int",
                     1, params);
}

struct waits {
    int port;
    double above;
    const char *name, *labels;
};

static bool metric_above(void *arg)
{
    struct waits *w = arg;
    return scx_metric_at(w->port, w->name, w->labels) > w->above;
}

struct reqs {
    struct reg *r;
    uint32_t id;
    long above;
};

static bool requests_above(void *arg)
{
    struct reqs *q = arg;
    return reg_requests(q->r, q->id) > q->above;
}

START_TEST(test_registry_faults)
{
    struct scx_env e;
    const char *topics[] = {"orders:1"};
    scx_env_start(&e, 1, topics, 1);
    struct reg *r = reg_start(SR_USER, SR_PASS);
    char *schema = reg_order_schema();
    reg_add(r, 1, schema, NULL);
    reg_set_mode(r, REG_DOWN);
    produce_orders(&e, "orders", 0, 0, 50, 1);

    int port = scx_free_port();
    struct scx_opts o = {.extra_top = registry_block(&e, r, SR_PASS, NULL),
                         .extra_pipeline = "    \"value_format\": \"avro\"",
                         .admin_port = port,
                         .workers = 1};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);

    /* Down: the partition waits and retries; nothing is delivered or dead-lettered. */
    struct waits w = {port, 1, "sidecar_schema_registry_waits_total", ""};
    ck_assert_msg(hx_wait_until(metric_above, &w, 60000), "no waits counted");
    struct waits fe = {port, 1, "sidecar_schema_registry_fetches_total", "outcome=\"error\""};
    ck_assert(hx_wait_until(metric_above, &fe, 30000));
    ck_assert_int_le(committed(e.conn, 0), 0);

    /* Garbage (200 with an HTML page): a registry problem too, not the records'. */
    reg_set_mode(r, REG_GARBAGE);
    struct reqs q = {r, 1, reg_requests(r, 1) + 1};
    ck_assert(hx_wait_until(requests_above, &q, 30000));
    ck_assert_int_le(committed(e.conn, 0), 0);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL), 0);

    /* Back: everything arrives. */
    reg_set_mode(r, REG_SERVE);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 1, 50, 60000));

    /* A schema id registered after its records arrived: they wait, then go through. */
    produce_orders(&e, "orders", 0, 50, 10, 2);
    struct reqs q2 = {r, 2, 2};
    ck_assert_msg(hx_wait_until(requests_above, &q2, 30000), "id 2 was not asked for again");
    ck_assert_int_eq(committed(e.conn, 0), 50);
    struct waits nf = {port, 0, "sidecar_schema_registry_fetches_total", "outcome=\"not_found\""};
    ck_assert(metric_above(&nf));
    reg_add(r, 2, schema, NULL);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 1, 60, 60000));
    /* A batch of nothing but poison: no write at all, both dead letters commit. */
    struct hx_record poison[2] = {
        {.topic = "orders", .partition = 0, .value = "\x01\x00\x00\x00\x01", .value_len = 5},
        {.topic = "orders", .partition = 0, .value = "\x00\x00\x00", .value_len = 3},
    };
    hx_produce(e.mock.bootstrap, poison, 2);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 1, 62, 60000));
    scx_stop(pid, 15000);

    json_t *lines = read_lines(&e, "orders", 0);
    ck_assert_uint_eq(json_array_size(lines), 60);
    for (int64_t i = 0; i < 60; i++)
        ck_line(json_string_value(json_array_get(lines, (size_t)i)), i, reg_order_json(i));
    json_decref(lines);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.dead_letters WHERE \"offset\" IN "
                               "(60, 61) AND error LIKE 'not in the Confluent wire format%'",
                               0, NULL),
                     2);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL), 2);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.checkpoints WHERE state <> "
                               "'ok'",
                               0, NULL),
                     0);
    free(schema);
    reg_stop(r);
    scx_env_stop(&e);
}
END_TEST

/* The log at path contains needle (for hx_wait_until). */
struct in_log {
    const char *path, *needle;
};

static bool log_has(void *arg)
{
    struct in_log *l = arg;
    char *text = hx_read_file(l->path, NULL);
    bool found = text && strstr(text, l->needle) != NULL;
    free(text);
    return found;
}

/* Runs `sidecar check-config --online -c cfg`; returns its exit code, output in *out. */
static int check_online(const char *cfg, char **out)
{
    const char *argv[] = {hx_sidecar_bin(), "check-config", "--online", "-c", cfg, NULL};
    return hx_run(argv, NULL, 30000, out);
}

START_TEST(test_registry_tls_ca_file)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    /* A self-signed certificate for 127.0.0.1 (and localhost), as a private CA's would be. */
    char cert[800], key[800], other[800], otherkey[800], junk[800];
    scx_self_signed(&e, "registry", cert, key);
    scx_self_signed(&e, "other", other, otherkey);
    snprintf(junk, sizeof(junk), "%s/junk.pem", e.dir);
    hx_write_file(junk, "not a certificate\n");
    char *out = NULL;
    char *cert_pem = hx_read_file(cert, NULL), *key_pem = hx_read_file(key, NULL);
    struct reg *r = reg_start_tls(SR_USER, SR_PASS, cert_pem, key_pem);
    free(cert_pem);
    free(key_pem);
    ck_assert_msg(strncmp(reg_url(r), "https://127.0.0.1:", 18) == 0, "%s", reg_url(r));
    char *schema = reg_order_schema();
    reg_add(r, 1, schema, NULL);
    /* Partition 0: orders 0..39, partition 1: orders 40..79. */
    produce_orders(&e, "orders", 0, 0, 40, 1);
    produce_orders(&e, "orders", 1, 40, 40, 1);

    /* 1. Without ca_file the certificate is not trusted (the system store does not know it). */
    int port = scx_free_port();
    struct scx_opts o = {.extra_top = registry_block(&e, r, SR_PASS, NULL),
                         .extra_pipeline = "    \"value_format\": \"avro\"",
                         .admin_port = port,
                         .max_records = 20};
    char cfg[700], logpath[700];
    snprintf(cfg, sizeof(cfg), "%s", scx_config(&e, "sc-noca", &o));
    scx_migrate(cfg);
    int rc = check_online(cfg, &out);
    ck_assert_msg(rc == 1 && strstr(out, "certificate") && strstr(out, reg_url(r)) &&
                      strstr(out, "system CA store: set schema_registry.ca_file"),
                  "check-config --online without ca_file (%d): %s", rc, out);
    ck_assert_msg(strstr(out, SR_PASS) == NULL, "the password was printed: %s", out);
    free(out);
    /* A ca_file of another CA: refused by the handshake (exit 1); one that is no PEM at all:
     * refused as a config error (exit 2) before any connection. */
    char more[900];
    snprintf(more, sizeof(more), "\"ca_file\": \"%s\"", other);
    o.extra_top = registry_block(&e, r, SR_PASS, more);
    rc = check_online(scx_config(&e, "sc-other", &o), &out);
    ck_assert_msg(rc == 1 && strstr(out, "certificate") &&
                      strstr(out, "(checked against schema_registry.ca_file)"),
                  "check-config --online with another CA's ca_file (%d): %s", rc, out);
    free(out);
    snprintf(more, sizeof(more), "\"ca_file\": \"%s\"", junk);
    o.extra_top = registry_block(&e, r, SR_PASS, more);
    rc = check_online(scx_config(&e, "sc-junk", &o), &out);
    ck_assert_msg(rc == 2 && strstr(out, junk) && strstr(out, "holds no PEM certificate"),
                  "check-config --online with a ca_file that is no PEM (%d): %s", rc, out);
    free(out);

    pid_t pid = scx_start(&e, cfg, "sc-noca", NULL);
    snprintf(logpath, sizeof(logpath), "%s/sc-noca.log", e.dir);
    struct in_log l = {logpath, "certificate"};
    ck_assert_msg(hx_wait_until(log_has, &l, 60000), "no certificate problem logged:\n%s",
                  scx_log_tail(logpath, 4000));
    /* Transient: both partitions back off and ask again (more than once each). */
    struct waits w0 = {port, 1, "sidecar_schema_registry_waits_total", "partition=\"0\""};
    struct waits w1 = {port, 1, "sidecar_schema_registry_waits_total", "partition=\"1\""};
    struct waits fe = {port, 2, "sidecar_schema_registry_fetches_total", "outcome=\"error\""};
    ck_assert_msg(hx_wait_until(metric_above, &w0, 60000) &&
                      hx_wait_until(metric_above, &w1, 60000) &&
                      hx_wait_until(metric_above, &fe, 60000),
                  "the partitions do not wait and retry:\n%s", scx_log_tail(logpath, 4000));
    /* Nothing delivered, dead-lettered or stopped; no request got past the handshake. */
    ck_assert_int_le(committed(e.conn, 0), 0);
    ck_assert_int_le(committed(e.conn, 1), 0);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL), 0);
    ck_assert_int_eq(
        hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.checkpoints WHERE state <> 'ok'", 0, NULL),
        0);
    ck_assert_int_eq((int)scx_metric_at(port, "sidecar_decode_errors_total", ""), 0);
    ck_assert_int_eq(reg_requests(r, 1), 0);
    scx_stop(pid, 15000);
    for (int p = 0; p < 2; p++) {
        char path[800];
        size_t len = 0;
        snprintf(path, sizeof(path), "%s/orders/%d.jsonl", e.out_dir, p);
        free(hx_read_file(path, &len));
        ck_assert_msg(len == 0, "%s has %zu bytes", path, len);
    }
    /* The log line names the registry and the certificate problem, never the password. */
    char *log = hx_read_file(logpath, NULL);
    fprintf(stderr, "without ca_file: %s\n", scx_log_tail(logpath, 600));
    ck_assert_msg(strstr(log, SR_PASS) == NULL, "the password was logged");
    ck_assert_msg(strstr(log, "set schema_registry.ca_file to trust a private CA"),
                  "the log does not point at ca_file");
    free(log);

    /* 2. With ca_file: check-config --online passes, and every order arrives once, decoded. */
    snprintf(more, sizeof(more), "\"ca_file\": \"%s\"", cert);
    o.extra_top = registry_block(&e, r, SR_PASS, more);
    snprintf(cfg, sizeof(cfg), "%s", scx_config(&e, "sc-ca", &o));
    rc = check_online(cfg, &out);
    ck_assert_msg(rc == 0 && strstr(out, "schema registry https://127.0.0.1:"),
                  "check-config --online with ca_file (%d): %s", rc, out);
    free(out);
    /* The certificate must name the URL's host: localhost it does (DNS), 127.0.0.2 not. */
    const char *hosts[] = {"localhost", "127.0.0.2"};
    for (int h = 0; h < 2; h++) {
        char block[1600];
        snprintf(block, sizeof(block),
                 "  \"schema_registry\": {\"url\": \"https://%s:%s\", \"username\": \"%s\", "
                 "\"password\": \"%s\", \"ca_file\": \"%s\"}",
                 hosts[h], strrchr(reg_url(r), ':') + 1, SR_USER, SR_PASS, cert);
        struct scx_opts oh = o;
        oh.extra_top = block;
        rc = check_online(scx_config(&e, "sc-host", &oh), &out);
        if (h == 0)
            ck_assert_msg(rc == 0, "check-config --online via localhost (%d): %s", rc, out);
        else
            ck_assert_msg(rc == 1 && strstr(out, "https://127.0.0.2:") &&
                              strstr(out, "(checked against schema_registry.ca_file)"),
                          "check-config --online via 127.0.0.2 (%d): %s", rc, out);
        free(out);
    }
    pid = scx_start(&e, cfg, "sc-ca", NULL);
    snprintf(logpath, sizeof(logpath), "%s/sc-ca.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 2, 40, 60000),
                  "not delivered with ca_file:\n%s", scx_log_tail(logpath, 4000));
    scx_stop(pid, 15000);
    for (int p = 0; p < 2; p++) {
        json_t *lines = read_lines(&e, "orders", p);
        ck_assert_uint_eq(json_array_size(lines), 40);
        for (int64_t i = 0; i < 40; i++)
            ck_line(json_string_value(json_array_get(lines, (size_t)i)), i,
                    reg_order_json(p * 40 + i));
        json_decref(lines);
    }
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL), 0);
    ck_assert_int_eq(reg_requests(r, 1), 1); /* one fetch, over TLS, for the whole run */
    ck_assert_int_eq(reg_unauthorized(r), 0);
    struct in_log insecure = {logpath, "insecure_skip_verify is set"};
    ck_assert(!log_has(&insecure));

    /* 3. insecure_skip_verify instead of ca_file: delivered too, with one warning. */
    produce_orders(&e, "orders", 0, 80, 10, 1);
    produce_orders(&e, "orders", 1, 90, 10, 1);
    o.extra_top = registry_block(&e, r, SR_PASS, "\"insecure_skip_verify\": true");
    snprintf(cfg, sizeof(cfg), "%s", scx_config(&e, "sc-insecure", &o));
    rc = check_online(cfg, &out);
    ck_assert_msg(rc == 0, "check-config --online with insecure_skip_verify (%d): %s", rc, out);
    free(out);
    pid = scx_start(&e, cfg, "sc-insecure", NULL);
    snprintf(logpath, sizeof(logpath), "%s/sc-insecure.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 2, 50, 60000),
                  "not delivered with insecure_skip_verify:\n%s", scx_log_tail(logpath, 4000));
    scx_stop(pid, 15000);
    log = hx_read_file(logpath, NULL);
    const char *warning = strstr(log, "schema_registry.insecure_skip_verify is set");
    ck_assert_msg(warning && !strstr(warning + 20, "schema_registry.insecure_skip_verify"),
                  "not one warning:\n%s", scx_log_tail(logpath, 4000));
    free(log);
    for (int p = 0; p < 2; p++) {
        json_t *lines = read_lines(&e, "orders", p);
        ck_assert_uint_eq(json_array_size(lines), 50);
        for (int64_t i = 40; i < 50; i++)
            ck_line(json_string_value(json_array_get(lines, (size_t)i)), i,
                    reg_order_json(80 + p * 10 + i - 40));
        json_decref(lines);
    }
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL), 0);
    ck_assert_int_eq(reg_requests(r, 1), 2); /* a new process asks once again */
    free(schema);
    reg_stop(r);
    scx_env_stop(&e);
}
END_TEST

static bool in_error(void *arg)
{
    struct scx_env *e = arg;
    return hx_pg_int(e->conn, "SELECT count(*) FROM sidecar.checkpoints WHERE state = 'error'", 0,
                     NULL) == 1;
}

START_TEST(test_unknown_id_stops_the_partition)
{
    struct scx_env e;
    const char *topics[] = {"orders:2"};
    scx_env_start(&e, 1, topics, 1);
    struct reg *r = reg_start(NULL, NULL);
    char *schema = reg_order_schema();
    reg_add(r, 1, schema, NULL);
    produce_orders(&e, "orders", 0, 0, 20, 1);
    produce_orders(&e, "orders", 1, 0, 5, 1);
    produce_orders(&e, "orders", 1, 5, 5, 9); /* id 9 never registered */
    char block[512];
    snprintf(block, sizeof(block),
             /* The first URL refuses connections: the second one answers. */
             "  \"schema_registry\": {\"url\": \"http://127.0.0.1:1,%s/\", "
             "\"unknown_id_grace\": \"2s\"}",
             reg_url(r));
    struct scx_opts o = {.extra_top = block, .extra_pipeline = "    \"value_format\": \"avro\""};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert(hx_wait_until(in_error, &e, 60000));
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 1, 20, 30000)); /* the other one goes on */
    char *msg =
        hx_pg_value(e.conn, "SELECT error FROM sidecar.checkpoints WHERE partition = 1", 0, NULL);
    ck_assert_msg(strstr(msg, "schema id 9 is not in the registry at http://127.0.0.1") &&
                      strstr(msg, "unknown_id_grace"),
                  "%s", msg);
    free(msg);
    /* Nothing of the batch holding the unknown id (records before it in the same batch
     * included) was delivered, and nothing was skipped. */
    ck_assert_int_le(committed(e.conn, 1), 5);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM sidecar.dead_letters", 0, NULL), 0);
    scx_stop(pid, 15000);
    free(schema);
    reg_stop(r);
    scx_env_stop(&e);
}
END_TEST

/*
 * A batch with a record that does not decode, whose sync fails: the batch
 * is decoded and written again, and the bad record is still one decode
 * error and one dead letter.  The bad record is the topic's first, so it
 * is in the first batch, whose sync is the one that fails.
 */
START_TEST(test_failed_sync_counts_a_decode_error_once)
{
    struct scx_env e;
    const char *topics[] = {"orders:1"};
    scx_env_start(&e, 1, topics, 1);
    struct reg *r = reg_start(NULL, NULL);
    char *schema = reg_order_schema();
    reg_add(r, 1, schema, NULL);
    produce_one(&e, "orders", 0, "{\"not\":\"framed\"}", 16);
    produce_orders(&e, "orders", 0, 0, 9, 1);
    char block[512];
    snprintf(block, sizeof(block), "  \"schema_registry\": {\"url\": \"%s\"}", reg_url(r));
    int port = scx_free_port();
    struct scx_opts o = {
        .extra_top = block, .extra_pipeline = "    \"value_format\": \"avro\"", .admin_port = port};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    pid_t pid = scx_start(&e, cfg, "sc-1", "file_sync=fail#1");
    char log[700];
    snprintf(log, sizeof(log), "%s/sc-1.log", e.dir);
    ck_assert_msg(scx_wait_committed(e.conn, "p1", "orders", 1, 10, 60000), "log:\n%s",
                  scx_log_tail(log, 4000));
    double decode_errors = scx_metric_at(port, "sidecar_decode_errors_total", "");
    double dead = scx_metric_at(port, "sidecar_dead_letters_total", "");
    scx_stop(pid, 15000);
    ck_assert_int_eq(scx_log_count(log, "failpoint file_sync fired"), 1);
    ck_assert_int_eq(scx_log_count(log, "retrying the batch in"), 1);
    ck_assert_msg(decode_errors == 1 && dead == 1, "decode errors %g, dead letters %g",
                  decode_errors, dead);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.dead_letters WHERE \"offset\" = 0 "
                               "AND attempts = 1",
                               0, NULL),
                     1);
    json_t *lines = read_lines(&e, "orders", 0);
    ck_assert_uint_eq(json_array_size(lines), 9);
    for (int64_t i = 0; i < 9; i++)
        ck_line(json_string_value(json_array_get(lines, (size_t)i)), i + 1, reg_order_json(i));
    json_decref(lines);
    free(schema);
    reg_stop(r);
    scx_env_stop(&e);
}
END_TEST

START_TEST(test_postgres_paths)
{
    struct scx_env e;
    const char *topics[] = {"orders:1", "events:1"};
    scx_env_start(&e, 1, topics, 2);
    struct reg *r = reg_start(NULL, NULL);
    char *schema = reg_order_schema();
    reg_add(r, 3, schema, NULL);
    produce_orders(&e, "orders", 0, 0, 30, 3);
    /* The same orders again, their ids as Avro keys: upserts keyed by order_id. */
    char **keys;
    size_t *klens;
    reg_orders(0, 30, 3, &keys, &klens);
    struct hx_record recs[30];
    for (int i = 0; i < 30; i++)
        recs[i] = (struct hx_record){.topic = "events",
                                     .partition = 0,
                                     .key = keys[i],
                                     .key_len = klens[i],
                                     .value = "\x00\x00\x00\x00\x0b{\"n\": 1}",
                                     .value_len = 13};
    hx_produce(e.mock.bootstrap, recs, 30);

    hx_pg_exec(e.conn, "CREATE SCHEMA app; CREATE TABLE app.orders (order_id bigint PRIMARY KEY, "
                       "customer text, amount numeric(12,2), placed_at timestamptz, "
                       "doc jsonb, src bigint, CONSTRAINT not7 CHECK (order_id <> 7))");
    char block[256];
    snprintf(block, sizeof(block), "  \"schema_registry\": {\"url\": \"%s\"}", reg_url(r));
    struct scx_opts o = {
        .extra_top = block,
        .extra_pipeline = "    \"value_format\": \"avro\"",
        .sink = "{\"type\":\"postgres\",\"table\":\"app.orders\",\"mode\":\"upsert\","
                "\"columns\":{\"order_id\":\"$.order_id\",\"customer\":\"$.customer\","
                "\"amount\":\"$.amount\",\"placed_at\":\"$.placed_at\",\"doc\":\"$value\","
                "\"src\":\"$offset\"},\"key_columns\":[\"order_id\"]}"};
    const char *cfg = scx_config(&e, "sc-1", &o);
    scx_migrate(cfg);
    pid_t pid = scx_start(&e, cfg, "sc-1", NULL);
    ck_assert(scx_wait_committed(e.conn, "p1", "orders", 1, 30, 60000));
    scx_stop(pid, 15000);
    /* Order 7 broke the table's CHECK: a dead letter whose envelope holds the decoded value. */
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM app.orders", 0, NULL), 29);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.dead_letters WHERE \"offset\" = 7 AND "
                               "envelope->'value'->>'customer' = 'customer-7' AND error LIKE "
                               "'%not7%'",
                               0, NULL),
                     1);
    /* Redrive decodes it again (with the registry) and the row arrives as it should. */
    hx_pg_exec(e.conn, "ALTER TABLE app.orders DROP CONSTRAINT not7");
    const char *redrive[] = {hx_sidecar_bin(), "redrive", "-c", cfg, "--pipeline", "p1", NULL};
    char *out = NULL;
    int rc = hx_run(redrive, NULL, 60000, &out);
    ck_assert_msg(rc == 0, "redrive failed (%d): %s", rc, out);
    free(out);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM app.orders", 0, NULL), 30);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM app.orders WHERE customer = 'customer-' || "
                               "order_id AND amount = (order_id * 7) / 100.0 AND placed_at = "
                               "to_timestamp(1700000000 + order_id) AND doc->>'status' IS NOT "
                               "NULL AND src = order_id",
                               0, NULL),
                     30);
    char *doc = hx_pg_value(e.conn, "SELECT doc::text FROM app.orders WHERE order_id = 4", 0, NULL);
    json_t *want = json_loads(reg_order_json(4), 0, NULL), *got = json_loads(doc, 0, NULL);
    ck_assert_msg(json_equal(want, got), "%s", doc);
    json_decref(want);
    json_decref(got);
    free(doc);

    /* key_format avro with value_format json_schema, into the default columns. */
    o.pipeline = "p2";
    o.topics = "[\"events\"]";
    o.extra_pipeline = "    \"value_format\": \"json_schema\", \"key_format\": \"avro\"";
    o.sink = "{\"type\":\"postgres\",\"table\":\"app.events\"}";
    cfg = scx_config(&e, "sc-2", &o);
    pid = scx_start(&e, cfg, "sc-2", NULL);
    ck_assert(scx_wait_committed(e.conn, "p2", "events", 1, 30, 60000));
    /* The transactional sink with a batch of nothing but poison: the dead letters commit. */
    struct hx_record poison[3] = {
        {.topic = "events", .partition = 0, .value = "{}", .value_len = 2},
        {.topic = "events", .partition = 0, .value = "\x00\x00\x00\x00\x01{", .value_len = 6},
        {.topic = "events", .partition = 0, .value = "", .value_len = 0},
    };
    hx_produce(e.mock.bootstrap, poison, 3);
    ck_assert(scx_wait_committed(e.conn, "p2", "events", 1, 33, 60000));
    scx_stop(pid, 15000);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM sidecar.dead_letters WHERE pipeline = 'p2' "
                               "AND \"offset\" BETWEEN 30 AND 32",
                               0, NULL),
                     3);
    ck_assert_int_eq(hx_pg_int(e.conn, "SELECT count(*) FROM app.events", 0, NULL), 30);
    ck_assert_int_eq(hx_pg_int(e.conn,
                               "SELECT count(*) FROM app.events WHERE value = '{\"n\":1}'::jsonb "
                               "AND (key::jsonb->>'order_id')::bigint = \"offset\"",
                               0, NULL),
                     30);
    for (int i = 0; i < 30; i++)
        free(keys[i]);
    free(keys);
    free(klens);
    free(schema);
    reg_stop(r);
    scx_env_stop(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("registry");
    TCase *tc = tcase_create("schema registry formats");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_avro_file_sink);
    tcase_add_test(tc, test_registry_faults);
    tcase_add_test(tc, test_unknown_id_stops_the_partition);
    tcase_add_test(tc, test_failed_sync_counts_a_decode_error_once);
    tcase_add_test(tc, test_postgres_paths);
    tcase_add_test(tc, test_registry_tls_ca_file);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
