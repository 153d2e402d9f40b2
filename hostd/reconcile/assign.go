package reconcile

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/assignment"
	"github.com/vmpersona/vmpersona/hostd/store"
)

// Assignments decide the desired persona of the instances they select: the
// highest-priority assignment selecting an instance names its persona (at
// its current revision when the instance changes persona; a persona update
// then follows the rollout rules, as for any instance). Two kinds of desired
// state are never overridden: an explicit activation and an explicit
// deactivation of that instance. An instance no assignment selects keeps
// its desired state (deleting an assignment deactivates nothing).
//
// The reconciler looks at every instance again when told (Reassess: the
// assignments, the personas or an instance's labels changed), every
// ReassessInterval, and at each guest's connect.

// ReasonAssignment is the activation reason the guest's audit records.
const ReasonAssignment = "assignment"

// Facts are what selectors match of an instance besides its name.
type Facts struct {
	UUID   string
	Labels map[string]string
}

// assignmentReader is a store that keeps assignments (both of the host
// daemon's do).
type assignmentReader interface {
	ListAssignments() ([]assignment.Assignment, error)
}

// SetFacts gives the reconciler the source of each instance's UUID and
// labels (discovery, flags); nil: none.
func (r *Reconciler) SetFacts(f func(instance string) Facts) {
	r.facts.Store(&f)
}

// target is what selectors see of inst.
func (r *Reconciler) target(inst string) assignment.Target {
	t := assignment.Target{Instance: inst, Host: r.cfg.Host, HostLabels: r.cfg.HostLabels}
	if f := r.facts.Load(); f != nil && *f != nil {
		fs := (*f)(inst)
		t.UUID, t.Labels = fs.UUID, fs.Labels
	}
	return t
}

// explicit reports whether d was chosen for this instance by a person: an
// assignment never overrides it.
func explicit(d store.DesiredState) bool {
	return d.SetBy == store.DesiredByActivation || d.SetBy == store.DesiredByDeactivation
}

// assigned returns the desired state the assignments give inst, and
// whether there is one. An assignment whose persona is missing is skipped
// (the next one by priority applies).
func (r *Reconciler) assigned(inst string) (store.DesiredState, bool, error) {
	ar, ok := r.st.(assignmentReader)
	if !ok {
		return store.DesiredState{}, false, nil
	}
	as, err := ar.ListAssignments()
	if err != nil || len(as) == 0 {
		return store.DesiredState{}, false, err
	}
	personas := map[string]bool{}
	best, ok := assignment.Best(as, r.target(inst), func(a assignment.Assignment) bool {
		if have, seen := personas[a.Persona]; seen {
			return have
		}
		_, err := r.st.GetPersona(a.Persona)
		personas[a.Persona] = err == nil
		return err == nil
	})
	if !ok {
		return store.DesiredState{}, false, nil
	}
	p, err := r.st.GetPersona(best.Persona)
	if err != nil {
		return store.DesiredState{}, false, err
	}
	return desiredOf(inst, p, store.DesiredByAssignment, "assignment:"+best.Name), true, nil
}

// follow is the desired state of an instance whose current one is cur,
// once the assignments are taken into account; changed says whether it
// differs from cur (and must be written).
func (r *Reconciler) follow(inst string, cur store.DesiredState) (store.DesiredState, bool, error) {
	if explicit(cur) {
		return cur, false, nil
	}
	d, ok, err := r.assigned(inst)
	if err != nil || !ok {
		return cur, false, err
	}
	if cur.PersonaName() == d.Persona.Name {
		// Same persona: its revision moves by rollouts, not here.
		return cur, false, nil
	}
	return d, true, nil
}

// Reassess asks the reconciler to look at every instance again (the
// assignments, the personas or labels changed). It returns at once; passes
// are coalesced. The first call also starts the pass every
// ReassessInterval (the host daemon makes it at start).
func (r *Reconciler) Reassess() {
	if r.ctx.Err() != nil {
		return
	}
	r.loopOnce.Do(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.ctx.Err() == nil {
			r.bg.Add(1)
			go r.reassessLoop()
		}
	})
	select {
	case r.reassess <- struct{}{}:
	default:
	}
}

// reassessLoop runs passes when asked and every ReassessInterval.
func (r *Reconciler) reassessLoop() {
	defer r.bg.Done()
	t := time.NewTicker(r.cfg.ReassessInterval)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.reassess:
		case <-t.C:
		}
		r.reassessAll(r.ctx)
	}
}

// maxReassessParallel bounds the guests converged at once by a pass.
const maxReassessParallel = 8

// reassessAll brings every known instance's desired state in line with the
// assignments, and converges the connected ones whose desired state changed.
func (r *Reconciler) reassessAll(ctx context.Context) {
	r.mu.Lock()
	mgr := r.agents
	r.mu.Unlock()
	if _, ok := r.st.(assignmentReader); !ok || mgr == nil {
		return
	}
	names := map[string]bool{}
	for _, st := range mgr.List() {
		names[st.Name] = true
	}
	ds, err := r.st.ListDesired()
	if err != nil {
		r.log.Error("reassess: list desired states", "err", err)
		return
	}
	for _, d := range ds {
		names[d.Instance] = true
	}
	sem := make(chan struct{}, maxReassessParallel)
	var wg sync.WaitGroup
	for _, inst := range slices.Sorted(maps.Keys(names)) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			r.reassessOne(ctx, mgr, inst)
		}()
	}
	wg.Wait()
}

func (r *Reconciler) reassessOne(ctx context.Context, mgr *agents.Manager, inst string) {
	unlock, err := r.lock(ctx, inst)
	if err != nil {
		return
	}
	defer unlock()
	cur, err := r.st.GetDesired(inst)
	if errors.Is(err, store.ErrNotFound) {
		return // never seen: its first connect decides
	}
	if err != nil {
		r.log.Error("reassess: read the desired state", "instance", inst, "err", err)
		return
	}
	d, changed, err := r.follow(inst, cur)
	if err != nil {
		r.log.Error("reassess: assignments", "instance", inst, "err", err)
		return
	}
	if !changed {
		return
	}
	if _, err := r.st.PutDesired(d); err != nil {
		r.log.Error("reassess: write the desired state", "instance", inst, "err", err)
		return
	}
	r.log.Info("desired state follows an assignment", "instance", inst, "desired", describeDesired(d), "by", d.Actor, "was", describeDesired(cur))
	g, err := mgr.Guest(inst)
	if err != nil {
		return // converged at its next connect
	}
	r.converge(ctx, g, d, agents.SystemActor, ReasonAssignment, store.AuditReconciled)
}
