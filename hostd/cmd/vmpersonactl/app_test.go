package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"

	"github.com/vmpersona/vmpersona/protocol"
)

// runInProcess runs one command line in this process, with no daemon
// unless the environment names one.
func runInProcess(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	sio := &stdio{in: strings.NewReader(""), out: &out, err: &errb, getenv: func(k string) string { return env[k] }}
	code = run(context.Background(), args, sio)
	return out.String(), errb.String(), code
}

func allCommands(c *command) []*command {
	out := []*command{c}
	for _, s := range c.subs {
		out = append(out, allCommands(s)...)
	}
	return out
}

// Every command, group or leaf, answers --help with what it does and an
// example, on standard output, with exit 0.
func TestHelpAtEveryLevel(t *testing.T) {
	for _, c := range allCommands(rootCommand()) {
		if c.hidden {
			continue
		}
		words := strings.Fields(c.path())[1:]
		for _, h := range []string{"--help", "-h"} {
			out, errOut, code := runInProcess(t, nil, append(slices.Clone(words), h)...)
			if code != 0 || errOut != "" {
				t.Errorf("%s %s: code %d stderr %q", c.path(), h, code, errOut)
			}
			if !strings.HasPrefix(out, c.path()+" — "+c.summary) {
				t.Errorf("%s %s: help does not start with what it does:\n%s", c.path(), h, out)
			}
			if !strings.Contains(out, "\nExample:\n  vmpersonactl ") && !strings.Contains(out, "\nExample:\n  source ") && !strings.Contains(out, "\nExample:\n  echo ") {
				t.Errorf("%s %s: help has no example:\n%s", c.path(), h, out)
			}
			if !strings.Contains(out, "Global flags:") {
				t.Errorf("%s: help lists no global flags", c.path())
			}
		}
		// "help WORDS" says the same.
		if len(words) > 0 {
			out, _, code := runInProcess(t, nil, append([]string{"help"}, words...)...)
			if code != 0 || !strings.HasPrefix(out, c.path()+" — ") {
				t.Errorf("help %v: code %d, %q", words, code, firstLine(out))
			}
		}
	}
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "Commands:"},
		{[]string{"persona"}, "Commands:"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"persona", "gte", "x"}, `unknown command "gte"`},
		{[]string{"persona", "get"}, "missing argument: want NAME"},
		{[]string{"persona", "get", "a", "b"}, `unexpected argument "b"`},
		{[]string{"persona", "create"}, "-f FILE is required"},
		{[]string{"persona", "list", "--bogus"}, "flag provided but not defined: --bogus\n"},
		{[]string{"--bogus", "persona", "list"}, "flag provided but not defined: --bogus\n"},
		{[]string{"persona", "list", "-bogus"}, "flag provided but not defined: -bogus\n"},
		{[]string{"persnoa", "list"}, `unknown command "persnoa"; did you mean "persona"?`},
		{[]string{"instanse"}, `did you mean "instance"?`},
		{[]string{"activate", "vm1"}, "missing argument: want INSTANCE PERSONA"},
		{[]string{"exec", "vm1"}, "missing argument"},
		{[]string{"exec", "vm1", "--env", "NOEQUALS", "--", "ls"}, "want KEY=VALUE"},
		{[]string{"audit", "--since", "yesterday-ish"}, "--since"},
		{[]string{"-o", "xml", "persona", "list"}, `--output "xml": want table, json or yaml`},
		{[]string{"completion", "tcsh"}, `no completion for shell "tcsh"`},
		{[]string{"--url", "ftp://x", "persona", "list"}, "scheme must be http, https or unix"},
		{[]string{"--url", "http://127.0.0.1:1", "--socket", "/x", "persona", "list"}, "not both"},
	}
	for _, tt := range tests {
		_, errOut, code := runInProcess(t, nil, tt.args...)
		if code != exitUsage {
			t.Errorf("%v: exit %d, want %d (stderr %q)", tt.args, code, exitUsage, errOut)
		}
		if !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: stderr %q lacks %q", tt.args, errOut, tt.want)
		}
	}
}

