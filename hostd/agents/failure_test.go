package agents

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/internal/teststore"
	"github.com/vmpersona/vmpersona/protocol"
)

// hungAgent is a unix listener that accepts connections and never answers
// them: a guest whose daemon hangs.
type hungAgent struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  chan struct{}
}

func newHungAgent(t testing.TB) *hungAgent {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(testproc.ShortDir(t), "hung.sock"))
	if err != nil {
		t.Fatal(err)
	}
	h := &hungAgent{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
		}
	}()
	t.Cleanup(h.close)
	return h
}

func (h *hungAgent) endpoint() Endpoint {
	return Endpoint{Kind: KindUnix, Path: h.ln.Addr().String()}
}

func (h *hungAgent) accepted() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

func (h *hungAgent) close() {
	h.ln.Close()
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		c.Close()
	}
	h.conns = nil
}

// notConnectedOrDeadline is what a call to a hung or absent agent may return.
func notConnectedOrDeadline(err error) bool {
	return errors.Is(err, ErrNotConnected) || errors.Is(err, context.DeadlineExceeded)
}

func TestHungAgentDoesNotBlockOthers(t *testing.T) {
	good := newGuest(t)
	hung := newHungAgent(t)
	h := newHost(t, func(c *Config) { c.DialTimeout = 300 * time.Millisecond })
	h.add("good", good.endpoint())
	h.add("hung", hung.endpoint())
	h.waitState("good", StateConnected)
	testproc.WaitFor(t, "a connection to the hung agent", func() bool { return hung.accepted() > 0 })

	p := h.createPersona(hardened())
	start := time.Now()
	_, err := h.m.Activate(ctxTimeout(t, 2*time.Second), "hung", p, "alice", "api", 0)
	if !notConnectedOrDeadline(err) {
		t.Errorf("Activate on a hung agent: %v, want ErrNotConnected or DeadlineExceeded", err)
	}
	_, err = h.m.Exec(ctxTimeout(t, 2*time.Second), "hung", protocol.Exec{Command: "true"}, nil)
	if !notConnectedOrDeadline(err) {
		t.Errorf("Exec on a hung agent: %v, want ErrNotConnected or DeadlineExceeded", err)
	}
	t.Logf("calls to the hung agent returned after %v", time.Since(start))

	// The hung agent never gets past the handshake: it is retried, never
	// published, and says why.
	testproc.WaitFor(t, "a second attempt on the hung agent", func() bool { return hung.accepted() > 1 })
	st, _ := h.m.Get("hung")
	if st.State == StateConnected || !strings.Contains(st.LastError, "handshake") {
		t.Errorf("hung agent status: %+v", st)
	}
	out, err := h.m.Exec(ctxTimeout(t, 10*time.Second), "good", protocol.Exec{Command: "echo", Args: []string{"ok"}}, nil)
	if err != nil || out.Stdout != "ok\n" {
		t.Errorf("Exec on the good agent: %+v, %v", out, err)
	}
	if n := len(h.m.List()); n != 2 {
		t.Errorf("List: %d agents", n)
	}
}

