package store

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
)

// checkCacheAgrees compares what reads see (the in-memory cache) with what
// Badger holds, persona by persona and the default claim.
func checkCacheAgrees(t *testing.T, s *Store) {
	t.Helper()
	fromDB, err := s.loadPersonas()
	if err != nil {
		t.Fatalf("load personas from Badger: %v", err)
	}
	list, err := s.ListPersonas()
	if err != nil {
		t.Fatalf("ListPersonas: %v", err)
	}
	if len(list) != len(fromDB.sorted) {
		t.Fatalf("cache has %d personas, Badger %d", len(list), len(fromDB.sorted))
	}
	for i, p := range list {
		want := *fromDB.sorted[i]
		if !reflect.DeepEqual(p, want) {
			t.Errorf("cache persona %d = %+v\nBadger holds %+v", i, p, want)
		}
		got, err := s.GetPersona(want.Name)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("GetPersona(%s) = %+v, %v\nBadger holds %+v", want.Name, got, err, want)
		}
		rev, at, err := s.PersonaVersion(want.Name)
		if err != nil || rev != want.Revision || !at.Equal(want.UpdatedAt) {
			t.Errorf("PersonaVersion(%s) = %d, %v, %v; Badger holds %d, %v", want.Name, rev, at, err, want.Revision, want.UpdatedAt)
		}
	}
	def, ok, err := s.DefaultPersona()
	if err != nil {
		t.Fatalf("DefaultPersona: %v", err)
	}
	switch {
	case fromDB.def == "" && ok:
		t.Errorf("cache default is %s, Badger has none", def.Name)
	case fromDB.def != "" && (!ok || def.Name != fromDB.def):
		t.Errorf("cache default = %q (ok %v), Badger %q", def.Name, ok, fromDB.def)
	}
}

func TestPersonaCacheAgreesWithBadger(t *testing.T) {
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	checkCacheAgrees(t, s)

	a := persona("a")
	a.DefaultPersona = true
	mustCreate(t, s, a)
	mustCreate(t, s, persona("b"))
	c := persona("c")
	c.AllowedCommands = []string{"ls"}
	mustCreate(t, s, c)
	checkCacheAgrees(t, s)

	// Refused and failing writes change neither.
	if _, err := s.CreatePersona(persona("a")); !errors.Is(err, ErrExists) {
		t.Fatalf("CreatePersona(existing) = %v, want ErrExists", err)
	}
	b := persona("b")
	b.DefaultPersona = true
	if _, err := s.UpdatePersona(b, 0); !errors.Is(err, ErrDefaultConflict) {
		t.Fatalf("UpdatePersona(second default) = %v, want ErrDefaultConflict", err)
	}
	if _, err := s.UpdatePersona(persona("b"), 7); !errors.Is(err, ErrPreconditionFailed) {
		t.Fatalf("UpdatePersona(stale) = %v, want ErrPreconditionFailed", err)
	}
	if _, err := s.UpdatePersona(persona("nobody"), 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("UpdatePersona(missing) = %v, want ErrNotFound", err)
	}
	bad := persona("b")
	bad.CommandOverrides = map[string]string{"": "x"}
	if _, err := s.UpdatePersona(bad, 0); err == nil {
		t.Fatal("UpdatePersona(invalid) succeeded")
	}
	if err := s.PutInstance(InstanceRecord{Instance: "vm1", Persona: &c, Revision: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePersona("c", 0, false); !errors.Is(err, ErrInUse) {
		t.Fatalf("DeletePersona(in use) = %v, want ErrInUse", err)
	}
	if err := s.DeletePersona("b", 9, false); !errors.Is(err, ErrPreconditionFailed) {
		t.Fatalf("DeletePersona(stale) = %v, want ErrPreconditionFailed", err)
	}
	checkCacheAgrees(t, s)
	if p, _ := s.GetPersona("b"); p.Revision != 1 || p.DefaultPersona {
		t.Fatalf("refused writes changed b: %+v", p)
	}

	// Writes that land: the default moves, a forced delete, an update.
	a.DefaultPersona = false
	if _, err := s.UpdatePersona(a, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdatePersona(b, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePersona("c", 0, true); err != nil {
		t.Fatal(err)
	}
	checkCacheAgrees(t, s)

	// What a caller does with its copy does not reach the cache.
	got, _ := s.GetPersona("b")
	got.EnvironmentVariables["APP_ENV"] = "changed"
	got.RestrictedCommands[0] = "changed"
	list, _ := s.ListPersonas()
	list[0].CommandOverrides["ls"] = "changed"
	checkCacheAgrees(t, s)
	if p, _ := s.GetPersona("b"); p.EnvironmentVariables["APP_ENV"] != "staging" || p.RestrictedCommands[0] != "rm" {
		t.Fatalf("a caller's change reached the cache: %+v", p)
	}

	// Reopen: the cache is loaded from Badger.
	before, _ := s.ListPersonas()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetPersona("a"); !errors.Is(err, ErrClosed) {
		t.Fatalf("GetPersona after Close = %v, want ErrClosed", err)
	}
	s = openAt(t, dir, Options{})
	checkCacheAgrees(t, s)
	after, _ := s.ListPersonas()
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("after reopen personas = %+v\nbefore %+v", after, before)
	}
	if p, ok, _ := s.DefaultPersona(); !ok || p.Name != "b" {
		t.Fatalf("after reopen default = %q %v, want b", p.Name, ok)
	}
}

// Concurrent writers (conflicting If-Match updates, creates racing deletes,
// default claims) and readers: afterwards the cache is what Badger holds.
func TestPersonaCacheConcurrentWrites(t *testing.T) {
	s := openTemp(t)
	for i := range 4 {
		mustCreate(t, s, persona(fmt.Sprintf("p%d", i)))
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				for i := range 4 {
					if p, err := s.GetPersona(fmt.Sprintf("p%d", i)); err == nil && p.Revision == 0 {
						t.Error("read a persona without a revision")
					}
				}
			}
		})
	}
	var writers sync.WaitGroup
	for w := range 8 {
		writers.Go(func() {
			for j := range 20 {
				name := fmt.Sprintf("p%d", (w+j)%4)
				p := persona(name)
				p.DefaultPersona = j%3 == 0
				cur, err := s.GetPersona(name)
				switch j % 4 {
				case 0, 1:
					if err == nil {
						s.UpdatePersona(p, cur.Revision)
					}
				case 2:
					s.DeletePersona(name, 0, true)
				case 3:
					s.CreatePersona(p)
				}
			}
		})
	}
	writers.Wait()
	close(stop)
	wg.Wait()
	checkCacheAgrees(t, s)
}
