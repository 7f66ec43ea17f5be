#!/bin/sh
# docker-entrypoint.sh - the image's entry point.  Its arguments are the
# sidecar's (the image's CMD is `run -c /etc/sidecar/sidecar.json`, so
# `docker run IMAGE check-config -c FILE` works as `sidecar check-config`).
#
# With SIDECAR_MIGRATE=1 it first runs `sidecar migrate` with the same
# options as `run` (safe to repeat and to run from several replicas at once:
# the migrations take an advisory lock).  A migrate that fails because
# PostgreSQL is not reachable yet (exit 1) is retried SIDECAR_MIGRATE_ATTEMPTS
# times (default 5) with a growing pause; an invalid config (exit 2) is not.
#
# Then it execs the sidecar: the sidecar becomes PID 1 and receives SIGTERM
# from `docker stop` / the kubelet itself, and exits within
# shutdown_timeout_ms.  While migrate runs, this shell is PID 1; it forwards
# SIGTERM/SIGINT to migrate and exits, because PID 1 ignores signals it has
# no handler for and the container would otherwise wait for SIGKILL.
set -eu

child=
stop() {
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null || true
    fi
    exit "$1"
}
trap 'stop 143' TERM
trap 'stop 130' INT

# Runs "$@" in the background and waits for it, so a signal is handled at once.
run_child() {
    "$@" &
    child=$!
    rc=0
    wait "$child" || rc=$?
    child=
    return "$rc"
}

# Migrate only before `run` (given explicitly, or implied: no subcommand),
# never before --help / --version; it gets the same options as run.
wants_migrate=0
had_run=0
if [ "${SIDECAR_MIGRATE:-0}" = 1 ]; then
    case "${1:-run}" in
    run) wants_migrate=1 had_run=1 ;;
    -*) wants_migrate=1 ;;
    esac
    for a in "$@"; do
        case "$a" in
        -h | --help | --version) wants_migrate=0 ;;
        esac
    done
fi

if [ "$wants_migrate" = 1 ]; then
    if [ "$had_run" = 1 ] && [ "$#" -gt 0 ]; then
        shift # `run -c F` -> migrate gets `-c F`
    fi
    attempts=${SIDECAR_MIGRATE_ATTEMPTS:-5}
    case "$attempts" in
    '' | *[!0-9]* | 0) attempts=5 ;;
    esac
    n=1
    while :; do
        rc=0
        run_child sidecar migrate "$@" || rc=$?
        if [ "$rc" = 0 ]; then
            break
        fi
        if [ "$rc" != 1 ] || [ "$n" -ge "$attempts" ]; then
            echo "docker-entrypoint: sidecar migrate failed (exit $rc, attempt $n of $attempts); not starting" >&2
            exit "$rc"
        fi
        echo "docker-entrypoint: sidecar migrate failed (exit $rc), retrying in $((2 * n)) s (attempt $n of $attempts)" >&2
        run_child sleep "$((2 * n))"
        n=$((n + 1))
    done
    if [ "$had_run" = 1 ]; then
        set -- run "$@"
    fi
fi

trap - TERM INT
exec sidecar "$@"
