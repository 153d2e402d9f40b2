package store

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

// Personas are read far more often than they are written (every GET, every
// activation), and a Badger read transaction waits for in-flight synced
// commits (oracle.readTs), so reads are served from memory: personaCache
// holds every persona as Badger holds it, loaded at Open and replaced after
// each committed persona write. Persona writes are serialised by
// Store.personaMu, so the cache installs them in commit order and never
// disagrees with Badger; reads never touch Badger.

// personaCache is an immutable snapshot: a write builds a new one.
type personaCache struct {
	byName map[string]*protocol.Persona // never mutated once published
	sorted []*protocol.Persona          // by name
	def    string                       // default persona's name, "" for none
}

func newPersonaCache(byName map[string]*protocol.Persona, def string) *personaCache {
	c := &personaCache{byName: byName, def: def, sorted: make([]*protocol.Persona, 0, len(byName))}
	for _, p := range byName {
		c.sorted = append(c.sorted, p)
	}
	slices.SortFunc(c.sorted, func(a, b *protocol.Persona) int { return strings.Compare(a.Name, b.Name) })
	return c
}

// with returns a copy of c with name set to p (nil removes it) and def as
// the default.
func (c *personaCache) with(name string, p *protocol.Persona, def string) *personaCache {
	m := maps.Clone(c.byName)
	if p == nil {
		delete(m, name)
	} else {
		m[name] = p
	}
	return newPersonaCache(m, def)
}

// loadPersonas reads every persona and the default claim from Badger.
func (s *Store) loadPersonas() (*personaCache, error) {
	byName := map[string]*protocol.Persona{}
	var def string
	err := s.view(func(txn *badger.Txn) error {
		err := eachValue(txn, prefixPersona, func(name string, v []byte) error {
			p, err := decodePersona(v)
			if err != nil {
				return fmt.Errorf("persona %q: decode: %w", name, err)
			}
			byName[name] = p
			return nil
		})
		if err != nil {
			return err
		}
		def, err = currentDefault(txn)
		return err
	})
	if err != nil {
		return nil, err
	}
	return newPersonaCache(byName, def), nil
}

// personaWriteFailed keeps the cache true to Badger after a write that
// failed for a reason other than a refusal: a commit whose outcome is
// unknown (a failed sync, say) may have landed, so the cache is read again.
// The caller holds personaMu.
func (s *Store) personaWriteFailed(err error) {
	var ve *validate.Error
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrExists), errors.Is(err, ErrPreconditionFailed),
		errors.Is(err, ErrDefaultConflict), errors.Is(err, ErrInUse), errors.Is(err, ErrClosed), errors.As(err, &ve):
		return
	}
	c, lerr := s.loadPersonas()
	if lerr != nil {
		s.log.Error("persona cache: reload after a failed write", "write_err", err, "err", lerr)
		return
	}
	s.personas.Store(c)
}

func personaKey(name string) []byte { return []byte(prefixPersona + name) }

// getPersona reads a persona inside txn; ErrNotFound when absent.
func getPersona(txn *badger.Txn, name string) (protocol.Persona, error) {
	item, err := txn.Get(personaKey(name))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return protocol.Persona{}, fmt.Errorf("persona %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return protocol.Persona{}, err
	}
	var p *protocol.Persona
	err = item.Value(func(v []byte) (err error) {
		p, err = decodePersona(v)
		return err
	})
	if err != nil {
		return protocol.Persona{}, fmt.Errorf("persona %q: decode: %w", name, err)
	}
	return *p, nil
}

// putPersona sets p in txn and returns it as a later read will see it (the
// cache entry).
func putPersona(txn *badger.Txn, p protocol.Persona) (*protocol.Persona, error) {
	b, err := encodePersona(&p)
	if err != nil {
		return nil, fmt.Errorf("persona %q: encode: %w", p.Name, err)
	}
	stored, err := decodePersona(b)
	if err != nil {
		return nil, fmt.Errorf("persona %q: decode: %w", p.Name, err)
	}
	return stored, txn.Set(personaKey(p.Name), b)
}

