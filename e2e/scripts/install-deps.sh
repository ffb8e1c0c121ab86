#!/usr/bin/env bash
# Installs everything the e2e suite needs on a Debian bookworm machine, idempotently:
#   - apt packages (etcd-server, docker-registry, skopeo, golang-1.19, dpkg-dev, rsync, ...);
#   - the wasm32 rustup targets, and the aarch64 one with Debian's cross linker and qemu-user
#     for the emulated aarch64 test;
#   - cargo-fuzz, which builds the fuzz targets with libFuzzer (e2e/scripts/fuzz.sh);
#   - kube-apiserver, kube-controller-manager, kube-scheduler and kubeadm (which prints the
#     join line that `wasmlet join` takes) built from Debian's `kubernetes` source package,
#     cached outside the checkout and keyed by version, so the (slow) Go build happens once
#     per machine; a cache that lacks one of them builds only what it lacks.
#   - cargo-deb, which builds the Debian package.
# Prints the directory that holds the binaries on its last line.
set -euo pipefail

cache_root="${WASMLET_CACHE:-$HOME/.cache/wasmlet}"
log() { printf '[install-deps] %s\n' "$*" >&2; }

apt_packages=(dpkg-dev golang-1.19-go rsync etcd-server docker-registry skopeo apache2-utils openssl curl jq
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)

ensure_deb_src() {
    # `apt-get source` needs a deb-src line for the same suites as the binary sources.
    local src=/etc/apt/sources.list.d/wasmlet-deb-src.sources
    if [ ! -f "$src" ]; then
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
            sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$src"
        else
            grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > /etc/apt/sources.list.d/wasmlet-deb-src.list
        fi
        apt-get update -qq
    fi
}

ensure_apt_packages() {
    local missing=()
    for p in "${apt_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing apt packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # The packaged services are not wanted: each test starts its own on free ports. Only the
    # packaged ones are stopped (they run as their own users); a cluster that `e2e/up` or
    # another test run started, as the caller, is left alone.
    local svc user
    for svc in etcd:etcd docker-registry:docker-registry; do
        user=${svc#*:} svc=${svc%%:*}
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
            systemctl stop "$svc" || true
        fi
        if id -u "$user" >/dev/null 2>&1; then
            pkill -x -u "$user" "$svc" 2>/dev/null || true
        fi
    done
}

ensure_rust_targets() {
    local targets=(wasm32-wasip1 wasm32-wasip2 aarch64-unknown-linux-gnu)
    rustup target add "${targets[@]}" >/dev/null 2>&1 || rustup target add "${targets[@]}"
}

ensure_cargo_tools() {
    cargo fuzz --version >/dev/null 2>&1 || { log "installing cargo-fuzz"; cargo install --locked --quiet cargo-fuzz; }
    # Pinned: CI packages the dev build the tests already use (a release build takes most of
    # an hour), which this version allows with a warning.
    cargo deb --version >/dev/null 2>&1 || { log "installing cargo-deb"; cargo install --locked --quiet cargo-deb@3.8.0; }
}

build_control_plane() {
    local version
    version=$(apt-cache showsrc kubernetes | awk '/^Version:/ {print $2; exit}')
    [ -n "$version" ] || { log "no source version for kubernetes (is deb-src configured?)"; exit 1; }
    local out="$cache_root/kubernetes-$version"
    local bin="$out/bin"
    local wanted=(kube-apiserver kube-controller-manager kube-scheduler kubeadm) missing=() b
    for b in "${wanted[@]}"; do
        [ -x "$bin/$b" ] || missing+=("$b")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "$bin"
        return
    fi
    log "building ${missing[*]} of kubernetes $version into $out (once per machine)"
    local work="$out/src"
    rm -rf "$work" && mkdir -p "$work"
    (cd "$work" && apt-get source -qq kubernetes >/dev/null 2>&1 || apt-get source kubernetes)
    local tree
    tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
    [ -n "$tree" ] || { log "apt-get source produced no kubernetes-* tree"; exit 1; }
    # As debian/rules does: a GOPATH whose k8s.io/kubernetes points at the source tree,
    # then the tree's own make, which runs the code generators the tarball lacks.
    local gopath="$work/gopath"
    mkdir -p "$gopath/src/k8s.io"
    ln -sfn "$tree" "$gopath/src/k8s.io/kubernetes"
    local start=$SECONDS what
    what=$(printf 'cmd/%s ' "${missing[@]}")
    (
        cd "$gopath/src/k8s.io/kubernetes"
        export GOPATH="$gopath" GO111MODULE=off GOFLAGS=-mod=vendor GOCACHE="$work/gocache"
        export PATH="/usr/lib/go-1.19/bin:$PATH"
        export KUBE_GIT_TREE_STATE=clean KUBE_GIT_VERSION="v1.20.2" KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
        make WHAT="${what% }" > "$work/build.log" 2>&1 \
            || { tail -n 40 "$work/build.log" >&2; exit 1; }
    )
    mkdir -p "$bin"
    for b in "${missing[@]}"; do
        local built
        built=$(find "$tree/_output" -type f -name "$b" -perm -u+x | head -n1)
        [ -n "$built" ] || { log "build produced no $b"; exit 1; }
        install -m 0755 "$built" "$bin/$b"
    done
    echo "$((SECONDS - start))" > "$out/build-seconds"
    log "built in $((SECONDS - start)) s"
    # Keep the binaries, drop the multi-GB source tree and Go cache.
    rm -rf "$work"
    echo "$bin"
}

ensure_deb_src
ensure_apt_packages
ensure_rust_targets
ensure_cargo_tools
build_control_plane
