package agents

import (
	"time"

	"github.com/vmpersona/vmpersona/hostd/store"
)

// requestAudit carries the host audit events a caller hands to Activate or
// Deactivate (the request itself: who asked for what). They belong to the
// outcome: written in the same commit as the instance record the outcome
// changes (take), or on their own when no record is written (flush, for a
// refusal, a failure or an error). Either way each is written once.
//
// desired, when set, is the desired state the request chose (reconcile's
// activations and deactivations through the API): it rides in the same
// commit as the outcome's instance record, and is written with the events
// by flush when no record is written, so that the host keeps asking the
// guest for it (a failed, aborted or cut-off activation stays pending).
type requestAudit struct {
	m       *Manager
	evs     []store.AuditEvent
	desired *store.DesiredState
}

// newRequestAudit stamps the events with the time of the request.
func (m *Manager) newRequestAudit(instance string, evs []store.AuditEvent) *requestAudit {
	now := time.Now().UTC()
	out := make([]store.AuditEvent, len(evs))
	for i, ev := range evs {
		if ev.Time.IsZero() {
			ev.Time = now
		}
		if ev.Instance == "" {
			ev.Instance = instance
		}
		out[i] = ev
	}
	return &requestAudit{m: m, evs: out}
}

// pending are the events that no commit has taken yet; the record write
// that carries them calls done once it has committed.
func (r *requestAudit) pending() []store.AuditEvent {
	if r == nil {
		return nil
	}
	return r.evs
}

// desiredState is the desired state the request chose, nil for none.
func (r *requestAudit) desiredState() *store.DesiredState {
	if r == nil {
		return nil
	}
	return r.desired
}

func (r *requestAudit) done() {
	if r != nil {
		r.evs, r.desired = nil, nil
	}
}

// flush writes the desired state and the events no record took, on their
// own.
func (r *requestAudit) flush() {
	if r == nil || (len(r.evs) == 0 && r.desired == nil) {
		return
	}
	evs, d := r.evs, r.desired
	r.evs, r.desired = nil, nil
	var stored []store.AuditEvent
	var err error
	if d != nil {
		stored, err = r.m.st.PutDesired(*d, evs...)
		if err != nil {
			r.m.log.Error("desired state write failed", "instance", d.Instance, "err", err)
			return
		}
	} else {
		stored, err = r.m.st.AppendAudit(evs...)
	}
	if err != nil {
		r.m.log.Error("audit write failed", "type", evs[0].Type, "instance", evs[0].Instance, "err", err)
		return
	}
	r.m.countAudit(stored)
}
