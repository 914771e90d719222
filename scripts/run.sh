#!/usr/bin/env bash
# The main job on its embedded default: `tashkent up` (a local cluster it
# starts itself). Arguments, if any, are passed to the `tashkent` binary
# instead, e.g. `bash scripts/run.sh up --durability database`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ $# -eq 0 ] && set -- up
exec cargo run --release --quiet --bin tashkent -- "$@"
