package audit

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/protocol"
)

// An activation's event is durable in the state record (RecordWith); when a
// crash takes its unsynced line from the spool file, Open takes it back
// from the state log, in order, and never hands its sequence number out
// again.
func TestEventTakenBackFromStateLog(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	record(t, s, 2) // 1, 2: synced appends
	active := &protocol.ActiveState{Persona: protocol.Persona{Name: "p"}}
	ev, err := s.RecordWith(protocol.AuditEvent{Type: protocol.AuditActivation, Persona: "p"}, func(ev protocol.AuditEvent) error {
		return st.Commit(active, &ev)
	})
	if err != nil || ev.Seq != 3 {
		t.Fatalf("seq %d %v", ev.Seq, err)
	}
	if got := seqs(s.Pending(10)); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("pending: %v", got)
	}
	s.Close()
	st.Close()
	// The crash: the spool file's unsynced tail (event 3) is gone.
	path := filepath.Join(dir, spoolFile)
	data, _ := os.ReadFile(path)
	i := bytes.LastIndexByte(data[:len(data)-1], '\n')
	os.WriteFile(path, data[:i+1], 0o600)

	s, err = Open(dir, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pend := s.Pending(10)
	if got := seqs(pend); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("pending after the crash: %v", got)
	}
	if pend[2].Type != protocol.AuditActivation || pend[2].Persona != "p" {
		t.Fatalf("event taken back: %+v", pend[2])
	}
	if ev, _ := s.Record(protocol.AuditEvent{Type: protocol.AuditDenial}); ev.Seq != 4 {
		t.Fatalf("next seq %d, want 4", ev.Seq)
	}
	// Acknowledged events of the state log do not come back.
	if err := s.Ack(4); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, _ = Open(dir, Limits{}, nil)
	if n := s.Len(); n != 0 {
		t.Fatalf("%d events pending after acknowledging all", n)
	}
	if ev, _ := s.Record(protocol.AuditEvent{Type: protocol.AuditDenial}); ev.Seq != 5 {
		t.Fatalf("next seq %d, want 5", ev.Seq)
	}
}

// When the state write fails nothing is recorded and the sequence number is
// given to the next event: the host sees no gap.
func TestRecordWithFailureRecordsNothing(t *testing.T) {
	s, err := Open(t.TempDir(), Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.RecordWith(protocol.AuditEvent{Type: protocol.AuditActivation}, func(protocol.AuditEvent) error { return errors.New("disk") }); err == nil {
		t.Fatal("no error")
	}
	if s.Len() != 0 {
		t.Fatal("a failed event was queued")
	}
	if ev, _ := s.Record(protocol.AuditEvent{Type: protocol.AuditDenial}); ev.Seq != 1 {
		t.Fatalf("seq %d, want 1", ev.Seq)
	}
}

// The acknowledgement is a fixed-size record overwritten in place: the file
// is never replaced (same inode), stays valid JSON, and a record whose
// checksum does not hold (a torn overwrite) is ignored; one of an earlier
// version (no checksum) is read.
func TestAckRecordInPlace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ackFile)
	s, _ := Open(dir, Limits{}, nil)
	record(t, s, 120)
	s.Ack(9)
	fi1, _ := os.Stat(path)
	s.Ack(100)
	fi2, err := os.Stat(path)
	if err != nil || !os.SameFile(fi1, fi2) || fi2.Size() != ackSize {
		t.Fatalf("ack file replaced or resized: %v %d", err, fi2.Size())
	}
	s.Close()
	if up, ok := decodeAck(mustRead(t, path)); !ok || up != 100 {
		t.Fatalf("ack record: %d %v", up, ok)
	}
	// Torn: the digits of a newer record over an older one's checksum.
	torn := bytes.Replace(mustRead(t, path), []byte(":100,"), []byte(":110,"), 1)
	os.WriteFile(path, torn, 0o600)
	s, _ = Open(dir, Limits{}, nil)
	if got := s.Pending(1); len(got) != 1 || got[0].Seq != 1 {
		t.Fatalf("after a torn ack, first pending %v, want 1 (the synced acknowledgement is 0)", seqs(got))
	}
	s.Close()
	os.WriteFile(path, []byte(`{"acked_up_to":115}`), 0o600)
	s, _ = Open(dir, Limits{}, nil)
	defer s.Close()
	if got := s.Pending(1); len(got) != 1 || got[0].Seq != 116 {
		t.Fatalf("after an earlier version's ack, first pending %v, want 116", seqs(got))
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
