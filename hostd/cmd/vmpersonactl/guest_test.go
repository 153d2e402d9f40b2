package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/protocol"
)

// These tests run vmpersonactl against the real host daemon with a real
// guest daemon behind instance vm1 (on a unix socket, on this machine).

func TestActivateExecDeactivate(t *testing.T) {
	d := startDaemons(t, true)
	dir := t.TempDir()
	d.createHardened(t)

	r := d.ctl(t, "activate", "vm1", "hardened", "--script-timeout", "20s")
	want(t, r, 0, "activate")
	if !strings.HasPrefix(r.stdout, "Persona hardened (revision 1) active on vm1, activation ") {
		t.Errorf("activate said %q", r.stdout)
	}

	r = d.ctl(t, "active", "vm1")
	want(t, r, 0, "active")
	for _, s := range []string{"Persona:    hardened", "Revision:   1", "Stale:      no"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("active lacks %q:\n%s", s, r.stdout)
		}
	}
	r = d.ctl(t, "-o", "json", "active", "vm1")
	if ap := decodeJSON[apitypes.ActivePersona](t, r.stdout); ap.Persona == nil || ap.Persona.Name != "hardened" || ap.ActivationID == "" || ap.Stale {
		t.Errorf("active json = %+v", ap)
	}
	r = d.ctl(t, "instances")
	if !strings.Contains(r.stdout, "connected") || !strings.Contains(r.stdout, "hardened") {
		t.Errorf("instances after activation:\n%s", r.stdout)
	}

	// Output streams to our stdout and stderr; the exit code is the command's.
	r = d.ctl(t, "exec", "vm1", "--", "sh", "-c", `echo "out $APP_ENV"; echo err >&2; exit 3`)
	want(t, r, 3, "exec exiting 3")
	if r.stdout != "out staging\n" || r.stderr != "err\n" {
		t.Errorf("exec output: %s", r)
	}
	want(t, d.ctl(t, "exec", "vm1", "true"), 0, "exec true, without --")

	// The override runs instead of the command, with its arguments.
	r = d.ctl(t, "exec", "vm1", "deploy", "--now", "v2")
	want(t, r, 0, "exec an override")
	if r.stdout != "dry-run: --now v2\n" {
		t.Errorf("override output %q", r.stdout)
	}

	// A restricted command: the seed's message, exit 126, whatever its name.
	for _, name := range []string{"rm", "/bin/rm", "/usr/bin/rm"} {
		r = d.ctl(t, "exec", "vm1", "--", name, "-rf", "/tmp/nothing-here")
		want(t, r, exitCannotExecute, "exec "+name)
		if r.stderr != protocol.DeniedMessage+"\n" || r.stdout != "" {
			t.Errorf("denied %s: %s", name, r)
		}
	}

	// A command that does not exist: 127, naming it.
	r = d.ctl(t, "exec", "vm1", "--", "no-such-command-here")
	want(t, r, exitCommandNotFound, "exec a missing command")
	if !strings.Contains(r.stderr, "no-such-command-here") {
		t.Errorf("missing command: %q", r.stderr)
	}

	// Environment, working directory and standard input.
	r = runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, "from stdin\n", "exec", "vm1", "--env", "EXTRA=x1", "-e", "MORE=y2",
		"--cwd", "/tmp", "--stdin", "--", "sh", "-c", `echo "$EXTRA $MORE $(pwd)"; cat`)
	want(t, r, 0, "exec with env, cwd, stdin")
	if r.stdout != "x1 y2 /tmp\nfrom stdin\n" {
		t.Errorf("env/cwd/stdin output %q", r.stdout)
	}

	// Killed by a signal: 128+N; killed at the timeout: 124.
	r = d.ctl(t, "exec", "vm1", "--", "sh", "-c", "kill -TERM $$")
	want(t, r, 128+15, "exec killed by SIGTERM")
	r = d.ctl(t, "exec", "vm1", "--timeout", "1s", "--", "sleep", "30")
	want(t, r, exitTimedOut, "exec past its timeout")

	// JSON for scripts: the whole outcome, and still the command's exit code.
	r = d.ctl(t, "-o", "json", "exec", "vm1", "--", "sh", "-c", "echo hi; exit 2")
	want(t, r, 2, "exec -o json")
	res := decodeJSON[apitypes.ExecResult](t, r.stdout)
	if res.ExitCode != 2 || res.Stdout != "hi\n" || res.Route != "default" || res.Persona == nil || *res.Persona != "hardened" {
		t.Errorf("exec json = %+v", res)
	}

	// The audit log saw the override and the denials, on this instance.
	r = d.ctl(t, "-o", "json", "audit", "--instance", "vm1", "--type", "denial")
	want(t, r, 0, "audit denials")
	denials := decodeJSON[apitypes.AuditPage](t, r.stdout)
	if len(denials.Events) != 3 || denials.Events[0].Persona != "hardened" || !strings.Contains(denials.Events[0].Command, "rm") {
		t.Errorf("denials = %+v", denials.Events)
	}

	// Deleting an active persona needs --force.
	r = d.ctl(t, "persona", "delete", "hardened")
	want(t, r, exitConflict, "delete an active persona")
	if !strings.Contains(r.stderr, "active on vm1") {
		t.Errorf("delete active: %q", r.stderr)
	}

	r = d.ctl(t, "deactivate", "vm1")
	want(t, r, 0, "deactivate")
	if !strings.HasPrefix(r.stdout, "No persona active on vm1") {
		t.Errorf("deactivate said %q", r.stdout)
	}
	r = d.ctl(t, "active", "vm1")
	if !strings.Contains(r.stdout, "Persona:  (none)") {
		t.Errorf("active after deactivation:\n%s", r.stdout)
	}
	// Without a persona nothing is restricted.
	want(t, d.ctl(t, "exec", "vm1", "--", "rm", "-f", dir+"/nothing"), 0, "rm without a persona")
	want(t, d.ctl(t, "persona", "delete", "hardened"), 0, "delete after deactivation")
}

