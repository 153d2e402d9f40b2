// Package reconcile keeps every instance's desired persona and converges the
// guest to it: on every (re)connect of the guest's agent, whenever the desired
// state changes (activation, deactivation, rollout), never re-running the
// scripts of a revision the guest already holds. It answers each instance's
// sync state (in_sync, drifted, pending, unreachable, failed) and rolls a
// persona's new revision out in bounded batches.
//
//	desired (store) ──► reconciler ──► actual (what the guest confirms)
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/metrics"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// SyncStates lists every sync state, in a stable order.
var SyncStates = apitypes.SyncStates

// Activation reasons the guest's audit records.
const (
	ReasonAPI       = "api"
	ReasonDefault   = agents.ReasonDefault
	ReasonReconcile = "reconcile"
	ReasonRollout   = "rollout"
)

// Store is what the reconciler keeps and reads; *store.Store satisfies it. A
// second backend (fleet mode) holds the same records.
type Store interface {
	GetDesired(instance string) (store.DesiredState, error)
	PutDesired(d store.DesiredState, events ...store.AuditEvent) ([]store.AuditEvent, error)
	ListDesired() ([]store.DesiredState, error)
	GetInstance(instance string) (store.InstanceRecord, error)
	GetPersona(name string) (protocol.Persona, error)
	DefaultPersona() (protocol.Persona, bool, error)
	AppendAudit(evs ...store.AuditEvent) ([]store.AuditEvent, error)
	// Writable reports whether writes are taken now (nil) or why not.
	Writable() error
}

// Config configures a Reconciler.
type Config struct {
	Store   Store
	Metrics *metrics.Metrics // nil: a private set
	Logger  *slog.Logger     // nil: slog.Default()
	// ScriptTimeout bounds each script of the reconciler's own activations
	// (0: the guest's default, 5 minutes).
	ScriptTimeout time.Duration
	// DefaultPersona gives an instance the host has never seen the default
	// persona (when one is defined). The host daemon sets it.
	DefaultPersona bool
	// Host and HostLabels are this host's name and labels in the fleet, as
	// assignments' selectors see them.
	Host       string
	HostLabels map[string]string
	// ReassessInterval is how often every instance is looked at again for
	// the assignments (default 15 s), besides Reassess and each connect.
	ReassessInterval time.Duration
}

// Reconciler converges instances to their desired state. Bind it to the
// agent manager (whose Config.Converger it is) before instances are added.
type Reconciler struct {
	cfg Config
	st  Store
	log *slog.Logger
	met *metrics.Metrics

	agents *agents.Manager

	ctx    context.Context // ends background rollouts on Close
	cancel context.CancelFunc
	bg     sync.WaitGroup

	facts    atomic.Pointer[func(string) Facts]
	reassess chan struct{} // Reassess's requests, cap 1
	loopOnce sync.Once     // the reassessing loop starts at the first Reassess

	mu       sync.Mutex
	locks    map[string]chan struct{} // per instance, cap 1
	failures map[string]failure       // the last failed attempt, by instance
	// applying holds the desired state an activation or deactivation is
	// applying, by instance, from when it has the instance's slot until
	// its outcome is written: the status shows it (pending) meanwhile,
	// before it is in the store.
	applying map[string]store.DesiredState
}

// failure is a failed attempt to apply a desired state.
type failure struct {
	desired store.DesiredState
	reason  string
	result  string
	script  *protocol.ScriptResult
	at      time.Time
}

// New returns a reconciler; Bind must be called before it is used.
func New(cfg Config) *Reconciler {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New()
	}
	if cfg.ReassessInterval <= 0 {
		cfg.ReassessInterval = 15 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Reconciler{
		cfg: cfg, st: cfg.Store, log: cfg.Logger, met: cfg.Metrics,
		ctx: ctx, cancel: cancel, reassess: make(chan struct{}, 1),
		locks: map[string]chan struct{}{}, failures: map[string]failure{}, applying: map[string]store.DesiredState{},
	}
}

// Bind connects the reconciler to the agent manager it acts through, and
// registers its metrics (unless a reconciler registered them on the same
// registry already).
func (r *Reconciler) Bind(m *agents.Manager) {
	r.mu.Lock() // the reassessing loop may run already (Reassess before Bind)
	r.agents = m
	r.mu.Unlock()
	if err := r.met.Registry.Register(&collector{r: r}); err != nil {
		r.log.Warn("instance metrics not registered", "err", err)
	}
}

