package reconcile

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// TestDryRunMatchesActivation: a dry run changes nothing in the guest
// (state directory with the persisted persona, routing and audit spool;
// the environment commands get; the routing table), and what it announces
// is what the real activation then does.
func TestDryRunMatchesActivation(t *testing.T) {
	h := newHost(t)
	g := h.connectGuest("vm", "BASE_ONLY=kept")
	marks := filepath.Join(g.Dir, "scripts-ran")
	a := h.createPersona(protocol.Persona{
		Name:                 "old",
		EnvironmentVariables: map[string]string{"APP_ENV": "staging", "DB_PASSWORD": "hunter2", "KEEP": "same"},
		RestrictedCommands:   []string{"rm", "shutdown"},
		CommandOverrides:     map[string]string{"deploy": "#!/bin/sh\necho old", "ls": "/bin/ls"},
	})
	b := h.createPersona(protocol.Persona{
		Name:                 "new",
		EnvironmentVariables: map[string]string{"APP_ENV": "production", "API_TOKEN": "s3cr3t", "KEEP": "same"},
		PreActivationScript:  "#!/bin/sh\necho pre >> " + marks,
		PostActivationScript: "#!/bin/sh\necho post >> " + marks,
		RestrictedCommands:   []string{"shutdown", "cat"},
		CommandOverrides:     map[string]string{"deploy": "#!/bin/sh\necho new", "whoami": "/usr/bin/id"},
	})
	h.activate("vm", a, "alice")
	envBefore := envOf(t, h, "vm")
	waitExecAudited(t, h, g, "vm", "env")
	stateBefore := snapshot(t, g.StateDir)

	d, err := h.r.DryRun(ctxTimeout(t, 30*time.Second), "vm", b)
	if err != nil {
		t.Fatal(err)
	}

	// Nothing changed.
	if after := snapshot(t, g.StateDir); !reflect.DeepEqual(after, stateBefore) {
		t.Errorf("the dry run changed the guest's state directory:\nbefore %v\nafter  %v", slices.Sorted(maps.Keys(stateBefore)), slices.Sorted(maps.Keys(after)))
	}
	if _, err := os.Stat(marks); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a script ran in the dry run: %v", err)
	}
	if env := envOf(t, h, "vm"); !reflect.DeepEqual(env, envBefore) {
		t.Errorf("the dry run changed the environment")
	}
	if res, err := h.exec("vm", "cat", "/dev/null"); err != nil || res.Route != protocol.RouteDefault {
		t.Errorf("cat after the dry run: %+v, %v; want the default route (still allowed)", res, err)
	}
	if st, _ := h.m.Get("vm"); st.Active == nil || st.Active.Persona.Name != "old" {
		t.Errorf("the guest holds %+v after the dry run", st.Active)
	}

	// What it announced.
	if d.From == nil || *d.From != (protocol.PersonaRef{Name: "old", Revision: a.Revision}) || d.To != (protocol.PersonaRef{Name: "new", Revision: b.Revision}) || d.Unchanged {
		t.Errorf("diff from/to: %+v → %+v (unchanged %v)", d.From, d.To, d.Unchanged)
	}
	if !slices.Equal(d.Scripts, []string{"pre", "post"}) {
		t.Errorf("scripts: %v", d.Scripts)
	}
	wantList := func(what string, got protocol.ListChange, added, removed, changed []string) {
		t.Helper()
		if !slices.Equal(got.Added, added) || !slices.Equal(got.Removed, removed) || !slices.Equal(got.Changed, changed) {
			t.Errorf("%s: %+v, want added %v removed %v changed %v", what, got, added, removed, changed)
		}
	}
	wantList("restrictions", d.Restrictions, []string{"cat"}, []string{"rm"}, nil)
	wantList("overrides", d.Overrides, []string{"whoami"}, []string{"ls"}, []string{"deploy"})
	wantList("allowlist", d.Allowlist, []string{}, []string{}, nil)

	// The real activation.
	h.activate("vm", b, "alice")
	envAfter := envOf(t, h, "vm")

	// The environment changed exactly as announced (secret values masked).
	var actual []protocol.EnvChange
	for _, k := range slices.Sorted(maps.Keys(envBefore)) {
		if v, ok := envAfter[k]; !ok {
			actual = append(actual, protocol.EnvChange{Name: k, Change: protocol.ChangeRemoved, Old: envBefore[k]})
		} else if v != envBefore[k] {
			actual = append(actual, protocol.EnvChange{Name: k, Change: protocol.ChangeChanged, Old: envBefore[k], New: v})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(envAfter)) {
		if _, ok := envBefore[k]; !ok {
			actual = append(actual, protocol.EnvChange{Name: k, Change: protocol.ChangeAdded, New: envAfter[k]})
		}
	}
	for i, c := range actual {
		if c.Name == "DB_PASSWORD" || c.Name == "API_TOKEN" {
			actual[i].Masked = true
			if c.Old != "" {
				actual[i].Old = protocol.MaskedValue
			}
			if c.New != "" {
				actual[i].New = protocol.MaskedValue
			}
		}
	}
	if !reflect.DeepEqual(d.Environment, actual) {
		t.Errorf("environment diff\nannounced %+v\nhappened  %+v", d.Environment, actual)
	}
	if len(actual) != 3 {
		t.Errorf("the activation changed %d variables, want 3 (APP_ENV, DB_PASSWORD, API_TOKEN): %+v", len(actual), actual)
	}

	// Restrictions and overrides changed as announced.
	var pe *protocol.Error
	if _, err := h.exec("vm", "cat", "/dev/null"); !errors.As(err, &pe) || pe.Code != protocol.CodeDenied {
		t.Errorf("cat (restriction added): %v, want denied", err)
	}
	if res, err := h.exec("vm", "rm", "-f", filepath.Join(g.Dir, "nothing")); err != nil || res.Route != protocol.RouteDefault {
		t.Errorf("rm (restriction removed): %+v, %v", res, err)
	}
	if res, err := h.exec("vm", "whoami"); err != nil || res.Route != protocol.RouteOverride {
		t.Errorf("whoami (override added): %+v, %v", res, err)
	}
	if res, err := h.exec("vm", "ls", "/"); err != nil || res.Route != protocol.RouteDefault {
		t.Errorf("ls (override removed): %+v, %v", res, err)
	}
	if res, err := h.exec("vm", "deploy"); err != nil || res.Route != protocol.RouteOverride || res.Stdout != "new\n" {
		t.Errorf("deploy (override changed): %+v, %v", res, err)
	}
	if ran, err := os.ReadFile(marks); err != nil || string(ran) != "pre\npost\n" {
		t.Errorf("scripts that ran: %q, %v; announced %v", ran, err, d.Scripts)
	}

	// Against the revision it holds now, a dry run says so.
	if d, err := h.r.DryRun(ctxTimeout(t, 30*time.Second), "vm", b); err != nil || !d.Unchanged || len(d.Environment) != 0 {
		t.Errorf("dry run of the held revision: %+v, %v", d, err)
	}
}
