#!/usr/bin/env bash
# Builds the vmpersona Debian packages from already built binaries:
#   vmpersona-hostd_VERSION_ARCH.deb   vmpersona-guestd_VERSION_ARCH.deb
# Reproducible: every timestamp is SOURCE_DATE_EPOCH (default: the last
# commit's time), owners are root:root, modes are set explicitly, and
# dpkg-deb sorts the members. VERSION comes from packaging/version.sh
# (git tag vX.Y.Z, else packaging/changelog).
#
# Usage: packaging/build-deb.sh [--bin DIR] [--out DIR] [--version V] [--compress xz|gzip]
#   DIR of --bin holds vmpersona-hostd, vmpersonactl, vmpersona-guestd
#   (default bin/); packages go to --out (default dist/). The members are
#   compressed with xz (the packages `make deb` makes); --compress gzip
#   (level 1) is ten times cheaper, for the tests of this script's output.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
bin=$repo/bin
out=$repo/dist
version=
compress=(-Zxz)
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$(cd "$2" && pwd); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --compress)
      case $2 in
        xz) compress=(-Zxz) ;;
        gzip) compress=(-Zgzip -z1) ;;
        *) echo "build-deb.sh: --compress $2: want xz or gzip" >&2; exit 2 ;;
      esac
      shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$version" ] || version=$("$here/version.sh")
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || stat -c %Y "$here/changelog")
fi
export SOURCE_DATE_EPOCH
export TZ=UTC LC_ALL=C.UTF-8
umask 022
arch=$(dpkg --print-architecture)
maintainer='vmpersona maintainers <maintainers@users.noreply.r-seed-700fb680.example>'
mandate=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)

for f in vmpersona-hostd vmpersonactl vmpersona-guestd; do
  [ -x "$bin/$f" ] || { echo "build-deb.sh: $bin/$f missing; run make build" >&2; exit 1; }
done
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say() { printf 'vmpersona-deb: %s\n' "$*"; }

# doc PKG: copyright and the gzipped changelog (native package).
doc() {
  local root=$1 pkg=$2
  install -d -m 0755 "$root/usr/share/doc/$pkg"
  install -m 0644 "$here/copyright" "$root/usr/share/doc/$pkg/copyright"
  gzip -9n <"$here/changelog" >"$root/usr/share/doc/$pkg/changelog.gz"
  chmod 0644 "$root/usr/share/doc/$pkg/changelog.gz"
}

# man BINARY SECTION SUMMARY ROOT: a man page from the binary's --help.
man() {
  local binary=$1 section=$2 summary=$3 root=$4 name
  name=$(basename "$binary")
  install -d -m 0755 "$root/usr/share/man/man$section"
  { "$binary" --help 2>&1 || true; } | "$here/manpage.sh" "$name" "$section" "$summary" "$mandate" |
    gzip -9n >"$root/usr/share/man/man$section/$name.$section.gz"
  chmod 0644 "$root/usr/share/man/man$section/$name.$section.gz"
}

# overrides ROOT PKG: the lintian overrides of the package (intended
# deviations, each explained in packaging/PKG-short/lintian-overrides).
overrides() {
  local root=$1 pkg=$2
  install -d -m 0755 "$root/usr/share/lintian/overrides"
  grep -v '^#' "$here/${pkg#vmpersona-}/lintian-overrides" >"$root/usr/share/lintian/overrides/$pkg"
  chmod 0644 "$root/usr/share/lintian/overrides/$pkg"
}

# finish ROOT PKG: md5sums, control, normalised times, dpkg-deb.
finish() {
  local root=$1 pkg=$2 size
  (cd "$root" && find . -path ./DEBIAN -prune -o -type f ! -path './etc/*' -print | LC_ALL=C sort |
    sed 's|^\./||' | xargs -r md5sum) >"$root/DEBIAN/md5sums"
  chmod 0644 "$root/DEBIAN/md5sums"
  size=$(du -sk --apparent-size --exclude=DEBIAN "$root" | cut -f1)
  sed -i "s/@SIZE@/$size/" "$root/DEBIAN/control"
  find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  local deb="$out/${pkg}_${version}_${arch}.deb"
  dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
  say "built $deb"
}

# --- vmpersona-hostd ---------------------------------------------------------
root=$work/vmpersona-hostd
install -d -m 0755 "$root/DEBIAN" "$root/usr/sbin" "$root/usr/bin" "$root/lib/systemd/system" \
  "$root/etc/default" "$root/usr/share/doc/vmpersona-hostd/examples" \
  "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"
