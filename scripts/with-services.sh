#!/usr/bin/env bash
# Usage: scripts/with-services.sh [--data DIR] [--keep-data] COMMAND [ARGS...]
#
# Runs COMMAND with a real PostgreSQL and a real Redis, then stops what it started.
#   - DATABASE_URL / REDIS_URL are used as they are when they answer.
#   - Otherwise private instances are started from the installed server binaries, on free
#     loopback ports, with their data under DIR (default: a fresh .data/tmp-<pid>, removed on
#     exit unless --keep-data; `make run` passes --data .data/run so its database persists).
#     With a kept DIR the ports are kept too (DIR/pg.port, DIR/redis.port): the next run
#     listens on the same ones while they are free, so a printed DATABASE_URL stays valid.
#   - Migrations (migrations/*.sql) are applied with `maas-billing migrate`.
# COMMAND sees DATABASE_URL and REDIS_URL in its environment. Ctrl-C or any exit stops the
# private servers; nothing is left running.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

data_dir=""
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --data) data_dir="$2"; keep=1; shift 2 ;;
        --keep-data) keep=1; shift ;;
        --) shift; break ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--data DIR] COMMAND..." >&2; exit 2; }
[ -n "$data_dir" ] || data_dir="$ROOT/.data/tmp-$$"
mkdir -p "$data_dir"
data_dir="$(cd "$data_dir" && pwd)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# SO_REUSEADDR as the servers set it: a port whose last connections linger in TIME_WAIT is free.
port_is_free() { python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1",int(sys.argv[1])))' "$1" 2>/dev/null; }
# kept_port NAME: the port remembered in DIR/NAME.port when DIR is kept and it is free, else a
# free one (remembered when DIR is kept).
kept_port() {
    local file="$data_dir/$1.port" port=""
    if [ "$keep" = 1 ] && [ -f "$file" ]; then
        port="$(cat "$file")"
        if ! port_is_free "$port"; then
            echo "services: port $port of the last run is taken; choosing another" >&2
            port=""
        fi
    fi
    [ -n "$port" ] || port="$(free_port)"
    if [ "$keep" = 1 ]; then echo "$port" > "$file"; fi
    echo "$port"
}

pg_bin=""
for d in /usr/lib/postgresql/*/bin; do [ -x "$d/postgres" ] && pg_bin="$d"; done
started_pg=""
started_redis=""
redis_port=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$started_pg" ]; then
        runuser -u postgres -- "$pg_bin/pg_ctl" -D "$data_dir/pg" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [ -n "$started_redis" ]; then
        redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    fi
    if [ "$keep" = 0 ]; then rm -rf "$data_dir"; fi
    exit "$rc"
}
trap cleanup EXIT
# Ctrl-C reaches the whole foreground group: COMMAND handles it, and this script then exits
# with COMMAND's status (so `make run` stopped by Ctrl-C ends cleanly); TERM stops us.
trap ':' INT
trap 'exit 143' TERM

# --- PostgreSQL -------------------------------------------------------------------------------
if [ -n "${DATABASE_URL:-}" ] && psql "$DATABASE_URL" -Atqc 'select 1' >/dev/null 2>&1; then
    echo "services: using DATABASE_URL"
else
    [ -n "$pg_bin" ] || { echo "services: PostgreSQL server not installed (run make setup)" >&2; exit 1; }
    pg_port="$(kept_port pg)"
    chmod o+x "$ROOT" "$ROOT/.data" 2>/dev/null || true
    mkdir -p "$data_dir/pg"
    chown postgres: "$data_dir/pg"
    chmod 700 "$data_dir/pg"
    if [ ! -f "$data_dir/pg/PG_VERSION" ]; then
        runuser -u postgres -- "$pg_bin/initdb" -D "$data_dir/pg" -A trust -U maas -E UTF8 >/dev/null
    fi
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$data_dir/pg" -l "$data_dir/pg/server.log" -w \
        -o "-p $pg_port -k $data_dir/pg -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    started_pg=1
    base="postgres://maas@127.0.0.1:$pg_port"
    psql "$base/postgres" -Atqc "select 1 from pg_database where datname='maas'" | grep -q 1 \
        || psql "$base/postgres" -qc 'create database maas' >/dev/null
    export DATABASE_URL="$base/maas"
    echo "services: PostgreSQL on 127.0.0.1:$pg_port (data $data_dir/pg)"
fi

# --- Redis ------------------------------------------------------------------------------------
if [ -n "${REDIS_URL:-}" ] && redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG; then
    echo "services: using REDIS_URL"
else
    command -v redis-server >/dev/null || { echo "services: redis-server not installed (run make setup)" >&2; exit 1; }
    redis_port="$(kept_port redis)"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --dir "$data_dir" --logfile "$data_dir/redis.log" >/dev/null
    started_redis=1
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    export REDIS_URL="redis://127.0.0.1:$redis_port"
    echo "services: Redis on 127.0.0.1:$redis_port"
fi

# --- Migrations -------------------------------------------------------------------------------
cargo run -q -p maas-billing -- migrate

set +e
"$@"
exit $?
