/*
 * kafka-mock - a Kafka-protocol mock cluster in its own process, with a
 * control channel on stdin.
 *
 * librdkafka's mock cluster (rdkafka_mock.h) speaks the real Kafka protocol
 * on localhost TCP listeners, so real clients (the sidecar, kcat, test code)
 * talk to it unchanged. Its fault injection API (broker down, RTT, request
 * errors, leader moves) is only callable inside the process that hosts the
 * cluster, so this helper hosts it and turns one command line on stdin into
 * one reply line on stdout: "ok[ DATA]" or "error: REASON".
 *
 * The first line on stdout is the bootstrap address. The process exits 0 on
 * "quit", on stdin EOF (so it dies with the process that started it) and on
 * SIGTERM/SIGINT.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MOCK_MAX_LINE      4096
#define MOCK_MAX_ARGS      64
#define MOCK_MAX_TOPICS    256
#define MOCK_WATERMARKS_MS 10000

struct mock {
    rd_kafka_t *host; /* dummy producer that owns the cluster; never connects */
    rd_kafka_mock_cluster_t *cluster;
    rd_kafka_t *client; /* lazily created client for watermark queries */
    int brokers;
    bool quit;
};

static volatile sig_atomic_t mock_signalled;

static void mock_on_signal(int sig)
{
    (void)sig;
    mock_signalled = 1;
}

/* ---- argument parsing ------------------------------------------------------ */

/* Parses a whole decimal integer in [min, max]; 0 ok, -1 otherwise. */
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

/* Kafka protocol API keys by name (the mock's error stacks are keyed by them). */
static const struct {
    const char *name;
    int16_t key;
} api_keys[] = {
    {"Produce", 0},
    {"Fetch", 1},
    {"ListOffsets", 2},
    {"Metadata", 3},
    {"OffsetCommit", 8},
    {"OffsetFetch", 9},
    {"FindCoordinator", 10},
    {"JoinGroup", 11},
    {"Heartbeat", 12},
    {"LeaveGroup", 13},
    {"SyncGroup", 14},
    {"DescribeGroups", 15},
    {"ListGroups", 16},
    {"SaslHandshake", 17},
    {"ApiVersions", 18},
    {"CreateTopics", 19},
    {"DeleteTopics", 20},
    {"DeleteRecords", 21},
    {"InitProducerId", 22},
    {"OffsetForLeaderEpoch", 23},
    {"AddPartitionsToTxn", 24},
    {"AddOffsetsToTxn", 25},
    {"EndTxn", 26},
    {"TxnOffsetCommit", 28},
    {"DescribeConfigs", 32},
    {"AlterConfigs", 33},
    {"SaslAuthenticate", 36},
    {"CreatePartitions", 37},
    {"DeleteGroups", 42},
    {"OffsetDelete", 47},
};

static int parse_api_key(const char *s, int16_t *out)
{
    long long v;

    for (size_t i = 0; i < sizeof(api_keys) / sizeof(api_keys[0]); i++) {
        if (strcasecmp(s, api_keys[i].name) == 0) {
            *out = api_keys[i].key;
            return 0;
        }
    }
    if (parse_ll(s, 0, INT16_MAX, &v) != 0)
        return -1;
    *out = (int16_t)v;
    return 0;
}

/*
 * Error codes by number or by librdkafka name, with or without the
 * RD_KAFKA_RESP_ERR_ prefix ("_TRANSPORT", "NOT_LEADER_FOR_PARTITION").
 */
static int parse_err(const char *s, rd_kafka_resp_err_t *out)
{
    static const char prefix[] = "RD_KAFKA_RESP_ERR_";
    const struct rd_kafka_err_desc *descs;
    size_t n;
    long long v;

    if (strncasecmp(s, prefix, sizeof(prefix) - 1) == 0)
        s += sizeof(prefix) - 1;
    /* Kafka renamed error 6 in KIP-392; librdkafka 2.0 still uses the old name. */
    if (strcasecmp(s, "NOT_LEADER_OR_FOLLOWER") == 0) {
        *out = RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION;
        return 0;
    }
    rd_kafka_get_err_descs(&descs, &n);
    for (size_t i = 0; i < n; i++) {
        if (descs[i].name != NULL && strcasecmp(s, descs[i].name) == 0) {
            *out = descs[i].code;
            return 0;
        }
    }
    if (parse_ll(s, -1000, 1000, &v) != 0)
        return -1;
    *out = (rd_kafka_resp_err_t)v;
    return 0;
}

