package store

import (
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/protocol"
)

// A guest cannot write host events: forged types are acknowledged (upTo
// covers them, a second delivery inserts nothing) and never stored.
func TestGuestAuditRefusesHostTypes(t *testing.T) {
	s := openTemp(t)
	var evs []protocol.AuditEvent
	for i, typ := range []string{protocol.AuditPersonaDeleted, protocol.AuditAuthFailure, protocol.AuditExec,
		protocol.AuditActivationRequested, "made_up", protocol.AuditDenial} {
		evs = append(evs, protocol.AuditEvent{Seq: uint64(i + 1), Type: typ, Actor: "admin"})
	}
	b := protocol.AuditBatch{SpoolID: "sp", Events: evs}
	upTo, ins, err := s.IngestGuestAudit("vm1", b)
	if err != nil || upTo != 6 || len(ins) != 2 || ins[0].Type != protocol.AuditExec || ins[1].Type != protocol.AuditDenial {
		t.Fatalf("IngestGuestAudit = %d, %+v, %v; want upTo 6 and only exec and denial stored", upTo, ins, err)
	}
	if upTo, ins, err := s.IngestGuestAudit("vm1", b); err != nil || upTo != 6 || len(ins) != 0 {
		t.Fatalf("again = %d, %d, %v", upTo, len(ins), err)
	}
	for _, typ := range []string{protocol.AuditPersonaDeleted, protocol.AuditAuthFailure, protocol.AuditActivationRequested, "made_up"} {
		if got, _ := s.QueryAudit(AuditQuery{Type: typ}); len(got) != 0 {
			t.Errorf("type %s: %d stored events, want none", typ, len(got))
		}
	}
}

// Every guest-supplied text field is cut to its bound.
func TestGuestAuditFieldsBounded(t *testing.T) {
	s := openTemp(t)
	big := strings.Repeat("é", 1<<19) // 1 MiB
	_, ins, err := s.IngestGuestAudit("vm1", protocol.AuditBatch{SpoolID: "sp", Events: []protocol.AuditEvent{{
		Seq: 1, Type: protocol.AuditExec, Actor: big, Persona: big, Command: big, Route: big, Result: big,
		ActivationID: big, Detail: big + "\xff",
	}}})
	if err != nil || len(ins) != 1 {
		t.Fatal(ins, err)
	}
	e := ins[0]
	for _, f := range []struct {
		name  string
		value string
		max   int
	}{{"actor", e.Actor, MaxGuestActor}, {"persona", e.Persona, MaxGuestPersona}, {"command", e.Command, MaxGuestCommand},
		{"route", e.Route, MaxGuestRoute}, {"result", e.Result, MaxGuestResult}, {"activation_id", e.ActivationID, MaxGuestActivationID},
		{"detail", e.Detail, MaxGuestDetail}} {
		if len(f.value) > f.max || !strings.HasSuffix(f.value, "…") {
			t.Errorf("%s is %d bytes (%.20q…), want at most %d ending in …", f.name, len(f.value), f.value, f.max)
		}
	}
	if b, _ := encodeAudit(&e); len(b) > 8<<10 {
		t.Errorf("stored event is %d bytes", len(b))
	}
}

// A guest dated 2200 keeps its claim (clamped, flagged) and cannot move the
// cursor: a host event stored after it comes after it.
func TestGuestClockSkew(t *testing.T) {
	s := openTemp(t)
	now := time.Now().UTC()
	_, ins, err := s.IngestGuestAudit("vm1", protocol.AuditBatch{SpoolID: "sp", Events: []protocol.AuditEvent{
		{Seq: 1, Type: protocol.AuditExec, Time: time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Seq: 2, Type: protocol.AuditExec, Time: time.Date(1971, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Seq: 3, Type: protocol.AuditExec, Time: now.Add(-time.Hour)},
	}})
	if err != nil || len(ins) != 3 {
		t.Fatal(ins, err)
	}
	if e := ins[0]; !e.ClockSkew || e.GuestTime.After(now.Add(MaxGuestClockAhead+time.Minute)) || e.Time.Year() != now.Year() {
		t.Errorf("future event: time %v guest_time %v skew %v", e.Time, e.GuestTime, e.ClockSkew)
	}
	if e := ins[1]; !e.ClockSkew || e.GuestTime.Before(now.Add(-MaxGuestClockPast-time.Minute)) {
		t.Errorf("past event: guest_time %v skew %v", e.GuestTime, e.ClockSkew)
	}
	if e := ins[2]; e.ClockSkew || !e.GuestTime.Equal(now.Add(-time.Hour)) {
		t.Errorf("plausible event: guest_time %v skew %v", e.GuestTime, e.ClockSkew)
	}
	host, err := s.AppendAudit(AuditEvent{Type: AuditPersonaCreated})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.QueryAudit(AuditQuery{After: ins[0].ID})
	if err != nil || len(got) != 3 || got[2].ID != host[0].ID {
		t.Fatalf("after the 2200 event: %v, %v; want the two later guest events and the host event", ids(got), err)
	}
}

// MaxBytes bounds a page; paging by the last ID visits everything once.
func TestQueryAuditMaxBytes(t *testing.T) {
	s := openTemp(t)
	for range 50 {
		if _, err := s.AppendAudit(AuditEvent{Type: AuditExec, Detail: strings.Repeat("x", 1000)}); err != nil {
			t.Fatal(err)
		}
	}
	seen := 0
	q := AuditQuery{Limit: 1000, MaxBytes: 10 << 10}
	for pages := 0; ; pages++ {
		got, more, err := s.QueryAuditPage(q)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			t.Fatal("an empty page: the one before said more events follow")
		}
		if len(got) > 10 {
			t.Fatalf("page of %d events of 1 KB under a 10 KB bound", len(got))
		}
		seen += len(got)
		q.After = got[len(got)-1].ID
		if !more {
			break
		}
		if pages > 100 {
			t.Fatal("paging does not end")
		}
	}
	if seen != 50 {
		t.Fatalf("paged %d events, want 50", seen)
	}
}

// A store at schema 2 holds guest events whose time is the guest's: the
// migration keeps it as guest_time.
func TestMigrateAuditOrder(t *testing.T) {
	dir := buildGoldenStore(t, 2)
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	old := auditRecord{ID: "18ecd0f92af330000000000000000001", Time: goldenTime, Instance: "vm1", Type: "exec",
		Source: SourceGuest, GuestSpool: "sp", GuestSeq: 1}
	v, _ := json.Marshal(old)
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("a/"+old.ID), v) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s := openAt(t, dir, Options{})
	got, err := s.QueryAudit(AuditQuery{})
	if err != nil || len(got) != 2 {
		t.Fatal(got, err)
	}
	if g := got[1]; g.Source != SourceGuest || !g.GuestTime.Equal(goldenTime) || !g.Time.Equal(goldenTime) {
		t.Fatalf("migrated guest event = %+v", g)
	}
	if h := got[0]; !h.GuestTime.IsZero() {
		t.Fatalf("host event gained a guest time: %+v", h)
	}
	var ver uint64
	s.view(func(txn *badger.Txn) error {
		it, _ := txn.Get([]byte(keySchema))
		b, _ := it.ValueCopy(nil)
		ver = binary.BigEndian.Uint64(b)
		return nil
	})
	if ver != SchemaVersion {
		t.Fatalf("schema %d after open", ver)
	}
}
