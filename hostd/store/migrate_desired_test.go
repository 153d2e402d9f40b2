package store

import (
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// TestMigrationKeepsBareInstancesBare: a store written before desired
// states, with one instance holding a persona and one deliberately bare,
// opens with each desiring what it holds, so an upgraded host imposes no
// default persona on a VM it already knew.
func TestMigrationKeepsBareInstancesBare(t *testing.T) {
	dir := buildGoldenStore(t, 1)
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	bare := InstanceRecord{Instance: "bare", ActivationID: "deact-1", UpdatedAt: goldenTime}
	v, err := encodeInstance(&bare)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set(instanceKey("bare"), v) }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := openAt(t, dir, Options{})
	d, err := s.GetDesired("bare")
	if err != nil || d.Persona != nil || d.SetBy != DesiredByAdoption {
		t.Errorf("desired state of the bare instance: %+v, %v; want none, adopted", d, err)
	}
	d, err = s.GetDesired("vm1")
	if err != nil || d.PersonaName() != "hardened" || d.Revision != 1 {
		t.Errorf("desired state of vm1: %+v, %v; want hardened revision 1", d, err)
	}
	all, err := s.ListDesired()
	if err != nil || len(all) != 2 {
		t.Errorf("ListDesired = %+v, %v", all, err)
	}
	if _, err := s.GetDesired("never-seen"); err == nil {
		t.Error("an instance never seen has a desired state")
	}
}

// TestPutDesired: a desired state and its audit events are one write;
// names the store cannot key are refused.
func TestPutDesired(t *testing.T) {
	s := openAt(t, t.TempDir(), Options{})
	p := goldenPersona()
	evs, err := s.PutDesired(DesiredState{Instance: "vm1", Persona: &p, Revision: 1, SetBy: DesiredByRollout, Actor: "alice"},
		AuditEvent{Type: AuditRolloutStarted, Instance: "vm1", Persona: "hardened"})
	if err != nil || len(evs) != 1 || evs[0].ID == "" || evs[0].Source != SourceHost {
		t.Fatalf("PutDesired = %+v, %v", evs, err)
	}
	if got, err := s.QueryAudit(AuditQuery{Type: AuditRolloutStarted}); err != nil || len(got) != 1 || got[0].ID != evs[0].ID {
		t.Errorf("audit after PutDesired: %+v, %v", got, err)
	}
	d, err := s.GetDesired("vm1")
	if err != nil || d.PersonaName() != "hardened" || d.SetBy != DesiredByRollout || d.Actor != "alice" || d.UpdatedAt.IsZero() {
		t.Errorf("GetDesired = %+v, %v", d, err)
	}
	// None: the revision goes with the persona.
	if _, err := s.PutDesired(DesiredState{Instance: "vm1", Revision: 7, SetBy: DesiredByDeactivation}); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.GetDesired("vm1"); d.Persona != nil || d.Revision != 0 {
		t.Errorf("desired none: %+v", d)
	}
	if _, err := s.PutDesired(DesiredState{Instance: ""}); err == nil {
		t.Error("an empty instance name was accepted")
	}
	if _, err := s.PutDesired(DesiredState{Instance: "vm1"}, AuditEvent{}); err == nil {
		t.Error("an audit event without a type was accepted")
	}
}