// TestStoppedAgentMidSession stops a connected guest daemon (SIGSTOP): the
// session is up but nothing answers. Calls end at their deadline, calls to
// another instance and List/Get go on meanwhile, heartbeats end the session,
// and the agent reconnects once the daemon runs again.
func TestStoppedAgentMidSession(t *testing.T) {
	stopped := newGuest(t)
	good := newGuest(t)
	h := newHost(t, func(c *Config) { c.Heartbeat = 300 * time.Millisecond })
	h.add("stopped", stopped.endpoint())
	h.add("good", good.endpoint())
	h.waitState("stopped", StateConnected)
	h.waitState("good", StateConnected)

	stopped.Signal(syscall.SIGSTOP)
	defer stopped.Signal(syscall.SIGCONT)

	_, err := h.m.Exec(ctxTimeout(t, 200*time.Millisecond), "stopped", protocol.Exec{Command: "true"}, nil)
	if !notConnectedOrDeadline(err) {
		t.Errorf("Exec on a stopped agent: %v, want DeadlineExceeded (or ErrNotConnected)", err)
	}

	// A call without its own deadline pending on the stopped agent does
	// not hold up anything else: it is still pending after the good
	// agent's calls complete, and ends when cancelled.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pending := make(chan error, 1)
	p := h.createPersona(hardened())
	go func() {
		_, err := h.m.Activate(ctx, "stopped", p, "alice", "api", 0)
		pending <- err
	}()
	for range 5 {
		if _, err := h.m.Exec(ctxTimeout(t, 10*time.Second), "good", protocol.Exec{Command: "true"}, nil); err != nil {
			t.Fatalf("Exec on the good agent: %v", err)
		}
		h.m.List()
		h.m.Get("stopped")
	}
	select {
	case err := <-pending:
		// Heartbeats may have ended the stopped session already.
		if !errors.Is(err, ErrNotConnected) {
			t.Fatalf("Activate on the stopped agent ended early: %v", err)
		}
	default:
		cancel()
		if err := <-pending; !errors.Is(err, context.Canceled) && !errors.Is(err, ErrNotConnected) {
			t.Errorf("cancelled Activate: %v, want context.Canceled", err)
		}
	}

	// Missed heartbeats end the session, after an unanswered probe.
	st := h.waitState("stopped", StateDisconnected)
	t.Logf("stopped agent: %s (%s)", st.State, st.LastError)
	if n := value(t, h.met.SessionsEnded.WithLabelValues("heartbeat")); n != 1 {
		t.Errorf("sessions ended by heartbeat: %v, want 1", n)
	}
	if n := value(t, h.met.LivenessProbes.WithLabelValues("unanswered")); n != 1 {
		t.Errorf("unanswered liveness probes: %v, want 1", n)
	}
	if _, err := h.m.Exec(ctxTimeout(t, 2*time.Second), "stopped", protocol.Exec{Command: "true"}, nil); !notConnectedOrDeadline(err) {
		t.Errorf("Exec after the session ended: %v", err)
	}
	stopped.Signal(syscall.SIGCONT)
	h.waitState("stopped", StateConnected)
	if _, err := h.m.Exec(ctxTimeout(t, 10*time.Second), "stopped", protocol.Exec{Command: "true"}, nil); err != nil {
		t.Errorf("Exec after the daemon resumed: %v", err)
	}
}

func TestAbsentSocket(t *testing.T) {
	h := newHost(t, nil)
	h.add("vm", Endpoint{Kind: KindUnix, Path: filepath.Join(testproc.ShortDir(t), "nobody.sock")})
	_, err := h.m.Exec(ctxTimeout(t, 5*time.Second), "vm", protocol.Exec{Command: "true"}, nil)
	if !errors.Is(err, ErrNotConnected) {
		t.Errorf("Exec: %v, want ErrNotConnected", err)
	}
	_, err = h.m.Activate(context.Background(), "vm", hardened(), "alice", "api", 0)
	if !errors.Is(err, ErrNotConnected) {
		t.Errorf("Activate: %v, want ErrNotConnected", err)
	}
	_, err = h.m.Deactivate(context.Background(), "vm", "alice", 0)
	if !errors.Is(err, ErrNotConnected) {
		t.Errorf("Deactivate: %v, want ErrNotConnected", err)
	}
	st := h.waitState("vm", StateDisconnected)
	if !strings.Contains(st.LastError, "no such file") {
		t.Errorf("LastError = %q, want the dial error", st.LastError)
	}
	if got := value(t, h.met.Activations.WithLabelValues("hardened", "error")); got != 0 {
		t.Errorf("an activation never sent was counted: %v", got)
	}
}

