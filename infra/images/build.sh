#!/usr/bin/env bash
# Build the local offload images, idempotently:
#
#   offload/base         Debian bookworm minbase (debootstrap + docker import, or a
#                        pulled debian:bookworm-slim where a registry answers)
#   offload/python       offload/base + python3 + python3-pil
#   offload/fingerprint  offload/python + fingerprint.py (perceptual hash of one photo)
#   offload/dedupe       offload/python + dedupe.py (groups near-duplicate fingerprints)
#   offload/worker-deps  offload/python + a venv (/opt/offload) with offload's
#                        dependencies, installed offline from a wheelhouse built on the
#                        host (infra/.build/wheels; rebuilt when pyproject.toml changes)
#   offload/worker       offload/worker-deps + offload itself (a wheel of the working
#                        tree): a node of the docker provider
#
# Every image built from a Dockerfile carries the label offload.context-hash: the
# sha256 of its build context files, its Dockerfile, the recipe version below and
# the image id of its parent. An image is rebuilt only when that label differs or
# the image is missing; a rebuilt parent changes its id and so rebuilds the
# dependants. offload/base is built only when missing (OFFLOAD_REBUILD_BASE=1
# forces it). No image is ever pulled, except the optional base shortcut.
#
# Environment:
#   OFFLOAD_DEBIAN_MIRROR   debootstrap mirror   (default http://deb.debian.org/debian)
#   OFFLOAD_BASE_SOURCE     auto | debootstrap | pull   (default auto: try a pull for
#                           20 s, fall back to debootstrap)
#   OFFLOAD_REBUILD_BASE=1  rebuild offload/base even if it exists (dependants follow)
#   OFFLOAD_FORCE_BUILD=1   rebuild every Dockerfile image
#   OFFLOAD_VENV            the virtualenv whose pip builds the wheelhouse (default .venv)
#   OFFLOAD_SKIP_WORKER=1   do not build offload/worker
#   OFFLOAD_BUILD_CLUSTER=0 skip the test cluster's offload/redis (offload/base +
#                           redis-server) and offload/s3 (offload/worker-deps + moto, TLS),
#                           built by default (tests/cluster needs them)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SUITE=bookworm
MIRROR=${OFFLOAD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_SOURCE=${OFFLOAD_BASE_SOURCE:-auto}
# Bump when the way images are built changes in a way the hashed files do not show.
RECIPE_VERSION=1
BUILD_DIR="$ROOT/infra/.build"
LABEL_KEY=offload.context-hash

log() { printf 'images: %s\n' "$*"; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found (run infra/setup.sh)"
timeout 30 docker info >/dev/null 2>&1 || die "docker engine does not answer 'docker info' (run infra/setup.sh)"

# The classic builder is enough here; BuildKit needs the buildx plugin.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

mkdir -p "$BUILD_DIR"
# One build at a time (setup, tests and people may call this concurrently).
exec 9>"$BUILD_DIR/build.lock"
if ! flock -n 9; then
    log "another build is running; waiting for it"
    flock 9
fi

image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null; }

image_label() {
    docker image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$1" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# offload/base
# ---------------------------------------------------------------------------

ROOTFS=""
cleanup_rootfs() {
    [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ] || return 0
    # debootstrap may leave proc/sys mounted inside the target when it fails:
    # unmount (deepest first) before deleting, and never cross into another fs.
    local m
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v p="$ROOTFS/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$ROOTFS"
    ROOTFS=""
}
trap cleanup_rootfs EXIT
trap 'exit 130' INT TERM

# Trim a fresh minbase root and make it behave like Debian's container images.
prepare_rootfs() {
    local r=$1
    # apt sources: main + updates + security (deb822), replacing debootstrap's list.
    rm -f "$r/etc/apt/sources.list"
    cat >"$r/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # Same spirit as the official images: no caches, no translations, no docs.
    cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    printf 'Acquire::Languages "none";\n' >"$r/etc/apt/apt.conf.d/docker-no-languages"
    printf 'Acquire::GzipIndexes "true";\n' >"$r/etc/apt/apt.conf.d/docker-gzip-indexes"
    mkdir -p "$r/etc/dpkg/dpkg.cfg.d"
    cat >"$r/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
    # Never start services while installing packages in a build.
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
    chmod 0755 "$r/usr/sbin/policy-rc.d"
    # Docker provides these at run time; do not leak the build host's.
    : >"$r/etc/resolv.conf"
    : >"$r/etc/hostname"
    [ -e "$r/etc/machine-id" ] && : >"$r/etc/machine-id"
    # Drop what the exclusions above would have kept out, and the caches.
    find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/lintian/*
    find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
        "$r"/var/cache/debconf/*-old "$r"/var/log/*.log "$r"/var/log/apt/* "$r"/tmp/* "$r"/var/tmp/*
    mkdir -p "$r/var/lib/apt/lists/partial"
}

build_base_debootstrap() {
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found (run infra/setup.sh)"
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root to build offload/base"
    ROOTFS=$(mktemp -d "$BUILD_DIR/rootfs.XXXXXX")
    chmod 0755 "$ROOTFS"
    local keyring=() dlog="$BUILD_DIR/debootstrap.log"
    [ -r /usr/share/keyrings/debian-archive-keyring.gpg ] &&
        keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
    log "offload/base: debootstrap --variant=minbase $SUITE from $MIRROR (about a minute; log: ${dlog#"$ROOT"/})"
    if ! debootstrap --variant=minbase --components=main "${keyring[@]}" \
        "$SUITE" "$ROOTFS" "$MIRROR" >"$dlog" 2>&1; then
        tail -n 25 "$dlog" >&2 || true
        die "debootstrap failed (full log: $dlog)"
    fi
    prepare_rootfs "$ROOTFS"
    log "offload/base: importing the root filesystem"
    tar --numeric-owner --xattrs -C "$ROOTFS" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
        -cf - . |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change "LABEL org.offload.image=base org.offload.debian-suite=$SUITE $LABEL_KEY=debootstrap-$SUITE-minbase-v$RECIPE_VERSION" \
            --change 'CMD ["/bin/bash"]' \
            --message "offload base: debootstrap --variant=minbase $SUITE" \
            - offload/base:latest >/dev/null
    cleanup_rootfs
    rm -f "$dlog"
}

build_base_pull() {
    log "offload/base: trying 'docker pull debian:$SUITE-slim' (20 s)"
    if timeout 20 docker pull -q "debian:$SUITE-slim" >/dev/null 2>&1; then
        docker tag "debian:$SUITE-slim" offload/base:latest
        log "offload/base: tagged the pulled debian:$SUITE-slim"
        return 0
    fi
    return 1
}

ensure_base() {
    if [ "${OFFLOAD_REBUILD_BASE:-0}" != 1 ] && image_id offload/base >/dev/null; then
        log "offload/base: present"
        return 0
    fi
    local t0=$SECONDS
    case "$BASE_SOURCE" in
        pull) build_base_pull || die "could not pull debian:$SUITE-slim" ;;
        debootstrap) build_base_debootstrap ;;
        auto) build_base_pull || { log "offload/base: no registry answered"; build_base_debootstrap; } ;;
        *) die "OFFLOAD_BASE_SOURCE must be auto, debootstrap or pull (got '$BASE_SOURCE')" ;;
    esac
    log "offload/base: built in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------
# Dockerfile images
# ---------------------------------------------------------------------------

context_hash() {  # context_dir parent_image
    local dir=$1 parent=$2 parent_id
    parent_id=$(image_id "$parent") || die "parent image $parent is missing"
    {
        printf 'recipe %s\nparent %s\n' "$RECIPE_VERSION" "$parent_id"
        (cd "$dir" && find . -type f -not -name '*.pyc' -not -path '*/__pycache__/*' -print0 |
            LC_ALL=C sort -z | xargs -0 -r sha256sum)
    } | sha256sum | cut -d' ' -f1
}

ensure_image() {  # image context_dir parent_image [extra docker build args...]
    local image=$1 dir=$2 parent=$3
    shift 3
    local want have
    want=$(context_hash "$dir" "$parent")
    have=$(image_label "$image")
    if [ "${OFFLOAD_FORCE_BUILD:-0}" != 1 ] && [ "$have" = "$want" ]; then
        log "$image: up to date"
        return 0
    fi
    if [ -z "$have" ]; then log "$image: building"; else log "$image: context changed, rebuilding"; fi
    local t0=$SECONDS blog
    blog="$BUILD_DIR/$(basename "$image").build.log"
    # No --pull: FROM names a local image and must never be fetched.
    if ! docker build --rm --force-rm "$@" \
        --label "$LABEL_KEY=$want" \
        -t "$image:latest" "$dir" >"$blog" 2>&1; then
        tail -n 30 "$blog" >&2 || true
        die "building $image failed (full log: $blog)"
    fi
    rm -f "$blog"
    log "$image: built in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------
# offload/worker: offload + dependencies from a wheelhouse (no network in the build)
# ---------------------------------------------------------------------------
#
#   infra/.build/wheels/        dependency wheels; rebuilt when pyproject.toml changes
#   infra/.build/offload-wheel/ offload's own wheel; rebuilt when its sources change
#   infra/.build/worker/        the build context: infra/images/worker + both (hard links)
#
# The wheels are built by the host's virtualenv (PyPI is reachable from the host), so
# its Python must have the image's major.minor (checked when the wheelhouse is made).

VENV=${OFFLOAD_VENV:-$ROOT/.venv}

link() {  # files... dir: hard links where possible
    cp -l "$@" 2>/dev/null || cp "$@"
}

tree_hash() {  # files... (dirs are walked) -> one sha256
    find "$@" -type f -not -name '*.pyc' -not -path '*/__pycache__/*' \
        -not -path '*.egg-info/*' -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum |
        sha256sum | cut -d' ' -f1
}

ensure_wheels() {
    local pip="$VENV/bin/pip" want have tmp host_py image_py req i
    [ -x "$pip" ] || die "$pip not found (run infra/setup.sh): it builds the worker's wheelhouse"
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    have=$(cat "$BUILD_DIR/wheels/.stamp" 2>/dev/null || true)
    if [ "$want" != "$have" ]; then
        host_py=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        image_py=$(docker run --rm --network none offload/python python3 -c \
            'import sys; print("%d.%d" % sys.version_info[:2])') || die "offload/python does not run"
        [ "$host_py" = "$image_py" ] ||
            die "the wheelhouse needs Python $image_py (offload/python) but $VENV has $host_py"
        log "offload/worker: building the wheelhouse (pyproject.toml changed or first build)"
        tmp=$(mktemp -d "$BUILD_DIR/wheels.XXXXXX")
        chmod 0755 "$tmp"
        if ! "$pip" wheel --disable-pip-version-check -q -w "$tmp" "$ROOT" pip \
            >"$BUILD_DIR/wheels.log" 2>&1; then
            tail -n 20 "$BUILD_DIR/wheels.log" >&2 || true
            rm -rf "$tmp"
            die "pip wheel failed (full log: $BUILD_DIR/wheels.log)"
        fi
        # Markers may differ between the host's Python and the image's (python_full_version:
        # redis wants async-timeout below 3.11.3): resolve offline in the image, add what
        # it misses, repeat.
        for i in 1 2 3 4 5 6; do
            if docker run --rm --network none -v "$tmp:/wheels:ro" offload/python sh -c \
                'python3 -m venv --without-pip /tmp/v && /tmp/v/bin/python "$(ls /wheels/pip-*.whl)/pip" install --dry-run -q --no-index --find-links /wheels offload' \
                >"$BUILD_DIR/wheels.log" 2>&1; then
                break
            fi
            req=$(sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' "$BUILD_DIR/wheels.log" | head -n 1)
            if [ -z "$req" ] || [ "$i" = 6 ]; then
                cat "$BUILD_DIR/wheels.log" >&2
                rm -rf "$tmp"
                die "the wheelhouse does not resolve in offload/python"
            fi
            log "offload/worker: adding $req (needed by the image's Python)"
            "$pip" wheel --disable-pip-version-check -q -w "$tmp" "$req" >>"$BUILD_DIR/wheels.log" 2>&1 ||
                { rm -rf "$tmp"; die "pip wheel $req failed (log: $BUILD_DIR/wheels.log)"; }
        done
        rm -f "$tmp"/offload-*.whl "$BUILD_DIR/wheels.log"
        printf '%s\n' "$want" >"$tmp/.stamp"
        rm -rf "$BUILD_DIR/wheels"
        mv "$tmp" "$BUILD_DIR/wheels"
    fi
    # offload's own wheel, built from a clean copy so the repository gets no build/ folder.
    want=$(tree_hash pyproject.toml README.md src)
    have=$(cat "$BUILD_DIR/offload-wheel/.stamp" 2>/dev/null || true)
    if [ "$want" != "$have" ]; then
        log "offload/worker: building the offload wheel (sources changed)"
        tmp=$(mktemp -d "$BUILD_DIR/offload-wheel.XXXXXX")
        mkdir "$tmp/src"
        tar -C "$ROOT" --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' \
            -cf - pyproject.toml README.md src | tar -C "$tmp/src" -xf -
        mkdir "$tmp/out"
        if ! "$pip" wheel --disable-pip-version-check -q --no-deps \
            --find-links "$BUILD_DIR/wheels" -w "$tmp/out" "$tmp/src" \
            >"$BUILD_DIR/offload-wheel.log" 2>&1; then
            tail -n 20 "$BUILD_DIR/offload-wheel.log" >&2 || true
            rm -rf "$tmp"
            die "building the offload wheel failed (full log: $BUILD_DIR/offload-wheel.log)"
        fi
        rm -f "$BUILD_DIR/offload-wheel.log"
        printf '%s\n' "$want" >"$tmp/out/.stamp"
        rm -rf "$BUILD_DIR/offload-wheel"
        mv "$tmp/out" "$BUILD_DIR/offload-wheel"
        rm -rf "$tmp"
    fi
    # The contexts: same files, same bytes -> same context hash -> no rebuild.
    local ctx
    for ctx in worker-deps worker; do
        rm -rf "${BUILD_DIR:?}/$ctx"
        mkdir -p "$BUILD_DIR/$ctx/wheels"
    done
    cp "$HERE/worker/Dockerfile.deps" "$BUILD_DIR/worker-deps/Dockerfile"
    cp "$HERE/worker/Dockerfile" "$BUILD_DIR/worker/Dockerfile"
    link "$BUILD_DIR"/wheels/*.whl "$BUILD_DIR/worker-deps/wheels/"
    link "$BUILD_DIR"/offload-wheel/*.whl "$BUILD_DIR"/wheels/pip-*.whl "$BUILD_DIR/worker/wheels/"
}

t_start=$SECONDS
ensure_base
# apt inside the build uses the host's network stack (and its DNS / mirror routing).
ensure_image offload/python "$HERE/python" offload/base --network host
ensure_image offload/fingerprint "$HERE/fingerprint" offload/python
ensure_image offload/dedupe "$HERE/dedupe" offload/python
if [ "${OFFLOAD_SKIP_WORKER:-0}" != 1 ]; then
    ensure_wheels
    ensure_image offload/worker-deps "$BUILD_DIR/worker-deps" offload/python
    ensure_image offload/worker "$BUILD_DIR/worker" offload/worker-deps
fi
if [ "${OFFLOAD_BUILD_CLUSTER:-1}" = 1 ] && [ "${OFFLOAD_SKIP_WORKER:-0}" != 1 ]; then
    ensure_image offload/redis "$ROOT/infra/cluster/images/redis" offload/base --network host
    s3ctx="$BUILD_DIR/s3ctx"
    if ! ls "$s3ctx"/wheels/moto-*.whl "$s3ctx"/wheels/pip-*.whl >/dev/null 2>&1; then
        log "offload/s3: building the moto wheelhouse"
        mkdir -p "$s3ctx/wheels"
        "$VENV/bin/pip" wheel --disable-pip-version-check -q -w "$s3ctx/wheels" \
            "moto[server]==5.2.5" pip >"$BUILD_DIR/s3-wheels.log" 2>&1 ||
            die "pip wheel moto failed (log: $BUILD_DIR/s3-wheels.log)"
    fi
    cp "$ROOT/infra/cluster/images/s3/Dockerfile" "$ROOT/infra/cluster/images/s3/s3_server.py" "$s3ctx/"
    ensure_image offload/s3 "$s3ctx" offload/worker-deps
fi
# Layers left dangling by rebuilds.
docker image prune -f --filter "label=$LABEL_KEY" >/dev/null 2>&1 || true
log "done in $((SECONDS - t_start)) s"
