package testpersona

import "testing"

func TestLarge(t *testing.T) {
	a, b := Large("big-a", true), Large("big-b", false)
	if len(a.EnvironmentVariables) != 100 || len(a.CommandOverrides) != 50 || len(a.RestrictedCommands) != 200 {
		t.Fatalf("sizes: %d variables, %d overrides, %d restrictions", len(a.EnvironmentVariables), len(a.CommandOverrides), len(a.RestrictedCommands))
	}
	if a.PreActivationScript != TrueScript || a.PostActivationScript != TrueScript {
		t.Fatalf("scripts: %q %q", a.PreActivationScript, a.PostActivationScript)
	}
	if b.PreActivationScript != "" || b.PostActivationScript != "" {
		t.Fatalf("scripts without scripts: %q %q", b.PreActivationScript, b.PostActivationScript)
	}
	// Two large personas differ in every variable: activating one after
	// the other rewrites the whole environment.
	for k, v := range a.EnvironmentVariables {
		if b.EnvironmentVariables[k] == v {
			t.Fatalf("%s is %q in both", k, v)
		}
	}
}
