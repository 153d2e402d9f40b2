package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// unixPair returns the daemon's end of a unix connection (as Accept gives
// it) and the host's end.
func unixPair(t *testing.T) (daemon io.ReadWriteCloser, host net.Conn) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	path := filepath.Join(t.TempDir(), "s")
	l, err := Listen(ctx, Endpoint{Kind: KindUnix, Path: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepted := make(chan io.ReadWriteCloser, 1)
	go func() {
		c, err := l.Accept(ctx)
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	host, err = net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	daemon = <-accepted
	if daemon == nil {
		t.FailNow()
	}
	t.Cleanup(func() { daemon.Close() })
	return daemon, host
}

// A unix connection is read and written with raw system calls; bytes go
// through whole both ways, more than the socket buffers hold (reads and
// writes wait in the poller), and the host hanging up is EOF.
func TestQuietConnCarriesBytes(t *testing.T) {
	daemon, host := unixPair(t)
	if _, ok := daemon.(*quietConn); !ok {
		t.Fatalf("accepted connection is %T, want the quiet path", daemon)
	}
	up, down := make([]byte, 4<<20), make([]byte, 4<<20)
	rand.Read(up)
	rand.Read(down)
	errs := make(chan error, 2)
	go func() { _, err := host.Write(up); errs <- err }()
	go func() { _, err := daemon.Write(down); errs <- err }()
	gotUp := make([]byte, len(up))
	if _, err := io.ReadFull(daemon, gotUp); err != nil {
		t.Fatalf("daemon read: %v", err)
	}
	gotDown := make([]byte, len(down))
	if _, err := io.ReadFull(host, gotDown); err != nil {
		t.Fatalf("host read: %v", err)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
		t.Fatal("bytes changed on the way")
	}
	host.Close()
	if n, err := daemon.Read(make([]byte, 16)); n != 0 || err != io.EOF {
		t.Fatalf("read after the host hung up: %d %v, want EOF", n, err)
	}
}

// The session's write deadline bounds a write the host does not read; once
// the host reads again, a later write is not cut by the expired deadline.
func TestQuietConnWriteDeadline(t *testing.T) {
	daemon, host := unixPair(t)
	d := daemon.(interface{ SetWriteDeadline(time.Time) error })
	d.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	big := make([]byte, 64<<20) // more than any socket buffer
	n, err := daemon.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n >= len(big) {
		t.Fatalf("write nobody reads: %d of %d bytes, %v; want the deadline exceeded", n, len(big), err)
	}
	go io.CopyN(io.Discard, host, int64(n)+5)
	d.SetWriteDeadline(time.Now().Add(time.Minute))
	if _, err := daemon.Write([]byte("after")); err != nil {
		t.Fatalf("write after the host read again: %v", err)
	}
}

// Closing the connection ends a read waiting for the host.
func TestQuietConnCloseEndsRead(t *testing.T) {
	daemon, _ := unixPair(t)
	done := make(chan error, 1)
	go func() { _, err := daemon.Read(make([]byte, 16)); done <- err }()
	time.Sleep(10 * time.Millisecond) // most likely waiting in the poller
	daemon.Close()
	if err := <-done; err == nil {
		t.Fatal("read on a closed connection succeeded")
	}
}

// A virtio-serial port's view (a pty here) takes the quiet path too.
func TestSerialViewQuiet(t *testing.T) {
	_, slave := openPTY(t)
	dev := t.TempDir()
	os.MkdirAll(filepath.Join(dev, "virtio-ports"), 0o755)
	if err := os.Symlink(slave, filepath.Join(dev, "virtio-ports", "p")); err != nil {
		t.Fatal(err)
	}
	l := &SerialListener{Name: "p", DevDir: dev, SysDir: t.TempDir(), Log: slog.Default()}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.(*serialConn).q == nil {
		t.Fatal("the port's view reads through the runtime's ordinary path")
	}
}
