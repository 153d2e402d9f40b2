package main_test

// These tests build the real vmpersona-guestd binary, start it on a unix
// socket with a temporary state directory, and drive it with the host-side
// session client (protocol.Handshake), as hostd does.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testbin"
	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/protocol"
)

// binary is the daemon under test, built with the release flags
// (internal/testbin builds it once per test run).
var binary string

func TestMain(m *testing.M) {
	var err error
	if binary, err = testbin.Path(testbin.Guestd); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// env is one test's guest: a state dir, a profile file and a bin dir on the
// daemon's PATH holding test commands.
type env struct {
	t       testing.TB
	root    string
	state   string
	profile string
	bin     string
	sock    string
	path    string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	root := t.TempDir()
	e := &env{
		t: t, root: root,
		state:   filepath.Join(root, "state"),
		profile: filepath.Join(root, "profile.d", "vmpersona.sh"),
		bin:     filepath.Join(root, "bin"),
		// unix socket paths are short: keep it out of deep temp dirs
		sock: filepath.Join(root, "g.sock"),
	}
	if len(e.sock) > 100 {
		t.Fatalf("socket path too long: %s", e.sock)
	}
	for _, d := range []string{e.bin, filepath.Dir(e.profile), filepath.Join(root, "links")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.path = e.bin + ":/usr/local/bin:/usr/bin:/bin"
	e.script("danger", "#!/bin/sh\necho DANGER RAN\n")
	e.script("target", "#!/bin/sh\necho \"target: $*\"\n")
	return e
}

// release writes a line to the fifo a test command waits on, and waits
// for that command's exec to end well (done).
func release(t *testing.T, fifo string, done <-chan error) {
	t.Helper()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("go\n"))
	w.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// startConnected starts the daemon in a new env and connects to it, as
// most tests begin.
func startConnected(t testing.TB) (*env, *protocol.Client) {
	t.Helper()
	e := newEnv(t)
	e.start()
	return e, e.connect(nil)
}

func (e *env) script(name, content string) string {
	e.t.Helper()
	p := filepath.Join(e.bin, name)
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		e.t.Fatal(err)
	}
	return p
}

type daemon struct {
	*testproc.Proc
	stderr *testproc.Output
}

// start runs the daemon and waits for its READY=1 on $NOTIFY_SOCKET (the
// sd_notify protocol), which it sends once it listens.
func (e *env) start(args ...string) *daemon {
	e.t.Helper()
	notifyPath := filepath.Join(e.root, "n.sock")
	os.Remove(notifyPath)
	ready, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		e.t.Fatal(err)
	}
	defer ready.Close()
	cmd := exec.Command(binary, append([]string{"--listen", "unix:" + e.sock, "--state-dir", e.state,
		"--profile-file", e.profile, "--log-level", "debug"}, args...)...)
	cmd.Env = []string{"PATH=" + e.path, "HOME=/root", "BASE_ONLY=base", "NOTIFY_SOCKET=" + notifyPath}
	if extra := os.Getenv("BENCH_GUESTD_ENV"); extra != "" {
		// Benchmarks: runtime settings to compare (GOMAXPROCS=1, GOGC=...).
		cmd.Env = append(cmd.Env, strings.Fields(extra)...)
	}
	d := &daemon{stderr: &testproc.Output{}}
	cmd.Stderr = d.stderr
	d.Proc = testproc.Start(e.t, cmd)
	e.t.Cleanup(func() {
		d.Kill()
		if e.t.Failed() {
			e.t.Logf("daemon log:\n%s", d.stderr.String())
		}
	})
	go func() {
		<-d.Done()
		ready.SetReadDeadline(time.Now()) // a daemon that died sends nothing
	}()
	ready.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 256)
	n, err := ready.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		e.t.Fatalf("no READY=1 from the daemon (%q, %v): %s", buf[:n], err, d.stderr.String())
	}
	return d
}

func (d *daemon) term(t testing.TB) {
	t.Helper()
	d.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not stop on SIGTERM")
	}
	if code := d.Cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

// auditLog collects the batches a client receives.
type auditLog struct {
	mu     sync.Mutex
	events []protocol.AuditEvent
	spool  string
	// ackLimit bounds what is acknowledged (0: everything)
	ackLimit uint64
	changed  chan struct{}
}

func newAuditLog(ackLimit uint64) *auditLog {
	return &auditLog{ackLimit: ackLimit, changed: make(chan struct{}, 1)}
}

func (a *auditLog) onAudit(b protocol.AuditBatch) (uint64, error) {
	a.mu.Lock()
	a.spool = b.SpoolID
	a.events = append(a.events, b.Events...)
	a.mu.Unlock()
	select {
	case a.changed <- struct{}{}:
	default:
	}
	up := b.Events[len(b.Events)-1].Seq
	if a.ackLimit > 0 {
		up = min(up, a.ackLimit)
	}
	return up, nil
}

func (a *auditLog) seqs() []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var s []uint64
	for _, e := range a.events {
		s = append(s, e.Seq)
	}
	return s
}

func (a *auditLog) get() []protocol.AuditEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.events)
}

// waitFor waits until cond holds for the received events.
func (a *auditLog) waitFor(t testing.TB, what string, cond func([]protocol.AuditEvent) bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for !cond(a.get()) {
		select {
		case <-a.changed:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("audit: timed out waiting for %s; got %+v", what, a.get())
		}
	}
}

