package testproc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestOutputKeepsTheLatestPastItsLimit(t *testing.T) {
	o := &Output{Limit: 8}
	o.Write([]byte("0123456789"))
	o.Write([]byte("tail"))
	if got := o.String(); got != "tail" {
		t.Fatalf("String() = %q, want the output after the reset", got)
	}
	u := &Output{}
	u.Write([]byte(strings.Repeat("x", 100)))
	u.Write([]byte("y"))
	if got := u.String(); len(got) != 101 {
		t.Fatalf("without a limit kept %d bytes, want 101", len(got))
	}
}

// startShell starts a shell running script and waits for it to print
// "ready".
func startShell(t *testing.T, script string) *Proc {
	out := &Output{}
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Stdout = out
	p := Start(t, cmd)
	WaitFor(t, "the shell to be ready", func() bool { return out.String() == "ready\n" })
	return p
}

func TestKillEndsTheProcess(t *testing.T) {
	p := startShell(t, "echo ready; exec sleep 60")
	if p.Exited() {
		t.Fatal("Exited() before the process was ended")
	}
	p.Kill()
	if !p.Exited() {
		t.Fatal("Exited() false after Kill")
	}
}

// A process that ignores SIGTERM is killed once the grace period is over.
func TestStopKillsWhatIgnoresSIGTERM(t *testing.T) {
	p := startShell(t, "trap '' TERM; echo ready; while :; do sleep 1; done")
	p.Stop(100 * time.Millisecond)
	select {
	case <-p.Done():
	default:
		t.Fatal("Stop returned with the process running")
	}
	p.Stop(time.Second) // a second Stop waits and signals nothing
}

// fatalRecorder stands for a test in the failure cases: it records the
// failure and ends the goroutine as t.Fatalf does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}
func (f *fatalRecorder) Cleanup(fn func()) {
	f.TB.Cleanup(fn)
}
func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// failure runs fn as a test body and returns its failure message ("" if none).
func failure(t *testing.T, fn func(tb testing.TB)) string {
	f := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() { defer close(done); fn(f) }()
	<-done
	return f.msg
}

func TestWaitWithinFailsWhenTheConditionNeverHolds(t *testing.T) {
	msg := failure(t, func(tb testing.TB) { WaitWithin(tb, 50*time.Millisecond, "nothing", func() bool { return false }) })
	if msg != "gave up waiting for nothing" {
		t.Fatalf("failure %q", msg)
	}
	if msg := failure(t, func(tb testing.TB) { WaitWithin(tb, time.Minute, "now", func() bool { return true }) }); msg != "" {
		t.Fatalf("a condition that holds failed: %q", msg)
	}
}

func TestWaitListening(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	log := &Output{}
	log.Write([]byte("the log"))
	// A process that exits without listening: the failure says so, with its log.
	p := Start(t, exec.Command("/bin/true"))
	msg := failure(t, func(tb testing.TB) { p.WaitListening(tb, sock, log) })
	if !strings.Contains(msg, "true exited before listening on "+sock) || !strings.Contains(msg, "the log") {
		t.Fatalf("failure %q", msg)
	}
	// A socket that accepts: no failure.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	q := Start(t, exec.Command("sleep", "60"))
	if msg := failure(t, func(tb testing.TB) { q.WaitListening(tb, sock, log) }); msg != "" {
		t.Fatalf("a listening socket failed: %q", msg)
	}
}

func TestShortDirAndFreeTCPAddr(t *testing.T) {
	dir := ShortDir(t)
	if len(filepath.Join(dir, "a-socket-name.sock")) > 100 {
		t.Errorf("ShortDir %q leaves no room for a socket name", dir)
	}
	addr := FreeTCPAddr(t)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	l.Close()
}

// A served socket answers each connection; at the end of the test every
// connection is closed, a held one too.
func TestServeUnix(t *testing.T) {
	dir := ShortDir(t)
	echo, hold := filepath.Join(dir, "echo.sock"), filepath.Join(dir, "hold.sock")
	var held net.Conn
	t.Run("serve", func(t *testing.T) {
		ServeUnix(t, echo, func(c net.Conn) { io.Copy(c, c) })
		ServeUnix(t, hold, Hold)
		c, err := net.Dial("unix", echo)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("ping"))
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
			t.Fatalf("echo answered %q, %v", b, err)
		}
		if held, err = net.Dial("unix", hold); err != nil {
			t.Fatal(err)
		}
	})
	// The subtest has ended: its held connection is closed from the far end
	// (EOF once accepted; a connection still in the listener's backlog when
	// the listener closed is reset instead). A hang ends at the deadline.
	held.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := held.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read on a held connection after the test: %v, want EOF or a reset", err)
	}
	held.Close()
	if _, err := net.Dial("unix", echo); err == nil {
		t.Error("the socket still accepts after the test")
	}
}

func TestUnixHTTP(t *testing.T) {
	sock := filepath.Join(ShortDir(t), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) })}
	go srv.Serve(l)
	defer srv.Close()
	res, err := UnixHTTP(sock, 10*time.Second).Get("http://daemon/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if b, _ := io.ReadAll(res.Body); string(b) != "/healthz" {
		t.Fatalf("answer %q", b)
	}
}