func TestGuestKilledAndRestarted(t *testing.T) {
	g := newGuest(t)
	h := newHost(t, nil)
	h.add("vm", g.endpoint())
	first := h.waitState("vm", StateConnected)

	g.Kill()
	st := h.waitState("vm", StateDisconnected)
	if st.Active != nil || st.AgentVersion != "" {
		t.Errorf("status of a disconnected agent keeps session data: %+v", st)
	}
	if got := value(t, h.met.AgentsConnected); got != 0 {
		t.Errorf("agents connected = %v after the guest died", got)
	}
	if _, err := h.m.Exec(ctxTimeout(t, 5*time.Second), "vm", protocol.Exec{Command: "true"}, nil); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Exec on a dead guest: %v, want ErrNotConnected", err)
	}

	g.Start()
	again := h.waitState("vm", StateConnected)
	if !again.ConnectedAt.After(first.ConnectedAt) {
		t.Errorf("reconnected at %v, first connection at %v", again.ConnectedAt, first.ConnectedAt)
	}
	if got := value(t, h.met.AgentsConnected); got != 1 {
		t.Errorf("agents connected = %v after reconnecting", got)
	}
	if out, err := h.m.Exec(ctxTimeout(t, 10*time.Second), "vm", protocol.Exec{Command: "true"}, nil); err != nil || out.ExitCode != 0 {
		t.Errorf("Exec after reconnecting: %+v, %v", out, err)
	}
}

// TestAuditExactlyOnce runs commands, kills the guest right after the last
// one (before it may have seen the host's acknowledgement), restarts the
// guest and the host's manager, and expects each guest event stored once.
func TestAuditExactlyOnce(t *testing.T) {
	h := newHost(t, nil)
	g := h.connectGuest("vm", "--audit-exec")

	const rounds, perRound = 3, 4
	guestEvents := func() []store.AuditEvent {
		var out []store.AuditEvent
		for _, ev := range h.audit(store.AuditQuery{Instance: "vm"}) {
			if ev.Source == store.SourceGuest {
				out = append(out, ev)
			}
		}
		return out
	}
	execs := func(evs []store.AuditEvent) int {
		n := 0
		for _, ev := range evs {
			if ev.Command == "true" || strings.HasSuffix(ev.Command, "/true") {
				n++
			}
		}
		return n
	}
	for round := range rounds {
		for range perRound {
			if _, err := h.m.Exec(ctxTimeout(t, 10*time.Second), "vm", protocol.Exec{Command: "true"}, nil); err != nil {
				t.Fatal(err)
			}
		}
		// Stored once; the acknowledgement may still be on its way when
		// the guest or the host goes down.
		testproc.WaitFor(t, "this round's exec events", func() bool { return execs(guestEvents()) >= (round+1)*perRound })
		switch round {
		case 0: // the guest dies, maybe with unacknowledged events
			g.Kill()
			g.Start()
		case 1: // the host daemon restarts
			h.m.Close()
			h.startManager()
			h.add("vm", g.endpoint())
		}
		h.waitState("vm", StateConnected)
	}
	want := rounds * perRound
	testproc.WaitFor(t, "every exec event", func() bool { return execs(guestEvents()) >= want })

	// One more reconnect: anything unacknowledged would come again now.
	g.Kill()
	g.Start()
	h.waitState("vm", StateConnected)
	if _, err := h.m.Exec(ctxTimeout(t, 10*time.Second), "vm", protocol.Exec{Command: "true"}, nil); err != nil {
		t.Fatal(err)
	}
	want++
	testproc.WaitFor(t, "the last exec event", func() bool { return execs(guestEvents()) >= want })

	evs := guestEvents()
	if n := execs(evs); n != want {
		t.Errorf("%d exec events stored, want %d", n, want)
	}
	seen := make(map[string]bool)
	for _, ev := range evs {
		key := fmt.Sprintf("%s/%d", ev.GuestSpool, ev.GuestSeq)
		if ev.GuestSpool == "" || ev.GuestSeq == 0 {
			t.Errorf("guest event without its spool position: %+v", ev)
		}
		if seen[key] {
			t.Errorf("guest event stored twice: %+v", ev)
		}
		seen[key] = true
	}
}