// currentDefault is the default persona's name inside txn, "" for none.
func currentDefault(txn *badger.Txn) (string, error) {
	item, err := txn.Get([]byte(keyDefault))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	v, err := item.ValueCopy(nil)
	return string(v), err
}

// claimDefault makes name the default, or refuses naming the current one.
func claimDefault(txn *badger.Txn, name string) error {
	cur, err := currentDefault(txn)
	if err != nil {
		return err
	}
	if cur != "" && cur != name {
		return &DefaultConflictError{Current: cur}
	}
	if cur == name {
		return nil
	}
	return txn.Set([]byte(keyDefault), []byte(name))
}

// releaseDefault drops name's claim to be the default, if it has it.
func releaseDefault(txn *badger.Txn, name string) error {
	cur, err := currentDefault(txn)
	if err != nil || cur != name {
		return err
	}
	return txn.Delete([]byte(keyDefault))
}

// defaultAfter is the default persona's name once a write of name that
// claims (or not) the default has committed.
func defaultAfter(cur, name string, claims bool) string {
	switch {
	case claims:
		return name
	case cur == name:
		return ""
	}
	return cur
}

// CreatePersona stores a new persona with revision 1. It validates p
// (a *validate.Error on failure), refuses an existing name (ErrExists) and a
// second default (*DefaultConflictError). The server-kept fields of p are
// ignored; the stored persona is returned.
func (s *Store) CreatePersona(p protocol.Persona) (protocol.Persona, error) {
	return s.writePersona(p, func(txn *badger.Txn, p protocol.Persona) (protocol.Persona, error) {
		_, err := txn.Get(personaKey(p.Name))
		if err == nil {
			return p, fmt.Errorf("persona %q: %w", p.Name, ErrExists)
		}
		if !errors.Is(err, badger.ErrKeyNotFound) {
			return p, err
		}
		if p.DefaultPersona {
			if err := claimDefault(txn, p.Name); err != nil {
				return p, err
			}
		}
		now := s.now()
		p.Revision, p.CreatedAt, p.UpdatedAt = 1, now, now
		return p, nil
	})
}

// writePersona validates and normalizes p, then, under the persona lock and
// in one transaction, has write check it against what is stored and give
// the persona to store (with its server-kept fields), stores that, and
// brings the in-memory catalogue up to date.
func (s *Store) writePersona(p protocol.Persona, write func(txn *badger.Txn, p protocol.Persona) (protocol.Persona, error)) (protocol.Persona, error) {
	if err := validate.Persona(&p); err != nil {
		return protocol.Persona{}, err
	}
	validate.Normalize(&p)
	s.personaMu.Lock()
	defer s.personaMu.Unlock()
	var stored *protocol.Persona
	err := s.update(func(txn *badger.Txn) error {
		out, err := write(txn, p)
		if err != nil {
			return err
		}
		stored, err = putPersona(txn, out)
		return err
	})
	if err != nil {
		s.personaWriteFailed(err)
		return protocol.Persona{}, err
	}
	c := s.personas.Load()
	s.personas.Store(c.with(p.Name, stored, defaultAfter(c.def, p.Name, p.DefaultPersona)))
	return stored.Clone(), nil
}

// GetPersona reads a persona; ErrNotFound when there is none of that name.
// It is served from memory.
func (s *Store) GetPersona(name string) (protocol.Persona, error) {
	if s.closed.Load() {
		return protocol.Persona{}, ErrClosed
	}
	p, ok := s.personas.Load().byName[name]
	if !ok {
		return protocol.Persona{}, fmt.Errorf("persona %q: %w", name, ErrNotFound)
	}
	return p.Clone(), nil
}

