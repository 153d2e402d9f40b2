package agents

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// errEndpointChanged ends a session whose instance moved to a new endpoint.
var errEndpointChanged = errors.New("endpoint changed")

// agent is one instance's connection loop and the state it publishes.
type agent struct {
	m            *Manager
	name, source string
	log          *slog.Logger

	ctx    context.Context // cancelled by Remove and Close
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns
	redial chan struct{} // cap 1: the endpoint changed
	// actSem (cap 1) serialises activations and deactivations of this
	// instance, so that the default activation on connect never overtakes
	// an API activation or the other way round.
	actSem chan struct{}

	mu        sync.Mutex
	ep        Endpoint
	state     string
	sess      *session // the live session, nil when not connected
	lastErr   string
	lastEpoch uint32
	// lastRefusal is the last reason this guest's input was refused for
	// (guestinput.go): the same reason again is not audited again.
	lastRefusal string
	// forgedNext and forgedSince rate-limit the audit of forged guest
	// audit events (guestinput.go).
	forgedNext  time.Time
	forgedSince int
	// quota is the instance's audit ingestion budget (guestinput.go).
	quota auditQuota

	// ingestMu guards ingestion against the loop's end: once run has
	// returned no audit batch is being or will be written to the store,
	// so the store may be closed right after Remove or Close.
	ingestMu sync.RWMutex
	ended    bool
}

// session is one connected protocol session.
type session struct {
	cl          *protocol.Client
	ep          Endpoint
	hello       protocol.HelloAck
	connectedAt time.Time
	// active is what the guest holds as far as this session knows;
	// guarded by agent.mu. It is an immutable snapshot, handed out
	// without copying: replaced whole, never modified.
	active *protocol.ActiveState
}

func newAgent(m *Manager, name string, ep Endpoint, source string) *agent {
	ctx, cancel := context.WithCancel(context.Background())
	return &agent{
		m: m, name: name, source: source, ep: ep, state: StateConnecting,
		log: m.log.With("instance", name),
		ctx: ctx, cancel: cancel,
		done:   make(chan struct{}),
		redial: make(chan struct{}, 1),
		actSem: make(chan struct{}, 1),
		quota:  auditQuota{eventRate: m.cfg.AuditEventsPerSecond, byteRate: m.cfg.AuditBytesPerSecond},
	}
}

// session returns the live session, or ErrNotConnected saying why not.
func (a *agent) session() (*session, error) {
	a.mu.Lock()
	s, state, lastErr := a.sess, a.state, a.lastErr
	a.mu.Unlock()
	switch {
	case s != nil:
		return s, nil
	case lastErr != "":
		return nil, fmt.Errorf("%w: %s is %s: %s", ErrNotConnected, a.name, state, lastErr)
	default:
		return nil, fmt.Errorf("%w: %s is %s", ErrNotConnected, a.name, state)
	}
}

func (a *agent) stop() {
	a.cancel()
	<-a.done
}

func (a *agent) setEndpoint(ep Endpoint) {
	a.mu.Lock()
	changed := a.ep != ep
	a.ep = ep
	a.mu.Unlock()
	if changed {
		a.log.Info("agent endpoint changed", "endpoint", ep.String())
		select {
		case a.redial <- struct{}{}:
		default:
		}
	}
}

func (a *agent) status() AgentStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := AgentStatus{
		Name: a.name, Source: a.source, Endpoint: a.ep.String(),
		State: a.state, LastError: a.lastErr,
	}
	if s := a.sess; s != nil {
		st.AgentVersion = s.hello.AgentVersion
		st.BootID = s.hello.BootID
		// Shared, not copied: the HelloAck and the active state are
		// immutable snapshots (a change replaces s.active whole), so a
		// status costs no copy of a persona however large.
		st.Capabilities = s.hello.Capabilities
		st.LandlockABI = s.hello.LandlockABI
		st.ConnectedAt = s.connectedAt
		st.Active = s.active
	}
	return st
}

// run is the connection loop: connect, serve until the session ends,
// back off, again, until the agent is stopped.
func (a *agent) run() {
	defer close(a.done)
	defer func() {
		a.ingestMu.Lock()
		a.ended = true
		a.ingestMu.Unlock()
	}()
	defer a.cancel()
	backoff := backoffMin
	for {
		// Drain a stale endpoint-change signal before reading the
		// endpoint: a change after this point is signalled again.
		select {
		case <-a.redial:
		default:
		}
		a.mu.Lock()
		ep := a.ep
		a.state = StateConnecting
		a.mu.Unlock()

		s, err := a.connect(ep)
		if err == nil {
			if a.serve(s) >= stableSession {
				backoff = backoffMin
			}
		} else if a.ctx.Err() == nil {
			a.connectFailed(ep, err)
		}
		if a.ctx.Err() != nil {
			a.setState(StateDisconnected)
			return
		}
		t := time.NewTimer(Jitter(backoff))
		backoff = min(2*backoff, backoffMax)
		select {
		case <-t.C:
		case <-a.redial:
			t.Stop()
			backoff = backoffMin
		case <-a.ctx.Done():
			t.Stop()
			a.setState(StateDisconnected)
			return
		}
	}
}

