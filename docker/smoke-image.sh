#!/usr/bin/env bash
# smoke-image.sh - a live test of the built images, with podman: the sidecar
# image and the example app image run as they ship (entry point, default
# config conf/docker.json, HEALTHCHECK, non-root, read-only root, every
# capability dropped, no-new-privileges) against a throwaway PostgreSQL and
# the librdkafka mock cluster.  It checks:
#
#   - `version`, the image's user, its HEALTHCHECK (kept only by
#     `--format docker` builds);
#   - `check-config` with the DSN secret mounted (exit 0, password masked)
#     and without it (exit 2, naming the file);
#   - in the running container: uid 10001, no capabilities, no_new_privs,
#     the root file system read-only, the sidecar is PID 1;
#   - the entry point applies the migrations (SIDECAR_MIGRATE=1);
#   - records reach every sink exactly once: the image's own HTTP pipeline
#     to the example app, plus a file and a postgres pipeline;
#   - a SIGKILL while a batch is pending and its request unanswered, a
#     restart of the same container, and still no gap and no duplicate;
#   - `podman healthcheck run` healthy, /readyz ready;
#   - `podman stop` exits 0 within the grace period and the leases are
#     released.
#
#   bash docker/smoke-image.sh SIDECAR_IMAGE APP_IMAGE BIN_DIR
#
# BIN_DIR holds kafka-mock and kafka-produce (a build directory's sidecar/).
# Run by .ci/container-test, which builds the images and sets up podman
# (CONTAINERS_CONF); run as root.  Everything runs in a network namespace
# of its own (unshare --net), where the containers join the test's
# PostgreSQL and mock cluster on 127.0.0.1 and the image's default ports
# (admin 9644, app 8080) cannot collide with anything on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: docker/smoke-image.sh SIDECAR_IMAGE APP_IMAGE BIN_DIR"
sidecar_image=${1:?$usage}
app_image=${2:?$usage}
bindir=$(cd "${3:?$usage}" && pwd)

if [ "${SMOKE_IMAGE_NETNS:-}" != "$$" ]; then
    # Re-run in a new network namespace, with only a loopback interface.
    # shellcheck disable=SC2016 # $$ is the new shell's pid, expanded there
    exec unshare --net bash -c 'SMOKE_IMAGE_NETNS=$$ exec bash "$0" "$@"' "$0" "$@"
fi
ip link set lo up

first_run=2000   # records per partition while the sidecar runs
while_frozen=250 # records per partition produced while the app is frozen
per_partition=$((first_run + while_frozen))
total=$((per_partition * 4))
stop_grace=10 # podman stop -t: more than shutdown_timeout_ms (8000)

smoke_name=smoke-image
# shellcheck source=smoke-lib.sh
. docker/smoke-lib.sh
smoke_init
t_start=$(date +%s%N)
elapsed() { printf '%5.1fs' "$(($(date +%s%N) - t_start))e-9"; }
say() { echo "$smoke_name: [$(elapsed)] $*"; }

net=(--network "ns:/proc/$$/ns/net")
hardened=(--read-only --cap-drop ALL --security-opt no-new-privileges)
# The HEALTHCHECK stays defined for `podman healthcheck run`; podman's timer
# for it would need systemd, which is not there.
no_timer=(--health-interval disable)
# podman's complaints about that missing systemd go to a log, not the output.
pm() { podman "$@" 2>>"$work/podman.log"; }
sc=smoke-sidecar-$$
app=smoke-app-$$
remove_containers() { podman rm -f -t 0 "$sc" "$app" >/dev/null 2>&1; }
cleanup_hooks+=(remove_containers)
fail_with_containers() {
    podman logs "$sc" >"$work/sidecar.log" 2>&1
    podman logs "$app" >"$work/app.log" 2>&1
    fail "$@"
}

# -- the image itself ------------------------------------------------------
want_version=$(sed -n 's/^project([^)]*VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
got_version=$(podman run --rm --no-healthcheck "${net[@]}" "${hardened[@]}" "$sidecar_image" version | head -n 1)
case "$got_version" in
*"$want_version"*) say "version: $got_version" ;;
*) fail "\`version\` printed '$got_version', expected $want_version" ;;
esac
user=$(podman image inspect --format '{{.Config.User}}' "$sidecar_image")
[ "$user" = 10001:10001 ] || fail "the image's user is '$user', expected 10001:10001"
hc=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$sidecar_image")
case "$hc" in
*healthz*) say "image user $user; HEALTHCHECK kept" ;;
*) fail "the image has no HEALTHCHECK ($hc): was it built with --format docker?" ;;
esac

