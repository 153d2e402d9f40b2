package main_test

import (
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testproc"
)

// TestWatchdogPings: with a systemd watchdog set (WATCHDOG_USEC) the daemon
// sends WATCHDOG=1 again and again, at half the interval (a kernel timer,
// re-armed after each).
func TestWatchdogPings(t *testing.T) {
	e := newEnv(t)
	notifyPath := filepath.Join(e.root, "watchdog.sock")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cmd := exec.Command(binary, "--listen", "unix:"+e.sock, "--state-dir", e.state, "--profile-file", e.profile)
	cmd.Env = []string{"PATH=" + e.path, "HOME=/root", "NOTIFY_SOCKET=" + notifyPath, "WATCHDOG_USEC=100000"}
	d := testproc.Start(t, cmd)
	t.Cleanup(func() { d.Kill() })
	l.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 64)
	pings := 0
	for pings < 3 {
		n, err := l.Read(buf)
		if err != nil {
			t.Fatalf("%d WATCHDOG=1 received, then: %v", pings, err)
		}
		if string(buf[:n]) == "WATCHDOG=1" {
			pings++
		}
	}
}
