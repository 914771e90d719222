#!/bin/bash
# Time and peak memory of large transactions through `tashkent up`.
#
#   bash scripts/large-txn.sh [CERTIFIERS] [RUNS]
#
# Starts `tashkent up --replicas 2 --certifiers CERTIFIERS` (default 3) in a
# fresh state directory under /tmp, runs RUNS (default 3) 1M-row
# `INSERT ... SELECT`s of 100-byte rows (a 200 MB writeset each) through
# the first proxy, one after the other, checks the replicas with
# `tashkent verify`, and prints each INSERT's time and the peak RSS of the
# `up` process (every certifier node and proxy; PostgreSQL runs apart).
# Needs a release build (cargo build --release) and psql.
set -euo pipefail
n=${1:-3}
runs=${2:-3}
bin=${TASHKENT:-$(dirname "$0")/../target/release/tashkent}
dir=$(mktemp -d /tmp/tashkent-large-XXXXXX)
chmod 755 "$dir"
"$bin" up --state-dir "$dir/state" --replicas 2 --certifiers "$n" >"$dir/up.log" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 120); do
    grep -q "connect: psql" "$dir/up.log" && break
    kill -0 $pid 2>/dev/null || { cat "$dir/up.log"; exit 1; }
    sleep 1
done
port=$(grep -o 'connect: psql "host=127.0.0.1 port=[0-9]*' "$dir/up.log" | grep -o '[0-9]*$')
conn="host=127.0.0.1 port=$port user=postgres dbname=postgres"
psql -q "$conn" -c "CREATE TABLE big (id int PRIMARY KEY, v text)"
times=""
for i in $(seq "$runs"); do
    start=$(date +%s%N)
    psql -q "$conn" -c "INSERT INTO big SELECT g + $((i * 1000000)), repeat('x', 100)
                        FROM generate_series(1, 1000000) g"
    times="$times $(( ($(date +%s%N) - start) / 1000000 )) ms"
done
peak=$(grep VmHWM /proc/$pid/status | awk '{print $2 / 1024 " MiB"}')
"$bin" verify --state-dir "$dir/state" | tail -1
echo "certifiers $n: INSERTs of 1M rows:$times; peak RSS of tashkent up: $peak"