# -- PostgreSQL, the DSN secret, Kafka ---------------------------------------
smoke_start_pg
password=smoke-$RANDOM$RANDOM
psql_ -c "CREATE ROLE sidecar LOGIN PASSWORD '$password'" -c "CREATE DATABASE app OWNER sidecar"
mkdir -m 755 "$work/secrets"
echo "host=127.0.0.1 port=$pgport user=sidecar password=$password dbname=app" >"$work/secrets/pg_dsn"
chmod 644 "$work/secrets/pg_dsn" # the container's uid 10001 reads it, as a Docker secret
secret=(-v "$work/secrets/pg_dsn:/run/secrets/pg_dsn:ro")
psql_app() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pgport" -U postgres -d app "$@"; }
# The postgres pipeline's table, with an audit trigger that sees every insert
# that commits (a second insert of a record shows even if a key would hide it).
psql_app <<'SQL'
CREATE SCHEMA app AUTHORIZATION sidecar;
CREATE TABLE app.events (topic text NOT NULL, partition int NOT NULL, "offset" bigint NOT NULL,
    key text, value jsonb, headers jsonb, ts timestamptz, PRIMARY KEY (topic, partition, "offset"));
CREATE TABLE app.audit (partition int, "offset" bigint);
CREATE FUNCTION app.audit() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN INSERT INTO app.audit VALUES (NEW.partition, NEW."offset"); RETURN NEW; END $$;
CREATE TRIGGER audit BEFORE INSERT ON app.events FOR EACH ROW EXECUTE FUNCTION app.audit();
ALTER TABLE app.events OWNER TO sidecar;
ALTER TABLE app.audit OWNER TO sidecar;
SQL
smoke_start_mock "$bindir" orders:4
say "PostgreSQL 127.0.0.1:$pgport, Kafka $bootstrap"

# -- check-config needs the secret mounted -------------------------------------
rc=0
podman run --rm --no-healthcheck "${net[@]}" "${hardened[@]}" "${secret[@]}" "$sidecar_image" \
    check-config -c /etc/sidecar/sidecar.json >"$work/check-config.out" 2>&1 || rc=$?
[ "$rc" = 0 ] || fail "check-config with the secret mounted exited $rc: $(cat "$work/check-config.out")"
if grep -qF "$password" "$work/check-config.out"; then
    fail "check-config printed the PostgreSQL password"
fi
rc=0
podman run --rm --no-healthcheck "${net[@]}" "${hardened[@]}" "$sidecar_image" \
    check-config -c /etc/sidecar/sidecar.json >"$work/check-config.out" 2>&1 || rc=$?
if [ "$rc" != 2 ] || ! grep -q /run/secrets/pg_dsn "$work/check-config.out"; then
    fail "check-config without the secret: exit $rc, expected 2 naming /run/secrets/pg_dsn: $(cat "$work/check-config.out")"
fi
say "check-config: exit 0 with the secret mounted (password masked), exit 2 without it"

# -- the example app -----------------------------------------------------------
mkdir -m 755 "$work/appdata"
chown 10002:10002 "$work/appdata"
pm run -d --name "$app" "${net[@]}" "${hardened[@]}" "${no_timer[@]}" -v "$work/appdata:/data" \
    -e APP_LOG=1 "$app_image" >/dev/null