/* A broker id, or "all" (-1, which the mock API takes as every broker). */
static int parse_broker(const struct mock *m, const char *s, bool allow_all, int32_t *out)
{
    long long v;

    if (allow_all && strcmp(s, "all") == 0) {
        *out = -1;
        return 0;
    }
    if (parse_ll(s, 1, m->brokers, &v) != 0)
        return -1;
    *out = (int32_t)v;
    return 0;
}

/* ---- commands ---------------------------------------------------------------- */

/*
 * A command handler gets the words of the line (argv[0] is the command) and
 * returns 0 with optional data in out, or -1 with the reason in out.
 */
typedef int (*mock_cmd_fn)(struct mock *m, int argc, char **argv, char *out, size_t out_size);

static int fail(char *out, size_t out_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *out, size_t out_size, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(out, out_size, fmt, ap);
    va_end(ap);
    return -1;
}

/* Maps a mock API result to a reply. */
static int mock_result(rd_kafka_resp_err_t err, char *out, size_t out_size)
{
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        return fail(out, out_size, "%s (%s)", rd_kafka_err2str(err), rd_kafka_err2name(err));
    return 0;
}

static int cmd_broker(struct mock *m, int argc, char **argv, char *out, size_t out_size)
{
    int32_t id;

    if (argc != 3 || (strcmp(argv[1], "down") != 0 && strcmp(argv[1], "up") != 0))
        return fail(out, out_size, "usage: broker down|up N|all");
    if (parse_broker(m, argv[2], true, &id) != 0)
        return fail(out, out_size, "no broker \"%s\" (brokers are 1..%d or all)", argv[2],
                    m->brokers);
    if (strcmp(argv[1], "down") == 0)
        return mock_result(rd_kafka_mock_broker_set_down(m->cluster, id), out, out_size);
    return mock_result(rd_kafka_mock_broker_set_up(m->cluster, id), out, out_size);
}

static int cmd_rtt(struct mock *m, int argc, char **argv, char *out, size_t out_size)
{
    int32_t id;
    long long ms;

    if (argc != 3)
        return fail(out, out_size, "usage: rtt N|all MS");
    if (parse_broker(m, argv[1], true, &id) != 0)
        return fail(out, out_size, "no broker \"%s\" (brokers are 1..%d or all)", argv[1],
                    m->brokers);
    if (parse_ll(argv[2], 0, 3600 * 1000, &ms) != 0)
        return fail(out, out_size, "bad rtt \"%s\" (milliseconds, 0 to reset)", argv[2]);
    return mock_result(rd_kafka_mock_broker_set_rtt(m->cluster, id, (int)ms), out, out_size);
}

static int cmd_errors(struct mock *m, int argc, char **argv, char *out, size_t out_size)
{
    rd_kafka_resp_err_t errs[MOCK_MAX_ARGS];
    int16_t key;
    size_t n = 0;

    if (argc < 3)
        return fail(out, out_size, "usage: errors APIKEY ERR [ERR...]");
    if (parse_api_key(argv[1], &key) != 0)
        return fail(out, out_size, "unknown api key \"%s\"", argv[1]);
    for (int i = 2; i < argc; i++) {
        if (parse_err(argv[i], &errs[n]) != 0)
            return fail(out, out_size, "unknown error \"%s\"", argv[i]);
        n++;
    }
    rd_kafka_mock_push_request_errors_array(m->cluster, key, n, errs);
    return 0;
}

/*
 * Per-broker errors with an optional response delay each: ERR@RTT_MS. The
 * mock only has a varargs API for these, so push them one at a time; the
 * stack is FIFO, so the order is kept.
 */
