// Package activation applies personas in the guest: it runs the persona's
// scripts, replaces the environment commands get, swaps the routing table,
// writes the login-shell profile and persists the active persona, undoing
// every applied step when a later one fails. Activations are serialised;
// readers (command execution) see one consistent View at a time.
package activation

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmpersona/vmpersona/guestd/audit"
	"github.com/vmpersona/vmpersona/guestd/confine"
	"github.com/vmpersona/vmpersona/guestd/execute"
	"github.com/vmpersona/vmpersona/guestd/routing"
	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/guestd/sysenv"
	"github.com/vmpersona/vmpersona/protocol"
	"github.com/vmpersona/vmpersona/rules"
)

// Defaults.
const (
	DefaultScriptTimeout = 5 * time.Minute
	// MaxScriptOutput bounds each captured stream of a script.
	MaxScriptOutput = 64 << 10
)

// ErrInvalidPersona reports a persona the guest cannot apply.
var ErrInvalidPersona = errors.New("activation: invalid persona")

// View is what commands run under: the active persona (nil for none), its
// routing table and the complete environment. A View is never modified.
type View struct {
	Active *protocol.ActiveState
	Table  *routing.Table
	Env    []string
	// Domain is the Landlock domain exec requests run in, nil when the
	// persona is enforced by the routing table only.
	Domain *confine.Domain
}

// PersonaName returns the active persona's name, "" for none.
func (v *View) PersonaName() string {
	if v.Active == nil {
		return ""
	}
	return v.Active.Persona.Name
}

// Config configures a Manager.
type Config struct {
	Store *state.Store
	Spool *audit.Spool
	// ProfileFile receives the persona's variables as export lines; empty
	// disables it.
	ProfileFile string
	// Environ is the daemon's environment at start (os.Environ()).
	Environ       []string
	ScriptTimeout time.Duration
	Logger        *slog.Logger
	// Services, when set, keeps systemd's environment for services in step
	// with the active persona.
	Services *sysenv.Manager
}

// Manager holds the active persona and changes it.
type Manager struct {
	cfg  Config
	log  *slog.Logger
	base []string
	mu   sync.Mutex // serialises activations
	view atomic.Pointer[View]
	// files remembers the materialised files already checked.
	files checkedFiles
	// gcKept is what the last gcFiles kept (nil: no pass yet); gcDirty is
	// set when a file was materialised since. Both under mu.
	gcKept  map[string]bool
	gcDirty bool
	// profile is what the profile file holds as this daemon last wrote it
	// (profileKnown), so that an activation neither reads it back nor
	// rewrites it unchanged. Under mu.
	profile      []byte
	profileKnown bool
}

