package reconcile

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/metrics"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/internal/testguest"
	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/internal/teststore"
	"github.com/vmpersona/vmpersona/protocol"
)

// waitFor polls cond until it holds, failing the test after a generous
// limit (a hang guard, not a timing assertion).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testproc.WaitWithin(t, time.Minute, what, cond)
}

// guest is a real vmpersona-guestd process on a unix socket.
type guest = testguest.Guest

// newGuest starts a guest daemon; env is added to its environment.
func newGuest(t testing.TB, env ...string) *guest {
	t.Helper()
	return testguest.Start(t, nil, env)
}

// host is the host daemon's core under test: a real Badger store, the agent
// manager and the reconciler, restartable on the same directory.
type host struct {
	t   testing.TB
	dir string
	st  *store.Store
	met *metrics.Metrics
	m   *agents.Manager
	r   *Reconciler
	// noDefault disables the default persona for new instances.
	noDefault bool
	// writes, when set, counts the host's record writes (set before start).
	writes *countingStore
}

// countingStore is the real store, counting the writes of instance records
// and desired states by kind.
type countingStore struct {
	*store.Store
	mu                                     sync.Mutex
	desired, instance, instanceWithDesired int
}

func (c *countingStore) PutDesired(d store.DesiredState, evs ...store.AuditEvent) ([]store.AuditEvent, error) {
	c.mu.Lock()
	c.desired++
	c.mu.Unlock()
	return c.Store.PutDesired(d, evs...)
}

func (c *countingStore) PutInstance(rec store.InstanceRecord, evs ...store.AuditEvent) error {
	c.mu.Lock()
	c.instance++
	c.mu.Unlock()
	return c.Store.PutInstance(rec, evs...)
}

func (c *countingStore) PutInstanceDesired(rec store.InstanceRecord, d store.DesiredState, evs ...store.AuditEvent) error {
	c.mu.Lock()
	c.instanceWithDesired++
	c.mu.Unlock()
	return c.Store.PutInstanceDesired(rec, d, evs...)
}

// counts returns and resets the counts: desired states alone, records
// alone, both in one commit.
func (c *countingStore) counts() [3]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := [3]int{c.desired, c.instance, c.instanceWithDesired}
	c.desired, c.instance, c.instanceWithDesired = 0, 0, 0
	return n
}

func quietLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newHost(t testing.TB) *host {
	t.Helper()
	h := &host{t: t, dir: t.TempDir()}
	h.start()
	t.Cleanup(h.stop)
	return h
}

// start opens the store and starts a manager and reconciler on it, as the
// host daemon does.
func (h *host) start() {
	h.t.Helper()
	st := teststore.Open(h.t, h.dir)
	h.st = st
	h.met = metrics.New()
	var rst interface {
		Store
		agents.Store
	} = st
	if h.writes != nil {
		h.writes.Store = st
		rst = h.writes
	}
	h.r = New(Config{Store: rst, Metrics: h.met, Logger: quietLogger(), DefaultPersona: !h.noDefault})
	h.m = agents.NewManager(agents.Config{
		Store: rst, Metrics: h.met, Logger: quietLogger(), Converger: h.r,
		Heartbeat: 500 * time.Millisecond, DialTimeout: 2 * time.Second, CallTimeout: 30 * time.Second,
	})
	h.r.Bind(h.m)
}

// stop ends the manager and closes the store: a host daemon that exits.
func (h *host) stop() {
	if h.m == nil {
		return
	}
	h.r.Close()
	h.m.Close()
	h.st.Close()
	h.m = nil
}

// restart is a host daemon restart on the same data directory.
func (h *host) restart(guests map[string]*guest) {
	h.t.Helper()
	h.stop()
	h.start()
	for name, g := range guests {
		h.add(name, g)
	}
}

func (h *host) add(name string, g *guest) {
	h.t.Helper()
	if err := h.m.Add(name, agents.Endpoint{Kind: agents.KindUnix, Path: g.Sock}, "static"); err != nil {
		h.t.Fatal(err)
	}
}

// connectGuest starts a guest daemon (env added to its environment),
// declares it as instance name and waits for its session.
func (h *host) connectGuest(name string, env ...string) *guest {
	h.t.Helper()
	g := newGuest(h.t, env...)
	h.add(name, g)
	h.waitConnected(name)
	return g
}

func (h *host) waitConnected(name string) agents.AgentStatus {
	h.t.Helper()
	var st agents.AgentStatus
	waitFor(h.t, name+" connected", func() bool {
		var err error
		st, err = h.m.Get(name)
		if err != nil {
			h.t.Fatal(err)
		}
		return st.State == agents.StateConnected
	})
	return st
}

