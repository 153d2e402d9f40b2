package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
)

const hardenedJSON = `{
  "name": "hardened",
  "environment_variables": {"APP_ENV": "staging"},
  "pre_activation_script": "#!/bin/sh\necho preparing",
  "post_activation_script": "#!/bin/sh\ntest -n \"$APP_ENV\"",
  "command_overrides": {"deploy": "#!/bin/sh\necho dry-run: \"$@\""},
  "restricted_commands": ["rm", "shutdown"],
  "default_persona": false
}`

func decodeJSON[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("output is not the expected JSON: %v\n%s", err, s)
	}
	return v
}

func TestPersonaLifecycle(t *testing.T) {
	d := startDaemons(t, false)
	dir := t.TempDir()
	file := writeFile(t, dir, "hardened.json", hardenedJSON)

	r := d.ctl(t, "persona", "create", "-f", file)
	want(t, r, 0, "create")
	if r.stdout != "Persona hardened created (revision 1).\n" {
		t.Errorf("create said %q", r.stdout)
	}
	r = d.ctl(t, "persona", "create", "--file", file)
	want(t, r, exitConflict, "create an existing name")
	if !strings.Contains(r.stderr, `persona "hardened" already exists`) {
		t.Errorf("duplicate create: %q", r.stderr)
	}

	// From standard input, and json output.
	r = runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, `{"name":"minimal","restricted_commands":["rm"]}`, "-o", "json", "persona", "create", "-f", "-")
	want(t, r, 0, "create from stdin")
	if p := decodeJSON[protocol.Persona](t, r.stdout); p.Name != "minimal" || p.Revision != 1 || p.CreatedAt.IsZero() {
		t.Errorf("created persona = %+v", p)
	}

	// get: table for people, json that round-trips.
	r = d.ctl(t, "persona", "get", "hardened")
	want(t, r, 0, "get")
	for _, s := range []string{"Name:        hardened", "Revision:    1", "Environment: APP_ENV=staging",
		"Restricted:  rm, shutdown", "deploy → inline script, 2 lines", "Pre-activation script:\n  #!/bin/sh\n  echo preparing\n"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("get table lacks %q:\n%s", s, r.stdout)
		}
	}
	r = d.ctl(t, "persona", "get", "hardened", "--output", "json")
	want(t, r, 0, "get -o json")
	got := decodeJSON[protocol.Persona](t, r.stdout)
	if got.EnvironmentVariables["APP_ENV"] != "staging" || got.CommandOverrides["deploy"] == "" || got.Revision != 1 {
		t.Errorf("get json = %+v", got)
	}

	// list
	r = d.ctl(t, "persona", "list")
	want(t, r, 0, "list")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME ") || !strings.HasPrefix(lines[1], "hardened ") || !strings.HasPrefix(lines[2], "minimal ") {
		t.Errorf("list table:\n%s", r.stdout)
	}
	r = d.ctl(t, "-o", "json", "persona", "list")
	want(t, r, 0, "list -o json")
	if l := decodeJSON[struct{ Personas []protocol.Persona }](t, r.stdout); len(l.Personas) != 2 {
		t.Errorf("list json = %+v", l)
	}

	// edit -f with the document "get -o json" printed (revision 1, current).
	got.EnvironmentVariables["APP_ENV"] = "production"
	b, _ := json.Marshal(got)
	stale := writeFile(t, dir, "rev1.json", string(b))
	r = d.ctl(t, "persona", "edit", "hardened", "-f", stale)
	want(t, r, 0, "edit -f at the current revision")
	if r.stdout != "Persona hardened updated (revision 2).\n" {
		t.Errorf("edit said %q", r.stdout)
	}
	// The same file again: revision 1 is no longer current.
	r = d.ctl(t, "persona", "edit", "hardened", "-f", stale)
	want(t, r, exitConflict, "edit -f with a stale revision")
	if !strings.Contains(r.stderr, "Revision mismatch") {
		t.Errorf("stale edit: %q", r.stderr)
	}
	// Without a revision the current one is used.
	norev := writeFile(t, dir, "norev.json", `{"name":"hardened","environment_variables":{"APP_ENV":"qa"},"restricted_commands":["rm"]}`)
	r = d.ctl(t, "persona", "edit", "hardened", "-f", norev)
	want(t, r, 0, "edit -f without a revision")
	r = d.ctl(t, "-o", "json", "persona", "get", "hardened")
	if p := decodeJSON[protocol.Persona](t, r.stdout); p.Revision != 3 || p.EnvironmentVariables["APP_ENV"] != "qa" || p.PreActivationScript != "" {
		t.Errorf("after edit -f: %+v", p)
	}
	// A file naming another persona is refused before asking the daemon.
	r = d.ctl(t, "persona", "edit", "minimal", "-f", norev)
	want(t, r, exitGeneral, "edit -f with another name")
	if !strings.Contains(r.stderr, `names persona "hardened", not "minimal"`) {
		t.Errorf("rename: %q", r.stderr)
	}

	// A misspelt field is refused locally, not silently dropped.
	typo := writeFile(t, dir, "typo.json", `{"name":"typo","restricted_command":["rm"]}`)
	r = d.ctl(t, "persona", "create", "-f", typo)
	want(t, r, exitGeneral, "create with an unknown field")
	if !strings.Contains(r.stderr, `unknown field "restricted_command"`) {
		t.Errorf("typo: %q", r.stderr)
	}
	// An invalid persona is refused by the daemon with its reason.
	bad := writeFile(t, dir, "bad.json", `{"name":"Bad Name!"}`)
	r = d.ctl(t, "persona", "create", "-f", bad)
	want(t, r, exitGeneral, "create with an invalid name")
	if !strings.Contains(r.stderr, "Invalid field") {
		t.Errorf("invalid: %q", r.stderr)
	}
	// Broken JSON names the line.
	broken := writeFile(t, dir, "broken.json", "{\n  \"name\": \"x\",\n  oops\n}")
	r = d.ctl(t, "persona", "create", "-f", broken)
	want(t, r, exitGeneral, "create from broken JSON")
	if !strings.Contains(r.stderr, "line 3") {
		t.Errorf("broken: %q", r.stderr)
	}

	// A second default persona is refused, naming the first.
	r = runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, `{"name":"base","default_persona":true}`, "persona", "create", "-f", "-")
	want(t, r, 0, "create the default persona")
	r = runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, `{"name":"other","default_persona":true}`, "persona", "create", "-f", "-")
	want(t, r, exitConflict, "create a second default persona")
	if !strings.Contains(r.stderr, `"base"`) {
		t.Errorf("second default: %q", r.stderr)
	}

	// delete
	r = d.ctl(t, "persona", "delete", "minimal")
	want(t, r, 0, "delete")
	if r.stdout != "Persona minimal deleted.\n" {
		t.Errorf("delete said %q", r.stdout)
	}
	want(t, d.ctl(t, "persona", "get", "minimal"), exitNotFound, "get a deleted persona")
	r = d.ctl(t, "persona", "delete", "minimal")
	want(t, r, exitNotFound, "delete a missing persona")
	if !strings.Contains(r.stderr, `Not found: no persona named "minimal"`) {
		t.Errorf("delete missing: %q", r.stderr)
	}
}

