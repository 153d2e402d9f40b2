package store

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// PutInstance writes the events handed to it with the record.
func TestPutInstanceWithEvents(t *testing.T) {
	s := openTemp(t)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600))
	err := s.PutInstance(InstanceRecord{Instance: "vm1", Revision: 3},
		AuditEvent{Type: AuditActivationRequested, Actor: "alice", Persona: "a", Time: at},
		AuditEvent{Type: AuditExec, Instance: "vm1", Source: SourceGuest})
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := s.GetInstance("vm1"); err != nil || rec.Revision != 3 {
		t.Fatalf("record = %+v, %v", rec, err)
	}
	evs, err := s.QueryAudit(AuditQuery{Instance: "vm1"})
	if err != nil || len(evs) != 2 {
		t.Fatalf("audit = %+v, %v; want the two events", evs, err)
	}
	first := evs[0]
	if evs[0].Type != AuditActivationRequested {
		first = evs[1]
	}
	if first.Instance != "vm1" || first.Actor != "alice" || first.Source != SourceHost || !first.Time.Equal(at) || first.Time.Location() != time.UTC || first.ID == "" {
		t.Errorf("event = %+v; want instance vm1 (the record's), source host, the given time in UTC, an ID", first)
	}
	for _, ev := range evs {
		if ev.Source != SourceHost {
			t.Errorf("event %s has source %q; PutInstance writes host events", ev.Type, ev.Source)
		}
	}

	// Without events it is a plain record write.
	if err := s.PutInstance(InstanceRecord{Instance: "vm2"}); err != nil {
		t.Fatal(err)
	}
	if evs, _ := s.QueryAudit(AuditQuery{Instance: "vm2"}); len(evs) != 0 {
		t.Errorf("vm2 audit = %+v, want none", evs)
	}
}

// A refused write writes nothing: not the record, not one of the events.
func TestPutInstanceRefusedWritesNothing(t *testing.T) {
	s := openTemp(t)
	for name, evs := range map[string][]AuditEvent{
		"an event without a type": {{Type: AuditActivationRequested}, {Type: AuditExec}, {Detail: "no type"}},
		"too many events":         make([]AuditEvent, txnBudgetEvents+1),
	} {
		for i := range evs {
			if name == "too many events" {
				evs[i].Type = AuditExec
			}
		}
		err := s.PutInstance(InstanceRecord{Instance: "vm1"}, evs...)
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: PutInstance = %v, want ErrInvalidArgument", name, err)
		}
		if _, err := s.GetInstance("vm1"); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: the record was written (%v)", name, err)
		}
		if got, _ := s.QueryAudit(AuditQuery{}); len(got) != 0 {
			t.Errorf("%s: %d events written", name, len(got))
		}
	}
	if err := s.PutInstance(InstanceRecord{Instance: ""}, AuditEvent{Type: AuditExec}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("PutInstance without an instance = %v, want ErrInvalidArgument", err)
	}
	if got, _ := s.QueryAudit(AuditQuery{}); len(got) != 0 {
		t.Errorf("%d events written by refused writes", len(got))
	}
}

// A reader never sees a record without its events or events without their
// record: they are one commit. Each write sets the record's revision to i
// and writes an event saying i; a reader checks, inside one read
// transaction, that the newest event of the instance and the record agree.
func TestPutInstanceEventsAtomic(t *testing.T) {
	s := openTemp(t)
	const writes = 150
	done := make(chan struct{})
	var wg sync.WaitGroup
	var mismatch, reads int
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			err := s.db.View(func(txn *badger.Txn) error {
				var rec InstanceRecord
				item, err := txn.Get(instanceKey("vm"))
				if errors.Is(err, badger.ErrKeyNotFound) {
					rec.Revision = 0
				} else if err != nil {
					return err
				} else if err := item.Value(func(v []byte) error { return decodeInstance(v, &rec) }); err != nil {
					return err
				}
				it := txn.NewIterator(badger.IteratorOptions{Prefix: indexPrefix(indexInstance, "vm"), Reverse: true})
				defer it.Close()
				last := uint64(0)
				if it.Seek(append(indexPrefix(indexInstance, "vm"), 0xff)); it.Valid() {
					k := it.Item().Key()
					ev, err := txn.Get(auditKey(string(k[len(k)-auditIDLen:])))
					if err != nil {
						return err
					}
					var e AuditEvent
					if err := ev.Value(func(v []byte) error { return decodeAudit(v, &e) }); err != nil {
						return err
					}
					last, _ = strconv.ParseUint(e.Detail, 10, 64)
				}
				reads++
				if last != rec.Revision {
					mismatch++
					if mismatch == 1 {
						t.Errorf("a reader saw record revision %d with newest event %d", rec.Revision, last)
					}
				}
				return nil
			})
			if err != nil {
				t.Error(err)
				return
			}
		}
	})
	base := time.Now()
	for i := 1; i <= writes; i++ {
		// Increasing event times keep the newest event last in the index.
		ev := AuditEvent{Type: AuditActivationRequested, Detail: fmt.Sprint(i), Time: base.Add(time.Duration(i) * time.Millisecond)}
		if err := s.PutInstance(InstanceRecord{Instance: "vm", Revision: uint64(i)}, ev); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	t.Logf("%d consistent reads during %d writes", reads, writes)
}