app_http() { http_get "http://127.0.0.1:8080$1"; }
app_up() { http_ok http://127.0.0.1:8080/healthz; }
wait_for 30 app_up || fail_with_containers "the example app does not answer on :8080"
podman healthcheck run "$app" >/dev/null 2>>"$work/podman.log" || fail_with_containers "the example app's HEALTHCHECK failed"
app_pid=$(podman inspect --format '{{.State.Pid}}' "$app")

# -- the sidecar: the image's config plus a file and a postgres pipeline ------
mkdir -m 755 "$work/files"
chown 10001:10001 "$work/files"
python3 - conf/docker.json "$work/sidecar.json" <<'EOF'
import json, sys
conf = json.load(open(sys.argv[1]))
http = conf["pipelines"][0]
extra = {"topics": http["topics"], "start_from": "earliest", "workers": 2,
         "batch": http["batch"], "lease": http["lease"]}
conf["pipelines"] += [
    dict(extra, name="orders-to-files",
         sink={"type": "file", "path": "/data/{topic}/{partition}.jsonl", "format": "jsonl"}),
    dict(extra, name="orders-to-table", sink={"type": "postgres", "table": "app.events"}),
]
json.dump(conf, open(sys.argv[2], "w"), indent=2)
EOF
chmod 644 "$work/sidecar.json"
pm create --name "$sc" --hostname smoke-sidecar-1 "${net[@]}" "${hardened[@]}" "${no_timer[@]}" "${secret[@]}" \
    -v "$work/sidecar.json:/etc/sidecar/sidecar.json:ro" -v "$work/files:/data" \
    -e SIDECAR_MIGRATE=1 -e KAFKA_BOOTSTRAP="$bootstrap" -e APP_URL=http://127.0.0.1:8080/ingest \
    "$sidecar_image" >/dev/null
pm start "$sc" >/dev/null
t_sidecar=$(date +%s%N)
running() { [ "$(podman inspect --format '{{.State.Running}}' "$sc")" = true ] || fail_with_containers "the sidecar container exited"; }
ready() { running && http_ok http://127.0.0.1:9644/readyz; }
migrations=$(find sql -name '[0-9]*.sql' | wc -l)
migrated() { running && [ "$(psql_app -c 'SELECT count(*) FROM sidecar.schema_migrations' 2>/dev/null)" = "$migrations" ]; }
wait_for 60 migrated || fail_with_containers "the entry point did not apply the $migrations migrations"
say "entry point applied $migrations migrations"

# The container as it runs: non-root, no capabilities, no_new_privs, read-only root, sidecar as PID 1.
in_sc() { podman exec "$sc" "$@"; }
[ "$(in_sc id -u)" = 10001 ] || fail_with_containers "the sidecar does not run as uid 10001"
status=$(in_sc cat /proc/1/status)
grep -q '^CapEff:[[:space:]]*0*$' <<<"$status" || fail_with_containers "PID 1 has capabilities: $(grep ^Cap <<<"$status")"
grep -q '^NoNewPrivs:[[:space:]]*1$' <<<"$status" || fail_with_containers "PID 1 lacks no_new_privs"
[ "$(in_sc cat /proc/1/comm)" = sidecar ] || fail_with_containers "PID 1 is not the sidecar"
if in_sc sh -c 'echo x >/usr/local/probe' 2>/dev/null; then
    fail_with_containers "the root file system is writable"
fi
say "running as uid 10001, CapEff 0, NoNewPrivs 1, read-only root, sidecar is PID 1"

# -- delivery ------------------------------------------------------------------
applied() { app_http /stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["records"])'; }
committed() { # committed PIPELINE: the sum of the committed offsets
    psql_app -c "SELECT coalesce(sum(committed_offset), 0) FROM sidecar.checkpoints WHERE pipeline = '$1'"
}
all_committed() {
    running || return 1
    local p
    for p in orders-to-app orders-to-files orders-to-table; do
        [ "$(committed "$p")" -ge "$1" ] || return 1
    done
}
t0=$(date +%s%N)
"$bindir/kafka-produce" -b "$bootstrap" -t orders --count "$first_run" >"$work/produce.log" 2>&1 ||
    fail "kafka-produce failed"
wait_for 120 all_committed $((first_run * 4)) || fail_with_containers "not every pipeline committed $((first_run * 4)) records"
ms=$((($(date +%s%N) - t0) / 1000000))
peak_rss() { awk '/^VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$(podman inspect --format '{{.State.Pid}}' "$sc")/status"; }
say "$((first_run * 4)) records delivered by each of 3 pipelines (http, file, postgres) in $ms ms;" \
    "the sidecar's peak RSS $(peak_rss)"

# Freeze the app so that a batch is pended and sent but not answered, kill
# the sidecar then, and let the app go on: it applies that request, whose
# answer nobody reads - the lost acknowledgement a replay must repair.
kill -STOP "$app_pid"
"$bindir/kafka-produce" -b "$bootstrap" -t orders --count "$while_frozen" --start "$first_run" >>"$work/produce.log" 2>&1 ||
    fail "kafka-produce failed"
pending_http() {
    psql_app -c "SELECT count(*) FROM sidecar.checkpoints WHERE pipeline = 'orders-to-app' AND pending_first_offset IS NOT NULL"
}
has_pending() { [ "$(pending_http)" -gt 0 ]; }
wait_for 30 has_pending || fail_with_containers "no batch was pended while the app was frozen"
wait_for 30 request_unread 8080 || fail_with_containers "no request reached the frozen app"
pm kill -s KILL "$sc" >/dev/null
podman wait "$sc" >/dev/null || true
kill -CONT "$app_pid"
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$sc")
say "SIGKILL (exit $exit_code) with $(pending_http) HTTP batch(es) pending and unanswered"

restarted_at=$(psql_app -c 'SELECT now()')
pm start "$sc" >/dev/null
t0=$(date +%s%N)
wait_for 120 all_committed "$total" || fail_with_containers "after the restart, not every pipeline committed $total records"
# Every pipeline's consumer has its assignment again (the file and postgres
# pipelines had nothing left to deliver, so their commits prove nothing):
# librdkafka 2.0.2 aborts when a cooperative-sticky consumer is closed before
# its first assignment (fixed in librdkafka 2.3.0), and `podman stop` below
# would then see exit 134 instead of 0.
leases_since() { psql_app -c "SELECT count(*) FROM sidecar.leases WHERE expires_at > now() AND acquired_at > '$1'"; }
all_leased_again() { running && [ "$(leases_since "$restarted_at")" = 12 ]; }
wait_for 120 all_leased_again || fail_with_containers "after the restart, $(leases_since "$restarted_at") of 12 partitions are leased"
wait_for 30 ready || fail_with_containers "/readyz does not answer 200"
ms=$((($(date +%s%N) - t0) / 1000000))
say "restarted the same container: every pipeline at $total records in $ms ms, /readyz 200"
podman healthcheck run "$sc" >"$work/healthcheck.out" 2>>"$work/podman.log" || fail_with_containers "podman healthcheck run: $(cat "$work/healthcheck.out")"
say "podman healthcheck run: healthy; the restarted sidecar's peak RSS $(peak_rss)"
metrics=$(http_get http://127.0.0.1:9644/metrics)
grep -q '^sidecar_records_delivered_total{pipeline="orders-to-app"' <<<"$metrics" ||
    fail_with_containers "/metrics has no sidecar_records_delivered_total for orders-to-app"

# -- podman stop: SIGTERM, exit 0 within the grace period, leases released ---
live_leases() { psql_app -c "SELECT count(*) FROM sidecar.leases WHERE expires_at > now()"; }
leases_before=$(live_leases)
t0=$(date +%s%N)
pm stop -t "$stop_grace" "$sc" >/dev/null
stop_ms=$((($(date +%s%N) - t0) / 1000000))
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$sc")
podman logs "$sc" >"$work/sidecar.log" 2>&1
[ "$exit_code" = 0 ] || fail "podman stop: the sidecar exited $exit_code"
[ "$stop_ms" -lt $((stop_grace * 1000)) ] || fail "podman stop took $stop_ms ms (grace period ${stop_grace}s)"
[ "$(live_leases)" = 0 ] || fail "$(live_leases) lease(s) still live after podman stop"
say "podman stop: exit 0 in $stop_ms ms (grace ${stop_grace}s), $leases_before live lease(s) released"

# -- every record exactly once, in order, in every sink -------------------------
app_http /stats | python3 -c '
import json, sys
total, per = int(sys.argv[1]), int(sys.argv[2])
s = json.load(sys.stdin)
parts = s["partitions"]
bad = [k for k, p in parts.items() if (p["records"], p["first_offset"], p["last_offset"], p["gaps"]) != (per, 0, per - 1, 0)]
if s["records"] != total or len(parts) != 4 or bad:
    sys.exit("the app does not hold every record once: %s" % json.dumps(s))
' "$total" "$per_partition" || fail "http sink: see above"
python3 - "$work/files/orders" "$per_partition" <<'EOF' || fail "file sink: see above"
import json, sys
root, per = sys.argv[1], int(sys.argv[2])
for p in range(4):
    with open("%s/%d.jsonl" % (root, p), "rb") as f:
        offsets = [json.loads(line)["offset"] for line in f]
    if offsets != list(range(per)):
        sys.exit("partition %d: %d lines, not offsets 0..%d once each in order" % (p, len(offsets), per - 1))
EOF
rows=$(psql_app -c "SELECT count(*) || ' ' || count(DISTINCT (partition, \"offset\")) || ' ' ||
    (SELECT count(*) FROM app.audit) || ' ' || max(\"offset\") FROM app.events")
[ "$rows" = "$total $total $total $((per_partition - 1))" ] || fail "postgres sink: rows, distinct, inserts, max offset = $rows (expected $total $total $total $((per_partition - 1)))"
replays=$(psql_app -c "SELECT count(*) FROM sidecar.events WHERE kind = 'replay' AND pipeline = 'orders-to-app'")
answered=$(grep -c '"POST /ingest HTTP/1.1" 200 ' <(podman logs "$app" 2>&1) || true)
batches=$(app_http /stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["batches"])')
[ "$replays" -ge 1 ] || fail "the restarted sidecar replayed nothing"
[ "$answered" -gt "$batches" ] || fail "the app answered no duplicate delivery ($answered answers, $batches batches)"
say "exactly once: $total records in each sink (http: $batches batches, $answered requests answered 200," \
    "$replays replay(s); file: 4 files in offset order; postgres: $total rows, $total inserts)"
say "ok (the sidecar container ran $((($(date +%s%N) - t_sidecar) / 1000000000)) s)"
