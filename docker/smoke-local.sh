#!/usr/bin/env bash
# smoke-local.sh - the compose example's moving parts, without Docker: the
# real sidecar started through docker/entrypoint.sh (SIDECAR_MIGRATE=1) with
# conf/docker.json, the example app (docker/example-app/app.py) as the HTTP
# sink's receiver, a throwaway PostgreSQL and the librdkafka mock cluster
# (4 partitions).  Streams 8,400 records, kills the sidecar with SIGKILL while
# a batch is pending and its request unanswered, restarts it, and checks that the app applied every record
# exactly once and that SIGTERM stops the sidecar within shutdown_timeout_ms.
#
#   bash docker/smoke-local.sh BIN_DIR    # BIN_DIR: sidecar, kafka-mock, kafka-produce
#
# Run by .ci/check-docker with the binaries the Dockerfile's build stage
# produces.  Needs PostgreSQL's server binaries (.ci/install-deps) and root
# or the postgres user (initdb refuses to run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bindir=$(cd "${1:?usage: docker/smoke-local.sh BIN_DIR}" && pwd)
first_run=2000 # records per partition while the sidecar runs
while_frozen=100 # records per partition produced while the app is frozen
per_partition=$((first_run + while_frozen))
total=$((per_partition * 4))

smoke_name=smoke-local
# shellcheck source=smoke-lib.sh
. docker/smoke-lib.sh
smoke_init

# PostgreSQL
smoke_start_pg
# The DSN as a secret file, like /run/secrets/pg_dsn in the container.
echo "host=127.0.0.1 port=$pgport user=postgres dbname=postgres" >"$work/pg_dsn"
sed "s#\${file:/run/secrets/pg_dsn}#\${file:$work/pg_dsn}#" conf/docker.json >"$work/sidecar.json"

# Kafka (mock) and the example app
smoke_start_mock "$bindir" orders:4
app_port=$(free_port)
APP_LISTEN=127.0.0.1:$app_port APP_DB=$work/app.db APP_LOG=1 \
    python3 docker/example-app/app.py 2>"$work/app.log" &
app_pid=$!
pids+=("$app_pid")
app() { http_get "http://127.0.0.1:$app_port$1"; }
app_up() { app /healthz >/dev/null 2>&1; }
wait_for 10 app_up || fail "the example app did not start"
applied() { app /stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["records"])'; }
applied_at_least() {
    kill -0 "$sidecar_pid" 2>/dev/null || fail "the sidecar exited"
    [ "$(applied)" -ge "$1" ]
}
committed_at_least() {
    [ "$(psql_ -c 'SELECT coalesce(sum(committed_offset), 0) FROM sidecar.checkpoints')" -ge "$1" ]
}
ready() { http_ok "http://127.0.0.1:$admin_port/readyz"; }

admin_port=$(free_port)
export KAFKA_BOOTSTRAP=$bootstrap APP_URL=http://127.0.0.1:$app_port/ingest
export SIDECAR_ADMIN_LISTEN=127.0.0.1:$admin_port HOSTNAME=smoke-sidecar-1 SIDECAR_MIGRATE=1
start_sidecar() {
    PATH="$bindir:$PATH" docker/entrypoint.sh run -c "$work/sidecar.json" >>"$work/sidecar.log" 2>&1 &
    sidecar_pid=$!
    pids+=("$sidecar_pid")
}

echo "smoke-local: PostgreSQL :$pgport, Kafka $bootstrap, app :$app_port, admin :$admin_port"
start_sidecar
"$bindir/kafka-produce" -b "$bootstrap" -t orders --count "$first_run" --rate 1000 >"$work/produce.log" 2>&1 &
producer_pid=$!
pids+=("$producer_pid")
wait_for 60 applied_at_least $((total / 4)) || fail "only $(applied) records arrived at the app"
# Freeze the app so that the next batch is pended and sent but not answered,
# SIGKILL the sidecar then, and let the app go on: it applies that request,
# whose answer nobody reads - the lost acknowledgement a replay must repair.
kill -STOP "$app_pid"
wait "$producer_pid" || fail "kafka-produce failed"
"$bindir/kafka-produce" -b "$bootstrap" -t orders --count "$while_frozen" --start "$first_run" >>"$work/produce.log" 2>&1 ||
    fail "kafka-produce failed"
pending_batches() { psql_ -c "SELECT count(*) FROM sidecar.checkpoints WHERE pending_first_offset IS NOT NULL"; }
has_pending() { [ "$(pending_batches)" -gt 0 ]; }
wait_for 20 has_pending || fail "no batch was pended while the app was frozen"
wait_for 30 request_unread "$app_port" || fail "no request reached the frozen app"
kill -9 "$sidecar_pid"
wait "$sidecar_pid" 2>/dev/null || true
kill -CONT "$app_pid"
echo "smoke-local: SIGKILLed the sidecar with $(pending_batches) batch(es) pending and its request unanswered"

start_sidecar
wait_for 90 applied_at_least "$total" || fail "the app has $(applied) of $total records"
wait_for 30 committed_at_least "$total" || fail "the checkpoints do not reach $total"
http_ok "http://127.0.0.1:$admin_port/healthz" || fail "/healthz"
wait_for 20 ready || fail "/readyz"

t0=$(date +%s%N)
kill -TERM "$sidecar_pid"
rc=0
wait "$sidecar_pid" || rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$rc" = 0 ] || fail "the sidecar exited $rc after SIGTERM"
[ "$ms" -lt 8000 ] || fail "the sidecar needed $ms ms to stop (shutdown_timeout_ms is 8000)"

app /stats | python3 -c '
import json, sys
total, per = int(sys.argv[1]), int(sys.argv[2])
s = json.load(sys.stdin)
parts = s["partitions"]
bad = [k for k, p in parts.items() if (p["records"], p["first_offset"], p["last_offset"], p["gaps"]) != (per, 0, per - 1, 0)]
if s["records"] != total or len(parts) != 4 or bad:
    sys.exit("smoke-local: FAIL: the app does not hold every record once: %s" % json.dumps(s))
' "$total" "$per_partition" || fail "see above"
answered=$(grep -c '"POST /ingest HTTP/1.1" 200 ' "$work/app.log" || true)
batches=$(app /stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["batches"])')
replays=$(psql_ -c "SELECT count(*) FROM sidecar.events WHERE kind = 'replay'")
echo "smoke-local: ok: $total records applied exactly once ($batches batches, $answered requests answered 200," \
    "$replays replay(s) after the SIGKILL); SIGTERM -> exit 0 in $ms ms"
[ "$replays" -ge 1 ] || fail "the restarted sidecar replayed nothing"
[ "$answered" -gt "$batches" ] || fail "the app answered no duplicate delivery"
