package store

import (
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/vmpersona/vmpersona/protocol"
)

// Bounds of what a guest may put in an audit event. A longer value is cut
// (at a character boundary) and ends in "…"; invalid UTF-8 is replaced.
const (
	MaxGuestActor        = 256
	MaxGuestPersona      = 63 // rules.MaxNameLen
	MaxGuestCommand      = 1024
	MaxGuestRoute        = 16
	MaxGuestResult       = 64
	MaxGuestActivationID = 64
	MaxGuestDetail       = 2048

	// The guest's clock is believed within this window around the time
	// the host stores its event; outside it, GuestTime is clamped to the
	// window and ClockSkew set. Events wait in the guest's spool while
	// the host is away, so the past reaches further than the future.
	MaxGuestClockAhead = 5 * time.Minute
	MaxGuestClockPast  = 366 * 24 * time.Hour
)

// guestTypes are the audit event types a guest records.
var guestTypes = map[string]bool{
	protocol.AuditActivation: true, protocol.AuditDeactivation: true,
	protocol.AuditOverride: true, protocol.AuditDenial: true, protocol.AuditExec: true,
}

// GuestAuditType reports whether typ is an event type a guest may record;
// the others (persona_deleted, auth_failure, …) are the host's alone.
func GuestAuditType(typ string) bool { return guestTypes[typ] }

// GuestAuditSize is what a guest event counts against its instance's
// ingestion quota in bytes: its text fields and a fixed overhead.
func GuestAuditSize(g *protocol.AuditEvent) int {
	return 64 + len(g.Type) + len(g.Persona) + len(g.Command) + len(g.Route) + len(g.Result) +
		len(g.ActivationID) + len(g.Actor) + len(g.Detail)
}

// guestEvent is the stored form of a guest's event ingested at now: fields
// bounded, guest time clamped.
func guestEvent(instance, spool string, g protocol.AuditEvent, now time.Time) AuditEvent {
	ev := AuditEvent{
		Time: now, Instance: instance, Source: SourceGuest, GuestSpool: spool, GuestSeq: g.Seq,
		Type:         g.Type,
		Actor:        capText(g.Actor, MaxGuestActor),
		Persona:      capText(g.Persona, MaxGuestPersona),
		Command:      capText(g.Command, MaxGuestCommand),
		Route:        capText(g.Route, MaxGuestRoute),
		Result:       capText(g.Result, MaxGuestResult),
		ActivationID: capText(g.ActivationID, MaxGuestActivationID),
		Detail:       capText(g.Detail, MaxGuestDetail),
	}
	ev.GuestTime, ev.ClockSkew = clampGuestTime(g.Time, now)
	return ev
}

// clampGuestTime bounds a guest's time to the window around now; a zero
// time is now (a guest that did not say).
func clampGuestTime(t, now time.Time) (time.Time, bool) {
	if t.IsZero() {
		return now, false
	}
	t = t.UTC()
	switch {
	case t.After(now.Add(MaxGuestClockAhead)):
		return now.Add(MaxGuestClockAhead), true
	case t.Before(now.Add(-MaxGuestClockPast)):
		return now.Add(-MaxGuestClockPast), true
	}
	return t, false
}

// capText makes s valid UTF-8 of at most max bytes.
func capText(s string, max int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= max {
		return s
	}
	const ellipsis = "…"
	cut := max - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

// ingestClock hands out the times audit IDs are made of: the wall clock,
// but never earlier than a time it handed out before, so that IDs follow
// ingestion even when the clock steps back.
type ingestClock struct {
	mu   sync.Mutex
	last time.Time
}

func (c *ingestClock) next(now time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Before(c.last) {
		return c.last
	}
	c.last = now
	return now
}
