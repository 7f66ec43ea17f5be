#!/usr/bin/python3
"""naive_consumer.py - what a user writes instead of the sidecar.

A consumer in a consumer group (confluent_kafka) that inserts each batch it
polls into PostgreSQL (psycopg2, execute_values), commits the transaction,
then commits the offsets to Kafka synchronously: at-least-once (a crash
between the two commits inserts the batch again), no leases, no fencing.
bench.py runs it against the same topic and the same table shape as the
sidecar's postgres sink; it stops once --expect records are in.

Prints one JSON line on stdout at exit: records, batches, assigned (when
the group gave it its partitions) and done (after the last commit), as
time.time().
"""
import argparse
import datetime
import json
import time

import psycopg2
import psycopg2.extras
from confluent_kafka import Consumer

UTC = datetime.timezone.utc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--table", required=True, help="schema.name, trusted (bench.py's own table)")
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--batch", type=int, default=1000)
    a = ap.parse_args()

    consumer = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": a.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    assigned = []
    consumer.subscribe([a.topic], on_assign=lambda c, parts: assigned.append(time.time()))
    db = psycopg2.connect(a.dsn)
    cur = db.cursor()
    sql = 'INSERT INTO %s (topic, partition, "offset", key, value, headers, ts) VALUES %%s' % a.table
    template = "(%s, %s, %s, %s, %s::jsonb, '{}'::jsonb, %s)"
    done = batches = 0
    while done < a.expect:
        rows = []
        for m in consumer.consume(num_messages=a.batch, timeout=1.0):
            if m.error():
                continue
            key, value = m.key(), m.value()
            ts = m.timestamp()[1]
            rows.append((m.topic(), m.partition(), m.offset(),
                         key.decode() if key is not None else None,
                         value.decode() if value is not None else None,
                         datetime.datetime.fromtimestamp(ts / 1000, UTC) if ts > 0 else None))
        if not rows:
            continue
        psycopg2.extras.execute_values(cur, sql, rows, template=template, page_size=len(rows))
        db.commit()
        consumer.commit(asynchronous=False)
        done += len(rows)
        batches += 1
    end = time.time()
    consumer.close()
    db.close()
    print(json.dumps({"records": done, "batches": batches, "assigned": assigned[0], "done": end}))


if __name__ == "__main__":
    main()
