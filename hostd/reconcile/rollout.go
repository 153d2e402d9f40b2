package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// Rollout defaults and bounds.
const (
	DefaultMaxParallel = 5
	DefaultMaxFailures = 1
	MaxParallelLimit   = 256
)

// The rollout's request, results and summary are the API's.
type (
	RolloutRequest = apitypes.RolloutRequest
	RolloutResult  = apitypes.RolloutResult
	RolloutSummary = apitypes.RolloutSummary
)

// ErrInvalidRollout reports a rollout request the reconciler refuses; it is
// wrapped in *RequestError naming the field.
var ErrInvalidRollout = errors.New("invalid rollout request")

// RequestError names the field of a refused rollout request.
type RequestError struct {
	Field, Reason string
}

func (e *RequestError) Error() string { return e.Field + ": " + e.Reason }
func (e *RequestError) Unwrap() error { return ErrInvalidRollout }

// normalise checks the request and fills in the defaults.
func normalise(q *RolloutRequest) error {
	switch {
	case q.MaxParallel < 0 || q.MaxParallel > MaxParallelLimit:
		return &RequestError{"max_parallel", fmt.Sprintf("must be between 1 and %d (0: %d)", MaxParallelLimit, DefaultMaxParallel)}
	case q.MaxFailures < 0:
		return &RequestError{"max_failures", fmt.Sprintf("must be at least 1 (0: %d)", DefaultMaxFailures)}
	case len(q.Instances) > 100000:
		return &RequestError{"instances", "at most 100000 instances"}
	}
	if q.MaxParallel == 0 {
		q.MaxParallel = DefaultMaxParallel
	}
	if q.MaxFailures == 0 {
		q.MaxFailures = DefaultMaxFailures
	}
	for i, id := range q.Instances {
		if id == "" {
			return &RequestError{fmt.Sprintf("instances[%d]", i), "must not be empty"}
		}
	}
	return nil
}

// Rollout moves instances to persona's current revision, at most
// MaxParallel at a time, and starts no new one once MaxFailures have failed
// (a failed activation rolls back in the guest: those instances keep their
// previous persona, their sync state says failed). Each instance's desired
// state becomes the revision when it is started; skipped instances keep
// theirs. progress, when set, receives each result as it is known (one call
// at a time). A dry run changes nothing and answers each instance's diff.
//
// Errors: store.ErrNotFound for an unknown persona, *RequestError for a bad
// request, agents.ErrUnknownInstance for an instance not managed.
func (r *Reconciler) Rollout(ctx context.Context, persona string, q RolloutRequest, actor string, progress func(RolloutResult)) (RolloutSummary, error) {
	start := time.Now()
	if err := normalise(&q); err != nil {
		return RolloutSummary{}, err
	}
	p, err := r.st.GetPersona(persona)
	if err != nil {
		return RolloutSummary{}, err
	}
	targets := slices.Clone(q.Instances)
	if len(targets) == 0 {
		all, err := r.st.ListDesired()
		if err != nil {
			return RolloutSummary{}, err
		}
		for _, d := range all {
			if d.PersonaName() == persona {
				targets = append(targets, d.Instance)
			}
		}
	}
	slices.Sort(targets)
	targets = slices.Compact(targets)
	for _, inst := range targets {
		if _, err := r.agents.Get(inst); err != nil {
			return RolloutSummary{}, err
		}
	}
	sum := RolloutSummary{Persona: p.Name, Revision: p.Revision, DryRun: q.DryRun, MaxParallel: q.MaxParallel, MaxFailures: q.MaxFailures, Total: len(targets)}
	if !q.DryRun {
		r.audit(store.AuditEvent{Type: store.AuditRolloutStarted, Actor: actor, Persona: p.Name,
			Detail: fmt.Sprintf("revision %d to %d instances, max_parallel %d, max_failures %d", p.Revision, len(targets), q.MaxParallel, q.MaxFailures)})
	}

	var (
		mu       sync.Mutex
		failures int
		wg       sync.WaitGroup
		sem      = make(chan struct{}, q.MaxParallel)
	)
	report := func(res RolloutResult) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case res.Failed():
			sum.Failed++
			failures++
		case res.Result == apitypes.RolloutActivated:
			sum.Activated++
		case res.Result == apitypes.RolloutInSync:
			sum.InSync++
		case res.Result == apitypes.RolloutPending:
			sum.Pending++
		case res.Result == apitypes.RolloutSkipped:
			sum.Skipped++
			sum.Stopped = true
		}
		if progress != nil {
			progress(res)
		}
	}
	to := protocol.PersonaRef{Name: p.Name, Revision: p.Revision}
	for _, inst := range targets {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		mu.Lock()
		failed := failures
		mu.Unlock()
		stop := failed >= q.MaxFailures
		if ctx.Err() != nil {
			report(RolloutResult{Instance: inst, Result: apitypes.RolloutSkipped, From: r.holding(inst), To: to, Error: "the rollout was cancelled: " + ctx.Err().Error()})
			continue
		}
		if stop {
			<-sem
			report(RolloutResult{Instance: inst, Result: apitypes.RolloutSkipped, From: r.holding(inst), To: to, Error: fmt.Sprintf("not started: %d failures reached max_failures %d", failed, q.MaxFailures)})
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			report(r.rolloutOne(ctx, inst, p, q.DryRun, actor))
		}()
	}
	wg.Wait()
	sum.DurationMillis = float64(time.Since(start).Microseconds()) / 1000
	if !q.DryRun {
		r.audit(store.AuditEvent{Type: store.AuditRolloutFinished, Actor: actor, Persona: p.Name, Result: rolloutVerdict(sum),
			Detail: fmt.Sprintf("revision %d: %d instances, %d activated, %d in sync, %d failed, %d pending, %d skipped",
				p.Revision, sum.Total, sum.Activated, sum.InSync, sum.Failed, sum.Pending, sum.Skipped)})
	}
	return sum, nil
}

