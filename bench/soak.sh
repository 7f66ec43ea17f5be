#!/usr/bin/env bash
# The soak benchmark in one command (not in CI): installs the packages it needs,
# builds what it runs, and starts bench/soak.py, which runs two sidecar instances
# for 30 minutes while one of them is SIGKILLed every minute and PostgreSQL is
# restarted every 5 minutes, then checks that the output is exact and that the
# RSS of the instance never killed stayed flat (docs/benchmarks.md, "Soak test").
#
#   bash bench/soak.sh [--minutes M] [--kill-every S] [--pg-restart-every S] [--json FILE]
#   bash bench/soak.sh --minutes 3 --kill-every 20 --pg-restart-every 60   # a short run
#   bash bench/soak.sh --help          # every option
#   BUILD_DIR=build-bench (default)    # where it builds
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-bench}
.ci/install-deps
cmake -S . -B "$build" >/dev/null
cmake --build "$build" -j "$(nproc)" --target sidecar kafka-mock kafka-produce bench-receiver \
    >/dev/null
exec /usr/bin/python3 bench/soak.py --build-dir "$build" "$@"
