package main

import (
	"strings"
	"testing"
)

// fleet import copies one daemon's personas into another (in production the
// target is a host in fleet mode; the command only speaks the REST API, so
// two plain daemons show what it does): missing names are created, equal
// ones reported same, differing ones reported as conflicts with exit 4.
func TestFleetImport(t *testing.T) {
	src := startDaemons(t, false)
	dst := startDaemons(t, false)
	dir := t.TempDir()
	want(t, src.ctl(t, "persona", "create", "-f", writeFile(t, dir, "a.json", `{"name":"alpha","restricted_commands":["rm"]}`)), 0, "create alpha on the source")
	want(t, src.ctl(t, "persona", "create", "-f", writeFile(t, dir, "b.json", `{"name":"beta"}`)), 0, "create beta on the source")
	want(t, src.ctl(t, "persona", "create", "-f", writeFile(t, dir, "c.json", `{"name":"gamma","environment_variables":{"A":"1"}}`)), 0, "create gamma on the source")
	want(t, dst.ctl(t, "persona", "create", "-f", writeFile(t, dir, "b2.json", `{"name":"beta"}`)), 0, "create beta on the target")
	want(t, dst.ctl(t, "persona", "create", "-f", writeFile(t, dir, "c2.json", `{"name":"gamma","environment_variables":{"A":"2"}}`)), 0, "create another gamma on the target")

	r := dst.ctl(t, "fleet", "import", "--from-socket", src.sock)
	want(t, r, 4, "import with a conflict")
	for _, line := range []string{"alpha", "beta", "gamma"} {
		if !strings.Contains(r.stdout, line) {
			t.Fatalf("import output lacks %s:\n%s", line, r)
		}
	}
	rows := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n")[1:] {
		f := strings.Fields(l)
		rows[f[0]] = f[1]
	}
	if rows["alpha"] != "created" || rows["beta"] != "same" || rows["gamma"] != "conflict" {
		t.Fatalf("import results %v, want alpha created, beta same, gamma conflict:\n%s", rows, r)
	}
	want(t, dst.ctl(t, "persona", "get", "alpha"), 0, "alpha on the target")
	// Run again: nothing left to create.
	r = dst.ctl(t, "fleet", "import", "--from-socket", src.sock)
	if !strings.Contains(r.stdout, "alpha") || strings.Contains(r.stdout, "created") {
		t.Fatalf("second import created again:\n%s", r)
	}
}