func TestParseInterspersed(t *testing.T) {
	tests := []struct {
		args      []string
		stopAfter int
		pos       []string
		env       string
		timeout   time.Duration
	}{
		{[]string{"a", "--env", "K=V", "b"}, 0, []string{"a", "b"}, "K=V", 0},
		{[]string{"--timeout", "5s", "a", "--", "-x", "--env", "Z=1"}, 0, []string{"a", "-x", "--env", "Z=1"}, "", 5 * time.Second},
		// exec: INSTANCE then CMD; everything after CMD is CMD's.
		{[]string{"vm1", "--timeout", "2s", "ls", "-l", "--env", "A=1"}, 2, []string{"vm1", "ls", "-l", "--env", "A=1"}, "", 2 * time.Second},
		{[]string{"vm1", "--", "ls", "--", "-l"}, 2, []string{"vm1", "ls", "--", "-l"}, "", 0},
		{[]string{"vm1", "ls", "--", "-l"}, 2, []string{"vm1", "ls", "--", "-l"}, "", 0},
		{[]string{"vm1", "-e", "A=1", "--", "--weird"}, 2, []string{"vm1", "--weird"}, "A=1", 0},
	}
	for _, tt := range tests {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		env := envFlag{}
		fs.Var(env, "env", "")
		fs.Var(env, "e", "")
		timeout := fs.Duration("timeout", 0, "")
		pos, err := parseInterspersed(fs, tt.args, tt.stopAfter)
		if err != nil {
			t.Errorf("%v: %v", tt.args, err)
			continue
		}
		if !slices.Equal(pos, tt.pos) || env.String() != tt.env || *timeout != tt.timeout {
			t.Errorf("%v: pos %q env %q timeout %v; want %q %q %v", tt.args, pos, env.String(), *timeout, tt.pos, tt.env, tt.timeout)
		}
	}
}

