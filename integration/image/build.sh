#!/usr/bin/env bash
# Builds the vmpersona guest image for the integration tier and the demo:
#   - the Debian 6.1 kernel (the one linux-image-amd64 depends on), its
#     uncompressed ELF vmlinux extracted from the bzImage's xz payload so QEMU
#     boots it by PVH (no slow decompression under TCG);
#   - an initramfs: busybox-static, the virtio/ext4 modules in dependency
#     order, the static vmpersona-guestd and an /init that mounts the
#     persistent state disk and keeps guestd running.
# Everything goes to ${XDG_CACHE_HOME:-$HOME/.cache}/vmpersona/ (VMP_CACHE_DIR
# overrides). Downloads are cached; the initramfs is named by the content hash
# of its inputs, so it is rebuilt exactly when guestd (or /init, busybox, the
# modules) changes. The paths are written to image.env in the cache:
#   VMP_KERNEL=…/vmlinux  VMP_INITRD=…/initramfs-HASH.cpio  VMP_KERNEL_VERSION=…
#
# Usage: integration/image/build.sh [--guestd PATH] [--env-out FILE]
#        --guestd: the static guest daemon (default bin/vmpersona-guestd, built
#        with CGO_ENABLED=0 when missing); --env-out: also copy image.env there.
#        VMP_KERNEL_PACKAGE=linux-image-6.1.0-NN-amd64 pins another kernel.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VMP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmpersona}
guestd=$repo/bin/vmpersona-guestd
env_out=

while [ $# -gt 0 ]; do
  case $1 in
    --guestd) guestd=$2; shift 2 ;;
    --env-out) env_out=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

say() { printf 'vmpersona-image: %s\n' "$*"; }
die() { printf 'vmpersona-image: error: %s\n' "$*" >&2; exit 1; }

"$repo/scripts/ensure-deps" qemu-system-x86 qemu-utils cpio busybox-static e2fsprogs xz-utils \
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients

mkdir -p "$cache/kernel"

# --- guestd -----------------------------------------------------------------
if [ ! -x "$guestd" ]; then
  say "building static vmpersona-guestd into $guestd"
  mkdir -p "$(dirname "$guestd")"
  (cd "$repo" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$guestd" ./guestd/cmd/vmpersona-guestd)
fi
if file_out=$(od -An -c -N4 "$guestd" | tr -d ' \n') && [ "$file_out" != '177ELF' ]; then
  die "$guestd is not an ELF binary"
fi

# --- kernel -----------------------------------------------------------------
kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-6\.1\.0-[0-9]*-amd64\)$/\1/p' | head -1
}
pkg=${VMP_KERNEL_PACKAGE:-}
if [ -z "$pkg" ]; then
  pkg=$(kernel_pkg)
  if [ -z "$pkg" ]; then
    say "refreshing the package lists (apt-get update) to find the kernel package"
    apt-get update -qq >/dev/null 2>&1 || true
    pkg=$(kernel_pkg)
  fi
  [ -n "$pkg" ] || die "cannot find the kernel package linux-image-amd64 depends on (apt-get update?)"
