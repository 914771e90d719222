#!/usr/bin/env bash
# Installs what a fresh Debian 12 with only the Rust toolchain lacks to
# build, run and test tashkent: the PostgreSQL server (which brings initdb,
# pgbench, pg_dump and the unprivileged `postgres` account), its client,
# its server headers (the writeset-capture trigger library is compiled
# against them, see build.rs), and the other clients of the TLS tests:
# psycopg2 for Debian's python3, and pgjdbc with a JDK to compile and run
# its Java program; sysbench (`tashkent bench contention` and its
# test); pgbouncer (a system of `tashkent bench`); and nftables (a test
# drops a link's packets). Idempotent, and silent when everything is already
# present.
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

# The newest installed server major version (empty when none).
server_major() {
    local dir newest=""
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/postgres" ] && newest=$(basename "$(dirname "$dir")")
    done
    echo "$newest"
}

have_headers() {
    local major
    major=$(server_major)
    [ -n "$major" ] && [ -f "/usr/include/postgresql/$major/server/postgres.h" ]
}

missing=()
have_server || missing+=(postgresql postgresql-contrib)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
id postgres >/dev/null 2>&1 || missing+=(postgresql)
# Debian's package serves Debian's interpreter, whatever python3 is first
# on PATH (the tests run /usr/bin/python3).
/usr/bin/python3 -c 'import psycopg2' >/dev/null 2>&1 || missing+=(python3-psycopg2)
# pgjdbc: the tests compile with javac and run with java from PATH, against
# Debian's jar at this path.
if ! command -v javac >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1; then
    missing+=(openjdk-17-jdk-headless)
fi
[ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
command -v sysbench >/dev/null 2>&1 || missing+=(sysbench)
# pgbouncer: `tashkent bench --systems pgbouncer` (in the default systems).
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
# nft: a test silences a link by dropping its packets (the certifier
# drops a peer that acknowledges nothing).
[ -x /usr/sbin/nft ] || command -v nft >/dev/null 2>&1 || missing+=(nftables)
# mkfs.ext4 and fsfreeze: a test hangs a certifier's disk by freezing an
# ext4 image it mounts on a loop device (both are in Debian's base system).
[ -x /usr/sbin/mkfs.ext4 ] || command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
[ -x /usr/sbin/fsfreeze ] || command -v fsfreeze >/dev/null 2>&1 || missing+=(util-linux)
if have_server && ! have_headers; then
    missing+=("postgresql-server-dev-$(server_major)")
fi

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
if ! have_headers; then
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "postgresql-server-dev-$(server_major)" >/dev/null
fi
have_headers || {
    echo "setup: PostgreSQL server headers still missing after install" >&2
    exit 1
}
