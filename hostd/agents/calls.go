package agents

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// Activate asks the instance's guest to activate persona p and waits for the
// outcome (res.Result: activated, aborted, rolled_back, failed). The store's
// instance record follows what the guest confirms. scriptTimeout bounds each
// script in the guest (0: the guest's default, 5 minutes). Without a
// deadline in ctx, the call gets the larger of CallTimeout and
// 2×scriptTimeout+10 s.
//
// audit are host events about the request (who asked for what; a zero Time
// becomes now, an empty Instance the instance's): they are written in the
// same commit as the instance record the outcome changes, or on their own
// when it changes none (a refusal, a failure, an error), once either way.
//
// Errors: ErrUnknownInstance, ErrNotConnected (also when the session ends
// during the call), context.DeadlineExceeded, or a *protocol.Error with
// which the guest refused the request.
func (m *Manager) Activate(ctx context.Context, instance string, p protocol.Persona, actor, reason string, scriptTimeout time.Duration, audit ...store.AuditEvent) (protocol.ActivateResult, error) {
	req := m.newRequestAudit(instance, audit)
	defer req.flush()
	var res protocol.ActivateResult
	err := m.inSlot(ctx, instance, activationWant(scriptTimeout), func(ctx context.Context, a *agent, s *session) (err error) {
		res, _, err = a.activate(ctx, s, p, actor, reason, scriptTimeout, req)
		return err
	})
	return res, err
}

// inSlot runs f with the instance's activation slot held, on its current
// session, within ctx or (without a deadline in ctx) want.
func (m *Manager) inSlot(ctx context.Context, instance string, want time.Duration, f func(context.Context, *agent, *session) error) error {
	a, _, err := m.connected(instance)
	if err != nil {
		return err
	}
	ctx, cancel := m.withDefaultDeadline(ctx, want)
	defer cancel()
	if err := a.acquire(ctx); err != nil {
		return err
	}
	defer a.release()
	// The session may have been replaced while this call waited its turn.
	s, err := a.session()
	if err != nil {
		return err
	}
	return f(ctx, a, s)
}

// Deactivate asks the instance's guest to return to no persona (running the
// active persona's scripts as the guest does), with the same deadlines and
// errors, and the same handling of audit, as Activate.
func (m *Manager) Deactivate(ctx context.Context, instance, actor string, scriptTimeout time.Duration, audit ...store.AuditEvent) (protocol.ActivateResult, error) {
	req := m.newRequestAudit(instance, audit)
	defer req.flush()
	var res protocol.ActivateResult
	err := m.inSlot(ctx, instance, activationWant(scriptTimeout), func(ctx context.Context, a *agent, s *session) (err error) {
		res, err = a.deactivate(ctx, s, actor, scriptTimeout, req)
		return err
	})
	return res, err
}

// deactivate carries one deactivation to the guest and applies the outcome.
// The caller holds the activation slot. req (may be nil) holds the request's
// audit events.
func (a *agent) deactivate(ctx context.Context, s *session, actor string, scriptTimeout time.Duration, req *requestAudit) (protocol.ActivateResult, error) {
	a.mu.Lock()
	persona := activeName(s.active)
	a.mu.Unlock()
	id := newActivationID()
	start := time.Now()
	res, err := call[protocol.ActivateResult](ctx, s.cl, protocol.TypeDeactivate, protocol.Deactivate{
		ActivationID: id, ScriptTimeoutMillis: scriptTimeout.Milliseconds(), Actor: actor,
	}, nil)
	a.m.observeDeactivation(persona, res.Result, err, time.Since(start))
	if err != nil {
		return protocol.ActivateResult{}, a.callErr(s, err)
	}
	if err := a.apply(s, res, protocol.Persona{}, id, req); err != nil {
		return protocol.ActivateResult{}, err
	}
	return res, nil
}

// Exec runs a command through the instance's guest routing table. With
// onOutput non-nil the command is streamed: onOutput receives each chunk
// (protocol.StreamStdout or StreamStderr) in order, on the caller's
// goroutine, and has returned for the last time when Exec returns; the
// result then carries no output. A slow onOutput does not hold up the
// session: up to protocol.DefaultOutputBuffer (8 MiB) of output waits for
// it, and past that the exec fails with protocol.ErrOutputOverflow. Without
// a deadline in ctx, the call gets the larger of CallTimeout and the
// command's timeout+10 s.
//
// Errors: ErrUnknownInstance, ErrNotConnected, context.DeadlineExceeded, or
// *protocol.Error (Code denied, not_found, not_executable, …).
func (m *Manager) Exec(ctx context.Context, instance string, req protocol.Exec, onOutput func(stream byte, data []byte)) (protocol.ExecResult, error) {
	return m.ExecWithInput(ctx, instance, req, nil, onOutput)
}

