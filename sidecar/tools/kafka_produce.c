/*
 * kafka-produce - produces known records to a Kafka topic: generated ones
 * (--count, values from seq_value.h) or one JSON description per stdin line.
 *
 * Every record is acknowledged by all in-sync replicas (acks=all) before the
 * tool exits 0; any failed delivery makes it exit 1 with the error, so a
 * test that used it knows exactly what the topic holds.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "seq_value.h"

#define PRODUCE_MAX_PROPS 64

struct produce_opts {
    const char *bootstrap;
    const char *topic;
    long long count; /* -1: read JSON lines from stdin */
    long long start;
    int partitions; /* 0: all partitions of the topic */
    const char *compression;
    long long rate; /* records per second over the whole run, 0 = unlimited */
    const char *batch_size;
    const char *props[PRODUCE_MAX_PROPS]; /* -X name=value */
    size_t nprops;
};

/* Delivery outcome, updated by the delivery report callback (in rd_kafka_poll/flush). */
struct produce_stats {
    long long delivered;
    long long failed;
    char first_error[512];
};

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int parse_ll(const char *s, long long min, long long max, long long *out)
{
    char *end;
    long long v;

    if (s == NULL || *s == '\0')
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    struct produce_stats *st = opaque;

    (void)rk;
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        st->delivered++;
        return;
    }
    if (st->failed++ == 0)
        snprintf(st->first_error, sizeof(st->first_error), "partition %" PRId32 ": %s (%s)",
                 msg->partition, rd_kafka_err2str(msg->err), rd_kafka_err2name(msg->err));
}

/*
 * Hands one record to librdkafka, waiting for room in the local queue: a
 * full queue only means we produce faster than the brokers acknowledge.
 */
static int produce_one(rd_kafka_t *rk, const char *topic, int32_t partition, const void *key,
                       size_t key_len, const void *value, size_t value_len,
                       rd_kafka_headers_t *headers, int64_t timestamp)
{
    rd_kafka_resp_err_t err;

    for (;;) {
        /* RD_KAFKA_V_VALUE takes a non-const pointer; with F_COPY the bytes are only read. */
        err = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, key_len),
            RD_KAFKA_V_VALUE((void *)value, value_len), RD_KAFKA_V_TIMESTAMP(timestamp),
            RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_END);
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            break;
        rd_kafka_poll(rk, 10);
    }
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        /* On success librdkafka owns the headers; on failure they are still ours. */
        if (headers != NULL)
            rd_kafka_headers_destroy(headers);
        fprintf(stderr, "kafka-produce: could not produce to %s [%" PRId32 "]: %s\n", topic,
                partition, rd_kafka_err2str(err));
        return -1;
    }
    return 0;
}

/* Sleeps (serving delivery reports) while we are ahead of --rate. */
static void pace(rd_kafka_t *rk, const struct produce_opts *o, int64_t t0, long long sent)
{
    int64_t due, now;

    if (o->rate <= 0) {
        if (sent % 1000 == 0)
            rd_kafka_poll(rk, 0);
        return;
    }
    due = t0 + (int64_t)(sent * 1000 / o->rate);
    while ((now = mono_ms()) < due)
        rd_kafka_poll(rk, (int)(due - now));
    rd_kafka_poll(rk, 0);
}

/* ---- generated records (--count) -------------------------------------------------- */

static int produce_generated(rd_kafka_t *rk, const struct produce_opts *o, int partitions,
                             long long *sent)
{
    char key[32], value[512];
    int64_t t0 = mono_ms();

    /* Round-robin over partitions so every partition makes progress at once. */
    for (long long seq = o->start; seq < o->start + o->count; seq++) {
        for (int32_t p = 0; p < partitions; p++) {
            int klen = snprintf(key, sizeof(key), "k%lld", seq);
            int vlen = seq_value_format(value, sizeof(value), o->topic, p, seq);

            if (produce_one(rk, o->topic, p, key, (size_t)klen, value, (size_t)vlen, NULL, 0) != 0)
                return 1;
            (*sent)++;
            pace(rk, o, t0, *sent);
        }
    }
    return 0;
}

/* ---- JSON lines (stdin) ------------------------------------------------------------- */

