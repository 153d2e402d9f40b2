package agents

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vmpersona/vmpersona/hostd/metrics"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/internal/testguest"
	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/internal/teststore"
	"github.com/vmpersona/vmpersona/protocol"
)

// guest is a real vmpersona-guestd process listening on a unix socket.
type guest struct{ *testguest.Guest }

// newGuest starts a guest daemon with the given extra flags.
func newGuest(t testing.TB, extra ...string) *guest {
	t.Helper()
	return &guest{testguest.Start(t, extra, nil)}
}

func (g *guest) endpoint() Endpoint { return Endpoint{Kind: KindUnix, Path: g.Sock} }

// host is the host side under test: a real Badger store and a manager.
type host struct {
	t   testing.TB
	dir string
	st  *store.Store
	met *metrics.Metrics
	m   *Manager
	cfg Config
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newHost opens a store in a fresh directory and starts a manager on it.
// configure may adjust the configuration before the manager starts.
func newHost(t testing.TB, configure func(*Config)) *host {
	t.Helper()
	h := &host{t: t, dir: t.TempDir()}
	h.st = teststore.Open(t, h.dir)
	t.Cleanup(func() { h.st.Close() })
	h.cfg = Config{
		Store: h.st, Logger: testLogger(t),
		Heartbeat: 500 * time.Millisecond, DialTimeout: 2 * time.Second, CallTimeout: 20 * time.Second,
	}
	if configure != nil {
		configure(&h.cfg)
	}
	h.startManager()
	return h
}

// startManager starts a fresh manager (fresh metrics) on the host's store,
// as a restarted host daemon would.
func (h *host) startManager() {
	h.met = metrics.New()
	h.cfg.Metrics = h.met
	m := NewManager(h.cfg)
	h.m = m
	h.t.Cleanup(m.Close)
}

// connectGuest starts a guest daemon with the extra flags given, declares
// it as instance name and waits for its session.
func (h *host) connectGuest(name string, extra ...string) *guest {
	h.t.Helper()
	g := newGuest(h.t, extra...)
	h.add(name, g.endpoint())
	h.waitState(name, StateConnected)
	return g
}

func (h *host) add(name string, ep Endpoint) {
	h.t.Helper()
	if err := h.m.Add(name, ep, "static"); err != nil {
		h.t.Fatal(err)
	}
}

func (h *host) waitState(name, state string) AgentStatus {
	h.t.Helper()
	var st AgentStatus
	testproc.WaitFor(h.t, name+" "+state, func() bool {
		var err error
		st, err = h.m.Get(name)
		if err != nil {
			h.t.Fatal(err)
		}
		return st.State == state
	})
	return st
}

func (h *host) record(name string) store.InstanceRecord {
	h.t.Helper()
	rec, err := h.st.GetInstance(name)
	if err != nil {
		h.t.Fatalf("instance record of %s: %v", name, err)
	}
	return rec
}

func (h *host) audit(q store.AuditQuery) []store.AuditEvent {
	h.t.Helper()
	return teststore.Audit(h.t, h.st, q)
}

func (h *host) createPersona(p protocol.Persona) protocol.Persona {
	h.t.Helper()
	return teststore.CreatePersona(h.t, h.st, p)
}

// value reads a counter's or gauge's current value.
func value(t testing.TB, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

func histogramCount(t testing.TB, h prometheus.Histogram) uint64 {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.Histogram.GetSampleCount()
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func hardened() protocol.Persona {
	return protocol.Persona{
		Name:                 "hardened",
		EnvironmentVariables: map[string]string{"APP_ENV": "staging"},
		PreActivationScript:  "#!/bin/sh\necho preparing",
		PostActivationScript: "#!/bin/sh\ntest -n \"$APP_ENV\"",
		CommandOverrides:     map[string]string{"deploy": "#!/bin/sh\necho dry-run: \"$@\""},
		RestrictedCommands:   []string{"rm", "shutdown"},
	}
}

func TestConnectAndStatus(t *testing.T) {
	g := newGuest(t)
	h := newHost(t, nil)
	absent := Endpoint{Kind: KindUnix, Path: filepath.Join(testproc.ShortDir(t), "absent.sock")}
	h.add("vm-b", g.endpoint())
	h.add("vm-a", absent)

	st := h.waitState("vm-b", StateConnected)
	if st.Name != "vm-b" || st.Source != "static" || st.Endpoint != "unix:"+g.Sock {
		t.Errorf("status names: %+v", st)
	}
	if st.AgentVersion == "" || st.BootID == "" || st.ConnectedAt.IsZero() || st.LastError != "" {
		t.Errorf("status of a connected agent: %+v", st)
	}
	if st.Active != nil {
		t.Errorf("a fresh guest reports persona %+v", st.Active)
	}
	if got := value(t, h.met.AgentsConnected); got != 1 {
		t.Errorf("agents connected = %v, want 1", got)
	}

	list := h.m.List()
	if len(list) != 2 || list[0].Name != "vm-a" || list[1].Name != "vm-b" {
		t.Fatalf("List = %+v, want vm-a then vm-b", list)
	}
	if list[0].State == StateConnected {
		t.Errorf("agent on an absent socket is %s", list[0].State)
	}
	// A new store record says what the fresh guest holds: nothing.
	if rec := h.record("vm-b"); rec.Persona != nil || rec.BootID != st.BootID {
		t.Errorf("record after connect: %+v", rec)
	}

	if err := h.m.Add("vm-b", g.endpoint(), "static"); !errors.Is(err, ErrExists) {
		t.Errorf("second Add: %v, want ErrExists", err)
	}
	if _, err := h.m.Get("nope"); !errors.Is(err, ErrUnknownInstance) {
		t.Errorf("Get unknown: %v", err)
	}
	if _, err := h.m.Exec(context.Background(), "nope", protocol.Exec{Command: "true"}, nil); !errors.Is(err, ErrUnknownInstance) {
		t.Errorf("Exec unknown: %v", err)
	}

	h.m.Remove("vm-b")
	if got := value(t, h.met.AgentsConnected); got != 0 {
		t.Errorf("agents connected after Remove = %v, want 0", got)
	}
	if _, err := h.m.Get("vm-b"); !errors.Is(err, ErrUnknownInstance) {
		t.Errorf("Get after Remove: %v", err)
	}
}

func TestActivateExecDeactivate(t *testing.T) {
	h := newHost(t, nil)
	h.connectGuest("vm")
	p := h.createPersona(hardened())
	ctx := ctxTimeout(t, 30*time.Second)

	res, err := h.m.Activate(ctx, "vm", p, "alice", "api", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res.Result != protocol.ResultActivated || res.Active == nil || res.Active.Persona.Name != "hardened" {
		t.Fatalf("activate: %+v", res)
	}
	if len(res.Active.ActivationID) != 32 {
		t.Errorf("activation id %q is not 16 hex bytes", res.Active.ActivationID)
	}
	rec := h.record("vm")
	if rec.Persona == nil || rec.Persona.Name != "hardened" || rec.ActivationID != res.Active.ActivationID ||
		rec.Revision != p.Revision || rec.BootID == "" {
		t.Errorf("record after activation: %+v", rec)
	}
	if st, _ := h.m.Get("vm"); st.Active == nil || st.Active.ActivationID != res.Active.ActivationID {
		t.Errorf("status after activation: %+v", st.Active)
	}

	// An override runs the persona's script with the arguments.
	out, err := h.m.Exec(ctx, "vm", protocol.Exec{Command: "deploy", Args: []string{"v1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if out.Route != protocol.RouteOverride || out.ExitCode != 0 || !strings.Contains(out.Stdout, "dry-run: v1") {
		t.Errorf("override exec: %+v", out)
	}
	// A restricted command is refused before it runs.
	_, err = h.m.Exec(ctx, "vm", protocol.Exec{Command: "rm", Args: []string{"-rf", "/nonexistent"}}, nil)
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeDenied {
		t.Errorf("restricted exec: %v, want a denied *protocol.Error", err)
	}
	// A missing command is a refusal too, not a transport error.
	_, err = h.m.Exec(ctx, "vm", protocol.Exec{Command: "/nonexistent/cmd"}, nil)
	if !errors.As(err, &pe) || pe.Code != protocol.CodeNotFound {
		t.Errorf("missing command: %v, want a not_found *protocol.Error", err)
	}
	// Streamed output arrives through onOutput, in order.
	var streamed bytes.Buffer
	out, err = h.m.Exec(ctx, "vm", protocol.Exec{Command: "sh", Args: []string{"-c", "echo one; echo two; exit 3"}},
		func(stream byte, data []byte) {
			if stream == protocol.StreamStdout {
				streamed.Write(data)
			}
		})
	if err != nil {
		t.Fatal(err)
	}
	if out.ExitCode != 3 || out.Route != protocol.RouteDefault || streamed.String() != "one\ntwo\n" {
		t.Errorf("streamed exec: %+v, output %q", out, streamed.String())
	}

	// A failing pre-activation script aborts: nothing changes.
	bad := h.createPersona(protocol.Persona{Name: "broken", PreActivationScript: "#!/bin/sh\necho no >&2\nexit 7"})
	res, err = h.m.Activate(ctx, "vm", bad, "alice", "api", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res.Result != protocol.ResultAborted || res.Script == nil || res.Script.ExitCode != 7 {
		t.Errorf("aborted activation: %+v", res)
	}
	if rec := h.record("vm"); rec.Persona == nil || rec.Persona.Name != "hardened" {
		t.Errorf("record after an aborted activation: %+v", rec)
	}

	res, err = h.m.Deactivate(ctx, "vm", "alice", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res.Result != protocol.ResultDeactivated || res.Active != nil {
		t.Errorf("deactivate: %+v", res)
	}
	if rec := h.record("vm"); rec.Persona != nil {
		t.Errorf("record after deactivation: %+v", rec)
	}
	if st, _ := h.m.Get("vm"); st.Active != nil {
		t.Errorf("status after deactivation: %+v", st.Active)
	}
	// Without a persona, rm is no longer restricted by one (it fails on its own).
	out, err = h.m.Exec(ctx, "vm", protocol.Exec{Command: "rm", Args: []string{"/nonexistent/file"}}, nil)
	if err != nil || out.Route != protocol.RouteDefault || out.ExitCode == 0 {
		t.Errorf("rm without a persona: %+v, %v", out, err)
	}

	for _, c := range []struct {
		m    prometheus.Metric
		want float64
	}{
		{h.met.Activations.WithLabelValues("hardened", protocol.ResultActivated), 1},
		{h.met.Activations.WithLabelValues("broken", protocol.ResultAborted), 1},
		{h.met.Deactivations.WithLabelValues("hardened", protocol.ResultDeactivated), 1},
		{h.met.Activations.WithLabelValues("hardened", protocol.ResultDeactivated), 0}, // not an activation
		{h.met.Commands.WithLabelValues(protocol.RouteOverride), 1},
		{h.met.Commands.WithLabelValues(protocol.RouteDenied), 1},
		{h.met.Commands.WithLabelValues(protocol.RouteDefault), 2},
	} {
		if got := value(t, c.m); got != c.want {
			t.Errorf("%s = %v, want %v", c.m.Desc(), got, c.want)
		}
	}
	if n := histogramCount(t, h.met.ActivationDuration); n != 2 {
		t.Errorf("activation duration observations = %d, want 2", n)
	}
	if n := histogramCount(t, h.met.DeactivationDuration); n != 1 {
		t.Errorf("deactivation duration observations = %d, want 1", n)
	}
}

func TestReconcileAfterHostRestart(t *testing.T) {
	h := newHost(t, nil)
	g := h.connectGuest("vm")
	p := h.createPersona(hardened())
	res, err := h.m.Activate(ctxTimeout(t, 30*time.Second), "vm", p, "alice", "api", 0)
	if err != nil || res.Result != protocol.ResultActivated {
		t.Fatalf("activate: %+v, %v", res, err)
	}
	h.m.Close()

	// The host lost track: its record says no persona.
	if err := h.st.PutInstance(store.InstanceRecord{Instance: "vm"}); err != nil {
		t.Fatal(err)
	}
	h.st.Close()
	h.st = teststore.Open(t, h.dir)
	t.Cleanup(func() { h.st.Close() })
	h.cfg.Store = h.st
	h.startManager()
	h.add("vm", g.endpoint())
	st := h.waitState("vm", StateConnected)
	if st.Active == nil || st.Active.ActivationID != res.Active.ActivationID {
		t.Fatalf("status after restart: %+v", st.Active)
	}
	rec := h.record("vm")
	if rec.Persona == nil || rec.Persona.Name != "hardened" || rec.ActivationID != res.Active.ActivationID ||
		rec.Revision != p.Revision || !rec.ActivatedAt.Equal(res.Active.ActivatedAt) || rec.BootID != st.BootID {
		t.Errorf("reconciled record: %+v, want the guest's %+v", rec, res.Active)
	}
	evs := h.audit(store.AuditQuery{Instance: "vm", Type: AuditReconciled})
	if len(evs) != 1 {
		t.Fatalf("reconciled events: %+v, want one", evs)
	}
	if ev := evs[0]; ev.Source != store.SourceHost || ev.Persona != "hardened" || ev.ActivationID != res.Active.ActivationID ||
		!strings.Contains(ev.Detail, "no persona") || !strings.Contains(ev.Detail, `"hardened"`) {
		t.Errorf("reconciled event: %+v", ev)
	}
	if got := value(t, h.met.AuditEvents.WithLabelValues(AuditReconciled)); got != 1 {
		t.Errorf("audit events{reconciled} = %v", got)
	}

	// Another restart with the record in step: nothing to reconcile.
	h.m.Close()
	h.startManager()
	h.add("vm", g.endpoint())
	h.waitState("vm", StateConnected)
	if evs := h.audit(store.AuditQuery{Instance: "vm", Type: AuditReconciled}); len(evs) != 1 {
		t.Errorf("reconciled events after a restart in step: %d, want still 1", len(evs))
	}
}

// TestDeactivatedReconnectIsQuiet: a guest deliberately left with no persona
// reconnects to a restarted host; the record already says no persona, so
// nothing is reconciled and nothing audited (the deactivation's activation
// id is not a difference).
func TestDeactivatedReconnectIsQuiet(t *testing.T) {
	h := newHost(t, nil)
	g := h.connectGuest("vm")
	p := h.createPersona(hardened())
	if res, err := h.m.Activate(ctxTimeout(t, 30*time.Second), "vm", p, "alice", "api", 0); err != nil || res.Result != protocol.ResultActivated {
		t.Fatalf("activate: %+v, %v", res, err)
	}
	if res, err := h.m.Deactivate(ctxTimeout(t, 30*time.Second), "vm", "alice", 0); err != nil || res.Result != protocol.ResultDeactivated {
		t.Fatalf("deactivate: %+v, %v", res, err)
	}
	for range 2 {
		h.m.Close()
		h.startManager()
		h.add("vm", g.endpoint())
		h.waitState("vm", StateConnected)
	}
	if evs := h.audit(store.AuditQuery{Instance: "vm", Type: AuditReconciled}); len(evs) != 0 {
		t.Errorf("reconciled events for a guest whose record was in step: %+v", evs)
	}
}

// TestSlowOutputConsumer streams many chunks to a consumer that blocks: the
// session goes on serving other calls (each call buffers its own output in
// the session; were the buffer shared, the reader would stall behind the
// blocked consumer), and every chunk arrives in order once the consumer
// resumes.
func TestSlowOutputConsumer(t *testing.T) {
	h := newHost(t, nil)
	h.connectGuest("vm")

	const lines = 300
	release := make(chan struct{})
	first := make(chan struct{})
	var got bytes.Buffer
	chunks := 0
	streamDone := make(chan error, 1)
	go func() {
		_, err := h.m.Exec(ctxTimeout(t, 60*time.Second), "vm", protocol.Exec{
			Command: "sh", Args: []string{"-c", fmt.Sprintf("i=0; while [ $i -lt %d ]; do i=$((i+1)); echo $i; sleep 0.002; done", lines)},
		}, func(stream byte, data []byte) {
			if chunks == 0 {
				close(first)
				<-release
			}
			chunks++
			got.Write(data)
		})
		streamDone <- err
	}()
	<-first
	// While the consumer is blocked, the command goes on producing; other
	// calls on the same session must still be answered.
	for range 3 {
		time.Sleep(200 * time.Millisecond) // let output pile up (not an assertion)
		out, err := h.m.Exec(ctxTimeout(t, 10*time.Second), "vm", protocol.Exec{Command: "echo", Args: []string{"ok"}}, nil)
		if err != nil || out.Stdout != "ok\n" {
			t.Fatalf("Exec beside a blocked stream: %+v, %v", out, err)
		}
	}
	close(release)
	if err := <-streamDone; err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := 1; i <= lines; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	if got.String() != want.String() {
		t.Errorf("streamed output out of order or incomplete: %d bytes in %d chunks", got.Len(), chunks)
	}
	t.Logf("%d chunks", chunks)
}

// TestConcurrentActivations activates several personas at once on one
// instance: they run one after another, each answered, and the store's
// record ends as the guest's last confirmed state.
func TestConcurrentActivations(t *testing.T) {
	h := newHost(t, nil)
	h.connectGuest("vm")
	const n = 4
	personas := make([]protocol.Persona, n)
	for i := range personas {
		personas[i] = h.createPersona(protocol.Persona{Name: fmt.Sprintf("p%d", i), PreActivationScript: "#!/bin/sh\nsleep 0.05"})
	}
	errs := make(chan error, n)
	for _, p := range personas {
		go func() {
			res, err := h.m.Activate(ctxTimeout(t, 60*time.Second), "vm", p, "alice", "api", 0)
			if err == nil && res.Result != protocol.ResultActivated {
				err = fmt.Errorf("%s: %+v", p.Name, res)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	st, _ := h.m.Get("vm")
	rec := h.record("vm")
	if st.Active == nil || rec.Persona == nil || st.Active.ActivationID != rec.ActivationID || st.Active.Persona.Name != rec.Persona.Name {
		t.Errorf("status %+v and record %+v disagree", st.Active, rec)
	}
	if got := histogramCount(t, h.met.ActivationDuration); got != n {
		t.Errorf("%d activation durations observed, want %d", got, n)
	}
}
