#!/usr/bin/env bash
# test-entrypoint.sh - checks docker/entrypoint.sh against a stand-in
# `sidecar` that records its command lines: migrate runs only when
# SIDECAR_MIGRATE=1 and only before `run`, with run's options; a migrate that
# fails with exit 1 is retried, exit 2 is not; the sidecar is exec'd (same
# PID as the script, so it is PID 1 in a container); SIGTERM during migrate
# ends the script at once.  Run by .ci/check-docker.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
entry=$here/entrypoint.sh
work=$(mktemp -d /tmp/test-entrypoint-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
cat >"$work/bin/sidecar" <<'EOF'
#!/bin/sh
# Stand-in: logs "<pid> <args>"; migrate fails while $STUB_DIR/fail counts down.
echo "$$ $*" >>"$STUB_DIR/log"
if [ "$1" = migrate ]; then
    n=$(cat "$STUB_DIR/fail" 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then
        echo $((n - 1)) >"$STUB_DIR/fail"
        exit "${STUB_FAIL_RC:-1}"
    fi
    if [ -n "${STUB_MIGRATE_SLEEP:-}" ]; then
        exec sleep "$STUB_MIGRATE_SLEEP"
    fi
fi
exit 0
EOF
chmod +x "$work/bin/sidecar"
export STUB_DIR=$work PATH="$work/bin:$PATH"
failures=0

# run_case NAME EXPECTED_RC EXPECTED_LOG ENV... -- ARGS...: EXPECTED_LOG is the
# stand-in's command lines, "|"-separated; "$$" in it means "the script's PID".
run_case() {
    local name=$1 want_rc=$2 want_log=$3
    shift 3
    local envs=()
    while [ "$1" != -- ]; do
        envs+=("$1")
        shift
    done
    shift
    rm -f "$work/log" "$work/fail"
    [ -n "${FAIL_TIMES:-}" ] && echo "$FAIL_TIMES" >"$work/fail"
    local rc=0
    env "${envs[@]}" "$entry" "$@" 2>"$work/stderr" &
    local pid=$!
    wait "$pid" || rc=$?
    local got
    got=$(sed "s/^$pid /\$\$ /; s/^[0-9]* /child /" "$work/log" | paste -sd '|')
    if [ "$rc" != "$want_rc" ] || [ "$got" != "$want_log" ]; then
        echo "FAIL $name: exit $rc (want $want_rc), calls '$got' (want '$want_log')" >&2
        sed 's/^/  stderr: /' "$work/stderr" >&2
        failures=$((failures + 1))
    else
        echo "ok   $name"
    fi
}

run_case "no migrate by default" 0 '$$ run -c /etc/sidecar/sidecar.json' \
    SIDECAR_MIGRATE=0 -- run -c /etc/sidecar/sidecar.json
run_case "migrate, then exec run (same PID)" 0 'child migrate -c /etc/sidecar/sidecar.json|$$ run -c /etc/sidecar/sidecar.json' \
    SIDECAR_MIGRATE=1 -- run -c /etc/sidecar/sidecar.json
run_case "implied run" 0 'child migrate --config=/x.json|$$ --config=/x.json' \
    SIDECAR_MIGRATE=1 -- --config=/x.json
run_case "no arguments: SIDECAR_CONFIG" 0 'child migrate|$$ run' \
    SIDECAR_MIGRATE=1 --
run_case "other subcommands untouched" 0 '$$ check-config -c /x.json' \
    SIDECAR_MIGRATE=1 -- check-config -c /x.json
run_case "no migrate before --help" 0 '$$ run --help' \
    SIDECAR_MIGRATE=1 -- run --help
FAIL_TIMES=2 run_case "migrate retried on exit 1" 0 'child migrate -c a|child migrate -c a|child migrate -c a|$$ run -c a' \
    SIDECAR_MIGRATE=1 -- run -c a
FAIL_TIMES=9 run_case "migrate gives up after SIDECAR_MIGRATE_ATTEMPTS" 1 'child migrate -c a|child migrate -c a' \
    SIDECAR_MIGRATE=1 SIDECAR_MIGRATE_ATTEMPTS=2 -- run -c a
FAIL_TIMES=1 run_case "invalid config (exit 2) not retried" 2 'child migrate -c a' \
    SIDECAR_MIGRATE=1 STUB_FAIL_RC=2 -- run -c a

# SIGTERM while migrate runs: the script must not wait for migrate to finish.
# As PID 1 of a container it would ignore SIGTERM without a handler, so when
# possible (root, util-linux unshare) it runs as PID 1 of a new PID namespace.
pid1=()
how="as an ordinary process"
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && unshare --pid --fork true 2>/dev/null; then
    pid1=(unshare --pid --fork)
    how="as PID 1 of a PID namespace"
fi
rm -f "$work/log" "$work/fail"
start=$SECONDS
rc=0
"${pid1[@]}" env SIDECAR_MIGRATE=1 STUB_MIGRATE_SLEEP=10 "$entry" run -c a 2>/dev/null &
outer=$!
for _ in $(seq 50); do
    [ -s "$work/log" ] && break
    sleep 0.1
done
target=$outer
if [ "${#pid1[@]}" -gt 0 ]; then
    target=$(pgrep -P "$outer" | head -n 1) # the namespace's PID 1
fi
kill -TERM "$target"
wait "$outer" || rc=$?
if [ "$rc" != 143 ] || [ $((SECONDS - start)) -gt 5 ]; then
    echo "FAIL SIGTERM during migrate ($how): exit $rc after $((SECONDS - start)) s (want 143 at once)" >&2
    failures=$((failures + 1))
else
    echo "ok   SIGTERM during migrate exits 143 at once ($how)"
fi

if [ "$failures" -gt 0 ]; then
    echo "test-entrypoint: $failures failure(s)" >&2
    exit 1
fi
echo "test-entrypoint: all cases pass"
