package server

// The virtio-serial path, end to end through the real server: a pty stands
// in for the port. With VMIN=0 a pty's read() returns 0 at once when no data
// is there, like a virtio-serial port with no host on the other end; with
// VMIN=1 it blocks, like a port whose host is connected.

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmpersona/vmpersona/guestd/activation"
	"github.com/vmpersona/vmpersona/guestd/audit"
	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/guestd/transport"
	"github.com/vmpersona/vmpersona/protocol"
)

func openPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here (%v): the serial path needs a character device to run on", err)
	}
	t.Cleanup(func() { m.Close() })
	var n int
	ioctl(t, m, func(fd int) (err error) {
		if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
			return err
		}
		n, err = unix.IoctlGetInt(fd, unix.TIOCGPTN)
		return err
	})
	setVMIN(t, m, 0)
	return m, "/dev/pts/" + strconv.Itoa(n)
}

// setVMIN puts the pty in raw mode with the given VMIN (VTIME 0).
// ioctl runs f on m's descriptor without taking it out of non-blocking
// mode (File.Fd would, and deadlines would stop working).
func ioctl(t *testing.T, m *os.File, f func(fd int) error) {
	t.Helper()
	rc, err := m.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	if ferr != nil {
		t.Fatal(ferr)
	}
}

func setVMIN(t *testing.T, m *os.File, vmin uint8) {
	t.Helper()
	ioctl(t, m, func(fd int) error { return rawMode(fd, vmin) })
}

func rawMode(fd int, vmin uint8) error {
	tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	tio.Cflag &^= unix.CSIZE | unix.PARENB
	tio.Cflag |= unix.CS8
	tio.Cc[unix.VMIN], tio.Cc[unix.VTIME] = vmin, 0
	return unix.IoctlSetTermios(fd, unix.TCSETS, tio)
}

// hostEnd is the host's side of the pty for one session: Close ends it
// without closing the master, and waits for no one.
type hostEnd struct {
	m    *os.File
	mu   sync.Mutex
	dead atomic.Bool
}

func (h *hostEnd) Read(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dead.Load() {
		return 0, os.ErrClosed
	}
	return h.m.Read(p)
}

func (h *hostEnd) Write(p []byte) (int, error) { return h.m.Write(p) }

func (h *hostEnd) Close() error {
	if !h.dead.Swap(true) {
		h.m.SetReadDeadline(time.Now())
	}
	return nil
}

// release waits for a read in progress to return and re-arms the master.
func (h *hostEnd) release() {
	h.Close()
	h.mu.Lock()
	h.m.SetReadDeadline(time.Time{})
	h.mu.Unlock()
}

func newServer(t *testing.T) *Server {
	t.Helper()
	dir := t.TempDir()
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	spool, err := audit.Open(dir, audit.Limits{}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { spool.Close() })
	mgr, err := activation.New(activation.Config{Store: store, Spool: spool, Environ: os.Environ()})
	if err != nil {
		t.Fatal(err)
	}
	return New(Config{Manager: mgr, Spool: spool, BootID: "boot"})
}

func TestVirtioSerialSessions(t *testing.T) {
	master, slave := openPTY(t)
	dev := t.TempDir()
	os.MkdirAll(filepath.Join(dev, "virtio-ports"), 0o755)
	if err := os.Symlink(slave, filepath.Join(dev, "virtio-ports", "org.vmpersona.agent.0")); err != nil {
		t.Fatal(err)
	}
	sl := &transport.SerialListener{Name: "org.vmpersona.agent.0", DevDir: dev, SysDir: t.TempDir(), Log: slog.Default()}
	l := &viewCounter{Listener: sl}
	srv := newServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	// No host: read() returns 0 again and again. The daemon must not spin:
	// a loop without a pause takes tens of thousands of views a second.
	time.Sleep(time.Second)
	if n := l.n.Load(); n > 50 {
		t.Fatalf("%d views in one second with no host: the EOF loop spins", n)
	}

	session := func(epoch uint32, stale []byte) {
		t.Helper()
		// What an earlier host left half-written is delivered first.
		if _, err := master.Write(stale); err != nil {
			t.Fatal(err)
		}
		setVMIN(t, master, 1) // the host is there
		host := &hostEnd{m: master}
		hctx, hcancel := context.WithTimeout(ctx, 20*time.Second)
		defer hcancel()
		c, err := protocol.Handshake(hctx, host, protocol.ClientConfig{Epoch: epoch, Heartbeat: 100 * time.Millisecond})
		if err != nil {
			t.Fatalf("handshake over the serial port: %v", err)
		}
		var res protocol.ExecResult
		if err := c.Call(hctx, protocol.TypeExec, protocol.Exec{Command: "echo", Args: []string{"over", "serial"}}, &res, nil); err != nil || res.Stdout != "over serial\n" {
			t.Fatalf("exec over the serial port: %+v %v", res, err)
		}
		if c.Hello().BootID != "boot" {
			t.Fatalf("hello ack: %+v", c.Hello())
		}
		// The host goes away without a word: the guest notices the silence,
		// ends the session and goes back to reading EOF (views come and go).
		views := l.n.Load()
		c.Close(nil)
		host.release()
		setVMIN(t, master, 0)
		deadline := time.Now().Add(20 * time.Second)
		for l.n.Load() < views+2 {
			if time.Now().After(deadline) {
				t.Fatal("the guest did not end the silent session")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	frame := protocol.AppendFrame(nil, protocol.Header{Type: protocol.TypeExec, ID: 5, Epoch: 1}, []byte(`{"command":"true"}`))
	session(11, append([]byte("garbage"), frame[:20]...))
	session(12, frame[:len(frame)-3])
	session(13, nil)
}

// viewCounter counts the views the server takes.
type viewCounter struct {
	transport.Listener
	n atomic.Int64
}

func (v *viewCounter) Accept(ctx context.Context) (io.ReadWriteCloser, error) {
	v.n.Add(1)
	return v.Listener.Accept(ctx)
}