install -d -m 0755 "$root/etc/vmpersona"
install -m 0755 "$bin/vmpersona-hostd" "$root/usr/sbin/vmpersona-hostd"
install -m 0755 "$bin/vmpersonactl" "$root/usr/bin/vmpersonactl"
install -m 0644 "$repo/systemd/vmpersona-hostd.service" "$repo/systemd/vmpersona-hostd.socket" "$root/lib/systemd/system/"
install -m 0644 "$here/hostd/default" "$root/etc/default/vmpersona-hostd"
install -m 0600 "$here/hostd/tokens.csv" "$root/etc/vmpersona/tokens.csv"
doc "$root" vmpersona-hostd
install -m 0644 "$here/grafana-dashboard.json" "$root/usr/share/doc/vmpersona-hostd/grafana-dashboard.json"
install -m 0644 "$here/prometheus.yml" "$root/usr/share/doc/vmpersona-hostd/examples/prometheus.yml"
install -m 0644 "$here/prometheus-alerts.yml" "$root/usr/share/doc/vmpersona-hostd/examples/prometheus-alerts.yml"
"$bin/vmpersonactl" completion bash >"$root/usr/share/bash-completion/completions/vmpersonactl"
"$bin/vmpersonactl" completion zsh >"$root/usr/share/zsh/vendor-completions/_vmpersonactl"
"$bin/vmpersonactl" completion fish >"$root/usr/share/fish/vendor_completions.d/vmpersonactl.fish"
chmod 0644 "$root/usr/share/bash-completion/completions/vmpersonactl" \
  "$root/usr/share/zsh/vendor-completions/_vmpersonactl" "$root/usr/share/fish/vendor_completions.d/vmpersonactl.fish"
man "$bin/vmpersona-hostd" 8 "the vmpersona host daemon" "$root"
# vmpersonactl(1) is written by the program from its command definitions.
install -d -m 0755 "$root/usr/share/man/man1"
"$bin/vmpersonactl" __man "$mandate" | gzip -9n >"$root/usr/share/man/man1/vmpersonactl.1.gz"
chmod 0644 "$root/usr/share/man/man1/vmpersonactl.1.gz"
overrides "$root" vmpersona-hostd
for s in postinst prerm postrm; do install -m 0755 "$here/hostd/$s" "$root/DEBIAN/$s"; done
printf '/etc/default/vmpersona-hostd\n/etc/vmpersona/tokens.csv\n' >"$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"

# The libraries the daemon links, the Debian way (shlibs), with a fallback
# to what Debian 12 needs when dpkg-shlibdeps is not available.
depends="libc6 (>= 2.34), libvirt0 (>= 9.0.0)"
if command -v dpkg-shlibdeps >/dev/null 2>&1; then
  mkdir -p "$work/shlibs/debian"
  printf 'Source: vmpersona\n\nPackage: vmpersona-hostd\nArchitecture: any\n' >"$work/shlibs/debian/control"
  if d=$(cd "$work/shlibs" && dpkg-shlibdeps -O -e "$root/usr/sbin/vmpersona-hostd" -e "$root/usr/bin/vmpersonactl" 2>/dev/null); then
    depends=${d#shlibs:Depends=}
  fi
fi
cat >"$root/DEBIAN/control" <<CTL
Package: vmpersona-hostd
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: @SIZE@
Depends: $depends, adduser
Recommends: libvirt-daemon-system
Suggests: vmpersona-guestd
Section: admin
Priority: optional
Homepage: https://github.com/vmpersona/vmpersona
Description: personas for virtual machines - host daemon and CLI
 vmpersona gives libvirt/QEMU virtual machines switchable personas: an
 environment, activation scripts, command overrides and restrictions,
 applied inside the guest by vmpersona-guestd over a virtio-serial port.
 .
 This package holds the host daemon vmpersona-hostd (REST API on
 /run/vmpersona/hostd.sock through systemd socket activation, personas
 and the audit log in /var/lib/vmpersona, Prometheus metrics) and the
 command-line client vmpersonactl. Members of the vmpersona group are
 administrators on the API socket.
CTL

finish "$root" vmpersona-hostd

# --- vmpersona-guestd --------------------------------------------------------
root=$work/vmpersona-guestd
install -d -m 0755 "$root/DEBIAN" "$root/usr/sbin" "$root/lib/systemd/system" "$root/lib/udev/rules.d"
install -d -m 0700 "$root/var/lib/vmpersona-guest"
install -m 0755 "$bin/vmpersona-guestd" "$root/usr/sbin/vmpersona-guestd"
install -m 0644 "$repo/systemd/vmpersona-guestd.service" "$repo/systemd/vmpersona-guestd-environment.service" \
  "$root/lib/systemd/system/"
# Enabled statically (like systemd's own early units): the persona's
# environment for services must hold at every boot, whatever the admin
# enables.
install -d -m 0755 "$root/lib/systemd/system/sysinit.target.wants"
ln -s ../vmpersona-guestd-environment.service "$root/lib/systemd/system/sysinit.target.wants/"
install -m 0644 "$repo/systemd/60-vmpersona-guestd.rules" "$root/lib/udev/rules.d/"
doc "$root" vmpersona-guestd
man "$bin/vmpersona-guestd" 8 "the vmpersona guest agent" "$root"
overrides "$root" vmpersona-guestd
for s in postinst prerm postrm; do install -m 0755 "$here/guestd/$s" "$root/DEBIAN/$s"; done
cat >"$root/DEBIAN/control" <<CTL
Package: vmpersona-guestd
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: @SIZE@
Section: admin
Priority: optional
Homepage: https://github.com/vmpersona/vmpersona
Description: personas for virtual machines - guest agent
 vmpersona gives libvirt/QEMU virtual machines switchable personas: an
 environment, activation scripts, command overrides and restrictions.
 .
 This package holds vmpersona-guestd, the agent that runs inside the
 virtual machine. udev starts it through systemd when the host gives the
 machine the org.vmpersona.agent.0 virtio-serial port; the active persona
 survives restarts and reboots in /var/lib/vmpersona-guest.
CTL
finish "$root" vmpersona-guestd
