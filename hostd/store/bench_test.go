package store

import (
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
)

// BenchmarkIngestGuestAudit measures guest audit ingestion: batches of 100
// new events, each batch one synced commit (events/s is the figure).
func BenchmarkIngestGuestAudit(b *testing.B) {
	s := openTemp(b)
	const batch = 100
	var next uint64 = 1
	for b.Loop() {
		evs := guestEvents(next, next+batch-1)
		next += batch
		if _, ins, err := s.IngestGuestAudit("vm1", protocol.AuditBatch{SpoolID: "bench", Events: evs}); err != nil || len(ins) != batch {
			b.Fatalf("ingest: %d inserted, %v", len(ins), err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkIngestGuestAuditDuplicate measures a re-sent batch of 100 (all
// already stored: reads only, nothing written).
func BenchmarkIngestGuestAuditDuplicate(b *testing.B) {
	s := openTemp(b)
	const batch = 100
	ab := protocol.AuditBatch{SpoolID: "bench", Events: guestEvents(1, batch)}
	if _, _, err := s.IngestGuestAudit("vm1", ab); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, ins, err := s.IngestGuestAudit("vm1", ab); err != nil || len(ins) != 0 {
			b.Fatalf("ingest: %d inserted, %v", len(ins), err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAppendAudit measures one host event per synced commit.
func BenchmarkAppendAudit(b *testing.B) {
	s := openTemp(b)
	for b.Loop() {
		if _, err := s.AppendAudit(AuditEvent{Type: AuditExec, Instance: "vm1", Command: "ls", Actor: "alice"}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkQueryAudit measures a page of 100 from a log of 10,000 events.
func BenchmarkQueryAudit(b *testing.B) {
	s := openTemp(b)
	evs := make([]AuditEvent, 10000)
	for i := range evs {
		evs[i] = AuditEvent{Type: AuditExec, Instance: []string{"vm1", "vm2"}[i%2], Command: "ls"}
	}
	if _, err := s.AppendAudit(evs...); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if got, err := s.QueryAudit(AuditQuery{Instance: "vm2", Limit: 100}); err != nil || len(got) != 100 {
			b.Fatalf("query: %d, %v", len(got), err)
		}
	}
}

// BenchmarkQueryAuditRare finds the one auth_failure among 10,000 events
// (through the type index).
func BenchmarkQueryAuditRare(b *testing.B) {
	s := openTemp(b)
	evs := make([]AuditEvent, 10000)
	for i := range evs {
		evs[i] = AuditEvent{Type: AuditExec, Instance: "vm1", Command: "ls"}
	}
	evs[5000].Type = AuditAuthFailure
	if _, err := s.AppendAudit(evs...); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if got, err := s.QueryAudit(AuditQuery{Type: AuditAuthFailure}); err != nil || len(got) != 1 {
			b.Fatalf("query: %d, %v", len(got), err)
		}
	}
}

// BenchmarkPutInstanceWithEvent measures an instance record written with
// its audit event (one synced commit), against BenchmarkPutInstanceThenEvent
// (the same two writes as two commits).
func BenchmarkPutInstanceWithEvent(b *testing.B) {
	s := openTemp(b)
	p := persona("bench")
	for b.Loop() {
		if err := s.PutInstance(InstanceRecord{Instance: "vm1", Persona: &p, Revision: 1},
			AuditEvent{Type: AuditActivationRequested, Actor: "alice", Persona: "bench"}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPutInstanceThenEvent(b *testing.B) {
	s := openTemp(b)
	p := persona("bench")
	for b.Loop() {
		if err := s.PutInstance(InstanceRecord{Instance: "vm1", Persona: &p, Revision: 1}); err != nil {
			b.Fatal(err)
		}
		if _, err := s.AppendAudit(AuditEvent{Type: AuditActivationRequested, Instance: "vm1", Actor: "alice", Persona: "bench"}); err != nil {
			b.Fatal(err)
		}
	}
}
