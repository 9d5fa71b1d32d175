#!/usr/bin/env bash
# Debezium's PostgreSQL connector + Outbox Event Router as an alternative outbox relay, for
# benchmarks and e2e tests against our own relay (deploy/debezium/README.md).
#
#   deploy/local/debezium.sh start|db|stop|restart|status|url|pid|lag|reset|clean|drop
#
# start    starts (creating it the first time) a PostgreSQL cluster of its own with
#          wal_level=logical, applies the service's migrations to it, then runs Kafka Connect
#          (standalone) with the connector of deploy/debezium/outbox-connector.json, and waits
#          until the connector and its task are RUNNING. The default cluster of postgres.sh
#          (port 55432) is never touched: logical decoding needs a restart with
#          wal_level=logical there, and it would keep WAL for the slot.
# db       only the logical cluster and its migrations, without Connect (a run of our own relay
#          on the same database, before Connect starts).
# stop     stops Connect, then the logical cluster. The slot and Connect's offsets are kept,
#          so the next start resumes where this one stopped.
# status   Connect's process, connector and task state, the slot's lag.
# url      the DATABASE_URL of the logical cluster (run the service against it with
#          OUTBOX_PUBLISHER=external, or insert into its outbox).
# pid      the PID of the running Connect JVM (exit status 1 if none).
# lag      the slot's confirmed_flush_lsn against the server's current WAL position.
# reset    stops Connect, drops the slot and the publication and deletes Connect's offsets:
#          the next start begins afresh (after snapshot.mode). The outbox is left as it is.
# clean    reset, and delete generated config and logs (keeps the jars).
# drop     clean, then delete the logical cluster and all its data.
#
# Environment (read by start):
#   DEBEZIUM_EVENTS_TOPIC   topic every outbox row goes to (default customer-groups.events,
#                           service/config.py's topic_events). Created with
#                           DEBEZIUM_EVENTS_PARTITIONS (default 6) partitions if missing.
#   DEBEZIUM_DATABASE_URL   the database to capture (default: the logical cluster below). It must
#                           run with wal_level=logical; its role needs REPLICATION and must own
#                           public.outbox (Debezium creates the publication). If it is set, this
#                           script leaves the database alone (no cluster, no migrations).
#   DEBEZIUM_CE_SOURCE      the ce_source header (default customer-groups, as CE_SOURCE).
#   DEBEZIUM_CE_DATASCHEMA  the ce_dataschema header (default, as the service's default
#                           CE_DATASCHEMA_BASE: <base>/event.schema.json).
#   DEBEZIUM_SNAPSHOT_MODE  no_data (default): only rows inserted after the slot was created;
#                           initial: first the rows that are not yet published (not parked), then
#                           streaming. Applies only when there are no offsets yet (first start or
#                           after reset).
#   DEBEZIUM_SLOT_NAME      replication slot and publication name (default customer_groups_outbox).
#   DEBEZIUM_REST_PORT      Connect's REST port on 127.0.0.1 (default 8083).
#   KAFKA_BOOTSTRAP_SERVERS the broker (default 127.0.0.1:9092).
#   DEBEZIUM_HEAP_OPTS      (default -Xms128m -Xmx512m).
#
# The logical cluster: Debian cluster <ver>/customer_groups_logical on 127.0.0.1:55433, same
# major version as postgres.sh's; role customer_groups (password customer_groups, LOGIN CREATEDB
# REPLICATION) owns database customer_groups; superuser postgres / postgres. Debezium connects as
# customer_groups: REPLICATION lets it stream, owning the outbox lets it create the publication.
#
# Files are under <repo>/.local/debezium/:
#   runtime/            Kafka Connect's jars (the JVM classpath), same version as the broker
#   plugins/debezium-connector-postgres/   Debezium's jars (plugin.path, own class loader)
#                       both fetched with Maven via deploy/local/debezium-pom.xml, cached,
#                       re-fetched only when that pom or the broker's kafka.version changes
#   worker.properties, connector.properties, log4j2.properties   generated on each start
#   offsets.dat         Connect's source offsets (the LSN Debezium has published up to)
#   connect.log         Connect's log (previous run in connect.log.1)
#   connect.pid         PID of the Connect JVM
set -euo pipefail

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=SCRIPTDIR/pg_cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/pg_cluster.sh"
LOG_TAG=debezium

DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
POM="$LOCAL_DIR/debezium-pom.xml"
KAFKA_POM="$LOCAL_DIR/pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM")"
CONNECTOR_JSON="$REPO_ROOT/deploy/debezium/outbox-connector.json"

DBZ_DIR="$STATE_DIR/debezium"
RUNTIME="$DBZ_DIR/runtime"
PLUGINS="$DBZ_DIR/plugins"
PLUGIN_DIR="$PLUGINS/debezium-connector-postgres"
WORKER_CONF="$DBZ_DIR/worker.properties"
CONNECTOR_CONF="$DBZ_DIR/connector.properties"
LOG4J_CONF="$DBZ_DIR/log4j2.properties"
OFFSETS="$DBZ_DIR/offsets.dat"
LOG_FILE="$DBZ_DIR/connect.log"
PID_FILE="$DBZ_DIR/connect.pid"

PG_CLUSTER=customer_groups_logical
PG_HOST=127.0.0.1
PG_PORT="${DEBEZIUM_PG_PORT:-55433}"
PG_ROLE=customer_groups
PG_PASSWORD=customer_groups
PG_DB=customer_groups
PG_SUPERUSER_PASSWORD=postgres
PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"
LOCAL_URL="postgresql://$PG_ROLE:$PG_PASSWORD@$PG_HOST:$PG_PORT/$PG_DB?sslmode=disable"

DATABASE_URL_DBZ="${DEBEZIUM_DATABASE_URL:-$LOCAL_URL}"
EVENTS_TOPIC="${DEBEZIUM_EVENTS_TOPIC:-customer-groups.events}"
EVENTS_PARTITIONS="${DEBEZIUM_EVENTS_PARTITIONS:-6}"
CE_SOURCE="${DEBEZIUM_CE_SOURCE:-customer-groups}"
CE_DATASCHEMA="${DEBEZIUM_CE_DATASCHEMA:-https://customer-groups.invalid/schemas/v1/event.schema.json}"
SNAPSHOT_MODE="${DEBEZIUM_SNAPSHOT_MODE:-no_data}"
SLOT_NAME="${DEBEZIUM_SLOT_NAME:-customer_groups_outbox}"
REST_PORT="${DEBEZIUM_REST_PORT:-8083}"
REST="http://127.0.0.1:$REST_PORT"
BOOTSTRAP="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
HEAP_OPTS="${DEBEZIUM_HEAP_OPTS:--Xms128m -Xmx512m}"
CONNECT_START_TIMEOUT="${CONNECT_START_TIMEOUT:-120}"
CONNECTOR_NAME="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["name"])' "$CONNECTOR_JSON")"
# Debezium's heartbeats (heartbeat.interval.ms) go to __debezium-heartbeat.<topic.prefix>.
HEARTBEAT_TOPIC="__debezium-heartbeat.$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["topic.prefix"])' "$CONNECTOR_JSON")"
VENV_BIN="$REPO_ROOT/.venv/bin"

# Is the database ours (the logical cluster) or one given by DEBEZIUM_DATABASE_URL?
managed_db() { [[ "$DATABASE_URL_DBZ" == "$LOCAL_URL" ]]; }

# ---------------------------------------------------------------- jars

libs_stamp() {
    echo "connect $KAFKA_VERSION pom-sha256 $(sha256sum "$POM" | cut -d' ' -f1)"
}
libs_fresh() {
    [[ -f "$RUNTIME/.stamp" && "$(cat "$RUNTIME/.stamp")" == "$(libs_stamp)" &&
        -f "$PLUGIN_DIR/.stamp" && "$(cat "$PLUGIN_DIR/.stamp")" == "$(libs_stamp)" ]]
}

mvn_copy() { # mvn_copy PROFILE DIR
    if ! mvn -B -q -Dstyle.color=never -f "$POM" -P"$1" -Dkafka.version="$KAFKA_VERSION" \
        "$DEPENDENCY_PLUGIN:copy-dependencies" -DincludeScope=runtime -DoutputDirectory="$2" \
        >"$DBZ_DIR/mvn.log" 2>&1; then
        cat "$DBZ_DIR/mvn.log" >&2
        rm -rf "$2"
        die "mvn could not fetch the $1 jars (see above)"
    fi
}

