//go:build integration

package integration

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// guestCPUTicks returns utime+stime (clock ticks) of the guest daemon, read
// from /proc inside the guest through the session.
func guestCPUTicks(t *testing.T, g *guestSession, pid string) int {
	t.Helper()
	stat := g.mustExec(t, "cat", "/proc/"+pid+"/stat").Stdout
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
	if len(f) < 13 {
		t.Fatalf("/proc/%s/stat: %q", pid, stat)
	}
	utime, err1 := strconv.Atoi(f[11])
	stime, err2 := strconv.Atoi(f[12])
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%s/stat: %q", pid, stat)
	}
	return utime + stime
}

// TestVirtioSerialGuest exercises the guest daemon on a real virtio-serial
// port, with no hostd: while no host is connected, read() on the port
// returns EOF again and again, and the daemon must neither spin nor give up;
// a host that reconnects (after leaving a partial frame, garbage, or a
// request without Hello in the port) gets a clean session every time.
func TestVirtioSerialGuest(t *testing.T) {
	t.Parallel()
	vm := newVM(t, vmOptions{})
	vm.Start(t)

	// A request without a session, written before the guest has even opened
	// the port (QEMU delivers it when the guest does): refused with
	// no_session, and the daemon goes on to accept a Hello.
	exec, _ := protocol.Marshal(protocol.Exec{Command: "/bin/true"})
	noSession := protocol.AppendFrame(nil, protocol.Header{Version: protocol.Version, Type: protocol.TypeExec, Epoch: 5, ID: 9}, exec)
	c, err := net.DialTimeout("unix", vm.Sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(bootTimeout))
	if _, err := c.Write(noSession); err != nil {
		t.Fatal(err)
	}
	f, err := protocol.NewReader(c, 1<<20).Next()
	var pe protocol.Error
	if err != nil {
		t.Errorf("request before Hello: no answer: %v", err)
	} else if f.Type != protocol.TypeError || protocol.Unmarshal(f.Payload, &pe) != nil || pe.Code != protocol.CodeNoSession || f.ID != 9 {
		t.Errorf("request before Hello answered %v id %d %s, want error no_session for id 9", f.Type, f.ID, f.Payload)
	}
	c.Close()

	g, d := waitGuest(t, vm, bootTimeout, false)
	t.Logf("boot to first handshake: %s", d.Round(time.Millisecond))
	pid := strings.TrimSpace(g.mustExec(t, "pidof", "vmpersona-guestd").Stdout)
	before := guestCPUTicks(t, g, pid)
	epochs := map[uint32]bool{g.Epoch(): true}

	// The host goes away; the guest sees EOF on the port until it returns.
	g.Close(nil)
	const away = 3 * time.Second
	time.Sleep(away)
	g, _ = waitGuest(t, vm, reconnTimeout, false)
	epochs[g.Epoch()] = true
	if p := strings.TrimSpace(g.mustExec(t, "pidof", "vmpersona-guestd").Stdout); p != pid {
		t.Errorf("guestd pid %s after the host was away, was %s: it died on EOF", p, pid)
	}
	used := guestCPUTicks(t, g, pid) - before
	// Clock ticks are 1/100 s. A daemon spinning on EOF would burn the whole
	// window (≈300 ticks); an idle one a few.
	t.Logf("guestd CPU while the host was away for %s: %d ticks", away, used)
	if used > 150 {
		t.Errorf("guestd used %d clock ticks of CPU in %s with no host connected: it spins on EOF", used, away)
	}
	g.Close(nil)

	// Leftovers in the port: half a Hello frame, then garbage, each written
	// by a host that then leaves (long enough for the guest to see EOF).
	hello, _ := protocol.Marshal(protocol.Hello{Epoch: 77, MinVersion: protocol.Version, MaxVersion: protocol.Version, HostVersion: "x", HeartbeatMillis: 1000})
	frame := protocol.AppendFrame(nil, protocol.Header{Version: protocol.Version, Type: protocol.TypeHello, Epoch: 77, ID: 1}, hello)
	for i, junk := range [][]byte{frame[:len(frame)/2], []byte("\x00\xffgarbage that is no frame at all\x7f\x01")} {
		time.Sleep(time.Second)
		c, err := net.DialTimeout("unix", vm.Sock, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(junk); err != nil {
			t.Fatal(err)
		}
		c.Close()
		time.Sleep(time.Second)
		g, _ = waitGuest(t, vm, reconnTimeout, false)
		if r := g.mustExec(t, "echo", "clean"); r.Stdout != "clean\n" {
			t.Errorf("after leftover %d: echo answered %q", i, r.Stdout)
		}
		epochs[g.Epoch()] = true
		g.Close(nil)
	}

	// Quick reconnects: every one a new session.
	for range 5 {
		g, _ = waitGuest(t, vm, reconnTimeout, false)
		epochs[g.Epoch()] = true
		g.mustExec(t, "/bin/true")
		g.Close(nil)
	}
	if len(epochs) != 9 {
		t.Errorf("%d distinct session epochs in 9 sessions", len(epochs))
	}
	g, _ = waitGuest(t, vm, reconnTimeout, false)
	if p := strings.TrimSpace(g.mustExec(t, "pidof", "vmpersona-guestd").Stdout); p != pid {
		t.Errorf("guestd restarted during the reconnects (pid %s, was %s)", p, pid)
	}
}
