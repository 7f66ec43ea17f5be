#!/usr/bin/env bash
# A local playground: starts a throwaway PostgreSQL and the librdkafka mock
# Kafka cluster, creates the sidecar's schema, writes a ready config for each
# sink, prints how to reach all of it, and keeps it running until Ctrl-C,
# which stops everything and removes what it created.
#
#   bash tests/playground.sh [--topic NAME:PARTITIONS]... [--keep-data]
#
# Stops on Ctrl-C or SIGTERM (a script that starts it in the background with
# & has SIGINT ignored: use SIGTERM there).  Default topic: orders:4.
# --keep-data leaves the work directory (configs, sink output, PostgreSQL's
# data and log) behind on exit.  Builds into build/ first (installing the
# Debian packages it needs), unless SIDECAR_BIN_DIR names a directory that
# holds sidecar, kafka-mock and kafka-produce already.
#
# The lines a script can read: "DSN: ...", "BOOTSTRAP: ...", "CONFIG <sink>: ...",
# "DATA: ...", "PIDS: <postgres> <kafka-mock>" and, last, "playground ready".
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

topics=()
keep=0
while [ $# -gt 0 ]; do
    case $1 in
    --topic)
        [ $# -ge 2 ] || { echo "playground: --topic needs NAME:PARTITIONS" >&2; exit 2; }
        [[ $2 =~ ^[A-Za-z0-9._-]+:[0-9]+$ ]] || { echo "playground: --topic $2: expected NAME:PARTITIONS, e.g. orders:4" >&2; exit 2; }
        topics+=("$2")
        shift 2
        ;;
    --keep-data) keep=1; shift ;;
    -h | --help) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "playground: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
done
[ ${#topics[@]} -gt 0 ] || topics=(orders:4)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ -n "${SIDECAR_BIN_DIR:-}" ]; then
    bindir=$SIDECAR_BIN_DIR
else
    say "Installing packages and building (the first run takes a few minutes)"
    .ci/install-deps >/dev/null
    .ci/build build >/dev/null
    bindir=$root/build/sidecar
fi
for b in sidecar kafka-mock kafka-produce; do
    [ -x "$bindir/$b" ] || { echo "playground: $bindir/$b is missing" >&2; exit 1; }
done

work=$(mktemp -d /tmp/sidecar-playground-XXXXXX)
chmod 755 "$work"
pgdata=$work/pg
pgbin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
mock_pid=
stopping=0

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    [ "$stopping" = 1 ] && return
    stopping=1
    set +e
    trap '' INT TERM
    echo
    say "Stopping the playground"
    if [ -n "$mock_pid" ]; then
        exec 3>&- # the mock exits when its stdin closes
        kill "$mock_pid" 2>/dev/null
        wait "$mock_pid" 2>/dev/null
    fi
    if [ -f "$pgdata/postmaster.pid" ]; then
        as_postgres "$pgbin/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null 2>&1 ||
            as_postgres "$pgbin/pg_ctl" -D "$pgdata" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ "$keep" = 1 ]; then
        echo "kept $work"
    else
        rm -rf "$work"
    fi
    echo "stopped"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

say "Starting PostgreSQL in $pgdata"
mkdir -p "$pgdata"
[ "$(id -u)" = 0 ] && chown postgres "$pgdata" "$work"
as_postgres "$pgbin/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --locale=C >/dev/null
pgport=$(free_port)
# (pg_ctl detaches the server from this terminal: Ctrl-C reaches this script, which stops it.)
as_postgres "$pgbin/pg_ctl" -D "$pgdata" -l "$work/pg.log" -w \
    -o "-p $pgport -k $work -c listen_addresses=127.0.0.1" start >/dev/null
pg_pid=$(head -n 1 "$pgdata/postmaster.pid")
dsn="host=127.0.0.1 port=$pgport user=postgres dbname=postgres"

say "Starting the mock Kafka cluster (topics: ${topics[*]})"
mock_args=(--brokers 3)
for t in "${topics[@]}"; do mock_args+=(--topic "$t"); done
mkfifo "$work/mock.in"
"$bindir/kafka-mock" "${mock_args[@]}" <"$work/mock.in" >"$work/mock.out" 2>"$work/mock.log" &
mock_pid=$!
exec 3>"$work/mock.in" # keeps the mock's stdin open: fault commands go here too
for _ in $(seq 100); do
    [ -s "$work/mock.out" ] && break
    sleep 0.1
done
bootstrap=$(head -n 1 "$work/mock.out")
[ -n "$bootstrap" ] || { echo "playground: kafka-mock did not start:" >&2; cat "$work/mock.log" >&2; exit 1; }

first_topic=${topics[0]%%:*}
admin=127.0.0.1:$(free_port)
mkdir -p "$work/out"
# One ready config per sink: literal addresses, so `sidecar ... -c FILE` needs nothing else.
write_config() { # FILE PIPELINE SINK_JSON
    cat >"$1" <<EOF
{
  "postgres": {"dsn": "$dsn"},
  "kafka": {"bootstrap.servers": "$bootstrap"},
  "admin": {"listen": "$admin"},
  "log": {"level": "info", "format": "text"},
  "pipelines": [{
    "name": "$2",
    "topics": ["$first_topic"],
    "start_from": "earliest",
    "sink": $3
  }]
}
EOF
}
write_config "$work/file.json" "$first_topic-to-files" \
    "{\"type\": \"file\", \"path\": \"$work/out/{topic}/{partition}.jsonl\"}"
write_config "$work/postgres.json" "$first_topic-to-table" \
    "{\"type\": \"postgres\", \"table\": \"app.${first_topic//[.-]/_}_events\"}"
write_config "$work/http.json" "$first_topic-to-http" \
    "{\"type\": \"http\", \"url\": \"http://127.0.0.1:8080/ingest\"}"
if ! migrated=$("$bindir/sidecar" migrate -c "$work/file.json" 2>&1); then
    echo "$migrated" >&2
    exit 1
fi

cat <<EOF

PostgreSQL   $dsn
             psql -h 127.0.0.1 -p $pgport -U postgres          (schema "sidecar" is migrated)
Kafka        $bootstrap   (the librdkafka mock cluster: 3 brokers, in memory)
             topics: ${topics[*]}
             faults: echo 'broker 1 down' > $work/mock.in   (see docs/testing.md)
Configs      $work/file.json      file sink into $work/out
             $work/postgres.json  rows in PostgreSQL, table app.${first_topic//[.-]/_}_events
             $work/http.json      POST to http://127.0.0.1:8080/ingest (the receiver in docs/sinks.md)
             admin endpoint of each: http://$admin (one sidecar at a time)

Try it, in another terminal:
  $bindir/sidecar run -c $work/file.json
  $bindir/kafka-produce -b $bootstrap -t $first_topic --count 1000
  $bindir/sidecar status -c $work/file.json
  curl -s http://$admin/readyz

DSN: $dsn
BOOTSTRAP: $bootstrap
CONFIG file: $work/file.json
CONFIG postgres: $work/postgres.json
CONFIG http: $work/http.json
DATA: $work
PIDS: $pg_pid $mock_pid
playground ready (Ctrl-C stops PostgreSQL and the mock cluster and removes $work)
EOF

# Until Ctrl-C (or the mock cluster dies).
while kill -0 "$mock_pid" 2>/dev/null && [ -f "$pgdata/postmaster.pid" ]; do
    sleep 1 &
    wait $! || true
done
echo "playground: PostgreSQL or the mock cluster stopped on its own" >&2
exit 1
