package activation

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/guestd/audit"
	"github.com/vmpersona/vmpersona/guestd/routing"
	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/protocol"
)

func newManager(t testing.TB, profile string) (*Manager, string) {
	t.Helper()
	dir := t.TempDir()
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	spool, err := audit.Open(dir, audit.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { spool.Close() })
	m, err := New(Config{Store: store, Spool: spool, ProfileFile: profile, Environ: []string{"PATH=/usr/bin:/bin", "KEEP=1"}})
	if err != nil {
		t.Fatal(err)
	}
	return m, dir
}

// A profile directory that does not exist is logged and ignored.
func TestMissingProfileDirIgnored(t *testing.T) {
	m, _ := newManager(t, filepath.Join(t.TempDir(), "no", "such", "dir", "vmpersona.sh"))
	res := m.Activate(context.Background(), protocol.Activate{Persona: protocol.Persona{Name: "p", EnvironmentVariables: map[string]string{"A": "1"}}})
	if res.Result != protocol.ResultActivated {
		t.Fatalf("%+v", res)
	}
	if Lookup(m.View().Env, "A") != "1" {
		t.Fatal("environment not applied")
	}
}

// When the active persona cannot be persisted, every applied step is undone:
// view, routing table and profile file are the previous ones.
func TestPersistFailureRevertsEverything(t *testing.T) {
	profile := filepath.Join(t.TempDir(), "vmpersona.sh")
	m, _ := newManager(t, profile)
	first := protocol.Persona{Name: "first", EnvironmentVariables: map[string]string{"F": "1"}, RestrictedCommands: []string{"sh"}}
	if res := m.Activate(context.Background(), protocol.Activate{Persona: first}); res.Result != protocol.ResultActivated {
		t.Fatalf("%+v", res)
	}
	before, _ := os.ReadFile(profile)
	// Make the state write fail: a closed store refuses it.
	m.cfg.Store.Close()

	second := protocol.Persona{Name: "second", EnvironmentVariables: map[string]string{"S": "2"}}
	res := m.Activate(context.Background(), protocol.Activate{Persona: second})
	if res.Result != protocol.ResultFailed || res.Error == "" || res.Active == nil || res.Active.Persona.Name != "first" {
		t.Fatalf("want failed with first active, got %+v", res)
	}
	v := m.View()
	if v.PersonaName() != "first" || Lookup(v.Env, "F") != "1" || Lookup(v.Env, "S") != "" {
		t.Fatalf("view not reverted: %s %v", v.PersonaName(), v.Env)
	}
	if d := v.Table.Route("sh", "/"); d.Kind != routing.Denied {
		t.Fatalf("table not reverted: %v", d.Kind)
	}
	if after, _ := os.ReadFile(profile); string(after) != string(before) {
		t.Fatalf("profile not reverted: %q", after)
	}
}

func TestRestoreDoesNotRunScripts(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	store, _ := state.Open(dir)
	p := protocol.Persona{Name: "p", EnvironmentVariables: map[string]string{"A": "1"},
		PreActivationScript: "#!/bin/sh\ntouch " + marker + "\n", PostActivationScript: "#!/bin/sh\ntouch " + marker + "\n"}
	if err := store.Save(&protocol.ActiveState{Persona: p, Revision: 3}); err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Store: store, Environ: []string{"A=1", "B=2"}})
	if err != nil {
		t.Fatal(err)
	}
	if m.View().PersonaName() != "p" || Lookup(m.View().Env, "A") != "1" || Lookup(m.View().Env, "B") != "2" {
		t.Fatalf("restored view: %v", m.View().Env)
	}
	if Lookup(m.View().Env, "PATH") != routing.DefaultPath {
		t.Fatalf("no PATH in the daemon's environment: commands get %q", Lookup(m.View().Env, "PATH"))
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a script ran on restore")
	}
	// Deactivation then gives the base environment, which does not hold the
	// persona's A=1 even though the daemon's environment had it.
	res := m.Deactivate(context.Background(), protocol.Deactivate{})
	if res.Result != protocol.ResultDeactivated || Lookup(m.View().Env, "A") != "" {
		t.Fatalf("%+v %v", res, m.View().Env)
	}
}

// Many activations of a large persona fill the state log, which is then
// replaced by a new file (after the audit spool synced its own): every
// activation is answered, the last persona is restored after a restart,
// and each activation's audit event is there once.
func TestStateLogReplacedUnderActivations(t *testing.T) {
	m, dir := newManager(t, "")
	big := strings.Repeat("v", 30<<10)
	const n = 40 // ≈ 6 records of 150 KiB fill the 1 MiB log
	for i := range n {
		p := protocol.Persona{Name: fmt.Sprintf("big-%d", i%2), EnvironmentVariables: map[string]string{}}
		for j := range 5 {
			p.EnvironmentVariables[fmt.Sprintf("V%d", j)] = big
		}
		if res := m.Activate(context.Background(), protocol.Activate{Persona: p, Revision: uint64(i + 1)}); res.Result != protocol.ResultActivated {
			t.Fatalf("activation %d: %+v", i, res)
		}
	}
	m.cfg.Spool.Close()
	m.cfg.Store.Close()
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	spool, err := audit.Open(dir, audit.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer spool.Close()
	m2, err := New(Config{Store: store, Spool: spool, Environ: []string{"PATH=/usr/bin:/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	if a := m2.View().Active; a == nil || a.Revision != n {
		t.Fatalf("restored: %+v", a)
	}
	evs := spool.Pending(1000)
	if len(evs) != n {
		t.Fatalf("%d audit events, want %d", len(evs), n)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) || ev.Type != protocol.AuditActivation {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
}