func TestActivationRefused(t *testing.T) {
	d := startDaemons(t, true)
	dir := t.TempDir()
	want(t, d.ctl(t, "persona", "create", "-f", writeFile(t, dir, "good.json", `{"name":"good","environment_variables":{"WHO":"good"}}`)), 0, "create good")
	want(t, d.ctl(t, "persona", "create", "-f", writeFile(t, dir, "pre.json",
		`{"name":"badpre","pre_activation_script":"#!/bin/sh\necho checking\necho no disk >&2\nexit 7"}`)), 0, "create badpre")
	want(t, d.ctl(t, "persona", "create", "-f", writeFile(t, dir, "post.json",
		`{"name":"badpost","environment_variables":{"WHO":"badpost"},"post_activation_script":"#!/bin/sh\necho post failed >&2\nexit 9"}`)), 0, "create badpost")
	want(t, d.ctl(t, "activate", "vm1", "good"), 0, "activate good")

	r := d.ctl(t, "activate", "vm1", "badpre")
	want(t, r, exitConflict, "activate with a failing pre-activation script")
	for _, s := range []string{"Activation aborted", "result:    aborted", "script:    pre-activation", "exit code: 7", "stdout:\n    checking", "stderr:\n    no disk"} {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("aborted activation lacks %q:\n%s", s, r.stderr)
		}
	}
	r = d.ctl(t, "activate", "vm1", "badpost")
	want(t, r, exitConflict, "activate with a failing post-activation script")
	for _, s := range []string{"Activation rolled_back", "result:    rolled_back", "script:    post-activation", "exit code: 9", "post failed"} {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("rolled back activation lacks %q:\n%s", s, r.stderr)
		}
	}
	// Still the persona from before.
	r = d.ctl(t, "exec", "vm1", "--", "sh", "-c", "echo $WHO")
	want(t, r, 0, "exec after refused activations")
	if r.stdout != "good\n" {
		t.Errorf("WHO = %q, want the previous persona's", r.stdout)
	}

	// --force deletes an active persona; the guest keeps it until deactivated.
	want(t, d.ctl(t, "persona", "delete", "good"), exitConflict, "delete an active persona")
	want(t, d.ctl(t, "persona", "delete", "good", "--force"), 0, "delete --force")
	want(t, d.ctl(t, "persona", "get", "good"), exitNotFound, "get a deleted persona")
	r = d.ctl(t, "active", "vm1")
	want(t, r, 0, "active after delete --force")
	if !strings.Contains(r.stdout, "Persona:    good") {
		t.Errorf("active after delete --force:\n%s", r.stdout)
	}
	want(t, d.ctl(t, "deactivate", "vm1"), 0, "deactivate a deleted persona")
}

// exec streams: output reaches our stdout while the command still runs,
// and Ctrl-C ends the wait with 130.
func TestExecStreamsAndInterrupt(t *testing.T) {
	d := startDaemons(t, true)
	run := d.start(t, "exec", "vm1", "--timeout", "60s", "--", "sh", "-c", "echo started; exec sleep 60")
	testproc.WaitFor(t, "the first line of output", func() bool { return run.stdout.String() == "started\n" })
	if code := run.interrupt(); code != exitInterrupted {
		t.Fatalf("after SIGINT: exit %d, want %d; stderr %q", code, exitInterrupted, run.stderr)
	}
	if !strings.Contains(run.stderr.String(), "interrupted") {
		t.Errorf("stderr %q", run.stderr)
	}
}

// Ctrl-C while an activation waits on the guest: exit 130, "interrupted".
func TestActivateInterrupted(t *testing.T) {
	d := startDaemons(t, true)
	// The pre-activation script marks that the activation reached the
	// guest (host-side audit of the request is written when it ends).
	marker := filepath.Join(t.TempDir(), "reached")
	want(t, runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, `{"name":"slow","pre_activation_script":"#!/bin/sh\ntouch `+marker+`\nexec sleep 60"}`,
		"persona", "create", "-f", "-"), 0, "create")
	run := d.start(t, "activate", "vm1", "slow")
	testproc.WaitFor(t, "the activation to reach the guest", func() bool {
		_, err := os.Stat(marker)
		return err == nil
	})
	if code := run.interrupt(); code != exitInterrupted || !strings.Contains(run.stderr.String(), "interrupted") {
		t.Fatalf("after SIGINT: exit %d, stderr %q", code, run.stderr)
	}
}
