#!/usr/bin/env bash
# The main job on its embedded default: a short `tashkent bench` (about two
# minutes: AllUpdates driven by unmodified pgbench on standalone PostgreSQL
# with fsync on, fsync off and repeatable read, pgbouncer in front of it,
# Base, Tashkent-API and Tashkent-MW at 1 and 3 replicas, each started
# fresh), printing the table
# and where the JSON and the plot are (./bench-results). Arguments, if any,
# are passed to the `tashkent` binary instead, e.g. `bash scripts/run.sh up`
# for a local cluster to play with.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ $# -eq 0 ] && set -- bench --workloads allupdates --client pgbench --replicas 1,3 --duration 5 --warmup 1 \
    --systems postgres-fsync,postgres-nofsync,postgres-rr,pgbouncer,base,tashkent-api,tashkent-mw
exec cargo run --release --quiet --bin tashkent -- "$@"
