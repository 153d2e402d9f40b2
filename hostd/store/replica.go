package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/hostd/assignment"
	"github.com/vmpersona/vmpersona/protocol"
)

// In fleet mode the personas and the default claim are a local copy of the
// fleet's (etcd's): the fleet package applies what it reads and watches
// there as ReplicaBatches, each in one Badger transaction together with the
// fleet revision it brings the copy to (m/fleetrev). Reads (GetPersona,
// ListPersonas, DefaultPersona) then serve the copy unchanged.

const keyFleetRevision = "m/fleetrev"

// ReplicaBatch is a change to the local copy of the fleet's personas.
type ReplicaBatch struct {
	// Personas set (non-nil) or delete (nil) personas by name. Their
	// revision and times are the fleet's and are stored as given.
	Personas map[string]*protocol.Persona
	// Assignments set (non-nil) or delete (nil) assignments by name; their
	// revision and times are the fleet's.
	Assignments map[string]*assignment.Assignment
	// Default, when not nil, is the fleet's default persona ("" for none).
	Default *string
	// Full replaces the whole copy: personas not in Personas and
	// assignments not in Assignments are removed.
	Full bool
	// Revision is the fleet revision the copy is at once the batch applies.
	Revision int64
}

// ApplyReplica applies b in one transaction with its revision. A batch
// whose revision is not above the stored one is ignored (a replay), unless
// it is Full.
func (s *Store) ApplyReplica(b ReplicaBatch) error {
	s.personaMu.Lock()
	defer s.personaMu.Unlock()
	applied := true
	err := s.update(func(txn *badger.Txn) error {
		applied = true
		cur, err := replicaRevision(txn)
		if err != nil {
			return err
		}
		if !b.Full && b.Revision <= cur {
			applied = false
			return nil
		}
		err = applyReplica(txn, "persona", prefixPersona, b.Full, b.Personas,
			func(p *protocol.Persona) string { return p.Name },
			func(p *protocol.Persona) error { _, err := putPersona(txn, *p); return err })
		if err != nil {
			return err
		}
		if err := replicaAssignments(txn, b); err != nil {
			return err
		}
		if b.Default != nil {
			if *b.Default == "" {
				if err := txn.Delete([]byte(keyDefault)); err != nil {
					return err
				}
			} else if err := txn.Set([]byte(keyDefault), []byte(*b.Default)); err != nil {
				return err
			}
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(b.Revision))
		return txn.Set([]byte(keyFleetRevision), v[:])
	})
	if err != nil || !applied {
		return err
	}
	c, err := s.loadPersonas()
	if err != nil {
		return fmt.Errorf("replica: reload personas: %w", err)
	}
	s.personas.Store(c)
	return nil
}

// ReplicaRevision is the fleet revision of the local copy, 0 when there is
// none (never loaded).
func (s *Store) ReplicaRevision() (int64, error) {
	var rev int64
	err := s.view(func(txn *badger.Txn) (err error) {
		rev, err = replicaRevision(txn)
		return err
	})
	return rev, err
}

func replicaRevision(txn *badger.Txn) (int64, error) {
	item, err := txn.Get([]byte(keyFleetRevision))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("replica: fleet revision of %d bytes", len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// applyReplica applies in txn the entries of one kind ("persona") of a
// replica batch, each stored under prefix + its name: a full batch first
// deletes every key it does not hold; a nil entry deletes its key; put
// stores each other one, which must bear the name it is listed under.
func applyReplica[V any](txn *badger.Txn, kind, prefix string, full bool, batch map[string]*V, nameOf func(*V) string, put func(*V) error) error {
	if full {
		var stale [][]byte
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
		for it.Rewind(); it.Valid(); it.Next() {
			if _, ok := batch[string(it.Item().Key()[len(prefix):])]; !ok {
				stale = append(stale, it.Item().KeyCopy(nil))
			}
		}
		it.Close()
		for _, k := range stale {
			if err := txn.Delete(k); err != nil {
				return err
			}
		}
	}
	for name, v := range batch {
		if v == nil {
			if err := txn.Delete([]byte(prefix + name)); err != nil {
				return err
			}
			continue
		}
		if n := nameOf(v); n != name {
			return fmt.Errorf("replica: %s %q stored under %q: %w", kind, n, name, ErrInvalidArgument)
		}
		if err := put(v); err != nil {
			return err
		}
	}
	return nil
}