func TestPersonaEditInEditor(t *testing.T) {
	d := startDaemons(t, false)
	dir := t.TempDir()
	d.createHardened(t)
	sock := "VMPERSONA_SOCKET=" + d.sock

	// An editor that changes the persona: the change is saved with If-Match.
	sedEditor := writeFile(t, dir, "edit.sh", "#!/bin/sh\nsed -i 's/staging/production/' \"$1\"\n")
	chmodX(t, sedEditor)
	r := runCtl(t, []string{sock, "EDITOR=" + sedEditor}, "", "persona", "edit", "hardened")
	want(t, r, 0, "edit in an editor")
	if r.stdout != "Persona hardened updated (revision 2).\n" {
		t.Errorf("edit said %q", r.stdout)
	}
	r = d.ctl(t, "-o", "json", "persona", "get", "hardened")
	if p := decodeJSON[protocol.Persona](t, r.stdout); p.EnvironmentVariables["APP_ENV"] != "production" || len(p.RestrictedCommands) != 2 {
		t.Errorf("after edit: %+v", p)
	}

	// $VISUAL wins over $EDITOR; an editor that changes nothing saves nothing.
	r = runCtl(t, []string{sock, "VISUAL=true", "EDITOR=" + sedEditor}, "", "persona", "edit", "hardened")
	want(t, r, 0, "edit without changes")
	if !strings.Contains(r.stderr, "no changes made") {
		t.Errorf("unchanged edit: %q", r.stderr)
	}

	// An editor that leaves invalid JSON: nothing saved, the text is kept.
	breaker := writeFile(t, dir, "break.sh", "#!/bin/sh\necho '{broken' > \"$1\"\n")
	chmodX(t, breaker)
	r = runCtl(t, []string{sock, "EDITOR=" + breaker}, "", "persona", "edit", "hardened")
	want(t, r, exitGeneral, "edit leaving broken JSON")
	if !strings.Contains(r.stderr, "Your edit is saved in ") || !strings.Contains(r.stderr, "persona edit hardened -f ") {
		t.Errorf("broken edit: %q", r.stderr)
	}

	// An edit the daemon refuses: its reason, and the text is kept.
	invalid := writeFile(t, dir, "invalid.sh", "#!/bin/sh\nsed -i 's/\"APP_ENV\"/\"1BAD\"/' \"$1\"\n")
	chmodX(t, invalid)
	r = runCtl(t, []string{sock, "EDITOR=" + invalid}, "", "persona", "edit", "hardened")
	want(t, r, exitGeneral, "edit the daemon refuses")
	if !strings.Contains(r.stderr, "Invalid field") || !strings.Contains(r.stderr, "1BAD") || !strings.Contains(r.stderr, "Your edit is saved in ") {
		t.Errorf("refused edit: %q", r.stderr)
	}

	// A concurrent change between reading and saving is refused (412):
	// this editor changes the persona through the API while "open".
	racer := writeFile(t, dir, "race.sh", "#!/bin/sh\n"+bins.ctl+" persona edit hardened -f "+
		writeFile(t, dir, "other.json", `{"name":"hardened","restricted_commands":["rm"]}`)+" >/dev/null\n"+
		"sed -i 's/production/racing/' \"$1\"\n")
	chmodX(t, racer)
	r = runCtl(t, []string{sock, "EDITOR=" + racer}, "", "persona", "edit", "hardened")
	want(t, r, exitConflict, "edit racing another change")
	if !strings.Contains(r.stderr, "Revision mismatch") {
		t.Errorf("racing edit: %q", r.stderr)
	}

	// An editor that fails: nothing is changed.
	r = runCtl(t, []string{sock, "EDITOR=false"}, "", "persona", "edit", "hardened")
	want(t, r, exitGeneral, "failing editor")
	if !strings.Contains(r.stderr, `editor "false" failed`) {
		t.Errorf("failing editor: %q", r.stderr)
	}
}

func chmodX(t *testing.T, path string) {
	t.Helper()
	if err := os.Chmod(path, 0o755); err != nil {
		t.Fatal(err)
	}
}
