package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/hostd/validate"
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

// PutInstance writes (replaces) an instance's record. Times are stored in
// UTC; a zero UpdatedAt becomes now. Host audit events deferred for the
// instance (DeferAudit) are written in the same commit.
func (s *Store) PutInstance(rec InstanceRecord) error {
	if err := checkInstance(rec.Instance); err != nil {
		return err
	}
	if rec.UpdatedAt.IsZero() {
		rec.UpdatedAt = s.now()
	}
	rec.UpdatedAt = rec.UpdatedAt.UTC()
	if !rec.ActivatedAt.IsZero() {
		rec.ActivatedAt = rec.ActivatedAt.UTC()
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("instance %q: encode: %w", rec.Instance, err)
	}
	// Host audit events deferred for this instance (DeferAudit) go into the
	// same commit.
	claimed := s.claimPending(rec.Instance)
	evs := make([]AuditEvent, len(claimed))
	err = s.update(func(txn *badger.Txn) error {
		for i, p := range claimed {
			evs[i] = p.ev
			if err := s.putAudit(txn, &evs[i]); err != nil {
				return err
			}
		}
		return txn.Set(instanceKey(rec.Instance), b)
	})
	s.releasePending(claimed, err == nil, evs)
	return err
}

// DeleteInstance forgets an instance's record (no error when there is none).
func (s *Store) DeleteInstance(instance string) error {
	if err := checkInstance(instance); err != nil {
		return err
	}
	return s.update(func(txn *badger.Txn) error { return txn.Delete(instanceKey(instance)) })
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
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 64, Prefix: []byte(prefixInstance)})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		var r InstanceRecord
		if err := it.Item().Value(func(v []byte) error { return decodeInstance(v, &r) }); err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

func decodeInstance(v []byte, r *InstanceRecord) error {
	if err := json.Unmarshal(v, r); err != nil {
		return fmt.Errorf("instance record: decode: %w", err)
	}
	if r.Persona != nil {
		validate.Normalize(r.Persona)
	}
	return nil
}