fetch_libs() {
    libs_fresh && return 0
    command -v mvn >/dev/null 2>&1 || apt_install maven
    local t0=$EPOCHREALTIME
    log "fetching Kafka Connect $KAFKA_VERSION and Debezium jars with Maven (only once; cached in $DBZ_DIR)"
    rm -rf "$RUNTIME.tmp" "$PLUGINS.tmp"
    mvn_copy connect-runtime "$RUNTIME.tmp"
    mvn_copy debezium-plugin "$PLUGINS.tmp/debezium-connector-postgres"
    ls "$RUNTIME.tmp"/connect-runtime-"$KAFKA_VERSION".jar >/dev/null 2>&1 || die "connect-runtime jar missing after mvn"
    ls "$PLUGINS.tmp"/debezium-connector-postgres/debezium-connector-postgres-*.jar >/dev/null 2>&1 ||
        die "debezium-connector-postgres jar missing after mvn"
    libs_stamp >"$RUNTIME.tmp/.stamp"
    libs_stamp >"$PLUGINS.tmp/debezium-connector-postgres/.stamp"
    rm -rf "$RUNTIME" "$PLUGINS"
    mv "$RUNTIME.tmp" "$RUNTIME"
    mv "$PLUGINS.tmp" "$PLUGINS"
    log "fetched $(find "$RUNTIME" "$PLUGINS" -name '*.jar' | wc -l) jars in $(elapsed "$t0")"
}

# ---------------------------------------------------------------- logical cluster

psql_db() { # psql_db SQL: one query against the captured database, unaligned output
    PGCONNECT_TIMEOUT=3 psql "$DATABASE_URL_DBZ" -X -Atq -v ON_ERROR_STOP=1 -c "$1"
}

write_pg_conf() { # write_pg_conf VERSION; returns 0 if the file changed
    local f="/etc/postgresql/$1/$PG_CLUSTER/conf.d/50-customer-groups-logical.conf" new
    new="# Generated by deploy/local/debezium.sh.
listen_addresses = '$PG_HOST'
port = $PG_PORT
max_connections = 200
# Logical decoding for Debezium (pgoutput).
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
# A slot nobody reads (Connect stopped for good) may keep this much WAL, then PostgreSQL
# invalidates it (the connector then needs a reset). Keeps a forgotten slot from filling the disk.
max_slot_wal_keep_size = 4GB
"
    install_conf "$f" "$new"
}

provision() {
    provision_database "LOGIN CREATEDB REPLICATION"
    PGCONNECT_TIMEOUT=3 psql "$LOCAL_URL" -Atqc 'select 1' >/dev/null 2>&1 ||
        die "cannot connect to $LOCAL_URL after provisioning"
}

start_cluster() {
    local ver t0=$EPOCHREALTIME
    command -v pg_createcluster >/dev/null 2>&1 && [[ -n "$(installed_versions)" ]] ||
        die "no Debian PostgreSQL here; run deploy/local/postgres.sh start first (it installs it)"
    if ! ver="$(cluster_version)"; then
        # The same major version as postgres.sh's cluster, so pg_dump/psql behave the same.
        ver="$(cluster_version_of customer_groups || installed_versions | tail -n1)"
        log "creating cluster $ver/$PG_CLUSTER on port $PG_PORT (wal_level=logical)"
        local out
        if ! out="$(as_root pg_createcluster "$ver" "$PG_CLUSTER" -p "$PG_PORT" \
            --locale C.UTF-8 -e UTF8 --start-conf manual 2>&1)"; then
            printf '%s\n' "$out" >&2
            die "pg_createcluster failed"
        fi
    fi
    if write_pg_conf "$ver" && cluster_online; then
        log "configuration changed; restarting cluster $ver/$PG_CLUSTER"
        as_root pg_ctlcluster "$ver" "$PG_CLUSTER" restart -m fast
    fi
    if ! cluster_online; then
        log "starting cluster $ver/$PG_CLUSTER on $PG_HOST:$PG_PORT"
        as_root pg_ctlcluster "$ver" "$PG_CLUSTER" start
    fi
    wait_ready
    provision
    log "cluster $ver/$PG_CLUSTER ready after $(elapsed "$t0"): $LOCAL_URL"
}

