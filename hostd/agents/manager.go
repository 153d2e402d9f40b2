// Package agents keeps one managed connection per guest agent: it dials each
// instance's endpoint, runs the protocol session (handshake, heartbeats,
// audit ingestion), reconnects with backoff when the session ends, reconciles
// the store with what the guest reports, and carries activations and commands
// to the guest with a deadline on every call.
//
// No lock is held across I/O: List and Get answer from a snapshot at once,
// and a hung or absent agent never blocks calls to other instances.
package agents

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/metrics"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// Errors the manager returns. Timeouts surface as context.DeadlineExceeded;
// guest refusals as *protocol.Error; activation outcomes in
// protocol.ActivateResult.Result.
var (
	ErrUnknownInstance = errdefs.New(errdefs.ErrNotFound, "unknown-instance", "unknown instance")
	ErrNotConnected    = errdefs.New(errdefs.ErrUnavailable, "agent-unavailable", "agent not connected")
	// ErrExists: Add with a name the manager already manages.
	ErrExists = errdefs.New(errdefs.ErrAlreadyExists, "exists", "instance already managed")
	// ErrManagerClosed: Add after Close.
	ErrManagerClosed = errors.New("agent manager closed")
)

// Agent states in AgentStatus.State.
const (
	StateConnected    = apitypes.AgentConnected
	StateConnecting   = apitypes.AgentConnecting
	StateDisconnected = apitypes.AgentDisconnected
)

// Actor, reason and host audit event types of the host's own actions.
const (
	SystemActor            = "vmpersona-hostd"
	ReasonDefault          = "default"
	AuditReconciled        = protocol.AuditReconciled
	AuditDefaultActivation = protocol.AuditDefaultActivation
)

// Result label of activations that got no answer from the guest (transport
// errors, timeouts, refusals).
const resultError = "error"

const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
	// stableSession is how long a session must have lasted for the
	// reconnect backoff to start again from backoffMin.
	stableSession = 10 * time.Second
	// guestScriptTimeout is the guest's default per-script timeout
	// (protocol.Activate.ScriptTimeoutMillis 0).
	guestScriptTimeout = 5 * time.Minute
	// callSlack is added to a guest-side timeout to get the host's deadline.
	callSlack = 10 * time.Second
)

// Store is the part of the host store the manager uses; *store.Store
// satisfies it.
type Store interface {
	GetInstance(instance string) (store.InstanceRecord, error)
	// PutInstance writes the record and the audit events that go with it
	// in one commit.
	PutInstance(rec store.InstanceRecord, events ...store.AuditEvent) error
	// PutInstanceDesired writes the record, the instance's desired state
	// and the events in one commit; PutDesired the desired state and the
	// events.
	PutInstanceDesired(rec store.InstanceRecord, d store.DesiredState, events ...store.AuditEvent) error
	PutDesired(d store.DesiredState, events ...store.AuditEvent) ([]store.AuditEvent, error)
	AppendAudit(evs ...store.AuditEvent) ([]store.AuditEvent, error)
	IngestGuestAudit(instance string, b protocol.AuditBatch) (uint64, []store.AuditEvent, error)
	DeleteInstance(instance string) error
}

// Config configures a Manager. Zero durations take their defaults.
type Config struct {
	Store   Store
	Metrics *metrics.Metrics // nil: a private, unexported set
	Logger  *slog.Logger     // nil: slog.Default()
	// Heartbeat is the ping interval of each session (default 2 s); three
	// silent intervals and an unanswered probe end a session (protocol §5.4).
	Heartbeat time.Duration
	// DialTimeout bounds dial plus handshake (default 3 s).
	DialTimeout time.Duration
	// CallTimeout is the deadline of a call whose context has none
	// (default 60 s); activations get 2×script timeout+10 s when larger,
	// execs the command's timeout+10 s when larger.
	CallTimeout time.Duration
	// Converger, when set, brings each guest to what it should run on
	// every new session, before the session is published (the desired
	// state's reconciler; the default persona is its decision).
	Converger Converger
	// AuditEventsPerSecond and AuditBytesPerSecond are each instance's
	// audit ingestion quota (an idle instance saves up two seconds of it);
	// past it the host answers the guest's batches later, and the guest
	// keeps its events spooled. 0 disables the quota.
	AuditEventsPerSecond float64
	AuditBytesPerSecond  float64
	// QuietExec leaves commands that run as themselves out of the audit
	// (overrides and denials are always audited) unless the active
	// persona's audit_exec says otherwise; by default every exec is
	// audited (vmpersona-hostd --audit-exec).
	QuietExec bool
}

