// Package sysenv gives services the persona's environment: where systemd is
// the guest's service manager (PID 1), it sets the active persona's
// variables in the manager's environment (systemctl set-environment), so
// that every unit started afterwards gets them, and removes the previous
// persona's (systemctl unset-environment).
//
// The variables it exported are recorded in the state directory with the
// boot's id, so that the next change (also after the daemon restarted)
// knows what to remove. After a reboot the manager's environment holds
// nothing of ours again (a record of another boot counts as empty):
// vmpersona-guestd --sync-service-env, run by
// vmpersona-guestd-environment.service before sysinit.target, so before
// every ordinary service, sets the persisted persona's variables again.
//
// A systemd environment generator would be read even earlier, but what it
// prints lands in the manager's generated environment, which
// unset-environment does not touch: a persona active at boot could then not
// be removed from services until the next reboot. Hence set-environment at
// boot too.
//
// Secret variables (the persona's secret_variables) are never exported: the
// manager's environment is readable by every local user (systemctl
// show-environment) and is inherited by every unit.
//
// Where systemd is not running (busybox guests, containers, tests), every
// call does nothing and logs at debug level.
package sysenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/protocol"
)

// Defaults.
const (
	// DefaultSystemdDir exists while systemd is PID 1 (sd_booted(3)).
	DefaultSystemdDir = "/run/systemd/system"
	// DefaultTimeout bounds each systemctl call.
	DefaultTimeout = 15 * time.Second
	// RecordFile, in the state directory, holds the variables exported.
	RecordFile = "service-environment.json"
)

// Config configures a Manager.
type Config struct {
	// StateDir holds RecordFile.
	StateDir string
	// SystemdDir is checked for existence to tell whether systemd runs
	// (default DefaultSystemdDir).
	SystemdDir string
	// Systemctl is the systemctl program (default: found in PATH, then
	// /usr/bin/systemctl, /bin/systemctl).
	Systemctl string
	// Timeout bounds each systemctl call (default DefaultTimeout).
	Timeout time.Duration
	// BootID tells records of this boot from older ones (default: the
	// kernel's boot id).
	BootID string
	Logger *slog.Logger
}

// Manager keeps the service manager's environment in step with the active
// persona. Its methods are not safe for concurrent use; the activation
// manager serialises them.
type Manager struct {
	cfg Config
	log *slog.Logger
}

// New returns a Manager.
func New(cfg Config) *Manager {
	if cfg.SystemdDir == "" {
		cfg.SystemdDir = DefaultSystemdDir
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.BootID == "" {
		if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
			cfg.BootID = strings.TrimSpace(string(b))
		}
	}
	return &Manager{cfg: cfg, log: cfg.Logger}
}

// Vars returns what services get of a persona: its environment_variables
// without its secret_variables; nil for no persona.
func Vars(a *protocol.ActiveState) map[string]string {
	if a == nil {
		return nil
	}
	p := &a.Persona
	out := make(map[string]string, len(p.EnvironmentVariables))
	for k, v := range p.EnvironmentVariables {
		if !slices.Contains(p.SecretVariables, k) {
			out[k] = v
		}
	}
	return out
}

// Active reports whether systemd is the running service manager.
func (m *Manager) Active() bool {
	fi, err := os.Stat(m.cfg.SystemdDir)
	return err == nil && fi.IsDir()
}

type record struct {
	Version int               `json:"version"`
	BootID  string            `json:"boot_id"`
	Vars    map[string]string `json:"vars"`
}

const recordVersion = 1

// Exported returns the variables exported in this boot (from the record;
// empty when there is none, it cannot be read or it is of an earlier boot).
func (m *Manager) Exported() map[string]string {
	data, err := os.ReadFile(filepath.Join(m.cfg.StateDir, RecordFile))
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("services' environment: record unreadable", "err", err)
		}
		return map[string]string{}
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil || r.Version != recordVersion || r.Vars == nil {
		m.log.Warn("services' environment: record unreadable", "err", err, "version", r.Version)
		return map[string]string{}
	}
	if r.BootID != m.cfg.BootID {
		return map[string]string{}
	}
	return r.Vars
}

