#!/usr/bin/env bash
# Starts or stops the services the project needs: Kafka and PostgreSQL.
#
#   deploy/local/services.sh start|stop|restart|status|env
#
# start   starts local Kafka (deploy/local/kafka.sh) unless KAFKA_BOOTSTRAP_SERVERS points
#         elsewhere, and local PostgreSQL (deploy/local/postgres.sh) unless DATABASE_URL
#         points to a reachable database. Then it writes .local/env and prints it.
# stop    stops the local Kafka and PostgreSQL. Services given by the variables are never
#         touched.
# env     only writes and prints .local/env.
#
# Use the services from a shell with:  source .local/env
set -euo pipefail

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LOG_TAG=services

LOCAL_KAFKA=127.0.0.1:9092
ENV_FILE="$STATE_DIR/env"

# Kafka given by the user (anything other than the local broker's own address)?
external_kafka() { [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" && "$KAFKA_BOOTSTRAP_SERVERS" != "$LOCAL_KAFKA" ]]; }

write_env() {
    local kafka db
    kafka="${KAFKA_BOOTSTRAP_SERVERS:-$LOCAL_KAFKA}"
    external_kafka || kafka="$LOCAL_KAFKA"
    db="$(bash "$LOCAL_DIR/postgres.sh" url)"
    mkdir -p "$STATE_DIR"
    {
        echo "# Written by deploy/local/services.sh. Use it with: source .local/env"
        printf 'export DATABASE_URL=%q\n' "$db"
        printf 'export KAFKA_BOOTSTRAP_SERVERS=%q\n' "$kafka"
        # The local cluster's TLS-only role and its CA, for the tests of TLS (none when
        # DATABASE_URL names another database).
        if [[ "$db" == *"127.0.0.1:55432"* ]]; then
            printf 'export LOCAL_POSTGRES_TLS_URL=%q\n' "$(bash "$LOCAL_DIR/postgres.sh" tls-url)"
            printf 'export LOCAL_POSTGRES_TLS_CA=%q\n' "$(bash "$LOCAL_DIR/postgres.sh" tls-ca)"
        fi
    } >"$ENV_FILE.tmp"
    mv -f "$ENV_FILE.tmp" "$ENV_FILE"
    echo "Use these environment variables (saved in .local/env):"
    grep '^export ' "$ENV_FILE"
}

start() {
    local t0=$EPOCHREALTIME pg_pid rc=0
    # The test suite checks deploy/observability/alerts.yml with promtool.
    command -v promtool >/dev/null 2>&1 || apt_install prometheus
    # PostgreSQL in the background while Kafka starts: Kafka's JVM takes the longest.
    bash "$LOCAL_DIR/postgres.sh" start &
    pg_pid=$!
    if external_kafka; then
        log "using KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS as given"
        python3 "$LOCAL_DIR/kafka_ready.py" "$KAFKA_BOOTSTRAP_SERVERS" --wait 10 >/dev/null ||
            log "WARNING: no Kafka answers at $KAFKA_BOOTSTRAP_SERVERS"
    else
        bash "$LOCAL_DIR/kafka.sh" start || rc=1
    fi
    wait "$pg_pid" || rc=1
    ((rc == 0)) || die "could not start the services (see above)"
    log "services up in $(elapsed "$t0")"
    write_env
}

stop() {
    local rc=0
    bash "$LOCAL_DIR/kafka.sh" stop || rc=1
    bash "$LOCAL_DIR/postgres.sh" stop || rc=1
    return "$rc"
}

status() {
    local rc=0
    if external_kafka; then
        if python3 "$LOCAL_DIR/kafka_ready.py" "$KAFKA_BOOTSTRAP_SERVERS" >/dev/null 2>&1; then
            echo "kafka: using KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS (answering)"
        else
            echo "kafka: KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS is not answering"
            rc=1
        fi
    else
        bash "$LOCAL_DIR/kafka.sh" status || rc=1
    fi
    bash "$LOCAL_DIR/postgres.sh" status || rc=1
    return "$rc"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
restart) stop && start ;;
status) status ;;
env) write_env ;;
*)
    echo "usage: $0 start|stop|restart|status|env" >&2
    exit 2
    ;;
esac
