# Shared helpers for deploy/local/*.sh. Source it; don't run it.
# shellcheck shell=bash

LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$LOCAL_DIR/../.." && pwd)"
# shellcheck disable=SC2034 # used by the scripts that source this file
STATE_DIR="$REPO_ROOT/.local"

log() { printf '[%s] %s\n' "${LOG_TAG:-local}" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# Runs a command as root. Fds 8 and 9 (the scripts' flock locks) are closed for it, so a
# daemon it starts (pg_ctlcluster, apt postinst scripts) doesn't hold the lock forever.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@" 8>&- 9>&-
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@" 8>&- 9>&-
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
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
        export APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >&2
}

# Print elapsed seconds since $1 (a value of $SECONDS or EPOCHREALTIME).
elapsed() { awk -v s="$1" -v e="${EPOCHREALTIME}" 'BEGIN { printf "%.1fs", e - s }'; }
