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
type requestAudit struct {
	m   *Manager
	evs []store.AuditEvent
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

func (r *requestAudit) done() {
	if r != nil {
		r.evs = nil
	}
}

// flush writes the events no record took, on their own.
func (r *requestAudit) flush() {
	if r == nil || len(r.evs) == 0 {
		return
	}
	evs := r.evs
	r.evs = nil
	stored, err := r.m.st.AppendAudit(evs...)
	if err != nil {
		r.m.log.Error("audit write failed", "type", evs[0].Type, "instance", evs[0].Instance, "err", err)
		return
	}
	r.m.countAudit(stored)
}