// DefaultConfig returns the configuration the host daemon runs with, for a
// store: default timeouts.
func DefaultConfig(st Store) Config {
	return Config{
		Store: st, Heartbeat: 2 * time.Second, DialTimeout: 3 * time.Second,
		CallTimeout:          60 * time.Second,
		AuditEventsPerSecond: DefaultAuditEventsPerSecond,
		AuditBytesPerSecond:  DefaultAuditBytesPerSecond,
	}
}

// AgentStatus is a snapshot of one managed agent. Capabilities and Active
// are shared with the manager and other readers: read them, never modify
// them.
type AgentStatus struct {
	Name, Source, Endpoint string
	State                  string // StateConnected, StateConnecting or StateDisconnected
	AgentVersion, BootID   string
	Capabilities           []string
	LandlockABI            int // the guest kernel's Landlock ABI, 0 for none
	ConnectedAt            time.Time
	LastError              string
	// Active is the persona the guest reported in this session, kept up to
	// date after activations; nil when it holds none or is not connected.
	Active *protocol.ActiveState
}

// Manager runs one connection loop per instance. Its methods are safe for
// concurrent use.
type Manager struct {
	cfg Config
	st  Store
	met *metrics.Metrics
	log *slog.Logger

	mu     sync.Mutex
	agents map[string]*agent
	closed bool

	// dialHook, when set (tests only), is called before each dial.
	dialHook func(Endpoint)
}

// NewManager returns a manager with no instances; Add starts them.
func NewManager(cfg Config) *Manager {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 2 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 3 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 60 * time.Second
	}
	m := &Manager{cfg: cfg, st: cfg.Store, met: cfg.Metrics, log: cfg.Logger, agents: make(map[string]*agent)}
	if m.st == nil {
		m.st = noStore{}
	}
	if m.met == nil {
		m.met = metrics.New()
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	return m
}

// Add starts managing an instance: its connection loop dials ep until the
// instance is removed or the manager closed. source says where the instance
// came from (static, libvirt, qmp).
func (m *Manager) Add(name string, ep Endpoint, source string) error {
	if name == "" {
		return errors.New("agents: an instance needs a name")
	}
	if err := ep.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrManagerClosed
	}
	if _, ok := m.agents[name]; ok {
		return fmt.Errorf("%w: %s", ErrExists, name)
	}
	a := newAgent(m, name, ep, source)
	m.agents[name] = a
	go a.run()
	return nil
}

// Remove stops an instance's loop and closes its session; it returns once
// the loop has ended. Unknown names are ignored.
func (m *Manager) Remove(name string) {
	m.mu.Lock()
	a := m.agents[name]
	delete(m.agents, name)
	m.mu.Unlock()
	if a != nil {
		a.stop()
	}
}

// Forget is for an instance that source reports gone from this host (its
// domain was undefined or migrated away): it stops managing the instance
// and deletes its instance record, so that the host no longer lists it.
// An instance of that name from another source (a static one) is left
// alone, record and all. The desired state is kept.
func (m *Manager) Forget(name, source string) {
	m.mu.Lock()
	a := m.agents[name]
	if a != nil && a.source != source {
		m.mu.Unlock()
		return
	}
	delete(m.agents, name)
	m.mu.Unlock()
	if a != nil {
		a.stop()
	}
	if err := m.st.DeleteInstance(name); err != nil && !errors.Is(err, store.ErrNotFound) {
		m.log.Warn("delete the record of an instance that left the host", "instance", name, "err", err)
	}
}