func TestSetEndpoint(t *testing.T) {
	a := newGuest(t)
	b := newGuest(t)
	h := newHost(t, nil)
	h.add("vm", a.endpoint())
	first := h.waitState("vm", StateConnected)
	p := h.createPersona(hardened())
	if _, err := h.m.Activate(ctxTimeout(t, 30*time.Second), "vm", p, "alice", "api", 0); err != nil {
		t.Fatal(err)
	}

	if err := h.m.SetEndpoint("vm", b.endpoint()); err != nil {
		t.Fatal(err)
	}
	testproc.WaitFor(t, "the session on the new endpoint", func() bool {
		st, _ := h.m.Get("vm")
		return st.State == StateConnected && st.ConnectedAt.After(first.ConnectedAt)
	})
	// b holds no persona: the record follows the guest now reached.
	if st, _ := h.m.Get("vm"); st.Active != nil {
		t.Errorf("active on the new endpoint: %+v", st.Active)
	}
	if rec := h.record("vm"); rec.Persona != nil {
		t.Errorf("record after the move: %+v", rec)
	}
	if err := h.m.SetEndpoint("nope", b.endpoint()); !errors.Is(err, ErrUnknownInstance) {
		t.Errorf("SetEndpoint unknown: %v", err)
	}
	if err := h.m.SetEndpoint("vm", Endpoint{Kind: "tcp"}); !errors.Is(err, ErrBadEndpoint) {
		t.Errorf("SetEndpoint bad: %v", err)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	g := newGuest(t)
	hung := newHungAgent(t)
	st := teststore.Open(t, t.TempDir())
	defer st.Close()
	if _, err := st.GetInstance("warm-up"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()

	m := NewManager(Config{Store: st, Logger: testLogger(t), Heartbeat: 200 * time.Millisecond, DialTimeout: 300 * time.Millisecond})
	m.Add("good", g.endpoint(), "static")
	m.Add("hung", hung.endpoint(), "static")
	m.Add("absent", Endpoint{Kind: KindUnix, Path: filepath.Join(testproc.ShortDir(t), "x.sock")}, "static")
	testproc.WaitFor(t, "good connected", func() bool { s, _ := m.Get("good"); return s.State == StateConnected })
	if _, err := m.Exec(ctxTimeout(t, 10*time.Second), "good", protocol.Exec{Command: "true"}, nil); err != nil {
		t.Fatal(err)
	}
	// A call in flight when Close comes.
	inFlight := make(chan error, 1)
	go func() {
		_, err := m.Exec(context.Background(), "good", protocol.Exec{Command: "sleep", Args: []string{"30"}}, nil)
		inFlight <- err
	}()
	testproc.WaitFor(t, "a connection to the hung agent", func() bool { return hung.accepted() > 0 })
	m.Close()
	if err := <-inFlight; !errors.Is(err, ErrNotConnected) && !errors.Is(err, context.Canceled) {
		// The Exec may also have found the session closed before sending.
		t.Logf("in-flight Exec after Close: %v", err)
	}
	if err := m.Add("late", g.endpoint(), "static"); !errors.Is(err, ErrManagerClosed) {
		t.Errorf("Add after Close: %v", err)
	}
	if len(m.List()) != 0 {
		t.Errorf("List after Close: %+v", m.List())
	}
	hung.close()

	after := runtime.NumGoroutine()
	for deadline := time.Now().Add(10 * time.Second); after > before && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		after = runtime.NumGoroutine()
	}
	if after > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after Close:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

// TestStoppedAgentBlockedWrite stops a connected guest daemon and sends it
// more than a socket buffer holds: the request's write blocks. The call still
// ends at its own deadline (DeadlineExceeded), not when the session's write
// timeout (here 3×5 s) gives up (which would be ErrNotConnected).
func TestStoppedAgentBlockedWrite(t *testing.T) {
	g := newGuest(t)
	h := newHost(t, func(c *Config) { c.Heartbeat = 5 * time.Second })
	h.add("vm", g.endpoint())
	h.waitState("vm", StateConnected)
	g.Signal(syscall.SIGSTOP)
	defer g.Signal(syscall.SIGCONT)

	big := make([]byte, 8<<20)
	_, err := h.m.Exec(ctxTimeout(t, 500*time.Millisecond), "vm", protocol.Exec{Command: "true", Stdin: big}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Exec blocked in its write: %v, want DeadlineExceeded", err)
	}
	// Other calls to the same agent are bounded by their own deadlines too.
	_, err = h.m.Exec(ctxTimeout(t, 200*time.Millisecond), "vm", protocol.Exec{Command: "true"}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Exec behind a blocked write: %v, want DeadlineExceeded", err)
	}
	if st, _ := h.m.Get("vm"); st.Name != "vm" {
		t.Errorf("Get: %+v", st)
	}
}
