package store

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
)

// checkDesiredAgrees compares what GetDesired answers (memory) with what
// Badger holds (ListDesired reads Badger).
func checkDesiredAgrees(t *testing.T, s *Store, instances ...string) {
	t.Helper()
	list, err := s.ListDesired()
	if err != nil {
		t.Fatal(err)
	}
	inDB := map[string]DesiredState{}
	for _, d := range list {
		inDB[d.Instance] = d
	}
	for _, in := range instances {
		got, err := s.GetDesired(in)
		want, ok := inDB[in]
		switch {
		case !ok && !errors.Is(err, ErrNotFound):
			t.Errorf("GetDesired(%s) = %+v, %v; Badger has none", in, got, err)
		case ok && (err != nil || !reflect.DeepEqual(got, want)):
			t.Errorf("GetDesired(%s) = %+v, %v\nBadger holds %+v", in, got, err, want)
		}
	}
}

// TestDesiredCacheAgreesWithBadger: desired states are read from memory and
// agree with Badger after writes, concurrent writes of one instance (the
// cache takes them in commit order) and a reopen; a caller that changes
// what it read changes nothing for the next reader.
func TestDesiredCacheAgreesWithBadger(t *testing.T) {
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	checkDesiredAgrees(t, s, "vm1")

	p := persona("a")
	p.Revision = 3
	if _, err := s.PutDesired(DesiredState{Instance: "vm1", Persona: &p, Revision: 3, SetBy: DesiredByActivation, Actor: "alice"}); err != nil {
		t.Fatal(err)
	}
	checkDesiredAgrees(t, s, "vm1", "vm2")

	got, err := s.GetDesired("vm1")
	if err != nil {
		t.Fatal(err)
	}
	got.Persona.EnvironmentVariables["APP_ENV"] = "changed by a caller"
	got.Persona.Name = "changed"
	checkDesiredAgrees(t, s, "vm1")

	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := persona(fmt.Sprintf("p%d", i))
			inst := []string{"vm1", "vm2"}[i%2]
			if _, err := s.PutDesired(DesiredState{Instance: inst, Persona: &q, SetBy: DesiredByActivation}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	checkDesiredAgrees(t, s, "vm1", "vm2")

	// A forgotten instance (a VM that left the host) has no desired state
	// left, in memory or in Badger.
	if err := s.PutInstance(InstanceRecord{Instance: "vm3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutDesired(DesiredState{Instance: "vm3", Persona: &p, Revision: 3, SetBy: DesiredByActivation}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteInstance("vm3"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetDesired("vm3"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetDesired of a forgotten instance: %v, want ErrNotFound", err)
	}
	checkDesiredAgrees(t, s, "vm1", "vm2", "vm3")

	if _, err := s.PutDesired(DesiredState{Instance: "vm2", SetBy: DesiredByDeactivation}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := s.GetDesired("vm1"); !errors.Is(err, ErrClosed) {
		t.Errorf("GetDesired after Close: %v, want ErrClosed", err)
	}
	s = openAt(t, dir, Options{})
	checkDesiredAgrees(t, s, "vm1", "vm2", "vm3")
	if _, err := s.GetDesired("vm3"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetDesired of a forgotten instance after reopen: %v, want ErrNotFound", err)
	}
	if d, err := s.GetDesired("vm2"); err != nil || d.Persona != nil || d.SetBy != DesiredByDeactivation {
		t.Errorf("vm2 after reopen: %+v, %v", d, err)
	}
}

// TestPutInstanceDesired: the record, the desired state and the events go in
// one write; the desired state is read from memory right after and agrees
// with Badger after a reopen; a desired state of another instance is refused
// and writes nothing.
func TestPutInstanceDesired(t *testing.T) {
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	p := persona("a")
	p.Revision = 2
	rec := InstanceRecord{Instance: "vm1", Persona: &p, Revision: 2, ActivationID: "act-1"}
	d := DesiredState{Instance: "vm1", Persona: &p, Revision: 2, SetBy: DesiredByActivation, Actor: "alice"}
	ev := AuditEvent{Type: AuditActivationRequested, Actor: "alice", Detail: "with the record"}
	if err := s.PutInstanceDesired(rec, d, ev); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetDesired("vm1"); err != nil || got.PersonaName() != "a" || got.Revision != 2 || got.Actor != "alice" {
		t.Fatalf("desired state: %+v, %v", got, err)
	}
	if err := s.PutInstanceDesired(InstanceRecord{Instance: "vm2"}, DesiredState{Instance: "vm1"}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("desired state of another instance: %v, want ErrInvalidArgument", err)
	}
	if _, err := s.GetInstance("vm2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a refused write left a record: %v", err)
	}
	s.Close()

	s = openAt(t, dir, Options{})
	checkDesiredAgrees(t, s, "vm1", "vm2")
	if r, err := s.GetInstance("vm1"); err != nil || r.ActivationID != "act-1" {
		t.Errorf("record after reopen: %+v, %v", r, err)
	}
	evs, err := s.QueryAudit(AuditQuery{Instance: "vm1", Type: AuditActivationRequested})
	if err != nil || len(evs) != 1 || evs[0].Detail != "with the record" {
		t.Errorf("events after reopen: %+v, %v", evs, err)
	}
}
