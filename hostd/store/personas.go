package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

func personaKey(name string) []byte { return []byte(prefixPersona + name) }

// getPersona reads a persona inside txn; ErrNotFound when absent.
func getPersona(txn *badger.Txn, name string) (protocol.Persona, error) {
	var p protocol.Persona
	item, err := txn.Get(personaKey(name))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return p, fmt.Errorf("persona %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return p, err
	}
	err = item.Value(func(v []byte) error { return json.Unmarshal(v, &p) })
	if err != nil {
		return p, fmt.Errorf("persona %q: decode: %w", name, err)
	}
	validate.Normalize(&p)
	return p, nil
}

func putPersona(txn *badger.Txn, p protocol.Persona) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("persona %q: encode: %w", p.Name, err)
	}
	return txn.Set(personaKey(p.Name), b)
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

// CreatePersona stores a new persona with revision 1. It validates p
// (a *validate.Error on failure), refuses an existing name (ErrExists) and a
// second default (*DefaultConflictError). The server-kept fields of p are
// ignored; the stored persona is returned.
func (s *Store) CreatePersona(p protocol.Persona) (protocol.Persona, error) {
	if err := validate.Persona(&p); err != nil {
		return protocol.Persona{}, err
	}
	validate.Normalize(&p)
	var out protocol.Persona
	err := s.update(func(txn *badger.Txn) error {
		_, err := txn.Get(personaKey(p.Name))
		if err == nil {
			return fmt.Errorf("persona %q: %w", p.Name, ErrExists)
		}
		if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		if p.DefaultPersona {
			if err := claimDefault(txn, p.Name); err != nil {
				return err
			}
		}
		now := s.now()
		out = p
		out.Revision, out.CreatedAt, out.UpdatedAt = 1, now, now
		return putPersona(txn, out)
	})
	if err != nil {
		return protocol.Persona{}, err
	}
	return out, nil
}

// GetPersona reads a persona; ErrNotFound when there is none of that name.
func (s *Store) GetPersona(name string) (protocol.Persona, error) {
	var p protocol.Persona
	err := s.view(func(txn *badger.Txn) (err error) {
		p, err = getPersona(txn, name)
		return err
	})
	return p, err
}

// ListPersonas returns every persona, sorted by name (never nil).
func (s *Store) ListPersonas() ([]protocol.Persona, error) {
	out := []protocol.Persona{}
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 64, Prefix: []byte(prefixPersona)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var p protocol.Persona
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &p) }); err != nil {
				return fmt.Errorf("persona %q: decode: %w", it.Item().Key()[len(prefixPersona):], err)
			}
			validate.Normalize(&p)
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// UpdatePersona replaces the persona named p.Name, incrementing its
// revision. ifMatch 0 updates whatever the revision; otherwise it must equal
// the stored revision (ErrPreconditionFailed). ErrNotFound when missing,
// *DefaultConflictError when p claims the default another persona holds.
func (s *Store) UpdatePersona(p protocol.Persona, ifMatch uint64) (protocol.Persona, error) {
	if err := validate.Persona(&p); err != nil {
		return protocol.Persona{}, err
	}
	validate.Normalize(&p)
	var out protocol.Persona
	err := s.update(func(txn *badger.Txn) error {
		old, err := getPersona(txn, p.Name)
		if err != nil {
			return err
		}
		if ifMatch != 0 && ifMatch != old.Revision {
			return fmt.Errorf("persona %q is at revision %d, not %d: %w", p.Name, old.Revision, ifMatch, ErrPreconditionFailed)
		}
		if p.DefaultPersona {
			err = claimDefault(txn, p.Name)
		} else {
			err = releaseDefault(txn, p.Name)
		}
		if err != nil {
			return err
		}
		out = p
		out.Revision, out.CreatedAt, out.UpdatedAt = old.Revision+1, old.CreatedAt, s.now()
		return putPersona(txn, out)
	})
	if err != nil {
		return protocol.Persona{}, err
	}
	return out, nil
}

// DeletePersona removes a persona. ifMatch as in UpdatePersona. While an
// instance record holds the persona, it is refused with *InUseError unless
// force is set (the records are left as they are: they describe what the
// guest holds).
func (s *Store) DeletePersona(name string, ifMatch uint64, force bool) error {
	return s.update(func(txn *badger.Txn) error {
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
}

// DefaultPersona returns the default persona; ok is false when there is none.
func (s *Store) DefaultPersona() (p protocol.Persona, ok bool, err error) {
	err = s.view(func(txn *badger.Txn) error {
		name, err := currentDefault(txn)
		if err != nil || name == "" {
			return err
		}
		p, err = getPersona(txn, name)
		if errors.Is(err, ErrNotFound) {
			return nil // cannot happen: deletes release the claim in the same transaction
		}
		ok = err == nil
		return err
	})
	return p, ok, err
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