// New restores the persisted persona (environment and routing, scripts not
// re-run) and returns the manager.
func New(cfg Config) (*Manager, error) {
	if cfg.ScriptTimeout <= 0 {
		cfg.ScriptTimeout = DefaultScriptTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	active, err := cfg.Store.Load()
	if err != nil {
		return nil, err
	}
	base := BaseEnv(cfg.Environ, active)
	if Lookup(base, "PATH") == "" {
		// Commands are resolved through this PATH; their children should
		// see the same one.
		base = append(base, "PATH="+routing.DefaultPath)
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, base: base}
	if cfg.Spool != nil {
		// The state log keeps the events of activations only until the
		// spool file holds them durably.
		cfg.Store.BeforeReplace(cfg.Spool.Sync)
	}
	for _, d := range []string{"overrides", "scripts"} {
		if err := os.MkdirAll(filepath.Join(cfg.Store.Dir(), d), 0o700); err != nil {
			return nil, fmt.Errorf("activation: %w", err)
		}
	}
	v, err := m.buildView(active)
	if errors.Is(err, ErrNoKernelEnforcement) {
		// Activated when this guest's kernel had Landlock: keep the
		// persona, enforced by the routing table, and say so.
		m.log.Error("the active persona asks for kernel enforcement, which this guest's kernel no longer offers: enforcing by the routing table only", "persona", active.Persona.Name)
		p := *active
		p.Persona.Enforcement = protocol.EnforcementAgent
		v, err = m.buildView(&p)
		if v != nil {
			v.Active = active
		}
	}
	if err != nil {
		return nil, fmt.Errorf("activation: restoring the persisted persona: %w", err)
	}
	m.view.Store(v)
	// The profile is written without fsync: it is derived from the state
	// log here, whatever a crash left of it (also removed when none is active).
	m.writeProfile(v)
	if _, err := m.applyServices(context.Background(), v); err != nil {
		m.log.Error("services will not see the persona's environment", "err", err)
	}
	if active != nil {
		// Scripts are not re-run.
		m.log.Info("persona restored", "persona", active.Persona.Name, "revision", active.Revision, "activation_id", active.ActivationID)
	}
	return m, nil
}

// View returns the current view.
func (m *Manager) View() *View { return m.view.Load() }

// buildView computes the environment and routing table of active (nil for
// none), materialising inline overrides in the state directory.
func (m *Manager) buildView(active *protocol.ActiveState) (*View, error) {
	if active == nil {
		return &View{Table: routing.Empty(Lookup(m.base, "PATH")), Env: m.base}, nil
	}
	p := &active.Persona
	env := ComposeEnv(m.base, p.EnvironmentVariables)
	overrides := make(map[string]routing.OverrideTarget, len(p.CommandOverrides))
	for cmd, target := range p.CommandOverrides {
		switch {
		case strings.HasPrefix(target, "#!"):
			path, err := m.materialise("overrides", target, 0o755)
			if err != nil {
				return nil, err
			}
			overrides[cmd] = routing.OverrideTarget{Path: path, Inline: true}
		case filepath.IsAbs(target):
			overrides[cmd] = routing.OverrideTarget{Path: filepath.Clean(target)}
		default:
			return nil, fmt.Errorf("%w: command_overrides[%q] is neither an absolute path nor a #! script", ErrInvalidPersona, cmd)
		}
	}
	table, err := routing.Build(routing.Spec{
		Persona:    p.Name,
		Restricted: p.RestrictedCommands,
		Allowed:    p.AllowedCommands,
		Overrides:  overrides,
		PathEnv:    Lookup(env, "PATH"),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPersona, err)
	}
	domain, err := buildDomain(p, table, overrides)
	if err != nil {
		return nil, err
	}
	return &View{Active: active, Table: table, Env: env, Domain: domain}, nil
}

// ErrNoKernelEnforcement reports a persona asking for kernel enforcement on
// a guest whose kernel has no Landlock.
var ErrNoKernelEnforcement = errors.New(`activation: the persona asks for "enforcement": "kernel", and this guest's kernel has no Landlock (Linux 5.13 or later with landlock in the LSM list): use "agent", or a kernel with Landlock`)

// landlockABI is the kernel's Landlock ABI (a variable so that tests can
// play a kernel without Landlock).
var landlockABI = confine.ABI

// buildDomain builds the Landlock domain of a persona: nil when it is
// enforced by the routing table only ("agent", or no Landlock and no
// explicit "kernel") or has nothing to enforce.
func buildDomain(p *protocol.Persona, table *routing.Table, overrides map[string]routing.OverrideTarget) (*confine.Domain, error) {
	switch p.Enforcement {
	case protocol.EnforcementAgent:
		return nil, nil
	case protocol.EnforcementKernel, "":
	default:
		return nil, fmt.Errorf("%w: enforcement %q is neither %q nor %q", ErrInvalidPersona, p.Enforcement, protocol.EnforcementKernel, protocol.EnforcementAgent)
	}
	if landlockABI() == 0 {
		if p.Enforcement == protocol.EnforcementKernel {
			return nil, ErrNoKernelEnforcement
		}
		return nil, nil
	}
	spec := confine.Spec{Denied: table.RestrictedFiles(), DenyWritable: table.Allowlist()}
	if p.DenyExecWritable != nil {
		spec.DenyWritable = *p.DenyExecWritable
	}
	if table.Allowlist() {
		spec.Allowed = append([]string{}, table.AllowedFiles()...)
	}
	for _, o := range overrides {
		spec.Keep = append(spec.Keep, o.Path)
	}
	if spec.Allowed == nil && len(spec.Denied) == 0 && !spec.DenyWritable {
		return nil, nil
	}
	d, err := confine.Build(spec)
	if err != nil {
		return nil, fmt.Errorf("activation: building the kernel enforcement: %w", err)
	}
	return d, nil
}

// materialise writes content to a content-addressed file under the state
// directory's sub directory and returns its path. Identical content shares a
// file, so a running command never sees its file replaced.
func (m *Manager) materialise(sub, content string, perm os.FileMode) (string, error) {
	sum := sha256.Sum256([]byte(content))
	path := filepath.Join(m.cfg.Store.Dir(), sub, hex.EncodeToString(sum[:16]))
	if m.files.ok(path) {
		return path, nil
	}
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, []byte(content)) {
		m.files.checked(path)
		return path, nil
	}
	// No fsync: a file torn by a crash differs from its content and is
	// rewritten here before use. ReplaceFile keeps the write descriptor from
	// processes forked meanwhile, so the file can be executed at once.
	m.gcDirty = true
	if err := state.ReplaceFile(path, []byte(content), perm); err != nil {
		return "", fmt.Errorf("activation: materialise: %w", err)
	}
	return path, nil
}

