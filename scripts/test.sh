#!/usr/bin/env bash
# The whole test suite, against real PostgreSQL servers it starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace
# Fault injection needs the WAL built with its failpoints compiled in.
cargo test -p tashkent-wal --features failpoints --test faults
