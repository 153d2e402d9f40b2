package reconcile

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// Status is an instance's desired state, actual state and how they compare,
// as the API shows them.
type Status = apitypes.InstanceSync

// Status answers an instance's desired and actual state and its sync state.
// st is the agent's status (managed false: the instance has no agent loop).
func (r *Reconciler) Status(instance string, st agents.AgentStatus, managed bool) (Status, error) {
	var out Status
	connected := managed && st.State == agents.StateConnected

	d, err := r.st.GetDesired(instance)
	haveDesired := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return out, err
	}
	// An activation or deactivation under way: its desired state is
	// written with its outcome, and shown until then.
	r.mu.Lock()
	pending, applying := r.applying[instance]
	r.mu.Unlock()
	if applying {
		d, haveDesired = pending, true
	}
	if haveDesired {
		out.Desired = apitypes.DesiredState{Revision: d.Revision, SetBy: d.SetBy, Actor: d.Actor, UpdatedAt: d.UpdatedAt}
		if d.Persona != nil {
			name := d.Persona.Name
			out.Desired.Persona = &name
		}
	}

	var act *protocol.ActiveState
	if connected {
		act = st.Active
		out.Active = apitypes.ActualState{BootID: st.BootID, Confirmed: true}
	} else if rec, err := r.st.GetInstance(instance); err == nil {
		out.Active.BootID = rec.BootID
		if rec.Persona != nil {
			act = &protocol.ActiveState{Persona: *rec.Persona, Revision: rec.Revision, ActivationID: rec.ActivationID, ActivatedAt: rec.ActivatedAt}
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return out, err
	}
	if act != nil {
		name := act.Persona.Name
		out.Active.Persona, out.Active.Revision = &name, act.Revision
		out.Active.ActivationID, out.Active.ActivatedAt = act.ActivationID, act.ActivatedAt
	}

	latest, deleted := uint64(0), false
	if haveDesired && d.Persona != nil {
		p, err := r.st.GetPersona(d.Persona.Name)
		switch {
		case err == nil:
			latest = p.Revision
		case errors.Is(err, store.ErrNotFound):
			deleted = true
		default:
			return out, err
		}
		out.LatestRevision = latest
	}

	r.mu.Lock()
	f, failed := r.failures[instance]
	r.mu.Unlock()
	failed = failed && haveDesired && sameDesired(f.desired, d)

	switch {
	case !connected:
		out.Sync = apitypes.SyncUnreachable
		out.SyncReason = "no session with the guest's agent"
		if !managed {
			out.SyncReason = "the instance has no managed agent"
		} else if st.LastError != "" {
			out.SyncReason = fmt.Sprintf("agent %s: %s", st.State, st.LastError)
		} else {
			out.SyncReason = "agent " + st.State
		}
	case applying:
		out.Sync = apitypes.SyncPending
		out.SyncReason = "applying " + describeDesired(d) + "; the guest holds " + describeActive(act)
	case !haveDesired:
		out.Sync = apitypes.SyncPending
		out.SyncReason = "the instance has not been reconciled yet"
	case !holds(act, d) && failed:
		out.Sync = apitypes.SyncFailed
		out.SyncReason = "the last attempt to apply " + describeDesired(d) + " failed: " + f.reason
		out.SyncScript = f.script
		out.FailedAt = f.at
	case !holds(act, d):
		out.Sync = apitypes.SyncPending
		out.SyncReason = "the guest holds " + describeActive(act) + "; desired is " + describeDesired(d)
	case deleted:
		out.Sync = apitypes.SyncDrifted
		out.SyncReason = fmt.Sprintf("persona %q was deleted", d.Persona.Name)
	case d.Persona != nil && latest > d.Revision:
		out.Sync = apitypes.SyncDrifted
		out.SyncReason = fmt.Sprintf("persona %q is at revision %d; the instance runs revision %d until a rollout", d.Persona.Name, latest, d.Revision)
	default:
		out.Sync = apitypes.SyncInSync
	}
	return out, nil
}

// collector exports vmpersona_instances{sync} and
// vmpersona_instance_info{instance,persona,revision,sync}, computed at each
// scrape from the managed instances.
type collector struct{ r *Reconciler }

var (
	instancesDesc = prometheus.NewDesc("vmpersona_instances",
		"Managed instances by sync state (in_sync, drifted, pending, unreachable, failed).", []string{"sync"}, nil)
	instanceInfoDesc = prometheus.NewDesc("vmpersona_instance_info",
		"One series per managed instance: its desired persona and revision and its sync state (value 1).",
		[]string{"instance", "persona", "revision", "sync"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- instancesDesc
	ch <- instanceInfoDesc
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{}
	for _, st := range c.r.agents.List() {
		s, err := c.r.Status(st.Name, st, true)
		if err != nil {
			continue
		}
		counts[s.Sync]++
		persona := ""
		if s.Desired.Persona != nil {
			persona = *s.Desired.Persona
		}
		ch <- prometheus.MustNewConstMetric(instanceInfoDesc, prometheus.GaugeValue, 1,
			st.Name, persona, strconv.FormatUint(s.Desired.Revision, 10), s.Sync)
	}
	for _, s := range SyncStates {
		ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(counts[s]), s)
	}
}