stop_cluster() {
    local ver
    ver="$(cluster_version)" || return 0
    cluster_online || return 0
    log "stopping cluster $ver/$PG_CLUSTER"
    as_root pg_ctlcluster "$ver" "$PG_CLUSTER" stop -m fast
}

migrate() {
    [[ -x "$VENV_BIN/customer-groups" ]] ||
        die "$VENV_BIN/customer-groups missing (make install?); cannot apply migrations"
    log "applying migrations to $LOCAL_URL"
    (cd "$REPO_ROOT" && DATABASE_URL="$LOCAL_URL" "$VENV_BIN/customer-groups" migrate >&2)
}

# ---------------------------------------------------------------- Kafka Connect

# PID of the Connect JVM started from this checkout, if it is still alive.
our_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "ConnectStandalone $WORKER_CONF" || return 1
    echo "$pid"
}

rest() { curl -fsS --max-time 5 "$REST$1"; }

port_free() {
    python3 - "$REST_PORT" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

# The broker creates no topic by itself (auto.create.topics.enable=false): the events topic
# and Debezium's heartbeat topic are created here when missing.
ensure_topics() {
    [[ -x "$VENV_BIN/python" ]] || {
        log "WARNING: no $VENV_BIN/python; make sure topics $EVENTS_TOPIC and $HEARTBEAT_TOPIC exist"
        return 0
    }
    "$VENV_BIN/python" - "$BOOTSTRAP" "$EVENTS_TOPIC:$EVENTS_PARTITIONS" "$HEARTBEAT_TOPIC:1" <<'EOF'
import asyncio, contextlib, sys
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

async def main(bootstrap, *wanted):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        for item in wanted:
            topic, partitions = item.rsplit(":", 1)
            if topic in existing:
                continue
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, int(partitions), 1)])
            print(f"[debezium] created topic {topic} ({partitions} partitions)", file=sys.stderr)
    finally:
        await admin.close()

asyncio.run(main(*sys.argv[1:]))
EOF
}

write_connect_config() {
    cat >"$WORKER_CONF" <<EOF
# Generated by deploy/local/debezium.sh. Edits are lost on the next start.
bootstrap.servers=$BOOTSTRAP
listeners=http://127.0.0.1:$REST_PORT
plugin.path=$PLUGINS
# Every plugin jar declares its plugins for ServiceLoader: no reflective scan at startup.
plugin.discovery=service_load

key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
header.converter=org.apache.kafka.connect.storage.SimpleHeaderConverter

offset.storage.file.filename=$OFFSETS
# Debezium confirms an LSN to the slot (confirmed_flush_lsn) only once Connect has flushed
# the offsets that cover it: every second here (Connect's default is a minute).
offset.flush.interval.ms=1000

# As the service's relay producer (service/adapters/kafka/clients.py): idempotent, acks=all,
# linger 1 ms, 512 KiB batches. Connect's own default is one request in flight.
producer.enable.idempotence=true
producer.acks=all
producer.max.in.flight.requests.per.connection=5
producer.linger.ms=1
producer.batch.size=524288
producer.client.id=customer-groups-debezium
EOF

    python3 - "$CONNECTOR_JSON" "$CONNECTOR_CONF" "$DATABASE_URL_DBZ" "$EVENTS_TOPIC" \
        "$CE_SOURCE" "$CE_DATASCHEMA" "$SNAPSHOT_MODE" "$SLOT_NAME" <<'EOF'
import json, sys, urllib.parse
src, dst, url, topic, source, dataschema, snapshot, slot = sys.argv[1:]
u = urllib.parse.urlsplit(url)
query = dict(urllib.parse.parse_qsl(u.query))
values = {
    "@DB_HOST@": u.hostname or "127.0.0.1",
    "@DB_PORT@": str(u.port or 5432),
    "@DB_USER@": urllib.parse.unquote(u.username or ""),
    "@DB_PASSWORD@": urllib.parse.unquote(u.password or ""),
    "@DB_NAME@": urllib.parse.unquote(u.path.lstrip("/")),
    "@DB_SSLMODE@": query.get("sslmode", "prefer"),
    "@EVENTS_TOPIC@": topic,
    "@CE_SOURCE@": source,
    "@CE_DATASCHEMA@": dataschema,
    "@SNAPSHOT_MODE@": snapshot,
    "@SLOT_NAME@": slot,
}
doc = json.load(open(src))

def resolve(value):
    for k, v in values.items():
        value = value.replace(k, v)
    if "@" in value and any(k in value for k in values):
        raise SystemExit(f"unresolved placeholder in {value!r}")
    return value

def escape(text, key=False):
    out = text.replace("\\", "\\\\").replace("\n", "\\n")
    if key:
        for c in " =:#!":
            out = out.replace(c, "\\" + c)
    elif out.startswith(" "):
        out = "\\" + out
    return out

lines = ["# Generated by deploy/local/debezium.sh from deploy/debezium/outbox-connector.json.",
         f"name={escape(doc['name'])}"]
for key, value in doc["config"].items():
    lines.append(f"{escape(key, key=True)}={escape(resolve(value))}")
with open(dst, "w") as f:
    f.write("\n".join(lines) + "\n")
EOF
    chmod 600 "$CONNECTOR_CONF"

    cat >"$LOG4J_CONF" <<'EOF'
# Generated by deploy/local/debezium.sh (log4j2 properties format).
status = warn
name = local-connect
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.netclient.name = org.apache.kafka.clients.NetworkClient
logger.netclient.level = WARN
logger.clientconfig.name = org.apache.kafka.common.config.AbstractConfig
logger.clientconfig.level = WARN
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
EOF
}

