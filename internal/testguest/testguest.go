// Package testguest runs the real guest daemon, vmpersona-guestd, on a unix
// socket for the tests of the host side (the agent manager, the
// reconciler): the same binary a VM runs, built once per test run by
// internal/testbin.
package testguest

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/vmpersona/vmpersona/internal/testbin"
	"github.com/vmpersona/vmpersona/internal/testproc"
)

// Guest is a guest daemon with its own directory: its socket, state
// directory and profile file. It is killed when the test ends.
type Guest struct {
	Dir      string // a short directory (unix socket paths are limited)
	Sock     string // the socket it listens on
	StateDir string
	Profile  string

	t    testing.TB
	args []string
	env  []string
	proc *testproc.Proc
	log  *testproc.Output
}

// Start starts a guest daemon with the extra flags given; env is added to
// its environment.
func Start(t testing.TB, args, env []string) *Guest {
	t.Helper()
	dir := testproc.ShortDir(t)
	g := &Guest{
		Dir: dir, Sock: filepath.Join(dir, "g.sock"),
		StateDir: filepath.Join(dir, "state"), Profile: filepath.Join(dir, "profile.sh"),
		t: t, env: env,
	}
	g.args = append([]string{"--listen", "unix:" + g.Sock, "--state-dir", g.StateDir, "--profile-file", g.Profile}, args...)
	g.Start()
	return g
}

// Start starts the daemon again, on the same socket and state, after Kill.
// Starting it while it runs fails the test: a second process would take
// over the socket and the first would outlive the test.
func (g *Guest) Start() {
	g.t.Helper()
	if g.proc != nil && !g.proc.Exited() {
		g.t.Fatalf("guest daemon (pid %d) is still running: kill it before starting it again", g.Pid())
	}
	bin, err := testbin.Path(testbin.Guestd)
	if err != nil {
		g.t.Fatal(err)
	}
	g.log = &testproc.Output{}
	cmd := exec.Command(bin, g.args...)
	cmd.Env = append(os.Environ(), g.env...)
	cmd.Stdout, cmd.Stderr = g.log, g.log
	g.proc = testproc.Start(g.t, cmd)
	g.proc.WaitListening(g.t, g.Sock, g.log)
}

// Kill ends the daemon with SIGKILL (also when stopped) and waits for it.
func (g *Guest) Kill() { g.proc.Kill() }

// Signal sends sig to the daemon.
func (g *Guest) Signal(sig syscall.Signal) {
	g.t.Helper()
	if err := g.proc.Cmd.Process.Signal(sig); err != nil {
		g.t.Fatal(err)
	}
}

// Exited reports whether the daemon has exited.
func (g *Guest) Exited() bool { return g.proc.Exited() }

// Pid is the daemon's process id.
func (g *Guest) Pid() int { return g.proc.Cmd.Process.Pid }

// Log is what the daemon wrote so far.
func (g *Guest) Log() string { return g.log.String() }
