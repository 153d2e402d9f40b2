package agents

import (
	"context"
	"slices"
	"time"

	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// Converger brings a guest to what it should run. Connected is called on
// every new session before the session is published: no API call reaches the
// guest until it returns, so whatever it activates is in place before the
// first command. It must bound its own work (Guest's calls have deadlines).
type Converger interface {
	Connected(ctx context.Context, g *Guest)
}

// Guest is one session of an instance's agent, for a Converger: what the
// guest holds, and calls that change it. Activations through a Guest take the
// instance's activation slot like the Manager's.
type Guest struct {
	a     *agent
	s     *session
	known bool
}

// Guest returns the live session of an instance; ErrUnknownInstance or
// ErrNotConnected when there is none.
func (m *Manager) Guest(instance string) (*Guest, error) {
	a, s, err := m.connected(instance)
	if err != nil {
		return nil, err
	}
	return &Guest{a: a, s: s, known: true}, nil
}

// Instance is the instance's name.
func (g *Guest) Instance() string { return g.a.name }

// Known reports whether the host had a record of the instance before this
// session (false: the host has never seen it).
func (g *Guest) Known() bool { return g.known }

// BootID is the guest's boot id in this session.
func (g *Guest) BootID() string { return g.s.hello.BootID }

// HasCapability reports whether the guest announced capability c.
func (g *Guest) HasCapability(c string) bool { return slices.Contains(g.s.hello.Capabilities, c) }

// Active is what the guest holds as far as this session knows (nil: none):
// a shared snapshot, to read and never modify.
func (g *Guest) Active() *protocol.ActiveState {
	g.a.mu.Lock()
	defer g.a.mu.Unlock()
	return g.s.active
}

// Activate activates p (at p.Revision) in this session, like
// Manager.Activate (audit: the request's host audit events); it also
// returns the activation id.
func (g *Guest) Activate(ctx context.Context, p protocol.Persona, actor, reason string, scriptTimeout time.Duration, audit ...store.AuditEvent) (protocol.ActivateResult, string, error) {
	req := g.a.m.newRequestAudit(g.a.name, audit)
	defer req.flush()
	ctx, done, err := g.slot(ctx, scriptTimeout)
	if err != nil {
		return protocol.ActivateResult{}, "", err
	}
	defer done()
	return g.a.activate(ctx, g.s, p, actor, reason, scriptTimeout, req)
}

// slot takes the instance's slot for an activation or deactivation with
// scripts bounded by scriptTimeout, within its deadline; done releases both.
func (g *Guest) slot(ctx context.Context, scriptTimeout time.Duration) (_ context.Context, done func(), _ error) {
	ctx, cancel := g.a.m.withDefaultDeadline(ctx, activationWant(scriptTimeout))
	if err := g.a.acquire(ctx); err != nil {
		cancel()
		return nil, nil, err
	}
	return ctx, func() { g.a.release(); cancel() }, nil
}

// ApplyDesired brings the guest to the desired state d in this session (an
// activation of d.Persona at d.Revision, or a deactivation for none; scripts
// run as for Activate) and records d as the instance's desired state: in the
// same commit as the instance record of the outcome, or on its own when the
// outcome changes no record (a failure, a refusal, an error), so the host
// keeps converging the guest to it. audit are the request's host audit
// events. An error also when d could not be recorded after the guest
// changed: the request is not acknowledged then. d must be of this instance.
func (g *Guest) ApplyDesired(ctx context.Context, d store.DesiredState, reason string, scriptTimeout time.Duration, audit ...store.AuditEvent) (protocol.ActivateResult, string, error) {
	req := g.a.m.newRequestAudit(g.a.name, audit)
	req.desired = &d
	defer req.flush()
	ctx, done, err := g.slot(ctx, scriptTimeout)
	if err != nil {
		return protocol.ActivateResult{}, "", err
	}
	defer done()
	if d.Persona == nil {
		res, err := g.a.deactivate(ctx, g.s, d.Actor, scriptTimeout, req)
		return res, "", err
	}
	p := *d.Persona
	p.Revision = d.Revision
	return g.a.activate(ctx, g.s, p, d.Actor, reason, scriptTimeout, req)
}

// Deactivate returns the guest to no persona in this session, like
// Manager.Deactivate.
func (g *Guest) Deactivate(ctx context.Context, actor string, scriptTimeout time.Duration, audit ...store.AuditEvent) (protocol.ActivateResult, error) {
	req := g.a.m.newRequestAudit(g.a.name, audit)
	defer req.flush()
	ctx, done, err := g.slot(ctx, scriptTimeout)
	if err != nil {
		return protocol.ActivateResult{}, err
	}
	defer done()
	return g.a.deactivate(ctx, g.s, actor, scriptTimeout, req)
}

// DryRun asks the guest what activating p would change, against what it
// holds now; nothing changes in the guest. A guest without the dry-run
// capability is not asked: the answer is a *protocol.Error with code
// unsupported_type.
func (g *Guest) DryRun(ctx context.Context, p protocol.Persona) (protocol.ActivationDiff, error) {
	if !g.HasCapability(protocol.CapDryRun) {
		return protocol.ActivationDiff{}, &protocol.Error{Code: protocol.CodeUnsupportedType, Message: "the guest agent does not announce " + protocol.CapDryRun}
	}
	ctx, cancel := g.a.m.withDefaultDeadline(ctx, 0)
	defer cancel()
	d, err := call[protocol.ActivationDiff](ctx, g.s.cl, protocol.TypeDryRun, protocol.DryRun{Persona: p, Revision: p.Revision}, nil)
	if err != nil {
		return protocol.ActivationDiff{}, g.a.callErr(g.s, err)
	}
	return d, nil
}