// Stdin is a command's standard input, read while the command runs.
type Stdin struct {
	R io.Reader
	// Stop, when set, makes a Read of R that waits return: it is called
	// when the exec ends before R's end.
	Stop func()
}

// stdinWindow is how much standard input is on its way to a guest beyond
// what the command has taken.
const stdinWindow = 1 << 20

// MaxStdinWhole bounds the standard input sent in one piece to a guest
// without streamed input (capability exec-stdin).
const MaxStdinWhole = 4 << 20

// ErrStdinTooLarge refuses streamed input larger than MaxStdinWhole for a
// guest that takes it in one piece only.
var ErrStdinTooLarge = errdefs.New(errdefs.ErrTooLarge, "stdin-too-large",
	"the instance's guest agent takes standard input in one piece, at most 4 MiB: update vmpersona-guestd in the instance for streamed input")

// ExecWithInput is Exec with the command's standard input read from in (nil:
// none beyond req.Stdin) as the command runs, a window at a time: a command
// that reads slowly holds in back, and neither daemon holds more than the
// window. A guest without streamed input (an older agent) gets in whole,
// up to MaxStdinWhole.
func (m *Manager) ExecWithInput(ctx context.Context, instance string, req protocol.Exec, in *Stdin, onOutput func(stream byte, data []byte)) (protocol.ExecResult, error) {
	a, s, err := m.connected(instance)
	if err != nil {
		return protocol.ExecResult{}, err
	}
	ctx, cancel := m.withDefaultDeadline(ctx, time.Duration(req.TimeoutMillis)*time.Millisecond+callSlack)
	defer cancel()
	if req.AuditExec == nil {
		audit := !m.cfg.QuietExec
		req.AuditExec = &audit
	}
	var res protocol.ExecResult
	bound := req.MaxOutput // what the answer is checked against
	if bound <= 0 {
		bound = DefaultExecMaxOutput
	}
	var opts protocol.CallOptions
	switch {
	case onOutput != nil && slices.Contains(s.hello.Capabilities, protocol.CapExecWindow):
		// The guest sends at most a window ahead of onOutput: a slow
		// reader holds the command back instead of failing it, so the
		// stream is not cut in total unless the request asks.
		req.Stream, req.Window = true, execWindow
		if req.MaxOutput > 0 {
			onOutput = a.boundOutput(s, req.MaxOutput, onOutput)
		}
		opts.Output, opts.Window = onOutput, execWindow
	case onOutput != nil:
		// An older guest, unpaced: its stream is bounded.
		req.Stream, req.MaxOutput = true, bound
		opts.Output = a.boundOutput(s, bound, onOutput)
	default:
		req.MaxOutput = bound
	}
	switch {
	case in == nil:
	case slices.Contains(s.hello.Capabilities, protocol.CapExecStdin):
		req.InputWindow = stdinWindow
		opts.Input, opts.InputWindow, opts.StopInput = in.R, stdinWindow, in.Stop
	default:
		b, err := io.ReadAll(io.LimitReader(in.R, MaxStdinWhole-int64(len(req.Stdin))+1))
		if err != nil {
			return protocol.ExecResult{}, fmt.Errorf("%w: %w", protocol.ErrInput, err)
		}
		if len(req.Stdin)+len(b) > MaxStdinWhole {
			return protocol.ExecResult{}, ErrStdinTooLarge
		}
		req.Stdin = append(req.Stdin, b...)
	}
	err = s.cl.CallWith(ctx, protocol.TypeExec, req, &res, opts)
	if err == nil {
		if err = checkExecResult(&res, bound); err != nil {
			a.refuseGuest(s, "exec_result", err)
			return protocol.ExecResult{}, err
		}
	}
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) && pe.Code == protocol.CodeDenied {
			m.met.Commands.WithLabelValues(protocol.RouteDenied).Inc()
		}
		return protocol.ExecResult{}, a.callErr(s, err)
	}
	switch res.Route {
	case protocol.RouteDefault, protocol.RouteOverride, protocol.RouteDenied:
		m.met.Commands.WithLabelValues(res.Route).Inc()
	default:
		a.log.Warn("guest answered an exec with an unknown route", "route", res.Route)
	}
	return res, nil
}

// activate carries one activation to the guest and applies the outcome. The
// caller holds the activation slot. req (may be nil) holds the request's
// audit events.
func (a *agent) activate(ctx context.Context, s *session, p protocol.Persona, actor, reason string, scriptTimeout time.Duration, req *requestAudit) (protocol.ActivateResult, string, error) {
	id := newActivationID()
	start := time.Now()
	res, err := call[protocol.ActivateResult](ctx, s.cl, protocol.TypeActivate, protocol.Activate{
		Persona: p, Revision: p.Revision, ActivationID: id,
		ScriptTimeoutMillis: scriptTimeout.Milliseconds(), Actor: actor, Reason: reason,
	}, nil)
	a.m.observeActivation(p.Name, res.Result, err, time.Since(start))
	if err != nil {
		return protocol.ActivateResult{}, id, a.callErr(s, err)
	}
	if err := checkActive("active", res.Active); err != nil {
		a.refuseGuest(s, "activate_result", err)
		return protocol.ActivateResult{}, id, err
	}
	if err := a.apply(s, res, p, id, req); err != nil {
		return protocol.ActivateResult{}, id, err
	}
	return res, id, nil
}

