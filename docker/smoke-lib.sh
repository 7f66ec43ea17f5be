# shellcheck shell=bash
# smoke-lib.sh - what docker/smoke-local.sh (the compose pieces without
# containers) and docker/smoke-image.sh (the built images) share: a work
# directory cleaned up on exit, a throwaway PostgreSQL, the librdkafka mock
# cluster, waiting for conditions, and failing with the logs.  Sourced, not
# run; the caller sets `smoke_name` first and may append to `pids` and
# `cleanup_hooks`.
#
#   smoke_init                  work dir in $work, cleanup on EXIT
#   smoke_start_pg              PostgreSQL on 127.0.0.1:$pgport; psql_ runs SQL
#   smoke_start_mock BIN TOPIC:N   kafka-mock; its bootstrap in $bootstrap
#   wait_for SECONDS CMD...     until CMD succeeds (never a fixed sleep)
#   request_unread PORT         a request to PORT is waiting, unread
#   fail MESSAGE                print the logs of $work and exit 1
#
# SMOKE_KEEP=1 keeps the work directory (logs, data) for a post-mortem.

pids=()
cleanup_hooks=()

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

smoke_cleanup() {
    set +e
    local h p
    for h in "${cleanup_hooks[@]}"; do
        "$h"
    done
    for p in "${pids[@]}"; do
        kill -9 "$p" 2>/dev/null
    done
    if [ -n "${pgdata:-}" ] && [ -f "$pgdata/postmaster.pid" ]; then
        as_postgres "$pgbin/pg_ctl" -D "$pgdata" -m immediate stop >/dev/null 2>&1
    fi
    if [ -n "${work:-}" ] && [ -n "${SMOKE_KEEP:-}" ]; then
        echo "${smoke_name:-smoke}: kept $work (SMOKE_KEEP)" >&2
    elif [ -n "${work:-}" ]; then
        rm -rf "$work"
    fi
}

smoke_init() {
    work=$(mktemp -d "/tmp/${smoke_name:?}-XXXXXX")
    chmod 755 "$work"
    trap smoke_cleanup EXIT
}

fail() {
    local f
    echo "${smoke_name:-smoke}: FAIL: $*" >&2
    for f in "$work"/*.log; do
        [ -f "$f" ] || continue
        echo "== $f (last 20 lines)" >&2
        tail -n 20 "$f" >&2
    done
    exit 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # wait_for SECONDS COMMAND...: until COMMAND succeeds
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# Whether a request to PORT on this machine sits unread in a server's socket
# (Recv-Q > 0): with the server SIGSTOPped, that is a request sent whose
# answer will come only after the sender may have died.
request_unread() { ss -Htn state established "( sport = :$1 )" | awk '$1 > 0 { found = 1 } END { exit !found }'; }

http_ok() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1" 2>/dev/null; }

# GET URL and print the body.
http_get() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"; }

smoke_start_pg() {
    pgdata=$work/pg
    pgbin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
    [ -n "$pgbin" ] || fail "no PostgreSQL server binaries under /usr/lib/postgresql (run .ci/install-deps)"
    mkdir -p "$pgdata"
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$pgdata" "$work"
    fi
    as_postgres "$pgbin/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --locale=C >/dev/null
    pgport=$(free_port)
    as_postgres "$pgbin/pg_ctl" -D "$pgdata" -l "$work/pg.log" -w \
        -o "-p $pgport -k $work -c listen_addresses=127.0.0.1" start >/dev/null
}

psql_() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pgport" -U postgres "$@"; }

smoke_start_mock() { # smoke_start_mock BIN_DIR TOPIC:PARTITIONS
    mkfifo "$work/mock.in"
    "$1/kafka-mock" --brokers 1 --topic "$2" <"$work/mock.in" >"$work/mock.out" 2>"$work/mock.log" &
    pids+=($!)
    exec 3>"$work/mock.in"
    wait_for 10 test -s "$work/mock.out" || fail "kafka-mock did not start"
    # shellcheck disable=SC2034 # for the caller
    bootstrap=$(head -n 1 "$work/mock.out")
}