log_tail() {
    log "last lines of $LOG_FILE:"
    tail -n 40 "$LOG_FILE" >&2 || true
}

connector_state() { # prints "<connector state> <task 0 state>"
    rest "/connectors/$CONNECTOR_NAME/status" 2>/dev/null |
        python3 -c 'import json,sys; s=json.load(sys.stdin); t=s.get("tasks") or [{}]; print(s["connector"]["state"], t[0].get("state", "NONE"))' 2>/dev/null
}

# Offsets whose slot is gone (dropped, or in another database) make Debezium refuse to start
# ("no longer available on the server"): nothing they point at can be read any more.
forget_orphan_offsets() {
    [[ -f "$OFFSETS" ]] || return 0
    local found
    found="$(psql_db "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$SLOT_NAME'
                      AND database = current_database()" 2>/dev/null || echo unknown)"
    if [[ "$found" == 0 ]]; then
        log "Connect's offsets have no slot $SLOT_NAME in this database: starting afresh"
        rm -f "$OFFSETS"
    fi
}

start_connect() {
    local pid t0=$EPOCHREALTIME
    if pid="$(our_pid)"; then
        log "Connect already running (pid $pid); '$0 restart' applies a changed configuration"
        return 0
    fi
    rm -f "$PID_FILE"
    port_free || die "port $REST_PORT is taken; set DEBEZIUM_REST_PORT"
    command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
    fetch_libs
    ensure_topics
    forget_orphan_offsets
    write_connect_config

    [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"
    log "starting Kafka Connect $KAFKA_VERSION (standalone) on $REST, events to $EVENTS_TOPIC (log: $LOG_FILE)"
    # As kafka.sh: setsid keeps it out of the caller's process group; the PID file holds the
    # JVM's PID; 9>&- so the JVM doesn't hold our lock.
    # shellcheck disable=SC2016,SC2086
    PID_FILE="$PID_FILE" nohup setsid bash -c 'echo $$ >"$PID_FILE"; exec "$@"' connect \
        java $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$LOG4J_CONF" -cp "$RUNTIME/*" \
        org.apache.kafka.connect.cli.ConnectStandalone "$WORKER_CONF" "$CONNECTOR_CONF" \
        </dev/null >"$LOG_FILE" 2>&1 9>&- &

    local deadline=$((SECONDS + CONNECT_START_TIMEOUT)) state=""
    while :; do
        state="$(connector_state || true)"
        if [[ "$state" == "RUNNING RUNNING" ]]; then
            log "connector $CONNECTOR_NAME RUNNING after $(elapsed "$t0")"
            return 0
        fi
        if [[ "$state" == *FAILED* ]]; then
            rest "/connectors/$CONNECTOR_NAME/status" >&2 || true
            log_tail
            die "connector $CONNECTOR_NAME failed (Connect keeps running; '$0 stop' to stop it)"
        fi
        if ((SECONDS >= deadline)); then
            log_tail
            die "connector not RUNNING within ${CONNECT_START_TIMEOUT}s (state: ${state:-no answer})"
        fi
        if [[ -f "$PID_FILE" ]] && ! our_pid >/dev/null; then
            log_tail
            rm -f "$PID_FILE"
            die "Kafka Connect exited during startup"
        fi
        sleep 0.5
    done
}

stop_connect() {
    local pid
    if ! pid="$(our_pid)"; then
        rm -f "$PID_FILE"
        return 0
    fi
    log "stopping Kafka Connect (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 300; i++)); do # up to 30s: the task stops and flushes its offsets
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "still alive after 30s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PID_FILE"
}

# ---------------------------------------------------------------- commands

database() {
    if managed_db; then
        start_cluster
        migrate
    fi
}

start() {
    database
    start_connect
}

stop() {
    stop_connect
    managed_db && stop_cluster
    log "stopped"
}

lag() {
    psql_db "SELECT slot_name, active, confirmed_flush_lsn, pg_current_wal_lsn() AS current_lsn,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) AS lag_bytes
             FROM pg_replication_slots WHERE slot_name = '$SLOT_NAME'"
}

status() {
    local pid rc=0
    if pid="$(our_pid)"; then
        echo "connect: running (pid $pid, RSS $(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status")) on $REST;" \
            "$CONNECTOR_NAME: $(connector_state || echo 'no answer')"
    else
        echo "connect: not running"
        rc=3
    fi
    if managed_db; then
        local ver
        if ! ver="$(cluster_version)"; then
            echo "logical cluster: not created"
            return 3
        fi
        cluster_online || {
            echo "logical cluster: $ver/$PG_CLUSTER not running"
            return 3
        }
        echo "logical cluster: $ver/$PG_CLUSTER running on $PG_HOST:$PG_PORT ($LOCAL_URL)"
    fi
    echo "slot (name|active|confirmed_flush_lsn|current_lsn|lag_bytes): $(lag 2>/dev/null || echo unknown)"
    return $rc
}

reset() {
    stop_connect
    if psql_db 'select 1' >/dev/null 2>&1; then
        log "dropping slot and publication $SLOT_NAME"
        psql_db "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = '$SLOT_NAME' AND NOT active" >/dev/null
        psql_db "DROP PUBLICATION IF EXISTS $SLOT_NAME" >/dev/null
    elif managed_db && cluster_version >/dev/null; then
        die "the logical cluster is not running; start it (or '$0 drop') before a reset"
    else
        log "WARNING: database not reachable; slot $SLOT_NAME (if any) was not dropped"
    fi
    log "deleting Connect's offsets"
    rm -f "$OFFSETS"
}

clean() {
    reset
    log "removing generated config and logs (keeping the jars)"
    rm -f "$WORKER_CONF" "$CONNECTOR_CONF" "$LOG4J_CONF" "$LOG_FILE" "$LOG_FILE.1" "$DBZ_DIR/mvn.log"
}

drop() {
    stop_connect
    rm -f "$OFFSETS" "$WORKER_CONF" "$CONNECTOR_CONF" "$LOG4J_CONF" "$LOG_FILE" "$LOG_FILE.1"
    local ver
    if ver="$(cluster_version)"; then
        log "dropping cluster $ver/$PG_CLUSTER and its data"
        as_root pg_dropcluster --stop "$ver" "$PG_CLUSTER"
    fi
}

with_lock() {
    mkdir -p "$DBZ_DIR"
    exec 9>"$DBZ_DIR/.lock"
    flock 9
    "$@"
}

case "${1:-}" in
start) with_lock start ;;
db) with_lock database ;;
stop) with_lock stop ;;
restart) with_lock stop_connect && with_lock start ;;
status) status ;;
url) echo "$DATABASE_URL_DBZ" ;;
pid) our_pid ;;
lag) lag ;;
reset) with_lock reset ;;
clean) with_lock clean ;;
drop) with_lock drop ;;
*)
    echo "usage: $0 start|db|stop|restart|status|url|pid|lag|reset|clean|drop" >&2
    exit 2
    ;;
esac