// holding is what the instance's guest holds as far as its session knows
// (nil: none, or not connected).
func (r *Reconciler) holding(inst string) *protocol.PersonaRef {
	st, err := r.agents.Get(inst)
	if err != nil || st.Active == nil {
		return nil
	}
	return &protocol.PersonaRef{Name: st.Active.Persona.Name, Revision: st.Active.Revision}
}

func rolloutVerdict(s RolloutSummary) string {
	switch {
	case s.Stopped:
		return "stopped"
	case s.Failed > 0:
		return "failed"
	case s.Pending > 0:
		return "pending"
	}
	return "completed"
}

// rolloutOne moves one instance (or, in a dry run, asks its guest what would
// change).
func (r *Reconciler) rolloutOne(ctx context.Context, inst string, p protocol.Persona, dryRun bool, actor string) (res RolloutResult) {
	start := time.Now()
	res = RolloutResult{Instance: inst, To: protocol.PersonaRef{Name: p.Name, Revision: p.Revision}}
	// Named result: the deferred duration is part of what is returned.
	defer func() { res.DurationMillis = float64(time.Since(start).Microseconds()) / 1000 }()
	if dryRun {
		g, err := r.agents.Guest(inst)
		if err != nil {
			res.Result, res.Error = apitypes.RolloutError, err.Error()
			return res
		}
		if act := g.Active(); act != nil {
			res.From = &protocol.PersonaRef{Name: act.Persona.Name, Revision: act.Revision}
		}
		d, err := g.DryRun(ctx, p)
		if err != nil {
			res.Result, res.Error = apitypes.RolloutError, err.Error()
			return res
		}
		res.Result, res.Diff = apitypes.RolloutDryRun, &d
		return res
	}
	unlock, err := r.lock(ctx, inst)
	if err != nil {
		res.Result, res.Error = apitypes.RolloutError, err.Error()
		return res
	}
	defer unlock()
	d := desiredOf(inst, p, store.DesiredByRollout, actor)
	if _, err := r.st.PutDesired(d); err != nil {
		res.Result, res.Error = apitypes.RolloutError, err.Error()
		return res
	}
	g, err := r.agents.Guest(inst)
	if err != nil {
		res.Result, res.Error = apitypes.RolloutPending, err.Error()+"; the instance converges when its agent connects"
		return res
	}
	if act := g.Active(); act != nil {
		res.From = &protocol.PersonaRef{Name: act.Persona.Name, Revision: act.Revision}
	}
	o := r.converge(ctx, g, d, actor, ReasonRollout, "")
	switch {
	case !o.changed:
		res.Result = apitypes.RolloutInSync
	case o.err != nil && errors.Is(o.err, agents.ErrNotConnected):
		res.Result, res.Error = apitypes.RolloutPending, o.err.Error()+"; the instance converges when its agent connects"
	case o.err != nil:
		res.Result, res.Error = apitypes.RolloutError, o.err.Error()
	default:
		res.Result, res.Phase, res.Script, res.Error = o.res.Result, o.res.Phase, o.res.Script, o.res.Error
	}
	return res
}

// DryRun asks the instance's guest what activating persona p would change.
func (r *Reconciler) DryRun(ctx context.Context, instance string, p protocol.Persona) (protocol.ActivationDiff, error) {
	g, err := r.agents.Guest(instance)
	if err != nil {
		return protocol.ActivationDiff{}, err
	}
	return g.DryRun(ctx, p)
}

// AutoRollout starts, in the background, a rollout of persona's current
// revision to the instances desiring it (persona field rollout "auto").
func (r *Reconciler) AutoRollout(persona, actor string) {
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		sum, err := r.Rollout(r.ctx, persona, RolloutRequest{}, actor, nil)
		if err != nil {
			r.log.Error("automatic rollout failed", "persona", persona, "err", err)
			return
		}
		r.log.Info("automatic rollout finished", "persona", persona, "revision", sum.Revision,
			"activated", sum.Activated, "failed", sum.Failed, "skipped", sum.Skipped)
	}()
}