/* Decodes standard base64 (padding optional); returns a malloc'd buffer or NULL if invalid. */
static unsigned char *base64_decode(const char *s, size_t *out_len)
{
    size_t len = strlen(s), n = 0;
    unsigned char *out = malloc(len / 4 * 3 + 3);
    uint32_t acc = 0;
    int bits = 0;

    if (out == NULL)
        return NULL;
    while (len > 0 && s[len - 1] == '=')
        len--;
    for (size_t i = 0; i < len; i++) {
        const char c = s[i];
        int v;

        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '+')
            v = 62;
        else if (c == '/')
            v = 63;
        else {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits >= 6) { /* a single dangling character cannot encode a byte */
        free(out);
        return NULL;
    }
    *out_len = n;
    return out;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* Skips a JSON string starting at its opening quote; returns the position after it. */
static const char *skip_string(const char *p, const char *end)
{
    for (p++; p < end && *p != '"'; p++) {
        if (*p == '\\')
            p++;
    }
    return p < end ? p + 1 : end;
}

/* Skips one JSON value of text already validated by jansson. */
static const char *skip_value(const char *p, const char *end)
{
    int depth = 0;

    do {
        if (*p == '"') {
            p = skip_string(p, end);
            continue;
        }
        if (*p == '{' || *p == '[') {
            depth++;
        } else if (*p == '}' || *p == ']') {
            depth--;
        } else if (depth == 0) {
            /* A number or literal: runs to the next delimiter. */
            while (p < end && !strchr(",}] \t\r\n", *p))
                p++;
            return p;
        }
        p++;
    } while (p < end && depth > 0);
    return p;
}

/*
 * Finds the raw text of the top-level member `name` of the JSON object in
 * [s, end) (already validated by jansson), the last one if repeated, as
 * jansson does. This is what lets "value" keep its exact bytes: numbers,
 * key order, duplicates and whitespace, as sent.
 */
static bool raw_member(const char *s, const char *end, const char *name, const char **vstart,
                       const char **vend)
{
    const char *p = skip_ws(s, end);
    bool found = false;

    if (p >= end || *p != '{')
        return false;
    p = skip_ws(p + 1, end);
    while (p < end && *p == '"') {
        const char *kstart = p, *kend = skip_string(p, end), *v;
        bool match;

        /* Compare the decoded key: "\u0076alue" is "value" too. */
        if (memchr(kstart, '\\', (size_t)(kend - kstart)) != NULL) {
            json_t *k = json_loadb(kstart, (size_t)(kend - kstart), JSON_DECODE_ANY, NULL);
            match = k != NULL && json_is_string(k) && strcmp(json_string_value(k), name) == 0;
            json_decref(k);
        } else {
            match = (size_t)(kend - kstart - 2) == strlen(name) &&
                    memcmp(kstart + 1, name, strlen(name)) == 0;
        }
        p = skip_ws(kend, end);
        p = skip_ws(p + 1, end); /* the ':' */
        v = p;
        p = skip_value(p, end);
        if (match) {
            *vstart = v;
            *vend = p;
            found = true;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',')
            p = skip_ws(p + 1, end);
    }
    return found;
}

/* A header value: a string, null, or {"base64": "..."} for binary bytes. */
static int header_add(rd_kafka_headers_t *hdrs, const char *name, json_t *v, char *err,
                      size_t err_size)
{
    json_t *b64 = json_is_object(v) ? json_object_get(v, "base64") : NULL;

    if (json_is_null(v)) {
        rd_kafka_header_add(hdrs, name, -1, NULL, 0);
    } else if (json_is_string(v)) {
        rd_kafka_header_add(hdrs, name, -1, json_string_value(v), (ssize_t)json_string_length(v));
    } else if (json_is_string(b64) && json_object_size(v) == 1) {
        size_t len;
        unsigned char *bytes = base64_decode(json_string_value(b64), &len);

        if (bytes == NULL) {
            snprintf(err, err_size, "headers.%s.base64: invalid base64", name);
            return -1;
        }
        rd_kafka_header_add(hdrs, name, -1, bytes, (ssize_t)len);
        free(bytes);
    } else {
        snprintf(err, err_size, "headers.%s: expected a string, null or {\"base64\": \"...\"}",
                 name);
        return -1;
    }
    return 0;
}

/* Parses "headers": an object, or an array of [name, value] pairs (repeated names, order). */
static rd_kafka_headers_t *parse_headers(json_t *h, char *err, size_t err_size)
{
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(8);
    const char *name;
    json_t *v;
    size_t i;

    if (json_is_object(h)) {
        json_object_foreach(h, name, v)
        {
            if (header_add(hdrs, name, v, err, err_size) != 0)
                goto fail;
        }
    } else if (json_is_array(h)) {
        json_array_foreach(h, i, v)
        {
            if (!json_is_array(v) || json_array_size(v) != 2 ||
                !json_is_string(json_array_get(v, 0))) {
                snprintf(err, err_size, "headers[%zu]: expected [\"name\", value]", i);
                goto fail;
            }
            if (header_add(hdrs, json_string_value(json_array_get(v, 0)), json_array_get(v, 1), err,
                           err_size) != 0)
                goto fail;
        }
    } else {
        snprintf(err, err_size, "headers: expected an object or an array of [name, value]");
        goto fail;
    }
    return hdrs;

fail:
    rd_kafka_headers_destroy(hdrs);
    return NULL;
}

/*
 * Produces the record described by one JSON line. Returns 0, -1 for an
 * invalid line (reason in err) or -2 if librdkafka refused the record.
 */
static int produce_line(rd_kafka_t *rk, const struct produce_opts *o, int partitions,
                        const char *line, size_t len, char *err, size_t err_size)
{
    static const char *const known[] = {"partition",    "key",     "key_base64", "value",
                                        "value_base64", "headers", "timestamp"};
    json_error_t jerr;
    json_t *doc, *f;
    const char *name, *vstart = NULL, *vend = NULL;
    json_t *v;
    int32_t partition = RD_KAFKA_PARTITION_UA;
    const void *key = NULL, *value = NULL;
    size_t key_len = 0, value_len = 0;
    unsigned char *key_buf = NULL, *value_buf = NULL;
    rd_kafka_headers_t *hdrs = NULL;
    int64_t timestamp = 0;
    int rc = -1;

    /* JSON_ALLOW_NUL: a string key or value may carry \u0000 bytes. */
    doc = json_loadb(line, len, JSON_ALLOW_NUL, &jerr);
    if (doc == NULL) {
        snprintf(err, err_size, "invalid JSON at column %d: %s", jerr.column, jerr.text);
        return -1;
    }
    if (!json_is_object(doc)) {
        snprintf(err, err_size, "expected a JSON object");
        goto out;
    }
    json_object_foreach(doc, name, v)
    {
        size_t i;

        for (i = 0; i < sizeof(known) / sizeof(known[0]) && strcmp(name, known[i]) != 0; i++)
            ;
        if (i == sizeof(known) / sizeof(known[0])) {
            snprintf(err, err_size,
                     "unknown field \"%s\" (expected partition, key, key_base64, value, "
                     "value_base64, headers, timestamp)",
                     name);
            goto out;
        }
    }

    f = json_object_get(doc, "partition");
    if (f != NULL && !json_is_null(f)) {
        if (!json_is_integer(f) || json_integer_value(f) < 0 ||
            json_integer_value(f) >= partitions) {
            snprintf(err, err_size, "partition: expected an integer in 0..%d", partitions - 1);
            goto out;
        }
        partition = (int32_t)json_integer_value(f);
    }

    if (json_object_get(doc, "key") != NULL && json_object_get(doc, "key_base64") != NULL) {
        snprintf(err, err_size, "key and key_base64 are exclusive");
        goto out;
    }
    f = json_object_get(doc, "key");
    if (json_is_string(f)) {
        key = json_string_value(f);
        key_len = json_string_length(f);
    } else if (f != NULL && !json_is_null(f)) {
        snprintf(err, err_size, "key: expected a string or null (binary keys: key_base64)");
        goto out;
    }
    f = json_object_get(doc, "key_base64");
    if (f != NULL) {
        if (!json_is_string(f) ||
            (key_buf = base64_decode(json_string_value(f), &key_len)) == NULL) {
            snprintf(err, err_size, "key_base64: expected a base64 string");
            goto out;
        }
        key = key_buf;
    }

    if (json_object_get(doc, "value") != NULL && json_object_get(doc, "value_base64") != NULL) {
        snprintf(err, err_size, "value and value_base64 are exclusive");
        goto out;
    }
    f = json_object_get(doc, "value");
    if (json_is_string(f)) {
        value = json_string_value(f);
        value_len = json_string_length(f);
    } else if (f != NULL && !json_is_null(f)) {
        /* Any other JSON is produced as its exact text, not as jansson re-encodes it. */
        if (!raw_member(line, line + len, "value", &vstart, &vend)) {
            snprintf(err, err_size, "value: could not locate its text");
            goto out;
        }
        value = vstart;
        value_len = (size_t)(vend - vstart);
    }
    f = json_object_get(doc, "value_base64");
    if (f != NULL) {
        if (!json_is_string(f) ||
            (value_buf = base64_decode(json_string_value(f), &value_len)) == NULL) {
            snprintf(err, err_size, "value_base64: expected a base64 string");
            goto out;
        }
        value = value_buf;
    }

    f = json_object_get(doc, "headers");
    if (f != NULL && !json_is_null(f) && (hdrs = parse_headers(f, err, err_size)) == NULL)
        goto out;

    f = json_object_get(doc, "timestamp");
    if (f != NULL && !json_is_null(f)) {
        if (!json_is_integer(f) || json_integer_value(f) < 0) {
            snprintf(err, err_size, "timestamp: expected milliseconds since the epoch");
            goto out;
        }
        timestamp = json_integer_value(f);
    }

    rc = produce_one(rk, o->topic, partition, key, key_len, value, value_len, hdrs, timestamp) == 0
             ? 0
             : -2;
    hdrs = NULL; /* owned by librdkafka, or destroyed by produce_one() on failure */

out:
    if (hdrs != NULL)
        rd_kafka_headers_destroy(hdrs);
    free(key_buf);
    free(value_buf);
    json_decref(doc);
    return rc;
}

static int produce_stdin(rd_kafka_t *rk, const struct produce_opts *o, int partitions,
                         long long *sent)
{
    char *line = NULL, err[512];
    size_t cap = 0;
    ssize_t len;
    long long lineno = 0;
    int64_t t0 = mono_ms();
    int rc = 0;

    while ((len = getline(&line, &cap, stdin)) >= 0) {
        int r;

        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (strspn(line, " \t") == (size_t)len)
            continue; /* blank lines are allowed */
        r = produce_line(rk, o, partitions, line, (size_t)len, err, sizeof(err));
        if (r == -1) {
            fprintf(stderr, "kafka-produce: stdin:%lld: %s\n", lineno, err);
            rc = 2;
            break;
        }
        if (r == -2) {
            rc = 1;
            break;
        }
        (*sent)++;
        pace(rk, o, t0, *sent);
    }
    free(line);
    return rc;
}

/* ---- main ------------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fputs("usage: kafka-produce -b BOOTSTRAP -t TOPIC [--count N [--start SEQ] [--partitions N]]\n"
          "                     [--compression none|gzip|snappy|lz4|zstd] [--rate N]\n"
          "                     [--batch-size BYTES] [-X PROPERTY=VALUE]...\n"
          "\n"
          "Produces records with acks=all and waits until every one is acknowledged.\n"
          "\n"
          "With --count, produces N generated records to EACH partition: record SEQ has\n"
          "key \"kSEQ\" and a ~90 byte JSON value that is a pure function of topic,\n"
          "partition and SEQ, e.g.\n"
          "  {\"topic\":\"orders\",\"partition\":3,\"seq\":1234,\"amount\":1234.74,"
          "\"note\":\"orders-000000001234\"}\n"
          "\n"
          "Without --count, reads one JSON object per stdin line (all fields optional):\n"
          "  {\"partition\": 0,            absent/null: librdkafka's partitioner\n"
          "   \"key\": \"k1\" | null,        or \"key_base64\": \"...\" for binary keys\n"
          "   \"value\": ANY | null,       a string is produced as its raw UTF-8 text; any\n"
          "                              other JSON as its exact text, as written\n"
          "   \"value_base64\": \"...\",     binary value (instead of \"value\")\n"
          "   \"headers\": {\"h\": \"v\" | null | {\"base64\": \"...\"}},\n"
          "                              or [[\"h\", \"v\"], ...] to repeat names\n"
          "   \"timestamp\": MS}           absent: the producer's clock\n"
          "Blank lines are skipped; an invalid line stops the input (exit 2) after the\n"
          "records before it were delivered.\n"
          "\n"
          "options:\n"
          "  -b, --bootstrap HOST:PORT[,...]  brokers (e.g. from kafka-mock's first line)\n"
          "  -t, --topic NAME                 an existing topic\n"
          "  -n, --count N                    generated records per partition\n"
          "  -s, --start SEQ                  first SEQ (default 0)\n"
          "  -p, --partitions N               only partitions 0..N-1 (default: all)\n"
          "  -z, --compression CODEC          default lz4\n"
          "  -r, --rate N                     at most N records per second in total\n"
          "      --batch-size BYTES           librdkafka batch.size\n"
          "  -X PROPERTY=VALUE                any librdkafka producer property\n"
          "  -h, --help                       this text\n"
          "\n"
          "Prints \"produced N records to TOPIC (P partitions) in X.XXs\" on stderr.\n"
          "Exit status: 0 all delivered, 1 a delivery failed (the error is printed),\n"
          "2 bad arguments or an invalid input line.\n"
          "\n"
          "examples:\n"
          "  kafka-produce -b \"$BOOTSTRAP\" -t orders --count 100000\n"
          "  kafka-produce -b \"$BOOTSTRAP\" -t orders --count 10 --start 100 --partitions 1\n"
          "  echo "
          "'{\"partition\":1,\"key\":\"a\",\"value\":{\"id\":7},\"headers\":{\"trace\":\"x\"}}' |\n"
          "      kafka-produce -b \"$BOOTSTRAP\" -t orders\n",
          f);
}

static int parse_args(int argc, char **argv, struct produce_opts *o)
{
    enum {
        OPT_BATCH_SIZE = 256
    };
    static const struct option opts[] = {
        {"bootstrap", required_argument, NULL, 'b'},
        {"topic", required_argument, NULL, 't'},
        {"count", required_argument, NULL, 'n'},
        {"start", required_argument, NULL, 's'},
        {"partitions", required_argument, NULL, 'p'},
        {"compression", required_argument, NULL, 'z'},
        {"rate", required_argument, NULL, 'r'},
        {"batch-size", required_argument, NULL, OPT_BATCH_SIZE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static const char *const codecs[] = {"none", "gzip", "snappy", "lz4", "zstd"};
    long long v;
    int opt;

    *o = (struct produce_opts){.count = -1, .compression = "lz4"};
    while ((opt = getopt_long(argc, argv, "b:t:n:s:p:z:r:X:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            o->bootstrap = optarg;
            break;
        case 't':
            o->topic = optarg;
            break;
        case 'n':
            if (parse_ll(optarg, 0, INT64_MAX / 2, &o->count) != 0) {
                fprintf(stderr, "kafka-produce: --count: expected a number >= 0\n");
                return -1;
            }
            break;
        case 's':
            if (parse_ll(optarg, 0, INT64_MAX / 2, &o->start) != 0) {
                fprintf(stderr, "kafka-produce: --start: expected a number >= 0\n");
                return -1;
            }
            break;
        case 'p':
            if (parse_ll(optarg, 1, 100000, &v) != 0) {
                fprintf(stderr, "kafka-produce: --partitions: expected a number >= 1\n");
                return -1;
            }
            o->partitions = (int)v;
            break;
        case 'z': {
            size_t i;

            for (i = 0; i < sizeof(codecs) / sizeof(codecs[0]) && strcmp(optarg, codecs[i]); i++)
                ;
            if (i == sizeof(codecs) / sizeof(codecs[0])) {
                fprintf(stderr, "kafka-produce: --compression: expected none, gzip, snappy, lz4 "
                                "or zstd\n");
                return -1;
            }
            o->compression = optarg;
            break;
        }
        case 'r':
            if (parse_ll(optarg, 1, INT32_MAX, &o->rate) != 0) {
                fprintf(stderr, "kafka-produce: --rate: expected records per second >= 1\n");
                return -1;
            }
            break;
        case OPT_BATCH_SIZE:
            if (parse_ll(optarg, 1, INT32_MAX, &v) != 0) {
                fprintf(stderr, "kafka-produce: --batch-size: expected bytes >= 1\n");
                return -1;
            }
            o->batch_size = optarg;
            break;
        case 'X':
            if (strchr(optarg, '=') == NULL || o->nprops == PRODUCE_MAX_PROPS) {
                fprintf(stderr, "kafka-produce: -X: expected PROPERTY=VALUE (at most %d)\n",
                        PRODUCE_MAX_PROPS);
                return -1;
            }
            o->props[o->nprops++] = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            fprintf(stderr, "kafka-produce: see --help\n");
            return -1;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "kafka-produce: unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return -1;
    }
    if (o->bootstrap == NULL || o->topic == NULL) {
        fprintf(stderr, "kafka-produce: -b BOOTSTRAP and -t TOPIC are required (see --help)\n");
        return -1;
    }
    if (o->count < 0 && (o->partitions != 0 || o->start != 0)) {
        fprintf(stderr, "kafka-produce: --start and --partitions need --count\n");
        return -1;
    }
    return 0;
}

static rd_kafka_t *producer_new(const struct produce_opts *o, struct produce_stats *st)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char errstr[512];
    rd_kafka_t *rk;
    const char *props[][2] = {
        {"bootstrap.servers", o->bootstrap},
        {"acks", "all"},
        {"linger.ms", "5"},
        {"compression.type", o->compression},
        /* A deep local queue keeps batches full when producing millions of records. */
        {"queue.buffering.max.messages", "1000000"},
        {"batch.size", o->batch_size},
    };

    for (size_t i = 0; i < sizeof(props) / sizeof(props[0]); i++) {
        if (props[i][1] != NULL && rd_kafka_conf_set(conf, props[i][0], props[i][1], errstr,
                                                     sizeof(errstr)) != RD_KAFKA_CONF_OK)
            goto fail;
    }
    for (size_t i = 0; i < o->nprops; i++) {
        char name[256];
        const char *eq = strchr(o->props[i], '=');

        snprintf(name, sizeof(name), "%.*s", (int)(eq - o->props[i]), o->props[i]);
        if (rd_kafka_conf_set(conf, name, eq + 1, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
            goto fail;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_opaque(conf, st);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL)
        goto fail;
    return rk;

fail:
    fprintf(stderr, "kafka-produce: %s\n", errstr);
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/*
 * The partition count of topic, or -1. Asks for all topics: naming an
 * unknown topic in a Metadata request would make a broker with
 * auto-creation (like kafka-mock) create it.
 */
static int topic_partitions(rd_kafka_t *rk, const char *topic)
{
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t err;
    int n = -1;

    err = rd_kafka_metadata(rk, 1, NULL, &md, 30000);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "kafka-produce: could not fetch metadata: %s\n", rd_kafka_err2str(err));
        return -1;
    }
    for (int i = 0; i < md->topic_cnt; i++) {
        if (strcmp(md->topics[i].topic, topic) == 0)
            n = md->topics[i].partition_cnt;
    }
    rd_kafka_metadata_destroy(md);
    if (n <= 0)
        fprintf(stderr, "kafka-produce: topic \"%s\" does not exist\n", topic);
    return n;
}

