package activation

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/guestd/routing"
	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/protocol"
)

// TestPostScriptFailureRollsBack: a post-activation script that fails puts
// the previous persona back, whole: the answer says rolled_back in phase post
// and names the previous persona as active, and the view (environment and
// routing table), the profile file and the persisted state are the previous
// ones. The script itself ran in the new environment, so the new persona had
// been applied before it was undone.
func TestPostScriptFailureRollsBack(t *testing.T) {
	profile := filepath.Join(t.TempDir(), "vmpersona.sh")
	m, dir := newManager(t, profile)
	first := protocol.Persona{Name: "first", EnvironmentVariables: map[string]string{"F": "1"}, RestrictedCommands: []string{"sh"}}
	if res := m.Activate(context.Background(), protocol.Activate{Persona: first, Revision: 1, ActivationID: "a1"}); res.Result != protocol.ResultActivated {
		t.Fatalf("first activation: %+v", res)
	}
	profileBefore, err := os.ReadFile(profile)
	if err != nil {
		t.Fatal(err)
	}

	seen := filepath.Join(t.TempDir(), "seen")
	second := protocol.Persona{
		Name:                 "second",
		EnvironmentVariables: map[string]string{"S": "2"},
		RestrictedCommands:   []string{"ls"},
		PostActivationScript: "#!/bin/sh\necho \"S=$S F=$F persona=$VMPERSONA_PERSONA\" > " + seen + "\nexit 3\n",
	}
	res := m.Activate(context.Background(), protocol.Activate{Persona: second, Revision: 2, ActivationID: "a2"})
	if res.Result != protocol.ResultRolledBack || res.Phase != "post" || res.Script == nil || res.Script.ExitCode != 3 {
		t.Fatalf("want rolled_back in phase post with exit code 3, got %+v", res)
	}
	if res.Active == nil || res.Active.Persona.Name != "first" || res.Active.ActivationID != "a1" {
		t.Fatalf("the answer names %+v as active, want the first persona", res.Active)
	}

	if b, err := os.ReadFile(seen); err != nil || strings.TrimSpace(string(b)) != "S=2 F= persona=second" {
		t.Fatalf("the post script did not run in the new environment: %q, %v", b, err)
	}

	v := m.View()
	if v.PersonaName() != "first" || Lookup(v.Env, "F") != "1" || Lookup(v.Env, "S") != "" {
		t.Fatalf("view not rolled back: %s %v", v.PersonaName(), v.Env)
	}
	if d := v.Table.Route("sh", "/"); d.Kind != routing.Denied {
		t.Errorf("routing table not rolled back: sh is %v, want denied by the first persona", d.Kind)
	}
	if d := v.Table.Route("ls", "/"); d.Kind == routing.Denied {
		t.Errorf("routing table not rolled back: ls is still denied by the second persona")
	}
	if after, _ := os.ReadFile(profile); string(after) != string(profileBefore) {
		t.Errorf("profile not rolled back: %q, want %q", after, profileBefore)
	}
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if saved, err := store.Load(); err != nil || saved == nil || saved.Persona.Name != "first" || saved.ActivationID != "a1" {
		t.Errorf("persisted state after the rollback: %+v, %v; want the first persona", saved, err)
	}
}

// TestPostScriptFailureFromNoPersona: rolling back to no persona removes the
// profile file the activation wrote and leaves nothing persisted.
func TestPostScriptFailureFromNoPersona(t *testing.T) {
	profile := filepath.Join(t.TempDir(), "vmpersona.sh")
	m, dir := newManager(t, profile)
	p := protocol.Persona{Name: "p", EnvironmentVariables: map[string]string{"S": "2"}, PostActivationScript: "#!/bin/sh\nexit 1\n"}
	res := m.Activate(context.Background(), protocol.Activate{Persona: p, ActivationID: "a1"})
	if res.Result != protocol.ResultRolledBack || res.Active != nil {
		t.Fatalf("want rolled_back with no persona active, got %+v", res)
	}
	if v := m.View(); v.Active != nil || Lookup(v.Env, "S") != "" {
		t.Fatalf("view not rolled back: %s %v", v.PersonaName(), v.Env)
	}
	if _, err := os.Stat(profile); !os.IsNotExist(err) {
		t.Errorf("the profile file is still there after the rollback: %v", err)
	}
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if saved, err := store.Load(); err != nil || saved != nil {
		t.Errorf("persisted state after the rollback: %+v, %v; want none", saved, err)
	}
}
