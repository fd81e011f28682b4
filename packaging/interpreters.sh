#!/usr/bin/env bash
# Test interpreters: a Debian sid root (debootstrap minbase) at .interpreters/sid with
# python3.13/3.14/3.15 (Debian builds them with USDT probes) and their -dev headers.
# Idempotent: a stamp inside the root; it is built in a temporary dir and renamed into
# place only when complete. Needs root. INTERPRETERS_MIRROR overrides the host's mirror.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
base=$here/.interpreters
dest=$base/sid
versions="3.13 3.14 3.15"
pkgs=(python3.13 python3.14 python3.15 libpython3.13-dev libpython3.14-dev libpython3.15-dev)
stamp=.scope-interpreters
log=$base/build.log
say() { printf 'interpreters: %s\n' "$*"; }
die() { printf 'interpreters: error: %s\n' "$*" >&2; exit 1; }
done_in() { [ "$(cat "$1/$stamp" 2>/dev/null)" = "${pkgs[*]}" ]; }

if done_in "$dest"; then say "up to date ($dest)"; exit 0; fi
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot need it)"
mkdir -p "$base"
exec 9>"$base/.lock"; flock 9                      # one build at a time
if done_in "$dest"; then say "up to date ($dest)"; exit 0; fi

# Unmount everything at or below $1 (deepest first), e.g. what a killed debootstrap left.
unmount_under() {
    awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts |
        sort -r | while read -r m; do umount -l "$m" || true; done
}
tmp=$base/sid.tmp.$$
step=start
cleanup() {
    rc=$?
    for d in "$base"/sid.tmp.* "$base"/sid.old.*; do
        [ -e "$d" ] || continue
        unmount_under "$d"; rm -rf --one-file-system "$d" || true
    done
    [ $rc = 0 ] || printf 'interpreters: error: %s failed (exit %s): %s (full log: %s)\n' \
        "$step" "$rc" "$(tail -n 1 "$log" 2>/dev/null)" "$log" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
cleanup                                            # leftovers of an interrupted run
: >"$log"

if ! command -v debootstrap >/dev/null; then
    step="installing debootstrap"; say "$step"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >>"$log" 2>&1
fi

# The host's Debian mirror: first deb/URIs entry whose path ends in /debian.
mirror=${INTERPRETERS_MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list.d/*.sources 2>/dev/null | sed 's/#.*//' |
    awk '/^[ \t]*(deb|URIs:)[ \t]/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) print $i }' |
    grep -E '/debian/?$' | head -n 1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}

step="debootstrap sid from $mirror"; say "$step"
debootstrap --variant=minbase sid "$tmp" "$mirror" >>"$log" 2>&1

step="installing ${pkgs[*]}"; say "$step"
mount -t proc proc "$tmp/proc"
chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${pkgs[@]}" >>"$log" 2>&1
chroot "$tmp" apt-get clean >>"$log" 2>&1
for v in $versions; do
    step="checking python$v"
    out=$(chroot "$tmp" "python$v" -c 'import sys; print(sys.version.split()[0])' 2>>"$log")
    say "$step: $out"
done
umount "$tmp/proc"

step="renaming into place"; say "$step: $dest"
echo "${pkgs[*]}" >"$tmp/$stamp"
[ -e "$dest" ] && mv -T "$dest" "$base/sid.old.$$"   # an outdated root; removed on exit
mv -T "$tmp" "$dest"
say "done"