static int cmd_broker_errors(struct mock *m, int argc, char **argv, char *out, size_t out_size)
{
    int32_t id;
    int16_t key;

    if (argc < 4)
        return fail(out, out_size, "usage: broker-errors BROKER APIKEY ERR[@RTT_MS]...");
    if (parse_broker(m, argv[1], false, &id) != 0)
        return fail(out, out_size, "no broker \"%s\" (brokers are 1..%d)", argv[1], m->brokers);
    if (parse_api_key(argv[2], &key) != 0)
        return fail(out, out_size, "unknown api key \"%s\"", argv[2]);
    for (int i = 3; i < argc; i++) {
        char *at = strchr(argv[i], '@');
        rd_kafka_resp_err_t err;
        long long rtt = 0;

        if (at != NULL) {
            *at = '\0';
            if (parse_ll(at + 1, 0, 3600 * 1000, &rtt) != 0)
                return fail(out, out_size, "bad rtt \"%s\"", at + 1);
        }
        if (parse_err(argv[i], &err) != 0)
            return fail(out, out_size, "unknown error \"%s\"", argv[i]);
        if (mock_result(
                rd_kafka_mock_broker_push_request_error_rtts(m->cluster, id, key, 1, err, (int)rtt),
                out, out_size) != 0)
            return -1;
    }
    return 0;
}

static int cmd_clear_errors(struct mock *m, int argc, char **argv, char *out, size_t out_size)
{
    int16_t key;

    if (argc != 2)
        return fail(out, out_size, "usage: clear-errors APIKEY");
    if (parse_api_key(argv[1], &key) != 0)
        return fail(out, out_size, "unknown api key \"%s\"", argv[1]);
    rd_kafka_mock_clear_request_errors(m->cluster, key);
    return 0;
}

static int cmd_leader(struct mock *m, int argc, char **argv, char *out, size_t out_size)
{
    long long part;
    int32_t id;

    if (argc != 4)
        return fail(out, out_size, "usage: leader TOPIC PARTITION BROKER|-1");
    if (parse_ll(argv[2], 0, INT32_MAX, &part) != 0)
        return fail(out, out_size, "bad partition \"%s\"", argv[2]);
    if (strcmp(argv[3], "-1") == 0)
        id = -1;
    else if (parse_broker(m, argv[3], false, &id) != 0)
        return fail(out, out_size, "no broker \"%s\" (brokers are 1..%d, or -1 for none)", argv[3],
                    m->brokers);
    return mock_result(rd_kafka_mock_partition_set_leader(m->cluster, argv[1], (int32_t)part, id),
                       out, out_size);
}

static int topic_create(struct mock *m, const char *name, const char *parts_s, const char *rf_s,
                        char *out, size_t out_size)
{
    long long parts, rf = m->brokers < 3 ? m->brokers : 3;

    if (*name == '\0' || strlen(name) > 249)
        return fail(out, out_size, "bad topic name \"%s\"", name);
    if (parse_ll(parts_s, 1, 100000, &parts) != 0)
        return fail(out, out_size, "bad partition count \"%s\"", parts_s);
    if (rf_s != NULL && parse_ll(rf_s, 1, m->brokers, &rf) != 0)
        return fail(out, out_size, "bad replication factor \"%s\" (1..%d)", rf_s, m->brokers);
    return mock_result(rd_kafka_mock_topic_create(m->cluster, name, (int)parts, (int)rf), out,
                       out_size);
}

static int cmd_topic(struct mock *m, int argc, char **argv, char *out, size_t out_size)
{
    rd_kafka_resp_err_t err;

    if (argc >= 2 && strcmp(argv[1], "create") == 0 && (argc == 4 || argc == 5))
        return topic_create(m, argv[2], argv[3], argc == 5 ? argv[4] : NULL, out, out_size);
    if (argc == 4 && strcmp(argv[1], "error") == 0) {
        if (parse_err(argv[3], &err) != 0)
            return fail(out, out_size, "unknown error \"%s\"", argv[3]);
        rd_kafka_mock_topic_set_error(m->cluster, argv[2], err);
        return 0;
    }
    return fail(out, out_size, "usage: topic create NAME PARTITIONS [RF] | topic error NAME ERR");
}

