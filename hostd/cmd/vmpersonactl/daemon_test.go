package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/internal/testproc"
)

func TestAuthOverTCP(t *testing.T) {
	d := startDaemons(t, false)
	dir := t.TempDir()
	file := writeFile(t, dir, "p.json", hardenedJSON)

	tests := []struct {
		name  string
		token string
		args  []string
		code  int
		msg   string
	}{
		{"no token", "", []string{"persona", "list"}, exitAuth, "Unauthorized: send a bearer token"},
		{"unknown token", "nope", []string{"persona", "list"}, exitAuth, "Unauthorized: unknown token"},
		{"viewer reads", tokViewer, []string{"persona", "list"}, 0, ""},
		{"viewer may not create", tokViewer, []string{"persona", "create", "-f", file}, exitAuth, "Forbidden: user victor has role viewer"},
		{"operator may not create", tokOperator, []string{"persona", "create", "-f", file}, exitAuth, "creating a persona needs the admin role"},
		{"admin creates", tokAdmin, []string{"persona", "create", "-f", file}, 0, ""},
		{"viewer may not exec", tokViewer, []string{"exec", "vm1", "--", "true"}, exitAuth, "running a command in an instance needs the operator role"},
		{"viewer may not read the audit log", tokViewer, []string{"audit"}, exitAuth, "reading the audit log needs the admin role"},
		{"operator reaches a missing agent", tokOperator, []string{"exec", "vm1", "--", "true"}, exitUnavailable, "Agent not connected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := d.ctlTCP(t, tt.token, tt.args...)
			want(t, r, tt.code, tt.name)
			if !strings.Contains(r.stderr, tt.msg) {
				t.Errorf("stderr %q lacks %q", r.stderr, tt.msg)
			}
		})
	}

	// The token from a file, and from the flag (which wins over the
	// environment).
	tf := writeFile(t, dir, "token", tokViewer+"\n")
	r := runCtl(t, nil, "", "--url", d.url, "--token-file", tf, "persona", "get", "hardened")
	want(t, r, 0, "token file")
	r = runCtl(t, []string{"VMPERSONA_TOKEN=nope"}, "", "--url", d.url, "--token", tokViewer, "persona", "get", "hardened")
	want(t, r, 0, "--token over VMPERSONA_TOKEN")
	// Flags may stand after the command's arguments.
	r = runCtl(t, nil, "", "persona", "get", "hardened", "--url", d.url, "--token", tokViewer, "-o", "json")
	want(t, r, 0, "global flags after the arguments")
	if !strings.HasPrefix(r.stdout, "{") {
		t.Errorf("json output: %q", r.stdout)
	}
}

func TestInstancesWithoutAgent(t *testing.T) {
	d := startDaemons(t, false)

	r := d.ctl(t, "instances")
	want(t, r, 0, "instances")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID ") || !strings.HasPrefix(lines[1], "vm1 ") ||
		!strings.Contains(lines[1], " static ") || !strings.Contains(lines[1], "disconnected") {
		t.Errorf("instances table:\n%s", r.stdout)
	}
	r = d.ctl(t, "-o", "json", "instances")
	want(t, r, 0, "instances -o json")
	list := decodeJSON[struct{ Instances []apitypes.Instance }](t, r.stdout)
	if len(list.Instances) != 1 || list.Instances[0].ID != "vm1" || list.Instances[0].Agent.State == "connected" {
		t.Errorf("instances json = %+v", list)
	}

	r = d.ctl(t, "instance", "get", "vm1")
	want(t, r, 0, "instance get")
	if !strings.Contains(r.stdout, "Source:        static") || !strings.Contains(r.stdout, "Reason:") {
		t.Errorf("instance get:\n%s", r.stdout)
	}
	r = d.ctl(t, "instance", "get", "vm9")
	want(t, r, exitNotFound, "instance get of an unknown instance")
	if !strings.Contains(r.stderr, `Unknown instance: no instance "vm9"`) {
		t.Errorf("unknown instance: %q", r.stderr)
	}
	want(t, d.ctl(t, "active", "vm9"), exitNotFound, "active of an unknown instance")
	want(t, d.ctl(t, "exec", "vm9", "--", "true"), exitNotFound, "exec on an unknown instance")

	r = d.ctl(t, "active", "vm1")
	want(t, r, 0, "active")
	if !strings.Contains(r.stdout, "Persona:  (none)") {
		t.Errorf("active:\n%s", r.stdout)
	}

	want(t, d.ctl(t, "persona", "create", "-f", writeFile(t, t.TempDir(), "p.json", hardenedJSON)), 0, "create")
	r = d.ctl(t, "activate", "vm1", "hardened")
	want(t, r, exitUnavailable, "activate without an agent")
	if !strings.Contains(r.stderr, "Agent not connected") {
		t.Errorf("activate: %q", r.stderr)
	}
	want(t, d.ctl(t, "activate", "vm1", "nope"), exitNotFound, "activate a missing persona")
	want(t, d.ctl(t, "deactivate", "vm1"), exitUnavailable, "deactivate without an agent")
	want(t, d.ctl(t, "exec", "vm1", "--", "true"), exitUnavailable, "exec without an agent")
}

