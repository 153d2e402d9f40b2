package reconcile

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// A persona's secret_variables, with the real guest daemon: the value stays
// out of the profile file (which stays world-readable, 0644) and out of the
// dry-run diff, and still reaches the commands an exec runs.
func TestSecretVariables(t *testing.T) {
	audited := true
	h := newHost(t)
	g := h.connectGuest("vm")
	const value = "pg://app:Zq9-not-for-eyes@db" // DB_CONN matches no secret-looking name pattern
	p := h.createPersona(protocol.Persona{
		Name:                 "sec",
		EnvironmentVariables: map[string]string{"APP_ENV": "staging", "DB_CONN": value},
		SecretVariables:      []string{"DB_CONN"},
		AuditExec:            &audited,
	})

	d, err := h.r.DryRun(ctxTimeout(t, 30*time.Second), "vm", p)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(d); strings.Contains(string(b), value) {
		t.Errorf("the dry-run diff shows the secret value: %s", b)
	}
	found := false
	for _, c := range d.Environment {
		if c.Name == "DB_CONN" {
			found = true
			if !c.Masked || c.New != protocol.MaskedValue {
				t.Errorf("DB_CONN in the diff: %+v, want masked", c)
			}
		}
	}
	if !found {
		t.Errorf("DB_CONN missing from the diff: %+v", d.Environment)
	}

	h.activate("vm", p, "alice")
	profile := filepath.Join(g.Dir, "profile.sh")
	b, err := os.ReadFile(profile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), value) || strings.Contains(string(b), "DB_CONN") {
		t.Errorf("the profile file holds the secret variable:\n%s", b)
	}
	if !strings.Contains(string(b), "export APP_ENV=") {
		t.Errorf("the profile file lacks the public variable:\n%s", b)
	}
	if fi, err := os.Stat(profile); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("profile mode: %v, %v; want 0644 (it holds no secret)", fi.Mode(), err)
	}
	if env := envOf(t, h, "vm"); env["DB_CONN"] != value || env["APP_ENV"] != "staging" {
		t.Errorf("exec environment: DB_CONN=%q APP_ENV=%q; want the persona's values", env["DB_CONN"], env["APP_ENV"])
	}

	// An exec whose argument holds the value is audited with it masked,
	// in the guest's spool and in the host's log alike.
	if res, err := h.exec("vm", "echo", "connect", value); err != nil || res.ExitCode != 0 {
		t.Fatalf("echo: %+v, %v", res, err)
	}
	waitExecAudited(t, h, g, "vm", "echo")
	evs := h.audit(store.AuditQuery{Instance: "vm", Type: store.AuditExec})
	if len(evs) == 0 {
		t.Fatal("no exec audited")
	}
	for _, ev := range evs {
		if strings.Contains(ev.Detail, value) {
			t.Errorf("audited exec shows the secret value: %q", ev.Detail)
		}
	}
	if spool, err := os.ReadFile(filepath.Join(g.StateDir, "audit-spool.jsonl")); err != nil || strings.Contains(string(spool), value) {
		t.Errorf("the guest's audit spool holds the secret value (%v)", err)
	}
}
