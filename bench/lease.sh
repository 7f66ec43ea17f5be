#!/usr/bin/env bash
# The assignment benchmark in one command: builds what it runs and starts
# bench/lease.py, which measures failover, join, SIGTERM and the PostgreSQL
# load of lease upkeep for "assignment": "lease" and "kafka-group" side by
# side (docs/benchmarks.md, "Partition assignment").
#
#   bash bench/lease.sh [--repeat N] [--upkeep-seconds S] [--json FILE]
#   BUILD_DIR=build-bench (default)   # where it builds
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-bench}
.ci/install-deps
cmake -S . -B "$build" >/dev/null
cmake --build "$build" -j "$(nproc)" --target sidecar kafka-mock kafka-produce bench-receiver \
    >/dev/null
exec /usr/bin/python3 bench/lease.py --build-dir "$build" "$@"
