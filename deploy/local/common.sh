# Shared helpers for deploy/local/*.sh. Source it; don't run it.
# shellcheck shell=bash

LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$LOCAL_DIR/../.." && pwd)"
STATE_DIR="$REPO_ROOT/.local"

log() { printf '[%s] %s\n' "${LOG_TAG:-local}" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

# apt_install PKG...: install Debian packages. Runs 'apt-get update' once per
# services.sh run; APT_UPDATED is exported so child scripts skip it.
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these by hand: $*"
    if [[ -z "${APT_UPDATED:-}" ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        export APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# Print elapsed seconds since $1 (a value of $SECONDS or EPOCHREALTIME).
elapsed() { awk -v s="$1" -v e="${EPOCHREALTIME}" 'BEGIN { printf "%.1fs", e - s }'; }
