#!/usr/bin/env bash
# One-command set-up for a Debian bookworm host (used by `make`, the Vagrant VM and CI).
# Idempotent: every step checks before it installs. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}
say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (BPF and apt need it); try: sudo make $*" >&2
    exit 1
fi

need_apt=()
for pkg in bpfcc-tools python3-bpfcc python3.11-venv linux-headers-amd64 debootstrap systemd \
           chromium chromium-driver; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# bcc compiles at run time against /lib/modules/$(uname -r)/build. Custom and cloud
# kernels have no header package: link the distribution's generic headers there.
# Our BPF code reads no kernel struct, so their layout never matters.
build=/lib/modules/$(uname -r)/build
if [ ! -e "$build/include" ]; then
    generic=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$generic" ]; then
        echo "setup: no kernel headers found under /usr/src (linux-headers-amd64 failed to install?)" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$build")"
    ln -sfn "$generic" "$build"
    # Debian splits the headers: the arch part (build) and the common part (source).
    common=${generic%-amd64}-common
    [ -d "$common" ] && ln -sfn "$common" "$(dirname "$build")/source"
    say "no headers for kernel $(uname -r): linked generic $(basename "$generic") at $build"
fi

tracefs=/sys/kernel/tracing
if [ ! -e "$tracefs/events" ]; then
    mount -t tracefs nodev "$tracefs"
    say "mounted tracefs at $tracefs"
fi
if [ ! -e /sys/kernel/debug/tracing/events ]; then
    mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
    [ -e /sys/kernel/debug/tracing/events ] || mount -t tracefs nodev /sys/kernel/debug/tracing 2>/dev/null || true
fi

# Debian's interpreter: it has the USDT probes and sees python3-bpfcc's `bcc` module.
stamp=$venv/.installed
if [ ! -x "$venv/bin/python" ]; then
    say "creating virtual environment $venv (Debian python3.11, system site packages for bcc)"
    /usr/bin/python3.11 -m venv --system-site-packages "$venv"
fi
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
    say "installing scope-ebpf and its Python dependencies into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$here[dev]"
    touch "$stamp"
fi
"$venv/bin/python" -c 'import bcc' 2>/dev/null || { echo "setup: the venv cannot import bcc" >&2; exit 1; }
