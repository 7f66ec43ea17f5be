/*
 * hx_kafka.c - the kafka-mock cluster as a child process (driven over its
 * stdin/stdout control channel) and producers of known records.
 */
#include "hx_kafka.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "hx_internal.h"
#include "hx_proc.h"
#include "seq_value.h"

#define HX_MOCK_REPLY_MS 30000

/* ---- kafka-mock ------------------------------------------------------------------------ */

/*
 * Reads one line from fd within timeout_ms, byte by byte: the mock writes
 * exactly one line per command, and reading past it would steal the next.
 * Returns 0, or -1 on EOF, -2 on timeout.
 */
static int read_line(int fd, char *buf, size_t size, int timeout_ms)
{
    int64_t deadline = hx_now_ms() + timeout_ms;
    size_t n = 0;

    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int64_t left = deadline - hx_now_ms();
        ssize_t r;
        char c;

        if (left <= 0)
            return -2;
        if (poll(&pfd, 1, (int)left) <= 0)
            continue;
        r = read(fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        if (c == '\n')
            break;
        if (n + 1 < size)
            buf[n++] = c;
    }
    buf[n] = '\0';
    return 0;
}

void hx_mock_start(struct hx_mock *m, int brokers, const char *const *topics, size_t ntopics)
{
    const char *argv[8 + 2 * 64];
    char nbrokers[16];
    int in_p[2], out_p[2];
    size_t n = 0;
    int rc;

    memset(m, 0, sizeof(*m));
    if (ntopics > 64)
        hx_fail("hx_mock_start: at most 64 topics");
    snprintf(nbrokers, sizeof(nbrokers), "%d", brokers);
    argv[n++] = hx_mock_bin();
    argv[n++] = "--brokers";
    argv[n++] = nbrokers;
    for (size_t i = 0; i < ntopics; i++) {
        argv[n++] = "--topic";
        argv[n++] = topics[i];
    }
    argv[n] = NULL;
    if (pipe2(in_p, O_CLOEXEC) != 0 || pipe2(out_p, O_CLOEXEC) != 0)
        hx_fail("could not create a pipe: %s", strerror(errno));
    /* The mock's stderr stays ours: its complaints show in the test output, not in replies. */
    m->pid = hx_spawn_ex(argv, NULL, NULL, in_p[0], out_p[1], true, NULL);
    close(in_p[0]);
    close(out_p[1]);
    m->in_fd = in_p[1];
    m->out_fd = out_p[0];
    rc = read_line(m->out_fd, m->bootstrap, sizeof(m->bootstrap), HX_MOCK_REPLY_MS);
    if (rc != 0 || strchr(m->bootstrap, ':') == NULL) {
        int code = hx_wait(m->pid, 5000);

        hx_fail("kafka-mock did not print its bootstrap address (%s, exit %d)",
                rc == -2 ? "timeout" : "it exited", code);
    }
}

int hx_mock_cmd(struct hx_mock *m, char *reply, size_t reply_size, const char *fmt, ...)
{
    char line[4096], answer[4096];
    va_list ap;
    int n, rc;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(line) - 1 || memchr(line, '\n', (size_t)n) != NULL)
        hx_fail("hx_mock_cmd: bad command \"%.100s\"", line);
    line[n++] = '\n';
    for (ssize_t off = 0, w; off < n; off += w) {
        w = write(m->in_fd, line + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            w = 0;
        else if (w < 0)
            hx_fail("kafka-mock is gone (writing \"%.*s\"): %s", n - 1, line, strerror(errno));
    }
    rc = read_line(m->out_fd, answer, sizeof(answer), HX_MOCK_REPLY_MS);
    if (rc != 0)
        hx_fail("kafka-mock gave no reply to \"%.*s\" (%s)", n - 1, line,
                rc == -2 ? "timeout after 30 s" : "it exited");
    if (strncmp(answer, "ok", 2) == 0 && (answer[2] == '\0' || answer[2] == ' ')) {
        if (reply != NULL && reply_size > 0)
            snprintf(reply, reply_size, "%s", answer[2] ? answer + 3 : "");
        return 0;
    }
    if (strncmp(answer, "error: ", 7) == 0) {
        if (reply != NULL && reply_size > 0)
            snprintf(reply, reply_size, "%s", answer + 7);
        return -1;
    }
    hx_fail("kafka-mock answered \"%s\" to \"%.*s\"", answer, n - 1, line);
}

void hx_mock_stop(struct hx_mock *m)
{
    char answer[64];

    if (m->pid <= 0)
        return;
    /* quit, then EOF on its stdin: either one ends it. */
    if (write(m->in_fd, "quit\n", 5) == 5)
        read_line(m->out_fd, answer, sizeof(answer), 5000);
    close(m->in_fd);
    close(m->out_fd);
    if (hx_wait(m->pid, 10000) == -1) {
        kill(m->pid, SIGKILL);
        hx_wait(m->pid, -1);
    }
    memset(m, 0, sizeof(*m));
}

/* ---- producing ----------------------------------------------------------------------- */

struct hx_dr {
    long long delivered, failed;
    char first_error[256];
};

static void hx_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    struct hx_dr *dr = opaque;

    (void)rk;
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        dr->delivered++;
    } else if (dr->failed++ == 0) {
        snprintf(dr->first_error, sizeof(dr->first_error), "%s [%" PRId32 "]: %s",
                 rd_kafka_topic_name(msg->rkt), msg->partition, rd_kafka_err2str(msg->err));
    }
}