func (a *agent) setState(state string) {
	a.mu.Lock()
	a.state = state
	a.mu.Unlock()
}

// nextEpoch picks a random session epoch, never 0 and never the previous
// session's.
func (a *agent) nextEpoch() uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var b [4]byte
	for {
		rand.Read(b[:])
		e := binary.BigEndian.Uint32(b[:])
		if e != 0 && e != a.lastEpoch {
			a.lastEpoch = e
			return e
		}
	}
}

// connect dials ep and performs the handshake, within DialTimeout.
func (a *agent) connect(ep Endpoint) (*session, error) {
	ctx, cancel := context.WithTimeout(a.ctx, a.m.cfg.DialTimeout)
	defer cancel()
	if a.m.dialHook != nil {
		a.m.dialHook(ep)
	}
	conn, err := ep.dial(ctx)
	if err != nil {
		return nil, err // names the address already
	}
	hb := a.m.cfg.Heartbeat
	cl, err := protocol.Handshake(ctx, conn, protocol.ClientConfig{
		Epoch:        a.nextEpoch(),
		HostVersion:  protocol.SoftwareVersion,
		Heartbeat:    hb,
		WriteTimeout: 3 * hb,
		OnAudit:      a.ingestAudit,
		OnProbe:      a.probed,
		Logger:       a.log,
	})
	if err != nil { // Handshake closed conn; err says "handshake: …"
		return nil, err
	}
	hello := cl.Hello()
	if err := checkHello(&hello); err != nil {
		a.refuseGuest(&session{cl: cl}, "hello", err)
		return nil, err
	}
	return &session{cl: cl, ep: ep, hello: hello, connectedAt: time.Now(), active: cloneActive(hello.Active)}, nil
}

func (a *agent) connectFailed(ep Endpoint, err error) {
	msg := err.Error()
	a.mu.Lock()
	repeated := a.lastErr == msg
	a.lastErr = msg
	a.state = StateDisconnected
	a.mu.Unlock()
	if repeated {
		a.log.Debug("agent still unreachable", "endpoint", ep.String(), "err", err)
	} else {
		a.log.Warn("agent unreachable", "endpoint", ep.String(), "err", err)
	}
}

// serve records what a new session's guest holds, lets the Converger bring
// the guest to what it should run, publishes the session, and waits for it
// to end. It returns how long the session lasted.
//
// The session is published only after the Converger has returned: no
// command reaches a new guest before its persona is in place, and no API
// activation races with the convergence.
func (a *agent) serve(s *session) time.Duration {
	known := a.reconcileStore(s)
	if c := a.m.cfg.Converger; c != nil {
		c.Connected(a.ctx, &Guest{a: a, s: s, known: known})
	}

	a.mu.Lock()
	a.sess = s
	a.state = StateConnected
	a.lastErr = ""
	a.mu.Unlock()
	a.m.met.AgentsConnected.Inc()
	a.log.Info("agent connected", "endpoint", s.ep.String(), "epoch", s.cl.Epoch(),
		"agent_version", s.hello.AgentVersion, "boot_id", s.hello.BootID,
		"active", activeName(s.hello.Active), "pending_audit", s.hello.PendingAudit)

	select {
	case <-s.cl.Done():
	case <-a.ctx.Done():
		s.cl.Close(nil)
	case <-a.redial:
		s.cl.Close(errEndpointChanged)
	}
	lasted := time.Since(s.connectedAt)
	cause := s.cl.Err()

	a.mu.Lock()
	a.sess = nil
	a.state = StateDisconnected
	if cause != nil && !errors.Is(cause, protocol.ErrClosed) {
		a.lastErr = cause.Error()
	}
	a.mu.Unlock()
	a.m.met.AgentsConnected.Dec()
	a.m.met.SessionsEnded.WithLabelValues(endCause(cause)).Inc()
	a.log.Info("agent disconnected", "endpoint", s.ep.String(), "after", lasted.Round(time.Millisecond), "cause", cause)
	return lasted
}

// probed counts a liveness probe's outcome.
func (a *agent) probed(answered bool) {
	outcome := "unanswered"
	if answered {
		outcome = "answered"
	}
	a.m.met.LivenessProbes.WithLabelValues(outcome).Inc()
}

// auditYield bounds how long a guest's audit batch waits for an activation
// of its instance in flight: about the time an activation without long
// scripts takes.
const auditYield = 100 * time.Millisecond