static int cmd_coordinator(struct mock *m, int argc, char **argv, char *out, size_t out_size)
{
    int32_t id;

    if (argc != 4 || (strcmp(argv[1], "group") != 0 && strcmp(argv[1], "transaction") != 0))
        return fail(out, out_size, "usage: coordinator group|transaction KEY BROKER");
    if (parse_broker(m, argv[3], false, &id) != 0)
        return fail(out, out_size, "no broker \"%s\" (brokers are 1..%d)", argv[3], m->brokers);
    return mock_result(rd_kafka_mock_coordinator_set(m->cluster, argv[1], argv[2], id), out,
                       out_size);
}

/* The internal client's own log lines would only repeat what the reply says. */
static void quiet_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    (void)level;
    (void)fac;
    (void)buf;
}

/*
 * The mock has no API to read a partition's offsets, so ask it over the
 * protocol like any client. The client is kept between queries, and its
 * periodic metadata refresh is off, so it does not consume request errors
 * that a test pushed for the client under test.
 */
static int cmd_watermarks(struct mock *m, int argc, char **argv, char *out, size_t out_size)
{
    char errstr[512];
    long long part;
    int64_t lo, hi;
    const struct rd_kafka_metadata *md;
    int nparts = -1;
    rd_kafka_resp_err_t err;

    if (argc != 3)
        return fail(out, out_size, "usage: watermarks TOPIC PARTITION");
    if (parse_ll(argv[2], 0, INT32_MAX, &part) != 0)
        return fail(out, out_size, "bad partition \"%s\"", argv[2]);
    if (m->client == NULL) {
        rd_kafka_conf_t *conf = rd_kafka_conf_new();

        if (rd_kafka_conf_set(conf, "bootstrap.servers",
                              rd_kafka_mock_cluster_bootstraps(m->cluster), errstr,
                              sizeof(errstr)) != RD_KAFKA_CONF_OK ||
            rd_kafka_conf_set(conf, "topic.metadata.refresh.interval.ms", "-1", errstr,
                              sizeof(errstr)) != RD_KAFKA_CONF_OK ||
            rd_kafka_conf_set(conf, "allow.auto.create.topics", "false", errstr, sizeof(errstr)) !=
                RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            return fail(out, out_size, "could not configure the watermark client: %s", errstr);
        }
        rd_kafka_conf_set_log_cb(conf, quiet_log);
        m->client = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
        if (m->client == NULL) {
            rd_kafka_conf_destroy(conf);
            return fail(out, out_size, "could not create the watermark client: %s", errstr);
        }
    }
    /* Naming an unknown topic in a Metadata request makes the mock create it: check first. */
    err = rd_kafka_metadata(m->client, 1, NULL, &md, MOCK_WATERMARKS_MS);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        return fail(out, out_size, "metadata: %s (%s)", rd_kafka_err2str(err),
                    rd_kafka_err2name(err));
    for (int i = 0; i < md->topic_cnt; i++) {
        if (strcmp(md->topics[i].topic, argv[1]) == 0)
            nparts = md->topics[i].partition_cnt;
    }
    rd_kafka_metadata_destroy(md);
    if (nparts < 0)
        return fail(out, out_size, "no topic \"%s\"", argv[1]);
    if (part >= nparts)
        return fail(out, out_size, "topic \"%s\" has %d partitions, no partition %lld", argv[1],
                    nparts, part);
    err = rd_kafka_query_watermark_offsets(m->client, argv[1], (int32_t)part, &lo, &hi,
                                           MOCK_WATERMARKS_MS);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        return fail(out, out_size, "%s [%lld]: %s (%s)", argv[1], part, rd_kafka_err2str(err),
                    rd_kafka_err2name(err));
    snprintf(out, out_size, "%" PRId64 " %" PRId64, lo, hi);
    return 0;
}

static int cmd_bootstrap(struct mock *m, int argc, char **argv, char *out, size_t out_size)
{
    if (argc != 1)
        return fail(out, out_size, "usage: bootstrap");
    snprintf(out, out_size, "%s", rd_kafka_mock_cluster_bootstraps(m->cluster));
    return 0;
}

static int cmd_help(struct mock *m, int argc, char **argv, char *out, size_t out_size);

static int cmd_quit(struct mock *m, int argc, char **argv, char *out, size_t out_size)
{
    m->quit = true;
    return 0;
}

