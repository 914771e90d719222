#!/usr/bin/env bash
# The whole test suite, against real PostgreSQL servers it starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# A hung test must fail the run, not stall it. Tests that run a cluster
# have a watchdog of their own (tests/common/watchdog.rs, ten minutes);
# as a last resort each cargo invocation gets TEST_TIME_LIMIT seconds (the
# whole suite takes 10 to 18 minutes on two cores). `timeout` signals its
# own process group: cargo, the test binaries and the certifier and proxy
# processes they started. PostgreSQL servers run in groups of their own
# and are left running then. `timeout` runs in the background so that an
# interrupt of this script reaches it (it is not in our process group).
limit=${TEST_TIME_LIMIT:-2400}
bounded() {
    local rc pid
    timeout --kill-after=30 "$limit" "$@" &
    pid=$!
    trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM
    while :; do
        rc=0
        wait "$pid" || rc=$?
        # Interrupted by a trapped signal: wait for it to end.
        if [ "$rc" -gt 128 ] && kill -0 "$pid" 2>/dev/null; then
            continue
        fi
        break
    done
    trap - INT TERM
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "scripts/test.sh: '$*' did not finish in $limit s; a test hangs" \
            "(the tests 'running for over 60 seconds' above)" >&2
    fi
    return "$rc"
}

bounded cargo test --workspace
# Fault injection needs the WAL built with its failpoints compiled in.
bounded cargo test -p tashkent-wal --features failpoints --test faults
