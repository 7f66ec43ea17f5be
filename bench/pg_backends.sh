#!/usr/bin/env bash
# What PostgreSQL spends on the same rows loaded by binary COPY in different
# shapes, with nothing but psql in the picture: how much of the postgres
# sink's extra server CPU against \copy comes from splitting the load into
# one transaction per batch, and how much from two backends loading one
# table (docs/benchmarks.md, "Where the server's CPU goes").
#
#   bash bench/pg_backends.sh [--repeat N] [--batches N] [--rows N]
#
# It starts a throwaway PostgreSQL with initdb's defaults (as the postgres
# user when run as root), writes N batch files of R rows shaped like the
# bench's (the sink's default columns, ~90-byte JSON values), and runs, in
# turn and --repeat times:
#   one      one session, one transaction with one COPY per batch file
#   single   one session, one COPY of all the rows
#   two      two sessions at once, each taking every other batch file
#   turns    the same two sessions taking turns (an advisory lock per
#            transaction): two backends, never at work together
# and prints each shape's backend CPU (user + system, from /proc) as the
# median of the runs and as a ratio to "one".
set -euo pipefail

repeat=3 batches=300 rows=1764
while [ $# -gt 0 ]; do
    case "$1" in
    --repeat) repeat=$2; shift 2 ;;
    --batches) batches=$2; shift 2 ;;
    --rows) rows=$2; shift 2 ;;
    *) echo "usage: bash bench/pg_backends.sh [--repeat N] [--batches N] [--rows N]" >&2
       exit 2 ;;
    esac
done
for n in "$repeat" "$batches" "$rows"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "pg_backends: not a positive number: $n" >&2; exit 2; }
done

bindir=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
[ -n "$bindir" ] || { echo "pg_backends: no PostgreSQL server (bash .ci/install-deps)" >&2; exit 1; }
as_pg=()
[ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)

dir=$(mktemp -d /tmp/pg-backends.XXXXXX)
chmod 755 "$dir"
[ ${#as_pg[@]} -gt 0 ] && chown postgres "$dir"
cleanup() {
    "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
"${as_pg[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
"${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -w -l "$dir/log" \
    -o "-c listen_addresses='' -k $dir -p 5432" start >/dev/null
psql_() { PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p 5432 -U postgres "$@"; }

echo "pg_backends: $batches batches of $rows rows, runs: $repeat, $("$bindir/postgres" --version)"
psql_ <<SQL
CREATE TABLE src AS SELECT 'orders'::text AS topic, (g % 32)::int AS partition,
    g::bigint AS "offset", 'key-' || g AS key,
    jsonb_build_object('order_id', g, 'customer', 'c' || (g * 7 % 1000),
                       'amount', round((g % 997) * 1.37, 2), 'status', 'paid') AS value,
    NULL::jsonb AS headers, now() - g * interval '1 ms' AS ts
FROM generate_series(0, $rows - 1) g;
SELECT format('COPY (SELECT topic, partition, "offset" + %s, key, value, headers, ts FROM src) '
              'TO %L (FORMAT binary)', i * $rows, '$dir/b' || i)
FROM generate_series(0, $batches - 1) i \gexec
COPY (SELECT topic, partition, "offset" + i * $rows, key, value, headers, ts
      FROM generate_series(0, $batches - 1) i, src ORDER BY i, "offset")
    TO '$dir/ball' (FORMAT binary);
SQL

# measured: runs the SQL on its standard input in one session; prints its backend's CPU ticks.
measured() {
    {
        echo "SELECT pg_backend_pid() AS pid \\gset"
        cat
        echo "\\setenv PID :pid"
        echo "\\! awk '{print \$14 + \$15}' /proc/\$PID/stat"
    } | psql_
}

# session FIRST STEP LOCK: loads batch files FIRST, FIRST+STEP, ..., a transaction each, in
# one measured session.  LOCK: take an advisory lock in each transaction (sessions taking
# turns).
session() {
    for ((i = $1; i < batches; i += $2)); do
        if [ "$3" = lock ]; then
            echo "BEGIN; SELECT pg_advisory_xact_lock(1) \\g /dev/null"
        else
            echo "BEGIN;"
        fi
        echo "COPY dst FROM '$dir/b$i' (FORMAT binary); COMMIT;"
    done | measured
}

fresh() {
    psql_ -c "DROP TABLE IF EXISTS dst" -c "CREATE TABLE dst (topic text NOT NULL,
        partition int NOT NULL, \"offset\" bigint NOT NULL, key text, value jsonb,
        headers jsonb, ts timestamptz, PRIMARY KEY (topic, partition, \"offset\"))" \
        -c CHECKPOINT
}

ticks=$(getconf CLK_TCK)
declare -A cpu
for ((r = 1; r <= repeat; r++)); do
    for shape in one single two turns; do
        fresh
        case $shape in
        one) t=$(session 0 1 nolock) ;;
        single) t=$(echo "BEGIN; COPY dst FROM '$dir/ball' (FORMAT binary); COMMIT;" | measured) ;;
        two | turns)
            lock=nolock
            [ $shape = turns ] && lock=lock
            session 0 2 $lock >"$dir/t0" &
            session 1 2 $lock >"$dir/t1" &
            wait
            t=$(($(cat "$dir/t0") + $(cat "$dir/t1"))) ;;
        esac
        n=$(psql_ -Atc "SELECT count(*) FROM dst")
        [ "$n" -eq $((batches * rows)) ] ||
            { echo "pg_backends: $shape loaded $n rows, expected $((batches * rows))" >&2; exit 1; }
        cpu[$shape]+="$t "
        awk -v r="$r" -v s=$shape -v t="$t" -v hz="$ticks" \
            'BEGIN {printf "run %d  %-7s %6.2f CPU s\n", r, s, t / hz}'
    done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
base=$(echo "${cpu[one]}" | median)
echo "shape    backend CPU s (median)   x one"
for shape in one single two turns; do
    m=$(echo "${cpu[$shape]}" | median)
    awk -v s=$shape -v m="$m" -v b="$base" -v hz="$ticks" \
        'BEGIN {printf "%-8s %10.2f %20.2f\n", s, m / hz, m / b}'
done
