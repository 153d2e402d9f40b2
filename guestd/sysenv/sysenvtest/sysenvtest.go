// Package sysenvtest gives tests a stand-in for systemd's manager, which
// cannot run as PID 1 on a build machine: a real systemctl program (a
// shell script) that keeps the manager's environment as one file per
// variable and logs every call with its exact arguments.
package sysenvtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/guestd/sysenv"
)

const script = `#!/bin/sh
# Stand-in for systemctl: set-environment and unset-environment only.
dir=%DIR%
n=$(ls "$dir/calls" | wc -l)
printf '%s\0' "$@" >"$dir/calls/$(printf '%04d' "$n")"
verb=$1
shift
if [ -e "$dir/fail-$verb" ]; then
	rm -f "$dir/fail-$verb"
	echo "Failed to $verb: Access denied" >&2
	exit 1
fi
case $verb in
set-environment)
	for a in "$@"; do printf '%s' "${a#*=}" >"$dir/env/${a%%=*}"; done ;;
unset-environment)
	for a in "$@"; do rm -f "$dir/env/$a"; done ;;
*)
	echo "unknown command $verb" >&2; exit 1 ;;
esac
`

// Manager is the stand-in.
type Manager struct {
	dir string
	// Config runs the stand-in as a booted systemd (its SystemdDir exists).
	Config sysenv.Config
}

// New makes a stand-in whose record lives in stateDir, in a boot of id
// bootID.
func New(t testing.TB, stateDir, bootID string) *Manager {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"calls", "env", "run-systemd-system"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	prog := filepath.Join(dir, "systemctl")
	if err := os.WriteFile(prog, []byte(strings.ReplaceAll(script, "%DIR%", "'"+dir+"'")), 0o755); err != nil {
		t.Fatal(err)
	}
	return &Manager{dir: dir, Config: sysenv.Config{
		StateDir: stateDir, SystemdDir: filepath.Join(dir, "run-systemd-system"), Systemctl: prog, BootID: bootID,
	}}
}

// Env returns the stand-in manager's environment.
func (m *Manager) Env(t testing.TB) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(m.dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(m.dir, "env", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

// Calls returns the argument lists of every call so far, in order.
func (m *Manager) Calls(t testing.TB) [][]string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(m.dir, "calls"))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(m.dir, "calls", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"))
	}
	return out
}

// Fail makes the next call of the given systemctl verb fail.
func (m *Manager) Fail(t testing.TB, verb string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(m.dir, "fail-"+verb), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Set puts a variable in the stand-in's environment as if someone else had
// set it.
func (m *Manager) Set(t testing.TB, k, v string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(m.dir, "env", k), []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
}
