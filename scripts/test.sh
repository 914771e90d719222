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
# so after a timeout `stop_leftover_servers` stops those left in this
# run's own temporary directory, which every test's directories are made
# in (TMPDIR), and removes it. `timeout` runs in the background so that
# an interrupt of this script reaches it (it is not in our process group).
limit=${TEST_TIME_LIMIT:-2400}
run_tmp=$(mktemp -d "${TMPDIR:-/tmp}/tashkent-run.XXXXXX")
# Like /tmp: the unprivileged server account reaches the tests'
# directories, and puts its socket here when their paths are too long.
chmod 1777 "$run_tmp"
export TMPDIR=$run_tmp
trap 'rm -rf "$run_tmp" 2>/dev/null || true' EXIT

# The PostgreSQL servers (their postmasters' PIDs, from postmaster.pid)
# left behind under this run's temporary directory; each is checked to
# be the server of that data directory (its command line names it)
# before it gets SIGQUIT (PostgreSQL's immediate stop), and waited for.
stop_leftover_servers() {
    local pidfile pid data pids=() i
    while IFS= read -r pidfile; do
        pid=$(head -n1 "$pidfile" 2>/dev/null || true)
        data=$(dirname "$pidfile")
        case "$pid" in '' | *[!0-9]*) continue ;; esac
        if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$data"; then
            echo "scripts/test.sh: stopping PostgreSQL $pid left running in $data" >&2
            kill -QUIT "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done < <(find "$run_tmp" -name postmaster.pid 2>/dev/null || true)
    for pid in "${pids[@]}"; do
        for i in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
    rm -rf "$run_tmp"/* 2>/dev/null || true
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
