# shellcheck shell=bash
#
# Throwaway Redis and PostgreSQL servers on loopback for the test suite.
#
# Source this file, then:
#
#   services_start    # starts both, exports the URLs below, fails loudly
#   services_stop     # stops both and removes their files; safe to call twice
#
# Exports
#   BUTTRESS_REDIS_URL      redis://127.0.0.1:<port>/
#   BUTTRESS_POSTGRES_URL   postgres://postgres@127.0.0.1:<port>/buttress_test
#
# Each server gets a free port and lives in one temporary directory (no
# persistence, no fsync); nothing outside it is touched. Call services_stop
# from an EXIT trap so the servers go away even when the tests fail.
#
# Also usable by hand, for a shell with the servers running:
#
#   source scripts/services.sh && services_start && trap services_stop EXIT

SERVICES_DIR=""
SERVICES_PG_BIN=""
SERVICES_PG_DATA=""

services_log() { printf '    %s\n' "$*"; }
services_die() {
    printf 'error: %s\n' "$*" >&2
    return 1
}

# A TCP port on 127.0.0.1 that nobody listens on right now. Another process
# may still take it before the server binds, so callers retry with a new one.
services_free_port() {
    local port tries=0
    while [ "$tries" -lt 100 ]; do
        port=$((20000 + RANDOM % 40000))
        # A refused connection means the port is free.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            printf '%s\n' "$port"
            return 0
        fi
        tries=$((tries + 1))
    done
    services_die "no free TCP port found on 127.0.0.1"
}

# The Debian PostgreSQL binaries (/usr/lib/postgresql/<ver>/bin), newest
# version first. Wrappers or symlinks elsewhere on PATH are ignored so the
# tools always match the installed server.
services_pg_bindir() {
    local dir
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5 -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ] && [ -x "$dir/pg_isready" ]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    return 1
}

# Runs a command as the user that owns the PostgreSQL cluster: `postgres`
# when we are root (initdb and the server refuse to run as root), else us.
services_as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd "$SERVICES_DIR" && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

services_start_redis() {
    command -v redis-server >/dev/null || services_die "redis-server is not installed" || return 1
    command -v redis-cli >/dev/null || services_die "redis-cli is not installed" || return 1
    local dir="$SERVICES_DIR/redis" attempt port
    mkdir -p "$dir"
    for attempt in 1 2 3; do
        port=$(services_free_port) || return 1
        rm -f "$dir/redis.pid"
        # --save "" and --appendonly no: nothing is ever written to disk.
        if redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes \
            --daemonize yes --pidfile "$dir/redis.pid" --dir "$dir" \
            --logfile "$dir/redis.log" --save "" --appendonly no \
            </dev/null >>"$dir/redis.out" 2>&1; then
            for _ in $(seq 1 50); do
                if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
                    export BUTTRESS_REDIS_URL="redis://127.0.0.1:$port/"
                    services_log "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$port"
                    return 0
                fi
                sleep 0.2
            done
        fi
        services_log "redis-server did not come up on port $port (attempt $attempt)"
        services_stop_redis
    done
    cat "$dir/redis.out" "$dir/redis.log" 2>/dev/null | sed 's/^/    redis: /' >&2 || true
    services_die "could not start redis-server"
}

services_stop_redis() {
    local pidfile="$SERVICES_DIR/redis/redis.pid" pid
    [ -n "$SERVICES_DIR" ] && [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    }

services_start_postgres() {
    SERVICES_PG_BIN=$(services_pg_bindir) ||
        services_die "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (install the postgresql package)" || return 1
    local dir="$SERVICES_DIR/postgres" attempt port
    SERVICES_PG_DATA="$dir/data"
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || services_die "no 'postgres' user to run PostgreSQL as (running as root)" || return 1
        chown postgres: "$dir"
        if ! runuser -u postgres -- test -w "$dir"; then
            services_die "user postgres cannot write to $dir; set TMPDIR to a directory it can reach" || return 1
        fi
    fi
    if ! services_as_pg "$SERVICES_PG_BIN/initdb" -D "$SERVICES_PG_DATA" -U postgres \
        --auth=trust --encoding=UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1; then
        sed 's/^/    initdb: /' "$dir/initdb.log" >&2
        services_die "initdb failed" || return 1
    fi
    for attempt in 1 2 3; do
        port=$(services_free_port) || return 1
        # Throwaway cluster: trade durability for speed.
        services_as_pg tee -a "$SERVICES_PG_DATA/postgresql.conf" >/dev/null <<EOF

# test cluster (attempt $attempt)
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        if services_as_pg "$SERVICES_PG_BIN/pg_ctl" -D "$SERVICES_PG_DATA" -l "$dir/postgres.log" \
            -w -t 60 start </dev/null >>"$dir/pg_ctl.log" 2>&1; then
            for _ in $(seq 1 50); do
                if "$SERVICES_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
                    if ! "$SERVICES_PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
                        -v ON_ERROR_STOP=1 -c 'CREATE DATABASE buttress_test' >>"$dir/pg_ctl.log" 2>&1; then
                        sed 's/^/    postgres: /' "$dir/pg_ctl.log" >&2
                        services_die "could not create database buttress_test" || return 1
                    fi
                    export BUTTRESS_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/buttress_test"
                    services_log "postgresql $("$SERVICES_PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
                    return 0
                fi
                sleep 0.2
            done
        fi
        services_log "postgresql did not come up on port $port (attempt $attempt)"
        services_stop_postgres
    done
    sed 's/^/    postgres.log: /' "$dir/postgres.log" >&2 2>/dev/null || true
    services_die "could not start postgresql"
}

services_stop_postgres() {
    [ -n "$SERVICES_PG_DATA" ] && [ -f "$SERVICES_PG_DATA/postmaster.pid" ] || return 0
    local pid
    pid=$(head -n 1 "$SERVICES_PG_DATA/postmaster.pid" 2>/dev/null || true)
    # Immediate mode: the cluster is thrown away, no checkpoint needed.
    services_as_pg "$SERVICES_PG_BIN/pg_ctl" -D "$SERVICES_PG_DATA" -m immediate -w -t 20 stop \
        </dev/null >/dev/null 2>&1 || true
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

services_start() {
    if [ -z "$SERVICES_DIR" ]; then
        SERVICES_DIR=$(mktemp -d "${TMPDIR:-/tmp}/buttress-services.XXXXXX") || return 1
        # The postgres user must be able to reach its directory inside.
        chmod 755 "$SERVICES_DIR"
    fi
    services_start_redis || return 1
    services_start_postgres || return 1
}

services_stop() {
    services_stop_postgres
    services_stop_redis
    if [ -n "$SERVICES_DIR" ] && [ -d "$SERVICES_DIR" ]; then
        rm -rf "$SERVICES_DIR"
    fi
    SERVICES_DIR=""
    SERVICES_PG_DATA=""
}