// PersonaVersion returns the revision and update time of a persona without
// copying it: together they identify one stored version (a persona deleted
// and created again starts at revision 1 with a new time). ErrNotFound when
// there is none of that name.
func (s *Store) PersonaVersion(name string) (revision uint64, updatedAt time.Time, err error) {
	if s.closed.Load() {
		return 0, time.Time{}, ErrClosed
	}
	p, ok := s.personas.Load().byName[name]
	if !ok {
		return 0, time.Time{}, fmt.Errorf("persona %q: %w", name, ErrNotFound)
	}
	return p.Revision, p.UpdatedAt, nil
}

// ListPersonas returns every persona, sorted by name (never nil).
func (s *Store) ListPersonas() ([]protocol.Persona, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	c := s.personas.Load()
	out := make([]protocol.Persona, len(c.sorted))
	for i, p := range c.sorted {
		out[i] = p.Clone()
	}
	return out, nil
}

// UpdatePersona replaces the persona named p.Name, incrementing its
// revision. ifMatch 0 updates whatever the revision; otherwise it must equal
// the stored revision (ErrPreconditionFailed). ErrNotFound when missing,
// *DefaultConflictError when p claims the default another persona holds.
func (s *Store) UpdatePersona(p protocol.Persona, ifMatch uint64) (protocol.Persona, error) {
	return s.writePersona(p, func(txn *badger.Txn, p protocol.Persona) (protocol.Persona, error) {
		old, err := getPersona(txn, p.Name)
		if err != nil {
			return p, err
		}
		if ifMatch != 0 && ifMatch != old.Revision {
			return p, fmt.Errorf("persona %q is at revision %d, not %d: %w", p.Name, old.Revision, ifMatch, ErrPreconditionFailed)
		}
		if p.DefaultPersona {
			err = claimDefault(txn, p.Name)
		} else {
			err = releaseDefault(txn, p.Name)
		}
		if err != nil {
			return p, err
		}
		p.Revision, p.CreatedAt, p.UpdatedAt = old.Revision+1, old.CreatedAt, s.now()
		return p, nil
	})
}

// DeletePersona removes a persona. ifMatch as in UpdatePersona. While an
// instance record holds the persona, it is refused with *InUseError unless
// force is set (the records are left as they are: they describe what the
// guest holds).
func (s *Store) DeletePersona(name string, ifMatch uint64, force bool) error {
	s.personaMu.Lock()
	defer s.personaMu.Unlock()
	err := s.update(func(txn *badger.Txn) error {
		old, err := getPersona(txn, name)
		if err != nil {
			return err
		}
		if ifMatch != 0 && ifMatch != old.Revision {
			return fmt.Errorf("persona %q is at revision %d, not %d: %w", name, old.Revision, ifMatch, ErrPreconditionFailed)
		}
		if !force {
			holders, err := instancesHolding(txn, name)
			if err != nil {
				return err
			}
			if len(holders) > 0 {
				return &InUseError{Persona: name, Instances: holders}
			}
		}
		if err := releaseDefault(txn, name); err != nil {
			return err
		}
		return txn.Delete(personaKey(name))
	})
	if err != nil {
		s.personaWriteFailed(err)
		return err
	}
	c := s.personas.Load()
	s.personas.Store(c.with(name, nil, defaultAfter(c.def, name, false)))
	return nil
}

// DefaultPersona returns the default persona; ok is false when there is none.
func (s *Store) DefaultPersona() (p protocol.Persona, ok bool, err error) {
	if s.closed.Load() {
		return p, false, ErrClosed
	}
	c := s.personas.Load()
	if c.def == "" {
		return p, false, nil
	}
	cp, ok := c.byName[c.def]
	if !ok {
		return p, false, nil // cannot happen: deletes release the claim in the same transaction
	}
	return cp.Clone(), true, nil
}

// instancesHolding names the instances whose record holds persona name.
func instancesHolding(txn *badger.Txn, name string) ([]string, error) {
	var out []string
	err := eachInstance(txn, func(r InstanceRecord) error {
		if r.Persona != nil && r.Persona.Name == name {
			out = append(out, r.Instance)
		}
		return nil
	})
	slices.Sort(out)
	return out, err
}
