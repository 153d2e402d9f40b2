package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/internal/testproc"
)

// On one host: an assignment by instance name activates its persona on the
// guest; list shows it; a static instance's labels come from its flag
// (exit 4); delete, then delete again (exit 3); --fleet needs fleet mode.
func TestAssignmentCommands(t *testing.T) {
	d := startDaemons(t, true)
	d.createHardened(t)
	want(t, d.ctl(t, "assignment", "set", "pin", "--persona", "hardened", "--instance", "vm1", "--priority", "5"), 0, "assignment set")
	testproc.WaitFor(t, "vm1 to run hardened", func() bool {
		r := d.ctl(t, "-o", "json", "instance", "get", "vm1")
		var in struct {
			Active *struct{ Persona *string } `json:"active"`
		}
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &in) == nil && in.Active != nil && in.Active.Persona != nil && *in.Active.Persona == "hardened"
	})
	r := d.ctl(t, "assignment", "list")
	want(t, r, 0, "assignment list")
	if !strings.Contains(r.stdout, "pin") || !strings.Contains(r.stdout, "instance=vm1") || !strings.Contains(r.stdout, "hardened") {
		t.Fatalf("assignment list:\n%s", r)
	}
	for _, c := range []struct {
		args  []string
		field string
	}{
		{[]string{"assignment", "set", "bad", "--persona", "hardened"}, "selector"},
		{[]string{"assignment", "set", "ghost", "--persona", "nope", "--instance", "vm1"}, "persona"},
	} {
		r := d.ctl(t, c.args...)
		want(t, r, 1, strings.Join(c.args, " "))
		if !strings.Contains(r.stderr, c.field) {
			t.Errorf("%v: the message does not name %s:\n%s", c.args, c.field, r)
		}
	}
	want(t, d.ctl(t, "instance", "label", "vm1", "role=web"), 4, "labels of a static instance")
	want(t, d.ctl(t, "assignment", "delete", "pin"), 0, "assignment delete")
	want(t, d.ctl(t, "assignment", "delete", "pin"), 3, "assignment delete of a missing one")
	r = d.ctl(t, "rollout", "hardened", "--fleet")
	if r.code == 0 || !strings.Contains(r.stderr, "fleet mode") {
		t.Fatalf("rollout --fleet on a single host: %s", r)
	}
}