fi
kver=${pkg#linux-image-}
kdir=$cache/kernel/$kver
if [ ! -s "$kdir/vmlinux" ]; then
  deb=$(ls "$cache"/kernel/"${pkg}"_*.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ]; then
    say "downloading $pkg (≈70 MB)"
    (cd "$cache/kernel" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    deb=$(ls "$cache"/kernel/"${pkg}"_*.deb 2>/dev/null | head -1 || true)
    if [ -z "$deb" ]; then
      # Old package lists name a version the mirror no longer has.
      say "refreshing the package lists (apt-get update) and retrying the download"
      apt-get update -qq >/dev/null 2>&1 || true
      (cd "$cache/kernel" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
      deb=$(ls "$cache"/kernel/"${pkg}"_*.deb 2>/dev/null | head -1 || true)
    fi
    [ -n "$deb" ] || die "apt-get download $pkg failed"
  fi
  say "unpacking $(basename "$deb")"
  rm -rf "$kdir.tmp"; mkdir -p "$kdir.tmp"
  dpkg -x "$deb" "$kdir.tmp/root"
  say "extracting the uncompressed vmlinux from the bzImage's xz payload"
  vmlinuz=$kdir.tmp/root/boot/vmlinuz-$kver
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1)
  [ -n "$off" ] || die "no xz payload in $vmlinuz"
  # xz reports trailing garbage after the stream: the output is complete.
  tail -c +"$((off + 1))" "$vmlinuz" | xz -dc >"$kdir.tmp/vmlinux" 2>/dev/null || true
  [ "$(od -An -c -N4 "$kdir.tmp/vmlinux" | tr -d ' \n')" = '177ELF' ] || die "extracted vmlinux is not ELF"
  rm -rf "$kdir"; mv "$kdir.tmp" "$kdir"
  say "vmlinux ready ($(du -h "$kdir/vmlinux" | cut -f1))"
fi
moddir=$kdir/root/lib/modules/$kver/kernel

# --- modules in dependency order ----------------------------------------------
# The wanted modules; their dependencies come from each .ko's modinfo
# "depends=" and are loaded first (the order environment.md gives for virtio).
wanted="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console virtio_blk virtio-rng crc32c_generic ext4"
declare -A seen=()
order=()
modpath() { find "$moddir" -name "$1.ko" -print -quit; }
resolve() {
  local m=$1 f deps d
  [ -n "${seen[$m]:-}" ] && return 0
  seen[$m]=1
  f=$(modpath "$m"); [ -n "$f" ] || die "module $m not found in $moddir"
  deps=$(LC_ALL=C grep -a -o 'depends=[a-z0-9_,-]*' "$f" | head -1 | cut -d= -f2 | tr , ' ')
  for d in $deps; do resolve "$d"; done
  order+=("$m")
}
for m in $wanted; do resolve "$m"; done

# --- initramfs ----------------------------------------------------------------
busybox=$(command -v busybox)
init_src=$here/init
inputs_hash=$( {
  echo "$kver"; echo "${order[*]}"
  sha256sum "$guestd" "$busybox" "$init_src" | cut -d' ' -f1
  for m in "${order[@]}"; do sha256sum "$(modpath "$m")" | cut -d' ' -f1; done
} | sha256sum | cut -c1-16)
initrd=$cache/initramfs-$inputs_hash.cpio
if [ ! -s "$initrd" ]; then
  say "building initramfs $inputs_hash (guestd $(du -h "$guestd" | cut -f1), modules: ${order[*]})"
  stage=$(mktemp -d "$cache/stage.XXXXXX")
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{bin,sbin,etc/profile.d,proc,sys,dev,run,tmp,root,var/lib/vmpersona-guest,lib/modules,usr/bin,usr/sbin}
  cp "$busybox" "$stage/bin/busybox"
  for a in $("$busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$stage/bin/$a"
  done
  for m in "${order[@]}"; do cp "$(modpath "$m")" "$stage/lib/modules/$m.ko"; done
  printf '%s\n' "${order[@]}" >"$stage/etc/modules.order"
  cp "$guestd" "$stage/sbin/vmpersona-guestd"
  cp "$init_src" "$stage/init"
  chmod 0755 "$stage/init" "$stage/sbin/vmpersona-guestd" "$stage/bin/busybox"
  chmod 1777 "$stage/tmp"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$stage/etc/passwd"
  echo 'root:x:0:' >"$stage/etc/group"
  echo 'vmpersona-guest' >"$stage/etc/hostname"
  # Reproducible archive: sorted names, fixed times, root-owned.
  find "$stage" -exec touch -h -d @0 {} +
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible >"$initrd.tmp")
  mv "$initrd.tmp" "$initrd"
  rm -rf "$stage"; trap - EXIT
  say "initramfs ready: $initrd ($(du -h "$initrd" | cut -f1))"
  # Keep the cache small: drop initramfs images of older guestd builds.
  find "$cache" -maxdepth 1 -name 'initramfs-*.cpio' ! -name "$(basename "$initrd")" -mmin +60 -delete 2>/dev/null || true
else
  say "initramfs up to date: $initrd"
fi

cat >"$cache/image.env.tmp" <<ENV
VMP_KERNEL=$kdir/vmlinux
VMP_INITRD=$initrd
VMP_KERNEL_VERSION=$kver
ENV
mv "$cache/image.env.tmp" "$cache/image.env"
[ -z "$env_out" ] || cp "$cache/image.env" "$env_out"
say "image: $cache/image.env"
