// Package testproc runs vmpersona's daemons as real processes in tests:
// their output collected while they run, ended when the test ends, and a
// wait for what they must reach (a socket, a connected agent).
package testproc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Output collects what a process writes; it is safe to read while the
// process writes. With a Limit it starts again once past it, keeping the
// latest output, which is what explains a failure.
type Output struct {
	Limit int // bytes; 0: no limit

	mu sync.Mutex
	b  bytes.Buffer
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.Limit > 0 && o.b.Len() > o.Limit {
		o.b.Reset()
	}
	return o.b.Write(p)
}

func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// ShortDir is a new temporary directory with a short path, removed when
// the test ends: unix socket paths are limited to 108 bytes, which
// t.TempDir() names can exceed.
func ShortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vmp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// FreeTCPAddr is a loopback address (127.0.0.1:PORT) whose port was free a
// moment ago, for a daemon to listen on.
func FreeTCPAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// ServeUnix listens on the unix socket sock and serves each connection in
// a goroutine of its own: a scripted peer (a guest that hangs, an old one,
// a hostile one). When the test ends the connections and the listener are
// closed, and every serve has returned.
func ServeUnix(t testing.TB, sock string, serve func(c net.Conn)) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				go func() { <-stop; c.Close() }()
				serve(c)
			})
		}
	})
	t.Cleanup(func() { close(stop); l.Close(); wg.Wait() })
}

// Hold serves a connection by answering nothing (what it reads is
// dropped) until it is closed: a peer that hangs.
func Hold(c net.Conn) { io.Copy(io.Discard, c) }

// UnixHTTP is an HTTP client whose requests all go to the unix socket sock
// (a daemon's API; the URL's host is not used). timeout 0: none.
func UnixHTTP(sock string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		MaxIdleConnsPerHost: 200,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
}

// Proc is a started process.
type Proc struct {
	Cmd  *exec.Cmd
	done chan struct{}
	once sync.Once
}

// Start starts cmd (its streams set by the caller) and kills it, if it is
// still running, when the test ends. Register cleanups that need the
// process alive (reading its log) after calling Start: they run first.
func Start(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(p.Kill)
	return p
}

// Done is closed once the process has exited and been waited for.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL (no chance to flush or close anything) and waits for
// the process to exit.
func (p *Proc) Kill() {
	p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop ends the process the way an operator does: SIGTERM, then SIGKILL
// if it has not exited within grace. Only the first call signals.
func (p *Proc) Stop(grace time.Duration) {
	p.once.Do(func() {
		p.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			p.Kill()
		}
	})
	<-p.done
}

// WaitListening waits until the process accepts connections on the unix
// socket sock. If it exits first, or does not listen within a generous
// bound, the test fails with log (its output).
func (p *Proc) WaitListening(t testing.TB, sock string, log fmt.Stringer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before listening on %s: %s", filepath.Base(p.Cmd.Path), sock, log)
		case <-time.After(5 * time.Millisecond):
		}
	}
	t.Fatalf("%s never listened on %s: %s", filepath.Base(p.Cmd.Path), sock, log)
}

// WaitFor polls cond until it holds and fails the test if it does not
// within a generous bound: a wait for readiness, not a timing assertion.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	WaitWithin(t, 30*time.Second, what, cond)
}

// WaitWithin is WaitFor with its own bound, for what takes long by nature
// (an etcd election after a member is killed).
func WaitWithin(t testing.TB, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
