#!/usr/bin/env bash
# make demo: vmpersona end to end on one machine (Debian 12, root).
#
# Builds everything, builds the guest image, starts virtlogd/libvirtd when
# they are not running, boots a demo VM under libvirt (TCG, no KVM needed),
# starts vmpersona-hostd with its Badger store in a temporary directory,
# creates two personas from integration/demo/*.json, activates them in turn
# and shows routed, overridden and refused commands with vmpersonactl, an
# update that leaves the VM drifted, its dry-run diff and the rollout, the
# audit log and a few metrics. Everything it started is stopped and removed
# on exit, also on failure or Ctrl-C.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }
# show runs a command, printing it first; a non-zero exit is shown, not fatal.
show() {
  local shown=() a
  for a in "$@"; do
    case $a in
      ctl) a=vmpersonactl ;;
      *[!A-Za-z0-9_./:=@%+,-]*) a="'${a//\'/\'\\\'\'}'" ;;
    esac
    shown+=("$a")
  done
  printf '\033[36m$ %s\033[0m\n' "${shown[*]}"
  local rc=0
  "$@" || rc=$?
  [ $rc -eq 0 ] || printf '\033[33m(exit status %d)\033[0m\n' "$rc"
  return 0
}

[ "$(id -u)" -eq 0 ] || die "run as root: libvirt's system instance runs the demo VM"

uri=qemu:///system
work=$(mktemp -d /tmp/vmp-demo.XXXXXX)
domain=vmp-demo-$$
hostd_pid=
started_daemons=()
defined=

