#!/usr/bin/env bash
# The whole test suite, against real PostgreSQL servers it starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# A hung test must fail the run, not stall it: each cargo invocation gets
# TEST_TIME_LIMIT seconds (the whole suite takes some 10 minutes on two
# cores). `timeout` signals its whole process group, so the servers a test
# started as child processes go with it.
limit=${TEST_TIME_LIMIT:-2400}
bounded() {
    local rc=0
    timeout --kill-after=30 "$limit" "$@" || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "scripts/test.sh: '$*' did not finish in $limit s; a test hangs" \
            "(the tests 'running for over 60 seconds' above)" >&2
    fi
    return "$rc"
}

bounded cargo test --workspace
# Fault injection needs the WAL built with its failpoints compiled in.
bounded cargo test -p tashkent-wal --features failpoints --test faults
