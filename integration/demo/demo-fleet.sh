#!/usr/bin/env bash
# make demo-fleet: fleet mode on one machine (Debian 12, root).
#
# Starts three etcd members (Debian's etcd-server) on loopback ports with
# temporary data, two vmpersona-hostd "hosts" in fleet mode, each with a
# two guest daemons on unix sockets (labelled role=web and role=db), creates
# a persona through host A, shows it served by host B, assigns it by label
# (role=web) through host B: the web guests of both hosts activate it;
# updates it and rolls it out on every host (rollout --fleet), shows the
# fleet-wide instance table, then stops two
# etcd members: host B still answers reads from its copy and refuses writes
# with 503. Everything it started is stopped by PID and removed on exit, also
# on failure or Ctrl-C.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'demo-fleet: error: %s\n' "$*" >&2; exit 1; }
show() {
  printf '\033[36m$ %s\033[0m\n' "$*"
  local rc=0
  "$@" || rc=$?
  [ $rc -eq 0 ] || printf '\033[33m(exit status %d)\033[0m\n' "$rc"
  return 0
}

work=$(mktemp -d /tmp/vmp-fleet.XXXXXX)
pids=()

cleanup() {
  local rc=$?
  set +e
  step "cleaning up"
  local p
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      info "stopping pid $p ($(tr '\0' ' ' </proc/"$p"/cmdline | cut -c1-60))"
      kill -TERM "$p"
    fi
  done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  rm -rf "$work"
  [ $rc -eq 0 ] && info "done" || info "the demo failed (exit status $rc)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

step "installing what the demo needs and building vmpersona (make build)"
"$repo/scripts/ensure-deps" curl jq etcd-server etcd-client
make --no-print-directory build
bin=$repo/bin

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

step "starting three etcd members on loopback (data in $work/etcd*)"
names=(e0 e1 e2); peers=(); clients=(); etcd_pids=()
for n in "${names[@]}"; do peers+=("http://127.0.0.1:$(port)"); clients+=("http://127.0.0.1:$(port)"); done
initial=$(for i in 0 1 2; do printf '%s=%s,' "${names[$i]}" "${peers[$i]}"; done); initial=${initial%,}
for i in 0 1 2; do
  etcd --name "${names[$i]}" --data-dir "$work/etcd$i" --log-level error --logger zap \
    --listen-peer-urls "${peers[$i]}" --initial-advertise-peer-urls "${peers[$i]}" \
    --listen-client-urls "${clients[$i]}" --advertise-client-urls "${clients[$i]}" \
    --initial-cluster "$initial" --initial-cluster-state new >"$work/etcd$i.log" 2>&1 &
  pids+=($!); etcd_pids+=($!)
done
endpoints=$(IFS=,; echo "${clients[*]}")
for _ in $(seq 100); do ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
show env ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status -w table

step "starting two hosts (vmpersona-hostd --fleet-etcd …), each with two labelled guests on unix sockets"
for h in a b; do
  for r in web db; do
    mkdir -p "$work/$h/$r"
    "$bin/vmpersona-guestd" --listen "unix:$work/$h/$r/agent.sock" --state-dir "$work/$h/$r/guest" \
      --profile-file "$work/$h/$r/profile.sh" --log-level warn >"$work/$h/$r/guestd.log" 2>&1 &
    pids+=($!)
  done
done
sleep 0.5
for h in a b; do
  show_cmd="vmpersona-hostd --instance vm-$h-web=unix:…/agent.sock,role=web --instance vm-$h-db=unix:…,role=db --fleet-host host-$h --fleet-host-label rack=$h"
  info "$show_cmd"
  "$bin/vmpersona-hostd" --data-dir "$work/$h/data" --unix-socket "$work/$h/api.sock" --libvirt-uri "" \
    --instance "vm-$h-web=unix:$work/$h/web/agent.sock,role=web" --instance "vm-$h-db=unix:$work/$h/db/agent.sock,role=db" \
    --fleet-etcd "$endpoints" --fleet-host "host-$h" --fleet-host-label "rack=$h" \
    --log-level warn >"$work/$h/hostd.log" 2>&1 &
  pids+=($!)
  info "host-$h: pid $!, API $work/$h/api.sock"
done
for h in a b; do
  for _ in $(seq 100); do
    curl -fsS --unix-socket "$work/$h/api.sock" http://hostd/metrics 2>/dev/null | grep -q '^vmpersona_fleet_connected 1' && break
    sleep 0.1
  done
done
ctl() { local h=$1; shift; "$bin/vmpersonactl" --socket "$work/$h/api.sock" "$@"; }

step "a persona created through host-a"
cat >"$work/web.json" <<'JSON'
{"name": "web", "environment_variables": {"APP_ENV": "production"}, "restricted_commands": ["shutdown"]}
JSON
show ctl a apply -f "$work/web.json"
step "… is served by host-b"
show ctl b persona get web
show curl -sS -D - -o /dev/null --unix-socket "$work/b/api.sock" http://hostd/personas/web

step "assigned by label through host-b: the web guests of both hosts run it"
show ctl b assignment set web --persona web --label role=web --priority 10
show ctl a assignment list
for _ in $(seq 100); do
  [ "$(ctl a instance get vm-a-web -o json | jq -r '.active.persona // empty')" = web ] &&
    [ "$(ctl b instance get vm-b-web -o json | jq -r '.active.persona // empty')" = web ] && break
  sleep 0.1
done
show ctl b exec vm-b-web -- sh -c 'echo APP_ENV=$APP_ENV'
sleep 2.5 # the hosts publish their instances every 2 s
show ctl a instances --fleet

step "updated through host-b: the web guests drift until a rollout; rolled out on every host (rollout --fleet)"
cat >"$work/web.json" <<'JSON'
{"name": "web", "environment_variables": {"APP_ENV": "production", "TIER": "frontend"}, "restricted_commands": ["shutdown", "reboot"]}
JSON
show ctl b apply -f "$work/web.json"
show ctl a rollout web --fleet
sleep 2.5
step "the fleet-wide instance table"
show ctl b instances --fleet
show ctl a fleet hosts

step "two of three etcd members killed (kill -9): quorum lost"
{ kill -KILL "${etcd_pids[1]}" "${etcd_pids[2]}"; wait "${etcd_pids[1]}" "${etcd_pids[2]}"; } 2>/dev/null || true
sleep 3
show curl -sS -D - -o /dev/null --unix-socket "$work/b/api.sock" http://hostd/personas/web
show ctl b persona get web
info "a write now (answers 503 after at most 2 s; nothing is written locally):"
echo '{"name": "late"}' >"$work/late.json"
show ctl b apply -f "$work/late.json"
info "an activation still works from host-b's copy (--fleet-offline-activation cached):"
show ctl b deactivate vm-b-web
show ctl b activate vm-b-web web
curl -fsS --unix-socket "$work/b/api.sock" http://hostd/metrics | grep '^vmpersona_fleet_' | grep -v _bucket || true
