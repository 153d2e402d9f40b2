// Package auditjournal copies the host daemon's audit events to the
// systemd journal as they are stored, one journal entry per event with its
// members as fields (VMPERSONA_TYPE, VMPERSONA_INSTANCE, …), so operators'
// log pipelines that read journald see them. It follows the store from the
// moment it starts, by the events' cursor, and never writes to the store.
package auditjournal

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// Querier reads stored audit events (*store.Store).
type Querier interface {
	QueryAudit(store.AuditQuery) ([]store.AuditEvent, error)
}

// Sender writes one journal entry; journal.Send is the real one.
type Sender func(message string, priority journal.Priority, fields map[string]string) error

// Follower copies new audit events to the journal.
type Follower struct {
	q     Querier
	send  Sender
	log   *slog.Logger
	since time.Time
	after string
}

// New returns a follower of the events stored from now on.
func New(q Querier, send Sender, log *slog.Logger) *Follower {
	if send == nil {
		send = journal.Send
	}
	if log == nil {
		log = slog.Default()
	}
	return &Follower{q: q, send: send, log: log, since: time.Now()}
}

// pageSize bounds one read of the store.
const pageSize = 500

// Step sends the events stored since the last step and returns how many.
func (f *Follower) Step() (int, error) {
	n := 0
	for {
		evs, err := f.q.QueryAudit(store.AuditQuery{Since: f.since, After: f.after, Limit: pageSize})
		if err != nil {
			return n, err
		}
		for _, ev := range evs {
			if err := f.send(Message(ev), priority(ev), Fields(ev)); err != nil {
				return n, err
			}
			f.after = ev.ID
			n++
		}
		if len(evs) < pageSize {
			return n, nil
		}
	}
}

// Run steps every interval until ctx ends. Errors are logged once per
// run of failures.
func (f *Follower) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := f.Step(); err != nil {
			if !failing && ctx.Err() == nil {
				f.log.Warn("audit events not copied to the journal", "err", err)
			}
			failing = true
			continue
		}
		failing = false
	}
}

// Message is the entry's text: the event in one line.
func Message(ev store.AuditEvent) string {
	parts := []string{"audit", ev.Type}
	for _, kv := range [][2]string{{"instance", ev.Instance}, {"persona", ev.Persona}, {"actor", ev.Actor},
		{"command", ev.Command}, {"route", ev.Route}, {"result", ev.Result}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+strconv.Quote(kv[1]))
		}
	}
	return strings.Join(parts, " ")
}

// Fields are the event's members as journal fields (upper-case names,
// VMPERSONA_ prefix); empty members are left out.
func Fields(ev store.AuditEvent) map[string]string {
	m := map[string]string{"SYSLOG_IDENTIFIER": "vmpersona-hostd", "VMPERSONA_AUDIT": "1"}
	set := func(k, v string) {
		if v != "" {
			m["VMPERSONA_"+k] = v
		}
	}
	set("AUDIT_ID", ev.ID)
	set("AUDIT_TIME", ev.Time.UTC().Format(time.RFC3339Nano))
	set("TYPE", ev.Type)
	set("INSTANCE", ev.Instance)
	set("PERSONA", ev.Persona)
	set("ACTOR", ev.Actor)
	set("COMMAND", ev.Command)
	set("ROUTE", ev.Route)
	set("RESULT", ev.Result)
	set("ACTIVATION_ID", ev.ActivationID)
	set("SOURCE", ev.Source)
	set("DETAIL", ev.Detail)
	if ev.GuestSeq != 0 {
		set("GUEST_SEQ", strconv.FormatUint(ev.GuestSeq, 10))
	}
	return m
}

// priority: refusals and failures are notices, the rest information.
func priority(ev store.AuditEvent) journal.Priority {
	switch ev.Type {
	case protocol.AuditDenial, protocol.AuditAuthFailure:
		return journal.PriNotice
	}
	return journal.PriInfo
}
