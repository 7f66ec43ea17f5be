/*
 * seq_value.h - the value of generated record number `seq` of a topic
 * partition, shared by `kafka-produce --count` and the test harness
 * (hx_seq_value) so a test can predict every byte a sink must write.
 *
 * The value is a pure function of (topic, partition, seq): compact JSON
 * with an integer, a decimal number with exactly two fraction digits and a
 * string whose zero-padded seq keeps sizes even (about 90 bytes for a
 * 6-character topic name), e.g.
 *
 *   {"topic":"orders","partition":3,"seq":1234,"amount":1234.74,"note":"orders-000000001234"}
 *
 * The amount uses integer arithmetic only, so its text never depends on
 * floating-point formatting. Kafka topic names are limited to
 * [a-zA-Z0-9._-], so the topic needs no JSON escaping.
 */
#ifndef SEQ_VALUE_H
#define SEQ_VALUE_H

#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/*
 * Formats the value into buf (NUL-terminated, truncated if size is too
 * small, like snprintf) and returns its length without the NUL.
 */
static inline int seq_value_format(char *buf, size_t size, const char *topic, int32_t partition,
                                   int64_t seq)
{
    /* Cents spread over 0..99 with a cheap multiplicative hash of seq. */
    int64_t cents = (int64_t)(((uint64_t)seq * 2654435761u) % 100u);

    return snprintf(buf, size,
                    "{\"topic\":\"%s\",\"partition\":%" PRId32 ",\"seq\":%" PRId64
                    ",\"amount\":%" PRId64 ".%02" PRId64 ",\"note\":\"%s-%012" PRId64 "\"}",
                    topic, partition, seq, seq, cents, topic, seq);
}

#endif
