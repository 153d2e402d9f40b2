package activation

import (
	"os/exec"
	"slices"
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
)

func TestBaseEnvStripsWhatVmpersonaAdded(t *testing.T) {
	active := &protocol.ActiveState{Persona: protocol.Persona{EnvironmentVariables: map[string]string{"APP_ENV": "staging", "HOME": "/persona"}}}
	got := BaseEnv([]string{"PATH=/bin", "APP_ENV=staging", "HOME=/root", "VMPERSONA_PERSONA=x", "NOTIFY_SOCKET=/run/n", "broken"}, active)
	if want := []string{"PATH=/bin", "HOME=/root"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestComposeEnv(t *testing.T) {
	got := ComposeEnv([]string{"PATH=/bin", "A=base", "B=base"}, map[string]string{"B": "persona", "C": "c"})
	if want := []string{"PATH=/bin", "A=base", "B=persona", "C=c"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if Lookup(got, "B") != "persona" || Lookup(got, "Z") != "" {
		t.Fatal("Lookup")
	}
}

// The profile is sourced by a real shell: quoting must survive any value.
func TestProfileQuoting(t *testing.T) {
	vars := map[string]string{"Q": `it's "$HOME" $(id) ` + "`x`\nnewline\\", "EMPTY": ""}
	script := string(profileScript("p", vars)) + `printf '%s|%s' "$Q" "$EMPTY"`
	out, err := exec.Command("/bin/sh", "-c", script).Output()
	if err != nil || string(out) != vars["Q"]+"|" {
		t.Fatalf("got %q %v", out, err)
	}
}

func TestReverterUndoesInReverse(t *testing.T) {
	var log []int
	func() {
		var r reverter
		defer r.Fail()
		r.Add(func() { log = append(log, 1) })
		r.Add(func() { log = append(log, 2) })
	}()
	if !slices.Equal(log, []int{2, 1}) {
		t.Fatalf("undo order %v", log)
	}
	log = nil
	func() {
		var r reverter
		defer r.Fail()
		r.Add(func() { log = append(log, 1) })
		r.Success()
	}()
	if log != nil {
		t.Fatalf("undone after Success: %v", log)
	}
}