static const struct mock_cmd {
    const char *name;
    mock_cmd_fn fn;
    const char *usage;
} mock_cmds[] = {
    {"broker", cmd_broker, "broker down|up N|all"},
    {"rtt", cmd_rtt, "rtt N|all MS"},
    {"errors", cmd_errors, "errors APIKEY ERR [ERR...]"},
    {"broker-errors", cmd_broker_errors, "broker-errors BROKER APIKEY ERR[@RTT_MS]..."},
    {"clear-errors", cmd_clear_errors, "clear-errors APIKEY"},
    {"leader", cmd_leader, "leader TOPIC PARTITION BROKER|-1"},
    {"topic", cmd_topic, "topic create NAME PARTITIONS [RF] | topic error NAME ERR"},
    {"coordinator", cmd_coordinator, "coordinator group|transaction KEY BROKER"},
    {"watermarks", cmd_watermarks, "watermarks TOPIC PARTITION"},
    {"bootstrap", cmd_bootstrap, "bootstrap"},
    {"help", cmd_help, "help"},
    {"quit", cmd_quit, "quit"},
};

static int cmd_help(struct mock *m, int argc, char **argv, char *out, size_t out_size)
{
    size_t len = 0;

    out[0] = '\0';
    for (size_t i = 0; i < sizeof(mock_cmds) / sizeof(mock_cmds[0]) && len < out_size; i++) {
        int n = snprintf(out + len, out_size - len, "%s%s", i ? "; " : "", mock_cmds[i].usage);
        if (n < 0)
            break;
        len += (size_t)n;
    }
    return 0;
}

/* Runs one command line and writes its single reply line to stdout. */
static void mock_run_line(struct mock *m, char *line)
{
    char *argv[MOCK_MAX_ARGS + 1];
    char out[2048] = "";
    int argc = 0, rc = -1;
    const struct mock_cmd *cmd = NULL;

    for (char *save = NULL, *w = strtok_r(line, " \t\r", &save); w != NULL;
         w = strtok_r(NULL, " \t\r", &save)) {
        if (argc == MOCK_MAX_ARGS) {
            fail(out, sizeof(out), "too many words (at most %d)", MOCK_MAX_ARGS);
            goto reply;
        }
        argv[argc++] = w;
    }
    argv[argc] = NULL;
    if (argc == 0) {
        fail(out, sizeof(out), "empty command (try help)");
        goto reply;
    }
    for (size_t i = 0; i < sizeof(mock_cmds) / sizeof(mock_cmds[0]); i++) {
        if (strcmp(argv[0], mock_cmds[i].name) == 0)
            cmd = &mock_cmds[i];
    }
    if (cmd == NULL) {
        fail(out, sizeof(out), "unknown command \"%s\" (try help)", argv[0]);
        goto reply;
    }
    rc = cmd->fn(m, argc, argv, out, sizeof(out));

reply:
    if (rc == 0)
        printf("ok%s%s\n", out[0] ? " " : "", out);
    else
        printf("error: %s\n", out);
    /* A parent that is gone cannot read replies: treat it like stdin EOF. */
    if (fflush(stdout) != 0)
        m->quit = true;
}

/* ---- main ---------------------------------------------------------------------- */

/*
 * The host handle has no bootstrap.servers on purpose (it only owns the
 * cluster), which librdkafka reports as a configuration warning: drop that
 * one, keep other warnings and errors on stderr, and debug lines too when
 * KAFKA_MOCK_DEBUG asks for them.
 */
static void host_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    const char *debug = getenv("KAFKA_MOCK_DEBUG");
    if ((level > LOG_WARNING && !(debug && *debug)) || strcmp(fac, "CONFWARN") == 0)
        return;
    fprintf(stderr, "kafka-mock: %s: %s\n", fac, buf);
}

