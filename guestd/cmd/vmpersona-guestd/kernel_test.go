package main_test

// Kernel enforcement (Landlock) through the real daemon on a unix socket:
// a restricted rm fails for everything an exec starts, not only for the
// command asked for.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
)

func landlockABI(t *testing.T, c *protocol.Client) int {
	t.Helper()
	return c.Hello().LandlockABI
}

func TestKernelEnforcementStopsIndirectRm(t *testing.T) {
	e := newEnv(t)
	rm, err := exec.LookPath("rm")
	if err != nil {
		t.Fatal(err)
	}
	cleaner := e.script("cleaner", "#!/bin/sh\nrm \"$1\"\n")
	e.start()
	c := e.connect(nil)
	if landlockABI(t, c) == 0 {
		t.Skip("this kernel has no Landlock: kernel enforcement cannot run here")
	}
	off := false
	mustActivate(t, c, protocol.Persona{Name: "norm", RestrictedCommands: []string{"rm"}, DenyExecWritable: &off,
		CommandOverrides: map[string]string{"cleanup": "#!/bin/sh\nrm \"$@\"\n"}})

	victim := func() string {
		t.Helper()
		f := filepath.Join(e.root, "F")
		if err := os.WriteFile(f, []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, c0 := range []struct {
		name string
		req  func(f string) protocol.Exec
	}{
		{"sh -c", func(f string) protocol.Exec { return protocol.Exec{Command: "sh", Args: []string{"-c", "rm " + f}} }},
		{"find -exec", func(f string) protocol.Exec {
			return protocol.Exec{Command: "find", Args: []string{f, "-exec", "rm", "{}", ";"}}
		}},
		{"xargs", func(f string) protocol.Exec {
			return protocol.Exec{Command: "xargs", Args: []string{"rm"}, Stdin: []byte(f + "\n")}
		}},
		{"env", func(f string) protocol.Exec { return protocol.Exec{Command: "env", Args: []string{"rm", f}} }},
		{"a script calling rm", func(f string) protocol.Exec { return protocol.Exec{Command: cleaner, Args: []string{f}} }},
		{"an override calling rm", func(f string) protocol.Exec { return protocol.Exec{Command: "cleanup", Args: []string{f}} }},
	} {
		f := victim()
		res, err := run(t, c, c0.req(f))
		if _, serr := os.Stat(f); serr != nil {
			t.Errorf("%s: F removed (%v %+v)", c0.name, err, res)
		}
	}
	// What is not restricted still runs, children included.
	if res := mustRun(t, c, protocol.Exec{Command: "sh", Args: []string{"-c", "ls / >/dev/null && cat /dev/null && echo ok"}}); strings.TrimSpace(res.Stdout) != "ok" {
		t.Fatalf("unrestricted commands under the domain: %+v", res)
	}

	// With deny_exec_writable, a copy of rm in a writable place does not
	// run either (the routing table cannot know it: another file).
	mustActivate(t, c, protocol.Persona{Name: "nowrite", RestrictedCommands: []string{"rm"}, DenyExecWritable: new(true)})
	cp := filepath.Join(e.root, "myrm")
	if out, err := exec.Command("cp", rm, cp).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	f := victim()
	if res, err := run(t, c, protocol.Exec{Command: cp, Args: []string{f}}); err == nil && res.ExitCode == 0 {
		t.Errorf("a copy of rm in %s ran: %+v", e.root, res)
	}
	run(t, c, protocol.Exec{Command: "sh", Args: []string{"-c", cp + " " + f}})
	if _, err := os.Stat(f); err != nil {
		t.Fatalf("F removed by a copy of rm in a writable place")
	}
	if res := mustRun(t, c, protocol.Exec{Command: "sh", Args: []string{"-c", "echo ok"}}); strings.TrimSpace(res.Stdout) != "ok" {
		t.Fatalf("sh under deny_exec_writable: %+v", res)
	}

	// "enforcement": "agent" is today's behaviour: the routing table only.
	mustActivate(t, c, protocol.Persona{Name: "agent", RestrictedCommands: []string{"rm"}, Enforcement: protocol.EnforcementAgent})
	f = victim()
	mustRun(t, c, protocol.Exec{Command: "sh", Args: []string{"-c", "rm " + f}})
	if _, err := os.Stat(f); err == nil {
		t.Fatal("agent enforcement: sh -c rm did not run (the kernel enforced it anyway)")
	}
}

// In allowlist mode the kernel grants execution only to the allowed files,
// the override targets and their interpreters: an allowed shell cannot
// start anything else.
func TestKernelEnforcementAllowlist(t *testing.T) {
	e, c := startConnected(t)
	if landlockABI(t, c) == 0 {
		t.Skip("this kernel has no Landlock: kernel enforcement cannot run here")
	}
	mustActivate(t, c, protocol.Persona{Name: "allow", AllowedCommands: []string{"sh", "cat"},
		CommandOverrides: map[string]string{"hello": "#!/bin/sh\necho hello\n"}})
	f := filepath.Join(e.root, "F")
	if err := os.WriteFile(f, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, c, protocol.Exec{Command: "sh", Args: []string{"-c", "rm " + f + "; ls /"}})
	if _, err := os.Stat(f); err != nil {
		t.Fatal("an allowed shell ran rm")
	}
	if res := mustRun(t, c, protocol.Exec{Command: "sh", Args: []string{"-c", "cat " + f}}); res.Stdout != "keep" {
		t.Fatalf("an allowed shell running an allowed command: %+v", res)
	}
	if res := mustRun(t, c, protocol.Exec{Command: "hello"}); strings.TrimSpace(res.Stdout) != "hello" {
		t.Fatalf("an inline override under the allowlist: %+v", res)
	}
}

// BenchmarkExecEnforcement: /bin/true through the daemon under a persona
// restricting rm, enforced by the routing table only and by the kernel.
func BenchmarkExecEnforcement(b *testing.B) {
	for _, mode := range []string{protocol.EnforcementAgent, protocol.EnforcementKernel} {
		b.Run(mode, func(b *testing.B) {
			e := newEnv(b)
			e.start()
			c := e.connect(nil)
			if mode == protocol.EnforcementKernel && c.Hello().LandlockABI == 0 {
				b.Skip("no Landlock on this kernel")
			}
			mustActivate(b, c, protocol.Persona{Name: "bench", RestrictedCommands: []string{"rm", "shutdown"}, Enforcement: mode})
			for b.Loop() {
				if _, err := run(b, c, protocol.Exec{Command: "/bin/true"}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