func TestAudit(t *testing.T) {
	d := startDaemons(t, false)
	for _, name := range []string{"one", "two", "three"} {
		d.createNamed(t, name)
	}
	want(t, d.ctlTCP(t, "bad-token", "persona", "list"), exitAuth, "a refused request")

	type page struct {
		Events []apitypes.AuditEvent
		Next   string
	}
	audit := func(args ...string) page {
		t.Helper()
		r := d.ctl(t, append([]string{"-o", "json", "audit"}, args...)...)
		want(t, r, 0, "audit "+strings.Join(args, " "))
		return decodeJSON[page](t, r.stdout)
	}
	all := audit()
	if len(all.Events) != 4 || all.Next != all.Events[3].ID {
		t.Fatalf("audit = %+v", all)
	}
	if p := audit("--type", "persona_created"); len(p.Events) != 3 || p.Events[0].Persona != "one" || p.Events[2].Persona != "three" {
		t.Errorf("--type persona_created = %+v", p.Events)
	}
	if p := audit("--persona", "two"); len(p.Events) != 1 || p.Events[0].Persona != "two" {
		t.Errorf("--persona two = %+v", p.Events)
	}
	if p := audit("--type", "auth_failure"); len(p.Events) != 1 || p.Events[0].Result != "401" {
		t.Errorf("--type auth_failure = %+v", p.Events)
	}
	if p := audit("--limit", "2"); len(p.Events) != 2 || p.Events[1].ID != all.Events[1].ID || p.Next != all.Events[1].ID {
		t.Errorf("--limit 2 = %+v", p)
	}
	if p := audit("--since", "1h"); len(p.Events) != 4 {
		t.Errorf("--since 1h: %d events", len(p.Events))
	}
	if p := audit("--until", "1h"); len(p.Events) != 0 {
		t.Errorf("--until 1h ago: %+v", p.Events)
	}
	if p := audit("--since", all.Events[2].Time.Format(time.RFC3339Nano)); len(p.Events) != 2 {
		t.Errorf("--since the third event: %+v", p.Events)
	}
	if p := audit("--instance", "vm1"); len(p.Events) != 0 {
		t.Errorf("--instance vm1: %+v", p.Events)
	}

	r := d.ctl(t, "audit", "--type", "persona_created")
	want(t, r, 0, "audit table")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "TIME ") || !strings.Contains(lines[1], "persona_created") || !strings.Contains(lines[1], " one ") {
		t.Errorf("audit table:\n%s", r.stdout)
	}
}

// audit --follow prints the backlog, then each new event, until
// interrupted; it then exits 0.
func TestAuditFollow(t *testing.T) {
	d := startDaemons(t, false)
	d.createNamed(t, "before")

	f := d.start(t, "audit", "--follow", "--interval", "50ms", "-o", "json", "--type", "persona_created")
	out := f.stdout
	testproc.WaitFor(t, "the backlog", func() bool { return strings.Contains(out.String(), `"before"`) })
	for _, name := range []string{"after1", "after2"} {
		d.createNamed(t, name)
	}
	// A persona update is another type: it must not show.
	want(t, runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, `{"name":"before","restricted_commands":["rm"]}`, "persona", "edit", "before", "-f", "-"), 0, "edit")
	want(t, runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, `{"name":"last"}`, "persona", "create", "-f", "-"), 0, "create")
	testproc.WaitFor(t, "the new events", func() bool { return strings.Contains(out.String(), `"last"`) })
	if code := f.interrupt(); code != 0 {
		t.Fatalf("audit --follow after SIGINT: exit %d\n%s", code, f.stderr)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var ev apitypes.AuditEvent
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("not NDJSON: %q: %v", line, err)
		}
		if ev.Type != "persona_created" {
			t.Errorf("event of type %q despite --type", ev.Type)
		}
		names = append(names, ev.Persona)
	}
	if strings.Join(names, ",") != "before,after1,after2,last" {
		t.Errorf("followed events: %v (each once, in order)", names)
	}
}

