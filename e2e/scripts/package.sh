#!/usr/bin/env bash
# Builds the Debian package with cargo-deb from the wasmlet binary already built, installs it
# on this machine, checks what it installed (`wasmlet --version`, the systemd unit with
# `systemd-analyze verify`, the default config read back by the agent), and removes it.
# PROFILE picks the build to package: dev (the one CI tests) or release; either is stripped.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${PROFILE:-dev}
log() { printf '[package] %s\n' "$*" >&2; }

out_dir=target/debian
rm -rf "$out_dir" && mkdir -p "$out_dir"
# cargo-deb warns that a dev build is not for release; CI packages it all the same (see
# install-deps.sh), so that one warning is dropped and any other is shown.
cargo deb --no-build --strip --profile "$profile" --output "$out_dir" 2>&1 >/dev/null \
    | grep -v -e 'dev profile is not supported' -e 'To enable debug symbols set' >&2 || true
deb=$(find "$out_dir" -name 'wasmlet_*.deb' | head -n1)
[ -n "$deb" ] || { log "cargo deb made no package"; exit 1; }
log "built $deb ($(du -k "$deb" | cut -f1) KiB)"

if dpkg-query -W -f='${Status}' wasmlet 2>/dev/null | grep -q 'install ok installed'; then
    log "wasmlet is already installed from a package here; not replacing it"
    exit 1
fi
dpkg -i "$deb" >/dev/null
trap 'dpkg --purge wasmlet >/dev/null' EXIT

want="wasmlet $(dpkg-deb -f "$deb" Version | sed 's/-[0-9]*$//')"
got=$(/usr/bin/wasmlet --version)
[ "$got" = "$want" ] || { log "installed wasmlet --version says '$got', not '$want'"; exit 1; }
log "installed: $got"

# The unit: any complaint at all (an unknown key is only a warning) fails.
complaints=$(systemd-analyze verify /lib/systemd/system/wasmlet.service 2>&1 || true)
[ -z "$complaints" ] || { log "systemd-analyze verify: $complaints"; exit 1; }
log "systemd-analyze verify: wasmlet.service is clean"

# The default config is the package's conffile and reads back: with no bootstrap kubeconfig
# yet, the agent gets as far as looking for it.
dpkg-query -W -f='${Conffiles}' wasmlet | grep -q '/etc/wasmlet/config.yaml' \
    || { log "/etc/wasmlet/config.yaml is not a conffile"; exit 1; }
if err=$(/usr/bin/wasmlet --config /etc/wasmlet/config.yaml 2>&1); then
    log "the agent started with no credentials at all"; exit 1
fi
case "$err" in
    *"/etc/wasmlet/bootstrap-kubeconfig"*) log "default config reads back" ;;
    *) log "the default config did not read back: $err"; exit 1 ;;
esac