int main(int argc, char **argv)
{
    struct produce_opts o;
    struct produce_stats st = {0};
    rd_kafka_t *rk;
    long long sent = 0;
    int partitions, rc;
    int64_t t0;

    if (parse_args(argc, argv, &o) != 0)
        return 2;
    rk = producer_new(&o, &st);
    if (rk == NULL)
        return 2;
    t0 = mono_ms();
    partitions = topic_partitions(rk, o.topic);
    if (partitions <= 0) {
        rd_kafka_destroy(rk);
        return 1;
    }
    if (o.partitions > partitions) {
        fprintf(stderr, "kafka-produce: --partitions %d: topic \"%s\" has only %d\n", o.partitions,
                o.topic, partitions);
        rd_kafka_destroy(rk);
        return 2;
    }
    if (o.partitions > 0)
        partitions = o.partitions;

    if (o.count >= 0)
        rc = produce_generated(rk, &o, partitions, &sent);
    else
        rc = produce_stdin(rk, &o, partitions, &sent);

    /* Every record ends in a delivery report: success, or failure at message.timeout.ms. */
    while (rd_kafka_outq_len(rk) > 0)
        rd_kafka_flush(rk, 1000);
    rd_kafka_destroy(rk);

    fprintf(stderr, "produced %lld records to %s (%d partitions) in %.2fs\n", st.delivered, o.topic,
            partitions, (double)(mono_ms() - t0) / 1000.0);
    if (st.failed > 0) {
        fprintf(stderr, "kafka-produce: %lld of %lld records failed, first: %s\n", st.failed, sent,
                st.first_error);
        return 1;
    }
    return rc;
}