func TestCompletionAgainstDaemon(t *testing.T) {
	d := startDaemons(t, false)
	for _, name := range []string{"alpha", "beta"} {
		d.createNamed(t, name)
	}
	tests := []struct {
		words []string
		want  string
	}{
		{[]string{"persona", "get", ""}, "alpha\nbeta\n"},
		{[]string{"activate", "v"}, "vm1\n"},
		{[]string{"activate", "vm1", "b"}, "beta\n"},
		{[]string{"audit", "--persona", "a"}, "alpha\n"},
		{[]string{"--socket", d.sock, "persona", "delete", ""}, "alpha\nbeta\n"},
	}
	for _, tt := range tests {
		r := d.ctl(t, append([]string{"__complete"}, tt.words...)...)
		if r.code != 0 || r.stdout != tt.want {
			t.Errorf("__complete %q = %q, want %q", tt.words, r.stdout, tt.want)
		}
	}
	// Each shell's script, run by that shell, asks the binary. The shells
	// find vmpersonactl on PATH, as users do.
	path := filepath.Dir(bins.ctl) + ":" + os.Getenv("PATH")
	scripts := map[string]string{}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		r := d.ctl(t, "completion", sh)
		want(t, r, 0, "completion "+sh)
		scripts[sh] = filepath.Join(t.TempDir(), "completion."+sh)
		if err := os.WriteFile(scripts[sh], []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	shells := []struct {
		shell, script string
	}{
		{"bash", `source "$1"; COMP_WORDS=(vmpersonactl persona get ""); COMP_CWORD=3; _vmpersonactl; printf '%s\n' "${COMPREPLY[@]}"`},
		// Outside an interactive completion, compadd and compdef are
		// stand-ins that print what the script offers.
		{"zsh", `compdef() { :; }; compadd() { [[ $1 == -a ]] && print -l -- "${(@P)2}"; }; source "$1"; words=(vmpersonactl persona get ""); CURRENT=4; _vmpersonactl`},
		{"fish", `source $argv[1]; complete -C "vmpersonactl persona get "`},
	}
	for _, sh := range shells {
		t.Run(sh.shell, func(t *testing.T) {
			bin, err := exec.LookPath(sh.shell)
			if err != nil {
				t.Skipf("%s is not installed: its completion script cannot be run here", sh.shell)
			}
			args := []string{"-c", sh.script, sh.shell, scripts[sh.shell]}
			if sh.shell == "fish" {
				args = []string{"-c", sh.script, scripts[sh.shell]}
			}
			cmd := exec.Command(bin, args...)
			cmd.Env = []string{"VMPERSONA_SOCKET=" + d.sock, "PATH=" + path, "HOME=" + t.TempDir()}
			out, err := cmd.CombinedOutput()
			if err != nil || string(out) != "alpha\nbeta\n" {
				t.Errorf("%s completion of \"persona get \": %v %q", sh.shell, err, out)
			}
		})
	}
}

// audit --follow rides out a restart of the daemon.
func TestAuditFollowAcrossRestart(t *testing.T) {
	d := startDaemons(t, false)
	create := func(name string) {
		t.Helper()
		d.createNamed(t, name)
	}
	create("first")
	f := d.start(t, "audit", "--follow", "--interval", "50ms", "--type", "persona_created")
	out, errb := f.stdout, f.stderr
	testproc.WaitFor(t, "the backlog", func() bool { return strings.Contains(out.String(), " first ") })
	d.hostd.stop()
	testproc.WaitFor(t, "the follower to notice", func() bool { return strings.Contains(errb.String(), "still following") })
	d.startHostd(t)
	create("second")
	testproc.WaitFor(t, "the event after the restart", func() bool { return strings.Contains(out.String(), " second ") })
	if code := f.interrupt(); code != 0 {
		t.Fatalf("audit --follow: exit %d\n%s", code, errb)
	}
	if n := strings.Count(out.String(), " first "); n != 1 {
		t.Errorf("the backlog printed %d times:\n%s", n, out.String())
	}
	if !strings.Contains(errb.String(), "the daemon answers again") {
		t.Errorf("stderr: %q", errb.String())
	}
}
