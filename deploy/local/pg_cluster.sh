# shellcheck shell=bash
# The Debian PostgreSQL cluster helpers postgres.sh and debezium.sh share; each sets PG_HOST,
# PG_PORT, PG_CLUSTER and PG_START_TIMEOUT for its own cluster before sourcing this.

installed_versions() {
    local d
    for d in /usr/lib/postgresql/*/bin/initdb; do
        [[ -x "$d" ]] && basename "$(dirname "$(dirname "$d")")"
    done | sort -n
}

cluster_version_of() { # cluster_version_of NAME: the major version of that cluster, if it exists
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    pg_lsclusters -h 2>/dev/null | awk -v c="$1" '$2 == c { print $1; exit }' | grep .
}

cluster_version() { cluster_version_of "$PG_CLUSTER"; }

cluster_online() {
    pg_lsclusters -h 2>/dev/null | awk -v c="$PG_CLUSTER" '$2 == c { print $4 }' | grep -q online
}

as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@" 8>&- 9>&-)
    else
        (cd / && sudo -u postgres "$@" 8>&- 9>&-)
    fi
}

psql_admin() { # psql_admin [DB]: SQL on stdin, as the postgres superuser over the Unix socket
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d "${1:-postgres}"
}

wait_ready() {
    local deadline=$((SECONDS + PG_START_TIMEOUT)) v
    until pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 1; do
        if ((SECONDS >= deadline)); then
            v="$(cluster_version)"
            log "last lines of /var/log/postgresql/postgresql-$v-$PG_CLUSTER.log:"
            tail -n 30 "/var/log/postgresql/postgresql-$v-$PG_CLUSTER.log" >&2 || true
            die "PostgreSQL did not accept connections on $PG_HOST:$PG_PORT within ${PG_START_TIMEOUT}s"
        fi
        sleep 0.3
    done
}

install_conf() { # install_conf FILE TEXT: write a conf.d file; returns 0 if it changed
    if [[ -f "$1" && "$(cat "$1")" == "${2%$'\n'}" ]]; then
        return 1
    fi
    as_root install -d -o postgres -g postgres "$(dirname "$1")"
    printf '%s' "$2" | as_root tee "$1" >/dev/null
    as_root chown postgres:postgres "$1"
    return 0
}

provision_database() { # provision_database 'ROLE ATTRIBUTES' [SQL]: the superuser's password,
    # PG_ROLE with those attributes and PG_PASSWORD, PG_DB owned by it; then SQL, if any
    psql_admin <<SQL
ALTER ROLE postgres PASSWORD '$PG_SUPERUSER_PASSWORD';
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
        CREATE ROLE $PG_ROLE $1 PASSWORD '$PG_PASSWORD';
    ELSE
        ALTER ROLE $PG_ROLE $1 PASSWORD '$PG_PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_ROLE ENCODING ''UTF8'''
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB')
\gexec
${2:-}
SQL
}