static rd_kafka_t *hx_producer(const char *bootstrap, const char *compression, struct hx_dr *dr)
{
    const char *props[][2] = {
        {"bootstrap.servers", bootstrap},
        {"acks", "all"},
        {"linger.ms", "5"},
        {"compression.type", compression},
        {"queue.buffering.max.messages", "1000000"},
        /* Records larger than the default 1 MB (check_memory.c). */
        {"message.max.bytes", "100000000"},
        /* Fail within a test's patience rather than librdkafka's default 5 minutes. */
        {"message.timeout.ms", "60000"},
    };
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char errstr[512];
    rd_kafka_t *rk;

    for (size_t i = 0; i < sizeof(props) / sizeof(props[0]); i++) {
        if (rd_kafka_conf_set(conf, props[i][0], props[i][1], errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK)
            hx_fail("producer config %s: %s", props[i][0], errstr);
    }
    rd_kafka_conf_set_dr_msg_cb(conf, hx_on_delivery);
    rd_kafka_conf_set_opaque(conf, dr);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL)
        hx_fail("could not create a producer: %s", errstr);
    return rk;
}

/*
 * Checks that topic has at least min_partitions. Asks for all topics:
 * naming an unknown topic in a Metadata request makes the mock create it
 * with 4 partitions, which would hide a typo in a test.
 */
static void hx_check_topic(rd_kafka_t *rk, const char *topic, int32_t min_partitions)
{
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 1, NULL, &md, 30000);
    int n = -1;

    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        hx_fail("could not fetch metadata: %s", rd_kafka_err2str(err));
    for (int i = 0; i < md->topic_cnt; i++) {
        if (strcmp(md->topics[i].topic, topic) == 0)
            n = md->topics[i].partition_cnt;
    }
    rd_kafka_metadata_destroy(md);
    if (n < 0)
        hx_fail("topic \"%s\" does not exist (create it with kafka-mock)", topic);
    if (n < min_partitions)
        hx_fail("topic \"%s\" has %d partitions, need %" PRId32, topic, n, min_partitions);
}

static void hx_producev(rd_kafka_t *rk, const char *topic, int32_t partition, const void *key,
                        size_t key_len, const void *value, size_t value_len,
                        rd_kafka_headers_t *hdrs, int64_t timestamp)
{
    rd_kafka_resp_err_t err;

    /* A full local queue only means the brokers are slower than us: serve reports, retry. */
    do {
        err = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, key_len),
            RD_KAFKA_V_VALUE((void *)value, value_len), RD_KAFKA_V_TIMESTAMP(timestamp),
            RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_END);
    } while (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && rd_kafka_poll(rk, 10) >= 0);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        hx_fail("could not produce to %s [%" PRId32 "]: %s", topic, partition,
                rd_kafka_err2str(err));
}

/* Waits for every delivery report and aborts unless all n records were acknowledged. */
static void hx_producer_finish(rd_kafka_t *rk, struct hx_dr *dr, long long n)
{
    while (rd_kafka_outq_len(rk) > 0)
        rd_kafka_flush(rk, 1000);
    rd_kafka_destroy(rk);
    if (dr->failed > 0 || dr->delivered != n)
        hx_fail("%lld of %lld records were not delivered; first error: %s", n - dr->delivered, n,
                dr->first_error[0] ? dr->first_error : "(none)");
}

void hx_produce(const char *bootstrap, const struct hx_record *recs, size_t n)
{
    struct hx_dr dr = {0};
    rd_kafka_t *rk = hx_producer(bootstrap, "none", &dr);

    for (size_t i = 0; i < n; i++) {
        bool seen = false;

        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(recs[j].topic, recs[i].topic) == 0;
        if (!seen) {
            int32_t max = 0;

            for (size_t j = i; j < n; j++) {
                if (strcmp(recs[j].topic, recs[i].topic) == 0 && recs[j].partition + 1 > max)
                    max = recs[j].partition + 1;
            }
            hx_check_topic(rk, recs[i].topic, max);
        }
    }
    for (size_t i = 0; i < n; i++) {
        const struct hx_record *r = &recs[i];
        rd_kafka_headers_t *hdrs = NULL;

        if (r->partition < 0)
            hx_fail("hx_produce: record %zu has no explicit partition", i);
        if (r->nheaders > 0) {
            hdrs = rd_kafka_headers_new(r->nheaders);
            for (size_t h = 0; h < r->nheaders; h++)
                rd_kafka_header_add(hdrs, r->headers[h].name, -1, r->headers[h].value,
                                    r->headers[h].value ? (ssize_t)r->headers[h].len : 0);
        }
        hx_producev(rk, r->topic, r->partition, r->key, r->key_len, r->value, r->value_len, hdrs,
                    r->timestamp);
        rd_kafka_poll(rk, 0);
    }
    hx_producer_finish(rk, &dr, (long long)n);
}

void hx_produce_seq(const char *bootstrap, const char *topic, int partitions, int64_t first_seq,
                    int64_t count)
{
    struct hx_dr dr = {0};
    rd_kafka_t *rk = hx_producer(bootstrap, "lz4", &dr);
    char key[32], value[512];

    hx_check_topic(rk, topic, partitions);
    for (int64_t seq = first_seq; seq < first_seq + count; seq++) {
        for (int32_t p = 0; p < partitions; p++) {
            int klen = snprintf(key, sizeof(key), "k%" PRId64, seq);
            int vlen = seq_value_format(value, sizeof(value), topic, p, seq);

            hx_producev(rk, topic, p, key, (size_t)klen, value, (size_t)vlen, NULL, 0);
        }
        if (seq % 1000 == 0)
            rd_kafka_poll(rk, 0);
    }
    hx_producer_finish(rk, &dr, (long long)count * partitions);
}

const char *hx_seq_value(const char *topic, int32_t partition, int64_t seq, char *buf, size_t size)
{
    seq_value_format(buf, size, topic, partition, seq);
    return buf;
}
