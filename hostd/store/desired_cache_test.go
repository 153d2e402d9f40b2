package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
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

// TestDesiredCopyIsWhatDecodingGives: the desired state the cache keeps
// after a write, made without the JSON round trip, is exactly what decoding
// the stored bytes gives (what a reload puts in the cache), over personas
// with every kind of missing, empty and filled field; where the two could
// differ (a string that is not UTF-8, a time outside UTC) the copy is not
// used; and the copy shares nothing with the caller's persona.
func TestDesiredCopyIsWhatDecodingGives(t *testing.T) {
	// A field added to the persona must be handled by desiredCopy (a list
	// or map copied, an omitempty list emptied to nil) and generated here.
	if n := reflect.TypeOf(protocol.Persona{}).NumField(); n != 18 {
		t.Fatalf("protocol.Persona has %d fields, desiredCopy and this test know 18: update both", n)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	strs := []string{"", "a", "<&>\u2028\"\\", "ünï", "tool"}
	pick := func() string { return strs[rng.IntN(len(strs))] }
	list := func() []string {
		switch rng.IntN(3) {
		case 0:
			return nil
		case 1:
			return []string{}
		}
		return []string{pick(), pick()}
	}
	m := func() map[string]string {
		switch rng.IntN(3) {
		case 0:
			return nil
		case 1:
			return map[string]string{}
		}
		return map[string]string{pick(): pick(), "K": pick()}
	}
	when := func() time.Time {
		switch rng.IntN(4) {
		case 0:
			return time.Time{}
		case 1:
			return time.Now().UTC()
		case 2:
			return time.Date(2026, 12, 1, 9, 0, 0, 123456789, time.UTC)
		}
		return time.Now() // local, with a monotonic reading: not copied
	}
	flag := func() *bool {
		if rng.IntN(3) == 0 {
			return nil
		}
		v := rng.IntN(2) == 0
		return &v
	}
	copied := 0
	for i := range 3000 {
		d := DesiredState{Instance: "vm" + pick(), SetBy: DesiredByActivation, Actor: pick(), Revision: uint64(i), UpdatedAt: when()}
		if rng.IntN(5) > 0 {
			d.Persona = &protocol.Persona{Name: "p" + pick(), EnvironmentVariables: m(), CommandOverrides: m(),
				PreActivationScript: pick(), PostActivationScript: pick(), RestrictedCommands: list(), AllowedCommands: list(),
				DefaultPersona: rng.IntN(2) == 0, Rollout: pick(), Enforcement: pick(), DenyExecWritable: flag(),
				RequestEnv: list(), SecretVariables: list(), ExecUser: pick(), AuditExec: flag(), Revision: uint64(i),
				CreatedAt: when(), UpdatedAt: when()}
			if rng.IntN(50) == 0 {
				d.Persona.EnvironmentVariables = map[string]string{"BAD": "\xff"}
			}
		}
		b, err := encodeDesired(&d)
		if err != nil {
			t.Fatal(err)
		}
		var want DesiredState
		if err := decodeDesired(b, &want); err != nil {
			t.Fatal(err)
		}
		got, ok := desiredCopy(&d)
		if !ok {
			continue
		}
		copied++
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("case %d: copy\n%+v\ndecoded\n%+v", i, *got.Persona, *want.Persona)
		}
		if d.Persona != nil && got.Persona != nil {
			if d.Persona.EnvironmentVariables != nil {
				d.Persona.EnvironmentVariables["CHANGED"] = "by the caller"
			}
			if len(d.Persona.RestrictedCommands) > 0 {
				d.Persona.RestrictedCommands[0] = "changed"
			}
			if d.Persona.AuditExec != nil {
				*d.Persona.AuditExec = !*d.Persona.AuditExec
			}
			if !reflect.DeepEqual(*got, want) {
				t.Fatalf("case %d: the copy changed with the caller's persona", i)
			}
		}
	}
	if copied < 500 {
		t.Fatalf("only %d of 3000 cases were copied", copied)
	}
}