cleanup() {
  local rc=$?
  set +e
  step "cleaning up"
  if [ -n "$hostd_pid" ] && kill -0 "$hostd_pid" 2>/dev/null; then
    info "stopping vmpersona-hostd (pid $hostd_pid)"
    kill -TERM "$hostd_pid"
    for _ in $(seq 50); do kill -0 "$hostd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$hostd_pid" 2>/dev/null
    wait "$hostd_pid" 2>/dev/null
  fi
  if [ -n "$defined" ]; then
    info "destroying and undefining $domain"
    timeout 120 virsh -q -c "$uri" destroy "$domain" >/dev/null 2>&1
    timeout 120 virsh -q -c "$uri" undefine "$domain" >/dev/null 2>&1
    rm -f "/var/log/libvirt/qemu/$domain.log"
  fi
  local i others
  others=$(timeout 60 virsh -q -c "$uri" list --name 2>/dev/null | grep -v "^$domain\$" | tr '\n' ' ')
  if [ ${#started_daemons[@]} -gt 0 ] && [ -n "${others// /}" ]; then
    info "leaving libvirtd/virtlogd running: other domains run in them ($others)"
    started_daemons=()
  fi
  for ((i = ${#started_daemons[@]} - 1; i >= 0; i--)); do
    local name=${started_daemons[$i]%%:*} pid=${started_daemons[$i]#*:}
    if grep -qa "$name" "/proc/$pid/cmdline" 2>/dev/null; then
      info "stopping $name (pid $pid), which the demo started"
      kill -TERM "$pid"
      for _ in $(seq 150); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
      [ -d "/proc/$pid" ] && kill -KILL "$pid"
    fi
  done
  rm -rf "$work"
  [ $rc -eq 0 ] && info "done" || info "the demo failed (exit status $rc)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

step "installing what the demo needs and building vmpersona (make build)"
"$repo/scripts/ensure-deps" curl jq
make --no-print-directory build
bin=$repo/bin
ctl() { "$bin/vmpersonactl" --socket "$work/api.sock" "$@"; }

step "building the guest image (Debian kernel, busybox initramfs, static guestd)"
"$repo/integration/image/build.sh" --guestd "$bin/vmpersona-guestd"
# shellcheck disable=SC1091
. "${VMP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmpersona}/image.env"

step "making sure virtlogd and libvirtd run"
# The suites that use the system libvirtd (make integration, the Debian tier,
# this demo) take this lock: each may start and stop libvirtd, and a hostd
# with libvirt discovery would connect to the others' VMs.
mkdir -p /run/lock
exec 9>/run/lock/vmpersona-libvirt-tests.lock
if ! flock -n 9; then
  info "another vmpersona suite uses libvirtd: waiting for it"
  flock 9
fi
# Without udev /dev/kvm is root:root 0600: libvirtd then finds its QEMU
# capability cache invalid on every call and probes QEMU again each time
# (seconds to a minute per virsh command). Debian's udev rule makes it
# root:kvm 0660; do the same.
if [ -c /dev/kvm ] && [ "$(stat -c %a:%g /dev/kvm)" = 600:0 ] && getent group kvm >/dev/null; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm && info "/dev/kvm set to root:kvm 0660 (as Debian's udev rule does)"
fi
ensure_daemon() {
  local name=$1
  if pgrep -x "$name" >/dev/null; then info "$name already runs: leaving it alone"; return; fi
  "/usr/sbin/$name" -d --pid-file "$work/$name.pid" 9>&-
  for _ in $(seq 100); do [ -s "$work/$name.pid" ] && break; sleep 0.1; done
  local pid; pid=$(cat "$work/$name.pid")
  started_daemons+=("$name:$pid")
  info "started $name (pid $pid)"
}
ensure_daemon virtlogd
ensure_daemon libvirtd
for _ in $(seq 100); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.1; done
info "connecting to $uri (the first connection probes QEMU: ≈10 s)"
timeout 300 virsh -q -c "$uri" version >/dev/null

step "booting the demo VM $domain (TCG, direct kernel boot by PVH)"
truncate -s 32M "$work/state.img"
mke2fs -q -F -t ext4 -L vmpstate "$work/state.img"
cat >"$work/domain.xml" <<XML
<domain type='qemu'>
  <name>$domain</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$VMP_KERNEL</kernel>
    <initrd>$VMP_INITRD</initrd>
    <cmdline>console=ttyS0 panic=-1 loglevel=4</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$work/state.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='$work/agent.sock'/>
      <target type='virtio' name='org.vmpersona.agent.0'/>
    </channel>
    <serial type='file'><source path='$work/console.log'/><target port='0'/></serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
</domain>
XML
defined=1
timeout 300 virsh -q -c "$uri" define "$work/domain.xml" >/dev/null
show timeout 300 virsh -q -c "$uri" start "$domain"
booted=$(date +%s%N)

step "starting vmpersona-hostd (Badger in $work/data, API on $work/api.sock)"
"$bin/vmpersona-hostd" --data-dir "$work/data" --unix-socket "$work/api.sock" \
  --libvirt-uri "" --instance "$domain=unix:$work/agent.sock" >"$work/hostd.log" 2>&1 9>&- &
hostd_pid=$!
info "pid $hostd_pid; log $work/hostd.log"
for _ in $(seq 300); do
  curl -fsS --unix-socket "$work/api.sock" http://hostd/healthz >/dev/null 2>&1 && break
  kill -0 "$hostd_pid" 2>/dev/null || { cat "$work/hostd.log"; die "vmpersona-hostd exited"; }
  sleep 0.1
done

step "waiting for the guest agent to connect over virtio-serial"
for i in $(seq 1200); do
  if ctl -o json instance get "$domain" 2>/dev/null | jq -e '.agent.state == "connected"' >/dev/null; then break; fi
  [ "$i" -eq 1200 ] && { tail -20 "$work/console.log"; die "the agent did not connect in 120 s"; }
  sleep 0.1
done
info "agent connected $(( ($(date +%s%N) - booted) / 1000000 )) ms after virsh start"
show ctl instances

step "creating the personas staging and hardened"
show cat integration/demo/staging.json
show ctl persona create -f integration/demo/staging.json
show ctl persona create -f integration/demo/hardened.json
show ctl persona list

step "activating staging: its environment and its override of deploy"
show ctl activate "$domain" staging
show ctl active "$domain"
show ctl exec "$domain" -- sh -c 'echo "APP_ENV=$APP_ENV DEPLOY_TARGET=$DEPLOY_TARGET"'
show ctl exec "$domain" -- deploy web v2.1
show ctl exec "$domain" -- uname -sr

step "activating hardened: restricted rm/shutdown/reboot, an override of passwd"
show ctl activate "$domain" hardened
show ctl exec "$domain" -- sh -c 'echo "APP_ENV=$APP_ENV DEPLOY_TARGET=${DEPLOY_TARGET:-<gone>}"'
show ctl exec "$domain" -- rm -rf /tmp/data
show ctl exec "$domain" -- /bin/rm -rf /tmp/data
show ctl exec "$domain" -- reboot
show ctl exec "$domain" -- passwd
show ctl exec "$domain" -- ls /
show ctl -o json exec "$domain" -- id

step "desired state: hardened's update (revision 2: cat restricted, a token added) changes no guest by itself"
jq '.restricted_commands += ["cat"] | .environment_variables.API_TOKEN = "demo-not-a-secret"' \
  integration/demo/hardened.json >"$work/hardened-v2.json"
show ctl persona edit hardened -f "$work/hardened-v2.json"
show ctl instances
show ctl exec "$domain" -- cat /proc/version

step "the dry run: what rolling revision 2 out would change, computed by the guest (secret values masked)"
show ctl diff "$domain" hardened

step "the rollout: revision 2 reaches the instances desiring hardened, a progress line each"
show ctl rollout hardened --max-parallel 5 --max-failures 1
show ctl instances
show ctl exec "$domain" -- cat /proc/version

step "the audit log"
show ctl audit --instance "$domain"
show ctl audit --type rollout_finished

step "a few metrics (GET /metrics)"
curl -fsS --unix-socket "$work/api.sock" http://hostd/metrics |
  grep -E '^vmpersona_(activations_total|commands_total|agents_connected|audit_events_total|instances|instance_info)' || true

step "the demo is over"
