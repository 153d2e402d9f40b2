package activation

import (
	"context"
	"maps"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/guestd/sysenv"
	"github.com/vmpersona/vmpersona/guestd/sysenv/sysenvtest"
	"github.com/vmpersona/vmpersona/protocol"
)

func newServicesManager(t *testing.T, dir string) (*Manager, *sysenvtest.Manager) {
	t.Helper()
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	fake := sysenvtest.New(t, dir, "boot-1")
	m, err := New(Config{Store: store, Environ: []string{"PATH=/usr/bin:/bin"}, Services: sysenv.New(fake.Config)})
	if err != nil {
		t.Fatal(err)
	}
	return m, fake
}

func servicesSee(t *testing.T, fake *sysenvtest.Manager, want map[string]string) {
	t.Helper()
	if got := fake.Env(t); !maps.Equal(got, want) {
		t.Fatalf("services see %q, want %q", got, want)
	}
}

// Services see the active persona's variables (not its secrets), the next
// persona's replace them, a rolled-back activation and a refused one leave
// the previous ones, and deactivation removes them.
func TestServicesSeeThePersona(t *testing.T) {
	ctx := context.Background()
	m, fake := newServicesManager(t, t.TempDir())
	staging := protocol.Persona{Name: "staging", EnvironmentVariables: map[string]string{"APP_ENV": "staging", "DEPLOY_TARGET": "s1", "API_TOKEN": "t0k"},
		SecretVariables: []string{"API_TOKEN"}}
	if res := m.Activate(ctx, protocol.Activate{Persona: staging}); res.Result != protocol.ResultActivated {
		t.Fatalf("%+v", res)
	}
	servicesSee(t, fake, map[string]string{"APP_ENV": "staging", "DEPLOY_TARGET": "s1"})

	// The post-activation script sees the new persona in the manager (it
	// runs after the change) and fails: rolled back.
	broken := protocol.Persona{Name: "broken", EnvironmentVariables: map[string]string{"APP_ENV": "broken"},
		PostActivationScript: "#!/bin/sh\nexit 3\n"}
	if res := m.Activate(ctx, protocol.Activate{Persona: broken}); res.Result != protocol.ResultRolledBack {
		t.Fatalf("%+v", res)
	}
	servicesSee(t, fake, map[string]string{"APP_ENV": "staging", "DEPLOY_TARGET": "s1"})

	// systemd refuses: the activation fails and everything stays.
	fake.Fail(t, "set-environment")
	prod := protocol.Persona{Name: "production", EnvironmentVariables: map[string]string{"APP_ENV": "production"}}
	res := m.Activate(ctx, protocol.Activate{Persona: prod})
	if res.Result != protocol.ResultFailed || !strings.Contains(res.Error, "set-environment") {
		t.Fatalf("%+v", res)
	}
	if m.View().PersonaName() != "staging" || Lookup(m.View().Env, "APP_ENV") != "staging" {
		t.Fatalf("view %s %v", m.View().PersonaName(), m.View().Env)
	}
	servicesSee(t, fake, map[string]string{"APP_ENV": "staging", "DEPLOY_TARGET": "s1"})

	if res := m.Activate(ctx, protocol.Activate{Persona: prod}); res.Result != protocol.ResultActivated {
		t.Fatalf("%+v", res)
	}
	servicesSee(t, fake, map[string]string{"APP_ENV": "production"})

	if res := m.Deactivate(ctx, protocol.Deactivate{}); res.Result != protocol.ResultDeactivated {
		t.Fatalf("%+v", res)
	}
	servicesSee(t, fake, map[string]string{})
}

// The daemon's start brings the manager in line with the persisted persona:
// after a stop between an activation's change and its persisting, the
// variables of the persona that was not persisted go.
func TestStartSyncsServices(t *testing.T) {
	dir := t.TempDir()
	store, _ := state.Open(dir)
	if err := store.Save(&protocol.ActiveState{Persona: protocol.Persona{Name: "kept", EnvironmentVariables: map[string]string{"A": "1"}}}); err != nil {
		t.Fatal(err)
	}
	fake := sysenvtest.New(t, dir, "boot-1")
	svc := sysenv.New(fake.Config)
	// What an activation of "lost" exported before the daemon stopped.
	if _, err := svc.Apply(context.Background(), map[string]string{"B": "2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Store: store, Environ: []string{"PATH=/bin"}, Services: sysenv.New(fake.Config)}); err != nil {
		t.Fatal(err)
	}
	servicesSee(t, fake, map[string]string{"A": "1"})
}