// yieldToActivation lets an activation (or deactivation) of this instance
// that is in flight record its outcome before the guest's audit batch is
// stored. The guest sends its batch around its answer; a store commit
// already in flight when the instance record is written delays that write
// by a whole synced commit (a Badger transaction starts only after the
// commits in flight have landed). The batch waits at most auditYield; the
// guest keeps its events spooled until acknowledged either way.
func (a *agent) yieldToActivation() {
	select {
	case a.actSem <- struct{}{}:
		<-a.actSem
		return
	default:
	}
	t := time.NewTimer(auditYield)
	defer t.Stop()
	select {
	case a.actSem <- struct{}{}:
		<-a.actSem
	case <-t.C:
	case <-a.ctx.Done():
	}
}

// endCause is the label of a session's end in SessionsEnded.
func endCause(err error) string {
	switch {
	case errors.Is(err, protocol.ErrHeartbeat):
		return "heartbeat"
	case errors.Is(err, protocol.ErrNoSession):
		return "no_session"
	case err == nil, errors.Is(err, protocol.ErrClosed), errors.Is(err, errEndpointChanged):
		return "closed"
	default:
		return "stream"
	}
}

// ingestAudit is the session's OnAudit: store the batch, count what was new.
func (a *agent) ingestAudit(b protocol.AuditBatch) (uint64, error) {
	a.ingestMu.RLock()
	defer a.ingestMu.RUnlock()
	if a.ended {
		return 0, fmt.Errorf("ingest audit of %s: the instance is no longer managed", a.name)
	}
	b = a.throttleAudit(a.ctx, b)
	a.yieldToActivation()
	upTo, inserted, err := a.m.st.IngestGuestAudit(a.name, b)
	if err != nil {
		return 0, fmt.Errorf("ingest audit of %s: %w", a.name, err)
	}
	a.m.countAudit(inserted)
	return upTo, nil
}

// reconcileStore writes what the guest reports into the instance record: the
// guest is the truth for what it enforces. A change is audited. It reports
// whether the host had a record of the instance before (a store it cannot
// read counts as known: nothing is imposed on an instance by mistake).
func (a *agent) reconcileStore(s *session) (known bool) {
	st := a.m.st
	prev, err := st.GetInstance(a.name)
	had := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		a.log.Error("reconcile: read instance record", "err", err)
		return true
	}
	rec := recordOf(a.name, s.hello.Active, s.hello.BootID)
	if had && sameState(prev, rec) && prev.BootID == rec.BootID {
		return had
	}
	rec.UpdatedAt = time.Now().UTC()
	// A change of persona is audited in the record's commit; a new boot
	// alone is not.
	var evs []store.AuditEvent
	from, to := "none", describe(rec)
	if had {
		from = describe(prev)
	}
	if had && !sameState(prev, rec) || !had && rec.Persona != nil {
		evs = append(evs, store.AuditEvent{
			Type:         AuditReconciled,
			Actor:        SystemActor,
			Persona:      personaName(rec.Persona),
			ActivationID: rec.ActivationID,
			Result:       "reconciled",
			Detail:       fmt.Sprintf("guest reports %s; store had %s", to, from),
		})
	}
	if err := st.PutInstance(rec, evs...); err != nil {
		a.log.Error("reconcile: write instance record", "err", err)
		return had
	}
	if len(evs) > 0 {
		a.log.Info("reconciled instance record with the guest", "from", from, "to", to)
		a.m.countAudit(evs)
	}
	return had
}

// acquire takes the instance's activation slot within ctx.
func (a *agent) acquire(ctx context.Context) error {
	select {
	case a.actSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *agent) release() { <-a.actSem }

// recordOf is the instance record of what a guest holds.
func recordOf(instance string, act *protocol.ActiveState, bootID string) store.InstanceRecord {
	rec := store.InstanceRecord{Instance: instance, BootID: bootID}
	if act != nil {
		p := act.Persona.Clone()
		rec.Persona = &p
		rec.Revision = act.Revision
		rec.ActivationID = act.ActivationID
		rec.ActivatedAt = act.ActivatedAt
	}
	return rec
}

// sameState reports whether two records name the same activation. Two
// records of no persona are the same whatever deactivation led there.
func sameState(x, y store.InstanceRecord) bool {
	if x.Persona == nil && y.Persona == nil {
		return true
	}
	return personaName(x.Persona) == personaName(y.Persona) &&
		x.Revision == y.Revision && x.ActivationID == y.ActivationID
}

func describe(rec store.InstanceRecord) string {
	if rec.Persona == nil {
		return "no persona"
	}
	return fmt.Sprintf("persona %q (revision %d, activation %s)", rec.Persona.Name, rec.Revision, rec.ActivationID)
}

func personaName(p *protocol.Persona) string {
	if p == nil {
		return ""
	}
	return p.Name
}

func activeName(act *protocol.ActiveState) string {
	if act == nil {
		return ""
	}
	return act.Persona.Name
}

func cloneActive(act *protocol.ActiveState) *protocol.ActiveState {
	if act == nil {
		return nil
	}
	c := *act
	c.Persona = act.Persona.Clone()
	return &c
}
