package main

import (
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/internal/testproc"
)

// execEvents reads the exec audit events of vm1.
func (d *daemons) execEvents(t *testing.T) []apitypes.AuditEvent {
	t.Helper()
	r := d.ctl(t, "-o", "json", "audit", "--instance", "vm1", "--type", "exec")
	want(t, r, 0, "audit")
	return decodeJSON[struct {
		Events []apitypes.AuditEvent `json:"events"`
	}](t, r.stdout).Events
}

// Every exec is audited by default (it was only with guestd --audit-exec):
// who, what, how many arguments and a preview with secrets masked, the
// route, the exit code and the duration. A persona's audit_exec turns it
// off for execs under it; hostd --audit-exec=false turns the default off.
func TestExecAuditedByDefault(t *testing.T) {
	d := startDaemons(t, true)
	want(t, d.ctl(t, "exec", "vm1", "--", "sh", "-c", "exit 3", "--password", "hunter2", "API_TOKEN=s3cr3t", "visible"), 3, "exec")
	var ev apitypes.AuditEvent
	testproc.WaitFor(t, "the exec's audit event", func() bool {
		evs := d.execEvents(t)
		if len(evs) > 0 {
			ev = evs[0]
		}
		return len(evs) > 0
	})
	if ev.Command != "sh" || ev.Route != "default" || ev.Result != "exit 3" || ev.Actor == "" || ev.Instance != "vm1" {
		t.Errorf("exec event %+v", ev)
	}
	for _, s := range []string{"6 args:", `"--password" "***"`, `"API_TOKEN=***"`, `"visible"`, " ms"} {
		if !strings.Contains(ev.Detail, s) {
			t.Errorf("detail %q lacks %q", ev.Detail, s)
		}
	}
	for _, secret := range []string{"hunter2", "s3cr3t"} {
		if strings.Contains(ev.Detail, secret) {
			t.Errorf("detail %q shows a secret", ev.Detail)
		}
	}

	// A persona that says no: execs under it are not audited (the
	// activation and the later exec under no persona are).
	quiet := `{"name": "quiet", "audit_exec": false}`
	want(t, d.ctl(t, "persona", "create", "-f", writeFile(t, t.TempDir(), "p.json", quiet)), 0, "create")
	want(t, d.ctl(t, "activate", "vm1", "quiet"), 0, "activate")
	want(t, d.ctl(t, "exec", "vm1", "--", "true", "under-quiet"), 0, "exec under quiet")
	want(t, d.ctl(t, "deactivate", "vm1"), 0, "deactivate")
	want(t, d.ctl(t, "exec", "vm1", "--", "true", "after-quiet"), 0, "exec after quiet")
	testproc.WaitFor(t, "the second exec's audit event", func() bool { return len(d.execEvents(t)) == 2 })
	for _, e := range d.execEvents(t) {
		if strings.Contains(e.Detail, "under-quiet") {
			t.Errorf("an exec under audit_exec false was audited: %+v", e)
		}
	}
}

func TestExecAuditOffByHostFlag(t *testing.T) {
	d := startDaemons(t, true, "--audit-exec=false")
	want(t, d.ctl(t, "exec", "vm1", "--", "true"), 0, "exec")
	// An override is still audited, and the audit path is alive: once it
	// arrives, the plain exec before it would have too.
	overriding := `{"name": "o", "command_overrides": {"hello": "#!/bin/sh\necho hi"}}`
	want(t, d.ctl(t, "persona", "create", "-f", writeFile(t, t.TempDir(), "p.json", overriding)), 0, "create")
	want(t, d.ctl(t, "activate", "vm1", "o"), 0, "activate")
	want(t, d.ctl(t, "exec", "vm1", "--", "hello"), 0, "exec an override")
	testproc.WaitFor(t, "the override's audit event", func() bool {
		r := d.ctl(t, "-o", "json", "audit", "--instance", "vm1", "--type", "override")
		return strings.Contains(r.stdout, `"hello"`)
	})
	if evs := d.execEvents(t); len(evs) != 0 {
		t.Errorf("exec audited with --audit-exec=false: %+v", evs)
	}
}
