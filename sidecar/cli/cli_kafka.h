/*
 * cli_kafka - short-lived Kafka look-ups for the commands that check what
 * an operator asks for against the cluster (`reset`, `check-config
 * --online`): a client configured like the pipeline's consumer, the
 * partition count of a topic and the log start and end of a partition.
 *
 * @locality the calling thread only; one client per command run.
 */
#ifndef CLI_KAFKA_H
#define CLI_KAFKA_H

#include <stdint.h>

#include <librdkafka/rdkafka.h>

struct sc_config;
struct sc_pipeline_conf;

/*
 * A consumer handle configured with the global and the pipeline's (p may
 * be NULL) properties; NULL with err set.  Nothing is subscribed.
 */
rd_kafka_t *cli_kafka_new(const struct sc_config *cfg, const struct sc_pipeline_conf *p, char *err,
                          size_t errsize);

/* What a look-up found. */
enum cli_kafka_rc {
    CLI_KAFKA_OK = 0,
    CLI_KAFKA_NOT_FOUND = 1, /* no such topic or partition: the operator's mistake */
    CLI_KAFKA_FAILED = 2,    /* the cluster did not answer (err says why) */
};

/* The number of partitions of topic (CLI_KAFKA_NOT_FOUND: no such topic). */
enum cli_kafka_rc cli_kafka_partitions(rd_kafka_t *rk, const char *topic, int timeout_ms,
                                       int *count, char *err, size_t errsize);

/*
 * The log start (oldest offset Kafka still has) and log end (the offset
 * the next record gets) of a partition, asked of its leader.
 */
enum cli_kafka_rc cli_kafka_log_range(rd_kafka_t *rk, const char *topic, int32_t partition,
                                      int timeout_ms, int64_t *start, int64_t *end, char *err,
                                      size_t errsize);

#endif