func (h *host) status(name string) Status {
	h.t.Helper()
	st, err := h.m.Get(name)
	if err != nil {
		h.t.Fatal(err)
	}
	s, err := h.r.Status(name, st, true)
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

// activate activates p on instance name through the reconciler, as actor,
// and fails the test unless the guest took it.
func (h *host) activate(name string, p protocol.Persona, actor string) {
	h.t.Helper()
	if res, err := h.r.Activate(ctxTimeout(h.t, 30*time.Second), name, p, actor, ReasonAPI, 0); err != nil || res.Result != protocol.ResultActivated {
		h.t.Fatalf("activate %s on %s: %+v, %v", p.Name, name, res, err)
	}
}

func (h *host) desired(name string) store.DesiredState {
	h.t.Helper()
	d, err := h.st.GetDesired(name)
	if err != nil {
		h.t.Fatalf("desired state of %s: %v", name, err)
	}
	return d
}

func (h *host) audit(q store.AuditQuery) []store.AuditEvent {
	h.t.Helper()
	return teststore.Audit(h.t, h.st, q)
}

func (h *host) createPersona(p protocol.Persona) protocol.Persona {
	h.t.Helper()
	return teststore.CreatePersona(h.t, h.st, p)
}

func (h *host) updatePersona(p protocol.Persona) protocol.Persona {
	h.t.Helper()
	out, err := h.st.UpdatePersona(p, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

func (h *host) exec(name, command string, args ...string) (protocol.ExecResult, error) {
	h.t.Helper()
	return h.m.Exec(ctxTimeout(h.t, 30*time.Second), name, protocol.Exec{Command: command, Args: args}, nil)
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func activeName(st agents.AgentStatus) string {
	if st.Active == nil {
		return ""
	}
	return st.Active.Persona.Name
}

// snapshot is every file under dir with its mode and content.
func snapshot(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		// The temporary file of an atomic replace (".NAME.tmp…") is not
		// state: it exists only between its write and its rename.
		if b := filepath.Base(path); strings.HasPrefix(b, ".") && strings.Contains(b, ".tmp") {
			return nil
		}
		if fi.IsDir() {
			out[rel+"/"] = fi.Mode().String()
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		out[rel] = fi.Mode().String() + " " + string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// envOf runs env in the guest and answers its variables.
func envOf(t testing.TB, h *host, name string) map[string]string {
	t.Helper()
	res, err := h.exec(name, "env")
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("env in %s: %+v, %v", name, res, err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			out[k] = v
		}
	}
	return out
}

// waitExecAudited waits until the host holds the guest's audit event of an
// exec of command and the guest has that acknowledgement on disk. The guest
// records an ordinary exec's event after its answer, so an exec that has
// answered is not yet in the spool: waiting only for the spool's
// acknowledgement could pass before the event is written.
func waitExecAudited(t testing.TB, h *host, g *guest, instance, command string) {
	t.Helper()
	waitFor(t, "the exec of "+command+" audited on the host", func() bool {
		for _, ev := range h.audit(store.AuditQuery{Instance: instance, Type: store.AuditExec}) {
			if ev.Source == "guest" && ev.Command == command {
				return true
			}
		}
		return false
	})
	waitAuditDelivered(t, g)
}

// waitAuditDelivered waits until the host has acknowledged every audit event
// the guest spooled (the guest writes the acknowledgement asynchronously,
// after the call that recorded the event has been answered).
func waitAuditDelivered(t testing.TB, g *guest) {
	t.Helper()
	waitFor(t, "the guest's audit events acknowledged", func() bool {
		spool, err := os.ReadFile(filepath.Join(g.StateDir, "audit-spool.jsonl"))
		if err != nil {
			return false
		}
		var last uint64
		for _, line := range strings.Split(strings.TrimSpace(string(spool)), "\n") {
			var ev struct {
				Seq uint64 `json:"seq"`
			}
			if json.Unmarshal([]byte(line), &ev) == nil && ev.Seq > last {
				last = ev.Seq
			}
		}
		ack, err := os.ReadFile(filepath.Join(g.StateDir, "audit-ack.json"))
		if err != nil {
			return false
		}
		var a struct {
			AckedUpTo uint64 `json:"acked_up_to"`
		}
		return json.Unmarshal(ack, &a) == nil && last > 0 && a.AckedUpTo >= last
	})
}
