package store

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/protocol"
)

// InstanceRecord is the persona an instance holds, as last confirmed by its
// guest.
type InstanceRecord struct {
	Instance string            `json:"instance"`
	Persona  *protocol.Persona `json:"persona"` // nil: none
	Revision uint64            `json:"revision"`
	// ActivationID is the activation that put Persona in place.
	ActivationID string    `json:"activation_id,omitempty"`
	ActivatedAt  time.Time `json:"activated_at,omitzero"`
	// UpdatedAt is when the record was written; PutInstance sets it to now
	// when zero.
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	// BootID is the guest's boot id when it confirmed the persona.
	BootID string `json:"boot_id,omitempty"`
}

func instanceKey(instance string) []byte { return []byte(prefixInstance + instance) }

// checkInstance: instance names are keys (and parts of keys, NUL-separated).
func checkInstance(instance string) error {
	switch {
	case instance == "":
		return fmt.Errorf("instance name is empty: %w", ErrInvalidArgument)
	case len(instance) > maxInstanceName:
		return fmt.Errorf("instance name is %d bytes long, at most %d: %w", len(instance), maxInstanceName, ErrInvalidArgument)
	case strings.IndexByte(instance, 0) >= 0:
		return fmt.Errorf("instance name contains NUL: %w", ErrInvalidArgument)
	case !utf8.ValidString(instance):
		return fmt.Errorf("instance name is not valid UTF-8: %w", ErrInvalidArgument)
	}
	return nil
}

// GetInstance reads an instance's record; ErrNotFound when none was ever
// recorded.
func (s *Store) GetInstance(instance string) (InstanceRecord, error) {
	var r InstanceRecord
	if err := checkInstance(instance); err != nil {
		return r, err
	}
	err := s.view(func(txn *badger.Txn) error {
		item, err := txn.Get(instanceKey(instance))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("instance %q: %w", instance, ErrNotFound)
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return decodeInstance(v, &r) })
	})
	return r, err
}

// PutInstance writes (replaces) an instance's record, and with it the host
// audit events that belong to that write (the request that led to it, say):
// one synced commit holds both, so the record is never there without its
// events, nor the events without the record. Times are stored in UTC; a zero
// UpdatedAt becomes now. Each event is prepared as AppendAudit does (a zero
// Time becomes now, Source is "host", Type must not be empty); an event
// without an Instance gets the record's.
func (s *Store) PutInstance(rec InstanceRecord, events ...AuditEvent) error {
	return s.putInstance(rec, nil, events)
}

// PutInstanceDesired writes an instance's record and its desired state d
// (for the same instance), with the audit events, in one synced commit: an
// activation asked for through the API writes what the guest now holds and
// what the request chose as one durable write, after the guest answered.
func (s *Store) PutInstanceDesired(rec InstanceRecord, d DesiredState, events ...AuditEvent) error {
	if d.Instance != rec.Instance {
		return fmt.Errorf("desired state of %q written with the record of %q: %w", d.Instance, rec.Instance, ErrInvalidArgument)
	}
	return s.putInstance(rec, &d, events)
}

// Writable reports whether the store takes writes now (nil), or why not
// (ErrClosed, ErrStorageLow): a check before an action whose outcome must
// then be written.
func (s *Store) Writable() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return s.disk.refuse()
}

func (s *Store) putInstance(rec InstanceRecord, d *DesiredState, events []AuditEvent) error {
	if err := checkInstance(rec.Instance); err != nil {
		return err
	}
	var db []byte
	var cached *DesiredState
	if d != nil {
		var err error
		if db, cached, err = s.encodeDesired(d); err != nil {
			return err
		}
	}
	now := s.now()
	if rec.UpdatedAt.IsZero() {
		rec.UpdatedAt = now
	}
	rec.UpdatedAt = rec.UpdatedAt.UTC()
	if !rec.ActivatedAt.IsZero() {
		rec.ActivatedAt = rec.ActivatedAt.UTC()
	}
	b, err := encodeInstance(&rec)
	if err != nil {
		return fmt.Errorf("instance %q: encode: %w", rec.Instance, err)
	}
	evs := make([]AuditEvent, len(events))
	size := 0
	for i, ev := range events {
		if ev.Instance == "" {
			ev.Instance = rec.Instance
		}
		if err := prepareHostEvent(&ev, now); err != nil {
			return fmt.Errorf("audit event %d of instance %q: %w", i, rec.Instance, err)
		}
		evs[i] = ev
		size += estimateEvent(&ev)
	}
	if size > txnBudgetBytes || len(evs) > txnBudgetEvents {
		return fmt.Errorf("instance %q: %d audit events are more than one write takes: %w", rec.Instance, len(evs), ErrInvalidArgument)
	}
	put := func(txn *badger.Txn) error {
		for i := range evs {
			if err := s.putAudit(txn, &evs[i]); err != nil {
				return err
			}
		}
		if db != nil {
			if err := txn.Set(desiredKey(rec.Instance), db); err != nil {
				return err
			}
		}
		return txn.Set(instanceKey(rec.Instance), b)
	}
	if d == nil {
		return s.update(put)
	}
	// The desired state's cache follows the commit, in commit order (see
	// desiredCache).
	mu := s.desiredLock(rec.Instance)
	mu.Lock()
	defer mu.Unlock()
	if err := s.update(put); err != nil {
		if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrInvalidArgument) {
			s.reloadDesired(rec.Instance)
		}
		return err
	}
	s.desired.m.Store(rec.Instance, cached)
	return nil
}

// DeleteInstance forgets an instance: its record and its desired state, in
// one commit (no error when there is none). It serves a VM that left the
// host (undefined, or migrated away): should it come back, the host adopts
// what its guest holds then instead of applying a choice made before it left.
func (s *Store) DeleteInstance(instance string) error {
	if err := checkInstance(instance); err != nil {
		return err
	}
	mu := s.desiredLock(instance)
	mu.Lock()
	defer mu.Unlock()
	err := s.update(func(txn *badger.Txn) error {
		// Only keys that exist are deleted: a domain left defined after it
		// migrated away is forgotten again at every resync, and a commit
		// with nothing in it writes nothing.
		for _, k := range [][]byte{instanceKey(instance), desiredKey(instance)} {
			if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
				continue
			} else if err != nil {
				return err
			}
			if err := txn.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrInvalidArgument) {
			s.reloadDesired(instance) // a commit whose outcome is unknown may have landed
		}
		return err
	}
	s.desired.m.Delete(instance)
	return nil
}

// ListInstances returns every instance record, sorted by instance name
// (never nil).
func (s *Store) ListInstances() ([]InstanceRecord, error) {
	out := []InstanceRecord{}
	err := s.view(func(txn *badger.Txn) error {
		return eachInstance(txn, func(r InstanceRecord) error {
			out = append(out, r)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func eachInstance(txn *badger.Txn, fn func(InstanceRecord) error) error {
	return eachValue(txn, prefixInstance, func(_ string, v []byte) error {
		var r InstanceRecord
		if err := decodeInstance(v, &r); err != nil {
			return err
		}
		return fn(r)
	})
}

// eachValue calls fn, in key order, with the name (the key after prefix)
// and the value of every key under prefix. v is valid only during the
// call.
func eachValue(txn *badger.Txn, prefix string, fn func(name string, v []byte) error) error {
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 64, Prefix: []byte(prefix)})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		name := string(item.Key()[len(prefix):])
		if err := item.Value(func(v []byte) error { return fn(name, v) }); err != nil {
			return err
		}
	}
	return nil
}
