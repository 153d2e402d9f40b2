package main

import (
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// TestDriftDiffRollout: vmpersonactl shows an update's drift in the
// instances table, the diff a rollout would apply, and the rollout's
// progress line per instance.
func TestDriftDiffRollout(t *testing.T) {
	d := startDaemons(t, true)
	dir := t.TempDir()
	d.createHardened(t)
	want(t, d.ctl(t, "activate", "vm1", "hardened"), 0, "activate")
	r := d.ctl(t, "instances")
	want(t, r, 0, "instances")
	if !strings.Contains(r.stdout, "DESIRED") || !strings.Contains(r.stdout, "SYNC") ||
		!strings.Contains(spaced(r.stdout), "hardened@1 hardened@1 in_sync") {
		t.Errorf("instances in sync:\n%s", r.stdout)
	}

	updated := strings.Replace(hardenedJSON, `"restricted_commands": ["rm", "shutdown"]`, `"restricted_commands": ["rm", "shutdown", "cat"]`, 1)
	updated = strings.Replace(updated, `{"APP_ENV": "staging"}`, `{"APP_ENV": "production", "DB_PASSWORD": "hunter2"}`, 1)
	want(t, d.ctl(t, "persona", "edit", "hardened", "-f", writeFile(t, dir, "p2.json", updated)), 0, "edit")
	r = d.ctl(t, "instances")
	if !strings.Contains(spaced(r.stdout), "hardened@1 hardened@1 drifted") {
		t.Errorf("instances after an update:\n%s", r.stdout)
	}
	r = d.ctl(t, "active", "vm1")
	if !strings.Contains(r.stdout, "Stale:      yes") {
		t.Errorf("active after an update:\n%s", r.stdout)
	}

	r = d.ctl(t, "diff", "vm1", "hardened")
	want(t, r, 0, "diff")
	for _, s := range []string{"vm1: hardened@1 → hardened@2", "~ APP_ENV: staging → production", "+ DB_PASSWORD=********",
		"restricted commands:\n  + cat", "scripts: pre-activation, then post-activation would run"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("diff lacks %q:\n%s", s, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "hunter2") {
		t.Errorf("diff shows a secret value:\n%s", r.stdout)
	}

	r = d.ctl(t, "rollout", "hardened", "--max-parallel", "2")
	want(t, r, 0, "rollout")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "vm1") || !strings.Contains(lines[0], "activated    hardened@1 → hardened@2") ||
		!strings.HasPrefix(lines[1], "rollout of hardened@2: 1 instances, 1 activated") {
		t.Errorf("rollout said:\n%s", r.stdout)
	}
	r = d.ctl(t, "-o", "json", "instances")
	list := decodeJSON[map[string][]apitypes.Instance](t, r.stdout)
	if in := list["instances"]; len(in) != 1 || in[0].Sync != apitypes.SyncInSync || in[0].Active.Revision != 2 {
		t.Errorf("instances after the rollout: %+v", in)
	}
	r = d.ctl(t, "exec", "vm1", "cat", "/dev/null")
	want(t, r, 126, "cat after the rollout (denied)")

	// Nothing to do: a second rollout finds it in sync.
	r = d.ctl(t, "rollout", "hardened")
	if want(t, r, 0, "second rollout"); !strings.Contains(r.stdout, "in sync") {
		t.Errorf("second rollout said:\n%s", r.stdout)
	}
	want(t, d.ctl(t, "rollout", "nope"), 3, "rollout of an unknown persona")
	want(t, d.ctl(t, "rollout", "hardened", "--max-parallel", "-1"), 2, "negative --max-parallel")
}

// spaced is s with every run of blanks one space (table columns).
func spaced(s string) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	return strings.Join(lines, "\n")
}
