package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
)

// Exec requests run as the user and group they name (names or ids), or
// the persona's exec_user; activation scripts stay root.
func TestExecAsUser(t *testing.T) {
	e, c := startConnected(t)
	ids := func(req protocol.Exec) string {
		t.Helper()
		req.Command, req.Args = "sh", []string{"-c", "echo $(id -u) $(id -g) $HOME"}
		return strings.TrimSpace(mustRun(t, c, req).Stdout)
	}
	if got := ids(protocol.Exec{}); got != "0 0 /root" {
		t.Fatalf("no user: %q", got)
	}
	if got := ids(protocol.Exec{User: "nobody"}); !strings.HasPrefix(got, "65534 ") {
		t.Fatalf("user nobody: %q", got)
	}
	if got := ids(protocol.Exec{User: "4321", Group: "4322"}); got != "4321 4322 /" {
		t.Fatalf("numeric ids: %q", got)
	}
	if got := ids(protocol.Exec{Group: "4322"}); got != "0 4322 /root" {
		t.Fatalf("group only: %q", got)
	}
	for _, req := range []protocol.Exec{{Command: "true", User: "no-such-user-x"}, {Command: "true", Group: "no-such-group-x"}} {
		if _, err := run(t, c, req); errCode(err) != protocol.CodeBadRequest || !strings.Contains(err.Error(), "no-such") {
			t.Errorf("%+v: want bad_request naming it, got %v", req, err)
		}
	}
	// The persona's default user; its scripts still run as root.
	marker := filepath.Join(e.root, "script-uid")
	mustActivate(t, c, protocol.Persona{Name: "unpriv", ExecUser: "nobody",
		PostActivationScript: "#!/bin/sh\nid -u > " + marker + "\n"})
	if got := ids(protocol.Exec{}); !strings.HasPrefix(got, "65534 ") {
		t.Fatalf("persona exec_user: %q", got)
	}
	if got := ids(protocol.Exec{User: "root"}); !strings.HasPrefix(got, "0 ") {
		t.Fatalf("a request naming root under exec_user: %q", got)
	}
	if data, err := os.ReadFile(marker); err != nil || strings.TrimSpace(string(data)) != "0" {
		t.Fatalf("activation script ran as %q %v, want root", data, err)
	}
	// What the user may not do fails as it would in a shell.
	victim := filepath.Join(e.root, "rootfile")
	if err := os.WriteFile(victim, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := mustRun(t, c, protocol.Exec{Command: "cat", Args: []string{victim}}); res.ExitCode == 0 {
		t.Fatalf("nobody read a root-only file: %+v", res)
	}
}