// apply records an activation outcome: the session's view of what the guest
// holds, and the instance record when the guest changed persona, with the
// request's audit events (and its desired state, when it carries one) in the
// same commit. It fails only when the request's desired state could not be
// written: the caller must not acknowledge a choice the host may forget.
func (a *agent) apply(s *session, res protocol.ActivateResult, requested protocol.Persona, id string, req *requestAudit) error {
	a.mu.Lock()
	s.active = cloneActive(res.Active)
	a.mu.Unlock()

	var rec store.InstanceRecord
	switch res.Result {
	case protocol.ResultActivated:
		act := res.Active
		if act == nil { // a guest that did not say: what it confirmed
			act = &protocol.ActiveState{Persona: requested, Revision: requested.Revision, ActivationID: id, ActivatedAt: time.Now().UTC()}
		}
		rec = recordOf(a.name, act, s.hello.BootID)
	case protocol.ResultDeactivated:
		rec = store.InstanceRecord{Instance: a.name, BootID: s.hello.BootID, ActivationID: id, ActivatedAt: time.Now().UTC()}
	default:
		return nil
	}
	rec.UpdatedAt = time.Now().UTC()
	evs := req.pending()
	var err error
	if d := req.desiredState(); d != nil {
		err = a.m.st.PutInstanceDesired(rec, *d, evs...)
	} else {
		err = a.m.st.PutInstance(rec, evs...)
	}
	if err != nil {
		a.log.Error("write instance record after activation", "result", res.Result, "err", err)
		if req.desiredState() != nil {
			// The guest holds the persona, the host may not know that it
			// was chosen: the request fails (its events are written on
			// their own), and the next connect converges the guest to the
			// desired state the host does hold.
			req.desired = nil
			return fmt.Errorf("%s: record the %s outcome: %w", a.name, res.Result, err)
		}
		// The guest holds the persona: the next connect reconciles the
		// record. The caller still gets the guest's answer.
		return nil
	}
	req.done()
	a.m.countAudit(evs)
	return nil
}

// callErr maps a session error: a session that ended is ErrNotConnected;
// context errors and guest refusals pass through.
func (a *agent) callErr(s *session, err error) error {
	if errors.Is(err, protocol.ErrClosed) {
		if cause := s.cl.Err(); cause != nil && !errors.Is(cause, protocol.ErrClosed) {
			return fmt.Errorf("%w: %s: session ended: %v", ErrNotConnected, a.name, cause)
		}
		return fmt.Errorf("%w: %s: session ended", ErrNotConnected, a.name)
	}
	return err
}

func (m *Manager) observeActivation(persona, result string, err error, d time.Duration) {
	if err != nil || result == "" {
		result = resultError
	}
	m.met.Activations.WithLabelValues(persona, result).Inc()
	m.met.ActivationDuration.Observe(d.Seconds())
}

func (m *Manager) observeDeactivation(persona, result string, err error, d time.Duration) {
	if err != nil || result == "" {
		result = resultError
	}
	m.met.Deactivations.WithLabelValues(persona, result).Inc()
	m.met.DeactivationDuration.Observe(d.Seconds())
}

// activationWant is the deadline an activation needs: two scripts and slack.
func activationWant(scriptTimeout time.Duration) time.Duration {
	if scriptTimeout <= 0 {
		scriptTimeout = guestScriptTimeout
	}
	return 2*scriptTimeout + callSlack
}

// newActivationID returns 16 random bytes in hex.
func newActivationID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// call runs one request on a session. The session's write honours ctx and
// each call has its own output buffer, so call returns as soon as ctx is
// done (even while the session is stuck writing to a peer that stopped
// reading), and a slow onOutput holds up no other call: it runs on this
// goroutine, has returned for the last time when call returns, and a call
// whose consumer falls more than protocol.DefaultOutputBuffer behind fails
// with protocol.ErrOutputOverflow.
// execWindow is how much streamed output a guest sends ahead of its
// consumer (well inside the session's per-call output buffer).
const execWindow = 1 << 20

func call[T any](ctx context.Context, cl *protocol.Client, t protocol.Type, req any, onOutput func(stream byte, data []byte)) (T, error) {
	var v T
	err := cl.Call(ctx, t, req, &v, onOutput)
	return v, err
}
