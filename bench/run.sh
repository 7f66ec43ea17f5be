#!/usr/bin/env bash
# The benchmark in one command: installs the packages it needs (.ci/install-deps),
# builds what it runs, and starts bench/bench.py, which starts a throwaway
# PostgreSQL and the mock Kafka cluster, produces the data set and measures the
# sidecar side by side with kcat, psql \copy and a naive consumer
# (docs/benchmarks.md).  Everything it starts is stopped and removed at the end.
#
#   bash bench/run.sh [--records N] [--partitions P] [--repeat N] [--json FILE] [--quick]
#   bash bench/run.sh --help          # every option
#   BUILD_DIR=build-bench (default)   # where it builds
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-bench}
.ci/install-deps
cmake -S . -B "$build" >/dev/null
cmake --build "$build" -j "$(nproc)" --target sidecar kafka-mock kafka-produce bench-receiver \
    bench-delay-proxy bench-latency-reader bench-machine-probe >/dev/null
# The Debian python3: it has python3-confluent-kafka and python3-psycopg2 (a python3
# earlier on PATH, e.g. pyenv's, may not).
exec /usr/bin/python3 bench/bench.py --build-dir "$build" "$@"
