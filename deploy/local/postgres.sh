#!/usr/bin/env bash
# Local PostgreSQL for development and tests.
#
#   deploy/local/postgres.sh start|stop|restart|status|url|drop
#
# If DATABASE_URL is set, reachable, and not this script's own local URL, start/stop do
# nothing: that database is used as it is. Otherwise the script runs a dedicated Debian
# cluster named "customer_groups" (postgresql-common: pg_createcluster/pg_ctlcluster) on
# 127.0.0.1:55432, so it never collides with a system cluster on 5432. It uses the newest
# installed major version and installs Debian's postgresql package if none is installed.
# The cluster runs as the postgres OS user and its data is under /var/lib/postgresql/<ver>/.
#
# Access over TCP (password, scram-sha-256):
#   postgresql://customer_groups:customer_groups@127.0.0.1:55432/customer_groups
#   (role customer_groups: LOGIN CREATEDB, owns database customer_groups)
#   superuser: postgres / postgres
# TLS: the cluster also takes TLS connections, with a certificate for 127.0.0.1/localhost
# signed by a CA of its own (deploy/local/tls.sh; under /etc/postgresql/<ver>/customer_groups/tls,
# ca.pem for clients). Role customer_groups_tls (password customer_groups_tls, a member of
# customer_groups) may connect over TLS only: its plaintext attempts are rejected.
# 'url' prints the DATABASE_URL to use; 'tls-url' and 'tls-ca' the TLS role's URL and the CA.
# 'drop' deletes the local cluster and all its data.
set -euo pipefail

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LOG_TAG=postgres

PG_CLUSTER=customer_groups
PG_HOST=127.0.0.1
PG_PORT=55432
PG_ROLE=customer_groups
PG_PASSWORD=customer_groups
PG_DB=customer_groups
PG_SUPERUSER_PASSWORD=postgres
PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"
LOCAL_URL="postgresql://$PG_ROLE:$PG_PASSWORD@$PG_HOST:$PG_PORT/$PG_DB?sslmode=disable"
PG_TLS_ROLE=customer_groups_tls
PG_TLS_PASSWORD=customer_groups_tls
TLS_URL="postgresql://$PG_TLS_ROLE:$PG_TLS_PASSWORD@$PG_HOST:$PG_PORT/$PG_DB"
HBA_MARK="# customer-groups TLS role (deploy/local/postgres.sh)"

tls_dir() { echo "/etc/postgresql/$1/$PG_CLUSTER/tls"; }

# The server certificate, machine-wide like the cluster (not in a checkout that may go away).
ensure_tls() { # ensure_tls VERSION
    local dir
    dir="$(tls_dir "$1")"
    if [[ ! -s "$dir/server.key" ]]; then
        as_root bash "$LOCAL_DIR/tls.sh" "$dir"
        as_root chown -R postgres:postgres "$dir"
        as_root chmod 600 "$dir/server.key" "$dir/ca.key" "$dir/server-bundle.pem"
        as_root chmod 755 "$dir"
    fi
}

# The TLS role's rules first in pg_hba.conf: over TLS with its password, never in plaintext.
# Returns 0 if the file changed.
ensure_hba() { # ensure_hba VERSION
    local f="/etc/postgresql/$1/$PG_CLUSTER/pg_hba.conf" tmp
    as_root grep -qF "$HBA_MARK" "$f" && return 1
    tmp="$(mktemp)"
    {
        echo "$HBA_MARK"
        echo "hostnossl all $PG_TLS_ROLE 0.0.0.0/0 reject"
        echo "hostssl all $PG_TLS_ROLE $PG_HOST/32 scram-sha-256"
        as_root cat "$f"
    } >"$tmp"
    as_root install -o postgres -g postgres -m 640 "$tmp" "$f"
    rm -f "$tmp"
    return 0
}

# Is the database behind URL accepting connections (and, with psql, our credentials)?
reachable() {
    if command -v psql >/dev/null 2>&1; then
        PGCONNECT_TIMEOUT=3 psql "$1" -Atqc 'select 1' >/dev/null 2>&1
    else
        python3 - "$1" <<'EOF'
import socket, sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
try:
    socket.create_connection((u.hostname or "127.0.0.1", u.port or 5432), timeout=3).close()
except OSError:
    sys.exit(1)
EOF
    fi
}