func TestExitCodes(t *testing.T) {
	p := func(status int, extra string) error {
		return fmt.Errorf("wrapped: %w", &apitypes.Problem{Status: status, Detail: extra})
	}
	tests := []struct {
		err  error
		want int
	}{
		{p(404, ""), exitNotFound},
		{p(409, ""), exitConflict},
		{p(412, ""), exitConflict},
		{p(401, ""), exitAuth},
		{p(403, ""), exitAuth},
		{p(503, ""), exitUnavailable},
		{p(504, ""), exitUnavailable},
		{p(500, ""), exitGeneral},
		{p(422, ""), exitGeneral},
		{&apiclient.TransportError{Target: "x", Err: context.DeadlineExceeded}, exitUnavailable},
		{&apiclient.TransportError{Target: "x", Err: errors.New("connection refused")}, exitGeneral},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

func TestExecExit(t *testing.T) {
	tests := []struct {
		res  apitypes.ExecResult
		want int
	}{
		{apitypes.ExecResult{ExitCode: 0}, 0},
		{apitypes.ExecResult{ExitCode: 3}, 3},
		{apitypes.ExecResult{ExitCode: 255}, 255},
		{apitypes.ExecResult{ExitCode: -1, Signal: "SIGKILL"}, 137},
		{apitypes.ExecResult{ExitCode: -1, Signal: "TERM"}, 143},
		{apitypes.ExecResult{ExitCode: -1, Signal: "killed"}, 137},
		{apitypes.ExecResult{ExitCode: -1, Signal: "2"}, 130},
		{apitypes.ExecResult{ExitCode: -1, Signal: "SIGKILL", TimedOut: true}, 124},
		{apitypes.ExecResult{ExitCode: -1, Signal: "SIGNOPE"}, exitGeneral},
		{apitypes.ExecResult{ExitCode: 300}, exitGeneral},
	}
	for _, tt := range tests {
		if got := execExit(tt.res); got != tt.want {
			t.Errorf("execExit(%+v) = %d, want %d", tt.res, got, tt.want)
		}
	}
}

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
	}{
		{"1h", now.Add(-time.Hour)},
		{"90m", now.Add(-90 * time.Minute)},
		{"2026-11-26T08:30:00Z", time.Date(2026, 11, 26, 8, 30, 0, 0, time.UTC)},
		{"2026-11-26T09:30:00+01:00", time.Date(2026, 11, 26, 8, 30, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		got, err := parseWhen(tt.in, now)
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "-1h", "yesterday", "26/11/2026"} {
		if _, err := parseWhen(bad, now); err == nil {
			t.Errorf("parseWhen(%q) accepted", bad)
		}
	}
}

func TestCompleteWordsWithoutDaemon(t *testing.T) {
	// No daemon: names cannot be listed, but commands, flags and fixed
	// values still complete.
	env := map[string]string{"VMPERSONA_SOCKET": t.TempDir() + "/none.sock"}
	tests := []struct {
		words []string
		want  []string
	}{
		{[]string{""}, []string{"activate", "active", "apply", "assignment", "audit", "completion", "deactivate", "diff", "exec", "file", "fleet", "instance", "instances", "persona", "rollout", "version"}},
		{[]string{"per"}, []string{"persona"}},
		{[]string{"persona", ""}, []string{"create", "delete", "edit", "get", "list", "validate"}},
		{[]string{"--output", "json", "persona", "d"}, []string{"delete"}},
		{[]string{"completion", ""}, []string{"bash", "fish", "zsh"}},
		{[]string{"audit", "--type", "de"}, []string{"deactivation", "deactivation_requested", "default_activation", "denial"}},
		{[]string{"-o", ""}, []string{"json", "table", "yaml"}},
		{[]string{"persona", "delete", "--f"}, []string{"--force"}},
		{[]string{"persona", "get", ""}, nil},
	}
	for _, tt := range tests {
		out, _, code := runInProcess(t, env, append([]string{"__complete"}, tt.words...)...)
		got := strings.Fields(out)
		if code != 0 || !slices.Equal(got, tt.want) {
			t.Errorf("__complete %q = %q (exit %d), want %q", tt.words, got, code, tt.want)
		}
	}
}

// TestCompletionOffersEveryAuditType: the completion of audit --type is the
// daemons' own vocabulary, so no event type can be missing from it.
func TestCompletionOffersEveryAuditType(t *testing.T) {
	env := map[string]string{"VMPERSONA_SOCKET": t.TempDir() + "/none.sock"}
	out, _, code := runInProcess(t, env, "__complete", "audit", "--type", "")
	got := strings.Fields(out)
	want := slices.Sorted(slices.Values(protocol.AuditTypes))
	if code != 0 || !slices.Equal(got, want) {
		t.Errorf("__complete audit --type = %q (exit %d), want %q", got, code, want)
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out, _, code := runInProcess(t, nil, "completion", sh)
		if code != 0 || !strings.Contains(out, "__complete") || !strings.Contains(out, "vmpersonactl") {
			t.Errorf("completion %s: exit %d\n%s", sh, code, out)
		}
	}
}

func TestVersion(t *testing.T) {
	out, _, code := runInProcess(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "vmpersonactl ") {
		t.Errorf("version: %d %q", code, out)
	}
	out, _, code = runInProcess(t, nil, "version", "-o", "json")
	if code != 0 || !strings.Contains(out, `"client"`) {
		t.Errorf("version -o json: %d %q", code, out)
	}
}

func TestDaemonUnreachable(t *testing.T) {
	sock := t.TempDir() + "/none.sock"
	_, errOut, code := runInProcess(t, map[string]string{"VMPERSONA_SOCKET": sock}, "persona", "list")
	if code != exitGeneral || !strings.Contains(errOut, "cannot reach vmpersona-hostd at unix:"+sock) {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	if !strings.Contains(errOut, "systemctl start vmpersona-hostd.socket") {
		t.Errorf("no hint to start the socket unit: %q", errOut)
	}
}

func TestVersionFlag(t *testing.T) {
	out, errOut, code := runInProcess(t, nil, "--version")
	if code != 0 || out != "vmpersonactl "+protocol.SoftwareVersion+"\n" || errOut != "" {
		t.Errorf("--version: %d %q %q", code, out, errOut)
	}
}

func TestYAMLOutput(t *testing.T) {
	out, _, code := runInProcess(t, nil, "-o", "yaml", "version")
	if code != 0 || !strings.HasPrefix(out, "---\n") || !strings.Contains(out, "client: ") || !strings.Contains(out, "protocol: ") {
		t.Errorf("version -o yaml: %d %q", code, out)
	}
}

// TestDescribeSaysTheTitleOnce: a detail that repeats the problem's title
// is not printed after it again.
func TestDescribeSaysTheTitleOnce(t *testing.T) {
	p := &apitypes.Problem{Title: "Agent not connected", Status: 503, Detail: "agent not connected: vm1 is disconnected"}
	if got := describe(p); got != "Agent not connected: vm1 is disconnected" {
		t.Errorf("describe = %q", got)
	}
	p = &apitypes.Problem{Title: "Not found", Status: 404, Detail: `no persona named "x"`}
	if got := describe(p); got != `Not found: no persona named "x"` {
		t.Errorf("describe = %q", got)
	}
}