// Close stops background rollouts and waits for them.
func (r *Reconciler) Close() {
	r.mu.Lock() // a Reassess starting its loop either sees the end or is waited for
	r.cancel()
	r.mu.Unlock()
	r.bg.Wait()
}

// lock takes the instance's reconcile slot within ctx: one decision and its
// action at a time per instance.
func (r *Reconciler) lock(ctx context.Context, instance string) (unlock func(), err error) {
	r.mu.Lock()
	l := r.locks[instance]
	if l == nil {
		l = make(chan struct{}, 1)
		r.locks[instance] = l
	}
	r.mu.Unlock()
	select {
	case l <- struct{}{}:
		return func() { <-l }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// holds reports whether act is the desired state d.
func holds(act *protocol.ActiveState, d store.DesiredState) bool {
	if d.Persona == nil {
		return act == nil
	}
	return act != nil && act.Persona.Name == d.Persona.Name && act.Revision == d.Revision
}

// sameDesired reports whether two desired states name the same target.
func sameDesired(x, y store.DesiredState) bool {
	return x.PersonaName() == y.PersonaName() && x.Revision == y.Revision
}

func describeDesired(d store.DesiredState) string {
	if d.Persona == nil {
		return "no persona"
	}
	return fmt.Sprintf("persona %q revision %d", d.Persona.Name, d.Revision)
}

func describeActive(act *protocol.ActiveState) string {
	if act == nil {
		return "no persona"
	}
	return fmt.Sprintf("persona %q revision %d", act.Persona.Name, act.Revision)
}

// desiredOf is the desired state of persona p at its revision.
func desiredOf(instance string, p protocol.Persona, setBy, actor string) store.DesiredState {
	p.CreatedAt, p.UpdatedAt = p.CreatedAt.UTC(), p.UpdatedAt.UTC()
	return store.DesiredState{Instance: instance, Persona: &p, Revision: p.Revision, SetBy: setBy, Actor: actor}
}

// Connected is the agent manager's Converger: on every new session, before
// it is published, bring the guest to its desired state. An instance never
// seen gets its first desired state here: what it holds, else the default
// persona (when defined), else none.
func (r *Reconciler) Connected(ctx context.Context, g *agents.Guest) {
	inst := g.Instance()
	unlock, err := r.lock(ctx, inst)
	if err != nil {
		return
	}
	defer unlock()
	d, err := r.st.GetDesired(inst)
	auditType := store.AuditReconciled
	reason := ReasonReconcile
	switch {
	case errors.Is(err, store.ErrNotFound):
		d, err = r.firstDesired(inst, g)
		if err != nil {
			r.log.Error("reconcile: record the first desired state", "instance", inst, "err", err)
			return
		}
		if d.SetBy == store.DesiredByDefault {
			auditType, reason = store.AuditDefaultActivation, ReasonDefault
		}
	case err != nil:
		r.log.Error("reconcile: read the desired state", "instance", inst, "err", err)
		return
	default:
		// The assignments may have changed while the guest was away.
		nd, changed, err := r.follow(inst, d)
		if err != nil {
			r.log.Error("reconcile: assignments", "instance", inst, "err", err)
		}
		if changed {
			if _, err := r.st.PutDesired(nd); err != nil {
				r.log.Error("reconcile: write the desired state", "instance", inst, "err", err)
				return
			}
			d, reason = nd, ReasonAssignment
		}
	}
	r.converge(ctx, g, d, agents.SystemActor, reason, auditType)
}

// firstDesired records the desired state of an instance the host has none
// for: an assignment's persona, else what it holds, else the default.
func (r *Reconciler) firstDesired(inst string, g *agents.Guest) (store.DesiredState, error) {
	d := store.DesiredState{Instance: inst, SetBy: store.DesiredByAdoption, Actor: agents.SystemActor}
	ad, assigned, err := r.assigned(inst)
	if err != nil {
		return d, err
	}
	switch act := g.Active(); {
	case assigned:
		d = ad
	case act != nil:
		d = desiredOf(inst, act.Persona, store.DesiredByAdoption, agents.SystemActor)
		d.Revision = act.Revision
	case g.Known():
		// Seen before the host kept desired states: bare stays bare.
	case r.cfg.DefaultPersona:
		p, ok, err := r.st.DefaultPersona()
		if err != nil {
			return d, err
		}
		if ok {
			d = desiredOf(inst, p, store.DesiredByDefault, agents.SystemActor)
		}
	}
	if _, err := r.st.PutDesired(d); err != nil {
		return d, err
	}
	r.log.Info("first desired state recorded", "instance", inst, "desired", describeDesired(d), "set_by", d.SetBy)
	return d, nil
}

// outcome is what one convergence did.
type outcome struct {
	changed bool // the guest was asked to change
	res     protocol.ActivateResult
	id      string
	err     error
}

// ok reports whether the guest holds the desired state afterwards.
func (o outcome) ok() bool {
	return o.err == nil && (!o.changed || o.res.Result == protocol.ResultActivated || o.res.Result == protocol.ResultDeactivated)
}

// converge brings the guest to d, when it does not hold it already; the
// caller holds the instance's lock. Nothing is audited when nothing changed.
// With auditType "" the caller audits.
func (r *Reconciler) converge(ctx context.Context, g *agents.Guest, d store.DesiredState, actor, reason, auditType string) outcome {
	inst := g.Instance()
	act := g.Active()
	if holds(act, d) {
		r.clearFailure(inst)
		return outcome{}
	}
	o := outcome{changed: true}
	if d.Persona == nil {
		o.res, o.err = g.Deactivate(ctx, actor, r.cfg.ScriptTimeout)
	} else {
		p := *d.Persona
		p.Revision = d.Revision
		o.res, o.id, o.err = g.Activate(ctx, p, actor, reason, r.cfg.ScriptTimeout)
	}
	r.noteOutcome(inst, d, o)
	if auditType != "" {
		ev := store.AuditEvent{
			Type: auditType, Instance: inst, Actor: agents.SystemActor, Persona: d.PersonaName(),
			ActivationID: o.id, Result: o.res.Result,
			Detail: fmt.Sprintf("guest held %s; desired %s (set by %s): %s", describeActive(act), describeDesired(d), d.SetBy, describeOutcome(o)),
		}
		if o.err != nil {
			ev.Result = "error"
		}
		r.audit(ev)
	}
	level := slog.LevelInfo
	if !o.ok() {
		level = slog.LevelWarn
	}
	r.log.Log(ctx, level, "converged instance to its desired state", "instance", inst, "from", describeActive(act),
		"desired", describeDesired(d), "result", o.res.Result, "err", o.err)
	return o
}

func describeOutcome(o outcome) string {
	if o.err != nil {
		return o.err.Error()
	}
	s := "result " + o.res.Result
	if o.res.Phase != "" {
		s += ", " + o.res.Phase + "-activation script"
	}
	if sc := o.res.Script; sc != nil {
		s += fmt.Sprintf(" exited %d", sc.ExitCode)
		if sc.TimedOut {
			s += " (timed out)"
		}
	}
	if o.res.Error != "" {
		s += ": " + o.res.Error
	}
	return s
}

// noteOutcome keeps a failed attempt for the instance's status, or clears
// the last one after a success.
func (r *Reconciler) noteOutcome(inst string, d store.DesiredState, o outcome) {
	if o.ok() {
		r.clearFailure(inst)
		return
	}
	if o.err != nil && errors.Is(o.err, agents.ErrNotConnected) {
		// Not a failure of the desired state: it applies on reconnect.
		return
	}
	f := failure{desired: d, result: o.res.Result, script: o.res.Script, at: time.Now().UTC(), reason: describeOutcome(o)}
	if o.err != nil {
		f.result = "error"
	}
	r.mu.Lock()
	r.failures[inst] = f
	r.mu.Unlock()
}

func (r *Reconciler) clearFailure(inst string) {
	r.mu.Lock()
	delete(r.failures, inst)
	r.mu.Unlock()
}

func (r *Reconciler) audit(evs ...store.AuditEvent) {
	stored, err := r.st.AppendAudit(evs...)
	if err != nil {
		r.log.Error("audit write failed", "err", err)
		return
	}
	for _, ev := range stored {
		r.met.AuditEvents.WithLabelValues(ev.Type).Inc()
	}
}

// Activate sets the instance's desired state to persona p at its revision
// and activates it in the guest (an explicit activation always runs, scripts
// included). audit are the request's host audit events, written with the
// outcome's instance record or on their own, once. Errors are the agent
// manager's: ErrUnknownInstance and ErrNotConnected before anything changed,
// deadlines, guest refusals.
func (r *Reconciler) Activate(ctx context.Context, instance string, p protocol.Persona, actor, reason string, scriptTimeout time.Duration, audit ...store.AuditEvent) (protocol.ActivateResult, error) {
	return r.apply(ctx, instance, desiredOf(instance, p, store.DesiredByActivation, actor), reason, scriptTimeout, audit)
}

// Deactivate sets the instance's desired state to none, deliberately, and
// returns the guest to no persona.
func (r *Reconciler) Deactivate(ctx context.Context, instance, actor string, scriptTimeout time.Duration, audit ...store.AuditEvent) (protocol.ActivateResult, error) {
	return r.apply(ctx, instance, store.DesiredState{Instance: instance, SetBy: store.DesiredByDeactivation, Actor: actor}, ReasonAPI, scriptTimeout, audit)
}

func (r *Reconciler) apply(ctx context.Context, instance string, d store.DesiredState, reason string, scriptTimeout time.Duration, audit []store.AuditEvent) (protocol.ActivateResult, error) {
	g, err := r.prepare(ctx, instance, d)
	if err != nil {
		// The request is audited even when it never reached the guest.
		for i := range audit {
			if audit[i].Instance == "" {
				audit[i].Instance = instance
			}
		}
		if len(audit) > 0 {
			r.audit(audit...)
		}
		return protocol.ActivateResult{}, err
	}
	defer g.unlock()
	shown := d
	shown.UpdatedAt = time.Now().UTC()
	r.mu.Lock()
	r.applying[instance] = shown
	r.mu.Unlock()
	o := outcome{changed: true}
	o.res, o.id, o.err = g.ApplyDesired(ctx, d, reason, scriptTimeout, audit...)
	r.mu.Lock()
	delete(r.applying, instance)
	r.mu.Unlock()
	r.noteOutcome(instance, d, o)
	return o.res, o.err
}

// lockedGuest is a session with the instance's reconcile slot held.
type lockedGuest struct {
	*agents.Guest
	unlock func()
}

// prepare takes the instance's slot; the instance must have a live session
// and the store must take writes.
//
// The desired state d is written after the guest answers, in one synced
// commit with the instance record of the outcome and the request's audit
// events (agents.Guest.ApplyDesired), not before the guest is asked: one
// durable host write per activation instead of two. What a crash of the
// host keeps:
//   - The client is answered only after that commit: a desired state the
//     API acknowledged is durable, as before; so is a deliberate
//     deactivation, which no default then overrides.
//   - A failed, aborted or cut-off activation still writes d (with the
//     request's events) before the answer: the host keeps converging the
//     guest to it, as when d was written first.
//   - A crash between the guest's change and the commit leaves the guest
//     on the new persona and the host on the old desired state, which the
//     reconciler restores when the guest reconnects (the guest's audit log
//     holds both changes). The request was never acknowledged: its client
//     saw the connection cut and does not know the outcome, as with any
//     request cut by a crash. Before, a crash between the desired state's
//     commit and the guest's answer applied the request after the restart
//     instead; either outcome is one the client has to check.
//   - Writable is checked before the guest is asked, so that a store that
//     refuses writes (low disk space) refuses the request before the guest
//     changes, as the first write did.
func (r *Reconciler) prepare(ctx context.Context, instance string, d store.DesiredState) (lockedGuest, error) {
	if _, err := r.agents.Guest(instance); err != nil {
		return lockedGuest{}, err
	}
	unlock, err := r.lock(ctx, instance)
	if err != nil {
		return lockedGuest{}, err
	}
	// The session may have been replaced while this call waited its turn.
	g, err := r.agents.Guest(instance)
	if err == nil {
		err = r.st.Writable()
	}
	if err != nil {
		unlock()
		return lockedGuest{}, err
	}
	return lockedGuest{g, unlock}, nil
}
