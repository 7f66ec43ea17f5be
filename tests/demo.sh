#!/usr/bin/env bash
# The quickstart demo, end to end on embedded defaults: installs what it
# needs, builds, starts a throwaway PostgreSQL and the librdkafka mock Kafka
# cluster, produces sample orders, runs the sidecar with conf/quickstart.json,
# has it killed with SIGKILL in the middle of a batch (between writing the
# batch and committing it: a test-only failpoint), restarts it, and shows
# that every record landed in the output exactly once, with the checkpoints
# as PostgreSQL sees them.  Everything it starts is stopped and removed at
# the end (also on Ctrl-C or failure).
#
#   bash tests/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "Installing packages and building (first run takes a few minutes)"
.ci/install-deps
.ci/build build >/dev/null
bin=$root/build/sidecar/sidecar

work=$(mktemp -d /tmp/sidecar-demo-XXXXXX)
chmod 755 "$work"
pgdata=$work/pg
pgbin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
sidecar_pid=
mock_pid=

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

cleanup() {
    set +e
    [ -n "$sidecar_pid" ] && kill -9 "$sidecar_pid" 2>/dev/null
    [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null
    if [ -f "$pgdata/postmaster.pid" ]; then
        as_postgres "$pgbin/pg_ctl" -D "$pgdata" -m immediate stop >/dev/null 2>&1
    fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

say "Starting a throwaway PostgreSQL in $work"
mkdir -p "$pgdata"
[ "$(id -u)" = 0 ] && chown postgres "$pgdata" "$work"
as_postgres "$pgbin/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --locale=C >/dev/null
pgport=$(free_port)
as_postgres "$pgbin/pg_ctl" -D "$pgdata" -l "$work/pg.log" -w \
    -o "-p $pgport -k $work -c listen_addresses=127.0.0.1" start >/dev/null
export SIDECAR_PG_DSN="host=127.0.0.1 port=$pgport user=postgres dbname=postgres"
psql_() { psql -X -q -h 127.0.0.1 -p "$pgport" -U postgres "$@"; }

say "Starting the mock Kafka cluster (3 brokers, topic orders with 4 partitions)"
mkfifo "$work/mock.in"
"$root/build/sidecar/kafka-mock" --brokers 3 --topic orders:4 <"$work/mock.in" >"$work/mock.out" &
mock_pid=$!
exec 3>"$work/mock.in" # keeps the mock's stdin open; it exits when we do
for _ in $(seq 100); do
    [ -s "$work/mock.out" ] && break
    sleep 0.1
done
KAFKA_BOOTSTRAP=$(head -n 1 "$work/mock.out")
export KAFKA_BOOTSTRAP
export SIDECAR_DATA_DIR=$work/out
SIDECAR_ADMIN_LISTEN=127.0.0.1:$(free_port)
export SIDECAR_ADMIN_LISTEN
export HOSTNAME=demo-sidecar
echo "bootstrap: $KAFKA_BOOTSTRAP   PostgreSQL: $SIDECAR_PG_DSN"

say "Checking the config and creating the schema"
"$bin" check-config -c conf/quickstart.json >/dev/null
"$bin" migrate -c conf/quickstart.json

committed() { psql_ -At -c "SELECT coalesce(sum(committed_offset), 0) FROM sidecar.checkpoints"; }

say "Running the sidecar while 20,000 orders arrive (5,000 per partition, 4,000/s)"
# The kill lands at the worst moment on purpose: a test-only failpoint makes the sidecar
# SIGKILL itself after writing its 8th batch to the file and before committing it.
SIDECAR_FAILPOINTS="after_write=kill#8" "$bin" run -c conf/quickstart.json >"$work/run1.log" 2>&1 &
sidecar_pid=$!
"$root/build/sidecar/kafka-produce" -b "$KAFKA_BOOTSTRAP" -t orders --count 5000 --rate 4000 &
producer_pid=$!

say "The sidecar was killed (SIGKILL) between writing a batch and committing it"
wait "$sidecar_pid" 2>/dev/null || true
sidecar_pid=
grep -h "failpoint .* fired" "$work/run1.log" | sed 's/^/  /' || true
echo "$(committed) records committed; what it left behind (note the pending batch):"
psql_ -c "SELECT topic, partition, owner, epoch, committed_offset, pending_first_offset,
                 pending_last_offset FROM sidecar.partition_status ORDER BY partition"
wait "$producer_pid"

say "Producing 4,000 more while it is down, then restarting it"
"$root/build/sidecar/kafka-produce" -b "$KAFKA_BOOTSTRAP" -t orders --count 1000 --start 5000
"$bin" run -c conf/quickstart.json >"$work/run2.log" 2>&1 &
sidecar_pid=$!
echo "(the restart waits until Kafka notices the killed consumer is gone: session.timeout.ms)"
for _ in $(seq 900); do
    [ "$(committed)" -eq 24000 ] && break
    sleep 0.1
done
kill -TERM "$sidecar_pid"
wait "$sidecar_pid"
sidecar_pid=
grep -E "replaying|replayed|lease acquired" "$work/run2.log" | sed 's/^/  /' || true

say "Checking the output: every offset exactly once, in order"
ok=1
for f in "$SIDECAR_DATA_DIR"/orders/*.jsonl; do
    n=$(wc -l <"$f")
    bad=$(grep -o '"offset":[0-9]*' "$f" | cut -d: -f2 | awk '$1 != NR - 1 { bad++ } END { print bad + 0 }')
    printf '  %-40s %6d records, %d out of place\n' "${f#"$work"/}" "$n" "$bad"
    if [ "$n" -ne 6000 ] || [ "$bad" -ne 0 ]; then ok=0; fi
done
head -c 300 "$SIDECAR_DATA_DIR/orders/0.jsonl" | head -n 2

say "The checkpoints, as users inspect them with SQL"
psql_ -c "SELECT topic, partition, owner, epoch, committed_offset, committed_write_offset,
                 pending_first_offset, state FROM sidecar.partition_status ORDER BY partition"
psql_ -c "SELECT kind, count(*) FROM sidecar.events GROUP BY kind ORDER BY kind"

if [ "$ok" = 1 ]; then
    say "Demo passed: 24,000 records, each exactly once, despite the SIGKILL"
else
    say "Demo FAILED: see above"
    exit 1
fi
