package audit

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
)

func seqs(evs []protocol.AuditEvent) []uint64 {
	var s []uint64
	for _, e := range evs {
		s = append(s, e.Seq)
	}
	return s
}

func record(t *testing.T, s *Spool, n int) {
	t.Helper()
	for range n {
		if _, err := s.Record(protocol.AuditEvent{Type: protocol.AuditDenial, Command: "rm"}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSequencePersistsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := s.ID()
	record(t, s, 3)
	if err := s.Ack(2); err != nil {
		t.Fatal(err)
	}
	if got := seqs(s.Pending(10)); !slices.Equal(got, []uint64{3}) {
		t.Fatalf("pending after ack 2: %v", got)
	}
	s.Close()

	s, err = Open(dir, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.ID() != id {
		t.Fatal("spool id changed")
	}
	if got := seqs(s.Pending(10)); !slices.Equal(got, []uint64{3}) {
		t.Fatalf("pending after reopen: %v", got)
	}
	record(t, s, 1)
	if err := s.Ack(4); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Everything acknowledged: the sequence still goes on from 5.
	s, _ = Open(dir, Limits{}, nil)
	defer s.Close()
	if s.Len() != 0 {
		t.Fatalf("pending: %d", s.Len())
	}
	ev, _ := s.Record(protocol.AuditEvent{Type: protocol.AuditExec})
	if ev.Seq != 5 || ev.Time.IsZero() {
		t.Fatalf("next event: %+v", ev)
	}
	// Acks are monotonic and bounded by what exists.
	if err := s.Ack(1); err != nil || s.Len() != 1 {
		t.Fatalf("stale ack: %v, len %d", err, s.Len())
	}
	if err := s.Ack(1000); err != nil || s.Len() != 0 {
		t.Fatalf("ack beyond: %v, len %d", err, s.Len())
	}
	ev, _ = s.Record(protocol.AuditEvent{Type: protocol.AuditExec})
	if ev.Seq != 6 {
		t.Fatalf("seq after an ack beyond the end: %d", ev.Seq)
	}
}

func TestTornTailSkipped(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, Limits{}, nil)
	record(t, s, 2)
	s.Close()
	f, _ := os.OpenFile(filepath.Join(dir, spoolFile), os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte(`{"seq":3,"type":"den`)) // a crash mid-append
	f.Close()
	s, err := Open(dir, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := seqs(s.Pending(10)); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("pending: %v", got)
	}
	if ev, _ := s.Record(protocol.AuditEvent{Type: protocol.AuditExec}); ev.Seq != 3 {
		t.Fatalf("seq after torn tail: %d", ev.Seq)
	}
	if got := seqs(s.Pending(10)); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("pending: %v", got)
	}
}

func TestFullSpoolDropsOldest(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, Limits{MaxEvents: 20}, nil)
	record(t, s, 25)
	got := seqs(s.Pending(100))
	if len(got) > 20 || got[len(got)-1] != 25 || s.Dropped() == 0 {
		t.Fatalf("pending %v dropped %d", got, s.Dropped())
	}
	// Contiguous newest events are kept; the file agrees after a reopen.
	for i := 1; i < len(got); i++ {
		if got[i] != got[i-1]+1 {
			t.Fatalf("gap inside the kept events: %v", got)
		}
	}
	s.Close()
	s, _ = Open(dir, Limits{MaxEvents: 20}, nil)
	defer s.Close()
	if again := seqs(s.Pending(100)); !slices.Equal(again, got) {
		t.Fatalf("after reopen %v, before %v", again, got)
	}

	// The byte bound too.
	dir2 := t.TempDir()
	s2, _ := Open(dir2, Limits{MaxBytes: 1000}, nil)
	defer s2.Close()
	record(t, s2, 50)
	data, _ := os.ReadFile(filepath.Join(dir2, spoolFile))
	if len(data) > 1000 || s2.Dropped() == 0 {
		t.Fatalf("spool file %d bytes, dropped %d", len(data), s2.Dropped())
	}
}

func TestNotify(t *testing.T) {
	s, _ := Open(t.TempDir(), Limits{}, nil)
	defer s.Close()
	record(t, s, 2)
	select {
	case <-s.Notify():
	default:
		t.Fatal("no notification after recording")
	}
}

func lines(t *testing.T, dir string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, spoolFile))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, b := range data {
		if b == '\n' {
			n++
		}
	}
	return n
}

// An acknowledgement does not rewrite the spool file (nor fsync): it is
// compacted once the acknowledged prefix is large. A lost acknowledgement
// only makes the events pending again; sequence numbers are never reused.
func TestAckWithoutRewriteAndLostAck(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	record(t, s, 5)
	if err := s.Ack(4); err != nil {
		t.Fatal(err)
	}
	if n := lines(t, dir); n != 5 {
		t.Fatalf("spool file rewritten on a small ack: %d lines", n)
	}
	if got := seqs(s.Pending(10)); !slices.Equal(got, []uint64{5}) {
		t.Fatalf("pending: %v", got)
	}
	s.Close()
	s, err = Open(dir, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := seqs(s.Pending(10)); !slices.Equal(got, []uint64{5}) {
		t.Fatalf("pending after reopen: %v", got)
	}
	if err := s.Ack(5); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// The unsynced acknowledgement is lost (or torn) in a crash.
	os.WriteFile(filepath.Join(dir, ackFile), []byte(`{"acked_up`), 0o600)
	s, err = Open(dir, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := seqs(s.Pending(10)); !slices.Equal(got, []uint64{5}) {
		t.Fatalf("pending after a lost ack (want 5 again): %v", got)
	}
	ev, err := s.Record(protocol.AuditEvent{Type: protocol.AuditDenial})
	if err != nil || ev.Seq != 6 {
		t.Fatalf("seq %d %v", ev.Seq, err)
	}
}

// After many acknowledgements the file is compacted, and the synced meta
// file covers every sequence number that left the file.
func TestCompactionAfterLargeAckedPrefix(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := compactEvents + 10
	for i := range n {
		record(t, s, 1)
		if err := s.Ack(uint64(i + 1)); err != nil {
			t.Fatal(err)
		}
	}
	if l := lines(t, dir); l >= n {
		t.Fatalf("not compacted: %d lines", l)
	}
	s.Close()
	os.Remove(filepath.Join(dir, ackFile))
	s, err = Open(dir, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ev, _ := s.Record(protocol.AuditEvent{Type: protocol.AuditDenial})
	if ev.Seq != uint64(n+1) {
		t.Fatalf("seq after compaction and a lost ack: %d, want %d", ev.Seq, n+1)
	}
	for _, e := range s.Pending(100) {
		if e.Seq <= compactEvents {
			t.Fatalf("an event acknowledged before the compaction is pending again: %d", e.Seq)
		}
	}
}

// Interleaved records and acknowledgements keep the pending events in
// order, without gaps.
func TestInterleavedRecordAndAck(t *testing.T) {
	s, err := Open(t.TempDir(), Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	acked := uint64(0)
	for round := range 60 {
		record(t, s, 5+round%3)
		acked += 4
		if err := s.Ack(acked); err != nil {
			t.Fatal(err)
		}
		p := seqs(s.Pending(1000))
		for i, q := range p {
			if q != acked+1+uint64(i) {
				t.Fatalf("round %d: pending %v after ack %d", round, p, acked)
			}
		}
	}
}
