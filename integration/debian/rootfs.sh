#!/usr/bin/env bash
# Builds (once) and caches a Debian 12 root file system for the full-stack
# tests: debootstrap --variant=minbase plus systemd-sysv, udev and the Debian
# kernel (linux-image-amd64, with its initramfs). The tree is kept as a
# tarball, ${XDG_CACHE_HOME:-$HOME/.cache}/vmpersona/debian12/rootfs.tar
# (VMP_CACHE_DIR overrides the vmpersona cache directory); delete it to
# rebuild. Prints "vmpersona-rootfs: tarball: PATH" as its last line.
#
# Usage: integration/debian/rootfs.sh        (root; needs network to the mirror)
#        VMP_DEBIAN_MIRROR=URL overrides http://deb.debian.org/debian
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VMP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmpersona}/debian12
mirror=${VMP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
tarball=$cache/rootfs.tar
say() { printf 'vmpersona-rootfs: %s\n' "$*"; }

if [ -s "$tarball" ]; then
  say "cached: $tarball"
  say "tarball: $tarball"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "rootfs.sh: debootstrap needs root" >&2; exit 1; }
"$repo/scripts/ensure-deps" debootstrap e2fsprogs

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
say "debootstrap bookworm (minbase + systemd-sysv, udev, linux-image-amd64) from $mirror"
debootstrap --variant=minbase \
  --include=systemd-sysv,udev,linux-image-amd64,initramfs-tools,kmod,procps,ca-certificates \
  bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -30 "$work/debootstrap.log" >&2; exit 1; }
# apt inside the tree uses the same mirror; no package caches in the tarball.
echo "deb $mirror bookworm main" >"$work/root/etc/apt/sources.list"
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*_Packages 2>/dev/null || true
tar -C "$work/root" --numeric-owner -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$tarball"
say "built in $(( $(date +%s) - start ))s"
say "tarball: $tarball"