static void usage(FILE *f)
{
    fputs("usage: kafka-mock [--brokers N] [--topic NAME:PARTITIONS[:RF]]... [--help]\n"
          "\n"
          "Runs a librdkafka mock Kafka cluster (real Kafka protocol on 127.0.0.1) until\n"
          "\"quit\", stdin EOF, SIGTERM or SIGINT. The first line on stdout is the\n"
          "bootstrap address (host:port,host:port,...). Then every line read on stdin is\n"
          "a command answered by exactly one line: \"ok[ DATA]\" or \"error: REASON\".\n"
          "\n"
          "options:\n"
          "  -b, --brokers N                 brokers, ids 1..N (default 3)\n"
          "  -t, --topic NAME:PARTITIONS[:RF]  create a topic (repeatable; RF defaults to\n"
          "                                  min(3, brokers))\n"
          "  -h, --help                      this text\n"
          "\n"
          "commands:\n"
          "  broker down N|all               close the broker's connections, refuse new ones\n"
          "                                  (partition leadership does not move)\n"
          "  broker up N|all                 accept connections again\n"
          "  rtt N|all MS                    delay every response of the broker by MS\n"
          "  errors APIKEY ERR [ERR...]      the next requests of that type, on any broker,\n"
          "                                  fail with these errors, one per request\n"
          "  broker-errors BROKER APIKEY ERR[@RTT_MS]...\n"
          "                                  same for one broker, each with a response delay\n"
          "  clear-errors APIKEY             drop the pending cluster-wide errors of that type\n"
          "  leader TOPIC PARTITION BROKER   move partition leadership (-1: no leader)\n"
          "  topic create NAME PARTITIONS [RF]\n"
          "  topic error NAME ERR            Metadata reports this error for the topic\n"
          "                                  (NO_ERROR to clear)\n"
          "  coordinator group|transaction KEY BROKER\n"
          "                                  pin a group's (transactional id's) coordinator\n"
          "  watermarks TOPIC PARTITION      reply \"ok LOW HIGH\" (queried over the protocol,\n"
          "                                  so it fails while the leader is down)\n"
          "  bootstrap                       reply \"ok ADDRESS\"\n"
          "  help                            one-line command summary\n"
          "  quit                            reply ok and exit 0\n"
          "\n"
          "APIKEY is a number or a name: Produce, Fetch, ListOffsets, Metadata,\n"
          "OffsetCommit, OffsetFetch, FindCoordinator, JoinGroup, Heartbeat, LeaveGroup,\n"
          "SyncGroup, ApiVersions, InitProducerId, ... (case-insensitive).\n"
          "ERR is a number or a librdkafka error name without the RD_KAFKA_RESP_ERR_\n"
          "prefix: NOT_LEADER_FOR_PARTITION, REQUEST_TIMED_OUT, NOT_COORDINATOR,\n"
          "_TRANSPORT (the broker drops the connection), ...\n"
          "\n"
          "Errors pushed with \"errors\" hit the next requests of that type from ANY\n"
          "client, including this tool's own \"watermarks\" (Metadata, ListOffsets).\n"
          "\n"
          "environment: KAFKA_MOCK_DEBUG=CONTEXTS (e.g. \"mock\") prints librdkafka's debug\n"
          "log of those contexts on stderr: group membership, connections, rebalances.\n"
          "\n"
          "limits of the mock (librdkafka 2.0): no SSL/SASL, no admin API, data in memory\n"
          "only; about 5 MiB of batches kept per partition (older batches are dropped,\n"
          "the low watermark moves); a topic named in a client's Metadata request is\n"
          "auto-created with 4 partitions; every group rebalance takes 3-5 s.\n"
          "\n"
          "examples:\n"
          "  kafka-mock --brokers 3 --topic orders:4 --topic audit:1:1\n"
          "  printf 'errors Fetch NOT_LEADER_FOR_PARTITION _TRANSPORT\\n' | kafka-mock -t t:1\n"
          "  # interactively:\n"
          "  $ kafka-mock -t orders:2\n"
          "  127.0.0.1:40213,127.0.0.1:37521,127.0.0.1:45113\n"
          "  broker down 1\n"
          "  ok\n"
          "  watermarks orders 0\n"
          "  ok 0 0\n",
          f);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'},
        {"topic", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct mock m = {.brokers = 3};
    struct {
        char *name, *parts, *rf; /* split in place from NAME:PARTITIONS[:RF] */
    } topics[MOCK_MAX_TOPICS];
    size_t ntopics = 0;
    char errstr[512], out[512];
    rd_kafka_conf_t *conf;
    struct sigaction sa;
    char buf[MOCK_MAX_LINE];
    size_t len = 0;
    bool overlong = false;
    long long v;
    int opt;

    while ((opt = getopt_long(argc, argv, "b:t:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            if (parse_ll(optarg, 1, 100, &v) != 0) {
                fprintf(stderr, "kafka-mock: --brokers: expected 1..100, got \"%s\"\n", optarg);
                return 2;
            }
            m.brokers = (int)v;
            break;
        case 't':
            if (ntopics == MOCK_MAX_TOPICS) {
                fprintf(stderr, "kafka-mock: at most %d --topic options\n", MOCK_MAX_TOPICS);
                return 2;
            }
            topics[ntopics++].name = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "kafka-mock: unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return 2;
    }
    /* Validate the topic specs before starting anything. */
    for (size_t i = 0; i < ntopics; i++) {
        char *name = topics[i].name, *parts = strchr(name, ':'), *rf = NULL;

        if (parts != NULL) {
            *parts++ = '\0';
            rf = strchr(parts, ':');
            if (rf != NULL)
                *rf++ = '\0';
        }
        if (parts == NULL || *name == '\0' || parse_ll(parts, 1, 100000, &v) != 0 ||
            (rf != NULL && parse_ll(rf, 1, m.brokers, &v) != 0)) {
            fprintf(stderr,
                    "kafka-mock: --topic: expected NAME:PARTITIONS[:RF] with RF <= %d brokers, "
                    "got \"%s%s%s%s%s\"\n",
                    m.brokers, name, parts ? ":" : "", parts ? parts : "", rf ? ":" : "",
                    rf ? rf : "");
            return 2;
        }
        topics[i].parts = parts;
        topics[i].rf = rf;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = mock_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    /* Write errors on stdout are handled where they happen. */
    signal(SIGPIPE, SIG_IGN);

    conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, host_log);
    const char *debug = getenv("KAFKA_MOCK_DEBUG");
    if (debug && *debug &&
        rd_kafka_conf_set(conf, "debug", debug, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "kafka-mock: KAFKA_MOCK_DEBUG=\"%s\": %s\n", debug, errstr);
        return 2;
    }
    m.host = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (m.host == NULL) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "kafka-mock: could not create the host handle: %s\n", errstr);
        return 1;
    }
    m.cluster = rd_kafka_mock_cluster_new(m.host, m.brokers);
    if (m.cluster == NULL) {
        fprintf(stderr, "kafka-mock: could not create a mock cluster of %d brokers\n", m.brokers);
        rd_kafka_destroy(m.host);
        return 1;
    }
    for (size_t i = 0; i < ntopics; i++) {
        if (topic_create(&m, topics[i].name, topics[i].parts, topics[i].rf, out, sizeof(out)) !=
            0) {
            fprintf(stderr, "kafka-mock: could not create topic \"%s\": %s\n", topics[i].name, out);
            return 1;
        }
    }
    printf("%s\n", rd_kafka_mock_cluster_bootstraps(m.cluster));
    fflush(stdout);

    while (!m.quit && !mock_signalled) {
        struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
        ssize_t n;
        char *nl;

        /* A timeout instead of blocking: the signal may land on another thread. */
        if (poll(&pfd, 1, 200) <= 0)
            continue;
        n = read(STDIN_FILENO, buf + len, sizeof(buf) - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        while (!m.quit && (nl = memchr(buf, '\n', len)) != NULL) {
            size_t line_len = (size_t)(nl - buf);

            *nl = '\0';
            if (overlong) {
                printf("error: line too long (at most %d bytes)\n", MOCK_MAX_LINE - 2);
                if (fflush(stdout) != 0)
                    m.quit = true;
                overlong = false;
            } else {
                mock_run_line(&m, buf);
            }
            memmove(buf, nl + 1, len - line_len - 1);
            len -= line_len + 1;
        }
        if (len == sizeof(buf) - 1) {
            /* Drop the rest of an overlong line, answer once at its newline. */
            overlong = true;
            len = 0;
        }
    }

    if (m.client != NULL)
        rd_kafka_destroy(m.client);
    rd_kafka_mock_cluster_destroy(m.cluster);
    rd_kafka_destroy(m.host);
    return 0;
}
