#!/bin/sh
# produce-orders.sh - the compose demo's one-shot loader.  Runs in the
# apache/kafka image: creates the topic (4 partitions) unless it exists, then
# produces SAMPLE_ORDERS sample orders (default 1000) with
# kafka-console-producer.sh, keyed by customer (so a customer's orders stay
# in order in one partition) and with a `source` header.  Every run adds
# another SAMPLE_ORDERS records:
#
#   docker compose -f docker/compose.yaml run --rm producer
set -eu

bootstrap=${KAFKA_BOOTSTRAP:-kafka:9092}
topic=${TOPIC:-orders}
partitions=${PARTITIONS:-4}
count=${SAMPLE_ORDERS:-1000}
bin=${KAFKA_BIN:-/opt/kafka/bin}

case "$count" in
'' | *[!0-9]*)
    echo "produce-orders: SAMPLE_ORDERS must be a number (got '$count')" >&2
    exit 2
    ;;
esac

"$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --create --if-not-exists \
    --topic "$topic" --partitions "$partitions" --replication-factor 1
"$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --describe --topic "$topic"

# One line per record: <headers>|<key>|<value>.  The run id keeps order ids
# unique when the loader runs again.
run=$(date +%s)
awk -v n="$count" -v run="$run" 'BEGIN {
    for (i = 1; i <= n; i++) {
        c = i % 50
        printf "source:compose-demo|customer-%d|{\"order_id\":\"%s-%d\",\"customer\":\"customer-%d\",\"amount_cents\":%d,\"currency\":\"EUR\"}\n", c, run, i, c, (i * 7919) % 100000
    }
}' | "$bin/kafka-console-producer.sh" --bootstrap-server "$bootstrap" --topic "$topic" \
    --producer-property acks=all \
    --property parse.headers=true --property 'headers.delimiter=|' \
    --property 'headers.separator=,' --property 'headers.key.separator=:' \
    --property parse.key=true --property 'key.separator=|'

echo "produce-orders: produced $count records to $topic; end offsets per partition:"
"$bin/kafka-get-offsets.sh" --bootstrap-server "$bootstrap" --topic "$topic"
