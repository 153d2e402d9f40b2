package main

import (
	"strings"
	"testing"
)

const hardenedYAML = `# the hardened persona, as YAML
name: hardened
environment_variables:
  APP_ENV: staging
pre_activation_script: |
  #!/bin/sh
  echo preparing
restricted_commands: [rm, shutdown]
`

// TestApplyIsIdempotent: apply -f DIR creates, then leaves alone, then
// updates only what changed; YAML and JSON files both count.
func TestApplyIsIdempotent(t *testing.T) {
	d := startDaemons(t, false)
	dir := t.TempDir()
	writeFile(t, dir, "hardened.yaml", hardenedYAML)
	writeFile(t, dir, "minimal.json", `{"name":"minimal","restricted_commands":["rm"]}`)
	writeFile(t, dir, "README.txt", "not a persona")

	r := d.ctl(t, "apply", "-f", dir)
	want(t, r, 0, "first apply")
	if r.stdout != "persona/hardened created (revision 1)\npersona/minimal created (revision 1)\n" {
		t.Errorf("first apply said %q", r.stdout)
	}
	r = d.ctl(t, "apply", "-f", dir)
	want(t, r, 0, "second apply")
	if r.stdout != "persona/hardened unchanged (revision 1)\npersona/minimal unchanged (revision 1)\n" {
		t.Errorf("second apply said %q", r.stdout)
	}
	writeFile(t, dir, "minimal.json", `{"name":"minimal","restricted_commands":["rm","dd"]}`)
	r = d.ctl(t, "-o", "json", "apply", "-f", dir)
	want(t, r, 0, "third apply")
	res := decodeJSON[struct{ Results []applyResult }](t, r.stdout)
	if len(res.Results) != 2 || res.Results[0].Result != "unchanged" || res.Results[1] != (applyResult{"minimal", "updated", 2}) {
		t.Errorf("third apply: %+v", res.Results)
	}
	r = d.ctl(t, "persona", "list", "--no-headers")
	want(t, r, 0, "list --no-headers")
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "hardened ") {
		t.Errorf("persona list --no-headers:\n%s", r.stdout)
	}
	if r = d.ctl(t, "persona", "list"); !strings.HasPrefix(r.stdout, "NAME ") {
		t.Errorf("persona list has no header:\n%s", r.stdout)
	}
	r = d.ctl(t, "persona", "get", "hardened", "-o", "json")
	if !strings.Contains(r.stdout, `"APP_ENV": "staging"`) || !strings.Contains(r.stdout, `echo preparing\n`) {
		t.Errorf("the YAML persona did not arrive whole:\n%s", r.stdout)
	}
}

// TestPersonaValidateOffline: validate needs no daemon and names the file
// and field at fault; a YAML file is read as such.
func TestPersonaValidateOffline(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "hardened.yaml", hardenedYAML)
	env := map[string]string{"VMPERSONA_SOCKET": dir + "/no-daemon.sock"}
	out, errOut, code := runInProcess(t, env, "persona", "validate", "-f", good)
	if code != 0 || out != good+": persona hardened is valid\n" {
		t.Errorf("valid file: %d %q %q", code, out, errOut)
	}
	bad := writeFile(t, dir, "bad.yaml", "name: Bad Name\n")
	_, errOut, code = runInProcess(t, env, "persona", "validate", "-f", bad)
	if code != exitGeneral || !strings.Contains(errOut, bad) || !strings.Contains(errOut, "name") {
		t.Errorf("invalid name: %d %q", code, errOut)
	}
	typo := writeFile(t, dir, "typo.yaml", "name: x\nrestricted_comands: [rm]\n")
	_, errOut, code = runInProcess(t, env, "persona", "validate", "-f", typo)
	if code != exitGeneral || !strings.Contains(errOut, "restricted_comands") {
		t.Errorf("misspelt field: %d %q", code, errOut)
	}
	_, errOut, code = runInProcess(t, env, "persona", "validate", "-f", dir)
	if code != exitGeneral {
		t.Errorf("a directory with bad files: %d %q", code, errOut)
	}
}
