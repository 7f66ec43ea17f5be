#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine: installs the packages
# it needs, builds, and runs the unit, integration and chaos tests through
# CTest.  The integration tests start their own throwaway PostgreSQL
# servers and mock Kafka clusters; nothing needs to be running beforehand.
#
#   bash tests/run.sh                 # everything (about 30 minutes on 2 cores)
#   bash tests/run.sh -L unit         # extra arguments go to ctest
#   CMAKE_ARGS=-DSIDECAR_WERROR=ON bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
.ci/install-deps
# shellcheck disable=SC2086 # CMAKE_ARGS is a list of words on purpose
.ci/build "$build" ${CMAKE_ARGS:-}
if [ "$#" -eq 0 ]; then
    set -- -L 'unit|integration|chaos'
fi
ctest --test-dir "$build" --output-on-failure --timeout 1500 "$@"