func (e *env) dial() net.Conn {
	e.t.Helper()
	c, err := net.DialTimeout("unix", e.sock, 5*time.Second)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) connect(a *auditLog) *protocol.Client {
	e.t.Helper()
	if a == nil {
		a = newAuditLog(0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := protocol.Handshake(ctx, e.dial(), protocol.ClientConfig{
		HostVersion: "test", Heartbeat: time.Second, OnAudit: a.onAudit,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close(nil) })
	return c
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func activate(t testing.TB, c *protocol.Client, p protocol.Persona) protocol.ActivateResult {
	t.Helper()
	var res protocol.ActivateResult
	err := c.Call(ctxT(t), protocol.TypeActivate, protocol.Activate{
		Persona: p, Revision: 1, ActivationID: "act-" + p.Name, Actor: "tester", Reason: "api",
	}, &res, nil)
	if err != nil {
		t.Fatalf("activate %s: %v", p.Name, err)
	}
	return res
}

func mustActivate(t testing.TB, c *protocol.Client, p protocol.Persona) {
	t.Helper()
	if res := activate(t, c, p); res.Result != protocol.ResultActivated {
		t.Fatalf("activate %s: %+v (script %+v)", p.Name, res, res.Script)
	}
}

func run(t testing.TB, c *protocol.Client, req protocol.Exec) (protocol.ExecResult, error) {
	t.Helper()
	var res protocol.ExecResult
	err := c.Call(ctxT(t), protocol.TypeExec, req, &res, nil)
	return res, err
}

func mustRun(t testing.TB, c *protocol.Client, req protocol.Exec) protocol.ExecResult {
	t.Helper()
	res, err := run(t, c, req)
	if err != nil {
		t.Fatalf("exec %s %q: %v", req.Command, req.Args, err)
	}
	return res
}

func errCode(err error) string {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	return fmt.Sprintf("not a protocol error: %v", err)
}

// guestEnv returns the environment commands get, via env(1).
func guestEnv(t testing.TB, c *protocol.Client) map[string]string {
	t.Helper()
	res := mustRun(t, c, protocol.Exec{Command: "env"})
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

func TestHandshake(t *testing.T) {
	_, c := startConnected(t)
	ack := c.Hello()
	if ack.ProtocolVersion != protocol.Version || ack.AgentVersion != testbin.Version() {
		t.Errorf("versions: %+v", ack)
	}
	for _, cp := range []string{protocol.CapExecStream, protocol.CapAllowlist, protocol.CapAuditSpool, protocol.CapProfile} {
		if !slices.Contains(ack.Capabilities, cp) {
			t.Errorf("capability %q missing: %v", cp, ack.Capabilities)
		}
	}
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if ack.BootID != strings.TrimSpace(string(boot)) || ack.BootID == "" {
		t.Errorf("boot id %q, want %q", ack.BootID, boot)
	}
	if len(ack.SpoolID) != 32 {
		t.Errorf("spool id %q", ack.SpoolID)
	}
	if ack.Active != nil || ack.PendingAudit != 0 {
		t.Errorf("fresh guest: active %+v pending %d", ack.Active, ack.PendingAudit)
	}
	// Ping/pong keeps the session: a call after several heartbeats works.
	res := mustRun(t, c, protocol.Exec{Command: "true"})
	if res.ExitCode != 0 || res.Route != protocol.RouteDefault || res.Persona != nil {
		t.Errorf("exec true: %+v", res)
	}
}

// rawConn speaks frames directly, for what the client never sends.
type rawConn struct {
	t testing.TB
	c net.Conn
	r *protocol.Reader
	w *protocol.Writer
}

func (e *env) raw() *rawConn {
	c := e.dial()
	e.t.Cleanup(func() { c.Close() })
	return &rawConn{t: e.t, c: c, r: protocol.NewReader(c, 0), w: protocol.NewWriter(c)}
}

func (r *rawConn) send(h protocol.Header, msg any) {
	r.t.Helper()
	var payload []byte
	switch m := msg.(type) {
	case nil:
	case []byte:
		payload = m
	default:
		var err error
		if payload, err = protocol.Marshal(m); err != nil {
			r.t.Fatal(err)
		}
	}
	if err := r.w.WriteFrame(h, payload); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawConn) next() protocol.Frame {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := r.r.Next()
	if err != nil {
		r.t.Fatalf("read: %v", err)
	}
	return f.Clone()
}

func (r *rawConn) expectError(id uint64, code string) {
	r.t.Helper()
	f := r.next()
	var e protocol.Error
	if f.Type != protocol.TypeError || f.ID != id || protocol.Unmarshal(f.Payload, &e) != nil || e.Code != code {
		r.t.Fatalf("want error %s for id %d, got %s id %d %s", code, id, f.Type, f.ID, f.Payload)
	}
}

func (r *rawConn) hello(epoch uint32, heartbeatMillis int64) protocol.HelloAck {
	r.t.Helper()
	r.send(protocol.Header{Type: protocol.TypeHello, ID: 1, Epoch: epoch}, protocol.Hello{
		Epoch: epoch, MinVersion: 1, MaxVersion: 9, HeartbeatMillis: heartbeatMillis})
	f := r.next()
	var ack protocol.HelloAck
	if f.Type != protocol.TypeHelloAck || f.Epoch != epoch || protocol.Unmarshal(f.Payload, &ack) != nil {
		r.t.Fatalf("want hello_ack with epoch %d, got %s epoch %d %s", epoch, f.Type, f.Epoch, f.Payload)
	}
	return ack
}

func TestRequestsBeforeHelloRefused(t *testing.T) {
	e := newEnv(t)
	e.start()
	marker := filepath.Join(e.root, "ran")
	r := e.raw()
	r.send(protocol.Header{Type: protocol.TypeExec, ID: 7}, protocol.Exec{Command: "touch", Args: []string{marker}})
	r.expectError(7, protocol.CodeNoSession)
	r.send(protocol.Header{Type: protocol.TypeActivate, ID: 8}, protocol.Activate{Persona: protocol.Persona{Name: "x"}})
	r.expectError(8, protocol.CodeNoSession)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a request before Hello ran a command")
	}
	// No version in common: refused, still no session.
	r.send(protocol.Header{Type: protocol.TypeHello, ID: 3, Epoch: 40}, protocol.Hello{Epoch: 40, MinVersion: 2, MaxVersion: 3})
	r.expectError(3, protocol.CodeUnsupportedVersion)
	r.send(protocol.Header{Type: protocol.TypePing, ID: 4, Epoch: 40}, nil)
	r.expectError(4, protocol.CodeNoSession)
	// Then a session, and the protocol's other refusals.
	if ack := r.hello(42, 0); ack.ProtocolVersion != 1 {
		t.Fatalf("highest common version: %d", ack.ProtocolVersion)
	}
	r.send(protocol.Header{Type: protocol.Type(0x55), ID: 9, Epoch: 42}, nil)
	r.expectError(9, protocol.CodeUnsupportedType)
	r.send(protocol.Header{Type: protocol.TypeExec, ID: 10, Epoch: 42}, []byte("{not json"))
	r.expectError(10, protocol.CodeBadRequest)
	r.send(protocol.Header{Type: protocol.TypeExecResult, ID: 11, Epoch: 42}, protocol.ExecResult{})
	r.expectError(11, protocol.CodeUnsupportedType)
	// A request of another epoch is ignored; a ping of this one is answered.
	r.send(protocol.Header{Type: protocol.TypeExec, ID: 12, Epoch: 41}, protocol.Exec{Command: "touch", Args: []string{marker}})
	r.send(protocol.Header{Type: protocol.TypePing, ID: 13, Epoch: 42}, nil)
	if f := r.next(); f.Type != protocol.TypePong || f.ID != 13 || f.Epoch != 42 {
		t.Fatalf("want pong 13, got %s %d", f.Type, f.ID)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a request of another epoch ran a command")
	}
	// A frame over the limit is refused with its id and the stream goes on.
	big := make([]byte, protocol.DefaultMaxPayload+1)
	r.send(protocol.Header{Type: protocol.TypeExec, ID: 14, Epoch: 42}, big)
	r.expectError(14, protocol.CodeTooLarge)
	// A new Hello starts a new session with the new epoch.
	r.hello(43, 0)
	r.send(protocol.Header{Type: protocol.TypePing, ID: 15, Epoch: 43}, nil)
	if f := r.next(); f.Type != protocol.TypePong || f.Epoch != 43 {
		t.Fatalf("want pong of epoch 43, got %s epoch %d", f.Type, f.Epoch)
	}
}

func TestGarbageBeforeHelloSkipped(t *testing.T) {
	e := newEnv(t)
	e.start()
	conn := e.dial()
	// Garbage, then a stale frame cut short (as virtio-serial delivers after
	// a host reconnect), then a session.
	stale := protocol.AppendFrame(nil, protocol.Header{Type: protocol.TypeExec, ID: 99, Epoch: 5}, []byte(`{"command":"touch","args":["/tmp/x"]}`))
	junk := append([]byte("\x00\xffVMP garbage VMPF\x01"), stale[:len(stale)-7]...)
	if _, err := conn.Write(junk); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := protocol.Handshake(ctx, conn, protocol.ClientConfig{Heartbeat: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(nil)
	if res := mustRun(t, c, protocol.Exec{Command: "echo", Args: []string{"ok"}}); res.Stdout != "ok\n" {
		t.Fatalf("exec after garbage: %+v", res)
	}
}

func TestHeartbeatSilenceEndsSession(t *testing.T) {
	e := newEnv(t)
	e.start()
	r := e.raw()
	r.hello(7, 100)
	// Say nothing: the guest probes with a Ping, then ends the session and
	// closes the connection.
	r.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var err error
	for pings := 0; err == nil; pings++ {
		var f protocol.Frame
		f, err = r.r.Next()
		if err == nil && (f.Type != protocol.TypePing || pings > 0) {
			t.Fatalf("want one probe Ping, then the end of a silent session, got %s", f.Type)
		}
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("want the guest to close a silent session, got %v", err)
	}
	// It keeps listening.
	c := e.connect(nil)
	mustRun(t, c, protocol.Exec{Command: "true"})
}

func TestNewConnectionReplacesOld(t *testing.T) {
	e := newEnv(t)
	e.start()
	first := e.connect(nil)
	second := e.connect(nil)
	select {
	case <-first.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("first connection still open")
	}
	mustRun(t, second, protocol.Exec{Command: "true"})
}

func personaA(e *env) protocol.Persona {
	return protocol.Persona{
		Name:                 "alpha",
		EnvironmentVariables: map[string]string{"APP_ENV": "staging", "ONLY_A": "a", "QUOTED": "it's \"$x\""},
		PreActivationScript:  "#!/bin/sh\necho \"$VMPERSONA_PERSONA $VMPERSONA_PREVIOUS_PERSONA $VMPERSONA_ACTIVATION_ID\" >> " + e.root + "/pre.log\n",
		PostActivationScript: "#!/bin/sh\ntest -n \"$APP_ENV\" && echo \"post $APP_ENV\" >> " + e.root + "/post.log\n",
		RestrictedCommands:   []string{"danger"},
	}
}

func TestActivation(t *testing.T) {
	e, c := startConnected(t)
	res := activate(t, c, personaA(e))
	if res.Result != protocol.ResultActivated || res.Active == nil || res.Active.Persona.Name != "alpha" ||
		res.Active.ActivationID != "act-alpha" || res.Active.Revision != 1 {
		t.Fatalf("activate: %+v", res)
	}
	if pre, _ := os.ReadFile(e.root + "/pre.log"); string(pre) != "alpha  act-alpha\n" {
		t.Errorf("pre script saw %q", pre)
	}
	if post, _ := os.ReadFile(e.root + "/post.log"); string(post) != "post staging\n" {
		t.Errorf("post script saw %q", post)
	}
	env := guestEnv(t, c)
	if env["APP_ENV"] != "staging" || env["BASE_ONLY"] != "base" || env["QUOTED"] != `it's "$x"` {
		t.Errorf("environment: %v", env)
	}
	if _, err := run(t, c, protocol.Exec{Command: "danger"}); errCode(err) != protocol.CodeDenied {
		t.Errorf("danger: %v", err)
	} else if pe := err.(*protocol.Error); pe.Message != protocol.DeniedMessage || pe.Persona != "alpha" || pe.Command != "danger" {
		t.Errorf("denial: %+v", pe)
	}
	// The profile reaches a login shell, quoting intact.
	prof, err := os.ReadFile(e.profile)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("/bin/sh", "-c", ". "+e.profile+` && printf '%s|%s' "$APP_ENV" "$QUOTED"`).Output()
	if err != nil || string(out) != `staging|it's "$x"` {
		t.Errorf("profile %q sourced: %q %v", prof, out, err)
	}
	// A second activation sees the previous persona.
	b := personaA(e)
	b.Name = "beta"
	mustActivate(t, c, b)
	if pre, _ := os.ReadFile(e.root + "/pre.log"); !strings.HasSuffix(string(pre), "beta alpha act-beta\n") {
		t.Errorf("pre script of the second activation saw %q", pre)
	}
	// A new session reports the active persona.
	if ack := e.connect(nil).Hello(); ack.Active == nil || ack.Active.Persona.Name != "beta" {
		t.Errorf("hello after activation: %+v", ack.Active)
	}
}

func TestPreScriptAbortChangesNothing(t *testing.T) {
	e, c := startConnected(t)
	mustActivate(t, c, personaA(e))
	stateBefore, _ := os.ReadFile(filepath.Join(e.state, "state.log"))
	profileBefore, _ := os.ReadFile(e.profile)
	bad := protocol.Persona{
		Name:                 "broken",
		EnvironmentVariables: map[string]string{"ONLY_B": "b"},
		PreActivationScript:  "#!/bin/sh\necho checking\necho nope >&2\nexit 3\n",
		PostActivationScript: "#!/bin/sh\ntouch " + e.root + "/post-ran\n",
		RestrictedCommands:   []string{"true"},
	}
	res := activate(t, c, bad)
	if res.Result != protocol.ResultAborted || res.Phase != "pre" || res.Script == nil ||
		res.Script.ExitCode != 3 || res.Script.Stdout != "checking\n" || res.Script.Stderr != "nope\n" {
		t.Fatalf("want aborted with the script's outcome, got %+v %+v", res, res.Script)
	}
	if res.Active == nil || res.Active.Persona.Name != "alpha" {
		t.Fatalf("active after abort: %+v", res.Active)
	}
	if _, err := os.Stat(e.root + "/post-ran"); err == nil {
		t.Error("post script ran after pre failed")
	}
	env := guestEnv(t, c)
	if env["ONLY_A"] != "a" || env["ONLY_B"] != "" {
		t.Errorf("environment changed: %v", env)
	}
	mustRun(t, c, protocol.Exec{Command: "true"})
	if _, err := run(t, c, protocol.Exec{Command: "danger"}); errCode(err) != protocol.CodeDenied {
		t.Errorf("alpha's restriction lost: %v", err)
	}
	stateAfter, _ := os.ReadFile(filepath.Join(e.state, "state.log"))
	profileAfter, _ := os.ReadFile(e.profile)
	if !bytes.Equal(stateBefore, stateAfter) || !bytes.Equal(profileBefore, profileAfter) {
		t.Error("state or profile file changed")
	}
	// A pre script that times out aborts too.
	slow := protocol.Persona{Name: "slow", PreActivationScript: "#!/bin/sh\nsleep 30\n"}
	var r protocol.ActivateResult
	if err := c.Call(ctxT(t), protocol.TypeActivate, protocol.Activate{Persona: slow, ScriptTimeoutMillis: 200}, &r, nil); err != nil {
		t.Fatal(err)
	}
	if r.Result != protocol.ResultAborted || r.Script == nil || !r.Script.TimedOut || r.Script.Signal != "SIGKILL" {
		t.Fatalf("timeout: %+v %+v", r, r.Script)
	}
}

func TestPostScriptRollsBack(t *testing.T) {
	e, c := startConnected(t)
	mustActivate(t, c, personaA(e))
	profileBefore, _ := os.ReadFile(e.profile)
	bad := protocol.Persona{
		Name:                 "gamma",
		EnvironmentVariables: map[string]string{"ONLY_G": "g"},
		PostActivationScript: "#!/bin/sh\necho \"post sees $ONLY_G\"\nexit 4\n",
		RestrictedCommands:   []string{"true"},
		CommandOverrides:     map[string]string{"danger": "#!/bin/sh\necho overridden\n"},
	}
	res := activate(t, c, bad)
	if res.Result != protocol.ResultRolledBack || res.Phase != "post" || res.Script == nil ||
		res.Script.ExitCode != 4 || res.Script.Stdout != "post sees g\n" {
		t.Fatalf("want rolled_back with the script's outcome, got %+v %+v", res, res.Script)
	}
	if res.Active == nil || res.Active.Persona.Name != "alpha" {
		t.Fatalf("active after rollback: %+v", res.Active)
	}
	env := guestEnv(t, c)
	if env["ONLY_A"] != "a" || env["ONLY_G"] != "" {
		t.Errorf("environment not rolled back: %v", env)
	}
	mustRun(t, c, protocol.Exec{Command: "true"})
	if _, err := run(t, c, protocol.Exec{Command: "danger"}); errCode(err) != protocol.CodeDenied {
		t.Errorf("alpha's table not back: %v", err)
	}
	if after, _ := os.ReadFile(e.profile); !bytes.Equal(profileBefore, after) {
		t.Errorf("profile not rolled back: %q", after)
	}
	if ack := e.connect(nil).Hello(); ack.Active == nil || ack.Active.Persona.Name != "alpha" {
		t.Errorf("persisted persona: %+v", ack.Active)
	}
}

func TestEnvironmentReplaced(t *testing.T) {
	e, c := startConnected(t)
	mustActivate(t, c, protocol.Persona{Name: "one", EnvironmentVariables: map[string]string{"V_ONE": "1", "SHARED": "one"}})
	mustActivate(t, c, protocol.Persona{Name: "two", EnvironmentVariables: map[string]string{"V_TWO": "2", "SHARED": "two"}})
	env := guestEnv(t, c)
	if _, ok := env["V_ONE"]; ok || env["V_TWO"] != "2" || env["SHARED"] != "two" || env["BASE_ONLY"] != "base" {
		t.Fatalf("environment after one→two: %v", env)
	}
	// The request's env lies on top of the persona's.
	res := mustRun(t, c, protocol.Exec{Command: "sh", Args: []string{"-c", "echo $SHARED $EXTRA"}, Env: map[string]string{"SHARED": "req", "EXTRA": "x"}})
	if res.Stdout != "req x\n" {
		t.Errorf("request env: %q", res.Stdout)
	}
	var d protocol.ActivateResult
	if err := c.Call(ctxT(t), protocol.TypeDeactivate, protocol.Deactivate{ActivationID: "d1"}, &d, nil); err != nil || d.Result != protocol.ResultDeactivated || d.Active != nil {
		t.Fatalf("deactivate: %+v %v", d, err)
	}
	env = guestEnv(t, c)
	if _, ok := env["V_TWO"]; ok || env["SHARED"] != "" || env["BASE_ONLY"] != "base" {
		t.Fatalf("environment after deactivation: %v", env)
	}
	if _, err := os.Stat(e.profile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("profile file after deactivation: %v", err)
	}
	if res := mustRun(t, c, protocol.Exec{Command: "true"}); res.Persona != nil {
		t.Errorf("persona after deactivation: %v", *res.Persona)
	}
}

func TestOverrides(t *testing.T) {
	e := newEnv(t)
	e.start()
	audit := newAuditLog(0)
	c := e.connect(audit)
	mustActivate(t, c, protocol.Persona{
		Name: "ov",
		CommandOverrides: map[string]string{
			"ls":     filepath.Join(e.bin, "target"),
			"deploy": "#!/bin/sh\necho \"dry-run: $@\"\necho \"n=$#\"\n",
		},
	})
	res := mustRun(t, c, protocol.Exec{Command: "ls", Args: []string{"-l", "two words"}})
	if res.Stdout != "target: -l two words\n" || res.Route != protocol.RouteOverride || res.Persona == nil || *res.Persona != "ov" {
		t.Errorf("path override: %+v", res)
	}
	// Matched by name however the command is named.
	if res := mustRun(t, c, protocol.Exec{Command: "/usr/bin/ls"}); res.Route != protocol.RouteOverride {
		t.Errorf("/usr/bin/ls: %+v", res)
	}
	res = mustRun(t, c, protocol.Exec{Command: "deploy", Args: []string{"a b", "c"}})
	if res.Stdout != "dry-run: a b c\nn=2\n" || res.Route != protocol.RouteOverride {
		t.Errorf("inline override: %+v", res)
	}
	if res := mustRun(t, c, protocol.Exec{Command: "echo", Args: []string{"x"}}); res.Route != protocol.RouteDefault || res.Stdout != "x\n" {
		t.Errorf("default route: %+v", res)
	}
	audit.waitFor(t, "two override events", func(evs []protocol.AuditEvent) bool {
		n := 0
		for _, ev := range evs {
			if ev.Type == protocol.AuditOverride && ev.Persona == "ov" {
				n++
			}
		}
		return n >= 3
	})
}

func TestRestrictionBypassesRefused(t *testing.T) {
	e := newEnv(t)
	links := filepath.Join(e.root, "links")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	rm, err := exec.LookPath("rm")
	must(err)
	must(os.Symlink(filepath.Join(e.bin, "danger"), filepath.Join(links, "innocent")))
	must(os.Link(filepath.Join(e.bin, "danger"), filepath.Join(links, "hardlinked")))
	must(os.Symlink(rm, filepath.Join(links, "remove")))
	evil := filepath.Join(e.root, "evil")
	must(os.MkdirAll(evil, 0o755))
	must(os.Symlink(rm, filepath.Join(evil, "tidy")))
	victim := filepath.Join(e.root, "victim")
	must(os.WriteFile(victim, []byte("keep me"), 0o644))

	e.start()
	audit := newAuditLog(0)
	c := e.connect(audit)
	mustActivate(t, c, protocol.Persona{Name: "locked", RestrictedCommands: []string{"rm", "danger", "/sbin/shutdown"}})

	cases := []struct {
		name string
		req  protocol.Exec
	}{
		{"name", protocol.Exec{Command: "rm", Args: []string{victim}}},
		{"/bin/rm", protocol.Exec{Command: "/bin/rm", Args: []string{victim}}},
		{"/usr/bin/rm", protocol.Exec{Command: "/usr/bin/rm", Args: []string{victim}}},
		{"./rm with cwd", protocol.Exec{Command: "./rm", Args: []string{victim}, Cwd: filepath.Dir(rm)}},
		{"../ path", protocol.Exec{Command: "../bin/rm", Args: []string{victim}, Cwd: "/usr/lib"}},
		{"symlink to rm", protocol.Exec{Command: filepath.Join(links, "remove"), Args: []string{victim}}},
		{"relative symlink", protocol.Exec{Command: "./remove", Args: []string{victim}, Cwd: links}},
		{"test command by name", protocol.Exec{Command: "danger"}},
		{"test command by path", protocol.Exec{Command: filepath.Join(e.bin, "danger")}},
		{"symlink to test command", protocol.Exec{Command: filepath.Join(links, "innocent")}},
		{"hard link to test command", protocol.Exec{Command: filepath.Join(links, "hardlinked")}},
		{"PATH in the request env", protocol.Exec{Command: "tidy", Args: []string{victim}, Env: map[string]string{"PATH": evil}}},
		{"absolute restriction by path", protocol.Exec{Command: "/sbin/shutdown", Args: []string{"--help"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := run(t, c, tc.req)
			code := errCode(err)
			// A request may not set PATH: refused as a bad request naming
			// it, before anything is resolved.
			if tc.name == "PATH in the request env" {
				if code != protocol.CodeBadRequest || !strings.Contains(err.Error(), "PATH") {
					t.Fatalf("want bad_request naming PATH, got %v %+v", err, res)
				}
				return
			}
			if tc.name == "absolute restriction by path" && code == protocol.CodeNotFound {
				return // no /sbin/shutdown on this machine: nothing to bypass
			}
			if code != protocol.CodeDenied {
				t.Fatalf("want denied, got %v %+v", err, res)
			}
		})
	}
	// A hard link to the real rm, where the file system allows one.
	if err := os.Link(rm, filepath.Join(links, "rmhard")); err == nil {
		if _, err := run(t, c, protocol.Exec{Command: filepath.Join(links, "rmhard"), Args: []string{victim}}); errCode(err) != protocol.CodeDenied {
			t.Errorf("hard link to rm: %v", err)
		}
	} else {
		t.Logf("hard link to %s not possible here (%v); the hard link case is covered by the test command", rm, err)
	}
	if data, err := os.ReadFile(victim); err != nil || string(data) != "keep me" {
		t.Fatalf("victim file touched: %q %v", data, err)
	}
	audit.waitFor(t, "denial events", func(evs []protocol.AuditEvent) bool {
		n := 0
		for _, ev := range evs {
			if ev.Type == protocol.AuditDenial && ev.Route == protocol.RouteDenied {
				n++
			}
		}
		return n >= 10
	})
}

func TestAllowlist(t *testing.T) {
	e := newEnv(t)
	impostor := filepath.Join(e.root, "links", "echo")
	if err := os.WriteFile(impostor, []byte("#!/bin/sh\necho impostor\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.start()
	c := e.connect(nil)
	mustActivate(t, c, protocol.Persona{
		Name:             "narrow",
		AllowedCommands:  []string{"echo", "env"},
		CommandOverrides: map[string]string{"deploy": "#!/bin/sh\necho deployed\n"},
	})
	if res := mustRun(t, c, protocol.Exec{Command: "echo", Args: []string{"hi"}}); res.Stdout != "hi\n" {
		t.Errorf("allowed: %+v", res)
	}
	if res := mustRun(t, c, protocol.Exec{Command: "deploy"}); res.Stdout != "deployed\n" {
		t.Errorf("override in allowlist mode: %+v", res)
	}
	for _, req := range []protocol.Exec{
		{Command: "true"},
		{Command: "danger"},
		{Command: impostor},
		{Command: "./echo", Cwd: filepath.Dir(impostor)},
		{Command: "nonexistent-command"},
	} {
		if _, err := run(t, c, req); errCode(err) != protocol.CodeDenied {
			t.Errorf("%s: want denied, got %v", req.Command, err)
		}
	}
}

func procState(pid int) string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2 : i+3]
	}
	return "?"
}

func TestExecTimeoutKillsProcessGroup(t *testing.T) {
	e, c := startConnected(t)
	pids := filepath.Join(e.root, "pids")
	res := mustRun(t, c, protocol.Exec{
		Command:       "sh",
		Args:          []string{"-c", "sleep 300 & echo $! > " + pids + "; echo $$ >> " + pids + "; wait"},
		TimeoutMillis: 300,
	})
	if !res.TimedOut || res.Signal != "SIGKILL" {
		t.Fatalf("want a timeout killed by SIGKILL, got %+v", res)
	}
	t.Logf("exec took %.1f ms", res.DurationMillis)
	data, err := os.ReadFile(pids)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(data)) {
		pid, _ := strconv.Atoi(f)
		deadline := time.Now().Add(20 * time.Second)
		for {
			st := procState(pid)
			if st == "" {
				break // gone and reaped
			}
			if time.Now().After(deadline) {
				t.Fatalf("process %d still there (state %s)", pid, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func TestOutputTruncation(t *testing.T) {
	e := newEnv(t)
	e.start("--max-output", "4096")
	c := e.connect(nil)
	res := mustRun(t, c, protocol.Exec{Command: "head", Args: []string{"-c", "100000", "/dev/zero"}})
	if len(res.Stdout) != 4096 || !res.StdoutTruncated || res.StderrTruncated || res.ExitCode != 0 {
		t.Fatalf("daemon bound: len %d truncated %v exit %d", len(res.Stdout), res.StdoutTruncated, res.ExitCode)
	}
	res = mustRun(t, c, protocol.Exec{Command: "sh", Args: []string{"-c", "head -c 5000 /dev/zero >&2; echo short"}, MaxOutput: 100})
	if len(res.Stderr) != 100 || !res.StderrTruncated || res.Stdout != "short\n" || res.StdoutTruncated {
		t.Fatalf("request bound: stderr %d %v stdout %q %v", len(res.Stderr), res.StderrTruncated, res.Stdout, res.StdoutTruncated)
	}
	// Stdin reaches the command.
	if res := mustRun(t, c, protocol.Exec{Command: "cat", Stdin: []byte("in\x00put")}); res.Stdout != "in\x00put" {
		t.Fatalf("stdin: %q", res.Stdout)
	}
}

func TestStreamingChunksBeforeResult(t *testing.T) {
	e, c := startConnected(t)
	fifo := filepath.Join(e.root, "gate")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	type chunk struct {
		stream byte
		data   string
	}
	var mu sync.Mutex
	var chunks []chunk
	first := make(chan struct{})
	var once sync.Once
	var res protocol.ExecResult
	done := make(chan error, 1)
	go func() {
		// The command prints, then waits on the fifo: the first chunk must
		// arrive while it is still running.
		done <- c.Call(ctxT(t), protocol.TypeExec, protocol.Exec{
			Command: "sh", Args: []string{"-c", "echo one; echo err >&2; read x < " + fifo + "; echo two"}, Stream: true,
		}, &res, func(s byte, d []byte) {
			mu.Lock()
			chunks = append(chunks, chunk{s, string(d)})
			mu.Unlock()
			once.Do(func() { close(first) })
		})
	}()
	select {
	case <-first:
	case err := <-done:
		t.Fatalf("call finished before any chunk: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no chunk while the command runs")
	}
	select {
	case err := <-done:
		t.Fatalf("result arrived while the command still waits: %v", err)
	default:
	}
	release(t, fifo, done)
	var out, errOut string
	mu.Lock()
	for _, ch := range chunks {
		if ch.stream == protocol.StreamStdout {
			out += ch.data
		} else {
			errOut += ch.data
		}
	}
	mu.Unlock()
	if out != "one\ntwo\n" || errOut != "err\n" {
		t.Fatalf("streamed %q / %q", out, errOut)
	}
	if res.Stdout != "" || res.Stderr != "" || res.ExitCode != 0 {
		t.Fatalf("final result carries output: %+v", res)
	}
}

func TestNotFoundAndNotExecutable(t *testing.T) {
	e := newEnv(t)
	plain := filepath.Join(e.bin, "plainfile")
	if err := os.WriteFile(plain, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.start()
	c := e.connect(nil)
	for _, tc := range []struct {
		req  protocol.Exec
		code string
	}{
		{protocol.Exec{Command: "no-such-command-here"}, protocol.CodeNotFound},
		{protocol.Exec{Command: "/no/such/path"}, protocol.CodeNotFound},
		{protocol.Exec{Command: "plainfile"}, protocol.CodeNotExecutable},
		{protocol.Exec{Command: plain}, protocol.CodeNotExecutable},
		{protocol.Exec{Command: "/etc"}, protocol.CodeNotExecutable},
		{protocol.Exec{Command: "true", Cwd: "relative"}, protocol.CodeBadRequest},
		{protocol.Exec{Command: ""}, protocol.CodeBadRequest},
		{protocol.Exec{Command: "rm\x00"}, protocol.CodeBadRequest},
		{protocol.Exec{Command: "echo", Args: []string{"a\x00b"}}, protocol.CodeBadRequest},
	} {
		_, err := run(t, c, tc.req)
		if errCode(err) != tc.code {
			t.Errorf("%q: want %s, got %v", tc.req.Command, tc.code, err)
		} else if pe := err.(*protocol.Error); tc.req.Command != "" && pe.Command != tc.req.Command {
			t.Errorf("%q: error names %q", tc.req.Command, pe.Command)
		}
	}
	// A failing command is a result, not an error.
	if res := mustRun(t, c, protocol.Exec{Command: "sh", Args: []string{"-c", "exit 7"}}); res.ExitCode != 7 {
		t.Errorf("exit code: %+v", res)
	}
}

func TestPersistenceAcrossKill9(t *testing.T) {
	e := newEnv(t)
	d := e.start()
	c := e.connect(nil)
	p := personaA(e)
	p.CommandOverrides = map[string]string{"deploy": "#!/bin/sh\necho inline-deploy \"$@\"\n"}
	mustActivate(t, c, p)
	d.Kill() // SIGKILL

	d2 := e.start()
	c = e.connect(nil)
	ack := c.Hello()
	if ack.Active == nil || ack.Active.Persona.Name != "alpha" || ack.Active.ActivationID != "act-alpha" {
		t.Fatalf("after kill -9: active %+v", ack.Active)
	}
	if env := guestEnv(t, c); env["APP_ENV"] != "staging" || env["ONLY_A"] != "a" {
		t.Errorf("environment not restored: %v", env)
	}
	if _, err := run(t, c, protocol.Exec{Command: "danger"}); errCode(err) != protocol.CodeDenied {
		t.Errorf("routing not restored: %v", err)
	}
	if res := mustRun(t, c, protocol.Exec{Command: "deploy", Args: []string{"x"}}); res.Stdout != "inline-deploy x\n" || res.Route != protocol.RouteOverride {
		t.Errorf("override not restored: %+v", res)
	}
	if pre, _ := os.ReadFile(e.root + "/pre.log"); strings.Count(string(pre), "\n") != 1 {
		t.Errorf("pre script re-run: %q", pre)
	}
	if post, _ := os.ReadFile(e.root + "/post.log"); strings.Count(string(post), "\n") != 1 {
		t.Errorf("post script re-run: %q", post)
	}
	c.Close(nil)
	// A clean stop and start keep it too.
	d2.term(t)
	e.start()
	if ack := e.connect(nil).Hello(); ack.Active == nil || ack.Active.Persona.Name != "alpha" {
		t.Fatalf("after SIGTERM and restart: active %+v", ack.Active)
	}
}

// waitAcked waits until the guest has recorded the host's acknowledgement
// of every audit event up to upTo in its state directory.
func (e *env) waitAcked(upTo uint64) {
	e.t.Helper()
	testproc.WaitWithin(e.t, 30*time.Second, fmt.Sprintf("the guest's acknowledgement of seq %d", upTo), func() bool {
		b, err := os.ReadFile(filepath.Join(e.state, "audit-ack.json"))
		if err != nil {
			return false
		}
		var a struct {
			AckedUpTo uint64 `json:"acked_up_to"`
		}
		return json.NewDecoder(bytes.NewReader(b)).Decode(&a) == nil && a.AckedUpTo >= upTo
	})
}

func TestAuditSpoolResentWithoutLossOrDuplicates(t *testing.T) {
	e := newEnv(t)
	d := e.start()
	// Session 1 acknowledges only seq 1.
	a1 := newAuditLog(1)
	c1 := e.connect(a1)
	mustActivate(t, c1, protocol.Persona{Name: "aud", RestrictedCommands: []string{"danger"}}) // seq 1
	for range 2 {
		if _, err := run(t, c1, protocol.Exec{Command: "danger"}); errCode(err) != protocol.CodeDenied { // seq 2, 3
			t.Fatal(err)
		}
	}
	a1.waitFor(t, "seq 3", func(evs []protocol.AuditEvent) bool {
		return slices.ContainsFunc(evs, func(ev protocol.AuditEvent) bool { return ev.Seq == 3 })
	})
	spool := c1.Hello().SpoolID
	if a1.spool != spool {
		t.Fatalf("batch spool id %q, hello %q", a1.spool, spool)
	}
	c1.Close(nil)

	// Session 2 (a reconnect) gets 2 and 3 again, never 1, and acks all.
	a2 := newAuditLog(0)
	c2 := e.connect(a2)
	if p := c2.Hello().PendingAudit; p != 2 {
		t.Errorf("pending after reconnect: %d", p)
	}
	a2.waitFor(t, "seq 2 and 3", func(evs []protocol.AuditEvent) bool { return len(evs) >= 2 })
	if s := a2.seqs(); !slices.Equal(s, []uint64{2, 3}) {
		t.Fatalf("after reconnect got seqs %v, want [2 3]", s)
	}
	ev := a2.get()[0]
	if ev.Type != protocol.AuditDenial || ev.Command != "danger" || ev.Persona != "aud" || ev.Time.IsZero() {
		t.Errorf("event: %+v", ev)
	}
	// The host's acknowledgement is in flight when the test closes the
	// session; an acknowledgement the guest never read is re-sent, which is
	// the guarantee (at least once) but not what this test looks at.
	e.waitAcked(3)
	// One more, left unacknowledged by killing the daemon before any ack:
	// session 3 acks nothing above 3.
	c2.Close(nil)
	a3 := newAuditLog(3)
	c3 := e.connect(a3)
	if _, err := run(t, c3, protocol.Exec{Command: "danger"}); errCode(err) != protocol.CodeDenied { // seq 4
		t.Fatal(err)
	}
	a3.waitFor(t, "seq 4", func(evs []protocol.AuditEvent) bool { return len(evs) >= 1 })
	d.Kill()

	// After a restart: same spool, 4 is sent again, the sequence goes on.
	e.start()
	a4 := newAuditLog(0)
	c4 := e.connect(a4)
	if c4.Hello().SpoolID != spool {
		t.Fatalf("spool id changed across restart")
	}
	a4.waitFor(t, "seq 4", func(evs []protocol.AuditEvent) bool { return len(evs) >= 1 })
	if _, err := run(t, c4, protocol.Exec{Command: "danger"}); errCode(err) != protocol.CodeDenied { // seq 5
		t.Fatal(err)
	}
	a4.waitFor(t, "seq 5", func(evs []protocol.AuditEvent) bool { return len(evs) >= 2 })
	if s := a4.seqs(); !slices.Equal(s, []uint64{4, 5}) {
		t.Fatalf("after restart got seqs %v, want [4 5]", s)
	}
}

func TestFlags(t *testing.T) {
	out, err := exec.Command(binary, "--help").Output()
	if err != nil || !bytes.Contains(out, []byte("--listen ENDPOINT")) || !bytes.Contains(out, []byte("--state-dir DIR")) {
		t.Errorf("--help: %v %s", err, out)
	}
	out, err = exec.Command(binary, "--version").Output()
	if err != nil || !bytes.Contains(out, []byte(" "+testbin.Version()+" ")) {
		t.Errorf("--version: %v %s", err, out)
	}
	for _, bad := range [][]string{{"--listen", "tcp:1"}, {"--listen", "vsock:notaport"}, {"--bogus"}, {"--max-exec", "0"}} {
		cmd := exec.Command(binary, bad...)
		if err := cmd.Run(); cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 {
			t.Errorf("%v: want exit 2, got %v", bad, err)
		}
	}
}

func TestSIGTERMStopsCleanly(t *testing.T) {
	e := newEnv(t)
	d := e.start()
	c := e.connect(nil)
	mustRun(t, c, protocol.Exec{Command: "true"})
	d.term(t)
}

func rssKiB(pid int) float64 {
	data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return n
		}
	}
	return 0
}

// BenchmarkExecRoundTrip measures an exec of /bin/true through the daemon
// (routing, fork/exec, wait, answer) under a persona with restrictions, and
// reports the daemon's RSS before and after.
func BenchmarkExecRoundTrip(b *testing.B) {
	e := newEnv(b)
	d := e.start()
	idle := rssKiB(d.Cmd.Process.Pid)
	c := e.connect(nil)
	mustActivate(e.t, c, protocol.Persona{Name: "bench", RestrictedCommands: []string{"rm", "shutdown"},
		EnvironmentVariables: map[string]string{"APP_ENV": "bench"}})
	b.ResetTimer()
	for b.Loop() {
		var res protocol.ExecResult
		if err := c.Call(context.Background(), protocol.TypeExec, protocol.Exec{Command: "/bin/true"}, &res, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(idle, "idle-rss-KiB")
	b.ReportMetric(rssKiB(d.Cmd.Process.Pid), "rss-after-KiB")
}

func TestExecLimitAndAuditExec(t *testing.T) {
	e := newEnv(t)
	e.start("--max-exec", "1", "--audit-exec")
	audit := newAuditLog(0)
	c := e.connect(audit)
	fifo := filepath.Join(e.root, "hold")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		var res protocol.ExecResult
		done <- c.Call(ctxT(t), protocol.TypeExec, protocol.Exec{
			Command: "sh", Args: []string{"-c", "echo started; read x < " + fifo}, Stream: true,
		}, &res, func(byte, []byte) { once.Do(func() { close(started) }) })
	}()
	<-started
	// At the limit an exec waits for a slot (--max-exec used to refuse it
	// at once): one with time to wait runs once the slot is free...
	queued := make(chan error, 1)
	go func() {
		res, err := run(t, c, protocol.Exec{Command: "echo", Args: []string{"queued"}, TimeoutMillis: 60000})
		if err == nil && strings.TrimSpace(res.Stdout) != "queued" {
			err = fmt.Errorf("queued exec printed %q", res.Stdout)
		}
		queued <- err
	}()
	// ...one whose timeout passes first is answered busy.
	if _, err := run(t, c, protocol.Exec{Command: "true", TimeoutMillis: 300}); errCode(err) != protocol.CodeBusy {
		t.Fatalf("second exec with --max-exec 1: want busy after its timeout, got %v", err)
	}
	release(t, fifo, done)
	if err := <-queued; err != nil {
		t.Fatalf("queued exec: %v", err)
	}
	mustRun(t, c, protocol.Exec{Command: "true", Actor: "alice"})
	audit.waitFor(t, "exec events", func(evs []protocol.AuditEvent) bool {
		return slices.ContainsFunc(evs, func(ev protocol.AuditEvent) bool {
			return ev.Type == protocol.AuditExec && ev.Command == "true" && ev.Actor == "alice" && ev.Route == protocol.RouteDefault
		})
	})
}

// Commands running while personas change see one persona's table and
// environment, never a mix of two.
func TestActivationIsAtomicForConcurrentExecs(t *testing.T) {
	_, c := startConnected(t)
	persona := func(tag string) protocol.Persona {
		return protocol.Persona{
			Name:                 strings.ToLower(tag),
			EnvironmentVariables: map[string]string{"TAG": tag},
			CommandOverrides:     map[string]string{"which-persona": "#!/bin/sh\necho " + tag + " $TAG\n"},
		}
	}
	mustActivate(t, c, persona("X"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]int{}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := run(t, c, protocol.Exec{Command: "which-persona"})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen[res.Stdout+" persona="+*res.Persona]++
				mu.Unlock()
			}
		}()
	}
	for i := range 10 {
		mustActivate(t, c, persona([]string{"Y", "X"}[i%2]))
	}
	close(stop)
	wg.Wait()
	for out := range seen {
		if out != "X X\n persona=x" && out != "Y Y\n persona=y" {
			t.Errorf("a command saw a mix: %q (all: %v)", out, seen)
		}
	}
	t.Logf("outcomes: %s", strings.ReplaceAll(fmt.Sprint(seen), "\n", "\\n"))
}

func TestInvalidPersonaFailsAndDeactivationIsAudited(t *testing.T) {
	e := newEnv(t)
	e.start()
	audit := newAuditLog(0)
	c := e.connect(audit)
	mustActivate(t, c, personaA(e))
	for _, bad := range []protocol.Persona{
		{Name: "bad-override", CommandOverrides: map[string]string{"ls": "relative/path"}},
		{Name: "bad-env", EnvironmentVariables: map[string]string{"NOT-A-NAME": "x"}},
		{Name: "Bad Name"},
		{Name: "bad-restriction", RestrictedCommands: []string{"bin/rm"}},
	} {
		res := activate(t, c, bad)
		if res.Result != protocol.ResultFailed || res.Error == "" || res.Active == nil || res.Active.Persona.Name != "alpha" {
			t.Errorf("%s: want failed with alpha still active, got %+v", bad.Name, res)
		}
	}
	if env := guestEnv(t, c); env["ONLY_A"] != "a" {
		t.Errorf("environment changed by a failed activation: %v", env)
	}
	var d protocol.ActivateResult
	if err := c.Call(ctxT(t), protocol.TypeDeactivate, protocol.Deactivate{ActivationID: "deact-1", Actor: "bob"}, &d, nil); err != nil || d.Result != protocol.ResultDeactivated {
		t.Fatalf("deactivate: %+v %v", d, err)
	}
	audit.waitFor(t, "activation, failures and deactivation", func(evs []protocol.AuditEvent) bool {
		var activated, failed, deactivated int
		for _, ev := range evs {
			switch {
			case ev.Type == protocol.AuditActivation && ev.Result == protocol.ResultActivated && ev.Persona == "alpha" && ev.Actor == "tester":
				activated++
			case ev.Type == protocol.AuditActivation && ev.Result == protocol.ResultFailed:
				failed++
			case ev.Type == protocol.AuditDeactivation && ev.Result == protocol.ResultDeactivated && ev.Persona == "alpha" &&
				ev.ActivationID == "deact-1" && ev.Actor == "bob":
				deactivated++
			}
		}
		return activated == 1 && failed == 4 && deactivated == 1
	})
}

// TestCommandsListedByName: ps, top and pgrep list a command the daemon
// runs under its own name (through a link in the run directory), not as
// "3" (the descriptor the checked file is executed through).
func TestCommandsListedByName(t *testing.T) {
	_, c := startConnected(t)
	for _, cmd := range []string{"cat", "/bin/cat"} {
		res := mustRun(t, c, protocol.Exec{Command: cmd, Args: []string{"/proc/self/comm"}})
		if res.ExitCode != 0 || res.Stdout != "cat\n" {
			t.Errorf("%s: listed as %q (%+v)", cmd, res.Stdout, res)
		}
	}
}