// SetEndpoint changes where an instance's agent is reached (a domain that
// restarted with a new socket): a session on the old endpoint is closed and
// the new one dialled at once.
func (m *Manager) SetEndpoint(name string, ep Endpoint) error {
	if err := ep.Validate(); err != nil {
		return err
	}
	a, err := m.agent(name)
	if err != nil {
		return err
	}
	a.setEndpoint(ep)
	return nil
}

// List returns every managed agent's status, sorted by name.
func (m *Manager) List() []AgentStatus {
	m.mu.Lock()
	as := make([]*agent, 0, len(m.agents))
	for _, a := range m.agents {
		as = append(as, a)
	}
	m.mu.Unlock()
	out := make([]AgentStatus, 0, len(as))
	for _, a := range as {
		out = append(out, a.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns one agent's status; ErrUnknownInstance when not managed.
func (m *Manager) Get(name string) (AgentStatus, error) {
	a, err := m.agent(name)
	if err != nil {
		return AgentStatus{}, err
	}
	return a.status(), nil
}

// Close stops every loop and closes every session; it returns once all of
// them have ended. Add fails afterwards.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	as := make([]*agent, 0, len(m.agents))
	for _, a := range m.agents {
		as = append(as, a)
	}
	clear(m.agents)
	m.mu.Unlock()
	for _, a := range as {
		a.cancel()
	}
	for _, a := range as {
		<-a.done
	}
}

func (m *Manager) agent(name string) (*agent, error) {
	m.mu.Lock()
	a := m.agents[name]
	m.mu.Unlock()
	if a == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownInstance, name)
	}
	return a, nil
}

// connected returns an instance's live session.
func (m *Manager) connected(name string) (*agent, *session, error) {
	a, err := m.agent(name)
	if err != nil {
		return nil, nil, err
	}
	s, err := a.session()
	if err != nil {
		return nil, nil, err
	}
	return a, s, nil
}

// withDefaultDeadline gives ctx a deadline when it has none: the larger of
// CallTimeout and want.
func (m *Manager) withDefaultDeadline(ctx context.Context, want time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, max(m.cfg.CallTimeout, want))
}

// knownAuditTypes bounds the type label of the audit counter: a guest is
// not trusted to keep it low-cardinality.
var knownAuditTypes = protocol.AuditTypes

func (m *Manager) countAudit(evs []store.AuditEvent) {
	for _, ev := range evs {
		t := ev.Type
		if !slices.Contains(knownAuditTypes, t) {
			t = "other"
		}
		m.met.AuditEvents.WithLabelValues(t).Inc()
	}
}

// noStore stands in for a missing Config.Store: nothing is kept, and guest
// audit batches are refused so that the guest keeps them.
type noStore struct{}

func (noStore) GetInstance(instance string) (store.InstanceRecord, error) {
	return store.InstanceRecord{}, fmt.Errorf("instance %q: %w", instance, store.ErrNotFound)
}
func (noStore) PutInstance(store.InstanceRecord, ...store.AuditEvent) error { return nil }
func (noStore) PutInstanceDesired(store.InstanceRecord, store.DesiredState, ...store.AuditEvent) error {
	return nil
}
func (noStore) PutDesired(store.DesiredState, ...store.AuditEvent) ([]store.AuditEvent, error) {
	return nil, nil
}
func (noStore) DeleteInstance(string) error { return nil }
func (noStore) AppendAudit(evs ...store.AuditEvent) ([]store.AuditEvent, error) {
	return evs, nil
}
func (noStore) IngestGuestAudit(instance string, _ protocol.AuditBatch) (uint64, []store.AuditEvent, error) {
	// Refusing leaves the events in the guest's spool.
	return 0, nil, fmt.Errorf("instance %q: no store configured to keep guest audit events", instance)
}
