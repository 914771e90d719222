#!/usr/bin/env bash
# Installs what a fresh Debian 12 with only the Rust toolchain lacks to
# build, run and test tashkent: the PostgreSQL server (which brings initdb,
# pgbench, pg_dump and the unprivileged `postgres` account) and its client.
# Idempotent, and silent when everything is already present.
set -euo pipefail

have_server() {
    local dir
    for dir in ${PG_BIN:-} /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pgbench" ] \
            && [ -x "$dir/pg_dump" ] && [ -x "$dir/pg_restore" ]; then
            return 0
        fi
    done
    return 1
}

missing=()
have_server || missing+=(postgresql postgresql-contrib)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
id postgres >/dev/null 2>&1 || missing+=(postgresql)

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2
    exit 1
fi
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    }
    sudo=(sudo)
fi
echo "setup: installing ${missing[*]}" >&2
# tashkent runs its own servers; Debian's default cluster is not wanted.
"${sudo[@]}" mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" |
    "${sudo[@]}" tee /etc/postgresql-common/createcluster.d/tashkent.conf >/dev/null
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
have_server || {
    echo "setup: PostgreSQL server binaries still missing after install" >&2
    exit 1
}
