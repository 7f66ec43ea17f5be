/*
 * hx_kafka - the kafka-mock cluster (librdkafka's mock brokers) as a child
 * process driven over its control channel, and producers of known records
 * (explicit ones, or hx_produce_seq()'s generated values that tests check
 * the sinks' output against).
 */
#ifndef HX_KAFKA_H
#define HX_KAFKA_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- kafka-mock child process -------------------------------------------- */

struct hx_mock {
    pid_t pid;
    int in_fd;  /* commands to the mock's stdin */
    int out_fd; /* replies from its stdout */
    char bootstrap[256];
};

/*
 * Starts `kafka-mock --brokers N --topic T...` (topics as "name:partitions").
 * Returns once the bootstrap address was printed.
 */
void hx_mock_start(struct hx_mock *m, int brokers, const char *const *topics, size_t ntopics);
/*
 * Sends one control command line (printf-style) and waits for its reply
 * line (30 s, else the test aborts); returns 0 for "ok..." (the rest of the
 * line, if any, in reply), -1 for "error: ..." (the reason in reply).
 * reply may be NULL. Commands: see `kafka-mock --help`.
 */
int hx_mock_cmd(struct hx_mock *m, char *reply, size_t reply_size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void hx_mock_stop(struct hx_mock *m);

/* ---- producing known records --------------------------------------------- */

struct hx_header {
    const char *name;
    const void *value; /* NULL = null header value */
    size_t len;
};

struct hx_record {
    const char *topic;
    int32_t partition; /* explicit; never -1 */
    const void *key;   /* NULL = null key */
    size_t key_len;
    const void *value; /* NULL = null value (tombstone) */
    size_t value_len;
    const struct hx_header *headers;
    size_t nheaders;
    int64_t timestamp; /* ms; 0 = producer's clock */
};

/* Produces recs with acks=all and waits until every one is acknowledged. */
void hx_produce(const char *bootstrap, const struct hx_record *recs, size_t n);

/*
 * Produces count records to every partition 0..partitions-1 of topic, with
 * key "k<seq>" and value hx_seq_value(topic, partition, seq) (JSON text, ~90
 * bytes), seq starting at first_seq; lz4-compressed, acks=all.
 */
void hx_produce_seq(const char *bootstrap, const char *topic, int partitions, int64_t first_seq,
                    int64_t count);
/* The value hx_produce_seq() gives record seq of a partition (into buf). */
const char *hx_seq_value(const char *topic, int32_t partition, int64_t seq, char *buf, size_t size);

#endif
