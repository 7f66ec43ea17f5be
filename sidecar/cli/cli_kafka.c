/*
 * cli_kafka.c - Kafka look-ups for the command line (see cli_kafka.h).
 */
#include "cli/cli_kafka.h"

#include <stdio.h>
#include <string.h>

#include "base/sc_log.h"
#include "config/sc_config.h"

static void kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk, (void)level;
    /* Connection noise while looking up; the outcome is reported by the caller. */
    sc_debug(NULL, "librdkafka %s: %s", fac, buf);
}

static int kafka_set(rd_kafka_conf_t *conf, const char *key, const char *value, char *err,
                     size_t errsize)
{
    char why[512];
    if (rd_kafka_conf_set(conf, key, value, why, sizeof(why)) == RD_KAFKA_CONF_OK)
        return 0;
    snprintf(err, errsize, "kafka property \"%s\": %s", key, why);
    return -1;
}

rd_kafka_t *cli_kafka_new(const struct sc_config *cfg, const struct sc_pipeline_conf *p, char *err,
                          size_t errsize)
{
    rd_kafka_t *rk = NULL;
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (size_t i = 0; i < cfg->kafka.properties.count; i++)
        if (kafka_set(conf, cfg->kafka.properties.items[i].key,
                      cfg->kafka.properties.items[i].value, err, errsize) != 0)
            goto out;
    for (size_t i = 0; p && i < p->kafka_properties.count; i++)
        if (kafka_set(conf, p->kafka_properties.items[i].key, p->kafka_properties.items[i].value,
                      err, errsize) != 0)
            goto out;
    if (kafka_set(conf, "bootstrap.servers", cfg->kafka.bootstrap_servers, err, errsize) != 0 ||
        kafka_set(conf, "client.id", "kafka-sidecar-cli", err, errsize) != 0 ||
        /* A look-up must not create the topic it asks about. */
        kafka_set(conf, "allow.auto.create.topics", "false", err, errsize) != 0)
        goto out;
    rd_kafka_conf_set_log_cb(conf, kafka_log);
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
    if (!rk) {
        snprintf(err, errsize, "could not create a Kafka client: %s", why);
        goto out;
    }
    conf = NULL; /* owned by rk now */
out:
    if (conf)
        rd_kafka_conf_destroy(conf);
    return rk;
}

enum cli_kafka_rc cli_kafka_partitions(rd_kafka_t *rk, const char *topic, int timeout_ms,
                                       int *count, char *err, size_t errsize)
{
    enum cli_kafka_rc rc = CLI_KAFKA_FAILED;
    const struct rd_kafka_metadata *md = NULL;
    /* All topics: a request that names the topic may create it (brokers with
     * auto.create.topics.enable, the mock cluster), and a look-up must not. */
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errsize, "could not read the metadata of topic \"%s\": %s", topic,
                 rd_kafka_err2str(e));
        return CLI_KAFKA_FAILED;
    }
    const struct rd_kafka_metadata_topic *t = NULL;
    for (int i = 0; i < md->topic_cnt; i++)
        if (strcmp(md->topics[i].topic, topic) == 0)
            t = &md->topics[i];
    if (!t || t->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
        (t->err == RD_KAFKA_RESP_ERR_NO_ERROR && t->partition_cnt == 0)) {
        snprintf(err, errsize, "topic \"%s\" does not exist", topic);
        rc = CLI_KAFKA_NOT_FOUND;
        goto out;
    }
    if (t->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errsize, "topic \"%s\": %s", topic, rd_kafka_err2str(t->err));
        goto out;
    }
    *count = t->partition_cnt;
    rc = CLI_KAFKA_OK;
out:
    rd_kafka_metadata_destroy(md);
    return rc;
}

enum cli_kafka_rc cli_kafka_log_range(rd_kafka_t *rk, const char *topic, int32_t partition,
                                      int timeout_ms, int64_t *start, int64_t *end, char *err,
                                      size_t errsize)
{
    int64_t low = -1, high = -1;
    rd_kafka_resp_err_t e =
        rd_kafka_query_watermark_offsets(rk, topic, partition, &low, &high, timeout_ms);
    if (e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || e == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
        e == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) {
        snprintf(err, errsize, "%s[%d] does not exist (%s)", topic, (int)partition,
                 rd_kafka_err2str(e));
        return CLI_KAFKA_NOT_FOUND;
    }
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errsize, "could not query the offsets of %s[%d]: %s", topic, (int)partition,
                 rd_kafka_err2str(e));
        return CLI_KAFKA_FAILED;
    }
    *start = low;
    *end = high;
    return CLI_KAFKA_OK;
}