// Apply makes the manager's environment hold vars in place of what was
// exported before, and returns the undo (which puts the previous variables
// back). Where systemd does not run it does nothing and returns a no-op.
func (m *Manager) Apply(ctx context.Context, vars map[string]string) (undo func(), err error) {
	if !m.Active() {
		m.log.Debug("services' environment: systemd is not running; skipped", "systemd_dir", m.cfg.SystemdDir)
		return func() {}, nil
	}
	prev := m.Exported()
	err = m.set(ctx, prev, vars)
	// The undo also serves when set failed half way.
	return func() {
		// The undo runs when the activation has failed: on a context of
		// its own, the caller's may be what ended it.
		uctx, cancel := context.WithTimeout(context.Background(), 2*m.cfg.Timeout)
		defer cancel()
		if err := m.set(uctx, vars, prev); err != nil {
			m.log.Error("services' environment: restoring the previous persona's variables failed", "err", err)
		}
	}, err
}

// set replaces from (what the manager holds from us) with to, and records
// to.
func (m *Manager) set(ctx context.Context, from, to map[string]string) error {
	unset, assign := Commands(from, to)
	// The record is written first, naming both old and new names, so that
	// a crash between the two systemctl calls still leaves every name we
	// may have exported on record.
	both := maps.Clone(to)
	if both == nil {
		both = map[string]string{}
	}
	for k, v := range from {
		if _, ok := both[k]; !ok {
			both[k] = v
		}
	}
	if len(unset) > 0 || len(assign) > 0 {
		if err := m.writeRecord(both); err != nil {
			return err
		}
	}
	for _, args := range [][]string{unset, assign} {
		if len(args) == 0 {
			continue
		}
		if err := m.systemctl(ctx, args); err != nil {
			return err
		}
	}
	if err := m.writeRecord(to); err != nil {
		return err
	}
	m.log.Info("services' environment updated", "set", len(to), "removed", max(0, len(unset)-1))
	return nil
}

// Commands returns the systemctl argument lists that turn the manager's
// environment from from into to: unset-environment for the names no longer
// wanted, set-environment for the new and changed values (each nil when
// there is nothing to do). Names are sorted.
func Commands(from, to map[string]string) (unset, assign []string) {
	for _, k := range slices.Sorted(maps.Keys(from)) {
		if _, ok := to[k]; !ok {
			unset = append(unset, k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(to)) {
		if v, ok := from[k]; !ok || v != to[k] {
			assign = append(assign, k+"="+to[k])
		}
	}
	if unset != nil {
		unset = append([]string{"unset-environment"}, unset...)
	}
	if assign != nil {
		assign = append([]string{"set-environment"}, assign...)
	}
	return unset, assign
}

func (m *Manager) writeRecord(vars map[string]string) error {
	data, err := json.Marshal(record{Version: recordVersion, BootID: m.cfg.BootID, Vars: vars})
	if err != nil {
		return err
	}
	// No fsync: the manager's environment does not outlive a power loss
	// either, and Sync rewrites the record from the persisted persona.
	if err := state.ReplaceFile(filepath.Join(m.cfg.StateDir, RecordFile), data, 0o600); err != nil {
		return fmt.Errorf("services' environment: %w", err)
	}
	return nil
}

func (m *Manager) systemctlPath() (string, error) {
	if m.cfg.Systemctl != "" {
		return m.cfg.Systemctl, nil
	}
	if p, err := exec.LookPath("systemctl"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/bin/systemctl", "/bin/systemctl"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("services' environment: systemd runs but systemctl was not found")
}

func (m *Manager) systemctl(ctx context.Context, args []string) error {
	path, err := m.systemctlPath()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER=", "LC_ALL=C"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 512 {
			msg = msg[:512] + "…"
		}
		return fmt.Errorf("services' environment: systemctl %s: %w: %s", args[0], err, msg)
	}
	return nil
}

// Sync makes the manager's environment match the persisted persona: at the
// daemon's start (in case it stopped between an activation's steps) and at
// boot. It returns an error only when systemd runs and refused.
func (m *Manager) Sync(ctx context.Context, active *protocol.ActiveState) error {
	_, err := m.Apply(ctx, Vars(active))
	return err
}