// CheckPersona refuses a persona the guest must not apply, by the rules the
// host checked it with (package rules): its name, its environment and its
// scripts.
func CheckPersona(p *protocol.Persona) error {
	if err := rules.PersonaName(p.Name); err != nil {
		return fmt.Errorf("%w: name %q %w", ErrInvalidPersona, p.Name, err)
	}
	if n := len(p.EnvironmentVariables); n > rules.MaxEnvVars {
		return fmt.Errorf("%w: %d environment variables, at most %d allowed", ErrInvalidPersona, n, rules.MaxEnvVars)
	}
	for k, v := range p.EnvironmentVariables {
		if err := rules.EnvName(k); err != nil {
			return fmt.Errorf("%w: environment variable %q: %w", ErrInvalidPersona, k, err)
		}
		if err := rules.EnvValue(v); err != nil {
			return fmt.Errorf("%w: environment variable %q: value %w", ErrInvalidPersona, k, err)
		}
	}
	if err := rules.EnvTotal(p.EnvironmentVariables); err != nil {
		return fmt.Errorf("%w: environment_variables %w", ErrInvalidPersona, err)
	}
	if i, err := rules.SecretVariables(p.SecretVariables, p.EnvironmentVariables); err != nil {
		return fmt.Errorf("%w: secret_variables (entry %d) %w", ErrInvalidPersona, i, err)
	}
	if err := rules.Script(p.PreActivationScript); err != nil {
		return fmt.Errorf("%w: pre_activation_script %w", ErrInvalidPersona, err)
	}
	if err := rules.Script(p.PostActivationScript); err != nil {
		return fmt.Errorf("%w: post_activation_script %w", ErrInvalidPersona, err)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Activate applies req.Persona. The answer is one of ResultActivated,
// ResultAborted (the pre-activation script failed; nothing changed),
// ResultRolledBack (the post-activation script failed; the previous persona
// is back) or ResultFailed (the persona is invalid or could not be
// persisted; nothing changed).
func (m *Manager) Activate(ctx context.Context, req protocol.Activate) protocol.ActivateResult {
	m.mu.Lock()
	defer m.mu.Unlock()
	start := time.Now()
	prev := m.view.Load()
	p := req.Persona
	ev := protocol.AuditEvent{Type: protocol.AuditActivation, Persona: p.Name, ActivationID: req.ActivationID, Actor: req.Actor, Detail: req.Reason}
	finish := func(res protocol.ActivateResult) protocol.ActivateResult {
		res.Active = m.view.Load().Active
		res.DurationMillis = ms(time.Since(start))
		if res.Result == protocol.ResultActivated {
			// Recorded with the state.
			return res
		}
		ev.Result = res.Result
		if res.Phase != "" {
			ev.Detail = strings.TrimSpace(ev.Detail + " phase=" + res.Phase)
		}
		if res.Error != "" {
			ev.Detail = strings.TrimSpace(ev.Detail + " error=" + res.Error)
		}
		m.record(ev)
		return res
	}
	if err := CheckPersona(&p); err != nil {
		return finish(protocol.ActivateResult{Result: protocol.ResultFailed, Error: err.Error()})
	}
	timeout := m.cfg.ScriptTimeout
	if req.ScriptTimeoutMillis > 0 {
		timeout = time.Duration(req.ScriptTimeoutMillis) * time.Millisecond
	}
	scriptEnv := func(env []string) []string {
		return append(env[:len(env):len(env)],
			"VMPERSONA_PERSONA="+p.Name,
			"VMPERSONA_PREVIOUS_PERSONA="+prev.PersonaName(),
			"VMPERSONA_ACTIVATION_ID="+req.ActivationID)
	}

	// 1. The pre-activation script, in the current environment.
	if sr, err := m.runScript(ctx, "pre", p.PreActivationScript, scriptEnv(prev.Env), timeout); err != nil {
		return finish(protocol.ActivateResult{Result: protocol.ResultFailed, Error: err.Error()})
	} else if sr != nil {
		return finish(protocol.ActivateResult{Result: protocol.ResultAborted, Phase: "pre", Script: sr})
	}

	// 2. The new environment and routing table.
	active := &protocol.ActiveState{Persona: p, Revision: req.Revision, ActivationID: req.ActivationID, ActivatedAt: time.Now().UTC()}
	next, err := m.buildView(active)
	if err != nil {
		return finish(protocol.ActivateResult{Result: protocol.ResultFailed, Error: err.Error()})
	}

	var r reverter
	defer r.Fail()
	// 3. Apply: one atomic swap of table and environment, and the profile.
	m.view.Store(next)
	r.Add(func() { m.view.Store(prev) })
	r.Add(m.writeProfile(next))
	undo, err := m.applyServices(ctx, next)
	r.Add(undo)
	if err != nil {
		r.Fail()
		return finish(protocol.ActivateResult{Result: protocol.ResultFailed, Error: err.Error()})
	}

	// 4. The post-activation script, in the new environment.
	if sr, err := m.runScript(ctx, "post", p.PostActivationScript, scriptEnv(next.Env), timeout); err != nil {
		r.Fail()
		return finish(protocol.ActivateResult{Result: protocol.ResultFailed, Error: err.Error()})
	} else if sr != nil {
		r.Fail()
		return finish(protocol.ActivateResult{Result: protocol.ResultRolledBack, Phase: "post", Script: sr})
	}

	// 5. Persist before answering: the state and its audit event, one
	// durable write.
	ev.Result = protocol.ResultActivated
	if err := m.commit(active, ev); err != nil {
		r.Fail()
		m.log.Error("activation: persisting the active persona failed", "persona", p.Name, "err", err)
		return finish(protocol.ActivateResult{Result: protocol.ResultFailed, Error: err.Error()})
	}
	r.Success()
	m.gcFiles(next, prev)
	return finish(protocol.ActivateResult{Result: protocol.ResultActivated})
}

// Deactivate returns the guest to no persona: base environment, empty table,
// no profile file, persisted.
func (m *Manager) Deactivate(ctx context.Context, req protocol.Deactivate) protocol.ActivateResult {
	m.mu.Lock()
	defer m.mu.Unlock()
	start := time.Now()
	prev := m.view.Load()
	ev := protocol.AuditEvent{Type: protocol.AuditDeactivation, Persona: prev.PersonaName(), ActivationID: req.ActivationID, Actor: req.Actor}
	next, _ := m.buildView(nil)

	var r reverter
	defer r.Fail()
	m.view.Store(next)
	r.Add(func() { m.view.Store(prev) })
	r.Add(m.writeProfile(next))
	res := protocol.ActivateResult{Result: protocol.ResultDeactivated}
	undo, err := m.applyServices(ctx, next)
	r.Add(undo)
	if err == nil {
		ev.Result = res.Result
		err = m.commit(nil, ev)
	}
	if err != nil {
		r.Fail()
		m.log.Error("deactivation: persisting failed", "err", err)
		res = protocol.ActivateResult{Result: protocol.ResultFailed, Error: err.Error()}
		ev.Result = res.Result
		ev.Detail = res.Error
		m.record(ev)
	} else {
		r.Success()
		m.gcFiles(next, prev)
	}
	res.Active = m.view.Load().Active
	res.DurationMillis = ms(time.Since(start))
	return res
}

// commit persists the active persona (nil for none) and the audit event of
// the change in one state record: one durable write.
func (m *Manager) commit(a *protocol.ActiveState, ev protocol.AuditEvent) error {
	if m.cfg.Spool == nil {
		return m.cfg.Store.Save(a)
	}
	_, err := m.cfg.Spool.RecordWith(ev, func(ev protocol.AuditEvent) error { return m.cfg.Store.Commit(a, &ev) })
	return err
}

func (m *Manager) record(ev protocol.AuditEvent) {
	if m.cfg.Spool == nil {
		return
	}
	if _, err := m.cfg.Spool.Record(ev); err != nil {
		m.log.Error("audit record failed", "err", err)
	}
}

// runScript runs one script. It returns nil, nil when the script is empty or
// succeeded, the script's result when it failed (non-zero exit, signal,
// timeout), and an error when it could not be started.
func (m *Manager) runScript(ctx context.Context, phase, script string, env []string, timeout time.Duration) (*protocol.ScriptResult, error) {
	if strings.TrimSpace(script) == "" {
		return nil, nil
	}
	path, err := m.materialise("scripts", script, 0o700)
	if err != nil {
		return nil, err
	}
	spec := execute.Spec{Path: path, Args: []string{path}, Env: env, Dir: "/", Timeout: timeout, MaxOutput: MaxScriptOutput}
	if !strings.HasPrefix(script, "#!") {
		spec.Path, spec.Args = "/bin/sh", []string{"sh", path}
	}
	// The file stays (content-addressed: the next activation with the
	// same script reuses it); gcFiles removes the ones no persona at hand
	// uses.
	res, err := execute.Run(ctx, spec)
	if err != nil {
		return &protocol.ScriptResult{ExitCode: -1, Stderr: err.Error()}, nil
	}
	m.log.Info("persona script finished", "phase", phase, "exit_code", res.ExitCode, "signal", res.Signal,
		"timed_out", res.TimedOut, "duration", res.Duration)
	if res.ExitCode == 0 && res.Signal == "" && !res.TimedOut {
		return nil, nil
	}
	return &protocol.ScriptResult{
		ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut,
		Stdout: string(res.Stdout), Stderr: string(res.Stderr),
		StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated,
		DurationMillis: ms(res.Duration),
	}, nil
}

// writeProfile makes the profile file match v (export lines, or no file when
// no persona is active) and returns the undo. A missing profile directory is
// logged and ignored.
func (m *Manager) writeProfile(v *View) (undo func()) {
	path := m.cfg.ProfileFile
	if path == "" {
		return func() {}
	}
	// What the file holds now: as this daemon last wrote it, else read.
	old, known := m.profile, m.profileKnown
	if !known {
		b, err := os.ReadFile(path)
		old, known = b, err == nil || errors.Is(err, os.ErrNotExist)
	}
	// put makes the file hold content (nil: no file) and remembers it when
	// it is sure of the outcome.
	m.profile, m.profileKnown = old, known
	put := func(content []byte) {
		if cur := m.profile; m.profileKnown && bytes.Equal(cur, content) && (content == nil) == (cur == nil) {
			return
		}
		var err error
		if content == nil {
			if err = os.Remove(path); errors.Is(err, os.ErrNotExist) {
				err = nil
			}
			os.Remove(state.PreviousName(path))
		} else {
			// The previous profile is kept beside it (hidden) and written
			// over by the next activation: no file created per activation.
			err = state.ReplaceFileReusing(path, content, 0o644)
		}
		if err != nil {
			m.log.Error("profile: write failed", "path", path, "err", err)
		}
		m.profile, m.profileKnown = content, err == nil
	}
	if _, err := os.Stat(filepath.Dir(path)); err != nil {
		m.log.Warn("profile: directory missing; login shells will not see the persona's environment", "path", path, "err", err)
		m.profile, m.profileKnown = nil, false
		return func() {}
	}
	restore := func() {
		if known {
			put(old)
		}
	}
	if v.Active == nil {
		put(nil)
		return restore
	}
	// Secret variables stay out of the file, which every user may read:
	// commands get them through the exec environment only.
	put(profileScript(v.Active.Persona.Name, publicEnv(&v.Active.Persona)))
	return restore
}

// gcFiles removes materialised override and script files that neither the
// current nor the previous view uses (the previous one may still have
// commands running).
func (m *Manager) gcFiles(views ...*View) {
	keep := map[string]bool{}
	hash := func(content string) string {
		sum := sha256.Sum256([]byte(content))
		return hex.EncodeToString(sum[:16])
	}
	for _, v := range views {
		if v == nil || v.Active == nil {
			continue
		}
		p := &v.Active.Persona
		for _, t := range p.CommandOverrides {
			if strings.HasPrefix(t, "#!") {
				keep["overrides/"+hash(t)] = true
			}
		}
		keep["scripts/"+hash(p.PreActivationScript)] = true
		keep["scripts/"+hash(p.PostActivationScript)] = true
	}
	// Only this daemon writes these directories (while it holds the state
	// directory): when it materialised nothing since the last pass and
	// keeps the same files, the last pass left nothing to remove.
	if !m.gcDirty && m.gcKept != nil && maps.Equal(keep, m.gcKept) {
		return
	}
	m.gcKept, m.gcDirty = keep, false
	for _, sub := range []string{"overrides", "scripts"} {
		dir := filepath.Join(m.cfg.Store.Dir(), sub)
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !keep[sub+"/"+e.Name()] {
				os.Remove(filepath.Join(dir, e.Name()))
				m.files.forget(filepath.Join(dir, e.Name()))
			}
		}
	}
}
