#!/usr/bin/env bash
# Prepare a Debian 12 machine to develop, test and run offload:
#   a. system packages (docker.io, docker-compose, redis-server, debootstrap, chromium, chromedriver,
#      prometheus, ...) -- apt runs only when one of them is missing; Debian's prometheus
#      service is not started (policy-rc.d): the tests start their own Prometheus on a free port
#   b. a running Docker engine (dockerd started in the background if none answers)
#   c. the virtualenv .venv with `pip install -e '.[dev]'` -- only when pyproject.toml
#      changed since the last successful install (stamp: .venv/.offload-stamp)
#   d. the local job images and the worker node image offload/worker
#      (infra/images/build.sh; rebuilds only what changed)
# Idempotent, and quick (seconds) when everything is already in place. Redis is not
# started here: tests and `offload up` start their own.
#
# Environment: OFFLOAD_VENV (default .venv), OFFLOAD_SKIP_IMAGES=1 (skip step d).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1

VENV=${OFFLOAD_VENV:-.venv}
STAMP="$VENV/.offload-stamp"
DOCKERD_LOG=/var/log/offload-dockerd.log
t_start=$SECONDS

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -E "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        as_root apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root apt-get install -y -qq "$@" >/dev/null ||
        die "apt-get install $* failed"
}

# --- a. system packages -------------------------------------------------------
missing=()
for tool in dockerd docker docker-compose redis-server debootstrap chromium chromedriver ip python3 flock openssl \
    prometheus promtool; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "missing: ${missing[*]}"
    # No package's service is started by this install (prometheus's would listen on :9090).
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        added_policy=1
    fi
    ok=1
    (apt_install docker.io docker-compose openssl redis-server debootstrap chromium chromium-driver \
        iproute2 python3 python3-venv ca-certificates util-linux prometheus) || ok=0
    if [ "$added_policy" = 1 ]; then as_root rm -f "$policy"; fi
    [ "$ok" = 1 ] || die "installing the system packages failed"
else
    log "system packages already installed"
fi

# --- b. docker engine ---------------------------------------------------------
docker_answers() { timeout 15 docker info >/dev/null 2>&1; }
dockerd_running() {  # without procps, which minimal systems may lack
    local comm
    for comm in /proc/[0-9]*/comm; do
        [ "$(cat "$comm" 2>/dev/null)" = dockerd ] && return 0
    done
    return 1
}

if docker_answers; then
    log "docker engine already running"
else
    started=0
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        log "starting docker with systemctl"
        if as_root systemctl start docker >/dev/null 2>&1; then started=1; fi
    fi
    if [ "$started" = 0 ] || ! docker_answers; then
        # A pid file left by a dockerd that died stops a new one from starting.
        if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid 2>/dev/null)" 2>/dev/null; then
            as_root rm -f /var/run/docker.pid
        fi
        if dockerd_running; then
            log "dockerd is running but not answering yet; waiting"
        else
            log "starting dockerd in the background (log: $DOCKERD_LOG)"
            as_root sh -c "nohup setsid dockerd >>'$DOCKERD_LOG' 2>&1 </dev/null &"
        fi
    fi
    for _ in $(seq 60); do
        docker_answers && break
        sleep 1
    done
    docker_answers || {
        tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
        die "the docker engine did not answer 'docker info' within 60 s (see $DOCKERD_LOG)"
    }
    log "docker engine running"
fi

# --- c. virtualenv --------------------------------------------------------------
venv_ok() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }

if ! venv_ok; then
    log "creating virtualenv $VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1 || ! venv_ok; then
        # Debian keeps ensurepip in python3-venv.
        apt_install python3-venv
        python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
        venv_ok || die "the virtualenv $VENV has no working pip"
    fi
fi

want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" = "$have" ] && [ -x "$VENV/bin/offload" ]; then
    log "python packages up to date ($VENV)"
else
    log "pip install -e '.[dev]' into $VENV (pyproject.toml changed or first install)"
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev]' ||
        die "pip install -e '.[dev]' failed"
    printf '%s\n' "$want" >"$STAMP"
fi

# --- d. job images --------------------------------------------------------------
if [ "${OFFLOAD_SKIP_IMAGES:-0}" = 1 ]; then
    log "skipping the images (OFFLOAD_SKIP_IMAGES=1)"
else
    "$ROOT/infra/images/build.sh"
fi

log "done in $((SECONDS - t_start)) s"