# Is DATABASE_URL a database we should use as it is?
external_url() {
    [[ -n "${DATABASE_URL:-}" && "$DATABASE_URL" != "$LOCAL_URL" ]] || return 1
    if reachable "$DATABASE_URL"; then
        return 0
    fi
    log "WARNING: DATABASE_URL is set but not reachable; falling back to the local cluster"
    return 1
}

installed_versions() {
    local d
    for d in /usr/lib/postgresql/*/bin/initdb; do
        [[ -x "$d" ]] && basename "$(dirname "$(dirname "$d")")"
    done | sort -n
}

# Major version of our cluster, if it exists.
cluster_version() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    pg_lsclusters -h 2>/dev/null | awk -v c="$PG_CLUSTER" '$2 == c { print $1; exit }' | grep .
}

cluster_online() {
    pg_lsclusters -h 2>/dev/null | awk -v c="$PG_CLUSTER" '$2 == c { print $4 }' | grep -q online
}

ensure_installed() {
    if command -v pg_createcluster >/dev/null 2>&1 && [[ -n "$(installed_versions)" ]]; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "no Debian PostgreSQL (pg_createcluster) here; set DATABASE_URL to a PostgreSQL database instead"
    apt_install postgresql postgresql-client
    [[ -n "$(installed_versions)" ]] || die "postgresql installed, but no server binaries found"
}

as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@" 8>&- 9>&-)
    else
        (cd / && sudo -u postgres "$@" 8>&- 9>&-)
    fi
}

psql_admin() { # SQL on stdin, as the postgres superuser over the Unix socket (peer auth)
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres
}

write_conf() { # write_conf VERSION; returns 0 if the file changed
    local f="/etc/postgresql/$1/$PG_CLUSTER/conf.d/50-customer-groups.conf" new
    local tls
    tls="$(tls_dir "$1")"
    new="# Generated by deploy/local/postgres.sh.
listen_addresses = '$PG_HOST'
port = $PG_PORT
max_connections = 200
ssl = on
ssl_cert_file = '$tls/server.pem'
ssl_key_file = '$tls/server.key'
# synchronous_commit and fsync stay at their defaults (on): durability as in production.
"
    if [[ -f "$f" && "$(cat "$f")" == "${new%$'\n'}" ]]; then
        return 1
    fi
    as_root install -d -o postgres -g postgres "$(dirname "$f")"
    printf '%s' "$new" | as_root tee "$f" >/dev/null
    as_root chown postgres:postgres "$f"
    return 0
}

wait_ready() {
    local deadline=$((SECONDS + PG_START_TIMEOUT))
    until pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 1; do
        if ((SECONDS >= deadline)); then
            local v
            v="$(cluster_version)"
            log "last lines of /var/log/postgresql/postgresql-$v-$PG_CLUSTER.log:"
            tail -n 30 "/var/log/postgresql/postgresql-$v-$PG_CLUSTER.log" >&2 || true
            die "PostgreSQL did not accept connections on $PG_HOST:$PG_PORT within ${PG_START_TIMEOUT}s"
        fi
        sleep 0.3
    done
}

provision() {
    psql_admin <<SQL
ALTER ROLE postgres PASSWORD '$PG_SUPERUSER_PASSWORD';
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
        CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
    ELSE
        ALTER ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_ROLE ENCODING ''UTF8'''
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB')
\gexec
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_TLS_ROLE') THEN
        CREATE ROLE $PG_TLS_ROLE LOGIN PASSWORD '$PG_TLS_PASSWORD' IN ROLE $PG_ROLE;
    END IF;
END
\$\$;
SQL
    reachable "$LOCAL_URL" || die "cannot connect to $LOCAL_URL after provisioning"
}

start() {
    if external_url; then
        log "using DATABASE_URL as given; no local cluster needed"
        return 0
    fi
    local t0=$EPOCHREALTIME ver
    ensure_installed
    if ! ver="$(cluster_version)"; then
        ver="$(installed_versions | tail -n1)"
        log "creating cluster $ver/$PG_CLUSTER on port $PG_PORT"
        # C.UTF-8 is in every glibc-based Debian, with or without the locales package.
        local out
        if ! out="$(as_root pg_createcluster "$ver" "$PG_CLUSTER" -p "$PG_PORT" \
            --locale C.UTF-8 -e UTF8 --start-conf manual 2>&1)"; then
            printf '%s\n' "$out" >&2
            die "pg_createcluster failed"
        fi
    fi
    ensure_tls "$ver"
    local changed=1
    write_conf "$ver" && changed=0
    ensure_hba "$ver" && changed=0
    if ((changed == 0)) && cluster_online; then
        log "configuration changed; restarting cluster $ver/$PG_CLUSTER"
        as_root pg_ctlcluster "$ver" "$PG_CLUSTER" restart -m fast
    fi
    if cluster_online; then
        wait_ready
        provision
        log "already running: cluster $ver/$PG_CLUSTER on $PG_HOST:$PG_PORT"
        return 0
    fi
    log "starting cluster $ver/$PG_CLUSTER on $PG_HOST:$PG_PORT"
    as_root pg_ctlcluster "$ver" "$PG_CLUSTER" start
    wait_ready
    provision
    log "ready after $(elapsed "$t0"): $LOCAL_URL"
}

stop() {
    local ver
    if ! ver="$(cluster_version)"; then
        log "no local cluster; nothing to stop"
        return 0
    fi
    if ! cluster_online; then
        log "cluster $ver/$PG_CLUSTER not running"
        return 0
    fi
    log "stopping cluster $ver/$PG_CLUSTER"
    as_root pg_ctlcluster "$ver" "$PG_CLUSTER" stop -m fast
    log "stopped"
}

status() {
    if external_url 2>/dev/null; then
        echo "postgres: using DATABASE_URL (reachable)"
        return 0
    fi
    local ver
    if ! ver="$(cluster_version)"; then
        echo "postgres: local cluster not created"
        return 3
    fi
    if cluster_online && pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2; then
        echo "postgres: cluster $ver/$PG_CLUSTER running on $PG_HOST:$PG_PORT ($LOCAL_URL)"
        return 0
    fi
    echo "postgres: cluster $ver/$PG_CLUSTER not running"
    return 3
}

drop() {
    local ver
    if ver="$(cluster_version)"; then
        log "dropping cluster $ver/$PG_CLUSTER and its data"
        as_root pg_dropcluster --stop "$ver" "$PG_CLUSTER"
    else
        log "no local cluster; nothing to drop"
    fi
}

url() {
    if external_url 2>/dev/null; then
        echo "$DATABASE_URL"
    else
        echo "$LOCAL_URL"
    fi
}

with_lock() {
    # The cluster is machine-wide, so is the lock (not per checkout).
    exec 8>"${TMPDIR:-/tmp}/customer-groups-postgres.lock"
    flock 8
    "$@"
}

restart_running() { # restart_running fast|immediate: what a crash or a failover looks like to clients
    local ver mode="$1"
    [[ "$mode" == fast || "$mode" == immediate ]] || die "restart mode must be fast or immediate"
    ver="$(cluster_version)" || die "no local cluster to restart"
    log "restarting cluster $ver/$PG_CLUSTER (-m $mode)"
    as_root pg_ctlcluster "$ver" "$PG_CLUSTER" restart -m "$mode"
    wait_ready
}

case "${1:-}" in
start) with_lock start ;;
stop) with_lock stop ;;
restart)
    if [[ -n "${2:-}" ]]; then
        with_lock restart_running "$2"
    else
        with_lock stop && start
    fi
    ;;
status) status ;;
url) url ;;
tls-url) echo "$TLS_URL" ;;
tls-ca)
    ver="$(cluster_version)" || die "no local cluster"
    echo "$(tls_dir "$ver")/ca.pem"
    ;;
drop) with_lock drop ;;
*)
    echo "usage: $0 start|stop|restart [fast|immediate]|status|url|tls-url|tls-ca|drop" >&2
    exit 2
    ;;
esac
