package testguest

import (
	"net"
	"syscall"
	"testing"

	"github.com/vmpersona/vmpersona/internal/testproc"
)

func accepts(sock string) bool {
	c, err := net.Dial("unix", sock)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// A guest daemon killed and started again serves the same socket; one
// ended by a signal is seen to have exited.
func TestKillStartSignal(t *testing.T) {
	g := Start(t, nil, []string{"X=1"})
	if !accepts(g.Sock) || g.Exited() {
		t.Fatalf("a started guest does not serve its socket: %s", g.Log())
	}
	first := g.Pid()
	g.Kill()
	if !g.Exited() {
		t.Fatal("Exited() false after Kill")
	}
	g.Start()
	if !accepts(g.Sock) || g.Pid() == first {
		t.Fatalf("the guest started again does not serve its socket (pid %d, was %d)", g.Pid(), first)
	}
	g.Signal(syscall.SIGTERM)
	testproc.WaitFor(t, "the guest daemon to end on SIGTERM", g.Exited)
}
