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
# processes they started. PostgreSQL servers run in groups of their own,
# so after a timeout `stop_leftover_servers` stops those whose data
# directory a test of this run created, and removes those directories.
# `timeout` runs in the background so that an interrupt of this script
# reaches it (it is not in our process group).
limit=${TEST_TIME_LIMIT:-2400}
tmp=${TMPDIR:-/tmp}
started=$(mktemp "$tmp/tashkent-test-run.XXXXXX")
trap 'rm -f "$started"' EXIT

# The PostgreSQL servers (their postmasters' PIDs, from postmaster.pid)
# left behind in test directories (tests/common::shared_tempdir) created
# since this script started; each is checked to be the server of that
# data directory before it gets SIGQUIT (PostgreSQL's immediate stop).
stop_leftover_servers() {
    local d pidfile pid data
    for d in "$tmp"/tashkent-test-*/; do
        [ -d "$d" ] && [ "$d" -nt "$started" ] || continue
        while IFS= read -r pidfile; do
            pid=$(head -n1 "$pidfile" 2>/dev/null || true)
            data=$(dirname "$pidfile")
            case "$pid" in '' | *[!0-9]*) continue ;; esac
            if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$data"; then
                echo "scripts/test.sh: stopping PostgreSQL $pid left running in $data" >&2
                kill -QUIT "$pid" 2>/dev/null || true
            fi
        done < <(find "$d" -name postmaster.pid 2>/dev/null)
        sleep 1
        rm -rf "$d"
    done
}
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
        stop_leftover_servers
    fi
    return "$rc"
}

bounded cargo test --workspace
# Fault injection needs the WAL built with its failpoints compiled in.
bounded cargo test -p tashkent-wal --features failpoints --test faults
